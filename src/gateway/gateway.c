/* gateway.c -- the decision path of one MCP request (see gateway.h).
 *
 * Why this file exists: http.c knows sockets and limits, mcp.c messages,
 * token.c tokens, policy.c requirements and challenge.c answers; this is the
 * one place that strings them together in the order the specs demand
 * (transport checks, then authentication and authorization of every message,
 * then forwarding), so the order cannot drift between code paths. Each
 * worker context is touched by one thread only, so nothing here locks. */
#include "gateway/gateway.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/rand.h>

#include "base/metrics.h"
#include "mcp/bridge.h"
#include "gateway/catalog.h"
#include "auth/challenge.h"
#include "base/json.h"
#include "mcp/metadata.h"
#include "policy/policy.h"
#include "mcp/sse.h"

/* JSON-RPC error codes in 401/403 bodies (implementation-defined range). */
#define GW_ERR_UNAUTHORIZED (-32001)
#define GW_ERR_FORBIDDEN    (-32003)

/* The 503 answer's message when an opaque token could not be introspected. */
#define AS_UNAVAILABLE_MESSAGE                                                                     \
    "The authorization server could not be reached to check the token; try again later"

#define ARENA_BLOCK (16 * 1024)

/* One loaded policy: a compiled copy per worker (each owns a Lua state,
 * which only that worker's thread touches) and what is derived from it.
 * Reference-counted, because three kinds of holder outlive a reload: the
 * gateway's `current` pointer, each worker until it switches, and each
 * forwarded list request until its answer is filtered (a request finishes
 * on the policy it started with). The last release frees it, on whatever
 * thread that is: by then no thread uses any of its Lua states. */
struct sg_policy_gen {
    atomic_int refs;
    unsigned nworkers;
    sg_policy **policies; /* [nworkers] */
    char *metadata_json;
    char *resource_metadata_url;
};
typedef struct sg_policy_gen policy_gen;
static void gen_release(policy_gen *g);

typedef struct worker {
    struct sg_gateway *gw;
    unsigned index;
    policy_gen *gen;    /* the policy this worker decides with; a reference */
    sg_policy *policy;  /* gen->policies[index] */
    unsigned long seen; /* gw->generation when it last looked */
    sg_tcache *tcache;
    sg_introspect_hold introspected; /* the opaque token last handed out */
    sg_arena arena;
    sg_decision decision;
    sg_site site;
    const sg_catalog_snap *tools; /* the tool catalogue as last seen, or NULL */
    unsigned long tools_version;
    policy_gen *shadow_gen;      /* the shadow policy (a reference), or NULL */
    sg_policy *shadow_policy;    /* shadow_gen->policies[index] */
    unsigned long audit_seq;     /* generated request ids: this worker's counter */
    const sg_token *audit_token; /* GET/DELETE: the caller, for the record */
    sg_buf audit_scratch;        /* shadow records are formatted here */
} worker;

struct sg_gateway {
    unsigned nworkers;
    worker *workers;
    sg_mcp_limits mcp_limits;
    sg_annotate annotate;
    sg_identity_header identity[SG_GATEWAY_MAX_IDENTITY];
    size_t nidentity;
    char *policy_path;
    char *public_url;
    /* The policy in force: replaced under gen_mu by sg_gateway_reload;
     * `generation` lets each worker notice with one atomic load per request. */
    pthread_mutex_t gen_mu;
    policy_gen *current;
    atomic_ulong generation;
    /* The upstream's tools (catalog.h), started by the first policy that
     * asks for it and kept until the gateway is freed. */
    _Atomic(sg_catalog *) catalog;
    char *upstream_url, *upstream_ca;
    sg_keys *keys;                      /* the verifier's, for unknown-kid waits */
    const sg_verifier *verifier;        /* borrowed */
    sg_introspector *introspector;      /* borrowed; NULL: opaque tokens refused */
    char *default_authorization_server; /* metadata, when the policy names none */
    sg_policy_limits limits;
    /* The audit log (borrowed) and the shadow policy: a second generation
     * pointer beside `current`, replaced the same way under gen_mu. */
    sg_audit *audit;
    char *shadow_path;
    policy_gen *shadow;
    char boot_id[17]; /* random per process: generated request ids are unique */
};

static const char *header_get(const sg_gateway_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0) return req->headers[i].value;
    return NULL;
}

void sg_gateway_reply_init(sg_gateway_reply *r)
{
    memset(r, 0, sizeof *r);
}

/* One request of a forwarded body whose answer is filtered: its raw id and
 * what it lists (SG_FILTER_NONE for a request that lists nothing). */
struct sg_gateway_list {
    char *id_raw;
    int kind;
};

void sg_gateway_reply_free(sg_gateway_reply *r)
{
    free(r->authorization);
    free(r->protocol_version);
    for (size_t i = 0; i < r->nlists; i++)
        free(r->lists[i].id_raw);
    free(r->lists);
    for (size_t i = 0; i < r->nidentity; i++)
        free((char *)r->identity[i].value);
    gen_release(r->policy_gen);
    for (size_t i = 0; r->audit_ids && i < r->naudit; i++)
        free(r->audit_ids[i]);
    free(r->audit_ids);
    sg_buf_free(&r->audit);
    sg_buf_free(&r->body);
    sg_buf_free(&r->www_authenticate);
    sg_gateway_reply_init(r);
}

void sg_gateway_error_body(sg_buf *body, int code, const char *message)
{
    sg_mcp_error_render(body, NULL, 0, code, message, NULL);
}

/* A JSON-RPC error answer. id may be NULL (null id). */
static int answer(sg_gateway_reply *out, int status, const char *id, size_t id_len, int code,
                  const char *message)
{
    out->status = status;
    out->content_type = "application/json";
    sg_buf_reset(&out->body);
    sg_mcp_error_render(&out->body, id, id_len, code, message, NULL);
    if (!sg_buf_ok(&out->body)) out->status = 500;
    return 1;
}

/* ---- policy generations ------------------------------------------------------ */

static void gen_release(policy_gen *g)
{
    if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1) return;
    for (unsigned i = 0; i < g->nworkers; i++)
        sg_policy_free(g->policies[i]);
    free(g->policies);
    free(g->metadata_json);
    free(g->resource_metadata_url);
    free(g);
}

static policy_gen *gen_retain(policy_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

/* Trims the trailing newlines of a loader report copied into err. */
static void copy_report(char *err, size_t errlen, const char *report)
{
    sg_errf(err, errlen, "%s", report ? report : "policy failed to load");
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == '\n')
        err[--n] = 0;
}

/* Loads one copy of the policy per worker and derives the metadata. When
 * want_hash is not NULL every copy must be that text (it was checked).
 * Returns the generation with one reference, or NULL with a message in err
 * (naming file and line for a policy error). */
