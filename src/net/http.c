/* http.c -- the MCP listener: its workers started, routes, each request decided.
 *
 * Why it is shaped this way: the listener is a set of workers (worker.h),
 * each one event loop over its own libmicrohttpd daemon and its own proxy
 * lane, and one gateway context; the daemon's callbacks get their worker as
 * closure, so a request is received, decided, forwarded and answered on one
 * thread with no lock on the hot path. This file is what happens to a
 * request before it is forwarded: the limits it meets before any parsing
 * (strict request framing, 400/501, src/net/wire.c, on the raw bytes before
 * libmicrohttpd reads them; header memory, 431, by libmicrohttpd itself;
 * body size, 413, while uploading), the Host and Origin allow-lists, the
 * routes (MCP endpoint, RFC 9728 metadata, /healthz) and the decision, then
 * an answer, a forward (stream.c) or a park until a key refetch or an
 * introspection call has finished (worker.c). Connections as a set (slow
 * clients, shedding, idle memory) are conn.c's. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/metrics.h"
#include "net/http_impl.h"

#define WELL_KNOWN       "/.well-known/oauth-protected-resource"
#define CONNECTION_SLACK 16 /* beyond the soft limit, so the 503 can be sent */
#define DISCARD_FACTOR   4  /* an oversized body is read this far, then the connection dropped */

/* ---- small helpers ---------------------------------------------------------- */

/* libmicrohttpd's own messages: fmt is its format string. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    /* Ending a stream early (a client that closed its GET stream, an
     * upstream that broke off, already logged) is how streams end, not a
     * fault of the gateway's. */
    int routine = strstr(line, "application error generating response") != NULL;
    sg_log(routine ? SG_LOG_DEBUG : SG_LOG_WARN, "http: %s", line);
}

enum MHD_Result http_queue_bytes(struct MHD_Connection *conn, unsigned status, const char *ctype,
                                 const char *data, size_t len, const char *www_auth,
                                 const char *allow, int close_after)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)(data ? data : ""), MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    if (ctype) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (www_auth && *www_auth) MHD_add_response_header(r, "WWW-Authenticate", www_auth);
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (close_after) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* A JSON-RPC error with a null id: the HTTP layer's own refusals. */
static enum MHD_Result queue_error(struct MHD_Connection *conn, unsigned status, int code,
                                   const char *message, const char *allow, int close_after)
{
    sg_buf b = SG_BUF_INIT;
    sg_gateway_error_body(&b, code, message);
    enum MHD_Result ok = sg_buf_ok(&b) ? http_queue_bytes(conn, status, "application/json", b.data,
                                                          b.len, NULL, allow, close_after)
                                       : MHD_NO;
    sg_buf_free(&b);
    return ok;
}

/* Every Origin header present must be allowed (a client cannot hide a bad
 * one behind a good one). */
typedef struct origin_check {
    const sg_http *h;
    int bad;
} origin_check;

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    header_list *l = cls;
    if (l->n == MAX_HEADERS) {
        l->overflow = 1;
        return MHD_NO;
    }
    l->items[l->n].name = key;
    l->items[l->n].value = value ? value : "";
    l->n++;
    return MHD_YES;
}

static int count_header(const header_list *l, const char *name)
{
    int n = 0;
    for (size_t i = 0; i < l->n; i++)
        if (sg_header_name_is(l->items[i].name, name)) n++;
    return n;
}

int sg_http_split_authority(const char *s, size_t *name_len, const char **port)
{
    if (!s || !*s) return -1;
    const char *after;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close == s + 1) return -1;
        after = close + 1;
    } else {
        after = s + strcspn(s, ":");
        if (after == s) return -1;
    }
    *name_len = (size_t)(after - s);
    if (*after == 0) {
        *port = NULL;
        return 0;
    }
    if (*after != ':' || after[1] == 0) return -1;
    *port = after + 1;
    if (strcmp(*port, "*") == 0) return 0;
    for (const char *p = *port; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    return 0;
}

