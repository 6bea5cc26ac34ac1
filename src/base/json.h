/* json.h -- a strict, linear pre-scan of raw JSON bytes.
 *
 * cJSON 1.7.15 is lenient in ways that matter to an authorization gateway:
 * it keeps duplicate keys (and looks up the first, while many upstream
 * parsers keep the last), truncates strings at \u0000, does not validate
 * UTF-8, accepts trailing junk and loses digits of large numbers. Running
 * this scan over the body first guarantees that what cJSON builds is exactly
 * what any conforming upstream parser would see, so a policy decides on the
 * same message the upstream executes. The scan also records the byte span of
 * each message's "id" value so that ids can be echoed byte for byte. */
#ifndef SG_JSON_H
#define SG_JSON_H

#include <stddef.h>

#include "base/sg.h"

/* Largest nesting limit a caller may configure: well under cJSON's compiled
 * 1000 so that anything the scan accepts, cJSON accepts too. */
#define SG_JSON_MAX_DEPTH_CAP 512
/* Numbers longer than this are refused: upstream cJSON 1.7.15 copies at
 * most 63 characters of a number before strtod and so misreads longer ones
 * (Debian's patched build does not, but we do not rely on a distribution
 * patch). No JSON-RPC id or sane argument needs more. */
#define SG_JSON_MAX_NUMBER_LEN 63
/* Longest key quoted in a duplicate-key error message. */
#define SG_JSON_MAX_KEY_IN_MESSAGE 64

typedef struct sg_json_limits {
    unsigned max_depth;      /* 1..SG_JSON_MAX_DEPTH_CAP; {} at top is depth 1 */
    size_t max_top_elements; /* elements of a top-level array; 0 = no limit */
} sg_json_limits;

/* Which rule a body broke. SYNTAX covers everything a JSON parser must
 * reject (grammar, UTF-8, escapes, surrogates); the others are well-formed
 * JSON that we refuse on purpose. */
typedef enum sg_json_errkind {
    SG_JSON_OK = 0,
    SG_JSON_ERR_SYNTAX,
    SG_JSON_ERR_DEPTH,
    SG_JSON_ERR_DUPLICATE_KEY,
    SG_JSON_ERR_NUL_ESCAPE,
    SG_JSON_ERR_TOO_MANY_ELEMENTS,
    SG_JSON_ERR_NUMBER_TOO_LONG,
    SG_JSON_ERR_NOMEM,
} sg_json_errkind;

typedef struct sg_json_error {
    sg_json_errkind kind;
    size_t offset;     /* byte offset of the offending byte (0-based) */
    char message[192]; /* complete sentence without the JSON-RPC prefix */
} sg_json_error;

/* A byte span in the scanned text. len == 0 means "absent" (no JSON value is
 * empty). */
typedef struct sg_json_span {
    size_t off;
    size_t len;
} sg_json_span;

/* The result of a successful scan. Owned by the caller: release with
 * sg_json_scan_free. */
typedef struct sg_json_scan {
    int top_is_array;       /* the top-level value is an array */
    int top_is_object;      /* the top-level value is an object */
    size_t nmessages;       /* elements of a top-level array, else 1 */
    sg_json_span *id_spans; /* nmessages entries: span of the "id" member's
                               value of each message-level object */
} sg_json_scan;

/* Scans len bytes of p (need not be NUL-terminated). lim may be NULL for
 * the defaults (depth 64, no element limit). On success returns 0 and fills
 * *out. On failure returns -1, fills *err (kind, offset, message) and leaves
 * *out empty (safe to pass to sg_json_scan_free). Never reads past p+len. */
int sg_json_prescan(const char *p, size_t len, const sg_json_limits *lim, sg_json_scan *out,
                    sg_json_error *err);

/* Frees what sg_json_prescan allocated; the struct is left empty. Can't fail. */
void sg_json_scan_free(sg_json_scan *s);

/* What one JSON-RPC response says (for the audit log's upstream outcome). */
typedef enum sg_json_outcome {
    SG_JSON_OUTCOME_OK,         /* a result that is not a tool error */
    SG_JSON_OUTCOME_ERROR,      /* an "error" member: a JSON-RPC error */
    SG_JSON_OUTCOME_TOOL_ERROR, /* "result": {"isError": true, ...} */
    SG_JSON_OUTCOME_COUNT
} sg_json_outcome;

/* One element of a JSON-RPC answer as sg_json_read_answer reads it. */
typedef struct sg_json_answer {
    sg_json_span id;       /* the raw text of its "id" member's value; len 0: none */
    unsigned char outcome; /* an sg_json_outcome (OK for an element that is no object) */
} sg_json_answer;

/* Reads p[0..len), a JSON-RPC answer (one message object, or an array of
 * them), in one pass and without building anything: for each message, the
 * raw text of its id and its outcome, into out[0..max). Its use is the
 * audit log, which labels every forwarded answer, so it is cheap: it checks
 * the JSON grammar (strings, brackets, separators, what follows the top
 * value) but not what only the strict pre-scan checks (UTF-8, the exact
 * syntax of numbers and literals, duplicates of the members it does not
 * read). Returns the number of elements, or -1 when it cannot read the text
 * plainly: a grammar error, a scalar at the top, more than max elements or
 * SG_JSON_MAX_DEPTH_CAP levels, or one of the members it reads ("id",
 * "error", "result" of a message, "isError" of a result object) given twice
 * or possibly written with escapes. The caller then decides with the strict
 * parse. Can't fail otherwise; never reads past p+len. */
long sg_json_read_answer(const char *p, size_t len, sg_json_answer *out, size_t max);

/* Returns 1 when p[0..len) is exactly one JSON scalar usable as a JSON-RPC
 * id (a string, an integer without fraction or exponent, or null) and
 * nothing else, 0 otherwise. Can't fail. */
int sg_json_is_id_literal(const char *p, size_t len);

/* Appends s[0..len) to out as a quoted JSON string. Control characters and
 * quotes are escaped; invalid UTF-8 sequences become U+FFFD so the output is
 * always valid JSON. Allocation failure is recorded in out (sg_buf_ok). */
void sg_json_append_string(sg_buf *out, const char *s, size_t len);

/* ---- cJSON's memory (jsonmem.c) ---------------------------------------------
 * Installs scopegate's allocation hooks in cJSON, once per process; call it
 * before any other thread uses cJSON (main does). Until it is called, the
 * two functions below change nothing. Can't fail. */
void sg_json_memory_init(void);

/* Until sg_json_arena_end, the calling thread's cJSON allocations come from
 * a, and its cJSON frees do nothing: wrap exactly one cJSON_Parse* call in
 * the pair. Returns 1 when the tree will be in a (never cJSON_Delete it,
 * never add to it; it goes with the arena's next reset), 0 when the hooks
 * are not installed (or a is NULL) and the tree is on the heap as usual. */
int sg_json_arena_begin(sg_arena *a);
void sg_json_arena_end(void);

#endif