static policy_gen *gen_load(const sg_gateway *gw, const char *path, const char *want_hash,
                            char *err, size_t errlen)
{
    policy_gen *g = calloc(1, sizeof *g);
    if (!g || !(g->policies = calloc(gw->nworkers, sizeof *g->policies))) {
        free(g);
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    g->nworkers = gw->nworkers;
    for (unsigned i = 0; i < gw->nworkers; i++) {
        char *perr = NULL;
        g->policies[i] = sg_policy_load(path, &gw->limits, &perr);
        if (!g->policies[i]) {
            copy_report(err, errlen, perr);
            free(perr);
            goto fail;
        }
        free(perr);
        const char *have = sg_policy_hash(g->policies[i]);
        const char *want = want_hash ? want_hash : sg_policy_hash(g->policies[0]);
        if (strcmp(have, want) != 0) {
            sg_errf(err, errlen, "%s: the policy changed while it was being loaded", path);
            goto fail;
        }
    }
    const sg_policy *p0 = g->policies[0];
    const char *resource = sg_policy_resource(p0);
    if (!resource) resource = gw->public_url;
    if (!resource) {
        sg_errf(err, errlen,
                "%s: the policy has no `resource` and no --public-url was given: the protected "
                "resource metadata needs one",
                path);
        goto fail;
    }
    /* Challenges point at the metadata of the endpoint clients use. */
    const char *endpoint = gw->public_url ? gw->public_url : resource;
    sg_buf u = SG_BUF_INIT;
    if (sg_metadata_url(endpoint, &u) != 0) {
        sg_buf_free(&u);
        sg_errf(err, errlen, "'%s' is not an absolute http(s) URL", endpoint);
        goto fail;
    }
    g->resource_metadata_url = sg_buf_steal(&u);
    sg_buf_free(&u);
    sg_buf m = SG_BUF_INIT;
    sg_metadata_document(p0, resource, gw->default_authorization_server, &m);
    g->metadata_json = sg_buf_steal(&m);
    sg_buf_free(&m);
    if (!g->resource_metadata_url || !g->metadata_json) {
        sg_errf(err, errlen, "out of memory");
        goto fail;
    }
    return g;
fail:
    gen_release(g);
    return NULL;
}

/* Makes the worker decide with the current policy, if a reload replaced
 * the one it has. Called at request boundaries only, so a request never
 * sees two policies. The hot path is one atomic load. */
static void worker_refresh(sg_gateway *gw, worker *w)
{
    if (atomic_load_explicit(&gw->generation, memory_order_acquire) == w->seen) return;
    pthread_mutex_lock(&gw->gen_mu);
    policy_gen *g = gen_retain(gw->current);
    policy_gen *shadow = gw->shadow ? gen_retain(gw->shadow) : NULL;
    unsigned long seen = atomic_load(&gw->generation);
    pthread_mutex_unlock(&gw->gen_mu);
    int first = w->gen == NULL;
    gen_release(w->gen);
    gen_release(w->shadow_gen);
    w->shadow_gen = shadow;
    w->shadow_policy = shadow ? shadow->policies[w->index] : NULL;
    w->gen = g;
    w->seen = seen;
    w->policy = g->policies[w->index];
    w->site.universe = sg_policy_universe(w->policy);
    w->site.realm = sg_policy_realm(w->policy);
    w->site.resource_metadata = g->resource_metadata_url;
    /* A new policy may bind tokens differently, and keys may have been
     * re-read (sg_gateway_forget_tokens): tokens are verified again. */
    if (!first) sg_tcache_clear(w->tcache);
}

/* ---- the tool catalogue ---------------------------------------------------------- */

/* Starts the catalogue when the policy asks for one, or asks the running
 * one to fetch again (a reload may come with a new upstream tool list).
 * Called from construction and from the reload thread only. Returns 0, or
 * -1 with a message in err. */
static int catalog_follow(sg_gateway *gw, const sg_policy *p, char *err, size_t errlen)
{
    sg_catalog *c = atomic_load(&gw->catalog);
    if (c) {
        sg_catalog_refresh(c);
        return 0;
    }
    if (!sg_policy_annotations_from_upstream(p)) return 0;
    if (!gw->upstream_url) {
        sg_errf(err, errlen, "%s: tool_annotations = \"upstream\" needs the upstream URL",
                gw->policy_path);
        return -1;
    }
    sg_catalog_config cc = {.upstream_url = gw->upstream_url, .ca_file = gw->upstream_ca};
    if (!(c = sg_catalog_start(&cc, err, errlen))) return -1;
    atomic_store(&gw->catalog, c);
    return 0;
}

/* The bridge's annotations lookup for a worker: the tool's annotations in
 * the catalogue, taking a newer snapshot when there is one. */
static const cJSON *worker_tool_annotations(void *ud, const char *tool)
{
    worker *w = ud;
    sg_catalog *c = atomic_load_explicit(&w->gw->catalog, memory_order_acquire);
    if (!c) return NULL;
    unsigned long v = sg_catalog_version(c);
    if (!w->tools || v != w->tools_version) {
        sg_catalog_release(w->tools);
        w->tools = sg_catalog_acquire(c);
        w->tools_version = v;
    }
    return sg_catalog_annotations(w->tools, tool);
}

void sg_gateway_tools_changed(sg_gateway *gw)
{
    sg_catalog_refresh(atomic_load(&gw->catalog));
}

int sg_gateway_keeps_catalog(sg_gateway *gw)
{
    return atomic_load_explicit(&gw->catalog, memory_order_relaxed) != NULL;
}

/* ---- construction ------------------------------------------------------------- */

sg_gateway *sg_gateway_new(const sg_gateway_config *cfg, char *err, size_t errlen)
{
    if (cfg->workers == 0 || !cfg->policy_path || !cfg->verifier) {
        sg_errf(err, errlen, "gateway: a policy, a verifier and at least one worker are needed");
        return NULL;
    }
    sg_gateway *gw = calloc(1, sizeof *gw);
    if (!gw || !(gw->workers = calloc(cfg->workers, sizeof *gw->workers))) {
        free(gw);
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&gw->gen_mu, NULL);
    gw->nworkers = cfg->workers;
    gw->keys = sg_verifier_keys(cfg->verifier);
    gw->verifier = cfg->verifier;
    gw->introspector = cfg->introspector;
    gw->limits = cfg->policy_limits;
    gw->annotate = cfg->annotate;
    gw->nidentity =
        cfg->nidentity < SG_GATEWAY_MAX_IDENTITY ? cfg->nidentity : SG_GATEWAY_MAX_IDENTITY;
    for (size_t i = 0; i < gw->nidentity; i++)
        gw->identity[i] = cfg->identity[i]; /* borrowed: the config outlives the gateway */
    sg_mcp_limits defaults = SG_MCP_LIMITS_DEFAULT;
    gw->mcp_limits = cfg->mcp_limits.max_body ? cfg->mcp_limits : defaults;
    gw->policy_path = strdup(cfg->policy_path);
    gw->public_url = cfg->public_url ? strdup(cfg->public_url) : NULL;
    gw->default_authorization_server =
        cfg->default_authorization_server ? strdup(cfg->default_authorization_server) : NULL;
    gw->upstream_url = cfg->upstream_url ? strdup(cfg->upstream_url) : NULL;
    gw->upstream_ca = cfg->upstream_ca ? strdup(cfg->upstream_ca) : NULL;
    if (!gw->policy_path || (cfg->public_url && !gw->public_url) ||
        (cfg->default_authorization_server && !gw->default_authorization_server) ||
        (cfg->upstream_url && !gw->upstream_url) || (cfg->upstream_ca && !gw->upstream_ca)) {
        sg_errf(err, errlen, "out of memory");
        goto fail;
    }
    for (unsigned i = 0; i < cfg->workers; i++) {
        worker *w = &gw->workers[i];
        w->gw = gw;
        w->index = i;
        sg_arena_init(&w->arena, ARENA_BLOCK);
        sg_decision_init(&w->decision);
        if (!(w->tcache = sg_tcache_new(cfg->verifier, cfg->token_cache_entries))) {
            sg_errf(err, errlen, "out of memory");
            goto fail;
        }
    }
    gw->audit = cfg->audit;
    if (cfg->shadow_policy_path && !cfg->audit) {
        sg_errf(err, errlen, "a shadow policy needs the audit log: its disagreements go there");
        goto fail;
    }
    if (cfg->audit) {
        unsigned char rnd[8];
        if (RAND_bytes(rnd, sizeof rnd) != 1) {
            uint64_t t = sg_now_mono_ns() ^ (uint64_t)(uintptr_t)gw;
            memcpy(rnd, &t, sizeof rnd);
        }
        sg_hex(rnd, sizeof rnd, gw->boot_id);
    }
    if (!(gw->current = gen_load(gw, gw->policy_path, NULL, err, errlen))) goto fail;
    if (cfg->shadow_policy_path) {
        char serr[4096];
        if (!(gw->shadow_path = strdup(cfg->shadow_policy_path)) ||
            !(gw->shadow = gen_load(gw, gw->shadow_path, NULL, serr, sizeof serr))) {
            sg_errf(err, errlen, "shadow policy: %s", gw->shadow_path ? serr : "out of memory");
            goto fail;
        }
    }
    if (catalog_follow(gw, gw->current->policies[0], err, errlen) != 0) goto fail;
    /* A candidate that reads the upstream's annotations needs the catalogue
     * even when the live policy does not. */
    if (gw->shadow && !atomic_load(&gw->catalog) &&
        catalog_follow(gw, gw->shadow->policies[0], err, errlen) != 0)
        goto fail;
    atomic_store(&gw->generation, 1);
    for (unsigned i = 0; i < cfg->workers; i++)
        worker_refresh(gw, &gw->workers[i]);
    return gw;
fail:
    sg_gateway_free(gw);
    return NULL;
}

/* Checks and loads the policy at path, then makes it *slot (gw->current or
 * gw->shadow) in every worker at its next request boundary. Returns as
 * sg_gateway_reload does. */
static int reload_into(sg_gateway *gw, const char *path, policy_gen **slot, sg_buf *report,
                       char hash[SG_POLICY_HASH_LEN + 1])
{
    char checked[SG_POLICY_HASH_LEN + 1];
    sg_buf findings = SG_BUF_INIT;
    int nerrors = sg_policy_check_hashed(path, &gw->limits, &findings, checked);
    snprintf(hash, SG_POLICY_HASH_LEN + 1, "%s", checked);
    if (nerrors > 0 || !checked[0]) {
        /* Only the errors: warnings do not stop a reload. */
        for (const char *line = findings.data; line && *line;) {
            const char *end = strchr(line, '\n');
            size_t n = end ? (size_t)(end - line + 1) : strlen(line);
            const char *hit = strstr(line, ": error: ");
            if (hit && hit < line + n) sg_buf_append(report, line, n);
            line += n;
        }
        if (report->len == 0) sg_buf_append(report, findings.data, findings.len);
        sg_buf_free(&findings);
        return -1;
    }
    sg_buf_free(&findings);
    pthread_mutex_lock(&gw->gen_mu);
    int same = strcmp(sg_policy_hash((*slot)->policies[0]), checked) == 0;
    pthread_mutex_unlock(&gw->gen_mu);
    if (same) return 1;
    char err[4096];
    policy_gen *g = gen_load(gw, path, checked, err, sizeof err);
    if (!g) {
        sg_buf_puts(report, err);
        return -1;
    }
    pthread_mutex_lock(&gw->gen_mu);
    policy_gen *old = *slot;
    *slot = g;
    atomic_fetch_add_explicit(&gw->generation, 1, memory_order_release);
    pthread_mutex_unlock(&gw->gen_mu);
    gen_release(old);
    return 0;
}

int sg_gateway_reload(sg_gateway *gw, sg_buf *report, char hash[SG_POLICY_HASH_LEN + 1])
{
    int rc = reload_into(gw, gw->policy_path, &gw->current, report, hash);
    char err[4096];
    if (rc == 0 && catalog_follow(gw, gw->current->policies[0], err, sizeof err) != 0)
        sg_log(SG_LOG_ERROR, "tool catalogue: %s", err);
    return rc;
}

int sg_gateway_reload_shadow(sg_gateway *gw, sg_buf *report, char hash[SG_POLICY_HASH_LEN + 1])
{
    if (!gw->shadow) {
        hash[0] = 0;
        return 1;
    }
    int rc = reload_into(gw, gw->shadow_path, &gw->shadow, report, hash);
    char err[4096];
    if (rc == 0 && !atomic_load(&gw->catalog) &&
        catalog_follow(gw, gw->shadow->policies[0], err, sizeof err) != 0)
        sg_log(SG_LOG_ERROR, "tool catalogue (shadow policy): %s", err);
    return rc;
}

int sg_gateway_has_shadow(const sg_gateway *gw)
{
    return gw->shadow != NULL;
}

void sg_gateway_shadow_hash(sg_gateway *gw, char hash[SG_POLICY_HASH_LEN + 1])
{
    pthread_mutex_lock(&gw->gen_mu);
    snprintf(hash, SG_POLICY_HASH_LEN + 1, "%s",
             gw->shadow ? sg_policy_hash(gw->shadow->policies[0]) : "");
    pthread_mutex_unlock(&gw->gen_mu);
}

int sg_gateway_audits(const sg_gateway *gw)
{
    return gw->audit != NULL;
}

void sg_gateway_forget_tokens(sg_gateway *gw)
{
    pthread_mutex_lock(&gw->gen_mu);
    atomic_fetch_add_explicit(&gw->generation, 1, memory_order_release);
    pthread_mutex_unlock(&gw->gen_mu);
}

void sg_gateway_policy_hash(sg_gateway *gw, char hash[SG_POLICY_HASH_LEN + 1])
{
    pthread_mutex_lock(&gw->gen_mu);
    snprintf(hash, SG_POLICY_HASH_LEN + 1, "%s", sg_policy_hash(gw->current->policies[0]));
    pthread_mutex_unlock(&gw->gen_mu);
}

char **sg_gateway_policy_files(sg_gateway *gw)
{
    pthread_mutex_lock(&gw->gen_mu);
    policy_gen *g = gen_retain(gw->current);
    policy_gen *shadow = gw->shadow ? gen_retain(gw->shadow) : NULL;
    pthread_mutex_unlock(&gw->gen_mu);
    const sg_sandbox_source *src, *ssrc = NULL;
    int n = sg_sandbox_sources(sg_policy_sandbox(g->policies[0]), &src);
    int ns = shadow ? sg_sandbox_sources(sg_policy_sandbox(shadow->policies[0]), &ssrc) : 0;
    char **files = calloc((size_t)n + (size_t)ns + 1, sizeof *files);
    for (int i = 0; files && i < n + ns; i++) {
        if (!(files[i] = strdup(i < n ? src[i].path : ssrc[i - n].path))) {
            sg_strv_free(files);
            files = NULL;
        }
    }
    gen_release(g);
    gen_release(shadow);
    return files;
}

void sg_gateway_free(sg_gateway *gw)
{
    if (!gw) return;
    for (unsigned i = 0; i < gw->nworkers; i++) {
        worker *w = &gw->workers[i];
        gen_release(w->gen);
        gen_release(w->shadow_gen);
        sg_buf_free(&w->audit_scratch);
        sg_catalog_release(w->tools);
        sg_tcache_free(w->tcache);
        sg_introspect_release(&w->introspected);
        sg_arena_free(&w->arena);
        sg_decision_free(&w->decision);
    }
    gen_release(gw->current);
    gen_release(gw->shadow);
    free(gw->shadow_path);
    sg_catalog_stop(atomic_load(&gw->catalog));
    free(gw->upstream_url);
    free(gw->upstream_ca);
    free(gw->default_authorization_server);
    pthread_mutex_destroy(&gw->gen_mu);
    free(gw->workers);
    free(gw->policy_path);
    free(gw->public_url);
    free(gw);
}

int sg_gateway_metadata(sg_gateway *gw, unsigned worker_index, sg_buf *out)
{
    if (worker_index >= gw->nworkers) return -1;
    worker *w = &gw->workers[worker_index];
    worker_refresh(gw, w);
    sg_buf_puts(out, w->gen->metadata_json);
    return sg_buf_ok(out) ? 0 : -1;
}

void sg_gateway_upstream_error(const sg_gateway_reply *plan, sg_proxy_error e, int *status,
                               sg_buf *body)
{
    switch (e) {
    case SG_PROXY_ETIMEOUT:
        *status = 504;
        break;
    case SG_PROXY_ESHUTDOWN:
    case SG_PROXY_ENOMEM:
        *status = 503;
        break;
    default:
        *status = 502;
        break;
    }
    const char *id = plan->id_raw[0] ? plan->id_raw : NULL;
    sg_mcp_error_render(body, id, id ? strlen(id) : 0, SG_JSONRPC_INTERNAL_ERROR,
                        sg_proxy_error_text(e), NULL);
}

/* ---- authentication --------------------------------------------------------------- */

/* Tickets of introspection calls have this bit; key refetch tickets never
 * get that far. */
#define INTROSPECTION_TICKET (1ull << 63)

/* RFC 6750 section 2.1: "Bearer" 1*SP token68. Sets *token_error (a fixed
 * phrase) when a credential is present but unusable, and *unavailable when
 * it is an opaque token the authorization server could not judge (503, not
 * invalid_token: RFC 6750 3.1 is about the token, not the server). With
 * SG_KID_DEFER, returns the ticket to wait for before deciding (the token's
 * kid is unknown and a refetch may bring it, or the opaque token's
 * introspection call is under way), else 0. */
static uint64_t authenticate(worker *w, const char *authz, const sg_token **token,
                             const char **token_error, int *unavailable, sg_kid_wait kw)
{
    *token = NULL;
    *token_error = NULL;
    *unavailable = 0;
    uint64_t ticket = 0;
    if (!authz) return 0;
    if (strncasecmp(authz, "Bearer ", 7) != 0) {
        *token_error = "The Authorization header must use the Bearer scheme";
        return 0;
    }
    const char *t = authz + 7;
    while (*t == ' ')
        t++;
    size_t len = strlen(t);
    while (len > 0 && t[len - 1] == ' ')
        len--;
    if (len == 0) {
        *token_error = "The bearer token is empty";
        return 0;
    }
    sg_token_err e;
    sg_introspector *in = w->gw->introspector;
    sg_introspect_release(&w->introspected); /* the previous request's answer */
    if (in && len <= sg_verifier_max_token_bytes(w->gw->verifier) && !sg_token_is_jws(t, len)) {
        e = sg_introspect_token(in, t, len, sg_now_unix(), kw == SG_KID_DEFER, &ticket,
                                &w->introspected, token);
        if (e == SG_TOKEN_PENDING) return ticket | INTROSPECTION_TICKET;
        if (e == SG_TOKEN_UNAVAILABLE) *unavailable = 1;
    } else {
        e = sg_tcache_verify_ex(w->tcache, t, len, sg_now_unix(), kw, &ticket, token);
    }
    if (e != SG_TOKEN_OK) {
        *token = NULL;
        *token_error = sg_token_error_message(e);
        if (!ticket) sg_metric_inc(SG_M_TOKEN_REFUSALS + (int)e); /* final, not a wait */
    }
    return ticket;
}

/* How a request verifies its token: the first time without waiting (an
 * unknown kid is refetched off the thread and the request waits, suspended,
 * for that), after the wait with the keys in force. */
static sg_kid_wait kid_wait_for(const sg_gateway_request *req)
{
    return req->waited ? SG_KID_NO_FETCH : SG_KID_DEFER;
}

/* ---- authorization ------------------------------------------------------------------ */

/* Lower-cased header copies for the policy's req.headers, minus credentials. */
static int policy_headers(const sg_gateway_request *req, sg_arena *a, sg_header **out, size_t *n)
{
    *n = 0;
    *out = sg_arena_alloc(a, (req->nheaders ? req->nheaders : 1) * sizeof **out);
    if (!*out) return -1;
    for (size_t i = 0; i < req->nheaders; i++) {
        const char *name = req->headers[i].name;
        if (strcasecmp(name, "Authorization") == 0 || strcasecmp(name, "Cookie") == 0) continue;
        size_t len = strlen(name);
        char *lower = sg_arena_strndup(a, name, len);
        if (!lower) return -1;
        for (size_t k = 0; k < len; k++)
            if (lower[k] >= 'A' && lower[k] <= 'Z') lower[k] = (char)(lower[k] - 'A' + 'a');
        (*out)[*n].name = lower;
        (*out)[*n].value = req->headers[i].value;
        (*n)++;
    }
    return 0;
}

/* What a request lists, if its answer must be filtered. */
static int list_kind(const sg_mcp_msg *m)
{
    if (m->kind != SG_MCP_REQUEST || !m->id_raw) return SG_FILTER_NONE;
    if (strcmp(m->method, "tools/list") == 0) return SG_FILTER_TOOLS;
    if (strcmp(m->method, "prompts/list") == 0) return SG_FILTER_PROMPTS;
    if (strcmp(m->method, "resources/list") == 0) return SG_FILTER_RESOURCES;
    if (strcmp(m->method, "resources/templates/list") == 0) return SG_FILTER_TEMPLATES;
    return SG_FILTER_NONE;
}

/* When the body holds a list request (a batch may hold several), records
 * every request of it (id and, for lists, what it lists), so that the
 * answer can be checked to answer each exactly once and its list results
 * found by id and filtered. Returns 0, or -1 when out of memory. */
static int plan_lists(const sg_mcp_body *body, const char *authz, const char *version,
                      sg_gateway_reply *out)
{
    size_t n = 0, nreq = 0;
    for (size_t i = 0; i < body->nmsgs; i++) {
        if (list_kind(&body->msgs[i]) != SG_FILTER_NONE) n++;
        if (body->msgs[i].kind == SG_MCP_REQUEST && body->msgs[i].id_raw) nreq++;
    }
    if (n == 0) return 0;
    out->filter = 1;
    out->lists = calloc(nreq, sizeof *out->lists);
    out->authorization = authz ? strdup(authz) : NULL;
    out->protocol_version = strdup(version);
    if (!out->lists || (authz && !out->authorization) || !out->protocol_version) return -1;
    for (size_t i = 0; i < body->nmsgs; i++) {
        const sg_mcp_msg *m = &body->msgs[i];
        if (m->kind != SG_MCP_REQUEST || !m->id_raw) continue;
        struct sg_gateway_list *l = &out->lists[out->nlists++];
        l->kind = list_kind(m);
        if (!(l->id_raw = strndup(m->id_raw, m->id_len))) return -1;
    }
    return 0;
}

/* A claim as a header value: strings, integers and booleans only, printable
 * ASCII (so nothing can end the header or start another), at most 1 KiB.
 * Returns a malloc'd value, or NULL to leave the header out. */
static char *claim_header_value(const cJSON *claims, const char *name)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(claims, name);
    char buf[32];
    const char *v = NULL;
    if (cJSON_IsString(c)) {
        v = c->valuestring;
    } else if (cJSON_IsBool(c)) {
        v = cJSON_IsTrue(c) ? "true" : "false";
    } else if (cJSON_IsNumber(c) && c->valuedouble == (double)(long long)c->valuedouble) {
        snprintf(buf, sizeof buf, "%lld", (long long)c->valuedouble);
        v = buf;
    }
    if (!v || !*v || strlen(v) > 1024) return NULL;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p < 0x20 || *p > 0x7E) return NULL;
    return strdup(v);
}

