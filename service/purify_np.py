"""NumPy zero-shot head and per-sample CLIPure-Cos purification for the ONNX Runtime serving path.

Same algebra as `clipshield.models.purify.purify_embeddings(mode="per_sample")` (docs/methods.md §7.2 with the
step normalised per sample, not over the batch), written with the analytic gradient of the cosine
so serving needs no autograd. Every operation is row-wise, so a request's result never depends on
which other requests share its batch: sample b moves by `step_size` times its own unit tangent
direction towards the anchor, then is renormalised (a rotation by arctan(step_size) per step, so
the L2 distance it moves a unit-norm embedding is the same for every input; `prediction_shift`
measures what purification did to the answer instead).
"""

from __future__ import annotations

import numpy as np

_TINY = np.finfo(np.float32).tiny


def _rownorm(x: np.ndarray) -> np.ndarray:
    norms: np.ndarray = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    return norms


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise unit-norm copy of float32 [B, E]."""
    unit: np.ndarray = x / np.maximum(_rownorm(x), 1e-12)
    return unit


def cosine(x: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Cosine [B] between each row of x [B, E] and anchor [E]."""
    a = anchor[None, :].astype(np.float32)
    cos = np.sum(x * a, axis=-1) / np.maximum(_rownorm(x)[:, 0] * float(np.linalg.norm(a)), 1e-8)
    return np.asarray(cos, dtype=np.float32)


def purify(embeddings: np.ndarray, anchor: np.ndarray, steps: int, step_size: float) -> np.ndarray:
    """Purified embeddings [B, E] float32 (norm of each row preserved).

    Tensor contract: embeddings float32 [B, E] (normally unit-norm), anchor float32 [E].
    """
    e = np.asarray(embeddings, dtype=np.float32)
    a = np.asarray(anchor, dtype=np.float32)[None, :]
    a_norm = np.float32(np.linalg.norm(a))
    for _ in range(steps):
        r = _rownorm(e)
        u = e / r
        # d(-cos(e, a))/de = -(a / (|e||a|) - cos * e / |e|^2)
        cos = np.sum(e * a, axis=-1, keepdims=True) / (r * a_norm)
        g = -(a / (r * a_norm) - cos * e / (r * r))
        gu = r * g
        move = -gu / np.maximum(_rownorm(gu), _TINY)
        u = u + np.float32(step_size) * move
        u = u / _rownorm(u)
        e = (r * u).astype(np.float32)
    return e


def logits(embeddings: np.ndarray, head: np.ndarray, scale: float) -> np.ndarray:
    """Scaled cosine logits [B, C] for embeddings [B, E] and unit-norm class embeddings head [C, E].

    Computed row by row (not one GEMM) so that each row is bit-identical whatever the batch size.
    """
    e = normalize(np.asarray(embeddings, dtype=np.float32))
    return np.asarray(np.stack([np.float32(scale) * (head @ row) for row in e]), dtype=np.float32)


def prediction_shift(before: np.ndarray, after: np.ndarray) -> float:
    """Total-variation distance (in [0, 1]) between two class-probability vectors [C].

    How much probability mass purification moved between labels: it depends on where the input
    sits relative to the class embeddings, unlike the L2 shift of the embedding itself, which is the
    same rotation for every input under per-sample purification.
    """
    return float(0.5 * np.abs(np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)).sum())


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [B, C]."""
    z = x - x.max(axis=-1, keepdims=True)
    p = np.exp(z)
    probs: np.ndarray = p / p.sum(axis=-1, keepdims=True)
    return probs
