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
import sys
from collections.abc import Sequence

from llmft.errors import EXIT_USER_ERROR, UserError

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
    "resume_from_checkpoint": (None, "str", None),
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


def to_llmft_args(argv: Sequence[str]) -> list[str]:
    """The ``llmft finetune`` arguments for an alpaca-lora command line."""
    given, rest = parse_flags(argv)
    if given.get("resume_from_checkpoint"):
        raise UserError(
            "--resume_from_checkpoint: resuming arrives with llmft's step checkpoints; until then start a new "
            "run (an adapter folder cannot be resumed as a training state)"
        )
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
    args = ["finetune"]
    for key, field in FIXED.items():
        args += [f"--{key}", field]
    for key, value in values.items():
        field = FLAGS[key][0]
        if field is not None:
            args += [f"--{field}", value]
    return args + rest


def usage() -> str:
    lines = [
        "usage: python fine_tune.py [--alpaca_lora_flag VALUE ...] [--llmft.dotted.flag VALUE ...]",
        "",
        "alpaca-lora flags (default) -> llmft field:",
    ]
    for name, (field, kind, default) in FLAGS.items():
        target = field or "accepted, no effect (see docs/data.md)"
        lines.append(f"  --{name:<24} {kind:<5} ({default!r}) -> {target}")
    lines.append("fixed as in alpaca-lora: " + ", ".join(f"{k}={v}" for k, v in FIXED.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from llmft.cli import main as llmft_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        args = to_llmft_args(argv)
    except UserError as exc:
        print(f"llmft: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    return llmft_main(args)
