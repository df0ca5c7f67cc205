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
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator

from service.card import write_card_file
from service.checkpoint import save_checkpoint
from service.config import StrictModel
from service.errors import ConfigError
from service.models import load_model
from service.pixel_model import PixelCLIP
from service.preprocess import Preset
from service.provenance import weights_digest
from service.zero_shot import build_text_head

from .data import DatasetRequest, build_dataset
from .data.transforms import at_size
from .distributed import average_gradients, init_distributed
from .methods import FrozenModel, FrozenReference, LossOutput, Method, TextHeads, get_method, make_adversarial
from .model_card import MODEL_CARD, evaluate_model, model_card
from .precision import autocast, check_precision
from .schedule import warmup_cosine_lr
from .train_state import has_train_state, load_train_state, save_train_state

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"


class FinetuneConfig(StrictModel):
    """Settings of `clipshield finetune`; None means "the method's recipe default" (docs/methods.md §0.4, §0.6)."""

    method: str
    model: str = "miniworld"
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    cache_dir: Optional[str] = None
    offline: Optional[bool] = None
    data: str = "miniworld-train"
    data_root: Optional[Path] = None
    data_limit: Optional[int] = Field(default=None, gt=0)
    image_size: Optional[int] = Field(default=None, gt=0, description="loader resolution; default: the model's own")
    preprocess: Preset = Field(default="model", description="preprocessing preset (service.preprocess.PRESETS); model = what serving does")
    template: Optional[str] = Field(default=None, description="training prompt; default: the data set's (single) template")
    negative_template: str = "This is not a photo of a {}"
    output: Path = Path("runs/finetune")
    epochs: int = Field(default=10, gt=0)
    steps: Optional[int] = Field(default=None, gt=0, description="total steps; default epochs x batches per epoch")
    batch_size: Optional[int] = Field(default=None, gt=1)
    lr: Optional[float] = Field(default=None, gt=0)
    optimizer: Optional[Literal["sgd", "adamw"]] = Field(default=None, description="default: the method's (FARE: adamw)")
    momentum: float = 0.9
    weight_decay: Optional[float] = Field(default=None, ge=0)
    warmup: Optional[int] = Field(default=1000, ge=0, description="warm-up steps; None: 10% of the steps")
    eps: float = Field(default=1 / 255, ge=0)
    attack_alpha: Optional[float] = Field(default=None, gt=0, description="default: eps (PGD), eps/4 (FARE)")
    attack_steps: Optional[int] = Field(default=None, ge=0)
    method_params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    checkpoint_every: int = Field(default=0, ge=0)
    frozen_cache_mb: float = Field(default=1024.0, ge=0, description="memory for the frozen model's per-image clean outputs; 0: recompute every step")
    resume: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "cpu"
    workers: int = Field(default=0, ge=0)
    threads: Optional[int] = None
    eval_datasets: list[str] = Field(default_factory=list)
    eval_limit: Optional[int] = Field(default=512, gt=0)
    eval_eps: Optional[float] = Field(default=None, ge=0, description="default: eps")
    eval_steps: int = Field(default=10, ge=0)
    eval_batch_size: int = Field(default=256, gt=0)

    @model_validator(mode="after")
    def _check_method(self) -> FinetuneConfig:
        method = get_method(self.method)  # KeyError lists the known methods
        try:  # unknown or invalid loss options fail here, before any work, as one line
            method.params(**self.method_params)
        except ValidationError as exc:
            err = exc.errors()[0]
            known = ", ".join(method.params.model_fields) or "none"
            raise ConfigError(f"{self.method} option {'.'.join(map(str, err['loc']))}: {err['msg']} (options: {known})") from None
        return self

    def resolved(self, batches_per_epoch: int) -> FinetuneConfig:
        """A copy with every recipe default filled in from the method (recorded in the model card)."""
        m = get_method(self.method)
        steps = self.steps or self.epochs * batches_per_epoch
        alpha = self.attack_alpha or (self.eps / 4 if m.attack == "fare_pgd" else self.eps)
        return self.model_copy(update={
            "batch_size": self.batch_size or m.batch_size, "lr": self.lr or m.lr, "optimizer": self.optimizer or m.optimizer,
            "weight_decay": (m.weight_decay if (self.optimizer or m.optimizer) == m.optimizer else 0.0)
            if self.weight_decay is None else self.weight_decay,
            "attack_alpha": alpha, "attack_steps": m.attack_steps if self.attack_steps is None else self.attack_steps,
            "steps": steps, "warmup": self.warmup if self.warmup is not None else steps // 10,
            "eval_eps": self.eps if self.eval_eps is None else self.eval_eps,
            "method_params": m.params(**self.method_params).model_dump(),
        })


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
        perm, epoch = None, -1
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
    if (cfg.optimizer or method.optimizer) == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def prepare_models(cfg: FinetuneConfig, method: Method) -> tuple[PixelCLIP, Optional[PixelCLIP]]:
    """(target with only its image tower trainable, frozen copy of the original or None)."""
    target = load_model(cfg.model, pretrained=cfg.pretrained, weights=cfg.weights, cache_dir=cfg.cache_dir, offline=cfg.offline)
    target = target.to(cfg.device)
    for p in target.parameters():
        p.requires_grad_(False)
    frozen = copy.deepcopy(target).eval() if method.needs_frozen else None
    for p in target.visual.parameters():
        p.requires_grad_(True)
    target.train()
    return target, frozen


