"""The one typed configuration of a run: schema, YAML loading, dotted overrides, validation.

A run is described by a YAML file (optional) plus dotted command-line overrides such as
``--train.lr 2e-4``. Both are merged into one nested dict and validated by the pydantic schema below.
Every problem is collected and reported at once, each naming the field, the value and the fix
(``unknown key 'peft.lora.rank' - did you mean 'peft.lora.r'?``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmft.data.formats import format_problem
from llmft.errors import ConfigError

# Transformer projection names of the LLaMA family; the default LoRA targets (all linear layers of a
# block, as QLoRA recommends; alpaca-lora's [q_proj, v_proj] is one flag away).
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelSection(_Section):
    """Which model to fine-tune and how to load it."""

    name: str = Field(
        "tiny-llama",
        description="A built-in preset (tiny-llama), a local Hugging Face model folder, or a hub id.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    trust_remote_code: bool = Field(
        False, description="Allow a model folder's own Python code to run; off unless you trust it."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Storage dtype of the base weights. Trainable weights (adapters) stay float32.",
    )
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel.")


class DataSection(_Section):
    """Where the training records come from and how they become token sequences."""

    format: str = Field("quotes", description="A registered data format: quotes (english_quotes records).")
    path: str | None = Field(
        None, description="A local JSON, JSONL, CSV or Parquet file; empty: the format's bundled sample."
    )
    val_set_size: int | float = Field(
        0.1, description="Validation records held out: a count (int) or a fraction in (0, 1); 0 for none."
    )
    max_seq_len: int = Field(256, ge=8, description="Longer records are truncated (and counted).")
    max_samples: int | None = Field(None, ge=1, description="Use only the first N records.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        problem = format_problem(value)
        if problem:
            raise ValueError(problem.split(": ", 1)[1])
        return value

    @field_validator("val_set_size")
    @classmethod
    def _check_val_set_size(cls, value: int | float) -> int | float:
        if isinstance(value, float):
            if value == 0:
                return 0
            if not 0.0 < value < 1.0:
                raise ValueError("a fraction must lie in (0, 1); for a count of records use an integer")
        elif value < 0:
            raise ValueError("must be 0 (no validation split), a count, or a fraction in (0, 1)")
        return value


class LoraSection(_Section):
    """LoRA hyperparameters (HF PEFT's LoraConfig)."""

    r: int = Field(16, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: list(LLAMA_LINEAR_MODULES),
        description="Module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear'.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # `--peft.lora.target_modules q_proj,v_proj` arrives as one string.
        if isinstance(value, str) and value != "all-linear":
            return [part.strip() for part in value.strip("[]").split(",") if part.strip()]
        return value

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, e.g. [q_proj, v_proj], or use 'all-linear'")
        return value


class PeftSection(_Section):
    """Parameter-efficient method; 'none' trains the model's own weights."""

    method: Literal["lora", "none"] = Field("lora", description="'lora' or 'none' (full fine-tuning).")
    lora: LoraSection = Field(default_factory=LoraSection)


class TrainSection(_Section):
    """The optimisation: batch sizes, schedule, precision, evaluation cadence."""

    epochs: int = Field(3, ge=1, description="Passes over the training split (unless max_steps stops first).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps; overrides epochs when set."
    )
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward/backward pass per process.")
    batch_size: int = Field(
        8,
        ge=1,
        description="Global batch (sequences per optimizer step over all processes); "
        "gradient accumulation = batch_size / (micro_batch_size x world size).",
    )
    lr: float = Field(
        3e-4, gt=0, description="Peak learning rate (3e-4 suits LoRA; full fine-tuning wants about 2e-5)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (matrices only).")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_steps: int | None = Field(None, ge=0, description="Linear warmup steps; overrides warmup_ratio.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Warmup as a share of all steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine/linear decay floor, as a share of lr.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm; null: no clip."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Autocast compute dtype. auto: bf16 where the device computes it fast "
        "(CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32.",
    )
    seed: int = Field(42, description="Seeds data order, dropout and every random choice.")
    eval_every: int = Field(
        50, ge=0, description="Evaluate every N steps (and at the end); 0: only at the end."
    )
    log_every: int = Field(1, ge=1, description="Write a metrics row every N steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    progress: bool = Field(True, description="Draw a live progress bar.")

    @model_validator(mode="after")
    def _check_batch(self) -> TrainSection:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.micro_batch_size}); e.g. set --train.batch_size "
                f"{max(1, round(self.batch_size / self.micro_batch_size)) * self.micro_batch_size}"
            )
        return self


class DistributedSection(_Section):
    """Process layout. Only one process today; DDP and FSDP arrive as further strategies."""

    strategy: Literal["single"] = Field("single", description="single: one process on one device.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")


class GenerationSection(_Section):
    """The sample generated at the end of a run."""

    prompt: str | None = Field(None, description="Prompt; empty means the data format's own example.")
    max_new_tokens: int = Field(48, ge=1)
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)


class LoggingSection(_Section):
    """Where metrics go besides metrics.jsonl."""

    tensorboard: bool = True
    plot: bool = True


