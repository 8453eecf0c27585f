"""Sources (save_to_disk folders, data-file folders through the hub loader, hub ids offline, splits),
packing, the resumable sampler, and the trainer's data position."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from helpers import write_jsonl
from llmft.config import DataSection
from llmft.data.batching import Collator, ResumableSampler, pack_examples
from llmft.data.pipeline import TokenizedDataset, prepare_data
from llmft.data.sources import load_records
from llmft.data.tokenize import IGNORE_INDEX, TokenizedExample
from llmft.errors import UserError

QUOTES = [{"quote": f"“Quote number {i}.”", "author": f"Author {i}", "tags": []} for i in range(12)]


def test_save_to_disk_folders_and_splits(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(QUOTES)
    ds.save_to_disk(str(tmp_path / "one"))
    assert len(load_records(str(tmp_path / "one"))) == 12
    assert len(load_records(str(tmp_path / "one"), split="train[2:5]")) == 3
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_records(str(tmp_path / "dict"), split="test")) == 4
    assert len(load_records(str(tmp_path / "dict"), split="train[:5]")) == 5
    with pytest.raises(
        UserError, match=r"data.split: 'dev' is not a split of '.*dict' \(its splits: train, test\)"
    ):
        load_records(str(tmp_path / "dict"), split="dev")


def test_folder_of_files_goes_through_the_hub_loader(tmp_path, tiny_tokenizer):
    # load_dataset(folder) is the call a hub id makes; a folder with train/test files stands in for it.
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", QUOTES[:10])
    write_jsonl(folder / "test.jsonl", QUOTES[10:])
    assert len(load_records(str(folder), split="test")) == 2
    bundle = prepare_data(DataSection(path=str(folder), val_set_size=0), tiny_tokenizer, seed=0)
    assert bundle.stats.records == 10
    with pytest.raises(UserError, match="data.split: 'validation' is not a split of folder"):
        load_records(str(folder), split="validation")
    single = write_jsonl(tmp_path / "q.jsonl", QUOTES)
    with pytest.raises(
        UserError,
        match="data.split: 'test' is not a split of '.*q.jsonl' \\(a single file is split 'train'\\)",
    ):
        load_records(str(single), split="test")


def test_hub_id_offline_says_how_to_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        UserError, match="'Abirate/english_quotes' is not a local file or folder, and the hub is offline"
    ) as info:
        load_records("Abirate/english_quotes")
    assert "save_to_disk('DIR')" in str(info.value) and "--data.path DIR" in str(info.value)
    with pytest.raises(UserError, match="file '.*missing.jsonl' not found"):
        load_records("data/missing.jsonl")


def _doc(n: int, start: int) -> TokenizedExample:
    ids = list(range(start, start + n))
    return TokenizedExample(ids, [IGNORE_INDEX, *ids[1:]], False)


def test_packing_keeps_every_document_whole():
    docs = [_doc(n, 100 * i) for i, n in enumerate([7, 3, 9, 2, 5, 10, 1, 4])]
    rows = pack_examples(docs, seq_len=10)
    assert sum(len(r.input_ids) for r in rows) == sum(len(d.input_ids) for d in docs)
    assert all(len(r.input_ids) <= 10 for r in rows)
    assert len(rows) == 5  # 41 tokens in rows of 10: best fit needs the minimum of 5
    found = []
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        for begin, end in zip(starts, [*starts[1:], len(row.input_ids)]):
            found.append(row.input_ids[begin:end])
            assert row.labels[begin] == IGNORE_INDEX  # no target across a document boundary
            assert row.labels[begin + 1 : end] == row.input_ids[begin + 1 : end]
            assert row.position_ids[begin:end] == list(range(end - begin))
    assert sorted(found) == sorted(d.input_ids for d in docs)
    assert pack_examples(docs, 10) == rows  # deterministic

    dataset = TokenizedDataset(rows)
    filler = dataset[len(rows) + 1]  # a sampler's padding index: the same row, trained on nothing
    assert filler["filler"] and filler["input_ids"] == rows[1].input_ids
    assert set(filler["labels"]) == {IGNORE_INDEX}
    assert Collator(0)([dataset[0], filler])["num_real_tokens"] == len(rows[0].input_ids)

    batch = Collator(pad_id=0, pad_to=12)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows[:2]]
    )
    assert batch["input_ids"].shape == (2, 12)
    n = len(rows[1].input_ids)
    assert batch["position_ids"][1, n:].tolist() == list(range(12 - n))  # padding is a run of its own
    assert batch["labels"][1, n:].eq(IGNORE_INDEX).all() and batch["attention_mask"][1].sum() == n


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_order_equals_distributed_sampler(world):
    lengths = list(range(1, 24))
    for rank in range(world):
        ours = ResumableSampler(lengths, world, rank, seed=7)
        theirs = DistributedSampler(lengths, num_replicas=world, rank=rank, shuffle=True, seed=7)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            # The same order; indices that DistributedSampler repeats come offset by len (fillers).
            assert [i % len(lengths) for i in ours] == list(theirs)
            repeated = (-len(lengths)) % world
            assert (
                sum(i >= len(lengths) for r in range(world) for i in ResumableSampler(lengths, world, r, 7))
                == repeated
            )


def test_sampler_resumes_mid_epoch_and_groups_by_length():
    lengths = [(i * 37) % 50 + 1 for i in range(200)]
    sampler = ResumableSampler(lengths, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=48)
    assert list(sampler) == full[48:] and len(sampler) == 200 - 48

    grouped = ResumableSampler(lengths, seed=1, group_by_length=True, global_batch=8)
    grouped.set_epoch(0)
    order = list(grouped)
    assert sorted(order) == list(range(200)) and lengths[order[0]] == max(lengths)

    def padding(order: list[int]) -> int:
        batches = [[lengths[i] for i in order[k : k + 8]] for k in range(0, 200, 8)]
        return sum(max(b) * len(b) - sum(b) for b in batches)

    assert padding(order) < padding(full) / 3  # grouping removes most of the padding


def test_trainer_data_position_continues_the_stream(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from llmft.config import TrainSection
    from llmft.distributed.env import DistEnv
    from llmft.train.trainer import Trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    examples = [_doc(3 + i % 5, i * 10) for i in range(22)]
    cfg = TrainSection(micro_batch_size=2, batch_size=4, epochs=2, progress=False)
    env = DistEnv(0, 1, 0, torch.device("cpu"))

    def stream(trainer, steps=None):
        out = []
        for epoch, group in trainer.global_batches():
            out.append((epoch, [b["input_ids"].tolist() for b in group]))
            if steps and len(out) == steps:
                return out, trainer.data_state()
        return out, trainer.data_state()

    whole, _ = stream(Trainer(model, cfg, TokenizedDataset(examples), None, 0, env))
    assert len(whole) == 2 * 6  # 11 micro-batches per epoch: 5 steps of 2 and a last step of 1
    for cut in (3, 6, 7):
        head, state = stream(Trainer(model, cfg, TokenizedDataset(examples), None, 0, env), steps=cut)
        resumed = Trainer(model, cfg, TokenizedDataset(examples), None, 0, env)
        resumed.load_data_state(state)
        tail, _ = stream(resumed)
        assert head + tail == whole


def test_a_slow_tokenizer_is_a_one_line_error():
    slow = type("LlamaTokenizer", (), {"is_fast": False})()
    with pytest.raises(
        UserError, match="model.name: the tokenizer \\(LlamaTokenizer\\) is a slow Python tokenizer"
    ):
        prepare_data(DataSection(), slow, seed=0)


def test_parquet_files_load_and_bad_ones_are_one_line_errors(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "quotes.parquet"
    pq.write_table(pa.Table.from_pylist(QUOTES), path)
    bundle = prepare_data(DataSection(path=str(path), val_set_size=0), tiny_tokenizer, seed=0)
    assert bundle.stats.records == 12
    first = tiny_tokenizer.decode(bundle.train.examples[0].input_ids, skip_special_tokens=True)
    assert first == "“Quote number 0.” ― Author 0"
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(
        UserError, match="data.path: '.*bad.parquet' could not be read as PARQUET: .*magic bytes"
    ):
        load_records(str(bad))
    empty = tmp_path / "none.parquet"
    pq.write_table(pa.Table.from_pylist(QUOTES).slice(0, 0), empty)
    with pytest.raises(UserError, match="data.path: '.*none.parquet' holds no records$"):
        load_records(str(empty))


def test_folder_of_files_with_different_columns_is_a_one_line_error(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"quote": "“a”", "author": "b"}])
    write_jsonl(folder / "b.jsonl", [{"quote": "“c”", "author": "d", "tags": ["x"]}])
    with pytest.raises(UserError) as info:
        load_records(str(folder))
    assert str(info.value) == (
        f"data.path: the files in folder '{folder}' do not share one schema (columns or their types differ: "
        f"column names don't match); keep files of one schema in the folder, or pass one file"
    )
