"""Registry of zero-shot classification data sets: name -> builder, like CLIP_benchmark's table.

Every data set, real or mini-world, is a `ZeroShotDataset`: images as float [3, H, W] in [0, 1],
integer labels, class names and prompt templates. Real data sets are read from torchvision-style
folders with `download=False`; a missing folder raises `DatasetNotFound` naming the folder and the
expected layout.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import torch

from service.config import PreprocessConfig
from service.errors import DatasetNotFound


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


@dataclass(frozen=True)
class DatasetRequest:
    """How to build a data set: root folder, split, preprocessing, an optional size limit.

    `preprocess` is the model record's preprocessing (None: serving's default at `image_size`) and
    `preset` the named choice applied to it (`service.preprocess.PRESETS`; see `training.data.transforms`).
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


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Function decorator registering a builder under `name`."""

    def wrap(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"data set {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return wrap


def register_dataset_family(prefix: str) -> Callable:
    """Register a builder for every name starting with `prefix/` (e.g. miniworld/<domain>/...)."""

    def wrap(fn: Callable[[str, DatasetRequest], ZeroShotDataset]) -> Callable:
        _PREFIX_BUILDERS[prefix] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    """Registered data set names (families listed as 'prefix/...')."""
    return sorted(_BUILDERS) + sorted(f"{p}/..." for p in _PREFIX_BUILDERS)


def build_dataset(name: str, request: DatasetRequest) -> ZeroShotDataset:
    """Build a registered data set; unknown names list the known ones."""
    if name in _BUILDERS:
        return _BUILDERS[name](request)
    prefix = name.split("/", 1)[0]
    if prefix in _PREFIX_BUILDERS and "/" in name:
        return _PREFIX_BUILDERS[prefix](name, request)
    raise KeyError(f"unknown data set {name!r}; known: {', '.join(list_datasets())}")


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
