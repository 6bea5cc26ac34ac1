/* base64url.c -- strict unpadded base64url, the JWS segment encoding.
 *
 * Written here rather than borrowed from OpenSSL's EVP_DecodeBlock because
 * that one speaks standard base64 with padding and tolerates whitespace;
 * tokens must decode one way only (see base64url.h). */
#include "base/base64url.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* For each byte: 1 + its value (0..63) when it is in the alphabet, 0 when
 * it is not. A table, not a chain of range tests: the bytes of a signature
 * are random, so which range a byte falls in cannot be predicted, and the
 * branches of the chain cost most of a token's decoding (perf: 4.8% of the
 * gateway's core with a new token on every request). */
static const unsigned char sextet_plus_one[256] = {
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,  ['G'] = 7,  ['H'] = 8,
    ['I'] = 9,  ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16,
    ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24,
    ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32,
    ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40,
    ['o'] = 41, ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48,
    ['w'] = 49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
    ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['-'] = 63, ['_'] = 64,
};

/* 0..63 for alphabet characters; a value with bit 6 set (64 or more) for
 * everything else, so that OR-ing the sextets of a quad tests all four. */
static unsigned sextet(unsigned char c)
{
    return (unsigned)sextet_plus_one[c] - 1u;
}

long sg_b64url_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 == 1) return -1; /* 6 bits cannot make a byte */
    size_t o = 0, i = 0;
    for (; i + 4 <= len; i += 4) {
        unsigned a = sextet((unsigned char)in[i]), b = sextet((unsigned char)in[i + 1]),
                 c = sextet((unsigned char)in[i + 2]), d = sextet((unsigned char)in[i + 3]);
        if ((a | b | c | d) & ~63u) return -1;
        unsigned long v =
            (unsigned long)a << 18 | (unsigned long)b << 12 | (unsigned long)c << 6 | d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    size_t rest = len - i;
    if (rest == 2) {
        unsigned a = sextet((unsigned char)in[i]), b = sextet((unsigned char)in[i + 1]);
        if ((a | b) & ~63u) return -1;
        if (b & 0x0f) return -1; /* non-canonical: unused bits must be zero */
        out[o++] = (unsigned char)(a << 2 | b >> 4);
    } else if (rest == 3) {
        unsigned a = sextet((unsigned char)in[i]), b = sextet((unsigned char)in[i + 1]),
                 c = sextet((unsigned char)in[i + 2]);
        if ((a | b | c) & ~63u) return -1;
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
