"""`clipshield experiment paper`: one command for a published TGA-ZSR table.

Fine-tunes every method of the table (or takes given checkpoints), evaluates them with the
table's attack over its data sets through the evaluation runner (resumable cells), and writes the
table beside the published numbers with the differences. `--dry-run` prints the plan instead:
cells, images, attack steps, and an estimate of device-hours and disk from a per-image cost that
is either measured on this device (`--measure`) or taken from the paper's own Table 8.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError

TABLES_FILE = Path(__file__).with_name("paper_tables.json")
# evaluation split sizes of the 16 data sets (docs/datasets.md; Caltech: every image of the folder tree)
EVAL_SIZES = {
    "tinyimagenet": 10_000,
    "cifar10": 10_000,
    "cifar100": 10_000,
    "stl10": 8_000,
    "sun397": 108_754,
    "food101": 25_250,
    "oxford_pets": 3_669,
    "flowers102": 6_149,
    "dtd": 1_880,
    "eurosat": 27_000,
    "fgvc_aircraft": 3_333,
    "imagenet": 50_000,
    "caltech101": 8_677,
    "caltech256": 30_607,
    "stanford_cars": 8_041,
    "pcam": 32_768,
}
TRAIN_IMAGES = {"tinyimagenet": 100_000}
# forward+backward passes of the image tower per training image and step, from the step-cost ratios
# measured in docs/finetuning.md (TeCoA: 2 PGD steps + 1 training pass; TGA-ZSR 1.42x TeCoA; FARE 10 PGD steps)
TRAIN_PASSES = {"ft-clean": 1.0, "ft-adv": 3.0, "tecoa": 3.0, "pmg-aft": 4.5, "tga-zsr": 4.3, "comp-tga": 5.0, "fare": 11.0}
# TGA-ZSR Table 8 (the authors' GPU): TeCoA trains at 0.65 s per batch of 128, about 3 passes per image
PAPER_SECONDS_PER_PASS = 0.65 / (128 * 3)


class PaperPlan(StrictModel):
    """What a paper-table run will do and an estimate of what it costs."""

    table: str
    caption: str
    methods: list[str]
    datasets: list[str]
    cells: int
    eval_images: int = Field(description="images evaluated per method (sum over data sets)")
    attack: str
    steps: int
    eps: float
    train_passes: float = Field(description="image-tower forward+backward passes for all fine-tuning")
    eval_passes: float = Field(description="the same for all evaluation (upper bound: no early stopping)")
    seconds_per_pass: float
    cost_source: str
    device_hours: float
    disk_gb: float


def load_tables() -> dict[str, Any]:
    """The published tables: {'datasets': [...], 'tables': {name: {caption, metric, attack, steps, rows}}}."""
    return json.loads(TABLES_FILE.read_text())


def table_spec(name: str) -> dict[str, Any]:
    """One published table by name; unknown names list the known ones."""
    tables = load_tables()["tables"]
    if name not in tables:
        raise ConfigError(f"unknown paper table {name!r}; choose one of {', '.join(tables)}")
    return tables[name]


def eval_passes_per_image(attack: str, steps: int) -> float:
    """Forward+backward-equivalent passes to evaluate one image (a forward counts 1/3 of a pass)."""
    if attack in ("pgd", "cw"):
        return steps + 2 / 3
    if attack.startswith("autoattack"):
        # standard AutoAttack: APGD-CE + 9 targeted APGD + 9 targeted FAB runs of `steps`, Square 5000 queries
        return 19 * steps + 5000 / 3
    return 1 / 3


def make_plan(
    table: str,
    methods: list[str],
    datasets: list[str],
    sizes: dict[str, int],
    eps: float,
    steps: int,
    train_data: str,
    epochs: int,
    seconds_per_pass: float,
    cost_source: str,
    params: int,
) -> PaperPlan:
    """The plan of a table run; `sizes` gives each data set's evaluation images, `params` the model size."""
    spec = table_spec(table)
    eval_images = sum(sizes[d] for d in datasets)
    train_images = TRAIN_IMAGES.get(train_data, sizes.get(train_data, 0))
    tuned = [m for m in methods if m != "base"]
    train = sum(TRAIN_PASSES.get(m, 3.0) for m in tuned) * train_images * epochs
    evaluate = len(methods) * eval_images * eval_passes_per_image(spec["attack"], steps)
    seconds = (train + evaluate) * seconds_per_pass
    # per fine-tuned method: the final checkpoint plus the resumable state (weights + optimiser momentum)
    disk = len(tuned) * params * 4 * 3 / 1e9
    return PaperPlan(
        table=table,
        caption=spec["caption"],
        methods=methods,
        datasets=datasets,
        cells=len(methods) * len(datasets),
        eval_images=eval_images,
        attack=spec["attack"],
        steps=steps,
        eps=eps,
        train_passes=train,
        eval_passes=evaluate,
        seconds_per_pass=seconds_per_pass,
        cost_source=cost_source,
        device_hours=seconds / 3600,
        disk_gb=disk,
    )


def format_plan(plan: PaperPlan) -> str:
    """Human-readable plan, one fact per line."""
    return "\n".join(
        [
            f"plan for {plan.table}: {plan.caption}",
            f"  methods ({len(plan.methods)}): {', '.join(plan.methods)}",
            f"  data sets ({len(plan.datasets)}): {', '.join(plan.datasets)}",
            f"  cells: {plan.cells} (methods x data sets); images per method: {plan.eval_images:,}",
            f"  attack: {plan.attack}, {plan.steps} steps, eps {plan.eps * 255:g}/255",
            f"  image-tower passes (forward+backward): fine-tuning {plan.train_passes:.3g}, evaluation {plan.eval_passes:.3g} (no early stopping)",
            f"  cost per pass: {plan.seconds_per_pass * 1e3:.3g} ms ({plan.cost_source})",
            f"  estimate: {plan.device_hours:.1f} device-hours, {plan.disk_gb:.1f} GB of checkpoints",
        ]
    )


def measure_seconds_per_pass(model: Any, device: str, batch: int = 8, repeats: int = 3) -> float:
    """Median seconds of one image-tower forward+backward per image on `device` (random images)."""
    import statistics

    import torch

    model = model.to(device).train()
    size = model.image_size
    images = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.encode_image(images).sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / batch


def comparison_markdown(table: str, ours: dict[str, dict[str, float]], datasets: list[str]) -> str:
    """Markdown: one row per method, each cell 'ours (published, difference)' in %."""
    spec = table_spec(table)
    lines = [
        f"{spec['caption']}: ours (published, difference), %",
        "",
        "| method | " + " | ".join(datasets) + " | average |",
        "|---" * (len(datasets) + 2) + "|",
    ]
    for method, row in ours.items():
        published = spec["rows"].get(method, {})
        cells = [_cell(row.get(d), published.get(d)) for d in datasets]
        known = [row[d] for d in datasets if row.get(d) is not None]
        avg_pub = [published[d] for d in datasets if d in published]
        avg = _cell(sum(known) / len(known) if known else None, sum(avg_pub) / len(avg_pub) if len(avg_pub) == len(datasets) else None)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines) + "\n"


def _cell(ours: Optional[float], published: Optional[float]) -> str:
    if ours is None:
        return "—"
    if published is None:
        return f"{ours:.2f} (—)"
    return f"{ours:.2f} ({published:.2f}, {ours - published:+.2f})"
