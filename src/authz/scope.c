/* scope.c -- the scope algebra (see scope.h for the contracts).
 *
 * Pure computation, no I/O, no allocation on the decision path: the hot
 * questions (satisfied? which scopes to add?) work on fixed-size bitsets
 * and on requirement trees built once per policy load or per request arena.
 *
 * The cheapest step-up set is a tiny set-cover problem. Requirement trees in
 * real policies name a handful of scopes, so we search exactly: subsets of
 * the scopes the requirement names, smallest first, and among equal sizes
 * the one whose scopes come earliest in the requirement. Only scopes that
 * the requirement itself names are ever proposed: asking for a broader scope
 * that merely implies them would violate least privilege. */
#include "authz/scope.h"

#include <stdlib.h>
#include <string.h>

int sg_scope_token_valid(const char *s, size_t len)
{
    if (len == 0 || len > SG_MAX_SCOPE_LEN) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7E || c == '"' || c == '\\') return 0;
    }
    return 1;
}

/* ---- the universe ---------------------------------------------------------- */

struct sg_universe {
    int n;
    char *names[SG_MAX_SCOPES];
    size_t lens[SG_MAX_SCOPES];
    int slots[2 * SG_MAX_SCOPES]; /* open addressing: -1 empty, else an id */
    int (*edges)[2];              /* implies: edges[i][0] grants edges[i][1] */
    int nedges, edges_cap;
    sg_scopeset *closure;     /* after seal: closure[id] = id and all it implies */
    int order[SG_MAX_SCOPES]; /* after seal: ids in bytewise name order */
    int sealed;
};

static uint32_t name_hash(const char *s, size_t len)
{
    return sg_fnv1a(s, len); /* short ASCII keys, no adversary here */
}

sg_universe *sg_universe_new(void)
{
    sg_universe *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    for (size_t i = 0; i < SG_ARRAY_LEN(u->slots); i++)
        u->slots[i] = -1;
    return u;
}

void sg_universe_free(sg_universe *u)
{
    if (!u) return;
    for (int i = 0; i < u->n; i++)
        free(u->names[i]);
    free(u->edges);
    free(u->closure);
    free(u);
}

/* Returns the slot holding name, or the empty slot where it would go. */
static int find_slot(const sg_universe *u, const char *name, size_t len)
{
    const int mask = (int)SG_ARRAY_LEN(u->slots) - 1;
    int i = (int)(name_hash(name, len) & (uint32_t)mask);
    for (;;) {
        int id = u->slots[i];
        if (id < 0) return i;
        if (u->lens[id] == len && memcmp(u->names[id], name, len) == 0) return i;
        i = (i + 1) & mask;
    }
}

int sg_universe_find(const sg_universe *u, const char *name, size_t len)
{
    if (len == 0 || len > SG_MAX_SCOPE_LEN) return -1;
    return u->slots[find_slot(u, name, len)];
}

int sg_universe_add(sg_universe *u, const char *name, size_t len)
{
    if (!sg_scope_token_valid(name, len)) return SG_SCOPE_EINVAL;
    int slot = find_slot(u, name, len);
    if (u->slots[slot] >= 0) return u->slots[slot];
    if (u->sealed) return SG_SCOPE_ESEALED;
    if (u->n == SG_MAX_SCOPES) return SG_SCOPE_EFULL;
    char *copy = malloc(len + 1);
    if (!copy) return SG_SCOPE_ENOMEM;
    memcpy(copy, name, len);
    copy[len] = '\0';
    int id = u->n++;
    u->names[id] = copy;
    u->lens[id] = len;
    u->slots[slot] = id;
    return id;
}

const char *sg_universe_name(const sg_universe *u, int id)
{
    return (id >= 0 && id < u->n) ? u->names[id] : NULL;
}

int sg_universe_size(const sg_universe *u)
{
    return u->n;
}

int sg_universe_imply(sg_universe *u, int from, int to)
{
    if (u->sealed) return SG_SCOPE_ESEALED;
    if (u->nedges == u->edges_cap) {
        int cap = u->edges_cap ? u->edges_cap * 2 : 16;
        int(*e)[2] = realloc(u->edges, (size_t)cap * sizeof *e);
        if (!e) return SG_SCOPE_ENOMEM;
        u->edges = e;
        u->edges_cap = cap;
    }
    u->edges[u->nedges][0] = from;
    u->edges[u->nedges][1] = to;
    u->nedges++;
    return 0;
}

