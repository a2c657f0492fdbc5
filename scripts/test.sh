#!/usr/bin/env bash
# test.sh - install what the tests need, build, and run every test under ctest.
#   SANITIZE=1 scripts/test.sh   the same suite built with ASan+UBSan (in build-asan/)
#   CTEST_ARGS='-L unit'         extra ctest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh test

if [ "${SANITIZE:-0}" = 1 ]; then
    dir=build-asan
    flags=(-DDETOUR_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
    # The tests' ASAN_OPTIONS (with tests/asan.supp) come from tests/CMakeLists.txt.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:halt_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
else
    dir=build
    flags=()
fi

cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
# shellcheck disable=SC2086
ctest --output-on-failure -j"$(nproc)" ${CTEST_ARGS:-}
