"""Adaptive attacks on test-time defences (issue 15): a score-aware PGD and BPDA + EOT through TTC.

* `ScoreAwarePGD`: L-inf PGD on  misclassification - lambda * score(x)  (Carlini & Wagner, AISec 2017,
  "Adversarial examples are not easily detected"), with EOT (Athalye et al., ICML 2018) over the score's
  random noise: each step averages the score over `eot` fresh noise draws from the attacker's generator.
  `block` > 1 makes the perturbation piecewise constant on block x block tiles (optimised on the coarse
  grid, upsampled nearest): the attacker who knows the score squeezes with a median filter sends a
  perturbation the filter cannot remove, where sign steps on single pixels are what the filter removes best.
* `StraightThroughTTC`: BPDA view of a `TTCClassifier`: the forward classifies x + delta_TTC(x) exactly as
  TTC does; the backward treats the counterattack delta as a constant (identity Jacobian of x -> x + delta).
  Full differentiation gives the same gradient here, up to the image-box clamp: delta is built from sign()
  steps whose derivative is zero almost everywhere. `eot` averages the logits over fresh TTC starts.
Neither is in the attack registry: both need a defence object, not only a classifier.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipshield.attacks.base import Attack, Classifier
from clipshield.attacks.pgd import LossName, attack_loss, random_start
from clipshield.models.attack_score import AttackScorer
from clipshield.models.ttc import TTCClassifier, counterattack, random_init
from clipshield.models.zero_shot import cosine_logits

PenaltyName = Literal["linear", "hinge"]
PENALTIES: tuple[str, ...] = ("linear", "hinge")
UpsampleName = Literal["nearest", "bilinear"]
UPSAMPLES: tuple[str, ...] = ("nearest", "bilinear")


class ScoreAwarePGD(Attack):
    """PGD maximising attack_loss(logits, y) - lam * score, score averaged over `eot` noise draws.

    `penalty='hinge'` uses relu(score - threshold) instead of the score: it only pushes while the image
    would be flagged, so it does not fight the misclassification term once the image is unflagged.

    The score term uses the same reduction as the loss (mean for CE, sum for CW), so `lam` weighs one
    image's score against one image's loss. Tensor contract as `Attack`.
    """

    def __init__(
        self,
        model: Classifier,
        scorer: AttackScorer,
        eps: float,
        lam: float = 1.0,
        alpha: Optional[float] = None,
        steps: int = 10,
        eot: int = 1,
        loss: LossName = "ce",
        margin: float = 50.0,
        penalty: PenaltyName = "linear",
        generator: Optional[torch.Generator] = None,
        block: int = 1,
        upsample: UpsampleName = "nearest",
    ) -> None:
        super().__init__(model, eps, generator)
        if steps < 0 or eot < 1 or lam < 0 or block < 1:
            raise ValueError("steps must be >= 0, eot >= 1, lam >= 0 and block >= 1")
        if upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsampling {upsample!r}; known: {', '.join(UPSAMPLES)}")
        self.block, self.upsample = int(block), upsample
        self.scorer = scorer
        self.lam = float(lam)
        self.alpha = eps / 4 if alpha is None else float(alpha)
        if penalty not in PENALTIES:
            raise ValueError(f"unknown score penalty {penalty!r}; known: {', '.join(PENALTIES)}")
        self.steps, self.eot, self.loss, self.margin, self.penalty = steps, eot, loss, margin, penalty

    def objective(self, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar the attack ascends: misclassification loss minus lam times the (EOT-averaged) score."""
        value = attack_loss(self.model(adv), labels, self.loss, self.margin)
        if self.lam == 0:
            return value  # plain PGD: the attacker who ignores the score
        draws = self.eot if self.scorer.extractor.cfg.is_random else 1  # EOT over a deterministic score is waste
        score = torch.stack([self.scorer(adv, self.generator) for _ in range(draws)]).mean(dim=0)
        if self.penalty == "hinge":
            score = torch.relu(score - self.scorer.params.threshold)
        penalty = score.mean() if self.loss == "ce" else score.sum()
        return value - self.lam * penalty

    def expand(self, coarse: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The full-resolution perturbation [B, C, H, W] of `like`: each coarse value fills a block x block tile
        ('nearest'), or the grid is interpolated ('bilinear': locally linear, which a median filter keeps as it
        is; a convex combination, so still within eps)."""
        if self.block == 1:
            return coarse
        full = F.interpolate(coarse, scale_factor=self.block, mode=self.upsample)
        return full[..., : like.shape[-2], : like.shape[-1]]

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grid = (-(-images.shape[-2] // self.block), -(-images.shape[-1] // self.block))  # ceil: tiles cover the image
        coarse = random_start(images.new_empty(*images.shape[:2], *grid), self.eps, self.generator)
        for _ in range(self.steps):
            coarse.requires_grad_(True)
            adv = torch.clamp(images + self.expand(coarse, images), 0.0, 1.0)
            (grad,) = torch.autograd.grad(self.objective(adv, labels), coarse)
            coarse = torch.clamp(coarse.detach() + self.alpha * grad.sign(), -self.eps, self.eps)
        return torch.clamp(images + self.expand(coarse, images), 0.0, 1.0).detach()


class StraightThroughTTC(nn.Module):
    """BPDA + EOT surrogate of a `TTCClassifier`: logits [B, C] of x + delta_TTC(x), delta held constant
    in the backward, averaged over `eot` counterattacks from fresh starts drawn from `generator`.

    Tensor contract: images float32 [B, 3, H, W] in [0, 1] -> logits [B, C] (differentiable in images).
    """

    def __init__(self, ttc: TTCClassifier, eot: int = 1, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if eot < 1:
            raise ValueError(f"eot must be >= 1, got {eot}")
        self.ttc, self.eot, self.generator = ttc, eot, generator

    def counter_delta(self, images: torch.Tensor) -> torch.Tensor:
        """One TTC counterattack delta [B, 3, H, W] (detached) from a start drawn from the attacker's generator."""
        init = random_init(images, self.ttc.cfg.eps, self.generator)
        return counterattack(self.ttc.model, images.detach(), init, self.ttc.cfg, self.ttc.tau_model).delta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = []
        for _ in range(self.eot):
            delta = self.counter_delta(images.clamp(0, 1))
            moved = torch.clamp(images + delta, 0.0, 1.0)
            emb = self.ttc.model.encode_image(moved)
            logits.append(cosine_logits(emb, self.ttc.head, self.ttc.scale))
        return torch.stack(logits).mean(dim=0)
