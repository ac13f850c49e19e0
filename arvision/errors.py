"""Errors a user can act on: each prints as one line, without a traceback."""

from collections.abc import Sequence

__all__ = ["ArvisionError", "CheckpointError", "DataError", "RecipeError", "listed"]


class ArvisionError(Exception):
    """Base of every error the CLI reports as a single line and exit code 2."""


class RecipeError(ArvisionError):
    """A recipe (file, key or value) is not what arvision expects."""


class DataError(ArvisionError):
    """A data source is missing, empty or unreadable."""


class CheckpointError(ArvisionError):
    """A checkpoint or weights file is missing, truncated or of the wrong kind."""


def listed(items: Sequence[str], shown: int = 4) -> str:
    """The first ``shown`` items, comma-separated, and how many there are in all if more: for
    naming keys in a one-line error."""
    more = f", ... ({len(items)} in all)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
