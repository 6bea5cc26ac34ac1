/* util.c -- buffers, arenas, clocks and logging shared by every subsystem.
 *
 * See sg.h for the contracts. These are deliberately plain: a buffer is a
 * pointer, a length and a capacity; an arena is a list of blocks. */
#define _GNU_SOURCE /* pthread_setname_np */
#include "base/sg.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

/* ---- sg_buf ---------------------------------------------------------------- */

void sg_buf_free(sg_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

void sg_buf_reset(sg_buf *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->data) b->data[0] = '\0';
}

/* Makes room for n more bytes plus the terminator. Returns 0, or -1 (and
 * marks the buffer failed) when the allocation fails or would overflow. */
int sg_buf_reserve(sg_buf *b, size_t n)
{
    if (b->oom) return -1;
    if (n > SIZE_MAX / 2 - b->len) goto fail;
    if (b->len + n + 1 <= b->cap) return 0;
    /* Capacities of 2^k - 8 bytes: with glibc's 8-byte chunk header each
     * block is exactly 2^k, and a buffer of up to 1016 bytes stays in the
     * per-thread cache (glibc's tcache takes requests of up to 1032 bytes):
     * a 1024-byte buffer, as the audit record once was, took the slow paths
     * of malloc and free on every request. */
    size_t cap = b->cap ? b->cap : 56;
    while (cap < b->len + n + 1)
        cap = cap * 2 + 8;
    char *p = realloc(b->data, cap);
    if (!p) goto fail;
    b->data = p;
    b->cap = cap;
    return 0;
fail:
    b->oom = 1;
    return -1;
}

void sg_buf_append_grow(sg_buf *b, const void *p, size_t n)
{
    if (sg_buf_reserve(b, n) != 0) return;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* "00" to "99": two digits per division. */
static const char two_digits[] = "0001020304050607080910111213141516171819"
                                 "2021222324252627282930313233343536373839"
                                 "4041424344454647484950515253545556575859"
                                 "6061626364656667686970717273747576777879"
                                 "8081828384858687888990919293949596979899";

size_t sg_format_uint(char out[SG_UINT_DIGITS], unsigned long long v)
{
    /* Most numbers the request path writes are statuses, lines, worker
     * indexes: at most three digits, written without a loop. */
    if (v < 10) {
        out[0] = (char)('0' + v);
        return 1;
    }
    if (v < 100) {
        memcpy(out, two_digits + 2 * v, 2);
        return 2;
    }
    if (v < 1000) {
        out[0] = (char)('0' + v / 100);
        memcpy(out + 1, two_digits + 2 * (v % 100), 2);
        return 3;
    }
    size_t n = 1;
    for (unsigned long long t = v; t >= 10; t /= 10)
        n++;
    char *p = out + n;
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        p -= 2;
        memcpy(p, two_digits + 2 * r, 2);
    }
    if (v >= 10)
        memcpy(p - 2, two_digits + 2 * v, 2);
    else
        p[-1] = (char)('0' + v);
    return n;
}

void sg_buf_put_uint(sg_buf *b, unsigned long long v)
{
    if (b->cap - b->len > SG_UINT_DIGITS && !b->oom) { /* in place, with room for the NUL */
        b->len += sg_format_uint(b->data + b->len, v);
        b->data[b->len] = '\0';
        return;
    }
    char digits[SG_UINT_DIGITS];
    sg_buf_append(b, digits, sg_format_uint(digits, v));
}

void sg_buf_printf(sg_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        sg_buf_append(b, small, (size_t)n);
        return;
    }
    if (sg_buf_reserve(b, (size_t)n) != 0) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

int sg_buf_ok(const sg_buf *b)
{
    return !b->oom;
}

char *sg_buf_steal(sg_buf *b)
{
    if (b->oom || !b->data) {
        sg_buf_free(b);
        return NULL;
    }
    char *p = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

/* ---- sg_arena -------------------------------------------------------------- */

/* Under AddressSanitizer, memory the arena has not handed out since its
 * last reset is poisoned: a pointer kept past sg_arena_reset (a request's
 * scratch, its body's cJSON tree) is reported at its first use, as a heap
 * block used after free would be. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ARENA_POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define ARENA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define ARENA_POISON(p, n)   ((void)(p), (void)(n))
#define ARENA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct sg_arena_block {
    sg_arena_block *next;
    size_t size, used;
    max_align_t mem[]; /* aligned storage follows */
};

void sg_arena_init(sg_arena *a, size_t block_size)
{
    a->head = NULL;
    a->block_size = block_size ? block_size : 4096;
}

