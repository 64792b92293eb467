"""The layer protocol: forward/backward, ``params`` and ``grads`` dicts with the same keys."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cnnbp.core.errors import ShapeError
from cnnbp.core.init import Initializer, Zeros

Shape = tuple[int, ...]

#: Largest scratch array a layer keeps between calls (bigger ones are allocated per call).
WORK_CACHE_BYTES = 64 * 2**20


class Layer:
    """A network layer.

    Subclasses implement ``output_shape`` (per-sample shapes, no batch axis),
    ``forward`` and ``backward``; parametric layers also ``param_shapes`` and
    ``fans``.  ``backward(dy)`` takes ∂L/∂y for the batch, returns ∂L/∂x and
    stores ∂L/∂θ in ``grads`` (summed over the batch: whatever scalar ``dy`` is
    the gradient of).  ``dy`` is never modified in place.
    """

    kind: str = "layer"
    #: True when the forward pass is a holomorphic function of inputs and params,
    #: so complex-step differentiation applies.
    analytic: bool = True

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.init: dict[str, Initializer] = {}
        self.input_shape: Shape | None = None
        self._x: np.ndarray | None = None
        self._work: dict[str, tuple[tuple, np.ndarray]] = {}

    # ---- shapes ------------------------------------------------------------------
    def output_shape(self, input_shape: Shape) -> Shape:
        """Per-sample output shape for a per-sample input shape; raises ShapeError."""
        return input_shape

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Shapes of the parameters this layer would have for ``input_shape``."""
        return {}

    def fans(self, input_shape: Shape) -> tuple[int, int]:
        """(fan_in, fan_out) used by the Glorot and He initialisers."""
        return (1, 1)

    def hyper(self) -> dict[str, object]:
        """Hyper-parameters as plain values (for summaries and checkpoints)."""
        return {}

    # ---- parameters ------------------------------------------------------------------
    def build(self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> None:
        """Allocate and initialise the parameters for ``input_shape``."""
        self.output_shape(input_shape)  # validates
        self.input_shape = tuple(input_shape)
        fan_in, fan_out = self.fans(input_shape)
        self.params = {}
        for key, shape in self.param_shapes(input_shape).items():
            init = self.init.get(key, Zeros())
            self.params[key] = init(shape, fan_in, fan_out, rng, dtype, where=f"{self.name}.{key}")
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @property
    def n_params(self) -> int:
        """Number of parameter values held (0 before ``build``)."""
        return int(sum(p.size for p in self.params.values()))

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace parameter values (checked against the current shapes), keeping dtype."""
        for key, value in values.items():
            if key not in self.params:
                raise ShapeError(self.name, f"has no parameter {key!r} (it has {sorted(self.params)})")
            arr = np.asarray(value)
            if arr.shape != self.params[key].shape:
                raise ShapeError(
                    self.name, f"parameter {key} has shape {self.params[key].shape}, got {arr.shape}"
                )
            self.params[key][...] = arr

    # ---- computation ------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """y for a batch x, caching what ``backward`` needs."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """∂L/∂x from ∂L/∂y of the last ``forward``; fills ``grads`` (batch sums)."""
        raise NotImplementedError

    def backward_params(self, dy: np.ndarray) -> None:
        """Fill ``grads`` from ``dy`` like ``backward``, without computing ∂L/∂x.

        ``Sequential`` calls this on its first layer when the input gradient is not
        wanted (training).  Layers whose ∂L/∂x costs real work override it.
        """
        if self.params:
            self.backward(dy)

    def _work_array(
        self, role: str, shape: Shape, dtype: np.dtype, zero: bool = False, tag: object = None
    ) -> np.ndarray:
        """A scratch array private to this layer, reused across calls with the same shape and dtype.

        Reusing large temporaries (im2col columns, padded inputs) instead of allocating
        them every step avoids returning their pages to the OS and faulting them back.
        Only internal temporaries come from here — never an array returned to a caller —
        and a later call may overwrite it.  One array per role is kept: a new shape or
        dtype (or ``tag``) replaces it, and arrays over ``WORK_CACHE_BYTES`` (say a
        forward pass over a whole test set) are not kept at all.  ``zero`` zero-fills a
        new array, for callers that never write some of its entries (a padding border);
        ``tag`` then names whatever else decides which entries those are.
        """
        key = (tuple(shape), np.dtype(dtype), tag)
        if int(np.prod(shape)) * key[1].itemsize > WORK_CACHE_BYTES:
            return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        entry = self._work.get(role)
        if entry is None or entry[0] != key:
            entry = (key, np.zeros(shape, dtype) if zero else np.empty(shape, dtype))
            self._work[role] = entry
        return entry[1]

    def _saved(self) -> np.ndarray:
        if self._x is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        return self._x

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({self.name!r}{', ' if args else ''}{args})"


def pair(value: int | tuple[int, int] | list[int], what: str, layer: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair; raises ShapeError for anything else."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ShapeError(layer, f"{what} must be an int or a pair of ints, got {value!r}")


def positive_int(value: object, what: str, layer: str) -> int:
    """``value`` as an int when it is an int ≥ 1 (not a bool); raises ShapeError for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ShapeError(layer, f"{what} must be a positive int, got {value!r}")
    return int(value)


def expect_rank(layer: str, input_shape: Shape, rank: int, what: str) -> None:
    """Raise ShapeError unless the per-sample ``input_shape`` has ``rank`` axes (``what`` says which)."""
    if len(input_shape) != rank:
        raise ShapeError(
            layer, f"expects {what} per sample, got shape {tuple(input_shape)}"
        )
