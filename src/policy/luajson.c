/* luajson.c -- cJSON to Lua and Lua to cJSON (see luajson.h). */
#include "policy/luajson.h"

#include <math.h>
#include <string.h>

#include <lauxlib.h>

#include "base/sg.h"

static void push(lua_State *L, const cJSON *j, int null_sentinel, int depth)
{
    if (depth > SG_LUAJSON_MAX_DEPTH)
        luaL_error(L, "JSON nested deeper than %d", SG_LUAJSON_MAX_DEPTH);
    luaL_checkstack(L, 4, "JSON too deep");
    if (cJSON_IsString(j)) {
        lua_pushstring(L, j->valuestring ? j->valuestring : "");
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d >= -9007199254740992.0 && d <= 9007199254740992.0 && d == (double)(lua_Integer)d)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
    } else if (cJSON_IsBool(j)) {
        lua_pushboolean(L, cJSON_IsTrue(j));
    } else if (cJSON_IsArray(j)) {
        lua_createtable(L, cJSON_GetArraySize(j), 0);
        lua_Integer i = 1;
        for (const cJSON *c = j->child; c; c = c->next) {
            push(L, c, null_sentinel, depth + 1);
            lua_rawseti(L, -2, i++);
        }
    } else if (cJSON_IsObject(j)) {
        lua_newtable(L);
        for (const cJSON *c = j->child; c; c = c->next) {
            if (!c->string) continue;
            lua_pushstring(L, c->string);
            if (lua_rawget(L, -2) != LUA_TNIL) { /* a duplicate: the first wins */
                lua_pop(L, 1);
                continue;
            }
            lua_pop(L, 1);
            lua_pushstring(L, c->string);
            push(L, c, null_sentinel, depth + 1);
            lua_rawset(L, -3);
        }
    } else if (null_sentinel) {
        lua_pushlightuserdata(L, NULL);
    } else {
        lua_pushnil(L);
    }
}

void sg_lua_push_json(lua_State *L, const cJSON *j, int null_sentinel)
{
    push(L, j, null_sentinel, 0);
}

/* 1 when the table at idx (absolute) has exactly the keys 1..n, n > 0. */
static int is_array(lua_State *L, int idx)
{
    lua_Unsigned n = lua_rawlen(L, idx), count = 0;
    if (n == 0) return 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
            (lua_Unsigned)lua_tointeger(L, -1) > n) {
            lua_pop(L, 1);
            return 0;
        }
        count++;
    }
    return count == n;
}

static cJSON *to_json(lua_State *L, int idx, int depth, char *err, size_t errlen)
{
    if (depth > SG_LUAJSON_MAX_DEPTH || !lua_checkstack(L, 4)) {
        sg_errf(err, errlen, "nested deeper than %d", SG_LUAJSON_MAX_DEPTH);
        return NULL;
    }
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strlen(s) != len) {
            sg_errf(err, errlen, "a string holds a NUL byte");
            return NULL;
        }
        return cJSON_CreateString(s);
    }
    case LUA_TBOOLEAN:
        return cJSON_CreateBool(lua_toboolean(L, idx));
    case LUA_TNUMBER: {
        double d = lua_isinteger(L, idx) ? (double)lua_tointeger(L, idx) : lua_tonumber(L, idx);
        if (!isfinite(d)) {
            sg_errf(err, errlen, "a number is not finite");
            return NULL;
        }
        return cJSON_CreateNumber(d);
    }
    case LUA_TTABLE:
        break;
    default:
        sg_errf(err, errlen, "a %s cannot be JSON", luaL_typename(L, idx));
        return NULL;
    }
    int array = is_array(L, idx);
    cJSON *out = array ? cJSON_CreateArray() : cJSON_CreateObject();
    if (!out) goto oom;
    if (array) {
        lua_Unsigned n = lua_rawlen(L, idx);
        for (lua_Unsigned i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            cJSON *v = to_json(L, -1, depth + 1, err, errlen);
            lua_pop(L, 1);
            if (!v) goto fail;
            cJSON_AddItemToArray(out, v);
        }
        return out;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            sg_errf(err, errlen, "an object key must be a string, not a %s", luaL_typename(L, -2));
            lua_pop(L, 2);
            goto fail;
        }
        cJSON *v = to_json(L, -1, depth + 1, err, errlen);
        lua_pop(L, 1);
        if (!v) {
            lua_pop(L, 1);
            goto fail;
        }
        cJSON_AddItemToObject(out, lua_tostring(L, -1), v);
    }
    return out;
oom:
    sg_errf(err, errlen, "out of memory");
fail:
    cJSON_Delete(out);
    return NULL;
}

cJSON *sg_lua_to_json(lua_State *L, int idx, char *err, size_t errlen)
{
    return to_json(L, idx, 0, err, errlen);
}
