/* sandbox.c -- the confined Lua state policies run in (see sandbox.h).
 *
 * Why each piece exists:
 *   - a capping allocator, because a policy must not take the gateway's
 *     memory with it; the cap is relative to the post-load size so a call
 *     cannot grow the state by more than its allowance;
 *   - a count hook that also checks a wall-clock deadline, re-armed at
 *     count 1 once tripped, because a plain hook can be defeated by a loop
 *     around pcall; pcall/xpcall are wrapped so budget and memory errors
 *     cannot be caught by policy code at all;
 *   - guarded pattern functions, because hooks do not fire inside C and a
 *     backtracking pattern can run for seconds there; the cost model is our
 *     own (see pattern_cost below);
 *   - a byte budget charged by every C library function whose work grows
 *     with its arguments (string.rep, gsub, format, table.concat, load,
 *     utf8, tostring...), for the same reason: one call of such a function
 *     is not interruptible, so the work is priced before (or, for results
 *     of unknown size, right after) it is done, and refused beyond the
 *     call's allowance; the allocator also looks at the clock every MiB, so
 *     the time limit holds within one bounded C call of the deadline;
 *   - read-only library tables and sealed globals, because the state is
 *     reused for every request and nothing may carry over between them;
 *   - a confined require and a text-only load, because a policy has no
 *     business with the file system or with bytecode.
 * Other C library loops that hooks cannot interrupt (string.rep of an empty
 * string, table.move over nils, table functions driven by __len) are
 * bounded by small wrappers. */
#include "policy/sandbox_impl.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

/* ---- memory ------------------------------------------------------------------ */

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sg_sandbox *sb = ud;
    size_t old = ptr ? osize : 0; /* with ptr NULL, osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        sb->used -= old;
        return NULL;
    }
    if (nsize > old && (nsize - old > sb->cap || sb->used > sb->cap - (nsize - old))) return NULL;
    void *np = realloc(ptr, nsize);
    if (!np) return NULL;
    if (sb->in_call && nsize > old && (sb->alloc_since_clock += nsize - old) >= CLOCK_POLL_BYTES) {
        /* Work that allocates (`..` in a loop, a C function building its
         * result) is paced by the clock too: past the deadline, the very
         * next instruction runs the hook, which raises. Nothing else is
         * safe here: the state may be half-way through a resize. */
        sb->alloc_since_clock = 0;
        if (sg_now_mono_ns() > sb->deadline_ns)
            lua_sethook(sb->L, sandbox_budget_hook, LUA_MASKCOUNT, 1);
    }
    sb->used = sb->used - old + nsize;
    if (sb->used > sb->peak) sb->peak = sb->used;
    return np;
}

static int on_panic(lua_State *L)
{
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    sg_log(SG_LOG_ERROR, "policy sandbox: unprotected Lua error: %s", msg);
    abort();
}

/* ---- budgets ----------------------------------------------------------------- */

static void raise_tripped(lua_State *L, sg_sandbox *sb)
{
    lua_pushstring(L, sb->trip_msg);
    lua_error(L);
}

void sandbox_budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    sg_sandbox *sb = sandbox_of(L);
    if (!sb->budget_tripped) {
        uint64_t step = sb->instr_limit < HOOK_STEP ? sb->instr_limit : HOOK_STEP;
        sb->instr_used += step ? step : 1;
        const char *what = NULL;
        char detail[64];
        if (sb->instr_used >= sb->instr_limit) {
            what = "instruction budget exceeded";
            snprintf(detail, sizeof detail, "%llu instructions",
                     (unsigned long long)sb->instr_limit);
        } else if (sg_now_mono_ns() > sb->deadline_ns) {
            what = "time budget exceeded";
            snprintf(detail, sizeof detail, "%u ms",
                     sb->sealed ? sb->lim.call_time_ms : sb->lim.load_time_ms);
        }
        if (!what) return;
        lua_Debug where;
        char loc[128] = "";
        if (lua_getstack(L, 0, &where) && lua_getinfo(L, "Sl", &where) && where.currentline > 0)
            snprintf(loc, sizeof loc, "%s:%d: ", where.short_src, where.currentline);
        snprintf(sb->trip_msg, sizeof sb->trip_msg, "%s%s (%s)", loc, what, detail);
        sb->budget_tripped = 1;
        /* From now on every instruction raises, so no pcall loop escapes. */
        lua_sethook(L, sandbox_budget_hook, LUA_MASKCOUNT, 1);
    }
    raise_tripped(L, sb);
}

