#!/usr/bin/env bash
# Runs a command while every core is kept busy by another process: the check that no
# test depends on the machine being fast or idle. One busy loop per core (plain
# processes at normal priority, like a noisy neighbour), stopped by PID when the
# command ends, pass or fail.
#
#   scripts/saturated.sh .venv/bin/python -m pytest -q tests/python
#
# SATURATED_NEIGHBOUR="CMD": CMD (a CPU-bound job with a result of its own, e.g.
# `scripts/fuzz.sh 30`) takes the place of one busy loop until it ends, and a busy loop
# takes its place again then. The command's exit status is the first failure of the
# command and CMD; CMD is waited for (not stopped) when the command ends first. CMD
# runs in its own process group, stopped as a group if this script is interrupted.
set -euo pipefail

cores=$(nproc)
pids=()
neighbour=""
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$neighbour" ]; then kill -- "-$neighbour" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT
loops=$cores
if [ -n "${SATURATED_NEIGHBOUR:-}" ]; then
  loops=$((cores > 1 ? cores - 1 : 1))
  # Its own process group (set -m), so that an interrupted run stops all of it.
  loop_pid_file=$(mktemp)
  set -m
  bash -c "$SATURATED_NEIGHBOUR; rc=\$?; python3 -c 'while True: pass' & echo \$! > '$loop_pid_file'; exit \$rc" &
  neighbour=$!
  set +m
fi
for _ in $(seq "$loops"); do
  python3 -c 'while True: pass' &
  pids+=("$!")
done
echo "saturated.sh: $loops busy loops running (PIDs ${pids[*]})${neighbour:+, neighbour PID $neighbour: $SATURATED_NEIGHBOUR}"
status=0
"$@" || status=$?
if [ -n "$neighbour" ]; then
  echo "saturated.sh: waiting for the neighbour ($SATURATED_NEIGHBOUR)"
  neighbour_status=0
  wait "$neighbour" || neighbour_status=$?
  neighbour=""
  if [ -s "$loop_pid_file" ]; then
    pids+=("$(cat "$loop_pid_file")")
  fi
  rm -f "$loop_pid_file"
  if [ "$status" = 0 ] && [ "$neighbour_status" != 0 ]; then
    echo "saturated.sh: the neighbour failed with status $neighbour_status" >&2
    status=$neighbour_status
  fi
fi
exit "$status"
