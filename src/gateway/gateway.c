/* gateway.c -- the decision path of one MCP request (see gateway.h).
 *
 * Why this file exists: http.c knows sockets and limits, mcp.c messages,
 * token.c tokens, policy.c requirements and challenge.c answers; this is the
 * one place that strings them together in the order the specs demand
 * (transport checks, then authentication and authorization of every message,
 * then the plan: forward, answer or wait), so the order cannot drift between
 * code paths. The policies in force live in generation.c, the audit records
 * in auditrec.c and the rewriting of list answers in filter.c
 * (gateway_impl.h). Each worker context is touched by one thread only, so
 * nothing here locks. */
#include "gateway/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>

#include "base/metrics.h"
#include "gateway/gateway_impl.h"
#include "mcp/sse.h"

/* JSON-RPC error codes in 401/403 bodies (implementation-defined range). */
#define GW_ERR_UNAUTHORIZED (-32001)
#define GW_ERR_FORBIDDEN    (-32003)

/* The 503 answer's message when an opaque token could not be introspected. */
#define AS_UNAVAILABLE_MESSAGE                                                                     \
    "The authorization server could not be reached to check the token; try again later"

#define ARENA_BLOCK (16 * 1024)

const char *gw_header_get(const sg_gateway_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (sg_header_name_is(req->headers[i].name, name)) return req->headers[i].value;
    return NULL;
}

void sg_gateway_reply_init(sg_gateway_reply *r)
{
    memset(r, 0, sizeof *r);
}

void sg_gateway_reply_free(sg_gateway_reply *r)
{
    free(r->authorization);
    free(r->protocol_version);
    for (size_t i = 0; i < r->nlists; i++)
        free(r->lists[i].id_raw);
    free(r->lists);
    for (size_t i = 0; i < r->nidentity; i++)
        if (r->identity[i].value != r->request_id) free((char *)r->identity[i].value);
    gw_gen_release(r->policy_gen);
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
static sg_gateway_action answer(sg_gateway_reply *out, int status, const char *id, size_t id_len,
                                int code, const char *message)
{
    out->status = status;
    out->content_type = "application/json";
    sg_buf_reset(&out->body);
    sg_mcp_error_render(&out->body, id, id_len, code, message, NULL);
    if (!sg_buf_ok(&out->body)) out->status = 500;
    return SG_GATEWAY_ANSWER;
}

/* ---- construction ------------------------------------------------------------- */

/* A random id for this process, so generated request ids are unique
 * across restarts; the clock when the random source fails (ids need not be
 * secret). */
static void make_boot_id(sg_gateway *gw)
{
    unsigned char rnd[8];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        uint64_t t = sg_now_mono_ns() ^ (uint64_t)(uintptr_t)gw;
        memcpy(rnd, &t, sizeof rnd);
    }
    sg_hex(rnd, sizeof rnd, gw->boot_id);
}

/* The configuration's strings the gateway keeps. Returns 0, or -1 when out
 * of memory. */
static int copy_strings(sg_gateway *gw, const sg_gateway_config *cfg)
{
    gw->policy_path = strdup(cfg->policy_path);
    gw->public_url = cfg->public_url ? strdup(cfg->public_url) : NULL;
    gw->default_authorization_server =
        cfg->default_authorization_server ? strdup(cfg->default_authorization_server) : NULL;
    gw->upstream_url = cfg->upstream_url ? strdup(cfg->upstream_url) : NULL;
    gw->upstream_ca = cfg->upstream_ca ? strdup(cfg->upstream_ca) : NULL;
    return !gw->policy_path || (cfg->public_url && !gw->public_url) ||
                   (cfg->default_authorization_server && !gw->default_authorization_server) ||
                   (cfg->upstream_url && !gw->upstream_url) ||
                   (cfg->upstream_ca && !gw->upstream_ca)
               ? -1
               : 0;
}

/* Each worker's arena, decision and token cache. Returns 0, or -1 when out
 * of memory (what was made is freed with the gateway). */
