"""Data path: the quotes format, label mask, EOS, truncation, splits, batching, bad rows."""

from __future__ import annotations

import json

import pytest

from helpers import write_jsonl
from llmft.config import DataSection
from llmft.data.batching import Collator
from llmft.data.formats import RowContext, get_format
from llmft.data.pipeline import prepare_data, train_loader
from llmft.data.sources import bundled_sample
from llmft.data.tokenize import IGNORE_INDEX, SpecialIds, tokenize_segments
from llmft.errors import UserError

QUOTE = {"quote": "“Well done is better than well said.”", "author": "Benjamin Franklin", "tags": ["work"]}


def test_bundled_quotes_sample_is_valid():
    lines = bundled_sample("english_quotes.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 300
    assert len({r["quote"] for r in records}) == len(records)
    for record in records:
        assert list(record) == ["quote", "author", "tags"]
        assert record["quote"].startswith("“") and record["quote"].endswith("”")
        assert record["author"] and isinstance(record["tags"], list)


@pytest.mark.parametrize(
    ("file_name", "fields", "minimum"),
    [
        ("alpaca_sample.jsonl", ("instruction", "input", "output"), 200),
        ("grammar_sample.jsonl", ("input", "target"), 200),
        ("chat_sample.jsonl", ("messages",), 50),
        ("classification_sample.jsonl", ("text", "label"), 300),
    ],
)
def test_bundled_samples_are_large_enough(file_name, fields, minimum):
    # Enough records for a validation split of tens of records and a few epochs of real steps.
    lines = bundled_sample(file_name).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert len(records) >= minimum
    assert all(set(fields) <= set(record) for record in records)
    assert len({json.dumps(record, sort_keys=True) for record in records}) == len(records)  # no duplicates
    if file_name == "grammar_sample.jsonl":  # pairs: most inputs have an error to correct
        assert sum(r["input"] != r["target"] for r in records) >= 0.8 * len(records)
    if file_name == "classification_sample.jsonl":
        assert len({r["label"] for r in records}) == 3


def test_quotes_record_tokens_and_labels(tiny_tokenizer):
    fmt = get_format(DataSection(format="quotes"))
    (segments,) = fmt.render(QUOTE, RowContext("x.jsonl", 1))
    assert [s.text for s in segments] == ["“Well done is better than well said.” ― Benjamin Franklin"]
    special = SpecialIds.of(tiny_tokenizer)
    example = tokenize_segments(segments, tiny_tokenizer, special, max_seq_len=256)
    ids, labels = example.input_ids, example.labels
    assert ids[0] == tiny_tokenizer.bos_token_id and labels[0] == IGNORE_INDEX  # BOS is never a target
    assert ids[-1] == tiny_tokenizer.eos_token_id and labels[-1] == tiny_tokenizer.eos_token_id  # EOS trained
    assert labels[1:] == ids[1:]  # every text token is a target
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == segments[0].text
    assert not example.truncated


def test_untrained_segment_is_masked(tiny_tokenizer):
    from llmft.data.formats import Segment

    special = SpecialIds.of(tiny_tokenizer)
    prompt, answer = Segment("Question: why?", False), Segment(" Because.", True)
    example = tokenize_segments([prompt, answer], tiny_tokenizer, special, max_seq_len=256)
    n_prompt = len(tiny_tokenizer(prompt.text, add_special_tokens=False)["input_ids"])
    assert example.labels[: 1 + n_prompt] == [IGNORE_INDEX] * (1 + n_prompt)
    assert example.labels[1 + n_prompt :] == example.input_ids[1 + n_prompt :]


def test_truncation_keeps_alignment_and_is_counted(tiny_tokenizer, tmp_path):
    special = SpecialIds.of(tiny_tokenizer)
    (segments,) = get_format(DataSection()).render(QUOTE, RowContext("x", 1))
    full = tokenize_segments(segments, tiny_tokenizer, special, max_seq_len=256)
    cut = tokenize_segments(segments, tiny_tokenizer, special, max_seq_len=8)
    assert cut.truncated and len(cut.input_ids) == 8
    assert cut.input_ids == full.input_ids[:8] and cut.labels == full.labels[:8]

    path = write_jsonl(tmp_path / "q.jsonl", [QUOTE, {**QUOTE, "quote": "“Short.”"}])
    bundle = prepare_data(DataSection(path=str(path), max_seq_len=12, val_set_size=0), tiny_tokenizer, seed=0)
    assert bundle.stats.truncated == 1 and bundle.stats.records == 2


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"quote": "“x”"}, "row 2: field 'author' is missing or null"),
        ({"quote": "   ", "author": "A"}, "row 2: field 'quote' is empty"),
        ({"quote": 42, "author": "A"}, "row 2: field 'quote' must be text, got int"),
    ],
)
def test_bad_rows_name_file_row_and_field(tiny_tokenizer, tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [QUOTE, record])
    with pytest.raises(UserError, match=message) as info:
        prepare_data(DataSection(path=str(path), val_set_size=0), tiny_tokenizer, seed=0)
    assert "bad.jsonl" in str(info.value)


