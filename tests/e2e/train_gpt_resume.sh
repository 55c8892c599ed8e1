#!/usr/bin/env bash
# train_gpt end to end, and --resume: a run that checkpoints at step 10 and goes on to 20, and a
# second run that resumes from that checkpoint, must print the same losses (the history's six
# decimals) for steps 11-20; and the loss must fall. Then a damaged model file, and one that
# says it was written with the other byte order, must each be refused by name.
#   usage: train_gpt_resume.sh MPIEXEC TRAIN_GPT LINKS WORKDIR
set -euo pipefail
mpiexec=$1 train_gpt=$2 links=$3 work=$4
rm -rf "$work" && mkdir -p "$work" && cd "$work"
export OPENBLAS_NUM_THREADS=1
flags=(--links "$links" --pp 2 --dp 2 --steps 20 --examples 512 --log-every 1 --eval-every 10 --channels 64
       --layers 2 --context 32 --micro-batch 4 --grad-codec int4 --aqsgd 2/4 --checkpoint-dir ck
       --checkpoint-every 10 --plot none)
"$mpiexec" -np 4 --oversubscribe -x OPENBLAS_NUM_THREADS -x LH_LINKS "$train_gpt" "${flags[@]}" --history a.csv |
  tee a.log
grep -Eq "^summary  20 steps this run: final loss=[0-9.]+, best val=[0-9.]+ at step (10|20)" a.log ||
  { echo "FAILED: no end-of-run summary" >&2; exit 1; }
"$mpiexec" -np 4 --oversubscribe -x OPENBLAS_NUM_THREADS -x LH_LINKS "$train_gpt" "${flags[@]}" --history b.csv \
  --resume
# Rows after step 10, without the wall-time column.
after() { awk -F, 'NR > 1 && $1 > 10 { print $1, $3, $4 }' "$1"; }
if ! diff <(after a.csv) <(after b.csv); then
  echo "FAILED: the resumed run differs from the run that never stopped" >&2
  exit 1
fi
first=$(awk -F, 'NR == 2 { print $3 }' a.csv) last=$(awk -F, 'END { print $3 }' a.csv)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.5) }' ||
  { echo "FAILED: the loss did not fall (from $first to $last)" >&2; exit 1; }
echo "resume: steps 11-20 identical ($(after b.csv | wc -l) rows); loss $first -> $last"

# Damaged checkpoints: one flipped byte in rank 0's parameters, then a swapped byte-order mark.
model=ck/step-000010/rank-0.model
refused() { # the message the resume must fail with
  local out
  if out=$("$mpiexec" -np 4 --oversubscribe -x OPENBLAS_NUM_THREADS -x LH_LINKS "$train_gpt" "${flags[@]}" \
             --history c.csv --resume 2>&1); then
    echo "FAILED: a resume from a damaged checkpoint succeeded" >&2
    exit 1
  fi
  grep -q "$1" <<<"$out" || { echo "FAILED: expected '$1' in:" >&2; echo "$out" >&2; exit 1; }
}
byte=$(od -An -tu1 -j100 -N1 "$model")
printf "\\$(printf %o $((255 - byte)))" | dd of="$model" bs=1 seek=100 conv=notrunc status=none
refused "rank-0.model is truncated or damaged"
printf '\001\002\003\004' | dd of="$model" bs=1 seek=8 conv=notrunc status=none
refused "rank-0.model was written on a host of the other byte order"
echo "refused: a damaged model file and one of the other byte order"
