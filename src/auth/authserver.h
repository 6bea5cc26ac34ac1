/* authserver.h -- talking to the authorization server: RFC 8414 / OpenID
 * Connect discovery and RFC 7662 token introspection.
 *
 * Why a module of its own: a JWS access token is verified locally
 * (token.h), but an opaque one can only be judged by the authorization
 * server that issued it, and where that server keeps its keys and its
 * introspection endpoint can be learnt from its issuer URL alone. Both are
 * network exchanges with the same server, so they share one HTTP helper and
 * one set of counters.
 *
 * Introspection never runs on an event-loop thread: a worker asks
 * (sg_introspect_token), gets a ticket when the answer is not cached, and
 * parks the request until sg_introspect_done turns 1; a small pool of
 * introspection threads does the calls, at most `concurrency` at a time
 * with at most `queue` waiting, and puts every answer in one shared cache
 * keyed by the SHA-256 of the token (the token itself is kept only while
 * its call is queued or running, and never logged). */
#ifndef SG_AUTHSERVER_H
#define SG_AUTHSERVER_H

#include <stddef.h>
#include <stdint.h>

#include "auth/token.h"
#include "base/sg.h"

/* ---- one HTTP exchange with the authorization server ------------------------ */

typedef struct sg_as_request {
    const char *url;           /* http(s) only; redirects are not followed */
    const char *form;          /* POST application/x-www-form-urlencoded body; NULL: GET */
    const char *authorization; /* a whole Authorization header value, or NULL */
    unsigned timeout_ms;       /* the whole exchange, connect included */
    size_t max_bytes;          /* a longer answer fails the exchange */
} sg_as_request;

/* Performs the exchange and appends the answer's body to *body; *status is
 * the HTTP status (0 when there was none). Returns 0 when an answer came
 * (any status), or -1 with a message in err (network failure, timeout, too
 * long). Thread-safe; blocks, so never call it on an event-loop thread. */
int sg_as_fetch(const sg_as_request *r, sg_buf *body, long *status, char *err, size_t errlen);

/* ---- discovery (RFC 8414 section 3, OpenID Connect Discovery 1.0) ----------- */

typedef struct sg_as_metadata {
    char *issuer;                 /* equal to the configured issuer, byte for byte */
    char *jwks_uri;               /* NULL when the document has none */
    char *introspection_endpoint; /* NULL when the document has none */
    char *from;                   /* the URL the document was read from */
} sg_as_metadata;

/* The RFC 8414 metadata URL of an issuer: the well-known path inserted
 * between the authority and the issuer's path (section 3.1), e.g.
 * https://as/tenant -> https://as/.well-known/oauth-authorization-server/tenant.
 * Appends it to out and returns 0, or -1 when issuer is not an http(s) URL
 * with a host and without query or fragment (nothing appended). */
int sg_as_metadata_url(const char *issuer, sg_buf *out);

/* Fetches the issuer's metadata: first the RFC 8414 URL, then, when that
 * fails, <issuer>/.well-known/openid-configuration. A document counts only
 * when it is a JSON object (strict: no repeated member) whose `issuer` is
 * the configured one exactly (RFC 8414 section 3.3) and whose jwks_uri and
 * introspection_endpoint, when present, are http(s) URLs. Fills *out (free
 * it with sg_as_metadata_free) and returns 0, or returns -1 with a message
 * naming both URLs in err. Blocks (start-up only). */
int sg_as_discover(const char *issuer, unsigned timeout_ms, sg_as_metadata *out, char *err,
                   size_t errlen);
/* NULL fields are fine. Can't fail. */
void sg_as_metadata_free(sg_as_metadata *m);

/* ---- introspection (RFC 7662) ----------------------------------------------- */

/* RFC 7662 section 2.1 leaves client authentication to RFC 6749 section
 * 2.3.1: HTTP Basic with the form-encoded id and secret, or both in the
 * request body. */
typedef enum sg_introspect_auth {
    SG_INTROSPECT_AUTH_BASIC,
    SG_INTROSPECT_AUTH_POST
} sg_introspect_auth;

typedef struct sg_introspect_config {
    const char *url;           /* the introspection endpoint */
    const char *client_id;     /* copied */
    const char *client_secret; /* copied; wiped from memory when freed; never logged */
    sg_introspect_auth auth;
    unsigned cache_ttl_s;    /* longest an active answer is reused (never past its exp) [60] */
    unsigned negative_ttl_s; /* how long a refusal is reused [5] */
    size_t cache_entries;    /* shared cache bound [10000] */
    unsigned concurrency;    /* calls in flight at most (= threads) [4] */
    unsigned queue;          /* calls waiting at most; beyond, 503 at once [256] */
    unsigned timeout_ms;     /* one call, connect included [3000] */
} sg_introspect_config;

