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
 * Reading a test file is testfile.c's job; this file runs its cases. Output
 * is TAP; exit 0 when every case passes, 1 when one fails, 2
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
#include "cli/testfile.h"

int sg_cmd_test(int argc, char **argv);

#define MAX_PATHS 64

typedef struct tally {
    int n, passed, failed;
} tally;

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
    sg_buf_puts(out, outcome >= 0 ? sg_testfile_outcome_words[outcome] : "?");
    if (scopes) sg_buf_printf(out, " challenge scope=\"%s\"", scopes);
}

/* Compares the decision on the case's body with its expectation (outcome,
 * challenge scopes, rule); appends the diagnostics of a mismatch to diag.
 * Returns 1 when it matches. */
static int check_decision(const test_case *c, const sg_universe *u, const sg_mcp_body *body,
                          const sg_policy_decision *each, const sg_decision *d, sg_buf *diag)
{
    int ok = 1;
    sg_buf scope = SG_BUF_INIT;
    char *actual_scopes = NULL;
    if (d->challenge.len && (d->outcome == SG_UNAUTHORIZED || d->outcome == SG_FORBIDDEN)) {
        sg_universe_format(u, &d->scope, &scope);
        /* sort as the expectation is sorted */
        size_t n = 0;
        const char *items[1024];
        for (char *s = scope.data ? strtok(scope.data, " ") : NULL; s && n < 1024;
             s = strtok(NULL, " "))
            items[n++] = s;
        actual_scopes = sg_testfile_sorted_join(items, n, " ");
    }
    int outcome_ok = c->expect < 0 || (int)d->outcome == c->expect;
    int challenge_ok = !c->challenge || (actual_scopes && strcmp(actual_scopes, c->challenge) == 0);
    int rule_ok = !c->rule ||
                  (each && body->nmsgs == 1 && each[0].rule && strcmp(each[0].rule, c->rule) == 0);
    if (!outcome_ok || !challenge_ok || !rule_ok) {
        ok = 0;
        sg_buf_puts(diag, "#   expected: ");
        describe_outcome(c->expect >= 0 ? c->expect : (int)d->outcome, c->challenge, diag);
        if (c->rule) sg_buf_printf(diag, ", rule %s", c->rule);
        sg_buf_puts(diag, "\n#   actual:   ");
        describe_outcome((int)d->outcome, actual_scopes, diag);
        if (c->rule && each && body->nmsgs == 1)
            sg_buf_printf(diag, ", rule %s", each[0].rule ? each[0].rule : "?");
        sg_buf_puts(diag, "\n");
        for (size_t i = 0; each && i < body->nmsgs; i++) {
            sg_buf_printf(diag, "#   decided:  ");
            describe_rule(u, &each[i], diag);
            sg_buf_puts(diag, "\n");
        }
        if (d->message.len) sg_buf_printf(diag, "#   message:  %s\n", d->message.data);
    }
    free(actual_scopes);
    sg_buf_free(&scope);
    return ok;
}

/* The tools the caller sees in a tools/list answer (the list phase over
 * the test file's upstream tools) compared with the case's `visible`;
 * appends the diagnostics of a mismatch to diag. Returns 1 when it
 * matches. */
static int check_visible(const test_file *f, const test_case *c, sg_policy *p, const sg_universe *u,
                         const sg_token *token, const char *protocol_version, const sg_decision *d,
                         sg_arena *arena, sg_buf *diag)
{
    int ok = 1;
    sg_buf seen_diag = SG_BUF_INIT;
    const char **seen = calloc(f->ntools ? f->ntools : 1, sizeof *seen);
    size_t nseen = 0;
    sg_scopeset granted, effective;
    sg_token_granted(u, token, &granted);
    sg_universe_effective(u, &granted, &effective);
    for (size_t i = 0; seen && d->outcome == SG_ALLOW && i < f->ntools; i++) {
        sg_policy_input in = {.phase = SG_PHASE_LIST,
                              .method = "tools/call",
                              .name = f->tools[i].name,
                              .token = token,
                              .protocol_version = protocol_version,
                              .annotations = f->tools[i].annotations};
        sg_policy_decision ld;
        if (sg_bridge_list_visible(p, &in, &effective, arena, &ld))
            seen[nseen++] = f->tools[i].name;
        sg_buf_printf(&seen_diag, "#     %s: ", f->tools[i].name);
        describe_rule(u, &ld, &seen_diag);
        sg_buf_puts(&seen_diag, "\n");
    }
    char *actual = seen ? sg_testfile_sorted_join(seen, nseen, ", ") : NULL;
    if (!actual || strcmp(actual, c->visible) != 0) {
        ok = 0;
        sg_buf_printf(diag, "#   expected visible: %s\n#   actual visible:   %s\n", c->visible,
                      actual ? actual : "?");
        if (d->outcome != SG_ALLOW)
            sg_buf_printf(diag, "#   (tools/list itself is refused: %s)\n",
                          sg_testfile_outcome_words[d->outcome]);
        else if (seen_diag.len)
            sg_buf_printf(diag, "#   list phase:\n%s", seen_diag.data);
    }
    free(actual);
    free(seen);
    sg_buf_free(&seen_diag);
    return ok;
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
    int prc = sg_mcp_parse(c->body, strlen(c->body), NULL, NULL, &body);
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

    if (!check_decision(c, u, &body, each, &d, &diag)) ok = 0;
    if (c->visible && !check_visible(f, c, p, u, token, caller.protocol_version, &d, &arena, &diag))
        ok = 0;

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
    if (sg_testfile_read(path, &f, &errors) != 0) {
        fprintf(stderr, "%s", errors.data ? errors.data : "");
        printf("# %s: not run (the test file has errors)\n", path);
        goto out;
    }
    sg_buf report = SG_BUF_INIT;
    sg_policy *p = sg_policy_new(f.policy_path, NULL, &report);
    if (!p) {
        fprintf(stderr, "%s", sg_buf_ok(&report) && report.data ? report.data : "out of memory\n");
        sg_buf_free(&report);
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
    sg_testfile_free(&f);
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
    qsort(names, n, sizeof *names, sg_testfile_by_string);
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
