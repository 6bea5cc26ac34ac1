/* wire.c -- strict HTTP/1.1 request framing on the raw bytes (see wire.h).
 *
 * The grammar is RFC 9112 with every leniency removed that lets two parsers
 * disagree about where a request ends: CRLF only (§2.2), no whitespace
 * before a field's colon and no obs-fold (§5.1, §5.2), no CR, LF or NUL and
 * no other control byte but HTAB inside a field value (§5.5 of RFC 9110),
 * exactly one framing (§6.1, §6.3): one Content-Length of plain digits, or
 * one Transfer-Encoding that is exactly "chunked" (an HTTP/1.1 request
 * only); anything else with a syntactically valid coding list is 501.
 * Repeated Mcp-Method, Mcp-Name, Mcp-Protocol-Version or Mcp-Session-Id
 * fields are refused too: which copy would the upstream believe? */
#define _GNU_SOURCE
#include "net/wire.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gateway/gateway.h"
#include "mcp/mcp.h"
#include "base/sg.h"

#define MAX_EMPTY_LINES 2  /* CRLFs tolerated before a request line (§2.2) */
#define MAX_CL_DIGITS   18 /* fits uint64_t with room */
#define MAX_CHUNK_HEX   15

enum {
    S_START, /* before a request (empty lines allowed) */
    S_START_LF,
    S_METHOD,
    S_TARGET,
    S_VERSION,
    S_RLINE_LF,
    S_LINE,  /* start of a field line, or the empty line ending the head */
    S_NAME,  /* inside a field name */
    S_VALUE, /* inside a field value */
    S_LINE_LF,
    S_END_LF, /* CR of the empty line seen */
    S_BODY,   /* Content-Length bytes */
    S_CHUNK_SIZE,
    S_CHUNK_EXT,
    S_CHUNK_SIZE_LF,
    S_CHUNK_DATA,
    S_CHUNK_DATA_CR,
    S_CHUNK_DATA_LF,
    S_TLINE, /* trailer section: like S_LINE.. but nothing is recorded */
    S_TNAME,
    S_TVALUE,
    S_TLINE_LF,
    S_TEND_LF,
    S_FAILED
};

static const char *const mcp_fields[4] = {"mcp-method", "mcp-name", "mcp-protocol-version",
                                          "mcp-session-id"};
static const char *const mcp_repeated[4] = {
    "Repeated Mcp-Method header", "Repeated Mcp-Name header",
    "Repeated Mcp-Protocol-Version header", "Repeated Mcp-Session-Id header"};

/* Byte classes as 256-bit sets: every request byte is classified, and a
 * bit test is several times cheaper than comparisons and strchr (the scan
 * is on the path of every request). */
static const uint64_t tchar_set[4] = {0x03ff6cfa00000000ull, 0x57ffffffc7fffffeull, 0, 0};
/* A field-value byte other than CR: VCHAR, SP, HTAB, obs-text. */
static const uint64_t value_set[4] = {0xffffffff00000200ull, 0x7fffffffffffffffull,
                                      0xffffffffffffffffull, 0xffffffffffffffffull};

/* RFC 9110 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~ */
static int is_tchar(unsigned char c)
{
    return (int)((tchar_set[c >> 6] >> (c & 63)) & 1);
}

static int is_value_byte(unsigned char c)
{
    return (int)((value_set[c >> 6] >> (c & 63)) & 1);
}

/* Length of the run of value bytes at the start of p[0..n). Eight bytes at
 * a time while a word holds no control byte (below 0x20, or 0x7f: the
 * classic "has a byte less than" and "has a zero byte" word tests, which
 * never miss one), then byte by byte from the first word that may: a bearer
 * token is most of a request head. */
static size_t value_run(const char *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t x;
        memcpy(&x, p + i, sizeof x);
        uint64_t del = x ^ (ones * 0x7f);
        if ((((x - ones * 0x20) & ~x) | ((del - ones) & ~del)) & highs) break;
        i += 8;
    }
    while (i < n && is_value_byte((unsigned char)p[i]))
        i++;
    return i;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void sg_wire_scan_init(sg_wire_scan *s)
{
    memset(s, 0, sizeof *s);
    s->state = S_START;
}

