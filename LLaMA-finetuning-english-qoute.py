#!/usr/bin/env python
"""The english-quotes recipe of the seed: the same run as `llmft finetune --config configs/quotes_lora.yaml`.

Extra arguments are llmft flags (e.g. --train.max_steps 20 --overwrite).
"""

import sys
from pathlib import Path

from llmft.cli import main

RECIPE = Path(__file__).resolve().parent / "configs" / "quotes_lora.yaml"

if __name__ == "__main__":
    sys.exit(main(["finetune", "--config", str(RECIPE), *sys.argv[1:]]))
