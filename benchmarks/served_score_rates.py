"""Flag rates of the attack score as served: PNG requests through `ClipshieldService` (ONNX Runtime + NumPy score).

Checks that the served path reproduces the rates `clipshield export --calibrate-score N` wrote into the model
card (measured there in PyTorch with other noise draws): the share of clean held-out images whose served
`attack_score.flagged` is true (the false-positive rate), and of PGD-10 images (against the exported model,
step eps/4, sent as 8-bit PNGs); optionally on clean images of other data sets.

    python benchmarks/served_score_rates.py --bundle runs/export/miniworld --skip 256 --n 256 \
        --other miniworld/plain/color_shape/heldout_caption
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def served(service, images: torch.Tensor) -> np.ndarray:
    """Served attack scores [N] of [0, 1] images [N, 3, H, W], sent one PNG per request."""
    from clipshield.service.inference import RawRequest
    from clipshield.service.preprocess import encode_png

    results = service.predict([RawRequest({"image": encode_png(x.numpy()), "attack_score": "true"}, None) for x in images])
    return np.array([r.attack_score.score for r in results])


def main(argv=None) -> int:
    from clipshield.attacks import get_attack
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.models.factory import load_model
    from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
    from clipshield.service.detection_metrics import auroc
    from clipshield.service.inference import ClipshieldService

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--model", default="miniworld", help="the exported model, for the PGD images (default: %(default)s)")
    p.add_argument("--skip", type=int, default=256, help="images used for calibration, skipped (default: %(default)s)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--eps", type=float, default=4.0, help="PGD eps in 1/255 (default: %(default)s)")
    p.add_argument("--other", nargs="*", default=[], help="clean data sets of other traffic")
    args = p.parse_args(argv)
    service = ClipshieldService.from_folder(args.bundle)
    cal = service.card.attack_score
    model = load_model(args.model).eval()
    ds = build_dataset(cal.params.dataset, DatasetRequest(limit=args.skip + args.n, preprocess=model.record.preprocess))
    x, y = ds.images()[args.skip :], torch.tensor(ds.labels[args.skip :])
    clf = ZeroShotClassifier(model, build_text_head(model, list(ds.classnames), list(ds.templates))).eval()
    eps = args.eps / 255
    adv = get_attack("pgd")(clf, eps=eps, alpha=eps / 4, steps=10, generator=torch.Generator().manual_seed(0))(x, y)
    t = cal.params.threshold
    clean, attacked = served(service, x), served(service, adv)
    out = {
        "threshold": t,
        "target_fpr": cal.params.target_fpr,
        "n": len(x),
        "clean_fpr": float(np.mean(clean > t)),
        "pgd_flagged": float(np.mean(attacked > t)),
        "pgd_auroc": auroc(torch.from_numpy(clean), torch.from_numpy(attacked)),
        "card_rates": [r.model_dump() for r in cal.rates],
    }
    for name in args.other:
        other = build_dataset(name, DatasetRequest(limit=args.n, preprocess=model.record.preprocess)).images()
        out[f"clean_fpr {name}"] = float(np.mean(served(service, other) > t))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
