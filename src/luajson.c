/* luajson.c -- cJSON to Lua (see luajson.h). */
#include "luajson.h"

#include <lauxlib.h>

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
