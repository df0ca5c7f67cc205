"""Adaptive attacks on CLIPure-Cos purification (docs/methods.md §7.3) and a gradient-masking check.

The published robustness of CLIPure-Cos comes from attacking the whole pipeline by autograd, but
10 normalised purification steps shrink the input gradient to rounding noise (about 1e-8 of its
size in float32, exactly zero in the released fp16 path). Three ways to attack the purified
classifier, all evaluated on the real (purified) forward:
* `full`:     autograd through the purification, float32 (what the paper does);
* `bpda`:     straight-through / BPDA (Athalye et al., ICML 2018): purification in the forward,
              identity in the backward;
* `transfer`: adversarial examples crafted on the un-purified zero-shot classifier.
A sample counts as robust in the worst case only if it survives all three.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from clipshield.attacks.base import Attack
from clipshield.models.purify import PurifiedClassifier, purify_embeddings
from clipshield.models.sharding import SINGLE, Shard, gather_values, own_batches, sum_counts
from clipshield.models.zero_shot import ZeroShotClassifier
from clipshield.service.config import StrictModel

log = logging.getLogger(__name__)

AdaptiveMode = Literal["full", "bpda", "transfer"]
ADAPTIVE_MODES: tuple[AdaptiveMode, ...] = ("full", "bpda", "transfer")
GRADIENT_MASKED = "gradient masked"
NOT_MASKED = "no masking detected"


class StraightThroughPurified(nn.Module):
    """BPDA view of a `PurifiedClassifier`: purified logits forward, identity Jacobian backward.

    Forward values equal the purified classifier's (up to one float rounding); the backward pass
    sees `scale * normalize(e) @ head.T`, i.e. the purification is treated as the identity map.
    Tensor contract: images float [B, 3, H, W] in [0, 1] -> logits [B, C].
    """

    def __init__(self, purified: PurifiedClassifier) -> None:
        super().__init__()
        self.purified = purified

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.purified
        e = F.normalize(p.model.encode_image(images), dim=-1)
        with torch.no_grad():
            target = purify_embeddings(e.detach(), p.anchor, p.cfg)
        e_st = e + (target - e).detach()
        return p.scale * e_st @ p.head.t()


def unpurified(purified: PurifiedClassifier) -> ZeroShotClassifier:
    """The same zero-shot classifier without purification (same model, head and logit scale)."""
    return ZeroShotClassifier(purified.model, purified.head, logit_scale=purified.scale)


def surrogate(purified: PurifiedClassifier, mode: AdaptiveMode) -> nn.Module:
    """The classifier an attack differentiates for `mode`; accuracy is always measured on `purified`."""
    if mode == "full":
        return purified
    if mode == "bpda":
        return StraightThroughPurified(purified)
    if mode == "transfer":
        return unpurified(purified)
    raise ValueError(f"unknown adaptive mode {mode!r}; known: {', '.join(ADAPTIVE_MODES)}")


def input_gradient_norm(classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm [B] of d CE(classifier(x), y) / dx, in float32."""
    x = images.detach().float().requires_grad_(True)
    loss = F.cross_entropy(classifier(x), labels, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g.flatten(1).norm(dim=1)


class AdaptiveReport(StrictModel):
    """Robust accuracy of a purified classifier under each adaptive mode, the worst case and a verdict."""

    n: int
    clean: float
    robust: dict[str, float]
    worst_case: float
    grad_norm_full: float = Field(description="median per-sample input-gradient norm through the purification")
    grad_norm_unpurified: float = Field(description="the same without purification")
    grad_ratio: float
    verdict: str


def masking_verdict(grad_ratio: float, robust: dict[str, float], ratio_threshold: float = 1e-3, gap: float = 0.1) -> str:
    """'gradient masked' when gradients through the defence vanish and a gradient-free-of-it attack does better.

    `full` robust accuracy exceeding the best of `bpda` / `transfer` by more than `gap`, together
    with an input gradient below `ratio_threshold` of the un-purified one, means the defence's
    white-box number measures vanishing gradients, not robustness.
    """
    others = [robust[m] for m in ("bpda", "transfer") if m in robust]
    if "full" in robust and others and grad_ratio < ratio_threshold and robust["full"] - min(others) > gap:
        return GRADIENT_MASKED
    return NOT_MASKED


def evaluate_adaptive(
    purified: PurifiedClassifier,
    make_attack: Callable[[nn.Module], Attack],
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    modes: tuple[AdaptiveMode, ...] = ADAPTIVE_MODES,
    on_batch: Optional[Callable[[int], None]] = None,
    generator_for: Optional[Callable[[int], torch.Generator]] = None,
    shard: Shard = SINGLE,
) -> AdaptiveReport:
    """Clean and per-mode robust accuracy of `purified`, per-sample worst case, gradient check and verdict.

    `make_attack(classifier)` builds the attack on a surrogate (e.g. PGD-10 at eps); every
    adversarial image is then classified by `purified` itself. `generator_for(b)` (optional)
    reseeds every attack for batch b, so that under torchrun (`shard`) each batch gives the same
    numbers on any rank; counts are summed and gradient norms gathered over ranks.
    Tensor contract: `data` yields float images [B, 3, H, W] in [0, 1] and int64 labels [B].
    """
    attacks = {m: make_attack(surrogate(purified, m)) for m in modes}
    counts: dict[str, int] = {"clean": 0, "worst": 0, "n": 0, **dict.fromkeys(modes, 0)}
    g_full: list[torch.Tensor] = []
    g_plain: list[torch.Tensor] = []
    for index, images, labels in own_batches(data, shard):
        _attack_batch(purified, attacks, images, labels, counts, None if generator_for is None else partial(generator_for, index))
        g_full.append(input_gradient_norm(purified, images, labels))
        g_plain.append(input_gradient_norm(unpurified(purified), images, labels))
        if on_batch is not None:
            on_batch(int(labels.numel()))
    counts = dict(zip(counts, sum_counts(list(counts.values()), shard)))
    n = counts["n"]
    if n == 0:
        raise ValueError("adaptive evaluation got no images")
    full_med = float(gather_values(torch.cat(g_full) if g_full else torch.zeros(0), shard).median())
    plain_med = float(gather_values(torch.cat(g_plain) if g_plain else torch.zeros(0), shard).median())
    ratio = full_med / plain_med if plain_med > 0 else float("inf")
    rob: dict[str, float] = {m: counts[m] / n for m in modes}
    verdict = masking_verdict(ratio, rob)
    log.info(
        "adaptive attack: clean %.3f, robust %s, worst %.3f, grad ratio %.2e: %s",
        counts["clean"] / n,
        rob,
        counts["worst"] / n,
        ratio,
        verdict,
    )
    return AdaptiveReport(
        n=n,
        clean=counts["clean"] / n,
        robust=rob,
        worst_case=counts["worst"] / n,
        grad_norm_full=full_med,
        grad_norm_unpurified=plain_med,
        grad_ratio=ratio,
        verdict=verdict,
    )


def _attack_batch(
    purified: PurifiedClassifier,
    attacks: dict,
    images: torch.Tensor,
    labels: torch.Tensor,
    counts: dict[str, int],
    new_generator: Optional[Callable[[], torch.Generator]],
) -> None:
    """Add one batch's clean, per-mode and worst-case survivors to `counts` (each mode's attack
    reseeded by `new_generator()` when given, as if each had its own generator)."""
    with torch.no_grad():
        ok = purified(images).argmax(-1) == labels
    counts["clean"] += int(ok.sum())
    survives = ok.clone()
    for m, attack in attacks.items():
        if new_generator is not None:
            attack.generator = new_generator()
        adv = attack(images, labels)
        with torch.no_grad():
            hit = purified(adv).argmax(-1) == labels
        counts[m] += int(hit.sum())
        survives &= hit
    counts["worst"] += int(survives.sum())
    counts["n"] += int(labels.numel())
