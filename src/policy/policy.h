/* policy.h -- Lua policies: loading, compiling, deciding, linting.
 *
 * A policy file returns a table that says which scopes each MCP message
 * needs (see docs/policy.md). Loading runs it once in a sandbox (sandbox.h),
 * validates its shape with file:line:key errors, interns its scopes into an
 * sg_universe and compiles every static requirement into an sg_req tree;
 * rules written as functions stay in the Lua state and run per request
 * under the sandbox budgets.
 *
 * One sg_policy belongs to one worker thread (it owns a Lua state): load one
 * per worker, never one per request. The universe and static requirements
 * are read-only after load.
 *
 * The folder src/policy/ is the policy runtime: the confined Lua state
 * (sandbox.h), loading and deciding (this file), the conversions between
 * cJSON and Lua (luajson.h), locating keys and constants in policy source
 * for file:line messages (luasrc.h), and the scope-design lint (lint.h).
 * It knows MCP only as the sg_policy_input it is given.
 */
#ifndef SG_POLICY_H
#define SG_POLICY_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "policy/sandbox.h"
#include "authz/scope.h"
#include "base/sg.h"
#include "auth/token.h"

/* Budgets for policy code; zero fields take the defaults (sandbox.h). */
typedef struct sg_sandbox_limits sg_policy_limits;

typedef struct sg_policy sg_policy;

typedef enum sg_policy_phase {
    SG_PHASE_LIST, /* deciding whether to show an item in a .../list result */
    SG_PHASE_CALL  /* deciding a request */
} sg_policy_phase;

/* What the policy sees of one message. Everything is borrowed for the
 * duration of sg_policy_decide. Fill it with designated initializers: two
 * adjacent strings would swap silently by position. */
typedef struct sg_policy_input {
    sg_policy_phase phase;
    const char *method;       /* JSON-RPC method, e.g. "tools/call" */
    const char *name;         /* tool or prompt name, resource URI, or NULL */
    const cJSON *arguments;   /* call phase: params.arguments, or NULL */
    const sg_token *token;    /* NULL for an anonymous caller */
    const sg_header *headers; /* names lower-case */
    size_t nheaders;
    const char *protocol_version; /* NULL when unknown */
    /* The tool's MCP annotations (readOnlyHint, destructiveHint, ...) as the
     * gateway knows them: in the list phase the listed item's own, in the
     * call phase the catalogue learned from the upstream's tools/list.
     * NULL when unknown (then req.annotations is nil). */
    const cJSON *annotations;
} sg_policy_input;

typedef struct sg_policy_decision {
    const sg_req *req; /* never NULL; in the policy or in the request arena */
    const char *rule;  /* "tools.delete_entry", "default", "builtin.initialize" */
    const char *file;  /* the policy file */
    int line;          /* where the rule is written; 0 for built-ins */
    const char *error; /* NULL, or "file:line: rule: message" (request arena) */
    /* The rule's `audit` list: argument paths ("arguments.id") whose values
     * the audit log records; owned by the policy. NULL and 0 when none. */
    const char *const *audit;
    int naudit;
    /* 1 when the rule is the tools, prompts or resources entry for the
     * message's name (not the default rule, a method rule or a built-in). */
    int named;
} sg_policy_decision;

/* Loads and compiles the policy at path. limits may be NULL (defaults).
 * Returns the policy (sg_policy_free), or NULL on any error with one
 * "file:line: key: problem" line per error appended to report (the
 * caller's; may be NULL). */
sg_policy *sg_policy_new(const char *path, const sg_policy_limits *limits, sg_buf *report);
/* Frees the policy and its Lua state. Accepts NULL. */
void sg_policy_free(sg_policy *p);

/* Decides which requirement a message must meet. Function rules run in the
 * policy's Lua state and build their requirement in arena a; everything in
 * *out lives until a is reset or the policy is freed. Returns 0; or -1 when
 * the policy failed (Lua error, budget or memory overrun, bad return value),
 * in which case out->req is &sg_req_deny (fail closed), out->error says
 * what happened and one line has been logged with sg_log. */
int sg_policy_decide(sg_policy *p, const sg_policy_input *in, sg_arena *a, sg_policy_decision *out);

/* ---- introspection ----------------------------------------------------------
 * Everything returned is owned by the policy and valid until it is freed.
 * None of these can fail. */
const char *sg_policy_path(const sg_policy *p);
const char *sg_policy_realm(const sg_policy *p);    /* NULL when absent */
const char *sg_policy_resource(const sg_policy *p); /* NULL when absent */
/* Sets *out to the list and returns its length (0 when absent). */
int sg_policy_authorization_servers(const sg_policy *p, const char *const **out);
/* The sealed universe of every scope the policy names. */
const sg_universe *sg_policy_universe(const sg_policy *p);
/* RFC 9728 scopes_supported: `advertise` in its order, else every scope in
 * `scopes` in bytewise order. Sets *out and returns the count. */
int sg_policy_scopes_supported(const sg_policy *p, const char *const **out);
/* The static requirement of a tool; NULL when the tool is not named or its
 * rule is a function (then *dynamic is set to 1). dynamic may be NULL. */
