"""Helpers shared by the engine tests (``tests/core``): case grids, layer set-up, the comparison with the
loop references, the memory contract every layer keeps, and the error assertions.

Plain functions and constants, imported by the test modules from ``tests.core.conftest``; the ``rng``
fixture and the finite-difference table live in ``tests/conftest.py``, the stencil in ``tests/fd.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest

from cnnbp.core import Conv2D, Dense, Flatten, Identity, Layer, LpPool, MaxPool, MeanPool
from cnnbp.core.errors import ShapeError
from cnnbp.core.init import HeNormal
from cnnbp.core.layers import ReLU, Sigmoid, Subsample, Tanh
from cnnbp.core.losses import Loss, SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from cnnbp.core.trace import Step
from tests.fd import check_layer

# ---- case grids (finite differences and loop references) -----------------------------------------
# (in_channels, H, W, filters, kernel, stride, padding, bias, batch)
CONV_CASES = [
    (2, 5, 7, 3, (2, 3), 1, 0, "tied", 2),
    (1, 6, 5, 2, (3, 2), 2, 1, "untied", 1),
    (2, 7, 8, 2, 3, 3, 2, "tied", 2),
    (3, 6, 7, 2, (2, 3), (2, 1), (1, 0), "untied", 3),
    (1, 5, 6, 1, (1, 2), (1, 3), (0, 2), "tied", 2),
    (2, 9, 8, 2, 2, 3, 0, "tied", 1),  # stride > kernel: some inputs feed nothing
    (1, 3, 4, 2, (3, 4), 1, 0, "untied", 2),  # kernel = whole input
    (1, 4, 3, 1, 2, 1, 2, "tied", 1),  # padding ≥ kernel: border outputs see only zeros
    (2, 8, 7, 3, (3, 2), (3, 2), (2, 1), "untied", 2),
    (1, 1, 1, 2, 1, 1, 0, "tied", 2),  # 1×1 input, 1×1 kernel
    (2, 2, 3, 2, 2, 3, 3, "untied", 2),  # padding > kernel: whole output rows/cols see only zeros
    (1, 5, 4, 1, (5, 1), (4, 2), (1, 3), "tied", 1),
]

# (channels, H, W, size, stride (None = size), batch)
POOL_CASES = [
    (2, 5, 7, (2, 3), None, 2),  # non-overlapping, windows do not divide the input (floor)
    (1, 4, 6, 2, 2, 1),  # exact tiling
    (2, 5, 6, 3, 1, 2),  # overlapping, stride < size
    (1, 6, 7, (2, 3), (1, 2), 3),  # overlapping, mixed
    (2, 7, 8, 2, 3, 1),  # stride > size: gaps
    (1, 7, 5, (3, 2), (2, 3), 2),  # mixed, floor
    (3, 3, 4, (3, 4), 1, 2),  # one window = the whole input
    (1, 3, 3, 2, 1, 2),  # seed 004 §3: 2×2 at stride 1 on 3×3
]

LP_POWERS = [1.0, 2.0, 3.0, 2.5]

# (channels, H, W, scale, batch)
SUBSAMPLE_CASES = [
    (2, 5, 7, 2, 2),  # remainder in both directions
    (1, 7, 8, 3, 1),  # remainder
    (3, 4, 6, 1, 2),
    (2, 6, 6, 2, 3),  # exact
]

#: batch shapes the element-wise layers are checked on: images and feature vectors
ACTIVATION_SHAPES = [(2, 3, 4, 5), (3, 6), (1, 7)]

#: the per-sample image of the memory-contract checks
IMAGE = (2, 7, 6)


def conv_id(case: tuple) -> str:
    """A readable test id for a conv case."""
    c, h, w, f, k, s, p, bias, n = case
    return f"c{c}_{h}x{w}_f{f}_k{k}_s{s}_p{p}_{bias}_n{n}".replace(" ", "")


def pool_id(case: tuple) -> str:
    """A readable test id for a pool case."""
    c, h, w, k, s, n = case
    return f"c{c}_{h}x{w}_k{k}_s{s}_n{n}".replace(" ", "")


def subsample_id(case: tuple) -> str:
    """A readable test id for a subsample case."""
    c, h, w, k, n = case
    return f"c{c}_{h}x{w}_k{k}_n{n}"


# ---- layers and inputs ------------------------------------------------------------------------------
def build(layer: Layer, input_shape: tuple[int, ...], rng: np.random.Generator) -> Layer:
    """Build ``layer`` in float64 and overwrite every parameter with random values."""
    layer.build(input_shape, rng, np.float64)
    for value in layer.params.values():
        value[...] = rng.standard_normal(value.shape)
    return layer


def distinct_grid(shape: tuple[int, ...], rng: np.random.Generator, spacing: float = 0.1) -> np.ndarray:
    """Values with no ties: a random permutation of a grid spaced ``spacing`` (≫ the FD reach 2h)."""
    n = int(np.prod(shape))
    return (spacing * (rng.permutation(n) - n / 2)).reshape(shape)


def away_from_zero(shape: tuple[int, ...], rng: np.random.Generator, low: float = 0.2) -> np.ndarray:
    """Random signs times magnitudes in [low, 2): no zeros, for |x| kinks."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, 2.0, size=shape)


