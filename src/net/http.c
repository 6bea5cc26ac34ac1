/* http.c -- the libmicrohttpd front: limits, routes, streaming.
 *
 * Why it is shaped this way: each worker thread runs its own event loop over
 * one epoll set holding a libmicrohttpd daemon (MHD_USE_EPOLL, driven with
 * MHD_run; the daemons share the port with SO_REUSEPORT) and the sockets of
 * its own proxy lane (curl). A worker is also one gateway worker (its own Lua
 * policy state and token cache, found through a thread-local index), so a
 * request is received, decided, forwarded and answered on one thread: no
 * lock on the hot path and no hand-off between threads. A forwarded request
 * never blocks its thread: the connection is suspended while the upstream
 * has nothing for it and resumed when it has; a content reader streams the
 * body back in pieces. A request whose token names a key not known yet, or
 * whose opaque token is being introspected, is suspended the same way while
 * the key refresher thread refetches the JWKS or an introspection thread
 * asks the authorization server (the worker's event loop keeps serving
 * everyone else), and decided when that has finished.
 * Limits are enforced before any parsing: strict request framing (400/501,
 * src/wire.c, on the raw bytes before libmicrohttpd reads them),
 * connections (503; when full, the connections that have not delivered a
 * request are shed first, oldest first), header memory (431, by
 * libmicrohttpd itself), body size (413, while uploading), time (408 for a
 * request head not complete within the header timeout or a body below the
 * minimum rate, swept every 250 ms; idle connections closed).
 * Memory: an idle keep-alive connection must cost little (MCP clients hold
 * theirs for hours), but libmicrohttpd zeroes its whole per-connection pool
 * (--max-header, 32 KiB) after every request, which makes all of it
 * resident. The same sweep gives the pool's all-zero pages of a connection
 * idle for a whole sweep back to the kernel (they read back as zeros, so
 * nothing changes for libmicrohttpd), and trims the heap after a burst of
 * closes so the memory of connections that are gone is returned too. */
#include "net/http.h"
#include "net/wire.h"
#include "base/metrics.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#define WELL_KNOWN       "/.well-known/oauth-protected-resource"
#define MAX_HEADERS      128
#define CONNECTION_SLACK 16 /* beyond the soft limit, so the 503 can be sent */
#define DISCARD_FACTOR   4  /* an oversized chunked body is read this far, then dropped */
#define SSE_ERROR_MAX    (SG_MCP_MAX_ID_LEN + 256)
#define STREAM_BLOCK     1024 /* libmicrohttpd's block for a streamed answer (queue_stream) */

#define SWEEP_NS          250000000ull /* slow-client limits are checked this often */
#define SHED_BATCH        64           /* at most this many closed per sweep... */
#define SHED_BATCH_GAP_NS 5000000ull   /* ...the next batch this soon after */
#define TRIM_AFTER_CLOSES 64           /* closes in a burst before the heap is trimmed */

#define TAG_MHD  ((uint64_t)0)
#define TAG_WAKE ((uint64_t)2 << 32)

struct http_worker;

/* One client connection, from accept to close: its raw-byte scanner and what
 * the slow-client limits and the shedding order need. */
typedef struct conn_slot {
    sg_wire_conn wire;
    struct http_worker *worker;
    struct conn_slot *prev, *next; /* the worker's connections, oldest first */
    int busy;                      /* libmicrohttpd holds a request head from it */
    int streaming;                 /* ...and its answer is streaming (an SSE stream) */
    int collecting_body;           /* that request's body is arriving, nothing answered yet */
    int counted;                   /* it counts against --max-connections */
    unsigned pool_seen_answered;   /* wire.answered at the last sweep */
    int pool_released;             /* its pool's zero pages are given back (idle since) */
} conn_slot;

typedef struct http_worker {
    struct sg_http *h;
    unsigned index;
    conn_slot *oldest, *newest;
    uint64_t next_sweep_ns;
    unsigned closes_since_trim; /* connections closed since the heap was last trimmed */
    unsigned closes_at_sweep;   /* ...as counted at the previous sweep */
    struct MHD_Daemon *daemon;
    sg_proxy_lane *lane;
    sg_gateway_worker *gateway; /* the gateway's context for this thread */
    int epfd, evfd;
    pthread_t thread;
    int started;
    /* suspended until a key refetch or an introspection call finishes */
    struct exchange *waiters;
} http_worker;

struct sg_http {
    sg_http_config cfg;
    uint16_t port;
    char port_text[8]; /* the bound port in decimal, for the Host check */
    unsigned nworkers;
    http_worker *workers;
    atomic_int stopping;
    atomic_int connections;
    atomic_int forwarded; /* exchanges holding a transfer */
    size_t page_size;     /* for sweep_memory; 0: nothing is given back */
};

enum { PHASE_BODY, PHASE_WAIT, PHASE_HEAD, PHASE_COLLECT, PHASE_STREAM, PHASE_DONE };

