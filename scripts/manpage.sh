#!/bin/sh
# scripts/manpage.sh SCOPEGATE OUT -- writes scopegate(1) from the binary's
# own --help texts, so the man page can never disagree with the program.
# Run by the build (CMake) after the binary is linked.
set -eu
bin=$1
out=$2
version=$("$bin" version 2>/dev/null | head -1)
# roff-escape: backslashes first, then a leading dot or quote on a line.
esc() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
{
    printf '.TH SCOPEGATE 1 "" "%s" "User Commands"\n' "$version"
    printf '.SH NAME\nscopegate \\- an authorization gateway for MCP servers\n'
    printf '.SH SYNOPSIS\n.nf\n'
    "$bin" --help | esc
    printf '.fi\n.SH DESCRIPTION\n'
    printf 'scopegate sits between MCP clients and an MCP server. It verifies each request'"'"'s OAuth\n'
    printf 'bearer token, asks a Lua policy which scopes each JSON-RPC message needs, and either\n'
    printf 'forwards the message upstream without the token or answers 401/403 with the\n'
    printf 'WWW-Authenticate challenge MCP clients use to step up their authorization.\n'
    for cmd in serve check explain test token; do
        printf '.SH %s\n.nf\n' "$(echo "scopegate $cmd" | tr a-z A-Z)"
        "$bin" "$cmd" --help 2>&1 | esc
        printf '.fi\n'
    done
    printf '.SH SIGNALS\nSIGHUP re-reads the key files, refetches a JWKS URL and reloads the policy.\n'
    printf 'SIGINT and SIGTERM stop the gateway.\n'
    printf '.SH FILES\n.TP\n/usr/share/scopegate/lua\nthe shipped Lua library (presets, testing helpers)\n'
    printf '.TP\n/usr/share/scopegate/examples\nexample policies and their tests\n'
    printf '.SH SEE ALSO\nThe documents in /usr/share/doc/scopegate.\n'
} >"$out"
