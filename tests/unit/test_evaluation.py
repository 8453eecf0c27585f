"""Task metric helpers (hand-checkable values), prompts in the training format, generation's RNG."""

from __future__ import annotations

import pytest
import torch

from helpers import write_jsonl
from llmft.config import DataSection
from llmft.data.formats import RowContext, get_format, split_example
from llmft.data.instruct import ALPACA_TEMPLATES
from llmft.data.pipeline import prepare_data
from llmft.errors import UserError
from llmft.evaluation.metrics import exact_match, gleu, metric_names, rouge_l, task_metrics
from llmft.inference.prompts import read_prompts, record_prompt

WHERE = RowContext("test.jsonl", 1)


def test_exact_match():
    assert exact_match(["She goes home."], [["She goes home."]]) == 1.0
    assert exact_match([" She goes home.\n"], [["She goes home."]]) == 1.0  # surrounding whitespace
    assert exact_match(["she goes home."], [["She goes home."]]) == 0.0  # case counts
    # Any of several references (JFLEG): 2 of 4 predictions match one.
    predictions = ["a", "b", "c", "d"]
    references = [["x", "a"], ["b"], ["y"], ["z", "w"]]
    assert exact_match(predictions, references) == 0.5
    assert exact_match([], []) == 0.0


def test_gleu():
    assert gleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == 1.0
    assert gleu(["a b"], [["c d"]]) == 0.0
    # "a b c d" vs "a b c e": 1..4-grams, 10 on each side; matches a b c | ab bc | abc = 6 -> 6/10.
    assert gleu(["a b c d"], [["a b c e"]]) == pytest.approx(0.6)
    # With a second reference equal to the prediction, the best reference counts: 1.0.
    assert gleu(["a b c d"], [["a b c e", "a b c d"]]) == pytest.approx(1.0)


def test_rouge_l():
    assert rouge_l(["the cat sat"], [["the cat sat"]]) == 1.0
    # LCS 3 of 3 predicted and 4 reference words: P 1, R 0.75, F 2*0.75/1.75.
    assert rouge_l(["the cat sat"], [["the cat sat on"]]) == pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l(["the cat sat"], [["dogs run", "the cat sat"]]) == 1.0  # best reference
    assert rouge_l(["the cat sat", "x"], [["the cat sat"], ["y"]]) == pytest.approx(0.5)  # mean


def test_metrics_by_format():
    assert metric_names("grammar") == ("exact_match", "gleu")
    assert metric_names("alpaca") == metric_names("chat") == ("rougeL",)
    assert metric_names("quotes") == metric_names("text") == ()
    assert metric_names("my_module:build") == ("rougeL",)
    assert task_metrics("grammar", ["He is."], [["He is.", "He was."]]) == {"exact_match": 1.0, "gleu": 1.0}
    assert task_metrics("quotes", ["x"], [["y"]]) == {}
    with pytest.raises(ValueError):
        task_metrics("alpaca", ["x"], [])


def test_split_example_and_record_prompts(tiny_tokenizer):
    alpaca = get_format(DataSection(format="alpaca"), tiny_tokenizer)
    template = ALPACA_TEMPLATES["alpaca"]
    # A record without its answer: the prompt as training renders it, no references.
    item = record_prompt(alpaca, {"instruction": "Name a fruit.", "input": "red"}, WHERE)
    assert item.prompt == template["prompt_input"].format(instruction="Name a fruit.", input="red")
    assert item.references is None
    item = record_prompt(alpaca, {"instruction": "Name a fruit.", "output": "An apple."}, WHERE)
    assert item.prompt == template["prompt_no_input"].format(instruction="Name a fruit.")
    assert item.references == ["An apple."]
    # train_on_inputs trains the prompt too; the answer is still the last trained segment.
    both = get_format(DataSection(format="alpaca", train_on_inputs=True), tiny_tokenizer)
    assert record_prompt(both, {"instruction": "Name a fruit.", "output": "An apple."}, WHERE) == item

    grammar = get_format(DataSection(format="grammar"), tiny_tokenizer)
    jfleg = {"sentence": "He go.", "corrections": ["He goes.", "He went."]}
    item = record_prompt(grammar, jfleg, WHERE)
    assert item.prompt == grammar.generation_prompt("He go.") and item.references == ["He goes.", "He went."]
    assert record_prompt(grammar, {"sentence": "He go."}, WHERE).references is None

    chat = get_format(DataSection(format="chat"), tiny_tokenizer)
    asked = {"messages": [{"role": "user", "content": "Hi?"}]}
    assert record_prompt(chat, asked, WHERE).prompt == chat.generation_prompt("Hi?")
    answered = {"messages": [*asked["messages"], {"role": "assistant", "content": "Hello."}]}
    item = record_prompt(chat, answered, WHERE)
    assert item.prompt == chat.generation_prompt("Hi?") and item.references == ["Hello."]

    quotes = get_format(DataSection(format="quotes"), tiny_tokenizer)
    assert split_example(quotes.render({"quote": "q", "author": "a"}, WHERE)[0]) is None
    with pytest.raises(UserError, match="plain text with no prompt"):
        record_prompt(quotes, {"quote": "q", "author": "a"}, WHERE)


