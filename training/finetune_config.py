"""Typed settings of `clipshield finetune`: grouped, resolved against the method and data set, validated.

`FinetuneConfig` groups the settings (`source`, `dataset`, `optim`, `attack`, `run`, `evaluation`);
it is built from flat names too (the CLI's flags and the keys of `run_config.json`, `FLAT_NAMES`),
and `flat()` writes them back, so saved runs, model cards and resumed runs keep one flat format.
`resolved()` fills every "method default" (None) from the method and validates the result;
`recipe_config(data, ...)` fills the defaults of the training data set's registry recipe first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from clipshield.datasets import finetune_recipe
from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError
from clipshield.service.preprocess import Preset
from clipshield.training.methods import get_method


class ModelSource(StrictModel):
    """The model to fine-tune, as `clipshield.models.factory.load_model` takes it."""

    model: str = "miniworld"
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    cache_dir: Optional[str] = None
    offline: Optional[bool] = None


class DatasetSettings(StrictModel):
    """The training data set and how its images and prompts are prepared."""

    FLAT: ClassVar[dict[str, str]] = {"name": "data", "root": "data_root", "limit": "data_limit"}
    name: str = "miniworld-train"
    root: Optional[Path] = None
    limit: Optional[int] = Field(default=None, gt=0)
    image_size: Optional[int] = Field(default=None, gt=0, description="loader resolution; default: the model's own")
    preprocess: Preset = Field(
        default="model", description="preprocessing preset (clipshield.service.preprocess.PRESETS); model = what serving does"
    )
    template: Optional[str] = Field(default=None, description="training prompt; default: the data set's (single) template")
    negative_template: str = "This is not a photo of a {}"

    @field_validator("template", "negative_template")
    @classmethod
    def _one_class_slot(cls, value: Optional[str]) -> Optional[str]:
        """A prompt template has exactly one `{}` for the class name (it is filled with `str.format`)."""
        if value is None:
            return value
        try:
            filled = value.format("\0")
        except (IndexError, KeyError, ValueError):
            filled = ""
        if filled.count("\0") != 1:
            raise ValueError(f"a prompt template needs exactly one {{}} for the class name, got {value!r}")
        return value


class OptimSettings(StrictModel):
    """Length of training and the optimiser; None = the method's recipe default (docs/methods.md §0.4)."""

    epochs: int = Field(default=10, gt=0)
    steps: Optional[int] = Field(default=None, gt=0, description="total steps; default epochs x batches per epoch")
    batch_size: Optional[int] = Field(default=None, gt=1)
    lr: Optional[float] = Field(default=None, gt=0)
    optimizer: Optional[Literal["sgd", "adamw"]] = Field(default=None, description="default: the method's (FARE: adamw)")
    momentum: float = 0.9
    weight_decay: Optional[float] = Field(default=None, ge=0)
    warmup: Optional[int] = Field(default=1000, ge=0, description="warm-up steps; None: 10% of the steps")


class AttackSettings(StrictModel):
    """The training attack (pixel units); None = the method's default (step size eps or eps/4, steps 2 or 10)."""

    FLAT: ClassVar[dict[str, str]] = {"alpha": "attack_alpha", "steps": "attack_steps"}
    eps: float = Field(default=1 / 255, ge=0)
    alpha: Optional[float] = Field(default=None, ge=0, description="default: eps (PGD), eps/4 (FARE)")
    steps: Optional[int] = Field(default=None, ge=0)


class RunSettings(StrictModel):
    """Where the run writes, its seed, resumable state, precision, device and parallelism."""

    output: Path = Path("runs/finetune")
    seed: int = 0
    checkpoint_every: int = Field(default=0, ge=0)
    frozen_cache_mb: float = Field(
        default=1024.0, ge=0, description="memory for the frozen model's per-image clean outputs; 0: recompute every step"
    )
    resume: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "cpu"
    workers: int = Field(default=0, ge=0)
    threads: Optional[int] = None


