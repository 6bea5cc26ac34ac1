/* base64url.c -- strict unpadded base64url, the JWS segment encoding.
 *
 * Written here rather than borrowed from OpenSSL's EVP_DecodeBlock because
 * that one speaks standard base64 with padding and tolerates whitespace;
 * tokens must decode one way only (see base64url.h). */
#include "base/base64url.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0..63 for alphabet characters, 64 for everything else. */
static unsigned char sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return (unsigned char)(c - 'A');
    if (c >= 'a' && c <= 'z') return (unsigned char)(c - 'a' + 26);
    if (c >= '0' && c <= '9') return (unsigned char)(c - '0' + 52);
    if (c == '-') return 62;
    if (c == '_') return 63;
    return 64;
}

long sg_b64url_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 == 1) return -1; /* 6 bits cannot make a byte */
    size_t o = 0, i = 0;
    for (; i + 4 <= len; i += 4) {
        unsigned char a = sextet((unsigned char)in[i]), b = sextet((unsigned char)in[i + 1]),
                      c = sextet((unsigned char)in[i + 2]), d = sextet((unsigned char)in[i + 3]);
        if ((a | b | c | d) & 64) return -1;
        unsigned long v =
            (unsigned long)a << 18 | (unsigned long)b << 12 | (unsigned long)c << 6 | d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    size_t rest = len - i;
    if (rest == 2) {
        unsigned char a = sextet((unsigned char)in[i]), b = sextet((unsigned char)in[i + 1]);
        if ((a | b) & 64) return -1;
        if (b & 0x0f) return -1; /* non-canonical: unused bits must be zero */
        out[o++] = (unsigned char)(a << 2 | b >> 4);
    } else if (rest == 3) {
        unsigned char a = sextet((unsigned char)in[i]), b = sextet((unsigned char)in[i + 1]),
                      c = sextet((unsigned char)in[i + 2]);
        if ((a | b | c) & 64) return -1;
        if (c & 0x03) return -1;
        out[o++] = (unsigned char)(a << 2 | b >> 4);
        out[o++] = (unsigned char)((b & 0x0f) << 4 | c >> 2);
    }
    return (long)o;
}

void sg_b64url_encode(sg_buf *out, const unsigned char *in, size_t n)
{
    char quad[4];
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned long v = (unsigned long)in[i] << 16 | (unsigned long)in[i + 1] << 8 | in[i + 2];
        quad[0] = alphabet[v >> 18 & 63];
        quad[1] = alphabet[v >> 12 & 63];
        quad[2] = alphabet[v >> 6 & 63];
        quad[3] = alphabet[v & 63];
        sg_buf_append(out, quad, 4);
    }
    if (n - i == 1) {
        unsigned long v = (unsigned long)in[i] << 16;
        quad[0] = alphabet[v >> 18 & 63];
        quad[1] = alphabet[v >> 12 & 63];
        sg_buf_append(out, quad, 2);
    } else if (n - i == 2) {
        unsigned long v = (unsigned long)in[i] << 16 | (unsigned long)in[i + 1] << 8;
        quad[0] = alphabet[v >> 18 & 63];
        quad[1] = alphabet[v >> 12 & 63];
        quad[2] = alphabet[v >> 6 & 63];
        sg_buf_append(out, quad, 3);
    }
}
