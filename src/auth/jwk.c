/* jwk.c -- one key from its description: a JWK (RFC 7517, RFC 7518 section
 * 6, RFC 8037) or a PEM public key turned into an EVP_PKEY once, bound to
 * the JWS algorithms it may verify, and a JWKS document into an array of
 * such keys. The key set that holds them, its snapshots, fetching and
 * refreshing are jwks.c; what both share is jwks_impl.h.
 *
 * This exists because libjwt re-parses a PEM per verification and lets any
 * key verify any alg (stack-notes.md). docs/tokens.md says which JWKs are
 * skipped and why. */
#include "auth/jwks_impl.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include "base/base64url.h"
#include "base/sg.h"

#define MAX_KID_LEN            256
#define MAX_RSA_MODULUS_BYTES  1024 /* 8192 bits: bounds the cost of one verify */
#define MAX_RSA_EXPONENT_BYTES 8

#define RSA_ALGS                                                                                   \
    (SG_ALG_BIT(SG_ALG_RS256) | SG_ALG_BIT(SG_ALG_RS384) | SG_ALG_BIT(SG_ALG_RS512) |              \
     SG_ALG_BIT(SG_ALG_PS256) | SG_ALG_BIT(SG_ALG_PS384) | SG_ALG_BIT(SG_ALG_PS512))

static const char *const alg_names[SG_ALG_COUNT] = {
    "none",  "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
};

int sg_jws_alg_from_name(const char *name, size_t len)
{
    for (int i = 0; i < SG_ALG_COUNT; i++)
        if (strlen(alg_names[i]) == len && memcmp(alg_names[i], name, len) == 0) return i;
    return -1;
}

const char *sg_jws_alg_name(int alg)
{
    return alg >= 0 && alg < SG_ALG_COUNT ? alg_names[alg] : "?";
}

/* ---- keys and arrays of keys ------------------------------------------------ */

void jwk_clear(sg_jwk *j)
{
    free(j->kid);
    EVP_PKEY_free(j->pkey);
    if (j->secret) {
        OPENSSL_cleanse(j->secret, j->secret_len);
        free(j->secret);
    }
    memset(j, 0, sizeof *j);
}

void jwk_array_free(sg_jwk *keys, int n)
{
    for (int i = 0; i < n; i++)
        jwk_clear(&keys[i]);
    free(keys);
}

unsigned jwk_algs_for_pkey(EVP_PKEY *p)
{
    if (EVP_PKEY_is_a(p, "RSA")) return EVP_PKEY_get_bits(p) >= MIN_RSA_BITS ? RSA_ALGS : 0;
    if (EVP_PKEY_is_a(p, "ED25519") || EVP_PKEY_is_a(p, "ED448")) return SG_ALG_BIT(SG_ALG_EDDSA);
    if (EVP_PKEY_is_a(p, "EC")) {
        char group[64];
        if (!EVP_PKEY_get_utf8_string_param(p, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                            NULL))
            return 0;
        if (strcmp(group, "prime256v1") == 0) return SG_ALG_BIT(SG_ALG_ES256);
        if (strcmp(group, "secp384r1") == 0) return SG_ALG_BIT(SG_ALG_ES384);
        if (strcmp(group, "secp521r1") == 0) return SG_ALG_BIT(SG_ALG_ES512);
    }
    return 0;
}

int jwk_array_push(sg_jwk **arr, int *n, sg_jwk *j)
{
    sg_jwk *grown = realloc(*arr, (size_t)(*n + 1) * sizeof **arr);
    if (!grown) {
        jwk_clear(j);
        return -1;
    }
    *arr = grown;
    grown[(*n)++] = *j;
    memset(j, 0, sizeof *j);
    return 0;
}

int jwk_kid_ok(const char *kid)
{
    return !kid || (strlen(kid) > 0 && strlen(kid) <= MAX_KID_LEN);
}

/* ---- JWK -> EVP_PKEY ------------------------------------------------------- */

/* Decodes the base64url member `name` of a JWK into a malloc'd buffer of at
 * most max bytes. Returns NULL when absent, not a string or not canonical. */
