/* testfile.h -- a `scopegate test` file, read and checked (cli-private).
 *
 * testfile.c reads a test file (docs/policy.md, "Policy tests") into cases,
 * reporting every malformed case as file:line before anything runs;
 * policytest.c runs them. */
#ifndef SG_TESTFILE_H
#define SG_TESTFILE_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "auth/challenge.h"
#include "base/sg.h"

#define MAX_HEADERS 32

typedef struct upstream_tool {
    char *name;
    cJSON *annotations; /* NULL when the tool has none */
} upstream_tool;

typedef struct test_case {
    int line;
    char *desc;
    char *body;            /* the JSON-RPC body, as the gateway would receive it */
    char *claims;          /* JSON claims object; NULL: anonymous */
    int annotations_given; /* the case says `annotations` (overrides upstream_tools) */
    cJSON *annotations;    /* NULL with annotations_given: explicitly none */
    sg_header headers[MAX_HEADERS];
    size_t nheaders;
    char *protocol_version;
    int expect;      /* an sg_outcome, or -1 when not checked */
    char *challenge; /* expected scope=, sorted and space-separated; NULL: not checked */
    char *rule;      /* expected deciding rule; NULL: not checked */
    char *visible;   /* expected visible tools, sorted and ", "-separated; NULL: not checked */
} test_case;

typedef struct test_file {
    const char *path;
    char *policy_path;
    char *public_url;
    upstream_tool *tools;
    size_t ntools;
    test_case *cases;
    size_t ncases;
} test_file;

/* The words `expect` takes, indexed by sg_outcome. */
extern const char *const sg_testfile_outcome_words[SG_OUTCOME_COUNT];

/* Reads and checks the test file at path into *f (which it owns; release
 * with sg_testfile_free, also after a failure). Returns 0, or -1 with one
 * "file:line: message" line per problem appended to errors. */
int sg_testfile_read(const char *path, test_file *f, sg_buf *errors);
/* Releases what sg_testfile_read filled in. Can't fail. */
void sg_testfile_free(test_file *f);

/* items sorted (strcmp) and joined with sep, malloc'd; NULL when out of
 * memory. */
char *sg_testfile_sorted_join(const char **items, size_t n, const char *sep);
/* qsort comparator over an array of const char *. */
int sg_testfile_by_string(const void *a, const void *b);

#endif
