/* catalog.c -- the upstream's tools and their annotations (see catalog.h).
 *
 * Why it is shaped this way: a tools/call must be decided in microseconds
 * and never wait for the network, while the catalogue comes from the
 * network. So a snapshot is a sorted array searched by bisection, swapped
 * whole, and fetching happens on a thread of its own with a blocking
 * libcurl handle (a few requests at start, after a reload or a
 * list_changed: nothing to gain from an event loop there). */
#include "gateway/catalog.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "base/json.h"
#include "base/metrics.h"
#include "base/sg.h"
#include "mcp/sse.h"

const cJSON *sg_catalog_no_hints(void)
{
    static const cJSON empty = {.type = cJSON_Object};
    return &empty;
}

/* ---- snapshots ------------------------------------------------------------------- */

typedef struct entry {
    char *name;
    cJSON *annotations; /* NULL: the tool has none */
} entry;

struct sg_catalog_snap {
    atomic_int refs;
    size_t n;
    entry entries[]; /* sorted by name, unique */
};

struct sg_catalog {
    sg_catalog_config cfg; /* strings owned */
    pthread_mutex_t snap_mu;
    sg_catalog_snap *current;
    atomic_ulong version;

    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t cv;
    int want_fetch, stop;
    pthread_t thread;
};

static void snap_free(sg_catalog_snap *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->entries[i].name);
        cJSON_Delete(s->entries[i].annotations);
    }
    free(s);
}

void sg_catalog_release(const sg_catalog_snap *s)
{
    sg_catalog_snap *m = (sg_catalog_snap *)s;
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) snap_free(m);
}

const sg_catalog_snap *sg_catalog_acquire(sg_catalog *c)
{
    pthread_mutex_lock(&c->snap_mu);
    sg_catalog_snap *s = c->current;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&c->snap_mu);
    return s;
}

unsigned long sg_catalog_version(sg_catalog *c)
{
    return atomic_load_explicit(&c->version, memory_order_acquire);
}

size_t sg_catalog_size(const sg_catalog_snap *s)
{
    return s->n;
}

const cJSON *sg_catalog_annotations(const sg_catalog_snap *s, const char *tool)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(tool, s->entries[mid].name);
        if (cmp == 0) return s->entries[mid].annotations;
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static void publish(sg_catalog *c, sg_catalog_snap *s)
{
    atomic_init(&s->refs, 1);
    pthread_mutex_lock(&c->snap_mu);
    sg_catalog_snap *old = c->current;
    c->current = s;
    atomic_fetch_add_explicit(&c->version, 1, memory_order_release);
    pthread_mutex_unlock(&c->snap_mu);
    sg_catalog_release(old);
}

/* An entry with its age, so that sorting keeps the newest of equal names
 * first. */
typedef struct keyed {
    entry e;
    size_t age; /* 0 = the newest */
} keyed;

static int by_name_then_age(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    int c = strcmp(x->e.name, y->e.name);
    return c ? c : (x->age > y->age) - (x->age < y->age);
}

/* Appends a copy of (name, annotations) to k. Returns 0 or -1 (no memory). */
static int push_copy(keyed *k, size_t *n, const char *name, const cJSON *ann)
{
    keyed *e = &k[*n];
    e->age = *n;
    e->e.name = strdup(name);
    e->e.annotations = ann ? cJSON_Duplicate(ann, 1) : NULL;
    if (!e->e.name || (ann && !e->e.annotations)) {
        free(e->e.name);
        cJSON_Delete(e->e.annotations);
        return -1;
    }
    (*n)++;
    return 0;
}

/* A snapshot of base's entries (NULL: none) updated with the tools of a
 * tools/list result (later duplicates in the result win too). Returns NULL
 * when out of memory or beyond SG_CATALOG_MAX_TOOLS. */
