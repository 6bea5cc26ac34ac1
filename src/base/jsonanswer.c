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
#include <string.h>

#include "base/json.h"
#include "base/json_impl.h"

static size_t skip_space(const char *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* Past the string whose opening quote is p[i], or 0 when it is not
 * terminated or holds a raw control character; *escaped is set when it
 * holds a backslash. */
static size_t end_of_string(const char *p, size_t len, size_t i, int *escaped)
{
    const unsigned char *u = (const unsigned char *)p;
    for (i++; (i = sg_json_plain_run(u, i, len)) < len; i++) {
        if (u[i] == '"') return i + 1;
        if (u[i] == '\\') {
            *escaped = 1;
            i++;
        } else if (u[i] < 0x20) {
            return 0;
        }
    }
    return 0;
}

/* Past a number or literal starting at p[i] (its characters, not its
 * syntax), or 0 when none starts there. */
static size_t end_of_scalar(const char *p, size_t len, size_t i)
{
    size_t start = i;
    while (i < len && ((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'z') ||
                       p[i] == '-' || p[i] == '+' || p[i] == '.' || p[i] == 'E'))
        i++;
    return i > start && (p[start] == '-' || (p[start] >= '0' && p[start] <= '9') ||
                         p[start] == 't' || p[start] == 'f' || p[start] == 'n')
               ? i
               : 0;
}

/* The members the reader looks at, as bits of a message's "seen" set. */
enum { MEMBER_OTHER = 0, MEMBER_ID = 1, MEMBER_ERROR = 2, MEMBER_RESULT = 4, MEMBER_ISERROR = 8 };

static int member_kind(const char *k, size_t n, int in_result)
{
    if (in_result) return n == 7 && memcmp(k, "isError", 7) == 0 ? MEMBER_ISERROR : MEMBER_OTHER;
    if (n == 2 && memcmp(k, "id", 2) == 0) return MEMBER_ID;
    if (n == 5 && memcmp(k, "error", 5) == 0) return MEMBER_ERROR;
    if (n == 6 && memcmp(k, "result", 6) == 0) return MEMBER_RESULT;
    return MEMBER_OTHER;
}

/* The reader's state between tokens: what may come next. */
enum {
    WANT_VALUE,
    WANT_VALUE_OR_CLOSE,
    WANT_KEY,
    WANT_KEY_OR_CLOSE,
    WANT_COLON,
    WANT_COMMA_OR_CLOSE,
    WANT_END
};

/* Long because it is one state machine: the states share the depth, the
 * message being read and the member last seen, and split apart they would
 * pass all of them around. */
long sg_json_read_answer(const char *p, size_t len, sg_json_answer *out, size_t max)
{
    char open[SG_JSON_MAX_DEPTH_CAP]; /* the bracket of each level */
    size_t depth = 0, md = 0;         /* md: the depth of message objects (1, or 2 in a batch) */
    long n = 0, cur = -1;             /* elements; the message being read, -1 none */
    int state = WANT_VALUE, pending = MEMBER_OTHER, in_result = 0;
    unsigned seen = 0, tool_error = 0;
    size_t id_from = 0, id_depth = 0; /* the id value being read; id_depth 0: none */
    size_t i = 0;
    for (;;) {
        i = skip_space(p, len, i);
        if (i >= len) break;
        char c = p[i];
        if (state == WANT_END) return -1;
        if (state == WANT_COLON) {
            if (c != ':') return -1;
            i++;
            state = WANT_VALUE;
            continue;
        }
        if (state == WANT_KEY || state == WANT_KEY_OR_CLOSE) {
            if (c == '}' && state == WANT_KEY_OR_CLOSE) goto close;
            if (c != '"') return -1;
            int escaped = 0;
            size_t end = end_of_string(p, len, i, &escaped);
            if (!end) return -1;
            pending = MEMBER_OTHER;
            if (cur >= 0 && (depth == md || (in_result && depth == md + 1))) {
                if (escaped) return -1; /* could spell a member read here */
                pending = member_kind(p + i + 1, end - i - 2, depth == md + 1);
                if (seen & (unsigned)pending) return -1;
                seen |= (unsigned)pending;
            }
            i = end;
            state = WANT_COLON;
            continue;
        }
        if (state == WANT_COMMA_OR_CLOSE) {
            if (c == ',') {
                i++;
                state = open[depth - 1] == '{' ? WANT_KEY : WANT_VALUE;
                continue;
            }
            goto close;
        }
        if (c == ']' && state == WANT_VALUE_OR_CLOSE) goto close;
        /* ---- a value starts at p[i] ---- */
        if (depth == 1 && md == 2) { /* an element of a batch */
            if ((size_t)n >= max) return -1;
            out[n] = (sg_json_answer){.outcome = SG_JSON_OUTCOME_OK};
            cur = c == '{' ? n : -1;
            seen = tool_error = 0;
            n++;
        }
        if (pending == MEMBER_ID) {
            id_from = i;
            id_depth = depth;
        }
        if (c == '{' || c == '[') {
            if (depth == SG_JSON_MAX_DEPTH_CAP) return -1;
            if (depth == 0) {
                md = c == '[' ? 2 : 1;
                if (c == '{') {
                    if (max < 1) return -1;
                    out[0] = (sg_json_answer){.outcome = SG_JSON_OUTCOME_OK};
                    cur = 0;
                    n = 1;
                }
            }
            if (pending == MEMBER_RESULT && c == '{') in_result = 1;
            pending = MEMBER_OTHER;
            open[depth++] = c;
            i++;
            state = c == '{' ? WANT_KEY_OR_CLOSE : WANT_VALUE_OR_CLOSE;
            continue;
        }
        if (depth == 0) return -1; /* a scalar at the top: not an answer */
        size_t end;
        if (c == '"') {
            int escaped = 0;
            end = end_of_string(p, len, i, &escaped);
        } else {
            end = end_of_scalar(p, len, i);
        }
        if (!end) return -1;
        if (pending == MEMBER_ISERROR && end - i == 4 && memcmp(p + i, "true", 4) == 0)
            tool_error = 1;
        pending = MEMBER_OTHER;
        i = end;
        goto value_done;

    close:
        if (c != (open[depth - 1] == '{' ? '}' : ']')) return -1;
        i++;
        depth--;
        if (in_result && depth == md) in_result = 0;
        if (cur >= 0 && depth == md - 1) { /* the message object ends */
            out[cur].outcome = (seen & MEMBER_ERROR) ? SG_JSON_OUTCOME_ERROR
                               : tool_error          ? SG_JSON_OUTCOME_TOOL_ERROR
                                                     : SG_JSON_OUTCOME_OK;
            cur = -1;
        }

    value_done:
        if (id_depth && depth == id_depth && cur >= 0) {
            out[cur].id = (sg_json_span){.off = id_from, .len = i - id_from};
            id_depth = 0;
        }
        state = depth == 0 ? WANT_END : WANT_COMMA_OR_CLOSE;
    }
    return state == WANT_END ? n : -1;
}
