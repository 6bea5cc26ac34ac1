/* token.h -- bearer-token verification (JWS compact serialization).
 *
 * A verifier (shared, read-only after creation, thread-safe) checks a token
 * against its key set (jwks.h) and configuration. A token cache (one per
 * worker thread, not locked) remembers verified tokens by their exact bytes
 * until they expire. Every refusal has a stable code; see docs/tokens.md.
 *
 * The folder src/auth/ is everything about bearer tokens: keys and key sets
 * (jwks.h: JWK to EVP_PKEY, JWKS files and URLs, the refresher thread), the
 * verifier and its per-worker cache (this file), and the RFC 6750
 * WWW-Authenticate challenge built from what was verified (challenge.h).
 * Minting tokens is not part of the verifier: development tokens are
 * signed by mint.h (for `scopegate token`, the specs, fuzz/ and bench/),
 * which nothing on the request path calls.
 */
#ifndef SG_TOKEN_H
#define SG_TOKEN_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "auth/jwks.h"
#include "base/sg.h"

/* A verified token. Owned by the token cache; valid until the next call on
 * the same cache (see sg_tcache_*). */
typedef struct sg_token {
    /* The verified payload object. In a token from sg_token_verify or a
     * cache it is NULL until sg_token_claims builds it (most requests never
     * need it): read it through sg_token_claims. */
    const cJSON *claims;
    const char *sub;       /* NULL when absent */
    const char *client_id; /* client_id, else azp; NULL when absent */
    const char *iss;
    int64_t exp; /* seconds since the epoch */
    int nscopes; /* validated RFC 6749 scope tokens, token order, deduplicated */
    const char *const *scopes;
    /* The payload JSON as verified (NUL-terminated), in tokens made by
     * the verifier only; NULL in a token built by hand (then claims is used). */
    const char *claims_json;
    size_t claims_json_len;
} sg_token;

/* The token's claims as a cJSON object: t->claims when set, else built once
 * from t->claims_json and kept with the token (freed with it). Returns NULL
 * for a NULL token, a token with neither, or when out of memory. Not
 * thread-safe for one token (the first call stores the tree): a cached
 * token belongs to its worker. */
const cJSON *sg_token_claims(const sg_token *t);

/* Why a token was refused. Values and names are stable (metrics, audit log,
 * specs); append new codes at the end. */
typedef enum sg_token_err {
    SG_TOKEN_OK = 0,
    SG_TOKEN_NO_KEY,          /* the key set is empty: nothing can verify a signature */
    SG_TOKEN_ALG_NONE,        /* alg "none" (any letter case) */
    SG_TOKEN_ALG_NOT_ALLOWED, /* alg unknown, or not bound to the selected key */
    SG_TOKEN_UNKNOWN_KID,     /* kid not in the key set, after at most one refetch */
    SG_TOKEN_KID_REQUIRED,    /* no kid and several keys are bound to the alg */
    SG_TOKEN_BAD_SIGNATURE,
    SG_TOKEN_EXPIRED,
    SG_TOKEN_NOT_YET_VALID, /* nbf */
    SG_TOKEN_IAT_FUTURE,
    SG_TOKEN_WRONG_ISSUER,
    SG_TOKEN_AUD_MISSING,
    SG_TOKEN_AUD_WRONG,
    SG_TOKEN_MALFORMED,  /* bad base64url, not UTF-8 JSON, not an object, no alg */
    SG_TOKEN_SEGMENTS,   /* not exactly three dot-separated segments */
    SG_TOKEN_TOO_LARGE,  /* refused before any parsing */
    SG_TOKEN_CRIT,       /* a crit header: no extension is understood */
    SG_TOKEN_TYP,        /* typ other than JWT, at+jwt, application/at+jwt */
    SG_TOKEN_CLAIM_TYPE, /* e.g. a string exp, a numeric sub */
    SG_TOKEN_EXP_MISSING,
    SG_TOKEN_INVALID_SCOPE, /* a scope that is not an RFC 6749 scope-token, or too many */
    SG_TOKEN_DUPLICATE_KEY, /* a JSON object with a repeated member name */
    SG_TOKEN_INTERNAL,      /* out of memory or an OpenSSL failure: fail closed */
    SG_TOKEN_CLAIM_MISSING, /* a claim the configuration requires is absent */
    /* Opaque tokens (authserver.h, RFC 7662 introspection): */
    SG_TOKEN_INACTIVE,    /* the authorization server said active is not true */
    SG_TOKEN_UNAVAILABLE, /* the authorization server could not be asked: 503, not 401 */
    SG_TOKEN_PENDING,     /* an introspection call is under way (never an answer) */
    SG_TOKEN_ERR_COUNT
} sg_token_err;

