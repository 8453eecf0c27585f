"""Batching: padding (optionally length-grouped) or packing, a resumable sampler, and the collator.

Packing puts several documents into one row of ``seq_len`` tokens. Each document's position ids start
at 0, and the model is called with those position ids and no 2-D attention mask: transformers then
builds a block-diagonal causal mask from the position resets (``find_packed_sequence_indices``), so no
token attends across documents, and the rotary positions are those the document would have alone.
The first token of every document gets label -100, so nothing is trained on predicting a document
from the end of the one before it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from llmft.data.tokenize import IGNORE_INDEX, TokenizedExample


def pack_examples(examples: Sequence[TokenizedExample], seq_len: int) -> list[TokenizedExample]:
    """Rows of at most ``seq_len`` tokens holding whole documents (best-fit decreasing).

    Documents are placed longest first, each into the row whose free space fits it most tightly, which
    leaves little padding; no document is split or dropped (tokenization already cut each to
    ``max_seq_len``), and rows that end short are padded by the collator. The result is deterministic.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row index), sorted, for the best-fit search
    for index in order:
        need = len(examples[index].input_ids)
        if need > seq_len:
            raise ValueError(f"a document of {need} tokens does not fit a packed row of {seq_len}")
        slot = bisect.bisect_left(free, (need, -1))
        if slot < len(free):
            space, row = free.pop(slot)
            rows[row].append(index)
            bisect.insort(free, (space - need, row))
        else:
            rows.append([index])
            bisect.insort(free, (seq_len - need, len(rows) - 1))
    return [_concatenate([examples[i] for i in row]) for row in rows]


def _concatenate(documents: list[TokenizedExample]) -> TokenizedExample:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for doc in documents:
        input_ids.extend(doc.input_ids)
        # Label of a document's first token: never a target (it would be predicted from the previous
        # document's last token). Alone, that label is dropped by the shift anyway, so losses match.
        labels.extend([IGNORE_INDEX, *doc.labels[1:]])
        position_ids.extend(range(len(doc.input_ids)))
    return TokenizedExample(input_ids, labels, any(d.truncated for d in documents), position_ids)


class ResumableSampler(Sampler[int]):
    """This rank's indices of an epoch: a seeded permutation, optionally length-grouped, resumable.

    The order equals ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)``: a permutation
    seeded with ``seed + epoch``, padded by repetition to a multiple of the world size, then every
    ``num_replicas``-th index from ``rank``. Except that a repeated index is offset by the data set's
    length: :class:`llmft.data.pipeline.TokenizedDataset` serves it as a *filler*, the same example with
    every label -100. Every rank still runs the same number of forward/backward passes (FSDP and DDP
    need that), but no example counts twice, so an epoch's last step equals the one-process run's
    instead of double-weighting the repeated examples as DistributedSampler does.

    Two further things it adds, which torch's sampler lacks:

    - ``group_by_length``: HF Trainer's grouping (megabatches of up to 50 global batches sorted by length,
      the longest batch first) so that padded batches waste little;
    - ``set_epoch(epoch, start)``: resume mid-epoch after ``start`` indices, for exact resumption from a
      checkpoint (the trainer records how many micro-batches of the epoch it consumed).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = False,
        global_batch: int = 1,
    ) -> None:
        self.lengths = list(lengths)
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.global_batch = global_batch
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(len(self.lengths) / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_order(self) -> list[int]:
        """All of this rank's indices for the current epoch, from the start."""
        n = len(self.lengths)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=generator).tolist()
        else:
            indices = list(range(n))
        if self.group_by_length:
            indices = self._grouped(indices)
        total = self.per_rank * self.num_replicas
        fillers: list[int] = []
        while len(indices) + len(fillers) < total:  # repeat from the start, like DistributedSampler
            fillers += [i + n for i in indices[: total - len(indices) - len(fillers)]]
        return (indices + fillers)[self.rank : total : self.num_replicas]

    def _grouped(self, indices: list[int]) -> list[int]:
        mult = max(1, min(len(indices) // (self.global_batch * 4), 50))
        size = mult * self.global_batch
        groups = [
            sorted(indices[i : i + size], key=lambda k: self.lengths[k], reverse=True)
            for i in range(0, len(indices), size)
        ]
        # The longest sequence comes first, so an out-of-memory error shows at step 1, not mid-run.
        longest = max(range(len(groups)), key=lambda g: self.lengths[groups[g][0]])
        groups[0][0], groups[longest][0] = groups[longest][0], groups[0][0]
        return [i for group in groups for i in group]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


class Collator:
    """Right-pads a micro-batch: input ids with ``pad_id``, labels with -100; builds the masks.

    Padding positions never count as targets: the label mask, not the pad id, decides, so a tokenizer
    whose pad token is its EOS still trains on real EOS tokens. ``attention_mask`` marks the tokens of
    each row; ``num_real_tokens`` counts those of rows that are not fillers (see
    :class:`ResumableSampler`), for tokens/s. For packed rows ``position_ids`` are added, and the
    padding continues as a run of its own (positions from 0) that no real token attends to. ``pad_to``
    fixes the row length (packed rows), else rows are padded to the longest in the batch.
    """

    def __init__(self, pad_id: int, pad_to: int | None = None) -> None:
        self.pad_id = pad_id
        self.pad_to = pad_to

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        width = max(longest, self.pad_to or 0)
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        packed = "position_ids" in examples[0]
        position_ids = torch.zeros((batch, width), dtype=torch.long) if packed else None
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
            if position_ids is not None:
                position_ids[row, :n] = torch.tensor(example["position_ids"])
                position_ids[row, n:] = torch.arange(width - n)
        real = sum(len(e["input_ids"]) for e in examples if not e.get("filler"))
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "num_real_tokens": torch.tensor(real),
        }
        if position_ids is not None:
            out["position_ids"] = position_ids
        if "class_label" in examples[0]:
            out["class_labels"] = torch.tensor([e["class_label"] for e in examples])
        return out
