"""Finite-difference gradient checks shared by every engine test.

Choices (documented here once, used everywhere):

* **Stencil.** Central differences in float64 with the five-point (fourth-order)
  stencil ``f'(θ) ≈ [f(θ−2h) − 8 f(θ−h) + 8 f(θ+h) − f(θ+2h)] / (12 h)`` and a step
  ``h = 1e-3 · max(1, |θ|)`` per element.  Its truncation error is ``O(h⁴) ≈ 1e-12``
  and its rounding error ``≈ ε·|f| / h ≈ 1e-13``, about a thousand times smaller than
  the two-point stencil's best case (``O(h²) + ε/h``, ≈ 1e-10 at h = 1e-6).  That margin
  is what lets every *element* be held to a relative error of 1e-7: with the two-point
  stencil, a gradient entry that happens to be ~1e-3 in size already fails.
* **Vector-valued f.**  A layer check's scalar is ``L(θ) = Σ dout ⊙ y(θ)``.  ``fd_gradient``
  takes ``y`` and the weights ``dout`` and applies the stencil to ``y`` before the weighted
  sum — the same linear combination, so the same finite difference of ``L`` — but output
  entries that do not depend on the perturbed element cancel exactly instead of adding
  ``ε·Σ|dout ⊙ y|`` of rounding noise.
* **Error measure.**  Element-wise ``|a − n| / max(|a|, |n|, floor)`` with an absolute
  ``floor = 1e-8``: an entry is judged relative to its own size, and entries that are
  (analytically) zero — a dead relu, a window's non-maximum — must come out below 1e-15
  in absolute terms, which they do because both sides are exactly 0 there.
* **Kinks.**  The stencil reaches ``θ ± 2h``; callers keep relu inputs, max-pool gaps and
  Lp-pool magnitudes far from their kinks (≥ 1e-2 ≫ 2h).

Every check records its largest relative error under a label in ``FD_MAX_REL_ERR``;
``tests/conftest.py`` prints that table at the end of the run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

REL_STEP = 1e-3
FLOOR = 1e-8
TOL = 1e-7

#: label → largest element-wise relative error any check under that label has seen
FD_MAX_REL_ERR: dict[str, float] = {}


def fd_gradient(
    f: Callable[[], np.ndarray | float],
    theta: np.ndarray,
    weights: np.ndarray | float | None = None,
    rel_step: float = REL_STEP,
) -> np.ndarray:
    """Five-point central-difference gradient of ``Σ weights ⊙ f()`` with respect to ``theta``.

    ``theta`` is a float64 array that ``f`` reads; each element is perturbed in place
    and restored, so ``theta`` may be a live layer parameter or input.  ``f`` returns a
    scalar or an array; with ``weights=None`` its values are summed.
    """
    if theta.dtype != np.float64:
        raise TypeError(f"finite differences run in float64, got {theta.dtype}")
    flat = theta.reshape(-1)
    if not np.shares_memory(flat, theta):
        raise ValueError("theta must be contiguous so that it can be perturbed in place")
    grad = np.zeros(theta.size, dtype=np.float64)
    for i in range(flat.size):
        orig = float(flat[i])
        h = rel_step * max(1.0, abs(orig))
        vals = []
        for k in (-2.0, -1.0, 1.0, 2.0):
            flat[i] = orig + k * h
            vals.append(np.array(f(), dtype=np.float64, copy=True))
        flat[i] = orig
        # differences first: outputs that do not depend on θ_i then cancel to exactly 0
        diff = (8.0 * (vals[2] - vals[1]) - (vals[3] - vals[0])) / (12.0 * h)
        grad[i] = np.sum(diff if weights is None else np.asarray(weights) * diff)
    return grad.reshape(theta.shape)


def rel_error(analytic: np.ndarray, numeric: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """Element-wise ``|a − n| / max(|a|, |n|, floor)``."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise AssertionError(f"shape mismatch: analytic {a.shape} vs numeric {n.shape}")
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)


def assert_fd_close(label: str, analytic: np.ndarray, numeric: np.ndarray, tol: float = TOL) -> float:
    """Assert the element-wise relative error is ≤ ``tol``; record and return the largest one."""
    err = rel_error(analytic, numeric)
    worst = float(err.max()) if err.size else 0.0
    FD_MAX_REL_ERR[label] = max(FD_MAX_REL_ERR.get(label, 0.0), worst)
    if not worst <= tol:
        i = np.unravel_index(int(np.argmax(err)), err.shape)
        raise AssertionError(
            f"{label}: relative error {worst:.3e} > {tol:.0e} at {i}: "
            f"analytic {np.asarray(analytic)[i]!r}, numeric {np.asarray(numeric)[i]!r}"
        )
    return worst


def check_layer(label: str, layer, x: np.ndarray, rng: np.random.Generator) -> float:
    """FD check of one built float64 layer at input ``x``: ∂L/∂x and every ``grads[k]``.

    ``L = Σ dout ⊙ layer.forward(x)`` with a random (not all-ones) ``dout``;
    ``layer.backward(dout)`` must return ∂L/∂x and store ∂L/∂params[k] in ``grads[k]``.
    Returns the largest relative error seen.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout.copy())
    grads = {k: np.array(v, copy=True) for k, v in layer.grads.items()}
    assert set(grads) == set(layer.params), f"{label}: grads keys {sorted(grads)} != params keys"

    def out() -> np.ndarray:
        return layer.forward(x)

    worst = assert_fd_close(label, dx, fd_gradient(out, x, dout))
    for key, theta in layer.params.items():
        assert grads[key].shape == theta.shape, f"{label}: grads[{key}] shape {grads[key].shape}"
        worst = max(worst, assert_fd_close(label, grads[key], fd_gradient(out, theta, dout)))
    return worst


def format_fd_table() -> str:
    """The ``FD_MAX_REL_ERR`` table as aligned text, one label per line."""
    width = max(len(k) for k in FD_MAX_REL_ERR)
    return "\n".join(f"{k:<{width}}  {v:.3e}" for k, v in sorted(FD_MAX_REL_ERR.items()))
