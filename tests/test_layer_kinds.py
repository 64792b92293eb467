"""Every registered layer kind through every place that reads the registry: a kind that one of them
cannot handle fails here.

The places: the constructor's hyper-parameters (``hyper()`` / ``from_hyper``), the config schema and
``build_network``, the JSON Schema, the checkpoint's ``/model`` record and ``Checkpoint.network()``,
the model summary, the gradient checker's per-layer facts (``elementwise``, ``window``), the ONNX
export and the PyTorch mirror (each where its package is installed).  A kind whose constructor needs
arguments must have an entry in ``EXAMPLES``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cnnbp.checkpoint import ResumeRecord, read_checkpoint, write_checkpoint
from cnnbp.config import build_network, config_from_dict
from cnnbp.config_schema import json_schema_document
from cnnbp.core.gradcheck import gradcheck
from cnnbp.core.hyper import hyper_params
from cnnbp.core.losses import SoftmaxCrossEntropy
from cnnbp.core.optim import SGD
from cnnbp.core.registry import LAYERS
from cnnbp.core.trainer import Trainer
from cnnbp.render.console import model_table
from tests.conftest import CASES, EXAMPLES, IMAGE, VECTOR, inputs, network


def test_every_kind_can_be_built() -> None:
    for kind, cls in LAYERS.items():
        needs = [p.name for p in hyper_params(cls) if p.required]
        assert not needs or kind in EXAMPLES, f"add an example of {kind} (it needs {needs}) to EXAMPLES"






@pytest.mark.parametrize(("kind", "hyper"), CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_hyper_round_trip(kind: str, hyper: dict) -> None:
    layer = LAYERS[kind].from_hyper(hyper)
    again = type(layer).from_hyper(layer.hyper())
    assert type(again) is type(layer) and again.hyper() == layer.hyper()
    assert layer.kind == kind


@pytest.mark.parametrize(("kind", "hyper"), CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_config_builds_the_kind(kind: str, hyper: dict) -> None:
    shape = list(VECTOR if kind == "dense" else IMAGE)
    head = [] if kind in ("dense", "flatten") else [{"type": "flatten"}]
    raw = {
        "data": {"source": "inline", "x": [np.zeros(shape).tolist()], "y": [0]},
        "model": {
            "input_shape": shape,
            "layers": [{"type": kind, **hyper}, *head, {"type": "dense", "units": 3}],
        },
    }
    cfg = config_from_dict(raw)
    built = build_network(cfg).layers[0]
    assert type(built) is type(LAYERS[kind].from_hyper(hyper))
    assert built.hyper() == LAYERS[kind].from_hyper(hyper).hyper()
    # the resolved config builds the same again
    assert build_network(config_from_dict(cfg.resolved)).layers[0].hyper() == built.hyper()


def test_the_json_schema_lists_every_kind() -> None:
    doc = json_schema_document()
    kinds = {
        d["properties"]["type"]["const"] for name, d in doc["$defs"].items() if name.startswith("Layer_")
    }
    assert kinds == set(LAYERS)


@pytest.mark.parametrize(("kind", "hyper"), CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_checkpoint_records_and_rebuilds_the_kind(kind: str, hyper: dict, tmp_path: Path) -> None:
    net = network(kind, hyper, np.float32)
    x, y = inputs(net)
    x = x.astype(np.float32)
    probe = Trainer(net, SoftmaxCrossEntropy(), SGD(0.1), batch_size=3).probe(x, y)
    path = write_checkpoint(
        tmp_path / "0000.h5", run_name="kinds", epoch=0, step=0, seed=0, loss="softmax_cross_entropy",
        config="", net=net, optimizer=SGD(0.1), probe_x=x, probe_y=y, probe_index=np.arange(3),
        grads=probe.grads, deltas=probe.deltas, metrics={}, history={},
        resume=ResumeRecord(0, 1, True, 0.0, 0, math.nan, ""),
    )  # fmt: skip
    ck = read_checkpoint(path)
    assert ck.layers[0].type == kind
    rebuilt = ck.network()
    assert [type(l) for l in rebuilt.layers] == [type(l) for l in net.layers]
    assert np.array_equal(rebuilt.forward(x), net.forward(x))
    assert np.array_equal(ck.deltas["under_test"], probe.deltas["under_test"])


@pytest.mark.parametrize(("kind", "hyper"), CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_summary_and_the_checkers_facts(kind: str, hyper: dict) -> None:
    net = network(kind, hyper)
    info = net.summary()[0]
    layer = net.layers[0]
    assert info.kind == kind and kind in str(model_table(net.summary(), net.input_shape).columns[1]._cells)
    if layer.elementwise:
        assert info.output_shape == info.input_shape and not layer.params
    if layer.window() is not None:
        (kh, kw), (sh, sw), (ph, pw) = layer.window()
        _, h, w = info.input_shape
        assert info.output_shape[1:] == ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    assert set(layer.params) == set(layer.param_names)


def _kinky(kind: str, hyper: dict) -> bool:
    layer = LAYERS[kind].from_hyper(hyper)
    return not layer.analytic and hasattr(layer, "kink_signature")


KINKY = [(kind, h) for kind, h in CASES if _kinky(kind, h)]


@pytest.mark.parametrize(("kind", "hyper"), KINKY, ids=[f"{k}-{i}" for k, i in KINKY])
def test_a_kind_with_kinks_has_a_frozen_forward_that_agrees_at_its_own_state(kind: str, hyper: dict) -> None:
    """A built-in kind with a ``kink_signature()`` can be held in its state by the checker: held at the
    state of x itself, ``frozen_forward`` is ``forward`` (one smooth piece, the one x lies on)."""
    net = network(kind, hyper)
    layer = net.layers[0]
    x, _ = inputs(net)
    y = layer.forward(x)
    assert layer.frozen_forward is not None, f"{kind} has kinks but no frozen_forward"
    held = layer.frozen_forward(x + 0.0, np.array(layer.kink_signature(), copy=True))
    assert held.shape == y.shape and held.dtype == y.dtype
    np.testing.assert_allclose(held, y, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("kind", "hyper"), CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_gradcheck_passes_through_the_kind(kind: str, hyper: dict) -> None:
    net = network(kind, hyper)
    x, y = inputs(net)
    result = gradcheck(net, SoftmaxCrossEntropy(), x, y, method="auto")
    assert result.passed, [r for r in result.rows if r.status != "PASS"]
    assert any(r.layer == "under_test" and r.tensor == "delta" for r in result.rows)


@pytest.mark.parametrize(("kind", "hyper"), CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_onnx_export_runs_like_the_engine(kind: str, hyper: dict) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from cnnbp.onnx_graph import to_onnx, verify_onnx

    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-9)):
        net = network(kind, hyper, dtype)
        x, _ = inputs(net)
        model = to_onnx(net, "softmax_cross_entropy")
        assert verify_onnx(model, net, x.astype(dtype)) <= tol * max(1.0, float(np.abs(net.forward(x)).max()))


@pytest.mark.parametrize(("kind", "hyper"), CASES, ids=[f"{k}-{i}" for k, i in CASES])
def test_the_torch_mirror_agrees(kind: str, hyper: dict) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed (the torch extra)")
    from cnnbp.core.gradcheck import relative_error
    from cnnbp.torch_mirror import TorchMirror

    net = network(kind, hyper)
    x, y = inputs(net)
    loss = SoftmaxCrossEntropy()
    # deterministic on both sides: the engine's probe phase, the mirror's probe mode (no dropout masks)
    with net.in_phase("probe"):
        value = net.gradients(x, y, loss)
    t_value, t_grads = TorchMirror(net, loss).gradients(x, y)
    assert relative_error(value, t_value, 1e-300) <= 1e-10
    for lname, group in net.grads().items():
        for key, g in group.items():
            scale = float(np.abs(t_grads[lname][key]).max())
            assert float(relative_error(g, t_grads[lname][key], scale).max()) <= 1e-10, f"{lname}.{key}"
