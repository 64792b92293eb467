"""The built-in layers, one module each; importing this package registers every one of them.

Each module defines its layer class and registers it under its config ``type`` (see
:mod:`cnnbp.core.registry`); the modules are found here by listing the package, so a new layer is a
new module and nothing else.  The classes are also attributes of this package by their class names
(``from cnnbp.core.layers import Conv2D``).
"""

from __future__ import annotations

import importlib
import pkgutil

from cnnbp.core.layers.base import Layer
from cnnbp.core.registry import LAYERS

# in name order, so the registry lists the kinds alphabetically
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from cnnbp.core.layers.pool import LpPool, MaxPool, MeanPool  # noqa: E402 - the pool kind's mode classes

globals().update({cls.__name__: cls for cls in LAYERS.values()})
__all__ = ["Layer", "LpPool", "MaxPool", "MeanPool", *(cls.__name__ for cls in LAYERS.values())]
