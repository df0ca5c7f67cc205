"""One tuning trial: suggest a method's settings from its registered search space, fine-tune briefly,
check half-way (prune), score on the validation splits.

Score (maximised) = w x seen robust + (1 - w) x held-out clean, in %, `w = TuneConfig.robust_weight`.
"""

from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from clipshield.experiments.tuning.config import TuneConfig
from clipshield.experiments.tuning.validation import accuracies, load_validation
from clipshield.training.finetune_config import FinetuneConfig, recipe_config
from clipshield.training.methods import LossInputs, LossOutput, get_method
from clipshield.training.methods.search_space import LR_SCALE, Choice, SearchSpace


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """{setting: value} drawn by `trial` from a registered search space."""
    values: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, Choice):
            values[name] = trial.suggest_categorical(name, list(dim.values))
        else:
            values[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return values


def default_point(method: str) -> dict[str, Any]:
    """The method's untuned setting (lr scale 1, its params' defaults) inside its space: every study's first trial."""
    m = get_method(method)
    defaults = m.params().model_dump()
    point: dict[str, Any] = {}
    for name, dim in m.search_space.items():
        value = 1.0 if name == LR_SCALE else defaults[name]
        if isinstance(dim, Choice):
            point[name] = value if value in dim.values else dim.values[0]
        else:
            point[name] = min(max(float(value), dim.low), dim.high)
    return point


def base_lr(cfg: TuneConfig, method: str) -> float:
    """The learning rate `lr_scale` multiplies: the data set's shared recipe rate for the method's optimiser, untuned."""
    return recipe_config(cfg.data, method=method, tuned=False).optim.lr or get_method(method).lr


def trial_config(cfg: TuneConfig, method: str, values: dict[str, Any], number: int) -> FinetuneConfig:
    """The short fine-tuning run of one trial: the shared recipe with the trial's lr and loss weights."""
    params = {k: v for k, v in values.items() if k != LR_SCALE}
    shared = recipe_config(cfg.data, tuned=False, method=method, batch_size=cfg.batch_size)
    limit = shared.dataset.limit
    images = cfg.steps * (shared.optim.batch_size or get_method(method).batch_size)  # one pass is enough for a short trial
    return recipe_config(
        cfg.data,
        tuned=False,
        method=method,
        method_params=params,
        lr=base_lr(cfg, method) * values[LR_SCALE],
        output=cfg.output / "trials" / method / f"{number:04d}",
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        attack_steps=cfg.attack_steps,
        eps=cfg.eps,
        seed=cfg.seed,
        model=cfg.model,
        pretrained=cfg.pretrained,
        data_root=cfg.data_root,
        threads=None,
        eval_datasets=[],
        checkpoint_every=0,
        data_limit=min(limit, images) if limit else None,
    )


@dataclass
class Scores:
    """Validation accuracies (%) of one model and the objective they give."""

    seen_clean: float
    seen_robust: float
    heldout_clean: float
    heldout_robust: float
    value: float


def score(acc: dict[str, tuple[float, float]], seen: tuple[str, ...], held: tuple[str, ...], w: float) -> Scores:
    """The objective from per-set (clean, robust) fractions: group means in %, then the weighted sum."""

    def mean(names: tuple[str, ...], i: int) -> float:
        return 100 * statistics.fmean(acc[n][i] for n in names)

    s_clean, s_rob, h_clean, h_rob = mean(seen, 0), mean(seen, 1), mean(held, 0), mean(held, 1)
    return Scores(s_clean, s_rob, h_clean, h_rob, w * s_rob + (1 - w) * h_clean)


class Objective:
    """`objective(trial) -> score` for one method; validation images are loaded once per study."""

    def __init__(self, cfg: TuneConfig, method: str) -> None:
        from clipshield.models.factory import load_model

        self.cfg, self.method = cfg, method
        probe = recipe_config(cfg.data, method=method, model=cfg.model, pretrained=cfg.pretrained, eps=cfg.eps, tuned=False)
        self.eps = probe.attack.eps
        base = load_model(probe.source.model, pretrained=probe.source.pretrained)
        self.base = base
        self.seen, self.held = cfg.validation_sets()
        self.sets = {n: load_validation(n, base, cfg.val_limit, cfg.data_root) for n in {*self.seen, *self.held}}
        half = max(1, cfg.val_limit // 2)
        self.check_sets = [v.first(half) for v in self.sets.values()]

    def base_scores(self) -> Scores:
        """The untrained model on the same validation sets and attack: the floor a trial must clear. A weak
        validation attack (few PGD steps) makes the base itself look robust, and this row shows by how much."""
        acc = accuracies(self.base, list(self.sets.values()), self.eps, self.cfg.eval_steps)
        return score(acc, self.seen, self.held, self.cfg.robust_weight)

    def __call__(self, trial: optuna.Trial) -> float:
        from clipshield.training.finetune import finetune

        values = suggest(trial, get_method(self.method).search_space)
        run_cfg = trial_config(self.cfg, self.method, values, trial.number)
        trial.set_user_attr("lr", run_cfg.optim.lr)
        try:
            model, _card = finetune(run_cfg, observer=self._observer(trial))
            result = score(
                accuracies(model, list(self.sets.values()), self.eps, self.cfg.eval_steps), self.seen, self.held, self.cfg.robust_weight
            )
        finally:
            shutil.rmtree(run_cfg.run.output / "state", ignore_errors=True)  # keep metrics.csv, not the weights
            shutil.rmtree(run_cfg.run.output / "final", ignore_errors=True)
        for key, value in vars(result).items():
            trial.set_user_attr(key, value)
        return result.value

    def _observer(self, trial: optuna.Trial):
        """Per step: prune a non-finite loss at once; at the half-way step, report the score on half the
        validation images and prune when it is below the median of earlier trials at that step."""
        check_at = self.cfg.steps // 2

        def observe(step: int, batch: LossInputs, out: LossOutput) -> None:
            if not math.isfinite(float(out.total.detach())):
                trial.set_user_attr("pruned_because", f"non-finite loss at step {step}")
                raise optuna.TrialPruned(f"non-finite loss at step {step}")
            if step != check_at:
                return
            acc = accuracies(batch.target, self.check_sets, self.eps, self.cfg.eval_steps)
            trial.report(score(acc, self.seen, self.held, self.cfg.robust_weight).value, step)
            if trial.should_prune():
                trial.set_user_attr("pruned_because", f"below the median at step {step}")
                raise optuna.TrialPruned(f"below the median at step {step}")

        return observe
