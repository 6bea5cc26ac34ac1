/* token.c -- JWS access-token verification, the verified-token cache and
 * development-token minting, all on OpenSSL 3 EVP.
 *
 * libjwt is not on this path (stack-notes.md: it accepts NULL keys, allows
 * algorithm confusion, rejects at+jwt and re-parses PEM per call). Here the
 * token bytes are checked strictly (canonical base64url, UTF-8 JSON without
 * duplicate members), the header alg must be bound to the selected key, the
 * signature is checked with a key parsed once, and only then are the claims
 * read. The order of checks and every refusal code are in docs/tokens.md. */
#include "auth/token.h"
#include "base/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "base/base64url.h"
#include "base/json.h"
#include "authz/scope.h"

#define MAX_AUD_LEN 2048

/* ---- error names ----------------------------------------------------------- */

static const struct {
    const char *name, *message;
} errors[SG_TOKEN_ERR_COUNT] = {
    [SG_TOKEN_OK] = {"ok", "The token is valid."},
    [SG_TOKEN_NO_KEY] = {"no_key", "No verification key is available."},
    [SG_TOKEN_ALG_NONE] = {"alg_none", "Unsigned tokens are not accepted."},
    [SG_TOKEN_ALG_NOT_ALLOWED] = {"alg_not_allowed",
                                  "The token algorithm is not allowed for the verification key."},
    [SG_TOKEN_UNKNOWN_KID] = {"unknown_kid", "The token key id is not known."},
    [SG_TOKEN_KID_REQUIRED] = {"kid_required",
                               "The token has no key id and several keys could verify it."},
    [SG_TOKEN_BAD_SIGNATURE] = {"bad_signature", "The token signature is invalid."},
    [SG_TOKEN_EXPIRED] = {"expired", "The token has expired."},
    [SG_TOKEN_NOT_YET_VALID] = {"not_yet_valid", "The token is not valid yet."},
    [SG_TOKEN_IAT_FUTURE] = {"iat_in_future", "The token was issued in the future."},
    [SG_TOKEN_WRONG_ISSUER] = {"wrong_issuer", "The token issuer is not accepted."},
    [SG_TOKEN_AUD_MISSING] = {"audience_missing", "The token has no audience."},
    [SG_TOKEN_AUD_WRONG] = {"wrong_audience", "The token was not issued for this resource."},
    [SG_TOKEN_MALFORMED] = {"malformed", "The token is malformed."},
    [SG_TOKEN_SEGMENTS] = {"wrong_segment_count",
                           "The token is not a JWS in compact serialization."},
    [SG_TOKEN_TOO_LARGE] = {"too_large", "The token is too large."},
    [SG_TOKEN_CRIT] = {"crit_present", "The token requires unsupported header extensions."},
    [SG_TOKEN_TYP] = {"typ_not_allowed", "The token type is not accepted."},
    [SG_TOKEN_CLAIM_TYPE] = {"claim_wrong_type", "A token claim has the wrong type."},
    [SG_TOKEN_EXP_MISSING] = {"exp_missing", "The token has no expiration time."},
    [SG_TOKEN_CLAIM_MISSING] = {"claim_missing", "The token lacks a claim this server requires."},
    [SG_TOKEN_INVALID_SCOPE] = {"invalid_scope_token", "The token carries an invalid scope."},
    [SG_TOKEN_DUPLICATE_KEY] = {"duplicate_key", "The token repeats a JSON member name."},
    [SG_TOKEN_INTERNAL] = {"internal_error", "The token could not be verified."},
    [SG_TOKEN_INACTIVE] = {"inactive", "The token is not active."},
    [SG_TOKEN_UNAVAILABLE] = {"introspection_unavailable",
                              "The token could not be checked with the authorization server."},
    [SG_TOKEN_PENDING] = {"introspection_pending",
                          "The token is being checked with the authorization server."},
};

const char *sg_token_error_name(sg_token_err e)
{
    return (unsigned)e < SG_TOKEN_ERR_COUNT ? errors[e].name : "internal_error";
}

const char *sg_token_error_message(sg_token_err e)
{
    return (unsigned)e < SG_TOKEN_ERR_COUNT ? errors[e].message : errors[SG_TOKEN_INTERNAL].message;
}

/* ---- digests, fetched once --------------------------------------------------
 * EVP_sha256() and friends make OpenSSL 3 look the algorithm up on every
 * init; explicitly fetched ones do not. */

static EVP_MD *md_sha[3]; /* SHA256, SHA384, SHA512 */
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void md_fetch_all(void)
{
    md_sha[0] = EVP_MD_fetch(NULL, "SHA256", NULL);
    md_sha[1] = EVP_MD_fetch(NULL, "SHA384", NULL);
    md_sha[2] = EVP_MD_fetch(NULL, "SHA512", NULL);
}

/* The digest of an alg; NULL for EdDSA (and none). Process-lifetime objects. */
static const EVP_MD *alg_md(int alg)
{
    pthread_once(&md_once, md_fetch_all);
    switch (alg) {
    case SG_ALG_HS256:
    case SG_ALG_RS256:
    case SG_ALG_PS256:
    case SG_ALG_ES256:
        return md_sha[0];
    case SG_ALG_HS384:
    case SG_ALG_RS384:
    case SG_ALG_PS384:
    case SG_ALG_ES384:
        return md_sha[1];
    case SG_ALG_HS512:
    case SG_ALG_RS512:
    case SG_ALG_PS512:
    case SG_ALG_ES512:
        return md_sha[2];
    default:
        return NULL;
    }
}

static int alg_is_hmac(int a)
{
    return a == SG_ALG_HS256 || a == SG_ALG_HS384 || a == SG_ALG_HS512;
}
static int alg_is_pss(int a)
{
    return a == SG_ALG_PS256 || a == SG_ALG_PS384 || a == SG_ALG_PS512;
}
/* ECDSA coordinate size in bytes, 0 for other algs. */
static size_t alg_ec_size(int a)
{
    return a == SG_ALG_ES256 ? 32 : a == SG_ALG_ES384 ? 48 : a == SG_ALG_ES512 ? 66 : 0;
}

/* ---- signatures -------------------------------------------------------------- */

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

static void verify_ctx_clear(verify_ctx *vc)
{
    for (int i = 0; i < VERIFY_CTX_SLOTS; i++) {
        EVP_PKEY_CTX_free(vc->slot[i].pctx);
        vc->slot[i].pctx = NULL;
        vc->slot[i].pkey = NULL;
    }
}

/* The initialised verification context for (pkey, alg); NULL on an OpenSSL
 * failure. */
