/* lmod.c -- entry point of the Lua module "scopegate.core" (see lmod.h). */
#include "luamod/lmod.h"
#include "base/sg.h"

int luaopen_scopegate_core(lua_State *L);

/* cgroup_cpu_limit(quota, period) -> CPUs (0 = no limit): sg_cgroup_cpu_limit,
 * the rounding `serve` applies to a cgroup's CPU quota. */
static int l_cgroup_cpu_limit(lua_State *L)
{
    lua_pushinteger(L, sg_cgroup_cpu_limit(luaL_optstring(L, 1, NULL), luaL_optstring(L, 2, NULL)));
    return 1;
}

/* cpus_usable() -> the worker count `serve` defaults to (sg_cpus_usable). */
static int l_cpus_usable(lua_State *L)
{
    lua_pushinteger(L, sg_cpus_usable());
    return 1;
}

int luaopen_scopegate_core(lua_State *L)
{
    lua_newtable(L);
    sg_lmod_scope(L);
    sg_lmod_token(L);
    sg_lmod_mcp(L);
    sg_lmod_policy(L);
    sg_lmod_http1(L);
    lua_pushcfunction(L, l_cgroup_cpu_limit);
    lua_setfield(L, -2, "cgroup_cpu_limit");
    lua_pushcfunction(L, l_cpus_usable);
    lua_setfield(L, -2, "cpus_usable");
    lua_pushliteral(L, SG_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
