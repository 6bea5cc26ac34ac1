/* compile.c -- compiles requirements into sg_req trees (see policy_impl.h).
 *
 * One compiler for both moments a requirement is written: at load, for
 * every static rule (findings name file, line and key, and new scopes
 * enter the universe), and per request, for what a function rule returned
 * (no warnings, no new scopes, a cap on nodes, the first error wins: the
 * policy is only read). The loader is not involved per request: a
 * req_compiler says which of the two it is. Sharing it keeps the two from drifting: a requirement a
 * function returns means exactly what the same table written statically means. */
#include "policy/policy_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

void policy_finding(loader *ld, int is_error, int line, const char *where, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *path = ld->p->path;
    char loc[64];
    snprintf(loc, sizeof loc, "%d", line > 0 ? line : 1);
    if (is_error) {
        sg_buf_printf(&ld->errors, "%s:%s: %s%s%s\n", path, loc, where, *where ? ": " : "", msg);
        ld->nerrors++;
    }
    sg_buf_printf(&ld->report, "%s:%s: %s: %s%s%s\n", path, loc, is_error ? "error" : "warning",
                  where, *where ? ": " : "", msg);
}

int policy_line_near(loader *ld, int kind, const char *text, size_t len, size_t from)
{
    size_t off = sg_luasrc_find(&ld->idx, kind, text, len, from);
    return sg_luasrc_line(&ld->idx, off != SG_LUASRC_NONE ? off : from);
}

const char *policy_arena_copy(loader *ld, sg_arena *a, const char *s, size_t len)
{
    char *c = sg_arena_strndup(a, s, len);
    if (!c) luaL_error(ld->L, "out of memory");
    return c;
}

/* Quotes s for a message, cut to a sane length. */
const char *policy_quoted(char *buf, size_t size, const char *s, size_t len)
{
    size_t max = size - 8;
    snprintf(buf, size, "\"%.*s%s\"", (int)(len > max ? max : len), s, len > max ? "..." : "");
    return buf;
}

/* The requirement words of docs/policy.md, which no scope may be named
 * after: a rule naming one means the requirement, never the scope. Returns
 * what the word means, or NULL when s is not reserved. */
const char *policy_reserved_meaning(const char *s, size_t len)
{
    static const struct {
        const char *word, *meaning;
    } reserved[] = {
        {"public", "the requirement for no token at all"},
        {"authenticated", "the requirement for any valid token"},
        {"deny", "the requirement that always refuses"},
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(reserved); i++)
        if (strlen(reserved[i].word) == len && memcmp(reserved[i].word, s, len) == 0)
            return reserved[i].meaning;
    return NULL;
}

/* ---- the compiler ------------------------------------------------------------- */

/* One requirement being compiled. At load (ld set) findings carry file and
 * line, warnings are kept and new scopes enter the universe; per request,
 * for what a function rule returned (ld NULL), no scope is added, the parts
 * are capped and only the first error is kept, in error. */
typedef struct req_compiler {
    const sg_policy *p; /* read only: at load, new scopes go to p->u */
    lua_State *L;
    sg_arena *arena; /* where the tree is built */
    loader *ld;      /* at load; NULL per request */
    int nodes;       /* per request: parts compiled so far */
    sg_buf error;    /* per request: the first error */
} req_compiler;

static void report(req_compiler *c, int is_error, int line, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* A finding: the loader's, or the first error of a request. */
static void report(req_compiler *c, int is_error, int line, const char *where, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->ld)
        policy_finding(c->ld, is_error, line, where, "%s", msg);
    else if (is_error && c->error.len == 0)
        sg_buf_printf(&c->error, "%s%s%s", where, *where ? ": " : "", msg);
}

/* Lines exist only at load (per request there is no source index). */
static int line_near(req_compiler *c, int kind, const char *text, size_t len, size_t from)
{
    return c->ld ? policy_line_near(c->ld, kind, text, len, from) : 0;
}

static int src_line(req_compiler *c, size_t from)
{
    return c->ld ? sg_luasrc_line(&c->ld->idx, from) : 0;
}

static const char *copy(req_compiler *c, const char *s, size_t len)
{
    char *d = sg_arena_strndup(c->arena, s, len);
    if (!d) luaL_error(c->L, "out of memory");
    return d;
}