static unsigned char *jwk_bytes(const cJSON *jwk, const char *name, size_t max, size_t *len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(jwk, name);
    if (!cJSON_IsString(v)) return NULL;
    size_t n = strlen(v->valuestring);
    if (n == 0 || sg_b64url_decoded_max(n) > max + 2) return NULL;
    unsigned char *out = malloc(sg_b64url_decoded_max(n));
    if (!out) return NULL;
    long got = sg_b64url_decode(v->valuestring, n, out);
    if (got <= 0 || (size_t)got > max) {
        free(out);
        return NULL;
    }
    *len = (size_t)got;
    return out;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *p = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
    if (ctx && EVP_PKEY_fromdata_init(ctx) > 0 &&
        EVP_PKEY_fromdata(ctx, &p, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        p = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    if (p) { /* an EC point must be on its curve; cheap once per key */
        EVP_PKEY_CTX *check = EVP_PKEY_CTX_new_from_pkey(NULL, p, NULL);
        int ok = check && EVP_PKEY_public_check(check) > 0;
        EVP_PKEY_CTX_free(check);
        if (!ok) {
            EVP_PKEY_free(p);
            p = NULL;
        }
    }
    return p;
}

static EVP_PKEY *jwk_rsa(const cJSON *jwk)
{
    size_t nlen = 0, elen = 0;
    unsigned char *n = jwk_bytes(jwk, "n", MAX_RSA_MODULUS_BYTES, &nlen);
    unsigned char *e = jwk_bytes(jwk, "e", MAX_RSA_EXPONENT_BYTES, &elen);
    EVP_PKEY *p = NULL;
    BIGNUM *bn_n = n ? BN_bin2bn(n, (int)nlen, NULL) : NULL;
    BIGNUM *bn_e = e ? BN_bin2bn(e, (int)elen, NULL) : NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bn_n && bn_e && bld && BN_is_odd(bn_e) && !BN_is_one(bn_e) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e))
        p = pkey_fromdata("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    free(n);
    free(e);
    return p;
}

static EVP_PKEY *jwk_ec(const cJSON *jwk)
{
    const cJSON *crv = cJSON_GetObjectItemCaseSensitive(jwk, "crv");
    if (!cJSON_IsString(crv)) return NULL;
    const char *group;
    size_t clen;
    if (strcmp(crv->valuestring, "P-256") == 0) {
        group = "prime256v1";
        clen = 32;
    } else if (strcmp(crv->valuestring, "P-384") == 0) {
        group = "secp384r1";
        clen = 48;
    } else if (strcmp(crv->valuestring, "P-521") == 0) {
        group = "secp521r1";
        clen = 66;
    } else {
        return NULL;
    }
    size_t xlen = 0, ylen = 0;
    unsigned char *x = jwk_bytes(jwk, "x", clen, &xlen);
    unsigned char *y = jwk_bytes(jwk, "y", clen, &ylen);
    EVP_PKEY *p = NULL;
    unsigned char pub[1 + 2 * 66];
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    /* RFC 7518 6.2.1.2: coordinates are exactly the field size long. */
    if (x && y && bld && xlen == clen && ylen == clen) {
        pub[0] = 0x04;
        memcpy(pub + 1, x, clen);
        memcpy(pub + 1 + clen, y, clen);
        if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * clen))
            p = pkey_fromdata("EC", bld);
    }
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return p;
}

static EVP_PKEY *jwk_okp(const cJSON *jwk)
{
    const cJSON *crv = cJSON_GetObjectItemCaseSensitive(jwk, "crv");
    if (!cJSON_IsString(crv)) return NULL;
    int type;
    size_t want;
    if (strcmp(crv->valuestring, "Ed25519") == 0) {
        type = EVP_PKEY_ED25519;
        want = 32;
    } else if (strcmp(crv->valuestring, "Ed448") == 0) {
        type = EVP_PKEY_ED448;
        want = 57;
    } else {
        return NULL;
    }
    size_t xlen = 0;
    unsigned char *x = jwk_bytes(jwk, "x", want, &xlen);
    EVP_PKEY *p = x && xlen == want ? EVP_PKEY_new_raw_public_key(type, NULL, x, xlen) : NULL;
    free(x);
    return p;
}