def check_activation(label: str, layer: Layer, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """FD check of an element-wise layer on a batch ``2·N(0, 1)`` of ``shape``.

    For a relu (``analytic = False``) every input is redrawn until it is ≥ 1e-2 from the kink
    (the stencil reaches 2e-3), with both signs present.
    """
    layer = build(layer, shape[1:], rng)
    x = 2.0 * rng.standard_normal(shape)
    if not layer.analytic:
        while (small := np.abs(x) < 1e-2).any():
            x[small] = rng.standard_normal(int(small.sum()))
        assert (x > 0).any() and (x < 0).any()
    check_layer(label, layer, x, rng)


class ElementwiseLayerTests:
    """The tests every element-wise layer passes.

    A layer's test module subclasses this as ``Test<Layer>``, setting ``make`` (the layer's class)
    and ``label`` (its name in the finite-difference table and the layer's name where one is given).
    """

    make: type[Layer]
    label: str

    @pytest.mark.parametrize("shape", ACTIVATION_SHAPES)
    def test_backward_matches_finite_differences(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> None:
        """∂L/∂z = ∂L/∂a · g'(z) matches finite differences (a kinked layer: inputs ≥ 1e-2 from the kink)."""
        check_activation(self.label, self.make(), shape, rng)

    def test_results_survive_later_calls_and_match_a_fresh_layer(self) -> None:
        """Returned arrays, x and dy are never overwritten; a used layer equals a fresh one."""
        check_results_survive_later_calls(self.make, IMAGE)

    def test_backward_before_forward(self) -> None:
        """backward() before any forward() raises RuntimeError."""
        assert_backward_before_forward_raises(self.make(name=self.label), (5,))

    def test_is_elementwise_without_parameters_or_window(self) -> None:
        """Element-wise, no hyper-parameters, parameters, initialisers or window; shapes pass through."""
        layer = self.make()
        assert (layer.kind, layer.elementwise, layer.param_names) == (self.label, True, ())
        assert (layer.hyper(), layer.default_init(), layer.window()) == ({}, {}, None)
        assert layer.output_shape((3, 4)) == (3, 4) and layer.param_shapes((3, 4)) == {}


def every_layer_net() -> Sequential:
    """A network with one of every layer type (both bias modes), built in float32."""
    layers: list[Layer] = [
        Conv2D(3, 3, padding=1, name="c1"),
        ReLU(name="relu"),
        MaxPool(2, name="max"),
        Conv2D(4, (2, 3), stride=(1, 2), bias="untied", init={"W": HeNormal()}, name="c2"),
        Tanh(name="tanh"),
        LpPool(2, stride=1, p=2.5, name="lp"),
        MeanPool((2, 1), stride=1, name="mean"),
        Subsample(2, name="sub"),
        Sigmoid(name="sig"),
        Flatten(name="flat"),
        Dense(5, name="fc"),
        Identity(name="id"),
    ]
    return Sequential(layers, (2, 14, 15)).build(np.random.default_rng(3), np.float32)


# ---- the loop references ------------------------------------------------------------------------------
REF_TOL = 1e-12

#: per sample: ``x_i → y_i`` and ``(x_i, d_i) → (∂L/∂x_i, {param: sample i's ∂L/∂θ})``
RefForward = Callable[[np.ndarray], np.ndarray]
RefBackward = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]


def assert_matches(fast: np.ndarray, slow: np.ndarray, what: str) -> None:
    """Max absolute difference relative to the reference's scale is ≤ 1e-12."""
    assert fast.shape == slow.shape, f"{what}: shape {fast.shape} vs reference {slow.shape}"
    scale = max(float(np.abs(slow).max()), 1e-300)
    err = float(np.abs(fast - slow).max()) / scale
    assert err <= REF_TOL, f"{what}: max |fast − reference| / scale = {err:.3e}"


def assert_matches_reference(
    layer: Layer, x: np.ndarray, d: np.ndarray, forward: RefForward, backward: RefBackward
) -> None:
    """Forward, then backward of ``d``: y and ∂L/∂x per sample, and every ∂L/∂θ summed over the batch,
    against the references (to ``REF_TOL``)."""
    y = layer.forward(x)
    dx = layer.backward(d)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    totals = {k: np.zeros_like(v) for k, v in layer.params.items()}
    for i in range(x.shape[0]):
        assert_matches(y[i], forward(x[i]), "forward")
        ref_dx, ref_grads = backward(x[i], d[i])
        assert_matches(dx[i], ref_dx, "dX")
        assert set(ref_grads) == set(totals)
        for k, g in ref_grads.items():
            totals[k] += g
    for k, total in totals.items():
        assert_matches(grads[k], total, f"d{k}")


# ---- contracts every layer keeps ----------------------------------------------------------------------
def check_results_survive_later_calls(make: Callable[[], Layer], shape: tuple[int, ...]) -> None:
    """y, ∂L/∂x and grads of a first call are untouched by a second; the second equals a fresh layer's.

    The engine reuses scratch buffers between calls: a returned array, the input ``x`` and the incoming
    ``dy`` must never be overwritten, and a layer that has already run must give a fresh one's results.
    Both layers are ``make()`` built in float64 with parameters drawn from ``default_rng(0)``.
    """
    rng = np.random.default_rng(1)
    layer = build(make(), shape, np.random.default_rng(0))
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

    fresh = build(make(), shape, np.random.default_rng(0))
    np.testing.assert_array_equal(fresh.forward(x2), y2)
    np.testing.assert_array_equal(fresh.backward(d2), dx2)
    for k, v in fresh.grads.items():
        np.testing.assert_array_equal(layer.grads[k], v)
    # and running x1 again reproduces the first call exactly
    np.testing.assert_array_equal(layer.forward(x1), y1_copy)
    np.testing.assert_array_equal(layer.backward(d1), dx1_copy)
    for k, v in g1.items():
        np.testing.assert_array_equal(layer.grads[k], v)


def assert_backward_before_forward_raises(layer: Layer, shape: tuple[int, ...]) -> None:
    """``layer``, built for ``shape``, raises RuntimeError from backward() before any forward()."""
    layer.build(shape, np.random.default_rng(0), np.float64)
    out_shape = layer.output_shape(shape)
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((2, *out_shape)))


