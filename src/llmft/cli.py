"""The ``llmft`` command line.

Subcommands take ``--config FILE.yaml`` plus dotted overrides of any config field
(``--train.lr 2e-4 --peft.lora.r 8``). User errors print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from collections.abc import Sequence

from pydantic import BaseModel

from llmft import __version__
from llmft.config import Config, load_config, parse_overrides
from llmft.errors import EXIT_USER_ERROR, UserError


def _type_name(annotation) -> str:
    text = str(annotation).replace("typing.", "")
    if isinstance(annotation, type):
        text = annotation.__name__
    return text.replace("NoneType", "null").replace("Literal", "one of ")


def config_reference(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """One line per config field: ``--section.key  TYPE  (default ...)  description``."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(config_reference(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        args = typing.get_args(annotation)
        kind = _type_name(annotation) if not args else " | ".join(_type_name(a) for a in args)
        lines.append(f"  --{prefix}{name} {kind} (default {default!r}) {field.description or ''}".rstrip())
    return lines


def _config_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmft",
        description="Fine-tune LLaMA-family language models (Hugging Face format).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"llmft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    finetune = _config_parser(sub, "finetune", "Fine-tune a model (default: LoRA on tiny-llama + quotes).")
    finetune.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    finetune.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in output_dir (it is deleted)"
    )

    validate = sub.add_parser(
        "validate", help="Check a config file (and overrides) without running anything.", allow_abbrev=False
    )
    validate.add_argument("config", metavar="CONFIG", help="YAML config file")
    return parser


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s llmft %(levelname)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("llmft")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(os.environ.get("LLMFT_LOG_LEVEL", "INFO").upper())
    root.propagate = False


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = parse_overrides(extra)
    if args.command == "validate":
        config = load_config(args.config, overrides)
        print(f"{args.config}: OK (output_dir {config.resolved_output_dir()})")
        return 0
    config = load_config(args.config, overrides)
    if args.print_config:
        print(config.model_copy(update={"output_dir": str(config.resolved_output_dir())}).to_yaml(), end="")
        return 0
    from llmft.finetune import finetune  # heavy imports (torch, transformers) only when training

    _setup_logging()
    result = finetune(config, overwrite=args.overwrite)
    print(result.report())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmft`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return _run(args, extra)
    except UserError as exc:
        message = " ".join(str(exc).split())
        print(f"llmft: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("llmft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
