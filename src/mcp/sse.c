/* sse.c -- reading a text/event-stream body (see sse.h).
 *
 * Why a file of its own: every place that reads an upstream's event stream
 * must read it the same way a browser or SDK client does, or a message could
 * hide from the gateway in a framing detail (a BOM, a bare CR, "data:" with
 * no space). */
#include "mcp/sse.h"

#include <string.h>

/* One line from *pos: its span, the position after its terminator. Returns
 * 0 when no terminated line is left. */
static int next_line(const char *b, size_t len, size_t *pos, const char **line, size_t *n)
{
    size_t i = *pos;
    while (i < len && b[i] != '\n' && b[i] != '\r')
        i++;
    if (i == len) return 0;
    *line = b + *pos;
    *n = i - *pos;
    if (b[i] == '\r' && i + 1 < len && b[i + 1] == '\n') i++;
    *pos = i + 1;
    return 1;
}

int sg_sse_read(const char *body, size_t len, size_t *pos, sg_sse_event *ev)
{
    static const char bom[] = "\xEF\xBB\xBF";
    if (*pos == 0 && len >= 3 && memcmp(body, bom, 3) == 0) *pos = 3;
    sg_buf_reset(&ev->data);
    sg_buf_reset(&ev->other);
    ev->has_data = 0;
    ev->data_at = 0;
    size_t start = *pos, p = *pos;
    const char *line;
    size_t n;
    while (next_line(body, len, &p, &line, &n)) {
        if (n == 0) {
            *pos = p;
            return sg_buf_ok(&ev->data) && sg_buf_ok(&ev->other) ? 1 : -1;
        }
        const char *colon = line[0] == ':' ? NULL : memchr(line, ':', n);
        size_t name_len = colon ? (size_t)(colon - line) : n;
        if (line[0] == ':' || name_len != 4 || memcmp(line, "data", 4) != 0) {
            /* A comment, or a field other than data: kept as received. */
            sg_buf_append(&ev->other, line, n);
            sg_buf_putc(&ev->other, '\n');
            if (!ev->has_data) ev->data_at = ev->other.len;
            continue;
        }
        const char *v = colon ? colon + 1 : line + n;
        size_t vn = (size_t)(line + n - v);
        if (vn > 0 && *v == ' ') v++, vn--;
        if (ev->has_data) sg_buf_putc(&ev->data, '\n');
        sg_buf_append(&ev->data, v, vn);
        ev->has_data = 1;
    }
    *pos = start; /* no blank line: an unterminated block */
    int ok = sg_buf_ok(&ev->data) && sg_buf_ok(&ev->other);
    sg_buf_reset(&ev->data);
    sg_buf_reset(&ev->other);
    ev->has_data = 0;
    ev->data_at = 0;
    return ok ? 0 : -1;
}

void sg_sse_event_free(sg_sse_event *ev)
{
    sg_buf_free(&ev->data);
    sg_buf_free(&ev->other);
    ev->has_data = 0;
    ev->data_at = 0;
}

int sg_sse_next(const char *body, size_t len, size_t *pos, sg_buf *data)
{
    /* The event's data lands in the caller's buffer directly. */
    sg_sse_event ev = SG_SSE_EVENT_INIT;
    ev.data = *data;
    int rc;
    while ((rc = sg_sse_read(body, len, pos, &ev)) == 1)
        if (ev.has_data && ev.data.len > 0) break;
    *data = ev.data;
    sg_buf_free(&ev.other);
    if (rc == 0) {
        *pos = len;
        sg_buf_reset(data);
    }
    return rc;
}
