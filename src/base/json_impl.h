/* json_impl.h -- what the two JSON readers of src/base share.
 *
 * json.c (the strict pre-scan and the string writer) and jsonanswer.c (the
 * one-pass answer reader of the audit log) both skip the run of bytes a
 * JSON string holds as they are; the same tests find where such a run ends
 * for both, sixteen bytes at a time (SSE2) and eight (a word) near its end
 * (the pre-scan also stops at bytes of 0x80 and above, whose UTF-8 it
 * checks; the answer reader passes them). Private to src/base. */
#ifndef SG_JSON_IMPL_H
#define SG_JSON_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* 1 for the bytes a JSON string holds as they are: printable ASCII but '"'
 * and '\\'. */
extern const unsigned char sg_json_plain[256];

/* The bytes of the eight-byte word w (loaded from memory as it is) that
 * end a string's run in either reader: a quote, a backslash or a control
 * character, as the high bit of each such byte. Only the lowest flagged
 * byte is sure (a borrow may flag bytes above a true one): it is the one
 * the readers look for. Can't fail. */
static inline uint64_t sg_json_word_stops(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t q = w ^ 0x2222222222222222ull; /* a zero byte where w has '"' */
    uint64_t b = w ^ 0x5C5C5C5C5C5C5C5Cull; /* ... where w has a backslash */
    return ((w - 0x20 * ones) & ~w & highs) | ((q - ones) & ~q & highs) | ((b - ones) & ~b & highs);
}

#if defined(__SSE2__) /* every x86-64 */
#include <emmintrin.h>
#endif

/* Skips the whole sixteen-byte blocks from p[*i] that hold none of those
 * bytes, with SSE2 (a long string, a tool's text or a file's contents,
 * costs a third of what the word test costs; without SSE2 nothing is
 * skipped). A byte of 0x80 and above stops it too when high is set.
 * Returns 1 with *i at the first such byte, or 0 with *i where fewer than
 * sixteen bytes are left (the word test goes on from there). Can't fail. */
static inline int sg_json_block_run(const unsigned char *p, size_t *i, size_t len, int high)
{
#if defined(__SSE2__)
    for (; *i + 16 <= len; *i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + *i));
        __m128i quote = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
        __m128i backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
        __m128i control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v); /* <= 0x1f */
        unsigned stops =
            (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control));
        if (high) stops |= (unsigned)_mm_movemask_epi8(v);
        if (stops) {
            *i += (unsigned)__builtin_ctz(stops); /* exact for each byte */
            return 1;
        }
    }
#else
    (void)p, (void)i, (void)len, (void)high;
#endif
    return 0;
}

/* Past the run of such bytes from p[i], sixteen or eight at a time: the
 * long runs of sg_json_plain_run. Can't fail. */
size_t sg_json_plain_words(const unsigned char *p, size_t i, size_t len);

/* Past the run of such bytes from p[i] (i may be past len: returned as it
 * is). Most strings of a JSON-RPC message are short: their first sixteen
 * bytes are looked at one by one, in line; a longer run goes on eight at a
 * time. Can't fail. */
static inline size_t sg_json_plain_run(const unsigned char *p, size_t i, size_t len)
{
    if (i >= len) return i;
    size_t first = len - i > 16 ? i + 16 : len;
    while (i < first && sg_json_plain[p[i]])
        i++;
    return i == first && first < len ? sg_json_plain_words(p, i, len) : i;
}

#endif
