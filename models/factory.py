"""One factory for every model source: shipped mini-world model, local checkpoint, open_clip tag.

`load_model` never downloads implicitly when `offline` is set (or CLIPSHIELD_OFFLINE=1 /
HF_HUB_OFFLINE=1); online, one short probe of the weights host comes first (no network: cached
weights or one clear `ModelLoadError` at once, not a minute of hub retries), then open_clip's hub
loading is used as real users expect, and a failure becomes one clear `ModelLoadError`. OpenAI weights
need QuickGELU; the factory turns it on from the tag's own
pretrained config instead of silently building the GELU variant (docs/methods.md §10).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from clipshield.models.checkpoint import is_checkpoint_dir, load_record, load_weights
from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.config import ModelRecord, PreprocessConfig, TokenizerConfig
from clipshield.service.errors import ModelLoadError

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"
MODEL_CONFIGS_DIR = Path(__file__).resolve().parent / "model_configs"  # architecture JSON files (package data)
SHIPPED_MODELS = {"miniworld": SHIPPED_DIR / "miniworld", "miniworld224": SHIPPED_DIR / "miniworld224"}
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
HUB_PROBE_TIMEOUT_S = 2.0
# Loggers of the download clients: their retry chatter is replaced by one clear error of ours.
NOISY_LOGGERS = ("huggingface_hub", "urllib3", "requests", "filelock")


def offline_from_env() -> bool:
    """The one place the offline switch is read from the environment (ours, or the hub client's)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("CLIPSHIELD_OFFLINE", "HF_HUB_OFFLINE"))


def unknown_architecture(name: str) -> ModelLoadError:
    """Error for an architecture open_clip does not know, naming up to five close matches."""
    import open_clip

    by_lower = {m.lower(): m for m in open_clip.list_models()}
    close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.6)]
    hint = f"close matches: {', '.join(close)}" if close else "no close match; open_clip.list_models() lists them all"
    return ModelLoadError(f"unknown open_clip architecture {name!r}; {hint}")


def looks_like_path(value: str) -> bool:
    """True for a --pretrained / --model value meant as a file: it has a path separator or a weights suffix."""
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(sep in value for sep in seps) or Path(value).suffix.lower() in WEIGHT_SUFFIXES


def hub_reachable(host: str, port: int, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to the weights host, bounded by `timeout` (name resolution included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)  # getaddrinfo ignores socket timeouts; a stuck lookup counts as unreachable
    return bool(result and result[0])


def _weights_host(cfg: dict[str, Any]) -> Optional[tuple[str, int]]:
    """(host, port) open_clip would download a tag's weights from (the hub when the tag has one)."""
    url = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co") if cfg.get("hf_hub") else cfg.get("url")
    parsed = urlparse(url or "")
    if not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)


@contextlib.contextmanager
def _quiet_download_clients() -> Iterator[None]:
    """Silence the hub client's and urllib3's retry logging and warnings for the duration."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def build_clip(record: ModelRecord) -> nn.Module:
    """Randomly initialised open_clip model of a record's architecture (no weights, no network)."""
    import open_clip

    if record.arch is not None:
        arch = dict(record.arch)
        clip: nn.Module = open_clip.model.CLIP(
            embed_dim=arch.pop("embed_dim"),
            vision_cfg=arch.pop("vision_cfg"),
            text_cfg=arch.pop("text_cfg"),
            quick_gelu=arch.pop("quick_gelu", False),
            **{k: v for k, v in arch.items() if k in ("init_logit_scale", "init_logit_bias")},
        )
        return clip
    name = record.open_clip_name or ""
    if name not in open_clip.list_models():
        raise unknown_architecture(name)
    created: nn.Module = open_clip.create_model(name, pretrained=None)
    return created


def record_from_arch(name: str, arch: dict[str, Any], preprocess: Optional[PreprocessConfig] = None) -> ModelRecord:
    """Record for an inline open_clip config (e.g. the goldens' tiny_clip.json)."""
    image_size = int(arch["vision_cfg"].get("image_size", 224))
    context = int(arch["text_cfg"].get("context_length", 77))
    return ModelRecord(
        name=name,
        arch=arch,
        preprocess=preprocess or PreprocessConfig(image_size=image_size),
        tokenizer=TokenizerConfig(kind="open_clip", context_length=context),
    )


