/* bridge.h -- from an MCP body to the one requirement the caller must meet.
 *
 * The policy decides one message at a time; a body may hold a batch. The
 * bridge asks the policy about every message and combines the answers: a
 * batch needs all of its elements' requirements, so one denied element
 * denies the whole batch, and a step-up challenge names everything the
 * batch needs at once. The gateway and `scopegate explain` both decide
 * through here, so they cannot disagree. */
#ifndef SG_BRIDGE_H
#define SG_BRIDGE_H

#include "mcp.h"
#include "policy.h"

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

#endif
