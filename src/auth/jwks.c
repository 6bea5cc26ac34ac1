/* jwks.c -- verification keys: PEM files, HMAC secrets, JWKS documents and a
 * JWKS URL, parsed once into EVP_PKEYs bound to their algorithms.
 *
 * A key is parsed when it arrives (jwk.c) and published here in an
 * immutable refcounted snapshot; see jwks.h for the sharing rules.
 *
 * Network fetches happen on the refresher thread once it runs: TTL
 * refreshes, and unknown-kid refetches that request threads ask for with a
 * ticket (sg_keys_want_kid) and wait for without blocking (their HTTP
 * layer suspends the request and is woken by the listener). */
#include "auth/jwks_impl.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/pem.h>

#include "auth/authserver.h"
#include "base/metrics.h"
#include "base/sg.h"

#define FETCH_TIMEOUT_MS 5000L
#define MAX_PEM_BYTES    (64 * 1024)

#define HMAC_ALGS (SG_ALG_BIT(SG_ALG_HS256) | SG_ALG_BIT(SG_ALG_HS384) | SG_ALG_BIT(SG_ALG_HS512))

struct sg_keys {
    pthread_mutex_t snap_mu; /* guards `current` only; held for a pointer swap or a refcount */
    sg_keyset *current;
    unsigned long generation;

    pthread_mutex_t fetch_mu; /* serializes fetches and guards everything below */
    sg_jwk *static_keys;      /* PEM, secrets, JWKS files: fixed after configuration */
    int nstatic;
    sg_jwk *url_keys; /* the last good fetch of url */
    int nurl;
    char *url;
    uint64_t ttl_ns, refetch_ns;
    uint64_t next_refresh_ns; /* read without the lock on the hot path (atomically) */
    unsigned long fetches, fetch_failures;

    /* The background refresher (sg_keys_start_refresher): when it runs,
     * request threads never fetch, neither for a TTL refresh nor for an
     * unknown kid. wait_mu is never held across a fetch; it guards what
     * follows and is what the refresher sleeps on. Lock order: fetch_mu,
     * then wait_mu. */
    pthread_mutex_t wait_mu;
    pthread_t refresher;
    int refresher_started;
    int refresher_stop;
    pthread_cond_t refresher_cv;
    uint64_t last_kid_fetch_ns;
    int kid_fetched;          /* 0 until the first unknown-kid refetch */
    uint64_t kid_asked;       /* the ticket of the latest unknown-kid refetch asked for */
    int kid_queued;           /* kid_asked is waiting for the refresher */
    int kid_running;          /* kid_asked is being fetched */
    uint64_t kid_done;        /* tickets up to this one are finished (read atomically) */
    void (*on_kid)(void *ud); /* called after each unknown-kid refetch */
    void *on_kid_ud;
};

/* Deep copy for a snapshot: the EVP_PKEY is shared by reference count.
 * Returns 0 or -1 (out of memory; dst left clear). */
static int jwk_copy(sg_jwk *dst, const sg_jwk *src)
{
    memset(dst, 0, sizeof *dst);
    dst->algs = src->algs;
    if (src->kid && !(dst->kid = strdup(src->kid))) return -1;
    if (src->secret) {
        dst->secret = malloc(src->secret_len);
        if (!dst->secret) goto fail;
        memcpy(dst->secret, src->secret, src->secret_len);
        dst->secret_len = src->secret_len;
    }
    if (src->pkey) {
        if (!EVP_PKEY_up_ref(src->pkey)) goto fail;
        dst->pkey = src->pkey;
    }
    return 0;
fail:
    jwk_clear(dst);
    return -1;
}

static void keyset_free(sg_keyset *s)
{
    for (int i = 0; i < s->nkeys; i++)
        jwk_clear(&s->keys[i]);
    free(s);
}

void sg_keyset_release(const sg_keyset *s)
{
    if (!s) return;
    sg_keyset *m = (sg_keyset *)s;
    if (__atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) == 0) keyset_free(m);
}

/* Builds a snapshot of static + URL keys and makes it current. Called with
 * fetch_mu held (or during single-threaded configuration). Returns 0 or -1
 * (out of memory: the old snapshot stays). */
