/* proxy_curl.c -- the https:// transport of the upstream lane: one libcurl
 * multi handle per lane.
 *
 * curl does TLS (with --upstream-ca), connections and their cache; the
 * multi is driven with curl_multi_socket_action from the worker's epoll set,
 * so the work per event is proportional to the sockets that are ready.
 * curl's header and write callbacks hand what arrives to the lifecycle
 * (proxy_head_line, proxy_body in proxy.c); a body the consumer has not
 * drained pauses the easy handle until it has. http:// upstreams do not
 * come here (proxy_http1.c). */
#include "upstream/proxy_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include <curl/curl.h>

#define EASY_SPARES 256

typedef struct curl_transfer {
    sg_transfer base; /* first: the lifecycle's part */
    CURL *easy;
    struct curl_slist *req_headers;
    char *body; /* the request body, copied */
    size_t body_len;
} curl_transfer;

typedef struct curl_lane {
    CURLM *multi;
    CURL *spare[EASY_SPARES]; /* reset easy handles kept for reuse */
    int nspare;
} curl_lane;

static curl_lane *lane_state(sg_proxy_lane *l)
{
    return l->impl;
}

int proxy_curl_global_init(char *err, size_t errlen)
{
    /* curl_global_init is not thread-safe: serve.c creates the proxy on the
     * main thread before any worker exists. */
    static CURLcode global_rc = CURLE_OK;
    static int global_done = 0;
    if (!global_done) {
        global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        global_done = 1;
    }
    if (global_rc != CURLE_OK) {
        sg_errf(err, errlen, "libcurl failed to initialise");
        return -1;
    }
    return 0;
}

/* An easy handle: a spare one when there is one (creating a handle costs
 * several allocations and a 16 KiB buffer per request otherwise). NULL
 * when out of memory. */
static CURL *easy_get(curl_lane *cl)
{
    return cl->nspare > 0 ? cl->spare[--cl->nspare] : curl_easy_init();
}

/* Gives a handle that is in no multi back for reuse (or frees it). */
static void easy_put(curl_lane *cl, CURL *e)
{
    curl_easy_reset(e);
    if (cl->nspare < EASY_SPARES)
        cl->spare[cl->nspare++] = e;
    else
        curl_easy_cleanup(e);
}

/* curl: one response header line (status line and the final blank line
 * included). Returning less than n makes curl abort the transfer. */
static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
    size_t n = size * nitems;
    return proxy_head_line(ud, line, n) == 0 ? n : 0;
}

/* curl: a piece of the response body. */
static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    size_t n = size * nmemb;
    switch (proxy_body(ud, ptr, n)) {
    case PROXY_BODY_TAKEN:
        return n;
    case PROXY_BODY_PAUSE:
        return CURL_WRITEFUNC_PAUSE;
    case PROXY_BODY_STOP:
        break;
    }
    return 0; /* CURLE_WRITE_ERROR; reported as ENOMEM or client_gone by on_done */
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

static void on_done(sg_proxy_lane *l, CURL *easy, CURLcode rc)
{
    sg_transfer *t = NULL;
    if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t) != CURLE_OK || !t) return;
    int oom = !sg_buf_ok(&t->data);
    sg_proxy_error e = map_curl_error(rc, t->head_done, oom);
    if (e == SG_PROXY_OK && !t->head_done) e = SG_PROXY_EUPSTREAM;
    if (t->cancel && e != SG_PROXY_OK) e = SG_PROXY_ECLIENT;
    proxy_finish(t, e);
    proxy_retire(l, t);
}

/* curl: watch socket s for `what` (CURLMOPT_SOCKETFUNCTION). */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    sg_proxy_lane *l = userp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    ev.data.u64 = SG_PROXY_EPOLL_TAG | (uint64_t)(uint32_t)s;
    if (!socketp) {
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, s, &ev) != 0 && errno == EEXIST)
            epoll_ctl(l->epfd, EPOLL_CTL_MOD, s, &ev);
        curl_multi_assign(lane_state(l)->multi, s, l); /* any non-NULL marks it as known */
    } else {
        epoll_ctl(l->epfd, EPOLL_CTL_MOD, s, &ev);
    }
    return 0;
}

static void drain_done(sg_proxy_lane *l)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(lane_state(l)->multi, &left)))
        if (msg->msg == CURLMSG_DONE) on_done(l, msg->easy_handle, msg->data.result);
}

/* ---- the ops --------------------------------------------------------------------- */

static int curl_proxy_init(sg_proxy *p, char *err, size_t errlen)
{
    CURLU *u = curl_url();
    int bad = !u || curl_url_set(u, CURLUPART_URL, p->url, 0) != CURLUE_OK;
    curl_url_cleanup(u);
    if (bad) {
        sg_errf(err, errlen, "upstream URL '%s' is not a valid URL", p->url);
        return -1;
    }
    return proxy_curl_global_init(err, errlen);
}

static void curl_proxy_free(sg_proxy *p)
{
    (void)p;
}

