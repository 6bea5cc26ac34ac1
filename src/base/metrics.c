/* metrics.c -- per-thread metric shards, summed at scrape time.
 *
 * Why shards: the hot path must not slow down (issue 8), so no counter is
 * shared between threads. Each thread that counts gets one shard (allocated
 * on its first count, cache-line aligned, linked into a global list under a
 * mutex taken only then and at scrape time). The owner updates its slots
 * with a relaxed load and a relaxed store (no lock prefix: nobody else
 * writes them); a scrape reads them with relaxed loads, so it sees each
 * value whole. The decision table is the one structure with keys: an entry
 * is filled by its owner and then published with a release store of its
 * state, which the scraper reads with acquire; its key never changes after. */
#include "base/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DECISION_SLOTS 256 /* distinct (method, tool, outcome) series per thread */
#define MAX_COLLECTORS 16

typedef struct decision_entry {
    atomic_int state; /* 0 free, 1 published (key fixed) */
    const char *method;
    int outcome;
    char tool[SG_METRICS_TOOL_MAX + 1];
    _Atomic uint64_t count;
} decision_entry;

typedef struct shard {
    _Atomic uint64_t counters[SG_M_COUNT];
    _Atomic int64_t gauges[SG_G_COUNT];
    struct {
        _Atomic uint64_t buckets[SG_METRICS_BUCKETS];
        _Atomic uint64_t count;
        _Atomic uint64_t sum_ns;
    } hist[SG_H_COUNT];
    _Atomic uint64_t upstream_seen_ns; /* monotonic; 0: never */
    unsigned ndecisions;               /* owner only */
    decision_entry *last;              /* owner only: the entry counted last */
    decision_entry decisions[DECISION_SLOTS];
    struct shard *next;
} shard;

static atomic_int enabled; /* set once, before or while threads count */
static pthread_mutex_t shards_mu = PTHREAD_MUTEX_INITIALIZER;
static shard *shards;
static _Thread_local shard *tl_shard;
static _Thread_local int tl_failed;

static struct {
    void (*fn)(sg_buf *out, void *ud);
    void *ud;
} collectors[MAX_COLLECTORS];
static int ncollectors;

/* 0.5 ms .. 10 s: gateway decisions sit in the first buckets, upstream
 * answers and slow clients in the later ones. */
static const uint64_t bucket_ns[SG_METRICS_BUCKETS] = {
    500000ull,     1000000ull,    2500000ull,    5000000ull,    10000000ull,
    25000000ull,   50000000ull,   100000000ull,  250000000ull,  500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull};

const uint64_t *sg_metrics_bucket_bounds(void)
{
    return bucket_ns;
}

void sg_metrics_enable(void)
{
    atomic_store_explicit(&enabled, 1, memory_order_relaxed);
}

int sg_metrics_enabled(void)
{
    return atomic_load_explicit(&enabled, memory_order_relaxed);
}

static shard *my_shard(void)
{
    shard *s = tl_shard;
    if (s || !sg_metrics_enabled() || tl_failed) return s;
    s = aligned_alloc(64, (sizeof *s + 63) / 64 * 64);
    if (!s) {
        tl_failed = 1;
        return NULL;
    }
    memset(s, 0, sizeof *s);
    pthread_mutex_lock(&shards_mu);
    s->next = shards;
    shards = s;
    pthread_mutex_unlock(&shards_mu);
    return tl_shard = s;
}

