"""Tests of :mod:`cnnbp.onnx_graph`: every layer's ONNX nodes against the engine's forward pass, the model
around them (IR, opset, inputs, outputs, metadata), native against decomposed forms, and errors.

Reference values come from ``net.forward`` (the engine) and from softmax written out in the conftest;
the ONNX side runs in onnxruntime (and, for graphs onnxruntime has no float64 kernels for, in onnx's own
reference evaluator).  Every parameter is redrawn at random after ``build`` so biases and β are not the
initialisers' zeros / 1/k², which would hide a mis-wired bias.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest

from cnnbp.core.errors import ShapeError
from cnnbp.core.hyper import alternatives, hyper_params
from cnnbp.core.layers import Conv2D, Identity, Layer, LpPool
from cnnbp.core.network import Sequential
from cnnbp.core.registry import LAYERS
from cnnbp.errors import UserError
from cnnbp.onnx_graph import ExportError, ir_version_for, onnx_available, run_onnx, to_onnx, verify_onnx
from tests.cli.conftest import (
    CONFIG_YAML,
    EXPORT_CASES,
    EXPORT_DTYPES,
    EXPORT_TOL,
    export_case,
    random_net,
    softmax,
)

NATIVE_ONLY = {"Conv", "AveragePool", "LpPool"}  # the ops onnxruntime's CPU provider lacks in float64


def _check_outputs(
    got: dict[str, np.ndarray], net: Sequential, loss: str, x: np.ndarray, tol: float
) -> float:
    with net.in_phase("eval"):  # the exported graph is the inference network
        ref = net.forward(x)
    if loss == "softmax_cross_entropy":
        assert sorted(got) == ["logits", "probabilities"]
        worst = max(np.abs(got["logits"] - ref).max(), np.abs(got["probabilities"] - softmax(ref)).max())
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
def onnx(ort):  # noqa: ANN001, ANN201 - the onnx module
    return pytest.importorskip("onnx")


def _op_types(model) -> set[str]:  # noqa: ANN001 - onnx.ModelProto
    return {node.op_type for node in model.graph.node}


def _reference_run(model, x: np.ndarray) -> dict[str, np.ndarray]:  # noqa: ANN001 - onnx.ModelProto
    """The model run by onnx's reference evaluator (it has float64 kernels for every op)."""
    from onnx.reference import ReferenceEvaluator

    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, {"input": x}), strict=True))


# ---- ONNX: numbers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", EXPORT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_onnx_default_export_matches_engine_in_onnxruntime(onnx, case: str, dtype: type) -> None:
    net, loss, x = export_case(case, dtype)
    model = to_onnx(net, loss)
    onnx.checker.check_model(model, full_check=True)
    _check_outputs(run_onnx(model, x), net, loss, x, EXPORT_TOL[dtype])
    assert verify_onnx(model, net, x) <= EXPORT_TOL[dtype]


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_onnx_decomposed_float32_matches_engine(onnx, case: str) -> None:
    """The decomposed graph (the float64 default) is the same function in float32 too."""
    net, loss, x = export_case(case, np.float32)
    model = to_onnx(net, loss, ops="decomposed")
    assert not _op_types(model) & NATIVE_ONLY
    _check_outputs(run_onnx(model, x), net, loss, x, EXPORT_TOL[np.float32])


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_onnx_native_float64_matches_engine_in_reference_evaluator(onnx, case: str) -> None:
    """Native Conv/AveragePool/LpPool in DOUBLE: onnxruntime has no kernels, onnx's evaluator checks it."""
    net, loss, x = export_case(case, np.float64)
    model = to_onnx(net, loss, ops="native")
    onnx.checker.check_model(model, full_check=True)
    _check_outputs(_reference_run(model, x), net, loss, x, EXPORT_TOL[np.float64])


