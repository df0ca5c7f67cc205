"""Real data-set registry: fake folder layouts in tmp_path, class-name rules, prompts, missing folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipshield.datasets import DatasetRequest, build_dataset, list_datasets
from clipshield.datasets.real import (
    PCAM_PROMPTS,
    REAL_DATASETS,
    caltech256_name,
    clean_name,
    fgvc_name,
    image_transform,
    stanford_cars_name,
)
from clipshield.datasets.registry import build_in_memory_dataset
from clipshield.datasets.wnid import read_wnid_table
from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import ConfigError, DatasetNotFound


def _jpg(path: Path, size: tuple[int, int] = (40, 30), value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(path)


def _check_items(ds, n_classes: int) -> None:
    assert len(ds.classnames) == n_classes
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, 224, 224)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert isinstance(label, int) and 0 <= label < n_classes


def test_every_real_dataset_is_registered():
    names = list_datasets()
    assert len(REAL_DATASETS) == 16
    assert all(n in names for n in REAL_DATASETS)


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_missing_root_is_a_one_line_dataset_not_found(name, tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DatasetNotFound) as err:
        build_dataset(name, DatasetRequest(root=missing))
    msg = str(err.value)
    assert str(missing) in msg and "expected layout" in msg and "\n" not in msg
    with pytest.raises(DatasetNotFound, match="no data folder given"):
        build_dataset(name, DatasetRequest(root=None))


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_empty_root_names_the_missing_subfolder_and_creates_nothing(name, tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        build_dataset(name, DatasetRequest(root=tmp_path))
    assert str(tmp_path) in str(err.value) and "expected layout" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no folder created, nothing downloaded


def test_unknown_split_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        build_dataset("caltech101", DatasetRequest(root=tmp_path, split="train"))


def test_class_name_rules():
    assert clean_name("aquarium_fish") == "aquarium fish"
    assert clean_name("apartment_building/outdoor") == "apartment building outdoor"
    assert clean_name("Faces_easy") == "faces easy"
    assert caltech256_name("012.binoculars") == "binoculars"
    assert caltech256_name("253.faces-easy-101") == "faces easy"
    assert caltech256_name("060.duck") == "duck"
    assert stanford_cars_name("AM General Hummer SUV 2000") == "am general hummer suv"
    assert fgvc_name("707-320") == "boeing 707-320"
    assert fgvc_name("A300B4") == "a300b4"
    assert fgvc_name("DC-10") == "dc-10"  # reference replaces only `_` for aircraft


def test_presets_and_the_lowres_switch_are_resolved_and_recorded():
    """`model` (default) = the record's preprocessing; `paper` = Resize(256)+CenterCrop(224), CIFAR/STL squashed
    (TGA-ZSR); `lowres` overrides the preset for CIFAR/STL only; every choice is named in the protocol."""
    wide = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    small = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    tf, proto = image_transform(DatasetRequest())
    assert tf.cfg == PreprocessConfig(image_size=224) and proto["preprocess"] == "model"
    assert tf(wide).shape == (3, 224, 224)
    tf, proto = image_transform(DatasetRequest(preset="paper"))
    assert (tf.cfg.resize_mode, tf.cfg.resize_to, tf.cfg.interpolation) == ("shortest", 256, "bilinear")
    assert proto == {"preprocess": "paper", "transform": "resize shortest side to 256 (bilinear, antialias) + centre crop 224x224"}
    tf, proto = image_transform(DatasetRequest(preset="paper"), lowres=True)
    assert tf.cfg.resize_mode == "squash" and proto["preprocess"] == "paper+tga224" and tf(small).shape == (3, 224, 224)
    tf, proto = image_transform(DatasetRequest(preset="model"), lowres=True)
    assert tf.cfg.resize_mode == "shortest" and proto["preprocess"] == "model"
    tf, proto = image_transform(DatasetRequest(options={"lowres": "tga224"}), lowres=True)
    assert tf.cfg.resize_mode == "squash" and proto["preprocess"] == "tga224"
    tf, proto = image_transform(DatasetRequest(preset="paper", options={"lowres": "native"}), lowres=True)
    assert proto["preprocess"] == "native" and "native" in proto["transform"] and tf(small).shape == (3, 32, 32)
    tf, _ = image_transform(DatasetRequest(options={"lowres": "native"}))  # not a CIFAR/STL set: option ignored
    assert tf.cfg.resize_mode == "shortest"
    with pytest.raises(ConfigError, match="tga224"):
        image_transform(DatasetRequest(options={"lowres": "96"}), lowres=True)
    with pytest.raises(ConfigError, match="model, paper, squash"):
        image_transform(DatasetRequest(preset="imagenet"))


def _tiny_imagenet(root: Path, arranged_val: bool) -> list[str]:
    base = root / "tiny-imagenet-200"
    wnids = ["n02124075", "n01443537", "n03902125"]  # deliberately unsorted in wnids.txt
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\nn03902125\tpay-phone, pay-station\nn00001740\tentity\n"
    )
    for w in wnids:
        _jpg(base / "train" / w / "images" / f"{w}_0.JPEG", (64, 64))
    rows = [("val_0.JPEG", "n03902125"), ("val_1.JPEG", "n01443537")]
    for fname, w in rows:
        if arranged_val:
            _jpg(base / "val" / w / fname, (64, 64))
        else:
            _jpg(base / "val" / "images" / fname, (64, 64))
    if not arranged_val:
        (base / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in rows))
    return sorted(wnids)


@pytest.mark.parametrize("arranged_val", [True, False])
def test_tinyimagenet_val_layouts(tmp_path, arranged_val):
    _tiny_imagenet(tmp_path, arranged_val)
    ds = build_dataset("tinyimagenet", DatasetRequest(root=tmp_path))
    assert ds.templates == ["This is a photo of a {}"]
    assert ds.protocol["preprocess"] == "model" and ds.preprocess == PreprocessConfig(image_size=224)
    names_by_label = {ds.classnames[label] for _, label in (ds[i] for i in range(len(ds)))}
    assert names_by_label == {"pay phone", "goldfish"}
    if arranged_val:  # ImageFolder: only the class folders present
        assert ds.classnames == ["goldfish", "pay phone"]
        _check_items(ds, 2)
    else:  # annotations: every wnid of wnids.txt, sorted
        assert ds.classnames == ["goldfish", "egyptian cat", "pay phone"]
        _check_items(ds, 3)
        assert [ds[i][1] for i in range(2)] == [2, 0]


def test_tinyimagenet_train_and_reference_table(tmp_path):
    _tiny_imagenet(tmp_path, arranged_val=True)
    table = tmp_path / "tinyimagenet_classes_name.txt"
    table.write_text("n01443537\t1\tgoldfish\nn02124075\t34\tEgyptian_cat\nn03902125\t129\tpay-phone\n")
    ds = build_dataset("tinyimagenet", DatasetRequest(root=tmp_path, split="train", options={"wnid_table": str(table)}))
    assert ds.classnames == ["goldfish", "egyptian cat", "pay phone"]
    _check_items(ds, 3)
    assert read_wnid_table(table)["n02124075"] == "Egyptian_cat"


def test_tinyimagenet_limit_is_a_seeded_subset(tmp_path):
    _tiny_imagenet(tmp_path, arranged_val=True)
    a = build_dataset("tinyimagenet", DatasetRequest(root=tmp_path, split="train", limit=2, seed=1))
    b = build_dataset("tinyimagenet", DatasetRequest(root=tmp_path, split="train", limit=2, seed=1))
    assert len(a) == 2 and [a[i][1] for i in range(2)] == [b[i][1] for i in range(2)]


def test_tinyimagenet_wnid_without_name_is_reported(tmp_path):
    _tiny_imagenet(tmp_path, arranged_val=True)
    (tmp_path / "tiny-imagenet-200" / "words.txt").write_text("n01443537\tgoldfish\n")
    with pytest.raises(DatasetNotFound, match="no class name for wnid n03902125"):
        build_dataset("tinyimagenet", DatasetRequest(root=tmp_path))


def test_caltech256_names_and_prompt(tmp_path):
    cats = tmp_path / "caltech256" / "256_ObjectCategories"
    for i, folder in enumerate(["001.ak47", "145.motorbikes-101", "253.faces-easy-101"], start=1):
        _jpg(cats / folder / f"{i:03d}_0001.jpg", mode="L")  # grey image: must come out as 3 channels
    ds = build_dataset("caltech256", DatasetRequest(root=tmp_path))
    assert ds.classnames == ["ak47", "motorbikes", "faces easy"]
    assert ds.templates == ["A photo of a {}."]
    _check_items(ds, 3)
    assert [ds[i][1] for i in range(3)] == [0, 1, 2]


def test_caltech101_drops_background(tmp_path):
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for folder in ["BACKGROUND_Google", "Faces_easy", "airplanes"]:
        _jpg(cats / folder / "image_0001.jpg")
    ds = build_dataset("caltech101", DatasetRequest(root=tmp_path))
    assert ds.classnames == ["faces easy", "airplanes"] and ds.templates == ["This is a photo of a {}"]
    _check_items(ds, 2)


def test_eurosat_descriptive_names(tmp_path):
    folders = [
        "AnnualCrop",
        "Forest",
        "HerbaceousVegetation",
        "Highway",
        "Industrial",
        "Pasture",
        "PermanentCrop",
        "Residential",
        "River",
        "SeaLake",
    ]
    for f in folders:
        _jpg(tmp_path / "eurosat" / "2750" / f / f"{f}_1.jpg", (64, 64))
    ds = build_dataset("eurosat", DatasetRequest(root=tmp_path, limit=3))
    assert ds.classnames[0] == "annual crop land" and ds.classnames[-1] == "a sea or a lake"
    assert ds.templates == ["A centered satellite photo of {}."]
    assert len(ds) == 3
    _check_items(ds, 10)


def test_food101_and_dtd_and_pets(tmp_path):
    food = tmp_path / "food-101"
    (food / "meta").mkdir(parents=True)
    (food / "meta" / "test.json").write_text(json.dumps({"apple_pie": ["apple_pie/1"], "hot_dog": ["hot_dog/2"]}))
    _jpg(food / "images" / "apple_pie" / "1.jpg")
    _jpg(food / "images" / "hot_dog" / "2.jpg")
    ds = build_dataset("food101", DatasetRequest(root=tmp_path))
    assert ds.classnames == ["apple pie", "hot dog"] and ds.templates == ["A photo of {}, a type of food."]
    _check_items(ds, 2)

    dtd = tmp_path / "dtd" / "dtd"
    (dtd / "labels").mkdir(parents=True)
    (dtd / "labels" / "test1.txt").write_text("banded/banded_1.jpg\ncrystalline/c_1.jpg\n")
    _jpg(dtd / "images" / "banded" / "banded_1.jpg")
    _jpg(dtd / "images" / "crystalline" / "c_1.jpg")
    ds = build_dataset("dtd", DatasetRequest(root=tmp_path))
    assert ds.classnames == ["banded", "crystalline"] and ds.templates == ["A surface with a {} texture."]
    _check_items(ds, 2)

    pets = tmp_path / "oxford-iiit-pet"
    (pets / "annotations").mkdir(parents=True)
    (pets / "annotations" / "test.txt").write_text("Abyssinian_1 1 1 1\namerican_bulldog_2 2 2 1\n")
    _jpg(pets / "images" / "Abyssinian_1.jpg")
    _jpg(pets / "images" / "american_bulldog_2.jpg")
    ds = build_dataset("oxford_pets", DatasetRequest(root=tmp_path))
    assert ds.classnames == ["abyssinian", "american bulldog"] and ds.templates == ["A photo of a {}, a type of pet."]
    _check_items(ds, 2)


def test_sun397_and_fgvc(tmp_path):
    sun = tmp_path / "SUN397"
    sun.mkdir()
    (sun / "ClassName.txt").write_text("/a/abbey\n/a/apartment_building/outdoor\n")
    _jpg(sun / "a" / "abbey" / "sun_1.jpg")
    _jpg(sun / "a" / "apartment_building" / "outdoor" / "sun_2.jpg")
    ds = build_dataset("sun397", DatasetRequest(root=tmp_path))
    assert ds.classnames == ["abbey", "apartment building outdoor"]
    _check_items(ds, 2)

    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\n")
    (data / "images_variant_test.txt").write_text("0001 707-320\n0002 A300B4\n")
    _jpg(data / "images" / "0001.jpg")
    _jpg(data / "images" / "0002.jpg")
    ds = build_dataset("fgvc_aircraft", DatasetRequest(root=tmp_path))
    assert ds.classnames == ["boeing 707-320", "a300b4"] and ds.templates == ["A photo of a {}, a type of aircraft."]
    _check_items(ds, 2)


def test_imagenet_folder(tmp_path):
    val = tmp_path / "ImageNet" / "val"
    for w in ["n01440764", "n01443537"]:
        _jpg(val / w / "x.JPEG")
    with pytest.raises(DatasetNotFound, match="has 2 class folders, expected 1000"):
        build_dataset("imagenet", DatasetRequest(root=tmp_path))
    table = tmp_path / "imagenet_classes_names.txt"
    table.write_text("n01440764\t1\ttench\nn01443537\t2\tgoldfish\n")
    ds = build_dataset("imagenet", DatasetRequest(root=tmp_path, options={"wnid_table": str(table)}))
    assert ds.classnames == ["tench", "goldfish"] and ds.templates == ["This is a photo of a {}"]
    _check_items(ds, 2)


def test_pcam_prompts_keep_reference_typo():
    assert PCAM_PROMPTS[0].startswith("Tthis is a photo of healthy")
    assert PCAM_PROMPTS[1] == "This is a photo of lymph node tumor tissue."


def _pcam_files(root: Path, n: int = 3) -> np.ndarray:
    """PatchCamelyon's test split as two tiny HDF5 files (x: [N,96,96,3] uint8, y: [N,1,1,1]); returns y."""
    import h5py

    pcam = root / "pcam"
    pcam.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 1][:n], dtype=np.uint8).reshape(n, 1, 1, 1)
    with h5py.File(pcam / "camelyonpatch_level_2_split_test_x.h5", "w") as fh:
        fh.create_dataset("x", data=rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))
    with h5py.File(pcam / "camelyonpatch_level_2_split_test_y.h5", "w") as fh:
        fh.create_dataset("y", data=labels)
    return labels.reshape(-1)


