"""`clipshield finetune`: robust fine-tuning of a CLIP image tower (TGA-ZSR, Comp-TGA and baselines)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from clipshield.attacks.budget import as_255, budget_help, to_pixels
from clipshield.cli.commands.common import progress
from clipshield.service.errors import ConfigError
from clipshield.service.preprocess import PRESETS

if TYPE_CHECKING:
    from clipshield.training.finetune_config import FinetuneConfig


def _method_names() -> list[str]:
    from clipshield.training.methods import list_methods

    return list_methods()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="robust fine-tuning (TGA-ZSR, Comp-TGA, TeCoA, PMG-AFT, FARE, FT-Clean, FT-Adv)",
        description="Fine-tune the image tower of a CLIP model with a robust method (text tower frozen), then "
        "evaluate zero-shot clean and PGD accuracy and write a model card. Unset options take the training "
        "set's registered recipe, then the method's reference defaults (docs/finetuning.md); on the mini world "
        "(--data miniworld-train, the default) "
        "eps defaults to 4/255 and the run is short enough for a laptop CPU. Budgets (--eps, --attack-alpha, "
        "--eval-eps) are in units of 1/255: --eps 4 means 4/255.",
    )
    p.add_argument("--method", required=True, choices=_method_names(), help="fine-tuning method (required)")
    _add_model_args(p)
    _add_data_args(p)
    _add_optim_args(p)
    _add_run_args(p)
    _add_eval_args(p)
    p.set_defaults(run=run)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The base model to fine-tune."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="'miniworld', 'miniworld224', a checkpoint folder, a config JSON, or an open_clip name (with --pretrained) "
        "(default: the shipped model of the --data world, e.g. miniworld224 for miniworld224-train; else miniworld)",
    )
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai) or a local weights file (default: none)")
    g.add_argument("--weights", default=None, help="state dict for a config-JSON model (default: none)")
    g.add_argument("--cache-dir", default=None, help="where open_clip keeps downloaded weights (default: open_clip's own)")
    g.add_argument("--offline", action="store_true", help="never download weights")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Training set, its preprocessing and prompt."""
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        default="miniworld-train",
        help="training set: miniworld-train, miniworld224-train (224-px world, eps 4/255), tinyimagenet, imagenet, "
        "folder/<dir> (any class-folder tree under "
        "--data-root), ... (default: %(default)s)",
    )
    d.add_argument("--data-root", type=Path, default=None, help="folder holding real data sets (never downloaded; default: none)")
    d.add_argument("--data-limit", type=int, default=None, help="use at most this many training images (default: all; mini world: 3200)")
    d.add_argument("--image-size", type=int, default=None, help="loader resolution (default: the model's own input size)")
    d.add_argument(
        "--preprocess",
        choices=list(PRESETS),
        default="model",
        help="image preprocessing: model = the model record's own, what serving does; paper = Resize(S*256/224)+"
        "CenterCrop(S) bilinear (TGA-ZSR/PMG-AFT; CIFAR/STL squashed); squash = resize to SxS (default: %(default)s)",
    )
    d.add_argument("--template", default=None, help="training prompt (default: the data set's, e.g. 'This is a photo of a {}')")


def _add_optim_args(p: argparse.ArgumentParser) -> None:
    """Optimiser, schedule and training attack (unset: the recipe)."""
    o = p.add_argument_group("optimisation (unset = method recipe default)")
    o.add_argument("--epochs", type=int, default=None, help="training epochs (default 10; mini world: 200 steps instead)")
    o.add_argument(
        "--steps", type=int, default=None, help="total optimisation steps, overrides --epochs (default: epochs x batches; mini world: 200)"
    )
    o.add_argument(
        "--batch-size", type=int, default=None, help="images per step (default: the method's recipe, 128 or 256; mini world: 32)"
    )
    o.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: the recipe's: a study's tuned rate where one was recorded, else SGD 0.005 / AdamW 1e-4)",
    )
    o.add_argument("--optimizer", choices=["sgd", "adamw"], default=None, help="default: the method's (SGD; FARE: AdamW)")
    o.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="linear warm-up steps (default: the recipe's, 1000 on real data, 10%% of the steps on the mini world; a recipe "
        "warm-up longer than half the run becomes 10%% of its steps)",
    )
    o.add_argument(
        "--allow-low-lr",
        action="store_true",
        help="allow a --warmup so long the learning rate never reaches half its peak (refused otherwise)",
    )
    o.add_argument(
        "--eps",
        type=float,
        default=None,
        help=budget_help("training attack L-inf radius", "the data set's reference: 1 (1/255) on real data, 4 (4/255) on the mini world"),
    )
    o.add_argument("--attack-steps", type=int, default=None, help="training attack iterations (default: the method's, 2; FARE: 10)")
    o.add_argument("--attack-alpha", type=float, default=None, help=budget_help("training attack step size", "--eps (FARE: --eps/4)"))
    o.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. alpha=0.08, distance=l2, normalization=model (repeatable; JSON values; default: the method's)",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """Output folder, seed, resume, precision, device."""
    r = p.add_argument_group("run")
    r.add_argument(
        "--output",
        type=Path,
        default=None,
        help="run folder; one holding a run is refused unless --resume or --overwrite "
        "(default: a new runs/finetune/<method>-<data>-<UTC time>)",
    )
    r.add_argument("--overwrite", action="store_true", help="write into an --output that already holds a run, replacing it")
    r.add_argument("--seed", type=int, default=0, help="seed of data order, attack and initialisation (default: %(default)s)")
    r.add_argument(
        "--checkpoint-every", type=int, default=0, help="write resumable state every N steps (default: %(default)s = only at the end)"
    )
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/state")
    r.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="forward passes under autocast: fp32, bf16 (CPU or CUDA) or fp16 (CUDA); the training attack stays float32 (default: %(default)s)",
    )
    r.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (default: %(default)s)")
    r.add_argument("--workers", type=int, default=0, help="data loader worker processes (default: %(default)s)")
    r.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's own)")
    r.add_argument(
        "--frozen-cache-mb",
        type=float,
        default=1024.0,
        help="memory in MB for the frozen model's clean outputs per training image (TGA-ZSR, Comp-TGA, FARE), "
        "so they are computed once, not every epoch (valid because the built-in data sets have no random "
        "augmentation); 0 recomputes every step (default: %(default)s)",
    )


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    """The model card's evaluation: data sets, size and PGD strength."""
    e = p.add_argument_group("evaluation (model card)")
    e.add_argument(
        "--eval-datasets",
        nargs="*",
        default=None,
        help="default: the training set's recipe (mini world: plain seen / held-out, outlined seen); folder/<dir>: its test/ "
        "(or val/) split, or its images when it has no split folders; none on other real data",
    )
    e.add_argument("--eval-limit", type=int, default=512, help="images per evaluation data set (default: %(default)s)")
    e.add_argument("--eval-steps", type=int, default=10, help="PGD iterations of the evaluation attack (default: %(default)s)")
    e.add_argument("--eval-eps", type=float, default=None, help=budget_help("evaluation PGD L-inf radius", "--eps"))


