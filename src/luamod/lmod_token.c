/* lmod_token.c -- Lua bindings for token verification, minting and the
 * libjwt cross-check, so the busted specs drive the real C verifier.
 *
 *   core.verifier{ issuer=, audience=, leeway=, max_size=, require_exp=, required_claims={...},
 *                  cache_size=, keys={ {pem=|file=|secret=, alg=, kid=}, ... },
 *                  jwks=<json>, jwks_file=, jwks_url=, jwks_ttl=<s>,
 *                  refetch_interval=<s>, background_refresh=<bool> }
 *                  -> verifier, or nil, message
 *     v:verify(token [, now])         -> {sub=, client_id=, iss=, exp=, scopes={}, claims={}}
 *     v:verify_cached(token [, now])     or nil, code, message
 *     v:cache_stats() -> {hits=, misses=, evictions=, expired=, size=, capacity=}
 *     v:key_stats()   -> {fetches=, fetch_failures=, generation=, nkeys=}
 *     v:refresh()     -> true, or nil, message
 *   core.mint{ alg=, key_pem=|key_file=|secret=, kid=, claims=<json>, header=<json> }
 *       -> token, or nil, message
 *   core.libjwt_encode(alg, key_pem_or_secret, payload_json) -> token, or nil, message
 *   core.b64url_encode(s), core.b64url_decode(s) (nil when not canonical)
 *   core.token_errors() -> { {name=, message=}, ... } indexed by code
 *
 * libjwt appears only here: it is the independent minter the specs check
 * our verifier against, never part of the gateway. */
#include "luamod/lmod.h"
#include "policy/luajson.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jwt.h>

#include "base/base64url.h"
#include "auth/jwks.h"
#include "auth/mint.h"
#include "auth/token.h"

#define VERIFIER_METATABLE "scopegate.verifier"
#define MAX_KEY_FILE       (64 * 1024)

typedef struct lua_verifier {
    sg_keys *keys;
    sg_verifier *v;
    sg_tcache *cache;
} lua_verifier;

static int verifier_gc(lua_State *L)
{
    lua_verifier *u = luaL_checkudata(L, 1, VERIFIER_METATABLE);
    sg_tcache_free(u->cache);
    sg_verifier_free(u->v);
    sg_keys_free(u->keys);
    memset(u, 0, sizeof *u);
    return 0;
}

static lua_verifier *check_verifier(lua_State *L)
{
    lua_verifier *u = luaL_checkudata(L, 1, VERIFIER_METATABLE);
    if (!u->v) luaL_error(L, "verifier already closed");
    return u;
}

/* Optional typed fields of the table at index t. */
static const char *opt_string_field(lua_State *L, int t, const char *name, size_t *len)
{
    const char *s = NULL;
    int type = lua_getfield(L, t, name);
    if (type == LUA_TSTRING)
        s = lua_tolstring(L, -1, len); /* stays valid: the config table holds it */
    else if (type != LUA_TNIL)
        luaL_error(L, "%s must be a string", name);
    lua_pop(L, 1);
    return s;
}

static double opt_number_field(lua_State *L, int t, const char *name, double dflt)
{
    double d = dflt;
    int type = lua_getfield(L, t, name);
    if (type == LUA_TNUMBER)
        d = lua_tonumber(L, -1);
    else if (type != LUA_TNIL)
        luaL_error(L, "%s must be a number", name);
    lua_pop(L, 1);
    if (!isfinite(d) || d < 0 || d > 1e9) luaL_error(L, "%s is out of range", name);
    return d;
}

