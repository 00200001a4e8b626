#!/usr/bin/env python3
"""The parent of everything one test cluster runs (scripts/slurm-cluster.sh), and its undertaker.

    slurm-cluster-keeper.py DIR COMMAND...

`slurm-cluster.sh start` runs it; it is not meant to be called by hand.

Example:
    slurm-cluster-keeper.py /tmp/ftc bash scripts/slurm-cluster.sh _boot /tmp/ftc

Makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), writes DIR/run/keeper.pid and runs
COMMAND (the cluster's boot script), writing its exit status to DIR/run/boot.rc. Every daemon the
boot script starts, and every process those daemons start (slurmstepd double-forks, job steps,
helpers a job detaches with setsid), stays a descendant of this process: orphans are reparented to
the nearest subreaper, which is this one. On SIGTERM it kills all its descendants with SIGKILL,
reaps them and exits. So `slurm-cluster.sh stop` ends exactly what the cluster started, and nothing
else (a process that merely has the cluster's SLURM_CONF in its environment is not ours).

Standard library only: it runs with the system python3, outside any virtual environment.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


class Stop(Exception):
    pass


def _stop(_signum, _frame):
    raise Stop


def descendants(root: int) -> list[int]:
    """Pids of every process below ``root`` (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def reap() -> list[tuple[int, int]]:
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def kill_all() -> None:
    me = os.getpid()
    for _ in range(200):
        left = descendants(me)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        reap()
    print(f"slurm-cluster-keeper: processes still alive: {descendants(me)}", file=sys.stderr)


def write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    if len(sys.argv) < 3:
        print("usage: slurm-cluster-keeper.py DIR COMMAND...", file=sys.stderr)
        return 2
    run = os.path.join(sys.argv[1], "run")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"slurm-cluster-keeper: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        write(os.path.join(run, "boot.rc"), "1\n")
        return 1
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    write(os.path.join(run, "keeper.pid"), f"{os.getpid()}\n")
    try:
        boot = os.fork()
        if boot == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            try:
                os.execvp(sys.argv[2], sys.argv[2:])
            finally:
                os._exit(127)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(1)
                continue
            if pid == boot:
                write(os.path.join(run, "boot.rc"), f"{os.waitstatus_to_exitcode(status)}\n")
    except Stop:
        pass
    kill_all()
    try:
        os.unlink(os.path.join(run, "keeper.pid"))
    except FileNotFoundError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
