/* luasrc.c -- where things are written in Lua source text (see luasrc.h).
 *
 * Why one file: the policy loader, the config file reader and policy tests
 * all point authors at lines of their Lua files, and each once grew its own
 * scanner. Lua's lexical rules (comments, short and long strings, long
 * brackets at any level) are easy to get subtly wrong, so they live here
 * once, tested once. */
#include "policy/luasrc.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "base/sg.h"

static int is_ident(int c)
{
    return isalnum(c) || c == '_';
}

/* Length of a long bracket opener "[==[" at s[i], or 0. Sets *level. */
static size_t long_open(const char *s, size_t n, size_t i, size_t *level)
{
    if (s[i] != '[') return 0;
    size_t j = i + 1;
    while (j < n && s[j] == '=')
        j++;
    if (j < n && s[j] == '[') {
        *level = j - i - 1;
        return j - i + 1;
    }
    return 0;
}

/* Index of the byte after the long bracket closing at level, from i. */
static size_t long_close(const char *s, size_t n, size_t i, size_t level)
{
    for (; i < n; i++) {
        if (s[i] != ']') continue;
        size_t j = i + 1;
        while (j < n && s[j] == '=')
            j++;
        if (j < n && s[j] == ']' && j - i - 1 == level) return j + 1;
    }
    return n;
}

int sg_luasrc_token_is(const char *src, const sg_luasrc_token *t, const char *text)
{
    return t && t->len == strlen(text) && memcmp(src + t->off, text, t->len) == 0 &&
           t->kind != SG_LUASRC_STRING;
}

int sg_luasrc_is_keyword(const char *src, const sg_luasrc_token *t)
{
    static const char *const kw[] = {"and",   "break", "do",       "else", "elseif", "end",
                                     "false", "for",   "function", "goto", "if",     "in",
                                     "local", "nil",   "not",      "or",   "repeat", "return",
                                     "then",  "true",  "until",    "while"};
    if (t->kind != SG_LUASRC_NAME) return 0;
    for (size_t i = 0; i < SG_ARRAY_LEN(kw); i++)
        if (sg_luasrc_token_is(src, t, kw[i])) return 1;
    return 0;
}

size_t sg_luasrc_tokens(const char *src, size_t from, size_t to, int first_line,
                        sg_luasrc_token **out)
{
    size_t n = 0, cap = 64, level;
    sg_luasrc_token *t = malloc(cap * sizeof *t);
    int line = first_line;
    for (size_t i = from; t && i < to;) {
        char c = src[i];
        size_t lo, start = i;
        sg_luasrc_token tok = {.at = i, .off = i, .len = 1, .kind = SG_LUASRC_OTHER, .line = line};
        if (c == '\n' || isspace((unsigned char)c)) {
            line += c == '\n';
            i++;
            continue;
        }
        if (c == '-' && i + 1 < to && src[i + 1] == '-') {
            i += 2;
            if ((lo = long_open(src, to, i, &level)) != 0)
                i = long_close(src, to, i + lo, level);
            else
                while (i < to && src[i] != '\n')
                    i++;
            for (size_t k = start; k < i; k++)
                line += src[k] == '\n';
            continue;
        }
        if (c == '"' || c == '\'') {
            i++;
            while (i < to && src[i] != c && src[i] != '\n')
                i += (src[i] == '\\' && i + 1 < to) ? 2 : 1;
            tok = (sg_luasrc_token){start, start + 1, (i < to ? i : to) - start - 1,
                                    SG_LUASRC_STRING, line};
            if (i < to) i++;
        } else if ((lo = long_open(src, to, i, &level)) != 0) {
            i = long_close(src, to, i + lo, level);
            size_t end = i >= level + 2 ? i - level - 2 : i;
            tok = (sg_luasrc_token){start, start + lo, end > start + lo ? end - start - lo : 0,
                                    SG_LUASRC_STRING, line};
            for (size_t k = start; k < i; k++)
                line += src[k] == '\n';
        } else if (is_ident((unsigned char)c) && !isdigit((unsigned char)c)) {
            while (i < to && is_ident((unsigned char)src[i]))
                i++;
            tok = (sg_luasrc_token){start, start, i - start, SG_LUASRC_NAME, line};
        } else if (isdigit((unsigned char)c)) {
            while (i < to && (is_ident((unsigned char)src[i]) || src[i] == '.'))
                i++;
            tok = (sg_luasrc_token){start, start, i - start, SG_LUASRC_OTHER, line};
        } else {
            static const char *const two[] = {"==", "~=", "<=", ">=", "..", "::", "//", "<<", ">>"};
            size_t len = 1;
            for (size_t k = 0; k < SG_ARRAY_LEN(two) && i + 1 < to; k++)
                if (src[i] == two[k][0] && src[i + 1] == two[k][1]) len = 2;
            if (len == 2 && src[i] == '.' && i + 2 < to && src[i + 2] == '.') len = 3;
            i += len;
            tok = (sg_luasrc_token){start, start, len, SG_LUASRC_OTHER, line};
        }
        if (n == cap) {
            sg_luasrc_token *g = realloc(t, (cap *= 2) * sizeof *t);
            if (!g) {
                free(t);
                t = NULL;
                break;
            }
            t = g;
        }
        t[n++] = tok;
    }
    *out = t;
    return t ? n : 0;
}

