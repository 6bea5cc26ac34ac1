/* serve.c -- `scopegate serve`: flags to a running gateway.
 *
 * Why a file of its own: the serve subcommand is where configuration errors
 * must surface, before any traffic, with one clear line each (bad flag,
 * unreadable key, unreachable JWKS, policy that does not load). It builds
 * the pieces in dependency order (keys, verifier, gateway workers, proxy,
 * HTTP front), logs "listening on HOST:PORT" when ready, and tears them
 * down in reverse order on SIGINT/SIGTERM. SIGHUP reloads (reload.h) and
 * SIGUSR1 reopens the audit log (audit.h). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cli/cli.h"
#include "cli/conffile.h"
#include "gateway/audit.h"
#include "gateway/gateway.h"
#include "net/admin.h"
#include "net/http.h"
#include "auth/jwks.h"
#include "auth/authserver.h"
#include "policy/policy.h"
#include "upstream/proxy.h"
#include "gateway/reload.h"
#include "base/metrics.h"
#include "base/sg.h"
#include "auth/token.h"

/* Runs `scopegate serve` (argv[1] is "serve") until SIGINT/SIGTERM. Returns
 * the exit status: 0 after a signal (or --help), 2 for a bad flag, 1 when a
 * key, the JWKS, the policy, the upstream URL or the listen address fails. */
int sg_cmd_serve(int argc, char **argv);

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
    int config_argc; /* --config FILE as flags; the strings above may point here */
    char **config_argv;
} serve_opts;