typedef struct exchange {
    sg_http *h;
    struct MHD_Connection *conn;
    conn_slot *slot; /* NULL only if libmicrohttpd did not report the connection */
    unsigned worker;
    int phase;
    uint64_t started_ns;
    sg_buf body;
    size_t discarded; /* body bytes seen beyond the limit */
    int late_status;  /* 413/408 decided mid-upload, sent when the upload ends */
    sg_gateway_reply reply;
    sg_transfer *xfer;
    int sse;                       /* the streamed answer is text/event-stream */
    char tail[2];                  /* last two bytes streamed (SSE event boundary) */
    char sse_error[SSE_ERROR_MAX]; /* pending closing error event */
    size_t sse_error_len, sse_error_off;
    int sse_error_armed;
    sg_transfer_head head; /* PHASE_COLLECT: the upstream's status and headers */
    sg_buf answer;         /* PHASE_COLLECT: a list answer, whole, for filtering */
    char carry[64];        /* last bytes from upstream, for a notification split in two */
    size_t ncarry;
    uint64_t upstream_started_ns;       /* when it was forwarded (upstream latency) */
    int sse_counted;                    /* counted in the open event streams gauge */
    uint64_t wait_ticket;               /* PHASE_WAIT: what it waits for */
    struct exchange *kw_prev, *kw_next; /* PHASE_WAIT: in the worker's waiters */
} exchange;

static _Thread_local const sg_http *tl_owner;
static _Thread_local unsigned tl_worker;

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

