/* main.c -- the scopegate command line: serve, check, explain, token, version.
 *
 * Each subcommand is a thin shell over the core; parsing and reporting
 * errors in flags is this file's whole job. */
#include <stdio.h>
#include <string.h>

#include "sg.h"

static int usage(FILE *f)
{
    fputs("usage: scopegate <serve|check|explain|token|version> [options]\n"
          "       scopegate <command> --help for the options of a command\n",
          f);
    return f == stderr ? 2 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("scopegate %s\n", SG_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0) return usage(stdout);
    fprintf(stderr, "scopegate: unknown command '%s'\n", cmd);
    return usage(stderr);
}