static const sg_req *compile_req(req_compiler *c, int idx, const char *where, size_t from,
                                 int depth, int top, int *is_function);

/* Reports a reserved word used where a scope name belongs. Returns 1 when
 * s was reserved (and reported), else 0. */
static int refuse_reserved(req_compiler *c, int line, const char *where, const char *s, size_t len)
{
    const char *meaning = policy_reserved_meaning(s, len);
    if (!meaning) return 0;
    char q[160];
    report(c, 1, line, where, "%s is a reserved word (%s), not a scope name",
           policy_quoted(q, sizeof q, s, len), meaning);
    return 1;
}

/* A scope named in a requirement, advertise or implies. Returns its id or
 * -1 after reporting. */
static int scope_ref(req_compiler *c, const char *s, size_t len, const char *where, size_t from,
                     const char *context)
{
    char q[160];
    if (!sg_scope_token_valid(s, len)) {
        report(c, 1, line_near(c, SG_LUASRC_LITERAL, s, len, from), where,
               "invalid scope %s%s (scope tokens are 1-%d printable ASCII characters without "
               "spaces, double quotes or backslashes)",
               policy_quoted(q, sizeof q, s, len), context, SG_MAX_SCOPE_LEN);
        return -1;
    }
    if (refuse_reserved(c, line_near(c, SG_LUASRC_LITERAL, s, len, from), where, s, len)) return -1;
    int id = sg_universe_find(c->p->u, s, len);
    if (!c->ld) {
        if (id < 0)
            report(c, 1, 0, where, "scope %s is not declared by this policy (list it in `scopes`)",
                   policy_quoted(q, sizeof q, s, len));
        return id;
    }
    if (id < 0) id = sg_universe_add(c->p->u, s, len);
    if (id == SG_SCOPE_EFULL) {
        report(c, 1, line_near(c, SG_LUASRC_LITERAL, s, len, from), where,
               "too many distinct scopes (at most %d)", SG_MAX_SCOPES);
        return -1;
    }
    if (id < 0) luaL_error(c->L, "out of memory");
    if (!sg_scopeset_has(&c->p->declared, id))
        report(c, 0, line_near(c, SG_LUASRC_LITERAL, s, len, from), where,
               "scope %s is not declared in `scopes`%s", policy_quoted(q, sizeof q, s, len),
               context);
    return id;
}

/* {all_of = {...}} / {any_of = {...}}: compiles the list at idx. */
static const sg_req *compile_list(req_compiler *c, int idx, const char *listname, sg_req_kind kind,
                                  const char *where, size_t from, int depth)
{
    lua_State *L = c->L;
    /* Lines are looked up only when reporting: the index walk is not free. */
#define LIST_LINE line_near(c, SG_LUASRC_KEY, listname, strlen(listname), from)
    if (lua_type(L, idx) != LUA_TTABLE) {
        report(c, 1, LIST_LINE, where, "%s must be a list of requirements, got %s", listname,
               luaL_typename(L, idx));
        return NULL;
    }
    lua_Unsigned n = lua_rawlen(L, idx);
    if (n == 0) {
        report(c, 1, LIST_LINE, where, "%s is empty (an empty list would mean %s)", listname,
               kind == SG_REQ_ALL ? "no requirement at all" : "never");
        return NULL;
    }
    if (n > MAX_REQ_LIST) {
        report(c, 1, LIST_LINE, where, "%s has more than %d entries", listname, MAX_REQ_LIST);
        return NULL;
    }
    /* Every key must be 1..n: a stray key is a typo, not a comment. */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int ok = lua_type(L, -2) == LUA_TNUMBER && lua_isinteger(L, -2) &&
                 lua_tointeger(L, -2) >= 1 && (lua_Unsigned)lua_tointeger(L, -2) <= n;
        if (!ok) {
            char key[80] = "a non-integer key";
            if (lua_type(L, -2) == LUA_TSTRING)
                snprintf(key, sizeof key, "key \"%.60s\"", lua_tostring(L, -2));
            report(c, 1, LIST_LINE, where, "%s must be a plain list, found %s", listname, key);
            lua_pop(L, 2);
            return NULL;
        }
        lua_pop(L, 1);
    }
    sg_req *g = sg_req_group(c->arena, kind, (int)n);
    if (!g) luaL_error(L, "out of memory");
    int ok = 1;
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        int fn = 0;
        const sg_req *kid = compile_req(c, lua_gettop(L), where, from, depth + 1, 0, &fn);
        lua_pop(L, 1);
        if (!kid) {
            ok = 0;
            if (!c->ld) return NULL;
            continue;
        }
        g->kids[i - 1] = kid;
    }
    return ok ? g : NULL;
}
#undef LIST_LINE

