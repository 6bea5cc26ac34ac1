/* conn.c -- a worker's client connections: slow clients, shedding, memory.
 *
 * Why it is its own file: everything here runs outside a request, on the
 * worker's connections as a set. Limits are enforced before any parsing:
 * connections (503; when full, the connections that have not delivered a
 * request are shed first, oldest first), time (408 for a request head not
 * complete within the header timeout or a body below the minimum rate,
 * swept every 250 ms; idle connections closed).
 * Memory: an idle keep-alive connection must cost little (MCP clients hold
 * theirs for hours), but libmicrohttpd zeroes its whole per-connection pool
 * (--max-header, 24 KiB) after every request, which makes all of it
 * resident. The same sweep gives the pool's all-zero pages of a connection
 * idle for a whole sweep back to the kernel (they read back as zeros, so
 * nothing changes for libmicrohttpd), and trims the heap after a burst of
 * closes so the memory of connections that are gone is returned too. */
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "base/metrics.h"
#include "net/http_impl.h"

#define SWEEP_NS          250000000ull /* slow-client limits are checked this often */
#define SHED_BATCH        64           /* at most this many closed per sweep... */
#define SHED_BATCH_GAP_NS 5000000ull   /* ...the next batch this soon after */
#define TRIM_AFTER_CLOSES 64           /* closes in a burst before the heap is trimmed */

conn_slot *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void slot_unlink(conn_slot *c)
{
    sg_worker *w = c->worker;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->oldest = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        w->newest = c->prev;
    c->prev = c->next = NULL;
}

/* Closes a connection from outside libmicrohttpd (status 0: silently); it
 * no longer counts against --max-connections from this moment. */
static void slot_shed(conn_slot *c, int status, const char *why)
{
    if (c->wire.closed) return;
    sg_wire_refuse(&c->wire, status, why);
    if (c->counted) {
        c->counted = 0;
        atomic_fetch_sub(&c->worker->http->connections, 1);
    }
}

/* Shedding order when every slot is taken: first the connections that never
 * delivered a request (a slow or silent client holds nothing else), then
 * those waiting, after a request, on the next head; oldest first within
 * each. A connection whose request is being served is never shed. */
static conn_slot *shed_candidate(sg_worker *w, const conn_slot *except)
{
    conn_slot *idle_after_request = NULL;
    for (conn_slot *c = w->oldest; c; c = c->next) {
        if (c == except || c->busy || c->wire.closed) continue;
        if (c->wire.answered == 0) return c;
        if (!idle_after_request) idle_after_request = c;
    }
    return idle_after_request;
}

void conn_open(sg_worker *w, struct MHD_Connection *conn, void **socket_context)
{
    sg_http *h = w->http;
    conn_slot *c = calloc(1, sizeof *c);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (c) c->wire.fd = ci ? ci->connect_fd : -1;
    if (!c || sg_wire_attach(&c->wire, sg_now_mono_ns()) != 0) {
        /* Unchecked bytes must never reach libmicrohttpd: close it. */
        if (ci) shutdown(ci->connect_fd, SHUT_RDWR);
        free(c);
        *socket_context = NULL;
        return;
    }
    c->worker = w;
    c->prev = w->newest;
    if (w->newest)
        w->newest->next = c;
    else
        w->oldest = c;
    w->newest = c;
    c->counted = 1;
    *socket_context = c;
    sg_metric_gauge_add(SG_G_CONNECTIONS, 1);
    if (atomic_fetch_add(&h->connections, 1) + 1 > (int)h->cfg.limits.max_connections) {
        conn_slot *victim = shed_candidate(w, c);
        if (victim) {
            int partial = sg_wire_scan_phase(&victim->wire.scan) != SG_WIRE_IDLE;
            sg_log(SG_LOG_DEBUG, "http: connections full: shedding one that %s",
                   victim->wire.answered ? "is between requests" : "never completed a request");
            slot_shed(victim, partial ? 503 : 0, "Too many connections");
        }
    }
}

void conn_close(conn_slot *c)
{
    if (!c) return;
    sg_wire_detach(&c->wire);
    slot_unlink(c);
    sg_metric_gauge_add(SG_G_CONNECTIONS, -1);
    if (c->counted) atomic_fetch_sub(&c->worker->http->connections, 1);
    c->worker->closes_since_trim++;
    free(c);
}

/* Gives the whole pages of [base, base + size) that hold only zeros back to
 * the kernel (MADV_DONTNEED: private anonymous memory reads back as zeros,
 * so nothing anyone reads changes). Only pages verified zero now are given
 * back: whatever the range holds, no byte changes. Can't fail (a refused
 * madvise leaves the pages as they were). */
