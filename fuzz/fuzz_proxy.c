/* fuzz_proxy.c -- libFuzzer target: the upstream side of the proxy
 * (src/upstream/proxy.c with its HTTP/1.1 client, proxy_http1.c and http1.c) on whatever an
 * upstream answers.
 *
 * A loopback "upstream" thread answers every request with the current input
 * (after its first byte) and closes the connection. The target forwards one
 * POST through a real proxy lane driven by its own epoll loop, as a worker
 * does, waits for the head, then either takes the whole buffered body
 * (bit 0 of the first byte, when the body is complete: the path of small
 * JSON answers and of list filtering) or reads the body in small pieces
 * until its end. Whatever the bytes, the transfer ends (a body, EOF, or an
 * error) and nothing the sanitizers see goes wrong. */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "upstream/proxy.h"
#include "base/sg.h"
#include "fuzz_common.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static sg_buf answer = SG_BUF_INIT; /* what the upstream sends, under mu */
static int listen_fd, epfd;
static sg_proxy *proxy;
static sg_proxy_lane *lane;

/* Reads one request (head, then Content-Length bytes); 0 when it came. */
static int read_request(int fd)
{
    char buf[4096];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        if (n <= 0) return -1;
        have += (size_t)n;
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) {
            if (have == sizeof buf - 1) return -1;
            continue;
        }
        const char *cl = strcasestr(buf, "\r\ncontent-length:");
        size_t want = cl ? strtoul(cl + 17, NULL, 10) : 0;
        size_t got = have - (size_t)(end + 4 - buf);
        while (got < want) {
            n = read(fd, buf, sizeof buf);
            if (n <= 0) return -1;
            got += (size_t)n;
        }
        return 0;
    }
}

static void *upstream(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) continue;
        if (read_request(fd) == 0) {
            pthread_mutex_lock(&mu);
            size_t off = 0;
            while (off < answer.len) {
                ssize_t n = write(fd, answer.data + off, answer.len - off);
                if (n <= 0) break;
                off += (size_t)n;
            }
            pthread_mutex_unlock(&mu);
        }
        /* End the answer with a FIN and give the proxy a moment to close
         * its side first; a connection it keeps is reset. TIME_WAIT sockets
         * stay on this side, which uses no ephemeral ports. */
        shutdown(fd, SHUT_WR);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        char sink[512];
        while (poll(&pfd, 1, 20) == 1 && read(fd, sink, sizeof sink) > 0) {
        }
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
    }
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    sg_log_set_level(0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(listen_fd >= 0 && bind(listen_fd, (struct sockaddr *)&a, sizeof a) == 0 &&
          listen(listen_fd, 16) == 0 && getsockname(listen_fd, (struct sockaddr *)&a, &alen) == 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, upstream, NULL) == 0);
    pthread_detach(th);

    char url[64], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/mcp", (unsigned)ntohs(a.sin_port));
    sg_proxy_config pc = {
        .upstream_url = url, .connect_timeout_ms = 1000, .response_timeout_ms = 2000};
    CHECK((proxy = sg_proxy_new(&pc, 1, err, sizeof err)));
    CHECK((lane = sg_proxy_lane_of(proxy, 0)));
    CHECK((epfd = epoll_create1(0)) >= 0);
    sg_proxy_lane_attach(lane, epfd);
    return 0;
}

static void on_suspend(void *ud)
{
    (void)ud;
}

static void on_resume(void *ud)
{
    (void)ud;
}

/* One round of the worker loop, waiting at most max_ms. */
static void pump(long max_ms)
{
    struct epoll_event evs[16];
    long timeout = sg_proxy_lane_timeout_ms(lane);
    if (timeout < 0 || timeout > max_ms) timeout = max_ms;
    sg_proxy_lane_flush(lane);
    int n = epoll_wait(epfd, evs, 16, (int)timeout);
    for (int i = 0; i < n; i++)
        if (evs[i].data.u64 & SG_PROXY_EPOLL_TAG)
            sg_proxy_lane_event(lane, evs[i].data.u64, evs[i].events);
    sg_proxy_lane_run(lane);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int take = data[0] & 1;
    pthread_mutex_lock(&mu);
    sg_buf_reset(&answer);
    sg_buf_append(&answer, data + 1, size - 1);
    CHECK(sg_buf_ok(&answer));
    pthread_mutex_unlock(&mu);

    static const char body[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}";
    sg_header h[2] = {{.name = "Content-Type", .value = "application/json"},
                      {.name = "Accept", .value = "application/json, text/event-stream"}};
    sg_proxy_request req = {
        .method = "POST", .headers = h, .nheaders = 2, .body = body, .body_len = sizeof body - 1};
    sg_transfer_ops ops = {.suspend = on_suspend, .resume = on_resume};
    sg_transfer *t = sg_proxy_start(lane, &req, &ops, -1);
    CHECK(t);
    sg_transfer_head head;
    sg_transfer_head_state r;
    while ((r = sg_transfer_head_get(t, &head)) == SG_HEAD_PENDING)
        pump(50);
    if (getenv("SG_FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz_proxy: head %d status %d complete %d error %s\n", (int)r,
                r == SG_HEAD_READY ? head.status : 0, r == SG_HEAD_READY ? head.complete : 0,
                sg_proxy_error_text(sg_transfer_error(t)));
    if (r == SG_HEAD_READY) {
        CHECK(head.status >= 100 && head.status <= 599);
        if (take && head.complete) {
            size_t len = 0;
            char *b = sg_transfer_take_body(t, &len);
            CHECK(b || len == 0);
            CHECK(len <= size);
            free(b);
        } else {
            char buf[37];
            size_t total = 0;
            for (;;) {
                long n = sg_transfer_read(t, buf, sizeof buf);
                if (n > 0) {
                    total += (size_t)n;
                    CHECK(total <= size);
                } else if (n == 0) {
                    pump(50);
                } else {
                    CHECK(n == SG_TRANSFER_EOF || n == SG_TRANSFER_FAILED);
                    break;
                }
            }
        }
    } else {
        CHECK(sg_transfer_error(t) != SG_PROXY_OK);
    }
    sg_transfer_release(t);
    pump(0); /* let the lane drop the finished transfer */
    return 0;
}