/* Adds the configured identity headers for a verified caller (a claim that
 * is absent or unusable leaves its header out; allocation failure too). */
static void plan_identity(const sg_gateway *gw, const sg_token *token, sg_gateway_reply *out)
{
    if (!token) return;
    for (size_t i = 0; i < gw->nidentity; i++) {
        char *v = claim_header_value(sg_token_claims(token), gw->identity[i].claim);
        if (!v) continue;
        out->identity[out->nidentity].name = gw->identity[i].header;
        out->identity[out->nidentity].value = v;
        out->nidentity++;
    }
}

/* ---- the audit log ------------------------------------------------------------------
 *
 * One record per message of a decided request (docs/operations.md, "Audit
 * log"; docs/audit.schema.json). What is known at decision time is
 * formatted here into the reply, as the opening part of a JSON object; the
 * HTTP layer completes it with the outcome (sg_gateway_audit_finish).
 * Formatting appends into reused buffers with the project's JSON string
 * escaper: no cJSON tree is built. Nothing of the token is written: only
 * the verified claims sub, client_id and iss, and the granted scopes. */

#define AUDIT_MAX_STRING 1024 /* longest string value recorded (cut beyond) */
#define AUDIT_MAX_VALUE  4096 /* longest object or array argument recorded */
#define REQUEST_ID_MAX   128

