/* mcp.c -- parses an HTTP body once into the MCP / JSON-RPC message model
 * (see mcp.h), renders JSON-RPC error bodies, and knows the protocol
 * versions and the 2026-07-28 header/body consistency rule.
 *
 * The body goes through the strict pre-scan (json.c) before cJSON sees it,
 * so that the tree the policy decides on cannot differ from what the
 * upstream parses: no duplicate keys, no \u0000 truncation, valid UTF-8,
 * nothing after the value. Ids are never re-printed from cJSON's doubles:
 * the raw bytes recorded by the scan are kept and echoed. */
#include "mcp/mcp.h"
#include "base/uri.h"

#include "base/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const known_versions[] = {
    "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28", NULL,
};

static void set_message(char *dst, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_message(char *dst, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, SG_MCP_MESSAGE_LEN, fmt, ap);
    va_end(ap);
}

static sg_mcp_limits effective_limits(const sg_mcp_limits *lim)
{
    sg_mcp_limits l = SG_MCP_LIMITS_DEFAULT;
    if (lim) {
        if (lim->max_body) l.max_body = lim->max_body;
        if (lim->max_depth) l.max_depth = lim->max_depth;
        if (lim->max_batch) l.max_batch = lim->max_batch;
    }
    if (l.max_body > SG_MCP_MAX_BODY_CAP) l.max_body = SG_MCP_MAX_BODY_CAP;
    if (l.max_depth > SG_JSON_MAX_DEPTH_CAP) l.max_depth = SG_JSON_MAX_DEPTH_CAP;
    if (l.max_batch > SG_MCP_MAX_BATCH_CAP) l.max_batch = SG_MCP_MAX_BATCH_CAP;
    return l;
}

static int body_fail(sg_mcp_body *out, int code, const char *prefix, const char *detail)
{
    out->error_code = code;
    set_message(out->error_message, "%s: %s", prefix, detail);
    return code;
}

static const char *code_prefix(int code)
{
    switch (code) {
    case SG_JSONRPC_PARSE_ERROR:
        return "Parse error";
    case SG_JSONRPC_INVALID_REQUEST:
        return "Invalid Request";
    case SG_JSONRPC_INVALID_PARAMS:
        return "Invalid params";
    case SG_JSONRPC_METHOD_NOT_FOUND:
        return "Method not found";
    case SG_JSONRPC_HEADER_MISMATCH:
        return "Header mismatch";
    default:
        return "Internal error";
    }
}

static int invalid(sg_mcp_msg *m, int code, const char *detail)
{
    m->kind = SG_MCP_INVALID;
    m->error_code = code;
    set_message(m->error_message, "%s: %s", code_prefix(code), detail);
    return code;
}

