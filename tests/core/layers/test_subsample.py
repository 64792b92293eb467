"""Subsample (``core/layers/subsample.py``): ``z = β·down(x) + b`` — finite differences and the loop
reference with remainders, the scale check, the memory contract."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.init import Constant, Zeros
from cnnbp.core.layers import Subsample
from tests.core import conftest as shared
from tests.core import reference as ref
from tests.fd import check_layer


@pytest.mark.parametrize("case", shared.SUBSAMPLE_CASES, ids=shared.subsample_id)
def test_backward_matches_finite_differences(case: tuple, rng: np.random.Generator) -> None:
    """Subsample: ∂L/∂X, ∂L/∂β and ∂L/∂b match finite differences (remainders dropped)."""
    c, h, w, k, n = case
    layer = shared.build(Subsample(k), (c, h, w), rng)
    assert set(layer.params) == {"beta", "b"}
    check_layer("subsample", layer, rng.standard_normal((n, c, h, w)), rng)


@pytest.mark.parametrize("case", shared.SUBSAMPLE_CASES, ids=shared.subsample_id)
def test_matches_reference(case: tuple, rng: np.random.Generator) -> None:
    """Subsample: β·down(x) + b, β·up(δ), ∂L/∂β = Σ δ∘down(x), ∂L/∂b = Σ δ."""
    c, h, w, k, n = case
    layer = shared.build(Subsample(k), (c, h, w), rng)
    x = rng.standard_normal((n, c, h, w))
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    beta, b = layer.params["beta"], layer.params["b"]

    def backward(xi: np.ndarray, di: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rdx, rdbeta, rdb = ref.subsample_backward(xi, di, beta, k)
        return rdx, {"beta": rdbeta, "b": rdb}

    shared.assert_matches_reference(layer, x, d, lambda xi: ref.subsample_forward(xi, beta, b, k), backward)


def test_subsample_scale_larger_than_input() -> None:
    """A subsample scale larger than the map is rejected, naming it."""
    shared.assert_names(shared.summary_error([Subsample(3, name="sub")], (2, 5, 2)), "sub")


@pytest.mark.parametrize(
    ("make", "layer", "detail"),
    [
        (lambda: Subsample(0, name="bad"), "bad", "expected an integer ≥ 1, got 0"),
        (lambda: Subsample(True), "subsample", "expected an integer ≥ 1, got True"),
        (lambda: Subsample((2, 2)), "subsample", "expected an integer ≥ 1, got (2, 2)"),
    ],
    ids=["subsample-0", "bool", "pair"],
)
def test_scale_that_can_produce_no_output(make, layer: str, detail: str) -> None:
    """A scale < 1 (or not an int) is rejected when the layer is made, naming it and ``scale``."""
    shared.assert_hyper_error(make, layer, "scale", detail)


def test_window_and_initial_mean_pool() -> None:
    """Scale k is a k×k window at stride k; β starts at 1/k² (a mean pool), b at 0."""
    layer = Subsample(3)
    assert layer.hyper() == {"scale": 3} and layer.window() == ((3, 3), (3, 3), (0, 0))
    assert (Subsample.kind, Subsample.param_names) == ("subsample", ("beta", "b"))
    inits = layer.default_init()
    assert isinstance(inits["beta"], Constant) and inits["beta"].value == 1.0 / 9
    assert isinstance(inits["b"], Zeros)
    assert layer.param_shapes((4, 7, 6)) == {"beta": (4,), "b": (4,)}
    assert layer.output_shape((4, 7, 6)) == (4, 2, 2)


def test_results_survive_later_calls_and_match_a_fresh_layer() -> None:
    """Returned arrays, x and dy are never overwritten; a used layer equals a fresh one."""
    shared.check_results_survive_later_calls(lambda: Subsample(2), shared.IMAGE)


def test_backward_before_forward() -> None:
    """backward() before any forward() raises RuntimeError."""
    shared.assert_backward_before_forward_raises(Subsample(2, name="sub"), (1, 4, 4))
