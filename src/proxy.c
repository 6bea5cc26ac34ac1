/* proxy.c -- the upstream side of scopegate: libcurl multi, one thread.
 *
 * Why one multi handle on its own thread: HTTP worker threads must never
 * block on the upstream (they serve many connections each), and a single
 * multi handle keeps a connection cache so consecutive requests reuse TCP
 * connections. Everything shared between the curl thread and the HTTP
 * threads sits behind one mutex; curl calls that may re-enter our callbacks
 * (curl_multi_perform, curl_easy_pause) run without it. See proxy.h for the
 * park/resume protocol. */
#include "proxy.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <curl/curl.h>

#define DEFAULT_CONNECT_MS  5000u
#define DEFAULT_RESPONSE_MS 30000u
#define DEFAULT_BUFFERED    (256u * 1024)
#define MAX_HEADER_VALUE    512
#define MAX_HEADER_LINE     8192

struct sg_transfer {
    sg_proxy *proxy;
    int refs; /* consumer + curl thread; under proxy->mu */
    CURL *easy;
    struct curl_slist *req_headers;
    char *body;
    size_t body_len;
    uint64_t head_deadline_ns;
    sg_transfer *next; /* pending or active list (curl thread) */

    /* shared state, under proxy->mu */
    int cancel;   /* consumer released it early */
    int paused;   /* the write callback paused the transfer */
    int unpause;  /* the consumer drained the buffer: resume the upstream */
    int in_multi; /* curl thread: handle added to the multi */
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
    int client_fd;
    int watch_off; /* the client sent bytes while parked: stop peeking */
    sg_transfer_ops ops;
};

struct sg_proxy {
    char *url;
    uint32_t connect_ms, response_ms;
    size_t max_buffered;
    CURLM *multi;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    int stopping;         /* under mu */
    int stopped;          /* sg_proxy_stop finished */
    sg_transfer *pending; /* started, not yet seen by the curl thread; under mu */
    sg_transfer *active;  /* curl thread only */
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

/* Must hold mu. The consumer learns news through exactly one resume. */
static void wake_locked(sg_transfer *t)
{
    if (t->parked) {
        t->parked = 0;
        if (t->ops.resume) t->ops.resume(t->ops.ud);
    }
}

static void transfer_free(sg_transfer *t)
{
    if (t->easy) curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->req_headers);
    free(t->body);
    free(t->content_type);
    free(t->session_id);
    sg_buf_free(&t->data);
    free(t);
}

