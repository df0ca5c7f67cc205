"""The attack score on real photo textures: scikit-image's bundled photos, cut into crops (issue 15).

The mini world renders flat colours, which a median filter or a bit-depth cut leaves almost unchanged; real
photos have fine texture those squeezers do alter. This check measures what that does to the score's
signals, on the model you give: crops of the photos go through the served preprocessing (`to_pixels`),
are attacked with PGD-10 away from the model's own clean answer (photos carry no mini-world label), and
the score is (a) applied as calibrated on the mini world (false-positive rate on real textures) and
(b) refitted on half of the crops and judged on the other half (AUROC on real textures).

    python benchmarks/photo_score_check.py --model miniworld224 --crops 12

Needs scikit-image (the dev extra). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "coins", "moon")
PHOTOS += ("page", "text", "grass", "gravel", "brick", "clock", "horse")


def photo_crops(size: int, crops_per_photo: int, seed: int, preprocess) -> torch.Tensor:
    """[N, 3, size, size] crops (square, half the shorter side, random places) through `to_pixels`."""
    from PIL import Image
    from skimage import data

    from clipshield.service.preprocess import to_pixels

    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        photo = np.asarray(getattr(data, name)())
        photo = np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo[..., :3]
        if photo.dtype != np.uint8:
            photo = (255 * (photo.astype(np.float64) / max(photo.max(), 1))).astype(np.uint8)
        h, w = photo.shape[:2]
        side = min(h, w) // 2
        for _ in range(crops_per_photo):
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[top : top + side, left : left + side])
            out.append(torch.from_numpy(to_pixels(crop, preprocess)))
    return torch.stack(out)


def main(argv=None) -> int:
    from clipshield.attacks import get_attack
    from clipshield.datasets import DatasetRequest, build_dataset
    from clipshield.evaluation import detection
    from clipshield.models.attack_score import AttackScoreConfig, SignalExtractor, calibrate_scorer
    from clipshield.models.factory import load_model
    from clipshield.models.purify import blank_anchor
    from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
    from clipshield.service.detection_metrics import auroc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="miniworld224")
    p.add_argument(
        "--world-set", default=None, help="mini-world set whose labels and calibration are used (default: <model>/plain/color_shape/seen)"
    )
    p.add_argument("--crops", type=int, default=12, help="crops per photo (default: %(default)s)")
    p.add_argument("--n-world", type=int, default=128, help="mini-world calibration images (default: %(default)s)")
    p.add_argument("--eps", type=float, default=4.0, help="PGD eps in 1/255 (default: %(default)s)")
    p.add_argument("--signals", nargs="+", default=list(AttackScoreConfig().signals))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.model).eval()
    world_set = args.world_set or f"{args.model}/plain/color_shape/seen"
    ds = build_dataset(world_set, DatasetRequest(limit=args.n_world))
    clf = ZeroShotClassifier(model, build_text_head(model, list(ds.classnames), list(ds.templates))).eval()
    eps = args.eps / 255
    pgd = get_attack("pgd")(clf, eps=eps, alpha=eps / 4, steps=10, generator=torch.Generator().manual_seed(0))
    cfg = AttackScoreConfig(signals=tuple(args.signals))
    extractor = SignalExtractor(clf, blank_anchor(model, list(ds.templates)), cfg)
    world_x, world_y = ds.images(), torch.tensor(ds.labels)
    world = calibrate_scorer(extractor, world_x, pgd(world_x, world_y), 0.05, world_set, torch.Generator().manual_seed(1))
    photos = photo_crops(model.image_size, args.crops, 0, model.record.preprocess)
    with torch.no_grad():
        own = clf(photos).argmax(-1)  # the model's own answer: the attack pushes away from it
    adv = torch.cat([pgd(photos[i : i + 64], own[i : i + 64]) for i in range(0, len(photos), 64)])
    half = torch.randperm(len(photos), generator=torch.Generator().manual_seed(2))
    fit, judge = half[: len(photos) // 2], half[len(photos) // 2 :]
    local = calibrate_scorer(extractor, photos[fit], adv[fit], 0.05, "photo crops", torch.Generator().manual_seed(1))
    score = lambda s, x: detection._scores(s, x, 64, 3)  # noqa: E731
    with torch.no_grad():
        moved = float((clf(adv).argmax(-1) != own).float().mean())
    out = {
        "model": args.model,
        "photos": len(PHOTOS),
        "crops": len(photos),
        "pgd_changed_answer": moved,
        "world_fit": {"weights": world.params.weights, "threshold": world.params.threshold},
        "world_fit_clean_photo_flag_rate": float(world.flag(score(world, photos)).float().mean()),
        "world_fit_attacked_photo_flag_rate": float(world.flag(score(world, adv)).float().mean()),
        "world_fit_photo_auroc": auroc(score(world, photos), score(world, adv)),
        "photo_fit": {"weights": local.params.weights, "threshold": local.params.threshold},
        "photo_fit_heldout_clean_flag_rate": float(local.flag(score(local, photos[judge])).float().mean()),
        "photo_fit_heldout_attacked_flag_rate": float(local.flag(score(local, adv[judge])).float().mean()),
        "photo_fit_heldout_auroc": auroc(score(local, photos[judge]), score(local, adv[judge])),
        "per_signal_auroc": {},
    }
    with torch.no_grad():
        clean_sig, adv_sig = extractor(photos[judge]), extractor(adv[judge])
    for i, name in enumerate(cfg.signals):
        out["per_signal_auroc"][name] = auroc(clean_sig[:, i], adv_sig[:, i])
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
