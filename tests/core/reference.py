"""Slow reference implementations written straight from the seeds' formulas, with Python loops.

Single images ``(C, H, W)`` and single-sample deltas; the tests loop over the batch.
Nothing here imports the engine.

* conv forward (seed 004 §1):   ``y_ij = Σ_mn w_mn x_(i+m)(j+n) + b`` on the zero-padded input,
  at stride s: ``x_(i·s+m)(j·s+n)``.
* conv ∂L/∂W (seed 000 §3.1.1):  the *valid cross-correlation* of the (padded) input X with
  the sensitivity map δ, δ dilated by the stride (s − 1 zeros between its entries).
* conv ∂L/∂X (seed 000 §3.1, seed 003 ``convn(d, rot180(k), 'full')``): the *full*
  convolution of the dilated δ with the kernel rotated 180° — δ is zero-padded by k − 1 on
  every side and cross-correlated with rot180(W) — then cropped by the padding.
* max pool (seed 004 §4): a mask with 1 at the first maximum of each window in row-major
  order, times δ, added back (overlapping windows add).
* mean pool (seed 000 §4.1, seed 003): δ / (kh·kw) to every input of the window.
* Lp pool (SPEC §3, seed 000 §4.2): ``∂g/∂x_i = (Σ|x|^p)^{1/p − 1} |x_i|^{p−1} sign(x_i)``.
* subsample (seed 003): ``z = β·down(x) + b``, ``δ_prev = β·up(δ)``, ``∂L/∂β = Σ δ∘down(x)``.
"""

from __future__ import annotations

import numpy as np

Pair = tuple[int, int]


