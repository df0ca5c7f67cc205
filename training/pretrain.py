"""Pre-training of the mini-world CLIP from scratch (contrastive, AdamW, warm-up + cosine).

The loss is CLIP's symmetric contrastive loss with multi-positive targets: in the mini world many
captions in a batch describe several images ("a red object"), and treating them as negatives slows
learning about 2x. `--loss clip` uses open_clip's plain `ClipLoss` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from clipshield.datasets.miniworld.captions import caption_for, match_matrix, vocabulary_corpus
from clipshield.datasets.miniworld.dataset import pretraining_specs, render_specs, spec_attributes
from clipshield.datasets.miniworld.worlds import WORLDS, get_world
from clipshield.models.checkpoint import save_checkpoint
from clipshield.models.factory import MODEL_CONFIGS_DIR, from_record
from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.config import ModelRecord, PreprocessConfig, StrictModel, TokenizerConfig
from clipshield.service.errors import ConfigError
from clipshield.service.tokenizer import build_compact_vocab
from clipshield.training.pretrain_teacher import distill_loss
from clipshield.training.schedule import warmup_cosine_lr
from clipshield.training.train_state import has_train_state, load_train_state, save_train_state

log = logging.getLogger(__name__)

MODEL_CONFIGS = MODEL_CONFIGS_DIR  # clipshield.models.factory: the architectures ship with the model code
ARCH_FILE = MODEL_CONFIGS / "miniworld-vit-tiny.json"


class PretrainConfig(StrictModel):
    """Settings of `clipshield pretrain` (defaults reproduce the shipped model)."""

    output: Path = Path("runs/pretrain")
    world: Literal[tuple(WORLDS)] = "miniworld"  # type: ignore[valid-type]
    steps: int = Field(default=3000, gt=0)
    batch_size: int = Field(default=128, gt=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = 0.1
    warmup: int = 100
    pool_size: int = Field(default=40_000, gt=0)
    seed: int = 0
    world_seed: int = 0
    loss: Literal["multi_positive", "clip"] = "multi_positive"
    checkpoint_every: int = 200
    resume: bool = False
    threads: Optional[int] = None
    teacher: Optional[str] = None  # shipped model whose text tower is locked in and whose image embeddings are distilled
    distill_weight: float = Field(default=1.0, ge=0.0)
    init_from_teacher: bool = False  # with `teacher`: start the image tower from the teacher's (`transfer_vision_tower`)
    resized_pool_gib: float = Field(default=8.0, ge=0.0)  # resize the whole pool once when it fits in this much memory

    @model_validator(mode="after")
    def _teacher_for_init(self) -> PretrainConfig:
        if self.init_from_teacher and self.teacher is None:
            raise ConfigError("--init-from-teacher needs --teacher (a shipped model, e.g. miniworld)")
        return self


def miniworld_record(name: str = "miniworld-vit-tiny", arch_file: Path = ARCH_FILE) -> ModelRecord:
    """Record of a mini-world architecture (default: the 32-px world's) with its compact vocabulary."""
    arch = json.loads(arch_file.read_text())
    bpe_ids = build_compact_vocab(vocabulary_corpus())
    tok = TokenizerConfig(kind="compact", context_length=arch["text_cfg"]["context_length"], bpe_ids=bpe_ids)
    arch["text_cfg"]["vocab_size"] = tok.vocab_size
    return ModelRecord(
        name=name,
        arch=arch,
        preprocess=PreprocessConfig(image_size=arch["vision_cfg"]["image_size"]),
        tokenizer=tok,
        description="Tiny ViT CLIP pre-trained on the procedurally generated mini world (CPU, minutes).",
    )


def multi_positive_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with soft targets spread over every matching pair.

    `logits` [B_img, B_txt] scaled similarities; `match` bool [B_img, B_txt], diagonal True.
    """
    target = match.float()
    i2t = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


def to_model_pixels(images: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """float [B, 3, S, S] in [0, 1] from a uint8 batch [B, 3, R, R]: resized through `to_pixels` when R != S."""
    if images.shape[-1] == cfg.image_size:
        return images.float() / 255.0
    from clipshield.datasets.miniworld_sets import preprocess_uint8

    return preprocess_uint8(images, cfg)


class PixelPool:
    """The pre-training images, handed out as model pixels float [B, 3, S, S] in [0, 1].

    The pool is rendered uint8 [N, 3, R, R]. When R != S and the pool at S in uint8 fits in `max_gib`, it is
    resized once (`to_pixels` answers uint8 / 255, so the cached uint8 gives the same floats bit for bit);
    otherwise every batch is resized on the fly. Measured on 2 cores (ViT width 128, batch 64): resizing
    56 -> 224 per batch cost 0.06-0.07 s of a 0.27 s step.
    """

    def __init__(self, images: torch.Tensor, cfg: PreprocessConfig, max_gib: float, chunk: int = 512) -> None:
        self.cfg = cfg
        self.images = images
        nbytes = images.shape[0] * images.shape[1] * cfg.image_size**2
        if images.shape[-1] != cfg.image_size and nbytes <= max_gib * 2**30:
            log.info("resizing the pool once to %d px (%.1f GiB uint8)", cfg.image_size, nbytes / 2**30)
            parts = [to_model_pixels(images[i : i + chunk], cfg).mul_(255.0).round_().to(torch.uint8) for i in range(0, len(images), chunk)]
            self.images = torch.cat(parts)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return to_model_pixels(self.images[idx], self.cfg)


class CaptionBatcher:
    """Draws (image indices, tokenised captions, match matrix) for a step, from (seed, step) only."""

    def __init__(self, model: PixelCLIP, attrs: np.ndarray, batch_size: int, seed: int) -> None:
        self.model, self.attrs, self.batch_size, self.seed = model, attrs, batch_size, seed
        self._token_cache: dict[str, torch.Tensor] = {}

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._token_cache]
        if missing:
            for t, row in zip(missing, self.model.tokenizer(missing)):
                self._token_cache[t] = torch.from_numpy(row)
        return torch.stack([self._token_cache[t] for t in texts])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.choice(len(self.attrs), size=self.batch_size, replace=False)
        attrs = self.attrs[idx]
        caps, mentions = zip(*(caption_for(int(a[0]), int(a[1]), int(a[2]), int(a[3]), rng) for a in attrs))
        match = torch.from_numpy(match_matrix(attrs, np.stack(mentions)))
        return torch.from_numpy(idx), self._tokens(list(caps)), match


def _warm_start(cfg: PretrainConfig, model: PixelCLIP, specs: list) -> Optional[torch.Tensor]:
    """With `cfg.teacher`: lock the teacher's text tower into `model`, return its image embeddings [N, E] of `specs`."""
    if cfg.teacher is None:
        return None
    from clipshield.models.factory import load_model
    from clipshield.training.pretrain_teacher import lock_text_tower, teacher_targets

    teacher = load_model(cfg.teacher)
    lock_text_tower(model, teacher)
    log.info("text tower locked from %s", cfg.teacher)
    if cfg.init_from_teacher:
        from clipshield.training.pretrain_teacher import transfer_vision_tower

        log.info("image tower started from %s (%d tensors)", cfg.teacher, transfer_vision_tower(model, teacher))
    log.info("computing the teacher's image embeddings of %d scenes", len(specs))
    return teacher_targets(teacher, specs)


def _adamw(model: PixelCLIP, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def pretrain(cfg: PretrainConfig, progress: Optional[Callable[[int, dict], None]] = None) -> PixelCLIP:
    """Train the mini-world CLIP; writes resumable state and the final checkpoint to `cfg.output`."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = get_world(cfg.world)
    record = miniworld_record(Path(world.arch_file).stem, MODEL_CONFIGS / world.arch_file)
    model = from_record(record)
    model.train()
    specs = pretraining_specs(cfg.pool_size, cfg.world_seed)
    log.info("rendering %d pre-training images at %d px", len(specs), world.render_size)
    images = PixelPool(render_specs(specs, world.render_size), record.preprocess, cfg.resized_pool_gib)
    targets = _warm_start(cfg, model, specs)
    batcher = CaptionBatcher(model, spec_attributes(specs), cfg.batch_size, cfg.seed)
    opt = _adamw(model, cfg)
    clip_loss = None
    if cfg.loss == "clip":
        from open_clip.loss import ClipLoss

        clip_loss = ClipLoss()
    start = 0
    state_dir = cfg.output / "state"
    if cfg.resume and has_train_state(state_dir):
        start, _ = load_train_state(state_dir, model, opt)
        log.info("resumed at step %d", start)
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)
        idx, tokens, match = batcher.batch(step)
        img = model.encode_image(images[idx], normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale_param.exp()
        if clip_loss is not None:
            loss = clip_loss(img, txt, scale)
        else:
            loss = multi_positive_loss(scale * img @ txt.t(), match)
        distill = distill_loss(img, targets[idx]) if targets is not None else torch.zeros(())
        loss = loss + cfg.distill_weight * distill
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale_param.clamp_(0, np.log(100.0))
        if progress is not None:
            progress(step, {"loss": float(loss.detach()), "lr": opt.param_groups[0]["lr"], "scale": float(scale.detach())})
        done = step + 1
        if done % 25 == 0:
            log.info("step %d/%d loss %.3f (distillation %.3f)", done, cfg.steps, float(loss.detach()), float(distill.detach()))
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_train_state(state_dir, model, opt, done, cfg.model_dump(mode="json"))
    model.eval()
    save_checkpoint(cfg.output / "final", record, model.clip.state_dict(), extra={"pretrain_config.json": cfg.model_dump(mode="json")})
    save_train_state(state_dir, model, opt, cfg.steps, cfg.model_dump(mode="json"))
    return model
