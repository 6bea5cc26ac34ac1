/* sse.h -- reading a text/event-stream body, as the SSE specification says.
 *
 * The HTML Living Standard's "Interpreting an event stream": an optional
 * UTF-8 byte order mark at the start, lines ended by CRLF, LF or CR, lines
 * starting with ':' are comments, "field:value" with one optional space
 * after the colon, a line without a colon is a field with an empty value,
 * `data` lines accumulate (joined by LF), and a blank line dispatches the
 * event. An event whose data is empty is not dispatched. An unterminated
 * last event is never dispatched (its stream was cut).
 *
 * This is the one SSE reader in the tree: the gateway's list filter reads
 * blocks with sg_sse_read (so it can re-emit the other lines), everything
 * else reads dispatched events with sg_sse_next. */
#ifndef SG_SSE_H
#define SG_SSE_H

#include <stddef.h>

#include "base/sg.h"

/* One block of lines up to and including its blank line, as sg_sse_read
 * found it. The caller owns the buffers (start from SG_SSE_EVENT_INIT,
 * release with sg_sse_event_free). */
typedef struct sg_sse_event {
    sg_buf data;    /* the values of its data lines, joined by LF */
    int has_data;   /* it had at least one data line (data may still be empty) */
    sg_buf other;   /* every other line (id, event, retry, unknown fields,
                       comments) as received minus its terminator, each
                       followed by one LF */
    size_t data_at; /* offset in other where its first data line stood */
} sg_sse_event;

#define SG_SSE_EVENT_INIT                                                                          \
    {                                                                                              \
        SG_BUF_INIT, 0, SG_BUF_INIT, 0                                                             \
    }

/* Reads the block of body[0..len) that starts at *pos (start with 0; a BOM
 * at offset 0 is skipped) into ev (reset first) and moves *pos past its
 * blank line. A block may hold no line at all (a blank line alone).
 * Returns 1 for a block, 0 when no complete block is left (*pos is then
 * where the unterminated rest begins, len when there is none), -1 when out
 * of memory. */
int sg_sse_read(const char *body, size_t len, size_t *pos, sg_sse_event *ev);

/* Frees the buffers of ev. Can't fail. */
void sg_sse_event_free(sg_sse_event *ev);

/* Reads the next dispatched event of body[0..len) from *pos (start with
 * 0). Puts its data in data (reset first). Returns 1 for an event, 0 at the
 * end, -1 when out of memory. */
int sg_sse_next(const char *body, size_t len, size_t *pos, sg_buf *data);

#endif
