"""`clipshield export`: image and text encoders to ONNX, with parity check and model card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch
from pydantic import ValidationError

from clipshield.attacks.budget import budget_help, to_pixels
from clipshield.cli.commands.common import add_model_args, add_score_signals_arg, model_from_args, score_config
from clipshield.service.bundle import read_card
from clipshield.service.config import flag_config
from clipshield.service.errors import ConfigError
from clipshield.service.precision import PrecisionInfo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the image and text encoders to ONNX (serving bundle)",
        description="Export a model's image encoder ([0,1] pixels -> unit-norm embedding) and text encoder "
        "(token ids -> unit-norm embedding) to ONNX with a dynamic batch axis, check parity against PyTorch "
        "(max abs diff <= 1e-4 at batch 1 and 8), and write the serving bundle: default labels with their "
        "precomputed text head, the CLIPure anchor, the model card and a sha256 manifest.",
    )
    add_model_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/export/miniworld"), help="output folder (default: %(default)s)")
    p.add_argument(
        "--labels",
        default=None,
        help='default label set: a registered data set, folder/<dir> (with --data-root), or a JSON file {"classnames": [...], '
        '"templates": [...]} (default: a fine-tuned model\'s training data with its prompt, else miniworld/plain/color_shape/seen)',
    )
    p.add_argument(
        "--data-root", type=Path, default=None, help="folder holding --labels' data set (default: the fine-tuning run's, else none)"
    )
    p.add_argument(
        "--version",
        default=None,
        help="model version reported in responses (default: ft<steps>-<weights digest> for a fine-tuned model, else 1.0)",
    )
    p.add_argument(
        "--measure-purify",
        type=int,
        default=0,
        metavar="N",
        help="choose the purification default by measurement on N mini-world images: on only if it "
        "beats no purification under a straight-through attack (0: not measured, off by default)",
    )
    p.add_argument("--no-purify", action="store_true", help="keep purification off by default even if --measure-purify finds a gain")
    # Removed with bundle format 2 (one detector, issue 24): still parsed, so that `run` can say what replaces them.
    p.add_argument("--calibrate-flag", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--flag-fpr", type=float, default=None, help=argparse.SUPPRESS)
    _score_args(p)
    _precision_args(p)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads for export and checks (default: %(default)s)")
    p.set_defaults(run=run)


def _precision_args(p: argparse.ArgumentParser) -> None:
    """The reduced-precision flags (docs/quantization.md)."""
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="number format of the served image encoder: int8 (ONNX Runtime dynamic quantisation) or fp16 (cuda "
        "execution provider only) is added beside the fp32 encoder and served by default only when it loses at most 1 "
        "point of clean and robust accuracy (transfer and straight-through PGD) against fp32 (default: %(default)s)",
    )
    p.add_argument(
        "--precision-n",
        type=int,
        default=512,
        metavar="N",
        help="images of --precision-data the reduced encoder is compared with fp32 on (0: not measured, so fp32 serves) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--precision-data",
        default=None,
        metavar="DATASET",
        help="registered data set of that comparison (default: the model's own mini world, plain colour+shape seen)",
    )
    p.add_argument(
        "--force-precision",
        action="store_true",
        help="serve the reduced encoder even when it loses more than 1 point (recorded in the card)",
    )


def _score_args(p: argparse.ArgumentParser) -> None:
    """The attack-score calibration flags (docs/security.md section 5.1)."""
    p.add_argument(
        "--calibrate-score",
        type=int,
        default=0,
        metavar="N",
        help="calibrate the detector behind the `flagged` response field (the attack score) on N clean and N "
        "PGD-attacked images of --score-data, plus N held out for the rates written to the model card; with "
        "--score-signals anchor it is the anchor-only flag, run on every request; 0: no detector, nothing is "
        "flagged (default: %(default)s)",
    )
    p.add_argument(
        "--score-data",
        default="miniworld/plain/color_shape/seen",
        metavar="DATASET",
        help="registered data set of clean traffic to calibrate the attack score on (default: %(default)s)",
    )
    p.add_argument("--score-fpr", type=float, default=0.05, help="target false-positive rate of the attack score (default: %(default)s)")
    add_score_signals_arg(p)
    p.add_argument(
        "--score-threshold-images",
        type=int,
        default=None,
        metavar="M",
        help="clean images (beyond the N fit and N held-out ones) the threshold is also set on: the false-positive "
        "rate is a tail quantile, steadier from more images, and clean images need no attack (default: 4 x N)",
    )
    p.add_argument(
        "--score-eps",
        type=float,
        default=None,
        help=budget_help("PGD budget of the score's calibration attack", "the --score-data set's registered reference (mini world 4/255)"),
    )


def load_labels(spec: Optional[str], data_root: Optional[Path] = None, finetune_card=None):
    """LabelChoice from a JSON file path, a registered or folder data set name, or (None) the run's own."""
    from clipshield.export.labels import LabelChoice, dataset_labels, run_labels
    from clipshield.service.bundle import LabelSet

    if spec is None:
        return run_labels(finetune_card, data_root)
    path = Path(spec)
    if path.suffix != ".json":
        return dataset_labels(spec, data_root)
    if not path.is_file():
        raise ConfigError(f"label file not found: {path}")
    try:
        labels = LabelSet.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        problem = exc.msg if isinstance(exc, json.JSONDecodeError) else f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}"
        raise ConfigError(f"label file {path} is not a label set: {problem}") from None
    return LabelChoice(labels=labels, source=f"label file {path}")


