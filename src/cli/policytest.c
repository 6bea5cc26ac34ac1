/* policytest.c -- `scopegate test`: policy tests written by policy authors.
 *
 * A policy is code that decides who may do what; its author needs to pin
 * down what it decides, the way `opa test` does for Rego. A test file is a
 * Lua file returning { policy = "x.lua", cases = { ... } } (format in
 * docs/policy.md). Each case is one MCP message (or a tool/resource/prompt
 * shorthand), one caller (scopes, claims or no token) and the expected
 * outcome, challenge scopes, deciding rule or visible tools.
 *
 * Outcomes cannot drift from the gateway's: every case is parsed with
 * sg_mcp_parse and decided with sg_bridge_decide, and tools/list visibility
 * with sg_bridge_list_visible, the functions the gateway itself calls.
 *
 * The test file runs in a sandbox (sandbox.h) like a policy: the author's
 * own file, but it gets no io or os either. Lua tables carry no line
 * numbers, so a small scan of the source finds where each case's table
 * starts; malformed cases are reported as file:line errors before anything
 * runs. Output is TAP; exit 0 when every case passes, 1 when one fails, 2
 * for a usage error or a test file or policy that cannot be loaded. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <lauxlib.h>
#include <lua.h>

#include "mcp/bridge.h"
#include "cli/cli.h"
#include "policy/luajson.h"
#include "policy/luasrc.h"
#include "mcp/mcp.h"
#include "policy/policy.h"
#include "policy/sandbox.h"
#include "base/sg.h"
#include "auth/token.h"

int sg_cmd_test(int argc, char **argv);

#define MAX_PATHS   64
#define MAX_HEADERS 32
#define NO_OFFSET   ((size_t)-1)

static const char *const file_keys[] = {"policy", "cases", "upstream_tools", "public_url"};
static const char *const case_keys[] = {
    "tool",        "resource", "prompt", "method", "params",  "message",          "arguments",
    "annotations", "scopes",   "claims", "token",  "headers", "protocol_version", "expect",
    "challenge",   "rule",     "visible"};
static const char *const message_keys[] = {"tool", "resource", "prompt", "method", "message"};
/* The words `expect` takes, per outcome. */
static const char *const outcome_words[] = {
    [SG_ALLOW] = "allow",
    [SG_UNAUTHORIZED] = "401",
    [SG_FORBIDDEN] = "403",
    [SG_DENIED] = "deny",
};
_Static_assert(sizeof outcome_words / sizeof *outcome_words == SG_OUTCOME_COUNT, "every outcome");

typedef struct upstream_tool {
    char *name;
    cJSON *annotations; /* NULL when the tool has none */
} upstream_tool;

typedef struct test_case {
    int line;
    char *desc;
    char *body;            /* the JSON-RPC body, as the gateway would receive it */
    char *claims;          /* JSON claims object; NULL: anonymous */
    int annotations_given; /* the case says `annotations` (overrides upstream_tools) */
    cJSON *annotations;    /* NULL with annotations_given: explicitly none */
    sg_header headers[MAX_HEADERS];
    size_t nheaders;
    char *protocol_version;
    int expect;      /* an sg_outcome, or -1 when not checked */
    char *challenge; /* expected scope=, sorted and space-separated; NULL: not checked */
    char *rule;      /* expected deciding rule; NULL: not checked */
    char *visible;   /* expected visible tools, sorted and ", "-separated; NULL: not checked */
} test_case;

typedef struct test_file {
    const char *path;
    char *policy_path;
    char *public_url;
    upstream_tool *tools;
    size_t ntools;
    test_case *cases;
    size_t ncases;
} test_file;

typedef struct tally {
    int n, passed, failed;
} tally;

/* ---- where cases are written ---------------------------------------------
 * The offsets of the tables inside `cases = { ... }`, found by a scan that
 * skips comments and strings and counts braces. Exact for hand-written
 * cases; for cases built by code the count differs and every case gets the
 * line of `cases`. */

typedef struct case_span {
    size_t start, end;
} case_span;

/* Fills spans with up to max case tables (the `{ ... }` directly inside
 * `cases = { ... }`, counted with the tokenizer so that braces in strings and
 * comments do not count); returns how many were found. */