def test_onnxruntime_without_a_float64_kernel_says_so_in_the_error_type(ort) -> None:
    """A native float64 Conv has no onnxruntime kernel: ModelLoadError says so as a fact
    (``missing_kernel``), which ``export`` rewords with its own options, and names the way out."""
    from cnnbp.onnx_graph import ModelLoadError

    net, loss, x = export_case("lenet_softmax", np.float64)
    with pytest.raises(ModelLoadError) as info:
        run_onnx(to_onnx(net, loss, ops="native"), x)
    assert info.value.missing_kernel and "NOT_IMPLEMENTED" in info.value.detail
    assert str(info.value).startswith("onnxruntime: cannot load the model: ")
    assert str(info.value).endswith("float64 models need ops='decomposed')")


def test_onnx_batch_dimension_is_symbolic(onnx) -> None:
    net, loss, _ = export_case("lenet_softmax", np.float32)
    model = to_onnx(net, loss)
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, *net.input_shape)).astype(np.float32)
        _check_outputs(run_onnx(model, x), net, loss, x, EXPORT_TOL[np.float32])


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
    net32 = random_net(layers(), (2, 5, 6), np.float32)
    with pytest.raises(ExportError, match=r"^pool3: LpPool needs an integer p, got 2\.5$"):
        to_onnx(net32, "mse")
    x = np.random.default_rng(1).normal(size=(2, 2, 5, 6))
    _check_outputs(run_onnx(to_onnx(net32, "mse", ops="decomposed"), x.astype(np.float32)), net32, "mse",
                   x.astype(np.float32), EXPORT_TOL[np.float32])  # fmt: skip
    net64 = random_net(layers(), (2, 5, 6), np.float64)  # float64 exports decomposed by default
    _check_outputs(run_onnx(to_onnx(net64, "mse"), x), net64, "mse", x, EXPORT_TOL[np.float64])


# ---- every registered layer kind -----------------------------------------------------------------------
#: hyper-parameter values the generic choice below would get wrong, by kind (none needed today)
KIND_HYPER: dict[str, dict[str, Any]] = {}
IMAGE, VECTOR = (2, 7, 8), (6,)


def _sample_value(kind: str, name: str, annotation: Any) -> Any:
    """A small valid value for a required hyper-parameter: 2 for an integer or size, 2.0 for a number."""
    for bare, bound in alternatives(annotation):
        low = bound.ge if bound is not None and bound.ge is not None else None
        if bare is int:
            return max(2, int(low or 0))
        if bare is float:
            return max(2.0, float(low or 0))
        if get_origin(bare) is Literal:
            return get_args(bare)[0]
    raise AssertionError(
        f"layer kind {kind!r}: no generic value for its hyper-parameter {name} ({annotation}); "
        f"add one to KIND_HYPER in {Path(__file__).name}"
    )


def _kind_variants() -> list[tuple[str, dict[str, Any]]]:
    """``(kind, hyper)`` for every kind in the registry: required hyper-parameters get a small valid
    value, and each value of every ``Literal`` one (conv bias tied/untied, pool max/mean/lp) its own
    variant; the other defaults stay."""
    variants = []
    for kind, cls in LAYERS.items():
        base, choices = {}, {}
        for p in hyper_params(cls):
            literals = [v for bare, _ in alternatives(p.annotation) if get_origin(bare) is Literal
                        for v in get_args(bare)]  # fmt: skip
            if p.name in KIND_HYPER.get(kind, {}):
                base[p.name] = KIND_HYPER[kind][p.name]
            elif literals:
                choices[p.name] = literals
            elif p.required:
                base[p.name] = _sample_value(kind, p.name, p.annotation)
        if not choices:
            variants.append((kind, base))
        for name, values in choices.items():
            variants.extend((kind, {**base, name: value}) for value in values)
    return variants


KIND_VARIANTS = _kind_variants()


def _kind_id(variant: tuple[str, dict[str, Any]]) -> str:
    kind, hyper = variant
    return f"{kind}[{','.join(f'{k}={v}' for k, v in hyper.items())}]"


