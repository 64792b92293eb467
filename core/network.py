"""Sequential network: shape inference, forward, backward, and per-sample delta recording."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from cnnbp.core.errors import ParameterError, ShapeError
from cnnbp.core.layers.base import Layer, Shape
from cnnbp.core.losses import Loss


@dataclass(frozen=True)
class LayerInfo:
    """One row of a model summary: what a layer receives, returns and holds."""

    name: str
    kind: str
    input_shape: Shape
    output_shape: Shape
    param_shapes: dict[str, Shape]

    @property
    def n_params(self) -> int:
        """Number of parameter values the layer holds."""
        return int(sum(int(np.prod(s)) for s in self.param_shapes.values()))


class Sequential:
    """Layers applied in order to inputs of per-sample shape ``input_shape``.

    ``backward`` receives per-sample output deltas ∂L_x/∂out (undivided) and passes
    them down, so the array arriving at each layer's output *is* that layer's
    per-sample delta (SPEC §1).  Parameter gradients are then divided by the batch
    size m, giving the gradient of the batch-mean loss: ``∂L/∂W = (1/m) Σ_x δ_x a_x``.
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Shape) -> None:
        self.layers = list(layers)
        self.input_shape = tuple(int(s) for s in input_shape)
        seen: set[str] = set()
        for layer in self.layers:
            if layer.name in seen:
                raise ShapeError(layer.name, "layer names must be unique")
            seen.add(layer.name)
        self.dtype: np.dtype | None = None

    # ---- inference before any data -------------------------------------------------
    def summary(self) -> list[LayerInfo]:
        """Shapes and parameter shapes of every layer; raises ShapeError naming the layer."""
        rows, shape = [], self.input_shape
        if not shape or any(s < 1 for s in shape):
            raise ShapeError("input", f"input_shape must be positive sizes, got {shape}")
        for layer in self.layers:
            out = layer.output_shape(shape)
            if any(s < 1 for s in out):
                raise ShapeError(
                    layer.name, f"leaves no output for the {_fmt(shape)} input (output {_fmt(out)})"
                )
            rows.append(LayerInfo(layer.name, layer.kind, shape, out, layer.param_shapes(shape)))
            shape = out
        return rows

    @property
    def output_shape(self) -> Shape:
        """Per-sample shape of the network's output."""
        return self.summary()[-1].output_shape if self.layers else self.input_shape

    @property
    def n_params(self) -> int:
        """Number of parameter values in the whole network."""
        return sum(info.n_params for info in self.summary())

    def build(self, rng: np.random.Generator, dtype: np.dtype | type = np.float32) -> Sequential:
        """Initialise every parameter (in layer order, drawing from ``rng``)."""
        self.dtype = np.dtype(dtype)
        for info, layer in zip(self.summary(), self.layers, strict=True):
            layer.build(info.input_shape, rng, self.dtype)
        return self

    def layer(self, name: str) -> Layer:
        """The layer called ``name``; KeyError listing the layers when there is none."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {', '.join(l.name for l in self.layers)}")

    # ---- computation ------------------------------------------------------------------
    def forward(self, x: np.ndarray, record: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
        """Every layer in order on a batch (N, *input_shape); raises ShapeError for other shapes.

        ``record(name, a)``, when given, receives each layer's output (its activations) as it is made;
        the array may be the layer's own buffer: copy it to keep it.
        """
        if x.shape[1:] != self.input_shape:
            raise ShapeError(
                "input", f"expected samples of shape {_fmt(self.input_shape)}, got {_fmt(x.shape[1:])}"
            )
        for layer in self.layers:
            x = layer.forward(x)
            if record is not None:
                record(layer.name, x)
        return x

    def backward(
        self,
        delta: np.ndarray,
        record: Callable[[str, np.ndarray], None] | None = None,
        input_grad: bool = True,
    ) -> np.ndarray | None:
        """Propagate per-sample output deltas; returns ∂L_x/∂input for each sample.

        ``record(name, d)``, when given, receives each layer's per-sample delta
        (the gradient w.r.t. that layer's output) before the layer sees it.
        The layers are unaware of it.  Parameter gradients are left summed over
        the batch; ``gradients`` divides them.  With ``input_grad=False`` the first
        layer computes only its parameter gradients and None is returned: training
        never needs ∂L/∂input, and for a first conv layer it is the costliest part.

        Every array passed to ``record`` or returned is the caller's to keep: no
        later call writes into it.
        """
        layers = self.layers
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if record is not None:
                record(layer.name, delta)
            if i == 0 and not input_grad:
                layer.backward_params(delta)
                return None
            delta = layer.backward(delta)
        return delta

    def gradients(
        self,
        x: np.ndarray,
        target: np.ndarray,
        loss: Loss,
        record: Callable[[str, np.ndarray], None] | None = None,
        input_grad: bool = True,
        outputs: Callable[[str, np.ndarray], None] | None = None,
    ) -> float:
        """Forward, loss, backward; fills every ``layer.grads`` with ∂(mean loss)/∂θ.

        Returns the batch-mean loss.  ``input_grad=False`` skips ∂L/∂input (see
        ``backward``); the returned loss and every gradient are the same either way.
        ``outputs`` is ``forward``'s ``record`` (each layer's output), ``record`` ``backward``'s.
        """
        out = self.forward(x, outputs)
        losses = loss.forward(out, target)
        self.backward(loss.backward(), record, input_grad)
        inv_m = 1.0 / x.shape[0]
        for layer in self.layers:
            for g in layer.grads.values():
                g *= inv_m
        return float(losses.mean().real)

    # ---- parameters ------------------------------------------------------------------
    def parameters(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {param: array}}`` for every parametric layer (live arrays)."""
        return {l.name: l.params for l in self.layers if l.params}

    def grads(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {param: gradient}}``, keyed like ``parameters`` (live arrays)."""
        return {l.name: l.grads for l in self.layers if l.params}

    def state(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {buffer: array}}`` of the non-trainable buffers (batchnorm's running statistics)."""
        return {l.name: l.state for l in self.layers if l.state}

    def set_state(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Copy buffers (as :meth:`state` gives them) into the built network; ParameterError when a
        layer or buffer is missing on either side or a shape differs."""
        expected = self.state()
        for lname, group in expected.items():
            given = state.get(lname, {})
            if set(given) != set(group):
                raise ParameterError(
                    f"layer {lname} has buffers {', '.join(group)}, got {', '.join(given) or 'none'}"
                )
            for key, value in given.items():
                if np.shape(value) != group[key].shape:
                    raise ParameterError(
                        f"layer {lname} buffer {key} has shape {np.shape(value)}, expected {group[key].shape}"
                    )
        extra = sorted(set(state) - set(expected))
        if extra:
            raise ParameterError(f"layer {extra[0]} has no buffers in the model")
        for lname, group in expected.items():
            for key, value in group.items():
                value[...] = np.asarray(state[lname][key])

    @property
    def couples_batch(self) -> bool:
        """True when some layer mixes the samples of a batch (see ``Layer.couples_batch``)."""
        return any(l.couples_batch for l in self.layers)

    @property
    def stochastic(self) -> bool:
        """True when some layer draws random numbers in training (see ``Layer.stochastic``)."""
        return any(l.stochastic for l in self.layers)

    @contextmanager
    def in_phase(self, phase: str) -> Iterator[Sequential]:
        """Run the block with every layer in ``phase`` (``train``, ``probe`` or ``eval``; see
        ``Layer.phase``), then put back the phases they had."""
        if phase not in ("train", "probe", "eval"):
            raise ValueError(f"phase must be train, probe or eval, got {phase!r}")
        before = [l.phase for l in self.layers]
        for l in self.layers:
            l.phase = phase
        try:
            yield self
        finally:
            for l, old in zip(self.layers, before, strict=True):
                l.phase = old

    def set_rng(self, rng: np.random.Generator | None) -> None:
        """Give every stochastic layer ``rng`` for its next training draws (shared, in layer order)."""
        for l in self.layers:
            if l.stochastic:
                l.rng = rng

    def set_parameters(
        self, params: Mapping[str, Mapping[str, np.ndarray]], *, same_dtype: bool = False
    ) -> None:
        """Copy ``{layer: {param: array}}`` into the built network: the one weight copier.

        Every parametric layer must be given with exactly its parameters and shapes, and nothing
        else; all is checked before anything is copied (all or nothing).  Values are cast to the
        network's dtype; with ``same_dtype`` a value of another dtype is an error instead (a resumed
        run must continue from exactly the saved numbers).  Raises ParameterError naming the layer.
        """
        expected = {info.name: info.param_shapes for info in self.summary() if info.param_shapes}
        for layer in self.layers:
            if set(expected.get(layer.name, {})) - set(layer.params):
                raise ValueError(f"network is not built ({layer.name} has no parameters); call build() first")
        for lname, shapes in expected.items():
            _check_group(lname, shapes, params, self.layer(lname).params, same_dtype)
        extra = [lname for lname in params if lname not in expected]
        if extra:
            those = ", ".join(expected) or "none"
            raise ParameterError(
                f"layer {extra[0]} is not a parametric layer of the model (those are: {those})"
            )
        for lname in expected:
            layer = self.layer(lname)
            for key, value in params[lname].items():
                layer.params[key][...] = np.asarray(value)

    def cast(self, dtype: np.dtype | type) -> Sequential:
        """Convert every parameter, gradient buffer and state buffer to ``dtype`` in place."""
        self.dtype = np.dtype(dtype)
        for layer in self.layers:
            layer.params = {k: v.astype(dtype) for k, v in layer.params.items()}
            layer.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
            layer.state = {k: v.astype(dtype) for k, v in layer.state.items()}
        return self


def _check_group(
    lname: str,
    shapes: Mapping[str, Shape],
    params: Mapping[str, Mapping[str, np.ndarray]],
    current: Mapping[str, np.ndarray],
    same_dtype: bool,
) -> None:
    """ParameterError unless ``params[lname]`` holds exactly the parameters of ``shapes``, numeric."""
    if lname not in params:
        raise ParameterError(f"has no parameters for layer {lname} (it has: {', '.join(params) or 'none'})")
    group = params[lname]
    for key in shapes:
        if key not in group:
            raise ParameterError(
                f"layer {lname} has no parameter {key} (it has: {', '.join(group) or 'none'})"
            )
    for key, value in group.items():
        if key not in shapes:
            raise ParameterError(
                f"layer {lname} parameter {key} is not in the model (it expects {', '.join(shapes)})"
            )
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise ParameterError(f"layer {lname} parameter {key} is not a real numeric array ({arr.dtype})")
        if arr.shape != tuple(shapes[key]):
            raise ParameterError(
                f"layer {lname} parameter {key} has shape {_fmt(arr.shape)}, "
                f"the model expects {_fmt(shapes[key])}"
            )
        if same_dtype and arr.dtype != current[key].dtype:
            raise ParameterError(
                f"layer {lname} parameter {key} is {arr.dtype}, the model is {current[key].dtype}"
            )


def _fmt(shape: Shape) -> str:
    return "×".join(str(s) for s in shape) if shape else "()"
