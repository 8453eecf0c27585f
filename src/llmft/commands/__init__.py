"""The subcommands of ``llmft``, one module each, above the packages they drive.

Each command module has ``add_parser(sub)``, which adds its subparser, and ``run(args, extra)``, which
runs it and returns the exit status (``extra``: the arguments argparse did not know). :data:`COMMANDS`
is the table :mod:`llmft.cli` builds its parser from and dispatches through, in ``--help`` order.
Building the parser imports no torch: each ``run`` imports what it needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from llmft.commands import data, estimate, evaluate, export, finetune, generate, predict, slurm, validate


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        add_parser: adds the command's subparser and returns it.
        run: runs the command on the parsed flags and the arguments argparse did not know.
        config_overrides: those other arguments are dotted config overrides, so a near miss of one of
            the command's own flags (``--overwrit``) is reported as that typo first.
    """

    add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace, list[str]], int]
    config_overrides: bool = False


COMMANDS: dict[str, Command] = {
    "finetune": Command(finetune.add_parser, finetune.run, config_overrides=True),
    "validate": Command(validate.add_parser, validate.run, config_overrides=True),
    "data": Command(data.add_parser, data.run, config_overrides=True),
    "predict": Command(predict.add_parser, predict.run),
    "estimate": Command(estimate.add_parser, estimate.run),
    "export": Command(export.add_parser, export.run),
    "slurm": Command(slurm.add_parser, slurm.run, config_overrides=True),
    "generate": Command(generate.add_parser, generate.run),  # flags of its own
    "eval": Command(evaluate.add_parser, evaluate.run),  # flags of its own; it checks its overrides itself
}
