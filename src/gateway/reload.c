/* reload.c -- hot reload of the policy (see reload.h).
 *
 * Why a thread of its own: loading and checking a policy runs Lua under the
 * load budgets (up to seconds for a pathological file), and no worker may
 * wait for that. The thread sleeps in poll(2) on two descriptors: an
 * inotify instance watching directories (never files: editors and
 * ConfigMaps replace files, and a watch on a replaced file goes silent) and
 * an eventfd that carries SIGHUP and stop requests from other threads.
 *
 * What is watched is rebuilt after every reload attempt from the files the
 * policy in force actually ran, so a policy that starts requiring a module
 * brings that module's directory into the watch, and a directory that was
 * deleted and re-created is watched again. */
#include "gateway/reload.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "base/metrics.h"
#include "base/sg.h"

#define MAX_WATCHES 64
/* A directory that could not be watched (it is being replaced) is tried
 * again this often. */
#define RETRY_MS 1000

/* Changes that can replace or alter a file's contents. */
#define WATCH_MASK                                                                                 \
    (IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |            \
     IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)

struct sg_reloader {
    sg_reloader_config cfg;
    pthread_t thread;
    int inotify_fd; /* -1 without watching */
    int wake_fd;    /* eventfd: a SIGHUP or stop request is waiting */
    atomic_int sighup, stop;

    /* The watch: directories (watch descriptors) and the file names in them
     * that matter. Owned by the thread. */
    int wds[MAX_WATCHES];
    int nwds;
    char *names[MAX_WATCHES * 2];
    int nnames;
    int watch_broken; /* some directory could not be watched: retry */
};

/* ---- the watch ------------------------------------------------------------------ */

static void names_clear(sg_reloader *r)
{
    for (int i = 0; i < r->nnames; i++)
        free(r->names[i]);
    r->nnames = 0;
}

static void watch_clear(sg_reloader *r)
{
    for (int i = 0; i < r->nwds; i++)
        inotify_rm_watch(r->inotify_fd, r->wds[i]);
    r->nwds = 0;
    names_clear(r);
}

static int has_wd(const int *wds, int n, int wd)
{
    for (int i = 0; i < n; i++)
        if (wds[i] == wd) return 1;
    return 0;
}

static void watch_name(sg_reloader *r, const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    const char *base = basename(copy);
    for (int i = 0; i < r->nnames; i++)
        if (strcmp(r->names[i], base) == 0) return;
    if (r->nnames < (int)SG_ARRAY_LEN(r->names)) {
        char *dup = strdup(base);
        if (dup) r->names[r->nnames++] = dup;
    }
}

/* Adds path's directory to wds (inotify gives a directory already watched
 * the same descriptor, so re-adding one changes nothing). */
static void watch_dir_of(sg_reloader *r, const char *path, int *wds, int *n)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    int wd = inotify_add_watch(r->inotify_fd, dir, WATCH_MASK);
    if (wd < 0) {
        sg_log(SG_LOG_WARN, "policy watch: cannot watch %s: %s (retrying)", dir, strerror(errno));
        r->watch_broken = 1;
        return;
    }
    if (!has_wd(wds, *n, wd) && *n < MAX_WATCHES) wds[(*n)++] = wd;
}

/* Watches the directory of every file the policy in force ran and, for a
 * file reached through a symlink, the directory of its target too. Watches
 * no longer needed are removed (their IN_IGNORED events are then not ours:
 * event_matters skips descriptors outside the set). */
static void watch_rebuild(sg_reloader *r)
{
    if (r->inotify_fd < 0) return;
    r->watch_broken = 0;
    char **files = sg_gateway_policy_files(r->cfg.gateway);
    if (!files) {
        r->watch_broken = 1;
        return;
    }
    int wds[MAX_WATCHES], n = 0;
    names_clear(r);
    for (char **f = files; *f; f++) {
        watch_dir_of(r, *f, wds, &n);
        watch_name(r, *f);
        char real[PATH_MAX];
        if (realpath(*f, real) && strcmp(real, *f) != 0) {
            watch_dir_of(r, real, wds, &n);
            watch_name(r, real);
        }
    }
    sg_strv_free(files);
    for (int i = 0; i < r->nwds; i++)
        if (!has_wd(wds, n, r->wds[i])) inotify_rm_watch(r->inotify_fd, r->wds[i]);
    memcpy(r->wds, wds, (size_t)n * sizeof *wds);
    r->nwds = n;
}

