"""The gradient checker on networks with a batchnorm (samples coupled: whole batches perturbed, the batch's
summed loss differenced) and with a dropout (the identity in the checker's ``probe`` phase)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cnnbp.core import Conv2D, Dense, Flatten, Layer, Sequential, SoftmaxCrossEntropy
from cnnbp.core.gradcheck import FAIL, PASS, GradcheckResult, gradcheck
from cnnbp.core.layers import BatchNorm, Dropout, MeanPool, Sigmoid, Tanh
from cnnbp.core.layers.batchnorm import BatchNorm as BatchNormClass

#: name → (layers, per-sample input shape)
NETS: dict[str, tuple[Callable[[], list[Layer]], tuple[int, ...]]] = {
    "image": (lambda: [Conv2D(3, (2, 3), name="conv"), BatchNorm(name="bn"), Tanh(name="act"),
                       Flatten(name="flat"), Dense(4, name="fc")], (2, 5, 6)),
    "image_pool": (lambda: [Conv2D(2, 2, padding=1, name="conv"), BatchNorm(momentum=0.5, name="bn"),
                            Tanh(name="act"), MeanPool((2, 3), stride=1, name="pool"), Flatten(name="flat"),
                            Dense(3, name="fc")], (1, 4, 7)),
    "image_first": (lambda: [BatchNorm(eps=1e-3, name="bn"), Conv2D(2, (3, 2), name="conv"),
                             Sigmoid(name="act"), Flatten(name="flat"), Dense(3, name="fc")], (2, 4, 5)),
    "vector": (lambda: [Dense(5, name="hidden"), BatchNorm(name="bn"), Sigmoid(name="act"),
                        Dense(3, name="fc")], (4,)),
    "vector_two": (lambda: [Dense(5, name="hidden"), BatchNorm(name="bn"), Tanh(name="act"),
                            Dense(4, name="mid"), BatchNorm(name="bn2"), Dense(3, name="fc")], (6,)),
}  # fmt: skip
#: the layers whose rows a batchnorm backward without its mean term must fail (besides "input")
BEFORE_BN = {"image": {"conv"}, "image_pool": {"conv"}, "image_first": set(), "vector": {"hidden"},
             "vector_two": {"hidden", "bn", "act", "mid"}}  # fmt: skip


def network(name: str, dtype: type = np.float64, seed: int = 0) -> Sequential:
    """``NETS[name]`` built with random parameters (γ away from 0, β random)."""
    layers, shape = NETS[name]
    net = Sequential(layers(), shape).build(np.random.default_rng(seed), dtype)
    rng = np.random.default_rng(seed + 1)
    for layer in net.layers:
        for key, value in layer.params.items():
            value[...] = (
                rng.uniform(0.5, 1.5, value.shape) if key == "gamma" else rng.uniform(-1, 1, value.shape)
            )
    return net


def data(net: Sequential, m: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.5, 1.5, (m, *net.input_shape)), rng.integers(0, net.output_shape[0], m)


def assert_all_pass_every_element(result: GradcheckResult) -> None:
    bad = [(r.layer, r.tensor, r.status, r.max_rel_error) for r in result.rows if r.status != PASS]
    assert result.passed and not bad, bad
    assert all(r.checked == r.total for r in result.rows)


@pytest.mark.parametrize("method", ["central", "complex"])
@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("name", sorted(NETS))
def test_batchnorm_networks_pass_with_every_element_checked(name: str, m: int, method: str) -> None:
    net = network(name)
    x, y = data(net, m)
    running = {l: {k: v.copy() for k, v in g.items()} for l, g in net.state().items()}
    result = gradcheck(net, SoftmaxCrossEntropy(), x, y, method=method)
    assert_all_pass_every_element(result)
    assert {r.layer for r in result.rows if r.tensor == "delta"} == {l.name for l in net.layers}
    for lname, group in running.items():  # the checker runs in probe: nothing updated
        for key, value in group.items():
            np.testing.assert_array_equal(net.layer(lname).state[key], value)
    assert all(layer.phase == "train" for layer in net.layers)


def test_float32_batchnorm_network_is_checked_on_a_float64_copy() -> None:
    net = network("image", np.float32)
    x, y = data(net, 3)
    result = gradcheck(net, SoftmaxCrossEntropy(), x, y)
    assert result.cast_from == "float32"
    assert_all_pass_every_element(result)


def _without_mean_term(original: Callable) -> Callable:
    """BatchNorm.backward with the ``− mean(∂L/∂y)`` term of the coupled formula dropped."""

    def backward(self: BatchNormClass, dy: np.ndarray) -> np.ndarray:
        dx = original(self, dy)
        axes, shape = self._layout(dy)
        n = dy.size // dy.shape[1]
        return dx + ((self.params["gamma"] * self._inv) * (dy.sum(axis=axes) / n)).reshape(shape)

    return backward


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("name", sorted(NETS))
def test_a_batchnorm_backward_without_its_mean_term_fails_the_rows_below_it(
    name: str, m: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything computed from the batchnorm's ∂L/∂x FAILs (the input, and the deltas and parameters of
    the layers before it); the batchnorm's own γ, β and delta and every later row still PASS."""
    net = network(name)
    x, y = data(net, m)
    monkeypatch.setattr(BatchNormClass, "backward", _without_mean_term(BatchNormClass.backward))
    result = gradcheck(net, SoftmaxCrossEntropy(), x, y)
    failed = {(r.layer, r.tensor) for r in result.rows if r.status == FAIL}
    # the bias of a layer before a batchnorm cancels in its mean (gradient 0): the error shows there too
    expected = {("input", "input")} | {(r.layer, r.tensor) for r in result.rows if r.layer in BEFORE_BN[name]}
    assert failed == expected, sorted(failed ^ expected)
    assert not result.passed


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize(
    "layers, shape",
    [
        (lambda: [Conv2D(2, (2, 3), name="conv"), Dropout(0.5, name="drop"), Tanh(name="act"),
                  Flatten(name="flat"), Dense(3, name="fc")], (1, 4, 6)),
        (lambda: [Dense(6, name="hidden"), Sigmoid(name="act"), Dropout(0.3, name="drop"),
                  Dense(3, name="fc")], (5,)),
        (lambda: [Conv2D(2, 2, name="conv"), BatchNorm(name="bn"), Dropout(0.2, name="drop"),
                  Tanh(name="act"), Flatten(name="flat"), Dense(3, name="fc")], (2, 4, 5)),
    ],
    ids=["image", "vector", "with_batchnorm"],
)  # fmt: skip
def test_dropout_networks_pass_as_the_identity_in_probe(layers: Callable, shape: tuple, m: int) -> None:
    net = Sequential(layers(), shape).build(np.random.default_rng(0), np.float64)
    if m == 1 and net.couples_batch:
        m = 2
    net.set_rng(np.random.default_rng(4))
    x, y = data(net, m)
    result = gradcheck(net, SoftmaxCrossEntropy(), x, y, method="auto")
    assert result.method == "complex"
    assert_all_pass_every_element(result)
    drop = net.layer("drop")
    delta_after = next(r for r in result.rows if r.layer == "drop" and r.tensor == "delta").detail
    delta_before = next(r for r in result.rows if r.layer == net.layers[net.layers.index(drop) - 1].name
                        and r.tensor == "delta").detail  # fmt: skip
    np.testing.assert_array_equal(delta_after.analytic, delta_before.analytic)  # the identity passes δ on
    assert drop.phase == "train"
