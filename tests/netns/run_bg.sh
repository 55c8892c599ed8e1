# Sourced by the netns test scripts: run_bg runs a long step in the background and waits for it,
# so that INT/TERM/HUP (ctest's timeout, Ctrl-C) reach this script at once; the handler passes
# the signal on to the step, waits for it to stop (the testbed script stops mpirun and what it
# launched), says so and exits 1, and the caller's EXIT trap tears the testbed down.
#   run_bg CMD...          the status of CMD
#   RUN_BG_MESSAGE         what the handler says on stderr (default "interrupted")
CHILD=
run_bg() {
  local rc=0
  "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  return "$rc"
}
run_bg_on_signal() {
  [[ -z $CHILD ]] || kill -TERM "$CHILD" 2>/dev/null || true
  [[ -z $CHILD ]] || wait "$CHILD" 2>/dev/null || true
  echo "${RUN_BG_MESSAGE:-interrupted}" >&2
  exit 1
}
trap run_bg_on_signal INT TERM HUP