static EVP_PKEY_CTX *verify_ctx_for(verify_ctx *vc, EVP_PKEY *pkey, int alg, const EVP_MD *md)
{
    for (int i = 0; i < VERIFY_CTX_SLOTS; i++)
        if (vc->slot[i].pctx && vc->slot[i].pkey == pkey && vc->slot[i].alg == alg)
            return vc->slot[i].pctx;
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    int ok = pctx && EVP_PKEY_verify_init(pctx) > 0 && EVP_PKEY_CTX_set_signature_md(pctx, md) > 0;
    if (ok && alg_is_pss(alg))
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) > 0;
    else if (ok && !alg_ec_size(alg))
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0;
    if (!ok) {
        EVP_PKEY_CTX_free(pctx);
        return NULL;
    }
    unsigned i = vc->next++ % VERIFY_CTX_SLOTS;
    EVP_PKEY_CTX_free(vc->slot[i].pctx);
    vc->slot[i].pctx = pctx;
    vc->slot[i].pkey = pkey;
    vc->slot[i].alg = alg;
    return pctx;
}

/* Checks a signature over data with a worker's reused contexts: the digest,
 * then EVP_PKEY_verify on it. RSA (PKCS #1 v1.5 and PSS) and ECDSA only.
 * Returns 1 valid, 0 invalid, -1 internal failure. */
static int verify_prehashed(verify_ctx *vc, const sg_jwk *key, int alg, const EVP_MD *md,
                            const unsigned char *data, size_t len, const unsigned char *sig,
                            size_t siglen)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (!vc->md && !(vc->md = EVP_MD_CTX_new())) return -1;
    if (EVP_DigestInit_ex(vc->md, md, NULL) <= 0 || EVP_DigestUpdate(vc->md, data, len) <= 0 ||
        EVP_DigestFinal_ex(vc->md, digest, &dlen) <= 0)
        return -1;
    EVP_PKEY_CTX *pctx = verify_ctx_for(vc, key->pkey, alg, md);
    if (!pctx) return -1;
    return EVP_PKEY_verify(pctx, sig, siglen, digest, dlen) == 1;
}

/* Returns 1 valid, 0 invalid, -1 internal failure. vc (a worker's reused
 * contexts) may be NULL: then everything is set up for this one check. */
static int verify_signature(verify_ctx *vc, const sg_jwk *key, int alg, const unsigned char *data,
                            size_t len, const unsigned char *sig, size_t siglen)
{
    const EVP_MD *md = alg_md(alg);
    if (alg_is_hmac(alg)) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        if (!md || !key->secret ||
            !HMAC(md, key->secret, (int)key->secret_len, data, len, mac, &maclen))
            return -1;
        return siglen == maclen && CRYPTO_memcmp(mac, sig, maclen) == 0;
    }
    if (!key->pkey) return -1;

    unsigned char der[160]; /* DER ECDSA-Sig-Value of two 66-byte integers fits */
    size_t clen = alg_ec_size(alg);
    if (clen) { /* JWS carries raw r||s of exactly the field size each */
        if (siglen != 2 * clen) return 0;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)clen, NULL), *s = BN_bin2bn(sig + clen, (int)clen, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            ECDSA_SIG_free(es);
            BN_free(r);
            BN_free(s);
            return -1;
        }
        unsigned char *p = der;
        int n = i2d_ECDSA_SIG(es, NULL) <= (int)sizeof der ? i2d_ECDSA_SIG(es, &p) : -1;
        ECDSA_SIG_free(es);
        if (n <= 0) return -1;
        sig = der;
        siglen = (size_t)n;
    } else if (alg != SG_ALG_EDDSA && siglen != (size_t)EVP_PKEY_get_size(key->pkey)) {
        return 0; /* RSA signatures are exactly the modulus length */
    }
    if (vc && md && alg != SG_ALG_EDDSA)
        return verify_prehashed(vc, key, alg, md, data, len, sig, siglen);

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int rc = -1;
    if (ctx && EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key->pkey) > 0) {
        if (alg_is_pss(alg) &&
            (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0 ||
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0)) {
            rc = -1;
        } else {
            rc = EVP_DigestVerify(ctx, sig, siglen, data, len) == 1;
        }
    }
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Checks that text[0..n) is one JSON object as strict as a request body:
 * UTF-8, no \u0000, no trailing junk and no duplicate member names (cJSON
 * keeps the first of two "scope" claims, other parsers the last: claim
 * confusion). Returns SG_TOKEN_OK or the refusal. */
static sg_token_err scan_object(const char *text, size_t n)
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

/* ---- reading a scanned object in one pass ---------------------------------------
 * The header and the claims are read without building a tree: once
 * scan_object has accepted the bytes, a walk over the top-level members
 * needs no error handling beyond staying inside them, and only the members
 * verification looks at are decoded. (The claims tree a function rule or an
 * identity header wants is built on demand, sg_token_claims.) */

/* What kind of JSON value starts with c: '"' string, '{' object, '['
 * array, 'n' number, 't'/'f' true/false, 'z' null. */
static char value_kind(char c)
{
    return c == '"' || c == '{' || c == '[' ? c : c == 't' || c == 'f' ? c : c == 'n' ? 'z' : 'n';
}

typedef struct jvalue {
    const char *p; /* the value's first byte; for a string, its first byte after the quote */
    size_t len;    /* for a string, the raw bytes between the quotes */
    char kind;     /* value_kind; 0: absent */
} jvalue;

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p just after an opening quote; returns the closing quote. */
static const char *string_end(const char *p, const char *end)
{
    while (p < end && *p != '"')
        p += *p == '\\' ? 2 : 1;
    return p < end ? p : end;
}

/* p at a value's first byte; returns just past the value. */
static const char *skip_value(const char *p, const char *end)
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
static const char *read_value(const char *p, const char *end, jvalue *v)
{
    const char *q = skip_value(p, end);
    v->kind = p < end ? value_kind(*p) : 0;
    v->p = v->kind == '"' ? p + 1 : p;
    v->len = v->kind == '"' ? (size_t)(q - p) - 2 : (size_t)(q - p);
    return q > end ? end : q;
}

/* Iterates the members of an object or the elements of an array that
 * scan_object accepted. */
typedef struct jwalk {
    const char *p, *end;
} jwalk;

/* p at '{' or '['. */
static void jwalk_begin(jwalk *w, const char *p, const char *end)
{
    w->p = p + 1;
    w->end = end;
}

/* The next member (key: the raw bytes between its quotes) or element (key
 * NULL). Returns 1, or 0 after the last. */
static int jwalk_next(jwalk *w, jvalue *key, jvalue *val)
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

