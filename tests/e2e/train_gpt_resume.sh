#!/usr/bin/env bash
# train_gpt end to end, and --resume: a run that checkpoints at step 10 and goes on to 20, and a
# second run that resumes from that checkpoint, must print the same losses (the history's six
# decimals) for steps 11-20; and the loss must fall.
#   usage: train_gpt_resume.sh MPIEXEC TRAIN_GPT LINKS WORKDIR
set -euo pipefail
mpiexec=$1 train_gpt=$2 links=$3 work=$4
rm -rf "$work" && mkdir -p "$work" && cd "$work"
export OPENBLAS_NUM_THREADS=1
flags=(--links "$links" --pp 2 --dp 2 --steps 20 --examples 512 --log-every 5 --eval-every 10 --channels 64
       --layers 2 --context 32 --micro-batch 4 --grad-codec int4 --aqsgd 2/4 --checkpoint-dir ck
       --checkpoint-every 10 --plot none)
"$mpiexec" -np 4 --oversubscribe -x OPENBLAS_NUM_THREADS -x LH_LINKS "$train_gpt" "${flags[@]}" --history a.csv
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