Progress = Callable[[int, dict[str, float]], None]


def training_request(cfg: FinetuneConfig, model: PixelCLIP) -> DatasetRequest:
    """The training set's request: the model's record preprocessing under `cfg.preprocess` (size override: `cfg.image_size`)."""
    pre = at_size(model.record.preprocess, cfg.image_size)
    return DatasetRequest(root=cfg.data_root, split="train", image_size=pre.image_size, limit=cfg.data_limit, seed=0,
                          preprocess=pre, preset=cfg.preprocess)


def train_step(
    method: Method, target: PixelCLIP, frozen: Optional[FrozenModel], images: torch.Tensor, labels: torch.Tensor,
    heads: TextHeads, params: StrictModel, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    cfg: FinetuneConfig, generator: torch.Generator, world: int = 1,
) -> LossOutput:
    """One optimisation step: training adversary, method loss, backward, optimiser step (cfg resolved)."""
    # the training attack stays float32 (docs/methods.md §7.3: low precision can zero attack gradients)
    adv = make_adversarial(method, target, frozen, images, labels, heads, params, cfg.eps, cfg.attack_alpha, cfg.attack_steps, generator)
    with autocast(cfg.device, cfg.precision):
        out = method.loss(target, frozen, images, adv, labels, heads, params)
    opt.zero_grad(set_to_none=True)
    scaler.scale(out.total).backward()
    average_gradients([p for g in opt.param_groups for p in g["params"]], world)
    scaler.step(opt)
    scaler.update()
    return out


