/* sse.h -- reading a text/event-stream body, as the SSE specification says.
 *
 * The HTML Living Standard's "Interpreting an event stream": an optional
 * UTF-8 byte order mark at the start, lines ended by CRLF, LF or CR, lines
 * starting with ':' are comments, "field:value" with one optional space
 * after the colon, a line without a colon is a field with an empty value,
 * `data` lines accumulate (joined by LF), and a blank line dispatches the
 * event. An event whose data is empty is not dispatched. An unterminated
 * last event is never dispatched (its stream was cut). */
#ifndef SG_SSE_H
#define SG_SSE_H

#include <stddef.h>

#include "sg.h"

/* Reads the next dispatched event of body[0..len) from *pos (start with
 * 0). Puts its data in data (reset first). Returns 1 for an event, 0 at the
 * end, -1 when out of memory. */
int sg_sse_next(const char *body, size_t len, size_t *pos, sg_buf *data);

#endif