static sg_catalog_snap *merge(const sg_catalog_snap *base, const cJSON *tools)
{
    size_t nbase = base ? base->n : 0, ntools = (size_t)cJSON_GetArraySize(tools);
    if (nbase + ntools > SG_CATALOG_MAX_TOOLS) return NULL;
    keyed *k = malloc((nbase + ntools) * sizeof *k + 1);
    sg_catalog_snap *s = calloc(1, sizeof *s + (nbase + ntools) * sizeof(entry));
    size_t n = 0;
    if (!k || !s) goto fail;
    /* The result's tools newest first (a later repeat wins), then base's. */
    const cJSON *last = tools ? tools->child : NULL;
    while (last && last->next)
        last = last->next;
    for (const cJSON *t = last; t; t = (t == tools->child) ? NULL : t->prev) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
        if (!cJSON_IsString(name) || !name->valuestring[0]) continue;
        const cJSON *ann = cJSON_GetObjectItemCaseSensitive(t, "annotations");
        /* A listed tool without annotations is known: it has no hints. */
        if (push_copy(k, &n, name->valuestring,
                      cJSON_IsObject(ann) ? ann : sg_catalog_no_hints()) != 0)
            goto fail;
    }
    for (size_t i = 0; i < nbase; i++)
        if (push_copy(k, &n, base->entries[i].name, base->entries[i].annotations) != 0) goto fail;
    qsort(k, n, sizeof *k, by_name_then_age);
    for (size_t i = 0; i < n; i++) {
        if (s->n > 0 && strcmp(s->entries[s->n - 1].name, k[i].e.name) == 0) {
            free(k[i].e.name);
            cJSON_Delete(k[i].e.annotations);
        } else {
            s->entries[s->n++] = k[i].e;
        }
    }
    free(k);
    return s;
fail:
    for (size_t i = 0; i < n; i++) {
        free(k[i].e.name);
        cJSON_Delete(k[i].e.annotations);
    }
    free(k);
    free(s);
    return NULL;
}

/* 1 when the snapshot already holds every tool of the list with the same
 * annotations: the usual case, since clients list often and tools change
 * rarely, and it costs lookups instead of a copy of the catalogue. */
static int already_known(const sg_catalog_snap *s, const cJSON *tools)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, tools)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
        if (!cJSON_IsString(name) || !name->valuestring[0]) continue;
        const cJSON *ann = cJSON_GetObjectItemCaseSensitive(t, "annotations");
        const cJSON *known = sg_catalog_annotations(s, name->valuestring);
        if (!known || !cJSON_Compare(known, cJSON_IsObject(ann) ? ann : sg_catalog_no_hints(), 1))
            return 0;
    }
    return 1;
}

int sg_catalog_learn(sg_catalog *c, const cJSON *tools)
{
    if (!cJSON_IsArray(tools)) return -1;
    const sg_catalog_snap *base = sg_catalog_acquire(c);
    if (already_known(base, tools)) {
        sg_catalog_release(base);
        return 0;
    }
    sg_catalog_snap *s = merge(base, tools);
    sg_catalog_release(base);
    if (!s) return -1;
    publish(c, s);
    return 0;
}

/* ---- fetching ------------------------------------------------------------------- */

#define PROTOCOL_VERSION "2025-06-18"
#define MAX_ANSWER       (16u << 20)

typedef struct exchange {
    sg_buf body;
    char session[256];
    char content_type[128];
    int too_large;
} exchange;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    exchange *x = ud;
    if (x->body.len + size * n > MAX_ANSWER) {
        x->too_large = 1;
        return 0;
    }
    sg_buf_append(&x->body, p, size * n);
    return sg_buf_ok(&x->body) ? size * n : 0;
}

/* Copies a header's value (trimmed) when its name matches. */
static void header_value(const char *line, size_t n, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    if (n <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':') return;
    const char *v = line + nl + 1;
    const char *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    snprintf(out, outlen, "%.*s", (int)(end - v), v);
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    exchange *x = ud;
    header_value(p, size * n, "Mcp-Session-Id", x->session, sizeof x->session);
    header_value(p, size * n, "Content-Type", x->content_type, sizeof x->content_type);
    return size * n;
}

