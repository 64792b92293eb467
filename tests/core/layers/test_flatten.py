"""Flatten (``core/layers/flatten.py``): C-major order, backward reshapes back, the memory contract."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.layers import Flatten
from tests.core import conftest as shared
from tests.fd import check_layer


@pytest.mark.parametrize("shape", [(2, 3, 2, 4), (1, 1, 3, 5)])
def test_flatten(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """Flatten: C-major order, and backward reshapes the delta back (checked by FD)."""
    layer = shared.build(Flatten(), shape[1:], rng)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    n, c, h, w = shape
    for ci in range(c):
        for i in range(h):
            for j in range(w):
                assert y[0, ci * h * w + i * w + j] == x[0, ci, i, j]
    check_layer("flatten", layer, x, rng)


def test_no_hyper_parameters_and_any_rank() -> None:
    """No hyper-parameters or parameters; any per-sample shape flattens to its size."""
    layer = Flatten()
    assert layer.hyper() == {} and layer.param_shapes((2, 3, 4)) == {} and layer.window() is None
    assert layer.output_shape((2, 3, 4)) == (24,) and layer.output_shape((5,)) == (5,)
    assert (Flatten.kind, Flatten.elementwise, Flatten.param_names) == ("flatten", False, ())


def test_results_survive_later_calls_and_match_a_fresh_layer() -> None:
    """Returned arrays, x and dy are never overwritten; a used layer equals a fresh one."""
    shared.check_results_survive_later_calls(Flatten, shared.IMAGE)


def test_backward_before_forward() -> None:
    """backward() before any forward() raises RuntimeError."""
    shared.assert_backward_before_forward_raises(Flatten(name="flat"), (1, 4, 4))
