"""The layer protocol: forward/backward, ``params`` and ``grads`` dicts with the same keys, and the facts
every other part of cnnbp reads from a layer's class (its kind, hyper-parameters, kinks, geometry,
export mappings)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cnnbp.core.errors import ShapeError
from cnnbp.core.hyper import check_hyper, hyper_params, hyper_values
from cnnbp.core.init import GlorotUniform, Initializer, Zeros

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cnnbp.core.network import LayerInfo

Shape = tuple[int, ...]
#: (kernel, stride, padding) of a windowed layer, each an (h, w) pair
Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

#: Largest scratch array a layer keeps between calls (bigger ones are allocated per call).
WORK_CACHE_BYTES = 64 * 2**20


class Layer:
    """A network layer.

    Subclasses implement ``output_shape`` (per-sample shapes, no batch axis), ``forward`` and
    ``backward``; parametric layers also ``param_shapes``, ``param_names`` and ``fans``.
    ``backward(dy)`` takes ∂L/∂y for the batch, returns ∂L/∂x and stores ∂L/∂θ in ``grads`` (summed
    over the batch: whatever scalar ``dy`` is the gradient of).  ``dy`` is never modified in place.

    Hyper-parameters are the constructor's arguments (``name`` and ``init`` aside), annotated with
    their types (see :mod:`cnnbp.core.hyper`) and kept as attributes of the same names:
    ``hyper()`` reads them back and ``from_hyper`` rebuilds the layer, so the config schema, the
    checkpoint's ``/model`` record and the rebuild all follow from the signature.
    """

    #: the config ``type:`` (set by ``register_layer``)
    kind: ClassVar[str] = "layer"
    #: True when the forward pass is a holomorphic function of inputs and params (complex step applies)
    analytic: ClassVar[bool] = True
    #: True when output element i depends on input element i alone (activations): the checker
    #: propagates a perturbation through such a layer locally, and a config entry may name it as an
    #: ``activation:`` of a parametric layer
    elementwise: ClassVar[bool] = False
    #: names of the trainable parameters, the weight first (a bare ``init: <scheme>`` applies to it)
    param_names: ClassVar[tuple[str, ...]] = ()
    #: the weight initialiser a parametric layer followed by this layer defaults to (None: its own)
    init_before: ClassVar[str | None] = None
    #: an ONNX operator with no attributes computing this layer (element-wise layers), else None
    onnx_op: ClassVar[str | None] = None
    #: the ``torch.nn`` module class computing this layer with no arguments, else None
    torch_op: ClassVar[str | None] = None
    #: True when a sample's output depends on the other samples of the batch (batchnorm's batch
    #: statistics): the checker then perturbs whole batches instead of stacking single samples
    couples_batch: ClassVar[bool] = False
    #: True when the training forward pass draws random numbers (dropout): from ``self.rng``, which
    #: the trainer sets for every optimiser step from (seed, step)
    stochastic: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Layer:
        layer = super().__new__(cls)
        # the arguments as given, for hyper() of a layer that does not keep them as attributes
        layer._given = (args, kwargs)
        return layer

    def __init__(self, name: str | None = None, init: Mapping[str, Initializer] | None = None) -> None:
        self.name = name or self.kind
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.init: dict[str, Initializer] = dict(init or {})
        #: non-trainable buffers (batchnorm's running statistics), saved in every checkpoint
        self.state: dict[str, np.ndarray] = {}
        #: ``train`` (random draws, batch statistics that update the running ones), ``probe``
        #: (deterministic, batch statistics, nothing updated: the probe batch and the checker) or
        #: ``eval`` (deterministic, running statistics); see ``Sequential.in_phase``
        self.phase: str = "train"
        self.rng: np.random.Generator | None = None
        self.input_shape: Shape | None = None
        self._x: np.ndarray | None = None
        self._work: dict[str, tuple[tuple, np.ndarray]] = {}

    # ---- hyper-parameters ----------------------------------------------------------------------
    @classmethod
    def from_hyper(
        cls,
        hyper: Mapping[str, Any],
        *,
        name: str | None = None,
        init: Mapping[str, Initializer] | None = None,
    ) -> Layer:
        """The layer with these hyper-parameters (as ``hyper()`` gives them)."""
        return cls(**hyper, name=name, init=init)

    def hyper(self) -> dict[str, Any]:
        """Hyper-parameters as plain values (pairs as lists), keyed like the constructor's arguments.

        Each is read from the attribute of the same name, or, for a layer that does not keep one,
        taken from the arguments it was built with.
        """
        spec = self._spec_class()
        missing = [p for p in hyper_params(spec) if not hasattr(self, p.name)]
        if missing:
            args, kwargs = getattr(self, "_given", ((), {}))
            bound = inspect.signature(spec.__init__).bind_partial(self, *args, **kwargs).arguments
            for p in missing:
                setattr(self, p.name, bound.get(p.name, p.default))
        return hyper_values(self, spec)

    def _spec_class(self) -> type:
        """The class whose ``__init__`` declares this layer's hyper-parameters: the nearest one in the
        class hierarchy that defines its own (``Pool`` for a ``MaxPool``, which has none)."""
        return next(c for c in type(self).__mro__ if "__init__" in vars(c))

    def _set_hyper(self, **values: Any) -> None:
        """Check each value against its annotation and keep it as an attribute (pairs as tuples).

        A value that does not fit is a ShapeError naming this layer and the argument (``key``).
        """
        for key, value in values.items():
            try:
                checked = check_hyper(self._spec_class(), {key: value})[key]
            except ValueError as e:
                raise ShapeError(self.name, str(e).partition(": ")[2], key=key) from None
            setattr(self, key, checked)

    # ---- shapes ------------------------------------------------------------------------------------
    def output_shape(self, input_shape: Shape) -> Shape:
        """Per-sample output shape for a per-sample input shape; raises ShapeError."""
        return input_shape

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Shapes of the parameters this layer would have for ``input_shape``."""
        return {}

    def fans(self, input_shape: Shape) -> tuple[int, int]:
        """(fan_in, fan_out) used by the Glorot and He initialisers; by default those of the first
        parameter (the weight) read as PyTorch does: (out, in, *kernel) → in·k, out·k."""
        shapes = list(self.param_shapes(input_shape).values())
        if not shapes or len(shapes[0]) < 2:
            return (1, 1)
        out, inp, *kernel = shapes[0]
        k = int(np.prod(kernel)) if kernel else 1
        return inp * k, out * k

    def scratch_size(self, input_shape: Shape) -> int:
        """Values per sample the layer keeps between forward and backward besides its input and output
        (a conv's im2col columns); memory estimates count them."""
        return 0

    def window(self) -> Window | None:
        """(kernel, stride, padding) when the layer is a translation-equivariant window over its input
        (one output element depends only on the inputs under its window), else None."""
        return None

    # ---- parameters ------------------------------------------------------------------------------
    def default_init(self) -> dict[str, Initializer]:
        """The initialiser of each parameter when ``init`` does not name one: by default Glorot-uniform
        for the first parameter (the weight) and zeros for the others."""
        return {}

    def build(self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> None:
        """Allocate and initialise the parameters for ``input_shape``."""
        self.output_shape(input_shape)  # validates
        self.input_shape = tuple(input_shape)
        fan_in, fan_out = self.fans(input_shape)
        defaults = self.default_init()
        self.params = {}
        for i, (key, shape) in enumerate(self.param_shapes(input_shape).items()):
            fallback = GlorotUniform() if i == 0 and not defaults else Zeros()
            init = self.init.get(key) or defaults.get(key) or fallback
            self.params[key] = init(shape, fan_in, fan_out, rng, dtype, where=f"{self.name}.{key}")
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @property
    def n_params(self) -> int:
        """Number of parameter values held (0 before ``build``)."""
        return int(sum(p.size for p in self.params.values()))

    # ---- computation -------------------------------------------------------------------------------
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

    # ---- export mappings (the exporters and the torch mirror call these) ----------------------------
    def to_onnx(self, g: Any, x: str, out: str, info: LayerInfo) -> None:
        """Append to the ONNX graph builder ``g`` the nodes computing this layer from tensor ``x`` into
        tensor ``out`` (see ``cnnbp.onnx_graph.Graph``); NotImplementedError when there is no mapping,
        ValueError when these hyper-parameters have no ONNX form — :class:`NativeFormUnavailable`
        when only the native operator lacks one, so the exporter can point at ``--ops decomposed``."""
        if self.onnx_op is None:
            raise NotImplementedError(f"layer type {self.kind!r} has no ONNX mapping")
        g.op(self.onnx_op, [x], out, self.name)

    def to_torch(self, t: Any, info: LayerInfo) -> tuple[Any, dict[str, Any]]:
        """This layer as a ``torch.nn.Module`` and ``{param: its torch Parameter}`` (``t`` gives
        ``torch``, ``nn``, ``F`` and ``module(fn, *owned)``; see ``cnnbp.torch_mirror``)."""
        if self.torch_op is None:
            raise NotImplementedError(f"layer type {self.kind!r} has no PyTorch counterpart")
        return getattr(t.nn, self.torch_op)(), {}

    # ---- helpers for subclasses ------------------------------------------------------------------
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

    # ---- smoothness (the gradient checker reads this) ----------------------------------------------
    # A non-analytic layer (``analytic = False``) with kinks defines ``kink_signature()``: the discrete
    # state of its last forward (a relu's mask x > 0, a max pool's arg-max), an array; a batch-first one
    # (leading axis the batch) is compared sample by sample, any other layout whole (for runs of copies).

    #: Optional: ``frozen_forward(x, signature) -> y``, the forward on the smooth piece a state selects.
    #: ``signature`` is the ``kink_signature()`` of a forward on the unperturbed counterpart of ``x`` (the
    #: same samples; on the checker's local path, the same box of the maps — for a windowed layer entries
    #: whose outputs are discarded may hold anything), laid out as that forward gives it; ``y`` is what
    #: ``forward(x)`` returns, shaped and typed alike, with every kink decided as ``signature`` says,
    #: e.g. ``x · signature`` for a relu (no ``backward`` follows it).  With it, the gradient
    #: checker differences the loss with the state held, the derivative backpropagation computes, for
    #: elements whose stencil crosses a kink; without it (None, the default) the one-sided derivatives
    #: decide.  A subclass that redefines ``forward``, ``backward`` or ``kink_signature`` does not
    #: inherit its parent's: the frozen forward must follow the same convention.
    frozen_forward: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def nonsmooth_distance(self) -> np.ndarray | None:
        """Per element of the last forward's input, its distance from the nearest point where the
        forward is continuous but not infinitely differentiable (|x|^2.5 at 0), or None (the default)
        when there is none.  Finite differences whose stencil comes near such a point lose their
        accuracy, so the checker narrows its step there; kinks are ``kink_signature()``'s."""
        return None


def frozen_forward_of(layer: Layer) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """The layer's ``frozen_forward``, or None: when it has none, or a class below the one defining it
    redefines ``forward``, ``backward`` or ``kink_signature`` (it may follow another convention)."""
    own = getattr(layer, "frozen_forward", None)
    mro = type(layer).__mro__
    owner = next((c for c in mro if "frozen_forward" in vars(c)), None)
    if own is None or owner is None or "frozen_forward" in vars(layer):
        return own
    for name in ("forward", "backward", "kink_signature"):
        definer = next((c for c in mro if name in vars(c)), owner)
        if not issubclass(owner, definer):
            return None
    return own


def expect_rank(layer: str, input_shape: Shape, rank: int, what: str) -> None:
    """Raise ShapeError unless the per-sample ``input_shape`` has ``rank`` axes (``what`` says which)."""
    if len(input_shape) != rank:
        raise ShapeError(layer, f"expects {what} per sample, got shape {tuple(input_shape)}")


def times(g: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``g · dy``, into ``g`` (a new array the layer owns) when that keeps the result's dtype."""
    if np.result_type(g, dy) == g.dtype:
        g *= dy
        return g
    return g * dy
