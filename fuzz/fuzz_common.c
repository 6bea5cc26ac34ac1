/* fuzz_common.c -- shared helpers of the libFuzzer targets (fuzz_common.h). */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/mint.h"
#include "auth/token.h"

static char tmpdir[64];

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) { /* best effort */
    }
}

const char *fuzz_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/sgfuzz.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

const char *fuzz_write_file(const char *name, const void *data, size_t len)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
        perror(path);
        abort();
    }
    return path;
}

void fuzz_mint(const char *header_json, const char *claims_json, sg_buf *out)
{
    char err[256];
    if (sg_token_mint("HS256", FUZZ_SECRET, strlen(FUZZ_SECRET), header_json ? NULL : FUZZ_KID,
                      header_json, claims_json, out, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_mint: %s\n", err);
        abort();
    }
}
