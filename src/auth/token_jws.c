/* token_jws.c -- a JWS in compact serialization taken apart and checked:
 * its three segments, the header (alg, typ, crit, kid), the key it names
 * and the signature, on OpenSSL 3 EVP; then the payload is handed to the
 * claims checks (token_claims.c).
 *
 * The header alg must be bound to the selected key (jwks.h), which defeats
 * algorithm confusion; the signature is checked with a key parsed once and,
 * on a worker, with OpenSSL contexts it reuses for every token (a tenth of
 * an RSA verify saved each time, bench/README.md). The order of checks and
 * every refusal code are in docs/tokens.md. */
#include "auth/token_impl.h"
#include "base/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>

#include "base/base64url.h"

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

/* The fetched digests live as long as the process. */
const EVP_MD *tok_alg_md(int alg)
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

int tok_alg_is_hmac(int a)
{
    return a == SG_ALG_HS256 || a == SG_ALG_HS384 || a == SG_ALG_HS512;
}
int tok_alg_is_pss(int a)
{
    return a == SG_ALG_PS256 || a == SG_ALG_PS384 || a == SG_ALG_PS512;
}
size_t tok_alg_ec_size(int a)
{
    return a == SG_ALG_ES256 ? 32 : a == SG_ALG_ES384 ? 48 : a == SG_ALG_ES512 ? 66 : 0;
}

/* ---- signatures -------------------------------------------------------------- */

void tok_verify_ctx_clear(verify_ctx *vc)
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
    if (ok && tok_alg_is_pss(alg))
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) > 0;
    else if (ok && !tok_alg_ec_size(alg))
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
 * Returns SG_TOKEN_OK, SG_TOKEN_BAD_SIGNATURE, or SG_TOKEN_INTERNAL (an
 * OpenSSL failure). */
static sg_token_err verify_prehashed(verify_ctx *vc, const sg_jwk *key, int alg, const EVP_MD *md,
                                     const unsigned char *data, size_t len,
                                     const unsigned char *sig, size_t siglen)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (!vc->md && !(vc->md = EVP_MD_CTX_new())) return SG_TOKEN_INTERNAL;
    if (EVP_DigestInit_ex(vc->md, md, NULL) <= 0 || EVP_DigestUpdate(vc->md, data, len) <= 0 ||
        EVP_DigestFinal_ex(vc->md, digest, &dlen) <= 0)
        return SG_TOKEN_INTERNAL;
    EVP_PKEY_CTX *pctx = verify_ctx_for(vc, key->pkey, alg, md);
    if (!pctx) return SG_TOKEN_INTERNAL;
    return EVP_PKEY_verify(pctx, sig, siglen, digest, dlen) == 1 ? SG_TOKEN_OK
                                                                 : SG_TOKEN_BAD_SIGNATURE;
}

/* Returns SG_TOKEN_OK, SG_TOKEN_BAD_SIGNATURE, or SG_TOKEN_INTERNAL (an
 * OpenSSL failure). vc (a worker's reused contexts) may be NULL: then
 * everything is set up for this one check. */
static sg_token_err verify_signature(verify_ctx *vc, const sg_jwk *key, int alg,
                                     const unsigned char *data, size_t len,
                                     const unsigned char *sig, size_t siglen)
{
    const EVP_MD *md = tok_alg_md(alg);
    if (tok_alg_is_hmac(alg)) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        if (!md || !key->secret ||
            !HMAC(md, key->secret, (int)key->secret_len, data, len, mac, &maclen))
            return SG_TOKEN_INTERNAL;
        return siglen == maclen && CRYPTO_memcmp(mac, sig, maclen) == 0 ? SG_TOKEN_OK
                                                                        : SG_TOKEN_BAD_SIGNATURE;
    }
    if (!key->pkey) return SG_TOKEN_INTERNAL;

    unsigned char der[160]; /* DER ECDSA-Sig-Value of two 66-byte integers fits */
    size_t clen = tok_alg_ec_size(alg);
    if (clen) { /* JWS carries raw r||s of exactly the field size each */
        if (siglen != 2 * clen) return SG_TOKEN_BAD_SIGNATURE;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)clen, NULL), *s = BN_bin2bn(sig + clen, (int)clen, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            ECDSA_SIG_free(es);
            BN_free(r);
            BN_free(s);
            return SG_TOKEN_INTERNAL;
        }
        unsigned char *p = der;
        int n = i2d_ECDSA_SIG(es, NULL) <= (int)sizeof der ? i2d_ECDSA_SIG(es, &p) : -1;
        ECDSA_SIG_free(es);
        if (n <= 0) return SG_TOKEN_INTERNAL;
        sig = der;
        siglen = (size_t)n;
    } else if (alg != SG_ALG_EDDSA && siglen != (size_t)EVP_PKEY_get_size(key->pkey)) {
        return SG_TOKEN_BAD_SIGNATURE; /* RSA signatures are exactly the modulus length */
    }
    if (vc && md && alg != SG_ALG_EDDSA)
        return verify_prehashed(vc, key, alg, md, data, len, sig, siglen);

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    sg_token_err rc = SG_TOKEN_INTERNAL;
    if (ctx && EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key->pkey) > 0) {
        if (tok_alg_is_pss(alg) &&
            (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0 ||
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0)) {
            rc = SG_TOKEN_INTERNAL;
        } else {
            rc = EVP_DigestVerify(ctx, sig, siglen, data, len) == 1 ? SG_TOKEN_OK
                                                                    : SG_TOKEN_BAD_SIGNATURE;
        }
    }
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* ---- the header and the key ------------------------------------------------- */

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
    sg_token_err e = tok_scan_object(buf, (size_t)n);
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
            strs[i]->len = tok_unescape(strs[i]->p, strs[i]->len, (char *)strs[i]->p);
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
        e = verify_signature(vc, key, alg, (const unsigned char *)token, signed_len, scratch,
                             (size_t)siglen);
    }
    sg_keyset_release(s);
    return e;
}

sg_token_err tok_verify_jws(const sg_verifier *v, const char *token, size_t len, int64_t now,
                            sg_kid_wait kw, uint64_t *ticket, verify_ctx *vc, owned_token **out)
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

    owned_token *o = tok_owned_new(sg_b64url_decoded_max(payload_len));
    if (!o) return SG_TOKEN_INTERNAL;
    long n = sg_b64url_decode(payload, payload_len, (unsigned char *)o->json);
    if (n <= 0) {
        e = SG_TOKEN_MALFORMED;
    } else {
        o->json[n] = '\0';
        o->json_len = (size_t)n;
        e = tok_scan_object(o->json, o->json_len);
    }
    if (e == SG_TOKEN_OK) e = tok_check_claims(v, o, now);
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