/* The JSON-RPC response with id `id` in an answer body (JSON, or an event
 * stream whose events carry messages). NULL when there is none. */
static cJSON *find_response(const exchange *x, int id)
{
    static const sg_json_limits lim = {.max_depth = 128, .max_top_elements = 0};
    sg_buf data = SG_BUF_INIT;
    int sse = strncasecmp(x->content_type, "text/event-stream", 17) == 0;
    size_t pos = 0;
    cJSON *found = NULL;
    while (!found) {
        const char *msg = x->body.data ? x->body.data : "";
        size_t len = x->body.len;
        if (sse) {
            if (sg_sse_next(x->body.data ? x->body.data : "", x->body.len, &pos, &data) != 1) break;
            msg = data.data;
            len = data.len;
        }
        sg_json_scan scan;
        sg_json_error jerr;
        if (sg_json_prescan(msg, len, &lim, &scan, &jerr) == 0) {
            sg_json_scan_free(&scan);
            cJSON *j = cJSON_ParseWithLength(msg, len);
            const cJSON *jid = cJSON_GetObjectItemCaseSensitive(j, "id");
            if (cJSON_IsNumber(jid) && jid->valuedouble == id)
                found = j;
            else
                cJSON_Delete(j);
        }
        if (!sse) break;
    }
    sg_buf_free(&data);
    return found;
}

/* Resets the handle to the options every exchange with the upstream
 * shares. */
static void exchange_defaults(CURL *c, const sg_catalog_config *cfg)
{
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, cfg->upstream_url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)cfg->timeout_ms);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "scopegate/" SG_VERSION);
    if (cfg->ca_file) curl_easy_setopt(c, CURLOPT_CAINFO, cfg->ca_file);
}

typedef struct session {
    CURL *curl;
    const sg_catalog_config *cfg;
    char id[256];
    char version[64];
} session;

/* POSTs one message; returns the HTTP status (0 on a transport error, with
 * a message in err) and leaves the answer in x. */
static long post(session *s, const char *json, exchange *x, char *err, size_t errlen)
{
    struct curl_slist *h = NULL;
    char line[400];
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json, text/event-stream");
    if (s->id[0]) {
        snprintf(line, sizeof line, "Mcp-Session-Id: %s", s->id);
        h = curl_slist_append(h, line);
    }
    if (s->version[0]) {
        snprintf(line, sizeof line, "MCP-Protocol-Version: %s", s->version);
        h = curl_slist_append(h, line);
    }
    CURL *c = s->curl;
    exchange_defaults(c, s->cfg);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status > 0) sg_metric_upstream_seen(0); /* any answer: reachable (readiness) */
    if (rc != CURLE_OK) {
        sg_errf(err, errlen, "%s", x->too_large ? "answer too large" : curl_easy_strerror(rc));
        return 0;
    }
    return status;
}

/* The probe reads no answer: its head is all it needs. */
static size_t discard_body(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    (void)size;
    (void)n;
    return 0; /* stops the transfer: an event stream would otherwise stay open */
}

long sg_catalog_ping(const sg_catalog_config *cfg)
{
    CURL *c = curl_easy_init();
    if (!c) return 0;
    exchange_defaults(c, cfg);
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json, text/event-stream");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS,
                     "{\"jsonrpc\":\"2.0\",\"id\":\"scopegate-readiness\",\"method\":\"ping\"}");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (status > 0) sg_metric_upstream_seen(0);
    return status;
}

/* One request of the session: sends method(params) with id, returns the
 * result object (owned by *answer, cJSON_Delete it) or NULL with err. */
