/* lmod_mcp.c -- Lua bindings for the MCP message model (mcp.h), so that
 * busted specs and tools exercise the same parser the gateway runs.
 *
 *   core.mcp_parse(body [, {max_body=, max_depth=, max_batch=}])
 *       -> {batch=bool, messages={ {kind=, method=, id_raw=, name=,
 *           arguments=, protocol_version=, error=, code=, message=}, ...}}
 *       or nil, code, message [, id_raw]
 *   core.mcp_error_body(id_raw_or_nil, code, message [, data_json]) -> string
 *   core.mcp_check_headers(body, version, mcp_method, mcp_name)
 *       -> true or nil, code, message
 *   core.uri_normalize(uri) -> normal form, or nil, reason (uri.h)
 *   core.mcp_version_supported(v), core.mcp_effective_version(header_or_nil),
 *   core.mcp_versions(), core.mcp_codes, core.mcp_null (JSON null in
 *   arguments tables). */
#include "luamod/lmod.h"
#include "policy/luajson.h"

#include "base/json.h"
#include "mcp/mcp.h"
#include "base/uri.h"

#include <string.h>

#define BODY_METATABLE "scopegate.mcp_body"

/* The parsed body lives in a userdata so that __gc frees it even when a Lua
 * error (out of memory while building tables) unwinds past us. */
static int body_gc(lua_State *L)
{
    sg_mcp_body *b = luaL_checkudata(L, 1, BODY_METATABLE);
    sg_mcp_body_free(b);
    return 0;
}

static sg_mcp_body *new_body(lua_State *L)
{
    sg_mcp_body *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, BODY_METATABLE);
    return b;
}

static const char *kind_name(sg_mcp_kind kind)
{
    switch (kind) {
    case SG_MCP_REQUEST:
        return "request";
    case SG_MCP_NOTIFICATION:
        return "notification";
    case SG_MCP_RESPONSE:
        return "response";
    default:
        return "invalid";
    }
}

static void push_message(lua_State *L, const sg_mcp_msg *m)
{
    lua_newtable(L);
    sg_lua_setstring(L, "kind", kind_name(m->kind));
    sg_lua_setstring(L, "method", m->method);
    if (m->id_raw) {
        lua_pushlstring(L, m->id_raw, m->id_len);
        lua_setfield(L, -2, "id_raw");
    }
    sg_lua_setstring(L, "name", m->name);
    if (m->arguments) {
        sg_lua_push_json(L, m->arguments, 1);
        lua_setfield(L, -2, "arguments");
    }
    sg_lua_setstring(L, "protocol_version", m->protocol_version);
    if (m->kind == SG_MCP_RESPONSE) {
        lua_pushboolean(L, m->is_error_response);
        lua_setfield(L, -2, "error");
    }
    if (m->kind == SG_MCP_INVALID) {
        lua_pushinteger(L, m->error_code);
        lua_setfield(L, -2, "code");
        sg_lua_setstring(L, "message", m->error_message);
    }
}

static size_t limit_field(lua_State *L, int t, const char *key, size_t max)
{
    lua_getfield(L, t, key);
    size_t v = 0;
    if (!lua_isnil(L, -1)) {
        int ok;
        lua_Integer i = lua_tointegerx(L, -1, &ok);
        if (!ok || i < 1 || (lua_Unsigned)i > max)
            luaL_error(L, "limits.%s must be an integer between 1 and %d", key, (int)max);
        v = (size_t)i;
    }
    lua_pop(L, 1);
    return v;
}

/* Returns the parsed body userdata (on the stack top) and the parse code. */
static sg_mcp_body *parse_arg(lua_State *L, int arg, int limits_arg, int *rc)
{
    size_t len;
    const char *text = luaL_checklstring(L, arg, &len);
    sg_mcp_limits lim = {0, 0, 0};
    if (limits_arg && !lua_isnoneornil(L, limits_arg)) {
        luaL_checktype(L, limits_arg, LUA_TTABLE);
        lim.max_body = limit_field(L, limits_arg, "max_body", SG_MCP_MAX_BODY_CAP);
        lim.max_depth = (unsigned)limit_field(L, limits_arg, "max_depth", SG_JSON_MAX_DEPTH_CAP);
        lim.max_batch = (unsigned)limit_field(L, limits_arg, "max_batch", SG_MCP_MAX_BATCH_CAP);
    }
    sg_mcp_body *b = new_body(L);
    *rc = sg_mcp_parse(text, len, &lim, NULL, b);
    return b;
}