class EvalSettings(StrictModel):
    """The model card's evaluation: data sets, images per set and the PGD attack (eps None: the training eps)."""

    FLAT: ClassVar[dict[str, str]] = {
        "datasets": "eval_datasets",
        "limit": "eval_limit",
        "eps": "eval_eps",
        "steps": "eval_steps",
        "batch_size": "eval_batch_size",
    }
    datasets: list[str] = Field(default_factory=list)
    limit: Optional[int] = Field(default=512, gt=0)
    eps: Optional[float] = Field(default=None, ge=0, description="default: the training eps")
    steps: int = Field(default=10, ge=0)
    batch_size: int = Field(default=256, gt=0)


GROUPS: dict[str, type[StrictModel]] = {
    "source": ModelSource,
    "dataset": DatasetSettings,
    "optim": OptimSettings,
    "attack": AttackSettings,
    "run": RunSettings,
    "evaluation": EvalSettings,
}
# flat name (CLI flag, run_config.json key) -> (group, field)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    getattr(cls, "FLAT", {}).get(field, field): (group, field) for group, cls in GROUPS.items() for field in cls.model_fields
}
# flat names in the order run_config.json has always listed them (the saved-run format)
_FLAT_ORDER = (
    "model",
    "pretrained",
    "weights",
    "cache_dir",
    "offline",
    "data",
    "data_root",
    "data_limit",
    "image_size",
    "preprocess",
    "template",
    "negative_template",
    "output",
    "epochs",
    "steps",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "warmup",
    "eps",
    "attack_alpha",
    "attack_steps",
    "method_params",
    "seed",
    "checkpoint_every",
    "frozen_cache_mb",
    "resume",
    "precision",
    "device",
    "workers",
    "threads",
    "eval_datasets",
    "eval_limit",
    "eval_eps",
    "eval_steps",
    "eval_batch_size",
)
# settings a resumed run may change: where files are and how fast and on what it runs, not what it computes
# (`epochs` only resolves `steps`, which is checked); every other flat name must match the saved state
RESUME_MAY_CHANGE = frozenset(
    {
        "cache_dir",
        "offline",
        "data_root",
        "output",
        "epochs",
        "checkpoint_every",
        "frozen_cache_mb",
        "resume",
        "device",
        "workers",
        "threads",
    }
    | {flat for flat, (group, _field) in FLAT_NAMES.items() if group == "evaluation"}
)


