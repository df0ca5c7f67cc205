"""Request bodies for the load test, computed once before the run (never inside locust).

Writes into one folder: clean mini-world PNGs from every domain, PGD-perturbed PNGs of other images
of the same domains (crafted on the un-purified zero-shot classifier, so they really are adversarial
for the served model), and `payloads.json`, the manifest the locust users read: image files with
their kind, domain and true label, plus named custom label sets (shapes, colours, random subsets of
the colour+shape classes).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import torch
from pydantic import Field

from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.config import StrictModel
from clipshield.service.preprocess import encode_png

from .contract import MANIFEST

log = logging.getLogger(__name__)

DOMAINS = ("plain", "noisy", "textured", "outlined")


class PayloadConfig(StrictModel):
    """How many images of each kind, the attack that perturbs them, and the custom label sets."""

    n_clean: int = Field(default=24, ge=1)
    n_adversarial: int = Field(default=24, ge=0)
    eps: float = Field(default=4 / 255, ge=0, le=1)
    pgd_steps: int = Field(default=10, ge=1)
    domains: tuple[str, ...] = DOMAINS
    n_random_label_sets: int = Field(default=4, ge=0)
    random_label_set_size: int = Field(default=6, ge=2)
    seed: int = 0


def _split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as possible (earlier parts get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _attack(model: PixelCLIP, images: torch.Tensor, labels: torch.Tensor, classnames, templates, cfg: PayloadConfig, seed: int):
    """PGD adversarial images [B, 3, H, W] in [0, 1] and the number whose top-1 the attack changed from right to wrong."""
    from clipshield.attacks.pgd import PGD
    from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head

    clf = ZeroShotClassifier(model, build_text_head(model, classnames, templates))
    adv = PGD(clf, eps=cfg.eps, steps=cfg.pgd_steps, generator=torch.Generator().manual_seed(seed))(images, labels)
    with torch.no_grad():
        broken = ((clf(images).argmax(1) == labels) & (clf(adv).argmax(1) != labels)).sum().item()
    return adv.detach(), int(broken)


def _label_sets(cfg: PayloadConfig, color_shape: list[str]) -> dict[str, list[str]]:
    """Named custom label sets: all shapes, all colours, and random colour+shape subsets."""
    from clipshield.datasets.registry import DatasetRequest, build_dataset

    sets = {
        "shapes": list(build_dataset("miniworld/plain/shape/seen", DatasetRequest(limit=1)).classnames),
        "colours": list(build_dataset("miniworld/plain/color/seen", DatasetRequest(limit=1)).classnames),
    }
    gen = torch.Generator().manual_seed(cfg.seed)
    size = min(cfg.random_label_set_size, len(color_shape))
    for i in range(cfg.n_random_label_sets):
        idx = torch.randperm(len(color_shape), generator=gen)[:size].tolist()
        sets[f"mixed_{i}"] = [color_shape[j] for j in idx]
    return sets


def build_payloads(model: PixelCLIP, out_dir: Path, cfg: Optional[PayloadConfig] = None) -> Path:
    """Write the PNGs and `payloads.json` into `out_dir` (default `PayloadConfig()`); returns the manifest path."""
    from clipshield.datasets.registry import DatasetRequest, build_in_memory_dataset

    cfg = cfg or PayloadConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items: list[dict] = []
    attacked = broken = 0
    color_shape: list[str] = []
    for d, (n_clean, n_adv) in enumerate(zip(_split(cfg.n_clean, len(cfg.domains)), _split(cfg.n_adversarial, len(cfg.domains)))):
        domain = cfg.domains[d]
        if n_clean + n_adv == 0:
            continue
        ds = build_in_memory_dataset(f"miniworld/{domain}/color_shape/seen", DatasetRequest(limit=n_clean + n_adv))
        color_shape = list(ds.classnames)
        images, labels = ds.images(), torch.tensor(ds.labels)
        batches = [("clean", images[:n_clean], labels[:n_clean])]
        if n_adv:
            adv, n_broken = _attack(model, images[n_clean:], labels[n_clean:], ds.classnames, ds.templates, cfg, cfg.seed + d)
            batches.append(("adversarial", adv, labels[n_clean:]))
            attacked, broken = attacked + n_adv, broken + n_broken
        for kind, batch, truth in batches:
            for img, label in zip(batch, truth.tolist()):
                name = f"{kind}_{len(items):03d}.png"
                (out_dir / name).write_bytes(encode_png(img.numpy()))
                items.append({"file": name, "kind": kind, "domain": domain, "truth": ds.classnames[label]})
    manifest = {
        "images": items,
        "label_sets": _label_sets(cfg, color_shape),
        "attack": {
            "name": "pgd",
            "eps": cfg.eps,
            "steps": cfg.pgd_steps,
            "images": attacked,
            "right_to_wrong": broken,
            "success_rate": broken / attacked if attacked else math.nan,
        },
        "config": cfg.model_dump(),
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    log.info("wrote %d payload images (%d adversarial, %d flipped by PGD) to %s", len(items), attacked, broken, out_dir)
    return path