static void serve_usage(FILE *f)
{
    fputs("usage: scopegate serve --listen HOST:PORT --upstream URL --policy FILE\n"
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
          "  --introspection-auth basic|post  how the client authenticates [basic]\n"
          "  --introspection-cache-ttl SECONDS  an active answer is reused this long at\n"
          "                             most, never past its exp [60]\n"
          "  --introspection-negative-ttl SECONDS  a refusal is reused this long [5]\n"
          "  --introspection-timeout-ms MS  one call; 503 after [3000]\n"
          "  --introspection-concurrency N  calls in flight at most [4]\n"
          "  --introspection-queue N    calls waiting at most; 503 beyond [256]\n"
          "  --config FILE              a Lua file returning these settings as a table\n"
          "                             (keys are flag names: public_url = \"...\")\n"
          "  --upstream-ca FILE         CA bundle that verifies an https:// upstream [system]\n"
          "  --jwks-ttl SECONDS         refresh a JWKS URL this often [300]\n"
          "  --jwks-refetch SECONDS     at most one unknown-kid refetch this often [30]\n"
          "  --leeway SECONDS           clock skew allowed on exp, nbf and iat [60]\n"
          "  --token-algs ALG[,ALG...]  the only JWS algorithms accepted (e.g. RS256,ES256)\n"
          "                             [every algorithm a configured key is bound to]\n"
          "  --require-claim NAME       refuse tokens without this claim (repeatable; e.g.\n"
          "                             sub, client_id, jti)\n"
          "  --max-token-bytes N        refuse larger tokens unparsed [16384]\n"
          "  --no-watch                 do not reload the policy when its files change\n"
          "                             (SIGHUP still reloads the policy and the keys)\n"
          "  --path PATH                MCP endpoint path [/mcp]\n"
          "  --allowed-host HOST[:PORT] accepted Host header (repeatable; '*' = any);\n"
          "                             HOST alone: no port in Host; HOST:* any port\n"
          "                             [the listen address and localhost with the bound\n"
          "                             port, --public-url's host]\n"
          "  --allowed-origin ORIGIN    accepted Origin header (repeatable; '*' = any)\n"
          "                             [--public-url's origin; without it, none]\n"
          "  --max-body BYTES           request body limit, 413 beyond [1048576]\n"
          "  --max-header BYTES         per-connection header memory, 431 beyond [36864]\n"
          "  --max-connections N        concurrent connections, 503 beyond [1000]\n"
          "  --max-arguments BYTES      req.arguments a policy rule may see (strings and keys,\n"
          "                             8 per value); the request is denied beyond [65536]\n"
          "  --max-arguments-depth N    req.arguments nesting, denied beyond [16]\n"
          "  --timeout SECONDS          idle connection / slow upload limit [30]\n"
          "  --header-timeout SECONDS   a request head must be complete within this, 408\n"
          "                             after [5]\n"
          "  --min-body-rate BYTES      a body must arrive at this many bytes per second\n"
          "                             once --body-grace is over, 408 below; 0 = off [1024]\n"
          "  --body-grace SECONDS       time a body gets before --min-body-rate applies [5]\n"
          "  --threads N                worker threads (one policy state each) [the CPUs this\n"
          "                             process may use: affinity mask, cgroup CPU quota]\n"
          "  --upstream-timeout-ms MS   wait for upstream response headers, 504 after [30000]\n"
          "  --connect-timeout-ms MS    upstream connect timeout [5000]\n"
          "  --token-cache N            verified tokens cached per worker [10000]\n"
          "  --annotate SHAPE           how filtered tools show their scopes: oauthScope,\n"
          "                             securitySchemes or none [oauthScope]\n"
          "  --identity-header H=CLAIM  send the caller's verified CLAIM upstream as header H\n"
          "                             (repeatable, at most 8; e.g. X-User-Sub=sub)\n"
          "  --log-level LEVEL          debug, info, warn or error [info]\n"
          "  --audit-log FILE|-         one JSON line per decision (docs/audit.schema.json),\n"
          "                             appended to FILE ('-': stdout), reopened on SIGUSR1;\n"
          "                             also sends X-Request-Id upstream [off]\n"
          "  --audit-queue N            audit lines held for the writer; beyond, lines are\n"
          "                             dropped and counted, never waited for [8192]\n"
          "  --shadow-policy FILE       evaluate this candidate policy beside --policy without\n"
          "                             enforcing it; each message it decides otherwise is an\n"
          "                             audit record (needs --audit-log); reloads like --policy\n"
          "  --admin-listen HOST:PORT   serve /metrics (Prometheus), /healthz and /readyz on\n"
          "                             this separate address (never the --listen one) [off]\n"
          "  --ready-upstream-window S  /readyz needs an upstream answer (a request, or an\n"
          "                             MCP ping the gateway sends when idle) within S\n"
          "                             seconds [30]\n",
          f);
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

static int parse_args(int argc, char **argv, serve_opts *o)
{
    serve_lists from_file, from_cli;
    memset(&from_file, 0, sizeof from_file);
    memset(&from_cli, 0, sizeof from_cli);
    sg_flag flags[SERVE_NFLAGS];
    const char *config = NULL;
    int npos = 0;

    /* The command line first, to find --config; then the file; then the
     * command line again, so that its flags override the file's. */
    flag_table(o, &from_cli, &config, flags);
    int rc = sg_flags_parse("serve", argc, argv, 2, flags, SERVE_NFLAGS, NULL, 0, &npos);
    if (rc == 1) {
        serve_usage(stdout);
        return 1;
    }
    if (rc < 0) return -1;
    if (config) {
        memset(o, 0, sizeof *o);
        const char *ignored = NULL;
        flag_table(o, &from_file, &ignored, flags);
        if (sg_config_parse(config, flags, SERVE_NFLAGS, &o->config_argc, &o->config_argv) != 0)
            return -1;
        memset(&from_cli, 0, sizeof from_cli);
        flag_table(o, &from_cli, &ignored, flags);
        if (sg_flags_parse("serve", argc, argv, 2, flags, SERVE_NFLAGS, NULL, 0, &npos) != 0)
            return -1;
    }
    const sg_flag_list *hosts = pick(&from_cli.hosts, &from_file.hosts);
    const sg_flag_list *origins = pick(&from_cli.origins, &from_file.origins);
    const sg_flag_list *identity = pick(&from_cli.identity, &from_file.identity);
    const sg_flag_list *claims = pick(&from_cli.claims, &from_file.claims);
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
    for (int i = 0; i < identity->n; i++)
        if (parse_identity(identity->items[i], o) != 0) return -1;
    o->min_body_rate_bps = 1024;
    if (o->min_body_rate && sg_parse_ulong("serve", "--min-body-rate", o->min_body_rate, 0,
                                           1000000000ul, &o->min_body_rate_bps) != 0)
        return -1;
    if (o->introspection_auth && strcmp(o->introspection_auth, "basic") != 0 &&
        strcmp(o->introspection_auth, "post") != 0) {
        fprintf(stderr, "scopegate serve: --introspection-auth must be basic or post, not '%s'\n",
                o->introspection_auth);
        return -1;
    }
    if ((o->introspection_client_id != NULL) != (o->introspection_secret_file != NULL)) {
        fprintf(stderr, "scopegate serve: --introspection-client-id and "
                        "--introspection-secret-file go together\n");
        return -1;
    }
    if (o->introspection_url && !o->introspection_client_id) {
        fprintf(stderr, "scopegate serve: --introspection-url needs --introspection-client-id "
                        "and --introspection-secret-file (RFC 7662 2.1: the endpoint "
                        "authenticates its callers)\n");
        return -1;
    }
    if (o->shadow_policy && !o->audit_log) {
        fprintf(stderr, "scopegate serve: --shadow-policy needs --audit-log (its disagreements "
                        "are written there)\n");
        return -1;
    }
    if (o->path && o->path[0] != '/') {
        fprintf(stderr, "scopegate serve: --path must start with '/'\n");
        return -1;
    }
    return 0;
}

/* "127.0.0.1:8080", "[::1]:8080" -> host, port. */
static int split_listen(const char *s, char *host, size_t hostlen, unsigned long *port)
{
    const char *colon;
    size_t hl;
    const char *h = s;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return -1;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return -1;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostlen) return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    if (strcmp(host, "localhost") == 0) snprintf(host, hostlen, "127.0.0.1");
    return sg_parse_ulong("serve", "--listen port", colon + 1, 0, 65535, port);
}

