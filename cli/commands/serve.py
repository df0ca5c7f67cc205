"""`clipshield serve`: start / stop / probe TorchServe on the model store."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipshield.cli.commands.archive import add_provider_args
from clipshield.service.config import flag_config
from clipshield.service.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start TorchServe on the model store (--stop to stop it)",
        description="Start TorchServe in the background with model_store/config.properties (inference on "
        "--address; management and metrics on 127.0.0.1), wait until the model is ready, and print how to "
        "call it. --stop stops it; --ping is a health probe (exit 0 when healthy) that reads the token itself. "
        "A server already running on this model store switches to the current archive without a restart "
        "(the new version is registered beside the old, made the default, the old drained and unregistered; "
        "--if-running restart restarts it, fail refuses), so what answers is always the archive just built.",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="default: %(default)s")
    p.add_argument("--name", default="clipshield", help="model to load (default: %(default)s)")
    p.add_argument("--address", default="http://127.0.0.1:8080", help="inference address (default: %(default)s)")
    p.add_argument("--management-address", default="http://127.0.0.1:8081", help="management API address (default: %(default)s)")
    p.add_argument("--metrics-address", default="http://127.0.0.1:8082", help="metrics API address (default: %(default)s)")
    p.add_argument(
        "--grpc-ports",
        type=int,
        nargs=2,
        default=(7070, 7071),
        metavar=("INFERENCE", "MANAGEMENT"),
        help="TorchServe's gRPC listeners (always on, loopback only; default: 7070 7071)",
    )
    p.add_argument("--workers", type=int, default=2, help="workers per model (default: %(default)s)")
    p.add_argument("--no-token-auth", action="store_true", help="turn TorchServe's token authorisation off (trusted networks only)")
    p.add_argument(
        "--if-running",
        choices=("refresh", "restart", "fail"),
        default="refresh",
        help="a TorchServe already running on this model store: switch it to the archive while it keeps answering, "
        "restart it on the archive, or refuse (default: %(default)s)",
    )
    add_provider_args(p, None, None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--stop", action="store_true", help="stop the server started on this model store")
    g.add_argument("--ping", action="store_true", help="health probe: exit 0 when the server reports Healthy")
    from clipshield.cli.commands.serve_kserve import add_runtime_args  # --runtime {torchserve,kserve}; the KServe runtime lives there

    add_runtime_args(p)
    p.set_defaults(run=run)


def _model_arg(store: Path, name: str) -> str:
    if (store / name).is_dir():
        return f"{name}={name}"
    if (store / f"{name}.mar").is_file():
        return f"{name}={name}.mar"
    raise ConfigError(f"no archive {name}.mar or folder {name} in {store}; run `clipshield archive` first")


def _served_line(described: dict) -> str:
    model, bundle, runtime = described["model"], described["bundle"], described["runtime"]
    built = bundle["exported_by"]
    return (
        f"{model['name']} {model['version']} (bundle format {bundle['format_version']}, exported by clipshield "
        f"{built['clipshield_version']} at {built['git_commit'][:12]}) on {runtime['image_encoder_provider']}"
    )


def run(args: argparse.Namespace) -> int:
    from clipshield.handlers.torchserve.launcher import (
        STATE_DIR,
        ServeConfig,
        describe_model,
        ping,
        read_keys,
        running_launcher,
        start_server,
        stop_server,
    )

    store = args.model_store.resolve()
    if args.runtime == "kserve":  # the KServe runtime lives in serve_kserve.py
        from clipshield.cli.commands.serve_kserve import run_kserve

        return run_kserve(args)
    if args.stop:
        print("TorchServe stopped." if stop_server(store) else "no TorchServe running on this model store.")
        return 0
    if args.ping:
        return 0 if ping(args.address, store / STATE_DIR) else 1
    flags = {"inference_address": "address", "grpc_inference_port": "grpc-ports", "grpc_management_port": "grpc-ports"}
    cfg = flag_config(
        ServeConfig,
        flags,
        inference_address=args.address,
        management_address=args.management_address,
        metrics_address=args.metrics_address,
        grpc_inference_port=args.grpc_ports[0],
        grpc_management_port=args.grpc_ports[1],
        models=_model_arg(store, args.name),
        token_auth=not args.no_token_auth,
        workers=args.workers,
        providers=args.providers,
        provider_policy=args.provider_policy,
        if_running="restart" if args.if_running == "refresh" else args.if_running,
    )
    if args.if_running == "refresh" and running_launcher(store) is not None:
        return _refresh(store, cfg, args)
    handle = start_server(store, cfg)
    if handle.replaced_pid is not None:
        print(f"stopped the TorchServe already running on this model store (launcher pid {handle.replaced_pid}) and restarted it")
    key = read_keys(handle.state_dir).get("inference")
    auth = f'-H "Authorization: Bearer {key}" ' if key else ""
    print(f"TorchServe is serving {args.name} on {args.address} (logs: {handle.state_dir / 'logs'})")
    print(f"  model:   {_served_line(describe_model(handle, args.name))}")
    print(f"  curl {auth}-H 'Content-Type: image/png' --data-binary @image.png {args.address}/predictions/{args.name}")
    print(f"  metrics: curl {args.metrics_address}/metrics | grep clipshield_")
    print(f"  stop:    clipshield serve --stop --model-store {args.model_store}")
    return 0


def _refresh(store: Path, cfg, args: argparse.Namespace) -> int:
    """Switch the running TorchServe to the store's archive without a restart (handlers/torchserve/refresh.py)."""
    from clipshield.handlers.torchserve.refresh import check_refreshable, refresh_server

    check_refreshable(store, cfg)
    done = refresh_server(store, cfg)
    print(
        f"TorchServe on {args.address} now serves {args.name} version {done.new_version} (was {done.old_version}; "
        f"registered as {done.registered}, the old version drained and unregistered, no restart)"
    )
    return 0
