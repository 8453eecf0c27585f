"""``llmft data preview --config FILE``: the data of a config as the model will see it, without training."""

from __future__ import annotations

import argparse
import sys

from llmft.commands.common import config_parser, setup_logging
from llmft.config import load_config, parse_overrides
from llmft.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = config_parser(
        sub, "data", "Inspect the data of a config without training: llmft data preview --config FILE."
    )
    parser.add_argument(
        "action", choices=["preview"], help="preview: rendered examples, trained tokens marked"
    )
    parser.add_argument(
        "--num-examples", type=int, default=3, metavar="N", help="examples to print (default 3)"
    )
    parser.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="mark trained tokens in colour (auto: on a terminal) or between ⟦ ⟧",
    )
    return parser


def run(args: argparse.Namespace, extra: list[str]) -> int:
    config = load_config(args.config, parse_overrides(extra))
    setup_logging()
    from llmft.data.preview import preview  # loads the tokenizer and the data, not the model

    if args.num_examples < 0:
        raise UserError(f"--num-examples {args.num_examples}: give 0 or more")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(preview(config, args.num_examples, color))
    return 0
