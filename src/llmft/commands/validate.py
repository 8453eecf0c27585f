"""``llmft validate CONFIG [overrides]``: check a config without running it."""

from __future__ import annotations

import argparse

from llmft.commands.common import config_parser
from llmft.config import load_config, parse_overrides
from llmft.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return config_parser(
        sub, "validate", "Check a config (llmft validate CONFIG [overrides], or --config) without running it."
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    config_path = args.config
    if config_path is None:
        # `llmft validate CONFIG [overrides]`: the file comes first, before any --key value pair.
        if not extra or extra[0].startswith("--"):
            raise UserError(
                "validate: name a config file first: llmft validate CONFIG [--section.key VALUE ...]"
            )
        config_path, extra = extra[0], extra[1:]
    config = load_config(config_path, parse_overrides(extra))
    print(f"{config_path}: OK (output_dir {config.resolved_output_dir()})")
    return 0