/* Adds every entry of cfg.keys. Returns 0, or -1 with err set. */
static int add_key_entries(lua_State *L, int cfg, sg_keys *keys, char *err, size_t errlen)
{
    int type = lua_getfield(L, cfg, "keys");
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TTABLE) luaL_error(L, "keys must be a list of tables");
    int list = lua_gettop(L);
    lua_Integer n = luaL_len(L, list);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_geti(L, list, i) != LUA_TTABLE) luaL_error(L, "keys[%d] must be a table", (int)i);
        int entry = lua_gettop(L);
        size_t pem_len = 0, secret_len = 0;
        const char *alg = opt_string_field(L, entry, "alg", NULL);
        const char *kid = opt_string_field(L, entry, "kid", NULL);
        const char *pem = opt_string_field(L, entry, "pem", &pem_len);
        const char *file = opt_string_field(L, entry, "file", NULL);
        const char *secret = opt_string_field(L, entry, "secret", &secret_len);
        int rc;
        if (!alg) luaL_error(L, "keys[%d] needs alg", (int)i);
        if (!!pem + !!file + !!secret != 1)
            luaL_error(L, "keys[%d] needs exactly one of pem, file, secret", (int)i);
        if (pem)
            rc = sg_keys_add_pem(keys, pem, pem_len, alg, kid, err, errlen);
        else if (file)
            rc = sg_keys_add_pem_file(keys, file, alg, kid, err, errlen);
        else
            rc = sg_keys_add_secret(keys, secret, secret_len, alg, kid, err, errlen);
        lua_pop(L, 1);
        if (rc != 0) {
            lua_pop(L, 1);
            return -1;
        }
    }
    lua_pop(L, 1);
    return 0;
}

