"""Clean and robust accuracy of a reduced-precision image encoder against fp32, judged so rounding cannot hide.

A quantised model attacked through its own rounding looks robust because its gradients are broken, so it is
never attacked that way. On the same images and PGD (`clipshield.evaluation.measure.AttackRecipe`, final
iterate, one seeded generator), three measurements:

- fp32: clean, and PGD on the fp32 torch model (white box);
- transfer: those fp32 adversarial images, classified by the reduced ONNX model;
- straight-through (BPDA): PGD whose forward is the reduced ONNX model's embedding and whose backward is the
  fp32 model's (`StraightThroughEncoder`: value e_q, gradient d e_32 / dx; the rounding is treated as the
  identity, Athalye et al. 2018), so the loss the attacker climbs is the served model's own.

The reduced model's robust accuracy is the worse of transfer and BPDA (`PrecisionAccuracy.robust`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.zero_shot import ZeroShotClassifier
from clipshield.service.card import attack_label
from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError
from clipshield.service.precision import MAX_DROP_POINTS, PrecisionAccuracy, PrecisionInfo, encoder_file, precision_problems
from clipshield.service.runtime import OnnxEncoder, image_encoder
from clipshield.service.settings import RuntimeConfig

log = logging.getLogger(__name__)


class PrecisionEvalConfig(StrictModel):
    """What to measure: data set (None: the model's own mini world), images (0: not measured), PGD strength
    (eps None: the set's reference)."""

    dataset: Optional[str] = None
    n: int = Field(default=512, ge=0)
    eps: Optional[float] = Field(default=None, gt=0)
    steps: int = Field(default=10, ge=1)
    seed: int = 0
    batch_size: int = Field(default=128, ge=1)


def world_dataset(model: PixelCLIP) -> str:
    """The plain colour+shape seen set of the mini world a shipped-geometry model belongs to; ConfigError otherwise."""
    from clipshield.datasets.miniworld.worlds import WORLDS

    arch = model.record.name.split("+")[0]  # a fine-tuned record is named `<base>+<method>` (training.model_card)
    for world in WORLDS.values():
        if world.arch_file == f"{arch}.json":
            return world.task_name("plain", "color_shape", "seen")
    raise ConfigError(f"model {model.record.name!r} is not of a mini-world geometry: name the data set with --precision-data")


class OnnxZeroShot(nn.Module):
    """Zero-shot logits [B, C] of an ONNX image encoder with a torch classifier's head and scale (no gradient)."""

    def __init__(self, classifier: ZeroShotClassifier, encoder: OnnxEncoder) -> None:
        super().__init__()
        self.classifier, self.encoder = classifier, encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        emb = torch.from_numpy(self.encoder(images.detach().cpu().float().numpy().copy()))
        return self.classifier.logits_from_embeddings(emb.to(images.device))


class StraightThroughEncoder(nn.Module):
    """BPDA view of a reduced encoder: logits of its embedding e_q, gradients of the fp32 embedding e_32.

    Tensor contract: images float [B, 3, S, S] in [0, 1] -> logits [B, C]; value = the reduced model's
    logits, d logits / d images = the fp32 model's (e = e_32 + stop_gradient(e_q - e_32), unit norms).
    """

    def __init__(self, classifier: ZeroShotClassifier, encoder: OnnxEncoder) -> None:
        super().__init__()
        self.classifier, self.encoder = classifier, encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fp32 = F.normalize(self.classifier.model.encode_image(images), dim=-1)
        reduced = torch.from_numpy(self.encoder(images.detach().cpu().float().numpy().copy())).to(fp32)
        return self.classifier.logits_from_embeddings(fp32 + (reduced - fp32).detach())


def _count(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    with torch.no_grad():
        return int((classifier(images).argmax(dim=-1) == labels).sum())


def measure_precision(model: PixelCLIP, folder: Path, precision: str, cfg: Optional[PrecisionEvalConfig] = None) -> PrecisionAccuracy:
    """fp32 vs `precision` (the bundle `folder`'s encoder file) on `cfg.n` images: clean, transfer, BPDA (see module)."""
    from clipshield.datasets import reference_eps
    from clipshield.evaluation.measure import AttackRecipe, zero_shot_task
    from clipshield.evaluation.zeroshot import batches

    cfg = cfg or PrecisionEvalConfig()
    dataset = cfg.dataset or world_dataset(model)
    eps = cfg.eps if cfg.eps is not None else reference_eps(dataset)
    ds, clf, labels = zero_shot_task(model.eval().float(), dataset, cfg.n)
    providers = ("cuda",) if precision == "fp16" else ("cpu",)  # fp16 runs on cuda only (clipshield.export.quantize)
    encoder = image_encoder(
        folder / encoder_file(precision), RuntimeConfig(intra_op_threads=max(1, torch.get_num_threads()), providers=providers)
    )
    judge, through = OnnxZeroShot(clf, encoder), StraightThroughEncoder(clf, encoder)
    recipe = AttackRecipe(eps=eps, steps=cfg.steps)
    counts = dict.fromkeys(("fp32_clean", "fp32_robust", "clean", "transfer_robust", "bpda_robust"), 0)
    gen_fp32, gen_bpda = torch.Generator().manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    for images, y in batches(ds.images(), labels, cfg.batch_size):
        counts["fp32_clean"] += _count(clf, images, y)
        counts["clean"] += _count(judge, images, y)
        adv = recipe.build(clf, gen_fp32)(images, y)
        counts["fp32_robust"] += _count(clf, adv, y)
        counts["transfer_robust"] += _count(judge, adv, y)
        counts["bpda_robust"] += _count(judge, recipe.build(through, gen_bpda)(images, y), y)
    n = int(labels.numel())
    result = PrecisionAccuracy(dataset=dataset, n=n, attack=attack_label("pgd", eps, cfg.steps), **{k: v / n for k, v in counts.items()})
    log.info("%s vs fp32 on %s: %s", precision, dataset, result.model_dump_json())
    return result


def choose_precision(
    model: PixelCLIP, folder: Path, precision: str, cfg: Optional[PrecisionEvalConfig] = None, force: bool = False
) -> PrecisionInfo:
    """Write `folder`'s image encoder at `precision`, check its parity, measure it (cfg.n > 0) and decide what serves.

    The reduced encoder serves by default only when `precision_problems` finds none (it loses at most 1 point of
    clean and of robust accuracy on every measured world); otherwise fp32 serves, unless `force` (recorded).
    """
    from clipshield.export.quantize import check_precision_parity, quantize_encoder

    if precision == "fp32":
        return PrecisionInfo()
    _, method = quantize_encoder(folder, precision)
    parity = check_precision_parity(folder, precision, model.image_size)
    accuracy = (measure_precision(model, folder, precision, cfg),) if cfg is None or cfg.n > 0 else ()
    problems = precision_problems(accuracy)
    if not problems:
        served, why = precision, f"{precision}: within {MAX_DROP_POINTS:g} point of fp32, clean and robust (transfer and BPDA)"
    elif force:
        served, why = precision, f"{precision} forced by the operator (--force-precision) despite: {'; '.join(problems)}"
    else:
        served, why = "fp32", f"fp32: {precision} refused as the default: {'; '.join(problems)}"
    log.info("served precision: %s", why)
    exported: tuple = ("fp32", precision)
    return PrecisionInfo(served=served, exported=exported, method=method, parity=parity, accuracy=accuracy, chosen_by=why)
