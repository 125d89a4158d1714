"""Errors of the transcription package, each with a message a force's engineer can act on."""

from __future__ import annotations


class TranscriptionError(Exception):
    """Base of every transcription error."""


class ModelError(TranscriptionError):
    """The configured speech model is missing, incomplete or unloadable.

    ``path`` is the folder that was checked; ``missing`` lists the relative paths that
    are not there (empty when the problem is something else, e.g. a bad engine name).
    """

    def __init__(self, message: str, *, path: str = "", missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.missing = missing


class AudioError(TranscriptionError):
    """A recording cannot be read (not a WAV, wrong sample width, missing file...)."""


class SearchQueryError(TranscriptionError, ValueError):
    """A search query that cannot be run (empty, or nothing searchable in it)."""