static const cJSON *request(session *s, int id, const char *method, const char *params,
                            cJSON **answer, char *err, size_t errlen)
{
    char *json = NULL;
    sg_buf b = SG_BUF_INIT;
    sg_buf_printf(&b, "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"%s\",\"params\":%s}", id, method,
                  params);
    json = sg_buf_steal(&b);
    exchange x = {.body = SG_BUF_INIT};
    long status = json ? post(s, json, &x, err, errlen) : 0;
    free(json);
    *answer = NULL;
    const cJSON *result = NULL;
    if (status == 200) {
        *answer = find_response(&x, id);
        result = cJSON_GetObjectItemCaseSensitive(*answer, "result");
        if (!cJSON_IsObject(result)) {
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(*answer, "error");
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
            sg_errf(err, errlen, "%s: %s", method,
                    cJSON_IsString(m) ? m->valuestring : "no JSON-RPC result in the answer");
            result = NULL;
        }
    } else if (status != 0) {
        sg_errf(err, errlen, "%s: HTTP %ld", method, status);
    }
    if (id == 1 && x.session[0]) snprintf(s->id, sizeof s->id, "%s", x.session);
    sg_buf_free(&x.body);
    return result;
}

/* Opens the session: initialize (keeping the version the upstream chose)
 * and notifications/initialized. Returns 0, or -1 with err set. */
static int open_session(session *s, char *err, size_t errlen)
{
    cJSON *answer = NULL;
    const cJSON *r =
        request(s, 1, "initialize",
                "{\"protocolVersion\":\"" PROTOCOL_VERSION "\",\"capabilities\":{},"
                "\"clientInfo\":{\"name\":\"scopegate\",\"version\":\"" SG_VERSION "\"}}",
                &answer, err, errlen);
    if (r) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, "protocolVersion");
        snprintf(s->version, sizeof s->version, "%s",
                 cJSON_IsString(v) ? v->valuestring : PROTOCOL_VERSION);
    }
    cJSON_Delete(answer);
    if (!r) return -1;
    exchange x = {.body = SG_BUF_INIT};
    post(s, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}", &x, err, errlen);
    sg_buf_free(&x.body);
    return 0;
}

/* The params of tools/list: {} or {"cursor": ...}. */
static void list_params(sg_buf *params, const char *cursor)
{
    if (!cursor) {
        sg_buf_puts(params, "{}");
        return;
    }
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "cursor", cursor);
    char *text = cJSON_PrintUnformatted(p);
    sg_buf_puts(params, text ? text : "{}");
    free(text);
    cJSON_Delete(p);
}

/* Every page of tools/list into all (at most SG_CATALOG_MAX_TOOLS tools,
 * SG_CATALOG_MAX_PAGES pages). Returns 0, or -1 with err set. */
static int list_tools(session *s, cJSON *all, char *err, size_t errlen)
{
    char *cursor = NULL;
    for (int page = 0; page < SG_CATALOG_MAX_PAGES; page++) {
        sg_buf params = SG_BUF_INIT;
        list_params(&params, cursor);
        free(cursor);
        cursor = NULL;
        cJSON *answer = NULL;
        const cJSON *r = request(s, 2 + page, "tools/list", params.data ? params.data : "{}",
                                 &answer, err, errlen);
        sg_buf_free(&params);
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(r, "tools");
        if (r && !cJSON_IsArray(list)) sg_errf(err, errlen, "tools/list: no tools array");
        if (!r || !cJSON_IsArray(list)) {
            cJSON_Delete(answer);
            return -1;
        }
        const cJSON *t;
        cJSON_ArrayForEach(t, list)
        {
            if (cJSON_GetArraySize(all) >= SG_CATALOG_MAX_TOOLS) break;
            cJSON_AddItemToArray(all, cJSON_Duplicate(t, 1));
        }
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(r, "nextCursor");
        if (cJSON_IsString(next) && next->valuestring[0]) cursor = strdup(next->valuestring);
        cJSON_Delete(answer);
        if (!cursor) return 0;
    }
    free(cursor);
    sg_errf(err, errlen, "tools/list: more than %d pages", SG_CATALOG_MAX_PAGES);
    return -1;
}

