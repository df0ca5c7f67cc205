"""bf16 autocast on CPU: the evaluation and fine-tuning code paths run it; attacks stay float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipshield.models.precision import AutocastClassifier, autocast, with_precision
from clipshield.service.errors import ConfigError
from clipshield.training.finetune import FinetuneConfig, finetune


class DtypeProbe(nn.Module):
    """A linear classifier that records the dtype its matmul ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 3)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        self.seen.append(out.dtype)
        return out


def test_bf16_classifier_runs_its_forward_in_bf16_and_returns_float32():
    probe = DtypeProbe()
    logits = AutocastClassifier(probe, "cpu", "bf16")(torch.rand(2, 3, 2, 2))
    assert probe.seen == [torch.bfloat16]
    assert logits.dtype == torch.float32
    assert with_precision(probe, "cpu", "fp32") is probe


def test_fp16_on_cpu_and_unknown_precisions_are_refused_with_the_allowed_values():
    with pytest.raises(ConfigError, match="CUDA"):
        autocast("cpu", "fp16")
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        with_precision(DtypeProbe(), "cpu", "int8")


def test_bf16_finetuning_on_cpu_trains_close_to_float32(tmp_path):
    common = dict(
        method="tecoa",
        model="miniworld",
        steps=2,
        batch_size=8,
        data_limit=16,
        lr=0.005,
        eps=4 / 255,
        warmup=None,
        eval_datasets=[],
        threads=1,
    )
    fp32, _ = finetune(FinetuneConfig(output=tmp_path / "fp32", **common))
    bf16, _ = finetune(FinetuneConfig(output=tmp_path / "bf16", precision="bf16", **common))
    w32 = fp32.visual.state_dict()["conv1.weight"]
    w16 = bf16.visual.state_dict()["conv1.weight"]
    assert w16.dtype == torch.float32  # autocast leaves the master weights in float32
    assert not torch.equal(w32, w16)  # bf16 forwards really ran
    torch.testing.assert_close(w16, w32, atol=5e-3, rtol=0)


def test_bf16_evaluation_runs_on_cpu_and_is_recorded_in_the_cell(tmp_path):
    from clipshield.evaluation.runner import EvalConfig, Evaluator
    from clipshield.models.factory import load_model

    common = dict(model_id="mw", datasets=["miniworld/plain/shape/seen"], attacks=["pgd"], eps=4 / 255, steps=2, limit=16, batch_size=16)
    model = load_model("miniworld")
    (fp32,) = Evaluator(model, EvalConfig(out_dir=tmp_path / "fp32", **common)).run()
    (bf16,) = Evaluator(model, EvalConfig(out_dir=tmp_path / "bf16", precision="bf16", **common)).run()
    assert (fp32.key.precision, bf16.key.precision) == ("fp32", "bf16")
    assert bf16.key.attack_precision == "fp32"  # attacks stay float32 unless asked
    assert bf16.key.digest() != fp32.key.digest()
    assert abs(bf16.clean - fp32.clean) <= 2 / 16  # bf16 forwards may flip a borderline image, not the result
