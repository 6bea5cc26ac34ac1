/* proxy.c -- the upstream side of scopegate: libcurl, one multi per worker.
 *
 * Why lanes: every HTTP worker thread owns one lane, a curl multi handle
 * whose sockets sit in that worker's own epoll set next to libmicrohttpd's.
 * A request is parsed, decided, forwarded, answered and streamed back on one
 * thread, with no hand-off between threads (each hand-off costs a wake-up
 * and a context switch, which dominated the forwarded path when curl had a
 * thread of its own). The multi is driven with curl_multi_socket_action, so
 * the work per event is proportional to the sockets that are ready, and it
 * keeps a connection cache, so consecutive requests reuse TCP connections.
 * A lane is touched by its worker thread only; its mutex is uncontended and
 * only guards against re-entry from curl callbacks into transfer state.
 * See proxy.h for the park/resume protocol. */
#include "upstream/proxy.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "upstream/http1.h"

#define DEFAULT_CONNECT_MS  5000u
#define DEFAULT_RESPONSE_MS 30000u
#define DEFAULT_BUFFERED    (256u * 1024)
#define MAX_HEADER_VALUE    512
#define MAX_HEADER_LINE     8192
#define DEFER_BYTES         (64u * 1024)
#define EASY_SPARES         256
#define IDLE_MAX            1024 /* idle upstream connections kept per lane (plain http) */

struct sg_transfer {
    sg_proxy_lane *lane;
    int refs; /* consumer + lane (+ attention list) */
    CURL *easy;
    struct curl_slist *req_headers;
    char *body;
    size_t body_len;
    uint64_t head_deadline_ns;
    sg_transfer *next, *prev; /* the lane's active list */
    int attn;                 /* on the attention list: a cancel or unpause to act on */
    sg_transfer *attn_next;

    int cancel;   /* consumer released it early */
    int paused;   /* the write callback paused the transfer */
    int unpause;  /* the consumer drained the buffer: resume the upstream */
    int in_multi; /* handle added to the multi */
    int head_done;
    int status;
    char *content_type;
    char *session_id;
    int done;
    sg_proxy_error error;
    sg_buf data;
    size_t data_off;
    int parked;
    int want;
    int defer; /* a plain (non-SSE) body: wake the consumer when it is complete
                  or DEFER_BYTES are buffered, not at every step */
    int client_fd;
    int watch_off; /* the client sent bytes while parked: stop peeking */
    sg_transfer_ops ops;

    /* Plain-http upstreams: our own HTTP/1.1 connection instead of curl. */
    int fd;         /* the upstream connection, or -1 */
    int connecting; /* non-blocking connect in progress */
    int reused;     /* the connection came from the idle pool */
    int retried;    /* a reused connection was found dead and replaced once */
    int got_bytes;  /* any response byte arrived */
    int up_paused;  /* the parser stopped: the client has not taken what we hold */
    uint32_t events;
    uint64_t connect_deadline_ns;
    sg_buf request; /* the whole request, as sent (and re-sent after a dead idle connection) */
    size_t sent;
    sg_buf unread; /* response bytes received but not yet taken by the parser */
    sg_http1 *parser;
};

struct sg_proxy_lane {
    const char *url; /* the proxy's settings, copied for the hot path */
    const char *ca_file;
    uint32_t connect_ms, response_ms;
    size_t max_buffered;
    CURLM *multi;
    pthread_mutex_t mu;
    int stopping;
    int epfd; /* the owning worker's epoll set (borrowed) */
    sg_transfer *active;
    sg_transfer *attn;        /* transfers a consumer cancelled or unpaused */
    CURL *spare[EASY_SPARES]; /* reset easy handles kept for reuse */
    int nspare;
    uint64_t next_sweep;

    /* Plain-http upstreams (fast): where to connect, what to say, and the
     * keep-alive pool; byfd maps our sockets to their transfers. */
    int fast;
    const struct sockaddr *addr;
    socklen_t addrlen;
    const char *host_header, *path;
    int idle[IDLE_MAX];
    int nidle;
    sg_transfer **byfd;
    int nbyfd;
};

struct sg_proxy {
    char *url;
    char *ca_file;
    unsigned nlanes;
    sg_proxy_lane *lanes;
    int fast;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *host_header, *path;
};

static const char *const forwarded_request_headers[] = {
    "Content-Type",  "Accept",     "Mcp-Session-Id", "MCP-Protocol-Version",
    "Last-Event-ID", "Mcp-Method", "Mcp-Name",
};

const char *sg_proxy_error_text(sg_proxy_error e)
{
    switch (e) {
    case SG_PROXY_OK:
        return "ok";
    case SG_PROXY_EUNREACHABLE:
        return "Upstream server unreachable";
    case SG_PROXY_ETIMEOUT:
        return "Upstream server timed out";
    case SG_PROXY_EUPSTREAM:
        return "Upstream server sent an invalid or truncated response";
    case SG_PROXY_ECLIENT:
        return "Client went away";
    case SG_PROXY_ESHUTDOWN:
        return "Gateway is shutting down";
    case SG_PROXY_ENOMEM:
        return "Out of memory";
    }
    return "unknown proxy error";
}

