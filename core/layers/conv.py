"""2-D convolution (cross-correlation): N,C,H,W in and out, channel-major im2col + one matmul per batch."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from cnnbp.core.errors import ShapeError
from cnnbp.core.hyper import Padding, PositiveInt, Size
from cnnbp.core.init import GlorotUniform, Initializer, Zeros
from cnnbp.core.layers.base import Layer, Shape, Window, expect_rank
from cnnbp.core.registry import register_layer


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """``floor((size + 2·padding − kernel) / stride) + 1``; ≤ 0 means no output."""
    return (size + 2 * padding - kernel) // stride + 1


def windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Strided view (N, C, Ho, Wo, kh, kw) of every kh×kw window at stride (sh, sw); no copy."""
    v = sliding_window_view(x, (kh, kw), axis=(2, 3))
    return v[:, :, ::sh, ::sw]


@register_layer("conv")
class Conv2D(Layer):
    """Cross-correlation of N×C×H×W inputs with F×C×kh×kw kernels, plus a bias.

    ``z[n,f,i,j] = Σ_{c,a,b} W[f,c,a,b] · xp[n,c, i·sh+a, j·sw+b] + b``, with xp the
    zero-padded input, so ``O_11 = F_11 X_11 + F_12 X_12 + F_21 X_21 + F_22 X_22``
    (seeds 000, 004).  Output size ``Ho = ⌊(H + 2p_h − kh) / s_h⌋ + 1`` (same for W).

    Backward, with δ = ∂L/∂z:
      ∂L/∂W = valid cross-correlation of X with δ (dilated by the stride),
      ∂L/∂X = full convolution of δ (dilated by the stride) with the kernel rotated
              180°, cropped by the padding — computed here as col2im of Wᵀ·δ,
              which is the same sum regrouped per kernel offset,
      ∂L/∂b = Σ_{i,j} δ_ij per filter (``tied``) or δ_ij itself (``untied``).
    """

    param_names = ("W", "b")

    def __init__(
        self,
        filters: PositiveInt,
        kernel: Size,
        stride: Size = 1,
        padding: Padding = 0,
        bias: Literal["tied", "untied"] = "tied",
        name: str | None = None,
        init: dict[str, Initializer] | None = None,
    ) -> None:
        super().__init__(name, init)
        self._set_hyper(filters=filters, kernel=kernel, stride=stride, padding=padding, bias=bias)

    def default_init(self) -> dict[str, Initializer]:
        return {"W": GlorotUniform(), "b": Zeros()}

    def scratch_size(self, input_shape: Shape) -> int:
        """The im2col columns: C·kh·kw values per output position."""
        _, ho, wo = self.output_shape(input_shape)
        return input_shape[0] * self.kernel[0] * self.kernel[1] * ho * wo

    def window(self) -> Window | None:
        # an untied bias depends on the position: not translation-equivariant
        return (self.kernel, self.stride, self.padding) if self.bias == "tied" else None

    def output_shape(self, input_shape: Shape) -> Shape:
        expect_rank(self.name, input_shape, 3, "a C×H×W image")
        c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if kh > h + 2 * ph or kw > w + 2 * pw:
            padded = f" (padded to {h + 2 * ph}×{w + 2 * pw})" if ph or pw else ""
            raise ShapeError(self.name, f"kernel {kh}×{kw} is larger than the {h}×{w} input{padded}")
        return (self.filters, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw))

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        f, ho, wo = self.output_shape(input_shape)
        bshape = (f,) if self.bias == "tied" else (f, ho, wo)
        return {"W": (f, input_shape[0], *self.kernel), "b": bshape}

    def fans(self, input_shape: Shape) -> tuple[int, int]:
        k = self.kernel[0] * self.kernel[1]
        return input_shape[0] * k, self.filters * k

    # ---- computation ------------------------------------------------------------------
    # Layout.  The columns are channel-major: rows (c, a, b) of the kernel, columns (n, i, j)
    # of the output, so ``z = W (F × C·kh·kw) @ cols`` is one matmul for the whole batch and
    # comes out as (F, N, Ho, ·): the layout the next layer reads.  The bias add copies it
    # into a new compact (F, N, Ho, Wo) array, returned as a transposed view (logically
    # N, F, Ho, Wo).  The columns, the matmul output and ∂L/∂cols are scratch arrays reused
    # from step to step (``_work_array``); everything returned is new.
    #
    # Stride 1 with several input channels ("wide rows"): output (i, j) at kernel offset
    # (a, b) reads the flattened (padded) image at (i + a)·Wp + j + b = i·Wp + j + s with
    # s = a·Wp + b.  Computing every output row over the full width Wp (columns j ≥ Wo are
    # junk) turns each offset's slice into ONE run of (Ho − 1)·Wp + Wo values per image
    # instead of Ho short rows, and numpy's cost per row dominates at these sizes.  The junk
    # columns cost Wp/Wo − 1 extra matmul work; the bias add crops them, and in backward δ is
    # zero there, so they never reach a gradient.  Otherwise ("strided") each offset's slice
    # is copied row by row, and the entries that fall on the zero padding are never written.

    def forward(self, x: np.ndarray) -> np.ndarray:
        W, b = self.params["W"], self.params["b"]
        n, c, h, w = x.shape
        f, ho, wo = self.output_shape((c, h, w))
        dtype = np.result_type(x, W, b)
        xc = x.transpose(1, 0, 2, 3)  # (C, N, H, W); contiguous when x came from another layer
        self._wide = self._use_wide_rows(c)
        cols = self._im2col_rows(xc, dtype) if self._wide else self._im2col_strided(xc, dtype)
        row = cols.shape[-1] // ho  # Wp (wide rows) or Wo
        zw = self._work_array("z", (f, n, ho, row), dtype)
        np.matmul(W.reshape(f, -1), cols.reshape(-1, n * ho * row), out=zw.reshape(f, -1))
        # bias add and crop in one pass, into a new compact (F, N, Ho, Wo) array
        z = np.add(zw[..., :wo], b[:, None, None, None] if self.bias == "tied" else b[:, None])
        self._x, self._cols = x, cols
        return z.transpose(1, 0, 2, 3)  # logically N, F, Ho, Wo

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dcols = self._param_grads(dy)
        n, c, h, w = self._x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ho, wo = dy.shape[2:]
        dcols = dcols.reshape(c, kh, kw, n, -1)
        # col2im: each kernel offset adds its whole-batch slice back where it was read from
        if self._wide:
            hp, wp = h + 2 * ph, w + 2 * pw
            run = (ho - 1) * wp + wo
            dxf = np.zeros((c, n, hp * wp), dtype=dcols.dtype)
            for a in range(kh):
                for bb in range(kw):
                    s = a * wp + bb
                    dxf[:, :, s : s + run] += dcols[:, a, bb, :, :run]
            dxc = dxf.reshape(c, n, hp, wp)[:, :, ph : ph + h, pw : pw + w]
        else:
            dcols = dcols.reshape(c, kh, kw, n, ho, wo)
            dxc = np.zeros((c, n, h, w), dtype=dcols.dtype)
            for a in range(kh):
                i0, i1, r0 = _span(a, sh, ph, h, ho)
                for bb in range(kw):
                    j0, j1, q0 = _span(bb, sw, pw, w, wo)
                    dxc[:, :, r0 : r0 + sh * (i1 - i0) : sh, q0 : q0 + sw * (j1 - j0) : sw] += dcols[
                        :, a, bb, :, i0:i1, j0:j1
                    ]
        return dxc.transpose(1, 0, 2, 3)

    def backward_params(self, dy: np.ndarray) -> None:
        self._param_grads(dy, need_dx=False)

    def _use_wide_rows(self, channels: int) -> bool:
        """Wide rows (stride 1 only) pay off when the input has several channels: they replace
        C·kh·kw·N·Ho short row copies (and as many adds in backward) by C·kh·kw·N long ones.
        With one channel (a first layer) there are few rows to copy, the matmuls are bound by
        reading the columns, and junk columns cost more than they save (measured)."""
        return self.stride == (1, 1) and channels > 1

    def _param_grads(self, dy: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        """Fill ``grads`` from ``dy``; return ∂L/∂cols (C·kh·kw, ·) when ``need_dx``."""
        self._saved()
        W = self.params["W"]
        f = self.filters
        n, _, ho, wo = dy.shape
        cols = self._cols
        row = cols.shape[-1] // ho
        dyc = dy.transpose(1, 0, 2, 3)  # (F, N, Ho, Wo); a view for our own layers' arrays
        if row == wo:
            dy2 = dyc.reshape(f, -1)
        else:  # wide rows: δ is zero in the junk columns (never written after the zero fill)
            dyw = self._work_array("dy", (f, n, ho, row), dy.dtype, zero=True)
            dyw[..., :wo] = dyc
            dy2 = dyw.reshape(f, -1)
        cols2 = cols.reshape(-1, dy2.shape[1])  # (C·kh·kw, N·Ho·row)
        # (cols @ δᵀ)ᵀ rather than δ @ colsᵀ: the same sum, ~10 % faster in OpenBLAS at these shapes
        self.grads["W"] = np.matmul(cols2, dy2.T).T.reshape(W.shape)
        self.grads["b"] = dy2.sum(axis=1) if self.bias == "tied" else dyc.sum(axis=1)
        if not need_dx:
            return None
        dcols = self._work_array("dcols", cols2.shape, np.result_type(W, dy))
        return np.matmul(W.reshape(f, -1).T, dy2, out=dcols)

    def _im2col_rows(self, xc: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Stride-1 columns (C, kh, kw, N, Ho·Wp) over wide rows, copied in one call."""
        c, n, h, w = xc.shape
        (kh, kw), (ph, pw) = self.kernel, self.padding
        hp, wp = h + 2 * ph, w + 2 * pw
        ho, wo = hp - kh + 1, wp - kw + 1
        if ph or pw:  # the border is zeroed once and never written
            xp = self._work_array("xpad", (c, n, hp, wp), dtype, zero=True)
            xp[:, :, ph : ph + h, pw : pw + w] = xc
            xc = xp
        xf = xc.reshape(c, n, hp * wp)
        run = (ho - 1) * wp + wo  # the last kw − 1 columns of each image are never written: zeroed once
        cols = self._work_array("cols", (c, kh, kw, n, ho * wp), dtype, zero=True, tag=(h, w))
        # Offset (a, b) reads the run starting at a·Wp + b of every image: all of them at once as one
        # read-only strided view (C, kh, kw, N, run) of the input, copied in a single call.
        sc, sn, s1 = xf.strides
        runs = as_strided(xf, (c, kh, kw, n, run), (sc, wp * s1, s1, sn, s1), writeable=False)
        cols[..., :run] = runs
        return cols

    def _im2col_strided(self, xc: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Columns (C, kh, kw, N, Ho·Wo) at any stride, copied in one call from a read-only strided view
        (C, kh, kw, N, Ho, Wo) of the (zero-padded) input: one NumPy call instead of one per kernel
        offset, which also keeps the GIL free for other threads (measured 15–25 % faster on a first
        layer's shard of 25–32 images, the same on whole batches)."""
        c, n, h, w = xc.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        if ph or pw:  # the border is zeroed once and never written
            xp = self._work_array("xpad", (c, n, h + 2 * ph, w + 2 * pw), dtype, zero=True)
            xp[:, :, ph : ph + h, pw : pw + w] = xc
            xc = xp
        sc, sn, sy, sx = xc.strides
        view = as_strided(xc, (c, kh, kw, n, ho, wo), (sc, sy, sx, sn, sh * sy, sw * sx), writeable=False)
        cols = self._work_array("cols", (c, kh, kw, n, ho, wo), dtype, tag=(h, w))
        cols[...] = view
        return cols.reshape(c, kh, kw, n, ho * wo)

    # ---- export mappings ---------------------------------------------------------------------------
    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        """``Conv`` (pads [ph, pw, ph, pw]; a tied bias as its B, an untied one as an Add of (1, F, Ho, Wo));
        decomposed: Pad → a strided Slice per kernel offset → Concat (im2col) → MatMul → Add."""
        name, (f, ho, wo), c = self.name, info.output_shape, info.input_shape[0]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        W, b = self.params["W"], self.params["b"]
        w_name = g.init(f"{name}/W", W)
        if self.bias == "untied":  # (F, Ho, Wo) → (1, F, Ho, Wo), broadcast over the batch
            b_name = g.init(f"{name}/b", b.reshape(1, f, ho, wo))
        else:
            b_name = g.init(f"{name}/b", b.reshape(1, f, 1, 1) if g.decomposed else b)
        if not g.decomposed:
            attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw]}
            if self.bias == "tied":
                g.op("Conv", [x, w_name, b_name], out, name, **attrs)
            else:
                z = g.tmp("Conv", [x, w_name], f"{name}/conv", name, **attrs)
                g.op("Add", [z, b_name], out, f"{name}/bias")
            return
        # im2col with standard ops: columns ordered (a, b, c), so W is transposed to (F, kh, kw, C)
        if ph or pw:
            pads = g.ints(f"{name}/pads", [0, 0, ph, pw, 0, 0, ph, pw])
            x = g.tmp("Pad", [x, pads], f"{name}/padded", f"{name}/pad")
        parts = g.window_slices(x, name, self.kernel, self.stride, (ho, wo))
        cols = g.tmp("Concat", parts, f"{name}/cols", f"{name}/im2col", axis=1)
        k = kh * kw * c
        shape = g.ints(f"{name}/cols_shape", [0, k, ho * wo])
        cols = g.tmp("Reshape", [cols, shape], f"{name}/cols2d", f"{name}/cols_reshape")
        wt = g.tmp("Transpose", [w_name], f"{name}/W_hwc", f"{name}/W_transpose", perm=[0, 2, 3, 1])
        wm = g.tmp("Reshape", [wt, g.ints(f"{name}/W_shape", [f, k])], f"{name}/W2d", f"{name}/W_reshape")
        z = g.tmp("MatMul", [wm, cols], f"{name}/matmul", f"{name}/matmul")  # (F, K) @ (N, K, L) → (N, F, L)
        z = g.tmp(
            "Reshape", [z, g.ints(f"{name}/z_shape", [0, f, ho, wo])], f"{name}/conv", f"{name}/z_reshape"
        )
        g.op("Add", [z, b_name], out, f"{name}/bias")

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        tied = self.bias == "tied"
        conv = t.nn.Conv2d(
            info.input_shape[0], self.filters, self.kernel, self.stride, self.padding, bias=tied
        )
        if tied:
            return conv, {"W": conv.weight, "b": conv.bias}
        b = t.nn.Parameter(t.torch.zeros(info.output_shape))
        return t.module(lambda x: conv(x) + b, conv, b), {"W": conv.weight, "b": b}


def _span(offset: int, stride: int, pad: int, size_in: int, size_out: int) -> tuple[int, int, int]:
    """For one kernel offset along one axis: the output range ``i0:i1`` whose input index
    ``i·stride + offset − pad`` falls inside the unpadded input, and that index for ``i0``."""
    first = offset - pad
    i0 = max(0, -(first // stride))
    i1 = max(i0, min(size_out, (size_in - 1 - first) // stride + 1))
    return i0, i1, i0 * stride + first
