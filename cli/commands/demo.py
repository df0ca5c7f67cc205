"""`clipshield demo`: the offline main job on the mini world, end to end.

shipped mini-world CLIP -> zero-shot classification -> brief robust fine-tuning (the world's flagship
TGA-ZSR-based method, `DEMO_METHODS`, at its tuned recipe setting) ->
clean/robust accuracy before and after -> ONNX export -> TorchServe archive -> TorchServe ->
classify clean and attacked images with and without purification over HTTP -> metrics.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipshield.datasets.miniworld.worlds import WORLDS
from clipshield.export.labels import BASE_VERSION


def demo_eval(world: str = "miniworld") -> tuple[str, str]:
    """The before/after sets of the demo: plain and outlined colour+shape, seen combinations."""
    return (f"{world}/plain/color_shape/seen", f"{world}/outlined/color_shape/seen")


DEMO_STEPS = 10  # PGD steps of every "attacked" number and image in the demo
# the fine-tuning method per world: TGA-ZSR or its anchored hybrid, whichever did better in the tuned
# 3-seed comparison of docs/finetuning.md ("Equal-budget tuning")
DEMO_METHODS = {"miniworld": "tga-anchor", "miniworld224": "tga-anchor"}
# what the fine-tuned model must show on the plain domain against the base (issue 23): robust gain and
# clean drop in points, outlined clean accuracy as a fraction of the base's
GOALS = {"robust_gain": 25.0, "clean_drop": 8.0, "outlined_kept": 0.60}

HELDOUT_NOTE = (
    "  heldout_image colour+shape pairs were never rendered in pre-training: the model must compose a colour and a "
    "shape\n  it only saw apart, so that row scores far lower. heldout_caption pairs were"
    "\n  rendered but never named together; new label combinations are almost as easy as seen ones."
)
OUTLINED_NOTE = (
    "  The fine-tuning data is the plain domain only: adversarial training makes the image encoder lean on coarse, "
    "robust\n  features of those images, so the thin-outline domain it never trained on loses clean accuracy (the "
    "robustness-\n  generalisation trade-off that TGA-ZSR's attention and frozen-model terms limit but do not remove)."
)
SERVING_NOTE = (
    "  flipped: purification (CLIPure-Cos, purify=true) changed the top-1 label of that answer. flagged: the server's hint "
    "that\n  an input may be adversarial: the model card's detector (the attack score) above its threshold (none is\n"
    "  calibrated here, so nothing is flagged). A hint, not a defence: see docs/security.md."
)


def attacked_note(eps: float) -> str:
    """One sentence saying what "attacked" means in the demo's tables."""
    from clipshield.service.card import attack_label

    return (
        f"  attacked = {attack_label('pgd', eps, DEMO_STEPS)}: white-box PGD, {DEMO_STEPS} steps of size eps/4, "
        f"L-inf eps = {eps * 255:g}/255 in [0,1] pixels,\n  crafted against the model in that column (base against "
        "the base model, fine-tuned against the fine-tuned one)."
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the offline demo on the mini world, from model to HTTP",
        description="The main job, offline and on CPU: load the shipped mini-world CLIP, classify mini-world images "
        "zero-shot, fine-tune it with the world's TGA-ZSR-based flagship (TGA-Anchor), compare clean and PGD robust accuracy "
        "before and after, "
        "export to ONNX, build a TorchServe archive, start TorchServe, classify clean and attacked images with and "
        "without CLIPure purification over HTTP and print the clipshield_ metrics. Without --once the server keeps "
        "running afterwards (stop it with `clipshield serve --stop`).",
    )
    p.add_argument(
        "--world",
        choices=tuple(WORLDS),
        default="miniworld",
        help="miniworld: 32-px images, shipped 32-px ViT, eps 4/255 (fast); miniworld224: 224-px world, shipped "
        "ViT-B/32-geometry model, eps 4/255, and real 224-px photos over HTTP too (slower) (default: %(default)s)",
    )
    p.add_argument("--once", action="store_true", help="stop TorchServe and exit when done (scripts, CI)")
    p.add_argument("--n", type=int, default=256, help="images per evaluation data set (default: %(default)s)")
    p.add_argument(
        "--method",
        default=None,
        choices=_method_names(),
        help=f"fine-tuning method (default: the world's flagship, {', '.join(f'{w}: {m}' for w, m in DEMO_METHODS.items())})",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="fine-tuning steps (default: the world's recipe, 200 in both mini worlds; 0 skips)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning run (data order, attack starts) (default: %(default)s)")
    p.add_argument("--no-serve", action="store_true", help="stop after fine-tuning and evaluation (no export/serving)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/demo"), help="where runs and exports go (default: %(default)s)")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="TorchServe model store (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads (default: %(default)s)")
    p.set_defaults(run=run)


