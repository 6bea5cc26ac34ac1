/* policy.c -- loads, compiles and runs Lua policies (see policy.h).
 *
 * The split that keeps the hot path cheap: everything a policy says
 * statically is compiled once, at load, into sg_req trees held in hash
 * tables keyed by name, so deciding a static rule is a hash lookup whatever
 * the policy's size and never touches Lua. Only rules written as functions
 * enter the Lua state per request, under the sandbox budgets, with a fresh
 * `req` table each time.
 *
 * Error messages name file, line and key. Lua knows the lines of functions;
 * for table keys we index the source text once (a rough Lua tokenizer that
 * records where each `key =`, `["key"] =` and string literal appears) and
 * look keys up below the line of their parent key. Good enough for typos,
 * and far better than no line at all. */
#include "policy/policy.h"

#include "policy/luajson.h"
#include "policy/luasrc.h"
#include "base/uri.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#define MAX_REQ_DEPTH     16
#define MAX_REQ_LIST      1024
#define MAX_RUNTIME_NODES 4096
#define MAX_NAME_LEN      1024
#define MAX_WHY_LEN       512
/* `audit = { "arguments.id", ... }` on a rule (see load_audit). */
#define MAX_AUDIT_PATHS   16
#define MAX_AUDIT_KEYS    8
#define MAX_AUDIT_KEY_LEN 64

static size_t location_prefix(const char *msg);

/* ---- rules and their tables ----------------------------------------------- */

/* One step of a compiled resource template (see compile_template). */
enum { TP_LIT, TP_ANY1, TP_SEG1, TP_ANYSTAR, TP_SEGSTAR };
typedef struct tmpl_part {
    unsigned char kind, c; /* c: the byte of a TP_LIT */
} tmpl_part;

typedef struct rule {
    const char *key; /* tool/prompt name, resource URI or pattern, method */
    size_t keylen;
    const char *name; /* "tools.delete_entry" */
    int line;
    const sg_req *req;     /* static requirement; NULL for a function rule */
    int ref;               /* registry reference of the function, or LUA_NOREF */
    size_t literal;        /* resource patterns: bytes of literal text */
    size_t unrestricted;   /* resource patterns: `*` and {+var}, which cross '/' */
    const tmpl_part *tmpl; /* resource templates ({var}): the compiled key, else NULL */
    size_t ntmpl;
    const char *const *audit; /* argument paths the audit log records, or NULL */
    int naudit;
} rule;

typedef struct rule_map {
    rule **slots;
    size_t cap, count;
} rule_map;

static rule *map_get(const rule_map *m, const char *key, size_t len)
{
    if (!m->cap) return NULL;
    size_t i = sg_fnv1a(key, len) & (m->cap - 1);
    for (rule *r; (r = m->slots[i]) != NULL; i = (i + 1) & (m->cap - 1))
        if (r->keylen == len && memcmp(r->key, key, len) == 0) return r;
    return NULL;
}

static int map_put(rule_map *m, rule *r)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        rule **slots = calloc(cap, sizeof *slots);
        if (!slots) return -1;
        for (size_t k = 0; k < m->cap; k++) {
            rule *o = m->slots[k];
            if (!o) continue;
            size_t i = sg_fnv1a(o->key, o->keylen) & (cap - 1);
            while (slots[i])
                i = (i + 1) & (cap - 1);
            slots[i] = o;
        }
        free(m->slots);
        m->slots = slots;
        m->cap = cap;
    }
    size_t i = sg_fnv1a(r->key, r->keylen) & (m->cap - 1);
    while (m->slots[i])
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = r;
    m->count++;
    return 0;
}

enum { T_TOOLS, T_PROMPTS, T_RESOURCES, T_METHODS, T_COUNT };
static const char *const table_names[T_COUNT] = {"tools", "prompts", "resources", "methods"};

struct sg_policy {
    char *path;
    sg_sandbox *sb;
    sg_universe *u;
    sg_arena arena; /* static requirements, names, strings */
    const char *realm, *resource;
    const char **auth_servers;
    int nauth_servers;
    const char **supported;
    int nsupported;
    rule_map maps[T_COUNT];
    rule **globs; /* resource patterns, best first */
    size_t nglobs, globcap;
    rule default_rule;
    int any_public;
    sg_scopeset declared; /* scopes listed in `scopes` */
    int *declared_lines;  /* by scope id (declared ones come first): line of its key */
    int ndeclared_lines;
    int advertise_line; /* 0 when `advertise` is absent */
    int nfunctions;
    rule **functions; /* every function rule, for check */
    size_t functions_cap;
    char hash[SG_POLICY_HASH_LEN + 1]; /* sg_policy_hash */
    int annotations_from_upstream;     /* tool_annotations = "upstream" */
    sg_policy_scope_use *fscopes;      /* scope constants of function rules */
    int nfscopes;
};

static const char *const builtin_methods[] = {
    "initialize",   "ping",           "server/discover",          "tools/list",
    "prompts/list", "resources/list", "resources/templates/list", "completion/complete",
};

/* ---- the loader ---------------------------------------------------------------- */

typedef struct loader {
    sg_policy *p;
    lua_State *L;
    sg_luasrc idx;
    sg_buf errors; /* "file:line: msg\n" */
    sg_buf report; /* "file:line: error|warning: msg\n" */
    int nerrors;
    /* Runtime mode compiles what a function returned: no warnings, no new
     * scopes, first error wins and lands in runtime_error. */
    int runtime;
    sg_arena *arena;
    int nodes;
    sg_buf runtime_error;
    /* String constants of function rules, collected while loading and
     * sorted out once every scope is known (finish_function_scopes). */
    struct fconst {
        const char *text, *rule, *file;
        size_t len;
        int line, returned;
    } * fconsts;
    size_t nfconsts, fconsts_cap;
    char *module_path, *module_src; /* the last module read for a scan */
    size_t module_len;
} loader;

static void finding(loader *ld, int is_error, int line, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void finding(loader *ld, int is_error, int line, const char *where, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ld->runtime) {
        if (is_error && ld->runtime_error.len == 0)
            sg_buf_printf(&ld->runtime_error, "%s%s%s", where, *where ? ": " : "", msg);
        return;
    }
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

static int line_near(loader *ld, int kind, const char *text, size_t len, size_t from)
{
    size_t off = sg_luasrc_find(&ld->idx, kind, text, len, from);
    return sg_luasrc_line(&ld->idx, off != SG_LUASRC_NONE ? off : from);
}

static const char *arena_copy(loader *ld, sg_arena *a, const char *s, size_t len)
{
    char *c = sg_arena_strndup(a, s, len);
    if (!c) luaL_error(ld->L, "out of memory");
    return c;
}

/* Quotes s for a message, cut to a sane length. */
static const char *quoted(char *buf, size_t size, const char *s, size_t len)
{
    size_t max = size - 8;
    snprintf(buf, size, "\"%.*s%s\"", (int)(len > max ? max : len), s, len > max ? "..." : "");
    return buf;
}

static const sg_req *compile_req(loader *ld, int idx, const char *where, size_t from, int depth,
                                 int top, int *is_function);

/* The requirement words of docs/policy.md, which no scope may be named
 * after: a rule naming one means the requirement, never the scope. Returns
 * what the word means, or NULL when s is not reserved. */
static const char *reserved_meaning(const char *s, size_t len)
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

/* Reports a reserved word used where a scope name belongs. Returns 1 when
 * s was reserved (and reported), else 0. */
static int refuse_reserved(loader *ld, int line, const char *where, const char *s, size_t len)
{
    const char *meaning = reserved_meaning(s, len);
    if (!meaning) return 0;
    char q[160];
    finding(ld, 1, line, where, "%s is a reserved word (%s), not a scope name",
            quoted(q, sizeof q, s, len), meaning);
    return 1;
}

/* A scope named in a requirement, advertise or implies. Returns its id or
 * -1 after reporting. */
static int scope_ref(loader *ld, const char *s, size_t len, const char *where, size_t from,
                     const char *context)
{
    char q[160];
    if (!sg_scope_token_valid(s, len)) {
        finding(ld, 1, line_near(ld, SG_LUASRC_LITERAL, s, len, from), where,
                "invalid scope %s%s (scope tokens are 1-%d printable ASCII characters without "
                "spaces, double quotes or backslashes)",
                quoted(q, sizeof q, s, len), context, SG_MAX_SCOPE_LEN);
        return -1;
    }
    if (refuse_reserved(ld, line_near(ld, SG_LUASRC_LITERAL, s, len, from), where, s, len))
        return -1;
    int id = sg_universe_find(ld->p->u, s, len);
    if (ld->runtime) {
        if (id < 0)
            finding(ld, 1, 0, where,
                    "scope %s is not declared by this policy (list it in `scopes`)",
                    quoted(q, sizeof q, s, len));
        return id;
    }
    if (id < 0) id = sg_universe_add(ld->p->u, s, len);
    if (id == SG_SCOPE_EFULL) {
        finding(ld, 1, line_near(ld, SG_LUASRC_LITERAL, s, len, from), where,
                "too many distinct scopes (at most %d)", SG_MAX_SCOPES);
        return -1;
    }
    if (id < 0) luaL_error(ld->L, "out of memory");
    if (!sg_scopeset_has(&ld->p->declared, id))
        finding(ld, 0, line_near(ld, SG_LUASRC_LITERAL, s, len, from), where,
                "scope %s is not declared in `scopes`%s", quoted(q, sizeof q, s, len), context);
    return id;
}

/* {all_of = {...}} / {any_of = {...}}: compiles the list at idx. */
static const sg_req *compile_list(loader *ld, int idx, const char *listname, sg_req_kind kind,
                                  const char *where, size_t from, int depth)
{
    lua_State *L = ld->L;
    /* Lines are looked up only when reporting: the index walk is not free. */
#define LIST_LINE line_near(ld, SG_LUASRC_KEY, listname, strlen(listname), from)
    if (lua_type(L, idx) != LUA_TTABLE) {
        finding(ld, 1, LIST_LINE, where, "%s must be a list of requirements, got %s", listname,
                luaL_typename(L, idx));
        return NULL;
    }
    lua_Unsigned n = lua_rawlen(L, idx);
    if (n == 0) {
        finding(ld, 1, LIST_LINE, where, "%s is empty (an empty list would mean %s)", listname,
                kind == SG_REQ_ALL ? "no requirement at all" : "never");
        return NULL;
    }
    if (n > MAX_REQ_LIST) {
        finding(ld, 1, LIST_LINE, where, "%s has more than %d entries", listname, MAX_REQ_LIST);
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
            finding(ld, 1, LIST_LINE, where, "%s must be a plain list, found %s", listname, key);
            lua_pop(L, 2);
            return NULL;
        }
        lua_pop(L, 1);
    }
    sg_req *g = sg_req_group(ld->arena, kind, (int)n);
    if (!g) luaL_error(L, "out of memory");
    int ok = 1;
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        int fn = 0;
        const sg_req *kid = compile_req(ld, lua_gettop(L), where, from, depth + 1, 0, &fn);
        lua_pop(L, 1);
        if (!kid) {
            ok = 0;
            if (ld->runtime) return NULL;
            continue;
        }
        g->kids[i - 1] = kid;
    }
    return ok ? g : NULL;
}
#undef LIST_LINE

