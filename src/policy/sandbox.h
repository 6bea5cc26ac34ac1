/* sandbox.h -- the confined Lua state that runs policy code.
 *
 * A policy is untrusted code as far as the gateway's health is concerned: a
 * typo can loop forever, a bad idea can allocate without bound, and a clever
 * one can try to reach the file system. The sandbox gives it a Lua state
 * with only safe libraries, a memory cap, an instruction and wall-clock
 * budget per call, guarded pattern functions, read-only library tables and
 * a `require` that only sees the policy directory and the shipped library.
 *
 * One sandbox belongs to one thread. Nothing here is thread-safe. */
#ifndef SG_SANDBOX_H
#define SG_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "base/sg.h"

/* Zero in any field means "the default" (in brackets). */
typedef struct sg_sandbox_limits {
    uint64_t call_instructions; /* VM instructions per call [1,000,000] */
    uint32_t call_time_ms;      /* wall clock per call [50] */
    size_t call_memory;         /* growth above the post-load size per call [8 MiB] */
    uint64_t load_instructions; /* while the policy file runs [100,000,000] */
    uint32_t load_time_ms;      /* while the policy file runs [2000] */
    size_t load_memory;         /* total state size while loading [64 MiB] */
    uint64_t pattern_steps;     /* estimated pattern-matching work per call [10,000,000] */
    /* Bytes C library functions may read or write per call (string.rep,
     * gsub, format, table.concat, load, utf8, ...), weighted by their cost
     * per byte; 256 times as much while the policy file loads [1 MiB]. */
    uint64_t call_bytes;
    size_t arguments_bytes;   /* req.arguments: string and key bytes, +8 per value [64 KiB] */
    uint32_t arguments_depth; /* req.arguments: nesting of tables [16] */
} sg_sandbox_limits;

#define SG_SANDBOX_DEFAULT_CALL_INSTRUCTIONS 1000000u
#define SG_SANDBOX_DEFAULT_CALL_TIME_MS      50u
#define SG_SANDBOX_DEFAULT_CALL_MEMORY       ((size_t)8 << 20)
#define SG_SANDBOX_DEFAULT_LOAD_INSTRUCTIONS 100000000u
#define SG_SANDBOX_DEFAULT_LOAD_TIME_MS      2000u
#define SG_SANDBOX_DEFAULT_LOAD_MEMORY       ((size_t)64 << 20)
#define SG_SANDBOX_DEFAULT_PATTERN_STEPS     10000000u
#define SG_SANDBOX_DEFAULT_CALL_BYTES        ((uint64_t)1 << 20)
#define SG_SANDBOX_LOAD_BYTES_FACTOR         256u
#define SG_SANDBOX_DEFAULT_ARGUMENTS_BYTES   ((size_t)64 << 10)
#define SG_SANDBOX_DEFAULT_ARGUMENTS_DEPTH   16u

/* Largest source file `require` or the policy loader will read. */
#define SG_SANDBOX_MAX_SOURCE ((size_t)16 << 20)

typedef struct sg_sandbox sg_sandbox;

/* Creates a confined state for the policy at policy_path (used for log
 * prefixes and to find the directory `require` searches first). limits may
 * be NULL. The state starts in load mode: globals writable, load budgets.
 * Returns NULL when out of memory. */
sg_sandbox *sg_sandbox_new(const char *policy_path, const sg_sandbox_limits *limits);
/* Closes the state. Accepts NULL. */
void sg_sandbox_free(sg_sandbox *sb);

/* The state, for pushing arguments and reading results around
 * sg_sandbox_call. Owned by the sandbox. Can't fail. */
lua_State *sg_sandbox_lua(sg_sandbox *sb);
/* The limits actually in force (defaults filled in), owned by the sandbox.
 * Can't fail. */
const sg_sandbox_limits *sg_sandbox_limits_of(const sg_sandbox *sb);

/* Loads `path` as a text chunk whose environment is the sandbox globals and
 * runs it under the load budgets, leaving its first result on the stack.
 * Returns 0, or -1 with "file:line: message" appended to err (an sg_buf: a
 * Lua message has no length bound; nothing pushed). */
int sg_sandbox_run_file(sg_sandbox *sb, const char *path, sg_buf *err);

/* Ends load mode: from now on assigning a global raises "policy rules may
 * not set globals (name)", and every call is measured against the call
 * budgets, with memory counted above the size right after this call (a full
 * collection is done first). Returns 0, or -1 when out of memory (refuse
 * the policy then: its rules could keep state between requests). */
int sg_sandbox_seal(sg_sandbox *sb);

/* Runs fn(ud, args...) in protected mode under the budgets of the current
 * mode (load or call), where args are the nargs values on top of the stack
 * (consumed). fn runs on the sandbox's state and may call policy code.
 * Stack effect: fn's results stay on the stack (nresults of them, as with
 * lua_pcall) on success; nothing on failure. On failure returns -1 and puts
 * a message in err ("file:line: ..." when Lua knows where); a budget or
 * memory overrun counts as a failure even when the policy caught the
 * error with pcall. Afterwards a failed call's garbage is collected so the
 * next call starts clean. */
int sg_sandbox_call(sg_sandbox *sb, lua_CFunction fn, void *ud, int nargs, int nresults,
                    sg_buf *err);

/* One source file the state ran: the policy file first, then every module
 * in the order `require` read them. The digest is of the bytes that were
 * actually run, so a file edited after loading does not change it. */
typedef struct sg_sandbox_source {
    const char *path; /* as opened: the policy path, or the module's found path */
    unsigned char sha256[32];
} sg_sandbox_source;

/* Sets *out to the sources run so far (owned by the sandbox, valid until it
 * is freed or runs another file) and returns their number. Can't fail: a
 * source that could not be recorded (out of memory) fails its load instead. */
int sg_sandbox_sources(const sg_sandbox *sb, const sg_sandbox_source **out);

/* Bytes the state holds now, the peak since the last call started, and
 * the post-load baseline (0 before seal). Can't fail. */
size_t sg_sandbox_memory(const sg_sandbox *sb);
size_t sg_sandbox_memory_peak(const sg_sandbox *sb);
size_t sg_sandbox_memory_baseline(const sg_sandbox *sb);

/* Estimated backtracking cost of matching Lua pattern p against a subject of
 * subject_len bytes from every start position (anchored patterns: one). A
 * deliberately pessimistic model of a backtracking matcher, used to refuse
 * patterns that would run for seconds inside C where hooks cannot stop
 * them. Exposed for tests. Can't fail; returns +inf for hopeless cases. */
double sg_sandbox_pattern_cost(const char *p, size_t plen, size_t subject_len, int anchored_ok);

#endif
