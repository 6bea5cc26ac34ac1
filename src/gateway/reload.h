/* reload.h -- the policy lifecycle while the gateway serves: hot reload.
 *
 * Operators edit policies while traffic flows. The reloader is one thread
 * that turns "the files changed" (inotify on the directories of the policy
 * and of every module it required) or "the operator sent SIGHUP" into one
 * sg_gateway_reload: validate everything `scopegate check` validates, then
 * swap atomically in every worker at a request boundary; on any error the
 * previous policy stays in force and the error is logged with file:line.
 *
 * The watch covers the ways files really get replaced: editors that write a
 * temporary file and rename(2) it over the policy, deletion followed by
 * re-creation, and the Kubernetes ConfigMap volume, where the visible files
 * are symlinks through `..data`, itself a symlink swapped atomically by a
 * rename. Bursts of writes are debounced into one reload, started once the
 * files have been quiet for SG_RELOAD_DEBOUNCE_MS (so within a second of
 * the last write). A reload whose text hashes the same as the policy in
 * force changes nothing and is logged at debug level only. A shadow policy
 * (gateway.h) is watched and reloaded beside the policy, the same way. */
#ifndef SG_RELOAD_H
#define SG_RELOAD_H

#include <stddef.h>

#include "gateway/gateway.h"

#define SG_RELOAD_DEBOUNCE_MS 250

typedef struct sg_reloader_config {
    sg_gateway *gateway; /* borrowed; must outlive the reloader */
    int watch;           /* 0: no file watching (--no-watch); SIGHUP still reloads */
    /* Called on SIGHUP before the policy is reloaded: re-reads key files and
     * refetches a JWKS URL. Returns 0, or -1 with a message in err (the old
     * keys stay). NULL: nothing to do. */
    int (*reload_keys)(void *ud, char *err, size_t errlen);
    void *keys_ud;
} sg_reloader_config;

typedef struct sg_reloader sg_reloader;

/* Results of a policy reload, as counted in scopegate_policy_reloads_total. */
enum { SG_RELOAD_OK, SG_RELOAD_REFUSED, SG_RELOAD_UNCHANGED, SG_RELOAD_RESULT_COUNT };
/* "ok", "refused", "unchanged"; "unknown" beyond. Can't fail. */
const char *sg_reload_result_name(int result);

/* Starts the reloader thread (and the watch, when cfg->watch). Returns NULL
 * with a message in err when the thread or inotify cannot be set up. */
sg_reloader *sg_reloader_start(const sg_reloader_config *cfg, char *err, size_t errlen);
/* Asks for a SIGHUP reload: keys, then the policy, without debouncing.
 * Returns at once; the reload runs on the reloader thread. Thread-safe.
 * NULL is ignored. */
void sg_reloader_sighup(sg_reloader *r);
/* Stops and joins the thread, then frees it. A reload in progress finishes
 * first. NULL is fine. */
void sg_reloader_stop(sg_reloader *r);

#endif
