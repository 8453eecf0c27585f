"""Prompts in the training format: from a rendered example, from a record, or from a line of text.

A rendered example (:class:`llmft.data.formats.Segment` list) splits into the prompt the model saw
before its answer and that answer (:func:`llmft.data.formats.split_example`). Records given to
``llmft generate --prompts FILE.jsonl`` go through the format's own ``render``, so a prompt is exactly
what training rendered; a record without its answer (no ``output``, ``target``, ``label``, or a
conversation that ends with a user turn) gets a placeholder answer that is dropped again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.data.formats import DataFormat, RowContext, split_example
from llmft.errors import UserError

_PLACEHOLDER = "…"


@dataclass
class PromptItem:
    """A prompt to complete; ``references`` are the acceptable answers where the input had them."""

    prompt: str
    references: list[str] | None = None


def clean_reference(text: str, tokenizer) -> str:
    """An answer as generation decodes it: the template's special tokens (``</s>``, end-of-turn marks)
    removed, surrounding whitespace trimmed."""
    for token in getattr(tokenizer, "all_special_tokens", []) or []:
        if token:
            text = text.replace(token, "")
    return text.strip()


def _with_answer(fmt: DataFormat, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The record with a placeholder answer where it has none; True when it had its own."""
    record = dict(record)
    name = fmt.name
    if name == "alpaca" and not record.get("output"):
        return record | {"output": _PLACEHOLDER}, False
    if name == "grammar":
        if "sentence" in record and not record.get("corrections"):
            return record | {"corrections": [_PLACEHOLDER]}, False
        if "sentence" not in record and not record.get("target"):
            return record | {"target": _PLACEHOLDER}, False
    if name == "classification" and record.get("label") in (None, ""):
        return record | {"label": _PLACEHOLDER}, False
    if name == "chat":
        messages = record.get("messages")
        if isinstance(messages, list) and (
            not messages or not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "assistant"
        ):
            return record | {"messages": [*messages, {"role": "assistant", "content": _PLACEHOLDER}]}, False
    return record, True


def record_prompt(fmt: DataFormat, record: Mapping[str, Any], where: RowContext) -> PromptItem:
    """The prompt of ``record`` as training renders it, and its references when it has an answer."""
    filled, has_answer = _with_answer(fmt, dict(record))
    examples = fmt.render(filled, where)
    parts = split_example(examples[0]) if examples else None
    if parts is None:
        raise UserError(
            f"{where}: data format {fmt.name} renders this record as plain text with no prompt to complete; "
            f"give prompts as lines of text instead"
        )
    prompt, answer = parts
    if not has_answer:
        return PromptItem(prompt)
    references = fmt.references(filled, where) or [answer]
    return PromptItem(prompt, [clean_reference(r, fmt.tokenizer) for r in references])


def read_prompts(path: Path, fmt: DataFormat | None) -> list[PromptItem]:
    """Prompts of a file: one per line as text, or JSON records (JSONL) rendered by ``fmt``.

    A line that starts with ``{`` is a record; any other non-empty line is a prompt text, put in the
    format's generation prompt (alpaca's template, the chat template) when ``fmt`` is given.
    """
    if not path.is_file():
        raise UserError(
            f"--prompts: file '{path}' not found; give a text file (one prompt per line) or JSONL"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(
            f"--prompts: '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    items = []
    for row, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if not text.startswith("{"):
            items.append(PromptItem(fmt.generation_prompt(text) if fmt is not None else text))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts: {path} row {row} is not valid JSON ({exc.msg})") from None
        if fmt is None:
            raise UserError(
                f"--prompts: {path} row {row} is a JSON record, but no data format renders it; "
                f"pass --format (alpaca, grammar, chat, ...) or use --run"
            )
        items.append(record_prompt(fmt, record, RowContext(str(path), row)))
    if not items:
        raise UserError(f"--prompts: '{path}' holds no prompt")
    return items
