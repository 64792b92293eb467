"""Errors the engine raises for impossible networks or inputs."""

from __future__ import annotations


class ShapeError(ValueError):
    """A layer cannot accept the shape or the hyper-parameter it is given.

    ``layer`` is the layer's name and ``detail`` the problem without it, so a caller can point at
    the exact place in a config; ``key`` names the constructor argument at fault, when one is.
    """

    def __init__(self, layer: str, message: str, key: str | None = None) -> None:
        super().__init__(f"{layer}: {key + ': ' if key else ''}{message}")
        self.layer = layer
        self.detail = message
        self.key = key


class ParameterError(ValueError):
    """Parameter values that do not fit a network: a layer or parameter missing or extra, a shape or
    dtype that differs.  The message names the layer and parameter."""


class RegistryError(ValueError):
    """A layer kind registered twice, or a name that cannot be a kind."""


class NativeFormUnavailable(ValueError):
    """An export mapping whose native operator cannot express these hyper-parameters, while its
    decomposed form (standard ops) can: an exporter may offer that form.  ``decomposed_as`` names
    the ops it uses, for the message."""

    def __init__(self, message: str, decomposed_as: str) -> None:
        super().__init__(message)
        self.decomposed_as = decomposed_as