static const char *const req_table_keys = "all_of, any_of or deny";

static const sg_req *compile_table(loader *ld, int idx, const char *where, size_t from, int depth)
{
    lua_State *L = ld->L;
    int all = 0, any = 0, deny = 0, why = 0, ok = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            finding(ld, 1, sg_luasrc_line(&ld->idx, from), where,
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
        else if (strcmp(k, "audit") == 0 && depth == 0 && !ld->runtime)
            continue; /* the rule's audit list (load_audit), not part of the requirement */
        else {
            char q[160];
            finding(ld, 1, line_near(ld, SG_LUASRC_KEY, k, klen, from), where,
                    "unknown key %s in requirement (expected %s)", quoted(q, sizeof q, k, klen),
                    req_table_keys);
            ok = 0;
        }
    }
    if (!ok) return NULL;
    if (all + any + deny != 1) {
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), where,
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
            finding(ld, 1, line_near(ld, SG_LUASRC_KEY, "why", 3, from), where,
                    "why must be a string of at most %d bytes", MAX_WHY_LEN);
            lua_pop(L, 1);
            return NULL;
        }
        why_text = arena_copy(ld, ld->arena, w, len);
        lua_pop(L, 1);
    }
    const sg_req *r;
    if (deny) {
        lua_pushliteral(L, "deny");
        lua_rawget(L, idx);
        size_t len = 0;
        const char *reason = NULL;
        if (lua_type(L, -1) == LUA_TSTRING) {
            reason = lua_tolstring(L, -1, &len);
        } else if (!(lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1))) {
            finding(ld, 1, line_near(ld, SG_LUASRC_KEY, "deny", 4, from), where,
                    "deny takes a reason string (or true), got %s", luaL_typename(L, -1));
            lua_pop(L, 1);
            return NULL;
        }
        if (reason && len > MAX_WHY_LEN) {
            finding(ld, 1, line_near(ld, SG_LUASRC_KEY, "deny", 4, from), where,
                    "deny reason is longer than %d bytes", MAX_WHY_LEN);
            lua_pop(L, 1);
            return NULL;
        }
        sg_req *d = sg_req_leaf(ld->arena, SG_REQ_DENY, -1);
        if (!d) luaL_error(L, "out of memory");
        d->why = reason ? arena_copy(ld, ld->arena, reason, len) : why_text;
        lua_pop(L, 1);
        return d;
    }
    const char *listname = all ? "all_of" : "any_of";
    lua_pushstring(L, listname);
    lua_rawget(L, idx);
    r = compile_list(ld, lua_gettop(L), listname, all ? SG_REQ_ALL : SG_REQ_ANY, where, from,
                     depth);
    lua_pop(L, 1);
    if (r && why_text) ((sg_req *)r)->why = why_text;
    return r;
}

/* Compiles the requirement at stack index idx. top: the value is a whole
 * rule (a function is allowed; *is_function is set and NULL returned).
 * Returns NULL after reporting an error. */
static const sg_req *compile_req(loader *ld, int idx, const char *where, size_t from, int depth,
                                 int top, int *is_function)
{
    lua_State *L = ld->L;
    *is_function = 0;
    if (depth > MAX_REQ_DEPTH) {
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), where, "requirement nested deeper than %d",
                MAX_REQ_DEPTH);
        return NULL;
    }
    if (ld->runtime && ++ld->nodes > MAX_RUNTIME_NODES) {
        finding(ld, 1, 0, where, "requirement has more than %d parts", MAX_RUNTIME_NODES);
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
        int id = scope_ref(ld, s, len, where, from, "");
        if (id < 0) return NULL;
        sg_req *r = sg_req_leaf(ld->arena, SG_REQ_SCOPE, id);
        if (!r) luaL_error(L, "out of memory");
        return r;
    }
    case LUA_TBOOLEAN:
        if (!lua_toboolean(L, idx)) return &sg_req_deny;
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), where,
                "true is not a requirement (say \"public\" or \"authenticated\")");
        return NULL;
    case LUA_TTABLE:
        return compile_table(ld, lua_absindex(L, idx), where, from, depth);
    case LUA_TFUNCTION:
        if (top && !ld->runtime) {
            *is_function = 1;
            return NULL;
        }
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), where,
                ld->runtime ? "a rule function must return a requirement, not a function"
                            : "functions are only allowed as a whole rule, not inside "
                              "all_of/any_of");
        return NULL;
    case LUA_TNIL:
        if (ld->runtime) {
            finding(ld, 1, 0, where,
                    "rule returned nil (expected a requirement: a scope, \"public\", "
                    "\"authenticated\", false or a table with %s)",
                    req_table_keys);
            return NULL;
        }
        /* fallthrough */
    default:
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), where,
                "expected a requirement (a scope string, \"public\", \"authenticated\", false or "
                "a table with %s), got %s",
                req_table_keys, luaL_typename(L, idx));
        return NULL;
    }
}

/* ---- top-level keys --------------------------------------------------------------- */

static const char *const top_keys[] = {"realm",   "resource",  "authorization_servers",
                                       "scopes",  "advertise", "implies",
                                       "tools",   "resources", "prompts",
                                       "methods", "default",   "tool_annotations"};

static size_t key_offset(loader *ld, const char *key)
{
    size_t off = sg_luasrc_find(&ld->idx, SG_LUASRC_KEY, key, strlen(key), 0);
    return off == SG_LUASRC_NONE ? 0 : off;
}

/* Pushes policy[key] (raw). Returns its Lua type. */
static int get_top(loader *ld, int policy, const char *key)
{
    lua_pushstring(ld->L, key);
    return lua_rawget(ld->L, policy);
}

