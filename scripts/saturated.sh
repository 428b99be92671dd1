#!/usr/bin/env bash
# Runs a command while every core is kept busy by another process: the check that no
# test depends on the machine being fast or idle. One busy loop per core (plain
# processes at normal priority, like a noisy neighbour), stopped by PID when the
# command ends, pass or fail.
#
#   scripts/saturated.sh .venv/bin/python -m pytest -q tests/python
set -euo pipefail

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT
for _ in $(seq "$(nproc)"); do
  python3 -c 'while True: pass' &
  pids+=("$!")
done
echo "saturated.sh: $(nproc) busy loops running (PIDs ${pids[*]})"
"$@"
