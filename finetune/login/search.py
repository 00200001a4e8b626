"""A grid config's ``search`` block -> an Optuna study shared by the workers of one array.

The block (validated with the grid, every problem at once)::

    "search": {"sampler": "tpe", "trials": 24, "workers": 4, "pruner": "successive-halving",
               "metric": "macro_f1", "direction": "maximize", "seed": 0}

Parameters: a list is categorical, ``{"low", "high", "log"}`` a float (or integer) range,
``{"low", "high", "step"}`` a stepped range (integers when low, high and step are); scalars stay
fixed. Several model types make ``model_type`` one more categorical parameter.

The study lives in the plan folder, in Optuna's journal file storage (one append-only file and
symlink locks: no database server, works on a shared file system)::

    DIR/search/search.json      the resolved search (SPEC below), written once
    DIR/search/study.journal    the Optuna study
    DIR/search/workers/<w>.json a worker's current trial; its mtime is the worker's heartbeat

``trials`` is the budget: trials that complete or are pruned. Asking happens under one lock, so
the budget holds exactly with any number of workers; a failed trial does not count (its place is
asked again) but ``trials`` failures stop the search. A trial whose worker's heartbeat is older
than ``stale_after_s`` is failed by whichever worker asks next.

Pure except for ``open_study``, ``ask`` and ``tell`` (the journal and the worker files). Optuna is
imported inside functions; nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import Problem
from finetune.login.jsonpath import join_path

DEFAULTS: dict[str, Any] = {"sampler": "tpe", "workers": 1, "pruner": "none", "seed": None, "startup_trials": 5,
                            "reduction_factor": 3, "enqueue": [], "stale_after_s": 600.0}
SAMPLERS = ("grid", "random", "tpe", "qmc")
PRUNERS = ("none", "median", "successive-halving", "hyperband")
LOWER_IS_BETTER = frozenset({"loss"})
SEARCH_DIR = "search"
SPEC_FILE = "search.json"
JOURNAL_FILE = "study.journal"
WORKERS_DIR = "workers"
STUDY_NAME = "finetune-search"
SPEC_VERSION = 1


@dataclass(frozen=True)
class Param:
    """One searched parameter: categorical (``choices``) or a range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    @classmethod
    def of(cls, name: str, value: Any, integer: bool) -> Param:
        if isinstance(value, list):
            return cls(name, choices=tuple(value))
        step = value.get("step")
        integer = integer or all(isinstance(v, int) and not isinstance(v, bool)
                                 for v in (value["low"], value["high"], step if step is not None else 1))
        return cls(name, low=value["low"], high=value["high"], log=bool(value.get("log")), step=step, integer=integer)

    def grid_values(self) -> list[Any] | None:
        """Every value, when there are finitely many (a list, a stepped or an integer range)."""
        if self.choices is not None:
            return list(self.choices)
        if self.log:
            return list(range(int(self.low), int(self.high) + 1)) if self.integer else None
        if self.step is None and not self.integer:
            return None
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9))
        values = [self.low + i * step for i in range(n + 1)]
        return [int(round(v)) for v in values] if self.integer else [round(v, 12) for v in values]

    def distribution(self):
        import optuna.distributions as d

        if self.choices is not None:
            return d.CategoricalDistribution(list(self.choices))
        if self.integer:
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return any(value == c and type(value) is type(c) or _same_number(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        values = self.grid_values()
        return values is None or any(_same_number(value, v) for v in values)


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))


def is_range(value: Any) -> bool:
    return isinstance(value, dict)


def _integer_names() -> set[str]:
    from finetune.login.schema import load_schema

    props = load_schema("config")["properties"]["hyperparameters"]["properties"]
    out = set()
    for name, schema in props.items():
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        if "integer" in types:
            out.add(name)
    return out


def searched(parameters: dict[str, Any]) -> dict[str, Param]:
    """The parameters a search samples (lists and ranges), in the order written."""
    integers = _integer_names()
    return {name: Param.of(name, v, name in integers) for name, v in parameters.items()
            if isinstance(v, list) or is_range(v)}


# ---------------------------------------------------------------------------------------------
# validation (pure)


