#!/usr/bin/env bash
# A real Slurm controller and node(s) on this machine, from Debian's packages, for trying
# sweeps before touching a cluster and for the `slurm` test tier.
#
#   slurm/local/start.sh                      # one node named after this host
#   BIOINSTRUCT_SLURM_NODES=2 slurm/local/start.sh   # two emulated nodes n1, n2 (multi-node jobs)
#   BIOINSTRUCT_SLURM_LIMITS="MaxArraySize=8" slurm/local/start.sh   # a site's limits (slurm.conf lines)
#   export SLURM_CONF=/tmp/bioinstruct-slurm/slurm.conf; sinfo; sbatch ...
#   slurm/local/stop.sh
#
# Everything lives under $BIOINSTRUCT_SLURM_DIR (default /tmp/bioinstruct-slurm): config,
# munge key and socket, pid files, logs, spool, state. Nothing outside it is changed except,
# as root: the Debian packages are installed when missing, and with several nodes their names
# are added to /etc/hosts (marked, removed by stop.sh) so torch can reach the first one.
# Idempotent: running daemons with the same config are left alone; a changed config (another
# node count) restarts them. The daemons run as the calling user, so no root is needed once
# the packages are there (fake GPUs need root: they are character devices).
set -euo pipefail

D=${BIOINSTRUCT_SLURM_DIR:-/tmp/bioinstruct-slurm}
NODES=${BIOINSTRUCT_SLURM_NODES:-1}
GPUS=${BIOINSTRUCT_SLURM_GPUS:-2}          # fake GPUs per node (gres), 0 for none
CTLD_PORT=${BIOINSTRUCT_SLURM_PORT:-16817}  # not 6817: never collide with a real controller
LIMITS=${BIOINSTRUCT_SLURM_LIMITS:-}        # slurm.conf settings, space-separated, e.g. MaxArraySize=8
HERE=$(cd "$(dirname "$0")" && pwd)
PACKAGES=(slurmctld slurmd slurm-client munge)
HOSTS_MARK="# bioinstruct local slurm ($D)"

log() { echo "slurm/local: $*" >&2; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Slurm or munge; as root: apt-get install ${PACKAGES[*]}"; exit 1
  fi
  log "installing ${PACKAGES[*]}"
  apt-get update -qq
  # policy-rc.d 101: the packages must not start their system daemons (we run our own).
  # A policy the machine already has is its own: leave it in place, and in charge.
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_names() {
  if [ "$NODES" -eq 1 ]; then hostname -s; else for i in $(seq 1 "$NODES"); do echo "n$i"; done; fi
}

write_config() {
  local host cpus mem_mb gres="" names
  host=$(hostname -s)
  cpus=$(nproc)
  # 80% of the memory, shared by the emulated nodes; DefMemPerCPU keeps jobs from taking a
  # whole node's memory each (which would make them run one at a time).
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 / NODES ))
  names=$(node_names | paste -sd, -)
  [ "$GPUS" -gt 0 ] && gres="Gres=gpu:$GPUS"
  cat >"$D/slurm.conf.new" <<EOF
# Written by slurm/local/start.sh: a local test cluster, not a production setup.
ClusterName=bioinstruct
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start again after 10 s instead of 120 s.
AuthInfo=socket=$D/munge/munge.socket,cred_expire=10
# No systemd and no cgroups here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# sacct -c reads finished jobs from this file without slurmdbd.
JobCompType=jobcomp/filetxt
JobCompLoc=$D/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem_mb / cpus ))
SchedulerType=sched/backfill
# Start a job as soon as it may run: no batch delay, and a scheduling pass every 2 s (not 30-60)
# so a requeued job starts again right after its BeginTime.
SchedulerParameters=batch_sched_delay=0,bf_interval=2,sched_interval=2
# Jobs that ignore SIGTERM are killed after 5 s, not 30.
KillWait=5
ReturnToService=2
MpiDefault=none
# Partition 'high' preempts jobs of 'debug' by requeueing them; they get their --signal first.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
# The emulated nodes claim the CPUs they are configured with, whatever this machine has.
SlurmdParameters=config_overrides
GresTypes=gpu
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/slurmd-%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
EOF
  if [ -n "$LIMITS" ]; then
    echo "# A site's limits (BIOINSTRUCT_SLURM_LIMITS)" >>"$D/slurm.conf.new"
    printf '%s\n' $LIMITS >>"$D/slurm.conf.new"
  fi
  local port=$((CTLD_PORT + 1))
  for name in $(node_names); do
    echo "NodeName=$name NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem_mb $gres State=UNKNOWN" \
      >>"$D/slurm.conf.new"
    port=$((port + 1))
  done
  cat >>"$D/slurm.conf.new" <<EOF