static int l_mcp_parse(lua_State *L)
{
    int rc;
    sg_mcp_body *b = parse_arg(L, 1, 2, &rc);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushinteger(L, b->error_code);
        lua_pushstring(L, b->error_message);
        if (b->nmsgs == 1 && b->msgs[0].id_raw) {
            lua_pushlstring(L, b->msgs[0].id_raw, b->msgs[0].id_len);
            return 4;
        }
        return 3;
    }
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, b->is_batch);
    lua_setfield(L, -2, "batch");
    lua_createtable(L, (int)b->nmsgs, 0);
    for (size_t i = 0; i < b->nmsgs; i++) {
        push_message(L, &b->msgs[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "messages");
    sg_mcp_body_free(b); /* now, rather than at the next collection */
    return 1;
}

static const char *check_c_string(lua_State *L, int arg)
{
    size_t len;
    const char *s = luaL_checklstring(L, arg, &len);
    if (strlen(s) != len) luaL_argerror(L, arg, "string contains a NUL byte");
    return s;
}

static const char *opt_c_string(lua_State *L, int arg)
{
    return lua_isnoneornil(L, arg) ? NULL : check_c_string(L, arg);
}

static int l_mcp_error_body(lua_State *L)
{
    size_t id_len = 0;
    const char *id = lua_isnoneornil(L, 1) ? NULL : luaL_checklstring(L, 1, &id_len);
    lua_Integer code = luaL_checkinteger(L, 2);
    luaL_argcheck(L, code >= -2147483647 && code <= 2147483647, 2, "code out of range");
    const char *message = check_c_string(L, 3);
    cJSON *data = NULL;
    if (!lua_isnoneornil(L, 4)) {
        size_t dlen;
        const char *dtext = luaL_checklstring(L, 4, &dlen);
        sg_json_scan scan;
        if (sg_json_prescan(dtext, dlen, NULL, &scan, NULL) != 0 || !scan.top_is_object) {
            sg_json_scan_free(&scan);
            return luaL_argerror(L, 4, "data must be a JSON object");
        }
        sg_json_scan_free(&scan);
        data = cJSON_ParseWithLength(dtext, dlen);
        if (!cJSON_IsObject(data)) {
            cJSON_Delete(data);
            return luaL_argerror(L, 4, "data must be a JSON object");
        }
    }
    sg_buf out = SG_BUF_INIT;
    sg_mcp_error_render(&out, id, id_len, (int)code, message, data);
    cJSON_Delete(data);
    if (!sg_buf_ok(&out)) {
        sg_buf_free(&out);
        return luaL_error(L, "out of memory");
    }
    lua_pushlstring(L, out.data, out.len);
    sg_buf_free(&out);
    return 1;
}

static int l_mcp_check_headers(lua_State *L)
{
    int rc;
    const char *version = opt_c_string(L, 2);
    const char *method = opt_c_string(L, 3);
    const char *name = opt_c_string(L, 4);
    sg_mcp_body *b = parse_arg(L, 1, 0, &rc);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushinteger(L, b->error_code);
        lua_pushstring(L, b->error_message);
        return 3;
    }
    char msg[SG_MCP_MESSAGE_LEN];
    rc = sg_mcp_check_headers(b, version, method, name, msg, sizeof msg);
    sg_mcp_body_free(b);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushinteger(L, rc);
        lua_pushstring(L, msg);
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_mcp_version_supported(lua_State *L)
{
    lua_pushboolean(L, sg_mcp_version_supported(opt_c_string(L, 1)));
    return 1;
}

static int l_mcp_effective_version(lua_State *L)
{
    lua_pushstring(L, sg_mcp_effective_version(opt_c_string(L, 1)));
    return 1;
}

static int l_mcp_versions(lua_State *L)
{
    lua_newtable(L);
    const char *const *v = sg_mcp_versions();
    for (lua_Integer i = 0; v[i]; i++) {
        lua_pushstring(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int l_uri_normalize(lua_State *L)
{
    size_t len;
    const char *uri = luaL_checklstring(L, 1, &len);
    sg_buf out = SG_BUF_INIT;
    const char *why = NULL;
    int rc = sg_uri_normalize(uri, len, &out, &why);
    if (rc == 0 && !sg_buf_ok(&out)) {
        sg_buf_free(&out);
        return luaL_error(L, "out of memory");
    }
    if (rc == 0)
        lua_pushlstring(L, out.data ? out.data : "", out.len);
    else
        lua_pushnil(L);
    sg_buf_free(&out);
    if (rc == 0) return 1;
    lua_pushstring(L, why);
    return 2;
}

void sg_lmod_mcp(lua_State *L)
{
    static const luaL_Reg body_meta[] = {{"__gc", body_gc}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"mcp_parse", l_mcp_parse},
        {"mcp_error_body", l_mcp_error_body},
        {"mcp_check_headers", l_mcp_check_headers},
        {"uri_normalize", l_uri_normalize},
        {"mcp_version_supported", l_mcp_version_supported},
        {"mcp_effective_version", l_mcp_effective_version},
        {"mcp_versions", l_mcp_versions},
        {NULL, NULL},
    };
    static const struct {
        const char *name;
        int code;
    } codes[] = {
        {"parse_error", SG_JSONRPC_PARSE_ERROR},
        {"invalid_request", SG_JSONRPC_INVALID_REQUEST},
        {"method_not_found", SG_JSONRPC_METHOD_NOT_FOUND},
        {"invalid_params", SG_JSONRPC_INVALID_PARAMS},
        {"internal_error", SG_JSONRPC_INTERNAL_ERROR},
        {"header_mismatch", SG_JSONRPC_HEADER_MISMATCH},
    };

    if (luaL_newmetatable(L, BODY_METATABLE)) luaL_setfuncs(L, body_meta, 0);
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
    lua_createtable(L, 0, (int)SG_ARRAY_LEN(codes));
    for (size_t i = 0; i < SG_ARRAY_LEN(codes); i++) {
        lua_pushinteger(L, codes[i].code);
        lua_setfield(L, -2, codes[i].name);
    }
    lua_setfield(L, -2, "mcp_codes");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "mcp_null");
}
