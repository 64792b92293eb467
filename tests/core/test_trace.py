"""``cnnbp.core.trace``: every step of the derivation of one sample is exact.

For every step of several networks (dense, conv with stride and padding and both biases, max / mean / Lp
pooling, subsampling, batchnorm and dropout, every activation, softmax cross-entropy with hard and soft
targets and MSE, and a layer only the generic tracer knows), two things hold in float64:

* its value is the sum over its terms of the product of their factors, to 1e-12 relative to the size of
  those products (Σ|Π|, which is what rounding is relative to when terms cancel);
* its value is the engine's number, read here through the engine's own API: each layer's output of a
  forward pass, the per-sample deltas the network's ``record`` hook sees during ``gradients``, the
  parameter gradients, the input gradient ``backward`` returns, the loss, and the weights an ``SGD``
  step leaves.

The seeds' worked examples (their term-by-term sums, from the notes) are tested on configs in
``tests/cli/test_tracing.py`` and through the command line in ``tests/cli/commands/test_trace.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cnnbp.core import formula as fm
from cnnbp.core.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Identity,
    Layer,
    LeakyReLU,
    LpPool,
    MaxPool,
    MeanPool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)
from cnnbp.core.losses import MSE, Loss, SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.trace import MAX_MAPS, Trace, trace
from tests.conftest import CASES as KIND_CASES
from tests.conftest import inputs, network
from tests.core.conftest import check_exact, engine_numbers


class Mix(Layer):
    """A layer no tracer knows (like a plugin): y = tanh(A x) on feature vectors."""

    kind = "mix_for_tests"
    param_names = ("A",)

    def param_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"A": (input_shape[0], input_shape[0])}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x, self._y = x, np.tanh(x @ self.params["A"].T)
        return self._y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        g = dy * (1.0 - self._y**2)
        self.grads["A"] = g.T @ self._x
        return g @ self.params["A"]


# ---- the engine's numbers, read independently of the trace ------------------------------------------






def traced(net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, lr: float = 0.1, **kw) -> Trace:
    t = trace(net, loss, x, y, lr, **kw)
    check_exact(t.steps, engine_numbers(net, loss, x, y, lr))
    return t


# ---- networks ------------------------------------------------------------------------------------------


def built(layers: list[Layer], shape: tuple[int, ...], seed: int = 0) -> Sequential:
    return Sequential(layers, shape).build(np.random.default_rng(seed), np.float64)


def conv_net() -> Sequential:
    """Stride, padding, untied and tied biases, tanh and relu, flatten, dense."""
    return built([
        Conv2D(2, (3, 2), stride=(2, 1), padding=(1, 0), bias="untied", name="conv1"),
        Tanh(name="conv1.tanh"), Conv2D(3, 2, padding=1, name="conv2"), ReLU(name="conv2.relu"),
        Flatten(name="flat"), Dense(2, name="out"),
    ], (1, 5, 5))  # fmt: skip


def pool_net() -> Sequential:
    """Overlapping max, mean over a non-square window, Lp with p = 3."""
    return built([
        MaxPool(3, 1, name="max"), MeanPool((2, 3), (1, 1), name="mean"), LpPool(2, 1, p=3.0, name="lp"),
        Flatten(name="flat"), Dense(3, name="out"),
    ], (1, 6, 6))  # fmt: skip


def subsample_net() -> Sequential:
    return built([
        Conv2D(2, 3, name="conv1"), Sigmoid(name="conv1.sigmoid"), Subsample(2, name="sub"),
        Sigmoid(name="sub.sigmoid"), Flatten(name="flat"), Dense(2, name="out"), Sigmoid(name="out.sigmoid"),
    ], (1, 7, 6))  # fmt: skip


def regulariser_net() -> Sequential:
    net = built([
        Conv2D(3, 2, name="conv1"), BatchNorm(name="bn2"), ReLU(name="bn2.relu"), Flatten(name="flat"),
        Dense(6, name="d4"), BatchNorm(momentum=0.2, name="bn5"), Tanh(name="tanh6"),
        Dropout(0.25, name="drop"), Dense(2, name="out"),
    ], (1, 4, 4))  # fmt: skip
    rng = np.random.default_rng(3)
    for layer in net.layers:  # running statistics and affine parameters away from their defaults
        if isinstance(layer, BatchNorm):
            c = layer.state["running_mean"].shape[0]
            layer.state["running_mean"][...] = rng.uniform(-0.3, 0.3, c)
            layer.state["running_var"][...] = rng.uniform(0.5, 2.0, c)
            layer.params["gamma"][...] = rng.uniform(0.5, 1.5, c)
            layer.params["beta"][...] = rng.uniform(-0.2, 0.2, c)
    return net


def activation_net() -> Sequential:
    return built([
        Dense(5, name="d1"), LeakyReLU(0.1, name="leaky"), Dense(4, name="d2"), Identity(name="id"),
        Dense(3, name="d3"), Sigmoid(name="sig"), Dense(3, name="d4"),
    ], (4,))  # fmt: skip


def mix_net() -> Sequential:
    return built([Dense(3, name="d1"), Mix(name="mix"), Dense(2, name="out")], (4,))


def sample(net: Sequential, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, net.input_shape)


CASES: dict[str, tuple[Callable[[], Sequential], Loss, object]] = {
    "conv, softmax-CE": (conv_net, SoftmaxCrossEntropy(), np.int64(1)),
    "pools, MSE one-hot": (pool_net, MSE(), np.int64(2)),
    "subsample, MSE vector": (subsample_net, MSE(), np.array([0.2, 0.9])),
    "batchnorm and dropout": (regulariser_net, SoftmaxCrossEntropy(), np.int64(0)),
    "activations, soft targets": (activation_net, SoftmaxCrossEntropy(), np.array([0.2, 0.3, 0.1])),
    "generic layer": (mix_net, MSE(), np.array([0.5, -0.5])),
}


@pytest.mark.parametrize("case", CASES)
def test_every_step_is_exact_and_is_the_engines_number(case: str) -> None:
    make, loss, y = CASES[case]
    net = make()
    t = traced(net, loss, sample(net), y, lr=0.3)
    tensors = {s.tensor for s in t.steps}
    assert {"loss", "delta", "input_grad"} <= tensors
    assert any(x.startswith("grad:") for x in tensors) and any(x.startswith("update:") for x in tensors)
    layers = {s.layer for s in t.steps}
    assert {layer.name for layer in net.layers} <= layers  # every layer has steps


@pytest.mark.parametrize("case", ["conv, softmax-CE", "pools, MSE one-hot", "subsample, MSE vector"])
def test_the_generic_tracer_is_exact_on_every_kind(case: str) -> None:
    """The fallback for layers without a tracer: forward values as single terms, backward as the
    vector-Jacobian product with the Jacobian read off the layer's own backward."""
    make, loss, y = CASES[case]
    net = make()
    t = traced(net, loss, sample(net), y, generic=True)
    conv_grads = [s for s in t.steps if s.tensor.startswith("grad:")]
    assert conv_grads and all(all(len(term) == 2 for term in s.terms) for s in conv_grads)  # δ_k · ∂z_k/∂θ