def _method_names() -> list[str]:
    from clipshield.training.methods import list_methods

    return list_methods()


def _accuracies(model, names, n: int, eps: float) -> dict[str, tuple[float, float]]:
    """Clean and PGD top-1 (DEMO_STEPS steps) per data set, measured by the evaluation runner."""
    from clipshield.evaluation.measure import AttackRecipe, measure, zero_shot_task

    out = {}
    for name in names:
        ds, clf, labels = zero_shot_task(model, name, n)
        clean, robust, _ = measure(clf, ds.images(), labels, AttackRecipe(eps=eps, steps=DEMO_STEPS))
        out[name] = (clean, robust)
    return out


def _show_predictions(model, world: str) -> None:
    from clipshield.evaluation.measure import zero_shot_task

    ds, clf, labels = zero_shot_task(model, f"{world}/plain/color_shape/seen", 6)
    with torch.no_grad():
        probs = clf(ds.images()).softmax(-1)
    print("\nzero-shot predictions (plain domain, 64 colour+shape labels):")
    for i, label in enumerate(labels.tolist()):
        top = int(probs[i].argmax())
        print(f"  true: {ds.classnames[label]:18s} predicted: {ds.classnames[top]:18s} p={float(probs[i, top]):.2f}")


def _clean_suite(model, n: int, world: str) -> None:
    from clipshield.datasets.miniworld_sets import standard_eval_names
    from clipshield.evaluation.measure import clean_top1, zero_shot_task

    print(f"\nclean zero-shot top-1 of the base model, {n} images per data set:")
    for name in standard_eval_names(world=world):
        ds, clf, labels = zero_shot_task(model, name, n)
        acc, count = clean_top1(clf, ds.images(), labels)
        print(f"  {name:48s} {100 * acc:5.1f} %  (n={count}, chance {100 / len(ds.classnames):.1f} %)")
    print(HELDOUT_NOTE)


def demo_accuracy(after: dict[str, tuple[float, float]], n: int, eps: float, pre) -> tuple:
    """The demo's measured (clean, attacked) accuracies as card entries, labelled like every other card."""
    from clipshield.service.card import CLEAN, AccuracyEntry, attack_label
    from clipshield.training.model_card import preprocessing

    return tuple(
        AccuracyEntry(dataset=name, attack=kind, purified=False, value=value, n=n, preprocessing=preprocessing(pre))
        for name, (clean, robust) in after.items()
        for kind, value in ((CLEAN, clean), (attack_label("pgd", eps, DEMO_STEPS), robust))
    )


def run(args: argparse.Namespace) -> int:
    from clipshield.datasets import finetune_recipe, reference_eps
    from clipshield.models.factory import load_model

    torch.set_num_threads(args.threads)
    world, sets = args.world, demo_eval(args.world)
    if args.method is None or args.finetune_steps is None:  # a copy: the caller's arguments stay as given
        steps = args.finetune_steps if args.finetune_steps is not None else finetune_recipe(f"{world}-train").steps
        args = argparse.Namespace(**{**vars(args), "method": args.method or DEMO_METHODS[world], "finetune_steps": steps})
    eps = reference_eps(f"{world}-train")  # 4/255 in both worlds (clipshield.datasets.miniworld.worlds says why)
    base = load_model(world)
    print(f"model: {base.record.name} ({sum(p.numel() for p in base.parameters()) / 1e6:.2f} M parameters), shipped")
    _show_predictions(base, world)
    _clean_suite(base, args.n, world)

    model, card = base, None
    before = _accuracies(base, sets, args.n, eps)
    finetuned = args.finetune_steps != 0
    if finetuned:
        model, card = _finetune_briefly(args, world)
    after = _accuracies(model, sets, args.n, eps)
    _print_comparison(before, after, sets, args.n, eps, finetuned=finetuned)
    if not args.no_serve:
        _serve(args, base, model, card, after, eps, sets)
    return 0


