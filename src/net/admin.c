/* admin.c -- the admin listener (/metrics, /healthz, /readyz) and the
 * upstream readiness probe.
 *
 * Why it is shaped this way: the exposition is built at scrape time from the
 * per-thread shards (base/metrics.c), so the request path only ever counts;
 * everything here runs on the admin listener's own thread or the probe's.
 * The metric table (SG_METRIC_COUNTERS) is expanded here because this layer
 * sees every other one and can name their codes. The admin listener's bytes
 * do not pass the strict framing scanner (src/net/wire.c): it forwards
 * nothing anywhere, answers GET and HEAD of three fixed paths only, and
 * reads no body, so a lenient parse cannot desynchronise anything. */
#include "net/admin.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <microhttpd.h>

#include "auth/token.h"
#include "base/metrics.h"
#include "gateway/catalog.h"
#include "gateway/reload.h"
#include "net/http_impl.h"
#include "upstream/proxy.h"

#define PROBE_MIN_INTERVAL_MS 250
#define PROBE_MAX_TIMEOUT_MS  10000

struct sg_admin {
    sg_admin_config cfg;
    struct MHD_Daemon *daemon;
    uint16_t port;
    atomic_int draining;
    /* The probe thread. */
    pthread_t probe;
    int probe_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
};

/* ---- label values of the labelled counters (SG_METRIC_COUNTERS) ------------------ */

_Static_assert(SG_TOKEN_ERR_COUNT <= 32, "scopegate_token_refusals_total has 32 slots");
_Static_assert(SG_PROXY_ENOMEM < 7, "scopegate_upstream_errors_total has 7 slots");
_Static_assert(SG_RELOAD_RESULT_COUNT <= 3, "scopegate_policy_reloads_total has 3 slots");

static const char *token_reason_label(int i)
{
    return i > SG_TOKEN_OK && i < SG_TOKEN_ERR_COUNT ? sg_token_error_name((sg_token_err)i) : NULL;
}

static const char *reload_result_label(int i)
{
    return sg_reload_result_name(i);
}

static const char *upstream_error_label(int i)
{
    return i > SG_PROXY_OK && i <= SG_PROXY_ENOMEM ? sg_proxy_error_name(i) : NULL;
}

/* ---- the exposition ------------------------------------------------------------ */

static void seconds(sg_buf *out, uint64_t ns)
{
    sg_buf_printf(out, "%llu.%09llu", (unsigned long long)(ns / 1000000000ull),
                  (unsigned long long)(ns % 1000000000ull));
}

