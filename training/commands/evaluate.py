"""`clipshield evaluate`: zero-shot clean and robust top-1 of a model on data sets under attacks.

Writes one JSON per cell under --out (keyed by weights digest, preprocessing, purification, attack, data
and seed; re-runs skip finished cells), then
summary.json, results.md (paper-style tables) and robust_vs_clean.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

from service.preprocess import PRESETS
from service.purify import PurifyConfig

from .common import add_model_args, model_from_args, progress

MINIWORLD_SUITE = "miniworld"  # shorthand for the mini world's standard zero-shot suite
PAPER_SUITE = "paper16"  # the 16 data sets of TGA-ZSR / PMG-AFT (spec 0.7)
PAPER_DATASETS = (
    "tinyimagenet", "cifar10", "cifar100", "stl10", "food101", "oxford_pets", "flowers102", "dtd", "eurosat",
    "fgvc_aircraft", "caltech101", "caltech256", "stanford_cars", "pcam", "imagenet", "sun397",
)


def register(sub: argparse._SubParsersAction) -> None:
    from training.attacks import list_attacks

    p = sub.add_parser(
        "evaluate",
        help="clean and robust zero-shot accuracy (PGD, CW, AutoAttack; adaptive attacks on purification)",
        description="Evaluate zero-shot clean and robust top-1 of a model on data sets under attacks. "
        "Results go to --out: one JSON per (data set, attack) cell (re-runs skip finished cells), "
        "summary.json, results.md and robust_vs_clean.png.",
    )
    add_model_args(p)
    p.add_argument("--model-id", default=None, help="name of the model in reports (default: --model[:--pretrained])")
    p.add_argument(
        "--datasets", nargs="+", default=[MINIWORLD_SUITE],
        help=f"registered data set names; '{MINIWORLD_SUITE}' = the mini-world suite, '{PAPER_SUITE}' = the papers' 16 real sets, "
        "folder/<dir> = any class-folder tree under --data-root",
    )
    p.add_argument("--attacks", nargs="*", default=["pgd"], choices=["none", *list_attacks()], help="attacks (none = clean only)")
    p.add_argument("--eps", type=float, default=1.0, help="L-inf budget in units of 1/255 (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=None, help="step size in units of 1/255 (default: the attack's own)")
    p.add_argument("--steps", type=int, default=100, help="attack iterations (default: %(default)s)")
    p.add_argument("--restarts", type=int, default=1, help="random restarts (PGD/CW; APGD restarts for AutoAttack)")
    p.add_argument("--seed", type=int, default=0, help="attack randomness (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each data set")
    p.add_argument("--batch-size", type=int, default=256, help="images per attack batch (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes for real data sets")
    p.add_argument("--data-root", type=Path, default=None, help="parent folder of the real data sets' folders")
    p.add_argument("--skip-missing", action="store_true", help="evaluate the data sets that exist, warn about missing ones")
    p.add_argument("--preprocess", choices=list(PRESETS), default="model",
                   help="image preprocessing: model = the model record's own, what serving does; paper = Resize(S*256/224)+"
                   "CenterCrop(S) bilinear (TGA-ZSR/PMG-AFT; CIFAR/STL squashed); squash = resize to SxS (default: %(default)s)")
    p.add_argument("--lowres", choices=["tga224", "native"], default=None,
                   help="CIFAR/STL resolution (spec 0.7): tga224 = squash to S, native = no loader resize (default: follow --preprocess)")
    p.add_argument("--purify", action="store_true", help="CLIPure-Cos purification; attacks run full-autograd, BPDA and transfer")
    p.add_argument("--purify-steps", type=int, default=10)
    p.add_argument("--purify-step-size", type=float, default=30.0)
    p.add_argument("--purify-mode", choices=["per_sample", "batch"], default="per_sample")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output folder (default: %(default)s)")
    p.set_defaults(run=run)


def expand_datasets(names: list[str]) -> list[str]:
    """Replace the suite shorthands by their data set names, keeping order and dropping repeats."""
    from training.data.miniworld import standard_eval_names

    out: list[str] = []
    for name in names:
        group = standard_eval_names() if name == MINIWORLD_SUITE else PAPER_DATASETS if name == PAPER_SUITE else [name]
        out += [n for n in group if n not in out]
    return out


def config_from_args(args: argparse.Namespace, image_size: Optional[int] = None):
    from training.eval.runner import EvalConfig

    model_id = args.model_id or (args.model if args.pretrained is None else f"{args.model}:{args.pretrained}")
    purify = PurifyConfig(steps=args.purify_steps, step_size=args.purify_step_size, mode=args.purify_mode) if args.purify else None
    return EvalConfig(
        model_id=model_id, datasets=expand_datasets(args.datasets), attacks=args.attacks, eps=args.eps / 255,
        steps=args.steps, restarts=args.restarts, alpha=None if args.alpha is None else args.alpha / 255, seed=args.seed, limit=args.limit,
        batch_size=args.batch_size, workers=args.workers, purification=purify, data_root=args.data_root, skip_missing=args.skip_missing,
        data_options={"lowres": args.lowres} if args.lowres else {}, preprocess=args.preprocess, image_size=image_size, device=args.device, out_dir=args.out,
    )


def run(args: argparse.Namespace) -> int:
    from training.eval.report import write_reports
    from training.eval.runner import Evaluator, check_attacks
    from training.eval.schema import load_all

    check_attacks(args.attacks)  # fail on a typo before loading any model
    torch.manual_seed(args.seed)  # CLI only: pins any library randomness not driven by our generators
    model = model_from_args(args).to(args.device)
    cfg = config_from_args(args, model.image_size)
    evaluator = Evaluator(model, cfg, progress=lambda total, desc: progress(total, desc, unit="img"))
    results = evaluator.run()
    ours = {r.key.digest() for r in results}  # this run's cells first (column order), then older ones
    paths = write_reports(results + [c for c in load_all(cfg.out_dir) if c.key.digest() not in ours], cfg.out_dir)
    print(f"{len(evaluator.computed)} cell(s) computed, {len(evaluator.skipped)} reused from {cfg.out_dir / 'cells'}")
    for r in results:
        robust = "-" if r.robust is None else f"{100 * r.robust:.2f}"
        verdict = f"  [{r.adaptive.verdict}]" if r.adaptive is not None else ""
        print(f"{r.key.dataset:40s} {r.key.attack:18s} n={r.n:5d} clean={100 * r.clean:6.2f} robust={robust}{verdict}")
    for message in evaluator.missing:
        print(f"skipped missing data set: {message}")
    print(f"summary: {paths['summary']}\ntable:   {paths['markdown']}\nplot:    {paths['plot']}")
    return 0
