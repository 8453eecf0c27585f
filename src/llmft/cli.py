"""The ``llmft`` command line.

Subcommands take ``--config FILE.yaml`` plus dotted overrides of any config field
(``--train.lr 2e-4 --peft.lora.r 8``). User errors print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import typing
from collections.abc import Sequence

from pydantic import BaseModel

from llmft import __version__
from llmft.config import Config, load_config, parse_overrides, schema_paths
from llmft.errors import EXIT_USER_ERROR, UserError


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


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as a UserError (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


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
    parser = _Parser(
        prog="llmft",
        description="Fine-tune LLaMA-family language models (Hugging Face format).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"llmft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    finetune = _config_parser(sub, "finetune", "Fine-tune a model (default: LoRA on tiny-llama + quotes).")
    finetune.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    finetune.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in output_dir (it is deleted)"
    )
    finetune.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue from a checkpoint: auto (the latest in output_dir; a fresh start if none) or a "
        "checkpoint or run folder",
    )
    validate = _config_parser(
        sub, "validate", "Check a config (llmft validate CONFIG [overrides], or --config) without running it."
    )
    data = _config_parser(
        sub, "data", "Inspect the data of a config without training: llmft data preview --config FILE."
    )
    data.add_argument("action", choices=["preview"], help="preview: rendered examples, trained tokens marked")
    data.add_argument(
        "--num-examples", type=int, default=3, metavar="N", help="examples to print (default 3)"
    )
    data.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="mark trained tokens in colour (auto: on a terminal) or between ⟦ ⟧",
    )
    predict = sub.add_parser(
        "predict",
        help="Label texts with a classifier run (task classification).",
        description="Label texts with a classifier run: llmft predict RUN_DIR --text '...' [--file texts.txt]",
    )
    predict.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of a run with task classification")
    predict.add_argument("--text", action="append", default=[], help="a text to label (repeatable)")
    predict.add_argument("--file", help="a file with one text per line")
    from llmft.memory.command import add_parser as add_estimate_parser  # no torch import

    estimate = add_estimate_parser(sub)
    from llmft.checkpoint.export import add_parser as add_export_parser  # no torch import

    export = add_export_parser(sub)
    from llmft.launch.slurm import add_parser as add_slurm_parser  # no torch import

    slurm = add_slurm_parser(sub)
    from llmft.evaluation.command import add_parsers as add_evaluation_parsers  # no torch import

    evaluation = add_evaluation_parsers(sub)  # generate, eval
    parser.commands = {
        **evaluation,
        "finetune": finetune,
        "validate": validate,
        "data": data,
        "predict": predict,
        "estimate": estimate,
        "export": export,
        "slurm": slurm,
    }
    return parser


def _check_flag_typos(command: argparse.ArgumentParser, tokens: list[str]) -> None:
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


def _setup_logging() -> None:
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


def _predict(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    if extra:
        raise UserError(f"predict: unexpected argument {extra[0]!r}; use --text TEXT or --file FILE")
    texts = list(args.text)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"predict --file: '{path}' not found")
        texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UserError("predict: give texts with --text TEXT (repeatable) or --file FILE (one per line)")
    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise UserError(f"predict: run folder '{folder}' not found")
    import torch

    from llmft.inference.predict import classify, load_classifier

    device = torch.device("cpu")
    model, tokenizer = load_classifier(folder, device)
    for text, (label, probability) in zip(texts, classify(model, tokenizer, texts, device)):
        print(f"{label}\t{probability:.3f}\t{text}")
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "predict":
        return _predict(args, extra)
    if args.command == "export":
        if extra:
            raise UserError(f"export: unknown argument '{extra[0]}' (see llmft export --help)")
        _setup_logging()
        from llmft.checkpoint.export import run as run_export

        return run_export(args)
    if args.command in ("generate", "eval"):  # flags of their own; eval reads the run's config
        _setup_logging()
        from llmft.evaluation import command

        return (
            command.run_generate(args, extra) if args.command == "generate" else command.run_eval(args, extra)
        )
    if args.command == "estimate":  # flags of its own, no config
        if extra:
            raise UserError(f"estimate: unknown flag '{extra[0]}' (see llmft estimate --help)")
        from llmft.memory.command import run as run_estimate

        return run_estimate(args)
    if args.command == "slurm":  # its own flags; the rest are the run's config overrides
        _check_flag_typos(parser.commands["slurm"], extra)
        from llmft.launch.slurm import run as run_slurm

        return run_slurm(args, extra)
    _check_flag_typos(parser.commands[args.command], extra)
    config_path = args.config
    if args.command == "validate" and config_path is None:
        # `llmft validate CONFIG [overrides]`: the file comes first, before any --key value pair.
        if not extra or extra[0].startswith("--"):
            raise UserError(
                "validate: name a config file first: llmft validate CONFIG [--section.key VALUE ...]"
            )
        config_path, extra = extra[0], extra[1:]
    config = load_config(config_path, parse_overrides(extra))
    if args.command == "validate":
        print(f"{config_path}: OK (output_dir {config.resolved_output_dir()})")
        return 0
    if args.command == "data":
        _setup_logging()
        from llmft.data.preview import preview  # loads the tokenizer and the data, not the model

        if args.num_examples < 0:
            raise UserError(f"--num-examples {args.num_examples}: give 0 or more")
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        print(preview(config, args.num_examples, color))
        return 0
    if args.print_config:
        print(config.model_copy(update={"output_dir": str(config.resolved_output_dir())}).to_yaml(), end="")
        return 0
    _setup_logging()
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmft`` console script; returns the exit status."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        return _run(parser, args, extra)
    except UserError as exc:
        message = " ".join(str(exc).split())
        print(f"llmft: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("llmft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
