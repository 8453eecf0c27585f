"""Loading a run's config: YAML file + dotted overrides -> :class:`Config`, every problem at once.

:func:`build_config` merges the file and the overrides, lets pydantic check every field, fills the
defaults that depend on other fields (:func:`~llmft.config.resolve.resolve_defaults`) and applies the
rules across fields (:mod:`llmft.config.rules`); unknown keys, wrong values and impossible
combinations all come back in one :class:`~llmft.errors.ConfigError`.

Command-line values are read by the type of the field they set: text fields take the text as typed
(``--generation.prompt 'Note: the'``, ``--output_dir 2024``, ``--data.path 'a #1.jsonl'``), other fields
read it as YAML (``3`` -> 3, ``[q_proj,v_proj]`` -> a list). A flag with no value means ``true`` for a
boolean field and is an error for any other.
"""

from __future__ import annotations

import copy
import difflib
import functools
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from llmft.config.resolve import resolve_defaults
from llmft.config.rules import SECTION_RULES, config_problems, section_problems
from llmft.config.schema import Config
from llmft.errors import ConfigError

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


class _Bare:
    """A flag given without a value (``--train.progress``)."""

    def __repr__(self) -> str:
        return "<flag without value>"


BARE_FLAG = _Bare()


class Repeated(list):
    """The raw values of a list field's flag given more than once (``--freeze.include a --freeze.include
    b``): they add up to one list, in the order given."""


def _section_type(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


@functools.cache
def _fields() -> dict[str, Any]:
    """Every dotted path of the schema -> its annotation (sections included)."""
    found: dict[str, Any] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            found[prefix + name] = field.annotation
            section = _section_type(field.annotation)
            if section is not None:
                walk(section, f"{prefix}{name}.")

    walk(Config, "")
    return found


def schema_paths() -> list[str]:
    """Every dotted path of the schema, sections and leaves."""
    return list(_fields())


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types a field admits: Optional, unions and Annotated unwrapped; Literal kept whole."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return set().union(*(_leaf_types(arg) for arg in typing.get_args(annotation)))
    return {annotation}


def _is_text(annotation: Any) -> bool:
    """True for fields that hold text (str, or a Literal of strings, optionally None)."""
    kinds = _leaf_types(annotation) - {type(None)}
    return bool(kinds) and all(
        kind is str
        or (typing.get_origin(kind) is Literal and all(isinstance(a, str) for a in typing.get_args(kind)))
        for kind in kinds
    )


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
        section = _section_type(field.annotation)
        if isinstance(value, dict) and section is not None:
            found.extend(unknown_keys(value, section, path + "."))
    return found


def _unknown_key_problem(path: str) -> str:
    hint = suggest_key(path)
    return f"unknown key '{path}'" + (f" - did you mean '{hint}'?" if hint else "")


def _field_path(loc: tuple[Any, ...]) -> str:
    """Dotted field path of a pydantic error location, without union-member tags ('int', ...)."""
    fields = _fields()
    parts: list[str] = []
    for element in loc:
        if isinstance(element, int):
            if parts:
                parts[-1] += f"[{element}]"
            continue
        candidate = ".".join([*parts, str(element)])
        if candidate not in fields:
            break
        parts.append(str(element))
    return ".".join(parts)


def _format_errors(error: ValidationError) -> list[str]:
    problems: dict[str, str] = {}
    for item in error.errors():
        if item["type"] in {"extra_forbidden", "invalid_key"}:
            continue  # reported by unknown_keys(), with the full dotted path and a suggestion
        path = _field_path(tuple(item["loc"]))
        if path in problems:
            continue  # a union reports one error per member; the first names the value
        msg = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        if isinstance(value, dict):
            problems[path] = f"{path}: {msg} (got a mapping)"
        elif item["type"] == "dict_type" and isinstance(value, str):
            # e.g. --data.column_map instruction=prompt: show the YAML mapping the flag takes.
            pairs = [p.split("=", 1) for p in value.split(",") if "=" in p]
            example = ", ".join(f"{k.strip()}: {v.strip()}" for k, v in pairs) or "old: new"
            problems[path] = (
                f"{path}: expected a mapping, got {value!r}; write it as YAML: --{path} '{{{example}}}'"
            )
        elif repr(value) in msg:
            problems[path] = f"{path}: {msg}"
        else:
            problems[path] = f"{path}: {msg} (got {value!r})"
    return list(problems.values())


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``['--train.lr', '2e-4', '--peft.method=none', '--train.progress']`` -> {dotted: raw text}.

    A flag given again: a list field's values add up (:class:`Repeated`); for any other the last wins.
    Values stay text (or :data:`BARE_FLAG`) until :func:`build_config` reads them by field type.
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
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = tokens[i + 1]
            i += 2
        else:
            value = BARE_FLAG
            i += 1
        previous = overrides.get(key)
        if key in overrides and _is_list(_fields().get(key)):
            # A list field's flags add up (--freeze.include a --freeze.include b): keeping only the last
            # would silently drop patterns or targets.
            value = Repeated([*previous, value] if isinstance(previous, Repeated) else [previous, value])
        overrides[key] = value  # any other flag: the last value wins, as with argparse
    if problems:
        raise ConfigError(problems)
    return overrides


def read_override(path: str, value: Any) -> Any:
    """A command-line value as the field at ``path`` expects it (see the module docstring)."""
    annotation = _fields().get(path)
    if value is BARE_FLAG:
        if annotation is None or bool in _leaf_types(annotation):
            return True  # an unknown key is reported as such (with a suggestion), not as a missing value
        raise ConfigError([f"--{path} needs a value (e.g. --{path} VALUE)"])
    if isinstance(value, Repeated):
        items: list[Any] = []
        for one in value:
            read = read_override(path, one)
            items.extend(read if isinstance(read, list) else [read])
        return items
    if not isinstance(value, str):
        return value  # set from Python, already typed
    if annotation is not None and _is_text(annotation):
        return None if value == "null" and type(None) in _leaf_types(annotation) else value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        if value.lstrip().startswith(("[", "{")):
            # Read as text, a malformed list would become one value (for freeze.include, a regular
            # expression character class that matches every name): refuse instead.
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                [
                    f"--{path} {value!r} is not a valid YAML list or mapping ({problem}); write a list "
                    f"unquoted, --{path} '[layers\\.3\\., lm_head]', or quote its items with single quotes, "
                    f"--{path} \"['layers\\.3\\.', 'lm_head']\" (in YAML double quotes a backslash starts "
                    f"an escape), or give the flag once per item"
                ]
            ) from None
        return value