static void j_key(sg_buf *b, const char *key)
{
    sg_buf_putc(b, ',');
    sg_buf_putc(b, '"');
    sg_buf_puts(b, key);
    sg_buf_puts(b, "\":");
}

static void j_string(sg_buf *b, const char *s)
{
    if (!s) {
        sg_buf_puts(b, "null");
        return;
    }
    size_t n = strlen(s);
    sg_json_append_string(b, s, n < AUDIT_MAX_STRING ? n : AUDIT_MAX_STRING);
}

static void j_field(sg_buf *b, const char *key, const char *s)
{
    j_key(b, key);
    j_string(b, s);
}

/* A requirement as JSON: a scope name, "public", "authenticated", "deny",
 * {"all_of": [...]} or {"any_of": [...]}. */
static void j_requirement(sg_buf *b, const sg_universe *u, const sg_req *r)
{
    switch (r->kind) {
    case SG_REQ_PUBLIC:
        sg_buf_puts(b, "\"public\"");
        return;
    case SG_REQ_AUTHENTICATED:
        sg_buf_puts(b, "\"authenticated\"");
        return;
    case SG_REQ_DENY:
        sg_buf_puts(b, "\"deny\"");
        return;
    case SG_REQ_SCOPE:
        j_string(b, sg_universe_name(u, r->scope));
        return;
    case SG_REQ_ALL:
    case SG_REQ_ANY:
        sg_buf_puts(b, r->kind == SG_REQ_ALL ? "{\"all_of\":[" : "{\"any_of\":[");
        for (int i = 0; i < r->nkids; i++) {
            if (i) sg_buf_putc(b, ',');
            j_requirement(b, u, r->kids[i]);
        }
        sg_buf_puts(b, "]}");
        return;
    }
    sg_buf_puts(b, "null");
}

static void j_scopeset(sg_buf *b, const sg_universe *u, const sg_scopeset *s)
{
    sg_buf_putc(b, '[');
    int first = 1;
    for (int id = 0; id < sg_universe_size(u); id++) {
        if (!sg_scopeset_has(s, id)) continue;
        if (!first) sg_buf_putc(b, ',');
        first = 0;
        j_string(b, sg_universe_name(u, id));
    }
    sg_buf_putc(b, ']');
}

/* An argument value: scalars as they are (strings cut at AUDIT_MAX_STRING
 * bytes), objects and arrays compact up to AUDIT_MAX_VALUE bytes, else
 * null. */
static void j_argument(sg_buf *b, const cJSON *v)
{
    if (cJSON_IsString(v)) {
        j_string(b, v->valuestring);
    } else if (cJSON_IsBool(v)) {
        sg_buf_puts(b, cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsNumber(v) && isfinite(v->valuedouble)) {
        double d = v->valuedouble;
        if (d == (double)(long long)d && fabs(d) < 9007199254740992.0)
            sg_buf_printf(b, "%lld", (long long)d);
        else
            sg_buf_printf(b, "%.17g", d);
    } else if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        char *text = cJSON_PrintUnformatted(v);
        if (text && strlen(text) <= AUDIT_MAX_VALUE)
            sg_buf_puts(b, text);
        else
            sg_buf_puts(b, "null");
        cJSON_free(text);
    } else {
        sg_buf_puts(b, "null");
    }
}

/* The value at an audit path ("arguments.a.b") in a message's arguments,
 * or NULL. Paths were validated at load: dot-separated keys. */
static const cJSON *argument_at(const cJSON *arguments, const char *path)
{
    const char *p = path + strlen("arguments");
    const cJSON *v = arguments;
    while (v && *p == '.') {
        p++;
        size_t n = strcspn(p, ".");
        char key[72];
        if (n >= sizeof key || !cJSON_IsObject(v)) return NULL;
        memcpy(key, p, n);
        key[n] = 0;
        v = cJSON_GetObjectItemCaseSensitive(v, key);
        p += n;
    }
    return v;
}

/* RFC 3339 UTC with milliseconds: 2026-12-04T16:10:00.123Z. */
static void j_now(sg_buf *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char text[40];
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
    sg_buf_printf(b, "\"%s.%03ldZ\"", text, ts.tv_nsec / 1000000);
}

/* A client's X-Request-Id is kept only when it is 1 to REQUEST_ID_MAX
 * characters of [A-Za-z0-9._:-] (and no part of its credential): anything
 * else could be a header or log injection, and is replaced by a generated
 * id. */
static int request_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= REQUEST_ID_MAX ||
            !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return n > 0;
}

/* The part of a record every message of the request shares, from the
 * opening brace: type, time, request id, client, who (verified), policy. */
static void audit_common(sg_buf *b, const char *type, const char *time_json, const char *rid,
                         const sg_gateway_request *req, const sg_token *token, const char *hash)
{
    sg_buf_puts(b, "{\"type\":\"");
    sg_buf_puts(b, type);
    sg_buf_puts(b, "\",\"time\":");
    sg_buf_puts(b, time_json);
    j_field(b, "request_id", rid);
    j_field(b, "client", req->client_addr);
    j_field(b, "http_method", req->method);
    j_field(b, "sub", token ? token->sub : NULL);
    j_field(b, "client_id", token ? token->client_id : NULL);
    j_field(b, "iss", token ? token->iss : NULL);
    j_field(b, "policy", hash);
}

static void audit_message(sg_buf *b, const sg_mcp_body *body, size_t i)
{
    const sg_mcp_msg *m = body ? &body->msgs[i] : NULL;
    j_field(b, "method", m ? m->method : NULL);
    j_field(b, "name", m ? m->name : NULL);
    if (body && body->is_batch)
        sg_buf_printf(b, ",\"batch\":{\"index\":%zu,\"size\":%zu}", i, body->nmsgs);
}

static void audit_rule(sg_buf *b, const sg_universe *u, const sg_policy_decision *d)
{
    j_field(b, "rule", d && d->rule ? d->rule : NULL);
    j_field(b, "rule_file", d && d->line > 0 ? d->file : NULL);
    j_key(b, "rule_line");
    if (d && d->line > 0)
        sg_buf_printf(b, "%d", d->line);
    else
        sg_buf_puts(b, "null");
    j_key(b, "required");
    if (d && d->req)
        j_requirement(b, u, d->req);
    else
        sg_buf_puts(b, "null");
}

/* What one message's requirement means for this caller on its own. */
static const char *element_outcome(const sg_req *r, const sg_token *token, const char *token_error,
                                   const sg_scopeset *effective)
{
    if (token_error) return "unauthorized";
    if (sg_req_satisfied(r, token != NULL, effective)) return "allow";
    if (!sg_req_satisfiable(r)) return "deny";
    return token ? "insufficient_scope" : "unauthorized";
}

/* The request's decision as the audit log names it. */
static const char *decision_name(const sg_gateway_reply *out, const sg_decision *d)
{
    if (out->status == 0) return "allow";
    if (out->status == 401) return "unauthorized";
    if (out->status == 403) return d->outcome == SG_FORBIDDEN ? "insufficient_scope" : "deny";
    if (out->status >= 500) return "error";
    return "invalid";
}

/* The shadow policy's view of the same body: one "shadow" record for each
 * message it decides otherwise (allowed or not, or another requirement).
 * Its failures deny inside the shadow only (the policy logs them); the
 * live answer was decided before this runs and is never touched. */
