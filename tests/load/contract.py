"""The response contract the load test enforces on every answer (kept free of locust imports,
so the checks are unit-testable without gevent's monkey-patching).

An answer counts as a failure unless it is HTTP 200 with the documented JSON body (docs/serving.md
section 3): top-k predictions sorted by score, labels from the request's label set when one was sent,
and `purified` matching an explicit `purify` field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional

from clipshield.service.config import StrictModel

MANIFEST = "payloads.json"  # the payload folder's manifest, written by tests/load/payloads.py
RESPONSE_KEYS = frozenset({"predictions", "purified", "anchor_score", "prediction_shift", "flipped", "flagged", "model", "attack_score"})
DEFAULT_TOP_K = 5  # clipshield.service.settings.RequestLimits.default_top_k, the server default when a request sends none


class Expectation(StrictModel):
    """What one request asked for, hence what its answer must show."""

    labels: Optional[tuple[str, ...]] = None
    purify: Optional[bool] = None
    top_k: Optional[int] = None


def expected_count(expect: Expectation, default_top_k: int = DEFAULT_TOP_K) -> Optional[int]:
    """Number of predictions the server must return; None when the default label set's size is unknown."""
    k = expect.top_k or default_top_k
    return min(k, len(expect.labels)) if expect.labels is not None else k


def check_response(status: int, text: str, expect: Expectation) -> Optional[str]:
    """None when the answer honours the contract, else a one-line reason (used as locust's failure message)."""
    if status != 200:
        return f"HTTP {status}: {text[:200]}"
    try:
        body: Any = json.loads(text)
    except ValueError:
        return f"body is not JSON: {text[:200]}"
    if not isinstance(body, dict) or set(body) != RESPONSE_KEYS:
        return f"unexpected keys {sorted(body) if isinstance(body, dict) else type(body).__name__}"
    preds: Sequence[dict] = body["predictions"]
    count = expected_count(expect)
    if len(preds) != count:
        return f"{len(preds)} predictions, expected {count}"
    scores: list[Any] = [p.get("score") for p in preds]
    if not all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores) or scores != sorted(scores, reverse=True):
        return f"scores not in [0, 1] and descending: {scores}"
    if expect.labels is not None and not {p.get("label") for p in preds} <= set(expect.labels):
        return f"labels {[p.get('label') for p in preds]} not all in the requested set"
    if expect.purify is not None and body["purified"] is not expect.purify:
        return f"purified={body['purified']}, requested purify={expect.purify}"
    return None
