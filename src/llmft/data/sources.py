"""Record sources, all read through the `datasets` library.

``data.path`` may be a local JSON / JSONL / CSV / Parquet file, a folder written by
``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``), a folder of data files, or a hub dataset id.
A folder of data files and a hub id go through the same ``datasets.load_dataset`` call, which is how
the hub path is tested offline. Empty: the format's bundled sample.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from llmft.errors import UserError

# File suffix -> `datasets` builder name.
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def bundled_sample(file_name: str) -> Path:
    """Path of a sample shipped inside the package (llmft/data/samples)."""
    return Path(str(resources.files("llmft.data").joinpath("samples", file_name)))


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"}
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _looks_like_path(value: str) -> bool:
    # A hub id is `name` or `owner/name`; anything with a file suffix, a leading ./ ~ /, or deeper
    # nesting is meant as a local path.
    return (
        value.startswith((".", "/", "~"))
        or Path(value).suffix.lower() in _BUILDERS
        or value.count("/") > 1
        or os.sep != "/"
        and os.sep in value
    )


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser errors become ours
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def _split_error(where: str, split: str, exc: BaseException) -> UserError | None:
    text = str(exc)
    if (
        "Unknown split" in text
        or "Bad split" in text
        or "split" in text.lower()
        and "should be one of" in text
    ):
        return UserError(
            f"data.split: '{split}' is not a split of {where} ({_reason(exc)}); e.g. --data.split train"
        )
    return None


def _json_syntax_error(path: Path) -> str | None:
    """Where a JSON or JSON-lines file breaks, as 1-based line and column (the row numbers llmft's own
    row errors use), or None when Python's parser finds no syntax error.

    The `datasets` JSON reader (pyarrow) reports a byte position within a block, which a user cannot
    find; the standard parser re-reads the file here, only after it failed to load.
    """
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    try:
        json.loads(text)
        return None  # one valid JSON document: not a syntax problem
    except json.JSONDecodeError as whole:
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        try:
            json_lines = first is not None and isinstance(json.loads(lines[first]), dict)
        except json.JSONDecodeError:
            json_lines = False
        if not json_lines:  # one document (an array or object over several lines)
            return f"line {whole.lineno}, column {whole.colno}: {whole.msg}"
        for number, line in enumerate(lines, start=1):  # JSON lines: one record per line
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"line {number}, column {exc.colno}: {exc.msg}"
    return None


def _parquet_rows(path: Path) -> int | None:
    """Rows of a Parquet file from its footer, or None when the footer is unreadable (the loader then
    reports why); a file with none would otherwise fail deep inside the reader ("BatchSize ... 0")."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # a corrupt or empty file: load_dataset's own message names the problem
        return None


def _load_file(path: Path, split: str):
    import datasets

    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(
            f"data.path: '{path}' has suffix '{path.suffix}'; use one of {', '.join(sorted(_BUILDERS))}, a "
            f"save_to_disk folder or a hub dataset id"
        )
    if (
        builder != "parquet"
        and not path.read_bytes().strip()
        or builder == "parquet"
        and _parquet_rows(path) == 0
    ):
        raise UserError(f"data.path: '{path}' holds no records")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split=split)
    except Exception as exc:  # datasets wraps parser errors in several exception types
        if "corresponds to no data" in str(exc):  # e.g. a CSV with a header and no rows
            raise UserError(f"data.path: '{path}' holds no records") from None
        error = _split_error(f"'{path}' (a single file is split 'train')", split, exc)
        if error:
            raise error from None
        reason = (_json_syntax_error(path) if builder == "json" else None) or _reason(exc)
        raise UserError(f"data.path: '{path}' could not be read as {builder.upper()}: {reason}") from None


def _load_saved(path: Path, split: str):
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(
            f"data.path: '{path}' is not a readable save_to_disk folder: {_reason(exc)}"
        ) from None
    if isinstance(saved, datasets.DatasetDict):
        base = split.split("[", 1)[0]
        if base not in saved:
            raise UserError(
                f"data.split: '{base}' is not a split of '{path}' (its splits: {', '.join(saved)})"
            )
        chosen = saved[base]
        return chosen.select(_slice(split, len(chosen), path)) if base != split else chosen
    if split not in ("train", "") and not split.startswith("train["):
        raise UserError(
            f"data.split: '{split}' is not a split of '{path}' (a saved Dataset has one: use train)"
        )
    return saved.select(_slice(split, len(saved), path)) if "[" in split else saved


