"""`clipshield finetune`: robust fine-tuning of a CLIP image tower (TGA-ZSR, Comp-TGA and baselines)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import progress

MINIWORLD_BUDGET = {"steps": 200, "batch_size": 32, "data_limit": 3200}
# one learning rate per optimiser family on the mini world (each method keeps its recipe's optimiser:
# SGD, or AdamW for FARE); shared by `clipshield finetune` and `clipshield experiment`
MINIWORLD_LR = {"sgd": 0.005, "adamw": 1e-4}
MINIWORLD_EVAL = ("miniworld/plain/color_shape/seen", "miniworld/plain/color_shape/heldout_image", "miniworld/outlined/color_shape/seen")


def _method_names() -> list[str]:
    from training.methods import list_methods

    return list_methods()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="robust fine-tuning (TGA-ZSR, Comp-TGA, TeCoA, PMG-AFT, FARE, FT-Clean, FT-Adv)",
        description="Fine-tune the image tower of a CLIP model with a robust method (text tower frozen), then "
        "evaluate zero-shot clean and PGD accuracy and write a model card. Defaults follow each method's "
        "reference recipe (docs/finetuning.md); on the mini world (--data miniworld-train, the default) "
        "eps defaults to 4/255 and the run is short enough for a laptop CPU.",
    )
    p.add_argument("--method", required=True, choices=_method_names())
    g = p.add_argument_group("model")
    g.add_argument("--model", default="miniworld", help="'miniworld', a checkpoint folder, a config JSON, or an open_clip name (with --pretrained)")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai) or a local weights file")
    g.add_argument("--weights", default=None, help="state dict for a config-JSON model")
    g.add_argument("--cache-dir", default=None)
    g.add_argument("--offline", action="store_true", help="never download weights")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="miniworld-train", help="training set: miniworld-train (default), tinyimagenet, imagenet, folder/<dir> (any class-folder tree under --data-root), ...")
    d.add_argument("--data-root", type=Path, default=None, help="folder holding real data sets (never downloaded)")
    d.add_argument("--data-limit", type=int, default=None, help="use at most this many training images")
    d.add_argument("--image-size", type=int, default=224, help="loader resolution for real data sets")
    d.add_argument("--template", default=None, help="training prompt (default: the data set's, e.g. 'This is a photo of a {}')")
    o = p.add_argument_group("optimisation (unset = method recipe default)")
    o.add_argument("--epochs", type=int, default=None, help="default 10 (mini world: 200 steps of batch 32, SGD lr 0.005 / AdamW 1e-4)")
    o.add_argument("--steps", type=int, default=None, help="total steps (overrides --epochs)")
    o.add_argument("--batch-size", type=int, default=None)
    o.add_argument("--lr", type=float, default=None)
    o.add_argument("--optimizer", choices=["sgd", "adamw"], default=None, help="default: the method's (SGD; FARE: AdamW)")
    o.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 1000; mini world: 10%% of steps)")
    o.add_argument("--eps", type=float, default=None, help="training L-inf radius in pixels (default 1/255; mini world 4/255)")
    o.add_argument("--attack-steps", type=int, default=None)
    o.add_argument("--attack-alpha", type=float, default=None)
    o.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. alpha=0.08, distance=l2, normalization=model (repeatable; JSON values)")
    r = p.add_argument_group("run")
    r.add_argument("--output", type=Path, default=None, help="run folder (default runs/finetune/<method>)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--checkpoint-every", type=int, default=0, help="write resumable state every N steps (0: only at the end)")
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/state")
    r.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="forward passes under autocast: fp32 (default), bf16 (CPU or CUDA) or fp16 (CUDA); the training attack stays float32")
    r.add_argument("--device", default="cpu")
    r.add_argument("--workers", type=int, default=0)
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--frozen-cache-mb", type=float, default=1024.0,
                   help="memory for the frozen model's clean outputs per training image (TGA-ZSR, Comp-TGA, FARE), "
                   "so they are computed once, not every epoch (valid because the built-in data sets have no random "
                   "augmentation); 0 recomputes every step (default: %(default)s)")
    e = p.add_argument_group("evaluation (model card)")
    e.add_argument("--eval-datasets", nargs="*", default=None, help="default: mini-world plain seen / held-out, outlined seen")
    e.add_argument("--eval-limit", type=int, default=512)
    e.add_argument("--eval-steps", type=int, default=10)
    e.add_argument("--eval-eps", type=float, default=None, help="default: --eps")
    p.set_defaults(run=run)


def parse_params(items: list[str]) -> dict:
    """KEY=VALUE pairs; values parsed as JSON when possible (numbers, booleans), else kept as text."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace):
    """FinetuneConfig from parsed arguments, with the mini-world defaults when training on it."""
    from training.finetune import FinetuneConfig
    from training.methods import get_method

    mini = args.data.startswith("miniworld")
    values = dict(
        method=args.method, model=args.model, pretrained=args.pretrained, weights=args.weights, cache_dir=args.cache_dir,
        offline=args.offline or None, data=args.data, data_root=args.data_root, data_limit=args.data_limit,
        image_size=args.image_size, template=args.template, output=args.output or Path("runs/finetune") / args.method,
        epochs=args.epochs or 10, steps=args.steps, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        eps=args.eps if args.eps is not None else (4 / 255 if mini else 1 / 255), attack_steps=args.attack_steps,
        attack_alpha=args.attack_alpha, method_params=parse_params(args.param), seed=args.seed,
        checkpoint_every=args.checkpoint_every, resume=args.resume, precision=args.precision, device=args.device,
        workers=args.workers, threads=args.threads, frozen_cache_mb=args.frozen_cache_mb, eval_limit=args.eval_limit, eval_steps=args.eval_steps, eval_eps=args.eval_eps,
        eval_datasets=list(args.eval_datasets) if args.eval_datasets is not None else (list(MINIWORLD_EVAL) if mini else []),
    )
    values["warmup"] = args.warmup if args.warmup is not None else (None if mini else 1000)
    if mini:  # the shared mini-world budget of the tests and `clipshield experiment` (docs/finetuning.md)
        for key, value in MINIWORLD_BUDGET.items():
            if values[key] is None and not (key == "steps" and args.epochs):
                values[key] = value
        if values["lr"] is None:
            values["lr"] = MINIWORLD_LR[args.optimizer or get_method(args.method).optimizer]
    return FinetuneConfig(**values)


def run(args: argparse.Namespace) -> int:
    from training.finetune import finetune

    cfg = config_from_args(args)
    bar = progress(None, f"finetune {cfg.method}", "step")

    def on_step(step: int, stats: dict) -> None:
        if bar.total is None and cfg.steps:
            bar.total = cfg.steps
        bar.n = step + 1
        terms = {k: f"{v:.3g}" for k, v in stats.items() if k not in ("lr", "images_per_s")}
        bar.set_postfix(**terms, lr=f"{stats['lr']:.1e}", img_s=f"{stats['images_per_s']:.0f}", refresh=False)
        bar.refresh()

    _, card = finetune(cfg, on_step)
    bar.close()
    if not card:  # a non-zero torchrun rank: rank 0 reports
        return 0
    final = cfg.output / "final"
    print(f"checkpoint and model card: {final}")
    for name, res in card["results"].items():
        print(f"  {name:48s} clean {100 * res['clean']:5.1f} %  robust {100 * (res['robust'] or 0):5.1f} %  (n={res['n']})")
    return 0
