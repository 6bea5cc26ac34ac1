/* proxy_impl.h -- what the upstream lane's files share (not a public API;
 * proxy.h is).
 *
 * proxy.c is the transfer lifecycle, the same whatever carries the bytes:
 * starting, the response head and body as the consumer sees them (defer,
 * pause, park and resume), cancels, deadlines, parked clients that hung up,
 * retiring. A transport moves the bytes, behind the ops table below, one
 * per proxy, chosen by the URL's scheme at sg_proxy_new:
 *   proxy_http1.c  our own HTTP/1.1 keep-alive client (http://)
 *   proxy_curl.c   a libcurl multi per lane (https://)
 * Both report what arrives through proxy_head_line and proxy_body, and end
 * a transfer with proxy_finish then proxy_retire.
 *
 * Threads: none of this is locked. A lane and its transfers are used by
 * the lane's worker thread only, and curl's and the parser's callbacks run
 * inside that thread's calls into the lane; the consumer's suspend and
 * resume callbacks run there too. The one call from another thread is
 * sg_transfer_release by the main thread when it stops a worker's daemon,
 * after joining the worker (the join orders it after everything else). */
#ifndef SG_PROXY_IMPL_H
#define SG_PROXY_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "upstream/proxy.h"

#define MAX_HEADER_LINE 8192 /* longest request header line sent upstream */

typedef struct upstream_transport upstream_transport;

/* One request forwarded: what the lifecycle and the consumer share. A
 * transport's own transfer struct starts with it (transfer_size). */
struct sg_transfer {
    sg_proxy_lane *lane;
    int refs;            /* consumer + lane (+ attention list) */
    uint64_t started_ns; /* sg_now_mono_ns() when sg_proxy_start made it */
    uint64_t head_deadline_ns;
    uint64_t connect_deadline_ns; /* a connect the transport waits for itself; 0: none */
    sg_transfer *next, *prev;     /* the lane's active list */
    int attn;                     /* on the attention list: a cancel or unpause to act on */
    sg_transfer *attn_next;

    int cancel;  /* consumer released it early */
    int paused;  /* proxy_body refused a piece: the buffer is full */
    int unpause; /* the consumer drained the buffer: resume the upstream */
    int active;  /* started and not yet retired */
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
    int defer; /* a body that is not an event stream: wake the consumer when it
                  is complete or DEFER_BYTES are buffered, not at every step */
    int client_fd;
    int watch_off; /* the client sent bytes while parked: stop peeking */
    sg_transfer_ops ops;
};

struct sg_proxy_lane {
    const upstream_transport *transport;
    void *impl;      /* the transport's lane state */
    const char *url; /* the proxy's settings, copied for the hot path */
    const char *ca_file;
    uint32_t connect_ms, response_ms;
    size_t max_buffered;
    int stopping;
    int epfd; /* the owning worker's epoll set (borrowed) */
    sg_transfer *active;
    sg_transfer *attn; /* transfers a consumer cancelled or unpaused */
    uint64_t next_sweep;
};

struct sg_proxy {
    const upstream_transport *transport;
    void *impl; /* the transport's proxy-wide state (e.g. the resolved address) */
    char *url;
    char *ca_file;
    unsigned nlanes;
    sg_proxy_lane *lanes;
};

/* One way of carrying transfers to the upstream. Every function runs on the
 * lane's thread except proxy_init/proxy_free/lane_init/lane_free (the
 * thread that creates and frees the proxy). */
