/* rules.c -- loads the rule tables (tools, prompts, resources, methods,
 * default) into the policy's hash tables (see policy_impl.h).
 *
 * Each rule becomes a `rule`: a static requirement compiled once
 * (compile.c), or a reference to a function that runs per request; with
 * its `audit` list of argument paths and, for resources, its compiled key
 * (resource.c). Deciding a static rule is then a hash lookup. */
#include "policy/policy_impl.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

static rule *new_rule(loader *ld, const char *table, const char *key, size_t keylen, int line)
{
    sg_policy *p = ld->p;
    rule *r = sg_arena_alloc(&p->arena, sizeof *r);
    if (!r) luaL_error(ld->L, "out of memory");
    memset(r, 0, sizeof *r);
    r->key = policy_arena_copy(ld, &p->arena, key, keylen);
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

/* Compiles the rule value on top of the stack into r (static or function).
 * Returns 0, or -1 after reporting. */
static int compile_rule_value(loader *ld, rule *r, size_t from)
{
    lua_State *L = ld->L;
    int fn = 0;
    const sg_req *req = policy_compile_rule(ld, lua_gettop(L), r->name, from, &fn);
    if (fn) {
        lua_Debug ar;
        lua_pushvalue(L, -1);
        if (lua_getinfo(L, ">S", &ar) && ar.linedefined > 0) {
            r->line = ar.linedefined;
            if (ar.source && ar.source[0] == '@')
                policy_scan_function(ld, r, ar.source + 1, ar.linedefined, ar.lastlinedefined);
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
    int line = policy_line_near(ld, SG_LUASRC_KEY, "audit", 5, from);
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
        policy_finding(
            ld, 1, line, r->name,
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
                policy_finding(
                    ld, 1, policy_line_near(ld, SG_LUASRC_LITERAL, s, len, from), r->name,
                    "audit: %s is not an argument path (write \"arguments.<key>\" or "
                    "\"arguments.<key>.<key>\": up to %d keys of letters, digits, '_' and '-')",
                    policy_quoted(q, sizeof q, s, len), MAX_AUDIT_KEYS);
            else
                policy_finding(ld, 1, line, r->name,
                               "audit: entry %d is a %s, not an argument path", (int)i,
                               luaL_typename(L, -1));
            ok = 0;
        } else {
            paths[i - 1] = policy_arena_copy(ld, &ld->p->arena, s, len);
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
            if (k) policy_quoted(q, sizeof q, k, strlen(k));
            policy_finding(
                ld, 1, sg_luasrc_line(&ld->idx, from), r->name,
                "a rule written as { rule = ..., audit = ... } takes no other key (found %s)", q);
            ok = 0;
        }
    }
    int rc = ok ? compile_rule_value(ld, r, from) : -1;
    lua_pop(L, 1);
    return rc == 0 && audit_rc == 0 ? 0 : -1;
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

void policy_load_rules(loader *ld, int policy, int which)
{
    lua_State *L = ld->L;
    sg_policy *p = ld->p;
    const char *tname = policy_table_names[which];
    size_t from = policy_key_offset(ld, tname);
    int t = policy_get_top(ld, policy, tname);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (t != LUA_TTABLE) {
        policy_finding(ld, 1, sg_luasrc_line(&ld->idx, from), tname,
                       "must be a table of name = requirement, got %s", luaL_typename(L, -1));
        lua_pop(L, 1);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            policy_finding(
                ld, 1, sg_luasrc_line(&ld->idx, from), tname,
                "keys must be names (found a %s key: write name = requirement, not a list)",
                luaL_typename(L, -2));
            lua_pop(L, 1);
            continue;
        }
        size_t len;
        const char *k = lua_tolstring(L, -2, &len);
        size_t kfrom = sg_luasrc_find(&ld->idx, SG_LUASRC_KEY, k, len, from);
        if (len == 0 || len > MAX_NAME_LEN || strlen(k) != len) {
            policy_finding(ld, 1, sg_luasrc_line(&ld->idx, kfrom != SG_LUASRC_NONE ? kfrom : from),
                           tname, "names must be 1-%d bytes without NUL", MAX_NAME_LEN);
            lua_pop(L, 1);
            continue;
        }
        rule *r = new_rule(ld, tname, k, len,
                           sg_luasrc_line(&ld->idx, kfrom != SG_LUASRC_NONE ? kfrom : from));
        int is_template = which == T_RESOURCES && (memchr(k, '{', len) || memchr(k, '}', len));
        if (is_template && policy_compile_template(ld, r) != 0) {
            lua_pop(L, 1);
            continue;
        }
        if (which == T_RESOURCES && !is_template && policy_resource_key_abnormal(ld, r, k, len)) {
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
            if (is_template && policy_map_put(&p->maps[which], r) != 0)
                luaL_error(L, "out of memory");
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
            } else if (policy_map_put(&p->maps[which], r) != 0) {
                luaL_error(L, "out of memory");
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (which == T_RESOURCES && p->nglobs > 1)
        qsort(p->globs, p->nglobs, sizeof *p->globs, policy_glob_order);
}

void policy_load_default(loader *ld, int policy)
{
    lua_State *L = ld->L;
    sg_policy *p = ld->p;
    size_t from = policy_key_offset(ld, "default");
    int t = policy_get_top(ld, policy, "default");
    if (t != LUA_TNIL) {
        rule *r = new_rule(ld, NULL, "default", 7, sg_luasrc_line(&ld->idx, from));
        if (compile_rule(ld, r, from) == 0) p->default_rule = *r;
        if (r->req && anonymous_allowed(r->req)) p->any_public = 1;
        if (r->ref != LUA_NOREF) p->functions[p->nfunctions - 1] = &p->default_rule;
    }
    lua_pop(L, 1);
}
