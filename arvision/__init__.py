"""arvision: autoregressive visual pretraining with plug-in tokenizers, targets, orderings and decoders."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

__all__ = ["__version__", "hookimpl"]

try:
    __version__ = version("arvision")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

#: Decorate a plugin's hook functions with this marker (``@arvision.hookimpl``).
hookimpl = pluggy.HookimplMarker("arvision")