static size_t scan_cases(const char *s, size_t n, size_t cases_key, case_span *spans, size_t max)
{
    if (cases_key == SG_LUASRC_NONE) return 0;
    sg_luasrc_token *t = NULL;
    size_t nt = sg_luasrc_tokens(s, cases_key, n, 1, &t);
    size_t count = 0;
    int depth = 0, cases_depth = -1;
    for (size_t i = 0; i < nt; i++) {
        if (sg_luasrc_token_is(s, &t[i], "{")) {
            if (cases_depth < 0) {
                cases_depth = depth + 1;
            } else if (depth == cases_depth) {
                if (count < max) spans[count].start = t[i].at;
                count++;
            }
            depth++;
        } else if (sg_luasrc_token_is(s, &t[i], "}")) {
            depth--;
            if (depth == cases_depth && count > 0 && count <= max) spans[count - 1].end = t[i].at;
            if (depth < cases_depth) break;
        }
    }
    free(t);
    return count;
}

/* ---- reading a test file -------------------------------------------------- */

typedef struct reader {
    lua_State *L;
    const char *path;
    const char *src;
    size_t srclen;
    sg_buf *errors; /* one "file:line: problem" line each */
    int nerrors;
    sg_luasrc idx; /* where keys are written in src */
} reader;

static void problem(reader *rd, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(reader *rd, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sg_buf_printf(rd->errors, "%s:%d: %s\n", rd->path, line, msg);
    rd->nerrors++;
}

/* The line of `key =` inside [from, to), else fallback. */
static int key_line(reader *rd, size_t from, size_t to, const char *key, int fallback)
{
    size_t off = sg_luasrc_find(&rd->idx, SG_LUASRC_KEY, key, strlen(key), from);
    return off == SG_LUASRC_NONE || off >= to ? fallback : sg_luasrc_line(&rd->idx, off);
}

static int in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0) return 1;
    return 0;
}

static int by_string(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The strings sorted and joined with sep (malloc'd; "" when n is 0). */
static char *sorted_join(const char **items, size_t n, const char *sep)
{
    qsort(items, n, sizeof *items, by_string);
    sg_buf b = SG_BUF_INIT;
    sg_buf_puts(&b, "");
    for (size_t i = 0; i < n; i++)
        sg_buf_printf(&b, "%s%s", i ? sep : "", items[i]);
    return sg_buf_steal(&b);
}

/* The list of strings at the top of the stack, sorted and joined, or NULL
 * after a problem. */
static char *string_list(reader *rd, int line, const char *where, const char *sep)
{
    lua_State *L = rd->L;
    if (lua_type(L, -1) != LUA_TTABLE) {
        problem(rd, line, "%s must be a list of strings, got %s", where,
                lua_typename(L, lua_type(L, -1)));
        return NULL;
    }
    size_t n = (size_t)lua_rawlen(L, -1), count = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        count++;
    }
    const char **items = calloc(n ? n : 1, sizeof *items);
    int ok = items && count == n;
    for (size_t i = 0; ok && i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            items[i] = lua_tostring(L, -1); /* alive: the list holds it */
        else
            ok = 0;
        lua_pop(L, 1);
    }
    char *out = ok ? sorted_join(items, n, sep) : NULL;
    if (!ok) problem(rd, line, "%s must be a plain list of strings", where);
    free(items);
    return out;
}

/* JSON text of the value at the top of the stack: a table, or a string
 * holding JSON. NULL after a problem. */
static cJSON *json_value(reader *rd, int line, const char *where)
{
    lua_State *L = rd->L;
    char err[256];
    cJSON *j = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        j = cJSON_Parse(lua_tostring(L, -1));
        if (!j) problem(rd, line, "%s is not valid JSON", where);
        return j;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        problem(rd, line, "%s must be a table or a JSON string, got %s", where,
                lua_typename(L, lua_type(L, -1)));
        return NULL;
    }
    if (!(j = sg_lua_to_json(L, -1, err, sizeof err))) problem(rd, line, "%s: %s", where, err);
    return j;
}

static char *json_text(cJSON *j)
{
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return s;
}

/* Pushes t[key] (raw) and returns its type. */
static int field(lua_State *L, int t, const char *key)
{
    lua_pushstring(L, key);
    return lua_rawget(L, t);
}

