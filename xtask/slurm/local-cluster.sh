#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for testing `cargo xtask reproduce --emit slurm`
# against a real slurmctld/slurmd (`cargo xtask slurm-test` starts it through this script).
#
#   xtask/slurm/local-cluster.sh start   # install (Debian/Ubuntu, root), configure, start; wait for an idle node
#   xtask/slurm/local-cluster.sh stop    # stop the daemons this script started
#   xtask/slurm/local-cluster.sh status  # sinfo
#
# Made for containers and CI machines: no systemd (the daemons are started directly and stopped by
# their pid files), no cgroups (proctrack/linuxproc, task/none: a container usually cannot delegate
# cgroup controllers to slurmd), no accounting database (slurmdbd is a MariaDB install of its own;
# jobcomp/filetxt records every finished job's state in a text file instead, which is what the test
# reads, since sacct needs slurmdbd). The daemons run as root: this is a throwaway test cluster, and
# it spares the spool and log folders an ownership dance.
#
# Environment: SLURM_LOCAL_CPUS (default: nproc) sets the node's CPUs, SLURM_LOCAL_PARTITION
# (default: debug) the partition's name.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOG=/var/log/slurm
RUN=/run/kdlora-slurm
JOBCOMP="$LOG/jobcomp.log"
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

install_packages() {
    local missing=()
    for bin in munged slurmctld slurmd sinfo sbatch; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; run as root to install them with apt-get"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    echo "local-cluster: installing slurmctld slurmd slurm-client munge (apt-get)" >&2
    # Not every image has fresh package lists; update only when the install fails without.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null
    fi
}

write_config() {
    local host cpus
    # slurmctld refuses to start unless SlurmctldHost is this machine's short name, and slurmd
    # finds its NodeName the same way.
    host="$(hostname -s)"
    cpus="${SLURM_LOCAL_CPUS:-$(nproc)}"
    mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOG" "$RUN"
    cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by kdlora's xtask/slurm/local-cluster.sh: a one-node test cluster.
ClusterName=kdlora-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups in a container: track processes by their parent ids, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Every finished job (each array task) with its state; sacct would need slurmdbd.
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
# Cores are the consumable resource, so one-CPU array tasks run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
# Keep finished jobs visible to scontrol for a while (the test reads their exit codes).
MinJobAge=3600
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # The Debian package may leave a cgroup.conf expecting systemd's cgroup tree; nothing here
    # uses cgroups, and a stale file only produces confusing warnings.
    rm -f "$CONF_DIR/cgroup.conf"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    su -s /bin/sh munge -c "/usr/sbin/munged" || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munge does not answer (see /var/log/munge/munged.log)"
}

running() {
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    [ "$(id -u)" -eq 0 ] || die "start needs root (it installs packages and starts the daemons)"
    install_packages
    write_config
    start_munge
    # A restart must not pick up a previous cluster's jobs.
    if ! running "$RUN/slurmctld.pid"; then
        /usr/sbin/slurmctld -c || die "slurmctld did not start (see $LOG/slurmctld.log)"
    fi
    if ! running "$RUN/slurmd.pid"; then
        /usr/sbin/slurmd || die "slurmd did not start (see $LOG/slurmd.log)"
    fi
    local state=""
    for _ in $(seq 1 120); do
        state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)"
        case "$state" in
            idle | mixed | allocated) break ;;
            # After a restart a node can stay down until told otherwise.
            down* | drain*) scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    case "$state" in
        idle | mixed | allocated) ;;
        *) die "the node is not idle after 2 minutes (state: ${state:-none}); see $LOG/slurmctld.log and $LOG/slurmd.log" ;;
    esac
    echo "local-cluster: up, partition $PARTITION, jobcomp log $JOBCOMP" >&2
    sinfo
}

stop() {
    for daemon in slurmd slurmctld; do
        if running "$RUN/$daemon.pid"; then
            kill "$(cat "$RUN/$daemon.pid")"
        fi
    done
    echo "local-cluster: slurmd and slurmctld stopped (munged left running)" >&2
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) die "usage: $0 start|stop|status" ;;
esac
