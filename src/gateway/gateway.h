/* gateway.h -- one MCP request, from HTTP to a decision.
 *
 * The glue between the HTTP front (http.h) and the core: for a POST it parses
 * the body once (mcp.h), verifies the bearer token (token.h, through the
 * calling worker's cache), asks the worker's policy state for each message's
 * requirement, decides (challenge.h) and either answers (401/403 with a
 * challenge, 400 for a malformed message) or tells the HTTP layer to forward.
 * It also renders the RFC 9728 metadata and the JSON-RPC bodies for upstream
 * failures. It knows nothing of sockets.
 *
 * Workers: the gateway holds `workers` independent contexts
 * (sg_gateway_worker: a policy Lua state, a token cache, scratch memory);
 * a context is used by one thread only, the one whose worker holds it
 * (sg_gateway_worker_of). The gateway allocates them because a reload loads
 * one copy of the policy for each; the caller's worker (src/net/worker.h)
 * is the only thread that touches one.
 *
 * The folder src/gateway/ is one request through the product: this access
 * decision and list filtering, the upstream tool catalogue (catalog.h) and
 * the policy lifecycle (reload.h: watching files, SIGHUP, swapping
 * generations).
 */
#ifndef SG_GATEWAY_H
#define SG_GATEWAY_H

#include <stddef.h>

#include "gateway/audit.h"
#include "mcp/mcp.h"
#include "policy/policy.h"
#include "upstream/proxy.h"
#include "base/sg.h"
#include "auth/token.h"
#include "auth/authserver.h"

/* How tools in a filtered tools/list show the scopes they need. */
typedef enum sg_annotate {
    SG_ANNOTATE_OAUTH_SCOPE,      /* annotations.oauthScope: "s" | {anyOf|allOf: [...]} */
    SG_ANNOTATE_SECURITY_SCHEMES, /* securitySchemes: [{type:"oauth2",scopes:[...]}, ...] */
    SG_ANNOTATE_NONE
} sg_annotate;

/* A verified-identity header: the caller's `claim`, sent upstream as
 * `header` (only for requests with a valid token). */
typedef struct sg_identity_header {
    const char *header;
    const char *claim;
} sg_identity_header;

#define SG_GATEWAY_MAX_IDENTITY 8
/* Longest X-Request-Id kept from a client (and the audit log's request_id). */
#define SG_GATEWAY_REQUEST_ID_MAX 128

typedef struct sg_gateway_config {
    const char *policy_path; /* loaded once per worker */
    /* A copy of policy_path the caller has already loaded with
     * policy_limits (serve does, to learn the policy's `resource` before
     * the verifier exists), or NULL. sg_gateway_new takes it over, whether
     * it succeeds or not, as one worker's copy: it is not loaded again. */
    sg_policy *preloaded_policy;
    const sg_verifier *verifier; /* borrowed; shared by all workers */
    size_t token_cache_entries;  /* per worker; 0: the default */
    unsigned workers;            /* >= 1 */
    const char *mcp_path;        /* e.g. "/mcp" */
    /* The public URL of the MCP endpoint (e.g. https://mcp.example.com/mcp):
     * its origin and the MCP path make the resource_metadata URL. NULL: the
     * policy's resource. */
    const char *public_url;
    sg_mcp_limits mcp_limits;
    sg_annotate annotate;
    const sg_identity_header
        *identity; /* at most SG_GATEWAY_MAX_IDENTITY; borrowed, must outlive the gateway */
    size_t nidentity;
    /* For a policy with tool_annotations = "upstream": where the catalogue
     * of the upstream's tools is fetched from (catalog.h). Borrowed. */
    const char *upstream_url;
    const char *upstream_ca; /* NULL: the system's CAs */
    /* Sandbox limits for every policy state (zero fields: the defaults). */
    sg_policy_limits policy_limits;
    /* Opaque tokens (not a JWS) are introspected with it; NULL: refused as
     * before (wrong_segment_count, malformed). Borrowed; must outlive the
     * gateway. */
    sg_introspector *introspector;
    /* The metadata's authorization_servers when the policy names none
     * (the issuer discovery was run for); NULL: an empty list. */
    const char *default_authorization_server;
    /* The audit log (audit.h), borrowed; NULL: no audit records, no
     * X-Request-Id. Must outlive the gateway. */
    sg_audit *audit;
    /* A candidate policy evaluated beside the live one without being
     * enforced (needs audit: disagreements are recorded there). NULL: none. */
    const char *shadow_policy_path;
} sg_gateway_config;