def _single_layer_net(kind: str, hyper: dict[str, Any], dtype: type) -> Sequential:
    """The kind's layer alone (named ``layer``) on a C×H×W image, or on a feature vector when it takes
    no image; random parameters."""
    for shape in (IMAGE, VECTOR):
        layer = LAYERS[kind].from_hyper(hyper, name="layer")
        try:
            return random_net([layer], shape, dtype, seed=3)
        except ShapeError:
            continue
    raise AssertionError(f"layer kind {kind!r} {hyper} takes neither a {IMAGE} image nor a {VECTOR} vector")


def test_the_walk_covers_every_built_in_kind() -> None:
    kinds = {kind for kind, _ in KIND_VARIANTS}
    assert kinds == set(LAYERS)
    assert {"conv", "dense", "flatten", "identity", "pool", "relu", "sigmoid", "subsample", "tanh"} <= kinds
    assert {h["mode"] for k, h in KIND_VARIANTS if k == "pool"} == {"max", "mean", "lp"}
    assert {h["bias"] for k, h in KIND_VARIANTS if k == "conv"} == {"tied", "untied"}


@pytest.mark.parametrize("variant", KIND_VARIANTS, ids=_kind_id)
def test_every_registered_layer_kind_exports_and_matches_engine(onnx, variant: tuple[str, dict]) -> None:
    """Each kind in ``cnnbp.core.registry.LAYERS``, alone in a network: its ONNX nodes compute what the
    engine does in onnxruntime, native and decomposed in float32 and in float64 as exported by default
    (what ``cnnbp export`` writes).  A new kind without an ONNX mapping fails here.

    Native float64 is left to the case grid above: a native operator may hold a float32 attribute
    (LeakyRelu's α), which is why float64 exports decomposed by default."""
    kind, hyper = variant
    x64 = np.random.default_rng(4).normal(size=(3, *_single_layer_net(kind, hyper, np.float64).input_shape))
    for dtype, ops in [(np.float32, "native"), (np.float32, "decomposed"), (np.float64, "auto")]:
        net = _single_layer_net(kind, hyper, dtype)
        x = x64.astype(dtype)
        model = to_onnx(net, "mse", ops=ops)
        onnx.checker.check_model(model, full_check=True)
        _check_outputs(run_onnx(model, x), net, "mse", x, EXPORT_TOL[dtype])
        assert verify_onnx(model, net, x) <= EXPORT_TOL[dtype], (kind, hyper, dtype, ops)
        if ops == "decomposed":
            assert not _op_types(model) & NATIVE_ONLY


# ---- ONNX: graph and model ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", EXPORT_DTYPES, ids=lambda d: d.__name__)
def test_onnx_model_io_version_and_metadata(onnx, dtype: type) -> None:
    net, loss, _ = export_case("lenet_softmax", dtype)
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
    softmax_nodes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert [(a.name, a.i) for a in softmax_nodes[0].attribute] == [("axis", 1)]
    onnx.checker.check_model(model, full_check=True)


def test_mse_model_has_one_output(onnx) -> None:
    net, loss, _ = export_case("subsample_remainder", np.float32)
    model = to_onnx(net, loss)
    assert [o.name for o in model.graph.output] == ["output"]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]] == [3, 2, 3]


def test_auto_ops_native_for_float32_decomposed_for_float64(onnx) -> None:
    for case in ("lenet_softmax", "meanpool_overlap_and_remainder", "dlt_lenet_mse"):
        net32, loss, _ = export_case(case, np.float32)
        net64, _, _ = export_case(case, np.float64)
        assert _op_types(to_onnx(net32, loss)) & NATIVE_ONLY
        assert not _op_types(to_onnx(net64, loss)) & NATIVE_ONLY


def test_native_conv_attributes_and_biases(onnx) -> None:
    from onnx import numpy_helper

    net, loss, _ = export_case("conv_untied_stride_pad_pairs", np.float32)
    model = to_onnx(net, loss)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    assert attrs == {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [2, 0, 2, 0]}
    assert len(conv.input) == 2  # untied: no B, an Add of the (1, F, Ho, Wo) map instead
    (add,) = [n for n in model.graph.node if n.op_type == "Add"]
    assert add.input[0] == conv.output[0]
    np.testing.assert_array_equal(inits[add.input[1]], net.layer("conv1").params["b"][None])

    tied, loss, _ = export_case("conv_tied_stride_pad_pairs", np.float32)
    (conv,) = [n for n in to_onnx(tied, loss).graph.node if n.op_type == "Conv"]
    assert len(conv.input) == 3
    assert {a.name: list(a.ints) for a in conv.attribute}["pads"] == [1, 2, 1, 2]


