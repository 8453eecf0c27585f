"""alpaca-lora's ``finetune.py`` command line on llmft's one trainer (``python fine_tune.py ...``).

The flags keep alpaca-lora's names, syntax (python-fire: ``--flag value``, ``--flag=value``, a bare
``--flag`` for true, ``--noflag`` for false, lists as ``'[q_proj,v_proj]'``) and meaning, and its
defaults where a flag is absent: they are translated into ``llmft finetune`` overrides, so the run is
an ordinary llmft run (same checks, same artifacts). Any llmft dotted flag may follow
(``--train.max_steps 10``). See docs/data.md for the table.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
import re
import sys
from collections.abc import Sequence

from llmft.errors import UserError

log = logging.getLogger("llmft")

# alpaca-lora flag -> (llmft field or None, kind, alpaca-lora's default or None)
FLAGS: dict[str, tuple[str | None, str, object]] = {
    "base_model": ("model.name", "str", None),  # required by alpaca-lora; llmft's tiny-llama if absent
    "data_path": ("data.path", "str", None),  # alpaca-lora: yahma/alpaca-cleaned; here the bundled sample
    "output_dir": ("output_dir", "str", "./lora-alpaca"),
    "batch_size": ("train.batch_size", "int", 128),
    "micro_batch_size": ("train.micro_batch_size", "int", 4),
    "num_epochs": ("train.epochs", "int", 3),
    "learning_rate": ("train.lr", "float", 3e-4),
    "cutoff_len": ("data.max_seq_len", "int", 256),
    "val_set_size": ("data.val_set_size", "int", 2000),
    "lora_r": ("peft.lora.r", "int", 8),
    "lora_alpha": ("peft.lora.alpha", "float", 16),
    "lora_dropout": ("peft.lora.dropout", "float", 0.05),
    "lora_target_modules": ("peft.lora.target_modules", "list", ["q_proj", "v_proj"]),
    "train_on_inputs": ("data.train_on_inputs", "bool", True),
    "add_eos_token": (None, "bool", False),
    "group_by_length": ("data.group_by_length", "bool", False),
    "prompt_template_name": ("data.prompt_template", "str", "alpaca"),
    "resume_from_checkpoint": (None, "str", None),  # -> --resume (an llmft checkpoint or run folder)
    "wandb_project": (None, "str", ""),
    "wandb_run_name": (None, "str", ""),
    "wandb_watch": (None, "str", ""),
    "wandb_log_model": (None, "str", ""),
}
# What alpaca-lora's HF TrainingArguments fix: linear decay after 100 warmup steps (clamped to the
# run's length, with a warning), evaluation every 200 steps.
FIXED = {
    "peft.method": "lora",
    "data.format": "alpaca",
    "train.lr_scheduler": "linear",
    "train.warmup_steps": "100",
    "train.eval_every": "200",
}
# Flags of `llmft finetune` itself that pass through.
PASSTHROUGH = {"--overwrite", "--print-config", "--config"}


def _value_text(kind: str, raw: str, flag: str) -> str:
    """alpaca-lora's value (python-fire parses it as a Python literal) as llmft override text."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if kind == "bool":
        if isinstance(value, bool):
            return "true" if value else "false"
        raise UserError(f"--{flag}: expected True or False, got {raw!r}")
    if kind == "list":
        items = value if isinstance(value, (list, tuple)) else [p for p in str(value).strip("[]").split(",")]
        return ",".join(str(item).strip().strip("'\"") for item in items if str(item).strip())
    if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UserError(f"--{flag}: expected a number, got {raw!r}")
    if kind == "int" and isinstance(value, float):
        raise UserError(f"--{flag}: expected an integer, got {raw!r}")
    return str(value) if kind != "str" else raw


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(alpaca-lora flag -> llmft value text, remaining llmft arguments)."""
    given: dict[str, str] = {}
    rest: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise UserError(f"unexpected argument {token!r}; flags look like --base_model PATH")
        name, eq, inline = token[2:].partition("=")
        key = name.replace("-", "_")
        if "." in name or token.split("=")[0] in PASSTHROUGH:
            rest.append(token)
            takes_value = not eq and token not in ("--overwrite", "--print-config")
            if takes_value and i + 1 < len(tokens):
                rest.append(tokens[i + 1])
                i += 1
            i += 1
            continue
        negated = key.startswith("no") and key[2:] in FLAGS and FLAGS[key[2:]][1] == "bool"
        if negated:
            given[key[2:]] = "false"
            i += 1
            continue
        if key not in FLAGS:
            close = difflib.get_close_matches(key, list(FLAGS), n=1)
            hint = f" - did you mean '--{close[0]}'?" if close else ""
            raise UserError(
                f"unknown flag '--{name}'{hint} (alpaca-lora flags: see python fine_tune.py --help)"
            )
        kind = FLAGS[key][1]
        if eq:
            raw = inline
        elif kind == "bool" and (i + 1 >= len(tokens) or tokens[i + 1].startswith("--")):
            raw = "True"  # a bare boolean flag, as in python-fire
        elif i + 1 < len(tokens):
            raw = tokens[i + 1]
            i += 1
        else:
            raise UserError(f"--{name}: give a value")
        given[key] = _value_text(kind, raw, name)
        i += 1
    return given, rest


def effective_batch_size(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """The global batch alpaca-lora trains on: it accumulates ``batch_size // micro_batch_size``
    micro-batches, divided (rounding down) by the number of processes, so the batch it really uses is
    ``micro_batch_size x accumulation x world size``, which may be less than ``batch_size``."""
    for flag, value in (("--batch_size", batch_size), ("--micro_batch_size", micro_batch_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: give a whole number of examples, at least 1")
    accumulation = batch_size // micro_batch_size // world_size
    if accumulation < 1:
        raise UserError(
            f"--batch_size {batch_size} is smaller than --micro_batch_size {micro_batch_size} x {world_size} "
            f"process(es); alpaca-lora would accumulate 0 micro-batches - raise --batch_size or lower "
            f"--micro_batch_size"
        )
    return micro_batch_size * accumulation * world_size


def _resume_target(value: str) -> str:
    """The ``--resume`` value for alpaca-lora's ``--resume_from_checkpoint``: an llmft checkpoint or run
    folder (``--resume`` checks it further). alpaca-lora also took a folder of adapter weights alone to
    start from; llmft resumes only from a checkpoint with its optimizer state and data position."""
    from pathlib import Path

    path = Path(value).expanduser()
    adapter_only = any((path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin"))
    if (
        path.is_dir()
        and adapter_only
        and not (path / "checkpoints").is_dir()
        and not path.name.startswith("step-")
    ):
        raise UserError(
            f"--resume_from_checkpoint: '{path}' holds adapter weights only, not a training state llmft can "
            f"resume; pass an llmft checkpoint folder (<output_dir>/checkpoints/step-N) or a run folder"
        )
    return str(path)


def translate(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The ``llmft finetune`` arguments for an alpaca-lora command line, and for each llmft field that
    an alpaca-lora flag set (given or defaulted) that flag's name, so errors can name what was typed."""
    given, rest = parse_flags(argv)
    for flag in ("wandb_project", "wandb_run_name", "wandb_watch", "wandb_log_model"):
        if given.get(flag):
            log.warning(
                "--%s: Weights & Biases logging is not wired yet; metrics go to metrics.jsonl and TensorBoard",
                flag,
            )
    values = {
        k: default if kind == "str" else _value_text(kind, repr(default), k)
        for k, (field, kind, default) in FLAGS.items()
        if field and default is not None
    }
    if "data_path" not in given:
        # alpaca-lora's 2000 suits its default data set (51k records), not the bundled 240-record sample.
        values.pop("val_set_size")
    values.update(given)
    # alpaca-lora's meaning of --batch_size: batch_size // micro_batch_size accumulated micro-batches
    # (per process: divided by WORLD_SIZE under torchrun), rounded down.
    batch, micro = int(values["batch_size"]), int(values["micro_batch_size"])
    effective = effective_batch_size(batch, micro, int(os.environ.get("WORLD_SIZE", "1")))
    if effective != batch:
        log.warning(
            "--batch_size %d with --micro_batch_size %d: as in alpaca-lora, %d // %d = %d micro-batches are "
            "accumulated (over all processes), so each step trains on %d examples",
            batch,
            micro,
            batch,
            micro,
            batch // micro,
            effective,
        )
        values["batch_size"] = str(effective)
    args = ["finetune"]
    for key, field in FIXED.items():
        args += [f"--{key}", field]
    flags_of_fields: dict[str, str] = {}
    typed = {token.split("=")[0][2:] for token in rest if token.startswith("--")}
    for key, value in values.items():
        field = FLAGS[key][0]
        # A field the user also set with llmft's own flag is left to that flag (for a list field a
        # repeated flag would add up instead of replacing this default).
        if field is not None and field not in typed:
            args += [f"--{field}", value]
            flags_of_fields[field] = key
    if given.get("resume_from_checkpoint"):
        args += ["--resume", _resume_target(given["resume_from_checkpoint"])]
        flags_of_fields["resume"] = "resume_from_checkpoint"
    return args + rest, flags_of_fields


