#!/usr/bin/env bash
# A throw-away single-node SLURM cluster (with accounting) under one directory, no systemd.
#
#   scripts/slurm-cluster.sh start DIR    boots munged, mariadbd, slurmdbd, slurmctld -D, slurmd -D
#   scripts/slurm-cluster.sh status DIR   sinfo + whether each daemon is alive
#   scripts/slurm-cluster.sh stop DIR     cancels all jobs, kills everything this cluster started
#
# DIR may also come from $FINETUNE_SLURM_DIR. `start` prints `export ...` lines (SLURM_CONF) to
# eval; the same lines are in DIR/env.sh. Ports are picked free at start, so two clusters (two
# test sessions) never collide, and nothing uses the default ports or /etc. Every daemon and job of
# the cluster carries FT_SLURM_CLUSTER_DIR=DIR (or SLURM_CONF=DIR/etc/slurm.conf) in its
# environment, which is how `stop` finds exactly its own processes.
#
# Facts this relies on (measured on Debian 12, slurm 22.05): the munge socket folder needs mode
# 711; slurmdbd needs StorageHost=127.0.0.1; slurmctld reaches slurmdbd only with
# AccountingStoragePass=<munge socket>; DefMemPerCPU lets jobs share the node; MailProg=/bin/true.
set -euo pipefail

cmd=${1:-}
DIR=${2:-${FINETUNE_SLURM_DIR:-}}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start|stop|status DIR (or FINETUNE_SLURM_DIR)" >&2; exit 2; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CONF=$DIR/etc/slurm.conf
export FT_SLURM_CLUSTER_DIR=$DIR
export SLURM_CONF=$CONF
HOST=$(hostname -s)

free_ports() {  # N free TCP ports on 127.0.0.1
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

alive() { [ -f "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
      echo "slurm-cluster: $what did not come up within ${t}s; logs in $DIR/log" >&2
      tail -n 20 "$DIR"/log/*.log >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

spawn() {  # spawn NAME COMMAND...: run in the background in its own session, remember its pid
  local name=$1; shift
  setsid "$@" >>"$DIR/log/$name.out" 2>&1 < /dev/null &
  echo $! > "$DIR/run/$name.pid"
}

our_pids() {  # every process whose environment names this cluster (daemons, slurmstepd, jobs)
  local p env
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    env=$( { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null) || continue
    if grep -qxF "FT_SLURM_CLUSTER_DIR=$DIR" <<<"$env" || grep -qxF "SLURM_CONF=$CONF" <<<"$env"; then
      echo "$p"
    fi
  done
}

write_configs() {
  read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT < <(free_ports 4)
  local sock=$DIR/munge/munge.socket.2
  cat > "$CONF" <<EOF
ClusterName=ftest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$DIR/run/slurmd.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/etc/plugstack.conf
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$sock
JobCompType=jobcomp/none
MailProg=/bin/true
MaxArraySize=1001
MaxJobCount=20000
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=60
SlurmctldParameters=enable_configless
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  : > "$DIR/etc/plugstack.conf"
  cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$sock
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.daemon.pid
LogFile=$DIR/log/slurmdbd.log
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  echo "$DB_PORT" > "$DIR/run/db.port"
}

start() {
  if alive slurmctld; then echo "slurm-cluster: already running in $DIR" >&2; cat "$DIR/env.sh"; return 0; fi
  mkdir -p "$DIR"/{etc,run,log,state,spool,munge,mysql}
  chmod 711 "$DIR/munge"
  write_configs
  local sock=$DIR/munge/munge.socket.2 db_port
  db_port=$(cat "$DIR/run/db.port")

  [ -f "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
  spawn munged munged -F --force --socket="$sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.daemon.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"

  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" --user=root --auth-root-authentication-method=normal \
      --skip-test-db >>"$DIR/log/mariadb-install.out" 2>&1
  fi
  spawn mariadbd mariadbd --no-defaults --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" \
    --port="$db_port" --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.daemon.pid" --user=root \
    --skip-grant-tables --innodb-buffer-pool-size=32M --log-error="$DIR/log/mariadbd.log"
  wait_for 30 munged munge -n --socket="$sock"
  wait_for 60 mariadbd mariadb-admin --no-defaults --protocol=tcp --host=127.0.0.1 --port="$db_port" ping

  spawn slurmdbd slurmdbd -D  # reads slurmdbd.conf beside $SLURM_CONF
  wait_for 30 slurmdbd sacctmgr -i list cluster
  sacctmgr -i add cluster ftest >/dev/null 2>&1 || true
  spawn slurmctld slurmctld -D -i -f "$CONF"
  wait_for 30 slurmctld scontrol ping
  spawn slurmd slurmd -D -f "$CONF"
  wait_for 30 "slurmd (node idle)" bash -c "sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'"
  printf 'export SLURM_CONF=%q\nexport FINETUNE_SLURM_DIR=%q\n' "$CONF" "$DIR" > "$DIR/env.sh"
  cat "$DIR/env.sh"
}

stop() {
  if [ -f "$CONF" ] && alive slurmctld; then
    timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  local name
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    [ -f "$DIR/run/$name.pid" ] && kill -TERM "$(cat "$DIR/run/$name.pid")" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local left=0
    for name in slurmd slurmctld slurmdbd mariadbd munged; do alive "$name" && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.2
  done
  local p
  for p in $(our_pids); do kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$DIR"/run/*.pid
  echo "slurm-cluster: stopped ($DIR)" >&2
}

status() {
  local name rc=0
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if alive "$name"; then echo "$name: running"; else echo "$name: stopped"; rc=1; fi
  done
  [ $rc -eq 0 ] && sinfo
  return $rc
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status DIR" >&2; exit 2 ;;
esac
