/* testfile.c -- reading a `scopegate test` file (see testfile.h).
 *
 * The test file runs in a sandbox (sandbox.h) like a policy: the author's
 * own file, but it gets no io or os either. Lua tables carry no line
 * numbers, so a small scan of the source finds where each case's table
 * starts; malformed cases are reported as file:line errors before anything
 * runs. */
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
#include "cli/testfile.h"

#define NO_OFFSET ((size_t)-1)

static const char *const file_keys[] = {"policy", "cases", "upstream_tools", "public_url"};
static const char *const case_keys[] = {
    "tool",        "resource", "prompt", "method", "params",  "message",          "arguments",
    "annotations", "scopes",   "claims", "token",  "headers", "protocol_version", "expect",
    "challenge",   "rule",     "visible"};
static const char *const message_keys[] = {"tool", "resource", "prompt", "method", "message"};
/* The words `expect` takes, per outcome. */
const char *const sg_testfile_outcome_words[] = {
    [SG_ALLOW] = "allow",
    [SG_UNAUTHORIZED] = "401",
    [SG_FORBIDDEN] = "403",
    [SG_DENIED] = "deny",
};
_Static_assert(sizeof sg_testfile_outcome_words / sizeof *sg_testfile_outcome_words ==
                   SG_OUTCOME_COUNT,
               "every outcome");

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

int sg_testfile_by_string(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The strings sorted and joined with sep (malloc'd; "" when n is 0). */
char *sg_testfile_sorted_join(const char **items, size_t n, const char *sep)
{
    qsort(items, n, sizeof *items, sg_testfile_by_string);
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
    char *out = ok ? sg_testfile_sorted_join(items, n, sep) : NULL;
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

/* One case table being read: where it is (stack index, source span, line)
 * and how problems name it. */
typedef struct case_ctx {
    reader *rd;
    test_case *c;
    int t;
    size_t from, to;
    int line;
    const char *name;
    int before;      /* rd->nerrors when the case began */
    int has_visible; /* a `visible` case: it checks a tools/list */
} case_ctx;

/* The case's message: exactly one of tool, resource, prompt, method or
 * message (none for a `visible` case), its companions, and the upstream
 * annotations it comes with. */
static void read_case_message(case_ctx *x)
{
    reader *rd = x->rd;
    lua_State *L = rd->L;
    test_case *c = x->c;
    int t = x->t, line = x->line;
    size_t from = x->from, to = x->to;
    const char *name = x->name;
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
    int has_visible = x->has_visible = field(L, t, "visible") != LUA_TNIL;
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
    if (rd->nerrors == x->before) {
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
}

/* The caller: scopes, claims or no token, its headers and protocol
 * version. */
static void read_case_caller(case_ctx *x)
{
    reader *rd = x->rd;
    lua_State *L = rd->L;
    test_case *c = x->c;
    int t = x->t, line = x->line;
    size_t from = x->from, to = x->to;
    const char *name = x->name;
    int type;
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
}

/* The expectations: the outcome, the challenge scopes, the rule, the
 * visible tools. */
static void read_case_expect(case_ctx *x)
{
    reader *rd = x->rd;
    lua_State *L = rd->L;
    test_case *c = x->c;
    int t = x->t, line = x->line;
    size_t from = x->from, to = x->to;
    const char *name = x->name;
    int type, has_visible = x->has_visible;
    int el = key_line(rd, from, to, "expect", line);
    if ((type = field(L, t, "expect")) != LUA_TNIL) {
        const char *w = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
        if (lua_type(L, -1) == LUA_TNUMBER) w = lua_tointeger(L, -1) == 401 ? "401" : "403";
        for (int o = 0; o < (int)SG_ARRAY_LEN(sg_testfile_outcome_words); o++)
            if (strcmp(w, sg_testfile_outcome_words[o]) == 0) c->expect = o;
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

    case_ctx x = {.rd = rd,
                  .c = c,
                  .t = t,
                  .from = from,
                  .to = to,
                  .line = line,
                  .name = name,
                  .before = before};
    read_case_message(&x);
    read_case_caller(&x);
    read_case_expect(&x);
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

/* The file's settings besides its cases (the table at stack index top):
 * unknown keys, the policy path (relative to the test file), public_url,
 * upstream_tools. Problems go to rd. */
static void read_file_settings(reader *rd, test_file *f, int top)
{
    lua_State *L = rd->L;
    lua_pushnil(L);
    while (lua_next(L, top)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING ||
            !in_list(lua_tostring(L, -1), file_keys, SG_ARRAY_LEN(file_keys)))
            problem(rd,
                    lua_type(L, -1) == LUA_TSTRING
                        ? key_line(rd, 0, rd->srclen, lua_tostring(L, -1), 1)
                        : 1,
                    "unknown key %s%s%s (expected policy, cases, upstream_tools or public_url)",
                    lua_type(L, -1) == LUA_TSTRING ? "\"" : "",
                    lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a name)",
                    lua_type(L, -1) == LUA_TSTRING ? "\"" : "");
    }
    if (field(L, top, "policy") == LUA_TSTRING) {
        const char *p = lua_tostring(L, -1);
        const char *slash = strrchr(f->path, '/');
        sg_buf b = SG_BUF_INIT;
        if (p[0] != '/' && slash) sg_buf_printf(&b, "%.*s/", (int)(slash - f->path), f->path);
        sg_buf_puts(&b, p);
        f->policy_path = sg_buf_steal(&b);
    } else {
        problem(rd, key_line(rd, 0, rd->srclen, "policy", 1),
                "policy must be the path of the policy file (relative to the test file)");
    }
    lua_pop(L, 1);
    int type = field(L, top, "public_url");
    if (type == LUA_TSTRING)
        f->public_url = strdup(lua_tostring(L, -1));
    else if (type != LUA_TNIL)
        problem(rd, key_line(rd, 0, rd->srclen, "public_url", 1), "public_url must be a string");
    lua_pop(L, 1);
    if (field(L, top, "upstream_tools") != LUA_TNIL)
        read_upstream_tools(rd, f, lua_gettop(L), key_line(rd, 0, rd->srclen, "upstream_tools", 1));
    lua_pop(L, 1);
}

/* Loads and validates a test file. Returns 0, or -1 with every problem
 * appended to errors. */
int sg_testfile_read(const char *path, test_file *f, sg_buf *errors)
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
    read_file_settings(&rd, f, top);

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

void sg_testfile_free(test_file *f)
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
