"""The finite-difference gradient checker (``core/gradcheck.py``).

Every layer type is checked twice: the correct network passes every row, and the same network
with a 1e-4 relative error injected into one element of one tensor of one layer's backward
fails on exactly that tensor, naming the altered element.  Kinks (relu at 0, max-pool ties)
are KINK rather than FAIL (checked by one-sided derivatives: tests/core/test_gradcheck_kinks.py);
complex-step agrees with Richardson; float32 networks are checked on a float64 copy; sampling
keeps the largest-gradient element.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cnnbp.core import MSE, Conv2D, Dense, Flatten, Identity, Layer, Loss, SoftmaxCrossEntropy
from cnnbp.core.gradcheck import FAIL, KINK, PASS, UNCHECKED, GradcheckResult, gradcheck, non_analytic_layers
from cnnbp.core.layers import LpPool, MaxPool, MeanPool, ReLU, Sigmoid, Subsample, Tanh
from tests.core.conftest import analytic_net, batch, build_net, clean_gradients

INJECT = 1e-4  # relative error injected into one element

# ---- small networks, one per layer type ---------------------------------------------------------
#: (layers before the final "fc" dense, input shape, layer to break, tensors to break)
Case = tuple[Callable[[], list[Layer]], tuple[int, ...], str, tuple[str, ...]]


def conv_tanh(**conv: Any) -> Callable[[], list[Layer]]:
    """conv ``conv`` (2 filters, 3×3, ``conv`` its other arguments) → tanh ``act`` → flatten."""
    return lambda: [Conv2D(2, 3, name="conv", **conv), Tanh(name="act"), Flatten(name="flat")]


def windowed(middle: Callable[[], Layer], act: type[Layer] = Tanh) -> Callable[[], list[Layer]]:
    """conv ``conv`` (2 filters, 2×2) → ``act`` → ``middle()`` → flatten."""
    return lambda: [Conv2D(2, 2, name="conv"), act(name="act"), middle(), Flatten(name="flat")]


CASES: dict[str, Case] = {
    "conv_tied": (conv_tanh(stride=2, padding=1), (2, 7, 7), "conv", ("W", "b", "dx")),
    "conv_untied": (conv_tanh(bias="untied"), (2, 5, 5), "conv", ("W", "b", "dx")),
    "pool_max": (windowed(lambda: MaxPool(2, stride=1, name="pool")), (1, 6, 6), "pool", ("dx",)),
    "pool_mean": (windowed(lambda: MeanPool(2, name="pool")), (1, 7, 7), "pool", ("dx",)),
    "pool_lp": (windowed(lambda: LpPool(2, p=3.0, name="pool")), (1, 5, 5), "pool", ("dx",)),
    "subsample": (windowed(lambda: Subsample(2, name="sub"), Sigmoid), (1, 7, 7), "sub", ("beta", "b", "dx")),
    "dense": (
        lambda: [Flatten(name="flat"), Dense(4, name="hidden"), Tanh(name="act")],
        (2, 2, 2),
        "hidden",
        ("W", "b", "dx"),
    ),
    "flatten": (lambda: [Conv2D(2, 2, name="conv"), Flatten(name="flat")], (1, 4, 4), "flat", ("dx",)),
    # a first-layer dx error shows in the input row
    "first_layer": (conv_tanh(padding=1), (1, 4, 4), "conv", ("dx",)),
}
for _act in (Sigmoid, Tanh, ReLU, Identity):
    CASES[f"act_{_act.kind}"] = (
        lambda a=_act: [Flatten(name="flat"), Dense(5, name="hidden"), a(name="act")],
        (3,),
        "act",
        ("dx",),
    )
# ``act`` of the activation cases follows ``hidden``; Flatten of a (3,) input is the identity








def argmax_index(a: np.ndarray) -> tuple[int, ...]:
    """Index of the largest |element|."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(a))), a.shape))


def inject(monkeypatch: pytest.MonkeyPatch, layer: Layer, tensor: str, index: tuple[int, ...]) -> None:
    """Make ``layer.backward`` wrong by a factor (1 + 1e-4) at one element of one tensor."""
    original = layer.backward

    def wrong(dy: np.ndarray) -> np.ndarray:
        dx = original(dy)
        if tensor == "dx":
            dx = dx.copy()
            dx[index] *= 1 + INJECT
        else:
            layer.grads[tensor][index] *= 1 + INJECT
        return dx

    monkeypatch.setattr(layer, "backward", wrong)


