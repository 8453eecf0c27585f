"""Data formats: how one record becomes one or more examples of text segments, each trained or not.

A format is registered by name (``data.format: alpaca``) or named as user code
(``data.format: my_module:build_fn``). It turns a record (a dict of columns) into examples, each a list
of :class:`Segment`; tokenization and the label mask are shared by every format
(:mod:`llmft.data.tokenize`), so masking is written once.

Built-in formats live here (quotes, text, classification, plug-ins), in :mod:`llmft.data.instruct`
(alpaca, grammar) and in :mod:`llmft.data.chat` (chat); the registry imports them on first use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from llmft.errors import UserError
from llmft.format_names import format_problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmft.config import DataSection


class Segment(NamedTuple):
    """A piece of a rendered record; ``trained`` pieces are the loss targets."""

    text: str
    trained: bool


Example = list[Segment]


def split_example(segments: Sequence[Segment]) -> tuple[str, str] | None:
    """(prompt, answer) of a rendered example; None when nothing precedes the answer (plain text).

    The prompt is the text before the last trained segment, the answer that segment: what the model saw
    before its answer in training, so generation and validation answers start from the same text.
    """
    trained = [i for i, segment in enumerate(segments) if segment.trained]
    if not trained:
        return None
    last = trained[-1]
    prompt = "".join(segment.text for segment in segments[:last])
    return (prompt, segments[last].text) if prompt else None


@dataclass(frozen=True)
class RowContext:
    """Where a record came from, for error messages ("data/x.jsonl row 12")."""

    source: str
    row: int  # 1-based

    def __str__(self) -> str:
        return f"{self.source} row {self.row}"


class DataFormat:
    """A data format, bound to the run's ``data`` section and tokenizer.

    Subclasses set the class attributes and implement :meth:`render`; the rest has defaults.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    columns: ClassVar[tuple[str, ...]] = ()  # required columns, checked once per file
    sample_file: ClassVar[str | None] = None  # bundled sample under llmft/data/samples
    example_prompt: ClassVar[str] = ""  # the end-of-run sample's prompt, before generation_prompt()
    adds_eos: ClassVar[bool] = True  # False where the rendered text ends its own turns (chat templates)

    def __init__(self, cfg: DataSection, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer

    def check_columns(self, column_names: Sequence[str], source: str) -> None:
        """Raise a one-line error when a required column is missing from ``source``."""
        missing = [c for c in self.columns if c not in column_names]
        if missing:
            raise UserError(
                f"data.path: '{source}' has no column {', '.join(repr(c) for c in missing)} needed by "
                f"data.format {self.name} (its columns: {', '.join(column_names) or 'none'}); "
                f"rename columns with data.column_map, e.g. --data.column_map '{{old: {missing[0]}}}'"
            )

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        """The examples of one record (usually one; a record with several references gives several)."""
        raise NotImplementedError

    def references(self, record: Mapping[str, Any], where: RowContext) -> list[str] | None:
        """All acceptable outputs of a record, kept for evaluation (None: the trained text is the one)."""
        return None

    def label_of(self, record: Mapping[str, Any], where: RowContext) -> str | None:
        """The class of a record, for formats that have classes (classification)."""
        return None

    def generation_prompt(self, text: str) -> str:
        """``text`` (an instruction, a question, a sentence) in the prompt format the model trained on."""
        return text


_REGISTRY: dict[str, type[DataFormat]] = {}
_BUILTIN_MODULES = ("llmft.data.instruct", "llmft.data.chat")


def register(cls: type[DataFormat]) -> type[DataFormat]:
    """Class decorator: make a format available as ``data.format: <cls.name>``."""
    _REGISTRY[cls.name] = cls
    return cls


def _registry() -> dict[str, type[DataFormat]]:
    for module in _BUILTIN_MODULES:  # they register themselves on import
        importlib.import_module(module)
    return _REGISTRY


def known_formats() -> list[str]:
    return sorted(_registry())


def format_class(name: str) -> type[DataFormat]:
    """The registered class of ``name`` (a plug-in resolves to :class:`PluginFormat`)."""
    problem = format_problem(name)
    if problem:
        raise UserError(problem)
    return _registry().get(name, PluginFormat)


def get_format(cfg: DataSection, tokenizer: PreTrainedTokenizerBase | None = None) -> DataFormat:
    """The format named by ``cfg.format``, bound to ``cfg`` and ``tokenizer``."""
    return format_class(cfg.format)(cfg, tokenizer)


# ---------------------------------------------------------------------------------------------------
# Field readers: every format reads its fields through these, so a bad row always names file, row, field.


def text_field(record: Mapping[str, Any], field: str, where: RowContext, allow_empty: bool = False) -> str:
    """The record's text in ``field``, or a one-line error naming the file, row and field."""
    value = record.get(field)
    if value is None:
        if allow_empty:
            return ""
        raise UserError(f"{where}: field '{field}' is missing or null; every record needs it")
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{field}' must be text, got {type(value).__name__} {value!r:.60}")
    if not value.strip() and not allow_empty:
        raise UserError(f"{where}: field '{field}' is empty; remove the record or fill it in")
    return value.strip()


def fill_template(template: str, values: Mapping[str, Any], where: str) -> str:
    """``template.format(**values)`` with a one-line error for a key the values do not have."""
    try:
        return template.format(**values)
    except KeyError as exc:
        key = exc.args[0]
        raise UserError(
            f"{where}: template key {{{key}}} does not exist; the keys here are "
            f"{', '.join('{' + k + '}' for k in values)}"
        ) from None
    except (IndexError, ValueError) as exc:
        raise UserError(
            f"{where}: the template is not a valid format string ({exc}); write keys as {{name}}"
        ) from None


# ---------------------------------------------------------------------------------------------------
# Plain-text formats.


@register
class QuotesFormat(DataFormat):
    name = "quotes"
    description = "english_quotes records (quote, author, tags) as plain text: “quote” ― author"
    columns = ("quote", "author")
    sample_file = "english_quotes.jsonl"
    example_prompt = "“The"

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        # One line of plain causal-LM text, every token trained:
        #   “Be yourself; everyone else is already taken.” ― Oscar Wilde
        quote = text_field(record, "quote", where)
        author = text_field(record, "author", where)
        return [[Segment(f"{quote} ― {author}", trained=True)]]


@register
class TextFormat(DataFormat):
    name = "text"
    description = "any text column (data.text_field, default 'text'), every token trained"
    example_prompt = "The"

    @property
    def columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.cfg.text_field,)

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        return [[Segment(text_field(record, self.cfg.text_field, where), trained=True)]]


