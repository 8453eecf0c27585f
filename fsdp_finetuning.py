"""llama-recipes style entry point: ``torchrun --nnodes 1 --nproc_per_node 4 fsdp_finetuning.py ...``.

A thin shim: it translates llama-recipes' flags (``--model_name``, ``--batch_size_training``,
``--enable_fsdp``, ``--train_strategy``, ...) into ``llmft finetune`` flags and runs that command; the
table is in docs/distributed.md. llmft's own ``--section.key VALUE`` flags pass through.
"""

import sys

from llmft.compat.llama_recipes import main

if __name__ == "__main__":
    sys.exit(main())
