#!/usr/bin/env bash
# compare.sh - our ring all-reduce against Open MPI's MPI_Allreduce on real shaped links.
#
# Brings the namespace testbed up (testbed.sh, next to this script) when it is not up, runs
# allreduce_perf twice across it (--algo ring, then --algo mpi), then once per --codec asked
# for (the compressed all-reduce, e.g. int8 and top1%), prints every table and a side-by-side
# summary.  Tears the testbed down at the end only if it brought it up.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TESTBED=$HERE/testbed.sh

usage() {
  cat <<EOF
Usage: $PROG [OPTIONS] [-- EXTRA-BENCHMARK-ARGS...]

Run allreduce_perf with --algo ring and with --algo mpi on the namespace testbed (root only)
and compare the times; with --codec, also the compressed all-reduce against both.

Options:
  --hosts N        hosts (ranks) when the testbed has to be brought up (default 4)
  --rate R[,R...]  uplink rate per host as a tc rate, the last one repeating (default
                   100mbit); e.g. --rate 100mbit,100mbit,400mbit
  --codec C[,C..]  also run allreduce_perf --codec C (any of its codecs or presets: int8,
                   top1%, bf16, ...; repeatable) and compare it with mpi and ring
  --bench PATH     the benchmark (default: build/bench/allreduce_perf under the repository
                   root, $ROOT)
  --keep           leave the testbed up at the end (only matters when $PROG brought it up)
  -b SIZE          smallest size (default 16M)
  -e SIZE          largest size (default 64M)
  -f FACTOR        size multiplication factor (default 2)
  -n ITERS         timed iterations per size (default 2)
  -w ITERS         warm-up iterations per size (default 1)
  -h, --help       this text
Words after '--' go to both benchmark runs unchanged.

If a testbed is already up (same LH_TESTBED_PREFIX) it is used as it is; an explicit --hosts
or --rate that disagrees with it is an error (run 'testbed.sh down' first).  LH_* variables
(e.g. LH_SIM_LAT=50ms to add simulated latency, which the kernel cannot do here) reach every
rank.  The summary's ratio is mpi time / ring time (above 1: the ring is faster); 'ideal' is
the bandwidth-only ring time 2(n-1)/n * size / slowest uplink rate.  Each --codec C adds the
columns C(us), mpi/C and ring/C: the speed-up of the compressed all-reduce (through the
reducer, error feedback on) over MPI_Allreduce and over the uncompressed ring.

Exit status: 0 both runs gave rows, 1 a run failed or printed no rows, 2 bad arguments,
77 not root or no network namespaces here.
EOF
}

say() { printf '[compare] %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
bad() { printf '%s: %s (see %s --help)\n' "$PROG" "$*" "$PROG" >&2; exit 2; }

hosts=4 rate=100mbit hosts_set=0 rate_set=0 keep=0
bench=$ROOT/build/bench/allreduce_perf bench_set=0
minb=16M maxb=64M factor=2 iters=2 warmup=1
extra=() codecs=()

need_val() { (($2 >= 2)) || bad "option $1 needs a value"; }
while (($# > 0)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --hosts) need_val "$1" $#; hosts=$2; hosts_set=1; shift 2 ;;
    --hosts=*) hosts=${1#*=}; hosts_set=1; shift ;;
    --rate) need_val "$1" $#; rate=$2; rate_set=1; shift 2 ;;
    --rate=*) rate=${1#*=}; rate_set=1; shift ;;
    --codec) need_val "$1" $#; IFS=, read -r -a more <<<"$2"; codecs+=("${more[@]}"); shift 2 ;;
    --codec=*) IFS=, read -r -a more <<<"${1#*=}"; codecs+=("${more[@]}"); shift ;;
    --bench) need_val "$1" $#; bench=$2; bench_set=1; shift 2 ;;
    --bench=*) bench=${1#*=}; bench_set=1; shift ;;
    --keep) keep=1; shift ;;
    -b) need_val "$1" $#; minb=$2; shift 2 ;;
    -e) need_val "$1" $#; maxb=$2; shift 2 ;;
    -f) need_val "$1" $#; factor=$2; shift 2 ;;
    -n) need_val "$1" $#; iters=$2; shift 2 ;;
    -w) need_val "$1" $#; warmup=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) bad "unknown option '$1'" ;;
  esac
done

