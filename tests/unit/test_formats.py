"""Formats token by token: alpaca, grammar, chat, classification, text, plug-ins; templates; bad rows."""

from __future__ import annotations

import json

import pytest

from helpers import write_jsonl
from llmft.config import DataSection
from llmft.data.formats import RowContext, get_format
from llmft.data.instruct import ALPACA_TEMPLATES, GRAMMAR_TEMPLATE
from llmft.data.pipeline import prepare_data
from llmft.data.tokenize import IGNORE_INDEX, SpecialIds, tokenize_segments
from llmft.errors import UserError

WHERE = RowContext("data.jsonl", 1)
WITH_INPUT = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."}
NO_INPUT = {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _tokenize(fmt, record, tokenizer, max_seq_len=512):
    (segments,) = fmt.render(record, WHERE)
    return segments, tokenize_segments(
        segments, tokenizer, SpecialIds.of(tokenizer), max_seq_len, fmt.adds_eos
    )


@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT], ids=["with-input", "no-input"])
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_alpaca_prompt_mask_and_eos(tiny_tokenizer, record, train_on_inputs):
    fmt = get_format(DataSection(format="alpaca", train_on_inputs=train_on_inputs), tiny_tokenizer)
    segments, example = _tokenize(fmt, record, tiny_tokenizer)
    template = ALPACA_TEMPLATES["alpaca"]["prompt_input" if record["input"] else "prompt_no_input"]
    prompt = template.format(instruction=record["instruction"], input=record["input"])
    assert segments[0].text == prompt and segments[1].text == record["output"]
    prompt_ids, output_ids = _ids(tiny_tokenizer, prompt), _ids(tiny_tokenizer, record["output"])
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    assert example.input_ids == [bos, *prompt_ids, *output_ids, eos]
    masked_prompt = prompt_ids if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    assert example.labels == [IGNORE_INDEX, *masked_prompt, *output_ids, eos]  # EOS is a target
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    if not train_on_inputs:
        assert tiny_tokenizer.decode(trained, skip_special_tokens=True) == record["output"]


def test_alpaca_truncation_keeps_alignment(tiny_tokenizer):
    fmt = get_format(DataSection(format="alpaca"), tiny_tokenizer)
    _, full = _tokenize(fmt, WITH_INPUT, tiny_tokenizer)
    n_prompt = 1 + len(_ids(tiny_tokenizer, fmt.render(WITH_INPUT, WHERE)[0][0].text))
    cut_len = n_prompt + 2  # two response tokens survive, EOS does not
    _, cut = _tokenize(fmt, WITH_INPUT, tiny_tokenizer, max_seq_len=cut_len)
    assert cut.truncated and cut.input_ids == full.input_ids[:cut_len] and cut.labels == full.labels[:cut_len]
    assert cut.labels[-2:] == cut.input_ids[-2:] and tiny_tokenizer.eos_token_id not in cut.input_ids


def test_alpaca_templates_by_name_and_file(tiny_tokenizer, tmp_path):
    short = get_format(DataSection(format="alpaca", prompt_template="alpaca_short"), tiny_tokenizer)
    assert (
        short.render(NO_INPUT, WHERE)[0][0].text
        == "### Instruction:\nName a primary colour.\n\n### Response:\n"
    )
    custom = tmp_path / "mine.json"
    custom.write_text(
        json.dumps(
            {"prompt_input": "Q: {instruction} ({input})\nA:", "prompt_no_input": "Q: {instruction}\nA:"}
        )
    )
    fmt = get_format(DataSection(format="alpaca", prompt_template=str(custom)), tiny_tokenizer)
    assert fmt.render(WITH_INPUT, WHERE)[0][0].text == "Q: Add the numbers. (2 and 3)\nA:"
    assert fmt.generation_prompt("Say hi.") == "Q: Say hi.\nA:"

    bad_key = tmp_path / "bad_key.json"
    bad_key.write_text(
        json.dumps({"prompt_input": "{instruction} {context}", "prompt_no_input": "{instruction}"})
    )
    fmt = get_format(DataSection(format="alpaca", prompt_template=str(bad_key)), tiny_tokenizer)
    with pytest.raises(
        UserError,
        match=r"data.prompt_template prompt_input \(data.jsonl row 1\): template key \{context\} does not exist",
    ):
        fmt.render(WITH_INPUT, WHERE)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"prompt_input": "{instruction}"}))
    with pytest.raises(UserError, match="has no text key 'prompt_no_input'"):
        get_format(DataSection(format="alpaca", prompt_template=str(missing)), tiny_tokenizer)
    with pytest.raises(UserError, match="'alpacca' is neither a template name"):
        get_format(DataSection(format="alpaca", prompt_template="alpacca"), tiny_tokenizer)


