/* auditrec.c -- the audit records of one decided request.
 *
 * Why this file exists: the decision path (gateway.c) should read as the
 * order of checks, not as JSON formatting; and the record's format
 * (docs/audit.schema.json) has one owner. gateway.c calls gw_audit_begin
 * once a request is decided; the HTTP layer completes the records with the
 * outcome through sg_gateway_audit_finish; audit.c writes them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/json.h"
#include "base/sg.h"
#include "gateway/gateway_impl.h"
#include "mcp/sse.h"

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
/* Bytes a record usually takes (allocated at once for each message). */
#define AUDIT_RECORD_GUESS 640

/* A literal: one copy of a length known when compiling. */
#define J_LIT(b, text) sg_buf_append((b), text, sizeof(text) - 1)
/* ,"key": for a literal key: one copy of a length known when compiling. */
#define J_KEY(b, key) sg_buf_append((b), ",\"" key "\":", sizeof(",\"" key "\":") - 1)

static void j_string(sg_buf *b, const char *s)
{
    if (!s) {
        sg_buf_puts(b, "null");
        return;
    }
    size_t n = strlen(s);
    sg_json_append_string(b, s, n < AUDIT_MAX_STRING ? n : AUDIT_MAX_STRING);
}

#define J_FIELD(b, key, s)                                                                         \
    do {                                                                                           \
        J_KEY(b, key);                                                                             \
        j_string(b, s);                                                                            \
    } while (0)

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

/* RFC 3339 UTC with milliseconds, quoted: "2026-12-04T16:10:00.123Z" (26
 * bytes and the NUL), of mono_ns, a sg_now_mono_ns() time (0: now);
 * returns the length (4 for null). Every record has one, so nothing is
 * read from the clocks per record: the offset of the wall clock from the
 * monotonic one is taken once a second per thread, and the text up to the
 * seconds is made again only when the second changes. */
static size_t j_time(char out[32], uint64_t mono_ns)
{
    static _Thread_local uint64_t offset_taken = UINT64_MAX; /* in this monotonic second */
    static _Thread_local int64_t offset_ns;
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[24]; /* "2026-12-04T16:10:00 */
    if (!mono_ns) mono_ns = sg_now_mono_ns();
    if (mono_ns / 1000000000u != offset_taken) {
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        int64_t wall = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec;
        offset_ns = wall - (int64_t)sg_now_mono_ns();
        offset_taken = mono_ns / 1000000000u;
    }
    int64_t wall = (int64_t)mono_ns + offset_ns;
    time_t sec = (time_t)(wall / 1000000000);
    if (sec != cached_sec) {
        struct tm tm;
        gmtime_r(&sec, &tm);
        cached[0] = '"';
        if (strftime(cached + 1, sizeof cached - 1, "%Y-%m-%dT%H:%M:%S", &tm) != 19) {
            memcpy(out, "null", 5);
            return 4;
        }
        cached_sec = sec;
    }
    unsigned ms = (unsigned)(wall % 1000000000 / 1000000);
    memcpy(out, cached, 20);
    out[20] = '.';
    out[21] = (char)('0' + ms / 100);
    out[22] = (char)('0' + ms / 10 % 10);
    out[23] = (char)('0' + ms % 10);
    memcpy(out + 24, "Z\"", 3);
    return 26;
}

/* A client's X-Request-Id is kept only when it is 1 to SG_GATEWAY_REQUEST_ID_MAX
 * characters of [A-Za-z0-9._:-] (and no part of its credential): anything
 * else could be a header or log injection, and is replaced by a generated
 * id. */
static int request_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= SG_GATEWAY_REQUEST_ID_MAX ||
            !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return n > 0;
}

/* The part of a record every message of the request shares, from the
 * opening brace: type, time, request id, client, who (verified), policy. */
/* A string the gateway made or checked itself and that holds nothing JSON
 * escapes (a request id, an address, a policy hash): quoted as it is. */
static void j_plain(sg_buf *b, const char *s)
{
    sg_buf_putc(b, '"');
    sg_buf_puts(b, s);
    sg_buf_putc(b, '"');
}

