"""`clipshield experiment`: the mini-world comparison, a published paper table, and equal-budget tuning.

`experiment miniworld` compares the base model and every method on a mini world (`--world miniworld224`
for the 224-pixel one), one budget and several seeds (`clipshield.experiments.miniworld`); `experiment
tune` runs one Optuna study per method, the same number of trials each, scored on validation splits
(`clipshield.experiments.tuning`). This module parses, calls the library and prints.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clipshield.attacks.budget import budget_help, to_pixels
from clipshield.datasets.miniworld.worlds import WORLDS
from clipshield.datasets.miniworld_sets import MINIWORLD_RECIPE
from clipshield.experiments.miniworld import (  # noqa: F401  (the comparison's names, as callers have imported them from here)
    EVAL_SETS,
    HELDOUT_COMBOS,
    HELDOUT_DOMAINS,
    SEEN,
    eval_groups,
    eval_sets,
    experiment_config,
    experiment_eps,
    markdown,
    output_dir,
    plot,
    run_all,
    run_base,
    run_method,
    summarise,
)
from clipshield.service.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from clipshield.experiments import paper_run

    top = sub.add_parser(
        "experiment",
        help="compare methods: the mini-world comparison, or a published paper table",
        description="Experiments: `experiment miniworld` compares every method on the mini world; `experiment paper` "
        "reproduces a published TGA-ZSR table (fine-tune, evaluate 16 data sets, compare; --dry-run for the plan).",
    )
    suites = top.add_subparsers(dest="suite", required=True, metavar="{miniworld,paper,tune}")
    p = suites.add_parser(
        "miniworld",
        help="compare the base model and every fine-tuning method on the mini world",
        description="Fine-tune the shipped mini-world CLIP with every method under one shared budget and several "
        "seeds, evaluate clean and PGD accuracy (eps 4/255) on seen, held-out-combination and held-out-domain sets, "
        "and write OUTPUT/results.{md,json,png}. CPU only; well under a minute per run on 2 cores with the defaults.",
    )
    paper = suites.add_parser(
        "paper",
        help="reproduce a published TGA-ZSR table (--dry-run: the plan and its cost)",
        description=paper_run.__doc__,
    )
    paper_run.add_arguments(paper)
    paper.set_defaults(run=paper_run.run)
    add_miniworld_arguments(p)
    p.set_defaults(run=run)
    tune = suites.add_parser(
        "tune",
        help="tune every method's lr and loss weights on equal terms (Optuna; validation splits only)",
        description="One Optuna study per method, the same number of trials each: short fine-tuning runs scored on "
        "validation splits (never test sets) by ROBUST_WEIGHT x seen robust + (1 - ROBUST_WEIGHT) x held-out clean "
        "accuracy, hopeless trials pruned half-way. Resumable (SQLite under OUTPUT by default; --storage for a shared "
        "database). Writes OUTPUT/results.{md,json}, OUTPUT/pareto.png and OUTPUT/chosen.json (each method's setting).",
    )
    add_tune_arguments(tune)
    tune.set_defaults(run=run_tune)


def add_miniworld_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `experiment miniworld`: world, methods, seeds, the shared budget, evaluation, processes."""
    p.add_argument(
        "--world",
        choices=tuple(WORLDS),
        default="miniworld",
        help="miniworld: 32-px world, shipped `miniworld` model, eps 4/255; miniworld224: 224-px world (ViT-B/32 "
        "geometry), shipped `miniworld224` model, eps 4/255 (default: %(default)s)",
    )
    p.add_argument("--methods", nargs="*", default=None, help="methods to compare (default: every registered method)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds per method (default: 0 1 2)")
    p.add_argument("--steps", type=int, default=MINIWORLD_RECIPE.steps, help="optimisation steps per run (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=MINIWORLD_RECIPE.batch_size, help="images per step (default: %(default)s)")
    p.add_argument(
        "--lr", type=float, default=MINIWORLD_RECIPE.lr["sgd"], help="SGD learning rate of every SGD method (default: %(default)s)"
    )
    p.add_argument(
        "--adamw-lr",
        type=float,
        default=MINIWORLD_RECIPE.lr["adamw"],
        help="learning rate of the methods whose recipe optimiser is AdamW (FARE) (default: %(default)s)",
    )
    p.add_argument(
        "--eps",
        type=float,
        default=None,
        help=budget_help(
            "training and evaluation L-inf radius",
            "the world's reference: 4 (4/255) in both worlds; the papers' 1 with --eps 1",
        ),
    )
    p.add_argument("--eval-limit", type=int, default=256, help="images per evaluation data set (default: %(default)s)")
    p.add_argument("--eval-steps", type=int, default=10, help="PGD iterations of the evaluation attack (default: %(default)s)")
    p.add_argument(
        "--output", type=Path, default=None, help="output folder; finished runs in it are reused (default: runs/experiment-<world>)"
    )
    p.add_argument(
        "--settings",
        choices=("shared", "tuned"),
        default="shared",
        help="shared: every method at --lr/--adamw-lr and its papers' loss weights; tuned: each method at the lr and "
        "loss weights its tuning study chose (datasets/miniworld_tuned.json; --lr ignored) (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's own)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="fine-tuning runs at once, each in its own process (with --jobs > 1, --threads defaults to the cores "
        "divided by the jobs; results do not depend on it) (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from clipshield.attacks.budget import as_255
    from clipshield.experiments.miniworld import run_experiment
    from clipshield.training.methods import list_methods

    eps = experiment_eps(args)  # refuse a bad budget before any work
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or list_methods()
    print(
        f"experiment: base + {len(methods)} method(s) x {len(args.seeds)} seed(s), {args.steps} steps of batch {args.batch_size}, "
        f"eps {as_255(eps)}, PGD-{args.eval_steps} on {args.eval_limit} images of {len(eval_sets(args.world))} {args.world} sets; "
        f"finished runs in {output_dir(args)} are reused",
        flush=True,
    )
    _table, text = run_experiment(args, methods, say=lambda line: print(line, flush=True))
    print(text)
    print(f"written: {output_dir(args)}/results.{{md,json,png}}")
    return 0


TUNED_METHODS = ("tga-zsr", "tga-anchor", "tecoa", "fare", "pmg-aft")  # the default line-up of `experiment tune`


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `experiment tune`: what is trained and validated on, the methods, the equal budget, the study."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--world", choices=tuple(WORLDS), default=None, help="tune on a mini world (default: miniworld)")
    where.add_argument(
        "--data",
        default=None,
        help="training set instead of a world, e.g. folder/<dir> (needs <dir>/val/<class>/...) (default: the world's training set)",
    )
    p.add_argument("--data-root", type=Path, default=None, help="root folder of --data (folder/<dir> is read under it) (default: none)")
    p.add_argument("--model", default=None, help="model to fine-tune (default: the data set's recipe model)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or weights file of --model, e.g. openai (default: none)")
    p.add_argument("--methods", nargs="+", default=list(TUNED_METHODS), help="methods to tune (default: %(default)s)")
    p.add_argument("--trials", type=int, default=8, help="trials per method, pruned ones included (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per trial (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the recipe's)")
    p.add_argument("--attack-steps", type=int, default=None, help="PGD steps of the training attack (default: the recipe's)")
    p.add_argument("--eps", type=float, default=None, help=budget_help("training and validation L-inf radius", "the data set's reference"))
    p.add_argument("--val-limit", type=int, default=128, help="validation images per data set (default: %(default)s)")
    p.add_argument("--eval-steps", type=int, default=3, help="PGD steps of the validation attack (default: %(default)s)")
    p.add_argument(
        "--robust-weight",
        type=float,
        default=0.5,
        help="objective = W x seen robust + (1 - W) x held-out clean accuracy (default: %(default)s)",
    )
    p.add_argument(
        "--seen-sets", nargs="+", default=None, help="validation sets of the seen robust term (default: the world's plain set, or --data)"
    )
    p.add_argument(
        "--heldout-sets",
        nargs="+",
        default=None,
        help="validation sets of the held-out clean term (default: the world's other domains, else the seen sets)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed of every trial and the sampler's seed (default: %(default)s)")
    p.add_argument("--output", type=Path, default=None, help="output folder (default: runs/tune-<world or data>)")
    p.add_argument("--storage", default=None, help="Optuna database URL shared by workers (default: sqlite:///OUTPUT/study.db)")
    p.add_argument("--jobs", type=int, default=1, help="trials at once in this process (Optuna threads) (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's own)")
    p.add_argument(
        "--warm-start",
        type=Path,
        default=None,
        help="another study's chosen.json (or its output folder): each method's chosen lr and loss weights become one "
        "of its --trials here (default: none)",
    )
    p.add_argument(
        "--record-recipe",
        action="store_true",
        help="write each method's chosen setting into the mini world's recipe (datasets/miniworld_tuned.json)",
    )


def tune_config(args: argparse.Namespace):
    """The TuneConfig of an `experiment tune` command line (one-line errors naming the flag)."""
    from clipshield.experiments.tuning import TuneConfig
    from clipshield.service.config import flag_config

    data = args.data or f"{args.world or 'miniworld'}-train"
    slug = (args.world or args.data or "miniworld").replace("/", "-")
    values = {k: getattr(args, k) for k in ("data_root", "model", "pretrained", "methods", "trials", "steps", "batch_size", "attack_steps")}
    values |= {
        k: getattr(args, k) for k in ("val_limit", "eval_steps", "robust_weight", "seed", "storage", "jobs", "threads", "warm_start")
    }
    return flag_config(
        TuneConfig,
        {"val_limit": "--val-limit", "robust_weight": "--robust-weight"},
        data=data,
        eps=to_pixels(args.eps, "--eps"),
        seen_sets=tuple(args.seen_sets or ()),
        heldout_sets=tuple(args.heldout_sets or ()),
        output=args.output or Path(f"runs/tune-{slug}"),
        **values,
    )


def run_tune(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from clipshield.experiments.tuning import run_tuning
    from clipshield.experiments.tuning.report import record_recipe, write_report

    cfg = tune_config(args).checked()
    if args.record_recipe and cfg.world() is None:
        raise ConfigError("--record-recipe writes a mini world's recipe; it needs --world, not --data")
    print(f"tune: {len(cfg.methods)} method(s) x {cfg.trials} trials on {cfg.data}, study database {cfg.storage_url()}", flush=True)
    start = time.perf_counter()
    with tqdm(total=len(cfg.methods) * cfg.trials, unit="trial") as bar:

        def on_trial(method: str, trial) -> None:
            bar.set_postfix_str(f"{method} #{trial.number} {trial.state.name.lower()} {trial.value or 0:.1f}")
            bar.update(1 if trial.state.name in ("COMPLETE", "PRUNED") else 0)

        studies = run_tuning(cfg, on_trial)
    print(write_report(cfg, studies))
    print(f"tune: {time.perf_counter() - start:.0f} s; written: {cfg.output}/results.{{md,json}}, pareto.png, chosen.json")
    if args.record_recipe:
        import json

        from clipshield.datasets.miniworld_sets import TUNED_FILE

        record_recipe(cfg.world() or "", json.loads((cfg.output / "chosen.json").read_text()), TUNED_FILE)
        print(f"tune: chosen settings recorded in {TUNED_FILE}")
    return 0
