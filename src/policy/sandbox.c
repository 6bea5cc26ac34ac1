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
#include "policy/sandbox.h"

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

static char registry_loaded_key; /* address used as a registry key */
static char loading_marker;      /* loaded[name] while name is loading */

static sg_sandbox *sandbox_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

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
        if (sg_now_mono_ns() > sb->deadline_ns) lua_sethook(sb->L, budget_hook, LUA_MASKCOUNT, 1);
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

static void budget_hook(lua_State *L, lua_Debug *ar)
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
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
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
    lua_sethook(sb->L, budget_hook, LUA_MASKCOUNT, step > 0 ? step : 1);
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
static void raise_memory(lua_State *L, sg_sandbox *sb)
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
    if (status == LUA_ERRMEM) raise_memory(L, sb);
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

static int safe_pcall(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    luaL_checkany(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    return after_protected(L, sb, status, 1);
}

static int safe_xpcall(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 1); /* f, handler, args..., f */
    lua_rotate(L, 3, 1); /* f, handler, f, args... */
    int status = lua_pcall(L, n - 2, LUA_MULTRET, 2);
    return after_protected(L, sb, status, 3);
}

/* ---- pattern cost model ------------------------------------------------------
 * Lua patterns are matched by backtracking. For each pattern item we bound
 * the work C(i) of matching the pattern's suffix from item i at one subject
 * position, for a subject of n bytes:
 *   plain item, capture, anchor, frontier:  1 + C(i+1)
 *   x?                                      1 + 2*C(i+1)
 *   %bxy, back-reference:                   n + C(i+1)
 *   x*, x+, x- :
 *     the rest matches anywhere (it can     n + C(i+1)   (first try wins)
 *     match empty, or ends in .*$)
 *     the rest must begin with a char x
 *     can never match                       n*(1+k) + C(i+1)
 *                                           (k = optional items before it)
 *     otherwise                             n + (n+1)*C(i+1)
 * and the whole search tries n+1 start positions unless anchored. It is an
 * upper-bound-minded estimate: it refuses a*a*a*b on long strings and
 * accepts the usual ^(%w+):(.*)$ in linear cost. */

typedef struct charset {
    uint64_t w[4];
} charset;

static void cs_add(charset *s, unsigned c)
{
    s->w[c >> 6] |= (uint64_t)1 << (c & 63);
}
static void cs_fill(charset *s)
{
    for (int i = 0; i < 4; i++)
        s->w[i] = ~(uint64_t)0;
}
static void cs_invert(charset *s)
{
    for (int i = 0; i < 4; i++)
        s->w[i] = ~s->w[i];
}
static void cs_union(charset *d, const charset *s)
{
    for (int i = 0; i < 4; i++)
        d->w[i] |= s->w[i];
}
static int cs_meets(const charset *a, const charset *b)
{
    for (int i = 0; i < 4; i++)
        if (a->w[i] & b->w[i]) return 1;
    return 0;
}

/* Adds the characters of class letter c (%a, %D, ...), or c itself when it
 * is not a class letter (an escaped literal). */
static void cs_add_class(charset *s, unsigned char c)
{
    charset k = {{0, 0, 0, 0}};
    int (*test)(int) = NULL;
    switch (tolower(c)) {
    case 'a':
        test = isalpha;
        break;
    case 'c':
        test = iscntrl;
        break;
    case 'd':
        test = isdigit;
        break;
    case 'g':
        test = isgraph;
        break;
    case 'l':
        test = islower;
        break;
    case 'p':
        test = ispunct;
        break;
    case 's':
        test = isspace;
        break;
    case 'u':
        test = isupper;
        break;
    case 'w':
        test = isalnum;
        break;
    case 'x':
        test = isxdigit;
        break;
    default:
        cs_add(s, c);
        return;
    }
    for (unsigned i = 0; i < 256; i++)
        if (test((int)i)) cs_add(&k, i);
    if (isupper(c)) cs_invert(&k);
    cs_union(s, &k);
}

enum { IT_CHAR, IT_ZERO_WIDTH, IT_END_ANCHOR, IT_SCAN };

typedef struct pattern_item {
    int kind;   /* IT_* */
    char quant; /* 0, '*', '+', '-', '?' (IT_CHAR only) */
    charset set;
} pattern_item;

/* Parses one single-character class at p[*i]; returns 0, or -1 when the
 * pattern is malformed (Lua itself will then report it). */
