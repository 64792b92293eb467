"""Inverted dropout: in training each value is kept with probability 1 − rate and scaled by 1/(1 − rate)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np

from cnnbp.core.hyper import Bound
from cnnbp.core.layers.base import Layer, Window
from cnnbp.core.registry import register_layer


@register_layer("dropout")
class Dropout(Layer):
    """Inverted dropout (SPEC §6), rate in [0, 1).

    Phase ``train``: ``y = x · mask / (1 − rate)`` with ``mask ~ Bernoulli(1 − rate)`` drawn from
    ``self.rng`` (the trainer sets it from (seed, step) before every update, so a resumed run draws
    the same masks; without one, a generator of the layer's own seeded once with 0); backward
    multiplies ``dy`` by the same ``mask / (1 − rate)``.  Phases ``probe`` and ``eval``: the identity
    (the expected value of the training output), so the probe batch and the gradient checker see a
    deterministic network.  The draws are float64 uniforms whatever the dtype, so a float32 and a
    float64 run of the same seed drop the same values.

    Not ``elementwise`` (that would make it a valid ``activation:`` key), but a 1×1 ``window``: an
    output element depends on the input element at its place alone, which lets the checker carry
    single-element perturbations through it locally (in ``probe`` it is the identity).
    """

    stochastic = True
    onnx_op = "Identity"  # inference: dropout is omitted

    def __init__(
        self, rate: Annotated[float, Bound(ge=0, lt=1)] = 0.5, name: str | None = None, init: Any = None
    ) -> None:
        super().__init__(name, init)
        self._set_hyper(rate=rate)
        self._scale: np.ndarray | None = None
        self._own_rng: np.random.Generator | None = None

    def window(self) -> Window | None:
        return ((1, 1), (1, 1), (0, 0))

    def _generator(self) -> np.random.Generator:
        if self.rng is not None:
            return self.rng
        if self._own_rng is None:
            self._own_rng = np.random.default_rng(0)
        return self._own_rng

    def draw_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """A keep mask of ``shape`` (True with probability 1 − rate) from the layer's generator."""
        return self._generator().random(shape) < 1.0 - self.rate

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        if self.phase != "train" or self.rate == 0.0:
            self._scale = None
            return x
        dtype = x.dtype if np.issubdtype(x.dtype, np.inexact) else np.float64
        scale = self.draw_mask(x.shape).astype(dtype)
        scale *= 1.0 / (1.0 - self.rate)
        self._scale = scale
        return x * scale

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy · mask / (1 − rate)`` with the last training forward's mask; ``dy`` in probe and eval."""
        self._saved()
        if self._scale is None:
            return dy
        return dy * self._scale

    @property
    def mask(self) -> np.ndarray | None:
        """The keep mask of the last forward (None when it was the identity)."""
        return None if self._scale is None else self._scale != 0

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        return t.nn.Dropout(self.rate), {}
