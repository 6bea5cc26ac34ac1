/* luasrc.h -- where things are written in Lua source text.
 *
 * Lua reports a line only for its own errors. To point a policy author at
 * the line of a table key ("tools.tag_entry: unknown key ..."), a config
 * setting, a policy test case or a string constant inside a function rule,
 * scopegate reads the source text itself. This is the one reader for all of
 * them: a tokenizer that knows Lua's comments, short and long strings and
 * long brackets (so nothing inside them is mistaken for code), and an index
 * of the keys (`name =`, `["text"] =`) and string literals of a file with a
 * fast lookup by text. It never executes anything; for tables built by code
 * its answers are approximate, and callers say so. */
#ifndef SG_LUASRC_H
#define SG_LUASRC_H

#include <stddef.h>

/* "Not found" for offsets. */
#define SG_LUASRC_NONE ((size_t)-1)

typedef enum sg_luasrc_kind {
    SG_LUASRC_NAME,   /* an identifier or keyword */
    SG_LUASRC_STRING, /* a short or long string literal */
    SG_LUASRC_OTHER   /* numbers, operators and punctuation */
} sg_luasrc_kind;

typedef struct sg_luasrc_token {
    size_t at;       /* where the token starts (a string: its opening quote) */
    size_t off, len; /* its text; for a string, the text between the quotes */
    sg_luasrc_kind kind;
    int line;
} sg_luasrc_token;

/* Tokenizes src[from..to), numbering lines from first_line. Returns the
 * token count and sets *out to a malloc'd array (free it); on allocation
 * failure returns 0 with *out NULL. Comments are skipped. */
size_t sg_luasrc_tokens(const char *src, size_t from, size_t to, int first_line,
                        sg_luasrc_token **out);

/* 1 when a token (not a string) is exactly `text`. NULL is fine. */
int sg_luasrc_token_is(const char *src, const sg_luasrc_token *t, const char *text);
/* 1 when a name token is a Lua reserved word. */
int sg_luasrc_is_keyword(const char *src, const sg_luasrc_token *t);

/* ---- the index of one file ------------------------------------------------ */

typedef enum sg_luasrc_entry_kind {
    SG_LUASRC_KEY,    /* `name =` (not a field `a.name =`) or `["text"] =` */
    SG_LUASRC_LITERAL /* any string literal */
} sg_luasrc_entry_kind;

typedef struct sg_luasrc {
    const char *src; /* borrowed: must outlive the index */
    size_t len;
    struct sg_luasrc_entry *e;
    size_t n;
    long *buckets;
    size_t nbuckets;
    size_t *line_starts;
    size_t nlines;
} sg_luasrc;

/* Indexes src[0..len). Returns 0, or -1 when out of memory (x is then
 * empty, safe to free, and every lookup finds nothing). */
int sg_luasrc_index(sg_luasrc *x, const char *src, size_t len);
void sg_luasrc_free(sg_luasrc *x);
/* Offset of the first `kind` entry whose text is text[0..len) at or after
 * `from` (a key: where it starts, `[` for `["text"]`; a literal: its
 * opening quote), or SG_LUASRC_NONE. from may be SG_LUASRC_NONE (then
 * nothing is found). */
size_t sg_luasrc_find(const sg_luasrc *x, sg_luasrc_entry_kind kind, const char *text, size_t len,
                      size_t from);
/* The 1-based line of an offset; 0 for SG_LUASRC_NONE. */
int sg_luasrc_line(const sg_luasrc *x, size_t off);

#endif
