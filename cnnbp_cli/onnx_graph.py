"""ONNX export: the graph builder layers write themselves into, the model around it, and running it.

Every layer maps itself (``Layer.to_onnx(g, x, out, info)``; simple element-wise layers by their
``onnx_op``), so a new layer — built-in or a user's — brings its own mapping.  This module gives them
:class:`Graph`, which hands out unique tensor and node names and collects initializers, and the
shared pieces of decomposed forms (:meth:`Graph.window_slices`, :meth:`Graph.window_sum`).

onnxruntime's CPU provider has no float64 kernels for Conv, AveragePool and LpPool, so a float64
model would load nowhere common.  ``ops="auto"`` (the default) therefore has those layers write their
*decomposed* form for float64 parameters (``g.decomposed``): strided ``Slice`` windows summed with
``Sum`` (pools, subsample) or gathered by ``Concat`` into an im2col matrix for one ``MatMul`` (conv).
The result is the same function, runs in onnxruntime in double precision and matches the engine to
~1e-15.  ``ops="native"`` / ``"decomposed"`` force either form for any dtype.

Outputs: ``output`` for ``mse``; ``logits`` and ``probabilities`` (Softmax over axis 1) for
``softmax_cross_entropy``.

``onnx`` and ``onnxruntime`` are optional (``pip install 'cnnbp[onnx]'``): they are imported inside
the functions that need them, never at module import.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cnnbp.core.errors import NativeFormUnavailable
from cnnbp.core.losses import SoftmaxCrossEntropy
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

OpsMode = Literal["auto", "native", "decomposed"]

INSTALL_HINT = "pip install 'cnnbp[onnx]'"
MIN_OPSET = 13  # Softmax(axis) per-axis semantics, Slice/Pad/Reshape with tensor inputs
INPUT_NAME = "input"
_RESERVED = ("input", "output", "logits", "probabilities")


class ExportError(UserError):
    """An export or import that cannot be done: message ``"<place>: <problem>"`` (exit 2)."""


class NeedsDecomposedError(ExportError):
    """A layer the native form cannot express but the decomposed form (``ops="decomposed"``) can;
    ``decomposed_as`` names the standard ops that form uses."""

    def __init__(self, message: str, decomposed_as: str) -> None:
        super().__init__(message)
        self.decomposed_as = decomposed_as


class ModelLoadError(ExportError):
    """onnxruntime cannot load a model: ``detail`` is its first line; ``missing_kernel`` when it lacks a
    kernel for an op and dtype (native float64 ops), which the decomposed form avoids — ``decomposed``
    is how the message names that form."""

    def __init__(self, detail: str, missing_kernel: bool, decomposed: str = "ops='decomposed'") -> None:
        hint = f" (onnxruntime lacks a kernel for this op and dtype; float64 models need {decomposed})"
        super().__init__(f"onnxruntime: cannot load the model: {detail}{hint if missing_kernel else ''}")
        self.detail, self.missing_kernel = detail, missing_kernel


# ---- optional dependencies ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def onnx_available() -> bool:
    """True when both ``onnx`` and ``onnxruntime`` import (the ``cnnbp[onnx]`` extra)."""
    try:
        import_module("onnx")
        import_module("onnxruntime")
    except ImportError:
        return False
    return True


def _require(module: str) -> Any:
    try:
        return import_module(module)
    except ImportError as e:
        raise ExportError(f"{module}: not installed ({INSTALL_HINT})") from e


def ir_version_for(opset: int) -> int:
    """The IR version of the first onnx release that knew ``opset`` (17 → 8), from ``VERSION_TABLE``.

    Pinning the smallest IR that can hold the opset keeps the file loadable by older runtimes.
    """
    onnx_mod = _require("onnx")
    irs = [ir for _release, ir, ai_onnx, *_ in onnx_mod.helper.VERSION_TABLE if ai_onnx >= opset]
    if not irs:
        raise ExportError(f"opset: {opset} is newer than the installed onnx {onnx_mod.__version__} knows")
    return min(irs)


def param_dtype(net: Sequential) -> np.dtype:
    """The one dtype of the network's parameters (float32 or float64); ExportError otherwise."""
    dtypes = {v.dtype for group in net.parameters().values() for v in group.values()}
    if not dtypes:
        dtypes = {np.dtype(net.dtype or np.float32)}
    if len(dtypes) > 1:
        raise ExportError(f"model: parameters mix dtypes {', '.join(sorted(str(d) for d in dtypes))}")
    (dtype,) = dtypes
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ExportError(f"model: export supports float32 and float64 parameters, got {dtype}")
    return dtype


