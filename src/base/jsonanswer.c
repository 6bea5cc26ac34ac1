/* jsonanswer.c -- an upstream answer read in one pass for the audit log.
 *
 * Why a second reader beside the strict pre-scan (json.c): the audit log
 * labels every forwarded answer with its outcome (ok, a JSON-RPC error, a
 * tool error) and matches it to the request by id. The pre-scan checks far
 * more than that needs (UTF-8, numbers, every duplicate key) and costs
 * several times as much; this reader checks the grammar and the members it
 * reads, and hands anything it cannot read plainly back to the caller,
 * which then uses the pre-scan and cJSON (fuzz/fuzz_json.c holds the two to
 * the same answers). */
#include <stdint.h>
#include <string.h>

#include "base/json.h"
#include "base/json_impl.h"

/* The small steps below run once per token of every answer: inlined. */
#define HOT static inline __attribute__((always_inline))

/* What the reader asks of a byte, one table lookup each: whitespace; a
 * byte that ends a string's plain run (quote, backslash, control); a byte
 * a number or literal is written with. */
enum { SPACE = 1, STOP = 2, SCALAR = 4 };
static const unsigned char byte_class[256] =
    {
        [0x00 ... 0x08] = STOP, ['\t'] = SPACE | STOP,  ['\n'] = SPACE | STOP,
        [0x0b ... 0x0c] = STOP, ['\r'] = SPACE | STOP,  [0x0e ... 0x1f] = STOP,
        [' '] = SPACE,          ['"'] = STOP,           ['\\'] = STOP,
        ['0' ... '9'] = SCALAR, ['a' ... 'z'] = SCALAR, ['-'] = SCALAR,
        ['+'] = SCALAR,         ['.'] = SCALAR,         ['E'] = SCALAR,
};

/* The first byte from p[i] that ends a string's plain run (a STOP byte),
 * or len. Sixteen bytes at a time (SSE2) or eight (a word) while that many
 * are left: every key and most values of an answer end within the first
 * block, and a long text goes three times as fast as by words. */
HOT size_t string_stop(const unsigned char *p, size_t i, size_t len)
{
    if (sg_json_block_run(p, &i, len, 0)) return i;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (i + 8 <= len) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t stop = sg_json_word_stops(w);
        if (stop) return i + ((unsigned)__builtin_ctzll(stop) >> 3);
        i += 8;
    }
#endif
    while (i < len && !(byte_class[p[i]] & STOP))
        i++;
    return i;
}

/* Past the string whose opening quote is p[i], or 0 when it is not
 * terminated or holds a raw control character; *escaped is set when it
 * holds a backslash. */
HOT size_t end_of_string(const char *p, size_t len, size_t i, int *escaped)
{
    const unsigned char *u = (const unsigned char *)p;
    i++;
    while ((i = string_stop(u, i, len)) < len) {
        if (u[i] == '"') return i + 1;
        if (u[i] != '\\') return 0; /* a control character */
        *escaped = 1;
        i += 2; /* the backslash and the byte it escapes */
    }
    return 0;
}

/* Past a number or literal starting at p[i] (its characters, not its
 * syntax), or 0 when none starts there. */
HOT size_t end_of_scalar(const char *p, size_t len, size_t i)
{
    size_t start = i;
    while (i < len && (byte_class[(unsigned char)p[i]] & SCALAR))
        i++;
    return i > start && (p[start] == '-' || (p[start] >= '0' && p[start] <= '9') ||
                         p[start] == 't' || p[start] == 'f' || p[start] == 'n')
               ? i
               : 0;
}

/* The members the reader looks at, as bits of a message's "seen" set. */
enum { MEMBER_OTHER = 0, MEMBER_ID = 1, MEMBER_ERROR = 2, MEMBER_RESULT = 4, MEMBER_ISERROR = 8 };

HOT int member_kind(const char *k, size_t n, int in_result)
{
    if (in_result) return n == 7 && memcmp(k, "isError", 7) == 0 ? MEMBER_ISERROR : MEMBER_OTHER;
    if (n == 2 && memcmp(k, "id", 2) == 0) return MEMBER_ID;
    if (n == 5 && memcmp(k, "error", 5) == 0) return MEMBER_ERROR;
    if (n == 6 && memcmp(k, "result", 6) == 0) return MEMBER_RESULT;
    return MEMBER_OTHER;
}

/* A reader over one answer: where it is, and where the messages go. */
typedef struct reader {
    const char *p;
    size_t len, i;
} reader;

/* The byte at the reader after any whitespace, or 0 at the end (a NUL in
 * the text reads as 0 too: no token starts with one, so it is an error
 * wherever it is met). */
HOT char next(reader *r)
{
    for (size_t i = r->i; i < r->len; i++) { /* one bounds check per byte looked at */
        unsigned char c = (unsigned char)r->p[i];
        if (!(byte_class[c] & SPACE)) {
            r->i = i;
            return (char)c;
        }
    }
    r->i = r->len;
    return 0;
}

/* Past a member name at r->i (a string, then a colon); *escaped tells
 * whether it holds a backslash. Returns 0, or -1 on a grammar error. */
