/* load.c -- loads a policy file into an sg_policy (see policy.h).
 *
 * Runs the file once in a new sandbox, validates the table it returned
 * (top-level keys, realm, resource, authorization servers, scopes, implies,
 * advertise; the rule tables through rules.c), then seals the universe and
 * the sandbox: after this the policy is only read.
 *
 * Error messages name file, line and key. Lua knows the lines of functions;
 * for table keys we index the source text once (a rough Lua tokenizer that
 * records where each `key =`, `["key"] =` and string literal appears) and
 * look keys up below the line of their parent key. Good enough for typos,
 * and far better than no line at all. The index lives only while loading. */
#include "policy/policy_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

static const char *const top_keys[] = {"realm",   "resource",  "authorization_servers",
                                       "scopes",  "advertise", "implies",
                                       "tools",   "resources", "prompts",
                                       "methods", "default",   "tool_annotations"};

size_t policy_key_offset(loader *ld, const char *key)
{
    size_t off = sg_luasrc_find(&ld->idx, SG_LUASRC_KEY, key, strlen(key), 0);
    return off == SG_LUASRC_NONE ? 0 : off;
}

/* Pushes policy[key] (raw). Returns its Lua type. */
int policy_get_top(loader *ld, int policy, const char *key)
{
    lua_pushstring(ld->L, key);
    return lua_rawget(ld->L, policy);
}

static const char *get_string_field(loader *ld, int policy, const char *key)
{
    lua_State *L = ld->L;
    const char *out = NULL;
    int t = policy_get_top(ld, policy, key);
    if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (len == 0 || len > MAX_NAME_LEN || strlen(s) != len)
            policy_finding(ld, 1, sg_luasrc_line(&ld->idx, policy_key_offset(ld, key)), key,
                           "must be a non-empty string of at most %d bytes", MAX_NAME_LEN);
        else
            out = policy_arena_copy(ld, &ld->p->arena, s, len);
    } else if (t != LUA_TNIL) {
        policy_finding(ld, 1, sg_luasrc_line(&ld->idx, policy_key_offset(ld, key)), key,
                       "must be a string, got %s", luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return out;
}

/* A list of strings at the top of the stack. Returns the count or -1; the
 * strings are copied into the policy arena when out is not NULL. */
static int string_list(loader *ld, const char *key, size_t from, const char ***out)
{
    lua_State *L = ld->L;
    int line = sg_luasrc_line(&ld->idx, from);
    if (lua_type(L, -1) != LUA_TTABLE) {
        policy_finding(ld, 1, line, key, "must be a list of strings, got %s", luaL_typename(L, -1));
        return -1;
    }
    lua_Unsigned n = lua_rawlen(L, -1);
    if (n > MAX_REQ_LIST) {
        policy_finding(ld, 1, line, key, "has more than %d entries", MAX_REQ_LIST);
        return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (!(lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 &&
              (lua_Unsigned)lua_tointeger(L, -1) <= n)) {
            policy_finding(ld, 1, line, key, "must be a plain list of strings");
            lua_pop(L, 1);
            return -1;
        }
    }
    const char **list = NULL;
    if (out && n) {
        list = sg_arena_alloc(&ld->p->arena, n * sizeof *list);
        if (!list) luaL_error(L, "out of memory");
    }
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (lua_type(L, -1) != LUA_TSTRING || len == 0 || len > MAX_NAME_LEN) {
            policy_finding(ld, 1, line, key, "entry %d must be a non-empty string", (int)i);
            lua_pop(L, 1);
            return -1;
        }
        if (list) list[i - 1] = policy_arena_copy(ld, &ld->p->arena, s, len);
        lua_pop(L, 1);
    }
    if (out) *out = list;
    return (int)n;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void load_scopes(loader *ld, int policy)
{
    lua_State *L = ld->L;
    size_t from = policy_key_offset(ld, "scopes");
    int t = policy_get_top(ld, policy, "scopes");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (t != LUA_TTABLE) {
        policy_finding(ld, 1, sg_luasrc_line(&ld->idx, from), "scopes",
                       "must be a table of scope = \"description\", got %s", luaL_typename(L, -1));
        lua_pop(L, 1);
        return;
    }
    size_t nvalid = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            policy_finding(ld, 1, sg_luasrc_line(&ld->idx, from), "scopes",
                           "keys must be scope names (found a %s key; write "
                           "[\"scope\"] = \"description\")",
                           luaL_typename(L, -2));
            lua_pop(L, 1);
            continue;
        }
        size_t len;
        const char *s = lua_tolstring(L, -2, &len);
        char q[160];
        int line = policy_line_near(ld, SG_LUASRC_KEY, s, len, from);
        if (lua_type(L, -1) != LUA_TSTRING)
            policy_finding(ld, 1, line, "scopes", "the description of %s must be a string, got %s",
                           policy_quoted(q, sizeof q, s, len), luaL_typename(L, -1));
        if (!sg_scope_token_valid(s, len))
            policy_finding(
                ld, 1, line, "scopes",
                "invalid scope %s (scope tokens are 1-%d printable ASCII characters without "
                "spaces, double quotes or backslashes)",
                policy_quoted(q, sizeof q, s, len), SG_MAX_SCOPE_LEN);
        else if (!policy_refuse_reserved(ld, line, "scopes", s, len))
            nvalid++;
        lua_pop(L, 1);
    }
    /* Intern in bytewise order: scope ids then do not depend on Lua's
     * per-state hash seed, so every worker's universe numbers alike. */
    const char **names = lua_newuserdatauv(L, (nvalid ? nvalid : 1) * sizeof *names, 0);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -3)) {
        lua_pop(L, 1);
        size_t len;
        if (lua_type(L, -1) == LUA_TSTRING && n < nvalid) {
            const char *s = lua_tolstring(L, -1, &len);
            if (sg_scope_token_valid(s, len) && !policy_reserved_meaning(s, len)) names[n++] = s;
        }
    }
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        int id = sg_universe_add(ld->p->u, names[i], strlen(names[i]));
        if (id == SG_SCOPE_EFULL) {
            policy_finding(ld, 1, sg_luasrc_line(&ld->idx, from), "scopes",
                           "too many scopes (at most %d)", SG_MAX_SCOPES);
            break;
        }
        if (id < 0) luaL_error(L, "out of memory");
        sg_scopeset_add(&ld->p->declared, id);
    }
    /* The line of each declared scope's key, by id (for check's lint). */
    int *lines = n ? sg_arena_alloc(&ld->p->arena, n * sizeof *lines) : NULL;
    if (lines) memset(lines, 0, n * sizeof *lines);
    for (size_t i = 0; lines && i < n; i++) {
        int id = sg_universe_find(ld->p->u, names[i], strlen(names[i]));
        if (id >= 0 && (size_t)id < n)
            lines[id] = policy_line_near(ld, SG_LUASRC_KEY, names[i], strlen(names[i]), from);
    }
    ld->p->declared_lines = lines;
    ld->p->ndeclared_lines = lines ? (int)n : 0;
    lua_pop(L, 2);
}

