/* json.c -- the strict pre-scan of raw JSON bodies (see json.h).
 *
 * One linear pass with an explicit stack (no recursion, so 100000 opening
 * brackets cost a few bytes of work before the depth limit stops them).
 * Duplicate keys are found here rather than in a walk of the cJSON tree
 * because only the raw text still has byte offsets for the error message.
 * Keys are compared after decoding escapes ("a" and "\u0061" are the same
 * key to every parser). The keys of every open object sit on one stack:
 * when an object closes, its keys are the top of that stack, are checked
 * (pairwise when few, sorted when many, so a wide object is not quadratic)
 * and popped, which leaves the enclosing object's keys contiguous again. */
#include "base/json.h"
#include "base/json_impl.h"

#include "base/sg.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_DEPTH 64
/* Objects with at most this many keys are checked pairwise. */
#define PAIRWISE_KEY_LIMIT 8

typedef struct key_entry {
    size_t store_off; /* decoded key bytes in the key store */
    size_t len;
    size_t offset;     /* byte offset of the key's opening quote */
    const char *bytes; /* set just before the duplicate check */
} key_entry;

typedef struct frame {
    int is_object;
    int is_message;      /* a message-level object: its "id" is recorded */
    int capturing_id;    /* the member value being scanned is "id" */
    size_t capture_from; /* where that value starts */
    size_t first_key;    /* index of this object's first key entry */
    size_t store_mark;   /* key store length when the object opened */
    size_t msg_index;
} frame;

typedef struct scanner {
    const unsigned char *p;
    size_t len;
    size_t pos;
    sg_json_error *err;
    sg_buf key_store; /* decoded key bytes of all open objects */
    sg_buf keys;      /* key_entry array of all open objects */
    sg_buf ids;       /* sg_json_span array, one per message */
    size_t nmessages;
    unsigned char top; /* first byte of the top-level value */
} scanner;

