"""cnnbp's command line: train, check gradients, inspect and export small CNNs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("cnnbp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"
