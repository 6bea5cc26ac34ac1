/* mcp.h -- the MCP / JSON-RPC 2.0 message model.
 *
 * An HTTP body is parsed once (strict pre-scan, then cJSON) into an
 * sg_mcp_body: whether it is a batch and, per message, its kind, method,
 * raw id text, the name the policy keys on (tool, prompt or resource URI),
 * the tool/prompt arguments and the requested protocol version. The gateway
 * and the Lua policy layer decide on this model; the upstream receives the
 * original bytes, which the pre-scan guarantees mean the same thing.
 *
 * What is accepted (docs/errors.md has the full table):
 *   - "jsonrpc" exactly "2.0"; "method" a string; "params" an object or an
 *     array when present;
 *   - "id": a string, or an integer written without fraction or exponent
 *     (-0 included, any number of digits up to the id length limit), or null
 *     in responses only (MCP forbids null request ids); the raw text is kept
 *     byte for byte and is at most SG_MCP_MAX_ID_LEN bytes including quotes;
 *   - a request has "method" and "id", a notification "method" and no "id",
 *     a response "id" and exactly one of "result" / "error" (an object with
 *     an integer "code" and a string "message"), and no "method";
 *   - tools/call and prompts/get need a string params.name and, when present,
 *     an object params.arguments; resources/read, resources/subscribe and
 *     resources/unsubscribe need a string params.uri; initialize needs
 *     params.protocolVersion to be a string when present.
 *
 * The folder src/mcp/ is what MCP and its authorization specification say
 * about messages: this model, the event-stream reader of Streamable HTTP
 * (sse.h), the bridge from a parsed body to the requirement and decision of
 * the policy (bridge.h) and the RFC 9728 metadata document (metadata.h).
 */
#ifndef SG_MCP_H
#define SG_MCP_H

#include <stddef.h>
#include <cjson/cJSON.h>

#include "base/sg.h"

/* JSON-RPC error codes used in bodies. */
enum {
    SG_JSONRPC_PARSE_ERROR = -32700,
    SG_JSONRPC_INVALID_REQUEST = -32600,
    SG_JSONRPC_METHOD_NOT_FOUND = -32601,
    SG_JSONRPC_INVALID_PARAMS = -32602,
    SG_JSONRPC_INTERNAL_ERROR = -32603,
    SG_JSONRPC_HEADER_MISMATCH = -32020, /* MCP 2026-07-28: header disagrees with body */
};

#define SG_MCP_MAX_ID_LEN    128
#define SG_MCP_MAX_BODY_CAP  (64u * 1024 * 1024)
#define SG_MCP_MAX_BATCH_CAP 10000

/* The protocol version assumed when MCP-Protocol-Version is missing. */
#define SG_MCP_DEFAULT_VERSION "2025-03-26"
/* The version whose POSTs carry Mcp-Method / Mcp-Name headers. */
#define SG_MCP_HEADERS_VERSION "2026-07-28"

typedef struct sg_mcp_limits {
    size_t max_body;    /* bytes; default 1 MiB, at most SG_MCP_MAX_BODY_CAP */
    unsigned max_depth; /* nesting; default 64, at most SG_JSON_MAX_DEPTH_CAP */
    unsigned max_batch; /* messages in a batch; default 100, at most SG_MCP_MAX_BATCH_CAP */
} sg_mcp_limits;

#define SG_MCP_LIMITS_DEFAULT                                                                      \
    {                                                                                              \
        1024 * 1024, 64, 100                                                                       \
    }

typedef enum sg_mcp_kind {
    SG_MCP_INVALID = 0,
    SG_MCP_REQUEST,
    SG_MCP_NOTIFICATION,
    SG_MCP_RESPONSE,
} sg_mcp_kind;

#define SG_MCP_MESSAGE_LEN 192
/* Largest body whose cJSON tree sg_mcp_parse builds in the caller's arena
 * (a tree takes up to about 36 bytes per byte of body: "[0,0,...]"). */
#define SG_MCP_ARENA_TREE_MAX_BODY 4096

/* One message. Every pointer points into the owning sg_mcp_body (its cJSON
 * tree or its arena) and lives until sg_mcp_body_free (or, for a body
 * parsed in a caller's arena, until that arena is reset). */
typedef struct sg_mcp_msg {
    sg_mcp_kind kind;
    const cJSON *json;  /* the message object; NULL when not an object */
    const char *method; /* requests and notifications */
    const char *id_raw; /* raw id text, NUL-terminated; NULL when absent
                           or unusable (an invalid message whose id could
                           not be recovered is answered with null) */
    size_t id_len;
    const cJSON *params;          /* object or array, or NULL */
    const char *name;             /* params.name (tools/call, prompts/get) or
                                     params.uri (resources/read|subscribe|unsubscribe) */
    const cJSON *arguments;       /* params.arguments object (tools/call, prompts/get) */
    const char *protocol_version; /* initialize: params.protocolVersion */
    int is_error_response;        /* response carrying "error" */
    int error_code;               /* SG_MCP_INVALID only */
    char error_message[SG_MCP_MESSAGE_LEN];
} sg_mcp_msg;