static void budget_begin(sg_sandbox *sb)
{
    sb->budget_tripped = sb->memory_tripped = 0;
    sb->trip_msg[0] = '\0';
    sb->instr_used = 0;
    uint32_t ms;
    if (sb->sealed) {
        sb->instr_limit = sb->lim.call_instructions;
        ms = sb->lim.call_time_ms;
        sb->cap = sb->baseline + sb->lim.call_memory;
        sb->pattern_left = (double)sb->lim.pattern_steps;
        sb->bytes_limit = sb->lim.call_bytes;
    } else {
        sb->instr_limit = sb->lim.load_instructions;
        ms = sb->lim.load_time_ms;
        sb->cap = sb->lim.load_memory;
        sb->pattern_left = (double)sb->lim.pattern_steps * 10;
        sb->bytes_limit = sb->lim.call_bytes * SG_SANDBOX_LOAD_BYTES_FACTOR;
    }
    sb->bytes_left = (double)sb->bytes_limit;
    sb->alloc_since_clock = 0;
    sb->deadline_ns = sg_now_mono_ns() + (uint64_t)ms * 1000000u;
    sb->peak = sb->used;
    int step = sb->instr_limit < HOOK_STEP ? (int)sb->instr_limit : HOOK_STEP;
    lua_sethook(sb->L, sandbox_budget_hook, LUA_MASKCOUNT, step > 0 ? step : 1);
}

static void budget_end(sg_sandbox *sb)
{
    lua_sethook(sb->L, NULL, 0, 0);
    /* Outside calls only our own C code allocates, and it has no
     * protected frame to fail into: do not cap it. */
    sb->cap = SIZE_MAX;
    /* Generational collection only does a major collection when the heap
     * doubles, which for a large policy is past the per-call cap: the
     * collector would then run as an emergency inside some later call, on
     * that call's clock. Collect here instead, outside every budget, once
     * garbage passes half a call's allowance. The mark is relative to what
     * survived, so a rule that keeps data in an upvalue does not make every
     * call pay for a full collection. */
    if (sb->sealed && sb->used > sb->collect_at) {
        lua_gc(sb->L, LUA_GCCOLLECT);
        sb->collect_at = sb->used + sb->lim.call_memory / 2;
    }
}

/* Marks the call as over its memory cap and re-raises. Used wherever a
 * LUA_ERRMEM would otherwise be turned into an ordinary, catchable error. */
void sandbox_raise_memory(lua_State *L, sg_sandbox *sb)
{
    if (sb->budget_tripped) raise_tripped(L, sb); /* the real cause, not its echo */
    sb->memory_tripped = 1;
    snprintf(sb->trip_msg, sizeof sb->trip_msg, "memory limit exceeded (%zu KiB %s)",
             (sb->sealed ? sb->lim.call_memory : sb->lim.load_memory) >> 10,
             sb->sealed ? "per call" : "while loading");
    raise_tripped(L, sb);
}

/* ---- pcall / xpcall that cannot swallow budget errors ------------------------ */

