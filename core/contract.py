"""The layer API, checked on a layer: what every layer — built-in or a user's — must do.

``forward(x)`` returns an array of ``(batch, *output_shape(input_shape))`` in the input's dtype and
leaves ``x`` alone; ``backward(dy)`` returns ``∂L/∂x`` shaped and typed like ``x``, leaves ``dy``
alone, and fills ``grads`` with exactly the keys of ``params``, each shaped and typed like its
parameter; a ``frozen_forward``, when there is one, gives ``forward``'s output at the layer's own
``kink_signature()``.  :func:`api_problems` runs a layer once on random data and lists what it breaks.
"""

from __future__ import annotations

import copy

import numpy as np

from cnnbp.core.layers.base import Layer, Shape, frozen_forward_of

__all__ = ["api_problems"]


def api_problems(layer: Layer, input_shape: Shape, dtype: np.dtype | type, rng: np.random.Generator,
                 batch: int = 3) -> list[str]:  # fmt: skip
    """What a built layer breaks of the API on a random batch (empty when nothing); the layer itself
    is left untouched (a copy is run, in the ``probe`` phase)."""
    dtype = np.dtype(dtype)
    layer = copy.deepcopy(layer)
    layer.phase = "probe"
    try:
        expected = (batch, *layer.output_shape(tuple(input_shape)))
        x = rng.standard_normal((batch, *input_shape)).astype(dtype)
        x_before = x.copy()
        y = np.asarray(layer.forward(x))
        problems = _forward_problems(y, x, x_before, expected, dtype) or _frozen_problems(layer, x, y)
        if problems:
            return problems
        dy = rng.standard_normal(y.shape).astype(dtype)
        dy_before = dy.copy()
        # NaN where backward must write: a gradient it never sets (or adds to) shows as NaN
        layer.grads = {k: np.full_like(v, np.nan) for k, v in layer.params.items()}
        dx = layer.backward(dy)
    except Exception as e:  # noqa: BLE001 - a user's layer may raise anything; say what and where
        return [f"raised {type(e).__name__}: {' '.join(str(e).split()) or 'no message'}"]
    return _backward_problems(layer, dx, dy, dy_before, x.shape, dtype)


def _forward_problems(y: np.ndarray, x: np.ndarray, x_before: np.ndarray, expected: Shape,
                      dtype: np.dtype) -> list[str]:  # fmt: skip
    if y.shape != expected:
        return [f"forward returns shape {y.shape}, but output_shape says {expected}"]
    if y.dtype != dtype:
        return [f"forward returns {y.dtype} for a {dtype} input (the dtype must be kept)"]
    if not np.array_equal(x, x_before, equal_nan=True):
        return ["forward modified its input x in place"]
    return []


def _frozen_problems(layer: Layer, x: np.ndarray, y: np.ndarray) -> list[str]:
    """A frozen forward (the gradient checker's forward with every kink held) at the layer's own state
    must be the forward: ``frozen_forward(x, kink_signature()) == forward(x)``, to rounding."""
    twin = copy.deepcopy(layer)  # the frozen forward may overwrite what backward reads
    frozen = frozen_forward_of(twin)
    if frozen is None or not hasattr(twin, "kink_signature"):
        return []
    z = np.asarray(frozen(x.copy(), np.asarray(twin.kink_signature())))
    if z.shape != y.shape or z.dtype != y.dtype:
        return [f"frozen_forward returns {z.dtype} {z.shape}, forward {y.dtype} {y.shape}"]
    tol = 1e-5 if y.dtype == np.float32 else 1e-12
    diff = float(np.max(np.abs(z - y), initial=0.0))
    if not diff <= tol * max(1.0, float(np.max(np.abs(y), initial=0.0))):
        return [f"frozen_forward(x, kink_signature()) differs from forward(x) by up to {diff:.3g}; at the "
                "layer's own state it must give forward's output"]  # fmt: skip
    return []


def _backward_problems(layer: Layer, dx: object, dy: np.ndarray, dy_before: np.ndarray, x_shape: Shape,
                       dtype: np.dtype) -> list[str]:  # fmt: skip
    if not np.array_equal(dy, dy_before, equal_nan=True):
        return ["backward modified dy in place (it must leave the caller's array alone)"]
    dx = np.asarray(dx)
    if dx.shape != x_shape:
        return [f"backward returns shape {dx.shape} for ∂L/∂x, but x has shape {x_shape}"]
    if dx.dtype != dtype:
        return [f"backward returns {dx.dtype} for ∂L/∂x of a {dtype} input (the dtype must be kept)"]
    missing = sorted(set(layer.params) - set(layer.grads))
    if missing:
        return [f"backward fills no grads[{missing[0]!r}] for params[{missing[0]!r}]"]
    extra = sorted(set(layer.grads) - set(layer.params))
    if extra:
        return [
            f"grads has {extra[0]!r}, which is not a parameter (params: {', '.join(layer.params) or 'none'})"
        ]
    for key, p in layer.params.items():
        g = np.asarray(layer.grads[key])
        if g.shape != p.shape:
            return [f"grads[{key!r}] has shape {g.shape}, params[{key!r}] has {p.shape}"]
        if g.dtype != p.dtype:
            return [f"grads[{key!r}] is {g.dtype}, params[{key!r}] is {p.dtype} (the dtype must be kept)"]
        if g.size and np.isnan(g).all():
            return [f"backward fills no grads[{key!r}] for params[{key!r}]"]
        if np.isnan(g).any():
            return [f"grads[{key!r}] has NaN where the batch has none (does backward add to it, or "
                    "leave part of it unset?)"]  # fmt: skip
    return []