static int init_workers(sg_gateway *gw, const sg_gateway_config *cfg)
{
    for (unsigned i = 0; i < cfg->workers; i++) {
        worker *w = &gw->workers[i];
        w->gw = gw;
        w->index = i;
        sg_arena_init(&w->arena, ARENA_BLOCK);
        sg_decision_init(&w->decision);
        if (!(w->tcache = sg_tcache_new(cfg->verifier, cfg->token_cache_entries))) return -1;
    }
    return 0;
}

sg_gateway *sg_gateway_new(const sg_gateway_config *cfg, char *err, size_t errlen)
{
    sg_policy *first = cfg->preloaded_policy; /* ours from here on */
    if (cfg->workers == 0 || !cfg->policy_path || !cfg->verifier) {
        sg_policy_free(first);
        sg_errf(err, errlen, "gateway: a policy, a verifier and at least one worker are needed");
        return NULL;
    }
    sg_gateway *gw = calloc(1, sizeof *gw);
    if (!gw || !(gw->workers = calloc(cfg->workers, sizeof *gw->workers))) {
        free(gw);
        sg_policy_free(first);
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
    if (copy_strings(gw, cfg) != 0 || init_workers(gw, cfg) != 0) {
        sg_errf(err, errlen, "out of memory");
        goto fail;
    }
    gw->audit = cfg->audit;
    if (cfg->shadow_policy_path && !cfg->audit) {
        sg_errf(err, errlen, "a shadow policy needs the audit log: its disagreements go there");
        goto fail;
    }
    if (cfg->audit) make_boot_id(gw);
    gw->current = gw_gen_load(gw, gw->policy_path, NULL, first, err, errlen);
    first = NULL; /* taken over, loaded or not */
    if (!gw->current) goto fail;
    if (cfg->shadow_policy_path) {
        char serr[4096];
        if (!(gw->shadow_path = strdup(cfg->shadow_policy_path)) ||
            !(gw->shadow = gw_gen_load(gw, gw->shadow_path, NULL, NULL, serr, sizeof serr))) {
            sg_errf(err, errlen, "shadow policy: %s", gw->shadow_path ? serr : "out of memory");
            goto fail;
        }
    }
    if (gw_catalog_follow(gw, gw->current->policies[0], err, errlen) != 0) goto fail;
    /* A candidate that reads the upstream's annotations needs the catalogue
     * even when the live policy does not. */
    if (gw->shadow && !atomic_load(&gw->catalog) &&
        gw_catalog_follow(gw, gw->shadow->policies[0], err, errlen) != 0)
        goto fail;
    atomic_store(&gw->generation, 1);
    for (unsigned i = 0; i < cfg->workers; i++)
        gw_worker_refresh(gw, &gw->workers[i]);
    return gw;
fail:
    sg_policy_free(first);
    sg_gateway_free(gw);
    return NULL;
}

void sg_gateway_free(sg_gateway *gw)
{
    if (!gw) return;
    for (unsigned i = 0; i < gw->nworkers; i++) {
        worker *w = &gw->workers[i];
        gw_gen_release(w->gen);
        gw_gen_release(w->shadow_gen);
        sg_buf_free(&w->audit_scratch);
        sg_buf_free(&w->audit_who.key);
        sg_buf_free(&w->audit_who.who);
        sg_buf_free(&w->audit_who.granted);
        sg_buf_free(&w->audit_rule.text);
        sg_buf_free(&w->audit_middle.key);
        sg_buf_free(&w->audit_middle.text);
        sg_buf_free(&w->audit_tail.text);
        for (unsigned k = 0; k < w->audit_spares.n; k++)
            sg_buf_free(&w->audit_spares.bufs[k]);
        sg_catalog_release(w->tools);
        sg_tcache_free(w->tcache);
        sg_introspect_release(&w->introspected);
        sg_arena_free(&w->arena);
        sg_decision_free(&w->decision);
    }
    gw_gen_release(gw->current);
    gw_gen_release(gw->shadow);
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

sg_gateway_worker *sg_gateway_worker_of(sg_gateway *gw, unsigned i)
{
    return i < gw->nworkers ? &gw->workers[i] : NULL;
}

int sg_gateway_metadata(sg_gateway *gw, sg_gateway_worker *w, sg_buf *out)
{
    if (!w || w->gw != gw) return -1;
    gw_worker_refresh(gw, w);
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
uint64_t gw_authenticate(worker *w, const char *authz, const sg_token **token,
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
        e = sg_introspect_token(in, t, len, sg_now_unix_ms(), kw == SG_KID_DEFER, &ticket,
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
        if (sg_header_name_is(name, "Authorization") || sg_header_name_is(name, "Cookie")) continue;
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

/* scopegate_decisions_total for one decided body (each: its messages'
 * decisions). Labels are bounded: the method is one MCP defines (else
 * "other"; "batch" for a batch), the tool a name the policy in force has a
 * rule for (else "other"), so clients cannot mint series. */
static void count_decision(const sg_mcp_body *body, const sg_policy_decision *each,
                           sg_outcome outcome)
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
    if (m->method && strcmp(m->method, "tools/call") == 0)
        tool = m->name && each && each[0].named ? m->name : "other";
    sg_metric_decision(method, tool, o);
}

/* The transport checks of a POST body after its headers passed: the body
 * parses as JSON-RPC, every message is valid, and the MCP-Method / Mcp-Name
 * headers agree with it. Fills *body (freed by the caller either way).
 * Returns 0, or -1 when *out is the 400 answer. */
static int check_post_body(const sg_gateway *gw, const sg_gateway_request *req, const char *version,
                           sg_arena *scratch, sg_mcp_body *body, sg_gateway_reply *out)
{
    int rc = sg_mcp_parse(req->body, req->body_len, &gw->mcp_limits, scratch, body);
    if (rc != 0) {
        const sg_mcp_msg *m = body->nmsgs == 1 && !body->is_batch ? &body->msgs[0] : NULL;
        answer(out, 400, m ? m->id_raw : NULL, m ? m->id_len : 0, rc, body->error_message);
        return -1;
    }
    for (size_t i = 0; i < body->nmsgs; i++) {
        const sg_mcp_msg *m = &body->msgs[i];
        if (m->kind == SG_MCP_INVALID) {
            answer(out, 400, m->id_raw, m->id_len, m->error_code, m->error_message);
            return -1;
        }
    }
    char msg[SG_MCP_MESSAGE_LEN];
    int hc = sg_mcp_check_headers(body, version, gw_header_get(req, "Mcp-Method"),
                                  gw_header_get(req, "Mcp-Name"), msg, sizeof msg);
    if (hc != 0) {
        const sg_mcp_msg *m = body->nmsgs == 1 ? &body->msgs[0] : NULL;
        answer(out, 400, m ? m->id_raw : NULL, m ? m->id_len : 0, hc, msg);
        return -1;
    }
    return 0;
}

/* Turns the worker's decision on a body into the plan: forward (with the
 * identity headers and, for list requests, what to filter by which policy)
 * or the 401/403 answer with its challenge; 500 when out of memory. */
static sg_gateway_action plan_decided(worker *w, const sg_gateway *gw,
                                      const sg_gateway_request *req, const sg_mcp_body *body,
                                      const sg_token *token, const char *version,
                                      sg_gateway_reply *out)
{
    /* The id answered with: a single request's; null for a batch. */
    const sg_mcp_msg *single = body->is_batch ? NULL : &body->msgs[0];
    const char *id = single ? single->id_raw : NULL;
    size_t id_len = id ? single->id_len : 0;
    int accepted_only = 1;
    for (size_t i = 0; i < body->nmsgs; i++)
        if (body->msgs[i].kind == SG_MCP_REQUEST) accepted_only = 0;

    sg_decision *d = &w->decision;
    if (!sg_buf_ok(&d->challenge) || !sg_buf_ok(&d->message))
        return answer(out, 500, id, id_len, SG_JSONRPC_INTERNAL_ERROR, "Internal error");
    if (d->outcome == SG_ALLOW) {
        if (id && id_len < sizeof out->id_raw) {
            memcpy(out->id_raw, id, id_len);
            out->id_raw[id_len] = 0;
        }
        out->accepted_only = accepted_only;
        out->status = 0;
        plan_identity(gw, token, out);
        if (plan_lists(body, gw_header_get(req, "Authorization"), version, out) != 0)
            return answer(out, 500, id, id_len, SG_JSONRPC_INTERNAL_ERROR, "Internal error");
        if (out->filter)
            out->policy_gen = gw_gen_retain(w->gen); /* filtered by the policy that allowed it */
        return SG_GATEWAY_FORWARD;
    }
    answer(out, d->status, id, id_len,
           d->outcome == SG_UNAUTHORIZED ? GW_ERR_UNAUTHORIZED : GW_ERR_FORBIDDEN,
           d->message.data ? d->message.data : "Forbidden");
    if (d->challenge.len)
        sg_buf_append(&out->www_authenticate, d->challenge.data, d->challenge.len);
    if (!sg_buf_ok(&out->www_authenticate))
        answer(out, 500, id, id_len, SG_JSONRPC_INTERNAL_ERROR, "Internal error");
    return SG_GATEWAY_ANSWER;
}

/* A POST: transport checks, then authentication, then the policy's
 * decision on every message, then the plan (and its audit records). */
static sg_gateway_action handle_post(worker *w, const sg_gateway *gw, const sg_gateway_request *req,
                                     sg_gateway_reply *out)
{
    const char *ctype = gw_header_get(req, "Content-Type");
    if (!ctype || strncasecmp(ctype, "application/json", 16) != 0 ||
        (ctype[16] != 0 && ctype[16] != ';' && ctype[16] != ' '))
        return answer(out, 415, NULL, 0, SG_JSONRPC_INVALID_REQUEST,
                      "Invalid Request: Content-Type must be application/json");
    const char *vh = gw_header_get(req, "MCP-Protocol-Version");
    const char *version = sg_mcp_effective_version(vh);
    if (vh && !sg_mcp_version_supported(vh))
        return answer(out, 400, NULL, 0, SG_JSONRPC_INVALID_REQUEST,
                      "Invalid Request: unsupported MCP-Protocol-Version");

    sg_mcp_body body; /* in the request's arena, tree and all: no malloc */
    if (check_post_body(gw, req, version, &w->arena, &body, out) != 0) {
        sg_mcp_body_free(&body);
        return SG_GATEWAY_ANSWER;
    }

    const sg_token *token;
    const char *token_error;
    int unavailable;
    out->wait_ticket = gw_authenticate(w, gw_header_get(req, "Authorization"), &token, &token_error,
                                       &unavailable, kid_wait_for(req));
    if (out->wait_ticket) {
        sg_mcp_body_free(&body);
        return SG_GATEWAY_WAIT;
    }
    if (unavailable) {
        const sg_mcp_msg *m = body.is_batch ? NULL : &body.msgs[0];
        answer(out, 503, m ? m->id_raw : NULL, m ? m->id_len : 0, SG_JSONRPC_INTERNAL_ERROR,
               AS_UNAVAILABLE_MESSAGE);
        sg_mcp_body_free(&body);
        return SG_GATEWAY_ANSWER;
    }
    sg_header *hdrs;
    size_t nhdrs;
    sg_policy_decision *each = NULL; /* per message, for the audit log and the metrics */
    sg_bridge_caller caller = {.token = token,
                               .token_error = token_error,
                               .protocol_version = version,
                               .annotations = gw_worker_tool_annotations,
                               .annotations_ud = w};
    int have_caller = policy_headers(req, &w->arena, &hdrs, &nhdrs) == 0;
    if (have_caller) {
        caller.headers = hdrs;
        caller.nheaders = nhdrs;
        if ((gw->audit || sg_metrics_enabled()) &&
            (each = sg_arena_alloc(&w->arena, body.nmsgs * sizeof *each)))
            memset(each, 0, body.nmsgs * sizeof *each);
        sg_bridge_decide(w->policy, &body, &caller, &w->site, &w->arena, each, &w->decision);
    } else {
        sg_decide(&w->site, &sg_req_deny, token, token_error, &w->decision);
    }
    count_decision(&body, each, w->decision.outcome);
    sg_gateway_action result = plan_decided(w, gw, req, &body, token, version, out);
    if (gw->audit)
        gw_audit_begin(gw, w, req, &body, each, token, have_caller ? &caller : NULL, out);
    sg_mcp_body_free(&body);
    return result;
}

/* GET opens the server's stream and DELETE ends a session: neither carries a
 * message to decide on, so any valid token will do (a session id is never
 * proof of identity); a policy with public rules lets anonymous callers in. */
static sg_gateway_action handle_stream_or_delete(worker *w, const sg_gateway *gw,
                                                 const sg_gateway_request *req,
                                                 sg_gateway_reply *out)
{
    const char *vh = gw_header_get(req, "MCP-Protocol-Version");
    if (vh && !sg_mcp_version_supported(vh))
        return answer(out, 400, NULL, 0, SG_JSONRPC_INVALID_REQUEST,
                      "Invalid Request: unsupported MCP-Protocol-Version");
    if (vh && strcmp(vh, SG_MCP_HEADERS_VERSION) == 0) {
        /* That version is stateless: no GET stream, no sessions. */
        answer(out, 405, NULL, 0, SG_JSONRPC_INVALID_REQUEST, "Method not allowed");
        out->allow = "POST";
        return SG_GATEWAY_ANSWER;
    }
    const sg_token *token;
    const char *token_error;
    int unavailable;
    out->wait_ticket = gw_authenticate(w, gw_header_get(req, "Authorization"), &token, &token_error,
                                       &unavailable, kid_wait_for(req));
    if (out->wait_ticket) return SG_GATEWAY_WAIT;
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
        return SG_GATEWAY_FORWARD;
    }
    answer(out, d->status, NULL, 0,
           d->outcome == SG_UNAUTHORIZED ? GW_ERR_UNAUTHORIZED : GW_ERR_FORBIDDEN,
           d->message.data ? d->message.data : "Forbidden");
    if (d->challenge.len)
        sg_buf_append(&out->www_authenticate, d->challenge.data, d->challenge.len);
    return SG_GATEWAY_ANSWER;
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

sg_gateway_action sg_gateway_handle(sg_gateway *gw, const sg_gateway_request *req,
                                    sg_gateway_reply *out)
{
    sg_gateway_reply_free(out);
    worker *w = req->worker;
    if (!w || w->gw != gw)
        return answer(out, 503, NULL, 0, SG_JSONRPC_INTERNAL_ERROR, "No worker available");
    gw_worker_refresh(gw, w);
    sg_arena_reset(&w->arena);
    sg_gateway_action rc;
    if (strcmp(req->method, "POST") == 0) {
        rc = handle_post(w, gw, req, out);
    } else if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "DELETE") == 0) {
        rc = handle_stream_or_delete(w, gw, req, out);
    } else {
        answer(out, 405, NULL, 0, SG_JSONRPC_INVALID_REQUEST, "Method not allowed");
        out->allow = "GET, POST, DELETE";
        rc = SG_GATEWAY_ANSWER;
    }
    if (gw->audit) {
        /* A request decided without its messages (refused before them, GET,
         * DELETE) gets one record without a message. */
        if (rc != SG_GATEWAY_WAIT && out->naudit == 0)
            gw_audit_begin(gw, w, req, NULL, NULL, w->audit_token, NULL, out);
        w->audit_token = NULL;
    }
    return rc;
}
