"""A user's own class-folder tree from scikit-image photo crops, named in words the mini-world model reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# class folder -> (scikit-image sample, class name in the mini-world vocabulary)
PHOTO_CLASSES = {"cat": ("chelsea", "orange object"), "coffee": ("coffee", "red object"), "rocket": ("rocket", "blue object")}


def write_photo_tree(root: Path, per_class: tuple[int, int] = (12, 4), size: int = 40, seed: int = 0) -> Path:
    """`<root>/photos/{train,test}/<class>/<k>.png`: random `size`-px crops of one photo per class, plus
    `classnames.txt`; returns `<root>/photos`. Small on purpose: a few dozen PNGs, written in milliseconds."""
    from skimage import data

    rng = np.random.default_rng(seed)
    tree = root / "photos"
    for folder, (sample, _name) in PHOTO_CLASSES.items():
        photo = getattr(data, sample)()
        h, w = photo.shape[:2]
        for split, count in zip(("train", "test"), per_class):
            out = tree / split / folder
            out.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                y, x = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
                Image.fromarray(np.ascontiguousarray(photo[y : y + size, x : x + size])).save(out / f"{k}.png")
    (tree / "classnames.txt").write_text("".join(f"{f}\t{name}\n" for f, (_s, name) in PHOTO_CLASSES.items()))
    return tree


def class_names() -> list[str]:
    """The tree's class names in folder order (as `ImageFolder` sorts the folders)."""
    return [PHOTO_CLASSES[f][1] for f in sorted(PHOTO_CLASSES)]
