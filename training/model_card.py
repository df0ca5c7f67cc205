"""The fine-tuned model's card: hyper-parameters, base model, data, attacks and zero-shot results.

Written next to the final checkpoint by `training.finetune`, carried along by export and serving.
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from service.pixel_model import PixelCLIP
from service.provenance import git_commit as code_version
from service.provenance import weights_digest

from .methods import get_method

if TYPE_CHECKING:
    from .finetune import FinetuneConfig

MODEL_CARD = "model_card.json"

def evaluate_model(cfg: "FinetuneConfig", model: PixelCLIP) -> dict[str, dict[str, float]]:
    """Clean and PGD accuracy on `cfg.eval_datasets` through the evaluation harness (`training.eval.runner`)."""
    if not cfg.eval_datasets:
        return {}
    from .eval.runner import EvalConfig, Evaluator

    ecfg = EvalConfig(
        model_id=f"{cfg.method}:{weights_digest(model.visual)}", datasets=list(cfg.eval_datasets), attacks=["pgd"],
        eps=cfg.eval_eps, steps=cfg.eval_steps, seed=cfg.seed, limit=cfg.eval_limit, batch_size=cfg.eval_batch_size,
        data_root=cfg.data_root, image_size=cfg.image_size, device=cfg.device, out_dir=cfg.output / "eval",
    )
    return {r.key.dataset: {"clean": r.clean, "robust": r.robust, "n": r.n} for r in Evaluator(model, ecfg).run()}

def model_card(
    cfg: "FinetuneConfig", model: PixelCLIP, base_record: Any, data: Any, template: str, results: dict, seconds: float
) -> dict[str, Any]:
    """The JSON model card that export and serving carry along."""
    return {
        "schema_version": 1,
        "method": cfg.method,
        "method_description": get_method(cfg.method).description,
        "hyperparameters": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("output", "resume", "threads", "workers")},
        "base_model": {"model": cfg.model, "pretrained": cfg.pretrained, "weights": cfg.weights, "record": base_record.name},
        "data": {"name": cfg.data, "images": len(data), "classes": len(data.classnames), "template": template},
        "data_preprocess": {"preset": data.protocol["preprocess"], "description": data.preprocess.describe(),
                            "config": data.preprocess.model_dump(mode="json")},
        "training_attack": {"kind": get_method(cfg.method).attack, "eps": cfg.eps, "alpha": cfg.attack_alpha, "steps": cfg.attack_steps},
        "eval_attack": {"name": "pgd", "eps": cfg.eval_eps, "steps": cfg.eval_steps, "alpha": "eps/4", "restarts": 1, "limit": cfg.eval_limit},
        "results": results,
        "weights_digest": weights_digest(model.visual),
        "train_seconds": round(seconds, 2),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
    }

