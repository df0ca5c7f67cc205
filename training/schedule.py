"""Learning-rate schedule shared by pre-training and fine-tuning: linear warm-up, then cosine.

Written out (five lines) rather than imported because the reference pins the exact formula
(docs/methods.md §0.4): lr_i = base*(i+1)/W for i < W, else 0.5*(1+cos(pi*(i-W)/(T-W)))*base, set before
step i. open_clip's own scheduler lives in the separate open_clip_train package.
"""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Learning rate for 0-based `step` of `total`, with `warmup` linear warm-up steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span)) * base_lr