def statuses(res: GradcheckResult) -> dict[tuple[str, str], str]:
    """``{(layer, tensor): status}`` of every row."""
    return {(r.layer, r.tensor): r.status for r in res.rows}


LOSSES = [MSE, SoftmaxCrossEntropy]


# ---- correct networks pass; one wrong element fails, named --------------------------------------
@pytest.mark.parametrize("loss_cls", LOSSES, ids=lambda c: c.name)
@pytest.mark.parametrize("case", sorted(CASES))
def test_correct_passes_and_injected_error_is_named(
    case: str, loss_cls: type[Loss], monkeypatch: pytest.MonkeyPatch
) -> None:
    make, shape, target, tensors = CASES[case]
    loss = loss_cls()
    for tensor in tensors:
        net = build_net(make(), shape)
        x, y = batch(net, loss)
        clean = gradcheck(net, loss, x, y)
        assert clean.ok(strict=True), [r for r in clean.rows if r.status != PASS]
        assert {r.status for r in clean.rows} == {PASS}
        assert all(r.checked == r.total for r in clean.rows)

        names = [l.name for l in net.layers]
        j = names.index(target)
        grads, deltas, dx = clean_gradients(net, loss, x, y)
        if tensor == "dx":  # the delta arriving at the layer below, or the input gradient
            row_key = ("input", "input") if j == 0 else (names[j - 1], "delta")
            index = argmax_index(dx if j == 0 else deltas[names[j - 1]])
            untouched = names[j:]  # this layer and everything after it
        else:
            row_key = (target, tensor)
            index = argmax_index(grads[target][tensor])
            untouched = names
        inject(monkeypatch, net.layer(target), tensor, index)
        res = gradcheck(net, loss, x, y)
        monkeypatch.undo()

        assert res.passed is False  # a property, not a method
        bad = res.row(*row_key)
        assert bad.status == FAIL
        assert bad.worst_index == index
        assert bad.max_rel_error == pytest.approx(INJECT, rel=0.01)
        assert bad.numeric == pytest.approx(bad.analytic / (1 + INJECT), rel=1e-6)
        for (layer, t), status in statuses(res).items():
            if (layer, t) == row_key:
                continue
            if layer in untouched:
                assert status == PASS, (layer, t)
        if tensor != "dx":  # a parameter-gradient error touches nothing else
            assert [r for r in res.rows if r.status != PASS] == [bad]


@pytest.mark.parametrize("loss_cls", LOSSES, ids=lambda c: c.name)
def test_wrong_loss_delta_fails_the_last_layer(loss_cls: type[Loss], monkeypatch: pytest.MonkeyPatch) -> None:
    loss = loss_cls()
    net = build_net([Flatten(name="flat"), Dense(4, name="hidden"), Sigmoid(name="act")], (2, 2))
    x, y = batch(net, loss)
    _, deltas, _ = clean_gradients(net, loss, x, y)
    index = argmax_index(deltas["fc"])
    original = loss.backward

    def wrong() -> np.ndarray:
        d = original().copy()
        d[index] *= 1 + INJECT
        return d

    monkeypatch.setattr(loss, "backward", wrong)
    res = gradcheck(net, loss, x, y)
    row = res.row("fc", "delta")
    assert row.status == FAIL and row.worst_index == index


# ---- kinks -----------------------------------------------------------------------------------------
def test_relu_at_zero_is_a_kink_not_a_failure() -> None:
    net = build_net([Flatten(name="flat"), Dense(4, name="hidden"), ReLU(name="relu")], (3,))
    hidden = net.layer("hidden")
    hidden.params["W"][1] = 0.0  # unit 1's pre-activation is exactly 0 for every input
    hidden.params["b"][1] = 0.0
    x, y = batch(net, MSE())
    x[:, 2] = np.abs(x[:, 2])  # W[1, 2] moves every sample's pre-activation the same way
    res = gradcheck(net, MSE(), x, y)
    kinks = {key for key, status in statuses(res).items() if status in (KINK, UNCHECKED)}
    assert kinks == {("hidden", "W"), ("hidden", "b"), ("hidden", "delta")}
    assert FAIL not in statuses(res).values()
    row = res.row("hidden", "b")
    assert row.status == KINK and row.worst_index == (1,) and row.n_kink == 1 and row.n_fail == 0
    assert res.row("hidden", "delta").worst_index[1] == 1
    assert res.row("hidden", "delta").status == KINK
    w = res.row("hidden", "W").detail
    assert w is not None and w.status[w.index == np.ravel_multi_index((1, 2), (4, 3))] == KINK
    assert res.passed is True and isinstance(GradcheckResult.passed, property)
    # W[1, 0] and W[1, 1] move the samples' pre-activations in opposite directions: the engine's
    # all-dead state is neither side's, and its value may lie outside the one-sided interval
    assert res.ok(strict=True) == (res.unchecked == 0)


