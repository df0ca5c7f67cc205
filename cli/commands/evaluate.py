"""`clipshield evaluate`: zero-shot clean and robust top-1 of a model on data sets under attacks.

Writes one JSON per cell under --out (keyed by weights digest, preprocessing, purification, attack, data
and seed; re-runs skip finished cells), then
summary.json, results.md (paper-style tables) and robust_vs_clean.png.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from clipshield.attacks.budget import as_255, budget_help, to_pixels
from clipshield.attacks.pgd import STOP_RULES
from clipshield.cli.commands.common import add_model_args, model_from_args, progress
from clipshield.cli.commands.evaluate_score import DEFAULT_SCORE_STEPS, add_score_args, run_score
from clipshield.cli.commands.evaluate_ttc import add_ttc_args, run_ttc
from clipshield.models.precision import PRECISIONS
from clipshield.models.purify import PurifyConfig
from clipshield.service.config import flag_config
from clipshield.service.preprocess import PRESETS

DEFAULT_STEPS = 100  # accuracy evaluation; the attack-score evaluation has its own (DEFAULT_SCORE_STEPS)
MINIWORLD_SUITE = "miniworld"  # shorthand for the mini world's standard zero-shot suite
MINIWORLD224_SUITE = "miniworld224"  # the same suite on the 224-pixel world
PAPER_SUITE = "paper16"  # the 16 data sets of TGA-ZSR / PMG-AFT (docs/methods.md §0.7)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="clean and robust zero-shot accuracy (PGD, CW, AutoAttack; adaptive attacks on purification)",
        description="Evaluate zero-shot clean and robust top-1 of a model on data sets under attacks. "
        "Results go to --out: one JSON per (data set, attack) cell (re-runs skip finished cells), "
        "summary.json, results.md and robust_vs_clean.png. --eps and --alpha are in units of 1/255 (--eps 4 means 4/255); "
        "without --eps each data set is attacked at its registered reference (mini world 4/255, real data sets 1/255). "
        "With --attack-score it evaluates the served attack score instead (detection.json, detection.md); with --ttc or "
        "--ttc-adaptive, TTC test-time counterattacks (ttc.json; ttc_adaptive.json, ttc_adaptive.md).",
    )
    add_model_args(p)
    p.add_argument("--model-id", default=None, help="name of the model in reports (default: --model[:--pretrained])")
    _data_args(p)
    _attack_args(p)
    _purify_args(p)
    add_score_args(p)
    add_ttc_args(p)
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda when available, else cpu)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output folder (default: %(default)s)")
    p.set_defaults(run=run)


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--datasets",
        nargs="+",
        default=[MINIWORLD_SUITE],
        help=f"registered data set names; '{MINIWORLD_SUITE}' = the mini-world suite ('{MINIWORLD224_SUITE}': on the 224-px world), "
        f"'{PAPER_SUITE}' = the papers' 16 real sets, "
        "folder/<dir> = any class-folder tree under --data-root (default: %(default)s)",
    )
    g.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N images of each data set (default: all; mini world: 512)"
    )
    g.add_argument("--batch-size", type=int, default=256, help="images per attack batch (default: %(default)s)")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes for real data sets (default: %(default)s)")
    g.add_argument("--data-root", type=Path, default=None, help="parent folder of the real data sets' folders (default: none)")
    g.add_argument(
        "--skip-missing",
        action="store_true",
        help="evaluate the data sets that exist, warn about missing ones (still an error when none exists)",
    )
    g.add_argument(
        "--preprocess",
        choices=list(PRESETS),
        default="model",
        help="image preprocessing: model = the model record's own, what serving does; paper = Resize(S*256/224)+"
        "CenterCrop(S) bilinear (TGA-ZSR/PMG-AFT; CIFAR/STL squashed); squash = resize to SxS (default: %(default)s)",
    )
    g.add_argument(
        "--lowres",
        choices=["tga224", "native"],
        default=None,
        help="CIFAR/STL resolution (docs/methods.md §0.7): tga224 = squash to S, native = no loader resize (default: follow --preprocess)",
    )


def _attack_args(p: argparse.ArgumentParser) -> None:
    from clipshield.attacks import list_attacks

    g = p.add_argument_group("attacks")
    g.add_argument(
        "--attacks",
        nargs="*",
        default=["pgd"],
        choices=["none", *list_attacks()],
        help="attacks, one cell each per data set (none = clean only; default: %(default)s)",
    )
    g.add_argument(
        "--eps",
        type=float,
        default=None,
        help=budget_help(
            "L-inf attack budget",
            "each data set's registered reference: 4 (4/255) for the mini world, 1 (1/255) for real data sets, recorded in every cell",
        ),
    )
    g.add_argument("--alpha", type=float, default=None, help=budget_help("attack step size", "the attack's own (PGD: eps/4)"))
    g.add_argument(
        "--steps", type=int, default=None, help=f"attack iterations (default: {DEFAULT_STEPS}; {DEFAULT_SCORE_STEPS} with --attack-score)"
    )
    g.add_argument("--restarts", type=int, default=1, help="random restarts (PGD/CW; APGD restarts for AutoAttack) (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="attack randomness (default: %(default)s)")
    g.add_argument(
        "--stop",
        choices=list(STOP_RULES),
        default="early",
        help="PGD/CW: early = each image stops at its first fooling step and keeps it (robust accuracy is the worst "
        "case over iterates, as AutoAttack/RobustBench report; the same trajectories, less work); final = every "
        "image runs all steps and the last iterate counts (the papers' tables) (default: %(default)s)",
    )
    g.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="autocast for the evaluation forward passes: bf16 (CPU or CUDA) or fp16 (CUDA) (default: %(default)s)",
    )
    g.add_argument(
        "--attack-precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="autocast inside the attacks; float32 unless asked, since low precision can zero attack gradients (default: %(default)s)",
    )


def _purify_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("purification")
    g.add_argument("--purify", action="store_true", help="CLIPure-Cos purification; attacks run full-autograd, BPDA and transfer")
    g.add_argument("--purify-steps", type=int, default=10, help="CLIPure-Cos purification steps (default: %(default)s)")
    g.add_argument(
        "--purify-step-size", type=float, default=30.0, help="CLIPure-Cos step size in embedding space, not pixels (default: %(default)s)"
    )
    g.add_argument(
        "--purify-mode",
        choices=["per_sample", "batch"],
        default="per_sample",
        help="per_sample: as served; batch: the reference code's batch-coupled variant (default: %(default)s)",
    )


def expand_datasets(names: list[str]) -> list[str]:
    """Replace the suite shorthands by their data set names, keeping order and dropping repeats."""
    from clipshield.datasets.miniworld_sets import standard_eval_names
    from clipshield.datasets.real import REAL_DATASETS

    out: list[str] = []
    for name in names:
        group: Sequence[str]
        if name in (MINIWORLD_SUITE, MINIWORLD224_SUITE):
            group = standard_eval_names(world=name)
        else:
            group = REAL_DATASETS if name == PAPER_SUITE else [name]
        out += [n for n in group if n not in out]
    return out


def eps_groups(eps: Optional[float], datasets: list[str]) -> dict[float, list[str]]:
    """Pixel-unit eps -> the data sets evaluated at it: `eps` (units of 1/255) for all of them when
    given, else each data set's registered reference (mini world 4/255, real data sets 1/255)."""
    from clipshield.datasets import reference_eps

    if eps is not None:
        return {to_pixels(eps, "--eps"): list(datasets)}
    groups: dict[float, list[str]] = {}
    for name in datasets:
        groups.setdefault(reference_eps(name), []).append(name)
    return groups