/* Host "name[:port]" against one entry: the names compare without regard
 * to letter case; an entry's port must equal the Host's, "*" takes any
 * port, and an entry without a port takes only a Host without one (the
 * scheme's default port, as the client wrote it). */
static int host_matches(const char *entry, const char *host_name, size_t host_len,
                        const char *host_port)
{
    size_t elen;
    const char *eport;
    if (sg_http_split_authority(entry, &elen, &eport) != 0) return 0;
    if (elen != host_len || strncasecmp(entry, host_name, elen) != 0) return 0;
    if (eport && strcmp(eport, "*") == 0) return 1;
    if (!eport || !host_port) return !eport && !host_port;
    return strcmp(eport, host_port) == 0;
}

/* Host against the allow-list and the listener's own names (which match
 * with the bound port only). */
static int host_allowed(const sg_http *h, const char *host)
{
    const char *const *list = h->cfg.allowed_hosts;
    const char *const *own = h->cfg.own_hosts;
    if (!list && !own) return 1;
    for (const char *const *a = list; a && *a; a++)
        if (strcmp(*a, "*") == 0) return 1;
    size_t nlen;
    const char *port;
    if (!host || sg_http_split_authority(host, &nlen, &port) != 0 ||
        (port && strcmp(port, "*") == 0))
        return 0;
    for (const char *const *a = list; a && *a; a++)
        if (host_matches(*a, host, nlen, port)) return 1;
    for (const char *const *a = own; a && *a; a++)
        if (strlen(*a) == nlen && strncasecmp(*a, host, nlen) == 0 &&
            ((port && strcmp(port, h->port_text) == 0) || (!port && h->port == 80)))
            return 1;
    return 0;
}

static int origin_allowed(const sg_http *h, const char *origin)
{
    const char *const *list = h->cfg.allowed_origins;
    if (!list) return 0;
    for (; *list; list++)
        if (strcmp(*list, "*") == 0 || strcasecmp(*list, origin) == 0) return 1;
    return 0;
}

static enum MHD_Result check_origin(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    origin_check *oc = cls;
    if (sg_header_name_is(key, "Origin") && !origin_allowed(oc->h, value ? value : "")) oc->bad = 1;
    return MHD_YES;
}

/* ---- audit records ---------------------------------------------------------- */

void http_audit_done(exchange *ex, int status, int upstream_status, const char *upstream_outcome,
                     const char *content_type, const char *body, size_t len, uint64_t now_ns)
{
    sg_gateway_outcome o = {.status = status,
                            .upstream_status = upstream_status,
                            .upstream_outcome = upstream_outcome,
                            .content_type = content_type,
                            .body = body,
                            .body_len = len,
                            .started_ns = ex->started_ns,
                            .now_ns = now_ns};
    sg_gateway_audit_finish(ex->h->cfg.gateway, &ex->reply, &o);
}

/* The key refresher thread finished a refetch, or an introspection thread
 * a call: wake every worker (they look at their own waiters). */
static void wake_workers(void *ud)
{
    sg_http *h = ud;
    for (unsigned i = 0; i < h->nworkers; i++)
        sg_worker_wake(&h->workers[i]);
}

/* ---- the request handler ------------------------------------------------------ */

static enum MHD_Result decide(exchange *ex, const char *method, int waited);

static enum MHD_Result first_call(sg_http *h, exchange *ex, const char *url, const char *method)
{
    struct MHD_Connection *conn = ex->conn;
    if (atomic_load(&h->connections) > (int)h->cfg.limits.max_connections)
        return queue_error(conn, 503, SG_JSONRPC_INTERNAL_ERROR, "Too many connections", NULL, 1);

    int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (strcmp(url, "/healthz") == 0) {
        if (!is_get)
            return queue_error(conn, 405, SG_JSONRPC_INVALID_REQUEST, "Method not allowed",
                               "GET, HEAD", 0);
        static const char ok[] = "{\"status\":\"ok\"}";
        return http_queue_bytes(conn, 200, "application/json", ok, sizeof ok - 1, NULL, NULL, 0);
    }