typedef struct sg_mcp_body {
    cJSON *root; /* parsed once; owned */
    int is_batch;
    size_t nmsgs;
    sg_mcp_msg *msgs;
    int error_code; /* 0, or the JSON-RPC code of the whole-body failure */
    char error_message[SG_MCP_MESSAGE_LEN];
    sg_arena arena;  /* its own, when the caller gave none */
    sg_arena *mem;   /* where the messages, id copies (and maybe the tree) are */
    int tree_in_mem; /* the cJSON tree is in *mem too: nothing of it to free */
} sg_mcp_body;

/* Parses body[0..len) into *out (which needs no initialisation). lim may be
 * NULL for the defaults. Returns 0 when the body is usable: a single valid
 * message, or a batch (whose elements may individually be SG_MCP_INVALID,
 * with their own error_code/error_message; the others are still parsed).
 * Otherwise returns the JSON-RPC error code (SG_JSONRPC_PARSE_ERROR,
 * SG_JSONRPC_INVALID_REQUEST, SG_JSONRPC_INVALID_PARAMS, or
 * SG_JSONRPC_INTERNAL_ERROR when out of memory) with out->error_code and
 * out->error_message set ("Parse error: ... at byte 17"). When a single
 * (non-batch) message is invalid, out->nmsgs is 1 and msgs[0] carries the
 * id to answer with, if one could be recovered. Always release *out with
 * sg_mcp_body_free, whatever the return value. scratch may be NULL; else
 * the messages, the id copies and, for a body of at most
 * SG_MCP_ARENA_TREE_MAX_BODY bytes, the cJSON tree (sg_json_arena_begin) are
 * allocated from it, and stay valid until it is reset, which must not
 * happen before sg_mcp_body_free: the gateway passes its per-request arena
 * and so builds a usual body without a single malloc. */
int sg_mcp_parse(const char *body, size_t len, const sg_mcp_limits *lim, sg_arena *scratch,
                 sg_mcp_body *out);

/* Releases everything *body owns and empties it; safe on an emptied or
 * failed body. What it took from a caller's arena stays there. Can't
 * fail. */
void sg_mcp_body_free(sg_mcp_body *body);

/* Appends a complete JSON-RPC error response to out:
 *   {"jsonrpc":"2.0","id":<id>,"error":{"code":C,"message":"M"[,"data":D]}}
 * id_raw/id_len is the raw id text from the request; it is echoed byte for
 * byte when it is a valid id literal (string, integer or null) and replaced
 * by null otherwise (or when id_raw is NULL), so nothing can be injected.
 * message is JSON-escaped (invalid UTF-8 becomes U+FFFD). data is included
 * when it is a cJSON object, else omitted. Allocation failure is recorded in
 * out: check sg_buf_ok(out). */
void sg_mcp_error_render(sg_buf *out, const char *id_raw, size_t id_len, int code,
                         const char *message, const cJSON *data);

/* Returns 1 when version is one of the known protocol versions
 * (2024-11-05, 2025-03-26, 2025-06-18, 2025-11-25, 2026-07-28), 0 otherwise
 * (NULL included). Can't fail. */
int sg_mcp_version_supported(const char *version);

/* The protocol version a request speaks: the MCP-Protocol-Version header
 * value, or SG_MCP_DEFAULT_VERSION when the header is missing (NULL). The
 * result is header itself or a static string. Can't fail; whether the
 * version is supported is sg_mcp_version_supported's question. */
const char *sg_mcp_effective_version(const char *header);

/* The known versions, oldest first, NULL-terminated. Static; can't fail. */
const char *const *sg_mcp_versions(void);

/* For protocol version SG_MCP_HEADERS_VERSION, checks the Mcp-Method and
 * Mcp-Name header values (NULL when missing) against a parsed single-message
 * body: a request or notification needs Mcp-Method equal to its method;
 * tools/call and prompts/get need Mcp-Name equal to params.name,
 * resources/read equal to params.uri. A response must carry no Mcp-Method.
 * Header values of the form "=?base64?...?=" are decoded first. Other
 * versions are not checked (their clients do not send these headers; the
 * gateway decides on the body alone). Returns 0 when consistent, else
 * SG_JSONRPC_HEADER_MISMATCH (or SG_JSONRPC_INVALID_REQUEST for a batch,
 * which that version does not allow) with a message naming the header
 * written to msg (msg_size bytes, always NUL-terminated when msg_size > 0). */
int sg_mcp_check_headers(const sg_mcp_body *body, const char *version, const char *mcp_method,
                         const char *mcp_name, char *msg, size_t msg_size);

#endif
