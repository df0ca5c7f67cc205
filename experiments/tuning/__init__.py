"""Equal-budget hyper-parameter tuning of the fine-tuning methods on Optuna (`clipshield experiment tune`)."""

from clipshield.experiments.tuning.config import TuneConfig
from clipshield.experiments.tuning.study import run_tuning, tune_method

__all__ = ["TuneConfig", "run_tuning", "tune_method"]
