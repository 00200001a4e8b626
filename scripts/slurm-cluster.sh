#!/usr/bin/env bash
# A throw-away SLURM cluster (with accounting) under one directory, no systemd: one node, or N
# nodes on one machine, each in its own network and UTS namespace.
# The empty MariaDB data dir is made once and copied (cache: $FT_SLURM_CACHE, default
# ~/.cache/finetune-slurm-cluster).
#
#   scripts/slurm-cluster.sh start DIR [--nodes N]   boots munged, mariadbd, slurmdbd, slurmctld -D and
#                                                    N slurmd -D (default 1)
#   scripts/slurm-cluster.sh status DIR              sinfo + whether each daemon is alive
#   scripts/slurm-cluster.sh stop DIR                cancels all jobs, ends everything this cluster started,
#                                                    removes its namespaces and links
#   scripts/slurm-cluster.sh kill-node DIR I         (--nodes N) node I is lost: SIGKILL to every process in
#                                                    its namespace (slurmd, slurmstepd, the job's tasks)
#   scripts/slurm-cluster.sh start-node DIR I        (--nodes N) starts node I's slurmd again and waits
#                                                    until slurmctld has the node back in service
#
# DIR may also come from $FINETUNE_SLURM_DIR. `start` prints `export ...` lines (SLURM_CONF) to
# eval; the same lines are in DIR/env.sh. Ports are picked free at start, so two clusters (two
# test sessions) never collide, and nothing uses the default ports or /etc.
#
# What `stop` ends: every daemon is started by a keeper (scripts/slurm-cluster-keeper.py, pid in
# DIR/run/keeper.pid) that is a child subreaper, so every process of the cluster, down to job steps
# and helpers a job detached with setsid, stays its descendant; `stop` ends the daemons by their
# pid files, then the keeper kills whatever is left below it. Nothing is found by name or by
# environment: a shell that sourced env.sh, and everything it runs, is left alone.
#
# --nodes N (N >= 2): nodes ftnode1..ftnodeN, each slurmd in its own network namespace
# (ft-HASH-nodeI) and UTS namespace (hostname ftnodeI) with its own mount namespace that shows
# DIR/etc/hosts as /etc/hosts, attached by a veth pair (ftvHASHnI) to a bridge (ftbHASH) that
# carries 10.X.Y.1/24 on this host, where slurmctld listens; node I is 10.X.Y.(10+I). HASH comes
# from DIR and X.Y from HASH (the next free /24 if a route already covers it), so concurrent
# clusters differ; nothing is routed beyond the bridge. munged runs once: every node uses its
# socket, i.e. the one shared key. Refuses (exit 3) where namespaces or bridges cannot be made.
#
# Facts this relies on (measured on Debian 12, slurm 22.05): the munge socket folder needs mode
# 711; slurmdbd needs StorageHost=127.0.0.1; slurmctld reaches slurmdbd only with
# AccountingStoragePass=<munge socket>; DefMemPerCPU lets jobs share the node; MailProg=/bin/true;
# `ip netns exec` + `unshare -u -m` give a node its own hostname and /etc/hosts; a veth's host end
# disappears asynchronously after its namespace is deleted (so we delete it explicitly and wait).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR [--nodes N] | kill-node|start-node DIR I (DIR may come from FINETUNE_SLURM_DIR)" >&2; exit 2; }
cmd=${1:-}
[ $# -gt 0 ] && shift
DIR=${FINETUNE_SLURM_DIR:-}
NODES=
positional=()
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) [ $# -ge 2 ] || usage; NODES=$2; shift 2 ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    -*) usage ;;
    *) positional+=("$1"); shift ;;
  esac
