#!/usr/bin/env bash
# train_gpt under three placements of the same 2 stages x 3 replicas on 6 ranks (given as plan
# files): the step, loss and val_loss columns of the three histories must be identical. Where a
# stage or a replica runs must change only the time, never the math -- with three replicas the
# order of a float sum over ranks would show, so this also covers the all-reduce (int4 codec)
# and the progress line's own sum. And the loss must fall.
#   usage: train_gpt_placement.sh MPIEXEC TRAIN_GPT WORKDIR
set -euo pipefail
mpiexec=$1 train_gpt=$2 work=$3
rm -rf "$work" && mkdir -p "$work" && cd "$work"
export OPENBLAS_NUM_THREADS=1
unset LH_LINKS LH_SIM_BW LH_SIM_LAT

# plan NAME D0 D1 D2 D3 D4 D5: stage 0's replicas 0-2 on devices D0-D2, stage 1's on D3-D5.
plan() {
  local name=$1 k=0 sep=""
  shift
  {
    printf '{"format": "longhaul-plan", "version": 1, "devices": 6, "pp": 2, "dp": 3, "assignment": ['
    for stage in 0 1; do
      for replica in 0 1 2; do
        printf '%s{"device": %d, "stage": %d, "replica": %d}' "$sep" "${@:k+1:1}" "$stage" "$replica"
        sep=", " k=$((k + 1))
      done
    done
    printf ']}\n'
  } >"$name.json"
}
plan in-order 0 1 2 3 4 5
plan reversed 5 3 1 0 4 2
plan mixed 2 0 4 5 1 3

flags=(--pp 2 --dp 3 --steps 8 --layers 2 --channels 32 --heads 2 --context 32 --examples 384 --log-every 1
       --eval-every 4 --grad-codec int4 --aqsgd 2/4 --checkpoint-every 0 --plot none --quiet)
for name in in-order reversed mixed; do
  "$mpiexec" -np 6 --oversubscribe -x OPENBLAS_NUM_THREADS "$train_gpt" "${flags[@]}" --plan "$name.json" \
    --history "$name.csv" >"$name.log" 2>&1 || { cat "$name.log" >&2; echo "FAILED: the run with plan $name" >&2; exit 1; }
done
cols() { awk -F, 'NR > 1 { print $1, $3, $4 }' "$1"; }
for name in reversed mixed; do
  if ! diff <(cols in-order.csv) <(cols "$name.csv"); then
    echo "FAILED: plan $name gives other losses than plan in-order" >&2
    exit 1
  fi
done
first=$(awk -F, 'NR == 2 { print $3 }' in-order.csv) last=$(awk -F, 'END { print $3 }' in-order.csv)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.05) }' ||
  { echo "FAILED: the loss did not fall (from $first to $last)" >&2; exit 1; }
echo "placement: 3 plans, identical histories ($(cols in-order.csv | wc -l) rows); loss $first -> $last"