static int parse_class(const char *p, size_t len, size_t *i, charset *out)
{
    memset(out, 0, sizeof *out);
    unsigned char c = (unsigned char)p[*i];
    if (c == '.') {
        cs_fill(out);
        (*i)++;
    } else if (c == '%') {
        if (*i + 1 >= len) return -1;
        cs_add_class(out, (unsigned char)p[*i + 1]);
        *i += 2;
    } else if (c == '[') {
        size_t j = *i + 1;
        int negate = 0;
        if (j < len && p[j] == '^') {
            negate = 1;
            j++;
        }
        int first = 1;
        for (;;) {
            if (j >= len) return -1;
            if (!first && p[j] == ']') break;
            first = 0;
            unsigned char a = (unsigned char)p[j];
            if (a == '%') {
                if (j + 1 >= len) return -1;
                cs_add_class(out, (unsigned char)p[j + 1]);
                j += 2;
            } else if (j + 2 < len && p[j + 1] == '-' && p[j + 2] != ']') {
                for (unsigned x = a; x <= (unsigned char)p[j + 2]; x++)
                    cs_add(out, x);
                j += 3;
            } else {
                cs_add(out, a);
                j++;
            }
        }
        if (negate) cs_invert(out);
        *i = j + 1;
    } else {
        cs_add(out, c);
        (*i)++;
    }
    return 0;
}

/* Splits a pattern into items. Returns the count, or -1 when malformed. */
static int parse_items(const char *p, size_t len, pattern_item *items)
{
    size_t i = 0;
    int n = 0;
    while (i < len) {
        pattern_item *it = &items[n++];
        it->quant = 0;
        memset(&it->set, 0, sizeof it->set);
        char c = p[i];
        if (c == '(' || c == ')') {
            it->kind = IT_ZERO_WIDTH;
            i++;
        } else if (c == '$' && i + 1 == len) {
            it->kind = IT_END_ANCHOR;
            i++;
        } else if (c == '%' && i + 1 < len && p[i + 1] == 'b') {
            if (i + 3 >= len) return -1;
            it->kind = IT_SCAN;
            cs_fill(&it->set);
            i += 4;
        } else if (c == '%' && i + 1 < len && p[i + 1] == 'f') {
            i += 2;
            if (i >= len || p[i] != '[') return -1;
            if (parse_class(p, len, &i, &it->set) != 0) return -1;
            it->kind = IT_ZERO_WIDTH;
            cs_fill(&it->set);
        } else if (c == '%' && i + 1 < len && p[i + 1] >= '0' && p[i + 1] <= '9') {
            it->kind = IT_SCAN;
            cs_fill(&it->set);
            i += 2;
        } else {
            if (parse_class(p, len, &i, &it->set) != 0) return -1;
            it->kind = IT_CHAR;
            if (i < len && strchr("*+-?", p[i])) it->quant = p[i++];
        }
    }
    return n;
}

double sg_sandbox_pattern_cost(const char *p, size_t plen, size_t subject_len, int anchored_ok)
{
    int anchored = anchored_ok && plen > 0 && p[0] == '^';
    if (anchored) {
        p++;
        plen--;
    }
    if (plen > 65536) return INFINITY;
    pattern_item small[64];
    pattern_item *items = plen < SG_ARRAY_LEN(small) ? small : malloc((plen + 1) * sizeof *items);
    if (!items) return INFINITY;
    int count = parse_items(p, plen, items);
    if (count < 0) {
        if (items != small) free(items);
        return 1; /* malformed: Lua raises its own error before matching */
    }
    double n = (double)subject_len;
    double cost = 1; /* C(count): the empty suffix */
    /* Walking backwards we keep what the suffix after item i can begin
     * with (first), whether it matches at any position (always), whether
     * it matches at the end of the subject (at_end) and how many optional
     * items precede its first required one (chain). */
    charset first = {{0, 0, 0, 0}};
    int always = 1, at_end = 1, chain = 0;
    /* lead_ok: the pattern starts (after captures) with a required single
     * character whose suffix always matches, so an attempt either fails on
     * its first byte or succeeds: unanchored search is then linear. */
    int lead_ok = 0;
    for (int i = count - 1; i >= 0; i--) {
        pattern_item *it = &items[i];
        double rest = cost;
        switch (it->kind) {
        case IT_ZERO_WIDTH:
            cost = 1 + rest;
            break;
        case IT_END_ANCHOR:
            cost = 1 + rest;
            break;
        case IT_SCAN:
            cost = n + rest;
            break;
        default:
            if (it->quant == '?')
                cost = 1 + 2 * rest;
            else if (it->quant == 0)
                cost = 1 + rest;
            else if (always)
                cost = n + rest;
            else if (!cs_meets(&it->set, &first))
                cost = n * (1 + chain) + rest;
            else
                cost = n + (n + 1) * rest;
        }
        /* Update the suffix summary to describe items[i..]. */
        int capture = it->kind == IT_ZERO_WIDTH && it->set.w[0] == 0 && it->set.w[1] == 0;
        if (!capture)
            lead_ok = it->kind == IT_CHAR && (it->quant == 0 || it->quant == '+') && always;
        if (capture) {
            /* a capture bracket: transparent */
        } else if (it->kind == IT_CHAR &&
                   (it->quant == '*' || it->quant == '-' || it->quant == '?')) {
            charset all;
            cs_fill(&all);
            /* .* or .- before something that matches at the end can
             * always eat its way there. */
            if (it->quant != '?' && at_end && memcmp(&it->set, &all, sizeof all) == 0) always = 1;
            cs_union(&first, &it->set);
            chain++;
        } else if (it->kind == IT_END_ANCHOR) {
            memset(&first, 0, sizeof first);
            always = 0;
            at_end = 1;
            chain = 0;
        } else {
            /* a required item: the suffix now starts with exactly it */
            first = it->set;
            always = at_end = 0;
            chain = 0;
        }
    }
    if (items != small) free(items);
    if (anchored) return cost;
    return lead_ok ? n + cost : cost * (n + 1);
}

