/* token.c -- the bearer-token verifier: its configuration, the token
 * object it returns, and the public entry points (token.h).
 *
 * libjwt is not on this path (stack-notes.md: it accepts NULL keys, allows
 * algorithm confusion, rejects at+jwt and re-parses PEM per call). Here the
 * token bytes are checked strictly (canonical base64url, UTF-8 JSON without
 * duplicate members), the header alg must be bound to the selected key, the
 * signature is checked with a key parsed once, and only then are the claims
 * read: token_jws.c, token_claims.c and token_json.c do that, tcache.c
 * caches the result per worker (token_impl.h says who does what). Minting
 * is not here: mint.h. The order of checks and every refusal code are in
 * docs/tokens.md. */
#include "auth/token_impl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

/* ---- the verifier ------------------------------------------------------------- */

void sg_verifier_config_init(sg_verifier_config *c)
{
    memset(c, 0, sizeof *c);
    c->leeway_s = SG_TOKEN_DEFAULT_LEEWAY_S;
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
            tok_canonical_resource(c->audience, strlen(c->audience), canon, sizeof canon) < 0) {
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

/* ---- tokens ------------------------------------------------------------------- */

owned_token *tok_owned_new(size_t max_json)
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
    owned_token *o = (owned_token *)t; /* only tok_check_claims sets claims_json */
    if (!o->root) o->root = cJSON_ParseWithLength(o->json, o->json_len);
    o->pub.claims = o->root;
    return o->root;
}

sg_token_err sg_token_from_introspection(const sg_verifier *v, const char *json, size_t len,
                                         int64_t now, sg_token **out)
{
    *out = NULL;
    owned_token *o = tok_owned_new(len);
    if (!o) return SG_TOKEN_INTERNAL;
    memcpy(o->json, json, len);
    o->json[len] = '\0';
    o->json_len = len;
    sg_token_err e = tok_scan_object(o->json, len);
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
        const char *t = tok_keep_string(o, &type);
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
        e = tok_check_claims(&rules, o, now);
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
    sg_token_err e = tok_verify_jws(v, token, len, now, kw, ticket, NULL, &o);
    *out = e == SG_TOKEN_OK ? &o->pub : NULL;
    return e;
}

sg_token_err sg_token_from_claims(const char *json, size_t len, sg_token **out)
{
    /* Nothing to verify against: no issuer, audience or expiry rules, only
     * the shape of the claims and the scope tokens. */
    static const sg_verifier unchecked = {.leeway_s = INT32_MAX / 2};
    *out = NULL;
    owned_token *o = tok_owned_new(len);
    if (!o) return SG_TOKEN_INTERNAL;
    memcpy(o->json, json, len);
    o->json[len] = '\0';
    o->json_len = len;
    sg_token_err e = tok_scan_object(o->json, len);
    if (e == SG_TOKEN_OK) e = tok_check_claims(&unchecked, o, sg_now_unix());
    if (e != SG_TOKEN_OK) {
        sg_token_free(&o->pub);
        return e;
    }
    *out = &o->pub;
    return SG_TOKEN_OK;
}
