"""Errors a user can act on: each prints as one line, without a traceback."""

__all__ = ["ArvisionError", "CheckpointError", "DataError", "RecipeError"]


class ArvisionError(Exception):
    """Base of every error the CLI reports as a single line and exit code 2."""


class RecipeError(ArvisionError):
    """A recipe (file, key or value) is not what arvision expects."""


class DataError(ArvisionError):
    """A data source is missing, empty or unreadable."""


class CheckpointError(ArvisionError):
    """A checkpoint or weights file is missing, truncated or of the wrong kind."""