/* The owner is the only writer: a load and a store, no read-modify-write. */
static inline void bump_u64(_Atomic uint64_t *v, uint64_t n)
{
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void sg_metric_add(int id, uint64_t n)
{
    if (!sg_metrics_enabled() || id < 0 || id >= SG_M_COUNT) return;
    shard *s = my_shard();
    if (s) bump_u64(&s->counters[id], n);
}

void sg_metric_gauge_add(int id, int64_t delta)
{
    if (!sg_metrics_enabled() || id < 0 || id >= SG_G_COUNT) return;
    shard *s = my_shard();
    if (!s) return;
    atomic_store_explicit(&s->gauges[id],
                          atomic_load_explicit(&s->gauges[id], memory_order_relaxed) + delta,
                          memory_order_relaxed);
}

void sg_metric_observe(int id, uint64_t ns)
{
    if (!sg_metrics_enabled() || id < 0 || id >= SG_H_COUNT) return;
    shard *s = my_shard();
    if (!s) return;
    int b = 0;
    while (b < SG_METRICS_BUCKETS && ns > bucket_ns[b])
        b++;
    if (b < SG_METRICS_BUCKETS) bump_u64(&s->hist[id].buckets[b], 1);
    bump_u64(&s->hist[id].sum_ns, ns);
    bump_u64(&s->hist[id].count, 1);
}

const char *sg_metrics_outcome_name(int outcome)
{
    static const char *const names[] = {
        [SG_METRICS_ALLOWED] = "allowed",
        [SG_METRICS_UNAUTHORIZED] = "unauthorized",
        [SG_METRICS_FORBIDDEN] = "forbidden",
        [SG_METRICS_DENIED] = "denied",
    };
    _Static_assert(SG_ARRAY_LEN(names) == SG_METRICS_OUTCOME_COUNT, "every outcome");
    return outcome >= 0 && outcome < SG_METRICS_OUTCOME_COUNT ? names[outcome] : "other";
}

/* Every method the MCP specification defines (2024-11-05 to 2025-11-25),
 * requests and notifications, both directions; with their lengths, so a
 * lookup compares only the names as long as the method. */
#define M_(name)                                                                                   \
    {                                                                                              \
        name, sizeof name - 1                                                                      \
    }
static const struct {
    const char *name;
    size_t len;
} mcp_methods[] = {
    M_("initialize"),
    M_("ping"),
    M_("tools/list"),
    M_("tools/call"),
    M_("prompts/list"),
    M_("prompts/get"),
    M_("resources/list"),
    M_("resources/templates/list"),
    M_("resources/read"),
    M_("resources/subscribe"),
    M_("resources/unsubscribe"),
    M_("logging/setLevel"),
    M_("completion/complete"),
    M_("sampling/createMessage"),
    M_("elicitation/create"),
    M_("roots/list"),
    M_("tasks/get"),
    M_("tasks/list"),
    M_("tasks/result"),
    M_("tasks/cancel"),
    M_("notifications/initialized"),
    M_("notifications/cancelled"),
    M_("notifications/progress"),
    M_("notifications/message"),
    M_("notifications/roots/list_changed"),
    M_("notifications/resources/updated"),
    M_("notifications/resources/list_changed"),
    M_("notifications/tools/list_changed"),
    M_("notifications/prompts/list_changed"),
    M_("notifications/elicitation/complete"),
    M_("notifications/tasks/status"),
};
#undef M_

const char *sg_metrics_method_label(const char *method)
{
    static _Thread_local size_t last; /* a worker mostly sees the same method again */
    if (!method) return "response";
    if (strcmp(method, mcp_methods[last].name) == 0) return mcp_methods[last].name;
    size_t n = strlen(method);
    for (size_t i = 0; i < SG_ARRAY_LEN(mcp_methods); i++)
        if (mcp_methods[i].len == n && memcmp(method, mcp_methods[i].name, n) == 0) {
            last = i;
            return mcp_methods[i].name;
        }
    return "other";
}

static uint32_t decision_hash(const char *method, const char *tool, int outcome)
{
    uint32_t h = sg_fnv1a(tool, strlen(tool));
    h ^= (uint32_t)(uintptr_t)method * 2654435761u;
    return h ^ (uint32_t)outcome * 40503u;
}

/* The owner's entry for a key, created when there is room; NULL when the
 * table is full (or mostly: the last slots are kept for "other"). */
static decision_entry *decision_slot(shard *s, const char *method, const char *tool, int outcome,
                                     int may_create)
{
    uint32_t h = decision_hash(method, tool, outcome);
    for (unsigned i = 0; i < DECISION_SLOTS; i++) {
        decision_entry *e = &s->decisions[(h + i) % DECISION_SLOTS];
        if (atomic_load_explicit(&e->state, memory_order_relaxed) == 0) {
            if (!may_create) return NULL;
            e->method = method;
            e->outcome = outcome;
            memcpy(e->tool, tool, strlen(tool) + 1);
            atomic_store_explicit(&e->state, 1, memory_order_release);
            s->ndecisions++;
            return e;
        }
        if (e->method == method && e->outcome == outcome && strcmp(e->tool, tool) == 0) return e;
    }
    return NULL;
}

void sg_metric_decision(const char *method, const char *tool, int outcome)
{
    if (!sg_metrics_enabled()) return;
    shard *s = my_shard();
    if (!s) return;
    /* A worker mostly sees the same call again: its entry is kept at hand
     * (a tool that matches it is no longer than SG_METRICS_TOOL_MAX). */
    decision_entry *last = s->last;
    if (last && tool && last->method == method && last->outcome == outcome &&
        strcmp(last->tool, tool) == 0) {
        bump_u64(&last->count, 1);
        return;
    }
    if (!tool || strlen(tool) > SG_METRICS_TOOL_MAX) tool = "other";
    /* Room is kept for every method's "other" series, so a full table
     * still counts everything. */
    int room = s->ndecisions + 3 * SG_ARRAY_LEN(mcp_methods) + 8 < DECISION_SLOTS;
    decision_entry *e = decision_slot(s, method, tool, outcome, room);
    if (!e) e = decision_slot(s, method, *tool ? "other" : "", outcome, 1);
    if (e) bump_u64(&e->count, 1);
    s->last = e;
}

void sg_metric_upstream_seen(uint64_t now_ns)
{
    if (!sg_metrics_enabled()) return;
    shard *s = my_shard();
    if (s)
        atomic_store_explicit(&s->upstream_seen_ns, now_ns ? now_ns : sg_now_mono_ns(),
                              memory_order_relaxed);
}

uint64_t sg_metrics_upstream_age_ns(void)
{
    uint64_t latest = 0;
    pthread_mutex_lock(&shards_mu);
    for (shard *s = shards; s; s = s->next) {
        uint64_t t = atomic_load_explicit(&s->upstream_seen_ns, memory_order_relaxed);
        if (t > latest) latest = t;
    }
    pthread_mutex_unlock(&shards_mu);
    if (!latest) return UINT64_MAX;
    uint64_t now = sg_now_mono_ns();
    return now > latest ? now - latest : 0;
}

void sg_metrics_read(sg_metrics_snapshot *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&shards_mu);
    for (shard *s = shards; s; s = s->next) {
        for (int i = 0; i < SG_M_COUNT; i++)
            out->counters[i] += atomic_load_explicit(&s->counters[i], memory_order_relaxed);
        for (int i = 0; i < SG_G_COUNT; i++)
            out->gauges[i] += atomic_load_explicit(&s->gauges[i], memory_order_relaxed);
        for (int h = 0; h < SG_H_COUNT; h++) {
            /* The count last: a scrape racing an observation may see it in a
             * bucket but not yet in the count, never the other way round. */
            out->hist[h].count += atomic_load_explicit(&s->hist[h].count, memory_order_relaxed);
            out->hist[h].sum_ns += atomic_load_explicit(&s->hist[h].sum_ns, memory_order_relaxed);
            for (int b = 0; b < SG_METRICS_BUCKETS; b++)
                out->hist[h].buckets[b] +=
                    atomic_load_explicit(&s->hist[h].buckets[b], memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&shards_mu);
    /* Buckets and count are read one after the other while workers count:
     * keep the exposition consistent (the +Inf bucket is the count). */
    for (int h = 0; h < SG_H_COUNT; h++) {
        uint64_t sum = 0;
        for (int b = 0; b < SG_METRICS_BUCKETS; b++)
            sum += out->hist[h].buckets[b];
        if (sum > out->hist[h].count) out->hist[h].count = sum;
    }
}

typedef struct merged {
    const char *method;
    const char *tool; /* borrowed from a shard entry (never freed before sg_metrics_free) */
    int outcome;
    uint64_t count;
} merged;

int sg_metrics_each_decision(void (*fn)(const char *method, const char *tool, int outcome,
                                        uint64_t count, void *ud),
                             void *ud)
{
    merged *m = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    pthread_mutex_lock(&shards_mu);
    for (shard *s = shards; s && rc == 0; s = s->next) {
        for (unsigned i = 0; i < DECISION_SLOTS; i++) {
            decision_entry *e = &s->decisions[i];
            if (atomic_load_explicit(&e->state, memory_order_acquire) == 0) continue;
            uint64_t c = atomic_load_explicit(&e->count, memory_order_relaxed);
            size_t k = 0;
            while (k < n && !(m[k].method == e->method && m[k].outcome == e->outcome &&
                              strcmp(m[k].tool, e->tool) == 0))
                k++;
            if (k == n) {
                if (sg_array_reserve(&m, &cap, n, sizeof *m, 64) != 0) {
                    rc = -1;
                    break;
                }
                m[n++] = (merged){e->method, e->tool, e->outcome, 0};
            }
            m[k].count += c;
        }
    }
    pthread_mutex_unlock(&shards_mu);
    /* Shards live until sg_metrics_free, so the borrowed names stay valid. */
    if (rc == 0)
        for (size_t k = 0; k < n; k++)
            fn(m[k].method, m[k].tool, m[k].outcome, m[k].count, ud);
    free(m);
    return rc;
}

void sg_metrics_family(sg_buf *out, const char *name, const char *help, const char *type)
{
    sg_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void sg_metrics_counter(sg_buf *out, const char *name, const char *help, uint64_t value)
{
    sg_metrics_family(out, name, help, "counter");
    sg_buf_printf(out, "%s %llu\n", name, (unsigned long long)value);
}

int sg_metrics_add_collector(void (*fn)(sg_buf *out, void *ud), void *ud)
{
    pthread_mutex_lock(&shards_mu);
    int rc = -1;
    if (ncollectors < MAX_COLLECTORS) {
        collectors[ncollectors].fn = fn;
        collectors[ncollectors].ud = ud;
        ncollectors++;
        rc = 0;
    }
    pthread_mutex_unlock(&shards_mu);
    return rc;
}

void sg_metrics_run_collectors(sg_buf *out)
{
    pthread_mutex_lock(&shards_mu);
    int n = ncollectors;
    pthread_mutex_unlock(&shards_mu);
    for (int i = 0; i < n; i++)
        collectors[i].fn(out, collectors[i].ud);
}

void sg_metrics_escape_label(sg_buf *out, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            sg_buf_puts(out, "\\\\");
        else if (*p == '"')
            sg_buf_puts(out, "\\\"");
        else if (*p == '\n')
            sg_buf_puts(out, "\\n");
        else
            sg_buf_putc(out, *p);
    }
}

void sg_metrics_free(void)
{
    pthread_mutex_lock(&shards_mu);
    shard *s = shards;
    shards = NULL;
    ncollectors = 0;
    pthread_mutex_unlock(&shards_mu);
    while (s) {
        shard *next = s->next;
        free(s);
        s = next;
    }
    tl_shard = NULL;
}
