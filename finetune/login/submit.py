"""Plan -> arrays on a scheduler, with a manifest that always says what is queued.

``submit`` picks the trials that need to run (neither finished, ``finetune.layout.is_finished``, nor
queued or running per one scheduler call), checks that their inputs exist
(``finetune.login.check``, once per distinct set of inputs), groups them by resources into job
arrays (split at the cluster's MaxArraySize), renders one script per array and submits them,
writing ``DIR/manifest.json`` after every sbatch. It writes O(arrays) files: the batch's
``groups.json`` and one script and index file per array (``finetune.login.batch``); each array
task makes its trial's folder and frozen config.json when the trial starts. Everything up to the first sbatch is checked
first: bad input raises before anything is written or submitted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import ConfigError, FinetuneError, Problem, UsageError
from finetune.login import evaluations, executors, manifest, reconcile, shipped
from finetune.login.batch import write_groups
from finetune.login.check import check_trials
from finetune.login.executors.base import ArrayJob, SchedulerError, write_job_files
from finetune.login.executors.resources import resolve_slurm
from finetune.login.render import (
    ShellSafe,
    engine_for,
    join,
    lift_begin_time,
    line_breaks,
    quote,
    render,
    with_requeue_protocol,
)
from finetune.login.schema import field_error, validate_field

DEFAULT_TEMPLATE = shipped.template(shipped.ARRAY_TEMPLATE)  # jobs/templates/, or the wheel's copy
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default
FLAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
STR_KEYS = ("account", "partition", "qos", "output")
# After the first rank of a multi-task step ends, srun waits this long for the others before it
# ends them (a crashed rank must not leave the rest waiting in a collective until its timeout;
# ranks that checkpointed after USR2 leave within moments of each other, and none is cut short).
SRUN_WAIT_S = 60


@dataclass
class SubmitReport:
    executor: str
    arrays: list[ArrayJob]
    scheduler: bool = True  # False: the executor ran the trials to the end (local)
    job_ids: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # trial ids sent to the executor
    finished: list[str] = field(default_factory=list)  # skipped: finished (finetune.layout.is_finished)
    active: list[str] = field(default_factory=list)  # skipped: queued or running
    superseded: list[str] = field(default_factory=list)  # skipped: a newer trial replaced it (inputs changed)
    deferred: list[str] = field(default_factory=list)  # not queued now: the queue limit is reached (submit again)
    queue_limit: int | None = None  # array tasks that could still be queued when this submit started
    dry_run: bool = False
    manifest: Path | None = None
    warnings: list[Problem] = field(default_factory=list)  # dry run: missing inputs, listed not refused
    evaluating: list[str] = field(default_factory=list)  # of the trials sent: finished ones, to be scored only
    unfinished: list[str] = field(default_factory=list)  # `finetune evaluate`: skipped, no trained model yet
    failed: list[str] = field(default_factory=list)  # ran here (no scheduler) and did not end done: see failures()

    @property
    def sbatch_calls(self) -> int:
        return len(self.job_ids)

    @property
    def scripts(self) -> list[Path]:
        return [job.script_path for job in self.arrays]

    def summary(self) -> str:
        skipped = f"{len(self.finished)} finished, {len(self.active)} queued or running"
        if self.unfinished:
            skipped += f", {len(self.unfinished)} not trained yet"
        if self.superseded:
            skipped += f", {len(self.superseded)} superseded"
        if self.deferred:
            skipped += (f"; {len(self.deferred)} left for later (queue limit: room for {self.queue_limit} more "
                        "array tasks; run submit again, or submit --follow)")
        scoring = (f" ({len(self.evaluating)} of them only evaluated: trained before, eval languages "
                   "without a current score)" if self.evaluating else "")
        if self.dry_run:
            tasks = sum(len(j.trial_ids) for j in self.arrays)
            return (f"dry run ({self.executor}): would submit {tasks} trials{scoring} in {len(self.arrays)} arrays; "
                    f"skipped {skipped}; scripts: {', '.join(str(p) for p in self.scripts) or '(none)'}")
        if not self.submitted:
            return f"nothing to submit ({skipped})"
        verb = "submitted" if self.scheduler else "ran"
        return (f"{verb} {len(self.submitted)} trials{scoring} in {len(self.arrays)} arrays ({self.executor}: "
                f"{', '.join(self.job_ids)}); skipped {skipped}; manifest: {self.manifest}")


# ---------------------------------------------------------------------------------------------
# the plan directory (through finetune.login.plan)


def plan_trial_ids(plan_dir: Path) -> list[str]:
    from finetune.login.plan import load_plan

    return [t.id for t in load_plan(plan_dir).trials]


@dataclass
class Todo:
    """What a submission sends, checked in memory before anything is written.

    Trials with a group in plan.json go as their record (the array task freezes their config
    from it and the batch's groups.json); a trial whose group plan.json lacks runs the
    ``config.json`` frozen before (by hand or an older tool), read here once."""

    ids: list[str] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)  # the slurm section is what counts
    records: list[str | None] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # -> jobs/<batch>/groups.json
    problems: list[Problem] = field(default_factory=list)
    # one representative TRIAL_CONFIG per distinct set of inputs: (file, config, trial ids it stands for)
    checks: list[tuple[str, dict[str, Any], list[str]]] = field(default_factory=list)


@dataclass
class Evaluate:
    """`finetune evaluate`: submit finished trials to be scored again (no training).

    ``languages``: what to score (None: each trial's eval languages); ``trials``: only these
    (None: every finished one); ``datasets``/``fingerprints``: TRIAL_CONFIG dataset entries and
    content fingerprints of languages the plan's groups do not name."""

    languages: list[str] | None = None
    trials: set[str] | None = None
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    threads: int | None = None  # torch CPU threads of each evaluation (None: the job's default)


def _known_datasets(plan: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Dataset entries and fingerprints of every language some build of this plan configured."""
    entries: dict[str, dict[str, Any]] = {}
    prints: dict[str, Any] = {}
    for group in plan.groups.values():
        for lang, entry in (group.get("datasets") or {}).items():
            if lang not in entries:
                entries[lang] = entry
                prints[lang] = ((group.get("inputs") or {}).get("datasets") or {}).get(lang)
    return entries, prints


def _evaluation_problems(plan_dir: Path, plan: Any, trials: list[Any], evaluate: Evaluate) -> list[Problem]:
    """Before anything is sent: every asked language has a dataset (in the trial's group, another
    build of the plan, or --config) of the task type the trial was trained on."""
    from finetune.login.tasks import task_type

    known, _ = _known_datasets(plan)
    out: list[Problem] = []
    for t in trials:
        group = plan.groups.get(t.group) or {}
        entries = {**known, **(group.get("datasets") or {}), **evaluate.datasets}
        langs = sorted(set(evaluate.languages or t.eval_languages))
        where = str(layout.config_file(layout.trial_dir(plan_dir, t.id)))
        missing = [lang for lang in langs if lang not in entries]
        if missing:
            out.append(Problem("--languages", "", f"no dataset for {', '.join(missing)} in this plan's configs "
                                                  f"(trial {t.id}): pass the layers that name it with --config"))
            continue
        trained = {task_type(entries[lang]) for lang in t.train_languages if lang in entries}
        if len(trained) == 1:
            kind = trained.pop()
            other = [lang for lang in langs if task_type(entries[lang]) != kind]
            if other:
                out.append(Problem(where, "$.datasets", f"{', '.join(other)}: not a {kind} dataset (the task type "
                                                        "the trial was trained on)"))
    return sorted(set(out))

def _with_evaluation(work: Todo, plan: Any, evaluate: Evaluate) -> None:
    """Records that ask for scores (``"evaluate"``, read by finetune.login.batch.request_evaluation)
    and groups that name the datasets of the extra languages."""
    from finetune.login.batch import record_text

    by_id = {t.id: t for t in plan.trials}
    for i, tid in enumerate(work.ids):
        t = by_id[tid]
        langs = sorted(set(evaluate.languages or t.eval_languages))
        record = json.loads(work.records[i] or record_text(t))
        extra = {"evaluate_threads": evaluate.threads} if evaluate.threads else {}
        work.records[i] = json.dumps({**record, "evaluate": langs, **extra}, ensure_ascii=False)
    known, known_prints = _known_datasets(plan)
    for gid, group in list(work.groups.items()):  # the group's own entries first, then --config's
        inputs = dict(group.get("inputs") or {})
        inputs["datasets"] = {**known_prints, **(inputs.get("datasets") or {}), **evaluate.fingerprints}
        work.groups[gid] = {**group, "datasets": {**known, **(group.get("datasets") or {}), **evaluate.datasets},
                            "inputs": inputs}


def _refuse_oracle(plan: Any, trials: list[Any]) -> None:
    """each-language trials report every language at its own best step: a saved model cannot add one."""
    oracle = [t.id for t in trials
              if (((plan.groups.get(t.group) or {}).get("config") or {}).get("training") or {}).get("selection")
              == "each-language"]
    if oracle:
        raise UsageError(problems=[Problem("--trials", "", f"{len(oracle)} trials use training.selection "
                                           f"each-language ({', '.join(oracle[:5])}{' ...' if len(oracle) > 5 else ''}): "
                                           "each language is reported at its own best step, which a saved model "
                                           "cannot reproduce; leave them out with --trials")])


def todo_trials(plan_dir: Path, plan: Any, trials: list[Any]) -> Todo:
    """Configs, records and checks of the trials to submit: one config per group and per
    distinct input set (model type, languages), not per trial; no file written."""
    from finetune.fileio import read_json
    from finetune.login.batch import record_text

    out = Todo()
    plan_path = str(layout.plan_file(plan_dir))
    shared: dict[tuple, tuple[str, dict[str, Any], list[str]]] = {}
    group_configs: dict[str, dict[str, Any]] = {}
    texts: dict[tuple, Any] = {}  # record_text's cache
    hyper_checks = _HyperparameterChecks(plan_path)
    for t in trials:
        if t.group in plan.groups:
            if t.group not in group_configs:
                cfg = plan.trial_config(t)
                group_configs[t.group] = cfg
                out.groups[t.group] = plan.groups[t.group]
                out.problems += trial_problems(cfg, plan_path)
            else:  # the group's trials differ in their hyperparameters only: check those
                out.problems += hyper_checks.problems(t, group_configs[t.group].get("provenance") or {})
            out.ids.append(t.id)
            out.configs.append(group_configs[t.group])
            out.records.append(record_text(t, texts))
            key = (t.group, t.model_type, tuple(sorted(t.train_languages)), tuple(sorted(t.eval_languages)))
            if key not in shared:
                shared[key] = (plan_path, plan.trial_config(t), [])
            shared[key][2].append(t.id)
            continue
        path = layout.config_file(layout.trial_dir(plan_dir, t.id))
        if not path.is_file():
            plan.trial_config(t)  # raises: no group (trial id) and nothing frozen
        cfg = read_json(path)
        out.ids.append(t.id)
        out.configs.append(cfg)
        out.records.append(None)
        out.problems += trial_problems(cfg, str(path))
        out.checks.append((str(path), cfg, [t.id]))
    out.checks += list(shared.values())
    out.problems = sorted(set(out.problems))
    return out


class _HyperparameterChecks:
    """The trial schema's checks of many trials' hyperparameters, cheaply: each shape (the
    hyperparameters a trial shares with its set, and its grid point's keys) once, whole. The
    values of the other trials' grid points were checked when plan.json was read
    (``finetune.login.plan_file.parse``), against the same schema (trial.schema.json's
    hyperparameters are config.schema.json's), so they are not checked again per trial."""

    def __init__(self, plan_path: str) -> None:
        self.plan_path = plan_path
        self.shapes: set[tuple] = set()
        self.keep: list[Any] = []  # the objects whose id() is in self.shapes

    def problems(self, trial: Any, provenance: dict[str, str]) -> list[Problem]:
        shape = (id(trial.shared()), id(provenance), tuple(trial.grid_point))
        if shape in self.shapes:
            return []
        self.shapes.add(shape)
        self.keep.append((trial.shared(), provenance))
        return validate_field("trial", ("hyperparameters",), trial.hyperparameters,
                              lambda path: provenance.get(path, self.plan_path))


# ---------------------------------------------------------------------------------------------
# what the schedulers still hold


def queued_trials(entries: dict[str, dict[str, Any]], made: dict[str, Any] | None = None) -> set[str]:
    """Trials whose latest submission a scheduler still holds (one ``state`` call per executor).

    Asked whatever executor submits now: a trial queued by ``slurm`` or ``submitit`` must not go
    again through ``local``. When a scheduler cannot answer, submitting would risk duplicates: error.
    """
    out: set[str] = set()
    for name, group in manifest.by_executor(entries).items():
        if not executors.is_scheduler(name):
            continue
        try:
            ex = (made or {}).get(name) or executors.make_executor(name)
            states = ex.state(sorted({str(e["job_id"]) for e in group.values()}))
        except SchedulerError as e:
            raise FinetuneError(f"{len(group)} trials were submitted to {name} before, and it cannot say "
                                f"whether they are still queued: {e}") from None
        out |= {t for t, e in group.items() if (s := states.get(manifest.task_key(e))) is not None and s.active}
    return out


def adopt_unrecorded(plan_dir: Path, submissions: dict[str, Any], executor: str) -> dict[str, Any]:
    """Record the plan's queued arrays that the manifest misses (a SIGKILLed submitter, a deleted
    manifest.json): one squeue by the plan's job names (finetune.login.reconcile). Asked when the
    plan has (or may have had) SLURM arrays, sbatch's or submitit's; a scheduler that cannot answer
    stops a submit to SLURM."""
    if not reconcile.may_have_arrays(plan_dir, submissions, executor):
        return {}
    made = {"slurm": executors.make_executor("slurm")}  # its one squeue answers queued_trials too
    try:
        reconcile.adopt(plan_dir, submissions, made["slurm"])
    except SchedulerError as e:
        if executor in reconcile.NAMED or any(isinstance(x, dict) and x.get("executor") in reconcile.NAMED
                                              for x in submissions["submissions"]):
            raise FinetuneError(f"cannot ask SLURM which arrays of this plan are queued: {e}") from None
    return made


@contextlib.contextmanager
def _locked(plan_dir: Path) -> Iterator[Any]:
    """One submit (or cancel) at a time per plan: two at once could queue a trial twice.

    Yields the lock file: sbatch inherits it, so the lock outlives a SIGKILLed submitter until its
    last sbatch has returned (and that array is then found by its job name)."""
    import fcntl

    try:
        f = open(layout.submit_lock_file(plan_dir), "a")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise UsageError(problems=[Problem(str(plan_dir), "", f"cannot write in the plan folder: "
                                           f"{e.strerror or e}")]) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{plan_dir}: another submit or cancel is running on this plan") from None
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# resources -> directives (pure)


def _path(*parts: str) -> str:
    out = "$"
    for p in parts:
        out += f".{p}" if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", p) else f"[{json.dumps(p)}]"
    return out


def trial_problems(config: Any, config_file: str) -> list[Problem]:
    """Everything wrong with a frozen trial config about to be submitted: the trial schema (types,
    ranges, SLURM time and memory formats; one source with the planner and the trainer), then what
    would break or endanger a script. Each problem names the layer that set the value, when known."""
    from finetune.login.schema import validate_trial

    provenance = config.get("provenance") if isinstance(config, dict) else None
    provenance = provenance if isinstance(provenance, dict) else {}
    if isinstance(config, dict) and isinstance(config.get("slurm"), dict):
        config = {**config, "slurm": resolve_slurm(config["slurm"])}  # what every backend will use
    problems = validate_trial(config, config_file, provenance)
    if isinstance(config, dict):
        problems += _shell_problems(config.get("slurm"), config_file, provenance)
    return sorted(set(problems))


def slurm_problems(slurm: Any, config_file: str, provenance: dict[str, str] | None = None) -> list[Problem]:
    """Everything wrong with a ``slurm`` section: the config schema's rules, then :func:`_shell_problems`."""
    from finetune.login.schema import validate_field

    provenance = provenance or {}
    resolved = resolve_slurm(slurm) if isinstance(slurm, dict) else slurm
    problems = validate_field("config", ("slurm",), resolved, lambda path: provenance.get(path, config_file))
    return sorted(set(problems + _shell_problems(slurm, config_file, provenance)))


def _shell_problems(slurm: Any, config_file: str, provenance: dict[str, str]) -> list[Problem]:
    """Line breaks and flag names in a ``slurm`` section that would break or endanger a script
    (types and formats are the schema's)."""

    def problem(message: str, *parts: str) -> Problem:
        path = _path("slurm", *parts)
        return Problem(provenance.get(path, config_file), path, message)

    if not isinstance(slurm, dict):
        return []
    out: list[Problem] = []
    for key in STR_KEYS:
        if line_breaks(slurm.get(key)):
            out.append(problem("must not contain a line break", key))
    setup = slurm.get("setup", [])
    for i, line in enumerate(setup if isinstance(setup, list) else []):
        if isinstance(line, str) and line_breaks(line):
            p = problem("must be one shell line (a string without line breaks)", "setup")
            out.append(Problem(p.file, f"{p.path}[{i}]", p.message))
    extra = slurm.get("extra", {})
    for k, v in (extra.items() if isinstance(extra, dict) else ()):
        if not FLAG_RE.match(k):
            out.append(problem("is not an sbatch flag name (letters, digits, '-')", "extra", k))
        elif line_breaks(v):
            out.append(problem("must not contain a line break", "extra", k))
    per_task = slurm.get("trials_per_task")
    if isinstance(per_task, int) and per_task > 1:
        if (slurm.get("nodes") or 1) * (slurm.get("ntasks_per_node") or 1) > 1:
            out.append(problem("must be 1 for a job of several tasks (a bundle runs its trials one after another "
                               "in one process)", "trials_per_task"))
    return out


def _fit_problems(ex: Any, configs: list[tuple[Any, dict[str, Any]]]) -> list[Problem]:
    """Requests no node of their partition can hold, and ``training.device`` cuda where the trial
    cannot get a GPU (one scheduler query, one check per distinct request)."""
    from finetune.login.nodes import device_request_problems, request_problems

    if not ex.scheduler:  # the trials run on this machine: its devices must be there
        from finetune.login.nodes import local_device_problems

        out: list[Problem] = []
        for path, cfg in configs:
            out += [p for p in local_device_problems(cfg.get("training") or {}, str(path), cfg.get("provenance"))
                    if p not in out]
        return out
    ask = getattr(ex, "cluster", None)  # a backend registered from elsewhere may not know its nodes
    cluster = ask() if ask is not None else None
    out = []
    seen: set[str] = set()
    for path, cfg in configs:
        slurm = resolve_slurm(cfg.get("slurm", {}))
        device = str((cfg.get("training") or {}).get("device") or "auto")
        key = json.dumps([slurm.get(k) for k in ("partition", "cpus_per_task", "ntasks_per_node", "mem", "gpus",
                                                "nodes", "extra")] + [device, cfg.get("provenance") or {}],
                         sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        found = device_request_problems(cfg.get("training") or {}, slurm, cluster, str(path), cfg.get("provenance"))
        if cluster is not None:
            found += request_problems(slurm, cluster, str(path), cfg.get("provenance"))
        out += [p for p in found if p not in out]
    return out


def directives(slurm: dict[str, Any], time: str | None, log_pattern: str) -> list[ShellSafe]:
    """The ``#SBATCH`` flags of a resource group, sorted, values quoted (without the ``#SBATCH``)."""
    slurm = resolve_slurm(slurm)
    flags: dict[str, Any] = {}
    for key in ("account", "partition", "qos", "mem"):
        if slurm[key] is not None:
            flags[key] = slurm[key]
    cpus, per_node = slurm["cpus_per_task"], slurm["ntasks_per_node"]
    if slurm["launcher"] == "torchrun":  # one task per node (torchrun) holds the node's share
        cpus, per_node = cpus * per_node, 1
    flags["cpus-per-task"] = cpus
    flags["nodes"] = slurm["nodes"]
    flags["ntasks-per-node"] = per_node
    if slurm["gpus"]:
        flags["gres"] = f"gpu:{slurm['gpus']}"
    if time:
        flags["time"] = time
    flags["output"] = slurm["output"] or log_pattern
    for k, v in slurm["extra"].items():
        if v is None or v is False:
            flags.pop(k, None)
        else:
            flags[k] = v
    return [ShellSafe(f"--{k}" if v is True else f"--{k}={quote(v)}") for k, v in sorted(flags.items())]


def task_count(slurm: dict[str, Any]) -> int:
    s = resolve_slurm(slurm)
    return s["nodes"] * s["ntasks_per_node"]


def launcher(slurm: dict[str, Any], python: str) -> ShellSafe:
    """What goes before ``PYTHON -m finetune train TRIAL_DIR`` in the batch script.

    One task: nothing (the batch script runs the trial). Several, ``launcher: "srun"``: one srun
    step with every task of the job; each rank takes rank, world size and local rank from SLURM and
    meets the others at MASTER_ADDR:MASTER_PORT, which the script exports (the first host of the
    job's node list). ``"torchrun"``: one task per node runs ``finetune.compute.launch`` (torchrun
    that forwards USR2 to its workers) with ``ntasks_per_node`` workers and c10d rendezvous at the
    same address. srun itself forwards the signals it gets (USR2) to every task on every node.
    """
    slurm = resolve_slurm(slurm)
    if task_count(slurm) == 1:
        return ShellSafe("")
    srun = f'srun --wait={SRUN_WAIT_S} --kill-on-bad-exit=0 --cpus-per-task="${{SLURM_CPUS_PER_TASK:-1}}" '
    if slurm["launcher"] != "torchrun":
        return ShellSafe(srun)
    per_node = slurm["ntasks_per_node"]
    return ShellSafe(
        srun + '--ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
        + f"{quote(python)} -m finetune.compute.launch "
        + f'--nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node={per_node} --rdzv-backend=c10d '
        + '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" --no-python '
    )


def resource_key(slurm: dict[str, Any], time: str | None) -> str:
    blob = json.dumps({"slurm": slurm, "time": time}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def job_name(plan_dir: Path, key: str) -> str:
    return f"{reconcile.job_prefix(plan_dir)}{key}"


def script_context(job_name: str, plan_dir: Path, index_file: Path, slurm: dict[str, Any],
                   time: str | None, python: str | None = None) -> dict[str, Any]:
    """Everything a template may use (jinja2 and old style alike)."""
    python = python or sys.executable
    log_pattern = str(layout.job_logs_dir(plan_dir) / "%x-%A_%a.out")
    slurm = resolve_slurm(slurm)
    return {
        "job_name": job_name,
        "directives": directives(slurm, time, log_pattern),
        "setup": [ShellSafe(line) for line in slurm["setup"]],  # shell code on purpose
        "plan_dir": str(plan_dir),
        "index_file": str(index_file),
        "python": python,
        "launcher": launcher(slurm, python),
        "distributed": task_count(slurm) > 1,  # export MASTER_ADDR/MASTER_PORT for the ranks
        "grace": int(slurm["signal_grace_s"]),
        # the trial folder and the requeue protocol (finetune.layout)
        "trials_dir": layout.TRIALS_DIR,
        "log_file": layout.LOG_FILE,
        "exit_requeue": layout.EXIT_REQUEUE,
        "lift_begin_time": lift_begin_time,  # after `scontrol requeue`: {{ lift_begin_time(indent) }}
        # old-style names
        "cpus": slurm["cpus_per_task"],
        "gpus": slurm["gpus"],
        "timeout": time or "",
        "mem": slurm["mem"] or "",
        "partition": slurm["partition"] or "",
        "account": slurm["account"] or "",
        "qos": slurm["qos"] or "",
        "nodes": slurm["nodes"],
        "ntasks_per_node": slurm["ntasks_per_node"],
        "output": slurm["output"] or log_pattern,
        "args": join(["-m", "finetune", "array-task", str(index_file)]
                     + (["--per-task", str(slurm["trials_per_task"])] if slurm["trials_per_task"] > 1 else [])),
        "per_task": int(slurm["trials_per_task"]),
        "temp_config_name": str(index_file),
    }


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def plan_arrays(plan_dir: Path, trials: list[tuple[str, dict[str, Any]]], *, batch: str,
                template: Path, timeout: str | None, throttle: int | None, max_array_size: int,
                python: str | None = None, records: dict[str, str | None] | None = None) -> list[ArrayJob]:
    """Group (trial id, trial config) pairs by resources, split at ``max_array_size``, render.
    ``records``: trial id -> its plan.json record, for the index files."""
    groups: dict[str, tuple[dict[str, Any], str | None, list[str]]] = {}
    seen: dict[int, tuple[dict[str, Any], str | None, str]] = {}  # configs shared by a group: resolve once
    for trial_id, cfg in trials:
        if id(cfg) not in seen:
            slurm = resolve_slurm(cfg.get("slurm"))
            time = timeout or slurm["time"]
            seen[id(cfg)] = (slurm, time, resource_key(slurm, time))
        slurm, time, key = seen[id(cfg)]
        groups.setdefault(key, (slurm, time, []))[2].append(trial_id)
    jobs: list[ArrayJob] = []
    folder = layout.batch_dir(plan_dir, batch)
    for key, (slurm, time, ids) in groups.items():
        per_task = int(slurm["trials_per_task"])
        for n, part in enumerate(chunks(ids, max_array_size * per_task)):
            name = reconcile.array_job_name(plan_dir, batch, key, n)  # unique per plan and array
            index = folder / f"{key}-{n}.index"
            context = script_context(name, plan_dir, index, slurm, time, python)
            text = render(template, context)
            if engine_for(template) == "format":  # an old-style template: it knows no requeue protocol
                text = with_requeue_protocol(text, grace=context["grace"], exit_requeue=context["exit_requeue"])
            jobs.append(ArrayJob(name=name, plan_dir=plan_dir, script_path=folder / f"{key}-{n}.sbatch",
                                 index_path=index, script=text, trial_ids=tuple(part), slurm=slurm,
                                 time=time, throttle=throttle,
                                 records=tuple(records.get(t) for t in part) if records else (),
                                 per_task=per_task))
    return jobs


# ---------------------------------------------------------------------------------------------
# prefetch check


def check_inputs(checks: list[tuple[str, dict[str, Any], list[str]]]) -> list[Problem]:
    """``finetune.login.check`` once per distinct set of inputs: (file, TRIAL_CONFIG, the trial
    ids it stands for), so each problem still says how many trials need the missing thing.

    The ``count`` stand-in needs no checkpoint, tokenizer or data.
    """
    real = [(f, c, ids) for f, c, ids in checks if (c.get("training") or {}).get("workload", "finetune") != "count"]
    if not real:
        return []
    return check_trials([(f, c) for f, c, _ in real], stands_for=[ids for _, _, ids in real])


def check_rendering(plan: Any, plan_dir: str | Path, *, template: str | Path | None = None,
                    timeout: str | None = None, python: str | None = None, executor: str | None = None) -> None:
    """Render the scripts a submission of ``plan`` into ``plan_dir`` would need, in memory, and
    check the flags and slurm sections: raises what ``submit`` would raise about them, so that a
    caller can refuse before writing the plan (one render per resource shape, not per trial).
    With ``executor``, also what the trials ask of where they run (``_fit_problems``: devices,
    and for a scheduler the partition's nodes, one query)."""
    plan_dir = Path(plan_dir).resolve()
    template_path = Path(template).resolve() if template else DEFAULT_TEMPLATE
    timeout = str(timeout) if timeout is not None else None
    _check_flags(template_path, timeout, None, None)
    shapes: dict[str, tuple[str, dict[str, Any]]] = {}
    for t in plan.trials:  # a group shares its slurm section: one trial of each will do
        shapes.setdefault(t.group, (t.id, plan.trial_config(t)))
    problems = [p for _tid, cfg in shapes.values()
                for p in slurm_problems(cfg.get("slurm", {}), str(layout.plan_file(plan_dir)), cfg.get("provenance"))]
    if not problems and executor is not None:
        problems = _fit_problems(executors.make_executor(executor), [(layout.plan_file(plan_dir), cfg)
                                                                      for _tid, cfg in shapes.values()])
    if problems:
        raise ConfigError("cannot submit:", problems=problems)
    plan_arrays(plan_dir, list(shapes.values()), batch="check", template=template_path, timeout=timeout,
                throttle=None, max_array_size=DEFAULT_MAX_ARRAY_SIZE, python=python)


# ---------------------------------------------------------------------------------------------
# submit


def _check_flags(template: Path, timeout: str | None, throttle: int | None, max_array_size: int | None) -> None:
    problems = []
    if not template.is_file():
        problems.append(Problem("--template", "", f"no such template: {template}"))
    bad_time = field_error("config", ("slurm", "time"), str(timeout)) if timeout is not None else None
    if bad_time:
        problems.append(Problem("--timeout", "", f"{bad_time} (got {str(timeout)!r})"))
    if throttle is not None and throttle < 1:
        problems.append(Problem("--throttle", "", "must be at least 1"))
    if max_array_size is not None and max_array_size < 1:
        problems.append(Problem("--max-array-size", "", "must be at least 1"))
    if problems:
        raise UsageError(problems=problems)


def submit(plan_dir: str | Path, *, executor: str = "auto", template: str | Path | None = None,
           timeout: str | None = None, throttle: int | None = None, dry_run: bool = False,
           max_array_size: int | None = None, parallel: int | None = None,
           python: str | None = None, max_trials: int | None = None,
           evaluate: Evaluate | None = None) -> SubmitReport:
    """Submit every trial of the plan that is neither finished nor queued (see module doc).

    A finished trial whose eval languages lack a current score (an eval language added to the
    layers, a dataset changed: finetune.login.evaluations) is sent too: its array task scores
    the saved model on them and trains nothing. ``evaluate`` (`finetune evaluate`): send the
    finished trials only, each to be scored on ``evaluate.languages`` whatever it has.

    ``max_trials``: refuse (UsageError naming --yes) when more trials than this would go.

    ``parallel``: trials at once for the local executor (default: its throttle, else cores/2).
    ``python``: the interpreter the scripts run (default: this one).
    ``dry_run``: decide, check and render; write the batch's groups.json, scripts and index
    files to read; submit nothing, no manifest entry, no trial folder.
    """
    plan_dir = Path(plan_dir).resolve()
    template_path = Path(template).resolve() if template else DEFAULT_TEMPLATE
    timeout = str(timeout) if timeout is not None else None
    _check_flags(template_path, timeout, throttle, max_array_size)
    name = executors.resolve_name(executor)
    ex = executors.make_executor(name, parallel=parallel)
    from finetune.login.plan import load_plan
    from finetune.login.search import is_search, spec_path

    plan = load_plan(plan_dir)
    if is_search(plan_dir):
        raise UsageError(problems=[Problem(str(spec_path(plan_dir)), "", "this folder is a search: its trials are "
                                           "asked by search workers; run `finetune search` again to continue it")])
    with _locked(plan_dir) as lock:
        if hasattr(ex, "pass_fds"):
            ex.pass_fds = (lock.fileno(),)
        submissions = manifest.load(plan_dir)
        made = adopt_unrecorded(plan_dir, submissions, name)
        entries = manifest.latest(submissions)
        finished, active, todo, superseded, evaluating, unfinished = [], [], [], [], [], []
        queued = queued_trials(entries, made)
        started = _trial_folders(plan_dir)  # one listing: most trials of a big plan have no folder yet
        for t in plan.trials:
            tdir = layout.trial_dir(plan_dir, t.id)
            if evaluate is not None and evaluate.trials is not None and t.id not in evaluate.trials:
                continue
            if t.superseded_by and t.id not in queued:  # its input files changed: the newer trial runs
                superseded.append(t.id)
            elif evaluate is not None and not (t.id in started and layout.is_finished(tdir)):
                unfinished.append(t.id)
            elif t.id in started and layout.is_done(tdir):  # finished, or pruned
                if evaluate is None and not evaluations.pending(tdir, t.eval_languages, plan.groups.get(t.group)):
                    finished.append(t.id)
                elif t.id in queued:  # its evaluation job
                    active.append(t.id)
                else:
                    todo.append(t)
                    evaluating.append(t.id)
            elif t.id in queued:
                active.append(t.id)
            else:
                todo.append(t)
        report = SubmitReport(executor=name, arrays=[], scheduler=bool(ex.scheduler), finished=finished,
                              active=active, dry_run=dry_run, manifest=layout.manifest_file(plan_dir),
                              superseded=superseded, evaluating=evaluating, unfinished=unfinished)
        if evaluate is not None:
            _refuse_oracle(plan, todo)
        if not todo:
            return report
        if max_trials is not None and len(todo) > max_trials and not dry_run:
            raise UsageError(problems=[Problem("--yes", "", f"{len(todo)} trials would be submitted (more than "
                                               f"{max_trials}); add --yes to submit them, or --dry-run to look first")])

        # Everything is checked and rendered in memory first: bad input writes nothing.
        if evaluate is not None:
            found = _evaluation_problems(plan_dir, plan, todo, evaluate)
            if found:
                raise ConfigError("cannot evaluate:", problems=found)
        work = todo_trials(plan_dir, plan, todo)
        if evaluate is not None:
            _with_evaluation(work, plan, evaluate)
        problems = work.problems
        problems += _fit_problems(ex, [(f, c) for f, c, _ in work.checks]) if not problems else []
        missing = check_inputs(work.checks)
        if dry_run:
            report.warnings = missing  # a dry run lists what a real submission would refuse
        else:
            problems += missing
        if problems:
            raise ConfigError("cannot submit:", problems=problems)

        size = max_array_size or ex.max_array_size() or DEFAULT_MAX_ARRAY_SIZE
        batch = manifest.next_batch(submissions)
        report.arrays = plan_arrays(plan_dir, list(zip(work.ids, work.configs, strict=True)), batch=batch,
                                    template=template_path, timeout=timeout, throttle=throttle,
                                    max_array_size=size, python=python,
                                    records=dict(zip(work.ids, work.records, strict=True)))
        # O(arrays) files: the batch's groups here, an index and a script per array below; the
        # trial folders and their config.json are made by the array tasks (finetune.login.batch).
        write_groups(layout.batch_dir(plan_dir, batch), plan_dir, work.groups)
        if dry_run:  # the scripts and index files, to read; no manifest entry, nothing queued
            for job in report.arrays:
                write_job_files(job)
            return report

        ask = getattr(ex, "queue_room", None)  # the cluster's and the config's limits on queued jobs
        room = ask([job.slurm for job in report.arrays]) if ask is not None and ex.scheduler else None
        if room is not None:
            report.queue_limit = room
            report.arrays, report.deferred = cap_arrays(report.arrays, room)
        layout.job_logs_dir(plan_dir).mkdir(parents=True, exist_ok=True)
        for n, job in enumerate(report.arrays):
            ex.write(job)
            # Ctrl-C between a successful sbatch and the manifest write would leave a queued array
            # that no one knows about (and a rerun would queue it twice): hold signals until both
            # are done. Not for an executor without a scheduler, whose "submit" is the whole run.
            with _signals_held(bool(ex.scheduler)):
                try:
                    job_id = ex.submit(job)
                except FinetuneError as e:
                    queued = (f"{len(report.submitted)} trials were queued before that; {report.manifest} lists "
                              "them, and running submit again sends only the rest" if report.submitted
                              else "nothing was queued")
                    raise FinetuneError(
                        f"submission stopped at array {n + 1} of {len(report.arrays)} ({job.script_path}): {e}\n"
                        + queued
                    ) from e
                manifest.record(plan_dir, submissions, executor=name, job_id=job_id, trial_ids=job.trial_ids,
                                batch=batch, script=job.script_path, per_task=job.per_task)
            report.job_ids.append(job_id)
            report.submitted.extend(job.trial_ids)
        if not ex.scheduler:  # the trials ran to their end here: which did not get there
            report.failed = not_done(plan_dir, report.submitted)
        return report


def not_done(plan_dir: Path, trial_ids: Sequence[str]) -> list[str]:
    """Of trials that have run to their end, those that did not end done: no finished (or pruned)
    result.json, or an evaluation still asked for (``evaluate.json`` stays when scoring fails)."""
    out = []
    for tid in trial_ids:
        tdir = layout.trial_dir(plan_dir, tid)
        if not layout.is_done(tdir) or evaluations.request_file(tdir).is_file():
            out.append(tid)
    return out


@dataclass(frozen=True)
class Failure:
    """A trial that failed here: why (state.json's reason, when it says) and where its log is."""

    trial_id: str
    reason: str
    log: Path

    def line(self) -> str:
        return f"{self.trial_id} failed{f' [{self.reason}]' if self.reason else ''}; log: {self.log}"


def failures(plan_dir: str | Path, trial_ids: Sequence[str]) -> list[Failure]:
    """``trial_ids`` (e.g. ``SubmitReport.failed``) with their reason and log: the trial's log.txt,
    or for a trial whose folder was never made the array's own log folder (jobs/logs/)."""
    plan_dir = Path(plan_dir).resolve()
    out = []
    for tid in trial_ids:
        tdir = layout.trial_dir(plan_dir, tid)
        saved = layout.read_state(tdir)
        if layout.is_done(tdir):  # trained before; its evaluation job is what failed
            reason = "evaluation failed"
        else:
            reason = str(saved.get("reason") or (f"state {saved['state']}" if saved.get("state") else ""))
        log = layout.log_file(tdir)
        out.append(Failure(tid, reason, log if log.is_file() else layout.job_logs_dir(plan_dir)))
    return out


def cap_arrays(arrays: list[ArrayJob], room: int) -> tuple[list[ArrayJob], list[str]]:
    """The arrays cut to ``room`` array tasks in all (in order), and the trial ids left for later."""
    import dataclasses

    kept: list[ArrayJob] = []
    deferred: list[str] = []
    for job in arrays:
        if room >= job.tasks:
            kept.append(job)
            room -= job.tasks
            continue
        n = room * job.per_task
        if n:
            kept.append(dataclasses.replace(job, trial_ids=job.trial_ids[:n], records=job.records[:n]))
        deferred += job.trial_ids[n:]
        room = 0
    return kept, deferred


def _trial_folders(plan_dir: Path) -> set[str]:
    try:
        return set(os.listdir(layout.trials_dir(plan_dir)))
    except OSError:
        return set()


@contextlib.contextmanager
def _signals_held(hold: bool) -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP (main thread only) until the block is done."""
    import signal
    import threading

    if not hold or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------------------------
# cancel


@dataclass
class CancelReport:
    job_ids: list[str]
    trials: list[str]


def cancel(plan_dir: str | Path) -> CancelReport:
    """Cancel every queued or running task of the plan (one squeue, one scancel)."""
    plan_dir = Path(plan_dir).resolve()
    if not layout.plan_file(plan_dir).is_file():
        raise UsageError(problems=[Problem(str(plan_dir), "", f"no plan here ({layout.PLAN_FILE} missing)")])
    tasks: list[str] = []
    with _locked(plan_dir):
        submissions = manifest.load(plan_dir)
        made = adopt_unrecorded(plan_dir, submissions, "")
        entries = manifest.latest(submissions)
        remote = {t: e for t, e in entries.items() if executors.is_scheduler(e.get("executor"))}
        if not remote:
            return CancelReport([], [])
        queued = queued_trials(remote, made)
        for name, group in manifest.by_executor({t: remote[t] for t in queued}).items():
            keys = sorted({manifest.task_key(e) for e in group.values()})
            executors.make_executor(name).cancel(keys)
            tasks += keys
    return CancelReport(job_ids=sorted(tasks), trials=sorted(queued))
