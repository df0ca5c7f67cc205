"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from clipshield.models.factory import load_model
from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def add_model_args(parser: argparse.ArgumentParser, default: Optional[str] = "miniworld") -> None:
    """--model / --pretrained / --weights / --offline, resolved by `clipshield.models.factory.load_model`."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=default,
        help="'miniworld' (shipped), a clipshield checkpoint folder, an open_clip config JSON, "
        "or an open_clip architecture such as ViT-B-32 (then give --pretrained). Default: %(default)s",
    )
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai) or a local weights file (default: none)")
    g.add_argument(
        "--weights", default=None, help="state dict for a config-JSON model (.safetensors, or .pt loaded with weights_only; default: none)"
    )
    g.add_argument("--cache-dir", default=None, help="where open_clip keeps downloaded weights (default: open_clip's own)")
    g.add_argument(
        "--offline",
        action="store_true",
        help="never touch the network; fail clearly if weights are not cached (also CLIPSHIELD_OFFLINE=1 or HF_HUB_OFFLINE=1)",
    )


def flag_config(cls: type[ConfigT], flags: Optional[dict[str, str]] = None, **values: Any) -> ConfigT:
    """`cls(**values)` for values taken from flags: an out-of-range value is a `ConfigError` naming the
    flag (one line, exit status 2), not a pydantic traceback. `flags` maps field names to flag names
    where they differ (intra_op_threads -> threads)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        names = flags or {}
        raise ConfigError.from_validation(exc, lambda loc: names.get(str(loc[-1]), str(loc[-1])) if loc else "option") from None


def model_from_args(args: argparse.Namespace) -> PixelCLIP:
    return load_model(args.model, pretrained=args.pretrained, weights=args.weights, cache_dir=args.cache_dir, offline=args.offline or None)


def progress(total: Optional[int], desc: str, unit: str = "it", disable: Optional[bool] = None):
    """A tqdm progress bar on stderr (hidden when stderr is not a terminal unless forced)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable, file=sys.stderr)


def add_score_signals_arg(group: Any, default_note: str = "") -> None:
    """--score-signals of the commands that fit the attack score (export, evaluate --attack-score)."""
    from clipshield.service.attack_score_config import SIGNALS, AttackScoreConfig

    group.add_argument(
        "--score-signals",
        nargs="+",
        choices=list(SIGNALS),
        default=None,
        help=f"signals the attack score combines (default: {' '.join(AttackScoreConfig().signals)}{default_note}); "
        "docs/security.md section 5.1",
    )


def score_config(signals: Optional[Sequence[str]], with_reference: bool = False):
    """AttackScoreConfig for --score-signals (None: the default signals, plus `agreement` when an original model is given)."""
    from clipshield.service.attack_score_config import AttackScoreConfig

    chosen = tuple(signals) if signals else AttackScoreConfig().signals + (("agreement",) if with_reference else ())
    return flag_config(AttackScoreConfig, {"signals": "score-signals"}, signals=chosen)