static enum MHD_Result queue_bytes(struct MHD_Connection *conn, unsigned status, const char *ctype,
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
    enum MHD_Result ok = sg_buf_ok(&b) ? queue_bytes(conn, status, "application/json", b.data,
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

typedef struct header_list {
    sg_header items[MAX_HEADERS];
    size_t n;
    int overflow;
} header_list;

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
        if (strcasecmp(l->items[i].name, name) == 0) n++;
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
    if (strcasecmp(key, "Origin") == 0 && !origin_allowed(oc->h, value ? value : "")) oc->bad = 1;
    return MHD_YES;
}

static int worker_index(sg_http *h, unsigned *out)
{
    if (tl_owner != h) return -1; /* only the workers' own threads serve */
    *out = tl_worker;
    return 0;
}

/* ---- connection slots: slow clients and shedding ------------------------------ */

static conn_slot *slot_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void slot_unlink(conn_slot *c)
{
    http_worker *w = c->worker;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->oldest = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        w->newest = c->prev;
    c->prev = c->next = NULL;
}

/* Closes a connection from outside libmicrohttpd (status 0: silently); it
 * no longer counts against --max-connections from this moment. */
static void slot_shed(conn_slot *c, int status, const char *why)
{
    if (c->wire.closed) return;
    sg_wire_refuse(&c->wire, status, why);
    if (c->counted) {
        c->counted = 0;
        atomic_fetch_sub(&c->worker->h->connections, 1);
    }
}

/* Shedding order when every slot is taken: first the connections that never
 * delivered a request (a slow or silent client holds nothing else), then
 * those waiting, after a request, on the next head; oldest first within
 * each. A connection whose request is being served is never shed. */
static conn_slot *shed_candidate(http_worker *w, const conn_slot *except)
{
    conn_slot *idle_after_request = NULL;
    for (conn_slot *c = w->oldest; c; c = c->next) {
        if (c == except || c->busy || c->wire.closed) continue;
        if (c->wire.answered == 0) return c;
        if (!idle_after_request) idle_after_request = c;
    }
    return idle_after_request;
}

static void slot_open(http_worker *w, struct MHD_Connection *conn, void **socket_context)
{
    sg_http *h = w->h;
    conn_slot *c = calloc(1, sizeof *c);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (c) c->wire.fd = ci ? ci->connect_fd : -1;
    if (!c || sg_wire_attach(&c->wire, sg_now_mono_ns()) != 0) {
        /* Unchecked bytes must never reach libmicrohttpd: close it. */
        if (ci) shutdown(ci->connect_fd, SHUT_RDWR);
        free(c);
        *socket_context = NULL;
        return;
    }
    c->worker = w;
    c->prev = w->newest;
    if (w->newest)
        w->newest->next = c;
    else
        w->oldest = c;
    w->newest = c;
    c->counted = 1;
    *socket_context = c;
    sg_metric_gauge_add(SG_G_CONNECTIONS, 1);
    if (atomic_fetch_add(&h->connections, 1) + 1 > (int)h->cfg.limits.max_connections) {
        conn_slot *victim = shed_candidate(w, c);
        if (victim) {
            int partial = sg_wire_scan_phase(&victim->wire.scan) != SG_WIRE_IDLE;
            sg_log(SG_LOG_DEBUG, "http: connections full: shedding one that %s",
                   victim->wire.answered ? "is between requests" : "never completed a request");
            slot_shed(victim, partial ? 503 : 0, "Too many connections");
        }
    }
}

static void slot_close(conn_slot *c)
{
    if (!c) return;
    sg_wire_detach(&c->wire);
    slot_unlink(c);
    sg_metric_gauge_add(SG_G_CONNECTIONS, -1);
    if (c->counted) atomic_fetch_sub(&c->worker->h->connections, 1);
    c->worker->closes_since_trim++;
    free(c);
}

/* Gives the whole pages of [base, base + size) that hold only zeros back to
 * the kernel (MADV_DONTNEED: private anonymous memory reads back as zeros,
 * so nothing anyone reads changes). Only pages verified zero now are given
 * back: whatever the range holds, no byte changes. Can't fail (a refused
 * madvise leaves the pages as they were). */
static void release_zero_pages(uintptr_t base, size_t size, size_t page)
{
    static const unsigned char zero_page[4096];
    if (!page || page > sizeof zero_page) return;
    uintptr_t p = (base + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t end = (base + size) & ~(uintptr_t)(page - 1);
    uintptr_t run = 0; /* start of a run of zero pages, 0 when none */
    for (; p < end; p += page) {
        int zero = memcmp((const void *)p, zero_page, page) == 0;
        if (zero && !run) run = p;
        if (!zero && run) {
            madvise((void *)run, p - run, MADV_DONTNEED);
            run = 0;
        }
    }
    if (run) madvise((void *)run, end - run, MADV_DONTNEED);
}

/* The memory half of the sweep: a connection idle between requests for a
 * whole sweep, or streaming an answer (an SSE stream, open for hours), has
 * its pool's zero pages given back, once per idle spell or stream (what a
 * stream writes later stays resident: its write buffer, a few pages);
 * after a burst of closes (some closed, none since the last sweep) the
 * heap is trimmed so that what they held is returned. */
static void sweep_memory(http_worker *w)
{
    size_t pool_size = w->h->cfg.limits.max_header;
    for (conn_slot *c = w->oldest; c; c = c->next) {
        if (c->wire.answered != c->pool_seen_answered) {
            c->pool_seen_answered = c->wire.answered;
            c->pool_released = 0;
            continue;
        }
        int idle =
            !c->busy && c->wire.answered && sg_wire_scan_phase(&c->wire.scan) == SG_WIRE_IDLE;
        if (c->pool_released || c->wire.closed || !c->wire.read_base || !(idle || c->streaming))
            continue;
        release_zero_pages(c->wire.read_base, pool_size, w->h->page_size);
        c->pool_released = 1;
    }
    if (w->closes_since_trim >= TRIM_AFTER_CLOSES && w->closes_since_trim == w->closes_at_sweep) {
        malloc_trim(0);
        w->closes_since_trim = 0;
    }
    w->closes_at_sweep = w->closes_since_trim;
}

/* The slow-client limits, every SWEEP_NS: a request head must be complete
 * within --header-timeout of its first byte (a new connection's first head
 * within --header-timeout of the accept: silence is shed without an
 * answer); a body must keep up --min-body-rate after --body-grace. Returns
 * 1 when it stopped at SHED_BATCH (sweep again soon). */
static int sweep_slow_clients(http_worker *w, uint64_t now)
{
    /* Heads that arrived together run out together: shedding a thousand in
     * one go would hold the loop (and honest requests) for tens of ms, so
     * it goes in batches with the loop running in between. */
    int shed = 0;
    const sg_http_limits *l = &w->h->cfg.limits;
    uint64_t head_ns = (uint64_t)l->header_timeout_s * 1000000000ull;
    uint64_t grace_ns = (uint64_t)l->body_grace_s * 1000000000ull;
    for (conn_slot *c = w->oldest; c && shed < SHED_BATCH; c = c->next) {
        if (c->wire.closed) continue;
        sg_wire_phase phase = sg_wire_scan_phase(&c->wire.scan);
        if (!c->busy && phase == SG_WIRE_HEAD && c->wire.head_started_ns &&
            now - c->wire.head_started_ns > head_ns) {
            slot_shed(c, 408, "Request header timeout");
            shed++;
        } else if (!c->busy && phase == SG_WIRE_IDLE && c->wire.answered == 0 &&
                   now - c->wire.accepted_ns > head_ns) {
            slot_shed(c, 0, NULL);
            shed++;
        } else if (c->collecting_body && phase == SG_WIRE_BODY && l->min_body_rate &&
                   c->wire.body_started_ns && now - c->wire.body_started_ns > grace_ns) {
            uint64_t late_ms = (now - c->wire.body_started_ns - grace_ns) / 1000000u;
            uint64_t owed = (uint64_t)l->min_body_rate * late_ms / 1000u;
            if (c->wire.scan.body_bytes < owed) {
                slot_shed(c, 408, "Request body too slow");
                shed++;
            }
        }
    }
    return shed >= SHED_BATCH;
}

/* ---- suspend / resume glue for the proxy ----------------------------------- */

static void ex_suspend(void *ud)
{
    exchange *ex = ud;
    MHD_suspend_connection(ex->conn);
}

static void ex_resume(void *ud)
{
    exchange *ex = ud;
    MHD_resume_connection(ex->conn);
}

/* ---- streaming the upstream answer ------------------------------------------ */

static void arm_sse_error(exchange *ex, sg_proxy_error e)
{
    sg_buf b = SG_BUF_INIT;
    sg_buf_puts(&b, "event: message\ndata: ");
    const char *id = ex->reply.id_raw;
    sg_mcp_error_render(&b, *id ? id : NULL, strlen(id), SG_JSONRPC_INTERNAL_ERROR,
                        sg_proxy_error_text(e), NULL);
    sg_buf_puts(&b, "\n\n");
    if (sg_buf_ok(&b) && b.len <= sizeof ex->sse_error) {
        memcpy(ex->sse_error, b.data, b.len);
        ex->sse_error_len = b.len;
        ex->sse_error_armed = 1;
    }
    sg_buf_free(&b);
}

/* The upstream says its tools changed (MCP notifications/tools/list_changed)
 * in whatever stream it likes, split at any byte: look for the method name
 * in what passes, across chunk boundaries, and have the tool catalogue
 * refetched. A false alarm costs one refetch; nothing is decided by it. */
static void watch_tools_changed(exchange *ex, const char *p, size_t n)
{
    static const char needle[] = "notifications/tools/list_changed";
    enum { NEEDLE = sizeof needle - 1, KEEP = NEEDLE - 1 };
    _Static_assert(KEEP <= sizeof ex->carry, "carry holds a needle less one byte");
    if (!sg_gateway_keeps_catalog(ex->h->cfg.gateway)) return;
    char joint[2 * KEEP];
    size_t head = n < KEEP ? n : KEEP;
    memcpy(joint, ex->carry, ex->ncarry);
    memcpy(joint + ex->ncarry, p, head);
    size_t nj = ex->ncarry + head;
    int hit = sg_memmem(joint, nj, needle, NEEDLE) || sg_memmem(p, n, needle, NEEDLE);
    if (n >= KEEP) {
        memcpy(ex->carry, p + n - KEEP, KEEP);
        ex->ncarry = KEEP;
    } else {
        size_t keep = nj < KEEP ? nj : KEEP;
        memmove(ex->carry, joint + nj - keep, keep);
        ex->ncarry = keep;
    }
    if (hit) sg_gateway_tools_changed(ex->h->cfg.gateway);
}

static ssize_t on_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    exchange *ex = cls;
    if (ex->sse_error_armed) {
        size_t left = ex->sse_error_len - ex->sse_error_off;
        if (left == 0) return MHD_CONTENT_READER_END_OF_STREAM;
        size_t n = left < max ? left : max;
        memcpy(buf, ex->sse_error + ex->sse_error_off, n);
        ex->sse_error_off += n;
        return (ssize_t)n;
    }
    for (;;) {
        long n = sg_transfer_read(ex->xfer, buf, max);
        if (n > 0) {
            watch_tools_changed(ex, buf, (size_t)n);
            if (n >= 2) {
                ex->tail[0] = buf[n - 2];
                ex->tail[1] = buf[n - 1];
            } else {
                ex->tail[0] = ex->tail[1];
                ex->tail[1] = buf[0];
            }
            return n;
        }
        if (n == SG_TRANSFER_EOF) return MHD_CONTENT_READER_END_OF_STREAM;
        if (n == SG_TRANSFER_FAILED) {
            sg_proxy_error e = sg_transfer_error(ex->xfer);
            sg_metric_inc(SG_M_UPSTREAM_ERRORS + (int)e);
            sg_log(e == SG_PROXY_ECLIENT ? SG_LOG_DEBUG : SG_LOG_WARN,
                   "upstream stream broke off: %s", sg_proxy_error_text(e));
            /* On an SSE event boundary the client can be told in-band, with
             * the request's id; anywhere else a truncated body must look
             * truncated, so the chunked encoding is left unterminated. */
            int boundary = ex->tail[1] == '\n' && (ex->tail[0] == '\n' || ex->tail[0] == 0);
            if (ex->sse && boundary && e != SG_PROXY_ECLIENT) {
                arm_sse_error(ex, e);
                if (ex->sse_error_armed) return on_read(cls, pos, buf, max);
            }
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (sg_transfer_park(ex->xfer, SG_WANT_DATA)) return 0;
    }
}

/* ---- audit records ---------------------------------------------------------- */

/* Completes the request's audit records, if it has any waiting (only when
 * the gateway audits). upstream_outcome NULL: classified from body. */
static void audit_done(exchange *ex, int status, int upstream_status, const char *upstream_outcome,
                       const char *content_type, const char *body, size_t len)
{
    sg_gateway_outcome o = {.status = status,
                            .upstream_status = upstream_status,
                            .upstream_outcome = upstream_outcome,
                            .content_type = content_type,
                            .body = body,
                            .body_len = len,
                            .started_ns = ex->started_ns};
    sg_gateway_audit_finish(ex->h->cfg.gateway, &ex->reply, &o);
}

static const char *proxy_outcome(sg_proxy_error e)
{
    switch (e) {
    case SG_PROXY_EUNREACHABLE:
        return "unreachable";
    case SG_PROXY_ETIMEOUT:
        return "timeout";
    case SG_PROXY_ECLIENT:
        return "client_gone";
    case SG_PROXY_ESHUTDOWN:
        return "shutdown";
    case SG_PROXY_EUPSTREAM:
        return "broken";
    default:
        return "error";
    }
}

/* keep_status: the upstream's own error status (not 2xx) to answer with
 * instead of 502, or 0. */
static enum MHD_Result queue_upstream_error_status(exchange *ex, sg_proxy_error e, int keep_status)
{
    int status = 502;
    sg_buf b = SG_BUF_INIT;
    sg_metric_inc(SG_M_UPSTREAM_ERRORS + (int)e);
    sg_gateway_upstream_error(&ex->reply, e, &status, &b);
    if (keep_status) status = keep_status;
    if (ex->reply.naudit)
        audit_done(ex, status, ex->phase == PHASE_COLLECT ? ex->head.status : 0, proxy_outcome(e),
                   NULL, NULL, 0);
    enum MHD_Result ok = sg_buf_ok(&b) ? queue_bytes(ex->conn, (unsigned)status, "application/json",
                                                     b.data, b.len, NULL, NULL, 0)
                                       : MHD_NO;
    sg_buf_free(&b);
    ex->phase = PHASE_DONE;
    return ok;
}

static enum MHD_Result queue_upstream_error(exchange *ex, sg_proxy_error e)
{
    return queue_upstream_error_status(ex, e, 0);
}

/* A list answer is read whole (bounded), filtered on this thread (it owns
 * the worker's policy state) and sent in one piece. An error status is
 * filtered too (its body could carry a list a client reads anyway); when
 * its body cannot be accounted for, the status is kept (a 404 still tells
 * the client its session is gone) and the body is the gateway's own. */
static enum MHD_Result advance_collect(exchange *ex)
{
    char chunk[16 * 1024];
    for (;;) {
        long n = sg_transfer_read(ex->xfer, chunk, sizeof chunk);
        if (n > 0) {
            if (ex->answer.len + (size_t)n > SG_GATEWAY_MAX_LIST_BYTES)
                return queue_upstream_error(ex, SG_PROXY_EUPSTREAM);
            sg_buf_append(&ex->answer, chunk, (size_t)n);
            if (!sg_buf_ok(&ex->answer)) return queue_upstream_error(ex, SG_PROXY_ENOMEM);
            watch_tools_changed(ex, chunk, (size_t)n);
            continue;
        }
        if (n == SG_TRANSFER_FAILED) return queue_upstream_error(ex, sg_transfer_error(ex->xfer));
        if (n == SG_TRANSFER_EOF) break;
        if (sg_transfer_park(ex->xfer, SG_WANT_DATA)) return MHD_YES;
    }
    sg_buf filtered = SG_BUF_INIT;
    enum MHD_Result ok;
    if (sg_gateway_filter(ex->h->cfg.gateway, ex->h->workers[ex->worker].gateway, &ex->reply,
                          ex->head.content_type, ex->answer.data ? ex->answer.data : "",
                          ex->answer.len, &filtered) != 0) {
        sg_log(SG_LOG_WARN, "upstream list answer could not be filtered: refused");
        int st = ex->head.status;
        ok = queue_upstream_error_status(ex, SG_PROXY_EUPSTREAM, st >= 400 && st <= 599 ? st : 0);
    } else {
        if (ex->reply.naudit)
            audit_done(ex, ex->head.status, ex->head.status, NULL, ex->head.content_type,
                       ex->answer.data ? ex->answer.data : "", ex->answer.len);
        struct MHD_Response *r = MHD_create_response_from_buffer(
            filtered.len, filtered.data ? filtered.data : (char *)"", MHD_RESPMEM_MUST_COPY);
        ok = MHD_NO;
        if (r) {
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ex->head.content_type);
            if (ex->head.session_id)
                MHD_add_response_header(r, "Mcp-Session-Id", ex->head.session_id);
            MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
            ok = MHD_queue_response(ex->conn, (unsigned)ex->head.status, r);
            MHD_destroy_response(r);
        }
        ex->phase = PHASE_DONE;
    }
    sg_buf_free(&filtered);
    sg_buf_free(&ex->answer);
    return ok;
}

/* The upstream's headers are in: start the streamed response. */
static enum MHD_Result queue_stream(exchange *ex, const sg_transfer_head *head)
{
    if (ex->reply.filter) {
        ex->head = *head; /* strings owned by the transfer, which we hold */
        ex->phase = PHASE_COLLECT;
        return advance_collect(ex);
    }
    if (ex->reply.accepted_only && head->status >= 200 && head->status < 300) {
        ex->phase = PHASE_DONE;
        sg_transfer_release(ex->xfer);
        ex->xfer = NULL;
        atomic_fetch_sub(&ex->h->forwarded, 1);
        if (ex->reply.naudit) audit_done(ex, 202, head->status, "ok", NULL, NULL, 0);
        return queue_bytes(ex->conn, 202, NULL, NULL, 0, NULL, NULL, 0);
    }
    if (head->complete) {
        /* The whole (small, non-SSE) answer is here: send it with a
         * Content-Length in one piece instead of streaming it. */
        size_t len;
        char *body = sg_transfer_take_body(ex->xfer, &len);
        if (ex->reply.naudit && body)
            audit_done(ex, head->status, head->status, NULL, head->content_type, body, len);
        struct MHD_Response *r =
            body ? MHD_create_response_from_buffer_with_free_callback(len, body, free) : NULL;
        if (!r) {
            free(body);
            return queue_upstream_error(ex, SG_PROXY_ENOMEM);
        }
        watch_tools_changed(ex, body, len);
        if (head->content_type)
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, head->content_type);
        if (head->session_id) MHD_add_response_header(r, "Mcp-Session-Id", head->session_id);
        ex->phase = PHASE_DONE;
        sg_transfer_release(ex->xfer);
        ex->xfer = NULL;
        atomic_fetch_sub(&ex->h->forwarded, 1);
        enum MHD_Result ok = MHD_queue_response(ex->conn, (unsigned)head->status, r);
        MHD_destroy_response(r);
        return ok;
    }
    /* The block is libmicrohttpd's buffer for an HTTP/1.0 client's
     * read-until-close body only (chunked answers are read straight into the
     * connection's pool), but it is allocated zeroed for every stream:
     * keep it small, an open SSE stream holds it for hours. */
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, on_read, ex, NULL);
    if (!r) return MHD_NO;
    if (head->content_type) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, head->content_type);
        ex->sse = strncasecmp(head->content_type, "text/event-stream", 17) == 0;
    }
    if (ex->sse) {
        sg_metric_gauge_add(SG_G_SSE_STREAMS, 1);
        ex->sse_counted = 1;
    }
    if (head->session_id) MHD_add_response_header(r, "Mcp-Session-Id", head->session_id);
    if (ex->sse) MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    ex->tail[0] = ex->tail[1] = '\n'; /* the stream starts on an event boundary */
    ex->phase = PHASE_STREAM;
    if (ex->slot) ex->slot->streaming = 1;
    if (ex->reply.naudit) audit_done(ex, head->status, head->status, NULL, NULL, NULL, 0);
    enum MHD_Result ok = MHD_queue_response(ex->conn, (unsigned)head->status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Waits (by parking) for the upstream's headers, then answers. */
static enum MHD_Result advance_head(exchange *ex)
{
    for (;;) {
        sg_transfer_head head;
        int r = sg_transfer_head_get(ex->xfer, &head);
        if (r > 0) {
            if (sg_metrics_enabled()) {
                sg_metric_observe(SG_H_UPSTREAM_SECONDS,
                                  sg_now_mono_ns() - ex->upstream_started_ns);
                sg_metric_upstream_seen();
            }
            return queue_stream(ex, &head);
        }
        if (r < 0) return queue_upstream_error(ex, sg_transfer_error(ex->xfer));
        if (sg_transfer_park(ex->xfer, SG_WANT_HEAD)) return MHD_YES;
    }
}

static enum MHD_Result forward(exchange *ex, const char *method, const header_list *hl)
{
    sg_proxy_request preq = {.method = method,
                             .headers = hl->items,
                             .nheaders = hl->n,
                             .extra = ex->reply.identity,
                             .nextra = ex->reply.nidentity,
                             .body = ex->body.data,
                             .body_len = ex->body.len};
    sg_transfer_ops ops = {.suspend = ex_suspend, .resume = ex_resume, .ud = ex};
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(ex->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = ci ? ci->connect_fd : -1;
    if (sg_metrics_enabled()) ex->upstream_started_ns = sg_now_mono_ns();
    ex->xfer = sg_proxy_start(ex->h->workers[ex->worker].lane, &preq, &ops, fd);
    if (!ex->xfer) return queue_upstream_error(ex, SG_PROXY_ESHUTDOWN);
    atomic_fetch_add(&ex->h->forwarded, 1);
    ex->phase = PHASE_HEAD;
    return advance_head(ex);
}

/* ---- waiting for a key refetch or an introspection call ----------------------- */

/* Suspends the request until the worker loop sees what it waits for finished
 * (resume_waiters). */
static void park_until_done(exchange *ex)
{
    http_worker *w = &ex->h->workers[ex->worker];
    ex->wait_ticket = ex->reply.wait_ticket;
    ex->phase = PHASE_WAIT;
    ex->kw_prev = NULL;
    ex->kw_next = w->waiters;
    if (w->waiters) w->waiters->kw_prev = ex;
    w->waiters = ex;
    MHD_suspend_connection(ex->conn);
}

static void unlink_waiter(exchange *ex)
{
    http_worker *w = &ex->h->workers[ex->worker];
    if (ex->kw_prev)
        ex->kw_prev->kw_next = ex->kw_next;
    else
        w->waiters = ex->kw_next;
    if (ex->kw_next) ex->kw_next->kw_prev = ex->kw_prev;
    ex->kw_prev = ex->kw_next = NULL;
}

/* Resumes the parked requests whose wait is over (all of them when
 * the worker is shutting down); they are decided in the next MHD_run.
 * Returns how many. */
static int resume_waiters(http_worker *w, int all)
{
    int n = 0;
    for (exchange *ex = w->waiters, *next; ex; ex = next) {
        next = ex->kw_next;
        if (!all && !sg_gateway_wait_done(w->h->cfg.gateway, ex->wait_ticket)) continue;
        unlink_waiter(ex);
        MHD_resume_connection(ex->conn);
        n++;
    }
    return n;
}

/* The key refresher thread finished a refetch, or an introspection thread
 * a call: wake every worker (they look at their own waiters). */
static void wake_workers(void *ud)
{
    sg_http *h = ud;
    for (unsigned i = 0; i < h->nworkers; i++) {
        uint64_t one = 1;
        ssize_t ignored = write(h->workers[i].evfd, &one, sizeof one);
        (void)ignored;
    }
}

/* ---- the request handler ------------------------------------------------------ */

static enum MHD_Result decide(exchange *ex, const char *method, int waited);

static enum MHD_Result first_call(sg_http *h, exchange *ex, const char *url, const char *method)
{
    struct MHD_Connection *conn = ex->conn;
    if (atomic_load(&h->connections) > (int)h->cfg.limits.max_connections)
        return queue_error(conn, 503, SG_JSONRPC_INTERNAL_ERROR, "Too many connections", NULL, 1);
    if (worker_index(h, &ex->worker) != 0)
        return queue_error(conn, 503, SG_JSONRPC_INTERNAL_ERROR, "No worker available", NULL, 1);

    int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (strcmp(url, "/healthz") == 0) {
        if (!is_get)
            return queue_error(conn, 405, SG_JSONRPC_INVALID_REQUEST, "Method not allowed",
                               "GET, HEAD", 0);
        static const char ok[] = "{\"status\":\"ok\"}";
        return queue_bytes(conn, 200, "application/json", ok, sizeof ok - 1, NULL, NULL, 0);
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
        if (sg_gateway_metadata(h->cfg.gateway, h->workers[ex->worker].gateway, &b) == 0)
            ok = queue_bytes(conn, 200, "application/json", b.data, b.len, NULL, NULL, 0);
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
        if (end != cl && n > h->cfg.limits.max_body)
            return queue_error(conn, 413, SG_JSONRPC_INVALID_REQUEST, "Request body too large",
                               NULL, 1);
    }
    ex->phase = PHASE_BODY;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    sg_http *h = cls;
    exchange *ex = *con_cls;
    if (!ex) {
        ex = calloc(1, sizeof *ex);
        if (!ex) return MHD_NO;
        ex->h = h;
        ex->conn = conn;
        ex->started_ns = sg_now_mono_ns();
        ex->phase = PHASE_DONE;
        sg_gateway_reply_init(&ex->reply);
        *con_cls = ex;
        if ((ex->slot = slot_of(conn)) != NULL) ex->slot->busy = 1;
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
        return advance_head(ex);
    case PHASE_COLLECT:
        return advance_collect(ex);
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

/* The client's numeric address, for the audit log ("" when unknown). */
static void client_address(struct MHD_Connection *conn, char *out, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    out[0] = 0;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)len);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)len);
}

