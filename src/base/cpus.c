/* cpus.c -- how many CPUs this process may actually run on.
 *
 * Why: `scopegate serve` sizes its worker threads by it. More workers than
 * usable CPUs only adds context switches (two workers on one pinned core
 * cost the allowed path 15% and doubled its p99), so the default follows
 * what the kernel will give the process, not how many CPUs the machine has:
 * the affinity mask (taskset, systemd CPUAffinity=, a container's cpuset)
 * and a CFS bandwidth quota (cgroup v2 `cpu.max`, cgroup v1
 * `cpu.cfs_quota_us`), rounded up. */
#define _GNU_SOURCE
#include "base/sg.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

unsigned sg_cgroup_cpu_limit(const char *quota, const char *period)
{
    if (!quota || !period) return 0;
    while (*quota == ' ' || *quota == '\t')
        quota++;
    if (strncmp(quota, "max", 3) == 0 || *quota == '-') return 0; /* unlimited */
    char *end;
    unsigned long long q = strtoull(quota, &end, 10), p;
    if (end == quota || q == 0) return 0;
    const char *s = period;
    while (*s == ' ' || *s == '\t')
        s++;
    p = strtoull(s, &end, 10);
    if (end == s || p == 0) return 0;
    unsigned long long cpus = q / p + (q % p != 0);
    return cpus > 4096 ? 4096 : (unsigned)cpus;
}

/* The first whitespace-separated word of a small file into out (NUL
 * terminated); -1 when the file cannot be read. */
static int read_words(const char *path, char *out, size_t outlen)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(out, 1, outlen - 1, f);
    fclose(f);
    out[n] = '\0';
    return n ? 0 : -1;
}

/* The cgroup path (under its hierarchy's mount) of this process for the
 * unified hierarchy (`0::/path`, want_v1 = 0) or for the v1 hierarchy whose
 * controller list holds "cpu" (want_v1 = 1), from /proc/self/cgroup. */
static int own_cgroup(int want_v1, char *out, size_t outlen)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return -1;
    char line[4096];
    int found = -1;
    while (found != 0 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = '\0';
        const char *controllers = c1 + 1, *path = c2 + 1;
        int match = 0;
        if (!want_v1) {
            match = strncmp(line, "0", 2) == 0 && *controllers == '\0';
        } else {
            /* "cpu,cpuacct" or "cpu": the word "cpu" exactly. */
            for (const char *w = controllers; *w;) {
                size_t n = strcspn(w, ",");
                if (n == 3 && strncmp(w, "cpu", 3) == 0) match = 1;
                w += n + (w[n] == ',');
            }
        }
        if (match && strlen(path) < outlen) {
            memcpy(out, path, strlen(path) + 1);
            found = 0;
        }
    }
    fclose(f);
    return found;
}

/* The smallest quota set on the process's cgroup or any of its ancestors
 * (a child cannot use more than its parents are given), in CPUs rounded up;
 * 0 when none is set or nothing can be read. */
static unsigned cgroup_quota_cpus(void)
{
    char rel[2048], dir[2600], a[64], b[64];
    unsigned best = 0;
    static const char *const v1_mounts[] = {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"};
    for (int v1 = 0; v1 <= 1; v1++) {
        if (own_cgroup(v1, rel, sizeof rel) != 0) continue;
        for (size_t m = 0; m < (v1 ? SG_ARRAY_LEN(v1_mounts) : 1); m++) {
            const char *mount = v1 ? v1_mounts[m] : "/sys/fs/cgroup";
            for (;;) {
                unsigned cpus = 0;
                char path[2700];
                snprintf(dir, sizeof dir, "%s%s", mount, strcmp(rel, "/") == 0 ? "" : rel);
                if (!v1) {
                    snprintf(path, sizeof path, "%s/cpu.max", dir);
                    if (read_words(path, a, sizeof a) == 0) {
                        char *sp = strpbrk(a, " \t");
                        if (sp) cpus = sg_cgroup_cpu_limit(a, sp + 1);
                    }
                } else {
                    snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
                    if (read_words(path, a, sizeof a) == 0) {
                        snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
                        if (read_words(path, b, sizeof b) == 0) cpus = sg_cgroup_cpu_limit(a, b);
                    }
                }
                if (cpus && (!best || cpus < best)) best = cpus;
                char *slash = strrchr(rel, '/');
                if (!slash || strcmp(rel, "/") == 0) break;
                if (slash == rel)
                    rel[1] = '\0';
                else
                    *slash = '\0';
            }
            if (v1) own_cgroup(v1, rel, sizeof rel); /* the next mount walks from the leaf */
        }
    }
    return best;
}

unsigned sg_cpus_usable(void)
{
    unsigned n = 0;
    /* A mask big enough for any machine glibc's fixed cpu_set_t misses. */
    for (int ncpus = 1024; ncpus <= 65536 && n == 0; ncpus *= 4) {
        cpu_set_t *set = CPU_ALLOC(ncpus);
        if (!set) break;
        size_t size = CPU_ALLOC_SIZE(ncpus);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) n = (unsigned)CPU_COUNT_S(size, set);
        CPU_FREE(set);
    }
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 ? (unsigned)online : 1;
    }
    unsigned quota = cgroup_quota_cpus();
    if (quota && quota < n) n = quota;
    return n ? n : 1;
}
