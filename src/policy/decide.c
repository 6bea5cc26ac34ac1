/* decide.c -- decides one message (sg_policy_decide).
 *
 * Selects the rule (a hash lookup; resources by normal-form URI), returns a
 * static requirement as is, and runs a function rule in the sandbox with a
 * fresh `req` table, compiling what it returns (compile.c). Fails closed:
 * any error is a deny with a file:line message. Reads the policy only. */
#include "policy/policy_impl.h"

#include "base/uri.h"
#include "policy/luajson.h"

#include <stdio.h>
#include <string.h>

#include <lua.h>

static const char *const builtin_methods[] = {
    "initialize",   "ping",           "server/discover",          "tools/list",
    "prompts/list", "resources/list", "resources/templates/list", "completion/complete",
};

static int is_builtin(const char *method)
{
    if (strncmp(method, "notifications/", 14) == 0) return 1;
    for (size_t i = 0; i < SG_ARRAY_LEN(builtin_methods); i++)
        if (strcmp(method, builtin_methods[i]) == 0) return 1;
    return 0;
}

/* Which rule decides this message; NULL means a built-in. A named tool,
 * prompt or resource that no rule names goes to `default`, in either phase.
 * *named is set to 1 when the rule is the entry for the message's name. */
static const rule *select_rule(const sg_policy *p, const sg_policy_input *in, int *named)
{
    *named = 0;
    const char *m = in->method ? in->method : "";
    int list = in->phase == SG_PHASE_LIST;
    int tools = strcmp(m, "tools/call") == 0 || (list && strcmp(m, "tools/list") == 0);
    int prompts = strcmp(m, "prompts/get") == 0 || (list && strcmp(m, "prompts/list") == 0);
    int resources =
        strcmp(m, "resources/read") == 0 || strcmp(m, "resources/subscribe") == 0 ||
        strcmp(m, "resources/unsubscribe") == 0 ||
        (list && (strcmp(m, "resources/list") == 0 || strcmp(m, "resources/templates/list") == 0));
    if (in->name && (tools || prompts || resources)) {
        size_t len = strlen(in->name);
        const rule *r = tools     ? policy_map_get(&p->maps[T_TOOLS], in->name, len)
                        : prompts ? policy_map_get(&p->maps[T_PROMPTS], in->name, len)
                                  : policy_find_resource(p, in->name);
        *named = r != NULL;
        return r ? r : &p->default_rule;
    }
    const rule *r = policy_map_get(&p->maps[T_METHODS], m, strlen(m));
    if (r) return r;
    return is_builtin(m) ? NULL : &p->default_rule;
}

static void push_req(lua_State *L, const sg_policy_input *in)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, in->phase == SG_PHASE_LIST ? "list" : "call");
    lua_setfield(L, -2, "phase");
    lua_pushstring(L, in->method ? in->method : "");
    lua_setfield(L, -2, "method");
    if (in->name) {
        lua_pushstring(L, in->name);
        lua_setfield(L, -2, "name");
    }
    if (in->protocol_version) {
        lua_pushstring(L, in->protocol_version);
        lua_setfield(L, -2, "protocol_version");
    }
    if (in->annotations) {
        sg_lua_push_json(L, in->annotations, 0);
        lua_setfield(L, -2, "annotations");
    }
    lua_createtable(L, 0, (int)(in->nheaders < 64 ? in->nheaders : 64));
    for (size_t i = 0; i < in->nheaders; i++) {
        if (!in->headers[i].name || !in->headers[i].value) continue;
        if (lua_getfield(L, -1, in->headers[i].name) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_pushstring(L, in->headers[i].value);
            lua_setfield(L, -2, in->headers[i].name);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_setfield(L, -2, "headers");
    if (in->token) {
        const sg_token *t = in->token;
        lua_createtable(L, 0, 5);
        if (t->sub) {
            lua_pushstring(L, t->sub);
            lua_setfield(L, -2, "sub");
        }
        if (t->client_id) {
            lua_pushstring(L, t->client_id);
            lua_setfield(L, -2, "client_id");
        }
        lua_createtable(L, 0, t->nscopes > 0 ? t->nscopes : 0);
        for (int i = 0; i < t->nscopes; i++) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, t->scopes[i]);
        }
        lua_setfield(L, -2, "scopes");
        const cJSON *claims = sg_token_claims(t);
        if (claims)
            sg_lua_push_json(L, claims, 0);
        else
            lua_newtable(L);
        lua_setfield(L, -2, "claims");
        if (t->exp > 0) {
            lua_pushinteger(L, (lua_Integer)t->exp);
            lua_setfield(L, -2, "expires_at");
        }
        lua_setfield(L, -2, "token");
    }
    if (in->phase == SG_PHASE_CALL) {
        if (in->arguments)
            sg_lua_push_json(L, in->arguments, 0);
        else
            lua_newtable(L);
        lua_setfield(L, -2, "arguments");
    } else {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &policy_list_meta_key);
        lua_setmetatable(L, -2);
    }
}

