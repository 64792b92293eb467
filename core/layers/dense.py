"""Fully connected layer ``z = W a + b`` with W of shape (units_out, units_in)."""

from __future__ import annotations

import numpy as np
from cnnbp.core.errors import ShapeError
from cnnbp.core.init import GlorotUniform, Initializer, Zeros
from cnnbp.core.layers.base import Layer, Shape, positive_int


class Dense(Layer):
    """z = W a + b for a batch of feature vectors (N, units_in) → (N, units).

    ∂L/∂W_ji = δ_j a_i,  ∂L/∂b_j = δ_j,  ∂L/∂a = Wᵀ δ (seed 000 §2, seed 001 §9.3).
    """

    kind = "dense"

    def __init__(
        self, units: int, init: dict[str, Initializer] | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        self.units = positive_int(units, "units", self.name)
        self.init = {"W": GlorotUniform(), "b": Zeros(), **(init or {})}

    def hyper(self) -> dict[str, object]:
        return {"units": self.units}

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ShapeError(
                self.name,
                f"expects a feature vector per sample, got shape {tuple(input_shape)} (add a flatten layer)",
            )
        return (self.units,)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        return {"W": (self.units, input_shape[0]), "b": (self.units,)}

    def fans(self, input_shape: Shape) -> tuple[int, int]:
        return input_shape[0], self.units

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x @ self.params["W"].T + self.params["b"]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        self.grads["W"] = dy.T @ x
        self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["W"]
