#!/usr/bin/env python3
"""Plan the cross-language matrix (each language alone and their union, evaluated on every
language) and submit it: the original script's flags over `finetune matrix`.
See `python scripts/finetuning-generator.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from finetune.cli.plan import main_generator  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_generator())
