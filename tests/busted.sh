#!/bin/sh
# tests/busted.sh BUILD_DIR [busted args...] -- runs the busted specs under
# Lua 5.4 against the C core built in BUILD_DIR. When that build is a
# sanitizer build, the ASan runtime is preloaded into the interpreter.
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
fi
exec lua5.4 /usr/bin/busted "$@"
