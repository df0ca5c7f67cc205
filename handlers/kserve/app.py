"""The KServe model server process for clipshield: `python -m clipshield.handlers.kserve.app --bundle DIR ...`.

Wires `clipshield.handlers.kserve.model.ClipshieldKServeModel` into kserve's `ModelServer` (REST v2 on one port,
Prometheus `/metrics` on the same port; gRPC v2 optional) and adds what kserve's app lacks:
`ClipshieldError` -> its own HTTP status in the protocol's error shape (kserve maps unknown exceptions
to 500), a request body limit (TorchServe's frontend refuses bodies over `max_request_size`), the
model card in the model-metadata answer, every inference response counted by status class with its
whole-request latency (`SERVER_METRICS`), binary-extension inputs kept as bytes, and listeners bound
to one interface. Started and stopped by `handlers/kserve/launcher.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024  # as TorchServe's max_request_size in model_store/config.properties


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Options of the server process (distinct from kserve's own `--http_port` style flags)."""
    from clipshield.handlers.kserve.batcher import DEFAULT_MAX_BATCH_DELAY_MS, DEFAULT_MAX_BATCH_SIZE

    p = argparse.ArgumentParser(prog="python -m clipshield.handlers.kserve.app", description=__doc__)
    p.add_argument("--bundle", type=Path, required=True, help="serving bundle folder (`clipshield export --out`)")
    p.add_argument("--model-name", default="clipshield", help="name in /v2/models/<name> (default: %(default)s)")
    p.add_argument("--host-port", type=int, default=8080, help="REST v2 + /metrics port (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC v2 port; 0 = gRPC off (default)")
    p.add_argument("--state-dir", type=Path, default=None, help="folder of refresh.json / refreshed.json: SIGHUP refreshes the model")
    p.add_argument(
        "--bind-host",
        default="0.0.0.0",
        help="interface REST and gRPC listen on (default: %(default)s, as a container needs; `clipshield serve` passes 127.0.0.1)",
    )
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="images per cross-request batch; 1 = each request on its own (default: %(default)s, docs/serving.md)",
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=DEFAULT_MAX_BATCH_DELAY_MS,
        help="longest wait for a batch to fill, from its first request (default: %(default)s)",
    )
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

    async def count_response(request: Request, call_next: Any) -> Any:
        """Every inference response by status class, and its whole-request latency (SERVER_METRICS), kserve's
        own failures included: an exception that escapes every handler is the 500 the client gets."""
        if not request.url.path.endswith("/infer"):
            return await call_next(request)
        start, status = time.perf_counter(), 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            model.metrics.increment("clipshield_http_responses_total", labels={"code_class": f"{status // 100}xx"})
            model.metrics.observe("clipshield_http_request_seconds", time.perf_counter() - start)

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
    app.middleware("http")(count_response)  # added last: outermost, so it sees the body limit's 413 too
    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])


def decoding_dataplane(registry: Any) -> Any:
    """kserve's DataPlane with three repairs: binary-extension BYTES reach the model as the bytes sent
    (`handlers/kserve/binary.py`), request decoding failures are the client's 400 (kserve answers 500), and
    over gRPC a refused item is INVALID_ARGUMENT (kserve maps any exception but its own to INTERNAL)."""
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InferenceError, InvalidInput
    from kserve.protocol.dataplane import DataPlane

    from clipshield.handlers.kserve.binary import request_from_bytes
    from clipshield.service.errors import BadInput, ClipshieldError

    class DecodingDataPlane(DataPlane):
        def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> Any:
            length = (headers or {}).get(INFERENCE_CONTENT_LENGTH_HEADER)
            if isinstance(body, bytes) and length is not None:
                if not str(length).isdigit():
                    raise BadInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} must be a byte count, not {str(length)[:20]!r}")
                return request_from_bytes(body, int(length), model_name)
            try:
                return super().decode_inference_request(body, headers, model_name)
            except InferenceError as exc:
                log.info("request refused by kserve's decoder: %.200s", exc)
                raise BadInput(f"request could not be decoded: {exc}") from exc

        async def infer(self, model_name: str, request: Any, headers: Any = None) -> Any:
            try:
                return await super().infer(model_name, request, headers)
            except ClipshieldError as exc:
                if getattr(request, "from_grpc", False) and exc.http_status < 500:
                    raise InvalidInput(f"{type(exc).__name__} ({exc.http_status}): {exc}") from exc
                raise

    return DecodingDataPlane(model_registry=registry)


