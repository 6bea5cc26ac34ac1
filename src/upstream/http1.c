/* http1.c -- an incremental HTTP/1.1 response parser (see http1.h).
 *
 * RFC 9112: a response's body length is decided, in order, by 1xx/204/304
 * (none), Transfer-Encoding: chunked, Content-Length, else the connection's
 * end. Anything we cannot frame with certainty is an error, never a guess:
 * a proxy that misframes a response desynchronizes every request after it. */
#include "upstream/http1.h"

#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

void sg_http1_init(sg_http1 *p, int no_body)
{
    /* Everything but the line buffer, of which only the first linelen
     * bytes are ever read: clearing its 8 KiB for every response cost each
     * forwarded request a memset and made every open stream's parser
     * resident. */
    memset(p, 0, offsetof(sg_http1, line));
    p->error = NULL;
    p->state = SG_HTTP1_HEAD;
    p->chunked = no_body ? -1 : 0; /* -1: no body whatever the head says */
}

static void fail(sg_http1 *p, const char *why)
{
    p->state = SG_HTTP1_ERROR;
    p->error = why;
}

/* Value of "Name: value" when the line names `name`, trimmed; else NULL. */
static const char *header_value(const char *line, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    if (len <= nlen || line[nlen] != ':' || strncasecmp(line, name, nlen) != 0) return NULL;
    const char *v = line + nlen + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *vlen = (size_t)(end - v);
    return v;
}

static int parse_decimal(const char *s, size_t n, unsigned long long *out)
{
    unsigned long long v = 0;
    if (n == 0 || n > 18) return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (unsigned long long)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* One complete header line (ending in "\n"). */
static void head_line(sg_http1 *p, const char *line, size_t len, const sg_http1_sink *sink)
{
    p->head_bytes += len;
    if (p->head_bytes > SG_HTTP1_MAX_HEAD) return fail(p, "response header block too large");
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A status line: "HTTP/1.x NNN reason". */
        if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') ||
            line[8] != ' ')
            return fail(p, "not an HTTP/1.x status line");
        int code = 0;
        for (int i = 9; i < 12; i++) {
            if (line[i] < '0' || line[i] > '9') return fail(p, "bad status code");
            code = code * 10 + (line[i] - '0');
        }
        if (code < 100 || code > 599) return fail(p, "bad status code");
        p->status = code;
        p->http10 = line[7] == '0';
        p->has_length = p->conn_close = 0;
        if (p->chunked != -1) p->chunked = 0;
        p->remaining = 0;
    } else if (p->status == 0) {
        return fail(p, "response does not start with a status line");
    } else if (len <= 2 && (line[0] == '\r' || line[0] == '\n')) {
        /* End of a header block. */
        if (sink->header(line, len, sink->ud) == 0) return fail(p, "aborted");
        if (p->status < 200) { /* interim: another head follows */
            if (p->status == 101) return fail(p, "protocol switch refused");
            p->status = 0;
            p->head_bytes = 0;
            return;
        }
        p->keepalive = !p->http10 && !p->conn_close;
        if (p->chunked == -1 || p->status == 204 || p->status == 304) {
            p->state = SG_HTTP1_DONE;
        } else if (p->chunked) {
            p->state = SG_HTTP1_CHUNK_SIZE;
        } else if (p->has_length) {
            p->state = p->remaining ? SG_HTTP1_BODY_LENGTH : SG_HTTP1_DONE;
        } else {
            p->state = SG_HTTP1_BODY_CLOSE;
            p->keepalive = 0;
        }
        return;
    } else {
        size_t vlen;
        const char *v;
        if ((v = header_value(line, len, "Content-Length", &vlen))) {
            unsigned long long n;
            if (parse_decimal(v, vlen, &n) != 0 || (p->has_length && n != p->remaining))
                return fail(p, "bad Content-Length");
            p->has_length = 1;
            p->remaining = n;
        } else if ((v = header_value(line, len, "Transfer-Encoding", &vlen))) {
            /* Only "chunked" (last) is understood; anything else cannot be
             * framed safely. */
            if (vlen != 7 || strncasecmp(v, "chunked", 7) != 0)
                return fail(p, "unsupported Transfer-Encoding");
            if (p->chunked != -1) p->chunked = 1;
        } else if ((v = header_value(line, len, "Connection", &vlen))) {
            if (vlen == 5 && strncasecmp(v, "close", 5) == 0) p->conn_close = 1;
        }
    }
    if (sink->header(line, len, sink->ud) == 0) fail(p, "aborted");
}