static void load_implies(loader *ld, int policy)
{
    lua_State *L = ld->L;
    size_t from = policy_key_offset(ld, "implies");
    int t = policy_get_top(ld, policy, "implies");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (t != LUA_TTABLE) {
        policy_finding(ld, 1, sg_luasrc_line(&ld->idx, from), "implies",
                       "must be a table of scope = { implied scopes }, got %s",
                       luaL_typename(L, -1));
        lua_pop(L, 1);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            policy_finding(ld, 1, sg_luasrc_line(&ld->idx, from), "implies",
                           "keys must be scope names");
            lua_pop(L, 1);
            continue;
        }
        size_t len;
        const char *s = lua_tolstring(L, -2, &len);
        size_t kfrom = sg_luasrc_find(&ld->idx, SG_LUASRC_KEY, s, len, from);
        if (kfrom == SG_LUASRC_NONE) kfrom = from;
        int id_from = policy_scope_ref(ld, s, len, "implies", from, "");
        if (lua_type(L, -1) == LUA_TSTRING) {
            /* a single implied scope is fine too: { a = "b" } */
            size_t l2;
            const char *s2 = lua_tolstring(L, -1, &l2);
            int id_to = policy_scope_ref(ld, s2, l2, "implies", kfrom, "");
            if (id_from >= 0 && id_to >= 0) sg_universe_imply(ld->p->u, id_from, id_to);
            lua_pop(L, 1);
            continue;
        }
        char where[300];
        snprintf(where, sizeof where, "implies[\"%.200s\"]", s);
        int n = string_list(ld, where, kfrom, NULL);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            size_t l2;
            const char *s2 = lua_tolstring(L, -1, &l2);
            int id_to = policy_scope_ref(ld, s2, l2, "implies", kfrom, "");
            if (id_from >= 0 && id_to >= 0) sg_universe_imply(ld->p->u, id_from, id_to);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void load_advertise(loader *ld, int policy)
{
    lua_State *L = ld->L;
    size_t from = policy_key_offset(ld, "advertise");
    int t = policy_get_top(ld, policy, "advertise");
    if (t != LUA_TNIL) {
        ld->p->advertise_line = sg_luasrc_line(&ld->idx, from);
        const char **list = NULL;
        int n = string_list(ld, "advertise", from, &list);
        for (int i = 0; i < n; i++)
            policy_scope_ref(ld, list[i], strlen(list[i]), "advertise", from, " in advertise");
        if (n > 0) {
            ld->p->supported = list;
            ld->p->nsupported = n;
        }
    }
    lua_pop(L, 1);
}

/* Reports every key of the table at index policy that a policy file may
 * not have. */
static void check_top_keys(loader *ld, int policy)
{
    lua_State *L = ld->L;
    lua_pushnil(L);
    while (lua_next(L, policy)) {
        lua_pop(L, 1);
        int known = 0;
        if (lua_type(L, -1) == LUA_TSTRING) {
            for (size_t i = 0; i < SG_ARRAY_LEN(top_keys); i++)
                if (strcmp(lua_tostring(L, -1), top_keys[i]) == 0) known = 1;
        }
        if (!known) {
            char q[160] = "a non-string key";
            size_t len = 0;
            if (lua_type(L, -1) == LUA_TSTRING) {
                const char *k = lua_tolstring(L, -1, &len);
                policy_quoted(q, sizeof q, k, len);
            }
            int line = lua_type(L, -1) == LUA_TSTRING
                           ? policy_line_near(ld, SG_LUASRC_KEY, lua_tostring(L, -1), len, 0)
                           : 1;
            policy_finding(
                ld, 1, line, "",
                "unknown top-level key %s (expected realm, resource, authorization_servers, "
                "scopes, advertise, implies, tools, resources, prompts, methods, default or "
                "tool_annotations)",
                q);
        }
    }
}

/* Without `advertise`, scopes_supported is every declared scope, in
 * bytewise order. Raises when out of memory. */
static void default_supported(loader *ld)
{
    lua_State *L = ld->L;
    sg_policy *p = ld->p;
    int n = 0;
    for (int id = 0; id < sg_universe_size(p->u); id++)
        n += sg_scopeset_has(&p->declared, id);
    if (n) {
        const char **list = sg_arena_alloc(&p->arena, (size_t)n * sizeof *list);
        if (!list) luaL_error(L, "out of memory");
        n = 0;
        for (int id = 0; id < sg_universe_size(p->u); id++)
            if (sg_scopeset_has(&p->declared, id)) list[n++] = sg_universe_name(p->u, id);
        qsort(list, (size_t)n, sizeof *list, by_name);
        p->supported = list;
        p->nsupported = n;
    }
}

/* The protected body of sg_policy_new: arg 2 is what the file returned. */
static int compile_policy(lua_State *L)
{
    loader *ld = lua_touserdata(L, 1);
    sg_policy *p = ld->p;
    if (lua_type(L, 2) != LUA_TTABLE) {
        policy_finding(ld, 1, 1, "", "a policy file must return a table, got %s",
                       luaL_typename(L, 2));
        return 0;
    }
    int policy = 2;
    check_top_keys(ld, policy);
    p->realm = get_string_field(ld, policy, "realm");
    p->resource = get_string_field(ld, policy, "resource");
    const char *annotations_from = get_string_field(ld, policy, "tool_annotations");
    if (annotations_from && strcmp(annotations_from, "upstream") != 0)
        policy_finding(ld, 1, policy_line_near(ld, SG_LUASRC_KEY, "tool_annotations", 16, 0),
                       "tool_annotations",
                       "must be \"upstream\" (learn tools' MCP annotations from the upstream's "
                       "tools/list), not \"%s\"",
                       annotations_from);
    p->annotations_from_upstream = annotations_from != NULL;
    if (policy_get_top(ld, policy, "authorization_servers") != LUA_TNIL) {
        const char **list = NULL;
        int n = string_list(ld, "authorization_servers",
                            policy_key_offset(ld, "authorization_servers"), &list);
        if (n > 0) {
            p->auth_servers = list;
            p->nauth_servers = n;
        }
    }
    lua_pop(L, 1);
    load_scopes(ld, policy);
    load_implies(ld, policy);
    load_advertise(ld, policy);
    for (int w = 0; w < T_COUNT; w++)
        policy_load_rules(ld, policy, w);
    policy_load_default(ld, policy);
    policy_finish_function_scopes(ld);

    if (!p->supported) default_supported(ld);
    return 0;
}

/* ---- list-phase guard on req ------------------------------------------------------ */

char policy_list_meta_key;

static int list_phase_index(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "arguments") == 0)
        return luaL_error(L, "req.arguments is not available in the list phase (the item is "
                             "being listed, not called: check req.phase == \"call\" first)");
    return 0;
}

