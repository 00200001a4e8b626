"""Start (or continue) a search: write its SPEC and study into the plan folder, then one array of
``workers`` tasks, each running ``finetune search-worker DIR --worker NAME``.

On SLURM: one sbatch for the whole search (``jobs/templates/search.sbatch.j2``), recorded in
``DIR/search/submissions.json``. Locally: the workers run here, N at once, each started again
when it exits 75 (as SLURM would requeue it); the call returns when they are done.
Running it again on the same folder continues the study (the budget counts what is done);
a folder holding a different search is refused.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import ConfigError, FinetuneError, Problem, UsageError
from finetune.fileio import atomic_write_json, read_json
from finetune.login import search as S
from finetune.login import shipped
from finetune.login.render import ShellSafe

SEARCH_TEMPLATE = shipped.template(shipped.SEARCH_TEMPLATE)  # jobs/templates/, or the wheel's copy
SUBMISSIONS = "submissions.json"
MAX_REQUEUES = 20
# What may differ when a search is started again on the same folder (operational settings).
VOLATILE = ("workers", "stale_after_s", "group", "group_config", "grid_config")


@dataclass
class SearchReport:
    plan_dir: Path
    executor: str
    workers: list[str] = field(default_factory=list)
    job_id: str | None = None
    script: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)  # study trial states after a local run
    dry_run: bool = False
    budget: int = 0
    done_before: int = 0
    failed: list[str] = field(default_factory=list)  # a local run: trial ids its workers told the study failed
    worker_exits: dict[str, int] = field(default_factory=dict)  # a local run: workers that did not end 0 (75: out of requeues)

    def failures(self) -> list[str]:
        """One line per failed trial (its reason and log.txt) and per worker that ended in error (its log)."""
        from finetune.login.submit import failures

        lines = [f"trial {f.line()}" for f in failures(self.plan_dir, self.failed)]
        lines += [f"worker {w} exited {rc}; log: {S.worker_path(self.plan_dir, w).with_suffix('.log')}"
                  for w, rc in self.worker_exits.items()]
        return lines

    def summary(self) -> str:
        if self.dry_run:
            return f"dry run ({self.executor}): would start {len(self.workers)} workers; script: {self.script}"
        if not self.workers:
            return f"{self.plan_dir}: the budget of {self.budget} trials is spent ({self.done_before} done)"
        if self.executor == "local":
            states = ", ".join(f"{k} {v}" for k, v in self.counts.items())
            return f"ran {len(self.workers)} local workers; study: {states}"
        return (f"submitted {len(self.workers)} search workers ({self.executor}: job {self.job_id}); "
                f"budget {self.budget} trials, {self.done_before} done before; study: {self.plan_dir / 'search'}")


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def strip(spec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in spec.items() if k not in VOLATILE}

    return read_json_roundtrip(strip(old)) == read_json_roundtrip(strip(new))


def read_json_roundtrip(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, sort_keys=True))


def prepare(plan, out_dir: str | Path) -> dict[str, Any]:
    """Write plan.json's group, search.json (once) and the study; returns the SPEC in force."""
    from finetune.login.plan import write_plan

    out = Path(out_dir).resolve()
    spec = dict(plan.search)
    spec["group_config"] = plan.groups[spec["group"]]
    path = S.spec_path(out)
    if path.is_file():
        old = read_json(path)
        if not _same(old, spec):
            raise UsageError(problems=[Problem(str(path), "", "this folder holds a different search (other "
                                               "parameters, sampler, budget or configs): choose another -o DIR")])
        spec = {**old, "workers": spec["workers"], "stale_after_s": spec["stale_after_s"]}
    write_plan(plan, out)  # no trials: the sources, and the folder
    atomic_write_json(path, spec)
    with S.AskLock(out):
        study = S.open_study(out, spec)
        S.enqueue_once(study, spec)
    return spec


