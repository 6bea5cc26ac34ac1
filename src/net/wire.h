/* wire.h -- the client's raw request bytes, checked before libmicrohttpd parses them.
 *
 * Why it exists: libmicrohttpd 0.9.75 is lenient where a gateway behind
 * another proxy cannot be (it takes bare LF and bare CR as line ends, keeps
 * "Content-Length :" as a different field, joins obs-folded lines, accepts
 * two Content-Lengths or Content-Length with Transfer-Encoding, hangs on an
 * unknown transfer coding), and MHD_OPTION_STRICT_FOR_CLIENT changes none of
 * that. A front proxy that frames such a request differently would
 * desynchronise with us. So every byte libmicrohttpd reads from a client
 * connection first passes a strict RFC 9112 request-framing scanner
 * (sg_wire_scan); a request it refuses is answered here (400, or 501 for an
 * unknown transfer coding, then close) and libmicrohttpd never sees it. The
 * scanner also knows when each request head and body began, which the slow
 * client limits (src/net/conn.c) are measured against.
 *
 * How: the executable defines recv(2) (libmicrohttpd's only way to read a
 * socket), so the dynamic linker binds libmicrohttpd's calls to it. Sockets
 * registered with sg_wire_attach on the calling thread are scanned; every
 * other call is the plain system call. sg_wire_interposed tells whether the
 * binding took effect (the server refuses to start without it). */
#ifndef SG_WIRE_H
#define SG_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Where the scanner is in the request stream. */
typedef enum sg_wire_phase {
    SG_WIRE_IDLE, /* between requests: no byte of the next one yet */
    SG_WIRE_HEAD, /* inside a request line or header section */
    SG_WIRE_BODY  /* inside a body (Content-Length or chunked, trailers included) */
} sg_wire_phase;

/* Incremental strict request-framing scanner. Plain data, no allocation. */
typedef struct sg_wire_scan {
    int state;
    int status;      /* 0 while acceptable; else 400 or 501 (stays) */
    const char *why; /* static text when status != 0 */
    uint64_t remaining;
    uint64_t body_bytes; /* body bytes of the current request so far */
    unsigned messages;   /* complete requests seen */
    unsigned empty_lines, digits;
    int http10, n_cl, n_te, n_mcp[4], te_chunked;
    uint64_t content_length;
    char name[32];
    size_t name_len;
    char value[64];
    size_t value_len;
    int value_overflow, name_overflow;
} sg_wire_scan;

void sg_wire_scan_init(sg_wire_scan *s);
/* Feeds n bytes. Returns 0 while everything is acceptable; else the refusal
 * status (400, 501) with s->why set, and *good (may be NULL) = the bytes of
 * this feed that end the last request completed before the fault (they may
 * be passed on). Once refused, every later feed is refused. */
int sg_wire_scan_feed(sg_wire_scan *s, const char *p, size_t n, size_t *good);
sg_wire_phase sg_wire_scan_phase(const sg_wire_scan *s);

/* One client connection as the scanner and the slow-client limits see it.
 * Owned by the caller (src/net/conn.c); lives from accept to close. */
typedef struct sg_wire_conn {
    int fd;
    sg_wire_scan scan;
    uint64_t accepted_ns;
    uint64_t head_started_ns; /* first byte of the current head; 0 when idle */
    uint64_t body_started_ns; /* end of the current head, when a body follows */
    unsigned answered;        /* requests libmicrohttpd has answered (sg_wire_answered) */
    int owed_status;          /* a refusal to send once earlier requests are answered */
    const char *owed_why;
    int closed; /* refused or shed: every later read sees end of stream */
    /* The lowest address libmicrohttpd has read this connection's bytes
     * into: the start of its per-connection memory pool, where its read
     * buffer always begins (0 before the first read). conn.c gives the
     * pool's all-zero pages back while the connection is idle. */
    uintptr_t read_base;
} sg_wire_conn;

/* Registers c (c->fd set) for scanning on the calling thread and resets its
 * state. Returns 0, or -1 out of memory (the connection must then be closed:
 * it would not be checked). c stays owned by the caller; sg_wire_detach
 * before it is freed and before the socket is closed. */
int sg_wire_attach(sg_wire_conn *c, uint64_t now_ns);
void sg_wire_detach(sg_wire_conn *c);
/* Frees the calling thread's registry (at worker exit). */
void sg_wire_thread_free(void);

/* libmicrohttpd finished answering one request on c (its response is sent):
 * a refusal that waited for it goes out now. */
void sg_wire_answered(sg_wire_conn *c);

/* Answers the connection now with status (a JSON-RPC error body with a null
 * id and message why, Connection: close) written straight to the socket,
 * then shuts the socket down so libmicrohttpd closes it. status 0 sheds it
 * silently. Only for a connection libmicrohttpd is reading a request on
 * (it has written nothing for that request). Idempotent. */
void sg_wire_refuse(sg_wire_conn *c, int status, const char *why);

/* 1 when libmicrohttpd's recv calls reach the scanner (see above). */
int sg_wire_interposed(void);

#endif
