"""Trainable subsampling of "Notes on Convolutional Neural Networks" (seed 003): z = β·down(x) + b."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbp.core.errors import ShapeError
from cnnbp.core.hyper import PositiveInt
from cnnbp.core.init import Constant, Initializer, Zeros
from cnnbp.core.layers.base import Layer, Shape, Window, expect_rank
from cnnbp.core.layers.pool import _new_dx, _offset_views
from cnnbp.core.registry import register_layer


@register_layer("subsample")
class Subsample(Layer):
    """Trainable subsampling of "Notes on CNNs" (seed 003): ``z = β_c · down(x) + b_c`` per channel.

    ``down`` sums each non-overlapping k×k block (a remainder that does not fill
    a block is dropped), so the output is C × ⌊H/k⌋ × ⌊W/k⌋.
    ∂L/∂β_c = Σ δ ∘ down(x),  ∂L/∂b_c = Σ δ,  ∂L/∂x = β · up(δ).
    β starts at 1/k², which makes the layer a mean pool (as DeepLearnToolbox's 's' layer).
    """

    param_names = ("beta", "b")

    def __init__(
        self, scale: PositiveInt, name: str | None = None, init: dict[str, Initializer] | None = None
    ) -> None:
        super().__init__(name, init)
        self._set_hyper(scale=scale)

    def default_init(self) -> dict[str, Initializer]:
        return {"beta": Constant(1.0 / self.scale**2), "b": Zeros()}

    def window(self) -> Window | None:
        k = (self.scale, self.scale)
        return k, k, (0, 0)

    def output_shape(self, input_shape: Shape) -> Shape:
        expect_rank(self.name, input_shape, 3, "a C×H×W image")
        c, h, w = input_shape
        k = self.scale
        if k > h or k > w:
            raise ShapeError(self.name, f"scale {k} is larger than the {h}×{w} input")
        return (c, h // k, w // k)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        return {"beta": (input_shape[0],), "b": (input_shape[0],)}

    def fans(self, input_shape: Shape) -> tuple[int, int]:
        return self.scale**2, 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        k = self.scale
        # channel-major (C, N, H, W); Σ over each k×k block, one offset at a time
        offsets = _offset_views(x.transpose(1, 0, 2, 3), (k, k), (k, k))
        down = offsets[0][2].copy()
        for _, _, v in offsets[1:]:
            down += v
        beta, bias = self.params["beta"], self.params["b"]
        # not in place: a complex b (complex-step on b) must be able to upcast a real z
        z = down * beta[:, None, None, None] + bias[:, None, None, None]
        self._x, self._down = x, down
        return z.transpose(1, 0, 2, 3)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, down = self._saved(), self._down
        dyc = dy.transpose(1, 0, 2, 3)
        k = self.scale
        self.grads["beta"] = (dyc * down).sum(axis=(1, 2, 3))
        self.grads["b"] = dyc.sum(axis=(1, 2, 3))
        g = dyc * self.params["beta"][:, None, None, None]
        dxc, _ = _new_dx(x.transpose(1, 0, 2, 3).shape, g.dtype, (k, k), (k, k))  # blocks are disjoint
        for _, _, view in _offset_views(dxc, (k, k), (k, k)):
            view[...] = g
        return dxc.transpose(1, 0, 2, 3)

    # ---- export mappings ---------------------------------------------------------------------------
    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        """``AveragePool(k, k)`` · k² (the block sum) · β (1, C, 1, 1) + b (1, C, 1, 1); decomposed:
        strided Slices → Sum."""
        name, k, c = self.name, self.scale, info.input_shape[0]
        if g.decomposed:
            down = g.window_sum(x, name, (k, k), (k, k), info.output_shape[1:])
        else:
            avg = g.tmp(
                "AveragePool", [x], f"{name}/mean", f"{name}/pool", kernel_shape=[k, k], strides=[k, k]
            )
            down = g.tmp("Mul", [avg, g.scalar(f"{name}/k2", k * k)], f"{name}/down", f"{name}/sum")
        beta = g.init(f"{name}/beta", self.params["beta"].reshape(1, c, 1, 1))
        bias = g.init(f"{name}/b", self.params["b"].reshape(1, c, 1, 1))
        scaled = g.tmp("Mul", [down, beta], f"{name}/scaled", f"{name}/beta")
        g.op("Add", [scaled, bias], out, f"{name}/bias")

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        k = self.scale
        beta = t.nn.Parameter(t.torch.zeros(info.input_shape[0]))
        b = t.nn.Parameter(t.torch.zeros(info.input_shape[0]))
        fn = lambda x: t.F.avg_pool2d(x, k) * (k * k) * beta[:, None, None] + b[:, None, None]  # noqa: E731
        return t.module(fn, beta, b), {"beta": beta, "b": b}
