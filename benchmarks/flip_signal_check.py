"""Is a purification flip worth a place in the detector? Served answers with `purify=true` on clean and PGD images.

Issue 24 made `flagged` the model card's attack score alone; before, it was "anchor score below a threshold OR
purification flipped the top-1". This sends held-out clean images and PGD-10 images (against the exported model,
un-purified, step eps/4, as 8-bit PNGs) through the served path of an exported bundle with purification on, and
reports per input kind: how often purification flipped the top-1, how often the detector flagged, how often
"flagged or flipped" would have, and the AUROC of the served anchor cosine (negated: lower is more suspicious).

    python benchmarks/flip_signal_check.py --bundle runs/export/miniworld-anchor --skip 1536 --n 256 --eps 4 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def served(service, images: torch.Tensor) -> dict[str, np.ndarray]:
    """flipped, flagged and anchor_score [N] of [0, 1] images [N, 3, H, W], one PNG request each, purify on."""
    from clipshield.service.inference import RawRequest
    from clipshield.service.preprocess import encode_png

    results = service.predict([RawRequest({"image": encode_png(x.numpy()), "purify": "true"}, None) for x in images])
    return {k: np.array([getattr(r, k) for r in results]) for k in ("flipped", "flagged", "anchor_score")}


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
    p.add_argument("--dataset", default="miniworld/plain/color_shape/seen")
    p.add_argument("--skip", type=int, default=1536, help="images used by the calibration, skipped (default: %(default)s)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--eps", type=float, nargs="+", default=[4.0, 16.0], help="PGD eps in 1/255 (default: %(default)s)")
    args = p.parse_args(argv)
    service = ClipshieldService.from_folder(args.bundle)
    model = load_model(args.model).eval()
    ds = build_dataset(args.dataset, DatasetRequest(limit=args.skip + args.n, preprocess=model.record.preprocess))
    x, y = ds.images()[args.skip :], torch.tensor(ds.labels[args.skip :])
    clf = ZeroShotClassifier(model, build_text_head(model, list(ds.classnames), list(ds.templates))).eval()
    clean = served(service, x)
    rows = {"clean": clean}
    for e in args.eps:
        eps = e / 255
        adv = get_attack("pgd")(clf, eps=eps, alpha=eps / 4, steps=10, generator=torch.Generator().manual_seed(0))(x, y)
        rows[f"pgd10-{e:g}/255"] = served(service, adv)
    purify = service.card.purify
    out: dict = {"n": len(x), "purify": {"steps": purify.steps, "step_size": purify.step_size}, "rows": {}}
    for name, r in rows.items():
        out["rows"][name] = {
            "flipped": float(r["flipped"].mean()),
            "flagged": float(r["flagged"].mean()),
            "flagged_or_flipped": float((r["flagged"] | r["flipped"]).mean()),
            "anchor_auroc": None if name == "clean" else auroc(-clean["anchor_score"], -r["anchor_score"]),
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
