/* challenge.h -- from a requirement and a caller to an HTTP answer.
 *
 * Given what a message needs (an sg_req from the policy) and who is asking
 * (a verified token, no token, or a refused one), decide: forward it, 401
 * with a challenge, 403 with a step-up challenge naming the cheapest scopes
 * to add, or 403 for a policy deny. The WWW-Authenticate value is canonical:
 * the same inputs give the same bytes, which the official MCP client relies
 * on to stop retrying (spec-requirements items 2, 3 and 8). */
#ifndef SG_CHALLENGE_H
#define SG_CHALLENGE_H

#include "authz/scope.h"
#include "auth/token.h"

/* The parameters of one `Bearer` challenge. NULL or empty fields are left
 * out. Values are sanitized when formatted (see sg_challenge_format). */
typedef struct sg_challenge {
    const char *realm;
    const char *error;             /* "invalid_token", "insufficient_scope", ... */
    const char *scope;             /* space-separated scope tokens */
    const char *resource_metadata; /* RFC 9728 metadata URL */
    const char *error_description;
} sg_challenge;

/* Appends `Bearer realm="..", error="..", scope="..", resource_metadata="..",
 * error_description=".."` (in that order, absent ones skipped). Quoted values
 * never contain '"', '\' or bytes outside 0x20-0x7E: such bytes are replaced
 * (so nothing a token or a policy says can inject header syntax), and a value
 * is cut at 512 bytes. A scope value is emitted only if every token in it is a
 * valid RFC 6749 scope token; otherwise the whole parameter is dropped.
 * Can't fail (allocation failure is recorded in the buffer). */
void sg_challenge_format(const sg_challenge *c, sg_buf *out);

typedef enum sg_outcome {
    SG_ALLOW,        /* forward upstream */
    SG_UNAUTHORIZED, /* 401: no token, or a refused one */
    SG_FORBIDDEN,    /* 403 insufficient_scope: a step-up can help */
    SG_DENIED,       /* 403: the policy says never; no step-up hint */
    SG_OUTCOME_COUNT
} sg_outcome;

/* Where challenges point: the policy's universe and realm, and the URL of
 * this resource's RFC 9728 metadata. Not owned. */
typedef struct sg_site {
    const sg_universe *universe;
    const char *realm;
    const char *resource_metadata;
} sg_site;

typedef struct sg_decision {
    sg_outcome outcome;
    int status;        /* 200, 401 or 403 */
    sg_scopeset scope; /* what the challenge's scope= names */
    sg_buf challenge;  /* WWW-Authenticate value; empty when none is due */
    sg_buf message;    /* human-readable reason for the JSON-RPC error */
} sg_decision;

/* Decides one requirement for one caller. `token` is the verified token or
 * NULL; `token_error` is NULL when no token was presented, else the reason a
 * presented token was refused (a refused token always gets 401, even for a
 * public requirement: the client should learn its token is bad). The
 * decision's buffers are reset, not freed, so one sg_decision can serve many
 * requests; free them with sg_decision_free. Can't fail (allocation failures
 * are recorded in the buffers; check sg_buf_ok before sending). */
void sg_decide(const sg_site *site, const sg_req *req, const sg_token *token,
               const char *token_error, sg_decision *out);
void sg_decision_init(sg_decision *d);
void sg_decision_free(sg_decision *d);

/* The scopes of `token` known to the universe, as a set. Can't fail. */
void sg_token_granted(const sg_universe *u, const sg_token *token, sg_scopeset *out);

#endif
