/* fuzz_token.c -- libFuzzer target: bearer-token parsing and verification
 * (src/auth/token.c, src/base/base64url.c) against a fixed key set.
 *
 * Keys: the HS256 test secret (kid "fuzz-hs"), the ES256 key of
 * fuzz/keys/es256-private.pem (kid "fuzz-es") and an RS256 public key (kid
 * "fuzz-rs"). Two input shapes:
 *   - a compact token ("eyJ..."), verified as it is: parsing, header checks,
 *     base64url, and the signature check for tokens that look valid;
 *   - "{header JSON}\n{claims JSON}" (input starting with '{'): the target
 *     signs it with the HS256 secret first, so that every header and claims
 *     check behind the signature is reached, then verifies it. The claims
 *     also go through sg_token_from_claims, and through
 *     sg_token_from_introspection as an RFC 7662 answer.
 * A token that verifies is checked for what the decision layer relies on,
 * and must have the JWS shape sg_token_is_jws routes on (anything else is
 * sent to introspection instead). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "auth/jwks.h"
#include "auth/mint.h"
#include "auth/token.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

/* Fixed clock: 2026-01-01T00:00:00Z (seed tokens are valid then). */
#define NOW 1767225600

static const char ES256_PUB[] = "-----BEGIN PUBLIC KEY-----\n"
                                "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfom06LCMEcM/H0XR3C9XqZpvU/fu\n"
                                "osnXlWzwMrTxPu64myeK1I8x/LDfWqgkG8fDDrG74dI77XJmzlLvSuASug==\n"
                                "-----END PUBLIC KEY-----\n";

static const char RS256_PUB[] = "-----BEGIN PUBLIC KEY-----\n"
                                "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtDU5VaGlXIPziGNkM86h\n"
                                "Hj5RzAPQmwSFNkDcbW+TSmt+AthdSedeh3+UG3Zu57C2Crl9n6kTvc7C/Cfssg1w\n"
                                "DlFzuhDoYMxXu0tBkNmEfzRWq5yXajznhtkgksf1bH0j9NFlJfy0rObwU9ACiFkY\n"
                                "Q3n4MacPZx4GhUnC2iDubCOAJIgWG6C3G1ymhQ+QIAMKPQoNgDTJDwo2cN7eqrIc\n"
                                "zK7qzDzYWEx3unUgtCEBl2JgDMsQpitEtS8SX97yZKyWB2QO/Oc1Om3VHomEhrrG\n"
                                "O15a1ataJK0V0jfYKPFM+OPWJZIY0bqOXxeNNy4YtnfPEaEAMC6593y2oERya2ao\n"
                                "kQIDAQAB\n"
                                "-----END PUBLIC KEY-----\n";

static sg_keys *keys;
static sg_verifier *verifier;
static sg_tcache *cache;
static int verbose; /* SG_FUZZ_VERBOSE=1: say what each input verified to */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256];
    verbose = getenv("SG_FUZZ_VERBOSE") != NULL;
    keys = sg_keys_new();
    CHECK(keys);
    if (sg_keys_add_secret(keys, FUZZ_SECRET, strlen(FUZZ_SECRET), "HS256", FUZZ_KID, err,
                           sizeof err) != 0 ||
        sg_keys_add_pem(keys, ES256_PUB, strlen(ES256_PUB), "ES256", "fuzz-es", err, sizeof err) !=
            0 ||
        sg_keys_add_pem(keys, RS256_PUB, strlen(RS256_PUB), "RS256", "fuzz-rs", err, sizeof err) !=
            0)
        abort();
    sg_verifier_config c;
    sg_verifier_config_init(&c);
    c.issuer = FUZZ_ISSUER;
    c.audience = FUZZ_AUDIENCE;
    verifier = sg_verifier_new(&c, keys, err, sizeof err);
    CHECK(verifier);
    cache = sg_tcache_new(verifier, 64);
    CHECK(cache);
    return 0;
}

/* A claim the one-pass reader decoded must be what cJSON reads from the
 * same payload: the two never disagree on a string. */