/* Decides the whole request and answers, forwards, or (its token's key is
 * being refetched, or its opaque token introspected) parks it until that
 * has finished. */
static enum MHD_Result decide(exchange *ex, const char *method, int waited)
{
    sg_http *h = ex->h;
    struct MHD_Connection *conn = ex->conn;
    header_list *hl = malloc(sizeof *hl);
    if (!hl) return MHD_NO;
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
        char client[INET6_ADDRSTRLEN] = "";
        if (sg_gateway_audits(h->cfg.gateway)) client_address(conn, client, sizeof client);
        sg_gateway_request greq = {.worker = h->workers[ex->worker].gateway,
                                   .method = method,
                                   .headers = hl->items,
                                   .nheaders = hl->n,
                                   .body = ex->body.data ? ex->body.data : "",
                                   .body_len = ex->body.len,
                                   .waited = waited,
                                   .client_addr = client[0] ? client : NULL};
        sg_gateway_action next = sg_gateway_handle(h->cfg.gateway, &greq, &ex->reply);
        if (next == SG_GATEWAY_FORWARD) {
            ok = forward(ex, method, hl);
        } else if (next == SG_GATEWAY_WAIT) {
            park_until_done(ex);
            ok = MHD_YES;
        } else {
            sg_gateway_reply *r = &ex->reply;
            ok =
                queue_bytes(conn, (unsigned)r->status, r->content_type, r->body.data, r->body.len,
                            r->www_authenticate.len ? r->www_authenticate.data : NULL, r->allow, 0);
            if (r->naudit) audit_done(ex, r->status, 0, NULL, NULL, NULL, 0);
        }
    }
    free(hl);
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
    if (ex->phase == PHASE_WAIT) unlink_waiter(ex);
    /* Forwarded, and the client left before any answer was queued. */
    if (ex->reply.naudit) audit_done(ex, 0, 0, "client_gone", NULL, NULL, 0);
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
    sg_http *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        unsigned wi;
        if (worker_index(h, &wi) == 0) {
            slot_open(&h->workers[wi], conn, socket_context);
        } else {
            const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
            if (ci) shutdown(ci->connect_fd, SHUT_RDWR); /* not a worker: never served */
            *socket_context = NULL;
        }
    } else {
        slot_close(*socket_context);
        *socket_context = NULL;
    }
}

