"""Export a built network: ONNX (standard operators), NPZ and JSON parameter files, and load them back.

The format logic only; the ``export`` command and ``init_from`` call these functions.

ONNX mapping (one layer → a few standard nodes; opset 17 by default)::

    conv       Conv (kernel_shape, strides, pads [ph, pw, ph, pw]); tied bias as Conv's B,
               untied bias (F, Ho, Wo) as an Add of a (1, F, Ho, Wo) initializer
    pool       max → MaxPool, mean → AveragePool, lp → LpPool (integer p); no pads, floor remainder
    subsample  AveragePool(k, k) · k² (the block sum) · β (1, C, 1, 1) + b (1, C, 1, 1)
    dense      Gemm(transB=1): x Wᵀ + b with W (units_out, units_in)
    flatten    Flatten(axis=1);  sigmoid/tanh/relu/identity → Sigmoid/Tanh/Relu/Identity
    outputs    mse: ``output``;  softmax_cross_entropy: ``logits`` and ``probabilities`` (Softmax, axis 1)

onnxruntime's CPU provider has no float64 kernels for Conv, AveragePool and LpPool, so a float64
model would load nowhere common.  ``ops="auto"`` (the default) therefore writes those three in their
*decomposed* form for float64 parameters: strided ``Slice`` windows summed with ``Sum`` (pools,
subsample) or gathered by ``Concat`` into an im2col matrix for one ``MatMul`` (conv).  The result is
the same function, runs in onnxruntime in double precision and matches the engine to ~1e-15.
``ops="native"`` / ``"decomposed"`` force either form for any dtype.

``onnx`` and ``onnxruntime`` are optional (``pip install 'cnnbp[onnx]'``): they are imported inside
the functions that need them, never at module import.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from cnnbp.core.layers import Conv2D, Dense, Flatten, Identity, LpPool, MaxPool, MeanPool, ReLU, Sigmoid, Tanh
from cnnbp.core.layers.base import Layer
from cnnbp.core.layers.pooling import Subsample
from cnnbp.core.losses import SoftmaxCrossEntropy
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

Params = dict[str, dict[str, np.ndarray]]
OpsMode = Literal["auto", "native", "decomposed"]

INSTALL_HINT = "pip install 'cnnbp[onnx]'"
MIN_OPSET = 13  # Softmax(axis) per-axis semantics, Slice/Pad/Reshape with tensor inputs
CONFIG_KEY = "__config__"
INPUT_NAME = "input"
_RESERVED = ("input", "output", "logits", "probabilities")
_SIMPLE_OPS: dict[type[Layer], str] = {
    Sigmoid: "Sigmoid",
    Tanh: "Tanh",
    ReLU: "Relu",
    Identity: "Identity",
}


class ExportError(UserError):
    """An export or import that cannot be done: message ``"<place>: <problem>"`` (exit 2)."""


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


# ---- ONNX export ---------------------------------------------------------------------------------
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


class _Graph:
    """Collects nodes and initializers; hands out unique tensor and node names."""

    def __init__(self, onnx_mod: Any, dtype: np.dtype) -> None:
        self.onnx = onnx_mod
        self.dtype = dtype
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


def _window_slices(
    g: _Graph, x: str, layer: str, size: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]
) -> list[str]:
    """One strided ``Slice`` per window offset (a, b): x[:, :, a::sh][:ho], (N, C, Ho, Wo) each.

    Summing them gives the window sums of every (floor-remainder) window, overlapping or not.
    """
    (kh, kw), (sh, sw), (ho, wo) = size, stride, out_hw
    axes = g.ints(f"{layer}/axes", [2, 3])
    steps = g.ints(f"{layer}/steps", [sh, sw])
    parts = []
    for a in range(kh):
        for b in range(kw):
            starts = g.ints(f"{layer}/starts_{a}_{b}", [a, b])
            ends = g.ints(f"{layer}/ends_{a}_{b}", [a + sh * (ho - 1) + 1, b + sw * (wo - 1) + 1])
            inputs = [x, starts, ends, axes, steps]
            parts.append(g.tmp("Slice", inputs, f"{layer}/win_{a}_{b}", f"{layer}/slice_{a}_{b}"))
    return parts


def _window_sum(
    g: _Graph, x: str, layer: str, size: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]
) -> str:
    parts = _window_slices(g, x, layer, size, stride, out_hw)
    return g.tmp("Sum", parts, f"{layer}/window_sum", f"{layer}/sum")


def _emit_conv(g: _Graph, layer: Conv2D, info: LayerInfo, x: str, out: str, decomposed: bool) -> None:
    name, (f, ho, wo), c = layer.name, info.output_shape, info.input_shape[0]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    W, b = layer.params["W"], layer.params["b"]
    w_name = g.init(f"{name}/W", W)
    if layer.bias == "untied":  # (F, Ho, Wo) → (1, F, Ho, Wo), broadcast over the batch
        b_name = g.init(f"{name}/b", b.reshape(1, f, ho, wo))
    elif decomposed:
        b_name = g.init(f"{name}/b", b.reshape(1, f, 1, 1))
    else:
        b_name = g.init(f"{name}/b", b)
    if not decomposed:
        attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw]}
        if layer.bias == "tied":
            g.op("Conv", [x, w_name, b_name], out, name, **attrs)
        else:
            z = g.tmp("Conv", [x, w_name], f"{name}/conv", name, **attrs)
            g.op("Add", [z, b_name], out, f"{name}/bias")
        return
    # im2col with standard ops: columns ordered (a, b, c), so W is transposed to (F, kh, kw, C) to match
    if ph or pw:
        pads = g.ints(f"{name}/pads", [0, 0, ph, pw, 0, 0, ph, pw])
        x = g.tmp("Pad", [x, pads], f"{name}/padded", f"{name}/pad")
    parts = _window_slices(g, x, name, layer.kernel, layer.stride, (ho, wo))
    cols = g.tmp("Concat", parts, f"{name}/cols", f"{name}/im2col", axis=1)
    k = kh * kw * c
    cols = g.tmp("Reshape", [cols, g.ints(f"{name}/cols_shape", [0, k, ho * wo])], f"{name}/cols2d",
                 f"{name}/cols_reshape")
    wt = g.tmp("Transpose", [w_name], f"{name}/W_hwc", f"{name}/W_transpose", perm=[0, 2, 3, 1])
    wm = g.tmp("Reshape", [wt, g.ints(f"{name}/W_shape", [f, k])], f"{name}/W2d", f"{name}/W_reshape")
    z = g.tmp("MatMul", [wm, cols], f"{name}/matmul", f"{name}/matmul")  # (F, K) @ (N, K, L) → (N, F, L)
    z = g.tmp("Reshape", [z, g.ints(f"{name}/z_shape", [0, f, ho, wo])], f"{name}/conv", f"{name}/z_reshape")
    g.op("Add", [z, b_name], out, f"{name}/bias")


def _emit_mean(g: _Graph, layer: MeanPool, info: LayerInfo, x: str, out: str, decomposed: bool) -> None:
    name = layer.name
    if not decomposed:
        g.op("AveragePool", [x], out, name, kernel_shape=list(layer.size), strides=list(layer.stride))
        return
    total = _window_sum(g, x, name, layer.size, layer.stride, info.output_shape[1:])
    g.op("Div", [total, g.scalar(f"{name}/count", layer.size[0] * layer.size[1])], out, f"{name}/mean")


def _emit_lp(g: _Graph, layer: LpPool, info: LayerInfo, x: str, out: str, decomposed: bool) -> None:
    name, p = layer.name, layer.p
    if not decomposed:
        if p != int(p):
            raise ExportError(f"{name}: LpPool needs an integer p, got {p:g}")
        g.op("LpPool", [x], out, name, kernel_shape=list(layer.size), strides=list(layer.stride), p=int(p))
        return
    xa = g.tmp("Abs", [x], f"{name}/abs", f"{name}/abs")
    if p != 1:
        xa = g.tmp("Pow", [xa, g.scalar(f"{name}/p", p)], f"{name}/abs_p", f"{name}/pow")
    total = _window_sum(g, xa, name, layer.size, layer.stride, info.output_shape[1:])
    if p == 1:
        g.op("Identity", [total], out, f"{name}/root")
    else:
        g.op("Pow", [total, g.scalar(f"{name}/inv_p", 1.0 / p)], out, f"{name}/root")


def _emit_subsample(g: _Graph, layer: Subsample, info: LayerInfo, x: str, out: str, decomposed: bool) -> None:
    name, k, c = layer.name, layer.scale, info.input_shape[0]
    if decomposed:
        down = _window_sum(g, x, name, (k, k), (k, k), info.output_shape[1:])
    else:
        avg = g.tmp("AveragePool", [x], f"{name}/mean", f"{name}/pool", kernel_shape=[k, k], strides=[k, k])
        down = g.tmp("Mul", [avg, g.scalar(f"{name}/k2", k * k)], f"{name}/down", f"{name}/sum")
    beta = g.init(f"{name}/beta", layer.params["beta"].reshape(1, c, 1, 1))
    bias = g.init(f"{name}/b", layer.params["b"].reshape(1, c, 1, 1))
    scaled = g.tmp("Mul", [down, beta], f"{name}/scaled", f"{name}/beta")
    g.op("Add", [scaled, bias], out, f"{name}/bias")


def _emit_layer(g: _Graph, layer: Layer, info: LayerInfo, x: str, out: str, decomposed: bool) -> None:
    """Append the nodes computing ``layer`` from tensor ``x`` into tensor ``out``."""
    if isinstance(layer, Conv2D):
        _emit_conv(g, layer, info, x, out, decomposed)
    elif isinstance(layer, MeanPool):
        _emit_mean(g, layer, info, x, out, decomposed)
    elif isinstance(layer, LpPool):
        _emit_lp(g, layer, info, x, out, decomposed)
    elif isinstance(layer, Subsample):
        _emit_subsample(g, layer, info, x, out, decomposed)
    elif isinstance(layer, Dense):
        w = g.init(f"{layer.name}/W", layer.params["W"])
        b = g.init(f"{layer.name}/b", layer.params["b"])
        g.op("Gemm", [x, w, b], out, layer.name, transB=1)
    elif isinstance(layer, MaxPool):
        g.op("MaxPool", [x], out, layer.name, kernel_shape=list(layer.size), strides=list(layer.stride))
    elif isinstance(layer, Flatten):
        g.op("Flatten", [x], out, layer.name, axis=1)
    elif type(layer) in _SIMPLE_OPS:
        g.op(_SIMPLE_OPS[type(layer)], [x], out, layer.name)
    else:
        raise ExportError(f"{layer.name}: layer type {layer.kind!r} has no ONNX mapping")


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
    if loss_name not in ("mse", "softmax_cross_entropy"):
        raise ExportError(f"loss: {loss_name!r} is not one of mse, softmax_cross_entropy")
    if ops not in ("auto", "native", "decomposed"):
        raise ExportError(f"ops: {ops!r} is not one of auto, native, decomposed")
    newest = onnx_mod.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset: must be an int from {MIN_OPSET} to {newest}, got {opset!r}")
    infos = net.summary()
    _require_built(net, infos)
    dtype = param_dtype(net)
    decomposed = ops == "decomposed" or (ops == "auto" and dtype == np.float64)
    g = _Graph(onnx_mod, dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    out_shape = infos[-1].output_shape if infos else net.input_shape
    softmax = loss_name == "softmax_cross_entropy"
    if softmax and len(out_shape) != 1:
        raise ExportError(
            f"loss: softmax_cross_entropy needs a feature vector per sample, the model gives "
            f"{'×'.join(map(str, out_shape))}"
        )
    final = "logits" if softmax else "output"

    x = INPUT_NAME
    if not infos:
        g.op("Identity", [x], final, "identity")
    for i, (layer, info) in enumerate(zip(net.layers, infos, strict=True)):
        last = i == len(infos) - 1
        out = final if last else g.tensor(layer.name)
        _emit_layer(g, layer, info, x, out, decomposed)
        if not last:
            g.shape_info(out, info.output_shape)
        x = out
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
        raise ExportError(f"onnx: the exported model fails onnx.checker: {_first_line(e)}") from e
    return model


def _cnnbp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnnbp")
    except PackageNotFoundError:
        return "0+unknown"


def _first_line(e: BaseException) -> str:
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
        hint = ""
        if "NOT_IMPLEMENTED" in str(e):
            hint = " (onnxruntime lacks a kernel for this op and dtype; float64 models need ops='decomposed')"
        raise ExportError(f"onnxruntime: cannot load the model: {_first_line(e)}{hint}") from e
    inp = session.get_inputs()[0]
    elem = model.graph.input[0].type.tensor_type.elem_type
    feed = np.ascontiguousarray(x, dtype=onnx_mod.helper.tensor_dtype_to_np_dtype(elem))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {inp.name: feed}), strict=True))


def verify_onnx(model: onnx.ModelProto, net: Sequential, x: np.ndarray) -> float:
    """Max |ONNX − engine| over the main outputs for input ``x`` (cast to the network's dtype).

    ``output`` is compared with ``net.forward(x)``; for a softmax model ``logits`` with the forward
    output and ``probabilities`` with its softmax.
    """
    x = np.asarray(x, dtype=param_dtype(net))
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


# ---- NPZ -----------------------------------------------------------------------------------------------
def to_npz_bytes(net: Sequential, config_yaml: str) -> bytes:
    """An .npz holding one array per ``"<layer>/<param>"`` and ``__config__`` (0-d unicode YAML text).

    Nothing is pickled, so ``np.load(..., allow_pickle=False)`` reads it.
    """
    arrays = {f"{lname}/{key}": np.ascontiguousarray(v) for lname, group in net.parameters().items()
              for key, v in group.items()}
    arrays[CONFIG_KEY] = np.array(str(config_yaml))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_npz(net: Sequential, config_yaml: str, path: Path) -> None:
    """Write :func:`to_npz_bytes` to ``path`` (atomically: a temporary file, then a rename)."""
    _write_atomic(Path(path), to_npz_bytes(net, config_yaml))


def load_npz(path: Path) -> tuple[Params, str]:
    """``({layer: {param: array}}, config text)`` from an .npz written by :func:`save_npz`.

    A file without ``__config__`` gives an empty config text, so hand-made files work for init_from.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    params: Params = {}
    config = ""
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arr = npz[key]
                if key == CONFIG_KEY:
                    if arr.ndim != 0 or arr.dtype.kind != "U":
                        got = f"{arr.dtype} of shape {arr.shape}"
                        raise ExportError(f"{path}: {CONFIG_KEY} must be a text scalar, got {got}")
                    config = str(arr[()])
                    continue
                lname, sep, pname = key.rpartition("/")
                if not sep or not lname or not pname:
                    raise ExportError(f"{path}: entry {key!r} is not named <layer>/<param>")
                params.setdefault(lname, {})[pname] = arr
    except ExportError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # np.load: ValueError for non-npz bytes
        raise ExportError(f"{path}: not a readable .npz parameter file ({_first_line(e)})") from e
    return params, config


# ---- JSON ----------------------------------------------------------------------------------------------
def to_json_text(net: Sequential, config: Mapping[str, Any]) -> str:
    """``{"config": ..., "layers": [{"name", "type", "params": {name: nested lists}}]}`` as text.

    Every layer is listed (``params`` is ``{}`` for the parameter-free ones).  Floats are written by
    Python's ``repr``, the shortest text that reads back as the same double, so float64 (and float32,
    widened exactly) values round-trip bit for bit.  Non-finite values are written as ``NaN`` /
    ``Infinity`` (Python's JSON dialect).
    """
    try:
        config_text = json.dumps(config, indent=2, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ExportError(f"config: cannot be written as JSON ({e})") from e
    rows = []
    for layer in net.layers:
        params = ", ".join(
            f"{json.dumps(k)}: {json.dumps(v.tolist())}" for k, v in layer.params.items()
        )
        rows.append(
            f'    {{"name": {json.dumps(layer.name, ensure_ascii=False)}, "type": {json.dumps(layer.kind)}, '
            f'"params": {{{params}}}}}'
        )
    config_text = config_text.replace("\n", "\n  ")
    return '{\n  "config": ' + config_text + ',\n  "layers": [\n' + ",\n".join(rows) + "\n  ]\n}\n"


def save_json(net: Sequential, config: Mapping[str, Any], path: Path) -> None:
    """Write :func:`to_json_text` to ``path`` (UTF-8, atomically)."""
    _write_atomic(Path(path), to_json_text(net, config).encode("utf-8"))


def load_json(path: Path) -> tuple[Params, dict]:
    """``({layer: {param: float64 array}}, config)`` from a file written by :func:`save_json`.

    Layers without parameters are left out of the returned dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: cannot be read ({_first_line(e)})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise ExportError(f'{path}: expected an object with a "layers" list')
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise ExportError(f'{path}: "config" must be an object')
    params: Params = {}
    for i, row in enumerate(doc["layers"]):
        where = f"{path}: layers[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ExportError(f'{where} needs a "name" string')
        group = row.get("params", {})
        if not isinstance(group, dict):
            raise ExportError(f'{where}.params must be an object')
        if not group:
            continue
        if row["name"] in params:
            raise ExportError(f"{where}: layer {row['name']} appears twice")
        arrays = {}
        for key, value in group.items():
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ExportError(f"{where}.params.{key} is not a rectangular array of numbers") from e
            arrays[key] = arr
        params[row["name"]] = arrays
    return params, config


# ---- init_from -----------------------------------------------------------------------------------------
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SUFFIX_KINDS: dict[str, Literal["npz", "json"]] = {".npz": "npz", ".json": "json"}


def params_file_kind(path: Path) -> Literal["npz", "json"] | None:
    """``"npz"`` or ``"json"`` for a file that :func:`load_npz` / :func:`load_json` should read, else None.

    Decided by the first bytes (a zip archive → npz; ``{`` after optional BOM and whitespace → json;
    the HDF5 signature → None, a checkpoint), then by the suffix (``.npz``, ``.json``) when the content
    says nothing, so a damaged ``.json`` still gets the JSON reader's message.  Folders and missing
    paths give None.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        head = b""
    if head.startswith(_HDF5_MAGIC):
        return None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"{"):
        return "json"
    return _SUFFIX_KINDS.get(path.suffix.lower())


def apply_params(net: Sequential, params: Mapping[str, Mapping[str, np.ndarray]], *, source: str) -> None:
    """Copy ``params`` into the built network after checking names and shapes (all or nothing).

    Raises UserError ``"<source>: ..."`` naming the layer for a layer missing from either side, a
    parameter missing or extra, a shape mismatch (``layer conv1 parameter W has shape 6×1×5×5, the
    model expects 8×1×3×3``) or a non-numeric array.  Values are cast to the network's dtype.
    """
    infos = net.summary()
    _require_built(net, infos)
    expected = {info.name: info.param_shapes for info in infos if info.param_shapes}
    model_layers = ", ".join(expected) or "none"
    for lname, shapes in expected.items():
        if lname not in params:
            have = ", ".join(params) or "none"
            raise UserError(f"{source}: has no parameters for layer {lname} (it has: {have})")
        group = params[lname]
        for key in shapes:
            if key not in group:
                raise UserError(
                    f"{source}: layer {lname} has no parameter {key} (it has: {', '.join(group) or 'none'})"
                )
        for key, value in group.items():
            if key not in shapes:
                raise UserError(
                    f"{source}: layer {lname} parameter {key} is not in the model "
                    f"(it expects {', '.join(shapes)})"
                )
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiu":
                raise UserError(
                    f"{source}: layer {lname} parameter {key} is not a real numeric array ({arr.dtype})"
                )
            if arr.shape != tuple(shapes[key]):
                raise UserError(
                    f"{source}: layer {lname} parameter {key} has shape {_fmt(arr.shape)}, "
                    f"the model expects {_fmt(shapes[key])}"
                )
    for lname in params:
        if lname not in expected:
            raise UserError(
                f"{source}: layer {lname} is not a parametric layer of the model (those are: {model_layers})"
            )
    for lname in expected:
        net.layer(lname).set_params({k: np.asarray(v) for k, v in params[lname].items()})


# ---- helpers -------------------------------------------------------------------------------------------
def _require_built(net: Sequential, infos: list[LayerInfo]) -> None:
    for layer, info in zip(net.layers, infos, strict=True):
        if set(info.param_shapes) - set(layer.params):
            raise ValueError(f"network is not built ({layer.name} has no parameters); call build() first")


def _fmt(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape) if shape else "()"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file renamed into place."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise ExportError(f"{path}: cannot write ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; an exported model gets the mode any new file would (umask)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"{path}: cannot write ({e.strerror or e})") from e


__all__ = [
    "ExportError",
    "apply_params",
    "ir_version_for",
    "load_json",
    "load_npz",
    "onnx_available",
    "param_dtype",
    "params_file_kind",
    "run_onnx",
    "save_json",
    "save_npz",
    "to_json_text",
    "to_npz_bytes",
    "to_onnx",
    "verify_onnx",
]