# GraceTime: a preempted job gets its --signal, then 20 s to save its state before the kill.
PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=20
PartitionName=high Nodes=$names MaxTime=INFINITE State=UP PriorityTier=2
EOF
  : >"$D/gres.conf.new"
  if [ "$GPUS" -gt 0 ]; then
    # gres files must be character devices; /dev/null's numbers (1,3) do no harm.
    mkdir -p "$D/dev"
    for i in $(seq 0 $((GPUS - 1))); do
      [ -c "$D/dev/gpu$i" ] || mknod "$D/dev/gpu$i" c 1 3
    done
    echo "Name=gpu File=$D/dev/gpu[0-$((GPUS - 1))]" >"$D/gres.conf.new"
  fi
}

add_hosts() {
  [ "$NODES" -gt 1 ] || return 0
  local missing=()
  for name in $(node_names); do getent hosts "$name" >/dev/null || missing+=("$name"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    log "node names ${missing[*]} do not resolve; add them to /etc/hosts as 127.0.0.1"; exit 1
  fi
  echo "127.0.0.1 ${missing[*]} $HOSTS_MARK" >>/etc/hosts
}

start_munge() {
  mkdir -p "$D/munge" && chmod 700 "$D/munge"
  if [ ! -s "$D/munge/munge.key" ]; then
    dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$D/munge/munge.key"
  fi
  alive "$D/munge/munged.pid" && return
  # --force: munged refuses root and a socket under the world-writable /tmp otherwise.
  munged --force --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
}

stop_slurm_daemons() { "$HERE/stop.sh" --slurm-only; }

main() {
  install_packages
  if [ "$GPUS" -gt 0 ] && [ "$(id -u)" -ne 0 ]; then
    log "fake GPUs need root (mknod); starting without (BIOINSTRUCT_SLURM_GPUS=0)"; GPUS=0
  fi
  mkdir -p "$D"/{run,log,state,spool}
  write_config
  add_hosts
  start_munge
  local changed=0
  cmp -s "$D/slurm.conf.new" "$D/slurm.conf" && cmp -s "$D/gres.conf.new" "$D/gres.conf" || changed=1
  if [ "$changed" -eq 1 ]; then
    # The saved state is kept: job ids keep counting up, so no log file name is reused.
    stop_slurm_daemons
    mv "$D/slurm.conf.new" "$D/slurm.conf"
    mv "$D/gres.conf.new" "$D/gres.conf"
  else
    rm -f "$D/slurm.conf.new" "$D/gres.conf.new"
  fi
  export SLURM_CONF=$D/slurm.conf
  local fresh=1
  alive "$D/run/slurmctld.pid" && fresh=0
  for pidfile in "$D"/run/slurmd-*.pid; do alive "$pidfile" && fresh=0; done
  alive "$D/run/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
  for name in $(node_names); do
    mkdir -p "$D/spool/slurmd-$name"
    alive "$D/run/slurmd-$name.pid" || slurmd -f "$SLURM_CONF" -N "$name"
  done
  local deadline=$((SECONDS + 60)) states
  until squeue -h >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "slurmctld does not answer; see $D/log/slurmctld.log"; exit 1; }
    sleep 0.2
  done
  if [ "$fresh" -eq 1 ]; then
    # No daemon was running, so no job can be: jobs the saved state still holds are left
    # from a session that ended without stop.sh (which cancels them), and a job it calls
    # running would hold its CPUs forever. A fresh start begins with an empty queue (job
    # ids keep counting up).
    scancel --user="$(id -un)" 2>/dev/null || true
  fi
  # Ready when every node is idle (or busy with jobs of this session).
  while :; do
    states=$(sinfo -h -N -p debug -o '%t' 2>/dev/null | sort -u | paste -sd, -) || true
    if [ -n "$states" ] && ! grep -qvE '^(idle|mix|alloc)$' <<<"${states//,/$'\n'}"; then break; fi
    if [ $SECONDS -ge $deadline ]; then
      log "nodes not ready after 60 s (states: ${states:-none}); see $D/log/"; exit 1
    fi
    sleep 0.3
  done
  log "ready: $NODES node(s) ($(node_names | paste -sd' ' -)), partitions debug and high (preempts debug)${LIMITS:+; $LIMITS}"
  echo "export SLURM_CONF=$SLURM_CONF"
}

main "$@"