def test_pcam_reads_hdf5_with_the_reference_prompts(tmp_path):
    pytest.importorskip("h5py")
    labels = _pcam_files(tmp_path)
    ds = build_dataset("pcam", DatasetRequest(root=tmp_path))
    assert ds.classnames == list(PCAM_PROMPTS) and ds.templates == ["{}"]
    _check_items(ds, 2)
    assert [ds[i][1] for i in range(len(ds))] == labels.tolist()


def test_pcam_without_h5py_is_a_one_line_config_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    pcam = tmp_path / "pcam"
    pcam.mkdir()
    for xy in "xy":
        (pcam / f"camelyonpatch_level_2_split_test_{xy}.h5").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"h5py.*clipshield\[data\]"):
        build_dataset("pcam", DatasetRequest(root=tmp_path))


def test_tinyimagenet_annotation_with_unknown_wnid_is_reported(tmp_path):
    _tiny_imagenet(tmp_path, arranged_val=False)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetNotFound, match="n09999999"):
        build_dataset("tinyimagenet", DatasetRequest(root=tmp_path))


def _class_tree(folder: Path, classes: dict[str, int]) -> None:
    for i, (cls, n) in enumerate(classes.items()):
        for k in range(n):
            _jpg(folder / cls / f"{k}.jpg", value=40 * i + 10 * k)