def test_grammar_pairs_and_jfleg_records(tiny_tokenizer):
    fmt = get_format(DataSection(format="grammar"), tiny_tokenizer)
    segments, example = _tokenize(fmt, {"input": "He go home.", "target": "He goes home."}, tiny_tokenizer)
    prompt = GRAMMAR_TEMPLATE.format(input="He go home.")
    assert [s.text for s in segments] == [prompt, "He goes home."]
    eos = tiny_tokenizer.eos_token_id
    # The joined text is tokenized once: the prompt's trailing space joins the target's first word
    # (" He"), and that token, straddling the edge, is trained.
    assert example.input_ids == [
        tiny_tokenizer.bos_token_id,
        *_ids(tiny_tokenizer, prompt + "He goes home."),
        eos,
    ]
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    untrained = [t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX]
    assert tiny_tokenizer.decode(trained) == " He goes home.</s>"
    assert tiny_tokenizer.decode(untrained) == "<s>" + prompt.rstrip()
    assert example.labels[-len(trained) :] == trained  # targets are one run at the end

    jfleg = {
        "sentence": "She like apple.",
        "corrections": ["She likes apples.", "She likes apples.", "She liked apples.", " "],
    }
    examples = fmt.render(jfleg, WHERE)
    assert [[s.text for s in e] for e in examples] == [
        [GRAMMAR_TEMPLATE.format(input="She like apple."), "She likes apples."],
        [GRAMMAR_TEMPLATE.format(input="She like apple."), "She liked apples."],
    ]
    assert fmt.references(jfleg, WHERE) == ["She likes apples.", "She liked apples."]
    first_only = get_format(DataSection(format="grammar", expand_corrections=False), tiny_tokenizer)
    assert len(first_only.render(jfleg, WHERE)) == 1
    with pytest.raises(UserError, match="row 1: field 'corrections' must be a list of texts, got str"):
        fmt.render({"sentence": "x", "corrections": "y"}, WHERE)


def test_grammar_split_is_per_record_before_expansion(tiny_tokenizer, tmp_path):
    records = [
        {
            "sentence": f"sentence {i} are wrong.",
            "corrections": [f"Sentence {i} is wrong.", f"Sentence {i} was wrong."],
        }
        for i in range(10)
    ]
    path = write_jsonl(tmp_path / "jfleg.jsonl", records)
    bundle = prepare_data(
        DataSection(format="grammar", path=str(path), val_set_size=3), tiny_tokenizer, seed=0
    )
    assert (bundle.stats.records, bundle.stats.examples) == (10, 7 * 2 + 3)
    assert len(bundle.train) == 14 and len(bundle.val) == 3
    val_prompts = {prompt for prompt, _ in bundle.references}
    assert len(bundle.references) == 3 and all(len(refs) == 2 for _, refs in bundle.references)
    train_text = {tiny_tokenizer.decode(e.input_ids, skip_special_tokens=True) for e in bundle.train.examples}
    assert not any(text.startswith(prompt) for text in train_text for prompt in val_prompts)


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6."},
    ]
}


