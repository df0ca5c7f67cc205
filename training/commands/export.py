"""`clipshield export`: image and text encoders to ONNX, with parity check and model card."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .common import add_model_args, model_from_args


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
    p.add_argument("--labels", default="miniworld/plain/color_shape/seen",
                   help="default label set: a data set name, or a JSON file {\"classnames\": [...], \"templates\": [...]} "
                   "(default: %(default)s)")
    p.add_argument("--version", default="1.0", help="model version reported in responses (default: %(default)s)")
    p.add_argument("--measure-purify", type=int, default=0, metavar="N",
                   help="choose the purification default by measurement on N mini-world images (0: use the "
                   "defaults recorded in service.bundle.PurifyDefaults)")
    p.add_argument("--no-purify", action="store_true", help="purification off by model default")
    p.add_argument("--calibrate-flag", type=int, default=0, metavar="N",
                   help="calibrate the adversarial-input flag on N clean mini-world images (plus N held out for "
                   "the rates and AUROC written to the model card); 0: flag only on a purification flip (default: %(default)s)")
    p.add_argument("--flag-fpr", type=float, default=0.05, help="target false-positive rate of the flag (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads for export and checks (default: %(default)s)")
    p.set_defaults(run=run)


def load_labels(spec: str):
    """LabelSet from a JSON file path or a registered data set name."""
    from service.bundle import LabelSet
    from training.export import labels_from_dataset

    path = Path(spec)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"label file not found: {path}")
        return LabelSet.model_validate(json.loads(path.read_text()))
    return labels_from_dataset(spec)


def run(args: argparse.Namespace) -> int:
    from service.bundle import PurifyDefaults
    from training.export import export_model
    from training.export.purify_calibration import SweepConfig, sweep_purification

    torch.set_num_threads(args.threads)
    model = model_from_args(args)
    purify, accuracy, notes, sweep = PurifyDefaults(), (), (), ()
    if args.measure_purify:
        result = sweep_purification(model, SweepConfig(n=args.measure_purify))
        print(f"no purification: clean {result.baseline_clean:.1%}, PGD {result.baseline_pgd:.1%}")
        for row in result.rows:
            print(f"  steps={row.steps:<3d} step_size={row.step_size:<6g} clean {row.clean:6.1%}  BPDA-PGD {row.robust_bpda:6.1%}")
        purify, accuracy, notes, sweep = result.chosen, result.accuracy, result.notes, result.rows
        for note in notes:
            print("note:", note)
    if args.no_purify:
        purify = purify.model_copy(update={"enabled": False})
    flag = None
    if args.calibrate_flag:
        from training.export.flag_calibration import FlagCalibrationConfig, calibrate_flag

        flag = calibrate_flag(model, FlagCalibrationConfig(n_calibration=args.calibrate_flag, n_eval=args.calibrate_flag,
                                                           target_fpr=args.flag_fpr))
        print(f"flag: anchor_score < {flag.anchor_below:.4f}")
        for rate in flag.rates:
            auc = f", AUROC {rate.auroc:.3f}" if rate.auroc is not None else ""
            print(f"  {rate.attack:<48s} flagged {rate.flag_rate:6.1%}{auc}")
    out = export_model(model, args.out, labels=load_labels(args.labels), version=args.version,
                       purify=purify, accuracy=accuracy, notes=notes, purify_sweep=sweep, flag=flag)
    card = json.loads((out / "model_card.json").read_text())
    print(f"exported {card['name']} {card['version']} to {out}")
    print(f"ONNX parity (max abs diff): {json.dumps(card['parity'])}")
    print(f"purification default: {json.dumps(card['purify'])}")
    return 0
