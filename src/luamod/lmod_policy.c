/* lmod_policy.c -- Lua bindings for the policy subsystem (policy.h, sandbox.h).
 *
 * They exist so busted specs and tools drive the real C loader, sandbox and
 * decision code:
 *   core.policy_load(path [, limits])  -> policy | nil, message
 *   policy:decide{ phase=, method=, name=, arguments_json=, annotations_json=,
 *                  protocol_version=,
 *                  token = { sub=, client_id=, scopes = {...}, claims_json=, exp= },
 *                  headers = { name = value } }
 *       -> { rule=, line=, file=, requirement=<policy notation>, why=, error= }
 *   policy:evaluate{ message = <table or JSON text>, claims = <table or JSON>,
 *                    annotations = { [tool] = {...} }, protocol_version=,
 *                    public_url= }
 *       -> { outcome = "allow"|"401"|"403"|"deny"|"400", status=, challenge=,
 *            scope = {...}, message=, decisions = { {rule=, line=, file=,
 *            requirement=, error=}, ... } }
 *       the whole gateway decision (sg_bridge_decide), for scopegate.testing
 *   policy:visible{ name=, annotations = {...}, claims = ..., protocol_version= }
 *       -> shown (boolean), { rule=, line=, file=, requirement=, error= }
 *       a tools/list item as the gateway filters it (sg_bridge_list_visible)
 *   policy:info(), policy:stats(), policy:tool_requirement(name), policy:close()
 *   core.policy_check(path [, limits]) -> number of errors, report
 *   core.policy_clock() -> monotonic seconds (for timing specs)
 *   core.policy_pattern_cost(pattern, subject_len [, anchored_ok]) -> estimate
 * Every argument is checked with luaL_check*; C resources are only taken
 * after all Lua-side validation so an error cannot leak them. */
#include "luamod/lmod.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "mcp/bridge.h"
#include "policy/luajson.h"
#include "mcp/mcp.h"
#include "policy/policy.h"
#include "policy/sandbox.h"

#define POLICY_MT     "scopegate.policy"
#define MAX_HEADERS   256
#define MAX_SCOPES_IN 1024

typedef struct lpolicy {
    sg_policy *p;
} lpolicy;

static sg_policy *check_policy(lua_State *L)
{
    lpolicy *ud = luaL_checkudata(L, 1, POLICY_MT);
    if (!ud->p) luaL_error(L, "policy is closed");
    return ud->p;
}

static size_t opt_size_field(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    lua_Integer v = 0;
    if (!lua_isnil(L, -1)) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < 0) luaL_error(L, "limits.%s must be a non-negative integer", key);
    }
    lua_pop(L, 1);
    return (size_t)v;
}

static void read_limits(lua_State *L, int idx, sg_policy_limits *lim)
{
    memset(lim, 0, sizeof *lim);
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lim->call_instructions = opt_size_field(L, idx, "instructions");
    lim->call_time_ms = (uint32_t)opt_size_field(L, idx, "time_ms");
    lim->call_memory = opt_size_field(L, idx, "memory");
    lim->load_instructions = opt_size_field(L, idx, "load_instructions");
    lim->load_time_ms = (uint32_t)opt_size_field(L, idx, "load_time_ms");
    lim->load_memory = opt_size_field(L, idx, "load_memory");
    lim->pattern_steps = opt_size_field(L, idx, "pattern_steps");
    lim->call_bytes = opt_size_field(L, idx, "bytes");
    lim->arguments_bytes = opt_size_field(L, idx, "arguments_bytes");
    lim->arguments_depth = (uint32_t)opt_size_field(L, idx, "arguments_depth");
}

static int l_policy_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sg_policy_limits lim;
    read_limits(L, 2, &lim);
    lpolicy *ud = lua_newuserdatauv(L, sizeof *ud, 0);
    ud->p = NULL;
    luaL_setmetatable(L, POLICY_MT);
    sg_buf report = SG_BUF_INIT;
    ud->p = sg_policy_new(path, &lim, &report);
    if (!ud->p) {
        while (report.len && report.data[report.len - 1] == '\n') /* one message, as before */
            report.data[--report.len] = '\0';
        lua_pushnil(L);
        lua_pushstring(L, sg_buf_ok(&report) && report.data ? report.data : "out of memory");
        sg_buf_free(&report);
        return 2;
    }
    return 1;
}