/* Builds the JSON-RPC body of a case from its message keys. */
static char *case_body(reader *rd, int t, int line, const char *kind, size_t from, size_t to)
{
    lua_State *L = rd->L;
    if (strcmp(kind, "message") == 0) {
        field(L, t, "message");
        cJSON *m = json_value(rd, key_line(rd, from, to, "message", line), "message");
        lua_pop(L, 1);
        return json_text(m);
    }
    cJSON *msg = cJSON_CreateObject(), *params = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "jsonrpc", "2.0");
    cJSON_AddNumberToObject(msg, "id", 1);
    field(L, t, kind);
    const char *value = lua_tostring(L, -1);
    if (strcmp(kind, "tool") == 0 || strcmp(kind, "prompt") == 0) {
        cJSON_AddStringToObject(msg, "method", kind[0] == 't' ? "tools/call" : "prompts/get");
        cJSON_AddStringToObject(params, "name", value);
        cJSON *args = NULL;
        if (field(L, t, "arguments") != LUA_TNIL)
            args = json_value(rd, key_line(rd, from, to, "arguments", line), "arguments");
        else
            args = cJSON_CreateObject();
        lua_pop(L, 1);
        if (args) cJSON_AddItemToObject(params, "arguments", args);
    } else if (strcmp(kind, "resource") == 0) {
        cJSON_AddStringToObject(msg, "method", "resources/read");
        cJSON_AddStringToObject(params, "uri", value);
    } else {
        cJSON_AddStringToObject(msg, "method", value);
        cJSON_Delete(params);
        params = NULL;
        if (field(L, t, "params") != LUA_TNIL)
            params = json_value(rd, key_line(rd, from, to, "params", line), "params");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (params) cJSON_AddItemToObject(msg, "params", params);
    return json_text(msg);
}