if ! [[ $hosts =~ ^[0-9]{1,3}$ ]] || ((10#$hosts < 2)); then
  bad "--hosts '$hosts' must be an integer of at least 2"
fi
hosts=$((10#$hosts))
IFS=, read -r -a rates <<<"$rate"
((${#rates[@]} > 0)) || bad "--rate needs at least one rate"
for r in "${rates[@]}"; do
  [[ $r =~ ^[0-9]+(\.[0-9]+)?[kKmMgGtT]?(bit|bps)$ ]] || bad "rate '$r' is not a tc rate such as 100mbit"
done
for v in "$minb" "$maxb"; do
  [[ $v =~ ^[0-9]+[kKmMgG]?$ ]] || bad "size '$v' must be a number with an optional K, M or G suffix"
done
for v in "$factor" "$iters" "$warmup"; do
  [[ $v =~ ^[0-9]+$ ]] || bad "'$v' must be a non-negative integer"
done
for c in "${codecs[@]+"${codecs[@]}"}"; do
  [[ $c =~ ^[A-Za-z0-9.%_-]+$ ]] || bad "codec '$c' is not a codec name such as int8 or top1%"
done

if [[ ! -x $bench ]]; then
  if ((bench_set == 0)) && command -v allreduce_perf >/dev/null 2>&1; then
    bench=$(command -v allreduce_perf)
  else
    die "benchmark '$bench' is not an executable file (build it, or pass --bench PATH)"
  fi
fi
bench=$(cd "$(dirname "$bench")" && pwd)/$(basename "$bench")
[[ -r $TESTBED ]] || die "testbed script '$TESTBED' is missing"
tb() { bash "$TESTBED" "$@"; }
[[ $(id -u) -eq 0 ]] || { echo "$PROG: must run as root (the testbed creates network namespaces)" >&2; exit 77; }

# rate string -> bits/s (tc: k/m/g/t are powers of 1000; *bps are bytes/s)
rate_bits() {
  awk -v r="$1" 'BEGIN {
    u = tolower(r); sub(/^[0-9.]+/, "", u); v = r + 0; m = 1
    if (u ~ /^k/) m = 1e3; else if (u ~ /^m/) m = 1e6; else if (u ~ /^g/) m = 1e9; else if (u ~ /^t/) m = 1e12
    if (u ~ /bps$/) m *= 8
    printf "%.0f\n", v * m }'
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lh-compare.XXXXXX")
brought_up=0
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  local rc=$?
  if ((brought_up && !keep)); then
    say "tearing the testbed down (it was brought up by $PROG; --keep keeps it)"
    tb down || true
  elif ((brought_up)); then
    say "leaving the testbed up (--keep); remove it with: $TESTBED down"
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
# The runs go in the background so a signal acts at once: we stop the run, and the EXIT trap
# tears the testbed down (which stops whatever still runs inside it) if we brought it up.
CHILD=
# shellcheck disable=SC2317  # called from the signal traps
on_signal() {
  [[ -z $CHILD ]] || kill -TERM "$CHILD" 2>/dev/null || true
  [[ -z $CHILD ]] || wait "$CHILD" 2>/dev/null || true
  exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

# ---- testbed --------------------------------------------------------------------------------
conf_rc=0
tb config >"$tmp/conf" 2>/dev/null || conf_rc=$?
if ((conf_rc == 0)); then
  up_hosts=$(sed -n 's/^hosts=//p' "$tmp/conf")
  up_rates=$(sed -n 's/^rates=//p' "$tmp/conf")
  # expand the requested rates the way testbed.sh does (last one repeating)
  want=()
  for ((i = 0; i < hosts; i++)); do want+=("${rates[$((i < ${#rates[@]} ? i : ${#rates[@]} - 1))]}"); done
  if ((hosts_set)) && [[ $up_hosts != "$hosts" ]]; then
    die "a testbed with $up_hosts hosts is already up but --hosts $hosts was asked for (run '$TESTBED down' first)"
  fi
  if ((rate_set)) && [[ $up_rates != "${want[*]:0:$up_hosts}" ]]; then
    die "a testbed with rates '$up_rates' is already up but --rate $rate was asked for (run '$TESTBED down' first)"
  fi
  say "using the testbed that is already up: $up_hosts hosts, rates $up_rates"
  hosts=$up_hosts
  read -r -a rates <<<"$up_rates"
elif ((conf_rc == 3)); then
  say "bringing the testbed up: $hosts hosts at ${rates[*]}"
  brought_up=1
  tb up "$hosts" "${rates[@]}" >/dev/null
  tb status || true
  read -r -a rates < <(sed -n 's/^rates=//p' <(tb config))
else
  exit "$conf_rc"
fi

# slowest uplink, bits/s
min_bits=
for r in "${rates[@]:0:$hosts}"; do
  b=$(rate_bits "$r")
  if [[ -z $min_bits ]] || ((b < min_bits)); then min_bits=$b; fi
done

# ---- the runs: ring, mpi, then one per codec -------------------------------------------------
failed=0
runs=("--algo ring" "--algo mpi")
for c in "${codecs[@]+"${codecs[@]}"}"; do runs+=("--codec $c"); done
for ((k = 0; k < ${#runs[@]}; k++)); do
  read -r -a args <<<"${runs[$k]}" # "--algo ring", "--codec top1%": no blanks inside a word
  say "allreduce_perf ${runs[$k]} on $hosts hosts"
  echo "# ===== ${runs[$k]}: $hosts hosts, uplinks ${rates[*]:0:$hosts} ====="
  rc=0
  : >"$tmp/$k.out" # exists before tail opens it; the run below appends from its start
  bash "$TESTBED" run -- "$bench" "${args[@]}" -b "$minb" -e "$maxb" -f "$factor" -n "$iters" \
    -w "$warmup" "${extra[@]+"${extra[@]}"}" >>"$tmp/$k.out" 2>&1 &
  CHILD=$!
  tail -n +1 -f --pid="$CHILD" "$tmp/$k.out" &
  wait "$CHILD" || rc=$?
  CHILD=
  wait # for tail, which ends with the run
  if ((rc != 0)); then
    say "the ${runs[$k]} run failed (exit $rc)"
    failed=1
  fi
  # data rows: not '#', first field a size; keep size and time(us) (6th column)
  awk '!/^[[:space:]]*#/ && $1 ~ /^[0-9]+$/ && NF >= 6 && $6 ~ /^[0-9.eE+-]+$/ { print $1, $6 }' \
    "$tmp/$k.out" >"$tmp/$k.rows"
  if [[ ! -s $tmp/$k.rows ]]; then
    say "the ${runs[$k]} run printed no result rows"
    failed=1
  fi
  echo
done

# ---- summary --------------------------------------------------------------------------------
echo "# ===== summary: $hosts hosts, uplinks ${rates[*]:0:$hosts}${LH_SIM_LAT:+, LH_SIM_LAT=$LH_SIM_LAT} ====="
echo "# ratio = mpi / ring (above 1: ring faster); ideal = 2(n-1)/n * size / slowest uplink"
((${#codecs[@]} == 0)) ||
  echo "# per codec C: C(us), and mpi/C and ring/C = the speed-up of --codec C over mpi and over ring"
rowfiles=()
for ((k = 0; k < ${#runs[@]}; k++)); do rowfiles+=("$tmp/$k.rows"); done
awk -v n="$hosts" -v bits="$min_bits" -v names="${codecs[*]+"${codecs[*]}"}" '
  BEGIN { nc = split(names, codec, " "); for (a = 1; a < ARGC; a++) file[ARGV[a]] = a - 1 }
  { t[file[FILENAME], $1] = $2 }   # file 0: ring, 1: mpi, 2..: the codecs in order
  !($1 in seen) { seen[$1] = 1; order[++k] = $1 }
  function cell(f, s) { return ((f, s) in t) ? sprintf("%.1f", t[f, s]) : "-" }
  function quot(a, b, s) { return ((a, s) in t && (b, s) in t && t[b, s] > 0) ? sprintf("%.2f", t[a, s] / t[b, s]) : "-" }
  END {
    printf "%14s %14s %14s %8s %14s %9s %9s", "size(B)", "ring(us)", "mpi(us)", "ratio",
           "ideal(us)", "ring/ideal", "mpi/ideal"
    for (c = 1; c <= nc; c++)
      printf " %14s %9s %9s", codec[c] "(us)", "mpi/" codec[c], "ring/" codec[c]
    printf "\n"
    for (i = 1; i <= k; i++) {
      s = order[i]
      ideal = 2 * (n - 1) / n * s * 8 / bits * 1e6
      ri = ((0, s) in t) ? sprintf("%.2f", t[0, s] / ideal) : "-"
      mi = ((1, s) in t) ? sprintf("%.2f", t[1, s] / ideal) : "-"
      printf "%14s %14s %14s %8s %14.1f %9s %9s", s, cell(0, s), cell(1, s), quot(1, 0, s), ideal, ri, mi
      for (c = 1; c <= nc; c++)
        printf " %14s %9s %9s", cell(c + 1, s), quot(1, c + 1, s), quot(0, c + 1, s)
      printf "\n"
    }
  }' "${rowfiles[@]}"

exit "$failed"
