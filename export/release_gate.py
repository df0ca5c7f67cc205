"""The robustness gate for model refreshes: a candidate's card against the card it replaces.

Accuracy entries are compared when both cards measured the same data set, attack and purification
under the same preprocessing; a drop of clean accuracy (attack `none`) or robust accuracy (any
attack) beyond its margin refuses the release, and so does any protocol difference (an entry of the
baseline that the candidate did not measure the same way, or nothing comparable at all). `--force`
releases anyway and the decision, forced or not, is written into the candidate bundle's card. A candidate
serving a reduced-precision image encoder (int8, fp16) is also held to the rule export applies: at most 1 point
of clean and of robust accuracy lost against its own fp32 encoder (`clipshield.service.precision`).
"""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path
from typing import Optional

from pydantic import Field

from clipshield.service import bundle as B
from clipshield.service.card import CLEAN, AccuracyEntry, ModelCard, ReleaseDecision, read_card_file
from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError
from clipshield.service.precision import drop_problem, precision_drops, precision_problems

EntryKey = tuple[str, str, bool]


class Margins(StrictModel):
    """Largest allowed drops, in accuracy points (percent)."""

    clean: float = Field(default=2.0, ge=0)
    robust: float = Field(default=1.0, ge=0)


class Row(StrictModel):
    """One line of the comparison table."""

    dataset: str
    attack: str
    purified: bool
    baseline: Optional[float] = None
    candidate: Optional[float] = None
    problem: str = ""

    @property
    def delta(self) -> Optional[float]:
        """Candidate minus baseline, in points (None when one side is missing)."""
        if self.baseline is None or self.candidate is None:
            return None
        return 100 * (self.candidate - self.baseline)


class GateReport(StrictModel):
    """All rows, the comparable count and the verdict."""

    rows: list[Row]
    compared: int
    accepted: bool


def load_card(path: Path) -> ModelCard:
    """A card from a bundle or checkpoint folder, a `.mar` archive or a `model_card.json` file."""
    path = Path(path)
    if path.is_dir():
        path = path / B.MODEL_CARD
    if not path.exists():
        raise ConfigError(f"no model card at {path}: give a bundle folder, a .mar archive or a model_card.json")
    if path.suffix == ".mar" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == B.MODEL_CARD]
            if not names:
                raise ConfigError(f"{path} holds no {B.MODEL_CARD}")
            return ModelCard.model_validate_json(archive.read(names[0]))
    return read_card_file(path)


def _by_key(card: ModelCard) -> dict[EntryKey, AccuracyEntry]:
    return {(e.dataset, e.attack, e.purified): e for e in card.accuracy}


def compare(baseline: ModelCard, candidate: ModelCard, margins: Margins) -> GateReport:
    """Compare every accuracy entry of the two cards; refuse on a drop beyond a margin or a protocol difference."""
    base, cand = _by_key(baseline), _by_key(candidate)
    rows, compared = [], 0
    for key in sorted(set(base) | set(cand)):
        b, c = base.get(key), cand.get(key)
        row = Row(dataset=key[0], attack=key[1], purified=key[2], baseline=b.value if b else None, candidate=c.value if c else None)
        if b is None:
            rows.append(row.model_copy(update={"problem": "new: not measured by the baseline"}))
            continue
        if c is None:
            rows.append(row.model_copy(update={"problem": "protocol: the candidate did not measure this"}))
            continue
        if b.preprocessing != c.preprocessing:
            rows.append(row.model_copy(update={"problem": "protocol: preprocessing differs"}))
            continue
        compared += 1
        margin = margins.clean if key[1] == CLEAN else margins.robust
        delta = row.delta or 0.0
        problem = f"drop {-delta:.1f} > {margin:g} points" if delta < -margin else ""
        rows.append(row.model_copy(update={"problem": problem}))
    rows += precision_rows(candidate)
    blocking = [r for r in rows if r.problem and not r.problem.startswith("new:")]
    return GateReport(rows=rows, compared=compared, accepted=compared > 0 and not blocking)


def precision_rows(candidate: ModelCard) -> list[Row]:
    """The candidate's served reduced precision against its own fp32 encoder (`clipshield.service.precision`, the
    rule export applies): a drop beyond 1 point, or no comparison measured, refuses the release."""
    info = candidate.precision
    if info.served == "fp32":
        return []
    if not info.accuracy:
        return [Row(dataset="-", attack=f"{info.served} encoder", purified=False, problem=f"precision: {precision_problems(())[0]}")]
    rows = []
    for a in info.accuracy:
        for kind, (ours, fp32) in precision_drops(a).items():
            label = f"{info.served} vs fp32: {CLEAN if kind == 'clean' else a.attack + ' (worse of transfer, BPDA)'}"
            problem = drop_problem(ours, fp32)
            rows.append(
                Row(
                    dataset=a.dataset,
                    attack=label,
                    purified=False,
                    baseline=fp32,
                    candidate=ours,
                    problem=problem and f"precision: {problem}",
                )
            )
    return rows


def format_report(report: GateReport, baseline: ModelCard, candidate: ModelCard) -> str:
    """Markdown table of the comparison and the verdict, for people and CI logs."""
    lines = [
        f"candidate {_ident(candidate)} vs baseline {_ident(baseline)}",
        "",
        "| data set | attack | purified | baseline % | candidate % | change | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
        change = "—" if r.delta is None else f"{r.delta:+.1f}"
        lines.append(
            f"| {r.dataset} | {r.attack} | {str(r.purified).lower()} | {pct(r.baseline)} | {pct(r.candidate)} | {change} | "
            f"{r.problem or 'ok'} |"
        )
    if report.compared == 0:
        lines.append("\nnothing comparable: the cards share no accuracy measured under the same protocol")
    lines.append(f"\n{'ACCEPTED' if report.accepted else 'REFUSED'} ({report.compared} entries compared)")
    return "\n".join(lines)


def record_decision(bundle: Path, baseline: ModelCard, report: GateReport, margins: Margins, forced: bool, reason: str) -> None:
    """Write the decision into the candidate bundle's card and refresh its checksum manifest."""
    if not (bundle.is_dir() and (bundle / B.MANIFEST).is_file()):
        raise ConfigError(f"{bundle} is not an exported bundle folder: the decision is recorded in a bundle before archiving")
    B.verify_manifest(bundle)
    card = B.read_card(bundle)
    decision = ReleaseDecision(
        baseline=_ident(baseline),
        accepted=report.accepted or forced,
        forced=forced and not report.accepted,
        reason=reason,
        max_clean_drop=margins.clean,
        max_robust_drop=margins.robust,
        compared=report.compared,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    B.write_card(bundle, card.model_copy(update={"release": decision}))
    B.write_manifest(bundle)


def _ident(card: ModelCard) -> str:
    return f"{card.name} {card.version or '-'} ({card.weights_digest})"
