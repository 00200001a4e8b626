"""Register the nanoGPT classes with transformers' Auto* factories, without paying for torch.

``import finetune`` calls ``install()``: it puts a one-shot finder on ``sys.meta_path`` that
waits for transformers' Auto model module to be imported (which imports torch anyway) and then
imports ``finetune.compute.hf``, whose import registers the classes. So ``from_pretrained(DIR)``
of a nanogpt directory works in any program that imported finetune, and planning on a login
node never imports torch. The module is imported by name, on purpose: nothing here imports
torch or transformers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

HF_MODULE = "finetune.compute.hf"  # registers the classes on import

_AUTO_MODULE = "transformers.models.auto.modeling_auto"


class _RegisterAfterLoad(importlib.abc.Loader):
    """Runs transformers' module, then imports finetune.compute.hf, which registers the nanoGPT classes."""

    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _import_hf()


class _AutoRegistrationFinder(importlib.abc.MetaPathFinder):
    """Waits for transformers' Auto model factories to be imported (one shot)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _AUTO_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisterAfterLoad(spec.loader)
        return spec


def _import_hf() -> None:
    try:
        importlib.import_module(HF_MODULE)
    except Exception as e:  # never break the user's transformers import over our registration
        warnings.warn(f"finetune: could not register the nanoGPT classes with transformers: {e}", stacklevel=2)


def install() -> None:
    """Make ``from_pretrained(DIR)`` of nanogpt directories work without importing finetune.compute.hf.

    Costs nothing now: torch and transformers are not imported. When transformers' Auto model
    factories are first imported (which imports torch anyway), ``finetune.compute.hf`` is imported and
    registers its classes. If they are already imported, registration happens at once.
    Idempotent.
    """
    if _AUTO_MODULE in sys.modules:
        _import_hf()
    elif not any(isinstance(f, _AutoRegistrationFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoRegistrationFinder())
