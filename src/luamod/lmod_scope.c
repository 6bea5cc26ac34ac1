/* lmod_scope.c -- Lua bindings for the scope algebra and challenges.
 *
 * Requirements cross this boundary in a compact test notation, independent
 * of the policy file syntax so that the algebra can be tested exhaustively
 * on its own: "a" (a scope), "public", "authenticated", false (deny), and
 * { "all", r1, r2, ... } / { "any", r1, r2, ... }. */
#include <string.h>

#include "auth/challenge.h"
#include "luamod/lmod.h"

#define UNIVERSE_MT "scopegate.universe"

static sg_universe *check_universe(lua_State *L, int idx)
{
    sg_universe **pu = luaL_checkudata(L, idx, UNIVERSE_MT);
    if (!*pu) luaL_error(L, "universe already freed");
    return *pu;
}

static int universe_gc(lua_State *L)
{
    sg_universe **pu = luaL_checkudata(L, 1, UNIVERSE_MT);
    sg_universe_free(*pu);
    *pu = NULL;
    return 0;
}

/* core.universe({ "a", "b", ... } [, { {"a","b"}, ... } implies]) */
static int l_universe(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sg_universe **pu = lua_newuserdatauv(L, sizeof *pu, 0);
    *pu = NULL;
    luaL_setmetatable(L, UNIVERSE_MT);
    sg_universe *u = sg_universe_new();
    if (!u) return luaL_error(L, "out of memory");
    *pu = u;
    lua_Integer n = luaL_len(L, 1);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_geti(L, 1, i);
        const char *s = luaL_checklstring(L, -1, &len);
        if (sg_universe_add(u, s, len) < 0) return luaL_error(L, "invalid scope '%s'", s);
        lua_pop(L, 1);
    }
    if (lua_istable(L, 2)) {
        n = luaL_len(L, 2);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(L, 2, i);
            lua_geti(L, -1, 1);
            lua_geti(L, -2, 2);
            size_t la, lb;
            const char *a = luaL_checklstring(L, -2, &la), *b = luaL_checklstring(L, -1, &lb);
            int ia = sg_universe_find(u, a, la), ib = sg_universe_find(u, b, lb);
            if (ia < 0 || ib < 0) return luaL_error(L, "implies names an unknown scope");
            sg_universe_imply(u, ia, ib);
            lua_pop(L, 3);
        }
    }
    if (sg_universe_seal(u) != 0) return luaL_error(L, "out of memory");
    return 1;
}

static const sg_req *to_req(lua_State *L, const sg_universe *u, int idx, sg_arena *a, int depth)
{
    idx = lua_absindex(L, idx);
    if (depth > 32) luaL_error(L, "requirement nested too deeply");
    if (lua_isboolean(L, idx) && !lua_toboolean(L, idx)) return &sg_req_deny;
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strcmp(s, "public") == 0) return &sg_req_public;
        if (strcmp(s, "authenticated") == 0) return &sg_req_authenticated;
        int id = sg_universe_find(u, s, len);
        if (id < 0) luaL_error(L, "unknown scope '%s'", s);
        return sg_req_leaf(a, SG_REQ_SCOPE, id);
    }
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_geti(L, idx, 1);
    const char *op = luaL_checkstring(L, -1);
    sg_req_kind kind = strcmp(op, "all") == 0 ? SG_REQ_ALL : SG_REQ_ANY;
    if (kind == SG_REQ_ANY && strcmp(op, "any") != 0) luaL_error(L, "unknown operator '%s'", op);
    lua_pop(L, 1);
    int n = (int)luaL_len(L, idx) - 1;
    sg_req *r = sg_req_group(a, kind, n);
    if (!r) luaL_error(L, "out of memory");
    for (int i = 0; i < n; i++) {
        lua_geti(L, idx, i + 2);
        r->kids[i] = to_req(L, u, -1, a, depth + 1);
        lua_pop(L, 1);
    }
    return r;
}

/* Reads a list of granted scope names into a set (unknown names ignored). */
static void to_set(lua_State *L, const sg_universe *u, int idx, sg_scopeset *s)
{
    sg_scopeset_clear(s);
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_Integer n = luaL_len(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_geti(L, idx, i);
        const char *name = luaL_checklstring(L, -1, &len);
        int id = sg_universe_find(u, name, len);
        if (id >= 0) sg_scopeset_add(s, id);
        lua_pop(L, 1);
    }
}

static void push_set(lua_State *L, const sg_universe *u, const sg_scopeset *s)
{
    sg_buf b = SG_BUF_INIT;
    sg_universe_format(u, s, &b);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    sg_buf_free(&b);
}

/* The arena lives in a userdata so a Lua error cannot leak it. */
static int arena_gc(lua_State *L)
{
    sg_arena_free(lua_touserdata(L, 1));
    return 0;
}

