/* explain.c -- `scopegate explain`: what would the gateway decide, and why.
 *
 * The policy author's debugger: given a policy, a caller (claims, or a
 * token whose payload is read WITHOUT verification) and one MCP body, print
 * each message's rule and requirement, then the decision, the HTTP status,
 * the exact WWW-Authenticate value and the JSON-RPC error the gateway would
 * send. It runs the same code as the gateway: sg_mcp_parse and
 * sg_bridge_decide (the policy bridge, then sg_decide). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base64url.h"
#include "mcp/bridge.h"
#include "auth/challenge.h"
#include "cli/cli.h"
#include "mcp/mcp.h"
#include "policy/policy.h"
#include "base/sg.h"
#include "auth/token.h"

int sg_cmd_explain(int argc, char **argv);

static const char *const outcome_names[] = {
    [SG_ALLOW] = "allow",
    [SG_UNAUTHORIZED] = "401 unauthorized",
    [SG_FORBIDDEN] = "403 insufficient_scope",
    [SG_DENIED] = "403 denied",
};
_Static_assert(sizeof outcome_names / sizeof *outcome_names == SG_OUTCOME_COUNT, "every outcome");

/* The exit status per outcome, so scripts and CI can assert a decision
 * without parsing the text (documented in the usage and docs/policy.md).
 * 1 (could not decide) and 2 (usage) are taken by the CLI conventions. */
enum {
    EXPLAIN_EXIT_ALLOW = 0,
    EXPLAIN_EXIT_UNAUTHORIZED = 3, /* 401: no token, or it lacks what is needed */
    EXPLAIN_EXIT_FORBIDDEN = 4,    /* 403 insufficient_scope: a step-up can help */
    EXPLAIN_EXIT_DENIED = 5,       /* 403 denied: the policy says never, or failed */
    EXPLAIN_EXIT_INVALID = 6       /* 400: the body is refused before any policy */
};
static const int outcome_exit[] = {
    [SG_ALLOW] = EXPLAIN_EXIT_ALLOW,
    [SG_UNAUTHORIZED] = EXPLAIN_EXIT_UNAUTHORIZED,
    [SG_FORBIDDEN] = EXPLAIN_EXIT_FORBIDDEN,
    [SG_DENIED] = EXPLAIN_EXIT_DENIED,
};

static int explain_usage(FILE *f)
{
    fputs("usage: scopegate explain POLICY --message JSON [--claims JSON | --token JWT]\n"
          "                         [--header 'Name: value']... [--protocol-version V]\n"
          "                         [--public-url URL]\n"
          "Prints each message's rule and requirement and the decision the gateway would\n"
          "make. --token is decoded WITHOUT verifying its signature; omit both --claims and\n"
          "--token for an anonymous caller. --message - reads the body from stdin.\n"
          "Exit status: 0 allow, 3 401 unauthorized, 4 403 insufficient_scope,\n"
          "5 403 denied (by the policy, or a policy error), 6 400 invalid body;\n"
          "1 when it cannot decide (policy does not load, bad claims), 2 for usage.\n",
          f);
    return f == stderr ? 2 : 0;
}

/* The payload of a compact JWS as JSON text (malloc'd), or NULL. */
static char *jwt_payload(const char *jwt, size_t *len)
{
    const char *dot1 = strchr(jwt, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot2) return NULL;
    size_t n = (size_t)(dot2 - dot1 - 1);
    unsigned char *out = malloc(sg_b64url_decoded_max(n) + 1);
    long m = out ? sg_b64url_decode(dot1 + 1, n, out) : -1;
    if (m < 0) {
        free(out);
        return NULL;
    }
    out[m] = '\0';
    *len = (size_t)m;
    return (char *)out;
}

static char *read_stdin(size_t *len)
{
    sg_buf b = SG_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0 && b.len < SG_MCP_MAX_BODY_CAP)
        sg_buf_append(&b, chunk, n);
    sg_buf_append(&b, "", 0);
    *len = b.len;
    return sg_buf_steal(&b);
}

/* The caller: --claims as given, or --token's payload (its signature is not
 * checked: explain shows what a policy decides for these claims). *token
 * stays NULL without either. Returns 0, or -1 after printing why. */
static int read_token(const char *claims, const char *jwt, sg_token **token)
{
    char *claims_text = NULL;
    size_t claims_len = 0;
    if (jwt) {
        if (!(claims_text = jwt_payload(jwt, &claims_len))) {
            fprintf(stderr, "scopegate explain: --token is not a compact JWS\n");
            return -1;
        }
    } else if (claims) {
        claims_text = strdup(claims);
        claims_len = strlen(claims);
    }
    int rc = 0;
    if (claims_text) {
        sg_token_err e = sg_token_from_claims(claims_text, claims_len, token);
        if (e != SG_TOKEN_OK) {
            fprintf(stderr, "scopegate explain: the claims are refused: %s (%s)\n",
                    sg_token_error_message(e), sg_token_error_name(e));
            rc = -1;
        }
    }
    free(claims_text);
    return rc;
}

/* Each --header 'Name: value' into hdrs, the name lower-cased into a copy
 * (copies[i], freed by the caller; the value points into the flag). Returns
 * 0, or -1 after printing why. */
static int read_headers(const sg_flag_list *headers, sg_header *hdrs, char **copies)
{
    for (int i = 0; i < headers->n; i++) {
        const char *colon = strchr(headers->items[i], ':');
        if (!colon) {
            fprintf(stderr, "scopegate explain: --header needs 'Name: value', not '%s'\n",
                    headers->items[i]);
            return -1;
        }
        copies[i] = strndup(headers->items[i], (size_t)(colon - headers->items[i]));
        for (char *c = copies[i]; c && *c; c++)
            if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        hdrs[i].name = copies[i] ? copies[i] : "";
        hdrs[i].value = v;
    }
    return 0;
}

