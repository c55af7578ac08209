#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munged, slurmctld, slurmd from Debian's slurm-wlm and
# munge), to try profiles/slurm and for tests/test_slurm.py. Needs root: slurmd starts each job as
# its user, and the client commands (sbatch, and srun inside jobs) read /etc/slurm/slurm.conf.
# Idempotent: a cluster already answering is left alone. Stop it with scripts/stop_slurm.sh.
# Prints "started" or "already running" last.
set -euo pipefail
PARTITION=debug
STATE=/var/lib/vlmflow-slurm  # pid files, logs, spool; stop_slurm.sh reads the pid files here
CONF=/etc/slurm/slurm.conf
MARK="# Written by vlmflow's scripts/start_slurm.sh: a one-node test cluster."

# Ours and answering; never a real cluster's partition of the same name.
if grep -qF "$MARK" "$CONF" 2>/dev/null \
  && sinfo --noheader --partition "$PARTITION" --format %a 2>/dev/null | grep -q up; then
  echo "already running"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "start_slurm.sh needs root (slurmd, munged, $CONF); run it with sudo" >&2
  exit 77
fi
command -v slurmctld >/dev/null || bash "$(dirname "$0")/install_system_packages.sh"
# Never overwrite a real cluster's configuration.
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "$CONF exists and was not written by this script; not touching it" >&2
  exit 1
fi
mkdir -p "$STATE/ctld" "$STATE/spool" /etc/slurm

# munge authenticates every SLURM message. Debian's package creates the key; make one if missing.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  runuser -u munge -- munged
  # Only a munged we started goes in our state folder, so stop_slurm.sh never stops the system's.
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi

# The node as slurmd sees it (cores, memory), less 10% of the memory for the system.
node=$(hostname -s)
cpus=$(nproc)
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$CONF" <<EOF
$MARK
ClusterName=vlmflow
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No slurmdbd: no accounting, so sacct has nothing to say; profiles read job states with squeue.
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# -c: start from a clean state (no jobs recovered from an earlier test run).
slurmctld -c
slurmd -c
for _ in $(seq 60); do
  if sinfo --noheader --partition "$PARTITION" --format %t 2>/dev/null | grep -qE "idle|mix|alloc"; then
    echo "started"
    exit 0
  fi
  sleep 1
done
echo "SLURM did not come up in 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
exit 1
