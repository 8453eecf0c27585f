"""The ``llmft`` command line.

Subcommands take ``--config FILE.yaml`` plus dotted overrides of any config field
(``--train.lr 2e-4 --peft.lora.r 8``). User errors print as one line on stderr with exit status 2.
The subcommands are the table :data:`llmft.commands.COMMANDS`; this module parses and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from llmft import __version__
from llmft.commands import COMMANDS
from llmft.commands.common import Parser, check_flag_typos
from llmft.errors import EXIT_USER_ERROR, UserError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; ``parser.commands`` maps each name to its subparser."""
    parser = Parser(
        prog="llmft",
        description="Fine-tune LLaMA-family language models (Hugging Face format).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"llmft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    parser.commands = {name: command.add_parser(sub) for name, command in COMMANDS.items()}
    return parser


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    """Run the parsed command; returns its exit status."""
    command = COMMANDS[args.command]
    if command.config_overrides:
        check_flag_typos(parser.commands[args.command], extra)
    return command.run(args, extra)


def main(
    argv: Sequence[str] | None = None,
    *,
    translate: Callable[[list[str]], list[str]] | None = None,
    explain: Callable[[str], str] | None = None,
) -> int:
    """Entry point of the ``llmft`` console script and of the shims; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        translate: turns another tool's command line into llmft's (the seed's shims); its errors are
            reported like llmft's own.
        explain: rewrites an error message before it is printed (e.g. to name the flags the user typed).
    """
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        if translate is not None:
            args = translate(args)
        parser = build_parser()
        known, extra = parser.parse_known_args(args)
        return run(parser, known, extra)
    except UserError as exc:
        message = " ".join(str(exc).split())
        print(f"llmft: error: {explain(message) if explain else message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("llmft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