static int make_list_meta(lua_State *L)
{
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, list_phase_index);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &policy_list_meta_key);
    return 0;
}

/* ---- loading ------------------------------------------------------------------------ */

void policy_loader_free(loader *ld)
{
    sg_luasrc_free(&ld->idx);
    sg_buf_free(&ld->errors);
    sg_buf_free(&ld->report);
    free(ld->fconsts);
    free(ld->module_path);
    free(ld->module_src);
}

/* Loads into *out; the findings stay in ld. Returns the policy or NULL. */
sg_policy *policy_load_into(const char *path, const sg_policy_limits *limits, loader *ld)
{
    memset(ld, 0, sizeof *ld);
    sg_policy *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    ld->p = p;
    sg_arena_init(&p->arena, 16384);
    p->default_rule = (rule){
        .key = "default", .keylen = 7, .name = "default", .req = &sg_req_deny, .ref = LUA_NOREF};
    p->path = strdup(path);
    p->u = sg_universe_new();
    p->sb = p->path ? sg_sandbox_new(path, limits) : NULL;
    if (!p->path || !p->u || !p->sb) {
        sg_buf_printf(&ld->errors, "%s: out of memory\n", path);
        sg_buf_printf(&ld->report, "%s:1: error: out of memory\n", path);
        ld->nerrors++;
        sg_policy_free(p);
        return NULL;
    }
    ld->L = sg_sandbox_lua(p->sb);
    ld->arena = &p->arena;
    size_t srclen = 0;
    char *src = sg_read_file(path, SG_SANDBOX_MAX_SOURCE, &srclen);
    sg_buf err = SG_BUF_INIT;
    int failed = 0;
    if (!src) {
        sg_buf_printf(&err, "%s: cannot read policy: %s", path, strerror(errno));
        failed = 1;
    } else if (sg_luasrc_index(&ld->idx, src, srclen) != 0) {
        sg_buf_printf(&err, "%s: out of memory", path);
        failed = 1;
    } else if (sg_sandbox_run_file(p->sb, path, &err) != 0) {
        failed = 1;
    } else if (sg_sandbox_call(p->sb, compile_policy, ld, 1, 0, &err) != 0) {
        sg_buf_printf(&err, " (while compiling %s)", path);
        failed = 1;
    } else if (sg_sandbox_call(p->sb, make_list_meta, NULL, 0, 0, &err) != 0) {
        failed = 1;
    }
    if (failed) {
        /* Lua's messages already read "file:line: ..."; the others get the
         * file name (and line 1 in the report, which needs a line). */
        const char *m = err.data ? err.data : "out of memory";
        size_t plen = strlen(path), loc = policy_location_prefix(m);
        if (loc) {
            sg_buf_printf(&ld->errors, "%s\n", m);
            sg_buf_printf(&ld->report, "%.*s: error: %s\n", (int)loc, m, m + loc + 2);
        } else if (strncmp(m, path, plen) == 0 && m[plen] == ':' && m[plen + 1] == ' ') {
            sg_buf_printf(&ld->errors, "%s\n", m);
            sg_buf_printf(&ld->report, "%s:1: error: %s\n", path, m + plen + 2);
        } else {
            sg_buf_printf(&ld->errors, "%s: %s\n", path, m);
            sg_buf_printf(&ld->report, "%s:1: error: %s\n", path, m);
        }
        ld->nerrors++;
    }
    sg_buf_free(&err);
    if (!failed && ld->nerrors == 0 && sg_universe_seal(p->u) != 0) {
        sg_buf_printf(&ld->errors, "%s: out of memory\n", path);
        ld->nerrors++;
    }
    if (!failed && ld->nerrors == 0 && sg_sandbox_seal(p->sb) != 0) {
        sg_buf_printf(&ld->errors, "%s: out of memory\n", path);
        ld->nerrors++;
    }
    free(src);
    /* The index points into src: it is only good while loading. */
    sg_luasrc_free(&ld->idx);
    if (ld->nerrors) {
        sg_policy_free(p);
        return NULL;
    }
    return p;
}

sg_policy *sg_policy_new(const char *path, const sg_policy_limits *limits, sg_buf *report)
{
    loader ld;
    sg_policy *p = policy_load_into(path, limits, &ld);
    if (p) {
        sg_policy_sources_hash(p->sb, p->hash);
    } else if (report) {
        if (ld.errors.len && sg_buf_ok(&ld.errors))
            sg_buf_append(report, ld.errors.data, ld.errors.len);
        else
            sg_buf_printf(report, "%s: out of memory\n", path);
    }
    policy_loader_free(&ld);
    return p;
}
