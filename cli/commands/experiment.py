"""`clipshield experiment miniworld`: the base model and every fine-tuning method, same budget, several seeds.

`--world miniworld224` runs it on the 224-pixel world (ViT-B/32 geometry, eps 4/255) instead of the 32-pixel one.

Every method gets the same steps, batch size, training epsilon and data, and its recipe's optimiser
(SGD momentum 0.9; AdamW for FARE) at one learning rate per optimiser family, the mini-world
defaults of `clipshield finetune` (no per-method tuning); the comparison table (clean and PGD accuracy on seen, held-out combinations and held-out
domains, mean +- std over seeds) is written as Markdown, JSON and a PNG plot. Finished runs are
skipped, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipshield.attacks.budget import as_255, budget_help, to_pixels
from clipshield.datasets.miniworld.worlds import WORLDS
from clipshield.datasets.miniworld_sets import MINIWORLD_RECIPE
from clipshield.service.config import flag_config
from clipshield.service.errors import ConfigError

log = logging.getLogger(__name__)


if TYPE_CHECKING:
    from clipshield.training.finetune_config import FinetuneConfig


def eval_groups(world: str = "miniworld") -> dict[str, tuple[str, ...]]:
    """The experiment's data sets of one world: seen, held-out combinations, held-out domains."""
    return {
        "seen": (f"{world}/plain/color_shape/seen",),
        "heldout_combos": tuple(f"{world}/plain/color_shape/{sp}" for sp in ("heldout_image", "heldout_caption")),
        "heldout_domains": tuple(f"{world}/{d}/color_shape/seen" for d in ("noisy", "textured", "outlined")),
    }


def eval_sets(world: str = "miniworld") -> tuple[str, ...]:
    return tuple(name for names in eval_groups(world).values() for name in names)


(SEEN,) = eval_groups()["seen"]
HELDOUT_COMBOS, HELDOUT_DOMAINS = eval_groups()["heldout_combos"], eval_groups()["heldout_domains"]
EVAL_SETS = eval_sets()


def register(sub: argparse._SubParsersAction) -> None:
    from clipshield.experiments import paper_run

    top = sub.add_parser(
        "experiment",
        help="compare methods: the mini-world comparison, or a published paper table",
        description="Experiments: `experiment miniworld` compares every method on the mini world; `experiment paper` "
        "reproduces a published TGA-ZSR table (fine-tune, evaluate 16 data sets, compare; --dry-run for the plan).",
    )
    suites = top.add_subparsers(dest="suite", required=True, metavar="{miniworld,paper}")
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
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's own)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="fine-tuning runs at once, each in its own process (with --jobs > 1, --threads defaults to the cores "
        "divided by the jobs; results do not depend on it) (default: %(default)s)",
    )


