/* gateway_impl.h -- what the gateway's files share (not a public API).
 *
 * gateway.c decides one request (construction, authentication,
 * authorization, the plan); generation.c owns the reference-counted policy
 * generations, live and shadow, their reload and the tool-catalogue glue;
 * auditrec.c formats the audit records of a decided request; filter.c
 * rewrites list answers for the caller. They share the gateway's and the
 * workers' structs and the few functions declared here. */
#ifndef SG_GATEWAY_IMPL_H
#define SG_GATEWAY_IMPL_H

#include <pthread.h>
#include <stdatomic.h>

#include "auth/challenge.h"
#include "gateway/catalog.h"
#include "gateway/gateway.h"
#include "mcp/bridge.h"
#include "policy/policy.h"

/* One loaded policy: a compiled copy per worker (each owns a Lua state,
 * which only that worker's thread touches) and what is derived from it.
 * Reference-counted, because three kinds of holder outlive a reload: the
 * gateway's `current` pointer, each worker until it switches, and each
 * forwarded list request until its answer is filtered (a request finishes
 * on the policy it started with). The last release frees it, on whatever
 * thread that is: by then no thread uses any of its Lua states. */
struct sg_policy_gen {
    atomic_int refs;
    unsigned nworkers;
    sg_policy **policies; /* [nworkers] */
    char *metadata_json;
    char *resource_metadata_url;
};
typedef struct sg_policy_gen policy_gen;

/* auditrec.c: the parts of a record most requests repeat, escaped once and
 * kept per worker with what they were made from (a key of content, or for
 * a policy's rule its pointers and the generation). */
typedef struct audit_who_cache {
    int valid;            /* the parts below are those of the payload in key */
    unsigned long serial; /* counts the times the parts were made */
    sg_buf key;           /* the token's verified payload */
    sg_buf who, granted;  /* ,"sub":..,"client_id":..,"iss":..  and  ,"granted":[..] */
} audit_who_cache;
typedef struct audit_rule_cache {
    int valid;               /* text is that of the policy rule below */
    unsigned long serial;    /* counts the times text was made */
    const char *rule, *file; /* the policy's strings (see rule_part) */
    int line;
    unsigned long seen; /* the worker's generation when text was made */
    sg_buf text;        /* ,"rule":..,"rule_file":..,"rule_line":.. */
} audit_rule_cache;
/* The middle of a decision record, from ,"http_method" to the rule's line,
 * and on to the granted scopes when the requirement is a plain one: made
 * from the two parts above (by their serials), the policy in force (by the
 * worker's generation), the decision (a static string), the requirement
 * (by required_key) and the strings in key, and kept while the next message
 * repeats all of them. */
#define AUDIT_MIDDLE_STRINGS 3
typedef struct audit_middle_cache {
    int valid;
    unsigned long who_serial, rule_serial, seen;
    const char *decision;
    long required; /* required_key of the requirement; -1: not in text */
    /* The HTTP method, the message's method and its name, each with its
     * NUL, at at[0..2] ((size_t)-1: absent). */
    sg_buf key;
    size_t at[AUDIT_MIDDLE_STRINGS];
    sg_buf text; /* ,"http_method":..<who>,"policy":..,"method":..,"name":..,"decision":..<rule>
                    [,"required":..,"granted":..] */
} audit_middle_cache;

/* The end of a record before its latency (see tail_part), kept for one
 * HTTP status, upstream status and outcome. */
typedef struct audit_tail_cache {
    int valid;
    int status, upstream_status;
    int forwarded;    /* outcome holds the upstream's outcome; else "upstream":null */
    char outcome[32]; /* a copy: the word need not outlive the record */
    sg_buf text;
} audit_tail_cache;

/* Record buffers of finished requests, kept for the next ones: a request
 * holds its records from its decision until the upstream answers, so a
 * worker with tens of requests in flight holds tens of them, more than
 * malloc's per-thread cache keeps for one size (seven): without these, most
 * took malloc's and free's slow paths. A buffer grown past
 * AUDIT_SPARE_MAX_CAP (a large batch) is freed, not kept. */
#define AUDIT_SPARES        64
#define AUDIT_SPARE_MAX_CAP 2040
typedef struct audit_spares {
    unsigned n;
    sg_buf bufs[AUDIT_SPARES];
} audit_spares;

typedef struct sg_gateway_worker worker;
struct sg_gateway_worker {
    struct sg_gateway *gw;
    unsigned index;
    policy_gen *gen;    /* the policy this worker decides with; a reference */
    sg_policy *policy;  /* gen->policies[index] */
    unsigned long seen; /* gw->generation when it last looked */
    sg_tcache *tcache;
    sg_introspect_hold introspected; /* the opaque token last handed out */
    sg_arena arena;
    sg_decision decision;
    sg_site site;
    const sg_catalog_snap *tools; /* the tool catalogue as last seen, or NULL */
    unsigned long tools_version;
    policy_gen *shadow_gen;      /* the shadow policy (a reference), or NULL */
    sg_policy *shadow_policy;    /* shadow_gen->policies[index] */
    unsigned long audit_seq;     /* generated request ids: this worker's counter */
    char audit_rid_prefix[40];   /* "<boot id>-<worker index>-" once made */
    size_t audit_rid_prefix_len; /* 0 until made */
    const sg_token *audit_token; /* GET/DELETE: the caller, for the record */
    sg_buf audit_scratch;        /* shadow records are formatted here */
    audit_who_cache audit_who;
    audit_rule_cache audit_rule;
    audit_middle_cache audit_middle;
    audit_tail_cache audit_tail;
    audit_spares audit_spares;
};

