/* audit.c -- the audit log writer (see audit.h).
 *
 * Why a queue and a thread: a worker's event loop serves many connections
 * and must never wait for a disk, a full file system or a pipe nobody
 * reads. The queue is two buffers of bytes used in turn: submitting copies
 * the line to the end of the filling one under a short lock; the writer
 * swaps the two under the same lock and writes the full one straight out,
 * outside the lock, while the workers fill the other. No line is
 * allocated, and no memory goes from one thread's allocator to another's
 * (the first version queued a malloc'd copy per line that the writer freed:
 * the cross-thread frees cost more than the formatting). Each buffer is
 * filled from its start again, so the lines a worker copies in go to the
 * same few hundred kilobytes, which stay in the CPU's cache, instead of
 * walking through a whole ring of megabytes as the previous version did
 * (a copy into memory that has left the cache costs a cache miss per 64
 * bytes). The descriptor is non-blocking (for the files this opens) and a
 * write that would block is retried after poll(2) with a short timeout, so
 * the writer itself never sleeps in write(2): it can still log dropped
 * lines, take a reopen request and stop on time while the file accepts
 * nothing. */
#include "gateway/audit.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/metrics.h"
#include "base/sg.h"

/* How long close waits for a file that accepts nothing. */
#define CLOSE_GRACE_NS 1000000000ull
/* Bytes of buffer per line of --audit-queue (a record is 400 to 700 bytes;
 * the line count is the limit that usually binds). */
#define BUFFER_BYTES_PER_LINE 512
/* While lines keep coming, the writer drains them this often (and at once
 * when the queue is half full): one write for many lines. A round costs
 * the writer about 90 us whatever it writes (a timed wait, a wake, a
 * write(2) that updates the file's times), measured on a 2-core VM: at
 * 20 ms that was 0.28 us per request at 25,000 requests a second, at
 * 100 ms 0.13 us. Lines reach the file up to this much later; a clean
 * stop writes what is queued. */
#define WRITER_TICK_MS 100

struct sg_audit {
    char *path; /* NULL for stdout */
    int fd;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    /* The queue, under mu: whole lines, each ending in '\n', from fill[0]
     * on. The other buffer, spare, is the writer's: it writes from it
     * outside the lock, then swaps it for fill again. */
    char *fill, *spare;
    size_t buffer_bytes, used;
    size_t count, cap; /* lines queued; the most it may hold (--audit-queue) */
    int stopping;      /* under mu */
    int writer_idle;   /* under mu: the writer waits on an empty queue */
    int writer_busy;   /* writer only: its last round found lines */
    uint64_t stop_ns;  /* when close was asked (writer thread reads it after stopping) */
    atomic_int reopen; /* a reopen was asked */
    int partial; /* writer: a write error left a line unfinished: start the next on a new line */
    uint64_t logged_drops; /* writer thread: dropped count at the last log line */
    uint64_t last_log_ns;
    _Atomic uint64_t written, dropped, queue_full, write_errors, shadow, reopened;
};

static int open_file(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0640);
    if (fd < 0)
        sg_errf(err, errlen, "%s: %s", path,
                errno == ENXIO ? "a FIFO that no process reads" : strerror(errno));
    return fd;
}

/* At most once a second: how many lines were lost so far. Writer thread. */
static void log_drops(sg_audit *a, int force)
{
    uint64_t dropped = atomic_load(&a->dropped);
    if (dropped == a->logged_drops) return;
    uint64_t now = sg_now_mono_ns();
    if (!force && now - a->last_log_ns < 1000000000ull) return;
    a->last_log_ns = now;
    sg_log(SG_LOG_WARN,
           "audit log: %llu lines dropped (%llu more since the last report; %llu with the queue "
           "full, %llu write errors)",
           (unsigned long long)dropped, (unsigned long long)(dropped - a->logged_drops),
           (unsigned long long)atomic_load(&a->queue_full),
           (unsigned long long)atomic_load(&a->write_errors));
    a->logged_drops = dropped;
}

static void do_reopen(sg_audit *a)
{
    if (!a->path) return; /* stdout is not ours to reopen */
    char err[512];
    int fd = open_file(a->path, err, sizeof err);
    if (fd < 0) {
        sg_log(SG_LOG_ERROR, "audit log: reopen failed, still writing the old file: %s", err);
        return;
    }
    close(a->fd);
    a->fd = fd;
    a->partial = 0;
    atomic_fetch_add(&a->reopened, 1);
    sg_log(SG_LOG_INFO, "audit log: reopened %s", a->path);
}

/* 1 when the writer should give up on what it holds: closing for longer
 * than the grace, or a reopen was asked (the file may be the problem). */
