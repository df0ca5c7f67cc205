"""Training diagnostics for attention-guided methods: per-term gradient norms and min-max ranges (docs/methods.md §3.3).

`TermProbe` is a `clipshield.training.finetune.finetune` observer. Every `every` steps, before the
step's backward, it records

* the L2 norm of the gradient that each named loss term (CE, alpha*L_AR, beta*L_AMC, ...) alone puts
  on the image tower's trainable parameters (`torch.autograd.grad` of each term, graph retained), and
* the min-max range (max - min of the raw patch scores, `attention.patch_scores`) of the target's
  clean and adversarial maps and of the frozen model's clean map, per image: the min-max map's
  gradient with respect to the scores is proportional to 1 / range (no epsilon in the reference),
* the training batch's adversarial accuracy (from the method's logits).

It costs three extra backward passes and two forwards per probed step; nothing when not passed.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

import torch

from clipshield.training.methods.attention import TokenNorm, patch_scores
from clipshield.training.methods.inputs import LossInputs, LossOutput

DEFAULT_TERMS = ("ce", "ar_weighted", "amc_weighted", "anchor_weighted", "total")
RANGE_KINDS = ("clean_target", "adv_target", "clean_frozen")


def term_gradient_norms(out: LossOutput, params: list[torch.nn.Parameter], names: tuple[str, ...]) -> dict[str, float]:
    """L2 norm over `params` of the gradient of each term in `names` present in `out.terms` ('total': `out.total`).

    The graph is retained, so the step's own backward can follow.
    """
    norms: dict[str, float] = {}
    for name in names:
        value = out.total if name == "total" else out.terms.get(name)
        if value is None or not value.requires_grad:
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norms[name] = math.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads if g is not None))
    return norms


def score_ranges(tokens: torch.Tensor, text: torch.Tensor, norm: TokenNorm = "token_axis") -> torch.Tensor:
    """Per-image min-max range [B] of the raw patch scores (tokens [B, 1+P, E], one query per image text [B, E])."""
    scores = patch_scores(tokens, text, norm)
    return scores.amax(dim=1) - scores.amin(dim=1)


def batch_ranges(batch: LossInputs, norm: TokenNorm = "token_axis") -> dict[str, torch.Tensor]:
    """Score ranges [B] of the target's clean and adversarial maps and (if present) the frozen model's clean map."""
    text = batch.heads.classes[batch.labels]
    images = batch.images if batch.adv is None else torch.cat([batch.images, batch.adv])
    with torch.no_grad():
        tokens = batch.target.encode_image_with_tokens(images)[1]
        ranges = score_ranges(tokens, text.repeat(images.shape[0] // text.shape[0], 1), norm)
        n = batch.images.shape[0]
        found = {"clean_target": ranges[:n]}
        if batch.adv is not None:
            found["adv_target"] = ranges[n:]
        if batch.frozen is not None:
            found["clean_frozen"] = score_ranges(batch.frozen.model.encode_image_with_tokens(batch.images)[1], text, norm)
    return found


class TermProbe:
    """A `finetune` observer recording gradient norms per term and map ranges every `every` steps.

    `rows`: one dict per probed step (step, grad_<term>, batch_adv_acc, range_<kind>_{min,p10,median});
    `ranges`: (step, kind, range) per image, for distributions.
    """

    def __init__(self, every: int = 10, terms: tuple[str, ...] = DEFAULT_TERMS, norm: TokenNorm = "token_axis") -> None:
        if every < 1:
            raise ValueError(f"probe interval must be >= 1 step, got {every}")
        self.every, self.terms, self.norm = every, terms, norm
        self.rows: list[dict[str, float]] = []
        self.ranges: list[tuple[int, str, float]] = []

    def __call__(self, step: int, batch: LossInputs, out: LossOutput) -> None:
        if step % self.every:
            return
        params = [p for p in batch.target.visual.parameters() if p.requires_grad]
        row: dict[str, float] = {"step": step}
        row.update({f"grad_{k}": v for k, v in term_gradient_norms(out, params, self.terms).items()})
        row.update({k: float(v.detach()) for k, v in out.terms.items()})
        logits = out.outputs.get("logits_adv")
        if logits is not None:
            row["batch_adv_acc"] = float((logits.argmax(1) == batch.labels).float().mean())
        for kind, values in batch_ranges(batch, self.norm).items():
            values = values.float().cpu()
            row.update({f"range_{kind}_min": float(values.min()), f"range_{kind}_median": float(values.median())})
            row[f"range_{kind}_p10"] = float(values.quantile(0.1))
            self.ranges.extend((step, kind, float(v)) for v in values)
        self.rows.append(row)

    def write(self, folder: Path) -> None:
        """`folder/diagnostics.csv` (the rows) and `folder/map_ranges.csv` (step, kind, range per image)."""
        folder.mkdir(parents=True, exist_ok=True)
        write_rows(folder / "diagnostics.csv", self.rows)
        write_rows(folder / "map_ranges.csv", [{"step": s, "kind": k, "range": r} for s, k, r in self.ranges])


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV with the union of the rows' keys as header (first-seen order); missing cells empty."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def card_accuracies(card: dict[str, Any]) -> dict[str, float]:
    """'<set without world prefix> clean|robust' -> accuracy in % from a model card's (JSON) unpurified entries."""
    return {
        f"{e['dataset'].split('/', 1)[1]} {'clean' if e['attack'] == 'none' else 'robust'}": 100 * e["value"]
        for e in card["accuracy"]
        if not e["purified"]
    }


def range_summary(
    ranges: list[tuple[int, str, float]], thresholds: tuple[float, ...] = (1e-3, 1e-2), kind: Optional[str] = None
) -> dict[str, float]:
    """Distribution of map ranges (all kinds, or one): count, quantiles and the fraction under each threshold."""
    values = torch.tensor([r for _, k, r in ranges if kind is None or k == kind], dtype=torch.float64)
    if values.numel() == 0:
        return {"n": 0}
    summary = {"n": float(values.numel()), "min": float(values.min()), "max": float(values.max())}
    for q in (0.01, 0.1, 0.5):
        summary[f"p{round(q * 100)}"] = float(values.quantile(q))
    for t in thresholds:
        summary[f"below_{t:g}"] = float((values < t).double().mean())
    return summary