static const char *get_string_field(loader *ld, int policy, const char *key)
{
    lua_State *L = ld->L;
    const char *out = NULL;
    int t = get_top(ld, policy, key);
    if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (len == 0 || len > MAX_NAME_LEN || strlen(s) != len)
            finding(ld, 1, sg_luasrc_line(&ld->idx, key_offset(ld, key)), key,
                    "must be a non-empty string of at most %d bytes", MAX_NAME_LEN);
        else
            out = arena_copy(ld, &ld->p->arena, s, len);
    } else if (t != LUA_TNIL) {
        finding(ld, 1, sg_luasrc_line(&ld->idx, key_offset(ld, key)), key,
                "must be a string, got %s", luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return out;
}

/* A list of strings at the top of the stack. Returns the count or -1; the
 * strings are copied into the policy arena when out is not NULL. */
static int string_list(loader *ld, const char *key, size_t from, const char ***out)
{
    lua_State *L = ld->L;
    int line = sg_luasrc_line(&ld->idx, from);
    if (lua_type(L, -1) != LUA_TTABLE) {
        finding(ld, 1, line, key, "must be a list of strings, got %s", luaL_typename(L, -1));
        return -1;
    }
    lua_Unsigned n = lua_rawlen(L, -1);
    if (n > MAX_REQ_LIST) {
        finding(ld, 1, line, key, "has more than %d entries", MAX_REQ_LIST);
        return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (!(lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 &&
              (lua_Unsigned)lua_tointeger(L, -1) <= n)) {
            finding(ld, 1, line, key, "must be a plain list of strings");
            lua_pop(L, 1);
            return -1;
        }
    }
    const char **list = NULL;
    if (out && n) {
        list = sg_arena_alloc(&ld->p->arena, n * sizeof *list);
        if (!list) luaL_error(L, "out of memory");
    }
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (lua_type(L, -1) != LUA_TSTRING || len == 0 || len > MAX_NAME_LEN) {
            finding(ld, 1, line, key, "entry %d must be a non-empty string", (int)i);
            lua_pop(L, 1);
            return -1;
        }
        if (list) list[i - 1] = arena_copy(ld, &ld->p->arena, s, len);
        lua_pop(L, 1);
    }
    if (out) *out = list;
    return (int)n;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void load_scopes(loader *ld, int policy)
{
    lua_State *L = ld->L;
    size_t from = key_offset(ld, "scopes");
    int t = get_top(ld, policy, "scopes");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (t != LUA_TTABLE) {
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), "scopes",
                "must be a table of scope = \"description\", got %s", luaL_typename(L, -1));
        lua_pop(L, 1);
        return;
    }
    size_t nvalid = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            finding(ld, 1, sg_luasrc_line(&ld->idx, from), "scopes",
                    "keys must be scope names (found a %s key; write "
                    "[\"scope\"] = \"description\")",
                    luaL_typename(L, -2));
            lua_pop(L, 1);
            continue;
        }
        size_t len;
        const char *s = lua_tolstring(L, -2, &len);
        char q[160];
        int line = line_near(ld, SG_LUASRC_KEY, s, len, from);
        if (lua_type(L, -1) != LUA_TSTRING)
            finding(ld, 1, line, "scopes", "the description of %s must be a string, got %s",
                    quoted(q, sizeof q, s, len), luaL_typename(L, -1));
        if (!sg_scope_token_valid(s, len))
            finding(ld, 1, line, "scopes",
                    "invalid scope %s (scope tokens are 1-%d printable ASCII characters without "
                    "spaces, double quotes or backslashes)",
                    quoted(q, sizeof q, s, len), SG_MAX_SCOPE_LEN);
        else if (!refuse_reserved(ld, line, "scopes", s, len))
            nvalid++;
        lua_pop(L, 1);
    }
    /* Intern in bytewise order: scope ids then do not depend on Lua's
     * per-state hash seed, so every worker's universe numbers alike. */
    const char **names = lua_newuserdatauv(L, (nvalid ? nvalid : 1) * sizeof *names, 0);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -3)) {
        lua_pop(L, 1);
        size_t len;
        if (lua_type(L, -1) == LUA_TSTRING && n < nvalid) {
            const char *s = lua_tolstring(L, -1, &len);
            if (sg_scope_token_valid(s, len) && !reserved_meaning(s, len)) names[n++] = s;
        }
    }
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        int id = sg_universe_add(ld->p->u, names[i], strlen(names[i]));
        if (id == SG_SCOPE_EFULL) {
            finding(ld, 1, sg_luasrc_line(&ld->idx, from), "scopes", "too many scopes (at most %d)",
                    SG_MAX_SCOPES);
            break;
        }
        if (id < 0) luaL_error(L, "out of memory");
        sg_scopeset_add(&ld->p->declared, id);
    }
    /* The line of each declared scope's key, by id (for check's lint). */
    int *lines = n ? sg_arena_alloc(&ld->p->arena, n * sizeof *lines) : NULL;
    if (lines) memset(lines, 0, n * sizeof *lines);
    for (size_t i = 0; lines && i < n; i++) {
        int id = sg_universe_find(ld->p->u, names[i], strlen(names[i]));
        if (id >= 0 && (size_t)id < n)
            lines[id] = line_near(ld, SG_LUASRC_KEY, names[i], strlen(names[i]), from);
    }
    ld->p->declared_lines = lines;
    ld->p->ndeclared_lines = lines ? (int)n : 0;
    lua_pop(L, 2);
}

static void load_implies(loader *ld, int policy)
{
    lua_State *L = ld->L;
    size_t from = key_offset(ld, "implies");
    int t = get_top(ld, policy, "implies");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (t != LUA_TTABLE) {
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), "implies",
                "must be a table of scope = { implied scopes }, got %s", luaL_typename(L, -1));
        lua_pop(L, 1);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            finding(ld, 1, sg_luasrc_line(&ld->idx, from), "implies", "keys must be scope names");
            lua_pop(L, 1);
            continue;
        }
        size_t len;
        const char *s = lua_tolstring(L, -2, &len);
        size_t kfrom = sg_luasrc_find(&ld->idx, SG_LUASRC_KEY, s, len, from);
        if (kfrom == SG_LUASRC_NONE) kfrom = from;
        int id_from = scope_ref(ld, s, len, "implies", from, "");
        if (lua_type(L, -1) == LUA_TSTRING) {
            /* a single implied scope is fine too: { a = "b" } */
            size_t l2;
            const char *s2 = lua_tolstring(L, -1, &l2);
            int id_to = scope_ref(ld, s2, l2, "implies", kfrom, "");
            if (id_from >= 0 && id_to >= 0) sg_universe_imply(ld->p->u, id_from, id_to);
            lua_pop(L, 1);
            continue;
        }
        char where[300];
        snprintf(where, sizeof where, "implies[\"%.200s\"]", s);
        int n = string_list(ld, where, kfrom, NULL);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            size_t l2;
            const char *s2 = lua_tolstring(L, -1, &l2);
            int id_to = scope_ref(ld, s2, l2, "implies", kfrom, "");
            if (id_from >= 0 && id_to >= 0) sg_universe_imply(ld->p->u, id_from, id_to);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void load_advertise(loader *ld, int policy)
{
    lua_State *L = ld->L;
    size_t from = key_offset(ld, "advertise");
    int t = get_top(ld, policy, "advertise");
    if (t != LUA_TNIL) {
        ld->p->advertise_line = sg_luasrc_line(&ld->idx, from);
        const char **list = NULL;
        int n = string_list(ld, "advertise", from, &list);
        for (int i = 0; i < n; i++)
            scope_ref(ld, list[i], strlen(list[i]), "advertise", from, " in advertise");
        if (n > 0) {
            ld->p->supported = list;
            ld->p->nsupported = n;
        }
    }
    lua_pop(L, 1);
}

static rule *new_rule(loader *ld, const char *table, const char *key, size_t keylen, int line)
{
    sg_policy *p = ld->p;
    rule *r = sg_arena_alloc(&p->arena, sizeof *r);
    if (!r) luaL_error(ld->L, "out of memory");
    memset(r, 0, sizeof *r);
    r->key = arena_copy(ld, &p->arena, key, keylen);
    r->keylen = keylen;
    if (table) {
        size_t tl = strlen(table);
        char *name = sg_arena_alloc(&p->arena, tl + 1 + keylen + 1);
        if (!name) luaL_error(ld->L, "out of memory");
        memcpy(name, table, tl);
        name[tl] = '.';
        memcpy(name + tl + 1, key, keylen);
        name[tl + 1 + keylen] = '\0';
        r->name = name;
    } else {
        r->name = r->key;
    }
    r->line = line;
    r->ref = LUA_NOREF;
    return r;
}

/* ---- scopes a function rule can return -----------------------------------------
 *
 * A function rule's requirement is known only when it runs, and `check`
 * runs it once, in one phase: a misspelt scope in a branch taken only in
 * the call phase would pass. So the function's source text (its span,
 * lines linedefined..lastlinedefined, in the policy or in a module) is
 * scanned with a rough Lua tokenizer for string constants. A constant is
 * "returned" when it sits in a return expression (up to the end, else,
 * elseif or until that closes the return's block) and is not an operand of
 * a comparison or of `..`, not an index ([...]) or call argument, and not
 * the text of `why =` or `deny =`. Constants that merely equal a scope the
 * policy knows are kept too (`local need = "a:admin"`). Heuristic by
 * nature: it can miss a scope built at run time, and it never executes
 * anything. */

static void add_fconst(loader *ld, const char *src, const sg_luasrc_token *t, const rule *r,
                       const char *file, int returned)
{
    if (ld->nfconsts == ld->fconsts_cap) {
        size_t cap = ld->fconsts_cap ? ld->fconsts_cap * 2 : 32;
        struct fconst *f = realloc(ld->fconsts, cap * sizeof *f);
        if (!f) luaL_error(ld->L, "out of memory");
        ld->fconsts = f;
        ld->fconsts_cap = cap;
    }
    ld->fconsts[ld->nfconsts++] =
        (struct fconst){arena_copy(ld, &ld->p->arena, src + t->off, t->len),
                        r->name,
                        file,
                        t->len,
                        t->line,
                        returned};
}

/* Collects the string constants of the function rule r, written in file
 * (the policy or a module) at lines first..last. */
static void scan_function(loader *ld, const rule *r, const char *file, int first, int last)
{
    const char *src;
    size_t len;
    if (strcmp(file, ld->p->path) == 0) {
        src = ld->idx.src;
        len = ld->idx.len;
    } else {
        if (!ld->module_path || strcmp(ld->module_path, file) != 0) {
            free(ld->module_path);
            free(ld->module_src);
            ld->module_path = strdup(file);
            ld->module_src = sg_read_file(file, SG_SANDBOX_MAX_SOURCE, &ld->module_len);
        }
        src = ld->module_src;
        len = ld->module_len;
    }
    if (!src || first < 1 || last < first) return;
    size_t from = 0, to = len;
    int line = 1;
    for (size_t i = 0; i < len && line < first; i++)
        if (src[i] == '\n' && ++line == first) from = i + 1;
    for (size_t i = from; i < len; i++)
        if (src[i] == '\n' && ++line > last) {
            to = i;
            break;
        }
    const char *path = arena_copy(ld, &ld->p->arena, file, strlen(file));
    sg_luasrc_token *t = NULL;
    size_t n = sg_luasrc_tokens(src, from, to, first, &t);
    /* Bracket kinds since the function's start: '(' grouping, 'c' call
     * parentheses, '[' index, '{' table. */
    char stack[256];
    int depth = 0, ret_depth = -1;
    for (size_t i = 0; i < n; i++) {
        const sg_luasrc_token *k = &t[i], *prev = i ? &t[i - 1] : NULL,
                              *next = i + 1 < n ? &t[i + 1] : NULL;
        if (sg_luasrc_token_is(src, k, "return")) {
            ret_depth = depth;
        } else if (ret_depth == depth &&
                   (sg_luasrc_token_is(src, k, "end") || sg_luasrc_token_is(src, k, "else") ||
                    sg_luasrc_token_is(src, k, "elseif") || sg_luasrc_token_is(src, k, "until") ||
                    sg_luasrc_token_is(src, k, ";"))) {
            ret_depth = -1;
        } else if (k->kind == SG_LUASRC_OTHER && k->len == 1 && strchr("([{", src[k->off])) {
            char kind = src[k->off];
            if (kind == '(' && prev &&
                ((prev->kind == SG_LUASRC_NAME && !sg_luasrc_is_keyword(src, prev)) ||
                 prev->kind == SG_LUASRC_STRING || sg_luasrc_token_is(src, prev, ")") ||
                 sg_luasrc_token_is(src, prev, "]")))
                kind = 'c';
            if (depth < (int)sizeof stack) stack[depth] = kind;
            depth++;
        } else if (k->kind == SG_LUASRC_OTHER && k->len == 1 && strchr(")]}", src[k->off])) {
            if (depth > 0) depth--;
            if (ret_depth > depth) ret_depth = -1;
        } else if (k->kind == SG_LUASRC_STRING) {
            char inner = depth > 0 && depth <= (int)sizeof stack ? stack[depth - 1] : 0;
            static const char *const ops[] = {"==", "~=", "..", "<", ">", "<=", ">="};
            int operand = 0;
            for (size_t o = 0; o < SG_ARRAY_LEN(ops); o++)
                operand |=
                    sg_luasrc_token_is(src, prev, ops[o]) || sg_luasrc_token_is(src, next, ops[o]);
            int reason = sg_luasrc_token_is(src, prev, "=") && i >= 2 &&
                         (sg_luasrc_token_is(src, &t[i - 2], "why") ||
                          sg_luasrc_token_is(src, &t[i - 2], "deny"));
            int call_arg =
                prev && ((prev->kind == SG_LUASRC_NAME && !sg_luasrc_is_keyword(src, prev)) ||
                         sg_luasrc_token_is(src, prev, ")"));
            int returned = ret_depth >= 0 && depth >= ret_depth && inner != 'c' && inner != '[' &&
                           !operand && !reason && !call_arg;
            if (!memchr(src + k->off, '\\', k->len) && sg_scope_token_valid(src + k->off, k->len))
                add_fconst(ld, src, k, r, path, returned);
        }
    }
    free(t);
}