def _measure_purify(model, n: int):
    """Purification sweep on n mini-world images, printed; returns its SweepResult."""
    from clipshield.export.purify_calibration import SweepConfig, sweep_purification

    result = sweep_purification(model, flag_config(SweepConfig, n=n))
    sweep = result.sweep
    print(f"no purification: clean {sweep.baseline_clean:.1%}, {sweep.attack} {sweep.baseline_robust:.1%}")
    for row in sweep.rows:
        mark = "" if row.eligible else "  (ineligible)"
        print(f"  steps={row.steps:<3d} step_size={row.step_size:<6g} clean {row.clean:6.1%}  BPDA {row.robust_bpda:6.1%}{mark}")
    for note in result.notes:
        print("note:", note)
    return result


def _calibrate_score(model, labels, args: argparse.Namespace):
    """Attack-score calibration on n + n images of --score-data, printed; returns the AttackScoreCalibration."""
    from clipshield.datasets import reference_eps
    from clipshield.export.score_calibration import ScoreCalibrationConfig, calibrate_attack_score

    n, dataset = args.calibrate_score, args.score_data
    eps = reference_eps(dataset) if args.score_eps is None else to_pixels(args.score_eps, "--score-eps", allow_zero=False)
    score = score_config(args.score_signals)
    cfg = flag_config(
        ScoreCalibrationConfig,
        {
            "target_fpr": "score-fpr",
            "n_calibration": "calibrate-score",
            "n_eval": "calibrate-score",
            "n_threshold": "score-threshold-images",
        },
        dataset=dataset,
        n_calibration=n,
        n_eval=n,
        n_threshold=4 * n if args.score_threshold_images is None else args.score_threshold_images,
        target_fpr=args.score_fpr,
        eps=eps,
        score=score,
    )
    cal = calibrate_attack_score(model, labels, cfg)
    print(f"attack score: > {cal.params.threshold:.4f} (weights {[round(w, 3) for w in cal.params.weights]} on {list(cal.params.signals)})")
    for rate in cal.rates:
        auc = f", AUROC {rate.auroc:.3f}" if rate.auroc is not None else ""
        print(f"  {rate.attack + f' ({rate.dataset})':<48s} flagged {rate.flag_rate:6.1%}{auc}")
    return cal


REMOVED_FLAG = (
    "--calibrate-flag/--flag-fpr were removed (bundle format 2: one detector); use --calibrate-score N --score-signals "
    "anchor [--score-fpr F] for the anchor-only flag, or --calibrate-score N for the default signals"
)


def run(args: argparse.Namespace) -> int:
    from clipshield.export import export_model
    from clipshield.export.exporter import ExportMeasurements
    from clipshield.training.model_card import read_finetune_card

    if args.calibrate_flag is not None or args.flag_fpr is not None:
        raise ConfigError(REMOVED_FLAG)
    from clipshield.export.precision_eval import PrecisionEvalConfig

    precision_eval = flag_config(PrecisionEvalConfig, {"n": "precision-n"}, dataset=args.precision_data, n=args.precision_n)
    torch.set_num_threads(args.threads)
    model = model_from_args(args)
    finetune_card = read_finetune_card(Path(args.model)) if Path(args.model).is_dir() else None
    measured = ExportMeasurements()
    if args.measure_purify:
        result = _measure_purify(model, args.measure_purify)
        measured = ExportMeasurements(purify=result.chosen, purify_sweep=result.sweep, accuracy=result.accuracy, notes=result.notes)
    if args.no_purify:
        measured = measured.model_copy(
            update={
                "purify": measured.purify.model_copy(
                    update={"enabled": False, "chosen_by": measured.purify.chosen_by + "; off by operator (--no-purify)"}
                )
            }
        )
    labels = load_labels(args.labels, args.data_root, finetune_card)
    if args.calibrate_score:
        score = _calibrate_score(model, labels.labels, args)
        measured = measured.model_copy(update={"attack_score": score})
    out = export_model(
        model,
        args.out,
        labels=labels,
        version=args.version,
        measured=measured,
        finetune_card=finetune_card,
        precision=args.precision,
        precision_eval=precision_eval,
        force_precision=args.force_precision,
    )
    card = read_card(out)
    print(f"exported {card.name} {card.version} to {out}")
    print(f"default labels ({len(labels.labels.classnames)}): {labels.source}")
    if card.training is not None:
        t = card.training
        print(
            f"fine-tuned: {t.method}, {t.steps} steps ({t.epochs:g} epochs) at {t.image_size} px; "
            f"{len(card.accuracy)} accuracies carried from its card"
        )
    print(f"ONNX parity (max abs diff): {card.parity.model_dump_json() if card.parity else None}")
    print(f"purification default: {card.purify.model_dump_json()}")
    _print_precision(card.precision)
    return 0


def _print_precision(info: PrecisionInfo) -> None:
    """The served precision, its parity and its comparison with fp32, when a reduced one was exported."""
    if info.parity is None:
        return
    reduced, parity = info.exported[-1], info.parity
    print(f"{reduced} parity vs fp32 (1 - cos): b1 {parity.batch_1:.2e}, b8 {parity.batch_8:.2e} (tolerance {parity.tolerance:g})")
    for a in info.accuracy:
        print(
            f"  {a.dataset} (n={a.n}, {a.attack}): fp32 clean {a.fp32_clean:.1%}, robust {a.fp32_robust:.1%}; "
            f"{reduced} clean {a.clean:.1%}, transfer {a.transfer_robust:.1%}, BPDA {a.bpda_robust:.1%}"
        )
    print(f"served precision: {info.chosen_by}")
