"""Real zero-shot data sets (docs/methods.md §0.5, §0.7) read from torchvision-style folders, never downloaded.

Each builder wraps a torchvision data set (`download=False`) in a `RealDataset` with the reference
loaders' class names and prompt (docs/methods.md §0.7); the wnid-folder sets (Tiny-ImageNet, ImageNet)
live in `clipshield.training.data.wnid` on the same helpers. Items are (float image [3, H, W] in [0, 1], int label).
`DatasetRequest.root` is the parent folder holding every data set's own folder (the torchvision
convention), so one `--data-root` serves all of them. A missing folder raises `DatasetNotFound`
naming it and the expected layout, before torchvision is called (so nothing is created or fetched).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import ConfigError, DatasetNotFound

from .registry import DatasetRequest, register_dataset, require_folder, subset_indices
from .transforms import LOWRES_CHOICES, PixelTransform, image_transform, open_image  # noqa: F401  (LOWRES_CHOICES re-exported)

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
    """Class names shipped as JSON in `training/data/classnames/<name>.json`."""
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


def _torchvision(
    name: str,
    req: DatasetRequest,
    layout: str,
    markers: Sequence[str],
    cls: Callable,
    kwargs: dict,
    names: Callable[[Any], list[str]],
    templates: list[str],
    lowres: bool = False,
) -> RealDataset:
    """Shared path of every torchvision-class data set: locate, open with download=False, wrap."""
    root = locate_root(name, req, layout, markers)
    transform, protocol = image_transform(req, lowres)
    base = _open(name, layout, lambda: cls(str(root), transform=transform, download=False, **kwargs))
    return wrap_dataset(name, req, base, names(base), templates, transform, protocol)


def _refined(attr: str) -> Callable[[Any], list[str]]:
    return lambda base: [clean_name(c) for c in getattr(base, attr)]


def image_folder(name: str, folder: Path, transform: Callable, layout: str) -> tvd.ImageFolder:
    """`ImageFolder` decoding like serving (`open_image` + `PixelTransform`); missing folders -> `DatasetNotFound`."""
    return _open(name, layout, lambda: tvd.ImageFolder(str(folder), transform=transform, loader=open_image))


def _cifar(name: str, req: DatasetRequest, folder: str, files: str, cls: Callable) -> RealDataset:
    """CIFAR-10/100 (test: 10 000 images each); `options["lowres"]` in tga224|native."""
    train = split_choice(name, req, {"train": True, "test": False})
    return _torchvision(
        name, req, f"<root>/{folder}/{{{files}}}", [folder], cls, {"train": train}, _refined("classes"), [PHOTO], lowres=True
    )


@register_dataset("cifar10")
def build_cifar10(req: DatasetRequest) -> RealDataset:
    return _cifar("cifar10", req, "cifar-10-batches-py", "data_batch_1..5,test_batch,batches.meta", tvd.CIFAR10)


@register_dataset("cifar100")
def build_cifar100(req: DatasetRequest) -> RealDataset:
    return _cifar("cifar100", req, "cifar-100-python", "train,test,meta", tvd.CIFAR100)


@register_dataset("stl10")
def build_stl10(req: DatasetRequest) -> RealDataset:
    """STL-10 (test: 8 000 images at 96x96); `options["lowres"]` in tga224|native."""
    layout = "<root>/stl10_binary/{test_X.bin,test_y.bin,train_X.bin,train_y.bin,class_names.txt}"
    split = split_choice("stl10", req, {"train": "train", "test": "test"})
    return _torchvision("stl10", req, layout, ["stl10_binary"], tvd.STL10, {"split": split}, _refined("classes"), [PHOTO], lowres=True)


@register_dataset("sun397")
def build_sun397(req: DatasetRequest) -> RealDataset:
    """SUN397 (all images, as the reference); names from ClassName.txt minus `/x/`, `/` -> space."""
    layout = "<root>/SUN397/{ClassName.txt,a/abbey/sun_*.jpg,...}"
    split_choice("sun397", req, {"test": None})
    return _torchvision("sun397", req, layout, ["SUN397/ClassName.txt"], tvd.SUN397, {}, _refined("classes"), [PHOTO])


@register_dataset("food101")
def build_food101(req: DatasetRequest) -> RealDataset:
    """Food-101 (test: 25 250 images)."""
    layout = "<root>/food-101/{meta/{train,test}.json,images/<class>/*.jpg}"
    split = split_choice("food101", req, {"train": "train", "test": "test"})
    return _torchvision(
        "food101",
        req,
        layout,
        ["food-101/meta", "food-101/images"],
        tvd.Food101,
        {"split": split},
        _refined("classes"),
        ["A photo of {}, a type of food."],
    )


@register_dataset("oxford_pets")
def build_oxford_pets(req: DatasetRequest) -> RealDataset:
    """Oxford-IIIT Pet (test: 3 669 images)."""
    layout = "<root>/oxford-iiit-pet/{images/*.jpg,annotations/{trainval,test}.txt}"
    split = split_choice("oxford_pets", req, {"train": "trainval", "test": "test"})
    return _torchvision(
        "oxford_pets",
        req,
        layout,
        ["oxford-iiit-pet/images", "oxford-iiit-pet/annotations"],
        tvd.OxfordIIITPet,
        {"split": split},
        _refined("classes"),
        ["A photo of a {}, a type of pet."],
    )


@register_dataset("flowers102")
def build_flowers102(req: DatasetRequest) -> RealDataset:
    """Flowers-102 (test: 6 149 images); names: the reference loader's list (classnames/flowers102.json)."""
    layout = "<root>/flowers-102/{jpg/image_*.jpg,imagelabels.mat,setid.mat}"
    split = split_choice("flowers102", req, {"train": "train", "val": "val", "test": "test"})
    names = [clean_name(c, "_-") for c in load_classnames("flowers102")]
    return _torchvision(
        "flowers102",
        req,
        layout,
        ["flowers-102/jpg", "flowers-102/setid.mat"],
        tvd.Flowers102,
        {"split": split},
        lambda _: names,
        ["A photo of a {}, a type of flower."],
    )


