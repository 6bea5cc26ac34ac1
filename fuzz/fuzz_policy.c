/* fuzz_policy.c -- libFuzzer target: the policy loader (src/policy/policy.c) and
 * the sandbox it runs policy code in (src/policy/sandbox.c).
 *
 * The input is the text of a policy file. It is written to a scratch
 * directory and loaded with sg_policy_new under tight limits (a million
 * instructions, 16 MiB, 200 ms), the way `scopegate check` and every worker
 * load one. A policy that loads is then asked to decide a few fixed
 * messages, in both phases, with and without a token: a loaded policy must
 * decide something (a deny at worst) and never crash the host. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "policy/policy.h"
#include "base/sg.h"
#include "auth/token.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static sg_token *token;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    sg_log_set_level(0);
    const char *claims = "{\"sub\":\"fuzzer\",\"scope\":\"notes:read journal:read a b\"}";
    CHECK(sg_token_from_claims(claims, strlen(claims), &token) == SG_TOKEN_OK);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_file("policy.lua", data, size);
    sg_policy_limits lim;
    memset(&lim, 0, sizeof lim);
    lim.load_instructions = 1000000;
    lim.load_time_ms = 200;
    lim.load_memory = (size_t)16 << 20;
    lim.call_instructions = 100000;
    lim.call_time_ms = 50;
    lim.call_memory = (size_t)4 << 20;
    lim.pattern_steps = 1000000;
    sg_buf report = SG_BUF_INIT;
    sg_policy *p = sg_policy_new(path, &lim, &report);
    if (!p) {
        CHECK(report.len > 0);
        sg_buf_free(&report);
        return 0;
    }
    CHECK(report.len == 0);
    (void)sg_policy_has_public_rule(p);
    const sg_policy_scope_use *uses;
    (void)sg_policy_function_scopes(p, &uses);
    CHECK(strlen(sg_policy_hash(p)) == SG_POLICY_HASH_LEN);

    cJSON *args = cJSON_Parse("{\"everything\":true,\"id\":\"x\"}");
    static const struct {
        const char *method, *name;
    } msgs[] = {
        {"tools/call", "search_notes"},
        {"tools/call", "delete_note"},
        {"tools/call", "create_entry"},
        {"prompts/get", "summarize_week"},
        {"resources/read", "journal://entries/1"},
        {"tools/list", NULL},
        {"initialize", NULL},
        {"ping", NULL},
        {"custom/method", NULL},
    };
    sg_header h = {.name = "mcp-protocol-version", .value = "2025-06-18"};
    sg_arena a;
    sg_arena_init(&a, 4096);
    for (size_t i = 0; i < SG_ARRAY_LEN(msgs); i++) {
        for (int phase = 0; phase < 2; phase++) {
            for (int anon = 0; anon < 2; anon++) {
                sg_policy_input in = {
                    .phase = phase ? SG_PHASE_CALL : SG_PHASE_LIST,
                    .method = msgs[i].method,
                    .name = msgs[i].name,
                    .arguments = phase ? args : NULL,
                    .token = anon ? NULL : token,
                    .headers = &h,
                    .nheaders = 1,
                    .protocol_version = "2025-06-18",
                };
                sg_policy_decision d;
                int rc = sg_policy_decide(p, &in, &a, &d);
                CHECK(d.req != NULL);
                CHECK(rc == 0 || d.req == &sg_req_deny);
                sg_arena_reset(&a);
            }
        }
    }
    sg_arena_free(&a);
    cJSON_Delete(args);
    sg_policy_free(p);
    return 0;
}