/* Sorts the collected constants into p->fscopes once every scope is
 * known: returned constants (reserved words aside) and constants naming a
 * known scope. A returned "public" makes protocol plumbing public (the
 * rule may let anonymous callers in). A returned constant the policy does not know is a warning
 * (returning it would be a policy error at run time). */
static void finish_function_scopes(loader *ld)
{
    sg_policy *p = ld->p;
    if (!ld->nfconsts) return;
    p->fscopes = sg_arena_alloc(&p->arena, ld->nfconsts * sizeof *p->fscopes);
    if (!p->fscopes) luaL_error(ld->L, "out of memory");
    for (size_t i = 0; i < ld->nfconsts; i++) {
        const struct fconst *c = &ld->fconsts[i];
        if (c->returned && c->len == 6 && memcmp(c->text, "public", 6) == 0) p->any_public = 1;
        if (reserved_meaning(c->text, c->len)) continue;
        int known = sg_universe_find(p->u, c->text, c->len) >= 0;
        if (!c->returned && !known) continue;
        int dup = 0;
        for (int j = 0; j < p->nfscopes && !dup; j++)
            dup = p->fscopes[j].rule == c->rule && strcmp(p->fscopes[j].scope, c->text) == 0 &&
                  p->fscopes[j].returned >= c->returned;
        if (dup) continue;
        p->fscopes[p->nfscopes++] =
            (sg_policy_scope_use){c->text, c->rule, c->file, c->line, c->returned, known};
        if (c->returned && !known) {
            char q[160];
            sg_buf_printf(&ld->report,
                          "%s:%d: warning: %s: scope %s returned by this function is not declared "
                          "(a typo? returning it would be a policy error; list it in `scopes`)\n",
                          c->file, c->line, c->rule, quoted(q, sizeof q, c->text, c->len));
        }
    }
}

/* Compiles the rule value on top of the stack into r (static or function).
 * Returns 0, or -1 after reporting. */
static int compile_rule_value(loader *ld, rule *r, size_t from)
{
    lua_State *L = ld->L;
    int fn = 0;
    const sg_req *req = compile_req(ld, lua_gettop(L), r->name, from, 0, 1, &fn);
    if (fn) {
        lua_Debug ar;
        lua_pushvalue(L, -1);
        if (lua_getinfo(L, ">S", &ar) && ar.linedefined > 0) {
            r->line = ar.linedefined;
            if (ar.source && ar.source[0] == '@')
                scan_function(ld, r, ar.source + 1, ar.linedefined, ar.lastlinedefined);
        }
        lua_pushvalue(L, -1);
        r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
        sg_policy *p = ld->p;
        if ((size_t)p->nfunctions == p->functions_cap) {
            size_t cap = p->functions_cap ? p->functions_cap * 2 : 16;
            rule **f = realloc(p->functions, cap * sizeof *f);
            if (!f) luaL_error(L, "out of memory");
            p->functions = f;
            p->functions_cap = cap;
        }
        p->functions[p->nfunctions++] = r;
        return 0;
    }
    if (!req) return -1;
    r->req = req;
    return 0;
}

/* An audit path: "arguments." then 1 to MAX_AUDIT_KEYS keys of 1 to
 * MAX_AUDIT_KEY_LEN letters, digits, '_' or '-', separated by dots. */
static int audit_path_valid(const char *s, size_t len)
{
    static const char prefix[] = "arguments.";
    if (len <= sizeof prefix - 1 || memcmp(s, prefix, sizeof prefix - 1) != 0) return 0;
    int keys = 0;
    size_t keylen = 0;
    for (size_t i = sizeof prefix - 1; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (keylen == 0 || keylen > MAX_AUDIT_KEY_LEN || ++keys > MAX_AUDIT_KEYS) return 0;
            keylen = 0;
            continue;
        }
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
        keylen++;
    }
    return 1;
}

/* The `audit` key of a rule written as a table (on top of the stack): the
 * argument paths whose values the audit log records for a call this rule
 * decides. Returns 0 (absent or valid), or -1 after reporting. */
static int load_audit(loader *ld, rule *r, size_t from)
{
    lua_State *L = ld->L;
    lua_pushliteral(L, "audit");
    lua_rawget(L, -2);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    int line = line_near(ld, SG_LUASRC_KEY, "audit", 5, from);
    lua_Unsigned n = lua_type(L, -1) == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
    size_t nkeys = 0;
    if (lua_type(L, -1) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            nkeys++;
        }
    }
    if (n == 0 || n > MAX_AUDIT_PATHS || nkeys != n) {
        finding(ld, 1, line, r->name,
                "audit must be a list of 1 to %d argument paths such as { \"arguments.id\" }, "
                "got %s",
                MAX_AUDIT_PATHS,
                lua_type(L, -1) != LUA_TTABLE ? luaL_typename(L, -1)
                : n == 0 && nkeys == 0        ? "an empty table"
                : nkeys != n                  ? "a table with keys that are not 1..n"
                                              : "too many paths");
        lua_pop(L, 1);
        return -1;
    }
    const char **paths = sg_arena_alloc(&ld->p->arena, n * sizeof *paths);
    if (!paths) luaL_error(L, "out of memory");
    int ok = 1;
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        size_t len = 0;
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (!s || !audit_path_valid(s, len)) {
            char q[160];
            if (s)
                finding(ld, 1, line_near(ld, SG_LUASRC_LITERAL, s, len, from), r->name,
                        "audit: %s is not an argument path (write \"arguments.<key>\" or "
                        "\"arguments.<key>.<key>\": up to %d keys of letters, digits, '_' and '-')",
                        quoted(q, sizeof q, s, len), MAX_AUDIT_KEYS);
            else
                finding(ld, 1, line, r->name, "audit: entry %d is a %s, not an argument path",
                        (int)i, luaL_typename(L, -1));
            ok = 0;
        } else {
            paths[i - 1] = arena_copy(ld, &ld->p->arena, s, len);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (!ok) return -1;
    r->audit = paths;
    r->naudit = (int)n;
    return 0;
}

/* Compiles the rule on top of the stack into r. A rule written as a table
 * may carry `audit`; `{ rule = <any rule>, audit = {...} }` lends the key
 * to a rule that is a string or a function. Returns 0, or -1 after
 * reporting. */
static int compile_rule(loader *ld, rule *r, size_t from)
{
    lua_State *L = ld->L;
    if (lua_type(L, -1) != LUA_TTABLE) return compile_rule_value(ld, r, from);
    int audit_rc = load_audit(ld, r, from);
    lua_pushliteral(L, "rule");
    lua_rawget(L, -2);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        int rc = compile_rule_value(ld, r, from);
        return rc == 0 && audit_rc == 0 ? 0 : -1;
    }
    int ok = 1;
    lua_pushnil(L);
    while (lua_next(L, -3)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (!k || (strcmp(k, "rule") != 0 && strcmp(k, "audit") != 0)) {
            char q[160] = "a non-string key";
            if (k) quoted(q, sizeof q, k, strlen(k));
            finding(ld, 1, sg_luasrc_line(&ld->idx, from), r->name,
                    "a rule written as { rule = ..., audit = ... } takes no other key (found %s)",
                    q);
            ok = 0;
        }
    }
    int rc = ok ? compile_rule_value(ld, r, from) : -1;
    lua_pop(L, 1);
    return rc == 0 && audit_rc == 0 ? 0 : -1;
}

/* In a resource template key, a byte a {var} never matches: it would
 * leave the path segment (RFC 3986: '/' separates segments, '?' starts
 * the query, '#' the fragment). */
static int segment_byte(unsigned char c)
{
    return c != '/' && c != '?' && c != '#';
}

/* RFC 6570 varname: varchar *( ["."] varchar ), varchar = ALPHA / DIGIT /
 * "_" / pct-encoded. Returns 1 when s[0..len) is one. */
