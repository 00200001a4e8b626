"""`finetune collect DIR --html`: one self-contained report.html, opened in a real headless
Chromium (Debian's `chromium` package): it loads without console errors, draws every plot and
the table sorts. The plan is a small local search over the count workload."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import count_sets, search_plan  # noqa: E402

from finetune.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    from finetune.login.search_submit import start_search

    root = tmp_path_factory.mktemp("report")
    plan = search_plan(root, {"parameters": {"learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
                                             "warmup_ratio": [0.0, 0.1]},
                              "search": {"sampler": "random", "trials": 4, "workers": 1, "seed": 2,
                                         "pruner": "successive-halving",
                                         "enqueue": [{"learning_rate": 1e-3, "warmup_ratio": 0.0},
                                                     {"learning_rate": 1e-1, "warmup_ratio": 0.1}]}},
                       count_sets(count_to=6, interval=2))
    start_search(plan, root / "search", executor="local")
    return root / "search"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium not found: apt-get install -y chromium (Debian's package)")
    return path


def open_in_chromium(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and every console line Chromium logged."""
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_the_console_check_sees_errors(tmp_path):
    """The check below can fail: a page with an error does log a console line."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = open_in_chromium(bad.as_uri(), tmp_path)
    assert any("undefinedFunction is not defined" in line for line in console)


def test_report_is_self_contained_and_renders_in_chromium(searched, tmp_path, capsys):
    assert main(["collect", str(searched), "--html", "--quiet"]) == 0
    path = searched / "report.html"
    assert f"wrote {path}" in capsys.readouterr().out
    text = path.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", text)  # nothing from a network
    plots = text.count('<div class="plot">')
    assert plots == 6  # heatmaps, learning curves, history, importances, parallel coordinates, intermediate values

    # column 3 is the learning rate (trial, model, train set, learning_rate, ...): sort it descending
    dom, console = open_in_chromium(path.as_uri() + "#sort=3-desc", tmp_path)
    assert console == []
    assert re.search(r'<pre id="errors">\s*</pre>', dom)
    assert dom.count('class="plot-container plotly"') == plots  # plotly drew every figure
    assert 'data-sorted="3 desc"' in dom
    body = dom[dom.index("<tbody>"):dom.index("</tbody>")]
    rows = re.findall(r'<tr class="(\w+)"><td class="text">(\w+)</td>(.*?)</tr>', body)
    assert len(rows) == 4
    lrs = [float(re.findall(r"<td[^>]*>([^<]*)</td>", cells)[2]) for _, _, cells in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == 0.1
    states = {tid: state for state, tid, _ in rows}
    pruned = json.loads((searched / "trials" / rows[0][1] / "result.json").read_text())
    assert states[rows[0][1]] == "pruned" and pruned["pruned_step"] == 2  # the bad learning rate
    assert "pruned (at step 2)" in body


def test_the_report_heatmap_shows_the_seed_statistics(tmp_path):
    """Seeds are replicas (issue 17): a heatmap cell is the mean over the chosen configuration's
    seeds, with its standard deviation and n."""
    from search_helpers import CONFIGS

    from finetune.analysis.report import write_report
    from finetune.login.plan import build_plan, write_plan
    from finetune.login.submit import submit

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"parameters": {"learning_rate": [1e-3, 1e-2], "seed": [1, 2]}}))
    plan = build_plan(CONFIGS, count_sets(count_to=2, interval=2, sleep_s=0.0), grid_config=str(grid),
                      model_types=("normal",))
    write_plan(plan, tmp_path / "plan")
    submit(tmp_path / "plan", executor="local", parallel=2)
    text = write_report(tmp_path / "plan").read_text()
    cells = re.findall(r'"(\d\.\d{3}(?: \\u00b1 |\s±\s)\d\.\d{3} \(n=2\))"', text)
    assert cells and all(c.startswith("0.500") for c in cells), re.findall(r'"text":\[\[[^\]]*\]', text)
