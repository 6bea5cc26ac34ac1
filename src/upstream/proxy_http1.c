/* proxy_http1.c -- the http:// transport of the upstream lane: our own
 * HTTP/1.1 keep-alive client.
 *
 * For a plain-HTTP upstream the lane speaks HTTP/1.1 itself instead of
 * going through libcurl, which cost a sixth of the forwarded path
 * (docs/decisions.md): the address is resolved once, a request is one
 * write, connections are kept in a pool per lane, and the incremental
 * parser of http1.c hands header lines and body pieces to the lifecycle
 * (proxy_head_line, proxy_body in proxy.c). When the consumer has not
 * drained what is buffered, the parser stops and the socket leaves the
 * epoll set until it has. A pooled connection the upstream had closed is
 * replaced once, as curl does. An idle pooled connection stays in the
 * epoll set, watched for reading: taking it out when a request ends and
 * putting it back when the next one starts cost two epoll_ctl calls per
 * forwarded request (of nine system calls in all), and a readable idle
 * connection is one the upstream closed (or spoke on unasked), which is
 * then closed at once instead of being found dead by the next request, or
 * worse, reused: bytes an upstream sends between requests would be read
 * as the answer to the next request sent on the connection, which may be
 * another caller's. (What arrived before the loop's last epoll_wait is
 * always seen first: the loop hands the lane its events before it starts
 * requests. Bytes arriving after that, within one round of the loop,
 * before the round's requests are written, are not.)
 * A request on a connection that is ready is not written at once: it waits
 * in the lane's write queue until the worker's loop has decided everything
 * its last epoll round brought, and sg_proxy_lane_flush writes the queue
 * before the loop sleeps again (as Redis writes its replies before it
 * sleeps). Written one by one between decisions, each request woke an
 * upstream that had gone idle meanwhile, and on a virtual machine a
 * wake-up of an idle CPU costs microseconds: with a new token on every
 * request (an RSA verify between two writes) the queue made the gateway
 * 17% faster, and 2% on the cached path without the audit log
 * (docs/decisions.md). A request waits at most for the rest of its round,
 * which decides what is already read.
 * https:// upstreams go through proxy_curl.c. */
#include "upstream/proxy_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "upstream/http1.h"

#define IDLE_MAX 1024 /* idle upstream connections kept per lane */
/* Response parsers kept for reuse per lane: each holds an 8 KiB line
 * buffer, too large for malloc's per-thread cache, and a malloc and free
 * of that size per forwarded request took malloc's slow path (and made it
 * consolidate its fast bins) every time. */
#define SPARE_PARSERS 16

/* Where to connect and what to say, resolved once per proxy. */
typedef struct http1_target {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *host_header, *path;
} http1_target;

typedef struct http1_transfer http1_transfer;

/* A lane's keep-alive pool, and its sockets' transfers by fd. */
typedef struct http1_lane {
    const http1_target *target;
    int idle[IDLE_MAX];
    int nidle;
    http1_transfer **byfd;
    int nbyfd;
    sg_http1 *spare_parsers[SPARE_PARSERS];
    int nspare_parsers;
    /* Transfers whose request waits for the end of the round, oldest
     * first (linked through their queue_prev/queue_next). */
    http1_transfer *queue_head, *queue_tail;
} http1_lane;

struct http1_transfer {
    sg_transfer base; /* first: the lifecycle's part */
    int fd;           /* the upstream connection, or -1 */
    int connecting;   /* non-blocking connect in progress */
    int reused;       /* the connection came from the idle pool */
    int retried;      /* a reused connection was found dead and replaced once */
    int got_bytes;    /* any response byte arrived */
    int up_paused;    /* the parser stopped: the client has not taken what we hold */
    int queued;       /* in the lane's write queue */
    http1_transfer *queue_prev, *queue_next;
    uint32_t events;
    sg_buf request; /* the whole request, as sent (and re-sent after a dead idle connection) */
    size_t sent;
    sg_buf unread; /* response bytes received but not yet taken by the parser */
    sg_http1 *parser;
};

static http1_lane *http1_lane_of(sg_proxy_lane *l)
{
    return l->impl;
}

static const http1_target *target_of(sg_proxy_lane *l)
{
    return http1_lane_of(l)->target;
}

