"""Dense (``core/layers/dense.py``): ``z = W a + b`` — finite differences, the feature-vector check,
the units check, the memory contract."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cnnbp.core.init import GlorotUniform, Zeros
from cnnbp.core.layers import Conv2D, Dense
from tests.core import conftest as shared
from tests.fd import check_layer


@pytest.mark.parametrize(("units_in", "units_out", "n"), [(5, 3, 1), (7, 4, 3), (1, 2, 2), (6, 1, 4)])
def test_backward_matches_finite_differences(
    units_in: int, units_out: int, n: int, rng: np.random.Generator
) -> None:
    """Dense: ∂L/∂a, ∂L/∂W and ∂L/∂b match finite differences."""
    layer = shared.build(Dense(units_out), (units_in,), rng)
    assert layer.params["W"].shape == (units_out, units_in)
    check_layer("dense", layer, rng.standard_normal((n, units_in)), rng)


def test_dense_fed_an_image() -> None:
    """Dense on a C×H×W tensor (no flatten) is rejected, naming the dense layer."""
    err = shared.summary_error([Conv2D(2, 3, name="conv"), Dense(4, name="fc")], (1, 6, 6))
    shared.assert_names(err, "fc")
    assert re.search(shared.shape_pattern((2, 4, 4)), str(err))


@pytest.mark.parametrize(
    ("units", "detail"),
    [(0, "expected an integer ≥ 1, got 0"), (2.0, "expected an integer ≥ 1, got 2.0"),
     (False, "expected an integer ≥ 1, got False"), ("3", "expected an integer ≥ 1, got '3'")],
    ids=["zero", "float", "bool", "str"],
)
def test_rejects_bad_units(units: object, detail: str) -> None:
    """``units`` must be an integer ≥ 1, checked when the layer is made."""
    shared.assert_hyper_error(lambda: Dense(units, name="fc"), "fc", "units", detail)


def test_parameters_and_fans() -> None:
    """W is (units_out, units_in), b (units_out,); Glorot-uniform W and zero b by default; no window."""
    layer = Dense(np.int64(3))
    assert layer.units == 3 and type(layer.units) is int and layer.hyper() == {"units": 3}
    assert layer.param_shapes((5,)) == {"W": (3, 5), "b": (3,)} and layer.fans((5,)) == (5, 3)
    assert (Dense.kind, Dense.param_names, Dense.elementwise) == ("dense", ("W", "b"), False)
    assert layer.window() is None
    inits = layer.default_init()
    assert isinstance(inits["W"], GlorotUniform) and isinstance(inits["b"], Zeros)


def test_results_survive_later_calls_and_match_a_fresh_layer() -> None:
    """Returned arrays, x and dy are never overwritten; a used layer equals a fresh one."""
    shared.check_results_survive_later_calls(lambda: Dense(4), (5,))


def test_backward_before_forward() -> None:
    """backward() before any forward() raises RuntimeError."""
    shared.assert_backward_before_forward_raises(Dense(3, name="dense"), (5,))
