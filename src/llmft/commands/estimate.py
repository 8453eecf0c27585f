"""``llmft estimate``: will a setup fit, and what should change if it does not (no GPU needed)."""

from __future__ import annotations

import argparse
import json

from llmft.errors import UserError
from llmft.memory.architectures import KNOWN_ARCHITECTURES, resolve_shape
from llmft.memory.estimator import OPTIMIZERS, STRATEGIES, Setup, estimate
from llmft.memory.params import LLAMA_LINEARS, LORA_TARGETS, METHODS, MethodSpec
from llmft.memory.report import estimate_json, format_estimate, parse_size

DESCRIPTION = """Estimate the memory of one training rank before launching: parameters, gradients, optimizer
states, activations, temporary buffers, host memory at load; whether it fits in --gpu-memory and, if
not, the smallest changes that would. Formulas and measured checks: docs/memory.md.

examples:
  llmft estimate --model llama-3.1-8b --method qlora --gpu-memory 24GiB
  llmft estimate --model llama-2-70b --method full --strategy fsdp --gpus 8 --nodes 2 --json
  llmft estimate --model ~/models/my-llama --seq-len 4096 --activation-checkpointing"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("estimate", help="Plan memory per GPU for a model and setup (no GPU needed).",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)  # fmt: skip
    p.add_argument(
        "--model",
        default="tiny-llama",
        metavar="NAME",
        help=f"a preset, a model folder, a config.json, or one of: {', '.join(KNOWN_ARCHITECTURES)}",
    )
    p.add_argument("--method", default="lora", metavar="|".join(METHODS), help="default lora")
    p.add_argument("--lora-r", type=int, default=16, metavar="R", help="LoRA/QLoRA/DoRA rank (default 16)")
    p.add_argument("--lora-dropout", type=float, default=0.05, metavar="P", help="default 0.05")
    p.add_argument(
        "--lora-targets",
        default=",".join(LLAMA_LINEARS),
        metavar="LIST",
        help="comma-separated projections (default all 7)",
    )
    p.add_argument("--num-virtual-tokens", type=int, default=20, metavar="N", help="prefix/prompt tuning")
    p.add_argument(
        "--num-frozen-layers",
        type=int,
        default=0,
        metavar="N",
        help="full: freeze the embeddings and the bottom N blocks",
    )
    p.add_argument("--head-only", action="store_true", help="full: train the output head alone")
    p.add_argument("--strategy", default="single", metavar="|".join(STRATEGIES), help="default single")
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs (processes) per node")
    p.add_argument("--nodes", type=int, default=1, metavar="N")
    p.add_argument("--seq-len", type=int, default=2048, metavar="T", help="tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=1, metavar="B", help="sequences per forward pass")
    p.add_argument("--precision", default="bf16", metavar="fp32|bf16|fp16", help="compute dtype")
    p.add_argument(
        "--base-dtype",
        default=None,
        metavar="fp32|bf16|fp16",
        help="storage of a frozen base (default bf16 for PEFT with bf16/fp16 compute, else fp32)",
    )
    p.add_argument(
        "--fsdp-param-dtype",
        default=None,
        metavar="fp32|bf16|fp16",
        help="FSDP mixed precision: the dtype parameters are gathered in",
    )
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--optimizer", default="adamw", metavar="|".join(OPTIMIZERS))
    p.add_argument("--cpu-offload", action="store_true", help="FSDP: shards and optimizer on the CPU")
    p.add_argument("--attention", default="sdpa", metavar="sdpa|eager")
    p.add_argument(
        "--packing", action="store_true", help="rows packed with several documents (a T x T mask per layer)"
    )
    p.add_argument("--gpu-memory", default=None, metavar="SIZE", help="memory per GPU, e.g. 24GiB or 80GB")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON (keys: docs/memory.md)")
    return p


def _dtype(value: str | None, flag: str) -> str | None:
    if value is not None and value not in ("fp32", "bf16", "fp16"):
        raise UserError(f"{flag} '{value}' is not one of fp32, bf16, fp16")
    return value


def setup_from_args(args: argparse.Namespace) -> Setup:
    """The :class:`Setup` of the command's flags (each checked, with the flag named on error)."""
    if args.method not in METHODS:
        raise UserError(f"--method '{args.method}' is not a method; use one of {', '.join(METHODS)}")
    if not 0 <= args.lora_dropout < 1:
        raise UserError(f"--lora-dropout {args.lora_dropout}: give a probability in [0, 1)")
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise UserError(f"--lora-targets {args.lora_targets!r}: use some of {','.join(LORA_TARGETS)}")
    if args.num_virtual_tokens < 1:
        raise UserError(f"--num-virtual-tokens {args.num_virtual_tokens}: give at least 1")
    method = MethodSpec(name=args.method, lora_r=args.lora_r, lora_dropout=args.lora_dropout,
                        lora_targets=targets, num_virtual_tokens=args.num_virtual_tokens,
                        num_frozen_layers=args.num_frozen_layers, head_only=args.head_only)  # fmt: skip
    return Setup(
        shape=resolve_shape(args.model),
        method=method,
        strategy=args.strategy,
        gpus=args.gpus,
        nodes=args.nodes,
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        precision=_dtype(args.precision, "--precision"),
        base_dtype=_dtype(args.base_dtype, "--base-dtype"),
        fsdp_param_dtype=_dtype(args.fsdp_param_dtype, "--fsdp-param-dtype"),
        activation_checkpointing=args.activation_checkpointing,
        optimizer=args.optimizer,
        cpu_offload=args.cpu_offload,
        attention=args.attention,
        packed=args.packing,
        gpu_memory=parse_size(args.gpu_memory) if args.gpu_memory else None,
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Print the estimate as a table (or JSON) with the advice."""
    if extra:  # flags of its own, no config
        raise UserError(f"estimate: unknown flag '{extra[0]}' (see llmft estimate --help)")
    result = estimate(setup_from_args(args))
    if args.json:
        print(json.dumps(estimate_json(result), indent=2))
    else:
        print(format_estimate(result))
    return 0