/* Drops one reference; frees on the last. Takes mu itself. */
static void transfer_unref(sg_transfer *t)
{
    sg_proxy *p = t->proxy;
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
    sg_proxy *p = t->proxy;
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
            if (t->want == SG_WANT_HEAD) wake_locked(t);
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
    sg_proxy *p = t->proxy;
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
    wake_locked(t);
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

/* Curl thread: take the transfer out of the multi and drop its reference. */
static void retire(sg_proxy *p, sg_transfer *t, sg_transfer **prev_next)
{
    *prev_next = t->next;
    t->next = NULL;
    if (t->in_multi) curl_multi_remove_handle(p->multi, t->easy);
    t->in_multi = 0;
    transfer_unref(t);
}

static void on_done(sg_proxy *p, CURL *easy, CURLcode rc)
{
    sg_transfer **pp = &p->active;
    while (*pp && (*pp)->easy != easy)
        pp = &(*pp)->next;
    sg_transfer *t = *pp;
    if (!t) return;
    pthread_mutex_lock(&p->mu);
    int oom = !sg_buf_ok(&t->data);
    sg_proxy_error e = map_curl_error(rc, t->head_done, oom);
    if (e == SG_PROXY_OK && !t->head_done) e = SG_PROXY_EUPSTREAM;
    if (t->cancel && e != SG_PROXY_OK) e = SG_PROXY_ECLIENT;
    finish_locked(t, e);
    pthread_mutex_unlock(&p->mu);
    retire(p, t, pp);
}

/* Curl thread: adopt new transfers, honour cancels, unpauses and response
 * deadlines. */
static void service(sg_proxy *p)
{
    pthread_mutex_lock(&p->mu);
    sg_transfer *fresh = p->pending;
    p->pending = NULL;
    pthread_mutex_unlock(&p->mu);
    while (fresh) {
        sg_transfer *t = fresh;
        fresh = t->next;
        t->next = p->active;
        p->active = t;
        if (curl_multi_add_handle(p->multi, t->easy) == CURLM_OK) {
            t->in_multi = 1;
        } else {
            pthread_mutex_lock(&p->mu);
            finish_locked(t, SG_PROXY_ENOMEM);
            pthread_mutex_unlock(&p->mu);
        }
    }
    uint64_t now = sg_now_mono_ns();
    sg_transfer **pp = &p->active;
    while (*pp) {
        sg_transfer *t = *pp;
        pthread_mutex_lock(&p->mu);
        int cancel = t->cancel, unpause = t->unpause, done = t->done;
        t->unpause = 0;
        if (!t->head_done && !done && now >= t->head_deadline_ns) {
            finish_locked(t, SG_PROXY_ETIMEOUT);
            done = 1;
        }
        if (cancel) finish_locked(t, SG_PROXY_ECLIENT);
        pthread_mutex_unlock(&p->mu);
        if (cancel || done) {
            retire(p, t, pp);
            continue;
        }
        if (unpause) curl_easy_pause(t->easy, CURLPAUSE_CONT);
        pp = &t->next;
    }
}

/* Curl thread: a parked consumer's client socket became readable. A read
 * of 0 (or an error) means the client hung up: cancel and resume it so the
 * HTTP layer closes the connection. */
static void check_client(sg_proxy *p, sg_transfer *t)
{
    char byte;
    ssize_t r = recv(t->client_fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    pthread_mutex_lock(&p->mu);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        t->cancel = 1;
        finish_locked(t, SG_PROXY_ECLIENT);
    } else if (r > 0) {
        t->watch_off = 1;
    }
    pthread_mutex_unlock(&p->mu);
}

static void *curl_thread(void *arg)
{
    sg_proxy *p = arg;
    struct curl_waitfd *fds = NULL;
    sg_transfer **fd_owner = NULL;
    size_t fds_cap = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int stopping = p->stopping;
        pthread_mutex_unlock(&p->mu);
        if (stopping) break;
        service(p);
        int running = 0;
        curl_multi_perform(p->multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(p->multi, &left)))
            if (msg->msg == CURLMSG_DONE) on_done(p, msg->easy_handle, msg->data.result);

        /* Watch the sockets of parked clients; bounded by the live transfers. */
        size_t nfds = 0, want = 0;
        for (sg_transfer *t = p->active; t; t = t->next)
            want++;
        if (want > fds_cap) {
            size_t cap = want * 2;
            struct curl_waitfd *nf = realloc(fds, cap * sizeof *nf);
            if (nf) fds = nf;
            sg_transfer **no = nf ? realloc(fd_owner, cap * sizeof *no) : NULL;
            if (no) fd_owner = no;
            if (nf && no) fds_cap = cap;
        }
        uint64_t now = sg_now_mono_ns(), next_deadline = now + 1000000000ull;
        pthread_mutex_lock(&p->mu);
        for (sg_transfer *t = p->active; t; t = t->next) {
            if (!t->head_done && t->head_deadline_ns < next_deadline)
                next_deadline = t->head_deadline_ns;
            if (t->parked && t->client_fd >= 0 && !t->watch_off && nfds < fds_cap) {
                fds[nfds].fd = t->client_fd;
                fds[nfds].events = CURL_WAIT_POLLIN;
                fds[nfds].revents = 0;
                fd_owner[nfds++] = t;
            }
        }
        pthread_mutex_unlock(&p->mu);
        int timeout_ms = next_deadline <= now ? 0 : (int)((next_deadline - now) / 1000000u) + 1;
        if (timeout_ms > 1000) timeout_ms = 1000;
        curl_multi_poll(p->multi, nfds ? fds : NULL, (unsigned)nfds, timeout_ms, NULL);
        for (size_t i = 0; i < nfds; i++)
            if (fds[i].revents) check_client(p, fd_owner[i]);
    }
    free(fds);
    free(fd_owner);

    /* Shutdown: fail everything so parked consumers resume and finish. */
    pthread_mutex_lock(&p->mu);
    sg_transfer *fresh = p->pending;
    p->pending = NULL;
    pthread_mutex_unlock(&p->mu);
    while (fresh) {
        sg_transfer *t = fresh;
        fresh = t->next;
        t->next = p->active;
        p->active = t;
    }
    while (p->active) {
        sg_transfer *t = p->active;
        pthread_mutex_lock(&p->mu);
        finish_locked(t, SG_PROXY_ESHUTDOWN);
        pthread_mutex_unlock(&p->mu);
        retire(p, t, &p->active);
    }
    return NULL;
}

