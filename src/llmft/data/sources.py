"""Record sources: local files read through the `datasets` library, or a format's bundled sample."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from llmft.errors import UserError

# File suffix -> `datasets` builder name.
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def bundled_sample(file_name: str) -> Path:
    """Path of a sample shipped inside the package (llmft/data/samples)."""
    return Path(str(resources.files("llmft.data").joinpath("samples", file_name)))


def load_records(path: str | Path, columns: tuple[str, ...]):
    """Load a local data file as a `datasets.Dataset`, checking that the needed columns exist.

    Raises:
        UserError: for a missing file, an unknown suffix, a file the parser rejects, or a missing column.
    """
    import datasets  # heavy; imported when data is actually read

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data.path: file '{path}' not found; pass an existing JSON/JSONL/CSV/Parquet file")
    if path.is_dir():
        raise UserError(f"data.path: '{path}' is a folder; pass a JSON/JSONL/CSV/Parquet file")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(
            f"data.path: '{path}' has suffix '{path.suffix}'; use one of {', '.join(sorted(_BUILDERS))}"
        )
    if builder != "parquet" and not path.read_bytes().strip():
        raise UserError(f"data.path: '{path}' holds no records")
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser errors become ours, below
    try:
        records = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps parser errors in several exception types
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if "corresponds to no data" in str(exc):  # e.g. a CSV with a header and no rows
            raise UserError(f"data.path: '{path}' holds no records") from None
        raise UserError(f"data.path: '{path}' could not be read as {builder.upper()}: {reason}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    missing = [c for c in columns if c not in records.column_names]
    if missing:
        raise UserError(
            f"data.path: '{path}' has no column {', '.join(repr(c) for c in missing)} "
            f"(its columns: {', '.join(records.column_names) or 'none'})"
        )
    return records
