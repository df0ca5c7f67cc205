"""Diagnose an attention-guided fine-tune over seeds: per-term gradient norms, map ranges, final accuracy.

Runs `clipshield.training.finetune.finetune` with the mini-world recipe and a
`clipshield.training.diagnostics.TermProbe`, one run per seed, and writes per run
`diagnostics.csv`, `map_ranges.csv`, `metrics.csv` and the model card, plus `summary.json` and a
markdown table (docs/methods.md §3.3). Examples:

    python benchmarks/diagnose_tga.py --world miniworld --seeds 0 1 2
    python benchmarks/diagnose_tga.py --world miniworld224 --seeds 0 1 2 --eval-limit 128
    python benchmarks/diagnose_tga.py --world miniworld224 --param distance=rms --param alpha=2.56 --output runs/diag-rms
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipshield.training.diagnostics import TermProbe, card_accuracies, range_summary
from clipshield.training.finetune import finetune
from clipshield.training.finetune_config import recipe_config

PHASES = ((0, 20), (20, 100), (100, 10**9))
GRADS = ("grad_ce", "grad_ar_weighted", "grad_amc_weighted", "grad_anchor_weighted", "grad_total")


def parse_args(argv: Any = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=["miniworld", "miniworld224"], default="miniworld")
    p.add_argument("--method", default="tga-zsr")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--param", action="append", default=[], help="method parameter k=v (repeatable), e.g. minmax_eps=0.01")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--every", type=int, default=10, help="probe interval in steps")
    p.add_argument("--eval-limit", type=int, default=128, help="images per model-card evaluation set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=Path("runs/diagnose"))
    return p.parse_args(argv)


def method_params(pairs: list[str]) -> dict[str, Any]:
    """k=v pairs with JSON values where they parse (numbers), strings otherwise."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def phase_medians(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median of each gradient norm per training phase ('0-19', '20-99', '100+')."""
    result: dict[str, dict[str, float]] = {}
    for lo, hi in PHASES:
        name = f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+"
        inside = [r for r in rows if lo <= r["step"] < hi]
        result[name] = {g: statistics.median(r[g] for r in inside) for g in GRADS if inside and all(g in r for r in inside)}
    return result


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One diagnosed fine-tune; its summary (accuracies, phase medians, range distribution, wall time)."""
    out = args.output / f"seed{seed}"
    cfg = recipe_config(
        f"{args.world}-train",
        method=args.method,
        seed=seed,
        output=out,
        threads=args.threads,
        lr=args.lr,
        steps=args.steps,
        eval_limit=args.eval_limit,
        method_params=method_params(args.param),
    )
    probe = TermProbe(every=args.every, norm=method_params(args.param).get("map_norm", "token_axis"))
    t0 = time.perf_counter()
    try:
        _, card = finetune(cfg, observer=probe)
    finally:  # the measurements survive a failing evaluation
        probe.write(out)
    return {
        "seed": seed,
        "wall_s": round(time.perf_counter() - t0, 1),
        "accuracy": {k: round(v, 1) for k, v in card_accuracies(card).items()},
        "grad_phases": phase_medians(probe.rows),
        "ranges": {kind: range_summary(probe.ranges, kind=kind) for kind in ("clean_target", "adv_target", "clean_frozen")},
        "first_collapse_step": next((r["step"] for r in probe.rows if r.get("batch_adv_acc", 1) < 0.2 and r["step"] >= 50), None),
    }


def main(argv: Any = None) -> int:
    args = parse_args(argv)
    runs = [run_seed(args, seed) for seed in args.seeds]
    args.output.mkdir(parents=True, exist_ok=True)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=1))
    for run in runs:
        print(json.dumps(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
