"""finetune: plan, submit and collect multilingual nanoGPT fine-tuning experiments."""

__version__ = "0.1.0"

# Register the nanoGPT classes with transformers' Auto* factories the first time transformers'
# Auto model module is imported (a cheap import hook: planning never pays for torch).
from finetune import autoregister as _autoregister  # noqa: E402

_autoregister.install()
