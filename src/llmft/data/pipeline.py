"""The data path of a run: source -> format -> tokenize with label mask -> split -> pack -> loaders."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from llmft.config import DataSection
from llmft.data.batching import Collator, ResumableSampler, pack_examples
from llmft.data.formats import DataFormat, RowContext, Segment, get_format, split_example, text_field
from llmft.data.sources import bundled_sample, load_records
from llmft.data.tokenize import IGNORE_INDEX, SpecialIds, TokenizedExample, tokenize_segments
from llmft.errors import UserError

log = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """Tokenized examples (``input_ids``, ``labels``, and ``position_ids`` for packed rows).

    ``pad_to`` fixes the row length of every batch (packed rows); None pads to the batch's longest.
    """

    def __init__(self, examples: list[TokenizedExample], pad_to: int | None = None) -> None:
        self.examples = examples
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        # Indices past the end are fillers (the sampler's padding to a multiple of the world size): the
        # example at index - len, trained on nothing.
        filler = index >= len(self.examples)
        example = self.examples[index - len(self.examples) if filler else index]
        labels = [IGNORE_INDEX] * len(example.labels) if filler else example.labels
        item: dict = {"input_ids": example.input_ids, "labels": labels}
        if example.position_ids is not None:
            item["position_ids"] = example.position_ids
        if example.class_label is not None:
            item["class_label"] = IGNORE_INDEX if filler else example.class_label
        if filler:
            item["filler"] = True
        return item

    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]


@dataclass
class DataStats:
    records: int = 0
    train_records: int = 0
    val_records: int = 0
    examples: int = 0  # after expansion (a record with several corrections gives several)
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    # Examples dropped because truncation cut every trained token (not counted in tokens): they would
    # cost compute and add no signal, and a global batch made of them only would have no loss at all.
    untrained: int = 0
    packed_rows: int | None = None
    classes: int | None = None  # task classification: the target is a class, not tokens

    def describe(self) -> str:
        share = self.trained_tokens / max(self.tokens, 1)
        trained = f"{self.classes} classes" if self.classes else f"{share:.0%} of them trained"
        expanded = f", {self.examples} examples" if self.examples != self.records else ""
        packed = f", packed into {self.packed_rows} rows" if self.packed_rows is not None else ""
        dropped = f", {self.untrained} dropped (no trained token)" if self.untrained else ""
        return (
            f"{self.records} records ({self.train_records} train, {self.val_records} validation){expanded}, "
            f"{self.tokens} tokens, {trained}, {self.truncated} truncated{dropped}{packed}"
        )


@dataclass
class DataBundle:
    format: DataFormat
    source: str
    train: TokenizedDataset  # what the trainer iterates: examples, or packed rows
    val: TokenizedDataset | None
    stats: DataStats
    train_examples: list[TokenizedExample] = field(default_factory=list)  # before packing
    # Validation records with several acceptable outputs (grammar): (prompt text, references).
    references: list[tuple[str, list[str]]] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)  # classification: the classes, sorted
    # Every validation record that completes a prompt (task causal_lm; not plain text): (the prompt as
    # trained, its acceptable answers) - what generation-based evaluation scores.
    val_prompts: list[tuple[str, list[str]]] = field(default_factory=list)


def _val_count(setting: int | float, total: int) -> int:
    count = int(round(total * setting)) if isinstance(setting, float) else setting
    if isinstance(setting, float) and setting > 0 and count == 0:
        # A fraction asks for a validation split; silently training without one would hide that.
        raise UserError(
            f"data.val_set_size: {setting:g} of {total} records rounds to 0 validation records; hold out a "
            f"count (--data.val_set_size 1) or none (--data.val_set_size 0)"
        )
    if count >= total:
        raise UserError(
            f"data.val_set_size: holding out {count} of {total} records leaves none for training; "
            f"use a smaller count or fraction"
        )
    return count


def _check_untrained(
    stats: DataStats, max_seq_len: int, n_val: int, any_train: bool, any_val: bool, hold_out_all: bool
) -> None:
    """Warn about the examples dropped for having no trained token, or refuse a split left empty."""
    fix = "raise data.max_seq_len or shorten the prompts"
    if stats.untrained == stats.examples:
        raise UserError(
            f"data.max_seq_len: at {max_seq_len} tokens no example keeps a trained token (the prompts "
            f"alone are longer); raise data.max_seq_len"
        )
    if not any_train and not hold_out_all:
        raise UserError(
            f"data.max_seq_len: at {max_seq_len} tokens no training example keeps a trained token; {fix}"
        )
    if n_val and not any_val:
        # An evaluation with no target would report a meaningless loss.
        raise UserError(
            f"data.max_seq_len: at {max_seq_len} tokens none of the {n_val} validation records keeps a "
            f"trained token; {fix}, or set data.val_set_size 0"
        )
    log.warning(
        "%d of %d examples keep no trained token after truncation to data.max_seq_len=%d and were dropped; "
        "%s",
        stats.untrained,
        stats.examples,
        max_seq_len,
        fix,
    )


def resolve_source(cfg: DataSection, fmt: DataFormat) -> str:
    """The data path of a run: the configured one (local paths made absolute) or the bundled sample."""
    if cfg.path:
        local = os.path.expanduser(cfg.path)
        return os.path.abspath(local) if os.path.exists(local) else cfg.path
    if fmt.sample_file:
        return str(bundled_sample(fmt.sample_file))
    raise UserError(f"data.path: the '{fmt.name}' format has no bundled sample; pass --data.path FILE")


def prepare_data(
    cfg: DataSection,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    task: str = "causal_lm",
    hold_out_all: bool = False,
) -> DataBundle:
    """Read, render, tokenize, split and (with ``batching: packing``) pack the records of a run.

    Every record is rendered before anything trains, so a bad row stops the run at once with its file,
    row and field named. The validation split is drawn per record, before a record is expanded into
    several examples, so no sentence is on both sides. For ``task: classification`` an example is the
    record's text alone (no label text, no EOS) with its class index; classes are the sorted label names
    (numerically sorted when all are integers), kept with the model. ``hold_out_all`` makes every
    record a validation record (``llmft eval`` on a data set of its own).
    """
    _check_fast(tokenizer)
    fmt = get_format(cfg, tokenizer)
    path = resolve_source(cfg, fmt)
    records = _read_records(cfg, fmt, path)

    # A seeded permutation picks the validation records; the rest keep their file order (the sampler
    # shuffles them per epoch).
    n_val = len(records) if hold_out_all else _val_count(cfg.val_set_size, len(records))
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(order[:n_val])

    stats = DataStats(records=len(records), train_records=len(records) - n_val, val_records=n_val)
    examples = _Examples(fmt, tokenizer, SpecialIds.of(tokenizer), cfg.max_seq_len, task, stats)
    for row, record in enumerate(records, start=1):
        examples.add(record, RowContext(path, row), held_out=row - 1 in held_out)
    train, val = examples.train, examples.val
    if stats.truncated:
        log.warning(
            "%d of %d examples were longer than data.max_seq_len=%d and were truncated (labels stay aligned)",
            stats.truncated,
            stats.examples,
            cfg.max_seq_len,
        )
    label_names = _index_classes(examples, path) if task == "classification" else sorted(examples.labels)
    if stats.untrained:
        _check_untrained(stats, cfg.max_seq_len, n_val, bool(train), bool(val), hold_out_all)
    rows = TokenizedDataset(train)
    if cfg.batching == "packing":
        rows = TokenizedDataset(pack_examples(train, cfg.max_seq_len), pad_to=cfg.max_seq_len)
        stats.packed_rows = len(rows)
    return DataBundle(
        fmt,
        path,
        rows,
        TokenizedDataset(val) if val else None,
        stats,
        train_examples=train,
        references=examples.references,
        label_names=label_names,
        val_prompts=examples.val_prompts,
    )


def _check_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        # The label mask needs character offsets, which only the fast (Rust) tokenizers give.
        raise UserError(
            f"model.name: the tokenizer ({type(tokenizer).__name__}) is a slow Python tokenizer; llmft needs a "
            f"fast one (tokenizer.json) - convert it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            f".save_pretrained(DIR) and use that folder"
        )


def _read_records(cfg: DataSection, fmt: DataFormat, path: str):
    """The records of ``path`` (at most ``data.max_samples``), with the columns ``fmt`` needs."""
    records = load_records(path, cfg.split, cfg.subset, cfg.column_map)
    fmt.check_columns(records.column_names, path)
    if cfg.max_samples is not None:
        records = records.select(range(min(cfg.max_samples, len(records))))
    if len(records) == 0:
        raise UserError(f"data.path: '{path}' holds no records")
    return records


@dataclass
class _Examples:
    """The tokenized examples of a run's records, added record by record, with what evaluation needs."""

    fmt: DataFormat
    tokenizer: PreTrainedTokenizerBase
    special: SpecialIds
    max_seq_len: int
    task: str
    stats: DataStats
    train: list[TokenizedExample] = field(default_factory=list)
    val: list[TokenizedExample] = field(default_factory=list)
    references: list[tuple[str, list[str]]] = field(default_factory=list)
    val_prompts: list[tuple[str, list[str]]] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)

    def add(self, record, where: RowContext, held_out: bool) -> None:
        """Render, tokenize and file one record (a validation record when ``held_out``)."""
        examples = self.fmt.render(record, where)
        if held_out:
            # One example per validation record (its first output); all outputs stay as references.
            examples = examples[:1]
            refs = self.fmt.references(record, where)
            if refs is not None:
                self.references.append(
                    ("".join(s.text for s in examples[0][:-1]), refs)
                )  # all but the response
            parts = split_example(examples[0]) if self.task == "causal_lm" else None
            if parts is not None:
                self.val_prompts.append((parts[0], refs if refs is not None else [parts[1]]))
        label = self.fmt.label_of(record, where)
        if label is not None:
            self.labels.add(label)
        if self.task == "classification":
            examples = [[Segment(text_field(record, "text", where), trained=False)]]
        for segments in examples:
            example = self._tokenize(segments, label)
            if example is not None:
                (self.val if held_out else self.train).append(example)

    def _tokenize(self, segments: list[Segment], label: str | None) -> TokenizedExample | None:
        """The tokenized example, counted in the stats; None when truncation left it nothing to train."""
        classification = self.task == "classification"
        example = tokenize_segments(
            segments,
            self.tokenizer,
            self.special,
            self.max_seq_len,
            add_eos=self.fmt.adds_eos and not classification,
        )
        if classification:
            example.class_label = label  # a name until every class is known; an index in _index_classes
        stats = self.stats
        stats.examples += 1
        stats.truncated += example.truncated
        if not classification and all(target == IGNORE_INDEX for target in example.labels):
            # Truncation cut every trained token (the prompt fills max_seq_len): drop the example.
            # A classifier's target is the class, so its examples always train.
            stats.untrained += 1
            return None
        stats.tokens += len(example.input_ids)
        stats.trained_tokens += sum(target != IGNORE_INDEX for target in example.labels)
        return example