def _finetune_briefly(args: argparse.Namespace, world: str) -> tuple[Any, Any]:
    """The world's registry recipe (docs/finetuning.md), shortened; the demo evaluates on its own."""
    from clipshield.datasets import finetune_recipe
    from clipshield.training.finetune import finetune
    from clipshield.training.finetune_config import recipe_config

    cfg = recipe_config(
        f"{world}-train",
        method=args.method,
        output=args.work_dir / "finetune",
        steps=args.finetune_steps,
        seed=args.seed,
        eval_datasets=[],
        threads=args.threads,
    ).resolved(1)
    tuned = finetune_recipe(f"{world}-train").tuned.get(args.method)
    weights = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in (tuned.method_params if tuned else {}).items())
    print(
        f"\nfine-tuning with {args.method} for {cfg.optim.steps} steps (batch {cfg.optim.batch_size}, "
        f"{ {'sgd': 'SGD', 'adamw': 'AdamW'}.get(cfg.optim.optimizer or '', '') } lr {cfg.optim.lr:g}, "
        f"PGD-{cfg.attack.steps} at eps={cfg.attack.eps * 255:g}/255) ..."
    )
    if tuned is not None:
        by = tuned.chosen_by
        print(f"  tuned setting{' (' + weights + ')' if weights else ''}: study {by.study}, trial {by.trial} ({by.date})")
    return finetune(cfg)


def _print_comparison(before: dict, after: dict, sets: Sequence[str], n: int, eps: float, finetuned: bool) -> None:
    """The before/after table of clean and attacked top-1 per data set."""
    print(f"\nclean / attacked top-1 ({n} images each):")
    print(attacked_note(eps))
    print(f"  {'data set':42s} {'base':>15s} {'fine-tuned':>15s}")
    for name in sets:
        (c0, r0), (c1, r1) = before[name], after[name]
        print(f"  {name:42s} {100 * c0:5.1f} / {100 * r0:5.1f}   {100 * c1:5.1f} / {100 * r1:5.1f}")
    if finetuned:
        print(OUTLINED_NOTE)
        print("\n".join(goal_lines(before, after, sets)))


def goal_lines(before: dict, after: dict, sets: Sequence[str]) -> list[str]:
    """The demo's goals on the plain domain (`GOALS`), each with its measured value and whether it is met."""
    (c0, r0), (c1, r1) = before[sets[0]], after[sets[0]]
    outlined0, outlined1 = before[sets[1]][0], after[sets[1]][0]
    gain, drop, kept = 100 * (r1 - r0), 100 * (c0 - c1), outlined1 / outlined0 if outlined0 else 0.0
    checks = [
        (f"robust gain {gain:+.1f} points (goal >= +{GOALS['robust_gain']:g})", gain >= GOALS["robust_gain"]),
        (f"clean drop {drop:.1f} points (goal <= {GOALS['clean_drop']:g})", drop <= GOALS["clean_drop"]),
        (
            f"outlined clean kept {100 * kept:.0f} % of the base's (goal >= {100 * GOALS['outlined_kept']:.0f} %)",
            kept >= GOALS["outlined_kept"],
        ),
    ]
    return ["  goals (plain domain, outlined clean):"] + [f"    {'met ' if ok else 'MISSED'}  {text}" for text, ok in checks]


def _serve(args: argparse.Namespace, base: Any, model: Any, card: Any, after: dict, eps: float, sets: Sequence[str]) -> None:
    """Export, archive and serve the (fine-tuned) model, then send it clean, attacked and real images."""
    from clipshield.export.demo_serving import serving_demo
    from clipshield.service.card import ModelCard

    accuracy = demo_accuracy(after, args.n, eps, model.record.preprocess)
    version = _name_served(model, base, args.method, args.finetune_steps)
    print(f"\nserving the fine-tuned model as {model.record.name} {version} (its card carries the numbers above; attacked")
    print("images are crafted against the un-purified fine-tuned classifier and sent as 8-bit PNGs):")
    print(SERVING_NOTE)
    serving_demo(
        model,
        args.work_dir,
        args.model_store,
        out=print,
        n_images=4,
        eps=eps,
        once=args.once,
        accuracy=accuracy,
        version=version,
        finetune_card=ModelCard.model_validate(card) if card else None,
        dataset=sets[0],
        real_photos=args.world == "miniworld224",
    )


def _name_served(model, base, method: str, steps: int) -> str:
    """Rename a fine-tuned model apart from the base model and return its served version (answers carry both).

    The fine-tuned model becomes `<base name>+<method>` (as its checkpoint is named) at version
    `ft<steps>-<weights digest>`, so two demo runs with different weights never share a version.
    """
    from clipshield.export.labels import finetuned_version
    from clipshield.models.checkpoint import weights_digest

    if model is base:
        return BASE_VERSION
    model.record = model.record.model_copy(update={"name": f"{base.record.name}+{method}"})
    return finetuned_version(steps, weights_digest(model))
