"""The leaky rectifier as its own layer: a = z for z > 0, αz otherwise."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np

from cnnbp.core.hyper import Bound
from cnnbp.core.layers.base import Layer
from cnnbp.core.registry import register_layer


@register_layer("leaky_relu")
class LeakyReLU(Layer):
    """g(z) = z for z > 0, αz otherwise,  g' = 1 for z > 0 else α (α taken at the kink z = 0,
    as relu'(0) = 0 is for the plain rectifier).  α in [0, 1): 0 is the plain relu."""

    analytic = False
    elementwise = True
    init_before = "he_normal"

    def __init__(
        self, alpha: Annotated[float, Bound(ge=0, lt=1)] = 0.01, name: str | None = None, init: Any = None
    ) -> None:
        super().__init__(name, init)
        self._set_hyper(alpha=alpha)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        self._mask = x > 0
        return np.maximum(x, x * self.alpha)  # max(z, αz) = z or αz for α < 1; NaN stays NaN

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy · (α + (1 − α)·[x > 0])``."""
        self._saved()
        slope = self._mask * (1.0 - self.alpha)
        slope += self.alpha
        return np.multiply(dy, slope, dtype=dy.dtype)

    def kink_signature(self) -> np.ndarray:
        """Which inputs are positive: a change between two points means a kink."""
        return self._mask

    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        """``x · (α + (1 − α)·m)`` for the reference mask m = [x_ref > 0]: the piece the signature selects."""
        return x * (self.alpha + (1.0 - self.alpha) * signature)

    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        """``LeakyRelu``; decomposed (float64): ``Max(x, x·α)``, since the operator's α is a float32
        attribute (0.2 would be off by 3e-9)."""
        if not g.decomposed:
            g.op("LeakyRelu", [x], out, self.name, alpha=self.alpha)
            return
        scaled = g.tmp(
            "Mul", [x, g.scalar(f"{self.name}/alpha", self.alpha)], f"{self.name}/ax", f"{self.name}/mul"
        )
        g.op("Max", [x, scaled], out, f"{self.name}/max")

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        return t.nn.LeakyReLU(negative_slope=self.alpha), {}
