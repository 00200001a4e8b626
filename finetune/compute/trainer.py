"""The fine-tuning trainer's entry point: one trial, single process, DDP or FSDP2, with exact resume.

``run(trial_dir)`` (and ``python -m finetune.compute.trainer TRIAL_DIR``, e.g. under torchrun)
reads the frozen trial config, trains, and turns the outcome into state.json and an exit code:
0 finished, 1 failed (state.json says why), 2 bad input, 75 preempted (SIGUSR2, checkpointed; the
codes, file names and state.json are ``finetune.layout``'s).

The parts live in ``finetune.compute.training``: ``settings`` (the config, checked and typed),
``task`` (data, model head, batch -> loss, predictions -> metrics), ``loop`` (setup, train step,
evaluate, checkpoint, result), ``checkpoint`` (the latest/best checkpoint store), ``tracking``
(metrics.jsonl and other trackers) and ``runtime`` (state.json, log, SIGUSR2, seeds).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from finetune import layout
from finetune.compute import distributed as dist_env
from finetune.compute.pruning import Pruned, pruned_result
from finetune.compute.training.runtime import Preempted, Preemption
from finetune.compute.training.settings import Settings, lr_factor, settings_from_config, total_steps
from finetune.errors import FinetuneError
from finetune.fileio import atomic_write_json, read_json
from finetune.layout import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_FINISHED, EXIT_REQUEUE, write_state

__all__ = ["Settings", "lr_factor", "run", "settings_from_config", "total_steps"]


def run(
    trial_dir: str | os.PathLike[str],
    *,
    dump_logits: bool | None = None,
    logit_directory: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Train one trial in ``trial_dir`` (reads config.json); 0 finished, 1 failed, 2 bad input, 75 preempted.

    ``dump_logits``/``logit_directory`` override the config's ``training.dump_logits`` /
    ``training.logit_directory``; ``threads`` sets torch's CPU threads (default: SLURM_CPUS_PER_TASK
    when set); ``on_step(step)`` is called on every rank after each optimizer step (tests use it to
    send the preemption signal at a chosen step).
    """
    trial_dir = Path(trial_dir)
    env = dist_env.from_environ()
    if layout.is_finished(trial_dir):
        if env.is_main:
            print(f"{trial_dir}: already finished ({layout.RESULT_FILE} says so); nothing to do", file=sys.stderr)
        return EXIT_FINISHED
    if not layout.config_file(trial_dir).is_file():
        print(f"error: {layout.config_file(trial_dir)}: no such file (not a trial directory?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    trainer = None
    code = EXIT_FAILED
    with Preemption() as preemption:
        try:
            from finetune.compute.training.loop import Trainer

            config = read_json(layout.config_file(trial_dir))
            if env.is_main:
                write_state(trial_dir, "running")
            trainer = Trainer(trial_dir, config, env, preemption, dump_logits=dump_logits,
                              logit_directory=logit_directory, threads=threads, on_step=on_step)
            trainer.train()
            trainer.finish()
            code = EXIT_FINISHED
        except Preempted as e:
            if env.is_main:
                write_state(trial_dir, "preempted", reason=str(e))
            code = EXIT_REQUEUE
        except Pruned as e:  # a search's pruner stopped it: a result, not a failure
            if env.is_main:
                atomic_write_json(layout.result_file(trial_dir), pruned_result(config, e.step, e.rows))
                write_state(trial_dir, "pruned", reason=str(e), step=e.step)
                trainer.checkpoints.remove()
            code = EXIT_FINISHED
        except FinetuneError as e:
            print(f"error: {e}", file=sys.stderr)
            if env.is_main:
                write_state(trial_dir, "failed", reason=str(e))
            code = EXIT_BAD_INPUT
        except KeyboardInterrupt:
            if env.is_main:
                write_state(trial_dir, "failed", reason="interrupted (SIGINT)")
            raise
        except Exception as e:
            traceback.print_exc()
            if env.is_main:
                write_state(trial_dir, "failed", reason=f"{type(e).__name__}: {e}")
            code = EXIT_FAILED
        finally:
            if trainer is not None:
                trainer.close(code)  # the trackers end their runs (W&B: finished, preempted or failed)
            dist_env.destroy_process_group()
    return code


if __name__ == "__main__":  # python -m finetune.compute.trainer TRIAL_DIR (e.g. under torchrun)
    if len(sys.argv) != 2:
        print("usage: python -m finetune.compute.trainer TRIAL_DIR", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(run(sys.argv[1]))
