"""TTC test-time counterattacks (Xing, Zhao, Sebe, CVPR 2025, "CLIP is Strong Enough to Fight Back"; docs/methods.md §11).

Before classifying x, push it away from its own embedding with a short L-inf PGD. Adversarial images
are "falsely stable": random noise moves their embedding less than a clean image's. So:
  1. delta_0 ~ U(-eps, eps), clamped so that x + delta_0 is in [0, 1];
  2. tau = ||f_tau(x + delta_0) - f_tau(x)|| / ||f_tau(x)|| (unnormalised embeddings; f_tau is the
     defended model itself, or the original CLIP's image tower when the defended model is fine-tuned);
  3. K sign steps of size alpha on sum_b ||f(x + delta) - f(x)||^2, each clamped to the eps-ball and the
     image box, giving delta_1..delta_K;
  4. tau < tau_thres: delta = sum_k softmax(beta * k)_k delta_k over k = 0..K; otherwise delta = delta_0;
  5. classify x + delta zero-shot.
Every step is per sample, so an image's result does not depend on its batch mates. Cost: about
K + 3 forwards and K input backwards per image (two more forwards with a separate f_tau).

The defence is random and not differentiated through here: an adaptive evaluation must add BPDA/EOT
(docs/methods.md §11.4). Not wired into serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.zero_shot import cosine_logits
from clipshield.service.config import StrictModel
from clipshield.service.errors import BadInput


class TTCConfig(StrictModel):
    """Counterattack settings; the defaults are the paper's (docs/methods.md §11.1)."""

    eps: float = Field(default=4 / 255, ge=0.0, le=1.0)
    steps: int = Field(default=2, ge=0, le=100)
    step_size: float = Field(default=1 / 255, ge=0.0, le=1.0)
    tau_thres: float = Field(default=0.2, ge=0.0)
    beta: float = 2.0


@dataclass(frozen=True)
class Counterattack:
    """Result of `counterattack`: `delta` [B,3,H,W] to add to the images, `tau` [B], `countered` [B] bool
    (True where the counterattack branch ran, False where only the noise delta_0 was applied)."""

    delta: torch.Tensor
    tau: torch.Tensor
    countered: torch.Tensor


def random_init(images: torch.Tensor, eps: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """U(-eps, eps) noise like `images`, drawn on CPU from `generator` (reproducible across devices)."""
    noise = torch.rand(images.shape, generator=generator, dtype=torch.float32, device="cpu")
    return ((noise * 2 - 1) * eps).to(images.device, images.dtype)


def relative_shift(encoder: PixelCLIP, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """tau [B] = ||f(x + delta) - f(x)||_2 / ||f(x)||_2 with unnormalised embeddings f (docs/methods.md §11.2 step 2)."""
    with torch.no_grad():
        base = encoder.encode_image(images)
        moved = encoder.encode_image(images + delta)
    shift: torch.Tensor = (moved - base).norm(dim=-1) / base.norm(dim=-1)  # Tensor.norm is untyped in torch
    return shift


def step_weights(tau: torch.Tensor, cfg: TTCConfig) -> torch.Tensor:
    """Weights [B, K+1] over delta_0..delta_K: softmax(beta * k) where tau < tau_thres, else one-hot at k = 0."""
    k = torch.arange(cfg.steps + 1, dtype=torch.float32, device=tau.device)
    weighted = torch.softmax(cfg.beta * k, dim=0).expand(tau.shape[0], -1)
    noise_only = F.one_hot(torch.zeros_like(tau, dtype=torch.long), cfg.steps + 1).to(weighted.dtype)
    return torch.where((tau < cfg.tau_thres)[:, None], weighted, noise_only)


def counterattack_steps(model: PixelCLIP, images: torch.Tensor, delta0: torch.Tensor, cfg: TTCConfig) -> torch.Tensor:
    """delta_0..delta_K stacked [K+1, B, 3, H, W]: sign ascent on ||f(x + delta) - f(x)||^2 (docs/methods.md §11.2 step 3)."""
    with torch.no_grad():
        anchor = model.encode_image(images)
    deltas = [delta0]
    delta = delta0
    for _ in range(cfg.steps):
        with torch.enable_grad():
            leaf = delta.detach().requires_grad_(True)
            loss = (model.encode_image(images + leaf) - anchor).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, leaf)
        delta = torch.clamp(delta + cfg.step_size * grad.sign(), -cfg.eps, cfg.eps)
        delta = torch.clamp(delta, -images, 1 - images)
        deltas.append(delta)
    return torch.stack(deltas)


def counterattack(
    model: PixelCLIP,
    images: torch.Tensor,
    init: torch.Tensor,
    cfg: TTCConfig,
    tau_model: Optional[PixelCLIP] = None,
) -> Counterattack:
    """TTC's perturbation for `images` from the random start `init` (docs/methods.md §11.2 steps 1-4).

    `tau_model` is the original CLIP when `model` is a fine-tuned one (None: `model` itself).
    Tensor contract: images float32 [B, 3, H, W] in [0, 1]; init like images, U(-eps, eps), not yet
    clamped to the image box. The result's delta keeps x + delta in [0, 1] and |delta| <= eps.
    """
    if init.shape != images.shape:
        raise BadInput(f"TTC start has shape {tuple(init.shape)}, images {tuple(images.shape)}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise BadInput("TTC takes images in [0, 1] pixel space (normalisation happens inside the model)")
    images = images.detach()
    delta0 = torch.clamp(init.detach(), -images, 1 - images)
    tau = relative_shift(model if tau_model is None else tau_model, images, delta0)
    deltas = counterattack_steps(model, images, delta0, cfg)
    weights = step_weights(tau, cfg).to(deltas.dtype)
    delta = torch.einsum("bk,kbchw->bchw", weights, deltas)
    return Counterattack(delta=delta.detach(), tau=tau, countered=tau < cfg.tau_thres)


class TTCClassifier(nn.Module):
    """Zero-shot classifier that counterattacks each input before classifying it (not differentiable).

    Tensor contract: images float32 [B, 3, H, W] in [0, 1] -> logits [B, C]. Randomness (delta_0)
    comes from `generator`; `tau_model` as in `counterattack`.
    """

    # Buffers registered in __init__, typed here (nn.Module's __getattr__ would read them as Tensor | Module).
    head: torch.Tensor

    def __init__(
        self,
        model: PixelCLIP,
        head: torch.Tensor,
        cfg: TTCConfig,
        tau_model: Optional[PixelCLIP] = None,
        generator: Optional[torch.Generator] = None,
        logit_scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tau_model = tau_model
        self.cfg = cfg
        self.generator = generator
        self.register_buffer("head", head.detach().float(), persistent=False)
        self.scale = model.logit_scale if logit_scale is None else float(logit_scale)

    def defend(self, images: torch.Tensor) -> Counterattack:
        """The counterattack TTC applies to `images` (a fresh delta_0 from the generator)."""
        init = random_init(images, self.cfg.eps, self.generator)
        return counterattack(self.model, images, init, self.cfg, self.tau_model)

    def classify(self, images: torch.Tensor, counter: Counterattack) -> torch.Tensor:
        """Logits [B, C] of `images` + `counter.delta` (step 5 of docs/methods.md §11.2)."""
        with torch.no_grad():
            embeddings = self.model.encode_image(images.detach() + counter.delta)
        return cosine_logits(embeddings, self.head, self.scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(images, self.defend(images))
