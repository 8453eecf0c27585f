"""``llmft finetune``: fine-tune a model as the config says (the run path is :mod:`llmft.finetune`)."""

from __future__ import annotations

import argparse
import os
import sys

from llmft.commands.common import config_parser, setup_logging
from llmft.config import load_config, parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = config_parser(sub, "finetune", "Fine-tune a model (default: LoRA on tiny-llama + quotes).")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in output_dir (it is deleted)"
    )
    parser.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue from a checkpoint: auto (the latest in output_dir; a fresh start if none) or a "
        "checkpoint or run folder",
    )
    return parser


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Train, then print the report (one per run, not one per process); a stop signal exits with
    :data:`~llmft.launch.stop.EXIT_PREEMPTED`."""
    config = load_config(args.config, parse_overrides(extra))
    if args.print_config:
        print(config.model_copy(update={"output_dir": str(config.resolved_output_dir())}).to_yaml(), end="")
        return 0
    setup_logging()
    from llmft.launch import stop as stop_requests

    # A scheduler's SIGUSR1/SIGTERM is recorded from here, before the heavy imports and the model load:
    # training then stops before its first step (llmft.launch.stop).
    with stop_requests.listen():
        from llmft.finetune import finetune  # heavy imports (torch, transformers) only when training
        from llmft.launch.stop import EXIT_PREEMPTED, Preempted

        try:
            result = finetune(config, overwrite=args.overwrite, resume=args.resume)
        except Preempted as stop:
            if os.environ.get("RANK", "0") == "0":  # one report per run, not one per process
                print(
                    f"llmft: {stop}; continue with --resume auto (exit status {EXIT_PREEMPTED})",
                    file=sys.stderr,
                )
            return EXIT_PREEMPTED
    if result.is_main:  # one report per run, not one per process
        print(result.report())
    return 0
