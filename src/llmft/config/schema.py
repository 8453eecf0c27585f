"""The schema of a run: the root :class:`Config`, one field per section.

The sections live by concern in :mod:`.inputs` (model, data), :mod:`.tuning` (peft, freeze, head) and
:mod:`.run` (train, distributed, checkpoint, generation, eval, logging). pydantic checks each field;
defaults that depend on other fields are filled by :func:`llmft.config.resolve.resolve_defaults` and
combinations that cannot work are found by :mod:`llmft.config.rules`, both run by
:func:`llmft.config.loader.build_config`, which reports every problem at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from llmft.config.base import Section
from llmft.config.inputs import DataSection, ModelSection
from llmft.config.run import (
    CheckpointSection,
    DistributedSection,
    EvalSection,
    GenerationSection,
    LoggingSection,
    TrainSection,
)
from llmft.config.tuning import FreezeSection, HeadSection, PeftSection


class Config(Section):
    """The whole run."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection = Field(default_factory=TrainSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    task: Literal["causal_lm", "classification"] = Field(
        "causal_lm",
        description="causal_lm: next-token prediction; classification: a classifier head on the pooled last "
        "token of data.format classification records.",
    )
    freeze: FreezeSection = Field(default_factory=FreezeSection)
    head: HeadSection = Field(default_factory=HeadSection)
    output_dir: str | None = Field(
        None, description="Run folder; empty means runs/<model>-<format>-<method>."
    )

    def resolved_output_dir(self) -> Path:
        """The run folder: the configured one, or a name derived from model, data and method."""
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        model = Path(self.model.name.rstrip("/")).name or "model"
        fmt = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.data.format)
        return Path("runs") / f"{model}-{fmt}-{self.peft.method}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