def range_problems(name: str, value: dict[str, Any], source: str) -> list[Problem]:
    """A schema-valid range of hyperparameter ``name`` at ``$.parameters.<name>``."""
    from finetune.login.schema import validate_hyperparameter

    path = join_path("$.parameters", name)
    low, high, step, log = value["low"], value["high"], value.get("step"), bool(value.get("log"))
    problems = [Problem(source, join_path(path, k), m) for k in ("low", "high")
                for m in validate_hyperparameter(name, value[k])]
    if name not in _numeric_names():
        problems.append(Problem(source, path, f"{name} is not a number: give a list of values instead of a range"))
        return problems
    if low >= high:
        problems.append(Problem(source, path, f"low ({low}) must be below high ({high})"))
    if log and step is not None:
        problems.append(Problem(source, path, "log and step exclude each other (Optuna samples either)"))
    if log and low <= 0:
        problems.append(Problem(source, join_path(path, "low"), f"a log range needs low > 0 (got {low})"))
    if name in _integer_names() and step is not None and not float(step).is_integer():
        problems.append(Problem(source, join_path(path, "step"), f"{name} is an integer: step must be one (got {step})"))
    if step is not None and low < high:
        n = (high - low) / step
        if not math.isclose(n, round(n), rel_tol=0, abs_tol=1e-9):
            problems.append(Problem(source, join_path(path, "step"),
                                    f"high - low ({high - low:g}) is not a multiple of step ({step:g})"))
    return problems


def _numeric_names() -> set[str]:
    from finetune.login.schema import load_schema

    props = load_schema("config")["properties"]["hyperparameters"]["properties"]
    out = set()
    for name, schema in props.items():
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        if "integer" in types or "number" in types:
            out.add(name)
    return out


def search_problems(search: dict[str, Any], parameters: dict[str, Any], source: str, *,
                    zipped: bool, excluded: bool) -> list[Problem]:
    """Cross checks of a schema-valid search block with the grid's parameters."""
    problems: list[Problem] = []
    params = {n: p for n, p in searched(parameters).items()}
    sampler = search.get("sampler", DEFAULTS["sampler"])
    if not params:
        problems.append(Problem(source, "$.parameters", "nothing to search: give at least one list or range"))
    if zipped:
        problems.append(Problem(source, "$.zip", "zip groups cannot be searched (Optuna samples each parameter on "
                                "its own): drop zip or the search block"))
    if excluded:
        problems.append(Problem(source, "$.exclude", "exclude rules cannot be searched: narrow the ranges or lists "
                                "instead, or drop the search block"))
    if sampler == "grid":
        size: int | None = 1
        for name, p in params.items():
            values = p.grid_values()
            if values is None:
                problems.append(Problem(source, join_path("$.parameters", name),
                                        "the grid sampler needs a list or a {low, high, step} range"))
                size = None
            elif size is not None:
                size *= len(values)
        if "trials" in search and params and size and search["trials"] > size:
            problems.append(Problem(source, "$.search.trials",
                                    f"the grid has {size} points: the grid sampler cannot run {search['trials']} trials"))
    elif "trials" not in search:
        problems.append(Problem(source, "$.search.trials", f"missing required key (the budget; only the grid "
                                f"sampler defaults to every point, this is {sampler})"))
    for i, point in enumerate(search.get("enqueue") or []):
        at = join_path("$.search.enqueue", i)
        for name, value in point.items():
            if name not in params:
                from finetune.login.schema import did_you_mean

                problems.append(Problem(source, join_path(at, name), "not a searched parameter"
                                        + did_you_mean(name, params)))
            elif not params[name].contains(value):
                problems.append(Problem(source, join_path(at, name), f"{value!r} is not in the searched values"))
    return problems


def config_problems(search: dict[str, Any], config: dict[str, Any], source: str, *, config_source,
                    matrix: bool, model_types: Sequence[str]) -> list[Problem]:
    """Checks against the merged config: pruning needs evaluations during training."""
    problems = []
    if matrix:
        problems.append(Problem("--matrix", "", "a search runs one language set: drop --matrix or the search block"))
    pruner = search.get("pruner", DEFAULTS["pruner"])
    training = config.get("training") or {}
    if pruner != "none" and not eval_interval(training):
        key = "count_eval_interval" if training.get("workload") == "count" else "eval_interval"
        path = f"$.training.{key}"
        problems.append(Problem(config_source(path), path, f"pruner {pruner!r} needs evaluations during training "
                                f"(set {key}), or use pruner \"none\""))
    return problems


def eval_interval(training: dict[str, Any]) -> int | None:
    key = "count_eval_interval" if training.get("workload") == "count" else "eval_interval"
    return training.get(key) or None


def resolve(search: dict[str, Any], parameters: dict[str, Any], training: dict[str, Any],
            model_types: Sequence[str]) -> dict[str, Any]:
    """SPEC: the block with defaults, metric and direction filled in, the searched parameters
    (``model_type`` too when several are planned) and the pruning step unit."""
    spec = {**DEFAULTS, **{k: v for k, v in search.items() if k != "$comment"}}
    spec["metric"] = spec.get("metric") or training.get("metric") or "macro_f1"
    spec["direction"] = spec.get("direction") or ("minimize" if spec["metric"] in LOWER_IS_BETTER else "maximize")
    params = {n: _param_record(p) for n, p in searched(parameters).items()}
    if len(model_types) > 1:
        params["model_type"] = {"name": "model_type", "choices": list(model_types)}
    spec["params"] = params
    if "trials" not in spec:
        spec["trials"] = math.prod(len(Param(**p).grid_values() or []) for p in params.values())
    spec["min_resource"] = search.get("min_resource") or eval_interval(training) or 1
    return spec