/* Appends a kept part, or marks b failed when making the part ran out of
 * memory (a record is never written with a piece missing). */
static void append_part(sg_buf *b, const sg_buf *part)
{
    if (!sg_buf_ok(part))
        b->oom = 1;
    else if (part->len)
        sg_buf_append(b, part->data, part->len);
}

/* Who the caller is, as the record says it (sub, client_id, iss) and what
 * it was granted: escaped once per token and kept while the same caller
 * comes back (the key is the token's verified payload, byte for byte).
 * Returns the worker's cache, made for this token. */
static const audit_who_cache *who_part(worker *w, const sg_token *token)
{
    audit_who_cache *c = &w->audit_who;
    if (!c->valid || !token || !token->claims_json || c->key.len != token->claims_json_len ||
        memcmp(c->key.data, token->claims_json, c->key.len) != 0) {
        sg_buf_reset(&c->key);
        sg_buf_reset(&c->who);
        sg_buf_reset(&c->granted);
        J_FIELD(&c->who, "sub", token ? token->sub : NULL);
        J_FIELD(&c->who, "client_id", token ? token->client_id : NULL);
        J_FIELD(&c->who, "iss", token ? token->iss : NULL);
        J_KEY(&c->granted, "granted");
        sg_buf_putc(&c->granted, '[');
        for (int k = 0; token && k < token->nscopes; k++) {
            if (k) sg_buf_putc(&c->granted, ',');
            j_string(&c->granted, token->scopes[k]);
        }
        sg_buf_putc(&c->granted, ']');
        /* Kept only for a token whose payload identifies it, and only when
         * every part was made whole (else it is made again next time). */
        c->valid = token && token->claims_json;
        if (c->valid) sg_buf_append(&c->key, token->claims_json, token->claims_json_len);
        c->valid = c->valid && sg_buf_ok(&c->key) && sg_buf_ok(&c->who) && sg_buf_ok(&c->granted);
        c->serial++;
    }
    return c;
}

/* ,"http_method":..<who>,"policy":.. */
static void audit_caller(sg_buf *b, const audit_who_cache *who, const sg_gateway_request *req,
                         const char *hash)
{
    J_FIELD(b, "http_method", req->method);
    append_part(b, &who->who);
    J_KEY(b, "policy");
    j_plain(b, hash); /* hex digits */
}

/* What every record of one request starts with: its time and its id,
 * each with its length. */
typedef struct audit_stamp {
    char time[32]; /* j_time */
    size_t time_len;
    const char *rid; /* request_id(): [A-Za-z0-9._:-] only */
    size_t rid_len;
} audit_stamp;

/* {"type":..,"time":..,"request_id":..,"client":.. -- every record's
 * opening, written in place after one reserve: its pieces are the
 * gateway's own text of known length (no escaping), and as separate
 * appends they cost twice as much. */
#define PUT(q, p, n)     (memcpy((q), (p), (n)), (q) + (n))
#define PUT_LIT(q, text) PUT((q), text, sizeof(text) - 1)
static void audit_head(sg_buf *b, int shadow, const audit_stamp *st, const sg_gateway_request *req)
{
    static const char decision[] = "{\"type\":\"decision\",\"time\":";
    static const char shadow_type[] = "{\"type\":\"shadow\",\"time\":";
    static const char rid_key[] = ",\"request_id\":\"", client_key[] = "\",\"client\":";
    /* A numeric address the HTTP layer formatted, or null. */
    size_t client_len = req->client_addr ? strlen(req->client_addr) : 0;
    /* Each sizeof counts a NUL: room for the two quotes or "null". */
    size_t most = sizeof decision + st->time_len + sizeof rid_key + st->rid_len +
                  sizeof client_key + client_len + sizeof "null";
    if (sg_buf_reserve(b, most) != 0) return;
    char *q = b->data + b->len;
    q = shadow ? PUT_LIT(q, shadow_type) : PUT_LIT(q, decision);
    q = PUT(q, st->time, st->time_len);
    q = PUT_LIT(q, rid_key);
    q = PUT(q, st->rid, st->rid_len);
    q = PUT_LIT(q, client_key);
    if (req->client_addr) {
        *q++ = '"';
        q = PUT(q, req->client_addr, client_len);
        *q++ = '"';
    } else {
        q = PUT_LIT(q, "null");
    }
    *q = '\0';
    b->len = (size_t)(q - b->data);
}
#undef PUT_LIT
#undef PUT

