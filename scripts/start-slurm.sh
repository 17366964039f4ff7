#!/usr/bin/env bash
# Start a one-node Slurm cluster on this host (munge + slurmctld + slurmd from Debian).
# Converges: whatever ran before, afterwards the daemons run with the slurm.conf written here.
# Daemons already running with that configuration are left alone; daemons started with another
# one (by hand, by an older version of this script, or before the file changed) are stopped and
# started again, since `scontrol reconfigure` does not apply every parameter (AuthInfo's
# cred_expire, for one: without it a requeued job waits 120 s). Needs root. Used by .ci/run and
# by the Slurm tests' setup.
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
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq slurm-wlm munge >/dev/null
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
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$CONF"
  log "wrote $CONF (node $node, $cpus cpus, $mem_mb MB)"
fi
# Which daemons this script started, and with what: the configuration's hash and their pids,
# written after they start and compared on every run (daemons started otherwise do not match).
STAMP=/run/harness-slurm.stamp
conf_hash=$(sha256sum "$CONF" | cut -d' ' -f1)

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

# By process name, not pid file: daemons started with another configuration may keep theirs elsewhere.
daemon_pids() { pgrep -x "$1" || true; }

# the daemons' own pid files (the parent that daemonises exits, so pgrep's list moves for a while)
stamp() { echo "$conf_hash" "$(cat /run/slurmctld.pid 2>/dev/null)" "$(cat /run/slurmd.pid 2>/dev/null)"; }

running="$(daemon_pids slurmctld) $(daemon_pids slurmd)"
if [ -n "${running// /}" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" != "$(stamp)" ]; then
  log "Slurm daemons run with another configuration: restarting them"
  for daemon in slurmd slurmctld; do
    for pid in $(daemon_pids "$daemon"); do kill "$pid" 2>/dev/null || true; done
  done
  for _ in $(seq 1 100); do
    [ -z "$(daemon_pids slurmctld)$(daemon_pids slurmd)" ] && break
    sleep 0.2
  done
  for daemon in slurmd slurmctld; do
    for pid in $(daemon_pids "$daemon"); do
      log "$daemon ($pid) did not stop in 20 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    done
  done
  rm -f "$STAMP"
fi

if [ -z "$(daemon_pids slurmctld)" ]; then
  log "starting slurmctld"
  slurmctld
fi
if [ -z "$(daemon_pids slurmd)" ]; then
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
stamp >"$STAMP"
log "ready: node $node is $state"
