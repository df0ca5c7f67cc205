"""The `clipshield experiment paper` command: arguments, dry run, and the run itself.

A run fine-tunes each method of the table with the papers' recipe (or loads `--checkpoints
DIR/<method>/final`), evaluates every method on every data set with the table's attack through
the resumable evaluation runner, and writes `table.md` and `table.json` beside the published
numbers. Finished fine-tuning runs and evaluation cells are reused, so a stopped run continues.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clipshield.attacks.budget import budget_help, to_pixels
from clipshield.experiments.paper import (
    EVAL_SIZES,
    PAPER_SECONDS_PER_PASS,
    comparison_markdown,
    format_plan,
    load_tables,
    make_plan,
    table_spec,
)
from clipshield.service.config import flag_config
from clipshield.service.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `clipshield experiment paper`."""
    tables = list(load_tables()["tables"])
    p.add_argument("--table", choices=tables, default="tga-zsr-1", help="published table to reproduce (default: %(default)s)")
    p.add_argument(
        "--data-root", type=Path, default=None, help="parent folder of the data sets' folders, see docs/datasets.md (default: none)"
    )
    p.add_argument("--model", default="ViT-B-32", help="base model (default: %(default)s)")
    p.add_argument(
        "--pretrained",
        default=None,
        help="pretrained tag or weights file of --model, e.g. openai (default: none: random weights, enough for --dry-run)",
    )
    p.add_argument("--methods", nargs="*", default=None, help="methods to run (default: the table's rows; 'base' = the un-tuned model)")
    p.add_argument("--datasets", nargs="*", default=None, help="data sets to evaluate (default: the table's 16)")
    p.add_argument("--train-data", default="tinyimagenet", help="fine-tuning data set (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default: %(default)s, the papers')")
    p.add_argument(
        "--steps", type=int, default=None, help="fine-tuning steps instead of epochs, for short trial runs (default: none: use --epochs)"
    )
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images, for trial runs (default: all)")
    p.add_argument("--attack-steps", type=int, default=None, help="evaluation attack steps (default: the table's, 100)")
    p.add_argument(
        "--eps", type=float, default=1.0, help=budget_help("evaluation and training L-inf radius", "%(default)s (1/255, the papers')")
    )
    p.add_argument(
        "--preprocess",
        choices=["model", "paper", "squash"],
        default="paper",
        help="image preprocessing preset (default: %(default)s, the papers' Resize(256)+CenterCrop(224); CIFAR/STL squashed)",
    )
    p.add_argument(
        "--stop",
        choices=["early", "final"],
        default="final",
        help="attack stopping: final = every image runs all steps, as the papers' tables; "
        "early = worst case over iterates, faster (default: %(default)s)",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N images of each data set, for trial runs (default: all)"
    )
    p.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="folder with <method>/final checkpoints to evaluate instead of fine-tuning (default: none: fine-tune)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan (cells, images, steps, device-hours, disk) and stop")
    p.add_argument(
        "--measure",
        action="store_true",
        help="with --dry-run: time a forward+backward of --model here instead of using the paper's Table 8 cost",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output", type=Path, default=Path("runs/paper"), help="output folder (default: %(default)s)")


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], list[str], list[str], int]:
    """(table spec, methods, data sets, attack steps) after defaults, checking method names."""
    from clipshield.training.methods import list_methods

    spec = table_spec(args.table)
    methods = args.methods or list(spec["rows"])
    unknown = [m for m in methods if m != "base" and m not in list_methods()]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from base, {', '.join(list_methods())}")
    datasets = args.datasets or list(load_tables()["datasets"])
    return spec, methods, datasets, args.attack_steps or int(spec["steps"])


