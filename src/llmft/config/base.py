"""What every config section shares: strict pydantic models and number types that refuse booleans.

Unknown keys are errors (``extra="forbid"``); numbers accept numeric text (YAML reads ``1e-4`` as
text) but never ``true``/``false``. A section checks its fields one by one; checks that span fields are
rules (:mod:`llmft.config.rules`), run on the whole config so that every problem is reported at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _not_a_bool(value: Any) -> Any:
    # pydantic would read true as 1: a forgotten value (`--train.lr` alone) must not become lr 1.0.
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
# No inf or nan either: `lr: .inf` would pass here and fail only after the run folder was written.
Float = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def split_commas(value: Any) -> Any:
    """A list field's value as a list: ``q_proj,v_proj`` (one flag) or several such strings (a repeated
    flag, ``... q_proj,v_proj --peft.lora.target_modules k_proj``); 'all-linear' and lists pass."""
    if isinstance(value, str) and value != "all-linear":
        return [part.strip() for part in value.strip("[]").split(",") if part.strip()]
    if isinstance(value, list) and len(value) > 1:
        return [part.strip() for item in value for part in (item.split(",") if isinstance(item, str) else [item])
                if not isinstance(part, str) or part.strip()]  # fmt: skip
    return value
