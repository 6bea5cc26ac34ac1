/* stream.c -- a decided request forwarded, and the upstream's answer back.
 *
 * Why it is shaped this way: a forwarded request never blocks its worker's
 * thread. It becomes a transfer on the worker's proxy lane; the client
 * connection is suspended while the upstream has nothing for it and resumed
 * when it has, and a content reader streams the body back in pieces. A
 * small complete answer goes out in one piece with a Content-Length; a list
 * answer is collected whole (bounded) and filtered on this thread, which
 * holds the policy state it was decided with. A stream that breaks off on
 * an SSE event boundary gets a closing JSON-RPC error event with the
 * request's id; anywhere else it is left visibly truncated. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/metrics.h"
#include "net/http_impl.h"

#define STREAM_BLOCK 1024 /* libmicrohttpd's block for a streamed answer (queue_stream) */

/* ---- suspend / resume glue for the proxy ----------------------------------- */

static void ex_suspend(void *ud)
{
    exchange *ex = ud;
    MHD_suspend_connection(ex->conn);
}

static void ex_resume(void *ud)
{
    exchange *ex = ud;
    MHD_resume_connection(ex->conn);
}

/* ---- streaming the upstream answer ------------------------------------------ */

static void arm_sse_error(exchange *ex, sg_proxy_error e)
{
    sg_buf b = SG_BUF_INIT;
    sg_buf_puts(&b, "event: message\ndata: ");
    const char *id = ex->reply.id_raw;
    sg_mcp_error_render(&b, *id ? id : NULL, strlen(id), SG_JSONRPC_INTERNAL_ERROR,
                        sg_proxy_error_text(e), NULL);
    sg_buf_puts(&b, "\n\n");
    if (sg_buf_ok(&b) && b.len <= sizeof ex->sse_error) {
        memcpy(ex->sse_error, b.data, b.len);
        ex->sse_error_len = b.len;
        ex->sse_error_armed = 1;
    }
    sg_buf_free(&b);
}

/* The upstream says its tools changed (MCP notifications/tools/list_changed)
 * in whatever stream it likes, split at any byte: look for the method name
 * in what passes, across chunk boundaries, and have the tool catalogue
 * refetched. A false alarm costs one refetch; nothing is decided by it. */
static void watch_tools_changed(exchange *ex, const char *p, size_t n)
{
    static const char needle[] = "notifications/tools/list_changed";
    enum { NEEDLE = sizeof needle - 1, KEEP = NEEDLE - 1 };
    _Static_assert(KEEP <= sizeof ex->carry, "carry holds a needle less one byte");
    if (!sg_gateway_keeps_catalog(ex->h->cfg.gateway)) return;
    char joint[2 * KEEP];
    size_t head = n < KEEP ? n : KEEP;
    memcpy(joint, ex->carry, ex->ncarry);
    memcpy(joint + ex->ncarry, p, head);
    size_t nj = ex->ncarry + head;
    int hit = sg_memmem(joint, nj, needle, NEEDLE) || sg_memmem(p, n, needle, NEEDLE);
    if (n >= KEEP) {
        memcpy(ex->carry, p + n - KEEP, KEEP);
        ex->ncarry = KEEP;
    } else {
        size_t keep = nj < KEEP ? nj : KEEP;
        memmove(ex->carry, joint + nj - keep, keep);
        ex->ncarry = keep;
    }
    if (hit) sg_gateway_tools_changed(ex->h->cfg.gateway);
}

static ssize_t on_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    exchange *ex = cls;
    if (ex->sse_error_armed) {
        size_t left = ex->sse_error_len - ex->sse_error_off;
        if (left == 0) return MHD_CONTENT_READER_END_OF_STREAM;
        size_t n = left < max ? left : max;
        memcpy(buf, ex->sse_error + ex->sse_error_off, n);
        ex->sse_error_off += n;
        return (ssize_t)n;
    }
    for (;;) {
        long n = sg_transfer_read(ex->xfer, buf, max);
        if (n > 0) {
            watch_tools_changed(ex, buf, (size_t)n);
            if (n >= 2) {
                ex->tail[0] = buf[n - 2];
                ex->tail[1] = buf[n - 1];
            } else {
                ex->tail[0] = ex->tail[1];
                ex->tail[1] = buf[0];
            }
            return n;
        }
        if (n == SG_TRANSFER_EOF) return MHD_CONTENT_READER_END_OF_STREAM;
        if (n == SG_TRANSFER_FAILED) {
            sg_proxy_error e = sg_transfer_error(ex->xfer);
            sg_metric_inc(SG_M_UPSTREAM_ERRORS + (int)e);
            sg_log(e == SG_PROXY_ECLIENT ? SG_LOG_DEBUG : SG_LOG_WARN,
                   "upstream stream broke off: %s", sg_proxy_error_text(e));
            /* On an SSE event boundary the client can be told in-band, with
             * the request's id; anywhere else a truncated body must look
             * truncated, so the chunked encoding is left unterminated. */
            int boundary = ex->tail[1] == '\n' && (ex->tail[0] == '\n' || ex->tail[0] == 0);
            if (ex->sse && boundary && e != SG_PROXY_ECLIENT) {
                arm_sse_error(ex, e);
                if (ex->sse_error_armed) return on_read(cls, pos, buf, max);
            }
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (sg_transfer_park(ex->xfer, SG_WANT_DATA)) return 0;
    }
}

static const char *proxy_outcome(sg_proxy_error e)
{
    switch (e) {
    case SG_PROXY_EUNREACHABLE:
        return "unreachable";
    case SG_PROXY_ETIMEOUT:
        return "timeout";
    case SG_PROXY_ECLIENT:
        return "client_gone";
    case SG_PROXY_ESHUTDOWN:
        return "shutdown";
    case SG_PROXY_EUPSTREAM:
        return "broken";
    default:
        return "error";
    }
}

/* keep_status: the upstream's own error status (not 2xx) to answer with
 * instead of 502, or 0. */
static enum MHD_Result queue_upstream_error_status(exchange *ex, sg_proxy_error e, int keep_status)
{
    int status = 502;
    sg_buf b = SG_BUF_INIT;
    sg_metric_inc(SG_M_UPSTREAM_ERRORS + (int)e);
    sg_gateway_upstream_error(&ex->reply, e, &status, &b);
    if (keep_status) status = keep_status;
    if (ex->reply.naudit)
        http_audit_done(ex, status, ex->phase == PHASE_COLLECT ? ex->head.status : 0,
                        proxy_outcome(e), NULL, NULL, 0, 0);
    enum MHD_Result ok = sg_buf_ok(&b)
                             ? http_queue_bytes(ex->conn, (unsigned)status, "application/json",
                                                b.data, b.len, NULL, NULL, 0)
                             : MHD_NO;
    sg_buf_free(&b);
    ex->phase = PHASE_DONE;
    return ok;
}

static enum MHD_Result queue_upstream_error(exchange *ex, sg_proxy_error e)
{
    return queue_upstream_error_status(ex, e, 0);
}

/* A list answer is read whole (bounded), filtered on this thread (it owns
 * the worker's policy state) and sent in one piece. An error status is
 * filtered too (its body could carry a list a client reads anyway); when
 * its body cannot be accounted for, the status is kept (a 404 still tells
 * the client its session is gone) and the body is the gateway's own. */
enum MHD_Result http_advance_collect(exchange *ex)
{
    char chunk[16 * 1024];
    for (;;) {
        long n = sg_transfer_read(ex->xfer, chunk, sizeof chunk);
        if (n > 0) {
            if (ex->answer.len + (size_t)n > SG_GATEWAY_MAX_LIST_BYTES)
                return queue_upstream_error(ex, SG_PROXY_EUPSTREAM);
            sg_buf_append(&ex->answer, chunk, (size_t)n);
            if (!sg_buf_ok(&ex->answer)) return queue_upstream_error(ex, SG_PROXY_ENOMEM);
            watch_tools_changed(ex, chunk, (size_t)n);
            continue;
        }
        if (n == SG_TRANSFER_FAILED) return queue_upstream_error(ex, sg_transfer_error(ex->xfer));
        if (n == SG_TRANSFER_EOF) break;
        if (sg_transfer_park(ex->xfer, SG_WANT_DATA)) return MHD_YES;
    }
    sg_buf filtered = SG_BUF_INIT;
    enum MHD_Result ok;
    if (sg_gateway_filter(ex->h->cfg.gateway, ex->worker->gateway, &ex->reply,
                          ex->head.content_type, ex->answer.data ? ex->answer.data : "",
                          ex->answer.len, &filtered) != 0) {
        sg_log(SG_LOG_WARN, "upstream list answer could not be filtered: refused");
        int st = ex->head.status;
        ok = queue_upstream_error_status(ex, SG_PROXY_EUPSTREAM, st >= 400 && st <= 599 ? st : 0);
    } else {
        if (ex->reply.naudit)
            http_audit_done(ex, ex->head.status, ex->head.status, NULL, ex->head.content_type,
                            ex->answer.data ? ex->answer.data : "", ex->answer.len, 0);
        struct MHD_Response *r = MHD_create_response_from_buffer(
            filtered.len, filtered.data ? filtered.data : (char *)"", MHD_RESPMEM_MUST_COPY);
        ok = MHD_NO;
        if (r) {
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ex->head.content_type);
            if (ex->head.session_id)
                MHD_add_response_header(r, "Mcp-Session-Id", ex->head.session_id);
            MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
            ok = MHD_queue_response(ex->conn, (unsigned)ex->head.status, r);
            MHD_destroy_response(r);
        }
        ex->phase = PHASE_DONE;
    }
    sg_buf_free(&filtered);
    sg_buf_free(&ex->answer);
    return ok;
}

/* The upstream's headers are in: start the streamed response. */
static enum MHD_Result queue_stream(exchange *ex, const sg_transfer_head *head)
{
    if (ex->reply.filter) {
        ex->head = *head; /* strings owned by the transfer, which we hold */
        ex->phase = PHASE_COLLECT;
        return http_advance_collect(ex);
    }
    if (ex->reply.accepted_only && head->status >= 200 && head->status < 300) {
        ex->phase = PHASE_DONE;
        sg_transfer_release(ex->xfer);
        ex->xfer = NULL;
        atomic_fetch_sub(&ex->h->forwarded, 1);
        if (ex->reply.naudit)
            http_audit_done(ex, 202, head->status, "ok", NULL, NULL, 0, ex->head_ns);
        return http_queue_bytes(ex->conn, 202, NULL, NULL, 0, NULL, NULL, 0);
    }
    if (head->complete) {
        /* The whole (small, non-SSE) answer is here: send it with a
         * Content-Length in one piece instead of streaming it. */
        size_t len;
        char *body = sg_transfer_take_body(ex->xfer, &len);
        if (ex->reply.naudit && body)
            http_audit_done(ex, head->status, head->status, NULL, head->content_type, body, len,
                            ex->head_ns);
        struct MHD_Response *r =
            body ? MHD_create_response_from_buffer_with_free_callback(len, body, free) : NULL;
        if (!r) {
            free(body);
            return queue_upstream_error(ex, SG_PROXY_ENOMEM);
        }
        watch_tools_changed(ex, body, len);
        if (head->content_type)
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, head->content_type);
        if (head->session_id) MHD_add_response_header(r, "Mcp-Session-Id", head->session_id);
        ex->phase = PHASE_DONE;
        sg_transfer_release(ex->xfer);
        ex->xfer = NULL;
        atomic_fetch_sub(&ex->h->forwarded, 1);
        enum MHD_Result ok = MHD_queue_response(ex->conn, (unsigned)head->status, r);
        MHD_destroy_response(r);
        return ok;
    }
    /* The block is libmicrohttpd's buffer for an HTTP/1.0 client's
     * read-until-close body only (chunked answers are read straight into the
     * connection's pool), but it is allocated zeroed for every stream:
     * keep it small, an open SSE stream holds it for hours. */
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, on_read, ex, NULL);
    if (!r) return MHD_NO;
    if (head->content_type) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, head->content_type);
        ex->sse = strncasecmp(head->content_type, "text/event-stream", 17) == 0;
    }
    if (ex->sse) {
        sg_metric_gauge_add(SG_G_SSE_STREAMS, 1);
        ex->sse_counted = 1;
    }
    if (head->session_id) MHD_add_response_header(r, "Mcp-Session-Id", head->session_id);
    if (ex->sse) MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    ex->tail[0] = ex->tail[1] = '\n'; /* the stream starts on an event boundary */
    ex->phase = PHASE_STREAM;
    if (ex->slot) ex->slot->streaming = 1;
    if (ex->reply.naudit)
        http_audit_done(ex, head->status, head->status, NULL, NULL, NULL, 0, ex->head_ns);
    enum MHD_Result ok = MHD_queue_response(ex->conn, (unsigned)head->status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Waits (by parking) for the upstream's headers, then answers. */
enum MHD_Result http_advance_head(exchange *ex)
{
    for (;;) {
        sg_transfer_head head;
        sg_transfer_head_state r = sg_transfer_head_get(ex->xfer, &head);
        if (r == SG_HEAD_READY) {
            /* One clock read for the latency histogram, readiness and the
             * audit record's latency. */
            if (sg_metrics_enabled() || ex->reply.naudit) ex->head_ns = sg_now_mono_ns();
            if (sg_metrics_enabled()) {
                sg_metric_observe(SG_H_UPSTREAM_SECONDS, ex->head_ns - ex->upstream_started_ns);
                sg_metric_upstream_seen(ex->head_ns);
            }
            return queue_stream(ex, &head);
        }
        if (r == SG_HEAD_FAILED) return queue_upstream_error(ex, sg_transfer_error(ex->xfer));
        if (sg_transfer_park(ex->xfer, SG_WANT_HEAD)) return MHD_YES;
    }
}

enum MHD_Result http_forward(exchange *ex, const char *method, const header_list *hl)
{
    sg_proxy_request preq = {.method = method,
                             .headers = hl->items,
                             .nheaders = hl->n,
                             .extra = ex->reply.identity,
                             .nextra = ex->reply.nidentity,
                             .body = ex->body.data,
                             .body_len = ex->body.len};
    sg_transfer_ops ops = {.suspend = ex_suspend, .resume = ex_resume, .ud = ex};
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(ex->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = ci ? ci->connect_fd : -1;
    ex->xfer = sg_proxy_start(ex->worker->lane, &preq, &ops, fd);
    if (!ex->xfer) return queue_upstream_error(ex, SG_PROXY_ESHUTDOWN);
    ex->upstream_started_ns = sg_transfer_started_ns(ex->xfer);
    atomic_fetch_add(&ex->h->forwarded, 1);
    ex->phase = PHASE_HEAD;
    return http_advance_head(ex);
}
