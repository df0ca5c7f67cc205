"""weights_digest: every floating dtype the trainer uses, and unchanged bytes for fp32."""

from __future__ import annotations

import copy
import hashlib

import torch

from clipshield.models.checkpoint import weights_digest


def _numpy_digest(module: torch.nn.Module) -> str:
    """The digest as it was computed through numpy (fp32 only): the recorded digests must not change."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def test_fp32_digest_equals_the_numpy_bytes_digest() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    module.register_buffer("scale", torch.tensor(2.5))  # a 0-dim tensor too
    assert weights_digest(module) == _numpy_digest(module)


def test_bf16_and_fp16_digests_work_and_differ_from_fp32() -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3)
    digests = {dtype: weights_digest(copy.deepcopy(module).to(dtype)) for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    assert len(set(digests.values())) == 3
    assert digests[torch.bfloat16] == weights_digest(copy.deepcopy(module).to(torch.bfloat16))  # deterministic