/* Reads the case table at the top of the stack into c. */
static void read_case(reader *rd, test_case *c, int index, const case_span *span)
{
    lua_State *L = rd->L;
    int t = lua_gettop(L);
    size_t from = span ? span->start : 0, to = span ? span->end : 0;
    int line = c->line;
    int before = rd->nerrors;
    c->expect = -1;
    if (lua_type(L, t) != LUA_TTABLE) {
        problem(rd, line, "case %d must be a table, got %s", index, luaL_typename(L, t));
        return;
    }
    if (lua_rawgeti(L, t, 1) == LUA_TSTRING && lua_rawlen(L, -1) > 0)
        c->desc = strdup(lua_tostring(L, -1));
    else
        problem(rd, line, "case %d: the first entry must be a description string", index);
    lua_pop(L, 1);
    char name[160]; /* how problems name the case */
    if (c->desc)
        snprintf(name, sizeof name, "case %d \"%.120s\"", index, c->desc);
    else
        snprintf(name, sizeof name, "case %d", index);
    /* keys: [1] = description, then the known names */
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -1);
            if (!in_list(k, case_keys, SG_ARRAY_LEN(case_keys)))
                problem(rd, key_line(rd, from, to, k, line),
                        "%s: unknown key \"%s\" (expected a description first, then tool, "
                        "resource, prompt, method, params, message, arguments, annotations, "
                        "scopes, claims, token, headers, protocol_version, expect, challenge, "
                        "rule or visible)",
                        name, k);
        } else if (!(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 1)) {
            problem(rd, line, "%s: only one list entry is allowed (the description)", name);
        }
    }

    /* the message */
    const char *kind = NULL;
    int nkinds = 0;
    for (size_t k = 0; k < SG_ARRAY_LEN(message_keys); k++) {
        int type = field(L, t, message_keys[k]);
        if (type != LUA_TNIL) {
            nkinds++;
            kind = message_keys[k];
            if (strcmp(kind, "message") != 0 && type != LUA_TSTRING)
                problem(rd, key_line(rd, from, to, kind, line), "%s: %s must be a string", name,
                        kind);
        }
        lua_pop(L, 1);
    }
    int has_visible = field(L, t, "visible") != LUA_TNIL;
    lua_pop(L, 1);
    if (has_visible && nkinds > 0)
        problem(rd, line,
                "%s: visible checks a tools/list; it takes no tool, resource, prompt, "
                "method or message",
                name);
    else if (!has_visible && nkinds != 1)
        problem(rd, line, "%s: give exactly one of tool, resource, prompt, method or message",
                name);
    static const struct {
        const char *key, *needs;
    } companions[] = {
        {"arguments", "tool or prompt"}, {"annotations", "tool"}, {"params", "method"}};
    for (size_t k = 0; k < SG_ARRAY_LEN(companions); k++) {
        int present = field(L, t, companions[k].key) != LUA_TNIL;
        lua_pop(L, 1);
        if (present && (!kind || !strstr(companions[k].needs, kind)))
            problem(rd, key_line(rd, from, to, companions[k].key, line), "%s: %s goes with %s",
                    name, companions[k].key, companions[k].needs);
    }
    if (rd->nerrors == before) {
        if (has_visible)
            c->body = strdup("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}");
        else
            c->body = case_body(rd, t, line, kind, from, to);
    }
    int type = field(L, t, "annotations");
    if (type == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        c->annotations_given = 1;
    } else if (type == LUA_TTABLE) {
        c->annotations_given = 1;
        c->annotations = json_value(rd, key_line(rd, from, to, "annotations", line), "annotations");
    } else if (type != LUA_TNIL) {
        problem(rd, key_line(rd, from, to, "annotations", line),
                "%s: annotations must be a table or false", name);
    }
    lua_pop(L, 1);

    /* the caller */
    int ncallers = 0;
    if (field(L, t, "scopes") != LUA_TNIL) {
        ncallers++;
        char *scopes = string_list(rd, key_line(rd, from, to, "scopes", line), "scopes", " ");
        cJSON *claims = cJSON_CreateObject();
        cJSON_AddStringToObject(claims, "sub", "scopegate-test");
        if (scopes) cJSON_AddStringToObject(claims, "scope", scopes);
        free(scopes);
        c->claims = json_text(claims);
    }
    lua_pop(L, 1);
    if (field(L, t, "claims") != LUA_TNIL) {
        ncallers++;
        c->claims = json_text(json_value(rd, key_line(rd, from, to, "claims", line), "claims"));
    }
    lua_pop(L, 1);
    type = field(L, t, "token");
    if (type != LUA_TNIL) {
        ncallers++;
        if (type != LUA_TBOOLEAN || lua_toboolean(L, -1))
            problem(rd, key_line(rd, from, to, "token", line),
                    "%s: token can only be false (no token); give scopes or claims "
                    "for a caller with one",
                    name);
    }
    lua_pop(L, 1);
    if (ncallers > 1) problem(rd, line, "%s: give at most one of scopes, claims and token", name);
    if (field(L, t, "headers") != LUA_TNIL) {
        int hl = key_line(rd, from, to, "headers", line);
        if (lua_type(L, -1) != LUA_TTABLE) {
            problem(rd, hl, "%s: headers must map names to strings", name);
        } else {
            lua_pushnil(L);
            while (lua_next(L, -2)) {
                if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                    problem(rd, hl, "%s: headers must map names to strings", name);
                } else if (c->nheaders == MAX_HEADERS) {
                    problem(rd, hl, "%s: more than %d headers", name, MAX_HEADERS);
                } else {
                    char *n = strdup(lua_tostring(L, -2));
                    for (char *p = n; p && *p; p++)
                        *p = (char)tolower((unsigned char)*p);
                    c->headers[c->nheaders].name = n;
                    c->headers[c->nheaders++].value = strdup(lua_tostring(L, -1));
                }
                lua_pop(L, 1);
            }
        }
    }
    lua_pop(L, 1);
    if ((type = field(L, t, "protocol_version")) == LUA_TSTRING)
        c->protocol_version = strdup(lua_tostring(L, -1));
    else if (type != LUA_TNIL)
        problem(rd, key_line(rd, from, to, "protocol_version", line),
                "%s: protocol_version must be a string", name);
    lua_pop(L, 1);

    /* the expectations */
    int el = key_line(rd, from, to, "expect", line);
    if ((type = field(L, t, "expect")) != LUA_TNIL) {
        const char *w = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
        if (lua_type(L, -1) == LUA_TNUMBER) w = lua_tointeger(L, -1) == 401 ? "401" : "403";
        for (int o = 0; o < (int)SG_ARRAY_LEN(outcome_words); o++)
            if (strcmp(w, outcome_words[o]) == 0) c->expect = o;
        if (lua_type(L, -1) == LUA_TNUMBER)
            problem(rd, el, "%s: expect must be a string: write expect = \"%s\"", name, w);
        else if (c->expect < 0)
            problem(rd, el,
                    "%s: expect must be \"allow\", \"401\", \"403\" or \"deny\", not "
                    "\"%s\"",
                    name, lua_type(L, -1) == LUA_TSTRING ? w : luaL_typename(L, -1));
    } else if (!has_visible) {
        problem(rd, line, "%s: expect is missing (allow, 401, 403 or deny)", name);
    }
    lua_pop(L, 1);
    if (field(L, t, "challenge") != LUA_TNIL) {
        c->challenge = string_list(rd, key_line(rd, from, to, "challenge", line), "challenge", " ");
        if (c->expect != SG_UNAUTHORIZED && c->expect != SG_FORBIDDEN)
            problem(rd, key_line(rd, from, to, "challenge", line),
                    "%s: challenge goes with expect = \"401\" or \"403\"", name);
    }
    lua_pop(L, 1);
    if ((type = field(L, t, "rule")) == LUA_TSTRING)
        c->rule = strdup(lua_tostring(L, -1));
    else if (type != LUA_TNIL)
        problem(rd, key_line(rd, from, to, "rule", line), "%s: rule must be a string", name);
    lua_pop(L, 1);
    if (has_visible) {
        field(L, t, "visible");
        c->visible = string_list(rd, key_line(rd, from, to, "visible", line), "visible", ", ");
        lua_pop(L, 1);
    }
}

