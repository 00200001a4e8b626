"""JSON Schema (draft 2020-12) validation of configs, the language database and grid configs.

The schemas ship in ``finetune/login/schemas/`` and editors can use them through ``"$schema"``.
Every error becomes a ``Problem`` naming the file that set the value and its JSON path; unknown
keys get a "did you mean" suggestion. Validation collects all problems; it never stops at one.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from finetune.errors import Problem
from finetune.login.layers import join_path, path_of

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMAS = {"config": "config.schema.json", "database": "database.schema.json", "grid": "grid.schema.json",
           "trial": "trial.schema.json"}


def schema_path(kind: str) -> Path:
    return SCHEMA_DIR / SCHEMAS[kind]


@cache
def load_schema(kind: str) -> dict[str, Any]:
    with open(schema_path(kind), encoding="utf-8") as f:
        return json.load(f)


@cache
def _registry():
    """The shipped schemas by ``$id``, so one may ``$ref`` another (the trial schema reuses the config's)."""
    from referencing import Registry, Resource

    return Registry().with_resources(
        (load_schema(kind)["$id"], Resource.from_contents(load_schema(kind))) for kind in SCHEMAS
    )


@cache
def _validator(kind: str):
    import jsonschema

    return jsonschema.Draft202012Validator(_layer_schema() if kind == "layer" else load_schema(kind),
                                           registry=_registry())


def field_schema(kind: str, *keys: str) -> dict[str, Any]:
    """The schema of one field, e.g. ``field_schema("config", "slurm", "time")``."""
    schema = load_schema(kind)
    for key in keys:
        schema = schema["properties"][key]
    return schema


def field_error(kind: str, keys: Sequence[str], value: Any) -> str | None:
    """None when ``value`` is valid for the field at ``keys``; else what it must be (for flags that
    set the same thing as a config key, e.g. ``--timeout`` and ``slurm.time``)."""
    import jsonschema

    schema = field_schema(kind, *keys)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if not errors:
        return None
    if "errorMessage" in schema:
        return str(schema["errorMessage"])
    return _message(errors[0])[0][1]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


_TYPE_WORDS = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
               "null": "null", "array": "a list", "object": "an object"}


def _message(error) -> list[tuple[str, str]]:
    """(json path, message) pairs for one jsonschema error."""
    path = path_of(error.absolute_path)
    v, schema, inst = error.validator, error.schema, error.instance
    if v == "additionalProperties" and isinstance(inst, dict):
        known = set(schema.get("properties", {}))
        out = []
        for key in inst:
            if key not in known:
                out.append((join_path(path, key), "unknown key" + did_you_mean(key, known)))
        return out or [(path, error.message)]
    if v == "required":
        missing = [k for k in error.validator_value if not isinstance(inst, dict) or k not in inst]
        return [(join_path(path, k), "missing required key") for k in missing]
    if v == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return [(path, f"must be {words} (got {_show(inst)})")]
    if v == "enum":
        choices = [str(c) for c in error.validator_value]
        hint = did_you_mean(inst, choices) if isinstance(inst, str) else ""
        return [(path, f"must be one of {', '.join(choices)} (got {_show(inst)}){hint}")]
    if v == "const":
        return [(path, f"must be {_show(error.validator_value)} (got {_show(inst)})")]
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if v in bounds:
        return [(path, f"must be {bounds[v]} {error.validator_value} (got {_show(inst)})")]
    if v in ("minItems", "minProperties", "minLength"):
        if error.validator_value == 1:
            return [(path, "must not be empty")]
        return [(path, f"needs at least {error.validator_value} items (got {len(inst)})")]
    if v == "uniqueItems":
        return [(path, f"has duplicate items: {_show(inst)}")]
    if v == "pattern":
        return [(path, f"{schema.get('errorMessage', 'has the wrong format')} (got {_show(inst)})")]
    return [(path, error.message)]


def validate(kind: str, instance: Any, source: str | Callable[[str], str]) -> list[Problem]:
    """All problems of ``instance`` against the ``kind`` schema.

    ``source`` is the file to name, or a function from JSON path to file (layer provenance).
    """
    where = source if callable(source) else (lambda _p: source)
    problems: list[Problem] = []
    for error in _validator(kind).iter_errors(instance):
        for sub in _leaf_errors(error):
            for path, message in _message(sub):
                problems.append(Problem(where(path), path, message))
    return sorted(set(problems))