static int l_policy_gc(lua_State *L)
{
    lpolicy *ud = luaL_checkudata(L, 1, POLICY_MT);
    sg_policy_free(ud->p);
    ud->p = NULL;
    return 0;
}

/* Optional string field of the table at t; NULL when absent. */
static const char *opt_string_field(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    const char *s = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s must be a string", key);
        s = lua_tostring(L, -1);
    }
    /* Leave the value referenced by the input table; pop our copy. The
     * string stays alive because the table (an argument) holds it. */
    lua_pop(L, 1);
    return s;
}

typedef struct decide_args {
    sg_policy_input in;
    const char *arguments_json, *annotations_json, *claims_json;
    int has_token;
    sg_token token;
    const char *scopes[MAX_SCOPES_IN];
    sg_header headers[MAX_HEADERS];
    char *header_names[MAX_HEADERS];
} decide_args;

static void read_decide_args(lua_State *L, decide_args *d)
{
    luaL_checktype(L, 2, LUA_TTABLE);
    memset(d, 0, sizeof *d);
    const char *phase = opt_string_field(L, 2, "phase");
    if (!phase || strcmp(phase, "call") == 0)
        d->in.phase = SG_PHASE_CALL;
    else if (strcmp(phase, "list") == 0)
        d->in.phase = SG_PHASE_LIST;
    else
        luaL_error(L, "phase must be \"list\" or \"call\"");
    d->in.method = opt_string_field(L, 2, "method");
    if (!d->in.method) luaL_error(L, "method is required");
    d->in.name = opt_string_field(L, 2, "name");
    d->in.protocol_version = opt_string_field(L, 2, "protocol_version");
    d->arguments_json = opt_string_field(L, 2, "arguments_json");
    d->annotations_json = opt_string_field(L, 2, "annotations_json");

    if (lua_getfield(L, 2, "token") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        int t = lua_gettop(L);
        d->has_token = 1;
        d->token.sub = opt_string_field(L, t, "sub");
        d->token.client_id = opt_string_field(L, t, "client_id");
        d->token.iss = opt_string_field(L, t, "iss");
        d->claims_json = opt_string_field(L, t, "claims_json");
        lua_getfield(L, t, "exp");
        d->token.exp = lua_isnil(L, -1) ? 0 : (int64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, t, "scopes") != LUA_TNIL) {
            luaL_checktype(L, -1, LUA_TTABLE);
            lua_Unsigned n = lua_rawlen(L, -1);
            if (n > MAX_SCOPES_IN) luaL_error(L, "token.scopes: too many scopes");
            for (lua_Unsigned i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, (lua_Integer)i);
                if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "token.scopes must hold strings");
                d->scopes[i - 1] = lua_tostring(L, -1);
                lua_pop(L, 1);
            }
            d->token.nscopes = (int)n;
            d->token.scopes = d->scopes;
        }
        lua_pop(L, 1);
        /* Keep the token table on the stack: its strings stay referenced. */
    } else {
        lua_pop(L, 1);
    }

    if (lua_getfield(L, 2, "headers") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "headers must map names to string values");
            if (d->in.nheaders == MAX_HEADERS) luaL_error(L, "too many headers");
            d->headers[d->in.nheaders].name = lua_tostring(L, -2);
            d->headers[d->in.nheaders].value = lua_tostring(L, -1);
            d->in.nheaders++;
            lua_pop(L, 1);
        }
    }
    /* The headers table stays on the stack too. */
}

static void free_decide_args(decide_args *d)
{
    for (size_t i = 0; i < d->in.nheaders; i++)
        free(d->header_names[i]);
    cJSON_Delete((cJSON *)d->in.arguments);
    cJSON_Delete((cJSON *)d->in.annotations);
    cJSON_Delete((cJSON *)d->token.claims);
}

