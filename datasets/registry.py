"""Registry of zero-shot classification data sets: name -> builder, like CLIP_benchmark's table.

Every data set, real or mini-world, is a `ZeroShotDataset`: images as float [3, H, W] in [0, 1],
integer labels, class names and prompt templates. Real data sets are read from torchvision-style
folders with `download=False`; a missing folder raises `DatasetNotFound` naming the folder and the
expected layout. Each entry also carries its reference L-inf budget (`reference_eps`, pixel units):
the strength `clipshield evaluate` uses when no `--eps` is given; and its fine-tuning recipe
(`finetune_recipe`, `clipshield.datasets.recipe`): the defaults `clipshield finetune` trains with on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

import torch

from clipshield.datasets.recipe import REFERENCE_RECIPE, FinetuneRecipe
from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import ConfigError, DatasetNotFound, UnknownName


class ZeroShotDataset(Protocol):
    """What evaluation and fine-tuning need from a data set.

    `preprocess` is the resolved preprocessing its images went through, `protocol` the choices that
    change results (data set, split, preprocessing preset and its description).
    """

    classnames: list[str]
    templates: list[str]
    preprocess: PreprocessConfig
    protocol: dict[str, str]

    def __len__(self) -> int: ...

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]: ...


@runtime_checkable
class InMemoryDataset(ZeroShotDataset, Protocol):
    """A data set small enough to hold at once (the mini world): what quick measurements, calibrations
    and the demo read. `images()` is float [N, 3, S, S] in [0, 1]; `labels` the N integer labels."""

    @property
    def labels(self) -> Sequence[int] | torch.Tensor: ...

    def images(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class DatasetRequest:
    """How to build a data set: root folder, split, preprocessing, an optional size limit.

    `preprocess` is the model record's preprocessing (None: serving's default at `image_size`) and
    `preset` the named choice applied to it (`clipshield.service.preprocess.PRESETS`; see `clipshield.datasets.transforms`).
    """

    root: Optional[Path] = None
    split: str = "test"
    image_size: int = 224
    limit: Optional[int] = None
    seed: int = 0
    options: dict = field(default_factory=dict)
    preprocess: Optional[PreprocessConfig] = None
    preset: str = "model"


Builder = Callable[[DatasetRequest], ZeroShotDataset]
_BUILDERS: dict[str, Builder] = {}
_PREFIX_BUILDERS: dict[str, Callable[[str, DatasetRequest], ZeroShotDataset]] = {}
_REFERENCE_EPS: dict[str, float] = {}  # name or family prefix -> reference L-inf budget (pixel units)
_RECIPES: dict[str, FinetuneRecipe] = {}  # name or family prefix -> fine-tuning recipe

# the papers' evaluation budget on 224 px real images (TGA-ZSR, PMG-AFT: eps = 1/255)
REAL_REFERENCE_EPS = 1 / 255


def register_dataset(
    name: str, reference_eps: float = REAL_REFERENCE_EPS, recipe: FinetuneRecipe = REFERENCE_RECIPE
) -> Callable[[Builder], Builder]:
    """Function decorator registering a builder under `name`, with its reference eps (pixel units) and recipe."""

    def wrap(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"data set {name!r} registered twice")
        _BUILDERS[name] = fn
        _REFERENCE_EPS[name] = reference_eps
        _RECIPES[name] = recipe
        return fn

    return wrap


def register_dataset_family(prefix: str, reference_eps: float = REAL_REFERENCE_EPS, recipe: FinetuneRecipe = REFERENCE_RECIPE) -> Callable:
    """Register a builder for every name starting with `prefix/` (e.g. miniworld/<domain>/...)."""

    def wrap(fn: Callable[[str, DatasetRequest], ZeroShotDataset]) -> Callable:
        _PREFIX_BUILDERS[prefix] = fn
        _REFERENCE_EPS[prefix] = reference_eps
        _RECIPES[prefix] = recipe
        return fn

    return wrap


def list_datasets() -> list[str]:
    """Registered data set names (families listed as 'prefix/...')."""
    return sorted(_BUILDERS) + sorted(f"{p}/..." for p in _PREFIX_BUILDERS)


def _entry_key(name: str) -> str:
    """The registry key of `name` (itself, or its family prefix); `UnknownName` listing the known ones."""
    if name in _BUILDERS:
        return name
    prefix = name.split("/", 1)[0]
    if prefix in _PREFIX_BUILDERS and "/" in name:
        return prefix
    raise UnknownName(f"unknown data set {name!r}; known: {', '.join(list_datasets())}")


def build_dataset(name: str, request: DatasetRequest) -> ZeroShotDataset:
    """Build a registered data set; unknown names list the known ones."""
    key = _entry_key(name)
    return _BUILDERS[name](request) if key == name else _PREFIX_BUILDERS[key](name, request)


def build_in_memory_dataset(name: str, request: DatasetRequest) -> InMemoryDataset:
    """`build_dataset` for callers that take all images at once; other data sets raise ConfigError."""
    ds = build_dataset(name, request)
    if not isinstance(ds, InMemoryDataset):
        raise ConfigError(f"{name} is read image by image; this step needs an in-memory data set (miniworld/<domain>/<label set>/<split>)")
    return ds


def reference_eps(name: str) -> float:
    """The registered reference L-inf budget of a data set (pixel units); unknown names list the known ones."""
    return _REFERENCE_EPS[_entry_key(name)]


def finetune_recipe(name: str) -> FinetuneRecipe:
    """The fine-tuning recipe registered with a training data set; unknown names list the known ones."""
    return _RECIPES[_entry_key(name)]


def require_folder(root: Optional[Path], name: str, layout: str) -> Path:
    """Return `root` if it exists, else raise `DatasetNotFound` naming it and the expected layout."""
    if root is None:
        raise DatasetNotFound(f"{name}: no data folder given (use --data-root); expected layout: {layout}")
    if not Path(root).is_dir():
        raise DatasetNotFound(f"{name}: folder {root} not found; expected layout: {layout}")
    return Path(root)


def subset_indices(n: int, limit: Optional[int], seed: int) -> Sequence[int]:
    """First-`limit` indices of a seeded permutation (a stable, class-balanced-in-expectation subset)."""
    if limit is None or limit >= n:
        return range(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].tolist()
