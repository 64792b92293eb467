"""LeakyReLU (``core/layers/leaky_relu.py``): g = z for z > 0, αz otherwise; g' = 1 or α (α at the kink)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from cnnbp.core.errors import ShapeError
from cnnbp.core.layers import LeakyReLU
from tests.core.conftest import (
    ACTIVATION_SHAPES,
    IMAGE,
    assert_backward_before_forward_raises,
    check_activation,
    check_results_survive_later_calls,
)


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("shape", ACTIVATION_SHAPES)
def test_backward_matches_finite_differences(
    alpha: float, shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    check_activation(f"leaky_relu α={alpha}", LeakyReLU(alpha), shape, rng)


def test_forward_is_z_or_alpha_z_and_nan_stays_nan() -> None:
    y = LeakyReLU(0.1).forward(np.array([[-2.0, -0.5, 0.0, 0.25, 3.0, np.nan]]))
    np.testing.assert_array_equal(y[0, :5], [-0.2, -0.05, 0.0, 0.25, 3.0])
    assert np.isnan(y[0, 5])


def test_the_derivative_at_zero_is_alpha_and_the_signature_is_the_mask() -> None:
    """The subgradient taken at z = 0 is the left slope α, as relu'(0) = 0."""
    layer = LeakyReLU(0.2)
    layer.forward(np.array([[0.0, -1.0, 1.0]]))
    np.testing.assert_array_equal(layer.backward(np.ones((1, 3))), [[0.2, 0.2, 1.0]])
    np.testing.assert_array_equal(layer.kink_signature(), [[False, False, True]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype: type, rng: np.random.Generator) -> None:
    layer = LeakyReLU()
    x = rng.standard_normal((4, 6)).astype(dtype)
    assert layer.forward(x).dtype == dtype and layer.backward(np.ones_like(x)).dtype == dtype


def test_results_survive_later_calls_and_match_a_fresh_layer() -> None:
    check_results_survive_later_calls(partial(LeakyReLU, 0.05), IMAGE)


def test_backward_before_forward() -> None:
    assert_backward_before_forward_raises(LeakyReLU(name="leaky"), (5,))


def test_class_facts() -> None:
    """Element-wise, one hyper-parameter, a kink (not analytic), He-normal weights before it."""
    layer = LeakyReLU()
    assert (layer.kind, layer.elementwise, layer.analytic, layer.init_before) == (
        "leaky_relu",
        True,
        False,
        "he_normal",
    )
    assert layer.hyper() == {"alpha": 0.01} and LeakyReLU.from_hyper({"alpha": 0.2}).alpha == 0.2


@pytest.mark.parametrize("alpha", [-0.1, 1.0, True, "0.1"])
def test_alpha_must_be_in_0_1(alpha: object) -> None:
    with pytest.raises(ShapeError) as info:
        LeakyReLU(alpha)  # type: ignore[arg-type]
    assert info.value.key == "alpha"
    assert info.value.detail == f"expected a number in [0, 1), got {alpha!r}"
