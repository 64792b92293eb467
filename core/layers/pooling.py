"""Pooling: max, mean and Lp over k×k windows at any stride; the trainable Subsample of seed 003."""

from __future__ import annotations

from typing import Literal

import numpy as np

from core.errors import ShapeError
from core.init import Constant, Initializer, Zeros
from core.layers.base import Layer, Shape, expect_rank, pair
from core.layers.conv import windows


def pool_output_size(size: int, window: int, stride: int) -> int:
    """``⌊(size − window) / stride⌋ + 1``: a window that does not fit at the edge is dropped."""
    return (size - window) // stride + 1


class _WindowPool(Layer):
    """Shared shape logic and the scatter of per-offset gradients back to the input."""

    def __init__(
        self,
        size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.size = pair(size, "size", self.name)
        self.stride = pair(stride if stride is not None else size, "stride", self.name)
        if min(self.size) < 1 or min(self.stride) < 1:
            raise ShapeError(self.name, "size and stride must be ≥ 1")

    def hyper(self) -> dict[str, object]:
        return {"mode": self.mode, "size": list(self.size), "stride": list(self.stride)}

    def output_shape(self, input_shape: Shape) -> Shape:
        expect_rank(self.name, input_shape, 3, "a C×H×W image")
        c, h, w = input_shape
        (kh, kw), (sh, sw) = self.size, self.stride
        if kh > h or kw > w:
            raise ShapeError(self.name, f"window {kh}×{kw} is larger than the {h}×{w} input")
        return (c, pool_output_size(h, kh, sh), pool_output_size(w, kw, sw))

    def _windows(self, x: np.ndarray) -> np.ndarray:
        return windows(x, *self.size, *self.stride)

    def _scatter(self, x_shape: tuple[int, ...], parts) -> np.ndarray:
        """Sum per-offset contributions ``parts(a, b) -> (N, C, Ho, Wo)`` into ∂L/∂X.

        Windows may overlap (stride < size), so contributions add up.
        """
        (kh, kw), (sh, sw) = self.size, self.stride
        dx = None
        for a in range(kh):
            for b in range(kw):
                part = parts(a, b)
                if dx is None:
                    dx = np.zeros(x_shape, dtype=part.dtype)
                ho, wo = part.shape[2], part.shape[3]
                dx[:, :, a : a + sh * ho : sh, b : b + sw * wo : sw] += part
        assert dx is not None
        return dx

    def _tiles(self, x: np.ndarray) -> np.ndarray | None:
        """(N, C, Ho, kh, Wo, kw) reshape view when windows tile the input without overlap."""
        (kh, kw), (sh, sw) = self.size, self.stride
        if (kh, kw) != (sh, sw):
            return None
        n, c, h, w = x.shape
        ho, wo = h // kh, w // kw
        return x[:, :, : ho * kh, : wo * kw].reshape(n, c, ho, kh, wo, kw)


class MaxPool(_WindowPool):
    """y = max over each window; ∂y/∂x_i = 1 at the arg-max, 0 elsewhere (seeds 002, 004).

    Ties: the first maximum in row-major order within the window receives the
    gradient.  Overlapping windows that share an arg-max add their gradients.
    """

    kind = "pool"
    mode = "max"
    analytic = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        win = self._windows(x)
        n, c, ho, wo, kh, kw = win.shape
        flat = win.reshape(n, c, ho, wo, kh * kw)
        self._arg = flat.argmax(axis=-1)
        self._x = x
        return np.take_along_axis(flat, self._arg[..., None], axis=-1)[..., 0]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        kw = self.size[1]
        arg = self._arg
        return self._scatter(x.shape, lambda a, b: np.where(arg == a * kw + b, dy, 0))

    def kink_signature(self) -> np.ndarray:
        """The arg-max of every window: a change between two points means a kink."""
        return self._arg


class MeanPool(_WindowPool):
    """y = mean over each window; every input of a window gets δ / (kh·kw) (seed 003 upsample)."""

    kind = "pool"
    mode = "mean"

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        tiles = self._tiles(x)
        if tiles is not None:
            return tiles.mean(axis=(3, 5))
        return self._windows(x).mean(axis=(4, 5))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        (kh, kw) = self.size
        g = dy / (kh * kw)
        tiles = self._tiles(x)
        if tiles is not None:
            n, c, ho, _, wo, _ = tiles.shape
            dx = np.zeros(x.shape, dtype=g.dtype)
            dx[:, :, : ho * kh, : wo * kw] = np.broadcast_to(
                g[:, :, :, None, :, None], tiles.shape
            ).reshape(n, c, ho * kh, wo * kw)
            return dx
        return self._scatter(x.shape, lambda a, b: g)


class LpPool(_WindowPool):
    """y = (Σ |x|^p)^{1/p} over each window, p ≥ 1 (seed 000 §4.2).

    ∂y/∂x_i = (Σ|x|^p)^{1/p − 1} · |x_i|^{p−1} · sign(x_i) = y^{1−p} |x_i|^{p−1} sign(x_i);
    taken as 0 in a window that is all zeros (a kink).
    """

    kind = "pool"
    mode = "lp"
    analytic = False

    def __init__(
        self,
        size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        p: float = 2.0,
        name: str | None = None,
    ) -> None:
        super().__init__(size, stride, name)
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not p >= 1:
            raise ShapeError(self.name, f"p must be a number ≥ 1, got {p!r}")
        self.p = float(p)

    def hyper(self) -> dict[str, object]:
        return {**super().hyper(), "p": self.p}

    def forward(self, x: np.ndarray) -> np.ndarray:
        p = self.p
        s = (np.abs(self._windows(x)) ** p).sum(axis=(4, 5))
        y = s ** (1.0 / p)
        self._x, self._y = x, y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, y, p = self._saved(), self._y, self.p
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(y > 0, dy * y ** (1.0 - p), 0)
        win = self._windows(x)
        if p == 1.0:
            return self._scatter(x.shape, lambda a, b: scale * np.sign(win[..., a, b]))
        return self._scatter(
            x.shape,
            lambda a, b: scale * np.abs(win[..., a, b]) ** (p - 1.0) * np.sign(win[..., a, b]),
        )

    def kink_signature(self) -> np.ndarray:
        """Which windows are all zero, and the sign of every input (|x| is kinked at 0)."""
        return np.concatenate([(self._y == 0).ravel(), np.sign(self._saved()).ravel()])


def Pool(
    mode: Literal["max", "mean", "lp"],
    size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    p: float = 2.0,
    name: str | None = None,
) -> Layer:
    """A pooling layer by mode; ``stride`` defaults to ``size`` (non-overlapping)."""
    if mode == "max":
        return MaxPool(size, stride, name=name)
    if mode == "mean":
        return MeanPool(size, stride, name=name)
    if mode == "lp":
        return LpPool(size, stride, p=p, name=name)
    raise ShapeError(name or "pool", f"mode must be 'max', 'mean' or 'lp', got {mode!r}")


class Subsample(Layer):
    """Trainable subsampling of "Notes on CNNs" (seed 003): ``z = β_c · down(x) + b_c`` per channel.

    ``down`` sums each non-overlapping k×k block (a remainder that does not fill
    a block is dropped), so the output is C × ⌊H/k⌋ × ⌊W/k⌋.
    ∂L/∂β_c = Σ δ ∘ down(x),  ∂L/∂b_c = Σ δ,  ∂L/∂x = β · up(δ).
    β starts at 1/k², which makes the layer a mean pool (as DeepLearnToolbox's 's' layer).
    """

    kind = "subsample"

    def __init__(
        self, scale: int, init: dict[str, Initializer] | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
            raise ShapeError(self.name, f"scale must be a positive int, got {scale!r}")
        self.scale = int(scale)
        self.init = {"beta": Constant(1.0 / self.scale**2), "b": Zeros(), **(init or {})}

    def hyper(self) -> dict[str, object]:
        return {"scale": self.scale}

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
        n, c, h, w = x.shape
        k = self.scale
        ho, wo = h // k, w // k
        down = x[:, :, : ho * k, : wo * k].reshape(n, c, ho, k, wo, k).sum(axis=(3, 5))
        self._x, self._down = x, down
        return self.params["beta"][None, :, None, None] * down + self.params["b"][None, :, None, None]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, down = self._saved(), self._down
        n, c, h, w = x.shape
        k = self.scale
        ho, wo = down.shape[2:]
        self.grads["beta"] = (dy * down).sum(axis=(0, 2, 3))
        self.grads["b"] = dy.sum(axis=(0, 2, 3))
        g = dy * self.params["beta"][None, :, None, None]
        dx = np.zeros(x.shape, dtype=g.dtype)
        dx[:, :, : ho * k, : wo * k] = np.broadcast_to(
            g[:, :, :, None, :, None], (n, c, ho, k, wo, k)
        ).reshape(n, c, ho * k, wo * k)
        return dx