struct sg_gateway {
    unsigned nworkers;
    worker *workers;
    sg_mcp_limits mcp_limits;
    sg_annotate annotate;
    sg_identity_header identity[SG_GATEWAY_MAX_IDENTITY];
    size_t nidentity;
    char *policy_path;
    char *public_url;
    /* The policy in force: replaced under gen_mu by sg_gateway_reload;
     * `generation` lets each worker notice with one atomic load per request. */
    pthread_mutex_t gen_mu;
    policy_gen *current;
    atomic_ulong generation;
    /* The upstream's tools (catalog.h), started by the first policy that
     * asks for it and kept until the gateway is freed. */
    _Atomic(sg_catalog *) catalog;
    char *upstream_url, *upstream_ca;
    sg_keys *keys;                      /* the verifier's, for unknown-kid waits */
    const sg_verifier *verifier;        /* borrowed */
    sg_introspector *introspector;      /* borrowed; NULL: opaque tokens refused */
    char *default_authorization_server; /* metadata, when the policy names none */
    sg_policy_limits limits;
    /* The audit log (borrowed) and the shadow policy: a second generation
     * pointer beside `current`, replaced the same way under gen_mu. */
    sg_audit *audit;
    char *shadow_path;
    policy_gen *shadow;
    char boot_id[17]; /* random per process: generated request ids are unique */
};

/* One request of a forwarded body whose answer is filtered: its raw id and
 * what it lists (SG_FILTER_NONE for a request that lists nothing). */
struct sg_gateway_list {
    char *id_raw;
    int kind;
};

/* The header's value (first match, any letter case), or NULL. Can't fail. */
const char *gw_header_get(const sg_gateway_request *req, const char *name);

/* Reads the request's credential (RFC 6750 section 2.1: "Bearer" 1*SP
 * token68) into *token, verified, or NULL. Sets *token_error (a fixed
 * phrase) when a credential is present but unusable, and *unavailable when
 * it is an opaque token the authorization server could not judge. With
 * SG_KID_DEFER, returns the ticket to wait for before deciding, else 0.
 * Worker's thread only; *token is owned by the worker (its token cache or
 * its introspection hold). */
uint64_t gw_authenticate(worker *w, const char *authz, const sg_token **token,
                         const char **token_error, int *unavailable, sg_kid_wait kw);

/* ---- generation.c ---- */

/* Drops one reference; the last frees the generation. NULL is ignored.
 * Thread-safe. Can't fail. */
void gw_gen_release(policy_gen *g);
/* Adds one reference and returns g. Thread-safe. Can't fail. */
policy_gen *gw_gen_retain(policy_gen *g);
/* Loads one copy of the policy per worker and derives the metadata. When
 * want_hash is not NULL every copy must be that text. first, when not NULL,
 * is a copy already loaded: taken over (freed on error too) as worker 0's,
 * and the others must be its text. Returns the generation
 * with one reference; on error, NULL is returned and err says why (naming
 * file and line for a policy error). */
policy_gen *gw_gen_load(const sg_gateway *gw, const char *path, const char *want_hash,
                        sg_policy *first, char *err, size_t errlen);
/* Makes the worker decide with the current policy (and shadow) if a reload
 * replaced them. Request boundaries only, on the worker's thread. Can't
 * fail. */
void gw_worker_refresh(sg_gateway *gw, worker *w);
/* Starts the tool catalogue when the policy asks for one, or asks the
 * running one to fetch again. Construction and reload thread only. Returns
 * 0; on error, -1 is returned and err says why. */
int gw_catalog_follow(sg_gateway *gw, const sg_policy *p, char *err, size_t errlen);
/* The bridge's annotations lookup (ud is the worker): the tool's
 * annotations in the catalogue, or NULL. Worker's thread only. */
const cJSON *gw_worker_tool_annotations(void *ud, const char *tool);

/* ---- auditrec.c ---- */

/* Formats the records of a decided request into out->audit (completed later
 * by sg_gateway_audit_finish) and, when it is forwarded, adds X-Request-Id.
 * body and each may be NULL (a request refused before its messages were
 * known, GET and DELETE): then one record without a message. caller is set
 * when the shadow policy should look at the body. Out of memory leaves the
 * buffer failed (sg_buf_ok), which the writer drops. */
void gw_audit_begin(const sg_gateway *gw, worker *w, const sg_gateway_request *req,
                    const sg_mcp_body *body, const sg_policy_decision *each, const sg_token *token,
                    const sg_bridge_caller *caller, sg_gateway_reply *out);

#endif
