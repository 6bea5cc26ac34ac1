/* token.h -- bearer-token verification (JWS compact serialization).
 *
 * (Helper-owned: the verifier API below may be refined by its implementer;
 * the sg_token fields are the contract the policy and decision layers use.) */
#ifndef SG_TOKEN_H
#define SG_TOKEN_H

#include <stdint.h>
#include <cjson/cJSON.h>

/* A verified token. Owned by the token cache; valid until the next call on
 * the same cache (see sg_tcache_*). */
typedef struct sg_token {
    const cJSON *claims;    /* the verified payload object */
    const char *sub;        /* NULL when absent */
    const char *client_id;  /* client_id, else azp; NULL when absent */
    const char *iss;
    int64_t exp;            /* seconds since the epoch */
    int nscopes;            /* validated RFC 6749 scope tokens, token order, deduplicated */
    const char *const *scopes;
} sg_token;

#endif