static int fail(scanner *s, sg_json_errkind kind, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(scanner *s, sg_json_errkind kind, size_t offset, const char *fmt, ...)
{
    va_list ap;
    s->err->kind = kind;
    s->err->offset = offset;
    va_start(ap, fmt);
    vsnprintf(s->err->message, sizeof s->err->message, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_nomem(scanner *s)
{
    return fail(s, SG_JSON_ERR_NOMEM, s->pos, "out of memory");
}

static int fail_unexpected(scanner *s)
{
    if (s->pos >= s->len)
        return fail(s, SG_JSON_ERR_SYNTAX, s->len, "unexpected end of input at byte %zu", s->len);
    return fail(s, SG_JSON_ERR_SYNTAX, s->pos, "unexpected character at byte %zu", s->pos);
}

static void skip_whitespace(scanner *s)
{
    while (s->pos < s->len) {
        unsigned char c = s->p[s->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        s->pos++;
    }
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 0 when it is not one. */
static size_t utf8_sequence_length(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (avail < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits after "\u" at p[at]; -1 when they are not there. */
static long read_hex4(const unsigned char *p, size_t len, size_t at)
{
    if (len - at < 4) return -1;
    long v = 0;
    for (size_t i = 0; i < 4; i++) {
        int h = hex_value(p[at + i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

static void append_utf8(sg_buf *b, uint32_t cp)
{
    char out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    sg_buf_append(b, out, n);
}

/* The bytes a JSON string holds as they are: printable ASCII but '"' and
 * '\\' (a table: one load and test per byte). */
const unsigned char sg_json_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

size_t sg_json_plain_words(const unsigned char *p, size_t i, size_t len)
{
    if (sg_json_block_run(p, &i, len, 1)) return i; /* 0x80 and above stop: UTF-8 is checked */
    while (i + 8 <= len) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        /* Bytes of 0x80 and above are not plain either: UTF-8 is checked. */
        if ((w & 0x8080808080808080ull) | sg_json_word_stops(w))
            break; /* the bytes below find which */
        i += 8;
    }
    while (i < len && sg_json_plain[p[i]])
        i++;
    return i;
}

/* Scans the string whose opening quote is at s->pos and leaves s->pos after
 * the closing quote. When decoded is not NULL the unescaped bytes are
 * appended to it. Returns 0, or -1 with s->err filled.
 * Long because every escape JSON has is one case of one switch, next to the
 * byte loop it interrupts. */
static int scan_string(scanner *s, sg_buf *decoded)
{
    const unsigned char *p = s->p;
    size_t i = s->pos + 1;
    while (i < s->len) {
        unsigned char c = p[i];
        if (c == '"') {
            s->pos = i + 1;
            return 0;
        }
        if (c >= 0x20 && c < 0x80 && c != '\\') {
            /* A run of plain ASCII (most of any string) needs no check but
             * its end: taken, and appended, in one go. */
            size_t j = sg_json_plain_run(p, i + 1, s->len);
            if (decoded) sg_buf_append(decoded, p + i, j - i);
            i = j;
            continue;
        }
        if (c < 0x20)
            return fail(s, SG_JSON_ERR_SYNTAX, i,
                        "control character U+%04X in a string at byte %zu", (unsigned)c, i);
        if (c == '\\') {
            if (i + 1 >= s->len) break;
            unsigned char e = p[i + 1];
            const char *simple = NULL;
            switch (e) {
            case '"':
                simple = "\"";
                break;
            case '\\':
                simple = "\\";
                break;
            case '/':
                simple = "/";
                break;
            case 'b':
                simple = "\b";
                break;
            case 'f':
                simple = "\f";
                break;
            case 'n':
                simple = "\n";
                break;
            case 'r':
                simple = "\r";
                break;
            case 't':
                simple = "\t";
                break;
            case 'u':
                break;
            default:
                return fail(s, SG_JSON_ERR_SYNTAX, i, "invalid escape in a string at byte %zu", i);
            }
            if (simple) {
                if (decoded) sg_buf_putc(decoded, simple[0]);
                i += 2;
                continue;
            }
            long cp = read_hex4(p, s->len, i + 2);
            if (cp < 0)
                return fail(s, SG_JSON_ERR_SYNTAX, i, "invalid \\u escape in a string at byte %zu",
                            i);
            if (cp == 0)
                return fail(s, SG_JSON_ERR_NUL_ESCAPE, i, "\\u0000 in a string at byte %zu", i);
            size_t used = 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return fail(s, SG_JSON_ERR_SYNTAX, i, "lone surrogate escape at byte %zu", i);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long low = -1;
                if (s->len - (i + 6) >= 2 && p[i + 6] == '\\' && p[i + 7] == 'u')
                    low = read_hex4(p, s->len, i + 8);
                if (low < 0xDC00 || low > 0xDFFF)
                    return fail(s, SG_JSON_ERR_SYNTAX, i, "lone surrogate escape at byte %zu", i);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                used = 12;
            }
            if (decoded) append_utf8(decoded, (uint32_t)cp);
            i += used;
            continue;
        }
        size_t n = utf8_sequence_length(p + i, s->len - i);
        if (n == 0)
            return fail(s, SG_JSON_ERR_SYNTAX, i, "invalid UTF-8 in a string at byte %zu", i);
        if (decoded) sg_buf_append(decoded, p + i, n);
        i += n;
    }
    return fail(s, SG_JSON_ERR_SYNTAX, s->len, "unterminated string at byte %zu", s->len);
}

/* JSON number grammar, exactly: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(scanner *s)
{
    const unsigned char *p = s->p;
    size_t start = s->pos, i = s->pos;
    if (i < s->len && p[i] == '-') i++;
    if (i < s->len && p[i] == '0') {
        i++;
    } else if (i < s->len && p[i] >= '1' && p[i] <= '9') {
        while (i < s->len && p[i] >= '0' && p[i] <= '9')
            i++;
    } else {
        return fail(s, SG_JSON_ERR_SYNTAX, i, "invalid number at byte %zu", i);
    }
    if (i < s->len && p[i] == '.') {
        i++;
        if (i >= s->len || p[i] < '0' || p[i] > '9')
            return fail(s, SG_JSON_ERR_SYNTAX, i, "invalid number at byte %zu", i);
        while (i < s->len && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    if (i < s->len && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < s->len && (p[i] == '+' || p[i] == '-')) i++;
        if (i >= s->len || p[i] < '0' || p[i] > '9')
            return fail(s, SG_JSON_ERR_SYNTAX, i, "invalid number at byte %zu", i);
        while (i < s->len && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    if (i - start > SG_JSON_MAX_NUMBER_LEN)
        return fail(s, SG_JSON_ERR_NUMBER_TOO_LONG, start,
                    "number longer than %d characters at byte %zu", SG_JSON_MAX_NUMBER_LEN, start);
    s->pos = i;
    return 0;
}

static int scan_literal(scanner *s)
{
    static const char *const literals[] = {"true", "false", "null"};
    for (size_t k = 0; k < SG_ARRAY_LEN(literals); k++) {
        size_t n = strlen(literals[k]);
        if (s->len - s->pos >= n && memcmp(s->p + s->pos, literals[k], n) == 0) {
            s->pos += n;
            return 0;
        }
    }
    return fail(s, SG_JSON_ERR_SYNTAX, s->pos, "invalid literal at byte %zu", s->pos);
}

static int compare_keys(const void *a, const void *b)
{
    const key_entry *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->bytes, y->bytes, n) : 0;
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->offset < y->offset ? -1 : (x->offset > y->offset);
}

static int same_key(const key_entry *x, const key_entry *y)
{
    return x->len == y->len && (x->len == 0 || memcmp(x->bytes, y->bytes, x->len) == 0);
}

static int fail_duplicate(scanner *s, const key_entry *dup)
{
    /* Quote at most SG_JSON_MAX_KEY_IN_MESSAGE bytes, cut on a UTF-8
     * boundary so the message stays valid UTF-8. */
    size_t n = dup->len;
    if (n > SG_JSON_MAX_KEY_IN_MESSAGE) {
        n = SG_JSON_MAX_KEY_IN_MESSAGE;
        while (n > 0 && ((unsigned char)dup->bytes[n] & 0xC0) == 0x80)
            n--;
    }
    return fail(s, SG_JSON_ERR_DUPLICATE_KEY, dup->offset, "duplicate key \"%.*s%s\" at byte %zu",
                (int)n, dup->bytes, n < dup->len ? "..." : "", dup->offset);
}

/* Checks the keys of the object that is closing (entries first..end of the
 * key stack) and pops them. Reports the re-occurrence with the smallest
 * offset. */
static int close_object(scanner *s, const frame *f)
{
    key_entry *keys = (key_entry *)s->keys.data;
    size_t total = s->keys.len / sizeof(key_entry);
    size_t n = total - f->first_key;
    key_entry *k = keys ? keys + f->first_key : NULL;
    const key_entry *dup = NULL;
    /* Only empty keys so far leave the store unallocated (NULL + 0 is
     * undefined behaviour). */
    const char *store = s->key_store.data ? s->key_store.data : "";
    for (size_t i = 0; i < n; i++)
        k[i].bytes = store + k[i].store_off;
    if (n > 1 && n <= PAIRWISE_KEY_LIMIT) {
        for (size_t j = 1; j < n; j++)
            for (size_t i = 0; i < j; i++)
                if (same_key(&k[i], &k[j]) && (!dup || k[j].offset < dup->offset)) dup = &k[j];
    } else if (n > PAIRWISE_KEY_LIMIT) {
        /* Sorted by key then offset: every element equal to its predecessor
         * is a re-occurrence. */
        qsort(k, n, sizeof *k, compare_keys);
        for (size_t i = 1; i < n; i++)
            if (same_key(&k[i - 1], &k[i]) && (!dup || k[i].offset < dup->offset)) dup = &k[i];
    }
    if (dup) return fail_duplicate(s, dup);
    s->keys.len = f->first_key * sizeof(key_entry);
    s->key_store.len = f->store_mark;
    return 0;
}

static int record_message(scanner *s, size_t max_messages)
{
    if (max_messages && s->nmessages >= max_messages)
        return fail(s, SG_JSON_ERR_TOO_MANY_ELEMENTS, s->pos,
                    "more than %zu elements in the top-level array at byte %zu", max_messages,
                    s->pos);
    sg_json_span none = {0, 0};
    sg_buf_append(&s->ids, &none, sizeof none);
    if (!sg_buf_ok(&s->ids)) return fail_nomem(s);
    s->nmessages++;
    return 0;
}

/* The pre-scan proper: values, members and nesting without recursion (the
 * frames are the caller's, one per level, at most lim->max_depth).
 * Long because it is one state machine whose states jump to each other (a
 * value starts, a value ended, a key is expected) over shared locals. */
static int run(scanner *s, const sg_json_limits *lim, frame *stack)
{
    size_t depth = 0; /* frames in use */
    skip_whitespace(s);
    if (s->pos >= s->len) return fail_unexpected(s);
    s->top = s->p[s->pos];
    if (s->top != '[' && record_message(s, 0) != 0) return -1;

    for (;;) {
        /* ---- a value starts at s->pos ---- */
        skip_whitespace(s);
        if (s->pos >= s->len) return fail_unexpected(s);
        if (depth == 1 && !stack[0].is_object && record_message(s, lim->max_top_elements) != 0)
            return -1;
        unsigned char c = s->p[s->pos];
        if (c == '{' || c == '[') {
            if (depth >= lim->max_depth)
                return fail(s, SG_JSON_ERR_DEPTH, s->pos, "nesting deeper than %u at byte %zu",
                            lim->max_depth, s->pos);
            frame *f = &stack[depth];
            memset(f, 0, sizeof *f);
            f->is_object = c == '{';
            f->first_key = s->keys.len / sizeof(key_entry);
            f->store_mark = s->key_store.len;
            f->msg_index = s->nmessages ? s->nmessages - 1 : 0;
            f->is_message = f->is_object && (depth == 0 || (depth == 1 && !stack[0].is_object));
            depth++;
            s->pos++;
            skip_whitespace(s);
            if (s->pos < s->len && s->p[s->pos] == (f->is_object ? '}' : ']')) {
                s->pos++;
                depth--;
                goto after_value;
            }
            if (!f->is_object) continue;
            goto member_key;
        } else if (c == '"') {
            if (scan_string(s, NULL) != 0) return -1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if (scan_number(s) != 0) return -1;
        } else if (c == 't' || c == 'f' || c == 'n') {
            if (scan_literal(s) != 0) return -1;
        } else {
            return fail_unexpected(s);
        }

    after_value:
        /* ---- a value just ended; s->pos is right after it ---- */
        if (depth == 0) {
            skip_whitespace(s);
            if (s->pos < s->len)
                return fail(s, SG_JSON_ERR_SYNTAX, s->pos,
                            "unexpected character after the top-level value at byte %zu", s->pos);
            return 0;
        }
        {
            frame *f = &stack[depth - 1];
            if (f->capturing_id) {
                sg_json_span *ids = (sg_json_span *)s->ids.data;
                ids[f->msg_index].off = f->capture_from;
                ids[f->msg_index].len = s->pos - f->capture_from;
                f->capturing_id = 0;
            }
            skip_whitespace(s);
            if (s->pos >= s->len) return fail_unexpected(s);
            c = s->p[s->pos];
            if (c == ',') {
                s->pos++;
                if (!f->is_object) continue;
                skip_whitespace(s);
                goto member_key;
            }
            if (c == (f->is_object ? '}' : ']')) {
                if (f->is_object && close_object(s, f) != 0) return -1;
                s->pos++;
                depth--;
                goto after_value;
            }
            return fail_unexpected(s);
        }

    member_key:
        /* ---- inside an object, a key is expected at s->pos ---- */
        {
            frame *f = &stack[depth - 1];
            if (s->pos >= s->len || s->p[s->pos] != '"') return fail_unexpected(s);
            key_entry k = {s->key_store.len, 0, s->pos, NULL};
            if (scan_string(s, &s->key_store) != 0) return -1;
            if (!sg_buf_ok(&s->key_store)) return fail_nomem(s);
            k.len = s->key_store.len - k.store_off;
            sg_buf_append(&s->keys, &k, sizeof k);
            if (!sg_buf_ok(&s->keys)) return fail_nomem(s);
            skip_whitespace(s);
            if (s->pos >= s->len || s->p[s->pos] != ':') return fail_unexpected(s);
            s->pos++;
            skip_whitespace(s);
            if (f->is_message && k.len == 2 &&
                memcmp(s->key_store.data + k.store_off, "id", 2) == 0) {
                f->capturing_id = 1;
                f->capture_from = s->pos;
            }
        }
    }
}

int sg_json_prescan(const char *p, size_t len, const sg_json_limits *lim, sg_json_scan *out,
                    sg_json_error *err)
{
    static const sg_json_limits defaults = {.max_depth = DEFAULT_MAX_DEPTH, .max_top_elements = 0};
    sg_json_error scratch;
    memset(out, 0, sizeof *out);
    if (!err) err = &scratch;
    memset(err, 0, sizeof *err);
    if (!lim) lim = &defaults;
    sg_json_limits l = *lim;
    if (l.max_depth == 0) l.max_depth = DEFAULT_MAX_DEPTH;
    if (l.max_depth > SG_JSON_MAX_DEPTH_CAP) l.max_depth = SG_JSON_MAX_DEPTH_CAP;

    scanner s = {
        (const unsigned char *)p, p ? len : 0, 0, err, SG_BUF_INIT, SG_BUF_INIT, SG_BUF_INIT, 0, 0};
    /* The frames and the key table of a usual message without malloc's
     * slow paths: the frames on the stack (3 KiB; malloc'd only for a
     * deeper limit), the key table and store reserved once instead of
     * grown by doubling from empty (three reallocations per message). */
    frame local[DEFAULT_MAX_DEPTH];
    frame *stack = l.max_depth <= DEFAULT_MAX_DEPTH ? local : malloc(sizeof(frame) * l.max_depth);
    sg_buf_reserve(&s.keys, 16 * sizeof(key_entry));
    sg_buf_reserve(&s.key_store, 200);
    int rc;
    if (!stack) {
        rc = fail_nomem(&s);
    } else {
        rc = run(&s, &l, stack);
    }
    if (stack != local) free(stack);
    sg_buf_free(&s.key_store);
    sg_buf_free(&s.keys);
    if (rc != 0) {
        sg_buf_free(&s.ids);
        return -1;
    }
    out->top_is_array = s.top == '[';
    out->top_is_object = s.top == '{';
    out->nmessages = s.nmessages;
    out->id_spans = (sg_json_span *)sg_buf_steal(&s.ids);
    if (!out->id_spans && out->nmessages) {
        memset(out, 0, sizeof *out);
        s.pos = 0;
        return fail_nomem(&s);
    }
    return 0;
}

void sg_json_scan_free(sg_json_scan *s)
{
    free(s->id_spans);
    memset(s, 0, sizeof *s);
}

int sg_json_is_id_literal(const char *p, size_t len)
{
    if (!p || len == 0) return 0;
    if (len == 4 && memcmp(p, "null", 4) == 0) return 1;
    sg_json_error err;
    scanner s = {
        (const unsigned char *)p, len, 0, &err, SG_BUF_INIT, SG_BUF_INIT, SG_BUF_INIT, 0, 0};
    if (p[0] == '"') return scan_string(&s, NULL) == 0 && s.pos == len;
    size_t i = p[0] == '-' ? 1 : 0;
    if (i >= len) return 0;
    if (p[i] == '0') return i + 1 == len;
    if (p[i] < '1' || p[i] > '9') return 0;
    for (; i < len; i++)
        if (p[i] < '0' || p[i] > '9') return 0;
    return len <= SG_JSON_MAX_NUMBER_LEN;
}

void sg_json_append_string(sg_buf *out, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    sg_buf_putc(out, '"');
    size_t run_start = 0, i = 0;
    while ((i = sg_json_plain_run(s, i, len)) < len) {
        unsigned char c = s[i];
        size_t n = c >= 0x80 ? utf8_sequence_length(s + i, len - i) : 0;
        if (n > 0) {
            i += n;
            continue;
        }
        sg_buf_append(out, s + run_start, i - run_start);
        switch (c) {
        case '"':
            sg_buf_puts(out, "\\\"");
            break;
        case '\\':
            sg_buf_puts(out, "\\\\");
            break;
        case '\n':
            sg_buf_puts(out, "\\n");
            break;
        case '\r':
            sg_buf_puts(out, "\\r");
            break;
        case '\t':
            sg_buf_puts(out, "\\t");
            break;
        case '\b':
            sg_buf_puts(out, "\\b");
            break;
        case '\f':
            sg_buf_puts(out, "\\f");
            break;
        default:
            if (c < 0x20)
                sg_buf_printf(out, "\\u%04x", (unsigned)c);
            else
                sg_buf_puts(out, "\xEF\xBF\xBD"); /* invalid UTF-8 byte: U+FFFD */
        }
        i++;
        run_start = i;
    }
    sg_buf_append(out, s + run_start, i - run_start);
    sg_buf_putc(out, '"');
}