static void read_upstream_tools(reader *rd, test_file *f, int t, int line)
{
    lua_State *L = rd->L;
    if (lua_type(L, t) != LUA_TTABLE) {
        problem(rd, line, "upstream_tools must be a list of { name = ..., annotations = ... }");
        return;
    }
    size_t n = (size_t)lua_rawlen(L, t);
    f->tools = calloc(n ? n : 1, sizeof *f->tools);
    for (size_t i = 0; f->tools && i < n; i++) {
        lua_rawgeti(L, t, (lua_Integer)i + 1);
        int e = lua_gettop(L);
        if (lua_type(L, e) != LUA_TTABLE || field(L, e, "name") != LUA_TSTRING) {
            problem(rd, line, "upstream_tools[%zu] must be a table with a string name", i + 1);
        } else {
            f->tools[f->ntools].name = strdup(lua_tostring(L, -1));
            if (field(L, e, "annotations") != LUA_TNIL)
                f->tools[f->ntools].annotations =
                    json_value(rd, line, "upstream_tools annotations");
            lua_pop(L, 1);
            f->ntools++;
        }
        lua_settop(L, e - 1);
    }
}

/* Loads and validates a test file. Returns 0, or -1 with every problem
 * appended to errors. */
static int read_test_file(const char *path, test_file *f, sg_buf *errors)
{
    memset(f, 0, sizeof *f);
    f->path = path;
    size_t srclen = 0;
    char *src = sg_read_file(path, SG_SANDBOX_MAX_SOURCE, &srclen);
    if (!src) {
        sg_buf_printf(errors, "%s: cannot read: %s\n", path, strerror(errno));
        return -1;
    }
    sg_sandbox *sb = sg_sandbox_new(path, NULL);
    sg_buf err = SG_BUF_INIT;
    if (!sb || sg_sandbox_run_file(sb, path, &err) != 0) {
        sg_buf_printf(errors, "%s\n", err.data ? err.data : "out of memory");
        sg_buf_free(&err);
        sg_sandbox_free(sb);
        free(src);
        return -1;
    }
    sg_buf_free(&err);
    reader rd = {sg_sandbox_lua(sb), path, src, srclen, errors, 0, {0}};
    sg_luasrc_index(&rd.idx, src, srclen); /* out of memory: lines fall back */
    lua_State *L = rd.L;
    int top = lua_gettop(L);
    if (lua_type(L, top) != LUA_TTABLE) {
        problem(&rd, 1, "a test file must return a table { policy = ..., cases = { ... } }");
        goto out;
    }
    lua_pushnil(L);
    while (lua_next(L, top)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING ||
            !in_list(lua_tostring(L, -1), file_keys, SG_ARRAY_LEN(file_keys)))
            problem(&rd,
                    lua_type(L, -1) == LUA_TSTRING
                        ? key_line(&rd, 0, srclen, lua_tostring(L, -1), 1)
                        : 1,
                    "unknown key %s%s%s (expected policy, cases, upstream_tools or public_url)",
                    lua_type(L, -1) == LUA_TSTRING ? "\"" : "",
                    lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a name)",
                    lua_type(L, -1) == LUA_TSTRING ? "\"" : "");
    }
    if (field(L, top, "policy") == LUA_TSTRING) {
        const char *p = lua_tostring(L, -1);
        const char *slash = strrchr(path, '/');
        sg_buf b = SG_BUF_INIT;
        if (p[0] != '/' && slash) sg_buf_printf(&b, "%.*s/", (int)(slash - path), path);
        sg_buf_puts(&b, p);
        f->policy_path = sg_buf_steal(&b);
    } else {
        problem(&rd, key_line(&rd, 0, srclen, "policy", 1),
                "policy must be the path of the policy file (relative to the test file)");
    }
    lua_pop(L, 1);
    int type = field(L, top, "public_url");
    if (type == LUA_TSTRING)
        f->public_url = strdup(lua_tostring(L, -1));
    else if (type != LUA_TNIL)
        problem(&rd, key_line(&rd, 0, srclen, "public_url", 1), "public_url must be a string");
    lua_pop(L, 1);
    if (field(L, top, "upstream_tools") != LUA_TNIL)
        read_upstream_tools(&rd, f, lua_gettop(L), key_line(&rd, 0, srclen, "upstream_tools", 1));
    lua_pop(L, 1);

    size_t cases_key = sg_luasrc_find(&rd.idx, SG_LUASRC_KEY, "cases", 5, 0);
    int cases_line = cases_key == SG_LUASRC_NONE ? 1 : sg_luasrc_line(&rd.idx, cases_key);
    if (field(L, top, "cases") != LUA_TTABLE || lua_rawlen(L, -1) == 0) {
        problem(&rd, cases_line, "cases must be a non-empty list of cases");
        goto out;
    }
    int ct = lua_gettop(L);
    f->ncases = (size_t)lua_rawlen(L, ct);
    f->cases = calloc(f->ncases, sizeof *f->cases);
    case_span *spans = calloc(f->ncases, sizeof *spans);
    if (!f->cases || !spans) {
        free(spans);
        problem(&rd, cases_line, "out of memory");
        goto out;
    }
    int exact = scan_cases(src, srclen, cases_key, spans, f->ncases) == f->ncases;
    for (size_t i = 0; i < f->ncases; i++) {
        test_case *c = &f->cases[i];
        c->line = exact ? sg_luasrc_line(&rd.idx, spans[i].start) : cases_line;
        lua_rawgeti(L, ct, (lua_Integer)i + 1);
        read_case(&rd, c, (int)i + 1, exact ? &spans[i] : NULL);
        lua_settop(L, ct);
    }
    free(spans);