def test_folder_with_splits_and_a_name_table(tmp_path):
    root = tmp_path / "pets"
    _class_tree(root / "train", {"n01_tabby": 2, "n02_beagle": 3})
    _class_tree(root / "val", {"n01_tabby": 1, "n02_beagle": 1})
    (root / "classnames.txt").write_text("n02_beagle\tbeagle dog\nn01_tabby\ttabby cat\n")
    train = build_dataset("folder/pets", DatasetRequest(root=tmp_path, split="train"))
    assert train.classnames == ["tabby cat", "beagle dog"] and train.templates == ["This is a photo of a {}"]
    assert len(train) == 5 and sorted(train[i][1] for i in range(5)) == [0, 0, 1, 1, 1]
    _check_items(train, 2)
    test = build_dataset("folder/pets", DatasetRequest(root=tmp_path, split="test", options={"templates": ["a {}"]}))
    assert len(test) == 2 and test.templates == ["a {}"]  # no test/ folder: val/ serves the test split


def test_folder_without_splits_uses_cleaned_folder_names(tmp_path):
    _class_tree(tmp_path / "mine", {"golden_retriever": 1, "sea-lion": 2})
    for split in ("train", "test"):
        ds = build_dataset("folder/mine", DatasetRequest(root=tmp_path, split=split))
        assert ds.classnames == ["golden retriever", "sea lion"] and len(ds) == 3