static int template_varname(const char *s, size_t len)
{
    if (len == 0 || s[0] == '.' || s[len - 1] == '.') return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= len || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2]))
                return 0;
            i += 2;
        } else if (c == '.') {
            if (s[i + 1] == '.') return 0;
        } else if (!isalnum(c) && c != '_') {
            return 0;
        }
    }
    return 1;
}

/* Compiles a resource key holding RFC 6570 expressions into r->tmpl: a
 * literal byte matches itself, `*` any run (as in globs), {var} one or more
 * bytes within a path segment (no '/', '?' or '#'), {+var} one or more of
 * any bytes. Other operators, lists and modifiers are refused with a hint.
 * Returns 0, or -1 after reporting. */
static int compile_template(loader *ld, rule *r)
{
    const char *k = r->key;
    size_t len = r->keylen;
    tmpl_part *parts = sg_arena_alloc(&ld->p->arena, 2 * len * sizeof *parts);
    if (!parts) luaL_error(ld->L, "out of memory");
    size_t n = 0;
    char q[160];
    for (size_t i = 0; i < len; i++) {
        if (k[i] == '}') {
            finding(ld, 1, r->line, r->name, "'}' without '{' in resource template %s",
                    quoted(q, sizeof q, k, len));
            return -1;
        }
        if (k[i] != '{') {
            r->literal += k[i] != '*';
            r->unrestricted += k[i] == '*';
            parts[n++] = (tmpl_part){k[i] == '*' ? TP_ANYSTAR : TP_LIT, (unsigned char)k[i]};
            continue;
        }
        const char *close = memchr(k + i, '}', len - i);
        const char *open = memchr(k + i + 1, '{', len - i - 1);
        if (!close || (open && open < close)) {
            finding(ld, 1, r->line, r->name, "unclosed '{' in resource template %s",
                    quoted(q, sizeof q, k, len));
            return -1;
        }
        size_t elen = (size_t)(close - (k + i)) + 1; /* "{...}" */
        int reserved = k[i + 1] == '+';
        const char *var = k + i + 1 + reserved;
        if (!template_varname(var, (size_t)(close - var))) {
            finding(ld, 1, r->line, r->name,
                    "unsupported URI template expression %s in resource key (keys take RFC 6570 "
                    "{name}, one path segment, and {+name}, any text across '/'; write * for "
                    "anything else)",
                    quoted(q, sizeof q, k + i, elen));
            return -1;
        }
        parts[n++] = (tmpl_part){reserved ? TP_ANY1 : TP_SEG1, 0};
        parts[n++] = (tmpl_part){reserved ? TP_ANYSTAR : TP_SEGSTAR, 0};
        r->unrestricted += (size_t)reserved;
        i += elen - 1;
    }
    r->tmpl = parts;
    r->ntmpl = n;
    return 0;
}

/* Matches s against a compiled template: a set-of-states simulation, so
 * the cost is at most (template steps) x (URI bytes) whatever the shape. */
static int template_match(const tmpl_part *t, size_t n, const char *s, size_t slen)
{
    unsigned char cur[2 * MAX_NAME_LEN + 1], next[2 * MAX_NAME_LEN + 1];
    memset(cur, 0, n + 1);
    cur[0] = 1;
    for (size_t i = 0; i < n; i++) /* star steps may match nothing */
        if (cur[i] && (t[i].kind == TP_ANYSTAR || t[i].kind == TP_SEGSTAR)) cur[i + 1] = 1;
    for (size_t j = 0; j < slen; j++) {
        unsigned char c = (unsigned char)s[j];
        int any = 0;
        memset(next, 0, n + 1);
        for (size_t i = 0; i < n; i++) {
            if (!cur[i]) continue;
            switch (t[i].kind) {
            case TP_LIT:
                if (t[i].c == c) next[i + 1] = 1;
                break;
            case TP_ANY1:
                next[i + 1] = 1;
                break;
            case TP_SEG1:
                if (segment_byte(c)) next[i + 1] = 1;
                break;
            case TP_ANYSTAR:
                next[i] = 1;
                break;
            case TP_SEGSTAR:
                if (segment_byte(c)) next[i] = 1;
                break;
            }
        }
        for (size_t i = 0; i < n; i++)
            if (next[i] && (t[i].kind == TP_ANYSTAR || t[i].kind == TP_SEGSTAR)) next[i + 1] = 1;
        for (size_t i = 0; i <= n; i++)
            any |= (cur[i] = next[i]);
        if (!any) return 0;
    }
    return cur[n];
}

/* URIs are decided in their normal form (uri.h), so a literal key or a
 * pattern's text in another form would never match: an error that names
 * the form to write. A pattern whose scheme is a wildcard is not checked
 * (it has no scheme to normalise). Returns 1 when the key was refused. */
static int resource_key_abnormal(loader *ld, const rule *r, const char *k, size_t len)
{
    size_t s = 0;
    while (s < len && k[s] != ':' && k[s] != '/' && k[s] != '*')
        s++;
    if (s < len && k[s] == '*') return 0;
    char q[160], q2[160];
    sg_buf norm = SG_BUF_INIT;
    const char *why = NULL;
    int rc = sg_uri_normalize(k, len, &norm, &why);
    if (rc == 0 && !sg_buf_ok(&norm)) {
        sg_buf_free(&norm);
        luaL_error(ld->L, "out of memory");
    }
    int bad = rc != 0 || norm.len != len || memcmp(norm.data, k, len) != 0;
    if (rc != 0)
        finding(ld, 1, r->line, r->name, "resource key %s has no RFC 3986 normal form: %s",
                quoted(q, sizeof q, k, len), why);
    else if (bad)
        finding(ld, 1, r->line, r->name,
                "resource key %s is not in RFC 3986 normal form, so it would never match "
                "(URIs are matched in normal form): write %s",
                quoted(q, sizeof q, k, len), quoted(q2, sizeof q2, norm.data, norm.len));
    sg_buf_free(&norm);
    return bad;
}

static int glob_order(const void *a, const void *b)
{
    const rule *x = *(rule *const *)a, *y = *(rule *const *)b;
    if (x->literal != y->literal) return x->literal > y->literal ? -1 : 1;
    if (x->unrestricted != y->unrestricted) return x->unrestricted < y->unrestricted ? -1 : 1;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    return x->keylen < y->keylen ? -1 : x->keylen > y->keylen;
}

/* 1 when a caller without a token meets r (public, or an any_of with a
 * public branch). Such a rule makes protocol plumbing public: anonymous
 * callers must be able to initialize and list to reach it. */
static int anonymous_allowed(const sg_req *r)
{
    sg_scopeset none;
    sg_scopeset_clear(&none);
    return sg_req_satisfied(r, 0, &none);
}

