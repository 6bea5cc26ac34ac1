/* http1.h -- an incremental HTTP/1.1 response parser.
 *
 * The upstream side of the gateway speaks plain HTTP/1.1 to http://
 * upstreams itself (proxy_http1.c) instead of going through libcurl, which cost a
 * sixth of the forwarded path. This is the part of that client that must be
 * exactly right, so it is pure and on its own: bytes in, header lines and
 * de-chunked body pieces out, through callbacks, in any split the network
 * delivers them. It knows Content-Length, chunked transfer coding,
 * read-until-close, 1xx interim responses and keep-alive. */
#ifndef SG_HTTP1_H
#define SG_HTTP1_H

#include <stddef.h>

/* A body callback may return this to stop the parser (flow control); the
 * piece it was offered is not consumed. */
#define SG_HTTP1_PAUSE ((size_t)-1)

#define SG_HTTP1_MAX_LINE 8192  /* longest header line */
#define SG_HTTP1_MAX_HEAD 65536 /* longest header block */

typedef struct sg_http1_sink {
    /* Each line of a header block with its line ending, the status line
     * first and the empty line last ("\r\n"). Returns 0 to abort. */
    size_t (*header)(const char *line, size_t len, void *ud);
    /* A piece of the (de-chunked) body. Returns len, 0 to abort, or
     * SG_HTTP1_PAUSE. */
    size_t (*body)(const char *data, size_t len, void *ud);
    void *ud;
} sg_http1_sink;

enum {
    SG_HTTP1_HEAD,
    SG_HTTP1_BODY_LENGTH,
    SG_HTTP1_CHUNK_SIZE,
    SG_HTTP1_CHUNK_DATA,
    SG_HTTP1_CHUNK_END,
    SG_HTTP1_TRAILER,
    SG_HTTP1_BODY_CLOSE,
    SG_HTTP1_DONE,
    SG_HTTP1_ERROR,
    SG_HTTP1_STATE_COUNT
};

typedef struct sg_http1 {
    int state;
    int status;    /* of the final (non-1xx) response, once its head is done */
    int keepalive; /* the connection may carry another request afterwards */
    int chunked, has_length, http10, conn_close;
    unsigned long long remaining; /* body or chunk bytes still due */
    size_t head_bytes;
    size_t linelen;
    char line[SG_HTTP1_MAX_LINE];
    const char *error; /* why, in state SG_HTTP1_ERROR */
} sg_http1;

/* Ready for a new response; no_body is set for answers that have none
 * whatever they say (a HEAD request). Can't fail. */
void sg_http1_init(sg_http1 *p, int no_body);

/* Feeds n bytes. Returns how many were consumed: all of them, or fewer when
 * the response ended (the rest belongs to no request: the caller must not
 * reuse the connection) or a body callback paused (feed the rest again
 * later). Errors (malformed response, a callback's abort) put the parser in
 * SG_HTTP1_ERROR with p->error set. */
size_t sg_http1_feed(sg_http1 *p, const char *data, size_t n, const sg_http1_sink *sink);

/* The connection closed. Ends a read-until-close body (SG_HTTP1_DONE);
 * anywhere else before SG_HTTP1_DONE it is an error (a truncated answer). */
void sg_http1_eof(sg_http1 *p, const sg_http1_sink *sink);

#endif
