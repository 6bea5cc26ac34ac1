/* fuzz_http1.c -- libFuzzer target: the HTTP/1.1 response parser
 * (src/upstream/http1.c) fed in random pieces.
 *
 * Input: one control byte, then a count k (0..15 from the next byte) of
 * piece sizes (one byte each), then the response bytes. Bit 0 of the control
 * byte makes it a HEAD answer (no body), bit 1 makes the body callback pause
 * every other call, bit 2 ends the stream with sg_http1_eof. The same bytes
 * are parsed twice: whole in one sg_http1_feed and in the pieces (cycling the
 * sizes). Both runs must report the same header lines, body bytes, status,
 * keep-alive, final state and consumed count: a parser whose result depends
 * on where the network splits its input desynchronizes connections. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/http1.h"
#include "base/sg.h"
#include "fuzz_common.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

typedef struct run {
    sg_buf heads;
    sg_buf body;
    int pause_every_other;
    unsigned calls;
} run;

static size_t on_header(const char *line, size_t len, void *ud)
{
    run *r = ud;
    CHECK(len > 0 && line[len - 1] == '\n');
    sg_buf_append(&r->heads, line, len);
    sg_buf_putc(&r->heads, '\0'); /* keep line boundaries in the comparison */
    return 1;
}

static size_t on_body(const char *data, size_t len, void *ud)
{
    run *r = ud;
    CHECK(len > 0);
    if (r->pause_every_other && (r->calls++ & 1) == 0) return SG_HTTP1_PAUSE;
    sg_buf_append(&r->body, data, len);
    return len;
}

/* Feeds data[0..n) in the given piece sizes (a single piece when nsizes is
 * 0), re-feeding after pauses; returns the bytes consumed. */
static size_t parse(sg_http1 *p, run *r, const uint8_t *sizes, size_t nsizes, const char *data,
                    size_t n, int eof)
{
    sg_http1_sink sink = {on_header, on_body, r};
    size_t off = 0, piece = 0;
    while (off < n && p->state != SG_HTTP1_DONE && p->state != SG_HTTP1_ERROR) {
        size_t want = nsizes ? (size_t)sizes[piece++ % nsizes] + 1 : n - off;
        if (want > n - off) want = n - off;
        size_t fed = 0;
        /* A paused parser gets the rest of its piece again, as often as it
         * makes progress: a piece may hold any number of chunks, each paused
         * once. The callback pauses only every other call, so three feeds in
         * a row that consume nothing mean it is stuck. */
        for (int idle = 0; fed < want && idle < 3;) {
            size_t got = sg_http1_feed(p, data + off + fed, want - fed, &sink);
            CHECK(got <= want - fed);
            fed += got;
            if (p->state == SG_HTTP1_DONE || p->state == SG_HTTP1_ERROR) break;
            idle = got ? 0 : idle + 1;
        }
        off += fed;
        if (fed < want && p->state != SG_HTTP1_DONE && p->state != SG_HTTP1_ERROR)
            abort(); /* stuck: neither consumed nor finished */
    }
    if (eof && p->state != SG_HTTP1_DONE && p->state != SG_HTTP1_ERROR) sg_http1_eof(p, &sink);
    return off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    int flags = data[0];
    size_t nsizes = data[1] & 15;
    if (size < 2 + nsizes) return 0;
    const uint8_t *sizes = data + 2;
    const char *msg = (const char *)data + 2 + nsizes;
    size_t n = size - 2 - nsizes;
    int no_body = flags & 1, pause = (flags >> 1) & 1, eof = (flags >> 2) & 1;

    sg_http1 *whole = malloc(sizeof *whole), *split = malloc(sizeof *split);
    CHECK(whole && split);
    run a = {SG_BUF_INIT, SG_BUF_INIT, pause, 0}, b = {SG_BUF_INIT, SG_BUF_INIT, pause, 0};
    sg_http1_init(whole, no_body);
    sg_http1_init(split, no_body);
    size_t used_a = parse(whole, &a, sizes, 0, msg, n, eof);
    size_t used_b = parse(split, &b, sizes, nsizes, msg, n, eof);

    CHECK(whole->state == split->state);
    CHECK(whole->state != SG_HTTP1_ERROR || (whole->error && split->error));
    if (whole->state != SG_HTTP1_ERROR) {
        /* An error may be found at a different byte once pieces differ only
         * in where a too-long line is noticed; success must be identical. */
        CHECK(used_a == used_b);
        CHECK(whole->status == split->status);
        CHECK(whole->keepalive == split->keepalive);
        CHECK(a.heads.len == b.heads.len &&
              (a.heads.len == 0 || memcmp(a.heads.data, b.heads.data, a.heads.len) == 0));
        CHECK(a.body.len == b.body.len &&
              (a.body.len == 0 || memcmp(a.body.data, b.body.data, a.body.len) == 0));
    }
    if (whole->state == SG_HTTP1_DONE) CHECK(whole->status >= 200 && whole->status <= 599);
    sg_buf_free(&a.heads);
    sg_buf_free(&a.body);
    sg_buf_free(&b.heads);
    sg_buf_free(&b.body);
    free(whole);
    free(split);
    return 0;
}