int policy_call_rule(lua_State *L)
{
    call_ctx *cc = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, cc->r->ref);
    push_req(L, cc->in);
    lua_call(L, 1, 1);
    sg_buf error = SG_BUF_INIT;
    cc->result = policy_compile_returned(cc->p, L, cc->arena, lua_gettop(L), &error);
    if (!cc->result) {
        lua_pushfstring(L, "rule returned an invalid requirement: %s",
                        error.data ? error.data : "out of memory");
        sg_buf_free(&error);
        return lua_error(L);
    }
    return 0;
}

/* Measures req.arguments as the limits count it: the bytes of every string
 * and key plus 8 per value, and the nesting of arrays and objects (the
 * arguments object itself is level 1). Stops counting past max_bytes.
 * Returns 0 when within both limits, else -1 with *bytes and *depth as far
 * as counted. */
static int measure_arguments(const cJSON *j, unsigned level, size_t max_bytes, unsigned max_depth,
                             size_t *bytes, unsigned *depth)
{
    if (level > *depth) *depth = level;
    if (level > max_depth) return -1;
    for (const cJSON *c = j->child; c; c = c->next) {
        *bytes += 8 + (c->string ? strlen(c->string) : 0);
        if (cJSON_IsString(c)) *bytes += strlen(c->valuestring);
        if (*bytes > max_bytes) return -1;
        if ((cJSON_IsArray(c) || cJSON_IsObject(c)) &&
            measure_arguments(c, level + 1, max_bytes, max_depth, bytes, depth) != 0)
            return -1;
    }
    return 0;
}

/* A resource method's URI, in the list phase too (a resources/list item
 * is decided as resources/read of its uri; a template as its uriTemplate). */
static int names_resource(const sg_policy_input *in)
{
    const char *m = in->method ? in->method : "";
    return in->name && (strcmp(m, "resources/read") == 0 || strcmp(m, "resources/subscribe") == 0 ||
                        strcmp(m, "resources/unsubscribe") == 0);
}

/* Fails closed after rule r failed with msg (NULL: out of memory): out
 * denies, out->error (in a) reads "file:line: rule: message", and one line
 * is logged. */
static void deny_on_rule_error(const sg_policy *p, const rule *r, const char *msg, sg_arena *a,
                               sg_policy_decision *out)
{
    if (!msg) msg = "out of memory";
    size_t loc = policy_location_prefix(msg);
    sg_buf full = SG_BUF_INIT;
    if (loc)
        sg_buf_printf(&full, "%.*s: %s: %s", (int)loc, msg, r->name, msg + loc + 2);
    else
        sg_buf_printf(&full, "%s:%d: %s: %s", p->path, r->line, r->name, msg);
    out->req = &sg_req_deny;
    out->error = full.data ? sg_arena_strndup(a, full.data, full.len) : NULL;
    if (!out->error) out->error = "policy error (out of memory)";
    sg_log(SG_LOG_ERROR, "policy error (request denied): %s", out->error);
    sg_buf_free(&full);
}

