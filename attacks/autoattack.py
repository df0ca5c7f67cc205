"""AutoAttack (Croce & Hein, ICML 2020) behind our `Attack` interface, via torchattacks' components.

Versions (docs/methods.md §0.7 / §7.3):
* `autoattack`        standard: APGD-CE, APGD-T, FAB-T, Square (PMG-AFT's evaluation);
* `autoattack-ce-dlr` custom APGD-CE + APGD-DLR, untargeted (TGA-ZSR / TeCoA tables);
* `autoattack-ce-t`   custom APGD-CE + APGD-T (CLIPure's evaluation).
Components run in sequence, each only on the images still classified correctly (AutoAttack's
worst-case protocol). Attacks that need more classes than the task has are skipped with a warning
(DLR needs >= 3 logits, its targeted form >= 4; so a binary set such as PCAM gets only APGD-CE, as
in TGA-ZSR).

We use torchattacks' APGD / APGDT / FAB / Square rather than writing APGD by hand. Three torchattacks
habits are contained here: every component calls `torch.random.manual_seed(seed)` (global
reseeding), so each call runs inside `torch.random.fork_rng` and the caller's global RNG state is
restored; torchattacks switches the model to eval mode without `try/finally`, which the base
class undoes in its own `finally`; and FAB back-propagates with `.backward()`, so parameters are
frozen during the call and never collect `.grad`. We compose the components ourselves instead of using
`torchattacks.MultiAttack` so that seeds come from our `torch.Generator` and per-component success
counts go to the log instead of stdout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Optional

import torch
from torch import nn

from clipshield.attacks.base import Attack, Classifier, register_attack

log = logging.getLogger(__name__)

Version = Literal["standard", "ce-dlr", "ce-t"]
COMPONENTS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "ce-dlr": ("apgd-ce", "apgd-dlr"),
    "ce-t": ("apgd-ce", "apgd-t"),
}
# fewest logits each component can work with (DLR divides by z_(1) - z_(3); targeted DLR uses z_(4))
MIN_CLASSES = {"apgd-ce": 2, "apgd-dlr": 3, "apgd-t": 4, "fab-t": 3, "square": 2}


def _build_component(
    name: str, model: nn.Module, eps: float, steps: int, n_classes: int, seed: int, square_queries: int, restarts: int = 1
):
    """One torchattacks attack object configured like AutoAttack's standard version (L-inf).

    `restarts` applies to the untargeted APGD runs (CLIPure's protocol uses 5 for APGD-CE).
    """
    import torchattacks  # deferred: heavy import, only needed when AutoAttack runs

    n_targets = min(9, n_classes - 1)
    if name == "apgd-ce":
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, seed=seed, loss="ce")
    if name == "apgd-dlr":
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, seed=seed, loss="dlr")
    if name == "apgd-t":
        return torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=n_targets + 1)
    if name == "fab-t":
        return torchattacks.FAB(
            model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, multi_targeted=True, n_classes=n_targets + 1
        )
    if name == "square":
        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=square_queries, n_restarts=1, seed=seed)
    raise ValueError(f"unknown AutoAttack component {name!r}; known: {', '.join(MIN_CLASSES)}")


def _devices_of(images: torch.Tensor) -> list[int]:
    return [images.device.index or 0] if images.is_cuda else []


@contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the duration, then get their flags back.

    torchattacks' FAB calls `.backward()`, which would otherwise accumulate `.grad` into the
    model's parameters (a side effect on a model that may be in the middle of fine-tuning).
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class AutoAttack(Attack):
    """L-inf AutoAttack; `version` picks the component list (see module docstring).

    Tensor contract: images float [B, 3, H, W] in [0, 1], labels int64 [B]; returns adversarial
    images in [0, 1] within the eps-ball. `model` must be an `nn.Module` (torchattacks reads its
    device from its parameters).
    """

    version: Version = "standard"

    def __init__(
        self,
        model: Classifier,
        eps: float,
        steps: int = 100,
        square_queries: int = 5000,
        generator: Optional[torch.Generator] = None,
        alpha: Optional[float] = None,
        restarts: int = 1,
    ) -> None:
        super().__init__(model, eps, generator)
        if alpha is not None:
            log.warning("AutoAttack ignores alpha=%g: APGD adapts its own step size (starting at 2*eps)", alpha)
        if not isinstance(model, nn.Module):
            raise TypeError("AutoAttack needs an nn.Module classifier (torchattacks reads its device)")
        self.module: nn.Module = model  # `model`, narrowed by the check above: what torchattacks is given
        if steps < 1:
            raise ValueError(f"AutoAttack steps must be >= 1, got {steps}")
        if restarts < 1:
            raise ValueError(f"AutoAttack restarts must be >= 1, got {restarts}")
        self.steps = steps
        self.restarts = restarts
        self.square_queries = square_queries
        self.records: dict[str, int] = {}

    def _seed(self) -> int:
        if self.generator is None:
            return 0
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model = self.module
        with torch.no_grad():
            logits = model(images)
        n_classes = logits.shape[-1]
        adv = images.clone()
        robust = logits.argmax(-1) == labels
        seed = self._seed()
        for name in COMPONENTS[self.version]:
            if n_classes < MIN_CLASSES[name]:
                log.warning("AutoAttack: skipping %s (needs >= %d classes, task has %d)", name, MIN_CLASSES[name], n_classes)
                continue
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            attack = _build_component(name, model, self.eps, self.steps, n_classes, seed, self.square_queries, self.restarts)
            # contain torchattacks' global reseeding and FAB's parameter-gradient accumulation
            with torch.random.fork_rng(devices=_devices_of(images)), _frozen_parameters(model):
                out = attack(images[idx], labels[idx]).detach()
            with torch.no_grad():
                fooled = model(out).argmax(-1) != labels[idx]
            adv[idx[fooled]] = out[fooled]
            robust[idx[fooled]] = False
            self.records[name] = self.records.get(name, 0) + int(fooled.sum())
            log.debug("AutoAttack %s fooled %d of %d", name, int(fooled.sum()), idx.numel())
        return adv


@register_attack("autoattack")
class AutoAttackStandard(AutoAttack):
    """Standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square (PMG-AFT's protocol)."""

    version: Version = "standard"


@register_attack("autoattack-ce-dlr")
class AutoAttackCeDlr(AutoAttack):
    """Custom AutoAttack APGD-CE + APGD-DLR (TGA-ZSR / TeCoA protocol; binary sets get APGD-CE only)."""

    version: Version = "ce-dlr"


@register_attack("autoattack-ce-t")
class AutoAttackCeT(AutoAttack):
    """Custom AutoAttack APGD-CE + APGD-T (CLIPure-Cos' protocol, docs/methods.md §7.3)."""

    version: Version = "ce-t"