static int after_protected(lua_State *L, sg_sandbox *sb, int status, int base)
{
    if (status == LUA_ERRMEM) sandbox_raise_memory(L, sb);
    if (sb->budget_tripped || sb->memory_tripped) raise_tripped(L, sb);
    if (status == LUA_OK) {
        lua_pushboolean(L, 1);
        lua_insert(L, base);
        return lua_gettop(L) - base + 1;
    }
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

int sandbox_pcall(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    luaL_checkany(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    return after_protected(L, sb, status, 1);
}

int sandbox_xpcall(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 1); /* f, handler, args..., f */
    lua_rotate(L, 3, 1); /* f, handler, f, args... */
    int status = lua_pcall(L, n - 2, LUA_MULTRET, 2);
    return after_protected(L, sb, status, 3);
}

static void fill_limits(sg_sandbox_limits *l, const sg_sandbox_limits *in)
{
    if (in)
        *l = *in;
    else
        memset(l, 0, sizeof *l);
    if (!l->call_instructions) l->call_instructions = SG_SANDBOX_DEFAULT_CALL_INSTRUCTIONS;
    if (!l->call_time_ms) l->call_time_ms = SG_SANDBOX_DEFAULT_CALL_TIME_MS;
    if (!l->call_memory) l->call_memory = SG_SANDBOX_DEFAULT_CALL_MEMORY;
    if (!l->load_instructions) l->load_instructions = SG_SANDBOX_DEFAULT_LOAD_INSTRUCTIONS;
    if (!l->load_time_ms) l->load_time_ms = SG_SANDBOX_DEFAULT_LOAD_TIME_MS;
    if (!l->load_memory) l->load_memory = SG_SANDBOX_DEFAULT_LOAD_MEMORY;
    if (!l->pattern_steps) l->pattern_steps = SG_SANDBOX_DEFAULT_PATTERN_STEPS;
    if (!l->call_bytes) l->call_bytes = SG_SANDBOX_DEFAULT_CALL_BYTES;
    if (!l->arguments_bytes) l->arguments_bytes = SG_SANDBOX_DEFAULT_ARGUMENTS_BYTES;
    if (!l->arguments_depth) l->arguments_depth = SG_SANDBOX_DEFAULT_ARGUMENTS_DEPTH;
}

sg_sandbox *sg_sandbox_new(const char *policy_path, const sg_sandbox_limits *limits)
{
    sg_sandbox *sb = calloc(1, sizeof *sb);
    if (!sb) return NULL;
    fill_limits(&sb->lim, limits);
    sb->cap = SIZE_MAX;
    sb->path = strdup(policy_path);
    const char *slash = strrchr(policy_path, '/');
    if (!slash)
        sb->dir = strdup(".");
    else if (slash == policy_path)
        sb->dir = strdup("/");
    else
        sb->dir = strndup(policy_path, (size_t)(slash - policy_path));
    if (!sb->path || !sb->dir) goto fail;
    sb->L = lua_newstate(capped_alloc, sb);
    if (!sb->L) goto fail;
    lua_atpanic(sb->L, on_panic);
    lua_pushcfunction(sb->L, sandbox_open_libraries);
    if (lua_pcall(sb->L, 0, 0, 0) != LUA_OK) goto fail;
    return sb;
fail:
    sg_sandbox_free(sb);
    return NULL;
}

void sg_sandbox_free(sg_sandbox *sb)
{
    if (!sb) return;
    if (sb->L) {
        sb->cap = SIZE_MAX;
        lua_close(sb->L);
    }
    for (int i = 0; i < sb->nsources; i++)
        free((char *)sb->sources[i].path);
    free(sb->sources);
    free(sb->path);
    free(sb->dir);
    free(sb);
}

int sg_sandbox_sources(const sg_sandbox *sb, const sg_sandbox_source **out)
{
    *out = sb->sources;
    return sb->nsources;
}

lua_State *sg_sandbox_lua(sg_sandbox *sb)
{
    return sb->L;
}

const sg_sandbox_limits *sg_sandbox_limits_of(const sg_sandbox *sb)
{
    return &sb->lim;
}

size_t sg_sandbox_memory(const sg_sandbox *sb)
{
    return sb->used;
}

size_t sg_sandbox_memory_peak(const sg_sandbox *sb)
{
    return sb->peak;
}

size_t sg_sandbox_memory_baseline(const sg_sandbox *sb)
{
    return sb->baseline;
}

/* Copies a Lua error value into err without calling metamethods or
 * allocating in the state (we are outside any protected frame). */
static void error_text(lua_State *L, int idx, sg_buf *err)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        sg_buf_append(err, s, len > MAX_ERROR_TEXT ? MAX_ERROR_TEXT : len);
        if (len > MAX_ERROR_TEXT) sg_buf_puts(err, "...");
        break;
    }
    case LUA_TNUMBER:
        sg_buf_printf(err, "error %g", (double)lua_tonumber(L, idx));
        break;
    default:
        sg_buf_printf(err, "error raised with a %s value", luaL_typename(L, idx));
    }
}