sg_proxy *sg_proxy_new(const sg_proxy_config *cfg, char *err, size_t errlen)
{
    /* curl_global_init is not thread-safe: proxies are created from the
     * main thread before any worker exists. */
    static CURLcode global_rc = CURLE_OK;
    static int global_done = 0;
    if (!cfg->upstream_url || (strncasecmp(cfg->upstream_url, "http://", 7) != 0 &&
                               strncasecmp(cfg->upstream_url, "https://", 8) != 0)) {
        snprintf(err, errlen, "upstream URL must start with http:// or https://");
        return NULL;
    }
    CURLU *u = curl_url();
    int bad = !u || curl_url_set(u, CURLUPART_URL, cfg->upstream_url, 0) != CURLUE_OK;
    curl_url_cleanup(u);
    if (bad) {
        snprintf(err, errlen, "upstream URL '%s' is not a valid URL", cfg->upstream_url);
        return NULL;
    }
    if (!global_done) {
        global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        global_done = 1;
    }
    if (global_rc != CURLE_OK) {
        snprintf(err, errlen, "libcurl failed to initialise");
        return NULL;
    }
    sg_proxy *p = calloc(1, sizeof *p);
    if (!p || !(p->url = strdup(cfg->upstream_url)) || !(p->multi = curl_multi_init())) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    p->connect_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : DEFAULT_CONNECT_MS;
    p->response_ms = cfg->response_timeout_ms ? cfg->response_timeout_ms : DEFAULT_RESPONSE_MS;
    p->max_buffered = cfg->max_buffered ? cfg->max_buffered : DEFAULT_BUFFERED;
    curl_multi_setopt(p->multi, CURLMOPT_MAXCONNECTS, 64L);
    pthread_mutex_init(&p->mu, NULL);
    if (pthread_create(&p->thread, NULL, curl_thread, p) != 0) {
        snprintf(err, errlen, "cannot start the proxy thread");
        pthread_mutex_destroy(&p->mu);
        goto fail;
    }
    p->thread_started = 1;
    return p;
fail:
    if (p) {
        if (p->multi) curl_multi_cleanup(p->multi);
        free(p->url);
        free(p);
    }
    return NULL;
}

void sg_proxy_stop(sg_proxy *p)
{
    if (!p || p->stopped) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_mutex_unlock(&p->mu);
    curl_multi_wakeup(p->multi);
    if (p->thread_started) pthread_join(p->thread, NULL);
    p->thread_started = 0;
    p->stopped = 1;
}

void sg_proxy_free(sg_proxy *p)
{
    if (!p) return;
    sg_proxy_stop(p);
    curl_multi_cleanup(p->multi);
    pthread_mutex_destroy(&p->mu);
    free(p->url);
    free(p);
}

