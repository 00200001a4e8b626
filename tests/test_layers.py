"""Config layering: exact merged results, provenance, --set, path resolution, syntax errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from finetune.errors import ConfigError, UsageError
from finetune.login.layers import join_path, load_config, parse_override, resolved_paths


def write_layers(tmp_path: Path, layers: list[str]) -> list[str]:
    """Write layer texts as l0.json, l1.json, ...; l0 is passed as the explicit default."""
    paths = []
    for i, text in enumerate(layers):
        p = tmp_path / f"l{i}.json"
        p.write_text(text, encoding="utf-8")
        paths.append(str(p))
    return paths


MERGE_CASES = [
    # (layers (first = default), overrides, expected merged value)
    pytest.param(['{"a": 1}', '{"b": 2}'], [], {"a": 1, "b": 2}, id="disjoint keys"),
    pytest.param(['{"a": {"x": 1, "y": 2}}', '{"a": {"y": 3}}'], [], {"a": {"x": 1, "y": 3}}, id="deep merge"),
    pytest.param(['{"a": [1, 2, 3]}', '{"a": [4]}'], [], {"a": [4]}, id="lists replace"),
    pytest.param(['{"a": {"x": 1}}', '{"a": null}'], [], {"a": None}, id="null replaces object"),
    pytest.param(['{"a": 5}', '{"a": {"x": 1}}'], [], {"a": {"x": 1}}, id="object replaces scalar"),
    pytest.param(['{"a": {"x": 1}}', '{"a": {"x": {"deep": true}}}'], [], {"a": {"x": {"deep": True}}},
                 id="object replaces nested scalar"),
    pytest.param(['// comment\n{"a": 1, /* c */ "b": [1, 2,],}'], [], {"a": 1, "b": [1, 2]},
                 id="comments and trailing commas"),
    pytest.param(['{"a": {"x": 1}}'], ["a.x=2", "a.y=hello", "b=[1, 2]", 'c={"k": null}'],
                 {"a": {"x": 2, "y": "hello"}, "b": [1, 2], "c": {"k": None}}, id="--set JSON else string"),
    pytest.param(['{"a": 1}', '{"a": 2}'], ["a=3"], {"a": 3}, id="--set wins over files"),
    pytest.param(['{"a": 1}'], ["s=1e-4", "t=true", "u=null", "v=04:00:00"],
                 {"a": 1, "s": 1e-4, "t": True, "u": None, "v": "04:00:00"}, id="--set value types"),
]


@pytest.mark.parametrize("layers, overrides, expected", MERGE_CASES)
def test_merge(tmp_path, layers, overrides, expected):
    paths = write_layers(tmp_path, layers)
    layered = load_config(paths[1:], overrides, default=paths[0], base=None)
    assert layered.value == expected


def test_provenance_names_the_layer_that_set_each_value(tmp_path):
    d, a, b = write_layers(tmp_path, ['{"h": {"lr": 1, "bs": 2}, "t": "x"}', '{"h": {"lr": 3}}', '{"t": "y"}'])
    layered = load_config([a, b], ["h.bs=4"], default=d, base=None)
    assert layered.sources == [d, a, b, "--set"]
    assert layered.provenance["$.h.lr"] == a
    assert layered.provenance["$.h.bs"] == "--set"
    assert layered.provenance["$.t"] == b
    # a key nobody set is attributed to the last layer that touched its object
    assert layered.source_of("$.h.missing") == "--set"


def test_replacing_an_object_forgets_the_provenance_below_it(tmp_path):
    d, a = write_layers(tmp_path, ['{"m": {"x": 1, "y": 2}}', '{"m": null}'])
    layered = load_config([a], default=d, base=None)
    assert layered.provenance["$.m"] == a
    assert "$.m.x" not in layered.provenance and "$.m.y" not in layered.provenance


def test_default_json_beside_the_first_file_is_loaded_first(tmp_path):
    (tmp_path / "default.json").write_text('{"a": 1, "b": 1}')
    (tmp_path / "x.json").write_text('{"b": 2}')
    layered = load_config([str(tmp_path / "x.json")], base=None)
    assert layered.value == {"a": 1, "b": 2}
    assert Path(layered.sources[0]).name == "default.json"
    # naming default.json explicitly does not load it twice
    layered = load_config([str(tmp_path / "default.json"), str(tmp_path / "x.json")], base=None)
    assert len(layered.sources) == 2


def test_paths_resolve_relative_to_the_layer_that_set_them(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "other").mkdir()
    d = tmp_path / "conf" / "default.json"
    d.write_text('{"database": "db.json", "checkpoints": {"prefix": "../models"}, "data": {"mirrors": {"h/x": "m"}}}')
    o = tmp_path / "other" / "pair.json"
    o.write_text('{"checkpoints": {"prefix": "ck"}, "data": {"cache_dir": "/abs/cache"}}')
    monkeypatch.chdir(tmp_path)
    layered = load_config([str(o)], ["tokenizers.prefix=tok"], default=str(d))
    paths = resolved_paths(layered)
    assert paths == {
        "$.database": str(tmp_path / "conf" / "db.json"),
        "$.checkpoints.prefix": str(tmp_path / "other" / "ck"),
        "$.tokenizers.prefix": str(tmp_path / "tok"),
        join_path("$.data.mirrors", "h/x"): str(tmp_path / "conf" / "m"),
        "$.data.cache_dir": "/abs/cache",
    }


def test_syntax_error_names_file_line_and_column(tmp_path):
    d, bad = write_layers(tmp_path, ['{}', '{\n  "a": 1,\n  "b": ]\n}'])
    with pytest.raises(ConfigError) as e:
        load_config([bad], default=d, base=None)
    assert str(e.value) == f'{bad}: invalid JSON: line 3, column 8: Unexpected "]"'


def test_syntax_errors_of_several_files_are_reported_together(tmp_path):
    d, bad1, bad2 = write_layers(tmp_path, ['{}', '{"a": }', '[1, 2'])
    with pytest.raises(ConfigError) as e:
        load_config([bad1, bad2], ["novalue"], default=d, base=None)
    files = [p.file for p in e.value.problems]
    assert bad1 in files and bad2 in files and "--set" in files


def test_a_layer_must_be_an_object(tmp_path):
    d, lst = write_layers(tmp_path, ['{}', '[1, 2]'])
    with pytest.raises(ConfigError, match=r"l1.json: \$: must be a JSON object \(got list\)"):
        load_config([lst], default=d, base=None)


def test_missing_file(tmp_path):
    d, = write_layers(tmp_path, ['{}'])
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="nope.json: cannot read"):
        load_config([missing], default=d, base=None)


@pytest.mark.parametrize("text, expected", [
    ("a.b=1", (["a", "b"], 1)),
    ("a=x=y", (["a"], "x=y")),
    ("a={\"k\": [1]}", (["a"], {"k": [1]})),
    ("a=", (["a"], "")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=1", "a..b=1", ".a=1"])
def test_bad_override(text):
    with pytest.raises(UsageError, match=r"--set: expected KEY.PATH=VALUE"):
        parse_override(text)


def test_json_paths_quote_keys_that_are_not_identifiers():
    assert join_path("$.data.mirrors", "Davlan/sib200") == '$.data.mirrors["Davlan/sib200"]'
    assert join_path("$.a", 0) == "$.a[0]"
    assert join_path("$", "learning_rate") == "$.learning_rate"


def test_layers_module_stays_light():
    """Planning must not import torch & co: run in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys, finetune.cli, finetune.login.plan, finetune.login.layers, finetune.login.schema, finetune.login.grid, "
            "finetune.login.matrix, finetune.login.database; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib', 'submitit') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}, check=True)
    assert json.loads(out.stdout) == []