static unsigned hex4(const char *p)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v = v << 4 | (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/* Decodes the raw bytes of a scanned JSON string into out (room for len + 1:
 * decoding never grows a string) and NUL-terminates it. Returns the length. */
static size_t unescape(const char *s, size_t len, char *out)
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

/* Does a member's raw key name `name`? Keys with escapes are decoded first
 * ("\u0065xp" is exp). */
static int key_is(const jvalue *key, const char *name, size_t name_len)
{
    if (!memchr(key->p, '\\', key->len))
        return key->len == name_len && memcmp(key->p, name, name_len) == 0;
    if (key->len < name_len) return 0;
    char small[256];
    char *buf = key->len < sizeof small ? small : malloc(key->len + 1);
    if (!buf) return 0;
    size_t n = unescape(key->p, key->len, buf);
    int same = n == name_len && memcmp(buf, name, n) == 0;
    if (buf != small) free(buf);
    return same;
}

#define KEY_IS(k, lit) key_is((k), lit, sizeof lit - 1)

/* ---- resource URIs ------------------------------------------------------------
 * RFC 8707 audiences compare as canonical resource URIs: scheme and host in
 * lower case, no trailing slash on the path, never a fragment. A value
 * without "scheme://" is compared byte for byte. */

/* Writes the canonical form into out (NUL-terminated). Returns its length,
 * or -1 when the value has a fragment or does not fit. */
static long canonical_resource(const char *s, size_t n, char *out, size_t cap)
{
    if (n + 1 > cap || memchr(s, '#', n)) return -1;
    size_t scheme_end = 0;
    while (scheme_end < n && scheme_end < 32 &&
           ((s[scheme_end] >= 'a' && s[scheme_end] <= 'z') ||
            (s[scheme_end] >= 'A' && s[scheme_end] <= 'Z') ||
            (scheme_end > 0 &&
             ((s[scheme_end] >= '0' && s[scheme_end] <= '9') || s[scheme_end] == '+' ||
              s[scheme_end] == '-' || s[scheme_end] == '.'))))
        scheme_end++;
    memcpy(out, s, n);
    out[n] = '\0';
    if (scheme_end == 0 || n - scheme_end < 3 || memcmp(s + scheme_end, "://", 3) != 0)
        return (long)n;
    size_t host_end = scheme_end + 3;
    while (host_end < n && s[host_end] != '/' && s[host_end] != '?')
        host_end++;
    for (size_t i = 0; i < host_end; i++)
        if (out[i] >= 'A' && out[i] <= 'Z') out[i] = (char)(out[i] - 'A' + 'a');
    const char *q = memchr(s + host_end, '?', n - host_end);
    size_t path_end = q ? (size_t)(q - s) : n;
    if (path_end > host_end && s[path_end - 1] == '/') { /* drop one trailing slash */
        memmove(out + path_end - 1, out + path_end, n - path_end + 1);
        n--;
    }
    return (long)n;
}

/* ---- the verifier ------------------------------------------------------------- */

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

void sg_verifier_config_init(sg_verifier_config *c)
{
    memset(c, 0, sizeof *c);
    c->leeway_s = 60;
    c->max_token_bytes = SG_TOKEN_DEFAULT_MAX_BYTES;
    c->require_exp = 1;
}

sg_verifier *sg_verifier_new(const sg_verifier_config *c, sg_keys *keys, char *err, size_t errlen)
{
    if (!keys) {
        sg_errf(err, errlen, "no key set");
        return NULL;
    }
    if (c->leeway_s < 0 || c->leeway_s > 3600) {
        sg_errf(err, errlen, "leeway must be 0 to 3600 seconds");
        return NULL;
    }
    if (c->max_token_bytes < 64 || c->max_token_bytes > 1024 * 1024) {
        sg_errf(err, errlen, "max token size must be 64 bytes to 1 MiB");
        return NULL;
    }
    sg_verifier *v = calloc(1, sizeof *v);
    if (!v) goto oom;
    v->keys = keys;
    v->leeway_s = c->leeway_s;
    v->max_token_bytes = c->max_token_bytes;
    v->require_exp = c->require_exp;
    v->allowed_algs = c->allowed_algs;
    for (int i = 0; i < c->nrequired_claims && i < SG_VERIFIER_MAX_REQUIRED_CLAIMS; i++) {
        if (!(v->required_claims[i] = strdup(c->required_claims[i]))) {
            sg_verifier_free(v);
            sg_errf(err, errlen, "out of memory");
            return NULL;
        }
        v->nrequired_claims = i + 1;
    }
    if (c->issuer && !(v->issuer = strdup(c->issuer))) goto oom;
    if (c->audience) {
        char canon[MAX_AUD_LEN];
        if (!*c->audience ||
            canonical_resource(c->audience, strlen(c->audience), canon, sizeof canon) < 0) {
            sg_errf(err, errlen, "the audience must be a resource URI without a fragment");
            sg_verifier_free(v);
            return NULL;
        }
        if (!(v->audience = strdup(canon))) goto oom;
    }
    return v;
oom:
    sg_verifier_free(v);
    sg_errf(err, errlen, "out of memory");
    return NULL;
}

size_t sg_verifier_max_token_bytes(const sg_verifier *v)
{
    return v->max_token_bytes;
}

sg_keys *sg_verifier_keys(const sg_verifier *v)
{
    return v->keys;
}

void sg_verifier_free(sg_verifier *v)
{
    if (!v) return;
    free(v->issuer);
    free(v->audience);
    for (int i = 0; i < v->nrequired_claims; i++)
        free(v->required_claims[i]);
    free(v);
}

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
static owned_token *owned_token_new(size_t max_json)
{
    owned_token *o = malloc(sizeof *o + 2 * (max_json + 1));
    if (!o) return NULL;
    memset(o, 0, sizeof *o);
    o->json = (char *)(o + 1);
    o->strings = o->json + max_json + 1;
    return o;
}

void sg_token_free(sg_token *t)
{
    if (!t) return;
    owned_token *o = (owned_token *)t;
    cJSON_Delete(o->root);
    if (o->scope_list != o->scope_inline) free(o->scope_list);
    free(o);
}

const cJSON *sg_token_claims(const sg_token *t)
{
    if (!t || t->claims || !t->claims_json) return t ? t->claims : NULL;
    owned_token *o = (owned_token *)t; /* only token.c sets claims_json */
    if (!o->root) o->root = cJSON_ParseWithLength(o->json, o->json_len);
    o->pub.claims = o->root;
    return o->root;
}

/* Decodes a string value into the token's string storage. */
static char *keep_string(owned_token *o, const jvalue *v)
{
    char *out = o->strings + o->strings_used;
    o->strings_used += unescape(v->p, v->len, out) + 1;
    return out;
}

/* Picks the key for (kid, alg) from a snapshot. Returns SG_TOKEN_OK with
 * *key set, SG_TOKEN_UNKNOWN_KID, SG_TOKEN_ALG_NOT_ALLOWED or
 * SG_TOKEN_KID_REQUIRED. */
static sg_token_err select_key(const sg_keyset *s, const char *kid, int alg, const sg_jwk **key)
{
    unsigned bit = SG_ALG_BIT(alg);
    int kid_seen = 0, candidates = 0;
    for (int i = 0; i < s->nkeys; i++) {
        const sg_jwk *k = &s->keys[i];
        if (kid) {
            if (!k->kid || strcmp(k->kid, kid) != 0) continue;
            kid_seen = 1;
            if (k->algs & bit) {
                *key = k;
                return SG_TOKEN_OK;
            }
        } else if (k->algs & bit) {
            *key = k;
            candidates++;
        }
    }
    if (kid) return kid_seen ? SG_TOKEN_ALG_NOT_ALLOWED : SG_TOKEN_UNKNOWN_KID;
    if (candidates == 1) return SG_TOKEN_OK;
    return candidates == 0 ? SG_TOKEN_ALG_NOT_ALLOWED : SG_TOKEN_KID_REQUIRED;
}

static int typ_allowed(const char *typ)
{
    return strcasecmp(typ, "JWT") == 0 || strcasecmp(typ, "at+jwt") == 0 ||
           strcasecmp(typ, "application/at+jwt") == 0;
}

/* The members of a JWS header verification reads. */
typedef struct jws_header {
    jvalue alg, crit, typ, kid;
} jws_header;

/* Decodes the header segment (into buf, room for sg_b64url_decoded_max(len)
 * + 1), checks it as a strict JSON object and finds its members, with their
 * string values decoded in place. */
static sg_token_err read_header(const char *seg, size_t len, char *buf, jws_header *h)
{
    memset(h, 0, sizeof *h);
    long n = sg_b64url_decode(seg, len, (unsigned char *)buf);
    if (n <= 0) return SG_TOKEN_MALFORMED;
    sg_token_err e = scan_object(buf, (size_t)n);
    if (e) return e;
    const char *end = buf + n;
    jwalk w;
    jvalue key, val;
    jwalk_begin(&w, skip_ws(buf, end), end);
    while (jwalk_next(&w, &key, &val)) {
        jvalue *slot = KEY_IS(&key, "alg")    ? &h->alg
                       : KEY_IS(&key, "crit") ? &h->crit
                       : KEY_IS(&key, "typ")  ? &h->typ
                       : KEY_IS(&key, "kid")  ? &h->kid
                                              : NULL;
        if (slot) *slot = val;
    }
    /* Decode the strings where they are: a decoded string is never longer,
     * and what follows it is no longer read. */
    jvalue *strs[] = {&h->alg, &h->typ, &h->kid};
    for (size_t i = 0; i < SG_ARRAY_LEN(strs); i++)
        if (strs[i]->kind == '"')
            strs[i]->len = unescape(strs[i]->p, strs[i]->len, (char *)strs[i]->p);
    return SG_TOKEN_OK;
}

/* Checks the header and the signature. vc: the worker's reused contexts,
 * or NULL. */
static sg_token_err check_header_and_signature(const sg_verifier *v, const char *token,
                                               size_t signed_len, const char *sig_b64,
                                               size_t sig_b64_len, const jws_header *h,
                                               unsigned char *scratch, sg_kid_wait kw,
                                               uint64_t *ticket, verify_ctx *vc)
{
    if (h->alg.kind != '"') return SG_TOKEN_MALFORMED;
    const char *alg_name = h->alg.p;
    if (strcasecmp(alg_name, "none") == 0) return SG_TOKEN_ALG_NONE;
    int alg = sg_jws_alg_from_name(alg_name, strlen(alg_name));
    if (alg <= SG_ALG_NONE) return SG_TOKEN_ALG_NOT_ALLOWED;
    if (v->allowed_algs && !(v->allowed_algs & SG_ALG_BIT(alg))) return SG_TOKEN_ALG_NOT_ALLOWED;
    if (h->crit.kind) return SG_TOKEN_CRIT;
    if (h->typ.kind && (h->typ.kind != '"' || !typ_allowed(h->typ.p))) return SG_TOKEN_TYP;
    if (h->kid.kind && h->kid.kind != '"') return SG_TOKEN_MALFORMED;
    const char *kid = h->kid.kind ? h->kid.p : NULL;

    long siglen = sg_b64url_decode(sig_b64, sig_b64_len, scratch);
    if (siglen <= 0) return SG_TOKEN_MALFORMED;

    const sg_keyset *s = sg_keys_acquire(v->keys);
    if (s->nkeys == 0) {
        sg_keyset_release(s);
        return SG_TOKEN_NO_KEY;
    }
    const sg_jwk *key = NULL;
    sg_token_err e = select_key(s, kid, alg, &key);
    if (e == SG_TOKEN_OK) sg_metric_inc(SG_M_JWKS_CACHE_HITS);
    if (e == SG_TOKEN_UNKNOWN_KID) sg_metric_inc(SG_M_JWKS_CACHE_MISSES);
    if (e == SG_TOKEN_UNKNOWN_KID && kw == SG_KID_BLOCK) {
        const sg_keyset *newer = sg_keys_refetch_for_kid(v->keys, s);
        if (newer) {
            sg_keyset_release(s);
            s = newer;
            e = select_key(s, kid, alg, &key);
        }
    }
    /* Deferred: a snapshot published meanwhile is tried at once (twice at
     * most); otherwise the refetch is left to the refresher thread. */
    for (int round = 0; e == SG_TOKEN_UNKNOWN_KID && kw == SG_KID_DEFER && round < 2; round++) {
        const sg_keyset *newer;
        if (sg_keys_want_kid(v->keys, s, &newer, ticket) != SG_KEYS_KID_NEWER) break;
        sg_keyset_release(s);
        s = newer;
        e = select_key(s, kid, alg, &key);
    }
    if (e != SG_TOKEN_UNKNOWN_KID && ticket) *ticket = 0;
    if (e == SG_TOKEN_OK) {
        int ok = verify_signature(vc, key, alg, (const unsigned char *)token, signed_len, scratch,
                                  (size_t)siglen);
        e = ok == 1 ? SG_TOKEN_OK : ok == 0 ? SG_TOKEN_BAD_SIGNATURE : SG_TOKEN_INTERNAL;
    }
    sg_keyset_release(s);
    return e;
}

/* The claims verification reads, found in one walk over the payload. */
typedef struct claims_view {
    jvalue exp, nbf, iat, iss, sub, client_id, azp, aud, scope, scp;
    uint32_t required_seen; /* bit i: v->required_claims[i] is present */
} claims_view;

static void read_claims(const sg_verifier *v, const char *json, size_t n, claims_view *c)
{
    memset(c, 0, sizeof *c);
    const char *end = json + n;
    jwalk w;
    jvalue key, val;
    jwalk_begin(&w, skip_ws(json, end), end);
    while (jwalk_next(&w, &key, &val)) {
        jvalue *slot = NULL;
        switch (key.len) {
        case 3:
            slot = KEY_IS(&key, "exp")   ? &c->exp
                   : KEY_IS(&key, "nbf") ? &c->nbf
                   : KEY_IS(&key, "iat") ? &c->iat
                   : KEY_IS(&key, "iss") ? &c->iss
                   : KEY_IS(&key, "sub") ? &c->sub
                   : KEY_IS(&key, "aud") ? &c->aud
                   : KEY_IS(&key, "azp") ? &c->azp
                   : KEY_IS(&key, "scp") ? &c->scp
                                         : NULL;
            break;
        case 5:
            slot = KEY_IS(&key, "scope") ? &c->scope : NULL;
            break;
        case 9:
            slot = KEY_IS(&key, "client_id") ? &c->client_id : NULL;
            break;
        default:
            break;
        }
        /* An escaped key can name any of them, whatever its raw length. */
        if (!slot && memchr(key.p, '\\', key.len))
            slot = KEY_IS(&key, "exp")         ? &c->exp
                   : KEY_IS(&key, "nbf")       ? &c->nbf
                   : KEY_IS(&key, "iat")       ? &c->iat
                   : KEY_IS(&key, "iss")       ? &c->iss
                   : KEY_IS(&key, "sub")       ? &c->sub
                   : KEY_IS(&key, "aud")       ? &c->aud
                   : KEY_IS(&key, "azp")       ? &c->azp
                   : KEY_IS(&key, "scp")       ? &c->scp
                   : KEY_IS(&key, "scope")     ? &c->scope
                   : KEY_IS(&key, "client_id") ? &c->client_id
                                               : NULL;
        if (slot) *slot = val;
        for (int i = 0; i < v->nrequired_claims; i++)
            if (key_is(&key, v->required_claims[i], strlen(v->required_claims[i])))
                c->required_seen |= (uint32_t)1 << i;
    }
}

/* A numeric date claim: 0 absent, 1 present (*out set), -1 wrong type. */
static int date_claim(const jvalue *c, double *out)
{
    if (!c->kind) return 0;
    if (c->kind != 'n' || c->len >= 64) return -1;
    char num[64];
    memcpy(num, c->p, c->len);
    num[c->len] = '\0';
    double d = strtod(num, NULL);
    if (!isfinite(d)) return -1;
    *out = d;
    return 1;
}

static int audience_matches(const sg_verifier *v, const char *aud)
{
    char canon[MAX_AUD_LEN];
    long n = canonical_resource(aud, strlen(aud), canon, sizeof canon);
    return n >= 0 && strcmp(canon, v->audience) == 0;
}

/* Splits space-separated scopes in place and appends them to list.
 * Returns 0, or SG_TOKEN_INVALID_SCOPE. */
static sg_token_err split_scopes(char *text, const char **list, int *n)
{
    char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p) break;
        char *start = p;
        while (*p && *p != ' ')
            p++;
        if (*p) *p++ = '\0';
        if (*n >= SG_TOKEN_MAX_SCOPES) return SG_TOKEN_INVALID_SCOPE;
        list[(*n)++] = start;
    }
    return SG_TOKEN_OK;
}

