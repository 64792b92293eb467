"""Float32 end to end (no float64 anywhere), and the parameter initialisers."""

from __future__ import annotations

import numpy as np
import pytest
from cnnbp.core import LOSSES, SGD, Sequential, ShapeError
from cnnbp.core.init import Explicit, GlorotUniform, HeNormal
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

F32 = np.dtype(np.float32)


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


def make_target(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Index (int64), one-hot (float64) or soft (float64) targets for a batch of 4, 5 classes."""
    idx = rng.integers(0, 5, size=4)
    if kind == "index":
        return idx
    if kind == "onehot":
        return np.eye(5)[idx]
    w = rng.uniform(0.1, 1.0, size=(4, 5))
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("target_kind", ["index", "onehot", "soft"])
@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy"])
def test_float32_network_stays_float32(loss_name: str, target_kind: str) -> None:
    """Outputs, per-layer activations, losses, deltas, grads, params and optimiser state are float32."""
    rng = np.random.default_rng(0)
    net = every_layer_net()
    x = rng.standard_normal((4, 2, 14, 15)).astype(np.float32)
    target = make_target(target_kind, rng)
    loss = LOSSES[loss_name]()

    for group in net.parameters().values():
        for v in group.values():
            assert v.dtype == F32
    a = x
    for layer in net.layers:
        a = layer.forward(a)
        assert a.dtype == F32, f"{layer.name} forward gave {a.dtype}"
    assert loss.forward(a, target).dtype == F32
    assert loss.backward().dtype == F32

    recorded: dict[str, np.ndarray] = {}
    value = net.gradients(x, target, loss, record=lambda n, d: recorded.__setitem__(n, d))
    assert np.isfinite(value)
    assert set(recorded) == {layer.name for layer in net.layers}
    for name, d in recorded.items():
        assert d.dtype == F32, f"delta at {name} is {d.dtype}"
    assert net.backward(loss.backward()).dtype == F32  # ∂L/∂input
    assert set(net.grads()) == {"c1", "c2", "sub", "fc"}

    opt = SGD(lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        net.gradients(x, target, loss)
        for lname, group in net.grads().items():
            for k, g in group.items():
                assert g.dtype == F32, f"grad {lname}.{k} is {g.dtype}"
        opt.step(net.parameters(), net.grads())
        for lname, group in net.parameters().items():
            for k, v in group.items():
                assert v.dtype == F32, f"param {lname}.{k} is {v.dtype} after a step"
        for lname, group in opt.state.items():
            for k, v in group.items():
                assert v.dtype == F32, f"momentum {lname}.{k} is {v.dtype}"
    assert net.forward(x).dtype == F32


def test_plain_sgd_keeps_float32() -> None:
    """Without momentum or weight decay the step stays float32 too."""
    net = every_layer_net()
    x = np.random.default_rng(1).standard_normal((2, 2, 14, 15)).astype(np.float32)
    net.gradients(x, np.array([0, 3]), LOSSES["softmax_cross_entropy"]())
    SGD(lr=0.05).step(net.parameters(), net.grads())
    assert all(v.dtype == F32 for g in net.parameters().values() for v in g.values())


# ---------------------------------------------------------------------------------------------
# initialisers
# ---------------------------------------------------------------------------------------------
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
