"""Shared fixtures: offline hub, a per-session llmft home, the tiny preset, tiny data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach the network: the hub is off, and presets live in a fresh per-session folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def llmft_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("llmft-home")
    os.environ["LLMFT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(llmft_home: Path) -> Path:
    """The tiny-llama preset as a Hugging Face folder (materialised once per session)."""
    from llmft.models.presets import PRESETS, materialize

    return materialize(PRESETS["tiny-llama"])


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
