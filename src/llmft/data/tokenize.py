"""Tokenization with the label mask, shared by every data format.

Labels are the input ids themselves (the model shifts them by one when computing the loss) with
``IGNORE_INDEX`` wherever a token is not a target: prompt segments, BOS and padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llmft.data.formats import Segment

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialIds:
    """The tokenizer's conventions: whether it starts sequences with BOS, and its EOS id."""

    bos_id: int | None
    eos_id: int | None

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> SpecialIds:
        # Prepend BOS only when the tokenizer itself would (LLaMA does; some models have no BOS).
        probe = tokenizer("a")["input_ids"]
        adds_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
        return cls(bos_id=tokenizer.bos_token_id if adds_bos else None, eos_id=tokenizer.eos_token_id)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    position_ids: list[int] | None = None  # packed rows only: positions restart at each document
    class_label: int | None = None  # task classification: the class index (its labels are all -100)


def tokenize_segments(
    segments: list[Segment],
    tokenizer: PreTrainedTokenizerBase,
    special: SpecialIds,
    max_seq_len: int,
    add_eos: bool = True,
) -> TokenizedExample:
    """Token ids and labels of one rendered record.

    The whole text is tokenized once, as generation will see it (tokenizing each segment on its own
    would, with SentencePiece tokenizers, start every segment with a word-boundary marker that the joined
    text does not have). A token is a target when its characters overlap a trained segment (offsets
    from the fast tokenizer), so a token that straddles the prompt/response edge is trained. EOS is
    appended (and trained) so the model learns to stop; a record longer than ``max_seq_len`` is cut at
    the end, which drops its EOS, and is reported as truncated.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    if special.bos_id is not None:
        input_ids.append(special.bos_id)
        labels.append(IGNORE_INDEX)
    spans: list[tuple[int, int]] = []  # character spans of the trained segments
    position = 0
    for segment in segments:
        if segment.trained:
            spans.append((position, position + len(segment.text)))
        position += len(segment.text)
    encoded = tokenizer(
        "".join(s.text for s in segments), add_special_tokens=False, return_offsets_mapping=True
    )
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        trained = any(start < stop and max(end, start + 1) > begin for begin, stop in spans)
        input_ids.append(token)
        labels.append(token if trained else IGNORE_INDEX)
    if add_eos and special.eos_id is not None:
        input_ids.append(special.eos_id)
        labels.append(special.eos_id if segments and segments[-1].trained else IGNORE_INDEX)
    truncated = len(input_ids) > max_seq_len
    return TokenizedExample(input_ids[:max_seq_len], labels[:max_seq_len], truncated)
