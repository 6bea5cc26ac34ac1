/* sse.c -- reading a text/event-stream body (see sse.h).
 *
 * Why a file of its own: every place that reads an upstream's event stream
 * must read it the same way a browser or SDK client does, or a message could
 * hide from the gateway in a framing detail (a BOM, a bare CR, "data:" with
 * no space). */
#include "sse.h"

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

int sg_sse_next(const char *body, size_t len, size_t *pos, sg_buf *data)
{
    static const char bom[] = "\xEF\xBB\xBF";
    if (*pos == 0 && len >= 3 && memcmp(body, bom, 3) == 0) *pos = 3;
    sg_buf_reset(data);
    int has_data = 0;
    const char *line;
    size_t n;
    while (next_line(body, len, pos, &line, &n)) {
        if (n == 0) {
            if (has_data && data->len > 0) return sg_buf_ok(data) ? 1 : -1;
            sg_buf_reset(data);
            has_data = 0;
            continue;
        }
        if (line[0] == ':') continue; /* a comment */
        const char *colon = memchr(line, ':', n);
        size_t name_len = colon ? (size_t)(colon - line) : n;
        if (name_len != 4 || memcmp(line, "data", 4) != 0) continue; /* id, event, retry... */
        const char *v = colon ? colon + 1 : line + n;
        size_t vn = (size_t)(line + n - v);
        if (vn > 0 && *v == ' ') v++, vn--;
        if (has_data) sg_buf_putc(data, '\n');
        sg_buf_append(data, v, vn);
        has_data = 1;
    }
    if (!sg_buf_ok(data)) return -1;
    sg_buf_reset(data);
    return 0;
}