static const char *string_member(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Methods whose params carry the name a policy keys on, and where. */
static const char *name_member_for(const char *method)
{
    if (strcmp(method, "tools/call") == 0 || strcmp(method, "prompts/get") == 0) return "name";
    if (strcmp(method, "resources/read") == 0 || strcmp(method, "resources/subscribe") == 0 ||
        strcmp(method, "resources/unsubscribe") == 0)
        return "uri";
    return NULL;
}

/* A resource URI must be in its RFC 3986 normal form (uri.h), the form the
 * policy matches: one without a normal form, or in another form, is refused
 * rather than rewritten, so that what is forwarded is byte for byte what
 * was decided (and still equals an Mcp-Name header). Returns 0 or the
 * JSON-RPC error code (with m marked invalid). */
static int check_uri(sg_mcp_msg *m)
{
    sg_buf norm = SG_BUF_INIT;
    const char *why = NULL;
    size_t len = strlen(m->name);
    int rc = sg_uri_normalize(m->name, len, &norm, &why);
    if (rc == 0 && !sg_buf_ok(&norm)) {
        rc = SG_JSONRPC_INTERNAL_ERROR;
        m->kind = SG_MCP_INVALID;
        m->error_code = rc;
        set_message(m->error_message, "Internal error: out of memory");
    } else if (rc != 0) {
        m->kind = SG_MCP_INVALID;
        m->error_code = rc = SG_JSONRPC_INVALID_PARAMS;
        set_message(m->error_message,
                    "Invalid params: \"params.uri\" has no unambiguous normal form: %s", why);
    } else if (norm.len != len || memcmp(norm.data, m->name, len) != 0) {
        sg_buf msg = SG_BUF_INIT;
        sg_json_append_string(&msg, norm.data, norm.len);
        m->kind = SG_MCP_INVALID;
        m->error_code = rc = SG_JSONRPC_INVALID_PARAMS;
        set_message(m->error_message,
                    "Invalid params: \"params.uri\" is not in normal form (RFC 3986 section "
                    "6.2.2); its normal form is %s",
                    sg_buf_ok(&msg) && msg.data ? msg.data : "\"\"");
        sg_buf_free(&msg);
    }
    sg_buf_free(&norm);
    return rc;
}

/* Fills in the method-specific fields of a request or notification. Returns
 * 0 or the JSON-RPC error code (with m marked invalid). */
static int classify_params(sg_mcp_msg *m)
{
    const char *member = name_member_for(m->method);
    if (member) {
        if (!cJSON_IsObject(m->params) || !(m->name = string_member(m->params, member))) {
            char detail[96];
            snprintf(detail, sizeof detail, "%s needs a string \"params.%s\"", m->method, member);
            m->name = NULL;
            return invalid(m, SG_JSONRPC_INVALID_PARAMS, detail);
        }
        if (strcmp(member, "uri") == 0) {
            int rc = check_uri(m);
            if (rc != 0) return rc;
        }
        if (strcmp(member, "name") == 0) {
            const cJSON *args = cJSON_GetObjectItemCaseSensitive(m->params, "arguments");
            if (args && !cJSON_IsObject(args))
                return invalid(m, SG_JSONRPC_INVALID_PARAMS,
                               "\"params.arguments\" must be an object");
            m->arguments = args;
        }
    }
    if (strcmp(m->method, "initialize") == 0 && cJSON_IsObject(m->params)) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(m->params, "protocolVersion");
        if (v && !cJSON_IsString(v))
            return invalid(m, SG_JSONRPC_INVALID_PARAMS,
                           "\"params.protocolVersion\" must be a string");
        m->protocol_version = v ? v->valuestring : NULL;
    }
    return 0;
}

static int error_object_valid(const cJSON *err)
{
    if (!cJSON_IsObject(err)) return 0;
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(err, "code");
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(err, "message");
    if (!cJSON_IsNumber(code) || !cJSON_IsString(message)) return 0;
    double c = code->valuedouble;
    return isfinite(c) && c == floor(c) && fabs(c) <= 2147483647.0;
}

/* Classifies one element. span is the id value's bytes in the body (len 0
 * when the message has no "id"). Returns 0 or the element's error code. */