def experiment_config(args: argparse.Namespace, method: str, seed: int) -> FinetuneConfig:
    """The FinetuneConfig of one run: the mini world's recipe with the shared budget given on the command line,
    the method's recipe optimiser at its family's lr."""
    from clipshield.training.finetune_config import recipe_config
    from clipshield.training.methods import get_method

    lr = args.lr if get_method(method).optimizer == "sgd" else args.adamw_lr
    return recipe_config(
        f"{args.world}-train",
        method=method,
        output=output_dir(args) / method / f"seed{seed}",
        steps=args.steps,
        batch_size=args.batch_size,
        lr=lr,
        eps=to_pixels(args.eps, "--eps"),
        seed=seed,
        checkpoint_every=max(1, args.steps // 4),
        resume=True,
        threads=args.threads,
        eval_datasets=list(eval_sets(args.world)),
        eval_limit=args.eval_limit,
        eval_steps=args.eval_steps,
        data_limit=max(args.steps * args.batch_size // 2, 512),
    )


def run_method(args: argparse.Namespace, method: str, seed: int) -> dict[str, Any]:
    """Results {data set: {clean, robust, n}} of one fine-tuning run (read back when already finished)."""
    from clipshield.service.card import ModelCard
    from clipshield.training.finetune import finetune
    from clipshield.training.model_card import read_finetune_card, results_by_dataset

    cfg = experiment_config(args, method, seed)
    card = read_finetune_card(cfg.run.output / "final")
    return results_by_dataset(card or ModelCard.model_validate(finetune(cfg)[1]))


def run_all(args: argparse.Namespace, runs: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    """`run_method` for every (method, seed): in this process, or in `args.jobs` spawned processes of
    `args.threads` torch threads each (default: the cores shared out). Each run writes only its own folder and is
    a function of its settings alone, so the results do not depend on the number of jobs."""
    if args.jobs <= 1:
        out = {}
        for method, seed in runs:
            print(f"experiment: {method} seed {seed}", flush=True)
            out[(method, seed)] = run_method(args, method, seed)
        return out
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if args.threads is None:  # a copy: the caller's arguments stay as given
        args = argparse.Namespace(**{**vars(args), "threads": max(1, (os.cpu_count() or 1) // args.jobs)})
    print(f"experiment: {len(runs)} runs in {args.jobs} processes of {args.threads} thread(s)", flush=True)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_method, args, method, seed): (method, seed) for method, seed in runs}
        done = {}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            print(f"experiment: {' seed '.join(map(str, futures[future]))} done ({len(done)}/{len(runs)})", flush=True)
    return done


def run_base(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Results of the un-fine-tuned model, through the same evaluation harness."""
    from clipshield.evaluation.runner import EvalConfig, Evaluator
    from clipshield.models.factory import load_model

    model = load_model(args.world)
    ecfg = flag_config(
        EvalConfig,
        model_id=f"{args.world}-base",
        datasets=list(eval_sets(args.world)),
        attacks=["pgd"],
        eps=experiment_eps(args),
        steps=args.eval_steps,
        seed=seed,
        limit=args.eval_limit,
        image_size=model.record.preprocess.image_size,
        out_dir=output_dir(args) / "base" / "eval",
    )
    return {r.key.dataset: {"clean": r.clean, "robust": r.robust, "n": r.n} for r in Evaluator(model, ecfg).run()}


def experiment_eps(args: argparse.Namespace) -> float:
    """--eps in pixel units, or the world's reference budget (the registry entry's) when unset."""
    if args.eps is not None:
        return to_pixels(args.eps, "--eps")
    from clipshield.datasets import reference_eps

    return reference_eps(f"{args.world}-train")


def output_dir(args: argparse.Namespace) -> Path:
    return args.output if args.output is not None else Path(f"runs/experiment-{args.world}")


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(per_seed: dict[str, list[dict]], world: str = "miniworld") -> dict[str, dict[str, dict[str, float]]]:
    """method -> column -> {mean, std} (accuracies in %), columns per data set and group averages."""
    groups = eval_groups(world)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method, runs in per_seed.items():
        cols: dict[str, list[float]] = {}
        for res in runs:
            for metric in ("clean", "robust"):
                for name in eval_sets(world):
                    cols.setdefault(f"{name.split('/', 1)[1]} {metric}", []).append(100 * (res[name][metric] or 0.0))
                for group, names in groups.items():
                    cols.setdefault(f"{group} {metric}", []).append(100 * statistics.fmean(res[n][metric] or 0.0 for n in names))
        table[method] = {k: _mean_std(v) for k, v in cols.items()}
    return table


def markdown(table: dict, args: argparse.Namespace) -> str:
    cols = [f"{g} {m}" for g in ("seen", "heldout_combos", "heldout_domains") for m in ("clean", "robust")]
    cols += [f"{n.split('/', 1)[1]} {m}" for n in eval_groups(args.world)["heldout_domains"] for m in ("clean", "robust")]
    lines = [
        f"Mini-world comparison ({args.world}): {args.steps} steps, batch {args.batch_size}, SGD lr {args.lr} (FARE: AdamW lr {args.adamw_lr}), "
        f"eps {as_255(experiment_eps(args))}, "
        f"PGD-{args.eval_steps} evaluation, {len(args.seeds)} seeds (mean ± std, %).",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[c]['mean']:.1f} ± {row[c]['std']:.1f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, group in zip(axes, ("seen", "heldout_domains")):
        for method, row in table.items():
            c, r = row[f"{group} clean"], row[f"{group} robust"]
            ax.errorbar(c["mean"], r["mean"], xerr=c["std"], yerr=r["std"], fmt="o", capsize=3, label=method)
        ax.set(xlabel="clean accuracy (%)", ylabel="PGD accuracy (%)", title=group.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    from clipshield.training.methods import list_methods

    eps = experiment_eps(args)  # refuse a bad budget before any work
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    out = output_dir(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or list_methods()
    print(
        f"experiment: base + {len(methods)} method(s) x {len(args.seeds)} seed(s), {args.steps} steps of batch {args.batch_size}, "
        f"eps {as_255(eps)}, PGD-{args.eval_steps} on {args.eval_limit} images of {len(eval_sets(args.world))} {args.world} sets; "
        f"finished runs in {out} are reused",
        flush=True,
    )
    per_seed: dict[str, list[dict]] = {"base": [run_base(args, s) for s in args.seeds]}
    results = run_all(args, [(m, seed) for m in methods for seed in args.seeds])
    per_seed |= {m: [results[(m, seed)] for seed in args.seeds] for m in methods}
    table = summarise(per_seed, args.world)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(
            {
                "table": table,
                "runs": per_seed,
                "settings": {
                    "world": args.world,
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "lr": args.lr,
                    "adamw_lr": args.adamw_lr,
                    "eps": eps,
                    "seeds": args.seeds,
                    "eval_limit": args.eval_limit,
                    "eval_steps": args.eval_steps,
                },
            },
            indent=2,
        )
    )
    text = markdown(table, args)
    (out / "results.md").write_text(text)
    plot(table, out / "results.png")
    print(text)
    print(f"written: {out}/results.{{md,json,png}}")
    return 0