sg_transfer *sg_proxy_start(sg_proxy *p, const sg_proxy_request *req, const sg_transfer_ops *ops,
                            int client_fd)
{
    sg_transfer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->proxy = p;
    t->refs = 2;
    t->client_fd = client_fd;
    t->ops = *ops;
    t->want = SG_WANT_HEAD;
    t->head_deadline_ns = sg_now_mono_ns() + (uint64_t)p->response_ms * 1000000u;
    if (!(t->easy = curl_easy_init())) goto fail;

    /* curl adds Expect: 100-continue for larger bodies and its own Accept:
     * both are suppressed so the upstream sees what the client sent. */
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    if (!h) goto fail;
    t->req_headers = h;
    int has_accept = 0, has_ctype = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const sg_header *hd = &req->headers[i];
        if (!hd->name || !hd->value || !sg_proxy_header_is_forwarded(hd->name)) continue;
        if (!header_value_safe(hd->value)) continue;
        if (strcasecmp(hd->name, "Accept") == 0) has_accept = 1;
        if (strcasecmp(hd->name, "Content-Type") == 0) has_ctype = 1;
        sg_buf line = SG_BUF_INIT;
        sg_buf_printf(&line, "%s: %s", hd->name, hd->value);
        struct curl_slist *nh = sg_buf_ok(&line) ? curl_slist_append(h, line.data) : NULL;
        sg_buf_free(&line);
        if (!nh) goto fail;
    }
    for (size_t i = 0; i < req->nextra; i++) {
        sg_buf line = SG_BUF_INIT;
        sg_buf_printf(&line, "%s: %s", req->extra[i].name, req->extra[i].value);
        struct curl_slist *nh = sg_buf_ok(&line) ? curl_slist_append(h, line.data) : NULL;
        sg_buf_free(&line);
        if (!nh) goto fail;
    }
    if (!has_accept && !curl_slist_append(h, "Accept:")) goto fail;
    if (!has_ctype && !curl_slist_append(h, "Content-Type:")) goto fail;

    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, p->url);
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

    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        pthread_mutex_unlock(&p->mu);
        goto fail;
    }
    t->next = p->pending;
    p->pending = t;
    pthread_mutex_unlock(&p->mu);
    curl_multi_wakeup(p->multi);
    return t;
fail:
    transfer_free(t);
    return NULL;
}

int sg_transfer_head_get(sg_transfer *t, sg_transfer_head *out)
{
    sg_proxy *p = t->proxy;
    int r;
    pthread_mutex_lock(&p->mu);
    if (t->done && t->error != SG_PROXY_OK) {
        r = -1; /* nothing was sent to the client yet: answer 502/504 instead */
    } else if (t->head_done) {
        out->status = t->status;
        out->content_type = t->content_type;
        out->session_id = t->session_id;
        r = 1;
    } else {
        r = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return r;
}

long sg_transfer_read(sg_transfer *t, char *buf, size_t max)
{
    sg_proxy *p = t->proxy;
    long r;
    int kick = 0;
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
            kick = 1;
        }
        r = (long)n;
    } else if (t->done) {
        r = t->error == SG_PROXY_OK ? SG_TRANSFER_EOF : SG_TRANSFER_FAILED;
    } else {
        r = 0;
    }
    pthread_mutex_unlock(&p->mu);
    if (kick) curl_multi_wakeup(p->multi);
    return r;
}

int sg_transfer_park(sg_transfer *t, int want)
{
    sg_proxy *p = t->proxy;
    int parked = 0;
    pthread_mutex_lock(&p->mu);
    t->want = want;
    int ready = t->done || (want == SG_WANT_HEAD ? t->head_done : t->data.len > t->data_off);
    if (!ready) {
        t->parked = 1;
        t->watch_off = 0;
        if (t->ops.suspend) t->ops.suspend(t->ops.ud);
        parked = 1;
    }
    pthread_mutex_unlock(&p->mu);
    if (parked && t->client_fd >= 0) curl_multi_wakeup(p->multi); /* start watching the fd */
    return parked;
}

sg_proxy_error sg_transfer_error(sg_transfer *t)
{
    sg_proxy *p = t->proxy;
    pthread_mutex_lock(&p->mu);
    sg_proxy_error e = t->done ? t->error : SG_PROXY_OK;
    pthread_mutex_unlock(&p->mu);
    return e;
}

void sg_transfer_release(sg_transfer *t)
{
    if (!t) return;
    sg_proxy *p = t->proxy;
    pthread_mutex_lock(&p->mu);
    int kick = !t->done;
    t->cancel = 1;
    t->parked = 0;
    t->ops.suspend = t->ops.resume = NULL;
    t->client_fd = -1;
    pthread_mutex_unlock(&p->mu);
    if (kick) curl_multi_wakeup(p->multi);
    transfer_unref(t);
}