/* What became of one JWK of a JWKS. */
typedef enum jwk_outcome {
    JWK_TAKEN,   /* *out is the key */
    JWK_SKIPPED, /* not a key we use; *why says why (the document is still good) */
    JWK_NOMEM,
} jwk_outcome;

/* Turns one JWK into a key (see jwk_outcome). */
static jwk_outcome jwk_parse(const cJSON *jwk, sg_jwk *out, const char **why)
{
    memset(out, 0, sizeof *out);
    if (!cJSON_IsObject(jwk)) return *why = "not an object", JWK_SKIPPED;
    const cJSON *use = cJSON_GetObjectItemCaseSensitive(jwk, "use");
    if (use && (!cJSON_IsString(use) || strcmp(use->valuestring, "sig") != 0))
        return *why = "use is not sig", JWK_SKIPPED;
    const cJSON *kty = cJSON_GetObjectItemCaseSensitive(jwk, "kty");
    if (!cJSON_IsString(kty)) return *why = "no kty", JWK_SKIPPED;
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(jwk, "kid");
    if (kid && (!cJSON_IsString(kid) || !jwk_kid_ok(kid->valuestring)))
        return *why = "kid is not a short non-empty string", JWK_SKIPPED;
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(jwk, "alg");
    if (alg && !cJSON_IsString(alg)) return *why = "alg is not a string", JWK_SKIPPED;

    EVP_PKEY *p = NULL;
    if (strcmp(kty->valuestring, "RSA") == 0)
        p = jwk_rsa(jwk);
    else if (strcmp(kty->valuestring, "EC") == 0)
        p = jwk_ec(jwk);
    else if (strcmp(kty->valuestring, "OKP") == 0)
        p = jwk_okp(jwk);
    else
        return *why = "unsupported kty (oct keys are never taken from a JWKS)", JWK_SKIPPED;
    if (!p) return *why = "invalid key parameters", JWK_SKIPPED;

    unsigned algs = jwk_algs_for_pkey(p);
    if (alg) {
        int a = sg_jws_alg_from_name(alg->valuestring, strlen(alg->valuestring));
        algs = a > SG_ALG_NONE ? algs & SG_ALG_BIT(a) : 0;
    }
    if (!algs) {
        EVP_PKEY_free(p);
        return *why = "alg does not fit the key (or RSA under 2048 bits)", JWK_SKIPPED;
    }
    out->pkey = p;
    out->algs = algs;
    if (kid && !(out->kid = strdup(kid->valuestring))) {
        jwk_clear(out);
        return JWK_NOMEM;
    }
    return JWK_TAKEN;
}

int jwks_parse_doc(const char *json, size_t len, sg_jwk **out, char *err, size_t errlen)
{
    *out = NULL;
    if (len > SG_JWKS_MAX_BYTES) {
        sg_errf(err, errlen, "JWKS larger than %d bytes", SG_JWKS_MAX_BYTES);
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(root, "keys");
    if (!cJSON_IsObject(root) || !cJSON_IsArray(keys)) {
        cJSON_Delete(root);
        sg_errf(err, errlen, "not a JWKS document (a JSON object with a keys array)");
        return -1;
    }
    if (cJSON_GetArraySize(keys) > SG_JWKS_MAX_KEYS) {
        cJSON_Delete(root);
        sg_errf(err, errlen, "JWKS holds more than %d keys", SG_JWKS_MAX_KEYS);
        return -1;
    }
    sg_jwk *arr = NULL;
    int n = 0, index = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, keys)
    {
        sg_jwk j;
        const char *why = NULL;
        jwk_outcome rc = jwk_parse(item, &j, &why);
        if (rc == JWK_NOMEM || (rc == JWK_TAKEN && jwk_array_push(&arr, &n, &j) != 0)) {
            jwk_array_free(arr, n);
            cJSON_Delete(root);
            sg_errf(err, errlen, "out of memory");
            return -1;
        }
        if (rc == JWK_SKIPPED) sg_log(SG_LOG_WARN, "jwks: skipping key #%d: %s", index, why);
        index++;
    }
    cJSON_Delete(root);
    if (n == 0) {
        free(arr);
        sg_errf(err, errlen, "JWKS holds no usable signature key");
        return -1;
    }
    *out = arr;
    return n;
}
