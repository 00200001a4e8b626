"""The README's main job: the Russian/Polish SIB-200 cross-language demo, end to end.

Four stages, each a call into the library, with progress lines between them:

1. plan   the cross-language matrix (train on polish, russian, polish+russian; eval on both) for
          the normal and the IPA model with a small grid (config/grid-demo.json);
2. models pretrain the small normal and IPA nanoGPT models where the plan points, when absent
          (the IPA corpus is the same SIB-200 train sentences transcribed with espeak-ng);
3. run    submit the plan (local executor, or SLURM) and wait, reporting trials done/total;
4. collect results.csv, results.md and the transfer heatmaps in the plan dir.

Reruns reuse the models and every finished trial: the plan keeps its ids, submit skips finished
trials, pretraining is skipped when the checkpoint and tokenizer exist.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import FinetuneError, Problem, UsageError

# The demo's trials are small (one CPU, under 1 GB): sized so two run at once even on the 2-CPU,
# 2 GB test cluster of scripts/slurm-cluster.sh. The slurm section does not change trial ids.
SLURM_OVERRIDES = ("slurm.cpus_per_task=1", "slurm.mem=1000M", "slurm.time=00:30:00", "slurm.signal_grace_s=30")
CONFIG_FILES = ("config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json", "config/data-local.json")

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: the pretraining run, the corpus and the fine-tuning overrides."""

    name: str
    grid: str | None  # grid config relative to the repo, None = the config's defaults only
    corpus_per_language: int | None  # pretraining sentences per language (None = all train rows)
    pretrain: dict[str, Any]  # keyword arguments of finetune.compute.pretrain.pretrain
    overrides: tuple[str, ...] = ()  # --set overrides on top of the config layers
    own_models: bool = False  # models inside the plan dir, not where the shipped config points


SIZES = {
    # the README's run: 3 train sets x 2 model types x the demo grid, a few minutes on 2 cores
    "demo": DemoSize(
        name="demo",
        grid="config/grid-demo.json",
        corpus_per_language=None,
        pretrain={"vocab_size": 2000, "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128,
                  "steps": 350, "batch_size": 16, "learning_rate": 2e-3, "seed": 0},
    ),
    # a smoke run in seconds for the end-to-end tests: tiny model, few sentences, few steps
    "tiny": DemoSize(
        name="tiny",
        grid=None,
        corpus_per_language=60,
        pretrain={"vocab_size": 300, "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64,
                  "steps": 5, "batch_size": 8, "learning_rate": 1e-3, "seed": 0},
        overrides=("hyperparameters.max_steps=3", "hyperparameters.batch_size=8", "hyperparameters.epochs=1",
                   "training.eval_interval=2", "training.checkpoint_interval=2"),
        own_models=True,
    ),
}


DATA = "data/sib200"  # the SIB-200 subset in the repository, where config/data-local.json points


def repo_root() -> Path:
    """The clone this package runs from (an editable install): it holds config/ and the demo data.

    An installed wheel carries the default layer, the database and the templates, but not the
    demo's data (1.8 MB of SIB-200): the demo needs a clone, and says so."""
    root = Path(__file__).resolve().parent.parent
    data = root / DATA
    if not all((root / f).is_file() for f in CONFIG_FILES):
        raise UsageError(problems=[Problem(
            "finetune demo", "",
            f"the demo runs from a clone of the repository, which holds its config layers and its data"
            f" ({DATA}); this finetune is installed in {root}, without them. Clone the repository and"
            " run `bash scripts/demo.sh` there (or `pip install -e .` and `finetune demo`)")])
    if not (data / "rus_Cyrl" / "train.tsv").is_file():
        raise UsageError(problems=[Problem(
            str(data), "", f"the demo data are missing: the clone should hold the SIB-200 subset in {DATA}"
            " (restore it with `git checkout -- data`)")])
    return root