def test_the_generic_tracer_names_the_jacobian_entries() -> None:
    net = mix_net()
    t = traced(net, MSE(), sample(net), np.array([0.5, -0.5]))
    dx = [s for s in t.steps if s.via == "mix" and s.tensor == "delta"]
    assert dx and "∂E/∂X" not in dx[0].formula  # the dense layer's input, named by the mix layer's rule
    assert "∂z₁/∂" in dx[0].formula and len(dx[0].terms) == 3  # Σ over the 3 outputs k of δ_k ∂z_k/∂x_i


def test_a_float32_network_is_refused() -> None:
    net = Sequential([Dense(2)], (2,)).build(np.random.default_rng(0), np.float32)
    with pytest.raises(ValueError, match="float64"):
        trace(net, MSE(), np.zeros(2), np.zeros(2), 0.1)


# ---- the seed's 2-2-2 naming ------------------------------------------------------------------------


def mazur_net() -> Sequential:
    net = built([Dense(2, name="hidden"), Sigmoid(name="hidden.sigmoid"), Dense(2, name="output"),
                 Sigmoid(name="output.sigmoid")], (2,))  # fmt: skip
    net.set_parameters({
        "hidden": {"W": np.array([[0.15, 0.20], [0.25, 0.30]]), "b": np.array([0.35, 0.35])},
        "output": {"W": np.array([[0.40, 0.45], [0.50, 0.55]]), "b": np.array([0.60, 0.60])},
    })  # fmt: skip
    return net


