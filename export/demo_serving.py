"""The serving half of `clipshield demo`: export -> archive -> TorchServe -> classify over HTTP.

Classifies a few mini-world images, clean and PGD-attacked (crafted on the un-purified zero-shot
classifier, then sent as 8-bit PNGs), each with purification off and on, prints the answers and the
`clipshield_` metric lines, then stops the server (`once`) or leaves it running with instructions.
Output goes through `out` (the CLI passes `print`), so this module itself never prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

from clipshield.export.exporter import DEFAULT_LABEL_DATASET, ExportMeasurements, export_model
from clipshield.handlers.client import ServingClient
from clipshield.handlers.torchserve.archive import build_archive
from clipshield.handlers.torchserve.launcher import ServeConfig, start_server, stop_server
from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.bundle import AccuracyEntry, ModelCard, PurifyDefaults
from clipshield.service.preprocess import encode_png

METRIC_PREFIXES = ("clipshield_requests_total", "clipshield_flipped_total", "clipshield_flagged_total", "clipshield_model_accuracy")


def attacked_images(
    model: PixelCLIP, images: torch.Tensor, labels: torch.Tensor, classnames, templates, eps: float, seed: int
) -> torch.Tensor:
    """PGD-10 adversarial images [B, 3, H, W] in [0, 1] against the un-purified zero-shot classifier."""
    from clipshield.attacks.pgd import PGD
    from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head

    clf = ZeroShotClassifier(model, build_text_head(model, classnames, templates))
    return PGD(clf, eps=eps, steps=10, generator=torch.Generator().manual_seed(seed))(images, labels)


def serving_demo(
    model: PixelCLIP,
    work_dir: Path,
    model_store: Path,
    out: Callable[[str], None],
    n_images: int = 4,
    eps: float = 4 / 255,
    once: bool = True,
    serve: Optional[ServeConfig] = None,
    purify: Optional[PurifyDefaults] = None,
    accuracy: tuple[AccuracyEntry, ...] = (),
    notes: tuple[str, ...] = (),
    version: str = "1.0",
    finetune_card: Optional[ModelCard] = None,
    dataset: str = DEFAULT_LABEL_DATASET,
    real_photos: bool = False,
) -> dict:
    """Run the whole serving path; returns {"answers": [...], "metrics": [...]} for callers and tests.

    The model is exported as `model.record.name` at `version` (the model card's name and version, which
    every answer carries). `dataset` names the images sent; `real_photos` also sends scikit-image's sample
    photographs (any size, JPEG) to show the 224-pixel model's serving path on real images.
    """
    from clipshield.datasets.registry import DatasetRequest, build_in_memory_dataset

    measured = ExportMeasurements(purify=purify or PurifyDefaults(), accuracy=accuracy, notes=notes)
    bundle = export_model(model, Path(work_dir) / "export", version=version, measured=measured, finetune_card=finetune_card)
    archive = build_archive(bundle, model_store)
    out(f"exported {bundle} and archived {archive}; starting TorchServe ...")
    handle = start_server(model_store, serve or ServeConfig())
    ds = build_in_memory_dataset(dataset, DatasetRequest(limit=n_images, preprocess=model.record.preprocess))
    images, labels = ds.images(), torch.tensor(ds.labels)
    adv = attacked_images(model, images, labels, ds.classnames, ds.templates, eps, seed=0)
    client = ServingClient(handle)
    answers = send_dataset_images(client, out, images, adv, labels, ds.classnames)
    if real_photos:
        answers += send_photos(client, out)
    scraped = client.metrics_after("clipshield_requests_total", len(answers))
    metrics = [line for line in scraped if line.startswith(METRIC_PREFIXES) or "_count{" in line]
    out("\nmetrics (clipshield_*):")
    for line in metrics:
        out("  " + line)
    if once:
        stop_server(model_store)
        out("\nTorchServe stopped (--once).")
    else:
        cfg = handle.config
        out(f"\nTorchServe keeps running on {cfg.inference_address} (token in {handle.state_dir / 'key_file.json'}).")
        out(f"Stop it with: clipshield serve --stop --model-store {model_store}")
    return {"answers": answers, "metrics": metrics}


def send_dataset_images(
    client: ServingClient,
    out: Callable[[str], None],
    images: torch.Tensor,
    adv: torch.Tensor,
    labels: torch.Tensor,
    classnames: list[str],
) -> list[dict]:
    """Send each image clean and attacked, with and without purification, as 8-bit PNGs; one table row per answer."""
    answers = []
    out(f"\n{'image':8s} {'true label':18s} {'input':8s} {'purify':6s} {'top-1':18s} {'score':>5s} flipped")
    for i in range(len(labels)):
        truth = classnames[int(labels[i])]
        for kind, batch in (("clean", images), ("attacked", adv)):
            for purified in (False, True):
                status, body = client.predict(encode_png(batch[i].detach().numpy()), purify=purified)
                top = body["predictions"][0] if status == 200 else {"label": f"HTTP {status}", "score": float("nan")}
                answers.append({"index": i, "truth": truth, "input": kind, "purify": purified, **top, "flipped": body.get("flipped")})
                out(
                    f"{i:<8d} {truth:18s} {kind:8s} {str(purified).lower():6s} {top['label']:18s} {top['score']:5.2f} {body.get('flipped')}"
                )
    return answers


def send_photos(client: ServingClient, out: Callable[[str], None]) -> list[dict]:
    """Send scikit-image's sample photos as JPEGs (clean, no purification); the server resizes them to the model's input.

    They show no colour-shape scene, so the answer is whichever label is nearest: the point is the path
    (JPEG of any size -> `to_pixels` -> 224 px -> model), not the label. Needs scikit-image (the dev extra).
    """
    import io

    from PIL import Image

    try:
        from skimage import data
    except ImportError:
        out("\nreal photos: not sent, scikit-image is not installed (pip install 'clipshield[dev]')")
        return []
    answers = []
    out(f"\n{'real photo':24s} {'size':10s} {'top-1':18s} {'score':>5s}")
    for name in ("chelsea", "astronaut", "coffee"):
        photo = getattr(data, name)()
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format="JPEG", quality=90)
        status, body = client.predict(buf.getvalue(), purify=False)
        top = body["predictions"][0] if status == 200 else {"label": f"HTTP {status}", "score": float("nan")}
        size = f"{photo.shape[1]}x{photo.shape[0]}"
        answers.append({"index": name, "truth": None, "input": "photo", "purify": False, **top, "flipped": body.get("flipped")})
        out(f"{name:24s} {size:10s} {top['label']:18s} {top['score']:5.2f}")
    return answers
