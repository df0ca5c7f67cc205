"""`clipshield serve --runtime kserve`: the KServe (Open Inference Protocol v2) runtime of `serve`.

Kept apart from `serve.py` (TorchServe, the default) so each runtime's options and start/stop logic
live in one place; `serve.py` only adds `--runtime` and hands over here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlparse

from clipshield.service.config import flag_config
from clipshield.service.errors import ConfigError

RUNTIMES = ("torchserve", "kserve")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """`--runtime` and the KServe-only options of `clipshield serve`."""
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torchserve",
        help="model server: TorchServe (default; archived upstream) or KServe's Python model server "
        "(Open Inference Protocol v2 on --address, loopback unless its host is 0.0.0.0; /metrics on the same port)",
    )
    p.add_argument(
        "--kserve-grpc-port",
        type=int,
        default=0,
        metavar="PORT",
        help="kserve: also serve gRPC v2 on this port, same interface as --address (default: 0 = off)",
    )
    p.add_argument(
        "--kserve-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="kserve: images per cross-request batch, 1 = each request on its own (default: the measured default, docs/serving.md)",
    )
    p.add_argument(
        "--kserve-max-batch-delay-ms",
        type=float,
        default=None,
        metavar="MS",
        help="kserve: longest wait for a batch to fill, from its first request (default: the measured default)",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="kserve: serving bundle (`clipshield export --out`); default: the no-archive folder <model-store>/<name>",
    )


def _bundle(args: argparse.Namespace) -> Path:
    bundle = args.bundle or args.model_store / args.name
    if not (bundle / "clipshield_manifest.json").is_file():
        raise ConfigError(f"no serving bundle at {bundle}; pass --bundle <clipshield export --out folder>")
    return bundle


def run_kserve(args: argparse.Namespace) -> int:
    """Start (or --stop / --ping) the KServe model server; prints how to call it."""
    from clipshield.handlers.kserve.batcher import KServeBatchingConfig
    from clipshield.handlers.kserve.launcher import (
        STATE_DIR,
        KServeConfig,
        client_host,
        model_ready,
        refresh_kserve,
        running_pid,
        start_kserve,
        stop_kserve,
    )

    state = args.model_store.resolve() / STATE_DIR
    address = urlparse(args.address)
    given = {"max_batch_size": args.kserve_batch_size, "max_batch_delay_ms": args.kserve_max_batch_delay_ms}
    batching = flag_config(
        KServeBatchingConfig,
        {"max_batch_size": "kserve-batch-size", "max_batch_delay_ms": "kserve-max-batch-delay-ms"},
        **{k: v for k, v in given.items() if v is not None},
    )
    cfg = flag_config(
        KServeConfig,
        {"grpc_port": "kserve-grpc-port"},
        host=address.hostname or "127.0.0.1",
        http_port=address.port or 8080,
        grpc_port=args.kserve_grpc_port,
        model_name=args.name,
        providers=getattr(args, "providers", None),
        provider_policy=getattr(args, "provider_policy", None),
        batching=batching,
    )
    url = f"http://{client_host(cfg.host)}:{cfg.http_port}"
    if args.stop:
        print("KServe model server stopped." if stop_kserve(state) else "no KServe model server running on this model store.")
        return 0
    if args.ping:
        return 0 if model_ready(url, args.name) else 1
    if running_pid(state) is not None:  # a server runs here: by default switch its model while it keeps answering
        if args.if_running == "fail":
            raise ConfigError(f"a KServe server already runs on {args.model_store}; stop it first (--stop) or drop --if-running fail")
        if args.if_running == "refresh":
            version = refresh_kserve(state, _bundle(args))
            print(f"KServe on {url} now serves {args.name} version {version} from {_bundle(args)} (switched without a restart)")
            return 0
        stop_kserve(state)  # --if-running restart: new address, providers or a server that must start afresh
    handle = start_kserve(_bundle(args), state, cfg)
    infer = f"{url}/v2/models/{args.name}/infer"
    print(f"KServe is serving {args.name} (Open Inference Protocol v2) on {url} (log: {handle.state_dir / 'server.log'})")
    print(f"  metadata: curl {url}/v2/models/{args.name}")
    print(
        f'  infer:    curl -H \'Content-Type: application/json\' -d \'{{"inputs": [{{"name": "image", "datatype": "BYTES", '
        f'"shape": [1], "data": ["\'$(base64 -w0 image.png)\'"]}}]}}\' {infer}'
    )
    print(f"  metrics:  curl {url}/metrics | grep clipshield_")
    if cfg.grpc_port:
        print(f"  gRPC v2:  {client_host(cfg.host)}:{cfg.grpc_port}")
    print(f"  stop:     clipshield serve --runtime kserve --stop --model-store {args.model_store}")
    return 0
