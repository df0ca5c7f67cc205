"""Export: the fine-tuned encoder to ONNX plus the serving bundle, its calibrations and the release gate.

`export_model(model, out_dir) -> Path` writes the bundle that both servers load (`clipshield export`);
the TorchServe archive and the server launchers live with their servers under `handlers/`. Importing the
package loads nothing heavy: `clipshield release` (`release_gate.py`) runs in the torch-free serving install,
so the exporter (torch) loads on first use of `export_model` / `labels_from_dataset`.
"""

from __future__ import annotations

from typing import Any

from clipshield.service.errors import ExportError

__all__ = ["ExportError", "export_model", "labels_from_dataset"]


def __getattr__(name: str) -> Any:
    """`export_model` and `labels_from_dataset` from the exporter, imported on first use (PEP 562)."""
    if name in ("export_model", "labels_from_dataset"):
        from clipshield.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
