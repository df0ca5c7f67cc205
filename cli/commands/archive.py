"""`clipshield archive`: a TorchServe model archive in the model store from an export bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipshield.service.config import flag_config
from clipshield.service.errors import ConfigError
from clipshield.service.settings import POLICIES, parse_providers


def _providers(raw: str) -> tuple[str, ...]:
    try:
        return parse_providers(raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_provider_args(p: argparse.ArgumentParser, default: tuple[str, ...] | None, policy: str | None) -> None:
    """--providers (ordered ONNX Runtime execution providers, e.g. cuda,cpu) and --provider-policy."""
    p.add_argument(
        "--providers",
        type=_providers,
        default=default,
        metavar="LIST",
        help="ONNX Runtime execution providers in order, comma-separated, from cuda, cpu "
        f"(default: {','.join(default) if default else 'as in the archive'})",
    )
    p.add_argument(
        "--provider-policy",
        choices=POLICIES,
        default=policy,
        help="a requested provider missing from the installed onnxruntime: fail (refuse to load, naming it) "
        f"or fallback (warn, use the next) (default: {policy or 'as in the archive'})",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "archive",
        help="build a TorchServe archive from an export",
        description="Package an export bundle (clipshield export) with the handler, serving settings and a "
        "sha256 manifest (verified at load) into model_store/<name>.mar, or a folder with --format no-archive.",
    )
    p.add_argument("--export", type=Path, default=Path("runs/export/miniworld"), help="export folder (default: %(default)s)")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="default: %(default)s")
    p.add_argument("--name", default="clipshield", help="model name in URLs (default: %(default)s)")
    p.add_argument(
        "--format",
        choices=("default", "zip-store", "no-archive"),
        default="default",
        help="default: deflated .mar; zip-store: stored .mar (fast for big models); no-archive: a folder",
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per worker (default: %(default)s)")
    from clipshield.handlers.torchserve.archive import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY_MS  # the measured defaults

    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="server-side batch size (default: %(default)s)")
    p.add_argument(
        "--max-batch-delay-ms",
        type=int,
        default=DEFAULT_MAX_BATCH_DELAY_MS,
        help="longest wait in ms to fill a server-side batch (default: %(default)s)",
    )
    p.add_argument("--workers", type=int, default=2, help="TorchServe workers, minimum and maximum (default: %(default)s)")
    p.add_argument(
        "--attack-score",
        choices=("off", "on"),
        default="off",
        help="serving default of the attack score for requests without an `attack_score` field (on needs a "
        "bundle exported with --calibrate-score; each scored image costs 4 extra encoder passes) (default: %(default)s)",
    )
    add_provider_args(p, ("cpu",), "fail")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clipshield.export.describe import require_bundle
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive
    from clipshield.service.settings import AttackScoreServing, RuntimeConfig, ServingConfig

    runtime = flag_config(
        RuntimeConfig,
        {"intra_op_threads": "threads"},
        intra_op_threads=args.threads,
        providers=args.providers,
        provider_policy=args.provider_policy,
    )
    batching = flag_config(
        BatchingConfig,
        {"min_workers": "workers", "max_workers": "workers"},
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        min_workers=args.workers,
        max_workers=args.workers,
    )
    card = require_bundle(args.export)  # a missing or malformed export: one line, before anything is written
    if args.attack_score == "on" and card.attack_score is None:
        raise ConfigError(
            f"--attack-score on needs a calibrated attack score in {args.export}'s model card "
            "(export it with `clipshield export --calibrate-score N`)"
        )
    serving = ServingConfig(runtime=runtime, attack_score=AttackScoreServing(default=args.attack_score == "on"))
    path = build_archive(args.export, args.model_store, name=args.name, archive_format=args.format, serving=serving, batching=batching)
    print(f"archive: {path}")
    return 0
