/* check.c -- `scopegate check`: loads a policy, reports its findings and
 * runs every function rule once with a synthetic caller (see policy.h).
 * Apart from deciding because it calls rules directly, not through rule
 * selection, and reports instead of denying. */
#include "policy/policy_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- check --------------------------------------------------------------------------- */

static int by_line(const void *a, const void *b)
{
    const rule *x = *(rule *const *)a, *y = *(rule *const *)b;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    return strcmp(x->name, y->name);
}

int sg_policy_check(const char *path, const sg_policy_limits *limits, sg_buf *report)
{
    return sg_policy_check_with(path, limits, report, NULL, NULL, NULL);
}

int sg_policy_check_hashed(const char *path, const sg_policy_limits *limits, sg_buf *report,
                           char hash[SG_POLICY_HASH_LEN + 1])
{
    return sg_policy_check_with(path, limits, report, NULL, NULL, hash);
}

int sg_policy_check_with(const char *path, const sg_policy_limits *limits, sg_buf *report,
                         void (*lint)(sg_policy *p, void *ctx), void *ctx,
                         char hash[SG_POLICY_HASH_LEN + 1])
{
    loader ld;
    sg_policy *p = policy_load_into(path, limits, &ld);
    if (hash) hash[0] = '\0';
    if (p && hash) sg_policy_sources_hash(p->sb, hash);
    int nerrors = ld.nerrors;
    if (ld.report.data) sg_buf_append(report, ld.report.data, ld.report.len);
    policy_loader_free(&ld);
    if (!p) return nerrors ? nerrors : 1;

    /* A synthetic caller holding every scope, so rules take their normal path. */
    int n = sg_universe_size(p->u);
    const char **scopes = calloc((size_t)n + 1, sizeof *scopes);
    cJSON *claims = cJSON_CreateObject();
    if (!scopes || !claims) {
        free(scopes);
        cJSON_Delete(claims);
        sg_buf_printf(report, "%s:1: error: out of memory\n", path);
        sg_policy_free(p);
        return nerrors + 1;
    }
    for (int i = 0; i < n; i++)
        scopes[i] = sg_universe_name(p->u, i);
    cJSON_AddStringToObject(claims, "sub", "scopegate-check");
    sg_token tok = {.claims = claims,
                    .sub = "scopegate-check",
                    .client_id = "scopegate-check",
                    .exp = sg_now_unix() + 3600,
                    .nscopes = n,
                    .scopes = scopes};
    if (p->nfunctions > 1)
        qsort(p->functions, (size_t)p->nfunctions, sizeof *p->functions, by_line);
    sg_arena a;
    sg_arena_init(&a, 4096);
    for (int i = 0; i < p->nfunctions; i++) {
        const rule *r = p->functions[i];
        sg_policy_input in = {.phase = SG_PHASE_CALL, .method = r->key, .token = &tok};
        static const char *const list_methods[] = {"tools/list", "prompts/list", "resources/list"};
        for (int w = 0; w < T_METHODS; w++) {
            if (strncmp(r->name, policy_table_names[w], strlen(policy_table_names[w])) == 0 &&
                r->name[strlen(policy_table_names[w])] == '.') {
                in.phase = SG_PHASE_LIST;
                in.method = list_methods[w];
                in.name = r->key;
            }
        }
        if (r == &p->default_rule) in.method = "scopegate/check";
        /* Call the rule directly: selection could pick a different one. */
        call_ctx cc = {p, r, &in, &a, NULL};
        sg_buf err = SG_BUF_INIT;
        if (sg_sandbox_call(p->sb, policy_call_rule, &cc, 0, 0, &err) != 0) {
            const char *msg = err.data ? err.data : "out of memory";
            size_t loc = policy_location_prefix(msg);
            if (loc)
                sg_buf_printf(report, "%.*s: error: %s: %s\n", (int)loc, msg, r->name,
                              msg + loc + 2);
            else
                sg_buf_printf(report, "%s:%d: error: %s: %s\n", path, r->line, r->name, msg);
            nerrors++;
        }
        sg_buf_free(&err);
        sg_arena_reset(&a);
    }
    sg_arena_free(&a);
    free(scopes);
    cJSON_Delete(claims);
    if (lint) lint(p, ctx);
    sg_policy_free(p);
    return nerrors;
}
