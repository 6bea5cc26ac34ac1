/* proxy.h -- forwarding MCP requests to the upstream server.
 *
 * One sg_proxy holds one lane per HTTP worker thread, whose upstream
 * sockets live in that worker's epoll set, so connections to the
 * upstream are reused across requests and a request is served start to
 * finish on one thread that never blocks on the network. A request becomes
 * an sg_transfer shared by two parties on that thread: the lane (producer)
 * and the HTTP connection that streams the answer back (consumer). The
 * consumer never waits: when it finds nothing to do it parks (its suspend
 * callback runs) and the lane calls its resume callback exactly once when
 * there is news. Response bodies are passed through in bounded chunks (the
 * upstream is paused when the client reads slowly), never buffered whole.
 *
 * Only an allow-list of request headers travels upstream; `Authorization`
 * is never among them (no token passthrough).
 *
 * The folder src/upstream/ is the side of scopegate that talks to the MCP
 * server: this lane of transfers, its lifecycle in proxy.c and one
 * transport per scheme behind an ops table (proxy_impl.h): our own
 * HTTP/1.1 keep-alive client for http:// upstreams (proxy_http1.c), libcurl
 * for https:// (proxy_curl.c); and the incremental HTTP/1.1 response
 * parser behind the former (http1.h).
 */
#ifndef SG_PROXY_H
#define SG_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "base/evtag.h"
#include "base/sg.h"

/* The timeouts a lane applies when its config leaves them 0 (the defaults
 * of serve's --connect-timeout-ms and --upstream-timeout-ms). */
#define SG_PROXY_DEFAULT_CONNECT_MS  5000u
#define SG_PROXY_DEFAULT_RESPONSE_MS 30000u

typedef struct sg_proxy_config {
    const char *upstream_url;     /* http(s) URL of the upstream MCP endpoint */
    uint32_t connect_timeout_ms;  /* TCP+TLS connect [SG_PROXY_DEFAULT_CONNECT_MS] */
    uint32_t response_timeout_ms; /* until the response headers [SG_PROXY_DEFAULT_RESPONSE_MS] */
    size_t max_buffered;          /* response bytes held per transfer before pausing [256 KiB] */
    const char *ca_file;          /* https upstreams: CA bundle to verify them with [system's] */
} sg_proxy_config;

typedef struct sg_proxy sg_proxy;
typedef struct sg_proxy_lane sg_proxy_lane;

/* Creates the proxy with `lanes` lanes (one per worker thread; 0 means 1).
 * Returns NULL with a message in err on a bad URL or out of memory. */
sg_proxy *sg_proxy_new(const sg_proxy_config *cfg, unsigned lanes, char *err, size_t errlen);
/* Frees the proxy once every lane has been shut down on its thread and no
 * consumer holds a transfer. NULL is fine. */
void sg_proxy_free(sg_proxy *p);

/* Lane i (< lanes), or NULL. Each lane, and every transfer started on it,
 * must then be used by one thread only (nothing is locked): the worker
 * that attached it, or another thread after that worker was joined. */
sg_proxy_lane *sg_proxy_lane_of(sg_proxy *p, unsigned i);

/* Epoll events for the lane's sockets carry this tag in data.u64 (the socket
 * in the low 32 bits); the worker passes such events to sg_proxy_lane_event.
 * The value is SG_EVTAG_UPSTREAM: every tag is defined in base/evtag.h. */
#define SG_PROXY_EPOLL_TAG SG_EVTAG_UPSTREAM

/* The lane registers its sockets in epfd, the worker's epoll set. Call once,
 * on the lane's thread, before any transfer. Returns 0. */
int sg_proxy_lane_attach(sg_proxy_lane *l, int epfd);
/* The longest the worker may wait in epoll before sg_proxy_lane_run is due
 * (the transport's timers, the periodic sweep, pending cancels), in ms. */
long sg_proxy_lane_timeout_ms(sg_proxy_lane *l);
/* One ready upstream socket (tagged as above) with its epoll events. */
void sg_proxy_lane_event(sg_proxy_lane *l, uint64_t tagged, uint32_t events);
/* Timers, completed transfers (their consumers are resumed), cancels and
 * unpauses, and every 250 ms response deadlines and parked clients that
 * hung up. Call after each epoll round. Can't fail. */
void sg_proxy_lane_run(sg_proxy_lane *l);
/* Writes the requests started since the last call: a transport may hold
 * them until then (proxy_http1.c does), so that one write burst per round
 * wakes the upstream once. Call on the lane's thread before every epoll
 * wait; a request started and never flushed is never sent. Can't fail. */
void sg_proxy_lane_flush(sg_proxy_lane *l);
/* Fails every live transfer with SG_PROXY_ESHUTDOWN (resuming its parked
 * consumer); later sg_proxy_start calls on the lane return NULL. */
void sg_proxy_lane_shutdown(sg_proxy_lane *l);