out:
    sg_luasrc_free(&rd.idx);
    sg_sandbox_free(sb);
    free(src);
    return rd.nerrors ? -1 : 0;
}

static void free_test_file(test_file *f)
{
    for (size_t i = 0; i < f->ntools; i++) {
        free(f->tools[i].name);
        cJSON_Delete(f->tools[i].annotations);
    }
    free(f->tools);
    for (size_t i = 0; i < f->ncases; i++) {
        test_case *c = &f->cases[i];
        free(c->desc);
        free(c->body);
        free(c->claims);
        cJSON_Delete(c->annotations);
        for (size_t h = 0; h < c->nheaders; h++) {
            free((char *)c->headers[h].name);
            free((char *)c->headers[h].value);
        }
        free(c->protocol_version);
        free(c->challenge);
        free(c->rule);
        free(c->visible);
    }
    free(f->cases);
    free(f->policy_path);
    free(f->public_url);
}

/* ---- running a case ------------------------------------------------------- */

typedef struct annotations_lookup {
    const test_file *f;
    const test_case *c;
} annotations_lookup;

/* The tools/call annotations: the case's own, else its upstream tool's. */
static const cJSON *case_annotations(void *ud, const char *tool)
{
    const annotations_lookup *l = ud;
    if (l->c->annotations_given) return l->c->annotations;
    for (size_t i = 0; i < l->f->ntools; i++)
        if (strcmp(l->f->tools[i].name, tool) == 0) return l->f->tools[i].annotations;
    return NULL;
}

static void describe_rule(const sg_universe *u, const sg_policy_decision *d, sg_buf *out)
{
    sg_buf_printf(out, "%s", d->rule ? d->rule : "?");
    if (d->line > 0) sg_buf_printf(out, " (%s:%d)", d->file, d->line);
    sg_buf_puts(out, " requires ");
    sg_req_to_lua(u, d->req ? d->req : &sg_req_deny, out);
    if (d->error) sg_buf_printf(out, "; policy error: %s", d->error);
}

static void describe_outcome(int outcome, const char *scopes, sg_buf *out)
{
    sg_buf_puts(out, outcome >= 0 ? outcome_words[outcome] : "?");
    if (scopes) sg_buf_printf(out, " challenge scope=\"%s\"", scopes);
}