typedef struct sg_gateway sg_gateway;
/* One worker's context in the gateway: its policy state (the generation it
 * decides with), its token cache, its arena. Opaque. */
typedef struct sg_gateway_worker sg_gateway_worker;

/* Loads the policy once per worker (but for cfg->preloaded_policy).
 * Returns NULL with a message (naming the file and line for a policy error)
 * in err. */
sg_gateway *sg_gateway_new(const sg_gateway_config *cfg, char *err, size_t errlen);

/* Hot reload. Runs everything `scopegate check` runs on the policy file
 * (and the modules it requires), then loads a fresh copy per worker and
 * makes it current: each worker switches at its next request boundary, and
 * a request in flight finishes on the policy it started with (its list
 * answer is filtered by that policy). The metadata document and challenges
 * follow the new policy. Writes the hash of the text it read into hash.
 * Returns 0 when the new policy is in force, 1 when the text is the one
 * already in force (nothing changed), and -1 when it is refused: the
 * previous policy stays, and report holds one "file:line: ..." line per
 * error. Thread-safe against requests; call from one thread at a time. */
int sg_gateway_reload(sg_gateway *gw, sg_buf *report, char hash[SG_POLICY_HASH_LEN + 1]);
/* The same for the shadow policy (cfg.shadow_policy_path), with the same
 * return values: a refused candidate keeps the previous one. Returns 1
 * (nothing to do) when the gateway has no shadow policy. */
int sg_gateway_reload_shadow(sg_gateway *gw, sg_buf *report, char hash[SG_POLICY_HASH_LEN + 1]);
/* 1 when the gateway evaluates a shadow policy. Can't fail. */
int sg_gateway_has_shadow(const sg_gateway *gw);
/* The hash of the shadow policy in force ("" without one). Thread-safe. */
void sg_gateway_shadow_hash(sg_gateway *gw, char hash[SG_POLICY_HASH_LEN + 1]);
/* 1 when the gateway writes an audit record per decision, so the HTTP layer
 * passes the client's address and reports each outcome
 * (sg_gateway_audit_finish). Can't fail. */
int sg_gateway_audits(const sg_gateway *gw);
/* The upstream said its tool list changed (a notifications/tools/list_changed
 * passed through): refetch the tool catalogue, if the policy keeps one.
 * Thread-safe; returns at once. */
void sg_gateway_tools_changed(sg_gateway *gw);
/* 1 when the gateway keeps a tool catalogue, so the HTTP layer should look
 * for list_changed notifications in what the upstream streams. One atomic
 * load; thread-safe. */
int sg_gateway_keeps_catalog(sg_gateway *gw);

/* Makes every worker forget its verified tokens at its next request, so
 * each token is verified again with the keys in force (after SIGHUP re-read
 * them: a token of a removed key must stop working at once). Thread-safe;
 * can't fail. */
void sg_gateway_forget_tokens(sg_gateway *gw);
/* The files the policy in force ran (the policy file first, then each
 * module it required; then the shadow policy's), for the reloader's watch list: a NULL-terminated
 * malloc'd array of malloc'd paths (free it with sg_strv_free). Returns
 * NULL when out of memory. Thread-safe. */
char **sg_gateway_policy_files(sg_gateway *gw);
/* The hash of the policy in force. Thread-safe; can't fail. */
void sg_gateway_policy_hash(sg_gateway *gw, char hash[SG_POLICY_HASH_LEN + 1]);
/* NULL is fine. */
void sg_gateway_free(sg_gateway *gw);
/* Context i (< cfg.workers), owned by the gateway and valid until it is
 * freed; NULL for an index out of range. Hand it to one thread only: every
 * call that takes it must be made on that thread. Can't fail otherwise. */
sg_gateway_worker *sg_gateway_worker_of(sg_gateway *gw, unsigned i);

/* One HTTP request on the MCP endpoint, as the HTTP layer saw it. Header
 * names are as received (matched case-insensitively); a header that occurs
 * more than once is listed more than once. */
