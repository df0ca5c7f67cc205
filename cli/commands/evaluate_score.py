"""`clipshield evaluate --attack-score`: how well the served attack score tells attacked images from clean ones.

The score (`clipshield.models.attack_score`, docs/security.md §5.1) is calibrated on clean and PGD images of
one data set, then judged on held-out images of each `--datasets` set: AUROC, TPR at 1 % and 5 % FPR, the
calibrated flag's rate (clean: its false-positive rate) for every `--attacks` attack at 0.5x, 1x and 2x the
reference budget, and an adaptive attacker who knows the score. The work is `training.eval.detection`;
this module maps the evaluate command's flags onto it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipshield.attacks.adaptive_defences import PENALTIES, UPSAMPLES
from clipshield.attacks.budget import as_255
from clipshield.cli.commands.common import add_score_signals_arg, model_from_args, progress, score_config
from clipshield.service.config import flag_config
from clipshield.service.errors import ConfigError

SCORE_ATTACKS = ("pgd", "cw")
DEFAULT_SCORE_STEPS = 10  # the served score's calibration attack (PGD-10), also the detection table's
DEFAULT_LIMIT = 128


def add_score_args(p: argparse.ArgumentParser) -> None:
    """The `attack score` flag group of `clipshield evaluate`."""
    g = p.add_argument_group("attack score (detection telemetry; docs/security.md section 5.1)")
    g.add_argument(
        "--attack-score",
        action="store_true",
        help="evaluate the attack score instead of accuracy: calibrate it on --score-calibration, then report AUROC, "
        "TPR at 1%%/5%% FPR, the flag's rate and an adaptive attacker per --datasets set and --attacks attack (pgd, cw) "
        f"at 0.5x/1x/2x --eps; --limit held-out images per set (default {DEFAULT_LIMIT}), --steps attack steps "
        f"(default {DEFAULT_SCORE_STEPS}); writes detection.json and detection.md to --out",
    )
    g.add_argument(
        "--score-calibration", default=None, help="registered data set the score is fitted on (default: the first of --datasets)"
    )
    g.add_argument("--score-n-calibration", type=int, default=128, help="clean (and as many PGD) calibration images (default: %(default)s)")
    g.add_argument(
        "--score-fpr", type=float, default=0.05, help="target false-positive rate of the flag on clean images (default: %(default)s)"
    )
    add_score_signals_arg(g, ", + agreement with --reference")
    g.add_argument("--reference", default=None, help="original (non-robust) model for the agreement signal (default: none)")
    g.add_argument(
        "--score-lams",
        type=float,
        nargs="+",
        default=[0.0, 0.1, 1.0, 10.0],
        help="adaptive attacker's penalty weights (default: %(default)s)",
    )
    g.add_argument("--score-penalties", nargs="+", choices=list(PENALTIES), default=list(PENALTIES), help="(default: %(default)s)")
    g.add_argument(
        "--score-eot", type=int, default=2, help="adaptive attacker's draws of the score's noise per step (default: %(default)s)"
    )
    g.add_argument(
        "--score-blocks",
        type=int,
        nargs="+",
        default=[1, 8],
        help="adaptive attacker's perturbation tiles: 1 = per pixel, B = constant on BxB tiles, which a median filter "
        "cannot remove (default: %(default)s)",
    )
    g.add_argument(
        "--score-upsample",
        nargs="+",
        choices=list(UPSAMPLES),
        default=list(UPSAMPLES),
        help="how tiles > 1 fill the image: nearest = constant tiles, bilinear = a smooth (locally linear) perturbation, "
        "which a median filter keeps (default: %(default)s)",
    )


def detection_config(args: argparse.Namespace, datasets: list[str], eps: float):
    """DetectionConfig from the evaluate flags (`eps` in pixel units)."""
    from clipshield.evaluation.detection import DetectionConfig

    wrong = [a for a in args.attacks if a not in SCORE_ATTACKS]
    if wrong:
        raise ConfigError(f"--attack-score evaluates against {' and '.join(SCORE_ATTACKS)}; not {', '.join(wrong)}")
    flags = {"calibration_dataset": "score-calibration", "n_calibration": "score-n-calibration", "n_eval": "limit"}
    flags |= {"target_fpr": "score-fpr", "ref_eps": "eps", "adaptive_lams": "score-lams", "adaptive_eot": "score-eot"}
    flags |= {"adaptive_blocks": "score-blocks"}
    return flag_config(
        DetectionConfig,
        flags,
        calibration_dataset=args.score_calibration or datasets[0],
        eval_datasets=tuple(datasets),
        n_calibration=args.score_n_calibration,
        n_eval=args.limit or DEFAULT_LIMIT,
        target_fpr=args.score_fpr,
        ref_eps=eps,
        attacks=tuple(args.attacks),
        steps=DEFAULT_SCORE_STEPS if args.steps is None else args.steps,
        adaptive_lams=tuple(args.score_lams),
        adaptive_penalties=tuple(args.score_penalties),
        adaptive_eot=args.score_eot,
        adaptive_blocks=tuple(args.score_blocks),
        adaptive_upsample=tuple(args.score_upsample),
        score=score_config(args.score_signals, with_reference=bool(args.reference)),
        seed=args.seed,
        batch_size=args.batch_size,
    )


def run_score(args: argparse.Namespace, datasets: list[str], eps: float) -> int:
    """Calibrate and evaluate the score; write detection.json and detection.md under --out."""
    from clipshield.evaluation.detection import evaluate_detection, markdown, n_rows
    from clipshield.models.factory import load_model

    cfg = detection_config(args, datasets, eps)
    print(
        f"evaluate --attack-score: fit on {cfg.n_calibration} clean + PGD images of {cfg.calibration_dataset}, "
        f"judge {cfg.n_eval} held-out images of {len(datasets)} set(s) under {', '.join(cfg.attacks)} at "
        f"{', '.join(as_255(eps * f) for f in cfg.eps_factors)} ({cfg.steps} steps) and the adaptive attacker; results in {args.out}",
        flush=True,
    )
    model = model_from_args(args)
    reference = load_model(args.reference) if args.reference else None
    with progress(n_rows(cfg), "attack score", unit="row", disable=False) as bar:
        result = evaluate_detection(model, cfg, reference, on_row=lambda name: (bar.set_postfix_str(name), bar.update()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detection.json").write_text(json.dumps(result, indent=2))
    (out / "detection.md").write_text(markdown(result))
    print(markdown(result))
    print(f"json:  {out / 'detection.json'}\ntable: {out / 'detection.md'}")
    return 0
