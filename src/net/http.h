/* http.h -- the HTTP front of scopegate (libmicrohttpd).
 *
 * Owns the worker threads: each runs one event loop over its own
 * libmicrohttpd daemon (all sharing the port) and its own proxy lane, and
 * is one gateway worker with its own policy state and token cache. Also the limits
 * every request meets before any parsing (connections, header and body
 * size, time), the Host and Origin allow-lists, the routes (MCP endpoint,
 * RFC 9728 metadata, /healthz) and the streaming of upstream answers back to
 * clients with suspend/resume, so no thread waits on the upstream.
 *
 * The folder src/net/ is the client-facing side: this listener and its
 * workers (worker.h: one event loop each), the strict RFC 9112 request
 * framing every client byte passes first (wire.h) and the admin listener
 * (admin.h).
 */
#ifndef SG_HTTP_H
#define SG_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/gateway.h"
#include "upstream/proxy.h"

/* What a zero limit (and a NULL mcp_path) means; `scopegate serve`'s
 * defaults (src/cli/defaults.h) are these. */
#define SG_HTTP_DEFAULT_MAX_BODY         (1024u * 1024) /* 1 MiB */
#define SG_HTTP_DEFAULT_MAX_HEADER       (24u * 1024)   /* 24 KiB: see http.c */
#define SG_HTTP_DEFAULT_MAX_CONNECTIONS  1000u
#define SG_HTTP_DEFAULT_TIMEOUT_S        30u
#define SG_HTTP_DEFAULT_HEADER_TIMEOUT_S 5u
#define SG_HTTP_DEFAULT_BODY_GRACE_S     5u
#define SG_HTTP_DEFAULT_MCP_PATH         "/mcp"

typedef struct sg_http_limits {
    size_t max_body;           /* request body bytes: 413 beyond [1 MiB] */
    size_t max_header;         /* per-connection memory; headers beyond: 431 [24 KiB] */
    unsigned max_connections;  /* concurrent connections: 503 beyond [1000] */
    unsigned timeout_s;        /* idle connection / slow upload: closed or 408 [30] */
    unsigned header_timeout_s; /* a request head must be complete this soon: 408 [5] */
    unsigned min_body_rate;    /* body bytes/s owed after body_grace_s, else 408; 0 = off */
    unsigned body_grace_s;     /* [5] */
    unsigned threads;          /* worker threads [sg_cpus_usable()] */
} sg_http_limits;

typedef struct sg_http_config {
    const char *host; /* numeric IPv4 or IPv6 address to bind */
    uint16_t port;    /* 0: an ephemeral port (see sg_http_port) */
    const char *mcp_path;
    /* NULL-terminated lists. "*" allows anything. Hosts are "name:port"
     * (that port only), "name:*" (any port) or "name" (a Host without a
     * port only); names compare without regard to letter case. own_hosts
     * are bare names of this listener, matched with its bound port. Both
     * NULL: any Host. Origins compare exactly, letter case aside. A
     * request without Origin is not checked. */
    const char *const *allowed_hosts;
    const char *const *own_hosts;
    const char *const *allowed_origins;
    sg_http_limits limits;
    sg_gateway *gateway; /* borrowed; workers = limits.threads */
    sg_proxy *proxy;     /* borrowed; one lane per worker (limits.threads) */
} sg_http_config;

typedef struct sg_http sg_http;

/* Binds and starts serving. Returns NULL with a message in err (e.g. the
 * address is in use). */
sg_http *sg_http_start(const sg_http_config *cfg, char *err, size_t errlen);
/* Splits an authority "name[:port]" ("[v6]:port" too; port may be "*"):
 * *name_len = the name's length, *port = the text after the colon or NULL.
 * Returns -1 for an empty name or a port that is not digits or "*". Pure. */
int sg_http_split_authority(const char *s, size_t *name_len, const char **port);
/* The bound port (useful with port 0). */
uint16_t sg_http_port(const sg_http *h);
/* Stops accepting, has every worker fail its in-flight upstream transfers
 * (resuming their connections, which get their 503s or error events for up
 * to a second), joins the workers, stops the daemons and frees it all. The
 * proxy may be freed afterwards. NULL is fine. */
void sg_http_stop(sg_http *h);

#endif