static void audit_shadow(const sg_gateway *gw, worker *w, const sg_gateway_request *req,
                         const sg_mcp_body *body, const sg_bridge_caller *caller,
                         const sg_policy_decision *live, const char *time_json, const char *rid)
{
    sg_policy_decision *cand = sg_arena_alloc(&w->arena, body->nmsgs * sizeof *cand);
    if (!cand) return;
    memset(cand, 0, body->nmsgs * sizeof *cand);
    sg_bridge_requirement_for(w->shadow_policy, body, caller, &w->arena, cand);
    const sg_universe *lu = sg_policy_universe(w->policy);
    const sg_universe *su = sg_policy_universe(w->shadow_policy);
    sg_scopeset granted, leff, seff;
    sg_token_granted(lu, caller->token, &granted);
    sg_universe_effective(lu, &granted, &leff);
    sg_token_granted(su, caller->token, &granted);
    sg_universe_effective(su, &granted, &seff);
    sg_buf lreq = SG_BUF_INIT, sreq = SG_BUF_INIT;
    sg_buf *b = &w->audit_scratch;
    for (size_t i = 0; i < body->nmsgs; i++) {
        const sg_req *lr = live[i].req ? live[i].req : &sg_req_deny;
        const sg_req *sr = cand[i].req ? cand[i].req : &sg_req_deny;
        const char *lo = element_outcome(lr, caller->token, caller->token_error, &leff);
        const char *so = element_outcome(sr, caller->token, caller->token_error, &seff);
        sg_buf_reset(&lreq);
        sg_buf_reset(&sreq);
        j_requirement(&lreq, lu, lr);
        j_requirement(&sreq, su, sr);
        int same_allow = (strcmp(lo, "allow") == 0) == (strcmp(so, "allow") == 0);
        if (same_allow && lreq.len == sreq.len &&
            (lreq.len == 0 || memcmp(lreq.data, sreq.data, lreq.len) == 0))
            continue;
        sg_audit_count_shadow(gw->audit);
        sg_buf_reset(b);
        audit_common(b, "shadow", time_json, rid, req, caller->token, sg_policy_hash(w->policy));
        audit_message(b, body, i);
        sg_buf_puts(b, ",\"shadow\":{\"policy\":");
        j_string(b, sg_policy_hash(w->shadow_policy));
        sg_buf_puts(b, ",\"live\":{\"decision\":");
        j_string(b, lo);
        audit_rule(b, lu, &live[i]);
        sg_buf_puts(b, "},\"candidate\":{\"decision\":");
        j_string(b, so);
        audit_rule(b, su, &cand[i]);
        sg_buf_puts(b, "}}}");
        if (sg_buf_ok(b)) sg_audit_submit(gw->audit, b->data, b->len);
    }
    sg_buf_free(&lreq);
    sg_buf_free(&sreq);
}

/* Formats the records of a decided request into out (completed later by
 * sg_gateway_audit_finish) and, when it is forwarded, adds X-Request-Id.
 * body and each may be NULL (a request refused before its messages were
 * known, GET and DELETE): then one record without a message. caller is
 * set when the shadow policy should look at the body. */
static void audit_begin(const sg_gateway *gw, worker *w, const sg_gateway_request *req,
                        const sg_mcp_body *body, const sg_policy_decision *each,
                        const sg_token *token, const sg_bridge_caller *caller,
                        sg_gateway_reply *out)
{
    char rid[REQUEST_ID_MAX + 1];
    const char *client_rid = header_get(req, "X-Request-Id");
    const char *authz = header_get(req, "Authorization");
    /* A client that puts (a piece of) its token there gets a generated id:
     * no byte of a credential is ever written to the audit log. */
    if (client_rid && request_id_valid(client_rid) && !(authz && strstr(authz, client_rid)))
        snprintf(rid, sizeof rid, "%s", client_rid);
    else
        snprintf(rid, sizeof rid, "%s-%u-%lu", gw->boot_id, w->index, ++w->audit_seq);
    if (out->status == 0 && out->nidentity < SG_ARRAY_LEN(out->identity)) {
        char *v = strdup(rid);
        if (v) {
            out->identity[out->nidentity].name = "X-Request-Id";
            out->identity[out->nidentity].value = v;
            out->nidentity++;
        }
    }
    char time_json[48];
    sg_buf t = SG_BUF_INIT;
    j_now(&t);
    snprintf(time_json, sizeof time_json, "%s", sg_buf_ok(&t) ? t.data : "null");
    sg_buf_free(&t);

    const sg_universe *u = sg_policy_universe(w->policy);
    const char *decision = decision_name(out, &w->decision);
    size_t n = body ? body->nmsgs : 1;
    if (!(out->audit_ids = calloc(n, sizeof *out->audit_ids))) return;
    sg_buf *b = &out->audit;
    /* In a batch, what each message's own requirement means for the caller:
     * one refused message refuses them all. */
    sg_scopeset granted, effective;
    if (body && body->is_batch) {
        sg_token_granted(u, token, &granted);
        sg_universe_effective(u, &granted, &effective);
    }
    for (size_t i = 0; i < n; i++) {
        const sg_mcp_msg *m = body ? &body->msgs[i] : NULL;
        const sg_policy_decision *d = each ? &each[i] : NULL;
        if (m && m->kind == SG_MCP_REQUEST && m->id_raw)
            out->audit_ids[i] = strndup(m->id_raw, m->id_len);
        audit_common(b, "decision", time_json, rid, req, token, sg_policy_hash(w->policy));
        audit_message(b, body, i);
        j_field(b, "decision", decision);
        if (body && body->is_batch && d && d->req)
            j_field(
                b, "message_decision",
                element_outcome(d->req, token, caller ? caller->token_error : NULL, &effective));
        audit_rule(b, u, d && d->rule ? d : NULL);
        j_key(b, "granted");
        sg_buf_putc(b, '[');
        for (int k = 0; token && k < token->nscopes; k++) {
            if (k) sg_buf_putc(b, ',');
            j_string(b, token->scopes[k]);
        }
        sg_buf_putc(b, ']');
        if ((out->status == 401 || out->status == 403) && decision[0] != 'd') {
            j_key(b, "step_up");
            j_scopeset(b, u, &w->decision.scope);
        }
        if (d && d->error) sg_buf_puts(b, ",\"policy_error\":true");
        if (d && d->naudit > 0 && m && m->arguments) {
            sg_buf_puts(b, ",\"arguments\":{");
            int first = 1;
            for (int k = 0; k < d->naudit; k++) {
                const cJSON *v = argument_at(m->arguments, d->audit[k]);
                if (!v) continue;
                if (!first) sg_buf_putc(b, ',');
                first = 0;
                j_string(b, d->audit[k]);
                sg_buf_putc(b, ':');
                j_argument(b, v);
            }
            sg_buf_putc(b, '}');
        }
        sg_buf_putc(b, '\0');
    }
    out->naudit = n;
    if (caller && body && each && w->shadow_policy)
        audit_shadow(gw, w, req, body, caller, each, time_json, rid);
}

/* One message of the upstream's answer: its id's raw text and outcome. */
typedef struct answer_msg {
    const char *id;
    size_t id_len;
    const char *outcome;
} answer_msg;

/* Reads one JSON text of the answer (a message or a batch) into msgs. */
static void classify_json(const char *json, size_t len, answer_msg *msgs, size_t *n, size_t cap)
{
    static const sg_json_limits lim = {.max_depth = SG_JSON_MAX_DEPTH_CAP};
    static const char *const names[] = {
        [SG_JSON_OUTCOME_OK] = "ok",
        [SG_JSON_OUTCOME_ERROR] = "jsonrpc_error",
        [SG_JSON_OUTCOME_TOOL_ERROR] = "tool_error",
    };
    sg_json_scan scan = {0};
    if (sg_json_prescan(json, len, &lim, &scan, NULL) != 0) return;
    /* One pass over member names, no tree; only a name written with escapes
     * needs cJSON to decode it. */
    unsigned char quick[64];
    unsigned char *outcome = scan.nmessages <= sizeof quick ? quick : malloc(scan.nmessages);
    cJSON *root = NULL;
    if (outcome) {
        sg_json_outcomes(json, len, &scan, outcome);
        for (size_t i = 0; i < scan.nmessages && !root; i++)
            if (outcome[i] == SG_JSON_OUTCOME_UNKNOWN) root = cJSON_ParseWithLength(json, len);
    } else {
        root = cJSON_ParseWithLength(json, len);
    }
    cJSON *m = root && scan.top_is_array ? root->child : root;
    for (size_t i = 0; i < scan.nmessages; i++, m = m && scan.top_is_array ? m->next : NULL) {
        if (*n >= cap || scan.id_spans[i].len == 0) continue;
        const char *name;
        if (outcome && outcome[i] != SG_JSON_OUTCOME_UNKNOWN) {
            name = names[outcome[i]];
        } else {
            if (!cJSON_IsObject(m)) continue;
            const cJSON *result = cJSON_GetObjectItemCaseSensitive(m, "result");
            name = cJSON_GetObjectItemCaseSensitive(m, "error") ? "jsonrpc_error"
                   : cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError"))
                       ? "tool_error"
                       : "ok";
        }
        msgs[*n].id = json + scan.id_spans[i].off;
        msgs[*n].id_len = scan.id_spans[i].len;
        msgs[*n].outcome = name;
        (*n)++;
    }
    if (outcome != quick) free(outcome);
    cJSON_Delete(root);
    sg_json_scan_free(&scan);
}

void sg_gateway_audit_finish(sg_gateway *gw, sg_gateway_reply *r, const sg_gateway_outcome *o)
{
    if (!gw->audit || r->naudit == 0) return;
    const char *base = o->upstream_outcome;
    answer_msg *msgs = NULL;
    size_t nmsgs = 0;
    sg_sse_event ev = SG_SSE_EVENT_INIT;
    if (!base && o->upstream_status >= 400) base = "http_error";
    if (!base && !o->body) base = "streamed";
    if (!base && o->upstream_status && (msgs = calloc(r->naudit, sizeof *msgs))) {
        const char *ct = o->content_type ? o->content_type : "";
        if (strncasecmp(ct, "text/event-stream", 17) == 0) {
            size_t pos = 0;
            while (sg_sse_read(o->body, o->body_len, &pos, &ev) > 0)
                if (ev.has_data && ev.data.len)
                    classify_json(ev.data.data, ev.data.len, msgs, &nmsgs, r->naudit);
        } else {
            classify_json(o->body, o->body_len, msgs, &nmsgs, r->naudit);
        }
    }
    double ms = (double)(sg_now_mono_ns() - o->started_ns) / 1e6;
    sg_buf line = SG_BUF_INIT;
    const char *p = r->audit.data;
    for (size_t i = 0; p && i < r->naudit; i++) {
        size_t len = strlen(p);
        sg_buf_reset(&line);
        sg_buf_append(&line, p, len);
        j_key(&line, "status");
        if (o->status)
            sg_buf_printf(&line, "%d", o->status);
        else
            sg_buf_puts(&line, "null");
        j_key(&line, "upstream");
        if (o->upstream_status || o->upstream_outcome) {
            const char *outcome = base;
            const char *id = r->audit_ids ? r->audit_ids[i] : NULL;
            if (!outcome) {
                outcome = id ? "no_answer" : "ok";
                for (size_t k = 0; id && k < nmsgs; k++)
                    if (msgs[k].id_len == strlen(id) && memcmp(msgs[k].id, id, msgs[k].id_len) == 0)
                        outcome = msgs[k].outcome;
            }
            sg_buf_puts(&line, "{\"status\":");
            if (o->upstream_status)
                sg_buf_printf(&line, "%d", o->upstream_status);
            else
                sg_buf_puts(&line, "null");
            sg_buf_puts(&line, ",\"outcome\":");
            j_string(&line, outcome);
            sg_buf_putc(&line, '}');
        } else {
            sg_buf_puts(&line, "null");
        }
        sg_buf_printf(&line, ",\"latency_ms\":%.3f}", ms);
        if (sg_buf_ok(&line)) sg_audit_submit(gw->audit, line.data, line.len);
        p += len + 1;
    }
    sg_buf_free(&line);
    sg_sse_event_free(&ev);
    free(msgs);
    for (size_t i = 0; r->audit_ids && i < r->naudit; i++)
        free(r->audit_ids[i]);
    free(r->audit_ids);
    r->audit_ids = NULL;
    r->naudit = 0;
    sg_buf_free(&r->audit);
}