static const sg_universe *sort_universe; /* qsort has no context argument */

static int by_name(const void *a, const void *b)
{
    const sg_universe *u = sort_universe;
    return strcmp(u->names[*(const int *)a], u->names[*(const int *)b]);
}

int sg_universe_seal(sg_universe *u)
{
    if (u->sealed) return 0;
    u->closure = calloc((size_t)(u->n ? u->n : 1), sizeof *u->closure);
    if (!u->closure) return SG_SCOPE_ENOMEM;
    for (int i = 0; i < u->n; i++)
        sg_scopeset_add(&u->closure[i], i);
    /* Fixpoint over the edges: at most n rounds, each O(edges * words). */
    for (int changed = 1; changed;) {
        changed = 0;
        for (int e = 0; e < u->nedges; e++) {
            sg_scopeset *from = &u->closure[u->edges[e][0]];
            const sg_scopeset *to = &u->closure[u->edges[e][1]];
            for (size_t w = 0; w < SG_ARRAY_LEN(from->w); w++) {
                uint64_t merged = from->w[w] | to->w[w];
                if (merged != from->w[w]) {
                    from->w[w] = merged;
                    changed = 1;
                }
            }
        }
    }
    for (int i = 0; i < u->n; i++)
        u->order[i] = i;
    sort_universe = u; /* seal runs once per load, before any thread shares u */
    qsort(u->order, (size_t)u->n, sizeof u->order[0], by_name);
    u->sealed = 1;
    return 0;
}

void sg_universe_effective(const sg_universe *u, const sg_scopeset *granted, sg_scopeset *out)
{
    sg_scopeset_clear(out);
    int words = (u->n + 63) / 64;
    for (int w = 0; w < words; w++) {
        uint64_t bits = granted->w[w];
        while (bits) {
            int id = w * 64 + __builtin_ctzll(bits);
            bits &= bits - 1;
            if (id < u->n) sg_scopeset_union(out, &u->closure[id]);
        }
    }
}

void sg_universe_format(const sg_universe *u, const sg_scopeset *s, sg_buf *out)
{
    int first = 1;
    for (int i = 0; i < u->n; i++) {
        int id = u->order[i];
        if (!sg_scopeset_has(s, id)) continue;
        if (!first) sg_buf_putc(out, ' ');
        sg_buf_append(out, u->names[id], u->lens[id]);
        first = 0;
    }
}

/* ---- requirements ---------------------------------------------------------- */

const sg_req sg_req_public = {.kind = SG_REQ_PUBLIC, .scope = -1};
const sg_req sg_req_authenticated = {.kind = SG_REQ_AUTHENTICATED, .scope = -1};
const sg_req sg_req_deny = {.kind = SG_REQ_DENY, .scope = -1};

sg_req *sg_req_leaf(sg_arena *a, sg_req_kind kind, int scope)
{
    sg_req *r = sg_arena_alloc(a, sizeof *r);
    if (!r) return NULL;
    r->kind = kind;
    r->scope = scope;
    r->nkids = 0;
    r->kids = NULL;
    r->why = NULL;
    return r;
}

sg_req *sg_req_group(sg_arena *a, sg_req_kind kind, int nkids)
{
    sg_req *r = sg_req_leaf(a, kind, -1);
    if (!r) return NULL;
    r->nkids = nkids;
    if (nkids > 0) {
        r->kids = sg_arena_alloc(a, (size_t)nkids * sizeof *r->kids);
        if (!r->kids) return NULL;
        memset((void *)r->kids, 0, (size_t)nkids * sizeof *r->kids);
    }
    return r;
}

int sg_req_satisfied(const sg_req *r, int has_token, const sg_scopeset *effective)
{
    switch (r->kind) {
    case SG_REQ_PUBLIC:
        return 1;
    case SG_REQ_AUTHENTICATED:
        return has_token;
    case SG_REQ_DENY:
        return 0;
    case SG_REQ_SCOPE:
        return has_token && sg_scopeset_has(effective, r->scope);
    case SG_REQ_ALL:
        for (int i = 0; i < r->nkids; i++)
            if (!sg_req_satisfied(r->kids[i], has_token, effective)) return 0;
        return 1;
    case SG_REQ_ANY:
        for (int i = 0; i < r->nkids; i++)
            if (sg_req_satisfied(r->kids[i], has_token, effective)) return 1;
        return 0;
    }
    return 0;
}

