#!/usr/bin/env bash
# The test command: installs what is missing (Debian, as root), builds, runs the whole suite.
#
#   tests/run.sh                      build in build/, run every test
#   tests/run.sh --sanitize address   the same under AddressSanitizer, in build-address/
#   tests/run.sh --sanitize undefined                 UndefinedBehaviorSanitizer, build-undefined/
#   tests/run.sh -L unit              extra arguments go to ctest (labels: unit mpi netns gpu install)
#
# GPU tests skip (exit 77) without a GPU; netns tests skip without root.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sanitize=""
ctest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize=${2:?"--sanitize needs address or undefined"}; shift 2 ;;
    --help|-h) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ctest_args+=("$1"); shift ;;
  esac
done
case "$sanitize" in
  ""|address|undefined) ;;
  *) echo "tests/run.sh: --sanitize takes address or undefined, not '$sanitize'" >&2; exit 2 ;;
esac

# shellcheck source=../cmake/debian-deps.sh
. "$root/cmake/debian-deps.sh"
lh_install_deps

build="$root/build${sanitize:+-$sanitize}"
jobs=$(nproc 2>/dev/null || echo 2)
echo "== configure ($build)"
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLH_SANITIZE="$sanitize" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
grep -E '^-- +(Longhaul|MPI|zstd|CUDA|NCCL|hwloc|LH_)' "$build/configure.log" || true
echo "== build"
if ! cmake --build "$build" -j "$jobs" >"$build/build.log" 2>&1; then
  grep -E -A3 'error|Error' "$build/build.log" | head -60
  echo "tests/run.sh: the build failed; the whole log is $build/build.log" >&2
  exit 1
fi
grep -E 'warning' "$build/build.log" || true
echo "== test"
cd "$build"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --output-on-failure -j "$jobs" --timeout 600 "${ctest_args[@]}"