def _leaf_errors(error):
    """if/then and $ref errors carry the useful error in their context; keep the error itself."""
    if error.context and error.validator in ("anyOf", "oneOf"):
        best = min(error.context, key=lambda e: len(list(e.absolute_path)))
        return [best]
    return [error]


def kind_of(data: Any, name: str = "") -> str:
    """Which schema a file follows: "database", "grid" or "config" (a layer).

    Its ``"$schema"`` says, else its shape: the original tool's files name no schema. A grid has
    only grid keys; a database maps languages to tasks to entries that name a ``dataset``.
    """
    if not isinstance(data, dict):
        return "config"
    schema = data.get("$schema")
    if isinstance(schema, str):
        for kind, file in SCHEMAS.items():
            if schema.endswith(file):
                return kind
    keys = set(data) - {"$schema", "$comment"}
    if keys and keys <= set(load_schema("grid")["properties"]) and keys & {"parameters", "languages"}:
        return "grid"
    if Path(name).name == "language-database.json" or (keys and all(_is_language(data[k]) for k in keys)):
        return "database"
    return "config"


def _is_language(value: Any) -> bool:
    """{"espeak"?, task -> {name -> {"dataset": ...}}} (at least one task)."""
    if not isinstance(value, dict):
        return False
    tasks = [v for k, v in value.items() if k != "espeak"]
    return bool(tasks) and all(isinstance(t, dict) and t and all(isinstance(e, dict) and "dataset" in e
                                                                 for e in t.values()) for t in tasks)


def validate_layer(data: Any, source: str) -> list[Problem]:
    """Problems of one layer on its own: the config schema without its required keys (the
    other layers, the shipped default.json first, can set them)."""
    return validate("layer", data, source)


@cache
def _layer_schema() -> dict[str, Any]:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "required"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(load_schema("config"))


def validate_field(kind: str, keys: Sequence[str], value: Any, source: str | Callable[[str], str]) -> list[Problem]:
    """All problems of one section (e.g. ``("slurm",)``) against its part of the ``kind`` schema;
    paths are from the root, as in a whole config."""
    where = source if callable(source) else (lambda _p: source)
    return sorted({Problem(where(path), path, message) for path, message in _field_messages(kind, tuple(keys), value)})


_PLAIN_OBJECT_KEYS = {"type", "properties", "required", "additionalProperties", "description", "title", "$comment"}


def _field_messages(kind: str, keys: tuple[str, ...], value: Any) -> tuple[tuple[str, str], ...]:
    """(path, message) pairs of one field. Submitting many trials of one plan checks the same
    sections and the same swept values again and again, so a plain object is checked as its key set
    plus each value, and every distinct (field, value) is checked once (cached)."""
    schema = _resolved(kind, keys)
    extra = schema.get("additionalProperties", True)
    if isinstance(value, dict) and "properties" in schema and set(schema) <= _PLAIN_OBJECT_KEYS \
            and isinstance(extra, bool):
        out = list(_structure_messages(kind, keys, tuple(sorted(value))))
        for key, item in value.items():
            if key in schema["properties"]:
                out += _field_messages(kind, (*keys, key), item)
        return tuple(out)
    if surely_valid(schema, value):
        return ()
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return _check(_wrapped(kind, keys, structure=False), keys, value)
    return _field_messages_cached(kind, keys, text)


@lru_cache(maxsize=65536)
def _field_messages_cached(kind: str, keys: tuple[str, ...], text: str) -> tuple[tuple[str, str], ...]:
    return _check(_wrapped(kind, keys, structure=False), keys, json.loads(text))