/* Collects, validates and deduplicates scope (string) and scp (array of
 * strings, or string) into o. */
static sg_token_err collect_scopes(owned_token *o, const claims_view *c)
{
    const jvalue *scope = &c->scope, *scp = &c->scp;
    if (scope->kind && scope->kind != '"') return SG_TOKEN_CLAIM_TYPE;
    if (scp->kind && scp->kind != '"' && scp->kind != '[') return SG_TOKEN_CLAIM_TYPE;
    const char *found[SG_TOKEN_MAX_SCOPES];
    int n = 0;
    if (scope->kind && split_scopes(keep_string(o, scope), found, &n))
        return SG_TOKEN_INVALID_SCOPE;
    if (scp->kind == '"' && split_scopes(keep_string(o, scp), found, &n))
        return SG_TOKEN_INVALID_SCOPE;
    if (scp->kind == '[') {
        jwalk w;
        jvalue item;
        jwalk_begin(&w, scp->p, scp->p + scp->len);
        while (jwalk_next(&w, NULL, &item)) {
            if (item.kind != '"') return SG_TOKEN_CLAIM_TYPE;
            if (n >= SG_TOKEN_MAX_SCOPES) return SG_TOKEN_INVALID_SCOPE;
            found[n++] = keep_string(o, &item);
        }
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        const char *s = found[i];
        if (!sg_scope_token_valid(s, strlen(s))) return SG_TOKEN_INVALID_SCOPE;
        int dup = 0;
        for (int j = 0; j < kept && !dup; j++)
            dup = strcmp(found[j], s) == 0;
        if (!dup) found[kept++] = s;
    }
    o->scope_list = o->scope_inline;
    if ((size_t)kept > SG_ARRAY_LEN(o->scope_inline) &&
        !(o->scope_list = malloc((size_t)kept * sizeof *o->scope_list))) {
        o->scope_list = o->scope_inline;
        return SG_TOKEN_INTERNAL;
    }
    memcpy(o->scope_list, found, (size_t)kept * sizeof *found);
    o->pub.nscopes = kept;
    o->pub.scopes = o->scope_list;
    return SG_TOKEN_OK;
}

