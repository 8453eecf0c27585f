"""The benchmark's shared workload: one model, one data set, one FLOP count and one loss scorer.

Every tool of the side-by-side run trains the same randomly initialised LLaMA (about 7.8M parameters,
the ``tiny-llama`` preset's tokenizer) on the same alpaca-style records, and every tool's result is
scored here, by the same code, so the numbers compare like for like:

- the records are generated deterministically from a seed, with a log-uniform spread of lengths
  between 24 and 512 tokens (real alpaca data is also long-tailed: most records are short);
- tokenization is llmft's own alpaca path (prompt masked with -100, response and EOS trained); the
  peers receive the very same ``input_ids``/``labels`` lists, pre-tokenized;
- the FLOP numerator is llmft's ``flops_model`` (6N full, 4N + 6 per adapter parameter, attention as
  PaLM counts it) evaluated per *document*: the useful work, which is the same whichever way a tool
  batches it (padding FLOPs are not counted, and packed documents do not attend to each other);
- eval loss (and a train-subset loss) come from one scorer: the saved model or adapter loaded with
  plain transformers/PEFT, fp32, loss per target token over the whole set.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

# The benchmark model: LLaMA block (RMSNorm, rotary GQA attention, SwiGLU), 4 layers of width 384.
# With the preset's 1948-token vocabulary this is 7.8M parameters (untied embeddings and head).
BENCH_ARCHITECTURE = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
INIT_STD = 0.05  # as the tiny-llama preset: a random model whose loss moves within a few hundred steps
MIN_TOKENS, MAX_TOKENS = 24, 512
PROMPT_TEMPLATE = "alpaca_short"  # llmft's short alpaca template: "### Instruction: ... ### Response:"

_WORD_TEXT = (
    "apple river stone light green quick slow bright cold warm paper glass metal cloud rain wind sun moon "
    "star tree leaf root seed bird fish horse dog cat mouse house road bridge city field garden window "
    "door table chair book letter number music song voice story dream water fire earth sky ocean island "
    "mountain valley forest desert winter summer spring autumn morning evening night day week year red "
    "blue yellow black white small large old new happy sad early late strong soft loud quiet open close "
    "read write build carry find keep make move play run sing walk watch learn teach count sort list"
)
_WORDS = _WORD_TEXT.split()
_TASKS = (
    ("Repeat the words.", lambda words: words),
    ("Reverse the words.", lambda words: words[::-1]),
    ("Sort the words.", sorted),
    ("Say each word twice.", lambda words: [w for w in words for _ in range(2)]),
)


def build_model(folder: Path) -> Path:
    """Write the benchmark model (random init, seeded by parameter name) and the preset's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmft.models.presets import PRESETS, _tokenizer_dir, deterministic_init_

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(PRESETS["tiny-llama"]))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **BENCH_ARCHITECTURE,
    )
    model = LlamaForCausalLM(config)
    deterministic_init_(model, seed=0, std=INIT_STD)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _record(rng: random.Random, num_words: int) -> dict[str, str]:
    instruction, transform = rng.choice(_TASKS)
    words = [rng.choice(_WORDS) for _ in range(num_words)]
    return {"instruction": instruction, "input": " ".join(words), "output": " ".join(transform(words))}


