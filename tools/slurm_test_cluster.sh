#!/usr/bin/env bash
# A one-node slurm cluster on this machine, for the launcher tests (tests/test_slurm.py) and for trying the
# scripts_train/ launchers before a real cluster: slurmctld and slurmd on this host, CPUs = nproc, no GPUs, jobs may
# requeue themselves. Debian's slurm-wlm and munge packages, installed with apt-get when missing (needs root).
#   bash tools/slurm_test_cluster.sh start     # install if needed, configure, start; waits until the node is idle
#   bash tools/slurm_test_cluster.sh status    # sinfo of the running cluster
#   bash tools/slurm_test_cluster.sh stop      # stop slurmd, slurmctld and munged (the packages stay installed)
# It writes /etc/slurm/slurm.conf only when there is none or it wrote the one there (a real cluster's configuration
# is never touched; an already running slurm is used as it is). State and logs: /var/spool/slurm*, /var/log/slurm.
# When the cluster cannot be had, the reason goes to $STATE_DIR/unavailable, which the tests print when they skip.
set -euo pipefail
STATE_DIR=${EGOAGENT_SLURM_STATE:-/tmp/egoagent-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by egoagent tools/slurm_test_cluster.sh"
LOG_DIR=/var/log/slurm

say() { echo "[slurm-test-cluster] $*"; }
unavailable() {  # the reason, for the tests' skip message
  mkdir -p "$STATE_DIR" && echo "$*" > "$STATE_DIR/unavailable"
  say "unavailable: $*" >&2
  exit 1
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || unavailable "slurm-wlm and munge are not installed and installing them needs root"
  command -v apt-get >/dev/null || unavailable "slurm-wlm and munge are not installed and there is no apt-get"
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } \
    > "$STATE_DIR/apt.log" 2>&1 || unavailable "apt-get install slurm-wlm munge failed (see $STATE_DIR/apt.log)"
}

write_config() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    unavailable "$CONF exists and was not written by this script: not overwriting a real cluster's configuration"
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
  cat > "$CONF" <<EOF
$MARK: a one-node test cluster ($cpus CPUs, no GPUs)
ClusterName=egoagent-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# containers and CI machines have no usable cgroups: processes are tracked by parentage, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
# CPUs are what a job asks for (--cpus-per-task x tasks); no GPUs (jobs ask for --gpus-per-task=0)
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
# look at pending jobs every 2 s (default 60): a requeued job starts again soon after it may
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
JobRequeue=1
# a requeued job may start again after the job credential lifetime (slurm default 120 s; short here for the tests)
AuthInfo=cred_expire=10
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge && dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key \
    2>/dev/null; }
  local owner
  owner=$(id -u munge >/dev/null 2>&1 && echo munge || echo root)
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown "$owner" /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  chmod 755 /run/munge
  if [ "$owner" = munge ]; then
    runuser -u munge -- /usr/sbin/munged || unavailable "munged did not start"
  else
    /usr/sbin/munged --force || unavailable "munged did not start"
  fi
}

wait_idle() {
  local host
  host=$(hostname -s)
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
      idle*|mixed*|allocated*) say "node $host is $state ($(nproc) CPUs); sinfo:"; sinfo; rm -f "$STATE_DIR/unavailable"
                               return ;;
      down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  unavailable "the node did not become idle within 60 s (state '${state:-unknown}'; see $LOG_DIR/slurmd.log)"
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  mkdir -p "$STATE_DIR"
  if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; then
    say "slurm is already running"; wait_idle; return
  fi
  install_packages
  [ "$(id -u)" = 0 ] || unavailable "starting slurmctld and slurmd needs root"
  write_config
  start_munge
  running /run/slurmctld.pid || slurmctld || unavailable "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
  running /run/slurmd.pid || slurmd || unavailable "slurmd did not start (see $LOG_DIR/slurmd.log)"
  wait_idle
}

stop() {  # by the daemons' pid files
  for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    [ -s "$pidfile" ] || continue
    local pid
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && say "stopped $(basename "$pidfile" .pid) ($pid)"
  done
  return 0
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) scontrol ping && sinfo ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
