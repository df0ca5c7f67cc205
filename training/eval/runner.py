"""Evaluation runner: model x data sets x attacks -> one resumable JSON cell per combination.

The classifier under attack is the serving one: `service.zero_shot.ZeroShotClassifier` over a text
head from `TextHeadCache` (prompt ensemble, model logit scale), or `service.purify.PurifiedClassifier`
when purification is on (then every attack is run in the three adaptive modes of
`training.attacks.adaptive` and the cell's robust accuracy is the per-sample worst case).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Optional, Protocol

import torch
from pydantic import Field

from service.config import PreprocessConfig, StrictModel
from service.errors import ConfigError, DatasetNotFound
from service.pixel_model import PixelCLIP
from service.preprocess import Preset
from service.provenance import weights_digest
from service.purify import PurifiedClassifier, PurifyConfig, blank_anchor
from service.zero_shot import TextHeadCache, ZeroShotClassifier
from training.attacks import get_attack, list_attacks
from training.attacks.adaptive import evaluate_adaptive
from training.data import DatasetRequest, build_dataset
from training.data.transforms import at_size

from .schema import CLEAN, CellKey, CellResult, load_finished, write_cell
from .zeroshot import accuracy, batches

log = logging.getLogger(__name__)


class ProgressBar(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> object: ...


ProgressFactory = Callable[[int, str], ProgressBar]
EVAL_SPLIT = "test"


class EvalConfig(StrictModel):
    """One evaluation run; every field that changes a number is part of the cell key.

    `model_id` is a display name only: cells are keyed by the weights' digest.
    """

    model_id: str
    datasets: list[str] = Field(min_length=1)
    attacks: list[str] = Field(default_factory=lambda: ["pgd"])
    eps: float = Field(default=1 / 255, ge=0)
    steps: int = Field(default=100, ge=0)
    alpha: Optional[float] = Field(default=None, description="step size; default: the attack's own (PGD: eps/4)")
    restarts: int = Field(default=1, ge=1, description="random restarts (PGD/CW) or APGD restarts (AutoAttack)")
    seed: int = 0
    limit: Optional[int] = Field(default=None, gt=0)
    batch_size: int = Field(default=256, gt=0)
    workers: int = Field(default=0, ge=0, description="DataLoader workers for data sets read from disk")
    purification: Optional[PurifyConfig] = None
    data_root: Optional[Path] = None
    skip_missing: bool = False
    data_options: dict[str, str] = Field(default_factory=dict, description="builder options, e.g. lowres=native")
    preprocess: Preset = Field(
        default="model", description="preprocessing preset (service.preprocess.PRESETS); model = what serving does")
    image_size: Optional[int] = Field(default=None, gt=0, description="loader resolution; default: the model's own")
    device: str = "cpu"
    out_dir: Path


def check_attacks(names: Iterable[str]) -> None:
    """Raise `ConfigError` listing the registered attacks for any unknown name."""
    known = list_attacks()
    bad = [n for n in names if n != CLEAN and n not in known]
    if bad:
        raise ConfigError(f"unknown attack(s) {', '.join(bad)}; known: {', '.join([CLEAN, *known])}")


def cell_keys(cfg: EvalConfig, dataset: str, weights: str, preprocess: PreprocessConfig) -> list[CellKey]:
    """The cells of one data set: one per attack (or one clean-only cell when no attack is given).

    `weights` is the model's `weights_digest`, `preprocess` the data set's resolved preprocessing.
    """
    attacks = cfg.attacks or [CLEAN]
    return [
        CellKey(
            weights=weights, dataset=dataset, split=EVAL_SPLIT, preprocess=preprocess, attack=a,
            eps=0.0 if a == CLEAN else cfg.eps, steps=0 if a == CLEAN else cfg.steps, alpha=None if a == CLEAN else cfg.alpha,
            restarts=1 if a == CLEAN else cfg.restarts, seed=cfg.seed,
            purification=cfg.purification, limit=cfg.limit, data_options=cfg.data_options,
        )
        for a in attacks
    ]


def _tensors(dataset, batch_size: int, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches; uses `dataset.images()` when the data set keeps its images in memory."""
    if hasattr(dataset, "images"):
        yield from batches(dataset.images(), torch.as_tensor(dataset.labels, dtype=torch.int64), batch_size)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for images, labels in loader:
        yield images.float(), torch.as_tensor(labels, dtype=torch.int64)


