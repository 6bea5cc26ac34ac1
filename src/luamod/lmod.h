/* lmod.h -- the C core exposed to Lua as the module "scopegate.core".
 *
 * Each subsystem registers its functions from its own lmod_<name>.c into
 * the module table, so the bindings stay next to nothing but themselves.
 * These functions are for tests, `scopegate explain` and tools; the gateway
 * itself calls the C API directly.
 *
 * The folder src/luamod/ is test-only: the bindings of the module are built
 * into lua/scopegate/core.so for busted and tools, never into the server.
 */
#ifndef SG_LMOD_H
#define SG_LMOD_H

#include <lua.h>
#include <lauxlib.h>

/* Sets t[key] = value on the table at the top of the stack, unless value is
 * NULL (the field stays absent). */
static inline void sg_lua_setstring(lua_State *L, const char *key, const char *value)
{
    if (!value) return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

/* Each adds its functions to the table on top of the stack. */
void sg_lmod_scope(lua_State *L);
void sg_lmod_token(lua_State *L);
void sg_lmod_mcp(lua_State *L);
void sg_lmod_policy(lua_State *L);
void sg_lmod_http1(lua_State *L);

#endif
