"""Errors the engine raises for impossible networks or inputs."""

from __future__ import annotations


class ShapeError(ValueError):
    """A layer cannot accept the shape it is given.

    ``layer`` is the layer's name and ``detail`` the problem without it, so a
    caller can point at the exact place in a config.
    """

    def __init__(self, layer: str, message: str) -> None:
        super().__init__(f"{layer}: {message}")
        self.layer = layer
        self.detail = message