/* 1 when the two addresses could be the same socket: the same port (not
 * 0, which picks a free one) on the same host or with either a wildcard. */
static int same_address(const char *host_a, unsigned long port_a, const char *host_b,
                        unsigned long port_b)
{
    if (port_a == 0 || port_a != port_b) return 0;
    int wild_a = strcmp(host_a, "0.0.0.0") == 0 || strcmp(host_a, "::") == 0;
    int wild_b = strcmp(host_b, "0.0.0.0") == 0 || strcmp(host_b, "::") == 0;
    return wild_a || wild_b || strcmp(host_a, host_b) == 0;
}

/* host[:port] of a URL, for the default Host allow-list. */
static char *url_authority(const char *url)
{
    const char *p = url ? strstr(url, "://") : NULL;
    if (!p) return NULL;
    p += 3;
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n);
    if (at) n -= (size_t)(at + 1 - p), p = at + 1;
    return n ? strndup(p, n) : NULL;
}

static char *url_origin(const char *url)
{
    const char *p = url ? strstr(url, "://") : NULL;
    if (!p) return NULL;
    size_t n = (size_t)(p + 3 - url) + strcspn(p + 3, "/?#");
    return strndup(url, n);
}

static int set_log_level(const char *name)
{
    int level = sg_log_level_parse(name);
    if (level >= 0) {
        sg_log_set_level(level);
        return 0;
    }
    fprintf(stderr, "scopegate serve: --log-level must be debug, info, warn or error\n");
    return -1;
}

static int serve(serve_opts *opts);

/* --leeway, --token-algs, --require-claim and --max-token-bytes into the
 * verifier configuration. Returns 0, or -1 after printing why. */
static int verifier_options(const serve_opts *o, sg_verifier_config *vc)
{
    unsigned long leeway;
    if (o->leeway) {
        if (sg_parse_ulong("serve", "--leeway", o->leeway, 0, 3600, &leeway) != 0) return -1;
        vc->leeway_s = (int)leeway;
    }
    if (o->max_token_bytes) vc->max_token_bytes = o->max_token_bytes;
    if (o->token_algs) {
        vc->allowed_algs = 0;
        for (const char *p = o->token_algs; *p;) {
            size_t n = strcspn(p, ", ");
            int alg = n ? sg_jws_alg_from_name(p, n) : 0;
            if (n && alg <= SG_ALG_NONE) {
                fprintf(stderr,
                        "scopegate serve: --token-algs: '%.*s' is not a JWS signature algorithm "
                        "(RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, "
                        "HS256, HS384, HS512)\n",
                        (int)n, p);
                return -1;
            }
            if (n) vc->allowed_algs |= SG_ALG_BIT(alg);
            p += n;
            p += strspn(p, ", ");
        }
        if (!vc->allowed_algs) {
            fprintf(stderr, "scopegate serve: --token-algs names no algorithm\n");
            return -1;
        }
    }
    for (int i = 0; i < o->nrequired_claims; i++)
        vc->required_claims[vc->nrequired_claims++] = o->required_claims[i];
    return 0;
}