def grpc_server_class(host: str, max_body_bytes: int) -> Any:
    """kserve's `GRPCServer` listening on `host` (kserve binds [::]), with the REST body limit as its message
    limit and the model's versions and platform in its metadata answer (kserve's servicer leaves them out)."""
    from grpc import aio  # type: ignore[import-untyped]  # grpcio ships no stubs
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

    class MetadataServicer(InferenceServicer):
        async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's RPC name)
            answer = await super().ModelMetadata(request, context)
            described = self._data_plane.get_model_from_registry(request.name).metadata()
            answer.versions.extend(described["versions"])
            answer.platform = described["platform"]
            return answer

    class BoundGRPCServer(GRPCServer):
        async def start(self, max_workers: int) -> None:
            server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[("grpc.max_receive_message_length", max_body_bytes)],
            )
            servicer = MetadataServicer(self._data_plane, self._model_repository_extension)
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
            server.add_insecure_port(f"{host}:{self._port}")
            self._server = server
            await server.start()
            await server.wait_for_termination()

    return BoundGRPCServer


def bound_model_server(host: str, http_port: int, grpc_port: int, max_body_bytes: int) -> Any:
    """kserve's `ModelServer` (one process) listening on `host` only: kserve 0.21 binds REST to 0.0.0.0 and
    gRPC to [::] with no option, which would put a laptop's unauthenticated server on every network."""
    from kserve import ModelServer
    from kserve.protocol.rest.server import RESTServer

    grpc_server = grpc_server_class(host, max_body_bytes)

    class BoundModelServer(ModelServer):
        def start(self, models: list[Any]) -> None:
            for model in models:
                self.register_model(model)
                model.start()
            rest = RESTServer(
                "kserve.model_server:app",
                self.dataplane,
                self.model_repository_extension,
                http_port,
                grace_period=self.grace_period,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            rest.config.host = host  # read by uvicorn when it binds, after this point
            self.servers.append(rest.start())
            if grpc_port:
                self._grpc_server = grpc_server(grpc_port, self.dataplane, self.model_repository_extension, kwargs={})
                self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    return BoundModelServer(http_port=http_port, grpc_port=grpc_port or 8081, enable_grpc=False, workers=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Load the bundle, then serve until SIGTERM/SIGINT (SIGHUP: switch to the bundle named in the state folder)."""
    args = parse_args(argv)
    # kserve parses sys.argv when model_server is imported: hand it none of ours.
    import sys

    sys.argv = sys.argv[:1]
    from kserve.model_server import app
    from prometheus_client import REGISTRY

    from clipshield.handlers.kserve.batcher import KServeBatchingConfig
    from clipshield.handlers.kserve.model import ClipshieldKServeModel
    from clipshield.service.config import flag_config
    from clipshield.service.errors import ClipshieldError
    from clipshield.service.metrics import PrometheusClientSink
    from clipshield.service.settings import load_serving_config

    config = load_serving_config(args.bundle / "serving.json", os.environ)
    try:
        batching = flag_config(
            KServeBatchingConfig,
            {"max_batch_size": "max-batch-size", "max_batch_delay_ms": "max-batch-delay-ms"},
            max_batch_size=args.max_batch_size,
            max_batch_delay_ms=args.max_batch_delay_ms,
        )
    except ClipshieldError as exc:
        log.error("clipshield: %s", exc)
        return 2
    model = ClipshieldKServeModel(
        args.model_name, args.bundle, config, PrometheusClientSink(REGISTRY), batching
    )  # kserve's /metrics serves REGISTRY
    try:
        model.load()
    except ClipshieldError as exc:  # one line, no traceback: a refused bundle is an operator's error
        log.error("clipshield: model %s not loaded: %s", args.model_name, exc)
        return 1
    install_routes(app, model, args.max_body_bytes)
    if args.state_dir is not None:  # SIGHUP: load the bundle named in refresh.json beside this one, then switch
        from clipshield.handlers.kserve.refresh import install_refresh_handler

        install_refresh_handler(
            lambda bundle: model.replace(bundle, load_serving_config(bundle / "serving.json", os.environ)), args.state_dir
        )
    server = bound_model_server(args.bind_host, args.host_port, args.grpc_port, args.max_body_bytes)
    server.dataplane = decoding_dataplane(server.registered_models)
    server.start([model])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
