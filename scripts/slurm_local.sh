#!/usr/bin/env bash
# A throw-away single-node Slurm cluster on localhost for tests (batch sweeps as job arrays).
#
#   scripts/slurm_local.sh start  [DIR]   # prints `export SLURM_CONF=DIR/slurm.conf` on stdout
#   scripts/slurm_local.sh status [DIR]   # sinfo/squeue; exit 1 when the cluster is not up
#   scripts/slurm_local.sh stop   [DIR]   # cancels its jobs, kills exactly its own daemons
#
# Everything lives under DIR (default /tmp/mcompress-slurm): a fresh munge key and its own munged
# (socket DIR/munge.socket), slurm.conf, slurmctld state, slurmd spool, pid and log files. The
# system /etc/slurm, /etc/munge and any system munged are never read or touched. Ports are picked
# free at start (override: SLURM_LOCAL_CTLD_PORT, SLURM_LOCAL_SLURMD_PORT), so several clusters
# can coexist. Progress goes to stderr, so `eval "$(scripts/slurm_local.sh start DIR)"` works.
# Clients (sbatch, squeue, scontrol, sinfo, scancel) need only SLURM_CONF; they find munged
# through AuthInfo=socket=... in that file. No accounting: sacct does not work, use squeue,
# `scontrol show job` (kept MinJobAge=300 s after the end) or the job's output files.
# Needs root (slurmd launches jobs) and the Debian packages slurm-wlm and munge.
# Environment: SLURM_LOCAL_TIMEOUT (seconds to wait for the node to be idle, default 60).
set -euo pipefail

cmd=${1:-}
DIR=${2:-/tmp/mcompress-slurm}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}

die() { echo "[slurm_local] error: $*" >&2; exit 1; }
log() { echo "[slurm_local] $*" >&2; }
usage() { echo "usage: $0 start|stop|status [DIR]" >&2; exit 2; }

[[ "$cmd" == start || "$cmd" == stop || "$cmd" == status ]] || usage
[[ "$DIR" != *[[:space:]]* ]] || die "DIR must not contain whitespace: '$DIR'"
DIR=$(realpath -m -- "$DIR")
[[ "$DIR" != / ]] || die "refusing DIR=/"

CONF=$DIR/slurm.conf
SOCK=$DIR/munge.socket
MUNGE_DIR=$DIR/munge
RUN=$DIR/run
LOGS=$DIR/log
CTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
MUNGE_PID=$MUNGE_DIR/munged.pid
export SLURM_CONF=$CONF

