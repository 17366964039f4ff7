#!/usr/bin/env bash
# Start a one-node Slurm cluster on this host (munge + slurmctld + slurmd from Debian).
# Idempotent: safe to run twice; it only starts what is not running and rewrites slurm.conf
# only when its content changes. Needs root. Used by .ci/run and by the Slurm tests' setup.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
WAIT_S=${SLURM_START_TIMEOUT:-60}

log() { echo "start-slurm: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root"; exit 1
fi

missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

node=$(hostname -s)
cpus=$(nproc)
# Leave a tenth of the memory to the system and the Docker engine.
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
new_conf=$(cat <<EOF
# Written by scripts/start-slurm.sh: a one-node cluster for harness tests and CI.
ClusterName=harness
SlurmctldHost=$node
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# No slurmdbd here: keep finished jobs visible to squeue for an hour instead.
MinJobAge=3600
JobRequeue=1
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=5
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=10
InactiveLimit=0
SlurmdTimeout=300
NodeName=$node CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$CONF"
  conf_changed=1
  log "wrote $CONF (node $node, $cpus cpus, $mem_mb MB)"
fi

# munge: a key, a socket directory, the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! pid_alive /run/slurmctld.pid; then
  log "starting slurmctld"
  slurmctld
elif [ "$conf_changed" -eq 1 ]; then
  scontrol reconfigure || true
fi
if ! pid_alive /run/slurmd.pid; then
  log "starting slurmd"
  slurmd
fi

# Wait until the node is idle (or busy with jobs: mixed/allocated also means it works).
deadline=$((SECONDS + WAIT_S))
while :; do
  state=$(sinfo -h -N -n "$node" -o '%t' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mix|alloc) break ;;
    down*|drain*|drng*)
      scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if [ $SECONDS -ge $deadline ]; then
    log "node $node not ready after ${WAIT_S}s (state: ${state:-no answer}); see $LOG_DIR"
    exit 1
  fi
  sleep 0.5
done
log "ready: node $node is $state"
