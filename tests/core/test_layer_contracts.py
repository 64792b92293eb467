"""Layer and network contracts around memory: inputs and deltas are never written, results are kept.

The engine reuses scratch buffers between calls, so these check that a returned array, a
recorded delta, the input ``x`` and the incoming ``dy`` are never overwritten by a later
call, and that a layer that has already run gives the same results as a fresh one.
"""

from __future__ import annotations

import numpy as np
import pytest
from cnnbp.core import LOSSES, Sequential
from cnnbp.core.layers import (
    Conv2D,
    Dense,
    Flatten,
    Identity,
    Layer,
    LpPool,
    MaxPool,
    MeanPool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)

IMAGE = (2, 7, 6)

LAYERS = {
    "conv_pad": lambda: (Conv2D(3, (3, 2), stride=(2, 1), padding=(1, 2)), IMAGE),
    "conv_untied": lambda: (Conv2D(2, 2, bias="untied"), IMAGE),
    "max_overlap": lambda: (MaxPool(3, stride=2), IMAGE),
    "max_tiles": lambda: (MaxPool(2), IMAGE),
    "mean_overlap": lambda: (MeanPool((2, 3), stride=1), IMAGE),
    "mean_tiles": lambda: (MeanPool(2), IMAGE),
    "lp": lambda: (LpPool(2, stride=1, p=3.0), IMAGE),
    "subsample": lambda: (Subsample(2), IMAGE),
    "flatten": lambda: (Flatten(), IMAGE),
    "dense": lambda: (Dense(4), (5,)),
    "sigmoid": lambda: (Sigmoid(), IMAGE),
    "tanh": lambda: (Tanh(), IMAGE),
    "relu": lambda: (ReLU(), IMAGE),
    "identity": lambda: (Identity(), IMAGE),
}


def built(key: str, seed: int = 0) -> tuple[Layer, tuple[int, ...]]:
    """A float64 layer from LAYERS with random parameters (same seed → same layer)."""
    layer, shape = LAYERS[key]()
    rng = np.random.default_rng(seed)
    layer.build(shape, rng, np.float64)
    for v in layer.params.values():
        v[...] = rng.standard_normal(v.shape)
    return layer, shape


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_results_survive_later_calls_and_match_a_fresh_layer(key: str) -> None:
    """y, ∂L/∂x and grads of a first call are untouched by a second; the second equals a fresh layer's."""
    rng = np.random.default_rng(1)
    layer, shape = built(key)
    out_shape = layer.output_shape(shape)
    x1, x2 = rng.standard_normal((3, *shape)), rng.standard_normal((3, *shape))
    d1, d2 = rng.standard_normal((3, *out_shape)), rng.standard_normal((3, *out_shape))
    x1_copy, d1_copy = x1.copy(), d1.copy()

    y1 = layer.forward(x1)
    y1_copy = np.array(y1, copy=True)
    dx1 = layer.backward(d1)
    dx1_copy = np.array(dx1, copy=True)
    g1 = {k: np.array(v, copy=True) for k, v in layer.grads.items()}
    np.testing.assert_array_equal(x1, x1_copy, err_msg="forward/backward wrote into x")
    np.testing.assert_array_equal(d1, d1_copy, err_msg="backward wrote into dy")

    y2 = np.array(layer.forward(x2), copy=True)
    dx2 = np.array(layer.backward(d2), copy=True)
    np.testing.assert_array_equal(y1, y1_copy, err_msg="a later forward overwrote an earlier output")
    np.testing.assert_array_equal(dx1, dx1_copy, err_msg="a later backward overwrote an earlier ∂L/∂x")

    fresh, _ = built(key)
    np.testing.assert_array_equal(fresh.forward(x2), y2)
    np.testing.assert_array_equal(fresh.backward(d2), dx2)
    for k, v in fresh.grads.items():
        np.testing.assert_array_equal(layer.grads[k], v)
    # and running x1 again reproduces the first call exactly
    np.testing.assert_array_equal(layer.forward(x1), y1_copy)
    np.testing.assert_array_equal(layer.backward(d1), dx1_copy)
    for k, v in g1.items():
        np.testing.assert_array_equal(layer.grads[k], v)


def small_net(seed: int) -> Sequential:
    """conv(pad) → relu → max → conv → sigmoid → subsample → flatten → dense, float64."""
    layers = [
        Conv2D(3, 3, padding=1, name="c1"),
        ReLU(name="r"),
        MaxPool(2, name="mp"),
        Conv2D(2, 2, bias="untied", name="c2"),
        Sigmoid(name="s"),
        Subsample(2, name="sub"),
        Flatten(name="f"),
        Dense(3, name="fc"),
    ]
    return Sequential(layers, (2, 10, 9)).build(np.random.default_rng(seed), np.float64)


def test_recorded_deltas_are_kept_across_calls() -> None:
    """Arrays handed to ``record`` (kept without copying) are not overwritten by later passes."""
    rng = np.random.default_rng(2)
    net = small_net(0)
    loss = LOSSES["softmax_cross_entropy"]()
    x1, x2 = rng.standard_normal((4, 2, 10, 9)), rng.standard_normal((4, 2, 10, 9))
    t1, t2 = rng.integers(0, 3, 4), rng.integers(0, 3, 4)
    kept: dict[str, np.ndarray] = {}
    net.gradients(x1, t1, loss, record=kept.__setitem__)
    copies = {k: v.copy() for k, v in kept.items()}
    net.gradients(x2, t2, loss, record=lambda n, d: None)
    for name, d in kept.items():
        np.testing.assert_array_equal(d, copies[name], err_msg=f"delta at {name} was overwritten")


def test_input_grad_false_gives_the_same_gradients() -> None:
    """``gradients(..., input_grad=False)`` gives the same loss, grads and recorded deltas."""
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((4, 2, 10, 9)), rng.standard_normal((4, 3))
    results = []
    for input_grad in (True, False):
        net = small_net(5)
        rec: dict[str, np.ndarray] = {}

        def keep(name: str, d: np.ndarray, rec: dict[str, np.ndarray] = rec) -> None:
            rec[name] = d.copy()

        value = net.gradients(x, t, LOSSES["mse"](), record=keep, input_grad=input_grad)
        grads = {ln: {k: v.copy() for k, v in g.items()} for ln, g in net.grads().items()}
        results.append((value, grads, rec))
    (v1, g1, r1), (v2, g2, r2) = results
    assert v1 == v2
    for ln, grp in g1.items():
        for k, v in grp.items():
            np.testing.assert_array_equal(g2[ln][k], v)
    for name, d in r1.items():
        np.testing.assert_array_equal(r2[name], d)