const char *sg_proxy_error_name(int e)
{
    static const char *const names[] = {
        [SG_PROXY_OK] = "ok",
        [SG_PROXY_EUNREACHABLE] = "unreachable",
        [SG_PROXY_ETIMEOUT] = "timeout",
        [SG_PROXY_EUPSTREAM] = "invalid_response",
        [SG_PROXY_ECLIENT] = "client_gone",
        [SG_PROXY_ESHUTDOWN] = "shutdown",
        [SG_PROXY_ENOMEM] = "out_of_memory",
    };
    _Static_assert(SG_ARRAY_LEN(names) == SG_PROXY_ENOMEM + 1, "every proxy error");
    return e >= 0 && (size_t)e < SG_ARRAY_LEN(names) ? names[e] : "unknown";
}

/* Must hold mu. Puts t on the list the curl thread acts on when it wakes;
 * the list holds a reference, so t outlives a retire that comes first. */
static void attention_locked(sg_proxy_lane *p, sg_transfer *t)
{
    if (t->attn) return;
    t->attn = 1;
    t->refs++;
    t->attn_next = p->attn;
    p->attn = t;
}

/* Must hold mu. The consumer learns news through exactly one resume. */
static void wake_locked(sg_transfer *t)
{
    if (t->parked) {
        t->parked = 0;
        if (t->ops.resume) t->ops.resume(t->ops.ud);
    }
}

/* An easy handle: a spare one when there is one (creating a handle costs
 * several allocations and a 16 KiB buffer per request otherwise). NULL
 * when out of memory. */
static CURL *easy_get(sg_proxy_lane *p)
{
    CURL *e = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->nspare > 0) e = p->spare[--p->nspare];
    pthread_mutex_unlock(&p->mu);
    return e ? e : curl_easy_init();
}

/* Gives a handle that is in no multi back for reuse (or frees it). */
static void easy_put(sg_proxy_lane *p, CURL *e)
{
    curl_easy_reset(e);
    pthread_mutex_lock(&p->mu);
    int kept = p->nspare < EASY_SPARES;
    if (kept) p->spare[p->nspare++] = e;
    pthread_mutex_unlock(&p->mu);
    if (!kept) curl_easy_cleanup(e);
}

static void transfer_free(sg_transfer *t)
{
    if (t->easy) easy_put(t->lane, t->easy);
    curl_slist_free_all(t->req_headers);
    free(t->body);
    free(t->content_type);
    free(t->session_id);
    sg_buf_free(&t->data);
    sg_buf_free(&t->request);
    sg_buf_free(&t->unread);
    free(t->parser);
    free(t);
}

/* Drops one reference; frees on the last. Takes mu itself. */
static void transfer_unref(sg_transfer *t)
{
    sg_proxy_lane *p = t->lane;
    pthread_mutex_lock(&p->mu);
    int left = --t->refs;
    pthread_mutex_unlock(&p->mu);
    if (left == 0) transfer_free(t);
}

/* Must hold mu. First failure wins; completion after a failure is ignored. */
static void finish_locked(sg_transfer *t, sg_proxy_error e)
{
    if (t->done) return;
    t->done = 1;
    t->error = e;
    wake_locked(t);
}

int sg_proxy_header_is_forwarded(const char *name)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(forwarded_request_headers); i++)
        if (strcasecmp(name, forwarded_request_headers[i]) == 0) return 1;
    return 0;
}

/* Header values reach us from libmicrohttpd, which refuses CR/LF, but a
 * value is re-checked here so nothing can split the upstream request. */
static int header_value_safe(const char *v)
{
    size_t n = 0;
    for (const unsigned char *s = (const unsigned char *)v; *s; s++, n++)
        if ((*s < 0x20 && *s != '\t') || *s == 0x7f) return 0;
    return n <= MAX_HEADER_LINE;
}

enum { SEEN_ACCEPT = 1, SEEN_CTYPE = 2 };

/* Appends "Name: value\r\n" for every header that goes upstream: the
 * allow-listed client headers whose values are safe, then the gateway's own
 * (verified identity). Returns which of Accept and Content-Type the client
 * sent (SEEN_*). Allocation failure is recorded in b. */
static int upstream_headers(const sg_proxy_request *req, sg_buf *b)
{
    int seen = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const sg_header *hd = &req->headers[i];
        if (!hd->name || !hd->value || !sg_proxy_header_is_forwarded(hd->name)) continue;
        if (!header_value_safe(hd->value)) continue;
        if (strcasecmp(hd->name, "Accept") == 0) seen |= SEEN_ACCEPT;
        if (strcasecmp(hd->name, "Content-Type") == 0) seen |= SEEN_CTYPE;
        sg_buf_printf(b, "%s: %s\r\n", hd->name, hd->value);
    }
    for (size_t i = 0; i < req->nextra; i++)
        sg_buf_printf(b, "%s: %s\r\n", req->extra[i].name, req->extra[i].value);
    return seen;
}

static char *dup_trimmed(const char *s, size_t n)
{
    while (n > 0 && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    if (n > MAX_HEADER_VALUE) return NULL;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    memcpy(out, s, n);
    out[n] = 0;
    return out;
}

static int visible_ascii(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e) return 0;
    return 1;
}

/* curl: one response header line (status line and the final blank line
 * included). Runs on the curl thread. */