    const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!host_allowed(h, host))
        return queue_error(conn, 403, SG_JSONRPC_INVALID_REQUEST, "Host not allowed", NULL, 1);
    origin_check oc = {h, 0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, check_origin, &oc);
    if (oc.bad)
        return queue_error(conn, 403, SG_JSONRPC_INVALID_REQUEST, "Origin not allowed", NULL, 1);

    size_t wk = sizeof WELL_KNOWN - 1;
    if (strncmp(url, WELL_KNOWN, wk) == 0 &&
        (url[wk] == 0 || strcmp(url + wk, h->cfg.mcp_path) == 0)) {
        if (!is_get)
            return queue_error(conn, 405, SG_JSONRPC_INVALID_REQUEST, "Method not allowed",
                               "GET, HEAD", 0);
        sg_buf b = SG_BUF_INIT;
        enum MHD_Result ok = MHD_NO;
        if (sg_gateway_metadata(h->cfg.gateway, ex->worker->gateway, &b) == 0)
            ok = http_queue_bytes(conn, 200, "application/json", b.data, b.len, NULL, NULL, 0);
        sg_buf_free(&b);
        return ok;
    }
    if (strcmp(url, h->cfg.mcp_path) != 0)
        return queue_error(conn, 404, SG_JSONRPC_INVALID_REQUEST, "Not found", NULL, 0);
    if (strcmp(method, "POST") != 0 && strcmp(method, "GET") != 0 && strcmp(method, "DELETE") != 0)
        return queue_error(conn, 405, SG_JSONRPC_INVALID_REQUEST, "Method not allowed",
                           "GET, POST, DELETE", 0);
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end = NULL;
        unsigned long long n = strtoull(cl, &end, 10);
        if (end != cl && n > h->cfg.limits.max_body) {
            /* Answered at once only when the client has sent none of the
             * body yet (it waits for 100 Continue) or announces more than
             * would be read: closing with unread bytes in the socket makes
             * the kernel reset the connection, and the client may lose the
             * answer. Otherwise the body is read and dropped, then 413. */
            const char *expect =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
            if ((expect && strcasecmp(expect, "100-continue") == 0) ||
                n > DISCARD_FACTOR * (unsigned long long)h->cfg.limits.max_body)
                return queue_error(conn, 413, SG_JSONRPC_INVALID_REQUEST, "Request body too large",
                                   NULL, 1);
            ex->late_status = 413;
        }
    }
    ex->phase = PHASE_BODY;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    sg_worker *w = cls;
    sg_http *h = w->http;
    exchange *ex = *con_cls;
    if (!ex) {
        ex = calloc(1, sizeof *ex);
        if (!ex) return MHD_NO;
        ex->h = h;
        ex->worker = w;
        ex->conn = conn;
        ex->started_ns = sg_now_mono_ns();
        ex->phase = PHASE_DONE;
        sg_gateway_reply_init(&ex->reply);
        *con_cls = ex;
        if ((ex->slot = conn_of(conn)) != NULL) ex->slot->busy = 1;
        enum MHD_Result first = first_call(h, ex, url, method);
        if (ex->slot) ex->slot->collecting_body = ex->phase == PHASE_BODY;
        return first;
    }
    switch (ex->phase) {
    case PHASE_BODY:
        break;
    case PHASE_WAIT: /* resumed: the key refetch or introspection call has finished */
        ex->phase = PHASE_DONE;
        return decide(ex, method, 1);
    case PHASE_HEAD:
        return http_advance_head(ex);
    case PHASE_COLLECT:
        return http_advance_collect(ex);
    default:
        /* A response is queued; swallow whatever body is still coming. */
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        uint64_t elapsed_s = (sg_now_mono_ns() - ex->started_ns) / 1000000000u;
        if (!ex->late_status && elapsed_s >= h->cfg.limits.timeout_s) ex->late_status = 408;
        if (!ex->late_status && ex->body.len + n > h->cfg.limits.max_body) {
            ex->late_status = 413;
            sg_buf_free(&ex->body);
        }
        if (ex->late_status) {
            ex->discarded += n;
            /* Reading a huge refused body to its end would let a client hold a
             * thread's attention forever: cut it off past a bound. */
            if (ex->discarded > DISCARD_FACTOR * h->cfg.limits.max_body) return MHD_NO;
            return MHD_YES;
        }
        sg_buf_append(&ex->body, upload_data, n);
        return sg_buf_ok(&ex->body) ? MHD_YES : MHD_NO;
    }

    /* The whole request is in. */
    if (ex->slot) ex->slot->collecting_body = 0;
    if (ex->late_status == 413)
        return queue_error(conn, 413, SG_JSONRPC_INVALID_REQUEST, "Request body too large", NULL,
                           1);
    if (ex->late_status == 408)
        return queue_error(conn, 408, SG_JSONRPC_INVALID_REQUEST, "Request timeout", NULL, 1);
    ex->phase = PHASE_DONE;
    return decide(ex, method, 0);
}

