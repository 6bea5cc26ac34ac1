/* evtag.h -- what an event in a worker's epoll set is about.
 *
 * Why one header: a worker's epoll set (src/net/worker.h) holds three kinds
 * of descriptor registered by two folders: libmicrohttpd's own epoll set and
 * the worker's wake eventfd (src/net), and the upstream sockets of its proxy
 * lane (src/upstream). Each writes a tag into epoll_event.data.u64 and the
 * worker's loop dispatches on it, so the tags must never collide: they are
 * all defined here, in the lowest folder both use. An upstream tag carries
 * the socket in its low 32 bits.
 */
#ifndef SG_EVTAG_H
#define SG_EVTAG_H

#include <stdint.h>

/* The libmicrohttpd daemon's epoll fd: run the daemon. */
#define SG_EVTAG_MHD ((uint64_t)0)
/* An upstream socket of the worker's proxy lane, | the socket. */
#define SG_EVTAG_UPSTREAM ((uint64_t)1 << 32)
/* The worker's wake eventfd: drain it, look at parked requests. */
#define SG_EVTAG_WAKE ((uint64_t)2 << 32)
#endif