/* Runs one case; prints its TAP line (and diagnostics when it fails). */
static void run_case(const test_file *f, sg_policy *p, const sg_site *site, const test_case *c,
                     tally *t)
{
    const sg_universe *u = site->universe;
    sg_buf diag = SG_BUF_INIT;
    sg_mcp_body body;
    memset(&body, 0, sizeof body);
    sg_token *token = NULL;
    sg_arena arena;
    sg_arena_init(&arena, 4096);
    sg_decision d;
    sg_decision_init(&d);
    sg_policy_decision *each = NULL;
    int ok = 1;

    if (c->claims) {
        sg_token_err e = sg_token_from_claims(c->claims, strlen(c->claims), &token);
        if (e != SG_TOKEN_OK) {
            sg_buf_printf(&diag, "#   the caller's claims are refused: %s\n",
                          sg_token_error_message(e));
            ok = 0;
            goto report;
        }
    }
    int prc = sg_mcp_parse(c->body, strlen(c->body), NULL, &body);
    if (prc != 0) {
        sg_buf_printf(&diag, "#   the gateway would answer 400: %s\n#   message:  %s\n",
                      body.error_message, c->body);
        ok = 0;
        goto report;
    }
    annotations_lookup lookup = {f, c};
    sg_bridge_caller caller = {.token = token,
                               .headers = c->headers,
                               .nheaders = c->nheaders,
                               .protocol_version = c->protocol_version ? c->protocol_version
                                                                       : SG_MCP_DEFAULT_VERSION,
                               .annotations = case_annotations,
                               .annotations_ud = &lookup};
    each = calloc(body.nmsgs, sizeof *each);
    sg_bridge_decide(p, &body, &caller, site, &arena, each, &d);

    sg_buf scope = SG_BUF_INIT;
    char *actual_scopes = NULL;
    if (d.challenge.len && (d.outcome == SG_UNAUTHORIZED || d.outcome == SG_FORBIDDEN)) {
        sg_universe_format(u, &d.scope, &scope);
        /* sort as the expectation is sorted */
        size_t n = 0;
        const char *items[1024];
        for (char *s = scope.data ? strtok(scope.data, " ") : NULL; s && n < 1024;
             s = strtok(NULL, " "))
            items[n++] = s;
        actual_scopes = sorted_join(items, n, " ");
    }
    int outcome_ok = c->expect < 0 || (int)d.outcome == c->expect;
    int challenge_ok = !c->challenge || (actual_scopes && strcmp(actual_scopes, c->challenge) == 0);
    int rule_ok =
        !c->rule || (each && body.nmsgs == 1 && each[0].rule && strcmp(each[0].rule, c->rule) == 0);
    if (!outcome_ok || !challenge_ok || !rule_ok) {
        ok = 0;
        sg_buf_puts(&diag, "#   expected: ");
        describe_outcome(c->expect >= 0 ? c->expect : (int)d.outcome, c->challenge, &diag);
        if (c->rule) sg_buf_printf(&diag, ", rule %s", c->rule);
        sg_buf_puts(&diag, "\n#   actual:   ");
        describe_outcome((int)d.outcome, actual_scopes, &diag);
        if (c->rule && each && body.nmsgs == 1)
            sg_buf_printf(&diag, ", rule %s", each[0].rule ? each[0].rule : "?");
        sg_buf_puts(&diag, "\n");
        for (size_t i = 0; each && i < body.nmsgs; i++) {
            sg_buf_printf(&diag, "#   decided:  ");
            describe_rule(u, &each[i], &diag);
            sg_buf_puts(&diag, "\n");
        }
        if (d.message.len) sg_buf_printf(&diag, "#   message:  %s\n", d.message.data);
    }
    free(actual_scopes);
    sg_buf_free(&scope);

    if (c->visible) {
        sg_buf seen_diag = SG_BUF_INIT;
        const char **seen = calloc(f->ntools ? f->ntools : 1, sizeof *seen);
        size_t nseen = 0;
        sg_scopeset granted, effective;
        sg_token_granted(u, token, &granted);
        sg_universe_effective(u, &granted, &effective);
        for (size_t i = 0; seen && d.outcome == SG_ALLOW && i < f->ntools; i++) {
            sg_policy_input in = {.phase = SG_PHASE_LIST,
                                  .method = "tools/call",
                                  .name = f->tools[i].name,
                                  .token = token,
                                  .protocol_version = caller.protocol_version,
                                  .annotations = f->tools[i].annotations};
            sg_policy_decision ld;
            if (sg_bridge_list_visible(p, &in, &effective, &arena, &ld))
                seen[nseen++] = f->tools[i].name;
            sg_buf_printf(&seen_diag, "#     %s: ", f->tools[i].name);
            describe_rule(u, &ld, &seen_diag);
            sg_buf_puts(&seen_diag, "\n");
        }
        char *actual = seen ? sorted_join(seen, nseen, ", ") : NULL;
        if (!actual || strcmp(actual, c->visible) != 0) {
            ok = 0;
            sg_buf_printf(&diag, "#   expected visible: %s\n#   actual visible:   %s\n", c->visible,
                          actual ? actual : "?");
            if (d.outcome != SG_ALLOW)
                sg_buf_printf(&diag, "#   (tools/list itself is refused: %s)\n",
                              outcome_words[d.outcome]);
            else if (seen_diag.len)
                sg_buf_printf(&diag, "#   list phase:\n%s", seen_diag.data);
        }
        free(actual);
        free(seen);
        sg_buf_free(&seen_diag);
    }

report:
    t->n++;
    if (ok) {
        t->passed++;
        printf("ok %d - %s\n", t->n, c->desc);
    } else {
        t->failed++;
        printf("not ok %d - %s\n#   at:       %s:%d\n%s", t->n, c->desc, f->path, c->line,
               diag.data ? diag.data : "");
    }
    sg_buf_free(&diag);
    free(each);
    sg_mcp_body_free(&body);
    sg_decision_free(&d);
    sg_arena_free(&arena);
    sg_token_free(token);
}

