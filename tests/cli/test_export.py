"""Tests for cnnbp_cli.exporters: ONNX vs the engine's forward pass, NPZ/JSON round trips, init_from checks.

Reference values come from ``net.forward`` (the engine) and from softmax written out here; the ONNX side
runs in onnxruntime (and, for graphs onnxruntime has no float64 kernels for, in onnx's own reference
evaluator).  Every parameter is redrawn at random after ``build`` so biases and β are not the
initialisers' zeros / 1/k², which would hide a mis-wired bias.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cnnbp.core.layers import Conv2D, Dense, Flatten, Identity, LpPool, MaxPool, MeanPool, ReLU, Sigmoid, Tanh
from cnnbp.core.layers.pooling import Subsample
from cnnbp.core.network import Sequential
from cnnbp.errors import UserError
from cnnbp.exporters import (
    ExportError,
    apply_params,
    load_json,
    load_npz,
    onnx_available,
    run_onnx,
    save_json,
    save_npz,
    to_npz_bytes,
    to_onnx,
    verify_onnx,
)

TOL = {np.float32: 1e-5, np.float64: 1e-9}
DTYPES = [np.float32, np.float64]
CONFIG_YAML = "model:\n  input_shape: [1, 12, 12]  # β · Σ, 6×1×5×5\n  layers: []\n"


# ---- test networks -----------------------------------------------------------------------------------
def _randomize(net: Sequential, rng: np.random.Generator) -> Sequential:
    for layer in net.layers:
        for value in layer.params.values():
            value[...] = rng.normal(0.0, 0.5, size=value.shape)
    return net


def _net(layers: list, input_shape: tuple[int, ...], dtype: type, seed: int = 0) -> Sequential:
    rng = np.random.default_rng(seed)
    return _randomize(Sequential(layers, input_shape).build(rng, dtype), rng)


# name → (layers factory, per-sample input shape, loss)
CASES: dict[str, tuple[Callable[[], list], tuple[int, ...], str]] = {
    "conv_tied_stride_pad_pairs": (
        lambda: [Conv2D(3, (3, 2), stride=(2, 1), padding=(1, 2), name="conv1"), Tanh(name="conv1.tanh"),
                 Flatten(name="flat"), Dense(5, name="fc")],
        (2, 9, 8), "mse"),
    "conv_untied_stride_pad_pairs": (
        lambda: [Conv2D(4, (2, 3), stride=(1, 2), padding=(2, 0), bias="untied", name="conv1"),
                 ReLU(name="relu"), Flatten(name="flat"), Dense(3, name="fc")],
        (1, 7, 10), "softmax_cross_entropy"),
    "maxpool_overlap_and_remainder": (
        lambda: [MaxPool(3, 1, name="pool1"), MaxPool((2, 3), (2, 2), name="pool2"), Identity(name="id")],
        (2, 9, 10), "mse"),
    "meanpool_overlap_and_remainder": (
        lambda: [MeanPool((3, 2), (1, 2), name="pool1"), MeanPool(3, 2, name="pool2")],
        (2, 10, 9), "mse"),
    **{
        f"lppool_p{p}": (
            (lambda p=p: [LpPool(3, 2, p=p, name="pool1"), LpPool((2, 3), (2, 1), p=p, name="pool2")]),
            (2, 10, 11), "mse")
        for p in (1, 2, 3)
    },
    "subsample_remainder": (
        lambda: [Subsample(2, name="sub1"), Sigmoid(name="sig"), Subsample(3, name="sub2")],
        (3, 15, 19), "mse"),
    "dense_activations": (
        lambda: [Dense(5, name="fc1"), Sigmoid(name="sig"), Dense(4, name="fc2"), Tanh(name="tanh"),
                 Dense(4, name="fc3"), ReLU(name="relu"), Dense(3, name="fc4"), Identity(name="id")],
        (6,), "softmax_cross_entropy"),
    "dlt_lenet_mse": (  # seed 003: 6c5 → 2s → 12c5 → 2s → dense 10, sigmoid everywhere
        lambda: [Conv2D(6, 5, name="c1"), Sigmoid(name="c1.sigmoid"), Subsample(2, name="s2"),
                 Conv2D(12, 5, name="c3"), Sigmoid(name="c3.sigmoid"), Subsample(2, name="s4"),
                 Flatten(name="flat"), Dense(10, name="out"), Sigmoid(name="out.sigmoid")],
        (1, 28, 28), "mse"),
    "lenet_softmax": (
        lambda: [Conv2D(4, 3, padding=1, name="c1"), ReLU(name="r1"), MaxPool(2, name="p1"),
                 Conv2D(6, 3, stride=2, bias="untied", name="c2"), Tanh(name="t2"),
                 LpPool(2, 1, p=2, name="p2"),
                 Flatten(name="flat"), Dense(7, name="out")],
        (2, 12, 13), "softmax_cross_entropy"),
}


def _case(name: str, dtype: type, seed: int = 0) -> tuple[Sequential, str, np.ndarray]:
    layers, shape, loss = CASES[name]
    net = _net(layers(), shape, dtype, seed)
    x = np.random.default_rng(seed + 100).normal(size=(3, *shape)).astype(dtype)
    return net, loss, x


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _check_outputs(
    got: dict[str, np.ndarray], net: Sequential, loss: str, x: np.ndarray, tol: float
) -> float:
    ref = net.forward(x)
    if loss == "softmax_cross_entropy":
        assert sorted(got) == ["logits", "probabilities"]
        worst = max(np.abs(got["logits"] - ref).max(), np.abs(got["probabilities"] - _softmax(ref)).max())
        np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0, atol=tol)
    else:
        assert list(got) == ["output"]
        worst = np.abs(got["output"] - ref).max()
    for value in got.values():
        assert value.dtype == x.dtype
        assert value.shape[0] == x.shape[0]
    assert worst <= tol, f"max |onnx − engine| = {worst:.3g} > {tol:g}"
    return float(worst)


@pytest.fixture
def onnx():
    pytest.importorskip("onnxruntime")
    return pytest.importorskip("onnx")


def _op_types(model) -> set[str]:
    return {node.op_type for node in model.graph.node}


# ---- ONNX: numbers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", list(CASES))
def test_onnx_default_export_matches_engine_in_onnxruntime(onnx, case: str, dtype: type) -> None:
    net, loss, x = _case(case, dtype)
    model = to_onnx(net, loss)
    onnx.checker.check_model(model, full_check=True)
    _check_outputs(run_onnx(model, x), net, loss, x, TOL[dtype])
    assert verify_onnx(model, net, x) <= TOL[dtype]


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_decomposed_float32_matches_engine(onnx, case: str) -> None:
    """The decomposed graph (the float64 default) is the same function in float32 too."""
    net, loss, x = _case(case, np.float32)
    model = to_onnx(net, loss, ops="decomposed")
    assert not _op_types(model) & {"Conv", "AveragePool", "LpPool"}
    _check_outputs(run_onnx(model, x), net, loss, x, TOL[np.float32])


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_native_float64_matches_engine_in_reference_evaluator(onnx, case: str) -> None:
    """Native Conv/AveragePool/LpPool in DOUBLE: onnxruntime has no kernels, onnx's evaluator checks it."""
    from onnx.reference import ReferenceEvaluator

    net, loss, x = _case(case, np.float64)
    model = to_onnx(net, loss, ops="native")
    onnx.checker.check_model(model, full_check=True)
    names = [o.name for o in model.graph.output]
    got = dict(zip(names, ReferenceEvaluator(model).run(None, {"input": x}), strict=True))
    _check_outputs(got, net, loss, x, TOL[np.float64])


