#!/usr/bin/env bash
# train_gpt_testbed.sh - train_gpt across 4 "hosts" joined by real, bandwidth-shaped links.
#
# Brings up the namespace testbed (testbed.sh, next to this script) with 4 hosts whose uplinks
# have different tbf rates, writes a link file describing those rates for the scheduler, runs
# a few steps of train_gpt with one rank per host (2 pipeline stages x 2 replicas), prints the
# loss history and tears the testbed down on the way out (also after Ctrl-C or a failure).
# With --simulated it runs the same training, same flags, on this host alone over simulated
# links (LH_LINKS = the same link file) instead: the losses must come out identical, since the
# network changes only the time.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TESTBED=$HERE/testbed.sh
HOSTS=4 # --pp 2 --dp 2: one rank per host
EXIT_CANNOT=77

# The testbed's own namespace prefix and subnet, so that a testbed someone has up with the
# defaults (lh-host, 10.77.0) is left alone; LH_TESTBED_PREFIX / LH_TESTBED_SUBNET override.
export LH_TESTBED_PREFIX=${LH_TESTBED_PREFIX:-lhgpt}
export LH_TESTBED_SUBNET=${LH_TESTBED_SUBNET:-10.77.3}

usage() {
  cat <<EOF
Usage: $PROG [OPTIONS] [-- EXTRA-TRAIN_GPT-ARGS...]

Train a small GPT across $HOSTS hosts on real shaped links: network namespaces on a bridge, each
host's uplink capped with tc tbf (root only; see testbed.sh --help).  One rank per host,
--pp 2 --dp 2; the scheduler places the ranks from a link file written for the testbed's
rates (latency 0.1 ms: there is no kernel delay here).  Prints the progress lines and the
history, then tears the testbed down.

Options:
  --rates R,R,R,R  uplink of hosts 0..3 as tc rates, the last one repeating
                   (default 200mbit,100mbit,50mbit,100mbit)
  --steps N        optimizer steps (default 10)
  --seed S         train_gpt --seed (default 1)
  --out DIR        where the link file, history and log go (default ./train_gpt_testbed.out);
                   files: testbed.links, NAME.csv, NAME.log (NAME: testbed or simulated)
  --train-gpt PATH the program (default: build/examples/train_gpt under $ROOT)
  --simulated      run the same training on this host only, over simulated links
                   (LH_LINKS=DIR/testbed.links, plain mpirun -np $HOSTS); no root needed
  -h, --help       this text
Words after '--' go to train_gpt after the default flags (a later flag wins).

train_gpt's flags: --links DIR/testbed.links --pp 2 --dp 2 --layers 2 --channels 64
--context 32 --micro-batch 4 --micro-batches 4 --examples 256 --steps N --seed S
--log-every 1 --eval-every 0 --checkpoint-every 0 --plot none, and OPENBLAS_NUM_THREADS=1.
LH_LINKS, LH_SIM_BW and LH_SIM_LAT are not passed to the testbed run: its links are real.
Namespaces: LH_TESTBED_PREFIX (default lhgpt) and LH_TESTBED_SUBNET (default 10.77.3); an
earlier testbed with that prefix, e.g. from a killed run, is removed first.

Exit status: 0 trained, 1 failure, 2 bad arguments, $EXIT_CANNOT not root or network namespaces
unavailable here (the testbed run only).
EOF
}

say() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
bad() { printf '%s: %s (see %s --help)\n' "$PROG" "$*" "$PROG" >&2; exit 2; }

rates_arg=200mbit,100mbit,50mbit,100mbit steps=10 seed=1 out=$PWD/train_gpt_testbed.out
train_gpt=$ROOT/build/examples/train_gpt train_gpt_set=0 simulated=0
extra=()
need_val() { (($2 >= 2)) || bad "option $1 needs a value"; }
while (($# > 0)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --rates) need_val "$1" $#; rates_arg=$2; shift 2 ;;
    --rates=*) rates_arg=${1#*=}; shift ;;
    --steps) need_val "$1" $#; steps=$2; shift 2 ;;
    --steps=*) steps=${1#*=}; shift ;;
    --seed) need_val "$1" $#; seed=$2; shift 2 ;;
    --seed=*) seed=${1#*=}; shift ;;
    --out) need_val "$1" $#; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --train-gpt) need_val "$1" $#; train_gpt=$2; train_gpt_set=1; shift 2 ;;
    --train-gpt=*) train_gpt=${1#*=}; train_gpt_set=1; shift ;;
    --simulated) simulated=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) bad "unknown option '$1'" ;;
  esac