static sg_arena *push_arena(lua_State *L)
{
    sg_arena *a = lua_newuserdatauv(L, sizeof *a, 0);
    sg_arena_init(a, 1024);
    if (luaL_newmetatable(L, "scopegate.arena")) {
        lua_pushcfunction(L, arena_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return a;
}

/* U:satisfied(req, granted, has_token) -> boolean, computed on the closure */
static int u_satisfied(lua_State *L)
{
    sg_universe *u = check_universe(L, 1);
    sg_arena *a = push_arena(L);
    const sg_req *r = to_req(L, u, 2, a, 0);
    sg_scopeset granted, eff;
    to_set(L, u, 3, &granted);
    sg_universe_effective(u, &granted, &eff);
    lua_pushboolean(L, sg_req_satisfied(r, lua_toboolean(L, 4), &eff));
    return 1;
}

/* U:stepup(req, granted) -> "a b" (canonical order) or nil when unsatisfiable */
static int u_stepup(lua_State *L)
{
    sg_universe *u = check_universe(L, 1);
    sg_arena *a = push_arena(L);
    const sg_req *r = to_req(L, u, 2, a, 0);
    sg_scopeset granted, eff, add;
    to_set(L, u, 3, &granted);
    sg_universe_effective(u, &granted, &eff);
    if (sg_req_stepup(u, r, &eff, &add) != 0) return 0;
    push_set(L, u, &add);
    return 1;
}

/* U:effective(granted) -> "a b c" */
static int u_effective(lua_State *L)
{
    sg_universe *u = check_universe(L, 1);
    sg_scopeset granted, eff;
    to_set(L, u, 2, &granted);
    sg_universe_effective(u, &granted, &eff);
    push_set(L, u, &eff);
    return 1;
}

static int u_describe(lua_State *L)
{
    sg_universe *u = check_universe(L, 1);
    sg_arena *a = push_arena(L);
    sg_req *r = (sg_req *)to_req(L, u, 2, a, 0);
    sg_buf b = SG_BUF_INIT;
    if (lua_isstring(L, 3) && r->kind >= SG_REQ_SCOPE) r->why = lua_tostring(L, 3);
    sg_req_describe(u, r, &b);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    sg_buf_free(&b);
    return 1;
}

/* U:decide(req, granted_or_nil, token_error, realm, resource_metadata)
 * -> { status=, outcome=, challenge=, message=, scope= } */
static const char *const outcome_names[] = {
    [SG_ALLOW] = "allow",
    [SG_UNAUTHORIZED] = "unauthorized",
    [SG_FORBIDDEN] = "forbidden",
    [SG_DENIED] = "denied",
};
_Static_assert(sizeof outcome_names / sizeof *outcome_names == SG_OUTCOME_COUNT, "every outcome");

static int u_decide(lua_State *L)
{
    const char *const *outcomes = outcome_names;
    sg_universe *u = check_universe(L, 1);
    lua_settop(L, 6); /* optional arguments become nil, the arena goes above */
    sg_arena *a = push_arena(L);
    const sg_req *r = to_req(L, u, 2, a, 0);
    sg_token tok;
    memset(&tok, 0, sizeof tok);
    const char *scopes[64];
    if (lua_istable(L, 3)) {
        lua_Integer n = luaL_len(L, 3);
        if (n > 64) return luaL_error(L, "at most 64 granted scopes");
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(L, 3, i);
            scopes[i - 1] = luaL_checkstring(L, -1);
            lua_pop(L, 1); /* the string stays referenced by the table */
        }
        tok.nscopes = (int)n;
        tok.scopes = scopes;
    }
    sg_site site = {.universe = u,
                    .realm = luaL_optstring(L, 5, NULL),
                    .resource_metadata = luaL_optstring(L, 6, NULL)};
    sg_decision d;
    sg_decision_init(&d);
    sg_decide(&site, r, lua_istable(L, 3) ? &tok : NULL, luaL_optstring(L, 4, NULL), &d);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, d.status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, outcomes[d.outcome]);
    lua_setfield(L, -2, "outcome");
    if (d.challenge.len) {
        lua_pushlstring(L, d.challenge.data, d.challenge.len);
        lua_setfield(L, -2, "challenge");
    }
    lua_pushstring(L, d.message.data ? d.message.data : "");
    lua_setfield(L, -2, "message");
    push_set(L, u, &d.scope);
    lua_setfield(L, -2, "scope");
    sg_decision_free(&d);
    return 1;
}

static int l_scope_token_valid(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_pushboolean(L, sg_scope_token_valid(s, len));
    return 1;
}

/* core.challenge{ realm=, error=, scope=, resource_metadata=, error_description= } */
static int l_challenge(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "realm");
    lua_getfield(L, 1, "error");
    lua_getfield(L, 1, "scope");
    lua_getfield(L, 1, "resource_metadata");
    lua_getfield(L, 1, "error_description");
    sg_challenge c = {.realm = lua_tostring(L, 2),
                      .error = lua_tostring(L, 3),
                      .scope = lua_tostring(L, 4),
                      .resource_metadata = lua_tostring(L, 5),
                      .error_description = lua_tostring(L, 6)};
    sg_buf b = SG_BUF_INIT;
    sg_challenge_format(&c, &b);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    sg_buf_free(&b);
    return 1;
}

void sg_lmod_scope(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"satisfied", u_satisfied}, {"stepup", u_stepup}, {"effective", u_effective},
        {"describe", u_describe},   {"decide", u_decide}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, UNIVERSE_MT)) {
        lua_pushcfunction(L, universe_gc);
        lua_setfield(L, -2, "__gc");
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_universe);
    lua_setfield(L, -2, "universe");
    lua_pushcfunction(L, l_scope_token_valid);
    lua_setfield(L, -2, "scope_token_valid");
    lua_pushcfunction(L, l_challenge);
    lua_setfield(L, -2, "challenge");
}