int sg_sandbox_call(sg_sandbox *sb, lua_CFunction fn, void *ud, int nargs, int nresults,
                    sg_buf *err)
{
    lua_State *L = sb->L;
    int base = lua_gettop(L) - nargs;
    if (sb->in_call || !lua_checkstack(L, 4 + (nresults > 0 ? nresults : 0))) {
        sg_buf_puts(err, sb->in_call ? "policy sandbox: nested call refused"
                                     : "policy sandbox: Lua stack exhausted");
        lua_settop(L, base);
        return -1;
    }
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    lua_rotate(L, base + 1, 2); /* fn, ud, args... */
    sb->in_call = 1;
    budget_begin(sb);
    int status = lua_pcall(L, nargs + 1, nresults, 0);
    budget_end(sb);
    sb->in_call = 0;
    if (status == LUA_OK && !sb->budget_tripped && !sb->memory_tripped) return 0;
    if (status == LUA_ERRMEM && !sb->memory_tripped && !sb->budget_tripped) {
        sb->memory_tripped = 1;
        snprintf(sb->trip_msg, sizeof sb->trip_msg, "memory limit exceeded (%zu KiB %s)",
                 (sb->sealed ? sb->lim.call_memory : sb->lim.load_memory) >> 10,
                 sb->sealed ? "per call" : "while loading");
    }
    if (sb->budget_tripped || sb->memory_tripped)
        sg_buf_puts(err, sb->trip_msg);
    else if (status != LUA_OK)
        error_text(L, -1, err);
    lua_settop(L, base);
    lua_gc(L, LUA_GCCOLLECT);
    return -1;
}

typedef struct chunk_source {
    const char *src;
    size_t len;
    const char *chunkname;
} chunk_source;

static int run_chunk(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    const chunk_source *cs = lua_touserdata(L, 1);
    if (cs->len > 0 && cs->src[0] == LUA_SIGNATURE[0])
        return luaL_error(L, "%s: binary chunks are not allowed as policies", cs->chunkname + 1);
    int status = luaL_loadbufferx(L, cs->src, cs->len, cs->chunkname, "t");
    if (status == LUA_ERRMEM) sandbox_raise_memory(L, sb);
    if (status != LUA_OK) return lua_error(L);
    lua_call(L, 0, 1);
    return 1;
}

int sg_sandbox_run_file(sg_sandbox *sb, const char *path, sg_buf *err)
{
    size_t len = 0;
    char *src = sg_read_file(path, SG_SANDBOX_MAX_SOURCE, &len);
    if (!src) {
        sg_buf_printf(err, "%s: cannot read policy: %s", path, strerror(errno));
        return -1;
    }
    if (sandbox_record_source(sb, path, src, len) != 0) {
        free(src);
        sg_buf_printf(err, "%s: out of memory", path);
        return -1;
    }
    sg_buf chunkname = SG_BUF_INIT;
    sg_buf_printf(&chunkname, "@%s", path);
    if (!sg_buf_ok(&chunkname)) {
        free(src);
        sg_buf_printf(err, "%s: out of memory", path);
        return -1;
    }
    chunk_source cs = {src, len, chunkname.data};
    int rc = sg_sandbox_call(sb, run_chunk, &cs, 0, 1, err);
    free(src);
    sg_buf_free(&chunkname);
    return rc;
}

static int seal_globals(lua_State *L)
{
    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    lua_newtable(L);
    int backing = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, g)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, backing);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, g); /* clearing fields during traversal is allowed */
    }
    sandbox_set_proxy_meta(L, g, sandbox_sealed_newindex, "_G");
    return 0;
}

int sg_sandbox_seal(sg_sandbox *sb)
{
    lua_State *L = sb->L;
    lua_pushcfunction(L, seal_globals);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return -1;
    }
    lua_gc(L, LUA_GCCOLLECT);
    /* From here on each call makes a little short-lived garbage (the req
     * table) on top of a large, stable heap (the policy): exactly what
     * generational collection is for. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    sb->baseline = sb->used;
    sb->collect_at = sb->baseline + sb->lim.call_memory / 2;
    sb->sealed = 1;
    return 0;
}
