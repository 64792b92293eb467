"""Optimisers: SGD and Adam against their formulas written out here, against ``torch.optim`` (when
PyTorch is installed), the state round trip, and hyper-parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from cnnbp.core import OPTIMIZERS, SGD, Adam, Conv2D, Dense, Flatten, Optimizer, Sequential
from cnnbp.core.gradcheck import relative_error

Params = dict[str, dict[str, np.ndarray]]
STEPS = 5


def small_params(seed: int = 0) -> Params:
    """The parameters of a small conv → dense network, float64, non-zero biases."""
    net = Sequential([Conv2D(3, 3, name="c"), Flatten(name="f"), Dense(4, name="d")], (2, 6, 6))
    net.build(np.random.default_rng(seed), np.float64)
    rng = np.random.default_rng(seed + 1)
    for group in net.parameters().values():
        group["b"][...] = rng.standard_normal(group["b"].shape)
    return {l: {k: v.copy() for k, v in g.items()} for l, g in net.parameters().items()}


def grad_sequence(params: Params, steps: int = STEPS, seed: int = 7) -> list[Params]:
    """``steps`` batches of random gradients shaped like ``params``."""
    rng = np.random.default_rng(seed)
    return [{l: {k: rng.standard_normal(v.shape) for k, v in g.items()} for l, g in params.items()}
            for _ in range(steps)]  # fmt: skip


def copy_params(params: Params) -> Params:
    return {l: {k: v.copy() for k, v in g.items()} for l, g in params.items()}


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a − b| / max|b|``: the project's relative error with the floor ``max|b|``."""
    return float(np.max(relative_error(a, b, float(np.max(np.abs(b))))))


def each(params: Params) -> list[tuple[str, str, np.ndarray]]:
    return [(l, k, v) for l, g in params.items() for k, v in g.items()]


# ---- SGD: the formulas by hand ---------------------------------------------------------------------------


def sgd_by_hand(params: Params, grads: list[Params], lr: float, mu: float, wd: float) -> Params:
    """g ← g + λW; v ← μv + g (v starts at 0); W ← W − α·v (with μ = 0: W ← W − α·g)."""
    w = copy_params(params)
    v = {l: {k: np.zeros_like(x) for k, x in g.items()} for l, g in params.items()}
    for step in grads:
        for l, k, _ in each(w):
            g = step[l][k] + wd * w[l][k]
            v[l][k] = mu * v[l][k] + g
            w[l][k] = w[l][k] - lr * (v[l][k] if mu else g)
    return w


@pytest.mark.parametrize(
    ("mu", "wd"),
    [(0.0, 0.0), (0.9, 0.0), (0.0, 0.01), (0.8, 0.05)],
    ids=["plain", "momentum", "decay", "both"],
)
def test_sgd_matches_its_formula(mu: float, wd: float) -> None:
    params = small_params()
    grads = grad_sequence(params)
    expected = sgd_by_hand(params, grads, 0.05, mu, wd)
    opt = SGD(lr=0.05, momentum=mu, weight_decay=wd)
    for g in grads:
        opt.step(params, g)
    assert opt.t == STEPS
    for l, k, w in each(params):
        np.testing.assert_allclose(w, expected[l][k], rtol=1e-14, atol=1e-15, err_msg=f"{l}.{k}")


def test_plain_sgd_first_step_is_w_minus_lr_g() -> None:
    w = np.array([[1.0, -2.0], [0.5, 4.0]])
    g = np.array([[0.25, 1.0], [-2.0, 0.0]])
    params = {"d": {"W": w.copy()}}
    SGD(lr=0.5).step(params, {"d": {"W": g}})
    np.testing.assert_array_equal(params["d"]["W"], [[0.875, -2.5], [1.5, 4.0]])


def test_sgd_keeps_float32() -> None:
    params = {"d": {"W": np.ones((3, 2), np.float32)}}
    SGD(lr=0.1, momentum=0.5).step(params, {"d": {"W": np.full((3, 2), 0.5, np.float32)}})
    assert params["d"]["W"].dtype == np.float32
    np.testing.assert_allclose(params["d"]["W"], 0.95, rtol=1e-7)


# ---- Adam: SPEC's formulas ----------------------------------------------------------------------------