# ---- errors ---------------------------------------------------------------------------------------------
def shape_pattern(shape: tuple[int, ...]) -> str:
    """A regex for a shape written as ``1×6×6``, ``1x6x6`` or ``(1, 6, 6)``."""
    dims = [str(s) for s in shape]
    return "|".join([re.escape("×".join(dims)), re.escape("x".join(dims)), re.escape(str(tuple(shape)))])


def summary_error(layers: list[Layer], input_shape: tuple[int, ...]) -> ShapeError:
    """The ShapeError that ``summary()`` raises (failing the test if it does not)."""
    with pytest.raises(ShapeError) as err:
        Sequential(layers, input_shape).summary()
    return err.value


def assert_names(err: ShapeError, layer: str) -> None:
    """The error's ``layer`` attribute and its message both name ``layer``."""
    assert err.layer == layer
    assert layer in str(err)


def assert_hyper_error(make: Callable[[], object], layer: str, key: str, detail: str) -> None:
    """``make()`` raises ShapeError naming ``layer`` and the argument ``key``, with exactly ``detail``
    (the message is then ``<layer>: <key>: <detail>``)."""
    with pytest.raises(ShapeError) as err:
        make()
    assert_names(err.value, layer)
    assert err.value.key == key
    assert err.value.detail == detail
    assert str(err.value) == f"{layer}: {key}: {detail}"


REL = 1e-12  # of a trace step: its value against Σ_terms Π factors and against the engine's number


# ---- trace: the engine's numbers and the exactness check (test_trace.py, cli/test_tracing.py) ---------