static void render_counters(sg_buf *out, const sg_metrics_snapshot *snap)
{
#define SG_RENDER_COUNTER_(id, name, help, label, values, value_name)                              \
    do {                                                                                           \
        const char *label_ = (label);                                                              \
        const char *(*value_name_)(int) = value_name;                                              \
        sg_metrics_family(out, name, help, "counter");                                             \
        for (int i = 0; i < (values); i++) {                                                       \
            if (!label_ || !value_name_) {                                                         \
                sg_buf_printf(out, "%s %llu\n", name,                                              \
                              (unsigned long long)snap->counters[SG_M_##id]);                      \
                break;                                                                             \
            }                                                                                      \
            const char *v_ = value_name_(i);                                                       \
            if (!v_) continue;                                                                     \
            sg_buf_printf(out, "%s{%s=\"", name, label_);                                          \
            sg_metrics_escape_label(out, v_);                                                      \
            sg_buf_printf(out, "\"} %llu\n", (unsigned long long)snap->counters[SG_M_##id + i]);   \
        }                                                                                          \
    } while (0);
    SG_METRIC_COUNTERS(SG_RENDER_COUNTER_)
#undef SG_RENDER_COUNTER_
}

static void render_gauges(sg_buf *out, const sg_metrics_snapshot *snap)
{
#define SG_RENDER_GAUGE_(id, name, help)                                                           \
    sg_metrics_family(out, name, help, "gauge");                                                   \
    sg_buf_printf(out, "%s %lld\n", name, (long long)snap->gauges[SG_G_##id]);
    SG_METRIC_GAUGES(SG_RENDER_GAUGE_)
#undef SG_RENDER_GAUGE_
}

static void render_histogram(sg_buf *out, const char *name, const char *help,
                             const sg_metrics_snapshot *snap, int id)
{
    const uint64_t *bounds = sg_metrics_bucket_bounds();
    sg_metrics_family(out, name, help, "histogram");
    uint64_t cumulative = 0;
    for (int b = 0; b < SG_METRICS_BUCKETS; b++) {
        cumulative += snap->hist[id].buckets[b];
        sg_buf_printf(out, "%s_bucket{le=\"", name);
        /* Bounds are whole microseconds: print them exactly, no float. */
        uint64_t us = bounds[b] / 1000u;
        sg_buf_printf(out, "%llu.%06llu", (unsigned long long)(us / 1000000u),
                      (unsigned long long)(us % 1000000u));
        sg_buf_printf(out, "\"} %llu\n", (unsigned long long)cumulative);
    }
    sg_buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name,
                  (unsigned long long)snap->hist[id].count);
    sg_buf_printf(out, "%s_sum ", name);
    seconds(out, snap->hist[id].sum_ns);
    sg_buf_printf(out, "\n%s_count %llu\n", name, (unsigned long long)snap->hist[id].count);
}

typedef struct decision_ctx {
    sg_buf *out;
} decision_ctx;

static void render_decision(const char *method, const char *tool, int outcome, uint64_t count,
                            void *ud)
{
    sg_buf *out = ((decision_ctx *)ud)->out;
    sg_buf_puts(out, "scopegate_decisions_total{method=\"");
    sg_metrics_escape_label(out, method);
    sg_buf_puts(out, "\",tool=\"");
    sg_metrics_escape_label(out, tool);
    sg_buf_printf(out, "\",outcome=\"%s\"} %llu\n", sg_metrics_outcome_name(outcome),
                  (unsigned long long)count);
}

/* Why the gateway is not ready, or NULL when it is. */
static const char *not_ready(sg_admin *a, char *why, size_t whylen)
{
    if (atomic_load(&a->draining)) return "shutting down\n";
    if (sg_keys_count(a->cfg.keys) == 0) return "no token verification keys loaded\n";
    char hash[SG_POLICY_HASH_LEN + 1];
    sg_gateway_policy_hash(a->cfg.gateway, hash);
    if (!hash[0]) return "no policy loaded\n";
    uint64_t age = sg_metrics_upstream_age_ns();
    if (age == UINT64_MAX) return "the upstream has not answered yet\n";
    if (age > (uint64_t)a->cfg.ready_window_s * 1000000000ull) {
        snprintf(why, whylen, "the upstream has not answered for %llu s (window %u s)\n",
                 (unsigned long long)(age / 1000000000ull), a->cfg.ready_window_s);
        return why;
    }
    return NULL;
}

int sg_admin_render_metrics(sg_admin *a, sg_buf *out)
{
    sg_metrics_snapshot snap;
    sg_metrics_read(&snap);

    sg_metrics_family(out, "scopegate_build_info", "The running scopegate's version.", "gauge");
    sg_buf_puts(out, "scopegate_build_info{version=\"");
    sg_metrics_escape_label(out, SG_VERSION);
    sg_buf_puts(out, "\"} 1\n");

    char hash[SG_POLICY_HASH_LEN + 1];
    sg_gateway_policy_hash(a->cfg.gateway, hash);
    sg_metrics_family(out, "scopegate_policy_info", "The policy in force, by its content hash.",
                      "gauge");
    sg_buf_puts(out, "scopegate_policy_info{hash=\"");
    sg_metrics_escape_label(out, hash);
    sg_buf_puts(out, "\"} 1\n");

    sg_metrics_family(
        out, "scopegate_decisions_total",
        "Access decisions on the MCP endpoint, by JSON-RPC method (MCP's own, else other; "
        "batch; GET and DELETE streams), tool (tools/call of a tool the policy names, else "
        "other) and outcome.",
        "counter");
    decision_ctx dc = {out};
    if (sg_metrics_each_decision(render_decision, &dc) != 0) return -1;

    render_counters(out, &snap);
    render_gauges(out, &snap);
#define SG_RENDER_HIST_(id, name, help) render_histogram(out, name, help, &snap, SG_H_##id);
    SG_METRIC_HISTOGRAMS(SG_RENDER_HIST_)
#undef SG_RENDER_HIST_

    sg_metrics_family(out, "scopegate_keys", "Token verification keys in force.", "gauge");
    sg_buf_printf(out, "scopegate_keys %d\n", sg_keys_count(a->cfg.keys));
    uint64_t age = sg_metrics_upstream_age_ns();
    sg_metrics_family(out, "scopegate_upstream_last_response_age_seconds",
                      "Seconds since the upstream last answered anything (-1: never).", "gauge");
    if (age == UINT64_MAX) {
        sg_buf_puts(out, "scopegate_upstream_last_response_age_seconds -1\n");
    } else {
        sg_buf_puts(out, "scopegate_upstream_last_response_age_seconds ");
        seconds(out, age);
        sg_buf_putc(out, '\n');
    }
    char why[128];
    sg_metrics_family(out, "scopegate_ready", "1 when /readyz answers 200.", "gauge");
    sg_buf_printf(out, "scopegate_ready %d\n", not_ready(a, why, sizeof why) ? 0 : 1);

    sg_metrics_run_collectors(out);
    return sg_buf_ok(out) ? 0 : -1;
}

/* ---- the listener ------------------------------------------------------------------ */

/* Every admin answer: complete, no-store; allow for a 405. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                             const char *body, size_t len, const char *allow)
{
    return http_queue_bytes(conn, status, ctype, body, len, NULL, allow, 0);
}

static enum MHD_Result text(struct MHD_Connection *conn, unsigned status, const char *s)
{
    return reply(conn, status, "text/plain; charset=utf-8", s, strlen(s), NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    sg_admin *a = cls;
    int known =
        strcmp(url, "/metrics") == 0 || strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0;
    if (!known) return text(conn, 404, "not found\n");
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(conn, 405, "text/plain; charset=utf-8", "method not allowed\n", 19,
                     "GET, HEAD");
    if (strcmp(url, "/healthz") == 0) return text(conn, 200, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        char why[128];
        const char *reason = not_ready(a, why, sizeof why);
        return reason ? text(conn, 503, reason) : text(conn, 200, "ready\n");
    }
    sg_buf b = SG_BUF_INIT;
    enum MHD_Result ok;
    if (sg_admin_render_metrics(a, &b) == 0)
        ok = reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, NULL);
    else
        ok = text(conn, 500, "out of memory\n");
    sg_buf_free(&b);
    return ok;
}

/* libmicrohttpd's own messages: fmt is its format string. */
__attribute__((format(printf, 2, 0))) static void admin_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    sg_log(SG_LOG_WARN, "admin: %s", line);
}

/* ---- the upstream probe ------------------------------------------------------------- */

/* Pings the upstream when nothing else has heard from it for a third of the
 * readiness window, so an idle gateway stays ready while its upstream is
 * up (and turns unready within the window once it is down). */
static void *probe_main(void *arg)
{
    sg_admin *a = arg;
    sg_thread_name("sg-ready-probe", -1);
    uint64_t window_ms = (uint64_t)a->cfg.ready_window_s * 1000u;
    uint64_t interval_ms = window_ms / 3;
    if (interval_ms < PROBE_MIN_INTERVAL_MS) interval_ms = PROBE_MIN_INTERVAL_MS;
    sg_catalog_config cc = {
        .upstream_url = a->cfg.upstream_url,
        .ca_file = a->cfg.upstream_ca,
        .timeout_ms =
            (uint32_t)(window_ms < PROBE_MAX_TIMEOUT_MS ? window_ms : PROBE_MAX_TIMEOUT_MS),
    };
    pthread_mutex_lock(&a->mu);
    int first = 1;
    while (!a->stop) {
        if (!first) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += (time_t)(interval_ms / 1000);
            until.tv_nsec += (long)(interval_ms % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&a->cv, &a->mu, &until);
            if (a->stop) break;
        }
        first = 0;
        if (sg_metrics_upstream_age_ns() < interval_ms * 1000000ull) continue;
        pthread_mutex_unlock(&a->mu);
        sg_metric_inc(SG_M_UPSTREAM_PROBES);
        long status = sg_catalog_ping(&cc);
        if (status <= 0) sg_metric_inc(SG_M_UPSTREAM_PROBE_FAILURES);
        sg_log(SG_LOG_DEBUG, "admin: upstream probe: %s", status > 0 ? "answered" : "no answer");
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

sg_admin *sg_admin_start(const sg_admin_config *cfg, char *err, size_t errlen)
{
    sg_admin *a = calloc(1, sizeof *a);
    if (!a) {
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    a->cfg = *cfg;
    if (!a->cfg.ready_window_s) a->cfg.ready_window_s = SG_ADMIN_DEFAULT_READY_WINDOW_S;
    if (!a->cfg.max_connections) a->cfg.max_connections = 1000;
    if (!a->cfg.timeout_s) a->cfg.timeout_s = 30;
    if (!a->cfg.max_header) a->cfg.max_header = 32 * 1024;
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    const char *host = cfg->host ? cfg->host : "127.0.0.1";
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(cfg->port);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(cfg->port);
        flags |= MHD_USE_IPv6;
    } else {
        sg_errf(err, errlen, "admin address '%s' is not a numeric IPv4 or IPv6 address", host);
        sg_admin_stop(a);
        return NULL;
    }
    sg_metrics_enable();
    a->daemon = MHD_start_daemon(
        flags, cfg->port, NULL, NULL, on_request, a, MHD_OPTION_EXTERNAL_LOGGER, admin_log, a,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        a->cfg.max_connections, MHD_OPTION_CONNECTION_MEMORY_LIMIT, a->cfg.max_header,
        MHD_OPTION_CONNECTION_TIMEOUT, a->cfg.timeout_s, MHD_OPTION_END);
    if (!a->daemon) {
        sg_errf(err, errlen,
                "cannot listen on %s:%u for --admin-listen (address in use or not "
                "permitted)",
                host, (unsigned)cfg->port);
        sg_admin_stop(a);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_BIND_PORT);
    a->port = di ? di->port : cfg->port;
    if (cfg->upstream_url) {
        if (pthread_create(&a->probe, NULL, probe_main, a) != 0) {
            sg_errf(err, errlen, "cannot start the upstream probe thread");
            sg_admin_stop(a);
            return NULL;
        }
        a->probe_started = 1;
    }
    return a;
}

uint16_t sg_admin_port(const sg_admin *a)
{
    return a->port;
}

void sg_admin_draining(sg_admin *a)
{
    if (a) atomic_store(&a->draining, 1);
}

void sg_admin_stop(sg_admin *a)
{
    if (!a) return;
    if (a->probe_started) {
        pthread_mutex_lock(&a->mu);
        a->stop = 1;
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->probe, NULL);
    }
    if (a->daemon) MHD_stop_daemon(a->daemon);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
}