/* For an http:// upstream: resolves the address once and prepares the
 * Host header and request target. Returns 0, or -1 with a message. */
static int resolve_target(http1_target *p, const char *url, char *err, size_t errlen)
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
    rc = 0;
done:
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
    return rc;
}

/* Watches the connection for events; 0 takes it out of the epoll set
 * (which cannot fail: a connection the set refuses to remove is not in
 * it). Returns 0, or -1 when the epoll set refused the events (then what
 * was watched before stays). */
static int http1_watch(sg_proxy_lane *p, http1_transfer *t, uint32_t events)
{
    if (t->events == events) return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = SG_PROXY_EPOLL_TAG | (uint64_t)(uint32_t)t->fd;
    int op = !events ? EPOLL_CTL_DEL : t->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(p->epfd, op, t->fd, &ev) != 0 && events) return -1;
    t->events = events;
    return 0;
}

/* Puts t at the end of the lane's write queue. Can't fail. */
static void http1_enqueue(http1_lane *hl, http1_transfer *t)
{
    t->queued = 1;
    t->queue_next = NULL;
    t->queue_prev = hl->queue_tail;
    if (hl->queue_tail)
        hl->queue_tail->queue_next = t;
    else
        hl->queue_head = t;
    hl->queue_tail = t;
}

/* Takes t out of the write queue, if it is there. */
static void http1_unqueue(http1_lane *hl, http1_transfer *t)
{
    if (!t->queued) return;
    if (t->queue_prev)
        t->queue_prev->queue_next = t->queue_next;
    else
        hl->queue_head = t->queue_next;
    if (t->queue_next)
        t->queue_next->queue_prev = t->queue_prev;
    else
        hl->queue_tail = t->queue_prev;
    t->queued = 0;
    t->queue_prev = t->queue_next = NULL;
}

/* Gives the connection back to the pool (reuse), still watched for
 * reading, or closes it. A request still in the write queue leaves it. */
static void http1_close(sg_proxy_lane *p, http1_transfer *t, int reuse)
{
    http1_lane *hl = http1_lane_of(p);
    http1_unqueue(hl, t);
    if (t->fd < hl->nbyfd) hl->byfd[t->fd] = NULL;
    if (reuse && hl->nidle < IDLE_MAX && http1_watch(p, t, EPOLLIN) == 0) {
        hl->idle[hl->nidle++] = t->fd;
    } else {
        http1_watch(p, t, 0);
        close(t->fd);
    }
    t->events = 0;
    t->fd = -1;
    t->connecting = 0;
    t->base.connect_deadline_ns = 0;
}

/* The parser's sink: what it finds goes to the lifecycle (proxy.c). */
static size_t http1_header(const char *line, size_t len, void *ud)
{
    return proxy_head_line(ud, line, len) == 0 ? len : 0;
}

static size_t http1_body(const char *data, size_t len, void *ud)
{
    switch (proxy_body(ud, data, len)) {
    case PROXY_BODY_TAKEN:
        return len;
    case PROXY_BODY_PAUSE:
        return SG_HTTP1_PAUSE;
    case PROXY_BODY_STOP:
        break;
    }
    return 0; /* the parser errs; http1_finish names the reason */
}

/* Ends the transfer (an out-of-memory body or a cancel named as such) and
 * takes it off the lane. */
static void http1_finish(sg_proxy_lane *p, http1_transfer *t, sg_proxy_error e)
{
    if (e != SG_PROXY_OK && !sg_buf_ok(&t->base.data)) e = SG_PROXY_ENOMEM;
    if (e != SG_PROXY_OK && t->base.cancel) e = SG_PROXY_ECLIENT;
    proxy_finish(&t->base, e);
    proxy_retire(p, &t->base);
}

/* Opens a connection (or takes an idle one) and registers it. Returns 0,
 * or -1 (errno set) when no socket could be had. */