static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
    sg_transfer *t = ud;
    size_t n = size * nitems;
    sg_proxy_lane *p = t->lane;
    pthread_mutex_lock(&p->mu);
    if (t->cancel) {
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A new header block (after a 1xx): forget the previous one. */
        const char *sp = memchr(line, ' ', n);
        int code = 0;
        if (sp && (size_t)(sp - line) + 4 <= n) {
            for (int i = 1; i <= 3; i++) {
                char c = sp[i];
                code = (c >= '0' && c <= '9') ? code * 10 + (c - '0') : -1000;
            }
        }
        t->status = code < 100 || code > 599 ? 0 : code;
        free(t->content_type);
        free(t->session_id);
        t->content_type = t->session_id = NULL;
    } else if (n <= 2 && (n == 0 || line[0] == '\r' || line[0] == '\n')) {
        if (t->status >= 200 && !t->head_done) {
            t->head_done = 1;
            /* An event stream goes to the client as it comes; anything else
             * is usually small and complete a moment later, and handing it
             * over in one piece saves a suspend/resume round per request. */
            t->defer = !t->content_type || strncasecmp(t->content_type, "text/event-stream", 17);
            if (t->want == SG_WANT_HEAD && !t->defer) wake_locked(t);
        }
    } else {
        const char *colon = memchr(line, ':', n);
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            const char *v = colon + 1;
            size_t vlen = n - nlen - 1;
            if (nlen == 12 && strncasecmp(line, "Content-Type", 12) == 0 && !t->content_type) {
                t->content_type = dup_trimmed(v, vlen);
            } else if (nlen == 14 && strncasecmp(line, "Mcp-Session-Id", 14) == 0 &&
                       !t->session_id) {
                t->session_id = dup_trimmed(v, vlen);
                if (t->session_id && !visible_ascii(t->session_id)) {
                    free(t->session_id);
                    t->session_id = NULL;
                }
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* curl: a piece of the response body. Pauses the upstream when the client
 * has not taken what is already buffered (bounded memory per transfer). */
static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    sg_transfer *t = ud;
    size_t n = size * nmemb;
    sg_proxy_lane *p = t->lane;
    pthread_mutex_lock(&p->mu);
    if (t->cancel) {
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    if (!t->head_done) t->head_done = 1;
    if (t->data.len - t->data_off >= p->max_buffered) {
        t->paused = 1;
        pthread_mutex_unlock(&p->mu);
        return CURL_WRITEFUNC_PAUSE;
    }
    if (t->data_off > 0 && t->data_off == t->data.len) {
        sg_buf_reset(&t->data);
        t->data_off = 0;
    }
    sg_buf_append(&t->data, ptr, n);
    if (!sg_buf_ok(&t->data)) {
        pthread_mutex_unlock(&p->mu);
        return 0; /* CURLE_WRITE_ERROR; reported as ENOMEM below */
    }
    if (t->defer && t->data.len - t->data_off >= DEFER_BYTES) t->defer = 0;
    if (!t->defer) wake_locked(t);
    pthread_mutex_unlock(&p->mu);
    return n;
}

static sg_proxy_error map_curl_error(CURLcode rc, int head_done, int data_oom)
{
    if (data_oom) return SG_PROXY_ENOMEM;
    switch (rc) {
    case CURLE_OK:
        return SG_PROXY_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return head_done ? SG_PROXY_EUPSTREAM : SG_PROXY_ETIMEOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
        return SG_PROXY_EUNREACHABLE;
    default:
        return SG_PROXY_EUPSTREAM; /* reset, empty reply or garbage */
    }
}

/* ---- plain-http upstreams: our own HTTP/1.1 connections ---------------------------
 * For an http:// upstream the lane speaks HTTP/1.1 itself: one write per
 * request, a pool of keep-alive connections, and the incremental parser of
 * http1.c feeding the same on_header/on_body callbacks as curl does, so
 * everything downstream (defer, pause, park/resume) is shared. curl stays
 * for https:// upstreams. */

static void retire(sg_proxy_lane *p, sg_transfer *t);
static void activate(sg_proxy_lane *p, sg_transfer *t);

static void fast_watch(sg_proxy_lane *p, sg_transfer *t, uint32_t events)
{
    if (t->events == events) return;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = SG_PROXY_EPOLL_TAG | SG_EVTAG_UPSTREAM_OWN | (uint64_t)(uint32_t)t->fd;
    epoll_ctl(p->epfd, t->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, t->fd, &ev);
    t->events = events;
}

/* Gives the connection back to the pool (reuse) or closes it. */
static void fast_close(sg_proxy_lane *p, sg_transfer *t, int reuse)
{
    if (t->events) epoll_ctl(p->epfd, EPOLL_CTL_DEL, t->fd, NULL);
    t->events = 0;
    if (t->fd < p->nbyfd) p->byfd[t->fd] = NULL;
    if (reuse && p->nidle < IDLE_MAX)
        p->idle[p->nidle++] = t->fd;
    else
        close(t->fd);
    t->fd = -1;
}

static size_t fast_header(const char *line, size_t len, void *ud)
{
    return on_header((char *)line, 1, len, ud);
}

static size_t fast_body(const char *data, size_t len, void *ud)
{
    size_t r = on_body((char *)data, 1, len, ud);
    return r == CURL_WRITEFUNC_PAUSE ? SG_HTTP1_PAUSE : r;
}

static void fast_finish(sg_proxy_lane *p, sg_transfer *t, sg_proxy_error e)
{
    pthread_mutex_lock(&p->mu);
    if (e != SG_PROXY_OK && !sg_buf_ok(&t->data)) e = SG_PROXY_ENOMEM;
    if (e != SG_PROXY_OK && t->cancel) e = SG_PROXY_ECLIENT;
    finish_locked(t, e);
    pthread_mutex_unlock(&p->mu);
    retire(p, t);
}

/* Opens a connection (or takes an idle one) and registers it. Returns 0,
 * or -1 (errno set) when no socket could be had. */
static int fast_connect(sg_proxy_lane *p, sg_transfer *t, int allow_idle)
{
    t->reused = allow_idle && p->nidle > 0;
    t->connecting = 0;
    if (t->reused) {
        t->fd = p->idle[--p->nidle];
    } else {
        t->fd = socket(p->addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (t->fd < 0) return -1;
        int one = 1;
        setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        t->connecting = connect(t->fd, p->addr, p->addrlen) != 0;
        if (t->connecting && errno != EINPROGRESS) {
            close(t->fd);
            t->fd = -1;
            return -1;
        }
        t->connect_deadline_ns = sg_now_mono_ns() + (uint64_t)p->connect_ms * 1000000u;
    }
    if (t->fd >= p->nbyfd) {
        int n = t->fd + 64;
        sg_transfer **m = realloc(p->byfd, (size_t)n * sizeof *m);
        if (!m) {
            close(t->fd);
            t->fd = -1;
            errno = ENOMEM;
            return -1;
        }
        memset(m + p->nbyfd, 0, (size_t)(n - p->nbyfd) * sizeof *m);
        p->byfd = m;
        p->nbyfd = n;
    }
    p->byfd[t->fd] = t;
    t->events = 0;
    t->sent = 0;
    t->got_bytes = 0;
    sg_http1_init(t->parser, 0);
    return 0;
}

static void fast_read(sg_proxy_lane *p, sg_transfer *t);
static void fast_send(sg_proxy_lane *p, sg_transfer *t);

/* A pooled connection that the upstream had closed fails on its first
 * write or read: the request goes once more on a fresh connection (as
 * curl and browsers do; nothing of an answer had arrived). Returns 1 when
 * the transfer was taken care of, 0 when it may not retry. */
static int fast_retry(sg_proxy_lane *p, sg_transfer *t)
{
    if (!t->reused || t->retried) return 0;
    t->retried = 1;
    fast_close(p, t, 0);
    if (fast_connect(p, t, 0) != 0)
        fast_finish(p, t, SG_PROXY_EUNREACHABLE);
    else if (t->connecting)
        fast_watch(p, t, EPOLLOUT);
    else
        fast_send(p, t);
    return 1;
}

/* Writes what is left of the request; then waits to read. */
static void fast_send(sg_proxy_lane *p, sg_transfer *t)
{
    while (t->sent < t->request.len) {
        ssize_t w = send(t->fd, t->request.data + t->sent, t->request.len - t->sent, MSG_NOSIGNAL);
        if (w > 0) {
            t->sent += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fast_watch(p, t, EPOLLOUT | EPOLLIN);
            return;
        }
        if (w < 0 && errno == EINTR) continue;
        if (!fast_retry(p, t)) fast_finish(p, t, SG_PROXY_EUNREACHABLE);
        return;
    }
    fast_watch(p, t, EPOLLIN);
}

/* Runs the parser over what we hold; finishes the transfer when the
 * response is complete or broken. Returns 1 when it finished it. */
static int fast_parse(sg_proxy_lane *p, sg_transfer *t)
{
    sg_http1_sink sink = {fast_header, fast_body, t};
    size_t used =
        t->unread.len ? sg_http1_feed(t->parser, t->unread.data, t->unread.len, &sink) : 0;
    if (used) {
        memmove(t->unread.data, t->unread.data + used, t->unread.len - used);
        t->unread.len -= used;
    }
    int state = t->parser->state;
    if (state == SG_HTTP1_DONE) {
        fast_finish(p, t, SG_PROXY_OK);
        return 1;
    }
    if (state == SG_HTTP1_ERROR) {
        fast_finish(p, t, SG_PROXY_EUPSTREAM);
        return 1;
    }
    t->up_paused = t->unread.len > 0; /* the body callback stopped the parser */
    return 0;
}

/* Reads what the socket has (bounded per call, so one chatty upstream does
 * not starve the others), then parses. */
static void fast_read(sg_proxy_lane *p, sg_transfer *t)
{
    char buf[16384];
    for (int rounds = 0; rounds < 8 && !t->up_paused; rounds++) {
        ssize_t r = recv(t->fd, buf, sizeof buf, 0);
        if (r > 0) {
            t->got_bytes = 1;
            sg_buf_append(&t->unread, buf, (size_t)r);
            if (!sg_buf_ok(&t->unread)) {
                fast_finish(p, t, SG_PROXY_ENOMEM);
                return;
            }
            if (fast_parse(p, t)) return;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r < 0 && errno == EINTR) continue;
        /* End of stream or reset. */
        if (!t->got_bytes && fast_retry(p, t)) return;
        sg_http1_sink sink = {fast_header, fast_body, t};
        if (r == 0 && t->unread.len == 0) sg_http1_eof(t->parser, &sink);
        if (t->parser->state == SG_HTTP1_DONE) {
            t->parser->keepalive = 0;
            fast_finish(p, t, SG_PROXY_OK);
        } else if (!t->up_paused) {
            fast_finish(p, t, SG_PROXY_EUPSTREAM);
        }
        return;
    }
    if (t->up_paused && t->events) { /* no reading (nor wake-ups) until the client drains */
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, t->fd, NULL);
        t->events = 0;
    }
}

static void fast_event(sg_proxy_lane *p, sg_transfer *t, uint32_t events)
{
    if (t->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            fast_finish(p, t, SG_PROXY_EUNREACHABLE);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        t->connecting = 0;
    }
    if (t->sent < t->request.len) {
        fast_send(p, t);
        return;
    }
    if (t->up_paused) return; /* resumed by the consumer (service) */
    fast_read(p, t);
}

/* The consumer drained the buffer: parse what we held back, read again. */
static void fast_unpause(sg_proxy_lane *p, sg_transfer *t)
{
    if (!t->up_paused) return;
    t->up_paused = 0;
    if (fast_parse(p, t)) return;
    if (!t->up_paused) {
        fast_watch(p, t, EPOLLIN);
        fast_read(p, t);
    }
}

/* Builds the request: the allow-listed client headers and the gateway's
 * own, never anything else. Returns 0 or -1 (out of memory). */
static int fast_request(sg_proxy_lane *p, sg_transfer *t, const sg_proxy_request *req)
{
    sg_buf *b = &t->request;
    sg_buf_printf(b, "%s %s HTTP/1.1\r\nHost: %s\r\n", req->method, p->path, p->host_header);
    upstream_headers(req, b);
    if (strcmp(req->method, "POST") == 0)
        sg_buf_printf(b, "Content-Length: %zu\r\n", req->body_len);
    sg_buf_puts(b, "\r\n");
    if (strcmp(req->method, "POST") == 0 && req->body_len)
        sg_buf_append(b, req->body, req->body_len);
    return sg_buf_ok(b) ? 0 : -1;
}

/* Puts a started transfer on the lane's active list (the lane holds its
 * reference from here until retire). */
static void activate(sg_proxy_lane *p, sg_transfer *t)
{
    t->in_multi = 1;
    t->prev = NULL;
    t->next = p->active;
    if (p->active) p->active->prev = t;
    p->active = t;
}

/* Takes the transfer out of the multi and the active list and drops the
 * lane's reference. */
static void retire(sg_proxy_lane *p, sg_transfer *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        p->active = t->next;
    if (t->next) t->next->prev = t->prev;
    t->next = t->prev = NULL;
    /* A connection is pooled only after a whole exchange: request sent (an
     * upstream may answer early), answer read, nothing more on the wire. */
    if (t->fd >= 0)
        fast_close(p, t,
                   t->done && t->error == SG_PROXY_OK && t->parser && t->parser->keepalive &&
                       t->unread.len == 0 && t->sent == t->request.len);
    else if (t->in_multi)
        curl_multi_remove_handle(p->multi, t->easy);
    t->in_multi = 0;
    transfer_unref(t);
}

static void on_done(sg_proxy_lane *p, CURL *easy, CURLcode rc)
{
    sg_transfer *t = NULL;
    if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t) != CURLE_OK || !t) return;
    pthread_mutex_lock(&p->mu);
    int oom = !sg_buf_ok(&t->data);
    sg_proxy_error e = map_curl_error(rc, t->head_done, oom);
    if (e == SG_PROXY_OK && !t->head_done) e = SG_PROXY_EUPSTREAM;
    if (t->cancel && e != SG_PROXY_OK) e = SG_PROXY_ECLIENT;
    finish_locked(t, e);
    pthread_mutex_unlock(&p->mu);
    retire(p, t);
}

