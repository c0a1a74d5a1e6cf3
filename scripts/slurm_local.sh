#!/usr/bin/env bash
# A one-node SLURM cluster on this (Debian) machine, for `make test-cluster`. Run as root.
#
#   scripts/slurm_local.sh start    # apt-get install slurm-wlm + munge if missing, write the config, start
#                                   # munged, slurmctld and slurmd, wait until the node is idle
#   scripts/slurm_local.sh stop     # stop those three daemons by the PIDs recorded at start
#   scripts/slurm_local.sh status   # sinfo + squeue
#
# The node is this machine under its own host name (which need not be `localhost`) with 90% of its memory and two
# SLURM CPUs per core (the test jobs are tiny and often wait, so two share a core instead of queueing); one
# partition `debug` (default, no time limit). Jobs are tracked per process (proctrack/linuxproc, no cgroups needed).
# State, logs and PID files live in $SLURM_LOCAL_DIR (default /var/lib/slurm-local); the config is written to
# /etc/slurm/slurm.conf, where every SLURM client (sbatch, squeue, submitit) finds it.
set -euo pipefail

STATE_DIR=${SLURM_LOCAL_DIR:-/var/lib/slurm-local}
CONF=/etc/slurm/slurm.conf
MARKER="# written by stablesr scripts/slurm_local.sh"

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: install slurm-wlm and munge with your package manager"
    echo "slurm_local.sh: installing slurm-wlm and munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || die "host name '$host' does not resolve (add it to /etc/hosts)"
    cpus=$(( 2 * $(nproc) ))
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away first"
    fi
    mkdir -p "$STATE_DIR"/{ctld,slurmd,log} /etc/slurm
    cat >"$CONF.tmp" <<EOF
$MARKER
ClusterName=stablesr-local
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"
    install_packages
    write_config
    if ! running /run/munge/munged.pid; then
        [[ -f /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
    fi
    running "$STATE_DIR/slurmctld.pid" || slurmctld -i
    running "$STATE_DIR/slurmd.pid" || slurmd
    local waited=0
    until sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; do
        ((waited++ < 60)) || { tail -20 "$STATE_DIR"/log/*.log >&2; die "the node did not become idle within 60 s"; }
        sleep 1
    done
    echo "slurm_local.sh: cluster up ($(sinfo -h -o '%n %c CPUs %m MB %t'))"
}

stop() {
    local pidfile pid
    for pidfile in "$STATE_DIR/slurmd.pid" "$STATE_DIR/slurmctld.pid" /run/munge/munged.pid; do
        running "$pidfile" || continue
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "slurm_local.sh: stopped $(basename "$pidfile" .pid) (pid $pid)"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo; squeue ;;
    *) die "usage: $0 start|stop|status" ;;
esac