static int http1_connect(sg_proxy_lane *p, http1_transfer *t, int allow_idle)
{
    http1_lane *hl = http1_lane_of(p);
    const http1_target *tg = hl->target;
    t->reused = allow_idle && hl->nidle > 0;
    t->connecting = 0;
    t->base.connect_deadline_ns = 0;
    if (t->reused) {
        t->fd = hl->idle[--hl->nidle];
    } else {
        t->fd = socket(tg->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (t->fd < 0) return -1;
        int one = 1;
        setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        t->connecting = connect(t->fd, (const struct sockaddr *)&tg->addr, tg->addrlen) != 0;
        if (t->connecting && errno != EINPROGRESS) {
            close(t->fd);
            t->fd = -1;
            return -1;
        }
        if (t->connecting) /* the sweep times it out (proxy.c) */
            t->base.connect_deadline_ns = sg_now_mono_ns() + (uint64_t)p->connect_ms * 1000000u;
    }
    if (t->fd >= hl->nbyfd) {
        int n = t->fd + 64;
        http1_transfer **m = realloc(hl->byfd, (size_t)n * sizeof *m);
        if (!m) {
            close(t->fd);
            t->fd = -1;
            errno = ENOMEM;
            return -1;
        }
        memset(m + hl->nbyfd, 0, (size_t)(n - hl->nbyfd) * sizeof *m);
        hl->byfd = m;
        hl->nbyfd = n;
    }
    hl->byfd[t->fd] = t;
    t->events = t->reused ? EPOLLIN : 0; /* a pooled connection is still watched */
    t->sent = 0;
    t->got_bytes = 0;
    sg_http1_init(t->parser, 0);
    return 0;
}

static void http1_read(sg_proxy_lane *p, http1_transfer *t);
static void http1_send(sg_proxy_lane *p, http1_transfer *t);

/* A pooled connection that the upstream had closed fails on its first
 * write or read: the request goes once more on a fresh connection (as
 * curl and browsers do; nothing of an answer had arrived). Returns 1 when
 * the transfer was taken care of, 0 when it may not retry. */
static int http1_retry(sg_proxy_lane *p, http1_transfer *t)
{
    if (!t->reused || t->retried) return 0;
    t->retried = 1;
    http1_close(p, t, 0);
    if (http1_connect(p, t, 0) != 0)
        http1_finish(p, t, SG_PROXY_EUNREACHABLE);
    else if (t->connecting)
        http1_watch(p, t, EPOLLOUT);
    else
        http1_send(p, t);
    return 1;
}

/* Writes what is left of the request; then waits to read. */
static void http1_send(sg_proxy_lane *p, http1_transfer *t)
{
    while (t->sent < t->request.len) {
        ssize_t w = send(t->fd, t->request.data + t->sent, t->request.len - t->sent, MSG_NOSIGNAL);
        if (w > 0) {
            t->sent += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            http1_watch(p, t, EPOLLOUT | EPOLLIN);
            return;
        }
        if (w < 0 && errno == EINTR) continue;
        if (!http1_retry(p, t)) http1_finish(p, t, SG_PROXY_EUNREACHABLE);
        return;
    }
    http1_watch(p, t, EPOLLIN);
}

/* Runs the parser over what we hold; finishes the transfer when the
 * response is complete or broken. Returns 1 when it finished it. */
static int http1_parse(sg_proxy_lane *p, http1_transfer *t)
{
    sg_http1_sink sink = {http1_header, http1_body, &t->base};
    size_t used =
        t->unread.len ? sg_http1_feed(t->parser, t->unread.data, t->unread.len, &sink) : 0;
    if (used) {
        memmove(t->unread.data, t->unread.data + used, t->unread.len - used);
        t->unread.len -= used;
    }
    int state = t->parser->state;
    if (state == SG_HTTP1_DONE) {
        http1_finish(p, t, SG_PROXY_OK);
        return 1;
    }
    if (state == SG_HTTP1_ERROR) {
        http1_finish(p, t, SG_PROXY_EUPSTREAM);
        return 1;
    }
    t->up_paused = t->unread.len > 0; /* the body callback stopped the parser */
    return 0;
}

/* Reads what the socket has (bounded per call, so one chatty upstream does
 * not starve the others), then parses. */
static void http1_read(sg_proxy_lane *p, http1_transfer *t)
{
    char buf[16384];
    for (int rounds = 0; rounds < 8 && !t->up_paused; rounds++) {
        ssize_t r = recv(t->fd, buf, sizeof buf, 0);
        if (r > 0) {
            t->got_bytes = 1;
            sg_buf_append(&t->unread, buf, (size_t)r);
            if (!sg_buf_ok(&t->unread)) {
                http1_finish(p, t, SG_PROXY_ENOMEM);
                return;
            }
            if (http1_parse(p, t)) return;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r < 0 && errno == EINTR) continue;
        /* End of stream or reset. */
        if (!t->got_bytes && http1_retry(p, t)) return;
        sg_http1_sink sink = {http1_header, http1_body, &t->base};
        if (r == 0 && t->unread.len == 0) sg_http1_eof(t->parser, &sink);
        if (t->parser->state == SG_HTTP1_DONE) {
            t->parser->keepalive = 0;
            http1_finish(p, t, SG_PROXY_OK);
        } else if (!t->up_paused) {
            http1_finish(p, t, SG_PROXY_EUPSTREAM);
        }
        return;
    }
    if (t->up_paused) http1_watch(p, t, 0); /* no reading (nor wake-ups) until the client drains */
}

static void http1_conn_event(sg_proxy_lane *p, http1_transfer *t, uint32_t events)
{
    if (t->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            http1_finish(p, t, SG_PROXY_EUNREACHABLE);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        t->connecting = 0;
        t->base.connect_deadline_ns = 0;
    }
    if (t->sent < t->request.len) {
        http1_send(p, t);
        return;
    }
    if (t->up_paused) return; /* resumed by the consumer (http1_unpause) */
    http1_read(p, t);
}

/* The consumer drained the buffer: parse what we held back, read again. */
static void http1_resume_reading(sg_proxy_lane *p, http1_transfer *t)
{
    if (!t->up_paused) return;
    t->up_paused = 0;
    if (http1_parse(p, t)) return;
    if (!t->up_paused) {
        http1_watch(p, t, EPOLLIN);
        http1_read(p, t);
    }
}

/* Builds the request: the allow-listed client headers and the gateway's
 * own, never anything else. Returns 0 or -1 (out of memory). */
static int http1_request(sg_proxy_lane *p, http1_transfer *t, const sg_proxy_request *req)
{
    sg_buf *b = &t->request;
    const http1_target *tg = target_of(p);
    /* One allocation: grown by pieces from empty, the buffer was copied
     * into a larger block five times per request. The head of a forwarded
     * MCP call is a few hundred bytes (a long token more). */
    size_t head = 512;
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name && req->headers[i].value)
            head += strlen(req->headers[i].name) + strlen(req->headers[i].value) + 4;
    sg_buf_reserve(b, head + req->body_len);
    /* By pieces, not printf: this runs for every forwarded request. */
    sg_buf_puts(b, req->method);
    sg_buf_putc(b, ' ');
    sg_buf_puts(b, tg->path);
    sg_buf_puts(b, " HTTP/1.1\r\nHost: ");
    sg_buf_puts(b, tg->host_header);
    sg_buf_puts(b, "\r\n");
    proxy_upstream_headers(req, b);
    if (strcmp(req->method, "POST") == 0) {
        sg_buf_puts(b, "Content-Length: ");
        sg_buf_put_uint(b, req->body_len);
        sg_buf_puts(b, "\r\n");
    }
    sg_buf_puts(b, "\r\n");
    if (strcmp(req->method, "POST") == 0 && req->body_len)
        sg_buf_append(b, req->body, req->body_len);
    return sg_buf_ok(b) ? 0 : -1;
}