static int classify(sg_mcp_msg *m, const cJSON *item, const char *body, sg_json_span span,
                    sg_arena *arena)
{
    memset(m, 0, sizeof *m);
    if (!cJSON_IsObject(item))
        return invalid(m, SG_JSONRPC_INVALID_REQUEST, "a message must be a JSON object");
    m->json = item;

    const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
    if (id) {
        if (span.len == 0)
            return invalid(m, SG_JSONRPC_INVALID_REQUEST, "id not found in the body");
        if (span.len > SG_MCP_MAX_ID_LEN) {
            char detail[64];
            snprintf(detail, sizeof detail, "id longer than %d bytes", SG_MCP_MAX_ID_LEN);
            return invalid(m, SG_JSONRPC_INVALID_REQUEST, detail);
        }
        if (!sg_json_is_id_literal(body + span.off, span.len))
            return invalid(m, SG_JSONRPC_INVALID_REQUEST,
                           "id must be a string, an integer or null");
        char *copy = sg_arena_strndup(arena, body + span.off, span.len);
        if (!copy) return invalid(m, SG_JSONRPC_INTERNAL_ERROR, "out of memory");
        m->id_raw = copy;
        m->id_len = span.len;
    }

    const char *version = string_member(item, "jsonrpc");
    if (!version || strcmp(version, "2.0") != 0)
        return invalid(m, SG_JSONRPC_INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\"");

    const cJSON *method = cJSON_GetObjectItemCaseSensitive(item, "method");
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(item, "result");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(item, "error");
    if (method) {
        if (!cJSON_IsString(method))
            return invalid(m, SG_JSONRPC_INVALID_REQUEST, "\"method\" must be a string");
        if (result || error)
            return invalid(m, SG_JSONRPC_INVALID_REQUEST,
                           "a message cannot carry both \"method\" and \"result\" or \"error\"");
        if (cJSON_IsNull(id))
            return invalid(m, SG_JSONRPC_INVALID_REQUEST, "a request id must not be null");
        m->method = method->valuestring;
        m->kind = id ? SG_MCP_REQUEST : SG_MCP_NOTIFICATION;
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(item, "params");
        if (params && !cJSON_IsObject(params) && !cJSON_IsArray(params))
            return invalid(m, SG_JSONRPC_INVALID_REQUEST,
                           "\"params\" must be an object or an array");
        m->params = params;
        return classify_params(m);
    }
    if (result || error) {
        if (result && error)
            return invalid(m, SG_JSONRPC_INVALID_REQUEST,
                           "a response cannot carry both \"result\" and \"error\"");
        if (!id) return invalid(m, SG_JSONRPC_INVALID_REQUEST, "a response needs an \"id\"");
        if (error && !error_object_valid(error))
            return invalid(m, SG_JSONRPC_INVALID_REQUEST,
                           "\"error\" must be an object with an integer \"code\" and a string "
                           "\"message\"");
        m->kind = SG_MCP_RESPONSE;
        m->is_error_response = error != NULL;
        return 0;
    }
    return invalid(m, SG_JSONRPC_INVALID_REQUEST,
                   "a message needs \"method\", or \"result\" or \"error\"");
}

static int scan_error_code(sg_json_errkind kind)
{
    switch (kind) {
    case SG_JSON_ERR_SYNTAX:
        return SG_JSONRPC_PARSE_ERROR;
    case SG_JSON_ERR_NOMEM:
        return SG_JSONRPC_INTERNAL_ERROR;
    default:
        return SG_JSONRPC_INVALID_REQUEST;
    }
}

/* cJSON's tree of the whole body into out->root: in scratch (see
 * sg_mcp_parse) or on the heap. Returns 0, or -1 when cJSON refused it or
 * stopped before the body's end (out->root may then be set: it is freed
 * with the body). Only a small body's tree goes to the caller's arena: a
 * reset keeps the arena's first block only, but until then a worker would
 * hold a large body's tree (tens of bytes per value, megabytes for a body
 * at the size limit) after its request is over. */