const sg_req *sg_policy_tool_requirement(const sg_policy *p, const char *name, int *dynamic);
/* 1 when the policy may let an anonymous caller in anywhere: a static rule
 * (in tools, prompts, resources, methods, or `default`) that a caller
 * without a token meets, or a function rule with "public" in a return
 * expression (see sg_policy_function_scopes). Then protocol plumbing
 * (initialize, ping, lists, notifications, client responses, GET/DELETE)
 * is public too, so anonymous callers can reach what is public; otherwise
 * it needs a valid token. */
int sg_policy_has_public_rule(const sg_policy *p);
/* A string constant in a function rule's source that the rule may return
 * as a scope (see docs/policy.md, "Scopes in function rules"). */
typedef struct sg_policy_scope_use {
    const char *scope; /* the constant's text, a valid scope token */
    const char *rule;  /* "tools.delete_entry", "default" */
    const char *file;  /* where it is written: the policy or a module */
    int line;
    int returned; /* 1: in a return expression; 0: elsewhere, naming a known scope */
    int known;    /* 1 when the policy knows the scope (declared or used statically) */
} sg_policy_scope_use;
/* The scopes function rules can return, found in their source text at load
 * (a heuristic: scopes built at run time are not seen): every constant in
 * a return expression that is a scope token and not a reserved word, and
 * every constant anywhere in a function rule that names a scope the policy
 * knows. One entry per rule and scope, in load order. Sets *out (owned by
 * the policy) and returns the count. Can't fail. */
int sg_policy_function_scopes(const sg_policy *p, const sg_policy_scope_use **out);
/* 1 when the policy says `tool_annotations = "upstream"`: its rules read
 * req.annotations in the call phase, so the gateway keeps a catalogue of
 * the upstream's tools (catalog.h). */
int sg_policy_annotations_from_upstream(const sg_policy *p);
/* The policy's content hash: SG_POLICY_HASH_LEN hex digits of a SHA-256
 * over the digests of every file it ran (the policy, then each module it
 * required), so the same text always has the same hash and any edit to a
 * module changes it. Every decision can name the policy that made it. */
#define SG_POLICY_HASH_LEN 12
const char *sg_policy_hash(const sg_policy *p);
/* The same hash for the files a sandbox has run (used by hot reload to tell
 * a real change from a touch). Can't fail. */
void sg_policy_sources_hash(const sg_sandbox *sb, char out[SG_POLICY_HASH_LEN + 1]);
/* The sandbox, for memory statistics and the list of source files. */
sg_sandbox *sg_policy_sandbox(sg_policy *p);

/* ---- introspection for linters (lint.c) ------------------------------------
 * Read-only views of what the file wrote. Strings and requirements are owned
 * by the policy and valid until it is freed. */

/* One rule as the policy file wrote it. */
typedef struct sg_policy_rule_info {
    const char *table; /* "tools", "prompts", "resources", "methods", or "default" */
    const char *key;   /* tool or prompt name, resource URI or pattern, method; "default" */
    const char *name;  /* "tools.delete_entry", "default" */
    int line;          /* where the rule is written */
    const sg_req *req; /* the static requirement; NULL for a function rule */
} sg_policy_rule_info;

/* Calls visit once for every rule in tools, prompts, resources and methods
 * (in no particular order), then for `default` when the file sets it. The
 * info is only valid during the call. Can't fail. */
void sg_policy_each_rule(const sg_policy *p,
                         void (*visit)(const sg_policy_rule_info *rule, void *ctx), void *ctx);

/* 1 when scope id (of sg_policy_universe) is a key of `scopes`, with *line
 * (when line is not NULL) set to the line of that key; else 0 and *line = 0.
 * Can't fail. */
int sg_policy_scope_declared(const sg_policy *p, int id, int *line);

/* The line of the `advertise` key, or 0 when the policy does not set it
 * (then scopes_supported is every declared scope). Can't fail. */
int sg_policy_advertise_line(const sg_policy *p);

/* Adds to *out the scopes of the universe that the function rule called
 * `name` ("tools.x", "default") names in its source text, as
 * sg_policy_function_scopes found them at load (scopes built at run time
 * are not seen). Returns 0; or -1, with *out unchanged, when `name` is not
 * a function rule. */
int sg_policy_rule_scopes(const sg_policy *p, const char *name, sg_scopeset *out);

/* sg_policy_check, and then lint(p, ctx) on the loaded policy (after every
 * function rule ran once, before the policy is freed) when the policy loaded;
 * lint may be NULL. lint must not keep p. Same return value and report as
 * sg_policy_check; hash (when not NULL) as sg_policy_check_hashed. */
int sg_policy_check_with(const char *path, const sg_policy_limits *limits, sg_buf *report,
                         void (*lint)(sg_policy *p, void *ctx), void *ctx,
                         char hash[SG_POLICY_HASH_LEN + 1]);

/* Loads the policy, lints it and calls every function rule once with a
 * synthetic token (tools, prompts and resources in the list phase; methods
 * and default in the call phase with empty arguments). Appends one line per
 * finding to report: "file:line: error: ..." or "file:line: warning: ...".
 * Returns the number of errors (0 = the policy is usable). */
int sg_policy_check(const char *path, const sg_policy_limits *limits, sg_buf *report);
/* The same, also writing the hash (sg_policy_hash) of the text it checked
 * into hash ("" when the policy did not load), so that a caller can make
 * sure the copies it loads afterwards are the text that was checked. */
int sg_policy_check_hashed(const char *path, const sg_policy_limits *limits, sg_buf *report,
                           char hash[SG_POLICY_HASH_LEN + 1]);

#endif
