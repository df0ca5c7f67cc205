"""Pixel budgets on the command line: one unit everywhere, converted to pixel units in one place.

Every L-inf radius or attack step size a user types (`--eps`, `--alpha`, `--attack-alpha`,
`--eval-eps`, ...) is in units of 1/255 of the pixel range, as the papers and their tables speak
("eps = 1/255" is `--eps 1`). Configs and attacks keep pixel units (a fraction of [0, 1]);
`to_pixels` converts at the boundary (the CLI and the experiment runners) and refuses values outside a sane range.
"""

from __future__ import annotations

import math
from typing import Optional, overload

from clipshield.service.errors import ConfigError

UNIT = "units of 1/255"
MAX_BUDGET = 64.0  # 64/255 = 0.25 of the pixel range: beyond it the "imperceptible" budget is meaningless
MIN_NONZERO = 0.1  # below 0.1/255 the value was almost certainly meant as a fraction of [0, 1]


@overload
def to_pixels(value: float, flag: str, allow_zero: bool = True) -> float: ...
@overload
def to_pixels(value: None, flag: str, allow_zero: bool = True) -> None: ...
@overload
def to_pixels(value: Optional[float], flag: str, allow_zero: bool = True) -> Optional[float]: ...


def to_pixels(value: Optional[float], flag: str, allow_zero: bool = True) -> Optional[float]:
    """`value` (units of 1/255) as a fraction of the pixel range, or None when not given.

    Raises `ConfigError` naming the allowed range for a negative, non-finite, too large or
    suspiciously small value (e.g. 0.0157, which is 4/255 already written as a fraction).
    """
    if value is None:
        return None
    allowed = f"allowed: {'0, or ' if allow_zero else ''}{MIN_NONZERO:g} to {MAX_BUDGET:g}, in {UNIT}"
    if not math.isfinite(value) or value < 0 or value > MAX_BUDGET or (value == 0 and not allow_zero):
        raise ConfigError(f"{flag} {value:g} is out of range; {allowed} (e.g. {flag} 4 for 4/255)")
    if 0 < value < MIN_NONZERO:
        raise ConfigError(
            f"{flag} {value:g} would be {value:g}/255, which looks like a budget already written as a fraction of the "
            f"pixel range; {allowed}: for {value * 255:.3g}/255 give {flag} {value * 255:.3g}"
        )
    return value / 255


def as_255(pixels: float) -> str:
    """A pixel-unit budget written the way the papers write it, e.g. 0.0157 -> '4/255'."""
    return f"{pixels * 255:.4g}/255"


def budget_help(what: str, default: str) -> str:
    """Help text of a pixel-budget flag: what it is, its unit and its default (argparse-escaped)."""
    return f"{what}, in {UNIT} of the pixel range (4 means 4/255; range 0-{MAX_BUDGET:g}); default: {default}"