/* ---- guarded library functions ----------------------------------------------- */

enum { PAT_FIND, PAT_MATCH, PAT_GMATCH, PAT_GSUB };

static void charge_pattern(lua_State *L, sg_sandbox *sb, double cost, const char *fname)
{
    if (cost <= sb->pattern_left) {
        sb->pattern_left -= cost;
        return;
    }
    char msg[320];
    snprintf(msg, sizeof msg,
             "%s: pattern too expensive for a policy (estimated %.3g backtracking steps, "
             "%.3g left in this call's budget); anchor it with ^, avoid adjacent "
             "quantifiers over overlapping classes, or use a plain find",
             fname, cost, sb->pattern_left);
    luaL_error(L, "%s", msg);
}

/* Charges n units of C library work against the call's byte budget, or
 * raises (a catchable error, as for patterns: a refused call did no work).
 * Work counts toward the allocator's clock polling as well. */
static void charge_bytes(lua_State *L, sg_sandbox *sb, double n, const char *fname)
{
    if (n <= sb->bytes_left) {
        sb->bytes_left -= n;
        size_t add = n < (double)CLOCK_POLL_BYTES ? (size_t)n : CLOCK_POLL_BYTES;
        if ((sb->alloc_since_clock += add) >= CLOCK_POLL_BYTES) {
            sb->alloc_since_clock = 0;
            if (sg_now_mono_ns() > sb->deadline_ns) lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
        }
        return;
    }
    char msg[320];
    snprintf(msg, sizeof msg,
             "%s: too much work for a policy (about %.0f bytes to read or write, %.0f left of "
             "this call's byte budget of %llu); work on shorter strings or fewer of them",
             fname, n, sb->bytes_left < 0 ? 0.0 : sb->bytes_left,
             (unsigned long long)sb->bytes_limit);
    luaL_error(L, "%s", msg);
}

/* Charges the bytes of every string on the stack from index `from` up:
 * results whose size is only known once the function has run. */
static void charge_strings(lua_State *L, sg_sandbox *sb, int from, const char *fname)
{
    double n = 0;
    for (int i = from; i <= lua_gettop(L); i++)
        if (lua_type(L, i) == LUA_TSTRING) n += (double)lua_rawlen(L, i);
    charge_bytes(L, sb, n, fname);
}

/* The number of positions i..j of a string of len bytes, as string.sub,
 * string.byte and utf8 read them (i at arg `ia`, j at ia+1, each optional:
 * i defaults to 1, j to -1 or, with j_is_i, to i). Non-integers count as
 * the whole string; the function itself then raises. */
static double arg_span(lua_State *L, int ia, int j_is_i, size_t len)
{
    int ok = 1;
    lua_Integer i = lua_isnoneornil(L, ia) ? 1 : lua_tointegerx(L, ia, &ok);
    if (!ok) return (double)len;
    lua_Integer j = lua_isnoneornil(L, ia + 1) ? (j_is_i ? i : -1) : lua_tointegerx(L, ia + 1, &ok);
    if (!ok) return (double)len;
    lua_Integer l = (lua_Integer)len;
    if (i < 0) i = i < -l ? 1 : l + i + 1;
    if (i == 0) i = 1;
    if (j < 0) j = j < -l ? 0 : l + j + 1;
    if (j > l) j = l;
    return j >= i ? (double)(j - i + 1) : 0;
}