/* "1a;ext=1\r\n" -> 26. -1 on a malformed size line. */
static int chunk_size(const char *line, size_t len, unsigned long long *out)
{
    unsigned long long v = 0;
    size_t i = 0;
    for (; i < len; i++) {
        char c = line[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) break;
        if (i >= 15) return -1;
        v = v * 16 + (unsigned long long)d;
    }
    if (i == 0) return -1;
    if (i < len && line[i] != ';' && line[i] != '\r' && line[i] != '\n' && line[i] != ' ')
        return -1;
    *out = v;
    return 0;
}

/* Accumulates one line; returns 1 when p->line holds a whole one. */
static int take_line(sg_http1 *p, const char *data, size_t n, size_t *i)
{
    const char *nl = memchr(data + *i, '\n', n - *i);
    size_t take = nl ? (size_t)(nl - (data + *i)) + 1 : n - *i;
    if (p->linelen + take > sizeof p->line) {
        fail(p, "response line too long");
        return 0;
    }
    memcpy(p->line + p->linelen, data + *i, take);
    p->linelen += take;
    *i += take;
    return nl != NULL;
}

size_t sg_http1_feed(sg_http1 *p, const char *data, size_t n, const sg_http1_sink *sink)
{
    size_t i = 0;
    while (i < n) {
        switch (p->state) {
        case SG_HTTP1_HEAD:
        case SG_HTTP1_CHUNK_SIZE:
        case SG_HTTP1_CHUNK_END:
        case SG_HTTP1_TRAILER:
            if (!take_line(p, data, n, &i)) break;
            {
                size_t len = p->linelen;
                p->linelen = 0;
                if (p->state == SG_HTTP1_HEAD) {
                    head_line(p, p->line, len, sink);
                } else if (p->state == SG_HTTP1_CHUNK_SIZE) {
                    unsigned long long sz;
                    if (chunk_size(p->line, len, &sz) != 0) {
                        fail(p, "bad chunk size");
                        break;
                    }
                    p->remaining = sz;
                    p->state = sz ? SG_HTTP1_CHUNK_DATA : SG_HTTP1_TRAILER;
                } else if (p->state == SG_HTTP1_CHUNK_END) {
                    if (!(len <= 2 && (p->line[0] == '\r' || p->line[0] == '\n')))
                        fail(p, "chunk not followed by CRLF");
                    else
                        p->state = SG_HTTP1_CHUNK_SIZE;
                } else { /* trailer lines until the empty one */
                    if (len <= 2 && (p->line[0] == '\r' || p->line[0] == '\n'))
                        p->state = SG_HTTP1_DONE;
                }
            }
            break;
        case SG_HTTP1_BODY_LENGTH:
        case SG_HTTP1_CHUNK_DATA:
        case SG_HTTP1_BODY_CLOSE: {
            size_t take = n - i;
            if (p->state != SG_HTTP1_BODY_CLOSE && take > p->remaining) take = (size_t)p->remaining;
            size_t r = sink->body(data + i, take, sink->ud);
            if (r == SG_HTTP1_PAUSE) return i;
            if (r != take) {
                fail(p, "aborted");
                return i;
            }
            i += take;
            if (p->state == SG_HTTP1_BODY_CLOSE) break;
            p->remaining -= take;
            if (p->remaining == 0)
                p->state = p->state == SG_HTTP1_CHUNK_DATA ? SG_HTTP1_CHUNK_END : SG_HTTP1_DONE;
            break;
        }
        case SG_HTTP1_DONE:
        case SG_HTTP1_ERROR:
            return i;
        }
        if (p->state == SG_HTTP1_ERROR) return i;
    }
    return i;
}

void sg_http1_eof(sg_http1 *p, const sg_http1_sink *sink)
{
    (void)sink;
    if (p->state == SG_HTTP1_BODY_CLOSE)
        p->state = SG_HTTP1_DONE;
    else if (p->state != SG_HTTP1_DONE && p->state != SG_HTTP1_ERROR)
        fail(p, "connection closed before the response was complete");
}