def generate_records(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` alpaca records whose sizes spread log-uniformly over about 24-512 tokens.

    Each record draws a target length log-uniformly and gets as many words as fit it (about 2.5 tokens a
    word, input and output, after the template's ~16 tokens); the exact lengths are llmft's own
    tokenization (:func:`make_dataset` keeps only records inside 24-512).
    """
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        target = math.exp(rng.uniform(math.log(MIN_TOKENS), math.log(MAX_TOKENS)))
        if target < 48:  # too short for an input: a no-input record (alpaca has many)
            words = [rng.choice(_WORDS) for _ in range(max(1, int((target - 20) / 3)))]
            records.append({"instruction": "Name some things.", "input": "", "output": " ".join(words)})
        else:
            records.append(_record(rng, max(1, int((target - 16) / 5.5))))
    return records


def make_dataset(folder: Path, model_dir: Path, num_train: int, num_eval: int, seed: int):
    """Write ``train.jsonl`` and ``eval.jsonl`` under ``folder``; returns their tokenizations.

    Records whose exact token count falls outside 24-512 are dropped before the split, so every tool
    sees exactly these files (or their tokens) and nothing is truncated.
    """
    wanted = num_train + num_eval
    candidates = generate_records(int(wanted * 1.3) + 8, seed)
    every = tokenize_records(write_jsonl(folder / "candidates.jsonl", candidates), model_dir)
    keep = [i for i, n in enumerate(every.lengths) if MIN_TOKENS <= n < MAX_TOKENS][:wanted]
    if len(keep) < wanted:
        raise RuntimeError(f"only {len(keep)} of {wanted} generated records fit 24-512 tokens")
    (folder / "candidates.jsonl").unlink()
    splits = {}
    for name, chosen in (("train", keep[:num_train]), ("eval", keep[num_train:])):
        write_jsonl(folder / f"{name}.jsonl", [candidates[i] for i in chosen])
        splits[name] = Tokenized([every.input_ids[i] for i in chosen], [every.labels[i] for i in chosen])
    return splits["train"], splits["eval"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@dataclass
class Tokenized:
    """Tokenized examples of one JSONL file, exactly as ``llmft finetune`` builds them."""

    input_ids: list[list[int]]
    labels: list[list[int]]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def tokenize_records(path: Path, model_dir: Path, max_seq_len: int = MAX_TOKENS) -> Tokenized:
    """llmft's alpaca tokenization of ``path`` (prompt masked; response and EOS trained)."""
    from transformers import AutoTokenizer

    from llmft.config.schema import DataSection
    from llmft.data.pipeline import prepare_data

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    section = DataSection(
        format="alpaca",
        path=str(path),
        prompt_template=PROMPT_TEMPLATE,
        val_set_size=0,
        max_seq_len=max_seq_len,
    )
    examples = prepare_data(section, tokenizer, seed=0).train_examples
    return Tokenized([e.input_ids for e in examples], [e.labels for e in examples])


def useful_flops(model_dir: Path, method: str, lengths: list[int], lora_r: int = 16) -> dict[str, float]:
    """Training FLOPs of one pass over documents of ``lengths``, by llmft's own formula.

    ``sum over documents of len * (dense + attention_per_position * len)``: each document attends only
    to itself, as in a padded row or a packed row without cross-document attention. Padding costs a
    padded tool compute, but is not useful work, so it is not in the numerator (the MFU convention).
    """
    from llmft.memory.architectures import resolve_shape
    from llmft.memory.flops import flops_model
    from llmft.memory.params import MethodSpec, inventory

    shape = resolve_shape(str(model_dir))
    spec = MethodSpec("lora", lora_r=lora_r) if method == "lora" else MethodSpec("full")
    flops = flops_model(shape, inventory(shape, spec, "fp32"))
    total = sum(n * flops.per_token(n) for n in lengths)
    return {
        "total": total,
        "dense_per_token": flops.dense,
        "attention_per_token_per_position": flops.attention_per_position,
        "parameters": float(sum(t.numel for t in inventory(shape, MethodSpec("full"), "fp32").tensors)),
    }


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 8, rounds: int = 3) -> float:
    """This machine's matmul throughput in ``dtype`` (FLOP/s): the best of llmft's measurement, repeated.

    The machine may be shared; the best of several rounds is the closest to what the cores can do.
    """
    from llmft.train.observe import measure_cpu_peak

    return max(measure_cpu_peak(dtype, size, repeats) for _ in range(rounds))


@torch.no_grad()
def score(output_dir: Path, base_dir: Path, data: Tokenized, batch_size: int = 8) -> float:
    """Mean loss per target token of ``data`` under the model a tool saved in ``output_dir``.

    The saved artifact is loaded with plain transformers (a full model) or PEFT (an adapter on
    ``base_dir``), run in fp32 with padded batches, and every target token counts once; the same code
    scores every tool.
    """
    from transformers import AutoModelForCausalLM

    if (output_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, output_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)
    model.eval()
    total, targets = 0.0, 0
    order = sorted(range(len(data.input_ids)), key=lambda i: data.lengths[i])  # little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(data.lengths[i] for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = data.lengths[i]
            ids[row, :n] = torch.tensor(data.input_ids[i])
            labels[row, :n] = torch.tensor(data.labels[i])
            mask[row, :n] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shifted = labels[:, 1:]
        total += float(
            torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), reduction="sum"
            )
        )
        targets += int((shifted != -100).sum())
    return total / max(targets, 1)