/* Why a transfer failed. */
typedef enum sg_proxy_error {
    SG_PROXY_OK = 0,
    SG_PROXY_EUNREACHABLE, /* connect refused, DNS, TLS, reset before a response: 502 */
    SG_PROXY_ETIMEOUT,     /* no response headers in time: 504 */
    SG_PROXY_EUPSTREAM,    /* the upstream broke off or sent garbage: 502 */
    SG_PROXY_ECLIENT,      /* the client went away: transfer cancelled */
    SG_PROXY_ESHUTDOWN,    /* the gateway is stopping */
    SG_PROXY_ENOMEM
} sg_proxy_error;

/* Returns a fixed, quote-free English phrase. Can't fail. */
const char *sg_proxy_error_text(sg_proxy_error e);
/* A stable snake_case name for metrics ("unreachable", "timeout",
 * "invalid_response", "client_gone", "shutdown", "out_of_memory"; "ok" for
 * 0 and "unknown" beyond). Can't fail. */
const char *sg_proxy_error_name(int e);

/* 1 when a client's request header of this name travels upstream (the
 * allow-list: Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version,
 * Last-Event-ID, Mcp-Method, Mcp-Name), compared case-insensitively; 0
 * otherwise. Can't fail. */
int sg_proxy_header_is_forwarded(const char *name);

/* The client's headers are offered for forwarding (names compared
 * case-insensitively against the allow-list; others are dropped); `extra`
 * headers are the gateway's own (verified identity), already validated,
 * and always sent. */
typedef struct sg_proxy_request {
    const char *method; /* "POST", "GET" or "DELETE" */
    const sg_header *headers;
    size_t nheaders;
    const sg_header *extra;
    size_t nextra;
    const char *body; /* copied; may be NULL when body_len is 0 */
    size_t body_len;
} sg_proxy_request;

/* How the lane tells the consumer there is news. Both run on the lane's
 * thread, from inside a call into the lane or the transfer: they must only
 * flip the consumer's scheduling state (e.g. MHD_suspend_connection /
 * MHD_resume_connection) and return. */
typedef struct sg_transfer_ops {
    void (*suspend)(void *ud);
    void (*resume)(void *ud);
    void *ud;
} sg_transfer_ops;

typedef struct sg_transfer sg_transfer;

/* Starts forwarding, on the lane's thread. client_fd (or -1) is the
 * client's socket: while the consumer is parked the lane checks it every
 * 250 ms and cancels the transfer (SG_PROXY_ECLIENT, consumer resumed) when
 * the client hung up. Returns a transfer the caller must
 * sg_transfer_release, or NULL when the lane is shut down or out of memory. */
sg_transfer *sg_proxy_start(sg_proxy_lane *l, const sg_proxy_request *req,
                            const sg_transfer_ops *ops, int client_fd);

/* What the upstream answered; strings owned by the transfer, valid until
 * release; NULL when the upstream did not send that header. */
typedef struct sg_transfer_head {
    int status;
    const char *content_type;
    const char *session_id; /* Mcp-Session-Id, visible ASCII only */
    int complete;           /* the whole body is already buffered (see sg_transfer_take_body) */
} sg_transfer_head;

/* Where the upstream's response headers are. */
typedef enum sg_transfer_head_state {
    SG_HEAD_PENDING, /* not in yet: park the request (sg_transfer_park) */
    SG_HEAD_READY,   /* in: *out is filled */
    SG_HEAD_FAILED   /* the transfer failed before them (see sg_transfer_error) */
} sg_transfer_head_state;

/* Fills *out once the response headers are in (SG_HEAD_READY). For a body
 * that is not an event stream, the headers are held back until the body is
 * complete or 64 KiB of it are buffered, so a small answer arrives in one
 * piece (out->complete). */
sg_transfer_head_state sg_transfer_head_get(sg_transfer *t, sg_transfer_head *out);

enum { SG_TRANSFER_EOF = -1, SG_TRANSFER_FAILED = -2 };
/* Copies up to max body bytes into buf. Returns the count (> 0), 0 when
 * nothing is buffered yet, SG_TRANSFER_EOF at the clean end of the body, or
 * SG_TRANSFER_FAILED when the body broke off (see sg_transfer_error). */
long sg_transfer_read(sg_transfer *t, char *buf, size_t max);

enum { SG_WANT_HEAD, SG_WANT_DATA };
/* If what the consumer wants (head, or body bytes / the end) is not there
 * yet, calls ops.suspend and returns 1: ops.resume will follow exactly once.
 * Returns 0 when it is already there (call again, do not suspend). */
int sg_transfer_park(sg_transfer *t, int want);

/* Why the transfer failed; SG_PROXY_OK while it runs or after a clean end.
 * Can't fail. */
sg_proxy_error sg_transfer_error(sg_transfer *t);

/* When sg_proxy_start made the transfer (sg_now_mono_ns()): the start of
 * the upstream's latency, read once for the deadline and the metrics.
 * Can't fail. */
uint64_t sg_transfer_started_ns(const sg_transfer *t);

/* When the transfer is complete and succeeded, hands its whole buffered
 * body (malloc'd, free() it; *len bytes) to the caller; else NULL. Nothing
 * is left to sg_transfer_read afterwards. */
char *sg_transfer_take_body(sg_transfer *t, size_t *len);

/* The consumer is done: cancels the upstream request if still running and
 * drops the consumer's reference. No callback runs after it returns. */
void sg_transfer_release(sg_transfer *t);

#endif
