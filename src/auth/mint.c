/* mint.c -- development tokens: a JWS signed with a PEM private key or an
 * HMAC secret, for `scopegate token`, the specs, fuzz/ and bench/.
 *
 * Not part of the verifier: nothing on the request path calls it. It
 * shares only the alg tables of token_jws.c (token_impl.h). */
#include "auth/mint.h"
#include "auth/token_impl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "base/base64url.h"

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
               : tok_alg_ec_size(alg) ? EVP_PKEY_is_a(pkey, "EC")
                                      : EVP_PKEY_is_a(pkey, "RSA");
    const EVP_MD *md = tok_alg_md(alg);
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
        (tok_alg_is_pss(alg) &&
         (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0)) ||
        EVP_DigestSign(ctx, NULL, &rawlen, data, len) <= 0 || !(raw = malloc(rawlen)) ||
        EVP_DigestSign(ctx, raw, &rawlen, data, len) <= 0) {
        sg_errf(err, errlen, "signing failed");
        goto done;
    }
    size_t clen = tok_alg_ec_size(alg);
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
    } else if (tok_alg_is_hmac(a)) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        if (HMAC(tok_alg_md(a), key, (int)keylen, (const unsigned char *)tok.data, tok.len, mac,
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
