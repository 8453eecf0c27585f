"""Build the byte-level BPE tokenizer of the tiny-llama preset (run once; the output is committed).

    python scripts/build_tiny_tokenizer.py [--vocab-size 2048]

It trains on the bundled english-quotes sample and writes tokenizer.json and tokenizer_config.json
into src/llmft/models/presets/tiny_llama/. Byte-level BPE covers any UTF-8 text, so the tokenizer
also serves data it was not trained on (with more tokens per word). Training is deterministic for a
given `tokenizers` release; the committed files, not this script, define the preset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src/llmft/data/samples/english_quotes.jsonl"
TARGET = ROOT / "src/llmft/models/presets/tiny_llama"
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def corpus() -> list[str]:
    lines = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        lines.append(f"{record['quote']} ― {record['author']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    # Like LLaMA: every sequence starts with BOS; EOS is added by the data pipeline where it trains.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.model_max_length = 1024
    TARGET.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(TARGET)
    config_path = TARGET / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # The class name that both transformers 4 and 5 resolve to their fast tokenizer.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {TARGET} (vocab {tokenizer.get_vocab_size()})")


if __name__ == "__main__":
    main()