sg_wire_phase sg_wire_scan_phase(const sg_wire_scan *s)
{
    if (s->state == S_START && s->empty_lines == 0) return SG_WIRE_IDLE;
    if (s->state <= S_END_LF || s->state == S_FAILED) return SG_WIRE_HEAD;
    return SG_WIRE_BODY;
}

static int fail(sg_wire_scan *s, int status, const char *why)
{
    s->state = S_FAILED;
    s->status = status;
    s->why = why;
    return status;
}

static void new_message(sg_wire_scan *s)
{
    unsigned messages = s->messages + 1;
    sg_wire_scan_init(s);
    s->messages = messages;
}

/* OWS-trimmed value of the current field. */
static void trimmed_value(const sg_wire_scan *s, const char **v, size_t *n)
{
    const char *p = s->value;
    size_t len = s->value_len;
    while (len && (*p == ' ' || *p == '\t'))
        p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    *v = p;
    *n = len;
}

/* A transfer-coding list ("a, b;q=1") that is syntactically valid: 501 for
 * what we do not implement, 400 for what is not a list at all. */
static int coding_list_valid(const char *v, size_t n)
{
    int in_token = 0, tokens = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (is_tchar(c) || c == ';' || c == '=' || c == '"') {
            if (!in_token) tokens++;
            in_token = 1;
        } else if (c == ',') {
            if (!in_token) return 0;
            in_token = 0;
        } else if (c != ' ' && c != '\t') {
            return 0;
        }
    }
    return in_token && tokens > 0;
}

/* A field line ended: record what framing depends on. */
static int end_field(sg_wire_scan *s)
{
    if (s->name_overflow) return 0;
    const char *v;
    size_t n;
    trimmed_value(s, &v, &n);
    if (strcmp(s->name, "content-length") == 0) {
        if (++s->n_cl > 1) return fail(s, 400, "Repeated Content-Length header");
        if (s->value_overflow || n == 0 || n > MAX_CL_DIGITS)
            return fail(s, 400, "Invalid Content-Length header");
        uint64_t cl = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i] < '0' || v[i] > '9') return fail(s, 400, "Invalid Content-Length header");
            cl = cl * 10 + (uint64_t)(v[i] - '0');
        }
        s->content_length = cl;
    } else if (strcmp(s->name, "transfer-encoding") == 0) {
        if (++s->n_te > 1) return fail(s, 400, "Repeated Transfer-Encoding header");
        if (!s->value_overflow && n == 7 && strncasecmp(v, "chunked", 7) == 0)
            s->te_chunked = 1;
        else if (!s->value_overflow && coding_list_valid(v, n))
            return fail(s, 501, "Transfer-Encoding other than chunked is not implemented");
        else
            return fail(s, 400, "Invalid Transfer-Encoding header");
    } else {
        for (int i = 0; i < 4; i++)
            if (strcmp(s->name, mcp_fields[i]) == 0 && ++s->n_mcp[i] > 1)
                return fail(s, 400, mcp_repeated[i]);
    }
    return 0;
}

