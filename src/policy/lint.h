/* lint.h -- `scopegate check` as findings with stable codes, and the
 * scope-design lint.
 *
 * sg_policy_check (policy.h) says whether a policy loads and runs; this file
 * adds what a reviewer of the scope design would say (scopes named after a
 * tool, environment words, OIDC scopes as requirements, write without read,
 * unused scopes, plumbing that the advertised scopes do not cover, public
 * tools that write, a public default) and turns every finding into a record
 * (file, line, severity, code, message) that prints as the familiar
 * "file:line: warning: message [code]" line or as JSON for editors and CI.
 * Every code is documented in docs/policy.md ("Lint codes"). */
#ifndef SG_LINT_H
#define SG_LINT_H

#include <stddef.h>

#include "policy/policy.h"
#include "base/sg.h"

typedef struct sg_finding {
    char *file; /* malloc'd */
    int line;   /* >= 1 */
    int is_error;
    const char *code; /* stable rule id, a static string: "scope-env-word" */
    char *message;    /* malloc'd, "where: what", without file, line or code */
} sg_finding;

typedef struct sg_findings {
    sg_finding *items;
    size_t n, cap;
    int oom; /* set when a finding could not be recorded */
} sg_findings;

#define SG_FINDINGS_INIT                                                                           \
    {                                                                                              \
        NULL, 0, 0, 0                                                                              \
    }

/* Runs everything `scopegate check` runs on the policy at path: load, the
 * load-time lint, every function rule once (sg_policy_check_with) and, when
 * the policy loaded, the scope-design lint. Appends one finding per problem
 * to out, sorted (sg_findings_sort). limits may be NULL. Returns the number
 * of errors (0 = the policy is usable). Out of memory shows as out->oom and
 * counts as an error. */
int sg_check_policy(const char *path, const sg_policy_limits *limits, sg_findings *out);

/* The scope-design lint on a loaded policy: appends warnings to out (file =
 * the policy's path). Never changes the policy; may run Lua-free
 * introspection only. Can't fail (out of memory sets out->oom). */
void sg_lint_scope_design(sg_policy *p, sg_findings *out);

/* Parses sg_policy_check's report ("file:line: error|warning: msg" lines)
 * into findings: errors get code "policy-error", the undeclared-scope
 * warning "scope-undeclared", other warnings "policy-warning". A line that
 * does not parse continues the previous finding's message. Can't fail (out
 * of memory sets out->oom). */
void sg_findings_parse_report(sg_findings *out, const char *report);

/* Sorts by file, line, errors before warnings, code, message: a stable,
 * deterministic order whatever Lua's table order was. Can't fail. */
void sg_findings_sort(sg_findings *f);

/* Counts errors (errors = 1) or warnings (errors = 0). Can't fail. */
size_t sg_findings_count(const sg_findings *f, int errors);

/* Appends one "file:line: error: message" or "file:line: warning: message
 * [code]" line per finding. Can't fail (errors are recorded in out). */
void sg_findings_format_text(const sg_findings *f, sg_buf *out);

/* The findings as a JSON document:
 *   {"file": path, "errors": N, "warnings": N,
 *    "findings": [{"file", "line", "severity": "error"|"warning", "code",
 *                  "message"}, ...]}
 * Returns a malloc'd string (free() it), or NULL when out of memory. */
char *sg_findings_to_json(const char *path, const sg_findings *f);

/* Frees every finding and resets f to empty. Accepts an empty f. */
void sg_findings_free(sg_findings *f);

#endif
