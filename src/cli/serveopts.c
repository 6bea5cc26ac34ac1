/* serveopts.c -- `scopegate serve`'s options: flags, config file, usage, defaults.
 *
 * Why a file of its own: what serve is told (the flags, the same settings
 * from a --config file, the rules between them, the usage text) is one
 * concern, and running the gateway from them (serve.c) is another. Every
 * default comes from cli/defaults.h: the usage text prints it and
 * serve_apply_defaults applies it, so they cannot disagree. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "cli/conffile.h"
#include "cli/defaults.h"
#include "cli/serveopts.h"
#include "net/http.h"
#include "upstream/proxy.h"

#define U(x) ((unsigned long)(x))

/* Long because it is one text: the usage reads top to bottom as the user
 * sees it, and each bracketed default is a format argument taken from
 * cli/defaults.h, listed in the order the text names them. */
void serve_usage(FILE *f)
{
    fprintf(f,
            "usage: scopegate serve --listen HOST:PORT --upstream URL --policy FILE\n"
            "                       (--jwks FILE|URL | --public-key PEM [--key-alg ALG]\n"
            "                        | --issuer URL alone: discovery)\n"
            "                       [--issuer ISS] [--audience AUD] [--public-url URL]\n"
            "                       [--introspection-url URL --introspection-client-id ID\n"
            "                        --introspection-secret-file FILE]\n"
            "       scopegate serve --config FILE [flags that override it]\n"
            "  --issuer URL               exact iss; without --jwks and --public-key, the\n"
            "                             keys (jwks_uri) and the introspection endpoint are\n"
            "                             discovered from URL (RFC 8414, else OpenID\n"
            "                             Connect); a failed discovery stops the start\n"
            "  --introspection-url URL    introspect opaque (non-JWS) tokens here (RFC 7662)\n"
            "                             [the discovered introspection_endpoint]\n"
            "  --introspection-client-id ID  the client scopegate introspects as\n"
            "  --introspection-secret-file FILE  holds that client's secret (one line)\n"
            "  --introspection-auth basic|post  how the client authenticates [%s]\n"
            "  --introspection-cache-ttl SECONDS  an active answer is reused this long at\n"
            "                             most, never past its exp [%lu]\n"
            "  --introspection-negative-ttl SECONDS  a refusal is reused this long [%lu]\n"
            "  --introspection-timeout-ms MS  one call; 503 after [%lu]\n"
            "  --introspection-concurrency N  calls in flight at most [%lu]\n"
            "  --introspection-queue N    calls waiting at most; 503 beyond [%lu]\n"
            "  --config FILE              a Lua file returning these settings as a table\n"
            "                             (keys are flag names: public_url = \"...\")\n"
            "  --upstream-ca FILE         CA bundle that verifies an https:// upstream [system]\n"
            "  --jwks-ttl SECONDS         refresh a JWKS URL this often [%lu]\n"
            "  --jwks-refetch SECONDS     at most one unknown-kid refetch this often [%lu]\n"
            "  --leeway SECONDS           clock skew allowed on exp, nbf and iat [%lu]\n"
            "  --token-algs ALG[,ALG...]  the only JWS algorithms accepted (e.g. RS256,ES256)\n"
            "                             [every algorithm a configured key is bound to]\n"
            "  --require-claim NAME       refuse tokens without this claim (repeatable; e.g.\n"
            "                             sub, client_id, jti)\n"
            "  --max-token-bytes N        refuse larger tokens unparsed [%lu]\n"
            "  --no-watch                 do not reload the policy when its files change\n"
            "                             (SIGHUP still reloads the policy and the keys)\n"
            "  --path PATH                MCP endpoint path [%s]\n"
            "  --allowed-host HOST[:PORT] accepted Host header (repeatable; '*' = any);\n"
            "                             HOST alone: no port in Host; HOST:* any port\n"
            "                             [the listen address and localhost with the bound\n"
            "                             port, --public-url's host]\n"
            "  --allowed-origin ORIGIN    accepted Origin header (repeatable; '*' = any)\n"
            "                             [--public-url's origin; without it, none]\n"
            "  --max-body BYTES           request body limit, 413 beyond [%lu]\n"
            "  --max-header BYTES         per-connection header memory, 431 beyond [%lu]\n"
            "  --max-connections N        concurrent connections, 503 beyond [%lu]\n"
            "  --max-arguments BYTES      req.arguments a policy rule may see (strings and keys,\n"
            "                             8 per value); the request is denied beyond [%lu]\n"
            "  --max-arguments-depth N    req.arguments nesting, denied beyond [%lu]\n"
            "  --timeout SECONDS          idle connection / slow upload limit [%lu]\n"
            "  --header-timeout SECONDS   a request head must be complete within this, 408\n"
            "                             after [%lu]\n"
            "  --min-body-rate BYTES      a body must arrive at this many bytes per second\n"
            "                             once --body-grace is over, 408 below; 0 = off [%lu]\n"
            "  --body-grace SECONDS       time a body gets before --min-body-rate applies [%lu]\n"
            "  --threads N                worker threads (one policy state each) [the CPUs this\n"
            "                             process may use: affinity mask, cgroup CPU quota]\n"
            "  --upstream-timeout-ms MS   wait for upstream response headers, 504 after [%lu]\n"
            "  --connect-timeout-ms MS    upstream connect timeout [%lu]\n"
            "  --token-cache N            verified tokens cached per worker [%lu]\n"
            "  --annotate SHAPE           how filtered tools show their scopes: oauthScope,\n"
            "                             securitySchemes or none [%s]\n"
            "  --identity-header H=CLAIM  send the caller's verified CLAIM upstream as header H\n"
            "                             (repeatable, at most 8; e.g. X-User-Sub=sub)\n"
            "  --log-level LEVEL          debug, info, warn or error [%s]\n"
            "  --audit-log FILE|-         one JSON line per decision (docs/audit.schema.json),\n"
            "                             appended to FILE ('-': stdout), reopened on SIGUSR1;\n"
            "                             also sends X-Request-Id upstream [off]\n"
            "  --audit-queue N            audit lines held for the writer; beyond, lines are\n"
            "                             dropped and counted, never waited for [%lu]\n"
            "  --shadow-policy FILE       evaluate this candidate policy beside --policy without\n"
            "                             enforcing it; each message it decides otherwise is an\n"
            "                             audit record (needs --audit-log); reloads like --policy\n"
            "  --admin-listen HOST:PORT   serve /metrics (Prometheus), /healthz and /readyz on\n"
            "                             this separate address (never the --listen one) [off]\n"
            "  --ready-upstream-window S  /readyz needs an upstream answer (a request, or an\n"
            "                             MCP ping the gateway sends when idle) within S\n"
            "                             seconds [%lu]\n",
            SG_DEFAULT_INTROSPECTION_AUTH, U(SG_DEFAULT_INTROSPECTION_CACHE_TTL_S),
            U(SG_DEFAULT_INTROSPECTION_NEGATIVE_TTL), U(SG_DEFAULT_INTROSPECTION_TIMEOUT_MS),
            U(SG_DEFAULT_INTROSPECTION_CONCURRENCY), U(SG_DEFAULT_INTROSPECTION_QUEUE),
            U(SG_DEFAULT_JWKS_TTL_S), U(SG_DEFAULT_JWKS_REFETCH_S), U(SG_DEFAULT_LEEWAY_S),
            U(SG_DEFAULT_MAX_TOKEN_BYTES), SG_DEFAULT_MCP_PATH, U(SG_DEFAULT_MAX_BODY),
            U(SG_DEFAULT_MAX_HEADER), U(SG_DEFAULT_MAX_CONNECTIONS), U(SG_DEFAULT_MAX_ARGUMENTS),
            U(SG_DEFAULT_MAX_ARGUMENTS_DEPTH), U(SG_DEFAULT_TIMEOUT_S),
            U(SG_DEFAULT_HEADER_TIMEOUT_S), U(SG_DEFAULT_MIN_BODY_RATE), U(SG_DEFAULT_BODY_GRACE_S),
            U(SG_DEFAULT_UPSTREAM_TIMEOUT_MS), U(SG_DEFAULT_CONNECT_TIMEOUT_MS),
            U(SG_DEFAULT_TOKEN_CACHE), SG_DEFAULT_ANNOTATE, SG_DEFAULT_LOG_LEVEL,
            U(SG_DEFAULT_AUDIT_QUEUE), U(SG_DEFAULT_READY_WINDOW_S));
}

