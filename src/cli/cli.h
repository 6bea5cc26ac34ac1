/* cli.h -- one flag parser for every subcommand.
 *
 * Flags are `--name VALUE` (or `--name=VALUE`); a table says where each
 * value goes and what it may be, so every subcommand reports a bad flag the
 * same way: one line on stderr naming the command, the flag and the rule.
 *
 * The folder src/cli/ is the program around the core: main.c (subcommands,
 * the development token minter), this flag parser, the config file
 * (conffile.h), serve.c, explain.c and policytest.c (`scopegate test`). It is
 * its own library, linked only into the program.
 */
#ifndef SG_CLI_H
#define SG_CLI_H

#include <stddef.h>

typedef enum sg_flag_kind {
    SG_FLAG_STRING, /* const char **dst */
    SG_FLAG_ULONG,  /* unsigned long *dst, within [min, max] */
    SG_FLAG_LIST,   /* sg_flag_list *dst: repeatable */
    SG_FLAG_BOOL    /* int *dst set to 1; takes no value */
} sg_flag_kind;

#define SG_FLAG_LIST_MAX 32
typedef struct sg_flag_list {
    const char *items[SG_FLAG_LIST_MAX];
    int n;
} sg_flag_list;

typedef struct sg_flag {
    const char *name; /* with the dashes: "--listen" */
    sg_flag_kind kind;
    void *dst;
    unsigned long min, max; /* SG_FLAG_ULONG only */
} sg_flag;

/* Parses v as a whole number in [min, max] into *out. Returns 0, or -1
 * after printing "scopegate CMD: WHAT needs a whole number from MIN to MAX,
 * not 'V'" to stderr. */
int sg_parse_ulong(const char *cmd, const char *what, const char *v, unsigned long min,
                   unsigned long max, unsigned long *out);

/* Parses argv[first..argc) against flags. Arguments that are not flags are
 * positional: up to max_pos of them are stored in pos (NULL-free), their
 * count in *npos. Returns 0; 1 when --help/-h was given (nothing else is
 * parsed); -1 after printing "scopegate CMD: ..." to stderr for an unknown
 * flag, a missing value, a bad number, a full list or too many positional
 * arguments. Strings point into argv. */
int sg_flags_parse(const char *cmd, int argc, char **argv, int first, const sg_flag *flags,
                   size_t nflags, const char **pos, int max_pos, int *npos);

#endif
