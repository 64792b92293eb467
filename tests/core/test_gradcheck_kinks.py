"""The checker where finite differences are hard: kinks (one-sided derivatives, the subgradient interval,
UNCHECKED elements), points of low smoothness (``nonsmooth_distance``), and the directional mode and the
progress callback of ``core/gradcheck.py``.

Expected one-sided values come from formulas: on the dead side of a relu the loss does not depend on the
pre-activation (derivative 0), on the live side its derivative is the delta arriving at the relu's output
(checked on its own row); a max-pool tie's winner gets the window's delta.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnnbp.core import MSE, Conv2D, Dense, Flatten, Layer, Sequential, SoftmaxCrossEntropy
from cnnbp.core.gradcheck import (
    FAIL,
    KINK,
    PASS,
    UNCHECKED,
    GradcheckResult,
    _deriv_weights,
    gradcheck,
)
from cnnbp.core.layers import LpPool, MaxPool, MeanPool, ReLU, Sigmoid, Subsample, Tanh
from tests.core.conftest import analytic_net, batch, build_net, clean_gradients


def statuses(res: GradcheckResult) -> dict[tuple[str, str], str]:
    return {(r.layer, r.tensor): r.status for r in res.rows}


def dead_unit_net(
    slope_at_zero: float | None = None, relu: type[ReLU] = ReLU
) -> tuple[Sequential, np.ndarray, np.ndarray]:
    """flatten → dense ``hidden`` (4 units; unit 1 has zero weights and bias: pre-activation exactly 0 for
    every sample) → relu → dense fc; feature 2 of every sample positive, so W[1, 2] moves every sample's
    pre-activation the same way.  ``slope_at_zero`` replaces the relu by one with that derivative at 0."""
    act = relu(name="relu") if slope_at_zero is None else SlopeAtZero(slope_at_zero, name="relu")
    net = build_net([Flatten(name="flat"), Dense(4, name="hidden"), act], (3,))
    net.layer("hidden").params["W"][1] = 0.0
    net.layer("hidden").params["b"][1] = 0.0
    x, y = batch(net, MSE())
    x[:, 2] = np.abs(x[:, 2]) + 0.1
    return net, x, y


class SlopeAtZero(ReLU):
    """max(z, 0) whose backward takes ``slope`` as its derivative at z = 0 (the engine's relu takes 0)."""

    def __init__(self, slope: float, name: str | None = None, init: Any = None) -> None:
        super().__init__(name, init)
        self.slope = slope

    def hyper(self) -> dict[str, Any]:
        return {}

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        return dy * np.where(x > 0, 1.0, np.where(x == 0, self.slope, 0.0))


# ---- one-sided derivatives at a kink -------------------------------------------------------------
@pytest.mark.parametrize("slope", [None, 0.0], ids=["relu", "relu-like"])
def test_relu_at_zero_is_checked_against_its_one_sided_derivatives(slope: float | None) -> None:
    """The built-in relu (decided by its frozen state; one-sided derivatives for the element a row shows)
    and a relu of another class with the same convention (decided by the one-sided derivatives, taken for
    every element that crosses the kink)."""
    net, x, y = dead_unit_net(slope)
    res = gradcheck(net, MSE(), x, y)
    _, deltas, _ = clean_gradients(net, MSE(), x, y)
    row = res.row("hidden", "b")
    assert row.status == KINK and row.n_kink == 1 and row.n_fail == 0 and row.n_unchecked == 0
    assert row.worst_index == (1,) and row.analytic == 0.0  # relu'(0) = 0
    # backward: the unit stays dead, the loss does not move; forward: the unit is alive and passes the
    # delta at the relu's output (its own row, checked PASS), averaged over the batch
    assert row.backward == pytest.approx(0.0, abs=1e-10)
    assert row.forward == pytest.approx(np.mean(deltas["relu"][:, 1]), rel=1e-8)
    assert res.row("relu", "delta").status == PASS
    delta = res.row("hidden", "delta")
    assert delta.status == KINK and delta.worst_index[1] == 1
    assert delta.backward == pytest.approx(0.0, abs=1e-10)
    assert delta.forward == pytest.approx(deltas["relu"][delta.worst_index], rel=1e-7)
    d = delta.detail
    assert d is not None
    unit1 = (d.index % 4) == 1
    assert set(d.status[unit1]) == {KINK} and set(d.status[~unit1]) == {PASS}
    assert np.isnan(d.backward[~unit1]).all()
    if slope is not None:  # every crossing element has its one-sided derivatives
        np.testing.assert_allclose(d.forward[unit1], deltas["relu"][:, 1], rtol=1e-7)
        np.testing.assert_allclose(d.backward[unit1], 0.0, atol=1e-10)


@pytest.mark.parametrize(("slope", "status"), [(1.0, KINK), (0.5, KINK), (2.0, FAIL), (-0.5, FAIL)])
def test_any_derivative_at_zero_between_the_one_sided_ones_is_a_kink_outside_a_fail(
    slope: float, status: str
) -> None:
    """relu'(0) = 0 is one element of [0, 1]: 1 or 0.5 are others; 2 or −0.5 are no subgradient."""
    net, x, y = dead_unit_net(slope)
    res = gradcheck(net, MSE(), x, y)
    assert res.row("hidden", "b").status == status
    assert res.row("hidden", "delta").status == status
    assert res.row("relu", "delta").status == PASS  # the layer above is not to blame
    assert res.passed == (status == KINK)


def test_a_first_order_bug_at_a_kink_is_found_on_the_side_the_engine_stands() -> None:
    """A 1e-4 error in the delta of unit 1 (relu'(0) = 0 stays): 0 is an endpoint of the interval, so a
    value moved out of it FAILs, and the rows elsewhere still PASS."""
    net, x, y = dead_unit_net(-1e-4)
    res = gradcheck(net, MSE(), x, y)
    assert res.row("hidden", "b").status == FAIL and res.row("hidden", "b").worst_index == (1,)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "one-sided"])