done

IFS=, read -r -a rates <<<"$rates_arg"
((${#rates[@]} > 0)) || bad "--rates needs at least one rate"
((${#rates[@]} <= HOSTS)) || bad "--rates has ${#rates[@]} rates for $HOSTS hosts"
for r in "${rates[@]}"; do
  [[ $r =~ ^[0-9]+(\.[0-9]+)?[kKmMgGtT]?(bit|bps)$ ]] || bad "rate '$r' is not a tc rate such as 100mbit"
done
while ((${#rates[@]} < HOSTS)); do rates+=("${rates[-1]}"); done
if ! [[ $steps =~ ^[0-9]{1,9}$ ]] || ((10#$steps < 1)); then bad "--steps '$steps' must be a positive integer"; fi
[[ $seed =~ ^[0-9]+$ ]] || bad "--seed '$seed' must be a non-negative integer"
[[ -n $out ]] || bad "--out needs a directory"

# rate (tc syntax) -> Gbit/s for the link file. tc: k/m/g/t are powers of 1000, *bps is bytes/s.
rate_gbps() {
  awk -v r="$1" 'BEGIN {
    u = tolower(r); sub(/^[0-9.]+/, "", u); v = r + 0; m = 1
    if (u ~ /^k/) m = 1e3; else if (u ~ /^m/) m = 1e6; else if (u ~ /^g/) m = 1e9; else if (u ~ /^t/) m = 1e12
    if (u ~ /bps$/) m *= 8
    printf "%.9g\n", v * m / 1e9 }'
}

# The testbed as a link file: a transfer i -> j leaves through host i's capped eth0, so its
# bandwidth is host i's rate (row i), and that cap is shared by everything i sends
# (uplink_gbps). TCP goodput is a few percent below the tbf rate (headers count); the
# scheduler only compares links, so the rates are written as configured.
write_links() { # file
  local f=$1 i j
  local -a g=()
  for ((i = 0; i < HOSTS; i++)); do g+=("$(rate_gbps "${rates[$i]}")"); done
  {
    echo "# longhaul links v1"
    echo "# The namespace testbed of $PROG: $HOSTS hosts, uplinks ${rates[*]} (tc tbf)."
    echo "# Latency 0.1 ms: the kernel adds no delay here (no netem), only the bridge's own."
    echo "devices $HOSTS"
    for ((i = 0; i < HOSTS; i++)); do echo "device $i site ${LH_TESTBED_PREFIX}$i speed 1.0"; done
    echo "latency_ms"
    for ((i = 0; i < HOSTS; i++)); do
      for ((j = 0; j < HOSTS; j++)); do printf '%s ' "$([[ $i == "$j" ]] && echo 0 || echo 0.1)"; done
      echo
    done
    echo "bandwidth_gbps"
    for ((i = 0; i < HOSTS; i++)); do
      for ((j = 0; j < HOSTS; j++)); do printf '%s ' "$([[ $i == "$j" ]] && echo 0 || echo "${g[$i]}")"; done
      echo
    done
    echo "uplink_gbps"
    echo "${g[*]}"
  } >"$f"
}

mkdir -p "$out"
out=$(cd "$out" && pwd)
links=$out/testbed.links
name=$([[ $simulated == 1 ]] && echo simulated || echo testbed)
flags=(--links "$links" --pp 2 --dp 2 --layers 2 --channels 64 --context 32 --micro-batch 4
       --micro-batches 4 --examples 256 --steps "$((10#$steps))" --seed "$seed" --log-every 1
       --eval-every 0 --checkpoint-every 0 --plot none --checkpoint-dir "$out/$name.ckpt"
       --history "$out/$name.csv" --name "$name" "${extra[@]+"${extra[@]}"}")

if [[ ! -x $train_gpt ]]; then
  if ((train_gpt_set == 0)) && command -v train_gpt >/dev/null 2>&1; then
    train_gpt=$(command -v train_gpt)
  else
    die "train_gpt '$train_gpt' is not an executable file (build it: cmake --build build --target train_gpt, or pass --train-gpt PATH)"
  fi
fi
train_gpt=$(cd "$(dirname "$train_gpt")" && pwd)/$(basename "$train_gpt")
command -v mpirun >/dev/null 2>&1 || die "mpirun is not on PATH (Open MPI)"
if ((!simulated)); then
  [[ $(id -u) -eq 0 ]] || { echo "$PROG: must run as root (the testbed creates network namespaces)" >&2; exit "$EXIT_CANNOT"; }
  [[ -r $TESTBED ]] || die "testbed script '$TESTBED' is missing"
fi
tb() { bash "$TESTBED" "$@"; }

write_links "$links"
rm -rf "$out/$name.ckpt" "$out/$name.csv"
export OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# ---- teardown: on every exit, and at once on a signal ------------------------------------------
brought_up=0 CHILD=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if ((brought_up)); then
    say "tearing the testbed down"
    tb down >/dev/null 2>&1 || say "testbed.sh down failed; run: LH_TESTBED_PREFIX=$LH_TESTBED_PREFIX $TESTBED down"
  fi
  exit "$rc"
}
# shellcheck disable=SC2317  # called from the signal traps
on_signal() {
  [[ -z $CHILD ]] || kill -TERM "$CHILD" 2>/dev/null || true
  [[ -z $CHILD ]] || wait "$CHILD" 2>/dev/null || true
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

# Runs "$@" in the background (so a signal acts at once), its output on the terminal and in
# LOG; returns its status.
run_logged() { # LOG command...
  local log=$1 rc=0
  shift
  : >"$log"
  "$@" >>"$log" 2>&1 &
  CHILD=$!
  tail -n +1 -f --pid="$CHILD" "$log" &
  local tailer=$!
  wait "$CHILD" || rc=$?
  CHILD=
  wait "$tailer" 2>/dev/null || true
  return "$rc"
}

rc=0
if ((simulated)); then
  say "simulated links on this host: LH_LINKS=$links, uplinks ${rates[*]}"
  LH_LINKS=$links run_logged "$out/$name.log" mpirun -np "$HOSTS" --oversubscribe -x OPENBLAS_NUM_THREADS -x LH_LINKS \
    "$train_gpt" "${flags[@]}" || rc=$?
else
  # A testbed left by a killed run: 'up' replaces one with the same prefix, but say so.
  if tb status >/dev/null 2>&1; then say "a testbed with prefix $LH_TESTBED_PREFIX is up (left over?): replacing it"; fi
  brought_up=1 # from here on, tear down whatever part of it exists
  up_rc=0
  tb up "$HOSTS" "${rates[@]}" >/dev/null || up_rc=$?
  if ((up_rc == EXIT_CANNOT)); then
    echo "$PROG: cannot create network namespaces, veth pairs, a bridge or tbf here" >&2
    exit "$EXIT_CANNOT"
  fi
  ((up_rc == 0)) || die "testbed.sh up $HOSTS ${rates[*]} exited $up_rc"
  tb status || true
  # The links are real: no simulation on top of them.
  unset LH_LINKS LH_SIM_BW LH_SIM_LAT
  say "train_gpt on $HOSTS hosts, uplinks ${rates[*]}"
  run_logged "$out/$name.log" bash "$TESTBED" run -x OPENBLAS_NUM_THREADS -- "$train_gpt" "${flags[@]}" || rc=$?
fi
((rc == 0)) || die "train_gpt exited $rc (log: $out/$name.log)"
[[ -s $out/$name.csv ]] || die "train_gpt wrote no history ($out/$name.csv)"

echo
echo "== history ($out/$name.csv): $name, uplinks ${rates[*]}"
awk -F, 'NR == 1 { printf "%6s %10s %10s %10s\n", $1, $2, $3, $4; next }
         { printf "%6s %10s %10s %10s\n", $1, $2, $3, ($4 == "" ? "-" : $4) }' "$out/$name.csv"
