"""2-D convolution (cross-correlation), N,C,H,W layout, im2col through stride tricks + one matmul."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from core.errors import ShapeError
from core.init import GlorotUniform, Initializer, Zeros
from core.layers.base import Layer, Shape, expect_rank, pair


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """``floor((size + 2·padding − kernel) / stride) + 1``; ≤ 0 means no output."""
    return (size + 2 * padding - kernel) // stride + 1


def windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Strided view (N, C, Ho, Wo, kh, kw) of every kh×kw window at stride (sh, sw); no copy."""
    v = sliding_window_view(x, (kh, kw), axis=(2, 3))
    return v[:, :, ::sh, ::sw]


class Conv2D(Layer):
    """Cross-correlation of N×C×H×W inputs with F×C×kh×kw kernels, plus a bias.

    ``z[n,f,i,j] = Σ_{c,a,b} W[f,c,a,b] · xp[n,c, i·sh+a, j·sw+b] + b``, with xp the
    zero-padded input, so ``O_11 = F_11 X_11 + F_12 X_12 + F_21 X_21 + F_22 X_22``
    (seeds 000, 004).  Output size ``Ho = ⌊(H + 2p_h − kh) / s_h⌋ + 1`` (same for W).

    Backward, with δ = ∂L/∂z:
      ∂L/∂W = valid cross-correlation of X with δ (dilated by the stride),
      ∂L/∂X = full convolution of δ (dilated by the stride) with the kernel rotated
              180°, cropped by the padding — computed here as col2im of δ·W,
              which is the same sum regrouped per kernel offset,
      ∂L/∂b = Σ_{i,j} δ_ij per filter (``tied``) or δ_ij itself (``untied``).
    """

    kind = "conv"

    def __init__(
        self,
        filters: int,
        kernel: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: Literal["tied", "untied"] = "tied",
        init: dict[str, Initializer] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ShapeError(self.name, f"filters must be a positive int, got {filters!r}")
        self.filters = int(filters)
        self.kernel = pair(kernel, "kernel", self.name)
        self.stride = pair(stride, "stride", self.name)
        self.padding = pair(padding, "padding", self.name)
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ShapeError(self.name, "kernel and stride must be ≥ 1 and padding ≥ 0")
        if bias not in ("tied", "untied"):
            raise ShapeError(self.name, f"bias must be 'tied' or 'untied', got {bias!r}")
        self.bias = bias
        self.init = {"W": GlorotUniform(), "b": Zeros(), **(init or {})}

    def hyper(self) -> dict[str, object]:
        return {
            "filters": self.filters,
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "bias": self.bias,
        }

    def output_shape(self, input_shape: Shape) -> Shape:
        expect_rank(self.name, input_shape, 3, "a C×H×W image")
        c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if kh > h + 2 * ph or kw > w + 2 * pw:
            padded = f" (padded to {h + 2 * ph}×{w + 2 * pw})" if ph or pw else ""
            raise ShapeError(
                self.name, f"kernel {kh}×{kw} is larger than the {h}×{w} input{padded}"
            )
        return (self.filters, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw))

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        f, ho, wo = self.output_shape(input_shape)
        bshape = (f,) if self.bias == "tied" else (f, ho, wo)
        return {"W": (f, input_shape[0], *self.kernel), "b": bshape}

    def fans(self, input_shape: Shape) -> tuple[int, int]:
        k = self.kernel[0] * self.kernel[1]
        return input_shape[0] * k, self.filters * k

    def forward(self, x: np.ndarray) -> np.ndarray:
        W, b = self.params["W"], self.params["b"]
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
        win = windows(xp, kh, kw, sh, sw)
        ho, wo = win.shape[2], win.shape[3]
        # rows: (n, i, j); columns: (c, a, b) — one matmul for the whole batch
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
        z = cols @ W.reshape(self.filters, -1).T
        z = z.reshape(n, ho, wo, self.filters).transpose(0, 3, 1, 2)
        z = z + (b[None, :, None, None] if self.bias == "tied" else b[None])
        self._x = x
        self._cols = cols
        return z

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        W = self.params["W"]
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        f, ho, wo = dy.shape[1:]
        dy2 = dy.transpose(0, 2, 3, 1).reshape(n * ho * wo, f)
        self.grads["W"] = (dy2.T @ self._cols).reshape(W.shape)
        self.grads["b"] = dy.sum(axis=(0, 2, 3)) if self.bias == "tied" else dy.sum(axis=0)
        dcols = (dy2 @ W.reshape(f, -1)).reshape(n, ho, wo, c, kh, kw)
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.result_type(dy, W))
        for a in range(kh):  # loop over kernel offsets only; each step is a whole-batch slice add
            for bb in range(kw):
                dxp[:, :, a : a + sh * ho : sh, bb : bb + sw * wo : sw] += dcols[..., a, bb].transpose(0, 3, 1, 2)
        return dxp[:, :, ph : ph + h, pw : pw + w]
