/* lmod_http1.c -- Lua bindings for the HTTP/1.1 response parser.
 *
 * core.http1_parse(pieces [, opts]) feeds the strings of `pieces` in order
 * (as the network might split them) and returns
 *   { state = "done"|"error"|"partial", status =, keepalive =, error =,
 *     headers = { "line", ... }, body = "...", consumed = n }
 * opts.pause_after = N makes the body callback pause once N body bytes were
 * taken (the rest is fed again, as the proxy does after an unpause);
 * opts.eof = true signals the connection's end after the last piece. */
#include <string.h>

#include "upstream/http1.h"
#include "luamod/lmod.h"
#include "base/sg.h"

typedef struct capture {
    lua_State *L;
    int headers; /* stack index of the headers table */
    sg_buf body;
    size_t pause_after;
    int paused_once;
} capture;

static size_t cap_header(const char *line, size_t len, void *ud)
{
    capture *c = ud;
    lua_pushlstring(c->L, line, len);
    lua_rawseti(c->L, c->headers, (lua_Integer)lua_rawlen(c->L, c->headers) + 1);
    return len;
}

static size_t cap_body(const char *data, size_t len, void *ud)
{
    capture *c = ud;
    if (c->pause_after && !c->paused_once && c->body.len + len > c->pause_after) {
        c->paused_once = 1;
        return SG_HTTP1_PAUSE;
    }
    sg_buf_append(&c->body, data, len);
    return sg_buf_ok(&c->body) ? len : 0;
}

/* What a test sees of the parser's state: done, error, or still partial. */
static const char *const state_names[] = {
    [SG_HTTP1_HEAD] = "partial",       [SG_HTTP1_BODY_LENGTH] = "partial",
    [SG_HTTP1_CHUNK_SIZE] = "partial", [SG_HTTP1_CHUNK_DATA] = "partial",
    [SG_HTTP1_CHUNK_END] = "partial",  [SG_HTTP1_TRAILER] = "partial",
    [SG_HTTP1_BODY_CLOSE] = "partial", [SG_HTTP1_DONE] = "done",
    [SG_HTTP1_ERROR] = "error",
};
_Static_assert(sizeof state_names / sizeof *state_names == SG_HTTP1_STATE_COUNT, "every state");

static int l_http1_parse(lua_State *L)
{
    const char *const *states = state_names;
    luaL_checktype(L, 1, LUA_TTABLE);
    capture c = {L, 0, SG_BUF_INIT, 0, 0};
    int eof = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "pause_after");
        c.pause_after = (size_t)luaL_optinteger(L, -1, 0);
        lua_getfield(L, 2, "eof");
        eof = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    lua_settop(L, 2);
    lua_newtable(L);
    c.headers = lua_gettop(L);
    sg_http1 *p = lua_newuserdatauv(L, sizeof *p, 0); /* collected with the call */
    sg_http1_init(p, 0);
    sg_http1_sink sink = {cap_header, cap_body, &c};
    size_t consumed = 0;
    lua_Integer n = luaL_len(L, 1);
    for (lua_Integer i = 1; i <= n && p->state != SG_HTTP1_DONE && p->state != SG_HTTP1_ERROR;
         i++) {
        size_t len;
        lua_geti(L, 1, i);
        const char *piece = luaL_checklstring(L, -1, &len);
        size_t off = 0;
        while (off < len && p->state != SG_HTTP1_DONE && p->state != SG_HTTP1_ERROR) {
            size_t used = sg_http1_feed(p, piece + off, len - off, &sink);
            off += used;
            consumed += used;
            if (used == 0 && off < len) break; /* paused twice: give up feeding */
        }
        lua_pop(L, 1);
    }
    if (eof) sg_http1_eof(p, &sink);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, states[p->state]);
    lua_setfield(L, -2, "state");
    lua_pushinteger(L, p->status);
    lua_setfield(L, -2, "status");
    lua_pushboolean(L, p->keepalive);
    lua_setfield(L, -2, "keepalive");
    sg_lua_setstring(L, "error", p->error);
    lua_pushvalue(L, c.headers);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, c.body.data ? c.body.data : "", c.body.len);
    lua_setfield(L, -2, "body");
    lua_pushinteger(L, (lua_Integer)consumed);
    lua_setfield(L, -2, "consumed");
    sg_buf_free(&c.body);
    return 1;
}

void sg_lmod_http1(lua_State *L)
{
    lua_pushcfunction(L, l_http1_parse);
    lua_setfield(L, -2, "http1_parse");
}