/* curl: watch socket s for `what` (CURLMOPT_SOCKETFUNCTION). */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    sg_proxy_lane *p = userp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    ev.data.u64 = SG_PROXY_EPOLL_TAG | (uint64_t)(uint32_t)s;
    if (!socketp) {
        if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, s, &ev) != 0 && errno == EEXIST)
            epoll_ctl(p->epfd, EPOLL_CTL_MOD, s, &ev);
        curl_multi_assign(p->multi, s, p); /* any non-NULL marks it as known */
    } else {
        epoll_ctl(p->epfd, EPOLL_CTL_MOD, s, &ev);
    }
    return 0;
}

static void drain_done(sg_proxy_lane *p)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(p->multi, &left)))
        if (msg->msg == CURLMSG_DONE) on_done(p, msg->easy_handle, msg->data.result);
}

/* Acts on the transfers whose consumer cancelled or unpaused them; only
 * those are visited. A transfer already retired (not in the multi) needs
 * nothing more; the list's reference is dropped either way. */
static void service(sg_proxy_lane *p)
{
    pthread_mutex_lock(&p->mu);
    sg_transfer *attn = p->attn;
    p->attn = NULL;
    for (sg_transfer *t = attn; t; t = t->attn_next)
        t->attn = 0;
    pthread_mutex_unlock(&p->mu);
    while (attn) {
        sg_transfer *t = attn;
        attn = t->attn_next;
        pthread_mutex_lock(&p->mu);
        int cancel = t->cancel, unpause = t->unpause;
        t->unpause = 0;
        if (cancel) finish_locked(t, SG_PROXY_ECLIENT);
        pthread_mutex_unlock(&p->mu);
        if (t->in_multi && cancel)
            retire(p, t);
        else if (t->in_multi && unpause && t->fd >= 0)
            fast_unpause(p, t);
        else if (t->in_multi && unpause)
            curl_easy_pause(t->easy, CURLPAUSE_CONT);
        transfer_unref(t);
    }
}

