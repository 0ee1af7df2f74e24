#!/usr/bin/env bash
# The macOS build check, run on Linux: bash tests/macos_build.sh BUILD_DIR
#
# Compiles every translation unit of the library, the CLI and the C unit tests for aarch64-macos
# and x86_64-macos with zig's bundled macOS headers (zig from PyPI, `ziglang`), warnings as
# errors, the library as it is built on a Mac (SDC_HAVE_ACCELERATE). Then it builds jansson and
# the protobuf-c runtime from Debian's source packages the same way and links the CLI (without
# Accelerate, whose framework zig does not ship: the built-in matrix kernels) into a Mach-O
# executable for each architecture, checked with `file`.
#
# What this proves: the sources are portable C for both macOS targets (no Linux-only call or
# header left unguarded) and link against the dependencies' macOS builds. What it does not:
# it never runs anything on a Mac, nor compiles against Apple's SDK or Accelerate.
#
# Environment: SDCOREML_CACHE (default ~/.cache/sdcoreml) holds the zig venv and the sources.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BUILD_DIR=${1:-build}
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
CACHE=${SDCOREML_CACHE:-$HOME/.cache/sdcoreml}
ZIG_VERSION=0.17.1
TARGETS=(aarch64-macos x86_64-macos)

# ---- zig ---------------------------------------------------------------------------------------
ZVENV="$CACHE/zig-$ZIG_VERSION"
if [[ ! -x "$ZVENV/bin/python" ]] || ! "$ZVENV/bin/python" -m ziglang version >/dev/null 2>&1; then
    rm -rf "$ZVENV"
    /usr/bin/python3 -m venv "$ZVENV"
    "$ZVENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "ziglang==$ZIG_VERSION"
