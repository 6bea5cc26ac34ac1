/* sandbox_impl.h -- what sandbox.c and sandboxlib.c share (not a public API).
 *
 * sandbox.c owns the state: the capping allocator, the budgets and their
 * hook, protected calls that cannot swallow a budget error, running files
 * and sealing. sandboxlib.c builds the library a policy sees: guarded C
 * functions priced against the byte and pattern budgets, the confined
 * require, the text-only load and the read-only library tables. Both need
 * the struct and a handful of functions, declared here. */
#ifndef SG_SANDBOX_IMPL_H
#define SG_SANDBOX_IMPL_H

#include <lauxlib.h>
#include <lua.h>

#include "policy/sandbox.h"

/* How often (in VM instructions) the budget hook runs before it trips. */
#define HOOK_STEP 1000
/* Bounds on messages copied out of the state. */
#define MAX_ERROR_TEXT 1024
#define MAX_PRINT_TEXT 1024
/* table.move over more elements than this is refused (it loops in C). */
#define MAX_TABLE_MOVE  ((lua_Integer)1 << 20)
#define MAX_MODULE_NAME 200
/* The allocator looks at the clock after this many bytes of growth. */
#define CLOCK_POLL_BYTES ((size_t)1 << 20)
/* Byte-budget weights: what one unit of each kind of work costs, measured
 * against copying one byte (see docs/decisions.md, "C library work"). */
#define W_VALUE  16 /* a value pushed, moved or compared (byte, unpack, sort) */
#define W_MATCH  64 /* one gsub match: a capture, a replacement, a buffer step */
#define W_UTF8   2  /* one byte decoded as UTF-8 (utf8.len, utf8.offset) */
#define W_SOURCE 24 /* one byte of source text compiled by load or require */

struct sg_sandbox {
    lua_State *L;
    sg_sandbox_limits lim;
    char *path; /* the policy file, for log prefixes */
    char *dir;  /* its directory, searched first by require */

    size_t used, peak, cap, baseline;
    size_t collect_at; /* between calls, collect fully above this (budget_end) */
    int sealed, in_call;

    /* Per-call budget state. */
    uint64_t instr_limit, instr_used;
    uint64_t deadline_ns;
    double pattern_left;
    double bytes_left;        /* what is left of the byte budget */
    uint64_t bytes_limit;     /* the byte budget of this call (for messages) */
    size_t alloc_since_clock; /* growth since the allocator last read the clock */
    int budget_tripped, memory_tripped;
    char trip_msg[256];

    /* Every file run (sg_sandbox_sources), with its path owned here. */
    sg_sandbox_source *sources;
    int nsources;
};

/* The sandbox of a state (its allocator's userdata). Can't fail. */
static inline sg_sandbox *sandbox_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

/* sandbox.c: marks the call as over its memory cap and raises; never returns. */
void sandbox_raise_memory(lua_State *L, sg_sandbox *sb);
/* sandbox.c: pcall and xpcall as policies see them (budget and memory
 * errors pass through them). */
int sandbox_pcall(lua_State *L);
int sandbox_xpcall(lua_State *L);
/* sandbox.c: the count hook that enforces the instruction and time budgets. */
void sandbox_budget_hook(lua_State *L, lua_Debug *ar);

/* sandboxlib.c: opens the confined library into a fresh state (a
 * lua_CFunction, run protected by sg_sandbox_new). */
int sandbox_open_libraries(lua_State *L);
/* sandboxlib.c: gives the table at `target` a proxy metatable whose
 * __newindex is `newindex` and whose name in messages is `name`. */
void sandbox_set_proxy_meta(lua_State *L, int target, lua_CFunction newindex, const char *name);
/* sandboxlib.c: __newindex of the sealed globals (raises). */
int sandbox_sealed_newindex(lua_State *L);
/* sandboxlib.c: records a file run (path and SHA-256 of src) for
 * sg_sandbox_sources. Returns 0, or -1 when out of memory. */
int sandbox_record_source(sg_sandbox *sb, const char *path, const char *src, size_t len);

#endif