def start_search(plan, out_dir: str | Path, *, executor: str = "auto", timeout: str | None = None,
                 dry_run: bool = False, python: str | None = None, parallel: int | None = None) -> SearchReport:
    """``plan`` from ``build_plan`` of a grid with a search block."""
    from finetune.login.executors import make_executor, resolve_name
    from finetune.login.executors.base import ArrayJob
    from finetune.login.render import render
    from finetune.login.schema import field_error
    from finetune.login.submit import job_name, resource_key, script_context, slurm_problems

    if plan.search is None:
        raise UsageError("the grid config has no search block (use `finetune plan` for grids)")
    bad_time = field_error("config", ("slurm", "time"), str(timeout)) if timeout is not None else None
    if bad_time:
        raise UsageError(problems=[Problem("--timeout", "", f"{bad_time} (got {str(timeout)!r})")])
    name = resolve_name(executor)
    if name == "submitit":
        raise UsageError(problems=[Problem("--executor", "", "searches run on slurm or local (submitit: not yet)")])
    out = Path(out_dir).resolve()
    group = plan.groups[plan.search["group"]]
    slurm = dict(group["config"].get("slurm") or {})
    problems = slurm_problems(slurm, plan.search.get("grid_config") or "config", group.get("provenance"))
    if problems:
        raise ConfigError("cannot submit:", problems=problems)
    spec = prepare(plan, out)
    with S.AskLock(out):
        t = S.tally(S.open_study(out, spec))
    report = SearchReport(out, name, dry_run=dry_run, budget=spec["trials"], done_before=t.done)
    left = spec["trials"] - t.done
    if left <= 0 and not t.running:
        return report
    n_workers = max(1, min(spec["workers"], left))
    batch = f"{_next_batch(out):04d}"
    report.workers = [f"{batch}-{i}" for i in range(n_workers)]
    time = timeout or slurm.get("time")
    folder = layout.batch_dir(out, f"search-{batch}")
    jname = job_name(out, "search-" + resource_key(slurm, time))
    index = folder / "workers.index"
    context = script_context(jname, out, index, slurm, time, python)
    # trials of several tasks: the worker starts each behind the launcher an array task would use
    context.update(batch=batch, launcher_word=ShellSafe(shlex.quote(str(context["launcher"]))))
    text = render(SEARCH_TEMPLATE, context)
    job = ArrayJob(name=jname, plan_dir=out, script_path=folder / "search.sbatch", index_path=index, script=text,
                   trial_ids=tuple(report.workers), slurm=slurm, time=time)
    report.script = job.script_path
    if dry_run:
        from finetune.login.executors.base import write_job_files

        write_job_files(job)
        return report
    layout.job_logs_dir(out).mkdir(parents=True, exist_ok=True)
    if name == "local":
        from finetune.login.executors.base import write_job_files
        from finetune.login.executors.local import trial_env

        write_job_files(job)
        _record(out, {"job_id": f"local-{batch}", "executor": "local", "workers": report.workers, "batch": batch})
        env = trial_env(parallel or n_workers)
        with ThreadPoolExecutor(max_workers=parallel or n_workers) as pool:
            codes = list(pool.map(lambda w: run_local_worker(out, w, env, python), report.workers))
        report.worker_exits = {w: rc for w, rc in zip(report.workers, codes, strict=True) if rc != 0}
        with S.AskLock(out):
            study = S.open_study(out, spec)
            from collections import Counter

            trials = study.get_trials(deepcopy=False)
            report.counts = dict(Counter(tr.state.name.lower() for tr in trials))
            ours = set(report.workers)  # this run's: a failure of an earlier run was reported then
            report.failed = [tr.user_attrs["trial_id"] for tr in trials
                             if tr.state.name == "FAIL" and tr.user_attrs.get("worker") in ours
                             and "trial_id" in tr.user_attrs and "duplicate_of" not in tr.user_attrs]
        return report
    ex = make_executor(name)
    ex.write(job)
    try:
        report.job_id = ex.submit(job)
    except FinetuneError as e:
        raise FinetuneError(f"search workers not submitted ({job.script_path}): {e}") from e
    _record(out, {"job_id": report.job_id, "executor": name, "workers": report.workers, "batch": batch,
                  "script": str(job.script_path.relative_to(out))})
    return report


def _submissions_path(out: Path) -> Path:
    return S.search_dir(out) / SUBMISSIONS


def _next_batch(out: Path) -> int:
    path = _submissions_path(out)
    return len(read_json(path)["submissions"]) + 1 if path.is_file() else 1


def _record(out: Path, entry: dict[str, Any]) -> None:
    path = _submissions_path(out)
    data = read_json(path) if path.is_file() else {"version": 1, "submissions": []}
    entry["submitted"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data["submissions"].append(entry)
    atomic_write_json(path, data)


def run_local_worker(plan_dir: Path, worker: str, env: dict[str, str] | None = None,
                     python: str | None = None) -> int:
    """``python -m finetune search-worker DIR --worker W`` >> its log; again while it exits 75."""
    argv = [python or sys.executable, "-m", "finetune", "search-worker", str(plan_dir), "--worker", worker]
    log_path = S.worker_path(plan_dir, worker).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rc = 0
    for _ in range(MAX_REQUEUES + 1):
        with open(log_path, "ab") as log:
            rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        if rc != layout.EXIT_REQUEUE:
            return rc
    return rc
