"""User-facing errors: the CLI prints these as one line and exits with a non-zero code."""

from __future__ import annotations

import reprlib

QUOTE_LIMIT = 80  # characters of a user's value quoted in a one-line error

# reprlib never formats a huge value whole (a 5 MB list is cut while formatting, not after).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, QUOTE_LIMIT, QUOTE_LIMIT, 40
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 6


def shorten(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` of at most about ``limit`` characters, so an error quoting a user's value stays one short line."""
    text = _REPR.repr(value).replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}..."


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 image"``, ``"3 images"`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


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


class OutputError(CvappsError):
    """An output cannot be written: disk full, no permission, or it would replace an input file."""