# pid_of FILE ARG: the pid in FILE if that process is alive and one of its arguments is exactly ARG
# (our config or socket path), so a recycled pid or a system daemon is never mistaken for ours.
pid_of() {
  local f=$1 want=$2 pid a
  [[ -r "$f" ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
  while IFS= read -r -d '' a; do
    if [[ "$a" == "$want" ]]; then echo "$pid"; return 0; fi
  done <"/proc/$pid/cmdline"
  return 1
}
ctld_pid() { pid_of "$CTLD_PID" "$CONF"; }
slurmd_pid() { pid_of "$SLURMD_PID" "$CONF"; }
munge_pid() { pid_of "$MUNGE_PID" "--socket=$SOCK"; }

# stop_all NAME=PID...: SIGTERM to all at once (each takes 1-2 s to exit), SIGKILL after 10 s.
stop_all() {
  local i np name pid
  for np in "$@"; do kill -TERM "${np#*=}" 2>/dev/null || true; done
  for ((i = 0; i < 100; i++)); do
    for np in "$@"; do kill -0 "${np#*=}" 2>/dev/null && break; done || break
    sleep 0.1
  done
  for np in "$@"; do
    name=${np%=*} pid=${np#*=}
    if kill -0 "$pid" 2>/dev/null; then log "$name ($pid) ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
    else log "stopped $name ($pid)"; fi
  done
}

# Job processes of this cluster left behind by a dead slurmctld/slurmd: the slurmstepds with a file
# or working directory under DIR (they keep slurmd.log open), and all their descendants.
our_job_procs() {
  local p fd pids=() pid ppid
  for p in /proc/[0-9]*; do
    [[ "$(cat "$p/comm" 2>/dev/null)" == slurmstepd ]] || continue
    for fd in "$p/cwd" "$p"/fd/*; do
      if [[ "$(readlink "$fd" 2>/dev/null)" == "$DIR/"* ]]; then pids+=("${p#/proc/}"); break; fi
    done
  done
  ((${#pids[@]})) || return 0
  local -A keep=()
  for pid in "${pids[@]}"; do keep[$pid]=1; done
  local changed=1
  while ((changed)); do  # close the set under "child of"
    changed=0
    while read -r pid ppid; do
      if [[ -n "${keep[$ppid]:-}" && -z "${keep[$pid]:-}" ]]; then keep[$pid]=1; changed=1; fi
    done < <(ps -e -o pid=,ppid=)
  done
  echo "${!keep[@]}"
}

# Logged on every start here and harmless: the PMIx library is not installed (--no-install-recommends;
# MpiDefault=none), and a fresh StateSaveLocation has no state files yet.
BENIGN='pmix|MPI: Cannot create context|state file|Trying backup state|No reservation state|invalid request msg type'
show_logs() {
  local f
  for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log" "$MUNGE_DIR/munged.log" "$LOGS/slurmctld.stderr" "$LOGS/slurmd.stderr" "$LOGS/munged.stderr"; do
    [[ -s "$f" ]] || continue
    echo "----- $f: errors (known-harmless ones dropped), then the last lines -----" >&2
    { grep -iE 'error|fatal' "$f" | grep -vE "$BENIGN" | tail -n 20 || true; echo "  ..."; tail -n 10 "$f"; } >&2
  done
}

do_stop() {
  local pid i
  if [[ -f "$CONF" ]] && ctld_pid >/dev/null; then
    # Cancel our jobs first so their slurmstepds exit cleanly (scancel only reaches this cluster).
    squeue -h -o %A 2>/dev/null | xargs -r scancel --quiet 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do [[ -z "$(squeue -h -o %A 2>/dev/null)" ]] && break; sleep 0.2; done
  fi
  local daemons=() orphans
  orphans=$(our_job_procs)
  if pid=$(slurmd_pid); then daemons+=("slurmd=$pid"); fi
  if pid=$(ctld_pid); then daemons+=("slurmctld=$pid"); fi
  if pid=$(munge_pid); then daemons+=("munged=$pid"); fi
  ((${#daemons[@]} == 0)) || stop_all "${daemons[@]}"
  if [[ -n "$orphans" ]]; then
    log "killing leftover job processes: $orphans"
    # shellcheck disable=SC2086
    kill -KILL $orphans 2>/dev/null || true
  fi
  # Runtime state goes; slurm.conf, logs and anything the caller wrote into DIR stay.
  rm -rf "$RUN" "$DIR/state" "$DIR/spool" "$MUNGE_DIR/munge.key" "$MUNGE_DIR/munged.seed" "$SOCK" "$SOCK.lock"
}

node_state() { { sinfo -h -N -o '%T' 2>/dev/null || true; } | head -n 1; }

do_status() {
  local ok=0 name fn pid
  for name in munged slurmctld slurmd; do
    case $name in munged) fn=munge_pid ;; slurmctld) fn=ctld_pid ;; slurmd) fn=slurmd_pid ;; esac
    if pid=$($fn); then log "$name running (pid $pid)"; else log "$name not running"; ok=1; fi
  done
  if ((ok == 0)); then
    sinfo -N -l || ok=1
    squeue || ok=1
  fi
  return $ok
}

free_ports() {
  python3 - <<'EOF'
import socket
s = [socket.socket() for _ in range(2)]
for x in s:
    x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
EOF
}

do_start() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd launches jobs; SlurmUser=root)"
  local b
  for b in munged slurmctld slurmd sinfo sbatch; do command -v "$b" >/dev/null || die "$b not found: apt-get install slurm-wlm munge"; done
  ((${#SOCK} < 100)) || die "munge socket path too long for a unix socket: $SOCK"

  # Idempotent: a healthy cluster of ours is reused as it is.
  if ctld_pid >/dev/null && slurmd_pid >/dev/null && munge_pid >/dev/null && [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]]; then
    log "already running in $DIR"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  do_stop  # whatever half of it is left over

  local t0=$SECONDS
  rm -rf "$LOGS"
  mkdir -p "$DIR" "$MUNGE_DIR" "$RUN" "$LOGS" "$DIR/state" "$DIR/spool"
  # munged: the socket directory must be searchable by all and writable by no one else; the key
  # readable by its owner only (munged runs as root here, the same user as SlurmUser).
  chmod 0755 "$DIR"
  chmod 0700 "$MUNGE_DIR" "$DIR/state" "$DIR/spool"
  rm -f "$MUNGE_DIR/munge.key"
  dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$MUNGE_DIR/munge.key"
  : >"$MUNGE_DIR/munged.log"
  # --force: munged also wants every directory above the socket searchable by all (pytest's
  # /tmp/pytest-of-root is 0700); those are not ours to change, and only root needs this socket.
  if ! munged --force --socket="$SOCK" --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_PID" \
      --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" 2>"$LOGS/munged.stderr" 9>&-; then
    show_logs; die "munged failed to start"
  fi
  munge -S "$SOCK" -n </dev/null | unmunge -S "$SOCK" >/dev/null 2>&1 || { show_logs; die "munge round trip through $SOCK failed"; }

  # Hardware as slurmd sees it: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105".
  local hw node mem cpus ctld_port slurmd_port host
  hw=$({ slurmd -C 2>/dev/null || true; } | head -n 1)
  [[ "$hw" == NodeName=* ]] || die "slurmd -C printed no node line: $hw"
  node=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$hw")
  mem=$(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$hw")
  cpus=$(sed -nE 's/.*CPUs=([0-9]+).*/\1/p' <<<"$hw")
  host=$(hostname -s)
  read -r ctld_port slurmd_port <<<"$(free_ports || true)"
  ctld_port=${SLURM_LOCAL_CTLD_PORT:-$ctld_port}
  slurmd_port=${SLURM_LOCAL_SLURMD_PORT:-$slurmd_port}
  [[ "$ctld_port" =~ ^[0-9]+$ && "$slurmd_port" =~ ^[0-9]+$ ]] || die "could not pick free TCP ports (python3 missing?)"
  # cons_tres needs per-job memory defaults, or every job would take the whole node's memory.
  local select="SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))"
  if compgen -G '/usr/lib/*/slurm-wlm/select_linear.so' >/dev/null && ! compgen -G '/usr/lib/*/slurm-wlm/select_cons_tres.so' >/dev/null; then
    select="SelectType=select/linear"
  fi

  cat >"$CONF" <<EOF
# Generated by scripts/slurm_local.sh for a test run; removed state on stop. Do not edit.
ClusterName=mcompress-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
MpiDefault=none
# No cgroups: process tracking by parent pid, no task binding, no cgroup.conf needed.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
$select
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$node NodeAddr=127.0.0.1 ${hw#NodeName="$node" } State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmd -C ends with UpTime=..., which is not a node option.
  sed -i -E '/^NodeName=/ s/ UpTime=[^ ]+//' "$CONF"

  # -c: no state from an earlier run; -i: ignore errors reading it.
  slurmctld -c -i -f "$CONF" 2>"$LOGS/slurmctld.stderr" 9>&- || { show_logs; die "slurmctld failed to start"; }
  slurmd -f "$CONF" -N "$node" 2>"$LOGS/slurmd.stderr" 9>&- || { show_logs; die "slurmd failed to start"; }

  local state=""
  while ((SECONDS - t0 < TIMEOUT)); do
    state=$(node_state)
    [[ "$state" == idle ]] && break
    if ! ctld_pid >/dev/null || ! slurmd_pid >/dev/null; then
      sleep 0.5  # pid files appear after the fork
      if ! ctld_pid >/dev/null || ! slurmd_pid >/dev/null; then show_logs; do_stop; die "a Slurm daemon exited during start-up"; fi
    fi
    sleep 0.5
  done
  if [[ "$state" != idle ]]; then
    sinfo -N -l >&2 || true
    show_logs; do_stop; die "node $node not idle after ${TIMEOUT} s (state '${state:-none}')"
  fi
  log "cluster up in $DIR in $((SECONDS - t0)) s: node $node ($cpus CPUs, ${mem} MB), ports $ctld_port/$slurmd_port"
  echo "export SLURM_CONF=$CONF"
}

# One start/stop at a time per DIR (the daemons are started with fd 9 closed, so they do not hold it).
if [[ "$cmd" == stop && ! -d "$DIR" ]]; then log "nothing to stop in $DIR"; exit 0; fi
if [[ "$cmd" != status ]]; then
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "another slurm_local.sh holds $DIR/.lock"
fi
case $cmd in
  start) do_start ;;
  stop) do_stop; log "stopped (DIR $DIR kept: slurm.conf, logs, outputs)" ;;
  status) do_status ;;
esac
