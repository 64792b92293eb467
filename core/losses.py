"""Losses: per-sample value and per-sample output delta; the batch loss is their mean."""

from __future__ import annotations

import numpy as np


def as_targets(target: np.ndarray, k: int, dtype: np.dtype) -> np.ndarray:
    """Class indices (N,) → one-hot (N, k); target vectors (N, k) pass through."""
    target = np.asarray(target)
    if target.ndim == 1:
        onehot = np.zeros((target.shape[0], k), dtype=dtype)
        onehot[np.arange(target.shape[0]), target.astype(np.intp)] = 1
        return onehot
    return target.astype(dtype, copy=False)


class Loss:
    """``forward(out, target) -> (N,)`` per-sample losses L_x; ``backward() -> ∂L_x/∂out`` (N, K).

    The deltas are per sample, not divided by the batch size (SPEC §1).
    """

    name = "loss"
    analytic = True

    def _require(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise RuntimeError(f"{self.name}: backward called before forward")

    def forward(self, out: np.ndarray, target: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        raise NotImplementedError


class MSE(Loss):
    """L = ½ Σ_j (y_j − a_j)²,  ∂L/∂a_j = a_j − y_j (seed 000 §2.1, seed 001 §9.3)."""

    name = "mse"

    def forward(self, out: np.ndarray, target: np.ndarray) -> np.ndarray:
        y = as_targets(target, out.shape[1], out.real.dtype)
        self._e = out - y
        return 0.5 * (self._e * self._e).sum(axis=1)

    def backward(self) -> np.ndarray:
        self._require("_e")
        return self._e


class SoftmaxCrossEntropy(Loss):
    """L = −Σ_j y_j ln softmax(s)_j, fused; ∂L/∂s = softmax(s)·Σy − y (= ŷ − y for one-hot, seed 001).

    Stable: the row maximum is subtracted before exponentiating.
    """

    name = "softmax_cross_entropy"

    def forward(self, out: np.ndarray, target: np.ndarray) -> np.ndarray:
        # max of the real part: a constant shift, so it keeps complex-step derivatives exact
        shifted = out - out.real.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        logp = shifted - np.log(total)
        self._p = e / total
        target = np.asarray(target)
        if target.ndim == 1:
            idx = target.astype(np.intp)
            self._idx, self._y = idx, None
            return -logp[np.arange(out.shape[0]), idx]
        y = target.astype(out.real.dtype, copy=False)
        self._idx, self._y = None, y
        return -(y * logp).sum(axis=1)

    def backward(self) -> np.ndarray:
        self._require("_p")
        if self._y is None:
            d = self._p.copy()
            d[np.arange(d.shape[0]), self._idx] -= 1
            return d
        return self._p * self._y.sum(axis=1, keepdims=True) - self._y

    @staticmethod
    def probabilities(out: np.ndarray) -> np.ndarray:
        """softmax(out) per row, stable (the row maximum subtracted); no state kept."""
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


LOSSES: dict[str, type[Loss]] = {"mse": MSE, "softmax_cross_entropy": SoftmaxCrossEntropy}
