"""Typed settings of a tuning study (`clipshield experiment tune`): what is tuned, on what, at what fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError

MINI_WORLDS = ("miniworld", "miniworld224")  # clipshield.datasets.miniworld.worlds.WORLDS
HELDOUT_DOMAINS = ("noisy", "textured", "outlined")


class TuneConfig(StrictModel):
    """One study per method, the same number of trials each, scored on validation splits only.

    Objective (maximised): `robust_weight` x seen robust accuracy + (1 - `robust_weight`) x held-out
    clean accuracy, in %, on the `val` split of `seen_sets` and `heldout_sets`. A trial is a short
    fine-tuning run (`steps`, training attack `attack_steps`) checked half-way (pruned when below the
    median of earlier trials) and scored on `val_limit` images per set with PGD-`eval_steps`.
    """

    data: str = "miniworld-train"
    data_root: Optional[Path] = None
    model: Optional[str] = None
    pretrained: Optional[str] = None
    methods: list[str] = Field(min_length=1)
    trials: int = Field(default=8, gt=0, description="trials per method (pruned ones count)")
    steps: int = Field(default=100, gt=1)
    batch_size: Optional[int] = Field(default=None, gt=1)
    attack_steps: Optional[int] = Field(default=None, ge=1, description="training PGD steps; default: the recipe's")
    eps: Optional[float] = Field(default=None, ge=0, description="training and validation budget; default: the data set's reference")
    val_limit: int = Field(default=128, gt=0)
    eval_steps: int = Field(default=3, ge=1)
    robust_weight: float = Field(default=0.5, ge=0, le=1)
    seen_sets: tuple[str, ...] = ()
    heldout_sets: tuple[str, ...] = ()
    seed: int = 0
    output: Path = Path("runs/tune")
    storage: Optional[str] = Field(default=None, description="Optuna storage URL; default: sqlite:///<output>/study.db")
    warm_start: Optional[Path] = Field(
        default=None, description="another study's chosen.json (or its folder): each method's chosen point is enqueued as one trial"
    )
    jobs: int = Field(default=1, ge=1)
    threads: Optional[int] = Field(default=None, gt=0)
    heartbeat_s: int = Field(default=10, gt=0)
    grace_s: int = Field(default=30, gt=0, description="a RUNNING trial without a heartbeat this long is failed and retried")

    def world(self) -> Optional[str]:
        """The mini world the training set belongs to, or None for a real data set."""
        return next((w for w in MINI_WORLDS if self.data == f"{w}-train"), None)

    def validation_sets(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(seen sets, held-out sets), each read on its `val` split: a mini world's plain seen classes and its
        three other domains, or the given ones (default: the training set itself, whose clean accuracy then
        stands in for held-out clean accuracy)."""
        world = self.world()
        if world is not None:
            seen = self.seen_sets or (f"{world}/plain/color_shape/seen",)
            held = self.heldout_sets or tuple(f"{world}/{d}/color_shape/seen" for d in HELDOUT_DOMAINS)
            return seen, held
        seen = self.seen_sets or (self.data,)
        return seen, self.heldout_sets or seen

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output / 'study.db').as_posix()}"

    def study_name(self, method: str) -> str:
        return f"{self.world() or self.data.replace('/', '-')}-{method}"

    def checked(self) -> TuneConfig:
        """Self, after refusing what cannot be tuned honestly (unknown methods, a folder without val/)."""
        from clipshield.training.methods import list_methods

        unknown = [m for m in self.methods if m not in list_methods()]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(list_methods())}")
        for name in {*self.validation_sets()[0], *self.validation_sets()[1]}:
            if name.startswith("folder/"):
                tree = (self.data_root or Path(".")) / name.split("/", 1)[1]
                if not (tree / "val").is_dir():
                    raise ConfigError(
                        f"{name}: tuning reads a validation split and never the test images; add {tree}/val/<class>/<images> "
                        "(a few images per class held out of train/)"
                    )
        return self