static cJSON *parse_json(const char *s)
{
    const char *end = NULL;
    size_t len = strlen(s);
    cJSON *j = cJSON_ParseWithLengthOpts(s, len, &end, 0);
    if (j && end != s + len) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static int l_policy_decide(lua_State *L)
{
    sg_policy *p = check_policy(L);
    decide_args *d = lua_newuserdatauv(L, sizeof *d, 0); /* scratch, collected by Lua */
    lua_insert(L, 3);
    read_decide_args(L, d);

    /* From here C resources are held: no Lua call may raise until freed. */
    const char *bad = NULL;
    if (d->arguments_json && !(d->in.arguments = parse_json(d->arguments_json)))
        bad = "arguments_json is not valid JSON";
    if (!bad && d->annotations_json && !(d->in.annotations = parse_json(d->annotations_json)))
        bad = "annotations_json is not valid JSON";
    if (!bad && d->claims_json && !(d->token.claims = parse_json(d->claims_json)))
        bad = "token.claims_json is not valid JSON";
    for (size_t i = 0; !bad && i < d->in.nheaders; i++) {
        d->header_names[i] = strdup(d->headers[i].name);
        if (!d->header_names[i]) bad = "out of memory";
        for (char *c = d->header_names[i]; c && *c; c++)
            *c = (char)tolower((unsigned char)*c);
        d->headers[i].name = d->header_names[i];
    }
    if (bad) {
        free_decide_args(d);
        return luaL_error(L, "%s", bad);
    }
    d->in.headers = d->headers;
    if (d->has_token) d->in.token = &d->token;

    sg_arena arena;
    sg_arena_init(&arena, 4096);
    sg_policy_decision out;
    int rc = sg_policy_decide(p, &d->in, &arena, &out);
    sg_buf req = SG_BUF_INIT, err = SG_BUF_INIT, why = SG_BUF_INIT;
    sg_req_to_lua(sg_policy_universe(p), out.req, &req);
    if (out.error) sg_buf_puts(&err, out.error);
    if (out.req->why) sg_buf_puts(&why, out.req->why);
    const char *rule = out.rule; /* owned by the policy, or the arena: copy */
    sg_buf rule_copy = SG_BUF_INIT;
    sg_buf_puts(&rule_copy, rule);
    int line = out.line;
    sg_arena_free(&arena);
    free_decide_args(d);
    memset(d, 0, sizeof *d);

    lua_createtable(L, 0, 6);
    lua_pushstring(L, rule_copy.data ? rule_copy.data : "");
    lua_setfield(L, -2, "rule");
    lua_pushinteger(L, line);
    lua_setfield(L, -2, "line");
    lua_pushstring(L, sg_policy_path(p));
    lua_setfield(L, -2, "file");
    lua_pushstring(L, req.data ? req.data : "false");
    lua_setfield(L, -2, "requirement");
    if (why.data) {
        lua_pushstring(L, why.data);
        lua_setfield(L, -2, "why");
    }
    if (rc != 0) {
        lua_pushstring(L, err.data ? err.data : "policy error");
        lua_setfield(L, -2, "error");
    }
    sg_buf_free(&req);
    sg_buf_free(&err);
    sg_buf_free(&why);
    sg_buf_free(&rule_copy);
    return 1;
}

/* ---- the whole gateway decision (evaluate, visible) ------------------------ */

/* Field key of the table at t as JSON (a table or JSON text); NULL when
 * absent. Raises on bad input, so call it before taking C resources other
 * than those listed in *owned (freed first). */
static cJSON *json_field(lua_State *L, int t, const char *key, cJSON **owned, int nowned)
{
    char err[256];
    cJSON *j = NULL;
    int type = lua_getfield(L, t, key);
    if (type == LUA_TSTRING) {
        j = parse_json(lua_tostring(L, -1));
        snprintf(err, sizeof err, "not valid JSON");
    } else if (type == LUA_TTABLE) {
        j = sg_lua_to_json(L, -1, err, sizeof err);
    } else if (type != LUA_TNIL) {
        snprintf(err, sizeof err, "must be a table or JSON text");
    }
    lua_pop(L, 1);
    if (!j && type != LUA_TNIL) {
        for (int i = 0; i < nowned; i++)
            cJSON_Delete(owned[i]);
        luaL_error(L, "%s: %s", key, err);
    }
    return j;
}

static const cJSON *annotations_by_name(void *ud, const char *tool)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(ud, tool);
    return cJSON_IsObject(a) ? a : NULL;
}