/* ---- the ops --------------------------------------------------------------------- */

static int http1_proxy_init(sg_proxy *p, char *err, size_t errlen)
{
    http1_target *tg = calloc(1, sizeof *tg);
    if (!tg) {
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    p->impl = tg;
    if (proxy_curl_global_init(err, errlen) != 0) return -1;
    return resolve_target(tg, p->url, err, errlen);
}

static void http1_proxy_free(sg_proxy *p)
{
    http1_target *tg = p->impl;
    if (!tg) return;
    free(tg->host_header);
    free(tg->path);
    free(tg);
    p->impl = NULL;
}

static int http1_lane_init(sg_proxy *p, sg_proxy_lane *l, char *err, size_t errlen)
{
    http1_lane *hl = calloc(1, sizeof *hl);
    if (!hl) {
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    hl->target = p->impl;
    l->impl = hl;
    return 0;
}

static void http1_lane_free(sg_proxy_lane *l)
{
    http1_lane *hl = l->impl;
    if (!hl) return;
    for (int i = 0; i < hl->nidle; i++)
        close(hl->idle[i]);
    for (int i = 0; i < hl->nspare_parsers; i++)
        free(hl->spare_parsers[i]);
    free(hl->byfd);
    free(hl);
    l->impl = NULL;
}

static int http1_start(sg_proxy_lane *p, sg_transfer *base, const sg_proxy_request *req)
{
    http1_transfer *t = (http1_transfer *)base;
    http1_lane *hl = http1_lane_of(p);
    t->fd = -1;
    t->parser = hl->nspare_parsers > 0 ? hl->spare_parsers[--hl->nspare_parsers]
                                       : malloc(sizeof *t->parser);
    if (!t->parser || http1_request(p, t, req) != 0) return -1;
    proxy_activate(p, base);
    if (http1_connect(p, t, 1) != 0)
        http1_finish(p, t, SG_PROXY_EUNREACHABLE); /* no socket: as an unreachable upstream */
    else if (t->connecting)
        http1_watch(p, t, EPOLLOUT);
    else
        http1_enqueue(hl, t); /* written by http1_flush, at the end of the round */
    return 0;
}

/* Writes the queued requests, oldest first. A write can end its own
 * transfer (a dead pooled connection is replaced and written at once, or
 * the upstream is unreachable), never another one. */
static void http1_flush(sg_proxy_lane *p)
{
    http1_lane *hl = http1_lane_of(p);
    while (hl->queue_head) {
        http1_transfer *t = hl->queue_head;
        http1_unqueue(hl, t);
        http1_send(p, t);
    }
}

/* An idle pooled connection became readable: the upstream closed it, or
 * sent what nobody asked for. Either way it cannot carry a request; it is
 * closed (which also takes it out of the epoll set, where it would wake
 * the loop again and again). */
static void http1_idle_event(http1_lane *hl, int fd)
{
    for (int i = 0; i < hl->nidle; i++) {
        if (hl->idle[i] != fd) continue;
        hl->idle[i] = hl->idle[--hl->nidle];
        close(fd);
        return;
    }
}

static void http1_event(sg_proxy_lane *p, uint64_t tagged, uint32_t events)
{
    int fd = (int)(uint32_t)tagged;
    http1_lane *hl = http1_lane_of(p);
    http1_transfer *t = fd < hl->nbyfd ? hl->byfd[fd] : NULL;
    if (t)
        http1_conn_event(p, t, events);
    else
        http1_idle_event(hl, fd);
}

static long http1_timeout_ms(sg_proxy_lane *p)
{
    (void)p;
    return -1; /* no timers of its own: connect deadlines are the sweep's */
}

static void http1_unpause(sg_proxy_lane *p, sg_transfer *t)
{
    http1_resume_reading(p, (http1_transfer *)t);
}

/* A connection is pooled only after a whole exchange: request sent (an
 * upstream may answer early), answer read, nothing more on the wire. */
static void http1_detach(sg_proxy_lane *p, sg_transfer *base)
{
    http1_transfer *t = (http1_transfer *)base;
    if (t->fd < 0) return;
    http1_close(p, t,
                base->done && base->error == SG_PROXY_OK && t->parser && t->parser->keepalive &&
                    t->unread.len == 0 && t->sent == t->request.len);
}

static void http1_transfer_free(sg_transfer *base)
{
    http1_transfer *t = (http1_transfer *)base;
    http1_lane *hl = http1_lane_of(base->lane); /* freed after its transfers */
    sg_buf_free(&t->request);
    sg_buf_free(&t->unread);
    if (t->parser && hl->nspare_parsers < SPARE_PARSERS)
        hl->spare_parsers[hl->nspare_parsers++] = t->parser;
    else
        free(t->parser);
}

const upstream_transport sg_upstream_http1 = {
    .name = "http1",
    .transfer_size = sizeof(http1_transfer),
    .proxy_init = http1_proxy_init,
    .proxy_free = http1_proxy_free,
    .lane_init = http1_lane_init,
    .lane_free = http1_lane_free,
    .start = http1_start,
    .event = http1_event,
    .timeout_ms = http1_timeout_ms,
    .run = NULL,
    .flush = http1_flush,
    .unpause = http1_unpause,
    .detach = http1_detach,
    .transfer_free = http1_transfer_free,
};