def to_llmft_args(argv: Sequence[str]) -> list[str]:
    """The ``llmft finetune`` arguments for an alpaca-lora command line."""
    return translate(argv)[0]


def name_flags(message: str, flags_of_fields: dict[str, str], given: Sequence[str] = ()) -> str:
    """``message`` (an llmft error) with the llmft fields that alpaca-lora flags set named as those flags:
    ``train.batch_size`` and ``--train.batch_size 8`` become ``--batch_size`` and ``--batch_size 8``."""
    for field, flag in sorted(flags_of_fields.items(), key=lambda item: -len(item[0])):
        # A dotted field is named bare or as a flag; a plain word (resume) only as a flag.
        dashes = "(--)?" if "." in field else "--"
        message = re.sub(rf"(?<![\w.-]){dashes}{re.escape(field)}(?![\w.])", f"--{flag}", message)
    if "--val_set_size" in message and not any(a.split("=")[0] == "--val_set_size" for a in given):
        message += " (--val_set_size defaults to 2000 with --data_path, as in alpaca-lora)"
    return message


def usage() -> str:
    lines = [
        "usage: python fine_tune.py [--alpaca_lora_flag VALUE ...] [--llmft.dotted.flag VALUE ...]",
        "",
        "alpaca-lora flags (default) -> llmft field:",
    ]
    for name, (field, kind, default) in FLAGS.items():
        target = field or (
            "--resume" if name == "resume_from_checkpoint" else "accepted, no effect (see docs/data.md)"
        )
        lines.append(f"  --{name:<24} {kind:<5} ({default!r}) -> {target}")
    lines.append("fixed as in alpaca-lora: " + ", ".join(f"{k}={v}" for k, v in FIXED.items()))
    lines.append(
        "--batch_size as in alpaca-lora: batch_size // micro_batch_size micro-batches are accumulated, so the "
        "global batch is micro_batch_size x that"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fine_tune.py``: translate, then run ``llmft finetune``, with its errors naming the
    alpaca-lora flags the user typed."""
    from llmft import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    flags_of_fields: dict[str, str] = {}

    def to_llmft(tokens: list[str]) -> list[str]:
        args, named = translate(tokens)
        flags_of_fields.update(named)
        return args

    return cli.main(
        argv, translate=to_llmft, explain=lambda message: name_flags(message, flags_of_fields, argv)
    )
