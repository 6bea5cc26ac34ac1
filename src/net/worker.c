/* worker.c -- one worker thread's event loop and its lifecycle.
 *
 * Why it is shaped this way: each worker runs its own event loop over one
 * epoll set holding its libmicrohttpd daemon (MHD_USE_EPOLL, driven with
 * MHD_run; the daemons share the port with SO_REUSEPORT), its wake eventfd
 * and the sockets of its own proxy lane, so a request is served start to
 * finish on one thread with no hand-off. A request whose token names a key
 * not known yet, or whose opaque token is being introspected, is parked
 * (suspended) on its worker while the key refresher thread refetches the
 * JWKS or an introspection thread asks the authorization server; the event
 * loop keeps serving everyone else, is woken when such a call finishes and
 * resumes the requests whose wait is over. The tags of the epoll set are
 * those of base/evtag.h. */
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/evtag.h"
#include "net/http_impl.h"

#define DRAIN_NS 1000000000ull /* on shutdown, in-flight answers get this long to leave */

static int epoll_add(int epfd, int fd, uint64_t tag)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

void sg_worker_init(sg_worker *w)
{
    memset(w, 0, sizeof *w);
    w->epfd = w->evfd = -1;
}

int sg_worker_open(sg_worker *w, struct sg_http *http, unsigned index, struct MHD_Daemon *daemon,
                   sg_proxy_lane *lane, sg_gateway_worker *gateway, char *err, size_t errlen)
{
    w->http = http;
    w->index = index;
    w->daemon = daemon;
    w->lane = lane;
    w->gateway = gateway;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    const union MHD_DaemonInfo *ei =
        daemon ? MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!daemon || !lane || !gateway || !ei || w->epfd < 0 || w->evfd < 0 ||
        epoll_add(w->epfd, ei->epoll_fd, SG_EVTAG_MHD) != 0 ||
        epoll_add(w->epfd, w->evfd, SG_EVTAG_WAKE) != 0) {
        sg_errf(err, errlen, "cannot set up worker %u's event loop", index);
        return -1;
    }
    sg_proxy_lane_attach(lane, w->epfd);
    return 0;
}

/* ---- parked requests -------------------------------------------------------------- */

void sg_worker_park(sg_worker *w, exchange *ex)
{
    ex->wait_ticket = ex->reply.wait_ticket;
    ex->phase = PHASE_WAIT;
    ex->kw_prev = NULL;
    ex->kw_next = w->waiters;
    if (w->waiters) w->waiters->kw_prev = ex;
    w->waiters = ex;
    MHD_suspend_connection(ex->conn);
}

void sg_worker_unpark(sg_worker *w, exchange *ex)
{
    if (ex->kw_prev)
        ex->kw_prev->kw_next = ex->kw_next;
    else
        w->waiters = ex->kw_next;
    if (ex->kw_next) ex->kw_next->kw_prev = ex->kw_prev;
    ex->kw_prev = ex->kw_next = NULL;
}

/* Resumes the parked requests whose wait is over (all of them when
 * the worker is shutting down); they are decided in the next MHD_run.
 * Returns how many. */
static int resume_waiters(sg_worker *w, int all)
{
    int n = 0;
    for (exchange *ex = w->waiters, *next; ex; ex = next) {
        next = ex->kw_next;
        if (!all && !sg_gateway_wait_done(w->http->cfg.gateway, ex->wait_ticket)) continue;
        sg_worker_unpark(w, ex);
        MHD_resume_connection(ex->conn);
        n++;
    }
    return n;
}

/* ---- the event loop ---------------------------------------------------------------- */

/* How long the loop may sleep in epoll: until the lane's or libmicrohttpd's
 * next timer or the next sweep, 10 ms at most while draining, and not at all
 * when requests were just resumed (they are decided in this round). */
static int loop_timeout_ms(sg_worker *w, uint64_t now, int resumed, int draining)
{
    if (resumed) return 0;
    long timeout = sg_proxy_lane_timeout_ms(w->lane);
    long to_sweep = (long)((w->next_sweep_ns - now) / 1000000u) + 1;
    if (timeout < 0 || timeout > to_sweep) timeout = to_sweep;
    MHD_UNSIGNED_LONG_LONG mhd_ms;
    if (MHD_get_timeout(w->daemon, &mhd_ms) == MHD_YES && (long long)mhd_ms < timeout)
        timeout = (long)mhd_ms;
    if (draining && timeout > 10) timeout = 10;
    return (int)timeout;
}

/* One worker's event loop: libmicrohttpd and the proxy lane share one epoll
 * set and one thread. On shutdown the worker stops accepting, fails its
 * in-flight transfers (their connections resume and get their 503s or error
 * events) and keeps serving up to a second for those answers to leave. */
static void *worker_main(void *arg)
{
    sg_worker *w = arg;
    sg_thread_name("sg-worker", (long)w->index);
    sg_http *h = w->http;
    struct epoll_event evs[64];
    int draining = 0;
    uint64_t drain_deadline = 0;
    for (;;) {
        uint64_t now = sg_now_mono_ns();
        if (!draining && atomic_load(&h->stopping)) {
            draining = 1;
            drain_deadline = now + DRAIN_NS;
            MHD_socket ls = MHD_quiesce_daemon(w->daemon); /* ours to close now */
            if (ls != MHD_INVALID_SOCKET) close(ls);
            sg_proxy_lane_shutdown(w->lane);
        }
        int resumed = w->waiters ? resume_waiters(w, draining) : 0;
        if (draining && !resumed && (atomic_load(&h->forwarded) <= 0 || now >= drain_deadline))
            break;
        conn_sweep(w, now);
        sg_proxy_lane_flush(w->lane); /* the requests this round decided, in one burst */
        int n = epoll_wait(w->epfd, evs, (int)SG_ARRAY_LEN(evs),
                           loop_timeout_ms(w, now, resumed, draining));
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag & SG_EVTAG_UPSTREAM) {
                sg_proxy_lane_event(w->lane, tag, evs[i].events);
            } else if (tag == SG_EVTAG_WAKE) {
                uint64_t count;
                ssize_t ignored = read(w->evfd, &count, sizeof count);
                (void)ignored;
            }
        }
        sg_proxy_lane_run(w->lane);
        MHD_run(w->daemon);
    }
    sg_wire_thread_free();
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

int sg_worker_start(sg_worker *w, char *err, size_t errlen)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        sg_errf(err, errlen, "cannot start worker thread %u", w->index);
        return -1;
    }
    w->started = 1;
    return 0;
}

void sg_worker_wake(sg_worker *w)
{
    uint64_t one = 1;
    if (w->evfd < 0) return;
    ssize_t ignored = write(w->evfd, &one, sizeof one);
    (void)ignored;
}

void sg_worker_join(sg_worker *w)
{
    if (w->started) pthread_join(w->thread, NULL);
    w->started = 0;
}

void sg_worker_close(sg_worker *w)
{
    if (w->daemon) MHD_stop_daemon(w->daemon);
    if (w->epfd >= 0) close(w->epfd);
    if (w->evfd >= 0) close(w->evfd);
    w->daemon = NULL;
    w->epfd = w->evfd = -1;
}