def test_onnx_batch_dimension_is_symbolic(onnx) -> None:
    net, loss, _ = _case("lenet_softmax", np.float32)
    model = to_onnx(net, loss)
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, *net.input_shape)).astype(np.float32)
        _check_outputs(run_onnx(model, x), net, loss, x, TOL[np.float32])


def test_lppool_matches_the_lp_norm_written_out(onnx) -> None:
    """ONNX LpPool is (Σ|x|^p)^{1/p} over the window, with negative inputs, p = 3, one 2×2 window."""
    net = Sequential([LpPool(2, p=3, name="pool")], (1, 2, 2)).build(np.random.default_rng(0), np.float32)
    x = np.array([[[[-1.0, 2.0], [0.5, -3.0]]]], dtype=np.float32)
    want = (1.0 + 8.0 + 0.125 + 27.0) ** (1.0 / 3.0)
    for ops in ("native", "decomposed"):
        got = run_onnx(to_onnx(net, "mse", ops=ops), x)["output"]
        np.testing.assert_allclose(got.ravel(), [want], rtol=1e-6)


def test_non_integer_p_exports_only_in_decomposed_form(onnx) -> None:
    layers = lambda: [LpPool(2, 1, p=2.5, name="pool3")]  # noqa: E731
    net32 = _net(layers(), (2, 5, 6), np.float32)
    with pytest.raises(ExportError, match=r"^pool3: LpPool needs an integer p, got 2\.5$"):
        to_onnx(net32, "mse")
    x = np.random.default_rng(1).normal(size=(2, 2, 5, 6))
    _check_outputs(run_onnx(to_onnx(net32, "mse", ops="decomposed"), x.astype(np.float32)), net32, "mse",
                   x.astype(np.float32), TOL[np.float32])
    net64 = _net(layers(), (2, 5, 6), np.float64)  # float64 exports decomposed by default
    _check_outputs(run_onnx(to_onnx(net64, "mse"), x), net64, "mse", x, TOL[np.float64])


