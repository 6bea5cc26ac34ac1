/* sandboxlib.c -- the library a policy sees (see sandbox_impl.h).
 *
 * Lua's standard functions, minus what a policy has no business with, plus
 * guards where a C function's work grows with its arguments: such a call
 * cannot be interrupted by the budget hook, so its work is priced against
 * the call's byte or pattern budget before it runs (or, for results of
 * unknown size, right after) and refused beyond it. Also the confined
 * require (the policy's directory, then the shipped Lua library; source
 * only), a text-only load, and read-only library tables and sealed globals,
 * because one state serves every request and nothing may carry over. */
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

static char registry_loaded_key; /* address used as a registry key */
static char loading_marker;      /* loaded[name] while name is loading */

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
            if (sg_now_mono_ns() > sb->deadline_ns)
                lua_sethook(L, sandbox_budget_hook, LUA_MASKCOUNT, 1);
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
    if (status == LUA_ERRMEM) sandbox_raise_memory(L, sb);
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
int sandbox_record_source(sg_sandbox *sb, const char *path, const char *src, size_t len)
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
    if (sandbox_record_source(sb, path, src, srclen) != 0) {
        free(src);
        sandbox_raise_memory(L, sb); /* does not return */
        return 0;
    }
    lua_pushfstring(L, "@%s", path);
    int status = luaL_loadbufferx(L, src, srclen, lua_tostring(L, -1), "t");
    free(src);
    if (status == LUA_ERRMEM) sandbox_raise_memory(L, sb);
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

int sandbox_sealed_newindex(lua_State *L)
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
void sandbox_set_proxy_meta(lua_State *L, int target, lua_CFunction newindex, const char *name)
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
    sandbox_set_proxy_meta(L, -2, readonly_newindex, name);
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

/* The base library, without what reaches files or the collector, with the
 * guarded replacements of print, load, require, pcall, xpcall and
 * setmetatable. */
static void open_base(lua_State *L)
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
    lua_register(L, "pcall", sandbox_pcall);
    lua_register(L, "xpcall", sandbox_xpcall);
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, safe_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_pushglobaltable(L);
    wrap_work(L, "", "tostring", G_TOSTRING);
    wrap_work(L, "", "tonumber", G_SCAN);
    lua_pop(L, 1);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &registry_loaded_key);
}

/* string: the real table is what the string metatable's __index sees, so
 * it is guarded in place, then the metatable is hidden and a read-only
 * proxy published. */
static void open_string(lua_State *L)
{
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
}

int sandbox_open_libraries(lua_State *L)
{
    open_base(L);
    open_string(L);
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
