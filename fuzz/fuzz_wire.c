/* fuzz_wire.c -- libFuzzer target: the strict request-framing scanner
 * (src/net/wire.c) that every client byte passes before libmicrohttpd.
 *
 * Input: a count k (0..15 from the first byte) of piece sizes (one byte
 * each), then the request bytes. The bytes are scanned twice: whole in one
 * sg_wire_scan_feed and in the pieces (cycling the sizes). Both runs must
 * agree on the verdict (status and reason), on the number of requests
 * completed, on the phase they end in and on the body bytes counted, and the
 * "good" prefix reported with a refusal must end a completed request: a
 * framing decision that depends on where the network splits the stream is
 * exactly the desynchronisation the scanner exists to prevent. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/wire.h"
#include "fuzz_common.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

typedef struct verdict {
    int status;
    const char *why;
    unsigned messages;
    sg_wire_phase phase;
    uint64_t body_bytes;
} verdict;

static verdict scan(const uint8_t *sizes, size_t nsizes, const char *data, size_t n)
{
    sg_wire_scan s;
    sg_wire_scan_init(&s);
    size_t off = 0, piece = 0;
    int status = 0;
    while (off < n && !status) {
        size_t want = nsizes ? (size_t)sizes[piece++ % nsizes] + 1 : n - off;
        if (want > n - off) want = n - off;
        unsigned before = s.messages;
        size_t good = 0;
        status = sg_wire_scan_feed(&s, data + off, want, &good);
        CHECK(good <= want);
        if (status) CHECK(good == 0 || s.messages > before);
        off += want;
    }
    if (status) CHECK(sg_wire_scan_feed(&s, "x", 1, NULL) == status); /* refusals stay */
    verdict v = {status, status ? s.why : NULL, s.messages, sg_wire_scan_phase(&s), s.body_bytes};
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t len)
{
    if (len < 1) return 0;
    size_t nsizes = in[0] & 15;
    if (len < 1 + nsizes) return 0;
    const uint8_t *sizes = in + 1;
    const char *data = (const char *)in + 1 + nsizes;
    size_t n = len - 1 - nsizes;
    verdict whole = scan(NULL, 0, data, n);
    verdict split = scan(sizes, nsizes, data, n);
    CHECK(whole.status == split.status);
    CHECK(whole.why == split.why);
    if (!whole.status) {
        CHECK(whole.messages == split.messages);
        CHECK(whole.phase == split.phase);
        CHECK(whole.body_bytes == split.body_bytes);
    }
    return 0;
}
