"""The counting stand-in for the trainer: same files, same USR2 / exit-75 protocol, no torch.

Counts from 0 to ``training.count_to``, sleeping ``training.count_sleep_s`` per step, and saves
the count atomically after every step (``checkpoints/count.json``), so a rerun resumes exactly
where the last one stopped. On SIGUSR2 it finishes the current step, saves, writes state.json
``preempted`` and exits 75. ``training.count_fail_at`` (optional) makes it fail on reaching that
count (exit 1, state ``failed``), for testing failure reports. Each run is recorded with its
``SLURM_RESTART_COUNT`` in state.json and, at the end, in result.json.

``training.count_eval_interval`` (optional) makes it evaluate every N counts: one made-up
metrics.jsonl row per eval language whose ``macro_f1`` grows with the count and peaks at a
learning rate of 1e-3 (``made_up_score``), so searches and pruning can be tested in seconds.
Each evaluation is reported to the trial's search, if any (finetune.compute.pruning); when the
pruner says stop, the trial writes a ``pruned`` result.json and exits 0.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.fileio import atomic_write_json, read_json
from finetune.layout import EXIT_FAILED, EXIT_FINISHED, EXIT_REQUEUE, write_state


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def made_up_score(hyperparameters: dict[str, Any], n: int, interval: int) -> float:
    """A macro-F1 stand-in in [0, 1]: best at learning rate 1e-3, rising with the count."""
    lr = float(hyperparameters.get("learning_rate") or 1e-3)
    quality = math.exp(-(math.log10(lr / 1e-3) ** 2) / 2)
    return round(quality * (1 - 0.5 ** (n / interval)), 6)


def _evaluate(trial_dir: Path, config: dict[str, Any], n: int, interval: int) -> list[dict[str, Any]]:
    score = made_up_score(config.get("hyperparameters") or {}, n, interval)
    rows = [{"step": n, "epoch": 0, "language": lang, "split": "eval", "loss": round(1 - score, 6),
             "accuracy": score, "macro_f1": score} for lang in config.get("eval_languages") or ["all"]]
    with open(layout.metrics_file(trial_dir), "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def count(trial_dir: str | Path, config: dict[str, Any]) -> int:
    trial_dir = Path(trial_dir)
    training = config.get("training") or {}
    target = int(training.get("count_to", 100))
    sleep_s = float(training.get("count_sleep_s", 0.1))
    fail_at = training.get("count_fail_at")
    interval = training.get("count_eval_interval")
    from finetune.compute.pruning import Reporter, pruned_result

    reporter = Reporter.from_config(config) if interval else None
    rows: list[dict[str, Any]] = []
    ckpt = layout.checkpoints_dir(trial_dir) / "count.json"
    saved = read_json(ckpt) if ckpt.is_file() else {"count": 0, "runs": []}
    n = int(saved["count"])
    restart = layout.restart_count()
    runs = list(saved.get("runs", [])) + [{"start": n, "restart_count": restart,
                                           "job_id": os.environ.get("SLURM_JOB_ID"), "started": _now()}]

    stop = {"requested": False}

    def on_usr2(signum: int, frame: Any) -> None:
        stop["requested"] = True

    previous = signal.signal(signal.SIGUSR2, on_usr2)
    from finetune import usr2

    stop["requested"] = usr2.received()  # USR2 before this handler existed (finetune/__main__.py)
    started = time.monotonic()
    try:
        write_state(trial_dir, "running", count=n)
        print(f"count: starting at {n} of {target} (restart {restart})", flush=True)
        while n < target:
            if stop["requested"]:
                atomic_write_json(ckpt, {"count": n, "runs": runs})
                write_state(trial_dir, "preempted", "SIGUSR2", count=n)
                print(f"count: USR2 at {n}; checkpointed, exiting {EXIT_REQUEUE}", flush=True)
                return EXIT_REQUEUE
            if fail_at is not None and n >= int(fail_at):
                atomic_write_json(ckpt, {"count": n, "runs": runs})
                write_state(trial_dir, "failed", f"count_fail_at={fail_at} reached", count=n)
                print(f"count: failing on purpose at {n}", flush=True)
                return EXIT_FAILED
            time.sleep(sleep_s)
            n += 1
            atomic_write_json(ckpt, {"count": n, "runs": runs}, indent=None)
            if interval and (n % interval == 0 or n == target):
                rows = _evaluate(trial_dir, config, n, interval)
                if reporter is not None and reporter.report(n, rows) and n < target:
                    write_state(trial_dir, "pruned", f"pruned at step {n}", count=n, step=n)
                    atomic_write_json(layout.result_file(trial_dir), pruned_result(
                        config, n, rows, workload="count", count=n, restart_count=restart, runs=runs,
                        timing={"wall_s": round(time.monotonic() - started, 3)}))
                    print(f"count: pruned at {n}", flush=True)
                    return EXIT_FINISHED
        write_state(trial_dir, "finished", count=n)
        result = {
            "state": "finished", "trial": config.get("id", trial_dir.name), "workload": "count",
            "count": n, "restart_count": restart, "runs": runs,
            "timing": {"wall_s": round(time.monotonic() - started, 3)},
        }
        if interval:
            if not rows:  # resumed after the last evaluation
                rows = _evaluate(trial_dir, config, n, interval)
            metrics = pruned_result(config, n, rows)["metrics"]
            result["metrics"] = {lang: {**m, "test": dict(m["eval"])} for lang, m in metrics.items()}
            result["best_step"] = n
        atomic_write_json(layout.result_file(trial_dir), result)
        print(f"count: finished at {n}", flush=True)
        return EXIT_FINISHED
    finally:
        signal.signal(signal.SIGUSR2, previous)
