/* http_impl.h -- what the MCP listener's files share (not a public API).
 *
 * http.c starts the listener and routes and decides each request; conn.c
 * keeps each worker's client connections (slow clients, shedding, the
 * memory of idle ones); stream.c forwards a decided request and streams
 * the upstream's answer back; worker.c runs one worker's event loop. They
 * share the listener's struct, the per-request exchange and the few
 * functions declared here. The admin listener (admin.c) answers with the
 * same http_queue_bytes. */
#ifndef SG_HTTP_IMPL_H
#define SG_HTTP_IMPL_H

#include <stdatomic.h>
#include <netinet/in.h> /* INET6_ADDRSTRLEN */
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include "gateway/gateway.h"
#include "net/http.h"
#include "net/wire.h"
#include "net/worker.h"
#include "upstream/proxy.h"

#define MAX_HEADERS 128 /* request headers looked at; 431 beyond */

struct sg_http {
    sg_http_config cfg;
    uint16_t port;
    char port_text[8]; /* the bound port in decimal, for the Host check */
    unsigned nworkers;
    sg_worker *workers;
    atomic_int stopping;
    atomic_int connections;
    atomic_int forwarded; /* exchanges holding a transfer */
    size_t page_size;     /* for the memory sweep; 0: nothing is given back */
};

/* One client connection, from accept to close: its raw-byte scanner and what
 * the slow-client limits and the shedding order need. */
typedef struct conn_slot {
    sg_wire_conn wire;
    sg_worker *worker;
    struct conn_slot *prev, *next; /* the worker's connections, oldest first */
    int busy;                      /* libmicrohttpd holds a request head from it */
    int streaming;                 /* ...and its answer is streaming (an SSE stream) */
    int collecting_body;           /* that request's body is arriving, nothing answered yet */
    int counted;                   /* it counts against --max-connections */
    unsigned pool_seen_answered;   /* wire.answered at the last sweep */
    int pool_released;             /* its pool's zero pages are given back (idle since) */
    char client[INET6_ADDRSTRLEN]; /* its peer's address as text, once audited ("" before) */
} conn_slot;

/* Where a request is: its body arriving, parked on a key refetch or an
 * introspection call, waiting for the upstream's head, collecting a list
 * answer to filter, streaming the answer, or answered. */
enum { PHASE_BODY, PHASE_WAIT, PHASE_HEAD, PHASE_COLLECT, PHASE_STREAM, PHASE_DONE };

#define SSE_ERROR_MAX (SG_MCP_MAX_ID_LEN + 256)

/* One request, from its head to its completion (libmicrohttpd's con_cls). */
typedef struct exchange {
    sg_http *h;
    sg_worker *worker; /* the thread serving it */
    struct MHD_Connection *conn;
    conn_slot *slot; /* NULL only if libmicrohttpd did not report the connection */
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
    uint64_t upstream_started_ns; /* when it was forwarded (upstream latency) */
    uint64_t head_ns;     /* when the upstream's head came (with metrics or an audit log), or 0 */
    int sse_counted;      /* counted in the open event streams gauge */
    uint64_t wait_ticket; /* PHASE_WAIT: what it waits for */
    struct exchange *kw_prev, *kw_next; /* PHASE_WAIT: in the worker's waiters */
} exchange;

/* The request headers as received (names and values borrowed from
 * libmicrohttpd). */
typedef struct header_list {
    sg_header items[MAX_HEADERS];
    size_t n;
    int overflow;
} header_list;

/* ---- http.c ---- */

/* Queues a complete answer (copied) with Cache-Control: no-store; the other
 * headers only when not NULL (www_auth also when not empty). Returns what
 * MHD_queue_response returns (MHD_NO out of memory). */
enum MHD_Result http_queue_bytes(struct MHD_Connection *conn, unsigned status, const char *ctype,
                                 const char *data, size_t len, const char *www_auth,
                                 const char *allow, int close_after);
/* Completes the request's audit records, if it has any waiting (only when
 * the gateway audits). upstream_outcome NULL: classified from body. now_ns:
 * sg_now_mono_ns() when the outcome was known, if the caller has just read
 * it (the upstream's head: head_ns), else 0 (read here). */
void http_audit_done(exchange *ex, int status, int upstream_status, const char *upstream_outcome,
                     const char *content_type, const char *body, size_t len, uint64_t now_ns);

/* ---- stream.c ---- */

/* Forwards the decided request on its worker's lane and answers when the
 * upstream's head is in (parking the connection until then). */
enum MHD_Result http_forward(exchange *ex, const char *method, const header_list *hl);
/* PHASE_HEAD, resumed: the upstream's head may be in. */
enum MHD_Result http_advance_head(exchange *ex);
/* PHASE_COLLECT, resumed: more of a list answer may be in. */
enum MHD_Result http_advance_collect(exchange *ex);

/* ---- conn.c ---- */

/* libmicrohttpd accepted conn on w: attach the framing scanner, count it
 * against --max-connections (shedding one when full). *socket_context gets
 * the slot, or NULL (the connection was shut down: out of memory). */
void conn_open(sg_worker *w, struct MHD_Connection *conn, void **socket_context);
/* The connection closed: forget its slot (NULL is fine). */
void conn_close(conn_slot *c);
/* conn's slot, or NULL. */
conn_slot *conn_of(struct MHD_Connection *conn);
/* Runs the slow-client and memory sweep when it is due (w->next_sweep_ns)
 * and sets when the next one is. w's thread; can't fail. */
void conn_sweep(sg_worker *w, uint64_t now);

#endif
