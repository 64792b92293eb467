"""core/contract.py: the layer API checked on one layer — here its optional frozen forward (the other
rules are exercised through plugins in tests/cli/test_plugins.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.contract import api_problems
from cnnbp.core.layers import MaxPool, ReLU
from cnnbp.core.layers.base import Layer, Shape


class Clip(Layer):
    """y = min(max(x, −1), 1): kinks at ±1, state −1 / 0 / +1 (below, between, above)."""

    analytic = False

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return np.clip(x, -1.0, 1.0)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * (np.abs(self._x) < 1)

    def kink_signature(self) -> np.ndarray:
        return np.sign(self._x) * (np.abs(self._x) >= 1)

    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        return np.where(signature == 0, x, signature).astype(x.dtype)


class WrongClip(Clip):
    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        return x  # ignores the state: x where forward clips


class WideClip(Clip):
    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        return super().frozen_forward(x, signature).astype(np.float32)


def problems(layer: Layer, shape: Shape, dtype: type = np.float64) -> list[str]:
    layer.build(shape, np.random.default_rng(0), dtype)
    # standard normal inputs: about a third of them beyond ±1, so the clip's state matters
    return api_problems(layer, shape, dtype, np.random.default_rng(1), batch=4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_frozen_forward_that_is_the_forward_at_its_own_state_passes(dtype: type) -> None:
    assert problems(Clip(name="c"), (2, 5), dtype) == []
    assert problems(ReLU(name="r"), (2, 5), dtype) == []
    assert problems(MaxPool(2, name="p"), (2, 4, 6), dtype) == []


def test_a_frozen_forward_that_ignores_the_state_is_named() -> None:
    (problem,) = problems(WrongClip(name="c"), (2, 5))
    assert problem.startswith("frozen_forward(x, kink_signature()) differs from forward(x) by up to ")


def test_a_frozen_forward_of_another_dtype_is_named() -> None:
    assert problems(WideClip(name="c"), (2, 5)) == [
        "frozen_forward returns float32 (4, 2, 5), forward float64 (4, 2, 5)"
    ]


def test_a_subclass_with_its_own_forward_is_not_held_to_its_parents_frozen_forward() -> None:
    class Shifted(Clip):
        def forward(self, x: np.ndarray) -> np.ndarray:
            self._x = x
            return np.clip(x, -1.0, 1.0) + 1.0  # Clip's frozen forward does not follow this

    assert problems(Shifted(name="c"), (2, 5)) == []
