/* metrics.h -- counters, gauges and histograms for the admin listener's
 * /metrics (Prometheus text format 0.0.4), cheap enough for the hot path.
 *
 * Why per thread: a request is served start to finish on one worker thread,
 * so each thread counts into a shard of its own (one allocation per thread,
 * on its first count, aligned to a cache line): an increment is a plain
 * load and store of a relaxed atomic that no other thread writes, with no
 * lock, no read-modify-write and no shared cache line. A scrape sums the
 * shards. Nothing is counted until sg_metrics_enable (scopegate serve with
 * --admin-listen): then every call below is a test of one global and a
 * return.
 *
 * Adding a counter is one line in SG_METRIC_COUNTERS below (its name, help
 * text and, for a labelled family, the label, the number of slots and the
 * function that names slot i; the table is expanded in src/net/admin.c,
 * which sees every layer) and a call sg_metric_inc(SG_M_<ID> [+ value]) where
 * it happens. Counts kept elsewhere (behind a getter of their own) are
 * exported by registering a collector with sg_metrics_add_collector. */
#ifndef SG_METRICS_H
#define SG_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/sg.h"

/* X(ID, name, help, label, values, value_name): label NULL and values 1 for
 * a plain counter; else slots SG_M_<ID> + 0 .. values - 1, the label value
 * of slot i being value_name(i), a function src/net/admin.c defines over
 * the owning layer's names (NULL: slot i is not a value, e.g. "ok"). */
#define SG_METRIC_COUNTERS(X)                                                                      \
    X(TOKEN_REFUSALS, "scopegate_token_refusals_total",                                            \
      "Bearer tokens refused, by the verifier's reason code (docs/tokens.md).", "reason", 32,      \
      token_reason_label)                                                                          \
    X(TOKEN_CACHE_HITS, "scopegate_token_cache_hits_total",                                        \
      "Tokens found in a worker's verified-token cache.", NULL, 1, NULL)                           \
    X(TOKEN_CACHE_MISSES, "scopegate_token_cache_misses_total",                                    \
      "Tokens not in the verified-token cache (verified in full).", NULL, 1, NULL)                 \
    X(JWKS_FETCHES, "scopegate_jwks_fetches_total",                                                \
      "JWKS documents fetched from --jwks URL and put in force.", NULL, 1, NULL)                   \
    X(JWKS_FETCH_FAILURES, "scopegate_jwks_fetch_failures_total",                                  \
      "JWKS fetches that failed (network, HTTP status, document); the old keys stay.", NULL, 1,    \
      NULL)                                                                                        \
    X(JWKS_CACHE_HITS, "scopegate_jwks_cache_hits_total",                                          \
      "Signature keys found in the cached key set (by kid and alg), without a fetch.", NULL, 1,    \
      NULL)                                                                                        \
    X(JWKS_CACHE_MISSES, "scopegate_jwks_cache_misses_total",                                      \
      "Tokens naming a kid the cached key set does not hold (a refetch may follow).", NULL, 1,     \
      NULL)                                                                                        \
    X(POLICY_RELOADS, "scopegate_policy_reloads_total",                                            \
      "Policy reloads, by result: ok (new policy in force), refused (the previous stays), "        \
      "unchanged (same text).",                                                                    \
      "result", 3, reload_result_label)                                                            \
    X(UPSTREAM_ERRORS, "scopegate_upstream_errors_total",                                          \
      "Forwarded requests whose upstream exchange failed, by kind.", "kind", 7,                    \
      upstream_error_label)                                                                        \
    X(UPSTREAM_PROBES, "scopegate_upstream_probes_total",                                          \
      "Readiness probes sent to an idle upstream (MCP ping).", NULL, 1, NULL)                      \
    X(UPSTREAM_PROBE_FAILURES, "scopegate_upstream_probe_failures_total",                          \
      "Readiness probes that got no HTTP response.", NULL, 1, NULL)

#define SG_METRIC_ENUM_(id, name, help, label, values, fn)                                         \
    SG_M_##id, SG_M_##id##_LAST_ = SG_M_##id + (values)-1,
enum { SG_METRIC_COUNTERS(SG_METRIC_ENUM_) SG_M_COUNT };
#undef SG_METRIC_ENUM_

/* Gauges: X(ID, name, help). A thread adds and subtracts in its own shard;
 * the scrape sums them. */
#define SG_METRIC_GAUGES(X)                                                                        \
    X(CONNECTIONS, "scopegate_client_connections", "Client connections open on the MCP listener.") \
    X(SSE_STREAMS, "scopegate_sse_streams",                                                        \
      "Event streams (text/event-stream answers) open to clients.")

#define SG_METRIC_ENUM_(id, name, help) SG_G_##id,
enum { SG_METRIC_GAUGES(SG_METRIC_ENUM_) SG_G_COUNT };
#undef SG_METRIC_ENUM_

/* Histograms: X(ID, name, help), all with the buckets of
 * sg_metrics_bucket_bounds. */
#define SG_METRIC_HISTOGRAMS(X)                                                                    \
    X(REQUEST_SECONDS, "scopegate_http_request_duration_seconds",                                  \
      "Requests on the MCP listener, from their first call to the last byte handed to the "        \
      "kernel (event streams: their whole life).")                                                 \
    X(UPSTREAM_SECONDS, "scopegate_upstream_response_seconds",                                     \
      "Forwarded requests, from forwarding to the upstream's answer head reaching the "            \
      "gateway (small non-stream answers: complete).")

