/* cli.c -- the shared flag parser (see cli.h). */
#include "cli/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sg_parse_ulong(const char *cmd, const char *what, const char *v, unsigned long min,
                   unsigned long max, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-' || n < min || n > max) {
        fprintf(stderr, "scopegate %s: %s needs a whole number from %lu to %lu, not '%s'\n", cmd,
                what, min, max, v);
        return -1;
    }
    *out = n;
    return 0;
}

static int set_value(const char *cmd, const sg_flag *f, const char *v)
{
    switch (f->kind) {
    case SG_FLAG_STRING:
        *(const char **)f->dst = v;
        return 0;
    case SG_FLAG_BOOL:
        *(int *)f->dst = 1;
        return 0;
    case SG_FLAG_LIST: {
        sg_flag_list *l = f->dst;
        if (l->n == SG_FLAG_LIST_MAX) {
            fprintf(stderr, "scopegate %s: %s given more than %d times\n", cmd, f->name,
                    SG_FLAG_LIST_MAX);
            return -1;
        }
        l->items[l->n++] = v;
        return 0;
    }
    case SG_FLAG_ULONG:
        return sg_parse_ulong(cmd, f->name, v, f->min, f->max, f->dst);
    }
    return -1;
}

int sg_flags_parse(const char *cmd, int argc, char **argv, int first, const sg_flag *flags,
                   size_t nflags, const char **pos, int max_pos, int *npos)
{
    *npos = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return 1;
        if (strncmp(a, "--", 2) != 0) {
            if (*npos == max_pos) {
                fprintf(stderr, "scopegate %s: unexpected argument '%s'\n", cmd, a);
                return -1;
            }
            pos[(*npos)++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t namelen = eq ? (size_t)(eq - a) : strlen(a);
        const sg_flag *f = NULL;
        for (size_t k = 0; k < nflags && !f; k++)
            if (strlen(flags[k].name) == namelen && strncmp(flags[k].name, a, namelen) == 0)
                f = &flags[k];
        if (!f) {
            fprintf(stderr, "scopegate %s: unknown flag '%.*s' (see scopegate %s --help)\n", cmd,
                    (int)namelen, a, cmd);
            return -1;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (f->kind == SG_FLAG_BOOL) {
            if (v) {
                fprintf(stderr, "scopegate %s: %s takes no value\n", cmd, f->name);
                return -1;
            }
        } else if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "scopegate %s: missing value for %s\n", cmd, f->name);
                return -1;
            }
            v = argv[++i];
        }
        if (set_value(cmd, f, v) != 0) return -1;
    }
    return 0;
}