/* Pushes { rule=, line=, file=, requirement=, error= } for one decision. */
static void push_decision(lua_State *L, sg_policy *p, const sg_policy_decision *d)
{
    sg_buf req = SG_BUF_INIT;
    sg_req_to_lua(sg_policy_universe(p), d->req ? d->req : &sg_req_deny, &req);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, d->rule ? d->rule : "");
    lua_setfield(L, -2, "rule");
    lua_pushinteger(L, d->line);
    lua_setfield(L, -2, "line");
    lua_pushstring(L, d->file ? d->file : sg_policy_path(p));
    lua_setfield(L, -2, "file");
    lua_pushstring(L, req.data ? req.data : "false");
    sg_buf_free(&req);
    lua_setfield(L, -2, "requirement");
    if (d->error) {
        lua_pushstring(L, d->error);
        lua_setfield(L, -2, "error");
    }
}

/* Parses the claims into a token (NULL for none). Frees owned and raises
 * when they are refused. */
static sg_token *claims_token(lua_State *L, cJSON *claims, cJSON **owned, int nowned)
{
    if (!claims) return NULL;
    char *text = cJSON_PrintUnformatted(claims);
    sg_token *token = NULL;
    sg_token_err e = text ? sg_token_from_claims(text, strlen(text), &token) : SG_TOKEN_MALFORMED;
    free(text);
    if (e != SG_TOKEN_OK) {
        for (int i = 0; i < nowned; i++)
            cJSON_Delete(owned[i]);
        luaL_error(L, "claims are refused: %s", sg_token_error_message(e));
    }
    return token;
}

static const char *const outcome_words[] = {
    [SG_ALLOW] = "allow",
    [SG_UNAUTHORIZED] = "401",
    [SG_FORBIDDEN] = "403",
    [SG_DENIED] = "deny",
};
_Static_assert(sizeof outcome_words / sizeof *outcome_words == SG_OUTCOME_COUNT, "every outcome");

/* The table evaluate returns: outcome, status, challenge, scope, message
 * and each message's decision; or, for a body that did not parse, 400 and
 * why. */
