"""A trial's ``slurm`` section is the resource request of every backend; its defaults live here.

``config/default.json`` fills the section for planned trials; a section written by hand or by an
older tool may leave keys out, and then SLURM's own defaults apply (one CPU, one node, one task,
no GPU) and USR2 arrives ``signal_grace_s`` = 120 s before the time limit. The sbatch template,
the directives and submitit all read the section through ``resolve_slurm``, so a value (0
included) means the same whichever backend runs the trial.
"""

from __future__ import annotations

from typing import Any

SLURM_DEFAULTS: dict[str, Any] = {
    "account": None,
    "partition": None,
    "qos": None,
    "cpus_per_task": 1,
    "gpus": 0,
    "mem": None,
    "time": None,
    "nodes": 1,
    "ntasks_per_node": 1,
    "output": None,
    "setup": [],
    "launcher": "srun",  # how a job of several tasks starts its ranks: srun or torchrun
    "signal_grace_s": 120,
    "trials_per_task": 1,
    "max_queued": None,  # queue at most this many array tasks at once (besides the cluster's own limits)  # an array task runs this many trials one after another, in one process
    "extra": {},
}


def resolve_slurm(slurm: dict[str, Any] | None) -> dict[str, Any]:
    """The section with every key present: a missing or null value takes its default."""
    slurm = slurm or {}
    out = {k: (slurm[k] if slurm.get(k) is not None else default) for k, default in SLURM_DEFAULTS.items()}
    out.update({k: v for k, v in slurm.items() if k not in SLURM_DEFAULTS})
    return out