def parse_params(items: list[str]) -> dict:
    """KEY=VALUE pairs; values parsed as JSON when possible (numbers, booleans), else kept as text."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _new_output(method: str, data: str) -> Path:
    """A new run folder (`default_output`); under torchrun every rank must be told the same one."""
    from clipshield.training.finetune_config import default_output

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun give --output: each rank would otherwise name its own new run folder")
    return default_output(method, data)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """FinetuneConfig from parsed arguments; unset flags take the training data set's registry recipe.

    Every flag named as a setting (`--batch-size` -> `batch_size`) passes through as given; the rest are converted here.
    """
    from clipshield.training.finetune_config import FLAT_NAMES, recipe_config

    as_given = {name: getattr(args, name) for name in FLAT_NAMES if hasattr(args, name) and name != "data"}
    converted = {
        "offline": args.offline or None,
        "output": args.output or _new_output(args.method, args.data),
        "eps": to_pixels(args.eps, "--eps"),
        "attack_alpha": to_pixels(args.attack_alpha, "--attack-alpha", allow_zero=False),
        "eval_eps": to_pixels(args.eval_eps, "--eval-eps"),
        "eval_datasets": None if args.eval_datasets is None else list(args.eval_datasets),
        "method_params": parse_params(args.param),
    }
    return recipe_config(args.data, method=args.method, **(as_given | converted))


def run(args: argparse.Namespace) -> int:
    from clipshield.training.finetune import finetune
    from clipshield.training.finetune_config import check_output_free

    cfg = config_from_args(args)
    check_output_free(cfg.run.output, cfg.run.resume, args.overwrite)
    steps, eps, eval_eps = cfg.optim.steps, cfg.attack.eps, cfg.evaluation.eps
    length = f"{steps} steps" if steps else f"{cfg.optim.epochs} epochs"
    print(
        f"finetune: {cfg.method} on {cfg.dataset.name}, {length}, training eps {as_255(eps)}, model card at eval eps "
        f"{as_255(eps if eval_eps is None else eval_eps)}; output {cfg.run.output}",
        flush=True,
    )
    bar = progress(None, f"finetune {cfg.method}", "step")

    def on_step(step: int, stats: dict) -> None:
        if bar.total is None and steps:
            bar.total = steps
        bar.n = step + 1
        terms = {k: f"{v:.3g}" for k, v in stats.items() if k not in ("lr", "images_per_s")}
        bar.set_postfix(**terms, lr=f"{stats['lr']:.1e}", img_s=f"{stats['images_per_s']:.0f}", refresh=False)
        bar.refresh()

    _, card = finetune(cfg, on_step)
    bar.close()
    if not card:  # a non-zero torchrun rank: rank 0 reports
        return 0
    final = cfg.run.output / "final"
    print(f"checkpoint and model card: {final}")
    from clipshield.service.card import ModelCard
    from clipshield.training.model_card import results_by_dataset

    typed = ModelCard.model_validate(card)
    if typed.training is not None:
        t, hyper = typed.training, typed.training.hyperparameters
        print(
            f"  {t.steps} steps of batch {t.batch_size} ({t.images_seen} images seen, {t.epochs:g} epochs); "
            f"lr peak {hyper.get('lr', 0):g} after {hyper.get('warmup', 0)} warm-up steps"
        )
    for name, res in results_by_dataset(typed).items():
        print(f"  {name:48s} clean {100 * res['clean']:5.1f} %  robust {100 * (res['robust'] or 0):5.1f} %  (n={res['n']})")
    for note in typed.notes:
        print(f"  note: {note}")
    return 0