def test_chat_trains_only_assistant_turns(tiny_tokenizer):
    fmt = get_format(DataSection(format="chat"), tiny_tokenizer)
    segments, example = _tokenize(fmt, CONVERSATION, tiny_tokenizer)
    rendered = tiny_tokenizer.apply_chat_template(CONVERSATION["messages"], tokenize=False)
    assert "".join(s.text for s in segments) == rendered
    assert [s.text for s in segments if s.trained] == ["4.</s>", "6.</s>"]
    # Token by token: exactly the assistant contents and the EOS closing each of their turns train.
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    eos = tiny_tokenizer.eos_token_id
    assert trained == [*_ids(tiny_tokenizer, "4."), eos, *_ids(tiny_tokenizer, "6."), eos]
    assert (
        example.input_ids[0] == tiny_tokenizer.bos_token_id
        and example.input_ids.count(tiny_tokenizer.bos_token_id) == 1
    )
    assert example.input_ids[-1] == eos  # the template's own end of turn, not a second EOS
    for i, label in enumerate(example.labels):
        assert label in (IGNORE_INDEX, example.input_ids[i])  # labels stay aligned with inputs
    assert fmt.generation_prompt("Hi") == "<|user|>\nHi</s>\n<|assistant|>\n"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hello", "field 'messages' must be a non-empty list"),
        ([{"role": "user", "content": "hi"}], "has no assistant message"),
        ([{"role": "bot", "content": "hi"}], r"field 'messages\[0\].role' is 'bot'"),
        (
            [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}],
            r"messages\[0\].content' must be non-empty",
        ),
    ],
)
def test_chat_bad_records(tiny_tokenizer, messages, message):
    with pytest.raises(UserError, match=message):
        get_format(DataSection(format="chat"), tiny_tokenizer).render({"messages": messages}, WHERE)


def test_chat_needs_a_template(tiny_tokenizer, tmp_path):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="data.chat_template: the model's tokenizer has no chat template"):
        get_format(DataSection(format="chat"), tokenizer)
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    fmt = get_format(DataSection(format="chat", chat_template=str(template)), tokenizer)
    (segments,) = fmt.render(CONVERSATION, WHERE)
    assert [s.text for s in segments if s.trained] == ["4.</s>", "6.</s>"]


