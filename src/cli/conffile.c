/* conffile.c -- a Lua config file as flags (see conffile.h).
 *
 * Every error names FILE:LINE. Lua reports its own errors with a line; for
 * a setting, the line is where its key is written (`key =` or `["key"] =`),
 * found in the source text by luasrc.h. */
#include "cli/conffile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>

#include "cli/cli.h"
#include "policy/luasrc.h"
#include "policy/sandbox.h"
#include "base/sg.h"

typedef struct argv_builder {
    char **v;
    int n, cap;
} argv_builder;

static int push(argv_builder *b, const char *s)
{
    if (b->n + 2 > b->cap) {
        int cap = b->cap ? b->cap * 2 : 32;
        char **v = realloc(b->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    if (!(b->v[b->n] = strdup(s))) return -1;
    b->v[++b->n] = NULL;
    return 0;
}

static int by_string(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The line where `key = ...` or `["key"] = ...` is first written in src
 * (outside comments and strings), or 0 when it is not found. */
static int key_line(const char *src, size_t len, const char *key)
{
    sg_luasrc x;
    if (sg_luasrc_index(&x, src, len) != 0) return 0;
    int line = sg_luasrc_line(&x, sg_luasrc_find(&x, SG_LUASRC_KEY, key, strlen(key), 0));
    sg_luasrc_free(&x);
    return line;
}

/* The line of the last `return` (where the settings table is built), or
 * 1: for errors about the table as a whole. */
static int return_line(const char *src, size_t len)
{
    sg_luasrc_token *t = NULL;
    size_t n = sg_luasrc_tokens(src, 0, len, 1, &t);
    int line = 1;
    for (size_t i = 0; i < n; i++)
        if (sg_luasrc_token_is(src, &t[i], "return")) line = t[i].line;
    free(t);
    return line;
}

/* One value: a string, an integer, or (for repeatable flags) a list. */
static int push_value(lua_State *L, argv_builder *b, const char *flag, const char *where,
                      const char *key)
{
    int t = lua_type(L, -1);
    char num[32];
    if (t == LUA_TSTRING) return push(b, flag) || push(b, lua_tostring(L, -1)) ? -2 : 0;
    if (t == LUA_TNUMBER && lua_isinteger(L, -1)) {
        snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -1));
        return push(b, flag) || push(b, num) ? -2 : 0;
    }
    if (t == LUA_TTABLE) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            int ok = lua_type(L, -1) == LUA_TSTRING;
            int rc = ok ? (push(b, flag) || push(b, lua_tostring(L, -1)) ? -2 : 0) : -1;
            lua_pop(L, 1);
            if (rc) {
                if (rc == -1)
                    fprintf(stderr, "scopegate serve: %s: %s[%lld] must be a string\n", where, key,
                            (long long)i);
                return rc;
            }
        }
        return 0;
    }
    fprintf(stderr, "scopegate serve: %s: %s must be a string, an integer or a list, not %s\n",
            where, key, lua_typename(L, t));
    return -1;
}

/* The keys of the settings table (at the top of L's stack), sorted, so
 * errors and overrides are deterministic; the strings stay alive in the
 * table. Returns 0 with *keys malloc'd (the caller frees it), -1 after
 * printing why, -2 out of memory. */
static int sorted_keys(lua_State *L, const char *path, const char *src, size_t srclen,
                       const char ***keys_out, size_t *nkeys_out)
{
    const char **keys = NULL;
    size_t nkeys = 0, cap = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            fprintf(stderr, "scopegate serve: %s:%d: every key must be a flag name\n", path,
                    src ? return_line(src, srclen) : 1);
            lua_pop(L, 1);
            free(keys);
            return -1;
        }
        if (nkeys == cap) {
            cap = cap ? cap * 2 : 16;
            const char **k = realloc(keys, cap * sizeof *k);
            if (!k) {
                lua_pop(L, 1);
                free(keys);
                return -2;
            }
            keys = k;
        }
        keys[nkeys++] = lua_tostring(L, -1); /* the table keeps the string alive */
    }
    qsort(keys, nkeys, sizeof *keys, by_string);
    *keys_out = keys;
    *nkeys_out = nkeys;
    return 0;
}

