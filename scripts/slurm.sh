#!/usr/bin/env bash
# A single-node SLURM cluster with accounting, on this machine: what resdepth's SLURM tests run on.
#
#   scripts/slurm.sh up      install the packages if missing, write the configs, start munge, MariaDB,
#                            slurmdbd, slurmctld and slurmd; wait until the node is idle (about 10 s)
#   scripts/slurm.sh down    stop, by their PID files, the daemons `up` started (nothing else)
#   scripts/slurm.sh status  the partition and its node, as sinfo prints them
#
# For a Debian or Ubuntu machine where it runs as root and no SLURM is set up (a CI machine, a
# container): it refuses to replace a slurm.conf or slurmdbd.conf it did not write. One node named
# localhost with all CPUs and the memory less 1 GiB, one partition `cpu`, no GPUs, accounting in
# MariaDB (submitit reads job states with sacct). Logs and state: /var/lib/resdepth-slurm.
set -euo pipefail

STATE=/var/lib/resdepth-slurm
CONF=/etc/slurm
MARK="# written by resdepth's scripts/slurm.sh"
PACKAGES="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
DB_PASS=resdepth-slurm  # the slurm user of a MariaDB that listens on this machine only

say() { echo "slurm.sh: $*"; }
die() { echo "slurm.sh: $*" >&2; exit 2; }

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or fail naming WHAT and its log
wait_for() {
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what did not come up within ${limit} s (its log: $STATE/$what.log)"
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=0
    for c in slurmctld slurmd slurmdbd sbatch munged mariadbd; do
        command -v "$c" >/dev/null || missing=1
    done
    if [ $missing = 1 ]; then
        command -v apt-get >/dev/null || die "no apt-get: install SLURM ($PACKAGES) by hand"
        say "installing $PACKAGES"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES \
            >"$STATE/apt.log" 2>&1 || die "apt-get install failed (its log: $STATE/apt.log)"
    fi
}

write_configs() {
    for f in slurm.conf slurmdbd.conf; do
        if [ -e "$CONF/$f" ] && ! grep -qF "$MARK" "$CONF/$f"; then
            die "$CONF/$f exists and was not written by this script: it never replaces a cluster's configuration"
        fi
    done
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$CONF" "$STATE/ctld" "$STATE/d"
    chown slurm:slurm "$STATE" "$STATE/ctld"
    cat >"$CONF/slurm.conf" <<EOF
$MARK
ClusterName=resdepth
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets this much per CPU, not the whole node
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
# seconds between SIGTERM and SIGKILL when a job is cancelled or reaches its time limit
KillWait=10
NodeName=localhost NodeHostname=$(hostname) CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$CONF/slurmdbd.conf" <<EOF
$MARK
DbdHost=localhost
SlurmUser=slurm
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm "$CONF/slurmdbd.conf"
    chmod 600 "$CONF/slurmdbd.conf"
}

start_munge() {
    if running /run/munge/munged.pid; then return; fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -e /etc/munge/munge.key ] || die "no /etc/munge/munge.key (the munge package makes one)"
    runuser -u munge -- /usr/sbin/munged
    echo munge >>"$STATE/started"
}

start_mariadb() {
    if ! mariadb -e "select 1" >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >"$STATE/mariadb.log" 2>&1
        mariadbd --user=mysql --pid-file=/run/mysqld/resdepth.pid >>"$STATE/mariadb.log" 2>&1 &
        echo mariadb >>"$STATE/started"
        wait_for 60 mariadb mariadb -e "select 1"
    fi
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

up() {
    [ "$(id -u)" = 0 ] || die "run it as root: it installs packages and starts daemons"
    mkdir -p "$STATE"
    if running "$STATE/slurmd.pid" && running "$STATE/slurmctld.pid"; then
        say "already up"; status; return
    fi
    local t0=$SECONDS
    install_packages
    write_configs
    start_munge
    start_mariadb
    running "$STATE/slurmdbd.pid" || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -n list cluster format=cluster | grep -qw resdepth \
        || sacctmgr -i add cluster resdepth >/dev/null
    running "$STATE/slurmctld.pid" || slurmctld
    wait_for 60 slurmctld scontrol ping
    running "$STATE/slurmd.pid" || slurmd -N localhost
    # a node that was up before `down` comes back as DOWN until told otherwise
    scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
    wait_for 60 slurmd bash -c 'sinfo -h -N -o %t | grep -qE "^(idle|mix)"'
    say "up in $((SECONDS - t0)) s: partition cpu, node localhost ($(nproc) CPUs)"
}

down() {
    local name
    for name in slurmd slurmctld slurmdbd mariadb munge; do
        local pid_file="$STATE/$name.pid"
        [ $name = munge ] && pid_file=/run/munge/munged.pid
        [ $name = mariadb ] && pid_file=/run/mysqld/resdepth.pid
        if [ $name = mariadb ] || [ $name = munge ]; then  # only what `up` started
            grep -qx $name "$STATE/started" 2>/dev/null || continue
        fi
        if running "$pid_file"; then
            local pid; pid=$(cat "$pid_file")
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            say "stopped $name ($pid)"
        fi
    done
    rm -f "$STATE/started"
}

status() { sinfo -N -o "%P %N %t %c CPUs %m MiB"; }

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: scripts/slurm.sh up | down | status" ;;
esac