/* Runs one test file. Returns 0, or -1 when it or its policy cannot be
 * loaded (reported on stderr). */
static int run_file(const char *path, tally *t)
{
    test_file f;
    sg_buf errors = SG_BUF_INIT;
    int rc = -1;
    if (read_test_file(path, &f, &errors) != 0) {
        fprintf(stderr, "%s", errors.data ? errors.data : "");
        printf("# %s: not run (the test file has errors)\n", path);
        goto out;
    }
    char *err = NULL;
    sg_policy *p = sg_policy_load(f.policy_path, NULL, &err);
    if (!p) {
        fprintf(stderr, "%s", err ? err : "out of memory\n");
        free(err);
        printf("# %s: not run (the policy %s does not load)\n", path, f.policy_path);
        goto out;
    }
    printf("# %s (policy %s)\n", path, f.policy_path);
    sg_buf rm = SG_BUF_INIT;
    sg_site site;
    sg_bridge_site(p, f.public_url, &rm, &site);
    for (size_t i = 0; i < f.ncases; i++)
        run_case(&f, p, &site, &f.cases[i], t);
    sg_buf_free(&rm);
    sg_policy_free(p);
    rc = 0;
out:
    free_test_file(&f);
    sg_buf_free(&errors);
    return rc;
}

/* ---- the command ---------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Runs every *.test.lua of dir, in bytewise order. Returns -1 when one
 * cannot be loaded or the directory cannot be read. */
static int run_dir(const char *dir, tally *t)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "scopegate test: cannot read %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!ends_with(e->d_name, ".test.lua")) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        sg_buf b = SG_BUF_INIT;
        sg_buf_printf(&b, "%s/%s", dir, e->d_name);
        names[n++] = sg_buf_steal(&b);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_string);
    int rc = 0;
    if (n == 0) {
        fprintf(stderr, "scopegate test: no *.test.lua files in %s\n", dir);
        rc = -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (names[i] && run_file(names[i], t) != 0) rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

static int test_usage(FILE *f)
{
    fputs("usage: scopegate test PATH...\n"
          "Runs policy tests: each PATH is a test file (a Lua file returning\n"
          "{ policy = \"x.lua\", cases = { ... } }, see docs/policy.md) or a directory,\n"
          "whose *.test.lua files are run. Prints TAP and a closing '# N passed, N failed'.\n"
          "Exit status: 0 every case passed, 1 a case failed, 2 usage error or a test\n"
          "file or policy that cannot be loaded.\n",
          f);
    return f == stderr ? 2 : 0;
}

int sg_cmd_test(int argc, char **argv)
{
    const char *paths[MAX_PATHS];
    int npaths;
    int rc = sg_flags_parse("test", argc, argv, 2, NULL, 0, paths, MAX_PATHS, &npaths);
    if (rc == 1) return test_usage(stdout);
    if (rc < 0) return 2;
    if (npaths == 0) return test_usage(stderr);
    tally t = {0, 0, 0};
    int load_failed = 0;
    printf("TAP version 13\n");
    for (int i = 0; i < npaths; i++) {
        struct stat st;
        if (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode))
            load_failed |= run_dir(paths[i], &t) != 0;
        else
            load_failed |= run_file(paths[i], &t) != 0;
    }
    printf("1..%d\n# %d passed, %d failed\n", t.n, t.passed, t.failed);
    fflush(stdout);
    if (load_failed) return 2;
    return t.failed ? 1 : 0;
}