/* Each client connection is a descriptor, and so is each upstream one: the
 * soft RLIMIT_NOFILE (often 1024) is raised to the hard limit, with a
 * warning when even that cannot hold --max-connections. */
static void raise_fd_limit(unsigned long max_connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t need = (rlim_t)(2 * max_connections + 64);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        sg_log(SG_LOG_WARN,
               "open-file limit %llu is below %llu (two per connection): raise it (ulimit -n) or "
               "lower --max-connections",
               (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

/* What SIGHUP re-reads: the configured key files into a fresh key set whose
 * keys then replace the live ones (a file that no longer parses leaves the
 * old keys in force), and a JWKS URL fetched again now. */
typedef struct key_sources {
    sg_keys *keys;
    const char *jwks, *public_key, *key_alg;
    int jwks_is_url;
} key_sources;

static int reload_keys(void *ud, char *err, size_t errlen)
{
    key_sources *ks = ud;
    if (ks->public_key || (ks->jwks && !ks->jwks_is_url)) {
        sg_keys *fresh = sg_keys_new();
        if (!fresh) {
            sg_errf(err, errlen, "out of memory");
            return -1;
        }
        char why[512] = "";
        int rc = 0;
        if (ks->jwks && !ks->jwks_is_url &&
            sg_keys_add_jwks_file(fresh, ks->jwks, why, sizeof why) != 0) {
            sg_errf(err, errlen, "--jwks %s: %s", ks->jwks, why);
            rc = -1;
        }
        if (rc == 0 && ks->public_key &&
            sg_keys_add_pem_file(fresh, ks->public_key, ks->key_alg, NULL, why, sizeof why) != 0) {
            sg_errf(err, errlen, "--public-key %s: %s", ks->public_key, why);
            rc = -1;
        }
        if (rc == 0 && sg_keys_replace_static(ks->keys, fresh) != 0) {
            sg_errf(err, errlen, "out of memory");
            rc = -1;
        }
        sg_keys_free(fresh);
        if (rc != 0) return -1;
    }
    if (ks->jwks_is_url && sg_keys_refresh(ks->keys, err, errlen) != 0) return -1;
    return 0;
}

/* The introspection client: its secret read from its file (never from the
 * command line, where ps shows it), wiped from this stack once the
 * introspector has encoded its own copy. Returns NULL after printing why. */
static sg_introspector *start_introspection(const serve_opts *o, const sg_verifier *verifier)
{
    size_t len = 0;
    char *secret = sg_read_file(o->introspection_secret_file, 4096, &len);
    if (!secret) {
        fprintf(stderr, "scopegate serve: --introspection-secret-file %s: %s\n",
                o->introspection_secret_file, strerror(errno));
        return NULL;
    }
    while (len > 0 && (secret[len - 1] == '\n' || secret[len - 1] == '\r'))
        secret[--len] = 0;
    sg_introspector *in = NULL;
    if (len == 0 || memchr(secret, 0, len)) {
        fprintf(stderr, "scopegate serve: --introspection-secret-file %s: no secret in it\n",
                o->introspection_secret_file);
    } else {
        sg_introspect_config ic;
        sg_introspect_config_init(&ic);
        ic.url = o->introspection_url;
        ic.client_id = o->introspection_client_id;
        ic.client_secret = secret;
        ic.auth = o->introspection_auth && strcmp(o->introspection_auth, "post") == 0
                      ? SG_INTROSPECT_AUTH_POST
                      : SG_INTROSPECT_AUTH_BASIC;
        if (o->introspection_cache_ttl_s) ic.cache_ttl_s = (unsigned)o->introspection_cache_ttl_s;
        if (o->introspection_negative_ttl_s)
            ic.negative_ttl_s = (unsigned)o->introspection_negative_ttl_s;
        if (o->introspection_timeout_ms) ic.timeout_ms = (unsigned)o->introspection_timeout_ms;
        if (o->introspection_concurrency) ic.concurrency = (unsigned)o->introspection_concurrency;
        if (o->introspection_queue) ic.queue = (unsigned)o->introspection_queue;
        if (o->token_cache) ic.cache_entries = o->token_cache;
        char err[256];
        if (!(in = sg_introspector_new(&ic, verifier, err, sizeof err)))
            fprintf(stderr, "scopegate serve: --introspection-url %s: %s\n", o->introspection_url,
                    err);
        else
            sg_log(SG_LOG_INFO, "introspecting opaque tokens at %s as client %s (%s)",
                   o->introspection_url, o->introspection_client_id,
                   ic.auth == SG_INTROSPECT_AUTH_POST ? "post" : "basic");
    }
    OPENSSL_cleanse(secret, len);
    free(secret);
    return in;
}

int sg_cmd_serve(int argc, char **argv)
{
    serve_opts o;
    memset(&o, 0, sizeof o);
    int pr = parse_args(argc, argv, &o);
    int rc = pr > 0 ? 0 : pr < 0 ? 2 : serve(&o);
    sg_config_argv_free(o.config_argc, o.config_argv);
    return rc;
}

/* Runs the gateway until a signal. The options (and the config strings
 * they point into) are owned by the caller. */
static int serve(serve_opts *opts)
{
    serve_opts o = *opts;
    if (o.log_level && set_log_level(o.log_level) != 0) return 2;
    char host[64];
    unsigned long port;
    if (split_listen(o.listen, host, sizeof host, &port) != 0) {
        fprintf(stderr, "scopegate serve: --listen needs HOST:PORT (e.g. 127.0.0.1:8080)\n");
        return 2;
    }
    char admin_host[64];
    unsigned long admin_port = 0;
    if (o.admin_listen) {
        if (split_listen(o.admin_listen, admin_host, sizeof admin_host, &admin_port) != 0) {
            fprintf(stderr,
                    "scopegate serve: --admin-listen needs HOST:PORT (e.g. 127.0.0.1:9090)\n");
            return 2;
        }
        if (same_address(host, port, admin_host, admin_port)) {
            fprintf(stderr,
                    "scopegate serve: --admin-listen %s is the --listen address: metrics and "
                    "probes must not share the MCP port (use another port)\n",
                    o.admin_listen);
            return 2;
        }
    } else if (o.ready_window_s) {
        fprintf(stderr, "scopegate serve: --ready-upstream-window needs --admin-listen\n");
        return 2;
    }
    /* Counting starts before anything counts (the start-up JWKS fetch). */
    if (o.admin_listen) sg_metrics_enable();
    const char *mcp_path = o.path ? o.path : "/mcp";
    unsigned threads = o.threads ? (unsigned)o.threads : sg_cpus_usable();

    /* Block the signals before any thread starts, so every thread inherits
     * the mask and only sigwait below sees them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    char err[1024] = "";
    sg_keys *keys = NULL;
    sg_verifier *verifier = NULL;
    sg_gateway *gw = NULL;
    sg_proxy *proxy = NULL;
    sg_http *http = NULL;
    sg_reloader *reloader = NULL;
    sg_introspector *introspector = NULL;
    sg_as_metadata discovered;
    sg_audit *audit = NULL;
    sg_admin *admin = NULL;
    key_sources ks = {NULL, o.jwks, o.public_key, o.key_alg ? o.key_alg : "RS256", 0};
    char *audience_owned = NULL;
    char *default_hosts[4] = {NULL, NULL, NULL, NULL};
    char *public_origin = NULL;
    memset(&discovered, 0, sizeof discovered);

    /* --issuer alone: where the keys and the introspection endpoint are is
     * read from the issuer's metadata; explicit flags win over it. A
     * failed discovery stops the start (systemd restarts the unit): a
     * gateway that cannot verify anything is not ready. */
    if (o.issuer && !o.jwks && !o.public_key) {
        if (sg_as_discover(o.issuer, 5000, &discovered, err, sizeof err) != 0) {
            fprintf(stderr, "scopegate serve: --issuer %s: %s\n", o.issuer, err);
            goto out;
        }
        sg_log(SG_LOG_INFO, "discovered %s: jwks_uri %s, introspection_endpoint %s",
               discovered.from, discovered.jwks_uri ? discovered.jwks_uri : "(none)",
               discovered.introspection_endpoint ? discovered.introspection_endpoint : "(none)");
        o.jwks = ks.jwks = discovered.jwks_uri;
        if (!o.introspection_url && discovered.introspection_endpoint) {
            if (o.introspection_client_id)
                o.introspection_url = discovered.introspection_endpoint;
            else
                sg_log(SG_LOG_INFO, "the introspection endpoint is not used: no "
                                    "--introspection-client-id");
        }
        if (!o.jwks && !o.introspection_url) {
            fprintf(stderr,
                    "scopegate serve: --issuer %s: the metadata (%s) names no jwks_uri, and no "
                    "introspection endpoint is usable: nothing could verify a token\n",
                    o.issuer, discovered.from);
            goto out;
        }
    }
    if (o.introspection_client_id && !o.introspection_url) {
        fprintf(stderr, "scopegate serve: --introspection-client-id needs --introspection-url "
                        "(or an --issuer whose metadata names an introspection_endpoint)\n");
        goto out;
    }
    if (!(keys = sg_keys_new())) {
        fprintf(stderr, "scopegate serve: out of memory\n");
        goto out;
    }
    ks.keys = keys;
    if (o.jwks) {
        int is_url =
            strncasecmp(o.jwks, "http://", 7) == 0 || strncasecmp(o.jwks, "https://", 8) == 0;
        ks.jwks_is_url = is_url;
        int r = is_url ? sg_keys_set_jwks_url(keys, o.jwks, (uint64_t)o.jwks_ttl_s * 1000,
                                              (uint64_t)o.jwks_refetch_s * 1000, err, sizeof err)
                       : sg_keys_add_jwks_file(keys, o.jwks, err, sizeof err);
        if (r == 0 && is_url) r = sg_keys_start_refresher(keys, err, sizeof err);
        if (r != 0) {
            fprintf(stderr, "scopegate serve: --jwks %s: %s\n", o.jwks, err);
            goto out;
        }
    }
    if (o.public_key && sg_keys_add_pem_file(keys, o.public_key, o.key_alg ? o.key_alg : "RS256",
                                             NULL, err, sizeof err) != 0) {
        fprintf(stderr, "scopegate serve: --public-key %s: %s\n", o.public_key, err);
        goto out;
    }

    /* The audience defaults to the resource this gateway protects, the same
     * URI its RFC 9728 metadata names: the policy's `resource`, else the
     * public URL (never unchecked). */
    const char *audience = o.audience;
    if (!audience) {
        char *perr = NULL;
        sg_policy *p = sg_policy_load(o.policy, NULL, &perr);
        if (!p) {
            fprintf(stderr, "scopegate serve: policy failed to load:\n%s", perr ? perr : "");
            free(perr);
            goto out;
        }
        free(perr);
        const char *r = sg_policy_resource(p) ? sg_policy_resource(p) : o.public_url;
        if (r) audience_owned = strdup(r);
        sg_policy_free(p);
        audience = audience_owned;
        if (!audience) {
            fprintf(stderr, "scopegate serve: no --audience, no --public-url and no `resource` in "
                            "the policy: tokens could not be bound to this resource\n");
            goto out;
        }
    }
    sg_verifier_config vc;
    sg_verifier_config_init(&vc);
    vc.issuer = o.issuer;
    vc.audience = audience;
    if (verifier_options(&o, &vc) != 0) {
        rc = 2;
        goto out;
    }
    if (!(verifier = sg_verifier_new(&vc, keys, err, sizeof err))) {
        fprintf(stderr, "scopegate serve: %s\n", err);
        goto out;
    }
    if (o.introspection_url && !(introspector = start_introspection(&o, verifier))) goto out;
    if (introspector || discovered.from) /* the admin stops before the introspector */
        sg_metrics_add_collector(sg_authserver_metrics, introspector);

    if (o.audit_log) {
        sg_audit_config ac = {.path = o.audit_log, .queue_lines = o.audit_queue};
        if (!(audit = sg_audit_open(&ac, err, sizeof err))) {
            fprintf(stderr, "scopegate serve: --audit-log %s\n", err);
            goto out;
        }
        sg_metrics_add_collector(sg_audit_metrics, audit); /* the admin stops before the audit */
    }

    sg_gateway_config gc;
    memset(&gc, 0, sizeof gc);
    gc.audit = audit;
    gc.shadow_policy_path = o.shadow_policy;
    gc.policy_path = o.policy;
    gc.verifier = verifier;
    gc.token_cache_entries = o.token_cache;
    gc.workers = threads;
    gc.mcp_path = mcp_path;
    gc.public_url = o.public_url;
    sg_mcp_limits ml = SG_MCP_LIMITS_DEFAULT;
    if (o.max_body) ml.max_body = o.max_body;
    gc.mcp_limits = ml;
    gc.annotate = !o.annotate || strcmp(o.annotate, "oauthScope") == 0 ? SG_ANNOTATE_OAUTH_SCOPE
                  : strcmp(o.annotate, "securitySchemes") == 0 ? SG_ANNOTATE_SECURITY_SCHEMES
                                                               : SG_ANNOTATE_NONE;
    gc.upstream_url = o.upstream;
    gc.upstream_ca = o.upstream_ca;
    gc.identity = o.identity;
    gc.nidentity = (size_t)o.nidentity;
    gc.policy_limits.arguments_bytes = o.max_arguments;
    gc.policy_limits.arguments_depth = (uint32_t)o.max_arguments_depth;
    gc.introspector = introspector;
    gc.default_authorization_server = discovered.issuer;
    if (!(gw = sg_gateway_new(&gc, err, sizeof err))) {
        fprintf(stderr, "scopegate serve: policy failed to load:\n%s\n", err);
        goto out;
    }

    if (o.upstream_ca && access(o.upstream_ca, R_OK) != 0) {
        fprintf(stderr, "scopegate serve: --upstream-ca %s: %s\n", o.upstream_ca, strerror(errno));
        goto out;
    }
    sg_proxy_config pc = {.upstream_url = o.upstream,
                          .connect_timeout_ms = (uint32_t)o.connect_timeout_ms,
                          .response_timeout_ms = (uint32_t)o.upstream_timeout_ms,
                          .ca_file = o.upstream_ca};
    if (!(proxy = sg_proxy_new(&pc, threads, err, sizeof err))) {
        fprintf(stderr, "scopegate serve: --upstream: %s\n", err);
        goto out;
    }

    /* Host allow-list: explicit flags, else this listener's own names and
     * the host of an explicit --public-url (DNS-rebinding protection by
     * default). The policy's `resource` never widens either list: it names
     * the resource (the token audience), not where it is served, and the
     * policy author is not the operator who decides which names reach it. */
    const char *const *hosts = o.hosts;
    const char *own_hosts[3] = {NULL, NULL, NULL};
    if (o.nhosts == 0) {
        /* The listener's own names count with its bound port only (known
         * once bound); --public-url's authority as written, plus its
         * scheme's default port spelled out when it has none. */
        size_t l = strlen(host) + 3;
        if ((default_hosts[0] = malloc(l)) != NULL)
            snprintf(default_hosts[0], l, strchr(host, ':') ? "[%s]" : "%s", host);
        own_hosts[0] = default_hosts[0] ? default_hosts[0] : "";
        own_hosts[1] = "localhost";
        int n = 0;
        if (o.public_url && (default_hosts[1] = url_authority(o.public_url)) != NULL) {
            o.hosts[n++] = default_hosts[1];
            size_t nl;
            const char *pp;
            if (sg_http_split_authority(default_hosts[1], &nl, &pp) == 0 && !pp) {
                int https = strncasecmp(o.public_url, "https:", 6) == 0;
                size_t dl = nl + 5;
                if ((default_hosts[2] = malloc(dl)) != NULL) {
                    snprintf(default_hosts[2], dl, "%.*s:%s", (int)nl, default_hosts[1],
                             https ? "443" : "80");
                    o.hosts[n++] = default_hosts[2];
                }
            }
        }
        o.hosts[n] = NULL;
    }
    if (o.norigins == 0 && o.public_url && (public_origin = url_origin(o.public_url))) {
        o.origins[0] = public_origin;
        o.norigins = 1;
    }
    o.origins[o.norigins] = NULL;

    sg_http_config hc;
    memset(&hc, 0, sizeof hc);
    hc.host = host;
    hc.port = (uint16_t)port;
    hc.mcp_path = mcp_path;
    hc.allowed_hosts = hosts;
    hc.own_hosts = o.nhosts == 0 ? own_hosts : NULL;
    hc.allowed_origins = o.origins;
    hc.limits.max_body = o.max_body;
    hc.limits.max_header = o.max_header;
    hc.limits.max_connections = (unsigned)o.max_connections;
    hc.limits.timeout_s = (unsigned)o.timeout_s;
    hc.limits.header_timeout_s = (unsigned)o.header_timeout_s;
    hc.limits.body_grace_s = (unsigned)o.body_grace_s;
    hc.limits.min_body_rate = (unsigned)o.min_body_rate_bps;
    raise_fd_limit(o.max_connections ? o.max_connections : 1000);
    hc.limits.threads = threads;
    if (o.admin_listen) {
        /* Before the workers start, so that every count is kept. */
        sg_admin_config ac = {.host = admin_host,
                              .port = (uint16_t)admin_port,
                              .max_connections = (unsigned)o.max_connections,
                              .timeout_s = (unsigned)o.timeout_s,
                              .max_header = o.max_header,
                              .gateway = gw,
                              .keys = keys,
                              .ready_window_s = (unsigned)o.ready_window_s,
                              .upstream_url = o.upstream,
                              .upstream_ca = o.upstream_ca};
        if (!(admin = sg_admin_start(&ac, err, sizeof err))) {
            fprintf(stderr, "scopegate serve: %s\n", err);
            goto out;
        }
    }
    hc.gateway = gw;
    hc.proxy = proxy;
    if (!(http = sg_http_start(&hc, err, sizeof err))) {
        fprintf(stderr, "scopegate serve: %s\n", err);
        goto out;
    }
    sg_reloader_config rc_cfg = {
        .gateway = gw, .watch = !o.no_watch, .reload_keys = reload_keys, .keys_ud = &ks};
    if (!(reloader = sg_reloader_start(&rc_cfg, err, sizeof err))) {
        fprintf(stderr, "scopegate serve: %s\n", err);
        goto out;
    }
    char hash[SG_POLICY_HASH_LEN + 1];
    if (audit) sg_log(SG_LOG_INFO, "audit log: writing %s", o.audit_log);
    if (o.shadow_policy) {
        sg_gateway_shadow_hash(gw, hash);
        sg_log(SG_LOG_INFO, "shadow policy %s %s: evaluated beside the policy, not enforced",
               o.shadow_policy, hash);
    }
    sg_gateway_policy_hash(gw, hash);
    sg_log(SG_LOG_INFO,
           "listening on %s%s%s:%u (MCP endpoint %s, upstream %s, policy %s %s%s, %u worker "
           "thread%s%s)",
           strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
           (unsigned)sg_http_port(http), mcp_path, o.upstream, o.policy, hash,
           o.no_watch ? ", reload on SIGHUP" : ", reload on change or SIGHUP", threads,
           threads == 1 ? "" : "s", o.threads ? "" : " = usable CPUs");
    if (admin)
        sg_log(SG_LOG_INFO, "admin endpoints /metrics /healthz /readyz at %s%s%s:%u",
               strchr(admin_host, ':') ? "[" : "", admin_host, strchr(admin_host, ':') ? "]" : "",
               (unsigned)sg_admin_port(admin));

    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0) continue;
        if (sig == SIGHUP) {
            sg_reloader_sighup(reloader);
            continue;
        }
        if (sig == SIGUSR1) {
            if (audit)
                sg_audit_reopen(audit);
            else
                sg_log(SG_LOG_INFO, "SIGUSR1: no --audit-log to reopen");
            continue;
        }
        sg_log(SG_LOG_INFO, "signal %d: shutting down", sig);
        break;
    }
    rc = 0;
out:
    sg_admin_draining(admin);
    sg_reloader_stop(reloader);
    sg_http_stop(http);
    sg_admin_stop(admin);
    sg_proxy_free(proxy);
    sg_gateway_free(gw);
    sg_introspector_free(introspector);
    sg_as_metadata_free(&discovered);
    sg_audit_close(audit); /* after every worker: nothing submits any more */
    sg_verifier_free(verifier);
    sg_keys_free(keys);
    free(audience_owned);
    free(public_origin);
    for (int i = 0; i < 4; i++)
        free(default_hosts[i]);
    sg_metrics_free();
    return rc;
}