@pytest.mark.parametrize(("opset", "ir"), [(13, 7), (17, 8), (18, 8), (19, 9), (21, 10)])
def test_ir_version_follows_opset(onnx, opset: int, ir: int) -> None:
    net, loss, x = export_case("lenet_softmax", np.float32)
    model = to_onnx(net, loss, opset=opset)
    assert model.ir_version == ir == ir_version_for(opset)
    assert model.opset_import[0].version == opset
    _check_outputs(run_onnx(model, x), net, loss, x, EXPORT_TOL[np.float32])


def test_onnx_user_errors(onnx) -> None:
    net, _, _ = export_case("maxpool_overlap_and_remainder", np.float32)
    with pytest.raises(ExportError, match=r"^loss: softmax_cross_entropy needs a feature vector"):
        to_onnx(net, "softmax_cross_entropy")
    with pytest.raises(ExportError, match=r"^loss: 'hinge' is not one of"):
        to_onnx(net, "hinge")
    with pytest.raises(ExportError, match=r"^opset: must be an int from 13"):
        to_onnx(net, "mse", opset=11)
    with pytest.raises(ExportError, match=r"^ops: 'fast' is not one of auto, native, decomposed$"):
        to_onnx(net, "mse", ops="fast")  # type: ignore[arg-type]
    assert isinstance(ExportError("x"), UserError)


class _Negate(Layer):
    """A user's element-wise layer (not registered: the registry stays as the built-ins left it)."""

    kind = "negate_for_test"
    elementwise = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        return -x


class _MappedNegate(_Negate):
    onnx_op = "Neg"


def test_a_layer_brings_its_own_mapping_or_is_named_without_one(onnx) -> None:
    x = np.random.default_rng(2).normal(size=(2, 2, 3, 3)).astype(np.float32)
    net = random_net([Conv2D(2, 2, name="c"), _MappedNegate(name="neg")], (2, 3, 3), np.float32)
    _check_outputs(run_onnx(to_onnx(net, "mse"), x), net, "mse", x, EXPORT_TOL[np.float32])

    unmapped = random_net([Conv2D(2, 2, name="c"), _Negate(name="neg")], (2, 3, 3), np.float32)
    no_mapping = r"^neg: layer type 'negate_for_test' has no ONNX mapping \(its class"
    with pytest.raises(ExportError, match=no_mapping):
        to_onnx(unmapped, "mse")


def test_module_imports_without_loading_onnx() -> None:
    code = (
        "import sys, cnnbp, cnnbp.onnx_graph, cnnbp.exporters, cnnbp.exporting, cnnbp.commands.export; "
        "print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.stdout.split() == ["False", "False"]


def test_onnx_available_in_this_environment(onnx) -> None:
    assert onnx_available() is True


def test_a_plugins_native_form_unavailable_points_at_the_decomposed_form(onnx) -> None:
    """Any mapping (a plugin's too) can say that only its native operator lacks a form: the error is then
    a NeedsDecomposedError carrying the ops the decomposed form uses, which ``export`` turns into a hint."""
    from cnnbp.core.errors import NativeFormUnavailable
    from cnnbp.onnx_graph import NeedsDecomposedError

    class Picky(Identity):
        def to_onnx(self, g, x, out, info):  # noqa: ANN001, ANN202
            raise NativeFormUnavailable("no native form for this setting", "Mul/Add")

    net = random_net([Picky(name="picky")], (3,), np.float32)
    with pytest.raises(NeedsDecomposedError, match=r"^picky: no native form for this setting$") as info:
        to_onnx(net, "mse")
    assert info.value.decomposed_as == "Mul/Add"
