/* jwks.h -- the verification key set: keys parsed once, bound to algorithms.
 *
 * Keys come from PEM public-key files (the configuration names the alg),
 * from explicitly configured HMAC secrets, from a JWKS document (file or
 * string), and from a JWKS URL fetched with libcurl. Each key is an
 * EVP_PKEY parsed once (or a secret) plus the set of JWS algorithms it may
 * verify; a token's `alg` must be in that set, which is what defeats
 * algorithm confusion. HS* keys exist only when configured with a secret:
 * nothing derives one from a PEM or a JWK.
 *
 * Sharing: readers take an immutable, refcounted snapshot (sg_keyset) with
 * sg_keys_acquire and give it back with sg_keyset_release. A refresh builds
 * a new snapshot and swaps the pointer under a mutex held for a few
 * instructions, so verifications never wait for a fetch; a caller that
 * needs an unknown kid asks for a refetch with a ticket and waits for it
 * the way its thread waits for anything (sg_keys_want_kid). */
#ifndef SG_JWKS_H
#define SG_JWKS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

/* JWS algorithms (RFC 7518, RFC 8037). SG_ALG_NONE is never verifiable. */
typedef enum sg_jws_alg {
    SG_ALG_NONE = 0,
    SG_ALG_HS256,
    SG_ALG_HS384,
    SG_ALG_HS512,
    SG_ALG_RS256,
    SG_ALG_RS384,
    SG_ALG_RS512,
    SG_ALG_PS256,
    SG_ALG_PS384,
    SG_ALG_PS512,
    SG_ALG_ES256,
    SG_ALG_ES384,
    SG_ALG_ES512,
    SG_ALG_EDDSA,
    SG_ALG_COUNT
} sg_jws_alg;

#define SG_ALG_BIT(a) (1u << (a))

/* The alg for a JWS "alg" name (case-sensitive, as RFC 7515 says), or -1
 * when the name is not one we implement. "none" maps to SG_ALG_NONE. */
int sg_jws_alg_from_name(const char *name, size_t len);
/* The registered name of an alg; "?" for out-of-range values. */
const char *sg_jws_alg_name(int alg);

/* One verification key. Exactly one of pkey and secret is set. */
typedef struct sg_jwk {
    char *kid;             /* NULL when the key has no kid */
    unsigned algs;         /* SG_ALG_BIT set of algorithms this key may verify */
    EVP_PKEY *pkey;        /* public key (RSA, EC, Ed25519, Ed448) */
    unsigned char *secret; /* HMAC secret */
    size_t secret_len;
} sg_jwk;

/* An immutable snapshot of all keys. Readable by any thread that holds a
 * reference. */
typedef struct sg_keyset {
    int refs; /* accessed atomically */
    unsigned long generation;
    int nkeys;
    sg_jwk keys[];
} sg_keyset;

typedef struct sg_keys sg_keys;

/* Limits: a JWKS document larger than this, or with more keys, is refused. */
#define SG_JWKS_MAX_BYTES (256 * 1024)
#define SG_JWKS_MAX_KEYS  64

/* Returns an empty key set, or NULL when out of memory. */
sg_keys *sg_keys_new(void);
/* Frees the key set. Every snapshot acquired from it must have been
 * released. NULL is fine. */
void sg_keys_free(sg_keys *k);

/* Configuration calls. They are not thread-safe against each other: call
 * them before the key set is shared. Each returns 0, or -1 with a message
 * (no secrets in it) in err. kid may be NULL. */

/* A PEM SubjectPublicKeyInfo ("BEGIN PUBLIC KEY") bound to one alg, which
 * must fit the key type (RSA: RS* and PS*, at least 2048 bits; EC: the ES
 * alg of its curve; Ed25519/Ed448: EdDSA). HS* is refused here. */
int sg_keys_add_pem(sg_keys *k, const char *pem, size_t len, const char *alg, const char *kid,
                    char *err, size_t errlen);
int sg_keys_add_pem_file(sg_keys *k, const char *path, const char *alg, const char *kid, char *err,
                         size_t errlen);
/* An HMAC secret for HS256/384/512; RFC 7518 3.2: at least as long as the
 * hash output (32/48/64 bytes), shorter secrets are refused. */
int sg_keys_add_secret(sg_keys *k, const void *secret, size_t len, const char *alg, const char *kid,
                       char *err, size_t errlen);
/* Every usable signature key of a JWKS document (see docs/tokens.md for
 * which keys are skipped). A document that is not a JWKS, or that holds no
 * usable key, is an error. */
int sg_keys_add_jwks(sg_keys *k, const char *json, size_t len, char *err, size_t errlen);
int sg_keys_add_jwks_file(sg_keys *k, const char *path, char *err, size_t errlen);
/* How often a JWKS URL is fetched again, and at most how often a token
 * with an unknown kid makes it fetched early (the defaults of serve's
 * --jwks-ttl and --jwks-refetch). */