/* One setting of the table (at the top of L's stack) appended to b as its
 * flag and checked by the one flag parser, so that its message carries the
 * setting's file:line. Returns 0, -1 after printing why, -2 out of memory. */
static int take_setting(lua_State *L, argv_builder *b, const char *key, const char *path,
                        const char *src, size_t srclen, const sg_flag *flags, size_t nflags)
{
    char where[1100];
    int line = src ? key_line(src, srclen, key) : 0;
    snprintf(where, sizeof where, "%s:%d", path, line > 0 ? line : 1);
    char flag[96];
    int n = snprintf(flag, sizeof flag, "--%s", key);
    for (char *c = flag + 2; *c; c++)
        if (*c == '_') *c = '-';
    int known = 0;
    for (size_t k = 0; k < nflags && n > 0 && (size_t)n < sizeof flag; k++)
        known |= strcmp(flags[k].name, flag) == 0 && strcmp(flag, "--config") != 0;
    if (!known) {
        fprintf(stderr,
                "scopegate serve: %s: unknown setting '%s' (the flag names of "
                "scopegate serve --help, without dashes)\n",
                where, key);
        return -1;
    }
    int first = b->n;
    lua_getfield(L, -1, key);
    int vr = push_value(L, b, flag, where, key);
    lua_pop(L, 1);
    if (vr != 0) return vr;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "serve: %s", where);
    int npos = 0;
    return sg_flags_parse(cmd, b->n, b->v, first, flags, nflags, NULL, 0, &npos) != 0 ? -1 : 0;
}

int sg_config_parse(const char *path, const sg_flag *flags, size_t nflags, int *argc_out,
                    char ***argv_out)
{
    *argc_out = 0;
    *argv_out = NULL;
    sg_sandbox *sb = sg_sandbox_new(path, NULL);
    if (!sb) {
        fprintf(stderr, "scopegate serve: out of memory\n");
        return -1;
    }
    sg_buf err = SG_BUF_INIT;
    argv_builder b = {NULL, 0, 0};
    const char **keys = NULL;
    size_t nkeys = 0, srclen = 0;
    char *src = NULL;
    int rc = -1;
    if (sg_sandbox_run_file(sb, path, &err) != 0) {
        fprintf(stderr, "scopegate serve: --config %s\n", err.data ? err.data : path);
        goto done;
    }
    /* Evaluated, so readable: the text only serves to find lines. */
    src = sg_read_file(path, SG_SANDBOX_MAX_SOURCE, &srclen);
    lua_State *L = sg_sandbox_lua(sb);
    if (!lua_istable(L, -1)) {
        fprintf(stderr, "scopegate serve: %s:%d: must return a table of settings\n", path,
                src ? return_line(src, srclen) : 1);
        goto done;
    }
    int r = sorted_keys(L, path, src, srclen, &keys, &nkeys);
    for (size_t i = 0; r == 0 && i < nkeys; i++)
        r = take_setting(L, &b, keys[i], path, src, srclen, flags, nflags);
    if (r == -2) fprintf(stderr, "scopegate serve: out of memory\n");
    if (r != 0) goto done;
    *argc_out = b.n;
    *argv_out = b.v;
    b.v = NULL;
    b.n = 0;
    rc = 0;
done:
    sg_config_argv_free(b.n, b.v);
    free(keys);
    free(src);
    sg_buf_free(&err);
    sg_sandbox_free(sb);
    return rc;
}

void sg_config_argv_free(int argc, char **argv)
{
    for (int i = 0; argv && i < argc; i++)
        free(argv[i]);
    free(argv);
}