/* A stable snake_case name, e.g. "bad_signature". Can't fail. */
const char *sg_token_error_name(sg_token_err e);
/* One sentence for an HTTP error_description: plain ASCII, no quotes or
 * backslashes, nothing taken from the token. Can't fail. */
const char *sg_token_error_message(sg_token_err e);

#define SG_TOKEN_DEFAULT_MAX_BYTES 16384
#define SG_TOKEN_MAX_SCOPES        256

#define SG_VERIFIER_MAX_REQUIRED_CLAIMS 16

/* The clock skew allowed by default (serve's --leeway). */
#define SG_TOKEN_DEFAULT_LEEWAY_S 60

typedef struct sg_verifier_config {
    const char *issuer;   /* exact match; NULL: not checked (not recommended) */
    const char *audience; /* canonical resource URI the aud must contain; NULL: not checked */
    int leeway_s; /* clock skew allowed on exp, nbf and iat [SG_TOKEN_DEFAULT_LEEWAY_S, at most
                     3600] */
    size_t max_token_bytes; /* larger tokens are refused unparsed [16384] */
    int require_exp;        /* refuse tokens without exp [1] */
    /* Algorithms accepted at all (SG_ALG_BIT of sg_jws_alg); 0: every alg
     * some key is bound to. A token whose alg is outside is refused before
     * any key is looked at (alg_not_allowed). */
    unsigned allowed_algs;
    /* Claims every token must carry (e.g. "sub", "client_id", "jti"); a
     * token without one is refused (claim_missing). Copied. */
    const char *required_claims[SG_VERIFIER_MAX_REQUIRED_CLAIMS];
    int nrequired_claims;
} sg_verifier_config;

/* Fills the defaults: no issuer or audience, leeway 60 s, 16 KiB, exp
 * required. Can't fail. */
void sg_verifier_config_init(sg_verifier_config *c);

typedef struct sg_verifier sg_verifier;

/* Creates a verifier over `keys`, which it borrows: keys must outlive it.
 * The config strings are copied. Returns NULL with a message in err on a
 * bad configuration (e.g. an audience with a fragment) or out of memory. */
sg_verifier *sg_verifier_new(const sg_verifier_config *c, sg_keys *keys, char *err, size_t errlen);
/* NULL is fine. */
void sg_verifier_free(sg_verifier *v);

/* Verifies one token, uncached. `now` is the wall clock in seconds. On
 * SG_TOKEN_OK *out is a token the caller frees with sg_token_free; on any
 * refusal *out is NULL. Thread-safe. */
sg_token_err sg_token_verify(const sg_verifier *v, const char *token, size_t len, int64_t now,
                             sg_token **out);
/* What verification does about a kid the key set does not hold (a key
 * rotated in at the authorization server). */
typedef enum sg_kid_wait {
    SG_KID_BLOCK,   /* refetch on this thread, at most once per refetch interval */
    SG_KID_DEFER,   /* never wait: have the refresher thread refetch (jwks.h,
                       sg_keys_want_kid) and report SG_TOKEN_UNKNOWN_KID with a
                       nonzero *ticket; verify again (SG_KID_NO_FETCH) once
                       sg_keys_kid_done(keys, ticket) */
    SG_KID_NO_FETCH /* the keys in force only */
} sg_kid_wait;

