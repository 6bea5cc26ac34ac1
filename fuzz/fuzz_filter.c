/* fuzz_filter.c -- libFuzzer target: SSE reading (src/mcp/sse.c) and list
 * filtering (sg_gateway_filter in src/gateway/filter.c) of upstream answers.
 *
 * A gateway is built once over a small fixed policy (below) and the HS256
 * test key, and a few list requests are planned with sg_gateway_handle as
 * the HTTP layer would: a tools/list, a batch of tools/prompts/resources
 * lists, a resources/templates/list, and an anonymous tools/list. The input
 * is the upstream's answer: its first byte picks the plan (bits 1-2) and
 * the content type (bit 0: application/json or text/event-stream), the rest
 * is the body. The body also goes through sg_sse_next on its own.
 *
 * The caller holds notes:read, so of the tools only "search" and "ping" may
 * ever be listed, and of the prompts only "summarize". With
 * SG_FUZZ_STRICT_FILTER=1 in the environment, every answer the filter lets
 * through is read back as a client would (sg_sse_next, then cJSON): each
 * message must be JSON and list nothing else. A list that cannot be
 * filtered must never pass. SG_FUZZ_STRICT_FILTER=ids checks only for
 * leaks: hidden items in answers a client would take for its own requests
 * (their ids). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "gateway/gateway.h"
#include "mcp/sse.h"
#include "auth/token.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static const char POLICY[] =
    "-- the fuzz_filter policy\n"
    "return {\n"
    "  resource = 'https://fuzz.example.com/mcp',\n"
    "  authorization_servers = { 'https://auth.example.com' },\n"
    "  scopes = { ['notes:read'] = 'Read', ['notes:write'] = 'Write', admin = 'Admin' },\n"
    "  implies = { ['notes:write'] = { 'notes:read' } },\n"
    "  tools = {\n"
    "    search = 'notes:read',\n"
    "    ping = 'public',\n"
    "    create = 'notes:write',\n"
    "    either = { any_of = { 'admin', 'notes:write' } },\n"
    "    delete = function(req)\n"
    "      if req.phase == 'list' then return 'admin' end\n"
    "      return 'notes:write'\n"
    "    end,\n"
    "  },\n"
    "  prompts = { summarize = 'notes:read', rewrite = 'notes:write' },\n"
    "  resources = { ['notes://public/*'] = 'notes:read', ['notes://admin/*'] = 'admin' },\n"
    "  default = 'deny',\n"
    "}\n";

#define NPLANS 4
static sg_keys *keys;
static sg_verifier *verifier;
static sg_gateway *gw;
static sg_gateway_reply plans[NPLANS];
static int strict; /* 1: every message; 2 ("ids"): answers to the planned ids only */

static int plan_index; /* of the current input */

/* 1 when a message's id is one the current plan's list requests carry:
 * 1 (plans 0 and 3), 1, "p" and 3 (the batch, plan 1), 7 (plan 2). */
static int planned_id(const cJSON *id)
{
    if (cJSON_IsString(id)) return plan_index == 1 && strcmp(id->valuestring, "p") == 0;
    if (!cJSON_IsNumber(id)) return 0;
    double v = id->valuedouble;
    return plan_index == 2 ? v == 7 : v == 1 || (plan_index == 1 && v == 3);
}

