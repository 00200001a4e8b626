"""Which eval languages of a finished trial have a current score, and which still need one.

A trial id is the identity of its trained model (finetune.login.identity): the eval languages are
not in it, so adding an eval language to the layers plans the same trial with one more eval
language. Its trained model (``model/``) is then scored on the new language by an evaluation
job instead of training again (submit sends it; the array task asks for it with
``trials/<id>/evaluate.json``, see ``request``; ``finetune train`` of a finished trial runs it).

A score is *current* when it was made from the trial's present model and the dataset the plan
now names for that language:

- ``result.json``'s metrics (scored when the trial trained): the dataset entry of the frozen
  ``config.json`` must be the one the plan names now (``dataset_key``), and so must the content
  fingerprint it froze (``dataset_fingerprints``: a local dataset whose files changed under the
  same name and entry makes the training-time score stale; a config.json frozen before this
  field existed is judged by the entry alone);
- ``evaluations.json`` (``finetune.compute.evaluate``): each language records the ``model`` it
  scored (``model_stamp``: names, sizes and modification times of ``model/``'s files, so a model
  saved again by a rerun makes the old evaluations stale), the ``dataset`` key and the local
  dataset's content ``fingerprint``.

Stale scores are never reported (``current_scores``) and never count as done (``pending``).
Login-node code: reads a few small JSON files and stats ``model/``; imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from finetune import layout

SPLITS = ("eval", "test")
# the parts of a TRIAL_CONFIG dataset entry that do not change what is scored: where the files
# are (a mirror or another cluster) and the language's own name
_PLACE_KEYS = frozenset({"path", "language"})


def request_file(trial_dir: str | os.PathLike[str]) -> Path:
    """``trials/<id>/evaluate.json``: written by the array task of a finished trial that needs
    scores (finetune.login.batch), read and removed by `finetune train` (finetune.compute.evaluate)."""
    return layout.evaluate_request_file(trial_dir)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def dataset_key(entry: Any) -> str:
    """What a dataset entry (TRIAL_CONFIG ``datasets[lang]``) scores: its name, database entry
    and espeak voice, not where its files are."""
    if not isinstance(entry, dict):
        return ""
    return _digest({k: v for k, v in entry.items() if k not in _PLACE_KEYS})


def model_stamp(trial_dir: str | os.PathLike[str]) -> str:
    """The saved model's identity without reading it: relative names, sizes and modification
    times of ``model/``'s files ("" when there is no model). Saving the model again changes it."""
    root = layout.model_dir(trial_dir)
    if not root.is_dir():
        return ""
    parts = []
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        try:
            st = p.stat()
        except OSError:
            continue
        parts.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return _digest(parts) if parts else ""


def _read(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def read_evaluations(trial_dir: str | os.PathLike[str]) -> dict[str, Any]:
    # (the name joined as text: collect asks this of 100k trials, and a Path each was a cost)
    data = _read(os.path.join(os.fspath(trial_dir), layout.EVALUATIONS_FILE))
    return data if isinstance(data, dict) else {}


UNREAD = object()  # (current_scores: a file the caller has not read; it reads it)


def current_scores(trial_dir: str | os.PathLike[str], result: Any = None,
                   expected: dict[str, tuple[str, str | None]] | None = None,
                   config: Any = UNREAD, evaluated: Any = UNREAD) -> dict[str, dict[str, Any]]:
    """language -> {"eval": metrics, "test": metrics, "source": "result" | "evaluation"}: the
    trial's current scores. An evaluation of the present model replaces the training-time score
    of its language (it is newer: a dataset changed, or predictions were made again).

    ``expected``: language -> (dataset_key, fingerprint) the plan names now; a score of another
    dataset is left out (None: every dataset counts, as for a plan folder without its configs).
    ``config``: the trial's parsed config.json when the caller has read it already (collect reads
    each trial file once), None when it is missing or unreadable; ``evaluated``: the trial's
    evaluations.json as read_evaluations reads it, when the caller knows it ({} when the file is
    absent: collect lists a trial's folder once instead of trying to open what is not there).
    """
    tdir = os.fspath(trial_dir)
    if result is None:
        result = layout.read_result(tdir)
    out: dict[str, dict[str, Any]] = {}
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if isinstance(metrics, dict):
        if config is UNREAD:
            config = _read(layout.config_file(tdir))
        frozen = (config.get("datasets") if isinstance(config, dict) else None) or {}
        prints = (config.get("dataset_fingerprints") if isinstance(config, dict) else None) or {}
        for lang, splits in metrics.items():
            if not isinstance(splits, dict):
                continue
            if expected is not None and lang in expected and lang in frozen \
                    and dataset_key(frozen[lang]) != expected[lang][0]:
                continue  # scored on a dataset the plan no longer names for it
            if expected is not None and lang in expected and lang in prints and prints[lang] != expected[lang][1]:
                continue  # the same dataset entry, but its local files changed since the trial scored them
            out[lang] = {**{s: v for s, v in splits.items() if s in SPLITS and isinstance(v, dict)},
                         "source": "result"}
    evaluations = read_evaluations(tdir) if evaluated is UNREAD else evaluated
    if evaluations:
        stamp = model_stamp(tdir)
        for lang, rec in evaluations.items():
            if not isinstance(rec, dict) or rec.get("model_stamp") != stamp:
                continue  # another model's scores (the trial was trained again since)
            if expected is not None and lang in expected and (rec.get("dataset"), rec.get("fingerprint")) \
                    != expected[lang]:
                continue
            out[lang] = {**{s: v for s, v in rec.items() if s in SPLITS and isinstance(v, dict)},
                         "source": "evaluation"}
    return out


def expected_datasets(group: dict[str, Any] | None, languages: list[str]) -> dict[str, tuple[str, str | None]]:
    """language -> (dataset_key, content fingerprint or None) as a plan group names them now."""
    if not isinstance(group, dict):
        return {}
    entries = group.get("datasets") or {}
    prints = (group.get("inputs") or {}).get("datasets") or {}
    return {lang: (dataset_key(entries[lang]), prints.get(lang)) for lang in languages if lang in entries}


def pending(trial_dir: str | os.PathLike[str], eval_languages: list[str], group: dict[str, Any] | None,
            result: Any = None) -> list[str]:
    """The eval languages of a finished trial without a current score (sorted); [] when the
    trial is not finished or has no saved model to score (a count stand-in, an old trial)."""
    tdir = Path(trial_dir)
    if not (layout.model_dir(tdir) / "config.json").is_file():
        return []  # nothing to score (checked first: one stat for a plan of count stand-ins)
    if result is None:
        result = layout.read_result(tdir)
    if not layout.says_finished(result) or layout.result_problem(tdir, result):
        return []
    if (result.get("selection") or {}).get("protocol") == "each-language":
        return []  # the oracle protocol scores each language at its own step: only training can add one
    expected = expected_datasets(group, eval_languages)
    have = current_scores(tdir, result, expected)
    return sorted(lang for lang in eval_languages if lang not in have)
