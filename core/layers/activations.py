"""Element-wise activations as their own layers: a = g(z), ∂L/∂z = ∂L/∂a · g'(z)."""

from __future__ import annotations

import numpy as np

from core.layers.base import Layer


class Sigmoid(Layer):
    """g(z) = 1 / (1 + e^{−z}),  g' = g (1 − g)."""

    kind = "sigmoid"

    def forward(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # e^{−z} → inf gives the right limit 0
            y = 1.0 / (1.0 + np.exp(-x))
        self._x = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._saved()
        return dy * y * (1.0 - y)


class Tanh(Layer):
    """g(z) = tanh z,  g' = 1 − g²."""

    kind = "tanh"

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = np.tanh(x)
        self._x = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._saved()
        return dy * (1.0 - y * y)


class ReLU(Layer):
    """g(z) = max(z, 0),  g' = 1 for z > 0 else 0 (0 taken at the kink z = 0)."""

    kind = "relu"
    analytic = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        self._mask = x > 0
        return np.where(self._mask, x, 0).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._saved()
        return np.where(self._mask, dy, 0).astype(dy.dtype, copy=False)

    def kink_signature(self) -> np.ndarray:
        """Which inputs are positive: a change between two points means a kink."""
        return self._mask


class Identity(Layer):
    """g(z) = z."""

    kind = "identity"

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._saved()
        return dy


ACTIVATIONS: dict[str, type[Layer]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "identity": Identity,
}
