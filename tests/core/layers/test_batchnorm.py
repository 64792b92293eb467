"""BatchNorm (``core/layers/batchnorm.py``): batch statistics in ``train``/``probe`` (coupled backward,
SPEC §6), running statistics in ``eval``, the running estimates updated in ``train`` only; PyTorch's
semantics."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from cnnbp.core.errors import ShapeError
from cnnbp.core.layers import BatchNorm, Conv2D, Dense, Flatten, ReLU
from cnnbp.core.losses import SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from tests.core.conftest import (
    assert_backward_before_forward_raises,
    assert_hyper_error,
    build,
    check_results_survive_later_calls,
)
from tests.fd import check_layer

#: (per-sample shape, batch size): non-square images and vectors, several batch sizes
CASES = [((3, 4, 5), 2), ((2, 3, 7), 3), ((1, 5, 2), 4), ((6,), 2), ((4,), 3), ((7,), 5)]
TORCH_TOL = 1e-10


def case_id(case: tuple) -> str:
    shape, n = case
    return f"{'x'.join(map(str, shape))}_n{n}"


def made(shape: tuple[int, ...], rng: np.random.Generator, **hyper: float) -> BatchNorm:
    """A float64 batchnorm for ``shape`` with random γ, β and running statistics (variance in [0.5, 2])."""
    layer = build(BatchNorm(**hyper), shape, rng)
    layer.state["running_mean"][...] = rng.standard_normal(shape[0])
    layer.state["running_var"][...] = rng.uniform(0.5, 2.0, shape[0])
    return layer


def batch(shape: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """Inputs with a per-channel offset and scale, so that the statistics are far from 0 and 1.

    Two values per channel (two vectors) normalise to ±1 up to ε: y is then a step of width √ε in
    x₁ − x₂, and the five-point stencil's error (≈ 12·(h / ½|x₁ − x₂|)⁴ relative) needs the pair well
    apart — the two values are drawn ½|x₁ − x₂| ∈ [1, 2] either side of an offset in [−½, ½].
    """
    per_channel = (1, shape[0]) + (1,) * (len(shape) - 1)
    if n * int(np.prod(shape[1:])) == 2:
        half = rng.uniform(1, 2, per_channel) * rng.choice([-1.0, 1.0], per_channel)
        return rng.uniform(-0.5, 0.5, per_channel) + np.concatenate([half, -half])
    offset = rng.uniform(-2, 2, per_channel)
    scale = rng.uniform(0.5, 3, per_channel)
    return offset + scale * rng.standard_normal((n, *shape))


def axes(x: np.ndarray) -> tuple[int, ...]:
    return (0, 2, 3) if x.ndim == 4 else (0,)


# ---- finite differences -------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["train", "probe"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_batch_statistics_backward_matches_finite_differences(
    case: tuple, phase: str, rng: np.random.Generator
) -> None:
    """∂L/∂x, ∂L/∂γ, ∂L/∂β for L = Σ dout ⊙ y over the whole batch (the samples are coupled).

    With two values per channel ∂L/∂x is O(ε) (the outputs are ±1 but for ε), below what a difference
    quotient resolves at ε = 1e-5; that case is checked at ε = 0.5, where it is O(1).
    """
    shape, n = case
    pair = n * int(np.prod(shape[1:])) == 2
    layer = made(shape, rng, eps=0.5 if pair else 1e-5)
    layer.phase = phase
    check_layer(
        f"batchnorm {phase} {'image' if len(shape) == 3 else 'vector'}", layer, batch(shape, n, rng), rng
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_eval_backward_matches_finite_differences(case: tuple, rng: np.random.Generator) -> None:
    shape, n = case
    layer = made(shape, rng, eps=1e-3)
    layer.phase = "eval"
    check_layer(
        f"batchnorm eval {'image' if len(shape) == 3 else 'vector'}", layer, batch(shape, n, rng), rng
    )


# ---- the forward pass and the running statistics ---------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_train_normalises_with_the_batch_and_updates_the_running_estimates(
    case: tuple, rng: np.random.Generator
) -> None:
    shape, n = case
    layer = made(shape, rng, momentum=0.3)
    rm0, rv0 = layer.state["running_mean"].copy(), layer.state["running_var"].copy()
    x = batch(shape, n, rng)
    y = layer.forward(x)
    ax = axes(x)
    count = x.size // x.shape[1]
    mean, var = x.mean(axis=ax), x.var(axis=ax)  # biased, to normalise
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-5)
    expected = layer.params["gamma"].reshape(bshape) * xhat + layer.params["beta"].reshape(bshape)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(layer.state["running_mean"], 0.7 * rm0 + 0.3 * mean, rtol=1e-14)
    unbiased = x.var(axis=ax, ddof=1)
    np.testing.assert_allclose(unbiased, var * count / (count - 1), rtol=1e-13)
    np.testing.assert_allclose(layer.state["running_var"], 0.7 * rv0 + 0.3 * unbiased, rtol=1e-14)


@pytest.mark.parametrize("phase", ["probe", "eval"])
def test_probe_and_eval_update_nothing(phase: str, rng: np.random.Generator) -> None:
    layer = made((3, 4, 5), rng)
    before = {k: v.copy() for k, v in layer.state.items()}
    layer.phase = phase
    x = batch((3, 4, 5), 3, rng)
    y = layer.forward(x)
    layer.backward(np.ones_like(y))
    for key, value in before.items():
        np.testing.assert_array_equal(layer.state[key], value)


def test_eval_normalises_with_the_running_estimates(rng: np.random.Generator) -> None:
    layer = made((2, 3, 7), rng, eps=1e-3)
    layer.phase = "eval"
    x = batch((2, 3, 7), 2, rng)
    rm, rv = (layer.state[k].reshape(1, -1, 1, 1) for k in ("running_mean", "running_var"))
    g, b = (layer.params[k].reshape(1, -1, 1, 1) for k in ("gamma", "beta"))
    np.testing.assert_allclose(
        layer.forward(x), g * (x - rm) / np.sqrt(rv + 1e-3) + b, rtol=1e-13, atol=1e-14
    )
    # a single sample is fine in eval (and gives the same as within the batch)
    np.testing.assert_allclose(layer.forward(x[:1]), layer.forward(x)[:1], rtol=1e-15)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_0_keeps_and_1_replaces(momentum: float, rng: np.random.Generator) -> None:
    layer = made((5,), rng, momentum=momentum)
    before = layer.state["running_mean"].copy()
    x = batch((5,), 4, rng)
    layer.forward(x)
    expected = before if momentum == 0.0 else x.mean(axis=0)
    np.testing.assert_allclose(layer.state["running_mean"], expected, rtol=1e-15)
    if momentum == 1.0:
        np.testing.assert_allclose(layer.state["running_var"], x.var(axis=0, ddof=1), rtol=1e-14)


def test_one_value_per_channel_is_an_error_in_train_only(rng: np.random.Generator) -> None:
    layer = made((4,), rng)
    with pytest.raises(ShapeError, match="more than one value per channel"):
        layer.forward(batch((4,), 1, rng))
    layer.phase = "probe"
    y = layer.forward(batch((4,), 1, rng))
    np.testing.assert_allclose(y, layer.params["beta"][None, :], atol=1e-15)  # x̂ = 0
    image = made((2, 2, 3), rng)  # one image still has 6 values per channel
    assert image.forward(batch((2, 2, 3), 1, rng)).shape == (1, 2, 2, 3)


# ---- buffers, shapes, hyper-parameters -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_buffers_are_made_by_build_in_the_dtype(dtype: type) -> None:
    layer = BatchNorm(name="bn")
    assert layer.state == {}
    net = Sequential([Conv2D(3, 2, name="conv"), layer, Flatten(name="flat")], (1, 4, 5))
    net.build(np.random.default_rng(0), dtype)
    assert set(layer.state) == {"running_mean", "running_var"}
    for key, value in (("running_mean", 0.0), ("running_var", 1.0)):
        assert layer.state[key].dtype == dtype and layer.state[key].shape == (3,)
        np.testing.assert_array_equal(layer.state[key], value)
    np.testing.assert_array_equal(layer.params["gamma"], 1.0)
    np.testing.assert_array_equal(layer.params["beta"], 0.0)
    assert net.state() == {"bn": layer.state}
    x = np.random.default_rng(1).standard_normal((4, 1, 4, 5)).astype(dtype)
    assert net.forward(x).dtype == dtype and layer.state["running_var"].dtype == dtype
    saved = {"bn": {k: v * 2 + 1 for k, v in layer.state.items()}}
    kept = layer.state["running_mean"]
    net.set_state(saved)
    assert layer.state["running_mean"] is kept  # copied in place
    np.testing.assert_array_equal(layer.state["running_var"], saved["bn"]["running_var"])


def test_shapes_and_class_facts() -> None:
    layer = BatchNorm()
    assert (layer.kind, layer.couples_batch, layer.stochastic, layer.elementwise, layer.analytic) == (
        "batchnorm", True, False, False, True,
    )  # fmt: skip
    assert layer.param_names == ("gamma", "beta") and layer.window() is None
    assert layer.param_shapes((3, 4, 5)) == {"gamma": (3,), "beta": (3,)}
    assert layer.param_shapes((6,)) == {"gamma": (6,), "beta": (6,)}
    assert layer.output_shape((3, 4, 5)) == (3, 4, 5)
    with pytest.raises(ShapeError, match="C×H×W image or a feature vector"):
        BatchNorm(name="bn").output_shape((3, 4))
    assert set(layer.default_init()) == {"gamma", "beta"}


def test_hyper_round_trip() -> None:
    layer = BatchNorm(momentum=0.2, eps=1e-3, name="bn")
    assert layer.hyper() == {"momentum": 0.2, "eps": 1e-3}
    assert BatchNorm().hyper() == {"momentum": 0.1, "eps": 1e-5}
    again = BatchNorm.from_hyper(layer.hyper(), name="bn")
    assert type(again) is BatchNorm and again.hyper() == layer.hyper()


@pytest.mark.parametrize(
    ("key", "value", "detail"),
    [
        ("momentum", -0.1, "expected a number in [0, 1], got -0.1"),
        ("momentum", 1.5, "expected a number in [0, 1], got 1.5"),
        ("eps", 0.0, "expected a number > 0, got 0.0"),
        ("eps", -1e-5, "expected a number > 0, got -1e-05"),
        ("eps", "small", "expected a number > 0, got 'small'"),
    ],
)
def test_bad_hyper_parameters(key: str, value: object, detail: str) -> None:
    assert_hyper_error(lambda: BatchNorm(**{key: value}, name="bn"), "bn", key, detail)


def test_results_survive_later_calls_and_match_a_fresh_layer() -> None:
    check_results_survive_later_calls(BatchNorm, (2, 7, 6))
    check_results_survive_later_calls(partial(BatchNorm, eps=1e-3), (5,))


def test_backward_before_forward() -> None:
    assert_backward_before_forward_raises(BatchNorm(name="bn"), (5,))


def test_backward_params_gives_the_same_gradients(rng: np.random.Generator) -> None:
    layer = made((3, 4, 5), rng)
    x = batch((3, 4, 5), 3, rng)
    dy = rng.standard_normal(x.shape)
    layer.forward(x)
    layer.backward(dy)
    full = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward_params(dy)
    for key, value in full.items():
        np.testing.assert_array_equal(layer.grads[key], value)


# ---- PyTorch ---------------------------------------------------------------------------------------------
def rel(a: np.ndarray, b: np.ndarray, scale: float = 0.0) -> float:
    """max |a − b| relative to the reference's largest magnitude (or ``scale`` when that is larger)."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(float(np.max(np.abs(b))), scale, 1e-300))