typedef struct sg_gateway_request {
    sg_gateway_worker *worker; /* the calling thread's context (sg_gateway_worker_of) */
    const char *method;
    const sg_header *headers;
    size_t nheaders;
    const char *body;
    size_t body_len;
    /* 1 when this request already waited (a second call of
     * sg_gateway_handle after it returned SG_GATEWAY_WAIT): decide with the keys in force
     * and the introspection answers cached, never wait again. */
    int waited;
    /* The client's address (numeric), for the audit log; NULL when unknown
     * or when the gateway does not audit. */
    const char *client_addr;
    /* sg_now_mono_ns() when the request arrived, for the audit record's
     * time; 0: unknown (the time of the decision is used). */
    uint64_t received_ns;
} sg_gateway_request;

/* The answer: either a complete response (status != 0) or "forward". */
typedef struct sg_gateway_reply {
    int status;               /* 0: forward upstream */
    const char *content_type; /* static string, or NULL for no body */
    sg_buf body;
    sg_buf www_authenticate; /* empty when none */
    const char *allow;       /* Allow header for 405, else NULL */
    /* When forwarding: */
    char id_raw[SG_MCP_MAX_ID_LEN + 1]; /* request id for error bodies; "" = null */
    int accepted_only;                  /* only notifications/responses: answer 202 with no body */
    int filter;                         /* the answer must pass sg_gateway_filter */
    char *authorization;                /* copy of the credential, to re-check at filter time */
    char *protocol_version;
    struct sg_gateway_list *lists; /* with filter: every request (id, kind) of the body */
    size_t nlists;
    /* Headers the gateway adds upstream: the verified-identity headers
     * (values owned), and X-Request-Id when auditing (its value is
     * request_id below, not owned). */
    sg_header identity[SG_GATEWAY_MAX_IDENTITY + 1];
    size_t nidentity;
    char request_id[SG_GATEWAY_REQUEST_ID_MAX + 1]; /* when auditing; "" otherwise */
    struct sg_policy_gen *policy_gen; /* with filter: the policy that decided (a reference) */
    /* sg_gateway_handle returned SG_GATEWAY_WAIT: what to wait for (a key refetch or an
     * introspection call; sg_gateway_wait_done tells them apart). */
    uint64_t wait_ticket;
    /* When auditing: the records of this request waiting for its outcome
     * (sg_gateway_audit_finish), one per message; 0 once written. */
    size_t naudit;
    sg_buf audit; /* per message: its raw id ("" for none) and its record's
                     opening part, each NUL-terminated */
    struct sg_gateway_worker *audit_worker; /* whose spare buffers `audit` goes back to */
} sg_gateway_reply;

/* Which list result a request's answer carries. */
enum {
    SG_FILTER_NONE,
    SG_FILTER_TOOLS,
    SG_FILTER_PROMPTS,
    SG_FILTER_RESOURCES,
    SG_FILTER_TEMPLATES
};

/* Largest list answer buffered for filtering; beyond it the answer is 502. */
#define SG_GATEWAY_MAX_LIST_BYTES (8u * 1024 * 1024)

/* Empties a reply before first use. Can't fail. */
void sg_gateway_reply_init(sg_gateway_reply *r);
/* Releases the buffers and re-initialises. Can't fail. */
void sg_gateway_reply_free(sg_gateway_reply *r);

/* What the caller of sg_gateway_handle does next. */
typedef enum sg_gateway_action {
    SG_GATEWAY_FORWARD, /* forward the request upstream, as *out plans */
    SG_GATEWAY_ANSWER,  /* send *out: it is the complete answer */
    SG_GATEWAY_WAIT     /* park until sg_gateway_wait_done(gw, out->wait_ticket) */
} sg_gateway_action;

/* Decides one request. Always fills *out (status 500 with a JSON-RPC error
 * when out of memory: fail closed). Returns SG_GATEWAY_FORWARD to forward,
 * SG_GATEWAY_ANSWER when *out is the answer, and SG_GATEWAY_WAIT when the
 * answer depends on the network: the token's kid is unknown and a key
 * refetch that may bring it is under way on the key refresher thread, or
 * the token is opaque and its introspection call is queued or running. The
 * caller then parks the request without blocking its thread until
 * sg_gateway_wait_done(gw, out->wait_ticket), and calls again with
 * req->waited = 1 (which never returns SG_GATEWAY_WAIT). An opaque token
 * the authorization server could not judge is answered 503. Must be called
 * on the thread that holds req->worker. */