/* A few times a second: response deadlines, and the sockets
 * of parked clients (a read of 0 or an error means the client hung up:
 * cancel, and resume it so the HTTP layer closes the connection). */
static void sweep(sg_proxy_lane *p)
{
    uint64_t now = sg_now_mono_ns();
    struct pollfd fds[64];
    sg_transfer *owner[64];
    size_t n = 0;
    sg_transfer *next;
    for (sg_transfer *t = p->active; t; t = next) {
        next = t->next;
        pthread_mutex_lock(&p->mu);
        int expired = !t->head_done && !t->done &&
                      (now >= t->head_deadline_ns ||
                       (t->fd >= 0 && t->connecting && now >= t->connect_deadline_ns));
        if (expired) finish_locked(t, SG_PROXY_ETIMEOUT);
        int watch = !expired && t->parked && t->client_fd >= 0 && !t->watch_off;
        pthread_mutex_unlock(&p->mu);
        if (expired) {
            retire(p, t);
            continue;
        }
        if (watch && n < SG_ARRAY_LEN(fds)) {
            fds[n].fd = t->client_fd;
            fds[n].events = POLLIN;
            fds[n].revents = 0;
            owner[n++] = t;
        }
        if (n == SG_ARRAY_LEN(fds) || (!next && n)) {
            if (poll(fds, (nfds_t)n, 0) > 0) {
                for (size_t i = 0; i < n; i++) {
                    if (!fds[i].revents) continue;
                    char byte;
                    ssize_t r = recv(fds[i].fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
                    pthread_mutex_lock(&p->mu);
                    if (r == 0 ||
                        (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                        owner[i]->cancel = 1;
                        finish_locked(owner[i], SG_PROXY_ECLIENT);
                        attention_locked(p, owner[i]);
                    } else if (r > 0) {
                        owner[i]->watch_off = 1;
                    }
                    pthread_mutex_unlock(&p->mu);
                }
            }
            n = 0;
        }
    }
}

#define SWEEP_NS (250u * 1000000u)

long sg_proxy_lane_timeout_ms(sg_proxy_lane *p)
{
    if (p->attn) return 0;
    long ms = -1;
    curl_multi_timeout(p->multi, &ms);
    uint64_t now = sg_now_mono_ns();
    long sweep_ms = p->next_sweep <= now ? 0 : (long)((p->next_sweep - now + 999999u) / 1000000u);
    return ms < 0 || ms > sweep_ms ? sweep_ms : ms;
}

void sg_proxy_lane_event(sg_proxy_lane *p, uint64_t tagged, uint32_t events)
{
    if (tagged & SG_EVTAG_UPSTREAM_OWN) {
        int fd = (int)(uint32_t)tagged;
        sg_transfer *t = fd < p->nbyfd ? p->byfd[fd] : NULL;
        if (t) fast_event(p, t, events);
        return;
    }
    int running = 0;
    int mask = (events & EPOLLIN ? CURL_CSELECT_IN : 0) |
               (events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
               (events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
    curl_multi_socket_action(p->multi, (curl_socket_t)(uint32_t)tagged, mask, &running);
}

void sg_proxy_lane_run(sg_proxy_lane *p)
{
    int running = 0;
    service(p);
    long ms = -1;
    curl_multi_timeout(p->multi, &ms);
    if (ms == 0) curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_done(p);
    uint64_t now = sg_now_mono_ns();
    if (now >= p->next_sweep) {
        sweep(p);
        p->next_sweep = now + SWEEP_NS;
    }
}

void sg_proxy_lane_shutdown(sg_proxy_lane *p)
{
    p->stopping = 1;
    service(p);
    while (p->active) {
        sg_transfer *t = p->active;
        pthread_mutex_lock(&p->mu);
        finish_locked(t, SG_PROXY_ESHUTDOWN);
        pthread_mutex_unlock(&p->mu);
        retire(p, t);
    }
}

int sg_proxy_lane_attach(sg_proxy_lane *p, int epfd)
{
    p->epfd = epfd;
    p->next_sweep = sg_now_mono_ns() + SWEEP_NS;
    return 0;
}

sg_proxy_lane *sg_proxy_lane_of(sg_proxy *p, unsigned i)
{
    return i < p->nlanes ? &p->lanes[i] : NULL;
}

static void lane_free(sg_proxy_lane *l)
{
    for (int i = 0; i < l->nidle; i++)
        close(l->idle[i]);
    free(l->byfd);
    for (int i = 0; i < l->nspare; i++)
        curl_easy_cleanup(l->spare[i]);
    if (l->multi) curl_multi_cleanup(l->multi);
    pthread_mutex_destroy(&l->mu);
}

/* For an http:// upstream: resolves the address once and prepares the
 * Host header and request target. Returns 0, or -1 with a message. */
static int plain_target(sg_proxy *p, const char *url, char *err, size_t errlen)
{
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *path = NULL, *query = NULL;
    int rc = -1;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
        sg_errf(err, errlen, "upstream URL '%s' is not a valid URL", url);
        goto done;
    }
    int has_port = curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK;
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    sg_buf hh = SG_BUF_INIT, target = SG_BUF_INIT;
    sg_buf_printf(&hh, "%s%s%s", host, has_port ? ":" : "", has_port ? port : "");
    sg_buf_printf(&target, "%s%s%s", path, query ? "?" : "", query ? query : "");
    p->host_header = sg_buf_steal(&hh);
    p->path = sg_buf_steal(&target);
    /* getaddrinfo wants the host without IPv6 brackets. */
    char name[256];
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof name) {
        memcpy(name, host + 1, hl - 2);
        name[hl - 2] = '\0';
    } else {
        snprintf(name, sizeof name, "%s", host);
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(name, has_port ? port : "80", &hints, &res);
    if (gai != 0 || !res || res->ai_addrlen > sizeof p->addr || !p->host_header || !p->path) {
        sg_errf(err, errlen, "upstream host '%s' cannot be resolved: %s", name,
                gai ? gai_strerror(gai) : "no address");
        if (res) freeaddrinfo(res);
        goto done;
    }
    memcpy(&p->addr, res->ai_addr, res->ai_addrlen);
    p->addrlen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    p->fast = 1;
    rc = 0;
done:
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
    return rc;
}

sg_proxy *sg_proxy_new(const sg_proxy_config *cfg, unsigned lanes, char *err, size_t errlen)
{
    /* curl_global_init is not thread-safe: serve.c creates the proxy on the
     * main thread before any worker exists. */
    static CURLcode global_rc = CURLE_OK;
    static int global_done = 0;
    if (!cfg->upstream_url || (strncasecmp(cfg->upstream_url, "http://", 7) != 0 &&
                               strncasecmp(cfg->upstream_url, "https://", 8) != 0)) {
        sg_errf(err, errlen, "upstream URL must start with http:// or https://");
        return NULL;
    }
    CURLU *u = curl_url();
    int bad = !u || curl_url_set(u, CURLUPART_URL, cfg->upstream_url, 0) != CURLUE_OK;
    curl_url_cleanup(u);
    if (bad) {
        sg_errf(err, errlen, "upstream URL '%s' is not a valid URL", cfg->upstream_url);
        return NULL;
    }
    if (!global_done) {
        global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        global_done = 1;
    }
    if (global_rc != CURLE_OK) {
        sg_errf(err, errlen, "libcurl failed to initialise");
        return NULL;
    }
    if (lanes == 0) lanes = 1;
    sg_proxy *p = calloc(1, sizeof *p);
    if (!p || !(p->url = strdup(cfg->upstream_url)) ||
        !(p->lanes = calloc(lanes, sizeof *p->lanes))) {
        sg_errf(err, errlen, "out of memory");
        goto fail;
    }
    if (cfg->ca_file && !(p->ca_file = strdup(cfg->ca_file))) {
        sg_errf(err, errlen, "out of memory");
        goto fail;
    }
    if (strncasecmp(cfg->upstream_url, "http://", 7) == 0 &&
        plain_target(p, cfg->upstream_url, err, errlen) != 0)
        goto fail;
    for (unsigned i = 0; i < lanes; i++) {
        sg_proxy_lane *l = &p->lanes[i];
        l->url = p->url;
        l->ca_file = p->ca_file;
        l->connect_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : DEFAULT_CONNECT_MS;
        l->response_ms = cfg->response_timeout_ms ? cfg->response_timeout_ms : DEFAULT_RESPONSE_MS;
        l->max_buffered = cfg->max_buffered ? cfg->max_buffered : DEFAULT_BUFFERED;
        l->epfd = -1;
        pthread_mutex_init(&l->mu, NULL);
        p->nlanes++;
        if (!(l->multi = curl_multi_init())) {
            sg_errf(err, errlen, "out of memory");
            goto fail;
        }
        /* Keep an idle upstream connection for every request that may be in
         * flight at once: a smaller cache closes and reopens TCP connections
         * on every request as soon as concurrency exceeds it. */
        curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, 1024L);
        curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l);
        l->fast = p->fast;
        l->addr = (const struct sockaddr *)&p->addr;
        l->addrlen = p->addrlen;
        l->host_header = p->host_header;
        l->path = p->path;
    }
    return p;
fail:
    sg_proxy_free(p);
    return NULL;
}

void sg_proxy_free(sg_proxy *p)
{
    if (!p) return;
    for (unsigned i = 0; i < p->nlanes; i++)
        lane_free(&p->lanes[i]);
    free(p->lanes);
    free(p->url);
    free(p->host_header);
    free(p->path);
    free(p->ca_file);
    free(p);
}

sg_transfer *sg_proxy_start(sg_proxy_lane *p, const sg_proxy_request *req,
                            const sg_transfer_ops *ops, int client_fd)
{
    sg_transfer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->lane = p;
    t->refs = 2;
    t->client_fd = client_fd;
    t->ops = *ops;
    t->want = SG_WANT_HEAD;
    t->fd = -1;
    t->head_deadline_ns = sg_now_mono_ns() + (uint64_t)p->response_ms * 1000000u;
    if (p->fast) {
        if (p->stopping || !(t->parser = malloc(sizeof *t->parser)) || fast_request(p, t, req) != 0)
            goto fail;
        activate(p, t);
        if (fast_connect(p, t, 1) != 0)
            fast_finish(p, t, SG_PROXY_EUNREACHABLE); /* no socket: as an unreachable upstream */
        else if (t->connecting)
            fast_watch(p, t, EPOLLOUT);
        else
            fast_send(p, t);
        return t;
    }
    if (!(t->easy = easy_get(p))) goto fail;

    /* curl adds Expect: 100-continue for larger bodies and its own Accept:
     * both are suppressed so the upstream sees what the client sent. */
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    if (!h) goto fail;
    t->req_headers = h;
    sg_buf lines = SG_BUF_INIT;
    int seen = upstream_headers(req, &lines);
    for (char *line = lines.data, *end; line && (end = strstr(line, "\r\n")); line = end + 2) {
        *end = '\0';
        if (!curl_slist_append(h, line)) {
            sg_buf_free(&lines);
            goto fail;
        }
    }
    int oom = !sg_buf_ok(&lines);
    sg_buf_free(&lines);
    if (oom || (!(seen & SEEN_ACCEPT) && !curl_slist_append(h, "Accept:")) ||
        (!(seen & SEEN_CTYPE) && !curl_slist_append(h, "Content-Type:")))
        goto fail;

    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, p->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)t);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->req_headers);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(p->connect_ms < p->response_ms ? p->connect_ms : p->response_ms));
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HTTP_TRANSFER_DECODING, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    if (p->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, p->ca_file);
    if (strcmp(req->method, "POST") == 0) {
        if (req->body_len) {
            if (!(t->body = malloc(req->body_len))) goto fail;
            memcpy(t->body, req->body, req->body_len);
            t->body_len = req->body_len;
        }
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->body ? t->body : "");
    } else if (strcmp(req->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }

    if (p->stopping || curl_multi_add_handle(p->multi, e) != CURLM_OK) goto fail;
    activate(p, t);
    return t;
fail:
    transfer_free(t);
    return NULL;
}

