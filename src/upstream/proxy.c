/* proxy.c -- the upstream lane: the lifecycle of a transfer, whatever
 * transport carries it.
 *
 * Why lanes: every HTTP worker thread owns one lane, whose upstream sockets
 * sit in that worker's own epoll set next to libmicrohttpd's. A request is
 * parsed, decided, forwarded, answered and streamed back on one thread,
 * with no hand-off between threads (each hand-off costs a wake-up and a
 * context switch, which dominated the forwarded path when the upstream
 * side had a thread of its own). Connections to the upstream are kept and
 * reused across requests by the transport.
 *
 * This file is what both transports share: starting a transfer, the head
 * and body as the consumer sees them (a body that is not an event stream
 * is handed over whole when it is small, an event stream as it comes;
 * bounded buffering that pauses the upstream), park and resume, cancels,
 * response deadlines, parked clients that hung up, retiring. The transport
 * (proxy_http1.c for http://, proxy_curl.c for https://) sits behind the
 * ops table of proxy_impl.h, which also says why nothing here is locked.
 * See proxy.h for the park/resume protocol. */
#include "upstream/proxy_impl.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define DEFAULT_BUFFERED (256u * 1024)
#define MAX_HEADER_VALUE 512
#define DEFER_BYTES      (64u * 1024)
#define SWEEP_NS         (250u * 1000000u)

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

/* Puts t on the list the lane acts on in its next run; the list holds a
 * reference, so t outlives a retire that comes first. */
static void attention(sg_proxy_lane *p, sg_transfer *t)
{
    if (t->attn) return;
    t->attn = 1;
    t->refs++;
    t->attn_next = p->attn;
    p->attn = t;
}

/* The consumer learns news through exactly one resume. */
static void wake(sg_transfer *t)
{
    if (t->parked) {
        t->parked = 0;
        if (t->ops.resume) t->ops.resume(t->ops.ud);
    }
}

static void transfer_free(sg_transfer *t)
{
    t->lane->transport->transfer_free(t);
    free(t->content_type);
    free(t->session_id);
    sg_buf_free(&t->data);
    free(t);
}

/* Drops one reference; frees on the last. */
static void transfer_unref(sg_transfer *t)
{
    if (--t->refs == 0) transfer_free(t);
}

void proxy_finish(sg_transfer *t, sg_proxy_error e)
{
    if (t->done) return;
    t->done = 1;
    t->error = e;
    wake(t);
}

void proxy_activate(sg_proxy_lane *p, sg_transfer *t)
{
    t->active = 1;
    t->prev = NULL;
    t->next = p->active;
    if (p->active) p->active->prev = t;
    p->active = t;
}

void proxy_retire(sg_proxy_lane *p, sg_transfer *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        p->active = t->next;
    if (t->next) t->next->prev = t->prev;
    t->next = t->prev = NULL;
    if (t->active) p->transport->detach(p, t);
    t->active = 0;
    transfer_unref(t);
}

/* ---- what goes upstream ------------------------------------------------------ */

int sg_proxy_header_is_forwarded(const char *name)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(forwarded_request_headers); i++)
        if (sg_header_name_is(name, forwarded_request_headers[i])) return 1;
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

/* "name: value" CRLF, appended by pieces (printf costs a request more than
 * all its other headers: this runs for every forwarded request). */
static void put_header(sg_buf *b, const char *name, const char *value)
{
    sg_buf_puts(b, name);
    sg_buf_append(b, ": ", 2);
    sg_buf_puts(b, value);
    sg_buf_append(b, "\r\n", 2);
}

int proxy_upstream_headers(const sg_proxy_request *req, sg_buf *b)
{
    int seen = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const sg_header *hd = &req->headers[i];
        if (!hd->name || !hd->value || !sg_proxy_header_is_forwarded(hd->name)) continue;
        if (!header_value_safe(hd->value)) continue;
        if (sg_header_name_is(hd->name, "Accept")) seen |= PROXY_SENT_ACCEPT;
        if (sg_header_name_is(hd->name, "Content-Type")) seen |= PROXY_SENT_CTYPE;
        put_header(b, hd->name, hd->value);
    }
    for (size_t i = 0; i < req->nextra; i++)
        put_header(b, req->extra[i].name, req->extra[i].value);
    return seen;
}

/* ---- what comes back --------------------------------------------------------- */

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

/* The status code of a status line ("HTTP/1.1 200 OK"); 0 when it has none
 * in 100..599. */
static int status_code(const char *line, size_t n)
{
    const char *sp = memchr(line, ' ', n);
    int code = 0;
    if (sp && (size_t)(sp - line) + 4 <= n) {
        for (int i = 1; i <= 3; i++) {
            char c = sp[i];
            code = (c >= '0' && c <= '9') ? code * 10 + (c - '0') : -1000;
        }
    }
    return code < 100 || code > 599 ? 0 : code;
}

/* A "Name: value" line: keeps the first Content-Type and the first
 * Mcp-Session-Id (visible ASCII only). */