struct upstream_transport {
    const char *name;
    size_t transfer_size; /* the transport's transfer struct, sg_transfer first */
    /* Proxy-wide set-up for p->url (p->impl). Returns 0, or -1 with a
     * message in err. */
    int (*proxy_init)(sg_proxy *p, char *err, size_t errlen);
    void (*proxy_free)(sg_proxy *p);
    /* l->impl for a new lane (l's settings are filled). Returns 0, or -1
     * with a message in err. */
    int (*lane_init)(sg_proxy *p, sg_proxy_lane *l, char *err, size_t errlen);
    /* Frees l->impl; every transfer is retired. */
    void (*lane_free)(sg_proxy_lane *l);
    /* Sends req on t: calls proxy_activate(l, t) once t is registered and
     * returns 0 (t may already be finished and retired: an unreachable
     * upstream), or returns -1 before activating when t cannot be started
     * (out of memory); the caller then frees t. */
    int (*start)(sg_proxy_lane *l, sg_transfer *t, const sg_proxy_request *req);
    /* One ready socket of this lane (tagged with SG_PROXY_EPOLL_TAG). */
    void (*event)(sg_proxy_lane *l, uint64_t tagged, uint32_t events);
    /* How long until run is due for the transport's own timers, in ms; -1
     * for no timer. */
    long (*timeout_ms)(sg_proxy_lane *l);
    /* The transport's timers and completed transfers; may be NULL. */
    void (*run)(sg_proxy_lane *l);
    /* Writes the requests started since the last call; may be NULL. */
    void (*flush)(sg_proxy_lane *l);
    /* The consumer drained t's buffer: take the upstream's bytes again. */
    void (*unpause)(sg_proxy_lane *l, sg_transfer *t);
    /* t leaves the lane (finished, cancelled or timed out): unregister it,
     * keep or close its connection. */
    void (*detach)(sg_proxy_lane *l, sg_transfer *t);
    /* Frees what the transport's part of t owns (not t itself). */
    void (*transfer_free)(sg_transfer *t);
};

extern const upstream_transport sg_upstream_http1; /* proxy_http1.c */
extern const upstream_transport sg_upstream_curl;  /* proxy_curl.c */

/* libcurl's global set-up, once (both transports use libcurl: the http1
 * one for its URL parser). Not thread-safe: called from sg_proxy_new, on
 * the main thread before any worker exists. Returns 0, or -1 with a
 * message in err. */
int proxy_curl_global_init(char *err, size_t errlen);

/* ---- what a transport calls (proxy.c) -------------------------------------- */

/* Puts a started transfer on the lane's active list (the lane holds its
 * reference from here until proxy_retire). Can't fail. */
void proxy_activate(sg_proxy_lane *l, sg_transfer *t);

/* Ends t with e, resuming a parked consumer; the first ending wins. Can't
 * fail. */
void proxy_finish(sg_transfer *t, sg_proxy_error e);

/* Takes t off the lane (transport detach included) and drops the lane's
 * reference. Can't fail. */
void proxy_retire(sg_proxy_lane *l, sg_transfer *t);

/* One response header line as the upstream sent it (status line, header,
 * or the blank line that ends a block): status, Content-Type and
 * Mcp-Session-Id are kept, the consumer is woken when the head is
 * complete. Returns 0, or -1 when the consumer cancelled (stop the
 * transfer). */
int proxy_head_line(sg_transfer *t, const char *line, size_t n);

/* What proxy_body did with a piece of the body. */
typedef enum proxy_body_result {
    PROXY_BODY_TAKEN, /* buffered for the consumer */
    PROXY_BODY_PAUSE, /* not taken: the consumer has not drained what is held;
                         offer it again after the transport's unpause */
    PROXY_BODY_STOP,  /* not taken: cancelled, or out of memory (data not ok) */
} proxy_body_result;

/* A piece of the (de-chunked) response body. See proxy_body_result. */
proxy_body_result proxy_body(sg_transfer *t, const char *data, size_t n);

/* Appends "Name: value\r\n" for every header that goes upstream: the
 * allow-listed client headers whose values are safe, then the gateway's own
 * (verified identity). Returns which of Accept and Content-Type the client
 * sent (PROXY_SENT_*). Allocation failure is recorded in b. */
enum { PROXY_SENT_ACCEPT = 1, PROXY_SENT_CTYPE = 2 };
int proxy_upstream_headers(const sg_proxy_request *req, sg_buf *b);

#endif