/* The metrics' name for a decision's outcome (base/metrics.h). */
static int outcome_label(sg_outcome outcome)
{
    switch (outcome) {
    case SG_ALLOW:
        return SG_METRICS_ALLOWED;
    case SG_UNAUTHORIZED:
        return SG_METRICS_UNAUTHORIZED;
    case SG_FORBIDDEN:
        return SG_METRICS_FORBIDDEN;
    default:
        return SG_METRICS_DENIED;
    }
}

/* scopegate_decisions_total for one decided body. Labels are bounded: the
 * method is one MCP defines (else "other"; "batch" for a batch), the tool
 * a name the policy in force has a rule for (else "other"), so clients
 * cannot mint series. */
static void count_decision(const worker *w, const sg_mcp_body *body, sg_outcome outcome)
{
    if (!sg_metrics_enabled()) return;
    int o = outcome_label(outcome);
    if (body->is_batch || body->nmsgs != 1) {
        sg_metric_decision("batch", "", o);
        return;
    }
    const sg_mcp_msg *m = &body->msgs[0];
    const char *method = sg_metrics_method_label(m->kind == SG_MCP_RESPONSE ? NULL : m->method);
    const char *tool = "";
    if (m->method && strcmp(m->method, "tools/call") == 0) {
        int dynamic = 0;
        tool = m->name && (sg_policy_tool_requirement(w->policy, m->name, &dynamic) || dynamic)
                   ? m->name
                   : "other";
    }
    sg_metric_decision(method, tool, o);
}

static int handle_post(worker *w, const sg_gateway *gw, const sg_gateway_request *req,
                       sg_gateway_reply *out)
{
    const char *ctype = header_get(req, "Content-Type");
    if (!ctype || strncasecmp(ctype, "application/json", 16) != 0 ||
        (ctype[16] != 0 && ctype[16] != ';' && ctype[16] != ' '))
        return answer(out, 415, NULL, 0, SG_JSONRPC_INVALID_REQUEST,
                      "Invalid Request: Content-Type must be application/json");
    const char *vh = header_get(req, "MCP-Protocol-Version");
    const char *version = sg_mcp_effective_version(vh);
    if (vh && !sg_mcp_version_supported(vh))
        return answer(out, 400, NULL, 0, SG_JSONRPC_INVALID_REQUEST,
                      "Invalid Request: unsupported MCP-Protocol-Version");

    sg_mcp_body body;
    int rc = sg_mcp_parse(req->body, req->body_len, &gw->mcp_limits, &body);
    int done = 0;
    if (rc != 0) {
        const sg_mcp_msg *m = body.nmsgs == 1 && !body.is_batch ? &body.msgs[0] : NULL;
        answer(out, 400, m ? m->id_raw : NULL, m ? m->id_len : 0, rc, body.error_message);
        done = 1;
    }
    for (size_t i = 0; !done && i < body.nmsgs; i++) {
        const sg_mcp_msg *m = &body.msgs[i];
        if (m->kind == SG_MCP_INVALID) {
            answer(out, 400, m->id_raw, m->id_len, m->error_code, m->error_message);
            done = 1;
        }
    }
    if (!done) {
        char msg[SG_MCP_MESSAGE_LEN];
        int hc = sg_mcp_check_headers(&body, version, header_get(req, "Mcp-Method"),
                                      header_get(req, "Mcp-Name"), msg, sizeof msg);
        if (hc != 0) {
            const sg_mcp_msg *m = body.nmsgs == 1 ? &body.msgs[0] : NULL;
            answer(out, 400, m ? m->id_raw : NULL, m ? m->id_len : 0, hc, msg);
            done = 1;
        }
    }
    if (done) {
        sg_mcp_body_free(&body);
        return 1;
    }

    const sg_token *token;
    const char *token_error;
    int unavailable;
    out->wait_ticket = authenticate(w, header_get(req, "Authorization"), &token, &token_error,
                                    &unavailable, kid_wait_for(req));
    if (out->wait_ticket) {
        sg_mcp_body_free(&body);
        return 2;
    }
    if (unavailable) {
        const sg_mcp_msg *m = body.is_batch ? NULL : &body.msgs[0];
        answer(out, 503, m ? m->id_raw : NULL, m ? m->id_len : 0, SG_JSONRPC_INTERNAL_ERROR,
               AS_UNAVAILABLE_MESSAGE);
        sg_mcp_body_free(&body);
        return 1;
    }
    sg_header *hdrs;
    size_t nhdrs;
    sg_policy_decision *each = NULL; /* per message, for the audit log */
    sg_bridge_caller caller = {.token = token,
                               .token_error = token_error,
                               .protocol_version = version,
                               .annotations = worker_tool_annotations,
                               .annotations_ud = w};
    int have_caller = policy_headers(req, &w->arena, &hdrs, &nhdrs) == 0;
    if (have_caller) {
        caller.headers = hdrs;
        caller.nheaders = nhdrs;
        if (gw->audit && (each = sg_arena_alloc(&w->arena, body.nmsgs * sizeof *each)))
            memset(each, 0, body.nmsgs * sizeof *each);
        sg_bridge_decide(w->policy, &body, &caller, &w->site, &w->arena, each, &w->decision);
    } else {
        sg_decide(&w->site, &sg_req_deny, token, token_error, &w->decision);
    }
    count_decision(w, &body, w->decision.outcome);

    /* The id answered with: a single request's; null for a batch. */
    const sg_mcp_msg *single = body.is_batch ? NULL : &body.msgs[0];
    const char *id = single ? single->id_raw : NULL;
    size_t id_len = id ? single->id_len : 0;
    int accepted_only = 1;
    for (size_t i = 0; i < body.nmsgs; i++)
        if (body.msgs[i].kind == SG_MCP_REQUEST) accepted_only = 0;

    sg_decision *d = &w->decision;
    int result;
    if (!sg_buf_ok(&d->challenge) || !sg_buf_ok(&d->message)) {
        result = answer(out, 500, id, id_len, SG_JSONRPC_INTERNAL_ERROR, "Internal error");
    } else if (d->outcome == SG_ALLOW) {
        if (id && id_len < sizeof out->id_raw) {
            memcpy(out->id_raw, id, id_len);
            out->id_raw[id_len] = 0;
        }
        out->accepted_only = accepted_only;
        out->status = 0;
        result = 0;
        plan_identity(gw, token, out);
        if (plan_lists(&body, header_get(req, "Authorization"), version, out) != 0)
            result = answer(out, 500, id, id_len, SG_JSONRPC_INTERNAL_ERROR, "Internal error");
        else if (out->filter)
            out->policy_gen = gen_retain(w->gen); /* filtered by the policy that allowed it */
    } else {
        answer(out, d->status, id, id_len,
               d->outcome == SG_UNAUTHORIZED ? GW_ERR_UNAUTHORIZED : GW_ERR_FORBIDDEN,
               d->message.data ? d->message.data : "Forbidden");
        if (d->challenge.len)
            sg_buf_append(&out->www_authenticate, d->challenge.data, d->challenge.len);
        if (!sg_buf_ok(&out->www_authenticate))
            answer(out, 500, id, id_len, SG_JSONRPC_INTERNAL_ERROR, "Internal error");
        result = 1;
    }
    if (gw->audit) audit_begin(gw, w, req, &body, each, token, have_caller ? &caller : NULL, out);
    sg_mcp_body_free(&body);
    return result;
}

/* GET opens the server's stream and DELETE ends a session: neither carries a
 * message to decide on, so any valid token will do (a session id is never
 * proof of identity); a policy with public rules lets anonymous callers in. */
static int handle_stream_or_delete(worker *w, const sg_gateway *gw, const sg_gateway_request *req,
                                   sg_gateway_reply *out)
{
    const char *vh = header_get(req, "MCP-Protocol-Version");
    if (vh && !sg_mcp_version_supported(vh))
        return answer(out, 400, NULL, 0, SG_JSONRPC_INVALID_REQUEST,
                      "Invalid Request: unsupported MCP-Protocol-Version");
    if (vh && strcmp(vh, SG_MCP_HEADERS_VERSION) == 0) {
        /* That version is stateless: no GET stream, no sessions. */
        answer(out, 405, NULL, 0, SG_JSONRPC_INVALID_REQUEST, "Method not allowed");
        out->allow = "POST";
        return 1;
    }
    const sg_token *token;
    const char *token_error;
    int unavailable;
    out->wait_ticket = authenticate(w, header_get(req, "Authorization"), &token, &token_error,
                                    &unavailable, kid_wait_for(req));
    if (out->wait_ticket) return 2;
    if (gw->audit) w->audit_token = token;
    if (unavailable)
        return answer(out, 503, NULL, 0, SG_JSONRPC_INTERNAL_ERROR, AS_UNAVAILABLE_MESSAGE);
    const sg_req *r = sg_policy_has_public_rule(w->policy) ? &sg_req_public : &sg_req_authenticated;
    sg_decide(&w->site, r, token, token_error, &w->decision);
    sg_decision *d = &w->decision;
    sg_metric_decision(strcmp(req->method, "GET") == 0 ? "GET" : "DELETE", "",
                       outcome_label(d->outcome));
    if (d->outcome == SG_ALLOW) {
        plan_identity(gw, token, out);
        return 0;
    }
    answer(out, d->status, NULL, 0,
           d->outcome == SG_UNAUTHORIZED ? GW_ERR_UNAUTHORIZED : GW_ERR_FORBIDDEN,
           d->message.data ? d->message.data : "Forbidden");
    if (d->challenge.len)
        sg_buf_append(&out->www_authenticate, d->challenge.data, d->challenge.len);
    return 1;
}