static int give_up(sg_audit *a)
{
    if (atomic_load(&a->reopen)) return 1;
    pthread_mutex_lock(&a->mu);
    int stopping = a->stopping;
    uint64_t since = a->stop_ns;
    pthread_mutex_unlock(&a->mu);
    return stopping && sg_now_mono_ns() - since > CLOSE_GRACE_NS;
}

/* Writes p[0..n); returns the bytes written (fewer after a write error, or
 * when giving up on a file that accepts nothing). Writer thread. */
static size_t write_all(sg_audit *a, const char *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(a->fd, p + off, n - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { /* a pipe or socket that is full: wait a little */
            struct pollfd pfd = {.fd = a->fd, .events = POLLOUT};
            if (poll(&pfd, 1, 100) <= 0) {
                log_drops(a, 0);
                if (give_up(a)) break;
            }
            continue;
        }
        uint64_t errors = atomic_fetch_add(&a->write_errors, 1);
        if (errors == 0 || sg_now_mono_ns() - a->last_log_ns >= 1000000000ull) {
            a->last_log_ns = sg_now_mono_ns();
            sg_log(SG_LOG_ERROR, "audit log: write failed (%s): lines are being dropped",
                   w < 0 ? strerror(errno) : "nothing written");
        }
        break;
    }
    return off;
}

/* Writes the lines the writer took: spare[0..n), nlines whole lines. Lines
 * not written are counted as dropped. */
static void write_taken(sg_audit *a, size_t n, size_t nlines)
{
    if (a->partial && write_all(a, "\n", 1) == 1) a->partial = 0;
    size_t done = write_all(a, a->spare, n);
    size_t lost = 0;
    if (done < n) { /* count what is lost: the lines that did not end in the file */
        for (size_t i = done; i < n; i++)
            lost += a->spare[i] == '\n';
        if (done > 0 && a->spare[done - 1] != '\n') a->partial = 1;
    }
    atomic_fetch_add(&a->written, nlines - lost);
    if (lost) atomic_fetch_add(&a->dropped, lost);
}

static void *writer_main(void *arg)
{
    sg_audit *a = arg;
    sg_thread_name("sg-audit", -1);
    for (;;) {
        pthread_mutex_lock(&a->mu);
        if (a->writer_busy && !a->stopping && !atomic_load(&a->reopen)) {
            /* Lines came in the last round: more are likely. Let them
             * gather for a tick (a half-full queue wakes the writer early). */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += WRITER_TICK_MS * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            while (a->count < a->cap / 2 && a->used < a->buffer_bytes / 2 && !a->stopping &&
                   !atomic_load(&a->reopen))
                if (pthread_cond_timedwait(&a->wake, &a->mu, &until) == ETIMEDOUT) break;
        }
        a->writer_idle = 1;
        while (a->count == 0 && !a->stopping && !atomic_load(&a->reopen)) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            if (pthread_cond_timedwait(&a->wake, &a->mu, &until) == ETIMEDOUT) break;
        }
        a->writer_idle = 0;
        a->writer_busy = a->count > 0;
        /* All of it: the full buffer becomes the writer's, written unlocked;
         * the workers go on filling the other from its start. */
        char *full = a->fill;
        a->fill = a->spare;
        a->spare = full;
        size_t n = a->used, nlines = a->count;
        a->used = 0;
        a->count = 0;
        int stopping = a->stopping;
        pthread_mutex_unlock(&a->mu);
        if (atomic_exchange(&a->reopen, 0)) do_reopen(a);
        if (nlines > 0) write_taken(a, n, nlines);
        log_drops(a, 0);
        if (stopping && nlines == 0) break;
    }
    log_drops(a, 1);
    return NULL;
}

sg_audit *sg_audit_open(const sg_audit_config *cfg, char *err, size_t errlen)
{
    sg_audit *a = calloc(1, sizeof *a);
    if (!a) {
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    a->cap = cfg->queue_lines ? cfg->queue_lines : SG_AUDIT_QUEUE_DEFAULT;
    /* Room for the longest line, whatever --audit-queue says. malloc, not
     * calloc: pages are only touched as lines come, and a buffer is refilled
     * from its start, so only what one round of the writer gathers is. */
    a->buffer_bytes = a->cap * BUFFER_BYTES_PER_LINE;
    if (a->buffer_bytes < SG_AUDIT_MAX_LINE + 1) a->buffer_bytes = SG_AUDIT_MAX_LINE + 1;
    a->fill = malloc(a->buffer_bytes);
    a->spare = malloc(a->buffer_bytes);
    a->fd = -1;
    int is_stdout = strcmp(cfg->path, "-") == 0;
    if (!a->fill || !a->spare || (!is_stdout && !(a->path = strdup(cfg->path)))) {
        sg_errf(err, errlen, "out of memory");
        goto fail;
    }
    a->fd = is_stdout ? STDOUT_FILENO : open_file(cfg->path, err, errlen);
    if (a->fd < 0) goto fail;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->wake, NULL);
    if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
        sg_errf(err, errlen, "cannot start the audit log thread");
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->wake);
        goto fail;
    }
    return a;
