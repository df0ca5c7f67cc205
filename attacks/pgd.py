"""L-inf PGD (Madry et al., ICLR 2018) with the reference code's exact update (docs/methods.md §0.6, §0.7).

delta_0 ~ U(-eps, eps), clipped to the image box; then K times: g = d loss / d delta,
delta <- clip(delta + alpha * sign(g), -eps, eps), clipped to the box. With restarts > 1 each
sample keeps the first restart that fools the classifier.
Losses: cross-entropy (batch mean) or the CW-style margin loss of TGA-ZSR's attacks.py.

Two stopping protocols (`stop`):
- `final`: every sample takes all K steps and the final iterate is returned (the reference code
  and the papers' tables).
- `early` (default for evaluation): a sample stops as soon as an iterate fools the classifier and
  keeps that iterate, so robust accuracy is the worst case over iterates 0..K (AutoAttack and
  RobustBench report it this way; it is never higher than `final`). Because a sample's step
  depends only on the sign of its own gradient (per-sample classifier, batch-mean or sum loss),
  the samples still running follow exactly the trajectory they follow under `final`; only the
  work on fooled samples is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from clipshield.attacks.base import Attack, Classifier, register_attack

LossName = Literal["ce", "cw"]
StopRule = Literal["early", "final"]
STOP_RULES: tuple[str, ...] = ("early", "final")


def cw_margin_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float = 50.0) -> torch.Tensor:
    """-sum_i relu(z_iy - max_{j != y} z_ij + margin): maximising it pushes the true logit below the best other one."""
    onehot = F.one_hot(labels, logits.shape[-1]).bool()
    true = logits[onehot]
    other = logits.masked_fill(onehot, float("-inf")).amax(dim=-1)
    return -torch.clamp(true - other + margin, min=0).sum()


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: LossName, margin: float) -> torch.Tensor:
    """The scalar an attack step maximises."""
    if loss == "ce":
        return F.cross_entropy(logits, labels)
    if loss == "cw":
        return cw_margin_loss(logits, labels, margin)
    raise ValueError(f"unknown attack loss {loss!r}; known: ce, cw")


def random_start(images: torch.Tensor, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """U(-eps, eps) noise, drawn from `generator` on CPU for reproducibility across devices."""
    noise = torch.rand(images.shape, generator=generator, dtype=torch.float32, device="cpu")
    return ((noise * 2 - 1) * eps).to(images.device, images.dtype)


def pgd_delta(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    init: torch.Tensor,
    loss: LossName = "ce",
    margin: float = 50.0,
    stop: StopRule = "final",
) -> torch.Tensor:
    """Run PGD from the (unclipped) start `init`; returns the perturbation delta.

    With `stop='final'` the K-th iterate of every sample; with `stop='early'` each sample's first
    fooling iterate (or the K-th when none fools). Tensor contract: images float [B, 3, H, W] in
    [0, 1]; labels int64 [B]; init like images; the result like images.
    """
    delta = torch.clamp(init, -images, 1 - images).detach()

    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return attack_loss(logits, y, loss, margin)

    def update(d: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _step(d, grad, x, eps, alpha)

    if stop == "early":
        return _pgd_early(model, images, labels, delta, steps, objective, update)
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(images + delta), labels), delta)
        delta = update(delta.detach(), grad, images)
    return delta.detach()


def _step(delta: torch.Tensor, grad: torch.Tensor, images: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    """One signed-gradient step, projected to the eps-ball and the image box."""
    delta = torch.clamp(delta + alpha * grad.sign(), -eps, eps)
    return torch.clamp(delta, -images, 1 - images)


def _pgd_early(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    delta: torch.Tensor,
    steps: int,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """PGD that stops each sample at its first fooling iterate (`stop='early'`).

    Each step forwards and back-propagates only the samples not yet fooled; the forward that
    gives the gradient at iterate t also decides whether iterate t already fools the classifier.
    """
    active = torch.arange(len(labels), device=images.device)
    for _ in range(steps):
        x, y, d = images[active], labels[active], delta[active].requires_grad_(True)
        logits = model(x + d)
        still = logits.detach().argmax(-1) == y
        if not bool(still.any()):
            return delta
        (grad,) = torch.autograd.grad(objective(logits, y), d)
        keep = active[still]
        delta[keep] = update(d.detach()[still], grad[still], x[still])
        active = keep
    return delta


@register_attack("pgd")
class PGD(Attack):
    """L-inf PGD; `loss='cw'` gives the CW-margin variant evaluated by TGA-ZSR and PMG-AFT."""

    def __init__(
        self,
        model: Classifier,
        eps: float,
        alpha: Optional[float] = None,
        steps: int = 10,
        restarts: int = 1,
        loss: LossName = "ce",
        margin: float = 50.0,
        generator: Optional[torch.Generator] = None,
        stop: StopRule = "final",
    ) -> None:
        super().__init__(model, eps, generator)
        if steps < 0 or restarts < 1:
            raise ValueError("steps must be >= 0 and restarts >= 1")
        if stop not in STOP_RULES:
            raise ValueError(f"unknown stop rule {stop!r}; choose one of {', '.join(STOP_RULES)}")
        self.stop: StopRule = stop
        self.alpha = eps / 4 if alpha is None else float(alpha)
        self.steps = steps
        self.restarts = restarts
        self.loss: LossName = loss
        self.margin = margin

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, init: Optional[torch.Tensor] = None) -> torch.Tensor:
        best = images.clone()
        pending = torch.ones(len(labels), dtype=torch.bool, device=images.device)
        for r in range(self.restarts):
            start = init if (init is not None and r == 0) else random_start(images, self.eps, self.generator)
            delta = pgd_delta(self.model, images, labels, self.eps, self.alpha, self.steps, start, self.loss, self.margin, self.stop)
            adv = images + delta
            if self.restarts == 1:
                return adv
            with torch.no_grad():
                fooled = self.model(adv).argmax(-1) != labels
            take = pending & (fooled | torch.tensor(r == self.restarts - 1, device=images.device))
            best[take] = adv[take]
            pending &= ~take
            if not pending.any():
                break
        return best


@register_attack("cw")
class CW(PGD):
    """PGD on the CW margin loss (margin 50 on scaled logits), as in TGA-ZSR's attacks.py."""

    def __init__(self, model: Classifier, eps: float, **kwargs) -> None:
        kwargs.setdefault("loss", "cw")
        super().__init__(model, eps, **kwargs)