# The classification prompt when data.prompt_template is empty; the label follows, trained.
CLASSIFICATION_TEMPLATE = "Text: {text}\nLabel:"


@register
class ClassificationFormat(DataFormat):
    """``text`` and ``label`` records.

    As a causal-LM task the label's name is the trained completion of a prompt holding the text (the
    task-head issue adds a classifier head on the pooled text instead). Labels may be names or integers.
    """

    name = "classification"
    description = "text, label records; the label is the trained completion of 'Text: ...\\nLabel:'"
    columns = ("text", "label")
    sample_file = "classification_sample.jsonl"
    example_prompt = "The battery died after two days and support never answered."

    def label_of(self, record: Mapping[str, Any], where: RowContext) -> str:
        label = record.get("label")
        if label is None:
            raise UserError(f"{where}: field 'label' is missing or null; every record needs a label")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise UserError(
                f"{where}: field 'label' must be a class name or an integer, got {type(label).__name__} "
                f"{label!r:.60}"
            )
        if isinstance(label, str) and not label.strip():
            raise UserError(f"{where}: field 'label' is empty; every record needs a label")
        return str(label).strip()

    def _prompt(self, text: str, where: str) -> str:
        return fill_template(self.cfg.prompt_template or CLASSIFICATION_TEMPLATE, {"text": text}, where)

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        text = text_field(record, "text", where)
        prompt = self._prompt(text, f"data.prompt_template ({where})")
        return [[Segment(prompt, False), Segment(" " + self.label_of(record, where), True)]]

    def generation_prompt(self, text: str) -> str:
        return self._prompt(text, "data.prompt_template")


# ---------------------------------------------------------------------------------------------------
# User code: data.format: my_module:build_fn


def _import_plugin(spec: str) -> Callable[[Mapping[str, Any]], Any]:
    module_name, attr = spec.split(":", 1)
    # Like `python -m`, the working folder is importable, so a module next to the config just works.
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"data.format: cannot import module '{module_name}' of '{spec}' ({exc}); put {module_name}.py in "
            f"the working folder or on PYTHONPATH"
        ) from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise UserError(f"data.format: '{module_name}' has no function '{attr}' (from '{spec}')")
    return function


class PluginFormat(DataFormat):
    """A user function ``build_fn(record) -> rendered`` where rendered is one of:

    - a string: plain text, every token trained;
    - ``{"prompt": str, "completion": str}``: the prompt is masked, the completion trained;
    - a list of ``(text, trained)`` pairs: segments, in order;
    - a list of any of these: several examples from one record.
    """

    name = "plugin"
    description = "your own function: data.format: my_module:build_fn"

    def __init__(self, cfg: DataSection, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__(cfg, tokenizer)
        self.spec = cfg.format
        self.function = _import_plugin(cfg.format)

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        try:
            rendered = self.function(dict(record))
        except UserError:
            raise
        except Exception as exc:  # user code: report the row it failed on
            raise UserError(f"{where}: data.format {self.spec} raised {type(exc).__name__}: {exc}") from None
        many = isinstance(rendered, list) and rendered and not _is_pair(rendered[0])
        examples = [self._example(r, where) for r in (rendered if many else [rendered])]
        if not examples:
            raise UserError(f"{where}: data.format {self.spec} returned no example")
        return examples

    def _example(self, rendered: Any, where: RowContext) -> Example:
        if isinstance(rendered, str) and rendered.strip():
            return [Segment(rendered, True)]
        if isinstance(rendered, Mapping) and set(rendered) == {"prompt", "completion"}:
            prompt, completion = rendered["prompt"], rendered["completion"]
            if isinstance(prompt, str) and isinstance(completion, str) and completion.strip():
                return [Segment(prompt, False), Segment(completion, True)]
        if isinstance(rendered, list) and rendered and all(_is_pair(p) for p in rendered):
            return [Segment(text, bool(trained)) for text, trained in rendered]
        raise UserError(
            f"{where}: data.format {self.spec} returned {type(rendered).__name__} {rendered!r:.60}; return "
            f"non-empty text, {{'prompt': ..., 'completion': ...}}, or a list of (text, trained) pairs"
        )


def _is_pair(item: Any) -> bool:
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], bool)
    )
