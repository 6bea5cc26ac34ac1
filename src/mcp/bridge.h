/* bridge.h -- from an MCP body to the one requirement the caller must meet.
 *
 * The policy decides one message at a time; a body may hold a batch. The
 * bridge asks the policy about every message and combines the answers: a
 * batch needs all of its elements' requirements, so one denied element
 * denies the whole batch, and a step-up challenge names everything the
 * batch needs at once. The gateway, `scopegate explain` and `scopegate
 * test` all decide through here (sg_bridge_decide for a request,
 * sg_bridge_list_visible for an item of a list result), so they cannot
 * disagree. */
#ifndef SG_BRIDGE_H
#define SG_BRIDGE_H

#include "auth/challenge.h"
#include "mcp/mcp.h"
#include "policy/policy.h"

/* Returns the requirement for the whole body (allocated in arena a, or a
 * shared constant; never NULL). Each request or notification is decided by
 * the policy in the call phase; a client's response to a server request
 * needs any valid token ("authenticated"), or nothing when the policy has
 * public rules. When `each` is not NULL it receives body->nmsgs decisions,
 * one per message (rule, line, error). A policy failure makes that message's
 * requirement deny (fail closed; the policy has logged it). On allocation
 * failure the result is deny. */
const sg_req *sg_bridge_requirement(sg_policy *p, const sg_mcp_body *body, const sg_token *token,
                                    const sg_header *headers, size_t nheaders,
                                    const char *protocol_version, sg_arena *a,
                                    sg_policy_decision *each);

/* The MCP annotations of a tool, by name, as the deciding side knows them
 * (the gateway: the catalogue learned from the upstream's tools/list; a
 * policy test: its upstream_tools). NULL when unknown. The result is
 * borrowed until the decision returns. */
typedef const cJSON *(*sg_tool_annotations_fn)(void *ud, const char *tool);

/* Who is asking, and what the deciding side knows around the message. All
 * borrowed. */
typedef struct sg_bridge_caller {
    const sg_token *token;    /* the verified token, or NULL */
    const char *token_error;  /* why a presented token was refused, or NULL */
    const sg_header *headers; /* names lower-case */
    size_t nheaders;
    const char *protocol_version;       /* the effective MCP protocol version */
    sg_tool_annotations_fn annotations; /* NULL: no annotations are known */
    void *annotations_ud;
} sg_bridge_caller;

/* Decides one parsed body for one caller exactly as the gateway does: each
 * message through the policy (call phase; a tools/call sees the tool's
 * annotations when the caller's lookup knows them), combined as in
 * sg_bridge_requirement, then sg_decide against site. Fills *out (reset,
 * not freed: see sg_decide) and, when each is not NULL, body->nmsgs
 * per-message decisions living in arena a. Returns the combined
 * requirement (in a, or a shared constant; never NULL). Can't fail: a
 * policy failure or allocation failure denies (fail closed). */
const sg_req *sg_bridge_decide(sg_policy *p, const sg_mcp_body *body,
                               const sg_bridge_caller *caller, const sg_site *site, sg_arena *a,
                               sg_policy_decision *each, sg_decision *out);

/* The requirement sg_bridge_decide would compute for this caller, without
 * deciding: a second opinion on the same body (the gateway's shadow
 * policy). Fills each (when not NULL) as sg_bridge_decide does. Never
 * NULL; can't fail (a policy failure or allocation failure denies). */
const sg_req *sg_bridge_requirement_for(sg_policy *p, const sg_mcp_body *body,
                                        const sg_bridge_caller *caller, sg_arena *a,
                                        sg_policy_decision *each);

/* Where a policy's challenges point when no gateway is configured around
 * it (explain, test): the RFC 9728 metadata URL of public_url, else of the
 * policy's `resource`, else none. The URL is written to storage (which the
 * site then borrows: free it after the site's last use). Can't fail. */
void sg_bridge_site(const sg_policy *p, const char *public_url, sg_buf *storage, sg_site *out);

/* 1 when an item of a .../list result is shown to the caller, as the
 * gateway filters lists: the policy decides the item in the list phase
 * (in->phase is forced to SG_PHASE_LIST; in->method is the method that
 * would use the item: tools/call, prompts/get or resources/read) and the
 * caller's effective scopes must satisfy it. effective is the closure of
 * the token's granted scopes (sg_token_granted + sg_universe_effective).
 * *d (when not NULL) receives the policy's decision, in arena a. A policy
 * failure hides the item (fail closed). */
int sg_bridge_list_visible(sg_policy *p, const sg_policy_input *in, const sg_scopeset *effective,
                           sg_arena *a, sg_policy_decision *d);

#endif
