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

/* Evaluates the config file at path and returns a NULL-terminated argument
 * vector ("--listen", "0.0.0.0:8080", ...) in *argv_out with its length in
 * *argc_out, in key order. Free it with sg_config_argv_free. Returns 0, or
 * -1 after printing "scopegate serve: FILE: ..." (a Lua error with its
 * line, a value of the wrong type, or a key that is not a flag name; the
 * names in known_flags, a NULL-terminated list of "--flag" strings, are the
 * valid ones). */
int sg_config_argv(const char *path, const char *const *known_flags, int *argc_out,
                   char ***argv_out);
void sg_config_argv_free(int argc, char **argv);

#endif
