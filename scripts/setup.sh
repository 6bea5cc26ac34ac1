# scripts/setup.sh -- installing what scopegate's commands need, sourced by
# ./run, tests/run and bench/run so that each installs the same way and is
# quick when everything is already there.

# The Debian packages the C build needs.
SG_BUILD_DEBS=(build-essential pkg-config cmake liblua5.4-dev lua5.4 libmicrohttpd-dev
               libcjson-dev libjwt-dev libssl-dev libcurl4-openssl-dev openssl curl)
# What the libFuzzer targets (fuzz/, scripts/fuzz) add: clang, its
# sanitizer and libFuzzer runtimes, and llvm-symbolizer for readable reports.
SG_FUZZ_DEBS=(clang libclang-rt-dev llvm)

# sg_system_path -- the system's directories first on PATH, in Debian's
# order, so that the tools these commands install from Debian (python3 with
# python3-yaml, lua5.4, curl, openssl) are the ones that run, and not a
# version manager's shims that come earlier: a pyenv shim costs a quarter of
# a second per python3 start, and the test suite starts Python hundreds of
# times.
sg_system_path() {
    PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
    export PATH
}

# sg_install_debs PKG... -- apt-get installs the packages that are missing.
sg_install_debs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "scopegate: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# sg_install_node -- node and npm, from Debian unless some node is present.
sg_install_node() {
    command -v node >/dev/null && command -v npm >/dev/null && return 0
    sg_install_debs nodejs npm
}

# sg_npm_ci DIR -- installs DIR's locked npm packages into DIR/node_modules,
# unless they are already installed from the same lockfile.
sg_npm_ci() {
    local dir=$1
    if [ -f "$dir/node_modules/.package-lock.json" ] &&
        [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
        return 0
    fi
    echo "scopegate: npm ci in $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

# sg_build DIR [cmake args...] -- configures (once) and builds DIR; prints
# the compiler's errors and returns 1 when the build fails. The project's own
# builds treat warnings as errors (SG_WERROR; off for packagers).
sg_build() {
    local dir=$1; shift
    grep -q '^SG_WERROR:BOOL=ON' "$dir/CMakeCache.txt" 2>/dev/null ||
        cmake -S . -B "$dir" -DSG_WERROR=ON "$@" >/dev/null
    if ! cmake --build "$dir" -j "$(nproc)" >"$dir/build.log" 2>&1; then
        grep -E 'error|Error' "$dir/build.log" | head -40 >&2
        return 1
    fi
}
