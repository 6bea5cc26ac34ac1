/* token_json.c -- the strict scan of a token's JSON and the string decoding
 * of the one-pass reader (token_impl.h has the walk itself).
 *
 * A token's header and payload are read without building a tree: the bytes
 * are first accepted by the same strict pre-scan as a request body
 * (base/json.h), after which a walk over the top-level members needs no
 * error handling, and only the members verification reads are decoded. */
#include "auth/token_impl.h"

#include <stdlib.h>
#include <string.h>

#include "base/json.h"

/* Checks that text[0..n) is one JSON object as strict as a request body:
 * UTF-8, no \u0000, no trailing junk and no duplicate member names (cJSON
 * keeps the first of two "scope" claims, other parsers the last: claim
 * confusion). Returns SG_TOKEN_OK or the refusal. */
sg_token_err tok_scan_object(const char *text, size_t n)
{
    sg_json_scan scan;
    sg_json_error jerr;
    int rc = sg_json_prescan(text, n, NULL, &scan, &jerr);
    int is_object = rc == 0 && scan.top_is_object;
    sg_json_scan_free(&scan);
    if (rc != 0)
        return jerr.kind == SG_JSON_ERR_DUPLICATE_KEY ? SG_TOKEN_DUPLICATE_KEY
               : jerr.kind == SG_JSON_ERR_NOMEM       ? SG_TOKEN_INTERNAL
                                                      : SG_TOKEN_MALFORMED;
    return is_object ? SG_TOKEN_OK : SG_TOKEN_MALFORMED;
}

static unsigned hex4(const char *p)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v = v << 4 | (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

size_t tok_unescape(const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\\' || i + 1 >= len) {
            out[o++] = s[i];
            continue;
        }
        char c = s[++i];
        if (c != 'u' || i + 4 >= len) {
            out[o++] = c == 'b'   ? '\b'
                       : c == 'f' ? '\f'
                       : c == 'n' ? '\n'
                       : c == 'r' ? '\r'
                       : c == 't' ? '\t'
                                  : c;
            continue;
        }
        unsigned cp = hex4(s + i + 1);
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 < len && s[i + 1] == '\\' && s[i + 2] == 'u') {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4(s + i + 3) - 0xDC00);
            i += 6;
        }
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | cp >> 6);
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | cp >> 12);
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | cp >> 18);
            out[o++] = (char)(0x80 | (cp >> 12 & 0x3F));
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[o] = '\0';
    return o;
}

int tok_key_is_escaped(const jvalue *key, const char *name, size_t name_len)
{
    if (key->len < name_len) return 0;
    char small[256];
    char *buf = key->len < sizeof small ? small : malloc(key->len + 1);
    if (!buf) return 0;
    size_t n = tok_unescape(key->p, key->len, buf);
    int same = n == name_len && memcmp(buf, name, n) == 0;
    if (buf != small) free(buf);
    return same;
}
