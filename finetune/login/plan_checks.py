"""What ``build_plan`` checks before it expands anything (pure but for reading the grid file).

Each function returns ``Problem``s (file, JSON path, message) for ``build_plan`` to collect and
raise together: model types, the grid config, dataset lookups, hyperparameters that belong to
another task type, per-task-type needs (entries, selection metric, QLoRA), classes that must
agree within a trial, and batch sizes. ``task_default_metric`` is the one default a check
decides: a question-answering or causal-lm task selects by its own metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune.errors import FinetuneError, Problem
from finetune.login.layers import Layered, join_path

MODEL_TYPES = ("normal", "ipa")


def check_model_types(model_types: Sequence[str]) -> tuple[list[str], list[Problem]]:
    from finetune.login.schema import did_you_mean

    types = list(dict.fromkeys(model_types))
    problems = []
    if not types:
        problems.append(Problem("--model-type", "", "needs at least one model type (normal, ipa)"))
    for mt in types:
        if mt not in MODEL_TYPES:
            problems.append(Problem("--model-type", "", f"unknown model type {mt!r} (choose normal or ipa)"
                                    + did_you_mean(mt, MODEL_TYPES)))
    return types, problems


def load_grid(grid_config: str | None):
    from finetune.login.grid import Grid, parse_grid
    from finetune.login.layers import read_config_file
    from finetune.login.schema import validate

    if grid_config is None:
        return Grid(source="<no grid>"), []
    source = str(grid_config)
    try:
        data = read_config_file(grid_config)
    except FinetuneError as e:
        return None, list(e.problems)
    problems = validate("grid", data, source)
    if problems:
        return None, problems
    return parse_grid(data, source), []


def grid_lower_bound(grid_config: str | None) -> int | None:
    """How many trials a grid config makes at least (``grid.min_count``: nothing expanded);
    None when there is no grid or it is invalid (planning reports why)."""
    from finetune.login.grid import min_count

    if grid_config is None:
        return None
    grid, problems = load_grid(grid_config)
    if grid is None or problems or grid.search is not None:  # a search samples: nothing to expand
        return None
    try:
        return min_count(grid)
    except (ValueError, TypeError):  # zip groups of unequal length and the like: planning says so
        return None


def unused_hyperparameters(layered: Layered, database, task: str, datasets: dict[str, Any], grid
                            ) -> tuple[list[str], list[Problem], list[Problem]]:
    """Hyperparameters of other task types (question answering's top_k for a classification task):
    dropped from the trials (so they do not change ids); a warning when a layer other than the
    shipped default sets one, a problem when the grid sets one."""
    from finetune.login.schema import task_specific_hyperparameters

    types = {database.entry(lang, task, name).get("task_type") for lang, name in datasets.items()}
    unused, problems, warnings = [], [], []
    for name, allowed in task_specific_hyperparameters().items():
        if not types or types <= set(allowed):
            continue
        unused.append(name)
        shown = ", ".join(sorted(str(t) for t in types))
        why = f"a {' or '.join(allowed)} hyperparameter, and task {task!r} is {shown}"
        if name in grid.parameters:
            problems.append(Problem(grid.source, join_path("$.parameters", name), why))
        path = join_path("$.hyperparameters", name)
        source = layered.source_of(path)
        if name in layered.value.get("hyperparameters", {}) and source != layered.base:
            warnings.append(Problem(source, path, f"not used: {why}"))
    return unused, problems, warnings


def espeak_warnings(database, datasets: dict[str, Any], src) -> list[Problem]:
    """Languages without an espeak-ng voice: ipa trials then need precomputed -phoneme columns."""
    return [Problem(src(join_path("$.datasets", lang)), join_path("$.datasets", lang),
                    f"no espeak-ng voice known for {lang!r} (add \"espeak\" to it in {database.path}); "
                    "ipa trials need its datasets to carry <feature>-phoneme columns")
            for lang in datasets if database.has_language(lang) and database.espeak(lang) is None]


def dataset_problems(database, task: str, datasets: dict[str, Any], src) -> list[Problem]:
    """Each language of ``datasets`` has ``task`` and the dataset name in the database.

    A task that none of the known languages has is one problem at ``$.task`` (the task layer
    or ``--set task=...`` is at fault), not one per language.
    """
    from finetune.login.schema import did_you_mean

    problems = []
    known = [lang for lang in datasets if database.has_language(lang)]
    task_missing = bool(known) and all(task not in database.tasks(lang) for lang in known)
    if task_missing:
        tasks = sorted({t for lang in known for t in database.tasks(lang)})
        problems.append(Problem(src("$.task"), "$.task", f"task {task!r} is not in the database {database.path} "
                                f"for {', '.join(known)} (tasks: {', '.join(tasks)})" + did_you_mean(task, tasks)))
    for lang, name in datasets.items():
        if not isinstance(name, str) or (task_missing and lang in known):
            continue
        path = join_path("$.datasets", lang)
        problems += [Problem(src(path), path, m) for m in database.lookup_problems(lang, task, name)]
    return problems


def batch_problems(points, hyper: dict[str, Any], grid, src) -> list[Problem]:
    """batch_size must be a multiple of micro_batch_size (the trainer also divides by world size)."""
    problems, seen = [], set()
    for point, *_ in points:
        bs = point.get("batch_size", hyper["batch_size"])
        mbs = point.get("micro_batch_size", hyper["micro_batch_size"])
        if (bs, mbs) in seen or mbs is None:
            continue
        seen.add((bs, mbs))
        if bs % mbs:
            path = "$.hyperparameters.micro_batch_size"
            set_by = grid.source if "micro_batch_size" in point or "micro_batch_size" in grid.fixed else src(path)
            problems.append(Problem(set_by, path, f"batch_size {bs} is not a multiple of micro_batch_size {mbs}"))
    return problems


def class_problems(lang_sets, datasets, database, task, layered: Layered) -> list[Problem]:
    """Classes (and task types) must agree across the languages of one trial."""
    problems, done = [], set()
    for train, evals in lang_sets:
        langs = tuple(sorted(set(train) | set(evals)))
        if langs in done:
            continue
        done.add(langs)
        entries = {lang: database.entry(lang, task, datasets[lang]) for lang in langs}
        for key in ("classes", "task_type"):
            values = {lang: e.get(key) for lang, e in entries.items()}
            if len(set(values.values())) > 1:
                shown = ", ".join(f"{lang} {v}" for lang, v in values.items())
                problems.append(Problem(layered.source_of("$.datasets"), "$.datasets",
                                        f"{key} differ across the languages of one trial ({shown})"))
    return problems


def task_default_metric(layered: Layered, database, task: str, datasets: dict[str, Any]) -> None:
    """The shipped default's selection metric (macro_f1) is classification's: a question-answering
    or causal-lm task that no layer gave a metric selects by its own (f1, loss)."""
    from finetune.login.tasks import DEFAULT_METRIC, task_type

    kinds = {task_type(database.entry(lang, task, name)) for lang, name in datasets.items()}
    training = layered.value.get("training")
    if len(kinds) != 1 or not isinstance(training, dict) or layered.base is None:
        return
    kind = kinds.pop()
    if kind != "classification" and layered.source_of("$.training.metric") == layered.base:
        training["metric"] = DEFAULT_METRIC[kind]


def task_problems(layered: Layered, database, task: str, datasets: dict[str, Any], grid) -> list[Problem]:
    """Per task type: the dataset entries have what the type needs, the selection metric is one
    it reports, and QLoRA has CUDA and bitsandbytes on this machine."""
    from finetune.login.tasks import entry_problems, metric_problems, task_type

    problems: list[Problem] = []
    kinds = set()
    for lang, name in datasets.items():
        entry = database.entry(lang, task, name)
        kinds.add(task_type(entry))
        where = join_path(join_path(join_path("$", lang), task), name)
        if task_type(entry) != "classification":  # (the schema already requires classification's classes)
            problems += entry_problems(entry, source=database.path, where=where)
    if len(kinds) == 1:
        src = layered.source_of("$.training.metric")
        problems += metric_problems(next(iter(kinds)), (layered.value.get("training") or {}).get("metric"), source=src)
    hyper = {**(layered.value.get("hyperparameters") or {}), **grid.fixed}
    wants_4bit = bool(hyper.get("lora_4bit")) or any(v is True for v in grid.swept.get("lora_4bit", []))
    if wants_4bit:
        path = "$.hyperparameters.lora_4bit"
        where = grid.source if "lora_4bit" in grid.parameters else layered.source_of(path)
        missing = qlora_missing(gpus=int((layered.value.get("slurm") or {}).get("gpus") or 0))
        if missing:
            problems.append(Problem(where, path, f"4-bit QLoRA needs {' and '.join(missing)}, which this machine "
                                    "lacks (no NVIDIA GPU here and slurm.gpus is 0; pip install bitsandbytes); "
                                    "request GPUs with slurm.gpus, or set lora_4bit to false"))
        if not hyper.get("lora_r") and not grid.swept.get("lora_r"):
            problems.append(Problem(where, path, "4-bit QLoRA needs adapters: set lora_r > 0"))
    return problems


def qlora_missing(*, gpus: int = 0) -> list[str]:
    """What 4-bit QLoRA lacks: "CUDA" (no NVIDIA device here and no ``slurm.gpus`` for the
    trials), "bitsandbytes" (not installed in this environment, which the trials share).

    Checked without importing torch (this runs on the login node): the NVIDIA driver's device
    files, and whether the bitsandbytes package can be found.
    """
    import glob
    import importlib.util

    missing = []
    if not gpus and not glob.glob("/dev/nvidia[0-9]*"):
        missing.append("CUDA")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes")
    return missing
