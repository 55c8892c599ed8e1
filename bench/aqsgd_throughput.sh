#!/bin/sh
# AQ-SGD pipeline throughput on simulated links: runs `aqsgd_convergence --throughput` (2 ranks,
# FP32 vs AQ-SGD fw2/bw4 and fw4/bw8, timed after a warm-up epoch) at each bandwidth and prints
# one table.
#
#   bench/aqsgd_throughput.sh [BUILD_DIR] [extra aqsgd_convergence flags...]
#   LAT=20ms BWS="1gbit 100mbit" bench/aqsgd_throughput.sh build --compute-ms 10
#
# Environment: BWS (default "10gbit 1gbit 500mbit 100mbit"), LAT (one-way latency, default
# 10ms), MPIRUN (default mpirun). As root, Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 and
# OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
set -eu

build=${1:-build}
[ $# -gt 0 ] && shift
bin=$build/bench/aqsgd_convergence
if [ ! -x "$bin" ]; then
  echo "aqsgd_throughput.sh: $bin not found; build the aqsgd_convergence target first" >&2
  exit 2
fi
bws=${BWS:-10gbit 1gbit 500mbit 100mbit}
lat=${LAT:-10ms}
mpirun=${MPIRUN:-mpirun}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for bw in $bws; do
  echo "# LH_SIM_BW=$bw LH_SIM_LAT=$lat" >>"$out"
  if ! "$mpirun" -np 2 --oversubscribe -x LH_SIM_BW="$bw" -x LH_SIM_LAT="$lat" "$bin" --throughput "$@" >>"$out"; then
    cat "$out" >&2
    echo "aqsgd_throughput.sh: the run at $bw failed" >&2
    exit 1
  fi
done

# The runs' headers once (the first run's), then one row per link and arm. A row of the bench:
# label (one or two words), examples/s, s/epoch, fwd B/msg, bwd B/msg, wait%, speedup.
awk '
  /^# aqsgd_convergence --throughput/ && !shown { print; shown = 1; next }
  /^# compute / && shown == 1 { sub(/; links: .*/, ""); print; shown = 2; next }
  /^# [0-9]+ timed epoch/ && shown == 2 { print; shown = 3; next }
  /^# LH_SIM_BW=/ { split($2, kv, "="); bw = kv[2]; next }
  /^  / {
    n = NF; label = $1; for (i = 2; i <= n - 6; i++) label = label " " $i
    rows[++count] = sprintf("%-9s %-17s %10s %9s %11s %11s %7s", bw, label, $(n - 5), $(n - 4), $(n - 3), $(n - 2), $(n - 1))
    rate[count] = $(n - 5); link[count] = bw; arm[count] = label
    if (label == "FP32") { fp32[bw] = $(n - 5); if (!first_bw) first_bw = bw }
  }
  END {
    printf("# latency '"$lat"' one way; speedup = examples/s over FP32 on the same link; vs %s = over FP32 on %s\n", first_bw, first_bw)
    printf("# %-9s %-17s %10s %9s %11s %11s %7s %8s %8s\n", "link", "arm", "examples/s", "s/epoch", "fwd B/msg",
           "bwd B/msg", "wait%", "speedup", "vs " first_bw)
    for (i = 1; i <= count; i++)
      printf("  %s %8.2f %8.2f\n", rows[i], rate[i] / fp32[link[i]], rate[i] / fp32[first_bw])
  }
' "$out"
