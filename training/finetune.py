"""Robust fine-tuning loop: one image tower trained with a registered method (docs/methods.md §0.3-0.6).

Text tower frozen; class text embeddings computed once per run; a frozen copy of the original model
only for methods that need one, its outputs on clean training images computed once per image; SGD
(or the method's AdamW) with warm-up + cosine; resumable state every `checkpoint_every` steps; metrics
CSV; a model card with zero-shot clean/robust accuracy at the end. All randomness (batch order, attack
starts) is derived from (seed, step), so `resume` continues bit-for-bit like an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.datasets.transforms import at_size
from clipshield.models.checkpoint import save_checkpoint, weights_digest
from clipshield.models.distributed import average_gradients, init_distributed
from clipshield.models.factory import load_model
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.precision import autocast, check_precision
from clipshield.models.zero_shot import build_text_head
from clipshield.service.card import write_card_file
from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError
from clipshield.training.finetune_config import RESUME_MAY_CHANGE, FinetuneConfig  # FinetuneConfig also re-exported: the loop's settings
from clipshield.training.methods import AttackBudget, FrozenReference, LossInputs, LossOutput, Method, TextHeads, get_method
from clipshield.training.model_card import MODEL_CARD, evaluate_model, model_card
from clipshield.training.schedule import warmup_cosine_lr
from clipshield.training.train_state import has_train_state, load_train_state, save_train_state

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"


def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from (seed, keys): independent streams per step and purpose."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


class IndexedDataset(torch.utils.data.Dataset):
    """(image, label, index) items: the index keys the frozen model's remembered outputs."""

    def __init__(self, data: torch.utils.data.Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> tuple[Any, Any, int]:
        image, label = self.data[idx]
        return image, label, idx


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler yielding the index lists of steps [start, total): epoch-wise seeded permutations,
    last partial batch kept (reference behaviour), so step k's batch never depends on earlier steps."""

    def __init__(self, n: int, batch_size: int, total: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.total, self.seed, self.start = n, batch_size, total, seed, start
        self.rank, self.world = rank, world  # under DDP each rank takes every world-th item of the global batch
        self.per_epoch = -(-n // batch_size)

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm, epoch = torch.empty(0, dtype=torch.long), -1  # replaced at the first step (epoch -1 never matches)
        for step in range(self.start, self.total):
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(step_seed(self.seed, e, 1)))
                epoch = e
            yield perm[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world].tolist()


def build_heads(model: PixelCLIP, classnames: list[str], template: str, method: Method, negative_template: str) -> TextHeads:
    """Class (and Comp-TGA negative) text embeddings, once per run, from the frozen text tower."""
    neg = build_text_head(model, classnames, [negative_template]) if method.needs_negatives else None
    return TextHeads(build_text_head(model, classnames, [template]), neg)


def make_optimizer(method: Method, params: list[torch.nn.Parameter], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD momentum 0.9, no weight decay (docs/methods.md §0.4), or AdamW (FARE's default, docs/methods.md §6); `cfg` resolved."""
    o = cfg.optim
    if o.lr is None or o.weight_decay is None:
        raise ValueError("make_optimizer needs a resolved FinetuneConfig (FinetuneConfig.resolved)")
    if (o.optimizer or method.optimizer) == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def prepare_models(cfg: FinetuneConfig, method: Method) -> tuple[PixelCLIP, Optional[PixelCLIP]]:
    """(target with only its image tower trainable, frozen copy of the original or None)."""
    src = cfg.source
    target = load_model(src.model, pretrained=src.pretrained, weights=src.weights, cache_dir=src.cache_dir, offline=src.offline)
    target = target.to(cfg.run.device)
    for p in target.parameters():
        p.requires_grad_(False)
    frozen = copy.deepcopy(target).eval() if method.needs_frozen else None
    for p in target.visual.parameters():
        p.requires_grad_(True)
    target.train()
    return target, frozen


Progress = Callable[[int, dict[str, float]], None]
# observer(step, batch, out): opt-in look at each step before its backward (clipshield.training.diagnostics)
Observer = Callable[[int, LossInputs, LossOutput], None]


def training_request(cfg: FinetuneConfig, model: PixelCLIP) -> DatasetRequest:
    """The training set's request: the model's record preprocessing under the preset (size override: `image_size`)."""
    ds = cfg.dataset
    pre = at_size(model.record.preprocess, ds.image_size)
    return DatasetRequest(
        root=ds.root, split="train", image_size=pre.image_size, limit=ds.limit, seed=0, preprocess=pre, preset=ds.preprocess
    )


def attack_budget(cfg: FinetuneConfig) -> AttackBudget:
    """The training attack's budget of a resolved config."""
    a = cfg.attack
    if a.alpha is None or a.steps is None:
        raise ValueError("attack_budget needs a resolved FinetuneConfig (FinetuneConfig.resolved)")
    return AttackBudget(eps=a.eps, alpha=a.alpha, steps=a.steps)


def train_step(
    method: Method,
    batch: LossInputs,
    params: StrictModel,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: FinetuneConfig,
    generator: torch.Generator,
    world: int = 1,
    observe: Optional[Callable[[LossInputs, LossOutput], None]] = None,
) -> LossOutput:
    """One optimisation step: the method's adversary, its loss, backward, optimiser step (cfg resolved).

    `observe(batch, out)`, when given, sees the step's inputs and loss before the backward (its graph
    still alive: `clipshield.training.diagnostics` takes per-term gradients there)."""
    # the training attack stays float32 (docs/methods.md §7.3: low precision can zero attack gradients)
    batch = batch.with_adv(method.adversary.perturb(batch, params, attack_budget(cfg), generator))
    with autocast(cfg.run.device, cfg.run.precision):
        out = method.loss(batch, params)
    if observe is not None:
        observe(batch, out)
    opt.zero_grad(set_to_none=True)
    scaler.scale(out.total).backward()
    average_gradients([p for g in opt.param_groups for p in g["params"]], world)
    scaler.step(opt)
    scaler.update()
    return out


@dataclass
class Run:
    """What every step of one fine-tuning run shares (built once by `_start`)."""

    cfg: FinetuneConfig  # resolved
    method: Method
    target: PixelCLIP
    reference: Optional[FrozenReference]
    heads: TextHeads
    params: StrictModel
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data: Any
    template: str
    rank: int = 0
    world: int = 1


def _start(cfg: FinetuneConfig) -> Run:
    """Models, data, text heads, optimiser: everything before the first step (`cfg` resolved here)."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    method = get_method(cfg.method)
    rank, world, device = init_distributed(cfg.run.device)
    cfg = cfg.updated(device=device)
    check_precision(device, cfg.run.precision)
    target, frozen = prepare_models(cfg, method)
    data = build_dataset(cfg.dataset.name, training_request(cfg, target))
    cfg = cfg.resolved(-(-len(data) // (cfg.optim.batch_size or method.batch_size)))
    template = cfg.dataset.template or _single_template(data.templates)
    reference = FrozenReference(frozen, len(data), cfg.run.frozen_cache_mb) if frozen is not None else None
    heads = build_heads(target, list(data.classnames), template, method, cfg.dataset.negative_template)
    opt = make_optimizer(method, [p for p in target.visual.parameters() if p.requires_grad], cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.run.precision == "fp16" and device.startswith("cuda"))
    return Run(cfg, method, target, reference, heads, method.params(**cfg.method_params), opt, scaler, data, template, rank, world)


def _train(run: Run, start: int, progress: Optional[Progress], observer: Optional[Observer] = None) -> None:
    """Steps [start, steps): one optimisation step per batch, metrics rows, resumable state every N steps."""
    cfg, rank, device = run.cfg, run.rank, run.cfg.run.device
    steps = cfg.optim.steps or 0
    sampler = StepBatches(len(run.data), cfg.optim.batch_size or 0, steps, cfg.run.seed, start, rank, run.world)
    loader = torch.utils.data.DataLoader(IndexedDataset(run.data), batch_sampler=sampler, num_workers=cfg.run.workers)
    with _metrics_writer(cfg.run.output / "metrics.csv", append=start > 0, enabled=rank == 0) as write_row:
        for step, (images, labels, indices) in enumerate(loader, start=start):
            t0 = time.perf_counter()
            lr = warmup_cosine_lr(step, cfg.optim.lr or 0.0, cfg.optim.warmup or 0, steps)
            for g in run.opt.param_groups:
                g["lr"] = lr
            labels = torch.as_tensor(labels, dtype=torch.long).to(device)
            frozen = run.reference.for_batch(indices) if run.reference is not None else None
            batch = LossInputs(run.target, images.float().to(device), labels, run.heads, frozen=frozen)
            gen = torch.Generator().manual_seed(step_seed(cfg.run.seed, step, 2, rank))
            observe = functools.partial(observer, step) if observer is not None else None
            out = train_step(run.method, batch, run.params, run.opt, run.scaler, cfg, gen, run.world, observe)
            stats = {"loss": float(out.total.detach()), **{k: float(v.detach()) for k, v in out.terms.items()}}
            stats.update(lr=lr, images_per_s=len(labels) / max(time.perf_counter() - t0, 1e-9))
            write_row(step, stats)
            if progress is not None and rank == 0:
                progress(step, stats)
            done = step + 1
            if rank == 0 and cfg.run.checkpoint_every and done % cfg.run.checkpoint_every == 0 and done < steps:
                save_train_state(cfg.run.output / "state", run.target.visual, run.opt, done, cfg.flat(), run.reference)


def finetune(
    cfg: FinetuneConfig, progress: Optional[Progress] = None, observer: Optional[Observer] = None
) -> tuple[PixelCLIP, dict[str, Any]]:
    """Run a fine-tuning job; returns (fine-tuned model in eval mode, model card).

    `observer(step, batch, out)` (opt-in) is called every step before the backward.
    Writes `output/state` (resumable, every `checkpoint_every` steps and at the end),
    `output/metrics.csv`, and `output/final` (checkpoint + run config + model card).
    """
    run = _start(cfg)
    cfg, target = run.cfg, run.target
    base_record, base_digest = target.record, weights_digest(target.visual)
    state_dir = cfg.run.output / "state"
    start = _resume(cfg, state_dir, target, run.opt, run.reference)
    cfg.run.output.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _train(run, start, progress, observer)
    target.eval()
    if run.rank != 0:  # rank 0 owns every file and the evaluation
        return target, {}
    if run.reference is not None:
        log.info("frozen model: %d clean outputs computed, %d read back", run.reference.computed, run.reference.hits)
    meta = cfg.flat()
    save_train_state(state_dir, target.visual, run.opt, cfg.optim.steps or 0, meta, run.reference)
    card = model_card(
        cfg, target, base_record, base_digest, run.data, run.template, evaluate_model(cfg, target), time.perf_counter() - t_start
    )
    record = base_record.model_copy(update={"name": card.name, "description": card.description})
    _write_final(cfg.run.output / "final", target, record, meta, card)
    return target, card.model_dump(mode="json")


def _resume(
    cfg: FinetuneConfig, state_dir: Path, target: PixelCLIP, opt: torch.optim.Optimizer, reference: Optional[FrozenReference]
) -> int:
    """The step to start at: 0, or the saved one when `cfg.run.resume` finds a compatible state (loaded in place)."""
    if not (cfg.run.resume and has_train_state(state_dir)):
        return 0
    start, saved = load_train_state(state_dir, target.visual, opt, reference)
    _check_resumable(saved, cfg)
    log.info("resumed %s at step %d of %d", cfg.method, start, cfg.optim.steps)
    return start


def _write_final(folder: Path, target: PixelCLIP, record: Any, meta: dict[str, Any], card: Any) -> None:
    """The fine-tuned checkpoint (with its run config) and model card in `folder`."""
    save_checkpoint(folder, record, target.clip.state_dict(), extra={RUN_CONFIG: meta})
    write_card_file(folder / MODEL_CARD, card)


def _check_resumable(saved: dict, cfg: FinetuneConfig) -> None:
    """Refuse to resume a run whose state was written with different training settings (flat names, any version)."""
    now = cfg.flat()
    diff = [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if diff:
        raise ConfigError(f"cannot resume {cfg.run.output}: settings differ from the saved run ({', '.join(diff)}); use another --output")


def _single_template(templates: list[str]) -> str:
    if len(templates) != 1:
        log.warning("data set has %d templates; training with the first, %r (pass template= to choose)", len(templates), templates[0])
    return templates[0]


@contextlib.contextmanager
def _metrics_writer(path: Path, append: bool, enabled: bool = True) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """CSV of per-step metrics (header written once; resumed runs append); a no-op when not `enabled`."""
    if not enabled:
        yield lambda _step, _stats: None
        return
    exists = append and path.is_file()
    with path.open("a" if exists else "w", newline="") as fh:
        writer: Optional[csv.DictWriter] = None

        def write(step: int, stats: dict[str, float]) -> None:
            nonlocal writer
            row = {"step": step, **{k: f"{v:.6g}" for k, v in stats.items()}}
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                if not exists:
                    writer.writeheader()
            writer.writerow(row)

        yield write
