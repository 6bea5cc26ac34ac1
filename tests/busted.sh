#!/bin/sh
# tests/busted.sh BUILD_DIR [busted args...] -- runs the busted specs under
# Lua 5.4 against the C core built in BUILD_DIR. When that build is a
# sanitizer build, the ASan runtime is preloaded into the interpreter; for a
# ThreadSanitizer build, see below.
set -eu
build=$(cd "$1" && pwd); shift
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export SG_BUILD_DIR="$build"
export LUA_CPATH="$build/lua/?.so;;"
if grep -q '^SG_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
    export LSAN_OPTIONS="suppressions=$here/tests/lsan.supp:print_suppressions=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
elif grep -q '^SG_TSAN:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    # ThreadSanitizer cannot be preloaded into the interpreter (busted's own
    # child processes crash under it), and what it is for is the threads of
    # the server: the specs drive the instrumented scopegate binary of this
    # build, while the Lua module comes from the release build.
    # Every report goes to a file, and any file fails the run: a spec that
    # only looks at answers would not notice a report on the server's stderr.
    export LUA_CPATH="$here/build/lua/?.so;;"
    reports=$(mktemp -d)
    export TSAN_OPTIONS="log_path=$reports/tsan:second_deadlock_stack=1:suppressions=$here/tests/tsan.supp:${TSAN_OPTIONS:-}"
    rc=0
    lua5.4 /usr/bin/busted "$@" || rc=$?
    if [ -n "$(ls -A "$reports")" ]; then
        cat "$reports"/* >&2
        echo "tests/busted.sh: ThreadSanitizer reported $(ls "$reports" | wc -l) process(es)" >&2
        rc=1
    fi
    rm -rf "$reports"
    exit "$rc"
fi
exec lua5.4 /usr/bin/busted "$@"