enum {
    G_RANGE_VALUES, /* string.byte, utf8.codepoint: one value per position */
    G_RANGE_BYTES,  /* string.sub: a copy of the range */
    G_SCAN,         /* upper, lower, reverse, tonumber: one pass */
    G_SCAN_UTF8,    /* utf8.len, utf8.offset: one decoding pass */
    G_BUILD,        /* format, char, pack, utf8.char, os.date: result size known after */
    G_UNPACK,       /* string.unpack(fmt, s): reads s, returns strings */
    G_TOSTRING      /* tostring: a new string unless it was one */
};

/* A C library function whose work grows with its arguments, priced before
 * it runs (G_RANGE_*, G_SCAN, G_UNPACK) or by its results (G_BUILD,
 * G_UNPACK, G_TOSTRING). Upvalues: the original, the G_* kind, the name. */
static int guarded_work(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    int kind = (int)lua_tointeger(L, lua_upvalueindex(2));
    const char *fname = lua_tostring(L, lua_upvalueindex(3));
    int nargs = lua_gettop(L);
    size_t len = lua_type(L, 1) == LUA_TSTRING ? lua_rawlen(L, 1) : 0;
    double pre = 0;
    switch (kind) {
    case G_RANGE_VALUES:
        pre = W_VALUE * arg_span(L, 2, 1, len);
        break;
    case G_RANGE_BYTES:
        pre = arg_span(L, 2, 0, len);
        break;
    case G_SCAN:
        pre = (double)len;
        break;
    case G_SCAN_UTF8:
        pre = (double)len * W_UTF8;
        break;
    case G_BUILD: /* reads its format and its string arguments */
        for (int i = 1; i <= nargs; i++)
            pre += lua_type(L, i) == LUA_TSTRING ? (double)lua_rawlen(L, i) : 1;
        break;
    case G_UNPACK:
        pre = lua_type(L, 2) == LUA_TSTRING ? (double)lua_rawlen(L, 2) : 0;
        break;
    default:
        break;
    }
    charge_bytes(L, sb, pre, fname);
    int tostring_copies = kind == G_TOSTRING && lua_type(L, 1) != LUA_TSTRING;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, nargs, LUA_MULTRET);
    if (kind == G_BUILD || kind == G_UNPACK || tostring_copies) charge_strings(L, sb, 1, fname);
    return lua_gettop(L);
}

static int guarded_pattern(lua_State *L)
{
    static const char *const names[] = {"string.find", "string.match", "string.gmatch",
                                        "string.gsub"};
    sg_sandbox *sb = sandbox_of(L);
    int kind = (int)lua_tointeger(L, lua_upvalueindex(2));
    size_t slen, plen;
    luaL_checklstring(L, 1, &slen);
    const char *p = luaL_checklstring(L, 2, &plen);
    size_t n = slen;
    if (kind != PAT_GSUB && !lua_isnoneornil(L, 3)) {
        lua_Integer init = luaL_checkinteger(L, 3);
        size_t start;
        if (init > 0)
            start = (size_t)init - 1;
        else if (init == 0 || (lua_Unsigned)-init > slen)
            start = 0;
        else
            start = slen - (size_t)-init;
        n = start >= slen ? 0 : slen - start;
    }
    double cost;
    if (kind == PAT_FIND && lua_toboolean(L, 4))
        cost = plen > n ? 1 : ((double)(n - plen) + 1) * (double)plen / 32 + 1;
    else
        cost = sg_sandbox_pattern_cost(p, plen, n, kind != PAT_GMATCH);
    charge_pattern(L, sb, cost, names[kind]);
    /* Every pattern function reads its subject once at least. */
    charge_bytes(L, sb, (double)n, names[kind]);
    int nargs = lua_gettop(L);
    double affordable = 0, wanted = 0;
    if (kind == PAT_GSUB) {
        /* One gsub cannot be interrupted, so it runs with max_n set to the
         * matches the budget can still pay for (a replacement string's
         * bytes included); when it uses them all and the caller allowed
         * more, the rest would have been over budget: refuse the call. */
        lua_Integer max_n;
        int isnum = 0;
        wanted = (double)slen + 1;
        if (!lua_isnoneornil(L, 4) && (max_n = lua_tointegerx(L, 4, &isnum), isnum) &&
            (double)max_n < wanted)
            wanted = max_n > 0 ? (double)max_n : 0;
        double per_match = W_MATCH + (lua_type(L, 3) == LUA_TSTRING ? (double)lua_rawlen(L, 3) : 0);
        affordable = floor(sb->bytes_left / per_match);
        if (affordable < wanted) {
            lua_settop(L, 4);
            lua_pushinteger(L, (lua_Integer)affordable);
            lua_replace(L, 4);
            nargs = 4;
        }
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, nargs, LUA_MULTRET);
    if (kind == PAT_GSUB) {
        /* the result written and the work per match */
        double matches = lua_gettop(L) >= 2 ? (double)lua_tointeger(L, 2) : 0;
        double work = (double)lua_rawlen(L, 1) + matches * W_MATCH;
        if (affordable < wanted && matches >= affordable)
            work = sb->bytes_left + (wanted - matches) * W_MATCH; /* raises */
        charge_bytes(L, sb, work, names[kind]);
    } else if (kind != PAT_GMATCH) {
        charge_strings(L, sb, 1, names[kind]); /* captures are copies */
    }
    return lua_gettop(L);
}

