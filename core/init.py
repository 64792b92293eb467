"""Parameter initialisers; every random draw takes a ``numpy.random.Generator``."""

from __future__ import annotations

import numpy as np

from cnnbp.core.errors import ShapeError

Shape = tuple[int, ...]


class Initializer:
    """Callable ``(shape, fan_in, fan_out, rng, dtype, where) -> array`` of ``dtype``.

    A scheme implements ``draw``; ``where`` (``layer.param``) names the parameter in errors.
    """

    name = "initializer"

    def __call__(
        self,
        shape: Shape,
        fan_in: int,
        fan_out: int,
        rng: np.random.Generator,
        dtype: np.dtype,
        where: str = "",
    ) -> np.ndarray:
        return self.draw(tuple(shape), fan_in, fan_out, rng, where).astype(dtype, copy=False)

    def draw(
        self, shape: Shape, fan_in: int, fan_out: int, rng: np.random.Generator, where: str
    ) -> np.ndarray:
        """The values, in float64 (``__call__`` casts them)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GlorotUniform(Initializer):
    """U(−r, r) with r = sqrt(6 / (fan_in + fan_out)), as DeepLearnToolbox's ``cnnsetup``.

    For conv, fan_in = in_maps·kh·kw and fan_out = out_maps·kh·kw (SPEC §4).
    """

    name = "glorot_uniform"

    def draw(
        self, shape: Shape, fan_in: int, fan_out: int, rng: np.random.Generator, where: str
    ) -> np.ndarray:
        r = np.sqrt(6.0 / (fan_in + fan_out))
        # DLT draws (rand − 0.5)·2·r; rng.uniform(−r, r) is the same distribution.
        return rng.uniform(-r, r, size=shape)


class HeNormal(Initializer):
    """N(0, 2 / fan_in), the default before a relu."""

    name = "he_normal"

    def draw(
        self, shape: Shape, fan_in: int, fan_out: int, rng: np.random.Generator, where: str
    ) -> np.ndarray:
        return rng.standard_normal(size=shape) * np.sqrt(2.0 / fan_in)


class Zeros(Initializer):
    """All zeros (the default for biases)."""

    name = "zeros"

    def draw(
        self, shape: Shape, fan_in: int, fan_out: int, rng: np.random.Generator, where: str
    ) -> np.ndarray:
        return np.zeros(shape)


class Constant(Initializer):
    """Every element ``value``."""

    name = "constant"

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def draw(
        self, shape: Shape, fan_in: int, fan_out: int, rng: np.random.Generator, where: str
    ) -> np.ndarray:
        return np.full(shape, self.value)

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class Explicit(Initializer):
    """Given values; their shape must equal the parameter's."""

    name = "explicit"

    def __init__(self, values: np.ndarray | list) -> None:
        self.values = np.asarray(values, dtype=np.float64)

    def draw(
        self, shape: Shape, fan_in: int, fan_out: int, rng: np.random.Generator, where: str
    ) -> np.ndarray:
        if self.values.shape != shape:
            layer, _, key = where.rpartition(".")
            problem = f"init {key or 'values'} has shape {self.values.shape}, expected {tuple(shape)}"
            raise ShapeError(layer or "init", problem)
        return self.values.copy()  # the caller owns (and may update) the parameter array

    def __repr__(self) -> str:
        return f"Explicit(shape={self.values.shape})"


SCHEMES: dict[str, type[Initializer]] = {
    "glorot_uniform": GlorotUniform,
    "he_normal": HeNormal,
    "zeros": Zeros,
}