def _say(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", flush=True)


def _plan_inputs(repo: Path, size: DemoSize, out: Path, extra: list[str]) -> tuple[list[str], list[str], str | None]:
    files = [str(repo / f) for f in CONFIG_FILES]
    overrides = [*SLURM_OVERRIDES, *size.overrides]
    if size.own_models:
        models = out / "models"
        overrides += [f"checkpoints.prefix={models}", f"tokenizers.prefix={models}"]
    grid = str(repo / size.grid) if size.grid else None
    return files, overrides + list(extra), grid


def plan_demo(out: Path, size: DemoSize, *, overrides: list[str] = (), log: Log, write: bool = True) -> Any:
    """Stage 1: build (pure, validated) and, with ``write``, write the matrix plan; returns the Plan.

    Trial ids fingerprint the checkpoints and tokenizers, so the plan that is written must be built
    after the models exist: run_demo builds once to learn where the models go, pretrains, then
    builds again and writes (a plan written before pretraining would be superseded by the rerun).
    """
    from finetune.login.plan import build_plan, write_plan

    files, overrides, grid = _plan_inputs(repo_root(), size, out, list(overrides))
    plan = build_plan(files, overrides, grid_config=grid, matrix=True)
    if not write:
        return plan
    report = write_plan(plan, out)
    log(f"{report.total} trials in {report.path} ({len(report.added)} new, {len(report.kept)} kept,"
        f" {len(report.updated)} updated)")
    return plan


@dataclass(frozen=True)
class ModelTarget:
    model_type: str
    checkpoint: Path  # <prefix>/<name>/ckpt.pt
    tokenizer: Path  # <prefix>/<name> (vocab/merges prefix)
    trial_config: dict[str, Any]  # one trial of this model type: datasets, cache dir

    @property
    def out_dir(self) -> Path:
        return self.checkpoint.parent.parent

    @property
    def name(self) -> str:
        return self.checkpoint.parent.name

    def exists(self) -> bool:
        return (self.checkpoint.is_file() and Path(f"{self.tokenizer}-vocab.json").is_file()
                and Path(f"{self.tokenizer}-merges.txt").is_file())


def model_targets(plan: Any) -> list[ModelTarget]:
    """Where each model type's checkpoint and tokenizer must be, as the plan's trials will look."""
    targets: dict[str, ModelTarget] = {}
    for trial in plan.trials:
        if trial.model_type in targets:
            continue
        cfg = plan.trial_config(trial)
        ckpt, tok = Path(cfg["checkpoint"]), Path(cfg["tokenizer"])
        if ckpt.name != "ckpt.pt" or tok != ckpt.parent:
            raise UsageError(problems=[Problem("checkpoints/tokenizers", f"$.checkpoints.{trial.model_type}",
                                               f"the demo pretrains into <prefix>/<name>/ckpt.pt and <prefix>/<name>-vocab.json;"
                                               f" checkpoint {ckpt} and tokenizer {tok} do not share <prefix>/<name>")])
        targets[trial.model_type] = ModelTarget(trial.model_type, ckpt, tok, cfg)
    return list(targets.values())


def corpus(trial_config: dict[str, Any], model_type: str, *, limit: int | None) -> list[str]:
    """The pretraining corpus: the train split's model input of every language of the plan, IPA
    for the IPA model. Transcriptions go through the data layer's cache, so the trials reuse them."""
    from finetune.compute.data import (
        add_phoneme_columns,
        features_of,
        input_columns,
        load_splits,
        resolve_cache_dir,
    )

    cache = resolve_cache_dir(trial_config)
    texts: list[str] = []
    for lang, entry in sorted(trial_config["datasets"].items()):
        ds = load_splits(entry, ["train"], cache_dir=cache, where=f"$.datasets.{lang}")["train"]
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        if model_type == "ipa":
            ds = add_phoneme_columns(ds, features_of(entry), entry["espeak"], cache_dir=cache)
        columns = input_columns(entry, model_type)
        texts += [" ".join(str(row[c] or "") for c in columns) for row in ds]
    return texts


def ensure_models(targets: list[ModelTarget], size: DemoSize, *, log: Log) -> None:
    """Stage 2: pretrain every absent model; an existing checkpoint + tokenizer is reused as is.

    The models train side by side, one process and one CPU thread each (the cores are shared
    out as for the trials), so the normal and the IPA model together take the time of one.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    todo = []
    for t in targets:
        if t.exists():
            log(f"{t.model_type}: reusing {t.checkpoint}")
            continue
        texts = corpus(t.trial_config, t.model_type, limit=size.corpus_per_language)
        log(f"{t.model_type}: pretraining {t.name} on {len(texts)} sentences ({size.pretrain['steps']} steps) ...")
        todo.append((t, texts))
    if not todo:
        return
    start = time.monotonic()
    workers = max(1, min(len(todo), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(t, pool.submit(_pretrain_one, texts, t.out_dir, t.name, size.pretrain)) for t, texts in todo]
        for t, future in futures:
            result = future.result()
            log(f"{t.model_type}: done in {time.monotonic() - start:.0f} s (vocab {result.vocab_size},"
                f" {result.tokens} tokens, val loss {result.val_loss:.3f})")


def _pretrain_one(texts: list[str], out_dir: Path, name: str, settings: dict[str, Any]) -> Any:
    """In a worker process: its progress lines go straight to the shared stderr."""
    import sys

    from finetune.compute.pretrain import pretrain

    def log(line: str) -> None:
        if line.startswith("step "):
            print(f"[2/4 models] {name}: {line}", file=sys.stderr, flush=True)

    return pretrain(texts, out_dir, name, if_exists="overwrite", threads=1, log=log, **settings)


ACTIVE = ("running", "pending", "preempted")


def trial_states(out: Path, executor: str) -> dict[str, str]:
    """trial id -> state. Local: from the trial files (the local executor keeps no queue).
    SLURM: `finetune status`'s view (one squeue + one sacct call), which also knows pending jobs
    and jobs that died without writing state.json."""
    if executor == "local":
        from finetune.analysis.results import collect

        return {row.trial_id: row.state for row in collect(out).rows}
    from finetune.login.status import plan_status

    return {t.trial_id: t.state for t in plan_status(out).trials}


def _progress(states: dict[str, str]) -> str:
    total = len(states)
    done = sum(s not in ACTIVE and s not in ("missing", "unsubmitted") for s in states.values())
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"{done}/{total} trials done ({detail})"


def run_trials(out: Path, executor: str, *, parallel: int | None, timeout: float | None,
               poll_s: float = 2.0, log: Log) -> dict[str, str]:
    """Stage 3: submit the plan and wait until no trial is queued or running.

    ``submit`` blocks for the local executor (it runs its queue to the end) and returns once the
    array is queued for SLURM; it runs in a thread so progress is reported either way.
    """
    from finetune.login.submit import submit

    states = trial_states(out, "local")
    if all(s == "finished" for s in states.values()):
        log(f"all {len(states)} trials already finished")
        return states
    result: dict[str, Any] = {}

    def _submit() -> None:
        try:
            result["report"] = submit(out, executor=executor, parallel=parallel)
        except BaseException as e:  # re-raised in the main thread
            result["error"] = e

    thread = threading.Thread(target=_submit, name="finetune-submit", daemon=True)
    with _env(OMP_NUM_THREADS="1"):  # inherited by the trials (local) or exported by sbatch
        thread.start()
        return _wait(out, executor, thread, result, timeout=timeout, poll_s=poll_s, log=log)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started inside, then restore them.

    One CPU thread per trial: the demo's models are tiny, and two trials with two threads each on
    two busy cores were measured 20x slower per step (3.6 s vs 0.16 s) than with one each.
    """
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait(out: Path, executor: str, thread: threading.Thread, result: dict[str, Any], *,
          timeout: float | None, poll_s: float, log: Log) -> dict[str, str]:
    start = time.monotonic()
    last = ""
    while True:
        thread.join(timeout=poll_s)
        if "error" in result:
            raise result["error"]
        submitting = thread.is_alive()
        states = trial_states(out, "local" if submitting else executor)
        line = _progress(states)
        if line != last:
            log(f"{line}  [{time.monotonic() - start:.0f} s]")
            last = line
        # the local executor's submit returns when its queue is empty; SLURM's when it is queued
        if not submitting and (executor == "local" or not any(s in ACTIVE for s in states.values())):
            return states
        if timeout is not None and time.monotonic() - start > timeout:
            raise FinetuneError(problems=[Problem("--timeout", "", f"trials still running after {timeout:.0f} s: {line}")])


def collect_and_plot(out: Path, *, log: Log) -> Any:
    """Stage 4: results.csv, results.md, the transfer heatmaps and the learning curves."""
    from finetune.analysis.plots import learning_curves, transfer_heatmaps
    from finetune.analysis.results import collect, markdown_text, write_tables

    table = collect(out)
    csv_path, md_path, *_ = write_tables(table)
    heatmap = transfer_heatmaps(table, out / "plots" / "transfer-heatmap.png")
    curves = learning_curves(out, out / "plots" / "curves")
    best = markdown_text(table).split("## Best hyperparameters per cell", 1)[-1]
    print("## Best hyperparameters per cell" + best, flush=True)
    log(f"wrote {csv_path}, {md_path}")
    log(f"wrote {heatmap} and {len(curves)} learning curves under {out / 'plots' / 'curves'}")
    return table


def _check_slurm() -> None:
    """Fail before pretraining when there is no SLURM controller to talk to."""
    import subprocess

    hint = "run on a cluster's login node, or start the test cluster: scripts/slurm-cluster.sh start DIR"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        raise UsageError(problems=[Problem("--executor", "", f"slurm: no sbatch/sinfo on PATH ({hint})")])
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise UsageError(problems=[Problem("--executor", "", f"slurm: sinfo did not answer in 30 s ({hint})")]) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["exit code " + str(proc.returncode)])[-1]
        raise UsageError(problems=[Problem("--executor", "", f"slurm: sinfo failed: {last} ({hint})")])