/* string.rep("", 1e12) loops in C for ever without allocating. */
static int guarded_rep(lua_State *L)
{
    size_t l, lsep = 0;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    if (!lua_isnoneornil(L, 3)) luaL_checklstring(L, 3, &lsep);
    if (n <= 0 || l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    charge_bytes(L, sandbox_of(L), (double)l * (double)n + (double)lsep * (double)(n - 1),
                 "string.rep");
    int nargs = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, nargs, 1);
    return 1;
}

/* The table library loops in C over lengths a __len metamethod can make
 * astronomical, and table.move over nils never allocates: refuse tables
 * with metatables and bound table.move. */
static int guarded_table(lua_State *L)
{
    const char *fname = lua_tostring(L, lua_upvalueindex(2));
    int nargs = lua_gettop(L);
    for (int i = 1; i <= nargs; i++) {
        if (lua_type(L, i) == LUA_TTABLE && lua_getmetatable(L, i))
            luaL_error(L, "table.%s: tables with metatables are not allowed in policies", fname);
    }
    if (strcmp(fname, "move") == 0) {
        lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
        if (e >= f && (e - f >= MAX_TABLE_MOVE || e - f < 0))
            luaL_error(L, "table.move: too many elements (at most %d)", (int)MAX_TABLE_MOVE);
    }
    /* Elements each function visits (the tables have no metatables, so
     * their length is the raw one). */
    double n = lua_type(L, 1) == LUA_TTABLE ? (double)lua_rawlen(L, 1) : 0, visits = 0;
    char qualified[32];
    snprintf(qualified, sizeof qualified, "table.%s", fname);
    if (strcmp(fname, "concat") == 0 || strcmp(fname, "unpack") == 0) {
        int ia = strcmp(fname, "concat") == 0 ? 3 : 2, ok1 = 1, ok2 = 1;
        lua_Integer i = lua_isnoneornil(L, ia) ? 1 : lua_tointegerx(L, ia, &ok1);
        lua_Integer j =
            lua_isnoneornil(L, ia + 1) ? (lua_Integer)n : lua_tointegerx(L, ia + 1, &ok2);
        visits = ok1 && ok2 && j >= i ? (double)j - (double)i + 1 : 0;
    } else if (strcmp(fname, "move") == 0) {
        lua_Integer f = lua_tointeger(L, 2), e = lua_tointeger(L, 3);
        visits = e >= f ? (double)(e - f) + 1 : 0;
    } else if (strcmp(fname, "sort") == 0) {
        visits = n > 1 ? n * log2(n) : 0;
    } else if (nargs >= 3 || (nargs == 2 && strcmp(fname, "remove") == 0)) {
        visits = n; /* insert/remove at a position shifts what follows it */
    }
    charge_bytes(L, sandbox_of(L), visits * W_VALUE, qualified);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, nargs, LUA_MULTRET);
    if (strcmp(fname, "concat") == 0) charge_strings(L, sandbox_of(L), 1, qualified);
    return lua_gettop(L);
}

/* __gc finalizers would run during collections we start outside any
 * budget; policies have no use for them. */
static int safe_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        int t = lua_rawget(L, 2);
        lua_pop(L, 1);
        if (t != LUA_TNIL)
            luaL_error(L, "setmetatable: __gc finalizers are not allowed in policies");
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int safe_print(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    int n = lua_gettop(L);
    charge_strings(L, sb, 1, "print");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    sg_log(SG_LOG_INFO, "%s: %.*s%s", sb->path, (int)(len > MAX_PRINT_TEXT ? MAX_PRINT_TEXT : len),
           msg, len > MAX_PRINT_TEXT ? "..." : "");
    return 0;
}

