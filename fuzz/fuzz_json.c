/* fuzz_json.c -- libFuzzer target: the strict JSON pre-scan (src/base/json.c) and
 * the MCP message parse on top of it (src/mcp/mcp.c).
 *
 * The input is a request body. Besides the sanitizers, it checks what the
 * gateway relies on: whatever the pre-scan accepts, cJSON accepts too (the
 * parse never reports the two parsers disagreeing); every id span lies inside
 * the body; what sg_json_append_string and sg_mcp_error_render produce is
 * JSON the pre-scan accepts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "base/json.h"
#include "mcp/mcp.h"
#include "base/sg.h"
#include "fuzz_common.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static void check_is_json(const sg_buf *b)
{
    if (!sg_buf_ok(b)) return; /* out of memory is not a finding */
    sg_json_scan s;
    sg_json_error e;
    sg_json_limits lim = {.max_depth = SG_JSON_MAX_DEPTH_CAP};
    /* Valid JSON; a NUL byte is written as \u0000, which is JSON but which
     * the pre-scan refuses on purpose (cJSON would truncate there). */
    CHECK(sg_json_prescan(b->data, b->len, &lim, &s, &e) == 0 || e.kind == SG_JSON_ERR_NUL_ESCAPE);
    sg_json_scan_free(&s);
}

/* sg_json_read_answer (one pass, no tree) against the strict pre-scan and
 * cJSON: on a text the pre-scan accepts it reads the same ids and the
 * outcome cJSON gives, and it may only give up where it says it does (a
 * backslash somewhere, a scalar at the top, too deep); on any text, what it
 * reads lies inside it. */
