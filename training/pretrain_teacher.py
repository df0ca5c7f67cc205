"""Warm start of a mini-world CLIP from a trained one: text tower locked, image tower distilled.

`clipshield pretrain --world miniworld224 --teacher miniworld` copies the shipped 32-px model's text
tower and logit scale into the 224-px model and freezes them (the two share the compact vocabulary and
the text architecture), and adds a distillation term pulling each 224-px image embedding towards the
teacher's embedding of the same scene rendered at the teacher's own size. Measured reason: from scratch,
the 224-px model was still at chance (2.1 % colour+shape top-1, loss 2.80) after 200 of 500 steps on the
shared 2-core machine, where a step took ~6 s; the 25-minute budget allows a few hundred steps at most.

`--init-from-teacher` also starts the image tower from the teacher's (`transfer_vision_tower`): the same
transformer blocks, the 8x8 patch kernel resized to the 32x32 patch and the 4x4 position grid to 7x7.
Measured reason (docs/datasets.md): from that start, 300 steps reach 73-87 % colour+shape top-1 in every
domain, where the distilled-only start was at 18 % after 500 steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipshield.datasets.miniworld.dataset import render_specs
from clipshield.datasets.miniworld.render import ImageSpec
from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.errors import ConfigError


def lock_text_tower(student: PixelCLIP, teacher: PixelCLIP) -> int:
    """Copy every non-image parameter (text tower, logit scale) from `teacher` and freeze it; returns the count.

    Raises ConfigError when the two models' text architectures or vocabularies differ.
    """
    student_arch, teacher_arch = student.record.arch or {}, teacher.record.arch or {}
    if student_arch.get("text_cfg") != teacher_arch.get("text_cfg") or student.record.tokenizer != teacher.record.tokenizer:
        raise ConfigError(
            f"teacher {teacher.record.name!r} has another text tower or vocabulary than {student.record.name!r}; "
            "a teacher must share text_cfg, embed_dim and the tokenizer"
        )
    source = teacher.clip.state_dict()
    copied = 0
    for name, param in student.clip.named_parameters():
        if name.startswith("visual."):
            continue
        with torch.no_grad():
            param.copy_(source[name].to(param.dtype))
        param.requires_grad_(False)
        copied += 1
    return copied


@torch.no_grad()
def teacher_targets(teacher: PixelCLIP, specs: list[ImageSpec], batch_size: int = 512) -> torch.Tensor:
    """float [N, E]: the teacher's unit image embeddings of `specs` rendered at the teacher's input size."""
    teacher.eval()
    size = teacher.record.preprocess.image_size
    out = []
    for start in range(0, len(specs), batch_size):
        pixels = render_specs(specs[start : start + batch_size], size).float() / 255.0
        out.append(teacher.encode_image(pixels, normalize=True).float())
    return torch.cat(out)


def distill_loss(image_embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between unit embeddings [B, E] and the teacher's [B, E]."""
    return (1.0 - F.cosine_similarity(image_embeddings, targets, dim=-1)).mean()


def _grid_side(positions: int) -> int:
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise ConfigError(f"position embedding of {positions} rows is not a square grid plus the class token")
    return side


def resized_patch_kernel(kernel: torch.Tensor, patch: int) -> torch.Tensor:
    """Patch-embedding kernel [W, 3, p, p] -> [W, 3, patch, patch] answering a `patch/p`-times upsampled input
    as the original answers the original: bilinear resize divided by the area ratio (FlexiViT's idea, with
    bilinear instead of the pseudo-inverse)."""
    scale = (patch / kernel.shape[-1]) ** 2
    return F.interpolate(kernel.float(), size=(patch, patch), mode="bilinear", align_corners=False) / scale


def resized_positions(positions: torch.Tensor, side: int) -> torch.Tensor:
    """Position embedding [1 + g*g, W] -> [1 + side*side, W]: class row kept, the g x g grid resized bicubically."""
    grid = _grid_side(positions.shape[0])
    cells = positions[1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    cells = F.interpolate(cells, size=(side, side), mode="bicubic", align_corners=False)
    return torch.cat([positions[:1].float(), cells.permute(0, 2, 3, 1).reshape(side * side, -1)])


@torch.no_grad()
def transfer_vision_tower(student: PixelCLIP, teacher: PixelCLIP) -> int:
    """Start `student`'s image tower from `teacher`'s at another input geometry; returns the tensors copied.

    Every transformer, norm and projection tensor is copied as is; the patch kernel goes through
    `resized_patch_kernel` and the position grid through `resized_positions`. Raises ConfigError when the
    two towers differ in anything but image and patch size (width, depth, heads).
    """
    source = teacher.clip.state_dict()
    copied = 0
    for name, param in student.clip.named_parameters():
        if not name.startswith("visual."):
            continue
        value = source.get(name)
        if name == "visual.conv1.weight" and value is not None:
            value = resized_patch_kernel(value, param.shape[-1])
        elif name == "visual.positional_embedding" and value is not None:
            value = resized_positions(value, _grid_side(param.shape[0]))
        if value is None or value.shape != param.shape:
            raise ConfigError(
                f"cannot start {student.record.name!r}'s image tower from {teacher.record.name!r}: {name} differs "
                "(the towers must share width, layers and heads; only image and patch size may differ)"
            )
        param.copy_(value.to(param.dtype))
        copied += 1
    return copied
