"""Typed settings of `clipshield finetune`: grouped, resolved against the method and data set, validated.

`FinetuneConfig` groups the settings (`source`, `dataset`, `optim`, `attack`, `run`, `evaluation`);
it is built from flat names too (the CLI's flags and the keys of `run_config.json`, `FLAT_NAMES`),
and `flat()` writes them back, so saved runs, model cards and resumed runs keep one flat format.
`resolved()` fills every "method default" (None) from the method and validates the result;
`recipe_config(data, ...)` fills the defaults of the training data set's registry recipe first.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
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
    warmup_fit: bool = Field(
        default=False, description="the warm-up is a recipe default: at most 10% of the steps, so a short run reaches its peak lr"
    )
    allow_low_lr: bool = Field(default=False, description="allow a schedule whose lr never reaches half its peak (warm-up > 2 x steps)")


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
    "warmup_fit",  # added by issue 27: older saved runs lack them and load with the defaults
    "allow_low_lr",
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
        "allow_low_lr",
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
        warmup = fitted_warmup(o.warmup, steps, o.warmup_fit)
        check_schedule(warmup, steps, o.allow_low_lr)
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
            "warmup": warmup,
            "warmup_fit": False,  # applied: the resolved warm-up is what runs
            "eval_eps": a.eps if self.evaluation.eps is None else self.evaluation.eps,
            "method_params": m.params(**self.method_params).model_dump(),
        }
        return self.updated(**values)


def fitted_warmup(warmup: Optional[int], steps: int, fit: bool) -> int:
    """Warm-up steps that run: None -> 10% of the steps; a recipe default (`fit`) that would fill more than
    half of a short run -> 10% of its steps (as the mini-world recipe); else as given.

    The papers' 1,000 warm-up steps belong to 10-epoch runs of thousands of steps; a 5-step run on a user's
    folder would otherwise train at lr <= 5/1000 of its peak (issue 27, point 1).
    """
    if warmup is None or (fit and warmup > steps // 2):
        return steps // 10
    return warmup


def check_schedule(warmup: int, steps: int, allow_low_lr: bool) -> None:
    """One-line ConfigError when the lr would never reach half its peak (`peak_lr_fraction`), unless allowed."""
    reached = peak_lr_fraction(warmup, steps)
    if reached < 0.5 and not allow_low_lr:
        raise ConfigError(
            f"warm-up {warmup} steps for a {steps}-step run: the learning rate would never pass {reached:.0%} of its peak; "
            "use fewer --warmup steps, more --steps, or --allow-low-lr to train at low lr on purpose"
        )


def peak_lr_fraction(warmup: int, steps: int) -> float:
    """Highest lr of a warm-up + cosine schedule as a fraction of its peak (`clipshield.training.schedule`)."""
    return 1.0 if warmup <= 0 or steps >= warmup else steps / warmup


def flat_name(loc: tuple[Any, ...]) -> str:
    """The flat name of a validation error's location: ('dataset', 'limit') -> 'data_limit'."""
    for flat, where in FLAT_NAMES.items():
        if tuple(loc[:2]) == where:
            return flat
    return ".".join(map(str, loc))


def own_data_eval(data: str, root: Optional[Path]) -> list[str]:
    """The default evaluation of a user's `folder/<dir>` training set: that folder (its test split), else none.

    A tree with a test/ or val/ folder is evaluated on it; a tree without split folders on the same
    images (the card notes it); a tree with train/ only is not evaluated (nothing held out).
    """
    from clipshield.datasets.folder import FOLDER_PREFIX, held_out_split

    if not data.startswith(FOLDER_PREFIX) or root is None:
        return []
    return [data] if held_out_split(Path(root) / data[len(FOLDER_PREFIX) :]) != "none" else []


def recipe_config(data: str = "miniworld-train", tuned: bool = True, **settings: Any) -> FinetuneConfig:
    """FinetuneConfig for training on `data`: `settings` (flat names; None = unset) over the data set's recipe.

    The recipe comes from the data set's registry entry (`clipshield.datasets.finetune_recipe`); what it
    leaves unset falls back to the method's defaults at `resolved()`. Recipe steps apply unless
    `steps` or `epochs` is given; the learning rate is the recipe's for the run's optimiser family, or,
    unless `tuned` is False, the method's tuned one with its tuned loss weights (`FinetuneRecipe.tuned`;
    given `method_params` win key by key).
    Settings come from users (flags), so a value out of range is a one-line `ConfigError` naming it.
    """
    recipe = finetune_recipe(data)
    given = {k: v for k, v in settings.items() if v is not None}
    method = get_method(given["method"]) if "method" in given else None
    optimizer = given.get("optimizer") or (method.optimizer if method else "sgd")
    tuned_setting = recipe.tuned.get(method.name) if method is not None and tuned else None
    if tuned_setting is not None:  # a study's choice for this method: its lr (own optimiser) and loss weights
        given["method_params"] = {**tuned_setting.method_params, **given.get("method_params", {})}
    defaults: dict[str, Any] = {
        "eps": recipe.eps,
        "attack_alpha": recipe.attack_alpha,
        "attack_steps": recipe.attack_steps,
        "epochs": recipe.epochs,
        "steps": None if "epochs" in given else recipe.steps,
        "batch_size": recipe.batch_size,
        "data_limit": recipe.data_limit,
        # a tuned lr belongs to the method's own optimiser; another optimiser takes the recipe's
        "lr": tuned_setting.lr
        if tuned_setting is not None and optimizer == (method.optimizer if method else None)
        else recipe.lr.get(optimizer),
        "warmup": recipe.warmup,
        # the recipe's warm-up (not one the user set) shrinks to 10% of a short run's steps
        "warmup_fit": "warmup" not in given and recipe.warmup is not None,
        "eval_datasets": list(recipe.eval_datasets) or own_data_eval(data, given.get("data_root")),
    }
    if recipe.model is not None:
        defaults["model"] = recipe.model
    try:
        return FinetuneConfig.model_validate({"data": data, **defaults, **given})
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, flat_name) from None


RUNS_ROOT = Path("runs/finetune")
RUN_FILES = ("final", "state", "metrics.csv")  # what makes a folder a fine-tuning run's


def default_output(method: str, data: str, root: Path = RUNS_ROOT, now: Optional[datetime] = None) -> Path:
    """A run folder no earlier run holds: `<root>/<method>-<data>-<UTC time>[-N]` (issue 27: runs never collide)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", data).strip("-")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    base = root / f"{method}-{slug}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_output_free(output: Path, resume: bool, overwrite: bool) -> None:
    """ConfigError when `output` already holds a run, unless resuming it or overwriting on purpose."""
    found = [name for name in RUN_FILES if (output / name).exists()]
    if found and not (resume or overwrite):
        raise ConfigError(
            f"{output} already holds a fine-tuning run ({', '.join(found)}): pass --resume to continue it, "
            "--overwrite to replace it, or leave --output unset for a new folder"
        )
