"""`clipshield export --precision int8`: the quantised encoder, its parity, the 1-point rule, serving and the gate."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from clipshield.service import bundle as B
from clipshield.service.errors import ExportError, ModelLoadError
from clipshield.service.precision import PrecisionAccuracy, PrecisionInfo, encoder_file, precision_problems
from clipshield.service.runtime import image_encoder
from clipshield.service.settings import RuntimeConfig, ServingConfig

WORLD = "miniworld/plain/color_shape/seen"


@pytest.fixture(scope="module")
def int8_bundle(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model
    from clipshield.export.precision_eval import PrecisionEvalConfig

    cfg = PrecisionEvalConfig(n=16, steps=1)
    return export_model(miniworld_model, tmp_path_factory.mktemp("int8"), precision="int8", precision_eval=cfg)


def accuracy(clean: float, robust: float, transfer: float, bpda: float) -> PrecisionAccuracy:
    return PrecisionAccuracy(
        dataset=WORLD,
        n=512,
        attack="pgd10-linf-4/255",
        fp32_clean=clean,
        fp32_robust=robust,
        clean=clean,
        transfer_robust=transfer,
        bpda_robust=bpda,
    )


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1.0 - (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_encoder_is_quantised_and_within_its_parity_tolerance(miniworld_model, int8_bundle):
    card = B.read_card(int8_bundle)
    info = card.precision
    assert info.exported == ("fp32", "int8") and "quantize_dynamic" in info.method
    assert info.parity is not None and max(info.parity.batch_1, info.parity.batch_8) <= info.parity.tolerance == 1e-2
    q, fp32 = int8_bundle / encoder_file("int8"), int8_bundle / B.IMAGE_ONNX
    assert q.stat().st_size < 0.5 * fp32.stat().st_size  # 8-bit weights, not a copy
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)).numpy()
    dist = cosine_distance(image_encoder(q, RuntimeConfig())(x), image_encoder(fp32, RuntimeConfig())(x))
    assert dist.max() > 1e-7, "the int8 encoder computes exactly fp32's embeddings: nothing was quantised"
    assert dist.max() <= 1e-2
    assert encoder_file("int8") in B.verify_manifest(int8_bundle)  # checksummed like every bundle file


def test_parity_above_the_tolerance_is_refused(int8_bundle):
    from clipshield.export.quantize import check_precision_parity

    with pytest.raises(ExportError, match="int8 parity failed"):
        check_precision_parity(int8_bundle, "int8", 32, tolerance=1e-9)


def test_served_precision_follows_the_one_rule(int8_bundle):
    info = B.read_card(int8_bundle).precision
    (measured,) = info.accuracy
    assert measured.n == 16 and measured.dataset == WORLD and measured.robust == min(measured.transfer_robust, measured.bpda_robust)
    assert info.served == ("fp32" if precision_problems(info.accuracy) else "int8")


def test_rule_refuses_a_drop_over_one_point_clean_or_robust_and_an_unmeasured_encoder():
    assert precision_problems((accuracy(0.9, 0.5, 0.5, 0.495),)) == []  # 0.5 point: allowed
    bpda = precision_problems((accuracy(0.9, 0.5, 0.5, 0.48),))  # the worse attack decides: BPDA 2 points down
    assert len(bpda) == 1 and "robust" in bpda[0] and "drop 2.0 > 1 points" in bpda[0]
    clean = accuracy(0.9, 0.5, 0.5, 0.5).model_copy(update={"clean": 0.88})
    assert "clean" in precision_problems((clean,))[0]
    assert precision_problems(()) == ["no robust-accuracy comparison with fp32 was measured"]


def test_served_encoder_and_its_label_in_runtime_info_and_describe(int8_bundle):
    from clipshield.service.inference import ClipshieldService

    service = ClipshieldService.from_folder(int8_bundle)
    served = B.read_card(int8_bundle).precision.served
    assert service.image_encoder.path.name == encoder_file(served)
    assert service.runtime_labels()["precision"] == served
    assert service.describe()["runtime"]["image_encoder_precision"] == served
    assert service.describe()["model"]["precision"]["exported"] == ["fp32", "int8"]


def with_precision(src, dst, info: PrecisionInfo):
    shutil.copytree(src, dst)
    B.write_card(dst, B.read_card(dst).model_copy(update={"precision": info}))
    B.write_manifest(dst)
    return dst


def test_int8_serves_int8_and_fp16_is_refused_on_cpu(int8_bundle, tmp_path):
    from clipshield.service.inference import ClipshieldService

    forced = with_precision(int8_bundle, tmp_path / "int8", PrecisionInfo(served="int8", exported=("fp32", "int8")))
    assert ClipshieldService.from_folder(forced).image_encoder.path.name == "image_encoder.int8.onnx"
    fp16 = tmp_path / "fp16"
    shutil.copytree(int8_bundle, fp16)
    shutil.copyfile(fp16 / B.IMAGE_ONNX, fp16 / encoder_file("fp16"))
    with_precision(fp16, tmp_path / "fp16b", PrecisionInfo(served="fp16", exported=("fp32", "fp16")))
    with pytest.raises(ModelLoadError, match="needs the cuda execution provider"):
        ClipshieldService.from_folder(tmp_path / "fp16b", ServingConfig())


def test_fp16_export_without_cuda_is_refused_naming_the_alternatives(int8_bundle, monkeypatch):
    from clipshield.export import quantize

    monkeypatch.setattr(quantize, "fp16_provider_available", lambda: False)
    with pytest.raises(ExportError, match=r"needs the cuda execution provider.*--precision int8 or fp32"):
        quantize.quantize_encoder(int8_bundle, "fp16")


def test_straight_through_forward_is_the_quantised_model_and_its_gradient_fp32s(miniworld_model, int8_bundle):
    from clipshield.evaluation.measure import zero_shot_task
    from clipshield.export.precision_eval import OnnxZeroShot, StraightThroughEncoder

    ds, clf, labels = zero_shot_task(miniworld_model, WORLD, 8)
    enc = image_encoder(int8_bundle / encoder_file("int8"), RuntimeConfig())
    x = ds.images().clone().requires_grad_(True)
    through = StraightThroughEncoder(clf, enc)(x)
    torch.testing.assert_close(through.detach(), OnnxZeroShot(clf, enc)(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(through.detach(), clf(x).detach(), atol=1e-6)  # not the fp32 logits
    (g_st,) = torch.autograd.grad(torch.nn.functional.cross_entropy(through, labels), x)
    x2 = ds.images().clone().requires_grad_(True)
    (g32,) = torch.autograd.grad(torch.nn.functional.cross_entropy(clf(x2), labels), x2)
    assert g_st.abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(g_st.flatten(), g32.flatten(), dim=0) > 0.9


def test_gate_refuses_an_int8_candidate_losing_over_one_point(int8_bundle, tmp_path):
    from clipshield.export.release_gate import Margins, compare
    from clipshield.service.card import AccuracyEntry

    base = B.read_card(int8_bundle).model_copy(
        update={"accuracy": (AccuracyEntry(dataset=WORLD, attack="none", purified=False, value=0.9, n=256),), "precision": PrecisionInfo()}
    )
    ok = base.model_copy(update={"precision": PrecisionInfo(served="int8", accuracy=(accuracy(0.9, 0.5, 0.5, 0.496),))})
    bad = base.model_copy(update={"precision": PrecisionInfo(served="int8", accuracy=(accuracy(0.9, 0.5, 0.47, 0.5),))})
    unmeasured = base.model_copy(update={"precision": PrecisionInfo(served="int8")})
    assert compare(base, ok, Margins()).accepted
    refused = compare(base, bad, Margins())
    assert not refused.accepted and any("precision: drop 3.0 > 1 points" in r.problem for r in refused.rows)
    assert not compare(base, unmeasured, Margins()).accepted


def test_cli_refuses_bad_precision_flags(capsys):
    from clipshield.cli.main import main

    assert main(["export", "--model", "miniworld", "--out", "/nonexistent/x", "--precision-n", "-1", "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--precision-n: Input should be greater than or equal to 0" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["export", "--model", "miniworld", "--precision", "bf16"])
    assert "invalid choice: 'bf16' (choose from 'fp32', 'fp16', 'int8')" in capsys.readouterr().err


def test_comparison_world_of_base_and_fine_tuned_models_and_refusal_elsewhere():
    from types import SimpleNamespace

    from clipshield.export.precision_eval import world_dataset
    from clipshield.service.errors import ConfigError

    def named(name: str):
        return SimpleNamespace(record=SimpleNamespace(name=name))

    assert world_dataset(named("miniworld-vit-tiny")) == WORLD  # type: ignore[arg-type]
    assert world_dataset(named("miniworld-vit-b32-tiny+tga-anchor")) == "miniworld224/plain/color_shape/seen"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--precision-data"):
        world_dataset(named("ViT-B-32"))  # type: ignore[arg-type]
