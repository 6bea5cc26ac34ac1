/* jsonmem.c -- where cJSON's memory comes from: the heap, or a request's
 * arena.
 *
 * Why: the gateway parses every POST body into a cJSON tree, and building
 * and deleting that tree was a dozen mallocs and twenty frees per request
 * (bench/instructions: about 2.7k instructions of the allowed path's 115k).
 * The tree of a request body is read, never changed, and dies before its
 * request ends, so it can live in the worker's per-request arena like the
 * rest of the request's scratch: one bump of a pointer per node, nothing to
 * free.
 *
 * How: cJSON takes one pair of allocation hooks for the whole process.
 * sg_json_memory_init installs ours once, before any thread starts. They
 * allocate from the calling thread's current arena when it has one (set by
 * sg_json_arena_begin, for the length of one cJSON_Parse call) and from the
 * heap otherwise. Inside such a scope every free is of memory the same
 * parse just took from the arena (cJSON frees only its own partial tree
 * when a parse fails), so a free there does nothing; outside it, free is
 * free. A tree parsed in an arena must never be given to cJSON_Delete or
 * changed (an added node would come from the heap and never be freed): its
 * memory goes when the arena is reset. */
#include <pthread.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "base/json.h"

static _Thread_local sg_arena *tl_arena;
static int installed;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

static void *hook_malloc(size_t n)
{
    sg_arena *a = tl_arena;
    return a ? sg_arena_alloc(a, n) : malloc(n);
}

static void hook_free(void *p)
{
    if (!tl_arena) free(p);
}

static void install(void)
{
    cJSON_Hooks hooks = {.malloc_fn = hook_malloc, .free_fn = hook_free};
    cJSON_InitHooks(&hooks);
    installed = 1;
}

void sg_json_memory_init(void)
{
    pthread_once(&install_once, install);
}

int sg_json_arena_begin(sg_arena *a)
{
    if (!installed || !a) return 0;
    tl_arena = a;
    return 1;
}

void sg_json_arena_end(void)
{
    tl_arena = NULL;
}
