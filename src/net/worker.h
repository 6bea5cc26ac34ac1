/* worker.h -- one worker thread of the MCP listener (internal to src/net).
 *
 * Why an object: a request is received, decided, forwarded and answered on
 * one thread, with no lock on the hot path, because everything it touches
 * belongs to that thread. sg_worker is that set: its epoll set and wake
 * eventfd, its libmicrohttpd daemon (all the workers' daemons share the
 * port), its lane of upstream transfers, its context in the gateway (the
 * policy state and generation it decides with, its token cache, its
 * arena), its client connections and the requests it has parked. Code of
 * src/net takes an sg_worker *, never an index into parallel arrays; the
 * daemon's callbacks get it as their closure.
 *
 * Who allocates what: the worker creates and closes its epoll set, wake fd
 * and daemon. The lane and the gateway context are allocated by the folders
 * below (src/upstream, src/gateway), which must not know the worker (a
 * folder uses only the ones before it): the proxy keeps its lanes because
 * they share its configuration and outlive the workers until every transfer
 * is released, and the gateway keeps its contexts because a reload loads
 * one copy of the policy for each of them. The worker holds them, and is
 * the only thread that touches them (docs/architecture.md, "Workers").
 */
#ifndef SG_WORKER_H
#define SG_WORKER_H

#include <pthread.h>
#include <stdint.h>

#include "gateway/gateway.h"
#include "upstream/proxy.h"

struct sg_http;
struct conn_slot;
struct exchange;
struct MHD_Daemon;

typedef struct sg_worker {
    struct sg_http *http;       /* the listener it serves: limits, shared counters */
    unsigned index;             /* for log lines and its thread's name */
    int epfd;                   /* the event loop's epoll set (owned) */
    int evfd;                   /* its wake eventfd (owned) */
    struct MHD_Daemon *daemon;  /* owned once sg_worker_open succeeds */
    sg_proxy_lane *lane;        /* the proxy's lane for this thread (held) */
    sg_gateway_worker *gateway; /* the gateway's context for this thread (held) */
    /* Its client connections, oldest first (conn.c). */
    struct conn_slot *oldest, *newest;
    uint64_t next_sweep_ns;
    unsigned closes_since_trim; /* connections closed since the heap was last trimmed */
    unsigned closes_at_sweep;   /* ...as counted at the previous sweep */
    /* Requests suspended until a key refetch or an introspection call
     * finishes. */
    struct exchange *waiters;
    pthread_t thread;
    int started;
} sg_worker;

/* Empties w: no fds, no daemon, no thread (sg_worker_close is then a
 * no-op). Can't fail. */
void sg_worker_init(sg_worker *w);
/* Readies w (sg_worker_init'ed) to serve daemon (started with MHD_USE_EPOLL and w as its
 * callbacks' closure) and lane: creates the epoll set and the wake fd,
 * registers the daemon's epoll fd and the wake fd in it, and attaches the
 * lane. The daemon is w's from this call on,
 * whatever it returns. Returns 0; on error, -1 is returned and err says
 * why. */
int sg_worker_open(sg_worker *w, struct sg_http *http, unsigned index, struct MHD_Daemon *daemon,
                   sg_proxy_lane *lane, sg_gateway_worker *gateway, char *err, size_t errlen);
/* Starts w's thread (its event loop). Returns 0; on error, -1 is returned
 * and err says why. */
int sg_worker_start(sg_worker *w, char *err, size_t errlen);
/* Wakes w's event loop (to look at its parked requests, or at the
 * listener's stopping flag). Any thread; can't fail. */
void sg_worker_wake(sg_worker *w);
/* Waits for w's thread to end (it ends once the listener is stopping and
 * its in-flight answers have left). Not started: returns at once. */
void sg_worker_join(sg_worker *w);
/* Stops the daemon (closing its connections) and closes the fds. After
 * sg_worker_join; an initialised or half-opened w is fine. Can't fail. */
void sg_worker_close(sg_worker *w);

/* Suspends the exchange until what it waits for (ex->reply.wait_ticket)
 * has finished; the event loop resumes it (then it is decided again).
 * w's thread only. Can't fail. */
void sg_worker_park(sg_worker *w, struct exchange *ex);
/* Takes a parked exchange off w's list (its connection ends). w's thread
 * only. Can't fail. */
void sg_worker_unpark(sg_worker *w, struct exchange *ex);

#endif