static void load_rules(loader *ld, int policy, int which)
{
    lua_State *L = ld->L;
    sg_policy *p = ld->p;
    const char *tname = table_names[which];
    size_t from = key_offset(ld, tname);
    int t = get_top(ld, policy, tname);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (t != LUA_TTABLE) {
        finding(ld, 1, sg_luasrc_line(&ld->idx, from), tname,
                "must be a table of name = requirement, got %s", luaL_typename(L, -1));
        lua_pop(L, 1);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            finding(ld, 1, sg_luasrc_line(&ld->idx, from), tname,
                    "keys must be names (found a %s key: write name = requirement, not a list)",
                    luaL_typename(L, -2));
            lua_pop(L, 1);
            continue;
        }
        size_t len;
        const char *k = lua_tolstring(L, -2, &len);
        size_t kfrom = sg_luasrc_find(&ld->idx, SG_LUASRC_KEY, k, len, from);
        if (len == 0 || len > MAX_NAME_LEN || strlen(k) != len) {
            finding(ld, 1, sg_luasrc_line(&ld->idx, kfrom != SG_LUASRC_NONE ? kfrom : from), tname,
                    "names must be 1-%d bytes without NUL", MAX_NAME_LEN);
            lua_pop(L, 1);
            continue;
        }
        rule *r = new_rule(ld, tname, k, len,
                           sg_luasrc_line(&ld->idx, kfrom != SG_LUASRC_NONE ? kfrom : from));
        int is_template = which == T_RESOURCES && (memchr(k, '{', len) || memchr(k, '}', len));
        if (is_template && compile_template(ld, r) != 0) {
            lua_pop(L, 1);
            continue;
        }
        if (which == T_RESOURCES && !is_template && resource_key_abnormal(ld, r, k, len)) {
            lua_pop(L, 1);
            continue;
        }
        if (compile_rule(ld, r, kfrom != SG_LUASRC_NONE ? kfrom : from) == 0) {
            if (r->req && anonymous_allowed(r->req)) p->any_public = 1;
            size_t stars = 0;
            for (size_t i = 0; i < len; i++)
                stars += k[i] == '*';
            /* A template is also found by its own text: the gateway decides
             * a resources/templates/list item by its uriTemplate. */
            if (is_template && map_put(&p->maps[which], r) != 0) luaL_error(L, "out of memory");
            if (which == T_RESOURCES && (stars || is_template)) {
                if (!is_template) r->literal = len - stars, r->unrestricted = stars;
                if (p->nglobs == p->globcap) {
                    size_t cap = p->globcap ? p->globcap * 2 : 8;
                    rule **g = realloc(p->globs, cap * sizeof *g);
                    if (!g) luaL_error(L, "out of memory");
                    p->globs = g;
                    p->globcap = cap;
                }
                p->globs[p->nglobs++] = r;
            } else if (map_put(&p->maps[which], r) != 0) {
                luaL_error(L, "out of memory");
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (which == T_RESOURCES && p->nglobs > 1)
        qsort(p->globs, p->nglobs, sizeof *p->globs, glob_order);
}

static void load_default(loader *ld, int policy)
{
    lua_State *L = ld->L;
    sg_policy *p = ld->p;
    size_t from = key_offset(ld, "default");
    int t = get_top(ld, policy, "default");
    if (t != LUA_TNIL) {
        rule *r = new_rule(ld, NULL, "default", 7, sg_luasrc_line(&ld->idx, from));
        if (compile_rule(ld, r, from) == 0) p->default_rule = *r;
        if (r->req && anonymous_allowed(r->req)) p->any_public = 1;
        if (r->ref != LUA_NOREF) p->functions[p->nfunctions - 1] = &p->default_rule;
    }
    lua_pop(L, 1);
}

/* The protected body of sg_policy_load: arg 2 is what the file returned. */
static int compile_policy(lua_State *L)
{
    loader *ld = lua_touserdata(L, 1);
    sg_policy *p = ld->p;
    if (lua_type(L, 2) != LUA_TTABLE) {
        finding(ld, 1, 1, "", "a policy file must return a table, got %s", luaL_typename(L, 2));
        return 0;
    }
    int policy = 2;
    lua_pushnil(L);
    while (lua_next(L, policy)) {
        lua_pop(L, 1);
        int known = 0;
        if (lua_type(L, -1) == LUA_TSTRING) {
            for (size_t i = 0; i < SG_ARRAY_LEN(top_keys); i++)
                if (strcmp(lua_tostring(L, -1), top_keys[i]) == 0) known = 1;
        }
        if (!known) {
            char q[160] = "a non-string key";
            size_t len = 0;
            if (lua_type(L, -1) == LUA_TSTRING) {
                const char *k = lua_tolstring(L, -1, &len);
                quoted(q, sizeof q, k, len);
            }
            int line = lua_type(L, -1) == LUA_TSTRING
                           ? line_near(ld, SG_LUASRC_KEY, lua_tostring(L, -1), len, 0)
                           : 1;
            finding(ld, 1, line, "",
                    "unknown top-level key %s (expected realm, resource, authorization_servers, "
                    "scopes, advertise, implies, tools, resources, prompts, methods, default or "
                    "tool_annotations)",
                    q);
        }
    }
    p->realm = get_string_field(ld, policy, "realm");
    p->resource = get_string_field(ld, policy, "resource");
    const char *annotations_from = get_string_field(ld, policy, "tool_annotations");
    if (annotations_from && strcmp(annotations_from, "upstream") != 0)
        finding(ld, 1, line_near(ld, SG_LUASRC_KEY, "tool_annotations", 16, 0), "tool_annotations",
                "must be \"upstream\" (learn tools' MCP annotations from the upstream's "
                "tools/list), not \"%s\"",
                annotations_from);
    p->annotations_from_upstream = annotations_from != NULL;
    if (get_top(ld, policy, "authorization_servers") != LUA_TNIL) {
        const char **list = NULL;
        int n = string_list(ld, "authorization_servers", key_offset(ld, "authorization_servers"),
                            &list);
        if (n > 0) {
            p->auth_servers = list;
            p->nauth_servers = n;
        }
    }
    lua_pop(L, 1);
    load_scopes(ld, policy);
    load_implies(ld, policy);
    load_advertise(ld, policy);
    for (int w = 0; w < T_COUNT; w++)
        load_rules(ld, policy, w);
    load_default(ld, policy);
    finish_function_scopes(ld);

    if (!p->supported) {
        int n = 0;
        for (int id = 0; id < sg_universe_size(p->u); id++)
            n += sg_scopeset_has(&p->declared, id);
        if (n) {
            const char **list = sg_arena_alloc(&p->arena, (size_t)n * sizeof *list);
            if (!list) luaL_error(L, "out of memory");
            n = 0;
            for (int id = 0; id < sg_universe_size(p->u); id++)
                if (sg_scopeset_has(&p->declared, id)) list[n++] = sg_universe_name(p->u, id);
            qsort(list, (size_t)n, sizeof *list, by_name);
            p->supported = list;
            p->nsupported = n;
        }
    }
    return 0;
}

/* ---- list-phase guard on req ------------------------------------------------------ */

static char list_meta_key;

static int list_phase_index(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "arguments") == 0)
        return luaL_error(L, "req.arguments is not available in the list phase (the item is "
                             "being listed, not called: check req.phase == \"call\" first)");
    return 0;
}

static int make_list_meta(lua_State *L)
{
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, list_phase_index);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &list_meta_key);
    return 0;
}

/* ---- loading ------------------------------------------------------------------------ */

static void loader_free(loader *ld)
{
    sg_luasrc_free(&ld->idx);
    sg_buf_free(&ld->errors);
    sg_buf_free(&ld->report);
    sg_buf_free(&ld->runtime_error);
    free(ld->fconsts);
    free(ld->module_path);
    free(ld->module_src);
}

/* Loads into *out; the findings stay in ld. Returns the policy or NULL. */
static sg_policy *load_policy(const char *path, const sg_policy_limits *limits, loader *ld)
{
    memset(ld, 0, sizeof *ld);
    sg_policy *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    ld->p = p;
    sg_arena_init(&p->arena, 16384);
    p->default_rule = (rule){
        .key = "default", .keylen = 7, .name = "default", .req = &sg_req_deny, .ref = LUA_NOREF};
    p->path = strdup(path);
    p->u = sg_universe_new();
    p->sb = p->path ? sg_sandbox_new(path, limits) : NULL;
    if (!p->path || !p->u || !p->sb) {
        sg_buf_printf(&ld->errors, "%s: out of memory\n", path);
        sg_buf_printf(&ld->report, "%s:1: error: out of memory\n", path);
        ld->nerrors++;
        sg_policy_free(p);
        return NULL;
    }
    ld->L = sg_sandbox_lua(p->sb);
    ld->arena = &p->arena;
    size_t srclen = 0;
    char *src = sg_read_file(path, SG_SANDBOX_MAX_SOURCE, &srclen);
    sg_buf err = SG_BUF_INIT;
    int failed = 0;
    if (!src) {
        sg_buf_printf(&err, "%s: cannot read policy: %s", path, strerror(errno));
        failed = 1;
    } else if (sg_luasrc_index(&ld->idx, src, srclen) != 0) {
        sg_buf_printf(&err, "%s: out of memory", path);
        failed = 1;
    } else if (sg_sandbox_run_file(p->sb, path, &err) != 0) {
        failed = 1;
    } else if (sg_sandbox_call(p->sb, compile_policy, ld, 1, 0, &err) != 0) {
        sg_buf_printf(&err, " (while compiling %s)", path);
        failed = 1;
    } else if (sg_sandbox_call(p->sb, make_list_meta, NULL, 0, 0, &err) != 0) {
        failed = 1;
    }
    if (failed) {
        /* Lua's messages already read "file:line: ..."; the others get the
         * file name (and line 1 in the report, which needs a line). */
        const char *m = err.data ? err.data : "out of memory";
        size_t plen = strlen(path), loc = location_prefix(m);
        if (loc) {
            sg_buf_printf(&ld->errors, "%s\n", m);
            sg_buf_printf(&ld->report, "%.*s: error: %s\n", (int)loc, m, m + loc + 2);
        } else if (strncmp(m, path, plen) == 0 && m[plen] == ':' && m[plen + 1] == ' ') {
            sg_buf_printf(&ld->errors, "%s\n", m);
            sg_buf_printf(&ld->report, "%s:1: error: %s\n", path, m + plen + 2);
        } else {
            sg_buf_printf(&ld->errors, "%s: %s\n", path, m);
            sg_buf_printf(&ld->report, "%s:1: error: %s\n", path, m);
        }
        ld->nerrors++;
    }
    sg_buf_free(&err);
    if (!failed && ld->nerrors == 0 && sg_universe_seal(p->u) != 0) {
        sg_buf_printf(&ld->errors, "%s: out of memory\n", path);
        ld->nerrors++;
    }
    if (!failed && ld->nerrors == 0 && sg_sandbox_seal(p->sb) != 0) {
        sg_buf_printf(&ld->errors, "%s: out of memory\n", path);
        ld->nerrors++;
    }
    free(src);
    /* The index points into src: it is only good while loading. */
    sg_luasrc_free(&ld->idx);
    if (ld->nerrors) {
        sg_policy_free(p);
        return NULL;
    }
    return p;
}

sg_policy *sg_policy_load(const char *path, const sg_policy_limits *limits, char **err)
{
    loader ld;
    sg_policy *p = load_policy(path, limits, &ld);
    if (p) sg_policy_sources_hash(p->sb, p->hash);
    if (!p && err) {
        if (ld.errors.len && ld.errors.data[ld.errors.len - 1] == '\n')
            ld.errors.data[--ld.errors.len] = '\0';
        *err = sg_buf_steal(&ld.errors);
        if (!*err) *err = strdup("out of memory");
    }
    loader_free(&ld);
    return p;
}

void sg_policy_sources_hash(const sg_sandbox *sb, char out[SG_POLICY_HASH_LEN + 1])
{
    const sg_sandbox_source *src;
    int n = sg_sandbox_sources(sb, &src);
    unsigned char all[32];
    sg_buf digests = SG_BUF_INIT;
    for (int i = 0; i < n; i++)
        sg_buf_append(&digests, src[i].sha256, sizeof src[i].sha256);
    sg_sha256(digests.data ? digests.data : "", digests.len, all);
    sg_buf_free(&digests);
    sg_hex(all, SG_POLICY_HASH_LEN / 2, out);
}

int sg_policy_annotations_from_upstream(const sg_policy *p)
{
    return p->annotations_from_upstream;
}

const char *sg_policy_hash(const sg_policy *p)
{
    return p->hash;
}

void sg_policy_free(sg_policy *p)
{
    if (!p) return;
    sg_sandbox_free(p->sb);
    sg_universe_free(p->u);
    for (int w = 0; w < T_COUNT; w++)
        free(p->maps[w].slots);
    free(p->globs);
    free(p->functions);
    sg_arena_free(&p->arena);
    free(p->path);
    free(p);
}