@register_dataset("dtd")
def build_dtd(req: DatasetRequest) -> RealDataset:
    """Describable Textures (test split of partition 1: 1 880 images)."""
    layout = "<root>/dtd/dtd/{images/<class>/*.jpg,labels/test1.txt}"
    split = split_choice("dtd", req, {"train": "train", "val": "val", "test": "test"})
    return _torchvision(
        "dtd",
        req,
        layout,
        ["dtd/dtd/images", "dtd/dtd/labels"],
        tvd.DTD,
        {"split": split},
        _refined("classes"),
        ["A surface with a {} texture."],
    )


@register_dataset("eurosat")
def build_eurosat(req: DatasetRequest) -> RealDataset:
    """EuroSAT RGB (all 27 000 images); names: the reference loader's descriptive ones (classnames/eurosat.json)."""
    layout = "<root>/eurosat/2750/<AnnualCrop|Forest|...>/*.jpg"
    split_choice("eurosat", req, {"test": None})
    names = load_classnames("eurosat")
    ds = _torchvision("eurosat", req, layout, ["eurosat/2750"], tvd.EuroSAT, {}, lambda _: names, ["A centered satellite photo of {}."])
    if len(ds.base.classes) != len(names):
        raise DatasetNotFound(f"eurosat: found {len(ds.base.classes)} class folders, expected {len(names)}; expected layout: {layout}")
    return ds


@register_dataset("fgvc_aircraft")
def build_fgvc_aircraft(req: DatasetRequest) -> RealDataset:
    """FGVC-Aircraft variants (test: 3 333 images); `Boeing ` prefixed to names starting with 7."""
    layout = "<root>/fgvc-aircraft-2013b/data/{variants.txt,images_variant_test.txt,images/*.jpg}"
    split = split_choice("fgvc_aircraft", req, {"train": "train", "val": "val", "trainval": "trainval", "test": "test"})
    return _torchvision(
        "fgvc_aircraft",
        req,
        layout,
        ["fgvc-aircraft-2013b/data"],
        tvd.FGVCAircraft,
        {"split": split, "annotation_level": "variant"},
        lambda base: [fgvc_name(c) for c in base.classes],
        ["A photo of a {}, a type of aircraft."],
    )


@register_dataset("caltech101")
def build_caltech101(req: DatasetRequest) -> RealDataset:
    """Caltech-101 (all images, BACKGROUND_Google dropped); names: folder names, cleaned."""
    layout = "<root>/caltech101/101_ObjectCategories/<category>/image_0001.jpg"
    split_choice("caltech101", req, {"test": None})
    return _torchvision("caltech101", req, layout, ["caltech101/101_ObjectCategories"], tvd.Caltech101, {}, _refined("categories"), [PHOTO])


@register_dataset("caltech256")
def build_caltech256(req: DatasetRequest) -> RealDataset:
    """Caltech-256 (all images); names: folder name minus `NNN.` and `-101`."""
    layout = "<root>/caltech256/256_ObjectCategories/<NNN.name>/<NNN>_<MMMM>.jpg"
    split_choice("caltech256", req, {"test": None})
    return _torchvision(
        "caltech256",
        req,
        layout,
        ["caltech256/256_ObjectCategories"],
        tvd.Caltech256,
        {},
        lambda base: [caltech256_name(c) for c in base.categories],
        ["A photo of a {}."],
    )


@register_dataset("stanford_cars")
def build_stanford_cars(req: DatasetRequest) -> RealDataset:
    """Stanford Cars (test: 8 041 images); names minus the trailing year."""
    layout = "<root>/stanford_cars/{devkit/{cars_meta.mat,cars_train_annos.mat},cars_train/,cars_test/,cars_test_annos_withlabels.mat}"
    split = split_choice("stanford_cars", req, {"train": "train", "test": "test"})
    return _torchvision(
        "stanford_cars",
        req,
        layout,
        ["stanford_cars/devkit"],
        tvd.StanfordCars,
        {"split": split},
        lambda base: [stanford_cars_name(c) for c in base.classes],
        ["A photo of a {}."],
    )


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
    return _torchvision("pcam", req, layout, markers, tvd.PCAM, {"split": tv_split}, lambda _: list(PCAM_PROMPTS), ["{}"])


REAL_DATASETS: tuple[str, ...] = (
    "tinyimagenet",
    "cifar10",
    "cifar100",
    "stl10",
    "sun397",
    "food101",
    "oxford_pets",
    "flowers102",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "imagenet",
    "caltech101",
    "caltech256",
    "stanford_cars",
    "pcam",
)