static void plan(sg_gateway_reply *out, const char *body, const char *authz)
{
    sg_header h[4] = {
        {"Content-Type", "application/json"},
        {"Accept", "application/json, text/event-stream"},
        {"MCP-Protocol-Version", "2025-06-18"},
        {"Authorization", authz},
    };
    sg_gateway_request req = {.worker = sg_gateway_worker_of(gw, 0),
                              .method = "POST",
                              .headers = h,
                              .nheaders = authz ? 4 : 3,
                              .body = body,
                              .body_len = strlen(body)};
    sg_gateway_reply_init(out);
    if (sg_gateway_handle(gw, &req, out) != SG_GATEWAY_FORWARD || !out->filter) {
        fprintf(stderr, "fuzz_filter: planning %s failed: %d %.*s\n", body, out->status,
                (int)out->body.len, out->body.data ? out->body.data : "");
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[512];
    const char *s = getenv("SG_FUZZ_STRICT_FILTER");
    strict = !s ? 0 : strcmp(s, "1") == 0 ? 1 : strcmp(s, "ids") == 0 ? 2 : 0;
    sg_log_set_level(0);
    keys = sg_keys_new();
    CHECK(keys);
    if (sg_keys_add_secret(keys, FUZZ_SECRET, strlen(FUZZ_SECRET), "HS256", FUZZ_KID, err,
                           sizeof err) != 0)
        abort();
    sg_verifier_config vc;
    sg_verifier_config_init(&vc);
    vc.issuer = FUZZ_ISSUER;
    vc.audience = "https://fuzz.example.com/mcp";
    CHECK((verifier = sg_verifier_new(&vc, keys, err, sizeof err)));

    const char *path = fuzz_write_file("policy.lua", POLICY, strlen(POLICY));
    sg_gateway_config gc;
    memset(&gc, 0, sizeof gc);
    gc.policy_path = path;
    gc.verifier = verifier;
    gc.workers = 1;
    gc.mcp_path = "/mcp";
    gc.mcp_limits = (sg_mcp_limits)SG_MCP_LIMITS_DEFAULT;
    gc.annotate = SG_ANNOTATE_OAUTH_SCOPE;
    if (!(gw = sg_gateway_new(&gc, err, sizeof err))) {
        fprintf(stderr, "fuzz_filter: %s\n", err);
        abort();
    }

    sg_buf tok = SG_BUF_INIT;
    sg_buf_puts(&tok, "Bearer ");
    fuzz_mint(NULL,
              "{\"iss\":\"" FUZZ_ISSUER "\",\"aud\":\"https://fuzz.example.com/mcp\","
              "\"sub\":\"fuzzer\",\"scope\":\"notes:read\",\"exp\":4102444800}",
              &tok);
    CHECK(sg_buf_ok(&tok));
    plan(&plans[0], "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}", tok.data);
    plan(&plans[1],
         "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"},"
         "{\"jsonrpc\":\"2.0\",\"id\":\"p\",\"method\":\"prompts/list\"},"
         "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"resources/list\"}]",
         tok.data);
    plan(&plans[2], "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"resources/templates/list\"}",
         tok.data);
    plan(&plans[3], "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}", NULL);
    sg_buf_free(&tok);
    return 0;
}

static int allowed(const char *list, const char *name)
{
    if (strcmp(list, "tools") == 0) return strcmp(name, "search") == 0 || strcmp(name, "ping") == 0;
    return strcmp(name, "summarize") == 0; /* prompts */
}

/* A client's view of one message: every listed tool or prompt is visible. */
static void check_message(const cJSON *m)
{
    if (cJSON_IsArray(m)) {
        for (const cJSON *e = m->child; e; e = e->next)
            check_message(e);
        return;
    }
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(m, "result");
    if (!cJSON_IsObject(result)) return;
    if (strict == 2 && !planned_id(cJSON_GetObjectItemCaseSensitive(m, "id"))) return;
    static const char *const lists[] = {"tools", "prompts"};
    for (size_t i = 0; i < 2; i++) {
        /* Any member of that name, as a last-key-wins parser would see it. */
        for (const cJSON *l = result->child; l; l = l->next) {
            if (!l->string || strcmp(l->string, lists[i]) != 0 || !cJSON_IsArray(l)) continue;
            for (const cJSON *it = l->child; it; it = it->next) {
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
                if (!cJSON_IsString(name) || !allowed(lists[i], name->valuestring)) {
                    fprintf(stderr, "fuzz_filter: %s item passed the filter: %s\n", lists[i],
                            cJSON_IsString(name) ? name->valuestring : "(no name)");
                    abort();
                }
            }
        }
    }
}

/* What passed the filter is JSON (the filter re-prints what it changed and
 * passes on only what it parsed), and lists nothing hidden. */
static void check_json(const char *p, size_t len)
{
    cJSON *root = cJSON_ParseWithLength(p, len);
    if (!root && strict == 2) return; /* a client drops what it cannot parse */
    if (!root) {
        fprintf(stderr, "fuzz_filter: an answer that is not JSON passed the filter\n");
        abort();
    }
    check_message(root);
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int sse = data[0] & 1;
    plan_index = (data[0] >> 1) & 3;
    const sg_gateway_reply *p = &plans[plan_index];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    /* The SSE reader on its own: it terminates, and moves forward. */
    sg_buf ev = SG_BUF_INIT;
    size_t pos = 0, prev = 0;
    int r;
    while ((r = sg_sse_next(body, len, &pos, &ev)) == 1) {
        CHECK(pos > prev && pos <= len);
        prev = pos;
    }
    CHECK(r == 0 || r == -1);
    CHECK(pos <= len);

    sg_buf out = SG_BUF_INIT;
    int rc = sg_gateway_filter(gw, sg_gateway_worker_of(gw, 0), p,
                               sse ? "text/event-stream" : "application/json", body, len, &out);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0 && strict) {
        if (sse) {
            pos = 0;
            while (sg_sse_next(out.data ? out.data : "", out.len, &pos, &ev) == 1)
                if (ev.len) check_json(ev.data, ev.len);
        } else {
            check_json(out.data ? out.data : "", out.len);
        }
    }
    sg_buf_free(&out);
    sg_buf_free(&ev);
    return 0;
}
