/* authserver.c -- discovery and token introspection (see authserver.h).
 *
 * Why it looks like this: an introspection call is a network round trip to
 * a server that may be slow or down, and the gateway's workers are event
 * loops that must never wait on one. So workers only look in a shared cache
 * and, on a miss, queue a call and get a ticket; a pool of threads does the
 * calls and wakes the workers the way the JWKS refresher does (one parking
 * mechanism in http.c for both). The cache is keyed by the SHA-256 of the
 * token, so no token outlives its call in memory, and refusals are cached
 * too (briefly) so that a flood of junk tokens costs one call per token,
 * not one per request. */
#include "auth/authserver.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "base/json.h"
#include "base/metrics.h"

#define MAX_ANSWER_BYTES   (64 * 1024)  /* an introspection answer */
#define MAX_METADATA_BYTES (256 * 1024) /* a discovery document */
#define MAX_SECRET_BYTES   4096
#define FAILED_TTL_S       2 /* a failed call is remembered 2 s */
/* Tickets are remembered in a ring: one more call than fits in it can't be
 * in flight (sg_introspector_new caps concurrency + queue below half). */
#define TICKET_RING 8192

static atomic_ulong discovery_fetches;

/* ---- one exchange ------------------------------------------------------------ */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

typedef struct capped_body {
    sg_buf *buf;
    size_t max;
} capped_body;

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    capped_body *b = userdata;
    size_t n = size * nmemb;
    if (b->buf->len + n > b->max) return 0; /* makes curl fail the transfer */
    sg_buf_append(b->buf, data, n);
    return sg_buf_ok(b->buf) ? n : 0;
}