static void check_answer(const char *body, size_t size, const sg_json_scan *scan, int strict_ok)
{
    sg_json_answer out[8]; /* max_top_elements is 8 */
    long n = sg_json_read_answer(body, size, out, SG_ARRAY_LEN(out));
    CHECK(n >= -1 && n <= (long)SG_ARRAY_LEN(out));
    for (long i = 0; i < n; i++) {
        CHECK(out[i].id.off <= size && out[i].id.len <= size - out[i].id.off);
        CHECK(out[i].outcome < SG_JSON_OUTCOME_COUNT);
    }
    if (!strict_ok) return;
    if (n < 0) {
        CHECK(memchr(body, '\\', size) || !(scan->top_is_array || scan->top_is_object));
        return;
    }
    CHECK((size_t)n == (scan->top_is_array ? scan->nmessages : 1));
    cJSON *root = cJSON_ParseWithLength(body, size);
    if (!root) return; /* a NUL inside: cJSON stops there */
    cJSON *m = scan->top_is_array ? root->child : root;
    for (long i = 0; i < n && m; i++, m = scan->top_is_array ? m->next : NULL) {
        CHECK(out[i].id.len == scan->id_spans[i].len);
        CHECK(out[i].id.len == 0 || out[i].id.off == scan->id_spans[i].off);
        if (!cJSON_IsObject(m)) continue;
        const cJSON *result = cJSON_GetObjectItemCaseSensitive(m, "result");
        int want = cJSON_GetObjectItemCaseSensitive(m, "error") ? SG_JSON_OUTCOME_ERROR
                   : cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError"))
                       ? SG_JSON_OUTCOME_TOOL_ERROR
                       : SG_JSON_OUTCOME_OK;
        CHECK(out[i].outcome == want);
    }
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;

    /* The pre-scan alone, with a small element limit as a batch would have. */
    sg_json_limits lim = {.max_depth = 16, .max_top_elements = 8};
    sg_json_scan scan;
    sg_json_error err;
    if (sg_json_prescan(body, size, &lim, &scan, &err) == 0) {
        for (size_t i = 0; i < scan.nmessages; i++) {
            const sg_json_span *sp = &scan.id_spans[i];
            CHECK(sp->off <= size && sp->len <= size - sp->off);
            if (sp->len) (void)sg_json_is_id_literal(body + sp->off, sp->len);
        }
        check_answer(body, size, &scan, 1);
    } else {
        check_answer(body, size, &scan, 0);
        CHECK(err.kind != SG_JSON_OK && err.offset <= size);
        CHECK(memchr(err.message, '\0', sizeof err.message) != NULL);
    }
    sg_json_scan_free(&scan);
    (void)sg_json_is_id_literal(body, size);

    /* Any bytes quoted as a JSON string are a valid JSON string. */
    sg_buf quoted = SG_BUF_INIT;
    sg_json_append_string(&quoted, body, size);
    check_is_json(&quoted);
    sg_buf_free(&quoted);

    /* The MCP parse, with the gateway's default limits, on the heap and
     * (as the gateway does it) in an arena: the two must read alike. */
    sg_json_memory_init();
    static sg_arena scratch;
    if (!scratch.block_size) sg_arena_init(&scratch, 16 * 1024);
    sg_arena_reset(&scratch);
    sg_mcp_limits ml = SG_MCP_LIMITS_DEFAULT;
    sg_mcp_body mb, in_arena;
    int rc = sg_mcp_parse(body, size, &ml, NULL, &mb);
    int arena_rc = sg_mcp_parse(body, size, &ml, &scratch, &in_arena);
    CHECK(arena_rc == rc && in_arena.nmsgs == mb.nmsgs && in_arena.is_batch == mb.is_batch);
    CHECK(in_arena.tree_in_mem || !in_arena.root);
    for (size_t i = 0; i < mb.nmsgs; i++) {
        const sg_mcp_msg *a = &mb.msgs[i], *b = &in_arena.msgs[i];
        CHECK(a->kind == b->kind && a->id_len == b->id_len && a->error_code == b->error_code);
        CHECK(!a->id_raw == !b->id_raw &&
              (!a->id_raw || memcmp(a->id_raw, b->id_raw, a->id_len) == 0));
        CHECK(!a->method == !b->method && (!a->method || strcmp(a->method, b->method) == 0));
        CHECK(!a->name == !b->name && (!a->name || strcmp(a->name, b->name) == 0));
        CHECK(!a->arguments == !b->arguments);
    }
    sg_mcp_body_free(&in_arena);
    /* The pre-scan accepted what cJSON then refused: the two disagree. */
    CHECK(
        !(rc == SG_JSONRPC_PARSE_ERROR && strstr(mb.error_message, "rejected by the JSON parser")));
    sg_buf out = SG_BUF_INIT;
    for (size_t i = 0; i < mb.nmsgs; i++) {
        const sg_mcp_msg *m = &mb.msgs[i];
        sg_buf_reset(&out);
        sg_mcp_error_render(&out, m->id_raw, m->id_len, m->error_code ? m->error_code : -32000,
                            m->kind == SG_MCP_INVALID ? m->error_message
                                                      : (m->method ? m->method : "response"),
                            m->params);
        check_is_json(&out);
    }
    if (rc != 0) {
        sg_buf_reset(&out);
        sg_mcp_error_render(&out, mb.nmsgs ? mb.msgs[0].id_raw : NULL,
                            mb.nmsgs ? mb.msgs[0].id_len : 0, rc, mb.error_message, NULL);
        check_is_json(&out);
    } else if (!mb.is_batch) {
        char msg[128];
        const sg_mcp_msg *m = &mb.msgs[0];
        (void)sg_mcp_check_headers(&mb, SG_MCP_HEADERS_VERSION, m->method, m->name, msg,
                                   sizeof msg);
        (void)sg_mcp_check_headers(&mb, SG_MCP_HEADERS_VERSION, "tools/call",
                                   "=?base64?eA==?=", msg, sizeof msg);
    }
    sg_buf_free(&out);
    sg_mcp_body_free(&mb);
    return 0;
}