static void check_same_string(const cJSON *claims, const char *name, const char *got)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(claims, name);
    CHECK(!c || cJSON_IsString(c));
    CHECK(got ? c && strcmp(c->valuestring, got) == 0 : !c);
}

static void check_token(const sg_token *t)
{
    CHECK(t);
    const cJSON *claims = sg_token_claims(t);
    CHECK(claims && cJSON_IsObject(claims) && sg_token_claims(t) == claims);
    check_same_string(claims, "sub", t->sub);
    check_same_string(claims, "iss", t->iss);
    const char *client_id =
        cJSON_GetObjectItemCaseSensitive(claims, "client_id") ? t->client_id : NULL;
    check_same_string(claims, "client_id", client_id);
    const cJSON *scope = cJSON_GetObjectItemCaseSensitive(claims, "scope");
    if (cJSON_IsString(scope) && !cJSON_GetObjectItemCaseSensitive(claims, "scp")) {
        /* Every kept scope is one of the words of the claim (a whole word:
         * "notes:write" inside "xnotes:write0" does not count). */
        const char *text = scope->valuestring;
        for (int i = 0; i < t->nscopes; i++) {
            size_t n = strlen(t->scopes[i]);
            const char *at = text;
            while ((at = strstr(at, t->scopes[i])) != NULL) {
                if ((at == text || at[-1] == ' ') && (at[n] == ' ' || at[n] == '\0')) break;
                at++;
            }
            CHECK(at);
        }
    }
    CHECK(t->nscopes >= 0 && t->nscopes <= SG_TOKEN_MAX_SCOPES);
    for (int i = 0; i < t->nscopes; i++)
        CHECK(t->scopes[i] && t->scopes[i][0]);
    CHECK(t->exp > NOW - 60);
}

static void verify(const char *tok, size_t len)
{
    sg_token *t = NULL;
    sg_token_err e = sg_token_verify(verifier, tok, len, NOW, &t);
    CHECK(e >= 0 && e < SG_TOKEN_ERR_COUNT);
    CHECK(e != SG_TOKEN_OK || sg_token_is_jws(tok, len));
    if (verbose) fprintf(stderr, "fuzz_token: %s\n", sg_token_error_name(e));
    CHECK(sg_token_error_name(e) && sg_token_error_message(e));
    CHECK((e == SG_TOKEN_OK) == (t != NULL));
    if (t) check_token(t);
    sg_token_free(t);
    /* Twice through the cache: a miss, then (for a good token) a hit that
     * must agree with the uncached answer. */
    for (int i = 0; i < 2; i++) {
        const sg_token *ct = NULL;
        sg_token_err ce = sg_tcache_verify(cache, tok, len, NOW, &ct);
        CHECK(ce == e);
        if (ct) check_token(ct);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || data[0] != '{') {
        verify((const char *)data, size);
        return 0;
    }
    /* "{header}\n{claims}": sign with the test secret, then verify. */
    char *text = malloc(size + 1);
    CHECK(text);
    memcpy(text, data, size);
    text[size] = '\0';
    char *nl = strchr(text, '\n');
    if (nl) {
        *nl = '\0';
        const char *claims = nl + 1;
        sg_token *t = NULL;
        if (sg_token_from_claims(claims, strlen(claims), &t) == SG_TOKEN_OK) {
            CHECK(t && t->nscopes <= SG_TOKEN_MAX_SCOPES);
        } else {
            CHECK(t == NULL);
        }
        sg_token_free(t);
        t = NULL;
        sg_token_err ie = sg_token_from_introspection(verifier, claims, strlen(claims), NOW, &t);
        CHECK((ie == SG_TOKEN_OK) == (t != NULL));
        if (t) check_token(t);
        sg_token_free(t);
        sg_buf tok = SG_BUF_INIT;
        char err[256];
        if (sg_token_mint("HS256", FUZZ_SECRET, strlen(FUZZ_SECRET), NULL, text, claims, &tok, err,
                          sizeof err) == 0 &&
            sg_buf_ok(&tok))
            verify(tok.data, tok.len);
        sg_buf_free(&tok);
    }
    free(text);
    return 0;
}