static void audit_message(sg_buf *b, const sg_mcp_body *body, size_t i)
{
    const sg_mcp_msg *m = body ? &body->msgs[i] : NULL;
    J_FIELD(b, "method", m ? m->method : NULL);
    J_FIELD(b, "name", m ? m->name : NULL);
    if (body && body->is_batch) {
        sg_buf_puts(b, ",\"batch\":{\"index\":");
        sg_buf_put_uint(b, i);
        sg_buf_puts(b, ",\"size\":");
        sg_buf_put_uint(b, body->nmsgs);
        sg_buf_putc(b, '}');
    }
}

/* The rule of a decision: its name, file and line escaped once and kept
 * while the next decision names the same rule. A rule with a line is the
 * policy's own: its name and file live as long as the policy does, so
 * while the worker keeps the same generation the pointers say which rule
 * it is (a reload may put another rule at the same address, but it comes
 * with a new generation). A built-in rule (no line) is made per request
 * and never kept. Returns the worker's cache, made for this rule. */
static const audit_rule_cache *rule_part(worker *w, const sg_policy_decision *d)
{
    const char *rule = d && d->rule ? d->rule : NULL;
    const char *file = d && d->line > 0 ? d->file : NULL;
    int line = file ? d->line : 0;
    audit_rule_cache *c = &w->audit_rule;
    /* valid: c->rule and c->file are set, so equal pointers are not NULL */
    if (c->valid && c->rule == rule && c->file == file && c->line == line && c->seen == w->seen)
        return c;
    sg_buf_reset(&c->text);
    J_FIELD(&c->text, "rule", rule);
    J_FIELD(&c->text, "rule_file", file);
    J_KEY(&c->text, "rule_line");
    if (line > 0)
        sg_buf_put_uint(&c->text, (unsigned)line);
    else
        sg_buf_puts(&c->text, "null");
    c->rule = rule;
    c->file = file;
    c->line = line;
    c->seen = w->seen;
    c->valid = rule && file && sg_buf_ok(&c->text);
    c->serial++;
    return c;
}

static void audit_required(sg_buf *b, const sg_universe *u, const sg_policy_decision *d)
{
    J_KEY(b, "required");
    if (d && d->req)
        j_requirement(b, u, d->req);
    else
        sg_buf_puts(b, "null");
}

static void audit_rule(sg_buf *b, worker *w, const sg_universe *u, const sg_policy_decision *d)
{
    append_part(b, &rule_part(w, d)->text);
    audit_required(b, u, d);
}

/* The strings of a middle's key: the HTTP method, the message's method and
 * name (NULL for none), kept in its key buffer with their NULs. */
enum { MIDDLE_STRINGS = AUDIT_MIDDLE_STRINGS };
#define MIDDLE_ABSENT ((size_t)-1) /* at[i] of a string that is not there */

static int middle_key_is(const audit_middle_cache *c, const char *const s[MIDDLE_STRINGS])
{
    for (int i = 0; i < MIDDLE_STRINGS; i++) {
        if (!s[i] != (c->at[i] == MIDDLE_ABSENT)) return 0;
        if (s[i] && strcmp(c->key.data + c->at[i], s[i]) != 0) return 0;
    }
    return 1;
}

/* A requirement the middle may keep, as a number (the policy in force is
 * part of the middle's key, and with it the scopes' names): 0 for none,
 * 1 + kind for a literal one, 64 + the scope's id for one scope; -1 for
 * all_of and any_of, which are made every time. */
static long required_key(const sg_policy_decision *d)
{
    if (!d || !d->req) return 0;
    switch (d->req->kind) {
    case SG_REQ_SCOPE:
        return 64 + (long)d->req->scope;
    case SG_REQ_ALL:
    case SG_REQ_ANY:
        return -1;
    default:
        return 1 + (long)d->req->kind;
    }
}