# ---- ONNX: graph and model ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_onnx_model_io_version_and_metadata(onnx, dtype: type) -> None:
    net, loss, _ = _case("lenet_softmax", dtype)
    meta = {"run": "mnist-01", "cnnbp_version": "0.1.0", "config": CONFIG_YAML}
    model = to_onnx(net, loss, metadata=meta, graph_name="lenet")
    elem = onnx.TensorProto.FLOAT if dtype is np.float32 else onnx.TensorProto.DOUBLE

    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.producer_name == "cnnbp"
    assert model.graph.name == "lenet"
    assert {p.key: p.value for p in model.metadata_props} == meta
    (inp,) = model.graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == elem
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [2, 12, 13]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    for out in model.graph.output:
        assert out.type.tensor_type.elem_type == elem
        assert [d.dim_value for d in out.type.tensor_type.shape.dim[1:]] == [7]
    assert all(t.data_type == elem for t in model.graph.initializer if t.name.endswith(("/W", "/b")))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert [(a.name, a.i) for a in softmax[0].attribute] == [("axis", 1)]
    onnx.checker.check_model(model, full_check=True)


def test_mse_model_has_one_output(onnx) -> None:
    net, loss, _ = _case("subsample_remainder", np.float32)
    model = to_onnx(net, loss)
    assert [o.name for o in model.graph.output] == ["output"]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]] == [3, 2, 3]


def test_auto_ops_native_for_float32_decomposed_for_float64(onnx) -> None:
    for case in ("lenet_softmax", "meanpool_overlap_and_remainder", "dlt_lenet_mse"):
        net32, loss, _ = _case(case, np.float32)
        net64, _, _ = _case(case, np.float64)
        assert _op_types(to_onnx(net32, loss)) & {"Conv", "AveragePool", "LpPool"}
        assert not _op_types(to_onnx(net64, loss)) & {"Conv", "AveragePool", "LpPool"}


def test_native_conv_attributes_and_biases(onnx) -> None:
    from onnx import numpy_helper

    net, loss, _ = _case("conv_untied_stride_pad_pairs", np.float32)
    model = to_onnx(net, loss)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    assert attrs == {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [2, 0, 2, 0]}
    assert len(conv.input) == 2  # untied: no B, an Add of the (1, F, Ho, Wo) map instead
    (add,) = [n for n in model.graph.node if n.op_type == "Add"]
    assert add.input[0] == conv.output[0]
    np.testing.assert_array_equal(inits[add.input[1]], net.layer("conv1").params["b"][None])

    tied, loss, _ = _case("conv_tied_stride_pad_pairs", np.float32)
    (conv,) = [n for n in to_onnx(tied, loss).graph.node if n.op_type == "Conv"]
    assert len(conv.input) == 3
    assert {a.name: list(a.ints) for a in conv.attribute}["pads"] == [1, 2, 1, 2]


@pytest.mark.parametrize(("opset", "ir"), [(13, 7), (17, 8), (18, 8), (19, 9), (21, 10)])
def test_ir_version_follows_opset(onnx, opset: int, ir: int) -> None:
    net, loss, x = _case("lenet_softmax", np.float32)
    model = to_onnx(net, loss, opset=opset)
    assert model.ir_version == ir
    assert model.opset_import[0].version == opset
    _check_outputs(run_onnx(model, x), net, loss, x, TOL[np.float32])


