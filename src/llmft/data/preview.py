"""``llmft data preview``: what the loss is trained on, before any training.

Prints a few rendered training examples with the trained tokens (label != -100) marked, then the
statistics of the whole data set under the run's batching: records, examples, tokens, share truncated,
examples dropped for keeping no trained token, share of tokens trained, padding share, packed rows. It loads the tokenizer only, never the weights.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

from llmft.config import Config
from llmft.data.pipeline import DataBundle, TokenizedDataset, prepare_data
from llmft.data.tokenize import IGNORE_INDEX, TokenizedExample

# Trained spans are shown between these marks (or in colour on a terminal).
OPEN, CLOSE = "⟦", "⟧"
_GREEN, _RESET = "\033[1;32m", "\033[0m"


@dataclass(frozen=True)
class PaddingStats:
    real: int
    padded: int  # pad positions

    @property
    def share(self) -> float:
        return self.padded / max(self.real + self.padded, 1)


def padding_stats(dataset: TokenizedDataset, micro_batch_size: int, order: list[int]) -> PaddingStats:
    """Real and pad tokens of the micro-batches the trainer would build in ``order``."""
    lengths = dataset.lengths()
    real = padded = 0
    for start in range(0, len(order), micro_batch_size):
        batch = [lengths[i] for i in order[start : start + micro_batch_size]]
        width = max(max(batch), dataset.pad_to or 0)
        real += sum(batch)
        padded += width * len(batch) - sum(batch)
    return PaddingStats(real, padded)


def mark_trained(example: TokenizedExample, tokenizer, color: bool = False) -> str:
    """The example's text with trained tokens between marks; special tokens shown as text."""
    parts = []
    for trained, run in itertools.groupby(
        zip(example.input_ids, example.labels), key=lambda t: t[1] != IGNORE_INDEX
    ):
        text = tokenizer.decode([token for token, _ in run], skip_special_tokens=False)
        if trained:
            text = f"{_GREEN}{text}{_RESET}" if color else f"{OPEN}{text}{CLOSE}"
        parts.append(text)
    return "".join(parts)


def preview(cfg: Config, count: int = 3, color: bool = False) -> str:
    """The preview text of ``cfg``'s data (see the module docstring)."""
    tokenizer = _tokenizer(cfg)
    bundle = prepare_data(cfg.data, tokenizer, cfg.train.seed, cfg.task)
    lines = [f"data: {bundle.source} (format {bundle.format.name}: {bundle.format.description})", ""]
    lines += _example_lines(bundle, tokenizer, count, color)
    rows = _statistics(cfg, bundle)
    width = max(len(name) for name, _ in rows)
    lines.append("statistics:")
    lines.extend(f"  {name:<{width}}  {value}" for name, value in rows)
    return "\n".join(lines)


def _tokenizer(cfg: Config):
    """The run's tokenizer, after checking ``data.max_seq_len`` against the model's config when it loads."""
    from llmft.models.loader import check_max_seq_len, load_tokenizer, resolve_model

    source = resolve_model(cfg.model)
    tokenizer = load_tokenizer(source, cfg.model)
    with contextlib.suppress(Exception):  # the config only (no weights); a model that fails loads later
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            source.ref, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
        )
        check_max_seq_len(config, cfg.data.max_seq_len)
    return tokenizer


def _example_lines(bundle: DataBundle, tokenizer, count: int, color: bool) -> list[str]:
    """The first ``count`` training examples, each with a header line and its trained tokens marked."""
    lines = []
    marks = "in green" if color else f"between {OPEN} {CLOSE}"
    for i, example in enumerate(bundle.train_examples[:count], start=1):
        trained = sum(label != IGNORE_INDEX for label in example.labels)
        cut = ", truncated" if example.truncated else ""
        if example.class_label is not None:  # task classification: the target is the class
            label = bundle.label_names[example.class_label]
            lines.append(f"--- example {i}: {len(example.input_ids)} tokens, class {label!r}{cut}")
        else:
            lines.append(
                f"--- example {i}: {len(example.input_ids)} tokens, {trained} trained ({marks}){cut}"
            )
        lines.append(mark_trained(example, tokenizer, color))
        lines.append("")
    return lines


def _statistics(cfg: Config, bundle: DataBundle) -> list[tuple[str, str]]:
    """(name, value) rows: records, examples, tokens, truncation, drops, trained share, packing, padding."""
    from llmft.data.batching import ResumableSampler

    stats = bundle.stats
    sampler = ResumableSampler(
        bundle.train.lengths(),
        seed=cfg.train.seed,
        group_by_length=cfg.data.group_by_length,
        global_batch=cfg.train.batch_size,
    )
    pads = padding_stats(bundle.train, cfg.train.micro_batch_size, sampler.epoch_order())
    lengths = [len(e.input_ids) for e in bundle.train_examples]
    rows = [
        ("records", f"{stats.records} ({stats.train_records} train, {stats.val_records} validation)"),
        (
            "examples",
            f"{stats.examples}" + (f" (train {len(bundle.train_examples)})" if stats.val_records else ""),
        ),
        (
            "tokens",
            f"{stats.tokens:,} (train examples: mean {sum(lengths) / max(len(lengths), 1):.1f}, "
            f"max {max(lengths, default=0)})",
        ),
        (
            "truncated",
            f"{stats.truncated} of {stats.examples} ({stats.truncated / max(stats.examples, 1):.1%}) "
            f"at data.max_seq_len {cfg.data.max_seq_len}",
        ),
        (
            "dropped",
            f"{stats.untrained} of {stats.examples} ({stats.untrained / max(stats.examples, 1):.1%}) "
            f"kept no trained token at data.max_seq_len {cfg.data.max_seq_len}",
        ),
        (
            "trained tokens",
            f"{stats.trained_tokens:,} ({stats.trained_tokens / max(stats.tokens, 1):.1%} of tokens)",
        ),
    ]
    if cfg.data.batching == "packing":
        rows.append(
            (
                "packed rows",
                f"{stats.packed_rows} rows of {cfg.data.max_seq_len} tokens "
                f"from {len(bundle.train_examples)} train examples",
            )
        )
    grouping = ", grouped by length" if cfg.data.group_by_length else ""
    rows.append(
        (
            "padding",
            f"{pads.share:.1%} of {pads.real + pads.padded:,} batch tokens ({cfg.data.batching}{grouping}, "
            f"micro-batch {cfg.train.micro_batch_size}, one epoch)",
        )
    )
    return rows