/* ---- lifecycle ------------------------------------------------------------------ */

/* One worker's event loop: libmicrohttpd and the proxy lane share one epoll
 * set and one thread. On shutdown the worker stops accepting, fails its
 * in-flight transfers (their connections resume and get their 503s or error
 * events) and keeps serving up to a second for those answers to leave. */
static void *worker_main(void *arg)
{
    http_worker *w = arg;
    sg_http *h = w->h;
    tl_owner = h;
    tl_worker = w->index;
    struct epoll_event evs[64];
    int draining = 0;
    uint64_t drain_deadline = 0;
    for (;;) {
        uint64_t now = sg_now_mono_ns();
        if (!draining && atomic_load(&h->stopping)) {
            draining = 1;
            drain_deadline = now + 1000000000ull;
            MHD_socket ls = MHD_quiesce_daemon(w->daemon); /* ours to close now */
            if (ls != MHD_INVALID_SOCKET) close(ls);
            sg_proxy_lane_shutdown(w->lane);
        }
        int resumed = w->waiters ? resume_waiters(w, draining) : 0;
        if (draining && !resumed && (atomic_load(&h->forwarded) <= 0 || now >= drain_deadline))
            break;
        if (now >= w->next_sweep_ns) {
            int more = sweep_slow_clients(w, now);
            if (!more) sweep_memory(w);
            w->next_sweep_ns = now + (more ? SHED_BATCH_GAP_NS : SWEEP_NS);
        }
        long timeout = resumed ? 0 : sg_proxy_lane_timeout_ms(w->lane);
        long to_sweep = (long)((w->next_sweep_ns - now) / 1000000u) + 1;
        if (timeout < 0 || timeout > to_sweep) timeout = to_sweep;
        MHD_UNSIGNED_LONG_LONG mhd_ms;
        if (MHD_get_timeout(w->daemon, &mhd_ms) == MHD_YES && (long long)mhd_ms < timeout)
            timeout = (long)mhd_ms;
        if (draining && timeout > 10) timeout = 10;
        if (resumed) timeout = 0;
        int n = epoll_wait(w->epfd, evs, (int)SG_ARRAY_LEN(evs), (int)timeout);
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag & SG_PROXY_EPOLL_TAG) {
                sg_proxy_lane_event(w->lane, tag, evs[i].events);
            } else if (tag == TAG_WAKE) {
                uint64_t count;
                ssize_t ignored = read(w->evfd, &count, sizeof count);
                (void)ignored;
            }
        }
        sg_proxy_lane_run(w->lane);
        MHD_run(w->daemon);
    }
    sg_wire_thread_free();
    return NULL;
}

