"""The mini-world comparison behind `clipshield experiment miniworld`: every method, one budget, several seeds.

Every method gets the same steps, batch size, training epsilon and data, and its recipe's optimiser
(SGD momentum 0.9; AdamW for FARE): under `settings="shared"` at one learning rate per optimiser
family and the papers' loss weights (no per-method tuning), under `settings="tuned"` at the learning
rate and loss weights a tuning study chose for it (`clipshield.datasets.miniworld_sets.TUNED_FILE`).
The comparison table (clean and PGD accuracy on seen, held-out combinations and held-out domains,
mean +- std over seeds) is written as Markdown, JSON and a PNG plot. Finished runs are read back (refused when
trained with other settings than asked, e.g. after a recipe changed), so an
interrupted experiment continues where it stopped. `args` is the parsed `experiment miniworld` command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipshield.attacks.budget import as_255, to_pixels
from clipshield.service.config import flag_config

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


def experiment_config(args: argparse.Namespace, method: str, seed: int) -> FinetuneConfig:
    """The FinetuneConfig of one run: the mini world's recipe with the shared budget given on the command line,
    the method's recipe optimiser at its family's lr (`settings` shared) or at its tuned lr and loss weights (tuned)."""
    from clipshield.training.finetune_config import recipe_config
    from clipshield.training.methods import get_method

    tuned = getattr(args, "settings", "shared") == "tuned"
    lr = None if tuned else args.lr if get_method(method).optimizer == "sgd" else args.adamw_lr
    return recipe_config(
        f"{args.world}-train",
        tuned=tuned,
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
    if card is not None and card.training is not None:
        check_finished_run(card.training.hyperparameters, cfg)
    return results_by_dataset(card or ModelCard.model_validate(finetune(cfg)[1]))


def check_finished_run(saved: dict[str, Any], cfg: FinetuneConfig) -> None:
    """Refuse to read back a finished run trained with other settings than `cfg` (a recipe changed since).

    `saved` is the run's model-card hyperparameters (resolved: every method option filled in); only the
    settings `cfg` states are compared, and those a resume may change (device, evaluation, paths) are not.
    """
    from clipshield.service.errors import ConfigError
    from clipshield.training.finetune_config import RESUME_MAY_CHANGE

    diff: list[str] = []
    for key, value in cfg.flat().items():
        if key in RESUME_MAY_CHANGE or value is None or key not in saved:
            continue
        if key == "method_params":
            diff += [f"method_params.{k}" for k, v in value.items() if saved[key].get(k) != v]
        elif saved[key] != value:
            diff.append(key)
    if diff:
        raise ConfigError(
            f"finished run {cfg.run.output} was trained with other settings ({', '.join(diff)}); delete it or give another --output"
        )


def run_all(
    args: argparse.Namespace, runs: list[tuple[str, int]], say: Callable[[str], None] = log.info
) -> dict[tuple[str, int], dict[str, Any]]:
    """`run_method` for every (method, seed): in this process, or in `args.jobs` spawned processes of
    `args.threads` torch threads each (default: the cores shared out). Each run writes only its own folder and is
    a function of its settings alone, so the results do not depend on the number of jobs."""
    if args.jobs <= 1:
        out = {}
        for method, seed in runs:
            say(f"experiment: {method} seed {seed}")
            out[(method, seed)] = run_method(args, method, seed)
        return out
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if args.threads is None:  # a copy: the caller's arguments stay as given
        args = argparse.Namespace(**{**vars(args), "threads": max(1, (os.cpu_count() or 1) // args.jobs)})
    say(f"experiment: {len(runs)} runs in {args.jobs} processes of {args.threads} thread(s)")
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_method, args, method, seed): (method, seed) for method, seed in runs}
        done = {}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            say(f"experiment: {' seed '.join(map(str, futures[future]))} done ({len(done)}/{len(runs)})")
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
        f"Mini-world comparison ({args.world}): {args.steps} steps, batch {args.batch_size}, {settings_text(args)}, "
        f"eps {as_255(experiment_eps(args))}, "
        f"PGD-{args.eval_steps} evaluation, {len(args.seeds)} seeds (mean ± std, %).",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[c]['mean']:.1f} ± {row[c]['std']:.1f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def settings_text(args: argparse.Namespace) -> str:
    """How the methods' learning rates and loss weights were set, for the table's heading."""
    if getattr(args, "settings", "shared") == "tuned":
        return "each method at its tuned lr and loss weights (datasets/miniworld_tuned.json)"
    return f"SGD lr {args.lr} (FARE: AdamW lr {args.adamw_lr})"


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


def run_experiment(args: argparse.Namespace, methods: list[str], say: Callable[[str], None] = log.info) -> tuple[dict, str]:
    """Base + every (method, seed) run, summarised; writes OUTPUT/results.{json,md,png}; returns (table, Markdown)."""
    eps = experiment_eps(args)
    out = output_dir(args)
    per_seed: dict[str, list[dict]] = {"base": [run_base(args, s) for s in args.seeds]}
    results = run_all(args, [(m, seed) for m in methods for seed in args.seeds], say)
    per_seed |= {m: [results[(m, seed)] for seed in args.seeds] for m in methods}
    table = summarise(per_seed, args.world)
    out.mkdir(parents=True, exist_ok=True)
    keys = ("world", "steps", "batch_size", "lr", "adamw_lr", "seeds", "eval_limit", "eval_steps")
    settings = {k: getattr(args, k) for k in keys} | {"eps": eps, "settings": getattr(args, "settings", "shared")}
    (out / "results.json").write_text(json.dumps({"table": table, "runs": per_seed, "settings": settings}, indent=2))
    text = markdown(table, args)
    (out / "results.md").write_text(text)
    plot(table, out / "results.png")
    return table, text