@lru_cache(maxsize=4096)
def _structure_messages(kind: str, keys: tuple[str, ...], present: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return _check(_wrapped(kind, keys, structure=True), keys, dict.fromkeys(present))


def _check(validator, keys: tuple[str, ...], value: Any) -> tuple[tuple[str, str], ...]:
    instance = value
    for key in reversed(keys):
        instance = {key: instance}
    return tuple(pm for error in validator.iter_errors(instance) for sub in _leaf_errors(error) for pm in _message(sub))


@cache
def _resolved(kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The schema of a field, following ``$ref`` between the shipped schemas."""
    from urllib.parse import urljoin

    base, schema = load_schema(kind)["$id"], load_schema(kind)
    for key in keys:
        schema = schema["properties"][key]
        while "$ref" in schema:
            uri = urljoin(base, schema["$ref"])
            base = uri.split("#")[0]
            schema = _registry().resolver().lookup(uri).contents
    return schema


@cache
def _wrapped(kind: str, keys: tuple[str, ...], *, structure: bool):
    """A validator of ``{k1: {k2: value}}`` for the field at ``keys`` (so paths are from the root);
    ``structure``: only the field's type, required and unknown keys, not its values."""
    import jsonschema

    schema = _resolved(kind, keys)
    if structure:
        schema = {**schema, "properties": dict.fromkeys(schema["properties"], True)}
    for key in reversed(keys):
        schema = {"type": "object", "properties": {key: schema}}
    return jsonschema.Draft202012Validator(schema, registry=_registry())


@cache
def _top_validator(kind: str):
    """The ``kind`` schema without its properties' own schemas: required keys, unknown keys, if/then."""
    import jsonschema

    schema = load_schema(kind)
    return jsonschema.Draft202012Validator({**schema, "properties": {k: True for k in schema["properties"]}},
                                           registry=_registry())


def validate_trial(config: Any, file: str, provenance: dict[str, str] | None = None) -> list[Problem]:
    """Problems of a frozen trial config (trials/<id>/config.json) against the trial schema.

    Each problem names ``file``, or with ``provenance`` the layer that set the value. The same as
    ``validate("trial", ...)``, section by section so that submitting many trials of one plan
    checks each distinct section once.
    """
    provenance = provenance or {}
    where = lambda path: provenance.get(path, file)  # noqa: E731
    if not isinstance(config, dict):
        return validate("trial", config, where)
    problems = {Problem(where(path), path, message) for error in _top_validator("trial").iter_errors(config)
                for sub in _leaf_errors(error) for path, message in _message(sub)}
    known = load_schema("trial")["properties"]
    for key, value in config.items():
        if key in known:
            problems.update(validate_field("trial", (key,), value, where))
    return sorted(problems)


def validate_config(layered) -> list[Problem]:
    """Schema problems of the merged config, each named by the layer that set the value."""
    return validate("config", layered.value, layered.source_of)


def hyperparameter_names() -> list[str]:
    return list(load_schema("config")["properties"]["hyperparameters"]["properties"])


def task_specific_hyperparameters() -> dict[str, list[str]]:
    """Hyperparameters that only some task types use (``"x-task-types"`` in the schema) -> those types."""
    props = load_schema("config")["properties"]["hyperparameters"]["properties"]
    return {name: list(spec["x-task-types"]) for name, spec in props.items() if "x-task-types" in spec}


_SCALAR_KEYWORDS = {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "description",
                    "title", "$comment", "default"}
_TYPES = {bool: ("boolean",), int: ("integer", "number"), str: ("string",), type(None): ("null",)}


def surely_valid(schema: Any, value: Any) -> bool:
    """True only when ``value`` certainly satisfies ``schema``: a scalar against a schema of
    types, bounds and enums alone (most hyperparameters). False means "ask jsonschema", which
    also words the message; so a plan's 100k values cost a comparison each, not a validation."""
    if not isinstance(schema, dict) or any(k not in _SCALAR_KEYWORDS and not k.startswith("x-") for k in schema):
        return False
    if "enum" in schema:
        return any(value == e and type(value) is type(e) for e in schema["enum"])
    declared = schema.get("type")
    declared = (declared,) if isinstance(declared, str) else tuple(declared or ())
    if not declared:
        return False
    if type(value) is float:
        if not math.isfinite(value) or not ("number" in declared or ("integer" in declared and value.is_integer())):
            return False
    elif type(value) not in _TYPES or not any(t in declared for t in _TYPES[type(value)]):
        return False
    if type(value) in (int, float):
        for key, ok in (("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
                        ("exclusiveMinimum", lambda b: value > b), ("exclusiveMaximum", lambda b: value < b)):
            bound = schema.get(key)
            if bound is not None and not (isinstance(bound, (int, float)) and ok(bound)):
                return False
    return True


def validate_hyperparameter(name: str, value: Any) -> list[str]:
    """Messages for one hyperparameter value (used for grid values)."""
    if surely_valid(load_schema("config")["properties"]["hyperparameters"]["properties"][name], value):
        return []
    return [msg for e in _hyper_validator(name).iter_errors(value) for _p, msg in _message(e)]


@cache
def _hyper_validator(name: str):
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema("config")["properties"]["hyperparameters"]["properties"][name])
