"""`clipshield pretrain`: train the mini-world CLIP from scratch on CPU."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from clipshield.cli.commands.common import progress
from clipshield.datasets.miniworld.worlds import WORLDS
from clipshield.service.config import flag_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train the mini-world CLIP from scratch",
        description="Train a tiny mini-world CLIP (--world miniworld: ViT 32px/patch 8, 4 layers; miniworld224: ViT-B/32 "
        "geometry) on procedurally generated "
        "image+caption data with a multi-positive contrastive loss, AdamW and warm-up + cosine. Writes resumable "
        "state every --checkpoint-every steps and the final checkpoint to OUTPUT/final. The defaults reproduce "
        "the shipped model (~5 min on 2 CPU cores).",
    )
    p.add_argument(
        "--world",
        choices=tuple(WORLDS),
        default="miniworld",
        help="miniworld: 32-px images, ViT patch 8; miniworld224: 56-px renders resized to 224, ViT-B/32 geometry "
        "(models/model_configs/miniworld-vit-b32-tiny.json; the shipped model used --steps 4000 --batch-size 64 "
        "--lr 1e-3 --warmup 100 --pool-size 20000 --teacher miniworld --init-from-teacher --distill-weight 5 --threads 2, "
        "see docs/datasets.md) (default: %(default)s)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="shipped model whose text tower is copied and locked and whose image "
        "embeddings are distilled (the shipped miniworld224 model used --teacher miniworld) (default: none, from scratch)",
    )
    p.add_argument(
        "--init-from-teacher",
        action="store_true",
        help="with --teacher: start the image tower from the teacher's (patch kernel and position grid resized to this "
        "geometry; the shipped miniworld224 model used it)",
    )
    p.add_argument(
        "--distill-weight", type=float, default=1.0, help="weight of the cosine distillation term with --teacher (default: %(default)s)"
    )
    p.add_argument("--output", type=Path, default=Path("runs/pretrain"), help="run folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3000, help="optimisation steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="image+caption pairs per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps before the cosine decay (default: %(default)s)")
    p.add_argument("--pool-size", type=int, default=40_000, help="number of distinct training images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--loss",
        choices=["multi_positive", "clip"],
        default="multi_positive",
        help="multi_positive (default): a caption is positive for every image it describes; clip: open_clip ClipLoss",
    )
    p.add_argument("--checkpoint-every", type=int, default=200, help="write resumable state every N steps (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/state if present")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads; pin for bit-identical runs (default: torch's own)")
    p.add_argument("--install", action="store_true", help="copy the result over the shipped model of --world (models/pretrained/<world>)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clipshield.models.factory import SHIPPED_MODELS
    from clipshield.training.pretrain import PretrainConfig, pretrain

    cfg = flag_config(
        PretrainConfig,
        output=args.output,
        world=args.world,
        teacher=args.teacher,
        distill_weight=args.distill_weight,
        init_from_teacher=args.init_from_teacher,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        pool_size=args.pool_size,
        seed=args.seed,
        loss=args.loss,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        threads=args.threads,
    )
    bar = progress(cfg.steps, "pretrain", "step")

    def on_step(step: int, stats: dict) -> None:
        bar.n = step + 1
        bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}", refresh=False)
        bar.refresh()

    pretrain(cfg, on_step)
    bar.close()
    final = cfg.output / "final"
    print(f"checkpoint: {final}")
    if args.install:
        import torch

        from clipshield.models.checkpoint import load_record, load_weights, save_checkpoint

        target = SHIPPED_MODELS[args.world]
        save_checkpoint(target, load_record(final), load_weights(final / "model.safetensors"), dtype=torch.float16)
        shutil.copy(final / "pretrain_config.json", target / "pretrain_config.json")
        print(f"installed as the shipped model: {target}")
    return 0