int sg_req_satisfiable(const sg_req *r)
{
    switch (r->kind) {
    case SG_REQ_DENY:
        return 0;
    case SG_REQ_ALL:
        for (int i = 0; i < r->nkids; i++)
            if (!sg_req_satisfiable(r->kids[i])) return 0;
        return 1;
    case SG_REQ_ANY:
        for (int i = 0; i < r->nkids; i++)
            if (sg_req_satisfiable(r->kids[i])) return 1;
        return 0;
    default:
        return 1;
    }
}

/* The scopes r names that `have` lacks, deduplicated, in depth-first order.
 * Returns the count; stops silently at max (the caller's array size). */
static int collect_missing(const sg_req *r, const sg_scopeset *have, int *out, int n, int max)
{
    if (r->kind == SG_REQ_SCOPE) {
        if (sg_scopeset_has(have, r->scope)) return n;
        for (int i = 0; i < n; i++)
            if (out[i] == r->scope) return n;
        if (n < max) out[n++] = r->scope;
        return n;
    }
    for (int i = 0; i < r->nkids; i++)
        n = collect_missing(r->kids[i], have, out, n, max);
    return n;
}

int sg_req_stepup(const sg_universe *u, const sg_req *r, const sg_scopeset *effective,
                  sg_scopeset *add)
{
    sg_scopeset_clear(add);
    if (!sg_req_satisfiable(r)) return -1;
    if (sg_req_satisfied(r, 1, effective)) return 0;

    static const int max = SG_MAX_SCOPES;
    int cand[SG_MAX_SCOPES];
    int n = collect_missing(r, effective, cand, 0, max);
    sg_scopeset trial;

    if (n <= SG_STEPUP_EXACT_MAX) {
        /* Subsets by size, each size in lexicographic order of positions. */
        int pick[SG_STEPUP_EXACT_MAX];
        for (int k = 1; k <= n; k++) {
            for (int i = 0; i < k; i++)
                pick[i] = i;
            for (;;) {
                trial = *effective;
                for (int i = 0; i < k; i++)
                    sg_scopeset_union(&trial, &u->closure[cand[pick[i]]]);
                if (sg_req_satisfied(r, 1, &trial)) {
                    for (int i = 0; i < k; i++)
                        sg_scopeset_add(add, cand[pick[i]]);
                    return 0;
                }
                int i = k - 1;
                while (i >= 0 && pick[i] == n - k + i)
                    i--;
                if (i < 0) break;
                pick[i]++;
                for (int j = i + 1; j < k; j++)
                    pick[j] = pick[j - 1] + 1;
            }
        }
        return -1; /* unreachable for a satisfiable r: all candidates satisfy it */
    }

    /* Too many candidates to search: take them all, then drop each one
     * (latest first) whose absence still satisfies r. Minimal, not minimum. */
    int keep[SG_MAX_SCOPES];
    for (int i = 0; i < n; i++)
        keep[i] = 1;
    for (int drop = n - 1; drop >= 0; drop--) {
        keep[drop] = 0;
        trial = *effective;
        for (int i = 0; i < n; i++)
            if (keep[i]) sg_scopeset_union(&trial, &u->closure[cand[i]]);
        if (!sg_req_satisfied(r, 1, &trial)) keep[drop] = 1;
    }
    for (int i = 0; i < n; i++)
        if (keep[i]) sg_scopeset_add(add, cand[i]);
    return 0;
}

/* ---- describing requirements ----------------------------------------------- */

static int all_leaves(const sg_req *r)
{
    for (int i = 0; i < r->nkids; i++)
        if (r->kids[i]->kind != SG_REQ_SCOPE) return 0;
    return 1;
}

/* Infix form for nested trees: a and (b or c). */
static void describe_expr(const sg_universe *u, const sg_req *r, int nested, sg_buf *out)
{
    switch (r->kind) {
    case SG_REQ_PUBLIC:
        sg_buf_puts(out, "public");
        return;
    case SG_REQ_AUTHENTICATED:
        sg_buf_puts(out, "any valid token");
        return;
    case SG_REQ_DENY:
        sg_buf_puts(out, "never");
        return;
    case SG_REQ_SCOPE:
        sg_buf_puts(out, sg_universe_name(u, r->scope));
        return;
    case SG_REQ_ALL:
    case SG_REQ_ANY:
        break;
    }
    if (r->nkids == 1) {
        describe_expr(u, r->kids[0], nested, out);
        return;
    }
    if (nested) sg_buf_putc(out, '(');
    for (int i = 0; i < r->nkids; i++) {
        if (i) sg_buf_puts(out, r->kind == SG_REQ_ALL ? " and " : " or ");
        describe_expr(u, r->kids[i], 1, out);
    }
    if (nested) sg_buf_putc(out, ')');
}

