"""Reading and checking a checkpoint before any work: each bad file is a one-line error naming it."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.checkpoint.layout import CONFIG_FILE, FORMAT_VERSION, GROUPS_FILE, RNG_DIR, STATE_DIR, STATE_FILE
from llmft.errors import UserError


@dataclass
class CheckpointInfo:
    path: Path
    state: dict[str, Any]  # trainer_state.json
    config: dict[str, Any]  # llmft_config.yaml, as plain data


def read_info(path: Path) -> CheckpointInfo:
    """The checkpoint's trainer state and config; a missing or unreadable file is a UserError naming it."""
    import yaml

    state_file = path / STATE_FILE
    config_file = path / CONFIG_FILE
    for item in (state_file, config_file):
        if not item.is_file():
            raise UserError(f"checkpoint file '{item}' is missing; resume from another checkpoint") from None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} llmft trainer state")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(
            f"checkpoint file '{state_file}' is corrupted ({exc}); resume from another checkpoint"
        ) from None
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(
            f"checkpoint file '{config_file}' is corrupted ({exc}); resume from another checkpoint"
        ) from None
    return CheckpointInfo(path, state, config)


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or damaged safetensors file before DCP reads it, naming the file.

    The format is an 8-byte little-endian header length, a JSON header whose ``data_offsets`` give each
    tensor's byte range, then the data: the file must be exactly as long as the header says. (The
    safetensors library checks this only when it reads each tensor, with a message that names no file.)
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"{size} bytes, expected {8 + header_len + end}")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise UserError(
            f"checkpoint file '{path}' is corrupted or truncated ({exc}); resume from another checkpoint"
        ) from None


def verify_checkpoint(path: Path) -> CheckpointInfo:
    """Read and check every file of a checkpoint before any work (a one-line error names the bad one)."""
    info = read_info(path)
    state_dir = path / STATE_DIR
    files = sorted(state_dir.glob("*.safetensors")) if state_dir.is_dir() else []
    if not files:
        raise UserError(
            f"checkpoint folder '{state_dir}' holds no .safetensors files; resume from another checkpoint"
        ) from None
    for name in _expected_state_files(info.state):
        if not (state_dir / name).is_file():
            raise UserError(
                f"checkpoint file '{state_dir / name}' is missing (the checkpoint was written by "
                f"{info.state.get('world_size')} process(es), each with a file of its own); restore it or "
                f"resume from another checkpoint"
            ) from None
    for file in files:
        check_safetensors(file)
    groups_file = path / GROUPS_FILE
    try:
        json.loads(groups_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"checkpoint file '{groups_file}' is missing or corrupted ({exc}); resume from another checkpoint"
        ) from None
    for rng_file in sorted((path / RNG_DIR).glob("rank-*.json")):
        try:
            state = json.loads(rng_file.read_text(encoding="utf-8"))
            missing = {"torch", "python", "numpy"} - set(state)
            if missing:
                raise ValueError(f"no {', '.join(sorted(missing))} state")
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(
                f"checkpoint file '{rng_file}' is corrupted ({exc}); resume from another checkpoint"
            ) from None
    return info


def _expected_state_files(state: dict[str, Any]) -> list[str]:
    """The tensor files a checkpoint must hold: those it recorded, else (a checkpoint written before
    they were recorded) one per rank of an FSDP run, in DCP's naming (shards numbered from 1)."""
    if isinstance(state.get("state_files"), list):
        return [str(name) for name in state["state_files"]]
    if state.get("strategy") == "fsdp":
        return [
            f"shard-{rank + 1:05d}-model-00001-of-00001.safetensors"
            for rank in range(int(state["world_size"]))
        ]
    return []


def dcp_failure(exc: BaseException) -> str:
    """The gist of a DCP load failure in one line: DCP wraps each rank's error in CheckpointException
    (a BaseException), whose text holds tracebacks."""
    text = " ".join(str(exc).split())
    missing = re.search(r"Missing key in checkpoint state_dict: ([\w.]+?)\.?(?:\s|$)", text)
    if missing:
        return f"it has no '{missing.group(1)}'"
    size = re.search(r"Size mismatch between saved (torch\.Size\(\[[\d, ]*\]\)) and current: "
                     r"(torch\.Size\(\[[\d, ]*\]\)) for ([\w.]+?)\.?(?:\s|$)", text)  # fmt: skip
    if size:
        return f"'{size.group(3)}' has the shape {size.group(1)[11:-1]} there, {size.group(2)[11:-1]} here"
    return text[:300]
