/* generation.c -- the policies in force: live and shadow generations.
 *
 * Why this file exists: a policy is compiled once per worker (each copy owns
 * a Lua state only its worker touches), and a reload must replace all of
 * them without stopping a request half-way. A generation is that set of
 * copies plus what is derived from it (the RFC 9728 metadata and its URL),
 * reference-counted so that requests finish on the policy they started with.
 * The reload and the tool catalogue (which a policy may ask for) follow the
 * generations, so they live here too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sg.h"
#include "gateway/gateway_impl.h"
#include "mcp/metadata.h"

/* ---- policy generations ------------------------------------------------------ */

void gw_gen_release(policy_gen *g)
{
    if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1) return;
    for (unsigned i = 0; i < g->nworkers; i++)
        sg_policy_free(g->policies[i]);
    free(g->policies);
    free(g->metadata_json);
    free(g->resource_metadata_url);
    free(g);
}

policy_gen *gw_gen_retain(policy_gen *g)
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
policy_gen *gw_gen_load(const sg_gateway *gw, const char *path, const char *want_hash,
                        sg_policy *first, char *err, size_t errlen)
{
    policy_gen *g = calloc(1, sizeof *g);
    if (!g || !(g->policies = calloc(gw->nworkers, sizeof *g->policies))) {
        free(g);
        sg_policy_free(first);
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    g->nworkers = gw->nworkers;
    g->policies[0] = first; /* one copy fewer to load */
    for (unsigned i = 0; i < gw->nworkers; i++) {
        sg_buf report = SG_BUF_INIT;
        if (!g->policies[i]) g->policies[i] = sg_policy_new(path, &gw->limits, &report);
        if (!g->policies[i]) copy_report(err, errlen, report.data);
        sg_buf_free(&report);
        if (!g->policies[i]) goto fail;
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
    gw_gen_release(g);
    return NULL;
}

/* Makes the worker decide with the current policy, if a reload replaced
 * the one it has. Called at request boundaries only, so a request never
 * sees two policies. The hot path is one atomic load. */
void gw_worker_refresh(sg_gateway *gw, worker *w)
{
    if (atomic_load_explicit(&gw->generation, memory_order_acquire) == w->seen) return;
    pthread_mutex_lock(&gw->gen_mu);
    policy_gen *g = gw_gen_retain(gw->current);
    policy_gen *shadow = gw->shadow ? gw_gen_retain(gw->shadow) : NULL;
    unsigned long seen = atomic_load(&gw->generation);
    pthread_mutex_unlock(&gw->gen_mu);
    int first = w->gen == NULL;
    gw_gen_release(w->gen);
    gw_gen_release(w->shadow_gen);
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
int gw_catalog_follow(sg_gateway *gw, const sg_policy *p, char *err, size_t errlen)
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
const cJSON *gw_worker_tool_annotations(void *ud, const char *tool)
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

/* ---- reloading, live and shadow ----------------------------------------------- */

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
    policy_gen *g = gw_gen_load(gw, path, checked, NULL, err, sizeof err);
    if (!g) {
        sg_buf_puts(report, err);
        return -1;
    }
    pthread_mutex_lock(&gw->gen_mu);
    policy_gen *old = *slot;
    *slot = g;
    atomic_fetch_add_explicit(&gw->generation, 1, memory_order_release);
    pthread_mutex_unlock(&gw->gen_mu);
    gw_gen_release(old);
    return 0;
}

int sg_gateway_reload(sg_gateway *gw, sg_buf *report, char hash[SG_POLICY_HASH_LEN + 1])
{
    int rc = reload_into(gw, gw->policy_path, &gw->current, report, hash);
    char err[4096];
    if (rc == 0 && gw_catalog_follow(gw, gw->current->policies[0], err, sizeof err) != 0)
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
        gw_catalog_follow(gw, gw->shadow->policies[0], err, sizeof err) != 0)
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
    policy_gen *g = gw_gen_retain(gw->current);
    policy_gen *shadow = gw->shadow ? gw_gen_retain(gw->shadow) : NULL;
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
    gw_gen_release(g);
    gw_gen_release(shadow);
    return files;
}