void *sg_arena_alloc(sg_arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    sg_arena_block *b = a->head;
    if (!b || b->size - b->used < n) {
        size_t size = n > a->block_size ? n : a->block_size;
        b = malloc(sizeof *b + size);
        if (!b) return NULL;
        b->size = size;
        b->used = 0;
        b->next = a->head;
        a->head = b;
        ARENA_POISON(b->mem, size);
    }
    void *p = (char *)b->mem + b->used;
    b->used += n;
    ARENA_UNPOISON(p, n);
    return p;
}

char *sg_arena_strndup(sg_arena *a, const char *s, size_t n)
{
    char *p = sg_arena_alloc(a, n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void sg_arena_reset(sg_arena *a)
{
    /* Keep the oldest block (the tail: the one a steady path fits in). */
    sg_arena_block *b = a->head;
    while (b && b->next) {
        sg_arena_block *next = b->next;
        ARENA_UNPOISON(b->mem, b->size);
        free(b);
        b = next;
    }
    a->head = b;
    if (b) {
        b->used = 0;
        ARENA_POISON(b->mem, b->size);
    }
}

void sg_arena_free(sg_arena *a)
{
    sg_arena_block *b = a->head;
    while (b) {
        sg_arena_block *next = b->next;
        ARENA_UNPOISON(b->mem, b->size);
        free(b);
        b = next;
    }
    a->head = NULL;
}

/* ---- clocks ---------------------------------------------------------------- */

int64_t sg_now_unix(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

int64_t sg_now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t sg_now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- logging --------------------------------------------------------------- */

static int log_level = SG_LOG_INFO;

void sg_log_set_level(int level)
{
    log_level = level;
}

static const char *const log_level_names[] = {
    [SG_LOG_DEBUG] = "debug",
    [SG_LOG_INFO] = "info",
    [SG_LOG_WARN] = "warn",
    [SG_LOG_ERROR] = "error",
};
_Static_assert(sizeof log_level_names / sizeof *log_level_names == SG_LOG_LEVEL_COUNT,
               "a name for every log level");

int sg_log_level_parse(const char *name)
{
    for (int i = 0; i < SG_LOG_LEVEL_COUNT; i++)
        if (strcasecmp(name, log_level_names[i]) == 0) return i;
    return -1;
}

void sg_log(int level, const char *fmt, ...)
{
    const char *const *names = log_level_names;
    if (level < log_level) return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03ldZ %s ", ts.tv_nsec / 1000000L,
                  names[level < 0   ? 0
                        : level > 3 ? 3
                                    : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    n += m;
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t ignored = write(2, line, (size_t)n);
    (void)ignored;
}

void sg_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- files ----------------------------------------------------------------- */

char *sg_read_file(const char *path, size_t max_bytes, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    sg_buf b = SG_BUF_INIT;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b.len + n > max_bytes) {
            fclose(f);
            sg_buf_free(&b);
            errno = EFBIG;
            return NULL;
        }
        sg_buf_append(&b, chunk, n);
    }
    int err = ferror(f);
    fclose(f);
    if (err || !sg_buf_ok(&b)) {
        sg_buf_free(&b);
        errno = err ? EIO : ENOMEM;
        return NULL;
    }
    if (!b.data) sg_buf_append(&b, "", 0);
    if (len_out) *len_out = b.len;
    return sg_buf_steal(&b);
}

const char *sg_memmem(const char *hay, size_t hlen, const char *needle, size_t nlen)
{
    if (nlen == 0) return hay;
    const char *end = hay + hlen;
    for (const char *p = hay; (size_t)(end - p) >= nlen; p++) {
        p = memchr(p, needle[0], (size_t)(end - p) - nlen + 1);
        if (!p) return NULL;
        if (memcmp(p, needle, nlen) == 0) return p;
    }
    return NULL;
}

void sg_strv_free(char **v)
{
    if (!v) return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

/* ---- digests ----------------------------------------------------------------- */

int sg_array_reserve(void *items, size_t *cap, size_t n, size_t size, size_t first)
{
    if (n < *cap) return 0;
    size_t grown = *cap ? *cap * 2 : first;
    void **slot = items;
    void *p = realloc(*slot, grown * size);
    if (!p) return -1;
    *slot = p;
    *cap = grown;
    return 0;
}

uint32_t sg_fnv1a(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 16777619u;
    }
    return h;
}

void sg_sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1) abort();
}

void sg_hex(const unsigned char *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

void sg_thread_name(const char *name, long index)
{
    char text[40];
    if (index < 0)
        snprintf(text, sizeof text, "%s", name);
    else
        snprintf(text, sizeof text, "%s-%ld", name, index);
    text[15] = '\0'; /* the kernel keeps 15 bytes and the NUL */
    pthread_setname_np(pthread_self(), text);
}