def test_onnx_user_errors(onnx) -> None:
    net, _, _ = _case("maxpool_overlap_and_remainder", np.float32)
    with pytest.raises(ExportError, match=r"^loss: softmax_cross_entropy needs a feature vector"):
        to_onnx(net, "softmax_cross_entropy")
    with pytest.raises(ExportError, match=r"^loss: 'hinge' is not one of"):
        to_onnx(net, "hinge")
    with pytest.raises(ExportError, match=r"^opset: must be an int from 13"):
        to_onnx(net, "mse", opset=11)
    assert isinstance(ExportError("x"), UserError)


def test_module_imports_without_loading_onnx() -> None:
    code = "import sys, cnnbp.exporters; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "False"]


def test_onnx_available_in_this_environment(onnx) -> None:
    assert onnx_available() is True


# ---- NPZ and JSON ------------------------------------------------------------------------------------
def _awkward(net: Sequential) -> None:
    """Put values that a lossy text or float conversion would change into the first parameter."""
    info, one = np.finfo(net.dtype), net.dtype.type(1)
    # a large value stays finite through the network: max·2⁻⁶⁴ keeps all mantissa bits of max
    awkward = [0.1, 1 / 3, -0.0, info.smallest_subnormal, info.max * 2.0**-64, np.nextafter(one, 2 * one)]
    vals = np.array(awkward, dtype=net.dtype)
    first = next(iter(net.parameters().values()))
    w = next(iter(first.values())).reshape(-1)
    w[: vals.size] = vals


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("fmt", ["npz", "json"])
@pytest.mark.parametrize("case", ["dlt_lenet_mse", "lenet_softmax", "dense_activations"])
def test_file_round_trip_gives_identical_network(tmp_path: Path, case: str, fmt: str, dtype: type) -> None:
    net, _, x = _case(case, dtype, seed=0)
    _awkward(net)
    fresh, _, _ = _case(case, dtype, seed=7)  # same architecture, different values
    assert not np.array_equal(fresh.forward(x), net.forward(x))

    path = tmp_path / f"params.{fmt}"
    config = {"model": {"input_shape": list(net.input_shape)}, "note": "β × Σ", "lr": 0.1}
    if fmt == "npz":
        save_npz(net, CONFIG_YAML, path)
        params, text = load_npz(path)
        assert text == CONFIG_YAML
    else:
        save_json(net, config, path)
        params, loaded_config = load_json(path)
        assert loaded_config == config
    assert sorted(params) == sorted(net.parameters())

    apply_params(fresh, params, source=str(path))
    for lname, group in net.parameters().items():
        for key, value in group.items():
            got = fresh.layer(lname).params[key]
            assert got.dtype == value.dtype
            assert got.tobytes() == value.tobytes(), f"{lname}/{key} changed"  # bit-exact, −0.0 included
    np.testing.assert_array_equal(fresh.forward(x), net.forward(x))


def test_npz_is_plain_arrays(tmp_path: Path) -> None:
    net, _, _ = _case("lenet_softmax", np.float32)
    path = tmp_path / "p.npz"
    save_npz(net, CONFIG_YAML, path)
    with np.load(io.BytesIO(to_npz_bytes(net, CONFIG_YAML)), allow_pickle=False) as mem:
        assert str(mem["__config__"]) == CONFIG_YAML
    with np.load(path, allow_pickle=False) as npz:
        want = {f"{l}/{k}" for l, g in net.parameters().items() for k in g} | {"__config__"}
        assert set(npz.files) == want
        cfg = npz["__config__"]
        assert cfg.shape == () and cfg.dtype.kind == "U" and str(cfg) == CONFIG_YAML
        np.testing.assert_array_equal(npz["c2/b"], net.layer("c2").params["b"])
        assert npz["c2/b"].shape == (6, 2, 2)  # untied: one bias per output position