def finetune(cfg: FinetuneConfig, progress: Optional[Progress] = None) -> tuple[PixelCLIP, dict[str, Any]]:
    """Run a fine-tuning job; returns (fine-tuned model in eval mode, model card).

    Writes `output/state` (resumable, every `checkpoint_every` steps and at the end),
    `output/metrics.csv`, and `output/final` (checkpoint + run config + model card).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    method = get_method(cfg.method)
    rank, world, device = init_distributed(cfg.device)
    cfg = cfg.model_copy(update={"device": device})
    check_precision(cfg.device, cfg.precision)
    target, frozen = prepare_models(cfg, method)
    data = build_dataset(cfg.data, training_request(cfg, target))
    batch = cfg.batch_size or method.batch_size
    cfg = cfg.resolved(-(-len(data) // batch))
    template = cfg.template or _single_template(data.templates)
    base_record, base_digest = target.record, weights_digest(target.visual)
    reference = FrozenReference(frozen, len(data), cfg.frozen_cache_mb) if frozen is not None else None
    heads = build_heads(target, list(data.classnames), template, method, cfg.negative_template)
    params = method.params(**cfg.method_params)
    opt = make_optimizer(method, [p for p in target.visual.parameters() if p.requires_grad], cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16" and cfg.device.startswith("cuda"))
    state_dir = cfg.output / "state"
    start = _resume(cfg, state_dir, target, opt, reference)
    cfg.output.mkdir(parents=True, exist_ok=True)
    sampler = StepBatches(len(data), cfg.batch_size, cfg.steps, cfg.seed, start, rank, world)
    loader = torch.utils.data.DataLoader(IndexedDataset(data), batch_sampler=sampler, num_workers=cfg.workers)
    meta = cfg.model_dump(mode="json")
    t_start = time.perf_counter()
    with _metrics_writer(cfg.output / "metrics.csv", append=start > 0, enabled=rank == 0) as write_row:
        for step, (images, labels, indices) in enumerate(loader, start=start):
            t0 = time.perf_counter()
            lr = warmup_cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)
            for g in opt.param_groups:
                g["lr"] = lr
            images = images.float().to(cfg.device)
            labels = torch.as_tensor(labels, dtype=torch.long).to(cfg.device)
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 2, rank))
            if reference is not None:
                reference.bind(indices)
            out = train_step(method, target, reference, images, labels, heads, params, opt, scaler, cfg, gen, world)
            stats = {"loss": float(out.total.detach()), **{k: float(v.detach()) for k, v in out.terms.items()}}
            stats.update(lr=lr, images_per_s=len(labels) / max(time.perf_counter() - t0, 1e-9))
            write_row(step, stats)
            if progress is not None and rank == 0:
                progress(step, stats)
            done = step + 1
            if rank == 0 and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_train_state(state_dir, target.visual, opt, done, meta, reference)
    target.eval()
    if rank != 0:  # rank 0 owns every file and the evaluation
        return target, {}
    if reference is not None:
        log.info("frozen model: %d clean outputs computed, %d read back", reference.computed, reference.hits)
    save_train_state(state_dir, target.visual, opt, cfg.steps, meta, reference)
    card = model_card(cfg, target, base_record, base_digest, data, template, evaluate_model(cfg, target), time.perf_counter() - t_start)
    _write_final(cfg.output / "final", target, base_record.model_copy(update={"name": card.name, "description": card.description}),
                 meta, card)
    return target, card.model_dump(mode="json")


def _resume(cfg: FinetuneConfig, state_dir: Path, target: PixelCLIP, opt: torch.optim.Optimizer,
            reference: Optional[FrozenReference]) -> int:
    """The step to start at: 0, or the saved one when `cfg.resume` finds a compatible state (loaded in place)."""
    if not (cfg.resume and has_train_state(state_dir)):
        return 0
    start, saved = load_train_state(state_dir, target.visual, opt, reference)
    _check_resumable(saved, cfg)
    log.info("resumed %s at step %d of %d", cfg.method, start, cfg.steps)
    return start


def _write_final(folder: Path, target: PixelCLIP, record: Any, meta: dict[str, Any], card: Any) -> None:
    """The fine-tuned checkpoint (with its run config) and model card in `folder`."""
    save_checkpoint(folder, record, target.clip.state_dict(), extra={RUN_CONFIG: meta})
    write_card_file(folder / MODEL_CARD, card)


RESUME_KEYS = ("method", "model", "pretrained", "weights", "data", "data_limit", "image_size", "preprocess", "batch_size",
               "steps", "lr", "optimizer", "warmup", "eps", "attack_alpha", "attack_steps", "method_params", "seed")


def _check_resumable(saved: dict, cfg: FinetuneConfig) -> None:
    """Refuse to resume a run whose state was written with different training settings."""
    now = cfg.model_dump(mode="json")
    diff = [k for k in RESUME_KEYS if k in saved and saved[k] != now[k]]
    if diff:
        raise ConfigError(f"cannot resume {cfg.output}: settings differ from the saved run ({', '.join(diff)}); use another --output")


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
