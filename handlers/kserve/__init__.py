"""KServe (Open Inference Protocol v2): the model adapter, the server process (`app.py`) and its launcher."""