def test_read_prompts(tiny_tokenizer, tmp_path):
    alpaca = get_format(DataSection(format="alpaca"), tiny_tokenizer)
    path = tmp_path / "prompts.jsonl"
    path.write_text('Name a fruit.\n\n{"instruction": "Add.", "input": "2 and 2", "output": "4"}\n')
    items = read_prompts(path, alpaca)
    assert [i.prompt for i in items] == [
        alpaca.generation_prompt("Name a fruit."),
        ALPACA_TEMPLATES["alpaca"]["prompt_input"].format(instruction="Add.", input="2 and 2"),
    ]
    assert items[1].references == ["4"]
    raw = tmp_path / "raw.txt"
    raw.write_text("one\ntwo\n")
    assert [i.prompt for i in read_prompts(raw, None)] == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('ok\n{"instruction": \n')
    with pytest.raises(UserError, match="bad.jsonl row 2 is not valid JSON"):
        read_prompts(bad, alpaca)
    with pytest.raises(UserError, match="not found"):
        read_prompts(tmp_path / "missing.txt", alpaca)
    with pytest.raises(UserError, match="row 3: field 'instruction' is missing"):
        read_prompts(_lines(tmp_path, ["a", "b", '{"input": "x"}']), alpaca)


def _lines(tmp_path, lines):
    path = tmp_path / "lines.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validation_prompts_of_a_run(tiny_tokenizer, tmp_path):
    records = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "a.jsonl", records)
    bundle = prepare_data(DataSection(format="alpaca", path=str(path), val_set_size=3), tiny_tokenizer, 0)
    template = ALPACA_TEMPLATES["alpaca"]["prompt_no_input"]
    assert len(bundle.val_prompts) == 3 == len(bundle.val)
    for prompt, references in bundle.val_prompts:
        number = references[0]
        assert prompt == template.format(instruction=f"Say {number}.")
    # Every record held out (llmft eval on other data): all records, none trained on.
    whole = prepare_data(DataSection(format="alpaca", path=str(path)), tiny_tokenizer, 0, hold_out_all=True)
    assert len(whole.val) == len(whole.val_prompts) == 10 and len(whole.train) == 0
    quotes = prepare_data(DataSection(format="quotes", max_samples=20), tiny_tokenizer, 0)
    assert quotes.val is not None and quotes.val_prompts == []


def test_generation_leaves_the_rng_stream_alone(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from llmft.inference.generate import generate_completions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    kwargs = dict(max_new_tokens=4, device=torch.device("cpu"))
    greedy = generate_completions(model, tiny_tokenizer, "The", **kwargs)
    sampled = generate_completions(model, tiny_tokenizer, "The", do_sample=True, top_k=5, seed=3,
                                   num_return_sequences=2, **kwargs)  # fmt: skip
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.training  # restored after eval mode
    assert generate_completions(model, tiny_tokenizer, "The", **kwargs) == greedy
    again = generate_completions(model, tiny_tokenizer, "The", do_sample=True, top_k=5, seed=3,
                                 num_return_sequences=2, **kwargs)  # fmt: skip
    assert len(sampled) == 2 and again == sampled
