#!/usr/bin/env bash
# Fuzzing benchmark and smoke test: bash bench/fuzz.sh [SECONDS_PER_HARNESS]   (default 60)
#
# Builds the libFuzzer harnesses of tests/fuzz if needed (CC=clang, -DSDCOREML_FUZZ=ON: ASan +
# UBSan), makes fresh seed corpora (tests/fuzz/make_corpus.py: the committed fixtures, packages
# converted from examples/tiny-sd, the committed crash reproducers of tests/fuzz/regressions),
# runs each harness for SECONDS_PER_HARNESS, one after the other, and prints per harness the
# execs/s, total execs and crashes (any libFuzzer artifact: crash, leak, timeout, out of
# memory), with tests/fuzz/<harness>.dict as its dictionary when there is one. Exits 1 when any
# harness crashed; the reproducers are kept under
# $FUZZ_BUILD_DIR/fuzz-artifacts/<harness>/ (minimise one with the harness and
# -minimize_crash=1, then commit it under tests/fuzz/regressions/<harness>/ with the fix).
# Replay one: build-fuzz/tests/fuzz/fuzz_<harness> FILE (the package_model and package_weights
# harnesses also need SDC_FUZZ_PACKAGE=<dir>/base.mlpackage from tests/fuzz/make_corpus.py <dir>).
#
# Environment:
#   FUZZ_BUILD_DIR   CMake build directory of the harnesses (default build-fuzz)
#   FUZZ_HARNESSES   space-separated subset to run (default: every tests/fuzz/fuzz_*.c)
#   FUZZ_JOBS        build parallelism (default 2)
# Needs clang and libFuzzer (Debian 12: apt-get install clang libclang-rt-14-dev) and python3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SECONDS_PER_HARNESS="${1:-60}"
if ! [[ "$SECONDS_PER_HARNESS" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash bench/fuzz.sh [SECONDS_PER_HARNESS]" >&2
    exit 2
fi
BUILD="${FUZZ_BUILD_DIR:-build-fuzz}"
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
if ! command -v clang >/dev/null; then
    echo "bench/fuzz.sh: clang not found (Debian: apt-get install clang libclang-rt-14-dev)" >&2
    exit 1
fi

HARNESSES=()
if [[ -n "${FUZZ_HARNESSES:-}" ]]; then
    read -r -a HARNESSES <<<"$FUZZ_HARNESSES"
else
    for f in tests/fuzz/fuzz_*.c; do HARNESSES+=("$(basename "$f" .c | sed 's/^fuzz_//')"); done
fi

# ---- build (incremental: only what changed) ----------------------------------------------------
echo "==> building the harnesses in $BUILD"
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    CC=clang cmake -B "$BUILD" -S . -DSDCOREML_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
targets=(sdcoreml)
for h in "${HARNESSES[@]}"; do targets+=("fuzz_$h"); done
cmake --build "$BUILD" -j"${FUZZ_JOBS:-2}" --target "${targets[@]}" >"$BUILD/fuzz-build.log" 2>&1 ||
    { tail -40 "$BUILD/fuzz-build.log" >&2; exit 1; }

# ---- seed corpora ------------------------------------------------------------------------------
# Scratch files of the harnesses go to tmpfs when there is one (see tests/fuzz/harness.h).
SHM=/tmp
[[ -d /dev/shm && -w /dev/shm ]] && SHM=/dev/shm
WORK=$(mktemp -d "$SHM/sdc-fuzz-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export SDC_FUZZ_TMPDIR="$WORK/scratch" SDC_FUZZ_PACKAGE="$WORK/corpus/base.mlpackage"
mkdir -p "$SDC_FUZZ_TMPDIR" "$WORK/pkgs"
echo "==> seed corpora"
convert() { # <out> <sdcoreml options...>: a tiny-sd text encoder package, as seed material
    local out="$WORK/pkgs/$1"
    shift
    "$BUILD/sdcoreml" --model-version examples/tiny-sd -o "$out" --convert-text-encoder "$@" >/dev/null 2>&1 ||
        { echo "bench/fuzz.sh: converting examples/tiny-sd ($*) failed" >&2; exit 1; }
}
convert fp16
convert q4 --quantize-nbits 4
convert q6 --quantize-nbits 6 --min-deployment-target iOS18
python3 tests/fuzz/make_corpus.py "$WORK/corpus" "$WORK"/pkgs/*/*.mlpackage

# ---- runs --------------------------------------------------------------------------------------
ART="$BUILD/fuzz-artifacts"
stat_of() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }
declare -A EXECS RATE CRASHES
total=0 crashed=0
for h in "${HARNESSES[@]}"; do
    echo "==> fuzz_$h for ${SECONDS_PER_HARNESS}s"
    rm -rf "${ART:?}/$h"
    mkdir -p "$ART/$h"
    log="$WORK/$h.log"
    dict=()
    [[ -f "tests/fuzz/$h.dict" ]] && dict=(-dict="tests/fuzz/$h.dict")
    rc=0
    # -timeout: one input taking 25 s is a finding; -rss_limit_mb: so is a 2 GB allocation.
    "$BUILD/tests/fuzz/fuzz_$h" "$WORK/corpus/$h" -max_total_time="$SECONDS_PER_HARNESS" -print_final_stats=1 \
        -timeout=25 -rss_limit_mb=2048 -artifact_prefix="$ART/$h/" "${dict[@]}" >"$log" 2>&1 || rc=$?
    n_art=$(find "$ART/$h" -type f | wc -l)
    if ((rc != 0 && n_art == 0)); then n_art=1; fi # died without an artifact: still a failure
    EXECS[$h]=$(stat_of number_of_executed_units "$log")
    RATE[$h]=$(stat_of average_exec_per_sec "$log")
    CRASHES[$h]=$n_art
    total=$((total + ${EXECS[$h]:-0}))
    if ((n_art)); then
        crashed=1
        echo "fuzz_$h FAILED (exit $rc); the end of its log:" >&2
        grep -v '^#\|^INFO\|^stat::' "$log" | tail -40 >&2
        find "$ART/$h" -type f >&2
    fi
done

# ---- table -------------------------------------------------------------------------------------
echo
printf '%-18s %10s %14s %8s\n' harness execs/s "total execs" crashes
for h in "${HARNESSES[@]}"; do
    printf '%-18s %10s %14s %8s\n' "$h" "${RATE[$h]:-?}" "${EXECS[$h]:-?}" "${CRASHES[$h]}"
done
printf '%-18s %10s %14s\n' "all" "" "$total"
exit "$crashed"