def test_max_pool_tie_winner_takes_the_forward_side_loser_the_backward_side(
    frozen: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two equal maxima in a window: perturbing the first up makes it the maximum (its derivative is the
    window's delta), down hands the window to the second (0).  The engine gives the whole delta to the first
    in row-major order: the forward derivative for the first, the backward one (0) for the second.  Held in
    its state (the arg-max: the first), the pool passes the delta to the first and nothing to the second;
    without the frozen forward (``one-sided``) every crossing element gets its one-sided derivatives."""
    if not frozen:
        monkeypatch.setattr(MaxPool, "frozen_forward", None)
    net = build_net([MaxPool(2, name="pool"), Flatten(name="flat")], (1, 4, 4))
    x, y = batch(net, SoftmaxCrossEntropy(), m=2)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = np.abs(x[0, 0, :2, :2]).max() + 1.0
    res = gradcheck(net, SoftmaxCrossEntropy(), x, y)
    _, deltas, dx = clean_gradients(net, SoftmaxCrossEntropy(), x, y)
    window_delta = deltas["pool"][0, 0, 0, 0]
    row = res.row("input", "input")
    d = row.detail
    assert d is not None
    first, second = (np.flatnonzero(d.index == np.ravel_multi_index(i, x.shape))[0] for i in
                     [(0, 0, 0, 0), (0, 0, 0, 1)])  # fmt: skip
    assert d.status[first] == d.status[second] == KINK and row.n_kink == 2
    assert dx[0, 0, 0, 0] == window_delta and dx[0, 0, 0, 1] == 0.0  # the rule, in the engine
    assert d.numeric[first] == pytest.approx(window_delta, rel=1e-7)
    assert d.numeric[second] == pytest.approx(0.0, abs=1e-10)
    shown = first if row.worst_index == (0, 0, 0, 0) else second
    for at in [first, second] if not frozen else [shown]:
        assert d.forward[at] == pytest.approx(window_delta, rel=1e-7)
        assert d.backward[at] == pytest.approx(0.0, abs=1e-10)
    assert (row.backward, row.forward) == (d.backward[shown], d.forward[shown])
    assert res.ok(strict=True)


def mixed_kinks(slope_at_zero: float | None, relu: type[ReLU] = ReLU) -> tuple[GradcheckResult, int]:
    """W[1, 0] with features of both signs moves some samples' dead pre-activations up and others down: the
    engine's state (all dead) is neither side's, and both one-sided derivatives have one sign, so its
    value (0) lies outside their interval.  The result and the position of W[1, 0] among the checked."""
    net, x, y = dead_unit_net(slope_at_zero, relu)
    x[:, 0] = [1.0, -1.0, 2.0]
    fc = net.layer("fc").params["W"]
    fc[:, 1] = np.abs(fc[:, 1]) + 0.1
    # forward: samples 0 and 2 revive, Σ δ_n·x_n0 over them; backward: sample 1, δ_1·(−1).  Targets far
    # above the outputs (δ < 0) for samples 0 and 2, far below (δ > 0) for sample 1: both sums negative
    y[[0, 2]], y[1] = 10.0, -10.0
    res = gradcheck(net, MSE(), x, y)
    d = res.row("hidden", "W").detail
    assert d is not None
    return res, int(np.flatnonzero(d.index == np.ravel_multi_index((1, 0), (4, 3)))[0])


def test_several_kinks_in_opposite_directions_are_decided_by_the_frozen_state() -> None:
    """The built-in relu can be held in its reference state: the loss is then smooth, and its derivative
    (0: every sample's unit stays dead) is what backpropagation claims.  KINK, with one-sided values
    that do not contain it (relu'(0) = 0 is no subgradient along this line)."""
    res, at = mixed_kinks(None)
    d = res.row("hidden", "W").detail
    assert d is not None
    assert d.status[at] == KINK and d.numeric[at] == pytest.approx(0.0, abs=1e-10)
    assert d.backward[at] * d.forward[at] > 0  # 0 is outside [backward, forward]
    assert res.ok(strict=True)


def test_several_kinks_a_layer_cannot_freeze_are_unchecked() -> None:
    """The same with a relu of another class (the convention the same, but no frozen forward the checker
    knows): the one-sided interval cannot decide, so UNCHECKED, counted, and --strict fails it."""
    res, at = mixed_kinks(0.0)
    d = res.row("hidden", "W").detail
    assert d is not None
    assert d.status[at] == UNCHECKED and np.isnan(d.error[at])
    assert d.backward[at] * d.forward[at] > 0
    row = res.row("hidden", "W")
    assert row.status == UNCHECKED and row.n_unchecked >= 1 and row.n_fail == 0
    assert res.passed and res.unchecked == sum(r.n_unchecked for r in res.rows) >= 1
    assert not res.ok(strict=True)


class NamedReLU(ReLU):
    """The built-in relu under another class, its forward, backward and state unchanged."""


def test_a_subclass_keeps_the_frozen_forward_unless_it_redefines_the_layer() -> None:
    """A subclass that changes nothing the frozen forward follows is held like the relu (its mixed crossings
    KINK); one that redefines ``backward`` (``SlopeAtZero``, above: UNCHECKED) is not."""
    res, at = mixed_kinks(None, NamedReLU)
    d = res.row("hidden", "W").detail
    assert d is not None and d.status[at] == KINK and res.ok(strict=True)


# ---- a user's layer with kinks: frozen_forward ----------------------------------------------------
class HardTanh(Layer):
    """A user's layer: y = clip(x, −1, 1), derivative 1 on [−1, 1] (the kinks ±1 included), 0 outside; its
    state −1 / 0 / +1 below / on / above [−1, 1].  No frozen forward: the checker cannot hold it."""

    analytic = False
    elementwise = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return np.clip(x, -1.0, 1.0)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * (np.abs(self._saved()) <= 1.0)

    def kink_signature(self) -> np.ndarray:
        x = self._saved()
        return (x > 1.0).astype(np.int8) - (x < -1.0)


class FrozenHardTanh(HardTanh):
    """The same with its forward on the piece a state selects: x where the state is 0, else the state."""

    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        return np.where(signature == 0, x, signature.astype(x.dtype))


def saturating_unit_net(layer: HardTanh) -> tuple[Sequential, np.ndarray, np.ndarray]:
    """flatten → dense ``hidden`` (unit 1: zero weights, bias 1, so its pre-activation is exactly 1, the
    kink, for every sample) → ``layer`` → dense fc, and x_·0 = (1, −1, 2): W[1, 0] pushes samples 0 and 2
    above 1 (saturated) and sample 1 back inside, or the other way round.  Targets far above the outputs
    (samples 0, 2) or below (sample 1) and fc[:, 1] > 0 give deltas g_n at the layer's output of signs
    (−, +, −)."""
    net = build_net([Flatten(name="flat"), Dense(4, name="hidden"), layer], (3,))
    hidden = net.layer("hidden").params
    hidden["W"][1], hidden["b"][1] = 0.0, 1.0
    fc = net.layer("fc").params["W"]
    fc[:, 1] = np.abs(fc[:, 1]) + 0.1
    x, y = batch(net, MSE())
    x[:, 0] = [1.0, -1.0, 2.0]
    y[[0, 2]], y[1] = 10.0, -10.0
    return net, x, y


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen_forward", "none"])
def test_a_users_layer_with_frozen_forward_is_checked_at_its_kinks(frozen: bool) -> None:
    """W[1, 0] of the saturating unit (batch-mean loss, g_n the delta at the layer's output, unit 1):
    backpropagation (every sample on [−1, 1]) claims Σ_n g_n x_n0 / 3; moving it up, only sample 1 stays
    inside: forward derivative g_1·(−1)/3; down, samples 0 and 2: backward (g_0 + 2 g_2)/3.  Both have
    g_0's sign, so the claim lies outside their interval.  With ``frozen_forward`` the state is held (all
    inside) and the central difference is the claim: KINK.  Without it the one-sided values cannot decide:
    UNCHECKED, never FAIL (as for any layer the checker cannot hold)."""
    layer = (FrozenHardTanh if frozen else HardTanh)(name="ht")
    net, x, y = saturating_unit_net(layer)
    res = gradcheck(net, MSE(), x, y)
    _, deltas, _ = clean_gradients(net, MSE(), x, y)
    g = deltas["ht"][:, 1]
    assert np.sign(g).tolist() == [-1, 1, -1] and res.row("ht", "delta").status == PASS
    claim, fwd, bwd = (g * x[:, 0]).sum() / 3, -g[1] / 3, (g[0] + 2 * g[2]) / 3
    row = res.row("hidden", "W")
    d = row.detail
    assert d is not None
    at = int(np.flatnonzero(d.index == np.ravel_multi_index((1, 0), (4, 3)))[0])
    assert d.analytic[at] == pytest.approx(claim, rel=1e-12)
    assert row.n_fail == 0 and res.passed
    if frozen:
        assert d.status[at] == KINK and d.numeric[at] == pytest.approx(claim, rel=1e-7)
        assert row.status == KINK and row.n_unchecked == 0 and res.ok(strict=True)
    else:
        assert d.status[at] == UNCHECKED and np.isnan(d.error[at])
        assert d.forward[at] == pytest.approx(fwd, rel=1e-7)
        assert d.backward[at] == pytest.approx(bwd, rel=1e-7)
        assert row.status == UNCHECKED and not res.ok(strict=True)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen_forward", "none"])
def test_a_users_layer_is_held_on_the_local_path(frozen: bool) -> None:
    """conv → hard tanh → max pool: over a blank corner the conv's pre-activation is its bias, exactly 1 (the
    kink), and an input pixel there moves the units of the filters' weights of both signs in opposite
    directions.  Held in its state (propagated locally, by boxes), every such element is decided: KINK;
    without ``frozen_forward`` some cannot be: UNCHECKED, and nothing FAILs either way."""
    layer = (FrozenHardTanh if frozen else HardTanh)(name="ht")
    net = build_net([Conv2D(2, 2, name="conv"), layer, MaxPool(2, name="pool"), Flatten(name="flat")],
                    (1, 7, 7))  # fmt: skip
    net.layer("conv").params["W"][0, 0] = [[1.0, -1.0], [-1.0, 1.0]]
    net.layer("conv").params["b"][...] = 1.0
    x, y = batch(net, SoftmaxCrossEntropy())
    x[:, :, :4, :4] = 0.0
    res = gradcheck(net, SoftmaxCrossEntropy(), x, y, layers=["input", "conv"])
    row = res.row("input", "input")
    assert FAIL not in statuses(res).values() and row.n_kink > 0
    assert (row.n_unchecked == 0) == frozen and res.ok(strict=True) == frozen


def test_changing_the_built_in_relu_derivative_at_zero_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """relu'(0) = 1 in the built-in relu's backward, its state (x > 0) unchanged: backpropagation no longer
    matches the piece the state selects, at every tie."""
    net, x, y = dead_unit_net()
    monkeypatch.setattr(ReLU, "backward", lambda self, dy: dy * (self._saved() >= 0))
    res = gradcheck(net, MSE(), x, y)
    assert res.row("hidden", "b").status == FAIL and res.row("hidden", "b").worst_index == (1,)
    assert res.row("hidden", "delta").status == FAIL


def test_deriv_weights_are_exact_for_polynomials() -> None:
    """p'(0) from k nodes is exact for polynomials of degree < k, whatever the nodes (one-sided or not)."""
    rng = np.random.default_rng(3)
    for k in (2, 3, 4, 5):
        t = np.sort(rng.uniform(-1, 1, (6, k)), axis=1)
        coef = rng.standard_normal((6, k))
        f = sum(coef[:, [i]] * t**i for i in range(k))
        np.testing.assert_allclose((_deriv_weights(t) * f).sum(axis=1), coef[:, 1], rtol=1e-9, atol=1e-9)
    h = 1e-3  # the textbook forward stencil: (−25, 48, −36, 16, −3) / 12h
    w = _deriv_weights(np.array([[0.0, h, 2 * h, 3 * h, 4 * h]]))
    np.testing.assert_allclose(w * 12 * h, [[-25, 48, -36, 16, -3]], rtol=1e-12)


# ---- low smoothness --------------------------------------------------------------------------------
def lp_case(p: float = 2.5) -> tuple[Sequential, np.ndarray, np.ndarray]:
    """An Lp pool (p = 2.5) on the input, one input −1.2e-3: within two Richardson steps (7.4e-4) of 0,
    where |x|^2.5 has an unbounded third derivative."""
    net = build_net([LpPool(2, p=p, name="lp"), Flatten(name="flat")], (2, 4, 4))
    x, y = batch(net, SoftmaxCrossEntropy(), m=3)
    x[0, 0, 0, 0] = -1.2e-3
    return net, x, y


@pytest.mark.parametrize("method", ["richardson", "central", "auto"])
def test_an_input_near_a_point_of_low_smoothness_does_not_fail(method: str) -> None:
    net, x, y = lp_case()
    res = gradcheck(net, SoftmaxCrossEntropy(), x, y, method=method)
    assert FAIL not in statuses(res).values(), [(r.layer, r.tensor, r.max_rel_error) for r in res.rows]
    row = res.row("input", "input")
    d = row.detail
    assert d is not None
    at = np.flatnonzero(d.index == 0)[0]
    if method == "richardson":  # its stencil reaches within 0.5e-3 of 0: central there instead
        assert d.rough[at] and row.n_rough >= 1
    assert d.status[at] == PASS and d.error[at] < 1e-7


class Pow25(Layer):
    """y = |x|^2.5 element-wise (smooth except at 0), saying so only when ``declared``."""

    analytic = False
    elementwise = True
    declared = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return np.abs(x) ** 2.5

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._saved()
        return dy * 2.5 * np.abs(x) ** 1.5 * np.sign(x)

    def kink_signature(self) -> np.ndarray:
        return np.sign(self._saved())

    def nonsmooth_distance(self) -> np.ndarray | None:
        return np.abs(self._saved()) if self.declared else None


@pytest.mark.parametrize("declared", [True, False])
def test_a_layer_declares_where_it_is_not_smooth(declared: bool) -> None:
    """Richardson at x = −1.2e-3 (h = 7.4e-4) on |x|^2.5: the declaration is what avoids a false FAIL."""
    layer = Pow25(name="pow")
    layer.declared = declared
    net = build_net([Flatten(name="flat"), Dense(4, name="hidden"), layer], (3,))
    x, y = batch(net, MSE())
    hidden = net.layer("hidden")
    hidden.params["b"][0] -= (x @ hidden.params["W"].T + hidden.params["b"])[0, 0] + 1.2e-3
    res = gradcheck(net, MSE(), x, y, method="richardson")
    row = res.row("hidden", "delta")
    if declared:
        assert row.status == PASS and row.n_rough >= 1, row
    else:
        assert row.status == FAIL and row.worst_index == (0, 0) and row.max_rel_error > 1e-5


def test_too_near_a_point_of_low_smoothness_is_unchecked() -> None:
    """At −1e-5 central's step (6e-6) would have to shrink ~600-fold: UNCHECKED, never a guess."""
    net, x, y = lp_case()
    x[0, 0, 0, 0] = -1e-5
    res = gradcheck(net, SoftmaxCrossEntropy(), x, y, method="central", layers=["input"])
    d = res.row("input", "input").detail
    assert d is not None
    at = np.flatnonzero(d.index == 0)[0]
    assert d.status[at] == UNCHECKED and d.rough[at]
    assert res.passed and not res.ok(strict=True)


# ---- directional mode ------------------------------------------------------------------------------
def test_directional_mode_checks_each_tensor_along_random_directions() -> None:
    net = analytic_net()
    x, y = batch(net, MSE())
    x *= 0.5
    res = gradcheck(net, MSE(), x, y, mode="directional", directions=5)
    assert res.mode == "directional" and res.directions == 5 and res.ok(strict=True)
    for row in res.rows:
        assert (row.mode, row.status, row.checked, row.directions) == ("directional", PASS, 5, 5)
        assert row.fallback == "" and row.directions_failed == 0
        assert row.worst_index[0] in range(5) and len(row.worst_index) == 1
        assert row.max_rel_error < 1e-7
    elements = gradcheck(net, MSE(), x, y)
    tensors = [(r.layer, r.tensor, r.total) for r in elements.rows]
    assert [(r.layer, r.tensor, r.total) for r in res.rows] == tensors


def scaled(monkeypatch: pytest.MonkeyPatch, layer: Layer, tensor: str, factor: float) -> None:
    """Make ``layer.backward`` scale a whole gradient (``dx`` or a parameter's) by ``factor``."""
    original = layer.backward

    def wrong(dy: np.ndarray) -> np.ndarray:
        dx = original(dy)
        if tensor == "dx":
            return dx * factor
        layer.grads[tensor] = layer.grads[tensor] * factor
        return dx

    monkeypatch.setattr(layer, "backward", wrong)


@pytest.mark.parametrize(("layer", "tensor", "row"), [
    ("conv", "W", ("conv", "W")), ("sub", "beta", ("sub", "beta")), ("hidden", "b", ("hidden", "b")),
    ("sig", "dx", ("hidden", "delta")),
])  # fmt: skip
def test_directional_mode_finds_a_1e_4_error_and_names_the_worst_element(
    monkeypatch: pytest.MonkeyPatch, layer: str, tensor: str, row: tuple[str, str]
) -> None:
    net = analytic_net()
    x, y = batch(net, MSE())
    x *= 0.5
    scaled(monkeypatch, net.layer(layer), tensor, 1 + 1e-4)
    res = gradcheck(net, MSE(), x, y, mode="directional")
    bad = res.row(*row)
    assert bad.status == FAIL and bad.fallback == FAIL and bad.mode == "elements"
    assert bad.checked == bad.total and bad.directions_failed >= 1
    assert bad.max_rel_error == pytest.approx(1e-4, rel=0.01)
    assert [(r.layer, r.tensor) for r in res.rows if r.status == FAIL][-1] == row


def test_directional_mode_samples_elements_of_a_tensor_whose_directions_cross_kinks() -> None:
    net = build_net([Conv2D(2, 2, name="conv"), ReLU(name="relu"), MaxPool(2, stride=1, name="pool"),
                 Flatten(name="flat")], (1, 9, 9))  # fmt: skip
    x, y = batch(net, SoftmaxCrossEntropy())
    x[:, :, :5, :5] = 0.0
    net.layer("conv").params["b"][...] = 0.0  # relu at exactly 0 over the blank corner
    res = gradcheck(net, SoftmaxCrossEntropy(), x, y, mode="directional")
    row = res.row("conv", "delta")
    assert row.fallback == KINK and row.mode == "elements" and row.checked == 64 < row.total
    assert row.detail is not None and np.argmax(np.abs(row.detail.analytic)) is not None
    assert FAIL not in statuses(res).values()
    assert res.row("fc", "W").mode == "directional"


# ---- progress ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["elements", "directional"])
def test_progress_reports_items_done_of_all(mode: str) -> None:
    net = build_net([Conv2D(2, 2, name="conv"), Tanh(name="act"), MeanPool(2, name="pool"),
                 Subsample(1, name="sub"), Sigmoid(name="sig"), Flatten(name="flat")], (1, 5, 5))  # fmt: skip
    x, y = batch(net, MSE())
    calls: list[tuple[int, int]] = []
    res = gradcheck(net, MSE(), x, y, mode=mode, progress=lambda done, total: calls.append((done, total)))
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]
    if mode == "elements":
        assert calls[-1][1] == sum(r.checked for r in res.rows) and len(calls) >= len(res.rows)
    else:
        assert calls[-1][1] == 16 * len(res.rows)
