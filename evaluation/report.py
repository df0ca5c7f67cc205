"""Reports built from stored cells: summary JSON, Markdown tables (paper Table 1/2 shape), PNG plot.

Rows are models, named by their display id and weights digest (`runs/x/final @1a2b3c4d`, with
"+ CLIPure-Cos" when purified): two weights that once lived at the same path stay two rows. Columns are
data sets grouped by suite (`suite`), with an average per suite and never across suites, so a user's
folder is not averaged with the mini world; one table for clean accuracy and one per attack setting. Purified cells also get an
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


DIGEST_CHARS = 8  # of the weights digest in a row name


def method_label(cell: CellResult) -> str:
    """Row name: the display id plus the weights digest (the identity), and the purification when on."""
    return f"{cell.model_id} @{cell.key.weights[:DIGEST_CHARS]}" + (" + CLIPure-Cos" if cell.key.purification is not None else "")


def suite(dataset: str) -> str:
    """The suite a data set is averaged within: a world (`miniworld/...` -> miniworld), one user folder
    (`folder/<dir>`), or the zero-shot benchmark of registered real data sets (names without `/`)."""
    parts = dataset.split("/")
    if len(parts) == 1:
        return "benchmark"
    return "/".join(parts[:2]) if parts[0] == "folder" else parts[0]


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
    """'<method> | <setting>[ | <suite>]' -> {'clean': mean clean top-1, 'robust': mean robust top-1} over the
    data sets of one suite; the suite is named only when the cells span several (never averaged across)."""
    several = len({suite(c.key.dataset) for c in cells}) > 1
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if c.robust is None:
            continue
        name = f"{method_label(c)} | {attack_label(c)}" + (f" | {suite(c.key.dataset)}" if several else "")
        sums[name]["clean"].append(c.clean)
        sums[name]["robust"].append(c.robust)
    return {k: {m: sum(v) / len(v) for m, v in d.items()} for k, d in sorted(sums.items())}


def summarize(cells: list[CellResult]) -> Summary:
    return Summary(cells=cells, averages=averages(cells))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _columns(datasets: list[str]) -> list[tuple[str, list[str]]]:
    """(header, data sets) per column: data sets grouped by suite, each group followed by its average."""
    groups: dict[str, list[str]] = {}
    for d in datasets:
        groups.setdefault(suite(d), []).append(d)
    several = len(groups) > 1
    cols: list[tuple[str, list[str]]] = []
    for name, members in groups.items():
        cols += [(d, [d]) for d in members]
        if len(members) > 1 or not several:
            cols.append((f"Average ({name})" if several else "Average", members))
    return cols


def _table(title: str, rows: dict[str, dict[str, float]], datasets: list[str]) -> list[str]:
    cols = _columns(datasets)
    head = ["Method", *(h for h, _ in cols)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, vals in sorted(rows.items()):
        cells = []
        for _, members in cols:
            got = [vals[d] for d in members if d in vals]
            cells.append(_pct(sum(got) / len(got)) if got else "-")
        lines.append("| " + " | ".join([method, *cells]) + " |")
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
    intro = "Top-1 accuracy (%) per data set; rows are models (display id @ weights digest); averages only within a suite."
    lines = ["# Zero-shot robustness", "", intro, ""]
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
    settings = sorted({" | ".join(k.split(" | ")[1:]) for k in avg})  # attack, and the suite when several
    markers = "osD^vP*X"
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    try:
        for name, v in avg.items():
            method, setting = name.split(" | ", 1)
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
