"""Throughput of our PGD vs torchattacks.PGD on the same classifier, batch and steps (run on demand).

    python benchmarks/bench_pgd.py [--model miniworld] [--batch 128] [--steps 10] [--repeats 3] [--threads 1]

Prints images*steps/s for both and their ratio (ours / torchattacks; target >= 1.0). Both attack
the same `ZeroShotClassifier` (the serving code path) on mini-world images (resized inside the
model when it is not a 32x32 model). Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipshield.attacks import get_attack
from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.models.factory import load_model
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head


def _once(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_pair(a, b, repeats: int) -> tuple[float, float]:
    """Median wall times of `a()` and `b()`, interleaved (a, b, a, b, ...) after one warm-up each,
    so a busy machine slows both alike."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_once(a))
        tb.append(_once(b))
    return statistics.median(ta), statistics.median(tb)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="miniworld")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--dataset", default="miniworld/plain/color_shape/seen")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=4.0, help="in units of 1/255")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import torchattacks

    model = load_model(args.model, pretrained=args.pretrained).to(args.device).eval()
    ds = build_dataset(args.dataset, DatasetRequest(limit=args.batch))
    clf = ZeroShotClassifier(model, build_text_head(model, ds.classnames, ds.templates)).eval()
    images = ds.images().to(args.device)
    labels = torch.as_tensor(ds.labels, device=args.device)
    eps, alpha = args.eps / 255, args.eps / 255 / 4

    ours = get_attack("pgd")(clf, eps=eps, alpha=alpha, steps=args.steps, generator=torch.Generator().manual_seed(0))
    theirs = torchattacks.PGD(clf, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
    work = len(labels) * args.steps
    t_ours, t_theirs = timed_pair(lambda: ours(images, labels), lambda: theirs(images, labels), args.repeats)
    adv_ours, adv_theirs = ours(images, labels), theirs(images, labels)
    with torch.no_grad():
        acc_ours = float((clf(adv_ours).argmax(-1) == labels).float().mean())
        acc_theirs = float((clf(adv_theirs).argmax(-1) == labels).float().mean())
    print(f"model {args.model}, device {args.device}, threads {args.threads}, batch {len(labels)}, steps {args.steps}, eps {args.eps}/255")
    print(f"{'':14s}{'images*steps/s':>16s}{'seconds':>10s}{'robust acc':>12s}")
    print(f"{'clipshield':14s}{work / t_ours:16.1f}{t_ours:10.3f}{acc_ours:12.3f}")
    print(f"{'torchattacks':14s}{work / t_theirs:16.1f}{t_theirs:10.3f}{acc_theirs:12.3f}")
    print(f"ratio (clipshield / torchattacks): {t_theirs / t_ours:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