/* The client's numeric address, for the audit log ("" when unknown):
 * formatted once per connection (inet_ntop is a printf), kept in its slot. */
static const char *client_address(exchange *ex)
{
    conn_slot *c = ex->slot;
    if (c && c->client[0]) return c->client;
    static _Thread_local char scratch[INET6_ADDRSTRLEN];
    char *out = c ? c->client : scratch;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(ex->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    out[0] = 0;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  INET6_ADDRSTRLEN);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  INET6_ADDRSTRLEN);
    return out;
}

/* Decides the whole request and answers, forwards, or (its token's key is
 * being refetched, or its opaque token introspected) parks it until that
 * has finished. */
static enum MHD_Result decide(exchange *ex, const char *method, int waited)
{
    sg_http *h = ex->h;
    struct MHD_Connection *conn = ex->conn;
    /* On the stack: 2 KiB, above what malloc serves from its per-thread
     * cache, so a heap copy took malloc's slow path on every request. Only
     * this call reads it (forwarding copies the headers it sends). */
    header_list headers;
    header_list *hl = &headers;
    hl->n = 0;
    hl->overflow = 0;
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, hl);
    enum MHD_Result ok;
    if (hl->overflow) {
        ok =
            queue_error(conn, 431, SG_JSONRPC_INVALID_REQUEST, "Too many request headers", NULL, 1);
    } else if (count_header(hl, "Authorization") > 1 || count_header(hl, "Host") > 1) {
        ok = queue_error(conn, 400, SG_JSONRPC_INVALID_REQUEST,
                         "Repeated Authorization or Host header", NULL, 1);
    } else {
        const char *client = sg_gateway_audits(h->cfg.gateway) ? client_address(ex) : "";
        sg_gateway_request greq = {.worker = ex->worker->gateway,
                                   .method = method,
                                   .headers = hl->items,
                                   .nheaders = hl->n,
                                   .body = ex->body.data ? ex->body.data : "",
                                   .body_len = ex->body.len,
                                   .waited = waited,
                                   .client_addr = client[0] ? client : NULL,
                                   .received_ns = ex->started_ns};
        sg_gateway_action next = sg_gateway_handle(h->cfg.gateway, &greq, &ex->reply);
        if (next == SG_GATEWAY_FORWARD) {
            ok = http_forward(ex, method, hl);
        } else if (next == SG_GATEWAY_WAIT) {
            sg_worker_park(ex->worker, ex);
            ok = MHD_YES;
        } else {
            sg_gateway_reply *r = &ex->reply;
            ok = http_queue_bytes(
                conn, (unsigned)r->status, r->content_type, r->body.data, r->body.len,
                r->www_authenticate.len ? r->www_authenticate.data : NULL, r->allow, 0);
            if (r->naudit) http_audit_done(ex, r->status, 0, NULL, NULL, NULL, 0, 0);
        }
    }
    return ok;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    exchange *ex = *con_cls;
    if (!ex) return;
    *con_cls = NULL;
    if (sg_metrics_enabled())
        sg_metric_observe(SG_H_REQUEST_SECONDS, sg_now_mono_ns() - ex->started_ns);
    if (ex->sse_counted) sg_metric_gauge_add(SG_G_SSE_STREAMS, -1);
    if (ex->slot) {
        ex->slot->busy = 0;
        ex->slot->streaming = 0;
        ex->slot->collecting_body = 0;
        if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
            sg_wire_answered(&ex->slot->wire);
        else
            ex->slot->wire.closed = 1; /* closing: nothing more is written to it */
    }
    if (ex->phase == PHASE_WAIT) sg_worker_unpark(ex->worker, ex);
    /* Forwarded, and the client left before any answer was queued. */
    if (ex->reply.naudit) http_audit_done(ex, 0, 0, "client_gone", NULL, NULL, 0, 0);
    if (ex->xfer) {
        sg_transfer_release(ex->xfer);
        atomic_fetch_sub(&ex->h->forwarded, 1);
    }
    sg_buf_free(&ex->body);
    sg_buf_free(&ex->answer);
    sg_gateway_reply_free(&ex->reply);
    free(ex);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    sg_worker *w = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_open(w, conn, socket_context);
    } else {
        conn_close(*socket_context);
        *socket_context = NULL;
    }
}

