"""The layer registry: layer kind (the ``type:`` of a config entry) → class.

The one table that config validation, the checkpoint's ``/model`` rebuild, the exporters, the torch
mirror and the gradient checker read: a layer's facts live in its class, and the registry finds the
class.  Built-in layers register themselves when :mod:`cnnbp.core.layers` is imported; users'
layers with ``@cnnbp.register_layer("kind")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from cnnbp.core.errors import RegistryError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cnnbp.core.layers.base import Layer

L = TypeVar("L", bound="type[Layer]")

#: kind → class, in registration order (the built-ins first)
LAYERS: dict[str, type[Layer]] = {}


def register_layer(kind: str) -> Callable[[L], L]:
    """Class decorator: make ``cls`` the layer of config ``type: kind`` and set ``cls.kind``.

    A kind can be registered once; a second class under the same kind raises RegistryError.
    """
    if not isinstance(kind, str) or not kind.isidentifier():
        raise RegistryError(f"a layer kind must be a name such as 'my_dense', got {kind!r}")

    def decorate(cls: L) -> L:
        if kind in LAYERS and LAYERS[kind] is not cls:
            owner = f"{LAYERS[kind].__module__}.{LAYERS[kind].__qualname__}"
            raise RegistryError(f"registers layer kind {kind!r}, which exists already ({owner})")
        cls.kind = kind
        LAYERS[kind] = cls
        return cls

    return decorate


def layer_class(kind: str) -> type[Layer]:
    """The class registered for ``kind``; KeyError naming the known kinds when there is none."""
    try:
        return LAYERS[kind]
    except KeyError:
        raise KeyError(f"no layer kind {kind!r}; the kinds are {', '.join(LAYERS)}") from None
