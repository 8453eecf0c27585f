"""What the commands share: argparse that reports a usage mistake as a UserError, the config
reference of ``--help``, the typo check of a command's own flags, and the console log.

Only the standard library and pydantic are imported here: building the parser must stay quick.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import typing

from pydantic import BaseModel

from llmft.config import Config, schema_paths
from llmft.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as a UserError (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def _type_name(annotation) -> str:
    """A readable type for --help: int, float | null, one of ['a', 'b']."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    args = typing.get_args(annotation)
    if (
        args
        and typing.get_origin(annotation) is not typing.Literal
        and typing.get_origin(annotation) is not list
    ):
        return " | ".join(_type_name(a) for a in args)
    if isinstance(annotation, type) and not args:
        return "null" if annotation is type(None) else annotation.__name__
    return str(annotation).replace("typing.", "").replace("Literal", "one of ")


def config_reference(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """One line per config field: ``--section.key  TYPE  (default ...)  description``."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(config_reference(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        kind = _type_name(annotation)
        lines.append(f"  --{prefix}{name} {kind} (default {default!r}) {field.description or ''}".rstrip())
    return lines


def config_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command that reads a config: ``--config FILE`` plus dotted overrides, listed in its --help."""
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields (override any with --section.key VALUE):\n" + "\n".join(config_reference()),
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config; dotted flags override its fields")
    return parser


def check_flag_typos(command: argparse.ArgumentParser, tokens: list[str]) -> None:
    """`--overwrit` is a typo of the command's own flag, not an unknown config key."""
    flags = [o for action in command._actions for o in action.option_strings if o.startswith("--")]
    fields = set(schema_paths())
    for token in tokens:
        key = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if key and "." not in key and key not in fields:
            close = difflib.get_close_matches(f"--{key}", flags, n=1, cutoff=0.75)
            if close:
                raise UserError(f"unknown flag '--{key}' - did you mean '{close[0]}'?")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup_logging() -> None:
    """Console log on stderr at $LLMFT_LOG_LEVEL (default INFO); the run's train.log keeps INFO."""
    level = os.environ.get("LLMFT_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise UserError(f"LLMFT_LOG_LEVEL '{level}' is not a level; use one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s llmft %(levelname)s: %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    logger = logging.getLogger("llmft")
    for old in [
        h for h in logger.handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr
    ]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(min(logging.INFO, logging.getLevelName(level)))
    logger.propagate = False


# -------------------------------------------------------------------------------------------------
# generate and eval: a finished run on a device


def device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                        help="default: the run's distributed.device (auto: CUDA when present)")  # fmt: skip
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                        help="autocast dtype; default: the run's train.precision (auto)")  # fmt: skip


def positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: give 1 or more")


def runtime(cfg, args: argparse.Namespace):
    """(device, compute dtype) from the flags, else from the run's config."""
    from llmft.distributed.env import resolve_device
    from llmft.precision import resolve_precision

    device = resolve_device(args.device or cfg.distributed.device)
    return device, resolve_precision(args.precision or cfg.train.precision, device)
