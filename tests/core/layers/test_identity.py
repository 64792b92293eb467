"""Identity (``core/layers/identity.py``): a = z, a named point whose δ is recorded."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers import Identity
from tests.core.conftest import ElementwiseLayerTests


class TestIdentity(ElementwiseLayerTests):
    make = Identity
    label = "identity"


def test_passes_values_through_unchanged(rng: np.random.Generator) -> None:
    """forward gives x's values and backward dy's, bit for bit and in their dtype."""
    layer = Identity()
    x, dy = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3))
    y = layer.forward(x)
    assert y.dtype == np.float32 and np.array_equal(y, x)
    dx = layer.backward(dy)
    assert dx.dtype == np.float64 and np.array_equal(dx, dy)
    assert Identity.analytic and (Identity.onnx_op, Identity.torch_op) == ("Identity", "Identity")