def _on_device(data: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels in data:
        yield images.to(device), labels.to(device)


def cell_generator(key: CellKey) -> torch.Generator:
    """A generator seeded from the cell key: a cell's numbers do not depend on which cells ran before."""
    return torch.Generator().manual_seed(int(key.digest(), 16) % (2**63))


class Evaluator:
    """Runs the cells of an `EvalConfig` for one loaded model, skipping cells already on disk."""

    def __init__(self, model: PixelCLIP, cfg: EvalConfig, progress: Optional[ProgressFactory] = None) -> None:
        check_attacks(cfg.attacks)
        self.model = model.eval()
        self.cfg = cfg
        self.weights = weights_digest(model)
        self.progress = progress
        self.heads = TextHeadCache()
        self.skipped: list[CellKey] = []
        self.computed: list[CellKey] = []
        self.missing: list[str] = []

    def _dataset(self, name: str):
        # the data seed stays 0: `--seed` drives the attacks only (the mini world's seed is its vocabulary)
        pre = at_size(self.model.record.preprocess, self.cfg.image_size)
        req = DatasetRequest(
            root=self.cfg.data_root, split=EVAL_SPLIT, image_size=pre.image_size, limit=self.cfg.limit,
            options=dict(self.cfg.data_options), preprocess=pre, preset=self.cfg.preprocess,
        )
        return build_dataset(name, req)

    def _classifier(self, dataset) -> torch.nn.Module:
        head = self.heads.get_or_build(self.model, self.weights, dataset.classnames, dataset.templates)
        if self.cfg.purification is None:
            return ZeroShotClassifier(self.model, head).eval()
        anchor = blank_anchor(self.model, dataset.templates)
        return PurifiedClassifier(self.model, head, anchor, self.cfg.purification).eval()

    def _make_attack(self, key: CellKey, classifier: torch.nn.Module):
        kwargs = {"eps": key.eps, "steps": key.steps, "restarts": key.restarts, "generator": cell_generator(key)}
        if key.alpha is not None:
            kwargs["alpha"] = key.alpha
        return get_attack(key.attack)(classifier, **kwargs)

    def _build_all(self) -> dict:
        """Build every data set; missing ones are all reported in one `DatasetNotFound` (or skipped)."""
        datasets, missing = {}, []
        for name in self.cfg.datasets:
            try:
                datasets[name] = self._dataset(name)
            except DatasetNotFound as exc:
                missing.append(str(exc))
        if missing and not self.cfg.skip_missing:
            more = f" (and {len(missing) - 1} more missing data set(s); --skip-missing evaluates the others)" if len(missing) > 1 else ""
            raise DatasetNotFound(missing[0] + more)
        for message in missing:
            log.warning("skipping missing data set: %s", message)
        self.missing = missing
        return datasets

    def run_cell(self, key: CellKey, dataset) -> CellResult:
        """Compute one cell (clean and robust accuracy) and return it; does not write it."""
        start = time.perf_counter()
        classifier = self._classifier(dataset)
        n_total = len(dataset) * (1 if key.attack == CLEAN else 2)
        bar = self.progress(n_total, f"{key.dataset} | {key.attack}") if self.progress else None
        step = bar.update if bar is not None else None
        data = lambda: _on_device(_tensors(dataset, self.cfg.batch_size, self.cfg.workers), self.cfg.device)  # noqa: E731
        try:
            clean, n = accuracy(classifier, data(), on_batch=step)
            robust, adaptive = None, None
            if key.attack != CLEAN and isinstance(classifier, PurifiedClassifier):
                adaptive = evaluate_adaptive(classifier, lambda surrogate: self._make_attack(key, surrogate), data(), on_batch=step)
                robust = adaptive.worst_case
            elif key.attack != CLEAN:
                robust, _ = accuracy(classifier, data(), self._make_attack(key, classifier), on_batch=step)
        finally:
            if bar is not None:
                bar.close()
        return CellResult(
            key=key, model_id=self.cfg.model_id, n=n, clean=clean, robust=robust, adaptive=adaptive,
            protocol={str(k): str(v) for k, v in getattr(dataset, "protocol", {}).items()}, seconds=time.perf_counter() - start,
        )

    def run(self) -> list[CellResult]:
        """Evaluate every (data set, attack) cell; finished cells are read back instead of recomputed.

        All data sets are built before any attack runs, so a missing folder fails fast with
        `DatasetNotFound` (one line in the CLI) instead of after hours of work.
        """
        datasets = self._build_all()
        results = []
        for name, dataset in datasets.items():
            if len(dataset) == 0:
                raise ConfigError(f"data set {name} is empty")
            for key in cell_keys(self.cfg, name, self.weights, dataset.preprocess):
                done = load_finished(self.cfg.out_dir, key)
                if done is not None:
                    log.info("skipping finished cell %s / %s", name, key.attack)
                    self.skipped.append(key)
                    results.append(done.model_copy(update={"model_id": self.cfg.model_id}))
                    continue
                result = self.run_cell(key, dataset)
                write_cell(self.cfg.out_dir, result)
                self.computed.append(key)
                results.append(result)
                log.info("%s / %s: clean %.4f robust %s (n=%d)", name, key.attack, result.clean, result.robust, result.n)
        return results
