"""Data set transforms: every image of every data set goes through `clipshield.service.preprocess.to_pixels`.

A data set's preprocessing is resolved from the model's record preprocessing and a named preset
(`clipshield.service.preprocess.PRESETS`: `model`, the default, is what serving does; `paper` is the papers'
Resize(256)+CenterCrop(224) protocol; `squash` resizes to S x S). CIFAR/STL keep their own switch,
`options["lowres"]`: `tga224` (squash, TGA-ZSR's loader), `native` (no resize in the loader, the
model resizes inside, PMG-AFT/TeCoA); unset, they follow the preset, except that `paper` means
TGA-ZSR's squash for them, as in the reference code (docs/methods.md §0.7).
"""

from __future__ import annotations

from typing import Optional

import torch
from PIL import Image

from clipshield.datasets.registry import DatasetRequest
from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import ConfigError
from clipshield.service.preprocess import preset_config, to_pixels, to_rgb

LOWRES_CHOICES = ("tga224", "native")  # docs/methods.md §0.7: CIFAR/STL squashed to S (TGA) or native size


class PixelTransform:
    """PIL image -> float32 tensor [3, S, S] in [0, 1] through `to_rgb` + `to_pixels` (picklable for workers)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(to_pixels(to_rgb(img), self.cfg))


def open_image(path: str) -> Image.Image:
    """Image-folder loader: decoded with Pillow, left in its own mode (`PixelTransform` converts as serving does)."""
    with open(path, "rb") as fh:
        img = Image.open(fh)
        img.load()
    return img


def model_preprocess(req: DatasetRequest) -> PreprocessConfig:
    """The model's record preprocessing carried by the request (default: serving's, at `req.image_size`)."""
    return req.preprocess if req.preprocess is not None else PreprocessConfig(image_size=req.image_size)


def at_size(pre: PreprocessConfig, image_size: Optional[int]) -> PreprocessConfig:
    """`pre` with its size overridden by a loader resolution option (None: the model's own size)."""
    if image_size is None or image_size == pre.image_size:
        return pre
    return pre.model_copy(update={"image_size": image_size})


def resolve_preprocess(req: DatasetRequest, lowres: bool = False) -> tuple[PreprocessConfig, str]:
    """(resolved preprocessing, the name of the choice) for a data set built from `req`.

    `lowres` marks CIFAR-10/100 and STL-10, whose `options["lowres"]` overrides the preset.
    """
    model = model_preprocess(req)
    choice: Optional[str] = req.options.get("lowres") if lowres else None
    if choice is not None and choice not in LOWRES_CHOICES:
        raise ConfigError(f"option lowres={choice!r} not allowed; choose one of {', '.join(LOWRES_CHOICES)}")
    if choice == "native":
        return model.model_copy(update={"resize_mode": "none", "resize_ratio": 1.0}), "native"
    if choice == "tga224" or (lowres and req.preset == "paper"):
        return preset_config("squash", model), f"{req.preset}+tga224" if choice is None else "tga224"
    return preset_config(req.preset, model), req.preset


def image_transform(req: DatasetRequest, lowres: bool = False) -> tuple[PixelTransform, dict[str, str]]:
    """The transform of a decoded-image data set and its protocol entries (`preprocess`, `transform`)."""
    cfg, name = resolve_preprocess(req, lowres)
    return PixelTransform(cfg), {"preprocess": name, "transform": cfg.describe()}