static void keep_header(sg_transfer *t, const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    if (!colon) return;
    size_t nlen = (size_t)(colon - line);
    const char *v = colon + 1;
    size_t vlen = n - nlen - 1;
    if (nlen == 12 && strncasecmp(line, "Content-Type", 12) == 0 && !t->content_type) {
        t->content_type = dup_trimmed(v, vlen);
    } else if (nlen == 14 && strncasecmp(line, "Mcp-Session-Id", 14) == 0 && !t->session_id) {
        t->session_id = dup_trimmed(v, vlen);
        if (t->session_id && !visible_ascii(t->session_id)) {
            free(t->session_id);
            t->session_id = NULL;
        }
    }
}

int proxy_head_line(sg_transfer *t, const char *line, size_t n)
{
    if (t->cancel) return -1;
    if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A new header block (after a 1xx): forget the previous one. */
        t->status = status_code(line, n);
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
            if (t->want == SG_WANT_HEAD && !t->defer) wake(t);
        }
    } else {
        keep_header(t, line, n);
    }
    return 0;
}

proxy_body_result proxy_body(sg_transfer *t, const char *data, size_t n)
{
    sg_proxy_lane *p = t->lane;
    if (t->cancel) return PROXY_BODY_STOP;
    if (!t->head_done) t->head_done = 1;
    if (t->data.len - t->data_off >= p->max_buffered) {
        t->paused = 1;
        return PROXY_BODY_PAUSE;
    }
    if (t->data_off > 0 && t->data_off == t->data.len) {
        sg_buf_reset(&t->data);
        t->data_off = 0;
    }
    sg_buf_append(&t->data, data, n);
    if (!sg_buf_ok(&t->data)) return PROXY_BODY_STOP; /* the transport reports ENOMEM */
    if (t->defer && t->data.len - t->data_off >= DEFER_BYTES) t->defer = 0;
    if (!t->defer) wake(t);
    return PROXY_BODY_TAKEN;
}

/* ---- the lane ------------------------------------------------------------------ */

/* Acts on the transfers whose consumer cancelled or unpaused them; only
 * those are visited. A transfer already retired needs nothing more; the
 * list's reference is dropped either way. */
static void service(sg_proxy_lane *p)
{
    sg_transfer *attn = p->attn;
    p->attn = NULL;
    for (sg_transfer *t = attn; t; t = t->attn_next)
        t->attn = 0;
    while (attn) {
        sg_transfer *t = attn;
        attn = t->attn_next;
        int cancel = t->cancel, unpause = t->unpause;
        t->unpause = 0;
        if (cancel) proxy_finish(t, SG_PROXY_ECLIENT);
        if (t->active && cancel)
            proxy_retire(p, t);
        else if (t->active && unpause)
            p->transport->unpause(p, t);
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
        int expired = !t->head_done && !t->done &&
                      (now >= t->head_deadline_ns ||
                       (t->connect_deadline_ns && now >= t->connect_deadline_ns));
        if (expired) proxy_finish(t, SG_PROXY_ETIMEOUT);
        int watch = !expired && t->parked && t->client_fd >= 0 && !t->watch_off;
        if (expired) {
            proxy_retire(p, t);
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
                    if (r == 0 ||
                        (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                        owner[i]->cancel = 1;
                        proxy_finish(owner[i], SG_PROXY_ECLIENT);
                        attention(p, owner[i]);
                    } else if (r > 0) {
                        owner[i]->watch_off = 1;
                    }
                }
            }
            n = 0;
        }
    }
}

long sg_proxy_lane_timeout_ms(sg_proxy_lane *p)
{
    if (p->attn) return 0;
    long ms = p->transport->timeout_ms(p);
    uint64_t now = sg_now_mono_ns();
    long sweep_ms = p->next_sweep <= now ? 0 : (long)((p->next_sweep - now + 999999u) / 1000000u);
    return ms < 0 || ms > sweep_ms ? sweep_ms : ms;
}

void sg_proxy_lane_event(sg_proxy_lane *p, uint64_t tagged, uint32_t events)
{
    p->transport->event(p, tagged, events);
}

void sg_proxy_lane_run(sg_proxy_lane *p)
{
    service(p);
    if (p->transport->run) p->transport->run(p);
    uint64_t now = sg_now_mono_ns();
    if (now >= p->next_sweep) {
        sweep(p);
        p->next_sweep = now + SWEEP_NS;
    }
}

void sg_proxy_lane_flush(sg_proxy_lane *p)
{
    if (p->transport->flush) p->transport->flush(p);
}