class Graph:
    """Collects nodes and initializers; hands out unique tensor and node names."""

    def __init__(self, onnx_mod: Any, dtype: np.dtype, decomposed: bool = False) -> None:
        self.onnx = onnx_mod
        self.dtype = dtype
        #: whether layers should write their decomposed forms (see the module docstring)
        self.decomposed = decomposed
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.value_info: list[Any] = []
        self._tensors: set[str] = set(_RESERVED)
        self._node_names: set[str] = set()

    @staticmethod
    def _fresh(want: str, taken: set[str]) -> str:
        name, i = want, 1
        while name in taken:
            i += 1
            name = f"{want}#{i}"
        taken.add(name)
        return name

    def tensor(self, want: str) -> str:
        return self._fresh(want, self._tensors)

    def init(self, want: str, array: np.ndarray) -> str:
        """An initializer (float params are cast to the graph dtype; int64 constants stay)."""
        arr = np.asarray(array)
        if arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        name = self.tensor(want)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def ints(self, want: str, values: list[int]) -> str:
        return self.init(want, np.asarray(values, dtype=np.int64))

    def scalar(self, want: str, value: float) -> str:
        return self.init(want, np.asarray(value, dtype=self.dtype))

    def op(self, op_type: str, inputs: list[str], out: str, node: str, **attrs: Any) -> str:
        """Append a node writing tensor ``out`` (already named); returns ``out``."""
        name = self._fresh(node, self._node_names)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def tmp(self, op_type: str, inputs: list[str], want: str, node: str, **attrs: Any) -> str:
        """A node writing a fresh intermediate tensor named after ``want``."""
        return self.op(op_type, inputs, self.tensor(want), node, **attrs)

    def shape_info(self, name: str, shape: tuple[int, ...]) -> None:
        elem = self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.value_info.append(self.onnx.helper.make_tensor_value_info(name, elem, ["N", *shape]))

    def window_slices(
        self, x: str, layer: str, size: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]
    ) -> list[str]:
        """One strided ``Slice`` per window offset (a, b): x[:, :, a::sh][:ho], (N, C, Ho, Wo) each.

        Summing them gives the window sums of every (floor-remainder) window, overlapping or not.
        """
        (kh, kw), (sh, sw), (ho, wo) = size, stride, out_hw
        axes = self.ints(f"{layer}/axes", [2, 3])
        steps = self.ints(f"{layer}/steps", [sh, sw])
        parts = []
        for a in range(kh):
            for b in range(kw):
                starts = self.ints(f"{layer}/starts_{a}_{b}", [a, b])
                ends = self.ints(f"{layer}/ends_{a}_{b}", [a + sh * (ho - 1) + 1, b + sw * (wo - 1) + 1])
                inputs = [x, starts, ends, axes, steps]
                parts.append(self.tmp("Slice", inputs, f"{layer}/win_{a}_{b}", f"{layer}/slice_{a}_{b}"))
        return parts

    def window_sum(
        self, x: str, layer: str, size: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]
    ) -> str:
        """The sum over every window: ``Sum`` of :meth:`window_slices`."""
        parts = self.window_slices(x, layer, size, stride, out_hw)
        return self.tmp("Sum", parts, f"{layer}/window_sum", f"{layer}/sum")