/* ---- the index ------------------------------------------------------------ */

struct sg_luasrc_entry {
    size_t off;       /* where the key or literal starts */
    size_t text, len; /* its text (without quotes) */
    sg_luasrc_entry_kind kind;
    long next; /* next entry in the same hash bucket, in source order */
};

static int add_entry(sg_luasrc *x, size_t *cap, sg_luasrc_entry_kind kind, size_t off, size_t text,
                     size_t len)
{
    if (sg_array_reserve(&x->e, cap, x->n, sizeof *x->e, 256) != 0) return -1;
    x->e[x->n++] = (struct sg_luasrc_entry){off, text, len, kind, -1};
    return 0;
}

/* The keys and literals of a token list: every string is a literal; a
 * name followed by `=` (not `==`) and not by way of `.` or `:` is a key;
 * `[` string `]` `=` is a key too. */
static int index_tokens(sg_luasrc *x, const sg_luasrc_token *t, size_t n)
{
    size_t cap = 0;
    const char *s = x->src;
    for (size_t i = 0; i < n; i++) {
        const sg_luasrc_token *k = &t[i], *prev = i ? &t[i - 1] : NULL;
        const sg_luasrc_token *next = i + 1 < n ? &t[i + 1] : NULL;
        if (k->kind == SG_LUASRC_STRING) {
            if (add_entry(x, &cap, SG_LUASRC_LITERAL, k->at, k->off, k->len) != 0) return -1;
            if (sg_luasrc_token_is(s, prev, "[") && sg_luasrc_token_is(s, next, "]") && i + 2 < n &&
                sg_luasrc_token_is(s, &t[i + 2], "=") &&
                add_entry(x, &cap, SG_LUASRC_KEY, prev->at, k->off, k->len) != 0)
                return -1;
        } else if (k->kind == SG_LUASRC_NAME && sg_luasrc_token_is(s, next, "=") &&
                   !sg_luasrc_token_is(s, prev, ".") && !sg_luasrc_token_is(s, prev, ":")) {
            if (add_entry(x, &cap, SG_LUASRC_KEY, k->at, k->off, k->len) != 0) return -1;
        }
    }
    return 0;
}

int sg_luasrc_index(sg_luasrc *x, const char *src, size_t len)
{
    memset(x, 0, sizeof *x);
    x->src = src;
    x->len = len;
    size_t nl = 1;
    for (size_t i = 0; i < len; i++)
        if (src[i] == '\n') nl++;
    x->line_starts = malloc(nl * sizeof *x->line_starts);
    if (!x->line_starts) goto fail;
    x->line_starts[x->nlines++] = 0;
    for (size_t i = 0; i < len; i++)
        if (src[i] == '\n') x->line_starts[x->nlines++] = i + 1;
    sg_luasrc_token *t = NULL;
    size_t n = sg_luasrc_tokens(src, 0, len, 1, &t);
    int rc = t || len == 0 ? index_tokens(x, t, n) : -1;
    free(t);
    if (rc != 0) goto fail;
    x->nbuckets = 64;
    while (x->nbuckets < x->n * 2)
        x->nbuckets *= 2;
    x->buckets = malloc(x->nbuckets * sizeof *x->buckets);
    if (!x->buckets) goto fail;
    for (size_t b = 0; b < x->nbuckets; b++)
        x->buckets[b] = -1;
    /* Insert backwards at the head so each chain is in source order. */
    for (size_t k = x->n; k-- > 0;) {
        size_t b = sg_fnv1a(src + x->e[k].text, x->e[k].len) & (x->nbuckets - 1);
        x->e[k].next = x->buckets[b];
        x->buckets[b] = (long)k;
    }
    return 0;
fail:
    sg_luasrc_free(x);
    return -1;
}

void sg_luasrc_free(sg_luasrc *x)
{
    free(x->e);
    free(x->buckets);
    free(x->line_starts);
    memset(x, 0, sizeof *x);
}

size_t sg_luasrc_find(const sg_luasrc *x, sg_luasrc_entry_kind kind, const char *text, size_t len,
                      size_t from)
{
    if (!x->buckets || from == SG_LUASRC_NONE) return SG_LUASRC_NONE;
    for (long k = x->buckets[sg_fnv1a(text, len) & (x->nbuckets - 1)]; k >= 0; k = x->e[k].next) {
        const struct sg_luasrc_entry *e = &x->e[k];
        if (e->kind == kind && e->off >= from && e->len == len &&
            memcmp(x->src + e->text, text, len) == 0)
            return e->off;
    }
    return SG_LUASRC_NONE;
}

int sg_luasrc_line(const sg_luasrc *x, size_t off)
{
    if (off == SG_LUASRC_NONE || x->nlines == 0) return 0;
    size_t lo = 0, hi = x->nlines;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (x->line_starts[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    return (int)lo + 1;
}
