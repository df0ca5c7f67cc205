"""TorchServe: the handler (`handler.py`), its metrics sink, the `.mar` archive layout and the launcher."""