/* Structural equality of two requirement trees (kids in order). */
static int req_equal(const sg_req *x, const sg_req *y)
{
    if (x == y) return 1;
    if (x->kind != y->kind) return 0;
    if (x->kind == SG_REQ_SCOPE) return x->scope == y->scope;
    if (x->kind != SG_REQ_ALL && x->kind != SG_REQ_ANY) return 1;
    if (x->nkids != y->nkids) return 0;
    for (int i = 0; i < x->nkids; i++)
        if (!req_equal(x->kids[i], y->kids[i])) return 0;
    return 1;
}

/* 1 when some kid of group g equals r. */
static int has_kid(const sg_req *g, const sg_req *r)
{
    for (int i = 0; i < g->nkids; i++)
        if (req_equal(g->kids[i], r)) return 1;
    return 0;
}

/* An equivalent, shorter tree for describing r, built in arena a: nested
 * groups of the same kind are flattened, repeats dropped, absorbed terms
 * dropped (a and (a or b) = a; a or (a and b) = a), public dropped from
 * all_of and deny from any_of. With `held` (a caller's effective scopes,
 * a token being present), what the caller already satisfies is dropped
 * too, so the result names only what is missing; a satisfied tree becomes
 * public. Returns NULL when the arena is out of memory. */
static const sg_req *simplify(sg_arena *a, const sg_req *r, const sg_scopeset *held, int depth)
{
    switch (r->kind) {
    case SG_REQ_SCOPE:
        return held && sg_scopeset_has(held, r->scope) ? &sg_req_public : r;
    case SG_REQ_AUTHENTICATED:
        return held ? &sg_req_public : r;
    case SG_REQ_PUBLIC:
    case SG_REQ_DENY:
        return r;
    case SG_REQ_ALL:
    case SG_REQ_ANY:
        break;
    }
    int all = r->kind == SG_REQ_ALL;
    /* The unit of the group (dropped) and its zero (the whole answer). */
    sg_req_kind unit = all ? SG_REQ_PUBLIC : SG_REQ_DENY, zero = all ? SG_REQ_DENY : SG_REQ_PUBLIC;
    const sg_req **simple = sg_arena_alloc(a, (size_t)r->nkids * sizeof *simple);
    if (!simple) return NULL;
    size_t total = 0;
    for (int i = 0; i < r->nkids; i++) {
        const sg_req *k = depth < 64 ? simplify(a, r->kids[i], held, depth + 1) : r->kids[i];
        if (!k) return NULL;
        if (k->kind == zero) return k;
        simple[i] = k;
        total += k->kind == r->kind ? (size_t)k->nkids : 1;
    }
    const sg_req **kids = sg_arena_alloc(a, (total ? total : 1) * sizeof *kids);
    if (!kids) return NULL;
    int n = 0;
    /* Flatten one level of simplified kids (they are flat themselves). */
    for (int i = 0; i < r->nkids; i++) {
        const sg_req *k = simple[i];
        int nsub = k->kind == r->kind ? k->nkids : 1;
        for (int j = 0; j < nsub; j++) {
            const sg_req *x = k->kind == r->kind ? k->kids[j] : k;
            if (x->kind == unit) continue;
            int seen = 0;
            for (int m = 0; m < n && !seen; m++)
                seen = req_equal(kids[m], x);
            if (!seen) kids[n++] = x;
        }
    }
    /* Absorption: drop a kid of the other kind that contains a sibling. */
    int keep = 0;
    for (int i = 0; i < n; i++) {
        int absorbed = 0;
        if (kids[i]->kind == (all ? SG_REQ_ANY : SG_REQ_ALL))
            for (int m = 0; m < n && !absorbed; m++)
                absorbed = m != i && has_kid(kids[i], kids[m]);
        if (!absorbed) kids[keep++] = kids[i];
    }
    n = keep;
    if (n == 0) return all ? &sg_req_public : &sg_req_deny;
    if (n == 1) return kids[0];
    sg_req *g = sg_req_group(a, r->kind, n);
    if (!g) return NULL;
    for (int i = 0; i < n; i++)
        g->kids[i] = kids[i];
    return g;
}