fi
zigcc() { "$ZVENV/bin/python" -m ziglang cc "$@"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---- the dependencies' sources (Debian source packages), for their headers and the link -------
SRC="$CACHE/macos-deps"
if [[ ! -f "$SRC/.done" ]]; then
    rm -rf "$SRC" && mkdir -p "$SRC/lists/partial" "$SRC/dl"
    echo "deb-src http://deb.debian.org/debian bookworm main" > "$SRC/sources.list"
    APT=(-o Dir::Etc::SourceList="$SRC/sources.list" -o Dir::Etc::SourceParts=/nonexistent
         -o Dir::State::Lists="$SRC/lists" -o Debug::NoLocking=1 -o APT::Sandbox::User=root -q)
    apt-get "${APT[@]}" update >/dev/null
    (cd "$SRC/dl" && apt-get "${APT[@]}" source --download-only jansson protobuf-c >/dev/null 2>&1)
    tar xzf "$SRC"/dl/jansson_*.orig.tar.gz -C "$SRC"
    tar xzf "$SRC"/dl/protobuf-c_*.orig.tar.gz -C "$SRC"
    touch "$SRC/.done"
fi
JANSSON=$(echo "$SRC"/jansson-*/src)
PROTOBUFC=$(echo "$SRC"/protobuf-c-*)

# jansson's configure output for a 64-bit POSIX system with GCC-style builtins (both targets)
INC="$WORK/include"
mkdir -p "$INC/protobuf-c"
sed -e 's/@json_inline@/inline/' -e 's/@json_have_long_long@/1/' -e 's/@json_have_localeconv@/1/' \
    -e 's/@json_have_atomic_builtins@/1/' -e 's/@json_have_sync_builtins@/1/' \
    "$JANSSON/jansson_config.h.in" > "$INC/jansson_config.h"
cp "$JANSSON/jansson.h" "$INC/"
cp "$PROTOBUFC/protobuf-c/protobuf-c.h" "$INC/protobuf-c/"
# libcurl's public headers are portable (curl/system.h picks the types from the compiler's own
# macros): the Hub downloader is compiled as on a Mac with curl; the link leaves it out (zig has
# no macOS libcurl to link), where the CLI says downloads are not built in
CURL_H=$(dirname "$(echo /usr/include/*/curl/curl.h /usr/include/curl/curl.h | tr ' ' '\n' | grep -v '\*' | head -1)")
cp -r "$CURL_H" "$INC/curl"
cat > "$INC/jansson_private_config.h" <<'EOF'
#define HAVE_STDINT_H 1
#define HAVE_UNISTD_H 1
#define HAVE_FCNTL_H 1
#define HAVE_SCHED_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_SYS_TIME_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_CLOSE 1
#define HAVE_GETPID 1
#define HAVE_GETTIMEOFDAY 1
#define HAVE_OPEN 1
#define HAVE_READ 1
#define HAVE_SCHED_YIELD 1
#define HAVE_LOCALECONV 1
#define HAVE_ATOMIC_BUILTINS 1
#define HAVE_SYNC_BUILTINS 1
#define USE_URANDOM 1
#define INITIAL_HASHTABLE_ORDER 3
EOF

GEN="$BUILD_DIR/gen"
[[ -f "$GEN/coreml.pb-c.c" ]] || { echo "macos_build.sh: $GEN/coreml.pb-c.c missing: build first" >&2; exit 1; }

# ---- 1. every translation unit, warnings as errors ----------------------------------------------
WARN=(-std=c11 -Wall -Wextra -Wshadow -Wno-unused-parameter -Werror -D_FILE_OFFSET_BITS=64)
ours=()
while IFS= read -r f; do ours+=("$f"); done < <(find src cli tests/unit -name '*.c' | sort)
compile_one() { # target, defines..., file
    local target=$1 file=${!#}
    zigcc -target "$target" "${WARN[@]}" "${@:2:$#-2}" -Iinclude -Isrc -I"$GEN" -I"$INC" -Itests/unit \
        -DSDC_VERSION_STRING='"macos-check"' -DSDC_SOURCE_DIR="\"$ROOT\"" -c "$file" \
        -o "$WORK/$target-$(echo "$file" | tr / _).o"
}
n=0
for target in "${TARGETS[@]}"; do
    for f in "${ours[@]}"; do
        compile_one "$target" -DSDC_HAVE_ACCELERATE -DSDC_HAVE_CURL "$f"
        n=$((n + 1))
    done
done
echo "macos_build.sh: ${#ours[@]} translation units compiled for ${TARGETS[*]} ($n compiles), no warning"

# ---- 2. link the CLI: our objects (built-in kernels, no curl) + jansson + the protobuf-c runtime -
for target in "${TARGETS[@]}"; do
    objs=()
    for f in $(find src cli -name '*.c' | sort) "$GEN/coreml.pb-c.c"; do
        o="$WORK/link-$target-$(echo "$f" | tr / _).o"
        zigcc -target "$target" -std=c11 -O2 -Iinclude -Isrc -I"$GEN" -I"$INC" -DSDC_VERSION_STRING='"macos-check"' \
            -c "$f" -o "$o"
        objs+=("$o")
    done
    for f in "$JANSSON"/*.c; do
        o="$WORK/link-$target-jansson-$(basename "$f").o"
        zigcc -target "$target" -std=c99 -O2 -w -DHAVE_CONFIG_H -I"$INC" -I"$JANSSON" -c "$f" -o "$o"
        objs+=("$o")
    done
    o="$WORK/link-$target-protobuf-c.o"
    zigcc -target "$target" -std=c99 -O2 -w -I"$INC" -c "$PROTOBUFC/protobuf-c/protobuf-c.c" -o "$o"
    objs+=("$o")
    exe="$WORK/sdcoreml-$target"
    zigcc -target "$target" "${objs[@]}" -lm -lpthread -o "$exe"
    kind=$(file -b "$exe")
    case "$target:$kind" in
        aarch64-macos:Mach-O\ 64-bit*arm64*executable*|x86_64-macos:Mach-O\ 64-bit*x86_64*executable*)
            echo "macos_build.sh: linked $target: $kind" ;;
        *) echo "macos_build.sh: $target: not the expected Mach-O executable: $kind" >&2; exit 1 ;;
    esac
done
echo "macos_build.sh: ok"
