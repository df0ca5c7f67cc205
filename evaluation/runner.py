"""Evaluation runner: model x data sets x attacks -> one resumable JSON cell per combination.

The classifier under attack is the serving one: `clipshield.models.zero_shot.ZeroShotClassifier` over a text
head from `TextHeadCache` (prompt ensemble, model logit scale), or `clipshield.models.purify.PurifiedClassifier`
when purification is on (then every attack is run in the three adaptive modes of
`clipshield.attacks.adaptive` and the cell's robust accuracy is the per-sample worst case).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Optional, Protocol

import torch
from pydantic import Field

from clipshield.attacks import list_attacks
from clipshield.attacks.adaptive import ADAPTIVE_MODES, evaluate_adaptive
from clipshield.attacks.pgd import StopRule
from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.datasets.transforms import at_size
from clipshield.evaluation.measure import EARLY_STOP_ATTACKS, AttackRecipe, clean_and_attacked
from clipshield.evaluation.schema import CLEAN, CellKey, CellResult, load_finished, write_cell
from clipshield.evaluation.zeroshot import batches
from clipshield.models.checkpoint import weights_digest
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.precision import Precision, check_precision, with_precision
from clipshield.models.purify import PurifiedClassifier, PurifyConfig, blank_anchor
from clipshield.models.sharding import SINGLE, Shard, batch_generator, current_shard
from clipshield.models.zero_shot import TextHeadCache, ZeroShotClassifier
from clipshield.service.config import PreprocessConfig, StrictModel
from clipshield.service.errors import ConfigError, DatasetNotFound
from clipshield.service.preprocess import Preset

log = logging.getLogger(__name__)


class ProgressBar(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> object: ...


ProgressFactory = Callable[[int, str], ProgressBar]
EVAL_SPLIT = "test"


class _StepProgress:
    """Moves a cell's progress bar (unit: images) during an attack, not only when a batch is done.

    Every forward pass of the attacked classifier advances the bar by batch / `expected` images
    (`expected`: forward passes an attack makes per batch), held below the batch's size until
    `batch_done` settles the batch exactly; so the bar and its ETA move from the first attack step.
    """

    def __init__(self, bar: ProgressBar, expected: int) -> None:
        self.bar, self.expected = bar, max(1, expected)
        self.pending = 0.0  # fraction of an image not yet shown
        self.shown = 0  # images shown for the batch under attack

    def forward(self, batch: int) -> None:
        self.pending += batch / self.expected
        step = min(int(self.pending), max(0, batch - 1 - self.shown))
        if step > 0:
            self.bar.update(step)
            self.shown += step
            self.pending -= step

    def batch_done(self, batch: int) -> None:
        self.bar.update(batch - self.shown)
        self.shown, self.pending = 0, 0.0


class _Ticking(torch.nn.Module):
    """The classifier as an attack sees it: same outputs, with a progress tick per forward pass."""

    def __init__(self, classifier: torch.nn.Module, tick: Callable[[int], None]) -> None:
        super().__init__()
        self.classifier = classifier
        self.tick = tick
        self.train(classifier.training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.tick(int(images.shape[0]))
        return self.classifier(images)


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
        default="model", description="preprocessing preset (clipshield.service.preprocess.PRESETS); model = what serving does"
    )
    image_size: Optional[int] = Field(default=None, gt=0, description="loader resolution; default: the model's own")
    stop: StopRule = Field(
        default="early", description="PGD/CW: stop each sample at its first fooling iterate (early) or run all steps (final)"
    )
    precision: Precision = Field(default="fp32", description="autocast precision of evaluation forward passes")
    attack_precision: Precision = Field(default="fp32", description="autocast precision inside attacks (float32 unless asked)")
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
            weights=weights,
            dataset=dataset,
            split=EVAL_SPLIT,
            preprocess=preprocess,
            attack=a,
            eps=0.0 if a == CLEAN else cfg.eps,
            steps=0 if a == CLEAN else cfg.steps,
            alpha=None if a == CLEAN else cfg.alpha,
            restarts=1 if a == CLEAN else cfg.restarts,
            seed=cfg.seed,
            purification=cfg.purification,
            limit=cfg.limit,
            data_options=cfg.data_options,
            **_protocol(cfg, a),
        )
        for a in attacks
    ]


def _protocol(cfg: EvalConfig, attack: str) -> dict[str, str]:
    """Stop rule and precisions as they apply to one cell (purified cells run float32, final iterate:
    their adaptive attacks judge success on another classifier, so early stopping is not exact there)."""
    purified = cfg.purification is not None
    return {
        "stop": cfg.stop if attack in EARLY_STOP_ATTACKS and not purified else "final",
        "precision": "fp32" if purified else cfg.precision,
        "attack_precision": "fp32" if purified or attack == CLEAN else cfg.attack_precision,
    }


def check_missing(missing: list[str], found: int, skip_missing: bool) -> None:
    """Raise `DatasetNotFound` for missing data sets (each message names the folder looked in and its
    layout) unless `skip_missing`, and always when none was found: an empty report is not a result."""
    if not missing:
        return
    if found == 0:
        raise DatasetNotFound(
            f"none of the {len(missing)} requested data set(s) was found, nothing to evaluate; looked for: " + " | ".join(missing)
        )
    if not skip_missing:
        more = f" (and {len(missing) - 1} more missing data set(s); --skip-missing evaluates the others)" if len(missing) > 1 else ""
        raise DatasetNotFound(missing[0] + more)
    for message in missing:
        log.warning("skipping missing data set: %s", message)


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
        self._datasets: Optional[dict] = None

    def _dataset(self, name: str):
        # the data seed stays 0: `--seed` drives the attacks only (the mini world's seed is its vocabulary)
        pre = at_size(self.model.record.preprocess, self.cfg.image_size)
        req = DatasetRequest(
            root=self.cfg.data_root,
            split=EVAL_SPLIT,
            image_size=pre.image_size,
            limit=self.cfg.limit,
            options=dict(self.cfg.data_options),
            preprocess=pre,
            preset=self.cfg.preprocess,
        )
        return build_dataset(name, req)

    def _classifier(self, dataset) -> torch.nn.Module:
        head = self.heads.get_or_build(self.model, self.weights, dataset.classnames, dataset.templates)
        if self.cfg.purification is None:
            return ZeroShotClassifier(self.model, head).eval()
        anchor = blank_anchor(self.model, dataset.templates)
        return PurifiedClassifier(self.model, head, anchor, self.cfg.purification).eval()

    def _make_attack(self, key: CellKey, classifier: torch.nn.Module, generator: Optional[torch.Generator] = None):
        return AttackRecipe.of_cell(key).build(classifier, generator or cell_generator(key))

    def prepare(self, strict: bool = True) -> dict:
        """Build every data set once (cached); missing ones are recorded in `self.missing`.

        With `strict`, `check_missing` then raises `DatasetNotFound` for a missing data set (unless
        `skip_missing`) and whenever none exists; without it the caller checks (several evaluators).
        """
        if self._datasets is None:
            datasets, missing = {}, []
            for name in self.cfg.datasets:
                try:
                    datasets[name] = self._dataset(name)
                except DatasetNotFound as exc:
                    missing.append(str(exc))
            self._datasets, self.missing = datasets, missing
        if strict:
            check_missing(self.missing, len(self._datasets), self.cfg.skip_missing)
        return self._datasets

    def run_cell(self, key: CellKey, dataset, shard: Shard = SINGLE) -> CellResult:
        """Compute one cell (clean and robust accuracy) and return it; does not write it.

        Under torchrun (`shard`) this rank evaluates batches b with b mod world == rank, each attacked
        with a generator seeded from (cell, b), and the counts are summed: every rank returns the
        single-process cell.
        """
        start = time.perf_counter()
        classifier = self._classifier(dataset)
        purified = classifier if isinstance(classifier, PurifiedClassifier) else None
        bar = (
            self.progress(-(-len(dataset) // shard.world) * (1 if key.attack == CLEAN else 2), f"{key.dataset} | {key.attack}")
            if self.progress and shard.rank == 0
            else None
        )
        ticker = (
            _StepProgress(bar, key.steps * key.restarts * (len(ADAPTIVE_MODES) if purified is not None else 1)) if bar is not None else None
        )
        step = ticker.batch_done if ticker is not None else None
        attacked = (lambda m: _Ticking(m, ticker.forward)) if ticker is not None else (lambda m: m)
        data = lambda: _on_device(_tensors(dataset, self.cfg.batch_size, self.cfg.workers), self.cfg.device)  # noqa: E731
        seeds = lambda b: batch_generator(key.digest(), b)  # noqa: E731
        judge = with_precision(classifier, self.cfg.device, key.precision)
        target = attacked(with_precision(classifier, self.cfg.device, key.attack_precision))
        try:
            recipe = None if key.attack == CLEAN or purified is not None else AttackRecipe.of_cell(key)
            clean, robust, n = clean_and_attacked(judge, data, recipe, target, seeds, on_batch=step, shard=shard)
            adaptive = None
            if key.attack != CLEAN and purified is not None:
                adaptive = evaluate_adaptive(
                    purified,
                    lambda surrogate: self._make_attack(key, attacked(surrogate)),
                    data(),
                    on_batch=step,
                    generator_for=seeds,
                    shard=shard,
                )
                robust = adaptive.worst_case
        finally:
            if bar is not None:
                bar.close()
        return CellResult(
            key=key,
            model_id=self.cfg.model_id,
            n=n,
            clean=clean,
            robust=robust,
            adaptive=adaptive,
            protocol={str(k): str(v) for k, v in getattr(dataset, "protocol", {}).items()},
            seconds=time.perf_counter() - start,
        )

    def run(self) -> list[CellResult]:
        """Evaluate every (data set, attack) cell; finished cells are read back instead of recomputed.

        All data sets are built before any attack runs, so a missing folder fails fast with
        `DatasetNotFound` (one line in the CLI) instead of after hours of work.
        """
        datasets = self.prepare(strict=self._datasets is None)  # prepared beforehand: already checked there
        check_precision(self.cfg.device, self.cfg.precision)
        check_precision(self.cfg.device, self.cfg.attack_precision)
        shard = current_shard()
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
                result = self.run_cell(key, dataset, shard)
                if shard.rank == 0:  # every rank holds the merged cell; one writes it
                    write_cell(self.cfg.out_dir, result)
                self.computed.append(key)
                results.append(result)
                log.info("%s / %s: clean %.4f robust %s (n=%d)", name, key.attack, result.clean, result.robust, result.n)
        return results