/* ---- lifecycle ------------------------------------------------------------------ */

/* The listener with its limits' defaults filled in and its workers
 * initialised (none opened). Returns NULL with a message in err. */
static sg_http *http_new(const sg_http_config *cfg, char *err, size_t errlen)
{
    sg_http *h = calloc(1, sizeof *h);
    if (!h) {
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = *cfg;
    sg_http_limits *l = &h->cfg.limits;
    if (!l->max_body) l->max_body = SG_HTTP_DEFAULT_MAX_BODY;
    /* libmicrohttpd zeroes the whole pool at every request's end, and the
     * unused half of its read buffer when that shrinks: 1.5 times the pool
     * per request, most of it cache misses. 24 KiB holds a 16 KiB token and
     * 4 KiB of other headers; a 36 KiB pool (which libmicrohttpd maps on
     * pages of its own, above 32 KiB) cost the allowed path 5% of its
     * throughput for 4 KiB less per idle connection (docs/decisions.md). */
    if (!l->max_header) l->max_header = SG_HTTP_DEFAULT_MAX_HEADER;
    if (!l->max_connections) l->max_connections = SG_HTTP_DEFAULT_MAX_CONNECTIONS;
    if (!l->timeout_s) l->timeout_s = SG_HTTP_DEFAULT_TIMEOUT_S;
    if (!l->header_timeout_s) l->header_timeout_s = SG_HTTP_DEFAULT_HEADER_TIMEOUT_S;
    if (!l->body_grace_s) l->body_grace_s = SG_HTTP_DEFAULT_BODY_GRACE_S;
    if (!l->threads) l->threads = sg_cpus_usable();
    long page_size = sysconf(_SC_PAGESIZE);
    h->page_size = page_size > 0 ? (size_t)page_size : 0;
    if (!h->cfg.mcp_path) h->cfg.mcp_path = SG_HTTP_DEFAULT_MCP_PATH;
    if (!(h->workers = calloc(l->threads, sizeof *h->workers))) {
        free(h);
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    h->nworkers = l->threads;
    for (unsigned i = 0; i < h->nworkers; i++)
        sg_worker_init(&h->workers[i]);
    return h;
}

static void http_free(sg_http *h)
{
    for (unsigned i = 0; i < h->nworkers; i++)
        sg_worker_close(&h->workers[i]);
    free(h->workers);
    free(h);
}

/* The listen address: a numeric IPv4 or IPv6 address and the port. Sets
 * MHD_USE_IPv6 in *flags for the latter. Returns -1 with a message in err
 * for anything else. */
static int listen_address(const char *host, uint16_t port, struct sockaddr_storage *ss,
                          unsigned *flags, char *err, size_t errlen)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        *flags |= MHD_USE_IPv6;
    } else {
        sg_errf(err, errlen, "listen address '%s' is not a numeric IPv4 or IPv6 address", host);
        return -1;
    }
    return 0;
}