void sg_proxy_lane_shutdown(sg_proxy_lane *p)
{
    p->stopping = 1;
    service(p);
    while (p->active) {
        sg_transfer *t = p->active;
        proxy_finish(t, SG_PROXY_ESHUTDOWN);
        proxy_retire(p, t);
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

/* ---- the proxy ----------------------------------------------------------------- */

sg_proxy *sg_proxy_new(const sg_proxy_config *cfg, unsigned lanes, char *err, size_t errlen)
{
    if (!cfg->upstream_url || (strncasecmp(cfg->upstream_url, "http://", 7) != 0 &&
                               strncasecmp(cfg->upstream_url, "https://", 8) != 0)) {
        sg_errf(err, errlen, "upstream URL must start with http:// or https://");
        return NULL;
    }
    if (lanes == 0) lanes = 1;
    sg_proxy *p = calloc(1, sizeof *p);
    if (!p || !(p->url = strdup(cfg->upstream_url)) ||
        !(p->lanes = calloc(lanes, sizeof *p->lanes)) ||
        (cfg->ca_file && !(p->ca_file = strdup(cfg->ca_file)))) {
        sg_errf(err, errlen, "out of memory");
        goto fail;
    }
    p->transport =
        strncasecmp(cfg->upstream_url, "http://", 7) == 0 ? &sg_upstream_http1 : &sg_upstream_curl;
    if (p->transport->proxy_init(p, err, errlen) != 0) goto fail;
    for (unsigned i = 0; i < lanes; i++) {
        sg_proxy_lane *l = &p->lanes[i];
        l->transport = p->transport;
        l->url = p->url;
        l->ca_file = p->ca_file;
        l->connect_ms =
            cfg->connect_timeout_ms ? cfg->connect_timeout_ms : SG_PROXY_DEFAULT_CONNECT_MS;
        l->response_ms =
            cfg->response_timeout_ms ? cfg->response_timeout_ms : SG_PROXY_DEFAULT_RESPONSE_MS;
        l->max_buffered = cfg->max_buffered ? cfg->max_buffered : DEFAULT_BUFFERED;
        l->epfd = -1;
        p->nlanes++;
        if (p->transport->lane_init(p, l, err, errlen) != 0) goto fail;
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
        p->transport->lane_free(&p->lanes[i]);
    if (p->transport) p->transport->proxy_free(p);
    free(p->lanes);
    free(p->url);
    free(p->ca_file);
    free(p);
}

sg_transfer *sg_proxy_start(sg_proxy_lane *p, const sg_proxy_request *req,
                            const sg_transfer_ops *ops, int client_fd)
{
    if (p->stopping) return NULL;
    sg_transfer *t = calloc(1, p->transport->transfer_size);
    if (!t) return NULL;
    t->lane = p;
    t->refs = 2;
    t->client_fd = client_fd;
    t->ops = *ops;
    t->want = SG_WANT_HEAD;
    t->started_ns = sg_now_mono_ns();
    t->head_deadline_ns = t->started_ns + (uint64_t)p->response_ms * 1000000u;
    if (p->transport->start(p, t, req) != 0) {
        transfer_free(t);
        return NULL;
    }
    return t;
}

/* ---- the consumer's side --------------------------------------------------------- */

sg_transfer_head_state sg_transfer_head_get(sg_transfer *t, sg_transfer_head *out)
{
    if (t->done && t->error != SG_PROXY_OK)
        return SG_HEAD_FAILED; /* nothing was sent to the client yet: answer 502/504 instead */
    if (!t->head_done || (t->defer && !t->done)) return SG_HEAD_PENDING;
    out->status = t->status;
    out->content_type = t->content_type;
    out->session_id = t->session_id;
    out->complete = t->done;
    t->defer = 0; /* the consumer streams from here on */
    return SG_HEAD_READY;
}

long sg_transfer_read(sg_transfer *t, char *buf, size_t max)
{
    sg_proxy_lane *p = t->lane;
    long r;
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
            attention(p, t);
        }
        r = (long)n;
    } else if (t->done) {
        r = t->error == SG_PROXY_OK ? SG_TRANSFER_EOF : SG_TRANSFER_FAILED;
    } else {
        r = 0;
    }
    return r;
}

int sg_transfer_park(sg_transfer *t, int want)
{
    t->want = want;
    int ready =
        t->done || (want == SG_WANT_HEAD ? t->head_done && !t->defer : t->data.len > t->data_off);
    if (ready) return 0;
    t->parked = 1;
    t->watch_off = 0; /* the next sweep (within 250 ms) watches the client's socket */
    if (t->ops.suspend) t->ops.suspend(t->ops.ud);
    return 1;
}

char *sg_transfer_take_body(sg_transfer *t, size_t *len)
{
    char *body = NULL;
    *len = 0;
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
    return body;
}

sg_proxy_error sg_transfer_error(sg_transfer *t)
{
    return t->done ? t->error : SG_PROXY_OK;
}

uint64_t sg_transfer_started_ns(const sg_transfer *t)
{
    return t->started_ns;
}

void sg_transfer_release(sg_transfer *t)
{
    if (!t) return;
    sg_proxy_lane *p = t->lane;
    int live = !t->done;
    t->cancel = 1;
    if (live) attention(p, t);
    t->parked = 0;
    t->ops.suspend = t->ops.resume = NULL;
    t->client_fd = -1;
    transfer_unref(t);
}
