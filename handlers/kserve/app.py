"""The KServe model server process for clipshield: `python -m clipshield.handlers.kserve.app --bundle DIR ...`.

Wires `clipshield.handlers.kserve.model.ClipshieldKServeModel` into kserve's `ModelServer` (REST v2 on one port,
Prometheus `/metrics` on the same port; gRPC v2 optional) and adds three things kserve's app lacks:
`ClipshieldError` -> its own HTTP status in the protocol's error shape (kserve maps unknown exceptions
to 500), a request body limit (TorchServe's frontend refuses bodies over `max_request_size`), and
the model card in the model-metadata answer. Started and stopped by `handlers/kserve/launcher.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024  # as TorchServe's max_request_size in model_store/config.properties


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Options of the server process (distinct from kserve's own `--http_port` style flags)."""
    p = argparse.ArgumentParser(prog="python -m clipshield.handlers.kserve.app", description=__doc__)
    p.add_argument("--bundle", type=Path, required=True, help="serving bundle folder (`clipshield export --out`)")
    p.add_argument("--model-name", default="clipshield", help="name in /v2/models/<name> (default: %(default)s)")
    p.add_argument("--host-port", type=int, default=8080, help="REST v2 + /metrics port (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC v2 port; 0 = gRPC off (default)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    return p.parse_args(argv)


def install_routes(app: Any, model: Any, max_body_bytes: int) -> None:
    """Error mapping, body limit and metadata-with-card on kserve's FastAPI app (before kserve's routes)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import ORJSONResponse
    from kserve.errors import ModelNotFound

    from clipshield.handlers.kserve.model import error_body
    from clipshield.service.errors import BadInput, ClipshieldError, PayloadTooLarge

    async def clipshield_error(_request: Request, exc: ClipshieldError) -> ORJSONResponse:
        return ORJSONResponse(status_code=exc.http_status, content=error_body(exc))

    async def invalid_request(request: Request, exc: RequestValidationError) -> ORJSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:3])
        return await clipshield_error(
            request, BadInput(f"not a valid v2 inference request: {first.get('msg', 'invalid')} at {where or 'body'}")
        )

    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body_bytes:
            return await clipshield_error(request, PayloadTooLarge(f"request body of {length} bytes; the limit is {max_body_bytes} bytes"))
        if "content-type" not in request.headers and "inference-header-content-length" not in request.headers:
            # tritonclient sends a plain JSON body without Content-Type; FastAPI would then hand kserve bytes.
            request.scope["headers"] = [*request.scope["headers"], (b"content-type", b"application/json")]
        return await call_next(request)

    async def metadata(model_name: str) -> dict:
        if model_name != model.name or model.service is None:
            raise ModelNotFound(model_name)
        return model.metadata()

    app.add_exception_handler(ClipshieldError, clipshield_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.middleware("http")(limit_body)
    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])


def decoding_dataplane(registry: Any) -> Any:
    """kserve's DataPlane whose request decoding failures are the client's 400, not a 500.

    kserve 0.21's REST decoder re-encodes binary-extension BYTES tensors as UTF-8 text and raises its
    InferenceError (500) on image bytes; the model never raises it, so here it always means a bad request.
    """
    from kserve.errors import InferenceError
    from kserve.protocol.dataplane import DataPlane

    from clipshield.service.errors import BadInput

    class DecodingDataPlane(DataPlane):
        def decode(self, body: Any, headers: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().decode(body, headers, *args, **kwargs)
            except InferenceError as exc:
                log.info("request refused by kserve's decoder: %.200s", exc)
                raise BadInput(
                    "request could not be decoded: BYTES tensors must hold UTF-8 text over REST (send images base64-encoded)"
                ) from exc

    return DecodingDataPlane(model_registry=registry)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Load the bundle, then serve until SIGTERM/SIGINT."""
    args = parse_args(argv)
    # kserve parses sys.argv when model_server is imported: hand it none of ours.
    import sys

    sys.argv = sys.argv[:1]
    from kserve import ModelServer
    from kserve.model_server import app
    from prometheus_client import REGISTRY

    from clipshield.handlers.kserve.model import ClipshieldKServeModel
    from clipshield.service.errors import ClipshieldError
    from clipshield.service.metrics import PrometheusClientSink
    from clipshield.service.settings import load_serving_config

    config = load_serving_config(args.bundle / "serving.json", os.environ)
    model = ClipshieldKServeModel(args.model_name, args.bundle, config, PrometheusClientSink(REGISTRY))  # kserve's /metrics serves REGISTRY
    try:
        model.load()
    except ClipshieldError as exc:  # one line, no traceback: a refused bundle is an operator's error
        log.error("clipshield: model %s not loaded: %s", args.model_name, exc)
        return 1
    install_routes(app, model, args.max_body_bytes)
    server = ModelServer(http_port=args.host_port, grpc_port=args.grpc_port or 8081, enable_grpc=args.grpc_port > 0, workers=1)
    server.dataplane = decoding_dataplane(server.registered_models)
    server.start([model])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
