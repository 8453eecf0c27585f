"""Instruction formats with a masked prompt: alpaca (alpaca-lora's templates) and grammar correction.

The prompt is an untrained segment and the response a trained one, so ``train_on_inputs: false``
(llmft's default) puts label -100 on every prompt token, exactly alpaca-lora's masking; ``true`` trains
on the whole text, alpaca-lora's own default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmft.data.formats import DataFormat, Example, RowContext, Segment, fill_template, register, text_field
from llmft.errors import UserError

# alpaca-lora's prompt templates (templates/*.json there), by name. The response is appended to the
# prompt, so it is not a template key.
_ALPACA_INTRO = "Below is an instruction that describes a task"
ALPACA_TEMPLATES: dict[str, dict[str, str]] = {
    "alpaca": {
        "description": "Template used by Alpaca-LoRA.",
        "prompt_input": f"{_ALPACA_INTRO}, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:\n",
        "prompt_no_input": f"{_ALPACA_INTRO}. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        "response_split": "### Response:",
    },
    "alpaca_legacy": {
        "description": "Legacy template, used by the original Alpaca repository (no newline after Response:).",
        "prompt_input": f"{_ALPACA_INTRO}, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:",
        "prompt_no_input": f"{_ALPACA_INTRO}. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}\n\n### Response:",
        "response_split": "### Response:",
    },
    "alpaca_short": {
        "description": "A shorter template.",
        "prompt_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "prompt_no_input": "### Instruction:\n{instruction}\n\n### Response:\n",
        "response_split": "### Response:",
    },
}
_TEMPLATE_KEYS = ("prompt_input", "prompt_no_input")


def load_alpaca_template(setting: str | None) -> dict[str, str]:
    """A template by name (alpaca, alpaca_legacy, alpaca_short) or from an alpaca-lora JSON file."""
    name = setting or "alpaca"
    if name in ALPACA_TEMPLATES:
        return ALPACA_TEMPLATES[name]
    path = Path(name).expanduser()
    if not path.suffix == ".json" or not path.is_file():
        raise UserError(
            f"data.prompt_template: '{name}' is neither a template name ({', '.join(ALPACA_TEMPLATES)}) "
            f"nor an existing alpaca-lora template .json file"
        )
    try:
        template = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"data.prompt_template: '{path}' is not valid JSON ({exc})") from None
    missing = [
        k for k in _TEMPLATE_KEYS if not isinstance(template, dict) or not isinstance(template.get(k), str)
    ]
    if missing:
        raise UserError(
            f"data.prompt_template: '{path}' has no text key {', '.join(repr(k) for k in missing)}; an "
            f"alpaca-lora template holds prompt_input (with {{instruction}} and {{input}}) and prompt_no_input"
        )
    return template


@register
class AlpacaFormat(DataFormat):
    """``instruction`` / ``input`` / ``output`` records in alpaca-lora's prompt templates."""

    name = "alpaca"
    description = (
        "instruction/input/output records in alpaca-lora's templates; prompt masked unless train_on_inputs"
    )
    columns = ("instruction", "output")  # `input` may be absent: every record then uses prompt_no_input
    sample_file = "alpaca_sample.jsonl"
    example_prompt = "Give three tips for staying healthy."

    def __init__(self, cfg, tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        self.template = load_alpaca_template(cfg.prompt_template)

    def prompt(self, instruction: str, input_text: str, where: str) -> str:
        # alpaca-lora's Prompter: the with-input template when the input is non-empty.
        key = "prompt_input" if input_text else "prompt_no_input"
        values = (
            {"instruction": instruction, "input": input_text} if input_text else {"instruction": instruction}
        )
        return fill_template(self.template[key], values, f"data.prompt_template {key} ({where})")

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        instruction = text_field(record, "instruction", where)
        input_text = text_field(record, "input", where, allow_empty=True)
        output = text_field(record, "output", where)
        prompt = self.prompt(instruction, input_text, str(where))
        return [[Segment(prompt, self.cfg.train_on_inputs), Segment(output, True)]]

    def generation_prompt(self, text: str) -> str:
        return self.prompt(text, "", "generation.prompt")


# llama-recipes' grammar_dataset prompt; the corrected sentence follows, trained.
GRAMMAR_TEMPLATE = "Correct this to standard English: {input}\n---\nCorrected: "


@register
class GrammarFormat(DataFormat):
    """Grammar correction: ``input`` -> ``target`` pairs, or JFLEG-style ``sentence`` + ``corrections``.

    A JFLEG record with several corrections becomes one training pair per distinct correction
    (``data.expand_corrections``; false keeps the first only); every correction is kept as a reference
    for evaluation. The split into train and validation happens per record, before this expansion, so a
    sentence never lands on both sides.
    """

    name = "grammar"
    description = "grammar correction: input/target pairs or JFLEG sentence/corrections; prompt masked"
    sample_file = "grammar_sample.jsonl"
    example_prompt = "She go to the market every days."

    def check_columns(self, column_names, source: str) -> None:
        if {"input", "target"} <= set(column_names) or {"sentence", "corrections"} <= set(column_names):
            return
        raise UserError(
            f"data.path: '{source}' needs columns input and target (pairs) or sentence and corrections "
            f"(JFLEG) for data.format grammar (its columns: {', '.join(column_names) or 'none'}); rename "
            f"columns with data.column_map"
        )

    def _prompt(self, sentence: str, where: str) -> str:
        return fill_template(self.cfg.prompt_template or GRAMMAR_TEMPLATE, {"input": sentence}, where)

    def _pair(self, record: Mapping[str, Any], where: RowContext) -> tuple[str, list[str]]:
        if record.get("corrections") is not None or "input" not in record:
            sentence = text_field(record, "sentence", where)
            corrections = record.get("corrections")
            if not isinstance(corrections, list) or not all(isinstance(c, str) for c in corrections):
                raise UserError(
                    f"{where}: field 'corrections' must be a list of texts, got "
                    f"{type(corrections).__name__} {corrections!r:.60}"
                )
            targets = list(dict.fromkeys(c.strip() for c in corrections if c.strip()))  # distinct, in order
            if not targets:
                raise UserError(f"{where}: field 'corrections' holds no non-empty correction")
            return sentence, targets
        return text_field(record, "input", where), [text_field(record, "target", where)]

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        sentence, targets = self._pair(record, where)
        prompt = self._prompt(sentence, f"data.prompt_template ({where})")
        chosen = targets if self.cfg.expand_corrections else targets[:1]
        return [[Segment(prompt, self.cfg.train_on_inputs), Segment(target, True)] for target in chosen]

    def references(self, record: Mapping[str, Any], where: RowContext) -> list[str] | None:
        return self._pair(record, where)[1]

    def generation_prompt(self, text: str) -> str:
        return self._prompt(text, "data.prompt_template")