/* The middle of a decision record for one message outside a batch, from
 * ,"http_method" to the granted scopes: kept while the next message repeats
 * the caller, the rule, its requirement, the policy, the decision and the
 * strings of the key (the usual case: a client calling the same tool
 * again). */
static void audit_middle(sg_buf *b, worker *w, const sg_universe *u, const audit_who_cache *who,
                         const sg_gateway_request *req, const sg_mcp_msg *m, const char *decision,
                         const sg_policy_decision *d)
{
    const audit_rule_cache *rule = rule_part(w, d);
    audit_middle_cache *c = &w->audit_middle;
    const char *const s[MIDDLE_STRINGS] = {req->method, m ? m->method : NULL, m ? m->name : NULL};
    long required = required_key(d);
    if (!c->valid || !who->valid || !rule->valid || c->who_serial != who->serial ||
        c->rule_serial != rule->serial || c->seen != w->seen || c->decision != decision ||
        c->required != required || !middle_key_is(c, s)) {
        sg_buf_reset(&c->key);
        sg_buf_reset(&c->text);
        audit_caller(&c->text, who, req, sg_policy_hash(w->policy));
        J_FIELD(&c->text, "method", s[1]);
        J_FIELD(&c->text, "name", s[2]);
        J_FIELD(&c->text, "decision", decision);
        append_part(&c->text, &rule->text);
        if (required >= 0) {
            audit_required(&c->text, u, d);
            append_part(&c->text, &who->granted);
        }
        for (int i = 0; i < MIDDLE_STRINGS; i++) {
            c->at[i] = s[i] ? c->key.len : MIDDLE_ABSENT;
            if (s[i]) sg_buf_append(&c->key, s[i], strlen(s[i]) + 1);
        }
        c->who_serial = who->serial;
        c->rule_serial = rule->serial;
        c->seen = w->seen;
        c->decision = decision;
        c->required = required;
        c->valid = who->valid && rule->valid && sg_buf_ok(&c->key) && sg_buf_ok(&c->text);
    }
    append_part(b, &c->text);
    if (required < 0) {
        audit_required(b, u, d);
        append_part(b, &who->granted);
    }
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
                         const sg_policy_decision *live, const audit_stamp *st)
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
        audit_head(b, 1, st, req);
        audit_caller(b, who_part(w, caller->token), req, sg_policy_hash(w->policy));
        audit_message(b, body, i);
        sg_buf_puts(b, ",\"shadow\":{\"policy\":");
        j_string(b, sg_policy_hash(w->shadow_policy));
        sg_buf_puts(b, ",\"live\":{\"decision\":");
        j_string(b, lo);
        audit_rule(b, w, lu, &live[i]);
        sg_buf_puts(b, "},\"candidate\":{\"decision\":");
        j_string(b, so);
        audit_rule(b, w, su, &cand[i]);
        sg_buf_puts(b, "}}}");
        sg_audit_submit(gw->audit, sg_buf_ok(b) ? b->data : NULL, b->len);
    }
    sg_buf_free(&lreq);
    sg_buf_free(&sreq);
}

/* The request's id, into out->request_id: the client's X-Request-Id when it
 * is valid and not a piece of its credential, else a generated one (unique
 * per process); a forwarded request carries it upstream as X-Request-Id.
 * Returns its length. */
