"""User-facing errors: the CLI prints these as one line and exits with a non-zero code."""

from __future__ import annotations


class CvappsError(Exception):
    """An error caused by the user's input (config, data, files); shown as one line, exit 1."""

    exit_code = 1


class ConfigError(CvappsError):
    """A config key is unknown, missing or of the wrong type; exit 2 like a usage error."""

    exit_code = 2


class DataError(CvappsError):
    """A dataset is missing, empty or malformed beyond what can be skipped."""


class ImageReadError(CvappsError):
    """One image could not be read; callers skip it and report ``path: reason``."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class CheckpointError(CvappsError):
    """A checkpoint or weights file is missing, of the wrong task, or does not fit the model."""
