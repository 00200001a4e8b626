"""Plan directories for the submit tests, in the documented layout (plan.json + trials/<id>/config.json).

The trials run the ``count`` stand-in workload, so no model or data is needed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from finetune.fileio import read_json5

DEFAULTS = read_json5(Path(__file__).resolve().parent.parent / "config" / "default.json")
SLURM = {"account": None, "partition": None, "qos": None, "cpus_per_task": 1, "gpus": 0, "mem": "100M",
         "time": "00:10:00", "nodes": 1, "ntasks_per_node": 1, "output": None, "setup": [],
         "signal_grace_s": 30, "extra": {}}


def make_plan(root: Path, n: int, *, count_to: int = 3, count_sleep_s: float = 0.01,
              slurm: dict[str, Any] | None = None, per_trial: dict[int, dict[str, Any]] | None = None) -> list[str]:
    """A plan of ``n`` count trials in ``root``; ``per_trial[i]`` updates trial i's config (deep for dicts)."""
    root.mkdir(parents=True, exist_ok=True)
    ids, records = [], []
    for i in range(n):
        tid = hashlib.sha256(f"{root}-{i}".encode()).hexdigest()[:12]
        cfg: dict[str, Any] = {
            "id": tid, "model_type": "normal", "task": "topic", "train_languages": ["russian"],
            "eval_languages": ["russian"], "hyperparameters": {**DEFAULTS["hyperparameters"], "seed": i},
            "training": {**DEFAULTS["training"], "workload": "count", "count_to": count_to,
                         "count_sleep_s": count_sleep_s},
            "slurm": {**SLURM, **(slurm or {})}, "provenance": {}, "grid_point": {"seed": i},
        }
        for key, value in (per_trial or {}).get(i, {}).items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
        d = root / "trials" / tid
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        ids.append(tid)
        records.append({"id": tid, "model_type": "normal", "train_languages": ["russian"],
                        "eval_languages": ["russian"], "hyperparameters": {"seed": i}, "group": "g"})
    (root / "plan.json").write_text(json.dumps({"version": 1, "sources": [], "groups": {}, "trials": records}))
    return ids


class SlurmStubs:
    """Fake sbatch/squeue/sacct/scontrol/scancel on PATH, for logic tests without a cluster.

    Each call is appended to ``calls.log`` (argv joined by spaces). ``sbatch`` answers job ids
    100, 101, ...; it fails (exit 1) on the call number in file ``sbatch.fail_on``. ``squeue`` and
    ``sacct`` print ``squeue.txt`` / ``sacct.txt``; ``sbatch`` sleeps ``sbatch.sleep`` seconds when
    that file exists (touching ``sbatch.started``); ``sacct`` exits 1 (accounting off) when
    ``sacct.off`` exists. ``scontrol show config`` reports ``MaxArraySize`` from ``max_array``.
    """

    def __init__(self, root: Path):
        self.dir = root / "stub-bin"
        self.dir.mkdir(parents=True, exist_ok=True)
        d = str(self.dir)
        log = f"{d}/calls.log"
        scripts = {
            "sbatch": f"""n=$(( $(cat {d}/sbatch.count 2>/dev/null || echo 0) + 1 )); echo $n > {d}/sbatch.count
echo "sbatch $*" >> {log}
if [ -f {d}/sbatch.sleep ]; then touch {d}/sbatch.started; sleep "$(cat {d}/sbatch.sleep)"; fi
if [ -f {d}/sbatch.fail_on ] && [ "$(cat {d}/sbatch.fail_on)" = "$n" ]; then echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1; fi
echo "$((99 + n));cluster"
""",
            "squeue": f"""echo "squeue $*" >> {log}; cat {d}/squeue.txt 2>/dev/null; exit 0
""",
            "sacct": f"""echo "sacct $*" >> {log}
if [ -f {d}/sacct.off ]; then echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1; fi
cat {d}/sacct.txt 2>/dev/null; exit 0
""",
            "scontrol": f"""echo "scontrol $*" >> {log}
[ "$1 $2" = "show config" ] && echo "MaxArraySize            = $(cat {d}/max_array 2>/dev/null || echo 1001)"
exit 0
""",
            "scancel": f"""echo "scancel $*" >> {log}; exit 0
""",
        }
        for name, body in scripts.items():
            (self.dir / name).write_text("#!/bin/bash\n" + body)
            (self.dir / name).chmod(0o755)

    def set(self, name: str, text: str) -> None:
        (self.dir / name).write_text(text)

    def calls(self, command: str | None = None) -> list[str]:
        log = self.dir / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [c for c in lines if command is None or c.split(" ", 1)[0] == command]
