"""Mini-world data sets in the registry: `miniworld/<domain>/<label set>/<split>` and `miniworld-train`.

The world renders 8-bit 32x32 images; like every data set's, they reach the model through
`clipshield.service.preprocess.to_pixels` with the request's resolved preprocessing (an identity for the
shipped 32-pixel model under the `model` preset; a 224-pixel model gets them resized exactly as
serving would resize the same images sent as PNG).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import UnknownName
from clipshield.service.preprocess import to_pixels
from clipshield.training.miniworld.dataset import LABEL_SETS, SPLITS, MiniWorldClassification, MiniWorldFinetune, MiniWorldTask
from clipshield.training.miniworld.world import DOMAINS, Split

from .recipe import FinetuneRecipe
from .registry import DatasetRequest, register_dataset, register_dataset_family
from .transforms import resolve_preprocess

# at 32x32 an L-inf budget of 4/255 plays the role 1/255 plays on 224x224 ImageNet (README, docs/evaluation.md)
MINIWORLD_REFERENCE_EPS = 4 / 255
# fine-tuning on the mini world: one budget for every method, short enough for a laptop CPU
# (docs/finetuning.md); one learning rate per optimiser family (SGD, or AdamW for FARE)
MINIWORLD_RECIPE = FinetuneRecipe(
    name="miniworld",
    eps=MINIWORLD_REFERENCE_EPS,
    steps=200,
    batch_size=32,
    data_limit=3200,
    warmup=None,
    lr={"sgd": 0.005, "adamw": 1e-4},
    eval_datasets=("miniworld/plain/color_shape/seen", "miniworld/plain/color_shape/heldout_image", "miniworld/outlined/color_shape/seen"),
)
_SEED_SPLITS = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}


def preprocess_pixels(images: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """float [N, 3, S, S] in [0, 1] from float [N, 3, H, W] 8-bit-valued pixels, image by image through `to_pixels`."""
    arr = np.clip(np.rint(images.numpy() * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return torch.from_numpy(np.stack([to_pixels(Image.fromarray(a, "RGB"), cfg) for a in arr]))


class PreprocessedMiniWorld(torch.utils.data.Dataset):
    """A mini-world data set whose images go through the resolved preprocessing.

    `images()` preprocesses every image once and keeps the result (evaluation); `__getitem__`
    preprocesses one image on demand until then (fine-tuning at 224 px would not fit in memory at once).
    """

    def __init__(self, base: Union[MiniWorldClassification, MiniWorldFinetune], cfg: PreprocessConfig, choice: str, name: str) -> None:
        self.base = base
        self.preprocess = cfg
        self.classnames = base.classnames
        self.templates = base.templates
        self.labels = base.labels
        self.protocol = {
            "dataset": name,
            "split": getattr(getattr(base, "task", None), "split", "train"),
            "preprocess": choice,
            "transform": cfg.describe(),
        }
        self._cache: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.base)

    def images(self) -> torch.Tensor:
        """All images as float [N, 3, S, S] in [0, 1] (preprocessed once, then kept)."""
        if self._cache is None:
            self._cache = preprocess_pixels(self.base.images(), self.preprocess)
        return self._cache

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, Any]:
        if self._cache is not None:
            return self._cache[idx], self.labels[idx]
        image, label = self.base[idx]
        return preprocess_pixels(image[None], self.preprocess)[0], label


@register_dataset_family("miniworld", reference_eps=MINIWORLD_REFERENCE_EPS, recipe=MINIWORLD_RECIPE)
def build_miniworld(name: str, req: DatasetRequest) -> PreprocessedMiniWorld:
    """Zero-shot task `miniworld/<domain>/<label set>/<split>`; `req.limit` images (default 512)."""
    parts = name.split("/")
    if len(parts) != 4:
        raise UnknownName(
            f"mini-world data sets are named miniworld/<domain>/<label set>/<split> with domain in {DOMAINS}, "
            f"label set in {LABEL_SETS}, split in {SPLITS}; got {name!r}"
        )
    _, domain, label_set, split = parts
    task = MiniWorldTask(
        domain, label_set, split, n=req.limit or 512, world_seed=req.seed, seed_split=_SEED_SPLITS.get(req.split, Split.TEST)
    )
    cfg, choice = resolve_preprocess(_at_32(req))
    return PreprocessedMiniWorld(MiniWorldClassification(task), cfg, choice, name)


@register_dataset("miniworld-train", reference_eps=MINIWORLD_REFERENCE_EPS, recipe=MINIWORLD_RECIPE)
def build_miniworld_train(req: DatasetRequest) -> PreprocessedMiniWorld:
    """Fine-tuning set (ImageNet stand-in): plain domain, 48 seen colour+shape classes."""
    base = MiniWorldFinetune(n=req.limit or 4096, world_seed=req.seed, split=_SEED_SPLITS.get(req.split, Split.TRAIN))
    cfg, choice = resolve_preprocess(_at_32(req))
    return PreprocessedMiniWorld(base, cfg, choice, "miniworld-train")


def _at_32(req: DatasetRequest) -> DatasetRequest:
    """Without a model record the mini world is served at its own 32 pixels (not the real sets' 224 default)."""
    if req.preprocess is not None:
        return req
    return replace(req, preprocess=PreprocessConfig(image_size=32))


def standard_eval_names(label_sets: tuple[str, ...] = LABEL_SETS) -> list[str]:
    """The mini world's zero-shot suite: every domain x label set on seen combinations, plus held-out ones."""
    names = [f"miniworld/{d}/{ls}/seen" for d in DOMAINS for ls in label_sets]
    names += [f"miniworld/{d}/color_shape/{sp}" for d in ("plain",) for sp in SPLITS[1:]]
    return names
