"""`clipshield demo`: the offline main job on the mini world, end to end.

shipped mini-world CLIP -> zero-shot classification -> brief robust fine-tuning (TGA-ZSR) ->
clean/robust accuracy before and after -> ONNX export -> TorchServe archive -> TorchServe ->
classify clean and attacked images with and without purification over HTTP -> metrics.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

BASE_VERSION = "1.0"  # the version export_model gives the shipped model
DEMO_EVAL = ("miniworld/plain/color_shape/seen", "miniworld/outlined/color_shape/seen")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the offline demo on the mini world, from model to HTTP",
        description="The main job, offline and on CPU: load the shipped mini-world CLIP, classify mini-world images "
        "zero-shot, fine-tune it briefly with TGA-ZSR, compare clean and PGD robust accuracy before and after, "
        "export to ONNX, build a TorchServe archive, start TorchServe, classify clean and attacked images with and "
        "without CLIPure purification over HTTP and print the clipshield_ metrics. Without --once the server keeps "
        "running afterwards (stop it with `clipshield serve --stop`).",
    )
    p.add_argument("--once", action="store_true", help="stop TorchServe and exit when done (scripts, CI)")
    p.add_argument("--n", type=int, default=256, help="images per evaluation data set (default: %(default)s)")
    p.add_argument("--method", default="tga-zsr", help="fine-tuning method (default: %(default)s)")
    p.add_argument("--finetune-steps", type=int, default=150, help="fine-tuning steps (default: %(default)s; 0 skips)")
    p.add_argument("--no-serve", action="store_true", help="stop after fine-tuning and evaluation (no export/serving)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/demo"), help="where runs and exports go (default: %(default)s)")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="TorchServe model store (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(run=run)


def _task(model, name: str, n: int):
    """(data set, zero-shot classifier, labels) for a registered data set: the one path every demo step uses."""
    from service.zero_shot import ZeroShotClassifier, build_text_head
    from training.data.registry import DatasetRequest, build_dataset

    ds = build_dataset(name, DatasetRequest(limit=n, preprocess=model.record.preprocess))
    clf = ZeroShotClassifier(model, build_text_head(model, ds.classnames, ds.templates))
    return ds, clf, torch.tensor(ds.labels)


def _accuracies(model, names, n: int, eps: float) -> dict[str, tuple[float, float]]:
    """Clean and PGD-10 top-1 per data set."""
    from training.attacks.pgd import PGD
    from training.eval.zeroshot import accuracy, batches

    out = {}
    for name in names:
        ds, clf, labels = _task(model, name, n)
        clean, _ = accuracy(clf, batches(ds.images(), labels, 256))
        attack = PGD(clf, eps=eps, steps=10, generator=torch.Generator().manual_seed(0))
        robust, _ = accuracy(clf, batches(ds.images(), labels, 256), attack=attack)
        out[name] = (clean, robust)
    return out


def _show_predictions(model) -> None:
    ds, clf, labels = _task(model, "miniworld/plain/color_shape/seen", 6)
    with torch.no_grad():
        probs = clf(ds.images()).softmax(-1)
    print("\nzero-shot predictions (plain domain, 64 colour+shape labels):")
    for i, label in enumerate(labels.tolist()):
        top = int(probs[i].argmax())
        print(f"  true: {ds.classnames[label]:18s} predicted: {ds.classnames[top]:18s} p={float(probs[i, top]):.2f}")


def _clean_suite(model, n: int) -> None:
    from training.data.miniworld import standard_eval_names
    from training.eval.zeroshot import accuracy, batches

    print(f"\nclean zero-shot top-1 of the base model, {n} images per data set:")
    for name in standard_eval_names():
        ds, clf, labels = _task(model, name, n)
        acc, count = accuracy(clf, batches(ds.images(), labels, 256))
        print(f"  {name:48s} {100 * acc:5.1f} %  (n={count}, chance {100 / len(ds.classnames):.1f} %)")


def run(args: argparse.Namespace) -> int:
    from service.bundle import AccuracyEntry
    from service.models import load_model

    torch.set_num_threads(args.threads)
    eps = 4 / 255
    base = load_model("miniworld")
    print(f"model: {base.record.name} ({sum(p.numel() for p in base.parameters()) / 1e6:.2f} M parameters), shipped")
    _show_predictions(base)
    _clean_suite(base, args.n)

    model = base
    before = _accuracies(base, DEMO_EVAL, args.n, eps)
    if args.finetune_steps > 0:
        from training.finetune import FinetuneConfig, finetune

        print(f"\nfine-tuning with {args.method} for {args.finetune_steps} steps (batch 32, SGD lr 0.005, PGD-2 at eps=4/255) ...")
        cfg = FinetuneConfig(
            method=args.method, output=args.work_dir / "finetune", steps=args.finetune_steps, eps=eps, warmup=None,
            batch_size=32, lr=0.005, eval_datasets=[], threads=args.threads,  # the mini-world budget of docs/finetuning.md
        )
        model, _ = finetune(cfg)
    after = _accuracies(model, DEMO_EVAL, args.n, eps)
    print(f"\nclean / PGD-10 robust top-1 at eps=4/255 ({args.n} images each):")
    print(f"  {'data set':42s} {'base':>15s} {'fine-tuned':>15s}")
    for name in DEMO_EVAL:
        (c0, r0), (c1, r1) = before[name], after[name]
        print(f"  {name:42s} {100 * c0:5.1f} / {100 * r0:5.1f}   {100 * c1:5.1f} / {100 * r1:5.1f}")
    if args.no_serve:
        return 0

    from training.export.demo_serving import serving_demo

    accuracy = tuple(
        AccuracyEntry(dataset=name, attack=kind, purified=False, value=value, n=args.n)
        for name, (clean, robust) in after.items()
        for kind, value in (("clean", clean), ("pgd10-eps4", robust))
    )
    version = _name_served(model, base, args.method, args.finetune_steps)
    print("\nserving the fine-tuned model:")
    serving_demo(model, args.work_dir, args.model_store, out=print, n_images=4, eps=eps, once=args.once, accuracy=accuracy,
                 version=version)
    return 0


def _name_served(model, base, method: str, steps: int) -> str:
    """Rename a fine-tuned model apart from the base model and return its served version (answers carry both).

    The fine-tuned model becomes `<base name>+<method>` (as its checkpoint is named) at version
    `ft<steps>-<weights digest>`, so two demo runs with different weights never share a version.
    """
    from service.provenance import weights_digest

    if model is base:
        return BASE_VERSION
    model.record = model.record.model_copy(update={"name": f"{base.record.name}+{method}"})
    return f"ft{steps}-{weights_digest(model)[:8]}"
