/* bridge.c -- the policy bridge: MCP body to requirement (see bridge.h). */
#include "mcp/bridge.h"

#include <string.h>

#include "mcp/metadata.h"

static const sg_req *requirement(sg_policy *p, const sg_mcp_body *body,
                                 const sg_bridge_caller *caller, sg_arena *a,
                                 sg_policy_decision *each)
{
    const sg_token *token = caller->token;
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
            const cJSON *annotations = NULL;
            if (caller->annotations && m->name && m->method && strcmp(m->method, "tools/call") == 0)
                annotations = caller->annotations(caller->annotations_ud, m->name);
            sg_policy_input in = {.phase = SG_PHASE_CALL,
                                  .method = m->method,
                                  .name = m->name,
                                  .arguments = m->arguments,
                                  .token = token,
                                  .headers = caller->headers,
                                  .nheaders = caller->nheaders,
                                  .protocol_version = caller->protocol_version,
                                  .annotations = annotations};
            sg_policy_decide(p, &in, a, &d); /* on failure d.req is deny */
        }
        one = d.req ? d.req : &sg_req_deny;
        if (each) each[i] = d;
        if (all) all->kids[i] = one;
    }
    return all ? all : one;
}

const sg_req *sg_bridge_requirement(sg_policy *p, const sg_mcp_body *body, const sg_token *token,
                                    const sg_header *headers, size_t nheaders,
                                    const char *protocol_version, sg_arena *a,
                                    sg_policy_decision *each)
{
    sg_bridge_caller caller = {.token = token,
                               .headers = headers,
                               .nheaders = nheaders,
                               .protocol_version = protocol_version};
    return requirement(p, body, &caller, a, each);
}

const sg_req *sg_bridge_decide(sg_policy *p, const sg_mcp_body *body,
                               const sg_bridge_caller *caller, const sg_site *site, sg_arena *a,
                               sg_policy_decision *each, sg_decision *out)
{
    const sg_req *r = requirement(p, body, caller, a, each);
    sg_decide(site, r, caller->token, caller->token_error, out);
    return r;
}

const sg_req *sg_bridge_requirement_for(sg_policy *p, const sg_mcp_body *body,
                                        const sg_bridge_caller *caller, sg_arena *a,
                                        sg_policy_decision *each)
{
    return requirement(p, body, caller, a, each);
}

void sg_bridge_site(const sg_policy *p, const char *public_url, sg_buf *storage, sg_site *out)
{
    const char *base = public_url ? public_url : sg_policy_resource(p);
    sg_buf_reset(storage);
    if (base && sg_metadata_url(base, storage) != 0) sg_buf_reset(storage);
    out->universe = sg_policy_universe(p);
    out->realm = sg_policy_realm(p);
    out->resource_metadata = storage->len ? storage->data : NULL;
}

int sg_bridge_list_visible(sg_policy *p, const sg_policy_input *in, const sg_scopeset *effective,
                           sg_arena *a, sg_policy_decision *d)
{
    sg_policy_input list = *in;
    list.phase = SG_PHASE_LIST;
    sg_policy_decision local;
    if (!d) d = &local;
    sg_policy_decide(p, &list, a, d); /* on failure d->req is deny */
    if (!d->req) d->req = &sg_req_deny;
    return sg_req_satisfied(d->req, in->token != NULL, effective);
}
