"""Which trials of plan.json a new build replaces, for ``write_plan``.

- **Superseded** (``supersede``): a trial the build plans again under another id because only
  the content of its input files changed (same ``lineage``, finetune.login.identity), or whose id
  an older ID_VERSION made, gets ``superseded_by`` the new trial: submit skips it, collect shows
  it apart. Its files stay.
- **Dropped** (``drop_replaceable``, ``--replace``): a trial the build no longer produces that
  never ran (never submitted, no state, no result) or failed leaves plan.json (its folder stays),
  so a plan made with a typo can be fixed. Finished, queued and running trials stay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.login.identity import ID_VERSION, OPERATIONAL_TRAINING_KEYS, canonical_json
from finetune.login.plan_file import Trial


def supersede(trials: list[Trial], fresh: list[Trial], groups: dict[str, dict[str, Any]]) -> list[str]:
    """Mark trials of plan.json that this build replaces: same lineage (the same trial but for
    the content of its input files), other id, not planned now. Trials whose ids were made by an
    older ID_VERSION (their lineages are of another formula) are matched by what they train
    (``_training_key``: the eval languages aside, as ids are now); trials planned before
    lineages and groups existed by model type, languages and hyperparameters. Returns their ids."""
    planned = {t.id for t in fresh}
    by_lineage = {t.lineage: t.id for t in fresh if t.lineage}
    # encoded only when an old trial needs them (a big plan's write encodes no trial for these)
    by_weak: dict[str, str] | None = None
    by_training: dict[str, str] | None = None
    marked = []
    for t in trials:
        if t.id in planned:
            continue  # planned again (e.g. the old checkpoint is back): current
        newer = by_lineage.get(t.lineage) if t.lineage else None
        if newer is None and _id_version(t, groups) < ID_VERSION:
            key = _training_key(t, groups)
            if key is not None:
                if by_training is None:
                    by_training = {}
                    for f in fresh:
                        k = _training_key(f, groups)
                        if k is not None:
                            by_training.setdefault(k, f.id)
                newer = by_training.get(key)
            else:
                if by_weak is None:
                    by_weak = {_weak_key(f): f.id for f in fresh}
                newer = by_weak.get(_weak_key(t))
        if newer and newer != t.id and t.superseded_by != newer:
            t.superseded_by = newer
            marked.append(t.id)
    return marked


def drop_replaceable(out: Path, trials: list[Trial], planned: set[str]) -> tuple[list[Trial], list[str]]:
    """Trials this build does not produce that never ran (never submitted, no state, no result) or failed."""
    path = layout.manifest_file(out)
    try:  # manifest.json's trial ids, read here: the compute node imports this module, not the manifest's
        entries = json.loads(path.read_text(encoding="utf-8")).get("submissions") or [] if path.exists() else []
    except (OSError, ValueError, AttributeError):
        return trials, []  # cannot tell what was submitted: drop nothing
    submitted = {e.get("trial_id") for e in entries if isinstance(e, dict)}
    keep, dropped = [], []
    for t in trials:
        if t.id in planned:
            keep.append(t)
            continue
        tdir = layout.trial_dir(out, t.id)
        state = layout.read_state(tdir).get("state")
        never_ran = t.id not in submitted and not state and not layout.result_file(tdir).exists()
        if never_ran or (state == "failed" and not layout.is_done(tdir)):
            dropped.append(t.id)
        else:
            keep.append(t)
    return keep, dropped


def _weak_key(t: Trial) -> str:
    return canonical_json([t.model_type, sorted(t.train_languages), sorted(t.eval_languages), t.hyperparameters])


def _training_key(t: Trial, groups: dict[str, dict[str, Any]]) -> str | None:
    """What a trial trains, read from its group in plan.json, without the input files' contents
    and without the eval languages: task, training settings, checkpoint and tokenizer names, the
    training languages' datasets, model type and hyperparameters. None without its group."""
    cfg = (groups.get(t.group) or {}).get("config")
    if not isinstance(cfg, dict):
        return None
    try:
        training = {k: v for k, v in cfg["training"].items() if k not in OPERATIONAL_TRAINING_KEYS}
        mt = t.model_type
        return canonical_json([cfg["task"], training, cfg["checkpoints"][mt], cfg["tokenizers"][f"{mt}_prefix"],
                               {lang: cfg["datasets"].get(lang) for lang in sorted(t.train_languages)},
                               mt, sorted(t.train_languages), t.hyperparameters])
    except (KeyError, TypeError, AttributeError):
        return None


def _id_version(t: Trial, groups: dict[str, dict[str, Any]]) -> int:
    version = (groups.get(t.group) or {}).get("id_version")
    return version if isinstance(version, int) else (2 if t.lineage else 1)
