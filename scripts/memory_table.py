"""Write the table of memory estimates in docs/memory.md (or check it is current with --check).

    python scripts/memory_table.py          # rewrite the table between the markers
    python scripts/memory_table.py --check  # exit 1 if the doc's table differs from the planner's

Every figure comes from llmft's own planner (``llmft.memory.estimator``): 7B/8B/70B x full/LoRA/QLoRA x
1/4/8 GPUs, 2048-token sequences, micro-batch 1, bf16 compute, AdamW, activation checkpointing on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmft.memory.architectures import KNOWN_ARCHITECTURES
from llmft.memory.estimator import Setup, estimate
from llmft.memory.params import MethodSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "memory.md"
START, END = "<!-- estimate-table:start -->", "<!-- estimate-table:end -->"
MODELS = ("llama-2-7b", "llama-3.1-8b", "llama-3.1-70b")
METHODS = ("full", "lora", "qlora")
GPUS = (1, 4, 8)
MEMORY = {"24 GB": 24e9, "80 GB": 80e9}


def table() -> str:
    lines = [
        "| model | method | GPUs | strategy | params | grads | optimizer | activations | other | total GiB | "
        + " | ".join(f"fits {name}" for name in MEMORY)
        + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(MEMORY),
    ]
    for model in MODELS:
        for method in METHODS:
            for gpus in GPUS:
                strategy = "single" if gpus == 1 else "fsdp"
                est = estimate(Setup(KNOWN_ARCHITECTURES[model], MethodSpec(method), strategy=strategy, gpus=gpus,
                                     seq_len=2048, micro_batch=1, precision="bf16",
                                     activation_checkpointing=True))  # fmt: skip
                other = est.autocast_copy_bytes + est.temporary_bytes + est.cuda_context_bytes
                cells = [
                    est.parameter_bytes,
                    est.gradient_bytes,
                    est.optimizer_bytes,
                    est.activation_bytes,
                    other,
                ]
                fits = ["yes" if est.total_bytes <= limit else "no" for limit in MEMORY.values()]
                lines.append(
                    f"| {model} | {method} | {gpus} | {strategy} | "
                    + " | ".join(f"{v / 2**30:.1f}" for v in cells)
                    + f" | **{est.total_bytes / 2**30:.1f}** | "
                    + " | ".join(fits)
                    + " |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/memory.md's table is stale")
    args = parser.parse_args()
    text = DOC.read_text(encoding="utf-8")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    updated = f"{before}{START}\n{table()}\n{END}{after}"
    if args.check:
        if updated != text:
            print(
                "docs/memory.md: the estimate table is stale; run python scripts/memory_table.py",
                file=sys.stderr,
            )
            return 1
        return 0
    DOC.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
