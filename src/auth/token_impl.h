/* token_impl.h -- what the files of the bearer-token verifier share (not a
 * public API; token.h is).
 *
 * token.c owns the verifier and the token object and holds the public entry
 * points; token_jws.c takes a JWS compact token apart and checks its header
 * and signature (with a worker's reused OpenSSL contexts); token_json.c is
 * the strict scan and the one-pass reader of the header and the claims;
 * token_claims.c checks the claims (types, exp/nbf/iat, iss, aud, required
 * claims, scopes) and fills the public token; tcache.c is the per-worker
 * verified-token cache. The small walk functions are inline here because
 * every claim of every token passes through them (bench/README.md). */
#ifndef SG_TOKEN_IMPL_H
#define SG_TOKEN_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#include "auth/token.h"

#define MAX_AUD_LEN 2048

/* ---- algorithms (token_jws.c) ------------------------------------------------ */

/* The digest of an alg, fetched once per process; NULL for EdDSA (and
 * none). Can't fail. */
const EVP_MD *tok_alg_md(int alg);
/* 1 for HS256/384/512. Can't fail. */
int tok_alg_is_hmac(int alg);
/* 1 for PS256/384/512. Can't fail. */
int tok_alg_is_pss(int alg);
/* ECDSA coordinate size in bytes, 0 for other algs. Can't fail. */
size_t tok_alg_ec_size(int alg);

/* ---- signatures (token_jws.c) -------------------------------------------------- */

/* OpenSSL state a worker reuses for every signature check: a digest
 * context, and a verification context per (key, alg) it has seen lately.
 * Creating an EVP_PKEY_CTX and initialising it for a key costs about a tenth
 * of an RSA-2048 verify; EVP_PKEY_verify may be called again and again on
 * one initialised context (EVP_PKEY_verify(3)). Each context holds a
 * reference on its key, so a key dropped by a JWKS refresh stays valid here
 * until its slot is reused or the cache is cleared. One thread only. */
#define VERIFY_CTX_SLOTS 4

typedef struct verify_ctx {
    EVP_MD_CTX *md;
    struct {
        const EVP_PKEY *pkey; /* identity only; pctx holds the reference */
        int alg;
        EVP_PKEY_CTX *pctx;
    } slot[VERIFY_CTX_SLOTS];
    unsigned next; /* the slot replaced next (round robin) */
} verify_ctx;

/* Frees the contexts' per-key state (and with it their references on keys
 * a refresh may have dropped); vc stays usable. Can't fail. */
void tok_verify_ctx_clear(verify_ctx *vc);

/* ---- reading a scanned object in one pass ---------------------------------------
 * The header and the claims are read without building a tree: once
 * tok_scan_object has accepted the bytes, a walk over the top-level members
 * needs no error handling beyond staying inside them, and only the members
 * verification looks at are decoded. (The claims tree a function rule or an
 * identity header wants is built on demand, sg_token_claims.) */

/* What kind of JSON value starts with c: '"' string, '{' object, '['
 * array, 'n' number, 't'/'f' true/false, 'z' null. */
static inline char value_kind(char c)
{
    return c == '"' || c == '{' || c == '[' ? c : c == 't' || c == 'f' ? c : c == 'n' ? 'z' : 'n';
}

typedef struct jvalue {
    const char *p; /* the value's first byte; for a string, its first byte after the quote */
    size_t len;    /* for a string, the raw bytes between the quotes */
    char kind;     /* value_kind; 0: absent */
} jvalue;

static inline const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p just after an opening quote; returns the closing quote. */
static inline const char *string_end(const char *p, const char *end)
{
    while (p < end && *p != '"')
        p += *p == '\\' ? 2 : 1;
    return p < end ? p : end;
}

/* p at a value's first byte; returns just past the value. */
static inline const char *skip_value(const char *p, const char *end)
{
    if (p >= end) return end;
    if (*p == '"') return string_end(p + 1, end) + 1;
    if (*p != '{' && *p != '[') {
        while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
               *p != '\n' && *p != '\r')
            p++;
        return p;
    }
    int depth = 0;
    while (p < end) {
        char c = *p;
        if (c == '"') {
            p = string_end(p + 1, end) + 1;
            continue;
        }
        if (c == '{' || c == '[') depth++;
        if ((c == '}' || c == ']') && --depth == 0) return p + 1;
        p++;
    }
    return end;
}

/* Reads the value at p into *v; returns just past it. */
static inline const char *read_value(const char *p, const char *end, jvalue *v)
{
    const char *q = skip_value(p, end);
    v->kind = p < end ? value_kind(*p) : 0;
    v->p = v->kind == '"' ? p + 1 : p;
    v->len = v->kind == '"' ? (size_t)(q - p) - 2 : (size_t)(q - p);
    return q > end ? end : q;
}

/* Iterates the members of an object or the elements of an array that
 * tok_scan_object accepted. */
