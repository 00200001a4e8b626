"""The import contracts (.importlinter) hold, and lint-imports sees imports inside functions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    assert LINT, "lint-imports not found: import-linter is in the test extra (pip install -e .[test])"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([LINT, "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_repository_keeps_its_import_contracts():
    proc = lint(REPO, REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("where", ["module", "function"])
def test_a_forbidden_import_is_found_wherever_it_is(tmp_path, where):
    """A throwaway package whose login side imports json (standing in for torch) at module level or
    inside a function: both break the contract, so a lazy import cannot slip past the linter."""
    pkg = tmp_path / "src" / "throwaway"
    (pkg / "login").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "login" / "__init__.py").write_text("")
    body = "import json\n" if where == "module" else "def plan():\n    import json\n    return json.dumps({})\n"
    (pkg / "login" / "plan.py").write_text(body)
    (pkg / "login" / "clean.py").write_text("def f():\n    return 1\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = throwaway\ninclude_external_packages = True\n\n"
        "[importlinter:contract:login]\nname = login never imports json\ntype = forbidden\n"
        "source_modules =\n    throwaway.login\nforbidden_modules =\n    json\n"
    )
    proc = lint(tmp_path, tmp_path / "src")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "BROKEN" in proc.stdout and "throwaway.login.plan -> json" in proc.stdout

    (pkg / "login" / "plan.py").write_text("def plan():\n    return '{}'\n")  # the control: nothing forbidden
    proc = lint(tmp_path, tmp_path / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr
