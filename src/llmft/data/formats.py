"""Data formats: how one record becomes text segments, each marked trained or not.

A format is registered by name (``data.format: quotes``). It turns a record (a dict of columns) into
a list of :class:`Segment`; tokenization and the label mask are shared by every format
(:mod:`llmft.data.tokenize`), so masking is written once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from llmft.errors import UserError


class Segment(NamedTuple):
    """A piece of a rendered record; ``trained`` pieces are the loss targets."""

    text: str
    trained: bool


@dataclass(frozen=True)
class RowContext:
    """Where a record came from, for error messages ("data/x.jsonl row 12")."""

    source: str
    row: int  # 1-based

    def __str__(self) -> str:
        return f"{self.source} row {self.row}"


@dataclass(frozen=True)
class DataFormat:
    """A registered data format."""

    name: str
    columns: tuple[str, ...]
    render: Callable[[Mapping[str, Any], RowContext], list[Segment]]
    sample_file: str | None
    example_prompt: str
    description: str


_REGISTRY: dict[str, DataFormat] = {}


def register(fmt: DataFormat) -> DataFormat:
    _REGISTRY[fmt.name] = fmt
    return fmt


def known_formats() -> list[str]:
    return sorted(_REGISTRY)


def format_problem(name: str) -> str | None:
    """A one-line problem for an unknown format name, or None if the name is registered."""
    if name in _REGISTRY:
        return None
    close = difflib.get_close_matches(name, known_formats(), n=1)
    hint = f" - did you mean '{close[0]}'?" if close else ""
    return f"data.format: unknown format {name!r}{hint} (known: {', '.join(known_formats())})"


def get_format(name: str) -> DataFormat:
    problem = format_problem(name)
    if problem:
        raise UserError(problem)
    return _REGISTRY[name]


def text_field(record: Mapping[str, Any], field: str, where: RowContext) -> str:
    """The record's text in ``field``, or a one-line error naming the file, row and field."""
    value = record.get(field)
    if value is None:
        raise UserError(f"{where}: field '{field}' is missing or null; every record needs it")
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{field}' must be text, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise UserError(f"{where}: field '{field}' is empty; remove the record or fill it in")
    return value.strip()


def _render_quote(record: Mapping[str, Any], where: RowContext) -> list[Segment]:
    # english_quotes records become one line of plain causal-LM text, every token trained:
    #   “Be yourself; everyone else is already taken.” ― Oscar Wilde
    quote = text_field(record, "quote", where)
    author = text_field(record, "author", where)
    return [Segment(f"{quote} ― {author}", trained=True)]


QUOTES = register(
    DataFormat(
        name="quotes",
        columns=("quote", "author"),
        render=_render_quote,
        sample_file="english_quotes.jsonl",
        example_prompt="“The",
        description="english_quotes records (quote, author, tags) as plain text: “quote” ― author",
    )
)