def _slice(split: str, total: int, path: Path) -> range:
    """`train[:100]`, `train[10:20]` (records) of a saved dataset, like load_dataset's split syntax."""
    inner = split[split.index("[") + 1 : -1] if split.endswith("]") else ""
    try:
        start_text, stop_text = inner.split(":", 1)
        start, stop = int(start_text or 0), int(stop_text or total)
    except ValueError:
        raise UserError(f"data.split: '{split}' is not name[start:stop] (for '{path}')") from None
    return range(*slice(start, stop).indices(total))


def _schema_mismatch(exc: BaseException) -> bool:
    """Files of one data set with different columns or types: `datasets` casts every file to the first
    one's features (CastError) and pyarrow concatenates the tables ("Schema at index 1 was different")."""
    texts = [str(exc), str(exc.__cause__ or ""), type(exc.__cause__).__name__]
    return any(
        marker in text for text in texts for marker in ("Couldn't cast", "Schema at index", "CastError")
    )


def _cast_detail(exc: BaseException) -> str:
    """The telling line of a cast error ("because column names don't match"), else its first line."""
    lines = str(exc.__cause__ or exc).strip().splitlines()
    return lines[-1].removeprefix("because ") if lines and lines[-1].startswith("because") else _reason(exc)


def _load_hub(name: str, subset: str | None, split: str, description: str):
    import datasets

    try:
        return datasets.load_dataset(name, subset, split=split)
    except Exception as exc:
        error = _split_error(description, split, exc)
        if error:
            raise error from None
        if Path(name).is_dir() and _schema_mismatch(exc):
            raise UserError(
                f"data.path: the files in folder '{name}' do not share one schema (columns or their types "
                f"differ: {_cast_detail(exc)}); keep files of one schema in the folder, or pass one file"
            ) from None
        # Offline, `datasets` still serves a hub dataset from its cache; only a miss gets here.
        if hub_offline() and not Path(name).is_dir():
            raise UserError(
                f"data.path: '{name}' is not a local file or folder, and the hub is offline (HF_HUB_OFFLINE=1) "
                f"with no cached copy: on a machine with network run "
                f"datasets.load_dataset('{name}').save_to_disk('DIR') and pass --data.path DIR, or pass a local "
                f"JSON/JSONL/CSV/Parquet file"
            ) from None
        raise UserError(
            f"data.path: could not load {description}: {_reason(exc)}; check the name (and data.subset), or "
            f"pass a local file"
        ) from None


def load_records(
    path: str, split: str = "train", subset: str | None = None, column_map: dict[str, str] | None = None
):
    """Load the records at ``path`` as a `datasets.Dataset` and rename columns by ``column_map``.

    Raises:
        UserError: for a missing file, an unknown suffix, a file the parser rejects, an unknown split,
            an offline hub id, or a column_map naming a column that is not there.
    """
    with _quiet_datasets():
        local = Path(path).expanduser()
        if local.is_file():
            records = _load_file(local, split)
        elif local.is_dir() and any((local / m).exists() for m in _SAVED_MARKERS):
            records = _load_saved(local, split)
        elif local.is_dir():
            if not any(p.suffix.lower() in _BUILDERS for p in local.rglob("*")):
                raise UserError(
                    f"data.path: folder '{local}' holds no save_to_disk dataset and no JSON/JSONL/CSV/Parquet file"
                )
            records = _load_hub(str(local), subset, split, f"folder '{local}'")
        elif _looks_like_path(path):
            raise UserError(
                f"data.path: file '{local}' not found; pass an existing JSON/JSONL/CSV/Parquet file, a "
                f"save_to_disk folder or a hub dataset id"
            )
        else:
            records = _load_hub(path, subset, split, f"hub dataset '{path}'")
    if column_map:
        missing = [old for old in column_map if old not in records.column_names]
        if missing:
            raise UserError(
                f"data.column_map: '{path}' has no column {', '.join(repr(c) for c in missing)} to rename "
                f"(its columns: {', '.join(records.column_names)})"
            )
        records = records.rename_columns(dict(column_map))
    return records
