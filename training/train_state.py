"""Resumable training state: model weights, optimiser state and step, all in safetensors.

Randomness in our loops is derived from (seed, step), so weights + optimiser + step are the whole
state: a resumed run continues bit-for-bit like an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from safetensors.torch import load_file

from clipshield.models.checkpoint import write_safetensors

STATE_NAME = "train_state.safetensors"
CACHE_PREFIX = "cache."


class Stateful(Protocol):
    """Extra run state kept with the weights (the frozen model's remembered outputs)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


META_NAME = "train_state.json"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            name = f"opt.{pid}.{key}"
            if torch.is_tensor(val):
                tensors[name] = val.detach().cpu().contiguous()
            else:
                scalars[name] = val
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def save_train_state(
    folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, meta: dict, extra: Optional[Stateful] = None
) -> None:
    """Write the state of a run after `step` completed steps (`extra`'s tensors too, under 'cache.')."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    if extra is not None:
        tensors.update({CACHE_PREFIX + k: v for k, v in extra.state_dict().items()})
    write_safetensors(folder / STATE_NAME, tensors)
    (folder / META_NAME).write_text(json.dumps({"step": step, "optimizer": opt_meta, "meta": meta}, indent=1))


def has_train_state(folder: Path) -> bool:
    return (folder / STATE_NAME).is_file() and (folder / META_NAME).is_file()


def load_train_state(
    folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, extra: Optional[Stateful] = None
) -> tuple[int, dict]:
    """Restore model, optimiser (and `extra`) in place; returns (completed steps, run meta)."""
    tensors = load_file(str(folder / STATE_NAME))
    if extra is not None:
        extra.load_state_dict({k[len(CACHE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(CACHE_PREFIX)})
    info = json.loads((folder / META_NAME).read_text())
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for k, v in info["optimizer"]["scalars"].items():
        _, pid, key = k.split(".", 2)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
    return int(info["step"]), info.get("meta", {})