def test_classification_text_and_plugin(tiny_tokenizer, tmp_path, monkeypatch):
    fmt = get_format(DataSection(format="classification"), tiny_tokenizer)
    (segments,) = fmt.render({"text": "Great phone.", "label": "positive"}, WHERE)
    assert [(s.text, s.trained) for s in segments] == [
        ("Text: Great phone.\nLabel:", False),
        (" positive", True),
    ]
    assert fmt.render({"text": "x", "label": 2}, WHERE)[0][1].text == " 2"
    with pytest.raises(UserError, match="row 1: field 'label' must be a class name or an integer, got bool"):
        fmt.render({"text": "x", "label": True}, WHERE)

    text = get_format(DataSection(format="text", text_field="body"), tiny_tokenizer)
    assert text.render({"body": " Hello there. "}, WHERE) == [[("Hello there.", True)]]

    (tmp_path / "my_fmt.py").write_text(
        "def qa(record):\n    return {'prompt': 'Q: ' + record['q'] + '\\nA: ', 'completion': record['a']}\n"
        "def pairs(record):\n    return [('x', False), ('y', True)]\n"
        "def many(record):\n    return ['one', 'two']\n"
        "def broken(record):\n    return 42\n"
        "def crash(record):\n    raise KeyError('q')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = get_format(DataSection(format="my_fmt:qa"))
    assert plugin.render({"q": "Why?", "a": "Because."}, WHERE) == [
        [("Q: Why?\nA: ", False), ("Because.", True)]
    ]
    assert get_format(DataSection(format="my_fmt:pairs")).render({}, WHERE) == [[("x", False), ("y", True)]]
    assert get_format(DataSection(format="my_fmt:many")).render({}, WHERE) == [
        [("one", True)],
        [("two", True)],
    ]
    with pytest.raises(UserError, match="row 1: data.format my_fmt:broken returned int 42"):
        get_format(DataSection(format="my_fmt:broken")).render({}, WHERE)
    with pytest.raises(UserError, match="row 1: data.format my_fmt:crash raised KeyError"):
        get_format(DataSection(format="my_fmt:crash")).render({}, WHERE)
    with pytest.raises(UserError, match="cannot import module 'no_such_module'"):
        get_format(DataSection(format="no_such_module:fn"))
    with pytest.raises(UserError, match="'my_fmt' has no function 'nope'"):
        get_format(DataSection(format="my_fmt:nope"))


@pytest.mark.parametrize(
    ("fmt", "record", "message"),
    [
        (
            "alpaca",
            {"instruction": "Do it.", "input": "", "output": 3},
            "row 2: field 'output' must be text, got int",
        ),
        ("alpaca", {"instruction": " ", "input": "", "output": "x"}, "row 2: field 'instruction' is empty"),
        ("grammar", {"input": "x", "target": None}, "row 2: field 'target' is missing or null"),
        ("classification", {"text": "x", "label": None}, "row 2: field 'label' is missing or null"),
    ],
)
def test_bad_rows_name_file_row_and_field(tiny_tokenizer, tmp_path, fmt, record, message):
    good = {
        "alpaca": NO_INPUT,
        "grammar": {"input": "a", "target": "b"},
        "classification": {"text": "a", "label": "b"},
    }[fmt]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(UserError, match=f"bad.jsonl {message}"):
        prepare_data(DataSection(format=fmt, path=str(path), val_set_size=0), tiny_tokenizer, seed=0)


def test_column_map_and_missing_columns(tiny_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"bad": "He go.", "good": "He goes."}] * 3)
    with pytest.raises(UserError, match="needs columns input and target .* \\(its columns: bad, good\\)"):
        prepare_data(DataSection(format="grammar", path=str(path), val_set_size=0), tiny_tokenizer, seed=0)
    cfg = DataSection(
        format="grammar", path=str(path), val_set_size=0, column_map={"bad": "input", "good": "target"}
    )
    assert prepare_data(cfg, tiny_tokenizer, seed=0).stats.examples == 3
    with pytest.raises(UserError, match="data.column_map: '.*pairs.jsonl' has no column 'wrong' to rename"):
        prepare_data(cfg.model_copy(update={"column_map": {"wrong": "input"}}), tiny_tokenizer, seed=0)
    # On the command line the mapping is YAML; a key=value pair gets an error showing the YAML to write.
    from llmft.config.loader import load_config, parse_overrides

    assert load_config(None, parse_overrides(["--data.column_map", "{bad: input}"])).data.column_map == {
        "bad": "input"
    }
    with pytest.raises(UserError) as info:
        load_config(None, parse_overrides(["--data.column_map", "bad=input,good=target"]))
    assert (
        "data.column_map: expected a mapping, got 'bad=input,good=target'; write it as YAML: "
        "--data.column_map '{bad: input, good: target}'"
    ) in str(info.value)


def test_segments_tokenize_as_the_joined_text_with_sentencepiece_style_tokenizers():
    # LLaMA-1/2 tokenizers (Metaspace) would start every separately tokenized segment with a word
    # marker; the joined text has none after "\n", and generation sees the joined text.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmft.data.formats import Segment

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    corpus = ["### Response:\nHello world", "Hello there"] * 50
    tk.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    segments = [Segment("### Response:\n", False), Segment("Hello world", True)]
    example = tokenize_segments(segments, tokenizer, SpecialIds(None, tokenizer.eos_token_id), 100)
    whole = tokenizer("### Response:\nHello world", add_special_tokens=False)["input_ids"]
    assert example.input_ids == [*whole, tokenizer.eos_token_id]
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained[:-1]).endswith("Hello world") and trained[-1] == tokenizer.eos_token_id
    assert example.labels[0] == IGNORE_INDEX  # the prompt's first token is not a target
    # Separately tokenized, the response would start with a word marker the joined text does not have.
    separate = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(separate)[0].startswith("\u2581")
    assert not any(t.startswith("\u2581Hello") for t in tokenizer.convert_ids_to_tokens(example.input_ids))
