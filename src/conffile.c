/* conffile.c -- a Lua config file as flags (see conffile.h). */
#include "conffile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>

#include "sandbox.h"
#include "sg.h"

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

/* One value: a string, an integer, or (for repeatable flags) a list. */
static int push_value(lua_State *L, argv_builder *b, const char *flag, const char *path,
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
                    fprintf(stderr, "scopegate serve: %s: %s[%lld] must be a string\n", path, key,
                            (long long)i);
                return rc;
            }
        }
        return 0;
    }
    fprintf(stderr, "scopegate serve: %s: %s must be a string, an integer or a list, not %s\n",
            path, key, lua_typename(L, t));
    return -1;
}

int sg_config_argv(const char *path, const char *const *known_flags, int *argc_out,
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
    int rc = -1;
    if (sg_sandbox_run_file(sb, path, &err) != 0) {
        fprintf(stderr, "scopegate serve: --config %s\n", err.data ? err.data : path);
        goto done;
    }
    lua_State *L = sg_sandbox_lua(sb);
    if (!lua_istable(L, -1)) {
        fprintf(stderr, "scopegate serve: %s: must return a table of settings\n", path);
        goto done;
    }
    /* Keys in sorted order, so errors and overrides are deterministic. */
    size_t nkeys = 0, cap = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            fprintf(stderr, "scopegate serve: %s: every key must be a flag name\n", path);
            lua_pop(L, 1);
            goto done;
        }
        if (nkeys == cap) {
            cap = cap ? cap * 2 : 16;
            const char **k = realloc(keys, cap * sizeof *k);
            if (!k) goto oom;
            keys = k;
        }
        keys[nkeys++] = lua_tostring(L, -1); /* the table keeps the string alive */
    }
    qsort(keys, nkeys, sizeof *keys, by_string);
    for (size_t i = 0; i < nkeys; i++) {
        char flag[96];
        int n = snprintf(flag, sizeof flag, "--%s", keys[i]);
        for (char *c = flag + 2; *c; c++)
            if (*c == '_') *c = '-';
        int known = n > 0 && (size_t)n < sizeof flag && strcmp(flag, "--config") != 0;
        for (const char *const *k = known_flags; known && *k; k++)
            if (strcmp(*k, flag) == 0) break;
            else if (!k[1]) known = 0;
        if (!known) {
            fprintf(stderr, "scopegate serve: %s: unknown setting '%s' (the flag names of "
                            "scopegate serve --help, without dashes)\n",
                    path, keys[i]);
            goto done;
        }
        lua_getfield(L, -1, keys[i]);
        int vr = push_value(L, &b, flag, path, keys[i]);
        lua_pop(L, 1);
        if (vr == -2) goto oom;
        if (vr != 0) goto done;
    }
    *argc_out = b.n;
    *argv_out = b.v;
    b.v = NULL;
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "scopegate serve: out of memory\n");
done:
    sg_config_argv_free(b.n, b.v);
    free(keys);
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