static void describe_simplified(const sg_universe *u, const sg_req *r, const char *why,
                                sg_buf *out);

void sg_req_describe(const sg_universe *u, const sg_req *r, sg_buf *out)
{
    sg_req_describe_missing(u, r, NULL, out);
}

void sg_req_describe_missing(const sg_universe *u, const sg_req *r, const sg_scopeset *held,
                             sg_buf *out)
{
    sg_arena a;
    sg_arena_init(&a, 1024);
    const sg_req *s = simplify(&a, r, held, 0);
    describe_simplified(u, s ? s : r, r->why, out);
    sg_arena_free(&a);
}

static void describe_simplified(const sg_universe *u, const sg_req *r, const char *why, sg_buf *out)
{
    if (!why) why = r->why;
    while ((r->kind == SG_REQ_ALL || r->kind == SG_REQ_ANY) && r->nkids == 1)
        r = r->kids[0];
    switch (r->kind) {
    case SG_REQ_PUBLIC:
        sg_buf_puts(out, "No token is required");
        break;
    case SG_REQ_AUTHENTICATED:
        sg_buf_puts(out, "A valid access token is required");
        break;
    case SG_REQ_DENY:
        sg_buf_puts(out, "Denied by policy");
        break;
    case SG_REQ_SCOPE:
        sg_buf_puts(out, "Scope ");
        sg_buf_puts(out, sg_universe_name(u, r->scope));
        sg_buf_puts(out, " is required");
        break;
    case SG_REQ_ALL:
    case SG_REQ_ANY:
        if (all_leaves(r)) {
            sg_buf_puts(out, r->kind == SG_REQ_ANY ? "At least one of: " : "All of: ");
            for (int i = 0; i < r->nkids; i++) {
                if (i) sg_buf_putc(out, ' ');
                sg_buf_puts(out, sg_universe_name(u, r->kids[i]->scope));
            }
            sg_buf_puts(out, r->kind == SG_REQ_ANY ? " is required" : " are required");
        } else {
            sg_buf_puts(out, "Required: ");
            describe_expr(u, r, 0, out);
        }
        break;
    }
    if (!why) why = r->why;
    if (why && *why) sg_buf_printf(out, " (%s)", why);
    sg_buf_putc(out, '.');
}

static void lua_string(const char *s, sg_buf *out)
{
    sg_buf_putc(out, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            sg_buf_printf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7F)
            sg_buf_printf(out, "\\%03u", c);
        else
            sg_buf_putc(out, (char)c);
    }
    sg_buf_putc(out, '"');
}

void sg_req_to_lua(const sg_universe *u, const sg_req *r, sg_buf *out)
{
    switch (r->kind) {
    case SG_REQ_PUBLIC:
        sg_buf_puts(out, "\"public\"");
        return;
    case SG_REQ_AUTHENTICATED:
        sg_buf_puts(out, "\"authenticated\"");
        return;
    case SG_REQ_DENY:
        if (!r->why) {
            sg_buf_puts(out, "false");
            return;
        }
        sg_buf_puts(out, "{ deny = ");
        lua_string(r->why, out);
        sg_buf_puts(out, " }");
        return;
    case SG_REQ_SCOPE:
        if (!r->why) {
            lua_string(sg_universe_name(u, r->scope), out);
            return;
        }
        sg_buf_puts(out, "{ all_of = { ");
        lua_string(sg_universe_name(u, r->scope), out);
        sg_buf_puts(out, " }, why = ");
        lua_string(r->why, out);
        sg_buf_puts(out, " }");
        return;
    case SG_REQ_ALL:
    case SG_REQ_ANY:
        sg_buf_puts(out, r->kind == SG_REQ_ALL ? "{ all_of = { " : "{ any_of = { ");
        for (int i = 0; i < r->nkids; i++) {
            if (i) sg_buf_puts(out, ", ");
            sg_req_to_lua(u, r->kids[i], out);
        }
        sg_buf_puts(out, " }");
        if (r->why) {
            sg_buf_puts(out, ", why = ");
            lua_string(r->why, out);
        }
        sg_buf_puts(out, " }");
        return;
    }
}
