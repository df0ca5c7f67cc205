"""Export to ONNX, TorchServe archives and server control (issue 5).

Python API used by `clipshield export|archive|serve|demo`:
`export_model(model, out_dir) -> Path`, `build_archive(export_dir, model_store, name) -> Path`,
`start_server(model_store, ...) -> ServerHandle`, `stop_server(model_store)`,
`ServingClient(handle).predict(png, labels, purify, top_k)` and `.metrics()`,
`demo_serving.serving_demo(model, work_dir, model_store, out=print, once=...)` (the serving half of the demo).
"""

from .archive import build_archive
from .client import ServingClient
from .exporter import export_model, labels_from_dataset
from .onnx_export import ExportError
from .torchserve import ServeConfig, ServerHandle, start_server, stop_server

__all__ = [
    "ExportError",
    "ServeConfig",
    "ServerHandle",
    "ServingClient",
    "build_archive",
    "export_model",
    "labels_from_dataset",
    "start_server",
    "stop_server",
]