/* One block per message: its method and name, the rule that decided it
 * (file:line), what it requires, a policy error. each may be NULL (out of
 * memory): then only the methods. */
static void print_messages(const sg_mcp_body *body, const sg_policy_decision *each,
                           const sg_universe *u)
{
    sg_buf text = SG_BUF_INIT;
    for (size_t i = 0; i < body->nmsgs; i++) {
        const sg_mcp_msg *m = &body->msgs[i];
        sg_buf_reset(&text);
        if (each && each[i].req) sg_req_to_lua(u, each[i].req, &text);
        printf("message %zu:   %s%s%s\n", i + 1, m->method ? m->method : "(response)",
               m->name ? " " : "", m->name ? m->name : "");
        if (each && each[i].rule) {
            if (each[i].line > 0)
                printf("  rule:      %s (%s:%d)\n", each[i].rule, each[i].file, each[i].line);
            else
                printf("  rule:      %s\n", each[i].rule);
        }
        printf("  requires:  %s\n", text.data ? text.data : "?");
        if (each && each[i].error) printf("  error:     %s\n", each[i].error);
    }
    sg_buf_free(&text);
}

/* Decides the parsed body for the caller, prints each message and the
 * decision, and returns the exit status of that outcome. */
static int explain_body(sg_policy *p, const sg_mcp_body *body, const sg_bridge_caller *caller,
                        const char *public_url)
{
    sg_arena arena;
    sg_arena_init(&arena, 4096);
    sg_decision d;
    sg_decision_init(&d);
    sg_policy_decision *each = calloc(body->nmsgs, sizeof *each);
    sg_buf rm = SG_BUF_INIT;
    sg_site site;
    sg_bridge_site(p, public_url, &rm, &site);
    sg_bridge_decide(p, body, caller, &site, &arena, each, &d);
    print_messages(body, each, site.universe);
    free(each);
    printf("decision:    %s\n", outcome_names[d.outcome]);
    if (d.challenge.len) printf("challenge:   WWW-Authenticate: %s\n", d.challenge.data);
    if (d.outcome != SG_ALLOW) printf("message:     %s\n", d.message.data ? d.message.data : "");
    int status = outcome_exit[d.outcome];
    sg_buf_free(&rm);
    sg_decision_free(&d);
    sg_arena_free(&arena);
    return status;
}

int sg_cmd_explain(int argc, char **argv)
{
    const char *message = NULL, *claims = NULL, *jwt = NULL, *version = NULL, *public_url = NULL;
    sg_flag_list headers = {.n = 0};
    const sg_flag flags[] = {
        {"--message", SG_FLAG_STRING, &message, 0, 0},
        {"--claims", SG_FLAG_STRING, &claims, 0, 0},
        {"--token", SG_FLAG_STRING, &jwt, 0, 0},
        {"--header", SG_FLAG_LIST, &headers, 0, 0},
        {"--protocol-version", SG_FLAG_STRING, &version, 0, 0},
        {"--public-url", SG_FLAG_STRING, &public_url, 0, 0},
    };
    const char *pos[1];
    int npos;
    int rc = sg_flags_parse("explain", argc, argv, 2, flags, SG_ARRAY_LEN(flags), pos, 1, &npos);
    if (rc == 1) return explain_usage(stdout);
    if (rc < 0) return 2;
    if (npos != 1 || !message || (claims && jwt)) return explain_usage(stderr);

    sg_buf report = SG_BUF_INIT;
    sg_policy *p = sg_policy_new(pos[0], NULL, &report);
    if (!p) {
        fprintf(stderr, "%s",
                sg_buf_ok(&report) && report.data ? report.data
                                                  : "scopegate explain: cannot load the policy\n");
        sg_buf_free(&report);
        return 1;
    }
    sg_buf_free(&report);

    int status = 1;
    char *body_text = NULL;
    size_t body_len = 0;
    sg_token *token = NULL;
    sg_header hdrs[SG_FLAG_LIST_MAX];
    char *hdr_copies[SG_FLAG_LIST_MAX] = {0};
    sg_mcp_body body;
    memset(&body, 0, sizeof body);

    if (strcmp(message, "-") == 0) {
        body_text = read_stdin(&body_len);
    } else {
        body_text = strdup(message);
        body_len = strlen(message);
    }
    if (read_token(claims, jwt, &token) != 0 || read_headers(&headers, hdrs, hdr_copies) != 0)
        goto done;

    /* The same content hash the gateway logs when it loads or reloads this
     * text, so a decision can be tied to the policy that made it. */
    printf("policy:      %s (policy %s)\n", pos[0], sg_policy_hash(p));
    int prc = sg_mcp_parse(body_text, body_len, NULL, NULL, &body);
    if (prc != 0) {
        printf("decision:    400 (JSON-RPC %d)\nmessage:     %s\n", prc, body.error_message);
        status = EXPLAIN_EXIT_INVALID;
        goto done;
    }
    sg_bridge_caller caller = {.token = token,
                               .headers = hdrs,
                               .nheaders = (size_t)headers.n,
                               .protocol_version = version ? version : SG_MCP_DEFAULT_VERSION};
    status = explain_body(p, &body, &caller, public_url);
done:
    sg_mcp_body_free(&body);
    for (int i = 0; i < headers.n; i++)
        free(hdr_copies[i]);
    sg_token_free(token);
    free(body_text);
    sg_policy_free(p);
    return status;
}
