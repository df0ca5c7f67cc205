"""Markdown tables from `benchmarks/diagnose_tga.py` output folders (docs/methods.md §3.3).

Reads each `<folder>/seed*/` (diagnostics.csv, map_ranges.csv, final/model_card.json) as soon as a
seed has finished, so it also reports on a study still running. Examples:

    python benchmarks/diagnose_tga_report.py runs/diag/tga32 runs/diag/tga224 runs/diag/rms224
    python benchmarks/diagnose_tga_report.py runs/diag/tga224 --timeline 1
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipshield.training.diagnostics import card_accuracies, range_summary

ACC = (
    ("plain/color_shape/seen clean", "seen clean"),
    ("plain/color_shape/seen robust", "seen robust"),
    ("plain/color_shape/heldout_image clean", "heldout_image clean"),
    ("outlined/color_shape/seen clean", "outlined clean"),
)
PHASES = ((0, 20), (20, 100), (100, 10**9))
TERMS = ("grad_ce", "grad_ar_weighted", "grad_amc_weighted", "grad_anchor_weighted")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def seed_accuracy(seed_dir: Path) -> dict[str, float]:
    """'<set> clean|robust' -> % from the seed's model card ({} while it runs)."""
    card_path = seed_dir / "final" / "model_card.json"
    if not card_path.is_file():
        return {}
    return card_accuracies(json.loads(card_path.read_text()))


def median_of(rows: list[dict[str, str]], key: str, lo: int, hi: int) -> str:
    values = [float(r[key]) for r in rows if r.get(key) and lo <= int(float(r["step"])) < hi]
    return f"{statistics.median(values):.2f}" if values else "-"


def run_table(folders: list[Path]) -> list[str]:
    """Per seed: accuracies and the median gradient norm of each term per phase; mean ± std per folder."""
    seeds = {f: [d for d in sorted(f.glob("seed*")) if (d / "diagnostics.csv").is_file()] for f in folders}
    logged = {k for dirs in seeds.values() for d in dirs for k in read_csv(d / "diagnostics.csv")[0]}
    terms = [t for t in TERMS if t in logged]
    head = ["run", "seed", *(label for _, label in ACC)]
    head += [
        f"{t.removeprefix('grad_').removesuffix('_weighted')} grad {lo}-{hi - 1 if hi < 10**9 else ''}" for lo, hi in PHASES for t in terms
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for folder, dirs in seeds.items():
        accs = []
        for seed_dir in dirs:
            rows, acc = read_csv(seed_dir / "diagnostics.csv"), seed_accuracy(seed_dir)
            accs.append(acc)
            cells = [folder.name, seed_dir.name.removeprefix("seed"), *(f"{acc[k]:.1f}" if k in acc else "-" for k, _ in ACC)]
            cells += [median_of(rows, t, lo, hi) for lo, hi in PHASES for t in terms]
            lines.append("| " + " | ".join(cells) + " |")
        done = [a for a in accs if a]
        if len(done) > 1:
            stats = [f"{statistics.mean(a[k] for a in done):.1f} ± {statistics.stdev(a[k] for a in done):.1f}" for k, _ in ACC]
            lines.append("| " + " | ".join([f"**{folder.name}**", f"mean ± std ({len(done)})", *stats] + [""] * (len(head) - 6)) + " |")
    return lines


def range_table(folders: list[Path]) -> list[str]:
    """Distribution of the raw patch-score range (max - min) per map kind, all seeds and probed steps."""
    lines = ["| run | map | images | min | p1 | p10 | median | < 0.01 | < 0.001 |", "|---|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        ranges: list[tuple[int, str, float]] = []
        for path in sorted(folder.glob("seed*/map_ranges.csv")):
            ranges.extend((int(float(r["step"])), r["kind"], float(r["range"])) for r in read_csv(path))
        for kind in ("clean_frozen", "clean_target", "adv_target"):
            s = range_summary(ranges, kind=kind)
            if s["n"]:
                cells = [f"{s[k]:.3f}" for k in ("min", "p1", "p10", "p50")] + [
                    f"{100 * s[k]:.1f} %" for k in ("below_0.01", "below_0.001")
                ]
                lines.append(f"| {folder.name} | {kind} | {int(s['n'])} | " + " | ".join(cells) + " |")
    return lines


def timeline(folder: Path, seed: int) -> list[str]:
    """Every probed step of one seed: loss terms, gradient norms, batch adversarial accuracy, smallest range."""
    rows = read_csv(folder / f"seed{seed}" / "diagnostics.csv")
    keys = (
        "ce",
        "ar_weighted",
        "amc_weighted",
        "grad_ce",
        "grad_ar_weighted",
        "grad_amc_weighted",
        "batch_adv_acc",
        "range_adv_target_min",
    )
    lines = ["| step | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        lines.append(f"| {int(float(r['step']))} | " + " | ".join(f"{float(r[k]):.3g}" if r.get(k) else "-" for k in keys) + " |")
    return lines


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--timeline", type=int, default=None, help="also print every probed step of this seed (first folder)")
    args = p.parse_args(argv)
    print("\n".join(run_table(args.folders) + [""] + range_table(args.folders)))
    if args.timeline is not None:
        print("\n" + "\n".join(timeline(args.folders[0], args.timeline)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