def torch_twin(layer: BatchNorm, shape: tuple[int, ...]):  # noqa: ANN201 - a torch module
    torch = pytest.importorskip("torch")
    from cnnbp.core.network import LayerInfo
    from cnnbp.torch_mirror import TorchKit

    info = LayerInfo(layer.name, layer.kind, shape, shape, layer.param_shapes(shape))
    module, params = layer.to_torch(TorchKit(torch), info)
    assert set(params) == {"gamma", "beta"} and params["gamma"] is module.weight
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.params["gamma"]))
        module.bias.copy_(torch.from_numpy(layer.params["beta"]))
    return torch, module


@pytest.mark.parametrize("phase", ["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_agrees_with_torch_batchnorm_in_float64(case: tuple, phase: str, rng: np.random.Generator) -> None:
    """Output, ∂L/∂x, ∂L/∂γ, ∂L/∂β and the running statistics after one forward (train mode)."""
    shape, n = case
    layer = made(shape, rng, momentum=0.3, eps=1e-3)
    torch, module = torch_twin(layer, shape)
    assert type(module).__name__ == ("BatchNorm2d" if len(shape) == 3 else "BatchNorm1d")
    module.train(phase == "train")
    layer.phase = phase
    x = batch(shape, n, rng)
    dy = rng.standard_normal(x.shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = module(xt)
    yt.backward(torch.from_numpy(dy))
    y = layer.forward(x)
    dx = layer.backward(dy)
    errors = {
        "y": rel(y, yt.detach().numpy()),
        "dx": rel(dx, xt.grad.numpy()),
        "gamma": rel(layer.grads["gamma"], module.weight.grad.numpy()),
        "beta": rel(layer.grads["beta"], module.bias.grad.numpy()),
        "running_mean": rel(layer.state["running_mean"], module.running_mean.numpy()),
        "running_var": rel(layer.state["running_var"], module.running_var.numpy()),
    }
    assert max(errors.values()) <= TORCH_TOL, errors


def small_net() -> Sequential:
    layers = [Conv2D(3, (2, 3), padding=1, name="conv"), BatchNorm(momentum=0.2, name="bn"),
              ReLU(name="relu"), Flatten(name="flat"), Dense(4, name="fc")]  # fmt: skip
    return Sequential(layers, (2, 5, 6)).build(np.random.default_rng(0), np.float64)


def test_sgd_steps_of_a_small_network_agree_with_torch(rng: np.random.Generator) -> None:
    """[conv, batchnorm, relu, flatten, dense]: weights and running statistics after each of 3 SGD steps
    (train mode), then the eval-mode outputs.

    The conv's bias cancels in the batchnorm's mean: its gradient is 0 up to rounding on both sides, so
    the weights are compared relative to the largest weight of the network, not each tensor's own."""
    pytest.importorskip("torch")
    from cnnbp.torch_mirror import TorchMirror

    net, loss = small_net(), SoftmaxCrossEntropy()
    x, y = rng.standard_normal((6, 2, 5, 6)), rng.integers(0, 4, 6)
    mirror = TorchMirror(net, loss)
    torch_bn = mirror.model[1]
    step = mirror.step_fn(x, y, SGD(0.1, momentum=0.5))
    engine_sgd = SGD(0.1, momentum=0.5)
    worst = 0.0
    for _ in range(3):
        with net.in_phase("train"):
            net.gradients(x, y, loss, input_grad=False)
        engine_sgd.step(net.parameters(), net.grads())
        step()
        theirs = mirror.weights()
        scale = max(float(np.abs(w).max()) for group in theirs.values() for w in group.values())
        for lname, group in net.parameters().items():
            for key, w in group.items():
                worst = max(worst, rel(w, theirs[lname][key], scale))
        bn = net.layer("bn").state
        worst = max(worst, rel(bn["running_mean"], torch_bn.running_mean.detach().numpy()))
        worst = max(worst, rel(bn["running_var"], torch_bn.running_var.detach().numpy()))
    assert worst <= TORCH_TOL, worst
    mirror.model.eval()
    with net.in_phase("eval"):
        ours = net.forward(x)
    assert rel(ours, mirror.model(mirror.torch.from_numpy(x)).detach().numpy()) <= TORCH_TOL


# ---- ONNX --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4, 5), (6,)], ids=["image", "vector"])
def test_onnx_inference_form_uses_the_running_statistics(
    shape: tuple[int, ...], dtype: type, rng: np.random.Generator
) -> None:
    pytest.importorskip("onnxruntime")
    from cnnbp.onnx_graph import run_onnx, to_onnx

    head = [Flatten(name="flat")] if len(shape) == 3 else []
    net = Sequential([BatchNorm(eps=1e-3, name="bn"), *head, Dense(3, name="fc")], shape)
    net.build(rng, dtype)
    bn = net.layer("bn")
    for group in (bn.params, bn.state):
        for key, value in group.items():
            sign = 1.0 if key == "running_var" else rng.choice([-1.0, 1.0], value.shape)
            value[...] = rng.uniform(0.5, 2.0, value.shape) * sign
    model = to_onnx(net, "mse")
    ops = {n.op_type for n in model.graph.node if n.name.startswith("bn")}
    assert ops == ({"BatchNormalization"} if dtype == np.float32 else {"Sub", "Mul", "Add"})
    x = batch(shape, 4, rng).astype(dtype)
    with net.in_phase("eval"):
        ref = net.forward(x)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert rel(run_onnx(model, x)["output"], ref) <= tol
