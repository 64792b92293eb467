"""Dropout (``core/layers/dropout.py``): inverted dropout in ``train`` (masks from ``self.rng``), the
identity in ``probe`` and ``eval``."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.errors import ShapeError
from cnnbp.core.layers import Conv2D, Dense, Dropout, Flatten
from cnnbp.core.network import Sequential
from tests.core.conftest import ACTIVATION_SHAPES, assert_backward_before_forward_raises
from tests.fd import assert_fd_close, fd_gradient

SHAPES = [*ACTIVATION_SHAPES, (4, 2, 3, 7)]


def train_layer(rate: float, seed: int | None = 5) -> Dropout:
    layer = Dropout(rate)
    layer.rng = None if seed is None else np.random.default_rng(seed)
    return layer


def test_the_same_rng_gives_the_same_mask_and_a_new_one_another() -> None:
    x = np.ones((3, 4, 5, 6))
    a, b = train_layer(0.4, seed=11), train_layer(0.4, seed=11)
    ya, yb = a.forward(x), b.forward(x)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(train_layer(0.4, seed=12).forward(x), ya)
    assert not np.array_equal(a.forward(x), ya)  # the generator moved on


def test_without_an_rng_the_layer_draws_from_its_own_generator_seeded_with_0() -> None:
    x = np.ones((4, 50))
    a, b = Dropout(0.5), Dropout(0.5)
    first = a.forward(x)
    np.testing.assert_array_equal(b.forward(x), first)  # both start from seed 0
    second = a.forward(x)
    assert not np.array_equal(second, first)  # seeded once, not at every call
    np.testing.assert_array_equal(b.forward(x), second)
    expected = np.random.default_rng(0).random(x.shape) < 0.5
    np.testing.assert_array_equal(first != 0, expected)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_the_dropped_fraction_is_the_rate(rate: float) -> None:
    """Over 2·10⁵ values the dropped fraction is within 5 standard deviations of ``rate``."""
    layer = train_layer(rate, seed=3)
    y = layer.forward(np.ones((400, 500)))
    n = y.size
    dropped = float(np.mean(y == 0))
    assert abs(dropped - rate) <= 5 * np.sqrt(rate * (1 - rate) / n), dropped


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.75])
def test_kept_values_are_scaled_by_one_over_keep_probability(rate: float, rng: np.random.Generator) -> None:
    x = rng.uniform(0.5, 2.0, size=(6, 3, 4, 5))
    layer = train_layer(rate)
    y = layer.forward(x)
    keep = layer.mask
    assert keep.shape == x.shape and keep.dtype == bool
    np.testing.assert_array_equal(y[~keep], 0.0)
    np.testing.assert_allclose(y[keep], x[keep] / (1 - rate), rtol=1e-15)
    big = train_layer(rate, seed=9).forward(np.ones((500, 400)))
    assert abs(big.mean() - 1.0) < 0.02  # inverted: the expected output is the input


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_uses_the_forward_mask(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    layer = train_layer(0.3)
    layer.forward(rng.standard_normal(shape))
    dy = rng.standard_normal(shape)
    dy_copy = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx[~layer.mask], 0.0)
    np.testing.assert_allclose(dx, dy * layer.mask / 0.7, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(dy, dy_copy)


@pytest.mark.parametrize("rate", [0.25, 0.6])
@pytest.mark.parametrize("shape", SHAPES)
def test_train_forward_matches_finite_differences_with_a_fixed_mask(
    rate: float, shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    """L = Σ dout ⊙ y with the mask held fixed (the generator reset before every forward)."""
    layer = Dropout(rate)

    def out() -> np.ndarray:
        layer.rng = np.random.default_rng(17)
        return layer.forward(x)

    x = rng.standard_normal(shape)
    y = out()
    assert 0 < np.count_nonzero(y) < y.size or y.size < 8
    dout = rng.standard_normal(shape)
    dx = layer.backward(dout)
    assert_fd_close(f"dropout train rate={rate}", dx, fd_gradient(out, x, dout))


@pytest.mark.parametrize("phase", ["probe", "eval"])
@pytest.mark.parametrize("shape", SHAPES)
def test_probe_and_eval_are_the_identity(
    phase: str, shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    layer = train_layer(0.5)
    layer.phase = phase
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(dy), dy)
    assert layer.mask is None
    assert layer.rng.bit_generator.state == np.random.default_rng(5).bit_generator.state  # nothing drawn


def test_rate_zero_keeps_everything(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 7))
    np.testing.assert_array_equal(train_layer(0.0).forward(x), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype: type, rng: np.random.Generator) -> None:
    layer = train_layer(0.5)
    x = rng.standard_normal((4, 6)).astype(dtype)
    assert layer.forward(x).dtype == dtype and layer.backward(np.ones_like(x)).dtype == dtype


def test_float32_and_float64_drop_the_same_values(rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 9))
    a, b = train_layer(0.5), train_layer(0.5)
    a.forward(x)
    b.forward(x.astype(np.float32))
    np.testing.assert_array_equal(a.mask, b.mask)


def test_results_survive_later_calls(rng: np.random.Generator) -> None:
    """A later forward/backward never writes into an earlier output, ∂L/∂x, x or dy."""
    layer = train_layer(0.5)
    x1, d1 = rng.standard_normal((3, 2, 7, 6)), rng.standard_normal((3, 2, 7, 6))
    x1c, d1c = x1.copy(), d1.copy()
    y1 = layer.forward(x1)
    dx1 = layer.backward(d1)
    y1c, dx1c = y1.copy(), dx1.copy()
    layer.forward(rng.standard_normal(x1.shape))
    layer.backward(rng.standard_normal(x1.shape))
    for a, b in ((x1, x1c), (d1, d1c), (y1, y1c), (dx1, dx1c)):
        np.testing.assert_array_equal(a, b)


def test_backward_before_forward() -> None:
    assert_backward_before_forward_raises(Dropout(name="drop"), (5,))


def test_class_facts_and_hyper_round_trip() -> None:
    layer = Dropout()
    assert (layer.kind, layer.stochastic, layer.couples_batch, layer.elementwise, layer.analytic) == (
        "dropout", True, False, False, True,
    )  # fmt: skip
    assert layer.param_names == () and layer.param_shapes((3, 4, 5)) == {}
    assert layer.output_shape((3, 4, 5)) == (3, 4, 5) and layer.window() == ((1, 1), (1, 1), (0, 0))
    assert layer.hyper() == {"rate": 0.5}
    again = Dropout.from_hyper(Dropout(0.3).hyper(), name="d")
    assert (again.rate, again.name, again.hyper()) == (0.3, "d", {"rate": 0.3})


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, True, "0.5", float("nan")])
def test_rate_must_be_in_0_1(rate: object) -> None:
    with pytest.raises(ShapeError) as info:
        Dropout(rate, name="drop")  # type: ignore[arg-type]
    assert (info.value.layer, info.value.key) == ("drop", "rate")
    assert info.value.detail == f"expected a number in [0, 1), got {rate!r}"


def test_sequential_set_rng_reaches_the_layer_and_phases_switch() -> None:
    net = Sequential([Flatten(name="f"), Dropout(0.5, name="d"), Dense(3, name="fc")], (2, 3, 4))
    net.build(np.random.default_rng(0), np.float64)
    x = np.ones((4, 2, 3, 4))
    net.set_rng(np.random.default_rng(1))
    with net.in_phase("train"):
        a = net.forward(x)
    net.set_rng(np.random.default_rng(1))
    with net.in_phase("train"):
        np.testing.assert_array_equal(net.forward(x), a)
    with net.in_phase("eval"):
        plain = net.forward(x)
    np.testing.assert_allclose(plain, x.reshape(4, -1) @ net.layer("fc").params["W"].T, rtol=1e-14)
    assert net.stochastic and not net.couples_batch


def test_onnx_is_the_identity_and_torch_a_dropout_module() -> None:
    net = Sequential([Conv2D(2, 2, name="c"), Dropout(0.4, name="d"), Flatten(name="f")], (1, 4, 5))
    net.build(np.random.default_rng(0), np.float32)
    info = net.summary()[1]
    torch = pytest.importorskip("torch")
    from cnnbp.torch_mirror import TorchKit

    module, params = net.layers[1].to_torch(TorchKit(torch), info)
    assert isinstance(module, torch.nn.Dropout) and module.p == 0.4 and params == {}
    pytest.importorskip("onnxruntime")
    from cnnbp.onnx_graph import to_onnx, verify_onnx

    model = to_onnx(net, "mse")
    assert [n.op_type for n in model.graph.node if n.name == "d"] == ["Identity"]
    x = np.random.default_rng(1).standard_normal((3, 1, 4, 5)).astype(np.float32)
    assert verify_onnx(model, net, x) <= 1e-6