/* Whether an event may have changed a policy file. Names beginning with
 * ".." are a ConfigMap volume's `..data` link and its timestamped
 * directories; a watched directory that went away needs a new watch. */
static int event_matters(sg_reloader *r, const struct inotify_event *ev, int *rebuild)
{
    if (ev->mask & IN_Q_OVERFLOW) { /* events were lost: look again */
        *rebuild = 1;
        return 1;
    }
    if (!has_wd(r->wds, r->nwds, ev->wd)) return 0; /* a watch we removed */
    if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
        *rebuild = 1;
        return 1;
    }
    if (ev->len == 0) return 0;
    if (strncmp(ev->name, "..", 2) == 0) return 1;
    for (int i = 0; i < r->nnames; i++)
        if (strcmp(r->names[i], ev->name) == 0) return 1;
    return 0;
}

/* Drains the inotify queue. Returns 1 when some event matters. */
static int read_events(sg_reloader *r, int *rebuild)
{
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    int matters = 0;
    for (;;) {
        ssize_t n = read(r->inotify_fd, buf, sizeof buf);
        if (n <= 0) break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if (event_matters(r, ev, rebuild)) matters = 1;
            p += sizeof *ev + ev->len;
        }
    }
    return matters;
}

/* ---- reloading ------------------------------------------------------------------ */

/* Logs a refused reload's report: one line per problem, each with its
 * file:line. */
static void log_report(const char *prefix, sg_buf *report)
{
    for (char *line = report->data; line && *line;) {
        char *end = strchr(line, '\n');
        if (end) *end = '\0';
        if (*line) sg_log(SG_LOG_ERROR, "%s: %s", prefix, line);
        line = end ? end + 1 : line + strlen(line);
    }
}

/* The shadow policy (gateway.h) follows the same files-changed and SIGHUP
 * events as the policy: a refused candidate keeps the previous one. */
static void reload_shadow(sg_reloader *r, const char *why)
{
    char before[SG_POLICY_HASH_LEN + 1], after[SG_POLICY_HASH_LEN + 1];
    sg_gateway_shadow_hash(r->cfg.gateway, before);
    sg_buf report = SG_BUF_INIT;
    int rc = sg_gateway_reload_shadow(r->cfg.gateway, &report, after);
    if (rc == 0) {
        sg_log(SG_LOG_INFO, "shadow policy reloaded (%s): shadow policy %s in force (was %s)", why,
               after, before);
    } else if (rc == 1) {
        sg_log(SG_LOG_DEBUG, "shadow policy unchanged (%s): %s stays", why, before);
    } else {
        sg_log(SG_LOG_ERROR, "shadow policy reload refused (%s): shadow policy %s stays", why,
               before);
        log_report("shadow policy reload refused", &report);
    }
    sg_buf_free(&report);
}

static void reload_policy(sg_reloader *r, const char *why)
{
    char before[SG_POLICY_HASH_LEN + 1], after[SG_POLICY_HASH_LEN + 1];
    sg_gateway_policy_hash(r->cfg.gateway, before);
    sg_buf report = SG_BUF_INIT;
    uint64_t t0 = sg_now_mono_ns();
    int rc = sg_gateway_reload(r->cfg.gateway, &report, after);
    unsigned ms = (unsigned)((sg_now_mono_ns() - t0) / 1000000);
    sg_metric_inc(SG_M_POLICY_RELOADS + (rc == 0   ? SG_RELOAD_OK
                                         : rc == 1 ? SG_RELOAD_UNCHANGED
                                                   : SG_RELOAD_REFUSED));
    if (rc == 0) {
        sg_log(SG_LOG_INFO, "policy reloaded (%s): policy %s in force (was %s), loaded in %u ms",
               why, after, before, ms);
    } else if (rc == 1) {
        sg_log(SG_LOG_DEBUG, "policy unchanged (%s): policy %s stays in force", why, before);
    } else {
        sg_log(SG_LOG_ERROR, "policy reload refused (%s): policy %s stays in force", why, before);
        log_report("policy reload refused", &report);
    }
    sg_buf_free(&report);
    if (sg_gateway_has_shadow(r->cfg.gateway)) reload_shadow(r, why);
}

const char *sg_reload_result_name(int result)
{
    static const char *const names[] = {
        [SG_RELOAD_OK] = "ok",
        [SG_RELOAD_REFUSED] = "refused",
        [SG_RELOAD_UNCHANGED] = "unchanged",
    };
    _Static_assert(SG_ARRAY_LEN(names) == SG_RELOAD_RESULT_COUNT, "every reload result");
    return result >= 0 && (size_t)result < SG_ARRAY_LEN(names) ? names[result] : "unknown";
}