int sg_as_fetch(const sg_as_request *r, sg_buf *body, long *status, char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init_once);
    *status = 0;
    CURL *c = curl_easy_init();
    if (!c) {
        sg_errf(err, errlen, "curl init failed");
        return -1;
    }
    struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
    char *auth_line = NULL;
    if (r->authorization) {
        size_t n = strlen(r->authorization) + 16;
        if ((auth_line = malloc(n)) != NULL) {
            snprintf(auth_line, n, "Authorization: %s", r->authorization);
            struct curl_slist *more = curl_slist_append(hdrs, auth_line);
            if (more) hdrs = more;
        }
    }
    capped_body cb = {body, r->max_bytes};
    curl_easy_setopt(c, CURLOPT_URL, r->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)r->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)r->timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &cb);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "scopegate/" SG_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    if (r->form) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->form);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(r->form));
    }
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hdrs); /* libcurl copies header lines: wipe ours */
    if (auth_line) {
        OPENSSL_cleanse(auth_line, strlen(auth_line));
        free(auth_line);
    }
    if (rc != CURLE_OK) {
        sg_errf(err, errlen, "%s", curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

/* ---- discovery ------------------------------------------------------------------ */

/* The length of "scheme://authority" of an http(s) URL, or 0. */
static size_t origin_len(const char *url)
{
    size_t scheme = strncasecmp(url, "https://", 8) == 0  ? 8
                    : strncasecmp(url, "http://", 7) == 0 ? 7
                                                          : 0;
    if (!scheme) return 0;
    size_t alen = strcspn(url + scheme, "/?#");
    return alen ? scheme + alen : 0;
}

int sg_as_metadata_url(const char *issuer, sg_buf *out)
{
    size_t o = origin_len(issuer);
    if (!o || strpbrk(issuer, "?#")) return -1; /* RFC 8414 2: no query, no fragment */
    const char *path = issuer + o;
    size_t plen = strlen(path);
    if (plen > 0 && path[plen - 1] == '/') plen--; /* "/" alone: no suffix */
    sg_buf_append(out, issuer, o);
    sg_buf_puts(out, "/.well-known/oauth-authorization-server");
    sg_buf_append(out, path, plen);
    return 0;
}

void sg_as_metadata_free(sg_as_metadata *m)
{
    free(m->issuer);
    free(m->jwks_uri);
    free(m->introspection_endpoint);
    free(m->from);
    memset(m, 0, sizeof *m);
}

/* An optional endpoint member: absent (0), an http(s) URL copied into *out
 * (0), or anything else (-1). */
static int endpoint_member(const cJSON *doc, const char *name, char **out, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, name);
    if (!v) return 0;
    if (!cJSON_IsString(v) || !origin_len(v->valuestring)) {
        sg_errf(err, errlen, "%s is not an http(s) URL", name);
        return -1;
    }
    if (!(*out = strdup(v->valuestring))) {
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* Fetches and checks one metadata document. Returns 0 with *out filled, or
 * -1 with a message. */
static int discover_from(const char *url, const char *issuer, unsigned timeout_ms,
                         sg_as_metadata *out, char *err, size_t errlen)
{
    sg_buf body = SG_BUF_INIT;
    long status = 0;
    sg_as_request r = {url, NULL, NULL, timeout_ms, MAX_METADATA_BYTES};
    int rc = -1;
    cJSON *doc = NULL;
    char why[256];
    atomic_fetch_add(&discovery_fetches, 1);
    if (sg_as_fetch(&r, &body, &status, why, sizeof why) != 0) {
        sg_errf(err, errlen, "%s: %s", url, why);
        goto out;
    }
    if (status != 200) {
        sg_errf(err, errlen, "%s: HTTP status %ld", url, status);
        goto out;
    }
    sg_json_scan scan;
    sg_json_error jerr;
    int ok = sg_json_prescan(body.data ? body.data : "", body.len, NULL, &scan, &jerr) == 0 &&
             scan.top_is_object;
    sg_json_scan_free(&scan);
    if (!ok || !(doc = cJSON_ParseWithLength(body.data, body.len))) {
        sg_errf(err, errlen, "%s: not a JSON object", url);
        goto out;
    }
    const cJSON *iss = cJSON_GetObjectItemCaseSensitive(doc, "issuer");
    if (!cJSON_IsString(iss) || strcmp(iss->valuestring, issuer) != 0) {
        sg_errf(err, errlen, "%s: its issuer is not %s (RFC 8414 3.3)", url, issuer);
        goto out;
    }
    if (endpoint_member(doc, "jwks_uri", &out->jwks_uri, why, sizeof why) != 0 ||
        endpoint_member(doc, "introspection_endpoint", &out->introspection_endpoint, why,
                        sizeof why) != 0) {
        sg_errf(err, errlen, "%s: %s", url, why);
        goto out;
    }
    if (!(out->issuer = strdup(issuer)) || !(out->from = strdup(url))) {
        sg_errf(err, errlen, "out of memory");
        goto out;
    }
    rc = 0;
out:
    if (rc != 0) sg_as_metadata_free(out);
    cJSON_Delete(doc);
    sg_buf_free(&body);
    return rc;
}

int sg_as_discover(const char *issuer, unsigned timeout_ms, sg_as_metadata *out, char *err,
                   size_t errlen)
{
    memset(out, 0, sizeof *out);
    sg_buf rfc8414 = SG_BUF_INIT, oidc = SG_BUF_INIT;
    if (sg_as_metadata_url(issuer, &rfc8414) != 0) {
        sg_errf(err, errlen, "the issuer %s is not an http(s) URL without query or fragment",
                issuer);
        return -1;
    }
    size_t n = strlen(issuer);
    sg_buf_append(&oidc, issuer, n > 0 && issuer[n - 1] == '/' ? n - 1 : n);
    sg_buf_puts(&oidc, "/.well-known/openid-configuration");
    char first[512], second[512];
    int rc = -1;
    if (!sg_buf_ok(&rfc8414) || !sg_buf_ok(&oidc))
        sg_errf(err, errlen, "out of memory");
    else if (discover_from(rfc8414.data, issuer, timeout_ms, out, first, sizeof first) == 0 ||
             discover_from(oidc.data, issuer, timeout_ms, out, second, sizeof second) == 0)
        rc = 0;
    else
        sg_errf(err, errlen, "discovery failed: %s; %s", first, second);
    sg_buf_free(&rfc8414);
    sg_buf_free(&oidc);
    return rc;
}

/* ---- the shared answer cache ---------------------------------------------------- */

enum { ANSWER_ACTIVE, ANSWER_REFUSED, ANSWER_FAILED };

/* An active answer's token, shared by the cache and the workers holding it. */
typedef struct held_token {
    atomic_int refs;
    sg_token *token;
} held_token;

static void held_release(held_token *h)
{
    if (h && atomic_fetch_sub(&h->refs, 1) == 1) {
        sg_token_free(h->token);
        free(h);
    }
}

void sg_introspect_release(sg_introspect_hold *h)
{
    held_release(h->entry);
    h->entry = NULL;
}

#define NIL (-1)

typedef struct answer {
    unsigned char key[32]; /* SHA-256 of the token */
    uint64_t hash;
    int kind;             /* ANSWER_*; the slot is free when `used` is 0 */
    int used, referenced; /* referenced: the CLOCK bit */
    sg_token_err refusal; /* ANSWER_REFUSED */
    int64_t until;        /* wall-clock millisecond from which it is no longer used */
    held_token *held;     /* ANSWER_ACTIVE */
    int32_t next;
} answer;

/* One call to make: the token is kept only until its call is made. */
typedef struct job {
    unsigned char key[32];
    char *token;
    size_t len;
    uint64_t seq;
} job;

struct sg_introspector {
    const sg_verifier *v;
    char *url, *client_post_fields, *authorization; /* the last two hold the secret */
    unsigned cache_ttl_s, negative_ttl_s, timeout_ms, concurrency, queue_cap;
    uint64_t salt;

    pthread_mutex_t mu; /* the cache, the queue, the running calls */
    pthread_cond_t cv;
    answer *slots;
    size_t capacity, size, hand;
    int32_t *buckets, free_head;
    uint64_t mask;
    job **queue; /* a ring of queue_cap */
    size_t qhead, qlen;
    job **running; /* [concurrency] */
    uint64_t next_seq;
    int stop;
    pthread_t *threads;
    unsigned nthreads;
    _Atomic uint64_t done[TICKET_RING];

    pthread_mutex_t cb_mu;
    void (*on_done)(void *);
    void *on_done_ud;
    atomic_ulong last_warn_s;

    atomic_ulong introspections, failures, hits, misses, negative_hits, queue_full;
};

void sg_introspect_config_init(sg_introspect_config *c)
{
    memset(c, 0, sizeof *c);
    c->cache_ttl_s = SG_INTROSPECT_DEFAULT_CACHE_TTL_S;
    c->negative_ttl_s = SG_INTROSPECT_DEFAULT_NEGATIVE_TTL_S;
    c->cache_entries = SG_INTROSPECT_DEFAULT_CACHE_ENTRIES;
    c->concurrency = SG_INTROSPECT_DEFAULT_CONCURRENCY;
    c->queue = SG_INTROSPECT_DEFAULT_QUEUE;
    c->timeout_ms = SG_INTROSPECT_DEFAULT_TIMEOUT_MS;
}

static uint64_t bucket_hash(const sg_introspector *in, const unsigned char key[32])
{
    uint64_t h;
    memcpy(&h, key, sizeof h);
    h ^= in->salt; /* a keyed mix, so nobody aims tokens at one bucket */
    h *= 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

static void answer_remove(sg_introspector *in, int32_t i)
{
    answer *a = &in->slots[i];
    int32_t *link = &in->buckets[a->hash & in->mask];
    while (*link != i)
        link = &in->slots[*link].next;
    *link = a->next;
    held_release(a->held);
    memset(a, 0, sizeof *a);
    a->next = in->free_head;
    in->free_head = i;
    in->size--;
}

static int32_t answer_find(sg_introspector *in, const unsigned char key[32], uint64_t h)
{
    for (int32_t i = in->buckets[h & in->mask]; i != NIL; i = in->slots[i].next)
        if (in->slots[i].hash == h && memcmp(in->slots[i].key, key, 32) == 0) return i;
    return NIL;
}

/* Stores an answer (replacing one for the same key); evicts with CLOCK when
 * full. Takes over `held`. Called with mu held. */
static void answer_store(sg_introspector *in, const unsigned char key[32], int kind,
                         sg_token_err refusal, int64_t until, held_token *held)
{
    uint64_t h = bucket_hash(in, key);
    int32_t old = answer_find(in, key, h);
    if (old != NIL) answer_remove(in, old);
    if (in->free_head == NIL) {
        for (;;) {
            answer *a = &in->slots[in->hand];
            if (a->used && !a->referenced) break;
            a->referenced = 0;
            in->hand = (in->hand + 1) % in->capacity;
        }
        answer_remove(in, (int32_t)in->hand);
    }
    int32_t i = in->free_head;
    answer *a = &in->slots[i];
    in->free_head = a->next;
    memcpy(a->key, key, 32);
    a->hash = h;
    a->kind = kind;
    a->used = 1;
    a->referenced = 0;
    a->refusal = refusal;
    a->until = until;
    a->held = held;
    a->next = in->buckets[h & in->mask];
    in->buckets[h & in->mask] = i;
    in->size++;
}

/* ---- calls ------------------------------------------------------------------------ */

/* At most one warning a second: a server that is down must not flood the
 * log with one line per token. */
static void warn_limited(sg_introspector *in, const char *why)
{
    unsigned long now = (unsigned long)sg_now_unix();
    unsigned long last = atomic_load(&in->last_warn_s);
    if (now != last && atomic_compare_exchange_strong(&in->last_warn_s, &last, now))
        sg_log(SG_LOG_WARN, "introspection: %s (requests with opaque tokens get 503)", why);
}

/* Stores what the call said about j's token (kind, refusal) in the shared
 * cache for as long as it is believed, from now_ms (wall clock, in
 * milliseconds: a deadline in whole seconds would cut a one-second TTL to
 * anything between nothing and a second); token (an active answer's) is
 * kept there or freed. */
static void store_answer(sg_introspector *in, const job *j, int kind, sg_token_err refusal,
                         sg_token *token, int64_t now_ms)
{
    held_token *held = NULL;
    int64_t until = now_ms + 1000 * (kind == ANSWER_ACTIVE    ? (int64_t)in->cache_ttl_s
                                     : kind == ANSWER_REFUSED ? (int64_t)in->negative_ttl_s
                                                              : FAILED_TTL_S);
    if (kind == ANSWER_ACTIVE) {
        /* Never believed past exp (compared in seconds first: exp may be
         * as large as a token cares to say, and exp * 1000 would overflow). */
        if (token->exp >= 0 && token->exp <= until / 1000) until = token->exp * 1000;
        /* Inside the leeway after exp the token still passes, but only the
         * request that asked sees it (cached one second). */
        if (until <= now_ms) until = now_ms + 1000;
        held = malloc(sizeof *held);
        if (!held) {
            sg_token_free(token);
            kind = ANSWER_FAILED;
            until = now_ms + 1000 * FAILED_TTL_S;
        } else {
            atomic_init(&held->refs, 1);
            held->token = token;
        }
    }
    pthread_mutex_lock(&in->mu);
    answer_store(in, j->key, kind, refusal, until, held);
    pthread_mutex_unlock(&in->mu);
}

/* Makes one call and stores what it says. Runs on an introspection thread. */
static void call_and_store(sg_introspector *in, job *j)
{
    atomic_fetch_add(&in->introspections, 1);
    char *escaped = curl_easy_escape(NULL, j->token, (int)j->len);
    sg_buf form = SG_BUF_INIT;
    if (escaped) {
        sg_buf_printf(&form, "token=%s&token_type_hint=access_token", escaped);
        if (in->client_post_fields) sg_buf_puts(&form, in->client_post_fields);
        OPENSSL_cleanse(escaped, strlen(escaped));
        curl_free(escaped);
    }
    /* The token is not needed any more: wipe it before the round trip. */
    OPENSSL_cleanse(j->token, j->len);
    free(j->token);
    j->token = NULL;

    sg_buf body = SG_BUF_INIT;
    long status = 0;
    char why[256] = "out of memory";
    int kind = ANSWER_FAILED;
    sg_token_err refusal = SG_TOKEN_UNAVAILABLE;
    sg_token *token = NULL;
    if (sg_buf_ok(&form) && form.len) {
        sg_as_request r = {in->url, form.data, in->authorization, in->timeout_ms, MAX_ANSWER_BYTES};
        if (sg_as_fetch(&r, &body, &status, why, sizeof why) != 0) {
            /* why says it */
        } else if (status != 200) {
            snprintf(why, sizeof why, "the endpoint answered HTTP status %ld", status);
        } else {
            int64_t now = sg_now_unix();
            sg_token_err e = sg_token_from_introspection(in->v, body.data ? body.data : "",
                                                         body.len, now, &token);
            /* The token is shared by every worker: its claims tree (built
             * on first use, sg_token_claims) is built here, before it is
             * published, so that the workers only ever read it. */
            if (e == SG_TOKEN_OK && !sg_token_claims(token)) {
                sg_token_free(token);
                token = NULL;
                e = SG_TOKEN_INTERNAL;
            }
            if (e == SG_TOKEN_OK) {
                kind = ANSWER_ACTIVE;
            } else if (e == SG_TOKEN_MALFORMED || e == SG_TOKEN_DUPLICATE_KEY ||
                       e == SG_TOKEN_INTERNAL) {
                /* A server that answers junk has a problem; the token may be fine. */
                snprintf(why, sizeof why, "the answer is not a usable JSON object (%s)",
                         sg_token_error_name(e));
            } else {
                kind = ANSWER_REFUSED;
                refusal = e;
            }
        }
    }
    if (form.data) OPENSSL_cleanse(form.data, form.len);
    sg_buf_free(&form);
    sg_buf_free(&body);
    if (kind == ANSWER_FAILED) {
        atomic_fetch_add(&in->failures, 1);
        warn_limited(in, why);
    }
    store_answer(in, j, kind, refusal, token, sg_now_unix_ms());
}

static void *introspection_main(void *arg)
{
    sg_introspector *in = ((void **)arg)[0];
    unsigned index = (unsigned)(uintptr_t)((void **)arg)[1];
    free(arg);
    sg_thread_name("sg-introspect", index);
    pthread_mutex_lock(&in->mu);
    for (;;) {
        while (!in->stop && in->qlen == 0)
            pthread_cond_wait(&in->cv, &in->mu);
        if (in->stop) break;
        job *j = in->queue[in->qhead];
        in->qhead = (in->qhead + 1) % in->queue_cap;
        in->qlen--;
        in->running[index] = j;
        pthread_mutex_unlock(&in->mu);
        call_and_store(in, j);
        pthread_mutex_lock(&in->mu);
        in->running[index] = NULL;
        atomic_store_explicit(&in->done[j->seq % TICKET_RING], j->seq, memory_order_release);
        pthread_mutex_unlock(&in->mu);
        free(j);
        pthread_mutex_lock(&in->cb_mu);
        if (in->on_done) in->on_done(in->on_done_ud);
        pthread_mutex_unlock(&in->cb_mu);
        pthread_mutex_lock(&in->mu);
    }
    pthread_mutex_unlock(&in->mu);
    return NULL;
}

/* ---- life cycle -------------------------------------------------------------------- */

/* RFC 6749 2.3.1: the id and the secret are form-encoded, then joined by a
 * colon and sent as HTTP Basic credentials (or as two form fields). */
static int client_credentials(sg_introspector *in, const sg_introspect_config *c)
{
    char *id = curl_easy_escape(NULL, c->client_id, 0);
    char *secret = curl_easy_escape(NULL, c->client_secret, 0);
    int rc = -1;
    if (!id || !secret) goto out;
    sg_buf b = SG_BUF_INIT;
    if (c->auth == SG_INTROSPECT_AUTH_POST) {
        sg_buf_printf(&b, "&client_id=%s&client_secret=%s", id, secret);
        if (sg_buf_ok(&b)) in->client_post_fields = sg_buf_steal(&b), rc = 0;
    } else {
        sg_buf plain = SG_BUF_INIT;
        sg_buf_printf(&plain, "%s:%s", id, secret);
        if (sg_buf_ok(&plain)) {
            size_t cap = 4 * ((plain.len + 2) / 3) + 1;
            unsigned char *enc = malloc(cap);
            if (enc) {
                EVP_EncodeBlock(enc, (const unsigned char *)plain.data, (int)plain.len);
                sg_buf_printf(&b, "Basic %s", (const char *)enc);
                OPENSSL_cleanse(enc, cap);
                free(enc);
                if (sg_buf_ok(&b)) in->authorization = sg_buf_steal(&b), rc = 0;
            }
        }
        if (plain.data) OPENSSL_cleanse(plain.data, plain.len);
        sg_buf_free(&plain);
    }
    sg_buf_free(&b);
out:
    if (secret) OPENSSL_cleanse(secret, strlen(secret));
    curl_free(id);
    curl_free(secret);
    return rc;
}

sg_introspector *sg_introspector_new(const sg_introspect_config *c, const sg_verifier *v, char *err,
                                     size_t errlen)
{
    pthread_once(&curl_once, curl_init_once);
    if (!c->url || !origin_len(c->url)) {
        sg_errf(err, errlen, "the introspection URL must be an http(s) URL");
        return NULL;
    }
    if (!c->client_id || !*c->client_id || !c->client_secret || !*c->client_secret) {
        sg_errf(err, errlen, "introspection needs a client id and a client secret");
        return NULL;
    }
    if (strlen(c->client_secret) > MAX_SECRET_BYTES) {
        sg_errf(err, errlen, "the introspection client secret is longer than %d bytes",
                MAX_SECRET_BYTES);
        return NULL;
    }
    unsigned concurrency = c->concurrency ? c->concurrency : 4;
    unsigned queue = c->queue ? c->queue : 256;
    size_t entries = c->cache_entries ? c->cache_entries : 10000;
    if (concurrency > 64 || queue > 4000 || entries > (1u << 24)) {
        sg_errf(err, errlen, "introspection limits out of range");
        return NULL;
    }
    sg_introspector *in = calloc(1, sizeof *in);
    if (!in) goto oom;
    in->v = v;
    in->cache_ttl_s = c->cache_ttl_s ? c->cache_ttl_s : 1;
    in->negative_ttl_s = c->negative_ttl_s ? c->negative_ttl_s : 1;
    in->timeout_ms = c->timeout_ms ? c->timeout_ms : SG_INTROSPECT_DEFAULT_TIMEOUT_MS;
    in->concurrency = concurrency;
    in->queue_cap = queue;
    in->capacity = entries;
    in->next_seq = 1;
    pthread_mutex_init(&in->mu, NULL);
    pthread_mutex_init(&in->cb_mu, NULL);
    pthread_cond_init(&in->cv, NULL);
    size_t nb = 16;
    while (nb < entries * 2)
        nb *= 2;
    in->mask = nb - 1;
    in->slots = calloc(entries, sizeof *in->slots);
    in->buckets = malloc(nb * sizeof *in->buckets);
    in->queue = calloc(queue, sizeof *in->queue);
    in->running = calloc(concurrency, sizeof *in->running);
    in->threads = calloc(concurrency, sizeof *in->threads);
    in->url = strdup(c->url);
    if (!in->slots || !in->buckets || !in->queue || !in->running || !in->threads || !in->url ||
        RAND_bytes((unsigned char *)&in->salt, sizeof in->salt) != 1 ||
        client_credentials(in, c) != 0)
        goto oom;
    for (size_t i = 0; i < nb; i++)
        in->buckets[i] = NIL;
    for (size_t i = 0; i < entries; i++)
        in->slots[i].next = i + 1 < entries ? (int32_t)(i + 1) : NIL;
    for (unsigned i = 0; i < concurrency; i++) {
        void **arg = malloc(2 * sizeof *arg);
        if (!arg) goto oom;
        arg[0] = in;
        arg[1] = (void *)(uintptr_t)i;
        if (pthread_create(&in->threads[i], NULL, introspection_main, arg) != 0) {
            free(arg);
            sg_introspector_free(in);
            sg_errf(err, errlen, "cannot start the introspection threads");
            return NULL;
        }
        in->nthreads++;
    }
    return in;
oom:
    sg_introspector_free(in);
    sg_errf(err, errlen, "out of memory");
    return NULL;
}

static void wipe_free(char *s)
{
    if (s) OPENSSL_cleanse(s, strlen(s));
    free(s);
}

void sg_introspector_free(sg_introspector *in)
{
    if (!in) return;
    pthread_mutex_lock(&in->mu);
    in->stop = 1;
    pthread_cond_broadcast(&in->cv);
    pthread_mutex_unlock(&in->mu);
    for (unsigned i = 0; i < in->nthreads; i++)
        pthread_join(in->threads[i], NULL);
    for (size_t k = 0; in->queue && k < in->qlen; k++) {
        job *j = in->queue[(in->qhead + k) % in->queue_cap];
        if (j->token) OPENSSL_cleanse(j->token, j->len);
        free(j->token);
        free(j);
    }
    if (in->slots)
        for (size_t i = 0; i < in->capacity; i++)
            if (in->slots[i].used) held_release(in->slots[i].held);
    free(in->slots);
    free(in->buckets);
    free(in->queue);
    free(in->running);
    free(in->threads);
    free(in->url);
    wipe_free(in->client_post_fields);
    wipe_free(in->authorization);
    pthread_mutex_destroy(&in->mu);
    pthread_mutex_destroy(&in->cb_mu);
    pthread_cond_destroy(&in->cv);
    free(in);
}

/* ---- the worker side ------------------------------------------------------------- */

/* The ticket of a call queued or running for key, or 0. Called with mu
 * held. */
static uint64_t call_in_flight(const sg_introspector *in, const unsigned char key[32])
{
    for (size_t k = 0; k < in->qlen; k++) {
        const job *j = in->queue[(in->qhead + k) % in->queue_cap];
        if (memcmp(j->key, key, 32) == 0) return j->seq;
    }
    for (unsigned i = 0; i < in->concurrency; i++)
        if (in->running[i] && memcmp(in->running[i]->key, key, 32) == 0) return in->running[i]->seq;
    return 0;
}

sg_token_err sg_introspect_token(sg_introspector *in, const char *token, size_t len, int64_t now_ms,
                                 int may_ask, uint64_t *ticket, sg_introspect_hold *hold,
                                 const sg_token **out)
{
    *out = NULL;
    *ticket = 0;
    sg_introspect_release(hold);
    unsigned char key[32];
    sg_sha256(token, len, key);
    uint64_t h = bucket_hash(in, key);
    pthread_mutex_lock(&in->mu);
    int32_t i = answer_find(in, key, h);
    if (i != NIL && now_ms >= in->slots[i].until) {
        answer_remove(in, i);
        i = NIL;
    }
    if (i != NIL) {
        answer *a = &in->slots[i];
        a->referenced = 1;
        sg_token_err e = SG_TOKEN_UNAVAILABLE;
        if (a->kind == ANSWER_ACTIVE) {
            atomic_fetch_add(&a->held->refs, 1);
            hold->entry = a->held;
            *out = a->held->token;
            atomic_fetch_add(&in->hits, 1);
            e = SG_TOKEN_OK;
        } else if (a->kind == ANSWER_REFUSED) {
            atomic_fetch_add(&in->negative_hits, 1);
            e = a->refusal;
        }
        pthread_mutex_unlock(&in->mu);
        return e;
    }
    atomic_fetch_add(&in->misses, 1);
    sg_token_err e = SG_TOKEN_UNAVAILABLE;
    uint64_t seq = may_ask ? call_in_flight(in, key) : 0;
    if (seq) {
        *ticket = seq;
        e = SG_TOKEN_PENDING;
    } else if (may_ask) {
        uint64_t next = in->next_seq;
        int ring_free = next < TICKET_RING ||
                        atomic_load_explicit(&in->done[next % TICKET_RING], memory_order_acquire) ==
                            next - TICKET_RING;
        job *j = NULL;
        if (in->qlen < in->queue_cap && ring_free && (j = calloc(1, sizeof *j)) &&
            (j->token = malloc(len ? len : 1))) {
            memcpy(j->key, key, 32);
            memcpy(j->token, token, len);
            j->len = len;
            j->seq = in->next_seq++;
            in->queue[(in->qhead + in->qlen) % in->queue_cap] = j;
            in->qlen++;
            pthread_cond_signal(&in->cv);
            *ticket = j->seq;
            e = SG_TOKEN_PENDING;
        } else {
            if (j) free(j);
            atomic_fetch_add(&in->queue_full, 1);
            warn_limited(in, "too many calls waiting");
        }
    }
    pthread_mutex_unlock(&in->mu);
    return e;
}

int sg_introspect_done(sg_introspector *in, uint64_t ticket)
{
    return atomic_load_explicit(&in->done[ticket % TICKET_RING], memory_order_acquire) >= ticket;
}

void sg_introspect_on_done(sg_introspector *in, void (*fn)(void *ud), void *ud)
{
    pthread_mutex_lock(&in->cb_mu);
    in->on_done = fn;
    in->on_done_ud = ud;
    pthread_mutex_unlock(&in->cb_mu);
}

void sg_authserver_metrics(sg_buf *out, void *ud)
{
    sg_authserver_stats s;
    sg_authserver_get_stats(ud, &s);
    sg_metrics_counter(out, "scopegate_introspection_requests_total",
                       "Calls made to the RFC 7662 introspection endpoint.", s.introspections);
    sg_metrics_counter(out, "scopegate_introspection_failures_total",
                       "Introspection calls without a usable answer (network, status, document).",
                       s.introspection_failures);
    sg_metrics_counter(out, "scopegate_introspection_cache_hits_total",
                       "Opaque tokens served an active answer from the introspection cache.",
                       s.cache_hits);
    sg_metrics_counter(out, "scopegate_introspection_cache_misses_total",
                       "Introspection cache lookups that found nothing usable.", s.cache_misses);
    sg_metrics_counter(out, "scopegate_introspection_negative_hits_total",
                       "Opaque tokens refused from the short negative cache.", s.negative_hits);
    sg_metrics_counter(out, "scopegate_introspection_queue_full_total",
                       "Requests refused because the introspection queue was full.", s.queue_full);
    sg_metrics_counter(out, "scopegate_discovery_fetches_total",
                       "Authorization server metadata documents fetched (RFC 8414 / OIDC).",
                       s.discovery_fetches);
}

void sg_authserver_get_stats(const sg_introspector *in, sg_authserver_stats *out)
{
    memset(out, 0, sizeof *out);
    out->discovery_fetches = atomic_load(&discovery_fetches);
    if (!in) return;
    out->introspections = atomic_load(&in->introspections);
    out->introspection_failures = atomic_load(&in->failures);
    out->cache_hits = atomic_load(&in->hits);
    out->cache_misses = atomic_load(&in->misses);
    out->negative_hits = atomic_load(&in->negative_hits);
    out->queue_full = atomic_load(&in->queue_full);
}
