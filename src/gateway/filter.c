/* filter.c -- list answers rewritten for the caller.
 *
 * Why this file exists: the access decision (gateway.c) ends when a request
 * is forwarded; what comes back for tools/list, prompts/list,
 * resources/list and resources/templates/list must still be cut to what the
 * caller may use, and tools annotated with what they require (the
 * securitySchemes in disjunctive normal form). That is response rewriting:
 * JSON or SSE, read as strictly as a request, by the policy the request
 * started with. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "base/sg.h"
#include "gateway/gateway_impl.h"
#include "mcp/sse.h"

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

int sg_gateway_filter(sg_gateway *gw, sg_gateway_worker *w, const sg_gateway_reply *plan,
                      const char *content_type, const char *body, size_t len, sg_buf *out)
{
    if (!w || w->gw != gw || !content_type) return -1;
    list_ctx c;
    c.w = w;
    /* The policy the request was decided with, even if a reload came since. */
    c.policy = plan->policy_gen ? plan->policy_gen->policies[w->index] : c.w->policy;
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
    gw_authenticate(c.w, plan->authorization, &c.token, &token_error, &unavailable,
                    SG_KID_NO_FETCH);
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
