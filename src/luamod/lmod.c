/* lmod.c -- entry point of the Lua module "scopegate.core" (see lmod.h). */
#include "luamod/lmod.h"
#include "base/sg.h"

int luaopen_scopegate_core(lua_State *L);

int luaopen_scopegate_core(lua_State *L)
{
    lua_newtable(L);
    sg_lmod_scope(L);
    sg_lmod_token(L);
    sg_lmod_mcp(L);
    sg_lmod_policy(L);
    sg_lmod_http1(L);
    lua_pushliteral(L, SG_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