def pad2d(x: np.ndarray, padding: Pair) -> np.ndarray:
    """Zero-pad the last two axes of a (C, H, W) array by (ph, pw) on every side."""
    ph, pw = padding
    c, h, w = x.shape
    out = np.zeros((c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    for ci in range(c):
        for i in range(h):
            for j in range(w):
                out[ci, i + ph, j + pw] = x[ci, i, j]
    return out


def dilate(d: np.ndarray, stride: Pair) -> np.ndarray:
    """Insert s − 1 zeros between neighbouring entries of a 2-D map."""
    sh, sw = stride
    ho, wo = d.shape
    out = np.zeros(((ho - 1) * sh + 1, (wo - 1) * sw + 1), dtype=d.dtype)
    for i in range(ho):
        for j in range(wo):
            out[i * sh, j * sw] = d[i, j]
    return out


def rot180(k: np.ndarray) -> np.ndarray:
    """A 2-D kernel rotated by 180°: ``out[m, n] = k[kh−1−m, kw−1−n]``."""
    kh, kw = k.shape
    out = np.zeros_like(k)
    for m in range(kh):
        for n in range(kw):
            out[m, n] = k[kh - 1 - m, kw - 1 - n]
    return out


def xcorr_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Valid 2-D cross-correlation at stride 1: ``out[i, j] = Σ_mn k[m, n] x[i+m, j+n]``."""
    h, w = x.shape
    kh, kw = k.shape
    out = np.zeros((h - kh + 1, w - kw + 1), dtype=np.result_type(x, k))
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            s = 0.0
            for m in range(kh):
                for n in range(kw):
                    s += k[m, n] * x[i + m, j + n]
            out[i, j] = s
    return out


def conv_full(d: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Full 2-D convolution, as ``convn(d, k, 'full')``: pad d by k − 1, cross-correlate with rot180(k)."""
    kh, kw = k.shape
    ho, wo = d.shape
    padded = np.zeros((ho + 2 * (kh - 1), wo + 2 * (kw - 1)), dtype=d.dtype)
    for i in range(ho):
        for j in range(wo):
            padded[i + kh - 1, j + kw - 1] = d[i, j]
    return xcorr_valid(padded, rot180(k))


def conv_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: Pair, padding: Pair) -> np.ndarray:
    """``y[f, i, j] = Σ_{c,m,n} W[f,c,m,n] xp[c, i·sh+m, j·sw+n] + b`` (b of shape (F,) or (F, Ho, Wo))."""
    xp = pad2d(x, padding)
    f_out, c_in, kh, kw = W.shape
    (sh, sw) = stride
    hp, wp = xp.shape[1:]
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    y = np.zeros((f_out, ho, wo))
    for f in range(f_out):
        for i in range(ho):
            for j in range(wo):
                s = 0.0
                for c in range(c_in):
                    for m in range(kh):
                        for n in range(kw):
                            s += W[f, c, m, n] * xp[c, i * sh + m, j * sw + n]
                y[f, i, j] = s + (b[f] if b.ndim == 1 else b[f, i, j])
    return y


def conv_backward(
    x: np.ndarray, W: np.ndarray, d: np.ndarray, stride: Pair, padding: Pair, tied: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(∂L/∂X, ∂L/∂W, ∂L/∂b) for one sample from its sensitivity map ``d`` (F, Ho, Wo)."""
    xp = pad2d(x, padding)
    f_out, c_in, kh, kw = W.shape
    (ph, pw) = padding
    c, h, w = x.shape
    hp, wp = xp.shape[1:]
    dW = np.zeros_like(W)
    dxp = np.zeros_like(xp)
    for f in range(f_out):
        dd = dilate(d[f], stride)
        for ci in range(c_in):
            # ∂L/∂F: valid cross-correlation of X with δ; a floor remainder of X makes it larger
            # than the kernel, and only its top-left kh×kw block is ∂L/∂F.
            dW[f, ci] = xcorr_valid(xp[ci], dd)[:kh, :kw]
            # ∂L/∂X: full convolution of δ with the kernel (seed 000: δ padded by k − 1 and
            # cross-correlated with rot180(F)).  DeepLearnToolbox's forward is a true convolution
            # with k = rot180(F), so its convn(d, rot180(k), 'full') is this same convn(d, F, 'full').
            # It covers the padded input up to the last window; a floor remainder gets nothing.
            full = conv_full(dd, W[f, ci])
            dxp[ci, : full.shape[0], : full.shape[1]] += full
    db = d.sum(axis=(1, 2)) if tied else d.copy()
    assert hp == h + 2 * ph and wp == w + 2 * pw
    return dxp[:, ph : ph + h, pw : pw + w], dW, db


def pool_windows(h: int, w: int, size: Pair, stride: Pair) -> list[tuple[int, int, int, int]]:
    """(i, j, top, left) of every window that fits (the floor rule), in row-major order."""
    (kh, kw), (sh, sw) = size, stride
    out = []
    for i in range((h - kh) // sh + 1):
        for j in range((w - kw) // sw + 1):
            out.append((i, j, i * sh, j * sw))
    return out


def pool_forward(x: np.ndarray, mode: str, size: Pair, stride: Pair, p: float = 2.0) -> np.ndarray:
    """max / mean / lp of every window of a (C, H, W) map."""
    (kh, kw) = size
    c, h, w = x.shape
    wins = pool_windows(h, w, size, stride)
    ho, wo = wins[-1][0] + 1, wins[-1][1] + 1
    y = np.zeros((c, ho, wo))
    for ci in range(c):
        for i, j, t, left in wins:
            vals = [x[ci, t + m, left + n] for m in range(kh) for n in range(kw)]
            if mode == "max":
                y[ci, i, j] = max(vals)
            elif mode == "mean":
                y[ci, i, j] = sum(vals) / (kh * kw)
            else:
                y[ci, i, j] = sum(abs(v) ** p for v in vals) ** (1.0 / p)
    return y


def pool_backward(
    x: np.ndarray, d: np.ndarray, mode: str, size: Pair, stride: Pair, p: float = 2.0
) -> np.ndarray:
    """∂L/∂X of a pool for one sample: per-window local gradients added back into place."""
    (kh, kw) = size
    c, h, w = x.shape
    dx = np.zeros_like(x)
    for ci in range(c):
        for i, j, t, left in pool_windows(h, w, size, stride):
            if mode == "max":
                # mask: 1 at the first maximum in row-major order (strict '>' keeps the first)
                bm, bn = 0, 0
                for m in range(kh):
                    for n in range(kw):
                        if x[ci, t + m, left + n] > x[ci, t + bm, left + bn]:
                            bm, bn = m, n
                dx[ci, t + bm, left + bn] += d[ci, i, j]
            elif mode == "mean":
                for m in range(kh):
                    for n in range(kw):
                        dx[ci, t + m, left + n] += d[ci, i, j] / (kh * kw)
            else:
                s = sum(abs(x[ci, t + m, left + n]) ** p for m in range(kh) for n in range(kw))
                for m in range(kh):
                    for n in range(kw):
                        v = x[ci, t + m, left + n]
                        g = s ** (1.0 / p - 1.0) * abs(v) ** (p - 1.0) * np.sign(v) if s > 0 else 0.0
                        dx[ci, t + m, left + n] += d[ci, i, j] * g
    return dx


def down(x: np.ndarray, k: int) -> np.ndarray:
    """Sum of every non-overlapping k×k block of a 2-D map (a remainder is dropped)."""
    h, w = x.shape
    out = np.zeros((h // k, w // k))
    for i in range(h // k):
        for j in range(w // k):
            out[i, j] = sum(x[i * k + m, j * k + n] for m in range(k) for n in range(k))
    return out


def up(d: np.ndarray, k: int, shape: Pair) -> np.ndarray:
    """Copy every entry of a 2-D map into a k×k block (Kronecker with ones); zeros beyond."""
    out = np.zeros(shape)
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            for m in range(k):
                for n in range(k):
                    out[i * k + m, j * k + n] = d[i, j]
    return out


def subsample_forward(x: np.ndarray, beta: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """``z_c = β_c · down(x_c) + b_c`` for a (C, H, W) map."""
    return np.stack([beta[c] * down(x[c], k) + b[c] for c in range(x.shape[0])])


def subsample_backward(
    x: np.ndarray, d: np.ndarray, beta: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(∂L/∂X, ∂L/∂β, ∂L/∂b) for one sample: ``β·up(δ)``, ``Σ δ∘down(x)``, ``Σ δ``."""
    c = x.shape[0]
    dx = np.stack([beta[ci] * up(d[ci], k, x.shape[1:]) for ci in range(c)])
    dbeta = np.array([float((d[ci] * down(x[ci], k)).sum()) for ci in range(c)])
    db = np.array([float(d[ci].sum()) for ci in range(c)])
    return dx, dbeta, db