/* Resource rules match the URI's normal form (uri.h), and function rules
 * see it as req.name. Sets *name to in->name's normal form (in a). Returns
 * 0; or, with out filled in as a deny, 1 when the URI has no normal form
 * (denied outright) and -1 when out of memory. */
static int normalize_resource_name(const sg_policy *p, const sg_policy_input *in, sg_arena *a,
                                   const char **name, sg_policy_decision *out)
{
    sg_buf b = SG_BUF_INIT;
    const char *why;
    int rc = sg_uri_normalize(in->name, strlen(in->name), &b, &why);
    *name = rc == 0 && sg_buf_ok(&b) ? sg_arena_strndup(a, b.data, b.len) : NULL;
    sg_buf_free(&b);
    if (*name) return 0;
    out->file = p->path;
    out->req = &sg_req_deny;
    out->rule = "resource-uri";
    out->line = 0;
    out->audit = NULL;
    out->naudit = 0;
    out->named = 0;
    out->error = rc == 0 ? "policy error (out of memory)" : NULL;
    return rc == 0 ? -1 : 1;
}

int sg_policy_decide(sg_policy *p, const sg_policy_input *in, sg_arena *a, sg_policy_decision *out)
{
    sg_policy_input normal;
    if (names_resource(in)) {
        const char *name;
        int rc = normalize_resource_name(p, in, a, &name, out);
        if (rc != 0) return rc < 0 ? -1 : 0;
        normal = *in;
        normal.name = name;
        in = &normal;
    }
    const rule *r = select_rule(p, in, &out->named);
    out->file = p->path;
    out->error = NULL;
    out->audit = r ? r->audit : NULL;
    out->naudit = r ? r->naudit : 0;
    if (!r) {
        const char *m = in->method ? in->method : "";
        {
            out->req = p->any_public ? &sg_req_public : &sg_req_authenticated;
            size_t ml = strlen(m);
            char *name = sg_arena_alloc(a, 8 + ml + 1);
            if (name) {
                memcpy(name, "builtin.", 8);
                memcpy(name + 8, m, ml + 1);
            }
            out->rule = name ? name : "builtin";
            out->line = 0;
            return 0;
        }
    }
    out->rule = r->name;
    out->line = r->line;
    if (r->req) {
        out->req = r->req;
        return 0;
    }
    call_ctx cc = {p, r, in, a, NULL};
    sg_buf err = SG_BUF_INIT;
    const sg_sandbox_limits *lim = sg_sandbox_limits_of(p->sb);
    size_t abytes = 8;
    unsigned adepth = 0;
    if (in->phase == SG_PHASE_CALL && in->arguments &&
        measure_arguments(in->arguments, 1, lim->arguments_bytes, lim->arguments_depth, &abytes,
                          &adepth) != 0) {
        /* Refused before the rule runs: a rule's C library work grows with
         * what it is given, and the limits are what its budgets assume. */
        if (adepth > lim->arguments_depth)
            sg_buf_printf(&err,
                          "req.arguments is nested deeper than a policy accepts (more than %u "
                          "levels; see Limits in docs/policy.md)",
                          (unsigned)lim->arguments_depth);
        else
            sg_buf_printf(&err,
                          "req.arguments is larger than a policy accepts (more than %zu bytes of "
                          "strings and keys, 8 per value; see Limits in docs/policy.md)",
                          lim->arguments_bytes);
    } else if (sg_sandbox_call(p->sb, policy_call_rule, &cc, 0, 0, &err) == 0) {
        out->req = cc.result;
        sg_buf_free(&err);
        return 0;
    }
    deny_on_rule_error(p, r, err.data, a, out);
    sg_buf_free(&err);
    return -1;
}
