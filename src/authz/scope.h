/* scope.h -- the scope algebra: pure C, no I/O.
 *
 * A policy's scopes are interned into a universe (names <-> small integer
 * ids) together with the `implies` hierarchy. Requirements are small trees:
 * a scope, all_of, any_of (nestable), public, authenticated, or deny. The
 * algebra answers two questions, both without allocating:
 *   - is a requirement satisfied by what a token was granted?
 *   - which scopes should the caller add (the cheapest satisfying set) so
 *     that a step-up challenge can name them?
 * Scope sets are fixed-size bitsets, so a policy has at most SG_MAX_SCOPES
 * distinct scopes.
 *
 * The folder src/authz/ holds only this algebra: it knows nothing of
 * tokens, policies or HTTP, which is why it can be checked exhaustively
 * against a reference model (tests/spec/authz/scope_spec.lua).
 */
#ifndef SG_SCOPE_H
#define SG_SCOPE_H

#include <stddef.h>
#include <stdint.h>

#include "base/sg.h"

#define SG_MAX_SCOPES    1024
#define SG_MAX_SCOPE_LEN 256

typedef struct sg_scopeset {
    uint64_t w[SG_MAX_SCOPES / 64];
} sg_scopeset;

static inline void sg_scopeset_clear(sg_scopeset *s)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(s->w); i++)
        s->w[i] = 0;
}
static inline void sg_scopeset_add(sg_scopeset *s, int id)
{
    s->w[id >> 6] |= (uint64_t)1 << (id & 63);
}
static inline int sg_scopeset_has(const sg_scopeset *s, int id)
{
    return (int)((s->w[id >> 6] >> (id & 63)) & 1);
}
static inline void sg_scopeset_union(sg_scopeset *dst, const sg_scopeset *src)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(dst->w); i++)
        dst->w[i] |= src->w[i];
}

/* RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), and at
 * most SG_MAX_SCOPE_LEN bytes here. Returns 1 when valid. Can't fail. */
int sg_scope_token_valid(const char *s, size_t len);

/* ---- the universe ---------------------------------------------------------- */

typedef struct sg_universe sg_universe;

/* Returns a new empty universe, or NULL when out of memory. */
sg_universe *sg_universe_new(void);
void sg_universe_free(sg_universe *u);

/* Interns a scope and returns its id (an existing id when already known).
 * Errors: SG_SCOPE_EINVAL (not a valid scope token), SG_SCOPE_EFULL (more
 * than SG_MAX_SCOPES), SG_SCOPE_ENOMEM, SG_SCOPE_ESEALED (after seal). */
enum { SG_SCOPE_EINVAL = -1, SG_SCOPE_EFULL = -2, SG_SCOPE_ENOMEM = -3, SG_SCOPE_ESEALED = -4 };
int sg_universe_add(sg_universe *u, const char *name, size_t len);
/* Returns the id of a known scope, or -1. Can't fail otherwise. */
int sg_universe_find(const sg_universe *u, const char *name, size_t len);
/* The NUL-terminated name of an id, owned by the universe. */
const char *sg_universe_name(const sg_universe *u, int id);
int sg_universe_size(const sg_universe *u);
/* Records that holding `from` also grants `to` (transitively, after seal).
 * Returns 0, or SG_SCOPE_ESEALED. */
int sg_universe_imply(sg_universe *u, int from, int to);
/* Computes the transitive closure of `implies` and the canonical (bytewise
 * sorted) order used when formatting sets. After sealing the universe is
 * read-only and safe to share between threads. Returns 0 or SG_SCOPE_ENOMEM. */
int sg_universe_seal(sg_universe *u);
/* out = granted plus everything it implies. The universe must be sealed. */
void sg_universe_effective(const sg_universe *u, const sg_scopeset *granted, sg_scopeset *out);
/* Appends the set's names separated by single spaces, in canonical order.
 * Can't fail (allocation failure is recorded in the buffer). */
void sg_universe_format(const sg_universe *u, const sg_scopeset *s, sg_buf *out);

/* ---- requirements ---------------------------------------------------------- */

typedef enum sg_req_kind {
    SG_REQ_PUBLIC,        /* no token needed */
    SG_REQ_AUTHENTICATED, /* any valid token, whatever its scopes */
    SG_REQ_DENY,          /* never; `why` may say why */
    SG_REQ_SCOPE,         /* one scope */
    SG_REQ_ALL,           /* every child */
    SG_REQ_ANY            /* at least one child */
} sg_req_kind;

typedef struct sg_req {
    sg_req_kind kind;
    int scope; /* SG_REQ_SCOPE: id in the universe */
    int nkids; /* SG_REQ_ALL / SG_REQ_ANY */
    const struct sg_req **kids;
    const char *why; /* optional explanation, owned by whoever built the node */
} sg_req;

/* Builders: allocate nodes in an arena (the policy's for static rules, the
 * request's for rules computed per call). NULL when the arena is out of
 * memory. Children are filled in by the caller after sg_req_group. */
sg_req *sg_req_leaf(sg_arena *a, sg_req_kind kind, int scope);
sg_req *sg_req_group(sg_arena *a, sg_req_kind kind, int nkids);

/* Shared constant nodes (never freed). */
extern const sg_req sg_req_public, sg_req_authenticated, sg_req_deny;

/* 1 when `effective` (already closed under implication) satisfies r and a
 * token is present; PUBLIC is satisfied with or without a token. Pass
 * has_token = 0 and an empty set for an anonymous caller. Can't fail. */
int sg_req_satisfied(const sg_req *r, int has_token, const sg_scopeset *effective);

/* 1 when r can be satisfied by some token at all (it is not a deny on every
 * path). Can't fail. */
int sg_req_satisfiable(const sg_req *r);

/* The cheapest satisfying step-up: fills `add` with the fewest scopes named
 * in r that, added to `effective` (with their implications), satisfy r; ties
 * go to the scopes named earliest in r (depth-first order). Exact for up to
 * SG_STEPUP_EXACT_MAX candidate scopes, greedy-then-minimal beyond.
 * Returns 0, or -1 when no set of scopes satisfies r (a deny). */
#define SG_STEPUP_EXACT_MAX 14
int sg_req_stepup(const sg_universe *u, const sg_req *r, const sg_scopeset *effective,
                  sg_scopeset *add);

/* Appends a human-readable, deterministic description of r, e.g.
 * "At least one of: a b is required." Can't fail. */
void sg_req_describe(const sg_universe *u, const sg_req *r, sg_buf *out);
/* The same, simplified (nested groups flattened, repeats and absorbed terms
 * dropped: "a and (a and b)" reads "All of: a b are required."), and, when
 * `held` is not NULL, naming only what a caller holding `held` (effective
 * scopes, closed under implication, with a token) still lacks. r's `why`
 * is kept. sg_req_describe is this with held = NULL. Can't fail. */
void sg_req_describe_missing(const sg_universe *u, const sg_req *r, const sg_scopeset *held,
                             sg_buf *out);

/* Appends r in the policy's own notation ("a", {any_of = {...}}) for logs
 * and `scopegate explain`. Can't fail. */
void sg_req_to_lua(const sg_universe *u, const sg_req *r, sg_buf *out);

#endif