int sg_gateway_wait_done(sg_gateway *gw, uint64_t ticket)
{
    if (ticket & INTROSPECTION_TICKET)
        return !gw->introspector ||
               sg_introspect_done(gw->introspector, ticket & ~INTROSPECTION_TICKET);
    return sg_keys_kid_done(gw->keys, ticket);
}

void sg_gateway_on_wake(sg_gateway *gw, void (*fn)(void *ud), void *ud)
{
    sg_keys_on_kid_fetched(gw->keys, fn, ud);
    if (gw->introspector) sg_introspect_on_done(gw->introspector, fn, ud);
}

int sg_gateway_handle(sg_gateway *gw, const sg_gateway_request *req, sg_gateway_reply *out)
{
    sg_gateway_reply_free(out);
    if (req->worker >= gw->nworkers)
        return answer(out, 503, NULL, 0, SG_JSONRPC_INTERNAL_ERROR, "No worker available");
    worker *w = &gw->workers[req->worker];
    worker_refresh(gw, w);
    sg_arena_reset(&w->arena);
    int rc;
    if (strcmp(req->method, "POST") == 0) {
        rc = handle_post(w, gw, req, out);
    } else if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "DELETE") == 0) {
        rc = handle_stream_or_delete(w, gw, req, out);
    } else {
        answer(out, 405, NULL, 0, SG_JSONRPC_INVALID_REQUEST, "Method not allowed");
        out->allow = "GET, POST, DELETE";
        rc = 1;
    }
    if (gw->audit) {
        /* A request decided without its messages (refused before them, GET,
         * DELETE) gets one record without a message. */
        if (rc != 2 && out->naudit == 0)
            audit_begin(gw, w, req, NULL, NULL, w->audit_token, NULL, out);
        w->audit_token = NULL;
    }
    return rc;
}

/* ---- filtering list answers ------------------------------------------------------- */

typedef struct list_ctx {
    worker *w;
    sg_policy *policy; /* the one the request started with */
    const sg_gateway *gw;
    const sg_gateway_reply *plan;
    const sg_token *token;
    sg_scopeset effective;
    unsigned *answered; /* per request of the plan: responses seen for it */
} list_ctx;

/* A requirement as an oauthScope value (seed 002): "s", {"anyOf":[...]} or
 * {"allOf":[...]}; NULL when it names no scope (public, authenticated). */
static cJSON *oauth_scope_json(const sg_universe *u, const sg_req *r)
{
    if (r->kind == SG_REQ_SCOPE) return cJSON_CreateString(sg_universe_name(u, r->scope));
    if (r->kind != SG_REQ_ALL && r->kind != SG_REQ_ANY) return NULL;
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < r->nkids; i++) {
        cJSON *k = oauth_scope_json(u, r->kids[i]);
        if (k) cJSON_AddItemToArray(arr, k);
    }
    cJSON *o = arr ? cJSON_CreateObject() : NULL;
    if (!o) {
        cJSON_Delete(arr);
        return NULL;
    }
    cJSON_AddItemToObject(o, r->kind == SG_REQ_ALL ? "allOf" : "anyOf", arr);
    return o;
}

#define MAX_SCHEMES 16

/* The requirement in disjunctive normal form: up to MAX_SCHEMES sets of
 * scopes, any one of which satisfies r. Returns the number of sets, or -1
 * when r has more alternatives than that. */
static int dnf(const sg_req *r, sg_scopeset *sets)
{
    switch (r->kind) {
    case SG_REQ_PUBLIC:
    case SG_REQ_AUTHENTICATED:
        sg_scopeset_clear(&sets[0]);
        return 1;
    case SG_REQ_DENY:
        return 0;
    case SG_REQ_SCOPE:
        sg_scopeset_clear(&sets[0]);
        sg_scopeset_add(&sets[0], r->scope);
        return 1;
    case SG_REQ_ANY: {
        int n = 0;
        for (int i = 0; i < r->nkids; i++) {
            sg_scopeset kid[MAX_SCHEMES];
            int k = dnf(r->kids[i], kid);
            if (k < 0 || n + k > MAX_SCHEMES) return -1;
            for (int j = 0; j < k; j++)
                sets[n++] = kid[j];
        }
        return n;
    }
    case SG_REQ_ALL: {
        int n = 1;
        sg_scopeset_clear(&sets[0]);
        for (int i = 0; i < r->nkids; i++) {
            sg_scopeset kid[MAX_SCHEMES], out[MAX_SCHEMES];
            int k = dnf(r->kids[i], kid), m = 0;
            if (k < 0 || n * k > MAX_SCHEMES) return -1;
            for (int a = 0; a < n; a++)
                for (int b = 0; b < k; b++) {
                    out[m] = sets[a];
                    sg_scopeset_union(&out[m++], &kid[b]);
                }
            for (int j = 0; j < m; j++)
                sets[j] = out[j];
            n = m;
        }
        return n;
    }
    }
    return -1;
}

/* A requirement as SEP-1488 securitySchemes: one oauth2 scheme per way of
 * satisfying it ({"type":"noauth"} for public). NULL when it cannot be
 * expressed in MAX_SCHEMES alternatives. */
