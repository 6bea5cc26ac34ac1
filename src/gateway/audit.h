/* audit.h -- the audit log writer: one JSON line per decision, off the
 * request path.
 *
 * Operators need a durable record of who was allowed or refused what, and
 * why (docs/operations.md, "Audit log"); the request path must never wait
 * for a disk to record it. So a worker hands a finished line to
 * sg_audit_submit, which copies it into a bounded queue and returns at
 * once; one writer thread drains the queue into the file. When the queue
 * is full the line is dropped and counted (a gateway that stalled behind a
 * full disk would turn an audit problem into an outage); a write error
 * drops the lines being written and is counted too. Both are logged, at
 * most once a second. The file is reopened by path on sg_audit_reopen
 * (SIGUSR1), so logrotate can move it away.
 *
 * The lines themselves are formatted by the gateway (auditrec.c): this file
 * only queues and writes bytes. */
#ifndef SG_AUDIT_H
#define SG_AUDIT_H

#include <stddef.h>

#include "base/sg.h"
#include <stdint.h>

/* Lines the queue holds by default (--audit-queue): waiting while the
 * writer writes the previous batch, in a buffer of 512 bytes per line (two
 * such buffers, used in turn; their pages are touched only as they fill). */
#define SG_AUDIT_QUEUE_DEFAULT 8192
/* Longest line accepted; a longer one is dropped (counted). */
#define SG_AUDIT_MAX_LINE (64u * 1024)

typedef struct sg_audit sg_audit;

typedef struct sg_audit_config {
    const char *path;   /* a file (appended to, created 0640) or "-" for stdout */
    size_t queue_lines; /* 0: SG_AUDIT_QUEUE_DEFAULT */
} sg_audit_config;

/* What the audit log has done since it was opened: the counts another
 * module can export (e.g. as metrics). Every field only grows. */
typedef struct sg_audit_stats {
    uint64_t written;              /* lines written to the file */
    uint64_t dropped;              /* lines lost: queue full, too long, or a write error */
    uint64_t queue_full;           /* of dropped: the queue was full when it was submitted */
    uint64_t write_errors;         /* failed writes (each may lose several lines) */
    uint64_t shadow_disagreements; /* messages the shadow policy decided otherwise */
    uint64_t reopened;             /* successful reopens (SIGUSR1) */
} sg_audit_stats;

/* Opens the file (O_APPEND; a FIFO must already have a reader) and starts
 * the writer thread. Returns NULL with a message in err when the file cannot
 * be opened or the thread cannot start. */
sg_audit *sg_audit_open(const sg_audit_config *cfg, char *err, size_t errlen);

/* Queues a copy of line[0..len) (one JSON object, without the newline: the
 * writer adds it). line NULL is a line that could not be made (out of
 * memory): dropped. Never blocks on I/O; thread-safe. Returns 0, or -1 when
 * the line was dropped (queue full, too long, not made, or closing):
 * counted, and logged at most once a second. */
int sg_audit_submit(sg_audit *a, const char *line, size_t len);

/* Asks the writer to reopen the file by its path (after logrotate moved
 * it); returns at once. A reopen that fails keeps the old file and is
 * logged. Thread-safe; NULL is ignored. */
void sg_audit_reopen(sg_audit *a);

/* Counts one message that the shadow policy decided differently (the
 * record itself goes through sg_audit_submit). Thread-safe. */
void sg_audit_count_shadow(sg_audit *a);

/* Reads the counts (each an atomic load: a consistent snapshot of each
 * field, not of all of them together). Thread-safe; can't fail. */
void sg_audit_stats_get(const sg_audit *a, sg_audit_stats *out);
/* A metrics collector (sg_metrics_add_collector, ud = the sg_audit): the
 * stats above as Prometheus counter families. Can't fail. */
void sg_audit_metrics(sg_buf *out, void *ud);

/* Writes what is queued (giving up after a second on a file that accepts
 * nothing, e.g. a FIFO nobody reads; what is left is counted as dropped),
 * stops the thread, logs the totals and frees it all. NULL is fine. */
void sg_audit_close(sg_audit *a);

#endif