typedef struct jwalk {
    const char *p, *end;
} jwalk;

/* p at '{' or '['. */
static inline void jwalk_begin(jwalk *w, const char *p, const char *end)
{
    w->p = p + 1;
    w->end = end;
}

/* The next member (key: the raw bytes between its quotes) or element (key
 * NULL). Returns 1, or 0 after the last. */
static inline int jwalk_next(jwalk *w, jvalue *key, jvalue *val)
{
    const char *p = skip_ws(w->p, w->end);
    if (p < w->end && *p == ',') p = skip_ws(p + 1, w->end);
    if (p >= w->end || *p == '}' || *p == ']') return 0;
    if (key) {
        p = read_value(p, w->end, key);
        p = skip_ws(p, w->end);
        p = skip_ws(p + 1, w->end); /* the colon */
    }
    w->p = read_value(p, w->end, val);
    return w->p <= w->end;
}

/* ---- strict JSON (token_json.c) --------------------------------------------- */

/* Checks that text[0..n) is one JSON object as strict as a request body
 * (UTF-8, no \u0000, no trailing junk, no duplicate member names). Returns
 * SG_TOKEN_OK, SG_TOKEN_DUPLICATE_KEY, SG_TOKEN_MALFORMED, or
 * SG_TOKEN_INTERNAL when out of memory. */
sg_token_err tok_scan_object(const char *text, size_t n);

/* Decodes the raw bytes of a scanned JSON string into out (room for len + 1:
 * decoding never grows a string) and NUL-terminates it. Returns the length.
 * Can't fail. */
size_t tok_unescape(const char *s, size_t len, char *out);

/* tok_key_is for a key with a backslash in it: decoded, then compared. 0
 * when out of memory. */
int tok_key_is_escaped(const jvalue *key, const char *name, size_t name_len);

/* Does a member's raw key name `name`? Keys with escapes are decoded first
 * ("\u0065xp" is exp). Inline: the common, unescaped key is one compare. */
static inline int tok_key_is(const jvalue *key, const char *name, size_t name_len)
{
    if (!memchr(key->p, '\\', key->len))
        return key->len == name_len && memcmp(key->p, name, name_len) == 0;
    return tok_key_is_escaped(key, name, name_len);
}

#define KEY_IS(k, lit) tok_key_is((k), lit, sizeof lit - 1)

/* ---- the verifier and its tokens (token.c) ----------------------------------- */

struct sg_verifier {
    sg_keys *keys;
    char *issuer;
    char *audience; /* canonical form */
    int leeway_s;
    size_t max_token_bytes;
    int require_exp;
    unsigned allowed_algs; /* 0: any */
    char *required_claims[SG_VERIFIER_MAX_REQUIRED_CLAIMS];
    int nrequired_claims;
};

/* A verified token and the storage behind its pointers, in one allocation:
 * the struct, then the payload as decoded (json, what sg_token_claims
 * parses), then the decoded claim values the public fields point to. */
typedef struct owned_token {
    sg_token pub; /* first: sg_token_free casts back */
    cJSON *root;  /* the claims tree, built on first sg_token_claims */
    char *json;   /* json_len bytes + NUL */
    size_t json_len;
    char *strings; /* decoded claim values; room for json_len + 1 bytes */
    size_t strings_used;
    const char **scope_list; /* scope_inline, or malloc'd when more */
    const char *scope_inline[8];
} owned_token;

/* A token with room for a payload of up to max_json bytes. NULL when out of
 * memory. */
owned_token *tok_owned_new(size_t max_json);

/* Decodes a string value into the token's string storage. Can't fail (the
 * storage has room for every string of the payload). */
static inline char *tok_keep_string(owned_token *o, const jvalue *v)
{
    char *out = o->strings + o->strings_used;
    o->strings_used += tok_unescape(v->p, v->len, out) + 1;
    return out;
}

/* ---- checks (token_jws.c, token_claims.c) ------------------------------------ */

/* Writes the canonical form of an RFC 8707 resource URI into out
 * (NUL-terminated): scheme and host in lower case, no trailing slash on
 * the path. Returns its length, or -1 when the value has a fragment or
 * does not fit. */
long tok_canonical_resource(const char *s, size_t n, char *out, size_t cap);

/* Checks the claims (o->json, already scanned) against v's rules and fills
 * the public token. Returns SG_TOKEN_OK or the refusal. */
sg_token_err tok_check_claims(const sg_verifier *v, owned_token *o, int64_t now);

/* sg_token_verify_ex with a worker's reused OpenSSL contexts (vc, may be
 * NULL). On SG_TOKEN_OK *out is the caller's (sg_token_free(&o->pub));
 * otherwise it is NULL. */
sg_token_err tok_verify_jws(const sg_verifier *v, const char *token, size_t len, int64_t now,
                            sg_kid_wait kw, uint64_t *ticket, verify_ctx *vc, owned_token **out);

#endif
