/* upstream.c -- the "direct upstream" peer of the gateway benchmark.
 *
 * Why: bench/run needs an MCP-ish server that costs as little as possible,
 * so that what the benchmark measures is the gateway in front of it, and so
 * that the "direct" row shows the ceiling a gateway is compared with. It
 * answers every POST on /mcp with one fixed small JSON-RPC result that
 * echoes the request's id (a notification, which has no id, gets 202), and
 * nothing else: no sessions, no SSE, no tools. One libmicrohttpd polling
 * thread, keep-alive, bodies capped at 64 KiB.
 *
 * Why poll(2) and not epoll: with MHD 0.9.75 in epoll mode this minimal
 * daemon (no suspend/resume, no pool) stalled until the connection timeout
 * when a burst of ~256 connections (wrk -c256) became ready at once: one
 * epoll_wait returned its full 128 events and the rest were never served.
 * Measured on loopback, level-triggered poll(2) costs nothing noticeable at
 * 64-256 connections and never stalled.
 *
 * Usage: upstream [PORT]   (0 or absent = an ephemeral port)
 * Prints "upstream listening on 127.0.0.1:PORT" on stdout when ready and
 * exits 0 on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "base/sg.h"

#define MAX_BODY    (64u * 1024u)
#define MAX_ID_TEXT 256

/* Per-connection request state, owned by libmicrohttpd's con_cls slot and
 * freed in request_completed. */
typedef struct upload {
    sg_buf body;
    int too_large;
} upload;

static enum MHD_Result send_text(struct MHD_Connection *conn, unsigned status,
                                 const char *content_type, const char *text, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Writes the id of the JSON-RPC request in body into out as JSON text.
 * Returns 1 when there is an id, 0 for a notification (no id), -1 when the
 * body is not a JSON object, -2 when the id does not fit in outlen. Ids are re-printed by cJSON:
 * exact for the small integers and short strings the benchmark sends. */
static int request_id(const char *body, size_t len, char *out, size_t outlen)
{
    const char *end = NULL;
    cJSON *msg = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!msg || !cJSON_IsObject(msg) || end != body + len) {
        cJSON_Delete(msg);
        return -1;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    int found = 0;
    if (id) {
        char *text = cJSON_PrintUnformatted(id);
        if (text && strlen(text) < outlen) {
            memcpy(out, text, strlen(text) + 1);
            found = 1;
        } else {
            found = -2;
        }
        free(text);
    }
    cJSON_Delete(msg);
    return found;
}

static enum MHD_Result answer(struct MHD_Connection *conn, upload *up)
{
    static const char json[] = "application/json";
    if (up->too_large) return send_text(conn, MHD_HTTP_CONTENT_TOO_LARGE, NULL, "", 0);
    char id[MAX_ID_TEXT];
    int has_id = request_id(up->body.data ? up->body.data : "", up->body.len, id, sizeof id);
    if (has_id < 0) {
        static const char parse_error[] =
            "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse "
            "error\"}}";
        static const char bad_id[] = "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,"
                                     "\"message\":\"Invalid Request: id too long\"}}";
        return has_id == -1
                   ? send_text(conn, MHD_HTTP_BAD_REQUEST, json, parse_error,
                               sizeof parse_error - 1)
                   : send_text(conn, MHD_HTTP_BAD_REQUEST, json, bad_id, sizeof bad_id - 1);
    }
    if (has_id == 0) return send_text(conn, MHD_HTTP_ACCEPTED, NULL, "", 0);
    char reply[MAX_ID_TEXT + 160];
    int n = snprintf(reply, sizeof reply,
                     "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"content\":[{\"type\":\"text\","
                     "\"text\":\"ok\"}],\"isError\":false}}",
                     id);
    if (n < 0 || (size_t)n >= sizeof reply) return MHD_NO;
    return send_text(conn, MHD_HTTP_OK, json, reply, (size_t)n);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)version;
    upload *up = *con_cls;
    if (!up) {
        if (strcmp(url, "/mcp") != 0) return send_text(conn, MHD_HTTP_NOT_FOUND, NULL, "", 0);
        if (strcmp(method, "POST") != 0)
            return send_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, "", 0);
        up = calloc(1, sizeof *up);
        if (!up) return MHD_NO;
        *con_cls = up;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (up->body.len + *upload_data_size > MAX_BODY)
            up->too_large = 1;
        else
            sg_buf_append(&up->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!sg_buf_ok(&up->body)) return MHD_NO;
    return answer(conn, up);
}

static void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)conn;
    (void)code;
    upload *up = *con_cls;
    if (!up) return;
    sg_buf_free(&up->body);
    free(up);
    *con_cls = NULL;
}

int main(int argc, char **argv)
{
    unsigned long port = 0;
    if (argc > 2 || (argc == 2 && (port = strtoul(argv[1], NULL, 10)) > 65535)) {
        fprintf(stderr, "usage: upstream [PORT]\n");
        return 2;
    }
    /* Only sigwait below sees these: the polling thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_TURBO, (uint16_t)port, NULL, NULL,
        on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, request_completed, NULL, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)1000, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_LISTEN_BACKLOG_SIZE,
        (unsigned)1024, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "upstream: cannot listen on 127.0.0.1:%lu\n", port);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("upstream listening on 127.0.0.1:%u\n", info ? (unsigned)info->port : 0u);
    fflush(stdout);
    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    MHD_stop_daemon(d);
    return 0;
}
