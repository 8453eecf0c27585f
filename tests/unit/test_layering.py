"""The shape of src/llmft: every import points down the run path, no two files import each other in a
cycle, no file over 500 lines and no function over 80.

Read from the source with ``ast`` (nothing is imported), every import counts: at module level, inside
functions, and under ``TYPE_CHECKING`` (a type-only import is still a dependency a reader follows).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "llmft"

# The packages (and top-level modules) of llmft by rank, lowest first: the run path read bottom-up. A
# module may import from its own package and from packages of a lower rank; never from a higher rank,
# and never from another package of its own rank: packages of one rank are siblings that know nothing
# of each other (train, peft and inference; checkpoint, evaluation and memory; ...), so any of them can
# change without touching the others. "" is the llmft package itself (its __init__: __version__).
RANKS: dict[str, int] = {
    # ground: imported by everything, importing nothing of llmft
    "": 0,
    "errors": 0,
    "hf": 0,
    # the data.format names: config checks them, data registers them
    "format_names": 0,
    # the typed config: sections that components take
    "config": 1,
    # dtype names, train.precision, the reported precision label, autocast (reads config sections)
    "precision": 2,
    # the model: loading, presets, heads, quantization, structure (hf_model, decoder_blocks)
    "models": 3,
    # what feeds the model and where it runs: data, processes and sharding, launch control (stop, slurm)
    "data": 4,
    "distributed": 4,
    "launch": 4,
    # what runs on the model: the trainer, the PEFT methods and freezing, generation and prediction
    "train": 5,
    "peft": 5,
    "inference": 5,
    # the trainable model of a config: composes models, peft and distributed
    "build": 6,
    # what a run keeps and reports: checkpoints and export, evaluation, the memory planner
    "checkpoint": 7,
    "evaluation": 7,
    "memory": 7,
    # the run path, top to bottom
    "finetune": 8,
    # one module per subcommand: its flags and what it runs
    "commands": 9,
    # the parser built from the command table
    "cli": 10,
    # entry points over the CLI: the seed's command lines, python -m llmft
    "compat": 11,
    "__main__": 11,
}

# Known offenders: none. An entry here would name an import, a file or a function that breaks the rules
# above, with the reason; test_the_allowlists_hold_only_live_offenders fails on an entry that no longer
# offends, so the lists only ever shrink.
ALLOWED_IMPORTS: set[tuple[str, str]] = set()
ALLOWED_LONG_FILES: set[str] = set()
ALLOWED_LONG_FUNCTIONS: set[str] = set()
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


@cache
def _modules() -> dict[str, Path]:
    """Every module of llmft by dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _package(module: str) -> str:
    """The ranked unit of ``module``: its first name under llmft ("" for llmft itself)."""
    return module.split(".")[1] if "." in module else ""


@cache
def _imports(module: str) -> list[tuple[str, int]]:
    """(imported llmft module, line) of every import in ``module``, at any depth.

    ``from llmft.memory import run`` imports the module llmft.memory.run; ``from llmft.config import
    Config`` imports llmft.config (its __init__).
    """
    path = _modules()[module]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in _modules() else base, node.lineno))
    return [(name, line) for name, line in found if name == "llmft" or name.startswith("llmft.")]


def _edges() -> list[tuple[str, str, int]]:
    """(importer, imported, line) between two different llmft modules."""
    return [(m, imported, line) for m in _modules() for imported, line in _imports(m) if imported != m]


def _upward(importer: str, imported: str) -> bool:
    here, there = _package(importer), _package(imported)
    return here != there and RANKS[there] >= RANKS[here]


def test_every_module_belongs_to_a_ranked_package():
    unranked = sorted({_package(m) for m in _modules()} - set(RANKS))
    assert not unranked, f"add {unranked} to RANKS in {Path(__file__).name}, at the rank of what it imports"


def test_imports_point_down_the_run_path():
    problems = [
        f"{importer} (line {line}) imports {imported}: {_package(importer) or 'llmft'} is rank "
        f"{RANKS[_package(importer)]}, {_package(imported) or 'llmft'} rank {RANKS[_package(imported)]}"
        for importer, imported, line in _edges()
        if _upward(importer, imported) and (importer, imported) not in ALLOWED_IMPORTS
    ]
    assert not problems, "imports that do not point down:\n" + "\n".join(problems)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the ~100 modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_files():
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for importer, imported, _ in _edges():
        if (importer, imported) not in ALLOWED_IMPORTS:
            graph[importer].add(imported)
    cycles = _cycles(graph)
    assert not cycles, "modules that import each other in a cycle: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}, "b": set()}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _long_files() -> dict[str, int]:
    lengths = {
        str(p.relative_to(SRC)): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules().values()
    }
    return {name: n for name, n in lengths.items() if n > MAX_FILE_LINES}


def _long_functions() -> dict[str, int]:
    """Qualified names of functions (and methods) longer than the limit, ``def`` line to last line."""
    found = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and lines > MAX_FUNCTION_LINES:
                    found[name] = lines
                walk(child, name)
            else:
                walk(child, prefix)

    for module, path in _modules().items():
        walk(ast.parse(path.read_text(encoding="utf-8")), module)
    return found


def test_no_source_file_over_500_lines():
    long = {name: n for name, n in _long_files().items() if name not in ALLOWED_LONG_FILES}
    assert not long, f"files over {MAX_FILE_LINES} lines (split them by concern): {long}"


def test_no_function_over_80_lines():
    long = {name: n for name, n in _long_functions().items() if name not in ALLOWED_LONG_FUNCTIONS}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"


def test_the_allowlists_hold_only_live_offenders():
    """An entry whose offence is gone must leave its allowlist, so the lists only ever shrink."""
    edges = {(importer, imported) for importer, imported, _ in _edges()}
    stale = [f"import {a} -> {b}" for a, b in ALLOWED_IMPORTS if (a, b) not in edges or not _upward(a, b)]
    stale += [f"file {name}" for name in ALLOWED_LONG_FILES - set(_long_files())]
    stale += [f"function {name}" for name in ALLOWED_LONG_FUNCTIONS - set(_long_functions())]
    assert not stale, "allowlist entries that no longer offend (delete them): " + "; ".join(stale)