/* ---- deciding ------------------------------------------------------------------------ */

static int glob_match(const char *pat, size_t plen, const char *s, size_t slen)
{
    size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;
    while (si < slen) {
        if (pi < plen && pat[pi] == '*') {
            star = pi++;
            mark = si;
        } else if (pi < plen && pat[pi] == s[si]) {
            pi++;
            si++;
        } else if (star != (size_t)-1) {
            pi = star + 1;
            si = ++mark;
        } else {
            return 0;
        }
    }
    while (pi < plen && pat[pi] == '*')
        pi++;
    return pi == plen;
}

static const rule *find_resource(const sg_policy *p, const char *uri)
{
    size_t len = strlen(uri);
    const rule *r = map_get(&p->maps[T_RESOURCES], uri, len);
    if (r) return r;
    for (size_t i = 0; i < p->nglobs; i++) {
        const rule *g = p->globs[i];
        if (g->tmpl ? template_match(g->tmpl, g->ntmpl, uri, len)
                    : glob_match(g->key, g->keylen, uri, len))
            return g;
    }
    return NULL;
}

static int is_builtin(const char *method)
{
    if (strncmp(method, "notifications/", 14) == 0) return 1;
    for (size_t i = 0; i < SG_ARRAY_LEN(builtin_methods); i++)
        if (strcmp(method, builtin_methods[i]) == 0) return 1;
    return 0;
}

/* Which rule decides this message; NULL means a built-in. A named tool,
 * prompt or resource that no rule names goes to `default`, in either phase. */
static const rule *select_rule(const sg_policy *p, const sg_policy_input *in)
{
    const char *m = in->method ? in->method : "";
    int list = in->phase == SG_PHASE_LIST;
    int tools = strcmp(m, "tools/call") == 0 || (list && strcmp(m, "tools/list") == 0);
    int prompts = strcmp(m, "prompts/get") == 0 || (list && strcmp(m, "prompts/list") == 0);
    int resources =
        strcmp(m, "resources/read") == 0 || strcmp(m, "resources/subscribe") == 0 ||
        strcmp(m, "resources/unsubscribe") == 0 ||
        (list && (strcmp(m, "resources/list") == 0 || strcmp(m, "resources/templates/list") == 0));
    if (in->name && (tools || prompts || resources)) {
        size_t len = strlen(in->name);
        const rule *r = tools     ? map_get(&p->maps[T_TOOLS], in->name, len)
                        : prompts ? map_get(&p->maps[T_PROMPTS], in->name, len)
                                  : find_resource(p, in->name);
        return r ? r : &p->default_rule;
    }
    const rule *r = map_get(&p->maps[T_METHODS], m, strlen(m));
    if (r) return r;
    return is_builtin(m) ? NULL : &p->default_rule;
}

typedef struct call_ctx {
    sg_policy *p;
    const rule *r;
    const sg_policy_input *in;
    sg_arena *arena;
    const sg_req *result;
} call_ctx;

static void push_req(lua_State *L, const sg_policy_input *in)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, in->phase == SG_PHASE_LIST ? "list" : "call");
    lua_setfield(L, -2, "phase");
    lua_pushstring(L, in->method ? in->method : "");
    lua_setfield(L, -2, "method");
    if (in->name) {
        lua_pushstring(L, in->name);
        lua_setfield(L, -2, "name");
    }
    if (in->protocol_version) {
        lua_pushstring(L, in->protocol_version);
        lua_setfield(L, -2, "protocol_version");
    }
    if (in->annotations) {
        sg_lua_push_json(L, in->annotations, 0);
        lua_setfield(L, -2, "annotations");
    }
    lua_createtable(L, 0, (int)(in->nheaders < 64 ? in->nheaders : 64));
    for (size_t i = 0; i < in->nheaders; i++) {
        if (!in->headers[i].name || !in->headers[i].value) continue;
        if (lua_getfield(L, -1, in->headers[i].name) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_pushstring(L, in->headers[i].value);
            lua_setfield(L, -2, in->headers[i].name);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_setfield(L, -2, "headers");
    if (in->token) {
        const sg_token *t = in->token;
        lua_createtable(L, 0, 5);
        if (t->sub) {
            lua_pushstring(L, t->sub);
            lua_setfield(L, -2, "sub");
        }
        if (t->client_id) {
            lua_pushstring(L, t->client_id);
            lua_setfield(L, -2, "client_id");
        }
        lua_createtable(L, 0, t->nscopes > 0 ? t->nscopes : 0);
        for (int i = 0; i < t->nscopes; i++) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, t->scopes[i]);
        }
        lua_setfield(L, -2, "scopes");
        const cJSON *claims = sg_token_claims(t);
        if (claims)
            sg_lua_push_json(L, claims, 0);
        else
            lua_newtable(L);
        lua_setfield(L, -2, "claims");
        if (t->exp > 0) {
            lua_pushinteger(L, (lua_Integer)t->exp);
            lua_setfield(L, -2, "expires_at");
        }
        lua_setfield(L, -2, "token");
    }
    if (in->phase == SG_PHASE_CALL) {
        if (in->arguments)
            sg_lua_push_json(L, in->arguments, 0);
        else
            lua_newtable(L);
        lua_setfield(L, -2, "arguments");
    } else {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &list_meta_key);
        lua_setmetatable(L, -2);
    }
}

static int call_rule(lua_State *L)
{
    call_ctx *cc = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, cc->r->ref);
    push_req(L, cc->in);
    lua_call(L, 1, 1);
    loader ld;
    memset(&ld, 0, sizeof ld);
    ld.p = cc->p;
    ld.L = L;
    ld.runtime = 1;
    ld.arena = cc->arena;
    int fn;
    cc->result = compile_req(&ld, lua_gettop(L), "", SG_LUASRC_NONE, 0, 1, &fn);
    if (!cc->result) {
        lua_pushfstring(L, "rule returned an invalid requirement: %s",
                        ld.runtime_error.data ? ld.runtime_error.data : "out of memory");
        sg_buf_free(&ld.runtime_error);
        return lua_error(L);
    }
    return 0;
}

/* Measures req.arguments as the limits count it: the bytes of every string
 * and key plus 8 per value, and the nesting of arrays and objects (the
 * arguments object itself is level 1). Stops counting past max_bytes.
 * Returns 0 when within both limits, else -1 with *bytes and *depth as far
 * as counted. */
static int measure_arguments(const cJSON *j, unsigned level, size_t max_bytes, unsigned max_depth,
                             size_t *bytes, unsigned *depth)
{
    if (level > *depth) *depth = level;
    if (level > max_depth) return -1;
    for (const cJSON *c = j->child; c; c = c->next) {
        *bytes += 8 + (c->string ? strlen(c->string) : 0);
        if (cJSON_IsString(c)) *bytes += strlen(c->valuestring);
        if (*bytes > max_bytes) return -1;
        if ((cJSON_IsArray(c) || cJSON_IsObject(c)) &&
            measure_arguments(c, level + 1, max_bytes, max_depth, bytes, depth) != 0)
            return -1;
    }
    return 0;
}

/* "file:12: rest" -> length of "file:12", or 0 when msg has no location. */
static size_t location_prefix(const char *msg)
{
    for (const char *c = strchr(msg, ':'); c; c = strchr(c + 1, ':')) {
        const char *d = c + 1;
        if (!isdigit((unsigned char)*d)) continue;
        while (isdigit((unsigned char)*d))
            d++;
        if (d[0] == ':' && d[1] == ' ' && !memchr(msg, '\n', (size_t)(c - msg)))
            return (size_t)(d - msg);
    }
    return 0;
}

/* A resource method's URI, in the list phase too (a resources/list item
 * is decided as resources/read of its uri; a template as its uriTemplate). */
static int names_resource(const sg_policy_input *in)
{
    const char *m = in->method ? in->method : "";
    return in->name && (strcmp(m, "resources/read") == 0 || strcmp(m, "resources/subscribe") == 0 ||
                        strcmp(m, "resources/unsubscribe") == 0);
}

int sg_policy_decide(sg_policy *p, const sg_policy_input *in, sg_arena *a, sg_policy_decision *out)
{
    /* Resource rules match the URI's normal form (uri.h), and function
     * rules see it as req.name; a URI without one is denied outright. */
    sg_policy_input normal;
    if (names_resource(in)) {
        sg_buf b = SG_BUF_INIT;
        const char *why;
        int rc = sg_uri_normalize(in->name, strlen(in->name), &b, &why);
        char *name = rc == 0 && sg_buf_ok(&b) ? sg_arena_strndup(a, b.data, b.len) : NULL;
        sg_buf_free(&b);
        if (!name) {
            out->file = p->path;
            out->req = &sg_req_deny;
            out->rule = "resource-uri";
            out->line = 0;
            out->audit = NULL;
            out->naudit = 0;
            out->error = rc == 0 ? "policy error (out of memory)" : NULL;
            return rc == 0 ? -1 : 0;
        }
        normal = *in;
        normal.name = name;
        in = &normal;
    }
    const rule *r = select_rule(p, in);
    out->file = p->path;
    out->error = NULL;
    out->audit = r ? r->audit : NULL;
    out->naudit = r ? r->naudit : 0;
    if (!r) {
        const char *m = in->method ? in->method : "";
        {
            out->req = p->any_public ? &sg_req_public : &sg_req_authenticated;
            size_t ml = strlen(m);
            char *name = sg_arena_alloc(a, 8 + ml + 1);
            if (name) {
                memcpy(name, "builtin.", 8);
                memcpy(name + 8, m, ml + 1);
            }
            out->rule = name ? name : "builtin";
            out->line = 0;
            return 0;
        }
    }
    out->rule = r->name;
    out->line = r->line;
    if (r->req) {
        out->req = r->req;
        return 0;
    }
    call_ctx cc = {p, r, in, a, NULL};
    sg_buf err = SG_BUF_INIT;
    const sg_sandbox_limits *lim = sg_sandbox_limits_of(p->sb);
    size_t abytes = 8;
    unsigned adepth = 0;
    if (in->phase == SG_PHASE_CALL && in->arguments &&
        measure_arguments(in->arguments, 1, lim->arguments_bytes, lim->arguments_depth, &abytes,
                          &adepth) != 0) {
        /* Refused before the rule runs: a rule's C library work grows with
         * what it is given, and the limits are what its budgets assume. */
        if (adepth > lim->arguments_depth)
            sg_buf_printf(&err,
                          "req.arguments is nested deeper than a policy accepts (more than %u "
                          "levels; see Limits in docs/policy.md)",
                          (unsigned)lim->arguments_depth);
        else
            sg_buf_printf(&err,
                          "req.arguments is larger than a policy accepts (more than %zu bytes of "
                          "strings and keys, 8 per value; see Limits in docs/policy.md)",
                          lim->arguments_bytes);
    } else if (sg_sandbox_call(p->sb, call_rule, &cc, 0, 0, &err) == 0) {
        out->req = cc.result;
        sg_buf_free(&err);
        return 0;
    }
    const char *msg = err.data ? err.data : "out of memory";
    size_t loc = location_prefix(msg);
    sg_buf full = SG_BUF_INIT;
    if (loc)
        sg_buf_printf(&full, "%.*s: %s: %s", (int)loc, msg, r->name, msg + loc + 2);
    else
        sg_buf_printf(&full, "%s:%d: %s: %s", p->path, r->line, r->name, msg);
    out->req = &sg_req_deny;
    out->error = full.data ? sg_arena_strndup(a, full.data, full.len) : NULL;
    if (!out->error) out->error = "policy error (out of memory)";
    sg_log(SG_LOG_ERROR, "policy error (request denied): %s", out->error);
    sg_buf_free(&full);
    sg_buf_free(&err);
    return -1;
}

/* ---- introspection ----------------------------------------------------------------- */

const char *sg_policy_path(const sg_policy *p)
{
    return p->path;
}

const char *sg_policy_realm(const sg_policy *p)
{
    return p->realm;
}

const char *sg_policy_resource(const sg_policy *p)
{
    return p->resource;
}

int sg_policy_authorization_servers(const sg_policy *p, const char *const **out)
{
    *out = p->auth_servers;
    return p->nauth_servers;
}

const sg_universe *sg_policy_universe(const sg_policy *p)
{
    return p->u;
}

int sg_policy_scopes_supported(const sg_policy *p, const char *const **out)
{
    *out = p->supported;
    return p->nsupported;
}

const sg_req *sg_policy_tool_requirement(const sg_policy *p, const char *name, int *dynamic)
{
    const rule *r = map_get(&p->maps[T_TOOLS], name, strlen(name));
    if (dynamic) *dynamic = r && !r->req;
    return r ? r->req : NULL;
}

int sg_policy_has_public_rule(const sg_policy *p)
{
    return p->any_public;
}

int sg_policy_function_scopes(const sg_policy *p, const sg_policy_scope_use **out)
{
    *out = p->fscopes;
    return p->nfscopes;
}

sg_sandbox *sg_policy_sandbox(sg_policy *p)
{
    return p->sb;
}

/* ---- check --------------------------------------------------------------------------- */

static int by_line(const void *a, const void *b)
{
    const rule *x = *(rule *const *)a, *y = *(rule *const *)b;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    return strcmp(x->name, y->name);
}

int sg_policy_check(const char *path, const sg_policy_limits *limits, sg_buf *report)
{
    return sg_policy_check_with(path, limits, report, NULL, NULL, NULL);
}

int sg_policy_check_hashed(const char *path, const sg_policy_limits *limits, sg_buf *report,
                           char hash[SG_POLICY_HASH_LEN + 1])
{
    return sg_policy_check_with(path, limits, report, NULL, NULL, hash);
}

int sg_policy_check_with(const char *path, const sg_policy_limits *limits, sg_buf *report,
                         void (*lint)(sg_policy *p, void *ctx), void *ctx,
                         char hash[SG_POLICY_HASH_LEN + 1])
{
    loader ld;
    sg_policy *p = load_policy(path, limits, &ld);
    if (hash) hash[0] = '\0';
    if (p && hash) sg_policy_sources_hash(p->sb, hash);
    int nerrors = ld.nerrors;
    if (ld.report.data) sg_buf_append(report, ld.report.data, ld.report.len);
    loader_free(&ld);
    if (!p) return nerrors ? nerrors : 1;

    /* A synthetic caller holding every scope, so rules take their normal path. */
    int n = sg_universe_size(p->u);
    const char **scopes = calloc((size_t)n + 1, sizeof *scopes);
    cJSON *claims = cJSON_CreateObject();
    if (!scopes || !claims) {
        free(scopes);
        cJSON_Delete(claims);
        sg_buf_printf(report, "%s:1: error: out of memory\n", path);
        sg_policy_free(p);
        return nerrors + 1;
    }
    for (int i = 0; i < n; i++)
        scopes[i] = sg_universe_name(p->u, i);
    cJSON_AddStringToObject(claims, "sub", "scopegate-check");
    sg_token tok = {.claims = claims,
                    .sub = "scopegate-check",
                    .client_id = "scopegate-check",
                    .exp = sg_now_unix() + 3600,
                    .nscopes = n,
                    .scopes = scopes};
    if (p->nfunctions > 1)
        qsort(p->functions, (size_t)p->nfunctions, sizeof *p->functions, by_line);
    sg_arena a;
    sg_arena_init(&a, 4096);
    for (int i = 0; i < p->nfunctions; i++) {
        const rule *r = p->functions[i];
        sg_policy_input in = {.phase = SG_PHASE_CALL, .method = r->key, .token = &tok};
        static const char *const list_methods[] = {"tools/list", "prompts/list", "resources/list"};
        for (int w = 0; w < T_METHODS; w++) {
            if (strncmp(r->name, table_names[w], strlen(table_names[w])) == 0 &&
                r->name[strlen(table_names[w])] == '.') {
                in.phase = SG_PHASE_LIST;
                in.method = list_methods[w];
                in.name = r->key;
            }
        }
        if (r == &p->default_rule) in.method = "scopegate/check";
        /* Call the rule directly: selection could pick a different one. */
        call_ctx cc = {p, r, &in, &a, NULL};
        sg_buf err = SG_BUF_INIT;
        if (sg_sandbox_call(p->sb, call_rule, &cc, 0, 0, &err) != 0) {
            const char *msg = err.data ? err.data : "out of memory";
            size_t loc = location_prefix(msg);
            if (loc)
                sg_buf_printf(report, "%.*s: error: %s: %s\n", (int)loc, msg, r->name,
                              msg + loc + 2);
            else
                sg_buf_printf(report, "%s:%d: error: %s: %s\n", path, r->line, r->name, msg);
            nerrors++;
        }
        sg_buf_free(&err);
        sg_arena_reset(&a);
    }
    sg_arena_free(&a);
    free(scopes);
    cJSON_Delete(claims);
    if (lint) lint(p, ctx);
    sg_policy_free(p);
    return nerrors;
}

/* ---- introspection for linters ----------------------------------------------------- */

void sg_policy_each_rule(const sg_policy *p,
                         void (*visit)(const sg_policy_rule_info *rule, void *ctx), void *ctx)
{
    for (int w = 0; w < T_COUNT; w++) {
        const rule_map *m = &p->maps[w];
        for (size_t i = 0; i < m->cap; i++) {
            const rule *r = m->slots[i];
            if (!r) continue;
            sg_policy_rule_info info = {.table = table_names[w],
                                        .key = r->key,
                                        .name = r->name,
                                        .line = r->line,
                                        .req = r->req};
            visit(&info, ctx);
        }
    }
    for (size_t i = 0; i < p->nglobs; i++) {
        const rule *r = p->globs[i];
        sg_policy_rule_info info = {
            .table = "resources", .key = r->key, .name = r->name, .line = r->line, .req = r->req};
        visit(&info, ctx);
    }
    /* An absent default has line 0; a written one has its key's line. */
    if (p->default_rule.line > 0) {
        const rule *r = &p->default_rule;
        sg_policy_rule_info info = {
            .table = "default", .key = r->key, .name = r->name, .line = r->line, .req = r->req};
        visit(&info, ctx);
    }
}

int sg_policy_scope_declared(const sg_policy *p, int id, int *line)
{
    int declared = id >= 0 && id < SG_MAX_SCOPES && sg_scopeset_has(&p->declared, id);
    if (line) *line = declared && id < p->ndeclared_lines ? p->declared_lines[id] : 0;
    return declared;
}

int sg_policy_advertise_line(const sg_policy *p)
{
    return p->advertise_line;
}

static const rule *find_function_rule(const sg_policy *p, const char *name)
{
    for (int i = 0; i < p->nfunctions; i++)
        if (strcmp(p->functions[i]->name, name) == 0) return p->functions[i];
    return NULL;
}

int sg_policy_rule_scopes(const sg_policy *p, const char *name, sg_scopeset *out)
{
    if (!find_function_rule(p, name)) return -1;
    const sg_policy_scope_use *uses;
    int n = sg_policy_function_scopes(p, &uses);
    for (int i = 0; i < n; i++) {
        if (strcmp(uses[i].rule, name) != 0) continue;
        int id = sg_universe_find(p->u, uses[i].scope, strlen(uses[i].scope));
        if (id >= 0) sg_scopeset_add(out, id);
    }
    return 0;
}
