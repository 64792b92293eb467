"""Parameter initialisers (``core/init.py``): Glorot-uniform and He-normal statistics with conv and dense
fans, explicit values, and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core import Sequential, ShapeError
from cnnbp.core.init import SCHEMES, Constant, Explicit, GlorotUniform, HeNormal, Zeros
from cnnbp.core.layers import Conv2D, Dense, Layer
from tests.core.conftest import every_layer_net

F32 = np.dtype(np.float32)


def test_glorot_uniform_conv_bound() -> None:
    """Conv Glorot bound sqrt(6 / (fan_in + fan_out)), fan_in = in·kh·kw, fan_out = out·kh·kw."""
    c_in, c_out, kh, kw = 8, 16, 5, 3
    net = Sequential([Conv2D(c_out, (kh, kw), name="c")], (c_in, 9, 9)).build(
        np.random.default_rng(0), np.float64
    )
    W = net.layer("c").params["W"]
    assert W.shape == (c_out, c_in, kh, kw)
    bound = np.sqrt(6.0 / (c_in * kh * kw + c_out * kh * kw))
    assert np.abs(W).max() <= bound
    assert np.abs(W).max() >= 0.99 * bound  # 1920 draws: the sample reaches the bound
    assert W.std() == pytest.approx(bound / np.sqrt(3.0), rel=0.05)  # U(−r, r) has std r/√3
    assert abs(W.mean()) < 0.05 * bound
    np.testing.assert_array_equal(net.layer("c").params["b"], 0.0)


def test_glorot_uniform_dense_bound() -> None:
    """Dense Glorot bound sqrt(6 / (units_in + units_out))."""
    net = Sequential([Dense(60, name="fc")], (90,)).build(np.random.default_rng(1), np.float64)
    W = net.layer("fc").params["W"]
    bound = np.sqrt(6.0 / (90 + 60))
    assert bound * 0.99 <= np.abs(W).max() <= bound
    assert W.std() == pytest.approx(bound / np.sqrt(3.0), rel=0.03)


def test_glorot_uniform_direct_call() -> None:
    """The initialiser itself honours fan_in/fan_out and the dtype."""
    W = GlorotUniform()((200, 50), 30, 70, np.random.default_rng(2), np.float32)
    assert W.dtype == F32 and W.shape == (200, 50)
    bound = np.sqrt(6.0 / 100)
    assert 0.99 * bound <= np.abs(W).max() <= bound


@pytest.mark.parametrize(
    ("layer", "input_shape", "fan_in"),
    [(Conv2D(64, (3, 2), init={"W": HeNormal()}, name="c"), (6, 8, 8), 6 * 3 * 2),
     (Dense(200, init={"W": HeNormal()}, name="c"), (150,), 150)],
    ids=["conv", "dense"],
)
def test_he_normal_std(layer: Layer, input_shape: tuple[int, ...], fan_in: int) -> None:
    """He-normal weights have mean 0 and std sqrt(2 / fan_in) (conv fan_in = in·kh·kw)."""
    net = Sequential([layer], input_shape).build(np.random.default_rng(4), np.float64)
    W = net.layer("c").params["W"]
    std = np.sqrt(2.0 / fan_in)
    assert W.std() == pytest.approx(std, rel=0.04)
    assert abs(W.mean()) < 0.04 * std


def test_constant_zeros_and_the_scheme_names() -> None:
    """Constant and Zeros fill every element, in the dtype asked for; SCHEMES maps the config names."""
    rng = np.random.default_rng(0)
    quarter = Constant(0.25)((2, 3), 1, 1, rng, np.float32)
    assert quarter.dtype == F32
    np.testing.assert_array_equal(quarter, np.full((2, 3), 0.25))
    assert Zeros()((4,), 1, 1, rng, np.float64).tolist() == [0.0] * 4
    assert sorted(SCHEMES) == ["glorot_uniform", "he_normal", "zeros"]
    assert all(cls.name == name for name, cls in SCHEMES.items())


def test_explicit_shape_mismatch_raises() -> None:
    """Explicit values of the wrong shape raise ShapeError naming the layer."""
    net = Sequential([Dense(3, init={"W": Explicit(np.zeros((2, 2)))}, name="fc1")], (4,))
    with pytest.raises(ShapeError) as err:
        net.build(np.random.default_rng(0), np.float64)
    assert err.value.layer == "fc1"
    assert "fc1" in str(err.value)


def test_explicit_values_are_used_and_cast() -> None:
    """Explicit values land unchanged (cast to the network dtype)."""
    W = np.arange(12.0).reshape(3, 4)
    net = Sequential([Dense(3, init={"W": Explicit(W)}, name="fc")], (4,)).build(
        np.random.default_rng(0), np.float32
    )
    got = net.layer("fc").params["W"]
    assert got.dtype == F32
    np.testing.assert_array_equal(got, W)


def weights_of(seed: int) -> list[np.ndarray]:
    """Every parameter of the every-layer network built from ``default_rng(seed)`` in float64."""
    net = every_layer_net()
    net.build(np.random.default_rng(seed), np.float64)
    return [v.copy() for g in net.parameters().values() for v in g.values()]


def test_same_seed_same_weights() -> None:
    """The same seed gives bit-identical weights; another seed gives different ones."""
    a, b, c = weights_of(42), weights_of(42), weights_of(43)
    assert len(a) == len(b) == len(c) > 0
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, w) for u, w in zip(a, c, strict=True))