#define SG_METRIC_ENUM_(id, name, help) SG_H_##id,
enum { SG_METRIC_HISTOGRAMS(SG_METRIC_ENUM_) SG_H_COUNT };
#undef SG_METRIC_ENUM_

#define SG_METRICS_BUCKETS 14 /* finite upper bounds; +Inf is the count */
/* The upper bounds in nanoseconds, ascending. Can't fail. */
const uint64_t *sg_metrics_bucket_bounds(void);

/* Decision outcomes (label "outcome"). */
typedef enum sg_metrics_outcome {
    SG_METRICS_ALLOWED,
    SG_METRICS_UNAUTHORIZED, /* 401 */
    SG_METRICS_FORBIDDEN,    /* 403 insufficient_scope (a step-up can help) */
    SG_METRICS_DENIED,       /* 403: the policy says never */
    SG_METRICS_OUTCOME_COUNT
} sg_metrics_outcome;
/* "allowed", "unauthorized", "forbidden", "denied". Can't fail. */
const char *sg_metrics_outcome_name(int outcome);

/* Longest tool name kept as a label value; longer ones count as "other". */
#define SG_METRICS_TOOL_MAX 128

/* Turns counting on, for the whole process. Call before any thread that
 * counts starts. Can't fail. */
void sg_metrics_enable(void);
/* 1 once enabled. */
int sg_metrics_enabled(void);

/* Adds n to counter slot `id` (SG_M_<ID> + value) of the calling thread's
 * shard. Out-of-range ids are ignored. Can't fail (a thread whose shard
 * cannot be allocated counts nothing). */
void sg_metric_add(int id, uint64_t n);
static inline void sg_metric_inc(int id)
{
    sg_metric_add(id, 1);
}
/* Adds delta (may be negative) to gauge `id` in the calling thread's shard. */
void sg_metric_gauge_add(int id, int64_t delta);
/* Records one observation of ns nanoseconds in histogram `id`. */
void sg_metric_observe(int id, uint64_t ns);

/* One decision: method is a label from sg_metrics_method_label (a static
 * string), tool a name the policy knows, "other" or "" (not a tool call);
 * copied (a name longer than SG_METRICS_TOOL_MAX counts as "other"). Each
 * thread keeps at most a fixed number of distinct (method, tool, outcome)
 * series; beyond, the tool counts as "other". Can't fail. */
void sg_metric_decision(const char *method, const char *tool, int outcome);
/* A bounded label for a JSON-RPC method: the method itself when it is one
 * the MCP specification defines, else "other"; NULL (a body of client
 * responses only) is "response". Returns a static string. Can't fail. */
const char *sg_metrics_method_label(const char *method);

/* The calling thread heard from the upstream (any HTTP response) at
 * sg_now_mono_ns() time now_ns, or now when now_ns is 0: readiness
 * (sg_metrics_upstream_age_ns). A caller that has just read the clock
 * passes its reading: one read less on every forwarded request. */
void sg_metric_upstream_seen(uint64_t now_ns);
/* Nanoseconds since any thread last heard from the upstream, or UINT64_MAX
 * when never. Thread-safe. */
uint64_t sg_metrics_upstream_age_ns(void);

/* ---- reading (the exporter) ----------------------------------------------- */

typedef struct sg_metrics_snapshot {
    uint64_t counters[SG_M_COUNT];
    int64_t gauges[SG_G_COUNT];
    struct {
        uint64_t buckets[SG_METRICS_BUCKETS]; /* not cumulative */
        uint64_t count;
        uint64_t sum_ns;
    } hist[SG_H_COUNT];
} sg_metrics_snapshot;

/* Sums every shard into *out. Thread-safe. Can't fail. */
void sg_metrics_read(sg_metrics_snapshot *out);

/* Calls fn once per decision series (summed over the shards), in no
 * particular order. Returns 0, or -1 when out of memory (nothing called).
 * Thread-safe. */
int sg_metrics_each_decision(void (*fn)(const char *method, const char *tool, int outcome,
                                        uint64_t count, void *ud),
                             void *ud);

/* A collector appends whole metric families (with # HELP and # TYPE lines)
 * in the text format to out at each scrape; for counts a subsystem keeps
 * behind a getter of its own. It runs on the admin thread. At most 16.
 * Returns 0, or -1 when full. */
int sg_metrics_add_collector(void (*fn)(sg_buf *out, void *ud), void *ud);
/* Runs every collector into out. */
void sg_metrics_run_collectors(sg_buf *out);

/* Appends the "# HELP" and "# TYPE" lines of a family. Can't fail (a
 * buffer failure is recorded in out). */
void sg_metrics_family(sg_buf *out, const char *name, const char *help, const char *type);
/* Appends a whole counter family of one unlabelled sample: its HELP and TYPE
 * lines, then "name value". For collectors. Can't fail. */
void sg_metrics_counter(sg_buf *out, const char *name, const char *help, uint64_t value);

/* Appends a label value escaped as the text format says (backslash, double
 * quote and line feed). Can't fail (a buffer failure is recorded in out). */
void sg_metrics_escape_label(sg_buf *out, const char *value);

/* Frees every shard and forgets the collectors (at exit, once no thread
 * counts any more). Can't fail. */
void sg_metrics_free(void);

#endif
