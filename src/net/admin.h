/* admin.h -- the admin listener: /metrics, /healthz and /readyz.
 *
 * Why a listener of its own: metrics and probes are for the operator's
 * scraper and the orchestrator, not for MCP clients, so they are served on
 * a separate address (--admin-listen) that is never the MCP port and need
 * not be exposed where the MCP port is. The listener has one thread
 * (libmicrohttpd's internal one), answers GET and HEAD only, and takes the
 * main listener's connection, header-memory and idle limits.
 *
 * Readiness: /readyz is 200 only while the keys and the policy are loaded
 * and the upstream answered something (any HTTP status: a forwarded
 * request, the tool catalogue, or the listener's own probe, an MCP ping
 * sent when nothing else reached the upstream for a third of the window)
 * within the last ready_window_s seconds; else 503 with a one-line reason. */
#ifndef SG_ADMIN_H
#define SG_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "auth/jwks.h"
#include "gateway/gateway.h"
#include "net/http.h"

/* The readiness window when the config leaves it 0 (serve's
 * --ready-upstream-window). */
#define SG_ADMIN_DEFAULT_READY_WINDOW_S 30u

typedef struct sg_admin_config {
    const char *host; /* numeric IPv4 or IPv6 address */
    uint16_t port;    /* 0: an ephemeral port (sg_admin_port) */
    unsigned max_connections, timeout_s;
    size_t max_header;
    sg_gateway *gateway; /* borrowed: the policy in force */
    sg_keys *keys;       /* borrowed: the keys in force */
    unsigned ready_window_s;
    const char *upstream_url; /* probed (MCP ping) when idle */
    const char *upstream_ca;
} sg_admin_config;

typedef struct sg_admin sg_admin;

/* Turns metrics on (sg_metrics_enable), binds and starts serving, and
 * starts the upstream probe thread. Returns NULL with a message in err
 * (the address is in use, not numeric, out of memory). */
sg_admin *sg_admin_start(const sg_admin_config *cfg, char *err, size_t errlen);
/* The bound port. */
uint16_t sg_admin_port(const sg_admin *a);
/* From now on /readyz answers 503 "shutting down" (the gateway is
 * stopping). Thread-safe; NULL is fine. */
void sg_admin_draining(sg_admin *a);
/* Stops the probe and the listener and frees it. NULL is fine. */
void sg_admin_stop(sg_admin *a);

/* Appends the whole /metrics exposition (text format 0.0.4). Returns 0,
 * or -1 when out of memory. Thread-safe. */
int sg_admin_render_metrics(sg_admin *a, sg_buf *out);

#endif
