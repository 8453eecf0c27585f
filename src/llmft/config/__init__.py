"""The one typed configuration of a run: the schema (:mod:`.schema`) and its loading (:mod:`.loader`).

A run is a YAML file (optional) plus dotted command-line overrides such as ``--train.lr 2e-4``, merged
into one nested dict and validated at once; every problem is reported together, each naming the field,
the value and the fix (``unknown key 'peft.lora.rank' - did you mean 'peft.lora.r'?``).
"""

from llmft.config.loader import (
    BARE_FLAG,
    build_config,
    load_config,
    load_yaml,
    parse_overrides,
    schema_paths,
    suggest_key,
)
from llmft.config.schema import (
    LLAMA_LINEAR_MODULES,
    CheckpointSection,
    Config,
    DataSection,
    DistributedSection,
    FreezeSection,
    FsdpSection,
    GenerationSection,
    HeadSection,
    LoggingSection,
    LoraSection,
    ModelSection,
    PeftSection,
    TrainSection,
    batch_problem,
)

__all__ = [
    "BARE_FLAG",
    "LLAMA_LINEAR_MODULES",
    "Config",
    "DataSection",
    "DistributedSection",
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
    "load_config",
    "load_yaml",
    "parse_overrides",
    "schema_paths",
    "suggest_key",
]
