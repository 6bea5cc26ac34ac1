/* main.c -- the scopegate command line: serve, check, explain, test, token, version.
 *
 * Each subcommand is a thin shell over the core; parsing flags and
 * reporting their errors (one line, naming the flag) is this file's job.
 * `serve` lives in serve.c because it owns the gateway's whole lifetime;
 * `explain` and `test` have their own files (explain.c, policytest.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli/cli.h"
#include "policy/lint.h"
#include "policy/policy.h"
#include "base/json.h"
#include "base/sg.h"
#include "auth/mint.h"
#include "auth/token.h"

int sg_cmd_serve(int argc, char **argv);
int sg_cmd_explain(int argc, char **argv);
int sg_cmd_test(int argc, char **argv);

static int usage(FILE *f)
{
    fputs("usage: scopegate <command> [options]\n"
          "  serve    run the gateway in front of an MCP server\n"
          "  check    load and lint a policy: scopegate check POLICY [--format json] [--strict]\n"
          "  explain  show the decision for one message: scopegate explain POLICY --message JSON\n"
          "  test     run policy tests: scopegate test FILE.test.lua|DIR...\n"
          "  token    mint a development token: scopegate token --key FILE --scope \"a b\"\n"
          "  version  print the version\n"
          "Run scopegate <command> --help for the options of a command.\n",
          f);
    return f == stderr ? 2 : 0;
}

/* ---- check ----------------------------------------------------------------- */

static int cmd_check(int argc, char **argv)
{
    const char *format = "text";
    int strict = 0;
    const sg_flag flags[] = {
        {"--format", SG_FLAG_STRING, &format, 0, 0},
        {"--strict", SG_FLAG_BOOL, &strict, 0, 0},
    };
    const char *pos[1];
    int npos;
    int rc = sg_flags_parse("check", argc, argv, 2, flags, SG_ARRAY_LEN(flags), pos, 1, &npos);
    if (rc == 1 || (rc == 0 && npos != 1)) {
        fputs(
            "usage: scopegate check POLICY [--format text|json] [--strict]\n"
            "Loads the policy, lints it (load errors, then scope design: see 'Lint codes'\n"
            "in docs/policy.md) and runs every function rule once in the list phase.\n"
            "Text: one 'file:line: error|warning: ...' line per finding (warnings end with\n"
            "their [code]). JSON: {\"file\", \"errors\", \"warnings\", \"findings\": [{\"file\",\n"
            "\"line\", \"severity\", \"code\", \"message\"}]}. Exits 1 when there is any\n"
            "error (or, with --strict, any warning), 0 otherwise, 2 on bad usage.\n",
            rc == 1 ? stdout : stderr);
        return rc == 1 ? 0 : 2;
    }
    if (rc < 0) return 2;
    int json = strcmp(format, "json") == 0;
    if (!json && strcmp(format, "text") != 0) {
        fprintf(stderr, "scopegate check: --format takes text or json, not '%s'\n", format);
        return 2;
    }
    sg_findings findings = SG_FINDINGS_INIT;
    int errors = sg_check_policy(pos[0], NULL, &findings);
    size_t warnings = sg_findings_count(&findings, 0);
    int failed = errors > 0 || (strict && warnings > 0);
    if (json) {
        char *doc = sg_findings_to_json(pos[0], &findings);
        if (!doc) {
            fputs("scopegate check: out of memory\n", stderr);
            sg_findings_free(&findings);
            return 1;
        }
        printf("%s\n", doc);
        free(doc);
    } else {
        sg_buf report = SG_BUF_INIT;
        sg_findings_format_text(&findings, &report);
        if (report.len) fputs(report.data, stdout);
        sg_buf_free(&report);
        if (findings.oom) fputs("scopegate check: out of memory (findings are missing)\n", stderr);
        if (!failed)
            printf("%s: ok\n", pos[0]);
        else if (errors == 0)
            printf("%s: %zu warning%s (failing: --strict)\n", pos[0], warnings,
                   warnings == 1 ? "" : "s");
    }
    sg_findings_free(&findings);
    return failed ? 1 : 0;
}

/* ---- token ----------------------------------------------------------------- */

