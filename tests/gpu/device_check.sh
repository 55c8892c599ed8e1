#!/usr/bin/env bash
# One run on a machine with a GPU: configure and build the CUDA paths, run the gpu-labelled
# tests, run codec_perf, and print a short summary. Run from the repository root:
#
#   OUT=/some/dir bash tests/gpu/device_check.sh
#
# Everything it produces goes to $OUT (default ./device_check_out): the configure and build
# logs, one ctest log per phase and ctest's own LastTest log, the aqsgd_perf and codec_perf tables,
# nvidia-smi.
# Each step runs under `timeout`, inside an overall budget (DEVICE_CHECK_BUDGET_S, default 420 s)
# so that one hang cannot eat the device time; steps are ordered by what matters most: the new
# device-buffer tests first, then the other gpu tests, then the benchmark. Exit status: 0 when
# the build succeeded and no test failed, 1 otherwise. Runs as root (Open MPI is told it may).
set -u

OUT=${OUT:-$PWD/device_check_out}
BUILD=${BUILD:-build-gpu}
BUDGET=${DEVICE_CHECK_BUDGET_S:-420}
JOBS=${JOBS:-16}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

START=$SECONDS
STEPS=()  # "name: result" lines for the summary
note() { printf '[device_check %4ds] %s\n' $((SECONDS - START)) "$*" | tee -a "$OUT/summary.txt"; }

# Seconds a step may take: what it wants, capped by what is left of the budget less `reserve`
# (kept for the steps after it). Prints 0 when fewer than 15 seconds would be left.
allow() {
  local want=$1 reserve=${2:-0} left
  left=$((BUDGET - (SECONDS - START) - reserve))
  if ((left < 15)); then echo 0; elif ((want < left)); then echo "$want"; else echo "$left"; fi
}

# run NAME SECONDS LOG CMD...: runs CMD under timeout with its output in LOG; records the result.
run() {
  local name=$1 secs=$2 log=$3 rc
  shift 3
  if ((secs <= 0)); then
    note "$name: SKIPPED (out of time budget)"
    STEPS+=("$name: skipped (time budget)")
    return 99
  fi
  note "$name: start (limit ${secs}s)"
  timeout -k 10 "$secs" "$@" >"$log" 2>&1
  rc=$?
  if ((rc == 124 || rc == 137)); then
    note "$name: TIMED OUT after ${secs}s (log: $(basename "$log"))"
    STEPS+=("$name: timed out (${secs}s)")
  else
    note "$name: exit $rc (log: $(basename "$log"))"
    STEPS+=("$name: exit $rc")
  fi
  return $rc
}

: >"$OUT/summary.txt"
note "repo $(git rev-parse --short HEAD 2>/dev/null || echo '?') (+ working tree), budget ${BUDGET}s, out $OUT"

# ---- the device --------------------------------------------------------------------------------
nvidia-smi -L >"$OUT/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >>"$OUT/nvidia-smi.txt" 2>&1
note "GPU: $(head -1 "$OUT/nvidia-smi.txt")"
{ nvcc --version 2>/dev/null | tail -1; mpirun --version 2>/dev/null | head -1; cmake --version | head -1; } \
  >"$OUT/versions.txt" 2>&1

# ---- configure and build -----------------------------------------------------------------------
build_ok=0
if run configure "$(allow 120 300)" "$OUT/configure.log" \
    cmake -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLH_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90; then
  grep -E "LH_WITH_|CMAKE_CUDA_ARCHITECTURES" "$OUT/configure.log" | tee -a "$OUT/summary.txt"
  # Only what the gpu tests and the benchmark need; the whole tree if that fails (a renamed
  # target), with whatever time is left.
  targets=(test_gpu_gpt train_gpt test_gpu_aqsgd test_gpu_aqsgd_context test_gpu_codec_device test_gpu_allreduce test_gpu_codecs test_gpu_reduce test_gpu_transport
           aqsgd_perf codec_perf)
  if run build "$(allow 300 200)" "$OUT/build.log" cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"; then
    build_ok=1
  else
    tail -40 "$OUT/build.log"
    if run build-all "$(allow 240 150)" "$OUT/build-all.log" cmake --build "$BUILD" -j "$JOBS" -- -k; then
      build_ok=1
    else
      tail -40 "$OUT/build-all.log"
    fi
  fi
fi

