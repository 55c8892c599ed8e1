#!/usr/bin/env bash
# A tour of the transport: install what is missing, build, and show Longhaul moving data over
# slow links (the main job is examples/demo.sh, which trains a model).
#
#   examples/tour.sh               everything (about 5 minutes on 2 cores)
#   examples/tour.sh --no-testbed  skip the real shaped-link comparison (needs root anyway)
#
# 1. the link probe measures a heterogeneous 4-host WAN (examples/links/wan4.links, simulated)
#    and prints what it found beside what was configured;
# 2. the baseline ring all-reduce over simulated 100 Mbit/s, 20 ms links, 4 ranks, 16-64 MiB,
#    with the alpha-beta model's prediction beside each measurement;
# 3. as root: ring vs MPI_Allreduce on 4 network namespaces whose uplinks the kernel shapes
#    to 100 Mbit/s (examples/wan/compare.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
testbed=1
for arg in "$@"; do
  case "$arg" in
    --no-testbed) testbed=0 ;;
    --help|-h) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tour.sh: unknown option '$arg'; see examples/tour.sh --help." >&2; exit 2 ;;
  esac
done

# shellcheck source=../cmake/debian-deps.sh
. "$root/cmake/debian-deps.sh"
lh_install_deps

build="$root/build"
echo "== building Longhaul in $build"
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target lh-probe lh-info allreduce_perf >"$build/build.log" 2>&1 ||
  { tail -40 "$build/build.log"; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun -np 4 --oversubscribe)

echo
echo "== 1. the link probe on a simulated heterogeneous WAN (examples/links/wan4.links)"
measured=$(mktemp /tmp/longhaul-demo-XXXXXX.links)
trap 'rm -f "$measured"' EXIT
LH_LINKS="$root/examples/links/wan4.links" "${mpirun[@]}" -x LH_LINKS "$build/examples/lh-probe" \
  --out "$measured" --target-seconds 0.1 --max-bytes 16M
echo "configured (examples/links/wan4.links) and measured ($measured):"
# Side by side, per ordered pair: a few lines of awk over the two matrices.
awk -v OFS='  ' '
  FNR == 1 { file++ }
  /^#/ || NF == 0 { next }
  $1 == "latency_ms" || $1 == "bandwidth_gbps" { section = $1; row = 0; next }
  $1 ~ /^[a-z]/ { section = ""; next }
  section != "" { for (j = 1; j <= NF; j++) v[file, section, row, j - 1] = $j; n = NF; row++ }
  END {
    printf "  %-6s %21s %21s\n", "link", "latency ms (cfg/meas)", "Mbit/s (cfg/meas)"
    for (i = 0; i < n; i++) for (j = 0; j < n; j++) if (i != j)
      printf "  %d -> %d %10.2f %10.2f %10.1f %10.1f\n", i, j,
        v[1, "latency_ms", i, j], v[2, "latency_ms", i, j],
        v[1, "bandwidth_gbps", i, j] * 1000, v[2, "bandwidth_gbps", i, j] * 1000
  }' "$root/examples/links/wan4.links" "$measured"

echo
echo "== 2. ring all-reduce over simulated 100 Mbit/s, 20 ms links (4 ranks)"
echo "   model(us) is the alpha-beta prediction; busbw 0.0125 GB/s would be the full link rate"
LH_SIM_BW=100mbit LH_SIM_LAT=20ms "${mpirun[@]}" -x LH_SIM_BW -x LH_SIM_LAT \
  "$build/bench/allreduce_perf" -b 16M -e 64M -f 2 -n 2 -w 1

echo
if [ "$testbed" = 1 ] && [ "$(id -u)" -eq 0 ]; then
  echo "== 3. ring vs MPI_Allreduce over real kernel-shaped 100 Mbit/s uplinks (network namespaces)"
  rc=0
  bash "$root/examples/wan/compare.sh" --hosts 4 --rate 100mbit --bench "$build/bench/allreduce_perf" || rc=$?
  if [ "$rc" = 77 ]; then
    echo "   (skipped: network namespaces cannot be created here)"
  elif [ "$rc" != 0 ]; then
    exit "$rc"
  fi
else
  echo "== 3. skipped: the namespace testbed needs root, and --no-testbed turns it off"
fi
echo
echo "Done. Next: tests/run.sh runs the test suite; README.md explains each part."