static void reload_keys(sg_reloader *r)
{
    if (!r->cfg.reload_keys) return;
    char err[1024] = "";
    if (r->cfg.reload_keys(r->cfg.keys_ud, err, sizeof err) != 0) {
        sg_log(SG_LOG_ERROR, "SIGHUP: keys not reloaded (the previous keys stay): %s", err);
        return;
    }
    sg_gateway_forget_tokens(r->cfg.gateway);
    sg_log(SG_LOG_INFO, "SIGHUP: keys reloaded");
}

static void *reloader_main(void *arg)
{
    sg_reloader *r = arg;
    sg_thread_name("sg-reload", -1);
    int pending = 0, rebuild = 0;
    uint64_t deadline = 0;
    while (!atomic_load(&r->stop)) {
        int timeout = -1;
        uint64_t now = sg_now_mono_ns();
        if (pending)
            timeout = now >= deadline ? 0 : (int)((deadline - now) / 1000000 + 1);
        else if (r->watch_broken)
            timeout = RETRY_MS;
        struct pollfd fds[2] = {{.fd = r->wake_fd, .events = POLLIN},
                                {.fd = r->inotify_fd, .events = POLLIN}};
        int n = poll(fds, r->inotify_fd >= 0 ? 2 : 1, timeout);
        if (n < 0 && errno != EINTR) {
            sg_log(SG_LOG_ERROR, "policy watch: poll: %s", strerror(errno));
            break;
        }
        if (fds[0].revents & POLLIN) {
            uint64_t count;
            ssize_t ignored = read(r->wake_fd, &count, sizeof count);
            (void)ignored;
        }
        if (atomic_exchange(&r->sighup, 0)) {
            reload_keys(r);
            reload_policy(r, "SIGHUP");
            watch_rebuild(r);
            pending = 0;
            continue;
        }
        if (r->inotify_fd >= 0 && (fds[1].revents & POLLIN) && read_events(r, &rebuild)) {
            pending = 1; /* debounce: wait for the writes to go quiet */
            deadline = sg_now_mono_ns() + (uint64_t)SG_RELOAD_DEBOUNCE_MS * 1000000;
        }
        if (!pending && r->watch_broken && n == 0) {
            watch_rebuild(r);
            if (!r->watch_broken) pending = 1, deadline = 0; /* it may have changed meanwhile */
        }
        if (pending && sg_now_mono_ns() >= deadline) {
            pending = 0;
            if (rebuild) watch_rebuild(r); /* before reading, so no write is missed */
            rebuild = 0;
            reload_policy(r, "files changed");
            watch_rebuild(r);
        }
    }
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

sg_reloader *sg_reloader_start(const sg_reloader_config *cfg, char *err, size_t errlen)
{
    sg_reloader *r = calloc(1, sizeof *r);
    if (!r) {
        sg_errf(err, errlen, "out of memory");
        return NULL;
    }
    r->cfg = *cfg;
    r->inotify_fd = -1;
    r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->wake_fd < 0) {
        sg_errf(err, errlen, "eventfd: %s", strerror(errno));
        free(r);
        return NULL;
    }
    if (cfg->watch) {
        r->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (r->inotify_fd < 0) {
            sg_errf(err, errlen, "cannot watch the policy files (inotify: %s); use --no-watch",
                    strerror(errno));
            close(r->wake_fd);
            free(r);
            return NULL;
        }
        watch_rebuild(r);
    }
    if (pthread_create(&r->thread, NULL, reloader_main, r) != 0) {
        sg_errf(err, errlen, "cannot start the reload thread");
        watch_clear(r);
        if (r->inotify_fd >= 0) close(r->inotify_fd);
        close(r->wake_fd);
        free(r);
        return NULL;
    }
    return r;
}

static void wake(sg_reloader *r)
{
    uint64_t one = 1;
    ssize_t ignored = write(r->wake_fd, &one, sizeof one);
    (void)ignored;
}

void sg_reloader_sighup(sg_reloader *r)
{
    if (!r) return;
    atomic_store(&r->sighup, 1);
    wake(r);
}

void sg_reloader_stop(sg_reloader *r)
{
    if (!r) return;
    atomic_store(&r->stop, 1);
    wake(r);
    pthread_join(r->thread, NULL);
    watch_clear(r);
    if (r->inotify_fd >= 0) close(r->inotify_fd);
    close(r->wake_fd);
    free(r);
}