static void push_evaluation(lua_State *L, sg_policy *p, int parsed, const sg_mcp_body *body,
                            const sg_decision *d, sg_buf *scope, const sg_policy_decision *each)
{
    lua_createtable(L, 0, 6);
    if (!parsed) {
        lua_pushstring(L, "400");
        lua_setfield(L, -2, "outcome");
        lua_pushinteger(L, 400);
        lua_setfield(L, -2, "status");
        lua_pushstring(L, body->error_message[0] ? body->error_message : "out of memory");
        lua_setfield(L, -2, "message");
    } else {
        lua_pushstring(L, outcome_words[d->outcome]);
        lua_setfield(L, -2, "outcome");
        lua_pushinteger(L, d->status);
        lua_setfield(L, -2, "status");
        if (d->challenge.len) {
            lua_pushstring(L, d->challenge.data);
            lua_setfield(L, -2, "challenge");
        }
        lua_newtable(L);
        int n = 0;
        for (char *tok = scope->data ? strtok(scope->data, " ") : NULL; tok;
             tok = strtok(NULL, " ")) {
            lua_pushstring(L, tok);
            lua_rawseti(L, -2, ++n);
        }
        lua_setfield(L, -2, "scope");
        lua_pushstring(L, d->message.data ? d->message.data : "");
        lua_setfield(L, -2, "message");
        lua_createtable(L, (int)body->nmsgs, 0);
        for (size_t i = 0; each && i < body->nmsgs; i++) {
            push_decision(L, p, &each[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        lua_setfield(L, -2, "decisions");
    }
}

static int l_policy_evaluate(lua_State *L)
{
    sg_policy *p = check_policy(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *version = opt_string_field(L, 2, "protocol_version");
    const char *public_url = opt_string_field(L, 2, "public_url");
    cJSON *owned[3] = {NULL, NULL, NULL};
    owned[0] = json_field(L, 2, "message", owned, 0);
    if (!owned[0]) return luaL_error(L, "message is required");
    owned[1] = json_field(L, 2, "claims", owned, 1);
    owned[2] = json_field(L, 2, "annotations", owned, 2);
    char *body_text = cJSON_PrintUnformatted(owned[0]);
    sg_token *token = claims_token(L, owned[1], owned, 3);

    /* From here C resources are held: build the answer in C, then push. */
    sg_mcp_body body;
    memset(&body, 0, sizeof body);
    int prc = body_text ? sg_mcp_parse(body_text, strlen(body_text), NULL, NULL, &body) : -1;
    sg_arena arena;
    sg_arena_init(&arena, 4096);
    sg_decision d;
    sg_decision_init(&d);
    sg_buf rm = SG_BUF_INIT, scope = SG_BUF_INIT;
    sg_policy_decision *each = NULL;
    if (prc == 0) {
        sg_site site;
        sg_bridge_site(p, public_url, &rm, &site);
        sg_bridge_caller caller = {.token = token,
                                   .protocol_version = version ? version : SG_MCP_DEFAULT_VERSION,
                                   .annotations = owned[2] ? annotations_by_name : NULL,
                                   .annotations_ud = owned[2]};
        each = calloc(body.nmsgs, sizeof *each);
        sg_bridge_decide(p, &body, &caller, &site, &arena, each, &d);
        if (d.challenge.len) sg_universe_format(site.universe, &d.scope, &scope);
    }
    push_evaluation(L, p, prc == 0, &body, &d, &scope, each);
    free(each);
    sg_buf_free(&rm);
    sg_buf_free(&scope);
    sg_decision_free(&d);
    sg_arena_free(&arena);
    sg_mcp_body_free(&body);
    sg_token_free(token);
    free(body_text);
    for (int i = 0; i < 3; i++)
        cJSON_Delete(owned[i]);
    return 1;
}

static int l_policy_visible(lua_State *L)
{
    sg_policy *p = check_policy(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *name = opt_string_field(L, 2, "name");
    if (!name) return luaL_error(L, "name is required");
    const char *version = opt_string_field(L, 2, "protocol_version");
    cJSON *owned[2] = {NULL, NULL};
    owned[0] = json_field(L, 2, "annotations", owned, 0);
    owned[1] = json_field(L, 2, "claims", owned, 1);
    sg_token *token = claims_token(L, owned[1], owned, 2);
    const sg_universe *u = sg_policy_universe(p);
    sg_scopeset granted, effective;
    sg_token_granted(u, token, &granted);
    sg_universe_effective(u, &granted, &effective);
    sg_arena arena;
    sg_arena_init(&arena, 4096);
    sg_policy_input in = {.phase = SG_PHASE_LIST,
                          .method = "tools/call",
                          .name = name,
                          .token = token,
                          .protocol_version = version ? version : SG_MCP_DEFAULT_VERSION,
                          .annotations = cJSON_IsObject(owned[0]) ? owned[0] : NULL};
    sg_policy_decision d;
    int shown = sg_bridge_list_visible(p, &in, &effective, &arena, &d);
    lua_pushboolean(L, shown);
    push_decision(L, p, &d);
    sg_arena_free(&arena);
    sg_token_free(token);
    cJSON_Delete(owned[0]);
    cJSON_Delete(owned[1]);
    return 2;
}

static void push_string_list(lua_State *L, const char *const *list, int n)
{
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, list[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static int l_policy_info(lua_State *L)
{
    sg_policy *p = check_policy(L);
    lua_createtable(L, 0, 10);
    lua_pushstring(L, sg_policy_path(p));
    lua_setfield(L, -2, "file");
    if (sg_policy_realm(p)) {
        lua_pushstring(L, sg_policy_realm(p));
        lua_setfield(L, -2, "realm");
    }
    if (sg_policy_resource(p)) {
        lua_pushstring(L, sg_policy_resource(p));
        lua_setfield(L, -2, "resource");
    }
    const char *const *list;
    int n = sg_policy_authorization_servers(p, &list);
    push_string_list(L, list, n);
    lua_setfield(L, -2, "authorization_servers");
    n = sg_policy_scopes_supported(p, &list);
    push_string_list(L, list, n);
    lua_setfield(L, -2, "scopes_supported");
    const sg_universe *u = sg_policy_universe(p);
    lua_createtable(L, sg_universe_size(u), 0);
    for (int i = 0; i < sg_universe_size(u); i++) {
        lua_pushstring(L, sg_universe_name(u, i));
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "universe");
    lua_pushboolean(L, sg_policy_has_public_rule(p));
    lua_setfield(L, -2, "has_public_rule");
    const sg_policy_scope_use *uses;
    int nuses = sg_policy_function_scopes(p, &uses);
    lua_createtable(L, nuses, 0);
    for (int i = 0; i < nuses; i++) {
        lua_createtable(L, 0, 6);
        lua_pushstring(L, uses[i].scope);
        lua_setfield(L, -2, "scope");
        lua_pushstring(L, uses[i].rule);
        lua_setfield(L, -2, "rule");
        lua_pushstring(L, uses[i].file);
        lua_setfield(L, -2, "file");
        lua_pushinteger(L, uses[i].line);
        lua_setfield(L, -2, "line");
        lua_pushboolean(L, uses[i].returned);
        lua_setfield(L, -2, "returned");
        lua_pushboolean(L, uses[i].known);
        lua_setfield(L, -2, "known");
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "function_scopes");
    const sg_sandbox_limits *lim = sg_sandbox_limits_of(sg_policy_sandbox(p));
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, (lua_Integer)lim->call_instructions);
    lua_setfield(L, -2, "instructions");
    lua_pushinteger(L, (lua_Integer)lim->call_time_ms);
    lua_setfield(L, -2, "time_ms");
    lua_pushinteger(L, (lua_Integer)lim->call_memory);
    lua_setfield(L, -2, "memory");
    lua_pushinteger(L, (lua_Integer)lim->load_memory);
    lua_setfield(L, -2, "load_memory");
    lua_pushinteger(L, (lua_Integer)lim->pattern_steps);
    lua_setfield(L, -2, "pattern_steps");
    lua_setfield(L, -2, "limits");
    return 1;
}

static int l_policy_stats(lua_State *L)
{
    sg_policy *p = check_policy(L);
    sg_sandbox *sb = sg_policy_sandbox(p);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)sg_sandbox_memory(sb));
    lua_setfield(L, -2, "memory");
    lua_pushinteger(L, (lua_Integer)sg_sandbox_memory_peak(sb));
    lua_setfield(L, -2, "peak");
    lua_pushinteger(L, (lua_Integer)sg_sandbox_memory_baseline(sb));
    lua_setfield(L, -2, "baseline");
    return 1;
}

static int l_policy_tool_requirement(lua_State *L)
{
    sg_policy *p = check_policy(L);
    const char *name = luaL_checkstring(L, 2);
    int dynamic = 0;
    const sg_req *r = sg_policy_tool_requirement(p, name, &dynamic);
    if (!r) {
        lua_pushnil(L);
        lua_pushboolean(L, dynamic);
        return 2;
    }
    sg_buf b = SG_BUF_INIT;
    sg_req_to_lua(sg_policy_universe(p), r, &b);
    lua_pushstring(L, b.data ? b.data : "false");
    sg_buf_free(&b);
    lua_pushboolean(L, 0);
    return 2;
}

static int l_policy_check(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sg_policy_limits lim;
    read_limits(L, 2, &lim);
    sg_buf report = SG_BUF_INIT;
    int n = sg_policy_check(path, &lim, &report);
    char *text = sg_buf_steal(&report);
    lua_pushinteger(L, n);
    lua_pushstring(L, text ? text : "");
    free(text);
    return 2;
}

static int l_policy_clock(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)sg_now_mono_ns() / 1e9);
    return 1;
}

static int l_policy_pattern_cost(lua_State *L)
{
    size_t len;
    const char *pat = luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "subject length must be >= 0");
    int anchored_ok = lua_isnoneornil(L, 3) ? 1 : lua_toboolean(L, 3);
    lua_pushnumber(L, sg_sandbox_pattern_cost(pat, len, (size_t)n, anchored_ok));
    return 1;
}

void sg_lmod_policy(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"decide", l_policy_decide},   {"info", l_policy_info},
        {"stats", l_policy_stats},     {"tool_requirement", l_policy_tool_requirement},
        {"close", l_policy_gc},        {"evaluate", l_policy_evaluate},
        {"visible", l_policy_visible}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, POLICY_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_policy_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {
        {"policy_load", l_policy_load},
        {"policy_check", l_policy_check},
        {"policy_clock", l_policy_clock},
        {"policy_pattern_cost", l_policy_pattern_cost},
        {NULL, NULL},
    };
    luaL_setfuncs(L, funcs, 0);
}
