#!/usr/bin/env python3
"""Plan a grid search (grid x model types) and submit it: the original script's flags over
`finetune plan`. See `python scripts/grid-search.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from finetune.cli.plan import main_grid_search  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_grid_search())