int sg_transfer_head_get(sg_transfer *t, sg_transfer_head *out)
{
    sg_proxy_lane *p = t->lane;
    int r;
    pthread_mutex_lock(&p->mu);
    if (t->done && t->error != SG_PROXY_OK) {
        r = -1; /* nothing was sent to the client yet: answer 502/504 instead */
    } else if (t->head_done && (!t->defer || t->done)) {
        out->status = t->status;
        out->content_type = t->content_type;
        out->session_id = t->session_id;
        out->complete = t->done;
        t->defer = 0; /* the consumer streams from here on */
        r = 1;
    } else {
        r = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return r;
}

long sg_transfer_read(sg_transfer *t, char *buf, size_t max)
{
    sg_proxy_lane *p = t->lane;
    long r;
    pthread_mutex_lock(&p->mu);
    t->want = SG_WANT_DATA;
    size_t avail = t->data.len - t->data_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, t->data.data + t->data_off, n);
        t->data_off += n;
        if (t->data_off == t->data.len) {
            sg_buf_reset(&t->data);
            t->data_off = 0;
        }
        if (t->paused && t->data.len - t->data_off < p->max_buffered / 2) {
            t->paused = 0;
            t->unpause = 1;
            attention_locked(p, t);
        }
        r = (long)n;
    } else if (t->done) {
        r = t->error == SG_PROXY_OK ? SG_TRANSFER_EOF : SG_TRANSFER_FAILED;
    } else {
        r = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return r;
}