/* Checks the verified claims (o->json, already scanned) and fills the
 * public token. */
static sg_token_err check_claims(const sg_verifier *v, owned_token *o, int64_t now)
{
    claims_view c;
    read_claims(v, o->json, o->json_len, &c);
    double exp = 0, nbf = 0, iat = 0;
    int has_exp = date_claim(&c.exp, &exp);
    int has_nbf = date_claim(&c.nbf, &nbf);
    int has_iat = date_claim(&c.iat, &iat);
    int bad = has_exp < 0 || has_nbf < 0 || has_iat < 0;
    const jvalue *strs[] = {&c.iss, &c.sub, &c.client_id, &c.azp};
    for (size_t i = 0; i < SG_ARRAY_LEN(strs); i++)
        if (strs[i]->kind && strs[i]->kind != '"') bad = 1;
    if (c.aud.kind && c.aud.kind != '"') {
        if (c.aud.kind != '[') bad = 1;
        jwalk w;
        jvalue item;
        jwalk_begin(&w, c.aud.p, c.aud.p + c.aud.len);
        while (c.aud.kind == '[' && jwalk_next(&w, NULL, &item))
            if (item.kind != '"') bad = 1;
    }
    if (bad) return SG_TOKEN_CLAIM_TYPE;

    double t = (double)now, leeway = v->leeway_s;
    if (!has_exp && v->require_exp) return SG_TOKEN_EXP_MISSING;
    for (int i = 0; i < v->nrequired_claims; i++)
        if (!(c.required_seen & (uint32_t)1 << i)) return SG_TOKEN_CLAIM_MISSING;
    if (has_exp && t >= exp + leeway) return SG_TOKEN_EXPIRED;
    if (has_nbf && t + leeway < nbf) return SG_TOKEN_NOT_YET_VALID;
    if (has_iat && iat > t + leeway) return SG_TOKEN_IAT_FUTURE;
    const char *iss = c.iss.kind ? keep_string(o, &c.iss) : NULL;
    if (v->issuer && (!iss || strcmp(iss, v->issuer) != 0)) return SG_TOKEN_WRONG_ISSUER;
    if (v->audience) {
        if (!c.aud.kind) return SG_TOKEN_AUD_MISSING;
        size_t mark = o->strings_used; /* audiences are compared, not kept */
        int match = 0;
        if (c.aud.kind == '"') {
            match = audience_matches(v, keep_string(o, &c.aud));
        } else {
            jwalk w;
            jvalue item;
            jwalk_begin(&w, c.aud.p, c.aud.p + c.aud.len);
            while (!match && jwalk_next(&w, NULL, &item))
                match = audience_matches(v, keep_string(o, &item));
        }
        o->strings_used = mark;
        if (!match) return SG_TOKEN_AUD_WRONG;
    }
    sg_token_err e = collect_scopes(o, &c);
    if (e) return e;

    o->pub.claims = NULL; /* built on demand: sg_token_claims */
    o->pub.claims_json = o->json;
    o->pub.claims_json_len = o->json_len;
    o->pub.sub = c.sub.kind ? keep_string(o, &c.sub) : NULL;
    o->pub.client_id = c.client_id.kind ? keep_string(o, &c.client_id)
                       : c.azp.kind     ? keep_string(o, &c.azp)
                                        : NULL;
    o->pub.iss = iss;
    if (!has_exp || exp >= 9.2e18)
        o->pub.exp = INT64_MAX; /* no expiry: see docs/tokens.md */
    else
        o->pub.exp = exp <= -9.2e18 ? INT64_MIN : (int64_t)floor(exp);
    return SG_TOKEN_OK;
}