def test_json_document_layout(tmp_path: Path) -> None:
    net, _, _ = _case("conv_tied_stride_pad_pairs", np.float64)
    path = tmp_path / "p.json"
    save_json(net, {"seed": 0}, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["config"] == {"seed": 0}
    assert [(r["name"], r["type"]) for r in doc["layers"]] == [
        ("conv1", "conv"), ("conv1.tanh", "tanh"), ("flat", "flatten"), ("fc", "dense")
    ]
    assert doc["layers"][1]["params"] == {}
    assert doc["layers"][0]["params"]["W"] == net.layer("conv1").params["W"].tolist()


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ExportError, match=r"bad\.npz: not a readable \.npz"):
        load_npz(bad)
    with pytest.raises(ExportError, match=r"missing\.npz: no such file"):
        load_npz(tmp_path / "missing.npz")
    odd = tmp_path / "odd.npz"
    np.savez(odd, W=np.zeros(3))
    with pytest.raises(ExportError, match=r"odd\.npz: entry 'W' is not named <layer>/<param>"):
        load_npz(odd)
    broken = tmp_path / "broken.json"
    broken.write_text('{"layers": [')
    with pytest.raises(ExportError, match=r"broken\.json: not valid JSON \(line 1"):
        load_json(broken)
    ragged = tmp_path / "ragged.json"
    ragged.write_text('{"layers": [{"name": "fc", "type": "dense", "params": {"W": [[1, 2], [3]]}}]}')
    with pytest.raises(ExportError, match=r"ragged\.json: layers\[0\]\.params\.W is not a rectangular array"):
        load_json(ragged)


# ---- apply_params errors -----------------------------------------------------------------------------
def _small(filters: int, kernel: int) -> Sequential:
    return _net([Conv2D(filters, kernel, name="conv1"), Sigmoid(name="sig"), Flatten(name="flat"),
                 Dense(3, name="dense1")], (1, 12, 12), np.float64)


def test_apply_params_wrong_shape_names_layer_and_both_shapes() -> None:
    model = _small(8, 3)
    before = {l: {k: v.copy() for k, v in g.items()} for l, g in model.parameters().items()}
    params = {l: dict(g) for l, g in _small(6, 5).parameters().items()}
    params["dense1"] = {k: v.copy() for k, v in model.parameters()["dense1"].items()}
    params["dense1"]["W"] = params["dense1"]["W"] + 1
    with pytest.raises(
        UserError, match=r"^old\.npz: layer conv1 parameter W has shape 6×1×5×5, the model expects 8×1×3×3$"
    ):
        apply_params(model, params, source="old.npz")
    for lname, group in before.items():  # all or nothing
        for key, value in group.items():
            np.testing.assert_array_equal(model.layer(lname).params[key], value)


def test_apply_params_missing_and_extra_names() -> None:
    model = _small(8, 3)
    good = {l: {k: v.copy() for k, v in g.items()} for l, g in model.parameters().items()}

    missing = {"conv1": good["conv1"]}
    with pytest.raises(UserError, match=r"^f\.json: has no parameters for layer dense1 \(it has: conv1\)$"):
        apply_params(model, missing, source="f.json")

    extra = {**good, "conv9": {"W": np.zeros((1, 1, 1, 1))}}
    with pytest.raises(UserError, match=r"^f\.json: layer conv9 is not a parametric layer of the model"):
        apply_params(model, extra, source="f.json")

    no_bias = {**good, "dense1": {"W": good["dense1"]["W"]}}
    with pytest.raises(UserError, match=r"^f\.json: layer dense1 has no parameter b"):
        apply_params(model, no_bias, source="f.json")

    extra_param = {**good, "dense1": {**good["dense1"], "gamma": np.ones(3)}}
    with pytest.raises(UserError, match=r"^f\.json: layer dense1 parameter gamma is not in the model"):
        apply_params(model, extra_param, source="f.json")

    text = {**good, "dense1": {**good["dense1"], "b": np.array(["a", "b", "c"])}}
    with pytest.raises(UserError, match=r"^f\.json: layer dense1 parameter b is not a real numeric array"):
        apply_params(model, text, source="f.json")


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_exported_files_get_the_usual_file_mode(tmp_path: Path, fmt: str) -> None:
    """The atomic write must not leave the temporary file's 0600 mode on the export."""
    import os
    import stat

    net = Sequential([Dense(2, name="d")], (3,)).build(np.random.default_rng(0), np.float64)
    path = tmp_path / f"m.{fmt}"
    if fmt == "npz":
        save_npz(net, "seed: 0\n", path)
    else:
        save_json(net, {"seed": 0}, path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