def _param_record(p: Param) -> dict[str, Any]:
    out = {k: getattr(p, k) for k in ("name", "low", "high", "log", "step", "integer")}
    if p.choices is not None:
        out = {"name": p.name, "choices": list(p.choices)}
    return out


def params_of(spec: dict[str, Any]) -> dict[str, Param]:
    out = {}
    for name, r in spec["params"].items():
        r = dict(r)
        if "choices" in r:
            r["choices"] = tuple(r["choices"])
        out[name] = Param(**r)
    return out


# ---------------------------------------------------------------------------------------------
# Optuna objects


def make_sampler(spec: dict[str, Any], number: int = 0):
    """The sampler for the ``number``-th ask. Workers are separate processes: a sampler seeded
    alike in each would draw the same "random" points, so the seed moves with the trial number."""
    import optuna

    seed = spec.get("seed")
    per_ask = None if seed is None else seed + number
    kind = spec["sampler"]
    if kind == "grid":
        space = {n: p.grid_values() for n, p in params_of(spec).items()}
        return optuna.samplers.GridSampler(space, seed=per_ask)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=per_ask)
    if kind == "qmc":  # the sequence comes from the study; the scramble must be the same for all
        import warnings

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return _known_space_qmc(spec)(seed=seed, scramble=seed is not None,
                                      independent_sampler=optuna.samplers.RandomSampler(seed=per_ask),
                                      warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=per_ask, n_startup_trials=spec["startup_trials"], constant_liar=True)


def _known_space_qmc(spec: dict[str, Any]):
    """Optuna's QMCSampler, told the search space up front.

    Left to itself it learns the space from the study's first trial, which it samples with the
    independent (random) sampler: the search would start with a random point and, with several
    workers, the sequence would depend on which asks came first. Our space is known and the same
    for every trial, so every trial, the first included, takes the next point of the one sequence
    (its index is kept in the study, counted up under the ask lock)."""
    import optuna

    space = {name: p.distribution() for name, p in params_of(spec).items()}

    class KnownSpaceQMCSampler(optuna.samplers.QMCSampler):
        def infer_relative_search_space(self, study, trial):
            return dict(space)

    return KnownSpaceQMCSampler


def make_pruner(spec: dict[str, Any]):
    """Steps are training steps (optimizer steps; counts for the count workload); the first rung
    of successive halving and hyperband is the first evaluation."""
    import optuna

    kind = spec["pruner"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"], n_warmup_steps=0)
    if kind == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["min_resource"],
                                                      reduction_factor=spec["reduction_factor"])
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec["min_resource"], max_resource="auto",
                                              reduction_factor=spec["reduction_factor"])
    return optuna.pruners.NopPruner()


def search_dir(plan_dir: str | os.PathLike[str]) -> Path:
    return Path(plan_dir) / SEARCH_DIR


def spec_path(plan_dir: str | os.PathLike[str]) -> Path:
    return search_dir(plan_dir) / SPEC_FILE


def is_search(plan_dir: str | os.PathLike[str]) -> bool:
    return spec_path(plan_dir).is_file()


def load_spec(plan_dir: str | os.PathLike[str]) -> dict[str, Any]:
    from finetune.errors import ConfigError
    from finetune.fileio import read_json

    path = spec_path(plan_dir)
    if not path.is_file():
        raise ConfigError(problems=[Problem(str(path), "", "no search here (run `finetune search` first)")])
    return read_json(path)


def storage(plan_dir: str | os.PathLike[str]):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = search_dir(plan_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))


def open_study(plan_dir: str | os.PathLike[str], spec: dict[str, Any], number: int | None = None):
    """The study (created on first use) with the pruner, and with the sampler for the
    ``number``-th ask; without ``number`` (to tell, report, look) a plain one: the grid
    sampler's end-of-grid ``study.stop()`` only works inside ``study.optimize``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(spec, number) if number is not None else optuna.samplers.RandomSampler()
    return optuna.create_study(study_name=STUDY_NAME, storage=storage(plan_dir), load_if_exists=True,
                               direction=spec["direction"], sampler=sampler, pruner=make_pruner(spec))


def enqueue_once(study, spec: dict[str, Any]) -> None:
    """The block's ``enqueue`` points, once per study (a study attribute remembers)."""
    if study.user_attrs.get("enqueued") or not spec.get("enqueue"):
        return
    for point in spec["enqueue"]:
        study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr("enqueued", True)