/* Worker w's daemon on ss (port 0 in ss: an ephemeral one), its callbacks'
 * closure being w. NULL when it cannot listen. */
static struct MHD_Daemon *start_daemon(sg_http *h, sg_worker *w, unsigned flags,
                                       const struct sockaddr_storage *ss)
{
    const sg_http_limits *l = &h->cfg.limits;
    uint16_t port = ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                                   : ((const struct sockaddr_in6 *)ss)->sin6_port);
    /* The connection limit is shared: a daemon may take them all. */
    unsigned limit = (unsigned)(l->max_connections + CONNECTION_SLACK);
    return MHD_start_daemon(flags, port, NULL, NULL, on_request, w, MHD_OPTION_EXTERNAL_LOGGER,
                            mhd_log, h, MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)ss,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)(h->nworkers > 1),
                            MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                            l->max_header, MHD_OPTION_CONNECTION_TIMEOUT, l->timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, w,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, w, MHD_OPTION_END);
}

/* Opens every worker: the first daemon binds (port 0 picks one), the
 * others bind the same port, and the kernel spreads connections over
 * them. Returns -1 with a message in err. */
static int open_workers(sg_http *h, const char *host, char *err, size_t errlen)
{
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_storage ss;
    if (listen_address(host, h->cfg.port, &ss, &flags, err, errlen) != 0) return -1;
    for (unsigned i = 0; i < h->nworkers; i++) {
        sg_worker *w = &h->workers[i];
        if (i == 1) {
            if (ss.ss_family == AF_INET)
                ((struct sockaddr_in *)&ss)->sin_port = htons(h->port);
            else
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons(h->port);
        }
        struct MHD_Daemon *d = start_daemon(h, w, flags, &ss);
        if (!d) {
            sg_errf(err, errlen, "cannot listen on %s:%u (address in use or not permitted)", host,
                    (unsigned)(i ? h->port : h->cfg.port));
            return -1;
        }
        if (i == 0) {
            const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
            h->port = di ? di->port : h->cfg.port;
            snprintf(h->port_text, sizeof h->port_text, "%u", (unsigned)h->port);
        }
        if (sg_worker_open(w, h, i, d, sg_proxy_lane_of(h->cfg.proxy, i),
                           sg_gateway_worker_of(h->cfg.gateway, i), err, errlen) != 0)
            return -1;
    }
    return 0;
}

sg_http *sg_http_start(const sg_http_config *cfg, char *err, size_t errlen)
{
    if (!sg_wire_interposed()) {
        /* Without it libmicrohttpd would read unchecked bytes: fail closed. */
        sg_errf(err, errlen, "the strict request scanner is not bound to libmicrohttpd's reads");
        return NULL;
    }
    sg_http *h = http_new(cfg, err, errlen);
    if (!h) return NULL;
    if (open_workers(h, cfg->host ? cfg->host : "127.0.0.1", err, errlen) != 0) {
        http_free(h);
        return NULL;
    }
    sg_gateway_on_wake(cfg->gateway, wake_workers, h);
    for (unsigned i = 0; i < h->nworkers; i++) {
        if (sg_worker_start(&h->workers[i], err, errlen) != 0) {
            sg_http_stop(h);
            return NULL;
        }
    }
    return h;
}

uint16_t sg_http_port(const sg_http *h)
{
    return h->port;
}

void sg_http_stop(sg_http *h)
{
    if (!h) return;
    atomic_store(&h->stopping, 1);
    for (unsigned i = 0; i < h->nworkers; i++)
        sg_worker_wake(&h->workers[i]);
    for (unsigned i = 0; i < h->nworkers; i++)
        sg_worker_join(&h->workers[i]);
    sg_gateway_on_wake(h->cfg.gateway, NULL, NULL);
    /* Every transfer has failed and its connection was resumed: stopping the
     * daemons now closes what is left. */
    http_free(h);
}