static int safe_load(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    if (lua_type(L, 1) != LUA_TSTRING) {
        luaL_pushfail(L);
        lua_pushliteral(L, "load: policies may only load source strings");
        return 2;
    }
    size_t len;
    const char *src = lua_tolstring(L, 1, &len);
    const char *chunkname = luaL_optstring(L, 2, "=(load)");
    const char *mode = luaL_optstring(L, 3, "t");
    if (len > 0 && src[0] == LUA_SIGNATURE[0]) {
        luaL_pushfail(L);
        lua_pushliteral(L, "load: binary chunks are not allowed in policies (source text only)");
        return 2;
    }
    if (!strchr(mode, 't')) {
        luaL_pushfail(L);
        lua_pushliteral(L, "load: policies may only load text chunks (mode \"t\")");
        return 2;
    }
    charge_bytes(L, sb, (double)len * W_SOURCE, "load"); /* compiling costs per byte */
    int status = luaL_loadbufferx(L, src, len, chunkname, "t");
    if (status == LUA_ERRMEM) raise_memory(L, sb);
    if (status != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (!lua_isnone(L, 4)) {
        lua_pushvalue(L, 4);
        if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    }
    return 1;
}

/* ---- confined require -------------------------------------------------------- */

static int module_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > MAX_MODULE_NAME) return 0;
    int segment = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (segment == 0) return 0;
            segment = 0;
        } else if (isalnum(c) || c == '_') {
            segment++;
        } else {
            return 0;
        }
    }
    return segment > 0;
}

/* Remembers a source file and the digest of the bytes run from it. Returns
 * 0, or -1 when out of memory. */
static int record_source(sg_sandbox *sb, const char *path, const char *src, size_t len)
{
    sg_sandbox_source *grown = realloc(sb->sources, (size_t)(sb->nsources + 1) * sizeof *grown);
    if (!grown) return -1;
    sb->sources = grown;
    char *copy = strdup(path);
    if (!copy) return -1;
    sg_sandbox_source *s = &sb->sources[sb->nsources++];
    s->path = copy;
    sg_sha256(src, len, s->sha256);
    return 0;
}

/* The shipped Lua library of an installed binary, <exe>/../share/scopegate/lua,
 * found from /proc/self/exe so that `cmake --install --prefix X` works
 * whatever prefix the build was configured with. */
static char installed_lib[2048];
static pthread_once_t installed_lib_once = PTHREAD_ONCE_INIT;

static void find_installed_lib(void)
{
    char exe[1536];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return;
    *slash = '\0';
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/../share/scopegate/lua", exe);
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(installed_lib, sizeof installed_lib, "%s", dir);
}

/* Where the shipped library is searched, ';'-separated: an installed
 * binary's own share/scopegate/lua when it exists (so an installed binary
 * never reads a source tree), else SG_LUA_DIRS (the source tree, then the
 * configured install prefix). */
static const char *shipped_lib_dirs(void)
{
    pthread_once(&installed_lib_once, find_installed_lib);
    return installed_lib[0] ? installed_lib : SG_LUA_DIRS;
}

/* Reads the first candidate file that exists. Returns the malloc'd source,
 * with its path in found; NULL when none exists (searched lists them). */
static char *find_module(sg_sandbox *sb, const char *rel, char *found, size_t found_size,
                         size_t *len, sg_buf *searched, int *read_errno)
{
    static const char *const suffixes[] = {".lua", "/init.lua"};
    const char *dirs = shipped_lib_dirs();
    *read_errno = 0;
    /* Candidate 0 is the policy directory; then each shipped library dir. */
    for (int candidate = 0;; candidate++) {
        char dir[2048];
        if (candidate == 0) {
            snprintf(dir, sizeof dir, "%s", sb->dir);
        } else {
            if (*dirs == '\0') break;
            size_t dl = strcspn(dirs, ";");
            snprintf(dir, sizeof dir, "%.*s", (int)(dl < sizeof dir ? dl : sizeof dir - 1), dirs);
            dirs += dl;
            if (*dirs == ';') dirs++;
            if (dl == 0) continue;
        }
        for (int s = 0; s < (candidate == 0 ? 1 : 2); s++) {
            int w = snprintf(found, found_size, "%s/%s%s", dir, rel, suffixes[s]);
            if (w < 0 || (size_t)w >= found_size) continue;
            sg_buf_printf(searched, "%s%s", searched->len ? ", " : "", found);
            char *src = sg_read_file(found, SG_SANDBOX_MAX_SOURCE, len);
            if (src) return src;
            if (errno != ENOENT && errno != ENOTDIR) {
                *read_errno = errno;
                return NULL;
            }
        }
    }
    return NULL;
}

