"""Build step: the files the tool reads at run time besides its code ship inside the wheel.

The config layers (``config/*.json``: default.json, the language database, example layers and
grids) and the sbatch templates (``jobs/templates/``) have one copy, at the top of the
repository, where users read them and pass them on the command line. ``build_py`` copies them
into the wheel as ``finetune/_shipped/config/`` and ``finetune/_shipped/templates/``, where
``finetune.login.shipped`` finds them when no checkout is there. Everything else is in setup.cfg.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"config": ("config", "*.json"), "templates": ("jobs/templates", "*")}  # name -> (source, pattern)


class BuildPyWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads config/ and jobs/templates/ in the checkout itself
        for name, (source, pattern) in SHIPPED.items():
            files = sorted(p for p in (ROOT / source).glob(pattern) if p.is_file())
            if not files:
                raise SystemExit(f"setup.py: nothing to ship in {source}/ (is this a complete checkout?)")
            target = Path(self.build_lib) / "finetune" / "_shipped" / name
            self.mkpath(str(target))
            for f in files:
                self.copy_file(str(f), str(target / f.name))


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
