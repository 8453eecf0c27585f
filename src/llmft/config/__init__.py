"""The one typed configuration of a run: its sections, the rules across fields, and its loading.

A run is a YAML file (optional) plus dotted command-line overrides such as ``--train.lr 2e-4``, merged
into one nested dict and loaded by :func:`build_config` in three steps: pydantic checks every field
(:mod:`.schema`, the root, with the sections in :mod:`.inputs`, :mod:`.tuning` and :mod:`.run`),
:func:`resolve_defaults` fills the defaults that depend on other fields, and :mod:`.rules` finds every
combination that cannot work. Every problem is reported together, each naming the field, the value
and the fix (``unknown key 'peft.lora.rank' - did you mean 'peft.lora.r'?``).
"""

from llmft.config.inputs import DataSection, ModelSection
from llmft.config.loader import (
    BARE_FLAG,
    build_config,
    load_config,
    load_yaml,
    parse_overrides,
    schema_paths,
    suggest_key,
)
from llmft.config.resolve import resolve_defaults
from llmft.config.rules import batch_problem, config_problems
from llmft.config.run import (
    CheckpointSection,
    DistributedSection,
    EvalSection,
    FsdpSection,
    GenerationSection,
    LoggingSection,
    TrainSection,
)
from llmft.config.schema import Config
from llmft.config.tuning import LLAMA_LINEAR_MODULES, FreezeSection, HeadSection, LoraSection, PeftSection

__all__ = [
    "BARE_FLAG",
    "LLAMA_LINEAR_MODULES",
    "Config",
    "DataSection",
    "DistributedSection",
    "EvalSection",
    "FreezeSection",
    "FsdpSection",
    "HeadSection",
    "CheckpointSection",
    "GenerationSection",
    "LoggingSection",
    "LoraSection",
    "ModelSection",
    "PeftSection",
    "TrainSection",
    "batch_problem",
    "build_config",
    "config_problems",
    "load_config",
    "load_yaml",
    "parse_overrides",
    "resolve_defaults",
    "schema_paths",
    "suggest_key",
]