static void release_zero_pages(uintptr_t base, size_t size, size_t page)
{
    static const unsigned char zero_page[4096];
    if (!page || page > sizeof zero_page) return;
    uintptr_t p = (base + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t end = (base + size) & ~(uintptr_t)(page - 1);
    uintptr_t run = 0; /* start of a run of zero pages, 0 when none */
    for (; p < end; p += page) {
        int zero = memcmp((const void *)p, zero_page, page) == 0;
        if (zero && !run) run = p;
        if (!zero && run) {
            madvise((void *)run, p - run, MADV_DONTNEED);
            run = 0;
        }
    }
    if (run) madvise((void *)run, end - run, MADV_DONTNEED);
}

/* The memory half of the sweep: a connection idle between requests for a
 * whole sweep, or streaming an answer (an SSE stream, open for hours), has
 * its pool's zero pages given back, once per idle spell or stream (what a
 * stream writes later stays resident: its write buffer, a few pages);
 * after a burst of closes (some closed, none since the last sweep) the
 * heap is trimmed so that what they held is returned. */
static void sweep_memory(sg_worker *w)
{
    size_t pool_size = w->http->cfg.limits.max_header;
    for (conn_slot *c = w->oldest; c; c = c->next) {
        if (c->wire.answered != c->pool_seen_answered) {
            c->pool_seen_answered = c->wire.answered;
            c->pool_released = 0;
            continue;
        }
        int idle =
            !c->busy && c->wire.answered && sg_wire_scan_phase(&c->wire.scan) == SG_WIRE_IDLE;
        if (c->pool_released || c->wire.closed || !c->wire.read_base || !(idle || c->streaming))
            continue;
        release_zero_pages(c->wire.read_base, pool_size, w->http->page_size);
        c->pool_released = 1;
    }
    if (w->closes_since_trim >= TRIM_AFTER_CLOSES && w->closes_since_trim == w->closes_at_sweep) {
        malloc_trim(0);
        w->closes_since_trim = 0;
    }
    w->closes_at_sweep = w->closes_since_trim;
}

/* The slow-client limits, every SWEEP_NS: a request head must be complete
 * within --header-timeout of its first byte (a new connection's first head
 * within --header-timeout of the accept: silence is shed without an
 * answer); a body must keep up --min-body-rate after --body-grace. Returns
 * 1 when it stopped at SHED_BATCH (sweep again soon). */
static int sweep_slow_clients(sg_worker *w, uint64_t now)
{
    /* Heads that arrived together run out together: shedding a thousand in
     * one go would hold the loop (and honest requests) for tens of ms, so
     * it goes in batches with the loop running in between. */
    int shed = 0;
    const sg_http_limits *l = &w->http->cfg.limits;
    uint64_t head_ns = (uint64_t)l->header_timeout_s * 1000000000ull;
    uint64_t grace_ns = (uint64_t)l->body_grace_s * 1000000000ull;
    for (conn_slot *c = w->oldest; c && shed < SHED_BATCH; c = c->next) {
        if (c->wire.closed) continue;
        sg_wire_phase phase = sg_wire_scan_phase(&c->wire.scan);
        if (!c->busy && phase == SG_WIRE_HEAD && c->wire.head_started_ns &&
            now - c->wire.head_started_ns > head_ns) {
            slot_shed(c, 408, "Request header timeout");
            shed++;
        } else if (!c->busy && phase == SG_WIRE_IDLE && c->wire.answered == 0 &&
                   now - c->wire.accepted_ns > head_ns) {
            slot_shed(c, 0, NULL);
            shed++;
        } else if (c->collecting_body && phase == SG_WIRE_BODY && l->min_body_rate &&
                   c->wire.body_started_ns && now - c->wire.body_started_ns > grace_ns) {
            uint64_t late_ms = (now - c->wire.body_started_ns - grace_ns) / 1000000u;
            uint64_t owed = (uint64_t)l->min_body_rate * late_ms / 1000u;
            if (c->wire.scan.body_bytes < owed) {
                slot_shed(c, 408, "Request body too slow");
                shed++;
            }
        }
    }
    return shed >= SHED_BATCH;
}

void conn_sweep(sg_worker *w, uint64_t now)
{
    if (now < w->next_sweep_ns) return;
    int more = sweep_slow_clients(w, now);
    if (!more) sweep_memory(w);
    w->next_sweep_ns = now + (more ? SHED_BATCH_GAP_NS : SWEEP_NS);
}
