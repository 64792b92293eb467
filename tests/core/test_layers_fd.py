"""Finite-difference checks of every layer's backward: ∂L/∂x and every ∂L/∂θ, in float64.

``L = Σ dout ⊙ layer.forward(x)`` with a random ``dout``; see ``tests/fd.py`` for the
stencil, the step and the error measure.  The grids below are shared with
``test_reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from cnnbp.core.layers import (
    Conv2D,
    Dense,
    Flatten,
    Identity,
    Layer,
    LpPool,
    MaxPool,
    MeanPool,
    Pool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)

from tests.fd import check_layer

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


def conv_id(case: tuple) -> str:
    """A readable test id for a conv case."""
    c, h, w, f, k, s, p, bias, n = case
    return f"c{c}_{h}x{w}_f{f}_k{k}_s{s}_p{p}_{bias}_n{n}".replace(" ", "")


def pool_id(case: tuple) -> str:
    """A readable test id for a pool case."""
    c, h, w, k, s, n = case
    return f"c{c}_{h}x{w}_k{k}_s{s}_n{n}".replace(" ", "")


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


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv(case: tuple, rng: np.random.Generator) -> None:
    """Conv2D: ∂L/∂X, ∂L/∂W and tied/untied ∂L/∂b match finite differences."""
    c, h, w, f, k, s, p, bias, n = case
    layer = build(Conv2D(f, k, stride=s, padding=p, bias=bias), (c, h, w), rng)
    check_layer("conv", layer, rng.standard_normal((n, c, h, w)), rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_max_pool(case: tuple, rng: np.random.Generator) -> None:
    """MaxPool: ∂L/∂X matches finite differences on tie-free inputs."""
    c, h, w, k, s, n = case
    layer = build(Pool("max", k, s), (c, h, w), rng)
    assert isinstance(layer, MaxPool)
    check_layer("pool:max", layer, distinct_grid((n, c, h, w), rng), rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_mean_pool(case: tuple, rng: np.random.Generator) -> None:
    """MeanPool: ∂L/∂X matches finite differences."""
    c, h, w, k, s, n = case
    layer = build(Pool("mean", k, s), (c, h, w), rng)
    assert isinstance(layer, MeanPool)
    check_layer("pool:mean", layer, rng.standard_normal((n, c, h, w)), rng)


@pytest.mark.parametrize("p", LP_POWERS)
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_lp_pool(case: tuple, p: float, rng: np.random.Generator) -> None:
    """LpPool: ∂L/∂X matches finite differences for p = 1, 2, 3, 2.5 (inputs away from 0)."""
    c, h, w, k, s, n = case
    layer = build(Pool("lp", k, s, p=p), (c, h, w), rng)
    assert isinstance(layer, LpPool) and layer.p == p
    check_layer(f"pool:lp p={p:g}", layer, away_from_zero((n, c, h, w), rng), rng)


@pytest.mark.parametrize("case", SUBSAMPLE_CASES, ids=lambda c: f"c{c[0]}_{c[1]}x{c[2]}_k{c[3]}_n{c[4]}")
def test_subsample(case: tuple, rng: np.random.Generator) -> None:
    """Subsample: ∂L/∂X, ∂L/∂β and ∂L/∂b match finite differences (remainders dropped)."""
    c, h, w, k, n = case
    layer = build(Subsample(k), (c, h, w), rng)
    assert set(layer.params) == {"beta", "b"}
    check_layer("subsample", layer, rng.standard_normal((n, c, h, w)), rng)


@pytest.mark.parametrize(("units_in", "units_out", "n"), [(5, 3, 1), (7, 4, 3), (1, 2, 2), (6, 1, 4)])
def test_dense(units_in: int, units_out: int, n: int, rng: np.random.Generator) -> None:
    """Dense: ∂L/∂a, ∂L/∂W and ∂L/∂b match finite differences."""
    layer = build(Dense(units_out), (units_in,), rng)
    assert layer.params["W"].shape == (units_out, units_in)
    check_layer("dense", layer, rng.standard_normal((n, units_in)), rng)


@pytest.mark.parametrize("shape", [(2, 3, 2, 4), (1, 1, 3, 5)])
def test_flatten(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """Flatten: C-major order, and backward reshapes the delta back (checked by FD)."""
    layer = build(Flatten(), shape[1:], rng)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    n, c, h, w = shape
    for ci in range(c):
        for i in range(h):
            for j in range(w):
                assert y[0, ci * h * w + i * w + j] == x[0, ci, i, j]
    check_layer("flatten", layer, x, rng)


ACTIVATION_CLASSES = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "identity": Identity}


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 6), (1, 7)])
@pytest.mark.parametrize("kind", sorted(ACTIVATION_CLASSES))
def test_activation(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """Sigmoid, tanh, relu, identity: ∂L/∂z = ∂L/∂a · g'(z) matches finite differences."""
    layer = build(ACTIVATION_CLASSES[kind](), shape[1:], rng)
    x = 2.0 * rng.standard_normal(shape)
    if kind == "relu":  # keep every input ≥ 1e-2 from the kink (the stencil reaches 2e-3)
        while (small := np.abs(x) < 1e-2).any():
            x[small] = rng.standard_normal(int(small.sum()))
        assert (x > 0).any() and (x < 0).any()
    check_layer(kind, layer, x, rng)
