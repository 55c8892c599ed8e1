#!/usr/bin/env bash
# probe_netns.sh - tests on real shaped links (network namespaces + tbf), root only.
#
#   probe_netns.sh LH_PROBE TESTBED_SH   lh-probe across 4 shaped hosts must recover each
#                                        sender's uplink rate for every ordered pair
#   probe_netns.sh --updown TESTBED_SH   up / status / config / run / down work and leave
#                                        nothing behind
#
# Exit: 0 pass, 1 fail, 77 skipped (not root, or namespaces/veth/bridge/tbf unavailable).
# Uses its own namespace prefix and subnet (LH_TESTBED_PREFIX / LH_TESTBED_SUBNET; ctest sets
# them) so it cannot clash with a testbed somebody else has up.  Always tears down.
set -euo pipefail

SKIP=77
PROG=${0##*/}

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
note() { printf '[%s] %s\n' "$PROG" "$*" >&2; }

usage() {
  echo "usage: $PROG LH_PROBE TESTBED_SH | $PROG --updown TESTBED_SH" >&2
  exit 2
}

if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: needs root to create network namespaces"
  exit "$SKIP"
fi

# testbed.sh through bash, so its file mode does not matter.
tb() { bash "$TESTBED" "$@"; }

# Long steps run in the background (run_bg.sh); on INT/TERM the EXIT trap runs 'testbed.sh
# down', which stops everything still running inside the namespaces before removing them.
RUN_BG_MESSAGE="interrupted: tearing down"
# shellcheck source=run_bg.sh
. "$(dirname "${BASH_SOURCE[0]}")/run_bg.sh"

# Run "testbed.sh up ..." and turn "cannot create namespaces here" (77) into a skip.
testbed_up() {
  local rc=0
  tb up "$@" || rc=$?
  if ((rc == SKIP)); then
    echo "SKIP: testbed.sh cannot create namespaces/veth/bridge/tbf here"
    exit "$SKIP"
  fi
  ((rc == 0)) || fail "testbed.sh up $* exited $rc"
}

# ---------------------------------------------------------------------------------------------
# --updown
# ---------------------------------------------------------------------------------------------
run_updown() {
  export LH_TESTBED_PREFIX=${LH_TESTBED_PREFIX:-lhtupdown}
  export LH_TESTBED_SUBNET=${LH_TESTBED_SUBNET:-10.77.2}
  local P=$LH_TESTBED_PREFIX S=$LH_TESTBED_SUBNET br
  if [[ -n ${LH_TESTBED_BRIDGE:-} ]]; then br=$LH_TESTBED_BRIDGE
  elif [[ $P == lh-host ]]; then br=lhbr0
  else br=${P}br; fi
  local nf=/proc/sys/net/bridge/bridge-nf-call-iptables nf_before=
  trap 'tb down >/dev/null 2>&1 || true' EXIT

  tb down >/dev/null 2>&1 || true # a leftover from a killed run
  [[ -e $nf ]] && nf_before=$(<"$nf")

  local rc=0
  tb up 0 10mbit 2>/dev/null || rc=$?
  ((rc == 2)) || fail "'up 0 10mbit' should be refused with exit 2, got $rc"
  rc=0
  tb up 2 fast 2>/dev/null || rc=$?
  ((rc == 2)) || fail "'up 2 fast' should be refused with exit 2, got $rc"
  rc=0
  tb status >/dev/null 2>&1 || rc=$?
  ((rc == 3)) || fail "status before up should exit 3 (not up), got $rc"

  note "up 3 50mbit 80mbit"
  testbed_up 3 50mbit 80mbit
  local out
  rc=0
  out=$(tb status) || rc=$?
  echo "$out"
  ((rc == 0)) || fail "status after up exited $rc"
  local i want
  for i in 0 1 2; do
    grep -q "^${P}$i .*$S\\.$((i + 1))/24 .*tbf" <<<"$out" || fail "status does not show ${P}$i with $S.$((i + 1))/24 and a tbf qdisc"
    want=$([[ $i -eq 0 ]] && echo 50Mbit || echo 80Mbit)
    ip netns exec "${P}$i" tc qdisc show dev eth0 | grep -q "tbf .*rate $want" ||
      fail "${P}$i: eth0 has no 'tbf rate $want' qdisc"
    [[ $(ip netns exec "${P}$i" cat /sys/class/net/eth0/mtu) == 1500 ]] || fail "${P}$i: eth0 MTU is not 1500"
  done
  ip link show dev "$br" >/dev/null 2>&1 || fail "bridge $br does not exist after up"
  [[ -e $nf ]] && { [[ $(<"$nf") == 0 ]] || fail "bridge-nf-call-iptables is not 0 while the testbed is up"; }
  out=$(tb config)
  grep -qx 'hosts=3' <<<"$out" || fail "config does not say hosts=3: $out"
  grep -qx 'rates=50mbit 80mbit 80mbit' <<<"$out" || fail "config does not say rates=50mbit 80mbit 80mbit: $out"

  note "run: rank i must land in ${P}i and see LH_* variables"
  # shellcheck disable=SC2016  # expanded by the rank's shell
  out=$(LH_UPDOWN_CHECK=forwarded tb run -- /bin/sh -c \
    'echo "rank=$OMPI_COMM_WORLD_RANK addr=$(ip -4 -o addr show dev eth0 | awk "{print \$4}") lh=$LH_UPDOWN_CHECK"')
  echo "$out"
  for i in 0 1 2; do
    grep -qx "rank=$i addr=$S.$((i + 1))/24 lh=forwarded" <<<"$out" ||
      fail "rank $i did not run in ${P}$i with LH_UPDOWN_CHECK forwarded"
  done

  note "up again with 2 hosts replaces the testbed"
  testbed_up 2 20mbit >/dev/null
  ip netns list | awk '{print $1}' | grep -qx "${P}2" && fail "${P}2 survived a re-up with 2 hosts"
  grep -qx 'hosts=2' <<<"$(tb config)" || fail "config after re-up does not say hosts=2"

  note "down"
  tb down || fail "down exited non-zero"
  tb down || fail "a second down (nothing to remove) exited non-zero"
  rc=0
  tb status >/dev/null || rc=$?
  ((rc == 3)) || fail "status after down should exit 3 (not up), got $rc"
  local left
  left=$(ip netns list | awk '{print $1}' | grep -E "^${P}" || true)
  [[ -z $left ]] || fail "namespaces left behind: $left"
  ! ip link show dev "$br" >/dev/null 2>&1 || fail "bridge $br left behind"
  left=$(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E "^${P}" || true)
  [[ -z $left ]] || fail "interfaces left behind: $left"
  if [[ -n $nf_before && -e $nf ]]; then
    # Another testbed (other prefix) that is still up keeps it at 0; only check when none is.
    if ! ip -d link show type bridge | grep -q 'alias longhaul-testbed'; then
      [[ $(<"$nf") == "$nf_before" ]] || fail "bridge-nf-call-iptables not restored to $nf_before"
    fi
  fi
  echo "PASS: up/status/config/run/down work and leave nothing behind"
}

# ---------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------
# Hosts 0,1 get RATE_LO, hosts 2,3 RATE_HI (Mbit/s).  Egress of each host is capped, so a
# transfer i -> j runs at host i's rate.
RATE_LO_MBIT=100
RATE_HI_MBIT=300
HOSTS=4
TOLERANCE=0.20
PROBE_ARGS=(--max-bytes 16M --target-seconds 1)

run_probe() {
  export LH_TESTBED_PREFIX=${LH_TESTBED_PREFIX:-lhtprobe}
  export LH_TESTBED_SUBNET=${LH_TESTBED_SUBNET:-10.77.1}
  [[ -x $PROBE ]] || fail "lh-probe '$PROBE' is not an executable file"
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/lh-netns-probe.XXXXXX")
  # shellcheck disable=SC2064  # expand $tmp now
  trap "bash '$TESTBED' down || true; rm -rf '$tmp'" EXIT

  note "bringing up $HOSTS hosts: 0,1 at ${RATE_LO_MBIT}mbit, 2,3 at ${RATE_HI_MBIT}mbit"
  testbed_up "$HOSTS" "${RATE_LO_MBIT}mbit" "${RATE_LO_MBIT}mbit" "${RATE_HI_MBIT}mbit"

  local out=$tmp/links.txt rc=0
  note "running lh-probe --out $out ${PROBE_ARGS[*]}"
  run_bg bash "$TESTBED" run -- "$PROBE" --out "$out" "${PROBE_ARGS[@]}" || rc=$?
  ((rc == 0)) || fail "lh-probe under testbed.sh run exited $rc"
  [[ -s $out ]] || fail "lh-probe did not write $out"
  echo "---- $out ----"
  cat "$out"
  echo "----"

  # The bandwidth_gbps section: N rows of N numbers after the keyword; '#' starts a comment.
  local -a bw
  mapfile -t bw < <(awk -v n="$HOSTS" '
    { sub(/#.*/, "") }
    NF == 0 { next }
    $1 == "devices" { devices = $2 }
    insec && rows < n { print; rows++; next }
    $1 == "bandwidth_gbps" { insec = 1 }
    END { if (devices != n) print "ERROR devices=" devices }' "$out")
  ((${#bw[@]} == HOSTS)) || fail "expected $HOSTS rows in the bandwidth_gbps section, got ${#bw[@]}"
  [[ ${bw[*]} != *ERROR* ]] || fail "link file does not say 'devices $HOSTS'"

  # Expected goodput = the sender's tbf rate.  tbf counts whole frames (Ethernet + IP + TCP
  # headers, about 66 of every 1514 bytes at MTU 1500), so TCP goodput sits 3-5% below the
  # rate; the 20% tolerance covers that header overhead plus TCP start-up and noise.  We do
  # not correct for the overhead: the link file should report what an application gets.
  local i j cfg cfg_g ratio meas bad=0 row verdict
  local -a vals
  printf '%-6s %14s %14s %8s  %s\n' pair "config(Gbit/s)" "meas(Gbit/s)" "meas/cfg" result
  for ((i = 0; i < HOSTS; i++)); do
    read -r -a vals <<<"${bw[$i]}"
    ((${#vals[@]} == HOSTS)) || fail "bandwidth_gbps row $i has ${#vals[@]} numbers, expected $HOSTS"
    if ((i < 2)); then cfg=$RATE_LO_MBIT; else cfg=$RATE_HI_MBIT; fi
    for ((j = 0; j < HOSTS; j++)); do
      ((i == j)) && continue
      meas=${vals[$j]}
      row=$(awk -v c="$cfg" -v m="$meas" -v t="$TOLERANCE" 'BEGIN {
        if (m !~ /^[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$/) { print "nan nan BAD"; exit }
        cg = c / 1000; r = m / cg; d = r - 1; if (d < 0) d = -d
        printf "%.4f %.3f %s\n", cg, r, (d <= t) ? "ok" : "BAD" }')
      read -r cfg_g ratio verdict <<<"$row"
      printf '%-6s %14s %14s %8s  %s\n' "$i->$j" "$cfg_g" "$meas" "$ratio" "$verdict"
      [[ $verdict == ok ]] || bad=1
    done
  done
  ((bad == 0)) || fail "some measured bandwidths are more than $(awk -v t="$TOLERANCE" 'BEGIN{print t*100}')% off the sender's tbf rate"
  echo "PASS: every ordered pair within $(awk -v t="$TOLERANCE" 'BEGIN{print t*100}')% of the sender's tbf rate"
}

(($# == 2)) || usage
if [[ $1 == --updown ]]; then
  TESTBED=$2
  [[ -r $TESTBED ]] || fail "testbed script '$TESTBED' is not readable"
  run_updown
else
  PROBE=$1 TESTBED=$2
  [[ -r $TESTBED ]] || fail "testbed script '$TESTBED' is not readable"
  run_probe
fi