static size_t request_id(const sg_gateway *gw, worker *w, const sg_gateway_request *req,
                         sg_gateway_reply *out)
{
    char *rid = out->request_id;
    size_t n;
    const char *client_rid = gw_header_get(req, "X-Request-Id");
    const char *authz = client_rid ? gw_header_get(req, "Authorization") : NULL;
    /* A client that puts (a piece of) its token there gets a generated id:
     * no byte of a credential is ever written to the audit log. */
    if (client_rid && request_id_valid(client_rid) && !(authz && strstr(authz, client_rid))) {
        n = strlen(client_rid); /* valid: at most the maximum */
        memcpy(rid, client_rid, n + 1);
    } else {                            /* boot id (16 hex digits), worker, sequence: fits */
        if (!w->audit_rid_prefix_len) { /* "<boot id>-<worker>-", made once */
            char *q = w->audit_rid_prefix;
            size_t boot = strlen(gw->boot_id);
            memcpy(q, gw->boot_id, boot);
            q += boot;
            *q++ = '-';
            q += sg_format_uint(q, w->index);
            *q++ = '-';
            w->audit_rid_prefix_len = (size_t)(q - w->audit_rid_prefix);
        }
        n = w->audit_rid_prefix_len;
        memcpy(rid, w->audit_rid_prefix, n);
        n += sg_format_uint(rid + n, ++w->audit_seq);
        rid[n] = '\0';
    }
    if (out->status == 0 && out->nidentity < SG_ARRAY_LEN(out->identity)) {
        out->identity[out->nidentity].name = "X-Request-Id";
        out->identity[out->nidentity].value = rid; /* not owned: sg_gateway_reply_free knows */
        out->nidentity++;
    }
    return n;
}

/* Formats the records of a decided request into out (completed later by
 * sg_gateway_audit_finish) and, when it is forwarded, adds X-Request-Id.
 * body and each may be NULL (a request refused before its messages were
 * known, GET and DELETE): then one record without a message. caller is
 * set when the shadow policy should look at the body. */