static int safe_require(lua_State *L)
{
    sg_sandbox *sb = sandbox_of(L);
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!module_name_valid(name, len))
        return luaL_error(L,
                          "require: invalid module name '%s' (expected names like 'util' or "
                          "'lib.util': letters, digits and _ separated by dots)",
                          name);
    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &registry_loaded_key); /* 2: loaded */
    lua_pushvalue(L, 1);
    lua_rawget(L, 2);
    if (lua_touserdata(L, -1) == &loading_marker)
        return luaL_error(L, "require: module '%s' requires itself (loop)", name);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);

    char rel[MAX_MODULE_NAME + 1];
    memcpy(rel, name, len);
    rel[len] = '\0';
    for (char *c = rel; *c; c++)
        if (*c == '.') *c = '/';
    char path[4096];
    size_t srclen = 0;
    int read_errno;
    sg_buf searched = SG_BUF_INIT;
    char *src = find_module(sb, rel, path, sizeof path, &srclen, &searched, &read_errno);
    if (!src) {
        /* Copy the list into Lua before raising so no C memory leaks. */
        if (read_errno)
            lua_pushfstring(L, "require: cannot read '%s': %s", path, strerror(read_errno));
        else
            lua_pushfstring(L, "require: module '%s' not found (looked in %s)", name,
                            searched.data ? searched.data : "nothing");
        sg_buf_free(&searched);
        return lua_error(L);
    }
    sg_buf_free(&searched);
    if (sb->sealed) { /* a rule's require compiles on the request's time */
        if ((double)srclen * W_SOURCE > sb->bytes_left) {
            free(src);
            charge_bytes(L, sb, (double)srclen * W_SOURCE, "require"); /* raises */
        }
        charge_bytes(L, sb, (double)srclen * W_SOURCE, "require");
    }
    if (record_source(sb, path, src, srclen) != 0) {
        free(src);
        raise_memory(L, sb); /* does not return */
        return 0;
    }
    lua_pushfstring(L, "@%s", path);
    int status = luaL_loadbufferx(L, src, srclen, lua_tostring(L, -1), "t");
    free(src);
    if (status == LUA_ERRMEM) raise_memory(L, sb);
    if (status != LUA_OK) return lua_error(L);
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &loading_marker);
    lua_rawset(L, 2);
    lua_pushvalue(L, 1);
    lua_pushstring(L, path);
    lua_call(L, 2, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_rawset(L, 2);
    return 1;
}

/* ---- read-only tables ------------------------------------------------------- */

static const char *key_text(lua_State *L, int idx, char *buf, size_t size)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        return lua_tostring(L, idx);
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            snprintf(buf, size, "%lld", (long long)lua_tointeger(L, idx));
        else
            snprintf(buf, size, "%g", (double)lua_tonumber(L, idx));
        return buf;
    default:
        snprintf(buf, size, "a %s key", luaL_typename(L, idx));
        return buf;
    }
}

static int readonly_newindex(lua_State *L)
{
    char buf[64];
    return luaL_error(L, "attempt to modify read-only table '%s' (key '%s')",
                      lua_tostring(L, lua_upvalueindex(1)), key_text(L, 2, buf, sizeof buf));
}

static int sealed_newindex(lua_State *L)
{
    char buf[64];
    return luaL_error(L, "policy rules may not set globals (%s)", key_text(L, 2, buf, sizeof buf));
}

/* __pairs for proxies: iterate the real table. Upvalues: next, real. */
static int proxy_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushnil(L);
    return 3;
}

/* Pops a table and sets a metatable on the table at `target` that reads
 * through to it and refuses writes with `newindex`. */
static void set_proxy_meta(lua_State *L, int target, lua_CFunction newindex, const char *name)
{
    int real = lua_gettop(L);
    target = lua_absindex(L, target);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, real);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_pushcclosure(L, newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_getfield(L, LUA_REGISTRYINDEX, "sg.next");
    lua_pushvalue(L, real);
    lua_pushcclosure(L, proxy_pairs, 2);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, target);
    lua_settop(L, real - 1);
}

/* Pops the real table on top, publishes a read-only proxy of it as global
 * `name`. */
static void publish_readonly(lua_State *L, const char *name)
{
    lua_newtable(L);
    lua_pushvalue(L, -2);
    set_proxy_meta(L, -2, readonly_newindex, name);
    lua_setglobal(L, name);
    lua_pop(L, 1);
}

/* Replaces t[field] (t on top) with wrapper, which gets the original as
 * upvalue 1 and `extra` (pushed by the caller, or nothing) as upvalue 2. */
