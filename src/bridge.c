/* bridge.c -- the policy bridge: MCP body to requirement (see bridge.h). */
#include "bridge.h"

#include <string.h>

const sg_req *sg_bridge_requirement(sg_policy *p, const sg_mcp_body *body, const sg_token *token,
                                    const sg_header *headers, size_t nheaders,
                                    const char *protocol_version, sg_arena *a,
                                    sg_policy_decision *each)
{
    sg_req *all = NULL;
    if (body->nmsgs > 1 && !(all = sg_req_group(a, SG_REQ_ALL, (int)body->nmsgs)))
        return &sg_req_deny;
    const sg_req *one = &sg_req_deny;
    for (size_t i = 0; i < body->nmsgs; i++) {
        const sg_mcp_msg *m = &body->msgs[i];
        sg_policy_decision d;
        memset(&d, 0, sizeof d);
        if (m->kind == SG_MCP_RESPONSE) {
            d.req = sg_policy_has_public_rule(p) ? &sg_req_public : &sg_req_authenticated;
            d.rule = "builtin.response";
        } else if (m->kind == SG_MCP_INVALID) {
            d.req = &sg_req_deny;
            d.rule = "builtin.invalid";
        } else {
            sg_policy_input in = {.phase = SG_PHASE_CALL,
                                  .method = m->method,
                                  .name = m->name,
                                  .arguments = m->arguments,
                                  .token = token,
                                  .headers = headers,
                                  .nheaders = nheaders,
                                  .protocol_version = protocol_version};
            sg_policy_decide(p, &in, a, &d); /* on failure d.req is deny */
        }
        one = d.req ? d.req : &sg_req_deny;
        if (each) each[i] = d;
        if (all) all->kids[i] = one;
    }
    return all ? all : one;
}