/* sg_token_verify with a choice of kw. ticket may be NULL except with
 * SG_KID_DEFER; it is set to 0 unless a deferred refetch may still bring
 * the token's key. Thread-safe. */
sg_token_err sg_token_verify_ex(const sg_verifier *v, const char *token, size_t len, int64_t now,
                                sg_kid_wait kw, uint64_t *ticket, sg_token **out);

/* The verifier's size limit (max_token_bytes). Can't fail. */
size_t sg_verifier_max_token_bytes(const sg_verifier *v);

/* The verifier's key set (borrowed, as long as the verifier lives).
 * Can't fail. */
sg_keys *sg_verifier_keys(const sg_verifier *v);

/* Frees a token from sg_token_verify. NULL is fine. */
void sg_token_free(sg_token *t);

/* 1 when token[0..len) has the shape of a JWS in compact serialization:
 * exactly three dot-separated segments of base64url characters, the first
 * decoding to text that starts a JSON object. Anything else is an opaque
 * token (introspected when that is configured). Can't fail. */
int sg_token_is_jws(const char *token, size_t len);

/* Checks an RFC 7662 introspection answer (the JSON body, strictly parsed:
 * no repeated member) as the claims of a token, with v's rules: `active`
 * must be the boolean true (else SG_TOKEN_INACTIVE), `token_type`, when
 * present, must not name a refresh token (SG_TOKEN_TYP), then exp, nbf and
 * iat with the leeway, `iss` against the issuer when the answer has one,
 * `aud` against the audience, required claims and scopes, as for a JWS.
 * `exp` may be absent (the server vouches for the token now; the cache
 * TTL bounds how long that is believed). On SG_TOKEN_OK *out is freed with
 * sg_token_free; otherwise it is NULL. Thread-safe. */
sg_token_err sg_token_from_introspection(const sg_verifier *v, const char *json, size_t len,
                                         int64_t now, sg_token **out);

/* Builds a token from a claims object WITHOUT any signature, issuer,
 * audience or time check: for `scopegate explain` and tools, never for a
 * request. Scope claims are still validated. On SG_TOKEN_OK *out is freed
 * with sg_token_free; otherwise it is NULL (SG_TOKEN_MALFORMED for JSON
 * that is not one object). */
sg_token_err sg_token_from_claims(const char *json, size_t len, sg_token **out);

/* ---- verified-token cache ---------------------------------------------------
 * Keyed by a keyed hash of the whole token plus a full byte comparison, so a
 * hit is always the same bytes. Bounded (CLOCK eviction); an entry is never
 * served at or after its exp (it is verified again instead, which applies the
 * leeway and refuses). Refusals are not cached. One cache per thread. */
typedef struct sg_tcache sg_tcache;

#define SG_TCACHE_DEFAULT_ENTRIES 10000

/* A cache in front of v (borrowed; must outlive the cache). max_entries 0
 * means the default. Returns NULL when out of memory. */
sg_tcache *sg_tcache_new(const sg_verifier *v, size_t max_entries);
/* NULL is fine. */
void sg_tcache_free(sg_tcache *c);
/* Like sg_token_verify, but *out is owned by the cache and valid until the
 * next call on this cache. */
sg_token_err sg_tcache_verify(sg_tcache *c, const char *token, size_t len, int64_t now,
                              const sg_token **out);
/* sg_tcache_verify with a choice of kw (see sg_token_verify_ex): what an
 * event-loop thread uses, with SG_KID_DEFER, so it never waits on the
 * network for a key. */
sg_token_err sg_tcache_verify_ex(sg_tcache *c, const char *token, size_t len, int64_t now,
                                 sg_kid_wait kw, uint64_t *ticket, const sg_token **out);

/* Forgets every cached token (after a reload, keys may have changed), so
 * each is verified again on its next use. Can't fail. */
void sg_tcache_clear(sg_tcache *c);

typedef struct sg_tcache_stats {
    unsigned long hits, misses, evictions, expired;
    size_t size, capacity;
} sg_tcache_stats;
/* Can't fail. */
void sg_tcache_get_stats(const sg_tcache *c, sg_tcache_stats *out);

#endif
