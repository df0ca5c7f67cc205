"""Options and helpers shared by several subcommands; light (no torch at import: `clipshield --help` loads it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from clipshield.service.config import flag_config

if TYPE_CHECKING:
    from clipshield.models.pixel_model import PixelCLIP


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


def model_from_args(args: argparse.Namespace) -> PixelCLIP:
    """The model the --model flags name (imports torch: called only when a command runs)."""
    from clipshield.models.factory import load_model

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
