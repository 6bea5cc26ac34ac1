/* serveopts.h -- `scopegate serve`'s options (internal to src/cli).
 *
 * serveopts.c fills them from the command line and a --config file and
 * applies the defaults of cli/defaults.h; serve.c runs the gateway from
 * them. */
#ifndef SG_SERVEOPTS_H
#define SG_SERVEOPTS_H

#include <stdio.h>

#include "auth/token.h"
#include "cli/cli.h"
#include "gateway/gateway.h"

#define MAX_LIST SG_FLAG_LIST_MAX

typedef struct serve_opts {
    const char *listen, *upstream, *policy, *jwks, *public_key, *key_alg, *issuer, *audience,
        *public_url, *path, *log_level, *annotate, *upstream_ca, *min_body_rate, *admin_listen,
        *audit_log, *shadow_policy;
    unsigned long audit_queue;
    const char *hosts[MAX_LIST + 1], *origins[MAX_LIST + 1];
    int nhosts, norigins;
    sg_identity_header identity[SG_GATEWAY_MAX_IDENTITY];
    char identity_names[SG_GATEWAY_MAX_IDENTITY][128];
    int nidentity;
    unsigned long max_body, max_header, max_connections, timeout_s, threads;
    unsigned long header_timeout_s, body_grace_s, min_body_rate_bps;
    unsigned long upstream_timeout_ms, connect_timeout_ms, token_cache;
    unsigned long jwks_ttl_s, jwks_refetch_s;
    unsigned long max_arguments, max_arguments_depth;
    unsigned long ready_window_s;
    int no_watch;
    /* Opaque tokens (RFC 7662 introspection, authserver.h). */
    const char *introspection_url, *introspection_client_id, *introspection_secret_file,
        *introspection_auth;
    unsigned long introspection_cache_ttl_s, introspection_negative_ttl_s, introspection_timeout_ms,
        introspection_concurrency, introspection_queue;
    /* Token verification (sg_verifier_config). */
    const char *leeway, *token_algs;
    unsigned long max_token_bytes;
    const char *required_claims[SG_VERIFIER_MAX_REQUIRED_CLAIMS];
    int nrequired_claims;
    int threads_from_cpus; /* --threads was not given: the usable CPUs */
    int config_argc;       /* --config FILE as flags; the strings above may point here */
    char **config_argv;
} serve_opts;

/* Prints serve's usage, each default from cli/defaults.h. Can't fail. */
void serve_usage(FILE *f);
/* Fills *o (zeroed by the caller) from argv (argv[1] is "serve") and the
 * --config file it names, command-line flags overriding the file's; options
 * not given stay 0 or NULL. Returns 0; 1 after printing the usage for
 * --help; -1 after printing why to stderr (bad flag, a missing or
 * conflicting option). o->config_argv is the caller's to free
 * (sg_config_argv_free), also on error. */
int serve_parse(int argc, char **argv, serve_opts *o);
/* Sets every option left unset to its default (cli/defaults.h; --threads:
 * sg_cpus_usable()). Call after serve_parse, which tells given from not
 * given. Can't fail. */
void serve_apply_defaults(serve_opts *o);

#endif