def test_the_seeds_2_2_2_network_is_named_as_the_seed_names_it() -> None:
    net = mazur_net()
    t = traced(net, MSE(), np.array([0.05, 0.10]), np.array([0.01, 0.99]), lr=0.5)
    assert t.notes_naming
    formulas = [s.formula for s in t.steps]
    assert "net_h1 = w₁i₁ + w₂i₂ + b_h1" in formulas
    assert "out_h1 = σ(net_h1) = 1/(1 + e^(−net_h1))" in formulas
    assert "∂E/∂w₅ = ∂E/∂out_o1 · ∂out_o1/∂net_o1 · ∂net_o1/∂w₅" in formulas  # the seed's three factors
    assert "∂E/∂out_h1 = δ_o1 · w₅ + δ_o2 · w₇" in formulas  # seed 000 §2.2
    assert "∂E/∂w₁ = ∂E/∂out_h1 · ∂out_h1/∂net_h1 · ∂net_h1/∂w₁" in formulas
    assert "w₅⁺ = w₅ − α · ∂E/∂w₅" in formulas
    w5 = next(s for s in t.steps if s.formula.startswith("∂E/∂w₅"))
    assert len(w5.terms) == 1 and len(w5.terms[0]) == 3


def test_other_dense_networks_use_the_local_names() -> None:
    net = activation_net()  # four dense layers: no seed naming
    t = trace(net, SoftmaxCrossEntropy(), sample(net), np.int64(0), 0.1)
    assert not t.notes_naming
    assert any(s.formula.startswith("z₁ = W₁₁x₁ + W₁₂x₂") for s in t.steps)


# ---- which elements are written out -------------------------------------------------------------------


def wide_net(filters: int) -> Sequential:
    return built([Conv2D(filters, 3, padding=1, name="conv"), ReLU(name="relu"), Flatten(name="flat"),
                  Dense(10, name="out")], (1, 8, 8))  # fmt: skip


def test_a_large_tensor_shows_the_largest_delta_of_each_map_and_a_summary() -> None:
    net = wide_net(5)
    x = sample(net)
    t = traced(net, SoftmaxCrossEntropy(), x, np.int64(3))
    delta = engine_numbers(net, SoftmaxCrossEntropy(), x, np.int64(3), 0.1)[("conv", "delta")]
    z = [s for s in t.steps if (s.layer, s.tensor) == ("conv", "z")]
    # per map (filter) the element of largest |δ|, found here with NumPy
    expected = [(c, *np.unravel_index(np.argmax(np.abs(delta[c])), delta[c].shape)) for c in range(5)]
    assert [s.index for s in z] == [tuple(int(i) for i in e) for e in expected]
    summary = next(m for m in t.summaries if (m.layer, m.tensor) == ("conv", "z"))
    assert summary.shape == (5, 8, 8) and summary.shown == 5 and summary.total == 320
    conv_z = engine_numbers(net, SoftmaxCrossEntropy(), x, np.int64(3), 0.1)[("conv", "z")]
    assert summary.norm == pytest.approx(float(np.linalg.norm(conv_z)), rel=1e-12)
    # a vector of 10 (more than 8 units) shows one element: its bias gradient of largest size
    out_b = [s for s in t.steps if (s.layer, s.tensor) == ("out", "grad:b")]
    grad_b = engine_numbers(net, SoftmaxCrossEntropy(), x, np.int64(3), 0.1)[("out", "grad:b")]
    assert [s.index for s in out_b] == [(int(np.argmax(np.abs(grad_b))),)]


