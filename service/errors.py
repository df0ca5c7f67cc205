"""Exception hierarchy of clipshield; each maps to one clear, user-facing message.

Serving maps `BadInput` subclasses to HTTP 4xx responses; the CLI prints any `ClipshieldError` as
one line and exits non-zero, never with a stack trace.
"""
from __future__ import annotations


class ClipshieldError(Exception):
    """Base of every error clipshield reports to a user."""

    http_status: int = 500


class ModelLoadError(ClipshieldError):
    """A model, checkpoint or pretrained tag could not be loaded."""


class DatasetNotFound(ClipshieldError):
    """A data set folder is missing or does not have the expected layout."""


class ConfigError(ClipshieldError):
    """A configuration value is invalid."""


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
