/* conffile.h -- `serve --config FILE`: the same settings as flags, in Lua.
 *
 * A config file returns a table whose keys are the flag names without the
 * leading dashes (`public_url` or `public-url` for --public-url); a value is
 * a string, an integer, or a list of strings for a repeatable flag:
 *
 *   return { listen = "0.0.0.0:8080", upstream = "http://mcp:3001/mcp",
 *            policy = "/etc/scopegate/policy.lua", jwks = "https://as/jwks",
 *            allowed_host = { "mcp.example.com" }, threads = 4 }
 *
 * It is evaluated in the policy sandbox (no I/O, bounded time and memory)
 * and turned into an argument vector that the one flag parser reads before
 * the command line, so flags given on the command line override it and
 * every value is checked by the same rules. */
#ifndef SG_CONFFILE_H
#define SG_CONFFILE_H

#include <stddef.h>

#include "cli/cli.h"

/* Evaluates the config file at path and parses its settings, in key order,
 * into flags (nflags entries, the same table the command line uses) with
 * sg_flags_parse. The strings the flags receive point into an argument
 * vector returned in *argv_out (length *argc_out): free it with
 * sg_config_argv_free only after the last use of the parsed values.
 * Returns 0, or -1 after printing one "scopegate serve: FILE:LINE: ..."
 * line (a Lua error at its line; an unknown setting, a value of the wrong
 * type or a value the flag refuses at the line of its key; a file that
 * does not return a table at its `return`); nothing is left to free then. */
int sg_config_parse(const char *path, const sg_flag *flags, size_t nflags, int *argc_out,
                    char ***argv_out);
void sg_config_argv_free(int argc, char **argv);

#endif