/* HTTP field-name characters (RFC 9110 tchar). */
static int is_tchar(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* "X-User-Sub=sub" -> an identity header. The name must be a plain field
 * name that the gateway does not already own or forward (a client's own
 * copy of it is never forwarded, so the upstream can trust it). */
static int parse_identity(const char *spec, serve_opts *o)
{
    static const char *const reserved[] = {"Authorization",
                                           "Cookie",
                                           "Host",
                                           "Content-Length",
                                           "Transfer-Encoding",
                                           "Connection",
                                           "Expect",
                                           "Upgrade",
                                           "TE",
                                           "Keep-Alive",
                                           "Proxy-Authorization",
                                           "Forwarded",
                                           "Trailer",
                                           "X-Request-Id"};
    const char *eq = strchr(spec, '=');
    size_t n = eq ? (size_t)(eq - spec) : 0;
    int ok = eq && n > 0 && n < sizeof o->identity_names[0] && eq[1] != '\0' &&
             o->nidentity < SG_GATEWAY_MAX_IDENTITY;
    for (size_t i = 0; ok && i < n; i++)
        ok = is_tchar((unsigned char)spec[i]);
    if (!ok) {
        fprintf(stderr,
                "scopegate serve: --identity-header needs NAME=CLAIM with NAME an HTTP header "
                "name (at most %d of them), not '%s'\n",
                SG_GATEWAY_MAX_IDENTITY, spec);
        return -1;
    }
    char *name = o->identity_names[o->nidentity];
    memcpy(name, spec, n);
    name[n] = '\0';
    int clash = sg_proxy_header_is_forwarded(name);
    for (size_t i = 0; i < SG_ARRAY_LEN(reserved) && !clash; i++)
        clash = strcasecmp(name, reserved[i]) == 0;
    for (int i = 0; i < o->nidentity && !clash; i++)
        clash = strcasecmp(name, o->identity[i].header) == 0;
    if (clash) {
        fprintf(stderr,
                "scopegate serve: --identity-header %s: that header is reserved, forwarded from "
                "the client or given twice\n",
                name);
        return -1;
    }
    o->identity[o->nidentity].header = name;
    o->identity[o->nidentity].claim = eq + 1;
    o->nidentity++;
    return 0;
}

/* The lists a parse fills, kept apart so the command line's lists replace
 * (not extend) the config file's. */
typedef struct serve_lists {
    sg_flag_list hosts, origins, identity, claims;
} serve_lists;

/* Fills flags[] (SERVE_NFLAGS entries) with the table of serve's flags. */
#define SERVE_NFLAGS 51
static void flag_table(serve_opts *o, serve_lists *l, const char **config, sg_flag *flags)
{
    const sg_flag table[SERVE_NFLAGS] = {
        {"--config", SG_FLAG_STRING, config, 0, 0},
        {"--listen", SG_FLAG_STRING, &o->listen, 0, 0},
        {"--upstream", SG_FLAG_STRING, &o->upstream, 0, 0},
        {"--policy", SG_FLAG_STRING, &o->policy, 0, 0},
        {"--jwks", SG_FLAG_STRING, &o->jwks, 0, 0},
        {"--public-key", SG_FLAG_STRING, &o->public_key, 0, 0},
        {"--key-alg", SG_FLAG_STRING, &o->key_alg, 0, 0},
        {"--issuer", SG_FLAG_STRING, &o->issuer, 0, 0},
        {"--audience", SG_FLAG_STRING, &o->audience, 0, 0},
        {"--public-url", SG_FLAG_STRING, &o->public_url, 0, 0},
        {"--path", SG_FLAG_STRING, &o->path, 0, 0},
        {"--log-level", SG_FLAG_STRING, &o->log_level, 0, 0},
        {"--annotate", SG_FLAG_STRING, &o->annotate, 0, 0},
        {"--identity-header", SG_FLAG_LIST, &l->identity, 0, 0},
        {"--allowed-host", SG_FLAG_LIST, &l->hosts, 0, 0},
        {"--allowed-origin", SG_FLAG_LIST, &l->origins, 0, 0},
        {"--max-body", SG_FLAG_ULONG, &o->max_body, 1, SG_MCP_MAX_BODY_CAP},
        {"--max-header", SG_FLAG_ULONG, &o->max_header, 4096, 16ul << 20},
        {"--max-connections", SG_FLAG_ULONG, &o->max_connections, 1, 100000},
        {"--max-arguments", SG_FLAG_ULONG, &o->max_arguments, 1, SG_MCP_MAX_BODY_CAP},
        {"--max-arguments-depth", SG_FLAG_ULONG, &o->max_arguments_depth, 1, 512},
        {"--timeout", SG_FLAG_ULONG, &o->timeout_s, 1, 86400},
        {"--header-timeout", SG_FLAG_ULONG, &o->header_timeout_s, 1, 3600},
        {"--min-body-rate", SG_FLAG_STRING, &o->min_body_rate, 0, 0},
        {"--body-grace", SG_FLAG_ULONG, &o->body_grace_s, 1, 3600},
        {"--threads", SG_FLAG_ULONG, &o->threads, 1, 256},
        {"--upstream-timeout-ms", SG_FLAG_ULONG, &o->upstream_timeout_ms, 1, 86400000},
        {"--connect-timeout-ms", SG_FLAG_ULONG, &o->connect_timeout_ms, 1, 600000},
        {"--token-cache", SG_FLAG_ULONG, &o->token_cache, 1, 10000000},
        {"--jwks-ttl", SG_FLAG_ULONG, &o->jwks_ttl_s, 1, 86400},
        {"--jwks-refetch", SG_FLAG_ULONG, &o->jwks_refetch_s, 1, 86400},
        {"--upstream-ca", SG_FLAG_STRING, &o->upstream_ca, 0, 0},
        {"--no-watch", SG_FLAG_BOOL, &o->no_watch, 0, 0},
        {"--leeway", SG_FLAG_STRING, &o->leeway, 0, 0},
        {"--token-algs", SG_FLAG_STRING, &o->token_algs, 0, 0},
        {"--require-claim", SG_FLAG_LIST, &l->claims, 0, 0},
        {"--max-token-bytes", SG_FLAG_ULONG, &o->max_token_bytes, 64, 1024 * 1024},
        {"--introspection-url", SG_FLAG_STRING, &o->introspection_url, 0, 0},
        {"--introspection-client-id", SG_FLAG_STRING, &o->introspection_client_id, 0, 0},
        {"--introspection-secret-file", SG_FLAG_STRING, &o->introspection_secret_file, 0, 0},
        {"--introspection-auth", SG_FLAG_STRING, &o->introspection_auth, 0, 0},
        {"--introspection-cache-ttl", SG_FLAG_ULONG, &o->introspection_cache_ttl_s, 1, 86400},
        {"--introspection-negative-ttl", SG_FLAG_ULONG, &o->introspection_negative_ttl_s, 1, 3600},
        {"--introspection-timeout-ms", SG_FLAG_ULONG, &o->introspection_timeout_ms, 100, 60000},
        {"--introspection-concurrency", SG_FLAG_ULONG, &o->introspection_concurrency, 1, 64},
        {"--introspection-queue", SG_FLAG_ULONG, &o->introspection_queue, 1, 4000},
        {"--admin-listen", SG_FLAG_STRING, &o->admin_listen, 0, 0},
        {"--ready-upstream-window", SG_FLAG_ULONG, &o->ready_window_s, 1, 86400},
        {"--audit-log", SG_FLAG_STRING, &o->audit_log, 0, 0},
        {"--audit-queue", SG_FLAG_ULONG, &o->audit_queue, 1, 1000000},
        {"--shadow-policy", SG_FLAG_STRING, &o->shadow_policy, 0, 0},
    };
    memcpy(flags, table, sizeof table);
}

static const sg_flag_list *pick(const sg_flag_list *cli, const sg_flag_list *file)
{
    return cli->n ? cli : file;
}

/* The command line first, to find --config; then the file; then the
 * command line again, so that its flags override the file's. The lists of
 * each source are kept apart in *from_file and *from_cli. Returns as
 * serve_parse does. */
static int read_sources(int argc, char **argv, serve_opts *o, serve_lists *from_file,
                        serve_lists *from_cli)
{
    memset(from_file, 0, sizeof *from_file);
    memset(from_cli, 0, sizeof *from_cli);
    sg_flag flags[SERVE_NFLAGS];
    const char *config = NULL;
    int npos = 0;
    flag_table(o, from_cli, &config, flags);
    int rc = sg_flags_parse("serve", argc, argv, 2, flags, SERVE_NFLAGS, NULL, 0, &npos);
    if (rc == 1) {
        serve_usage(stdout);
        return 1;
    }
    if (rc < 0) return -1;
    if (config) {
        memset(o, 0, sizeof *o);
        const char *ignored = NULL;
        flag_table(o, from_file, &ignored, flags);
        if (sg_config_parse(config, flags, SERVE_NFLAGS, &o->config_argc, &o->config_argv) != 0)
            return -1;
        memset(from_cli, 0, sizeof *from_cli);
        flag_table(o, from_cli, &ignored, flags);
        if (sg_flags_parse("serve", argc, argv, 2, flags, SERVE_NFLAGS, NULL, 0, &npos) != 0)
            return -1;
    }
    return 0;
}

/* The repeatable flags: the command line's list replaces the file's.
 * Returns 0, or -1 after printing why. */
static int take_lists(serve_opts *o, const serve_lists *from_file, const serve_lists *from_cli)
{
    const sg_flag_list *hosts = pick(&from_cli->hosts, &from_file->hosts);
    const sg_flag_list *origins = pick(&from_cli->origins, &from_file->origins);
    const sg_flag_list *claims = pick(&from_cli->claims, &from_file->claims);
    if (claims->n > SG_VERIFIER_MAX_REQUIRED_CLAIMS) {
        fprintf(stderr, "scopegate serve: --require-claim: at most %d claims\n",
                SG_VERIFIER_MAX_REQUIRED_CLAIMS);
        return -1;
    }
    for (int i = 0; i < claims->n; i++)
        o->required_claims[o->nrequired_claims++] = claims->items[i];
    for (int i = 0; i < hosts->n; i++) {
        size_t nl;
        const char *port;
        if (strcmp(hosts->items[i], "*") != 0 &&
            sg_http_split_authority(hosts->items[i], &nl, &port) != 0) {
            fprintf(stderr,
                    "scopegate serve: --allowed-host needs NAME, NAME:PORT, NAME:* or *, not "
                    "'%s'\n",
                    hosts->items[i]);
            return -1;
        }
        o->hosts[o->nhosts++] = hosts->items[i];
    }
    for (int i = 0; i < origins->n; i++)
        o->origins[o->norigins++] = origins->items[i];
    return 0;
}

/* The options serve cannot run without. Returns 0, or -1 after printing
 * why. */
static int check_required(const serve_opts *o)
{
    const char *missing =
        !o->listen     ? "--listen"
        : !o->upstream ? "--upstream"
        : !o->policy   ? "--policy"
        : (!o->jwks && !o->public_key && !o->issuer && !o->introspection_url)
            ? "--jwks (or --public-key, --issuer for discovery, or --introspection-url)"
            : NULL;
    if (missing) {
        fprintf(stderr, "scopegate serve: %s is required (see scopegate serve --help)\n", missing);
        return -1;
    }
    if (o->annotate && strcmp(o->annotate, "oauthScope") != 0 &&
        strcmp(o->annotate, "securitySchemes") != 0 && strcmp(o->annotate, "none") != 0) {
        fprintf(stderr,
                "scopegate serve: --annotate must be oauthScope, securitySchemes or none, not "
                "'%s'\n",
                o->annotate);
        return -1;
    }
    return 0;
}

/* The rules between options, and the shapes of a few values. Returns 0, or
 * -1 after printing why. */
static int check_rules(serve_opts *o)
{
    o->min_body_rate_bps = SG_DEFAULT_MIN_BODY_RATE;
    if (o->min_body_rate && sg_parse_ulong("serve", "--min-body-rate", o->min_body_rate, 0,
                                           1000000000ul, &o->min_body_rate_bps) != 0)
        return -1;
    if (o->introspection_auth && strcmp(o->introspection_auth, "basic") != 0 &&
        strcmp(o->introspection_auth, "post") != 0) {
        fprintf(stderr, "scopegate serve: --introspection-auth must be basic or post, not '%s'\n",
                o->introspection_auth);
        return -1;
    }
    const char *why =
        (o->introspection_client_id != NULL) != (o->introspection_secret_file != NULL)
            ? "--introspection-client-id and --introspection-secret-file go together"
        : o->introspection_url && !o->introspection_client_id
            ? "--introspection-url needs --introspection-client-id and "
              "--introspection-secret-file (RFC 7662 2.1: the endpoint authenticates its callers)"
        : o->shadow_policy && !o->audit_log
            ? "--shadow-policy needs --audit-log (its disagreements are written there)"
        : o->path && o->path[0] != '/'          ? "--path must start with '/'"
        : o->ready_window_s && !o->admin_listen ? "--ready-upstream-window needs --admin-listen"
                                                : NULL;
    if (!why) return 0;
    fprintf(stderr, "scopegate serve: %s\n", why);
    return -1;
}

int serve_parse(int argc, char **argv, serve_opts *o)
{
    serve_lists from_file, from_cli;
    int rc = read_sources(argc, argv, o, &from_file, &from_cli);
    if (rc != 0) return rc;
    if (take_lists(o, &from_file, &from_cli) != 0 || check_required(o) != 0) return -1;
    const sg_flag_list *identity = pick(&from_cli.identity, &from_file.identity);
    for (int i = 0; i < identity->n; i++)
        if (parse_identity(identity->items[i], o) != 0) return -1;
    return check_rules(o);
}

#define SET_DEFAULT(field, value)                                                                  \
    do {                                                                                           \
        if (!o->field) o->field = (value);                                                         \
    } while (0)

void serve_apply_defaults(serve_opts *o)
{
    SET_DEFAULT(path, SG_DEFAULT_MCP_PATH);
    SET_DEFAULT(key_alg, SG_DEFAULT_KEY_ALG);
    SET_DEFAULT(annotate, SG_DEFAULT_ANNOTATE);
    SET_DEFAULT(log_level, SG_DEFAULT_LOG_LEVEL);
    SET_DEFAULT(introspection_auth, SG_DEFAULT_INTROSPECTION_AUTH);
    SET_DEFAULT(max_body, SG_DEFAULT_MAX_BODY);
    SET_DEFAULT(max_header, SG_DEFAULT_MAX_HEADER);
    SET_DEFAULT(max_connections, SG_DEFAULT_MAX_CONNECTIONS);
    SET_DEFAULT(timeout_s, SG_DEFAULT_TIMEOUT_S);
    SET_DEFAULT(header_timeout_s, SG_DEFAULT_HEADER_TIMEOUT_S);
    SET_DEFAULT(body_grace_s, SG_DEFAULT_BODY_GRACE_S);
    SET_DEFAULT(max_arguments, SG_DEFAULT_MAX_ARGUMENTS);
    SET_DEFAULT(max_arguments_depth, SG_DEFAULT_MAX_ARGUMENTS_DEPTH);
    SET_DEFAULT(upstream_timeout_ms, SG_DEFAULT_UPSTREAM_TIMEOUT_MS);
    SET_DEFAULT(connect_timeout_ms, SG_DEFAULT_CONNECT_TIMEOUT_MS);
    SET_DEFAULT(token_cache, SG_DEFAULT_TOKEN_CACHE);
    SET_DEFAULT(max_token_bytes, SG_DEFAULT_MAX_TOKEN_BYTES);
    SET_DEFAULT(jwks_ttl_s, SG_DEFAULT_JWKS_TTL_S);
    SET_DEFAULT(jwks_refetch_s, SG_DEFAULT_JWKS_REFETCH_S);
    SET_DEFAULT(introspection_cache_ttl_s, SG_DEFAULT_INTROSPECTION_CACHE_TTL_S);
    SET_DEFAULT(introspection_negative_ttl_s, SG_DEFAULT_INTROSPECTION_NEGATIVE_TTL);
    SET_DEFAULT(introspection_timeout_ms, SG_DEFAULT_INTROSPECTION_TIMEOUT_MS);
    SET_DEFAULT(introspection_concurrency, SG_DEFAULT_INTROSPECTION_CONCURRENCY);
    SET_DEFAULT(introspection_queue, SG_DEFAULT_INTROSPECTION_QUEUE);
    SET_DEFAULT(audit_queue, SG_DEFAULT_AUDIT_QUEUE);
    SET_DEFAULT(ready_window_s, SG_DEFAULT_READY_WINDOW_S);
    /* Not a constant: the CPUs this process may use. */
    o->threads_from_cpus = !o->threads;
    SET_DEFAULT(threads, sg_cpus_usable());
}