static void wrap_field(lua_State *L, const char *field, lua_CFunction wrapper, int has_extra)
{
    int extra = lua_gettop(L);
    int t = has_extra ? extra - 1 : extra;
    lua_getfield(L, t, field);
    if (has_extra) lua_pushvalue(L, extra);
    lua_pushcclosure(L, wrapper, has_extra ? 2 : 1);
    lua_setfield(L, t, field);
    if (has_extra) lua_pop(L, 1);
}

/* Replaces t[field] (t on top) with a guarded_work closure of `kind`. */
static void wrap_work(lua_State *L, const char *lib, const char *field, int kind)
{
    char name[48];
    snprintf(name, sizeof name, "%s%s%s", lib, *lib ? "." : "", field);
    lua_getfield(L, -1, field);
    lua_pushinteger(L, kind);
    lua_pushstring(L, name);
    lua_pushcclosure(L, guarded_work, 3);
    lua_setfield(L, -2, field);
}

static int open_libraries(lua_State *L)
{
    luaL_requiref(L, "_G", luaopen_base, 1);
    lua_pop(L, 1);
    lua_getglobal(L, "next");
    lua_setfield(L, LUA_REGISTRYINDEX, "sg.next");
    static const char *const removed[] = {"dofile", "loadfile", "collectgarbage", "rawset", "warn"};
    for (size_t i = 0; i < SG_ARRAY_LEN(removed); i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_register(L, "print", safe_print);
    lua_register(L, "load", safe_load);
    lua_register(L, "require", safe_require);
    lua_register(L, "pcall", safe_pcall);
    lua_register(L, "xpcall", safe_xpcall);
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, safe_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_pushglobaltable(L);
    wrap_work(L, "", "tostring", G_TOSTRING);
    wrap_work(L, "", "tonumber", G_SCAN);
    lua_pop(L, 1);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &registry_loaded_key);

    /* string: the real table is what the string metatable's __index sees,
     * so guard it in place, then hide the metatable and publish a proxy. */
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 0);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    static const char *const pattern_fns[] = {"find", "match", "gmatch", "gsub"};
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, i); /* PAT_* in the same order */
        wrap_field(L, pattern_fns[i], guarded_pattern, 1);
    }
    wrap_field(L, "rep", guarded_rep, 0);
    static const struct {
        const char *name;
        int kind;
    } string_fns[] = {{"byte", G_RANGE_VALUES}, {"char", G_BUILD}, {"format", G_BUILD},
                      {"lower", G_SCAN},        {"upper", G_SCAN}, {"reverse", G_SCAN},
                      {"sub", G_RANGE_BYTES},   {"pack", G_BUILD}, {"unpack", G_UNPACK}};
    for (size_t i = 0; i < SG_ARRAY_LEN(string_fns); i++)
        wrap_work(L, "string", string_fns[i].name, string_fns[i].kind);
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    publish_readonly(L, LUA_STRLIBNAME);

    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 0);
    static const char *const table_fns[] = {"concat", "insert", "move", "remove", "sort", "unpack"};
    for (size_t i = 0; i < SG_ARRAY_LEN(table_fns); i++) {
        lua_pushstring(L, table_fns[i]);
        wrap_field(L, table_fns[i], guarded_table, 1);
    }
    publish_readonly(L, LUA_TABLIBNAME);

    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 0);
    publish_readonly(L, LUA_MATHLIBNAME);
    luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 0);
    wrap_work(L, "utf8", "char", G_BUILD);
    wrap_work(L, "utf8", "codepoint", G_RANGE_VALUES);
    wrap_work(L, "utf8", "len", G_SCAN_UTF8);
    wrap_work(L, "utf8", "offset", G_SCAN_UTF8);
    publish_readonly(L, LUA_UTF8LIBNAME);

    /* os: only the clock and calendar functions. */
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
    lua_newtable(L);
    static const char *const os_fns[] = {"time", "clock", "date", "difftime"};
    for (size_t i = 0; i < SG_ARRAY_LEN(os_fns); i++) {
        lua_getfield(L, -2, os_fns[i]);
        lua_setfield(L, -2, os_fns[i]);
    }
    wrap_work(L, "os", "date", G_BUILD);
    publish_readonly(L, LUA_OSLIBNAME);
    lua_pop(L, 1);
    return 0;
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
    lua_pushcfunction(sb->L, open_libraries);
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
    if (status == LUA_ERRMEM) raise_memory(L, sb);
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
    if (record_source(sb, path, src, len) != 0) {
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
    set_proxy_meta(L, g, sealed_newindex, "_G");
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
