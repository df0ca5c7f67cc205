"""`clipshield demo`: the offline main job on the mini world, end to end."""
from __future__ import annotations

import argparse

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the offline demo on the mini world",
        description="Load the shipped mini-world CLIP, classify a few mini-world images zero-shot, "
        "and print clean accuracy on every mini-world data set plus PGD robust accuracy on one. "
        "Needs no network and no GPU.",
    )
    p.add_argument("--once", action="store_true", help="exit when done (for scripts and CI)")
    p.add_argument("--n", type=int, default=256, help="images per data set (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.models import load_model
    from service.zero_shot import ZeroShotClassifier, build_text_head
    from training.attacks.pgd import PGD
    from training.data.miniworld import standard_eval_names
    from training.data.registry import DatasetRequest, build_dataset
    from training.eval.zeroshot import accuracy, batches

    torch.set_num_threads(args.threads)
    model = load_model("miniworld")
    print(f"model: {model.record.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)")

    sample = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=6))
    clf = ZeroShotClassifier(model, build_text_head(model, sample.classnames, sample.templates))
    with torch.no_grad():
        probs = clf(sample.images()).softmax(-1)
    print("\nzero-shot predictions (plain domain, 64 colour+shape labels):")
    for i, label in enumerate(sample.labels):
        top = int(probs[i].argmax())
        print(f"  true: {sample.classnames[label]:18s} predicted: {sample.classnames[top]:18s} p={float(probs[i, top]):.2f}")

    print(f"\nclean zero-shot top-1 on {args.n} images per data set:")
    for name in standard_eval_names() + ["miniworld/noisy/color_shape/heldout_image", "miniworld/outlined/color_shape/heldout_caption"]:
        ds = build_dataset(name, DatasetRequest(limit=args.n))
        clf = ZeroShotClassifier(model, build_text_head(model, ds.classnames, ds.templates))
        acc, n = accuracy(clf, batches(ds.images(), torch.tensor(ds.labels), 256))
        print(f"  {name:48s} {100 * acc:5.1f} %  (n={n}, chance {100 / len(ds.classnames):.1f} %)")

    ds = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=args.n))
    clf = ZeroShotClassifier(model, build_text_head(model, ds.classnames, ds.templates))
    attack = PGD(clf, eps=4 / 255, steps=10, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor(ds.labels)
    clean, _ = accuracy(clf, batches(ds.images(), labels, 256))
    robust, _ = accuracy(clf, batches(ds.images(), labels, 256), attack=attack)
    print(f"\nPGD-10 at eps=4/255 on plain/color_shape/seen: clean {100 * clean:.1f} % -> robust {100 * robust:.1f} %")
    print("the base model is not robust: fine-tuning (clipshield finetune) is what fixes that.")
    return 0