/* sg_token_verify_ex with a worker's reused OpenSSL contexts (vc, may be
 * NULL). On SG_TOKEN_OK *out is the caller's. */
static sg_token_err verify_token(const sg_verifier *v, const char *token, size_t len, int64_t now,
                                 sg_kid_wait kw, uint64_t *ticket, verify_ctx *vc,
                                 owned_token **out)
{
    *out = NULL;
    if (ticket) *ticket = 0;
    if (len > v->max_token_bytes) return SG_TOKEN_TOO_LARGE;
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token))) return SG_TOKEN_SEGMENTS;
    size_t header_len = (size_t)(dot1 - token);
    const char *payload = dot1 + 1;
    size_t payload_len = (size_t)(dot2 - payload);
    const char *sig = dot2 + 1;
    size_t sig_len = len - (size_t)(sig - token);

    /* The header and the signature are decoded into scratch space: on the
     * stack for any ordinary token. The payload is decoded once, after the
     * signature holds, straight into the token that keeps it. */
    size_t need = sg_b64url_decoded_max(header_len) + sg_b64url_decoded_max(sig_len) + 2;
    char stack_scratch[2048];
    char *scratch = need <= sizeof stack_scratch ? stack_scratch : malloc(need);
    if (!scratch) return SG_TOKEN_INTERNAL;
    char *header_buf = scratch;
    unsigned char *sig_buf = (unsigned char *)scratch + sg_b64url_decoded_max(header_len) + 1;
    jws_header h;
    sg_token_err e = read_header(token, header_len, header_buf, &h);
    if (e == SG_TOKEN_OK)
        e = check_header_and_signature(v, token, (size_t)(dot2 - token), sig, sig_len, &h, sig_buf,
                                       kw, ticket, vc);
    if (scratch != stack_scratch) free(scratch);
    if (e != SG_TOKEN_OK) return e;

    owned_token *o = owned_token_new(sg_b64url_decoded_max(payload_len));
    if (!o) return SG_TOKEN_INTERNAL;
    long n = sg_b64url_decode(payload, payload_len, (unsigned char *)o->json);
    if (n <= 0) {
        e = SG_TOKEN_MALFORMED;
    } else {
        o->json[n] = '\0';
        o->json_len = (size_t)n;
        e = scan_object(o->json, o->json_len);
    }
    if (e == SG_TOKEN_OK) e = check_claims(v, o, now);
    if (e != SG_TOKEN_OK) {
        sg_token_free(&o->pub);
        return e;
    }
    *out = o;
    return SG_TOKEN_OK;
}

int sg_token_is_jws(const char *token, size_t len)
{
    size_t dots = 0, seg_start = 0, first_len = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)token[i];
        if (c == '.') {
            if (i == seg_start) return 0; /* an empty segment */
            if (dots++ == 0) first_len = i;
            seg_start = i + 1;
        } else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_')) {
            return 0;
        }
    }
    if (dots != 2 || first_len < 2) return 0;
    /* The first bytes of the header: "{" after optional JSON white space
     * ("ey" is the usual encoding of '{"'). Two base64url characters carry
     * the whole first byte. */
    unsigned char head[4];
    size_t take = first_len < 4 ? first_len : 4;
    long n = sg_b64url_decode(token, take, head);
    for (long i = 0; i < n; i++) {
        if (head[i] == '{') return 1;
        if (head[i] != ' ' && head[i] != '\t' && head[i] != '\r' && head[i] != '\n') return 0;
    }
    return 0;
}

sg_token_err sg_token_from_introspection(const sg_verifier *v, const char *json, size_t len,
                                         int64_t now, sg_token **out)
{
    *out = NULL;
    owned_token *o = owned_token_new(len);
    if (!o) return SG_TOKEN_INTERNAL;
    memcpy(o->json, json, len);
    o->json[len] = '\0';
    o->json_len = len;
    sg_token_err e = scan_object(o->json, len);
    /* The members only an introspection answer has, in one walk. */
    jvalue active = {0}, type = {0}, iss = {0};
    if (e == SG_TOKEN_OK) {
        const char *end = o->json + len;
        jwalk w;
        jvalue key, val;
        jwalk_begin(&w, skip_ws(o->json, end), end);
        while (jwalk_next(&w, &key, &val)) {
            if (KEY_IS(&key, "active")) active = val;
            if (KEY_IS(&key, "token_type")) type = val;
            if (KEY_IS(&key, "iss")) iss = val;
        }
    }
    if (e != SG_TOKEN_OK) {
        /* not a JSON object: the caller treats it as the server's failure */
    } else if (active.kind != 't') {
        e = SG_TOKEN_INACTIVE; /* RFC 7662 2.2: only the boolean true means active */
    } else if (type.kind && type.kind != '"') {
        e = SG_TOKEN_CLAIM_TYPE;
    } else if (type.kind) {
        const char *t = keep_string(o, &type);
        if (strcasecmp(t, "refresh_token") == 0 ||
            strcasecmp(t, "urn:ietf:params:oauth:token-type:refresh_token") == 0)
            e = SG_TOKEN_TYP; /* a refresh token is no access token */
        o->strings_used = 0;  /* only compared, not kept */
    }
    if (e == SG_TOKEN_OK) {
        /* iss and exp are optional in an introspection answer (RFC 7662
         * 2.2): iss is compared when the server sends it, and without exp
         * the cache TTL alone bounds how long the answer is believed. */
        sg_verifier rules = *v;
        rules.require_exp = 0;
        if (!iss.kind) rules.issuer = NULL;
        e = check_claims(&rules, o, now);
    }
    if (e != SG_TOKEN_OK) {
        sg_token_free(&o->pub);
        return e;
    }
    *out = &o->pub;
    return SG_TOKEN_OK;
}

sg_token_err sg_token_verify(const sg_verifier *v, const char *token, size_t len, int64_t now,
                             sg_token **out)
{
    return sg_token_verify_ex(v, token, len, now, SG_KID_BLOCK, NULL, out);
}