def _index_classes(examples: _Examples, path: str) -> list[str]:
    """The class names, sorted (numerically when all are integers); each example's label becomes the
    index of its class."""
    labels = examples.labels
    names = sorted(labels, key=lambda x: (0, int(x), "") if re.fullmatch(r"-?[0-9]+", x) else (1, 0, x))
    if len(names) < 2:
        raise UserError(
            f"data.path: '{path}' has {len(names)} distinct label(s); a classifier needs 2 or more"
        )
    index = {name: i for i, name in enumerate(names)}
    for example in [*examples.train, *examples.val]:
        example.class_label = index[example.class_label]
    examples.stats.classes = len(names)
    return names


def train_loader(
    dataset: TokenizedDataset,
    micro_batch_size: int,
    pad_id: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    group_by_length: bool = False,
    global_batch: int = 1,
) -> DataLoader:
    """Shuffled micro-batches; ``loader.sampler.set_epoch(e, start)`` sets each epoch's order.

    ``pin_memory`` (for CUDA) lets the trainer's ``non_blocking`` copies overlap with compute.
    """
    sampler = ResumableSampler(
        dataset.lengths(), world_size, rank, seed, group_by_length=group_by_length, global_batch=global_batch
    )
    return eval_loader(dataset, micro_batch_size, pad_id, pin_memory, sampler=sampler)


def eval_loader(
    dataset: TokenizedDataset, micro_batch_size: int, pad_id: int, pin_memory: bool = False, sampler=None
) -> DataLoader:
    """Padded micro-batches in file order (or in ``sampler``'s order)."""
    return DataLoader(
        dataset,
        batch_size=micro_batch_size,
        sampler=sampler,
        collate_fn=Collator(pad_id, dataset.pad_to),
        pin_memory=pin_memory,
        # Its own generator: each new iterator draws a base seed from it, and drawing from the global
        # one would shift dropout's random stream by one draw per epoch (and differently in a resumed run).
        generator=torch.Generator(),
    )
