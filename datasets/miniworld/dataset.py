"""Mini-world data sets: a pre-training pool and zero-shot classification sets.

Images are generated on demand from per-image seeds: `seed = hash(world seed, split, index)`, so
evaluation sets (VAL/TEST splits) never share a seed with pre-training (TRAIN split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from clipshield.datasets.miniworld.captions import EVAL_TEMPLATES, FINETUNE_TEMPLATE
from clipshield.datasets.miniworld.render import ImageSpec, render
from clipshield.datasets.miniworld.world import BACKGROUNDS, COLORS, DOMAINS, IMAGE_SIZE, SHAPES, SIZES, Split, combo_name, combos
from clipshield.service.errors import UnknownName

LABEL_SETS = ("shape", "color", "color_shape")
SPLITS = ("seen", "heldout_image", "heldout_caption")


def image_seed(world_seed: int, split: Split, index: int) -> int:
    """Per-image generator seed; distinct (split, index) pairs give independent streams."""
    return int(np.random.SeedSequence([world_seed, int(split), index]).generate_state(1, dtype=np.uint64)[0])


def _spec(rng: np.random.Generator, shape: int, color: int, domain: int, seed: int) -> ImageSpec:
    return ImageSpec(
        shape=shape,
        color=color,
        size=int(rng.integers(len(SIZES))),
        domain=domain,
        background=int(rng.integers(len(BACKGROUNDS))),
        seed=seed,
    )


def pretraining_specs(n: int, world_seed: int = 0) -> list[ImageSpec]:
    """`n` image specs for pre-training: all domains, every combination except image-held-out ones."""
    allowed = combos("seen") + combos("heldout_caption")
    specs = []
    for i in range(n):
        seed = image_seed(world_seed, Split.TRAIN, i)
        rng = np.random.default_rng(seed)
        shape, color = allowed[int(rng.integers(len(allowed)))]
        specs.append(_spec(rng, shape, color, int(rng.integers(len(DOMAINS))), seed))
    return specs


def render_specs(specs: list[ImageSpec], size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 [N, 3, size, size] images for `specs`."""
    return torch.from_numpy(np.stack([render(s, size) for s in specs])).permute(0, 3, 1, 2).contiguous()


def spec_attributes(specs: list[ImageSpec]) -> np.ndarray:
    """int64 [N, 4]: (shape, colour, size, domain) per spec."""
    return np.array([[s.shape, s.color, s.size, s.domain] for s in specs], dtype=np.int64)


@dataclass(frozen=True)
class MiniWorldTask:
    """One zero-shot classification set: domain x label set x split of combinations."""

    domain: str
    label_set: str
    split: str
    n: int = 512
    world_seed: int = 0
    seed_split: Split = Split.TEST
    world: str = "miniworld"  # registry prefix; the scenes are the same in every world
    render_size: int = IMAGE_SIZE

    @property
    def name(self) -> str:
        return f"{self.world}/{self.domain}/{self.label_set}/{self.split}"

    def classnames(self) -> list[str]:
        if self.label_set == "shape":
            return list(SHAPES)
        if self.label_set == "color":
            return list(COLORS)
        return [combo_name(s, c) for s in range(len(SHAPES)) for c in range(len(COLORS))]

    def templates(self) -> list[str]:
        return list(EVAL_TEMPLATES[self.label_set])

    def label_of(self, shape: int, color: int) -> int:
        if self.label_set == "shape":
            return shape
        if self.label_set == "color":
            return color
        return shape * len(COLORS) + color


class MiniWorldClassification(Dataset):
    """Images (float [3, R, R] in [0, 1], R = the task's render size) and integer labels of a `MiniWorldTask`.

    Combinations are drawn uniformly from the task's split; images of a task depend only on
    (world seed, seed split, domain, index), so a task is identical across runs and processes.
    """

    def __init__(self, task: MiniWorldTask) -> None:
        if task.domain not in DOMAINS:
            raise UnknownName(f"unknown domain {task.domain!r}; known: {', '.join(DOMAINS)}")
        if task.label_set not in LABEL_SETS:
            raise UnknownName(f"unknown label set {task.label_set!r}; known: {', '.join(LABEL_SETS)}")
        if task.split not in SPLITS:
            raise UnknownName(f"unknown split {task.split!r}; known: {', '.join(SPLITS)}")
        self.task = task
        self.classnames = task.classnames()
        self.templates = task.templates()
        pool = combos(task.split)
        domain = DOMAINS.index(task.domain)
        offset = (domain * len(SPLITS) + SPLITS.index(task.split)) * 10_000_000
        self.specs: list[ImageSpec] = []
        for i in range(task.n):
            seed = image_seed(task.world_seed, task.seed_split, offset + i)
            rng = np.random.default_rng(seed)
            shape, color = pool[int(rng.integers(len(pool)))]
            self.specs.append(_spec(rng, shape, color, domain, seed))
        self.labels = [task.label_of(s.shape, s.color) for s in self.specs]
        self._cache: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.specs)

    def images(self) -> torch.Tensor:
        """All images as float [N, 3, R, R] in [0, 1] (rendered once, then cached)."""
        if self._cache is None:
            self._cache = render_specs(self.specs, self.task.render_size).float() / 255.0
        return self._cache

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.images()[idx], self.labels[idx]


class MiniWorldFinetune(Dataset):
    """The ImageNet stand-in for adversarial fine-tuning: plain domain, the 48 seen combinations.

    Labels index `classnames` (seen combinations only); the prompt is `FINETUNE_TEMPLATE`.
    """

    def __init__(
        self, n: int = 4096, world_seed: int = 0, split: Split = Split.TRAIN, domain: str = "plain", render_size: int = IMAGE_SIZE
    ) -> None:
        self.pairs = combos("seen")
        self.classnames = [combo_name(s, c) for s, c in self.pairs]
        self.templates = [FINETUNE_TEMPLATE]
        d = DOMAINS.index(domain)
        self.specs = []
        for i in range(n):
            seed = image_seed(world_seed, split, 50_000_000 + i)
            rng = np.random.default_rng(seed)
            shape, color = self.pairs[int(rng.integers(len(self.pairs)))]
            self.specs.append(_spec(rng, shape, color, d, seed))
        index = {p: i for i, p in enumerate(self.pairs)}
        self.labels = torch.tensor([index[(s.shape, s.color)] for s in self.specs], dtype=torch.long)
        self._images = render_specs(self.specs, render_size)

    def __len__(self) -> int:
        return len(self.specs)

    def images(self) -> torch.Tensor:
        """All images as float [N, 3, R, R] in [0, 1] (R = the render size)."""
        return self._images.float() / 255.0

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._images[idx].float() / 255.0, self.labels[idx]
