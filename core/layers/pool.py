"""Pooling: max, mean and Lp over kh×kw windows at any stride (one config kind, ``pool``, by ``mode``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import numpy as np

from cnnbp.core.errors import NativeFormUnavailable, ShapeError
from cnnbp.core.hyper import Bound, Size
from cnnbp.core.layers.base import Layer, Shape, Window, expect_rank
from cnnbp.core.layers.conv import windows
from cnnbp.core.registry import register_layer


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


@register_layer("pool")
class Pool(Layer):
    """Pooling over kh×kw windows at stride (sh, sw): ``mode`` max, mean or lp (see the subclasses).

    ``Pool(size, stride, mode=..., p=...)`` makes the subclass of that mode (``MaxPool``,
    ``MeanPool``, ``LpPool``); ``stride`` defaults to ``size`` (non-overlapping windows) and a window
    that does not fit at the edge is dropped: ``Ho = ⌊(H − kh) / sh⌋ + 1``.  ``p`` (≥ 1, default 2) is
    used by the Lp mode only.

    Max and mean pooling work channel-major, (C, N, H, W) — the layout the engine's
    conv layers return as transposed N, C, H, W views — one whole-batch operation per
    window offset (a, b), never per pixel or sample.
    """

    mode: str = "max"

    def __new__(cls, *args: Any, mode: str | None = None, **kwargs: Any) -> Pool:
        if mode is None and len(args) > 2:  # Pool(size, stride, mode, ...)
            mode = args[2]
        wanted = cls.mode if mode is None and cls is not Pool else mode or "max"
        name = kwargs.get("name") or "pool"
        if not isinstance(wanted, str) or wanted not in _MODES:
            raise ShapeError(name, f"expected one of max, mean, lp, got {mode!r}", key="mode")
        if cls is not Pool and wanted != cls.mode:
            raise ShapeError(name, f"a {cls.__name__} has mode {cls.mode!r}, not {wanted!r}", key="mode")
        return super().__new__(_MODES[wanted])

    def __init__(
        self,
        size: Size,
        stride: Size | None = None,
        mode: Literal["max", "mean", "lp"] = "max",
        p: Annotated[float, Bound(ge=1)] | None = None,
        name: str | None = None,
        init: Any = None,
    ) -> None:
        super().__init__(name, init)
        mode = self.mode  # the subclass's: __new__ made the instance of the mode's class
        if p is not None and mode != "lp":
            raise ShapeError(self.name, f"only used with mode 'lp', not {mode!r}; remove it", key="p")
        self._set_hyper(size=size, stride=size if stride is None else stride)
        self.p: float | None = None
        if mode == "lp":
            self._set_hyper(p=2.0 if p is None else p)

    def output_shape(self, input_shape: Shape) -> Shape:
        expect_rank(self.name, input_shape, 3, "a C×H×W image")
        c, h, w = input_shape
        (kh, kw), (sh, sw) = self.size, self.stride
        if kh > h or kw > w:
            raise ShapeError(self.name, f"window {kh}×{kw} is larger than the {h}×{w} input")
        return (c, pool_output_size(h, kh, sh), pool_output_size(w, kw, sw))

    def window(self) -> Window | None:
        return self.size, self.stride, (0, 0)

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


class MaxPool(Pool):
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

    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        """Each window's entry at its reference arg-max (the signature's offset a·kw + b), whatever is
        largest now: (N, C, Ho, Wo)."""
        win = self._windows(x)
        win = win.reshape(*win.shape[:4], -1)
        return np.take_along_axis(win, signature[..., None].astype(np.intp), axis=-1)[..., 0]

    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        g.op("MaxPool", [x], out, self.name, kernel_shape=list(self.size), strides=list(self.stride))

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        return t.nn.MaxPool2d(self.size, self.stride), {}


class MeanPool(Pool):
    """y = mean over each window; every input of a window gets δ / (kh·kw) (seed 003 upsample)."""

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

    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        """``AveragePool``; decomposed: strided Slices → Sum → Div by kh·kw."""
        name = self.name
        if not g.decomposed:
            g.op("AveragePool", [x], out, name, kernel_shape=list(self.size), strides=list(self.stride))
            return
        total = g.window_sum(x, name, self.size, self.stride, info.output_shape[1:])
        g.op("Div", [total, g.scalar(f"{name}/count", self.size[0] * self.size[1])], out, f"{name}/mean")

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        return t.nn.AvgPool2d(self.size, self.stride), {}


class LpPool(Pool):
    """y = (Σ |x|^p)^{1/p} over each window, p ≥ 1 (seed 000 §4.2).

    ∂y/∂x_i = (Σ|x|^p)^{1/p − 1} · |x_i|^{p−1} · sign(x_i) = y^{1−p} |x_i|^{p−1} sign(x_i);
    taken as 0 in a window that is all zeros (a kink).
    """

    mode = "lp"
    analytic = False

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

    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        """``(Σ φ(s_i x_i))^{1/p}`` (root taken oddly) with the reference signs s and φ(u) = sign(u)|u|^p
        (|x|^p on the reference side, continued oddly), 0 in a reference all-zero window.

        ``signature`` is laid out as ``kink_signature()`` gives it for a batch shaped like ``x``: the
        zero-window flags of the output, then the signs of the input."""
        p, split = self.p, signature.size - x.size
        u = self._windows(signature[split:].reshape(x.shape) * x)
        total = (np.sign(u) * np.abs(u) ** p).sum(axis=(4, 5))
        y = np.sign(total) * np.abs(total) ** (1.0 / p)
        return np.where(signature[:split].reshape(y.shape).astype(bool), 0.0, y)

    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        """``LpPool`` (integer p only); decomposed: Abs → Pow p → strided Slices → Sum → Pow 1/p, any p."""
        name, p = self.name, self.p
        if not g.decomposed:
            if p != int(p):
                raise NativeFormUnavailable(f"LpPool needs an integer p, got {p:g}", "Abs/Pow/Slice/Sum")
            g.op("LpPool", [x], out, name, kernel_shape=list(self.size), strides=list(self.stride), p=int(p))
            return
        xa = g.tmp("Abs", [x], f"{name}/abs", f"{name}/abs")
        if p != 1:
            xa = g.tmp("Pow", [xa, g.scalar(f"{name}/p", p)], f"{name}/abs_p", f"{name}/pow")
        total = g.window_sum(xa, name, self.size, self.stride, info.output_shape[1:])
        if p == 1:
            g.op("Identity", [total], out, f"{name}/root")
        else:
            g.op("Pow", [total, g.scalar(f"{name}/inv_p", 1.0 / p)], out, f"{name}/root")

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        (kh, kw), s, p = self.size, self.stride, self.p
        return t.module(lambda x: (t.F.avg_pool2d(x.abs() ** p, (kh, kw), s) * (kh * kw)) ** (1.0 / p)), {}

    def nonsmooth_distance(self) -> np.ndarray | None:
        """Per input element, the distance from the nearest point of low smoothness: for p > 1 an all-zero
        window (the root makes y a norm there; the largest |x| of each window holding the element) and,
        for a p that is not an integer, x = 0 (|x|^p is t^p on each side: no derivative of order ⌈p⌉).
        None for p = 1: y = Σ|x| is piecewise linear, its kinks are the signature's."""
        if self.p == 1:
            return None
        x = self._saved()
        largest = np.abs(self._windows(x)).max(axis=(4, 5))
        (kh, kw), (sh, sw) = self.size, self.stride
        ho, wo = largest.shape[2:]
        d = np.full(x.shape, np.inf)
        for a in range(kh):
            for b in range(kw):
                view = d[:, :, a : a + sh * ho : sh, b : b + sw * wo : sw]
                np.minimum(view, largest, out=view)
        if self.p != int(self.p):
            np.minimum(d, np.abs(x), out=d)
        return d


_MODES: dict[str, type[Pool]] = {"max": MaxPool, "mean": MeanPool, "lp": LpPool}