def describe(args: argparse.Namespace, groups: dict[float, list[str]], alpha: Optional[float]) -> str:
    """The opening line: what will run, printed before anything slow is loaded."""
    n_sets = sum(len(names) for names in groups.values())
    attacks = [a for a in args.attacks if a != "none"]
    images = f"up to {args.limit} images" if args.limit else "every image (mini world: 512)"
    line = f"evaluate: {n_sets * max(1, len(args.attacks))} cell(s) = {n_sets} data set(s) x {', '.join(args.attacks) or 'none'}, {images} each"
    if attacks:
        step = as_255(alpha) if alpha is not None else "the attack's own (PGD: eps/4)"
        source = "from --eps" if args.eps is not None else "the data sets' registered reference; --eps to choose"
        budgets = ", ".join(as_255(eps) + (f" for {len(names)} set(s)" if len(groups) > 1 else "") for eps, names in groups.items())
        line += f"; {accuracy_steps(args)} step(s) of size {step}, {args.restarts} restart(s); eps {budgets} ({source})"
    return line + f"; device {args.device}; results in {args.out}"


def accuracy_steps(args: argparse.Namespace) -> int:
    """--steps, or the accuracy evaluation's default."""
    return DEFAULT_STEPS if args.steps is None else int(args.steps)


def config_from_args(
    args: argparse.Namespace, image_size: Optional[int] = None, datasets: Optional[list[str]] = None, eps: Optional[float] = None
):
    """EvalConfig for `datasets` (default: all requested) at `eps` (pixel units; default: --eps)."""
    from clipshield.evaluation.runner import EvalConfig

    model_id = args.model_id or (args.model if args.pretrained is None else f"{args.model}:{args.pretrained}")
    datasets = datasets if datasets is not None else expand_datasets(args.datasets)
    if eps is None:  # --eps, else the (first) registered reference of these data sets
        eps = next(iter(eps_groups(args.eps, datasets)))
    purify_flags = {"steps": "purify-steps", "step_size": "purify-step-size", "mode": "purify-mode"}
    purify = (
        flag_config(PurifyConfig, purify_flags, steps=args.purify_steps, step_size=args.purify_step_size, mode=args.purify_mode)
        if args.purify
        else None
    )
    return flag_config(
        EvalConfig,
        {"out_dir": "out", "purification": "purify"},
        model_id=model_id,
        datasets=datasets,
        attacks=args.attacks,
        eps=eps,
        steps=accuracy_steps(args),
        restarts=args.restarts,
        alpha=to_pixels(args.alpha, "--alpha", allow_zero=False),
        seed=args.seed,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
        purification=purify,
        data_root=args.data_root,
        skip_missing=args.skip_missing,
        data_options={"lowres": args.lowres} if args.lowres else {},
        preprocess=args.preprocess,
        image_size=image_size,
        stop=args.stop,
        precision=args.precision,
        attack_precision=args.attack_precision,
        device=args.device,
        out_dir=args.out,
    )


