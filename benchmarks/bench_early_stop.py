"""PGD-100 with and without early stopping, same model, images and starts (run on demand).

    python benchmarks/bench_early_stop.py [--steps 100] [--limit 256] [--threads 2] [--finetune-steps 200]

For the shipped mini-world model and for a TGA-ZSR model fine-tuned here with the mini-world
budget (batch 32, eps 4/255, `--finetune-steps` steps), prints wall time and robust accuracy of
the final-iterate protocol and of early stopping, and their ratio. Early stopping skips the
forward and backward passes of samples already fooled; its robust accuracy is the worst case over
iterates, so it can only be lower or equal. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipshield.evaluation.measure import AttackRecipe, zero_shot_task
from clipshield.evaluation.zeroshot import accuracy, batches
from clipshield.models.factory import load_model

DATASET = "miniworld/plain/color_shape/seen"
EPS = 4 / 255


def fine_tuned(steps: int) -> torch.nn.Module:
    """A TGA-ZSR model fine-tuned from the shipped one with the mini-world budget."""
    from clipshield.training.finetune import FinetuneConfig, finetune

    out = Path(tempfile.mkdtemp(prefix="bench-early-"))
    cfg = FinetuneConfig(
        method="tga-zsr",
        model="miniworld",
        output=out,
        steps=steps,
        batch_size=32,
        lr=0.005,
        eps=EPS,
        warmup=None,
        data_limit=3200,
        eval_datasets=[],
        seed=0,
        threads=torch.get_num_threads(),
    )
    return finetune(cfg)[0]


def compare(name: str, model: torch.nn.Module, steps: int, limit: int) -> None:
    """Print one row per protocol for `model`: seconds, robust top-1, and the speed-up."""
    ds, clf, labels = zero_shot_task(model, DATASET, limit)
    images = ds.images()
    rows = {}
    for stop in ("final", "early"):
        attack = AttackRecipe(eps=EPS, steps=steps, stop=stop).build(clf, torch.Generator().manual_seed(0))
        start = time.perf_counter()
        robust, n = accuracy(clf, batches(images, labels, 256), attack)
        rows[stop] = (time.perf_counter() - start, 100 * robust)
    for stop, (seconds, robust) in rows.items():
        print(f"{name:22s} {stop:6s} {seconds:9.2f} s   robust {robust:5.1f} %   (n={n})")
    print(f"{name:22s} speed-up early vs final: {rows['final'][0] / rows['early'][0]:.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="PGD steps (default: %(default)s)")
    p.add_argument("--limit", type=int, default=256, help="images of the seen plain colour+shape set (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--finetune-steps", type=int, default=200, help="TGA-ZSR steps for the second model; 0 skips it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"PGD-{args.steps}, eps 4/255, alpha eps/4, {DATASET}, threads {args.threads}")
    compare("base (shipped)", load_model("miniworld"), args.steps, args.limit)
    if args.finetune_steps:
        compare(f"tga-zsr {args.finetune_steps} steps", fine_tuned(args.finetune_steps), args.steps, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