static const char *const req_table_keys = "all_of, any_of or deny";

/* {deny = "reason"} or {deny = true} at idx; why_text is the table's
 * `why`, used when deny gives no reason. Returns NULL after reporting. */
static const sg_req *compile_deny(req_compiler *c, int idx, const char *where, size_t from,
                                  const char *why_text)
{
    lua_State *L = c->L;
    lua_pushliteral(L, "deny");
    lua_rawget(L, idx);
    size_t len = 0;
    const char *reason = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        reason = lua_tolstring(L, -1, &len);
    } else if (!(lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1))) {
        report(c, 1, line_near(c, SG_LUASRC_KEY, "deny", 4, from), where,
               "deny takes a reason string (or true), got %s", luaL_typename(L, -1));
        lua_pop(L, 1);
        return NULL;
    }
    if (reason && len > MAX_WHY_LEN) {
        report(c, 1, line_near(c, SG_LUASRC_KEY, "deny", 4, from), where,
               "deny reason is longer than %d bytes", MAX_WHY_LEN);
        lua_pop(L, 1);
        return NULL;
    }
    sg_req *d = sg_req_leaf(c->arena, SG_REQ_DENY, -1);
    if (!d) luaL_error(L, "out of memory");
    d->why = reason ? copy(c, reason, len) : why_text;
    lua_pop(L, 1);
    return d;
}

static const sg_req *compile_table(req_compiler *c, int idx, const char *where, size_t from,
                                   int depth)
{
    lua_State *L = c->L;
    int all = 0, any = 0, deny = 0, why = 0, ok = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            report(c, 1, src_line(c, from), where,
                   "requirement tables take keys %s (found a %s key; did you mean "
                   "{ any_of = {...} }?)",
                   req_table_keys, luaL_typename(L, -1));
            ok = 0;
            continue;
        }
        size_t klen;
        const char *k = lua_tolstring(L, -1, &klen);
        if (strcmp(k, "all_of") == 0)
            all = 1;
        else if (strcmp(k, "any_of") == 0)
            any = 1;
        else if (strcmp(k, "deny") == 0)
            deny = 1;
        else if (strcmp(k, "why") == 0)
            why = 1;
        else if (strcmp(k, "audit") == 0 && depth == 0 && c->ld)
            continue; /* the rule's audit list (load_audit), not part of the requirement */
        else {
            char q[160];
            report(c, 1, line_near(c, SG_LUASRC_KEY, k, klen, from), where,
                   "unknown key %s in requirement (expected %s)",
                   policy_quoted(q, sizeof q, k, klen), req_table_keys);
            ok = 0;
        }
    }
    if (!ok) return NULL;
    if (all + any + deny != 1) {
        report(c, 1, src_line(c, from), where,
               all + any + deny == 0 ? "requirement table needs one of %s"
                                     : "requirement table must use only one of %s (nest the "
                                       "others inside it)",
               req_table_keys);
        return NULL;
    }
    const char *why_text = NULL;
    if (why) {
        lua_pushliteral(L, "why");
        lua_rawget(L, idx);
        size_t len;
        const char *w = lua_tolstring(L, -1, &len);
        if (lua_type(L, -1) != LUA_TSTRING || len > MAX_WHY_LEN) {
            report(c, 1, line_near(c, SG_LUASRC_KEY, "why", 3, from), where,
                   "why must be a string of at most %d bytes", MAX_WHY_LEN);
            lua_pop(L, 1);
            return NULL;
        }
        why_text = copy(c, w, len);
        lua_pop(L, 1);
    }
    if (deny) return compile_deny(c, idx, where, from, why_text);
    const sg_req *r;
    const char *listname = all ? "all_of" : "any_of";
    lua_pushstring(L, listname);
    lua_rawget(L, idx);
    r = compile_list(c, lua_gettop(L), listname, all ? SG_REQ_ALL : SG_REQ_ANY, where, from, depth);
    lua_pop(L, 1);
    if (r && why_text) ((sg_req *)r)->why = why_text;
    return r;
}

