"""``llmft predict RUN_DIR --text ...``: label texts with a classifier run (task classification)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmft.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "predict",
        help="Label texts with a classifier run (task classification).",
        description="Label texts with a classifier run: llmft predict RUN_DIR --text '...' [--file texts.txt]",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of a run with task classification")
    parser.add_argument("--text", action="append", default=[], help="a text to label (repeatable)")
    parser.add_argument("--file", help="a file with one text per line")
    return parser


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Print ``label<TAB>probability<TAB>text`` for each text."""
    if extra:
        raise UserError(f"predict: unexpected argument {extra[0]!r}; use --text TEXT or --file FILE")
    texts = list(args.text)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"predict --file: '{path}' not found")
        texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UserError("predict: give texts with --text TEXT (repeatable) or --file FILE (one per line)")
    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise UserError(f"predict: run folder '{folder}' not found")
    import torch

    from llmft.checkpoint.loading import load_classifier
    from llmft.inference.predict import classify

    device = torch.device("cpu")
    model, tokenizer = load_classifier(folder, device)
    for text, (label, probability) in zip(texts, classify(model, tokenizer, texts, device)):
        print(f"{label}\t{probability:.3f}\t{text}")
    return 0