def dry_run(args: argparse.Namespace) -> int:
    """Print the plan; sizes of data sets outside the 16 are counted by building them (e.g. the mini world)."""
    import torch

    from clipshield.datasets import DatasetRequest, build_dataset
    from clipshield.models.factory import build_clip, load_model

    _spec, methods, datasets, steps = resolve(args)
    sizes = {d: EVAL_SIZES[d] if d in EVAL_SIZES else len(build_dataset(d, DatasetRequest(root=args.data_root))) for d in datasets}
    if args.limit:
        sizes = {d: min(n, args.limit) for d, n in sizes.items()}
    model = _architecture(args.model, args.pretrained, build_clip, load_model)
    params = sum(p.numel() for p in model.parameters())
    cost, source = PAPER_SECONDS_PER_PASS, "TGA-ZSR Table 8: TeCoA 0.65 s per batch of 128 on the authors' GPU"
    if args.measure:
        from clipshield.experiments.paper import measure_seconds_per_pass

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        cost, source = measure_seconds_per_pass(model, device), f"measured here on {device}"
    plan = make_plan(
        args.table, methods, datasets, sizes, to_pixels(args.eps, "--eps"), steps, args.train_data, args.epochs, cost, source, params
    )
    print(format_plan(plan))
    return 0


def _architecture(name: str, pretrained: Any, build_clip: Any, load_model: Any) -> Any:
    """The model for size and timing: loaded when local, else the open_clip architecture with random weights."""
    from clipshield.models.factory import SHIPPED_MODELS
    from clipshield.models.pixel_model import PixelCLIP
    from clipshield.service.config import ModelRecord, PreprocessConfig

    if name in SHIPPED_MODELS or Path(name).exists():
        return load_model(name, pretrained=pretrained)
    record = ModelRecord(name=name, open_clip_name=name, preprocess=PreprocessConfig(image_size=224))
    return PixelCLIP(build_clip(record), record)


def run(args: argparse.Namespace) -> int:
    """Fine-tune (or load) each method, evaluate every data set, write the comparison table."""
    if args.dry_run:
        return dry_run(args)
    _, methods, datasets, steps = resolve(args)
    ours: dict[str, dict[str, float]] = {}
    for method in methods:
        model = _method_model(args, method)
        ours[method] = _evaluate(args, method, model, datasets, steps)
    args.output.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(args.table, ours, datasets)
    (args.output / "table.md").write_text(text)
    (args.output / "table.json").write_text(json.dumps({"table": args.table, "ours": ours, "datasets": datasets}, indent=2))
    print(text)
    print(f"written: {args.output}/table.{{md,json}}")
    return 0


def _method_model(args: argparse.Namespace, method: str) -> Any:
    """The base model, a given checkpoint, or a fresh (resumable) fine-tuning run."""
    from clipshield.models.factory import load_model
    from clipshield.training.finetune import finetune
    from clipshield.training.finetune_config import recipe_config

    if method == "base":
        return load_model(args.model, pretrained=args.pretrained)
    if args.checkpoints is not None:
        return load_model(str(args.checkpoints / method / "final"))
    final = args.output / "finetune" / method / "final"
    if (final / "model.safetensors").is_file():
        return load_model(str(final))
    cfg = recipe_config(  # the training set's registry recipe: the papers' on real data
        args.train_data,
        method=method,
        model=args.model,
        pretrained=args.pretrained,
        data_root=args.data_root,
        epochs=args.epochs,
        steps=args.steps,
        data_limit=args.train_limit,
        eps=to_pixels(args.eps, "--eps"),
        resume=True,
        preprocess=args.preprocess,
        output=args.output / "finetune" / method,
        eval_datasets=[],
        **({"device": args.device} if args.device else {}),
    )
    return finetune(cfg)[0]


def _evaluate(args: argparse.Namespace, method: str, model: Any, datasets: list[str], steps: int) -> dict[str, float]:
    """{data set: accuracy %} of the table's metric (clean or robust) through the evaluation runner."""
    from clipshield.evaluation.runner import EvalConfig, Evaluator

    spec = table_spec(args.table)
    cfg = flag_config(
        EvalConfig,
        model_id=method,
        datasets=datasets,
        attacks=[spec["attack"]],
        eps=to_pixels(args.eps, "--eps"),
        steps=steps,
        alpha=to_pixels(args.eps, "--eps") if spec["attack"] in ("pgd", "cw") else None,
        limit=args.limit,
        data_root=args.data_root,
        preprocess=args.preprocess,
        stop=args.stop,
        out_dir=args.output / "eval" / method,
        **({"device": args.device} if args.device else {}),
    )
    results = Evaluator(model, cfg).run()
    return {r.key.dataset: 100 * (r.clean if spec["metric"] == "clean" else (r.robust or 0.0)) for r in results}
