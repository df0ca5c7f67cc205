"""Real zero-shot data sets (docs/methods.md §0.5, §0.7) read from torchvision-style folders, never downloaded.

Each torchvision-class set is one row of `torchvision_sets.json` (its files, splits, class-name rule and
prompt; `NAMERS` holds the rules), opened by `open_torchvision_set` with `download=False` and wrapped in a
`RealDataset` with the reference loaders' class names and prompt (docs/methods.md §0.7); PCAM, whose files
depend on the split, has its own builder; the wnid-folder sets (Tiny-ImageNet, ImageNet)
live in `clipshield.datasets.wnid` on the same helpers. Items are (float image [3, H, W] in [0, 1], int label).
`DatasetRequest.root` is the parent folder holding every data set's own folder (the torchvision
convention), so one `--data-root` serves all of them. A missing folder raises `DatasetNotFound`
naming it and the expected layout, before torchvision is called (so nothing is created or fetched).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from clipshield.datasets.registry import DatasetRequest, register_dataset, require_folder, subset_indices
from clipshield.datasets.transforms import LOWRES_CHOICES, PixelTransform, image_transform, open_image  # noqa: F401  (LOWRES_CHOICES re-exported)
from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import ConfigError, DatasetNotFound

logger = logging.getLogger(__name__)

PHOTO = "This is a photo of a {}"
PCAM_PROMPTS = [  # fixed per-class prompts of the reference loader; the typo is kept on purpose (docs/methods.md §0.7)
    "Tthis is a photo of healthy lymph node tissue.",
    "This is a photo of lymph node tumor tissue.",
]
_CLASSNAMES_DIR = Path(__file__).with_name("classnames")


class RealDataset(Dataset):
    """A torchvision data set with the reference loaders' class names, templates and transform record.

    `protocol` records the choices that change results (split, preprocessing preset and description);
    `preprocess` is the resolved `PreprocessConfig` every image went through.
    """

    def __init__(
        self,
        base: Any,
        classnames: list[str],
        templates: list[str],
        protocol: dict[str, str],
        req: DatasetRequest,
        preprocess: PreprocessConfig,
    ):
        self.base = base
        self.classnames = classnames
        self.templates = templates
        self.protocol = protocol
        self.preprocess = preprocess
        self._indices = subset_indices(len(base), req.limit, req.seed)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[self._indices[idx]]
        if image.shape[0] == 1:  # grey images in folder data sets
            image = image.expand(3, -1, -1)
        return image, int(label)


def clean_name(name: str, chars: str = "_-/") -> str:
    """Spec 0.5 cleaning: lower-case, `_`, `-`, `/` (or the given `chars`) replaced by spaces."""
    name = name.lower()
    for ch in chars:
        name = name.replace(ch, " ")
    return name


def caltech256_name(folder: str) -> str:
    """`012.binoculars` -> `binoculars`; `-101` suffix dropped (docs/methods.md §0.7)."""
    return clean_name(folder[4:].replace("-101", ""), "_-").strip()


def stanford_cars_name(name: str) -> str:
    """`AM General Hummer SUV 2000` -> `am general hummer suv` (trailing 5 chars = year, docs/methods.md §0.7)."""
    return clean_name(name[:-5], "_-")


def fgvc_name(variant: str) -> str:
    """`707-320` -> `boeing 707-320`: `Boeing ` before names starting with 7; only `_` replaced (reference)."""
    return clean_name(f"Boeing {variant}" if variant.startswith("7") else variant, "_")


def load_classnames(name: str) -> list[str]:
    """Class names shipped as JSON in `datasets/classnames/<name>.json`."""
    return json.loads((_CLASSNAMES_DIR / f"{name}.json").read_text())


def split_choice(name: str, req: DatasetRequest, allowed: dict[str, Any]) -> Any:
    """The builder's own value for `req.split` (ConfigError naming the allowed splits otherwise)."""
    if req.split not in allowed:
        raise ConfigError(f"{name}: split {req.split!r} not available; choose one of {sorted(allowed)}")
    return allowed[req.split]


def locate_root(name: str, req: DatasetRequest, layout: str, markers: Sequence[str]) -> Path:
    """The data root after checking that every marker path below it exists (else `DatasetNotFound`)."""
    root = require_folder(req.root, name, layout)
    for marker in markers:
        if not (root / marker).exists():
            raise DatasetNotFound(f"{name}: {root / marker} not found; expected layout: {layout}")
    return root