int sg_transfer_park(sg_transfer *t, int want)
{
    sg_proxy_lane *p = t->lane;
    int parked = 0;
    pthread_mutex_lock(&p->mu);
    t->want = want;
    int ready =
        t->done || (want == SG_WANT_HEAD ? t->head_done && !t->defer : t->data.len > t->data_off);
    if (!ready) {
        t->parked = 1;
        t->watch_off = 0;
        if (t->ops.suspend) t->ops.suspend(t->ops.ud);
        parked = 1;
    }
    pthread_mutex_unlock(&p->mu);
    /* The curl thread starts watching the parked client's socket when it
     * next wakes (upstream news, or within a second): waking it here for
     * that would cost a thread switch on every request. */
    return parked;
}

char *sg_transfer_take_body(sg_transfer *t, size_t *len)
{
    sg_proxy_lane *p = t->lane;
    char *body = NULL;
    *len = 0;
    pthread_mutex_lock(&p->mu);
    if (t->done && t->error == SG_PROXY_OK && sg_buf_ok(&t->data)) {
        *len = t->data.len - t->data_off;
        if (t->data_off == 0 && t->data.data) {
            body = sg_buf_steal(&t->data);
        } else if ((body = malloc(*len + 1))) {
            /* An empty answer leaves the buffer unallocated: no NULL + 0. */
            if (*len) memcpy(body, t->data.data + t->data_off, *len);
            body[*len] = '\0';
            sg_buf_reset(&t->data);
        }
        t->data_off = 0;
        if (!body) *len = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return body;
}

sg_proxy_error sg_transfer_error(sg_transfer *t)
{
    sg_proxy_lane *p = t->lane;
    pthread_mutex_lock(&p->mu);
    sg_proxy_error e = t->done ? t->error : SG_PROXY_OK;
    pthread_mutex_unlock(&p->mu);
    return e;
}

void sg_transfer_release(sg_transfer *t)
{
    if (!t) return;
    sg_proxy_lane *p = t->lane;
    pthread_mutex_lock(&p->mu);
    int live = !t->done;
    t->cancel = 1;
    if (live) attention_locked(p, t);
    t->parked = 0;
    t->ops.suspend = t->ops.resume = NULL;
    t->client_fd = -1;
    pthread_mutex_unlock(&p->mu);
    transfer_unref(t);
}
