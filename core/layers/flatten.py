"""Flatten: C×H×W → C·H·W features in C-major order (as ONNX ``Flatten``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbp.core.layers.base import Layer, Shape
from cnnbp.core.registry import register_layer


@register_layer("flatten")
class Flatten(Layer):
    """(N, C, H, W) → (N, C·H·W), index ``c·H·W + h·W + w``; backward reshapes back."""

    torch_op = "Flatten"

    def output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy.reshape(self._saved().shape)

    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        g.op("Flatten", [x], out, self.name, axis=1)