sg_token_err sg_token_verify_ex(const sg_verifier *v, const char *token, size_t len, int64_t now,
                                sg_kid_wait kw, uint64_t *ticket, sg_token **out)
{
    owned_token *o;
    sg_token_err e = verify_token(v, token, len, now, kw, ticket, NULL, &o);
    *out = e == SG_TOKEN_OK ? &o->pub : NULL;
    return e;
}

sg_token_err sg_token_from_claims(const char *json, size_t len, sg_token **out)
{
    /* Nothing to verify against: no issuer, audience or expiry rules, only
     * the shape of the claims and the scope tokens. */
    static const sg_verifier unchecked = {.leeway_s = INT32_MAX / 2};
    *out = NULL;
    owned_token *o = owned_token_new(len);
    if (!o) return SG_TOKEN_INTERNAL;
    memcpy(o->json, json, len);
    o->json[len] = '\0';
    o->json_len = len;
    sg_token_err e = scan_object(o->json, len);
    if (e == SG_TOKEN_OK) e = check_claims(&unchecked, o, sg_now_unix());
    if (e != SG_TOKEN_OK) {
        sg_token_free(&o->pub);
        return e;
    }
    *out = &o->pub;
    return SG_TOKEN_OK;
}

/* ---- the cache -------------------------------------------------------------------
 * Chained hash table over a fixed array of slots; buckets and chains hold
 * slot indexes. SipHash-2-4 with a per-cache random key keeps an attacker
 * from aiming many tokens at one bucket; the full bytes are compared. */

#define NIL (-1)

typedef struct tc_entry {
    uint64_t hash;
    char *bytes;
    size_t len;
    owned_token *token; /* NULL: the slot is free */
    int32_t next;       /* next slot in the bucket chain, or in the free list */
    int referenced;     /* CLOCK bit */
} tc_entry;

struct sg_tcache {
    const sg_verifier *v;
    tc_entry *slots;
    size_t capacity, size, hand;
    int32_t *buckets;
    uint64_t mask;
    int32_t free_head;
    uint64_t k0, k1;
    owned_token *uncached; /* a token verified but not cacheable, until the next call */
    sg_tcache_stats stats;
    verify_ctx vc; /* this worker's OpenSSL contexts, reused by every miss */
};

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash24(uint64_t k0, uint64_t k1, const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m; /* the 8 bytes as a little-endian word, as SipHash reads them */
        memcpy(&m, in + i, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m = __builtin_bswap64(m);
#endif
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t b = 0; b < (len & 7); b++)
        last |= (uint64_t)in[whole + b] << (8 * b);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

sg_tcache *sg_tcache_new(const sg_verifier *v, size_t max_entries)
{
    if (!max_entries) max_entries = SG_TCACHE_DEFAULT_ENTRIES;
    if (max_entries > (1u << 24)) max_entries = 1u << 24;
    sg_tcache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->v = v;
    c->capacity = max_entries;
    size_t nb = 16;
    while (nb < max_entries * 2)
        nb *= 2;
    c->mask = nb - 1;
    c->slots = calloc(max_entries, sizeof *c->slots);
    c->buckets = malloc(nb * sizeof *c->buckets);
    unsigned char key[16];
    if (!c->slots || !c->buckets || RAND_bytes(key, sizeof key) != 1) {
        sg_tcache_free(c);
        return NULL;
    }
    memcpy(&c->k0, key, 8);
    memcpy(&c->k1, key + 8, 8);
    for (size_t i = 0; i < nb; i++)
        c->buckets[i] = NIL;
    for (size_t i = 0; i < max_entries; i++)
        c->slots[i].next = i + 1 < max_entries ? (int32_t)(i + 1) : NIL;
    c->free_head = 0;
    c->stats.capacity = max_entries;
    return c;
}

void sg_tcache_free(sg_tcache *c)
{
    if (!c) return;
    if (c->slots)
        for (size_t i = 0; i < c->capacity; i++) {
            sg_token_free(c->slots[i].token ? &c->slots[i].token->pub : NULL);
            free(c->slots[i].bytes);
        }
    sg_token_free(c->uncached ? &c->uncached->pub : NULL);
    verify_ctx_clear(&c->vc);
    EVP_MD_CTX_free(c->vc.md);
    free(c->slots);
    free(c->buckets);
    free(c);
}

/* Unlinks slot i from its chain, frees its token and puts it on the free
 * list. */
static void tc_remove(sg_tcache *c, int32_t i)
{
    tc_entry *e = &c->slots[i];
    int32_t *link = &c->buckets[e->hash & c->mask];
    while (*link != i)
        link = &c->slots[*link].next;
    *link = e->next;
    sg_token_free(&e->token->pub);
    free(e->bytes);
    memset(e, 0, sizeof *e);
    e->next = c->free_head;
    c->free_head = i;
    c->size--;
}

void sg_tcache_clear(sg_tcache *c)
{
    for (size_t i = 0; i < c->capacity; i++)
        if (c->slots[i].token) tc_remove(c, (int32_t)i);
    verify_ctx_clear(&c->vc); /* and the references on keys that may be gone */
}

/* Takes a free slot, evicting with CLOCK when full. */
static int32_t tc_take_slot(sg_tcache *c)
{
    if (c->free_head == NIL) {
        for (;;) {
            tc_entry *e = &c->slots[c->hand];
            if (e->token && !e->referenced) break;
            e->referenced = 0;
            c->hand = (c->hand + 1) % c->capacity;
        }
        tc_remove(c, (int32_t)c->hand);
        c->stats.evictions++;
    }
    int32_t i = c->free_head;
    c->free_head = c->slots[i].next;
    return i;
}

sg_token_err sg_tcache_verify(sg_tcache *c, const char *token, size_t len, int64_t now,
                              const sg_token **out)
{
    return sg_tcache_verify_ex(c, token, len, now, SG_KID_BLOCK, NULL, out);
}

sg_token_err sg_tcache_verify_ex(sg_tcache *c, const char *token, size_t len, int64_t now,
                                 sg_kid_wait kw, uint64_t *ticket, const sg_token **out)
{
    *out = NULL;
    if (ticket) *ticket = 0;
    sg_token_free(c->uncached ? &c->uncached->pub : NULL);
    c->uncached = NULL;
    if (len > c->v->max_token_bytes) return SG_TOKEN_TOO_LARGE; /* before hashing it */

    uint64_t h = siphash24(c->k0, c->k1, (const unsigned char *)token, len);
    for (int32_t i = c->buckets[h & c->mask]; i != NIL; i = c->slots[i].next) {
        tc_entry *e = &c->slots[i];
        if (e->hash != h || e->len != len || memcmp(e->bytes, token, len) != 0) continue;
        if (now >= e->token->pub.exp) {
            tc_remove(c, i); /* verify again: the leeway decides, not the cache */
            c->stats.expired++;
            break;
        }
        e->referenced = 1;
        c->stats.hits++;
        sg_metric_inc(SG_M_TOKEN_CACHE_HITS);
        *out = &e->token->pub;
        return SG_TOKEN_OK;
    }
    c->stats.misses++;
    sg_metric_inc(SG_M_TOKEN_CACHE_MISSES);

    owned_token *o;
    sg_token_err err = verify_token(c->v, token, len, now, kw, ticket, &c->vc, &o);
    if (err != SG_TOKEN_OK) return err;
    sg_token *fresh = &o->pub;
    char *bytes = now < fresh->exp ? malloc(len ? len : 1) : NULL;
    if (!bytes) { /* inside the leeway window or out of memory: serve, don't keep */
        c->uncached = o;
        *out = fresh;
        return SG_TOKEN_OK;
    }
    memcpy(bytes, token, len);
    int32_t i = tc_take_slot(c);
    tc_entry *e = &c->slots[i];
    e->hash = h;
    e->bytes = bytes;
    e->len = len;
    e->token = o;
    e->referenced = 0;
    e->next = c->buckets[h & c->mask];
    c->buckets[h & c->mask] = i;
    c->size++;
    *out = fresh;
    return SG_TOKEN_OK;
}

void sg_tcache_get_stats(const sg_tcache *c, sg_tcache_stats *out)
{
    *out = c->stats;
    out->size = c->size;
}

/* ---- minting ------------------------------------------------------------------ */

/* Signs data with a PEM private key. Appends the JWS signature bytes to sig.
 * Returns 0 or -1 with err. */
static int sign_with_pem(int alg, const void *pem, size_t pemlen, const unsigned char *data,
                         size_t len, sg_buf *sig, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)pemlen);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!pkey) {
        sg_errf(err, errlen, "not a PEM private key");
        return -1;
    }
    int fits = alg == SG_ALG_EDDSA ? EVP_PKEY_is_a(pkey, "ED25519") || EVP_PKEY_is_a(pkey, "ED448")
               : alg_ec_size(alg)  ? EVP_PKEY_is_a(pkey, "EC")
                                   : EVP_PKEY_is_a(pkey, "RSA");
    const EVP_MD *md = alg_md(alg);
    EVP_MD_CTX *ctx = fits ? EVP_MD_CTX_new() : NULL;
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char *raw = NULL;
    size_t rawlen = 0;
    int rc = -1;
    if (!fits) {
        sg_errf(err, errlen, "the private key does not fit alg %s", sg_jws_alg_name(alg));
        goto done;
    }
    if (!ctx || EVP_DigestSignInit(ctx, &pctx, md, NULL, pkey) <= 0 ||
        (alg_is_pss(alg) &&
         (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0)) ||
        EVP_DigestSign(ctx, NULL, &rawlen, data, len) <= 0 || !(raw = malloc(rawlen)) ||
        EVP_DigestSign(ctx, raw, &rawlen, data, len) <= 0) {
        sg_errf(err, errlen, "signing failed");
        goto done;
    }
    size_t clen = alg_ec_size(alg);
    if (clen) { /* DER ECDSA-Sig-Value -> raw r||s, each left-padded */
        const unsigned char *p = raw;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)rawlen);
        const BIGNUM *r, *s;
        unsigned char rs[2 * 66];
        if (!es) {
            sg_errf(err, errlen, "signing failed");
            goto done;
        }
        ECDSA_SIG_get0(es, &r, &s);
        int ok = BN_bn2binpad(r, rs, (int)clen) > 0 && BN_bn2binpad(s, rs + clen, (int)clen) > 0;
        ECDSA_SIG_free(es);
        if (!ok) {
            sg_errf(err, errlen, "signing failed");
            goto done;
        }
        sg_buf_append(sig, rs, 2 * clen);
    } else {
        sg_buf_append(sig, raw, rawlen);
    }
    rc = 0;
