"""Reports built from stored cells: summary JSON, Markdown tables (paper Table 1/2 shape), PNG plot.

Rows are methods (model id, with "+ CLIPure-Cos" when purified), columns are data sets plus the
average; one table for clean accuracy and one per attack setting. Purified cells also get an
adaptive-attack table with the full-autograd, BPDA and transfer numbers, the worst case and the
gradient-masking verdict.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from clipshield.attacks.adaptive import GRADIENT_MASKED
from clipshield.evaluation.schema import CLEAN, CellResult, Summary

log = logging.getLogger(__name__)


def method_label(cell: CellResult) -> str:
    return cell.model_id + (" + CLIPure-Cos" if cell.key.purification is not None else "")


def attack_label(cell: CellResult) -> str:
    k = cell.key
    if k.attack == CLEAN:
        return "clean"
    restarts = f"x{k.restarts}" if k.restarts > 1 else ""
    return f"{k.attack.upper()}-{k.steps}{restarts} eps={k.eps * 255:.3g}/255"


def _grid(cells: list[CellResult], value: Callable, setting: Callable) -> tuple[dict[str, dict[str, dict[str, float]]], list[str]]:
    """setting(cell) -> method -> data set -> value(cell), and the data set order of first appearance."""
    grid: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    datasets: list[str] = []
    for c in cells:
        v = value(c)
        if v is None:
            continue
        grid[setting(c)][method_label(c)][c.key.dataset] = v
        if c.key.dataset not in datasets:
            datasets.append(c.key.dataset)
    return grid, datasets


def averages(cells: list[CellResult]) -> dict[str, dict[str, float]]:
    """'<method> | <setting>' -> {'clean': mean clean top-1, 'robust': mean robust top-1} over data sets."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if c.robust is None:
            continue
        name = f"{method_label(c)} | {attack_label(c)}"
        sums[name]["clean"].append(c.clean)
        sums[name]["robust"].append(c.robust)
    return {k: {m: sum(v) / len(v) for m, v in d.items()} for k, d in sorted(sums.items())}


def summarize(cells: list[CellResult]) -> Summary:
    return Summary(cells=cells, averages=averages(cells))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _table(title: str, rows: dict[str, dict[str, float]], datasets: list[str]) -> list[str]:
    head = ["Method", *datasets, "Average"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, vals in sorted(rows.items()):
        cols = [_pct(vals[d]) if d in vals else "-" for d in datasets]
        avg = _pct(sum(vals.values()) / len(vals)) if vals else "-"
        lines.append("| " + " | ".join([method, *cols, avg]) + " |")
    return lines + [""]


def _adaptive_table(cells: list[CellResult]) -> list[str]:
    rows = [(c, c.adaptive) for c in cells if c.adaptive is not None]
    if not rows:
        return []
    lines = [
        "### Adaptive attacks on purification",
        "",
        "Robust top-1 under autograd through the purification (`full`, the published protocol), "
        "straight-through / BPDA (`bpda`) and transfer from the un-purified classifier (`transfer`); "
        "worst case = robust under all three. `grad ratio` = median input-gradient norm through the "
        f"purification / without it. **{GRADIENT_MASKED}**: the gradient vanishes while another attack "
        "does clearly better, so the `full` number is not a robustness measurement.",
        "",
        "| Method | Data set | Attack | n | clean | full | bpda | transfer | worst case | grad ratio | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, a in rows:
        verdict = f"**{a.verdict}**" if a.verdict == GRADIENT_MASKED else a.verdict
        lines.append(
            f"| {method_label(c)} | {c.key.dataset} | {attack_label(c)} | {a.n} | {_pct(a.clean)} | "
            + " | ".join(_pct(a.robust.get(m, float("nan"))) for m in ("full", "bpda", "transfer"))
            + f" | {_pct(a.worst_case)} | {a.grad_ratio:.1e} | {verdict} |"
        )
    return lines + [""]


def markdown(cells: list[CellResult]) -> str:
    """Markdown report: clean table, one robust table per attack setting, adaptive-attack table."""
    lines = ["# Zero-shot robustness", "", "Top-1 accuracy (%) per data set; rows are methods.", ""]
    clean, datasets = _grid(cells, lambda c: c.clean, lambda c: "clean")
    if clean:
        lines += _table("Clean", clean["clean"], datasets)
    robust, _ = _grid(cells, lambda c: c.robust, attack_label)
    for setting in sorted(robust):
        lines += _table(f"Robust: {setting}", robust[setting], datasets)
    lines += _adaptive_table(cells)
    return "\n".join(lines)


def plot(cells: list[CellResult], path: Path) -> Path:
    """PNG scatter of average robust vs average clean top-1, one point per (method, attack) (PMG-AFT Fig. 1)."""
    import matplotlib

    matplotlib.use("Agg")  # headless, no display needed
    import matplotlib.pyplot as plt

    avg = averages(cells)
    methods = sorted({k.split(" | ")[0] for k in avg})
    settings = sorted({k.split(" | ")[1] for k in avg})
    markers = "osD^vP*X"
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    try:
        for name, v in avg.items():
            method, setting = name.split(" | ")
            ax.scatter(
                100 * v["clean"],
                100 * v["robust"],
                s=60,
                label=name,
                color=f"C{methods.index(method) % 10}",
                marker=markers[settings.index(setting) % len(markers)],
            )
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("average clean top-1 (%)")
        ax.set_ylabel("average robust top-1 (%)")
        ax.set_title("Robust vs clean top-1 (colour: method, marker: attack)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_reports(cells: list[CellResult], out_dir: Path) -> dict[str, Path]:
    """summary.json, results.md and robust_vs_clean.png under `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.json", "markdown": out_dir / "results.md", "plot": out_dir / "robust_vs_clean.png"}
    paths["summary"].write_text(summarize(cells).model_dump_json(indent=2))
    paths["markdown"].write_text(markdown(cells))
    plot(cells, paths["plot"])
    log.info("reports written to %s", out_dir)
    return paths