def suggest(trial, spec: dict[str, Any]) -> dict[str, Any]:
    """Sample every searched parameter of ``trial``; returns name -> value."""
    out = {}
    for name, p in params_of(spec).items():
        if p.choices is not None:
            out[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.integer:
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[name] = trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)
    return out


# ---------------------------------------------------------------------------------------------
# the budget, asked and told by workers (one lock around asking)


@dataclass
class Tally:
    done: int  # completed or pruned, duplicates aside
    running: list[Any]  # FrozenTrials
    failed: int  # failed, duplicates aside

    def spent(self, budget: int) -> bool:
        return self.done + len(self.running) >= budget


def tally(study) -> Tally:
    from optuna.trial import TrialState

    done, running, failed = 0, [], 0
    for t in study.get_trials(deepcopy=False):
        dup = "duplicate_of" in t.user_attrs
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not dup:
            done += 1
        elif t.state == TrialState.RUNNING:
            running.append(t)
        elif t.state == TrialState.FAIL and not dup:
            failed += 1
    return Tally(done, running, failed)


class AskLock:
    """Optuna's symlink lock (safe on NFS), around counting and asking."""

    def __init__(self, plan_dir: str | os.PathLike[str]):
        from optuna.storages.journal import JournalFileSymlinkLock

        folder = search_dir(plan_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = JournalFileSymlinkLock(str(folder / "ask"))

    def __enter__(self) -> AskLock:
        while not self._lock.acquire():
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def worker_path(plan_dir: str | os.PathLike[str], worker: str) -> Path:
    return search_dir(plan_dir) / WORKERS_DIR / f"{worker}.json"


def fail_stale(plan_dir: str | os.PathLike[str], study, spec: dict[str, Any], running: list[Any],
               now: float | None = None) -> list[int]:
    """Fail running trials whose worker's heartbeat (its file's mtime) is older than
    ``stale_after_s``, or whose worker holds another trial now. Returns their numbers."""
    from optuna.trial import TrialState

    now = time.time() if now is None else now
    candidates = []
    for t in running:
        worker = t.user_attrs.get("worker")
        path = worker_path(plan_dir, worker) if worker else None
        try:
            held = _read(path) if path else None
            age = now - path.stat().st_mtime if path else math.inf
        except OSError:
            held, age = None, math.inf
        holds_it = isinstance(held, dict) and held.get("number") == t.number
        if holds_it and age <= spec["stale_after_s"] and not _dead_here(held):
            continue
        candidates.append((t, worker, held, age, holds_it))
    # A preempted worker beats no heartbeat while its job waits in the queue to be requeued:
    # one squeue for all, and a worker whose job SLURM still holds keeps its trial.
    queued = slurm_jobs_alive([str(h["job"]) for _, _, h, _, yes in candidates if yes and h.get("job")])
    failed = []
    for t, worker, held, age, holds_it in candidates:
        if holds_it and str(held.get("job")) in queued:
            continue
        if not holds_it:
            why = f"worker {worker} no longer holds it"
        elif _dead_here(held):
            why = f"worker {worker} died (process {held.get('pid')} on {held.get('host')} is gone)"
        else:
            why = f"worker {worker} stopped beating ({age:.0f}s > stale_after_s {spec['stale_after_s']:g})"
        study._storage.set_trial_user_attr(t._trial_id, "failed_reason", why)
        study.tell(t.number, state=TrialState.FAIL)
        trial_id = t.user_attrs.get("trial_id")
        if trial_id:
            tdir = layout.trial_dir(plan_dir, trial_id)
            if tdir.is_dir() and not layout.result_file(tdir).exists():
                layout.write_state(tdir, "failed", why)
        failed.append(t.number)
    return failed


def _dead_here(held: dict[str, Any]) -> bool:
    """The worker ran on this machine and its process is gone (no need to wait for its heartbeat)."""
    import socket

    pid = held.get("pid")
    if held.get("preempted") or held.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False  # a preempted worker waits to be requeued: its heartbeat (or its SLURM job) decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def slurm_jobs_alive(job_ids: list[str]) -> set[str]:
    """Those of ``job_ids`` that squeue still lists (pending, requeued, running); empty when
    there are none or squeue cannot answer (then the heartbeat alone decides)."""
    import shutil
    import subprocess

    ids = sorted({j for j in job_ids if j.isdigit()})
    if not ids or shutil.which("squeue") is None:
        return set()
    try:
        proc = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%A"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()} if proc.returncode == 0 else set()


def _read(path: Path | None) -> Any:
    import json

    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def objective(result: dict[str, Any], metric: str) -> float | None:
    """The value a trial tells: ``metric`` on the eval split, averaged over the eval languages."""
    values = []
    for splits in (result.get("metrics") or {}).values():
        v = ((splits or {}).get("eval") or {}).get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            values.append(float(v))
    return sum(values) / len(values) if values else None