static cJSON *security_schemes_json(const sg_universe *u, const sg_req *r)
{
    if (r->kind == SG_REQ_PUBLIC) {
        cJSON *arr = cJSON_CreateArray(), *o = cJSON_CreateObject();
        if (arr && o && cJSON_AddStringToObject(o, "type", "noauth")) {
            cJSON_AddItemToArray(arr, o);
            return arr;
        }
        cJSON_Delete(arr);
        cJSON_Delete(o);
        return NULL;
    }
    sg_scopeset sets[MAX_SCHEMES];
    int n = dnf(r, sets);
    cJSON *arr = n > 0 ? cJSON_CreateArray() : NULL;
    for (int i = 0; arr && i < n; i++) {
        cJSON *o = cJSON_CreateObject(), *scopes = cJSON_CreateArray();
        if (!o || !scopes || !cJSON_AddStringToObject(o, "type", "oauth2")) {
            cJSON_Delete(o);
            cJSON_Delete(scopes);
            continue;
        }
        for (int id = 0; id < sg_universe_size(u); id++)
            if (sg_scopeset_has(&sets[i], id))
                cJSON_AddItemToArray(scopes, cJSON_CreateString(sg_universe_name(u, id)));
        cJSON_AddItemToObject(o, "scopes", scopes);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static void annotate(sg_annotate how, const sg_universe *u, cJSON *tool, const sg_req *r)
{
    if (how == SG_ANNOTATE_SECURITY_SCHEMES) {
        cJSON_DeleteItemFromObjectCaseSensitive(tool, "securitySchemes");
        cJSON *v = security_schemes_json(u, r);
        if (v) cJSON_AddItemToObject(tool, "securitySchemes", v);
        return;
    }
    if (how != SG_ANNOTATE_OAUTH_SCOPE) return;
    cJSON *ann = cJSON_GetObjectItemCaseSensitive(tool, "annotations");
    if (!cJSON_IsObject(ann)) {
        cJSON_DeleteItemFromObjectCaseSensitive(tool, "annotations");
        ann = cJSON_AddObjectToObject(tool, "annotations");
        if (!ann) return;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(ann, "oauthScope");
    cJSON *v = oauth_scope_json(u, r);
    if (v) cJSON_AddItemToObject(ann, "oauthScope", v);
}

/* Drops the items of a list result the caller cannot use and annotates the
 * tools kept. Under 2026-07-28 the result is marked private to the caller:
 * what it lists depends on the token presented. -1 when the result has no
 * such list. */
static int filter_result(list_ctx *c, int kind, cJSON *result)
{
    static const struct {
        const char *key, *method, *name_key;
    } lists[] = {
        [SG_FILTER_TOOLS] = {"tools", "tools/call", "name"},
        [SG_FILTER_PROMPTS] = {"prompts", "prompts/get", "name"},
        [SG_FILTER_RESOURCES] = {"resources", "resources/read", "uri"},
        [SG_FILTER_TEMPLATES] = {"resourceTemplates", "resources/read", "uriTemplate"},
    };
    cJSON *list = cJSON_GetObjectItemCaseSensitive(result, lists[kind].key);
    if (!cJSON_IsArray(list)) return -1;
    sg_catalog *catalog = atomic_load(&((sg_gateway *)c->gw)->catalog);
    if (catalog && kind == SG_FILTER_TOOLS && sg_catalog_learn(catalog, list) != 0)
        sg_log(SG_LOG_WARN, "tool catalogue: could not learn from a tools/list answer");
    const sg_universe *u = sg_policy_universe(c->policy);
    cJSON *item = list->child;
    while (item) {
        cJSON *next = item->next;
        cJSON *name = cJSON_GetObjectItemCaseSensitive(item, lists[kind].name_key);
        int keep = 0;
        if (cJSON_IsString(name) && name->valuestring) {
            /* A listed tool is known: without annotations it has no hints. */
            const cJSON *ann = NULL;
            if (kind == SG_FILTER_TOOLS) {
                ann = cJSON_GetObjectItemCaseSensitive(item, "annotations");
                if (!cJSON_IsObject(ann)) ann = sg_catalog_no_hints();
            }
            sg_policy_input in = {.phase = SG_PHASE_LIST,
                                  .method = lists[kind].method,
                                  .name = name->valuestring,
                                  .token = c->token,
                                  .protocol_version = c->plan->protocol_version,
                                  .annotations = ann};
            sg_policy_decision d;
            keep = sg_bridge_list_visible(c->policy, &in, &c->effective, &c->w->arena, &d);
            if (keep && kind == SG_FILTER_TOOLS) annotate(c->gw->annotate, u, item, d.req);
        }
        if (!keep) cJSON_Delete(cJSON_DetachItemViaPointer(list, item));
        item = next;
    }
    if (strcmp(c->plan->protocol_version, SG_MCP_HEADERS_VERSION) == 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(result, "cacheScope");
        cJSON_AddStringToObject(result, "cacheScope", "private");
    }
    return 0;
}

/* The request a response answers, found by its id: the one whose raw id
 * text is the same, else the one whose id is the same JSON value (an
 * upstream may re-print a number rounded; the answer gets the raw text
 * back). Sets *at to its index; returns 0, or -1 when none or more than
 * one request fits (duplicate ids in a batch, numbers equal once rounded). */
static int request_for(const list_ctx *c, const char *raw, size_t raw_len, const cJSON *id,
                       size_t *at)
{
    const sg_gateway_reply *plan = c->plan;
    size_t found = 0;
    for (size_t i = 0; i < plan->nlists; i++)
        if (raw_len > 0 && strlen(plan->lists[i].id_raw) == raw_len &&
            memcmp(plan->lists[i].id_raw, raw, raw_len) == 0) {
            *at = i;
            found++;
        }
    if (found) return found == 1 ? 0 : -1;
    for (size_t i = 0; i < plan->nlists; i++) {
        cJSON *req_id = cJSON_Parse(plan->lists[i].id_raw);
        if (req_id && cJSON_Compare(req_id, id, 1)) {
            *at = i;
            found++;
        }
        cJSON_Delete(req_id);
    }
    return found == 1 ? 0 : -1;
}

/* Accounts for one message of the answer and filters it in place when it
 * is a list result. A request or notification from the server (it has a
 * method; its id is from the server's own id space) passes as it is. A
 * response must answer a request of the body not answered before; a list
 * request's answer is an error, or a result holding the list, which is
 * filtered and gets the request's raw id text back (cJSON would re-print
 * the id rounded). raw/raw_len: the id's bytes in the answer (0 when
 * absent). Returns 1 when it changed msg, 0 when not, -1 when the message
 * cannot be accounted for. */
static int filter_response(list_ctx *c, cJSON *msg, const char *raw, size_t raw_len)
{
    if (!cJSON_IsObject(msg)) return -1;
    if (cJSON_GetObjectItemCaseSensitive(msg, "method")) return 0;
    cJSON *result = cJSON_GetObjectItemCaseSensitive(msg, "result");
    cJSON *error = cJSON_GetObjectItemCaseSensitive(msg, "error");
    cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    size_t at;
    if (!id || request_for(c, raw, raw_len, id, &at) != 0) return -1;
    if (c->answered[at]++) return -1; /* answered twice */
    const struct sg_gateway_list *l = &c->plan->lists[at];
    if (l->kind == SG_FILTER_NONE) return 0;
    if (!result == !error) return -1; /* JSON-RPC: exactly one of them */
    if (error) return cJSON_IsObject(error) ? 0 : -1;
    if (!cJSON_IsObject(result) || filter_result(c, l->kind, result) != 0) return -1;
    cJSON *id_text = cJSON_CreateRaw(l->id_raw);
    if (!id_text || !cJSON_ReplaceItemInObjectCaseSensitive(msg, "id", id_text)) {
        cJSON_Delete(id_text);
        return -1;
    }
    return 1;
}

/* One JSON-RPC message or batch of the answer, read as strictly as a
 * request body (sg_json_prescan: no duplicate keys, valid UTF-8, nothing
 * after the value). Appends it (re-printed when a list result in it was
 * filtered, else byte for byte) to out. -1 when it is refused. */
static int filter_message(list_ctx *c, const char *json, size_t len, sg_buf *out)
{
    static const sg_json_limits lim = {.max_depth = SG_JSON_MAX_DEPTH_CAP};
    sg_json_scan scan = {0};
    if (sg_json_prescan(json, len, &lim, &scan, NULL) != 0) return -1;
    cJSON *root = cJSON_ParseWithLength(json, len);
    int changed = 0, rc = root && (scan.top_is_array || scan.top_is_object) ? 0 : -1;
    size_t i = 0;
    for (cJSON *m = scan.top_is_array && root ? root->child : root; rc == 0 && m; i++) {
        if (i >= scan.nmessages) {
            rc = -1;
            break;
        }
        sg_json_span sp = scan.id_spans[i];
        int r = filter_response(c, m, json + sp.off, sp.len);
        if (r < 0) rc = -1;
        changed |= r > 0;
        m = scan.top_is_array ? m->next : NULL;
    }
    if (rc == 0 && scan.top_is_array && i == 0) rc = -1; /* [] answers nothing */
    if (rc == 0 && changed) {
        char *printed = cJSON_PrintUnformatted(root);
        if (printed)
            sg_buf_puts(out, printed);
        else
            rc = -1;
        cJSON_free(printed);
    } else if (rc == 0) {
        sg_buf_append(out, json, len);
    }
    cJSON_Delete(root);
    sg_json_scan_free(&scan);
    return rc;
}

static void put_data_lines(sg_buf *out, const char *text, size_t len)
{
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || text[i] == '\n') {
            sg_buf_puts(out, "data: ");
            sg_buf_append(out, text + start, i - start);
            sg_buf_putc(out, '\n');
            start = i + 1;
        }
    }
}

/* Rewrites an SSE stream block by block, read by sg_sse_read (the one SSE
 * reader): every block is kept in order with its other lines (id, event,
 * retry, comments), LF-terminated; its data lines are emitted together
 * where the first one was. A block with empty data (a resumability
 * "priming" event) carries no message and passes as it is. An
 * unterminated last block is dropped (clients never dispatch it). -1 when
 * an event's message is refused. */
static int filter_sse(list_ctx *c, const char *body, size_t len, sg_buf *out)
{
    sg_sse_event ev = SG_SSE_EVENT_INIT;
    sg_buf msg = SG_BUF_INIT;
    size_t pos = 0;
    int rc = 0, r;
    while (rc == 0 && (r = sg_sse_read(body, len, &pos, &ev)) != 0) {
        if (r < 0) {
            rc = -1;
            break;
        }
        const char *other = ev.other.data ? ev.other.data : "";
        sg_buf_append(out, other, ev.data_at);
        if (ev.has_data) {
            sg_buf_reset(&msg);
            if (ev.data.len > 0 && filter_message(c, ev.data.data, ev.data.len, &msg) != 0) rc = -1;
            put_data_lines(out, msg.data ? msg.data : "", msg.len);
        }
        sg_buf_append(out, other + ev.data_at, ev.other.len - ev.data_at);
        sg_buf_putc(out, '\n');
    }
    if (!sg_buf_ok(&msg)) rc = -1;
    sg_sse_event_free(&ev);
    sg_buf_free(&msg);
    return rc;
}

/* The SSE answer that replaces a stream the gateway refused: one error
 * event per request of the body, so that no client waits for an answer
 * that will never come. */
static void refused_sse(const sg_gateway_reply *plan, sg_buf *out)
{
    for (size_t i = 0; i < plan->nlists; i++) {
        sg_buf_puts(out, "event: message\ndata: ");
        sg_mcp_error_render(out, plan->lists[i].id_raw, strlen(plan->lists[i].id_raw),
                            SG_JSONRPC_INTERNAL_ERROR,
                            "Internal error: the upstream's answer could not be filtered", NULL);
        sg_buf_puts(out, "\n\n");
    }
}

int sg_gateway_filter(sg_gateway *gw, unsigned worker_index, const sg_gateway_reply *plan,
                      const char *content_type, const char *body, size_t len, sg_buf *out)
{
    if (worker_index >= gw->nworkers || !content_type) return -1;
    list_ctx c;
    c.w = &gw->workers[worker_index];
    /* The policy the request was decided with, even if a reload came since. */
    c.policy = plan->policy_gen ? plan->policy_gen->policies[worker_index] : c.w->policy;
    c.gw = gw;
    c.plan = plan;
    c.answered = calloc(plan->nlists ? plan->nlists : 1, sizeof *c.answered);
    if (!c.answered) return -1;
    sg_arena_reset(&c.w->arena);
    const char *token_error;
    int unavailable;
    /* The token is checked again (a cache hit): the one seen at request
     * time belonged to the cache, which other requests have used since. An
     * opaque token's answer is looked up without asking again; if it is
     * gone, the caller sees only what an anonymous caller would. */
    authenticate(c.w, plan->authorization, &c.token, &token_error, &unavailable, SG_KID_NO_FETCH);
    sg_scopeset granted;
    const sg_universe *u = sg_policy_universe(c.policy);
    sg_token_granted(u, c.token, &granted);
    sg_universe_effective(u, &granted, &c.effective);
    int rc, sse = 0;
    size_t start = out->len;
    if (strncasecmp(content_type, "application/json", 16) == 0) {
        rc = filter_message(&c, body, len, out);
    } else if (strncasecmp(content_type, "text/event-stream", 17) == 0) {
        sse = 1;
        rc = filter_sse(&c, body, len, out);
    } else {
        rc = -1;
    }
    /* Every list request must have been answered, exactly once (a request
     * that lists nothing may go unanswered: the client learns that from
     * its own timeout, as without the gateway). */
    for (size_t i = 0; rc == 0 && i < plan->nlists; i++)
        if (plan->lists[i].kind != SG_FILTER_NONE && c.answered[i] != 1) rc = -1;
    free(c.answered);
    if (rc != 0 && sse && sg_buf_ok(out)) {
        sg_log(SG_LOG_WARN, "upstream list answer (event stream) could not be filtered: refused");
        out->len = start;
        refused_sse(plan, out);
        rc = 0;
    }
    return rc == 0 && sg_buf_ok(out) ? 0 : -1;
}