static int parse_tree(sg_mcp_body *out, const char *body, size_t len, sg_arena *scratch)
{
    const char *end = NULL;
    out->tree_in_mem = len <= SG_MCP_ARENA_TREE_MAX_BODY && sg_json_arena_begin(scratch);
    out->root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (out->tree_in_mem) sg_json_arena_end();
    if (!out->root || !end) return -1;
    while (end < body + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    return end == body + len ? 0 : -1;
}

int sg_mcp_parse(const char *body, size_t len, const sg_mcp_limits *lim, sg_arena *scratch,
                 sg_mcp_body *out)
{
    memset(out, 0, sizeof *out);
    sg_arena_init(&out->arena, 1024);
    out->mem = scratch ? scratch : &out->arena;
    sg_mcp_limits l = effective_limits(lim);

    if (!body) len = 0;
    if (len > l.max_body) {
        char detail[64];
        snprintf(detail, sizeof detail, "body larger than %zu bytes", l.max_body);
        return body_fail(out, SG_JSONRPC_INVALID_REQUEST, "Invalid Request", detail);
    }

    sg_json_limits jl = {.max_depth = l.max_depth, .max_top_elements = l.max_batch};
    sg_json_scan scan;
    sg_json_error err;
    if (sg_json_prescan(body, len, &jl, &scan, &err) != 0) {
        int code = scan_error_code(err.kind);
        if (err.kind == SG_JSON_ERR_TOO_MANY_ELEMENTS) {
            char detail[64];
            snprintf(detail, sizeof detail, "batch larger than %u messages", l.max_batch);
            return body_fail(out, code, code_prefix(code), detail);
        }
        return body_fail(out, code, code_prefix(code), err.message);
    }

    int rc = 0;
    if (!scan.top_is_array && !scan.top_is_object) {
        rc = body_fail(out, SG_JSONRPC_INVALID_REQUEST, "Invalid Request",
                       "the body must be a JSON object or array");
        goto done;
    }
    if (scan.top_is_array && scan.nmessages == 0) {
        rc = body_fail(out, SG_JSONRPC_INVALID_REQUEST, "Invalid Request", "empty batch");
        goto done;
    }

    if (parse_tree(out, body, len, scratch) != 0) {
        /* The scan accepted it, so this is cJSON running out of memory or a
         * disagreement between the two parsers: fail closed either way. */
        rc = body_fail(out, SG_JSONRPC_PARSE_ERROR, "Parse error",
                       "the body was rejected by the JSON parser");
        goto done;
    }

    out->is_batch = scan.top_is_array;
    size_t n = scan.nmessages;
    if (out->is_batch && (size_t)cJSON_GetArraySize(out->root) != n) {
        rc = body_fail(out, SG_JSONRPC_INTERNAL_ERROR, "Internal error", "batch size disagrees");
        goto done;
    }
    out->msgs = sg_arena_alloc(out->mem, n * sizeof *out->msgs);
    if (!out->msgs) {
        rc = body_fail(out, SG_JSONRPC_INTERNAL_ERROR, "Internal error", "out of memory");
        goto done;
    }
    out->nmsgs = n;
    const cJSON *item = out->is_batch ? out->root->child : out->root;
    for (size_t i = 0; i < n && item; i++, item = item->next) {
        int code = classify(&out->msgs[i], item, body, scan.id_spans[i], out->mem);
        if (code != 0 && !out->is_batch) {
            out->error_code = code;
            memcpy(out->error_message, out->msgs[i].error_message, SG_MCP_MESSAGE_LEN);
            rc = code;
        }
    }

done:
    sg_json_scan_free(&scan);
    return rc;
}

void sg_mcp_body_free(sg_mcp_body *body)
{
    if (!body->tree_in_mem) cJSON_Delete(body->root);
    sg_arena_free(&body->arena);
    memset(body, 0, sizeof *body);
}

void sg_mcp_error_render(sg_buf *out, const char *id_raw, size_t id_len, int code,
                         const char *message, const cJSON *data)
{
    sg_buf_puts(out, "{\"jsonrpc\":\"2.0\",\"id\":");
    if (id_raw && id_len <= SG_MCP_MAX_ID_LEN && sg_json_is_id_literal(id_raw, id_len))
        sg_buf_append(out, id_raw, id_len);
    else
        sg_buf_puts(out, "null");
    sg_buf_puts(out, ",\"error\":{\"code\":"); /* by pieces: every refusal renders one */
    if (code < 0) sg_buf_putc(out, '-');
    sg_buf_put_uint(out, code < 0 ? 0ull - (unsigned long long)code : (unsigned long long)code);
    sg_buf_puts(out, ",\"message\":");
    if (!message) message = code_prefix(code);
    sg_json_append_string(out, message, strlen(message));
    if (cJSON_IsObject(data)) {
        char *printed = cJSON_PrintUnformatted(data);
        if (!printed) {
            out->oom = 1;
            return;
        }
        sg_buf_puts(out, ",\"data\":");
        sg_buf_puts(out, printed);
        cJSON_free(printed);
    }
    sg_buf_puts(out, "}}");
}

int sg_mcp_version_supported(const char *version)
{
    if (!version) return 0;
    for (size_t i = 0; known_versions[i]; i++)
        if (strcmp(version, known_versions[i]) == 0) return 1;
    return 0;
}

const char *sg_mcp_effective_version(const char *header)
{
    return header ? header : SG_MCP_DEFAULT_VERSION;
}

const char *const *sg_mcp_versions(void)
{
    return known_versions;
}

static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes standard base64 (padding optional) into out. Returns 0, or -1 on
 * a character outside the alphabet or a dangling single sextet. */
static int base64_decode(const char *s, size_t len, sg_buf *out)
{
    while (len > 0 && s[len - 1] == '=')
        len--;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = base64_value((unsigned char)s[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            sg_buf_putc(out, (char)((acc >> bits) & 0xFF));
        }
    }
    return bits >= 6 ? -1 : 0;
}

/* Compares a header value with a body value, decoding the "=?base64?...?="
 * form first. Returns 1 when equal, 0 when not, -1 when the value is
 * malformed base64, -2 when out of memory. */
static int header_equals(const char *header, const char *expected)
{
    static const char prefix[] = "=?base64?", suffix[] = "?=";
    size_t hl = strlen(header), pl = sizeof prefix - 1, sl = sizeof suffix - 1;
    if (hl < pl + sl || memcmp(header, prefix, pl) != 0 ||
        memcmp(header + hl - sl, suffix, sl) != 0)
        return strcmp(header, expected) == 0;
    sg_buf decoded = SG_BUF_INIT;
    int rc = base64_decode(header + pl, hl - pl - sl, &decoded);
    if (rc == 0 && !sg_buf_ok(&decoded)) rc = -2;
    if (rc == 0)
        rc = decoded.len == strlen(expected) &&
             (decoded.len == 0 || memcmp(decoded.data, expected, decoded.len) == 0);
    sg_buf_free(&decoded);
    return rc;
}

__attribute__((format(printf, 4, 5))) static int mismatch(char *msg, size_t msg_size, int code,
                                                          const char *fmt, ...)
{
    if (msg && msg_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msg_size, fmt, ap);
        va_end(ap);
    }
    return code;
}