def test_at_most_max_maps_maps_are_shown_those_with_the_largest_delta() -> None:
    net = wide_net(MAX_MAPS + 4)
    x = sample(net)
    t = trace(net, SoftmaxCrossEntropy(), x, np.int64(3), 0.1)
    delta = engine_numbers(net, SoftmaxCrossEntropy(), x, np.int64(3), 0.1)[("conv", "delta")]
    top = sorted(np.argsort(-np.abs(delta).reshape(len(delta), -1).max(axis=1), kind="stable")[:MAX_MAPS])
    shown = [s.index[0] for s in t.steps if (s.layer, s.tensor) == ("conv", "delta")]
    assert shown == [int(c) for c in top]


def test_at_names_the_elements_and_layers_keeps_some_layers() -> None:
    net = wide_net(5)
    x = sample(net)
    at = {("conv", None): [(0, 0, 0), (4, 7, 7)], ("conv", "W"): [(1, 0, 2, 2)], ("input", None): [(0, 3, 4)]}
    t = traced(net, SoftmaxCrossEntropy(), x, np.int64(3), at=at, layers=["conv", "input"])
    # conv's tensors, what conv's rule gives (the input gradient) and the loss block (with out's δ)
    assert {s.layer for s in t.steps} == {"conv", "input", "loss", "out"}
    assert {s.via for s in t.steps} == {"conv", "relu", "loss"}
    assert [s.index for s in t.steps if s.tensor == "z"] == [(0, 0, 0), (4, 7, 7)]
    assert [s.index for s in t.steps if s.tensor == "delta" and s.layer == "conv"] == [(0, 0, 0), (4, 7, 7)]
    assert [s.index for s in t.steps if s.tensor in ("grad:W", "update:W")] == [(1, 0, 2, 2)] * 2
    assert [s.index for s in t.steps if s.tensor == "input_grad"] == [(0, 3, 4)]
    assert {b.via for b in t.blocks} >= {"conv", "relu", "loss"}  # relu's rule gives conv's δ


def test_a_small_network_is_written_out_whole() -> None:
    net = mazur_net()
    t = trace(net, MSE(), np.array([0.05, 0.10]), np.array([0.01, 0.99]), 0.5)
    assert not t.summaries
    assert len([s for s in t.steps if s.tensor == "grad:W"]) == 8  # ∂E/∂w₁ … ∂E/∂w₈


def test_the_numbers_as_written_are_the_terms_unless_a_rule_writes_them_otherwise() -> None:
    net = pool_net()
    t = trace(net, MSE(), sample(net), np.int64(0), 0.1)
    max_step = next(s for s in t.steps if s.layer == "max" and s.tensor == "z")
    assert fm.text(max_step.numbers).startswith("max(")  # the window, not the single term
    mask = next(s for s in t.steps if s.via == "max" and s.tensor == "input_grad")
    assert all(term[1] in (0.0, 1.0) for term in mask.terms)  # δ_k · M_k, the routing mask


# ---- every registered kind --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "hyper"), KIND_CASES, ids=[f"{k}-{i}" for k, i in KIND_CASES])
def test_every_registered_kind_traces_exactly(kind: str, hyper: dict) -> None:
    """Each kind of the registry (with its own tracer, or the generic one) between an input and a dense
    head: every step exact and the engine's."""
    net = network(kind, hyper)
    x, y = inputs(net, 1)
    t = traced(net, SoftmaxCrossEntropy(), x[0], y[0])
    assert any(s.via == "under_test" for s in t.steps)
