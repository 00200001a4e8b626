"""torchrun that passes SIGUSR2 on to its workers: ``python -m finetune.compute.launch TORCHRUN_ARGS...``.

The ``slurm.launcher: "torchrun"`` job starts one of these per node (``srun --ntasks-per-node=1``).
Plain torchrun dies of SIGUSR2 (its default action), or, with TORCHELASTIC_SIGNALS_TO_HANDLE,
shuts its workers down with a 30 s limit. Here the agent runs as usual, in this process, and a
SIGUSR2 handler forwards the signal to every worker (the agent's child processes): each worker
finishes its step, the ranks agree on the step, write one checkpoint and exit 75.

Exit status: torchrun's, except that when the first worker to end exited 75 (checkpointed and
wants a requeue) this process exits 75 too, whatever the agent did to the other workers after it
(they had written everything before the first one left: the trainer's ranks leave together).

Each worker's torch threads: the node's CPUs (``SLURM_CPUS_PER_TASK`` of this one task per node)
divided by ``--nproc-per-node``, passed on as the workers' ``SLURM_CPUS_PER_TASK``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from finetune.layout import EXIT_REQUEUE


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc; the workers torchrun started)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        pass
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == pid:
                out.append(int(name))
    return out


def forward_usr2(signum: int, frame: Any) -> None:
    for pid in children(os.getpid()):
        try:
            os.kill(pid, signal.SIGUSR2)
        except ProcessLookupError:
            pass
    print(f"finetune.compute.launch: SIGUSR2 forwarded to the workers on {os.uname().nodename}",
          file=sys.stderr, flush=True)


def worker_threads(args: Any, env: dict[str, str]) -> None:
    try:
        cpus = int(env.get("SLURM_CPUS_PER_TASK", ""))
        nproc = int(args.nproc_per_node)
    except ValueError:
        return
    env["SLURM_CPUS_PER_TASK"] = str(max(1, cpus // max(1, nproc)))


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    worker_threads(args, os.environ)  # type: ignore[arg-type]
    signal.signal(signal.SIGUSR2, forward_usr2)
    try:
        run(args)
    except ChildFailedError as e:
        rank, first = e.get_first_failure()
        if first.exitcode == EXIT_REQUEUE:
            return EXIT_REQUEUE
        print(f"finetune.compute.launch: {e.name}: first failure: rank {rank} exit {first.exitcode}",
              file=sys.stderr)
        return first.exitcode if 0 < first.exitcode < 256 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