class Config(_Section):
    """The whole run."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection = Field(default_factory=TrainSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    output_dir: str | None = Field(
        None, description="Run folder; empty means runs/<model>-<format>-<method>."
    )

    def resolved_output_dir(self) -> Path:
        """The run folder: the configured one, or a name derived from model, data and method."""
        if self.output_dir:
            return Path(self.output_dir)
        model = Path(self.model.name.rstrip("/")).name or "model"
        fmt = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.data.format)
        return Path("runs") / f"{model}-{fmt}-{self.peft.method}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------
# Loading: YAML file + dotted overrides -> Config, with every problem reported at once.

# Names users bring from other tools, mapped onto ours for suggestions.
_SYNONYMS = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "micro_batch_size",
    "max_train_steps": "max_steps",
    "cutoff_len": "max_seq_len",
    "max_length": "max_seq_len",
    "seq_len": "max_seq_len",
    "data_path": "path",
    "base_model": "name",
    "model_name": "name",
    "warmup": "warmup_steps",
}


def schema_paths(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted path of the schema, sections and leaves."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(schema_paths(annotation, path + "."))
    return paths


def suggest_key(path: str) -> str | None:
    """The closest schema path to an unknown dotted key, or None."""
    candidates = schema_paths()
    leaf = path.rsplit(".", 1)[-1]
    leaf = _SYNONYMS.get(leaf, leaf)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    # Same leaf name somewhere in the schema: prefer the one whose section looks most like the user's.
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return max(same_leaf, key=lambda c: difflib.SequenceMatcher(None, parent, c).ratio())
    close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
    if close:
        return close[0]
    by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[close[0]] if close else None


def _walk_loc(loc: tuple[Any, ...]) -> tuple[str, bool]:
    """Dotted field path of a pydantic error location, dropping union-member tags.

    Returns the path and whether the last element is a real schema field (False for an unknown key).
    """
    model: type[BaseModel] | None = Config
    parts: list[str] = []
    for element in loc:
        if isinstance(element, int):
            parts[-1] = f"{parts[-1]}[{element}]" if parts else f"[{element}]"
            continue
        if model is not None and element in model.model_fields:
            parts.append(element)
            annotation = model.model_fields[element].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        elif model is not None:
            parts.append(str(element))
            return ".".join(parts), False
        else:
            break  # a union member tag such as 'int' or "literal['all-linear']"
    return ".".join(parts), True


def _leaves(tree: Any, prefix: str) -> list[str]:
    if isinstance(tree, dict) and tree:
        return [leaf for key, value in tree.items() for leaf in _leaves(value, f"{prefix}.{key}")]
    return [prefix]


def unknown_keys(tree: dict[str, Any], model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Dotted paths of every key in ``tree`` that the schema does not have, down to the leaves."""
    found: list[str] = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        field = model.model_fields.get(str(key))
        if field is None:
            found.extend(_leaves(value, path))
            continue
        annotation = field.annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(unknown_keys(value, annotation, path + "."))
    return found


def _unknown_key_problem(path: str) -> str:
    hint = suggest_key(path)
    return f"unknown key '{path}'" + (f" - did you mean '{hint}'?" if hint else "")


def _format_errors(error: ValidationError) -> list[str]:
    problems: dict[str, str] = {}
    for item in error.errors():
        path, known = _walk_loc(tuple(item["loc"]))
        if item["type"] == "extra_forbidden" or not known:
            continue  # reported by unknown_keys(), with the full dotted path and a suggestion
        value = item.get("input")
        msg = item["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if path in problems:
            # A union reports one error per member; keep the first and name the value once.
            continue
        if isinstance(value, dict) and item["type"] == "value_error":
            # A check across fields of a section: its message names the fields itself.
            problems[path] = msg
        elif isinstance(value, dict):
            problems[path] = f"{path}: {msg} (got a mapping)"
        elif repr(value) in msg:
            problems[path] = f"{path}: {msg}"
        else:
            problems[path] = f"{path}: {msg} (got {value!r})"
    return list(problems.values())


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it ('3' -> 3, 'true' -> True, '[a,b]' -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``['--train.lr', '2e-4', '--peft.method=none', '--train.progress']`` -> {dotted: value}.

    A flag with no value (followed by another flag or nothing) means ``true``.
    """
    overrides: dict[str, Any] = {}
    problems: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            problems.append(f"unexpected argument '{token}'; overrides look like --section.key value")
            i += 1
            continue
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            overrides[key] = parse_value(raw)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            overrides[key] = parse_value(tokens[i + 1])
            i += 2
        else:
            overrides[key] = True
            i += 1
    if problems:
        raise ConfigError(problems)
    return overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a dict, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file '{path}' not found; check the path given to --config"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"config file '{path}' is not valid YAML{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"config file '{path}' must hold a mapping of sections, not {type(data).__name__}"]
        )
    return data


def _apply_override(tree: dict[str, Any], dotted: str, value: Any, problems: list[str]) -> None:
    known = set(schema_paths())
    sections = {p.rsplit(".", 1)[0] for p in known if "." in p}
    node = tree
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[: depth + 1])
        child = node.get(part)
        if (prefix in known and prefix not in sections) or (
            child is not None and not isinstance(child, dict)
        ):
            problems.append(f"'{dotted}': '{prefix}' is a value, not a section")
            return
        node = node.setdefault(part, {}) if child is None else child
    node[parts[-1]] = value


def build_config(
    data: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str | None = None,
) -> Config:
    """Merge a config dict and dotted overrides, validate, and return the typed config.

    Raises:
        ConfigError: listing every problem (unknown keys with suggestions, wrong types, bad values).
    """
    tree: dict[str, Any] = _deep_copy(data or {})
    problems: list[str] = []
    for dotted, value in (overrides or {}).items():
        _apply_override(tree, dotted, value, problems)
    problems.extend(_unknown_key_problem(path) for path in unknown_keys(tree))
    try:
        config = Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(problems + _format_errors(exc), source) from None
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load ``--config`` (optional) plus dotted overrides into a validated :class:`Config`."""
    data = load_yaml(path) if path else {}
    return build_config(data, overrides, source=str(path) if path else None)


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree
