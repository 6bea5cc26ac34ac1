/* fuzz_jwks.c -- libFuzzer target: the JWKS parser (src/auth/jwks.c,
 * sg_keys_add_jwks) on arbitrary documents.
 *
 * Every key it accepts must be usable as documented: exactly one of a public
 * key and a secret (a JWKS never yields a secret), at least one algorithm,
 * never "none", and no more than SG_JWKS_MAX_KEYS of them. A signed test
 * token is then verified against the resulting key set, so that keys the
 * parser built are used too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "auth/jwks.h"
#include "auth/token.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

/* An ES256 token (kid "fuzz-es", the key of fuzz/keys/es256-private.pem),
 * made by fuzz/mkcorpus.sh: verifying it runs the parsed keys. */
static const char TOKEN[] =
#include "es256_token.inc"
    ;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    sg_keys *k = sg_keys_new();
    CHECK(k);
    if (sg_keys_add_jwks(k, (const char *)data, size, err, sizeof err) == 0) {
        const sg_keyset *s = sg_keys_acquire(k);
        CHECK(s->nkeys >= 1 && s->nkeys <= SG_JWKS_MAX_KEYS);
        for (int i = 0; i < s->nkeys; i++) {
            const sg_jwk *j = &s->keys[i];
            CHECK(j->pkey && !j->secret);
            CHECK(j->algs != 0 && !(j->algs & SG_ALG_BIT(SG_ALG_NONE)));
            CHECK(!(j->algs & (SG_ALG_BIT(SG_ALG_HS256) | SG_ALG_BIT(SG_ALG_HS384) |
                               SG_ALG_BIT(SG_ALG_HS512))));
        }
        sg_keyset_release(s);
        sg_verifier_config c;
        sg_verifier_config_init(&c);
        sg_verifier *v = sg_verifier_new(&c, k, err, sizeof err);
        CHECK(v);
        sg_token *t = NULL;
        sg_token_err e = sg_token_verify(v, TOKEN, strlen(TOKEN), 1767225600, &t);
        CHECK((e == SG_TOKEN_OK) == (t != NULL));
        sg_token_free(t);
        sg_verifier_free(v);
    } else {
        CHECK(memchr(err, '\0', sizeof err) != NULL);
    }
    sg_keys_free(k);
    return 0;
}