def from_record(record: ModelRecord, state_dict: Optional[dict[str, torch.Tensor]] = None) -> PixelCLIP:
    """PixelCLIP built from a record, loading `state_dict` strictly when given."""
    clip = build_clip(record)
    if state_dict is not None:
        missing, unexpected = clip.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith("attn_mask")]
        if missing or unexpected:
            raise ModelLoadError(
                f"weights do not match architecture of {record.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return PixelCLIP(clip.float().eval(), record)


def load_checkpoint_dir(folder: Path) -> PixelCLIP:
    """Load a clipshield checkpoint folder (config.json + model.safetensors)."""
    record = load_record(folder)
    return from_record(record, load_weights(folder / "model.safetensors"))


def _load_open_clip(name: str, tag: str, cache_dir: Optional[str], offline: bool) -> PixelCLIP:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    if name not in open_clip.list_models():
        raise unknown_architecture(name)
    local = Path(tag)
    if not local.is_file() and looks_like_path(tag):
        what = "is a folder, not a weights file" if local.is_dir() else "not found"
        raise ModelLoadError(f"weights file {what}: {tag} (--pretrained takes an open_clip tag such as openai, or a weights file)")
    cfg = {} if local.is_file() else get_pretrained_cfg(name, tag)
    if not local.is_file() and not cfg:
        tags = ", ".join(list_pretrained_tags_by_model(name)) or "none"
        raise ModelLoadError(f"unknown pretrained tag {tag!r} for {name}; known tags: {tags}")
    quick_gelu = bool(cfg.get("quick_gelu", False)) and "quickgelu" not in name.lower()
    if not local.is_file():
        local = _fetch_weights(name, tag, cfg, cache_dir, offline)
    if quick_gelu:
        log.info("%s/%s was trained with QuickGELU: building the QuickGELU variant", name, tag)
    try:
        clip = open_clip.create_model(name, pretrained=str(local), force_quick_gelu=quick_gelu, weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load {name} with weights {local}: {exc}") from exc
    pcfg = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
    size = pcfg.get("size", clip.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    record = ModelRecord(
        name=f"{name}:{tag if not Path(tag).is_file() else Path(tag).name}",
        open_clip_name=name if not quick_gelu else _quickgelu_name(name),
        preprocess=PreprocessConfig(
            image_size=int(size),
            mean=_preprocess_stat(name, "mean", pcfg, cfg),
            std=_preprocess_stat(name, "std", pcfg, cfg),
            interpolation=pcfg.get("interpolation", "bicubic") if pcfg.get("interpolation") in ("bicubic", "bilinear") else "bicubic",
        ),
        tokenizer=TokenizerConfig(kind="open_clip", context_length=int(clip.context_length)),
    )
    return PixelCLIP(clip.float().eval(), record)


def _preprocess_stat(name: str, key: str, pcfg: dict[str, Any], cfg: dict[str, Any]) -> tuple[float, ...]:
    """Per-channel `key` ("mean" or "std") from the model's preprocess_cfg, else from the pretrained tag's config."""
    stat = pcfg.get(key, cfg.get(key))
    if stat is None:
        raise ModelLoadError(f"open_clip gives no normalisation {key} for {name}")
    return tuple(stat)


def _quickgelu_name(name: str) -> str:
    import open_clip

    candidate = f"{name}-quickgelu"
    if candidate in open_clip.list_models():
        return candidate
    raise ModelLoadError(f"{name} needs QuickGELU but open_clip has no {candidate} config")


def _fetch_weights(name: str, tag: str, cfg: dict[str, Any], cache_dir: Optional[str], offline: bool) -> Path:
    """Path of the weights for a tag: from the local cache, or downloaded when the host answers.

    Without network a short probe fails fast (instead of the hub client's minute of retries): cached
    weights are used, otherwise one `ModelLoadError` says how to go on.
    """
    from open_clip.pretrained import download_pretrained

    local_hint = "copy the weights file to this machine and pass its path as --pretrained"
    cached = _cached_hf_file(cfg, cache_dir)
    if offline:
        if cached is None:
            raise ModelLoadError(
                f"weights for {name}/{tag} are not in the local cache and offline mode is on "
                f"(--offline, CLIPSHIELD_OFFLINE or HF_HUB_OFFLINE): {local_hint}, or use a clipshield checkpoint"
            )
        return cached
    host = _weights_host(cfg)
    if host is not None and not hub_reachable(*host):
        if cached is not None:
            log.info("%s is unreachable: using the cached weights %s", host[0], cached)
            return cached
        raise ModelLoadError(
            f"cannot reach {host[0]} to download the weights of {name}/{tag} (no network?): {local_hint}, "
            f"or use --offline (CLIPSHIELD_OFFLINE=1) with weights already in the cache to skip the network"
        )
    try:
        with _quiet_download_clients():
            path = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:
        raise ModelLoadError(
            f"could not download weights for {name}/{tag} ({type(exc).__name__}): {local_hint}, "
            f"or use --offline (CLIPSHIELD_OFFLINE=1) with weights already in the cache"
        ) from exc
    if not path:
        raise ModelLoadError(f"no weights found for {name}/{tag}")
    return Path(path)


def _cached_hf_file(cfg: dict[str, Any], cache_dir: Optional[str]) -> Optional[Path]:
    repo = (cfg.get("hf_hub") or "").rstrip("/")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(hit, str):
            return Path(hit)
    return None


def load_model(
    name: str,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    cache_dir: Optional[str] = None,
    offline: Optional[bool] = None,
) -> PixelCLIP:
    """Load a model for evaluation, fine-tuning, export or serving.

    `name` is one of: a shipped model ('miniworld', 'miniworld224'); a clipshield checkpoint folder; an open_clip
    model-config JSON file (with `weights` = its state dict, e.g. the goldens' tiny CLIP); or an
    open_clip architecture name with `pretrained` = a tag ('openai') or a local weights file.
    """
    offline = offline_from_env() if offline is None else offline
    if name in SHIPPED_MODELS:
        folder = SHIPPED_MODELS[name]
        if not is_checkpoint_dir(folder):
            raise ModelLoadError(f"shipped model {name!r} is missing from {folder}; run `clipshield pretrain` to rebuild it")
        return load_checkpoint_dir(folder)
    path = Path(name)
    if path.is_dir():
        if not is_checkpoint_dir(path):
            raise ModelLoadError(f"{path} is not a checkpoint folder (needs config.json and model.safetensors)")
        return load_checkpoint_dir(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelLoadError(f"model config not found: {path}")
        arch = json.loads(path.read_text())
        model = from_record(record_from_arch(path.stem, arch), load_weights(Path(weights)) if weights else None)
        if weights is None:
            log.warning("%s built with random weights (no weights file given)", path)
        return model
    if pretrained is None:
        raise _unresolved_model(name)
    return _load_open_clip(name, pretrained, cache_dir, offline)


def _unresolved_model(name: str) -> ModelLoadError:
    """Error for a --model that is no shipped model, checkpoint, config JSON, and has no pretrained tag."""
    import open_clip
    from open_clip.pretrained import list_pretrained_tags_by_model

    kinds = f"a shipped model ({', '.join(sorted(SHIPPED_MODELS))}), a checkpoint folder, a config JSON"
    if looks_like_path(name):
        what = "not found" if not Path(name).exists() else "is neither a checkpoint folder nor a config JSON"
        return ModelLoadError(f"model {what}: {name} (--model takes {kinds} or an open_clip architecture)")
    if name not in open_clip.list_models():
        return ModelLoadError(f"{unknown_architecture(name)} (--model takes {kinds} or an open_clip architecture)")
    tags = ", ".join(list_pretrained_tags_by_model(name)) or "none"
    return ModelLoadError(f"{name} is an open_clip architecture: give its weights with --pretrained (a tag: {tags}; or a weights file)")
