"""The data path of a run: source -> format -> tokenize with label mask -> split -> loaders."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import PreTrainedTokenizerBase

from llmft.config import DataSection
from llmft.data.collate import PadCollator
from llmft.data.formats import DataFormat, RowContext, get_format
from llmft.data.sources import bundled_sample, load_records
from llmft.data.tokenize import IGNORE_INDEX, SpecialIds, TokenizedExample, tokenize_segments
from llmft.errors import UserError

log = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """A list of tokenized examples (``input_ids``, ``labels``)."""

    def __init__(self, examples: list[TokenizedExample]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}


@dataclass
class DataStats:
    records: int = 0
    train_records: int = 0
    val_records: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0

    def describe(self) -> str:
        share = self.trained_tokens / max(self.tokens, 1)
        return (
            f"{self.records} records ({self.train_records} train, {self.val_records} validation), "
            f"{self.tokens} tokens, {share:.0%} of them trained, {self.truncated} truncated"
        )


@dataclass
class DataBundle:
    format: DataFormat
    source: str
    train: TokenizedDataset
    val: TokenizedDataset | None
    stats: DataStats


def _val_count(setting: int | float, total: int) -> int:
    count = int(round(total * setting)) if isinstance(setting, float) else setting
    if count >= total:
        raise UserError(
            f"data.val_set_size: holding out {count} of {total} records leaves none for training; "
            f"use a smaller count or fraction"
        )
    return count


def prepare_data(cfg: DataSection, tokenizer: PreTrainedTokenizerBase, seed: int) -> DataBundle:
    """Read, render, tokenize and split the records of a run.

    Every record is rendered before anything trains, so a bad row stops the run at once with its file,
    row and field named.
    """
    fmt = get_format(cfg.format)
    if cfg.path:
        path = os.path.abspath(os.path.expanduser(cfg.path))
    elif fmt.sample_file:
        path = str(bundled_sample(fmt.sample_file))
    else:
        raise UserError(f"data.path: the '{fmt.name}' format has no bundled sample; pass --data.path FILE")
    records = load_records(path, fmt.columns)
    if cfg.max_samples is not None:
        records = records.select(range(min(cfg.max_samples, len(records))))
    if len(records) == 0:
        raise UserError(f"data.path: '{path}' holds no records")

    special = SpecialIds.of(tokenizer)
    examples: list[TokenizedExample] = []
    stats = DataStats(records=len(records))
    for row, record in enumerate(records, start=1):
        segments = fmt.render(record, RowContext(path, row))
        example = tokenize_segments(segments, tokenizer, special, cfg.max_seq_len)
        stats.tokens += len(example.input_ids)
        stats.trained_tokens += sum(label != IGNORE_INDEX for label in example.labels)
        stats.truncated += example.truncated
        examples.append(example)

    # A seeded permutation picks the validation records; the rest keep their file order (the sampler
    # shuffles them per epoch).
    n_val = _val_count(cfg.val_set_size, len(examples))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    val_index = sorted(order[:n_val])
    held_out = set(val_index)
    train = [e for i, e in enumerate(examples) if i not in held_out]
    val = [examples[i] for i in val_index]
    stats.train_records, stats.val_records = len(train), len(val)
    if stats.truncated:
        log.warning(
            "%d of %d records were longer than data.max_seq_len=%d and were truncated",
            stats.truncated,
            stats.records,
            cfg.max_seq_len,
        )
    return DataBundle(fmt, path, TokenizedDataset(train), TokenizedDataset(val) if val else None, stats)


def train_loader(
    dataset: TokenizedDataset,
    micro_batch_size: int,
    pad_id: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled micro-batches; call ``loader.sampler.set_epoch(e)`` for each epoch's new order.

    ``pin_memory`` (for CUDA) lets the trainer's ``non_blocking`` copies overlap with compute.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return eval_loader(dataset, micro_batch_size, pad_id, pin_memory, sampler=sampler)


def eval_loader(
    dataset: TokenizedDataset, micro_batch_size: int, pad_id: int, pin_memory: bool = False, sampler=None
) -> DataLoader:
    """Padded micro-batches in file order (or in ``sampler``'s order)."""
    return DataLoader(
        dataset,
        batch_size=micro_batch_size,
        sampler=sampler,
        collate_fn=PadCollator(pad_id),
        pin_memory=pin_memory,
    )
