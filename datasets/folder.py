"""`folder/<dir>`: any torchvision-style class-folder tree, the user's own data (fine-tuning or evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clipshield.datasets.real import PHOTO, RealDataset, clean_name, image_folder, wrap_dataset
from clipshield.datasets.registry import DatasetRequest, register_dataset_family, require_folder
from clipshield.datasets.transforms import image_transform
from clipshield.service.errors import DatasetNotFound

FOLDER_PREFIX = "folder/"
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val"), "val": ("val",)}
CLASSNAMES_FILE = "classnames.txt"


def folder_classnames(root: Path, folders: Sequence[str]) -> list[str]:
    """Names for the class folders (sorted, as `ImageFolder` indexes them).

    `<root>/classnames.txt` gives them, either as `folder<TAB>name` lines or as one name per line in
    sorted folder order; without it the folder names are cleaned (`_`, `-`, `/` -> space).
    """
    path = root / CLASSNAMES_FILE
    if not path.is_file():
        return [clean_name(f) for f in folders]
    lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    if lines and all("\t" in line for line in lines):
        table = dict(line.split("\t", 1) for line in lines)
        missing = [f for f in folders if f not in table]
        if missing:
            raise DatasetNotFound(f"{path}: no name for class folder {missing[0]!r} ({len(missing)} missing)")
        return [table[f].strip() for f in folders]
    if len(lines) != len(folders):
        raise DatasetNotFound(
            f"{path}: {len(lines)} names for {len(folders)} class folders (one per line, sorted folder order, or 'folder<TAB>name' lines)"
        )
    return [line.strip() for line in lines]


def held_out_split(tree: Path) -> str:
    """What a `folder/<dir>` tree's test split reads: "test" or "val" (held out), "same" (no split folders:
    the training images themselves) or "none" (train/ only, or no tree: nothing to evaluate on)."""
    if not tree.is_dir():
        return "none"
    splits = {d for d in ("train", "val", "test") if (tree / d).is_dir()}
    if not splits:
        return "same"
    found = [d for d in SPLIT_FOLDERS["test"] if d in splits]
    return found[0] if found else "none"


@register_dataset_family("folder")
def build_folder(name: str, req: DatasetRequest) -> RealDataset:
    """`folder/<dir>`: any `ImageFolder` tree under `<root>/<dir>`, for fine-tuning or evaluating on your own data.

    Images are read from `<root>/<dir>/<split>/<class>/*` (split folders: train; test, else val) or,
    when there are no split folders, from `<root>/<dir>/<class>/*` for every split. Class names as
    `folder_classnames`; prompt `options["templates"]` or "This is a photo of a {}"; the
    request's preprocessing (`clipshield.datasets.transforms`, default: the model's own, as served). The name
    keys evaluation cells, so each tree gets its own.
    """
    sub = name.split("/", 1)[1]
    layout = f"<root>/{sub}/[train/|test/|val/]<class>/<images> (+ optional {CLASSNAMES_FILE})"
    root = require_folder(req.root, name, layout) / sub
    if not root.is_dir():
        raise DatasetNotFound(f"{name}: folder {root} not found; expected layout: {layout}")
    splits = [d for d in ("train", "val", "test") if (root / d).is_dir()]
    folder = root
    if splits:
        wanted = SPLIT_FOLDERS.get(req.split, (req.split,))
        found = [d for d in wanted if d in splits]
        if not found:
            raise DatasetNotFound(
                f"{name}: no {' or '.join(wanted)} folder in {root} (found {', '.join(splits)}); expected layout: {layout}"
            )
        folder = root / found[0]
    transform, protocol = image_transform(req)
    base = image_folder(name, folder, transform, layout)
    templates = list(req.options.get("templates", [PHOTO]))
    return wrap_dataset(name, req, base, folder_classnames(root, base.classes), templates, transform, protocol)
