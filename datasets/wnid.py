"""ImageNet-style data sets (Tiny-ImageNet, ImageNet): wnid class folders, class names from a wnid table.

Kept apart from the torchvision-class data sets of `clipshield.datasets.real`: these read plain folders
(`ImageFolder`, or Tiny-ImageNet's val split as shipped) and map WordNet ids to names
(docs/methods.md §0.5, §0.7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from clipshield.datasets.real import PHOTO, RealDataset, clean_name, image_folder, locate_root, split_choice, wrap_dataset
from clipshield.datasets.registry import DatasetRequest, register_dataset, require_folder
from clipshield.datasets.transforms import image_transform, open_image
from clipshield.service.errors import DatasetNotFound


class _AnnotatedFolder(Dataset):
    """Flat image folder + (file, class) list: the official Tiny-ImageNet val split, used as shipped."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[idx]
        return self.transform(open_image(str(path))), label


def read_wnid_table(path: Path) -> dict[str, str]:
    """wnid -> name from `words.txt` (`wnid<TAB>name, synonym, ...`: first synonym) or a reference
    table (`wnid<TAB>index<TAB>name`, TGA's `*_classes_name(s).txt`: third column)."""
    table: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.strip().split("\t")
        if len(parts) >= 3:
            table[parts[0]] = parts[2]
        elif len(parts) == 2:
            table[parts[0]] = parts[1].split(",")[0].strip()
    return table


def _names_for(name: str, wnids: Sequence[str], table: dict[str, str], source: Path) -> list[str]:
    missing = [w for w in wnids if w not in table]
    if missing:
        raise DatasetNotFound(f"{name}: no class name for wnid {missing[0]} in {source} ({len(missing)} missing)")
    return [clean_name(table[w]) for w in wnids]


@register_dataset("tinyimagenet")
def build_tinyimagenet(req: DatasetRequest) -> RealDataset:
    """Tiny-ImageNet (test = official val, 10 000 images; train = 100 000), docs/methods.md §0.5.

    val may be re-arranged into class folders (`val/<wnid>/*.JPEG`, as the reference) or used as
    shipped (`val/images/*.JPEG` + `val/val_annotations.txt`). Names: `words.txt` first synonym,
    or `options["wnid_table"]` (a `wnid<TAB>index<TAB>name` file), cleaned.
    """
    layout = (
        "<root>/tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images/*.JPEG,"
        "val/<wnid>/*.JPEG or val/{images/*.JPEG,val_annotations.txt}}"
    )
    split = split_choice("tinyimagenet", req, {"train": "train", "test": "val", "val": "val"})
    root = locate_root("tinyimagenet", req, layout, ["tiny-imagenet-200/wnids.txt", f"tiny-imagenet-200/{split}"])
    base_dir = root / "tiny-imagenet-200"
    table_path = Path(req.options.get("wnid_table", base_dir / "words.txt"))
    if not table_path.is_file():
        raise DatasetNotFound(f"tinyimagenet: {table_path} not found; expected layout: {layout}")
    table = read_wnid_table(table_path)
    transform, protocol = image_transform(req)
    folder = base_dir / split
    annotations = folder / "val_annotations.txt"
    if split == "val" and annotations.is_file() and (folder / "images").is_dir():
        wnids = sorted(base_dir.joinpath("wnids.txt").read_text().split())
        index = {w: i for i, w in enumerate(wnids)}
        rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
        unknown = sorted({w for _, w in rows if w not in index})
        if unknown:
            raise DatasetNotFound(f"tinyimagenet: {annotations} names wnid {unknown[0]}, not in wnids.txt")
        base: Any = _AnnotatedFolder([(folder / "images" / f, index[w]) for f, w in rows], transform)
    else:
        base = image_folder("tinyimagenet", folder, transform, layout)
        wnids = base.classes
    return wrap_dataset("tinyimagenet", req, base, _names_for("tinyimagenet", wnids, table, table_path), [PHOTO], transform, protocol)


@register_dataset("imagenet")
def build_imagenet(req: DatasetRequest) -> RealDataset:
    """ImageNet-1k (test = val, 50 000 images) as `ImageFolder` over 1000 wnid folders, like the reference.

    torchvision's `ImageNet` class needs the devkit archives; plain wnid folders are what users have.
    Names: `open_clip`'s `IMAGENET_CLASSNAMES` (offline, in sorted-wnid order), or
    `options["wnid_table"]` (TGA's `imagenet_classes_names.txt`, third column), cleaned.
    """
    layout = "<root>/ImageNet/{val,train}/<wnid>/*.JPEG (1000 wnid folders; 'imagenet' also accepted)"
    split = split_choice("imagenet", req, {"train": "train", "test": "val", "val": "val"})
    root = require_folder(req.root, "imagenet", layout)
    found = [root / d / split for d in ("ImageNet", "imagenet") if (root / d / split).is_dir()]
    if not found:
        raise DatasetNotFound(f"imagenet: {root / 'ImageNet' / split} not found; expected layout: {layout}")
    transform, protocol = image_transform(req)
    base = image_folder("imagenet", found[0], transform, layout)
    if "wnid_table" in req.options:
        names = _names_for("imagenet", base.classes, read_wnid_table(Path(req.options["wnid_table"])), Path(req.options["wnid_table"]))
    else:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        if len(base.classes) != len(IMAGENET_CLASSNAMES):
            raise DatasetNotFound(
                f"imagenet: {found[0]} has {len(base.classes)} class folders, expected "
                f"{len(IMAGENET_CLASSNAMES)}; expected layout: {layout}"
            )
        names = [clean_name(c) for c in IMAGENET_CLASSNAMES]
    return wrap_dataset("imagenet", req, base, names, [PHOTO], transform, protocol)