static int publish(sg_keys *k)
{
    int n = k->nstatic + k->nurl;
    sg_keyset *s = calloc(1, sizeof *s + (size_t)n * sizeof(sg_jwk));
    if (!s) return -1;
    s->refs = 1;
    for (int i = 0; i < n; i++) {
        const sg_jwk *src = i < k->nstatic ? &k->static_keys[i] : &k->url_keys[i - k->nstatic];
        if (jwk_copy(&s->keys[i], src) != 0) {
            keyset_free(s);
            return -1;
        }
        s->nkeys = i + 1;
    }
    pthread_mutex_lock(&k->snap_mu);
    s->generation = ++k->generation;
    sg_keyset *old = k->current;
    k->current = s;
    pthread_mutex_unlock(&k->snap_mu);
    sg_keyset_release(old);
    return 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

sg_keys *sg_keys_new(void)
{
    pthread_once(&curl_once, curl_init_once);
    sg_keys *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    pthread_mutex_init(&k->snap_mu, NULL);
    pthread_mutex_init(&k->fetch_mu, NULL);
    pthread_mutex_init(&k->wait_mu, NULL);
    if (publish(k) != 0) {
        sg_keys_free(k);
        return NULL;
    }
    return k;
}

void sg_keys_free(sg_keys *k)
{
    if (!k) return;
    if (k->refresher_started) {
        pthread_mutex_lock(&k->wait_mu);
        k->refresher_stop = 1;
        pthread_cond_signal(&k->refresher_cv);
        pthread_mutex_unlock(&k->wait_mu);
        pthread_join(k->refresher, NULL);
        pthread_cond_destroy(&k->refresher_cv);
    }
    sg_keyset_release(k->current);
    jwk_array_free(k->static_keys, k->nstatic);
    jwk_array_free(k->url_keys, k->nurl);
    free(k->url);
    pthread_mutex_destroy(&k->snap_mu);
    pthread_mutex_destroy(&k->fetch_mu);
    pthread_mutex_destroy(&k->wait_mu);
    free(k);
}

int sg_keys_add_pem(sg_keys *k, const char *pem, size_t len, const char *alg, const char *kid,
                    char *err, size_t errlen)
{
    int a = alg ? sg_jws_alg_from_name(alg, strlen(alg)) : -1;
    if (a <= SG_ALG_NONE) {
        sg_errf(err, errlen, "unknown or missing alg for PEM key");
        return -1;
    }
    if (SG_ALG_BIT(a) & HMAC_ALGS) {
        sg_errf(err, errlen, "%s needs a configured secret, not a PEM key", sg_jws_alg_name(a));
        return -1;
    }
    if (!jwk_kid_ok(kid) || len > MAX_PEM_BYTES) {
        sg_errf(err, errlen, "kid or PEM too long");
        return -1;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *p = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!p) {
        sg_errf(err, errlen, "not a PEM public key (BEGIN PUBLIC KEY)");
        return -1;
    }
    if (!(jwk_algs_for_pkey(p) & SG_ALG_BIT(a))) {
        EVP_PKEY_free(p);
        sg_errf(err, errlen, "the key does not fit alg %s (or RSA under %d bits)",
                sg_jws_alg_name(a), MIN_RSA_BITS);
        return -1;
    }
    sg_jwk j = {.algs = SG_ALG_BIT(a), .pkey = p};
    if (kid && !(j.kid = strdup(kid))) {
        jwk_clear(&j);
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    if (jwk_array_push(&k->static_keys, &k->nstatic, &j) != 0 || publish(k) != 0) {
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int sg_keys_add_pem_file(sg_keys *k, const char *path, const char *alg, const char *kid, char *err,
                         size_t errlen)
{
    size_t len;
    char *pem = sg_read_file(path, MAX_PEM_BYTES, &len);
    if (!pem) {
        sg_errf(err, errlen, "cannot read key file %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = sg_keys_add_pem(k, pem, len, alg, kid, err, errlen);
    free(pem);
    return rc;
}

int sg_keys_add_secret(sg_keys *k, const void *secret, size_t len, const char *alg, const char *kid,
                       char *err, size_t errlen)
{
    int a = alg ? sg_jws_alg_from_name(alg, strlen(alg)) : -1;
    if (a < 0 || !(SG_ALG_BIT(a) & HMAC_ALGS)) {
        sg_errf(err, errlen, "a secret needs alg HS256, HS384 or HS512");
        return -1;
    }
    size_t min = a == SG_ALG_HS256 ? 32 : a == SG_ALG_HS384 ? 48 : 64;
    if (len < min || len > 4096) {
        sg_errf(err, errlen, "%s secrets must be %zu to 4096 bytes (RFC 7518 3.2)",
                sg_jws_alg_name(a), min);
        return -1;
    }
    if (!jwk_kid_ok(kid)) {
        sg_errf(err, errlen, "kid too long");
        return -1;
    }
    sg_jwk j = {.algs = SG_ALG_BIT(a), .secret_len = len};
    j.secret = malloc(len);
    if (!j.secret || (kid && !(j.kid = strdup(kid)))) {
        jwk_clear(&j);
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(j.secret, secret, len);
    if (jwk_array_push(&k->static_keys, &k->nstatic, &j) != 0 || publish(k) != 0) {
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int sg_keys_add_jwks(sg_keys *k, const char *json, size_t len, char *err, size_t errlen)
{
    sg_jwk *arr;
    int n = jwks_parse_doc(json, len, &arr, err, errlen);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++) {
        if (jwk_array_push(&k->static_keys, &k->nstatic, &arr[i]) != 0) {
            jwk_array_free(arr, n);
            sg_errf(err, errlen, "out of memory");
            return -1;
        }
    }
    free(arr);
    if (publish(k) != 0) {
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int sg_keys_add_jwks_file(sg_keys *k, const char *path, char *err, size_t errlen)
{
    size_t len;
    char *json = sg_read_file(path, SG_JWKS_MAX_BYTES, &len);
    if (!json) {
        sg_errf(err, errlen, "cannot read JWKS file %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = sg_keys_add_jwks(k, json, len, err, errlen);
    free(json);
    return rc;
}

/* ---- fetching ---------------------------------------------------------------- */

/* GETs url into a new key array. Returns the key count or -1 with err. */
static int fetch_jwks(const char *url, sg_jwk **out, char *err, size_t errlen)
{
    sg_buf body = SG_BUF_INIT;
    long status = 0;
    char why[256];
    sg_as_request r = {url, NULL, NULL, FETCH_TIMEOUT_MS, SG_JWKS_MAX_BYTES};
    int n = -1;
    if (sg_as_fetch(&r, &body, &status, why, sizeof why) != 0)
        sg_errf(err, errlen, "fetching JWKS failed: %s", why);
    else if (status != 200)
        sg_errf(err, errlen, "fetching JWKS failed: HTTP status %ld", status);
    else
        n = jwks_parse_doc(body.data ? body.data : "", body.len, out, err, errlen);
    sg_buf_free(&body);
    return n;
}

/* Fetches and publishes; called with fetch_mu held. Schedules the next TTL
 * refresh (sooner, after the refetch interval, when this one failed).
 * Returns 0 or -1 with err. */
static int fetch_locked(sg_keys *k, char *err, size_t errlen)
{
    sg_jwk *arr;
    int n = fetch_jwks(k->url, &arr, err, errlen);
    uint64_t now = sg_now_mono_ns();
    if (n < 0) {
        k->fetch_failures++;
        sg_metric_inc(SG_M_JWKS_FETCH_FAILURES);
        __atomic_store_n(&k->next_refresh_ns, now + k->refetch_ns, __ATOMIC_RELEASE);
        return -1;
    }
    sg_jwk *old = k->url_keys;
    int nold = k->nurl;
    k->url_keys = arr;
    k->nurl = n;
    if (publish(k) != 0) {
        k->url_keys = old;
        k->nurl = nold;
        jwk_array_free(arr, n);
        k->fetch_failures++;
        sg_metric_inc(SG_M_JWKS_FETCH_FAILURES);
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    jwk_array_free(old, nold);
    k->fetches++;
    sg_metric_inc(SG_M_JWKS_FETCHES);
    __atomic_store_n(&k->next_refresh_ns, now + k->ttl_ns, __ATOMIC_RELEASE);
    return 0;
}

int sg_keys_set_jwks_url(sg_keys *k, const char *url, uint64_t ttl_ms, uint64_t refetch_ms,
                         char *err, size_t errlen)
{
    if (k->url) {
        sg_errf(err, errlen, "only one JWKS URL is supported");
        return -1;
    }
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
        sg_errf(err, errlen, "the JWKS URL must be http:// or https://");
        return -1;
    }
    if (!(k->url = strdup(url))) {
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    k->ttl_ns = (ttl_ms ? ttl_ms : SG_JWKS_DEFAULT_TTL_S * 1000ull) * 1000000ull;
    k->refetch_ns = (refetch_ms ? refetch_ms : SG_JWKS_DEFAULT_REFETCH_S * 1000ull) * 1000000ull;
    pthread_mutex_lock(&k->fetch_mu);
    int rc = fetch_locked(k, err, errlen);
    pthread_mutex_unlock(&k->fetch_mu);
    if (rc != 0) {
        free(k->url);
        k->url = NULL;
    }
    return rc;
}

static const sg_keyset *acquire_current(sg_keys *k)
{
    pthread_mutex_lock(&k->snap_mu);
    sg_keyset *s = k->current;
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&k->snap_mu);
    return s;
}

/* The refresher thread: waits for the next refresh time, an unknown-kid
 * refetch someone asked for, or the stop signal, and fetches, so no request
 * thread ever waits on the network for keys. */
static void *refresher_main(void *arg)
{
    sg_keys *k = arg;
    sg_thread_name("sg-jwks", -1);
    pthread_mutex_lock(&k->wait_mu);
    while (!k->refresher_stop) {
        if (k->kid_queued) {
            uint64_t ticket = k->kid_asked;
            k->kid_queued = 0;
            k->kid_running = 1;
            pthread_mutex_unlock(&k->wait_mu);
            char err[256];
            pthread_mutex_lock(&k->fetch_mu);
            int rc = fetch_locked(k, err, sizeof err);
            pthread_mutex_unlock(&k->fetch_mu);
            if (rc != 0) sg_log(SG_LOG_WARN, "jwks: refetch for an unknown kid failed: %s", err);
            pthread_mutex_lock(&k->wait_mu);
            k->kid_running = 0;
            __atomic_store_n(&k->kid_done, ticket, __ATOMIC_RELEASE);
            /* Under wait_mu, so sg_keys_on_kid_fetched(k, NULL, NULL)
             * returns only once no call is under way. */
            if (k->on_kid) k->on_kid(k->on_kid_ud);
            continue;
        }
        uint64_t due = __atomic_load_n(&k->next_refresh_ns, __ATOMIC_ACQUIRE);
        uint64_t now = sg_now_mono_ns();
        if (now < due) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t wait = due - now;
            ts.tv_sec += (time_t)(wait / 1000000000u);
            ts.tv_nsec += (long)(wait % 1000000000u);
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&k->refresher_cv, &k->wait_mu, &ts);
            continue;
        }
        pthread_mutex_unlock(&k->wait_mu);
        char err[256];
        pthread_mutex_lock(&k->fetch_mu);
        int rc = 0;
        if (sg_now_mono_ns() >= __atomic_load_n(&k->next_refresh_ns, __ATOMIC_ACQUIRE))
            rc = fetch_locked(k, err, sizeof err);
        pthread_mutex_unlock(&k->fetch_mu);
        if (rc != 0) sg_log(SG_LOG_WARN, "jwks: refresh failed, keeping the old keys: %s", err);
        pthread_mutex_lock(&k->wait_mu);
    }
    pthread_mutex_unlock(&k->wait_mu);
    return NULL;
}

int sg_keys_start_refresher(sg_keys *k, char *err, size_t errlen)
{
    if (!k->url || k->refresher_started) return 0;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&k->refresher_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0 || pthread_create(&k->refresher, NULL, refresher_main, k) != 0) {
        if (rc == 0) pthread_cond_destroy(&k->refresher_cv);
        sg_errf(err, errlen, "cannot start the JWKS refresher thread");
        return -1;
    }
    k->refresher_started = 1;
    return 0;
}

const sg_keyset *sg_keys_acquire(sg_keys *k)
{
    if (k->url && !k->refresher_started) {
        uint64_t now = sg_now_mono_ns();
        if (now >= __atomic_load_n(&k->next_refresh_ns, __ATOMIC_ACQUIRE) &&
            pthread_mutex_trylock(&k->fetch_mu) == 0) {
            if (now >= __atomic_load_n(&k->next_refresh_ns, __ATOMIC_ACQUIRE)) {
                char err[256];
                if (fetch_locked(k, err, sizeof err) != 0)
                    sg_log(SG_LOG_WARN, "jwks: refresh failed, keeping the old keys: %s", err);
            }
            pthread_mutex_unlock(&k->fetch_mu);
        }
    }
    return acquire_current(k);
}

const sg_keyset *sg_keys_refetch_for_kid(sg_keys *k, const sg_keyset *seen)
{
    pthread_mutex_lock(&k->fetch_mu);
    const sg_keyset *cur = acquire_current(k);
    if (cur->generation != seen->generation) {
        pthread_mutex_unlock(&k->fetch_mu);
        return cur; /* someone published meanwhile: try that first */
    }
    sg_keyset_release(cur);
    uint64_t now = sg_now_mono_ns();
    pthread_mutex_lock(&k->wait_mu);
    int allowed = k->url && !(k->kid_fetched && now - k->last_kid_fetch_ns < k->refetch_ns);
    if (allowed) {
        k->kid_fetched = 1;
        k->last_kid_fetch_ns = now;
    }
    pthread_mutex_unlock(&k->wait_mu);
    if (!allowed) {
        pthread_mutex_unlock(&k->fetch_mu);
        return NULL;
    }
    char err[256];
    int rc = fetch_locked(k, err, sizeof err);
    pthread_mutex_unlock(&k->fetch_mu);
    if (rc != 0) {
        sg_log(SG_LOG_WARN, "jwks: refetch for an unknown kid failed: %s", err);
        return NULL;
    }
    return acquire_current(k);
}

int sg_keys_want_kid(sg_keys *k, const sg_keyset *seen, const sg_keyset **newer, uint64_t *ticket)
{
    *newer = NULL;
    *ticket = 0;
    if (!k->url) return SG_KEYS_KID_UNKNOWN;
    if (!k->refresher_started) { /* no thread to hand the fetch to: fetch here */
        *newer = sg_keys_refetch_for_kid(k, seen);
        return *newer ? SG_KEYS_KID_NEWER : SG_KEYS_KID_UNKNOWN;
    }
    pthread_mutex_lock(&k->wait_mu);
    const sg_keyset *cur = acquire_current(k);
    if (cur->generation != seen->generation) {
        pthread_mutex_unlock(&k->wait_mu);
        *newer = cur; /* published since the caller looked: try that first */
        return SG_KEYS_KID_NEWER;
    }
    sg_keyset_release(cur);
    int rc = SG_KEYS_KID_WAIT;
    uint64_t now = sg_now_mono_ns();
    if (k->kid_queued || k->kid_running) {
        *ticket = k->kid_asked; /* one fetch at a time: wait for that one */
    } else if (k->kid_fetched && now - k->last_kid_fetch_ns < k->refetch_ns) {
        rc = SG_KEYS_KID_UNKNOWN;
    } else {
        k->kid_fetched = 1;
        k->last_kid_fetch_ns = now;
        *ticket = ++k->kid_asked;
        k->kid_queued = 1;
        pthread_cond_signal(&k->refresher_cv);
    }
    pthread_mutex_unlock(&k->wait_mu);
    return rc;
}

int sg_keys_kid_done(sg_keys *k, uint64_t ticket)
{
    return __atomic_load_n(&k->kid_done, __ATOMIC_ACQUIRE) >= ticket;
}

void sg_keys_on_kid_fetched(sg_keys *k, void (*fn)(void *ud), void *ud)
{
    pthread_mutex_lock(&k->wait_mu);
    k->on_kid = fn;
    k->on_kid_ud = ud;
    pthread_mutex_unlock(&k->wait_mu);
}

int sg_keys_replace_static(sg_keys *k, sg_keys *from)
{
    pthread_mutex_lock(&k->fetch_mu);
    sg_jwk *old = k->static_keys;
    int nold = k->nstatic;
    k->static_keys = from->static_keys;
    k->nstatic = from->nstatic;
    int rc = publish(k);
    if (rc == 0) {
        from->static_keys = old;
        from->nstatic = nold;
    } else { /* keep serving the old keys */
        k->static_keys = old;
        k->nstatic = nold;
    }
    pthread_mutex_unlock(&k->fetch_mu);
    return rc;
}

int sg_keys_refresh(sg_keys *k, char *err, size_t errlen)
{
    if (!k->url) {
        sg_errf(err, errlen, "no JWKS URL configured");
        return -1;
    }
    pthread_mutex_lock(&k->fetch_mu);
    int rc = fetch_locked(k, err, errlen);
    pthread_mutex_unlock(&k->fetch_mu);
    return rc;
}

int sg_keys_count(sg_keys *k)
{
    const sg_keyset *s = acquire_current(k);
    int n = s->nkeys;
    sg_keyset_release(s);
    return n;
}

void sg_keys_get_stats(sg_keys *k, sg_keys_stats *out)
{
    pthread_mutex_lock(&k->fetch_mu);
    out->fetches = k->fetches;
    out->fetch_failures = k->fetch_failures;
    pthread_mutex_unlock(&k->fetch_mu);
    const sg_keyset *s = acquire_current(k);
    out->generation = s->generation;
    out->nkeys = s->nkeys;
    sg_keyset_release(s);
}
