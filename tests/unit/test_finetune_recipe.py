"""Fine-tuning recipes come from the training data set's registry entry; the grouped config validates what it resolves."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clipshield.datasets import DatasetRequest, build_dataset, finetune_recipe, register_dataset, registry
from clipshield.datasets.miniworld_sets import MINIWORLD_RECIPE
from clipshield.datasets.recipe import REFERENCE_RECIPE, FinetuneRecipe
from clipshield.service.errors import ConfigError, UnknownName
from clipshield.training.finetune_config import FinetuneConfig, recipe_config

# the keys of run_config.json / train_state.json as every earlier version wrote them: resumed runs compare these
LEGACY_RUN_KEYS = [
    "method",
    "model",
    "pretrained",
    "weights",
    "cache_dir",
    "offline",
    "data",
    "data_root",
    "data_limit",
    "image_size",
    "preprocess",
    "template",
    "negative_template",
    "output",
    "epochs",
    "steps",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "warmup",
    "eps",
    "attack_alpha",
    "attack_steps",
    "method_params",
    "seed",
    "checkpoint_every",
    "frozen_cache_mb",
    "resume",
    "precision",
    "device",
    "workers",
    "threads",
    "eval_datasets",
    "eval_limit",
    "eval_eps",
    "eval_steps",
    "eval_batch_size",
]


@pytest.fixture()
def other_world():
    """A second world registered with its own recipe, removed afterwards."""
    recipe = FinetuneRecipe(
        name="other",
        eps=1 / 255,
        attack_alpha=1 / 255,
        attack_steps=2,
        steps=50,
        batch_size=16,
        lr={"sgd": 0.01},
        warmup=None,
        eval_datasets=("miniworld/plain/shape/seen",),
    )
    register_dataset("other-world-train", reference_eps=1 / 255, recipe=recipe)(lambda req: build_dataset("miniworld-train", req))
    yield recipe
    for table in (registry._BUILDERS, registry._REFERENCE_EPS, registry._RECIPES):
        table.pop("other-world-train", None)


def test_each_registry_entry_supplies_its_recipe():
    assert finetune_recipe("miniworld-train") is MINIWORLD_RECIPE
    assert finetune_recipe("miniworld/plain/color_shape/seen") is MINIWORLD_RECIPE  # the family's
    assert finetune_recipe("tinyimagenet") is REFERENCE_RECIPE and finetune_recipe("folder/mine") is REFERENCE_RECIPE
    assert REFERENCE_RECIPE.eps == pytest.approx(1 / 255) and REFERENCE_RECIPE.warmup == 1000 and REFERENCE_RECIPE.epochs == 10
    with pytest.raises(UnknownName, match=r"unknown data set 'nope'; known: .*miniworld-train"):
        finetune_recipe("nope")


def test_adding_a_world_is_registering_a_recipe(other_world):
    cfg = recipe_config("other-world-train", method="tga-zsr").resolved(batches_per_epoch=100)
    assert (cfg.attack.eps, cfg.attack.alpha, cfg.attack.steps) == (pytest.approx(1 / 255), pytest.approx(1 / 255), 2)
    assert (cfg.optim.steps, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.warmup) == (50, 16, 0.01, 5)
    assert cfg.evaluation.datasets == ["miniworld/plain/shape/seen"] and cfg.evaluation.eps == pytest.approx(1 / 255)
    # an optimiser family the recipe has no rate for keeps the method's own (FARE: AdamW 1e-5)
    assert recipe_config("other-world-train", method="fare").resolved(100).optim.lr == 1e-5
    assert len(build_dataset("other-world-train", DatasetRequest(limit=4))) == 4


def test_explicit_settings_beat_the_recipe():
    mini = recipe_config("miniworld-train", method="tecoa", steps=7, batch_size=8, lr=0.5, eps=2 / 255, eval_datasets=[])
    assert (mini.optim.steps, mini.optim.batch_size, mini.optim.lr, mini.attack.eps) == (7, 8, 0.5, pytest.approx(2 / 255))
    assert mini.evaluation.datasets == [] and mini.dataset.limit == MINIWORLD_RECIPE.data_limit
    assert recipe_config("miniworld-train", method="tecoa", epochs=2).optim.steps is None  # epochs given: no recipe steps
    real = recipe_config("tinyimagenet", method="pmg-aft").resolved(batches_per_epoch=391)
    assert (real.optim.steps, real.optim.batch_size, real.optim.lr, real.optim.warmup) == (3910, 256, 5e-5, 1000)


def test_flat_names_round_trip_and_keep_the_saved_run_format():
    cfg = recipe_config("miniworld-train", method="fare", seed=3, eval_eps=2 / 255)
    flat = cfg.flat()
    assert list(flat)[: len(LEGACY_RUN_KEYS)] == LEGACY_RUN_KEYS  # new keys only appended (issue 27's schedule rule)
    assert list(flat)[len(LEGACY_RUN_KEYS) :] == ["warmup_fit", "allow_low_lr"]
    assert FinetuneConfig.model_validate(flat) == cfg
    assert FinetuneConfig(method="fare", lr=0.1, optim={"steps": 4}).optim.lr == 0.1  # flat names merge into groups


def test_updates_and_resolution_are_validated():
    cfg = recipe_config("miniworld-train", method="tecoa")
    with pytest.raises(ValidationError, match="batch_size"):
        cfg.updated(batch_size=1)
    with pytest.raises(ConfigError, match="unknown fine-tuning setting"):
        cfg.updated(bach_size=8)
    with pytest.raises(ConfigError, match="step size 0 with eps"):
        cfg.updated(attack_alpha=0.0)
    with pytest.raises(ConfigError, match="--data-limit: Input should be greater than 0"):
        recipe_config("miniworld-train", method="tecoa", data_limit=0)
    resolved = cfg.resolved(batches_per_epoch=100)
    assert resolved.attack.alpha == pytest.approx(4 / 255) and resolved.attack.steps == 2
    assert recipe_config("miniworld-train", method="fare").resolved(100).attack.alpha == pytest.approx(1 / 255)  # eps/4


@pytest.mark.parametrize("template", ["a photo", "a {name}", "{} and {}", "a {0"])
def test_templates_need_one_class_slot(template):
    with pytest.raises(ConfigError, match=r"--template: .*exactly one"):
        recipe_config("miniworld-train", method="tecoa", template=template)
    assert recipe_config("miniworld-train", method="tecoa", template="a {} here").dataset.template == "a {} here"