def _is_list(annotation: Any) -> bool:
    """True for fields that hold a list (possibly also a single literal, like target_modules)."""
    return annotation is not None and any(typing.get_origin(kind) is list for kind in _leaf_types(annotation))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a dict, with a one-line error for a missing or malformed file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError([f"config file '{path}' is a folder; pass a YAML file to --config"])
    if not path.is_file():
        raise ConfigError([f"config file '{path}' not found; check the path given to --config"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"config file '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8"]
        ) from None
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


def _merge(node: dict[str, Any], key: str, value: Any) -> None:
    """Set ``node[key] = value``, merging into an existing section rather than replacing it."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for sub_key, sub_value in value.items():
            _merge(node[key], str(sub_key), sub_value)
    else:
        node[key] = value


def _apply_override(tree: dict[str, Any], dotted: str, value: Any, problems: list[str]) -> None:
    fields = _fields()
    node = tree
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[: depth + 1])
        child = node.get(part)
        is_leaf = prefix in fields and _section_type(fields[prefix]) is None
        if is_leaf or (child is not None and not isinstance(child, dict)):
            problems.append(f"'{dotted}': '{prefix}' is a value, not a section")
            return
        if child is None:  # absent, or an empty section in the file (`train:` with nothing under it)
            child = node[part] = {}
        node = child
    _merge(node, parts[-1], value)


def _empty_sections_to_mappings(tree: dict[str, Any], model: type[BaseModel] = Config) -> None:
    """`train:` with every line under it commented out reads as None; it means an empty section."""
    for key, value in list(tree.items()):
        field = model.model_fields.get(key) if isinstance(key, str) else None
        section = _section_type(field.annotation) if field is not None else None
        if section is None:
            continue
        if value is None:
            tree[key] = {}
        elif isinstance(value, dict):
            _empty_sections_to_mappings(value, section)


def _validate(tree: dict[str, Any]) -> tuple[Config | None, list[str]]:
    """pydantic's check of every field: the config, or None and the problems.

    Where some field is wrong there is no config to apply the rules to, but the sections whose fields
    are all right still get their own rules, so a wrong ``train.lr`` does not hide a freeze problem.
    """
    try:
        return Config.model_validate(tree), []
    except ValidationError as exc:
        problems = _format_errors(exc)
        failed = {item["loc"][0] for item in exc.errors() if item["loc"]}
        for name in SECTION_RULES:
            if name not in failed:
                section = Config.model_fields[name].annotation.model_validate(tree.get(name, {}))
                problems.extend(section_problems(name, section))
        return None, problems


def build_config(
    data: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str | None = None,
) -> Config:
    """Merge a config dict and dotted overrides, check, resolve, and return the typed config.

    The steps: the overrides are read by field type and merged into the file's tree; pydantic checks
    every field; the dependent defaults are filled (:func:`resolve_defaults`); the rules across fields
    (:func:`config_problems`) run on the result.

    Raises:
        ConfigError: listing every problem (unknown keys with suggestions, wrong types, bad values,
            combinations that cannot work).
    """
    tree: dict[str, Any] = copy.deepcopy(data or {})
    _empty_sections_to_mappings(tree)
    problems: list[str] = []
    for dotted, value in (overrides or {}).items():
        try:
            _apply_override(tree, dotted, read_override(dotted, value), problems)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_unknown_key_problem(path) for path in unknown_keys(tree))
    config, field_problems = _validate(tree)
    problems.extend(field_problems)
    if config is not None:
        config = resolve_defaults(config)
        problems.extend(config_problems(config))
    if problems or config is None:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load ``--config`` (optional) plus dotted overrides into a validated :class:`Config`."""
    data = load_yaml(path) if path else {}
    return build_config(data, overrides, source=str(path) if path else None)