/* The head is complete: decide how the body is framed. */
static int end_head(sg_wire_scan *s)
{
    if (s->n_te && s->n_cl)
        return fail(s, 400, "Both Content-Length and Transfer-Encoding headers");
    if (s->n_te && s->http10) return fail(s, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (s->te_chunked) {
        s->state = S_CHUNK_SIZE;
        s->digits = 0;
        s->remaining = 0;
    } else if (s->content_length) {
        s->state = S_BODY;
        s->remaining = s->content_length;
    } else {
        new_message(s);
    }
    return 0;
}

/* Long because it is one state machine: every byte of every client request
 * passes through this loop, one case per state of RFC 9112's request
 * grammar, so all the transitions are read (and audited against the RFC)
 * in one place and a byte costs one switch, not a call per state. The
 * non-trivial steps (header values, the end of a head) are helpers above. */
int sg_wire_scan_feed(sg_wire_scan *s, const char *p, size_t n, size_t *good)
{
    size_t good_end = 0;
    if (good) *good = 0;
    if (s->state == S_FAILED) return s->status;
    static const char version[] = "HTTP/1.1";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        unsigned before = s->messages;
        int rc = 0;
        switch (s->state) {
        case S_START:
            if (c == '\r') {
                if (++s->empty_lines > MAX_EMPTY_LINES)
                    rc = fail(s, 400, "Too many empty lines before the request line");
                else
                    s->state = S_START_LF;
            } else if (is_tchar(c)) {
                s->state = S_METHOD;
            } else {
                rc = fail(s, 400, "Malformed request line");
            }
            break;
        case S_START_LF:
            if (c == '\n')
                s->state = S_START;
            else
                rc = fail(s, 400, "Bare CR in the request head");
            break;
        case S_METHOD:
            if (c == ' ')
                s->state = S_TARGET, s->name_len = 0;
            else if (!is_tchar(c))
                rc = fail(s, 400, "Malformed request line");
            break;
        case S_TARGET:
            if (c == ' ' && s->name_len > 0) {
                s->state = S_VERSION;
                s->value_len = 0;
            } else if (c > 0x20 && c < 0x7f) {
                s->name_len = 1; /* the target is not empty */
            } else {
                rc = fail(s, 400, "Malformed request line");
            }
            break;
        case S_VERSION:
            if (s->value_len < 8) {
                /* "HTTP/1.1" or "HTTP/1.0" */
                int ok = s->value_len == 7 ? (c == '1' || c == '0') : c == version[s->value_len];
                if (!ok) rc = fail(s, 400, "Malformed request line");
                if (s->value_len == 7) s->http10 = c == '0';
                s->value_len++;
            } else if (c == '\r') {
                s->state = S_RLINE_LF;
            } else if (c == '\n') {
                rc = fail(s, 400, "Bare LF in the request head");
            } else {
                rc = fail(s, 400, "Malformed request line");
            }
            break;
        case S_RLINE_LF:
        case S_LINE_LF:
        case S_TLINE_LF:
            if (c != '\n') {
                rc = fail(s, 400, "Bare CR in the request head");
            } else if (s->state == S_LINE_LF && (rc = end_field(s)) != 0) {
                break;
            } else {
                s->state = s->state == S_TLINE_LF ? S_TLINE : S_LINE;
            }
            break;
        case S_LINE:
        case S_TLINE:
            if (c == '\r') {
                s->state = s->state == S_LINE ? S_END_LF : S_TEND_LF;
            } else if (c == '\n') {
                rc = fail(s, 400, "Bare LF in the request head");
            } else if (c == ' ' || c == '\t') {
                rc = fail(s, 400, "Folded or indented header line");
            } else if (is_tchar(c)) {
                s->state = s->state == S_LINE ? S_NAME : S_TNAME;
                s->name[0] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
                s->name_len = 1;
                s->name_overflow = 0;
            } else {
                rc = fail(s, 400, "Invalid header name");
            }
            break;
        case S_NAME:
        case S_TNAME:
            if (c == ':') {
                s->name[s->name_len < sizeof s->name ? s->name_len : sizeof s->name - 1] = 0;
                s->state = s->state == S_NAME ? S_VALUE : S_TVALUE;
                s->value_len = 0;
                s->value_overflow = 0;
            } else if (c == ' ' || c == '\t') {
                rc = fail(s, 400, "Whitespace in a header name or before its colon");
            } else if (is_tchar(c)) {
                if (s->name_len < sizeof s->name - 1)
                    s->name[s->name_len] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
                else
                    s->name_overflow = 1;
                s->name_len++;
            } else if (c == '\r' || c == '\n') {
                rc = fail(s, 400, "Header line without a colon");
            } else {
                rc = fail(s, 400, "Invalid header name");
            }
            break;
        case S_VALUE:
        case S_TVALUE: {
            /* The run of value bytes at once: a bearer token is most of a
             * request head. The first bytes are kept for end_field. */
            size_t j = i + value_run(p + i, n - i);
            if (s->state == S_VALUE && j > i) {
                size_t room = sizeof s->value - s->value_len, run = j - i;
                memcpy(s->value + s->value_len, p + i, run < room ? run : room);
                s->value_len += run < room ? run : room;
                if (run > room) s->value_overflow = 1;
            }
            if (j == n) {
                i = n - 1; /* the whole feed was value bytes */
                break;
            }
            i = j;
            c = (unsigned char)p[i];
            if (c == '\r') {
                s->state = s->state == S_VALUE ? S_LINE_LF : S_TLINE_LF;
            } else if (c == '\n') {
                rc = fail(s, 400, "Bare LF in the request head");
            } else if (c == 0) {
                rc = fail(s, 400, "NUL in a header value");
            } else {
                rc = fail(s, 400, "Control character in a header value");
            }
            break;
        }
        case S_END_LF:
            if (c != '\n')
                rc = fail(s, 400, "Bare CR in the request head");
            else
                rc = end_head(s);
            break;
        case S_BODY: {
            size_t take = n - i;
            if (take > s->remaining) take = (size_t)s->remaining;
            s->remaining -= take;
            s->body_bytes += take;
            i += take - 1;
            if (s->remaining == 0) new_message(s);
            break;
        }
        case S_CHUNK_SIZE: {
            int h = hexval(c);
            if (h >= 0 && s->digits < MAX_CHUNK_HEX) {
                s->remaining = s->remaining * 16 + (uint64_t)h;
                s->digits++;
            } else if (s->digits > 0 && c == ';') {
                s->state = S_CHUNK_EXT;
            } else if (s->digits > 0 && c == '\r') {
                s->state = S_CHUNK_SIZE_LF;
            } else {
                rc = fail(s, 400, "Malformed chunk size");
            }
            break;
        }
        case S_CHUNK_EXT:
            if (c == '\r')
                s->state = S_CHUNK_SIZE_LF;
            else if (!is_value_byte(c))
                rc = fail(s, 400, "Malformed chunk extension");
            break;
        case S_CHUNK_SIZE_LF:
            if (c != '\n')
                rc = fail(s, 400, "Malformed chunk size");
            else if (s->remaining == 0)
                s->state = S_TLINE;
            else
                s->state = S_CHUNK_DATA;
            break;
        case S_CHUNK_DATA: {
            size_t take = n - i;
            if (take > s->remaining) take = (size_t)s->remaining;
            s->remaining -= take;
            s->body_bytes += take;
            i += take - 1;
            if (s->remaining == 0) s->state = S_CHUNK_DATA_CR;
            break;
        }
        case S_CHUNK_DATA_CR:
            if (c == '\r')
                s->state = S_CHUNK_DATA_LF;
            else
                rc = fail(s, 400, "Chunk data longer than its size");
            break;
        case S_CHUNK_DATA_LF:
            if (c == '\n') {
                s->state = S_CHUNK_SIZE;
                s->digits = 0;
                s->remaining = 0;
            } else {
                rc = fail(s, 400, "Chunk data longer than its size");
            }
            break;
        case S_TEND_LF:
            if (c != '\n')
                rc = fail(s, 400, "Bare CR in the request body");
            else
                new_message(s);
            break;
        default:
            rc = s->status ? s->status : fail(s, 400, "Malformed request");
            break;
        }
        if (rc) {
            if (good) *good = good_end;
            return rc;
        }
        if (s->messages != before) good_end = i + 1;
    }
    return 0;
}

/* ---- the registry and recv(2) ------------------------------------------------ */

/* Per thread: fd -> connection, for the sockets this thread's daemon reads.
 * Other threads (libcurl's, the reloader's) have no table and pass through. */
static _Thread_local sg_wire_conn **tl_conns;
static _Thread_local size_t tl_cap;

static ssize_t raw_recv(int fd, void *buf, size_t len, int flags)
{
    return (ssize_t)syscall(SYS_recvfrom, fd, buf, len, flags, NULL, NULL);
}

int sg_wire_attach(sg_wire_conn *c, uint64_t now_ns)
{
    if (c->fd < 0) return -1;
    size_t fd = (size_t)c->fd;
    if (fd >= tl_cap) {
        size_t cap = tl_cap ? tl_cap : 1024;
        while (cap <= fd)
            cap *= 2;
        sg_wire_conn **t = realloc(tl_conns, cap * sizeof *t);
        if (!t) return -1;
        memset(t + tl_cap, 0, (cap - tl_cap) * sizeof *t);
        tl_conns = t;
        tl_cap = cap;
    }
    int fd_keep = c->fd;
    memset(c, 0, sizeof *c);
    c->fd = fd_keep;
    sg_wire_scan_init(&c->scan);
    c->accepted_ns = now_ns;
    tl_conns[fd] = c;
    return 0;
}

void sg_wire_detach(sg_wire_conn *c)
{
    if (c->fd >= 0 && (size_t)c->fd < tl_cap && tl_conns[c->fd] == c) tl_conns[c->fd] = NULL;
}

void sg_wire_thread_free(void)
{
    free(tl_conns);
    tl_conns = NULL;
    tl_cap = 0;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 408:
        return "Request Timeout";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

void sg_wire_refuse(sg_wire_conn *c, int status, const char *why)
{
    if (c->closed) return;
    c->closed = 1;
    if (status) {
        sg_buf body = SG_BUF_INIT;
        sg_gateway_error_body(
            &body, status == 503 ? SG_JSONRPC_INTERNAL_ERROR : SG_JSONRPC_INVALID_REQUEST, why);
        char head[256];
        int hn =
            snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Cache-Control: no-store\r\nContent-Length: %zu\r\n\r\n",
                     status, reason_phrase(status), sg_buf_ok(&body) ? body.len : 0);
        sg_buf answer = SG_BUF_INIT;
        if (hn > 0 && (size_t)hn < sizeof head) {
            sg_buf_append(&answer, head, (size_t)hn);
            if (sg_buf_ok(&body)) sg_buf_append(&answer, body.data ? body.data : "", body.len);
        }
        /* Small, and the connection has nothing else queued: one send fits
         * the socket buffer (a client that does not read loses it). */
        if (sg_buf_ok(&answer) && answer.len)
            (void)send(c->fd, answer.data, answer.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        sg_buf_free(&answer);
        sg_buf_free(&body);
    }
    /* Both directions: the client sees the end of the answer, and the
     * socket turns readable so libmicrohttpd closes it at once. */
    shutdown(c->fd, SHUT_RDWR);
}

/* A refusal is sent once every earlier request on the connection has been
 * answered (libmicrohttpd reads ahead while it answers): until then the
 * socket looks empty, and sg_wire_answered sends it. */
static ssize_t owe_or_refuse(sg_wire_conn *c)
{
    if (c->scan.messages > c->answered) {
        errno = EAGAIN;
        return -1;
    }
    sg_wire_refuse(c, c->owed_status, c->owed_why);
    return 0;
}

void sg_wire_answered(sg_wire_conn *c)
{
    c->answered++;
    /* A head the client sent while the previous answer was on its way gets
     * its whole deadline from now. */
    if (sg_wire_scan_phase(&c->scan) == SG_WIRE_HEAD) c->head_started_ns = sg_now_mono_ns();
    if (c->owed_status && !c->closed && c->scan.messages <= c->answered)
        sg_wire_refuse(c, c->owed_status, c->owed_why);
}

/* libmicrohttpd's reads. A refused request is answered here and reported
 * as the end of the stream; bytes before the fault that complete earlier
 * requests are still handed over, so their answers go out first. */
ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    sg_wire_conn *c = fd >= 0 && (size_t)fd < tl_cap ? tl_conns[fd] : NULL;
    if (!c || (flags & MSG_PEEK)) return raw_recv(fd, buf, len, flags);
    if (c->closed) return 0;
    if (c->owed_status) return owe_or_refuse(c);
    if (!c->read_base || (uintptr_t)buf < c->read_base) c->read_base = (uintptr_t)buf;
    ssize_t got = raw_recv(fd, buf, len, flags);
    if (got <= 0) return got;
    sg_wire_phase was = sg_wire_scan_phase(&c->scan);
    unsigned messages = c->scan.messages;
    size_t good = 0;
    int status = sg_wire_scan_feed(&c->scan, buf, (size_t)got, &good);
    if (status) {
        sg_log(SG_LOG_DEBUG, "http: request refused before parsing: %d %s", status, c->scan.why);
        c->owed_status = status;
        c->owed_why = c->scan.why;
        return good ? (ssize_t)good : owe_or_refuse(c);
    }
    sg_wire_phase now = sg_wire_scan_phase(&c->scan);
    if (now == SG_WIRE_IDLE || c->scan.messages != messages) {
        c->head_started_ns = 0;
        c->body_started_ns = 0;
    }
    if (now != SG_WIRE_IDLE && (was == SG_WIRE_IDLE || c->scan.messages != messages)) {
        c->head_started_ns = sg_now_mono_ns();
    }
    if (now == SG_WIRE_BODY && !c->body_started_ns) c->body_started_ns = sg_now_mono_ns();
    return got;
}

int sg_wire_interposed(void)
{
    void *bound = dlsym(RTLD_DEFAULT, "recv");
    return bound == (void *)&recv;
}