HOT int member_name(reader *r, size_t *at, size_t *n, int *escaped)
{
    if (next(r) != '"') return -1;
    size_t end = end_of_string(r->p, r->len, r->i, escaped);
    if (!end) return -1;
    *at = r->i + 1;
    *n = end - r->i - 2;
    r->i = end;
    if (next(r) != ':') return -1;
    r->i++;
    return 0;
}

/* Steps into an object or array (r->i at its bracket). Returns 1 when it is
 * empty (and steps past it), else 0. */
HOT int open_container(reader *r, char close)
{
    r->i++;
    if (next(r) != close) return 0;
    r->i++;
    return 1;
}

/* After a member or element: 1 at the closing bracket (stepped past), 0 at
 * a comma (stepped past: another follows), -1 on anything else. */
HOT int after_value(reader *r, char close)
{
    char d = next(r);
    r->i++;
    return d == close ? 1 : d == ',' ? 0 : -1;
}

/* Past one value of any kind, depth levels deep already. Returns 0, or -1
 * on a grammar error or past SG_JSON_MAX_DEPTH_CAP levels. */
static int skip_value(reader *r, unsigned depth)
{
    char c = next(r);
    if (c == '"') {
        int escaped = 0;
        size_t end = end_of_string(r->p, r->len, r->i, &escaped);
        if (!end) return -1;
        r->i = end;
        return 0;
    }
    if (c != '{' && c != '[') {
        size_t end = end_of_scalar(r->p, r->len, r->i);
        if (!end) return -1;
        r->i = end;
        return 0;
    }
    if (depth >= SG_JSON_MAX_DEPTH_CAP) return -1;
    char close = c == '{' ? '}' : ']';
    int done = open_container(r, close);
    while (!done) {
        if (c == '{') {
            size_t at, n;
            int escaped = 0;
            if (member_name(r, &at, &n, &escaped) != 0) return -1;
        }
        if (skip_value(r, depth + 1) != 0 || (done = after_value(r, close)) < 0) return -1;
    }
    return 0;
}

/* The members of a message's "result" object (r->i at its brace): only
 * isError is read. Sets *tool_error when it is the literal true. Returns 0
 * or -1 (a grammar error, isError twice or perhaps written with escapes). */
static int read_result(reader *r, int *tool_error, unsigned depth /* the result's level */)
{
    int seen = 0, done = open_container(r, '}');
    while (!done) {
        size_t at, n;
        int escaped = 0;
        if (member_name(r, &at, &n, &escaped) != 0 || escaped) return -1;
        if (member_kind(r->p + at, n, 1) == MEMBER_ISERROR) {
            if (seen++) return -1;
            next(r);
            size_t end = end_of_scalar(r->p, r->len, r->i);
            if (end - r->i == 4 && memcmp(r->p + r->i, "true", 4) == 0) *tool_error = 1;
        }
        if (skip_value(r, depth + 1) != 0 || (done = after_value(r, '}')) < 0) return -1;
    }
    return 0;
}

/* One message object (r->i at its brace) into *out: its id's span and its
 * outcome. Returns 0 or -1 (a grammar error; id, error or result twice, or
 * a member name with escapes, which could spell one of them). */
static int read_message(reader *r, sg_json_answer *out, unsigned depth)
{
    unsigned seen = 0;
    int tool_error = 0;
    *out = (sg_json_answer){.outcome = SG_JSON_OUTCOME_OK};
    int done = open_container(r, '}');
    while (!done) {
        size_t at, n;
        int escaped = 0;
        if (member_name(r, &at, &n, &escaped) != 0 || escaped) return -1;
        int kind = member_kind(r->p + at, n, 0);
        if (seen & (unsigned)kind) return -1;
        seen |= (unsigned)kind;
        char c = next(r);
        size_t from = r->i;
        if (kind == MEMBER_RESULT && c == '{') {
            if (read_result(r, &tool_error, depth + 1) != 0) return -1;
        } else if (skip_value(r, depth + 1) != 0) {
            return -1;
        }
        if (kind == MEMBER_ID) out->id = (sg_json_span){.off = from, .len = r->i - from};
        if ((done = after_value(r, '}')) < 0) return -1;
    }
    out->outcome = (seen & MEMBER_ERROR) ? SG_JSON_OUTCOME_ERROR
                   : tool_error          ? SG_JSON_OUTCOME_TOOL_ERROR
                                         : SG_JSON_OUTCOME_OK;
    return 0;
}

long sg_json_read_answer(const char *p, size_t len, sg_json_answer *out, size_t max)
{
    reader r = {.p = p, .len = len, .i = 0};
    long n = 0;
    char c = next(&r);
    if (c == '{') {
        if (max < 1 || read_message(&r, &out[0], 1) != 0) return -1;
        n = 1;
    } else if (c == '[') {
        int done = open_container(&r, ']');
        while (!done) {
            if ((size_t)n >= max) return -1;
            if (next(&r) == '{') {
                if (read_message(&r, &out[n], 2) != 0) return -1;
            } else {
                out[n] = (sg_json_answer){.outcome = SG_JSON_OUTCOME_OK};
                if (skip_value(&r, 2) != 0) return -1;
            }
            n++;
            if ((done = after_value(&r, ']')) < 0) return -1;
        }
    } else {
        return -1; /* a scalar at the top, or nothing: not an answer */
    }
    next(&r);                   /* to the first byte that is not whitespace, or the end */
    return r.i == len ? n : -1; /* nothing but whitespace after it */
}
