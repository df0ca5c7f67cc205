"""Exception hierarchy of clipshield; each maps to one clear, user-facing message.

Serving maps `BadInput` subclasses to HTTP 4xx responses; the CLI prints any `ClipshieldError` as
one line and exits non-zero, never with a stack trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from pydantic import ValidationError


class ClipshieldError(Exception):
    """Base of every error clipshield reports to a user."""

    http_status: int = 500


class ModelLoadError(ClipshieldError):
    """A model, checkpoint or pretrained tag could not be loaded."""


class DatasetNotFound(ClipshieldError):
    """A data set folder is missing or does not have the expected layout."""


class ConfigError(ClipshieldError):
    """A configuration value is invalid."""

    @classmethod
    def from_validation(cls, exc: ValidationError, name_of: Optional[Callable[[tuple[Any, ...]], str]] = None) -> ConfigError:
        """One line for settings a user gave as flags: the first problem, named as its `--flag`
        (`name_of(loc)`, default: the field name), and how many more there are."""
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        name = name_of(loc) if name_of else str(loc[-1]) if loc else "option"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return cls(f"--{name.replace('_', '-')}: {err['msg']}{more}")


class ExportError(ClipshieldError):
    """ONNX export failed, its output does not match PyTorch, or an export bundle cannot be archived."""


class BadInput(ClipshieldError):
    """A request is malformed (HTTP 400)."""

    http_status = 400


class PayloadTooLarge(BadInput):
    """A request body or image exceeds the configured limits (HTTP 413)."""

    http_status = 413


class UnsupportedMediaType(BadInput):
    """The request's content type or image format is not accepted (HTTP 415)."""

    http_status = 415


class UnknownName(ConfigError, KeyError):
    """A name that is not in a registry (method, data set, attack); the message lists the known ones.

    Also a `KeyError`, so lookups keep their usual type for library callers.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