void gw_audit_begin(const sg_gateway *gw, worker *w, const sg_gateway_request *req,
                    const sg_mcp_body *body, const sg_policy_decision *each, const sg_token *token,
                    const sg_bridge_caller *caller, sg_gateway_reply *out)
{
    audit_stamp st;
    st.rid_len = request_id(gw, w, req, out);
    st.rid = out->request_id;
    st.time_len = j_time(st.time, req->received_ns);

    const sg_universe *u = sg_policy_universe(w->policy);
    const char *decision = decision_name(out, &w->decision);
    size_t n = body ? body->nmsgs : 1;
    sg_buf *b = &out->audit;
    if (!b->data && w->audit_spares.n > 0) *b = w->audit_spares.bufs[--w->audit_spares.n];
    out->audit_worker = w;
    sg_buf_reserve(b, n * AUDIT_RECORD_GUESS);       /* one allocation for most requests */
    const audit_who_cache *who = who_part(w, token); /* one caller for every message */
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
        /* The id first (its outcome is looked up by it), then the record:
         * the last record ends the buffer and is completed in place. */
        if (m && m->kind == SG_MCP_REQUEST && m->id_raw) sg_buf_append(b, m->id_raw, m->id_len);
        sg_buf_putc(b, '\0');
        audit_head(b, 0, &st, req);
        const sg_policy_decision *rd = d && d->rule ? d : NULL;
        if (body && body->is_batch) {
            audit_caller(b, who, req, sg_policy_hash(w->policy));
            audit_message(b, body, i);
            J_FIELD(b, "decision", decision);
            if (d && d->req)
                J_FIELD(b, "message_decision",
                        element_outcome(d->req, token, caller ? caller->token_error : NULL,
                                        &effective));
            audit_rule(b, w, u, rd);
            append_part(b, &who->granted);
        } else {
            audit_middle(b, w, u, who, req, m, decision, rd);
        }
        if ((out->status == 401 || out->status == 403) && decision[0] != 'd') {
            J_KEY(b, "step_up");
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
        audit_shadow(gw, w, req, body, caller, each, &st);
}

/* One message of the upstream's answer: its id's raw text and outcome. */
typedef struct answer_msg {
    const char *id;
    size_t id_len;
    const char *outcome;
} answer_msg;

/* Reads one JSON text of the answer (a message or a batch) into msgs: in
 * one cheap pass (sg_json_read_answer), or, for a text that pass cannot
 * read plainly, with the strict pre-scan and a cJSON tree. */
static void classify_json(const char *json, size_t len, answer_msg *msgs, size_t *n, size_t cap)
{
    static const char *const names[] = {
        [SG_JSON_OUTCOME_OK] = "ok",
        [SG_JSON_OUTCOME_ERROR] = "jsonrpc_error",
        [SG_JSON_OUTCOME_TOOL_ERROR] = "tool_error",
    };
    _Static_assert(SG_ARRAY_LEN(names) == SG_JSON_OUTCOME_COUNT, "an outcome without a name");
    sg_json_answer quick[16];
    long k = sg_json_read_answer(json, len, quick, SG_ARRAY_LEN(quick));
    for (long i = 0; i < k; i++) {
        if (*n >= cap || quick[i].id.len == 0) continue;
        msgs[*n] = (answer_msg){.id = json + quick[i].id.off,
                                .id_len = quick[i].id.len,
                                .outcome = names[quick[i].outcome]};
        (*n)++;
    }
    if (k >= 0) return;

    static const sg_json_limits lim = {.max_depth = SG_JSON_MAX_DEPTH_CAP};
    sg_json_scan scan = {0};
    if (sg_json_prescan(json, len, &lim, &scan, NULL) != 0) return;
    cJSON *root = cJSON_ParseWithLength(json, len);
    cJSON *m = root && scan.top_is_array ? root->child : root;
    for (size_t i = 0; i < scan.nmessages; i++, m = m && scan.top_is_array ? m->next : NULL) {
        if (*n >= cap || scan.id_spans[i].len == 0 || !cJSON_IsObject(m)) continue;
        const cJSON *result = cJSON_GetObjectItemCaseSensitive(m, "result");
        int outcome = cJSON_GetObjectItemCaseSensitive(m, "error") ? SG_JSON_OUTCOME_ERROR
                      : cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError"))
                          ? SG_JSON_OUTCOME_TOOL_ERROR
                          : SG_JSON_OUTCOME_OK;
        msgs[*n] = (answer_msg){.id = json + scan.id_spans[i].off,
                                .id_len = scan.id_spans[i].len,
                                .outcome = names[outcome]};
        (*n)++;
    }
    cJSON_Delete(root);
    sg_json_scan_free(&scan);
}

/* ,"status":..,"upstream":{"status":..,"outcome":..} (or null: not
 * forwarded),"latency_ms": -- the end of a record before its latency,
 * made for one HTTP status, upstream status and outcome (one of the
 * gateway's own words, copied) and kept while the next record repeats
 * them (most answers are 200 and "ok"). Returns the worker's cache. */
static const audit_tail_cache *tail_part(worker *w, const sg_gateway_outcome *o,
                                         const char *outcome)
{
    audit_tail_cache *c = &w->audit_tail;
    if (c->valid && c->status == o->status && c->upstream_status == o->upstream_status &&
        c->forwarded == (outcome != NULL) && (!outcome || strcmp(c->outcome, outcome) == 0))
        return c;
    sg_buf *b = &c->text;
    sg_buf_reset(b);
    J_KEY(b, "status");
    if (o->status > 0)
        sg_buf_put_uint(b, (unsigned)o->status);
    else
        sg_buf_puts(b, "null");
    J_KEY(b, "upstream");
    if (outcome) {
        sg_buf_puts(b, "{\"status\":");
        if (o->upstream_status > 0)
            sg_buf_put_uint(b, (unsigned)o->upstream_status);
        else
            sg_buf_puts(b, "null");
        sg_buf_puts(b, ",\"outcome\":");
        j_plain(b, outcome);
        sg_buf_putc(b, '}');
    } else {
        sg_buf_puts(b, "null");
    }
    sg_buf_puts(b, ",\"latency_ms\":");
    size_t n = outcome ? strlen(outcome) : 0;
    c->status = o->status;
    c->upstream_status = o->upstream_status;
    c->forwarded = outcome != NULL;
    c->valid = n < sizeof c->outcome && sg_buf_ok(b); /* else made again next time */
    if (c->valid && outcome) memcpy(c->outcome, outcome, n + 1);
    return c;
}

/* Completes a record: the HTTP status, the upstream's status and outcome
 * (outcome NULL: not forwarded), the latency (us: microseconds), the
 * closing brace. */
static void audit_outcome(sg_buf *line, worker *w, const sg_gateway_outcome *o, const char *outcome,
                          unsigned long long us)
{
    append_part(line, &tail_part(w, o, outcome)->text);
    sg_buf_put_uint(line, us / 1000);
    char frac[5] = {'.', (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10),
                    (char)('0' + us % 10), '}'};
    sg_buf_append(line, frac, sizeof frac);
}

/* The reply's record buffer, emptied, to its worker's spares (or freed). */
static void give_back(sg_gateway_reply *r)
{
    worker *w = r->audit_worker;
    if (w && r->audit.data && sg_buf_ok(&r->audit) && r->audit.cap <= AUDIT_SPARE_MAX_CAP &&
        w->audit_spares.n < AUDIT_SPARES) {
        sg_buf_reset(&r->audit);
        w->audit_spares.bufs[w->audit_spares.n++] = r->audit;
        r->audit = (sg_buf)SG_BUF_INIT;
    } else {
        sg_buf_free(&r->audit);
    }
}

void sg_gateway_audit_finish(sg_gateway *gw, sg_gateway_reply *r, const sg_gateway_outcome *o)
{
    if (!gw->audit || r->naudit == 0) return;
    const char *base = o->upstream_outcome;
    answer_msg *msgs = NULL;
    size_t nmsgs = 0;
    if (!base && o->upstream_status >= 400) base = "http_error";
    if (!base && !o->body) base = "streamed";
    answer_msg quick[8];
    if (!base && o->upstream_status &&
        (msgs = r->naudit <= SG_ARRAY_LEN(quick) ? quick : calloc(r->naudit, sizeof *msgs))) {
        const char *ct = o->content_type ? o->content_type : "";
        if ((ct[0] | 0x20) == 't' && strncasecmp(ct, "text/event-stream", 17) == 0) {
            sg_sse_event ev = SG_SSE_EVENT_INIT;
            size_t pos = 0;
            while (sg_sse_read(o->body, o->body_len, &pos, &ev) > 0)
                if (ev.has_data && ev.data.len)
                    classify_json(ev.data.data, ev.data.len, msgs, &nmsgs, r->naudit);
            sg_sse_event_free(&ev);
        } else {
            classify_json(o->body, o->body_len, msgs, &nmsgs, r->naudit);
        }
    }
    /* Milliseconds with three decimals, rounded: microseconds in integers. */
    uint64_t now = o->now_ns ? o->now_ns : sg_now_mono_ns();
    unsigned long long us = (now - o->started_ns + 500) / 1000;
    sg_buf copy = SG_BUF_INIT; /* the records before the last, completed one by one */
    size_t at = 0;
    /* A record buffer that ran out of memory holds fewer records than
     * naudit: none of it is read, each record is counted as dropped. */
    int whole = sg_buf_ok(&r->audit) && r->audit.data;
    for (size_t i = 0; !whole && i < r->naudit; i++)
        sg_audit_submit(gw->audit, NULL, 0);
    for (size_t i = 0; whole && i < r->naudit; i++) {
        const char *id = r->audit.data + at;
        size_t id_len = strlen(id), rec = at + id_len + 1;
        /* The last record ends the buffer: its length is known. */
        size_t rec_len = i + 1 == r->naudit ? r->audit.len - rec - 1 : strlen(r->audit.data + rec);
        at = rec + rec_len + 1;
        const char *outcome = NULL; /* NULL: not forwarded */
        if ((o->upstream_status || o->upstream_outcome) && !(outcome = base)) {
            outcome = id_len ? "no_answer" : "ok";
            for (size_t k = 0; id_len && k < nmsgs; k++)
                if (msgs[k].id_len == id_len && memcmp(msgs[k].id, id, id_len) == 0)
                    outcome = msgs[k].outcome;
        }
        sg_buf *line = &r->audit;
        size_t from = rec;
        if (i + 1 < r->naudit) {
            line = &copy;
            from = 0;
            sg_buf_reset(line);
            sg_buf_append(line, r->audit.data + rec, rec_len);
        } else {
            r->audit.len = rec + rec_len; /* the last record: its NUL goes */
        }
        audit_outcome(line, r->audit_worker, o, outcome, us);
        sg_audit_submit(gw->audit, sg_buf_ok(line) ? line->data + from : NULL, line->len - from);
    }
    if (copy.data) sg_buf_free(&copy);
    if (msgs != quick) free(msgs);
    r->naudit = 0;
    give_back(r);
}
