"""Typed configuration records for models and preprocessing.

A model is described by a `ModelRecord` (architecture + preprocessing + tokenizer), stored as JSON
next to its safetensors weights. Training, evaluation, export and serving all read this one record,
so the same pixels are preprocessed the same way everywhere.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clipshield.service.errors import ConfigError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

RECORD_SCHEMA_VERSION = 1


class StrictModel(BaseModel):
    """Base for configuration: unknown keys are errors, values are immutable after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def flag_config(cls: type[ConfigT], flags: Optional[dict[str, str]] = None, **values: Any) -> ConfigT:
    """`cls(**values)` for values taken from flags: an out-of-range value is a `ConfigError` naming the
    flag (one line, exit status 2), not a pydantic traceback. `flags` maps field names to flag names
    where they differ (intra_op_threads -> threads)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        names = flags or {}
        raise ConfigError.from_validation(exc, lambda loc: names.get(str(loc[-1]), str(loc[-1])) if loc else "option") from None


ResizeMode = Literal["shortest", "squash", "none"]
PAPER_RESIZE_RATIO = 256 / 224  # the papers' Resize(256) + CenterCrop(224), at any size S


class PreprocessConfig(StrictModel):
    """How a decoded image becomes model input pixels (`clipshield.service.preprocess.to_pixels`, the one path).

    `image_size` S is the encoder's input resolution. `resize_mode`: `shortest` resizes the shortest
    side to round(S * `resize_ratio`) then centre-crops S x S (ratio 1: open_clip's eval transform;
    256/224: the papers' Resize(256)+CenterCrop(224)); `squash` resizes to S x S ignoring the aspect
    ratio (TGA-ZSR's CIFAR/STL loader); `none` keeps the decoded size (the `native` CIFAR/STL protocol:
    `PixelCLIP` resizes inside its forward, docs/methods.md §0.2) and is never a model record's choice.
    `antialias` True resizes with Pillow (antialiased when downscaling, what torchvision does to PIL
    images); False resizes the float tensor with `F.interpolate` without antialiasing. The model
    wrapper normalises with `mean`/`std` inside its forward, so attacks perturb [0, 1] pixels.
    Old records (image_size, mean, std, interpolation, resize_mode only) load with the defaults,
    which are exactly the serving behaviour they were written with.
    """

    image_size: int = Field(gt=0)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_mode: ResizeMode = "shortest"
    resize_ratio: float = Field(default=1.0, ge=1.0, description="shortest side -> round(S * ratio) before the S x S crop")
    antialias: bool = True

    @property
    def resize_to(self) -> int:
        """Shortest-side length before the centre crop (`shortest` mode)."""
        return round(self.image_size * self.resize_ratio)

    def describe(self) -> str:
        """One line naming every choice, e.g. for protocols and model cards."""
        s, how = self.image_size, f"{self.interpolation}, {'antialias' if self.antialias else 'no antialias'}"
        if self.resize_mode == "none":
            return f"native resolution (no resize in the loader; the model resizes to {s}x{s} inside, {self.interpolation})"
        if self.resize_mode == "squash":
            return f"resize to {s}x{s} ignoring aspect ratio ({how})"
        return f"resize shortest side to {self.resize_to} ({how}) + centre crop {s}x{s}"


class TokenizerConfig(StrictModel):
    """Tokenizer of the text tower.

    `open_clip`: the standard CLIP BPE tokenizer. `compact`: the same BPE, with ids remapped to a
    small vocabulary (`bpe_ids[i]` becomes id i + 2; 0 = padding, 1 = unknown; start and end of
    text take the two highest ids, so the text tower's argmax pooling still finds the end token).
    """

    kind: Literal["open_clip", "compact"] = "open_clip"
    context_length: int = Field(default=77, gt=2)
    bpe_ids: Optional[list[int]] = None

    @model_validator(mode="after")
    def _compact_needs_ids(self) -> TokenizerConfig:
        if self.kind == "compact" and not self.bpe_ids:
            raise ValueError("a compact tokenizer needs its bpe_ids list")
        return self

    @property
    def vocab_size(self) -> int:
        """Number of token ids (compact tokenizers only know theirs)."""
        if self.kind == "compact":
            return len(self.bpe_ids or []) + 4
        return 49408


class ModelRecord(StrictModel):
    """Everything needed to rebuild a CLIP model besides its weights.

    `arch` is an open_clip model config (the dict format of open_clip's `model_configs/*.json`),
    or None when `open_clip_name` names a built-in open_clip architecture.
    """

    schema_version: int = RECORD_SCHEMA_VERSION
    name: str
    open_clip_name: Optional[str] = None
    arch: Optional[dict[str, Any]] = None
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ModelRecord:
        if (self.open_clip_name is None) == (self.arch is None):
            raise ValueError("set exactly one of open_clip_name (built-in architecture) or arch (inline config)")
        if self.preprocess.resize_mode == "none":
            raise ValueError("a model record's preprocess.resize_mode must be 'shortest' or 'squash' (served inputs need a fixed size)")
        return self
