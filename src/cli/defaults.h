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
 * Where a layer below owns a named default (the HTTP limits, timeouts of
 * the upstream, keys, tokens and introspection, the sandbox, the audit
 * queue, readiness), the macro here is that name, so the value is written
 * once, where it is applied when a caller leaves it 0. The default thread count is not a constant:
 * it is sg_cpus_usable() (the CPUs the process may use). */
#ifndef SG_CLI_DEFAULTS_H
#define SG_CLI_DEFAULTS_H

#include "auth/authserver.h"
#include "auth/jwks.h"
#include "auth/token.h"
#include "gateway/audit.h"
#include "net/admin.h"
#include "net/http.h"
#include "policy/sandbox.h"
#include "upstream/proxy.h"

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
#define SG_DEFAULT_UPSTREAM_TIMEOUT_MS SG_PROXY_DEFAULT_RESPONSE_MS
#define SG_DEFAULT_CONNECT_TIMEOUT_MS  SG_PROXY_DEFAULT_CONNECT_MS

/* Tokens and keys. */
#define SG_DEFAULT_TOKEN_CACHE     SG_TCACHE_DEFAULT_ENTRIES
#define SG_DEFAULT_MAX_TOKEN_BYTES SG_TOKEN_DEFAULT_MAX_BYTES
#define SG_DEFAULT_LEEWAY_S        SG_TOKEN_DEFAULT_LEEWAY_S
#define SG_DEFAULT_JWKS_TTL_S      SG_JWKS_DEFAULT_TTL_S
#define SG_DEFAULT_JWKS_REFETCH_S  SG_JWKS_DEFAULT_REFETCH_S
#define SG_DEFAULT_KEY_ALG         "RS256"
#define SG_DEFAULT_DISCOVERY_MS    5000u /* the --issuer discovery at start */

/* Opaque tokens (RFC 7662 introspection). */
#define SG_DEFAULT_INTROSPECTION_AUTH         "basic"
#define SG_DEFAULT_INTROSPECTION_CACHE_TTL_S  SG_INTROSPECT_DEFAULT_CACHE_TTL_S
#define SG_DEFAULT_INTROSPECTION_NEGATIVE_TTL SG_INTROSPECT_DEFAULT_NEGATIVE_TTL_S
#define SG_DEFAULT_INTROSPECTION_TIMEOUT_MS   SG_INTROSPECT_DEFAULT_TIMEOUT_MS
#define SG_DEFAULT_INTROSPECTION_CONCURRENCY  SG_INTROSPECT_DEFAULT_CONCURRENCY
#define SG_DEFAULT_INTROSPECTION_QUEUE        SG_INTROSPECT_DEFAULT_QUEUE

/* Answers, logs, operations. */
#define SG_DEFAULT_ANNOTATE       "oauthScope"
#define SG_DEFAULT_LOG_LEVEL      "info"
#define SG_DEFAULT_AUDIT_QUEUE    SG_AUDIT_QUEUE_DEFAULT
#define SG_DEFAULT_READY_WINDOW_S SG_ADMIN_DEFAULT_READY_WINDOW_S

#endif
