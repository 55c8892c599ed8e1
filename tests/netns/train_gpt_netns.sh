#!/usr/bin/env bash
# train_gpt_netns.sh - train_gpt on real shaped links (root only).
#
#   train_gpt_netns.sh TRAIN_GPT TRAIN_GPT_TESTBED_SH WORKDIR
#
# Runs examples/wan/train_gpt_testbed.sh (4 namespace hosts, uplinks 200/100/50/100 Mbit/s,
# --pp 2 --dp 2, 10 steps, seed 1), then the same training with the same flags on this host
# over simulated links (its --simulated: LH_LINKS = the testbed's link file). Checks:
#   - the testbed run trained over real links and the loss fell (last < first - MARGIN);
#   - the two histories' step, loss and val_loss columns are identical (the network changes
#     only the time, never the math);
#   - no namespace, interface or bridge of the testbed is left behind.
# Exit: 0 pass, 1 fail, 77 skipped (not root, or namespaces/veth/bridge/tbf unavailable).
# Uses LH_TESTBED_PREFIX / LH_TESTBED_SUBNET from the environment (ctest sets its own).
set -euo pipefail

SKIP=77
MARGIN=0.3
STEPS=10
PROG=${0##*/}

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
note() { printf '[%s] %s\n' "$PROG" "$*" >&2; }

(($# == 3)) || { echo "usage: $PROG TRAIN_GPT TRAIN_GPT_TESTBED_SH WORKDIR" >&2; exit 2; }
train_gpt=$1 script=$2 work=$3
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: needs root to create network namespaces"
  exit "$SKIP"
fi
[[ -x $train_gpt ]] || fail "train_gpt '$train_gpt' is not an executable file"
[[ -r $script ]] || fail "'$script' is not readable"
export LH_TESTBED_PREFIX=${LH_TESTBED_PREFIX:-lhtgpt}
export LH_TESTBED_SUBNET=${LH_TESTBED_SUBNET:-10.77.4}
# The runs must not be simulated unless asked: the script sets LH_LINKS for --simulated only.
unset LH_LINKS LH_SIM_BW LH_SIM_LAT

rm -rf "$work"
mkdir -p "$work"

# Each run in the background (run_bg.sh), so that INT/TERM reach it at once; the script's own
# EXIT trap then tears the testbed down.
# shellcheck source=run_bg.sh
. "$(dirname "${BASH_SOURCE[0]}")/run_bg.sh"

common=(--train-gpt "$train_gpt" --out "$work" --steps "$STEPS" --seed 1)

note "train_gpt on the namespace testbed (prefix $LH_TESTBED_PREFIX, subnet $LH_TESTBED_SUBNET.0/24)"
rc=0
run_bg bash "$script" "${common[@]}" || rc=$?
if ((rc == SKIP)); then
  echo "SKIP: cannot create network namespaces/veth/bridge/tbf here"
  exit "$SKIP"
fi
((rc == 0)) || fail "train_gpt_testbed.sh exited $rc"

note "the same training on this host over simulated links"
rc=0
run_bg bash "$script" "${common[@]}" --simulated || rc=$?
((rc == 0)) || fail "train_gpt_testbed.sh --simulated exited $rc"

# ---- checks ----------------------------------------------------------------------------------
real=$work/testbed.csv sim=$work/simulated.csv
grep -q '^train_gpt .*, real links$' "$work/testbed.log" ||
  fail "the testbed run's banner does not say 'real links' (was LH_LINKS or LH_SIM_* set?)"
grep -q '^train_gpt .*, links from .*testbed\.links$' "$work/simulated.log" ||
  fail "the --simulated run's banner does not say its links were simulated from testbed.links"

rows=$(awk -F, 'NR > 1' "$real" | wc -l)
((rows == STEPS)) || fail "$real has $rows rows, expected $STEPS (--log-every 1)"
first=$(awk -F, 'NR == 2 { print $3 }' "$real")
last=$(awk -F, 'END { print $3 }' "$real")
awk -v a="$first" -v b="$last" -v m="$MARGIN" 'BEGIN { exit !(a == a + 0 && b == b + 0 && b < a - m) }' ||
  fail "the loss did not fall by more than $MARGIN over $STEPS steps on the testbed (from $first to $last)"

# step, loss, val_loss: everything but the wall time.
cols() { awk -F, 'NR > 1 { print $1, $3, $4 }' "$1"; }
if ! diff <(cols "$real") <(cols "$sim"); then
  echo "plans (testbed, then simulated):" >&2
  grep -h 'stage [0-9]:' "$work/testbed.log" "$work/simulated.log" >&2 || true
  fail "the testbed run's losses differ from the simulated run's with the same seed and flags"
fi

# Nothing of the testbed left behind.
left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${LH_TESTBED_PREFIX}([0-9]+|ctl)\$" || true)
[[ -z $left ]] || fail "namespaces left behind: $left"
left=$(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}' |
  grep -E "^${LH_TESTBED_PREFIX}([0-9]+|c|br)\$" || true)
[[ -z $left ]] || fail "interfaces left behind: $left"

echo "PASS: train_gpt on 4 shaped hosts: loss $first -> $last in $STEPS steps; step, loss and val_loss identical to the simulated run ($rows rows)"
