"""The original tool's config formats: what each legacy key means here.

The original ``grid-search.py`` / ``finetuning-generator.py`` read ``config/default.json``, the
given layers and ``config/language-database.json``. Most of their keys kept their meaning; this
module is the one place that knows the few that did not. Every layer and every database is
translated when it is read, so the rest of the tool sees the current format only, and
``finetune config migrate`` writes the very same translation to files.

Layer keys (``LAYER_RULES``):

====================== =========================================================================
``hf_cache``           -> ``data.cache_dir`` (the data cache)
``random_seed``        -> ``hyperparameters.seed`` (the default seed)
``cpu_only``           ``true`` -> ``training.device`` ``"cpu"``; ``false``: nothing to set
``checkpoints.is_medium``, ``checkpoints.training``, ``nanogpt``: no meaning here; accepted with
                       one warning each naming the key (``finetune config migrate`` lists them in a
                       comment)
====================== =========================================================================

``wandb.entity`` and ``wandb.project`` are current keys. ``hyperparameters.top_k`` and
``max_answer_length`` are question-answering hyperparameters; the planner, which knows the task
type, drops them (with a warning) for other tasks.

Database entries: ``"splits": [train, eval]`` -> ``{"train", "eval", "test": eval}`` (the
original tested on its eval split). A language without ``"espeak"`` gets its voice from its
name (``finetune.login.database.espeak_voice``); ``migrate`` writes that voice out.

Translations are pure and never touch a value that has a current meaning, so a legacy folder
and its migrated copy plan the same trials with the same ids. Relative paths keep our rule
(relative to the file that sets them; the original read them relative to the working directory):
a legacy layer's relative paths get a warning each (the reader, ``layers``, finds them), as
rewriting them would change the ids. This module imports no other part of the tool but
``jsonpath``: ``layers`` and ``database`` call it while reading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune.errors import Problem
from finetune.login.jsonpath import join_path, path_of

_NOTHING = object()  # a legacy value that maps to nothing (cpu_only: false)


@dataclass(frozen=True)
class Rule:
    """One legacy layer key: moved to ``target`` (converted), or dropped when ``target`` is None."""

    legacy: tuple[str, ...]
    target: tuple[str, ...] | None
    meaning: str  # what the key meant, or why it has no meaning here
    check: Callable[[Any], str | None] = lambda _v: None  # a message when the value is unusable
    convert: Callable[[Any], Any] = lambda v: v  # _NOTHING: nothing to set


def _path_or_null(value: Any) -> str | None:
    return None if value is None or (isinstance(value, str) and value) else f"must be a path or null (got {value!r})"


def _seed(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else f"must be an integer >= 0 (got {value!r})"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false (got {value!r})"


LAYER_RULES = (
    Rule(("hf_cache",), ("data", "cache_dir"), "the data cache: downloads, transcriptions, token ids",
         _path_or_null),
    Rule(("random_seed",), ("hyperparameters", "seed"), "the default seed", _seed),
    Rule(("cpu_only",), ("training", "device"), "train on the CPU", _bool,
         lambda v: "cpu" if v else _NOTHING),
    Rule(("checkpoints", "is_medium"), None, "the model size is read from the checkpoint"),
    Rule(("checkpoints", "training"), None,
         "fine-tuned checkpoints go under the plan directory, trials/<id>/checkpoints"),
    Rule(("nanogpt",), None, "the nanoGPT model is built in, finetune/compute/model.py"),
)
LEGACY_KEYS = tuple(".".join(r.legacy) for r in LAYER_RULES)
RELATIVE_PATH_NOTE = ("relative to this file's folder (the original tool read it relative to the working "
                      "directory); make it absolute or relative to this file if that is not the same place")


@dataclass(frozen=True)
class Note:
    """What a translation did at one place: ``path`` (current format) or None (nothing was set)."""

    path: str | None
    legacy_path: str
    text: str


@dataclass(frozen=True)
class Dropped:
    path: str  # JSON path of the legacy key
    value: Any
    reason: str


@dataclass
class Translation:
    value: Any
    notes: list[Note] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    relative_paths: list[str] = field(default_factory=list)  # in a legacy layer: set by the reader (layers)

    @property
    def changed(self) -> bool:
        return bool(self.notes or self.dropped)

    def warnings(self, source: str) -> list[Problem]:
        """One warning per dropped legacy key, naming it; one per relative path of a legacy layer."""
        out = [Problem(source, d.path, f"legacy key ignored: {d.reason}") for d in self.dropped]
        out += [Problem(source, p, RELATIVE_PATH_NOTE) for p in self.relative_paths]
        return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _parent(root: dict[str, Any], keys: tuple[str, ...], *, create: bool = False) -> dict[str, Any] | None:
    node: Any = root
    for k in keys[:-1]:
        if create and k not in node:
            node[k] = {}
        node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None
    return node


def translate_layer(data: dict[str, Any], source: str) -> Translation:
    """A config layer in the current format (a copy); ``data`` is left as it is."""
    out = _copy(data)
    t = Translation(out)
    for rule in LAYER_RULES:
        holder = _parent(out, rule.legacy)
        if holder is None or rule.legacy[-1] not in holder:
            continue
        legacy_path = path_of(rule.legacy)
        value = holder[rule.legacy[-1]]
        if rule.target is None:
            del holder[rule.legacy[-1]]
            t.dropped.append(Dropped(legacy_path, value, rule.meaning))
            continue
        message = rule.check(value)
        if message:
            t.problems.append(Problem(source, legacy_path, message))
            continue
        new = rule.convert(value)
        del holder[rule.legacy[-1]]
        target_path = path_of(rule.target)
        if new is _NOTHING:
            t.notes.append(Note(None, legacy_path, f"{'.'.join(rule.legacy)}: {_show(value)}: nothing to set"))
            continue
        parent = _parent(out, rule.target, create=True)
        if parent is None:
            t.problems.append(Problem(source, target_path, f"must be an object to take {'.'.join(rule.legacy)}"))
            continue
        key = rule.target[-1]
        if key in parent and parent[key] != new:
            t.problems.append(Problem(source, legacy_path, f"conflicts with {target_path} ({_show(parent[key])}) "
                                      "in the same file; keep one of them"))
            continue
        parent[key] = new
        t.notes.append(Note(target_path, legacy_path,
                            f"was {'.'.join(rule.legacy)}: {_show(value)} in the original format ({rule.meaning})"))
    return t


def translate_database(data: Any, source: str, *, voices: Callable[[str], str | None] | None = None) -> Translation:
    """A language database in the current format (a copy): list splits become objects.

    ``voices`` (for ``migrate``: language name -> espeak-ng voice) also writes out each missing
    ``"espeak"``.
    """
    if not isinstance(data, dict):
        return Translation(data)  # the schema reports it
    out = _copy(data)
    t = Translation(out)
    for language, tasks in list(out.items()):
        if language.startswith("$") or not isinstance(tasks, dict):  # "$schema", "$comment"
            continue
        lang_path = join_path("$", language)
        if voices is not None and "espeak" not in tasks:
            voice = voices(language)
            if voice is not None:
                out[language] = tasks = {"espeak": voice, **tasks}
                t.notes.append(Note(join_path(lang_path, "espeak"), join_path(lang_path, "espeak"),
                                    f"derived from the language name {language!r}"))
            else:
                t.notes.append(Note(None, lang_path, f"{language}: no espeak-ng voice known for this name; "
                                    'add "espeak" before planning ipa models'))
        for task, names in tasks.items():
            if task == "espeak" or not isinstance(names, dict):
                continue
            for name, entry in names.items():
                if not isinstance(entry, dict) or not isinstance(entry.get("splits"), list):
                    continue
                path = join_path(join_path(join_path(lang_path, task), name), "splits")
                splits = entry["splits"]
                if len(splits) not in (2, 3) or not all(isinstance(s, str) and s for s in splits):
                    t.problems.append(Problem(source, path, "must be [train, eval] (original format), "
                                              f"[train, eval, test] or an object (got {_show(splits)})"))
                    continue
                test = splits[2] if len(splits) == 3 else splits[1]
                entry["splits"] = {"train": splits[0], "eval": splits[1], "test": test}
                why = "" if len(splits) == 3 else "; the eval split is also the test split, as in the original"
                t.notes.append(Note(path, path, f"was {_show(splits)} (original format){why}"))
    return t


def _show(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