def engine_numbers(net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, lr: float) -> dict:
    """(layer, tensor) → the engine's array for the batch of one sample, in the eval phase."""
    xb, yb = x[None], np.asarray(y)[None]
    ref: dict[tuple[str, str], np.ndarray] = {}
    with net.in_phase("eval"):
        a = xb
        for layer in net.layers:
            a = layer.forward(a)
            ref[(layer.name, "a" if layer.elementwise else "z")] = np.array(a[0])
        if isinstance(loss, SoftmaxCrossEntropy):
            ref[("loss", "softmax")] = SoftmaxCrossEntropy.probabilities(a)[0]
        deltas: dict[str, np.ndarray] = {}
        mean_loss = net.gradients(
            xb, yb, loss, record=lambda name, d: deltas.__setitem__(name, np.array(d[0]))
        )
        ref[("loss", "loss")] = np.array(mean_loss)
        grads = {name: {k: np.array(g) for k, g in group.items()} for name, group in net.grads().items()}
        loss.forward(net.forward(xb), yb)
        ref[("input", "input_grad")] = np.array(net.backward(loss.backward())[0])
    for name, d in deltas.items():
        ref[(name, "delta")] = d
    updated = {name: {k: np.array(v) for k, v in group.items()} for name, group in net.parameters().items()}
    SGD(lr=lr).step(updated, grads)
    for name, group in grads.items():
        for k in group:
            ref[(name, f"grad:{k}")] = group[k]
            ref[(name, f"update:{k}")] = updated[name][k]
    return ref


def check_exact(steps: list[Step], ref: dict) -> None:
    """Every step: value = Σ_terms Π factors (to REL of Σ|Π|) and value = the engine's number (to REL)."""
    assert steps
    for s in steps:
        where = f"{s.layer}.{s.tensor}{list(s.index)}: {s.formula}"
        expected = float(ref[(s.layer, s.tensor)][s.index])
        assert math.isfinite(s.value), where
        assert abs(s.value - expected) <= REL * abs(expected), (where, s.value, expected)
        products = [math.prod(t) for t in s.terms]
        scale = max(abs(s.value), sum(abs(p) for p in products))
        assert abs(sum(products) - s.value) <= REL * scale, (where, sum(products), s.value)


# ---- gradient checker set-ups (test_gradcheck.py, test_gradcheck_kinks.py) ---------------------------

def build_net(
    layers: list[Layer], shape: tuple[int, ...], seed: int = 0, dtype: type = np.float64
) -> Sequential:
    """Layers + a final 3-unit dense ``fc``; parameters ~ N(0, 0.6²) so nothing is tiny."""
    net = Sequential([*layers, Dense(3, name="fc")], shape).build(np.random.default_rng(seed), dtype)
    rng = np.random.default_rng(seed + 100)
    for layer in net.layers:
        for p in layer.params.values():
            p[...] = (0.6 * rng.standard_normal(p.shape)).astype(p.dtype)
    return net


def batch(net: Sequential, loss: Loss, m: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """m standard-normal samples and targets for ``loss`` (class indices or soft targets)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, *net.input_shape))
    if isinstance(loss, SoftmaxCrossEntropy):
        return x, rng.integers(0, 3, size=m)
    return x, rng.random((m, 3))


def clean_gradients(
    net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray
) -> tuple[dict, dict, np.ndarray]:
    """Correct parameter gradients, per-layer deltas and the input gradient."""
    deltas: dict[str, np.ndarray] = {}
    net.gradients(x, y, loss, record=lambda name, d: deltas.__setitem__(name, d.copy()))
    grads = {l.name: {k: g.copy() for k, g in l.grads.items()} for l in net.layers}
    dx = net.layers[0].backward(deltas[net.layers[0].name]).copy()
    return grads, deltas, dx


def analytic_net(seed: int = 0) -> Sequential:
    """Conv, tanh, mean pool, subsample, dense, sigmoid, dense: holomorphic throughout."""
    layers = [
        Conv2D(3, 3, padding=1, name="conv"),
        Tanh(name="tanh"),
        MeanPool(2, name="pool"),
        Subsample(1, name="sub"),
        Flatten(name="flat"),
        Dense(5, name="hidden"),
        Sigmoid(name="sig"),
    ]
    return build_net(layers, (2, 6, 6), seed)