def prepared(evaluators: list, skip_missing: bool) -> tuple[list, list[str]]:
    """Build every group's data sets before any attack runs; missing ones are judged over all groups
    (one error listing what was looked for, and where). Returns the groups with data and the missing."""
    from clipshield.evaluation.runner import check_missing

    found = sum(len(ev.prepare(strict=False)) for ev in evaluators)
    missing = [m for ev in evaluators for m in ev.missing]
    check_missing(missing, found, skip_missing)
    return [ev for ev in evaluators if ev.prepare(strict=False)], missing


def run(args: argparse.Namespace) -> int:
    from clipshield.evaluation.report import write_reports
    from clipshield.evaluation.runner import Evaluator, check_attacks
    from clipshield.evaluation.schema import load_all
    from clipshield.models.distributed import init_distributed

    if args.ttc or args.ttc_adaptive:
        return run_ttc(args, [MINIWORLD_SUITE])
    check_attacks(args.attacks)  # fail on a typo or a bad budget before loading any model
    groups = eps_groups(args.eps, expand_datasets(args.datasets))
    if args.attack_score:  # one reference budget for the score: --eps, else the first data set's registered one
        return run_score(args, expand_datasets(args.datasets), next(iter(groups)))
    alpha = to_pixels(args.alpha, "--alpha", allow_zero=False)
    rank, world, args.device = init_distributed(args.device)  # under torchrun: batches shared out, cells merged exactly
    say = print if rank == 0 else (lambda *a, **k: None)
    say(describe(args, groups, alpha) + (f"; {world} processes" if world > 1 else ""), flush=True)
    torch.manual_seed(args.seed)  # CLI only: pins any library randomness not driven by our generators
    model = model_from_args(args).to(args.device)
    bars = lambda total, desc: progress(total, desc, unit="img", disable=False)  # noqa: E731
    evaluators = [Evaluator(model, config_from_args(args, model.image_size, names, eps), progress=bars) for eps, names in groups.items()]
    evaluators, missing = prepared(evaluators, args.skip_missing)
    results = [r for ev in evaluators for r in ev.run()]
    if rank != 0:
        return 0
    out = Path(args.out)
    ours = {r.key.digest() for r in results}  # this run's cells first (column order), then older ones
    paths = write_reports(results + [c for c in load_all(out) if c.key.digest() not in ours], out)
    computed, skipped = sum(len(ev.computed) for ev in evaluators), sum(len(ev.skipped) for ev in evaluators)
    print(f"{computed} cell(s) computed, {skipped} reused from {out / 'cells'}")
    for r in results:
        robust = "-" if r.robust is None else f"{100 * r.robust:.2f}"
        verdict = f"  [{r.adaptive.verdict}]" if r.adaptive is not None else ""
        budget = "" if r.key.attack == "none" else f" eps={as_255(r.key.eps)}"
        print(f"{r.key.dataset:40s} {r.key.attack:18s}{budget} n={r.n:5d} clean={100 * r.clean:6.2f} robust={robust}{verdict}")
    for message in missing:
        print(f"skipped missing data set: {message}")
    print(f"summary: {paths['summary']}\ntable:   {paths['markdown']}\nplot:    {paths['plot']}")
    return 0
