/* lmod.h -- the C core exposed to Lua as the module "scopegate.core".
 *
 * Each subsystem registers its functions from its own lmod_<name>.c into
 * the module table, so the bindings stay next to nothing but themselves.
 * These functions are for tests, `scopegate explain` and tools; the gateway
 * itself calls the C API directly. */
#ifndef SG_LMOD_H
#define SG_LMOD_H

#include <lua.h>
#include <lauxlib.h>

/* Each adds its functions to the table on top of the stack. */
void sg_lmod_scope(lua_State *L);
void sg_lmod_token(lua_State *L);
void sg_lmod_mcp(lua_State *L);
void sg_lmod_policy(lua_State *L);

#endif