def test_bad_files(tiny_tokenizer, tmp_path):
    with pytest.raises(UserError, match="data.path: file '.*nope.jsonl' not found"):
        prepare_data(DataSection(path=str(tmp_path / "nope.jsonl")), tiny_tokenizer, seed=0)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"quote": "“a”", "author": "b"}\n{"quote": \n')
    # Lines and columns 1-based, as llmft's own row errors (the datasets reader gives a block offset).
    with pytest.raises(
        UserError, match="broken.jsonl' could not be read as JSON: line 2, column 11: Expecting value$"
    ):
        prepare_data(DataSection(path=str(broken)), tiny_tokenizer, seed=0)
    document = tmp_path / "broken.json"
    document.write_text('[{"quote": "a", "author": "b"},\n {"quote": "c" "author": "d"}]\n')
    with pytest.raises(
        UserError, match="broken.json' could not be read as JSON: line 2, column 16: Expecting ','"
    ):
        prepare_data(DataSection(path=str(document)), tiny_tokenizer, seed=0)
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "hello"}])
    with pytest.raises(
        UserError,
        match="has no column 'quote', 'author' needed by data.format quotes \\(its columns: text\\)",
    ):
        prepare_data(DataSection(path=str(other)), tiny_tokenizer, seed=0)
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("header.csv", "quote,author\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=f"data.path: '.*{name}' holds no records"):
            prepare_data(DataSection(path=str(tmp_path / name)), tiny_tokenizer, seed=0)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="folder '.*folder' holds no save_to_disk dataset and no JSON"):
        prepare_data(DataSection(path=str(tmp_path / "folder")), tiny_tokenizer, seed=0)
    csv = tmp_path / "quotes.csv"
    csv.write_text('quote,author\n"“A, b.”",C\n')
    bundle = prepare_data(DataSection(path=str(csv), val_set_size=0), tiny_tokenizer, seed=0)
    assert (
        tiny_tokenizer.decode(bundle.train.examples[0].input_ids, skip_special_tokens=True) == "“A, b.” ― C"
    )
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('quote,author\n"a",b\n"unterminated,x\n')
    with pytest.raises(UserError, match="bad.csv' could not be read as CSV: .*EOF inside string"):
        prepare_data(DataSection(path=str(bad_csv)), tiny_tokenizer, seed=0)
    txt = tmp_path / "data.txt"
    txt.write_text("hello")
    with pytest.raises(UserError, match="suffix '.txt'"):
        prepare_data(DataSection(path=str(txt)), tiny_tokenizer, seed=0)