static int curl_lane_init(sg_proxy *p, sg_proxy_lane *l, char *err, size_t errlen)
{
    (void)p;
    curl_lane *cl = calloc(1, sizeof *cl);
    if (!cl || !(cl->multi = curl_multi_init())) {
        free(cl);
        sg_errf(err, errlen, "out of memory");
        return -1;
    }
    l->impl = cl;
    /* Keep an idle upstream connection for every request that may be in
     * flight at once: a smaller cache closes and reopens TCP connections
     * on every request as soon as concurrency exceeds it. */
    curl_multi_setopt(cl->multi, CURLMOPT_MAXCONNECTS, 1024L);
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETDATA, l);
    return 0;
}

static void curl_lane_free(sg_proxy_lane *l)
{
    curl_lane *cl = lane_state(l);
    if (!cl) return;
    for (int i = 0; i < cl->nspare; i++)
        curl_easy_cleanup(cl->spare[i]);
    curl_multi_cleanup(cl->multi);
    free(cl);
    l->impl = NULL;
}

/* The request headers as curl wants them: the allow-listed ones, and curl's
 * own Expect: 100-continue (for larger bodies), Accept and Content-Type
 * suppressed so the upstream sees what the client sent. Returns 0 or -1
 * (out of memory). */
static int curl_request_headers(curl_transfer *ct, const sg_proxy_request *req)
{
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    if (!h) return -1;
    ct->req_headers = h;
    sg_buf lines = SG_BUF_INIT;
    int seen = proxy_upstream_headers(req, &lines);
    for (char *line = lines.data, *end; line && (end = strstr(line, "\r\n")); line = end + 2) {
        *end = '\0';
        if (!curl_slist_append(h, line)) {
            sg_buf_free(&lines);
            return -1;
        }
    }
    int oom = !sg_buf_ok(&lines);
    sg_buf_free(&lines);
    if (oom || (!(seen & PROXY_SENT_ACCEPT) && !curl_slist_append(h, "Accept:")) ||
        (!(seen & PROXY_SENT_CTYPE) && !curl_slist_append(h, "Content-Type:")))
        return -1;
    return 0;
}

static int curl_start(sg_proxy_lane *l, sg_transfer *t, const sg_proxy_request *req)
{
    curl_transfer *ct = (curl_transfer *)t;
    curl_lane *cl = lane_state(l);
    if (!(ct->easy = easy_get(cl)) || curl_request_headers(ct, req) != 0) return -1;

    CURL *e = ct->easy;
    curl_easy_setopt(e, CURLOPT_URL, l->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)t);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, ct->req_headers);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(l->connect_ms < l->response_ms ? l->connect_ms : l->response_ms));
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HTTP_TRANSFER_DECODING, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    if (l->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, l->ca_file);
    if (strcmp(req->method, "POST") == 0) {
        if (req->body_len) {
            if (!(ct->body = malloc(req->body_len))) return -1;
            memcpy(ct->body, req->body, req->body_len);
            ct->body_len = req->body_len;
        }
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)ct->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, ct->body ? ct->body : "");
    } else if (strcmp(req->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    if (curl_multi_add_handle(cl->multi, e) != CURLM_OK) return -1;
    proxy_activate(l, t);
    return 0;
}

static void curl_event(sg_proxy_lane *l, uint64_t tagged, uint32_t events)
{
    int running = 0;
    int mask = (events & EPOLLIN ? CURL_CSELECT_IN : 0) |
               (events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
               (events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
    curl_multi_socket_action(lane_state(l)->multi, (curl_socket_t)(uint32_t)tagged, mask, &running);
}

static long curl_timeout_ms(sg_proxy_lane *l)
{
    long ms = -1;
    curl_multi_timeout(lane_state(l)->multi, &ms);
    return ms;
}

/* curl's timers, then the transfers it completed. */
static void curl_run(sg_proxy_lane *l)
{
    int running = 0;
    long ms = curl_timeout_ms(l);
    if (ms == 0) curl_multi_socket_action(lane_state(l)->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_done(l);
}

static void curl_unpause(sg_proxy_lane *l, sg_transfer *t)
{
    (void)l;
    curl_easy_pause(((curl_transfer *)t)->easy, CURLPAUSE_CONT);
}

static void curl_detach(sg_proxy_lane *l, sg_transfer *t)
{
    curl_multi_remove_handle(lane_state(l)->multi, ((curl_transfer *)t)->easy);
}

static void curl_transfer_free(sg_transfer *t)
{
    curl_transfer *ct = (curl_transfer *)t;
    if (ct->easy) easy_put(lane_state(t->lane), ct->easy);
    curl_slist_free_all(ct->req_headers);
    free(ct->body);
}

const upstream_transport sg_upstream_curl = {
    .name = "curl",
    .transfer_size = sizeof(curl_transfer),
    .proxy_init = curl_proxy_init,
    .proxy_free = curl_proxy_free,
    .lane_init = curl_lane_init,
    .lane_free = curl_lane_free,
    .start = curl_start,
    .event = curl_event,
    .timeout_ms = curl_timeout_ms,
    .run = curl_run,
    .unpause = curl_unpause,
    .detach = curl_detach,
    .transfer_free = curl_transfer_free,
};