/* What sg_introspect_config_init sets (the defaults of serve's
 * --introspection-* flags). */
#define SG_INTROSPECT_DEFAULT_CACHE_TTL_S    60u
#define SG_INTROSPECT_DEFAULT_NEGATIVE_TTL_S 5u
#define SG_INTROSPECT_DEFAULT_CACHE_ENTRIES  10000u
#define SG_INTROSPECT_DEFAULT_CONCURRENCY    4u
#define SG_INTROSPECT_DEFAULT_QUEUE          256u
#define SG_INTROSPECT_DEFAULT_TIMEOUT_MS     3000u

/* The defaults above. Can't fail. */
void sg_introspect_config_init(sg_introspect_config *c);

typedef struct sg_introspector sg_introspector;

/* Starts the introspection threads. `v` (borrowed; must outlive it) says
 * how an answer's claims are checked: its issuer, audience and leeway, as
 * for a JWS (docs/tokens.md). Returns NULL with a message in err on a bad
 * configuration or when threads cannot start. */
sg_introspector *sg_introspector_new(const sg_introspect_config *c, const sg_verifier *v, char *err,
                                     size_t errlen);
/* Stops the threads (a call in flight ends within its timeout) and frees
 * everything. NULL is fine. */
void sg_introspector_free(sg_introspector *in);

/* What a worker holds of a cached answer between two calls: the sg_token
 * handed out stays valid until the holder is released or used again. */
typedef struct sg_introspect_hold {
    void *entry;
} sg_introspect_hold;
/* Gives the held answer back. Can't fail; an empty holder is fine. */
void sg_introspect_release(sg_introspect_hold *h);

/* Judges an opaque token without waiting on the network. Returns
 *   SG_TOKEN_OK with *out set (valid until *hold is released or reused):
 *       a cached active answer whose claims passed;
 *   a refusal (SG_TOKEN_INACTIVE, SG_TOKEN_EXPIRED, SG_TOKEN_AUD_WRONG...):
 *       a cached answer that did not pass;
 *   SG_TOKEN_UNAVAILABLE: the authorization server could not be asked or
 *       did not answer usefully (cached 2 s), the queue is full, or
 *       may_ask is 0 and nothing is cached;
 *   SG_TOKEN_PENDING with a nonzero *ticket (only when may_ask): a call is
 *       queued or running for this token; ask again once
 *       sg_introspect_done(in, *ticket) is 1.
 * now_ms is the wall clock in milliseconds (sg_now_unix_ms). Thread-safe. */
sg_token_err sg_introspect_token(sg_introspector *in, const char *token, size_t len, int64_t now_ms,
                                 int may_ask, uint64_t *ticket, sg_introspect_hold *hold,
                                 const sg_token **out);
/* 1 once the call with this ticket has finished (well or not). One atomic
 * load; thread-safe. */
int sg_introspect_done(sg_introspector *in, uint64_t ticket);
/* fn(ud) runs on an introspection thread after every call (to wake the
 * threads with parked requests); it must not block nor call back into in.
 * NULL removes it; once this returns no call of the old one is under way.
 * Can't fail. */
void sg_introspect_on_done(sg_introspector *in, void (*fn)(void *ud), void *ud);

/* Counters for an exporter (metrics); every field is read atomically. */
typedef struct sg_authserver_stats {
    unsigned long introspections;         /* calls made to the endpoint */
    unsigned long introspection_failures; /* calls without a usable answer */
    unsigned long cache_hits;             /* active answers served from the cache */
    unsigned long cache_misses;           /* lookups that found nothing usable */
    unsigned long negative_hits;          /* refusals served from the cache */
    unsigned long queue_full;             /* requests refused because the queue was full */
    unsigned long discovery_fetches;      /* metadata documents fetched (process-wide) */
} sg_authserver_stats;
/* The one getter for them; in may be NULL (then only discovery counts).
 * Can't fail. */
void sg_authserver_get_stats(const sg_introspector *in, sg_authserver_stats *out);
/* A metrics collector (sg_metrics_add_collector, ud = the sg_introspector,
 * or NULL for discovery only): the stats above as Prometheus counter
 * families. Can't fail. */
void sg_authserver_metrics(sg_buf *out, void *ud);

#endif