fail:
    if (a->fd > STDOUT_FILENO && a->path) close(a->fd);
    free(a->fill);
    free(a->spare);
    free(a->path);
    free(a);
    return NULL;
}

int sg_audit_submit(sg_audit *a, const char *line, size_t len)
{
    pthread_mutex_lock(&a->mu);
    int full = a->count == a->cap || a->buffer_bytes - a->used < len + 1;
    if (line && len <= SG_AUDIT_MAX_LINE && !full && !a->stopping) {
        memcpy(a->fill + a->used, line, len);
        a->fill[a->used + len] = '\n';
        a->used += len + 1;
        a->count++;
        /* Wake the writer only when it sleeps on an empty queue, or when
         * the queue is half full: while lines keep coming it drains them
         * every WRITER_TICK_MS by itself, one write for many lines. A wake
         * per line would cost a context switch per request. */
        if ((a->count == 1 && a->writer_idle) || a->count == a->cap / 2 ||
            (a->used >= a->buffer_bytes / 2 && a->used - (len + 1) < a->buffer_bytes / 2))
            pthread_cond_signal(&a->wake);
        pthread_mutex_unlock(&a->mu);
        return 0;
    }
    pthread_mutex_unlock(&a->mu);
    if (full && line && len <= SG_AUDIT_MAX_LINE) atomic_fetch_add(&a->queue_full, 1);
    atomic_fetch_add(&a->dropped, 1);
    return -1;
}

void sg_audit_reopen(sg_audit *a)
{
    if (!a) return;
    atomic_store(&a->reopen, 1);
    pthread_mutex_lock(&a->mu);
    pthread_cond_signal(&a->wake);
    pthread_mutex_unlock(&a->mu);
}

void sg_audit_count_shadow(sg_audit *a)
{
    atomic_fetch_add(&a->shadow, 1);
}

void sg_audit_stats_get(const sg_audit *a, sg_audit_stats *out)
{
    sg_audit *m = (sg_audit *)a; /* atomic loads of a const object */
    out->written = atomic_load(&m->written);
    out->dropped = atomic_load(&m->dropped);
    out->queue_full = atomic_load(&m->queue_full);
    out->write_errors = atomic_load(&m->write_errors);
    out->shadow_disagreements = atomic_load(&m->shadow);
    out->reopened = atomic_load(&m->reopened);
}

void sg_audit_metrics(sg_buf *out, void *ud)
{
    sg_audit_stats s;
    sg_audit_stats_get(ud, &s);
    static const struct {
        const char *name, *help;
        size_t offset;
    } families[] = {
        {"scopegate_audit_lines_written_total", "Audit lines written to the audit log.",
         offsetof(sg_audit_stats, written)},
        {"scopegate_audit_lines_dropped_total",
         "Audit lines lost (queue full, too long, or a write error).",
         offsetof(sg_audit_stats, dropped)},
        {"scopegate_audit_queue_full_total",
         "Audit lines dropped because the queue was full when they were submitted.",
         offsetof(sg_audit_stats, queue_full)},
        {"scopegate_audit_write_errors_total", "Failed writes to the audit log.",
         offsetof(sg_audit_stats, write_errors)},
        {"scopegate_audit_reopens_total", "Reopens of the audit log (SIGUSR1).",
         offsetof(sg_audit_stats, reopened)},
        {"scopegate_shadow_disagreements_total",
         "Messages the shadow policy decided otherwise than the live policy.",
         offsetof(sg_audit_stats, shadow_disagreements)},
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(families); i++) {
        uint64_t v;
        memcpy(&v, (const char *)&s + families[i].offset, sizeof v);
        sg_metrics_counter(out, families[i].name, families[i].help, v);
    }
}

void sg_audit_close(sg_audit *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    a->stopping = 1;
    a->stop_ns = sg_now_mono_ns();
    pthread_cond_signal(&a->wake);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    /* Lines left after a give-up: counted, never written. */
    if (a->count) atomic_fetch_add(&a->dropped, a->count);
    sg_audit_stats s;
    sg_audit_stats_get(a, &s);
    sg_log(SG_LOG_INFO,
           "audit log: closed: %llu lines written, %llu dropped (%llu with the queue full), %llu "
           "write errors, %llu shadow disagreements, %llu reopens",
           (unsigned long long)s.written, (unsigned long long)s.dropped,
           (unsigned long long)s.queue_full, (unsigned long long)s.write_errors,
           (unsigned long long)s.shadow_disagreements, (unsigned long long)s.reopened);
    if (a->path) close(a->fd);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->wake);
    free(a->fill);
    free(a->spare);
    free(a->path);
    free(a);
}
