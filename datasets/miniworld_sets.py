"""Mini-world data sets in the registry: `<world>/<domain>/<label set>/<split>` and `<world>-train`.

Worlds (`clipshield.datasets.miniworld.worlds`): `miniworld` renders 8-bit 32x32 images, `miniworld224` the same
scenes at 56x56 for a 224-pixel model. Like every data set's, the images reach the model through
`clipshield.service.preprocess.to_pixels` with the request's resolved preprocessing (an identity for the
shipped 32-pixel model under the `model` preset; a 224-pixel model gets them resized exactly as
serving would resize the same images sent as PNG).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from clipshield.datasets.miniworld.dataset import LABEL_SETS, SPLITS, MiniWorldClassification, MiniWorldFinetune, MiniWorldTask
from clipshield.datasets.miniworld.world import DOMAINS, Split
from clipshield.datasets.miniworld.worlds import WORLDS, MiniWorld, get_world
from clipshield.datasets.recipe import FinetuneRecipe, TunedSetting
from clipshield.datasets.registry import DatasetRequest, register_dataset, register_dataset_family
from clipshield.datasets.transforms import resolve_preprocess
from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import UnknownName
from clipshield.service.preprocess import to_pixels

TUNED_FILE = Path(__file__).with_name("miniworld_tuned.json")  # world -> method -> tuned lr, loss weights, study


def tuned_settings(world: str, path: Path = TUNED_FILE) -> dict[str, TunedSetting]:
    """The per-method settings tuning studies chose for `world` (`clipshield experiment tune`), as recorded data."""
    if not path.is_file():
        return {}
    table = json.loads(path.read_text()).get(world, {})
    return {method: TunedSetting.model_validate(entry) for method, entry in table.items()}


def world_recipe(world: MiniWorld) -> FinetuneRecipe:
    """A world's fine-tuning recipe: one budget for every method, short enough for a laptop CPU
    (docs/finetuning.md), one learning rate per optimiser family (SGD, or AdamW for FARE) unless a
    study tuned the method (`miniworld_tuned.json`: its lr and loss weights), the world's reference
    budget for training and evaluation, its own shipped model and card sets."""
    return FinetuneRecipe(
        name=world.name,
        model=world.name,
        eps=world.reference_eps,
        steps=200,
        batch_size=32,
        data_limit=3200,
        warmup=None,
        lr={"sgd": 0.005, "adamw": 1e-4},
        eval_datasets=world.finetune_eval,
        tuned=tuned_settings(world.name),
    )


RECIPES: dict[str, FinetuneRecipe] = {name: world_recipe(world) for name, world in WORLDS.items()}  # one object per world
MINIWORLD_RECIPE = RECIPES["miniworld"]
_SEED_SPLITS = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}


def preprocess_pixels(images: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """float [N, 3, S, S] in [0, 1] from float [N, 3, H, W] 8-bit-valued pixels, image by image through `to_pixels`."""
    return preprocess_uint8(torch.from_numpy(np.clip(np.rint(images.numpy() * 255.0), 0, 255).astype(np.uint8)), cfg)


def preprocess_uint8(images: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """float [N, 3, S, S] in [0, 1] from uint8 [N, 3, H, W], image by image through `to_pixels` (pools stay uint8)."""
    arr = images.permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([to_pixels(Image.fromarray(np.ascontiguousarray(a), "RGB"), cfg) for a in arr]))


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


def _build_task(world: MiniWorld, name: str, req: DatasetRequest) -> PreprocessedMiniWorld:
    """Zero-shot task `<world>/<domain>/<label set>/<split>`; `req.limit` images (default 512)."""
    parts = name.split("/")
    if len(parts) != 4:
        raise UnknownName(
            f"mini-world data sets are named {world.name}/<domain>/<label set>/<split> with domain in {DOMAINS}, "
            f"label set in {LABEL_SETS}, split in {SPLITS}; got {name!r}"
        )
    _, domain, label_set, split = parts
    task = MiniWorldTask(
        domain,
        label_set,
        split,
        n=req.limit or 512,
        world_seed=req.seed,
        seed_split=_SEED_SPLITS.get(req.split, Split.TEST),
        world=world.name,
        render_size=world.render_size,
    )
    cfg, choice = resolve_preprocess(_at_model_size(req, world))
    return PreprocessedMiniWorld(MiniWorldClassification(task), cfg, choice, name)


def _build_train(world: MiniWorld, req: DatasetRequest) -> PreprocessedMiniWorld:
    """Fine-tuning set (ImageNet stand-in): plain domain, 48 seen colour+shape classes."""
    base = MiniWorldFinetune(
        n=req.limit or 4096, world_seed=req.seed, split=_SEED_SPLITS.get(req.split, Split.TRAIN), render_size=world.render_size
    )
    cfg, choice = resolve_preprocess(_at_model_size(req, world))
    return PreprocessedMiniWorld(base, cfg, choice, world.train_set)


def _at_model_size(req: DatasetRequest, world: MiniWorld) -> DatasetRequest:
    """Without a model record a world is served at its model's size (32 or 224), not the real sets' 224 default."""
    if req.preprocess is not None:
        return req
    return replace(req, preprocess=PreprocessConfig(image_size=world.model_size))


def _register(world: MiniWorld) -> None:
    """`<world>/<domain>/<label set>/<split>` and `<world>-train`, with the world's reference budget."""
    recipe = RECIPES[world.name]
    register_dataset_family(world.name, reference_eps=world.reference_eps, recipe=recipe)(partial(_build_task, world))
    register_dataset(world.train_set, reference_eps=world.reference_eps, recipe=recipe)(partial(_build_train, world))


for _world in WORLDS.values():
    _register(_world)


def standard_eval_names(label_sets: tuple[str, ...] = LABEL_SETS, world: str = "miniworld") -> list[str]:
    """A mini world's zero-shot suite: every domain x label set on seen combinations, plus held-out ones."""
    w = get_world(world)
    names = [w.task_name(d, ls, "seen") for d in DOMAINS for ls in label_sets]
    names += [w.task_name(d, "color_shape", sp) for d in ("plain",) for sp in SPLITS[1:]]
    return names
