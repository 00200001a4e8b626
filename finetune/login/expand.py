"""Grid points x model types x language sets -> ``Trial``s with their content ids (pure).

``expand_points`` makes each grid point's JSON once (from per-value fragments, so a 100k-point
grid costs a join per point, not an encoding); ``expand_trials`` pairs them with each model type
and language set, drops excluded and duplicate trials and hashes the ids
(finetune.login.identity). A search samples its points instead: ``search_spec`` is what a worker
needs to make the trial of a sampled point (``searched_trial``), with the same id a grid gives.
LoRA settings are left out of a full fine-tune's hyperparameters (a swept ``lora_r`` of 0 too),
so they do not change its id.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from finetune.login.identity import (
    canonical_json,
    content_id,
    identity_languages,
    trial_identity,
    trial_inputs,
)
from finetune.login.plan_file import Trial

LORA_KEYS = frozenset({"lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_4bit"})


def expand_points(grid, hyper: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """Grid points with their JSON made once: (point, canonical hyperparameters, point as stored
    in plan.json). Same order as ``finetune.login.grid.expand``.

    The texts are assembled from per-value fragments (sorted keys), so a 100k-point grid costs
    a join per point instead of a JSON encoding; tests check them against ``canonical_json``.
    """
    from finetune.login.grid import axes

    keys = sorted(hyper)
    pos = {k: i for i, k in enumerate(keys)}
    canon_base = [json.dumps(k) + ":" + canonical_json(hyper[k]) for k in keys]
    prepared = []
    for names, tuples in axes(grid):
        options = []
        for values in tuples:
            items = tuple(zip(names, values, strict=True))
            canon = [(pos[n], json.dumps(n) + ":" + canonical_json(v)) for n, v in items]
            options.append((items, canon, ", ".join(_raw(n) + ": " + _raw(v) for n, v in items)))
        prepared.append(options)
    out = []
    for combo in itertools.product(*prepared):
        canon, point, shown = canon_base.copy(), {}, []
        for items, c, text in combo:
            point.update(items)
            for i, f in c:
                canon[i] = f
            shown.append(text)
        out.append((point, "{" + ",".join(canon) + "}", "{" + ", ".join(shown) + "}"))
    return out


def expand_trials(cfg: dict[str, Any], database, types: list[str], lang_sets, points, hyper: dict[str, Any], grid,
            group_id: str, inputs: dict[str, Any]) -> list[Trial]:
    """model types x language sets x grid points, minus excluded ones, with their ids."""
    from finetune.login.grid import excluded

    trials: list[Trial] = []
    seen: set[str] = set()
    for mt in types:
        for train, evals in lang_sets:
            identity = trial_identity(cfg, database, mt, train, evals)
            lineage_json = canonical_json(identity)
            identity["inputs"] = trial_inputs(inputs, mt, identity_languages(cfg, train, evals))
            identity_json = canonical_json(identity)
            no_lora = None  # the shared hyperparameters of this set's zero-rank (full fine-tuning) trials
            for point, hyper_canonical, point_raw in points:
                if grid.exclude and excluded(point, mt, grid.exclude):
                    continue
                base = hyper
                values = {**hyper, **point}
                if "lora_r" in values and not values["lora_r"]:  # a swept lora_r of 0: full fine-tuning
                    if no_lora is None:
                        no_lora = without_lora(hyper)
                    base, values = no_lora, without_lora(values)
                    point = {k: v for k, v in point.items() if k not in LORA_KEYS}
                    hyper_canonical, point_raw = canonical_json(values), _raw(point)
                tid = content_id(hyper_canonical, identity_json)
                if tid in seen:
                    continue
                seen.add(tid)
                lineage = content_id(hyper_canonical, lineage_json)
                trials.append(Trial(tid, mt, train, evals, values, group_id, point, point_raw, lineage, base=base))
    return trials


def search_spec(cfg: dict[str, Any], database, types: list[str], lang_set, hyper: dict[str, Any], grid,
                 group_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """finetune.login.search's SPEC plus what a worker needs to make trials of sampled points:
    per model type the id's "trial" part (canonical JSON) and the base hyperparameters."""
    from finetune.login.search import SPEC_VERSION, resolve

    train, evals = lang_set
    spec = resolve(grid.search, grid.parameters, cfg["training"], types)
    langs = identity_languages(cfg, train, evals)
    bases = {mt: {"identity": canonical_json({**trial_identity(cfg, database, mt, train, evals),
                                              "inputs": trial_inputs(inputs, mt, langs)}),
                  "train_languages": train, "eval_languages": evals} for mt in types}
    return {"version": SPEC_VERSION, **spec, "group": group_id, "hyperparameters": hyper, "bases": bases,
            "model_types": types, "grid_config": grid.source}


def searched_trial(spec: dict[str, Any], point: dict[str, Any]) -> Trial:
    """The trial of one sampled point (``point`` may hold ``model_type``): content id as for a grid."""
    point = dict(point)
    mt = point.pop("model_type", None) or spec["model_types"][0]
    base = spec["bases"][mt]
    hyper = {**spec["hyperparameters"], **point}
    tid = content_id(canonical_json(hyper), base["identity"])
    return Trial(tid, mt, list(base["train_languages"]), list(base["eval_languages"]), hyper, spec["group"], point)


def _raw(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def lora_swept(grid) -> bool:
    return any(k in grid.swept for k in LORA_KEYS)


def without_lora(hyper: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hyper.items() if k not in LORA_KEYS}
