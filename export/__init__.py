"""Export: the fine-tuned encoder to ONNX plus the serving bundle, its calibrations and the release gate.

`export_model(model, out_dir) -> Path` writes the bundle that both servers load (`clipshield export`);
the TorchServe archive and the server launchers live with their servers under `handlers/`.
"""

from clipshield.export.exporter import export_model, labels_from_dataset
from clipshield.export.onnx_export import ExportError

__all__ = ["ExportError", "export_model", "labels_from_dataset"]