static int l_verifier(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    sg_verifier_config cfg;
    sg_verifier_config_init(&cfg);
    cfg.issuer = opt_string_field(L, 1, "issuer", NULL);
    cfg.audience = opt_string_field(L, 1, "audience", NULL);
    cfg.leeway_s = (int)opt_number_field(L, 1, "leeway", cfg.leeway_s);
    cfg.max_token_bytes = (size_t)opt_number_field(L, 1, "max_size", (double)cfg.max_token_bytes);
    if (lua_getfield(L, 1, "require_exp") != LUA_TNIL) cfg.require_exp = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "required_claims") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        lua_Unsigned n = lua_rawlen(L, -1);
        if (n > SG_VERIFIER_MAX_REQUIRED_CLAIMS) luaL_error(L, "too many required_claims");
        for (lua_Unsigned i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            /* the table (an argument) keeps the string; the verifier copies it */
            cfg.required_claims[cfg.nrequired_claims++] = luaL_checkstring(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    size_t cache_size = (size_t)opt_number_field(L, 1, "cache_size", 0);
    size_t jwks_len = 0;
    const char *jwks = opt_string_field(L, 1, "jwks", &jwks_len);
    const char *jwks_file = opt_string_field(L, 1, "jwks_file", NULL);
    const char *jwks_url = opt_string_field(L, 1, "jwks_url", NULL);
    double ttl = opt_number_field(L, 1, "jwks_ttl", 0);
    double refetch = opt_number_field(L, 1, "refetch_interval", 0);
    lua_getfield(L, 1, "background_refresh");
    int background = lua_toboolean(L, -1);
    lua_pop(L, 1);

    /* The userdata owns everything from here on, so a Lua error cannot leak. */
    lua_verifier *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    luaL_setmetatable(L, VERIFIER_METATABLE);
    char err[512] = "out of memory";
    if (!(u->keys = sg_keys_new())) goto fail;
    if (add_key_entries(L, 1, u->keys, err, sizeof err) != 0) goto fail;
    if (jwks && sg_keys_add_jwks(u->keys, jwks, jwks_len, err, sizeof err) != 0) goto fail;
    if (jwks_file && sg_keys_add_jwks_file(u->keys, jwks_file, err, sizeof err) != 0) goto fail;
    if (jwks_url && sg_keys_set_jwks_url(u->keys, jwks_url, (uint64_t)(ttl * 1000),
                                         (uint64_t)(refetch * 1000), err, sizeof err) != 0)
        goto fail;
    if (background && sg_keys_start_refresher(u->keys, err, sizeof err) != 0) goto fail;
    if (!(u->v = sg_verifier_new(&cfg, u->keys, err, sizeof err))) goto fail;
    if (!(u->cache = sg_tcache_new(u->v, cache_size))) goto fail;
    return 1;
fail:
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2; /* the half-built userdata is collected by __gc */
}

static int push_result(lua_State *L, sg_token_err e, const sg_token *t)
{
    if (e != SG_TOKEN_OK) {
        lua_pushnil(L);
        lua_pushstring(L, sg_token_error_name(e));
        lua_pushstring(L, sg_token_error_message(e));
        return 3;
    }
    lua_createtable(L, 0, 6);
    sg_lua_setstring(L, "sub", t->sub);
    sg_lua_setstring(L, "client_id", t->client_id);
    sg_lua_setstring(L, "iss", t->iss);
    lua_pushinteger(L, t->exp);
    lua_setfield(L, -2, "exp");
    lua_createtable(L, t->nscopes, 0);
    for (int i = 0; i < t->nscopes; i++) {
        lua_pushstring(L, t->scopes[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "scopes");
    const cJSON *claims = sg_token_claims(t);
    if (claims)
        sg_lua_push_json(L, claims, 0);
    else
        lua_newtable(L);
    lua_setfield(L, -2, "claims");
    return 1;
}

/* Pushes a result table from a pointer argument: run under lua_pcall so a
 * memory error while building tables cannot leak C-owned data. */
typedef struct push_args {
    sg_token_err e;
    const sg_token *t;
    const char *s;
    size_t n;
} push_args;

static int push_result_unprotected(lua_State *L)
{
    const push_args *a = lua_touserdata(L, 1);
    return a->s ? (lua_pushlstring(L, a->s, a->n), 1) : push_result(L, a->e, a->t);
}

/* Returns the number of results pushed, or -1 with the error object on the
 * stack (the caller frees its data, then raises it with lua_error). */
static int push_protected(lua_State *L, push_args *a)
{
    lua_pushcfunction(L, push_result_unprotected);
    lua_pushlightuserdata(L, a);
    int top = lua_gettop(L) - 2;
    if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) return -1;
    return lua_gettop(L) - top;
}

static int l_verify(lua_State *L)
{
    lua_verifier *u = check_verifier(L);
    size_t len;
    const char *tok = luaL_checklstring(L, 2, &len);
    int64_t now = (int64_t)luaL_optinteger(L, 3, sg_now_unix());
    sg_token *t = NULL;
    push_args a = {.e = sg_token_verify(u->v, tok, len, now, &t)};
    a.t = t;
    int n = push_protected(L, &a);
    sg_token_free(t);
    return n < 0 ? lua_error(L) : n;
}

static int l_verify_cached(lua_State *L)
{
    lua_verifier *u = check_verifier(L);
    size_t len;
    const char *tok = luaL_checklstring(L, 2, &len);
    int64_t now = (int64_t)luaL_optinteger(L, 3, sg_now_unix());
    const sg_token *t = NULL;
    sg_token_err e = sg_tcache_verify(u->cache, tok, len, now, &t);
    return push_result(L, e, t);
}

static void set_int(lua_State *L, const char *name, lua_Integer value)
{
    lua_pushinteger(L, value);
    lua_setfield(L, -2, name);
}

static int l_cache_stats(lua_State *L)
{
    lua_verifier *u = check_verifier(L);
    sg_tcache_stats s;
    sg_tcache_get_stats(u->cache, &s);
    lua_createtable(L, 0, 6);
    set_int(L, "hits", (lua_Integer)s.hits);
    set_int(L, "misses", (lua_Integer)s.misses);
    set_int(L, "evictions", (lua_Integer)s.evictions);
    set_int(L, "expired", (lua_Integer)s.expired);
    set_int(L, "size", (lua_Integer)s.size);
    set_int(L, "capacity", (lua_Integer)s.capacity);
    return 1;
}

static int l_key_stats(lua_State *L)
{
    lua_verifier *u = check_verifier(L);
    sg_keys_stats s;
    sg_keys_get_stats(u->keys, &s);
    lua_createtable(L, 0, 4);
    set_int(L, "fetches", (lua_Integer)s.fetches);
    set_int(L, "fetch_failures", (lua_Integer)s.fetch_failures);
    set_int(L, "generation", (lua_Integer)s.generation);
    set_int(L, "nkeys", s.nkeys);
    return 1;
}

static int l_refresh(lua_State *L)
{
    lua_verifier *u = check_verifier(L);
    char err[512];
    if (sg_keys_refresh(u->keys, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_mint(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    size_t key_len = 0, secret_len = 0;
    const char *alg = opt_string_field(L, 1, "alg", NULL);
    const char *kid = opt_string_field(L, 1, "kid", NULL);
    const char *claims = opt_string_field(L, 1, "claims", NULL);
    const char *header = opt_string_field(L, 1, "header", NULL);
    const char *key_pem = opt_string_field(L, 1, "key_pem", &key_len);
    const char *key_file = opt_string_field(L, 1, "key_file", NULL);
    const char *secret = opt_string_field(L, 1, "secret", &secret_len);
    if (!alg || !claims) luaL_error(L, "mint needs alg and claims");
    if (!!key_pem + !!key_file + !!secret != 1)
        luaL_error(L, "mint needs exactly one of key_pem, key_file, secret");
    char *file_data = NULL;
    const char *key = key_pem ? key_pem : secret;
    size_t len = key_pem ? key_len : secret_len;
    if (key_file) {
        file_data = sg_read_file(key_file, MAX_KEY_FILE, &len);
        if (!file_data) {
            lua_pushnil(L);
            lua_pushfstring(L, "cannot read %s", key_file);
            return 2;
        }
        key = file_data;
    }
    sg_buf out = SG_BUF_INIT;
    char err[256];
    int rc = sg_token_mint(alg, key, len, kid, header, claims, &out, err, sizeof err);
    if (file_data) {
        OPENSSL_cleanse(file_data, len);
        free(file_data);
    }
    if (rc != 0 || !sg_buf_ok(&out)) {
        sg_buf_free(&out);
        lua_pushnil(L);
        lua_pushstring(L, rc != 0 ? err : "out of memory");
        return 2;
    }
    push_args a = {.s = out.data, .n = out.len};
    int n = push_protected(L, &a);
    sg_buf_free(&out);
    return n < 0 ? lua_error(L) : n;
}

static int l_libjwt_encode(lua_State *L)
{
    const char *alg = luaL_checkstring(L, 1);
    size_t key_len;
    const char *key = luaL_checklstring(L, 2, &key_len);
    const char *payload = luaL_checkstring(L, 3);
    jwt_alg_t jalg = jwt_str_alg(alg);
    if (jalg == JWT_ALG_NONE || jalg == JWT_ALG_INVAL) luaL_argerror(L, 1, "unsupported alg");
    jwt_t *jwt = NULL;
    char *out = NULL;
    if (jwt_new(&jwt) == 0 && jwt_add_grants_json(jwt, payload) == 0 &&
        jwt_set_alg(jwt, jalg, (const unsigned char *)key, (int)key_len) == 0)
        out = jwt_encode_str(jwt);
    jwt_free(jwt);
    if (!out) {
        lua_pushnil(L);
        lua_pushstring(L, "libjwt could not encode the token");
        return 2;
    }
    push_args a = {.s = out, .n = strlen(out)};
    int n = push_protected(L, &a);
    free(out); /* libjwt 1.10 has no jwt_free_str */
    return n < 0 ? lua_error(L) : n;
}

static int l_b64url_encode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    sg_buf out = SG_BUF_INIT;
    sg_b64url_encode(&out, (const unsigned char *)s, len);
    if (!sg_buf_ok(&out)) {
        sg_buf_free(&out);
        return luaL_error(L, "out of memory");
    }
    lua_pushlstring(L, out.data ? out.data : "", out.len);
    sg_buf_free(&out);
    return 1;
}

static int l_b64url_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, sg_b64url_decoded_max(len));
    long n = sg_b64url_decode(s, len, out);
    if (n < 0) {
        lua_pushnil(L);
        return 1;
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

static int l_token_errors(lua_State *L)
{
    lua_createtable(L, SG_TOKEN_ERR_COUNT, 0);
    for (int e = 0; e < SG_TOKEN_ERR_COUNT; e++) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, sg_token_error_name((sg_token_err)e));
        lua_setfield(L, -2, "name");
        lua_pushstring(L, sg_token_error_message((sg_token_err)e));
        lua_setfield(L, -2, "message");
        lua_rawseti(L, -2, e);
    }
    return 1;
}

void sg_lmod_token(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"verify", l_verify},           {"verify_cached", l_verify_cached},
        {"cache_stats", l_cache_stats}, {"key_stats", l_key_stats},
        {"refresh", l_refresh},         {NULL, NULL},
    };
    if (luaL_newmetatable(L, VERIFIER_METATABLE)) {
        lua_pushcfunction(L, verifier_gc);
        lua_setfield(L, -2, "__gc");
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    static const luaL_Reg functions[] = {
        {"verifier", l_verifier},
        {"mint", l_mint},
        {"libjwt_encode", l_libjwt_encode},
        {"b64url_encode", l_b64url_encode},
        {"b64url_decode", l_b64url_decode},
        {"token_errors", l_token_errors},
        {NULL, NULL},
    };
    luaL_setfuncs(L, functions, 0);
}