int sg_mcp_check_headers(const sg_mcp_body *body, const char *version, const char *mcp_method,
                         const char *mcp_name, char *msg, size_t msg_size)
{
    if (msg && msg_size) msg[0] = '\0';
    if (!version || strcmp(version, SG_MCP_HEADERS_VERSION) != 0) return 0;
    if (body->is_batch)
        return mismatch(msg, msg_size, SG_JSONRPC_INVALID_REQUEST,
                        "Invalid Request: batches are not allowed in protocol version %s",
                        SG_MCP_HEADERS_VERSION);
    if (body->nmsgs != 1 || body->msgs[0].kind == SG_MCP_INVALID)
        return mismatch(msg, msg_size, SG_JSONRPC_INVALID_REQUEST, "%s",
                        "Invalid Request: the body is not a valid message");
    const sg_mcp_msg *m = &body->msgs[0];
    if (m->kind == SG_MCP_RESPONSE) {
        if (mcp_method)
            return mismatch(msg, msg_size, SG_JSONRPC_HEADER_MISMATCH,
                            "Header mismatch: %s header sent with a response", "Mcp-Method");
        return 0;
    }
    const char *checks[2][3] = {
        {"Mcp-Method", mcp_method, m->method},
        {"Mcp-Name", mcp_name, name_member_for(m->method) ? m->name : NULL}};
    /* prompts/get and tools/call carry Mcp-Name; of the resource methods only
     * resources/read does. */
    if (strcmp(m->method, "resources/subscribe") == 0 ||
        strcmp(m->method, "resources/unsubscribe") == 0)
        checks[1][2] = NULL;
    for (size_t i = 0; i < 2; i++) {
        const char *header = checks[i][0], *value = checks[i][1], *expected = checks[i][2];
        if (!expected) continue;
        if (!value)
            return mismatch(msg, msg_size, SG_JSONRPC_HEADER_MISMATCH,
                            "Header mismatch: missing %s header", header);
        int eq = header_equals(value, expected);
        if (eq == -2)
            return mismatch(msg, msg_size, SG_JSONRPC_INTERNAL_ERROR, "%s",
                            "Internal error: out of memory");
        if (eq < 0)
            return mismatch(msg, msg_size, SG_JSONRPC_HEADER_MISMATCH,
                            "Header mismatch: %s header is not valid base64", header);
        if (!eq) {
            const char *what = i == 0                                     ? "the body's \"method\""
                               : strcmp(m->method, "resources/read") == 0 ? "\"params.uri\""
                                                                          : "\"params.name\"";
            if (msg && msg_size)
                snprintf(msg, msg_size, "Header mismatch: %s header does not match %s", header,
                         what);
            return SG_JSONRPC_HEADER_MISMATCH;
        }
    }
    return 0;
}
