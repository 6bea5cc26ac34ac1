/* fuzz_common.h -- what the libFuzzer targets in fuzz/ share: a fixed test
 * key, token minting with it, and scratch files for code that reads paths.
 * Test-only: none of this is linked into scopegate itself. */
#ifndef SG_FUZZ_COMMON_H
#define SG_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "base/sg.h"

/* The fixed HS256 test secret (32 bytes) and the issuer and audience the
 * targets' verifiers expect. Seed tokens in fuzz/corpus are minted with it
 * (fuzz/mkcorpus.sh). */
#define FUZZ_SECRET   "scopegate-fuzz-test-secret-32byt"
#define FUZZ_KID      "fuzz-hs"
#define FUZZ_ISSUER   "https://auth.example.com"
#define FUZZ_AUDIENCE "https://fuzz.example.com/mcp"

/* The libFuzzer entry points every target defines (Initialize only where
 * the target has setup to do). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A private directory for the process (created once, removed at exit). */
const char *fuzz_tmpdir(void);

/* Writes len bytes to <fuzz_tmpdir()>/name and returns the path (static
 * storage, overwritten by the next call). Aborts on failure: a harness that
 * cannot write its scratch file must not pass silently. */
const char *fuzz_write_file(const char *name, const void *data, size_t len);

/* Appends an HS256 token over claims_json, signed with FUZZ_SECRET, to out;
 * header_json NULL for the default header with FUZZ_KID. Aborts on failure. */
void fuzz_mint(const char *header_json, const char *claims_json, sg_buf *out);

#endif