def test_max_pool_tie_is_a_kink() -> None:
    net = build_net([MaxPool(2, name="pool"), Flatten(name="flat")], (1, 4, 4))
    x, y = batch(net, SoftmaxCrossEntropy(), m=2)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = np.abs(x[0, 0, :2, :2]).max() + 1.0  # a tie for the max of a window
    res = gradcheck(net, SoftmaxCrossEntropy(), x, y)
    row = res.row("input", "input")
    assert row.status == KINK and row.n_fail == 0 and row.n_kink == 2
    assert row.worst_index in {(0, 0, 0, 0), (0, 0, 0, 1)}
    assert {s for k, s in statuses(res).items() if k != ("input", "input")} == {PASS}
    assert res.passed is True and res.ok(strict=True)  # checked: --strict fails UNCHECKED only


def test_a_real_error_next_to_a_kink_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinks are decided from signatures, never from the error size."""
    net = build_net([Flatten(name="flat"), Dense(4, name="hidden"), ReLU(name="relu")], (3,))
    net.layer("hidden").params["W"][1] = 0.0
    net.layer("hidden").params["b"][1] = 0.0
    x, y = batch(net, MSE())
    grads, _, _ = clean_gradients(net, MSE(), x, y)
    index = argmax_index(grads["hidden"]["W"])
    inject(monkeypatch, net.layer("hidden"), "W", index)
    row = gradcheck(net, MSE(), x, y).row("hidden", "W")
    assert row.status == FAIL and row.worst_index == index and row.n_fail == 1 and row.n_kink >= 1


# ---- methods -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_cls", LOSSES, ids=lambda c: c.name)
def test_complex_step_agrees_with_richardson(loss_cls: type[Loss]) -> None:
    loss = loss_cls()
    net = analytic_net()
    x, y = batch(net, loss)
    # Unsaturated units: the analytic tanh'/sigmoid' (1 − y², y(1 − y)) lose relative accuracy
    # as y → ±1 (at |z| ≈ 9 only ~1e-10 is left), which complex-step would rightly report.
    x *= 0.5
    c = gradcheck(net, loss, x, y, method="complex")
    r = gradcheck(net, loss, x, y, method="richardson")
    assert c.method == "complex" and c.ok(strict=True) and r.ok(strict=True)
    assert max(row.max_rel_error for row in c.rows) <= 1e-12
    for rc, rr in zip(c.rows, r.rows, strict=True):
        assert (rc.layer, rc.tensor) == (rr.layer, rr.tensor)
        scale = np.abs(rc.detail.numeric).max()
        assert np.abs(rc.detail.numeric - rr.detail.numeric).max() <= 1e-10 * scale, (rc.layer, rc.tensor)


def test_complex_step_refuses_non_analytic_layers() -> None:
    net = build_net([Flatten(name="flat"), Dense(4, name="hidden"), ReLU(name="my_relu")], (3,))
    x, y = batch(net, MSE())
    assert non_analytic_layers(net, MSE()) == ["my_relu"]
    with pytest.raises(ValueError, match="my_relu"):
        gradcheck(net, MSE(), x, y, method="complex")
    assert gradcheck(net, MSE(), x, y, method="auto").method == "central"
    assert gradcheck(analytic_net(), MSE(), *batch(analytic_net(), MSE()), method="auto").method == "complex"


def test_local_box_propagation_matches_whole_map_evaluation() -> None:
    """The crop-based fast path gives the numbers the plain full forward gives."""
    layers = [
        Conv2D(2, 3, stride=2, padding=2, name="c1"),
        Tanh(name="t1"),
        MaxPool(3, stride=2, name="p1"),
        Conv2D(3, (2, 3), padding=(1, 2), name="c2"),
        ReLU(name="r2"),
        LpPool(2, stride=1, p=2.0, name="lp"),  # relu zeros: sign kinks in the Lp pool
        MeanPool(2, stride=1, name="p2"),
        Subsample(2, name="s2"),
        Flatten(name="flat"),
    ]
    net = build_net(layers, (2, 15, 13))
    x, y = batch(net, SoftmaxCrossEntropy(), m=2)
    fast = gradcheck(net, SoftmaxCrossEntropy(), x, y)
    slow = gradcheck(net, SoftmaxCrossEntropy(), x, y, _local=False)
    assert fast.row("r2", "delta").detail.kink.any()  # kinks are detected on both paths
    for a, b in zip(fast.rows, slow.rows, strict=True):
        assert a.status == b.status != FAIL
        # equal up to finite-difference rounding noise (the crops round differently)
        np.testing.assert_allclose(a.detail.numeric, b.detail.numeric, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(a.detail.kink, b.detail.kink)
        np.testing.assert_array_equal(a.detail.status, b.detail.status)  # fingerprints agree too
        for side in ("backward", "forward"):
            np.testing.assert_allclose(getattr(a.detail, side), getattr(b.detail, side), rtol=1e-5, atol=1e-8)


# ---- precision, caller's network, sampling --------------------------------------------------------
def test_float32_network_is_checked_in_float64_and_left_unchanged() -> None:
    net = build_net(
        [Conv2D(2, 2, name="conv"), Sigmoid(name="act"), Flatten(name="flat")], (1, 4, 4), dtype=np.float32
    )
    before = {(l.name, k): (p.dtype, p.tobytes()) for l in net.layers for k, p in l.params.items()}
    x, y = batch(net, MSE())
    res = gradcheck(net, MSE(), x.astype(np.float32), y)
    assert res.cast_from == "float32"
    assert res.ok(strict=True)
    after = {(l.name, k): (p.dtype, p.tobytes()) for l in net.layers for k, p in l.params.items()}
    assert after == before


def test_float64_network_params_are_restored_bit_for_bit() -> None:
    net = analytic_net()
    before = {(l.name, k): (p, p.tobytes()) for l in net.layers for k, p in l.params.items()}
    x, y = batch(net, MSE())
    for method in ("central", "richardson", "complex"):
        res = gradcheck(net, MSE(), x, y, method=method)
        assert res.cast_from is None
    for l in net.layers:
        for k, p in l.params.items():
            array, raw = before[(l.name, k)]
            assert p is array and p.tobytes() == raw


@pytest.mark.parametrize("k", [1, 5, 40])
def test_sampling_checks_k_elements_including_the_largest(k: int) -> None:
    net = analytic_net()
    x, y = batch(net, MSE())
    grads, deltas, dx = clean_gradients(net, MSE(), x, y)
    res = gradcheck(net, MSE(), x, y, per_tensor=k, rng=np.random.default_rng(7))
    for row in res.rows:
        assert row.checked == min(k, row.total)
        assert len(set(row.detail.index.tolist())) == row.checked
        if row.tensor == "input":
            analytic = dx
        elif row.tensor == "delta":
            analytic = deltas[row.layer]
        else:
            analytic = grads[row.layer][row.tensor]
        assert int(np.argmax(np.abs(analytic))) in row.detail.index


def test_layer_selection_and_input_row() -> None:
    net = analytic_net()
    x, y = batch(net, MSE())
    res = gradcheck(net, MSE(), x, y, layers=["hidden"])
    assert [(r.layer, r.tensor) for r in res.rows] == [("hidden", "W"), ("hidden", "b"), ("hidden", "delta")]
    assert [r.tensor for r in gradcheck(net, MSE(), x, y, layers=["input"]).rows] == ["input"]
    with pytest.raises(ValueError, match="nope"):
        gradcheck(net, MSE(), x, y, layers=["nope"])


def test_large_networks_are_sampled_by_default() -> None:
    net = build_net([Flatten(name="flat"), Dense(200, name="wide")], (120,))  # 24,200 + 603 parameters
    x, y = batch(net, MSE(), m=2)
    res = gradcheck(net, MSE(), x, y, layers=["wide"])
    assert [(r.tensor, r.checked) for r in res.rows] == [("W", 64), ("b", 64), ("delta", 64)]
    assert res.ok(strict=True)
    small = analytic_net()
    forced = gradcheck(small, MSE(), *batch(small, MSE()), per_tensor=5, check_all=True)
    assert all(r.checked == r.total for r in forced.rows)
