"""finetune: plan, submit and collect multilingual nanoGPT fine-tuning experiments."""

__version__ = "0.1.0"
