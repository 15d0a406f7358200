#!/usr/bin/env bash
# Stop the local cluster slurm/local/start.sh started: its jobs are cancelled, then its
# daemons are stopped by their pid files in $BIOINSTRUCT_SLURM_DIR (default
# /tmp/bioinstruct-slurm). No other process is signalled.
#
#   slurm/local/stop.sh            # cancels its jobs, stops slurmd(s), slurmctld, munged and
#                                  # removes the /etc/hosts lines start.sh added
#   slurm/local/stop.sh --purge    # the same, then remove the whole state folder
#   slurm/local/stop.sh --slurm-only   # only the Slurm daemons; jobs and munged go on (start.sh,
#                                      # on a new config)
#
# Idempotent: a pid file whose process is gone is removed quietly.
set -euo pipefail

D=${BIOINSTRUCT_SLURM_DIR:-/tmp/bioinstruct-slurm}
HOSTS_MARK="# bioinstruct local slurm ($D)"
mode=${1:-}

# Signal the process in a pid file if it is still the daemon we started (pids are reused).
stop_pidfile() {
  local pidfile=$1 name=$2 pid
  [ -s "$pidfile" ] || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pidfile"
}

# A job left running would outlive its slurmd and hang; on a full stop, cancel the jobs of
# this local cluster (SLURM_CONF names it) and let them end first.
if [ "$mode" != --slurm-only ] && [ -s "$D/run/slurmctld.pid" ] && kill -0 "$(cat "$D/run/slurmctld.pid")" 2>/dev/null; then
  export SLURM_CONF=$D/slurm.conf
  scancel --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 1 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
fi

for pidfile in "$D"/run/slurmd-*.pid; do
  [ -e "$pidfile" ] && stop_pidfile "$pidfile" slurmd
done
stop_pidfile "$D/run/slurmctld.pid" slurmctld
[ "$mode" = --slurm-only ] && exit 0
stop_pidfile "$D/munge/munged.pid" munged

if [ -w /etc/hosts ] && grep -qF "$HOSTS_MARK" /etc/hosts; then
  grep -vF "$HOSTS_MARK" /etc/hosts >/etc/hosts.bioinstruct-tmp || true
  cat /etc/hosts.bioinstruct-tmp >/etc/hosts && rm -f /etc/hosts.bioinstruct-tmp
fi
[ "$mode" = --purge ] && rm -rf "$D"
echo "slurm/local: stopped" >&2