def test_in_memory_steps_take_the_mini_world_and_refuse_a_folder(tmp_path):
    small = build_in_memory_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=3))
    assert small.images().shape == (3, 3, 32, 32) and len(small.labels) == 3
    _class_tree(tmp_path / "mine", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match=r"folder/mine is read image by image; .*miniworld/<domain>"):
        build_in_memory_dataset("folder/mine", DatasetRequest(root=tmp_path))


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DatasetNotFound, match=r"folder/absent: folder .*absent not found"):
        build_dataset("folder/absent", DatasetRequest(root=tmp_path))
    _class_tree(tmp_path / "only_train" / "train", {"a": 1})
    with pytest.raises(DatasetNotFound, match="no test or val folder"):
        build_dataset("folder/only_train", DatasetRequest(root=tmp_path, split="test"))
    _class_tree(tmp_path / "named", {"a": 1, "b": 1})
    (tmp_path / "named" / "classnames.txt").write_text("just one name\n")
    with pytest.raises(DatasetNotFound, match="1 names for 2 class folders"):
        build_dataset("folder/named", DatasetRequest(root=tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFound, match="folder/empty"):
        build_dataset("folder/empty", DatasetRequest(root=tmp_path))


def test_finetune_on_a_folder(tmp_path):
    from clipshield.models.checkpoint import save_checkpoint
    from clipshield.models.factory import from_record
    from clipshield.training.finetune import FinetuneConfig, finetune
    from clipshield.training.pretrain import miniworld_record

    _class_tree(tmp_path / "data" / "shapes" / "train", {"red_circle": 3, "blue_square": 3})
    record = miniworld_record()
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model", record, from_record(record).clip.state_dict())
    _, card = finetune(
        FinetuneConfig(
            method="tecoa",
            model=str(tmp_path / "model"),
            data="folder/shapes",
            data_root=tmp_path / "data",
            image_size=record.preprocess.image_size,
            batch_size=4,
            steps=2,
            warmup=1,
            output=tmp_path / "run",
            threads=1,
        )
    )
    data = card["training"]["data"]
    assert {k: data[k] for k in ("name", "images", "classes", "template")} == {
        "name": "folder/shapes",
        "images": 6,
        "classes": 2,
        "template": "This is a photo of a {}",
    }
    # the folder's JPEGs went through the model's own record preprocessing (the `model` preset), recorded in the card
    assert data["preprocess_preset"] == "model"
    assert data["preprocess"] == record.preprocess.model_dump(mode="json")
