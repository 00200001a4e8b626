"""A bundle: one array task runs several trials of its index file one after another, in one process.

``slurm.trials_per_task`` = K: array task k runs the trials on lines k*K .. k*K+K-1 of its index
file. Each trial is prepared from its line (``finetune.login.batch.prepare_trial``: folder and
frozen config.json), skipped when already done (finished or pruned), else run by
``finetune.compute.trial.run_trial`` with its output appended to its own ``log.txt``.

SIGUSR2 (preemption, time limit): the running trial checkpoints and exits 75 as on its own; the
bundle stops there and exits 75 too (the batch script requeues the task). Between two trials,
the signal stops the bundle before the next one starts. The requeued task walks the same lines
again: its finished trials are skipped (not rerun), the interrupted one resumes from its
checkpoint at the step where it stopped, the rest run as planned. A failed trial does not stop
the others; the bundle then exits 1.

Trials of the same inputs share what was loaded (finetune.compute.shared): the second trial of a
bundle over one checkpoint, tokenizer and dataset loads none of them again.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from finetune import layout


def bundle_lines(index_file: str | os.PathLike[str], task: int, per_task: int) -> range:
    """The index lines (0-based) array task ``task`` runs."""
    with open(index_file, "rb") as f:
        total = sum(1 for _ in f)
    first = task * per_task
    return range(first, min(first + per_task, total))


@contextmanager
def output_to(log: Path) -> Iterator[None]:
    """stdout and stderr (the file descriptors, so child processes too) appended to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_bundle(index_file: str | os.PathLike[str], task: int, per_task: int) -> int:
    """Run array task ``task``'s trials (see module doc); 0 all done, 1 one failed, 75 requeue me."""
    from finetune.compute import shared
    from finetune.compute.trial import run_trial
    from finetune.login.batch import prepare_trial
    from finetune.login.evaluations import request_file

    index = Path(index_file).resolve()
    stop: dict[str, Any] = {"usr2": False}

    def on_usr2(signum: int, frame: Any) -> None:
        stop["usr2"] = True

    previous = signal.signal(signal.SIGUSR2, on_usr2)
    failed = 0
    shared.enable(per_task > 1)  # trials of the same inputs take the tokenizer, checkpoint and data loaded once
    try:
        lines = bundle_lines(index, task, per_task)
        print(f"bundle: task {task} runs lines {lines.start + 1}-{lines.stop} of {index}", flush=True)
        for n in lines:
            if stop["usr2"]:
                print(f"bundle: USR2 before line {n + 1}; exiting {layout.EXIT_REQUEUE}", flush=True)
                return layout.EXIT_REQUEUE
            trial_dir = prepare_trial(index, n)
            if layout.is_done(trial_dir) and not request_file(trial_dir).is_file():  # (else: evaluate it)
                print(f"bundle: {trial_dir.name} already done; skipped", flush=True)
                continue
            print(f"bundle: {trial_dir.name} (line {n + 1}) starts", flush=True)
            with output_to(layout.log_file(trial_dir)):
                print(f"== bundle task {task} of {index.name}, line {n + 1}, restart {layout.restart_count()}",
                      flush=True)
                try:
                    rc = run_trial(trial_dir)
                except Exception:  # one broken trial must not take the bundle's others with it
                    traceback.print_exc()
                    rc = layout.EXIT_FAILED
            print(f"bundle: {trial_dir.name} exited with {rc}", flush=True)
            if rc == layout.EXIT_REQUEUE:
                return rc
            if rc != layout.EXIT_FINISHED:
                failed += 1
        if stop["usr2"]:  # arrived during the last trial's end: nothing left to checkpoint
            print("bundle: USR2 after the last trial; nothing left to run", flush=True)
        return layout.EXIT_FAILED if failed else layout.EXIT_FINISHED
    finally:
        shared.enable(False)
        signal.signal(signal.SIGUSR2, previous)
