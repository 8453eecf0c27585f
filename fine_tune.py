#!/usr/bin/env python
"""alpaca-lora's finetune.py flags on llmft's trainer: python fine_tune.py --base_model PATH --data_path FILE ...

A thin shim: the flags become `llmft finetune` overrides (see llmft/compat/alpaca_lora.py and
docs/data.md); `python fine_tune.py --help` lists them.
"""

import sys

from llmft.compat.alpaca_lora import main

if __name__ == "__main__":
    sys.exit(main())
