"""The frozen original model and a memory of its outputs on clean training images.

TGA-ZSR and Comp-TGA compare the target's attention maps with the frozen model's map of the clean
image (A(phi, x, t_y)); FARE compares with the frozen model's clean embedding f_phi(x), and needs it
twice per step (attack and loss). The frozen model never changes and the training transforms are
deterministic (docs/methods.md §0.5: no augmentation), so these outputs are the same for an image in every epoch:
they are computed once per data set item and then read back. That removes the frozen forward from
every step after the first epoch (docs/methods.md §3.2: no duplicate forwards of the frozen model).

The memory is explicit: `FrozenReference.for_batch(indices)` gives the step's `FrozenBatch` (phi, the
memory and the batch's data set indices), which the loop puts into the losses' `LossInputs`; a
plain `FrozenBatch(model)` has no memory (parity tests, one-off calls).

What is kept is small (TGA-ZSR: the g x g grid, 49 floats per image on ViT-B/32; FARE: one
embedding), allocated per data set up to a memory budget; past the budget the outputs are computed
every step as before. Within a step, a second request for the same output is served from the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Optional

import torch

from clipshield.models.pixel_model import PixelCLIP

log = logging.getLogger(__name__)

# compute(frozen model, rows) -> outputs [len(rows), ...] for the step's batch positions `rows` (int, on the
# images' device); the function closes over the step's clean images (and labels, for the maps)
Compute = Callable[[PixelCLIP, torch.Tensor], torch.Tensor]


class FrozenReference:
    """The frozen model phi plus its remembered clean-image outputs, keyed by data set index.

    `for_batch(indices)` gives the `FrozenBatch` of a training step over data set items `indices`
    [B] (None: nothing remembered across steps); its `clean(name, images, compute)` returns phi's
    outputs for the whole batch without gradient, from memory where it can.
    """

    def __init__(self, model: PixelCLIP, dataset_size: int = 0, budget_mb: float = 1024.0) -> None:
        self.model = model
        self.dataset_size = dataset_size
        self.budget_bytes = budget_mb * 2**20
        self.hits = 0
        self.computed = 0
        self._values: dict[str, torch.Tensor] = {}
        self._filled: dict[str, torch.Tensor] = {}
        self._over_budget: set[str] = set()

    def for_batch(self, indices: Optional[torch.Tensor]) -> FrozenBatch:
        """The frozen model of a step over data set items `indices` (int [B], no repeats), or None."""
        return FrozenBatch(self.model, self, None if indices is None else torch.as_tensor(indices, dtype=torch.long).cpu())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The remembered outputs (saved with the training state so a resumed run reads the same values)."""
        state: dict[str, torch.Tensor] = {}
        for name, values in self._values.items():
            state[f"{name}.values"] = values.detach().cpu().contiguous()
            state[f"{name}.filled"] = self._filled[name].cpu().contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned (entries for another data set size are ignored)."""
        for key, values in state.items():
            name, kind = key.rsplit(".", 1)
            if kind != "values" or values.shape[0] != self.dataset_size:
                continue
            device = self.model.mean.device
            self._values[name] = values.to(device)
            self._filled[name] = state[f"{name}.filled"].to(device)

    def compute(self, rows: torch.Tensor, compute: Compute) -> torch.Tensor:
        """`compute(phi, rows)` without gradient, counted."""
        self.computed += rows.shape[0]
        with torch.no_grad():
            return compute(self.model, rows)

    def remembered(self, name: str, indices: Optional[torch.Tensor], images: torch.Tensor, compute: Compute) -> torch.Tensor:
        """Outputs [B, ...] for `images` [B,3,H,W], the data set items `indices` [B] (None: computed)."""
        every = torch.arange(images.shape[0], device=images.device)
        if indices is None or name in self._over_budget or self.dataset_size == 0:
            return self.compute(every, compute)
        if indices.shape[0] != images.shape[0]:
            raise ValueError(f"frozen reference bound to {indices.shape[0]} indices but given {images.shape[0]} images")
        if name not in self._values:
            out = self.compute(every, compute)
            if self._allocate(name, out):
                self._store(name, indices, out)
            return out
        filled = self._filled[name]
        dev_idx = indices.to(filled.device)
        missing = ~filled[dev_idx]
        if bool(missing.any()):
            rows = missing.nonzero().squeeze(1)
            self._store(name, dev_idx[rows], self.compute(rows.to(images.device), compute))
        self.hits += int((~missing).sum())
        return self._values[name][dev_idx].to(images.device)

    def _allocate(self, name: str, sample: torch.Tensor) -> bool:
        row_bytes = sample[0].numel() * sample.element_size()
        need = row_bytes * self.dataset_size
        if need > self.budget_bytes:
            self._over_budget.add(name)
            log.info(
                "frozen-model %s outputs need %.0f MB for %d images, over the %.0f MB budget: computed every step",
                name,
                need / 2**20,
                self.dataset_size,
                self.budget_bytes / 2**20,
            )
            return False
        self._values[name] = torch.empty((self.dataset_size, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
        self._filled[name] = torch.zeros(self.dataset_size, dtype=torch.bool, device=sample.device)
        return True

    def _store(self, name: str, idx: torch.Tensor, values: torch.Tensor) -> None:
        self._values[name][idx] = values.detach().to(self._values[name].dtype)
        self._filled[name][idx] = True


class FrozenBatch:
    """The frozen model phi for one training step: phi, its memory (or None) and the batch's data set indices.

    Within the step a second request for the same output on the same images is served from the
    first (FARE's attack and loss share f_phi(x)); a new step gets a new `FrozenBatch`.
    """

    def __init__(self, model: PixelCLIP, memory: Optional[FrozenReference] = None, indices: Optional[torch.Tensor] = None) -> None:
        self.model = model
        self.memory = memory
        self.indices = indices
        self._shared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def clean(self, name: str, images: torch.Tensor, compute: Compute) -> torch.Tensor:
        """phi's outputs [B, ...] on this step's clean `images` [B,3,H,W], without gradient, kept under `name`."""
        seen = self._shared.get(name)
        if seen is not None and seen[0] is images:
            return seen[1]
        if self.memory is not None:
            out = self.memory.remembered(name, self.indices, images, compute)
        else:
            with torch.no_grad():
                out = compute(self.model, torch.arange(images.shape[0], device=images.device))
        self._shared[name] = (images, out)
        return out