/* Compiles the requirement at stack index idx. top: the value is a whole
 * rule (a function is allowed; *is_function is set and NULL returned).
 * Returns NULL after reporting an error. */
static const sg_req *compile_req(req_compiler *c, int idx, const char *where, size_t from,
                                 int depth, int top, int *is_function)
{
    lua_State *L = c->L;
    *is_function = 0;
    if (depth > MAX_REQ_DEPTH) {
        report(c, 1, src_line(c, from), where, "requirement nested deeper than %d", MAX_REQ_DEPTH);
        return NULL;
    }
    if (!c->ld && ++c->nodes > MAX_RUNTIME_NODES) {
        report(c, 1, 0, where, "requirement has more than %d parts", MAX_RUNTIME_NODES);
        return NULL;
    }
    luaL_checkstack(L, 8, "requirement too deep");
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strcmp(s, "public") == 0 && len == 6) return &sg_req_public;
        if (strcmp(s, "authenticated") == 0 && len == 13) return &sg_req_authenticated;
        if (strcmp(s, "deny") == 0 && len == 4) return &sg_req_deny;
        int id = scope_ref(c, s, len, where, from, "");
        if (id < 0) return NULL;
        sg_req *r = sg_req_leaf(c->arena, SG_REQ_SCOPE, id);
        if (!r) luaL_error(L, "out of memory");
        return r;
    }
    case LUA_TBOOLEAN:
        if (!lua_toboolean(L, idx)) return &sg_req_deny;
        report(c, 1, src_line(c, from), where,
               "true is not a requirement (say \"public\" or \"authenticated\")");
        return NULL;
    case LUA_TTABLE:
        return compile_table(c, lua_absindex(L, idx), where, from, depth);
    case LUA_TFUNCTION:
        if (top && c->ld) {
            *is_function = 1;
            return NULL;
        }
        report(c, 1, src_line(c, from), where,
               !c->ld ? "a rule function must return a requirement, not a function"
                      : "functions are only allowed as a whole rule, not inside "
                        "all_of/any_of");
        return NULL;
    case LUA_TNIL:
        if (!c->ld) {
            report(c, 1, 0, where,
                   "rule returned nil (expected a requirement: a scope, \"public\", "
                   "\"authenticated\", false or a table with %s)",
                   req_table_keys);
            return NULL;
        }
        /* fallthrough */
    default:
        report(c, 1, src_line(c, from), where,
               "expected a requirement (a scope string, \"public\", \"authenticated\", false or "
               "a table with %s), got %s",
               req_table_keys, luaL_typename(L, idx));
        return NULL;
    }
}

/* ---- entry points --------------------------------------------------------------- */

static req_compiler at_load(loader *ld)
{
    return (req_compiler){.p = ld->p, .L = ld->L, .arena = ld->arena, .ld = ld};
}

int policy_refuse_reserved(loader *ld, int line, const char *where, const char *s, size_t len)
{
    req_compiler c = at_load(ld);
    return refuse_reserved(&c, line, where, s, len);
}

int policy_scope_ref(loader *ld, const char *s, size_t len, const char *where, size_t from,
                     const char *context)
{
    req_compiler c = at_load(ld);
    return scope_ref(&c, s, len, where, from, context);
}

const sg_req *policy_compile_rule(loader *ld, int idx, const char *where, size_t from,
                                  int *is_function)
{
    req_compiler c = at_load(ld);
    return compile_req(&c, idx, where, from, 0, 1, is_function);
}

const sg_req *policy_compile_returned(const sg_policy *p, lua_State *L, sg_arena *a, int idx,
                                      sg_buf *error)
{
    req_compiler c = {.p = p, .L = L, .arena = a};
    int is_function;
    const sg_req *r = compile_req(&c, idx, "", SG_LUASRC_NONE, 0, 1, &is_function);
    if (!r) {
        sg_buf_append(error, c.error.data ? c.error.data : "out of memory",
                      c.error.data ? c.error.len : 13);
    }
    sg_buf_free(&c.error);
    return r;
}
