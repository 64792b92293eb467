"""Pooling: max, mean and Lp over k×k windows at any stride; the trainable Subsample of seed 003."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from cnnbp.core.errors import ShapeError
from cnnbp.core.init import Constant, Initializer, Zeros
from cnnbp.core.layers.base import Layer, Shape, expect_rank, pair, positive_int
from cnnbp.core.layers.conv import windows


def pool_output_size(size: int, window: int, stride: int) -> int:
    """``⌊(size − window) / stride⌋ + 1``: a window that does not fit at the edge is dropped."""
    return (size - window) // stride + 1


def _offset_views(
    xc: np.ndarray, size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, np.ndarray]]:
    """``(a, b, view)`` for every window offset in row-major order, where ``view[c, n, i, j]``
    is element (a, b) of window (i, j): a strided (C, N, Ho, Wo) view of the channel-major
    input ``xc`` (C, N, H, W).  Pooling is then a few whole-array operations per offset."""
    (kh, kw), (sh, sw) = size, stride
    h, w = xc.shape[2:]
    ho, wo = pool_output_size(h, kh, sh), pool_output_size(w, kw, sw)
    return [
        (a, b, xc[:, :, a : a + sh * ho : sh, b : b + sw * wo : sw]) for a in range(kh) for b in range(kw)
    ]


def _new_dx(
    shape: Shape, dtype: np.dtype, size: tuple[int, int], stride: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """A new channel-major ∂L/∂X and whether the offsets write it disjointly (else they add).

    Zeroed unless the windows tile the input exactly, so that every entry gets written.
    """
    (kh, kw), (sh, sw) = size, stride
    c, n, h, w = shape
    disjoint = sh >= kh and sw >= kw
    exact = (sh, sw) == (kh, kw) and h % kh == 0 and w % kw == 0
    return (np.empty if exact else np.zeros)(shape, dtype), disjoint


class _WindowPool(Layer):
    """Shared shape logic and the per-offset views pooling works with.

    Max and mean pooling work channel-major, (C, N, H, W) — the layout the engine's
    conv layers return as transposed N, C, H, W views — one whole-batch operation per
    window offset (a, b), never per pixel or sample.
    """

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

    def _offsets(self, xc: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """``_offset_views`` of ``xc`` with this layer's window and stride."""
        return _offset_views(xc, self.size, self.stride)

    def _dx_buffer(self, shape: Shape, dtype: np.dtype) -> tuple[np.ndarray, bool]:
        """``_new_dx`` for this layer's window and stride."""
        return _new_dx(shape, dtype, self.size, self.stride)

    def _scatter(self, x_shape: Shape, parts: Callable[[int, int], np.ndarray]) -> np.ndarray:
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


class MaxPool(_WindowPool):
    """y = max over each window; ∂y/∂x_i = 1 at the arg-max, 0 elsewhere (seeds 002, 004).

    Ties: the first maximum in row-major order within the window receives the
    gradient.  Overlapping windows that share an arg-max add their gradients.

    Forward keeps only the maxima (and holds on to the output it returns); backward
    finds each window's arg-max by scanning the offsets in row-major order for the
    first input equal to the maximum (the maximum is one of the inputs, exactly).
    Backward multiplies δ by that 0/1 mask, so a non-finite δ also reaches the
    window's other inputs as NaN (a finite δ never does); a window holding NaN
    passes no gradient.
    """

    kind = "pool"
    mode = "max"
    analytic = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        offsets = self._offsets(x.transpose(1, 0, 2, 3))
        y = offsets[0][2].copy()  # (C, N, Ho, Wo)
        for _, _, v in offsets[1:]:
            np.maximum(y, v, out=y)
        self._x, self._y = x, y
        return y.transpose(1, 0, 2, 3)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        xc, y = x.transpose(1, 0, 2, 3), self._y
        dyc = dy.transpose(1, 0, 2, 3)
        dxc, disjoint = self._dx_buffer(xc.shape, dy.dtype)
        for (_, _, view), hit in zip(self._offsets(dxc), self._first_max(xc, y), strict=True):
            if disjoint:
                np.multiply(hit, dyc, out=view)
            else:
                view += hit * dyc
        return dxc.transpose(1, 0, 2, 3)

    def _first_max(self, xc: np.ndarray, y: np.ndarray) -> Iterator[np.ndarray]:
        """For each offset in row-major order, the windows whose first maximum is that offset (a
        reused boolean array, valid until the next one is yielded)."""
        hit = self._work_array("hit", y.shape, np.bool_)
        taken = self._work_array("taken", y.shape, np.bool_)
        offsets = self._offsets(xc)
        for o, (_, _, v) in enumerate(offsets):
            np.equal(v, y, out=hit)
            if o:
                np.greater(hit, taken, out=hit)  # hit and not taken (booleans: True > False)
            if o + 1 < len(offsets):
                if o:
                    np.logical_or(taken, hit, out=taken)
                else:
                    np.copyto(taken, hit)
            yield hit

    def kink_signature(self) -> np.ndarray:
        """The arg-max of every window (``a·kw + b``): a change between two points means a kink."""
        x = self._saved()
        arg = np.zeros(self._y.shape, dtype=np.intp)
        for o, hit in enumerate(self._first_max(x.transpose(1, 0, 2, 3), self._y)):
            arg[hit] = o
        return arg.transpose(1, 0, 2, 3)


class MeanPool(_WindowPool):
    """y = mean over each window; every input of a window gets δ / (kh·kw) (seed 003 upsample)."""

    kind = "pool"
    mode = "mean"

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind in "biu":
            x = x.astype(np.float64)
        offsets = self._offsets(x.transpose(1, 0, 2, 3))
        y = offsets[0][2].copy()  # (C, N, Ho, Wo)
        for _, _, v in offsets[1:]:
            y += v
        y *= 1.0 / len(offsets)
        self._x = x
        return y.transpose(1, 0, 2, 3)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        (kh, kw) = self.size
        g = dy.transpose(1, 0, 2, 3) * (1.0 / (kh * kw))
        dxc, disjoint = self._dx_buffer(x.transpose(1, 0, 2, 3).shape, g.dtype)
        for _, _, view in self._offsets(dxc):
            if disjoint:
                view[...] = g
            else:
                view += g
        return dxc.transpose(1, 0, 2, 3)


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
        self.scale = positive_int(scale, "scale", self.name)
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