def adam_by_hand(params: Params, grads: list[Params], lr: float, b1: float, b2: float, eps: float,
                 wd: float) -> Params:  # fmt: skip
    """SPEC §6, t from 1: g ← g + λW; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; m̂ = m/(1−β₁ᵗ);
    v̂ = v/(1−β₂ᵗ); W ← W − α·m̂/(√v̂ + ε)."""
    w = copy_params(params)
    m = {l: {k: np.zeros_like(x) for k, x in g.items()} for l, g in params.items()}
    v = {l: {k: np.zeros_like(x) for k, x in g.items()} for l, g in params.items()}
    for t, step in enumerate(grads, start=1):
        for l, k, _ in each(w):
            g = step[l][k] + wd * w[l][k]
            m[l][k] = b1 * m[l][k] + (1 - b1) * g
            v[l][k] = b2 * v[l][k] + (1 - b2) * g**2
            m_hat = m[l][k] / (1 - b1**t)
            v_hat = v[l][k] / (1 - b2**t)
            w[l][k] = w[l][k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


@pytest.mark.parametrize("wd", [0.0, 0.02])
@pytest.mark.parametrize(("b1", "b2", "eps"), [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3)])
def test_adam_matches_spec(b1: float, b2: float, eps: float, wd: float) -> None:
    params = small_params()
    start = copy_params(params)
    grads = grad_sequence(params)
    expected = adam_by_hand(params, grads, 0.01, b1, b2, eps, wd)
    opt = Adam(lr=0.01, betas=(b1, b2), eps=eps, weight_decay=wd)
    for g in grads:
        opt.step(params, g)
    for l, k, w in each(params):
        assert max_rel(w, expected[l][k]) <= 1e-13, f"{l}.{k}"
        # the total updates too, not only the weights they are small against
        assert max_rel(w - start[l][k], expected[l][k] - start[l][k]) <= 1e-11, f"{l}.{k}"


def test_adam_first_step_moves_every_weight_by_lr() -> None:
    """At t = 1, m̂ = g and v̂ = g², so each weight moves by α·g/(|g| + ε) ≈ α·sign(g)."""
    params = small_params()
    before = copy_params(params)
    grads = grad_sequence(params, steps=1)[0]
    Adam(lr=0.001, eps=1e-12).step(params, grads)
    for l, k, w in each(params):
        np.testing.assert_allclose(before[l][k] - w, 0.001 * np.sign(grads[l][k]), rtol=1e-9)


# ---- against torch.optim --------------------------------------------------------------------------------


