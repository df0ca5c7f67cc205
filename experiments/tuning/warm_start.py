"""Warm start: another study's chosen setting enqueued as one trial of this one (`experiment tune --warm-start`).

Why: a short, low-fidelity study (the 224-px world affords 3-4 trials per method) mostly samples at random,
so it rarely revisits the region a longer study on a related data set found. Transferring each method's
chosen point costs one trial of the same budget for every method alike, so the comparison stays equal.

What transfers: the chosen *absolute* learning rate (re-expressed as `lr_scale` of this data set's recipe
rate) and the method's loss weights, each clipped into this method's search space. A method the file does
not name gets no transferred trial; the trial counts toward `--trials` like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from clipshield.service.errors import ConfigError
from clipshield.training.methods import get_method
from clipshield.training.methods.search_space import LR_SCALE, Choice

CHOSEN_FILE = "chosen.json"  # what `experiment tune` writes into its output folder


def read_chosen(path: Path) -> dict[str, Any]:
    """{method: {"lr", "method_params", ...}} from a study's chosen.json, or from the output folder holding it."""
    file = path / CHOSEN_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--warm-start {path}: cannot read a study's {CHOSEN_FILE} ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "lr" in v for v in data.values()):
        raise ConfigError(
            f"--warm-start {file}: not a {CHOSEN_FILE} written by `clipshield experiment tune` (method -> {{lr, method_params}})"
        )
    return data


def transferred_point(method: str, entry: dict[str, Any], base_lr: float) -> dict[str, Any]:
    """The trial parameters that reproduce `entry` (absolute lr, loss weights) in `method`'s search space, clipped into it."""
    space = get_method(method).search_space
    wanted = {LR_SCALE: float(entry["lr"]) / base_lr, **entry.get("method_params", {})}
    point: dict[str, Any] = {}
    for name, dim in space.items():
        if name not in wanted:
            continue
        value = wanted[name]
        if isinstance(dim, Choice):
            if value in dim.values:
                point[name] = value
        else:
            point[name] = min(max(float(value), dim.low), dim.high)
    return point


def warm_point(chosen: Optional[dict[str, Any]], method: str, base_lr: float) -> Optional[dict[str, Any]]:
    """`method`'s transferred point, or None when there is no warm start or it names no such method."""
    if not chosen or method not in chosen:
        return None
    return transferred_point(method, chosen[method], base_lr)
