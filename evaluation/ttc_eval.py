"""Non-adaptive TTC evaluation, as the paper runs it (docs/methods.md §11.3): PGD against the UNDEFENDED zero-shot
classifier, then the adversarial images classified with and without TTC counterattacks.

The attacker never sees the counterattack, so robust accuracy "with TTC" is an upper bound; the
adaptive evaluation (BPDA through the sign steps, EOT over the random start; docs/methods.md §11.4) is
`clipshield.evaluation.ttc_adaptive` (`clipshield evaluate --ttc-adaptive`). Clean accuracy with TTC is reported too, since TTC changes clean images.

    clipshield evaluate --ttc --model miniworld --limit 64 --eps 4 --steps 10
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from clipshield.attacks import get_attack
from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.evaluation.zeroshot import batches
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.ttc import TTCClassifier, TTCConfig
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
from clipshield.service.config import StrictModel


class TTCEvalConfig(StrictModel):
    """One evaluation: data set, PGD attack on the undefended model (eps/alpha in [0, 1] pixel units), TTC settings."""

    dataset: str = "miniworld/plain/shape/seen"
    limit: int = Field(default=64, gt=0)
    eps: float = Field(default=4 / 255, ge=0.0)
    alpha: float = Field(default=1 / 255, gt=0.0)
    steps: int = Field(default=10, ge=0)
    batch_size: int = Field(default=64, gt=0)
    seed: int = 0
    ttc: TTCConfig = TTCConfig()


def _load(name: str, limit: int) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    ds = build_dataset(name, DatasetRequest(limit=limit))
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([img for img, _ in items])
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return images, labels, list(ds.classnames), list(ds.templates)


def evaluate_ttc(model: PixelCLIP, cfg: TTCEvalConfig, tau_model: Optional[PixelCLIP] = None) -> dict[str, float]:
    """Flat metrics: n; clean / robust accuracy without and with TTC; share of images TTC counterattacked
    (tau < tau_thres) and median tau, on clean and on adversarial images."""
    images, labels, classnames, templates = _load(cfg.dataset, cfg.limit)
    model = model.eval()
    head = build_text_head(model, classnames, templates)
    plain = ZeroShotClassifier(model, head).eval()
    defended = TTCClassifier(model, head, cfg.ttc, tau_model, generator=torch.Generator().manual_seed(cfg.seed + 1))
    attack = get_attack("pgd")(plain, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, generator=torch.Generator().manual_seed(cfg.seed))
    sums: dict[str, float] = {}
    taus: dict[str, list[torch.Tensor]] = {"clean": [], "adv": []}
    for x, y in batches(images, labels, cfg.batch_size):
        inputs = {"clean": x, "adv": attack(x, y)}
        for kind, batch in inputs.items():
            counter = defended.defend(batch)
            with torch.no_grad():
                undefended_pred = plain(batch).argmax(-1)
                ttc_pred = defended.classify(batch, counter).argmax(-1)
            prefix = "clean" if kind == "clean" else "robust"
            sums[prefix] = sums.get(prefix, 0.0) + float((undefended_pred == y).sum())
            sums[f"{prefix}_ttc"] = sums.get(f"{prefix}_ttc", 0.0) + float((ttc_pred == y).sum())
            sums[f"countered_{kind}"] = sums.get(f"countered_{kind}", 0.0) + float(counter.countered.sum())
            taus[kind].append(counter.tau)
    n = len(labels)
    out = {"n": float(n), **{k: v / n for k, v in sums.items()}}
    out.update({f"tau_median_{k}": float(torch.cat(v).median()) for k, v in taus.items()})
    return out