def torch_run(torch_opt: Callable, params: Params, grads: list[Params]) -> Params:
    """``grads`` fed, step after step, to a torch optimiser over float64 copies of ``params``."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    tensors = {l: {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in g.items()}
               for l, g in params.items()}  # fmt: skip
    opt = torch_opt(torch, [p for g in tensors.values() for p in g.values()])
    for step in grads:
        for l, k, p in each(tensors):
            p.grad = torch.from_numpy(step[l][k].copy())
        opt.step()
    return {l: {k: p.detach().numpy().copy() for k, p in g.items()} for l, g in tensors.items()}


@pytest.mark.parametrize("wd", [0.0, 0.03])
def test_adam_equals_torch_adam(wd: float) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed")
    params = small_params()
    grads = grad_sequence(params, steps=8)
    expected = torch_run(
        lambda torch, ps: torch.optim.Adam(ps, lr=0.02, betas=(0.85, 0.995), eps=1e-7, weight_decay=wd),
        params,
        grads,
    )
    opt = Adam(lr=0.02, betas=(0.85, 0.995), eps=1e-7, weight_decay=wd)
    for g in grads:
        opt.step(params, g)
    for l, k, w in each(params):
        assert max_rel(w, expected[l][k]) <= 1e-12, f"{l}.{k}"


@pytest.mark.parametrize(("mu", "wd"), [(0.0, 0.0), (0.9, 0.01)])
def test_sgd_equals_torch_sgd(mu: float, wd: float) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed")
    params = small_params()
    grads = grad_sequence(params, steps=8)
    expected = torch_run(
        lambda torch, ps: torch.optim.SGD(ps, lr=0.1, momentum=mu, weight_decay=wd), params, grads
    )
    opt = SGD(lr=0.1, momentum=mu, weight_decay=wd)
    for g in grads:
        opt.step(params, g)
    for l, k, w in each(params):
        assert max_rel(w, expected[l][k]) <= 1e-12, f"{l}.{k}"


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(lr=0.05, momentum=0.7, weight_decay=0.02),
        lambda: Adam(lr=0.003, betas=(0.8, 0.99), weight_decay=0.1),
    ],
    ids=["sgd", "adam"],
)
def test_to_torch_gives_the_same_optimiser(make: Callable[[], Optimizer]) -> None:
    """``to_torch`` builds the torch optimiser of the same kind and hyper-parameters, which then makes
    the same updates."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    opt = make()
    made = opt.to_torch(torch, [torch.zeros(2, requires_grad=True)])
    assert type(made) is {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[opt.kind]
    group = made.param_groups[0]
    for key, value in opt.hyper().items():
        assert (list(group[key]) if isinstance(value, list) else group[key]) == value, key
    params = small_params()
    grads = grad_sequence(params)
    expected = torch_run(opt.to_torch, params, grads)
    for g in grads:
        opt.step(params, g)
    for l, k, w in each(params):
        assert max_rel(w, expected[l][k]) <= 1e-12, f"{l}.{k}"


def test_base_optimiser_has_no_torch_counterpart() -> None:
    class Plain(Optimizer):
        kind = "plain"

    with pytest.raises(NotImplementedError, match="plain"):
        Plain().to_torch(None, [])


# ---- state ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda: SGD(lr=0.05, momentum=0.9, weight_decay=0.01), lambda: Adam(lr=0.01, weight_decay=0.01)],
    ids=["sgd", "adam"],
)
def test_state_round_trip_continues_bit_identically(make: Callable[[], Optimizer]) -> None:
    params = small_params()
    grads = grad_sequence(params, steps=6)
    opt = make()
    for g in grads[:3]:
        opt.step(params, g)
    state = opt.state_dict()
    assert state["t"] == 3 and all(state[name] for name in opt.buffers)

    fresh = type(opt).from_hyper(opt.hyper())
    fresh.load_state_dict(state)
    copied = copy_params(params)
    for g in grads[3:]:
        opt.step(params, g)
        fresh.step(copied, g)
    assert fresh.t == opt.t == 6
    for l, k, w in each(params):
        assert w.tobytes() == copied[l][k].tobytes(), f"{l}.{k}"


def test_state_dict_is_a_copy() -> None:
    params = small_params()
    opt = Adam()
    opt.step(params, grad_sequence(params, steps=1)[0])
    state = opt.state_dict()
    saved = state["exp_avg"]["d"]["W"].copy()
    opt.step(params, grad_sequence(params, steps=1, seed=3)[0])
    np.testing.assert_array_equal(state["exp_avg"]["d"]["W"], saved)
    fresh = Adam()
    fresh.load_state_dict(state)
    state["exp_avg"]["d"]["W"][...] = 0  # the loaded optimiser kept its own copy
    np.testing.assert_array_equal(fresh.state["exp_avg"]["d"]["W"], saved)


def test_load_state_dict_without_buffers_starts_empty() -> None:
    opt = SGD(momentum=0.9)
    opt.load_state_dict({"t": 4})
    assert opt.t == 4 and opt.state == {"velocity": {}}


# ---- hyper-parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "hyper"),
    [
        (SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}),
        (Adam, {"lr": 0.003, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.01}),
    ],
)
def test_hyper_round_trip(cls: type[Optimizer], hyper: dict) -> None:
    opt = cls.from_hyper(hyper)
    assert opt.hyper() == hyper
    assert cls.from_hyper(opt.hyper()).hyper() == hyper
    assert OPTIMIZERS[opt.kind] is cls


def test_defaults() -> None:
    assert SGD().hyper() == {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    assert Adam().hyper() == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(lr=0),
        lambda: SGD(lr=-0.1),
        lambda: SGD(lr=math.nan),
        lambda: SGD(momentum=1.0),
        lambda: SGD(momentum=-0.1),
        lambda: SGD(weight_decay=-1e-3),
        lambda: Adam(lr=0),
        lambda: Adam(betas=(1.0, 0.999)),
        lambda: Adam(betas=(0.9, 1.0)),
        lambda: Adam(betas=(-0.1, 0.999)),
        lambda: Adam(eps=0),
        lambda: Adam.from_hyper({"lr": 0.01, "betas": [0.9, 1.5]}),
    ],
)
def test_bad_hyper_raises_value_error(make: Callable[[], Optimizer]) -> None:
    with pytest.raises(ValueError, match=r"^(sgd|adam): \w+: expected"):
        make()
