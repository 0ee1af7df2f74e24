#!/usr/bin/env bash
# The test command: bash tests/run.sh
#
#   1. as root, apt-get installs the build and test packages that are missing (Debian);
#   2. creates or reuses the Python test venv (Debian's python3 + its CPU torch, plus the exact
#      pins of tests/requirements.txt);
#   3. builds with CMake (gcc, warnings as errors);
#   4. runs the C unit tests (ctest), then under ASan+UBSan, then a short libFuzzer smoke of
#      every harness of tests/fuzz (bench/fuzz.sh; clang, ASan+UBSan; any crash fails the run);
#   5. builds again with clang (warnings as errors) and runs its ctest; compiles every source
#      for aarch64-macos and x86_64-macos with zig and links the CLI (tests/macos_build.sh);
#   6. runs the Python oracle tests (pytest tests/python); a skip whose reason is not on
#      tests/python/conftest.py's ALLOWED_SKIPS fails it (conftest's skip policy).
#
# Environment:
#   SDCOREML_VENV    venv to use (default ~/.cache/sdcoreml/venv-<hash of tests/requirements.txt>)
#   SDCOREML_CACHE   cache root for the venv and generated fixtures (default ~/.cache/sdcoreml)
#   BUILD_DIR        CMake build directory (default build)
#   PYTEST_ARGS      extra arguments for pytest
#   SDCOREML_SKIP_SANITIZE=1  skip the AddressSanitizer/UBSan build of the C unit tests
#   SDCOREML_SKIP_FUZZ=1      skip the fuzz smoke (and installing its libFuzzer runtime)
#   SDCOREML_FUZZ_SECONDS     seconds per fuzz harness in the smoke (default 10)
#   SDCOREML_SKIP_PORTABILITY=1  skip the clang build and the macOS build check
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
T0=$(date +%s)
say() { printf '\n==> [%ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

: "${HOME:=/root}"
export SDCOREML_CACHE="${SDCOREML_CACHE:-$HOME/.cache/sdcoreml}"
BUILD_DIR="${BUILD_DIR:-build}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac

# ---- 1. system packages ------------------------------------------------------------------------
BUILD_PKGS=(cmake gcc pkg-config libjansson-dev libprotobuf-c-dev protobuf-c-compiler libopenblas-dev libcurl4-openssl-dev libpng-dev)
PORTABILITY_PKGS=(clang file)
TEST_PKGS=(python3-torch python3-venv python3-numpy)
# clang's libFuzzer runtime for the fuzz smoke (Debian 12's clang is clang 14; clang itself is
# in PORTABILITY_PKGS)
if [[ "${SDCOREML_SKIP_FUZZ:-0}" != 1 ]]; then TEST_PKGS+=(libclang-rt-14-dev); fi
missing=()
for p in "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${PORTABILITY_PKGS[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then missing+=("$p"); fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        say "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "tests/run.sh: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    fi
fi

# ---- 2. Python venv ----------------------------------------------------------------------------
REQ="$ROOT/tests/requirements.txt"
REQ_HASH=$(sha256sum "$REQ" | cut -c1-12)
VENV="${SDCOREML_VENV:-$SDCOREML_CACHE/venv-$REQ_HASH}"
MARKER="$VENV/.sdcoreml-installed"
if [[ -f "$MARKER" && -x "$VENV/bin/python" ]]; then
    say "reusing venv $VENV"
else
    say "creating venv $VENV"
    if [[ -e "$VENV" ]]; then
        # Only ever delete a half-made venv of ours, never some other folder given by mistake.
        if [[ -f "$VENV/pyvenv.cfg" ]] || [[ -d "$VENV" && -z "$(ls -A "$VENV")" ]]; then
            rm -rf "$VENV"
        else
            echo "tests/run.sh: $VENV exists and is not a venv; refusing to replace it" >&2
            exit 1
        fi
    fi
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    NODEPS='^(peft|accelerate)=='  # see tests/requirements.txt
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r <(grep -Ev "$NODEPS" "$REQ")
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps $(grep -E "$NODEPS" "$REQ")
    "$VENV/bin/python" - <<'PY'
import torch, numpy, diffusers, transformers, coremltools
from coremltools.converters.mil.frontend.milproto.load import load  # noqa: F401
print("venv ok: torch", torch.__version__, "numpy", numpy.__version__, "diffusers", diffusers.__version__,
      "transformers", transformers.__version__, "coremltools", coremltools.__version__)
PY
    echo "$REQ_HASH" > "$MARKER"
fi
PY="$VENV/bin/python"

# ---- 3. build ----------------------------------------------------------------------------------
say "cmake build ($BUILD_DIR)"
cmake -B "$BUILD_DIR" -S . -DSDCOREML_WERROR=ON
cmake --build "$BUILD_DIR" -j2

# ---- 4. C unit tests, plain and under AddressSanitizer + UBSan --------------------------------
say "ctest"
ctest --test-dir "$BUILD_DIR" --output-on-failure
if [[ "${SDCOREML_SKIP_SANITIZE:-0}" != 1 ]]; then
    say "ctest with -fsanitize=address,undefined (${BUILD_DIR}-asan)"
    cmake -B "${BUILD_DIR}-asan" -S . -DSDCOREML_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
    cmake --build "${BUILD_DIR}-asan" -j2
    # test_faults fails every allocation up to 400, then ~300 sparse points per scenario in the
    # plain run; under ASan (4x slower) it takes ~100 sparse points, so that the whole run stays
    # well inside CI's 30 minutes (the plain run above still covers all of them for the errors)
    SDC_FAULTS_POINTS="${SDC_FAULTS_POINTS:-100}" ASAN_OPTIONS=detect_leaks=1 \
        ctest --test-dir "${BUILD_DIR}-asan" --output-on-failure
fi
if [[ "${SDCOREML_SKIP_FUZZ:-0}" != 1 ]]; then
    say "fuzz smoke: every harness of tests/fuzz for ${SDCOREML_FUZZ_SECONDS:-10}s (${BUILD_DIR}-fuzz)"
    FUZZ_BUILD_DIR="${BUILD_DIR}-fuzz" bash bench/fuzz.sh "${SDCOREML_FUZZ_SECONDS:-10}"
fi

# ---- 5. portability: clang on Linux, and the macOS build check -------------------------------------
if [[ "${SDCOREML_SKIP_PORTABILITY:-0}" != 1 ]]; then
    say "clang build, warnings as errors (${BUILD_DIR}-clang)"
    CC=clang cmake -B "${BUILD_DIR}-clang" -S . -DSDCOREML_WERROR=ON >/dev/null
    cmake --build "${BUILD_DIR}-clang" -j2 >/dev/null
    ctest --test-dir "${BUILD_DIR}-clang" --output-on-failure
    say "macOS build check (zig: aarch64-macos, x86_64-macos)"
    bash tests/macos_build.sh "$BUILD_DIR"
fi

# ---- 6. Python oracle tests --------------------------------------------------------------------
say "pytest tests/python"
export SDCOREML_BIN="${SDCOREML_BIN:-$BUILD_DIR/sdcoreml}"
export PYTHONDONTWRITEBYTECODE=1
rc=0
# shellcheck disable=SC2086
"$PY" -m pytest tests/python -q ${PYTEST_ARGS:-} || rc=$?
if ((rc == 5)); then
    echo "tests/run.sh: pytest collected no tests" >&2
    exit 1
elif ((rc != 0)); then
    exit "$rc"
fi
say "all tests passed"