def run_demo(*, executor: str = "local", out: str | os.PathLike[str] | None = None, size: str = "demo",
             parallel: int | None = None, timeout: float | None = None, overrides: list[str] = ()) -> int:
    """The whole demo; 0 when every trial finished, 1 when some failed (the table says which)."""
    if size not in SIZES:
        raise UsageError(problems=[Problem("--size", "", f"unknown size {size!r}; choose one of {', '.join(SIZES)}")])
    if executor == "slurm":
        _check_slurm()
    spec = SIZES[size]
    repo = repo_root()
    out_dir = Path(out) if out else repo / "runs" / ("demo" if size == "demo" else f"demo-{size}")
    out_dir = out_dir.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()

    _say("1/4 plan", f"Russian/Polish cross-language matrix, size {size}, executor {executor}")
    plan = plan_demo(out_dir, spec, overrides=list(overrides), log=lambda m: _say("1/4 plan", m), write=False)
    _say("2/4 models", "normal and IPA pretrained models")
    ensure_models(model_targets(plan), spec, log=lambda m: _say("2/4 models", m))
    plan_demo(out_dir, spec, overrides=list(overrides), log=lambda m: _say("1/4 plan", m))
    if parallel is None and executor == "local":
        parallel = max(1, min(os.cpu_count() or 1, 4))  # one thread per trial (see _env)
    _say("3/4 run", f"submitting to the {executor} executor" + (f", {parallel} trials at a time" if executor == "local" else ""))
    states = run_trials(out_dir, executor, parallel=parallel, timeout=timeout, log=lambda m: _say("3/4 run", m))
    _say("4/4 collect", "tables and heatmaps")
    table = collect_and_plot(out_dir, log=lambda m: _say("4/4 collect", m))
    failed = [r for r in table.rows if r.state != "finished"]
    for r in failed:
        print(f"  trial {r.trial_id} {r.state}: {r.reason or 'see ' + str(layout.log_file(layout.trial_dir(out_dir, r.trial_id)))}",
              file=sys.stderr)
    _say("done", f"{len(table.rows) - len(failed)}/{len(states)} trials finished in {time.monotonic() - start:.0f} s;"
                 f" open {out_dir / 'plots' / 'transfer-heatmap.png'}")
    return 0 if not failed else 1
