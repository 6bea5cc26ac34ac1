/* defaults.h -- every default of `scopegate serve`, in one place.
 *
 * Why one header: a default is stated three times by nature (the value the
 * program applies, the usage text, the docs), and written three times it
 * drifts. Here each is written once. The flag parser and the config file
 * leave an option unset (0 or NULL); serve applies these values to every
 * option left unset (serveopts.c, serve_apply_defaults), so what runs is
 * what this header says, and the usage text prints its bracketed defaults
 * from the same macros (tests/spec/cli/cli_spec.lua compares them).
 *
 * Where a layer below owns a named default (the HTTP limits, the token
 * cache, the sandbox, the audit queue), the macro here is that name, so the
 * value is still written once. The default thread count is not a constant:
 * it is sg_cpus_usable() (the CPUs the process may use). */
#ifndef SG_CLI_DEFAULTS_H
#define SG_CLI_DEFAULTS_H

#include "auth/token.h"
#include "gateway/audit.h"
#include "net/http.h"
#include "policy/sandbox.h"

/* The client side (src/net/http.h). */
#define SG_DEFAULT_MCP_PATH         SG_HTTP_DEFAULT_MCP_PATH
#define SG_DEFAULT_MAX_BODY         SG_HTTP_DEFAULT_MAX_BODY
#define SG_DEFAULT_MAX_HEADER       SG_HTTP_DEFAULT_MAX_HEADER
#define SG_DEFAULT_MAX_CONNECTIONS  SG_HTTP_DEFAULT_MAX_CONNECTIONS
#define SG_DEFAULT_TIMEOUT_S        SG_HTTP_DEFAULT_TIMEOUT_S
#define SG_DEFAULT_HEADER_TIMEOUT_S SG_HTTP_DEFAULT_HEADER_TIMEOUT_S
#define SG_DEFAULT_BODY_GRACE_S     SG_HTTP_DEFAULT_BODY_GRACE_S
#define SG_DEFAULT_MIN_BODY_RATE    1024u /* bytes per second once the grace is over */

/* What a policy rule may see of req.arguments (src/policy/sandbox.h). */
#define SG_DEFAULT_MAX_ARGUMENTS       SG_SANDBOX_DEFAULT_ARGUMENTS_BYTES
#define SG_DEFAULT_MAX_ARGUMENTS_DEPTH SG_SANDBOX_DEFAULT_ARGUMENTS_DEPTH

/* The upstream. */
#define SG_DEFAULT_UPSTREAM_TIMEOUT_MS 30000u
#define SG_DEFAULT_CONNECT_TIMEOUT_MS  5000u

/* Tokens and keys. */
#define SG_DEFAULT_TOKEN_CACHE     SG_TCACHE_DEFAULT_ENTRIES
#define SG_DEFAULT_MAX_TOKEN_BYTES SG_TOKEN_DEFAULT_MAX_BYTES
#define SG_DEFAULT_LEEWAY_S        60u
#define SG_DEFAULT_JWKS_TTL_S      300u
#define SG_DEFAULT_JWKS_REFETCH_S  30u
#define SG_DEFAULT_KEY_ALG         "RS256"
#define SG_DEFAULT_DISCOVERY_MS    5000u /* the --issuer discovery at start */

/* Opaque tokens (RFC 7662 introspection). */
#define SG_DEFAULT_INTROSPECTION_AUTH         "basic"
#define SG_DEFAULT_INTROSPECTION_CACHE_TTL_S  60u
#define SG_DEFAULT_INTROSPECTION_NEGATIVE_TTL 5u
#define SG_DEFAULT_INTROSPECTION_TIMEOUT_MS   3000u
#define SG_DEFAULT_INTROSPECTION_CONCURRENCY  4u
#define SG_DEFAULT_INTROSPECTION_QUEUE        256u

/* Answers, logs, operations. */
#define SG_DEFAULT_ANNOTATE       "oauthScope"
#define SG_DEFAULT_LOG_LEVEL      "info"
#define SG_DEFAULT_AUDIT_QUEUE    SG_AUDIT_QUEUE_DEFAULT
#define SG_DEFAULT_READY_WINDOW_S 30u

#endif