# ---- tests -------------------------------------------------------------------------------------
NEW='^test_gpu_(gpt|aqsgd|aqsgd_context|codec_device|allreduce_np[0-9]+)$'
if ((build_ok)) || [ -d "$BUILD/tests/gpu" ]; then
  # Phase 1: the device-buffer codec and all-reduce tests (the reason for this run), verbose so
  # that their notes (a case the engine does not support on device buffers) reach the log.
  run "ctest gpu (new device-buffer tests)" "$(allow 240 120)" "$OUT/ctest_gpu_new.log" \
    ctest --test-dir "$BUILD" -L gpu -R "$NEW" -V --no-tests=error
  cp "$BUILD/Testing/Temporary/LastTest.log" "$OUT/ctest_gpu_new.LastTest.log" 2>/dev/null
  # Phase 2: the other gpu tests (kernels vs twins, reduce kernels, transport on device buffers).
  run "ctest gpu (other gpu tests)" "$(allow 300 75)" "$OUT/ctest_gpu_rest.log" \
    ctest --test-dir "$BUILD" -L gpu -E "$NEW" --output-on-failure
  cp "$BUILD/Testing/Temporary/LastTest.log" "$OUT/ctest_gpu_rest.LastTest.log" 2>/dev/null
fi

# ---- benchmark ---------------------------------------------------------------------------------
if [ -x "$BUILD/bench/aqsgd_perf" ]; then
  run aqsgd_perf "$(allow 120 40)" "$OUT/aqsgd_perf.txt" "$BUILD/bench/aqsgd_perf"
fi
if [ -x "$BUILD/bench/codec_perf" ]; then
  run codec_perf "$(allow 60)" "$OUT/codec_perf.txt" "$BUILD/bench/codec_perf" --size 16M --iters 5
fi

# train_gpt on the GPU against the CPU: 2 ranks (2 stages) share the device; the losses of the
# two runs should agree to about 1e-3 (cuBLAS and OpenBLAS sum in other orders).
if [ -x "$BUILD/examples/train_gpt" ]; then
  printf '%s\n' "# longhaul links v1" "devices 2" "latency_ms" "0 1" "1 0" "bandwidth_gbps" "0 10" "10 0" \
    >"$OUT/two.links"
  tg=(mpirun -np 2 --oversubscribe -x OPENBLAS_NUM_THREADS=1 "$BUILD/examples/train_gpt" --pp 2 --dp 1
      --links "$OUT/two.links" --steps 20 --log-every 5 --eval-every 10 --plot none --checkpoint-every 0
      --examples 64 --micro-batches 2 --data README.md)
  run "train_gpt --device cuda" "$(allow 120 30)" "$OUT/train_gpt_cuda.txt" "${tg[@]}" --device cuda \
    --history "$OUT/train_gpt_cuda.csv"
  run "train_gpt --device cpu" "$(allow 120 30)" "$OUT/train_gpt_cpu.txt" "${tg[@]}" --device cpu \
    --history "$OUT/train_gpt_cpu.csv"
fi

# ---- summary -----------------------------------------------------------------------------------
count() { cat "$@" 2>/dev/null | grep -cE "$PATTERN" || true; }
logs=("$OUT/ctest_gpu_new.log" "$OUT/ctest_gpu_rest.log")
PATTERN='Test +#[0-9]+: .* Passed'; passed=$(count "${logs[@]}")
PATTERN='Test +#[0-9]+: .*\*\*\*Skipped'; skipped=$(count "${logs[@]}")
PATTERN='Test +#[0-9]+: .*(\*\*\*(Failed|Timeout|Exception)|Not Run)'; failed=$(count "${logs[@]}")
{
  echo
  echo "================================ device_check summary ================================"
  echo "GPU:        $(head -1 "$OUT/nvidia-smi.txt")"
  echo "build:      $([ "$build_ok" = 1 ] && echo ok || echo FAILED)"
  for s in "${STEPS[@]}"; do echo "step:       $s"; done
  echo "gpu tests:  $passed passed, $failed failed, $skipped skipped"
  cat "${logs[@]}" 2>/dev/null | grep -E 'Test +#[0-9]+: ' | sed 's/^ *[0-9]*\/[0-9]* /  /'
  cat "${logs[@]}" 2>/dev/null | grep -E '^\[   NOTE   \]' | sort -u
  if [ -s "$OUT/aqsgd_perf.txt" ]; then
    echo "---- aqsgd_perf ----"
    grep -vE '^\s*$' "$OUT/aqsgd_perf.txt"
  fi
  if [ -s "$OUT/train_gpt_cuda.csv" ] && [ -s "$OUT/train_gpt_cpu.csv" ]; then
    echo "---- train_gpt losses: step, cuda, cpu ----"
    paste -d, "$OUT/train_gpt_cuda.csv" "$OUT/train_gpt_cpu.csv" | awk -F, 'NR > 1 { print "  " $1, $3, $7 }'
  fi
  if [ -s "$OUT/codec_perf.txt" ]; then
    echo "---- codec_perf (16 MiB, 5 iterations) ----"
    grep -vE '^\s*$' "$OUT/codec_perf.txt"
  fi
  echo "elapsed:    $((SECONDS - START))s of ${BUDGET}s; files in $OUT"
  echo "======================================================================================"
} | tee -a "$OUT/summary.txt"

((build_ok && failed == 0)) && exit 0
exit 1