done
NODE=
case $cmd in
  kill-node|start-node)
    [ ${#positional[@]} -ge 1 ] || usage
    NODE=${positional[-1]}; unset 'positional[-1]'
    case $NODE in ''|*[!0-9]*) echo "slurm-cluster: $cmd: the node number, not '$NODE'" >&2; exit 2 ;; esac ;;
esac
[ ${#positional[@]} -le 1 ] || usage
[ ${#positional[@]} -eq 0 ] || DIR=${positional[0]}
[ -n "$cmd" ] && [ -n "$DIR" ] || usage
if [ -n "$NODES" ]; then
  case $NODES in ''|*[!0-9]*) echo "slurm-cluster: --nodes must be a number from 1 to 200, not '$NODES'" >&2; exit 2 ;; esac
  [ "$NODES" -ge 1 ] && [ "$NODES" -le 200 ] || { echo "slurm-cluster: --nodes must be from 1 to 200" >&2; exit 2; }
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF
HOST=$(hostname -s)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HASH=$(printf %s "$DIR" | sha1sum | cut -c1-8)
BRIDGE=ftb$HASH

free_ports() {  # N free TCP ports on 127.0.0.1
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive() { pid_alive "$DIR/run/$1.pid"; }
node_count() { cat "$DIR/run/nodes" 2>/dev/null || echo 1; }
node_name() { if [ "$(node_count)" -gt 1 ]; then echo "ftnode$1"; else echo slurmd; fi; }
daemons() {  # the pid-file names of this cluster's daemons, slurmd(s) first
  local i n; n=$(node_count)
  if [ "$n" -gt 1 ]; then for i in $(seq "$n"); do echo "slurmd-ftnode$i"; done; else echo slurmd; fi
  echo slurmctld slurmdbd mariadbd munged
}

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

# --- the network of a multi-node cluster --------------------------------------------------------

pick_subnet() {  # 10.X.Y from HASH; the next /24 when a route of this host already covers it
  local x=$((16#${HASH:0:2} % 96 + 128)) y=$((16#${HASH:2:2})) i
  for i in $(seq 0 255); do
    local net="10.$x.$(((y + i) % 256))"
    if [ -z "$(ip -4 route show to match "$net.0/24" | grep -v '^default')" ] &&
       [ -z "$(ip -4 route show root "$net.0/24")" ] &&
       ! ip -4 -o addr show | grep -qF " $net."; then
      echo "$net"; return 0
    fi
  done
  echo "slurm-cluster: no free /24 under 10.$x.0.0/16 for the node bridge" >&2
  return 1
}

net_down() {  # remove the namespaces, links and bridge named in run/net.env (idempotent)
  [ -f "$DIR/run/net.env" ] || return 0
  local ns veth pid
  # shellcheck disable=SC1091
  . "$DIR/run/net.env"
  for ns in $NETNS; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for veth in $VETHS; do ip link del "$veth" 2>/dev/null || true; done
  for ns in $NETNS; do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  for _ in $(seq 100); do  # links vanish asynchronously
    local left=0
    for veth in $VETHS $BRIDGE; do ip link show "$veth" >/dev/null 2>&1 && left=1; done
    for ns in $NETNS; do [ -e "/run/netns/$ns" ] && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.1
  done
  rm -f "$DIR/run/net.env" "$DIR/run/subnet"
}

refuse() {
  echo "slurm-cluster: --nodes $NODES needs network and UTS namespaces and a bridge (root with CAP_NET_ADMIN and CAP_SYS_ADMIN, iproute2, unshare): $1" >&2
  net_down
  exit 3
}

net_up() {  # bridge + one namespace per node; writes run/net.env, run/subnet and etc/hosts
  local n=$1 net i ns veth err
  net_down
  ip link del "$BRIDGE" 2>/dev/null || true  # a leftover of a cluster in this DIR that was never stopped
  command -v ip >/dev/null || refuse "the ip command (iproute2) is missing"
  command -v unshare >/dev/null || refuse "the unshare command (util-linux) is missing"
  net=$(pick_subnet) || exit 3
  local nss="" veths=""
  for i in $(seq "$n"); do nss="$nss ft-$HASH-node$i"; veths="$veths ftv${HASH}n$i"; done
  printf 'BRIDGE=%q\nNETNS=%q\nVETHS=%q\n' "$BRIDGE" "${nss# }" "${veths# }" > "$DIR/run/net.env"
  echo "$net" > "$DIR/run/subnet"
  err=$(ip link add "$BRIDGE" type bridge 2>&1) || refuse "cannot create bridge $BRIDGE: $err"
  ip addr add "$net.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  { echo "127.0.0.1 localhost"; echo "$net.1 $HOST ftctl"
    for i in $(seq "$n"); do echo "$net.$((10 + i)) ftnode$i"; done; } > "$DIR/etc/hosts"
  for i in $(seq "$n"); do
    ns=ft-$HASH-node$i veth=ftv${HASH}n$i
    err=$(ip netns add "$ns" 2>&1) || refuse "cannot create network namespace $ns: $err"
    err=$(ip link add "$veth" type veth peer name eth0 netns "$ns" 2>&1) || refuse "cannot create veth $veth: $err"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" addr add "$net.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    err=$(nsenter --net="/run/netns/$ns" unshare -u -m --propagation private \
      bash -c 'mount --bind "$1" /etc/hosts && hostname "$2" && [ "$(hostname)" = "$2" ]' _ "$DIR/etc/hosts" "ftnode$i" 2>&1) ||
      refuse "cannot give node ftnode$i its own hostname and /etc/hosts (unshare -u -m): $err"
  done
}

# --- configs and boot -----------------------------------------------------------------------------

write_configs() {  # write_configs NODES
  local n=$1 i ctl_addr node_lines partition_nodes spool pidf logf
  read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT < <(free_ports 4)
  local sock=$DIR/munge/munge.socket.2 slurmd_timeout=60
  if [ "$n" -gt 1 ]; then
    local net; net=$(cat "$DIR/run/subnet")
    ctl_addr=$net.1
    node_lines=""
    for i in $(seq "$n"); do
      node_lines+="NodeName=ftnode$i NodeAddr=$net.$((10 + i)) NodeHostname=ftnode$i CPUs=2 RealMemory=2000 State=UNKNOWN"$'\n'
    done
    partition_nodes="ftnode[1-$n]"
    spool=$DIR/spool/%n pidf=$DIR/run/slurmd-%n.daemon.pid logf=$DIR/log/slurmd-%n.log
    slurmd_timeout=${FT_SLURMD_TIMEOUT:-20}  # a killed slurmd is a failed node after this long
  else
    ctl_addr=127.0.0.1
    node_lines="NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN"$'\n'
    partition_nodes=$HOST
    spool=$DIR/spool pidf=$DIR/run/slurmd.daemon.pid logf=$DIR/log/slurmd.log
  fi
  cat > "$CONF" <<CONF
ClusterName=ftest
SlurmctldHost=$HOST($ctl_addr)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$pidf
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$logf
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
SlurmdTimeout=$slurmd_timeout
SlurmctldParameters=enable_configless
${node_lines}PartitionName=debug Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP
CONF
  : > "$DIR/etc/plugstack.conf"
  cat > "$DIR/etc/slurmdbd.conf" <<CONF
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
CONF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  echo "$DB_PORT" > "$DIR/run/db.port"
}

nodes_up() {  # all N nodes idle (or busy); gives up at once when a slurmd died
  local name
  for name in $(daemons | grep '^slurmd'); do
    if ! alive "$name"; then  # (wait_for silences this function: write to the boot log directly)
      { echo "slurm-cluster: $name exited during boot:"; tail -n 8 "$DIR/log/${name}.log" "$DIR/log/${name}.out"; } \
        >>"$DIR/log/boot.out" 2>&1
      exit 1
    fi
  done
  [ "$(sinfo -h -N -o '%N %t' | sort -u | grep -cE ' (idle|mix|alloc)$')" -eq "$1" ]
}

fresh_database() {  # fresh_database DATADIR: a copy of a cached empty MariaDB data dir (install once: ~7 s)
  local cache=${FT_SLURM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune-slurm-cluster} key tmp
  key=$( { mariadbd --version; command -v mariadb-install-db; } 2>&1 | sha1sum | cut -c1-12)
  if [ ! -d "$cache/mariadb-$key/mysql" ]; then
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.mariadb-$key.XXXXXX")
    mariadb-install-db --no-defaults --datadir="$tmp" --user=root --auth-root-authentication-method=normal \
      --skip-test-db >>"$DIR/log/mariadb-install.out" 2>&1
    mv -T "$tmp" "$cache/mariadb-$key" 2>/dev/null || rm -rf "$tmp"  # a concurrent boot may have won
  fi
  cp -a "$cache/mariadb-$key" "$1"
}

start_slurmd() {  # start_slurmd I: node I's slurmd in its own network, UTS and mount namespace
  mkdir -p "$DIR/spool/ftnode$1"
  # (nsenter, not `ip netns exec`, which remounts /sys without the cgroup mounts slurmd reads)
  spawn "slurmd-ftnode$1" nsenter --net="/run/netns/ft-$HASH-node$1" unshare -u -m --propagation private \
    bash -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec slurmd -D -N "$2" -f "$3"' \
    _ "$DIR/etc/hosts" "ftnode$1" "$CONF"
}

node_check() {  # node_check I: I names a node of this multi-node cluster
  local n; n=$(node_count)
  if [ "$n" -le 1 ] || [ "$1" -lt 1 ] || [ "$1" -gt "$n" ]; then
    echo "slurm-cluster: $cmd: no node $1 (this cluster has $n node(s); kill-node and start-node need --nodes N)" >&2
    exit 2
  fi
}

kill_node() {  # a node lost at once: every process in its network namespace, SIGKILL
  node_check "$1"
  local pid pids round
  # again until none is left: a process forked while the list was read (slurmd starting a
  # slurmstepd, a step starting its task) would otherwise outlive the node
  for round in $(seq 50); do
    pids=$(ip netns pids "ft-$HASH-node$1" 2>/dev/null || true)
    [ -z "$pids" ] && break
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.1
  done
  if [ -n "$(ip netns pids "ft-$HASH-node$1" 2>/dev/null || true)" ]; then
    echo "slurm-cluster: kill-node: processes of ftnode$1 are still alive after SIGKILL" >&2
    exit 1
  fi
  echo "slurm-cluster: killed node ftnode$1 (every process in its namespace, $round round(s))" >&2
}

node_responding() {  # node I is known to slurmctld, responding and in service (not DOWN)
  local state
  state=$(scontrol show node "ftnode$1" 2>/dev/null | sed -n 's/.*State=\([^ ]*\).*/\1/p')
  [ -n "$state" ] && ! printf %s "$state" | grep -qE 'DOWN|NOT_RESPONDING|UNKNOWN'
}

start_node() {  # its slurmd again (outside the keeper: stop still ends it, by pid file and namespace);
  # returns once slurmctld has it back in service (ReturnToService=2), i.e. jobs can use it
  node_check "$1"
  if ! alive "slurmd-ftnode$1"; then
    start_slurmd "$1"
    echo "slurm-cluster: started slurmd of ftnode$1" >&2
  fi
  local end=$((SECONDS + 60))
  until node_responding "$1"; do
    if ! alive "slurmd-ftnode$1" || [ $SECONDS -ge $end ]; then
      echo "slurm-cluster: ftnode$1 is not back in service: $(scontrol show node "ftnode$1" 2>&1 | grep -E 'State|Reason')" >&2
      tail -n 20 "$DIR/log/slurmd-ftnode$1.log" "$DIR/log/slurmd-ftnode$1.out" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  echo "slurm-cluster: ftnode$1 is back in service" >&2
}

boot() {  # run by the keeper: start the daemons (they stay the keeper's descendants) and wait for them
  local n; n=$(node_count)
  local sock=$DIR/munge/munge.socket.2 db_port i
  db_port=$(cat "$DIR/run/db.port")

  [ -f "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
  spawn munged munged -F --force --socket="$sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.daemon.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"

  [ -d "$DIR/mysql/data/mysql" ] || fresh_database "$DIR/mysql/data"
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
  if [ "$n" -gt 1 ]; then
    for i in $(seq "$n"); do start_slurmd "$i"; done
  else
    spawn slurmd slurmd -D -f "$CONF"
  fi
  wait_for 60 "slurmd ($n nodes idle)" nodes_up "$n" || exit 1
  printf 'export SLURM_CONF=%q\nexport FINETUNE_SLURM_DIR=%q\n' "$CONF" "$DIR" > "$DIR/env.sh"
}

start() {
  if alive slurmctld; then echo "slurm-cluster: already running in $DIR" >&2; cat "$DIR/env.sh"; return 0; fi
  local n=${NODES:-1}
  mkdir -p "$DIR"/{etc,run,log,state,spool,munge,mysql}
  chmod 711 "$DIR/munge"
  rm -f "$DIR/run/boot.rc" "$DIR/env.sh"
  echo "$n" > "$DIR/run/nodes"
  if [ "$n" -gt 1 ]; then net_up "$n"; fi
  write_configs "$n"
  command -v python3 >/dev/null || { echo "slurm-cluster: python3 is needed (the keeper)" >&2; net_down; exit 1; }
  setsid python3 "$HERE/slurm-cluster-keeper.py" "$DIR" bash "$HERE/slurm-cluster.sh" _boot "$DIR" \
    >>"$DIR/log/boot.out" 2>&1 < /dev/null &
  local keeper=$! end=$((SECONDS + 240))
  until [ -f "$DIR/run/boot.rc" ]; do
    if ! kill -0 "$keeper" 2>/dev/null || [ $SECONDS -ge $end ]; then break; fi
    sleep 0.1
  done
  local rc; rc=$(cat "$DIR/run/boot.rc" 2>/dev/null || echo 1)
  if [ "$rc" != 0 ]; then
    echo "slurm-cluster: boot failed (exit $rc); log/boot.out:" >&2
    tail -n 40 "$DIR/log/boot.out" >&2 || true
    stop
    exit 1
  fi
  cat "$DIR/env.sh"
}

stop() {
  if [ -f "$CONF" ] && alive slurmctld; then
    timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  local name
  for name in $(daemons); do
    [ -f "$DIR/run/$name.pid" ] && kill -TERM "$(cat "$DIR/run/$name.pid")" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local left=0
    for name in $(daemons); do alive "$name" && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.2
  done
  # whatever is left below the keeper (job steps, detached helpers, a daemon that ignored TERM)
  if pid_alive "$DIR/run/keeper.pid"; then
    local keeper; keeper=$(cat "$DIR/run/keeper.pid")
    kill -TERM "$keeper" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$keeper" 2>/dev/null || break; sleep 0.1; done
  else
    for name in $(daemons); do
      if alive "$name"; then kill -KILL "$(cat "$DIR/run/$name.pid")" 2>/dev/null || true; fi
    done
    if [ -f "$DIR/run/keeper.pid" ]; then
      echo "slurm-cluster: the keeper was gone; ended the daemons by their pid files only" >&2
    fi
  fi
  net_down
  rm -f "$DIR"/run/*.pid "$DIR/run/boot.rc"
  echo "slurm-cluster: stopped ($DIR)" >&2
}

status() {
  local name rc=0
  for name in munged mariadbd slurmdbd slurmctld $(daemons | grep '^slurmd'); do
    if alive "$name"; then echo "$name: running"; else echo "$name: stopped"; rc=1; fi
  done
  [ $rc -eq 0 ] && sinfo
  return $rc
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) status ;;
  _boot) boot ;;
  kill-node) kill_node "$NODE" ;;
  start-node) start_node "$NODE" ;;
  *) usage ;;
esac