/* Ends the session the fetch opened; its failure does not matter. */
static void close_session(session *s)
{
    if (!s->id[0]) return;
    char line[400];
    struct curl_slist *h = NULL;
    snprintf(line, sizeof line, "Mcp-Session-Id: %s", s->id);
    h = curl_slist_append(h, line);
    exchange_defaults(s->curl, s->cfg);
    curl_easy_setopt(s->curl, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(s->curl, CURLOPT_NOBODY, 1L);
    curl_easy_perform(s->curl);
    curl_slist_free_all(h);
}

int sg_catalog_fetch(const sg_catalog_config *cfg, cJSON **tools, char *err, size_t errlen)
{
    *tools = NULL;
    session s = {.curl = curl_easy_init(), .cfg = cfg};
    cJSON *all = cJSON_CreateArray();
    if (!s.curl || !all) {
        curl_easy_cleanup(s.curl);
        cJSON_Delete(all);
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    int rc = open_session(&s, err, errlen) == 0 ? list_tools(&s, all, err, errlen) : -1;
    close_session(&s);
    curl_easy_cleanup(s.curl);
    if (rc == 0)
        *tools = all;
    else
        cJSON_Delete(all);
    return rc;
}

/* ---- the fetch thread ----------------------------------------------------------- */

static void *catalog_main(void *arg)
{
    sg_catalog *c = arg;
    sg_thread_name("sg-catalog", -1);
    unsigned backoff_ms = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        if (!c->want_fetch) {
            if (backoff_ms == 0) {
                pthread_cond_wait(&c->cv, &c->mu);
            } else {
                struct timespec until;
                clock_gettime(CLOCK_REALTIME, &until);
                until.tv_sec += backoff_ms / 1000;
                until.tv_nsec += (long)(backoff_ms % 1000) * 1000000;
                if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
                if (pthread_cond_timedwait(&c->cv, &c->mu, &until) != 0) c->want_fetch = 1;
            }
            continue;
        }
        c->want_fetch = 0;
        pthread_mutex_unlock(&c->mu);
        cJSON *tools = NULL;
        char err[512] = "";
        if (sg_catalog_fetch(&c->cfg, &tools, err, sizeof err) == 0) {
            sg_catalog_snap *s = merge(NULL, tools);
            if (s) {
                sg_log(SG_LOG_INFO, "tool catalogue: %zu tools from the upstream's tools/list",
                       s->n);
                publish(c, s);
                backoff_ms = 0;
            }
            cJSON_Delete(tools);
        } else {
            backoff_ms = backoff_ms ? (backoff_ms * 2 > 60000 ? 60000 : backoff_ms * 2) : 1000;
            sg_log(SG_LOG_WARN,
                   "tool catalogue: fetching the upstream's tools/list failed (%s); retrying in "
                   "%u s (unclassified tools stay denied)",
                   err, backoff_ms / 1000);
        }
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

sg_catalog *sg_catalog_start(const sg_catalog_config *cfg, char *err, size_t errlen)
{
    sg_catalog *c = calloc(1, sizeof *c);
    sg_catalog_snap *empty = calloc(1, sizeof *empty);
    if (!c || !empty || !(c->cfg.upstream_url = strdup(cfg->upstream_url)) ||
        (cfg->ca_file && !(c->cfg.ca_file = strdup(cfg->ca_file)))) {
        if (c) free((char *)c->cfg.upstream_url);
        free(c);
        free(empty);
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    c->cfg.timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 10000;
    atomic_init(&empty->refs, 1);
    c->current = empty;
    pthread_mutex_init(&c->snap_mu, NULL);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->want_fetch = 1;
    if (pthread_create(&c->thread, NULL, catalog_main, c) != 0) {
        c->stop = 1;
        sg_catalog_stop(c);
        sg_errf(err, errlen, "cannot start the tool catalogue thread");
        return NULL;
    }
    return c;
}

void sg_catalog_refresh(sg_catalog *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->want_fetch = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void sg_catalog_stop(sg_catalog *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    int running = !c->stop;
    c->stop = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (running) pthread_join(c->thread, NULL);
    sg_catalog_release(c->current);
    pthread_mutex_destroy(&c->snap_mu);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free((char *)c->cfg.upstream_url);
    free((char *)c->cfg.ca_file);
    free(c);
}
