"""Equal-budget studies: one Optuna study per method, `trials` finished trials each, resumable.

Storage: SQLite under the output folder by default (`sqlite:///<output>/study.db`), any Optuna database
URL otherwise, so several machines can share one study. Trials send a heartbeat; a trial left RUNNING by
a killed process is failed once its heartbeat is `grace_s` old and re-queued with the same settings
(`RetryHeartbeatStaleTrialCallback`), so a resumed study finishes the same trials it started.
Finished = COMPLETE or PRUNED (a pruned trial spent budget); failed trials do not count.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Optional

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from clipshield.experiments.tuning.config import TuneConfig
from clipshield.experiments.tuning.objective import Objective, base_lr, default_point
from clipshield.experiments.tuning.warm_start import read_chosen, warm_point

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BASE_ATTR = "base"  # study user attribute: the untrained model's validation scores (`Objective.base_scores`)
OnTrial = Callable[[str, FrozenTrial], None]


def open_storage(cfg: TuneConfig) -> optuna.storages.BaseStorage:
    """The study database with heartbeats (stale RUNNING trials are failed and retried, at most twice)."""
    url = cfg.storage_url()
    if url.startswith("sqlite:///"):
        cfg.output.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # two workers creating one new database race on its schema: the loser retries
        try:
            with warnings.catch_warnings():  # the heartbeat retry callback is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=cfg.heartbeat_s,
                    grace_period=cfg.grace_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def load_study(cfg: TuneConfig, method: str, storage: Optional[optuna.storages.BaseStorage] = None) -> optuna.Study:
    """The method's study (created on first use; its first trial is the method's untuned setting, then the
    `--warm-start` point, enqueued once: a resumed or extended study does not queue it again)."""
    study = optuna.create_study(
        study_name=cfg.study_name(method),
        storage=storage or open_storage(cfg),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=max(2, cfg.trials // 3)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        load_if_exists=True,
    )
    if not study.trials:
        study.enqueue_trial(default_point(method))
    point = warm_point(read_chosen(cfg.warm_start) if cfg.warm_start else None, method, base_lr(cfg, method))
    if point is not None:
        study.enqueue_trial(point, user_attrs={"warm_start": str(cfg.warm_start)}, skip_if_exists=True)
    return study


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def running(study: optuna.Study) -> int:
    """Trials in flight (this or another worker's): they fill slots of the budget until they finish or go stale."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def fail_stale(study: optuna.Study) -> None:
    """A killed worker's RUNNING trial, silent for `grace_s`: failed, and re-queued with its settings."""
    with warnings.catch_warnings():  # marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def tune_method(cfg: TuneConfig, method: str, on_trial: Optional[OnTrial] = None, base: Optional[dict[str, float]] = None) -> optuna.Study:
    """Run the method's study until `cfg.trials` trials are finished (resuming what a database already holds).

    Trials other workers are running count toward the budget; this worker waits for them (or for them to
    go stale and be re-queued) instead of starting more, so every method ends with exactly `cfg.trials`.
    `base` caches the untrained model's scores across the methods of one run (the same sets and attack):
    measured once, recorded in every study that lacks them.
    """
    study = load_study(cfg, method)
    callbacks = [lambda _s, t: on_trial(method, t)] if on_trial else []
    objective: Optional[Objective] = None
    if BASE_ATTR not in study.user_attrs:  # the untrained model's scores, for the report
        base = {} if base is None else base
        if not base:
            objective = Objective(cfg, method)
            base.update(vars(objective.base_scores()))
        study.set_user_attr(BASE_ATTR, dict(base))
    runs = 0
    while runs < 3 * cfg.trials:  # each call runs one trial (or `jobs`); a failing one is retried a bounded number of times
        fail_stale(study)
        missing = cfg.trials - finished(study) - running(study)
        if missing > 0:
            objective = objective or Objective(cfg, method)
            # at most `jobs` trials per call, the count re-read in between: another worker may have filled the budget
            n = min(missing, cfg.jobs)
            study.optimize(objective, n_trials=n, n_jobs=cfg.jobs, callbacks=callbacks, catch=(RuntimeError, ValueError))
            runs += 1
        elif running(study):
            time.sleep(cfg.heartbeat_s)
        else:
            break
    log.info("study %s: %d trials finished", study.study_name, finished(study))
    return study


def run_tuning(cfg: TuneConfig, on_trial: Optional[OnTrial] = None) -> dict[str, optuna.Study]:
    """Every method's study, one after another, with the same number of trials each."""
    cfg = cfg.checked()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    base: dict[str, float] = {}
    return {method: tune_method(cfg, method, on_trial, base) for method in cfg.methods}
