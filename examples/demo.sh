#!/usr/bin/env bash
# The main job: install what is missing, build, and train a small GPT on 4 simulated hosts over
# a slow link class, twice: uncompressed, then with AQ-SGD and int8 gradients. Prints both runs
# side by side (time to the same validation loss, and the speed-up) and leaves a plot.
#
#   examples/demo.sh            the full comparison (under 10 minutes on 2 cores)
#   examples/demo.sh --quick    a short smoke run of the same (about 2 minutes)
#
# The network (examples/links/demo4.links): hosts 0, 1 in one site and 2, 3 in another; 1 Gbit/s
# 1 ms inside a site, 25 Mbit/s 50 ms between them. Longhaul simulates those links (LH_LINKS)
# and its scheduler places 2 pipeline stages x 2 data-parallel replicas on them for each run.
# Output goes to demo-output/ (logs, loss histories as CSV, demo.png).
# Settings: DEMO_LINKS (a 4-device link file), DEMO_AQSGD (default 4/8), DEMO_GRAD (default
# int8), DEMO_STEPS (default 160).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
steps=${DEMO_STEPS:-160} eval_every=16
links="${DEMO_LINKS:-$root/examples/links/demo4.links}"
compressed=(--aqsgd "${DEMO_AQSGD:-4/8}" --grad-codec "${DEMO_GRAD:-int8}")
for arg in "$@"; do
  case "$arg" in
    --quick) steps=32 eval_every=8 ;;
    --help|-h) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option '$arg'; see examples/demo.sh --help." >&2; exit 2 ;;
  esac
done

# shellcheck source=../cmake/debian-deps.sh
. "$root/cmake/debian-deps.sh"
lh_install_deps

# A CPU build of its own (the job runs on CPUs; a CUDA build of the library takes longer).
build="$root/build-demo"
echo "== building Longhaul (CPU) in $build"
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLH_WITH_CUDA=OFF -DLH_WITH_NCCL=OFF \
  -DLH_BUILD_TESTS=OFF >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target train_gpt >"$build/build.log" 2>&1 ||
  { tail -40 "$build/build.log"; exit 1; }

out="$root/demo-output"
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 LH_LINKS="$links"
common=(--links "$links" --pp 2 --dp 2 --layers 2 --channels 128 --heads 4 --context 128
        --micro-batches 4 --micro-batch 8 --examples 2048 --steps "$steps" --schedule gpipe
        --eval-every "$eval_every" --val-examples 64 --log-every 8 --checkpoint-every 0)

train() { # name, then its flags
  local name=$1
  shift
  echo
  echo "== training: $name"
  mpirun -np 4 --oversubscribe -x LH_LINKS -x OPENBLAS_NUM_THREADS "$build/examples/train_gpt" "${common[@]}" \
    --name "$name" --history "$out/$name.csv" --plot "$out/$name.png" --checkpoint-dir "$out/$name.ckpt" "$@" \
    2>&1 | tee "$out/$name.log"
}
train uncompressed --aqsgd off --grad-codec none
train compressed "${compressed[@]}"

# Side by side: the time each run first reached the validation loss both runs reach.
echo
echo "== uncompressed vs AQ-SGD ${compressed[1]} + ${compressed[3]} gradients on 4 hosts ($(basename "$links"))"
awk -F, '
  FNR == 1 { run = (FILENAME ~ /uncompressed/) ? 1 : 2; next }
  { steps[run] = $1; wall[run] = $2; train[run] = $3
    if ($4 != "") { n[run]++; vt[run, n[run]] = $2; vl[run, n[run]] = $4
                    if (!(run in best) || $4 < best[run]) best[run] = $4 } }
  END {
    target = best[1] > best[2] ? best[1] : best[2]   # the loss both runs reach
    for (r = 1; r <= 2; r++)
      for (k = 1; k <= n[r]; k++) if (vl[r, k] <= target) { reach[r] = vt[r, k]; break }
    printf "  %-14s %8s %10s %10s %9s %22s\n", "run", "steps", "train", "best val", "s/step",
           sprintf("time to val <= %.3f", target)
    split("uncompressed compressed", name, " ")
    for (r = 1; r <= 2; r++)
      printf "  %-14s %8d %10.4f %10.4f %9.3f %20.1f s\n", name[r], steps[r], train[r], best[r],
             wall[r] / steps[r], reach[r]
    printf "  speed-up to the same validation loss: %.2fx; per step: %.2fx\n", reach[1] / reach[2],
           (wall[1] / steps[1]) / (wall[2] / steps[2])
  }' "$out/uncompressed.csv" "$out/compressed.csv" | tee "$out/summary.txt"

if command -v gnuplot >/dev/null 2>&1; then
  gnuplot <<EOF
set terminal pngcairo size 1000,550 noenhanced
set output '$out/demo.png'
set datafile separator ','
set title 'train_gpt on 4 simulated hosts ($(basename "$links"))'
set xlabel 'wall time (s)'
set ylabel 'loss (nats per byte)'
plot '$out/uncompressed.csv' using 2:3 with lines lw 2 lc rgb '#c0392b' title 'uncompressed: training', \
     '' using 2:(\$4 > 0 ? \$4 : 1/0) with linespoints pt 7 lc rgb '#c0392b' title 'uncompressed: validation', \
     '$out/compressed.csv' using 2:3 with lines lw 2 lc rgb '#2471a3' title 'AQ-SGD ${compressed[1]} + ${compressed[3]}: training', \
     '' using 2:(\$4 > 0 ? \$4 : 1/0) with linespoints pt 7 lc rgb '#2471a3' title 'AQ-SGD ${compressed[1]} + ${compressed[3]}: validation'
EOF
  echo "  plot: $out/demo.png"
fi
echo
echo "Done. Next: tests/run.sh runs the test suite; README.md explains each part."
