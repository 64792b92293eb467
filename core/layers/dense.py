"""Fully connected layer ``z = W a + b`` with W of shape (units_out, units_in)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbp.core.errors import ShapeError
from cnnbp.core.hyper import PositiveInt
from cnnbp.core.init import GlorotUniform, Initializer, Zeros
from cnnbp.core.layers.base import Layer, Shape
from cnnbp.core.registry import register_layer


@register_layer("dense")
class Dense(Layer):
    """z = W a + b for a batch of feature vectors (N, units_in) → (N, units).

    ∂L/∂W_ji = δ_j a_i,  ∂L/∂b_j = δ_j,  ∂L/∂a = Wᵀ δ (seed 000 §2, seed 001 §9.3).
    """

    param_names = ("W", "b")

    def __init__(
        self, units: PositiveInt, name: str | None = None, init: dict[str, Initializer] | None = None
    ) -> None:
        super().__init__(name, init)
        self._set_hyper(units=units)

    def default_init(self) -> dict[str, Initializer]:
        return {"W": GlorotUniform(), "b": Zeros()}

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

    # ---- export mappings ---------------------------------------------------------------------------
    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        """``Gemm(transB=1)``: x Wᵀ + b with W stored (units_out, units_in)."""
        w = g.init(f"{self.name}/W", self.params["W"])
        b = g.init(f"{self.name}/b", self.params["b"])
        g.op("Gemm", [x, w, b], out, self.name, transB=1)

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        lin = t.nn.Linear(info.input_shape[0], self.units)
        return lin, {"W": lin.weight, "b": lin.bias}
