"""Attack score: forward-only signals that an input may be adversarial, combined and calibrated (issue 15).

Signals, per image x (all from forward passes the served path could afford; no input gradient):
* `tau`:       mean shift ||f^(x + n) - f^(x)|| of the unit-norm embedding f^ over `n_noise` draws of
               n ~ U(-noise_eps, noise_eps) (TTC's "falsely stable" signal, docs/methods.md §11.2, on the unit-norm
               embedding the served ONNX encoder returns; TTC's own tau in `clipshield.models.ttc` uses the
               unnormalised one and drives the counterattack, not this score);
* `anchor`:    cosine of the embedding with the CLIPure blank anchor (the serving flag's score);
* `margin`:    top-1 minus top-2 zero-shot logit;
* `agreement`: cosine between the embeddings of the defended and the original (non-robust) encoder,
               only when the original is given;
* `median`:    shift ||f^(median_k(x)) - f^(x)|| of the unit-norm embedding under a k x k median filter and
* `bits`:      the same under bit-depth reduction to `bit_depth` bits per channel: the two squeezers of feature
               squeezing (Xu, Evans & Qi, NDSS 2018), measured on the embedding so the signal does not depend on
               the label set a caller sends. Adversarial perturbations are fine-grained and a squeezer removes
               them, so attacked embeddings move more than clean ones;
* `pixel_median`: mean |x - median_k(x)| over pixels: the median squeezer judged in pixel space, no encoder pass
               (issue 26: the cheap signal; on flat renders as strong as `median`, on textured photos weaker).
Combination: a logistic regression on the signals standardised by their clean-calibration mean and
spread, fitted on clean (0) vs PGD (1) calibration images; the score is its logit (higher = more
suspicious). The threshold is set on clean calibration images so that at most `target_fpr` of them
score above it. Everything is differentiable in the images, so an adaptive attacker can use it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.ttc import random_init
from clipshield.models.zero_shot import ZeroShotClassifier

# The score's configuration types live in `attack_score_config` (numpy serving imports them without torch);
# re-exported here for callers of the torch scorer (`X as X`: an explicit re-export, which strict mypy requires).
from clipshield.service.attack_score_config import (
    SIGNALS as SIGNALS,
    SQUEEZE_SIGNALS,
    AttackScoreConfig as AttackScoreConfig,
    ScoreParams as ScoreParams,
    check_signals,
)
from clipshield.service.detection_metrics import threshold_above_fpr
from clipshield.service.errors import BadInput, ConfigError


def median_squeeze(images: torch.Tensor, size: int) -> torch.Tensor:
    """Median over each `size` x `size` window (odd size, reflect padding) of images [B, C, H, W]; same shape.

    Differentiable (the gradient flows to each window's median pixel), so adaptive attackers can use it."""
    half = size // 2
    padded = F.pad(images, (half, half, half, half), mode="reflect")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # [B, C, H, W, size, size]
    return windows.reshape(*images.shape, size * size).median(dim=-1).values


def bit_squeeze(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Images [B, C, H, W] in [0, 1] rounded to 2**bits - 1 levels (half to even, as NumPy rounds).

    The backward pass is the identity (straight-through, BPDA): rounding has zero gradient almost everywhere,
    and an adaptive attacker must not be handed a masked gradient."""
    levels = float(2**bits - 1)
    rounded = torch.round(images * levels) / levels
    return images + (rounded - images).detach()


def squeeze(images: torch.Tensor, name: str, cfg: AttackScoreConfig) -> torch.Tensor:
    """The squeezed images of signal `name` ('median' or 'bits')."""
    return median_squeeze(images, cfg.median_size) if name == "median" else bit_squeeze(images, cfg.bit_depth)


class SignalExtractor(nn.Module):
    """Raw signals [B, S] (columns in `cfg.signals` order) for images [B, 3, H, W] in [0, 1]; differentiable.

    The noise of `tau` is drawn from `generator` (CPU), so callers control its randomness (EOT for attackers).
    """

    # Buffers registered in __init__, typed here (nn.Module's __getattr__ would read them as Tensor | Module).
    anchor: torch.Tensor

    def __init__(
        self, classifier: ZeroShotClassifier, anchor: torch.Tensor, cfg: AttackScoreConfig, reference: Optional[PixelCLIP] = None
    ) -> None:
        super().__init__()
        check_signals(cfg.signals, reference is not None)
        self.classifier = classifier
        self.reference = reference
        self.cfg = cfg
        self.register_buffer("anchor", F.normalize(anchor.detach().float(), dim=-1), persistent=False)

    def tau(self, images: torch.Tensor, base: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Mean shift [B] of the unit-norm embedding under `n_noise` uniform noise draws (`base`: unnormalised)."""
        shifts = []
        for _ in range(self.cfg.n_noise):
            noise = random_init(images, self.cfg.noise_eps, generator)
            noise = torch.clamp(noise, -images.detach(), 1 - images.detach())
            moved = self.classifier.model.encode_image(images + noise)
            shifts.append((F.normalize(moved, dim=-1) - F.normalize(base, dim=-1)).norm(dim=-1))
        return torch.stack(shifts).mean(dim=0)

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise BadInput("the attack score takes images in [0, 1] pixel space")
        base = self.classifier.model.encode_image(images)
        columns = []
        for name in self.cfg.signals:
            if name == "tau":
                columns.append(self.tau(images, base, generator))
            elif name == "anchor":
                columns.append(F.normalize(base, dim=-1) @ self.anchor)
            elif name == "margin":
                top2 = self.classifier.logits_from_embeddings(base).topk(2, dim=-1).values
                columns.append(top2[:, 0] - top2[:, 1])
            elif name == "pixel_median":
                columns.append((images - median_squeeze(images, self.cfg.median_size)).abs().mean(dim=(1, 2, 3)))
            elif name in SQUEEZE_SIGNALS:
                squeezed = self.classifier.model.encode_image(squeeze(images, name, self.cfg))
                columns.append((F.normalize(squeezed, dim=-1) - F.normalize(base, dim=-1)).norm(dim=-1))
            else:  # agreement (checked in __init__)
                ref = self.reference.encode_image(images)  # type: ignore[union-attr]
                columns.append(F.cosine_similarity(base, ref, dim=-1))
        return torch.stack(columns, dim=-1)


def fit_logistic(
    clean: torch.Tensor, attacked: torch.Tensor, cfg: AttackScoreConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [S], std [S], weights [S], bias []) of a ridge logistic regression, clean = 0 vs attacked = 1.

    Signals are standardised by the clean rows' mean and spread. Deterministic (full-batch L-BFGS).
    """
    mean, std = clean.mean(dim=0), clean.std(dim=0).clamp_min(1e-8)
    x = (torch.cat([clean, attacked]).double() - mean.double()) / std.double()
    y = torch.cat([torch.zeros(len(clean)), torch.ones(len(attacked))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=cfg.fit_iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + cfg.l2 * w.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]  # torch's LBFGS.step has no annotations
    return mean.float(), std.float(), w.detach().float(), b.detach().float()


class AttackScorer(nn.Module):
    """Signals -> logistic score [B] (higher = more suspicious) and the calibrated flag; differentiable.

    Tensor contract: images float32 [B, 3, H, W] in [0, 1] -> score float32 [B].
    """

    # Buffers registered in __init__, typed here (nn.Module's __getattr__ would read them as Tensor | Module).
    mean: torch.Tensor
    std: torch.Tensor
    weights: torch.Tensor

    def __init__(self, extractor: SignalExtractor, params: ScoreParams) -> None:
        super().__init__()
        if tuple(params.signals) != tuple(extractor.cfg.signals):
            raise ConfigError(f"score fitted on signals {params.signals}, extractor gives {extractor.cfg.signals}")
        self.extractor = extractor
        self.params = params
        for name in ("mean", "std", "weights"):
            self.register_buffer(name, torch.tensor(getattr(params, name), dtype=torch.float32), persistent=False)

    def score_signals(self, signals: torch.Tensor) -> torch.Tensor:
        """Score [B] from raw signals [B, S]."""
        return ((signals - self.mean) / self.std) @ self.weights + self.params.bias

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.score_signals(self.extractor(images, generator))

    def flag(self, scores: torch.Tensor) -> torch.Tensor:
        """Bool [B]: score above the calibrated threshold."""
        return scores > self.params.threshold


def calibrate_scorer(
    extractor: SignalExtractor,
    clean: torch.Tensor,
    attacked: torch.Tensor,
    target_fpr: float,
    dataset: str,
    generator: Optional[torch.Generator] = None,
    batch_size: int = 128,
) -> AttackScorer:
    """Fit the combination on clean vs attacked calibration images [N, 3, H, W] and set the threshold
    at `target_fpr` on the clean ones (`dataset` is recorded, not loaded)."""
    with torch.no_grad():
        sig_clean = torch.cat([extractor(clean[i : i + batch_size], generator) for i in range(0, len(clean), batch_size)])
        sig_adv = torch.cat([extractor(attacked[i : i + batch_size], generator) for i in range(0, len(attacked), batch_size)])
    mean, std, w, b = fit_logistic(sig_clean, sig_adv, extractor.cfg)
    scores = ((sig_clean - mean) / std) @ w + b
    params = ScoreParams(
        signals=extractor.cfg.signals,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        weights=tuple(w.tolist()),
        bias=float(b),
        threshold=threshold_above_fpr(scores, target_fpr),
        target_fpr=target_fpr,
        dataset=dataset,
        n_calibration=len(clean),
    )
    return AttackScorer(extractor, params)