def to_onnx(
    net: Sequential,
    loss_name: str,
    *,
    opset: int = 17,
    metadata: Mapping[str, str] | None = None,
    graph_name: str = "cnnbp",
    ops: OpsMode = "auto",
) -> onnx.ModelProto:
    """The built network as a checked ONNX model with input ``input`` of shape [N, *input_shape].

    Outputs: ``output`` for ``mse``; ``logits`` and ``probabilities`` (Softmax over axis 1) for
    ``softmax_cross_entropy``.  Element type FLOAT or DOUBLE follows the parameters' dtype.
    ``ir_version`` is pinned to the IR of ``opset`` (17 → 8); ``metadata`` becomes ``metadata_props``.
    ``ops`` picks native Conv/AveragePool/LpPool or their decomposed form (see the module docstring);
    ``"auto"`` decomposes only for float64.  Raises ExportError naming the layer for anything that
    has no faithful ONNX form (e.g. an LpPool with non-integer p in native form).
    """
    onnx_mod = _require("onnx")
    helper = onnx_mod.helper
    _check_options(onnx_mod, loss_name, ops, opset)
    infos = net.summary()
    _require_built(net, infos)
    dtype = param_dtype(net)
    g = Graph(onnx_mod, dtype, ops == "decomposed" or (ops == "auto" and dtype == np.float64))
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    out_shape = infos[-1].output_shape if infos else net.input_shape
    softmax = loss_name == "softmax_cross_entropy"
    if softmax and len(out_shape) != 1:
        raise ExportError(
            f"loss: softmax_cross_entropy needs a feature vector per sample, the model gives "
            f"{'×'.join(map(str, out_shape))}"
        )
    final = "logits" if softmax else "output"
    _emit_layers(g, net, infos, final)
    outputs = [helper.make_tensor_value_info(final, elem, ["N", *out_shape])]
    if softmax:
        g.op("Softmax", [final], "probabilities", "softmax", axis=1)
        outputs.append(helper.make_tensor_value_info("probabilities", elem, ["N", *out_shape]))

    graph = helper.make_graph(
        g.nodes,
        graph_name,
        [helper.make_tensor_value_info(INPUT_NAME, elem, ["N", *net.input_shape])],
        outputs,
        g.initializers,
        value_info=g.value_info,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version_for(opset)
    model.producer_name = "cnnbp"
    model.producer_version = _cnnbp_version()
    if metadata:
        helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    try:
        onnx_mod.checker.check_model(model, full_check=True)
    except Exception as e:  # a bug here, not a user mistake: keep the checker's words
        raise ExportError(f"onnx: the exported model fails onnx.checker: {first_line(e)}") from e
    return model


def _check_options(onnx_mod: Any, loss_name: str, ops: str, opset: int) -> None:
    if loss_name not in ("mse", "softmax_cross_entropy"):
        raise ExportError(f"loss: {loss_name!r} is not one of mse, softmax_cross_entropy")
    if ops not in ("auto", "native", "decomposed"):
        raise ExportError(f"ops: {ops!r} is not one of auto, native, decomposed")
    newest = onnx_mod.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset: must be an int from {MIN_OPSET} to {newest}, got {opset!r}")


def _emit_layers(g: Graph, net: Sequential, infos: list[LayerInfo], final: str) -> None:
    """Each layer's nodes, from ``input`` to the tensor ``final``; ExportError naming a layer that has
    no mapping or one that cannot express its hyper-parameters."""
    x = INPUT_NAME
    if not infos:
        g.op("Identity", [x], final, "identity")
    for i, (layer, info) in enumerate(zip(net.layers, infos, strict=True)):
        last = i == len(infos) - 1
        out = final if last else g.tensor(layer.name)
        try:
            layer.to_onnx(g, x, out, info)
        except NotImplementedError:
            raise ExportError(
                f"{layer.name}: layer type {layer.kind!r} has no ONNX mapping (its class can give one with "
                "to_onnx or onnx_op; NPZ and JSON export need none)"
            ) from None
        except NativeFormUnavailable as e:
            raise NeedsDecomposedError(f"{layer.name}: {e}", e.decomposed_as) from None
        except ValueError as e:  # a mapping that cannot express these hyper-parameters
            raise ExportError(f"{layer.name}: {e}") from None
        if not last:
            g.shape_info(out, info.output_shape)
        x = out


def _cnnbp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnnbp")
    except PackageNotFoundError:
        return "0+unknown"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``model`` on ``x`` with onnxruntime's CPU provider: ``{output name: array}``.

    ``x`` is cast to the model's input element type.
    """
    onnx_mod = _require("onnx")
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fallback warnings are noise here
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelLoadError(first_line(e), "NOT_IMPLEMENTED" in str(e)) from e
    inp = session.get_inputs()[0]
    elem = model.graph.input[0].type.tensor_type.elem_type
    feed = np.ascontiguousarray(x, dtype=onnx_mod.helper.tensor_dtype_to_np_dtype(elem))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {inp.name: feed}), strict=True))


def verify_onnx(model: onnx.ModelProto, net: Sequential, x: np.ndarray) -> float:
    """Max |ONNX − engine| over the main outputs for input ``x`` (cast to the network's dtype).

    ``output`` is compared with ``net.forward(x)`` in the ``eval`` phase (the exported inference
    form: no dropout, batchnorm's running statistics); for a softmax model ``logits`` with the forward
    output and ``probabilities`` with its softmax.
    """
    x = np.asarray(x, dtype=param_dtype(net))
    with net.in_phase("eval"):
        ref = net.forward(x)
    got = run_onnx(model, x)
    if "logits" in got:
        pairs = [(got["logits"], ref), (got["probabilities"], SoftmaxCrossEntropy.probabilities(ref))]
    else:
        pairs = [(got["output"], ref)]
    diff = 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            raise ExportError(f"verify: ONNX output shape {a.shape} differs from the engine's {b.shape}")
        diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)))
    return diff


def _require_built(net: Sequential, infos: list[LayerInfo]) -> None:
    for layer, info in zip(net.layers, infos, strict=True):
        if set(info.param_shapes) - set(layer.params):
            raise ValueError(f"network is not built ({layer.name} has no parameters); call build() first")