#define SG_JWKS_DEFAULT_TTL_S     300u
#define SG_JWKS_DEFAULT_REFETCH_S 30u

/* Fetches the JWKS at url now (failure, or no usable key, is an error for
 * the caller to report), then re-fetches it every ttl_ms (0:
 * SG_JWKS_DEFAULT_TTL_S) and, on a token with an unknown kid, at most once
 * per refetch_ms (0: SG_JWKS_DEFAULT_REFETCH_S; the
 * same limit spaces out retries after a failed refresh). Only one URL. */
int sg_keys_set_jwks_url(sg_keys *k, const char *url, uint64_t ttl_ms, uint64_t refetch_ms,
                         char *err, size_t errlen);

/* Hot path. Returns the current snapshot with a reference the caller gives
 * back with sg_keyset_release. When the TTL has run out, the first caller to
 * notice refreshes first (the others keep using the old snapshot). Never
 * NULL. */
const sg_keyset *sg_keys_acquire(sg_keys *k);
void sg_keyset_release(const sg_keyset *s);

/* For a token whose kid is not in `seen`: returns a newer snapshot (a
 * reference to release) when one was published since `seen` or when a
 * refetch, allowed at most once per refetch interval, produced one;
 * otherwise NULL. Blocks: it waits for a fetch in flight and fetches on the
 * caller's thread (command-line tools; never an event-loop thread). */
const sg_keyset *sg_keys_refetch_for_kid(sg_keys *k, const sg_keyset *seen);

/* For a token whose kid is not in `seen`, without waiting on the network
 * (the event-loop threads' way; sg_keys_refetch_for_kid is the blocking
 * one). Returns
 *   SG_KEYS_KID_NEWER:   *newer is a snapshot published since `seen` (a
 *                        reference to release): try it;
 *   SG_KEYS_KID_WAIT:    a refetch is queued or running (one at a time, at
 *                        most one started per refetch interval): when
 *                        sg_keys_kid_done(k, *ticket) turns 1, the keys in
 *                        force are all there will be for this kid;
 *   SG_KEYS_KID_UNKNOWN: no URL, or the interval has not passed: the kid
 *                        is unknown.
 * Without the refresher thread it fetches on the caller's thread (NEWER or
 * UNKNOWN then). Thread-safe. */
enum { SG_KEYS_KID_UNKNOWN = 0, SG_KEYS_KID_NEWER = 1, SG_KEYS_KID_WAIT = 2 };
int sg_keys_want_kid(sg_keys *k, const sg_keyset *seen, const sg_keyset **newer, uint64_t *ticket);
/* 1 once the refetch with this ticket has finished (well or not). One
 * atomic load; thread-safe. */
int sg_keys_kid_done(sg_keys *k, uint64_t ticket);
/* fn(ud) runs on the refresher thread after every unknown-kid refetch (to
 * wake the threads waiting for tickets); it must not block nor call back
 * into k. NULL removes it; once this returns, no call of the old one is
 * under way. Can't fail. */
void sg_keys_on_kid_fetched(sg_keys *k, void (*fn)(void *ud), void *ud);

/* Moves JWKS URL fetches to a thread of their own: TTL refreshes (without
 * it, the first request after the TTL fetches) and the unknown-kid
 * refetches asked for with sg_keys_want_kid. Call once, after
 * sg_keys_set_jwks_url; stopped by sg_keys_free. Returns 0 (also without a
 * URL), or -1 with a message. */
int sg_keys_start_refresher(sg_keys *k, char *err, size_t errlen);

/* Replaces k's configured keys (PEM files, secrets, JWKS files) with those
 * of `from`, a key set configured the same way moments ago (SIGHUP re-reads
 * the files), and publishes the result; `from` gets the old ones, to be
 * freed with it. URL keys are untouched. Thread-safe against readers.
 * Returns 0, or -1 when out of memory (then nothing changed). */
int sg_keys_replace_static(sg_keys *k, sg_keys *from);

/* Forces a fetch of the URL now, ignoring the intervals (tests, SIGHUP).
 * Returns 0, or -1 with a message; on failure the old keys stay. */
int sg_keys_refresh(sg_keys *k, char *err, size_t errlen);

typedef struct sg_keys_stats {
    unsigned long fetches;        /* successful URL fetches, the first included */
    unsigned long fetch_failures; /* failed fetches (network, HTTP status, JSON, no keys) */
    unsigned long generation;     /* bumped on every published snapshot */
    int nkeys;                    /* keys in the current snapshot */
} sg_keys_stats;
/* Can't fail. (Waits while a fetch is under way: a readiness check uses
 * sg_keys_count instead.) */
void sg_keys_get_stats(sg_keys *k, sg_keys_stats *out);
/* Keys in the snapshot in force, without waiting for a fetch under way.
 * Thread-safe; can't fail. */
int sg_keys_count(sg_keys *k);

#endif
