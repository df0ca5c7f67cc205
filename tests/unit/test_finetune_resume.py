"""Fine-tuning loop mechanics: resume is bit-identical, checkpoints and model card are written."""

from __future__ import annotations

import json

import pytest
import torch

from clipshield.models.checkpoint import load_weights, save_checkpoint
from clipshield.models.factory import from_record
from clipshield.training.finetune import FinetuneConfig, StepBatches, finetune
from clipshield.training.pretrain import miniworld_record


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    record = miniworld_record()
    save_checkpoint(folder, record, from_record(record).clip.state_dict())
    return folder


def small_config(model_dir, out, **kw) -> FinetuneConfig:
    values = dict(
        method="tga-zsr",
        model=str(model_dir),
        data_limit=24,
        batch_size=8,
        steps=5,
        warmup=2,
        eps=4 / 255,
        checkpoint_every=2,
        output=out,
        eval_datasets=[],
        threads=1,
        seed=3,
    )
    values.update(kw)
    return FinetuneConfig(**values)


def test_resume_gives_identical_weights(random_model_dir, tmp_path):
    finetune(small_config(random_model_dir, tmp_path / "straight"))

    def stop_at_3(step, _stats):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(small_config(random_model_dir, tmp_path / "resumed"), stop_at_3)
    assert json.loads((tmp_path / "resumed" / "state" / "train_state.json").read_text())["step"] == 2
    finetune(small_config(random_model_dir, tmp_path / "resumed", resume=True))
    a = load_weights(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_weights(tmp_path / "resumed" / "final" / "model.safetensors")
    base = load_weights(random_model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    moved = [k for k in a if k.startswith("visual.") and not torch.equal(a[k], base[k])]
    assert moved, "training did not change the image tower"
    assert all(torch.equal(a[k], base[k]) for k in a if not k.startswith("visual.")), "the text tower must stay frozen"
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    straight_rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()
    strip = lambda r: r.rsplit(",", 1)[0]  # noqa: E731 - drop the throughput column
    # the interrupted run logged steps 0-3; state was saved after 2 steps, so steps 2-4 were re-run identically
    assert [strip(r) for r in rows] == [strip(r) for r in straight_rows[:5] + straight_rows[3:]]


def test_resume_with_other_settings_is_refused(random_model_dir, tmp_path):
    from clipshield.service.errors import ConfigError

    finetune(small_config(random_model_dir, tmp_path, steps=2, checkpoint_every=0))
    with pytest.raises(ConfigError, match="lr"):
        finetune(small_config(random_model_dir, tmp_path, steps=2, checkpoint_every=0, lr=0.5, resume=True))
    # every setting that changes what is computed is checked, not only a hand-kept list (weight decay and the
    # training prompt were missing from it); where and how fast it runs may change
    with pytest.raises(ConfigError, match="weight_decay"):
        finetune(small_config(random_model_dir, tmp_path, steps=2, checkpoint_every=0, weight_decay=0.3, resume=True))
    with pytest.raises(ConfigError, match="template"):
        finetune(small_config(random_model_dir, tmp_path, steps=2, checkpoint_every=0, template="a {}", resume=True))
    finetune(small_config(random_model_dir, tmp_path, steps=2, checkpoint_every=0, threads=2, eval_limit=8, resume=True))


def test_model_card_and_run_config(random_model_dir, tmp_path):
    cfg = small_config(
        random_model_dir,
        tmp_path,
        method="fare",
        steps=2,
        checkpoint_every=0,
        eval_datasets=["miniworld/plain/color_shape/seen"],
        eval_limit=16,
        eval_steps=1,
    )
    _, card = finetune(cfg)
    on_disk = json.loads((tmp_path / "final" / "model_card.json").read_text())
    assert on_disk == card
    training = card["training"]
    assert training["method"] == "fare" and training["hyperparameters"]["lr"] == 1e-5
    assert training["training_attack"]["steps"] == 10 and training["training_attack"]["alpha"] == pytest.approx(1 / 255)
    # the values that ran: 2 steps of batch 8 over 24 images at the mini world's 32 px, not the config's 224 px / 10 epochs
    assert (training["steps"], training["batch_size"], training["image_size"]) == (2, 8, 32)
    assert training["epochs"] == pytest.approx(2 * 8 / 24, abs=1e-4)
    assert "epochs" not in training["hyperparameters"] and "image_size" not in training["hyperparameters"]
    assert {(a["dataset"], a["attack"]) for a in card["accuracy"]} == {
        ("miniworld/plain/color_shape/seen", "none"),
        ("miniworld/plain/color_shape/seen", "pgd1-linf-4/255"),
    }
    assert all(0 <= a["value"] <= 1 and a["n"] == 16 for a in card["accuracy"])
    assert card["provenance"]["git_commit"] and card["provenance"]["clipshield_version"] and card["provenance"]["date"]
    assert card["base_model"]["weights_digest"] != card["weights_digest"]  # fine-tuning changed the image tower
    run_cfg = json.loads((tmp_path / "final" / "run_config.json").read_text())
    assert run_cfg["steps"] == 2 and run_cfg["method"] == "fare"


def test_step_batches_are_a_function_of_the_step():
    full = list(StepBatches(n=10, batch_size=4, total=7, seed=1))
    assert [len(b) for b in full] == [4, 4, 2, 4, 4, 2, 4]  # last partial batch kept
    assert sorted(i for batch in full[:3] for i in batch) == list(range(10))
    assert list(StepBatches(n=10, batch_size=4, total=7, seed=1, start=4)) == full[4:]
    assert list(StepBatches(n=10, batch_size=4, total=3, seed=2)) != full[:3]


def test_unknown_method_and_bad_params_fail_early(tmp_path):
    with pytest.raises(KeyError, match="known"):
        FinetuneConfig(method="trades", output=tmp_path)
    from clipshield.service.errors import ConfigError

    with pytest.raises(ConfigError, match="gamma"):
        FinetuneConfig(method="tga-zsr", method_params={"gamma": 1}, output=tmp_path)
