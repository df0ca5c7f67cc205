"""The default label set and version of an exported model, derived from the run that made it (issue 27).

A model fine-tuned on a data set serves that data set's class names with its training prompt; the
shipped mini world's models (and any model without a fine-tuning card) serve the mini world's
colour+shape set. The version names the run (`ft<steps>-<weights digest>`, as the demo does), so two
fine-tunes never announce themselves as the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from clipshield.service.bundle import LabelSet
from clipshield.service.card import ModelCard
from clipshield.service.config import StrictModel
from clipshield.service.errors import ClipshieldError, ConfigError

DEFAULT_LABEL_DATASET = "miniworld/plain/color_shape/seen"
BASE_VERSION = "1.0"  # a model that was not fine-tuned here (the shipped one, an open_clip checkpoint)
MINIWORLD_PREFIX = "miniworld"  # its worlds' training sets serve the world's colour+shape label set


class LabelChoice(StrictModel):
    """A label set and, for the card, where it came from."""

    labels: LabelSet
    source: str


def labels_from_dataset(name: str = DEFAULT_LABEL_DATASET, root: Optional[Path] = None) -> LabelSet:
    """Label set (class names + templates) of a registered or `folder/<dir>` data set (`root`: its data root)."""
    from clipshield.datasets.registry import DatasetRequest, build_dataset

    ds = build_dataset(name, DatasetRequest(root=root, limit=1))
    return LabelSet(classnames=tuple(ds.classnames), templates=tuple(ds.templates))


def dataset_labels(name: str, root: Optional[Path] = None) -> LabelChoice:
    """`labels_from_dataset` with its source in words (`--labels NAME [--data-root DIR]`)."""
    where = f" under {root}" if root is not None else ""
    return LabelChoice(labels=labels_from_dataset(name, root), source=f"data set {name}{where}")


def run_labels(card: Optional[ModelCard], data_root: Optional[Path] = None) -> LabelChoice:
    """The default labels of a model with fine-tuning `card`: its training set's class names and prompt.

    `data_root` overrides the run's own (recorded in the card); the mini world and card-less models
    get the mini world's colour+shape set. ConfigError naming --labels / --data-root when the training
    data cannot be read any more.
    """
    if card is None or card.training is None or card.training.data.name.startswith(MINIWORLD_PREFIX):
        return dataset_labels(DEFAULT_LABEL_DATASET)
    data = card.training.data
    recorded = card.training.hyperparameters.get("data_root")
    root = data_root if data_root is not None else (Path(recorded) if recorded else None)
    try:
        names = labels_from_dataset(data.name, root).classnames
    except ClipshieldError as exc:
        raise ConfigError(
            f"the default labels are the fine-tuning data's ({data.name}), which cannot be read: {exc}; "
            "pass --data-root DIR, or --labels NAME|FILE.json"
        ) from None
    where = f" under {root}" if root is not None else ""
    source = f"fine-tuning data {data.name}{where} (training prompt {data.template!r})"
    return LabelChoice(labels=LabelSet(classnames=names, templates=(data.template,)), source=source)


def run_version(digest: str, card: Optional[ModelCard]) -> str:
    """`ft<steps>-<first 8 digest digits>` for fine-tuned weights (as the demo names them), else "1.0"."""
    if card is None or card.training is None:
        return BASE_VERSION
    return finetuned_version(card.training.steps, digest)


def finetuned_version(steps: int, digest: str) -> str:
    """THE served version of fine-tuned weights: `ft<steps>-<first 8 digest digits>` (export default and demo)."""
    return f"ft{steps}-{digest[:8]}"
