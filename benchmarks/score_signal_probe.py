"""Which forward-only signal tells PGD images from clean ones? Per-signal AUROC, one data set (issue 15).

The probe behind the attack score's default signals (docs/security.md section 5.1): for N clean images of a
data set and their PGD-10 / CW-10 versions at eps, each candidate's AUROC (folded: 1 - AUROC when attacked
images score lower). Candidates are the shift of the unit-norm embedding under a squeezer (median k x k,
bit depth b, 2x down-and-up sampling, Gaussian blur sigma 1; Xu et al., NDSS 2018) or under uniform noise of
4, 8 or 16/255 (`tau`, 4 draws), and the logit margin of the data set's own labels. The served score offers
`median` (3x3) and `bits` (5) among these; the others are here for comparison.

    python benchmarks/score_signal_probe.py --model miniworld224 --dataset miniworld224/plain/color_shape/seen --n 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    r = torch.arange(5, dtype=torch.float32) - 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    w = (g[:, None] * g[None] / g.sum() ** 2).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w, groups=x.shape[1])


def down_up(x: torch.Tensor) -> torch.Tensor:
    side = x.shape[-1]
    return F.interpolate(F.interpolate(x, size=side // 2, mode="area"), size=side, mode="bilinear", align_corners=False)


def candidates():
    from clipshield.models.attack_score import bit_squeeze, median_squeeze

    return {
        "median 2x2": _median_even,
        "median 3x3": lambda x: median_squeeze(x, 3),
        "bits 5": lambda x: bit_squeeze(x, 5),
        "bits 4": lambda x: bit_squeeze(x, 4),
        "down-up 2x": down_up,
        "blur 1": blur,
    }


def _median_even(x: torch.Tensor) -> torch.Tensor:
    """2x2 median (lower of the two middle values, as torch.median), window anchored top-left."""
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    return padded.unfold(2, 2, 1).unfold(3, 2, 1).reshape(*x.shape, 4).median(dim=-1).values


def signals(clf, x: torch.Tensor) -> dict[str, torch.Tensor]:
    from clipshield.models.attack_score import median_squeeze

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        e = F.normalize(clf.model.encode_image(x), dim=-1)
        top2 = clf.logits_from_embeddings(e).topk(2, dim=-1).values
        out = {"margin": top2[:, 0] - top2[:, 1]}
        residual = x - median_squeeze(x, 3)  # pixel space: no encoder pass (the served `pixel_median` is the mean abs)
        out["pixel median 3x3 mean|r|"] = residual.abs().mean(dim=(1, 2, 3))
        out["pixel median 3x3 rms(r)"] = residual.pow(2).mean(dim=(1, 2, 3)).sqrt()
        for name, squeeze in candidates().items():
            out[name] = (F.normalize(clf.model.encode_image(squeeze(x).clamp(0, 1)), dim=-1) - e).norm(dim=-1)
        for s in (4, 8, 16):
            shifts = []
            for _ in range(4):
                noise = (torch.rand(x.shape, generator=g) * 2 - 1) * s / 255
                shifts.append((F.normalize(clf.model.encode_image((x + noise).clamp(0, 1)), dim=-1) - e).norm(dim=-1))
            out[f"tau {s}/255"] = torch.stack(shifts).mean(dim=0)
    return out


def main(argv=None) -> int:
    from clipshield.attacks import get_attack
    from clipshield.datasets import DatasetRequest, build_dataset
    from clipshield.models.factory import load_model
    from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
    from clipshield.service.detection_metrics import auroc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="miniworld224")
    p.add_argument("--dataset", default="miniworld224/plain/color_shape/seen")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--eps", type=float, default=4.0, help="attack budget in 1/255 (default: %(default)s)")
    p.add_argument("--attacks", nargs="+", default=["pgd", "cw"])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.model).eval()
    ds = build_dataset(args.dataset, DatasetRequest(limit=args.n))
    x, y = ds.images(), torch.tensor(ds.labels)
    clf = ZeroShotClassifier(model, build_text_head(model, list(ds.classnames), list(ds.templates))).eval()
    eps, t0 = args.eps / 255, time.time()
    clean = signals(clf, x)
    for name in args.attacks:
        attack = get_attack(name)(clf, eps=eps, alpha=eps / 4, steps=10, generator=torch.Generator().manual_seed(0))
        adv = torch.cat([attack(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)])
        with torch.no_grad():
            success = float((clf(adv).argmax(-1) != y).float().mean())
        attacked = signals(clf, adv)
        print(f"{args.model} {args.dataset} {name}-10 @ {args.eps:g}/255: success {success:.3f} ({time.time() - t0:.0f} s)")
        for signal, values in clean.items():
            a = auroc(values, attacked[signal])
            print(f"  {signal:12s} AUROC {max(a, 1 - a):.3f}{'  (attacked lower)' if a < 0.5 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