static int cmd_token(int argc, char **argv)
{
    const char *key = NULL, *scope = NULL, *sub = "dev-user", *aud = NULL, *iss = NULL;
    const char *alg = NULL, *kid = NULL, *client_id = "scopegate-dev";
    unsigned long ttl = 3600;
    const sg_flag flags[] = {
        {"--key", SG_FLAG_STRING, &key, 0, 0},
        {"--scope", SG_FLAG_STRING, &scope, 0, 0},
        {"--sub", SG_FLAG_STRING, &sub, 0, 0},
        {"--aud", SG_FLAG_STRING, &aud, 0, 0},
        {"--iss", SG_FLAG_STRING, &iss, 0, 0},
        {"--alg", SG_FLAG_STRING, &alg, 0, 0},
        {"--kid", SG_FLAG_STRING, &kid, 0, 0},
        {"--client-id", SG_FLAG_STRING, &client_id, 0, 0},
        {"--ttl", SG_FLAG_ULONG, &ttl, 1, 366ul * 86400},
    };
    const char *pos[1];
    int npos;
    int rc = sg_flags_parse("token", argc, argv, 2, flags, SG_ARRAY_LEN(flags), pos, 0, &npos);
    if (rc == 1 || (rc == 0 && !key)) {
        fputs("usage: scopegate token --key PRIVATE_KEY.pem [--scope \"a b\"] [--sub S]\n"
              "                       [--aud AUDIENCE] [--iss ISSUER] [--ttl SECONDS]\n"
              "                       [--alg ALG] [--kid KID] [--client-id ID]\n"
              "Prints a signed development token. --alg defaults to the key's kind\n"
              "(RS256, ES256/384/512, EdDSA); --ttl to 3600.\n",
              rc == 1 ? stdout : stderr);
        return rc == 1 ? 0 : 2;
    }
    if (rc < 0) return 2;
    size_t keylen;
    char *pem = sg_read_file(key, 1 << 20, &keylen);
    if (!pem) {
        fprintf(stderr, "scopegate token: cannot read key %s: %s\n", key, strerror(errno));
        return 1;
    }
    if (!alg && !(alg = sg_token_alg_for_key(pem, keylen))) {
        fprintf(stderr, "scopegate token: %s is not an RSA, EC or Ed25519/Ed448 private key\n",
                key);
        free(pem);
        return 1;
    }
    int64_t now = sg_now_unix();
    cJSON *claims = cJSON_CreateObject();
    if (iss) cJSON_AddStringToObject(claims, "iss", iss);
    cJSON_AddStringToObject(claims, "sub", sub);
    if (aud) cJSON_AddStringToObject(claims, "aud", aud);
    cJSON_AddStringToObject(claims, "client_id", client_id);
    if (scope) cJSON_AddStringToObject(claims, "scope", scope);
    cJSON_AddNumberToObject(claims, "iat", (double)now);
    cJSON_AddNumberToObject(claims, "exp", (double)(now + (int64_t)ttl));
    char *json = cJSON_PrintUnformatted(claims);
    cJSON_Delete(claims);
    sg_buf out = SG_BUF_INIT;
    char err[256] = "out of memory";
    rc = json ? sg_token_mint(alg, pem, keylen, kid, NULL, json, &out, err, sizeof err) : -1;
    free(json);
    free(pem);
    if (rc != 0 || !sg_buf_ok(&out)) {
        fprintf(stderr, "scopegate token: %s\n", err);
        sg_buf_free(&out);
        return 1;
    }
    printf("%s\n", out.data);
    sg_buf_free(&out);
    return 0;
}

int main(int argc, char **argv)
{
    sg_json_memory_init(); /* before any thread: cJSON's hooks are process-wide */
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("scopegate %s\n", SG_VERSION);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0) return sg_cmd_serve(argc, argv);
    if (strcmp(cmd, "check") == 0) return cmd_check(argc, argv);
    if (strcmp(cmd, "explain") == 0) return sg_cmd_explain(argc, argv);
    if (strcmp(cmd, "test") == 0) return sg_cmd_test(argc, argv);
    if (strcmp(cmd, "token") == 0) return cmd_token(argc, argv);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0) return usage(stdout);
    fprintf(stderr, "scopegate: unknown command '%s'\n", cmd);
    return usage(stderr);
}