sg_gateway_action sg_gateway_handle(sg_gateway *gw, const sg_gateway_request *req,
                                    sg_gateway_reply *out);

/* 1 once what the ticket waits for (a key refetch or an introspection
 * call) has finished, well or not. One atomic load; thread-safe. */
int sg_gateway_wait_done(sg_gateway *gw, uint64_t ticket);
/* fn(ud) is called (on the key refresher thread or an introspection
 * thread; it must only wake someone) after every key refetch and every
 * introspection call, so parked requests can be looked at. NULL removes it;
 * once this returns no call of the old one is under way. Can't fail. */
void sg_gateway_on_wake(sg_gateway *gw, void (*fn)(void *ud), void *ud);

/* How a request ended, for its audit records. */
typedef struct sg_gateway_outcome {
    int status;          /* the HTTP status the client got; 0: none (it went away) */
    int upstream_status; /* the upstream's HTTP status; 0: no response */
    /* Why there is no usable upstream answer ("unreachable", "timeout",
     * "broken", "client_gone", "shutdown", "error"), or NULL to classify
     * the answer: "http_error" for a status of 400 and above, else per
     * message from body (a complete application/json or text/event-stream
     * answer): "jsonrpc_error", "tool_error" (a result with isError: true)
     * or "ok"; "streamed" when body is NULL (passed through unread). */
    const char *upstream_outcome;
    const char *content_type; /* of body */
    const char *body;
    size_t body_len;
    uint64_t started_ns; /* sg_now_mono_ns() when the request arrived */
    uint64_t now_ns;     /* sg_now_mono_ns() when the outcome was known; 0: now */
} sg_gateway_outcome;

/* Completes and queues the audit records of a decided request (one per
 * message) with its outcome, then forgets them (naudit = 0): a second call
 * does nothing. Call on the thread that owns the request's worker, once the
 * answer is known (for a streamed answer: when the stream starts). Never
 * blocks; a record the audit log cannot take is counted there. */
void sg_gateway_audit_finish(sg_gateway *gw, sg_gateway_reply *r, const sg_gateway_outcome *o);

/* Filters a complete tools/prompts/resources list answer (application/json,
 * or text/event-stream read by sse.h, whose blocks are kept in order with
 * their id:, event:, retry: and comment lines) down to the items the
 * caller's token satisfies in the policy's list phase, annotating each kept
 * tool with its requirement (annotations.oauthScope: a scope,
 * {"anyOf":[...]} or {"allOf":[...]}). The response id is re-emitted from
 * the request's raw id text. Every JSON message must pass sg_json_prescan,
 * every response must answer a request of the body once, and every list
 * request must be answered once (an error, or a result holding its list).
 * Must run on the thread that holds `worker`. Appends the new body to out
 * and returns 0; an event stream that fails those checks is replaced by one
 * JSON-RPC error event per request (still 0, logged). Returns -1 (the
 * caller answers 502) when a JSON answer fails them, for any other content
 * type, or when out of memory: a list that cannot be filtered is never
 * passed through. */
int sg_gateway_filter(sg_gateway *gw, sg_gateway_worker *worker, const sg_gateway_reply *plan,
                      const char *content_type, const char *body, size_t len, sg_buf *out);

/* Appends the RFC 9728 protected resource metadata JSON of the policy in
 * force. Returns 0, or -1 when out of memory. Must be called on the thread
 * that holds `worker` (it may switch that worker to a reloaded policy). */
int sg_gateway_metadata(sg_gateway *gw, sg_gateway_worker *worker, sg_buf *out);

/* Renders the answer for a forwarded request whose upstream failed before a
 * response: status (502 or 504, 503 on shutdown) and a JSON-RPC error body
 * with the request's id. Can't fail (allocation failure recorded in body). */
void sg_gateway_upstream_error(const sg_gateway_reply *plan, sg_proxy_error e, int *status,
                               sg_buf *body);

/* Renders a JSON-RPC error body with a null id (for answers the HTTP layer
 * gives by itself: 403 Origin, 413, 503...). Can't fail. */
void sg_gateway_error_body(sg_buf *body, int code, const char *message);

#endif
