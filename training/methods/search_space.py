"""Search spaces of the fine-tuning methods: what `clipshield experiment tune` may vary, declared in each registry entry.

A space maps a setting to a `Range` or a `Choice`. `lr_scale` multiplies the run's learning rate (the
data set's recipe rate for the method's optimiser family, else the method's own), so one space serves
the mini worlds (SGD 0.005) and real data (the papers' 1e-5 to 1e-4) alike; every other key is a field
of the method's `params` model (its loss weights). Optuna turns these into `suggest_*` calls
(`clipshield.experiments.tuning.objective.suggest`); this module stays free of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

from pydantic import Field, model_validator

from clipshield.service.config import StrictModel

LR_SCALE = "lr_scale"


class Range(StrictModel):
    """A float in [low, high], sampled on a log scale unless `log` is False."""

    low: float
    high: float
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"a range needs low < high (and low > 0 on a log scale), got [{self.low}, {self.high}]")
        return self


class Choice(StrictModel):
    """One of a few values (strings, numbers or booleans)."""

    values: tuple[Union[str, float, bool], ...] = Field(min_length=1)


Dimension = Union[Range, Choice]
SearchSpace = Mapping[str, Dimension]

# the learning rate from 1/100 to 4x the recipe's: every method's space has it. The first 32-px study drew from
# 1/20 up and chose 0.054, 0.059 and 0.072 for TGA-ZSR, TeCoA and TGA-Anchor: the bound was binding
# (docs/finetuning.md, "Tuning on the mini worlds")
LR_RANGE = Range(low=0.01, high=4.0)


def checked_space(method: str, space: SearchSpace, param_fields: Mapping[str, object]) -> dict[str, Dimension]:
    """`space` with `lr_scale` added when missing; a key that is neither `lr_scale` nor a params field raises."""
    unknown = sorted(set(space) - {LR_SCALE} - set(param_fields))
    if unknown:
        allowed = ", ".join([LR_SCALE, *param_fields])
        raise ValueError(f"method {method!r}: search space key(s) {', '.join(unknown)} unknown; allowed: {allowed}")
    return {LR_SCALE: LR_RANGE, **space}
