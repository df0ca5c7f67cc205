"""What a tuning run hands back: a Markdown table per method, a Pareto plot and each method's chosen setting.

The rule that picks a method's setting: its completed trial with the highest objective (a weighted sum
with positive weights, so that trial is on the method's own Pareto front of seen robust vs held-out clean).
"""

from __future__ import annotations

import datetime as dt
import statistics
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from clipshield.experiments.tuning.config import TuneConfig
from clipshield.training.methods.search_space import LR_SCALE

X, Y = "heldout_clean", "seen_robust"  # the plot's axes (validation accuracies, %)


def objective_text(cfg: TuneConfig) -> str:
    w = cfg.robust_weight
    return f"{w:g} x seen robust + {1 - w:g} x held-out clean (validation split, %)"


def budget_text(cfg: TuneConfig) -> str:
    warm = f", one trial warm-started from {cfg.warm_start}" if cfg.warm_start else ""
    return (
        f"{cfg.trials} trials/method{warm}, {cfg.steps} steps, batch {cfg.batch_size or 'recipe'}, "
        f"training PGD-{cfg.attack_steps or 'recipe'}, validation {cfg.val_limit} images/set, PGD-{cfg.eval_steps}"
    )


def weighted(trial: optuna.trial.FrozenTrial, w: float) -> float:
    """A completed trial's objective under robust weight `w`, from its recorded validation accuracies."""
    return w * trial.user_attrs[Y] + (1 - w) * trial.user_attrs[X]


def best_trial(study: optuna.Study, w: float) -> optuna.trial.FrozenTrial:
    """The completed trial with the highest objective at robust weight `w` (the study's own weight: its best trial;
    another weight re-scores the same trials, so a different trade-off needs no new trials)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: weighted(t, w))


def chosen(cfg: TuneConfig, method: str, study: optuna.Study) -> dict[str, Any]:
    """The method's chosen setting as a recipe entry (`clipshield.datasets.recipe.TunedSetting` fields)."""
    best = best_trial(study, cfg.robust_weight)
    done = best.datetime_complete or dt.datetime.now(dt.timezone.utc)
    return {
        "lr": best.user_attrs["lr"],
        "method_params": {k: v for k, v in best.params.items() if k != LR_SCALE},
        "chosen_by": {
            "study": study.study_name,
            "storage": cfg.storage_url(),
            "trial": best.number,
            "value": round(weighted(best, cfg.robust_weight), 3),
            "date": dt.datetime.fromtimestamp(done.timestamp(), dt.timezone.utc).strftime("%Y-%m-%d"),
            "objective": objective_text(cfg),
            "budget": budget_text(cfg),
        },
    }


def rows(studies: dict[str, optuna.Study], w: float) -> list[dict[str, Any]]:
    """Per method: trial counts by state, the best trial's number, value, accuracies and setting."""
    out = []
    for method, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        row: dict[str, Any] = {"method": method, **counts, "seconds": median_seconds(trials)}
        if counts["complete"]:
            best = best_trial(study, w)
            row |= {**best.user_attrs, "trial": best.number, "value": weighted(best, w), "params": dict(best.params)}
        out.append(row)
    return out


def median_seconds(trials: list[optuna.trial.FrozenTrial]) -> float:
    """Median wall time of the completed trials (s): the cost of one trial at this fidelity."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]
    times = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]  # type: ignore[operator]
    return statistics.median(times) if times else float("nan")


def base_row(studies: dict[str, optuna.Study]) -> dict[str, float]:
    """The untrained model's validation scores, as the first study that measured them recorded them ({} if none did)."""
    return next((dict(s.user_attrs["base"]) for s in studies.values() if "base" in s.user_attrs), {})


def markdown(table: list[dict[str, Any]], cfg: TuneConfig, base: Optional[dict[str, float]] = None) -> str:
    head = [
        f"Tuning on {cfg.data}: {budget_text(cfg)}. Objective: {objective_text(cfg)}; chosen = best completed trial.",
        "",
        "| method | complete / pruned / failed | s/trial | best trial | objective | seen clean | seen robust | held-out clean "
        "| held-out robust | lr | loss weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        counts = f"{r['complete']} / {r['pruned']} / {r['fail']} | {r['seconds']:.0f}"
        if "value" not in r:
            head.append(f"| {r['method']} | {counts} | - | - | - | - | - | - | - | - |")
            continue
        weights = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["params"].items() if k != LR_SCALE)
        accs = " | ".join(f"{r[k]:.1f}" for k in ("seen_clean", "seen_robust", "heldout_clean", "heldout_robust"))
        head.append(f"| {r['method']} | {counts} | {r['trial']} | {r['value']:.1f} | {accs} | {r['lr']:.3g} | {weights or '-'} |")
    if base:
        accs = " | ".join(f"{base[k]:.1f}" for k in ("seen_clean", "seen_robust", "heldout_clean", "heldout_robust"))
        head.append(f"| *base, not fine-tuned* | - | - | - | {base['value']:.1f} | {accs} | - | - |")
        head += [
            "",
            "A trial near the base's objective has barely moved the model; a base that looks robust means the validation attack is weak.",
        ]
    return "\n".join(head) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates, sorted by the first."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def plot(studies: dict[str, optuna.Study], path: Path, w: float, base: Optional[dict[str, float]] = None) -> None:
    """Every completed trial (held-out clean vs seen robust, validation), the joint Pareto front, each method's choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    everything = []
    for method, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        pts = [(t.user_attrs[X], t.user_attrs[Y]) for t in done]
        everything += pts
        if not pts:
            continue
        (line,) = ax.plot(*zip(*pts), "o", alpha=0.45, label=method)
        best = best_trial(study, w)
        ax.plot(best.user_attrs[X], best.user_attrs[Y], "*", ms=16, color=line.get_color(), mec="black")
    if base:
        ax.plot(base[X], base[Y], "kx", ms=10, mew=2, label="base, not fine-tuned")
    front = pareto_front(everything)
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1, label="Pareto front (all methods)")
    ax.set(xlabel="held-out clean accuracy (%, validation)", ylabel="seen robust accuracy (%, validation)", title="trials (star: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg: TuneConfig, studies: dict[str, optuna.Study]) -> str:
    """OUTPUT/results.{md,json}, OUTPUT/pareto.png and OUTPUT/chosen.json (recipe entries); returns the Markdown."""
    import json

    table = rows(studies, cfg.robust_weight)
    base = base_row(studies)
    text = markdown(table, cfg, base)
    cfg.output.mkdir(parents=True, exist_ok=True)
    (cfg.output / "results.md").write_text(text)
    summary = {"settings": cfg.model_dump(mode="json"), "methods": table, "base": base}
    (cfg.output / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    picked = {m: chosen(cfg, m, s) for m, s in studies.items() if any(t.state == TrialState.COMPLETE for t in s.trials)}
    (cfg.output / "chosen.json").write_text(json.dumps(picked, indent=2))
    plot(studies, cfg.output / "pareto.png", cfg.robust_weight, base)
    return text


def record_recipe(world: str, picked: dict[str, Any], path: Path) -> None:
    """Merge chosen settings into a recipe file (`clipshield.datasets.miniworld_sets.TUNED_FILE` layout: world -> method)."""
    import json

    from clipshield.datasets.recipe import TunedSetting

    table = json.loads(path.read_text()) if path.is_file() else {}
    table.setdefault(world, {}).update({m: TunedSetting.model_validate(v).model_dump(mode="json") for m, v in picked.items()})
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