static int epoll_add(int epfd, int fd, uint64_t tag)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void workers_free(sg_http *h)
{
    for (unsigned i = 0; i < h->nworkers; i++) {
        http_worker *w = &h->workers[i];
        if (w->daemon) MHD_stop_daemon(w->daemon);
        if (w->epfd >= 0) close(w->epfd);
        if (w->evfd >= 0) close(w->evfd);
    }
    free(h->workers);
    free(h);
}

sg_http *sg_http_start(const sg_http_config *cfg, char *err, size_t errlen)
{
    sg_http *h = calloc(1, sizeof *h);
    if (!h) {
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = *cfg;
    sg_http_limits *l = &h->cfg.limits;
    if (!l->max_body) l->max_body = 1024 * 1024;
    /* libmicrohttpd zeroes it per request: keep it small. Above 32 KiB it
     * maps each connection's pool on pages of its own (below, it takes it
     * from the heap): then every page of an idle pool can be given back
     * (sweep_memory) and a closed connection's pool leaves at once. */
    if (!l->max_header) l->max_header = 36 * 1024;
    if (!l->max_connections) l->max_connections = 1000;
    if (!l->timeout_s) l->timeout_s = 30;
    if (!l->header_timeout_s) l->header_timeout_s = 5;
    if (!l->body_grace_s) l->body_grace_s = 5;
    if (!sg_wire_interposed()) {
        /* Without it libmicrohttpd would read unchecked bytes: fail closed. */
        sg_errf(err, errlen, "the strict request scanner is not bound to libmicrohttpd's reads");
        free(h);
        return NULL;
    }
    if (!l->threads) l->threads = sg_cpus_usable();
    long page_size = sysconf(_SC_PAGESIZE);
    h->page_size = page_size > 0 ? (size_t)page_size : 0;
    if (!h->cfg.mcp_path) h->cfg.mcp_path = "/mcp";
    if (!(h->workers = calloc(l->threads, sizeof *h->workers))) {
        free(h);
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    h->nworkers = l->threads;
    for (unsigned i = 0; i < h->nworkers; i++)
        h->workers[i].epfd = h->workers[i].evfd = -1;

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    const char *host = cfg->host ? cfg->host : "127.0.0.1";
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(cfg->port);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(cfg->port);
        flags |= MHD_USE_IPv6;
    } else {
        sg_errf(err, errlen, "listen address '%s' is not a numeric IPv4 or IPv6 address", host);
        workers_free(h);
        return NULL;
    }
    /* The connection limit is shared: a daemon may take them all. */
    unsigned limit = (unsigned)(l->max_connections + CONNECTION_SLACK);
    for (unsigned i = 0; i < h->nworkers; i++) {
        http_worker *w = &h->workers[i];
        w->h = h;
        w->index = i;
        w->lane = sg_proxy_lane_of(cfg->proxy, i);
        w->gateway = sg_gateway_worker_of(cfg->gateway, i);
        /* The first daemon binds (port 0 picks one); the others bind the
         * same port, and the kernel spreads connections over them. */
        if (i == 1) {
            if (ss.ss_family == AF_INET)
                v4->sin_port = htons(h->port);
            else
                v6->sin6_port = htons(h->port);
        }
        w->daemon = MHD_start_daemon(
            flags, i ? h->port : cfg->port, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
            mhd_log, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
            MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)(h->nworkers > 1),
            MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT, l->max_header,
            MHD_OPTION_CONNECTION_TIMEOUT, l->timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
            h, MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_END);
        if (!w->daemon) {
            sg_errf(err, errlen, "cannot listen on %s:%u (address in use or not permitted)", host,
                    (unsigned)(i ? h->port : cfg->port));
            workers_free(h);
            return NULL;
        }
        if (i == 0) {
            const union MHD_DaemonInfo *di =
                MHD_get_daemon_info(w->daemon, MHD_DAEMON_INFO_BIND_PORT);
            h->port = di ? di->port : cfg->port;
            snprintf(h->port_text, sizeof h->port_text, "%u", (unsigned)h->port);
        }
        const union MHD_DaemonInfo *ei = MHD_get_daemon_info(w->daemon, MHD_DAEMON_INFO_EPOLL_FD);
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (!w->lane || !w->gateway || !ei || w->epfd < 0 || w->evfd < 0 ||
            epoll_add(w->epfd, ei->epoll_fd, TAG_MHD) != 0 ||
            epoll_add(w->epfd, w->evfd, TAG_WAKE) != 0) {
            sg_errf(err, errlen, "cannot set up worker %u's event loop", i);
            workers_free(h);
            return NULL;
        }
        sg_proxy_lane_attach(w->lane, w->epfd);
    }
    sg_gateway_on_wake(cfg->gateway, wake_workers, h);
    for (unsigned i = 0; i < h->nworkers; i++) {
        http_worker *w = &h->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            sg_errf(err, errlen, "cannot start worker thread %u", i);
            sg_http_stop(h);
            return NULL;
        }
        w->started = 1;
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
    for (unsigned i = 0; i < h->nworkers; i++) {
        uint64_t one = 1;
        ssize_t ignored = write(h->workers[i].evfd, &one, sizeof one);
        (void)ignored;
    }
    for (unsigned i = 0; i < h->nworkers; i++)
        if (h->workers[i].started) pthread_join(h->workers[i].thread, NULL);
    sg_gateway_on_wake(h->cfg.gateway, NULL, NULL);
    /* Every transfer has failed and its connection was resumed: stopping the
     * daemons now closes what is left. */
    workers_free(h);
}