class FinetuneConfig(StrictModel):
    """Settings of `clipshield finetune`, grouped; None means "the method's recipe default" (docs/methods.md §0.4, 0.6)."""

    method: str
    method_params: dict[str, Any] = Field(default_factory=dict)
    source: ModelSource = ModelSource()
    dataset: DatasetSettings = DatasetSettings()
    optim: OptimSettings = OptimSettings()
    attack: AttackSettings = AttackSettings()
    run: RunSettings = RunSettings()
    evaluation: EvalSettings = EvalSettings()

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, values: Any) -> Any:
        """Accept flat names (`lr=`, `eval_eps=`, a saved run_config.json) next to the groups."""
        if not isinstance(values, dict) or not any(k in FLAT_NAMES for k in values):
            return values
        nested = {k: v for k, v in values.items() if k not in FLAT_NAMES}
        for flat, value in values.items():
            if flat in FLAT_NAMES:
                group, field = FLAT_NAMES[flat]
                current = nested.get(group, {})
                nested[group] = {**(current.model_dump() if isinstance(current, BaseModel) else current), field: value}
        return nested

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        method = get_method(self.method)  # UnknownName lists the known methods
        try:  # unknown or invalid loss options fail here, before any work, as one line
            method.params(**self.method_params)
        except ValidationError as exc:
            err = exc.errors()[0]
            known = ", ".join(method.params.model_fields) or "none"
            raise ConfigError(f"{self.method} option {'.'.join(map(str, err['loc']))}: {err['msg']} (options: {known})") from None
        if self.attack.alpha == 0 and self.attack.eps > 0:
            raise ConfigError(f"training attack step size 0 with eps {self.attack.eps:g}: the attack would not move")
        return self

    def flat(self) -> dict[str, Any]:
        """The settings under their flat names, JSON-ready (run_config.json, resume check, model card)."""
        groups = {name: getattr(self, name).model_dump(mode="json") for name in GROUPS}
        values = {flat: groups[group][field] for flat, (group, field) in FLAT_NAMES.items()}
        values["method_params"] = dict(self.method_params)
        return {"method": self.method, **{k: values[k] for k in _FLAT_ORDER}}

    def updated(self, **flat: Any) -> FinetuneConfig:
        """A validated copy with settings replaced by flat name (`updated(device="cuda:1")`)."""
        unknown = set(flat) - set(FLAT_NAMES) - {"method", "method_params"}
        if unknown:
            raise ConfigError(f"unknown fine-tuning setting(s) {', '.join(sorted(unknown))}; known: {', '.join(_FLAT_ORDER)}")
        return FinetuneConfig.model_validate(self.flat() | flat)

    def resolved(self, batches_per_epoch: int) -> FinetuneConfig:
        """A validated copy with every method default filled in (recorded in the model card)."""
        m = get_method(self.method)
        o, a = self.optim, self.attack
        steps = o.steps or o.epochs * batches_per_epoch
        optimizer = o.optimizer or m.optimizer
        values = {
            "batch_size": o.batch_size or m.batch_size,
            "lr": o.lr or m.lr,
            "optimizer": optimizer,
            # the method's weight decay belongs to its own optimiser; another optimiser starts without one
            "weight_decay": (m.weight_decay if optimizer == m.optimizer else 0.0) if o.weight_decay is None else o.weight_decay,
            "attack_alpha": a.eps * m.adversary.alpha_per_eps if a.alpha is None else a.alpha,
            "attack_steps": m.attack_steps if a.steps is None else a.steps,
            "steps": steps,
            "warmup": o.warmup if o.warmup is not None else steps // 10,
            "eval_eps": a.eps if self.evaluation.eps is None else self.evaluation.eps,
            "method_params": m.params(**self.method_params).model_dump(),
        }
        return self.updated(**values)


def flat_name(loc: tuple[Any, ...]) -> str:
    """The flat name of a validation error's location: ('dataset', 'limit') -> 'data_limit'."""
    for flat, where in FLAT_NAMES.items():
        if tuple(loc[:2]) == where:
            return flat
    return ".".join(map(str, loc))


def recipe_config(data: str = "miniworld-train", **settings: Any) -> FinetuneConfig:
    """FinetuneConfig for training on `data`: `settings` (flat names; None = unset) over the data set's recipe.

    The recipe comes from the data set's registry entry (`clipshield.datasets.finetune_recipe`); what it
    leaves unset falls back to the method's defaults at `resolved()`. Recipe steps apply unless
    `steps` or `epochs` is given; the learning rate is the recipe's for the run's optimiser family.
    Settings come from users (flags), so a value out of range is a one-line `ConfigError` naming it.
    """
    recipe = finetune_recipe(data)
    given = {k: v for k, v in settings.items() if v is not None}
    method = get_method(given["method"]) if "method" in given else None
    optimizer = given.get("optimizer") or (method.optimizer if method else "sgd")
    defaults: dict[str, Any] = {
        "eps": recipe.eps,
        "attack_alpha": recipe.attack_alpha,
        "attack_steps": recipe.attack_steps,
        "epochs": recipe.epochs,
        "steps": None if "epochs" in given else recipe.steps,
        "batch_size": recipe.batch_size,
        "data_limit": recipe.data_limit,
        "lr": recipe.lr.get(optimizer),
        "warmup": recipe.warmup,
        "eval_datasets": list(recipe.eval_datasets),
    }
    if recipe.model is not None:
        defaults["model"] = recipe.model
    try:
        return FinetuneConfig.model_validate({"data": data, **defaults, **given})
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, flat_name) from None
