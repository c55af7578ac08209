#!/usr/bin/env bash
# Stop what scripts/start_slurm.sh started (slurmd, slurmctld, and munged if it started it), by the
# process ids in its pid files, and wait until they are gone.
set -euo pipefail
STATE=/var/lib/vlmflow-slurm
for daemon in slurmd slurmctld munged; do
  pid_file="$STATE/$daemon.pid"
  [ -s "$pid_file" ] || continue
  pid=$(cat "$pid_file")
  # Only if that id is still the daemon: after a crash the number may belong to another process.
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ] && kill "$pid"; then
    for _ in $(seq 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  rm -f "$pid_file"
done