def _open(name: str, layout: str, make: Callable[[], Any]) -> Any:
    """Call a torchvision constructor, turning its 'not found' errors into `DatasetNotFound`."""
    try:
        return make()
    except (RuntimeError, FileNotFoundError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetNotFound(f"{name}: {first}; expected layout: {layout}") from None


def wrap_dataset(
    name: str,
    req: DatasetRequest,
    base: Any,
    classnames: list[str],
    templates: list[str],
    transform: PixelTransform,
    protocol: dict[str, str],
) -> RealDataset:
    """A `RealDataset` whose protocol names the data set, split and preprocessing (`image_transform`)."""
    logger.info(
        "data set %s: %d images, %d classes, %s (%s)", name, len(base), len(classnames), protocol["preprocess"], protocol["transform"]
    )
    return RealDataset(base, classnames, templates, {"dataset": name, "split": req.split, **protocol}, req, transform.cfg)


@dataclass(frozen=True)
class TorchvisionSet:
    """One torchvision-class data set: its files, how torchvision opens it, the reference's names and prompt.

    `splits` maps each split the set offers to torchvision's value for keyword `split_kw`; a set with one
    split maps `"test"` to None and passes no keyword. `lowres` sets accept `options["lowres"]`.
    """

    cls: Callable
    layout: str
    markers: tuple[str, ...]
    splits: dict[str, Any]
    names: Callable[[Any], list[str]]
    template: str = PHOTO
    split_kw: str = "split"
    extra: dict[str, Any] = field(default_factory=dict)
    lowres: bool = False
    check: Optional[Callable[[RealDataset, str], None]] = None  # (opened set, layout): raises DatasetNotFound


def open_torchvision_set(name: str, entry: TorchvisionSet, req: DatasetRequest) -> RealDataset:
    """The shared path of every torchvision-class data set: check the split and the folders, open with
    download=False, name the classes, wrap."""
    split = split_choice(name, req, entry.splits)
    kwargs = dict(entry.extra) if split is None else {entry.split_kw: split, **entry.extra}
    root = locate_root(name, req, entry.layout, entry.markers)
    transform, protocol = image_transform(req, entry.lowres)
    base = _open(name, entry.layout, lambda: entry.cls(str(root), transform=transform, download=False, **kwargs))
    ds = wrap_dataset(name, req, base, entry.names(base), [entry.template], transform, protocol)
    if entry.check is not None:
        entry.check(ds, entry.layout)
    return ds


def _one_folder_per_name(ds: RealDataset, layout: str) -> None:
    """EuroSAT's names come from the shipped list: the class folders must match it in number."""
    found, expected = len(ds.base.classes), len(ds.classnames)
    if found != expected:
        raise DatasetNotFound(f"{ds.protocol['dataset']}: found {found} class folders, expected {expected}; expected layout: {layout}")


def _refined(attr: str) -> Callable[[Any], list[str]]:
    return lambda base: [clean_name(c) for c in getattr(base, attr)]


def _shipped(name: str, chars: str = "_-/") -> Callable[[Any], list[str]]:
    return lambda _base: [clean_name(c, chars) for c in load_classnames(name)]


def image_folder(name: str, folder: Path, transform: Callable, layout: str) -> tvd.ImageFolder:
    """`ImageFolder` decoding like serving (`open_image` + `PixelTransform`); missing folders -> `DatasetNotFound`."""
    return _open(name, layout, lambda: tvd.ImageFolder(str(folder), transform=transform, loader=open_image))


# How each set's class names are made (the reference loaders', docs/methods.md §0.7), by the table's "names" value.
NAMERS: dict[str, Callable[[Any], list[str]]] = {
    "classes": _refined("classes"),
    "categories": _refined("categories"),
    "flowers102": _shipped("flowers102", "_-"),
    "eurosat": lambda _base: load_classnames("eurosat"),
    "fgvc_aircraft": lambda base: [fgvc_name(c) for c in base.classes],
    "caltech256": lambda base: [caltech256_name(c) for c in base.categories],
    "stanford_cars": lambda base: [stanford_cars_name(c) for c in base.classes],
}
CHECKS: dict[str, Callable[[RealDataset, str], None]] = {"one_folder_per_name": _one_folder_per_name}
TABLE_FILE = Path(__file__).with_name("torchvision_sets.json")  # one row per set: files, splits, names, prompt


def load_torchvision_sets(path: Path = TABLE_FILE) -> dict[str, TorchvisionSet]:
    """The table's sets, in file order (`about` is for readers: test-split size and naming notes)."""
    sets = {}
    for name, row in json.loads(path.read_text()).items():
        sets[name] = TorchvisionSet(
            cls=getattr(tvd, row["torchvision"]),
            layout=row["layout"],
            markers=tuple(row["markers"]),
            splits=row["splits"],
            names=NAMERS[row["names"]],
            template=row.get("template", PHOTO),
            split_kw=row.get("split_kw", "split"),
            extra=row.get("extra", {}),
            lowres=row.get("lowres", False),
            check=CHECKS[row["check"]] if "check" in row else None,
        )
    return sets


TORCHVISION_SETS = load_torchvision_sets()


def _register_torchvision_set(name: str, entry: TorchvisionSet) -> None:
    register_dataset(name)(lambda req: open_torchvision_set(name, entry, req))


for _name, _entry in TORCHVISION_SETS.items():
    _register_torchvision_set(_name, _entry)


@register_dataset("pcam")
def build_pcam(req: DatasetRequest) -> RealDataset:
    """PatchCamelyon (test: 32 768 images); two fixed prompts (class names are whole prompts, template `{}`)."""
    split = split_choice("pcam", req, {"train": "train", "val": "valid", "test": "test"})
    layout = f"<root>/pcam/camelyonpatch_level_2_split_{split}_{{x,y}}.h5"
    markers = [f"pcam/camelyonpatch_level_2_split_{split}_{xy}.h5" for xy in "xy"]
    locate_root("pcam", req, layout, markers)
    try:
        import h5py  # noqa: F401  (torchvision's PCAM needs it; checked here for a one-line message)
    except ImportError:
        raise ConfigError("pcam: the h5py package is needed to read PCAM's .h5 files (pip install 'clipshield[data]')") from None
    tv_split = {"valid": "val"}.get(split, split)
    entry = TorchvisionSet(tvd.PCAM, layout, tuple(markers), {req.split: tv_split}, lambda _: list(PCAM_PROMPTS), "{}")
    return open_torchvision_set("pcam", entry, req)


# The 16 zero-shot sets of TGA-ZSR and PMG-AFT (docs/methods.md §0.7), in the order of their result tables
# (`clipshield evaluate --datasets paper16` runs them in this order).
REAL_DATASETS: tuple[str, ...] = (
    "tinyimagenet",
    "cifar10",
    "cifar100",
    "stl10",
    "food101",
    "oxford_pets",
    "flowers102",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "caltech101",
    "caltech256",
    "stanford_cars",
    "pcam",
    "imagenet",
    "sun397",
)
