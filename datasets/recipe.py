"""Fine-tuning recipes: the defaults a training data set's registry entry supplies.

Each registered data set carries one `FinetuneRecipe` (`register_dataset(..., recipe=...)`); real
data sets carry `REFERENCE_RECIPE`, the papers' (docs/methods.md §0.4: 10 epochs, warm-up 1000 steps, eps
1/255, each method's own batch size and learning rate). A world with its own budget registers its
own recipe; `clipshield.training.finetune_config.recipe_config` applies it, so the CLI, the demo, the
experiments and the tests train with the same defaults.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from clipshield.service.config import StrictModel

Optimizer = Literal["sgd", "adamw"]


class StudyRecord(StrictModel):
    """The tuning study that chose a setting (`clipshield experiment tune`): where to find it and what it scored."""

    study: str
    storage: str
    trial: int = Field(ge=0)
    value: float
    date: str
    objective: str = ""
    budget: str = ""


class TunedSetting(StrictModel):
    """One method's tuned learning rate and loss weights in a recipe, with the study that chose them."""

    lr: float = Field(gt=0)
    method_params: dict[str, Any] = Field(default_factory=dict)
    chosen_by: StudyRecord


class FinetuneRecipe(StrictModel):
    """Fine-tuning defaults for one training data set; None means "the method's own default".

    Budgets are in pixel units ([0, 1] images). `steps` applies unless the caller sets steps or
    epochs; `lr` has one learning rate per optimiser family (methods keep their recipe optimiser);
    `warmup` None = 10% of the steps; `eval_datasets` are the model card's evaluation sets; `tuned` holds
    per-method learning rates and loss weights a tuning study chose (they replace `lr` and the method's
    defaults for that method).
    """

    name: str
    eps: float = Field(ge=0)
    attack_alpha: Optional[float] = Field(default=None, gt=0)
    attack_steps: Optional[int] = Field(default=None, ge=0)
    epochs: int = Field(default=10, gt=0)
    steps: Optional[int] = Field(default=None, gt=0)
    batch_size: Optional[int] = Field(default=None, gt=1)
    lr: dict[Optimizer, float] = Field(default_factory=dict)
    warmup: Optional[int] = Field(default=1000, ge=0)
    data_limit: Optional[int] = Field(default=None, gt=0)
    eval_datasets: tuple[str, ...] = ()
    model: Optional[str] = None  # model a run starts from unless --model is given (a world's shipped model)
    tuned: dict[str, TunedSetting] = Field(default_factory=dict)


# the papers' recipe on 224 px real images (TGA-ZSR, PMG-AFT: eps = 1/255)
REFERENCE_RECIPE = FinetuneRecipe(name="reference", eps=1 / 255)