def test_validation_split_count_fraction_and_seed(tiny_tokenizer):
    bundle = prepare_data(DataSection(val_set_size=34), tiny_tokenizer, seed=0)
    assert (bundle.stats.train_records, bundle.stats.val_records) == (bundle.stats.records - 34, 34)
    fraction = prepare_data(DataSection(val_set_size=0.25, max_samples=100), tiny_tokenizer, seed=0)
    assert (len(fraction.train), len(fraction.val)) == (75, 25)
    again = prepare_data(DataSection(val_set_size=0.25, max_samples=100), tiny_tokenizer, seed=0)
    other = prepare_data(DataSection(val_set_size=0.25, max_samples=100), tiny_tokenizer, seed=1)
    ids = lambda b: [e.input_ids for e in b.val.examples]  # noqa: E731
    assert ids(fraction) == ids(again) and ids(fraction) != ids(other)
    with pytest.raises(UserError, match="data.val_set_size: holding out 10 of 10 records leaves none"):
        prepare_data(DataSection(val_set_size=10, max_samples=10), tiny_tokenizer, seed=0)
    with pytest.raises(
        UserError, match=r"data.val_set_size: 0.01 of 40 records rounds to 0 validation records"
    ):
        prepare_data(DataSection(val_set_size=0.01, max_samples=40), tiny_tokenizer, seed=0)


def test_pad_collator_masks_padding():
    batch = Collator(pad_id=3)(
        [{"input_ids": [1, 5, 6], "labels": [-100, 5, 6]}, {"input_ids": [1, 7], "labels": [-100, 7]}]
    )
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 3]]
    assert batch["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_epoch_orders_are_new_and_deterministic(tiny_tokenizer):
    bundle = prepare_data(DataSection(val_set_size=0, max_samples=40), tiny_tokenizer, seed=0)
    index = {tuple(e.input_ids): i for i, e in enumerate(bundle.train.examples)}

    def order(epoch: int, seed: int = 0) -> list[int]:
        loader = train_loader(bundle.train, 4, tiny_tokenizer.pad_token_id, seed)
        loader.sampler.set_epoch(epoch)
        return [
            index[tuple(ids[mask.bool()].tolist())]
            for batch in loader
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
        ]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=1)
    assert sorted(order(1)) == list(range(len(bundle.train)))  # an epoch visits every record once


def test_examples_without_a_trained_token_are_dropped_and_counted(tiny_tokenizer, tmp_path, caplog):
    # Records whose prompt alone fills max_seq_len keep no trained token: they are dropped (they would
    # cost compute, and a global batch of them only would have no loss to step on).
    long = {"instruction": "word " * 150, "input": "", "output": "x"}
    short = {"instruction": "Add.", "input": "2 and 3", "output": "5"}
    path = write_jsonl(tmp_path / "a.jsonl", [long, short, long, short, short])
    cfg = DataSection(format="alpaca", path=str(path), max_seq_len=120, val_set_size=0)
    bundle = prepare_data(cfg, tiny_tokenizer, seed=0)
    stats = bundle.stats
    assert (stats.examples, stats.untrained, stats.truncated, len(bundle.train)) == (5, 2, 2, 3)
    assert all(any(label != IGNORE_INDEX for label in e.labels) for e in bundle.train.examples)
    assert stats.tokens == sum(bundle.train.lengths())  # the dropped examples' tokens are not counted
    assert "2 truncated, 2 dropped (no trained token)" in stats.describe()
    assert (
        "2 of 5 examples keep no trained token after truncation to data.max_seq_len=120 and were dropped"
        in (caplog.text)
    )
    # A validation split left without any trained token is refused (its loss would mean nothing).
    only_long_val = write_jsonl(tmp_path / "b.jsonl", [long, short, short])
    with pytest.raises(
        UserError, match="none of the 1 validation records keeps a trained token.*val_set_size 0"
    ):
        prepare_data(
            DataSection(format="alpaca", path=str(only_long_val), max_seq_len=120, val_set_size=1),
            tiny_tokenizer,
            seed=_seed_holding_out(0, 3),
        )


def _seed_holding_out(index: int, total: int) -> int:
    """A seed whose validation permutation holds out record ``index`` first."""
    import torch

    return next(
        s for s in range(100) if torch.randperm(total, generator=torch.Generator().manual_seed(s))[0] == index
    )
