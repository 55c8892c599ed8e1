#!/usr/bin/env bash
# testbed.sh - real bandwidth-shaped links between N "hosts" on one Linux machine.
#
# Each host is a network namespace (PREFIX0 .. PREFIX<N-1>) with one veth interface, eth0,
# plugged into a bridge in the root namespace.  Egress of every host's eth0 is capped with
# `tc qdisc tbf` (the host's uplink).  The kernel here has no netem, so latency cannot be
# shaped: combine this bandwidth with the simulated-link latency (LH_SIM_LAT).
# See docs in --help and /work/shared/design/transport.md ("Real shaped links on one machine").
#
# Layout (defaults; PREFIX=lh-host, SUBNET=10.77.0):
#   namespace lh-host<i>  eth0 10.77.0.<i+1>/24, tbf rate RATE_i   <- one MPI rank each
#   namespace lh-hostctl  eth0 10.77.0.254/24, not shaped          <- mpirun runs here
#   bridge    lhbr0 (root namespace, no address), root-side veth ends lh-host<i>, lh-hostc
# Nothing in the root namespace gets an address or a route: all traffic stays inside the
# namespaces and the bridge.
set -euo pipefail

PROG=${0##*/}
PREFIX=${LH_TESTBED_PREFIX:-lh-host}
SUBNET=${LH_TESTBED_SUBNET:-10.77.0}
BURST=64kb
TBF_LATENCY=200ms
MAX_HOSTS=64
STATE_DIR=/run/lh-testbed
BRIDGE_ALIAS=longhaul-testbed
NF_SYSCTL=/proc/sys/net/bridge/bridge-nf-call-iptables
NF_SAVED=$STATE_DIR/bridge-nf-call-iptables.saved

EXIT_USAGE=2
EXIT_NOT_UP=3
EXIT_CANNOT=77   # not root / namespaces, veth, bridge or tbf unavailable (ctest: skipped)

usage() {
  cat <<EOF
Usage: $PROG up N RATE [RATE...]
       $PROG down
       $PROG status
       $PROG config
       $PROG run [MPIRUN-ARGS...] -- PROGRAM [ARGS...]
       $PROG run PROGRAM [ARGS...]
       $PROG --help

Real bandwidth-shaped links between N hosts on one machine (root only).

  up N RATE...   Create namespaces ${PREFIX}0..${PREFIX}<N-1> (1 <= N <= $MAX_HOSTS) on a bridge,
                 host i at ${SUBNET}.<i+1>/24, its eth0 egress (= its uplink) capped with
                 'tc qdisc tbf rate RATE_i burst $BURST latency $TBF_LATENCY'.  RATE_i is the
                 i-th RATE, the last one repeating: 'up 4 100mbit' gives all four hosts
                 100 Mbit/s, 'up 4 100mbit 100mbit 400mbit' gives hosts 2 and 3 400 Mbit/s.
                 RATE is a tc rate: a number and a unit (bit kbit mbit gbit, or bps kbps
                 mbps gbps = bytes/s).  An existing testbed with the same prefix is replaced.
                 Also creates ${PREFIX}ctl (${SUBNET}.254, unshaped), where mpirun runs.
  down           Remove everything 'up' created (idempotent; fine when nothing exists).
  status         Show namespaces, addresses and qdiscs.  Exit 0 when up, $EXIT_NOT_UP when not.
  config         Print the configuration of the running testbed as KEY=VALUE lines
                 (prefix, bridge, subnet, hosts, rates); exit $EXIT_NOT_UP when not up.
  run            Run mpirun with one rank per host namespace (rank i on host i).  Words
                 before '--' go to mpirun, the rest is the program; without '--' all words
                 are the program.  Adds: --hostfile (the host addresses, slots=1),
                 --mca plm_rsh_agent AGENT (a generated script that runs the daemon inside
                 the host's namespace), --mca pml ob1 --mca btl tcp,self,
                 btl/oob_tcp_if_include ${SUBNET}.0/24, --oversubscribe, -np N (unless given),
                 -x for OMPI_ALLOW_RUN_AS_ROOT[_CONFIRM], every LH_* variable set here but
                 the testbed's own LH_TESTBED_*, and ASAN_OPTIONS/UBSAN_OPTIONS,
                 and mpi_yield_when_idle 1 when there are more hosts than CPUs.
                 mpirun itself runs in ${PREFIX}ctl (it needs an address on the subnet).
                 Exits with mpirun's status.

Environment:
  LH_TESTBED_PREFIX   namespace prefix (default lh-host; at most 11 letters, digits or '-',
                      starting with a letter, not ending in a digit)
  LH_TESTBED_SUBNET   first three octets of a private /24 (default 10.77.0)
  LH_TESTBED_BRIDGE   bridge name (default lhbr0 for prefix lh-host, else PREFIXbr)

Exit status: 0 ok, 1 failure, $EXIT_USAGE bad arguments, $EXIT_NOT_UP testbed not up (status, config,
run), $EXIT_CANNOT cannot create the testbed here (not root; namespaces, veth, bridge or tbf
unavailable).

Example:
  sudo $PROG up 4 100mbit
  sudo LH_SIM_LAT=50ms $PROG run -- build/bench/allreduce_perf -b 16M -e 64M
  sudo $PROG down
EOF
}

say()    { printf '[testbed] %s\n' "$*" >&2; }
die()    { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
bad()    { printf '%s: %s (see %s --help)\n' "$PROG" "$*" "$PROG" >&2; exit "$EXIT_USAGE"; }
cannot() { printf '%s: %s\n' "$PROG" "$*" >&2; exit "$EXIT_CANNOT"; }

# ---- configuration checks -------------------------------------------------------------------
check_names() {
  # Not ending in a digit: prefix "a1" would otherwise own prefix "a"'s host 10.
  [[ $PREFIX =~ ^[A-Za-z]([A-Za-z0-9-]{0,9}[A-Za-z-])?$ ]] ||
    bad "LH_TESTBED_PREFIX '$PREFIX' must be 1 to 11 letters, digits or '-', start with a letter and not end in a digit"
  if [[ -n ${LH_TESTBED_BRIDGE:-} ]]; then
    BRIDGE=$LH_TESTBED_BRIDGE
  elif [[ $PREFIX == lh-host ]]; then
    BRIDGE=lhbr0
  else
    BRIDGE=${PREFIX}br
  fi
  [[ $BRIDGE =~ ^[A-Za-z][A-Za-z0-9-]{0,14}$ ]] ||
    bad "bridge name '$BRIDGE' must be a letter followed by at most 14 letters, digits or '-'"
  CTL_NS=${PREFIX}ctl
  CTL_VETH=${PREFIX}c
  CONF=$STATE_DIR/$PREFIX.conf
  local o1 o2 o3
  [[ $SUBNET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
    bad "LH_TESTBED_SUBNET '$SUBNET' must be three octets such as 10.77.0"
  o1=${BASH_REMATCH[1]} o2=${BASH_REMATCH[2]} o3=${BASH_REMATCH[3]}
  ((10#$o2 <= 255 && 10#$o3 <= 255)) || bad "LH_TESTBED_SUBNET '$SUBNET' has an octet above 255"
  if ! ((10#$o1 == 10 || (10#$o1 == 172 && 10#$o2 >= 16 && 10#$o2 <= 31) ||
        (10#$o1 == 192 && 10#$o2 == 168))); then
    bad "LH_TESTBED_SUBNET '$SUBNET' is not a private (RFC 1918) network"
  fi
  SUBNET=$((10#$o1)).$((10#$o2)).$((10#$o3))
  CIDR=$SUBNET.0/24
}

need_root() {
  [[ $(id -u) -eq 0 ]] || cannot "must run as root to create network namespaces (try sudo)"
  command -v ip >/dev/null 2>&1 || cannot "the 'ip' command (iproute2) is not installed"
  command -v tc >/dev/null 2>&1 || cannot "the 'tc' command (iproute2) is not installed"
}

# Host namespaces of this prefix, sorted by index, one per line.
host_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | { grep -E "^${PREFIX}[0-9]+\$" || true; } |
    sed "s/^${PREFIX}//" | sort -n | sed "s/^/${PREFIX}/"
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }
is_up() { ns_exists "$CTL_NS" && [[ -n $(host_namespaces) ]]; }

# Turn IPv6 off on an interface (no router solicitations or DAD chatter); best effort.
no_ipv6() { # [ns] ifname
  local ns=$1 f=/proc/sys/net/ipv6/conf/$2/disable_ipv6
  if [[ -z $ns ]]; then
    if [[ -w $f ]]; then echo 1 >"$f" 2>/dev/null || true; fi
  else
    ip netns exec "$ns" sh -c "[ -w '$f' ] && echo 1 > '$f'" 2>/dev/null || true
  fi
}

# ---- up -------------------------------------------------------------------------------------
cmd_up() {
  (($# >= 2)) || bad "'up' needs a host count and at least one rate, e.g. 'up 4 100mbit'"
  local n=$1
  shift
  if ! [[ $n =~ ^[0-9]{1,3}$ ]] || ((10#$n < 1 || 10#$n > MAX_HOSTS)); then
    bad "host count '$n' must be an integer from 1 to $MAX_HOSTS"
  fi
  n=$((10#$n))
  local r
  for r in "$@"; do
    [[ $r =~ ^[0-9]+(\.[0-9]+)?([kKmMgGtT]?)(bit|bps)$ ]] ||
      bad "rate '$r' is not a tc rate such as 100mbit, 1.5gbit or 500kbit"
  done
  local -a rates=("$@")
  need_root
  if is_up || link_exists "$BRIDGE" || [[ -n $(host_namespaces) ]]; then
    say "a testbed with prefix $PREFIX exists: removing it first"
    cmd_down
  fi

  UP_DONE=0
  trap 'if [[ $UP_DONE -eq 0 ]]; then say "setup failed: tearing down"; cmd_down >/dev/null 2>&1 || true; fi' EXIT

  # Can we create namespaces at all?  The first one tells.
  say "creating namespace ${PREFIX}0"
  if ! ip netns add "${PREFIX}0" 2>/dev/null; then
    cannot "cannot create network namespaces here ('ip netns add ${PREFIX}0' failed)"
  fi
  mkdir -p "$STATE_DIR"

  say "creating bridge $BRIDGE (root namespace, no address)"
  ip link add "$BRIDGE" type bridge stp_state 0 2>/dev/null ||
    cannot "cannot create a bridge here ('ip link add $BRIDGE type bridge' failed)"
  ip link set "$BRIDGE" alias "$BRIDGE_ALIAS $PREFIX"
  ip link set "$BRIDGE" mtu 1500
  no_ipv6 "" "$BRIDGE"
  ip link set "$BRIDGE" up

  # Bridged IPv4 must not go through the root namespace's iptables (a FORWARD DROP policy,
  # as Docker sets, would eat it).  The old value is restored by the last 'down'.
  if [[ -e $NF_SYSCTL ]]; then
    local cur
    cur=$(<"$NF_SYSCTL")
    if [[ $cur != 0 ]]; then
      [[ -e $NF_SAVED ]] || echo "$cur" >"$NF_SAVED"
      say "setting net.bridge.bridge-nf-call-iptables=0 (was $cur; restored by 'down')"
      echo 0 >"$NF_SYSCTL"
    fi
  fi

  local i ns rate addr
  local -a host_rates=()
  for ((i = 0; i < n; i++)); do
    ns=${PREFIX}$i
    rate=${rates[$((i < ${#rates[@]} ? i : ${#rates[@]} - 1))]}
    host_rates+=("$rate")
    addr=$SUBNET.$((i + 1))
    ((i == 0)) || { say "creating namespace $ns"; ip netns add "$ns"; }
    add_host "$ns" "$ns" "$addr" "$rate"
  done
  say "creating namespace $CTL_NS (mpirun runs here; not shaped)"
  ip netns add "$CTL_NS"
  add_host "$CTL_NS" "$CTL_VETH" "$SUBNET.254" ""

  {
    echo "prefix=$PREFIX"
    echo "bridge=$BRIDGE"
    echo "subnet=$SUBNET"
    echo "hosts=$n"
    echo "rates=${host_rates[*]}"
  } >"$CONF"

  say "checking that $CTL_NS reaches every host"
  for ((i = 0; i < n; i++)); do
    reachable "$CTL_NS" "$SUBNET.$((i + 1))" || die "host ${PREFIX}$i ($SUBNET.$((i + 1))) is not reachable over the bridge"
  done
  UP_DONE=1
  trap - EXIT
  say "testbed up: $n hosts on $BRIDGE, $CIDR"
  cmd_status || true
}

# add_host NS ROOT_VETH ADDR RATE  (RATE empty: no shaping)
add_host() {
  local ns=$1 veth=$2 addr=$3 rate=$4
  ip netns exec "$ns" ip link set lo up
  ip link add "$veth" mtu 1500 type veth peer name eth0 mtu 1500 netns "$ns" 2>/dev/null ||
    cannot "cannot create a veth pair here ('ip link add $veth type veth' failed)"
  no_ipv6 "" "$veth"
  no_ipv6 "$ns" eth0
  ip link set "$veth" master "$BRIDGE"
  ip link set "$veth" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  if [[ -n $rate ]]; then
    say "  $ns: eth0 $addr/24, egress tbf rate $rate burst $BURST latency $TBF_LATENCY"
    ip netns exec "$ns" tc qdisc replace dev eth0 root tbf rate "$rate" burst "$BURST" \
      latency "$TBF_LATENCY" 2>/dev/null ||
      cannot "cannot install a tbf qdisc ('tc qdisc replace dev eth0 root tbf rate $rate' failed in $ns)"
  else
    say "  $ns: eth0 $addr/24, not shaped"
  fi
}

# TCP connect to port 9 (nothing listens): "connection refused" fast means reachable.
reachable() { # ns addr
  local ns=$1 addr=$2 try rc
  for try in 1 2 3 4 5; do
    rc=0
    ip netns exec "$ns" timeout 2 bash -c "exec 3<>/dev/tcp/$addr/9" 2>/dev/null || rc=$?
    # 0: something listens (fine); 1: refused (fine); 124: timed out (not reachable yet).
    ((rc != 124)) && return 0
    ((try < 5)) && sleep 0.5
  done
  return 1
}

# ---- down -----------------------------------------------------------------------------------
cmd_down() {
  (($# == 0)) || bad "'down' takes no arguments"
  need_root
  local ns removed=0 l
  local -a all_ns
  mapfile -t all_ns < <(host_namespaces; ns_exists "$CTL_NS" && echo "$CTL_NS")
  # A namespace lives on, unnamed, while a process is inside it (and so does its veth pair):
  # stop what still runs in ours (an interrupted mpirun, its daemons and ranks) first.
  ((${#all_ns[@]} == 0)) || stop_ns_processes "${all_ns[@]}"
  for ns in "${all_ns[@]+"${all_ns[@]}"}"; do
    say "removing namespace $ns"
    ip netns del "$ns" 2>/dev/null || true
    removed=1
  done
  # Root-side veth ends normally vanish with their namespace; catch half-built ones.
  while read -r l; do
    [[ -n $l ]] || continue
    say "removing interface $l"
    ip link del "$l" 2>/dev/null || true
    removed=1
  done < <(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}' |
    { grep -E "^(${PREFIX}[0-9]+|${CTL_VETH})\$" || true; })
  if link_exists "$BRIDGE"; then
    say "removing bridge $BRIDGE"
    ip link del "$BRIDGE" 2>/dev/null || true
    removed=1
  fi
  rm -f "$CONF"
  # Restore bridge-nf-call-iptables once no testbed bridge is left.
  if [[ -e $NF_SAVED ]] && ! ip -d link show type bridge 2>/dev/null | grep -q "alias $BRIDGE_ALIAS"; then
    if [[ -e $NF_SYSCTL ]]; then
      say "restoring net.bridge.bridge-nf-call-iptables=$(<"$NF_SAVED")"
      cat "$NF_SAVED" >"$NF_SYSCTL" || true
    fi
    rm -f "$NF_SAVED"
  fi
  rmdir "$STATE_DIR" 2>/dev/null || true
  if ((removed)); then say "testbed $PREFIX removed"; else say "nothing to remove for prefix $PREFIX"; fi
}

# stop_ns_processes NS...: TERM every process inside these namespaces, KILL after 5 s.
stop_ns_processes() {
  local ns p t
  local -a pids=() alive
  for ns in "$@"; do
    while read -r p; do [[ $p =~ ^[0-9]+$ ]] && pids+=("$p"); done < <(ip netns pids "$ns" 2>/dev/null)
  done
  ((${#pids[@]} > 0)) || return 0
  say "stopping ${#pids[@]} processes still running in the namespaces: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((t = 0; t < 50; t++)); do
    alive=()
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    ((${#alive[@]} > 0)) || return 0
    sleep 0.1
  done
  say "killing ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  sleep 0.2
}

# ---- status / config ------------------------------------------------------------------------
cmd_status() {
  (($# == 0)) || bad "'status' takes no arguments"
  need_root
  local -a hosts
  mapfile -t hosts < <(host_namespaces)
  if ((${#hosts[@]} == 0)) && ! ns_exists "$CTL_NS" && ! link_exists "$BRIDGE"; then
    echo "testbed $PREFIX: not up (no ${PREFIX}* namespaces, no bridge $BRIDGE)"
    return "$EXIT_NOT_UP"
  fi
  echo "testbed $PREFIX: ${#hosts[@]} hosts, bridge $BRIDGE $(link_exists "$BRIDGE" && echo present || echo MISSING), subnet $CIDR"
  [[ -e $NF_SYSCTL ]] && echo "net.bridge.bridge-nf-call-iptables = $(<"$NF_SYSCTL")"
  printf '%-14s %-18s %s\n' namespace address qdisc
  local ns a q
  for ns in "${hosts[@]}" "$CTL_NS"; do
    ns_exists "$ns" || { printf '%-14s %s\n' "$ns" MISSING; continue; }
    a=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | paste -sd, -)
    q=$(ip netns exec "$ns" tc qdisc show dev eth0 2>/dev/null | head -n1)
    printf '%-14s %-18s %s\n' "$ns" "${a:-none}" "${q:-none}"
  done
  is_up || return "$EXIT_NOT_UP"
}

cmd_config() {
  (($# == 0)) || bad "'config' takes no arguments"
  need_root
  if ! is_up || [[ ! -r $CONF ]]; then
    echo "$PROG: no testbed with prefix $PREFIX is up" >&2
    return "$EXIT_NOT_UP"
  fi
  cat "$CONF"
}

# ---- run ------------------------------------------------------------------------------------
cmd_run() {
  local -a mpi_args=() prog=()
  local a seen=0
  for a in "$@"; do
    if ((seen == 0)) && [[ $a == -- ]]; then
      seen=1
      mpi_args=("${prog[@]+"${prog[@]}"}")
      prog=()
      continue
    fi
    prog+=("$a")
  done
  ((${#prog[@]} > 0)) || bad "'run' needs a program: run [MPIRUN-ARGS...] -- PROGRAM [ARGS...]"
  need_root
  command -v mpirun >/dev/null 2>&1 || die "mpirun is not on PATH"
  is_up || { echo "$PROG: no testbed with prefix $PREFIX is up (run '$PROG up N RATE' first)" >&2; exit "$EXIT_NOT_UP"; }

  local -a hosts
  mapfile -t hosts < <(host_namespaces)
  local n=${#hosts[@]} i
  for ((i = 0; i < n; i++)); do
    [[ ${hosts[$i]} == "${PREFIX}$i" ]] || die "host namespaces are not ${PREFIX}0..${PREFIX}$((n - 1)) (found ${hosts[*]}): run '$PROG up' again"
  done

  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/lh-testbed.XXXXXX")
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  local hostfile=$tmp/hostfile agent=$tmp/rsh-agent
  for ((i = 0; i < n; i++)); do echo "$SUBNET.$((i + 1)) slots=1"; done >"$hostfile"
  write_agent "$agent"

  local -a cmd=(mpirun --hostfile "$hostfile")
  local has_np=0
  for a in "${mpi_args[@]+"${mpi_args[@]}"}"; do
    case $a in -np | -n | --np | -c | --n) has_np=1 ;; esac
  done
  ((has_np)) || cmd+=(-np "$n")
  # --mca rtc_hwloc_vmhole none: Open MPI 4.1's daemons put a shared copy of the hwloc topology
  # at an address they guess from their memory map, and now and then (about one start in 20
  # here) a daemon dies of it, a segfault in hwloc_shmem_topology_write; binding does not need
  # it. --leave-session-attached keeps the daemons children of the agent, so that a daemon that
  # dies anyway is reported and ends the job instead of leaving mpirun waiting for it forever.
  cmd+=(--oversubscribe
    --mca plm_rsh_agent "$agent" --mca plm_rsh_no_tree_spawn 1
    --mca rtc_hwloc_vmhole none --leave-session-attached
    --mca pml ob1 --mca btl 'tcp,self' --mca osc '^ucx'
    --mca btl_tcp_if_include "$CIDR" --mca oob_tcp_if_include "$CIDR"
    -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)
  # All "hosts" share this machine's CPUs.  Open MPI cannot see that (one slot per host), so
  # ranks busy-poll; with more ranks than CPUs that adds milliseconds of noise to every small
  # message.  Yield when idle, as Open MPI itself does when it knows it is oversubscribed.
  if [[ -z ${OMPI_MCA_mpi_yield_when_idle:-} ]] && ((n > $(nproc 2>/dev/null || echo 1))); then
    cmd+=(--mca mpi_yield_when_idle 1)
  fi
  local v
  while read -r v; do
    # Longhaul's variables (not the testbed's own settings) and the sanitizers' options, so
    # that a sanitizer build behaves on the testbed as it does under plain mpirun.
    if [[ $v == LH_* && $v != LH_TESTBED_* ]] || [[ $v == ASAN_OPTIONS || $v == UBSAN_OPTIONS ]]; then
      cmd+=(-x "$v")
    fi
  done < <(compgen -e)
  cmd+=("${mpi_args[@]+"${mpi_args[@]}"}" "${prog[@]}")

  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  say "running in $CTL_NS: ${cmd[*]}"
  local rc=0
  # SHELL=/bin/bash: Open MPI writes the remote command for the local shell's syntax, and
  # the agent runs it with bash.  mpirun runs in the background (stdin kept) so that INT,
  # TERM and HUP reach it at once: we forward them and mpirun stops the job it launched.
  SHELL=/bin/bash ip netns exec "$CTL_NS" "${cmd[@]}" <&0 &
  MPIRUN_PID=$!
  trap 'kill -TERM "$MPIRUN_PID" 2>/dev/null || true; GOT_SIGNAL=1' INT TERM HUP
  GOT_SIGNAL=0
  while :; do
    rc=0
    wait "$MPIRUN_PID" || rc=$?
    kill -0 "$MPIRUN_PID" 2>/dev/null || break # gone: rc is its status
  done
  trap - INT TERM HUP
  rm -rf "$tmp"
  trap - EXIT
  ((GOT_SIGNAL == 0)) || say "interrupted; mpirun exited $rc"
  return "$rc"
}

# The rsh agent.  Open MPI 4.1 calls it like ssh: AGENT HOST WORD...  where the words,
# joined with spaces, are a shell command line (e.g.  orted -mca ess "env" -mca ...).  We
# map HOST (an address from the hostfile, or a namespace name) to its namespace and run the
# joined line there with bash -c, exactly as sshd would run it with the login shell.  The
# environment is inherited (ip netns exec keeps it), so OMPI_* and LH_* reach orted.
write_agent() {
  local f=$1
  cat >"$f" <<EOF
#!/usr/bin/env bash
# Generated by $PROG: Open MPI rsh agent for the namespace testbed '$PREFIX'.
set -euo pipefail
# Skip ssh-style options (those of ssh that take a value consume the next word).
while [[ \$# -gt 0 && \$1 == -* ]]; do
  case \$1 in
    -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
    --) shift; break ;;
    *) shift ;;
  esac
done
if [[ \$# -lt 2 ]]; then echo "lh-testbed agent: usage: agent [options] HOST COMMAND..." >&2; exit 255; fi
host=\${1#*@}
shift
case \$host in
  $SUBNET.*) idx=\$(( \${host##*.} - 1 )); ns=$PREFIX\$idx ;;
  ${PREFIX}[0-9]*) ns=\$host ;;
  *) echo "lh-testbed agent: unknown host '\$host' (not in $CIDR)" >&2; exit 255 ;;
esac
if ! ip netns list | awk '{print \$1}' | grep -qx -- "\$ns"; then
  echo "lh-testbed agent: host '\$host' has no namespace \$ns" >&2; exit 255
fi
exec ip netns exec "\$ns" /bin/bash -c "\$*"
EOF
  chmod 755 "$f"
}

# ---- main -----------------------------------------------------------------------------------
main() {
  (($# > 0)) || bad "missing command: up, down, status, config or run"
  local c=$1
  shift
  case $c in
    -h | --help | help) usage; exit 0 ;;
  esac
  check_names
  case $c in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    config) cmd_config "$@" ;;
    run) cmd_run "$@" ;;
    *) bad "unknown command '$c': use up, down, status, config or run" ;;
  esac
}

main "$@"
