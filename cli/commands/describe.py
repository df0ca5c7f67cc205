"""`clipshield describe`: what a model serves by default and what it was trained on, before sending a request."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

WRAP = 100  # characters per printed vocabulary line


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "describe",
        help="default labels, templates, vocabulary and training data of a model, bundle or archive",
        description="Print what a model answers with when a request gives no labels (its default labels and "
        "prompt templates), the words its text tower reads (the shipped mini-world model reads only the words "
        "of its shapes world), what images it was trained on, and its model card. The same labels and "
        "vocabulary are in the server's describe answer.",
    )
    p.add_argument(
        "model",
        help="an export folder, a .mar archive (or its --format no-archive folder), a fine-tuned checkpoint folder "
        "(runs/finetune/<run>/final) or a shipped model name (miniworld, miniworld224)",
    )
    p.add_argument("--json", action="store_true", help="print the whole description, model card included, as JSON")
    p.set_defaults(run=run)


def _wrapped(text: str) -> str:
    return textwrap.fill(text, WRAP, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)


def _print(d: dict[str, Any]) -> None:
    m, labels, vocab = d["model"], d["labels"], d["vocabulary"]
    print(f"{d['kind']} {d['path']}: {m['name']} {m['version']}".rstrip())
    if m["description"]:
        print(f"  {m['description']}")
    print(f"default labels ({len(labels['classnames'])}):")
    print(_wrapped(", ".join(labels["classnames"])))
    if d.get("labels_source"):
        print(f"  from: {d['labels_source']}")
    print(f"templates: {' | '.join(labels['templates'])}")
    if vocab:
        print(f"vocabulary ({len(vocab)} words; labels with any other word are refused, '-' marks a word start):")
        print(_wrapped(" ".join(vocab)))
    else:
        print("vocabulary: open (CLIP BPE: any text)")
    trained = d["trained_on"]
    if vocab and not trained:
        print("trained on: the mini world only, renders of coloured shapes such as docs/assets/green-star.png; photos and")
        print("  drawings are outside what it learnt (for real images load a real CLIP: --model ViT-B-32 --pretrained openai)")
    if trained:
        print(
            f"fine-tuned on: {trained['name']} ({trained['images']} images, {trained['classes']} classes, prompt {trained['template']!r})"
        )
    if d["image_size"]:
        print(f"input: any PNG/JPEG, resized to {d['image_size']} px")
    card = d["card"] or {}
    if d.get("precision"):
        print(f"image encoder: {d['precision']} ({card['precision']['chosen_by']})")
    for entry in card.get("accuracy", []):
        print(f"  accuracy {entry['dataset']} {entry['attack']}: {100 * entry['value']:.1f} % (n={entry['n']})")


def run(args: argparse.Namespace) -> int:
    from clipshield.export.describe import describe

    d = describe(args.model)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print(d)
    return 0
