/* serve.c -- `scopegate serve`: its options to a running gateway.
 *
 * Why a file of its own: the serve subcommand is where configuration errors
 * must surface, before any traffic, with one clear line each (bad flag,
 * unreadable key, unreachable JWKS, policy that does not load). It builds
 * the pieces in dependency order (keys, verifier, gateway workers, proxy,
 * HTTP front), logs "listening on HOST:PORT" when ready, and tears them
 * down in reverse order on SIGINT/SIGTERM. SIGHUP reloads (reload.h) and
 * SIGUSR1 reopens the audit log (audit.h). The options themselves (flags,
 * config file, usage, defaults) are serveopts.c's; serve() here is a
 * sequence of named steps over one struct holding what they build. */
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
#include "cli/defaults.h"
#include "cli/serveopts.h"
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

/* --leeway, --token-algs, --require-claim and --max-token-bytes into the
 * verifier configuration. Returns 0, or -1 after printing why. */
static int verifier_options(const serve_opts *o, sg_verifier_config *vc)
{
    unsigned long leeway = SG_DEFAULT_LEEWAY_S;
    if (o->leeway && sg_parse_ulong("serve", "--leeway", o->leeway, 0, 3600, &leeway) != 0)
        return -1;
    vc->leeway_s = (int)leeway;
    vc->max_token_bytes = o->max_token_bytes;
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
        ic.auth = strcmp(o->introspection_auth, "post") == 0 ? SG_INTROSPECT_AUTH_POST
                                                             : SG_INTROSPECT_AUTH_BASIC;
        ic.cache_ttl_s = (unsigned)o->introspection_cache_ttl_s;
        ic.negative_ttl_s = (unsigned)o->introspection_negative_ttl_s;
        ic.timeout_ms = (unsigned)o->introspection_timeout_ms;
        ic.concurrency = (unsigned)o->introspection_concurrency;
        ic.queue = (unsigned)o->introspection_queue;
        ic.cache_entries = o->token_cache;
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

/* ---- serve(): the steps ------------------------------------------------------ */

/* What serve builds, in the order it builds it; torn down in reverse by
 * serve_teardown (every field may be unset). */
typedef struct serve_run {
    serve_opts o;
    char host[64], admin_host[64];
    unsigned long port, admin_port;
    char err[1024];
    sigset_t sigs;
    sg_as_metadata discovered;
    sg_keys *keys;
    key_sources ks;
    char *audience_owned;
    sg_policy *preloaded; /* loaded for its resource; the gateway takes it over */
    sg_verifier *verifier;
    sg_introspector *introspector;
    sg_audit *audit;
    sg_gateway *gw;
    sg_proxy *proxy;
    const char *own_hosts[3];
    char *default_hosts[3];
    char *public_origin;
    sg_admin *admin;
    sg_http *http;
    sg_reloader *reloader;
} serve_run;

/* The log level and the listen addresses. Returns 0, or -1 after printing
 * why (a usage error: exit status 2). */
static int check_addresses(serve_run *s)
{
    serve_opts *o = &s->o;
    if (set_log_level(o->log_level) != 0) return -1;
    if (split_listen(o->listen, s->host, sizeof s->host, &s->port) != 0) {
        fprintf(stderr, "scopegate serve: --listen needs HOST:PORT (e.g. 127.0.0.1:8080)\n");
        return -1;
    }
    if (!o->admin_listen) return 0;
    if (split_listen(o->admin_listen, s->admin_host, sizeof s->admin_host, &s->admin_port) != 0) {
        fprintf(stderr, "scopegate serve: --admin-listen needs HOST:PORT (e.g. 127.0.0.1:9090)\n");
        return -1;
    }
    if (same_address(s->host, s->port, s->admin_host, s->admin_port)) {
        fprintf(stderr,
                "scopegate serve: --admin-listen %s is the --listen address: metrics and "
                "probes must not share the MCP port (use another port)\n",
                o->admin_listen);
        return -1;
    }
    return 0;
}

/* Blocks the signals before any thread starts, so every thread inherits
 * the mask and only sigwait (wait_for_signals) sees them. */
static void block_signals(serve_run *s)
{
    sigemptyset(&s->sigs);
    sigaddset(&s->sigs, SIGINT);
    sigaddset(&s->sigs, SIGTERM);
    sigaddset(&s->sigs, SIGHUP);
    sigaddset(&s->sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &s->sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* --issuer alone: where the keys and the introspection endpoint are is
 * read from the issuer's metadata; explicit flags win over it. A failed
 * discovery stops the start (systemd restarts the unit): a gateway that
 * cannot verify anything is not ready. Returns 0, or -1 after printing why. */
static int discover_issuer(serve_run *s)
{
    serve_opts *o = &s->o;
    if (o->issuer && !o->jwks && !o->public_key) {
        if (sg_as_discover(o->issuer, SG_DEFAULT_DISCOVERY_MS, &s->discovered, s->err,
                           sizeof s->err) != 0) {
            fprintf(stderr, "scopegate serve: --issuer %s: %s\n", o->issuer, s->err);
            return -1;
        }
        const sg_as_metadata *d = &s->discovered;
        sg_log(SG_LOG_INFO, "discovered %s: jwks_uri %s, introspection_endpoint %s", d->from,
               d->jwks_uri ? d->jwks_uri : "(none)",
               d->introspection_endpoint ? d->introspection_endpoint : "(none)");
        o->jwks = d->jwks_uri;
        if (!o->introspection_url && d->introspection_endpoint) {
            if (o->introspection_client_id)
                o->introspection_url = d->introspection_endpoint;
            else
                sg_log(SG_LOG_INFO, "the introspection endpoint is not used: no "
                                    "--introspection-client-id");
        }
        if (!o->jwks && !o->introspection_url) {
            fprintf(stderr,
                    "scopegate serve: --issuer %s: the metadata (%s) names no jwks_uri, and no "
                    "introspection endpoint is usable: nothing could verify a token\n",
                    o->issuer, d->from);
            return -1;
        }
    }
    if (o->introspection_client_id && !o->introspection_url) {
        fprintf(stderr, "scopegate serve: --introspection-client-id needs --introspection-url "
                        "(or an --issuer whose metadata names an introspection_endpoint)\n");
        return -1;
    }
    return 0;
}

/* The key set: a JWKS file, or a JWKS URL and its refresher thread, and a
 * PEM key. Returns 0, or -1 after printing why. */
static int load_keys(serve_run *s)
{
    serve_opts *o = &s->o;
    char *err = s->err;
    if (!(s->keys = sg_keys_new())) {
        fprintf(stderr, "scopegate serve: out of memory\n");
        return -1;
    }
    s->ks = (key_sources){
        .keys = s->keys, .jwks = o->jwks, .public_key = o->public_key, .key_alg = o->key_alg};
    if (o->jwks) {
        int is_url =
            strncasecmp(o->jwks, "http://", 7) == 0 || strncasecmp(o->jwks, "https://", 8) == 0;
        s->ks.jwks_is_url = is_url;
        int r = is_url
                    ? sg_keys_set_jwks_url(s->keys, o->jwks, (uint64_t)o->jwks_ttl_s * 1000,
                                           (uint64_t)o->jwks_refetch_s * 1000, err, sizeof s->err)
                    : sg_keys_add_jwks_file(s->keys, o->jwks, err, sizeof s->err);
        if (r == 0 && is_url) r = sg_keys_start_refresher(s->keys, err, sizeof s->err);
        if (r != 0) {
            fprintf(stderr, "scopegate serve: --jwks %s: %s\n", o->jwks, err);
            return -1;
        }
    }
    if (o->public_key &&
        sg_keys_add_pem_file(s->keys, o->public_key, o->key_alg, NULL, err, sizeof s->err) != 0) {
        fprintf(stderr, "scopegate serve: --public-key %s: %s\n", o->public_key, err);
        return -1;
    }
    return 0;
}

/* The sandbox limits every copy of the policy is loaded with. */
static sg_policy_limits serve_policy_limits(const serve_opts *o)
{
    return (sg_policy_limits){.arguments_bytes = o->max_arguments,
                              .arguments_depth = (uint32_t)o->max_arguments_depth};
}

/* The audience defaults to the resource this gateway protects, the same URI
 * its RFC 9728 metadata names: the policy's `resource`, else the public URL
 * (never unchecked). The verifier has to exist before the gateway, so
 * without --audience the policy is loaded here, with the gateway's limits,
 * and handed to the gateway as one worker's copy (s->preloaded): it is not
 * loaded twice. Returns the audience, or NULL after printing why. */
static const char *pick_audience(serve_run *s)
{
    serve_opts *o = &s->o;
    if (o->audience) return o->audience;
    sg_buf report = SG_BUF_INIT;
    sg_policy_limits limits = serve_policy_limits(o);
    sg_policy *p = sg_policy_new(o->policy, &limits, &report);
    if (!p) {
        fprintf(stderr, "scopegate serve: policy failed to load:\n%s",
                sg_buf_ok(&report) && report.data ? report.data : "out of memory\n");
        sg_buf_free(&report);
        return NULL;
    }
    sg_buf_free(&report);
    const char *r = sg_policy_resource(p) ? sg_policy_resource(p) : o->public_url;
    if (r) s->audience_owned = strdup(r);
    s->preloaded = p;
    if (!s->audience_owned)
        fprintf(stderr, "scopegate serve: no --audience, no --public-url and no `resource` in "
                        "the policy: tokens could not be bound to this resource\n");
    return s->audience_owned;
}

/* The verifier, the introspector and the audit log, with their metric
 * collectors. Returns 0, -1 after printing why, or 2 for a bad token
 * flag (a usage error). */
static int start_verification(serve_run *s)
{
    serve_opts *o = &s->o;
    const char *audience = pick_audience(s);
    if (!audience) return -1;
    sg_verifier_config vc;
    sg_verifier_config_init(&vc);
    vc.issuer = o->issuer;
    vc.audience = audience;
    if (verifier_options(o, &vc) != 0) return 2;
    if (!(s->verifier = sg_verifier_new(&vc, s->keys, s->err, sizeof s->err))) {
        fprintf(stderr, "scopegate serve: %s\n", s->err);
        return -1;
    }
    if (o->introspection_url && !(s->introspector = start_introspection(o, s->verifier))) return -1;
    if (s->introspector || s->discovered.from) /* the admin stops before the introspector */
        sg_metrics_add_collector(sg_authserver_metrics, s->introspector);
    if (o->audit_log) {
        sg_audit_config ac = {.path = o->audit_log, .queue_lines = o->audit_queue};
        if (!(s->audit = sg_audit_open(&ac, s->err, sizeof s->err))) {
            fprintf(stderr, "scopegate serve: --audit-log %s\n", s->err);
            return -1;
        }
        sg_metrics_add_collector(sg_audit_metrics, s->audit); /* the admin stops before it */
    }
    return 0;
}

/* The gateway (the policy loaded once per worker) and the proxy (one lane
 * per worker). Returns 0, or -1 after printing why. */
static int start_gateway(serve_run *s)
{
    serve_opts *o = &s->o;
    sg_mcp_limits ml = SG_MCP_LIMITS_DEFAULT;
    ml.max_body = o->max_body;
    sg_annotate annotate = strcmp(o->annotate, "oauthScope") == 0 ? SG_ANNOTATE_OAUTH_SCOPE
                           : strcmp(o->annotate, "securitySchemes") == 0
                               ? SG_ANNOTATE_SECURITY_SCHEMES
                               : SG_ANNOTATE_NONE;
    sg_gateway_config gc = {
        .policy_path = o->policy,
        .verifier = s->verifier,
        .token_cache_entries = o->token_cache,
        .workers = (unsigned)o->threads,
        .mcp_path = o->path,
        .public_url = o->public_url,
        .mcp_limits = ml,
        .annotate = annotate,
        .identity = o->identity,
        .nidentity = (size_t)o->nidentity,
        .upstream_url = o->upstream,
        .upstream_ca = o->upstream_ca,
        .policy_limits = serve_policy_limits(o),
        .preloaded_policy = s->preloaded,
        .introspector = s->introspector,
        .default_authorization_server = s->discovered.issuer,
        .audit = s->audit,
        .shadow_policy_path = o->shadow_policy,
    };
    s->preloaded = NULL; /* the gateway's now, whatever happens */
    if (!(s->gw = sg_gateway_new(&gc, s->err, sizeof s->err))) {
        fprintf(stderr, "scopegate serve: policy failed to load:\n%s\n", s->err);
        return -1;
    }
    if (o->upstream_ca && access(o->upstream_ca, R_OK) != 0) {
        fprintf(stderr, "scopegate serve: --upstream-ca %s: %s\n", o->upstream_ca, strerror(errno));
        return -1;
    }
    sg_proxy_config pc = {.upstream_url = o->upstream,
                          .connect_timeout_ms = (uint32_t)o->connect_timeout_ms,
                          .response_timeout_ms = (uint32_t)o->upstream_timeout_ms,
                          .ca_file = o->upstream_ca};
    if (!(s->proxy = sg_proxy_new(&pc, (unsigned)o->threads, s->err, sizeof s->err))) {
        fprintf(stderr, "scopegate serve: --upstream: %s\n", s->err);
        return -1;
    }
    return 0;
}

/* Host allow-list: explicit flags, else this listener's own names and the
 * host of an explicit --public-url (DNS-rebinding protection by default).
 * The policy's `resource` never widens either list: it names the resource
 * (the token audience), not where it is served, and the policy author is
 * not the operator who decides which names reach it. The Origin list:
 * explicit flags, else --public-url's origin. Can't fail (out of memory
 * leaves a name out, which only narrows the lists). */
static void default_allow_lists(serve_run *s)
{
    serve_opts *o = &s->o;
    if (o->nhosts == 0) {
        /* The listener's own names count with its bound port only (known
         * once bound); --public-url's authority as written, plus its
         * scheme's default port spelled out when it has none. */
        size_t l = strlen(s->host) + 3;
        if ((s->default_hosts[0] = malloc(l)) != NULL)
            snprintf(s->default_hosts[0], l, strchr(s->host, ':') ? "[%s]" : "%s", s->host);
        s->own_hosts[0] = s->default_hosts[0] ? s->default_hosts[0] : "";
        s->own_hosts[1] = "localhost";
        int n = 0;
        if (o->public_url && (s->default_hosts[1] = url_authority(o->public_url)) != NULL) {
            o->hosts[n++] = s->default_hosts[1];
            size_t nl;
            const char *pp;
            if (sg_http_split_authority(s->default_hosts[1], &nl, &pp) == 0 && !pp) {
                int https = strncasecmp(o->public_url, "https:", 6) == 0;
                size_t dl = nl + 5;
                if ((s->default_hosts[2] = malloc(dl)) != NULL) {
                    snprintf(s->default_hosts[2], dl, "%.*s:%s", (int)nl, s->default_hosts[1],
                             https ? "443" : "80");
                    o->hosts[n++] = s->default_hosts[2];
                }
            }
        }
        o->hosts[n] = NULL;
    }
    if (o->norigins == 0 && o->public_url && (s->public_origin = url_origin(o->public_url))) {
        o->origins[0] = s->public_origin;
        o->norigins = 1;
    }
    o->origins[o->norigins] = NULL;
}

/* The admin listener (before the workers start, so that every count is
 * kept), the MCP listener and its workers, the reloader. Returns 0, or -1
 * after printing why. */
static int start_listeners(serve_run *s)
{
    serve_opts *o = &s->o;
    raise_fd_limit(o->max_connections);
    if (o->admin_listen) {
        sg_admin_config ac = {.host = s->admin_host,
                              .port = (uint16_t)s->admin_port,
                              .max_connections = (unsigned)o->max_connections,
                              .timeout_s = (unsigned)o->timeout_s,
                              .max_header = o->max_header,
                              .gateway = s->gw,
                              .keys = s->keys,
                              .ready_window_s = (unsigned)o->ready_window_s,
                              .upstream_url = o->upstream,
                              .upstream_ca = o->upstream_ca};
        if (!(s->admin = sg_admin_start(&ac, s->err, sizeof s->err))) {
            fprintf(stderr, "scopegate serve: %s\n", s->err);
            return -1;
        }
    }
    sg_http_config hc = {
        .host = s->host,
        .port = (uint16_t)s->port,
        .mcp_path = o->path,
        .allowed_hosts = o->hosts,
        .own_hosts = o->nhosts == 0 ? s->own_hosts : NULL,
        .allowed_origins = o->origins,
        .limits = {.max_body = o->max_body,
                   .max_header = o->max_header,
                   .max_connections = (unsigned)o->max_connections,
                   .timeout_s = (unsigned)o->timeout_s,
                   .header_timeout_s = (unsigned)o->header_timeout_s,
                   .min_body_rate = (unsigned)o->min_body_rate_bps,
                   .body_grace_s = (unsigned)o->body_grace_s,
                   .threads = (unsigned)o->threads},
        .gateway = s->gw,
        .proxy = s->proxy,
    };
    if (!(s->http = sg_http_start(&hc, s->err, sizeof s->err))) {
        fprintf(stderr, "scopegate serve: %s\n", s->err);
        return -1;
    }
    sg_reloader_config rc_cfg = {
        .gateway = s->gw, .watch = !o->no_watch, .reload_keys = reload_keys, .keys_ud = &s->ks};
    if (!(s->reloader = sg_reloader_start(&rc_cfg, s->err, sizeof s->err))) {
        fprintf(stderr, "scopegate serve: %s\n", s->err);
        return -1;
    }
    return 0;
}

/* "listening on ...": the line start-up scripts and specs wait for. */
static void log_listening(serve_run *s)
{
    serve_opts *o = &s->o;
    char hash[SG_POLICY_HASH_LEN + 1];
    if (s->audit) sg_log(SG_LOG_INFO, "audit log: writing %s", o->audit_log);
    if (o->shadow_policy) {
        sg_gateway_shadow_hash(s->gw, hash);
        sg_log(SG_LOG_INFO, "shadow policy %s %s: evaluated beside the policy, not enforced",
               o->shadow_policy, hash);
    }
    sg_gateway_policy_hash(s->gw, hash);
    unsigned threads = (unsigned)o->threads;
    int v6 = strchr(s->host, ':') != NULL;
    sg_log(SG_LOG_INFO,
           "listening on %s%s%s:%u (MCP endpoint %s, upstream %s, policy %s %s%s, %u worker "
           "thread%s%s)",
           v6 ? "[" : "", s->host, v6 ? "]" : "", (unsigned)sg_http_port(s->http), o->path,
           o->upstream, o->policy, hash,
           o->no_watch ? ", reload on SIGHUP" : ", reload on change or SIGHUP", threads,
           threads == 1 ? "" : "s", o->threads_from_cpus ? " = usable CPUs" : "");
    if (s->admin) {
        int av6 = strchr(s->admin_host, ':') != NULL;
        sg_log(SG_LOG_INFO, "admin endpoints /metrics /healthz /readyz at %s%s%s:%u",
               av6 ? "[" : "", s->admin_host, av6 ? "]" : "", (unsigned)sg_admin_port(s->admin));
    }
}

/* SIGHUP reloads, SIGUSR1 reopens the audit log; SIGINT or SIGTERM
 * returns. */
static void wait_for_signals(serve_run *s)
{
    for (;;) {
        int sig = 0;
        if (sigwait(&s->sigs, &sig) != 0) continue;
        if (sig == SIGHUP) {
            sg_reloader_sighup(s->reloader);
            continue;
        }
        if (sig == SIGUSR1) {
            if (s->audit)
                sg_audit_reopen(s->audit);
            else
                sg_log(SG_LOG_INFO, "SIGUSR1: no --audit-log to reopen");
            continue;
        }
        sg_log(SG_LOG_INFO, "signal %d: shutting down", sig);
        return;
    }
}

/* Everything serve built, in reverse order; unset pieces are skipped. */
static void serve_teardown(serve_run *s)
{
    sg_admin_draining(s->admin);
    sg_reloader_stop(s->reloader);
    sg_http_stop(s->http);
    sg_admin_stop(s->admin);
    sg_proxy_free(s->proxy);
    sg_gateway_free(s->gw);
    sg_introspector_free(s->introspector);
    sg_as_metadata_free(&s->discovered);
    sg_audit_close(s->audit); /* after every worker: nothing submits any more */
    sg_verifier_free(s->verifier);
    sg_keys_free(s->keys);
    free(s->audience_owned);
    sg_policy_free(s->preloaded);
    free(s->public_origin);
    for (size_t i = 0; i < SG_ARRAY_LEN(s->default_hosts); i++)
        free(s->default_hosts[i]);
    sg_metrics_free();
}

/* Runs the gateway until a signal: the steps above in order. The options
 * (and the config strings they point into) are owned by the caller.
 * Returns the exit status. */
static int serve(const serve_opts *opts)
{
    serve_run *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "scopegate serve: out of memory\n");
        return 1;
    }
    s->o = *opts;
    serve_apply_defaults(&s->o);
    int rc = 2;
    if (check_addresses(s) != 0) goto out;
    /* Counting starts before anything counts (the start-up JWKS fetch). */
    if (s->o.admin_listen) sg_metrics_enable();
    block_signals(s);
    rc = 1;
    if (discover_issuer(s) != 0 || load_keys(s) != 0) goto out;
    int vr = start_verification(s);
    if (vr != 0) {
        rc = vr == 2 ? 2 : 1;
        goto out;
    }
    if (start_gateway(s) != 0) goto out;
    default_allow_lists(s);
    if (start_listeners(s) != 0) goto out;
    log_listening(s);
    wait_for_signals(s);
    rc = 0;
out:
    serve_teardown(s);
    free(s);
    return rc;
}

int sg_cmd_serve(int argc, char **argv)
{
    serve_opts o;
    memset(&o, 0, sizeof o);
    int pr = serve_parse(argc, argv, &o);
    int rc = pr > 0 ? 0 : pr < 0 ? 2 : serve(&o);
    sg_config_argv_free(o.config_argc, o.config_argv);
    return rc;
}
