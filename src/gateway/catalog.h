/* catalog.h -- what the gateway knows of the upstream's tools.
 *
 * A policy may classify tools by the upstream's own MCP tool annotations
 * (readOnlyHint, destructiveHint, ...: the `by_annotations` preset). In the
 * list phase a listed tool carries its annotations; a tools/call does not,
 * so the gateway keeps a catalogue: tool name -> annotations, learned from
 * the upstream's tools/list. It is fetched by the gateway itself (an MCP
 * session of its own: initialize, notifications/initialized, tools/list
 * with every page, then DELETE) at start, after each policy reload and when
 * a notifications/tools/list_changed passes through, and it is also updated
 * from every tools/list answer the gateway filters. A tool the catalogue
 * does not know has no annotations (req.annotations is nil): policies deny
 * it, never guess.
 *
 * Sharing: readers take an immutable, refcounted snapshot; an update builds
 * a new one and swaps a pointer under a mutex held for a few instructions.
 * A fetch runs on the catalogue's own thread, never on a worker. */
#ifndef SG_CATALOG_H
#define SG_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct sg_catalog sg_catalog;
typedef struct sg_catalog_snap sg_catalog_snap;

/* Where the catalogue fetches from. Strings are copied. */
typedef struct sg_catalog_config {
    const char *upstream_url; /* the MCP endpoint */
    const char *ca_file;      /* for an https:// upstream; NULL: the system's CAs */
    uint32_t timeout_ms;      /* per HTTP exchange [10000] */
} sg_catalog_config;

/* One MCP ping POSTed to the upstream without a session (the readiness
 * probe, src/net/admin.c): returns the HTTP status of whatever answered
 * (any status means reachable, and is recorded with
 * sg_metric_upstream_seen), or 0 when nothing did (connect, TLS, timeout).
 * The answer's body is not read. Blocks up to cfg->timeout_ms; thread-safe. */
long sg_catalog_ping(const sg_catalog_config *cfg);

/* Most tools kept, and most tools/list pages followed per fetch. */
#define SG_CATALOG_MAX_TOOLS 100000
#define SG_CATALOG_MAX_PAGES 1000

/* Creates an empty catalogue and starts its fetch thread, which fetches
 * once now (in the background) and again on sg_catalog_refresh; a failed
 * fetch is retried with backoff (1 s doubling to 60 s). Returns NULL with a
 * message in err when out of memory or the thread cannot start. */
sg_catalog *sg_catalog_start(const sg_catalog_config *cfg, char *err, size_t errlen);
/* Stops the thread and frees the catalogue. Every snapshot must have been
 * released. NULL is fine. */
void sg_catalog_stop(sg_catalog *c);

/* Asks for a new fetch (coalesced with one pending). Thread-safe, returns
 * at once. NULL is ignored. */
void sg_catalog_refresh(sg_catalog *c);

/* Merges the tools of a tools/list result (an array of Tool objects) into
 * the catalogue: a tool listed there gets the annotations listed (none: an
 * empty object, it is known to have no hints). Thread-safe. Returns 0, or -1 when out of memory
 * (the catalogue is unchanged). */
int sg_catalog_learn(sg_catalog *c, const cJSON *tools);

/* Bumped on every new snapshot, so a reader can tell cheaply whether to
 * take a new one. Thread-safe. */
unsigned long sg_catalog_version(sg_catalog *c);
/* The current snapshot, with a reference to release. Never NULL. */
const sg_catalog_snap *sg_catalog_acquire(sg_catalog *c);
void sg_catalog_release(const sg_catalog_snap *s);
/* The annotations object of a tool (borrowed from the snapshot; an empty
 * object when the upstream lists it without annotations), or NULL when the
 * tool is unknown. Can't fail. */
const cJSON *sg_catalog_annotations(const sg_catalog_snap *s, const char *tool);
/* Number of tools in a snapshot. */
size_t sg_catalog_size(const sg_catalog_snap *s);

/* The annotations of a tool listed without any: an empty object (every
 * hint takes the MCP specification's default). Static; can't fail. */
const cJSON *sg_catalog_no_hints(void);

/* One fetch, synchronously (the thread's work; exposed for tests): an MCP
 * session with the upstream that lists every tool. On success *tools is a
 * new cJSON array of the Tool objects (cJSON_Delete it) and 0 is returned;
 * on failure -1 with a message in err. */
int sg_catalog_fetch(const sg_catalog_config *cfg, cJSON **tools, char *err, size_t errlen);

#endif