done:
    free(raw);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return rc;
}

const char *sg_token_alg_for_key(const void *pem, size_t len)
{
    if (len > INT32_MAX) return NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    const char *alg = NULL;
    if (!pkey) return NULL;
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        alg = "RS256";
    } else if (EVP_PKEY_is_a(pkey, "ED25519") || EVP_PKEY_is_a(pkey, "ED448")) {
        alg = "EdDSA";
    } else if (EVP_PKEY_is_a(pkey, "EC")) {
        int bits = EVP_PKEY_get_bits(pkey);
        alg = bits == 256 ? "ES256" : bits == 384 ? "ES384" : bits == 521 ? "ES512" : NULL;
    }
    EVP_PKEY_free(pkey);
    return alg;
}

int sg_token_mint(const char *alg, const void *key, size_t keylen, const char *kid,
                  const char *header_json, const char *claims_json, sg_buf *out, char *err,
                  size_t errlen)
{
    int a = alg ? sg_jws_alg_from_name(alg, strlen(alg)) : -1;
    if (a <= SG_ALG_NONE) {
        sg_errf(err, errlen, "unknown alg");
        return -1;
    }
    if (!key || !keylen || keylen > INT32_MAX || !claims_json) {
        sg_errf(err, errlen, "a key and claims are required");
        return -1;
    }
    char *made_header = NULL;
    if (!header_json) {
        cJSON *h = cJSON_CreateObject();
        if (h && cJSON_AddStringToObject(h, "alg", sg_jws_alg_name(a)) &&
            cJSON_AddStringToObject(h, "typ", "JWT") &&
            (!kid || cJSON_AddStringToObject(h, "kid", kid)))
            made_header = cJSON_PrintUnformatted(h);
        cJSON_Delete(h);
        if (!made_header) {
            sg_errf(err, errlen, "out of memory");
            return -1;
        }
        header_json = made_header;
    }
    sg_buf tok = SG_BUF_INIT, sig = SG_BUF_INIT;
    sg_b64url_encode(&tok, (const unsigned char *)header_json, strlen(header_json));
    sg_buf_putc(&tok, '.');
    sg_b64url_encode(&tok, (const unsigned char *)claims_json, strlen(claims_json));
    free(made_header);
    int rc = -1;
    if (!sg_buf_ok(&tok)) {
        sg_errf(err, errlen, "out of memory");
    } else if (alg_is_hmac(a)) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        if (HMAC(alg_md(a), key, (int)keylen, (const unsigned char *)tok.data, tok.len, mac,
                 &maclen)) {
            sg_buf_append(&sig, mac, maclen);
            rc = 0;
        } else {
            sg_errf(err, errlen, "signing failed");
        }
    } else {
        rc = sign_with_pem(a, key, keylen, (const unsigned char *)tok.data, tok.len, &sig, err,
                           errlen);
    }
    if (rc == 0) {
        sg_buf_putc(&tok, '.');
        sg_b64url_encode(&tok, (const unsigned char *)sig.data, sig.len);
        if (sg_buf_ok(&tok)) {
            sg_buf_append(out, tok.data, tok.len);
        } else {
            sg_errf(err, errlen, "out of memory");
            rc = -1;
        }
    }
    sg_buf_free(&tok);
    sg_buf_free(&sig);
    return rc;
}
