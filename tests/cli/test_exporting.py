"""Tests of the library export, :func:`cnnbp.export` (:mod:`cnnbp.exporting`), on runs trained for real.

Runs are digits on 200 images for one epoch (tests/cli/conftest.py), float32 and float64.  The ONNX side
is checked with onnx and onnxruntime directly (the checker on the written file, a fresh InferenceSession
on the checkpoint's probe samples) against the engine's forward pass; the NPZ/JSON side by reading the
files with ``np.load`` / ``json.load`` and comparing with the checkpoints bit for bit.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnnbp
from cnnbp import __version__
from cnnbp.checkpoint import read_checkpoint
from cnnbp.errors import UserError
from cnnbp.exporting import ExportReport, onnx_tolerance
from cnnbp.onnx_graph import INSTALL_HINT, ExportError
from cnnbp.runner import Session
from cnnbp.runs import Run
from tests.cli.conftest import (
    RUN_FILES,
    assert_same_params,
    engine_network,
    last_checkpoint,
    onnx_vs_engine,
    read_export,
    train_digits,
)

TOL = {"float32": 1e-5, "float64": 1e-9}
NATIVE_ONLY = {"Conv", "AveragePool", "LpPool"}


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- ONNX ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_export_checks_and_matches_engine_in_onnxruntime(
    ort, export_runs: dict[str, Path], tmp_path: Path, dtype: str
) -> None:
    import onnx

    run = Path(shutil.copytree(export_runs[dtype], tmp_path / "run"))
    report = cnnbp.export(Run(run))
    path = run / "model.onnx"
    assert isinstance(report, ExportReport) and report.ok and report.written and report.verified
    assert path.is_file() and report.path == str(path) and report.bytes == path.stat().st_size
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the staging file is gone
    onnx.checker.check_model(str(path), full_check=True)
    diff = report.max_abs_diff
    assert 0 <= diff <= TOL[dtype]
    assert (report.opset, report.ir_version, report.format, report.dtype) == (17, 8, "onnx", dtype)

    ck = last_checkpoint(run)
    assert report.checkpoint == str(ck.path) and report.epoch == 1 and report.run == ck.run_name
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["run"] == ck.run_name == {"float32": "d32", "float64": "d64"}[dtype]
    assert meta["epoch"] == "1" and meta["cnnbp_version"] == __version__ and meta["config"] == ck.config
    ops = {n.op_type for n in model.graph.node}
    if dtype == "float64":  # decomposed by default: onnxruntime has no float64 Conv kernel
        assert not ops & NATIVE_ONLY
        assert report.ops == "decomposed (auto)"
    else:
        assert "Conv" in ops
        assert report.ops == "native (auto)"
    assert report.op_types == list(dict.fromkeys(n.op_type for n in model.graph.node))
    assert report.outputs == ["logits [N, 10]", "probabilities [N, 10]"]

    # a fresh onnxruntime session on the written file, against the engine, on the probe samples
    x = ck.probe_x
    assert x.dtype == np.dtype(dtype) and len(x) == 8
    assert (report.samples, report.inputs) == (8, "probe")
    worst = onnx_vs_engine(path, ck)
    assert worst <= TOL[dtype]
    assert worst == pytest.approx(diff, abs=TOL[dtype] / 10)  # the reported number is this difference


def test_onnx_tolerance_scales_with_outputs_beyond_one() -> None:
    """1e-5 / 1e-9 absolute for outputs within [-1, 1]; relative to the largest output beyond."""
    assert onnx_tolerance("float32", np.array([[0.5, -1.0]])) == (1e-5, 1.0)
    assert onnx_tolerance("float64", np.array([[0.5, -1.0]])) == (1e-9, 1.0)
    tol, scale = onnx_tolerance("float32", np.array([[3.0, -22.0, np.nan, np.inf]]))
    assert scale == 22.0 and tol == pytest.approx(2.2e-4)


def test_report_tolerance_is_the_scaled_one(ort, run32: Path) -> None:
    report = cnnbp.export(run32)
    ck = last_checkpoint(run32)
    scale = max(1.0, float(np.abs(engine_network(ck).forward(ck.probe_x)).max()))
    assert report.output_scale == pytest.approx(scale) and report.tolerance == pytest.approx(1e-5 * scale)
    doc = report.to_dict()
    assert doc["max_abs_diff"] == report.max_abs_diff and doc["ok"] is True and doc["written"] is True


def test_opset_and_ops_options(ort, run32: Path, tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "x.onnx"
    report = cnnbp.export(run32, out, opset=13, ops="decomposed")
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 13 and model.ir_version == 7
    assert (report.opset, report.ir_version, report.ops) == (13, 7, "decomposed")
    assert not {n.op_type for n in model.graph.node} & NATIVE_ONLY
    assert report.max_abs_diff <= 1e-5

    with pytest.raises(ExportError, match=r"^opset: must be an int from 13"):
        cnnbp.export(run32, tmp_path / "y.onnx", opset=11)
    assert not (tmp_path / "y.onnx").exists()


def test_float64_native_needs_no_verify(ort, export_runs: dict[str, Path], tmp_path: Path) -> None:
    """onnxruntime cannot run a native float64 Conv: an error with the way out; verify=False writes it."""
    out = tmp_path / "native.onnx"
    with pytest.raises(ExportError) as info:
        cnnbp.export(export_runs["float64"], out, ops="native")
    message = str(info.value)
    assert "NOT_IMPLEMENTED" in message and "--ops decomposed" in message and "--no-verify" in message
    assert "\n" not in message
    assert not out.exists()

    report = cnnbp.export(export_runs["float64"], out, ops="native", verify=False)
    assert report.written and report.ok and not report.verified and report.max_abs_diff is None
    assert out.is_file()


def test_non_integer_lp_p_names_the_layer(ort, lp_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(lp_run, tmp_path / "lp"))
    with pytest.raises(ExportError) as info:
        cnnbp.export(run)
    assert str(info.value).startswith("pool2: LpPool needs an integer p, got 2.5; --ops decomposed")
    assert not (run / "model.onnx").exists()

    report = cnnbp.export(run, ops="decomposed")
    assert report.ok and report.max_abs_diff <= 1e-5


def test_missing_onnx_extra_names_the_install_hint(no_onnxruntime, run32: Path) -> None:
    with pytest.raises(UserError) as info:
        cnnbp.export(run32)
    assert str(info.value) == (
        f"--format onnx: needs the onnx and onnxruntime packages; {INSTALL_HINT}"
    )
    assert "onnxruntime" in str(info.value)
    assert not (run32 / "model.onnx").exists()
    # NPZ and JSON need neither package
    assert cnnbp.export(run32, format="npz").ok
    assert cnnbp.export(run32, format="json").ok


def test_missing_onnx_extra_via_onnx_available(run32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cnnbp.exporting.onnx_available", lambda: False)
    with pytest.raises(UserError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        cnnbp.export(run32, verify=False)
    assert _listing(run32) == RUN_FILES


# ---- verification failures: nothing written ------------------------------------------------------------
def test_verification_failure_reports_and_writes_nothing(
    ort, run32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX and engine disagree (the comparison itself is forced to disagree): ok False, no file."""
    monkeypatch.setattr("cnnbp.exporting.verify_onnx", lambda model, net, x: 0.5)
    report = cnnbp.export(run32)
    assert not report.ok and not report.written and report.verified
    assert report.max_abs_diff == 0.5 and report.tolerance < 0.5
    assert report.path == str(run32 / "model.onnx")
    assert _listing(run32) == RUN_FILES


def test_npz_read_back_one_ulp_off_fails_verification(run32: Path, npz_one_ulp_off: None) -> None:
    """The NPZ check is bit for bit: a file whose reading moves one weight by one ulp is refused."""
    report = cnnbp.export(run32, format="npz")
    assert not report.ok and not report.written
    assert 0 < report.max_abs_diff < 1e-6 and report.tolerance == 0.0
    assert not (run32 / "model.npz").exists()
    assert _listing(run32) == RUN_FILES


def test_existing_output_needs_force(ort, run32: Path) -> None:
    import onnx

    path = run32 / "model.onnx"
    path.write_bytes(b"precious")
    with pytest.raises(UserError) as info:
        cnnbp.export(run32)
    assert str(info.value) == f"{path}: already exists; --force overwrites it"
    assert path.read_bytes() == b"precious"

    report = cnnbp.export(run32, force=True)
    assert report.written
    onnx.checker.check_model(str(path), full_check=True)


# ---- targets and default names --------------------------------------------------------------------------
def test_every_kind_of_target_exports_the_same_checkpoint(run32: Path) -> None:
    """A Run, its folder (str or Path), its checkpoints folder, a checkpoint file and a Checkpoint give
    the same file; the default name is model.json beside the run for its last checkpoint."""
    last = run32 / "checkpoints" / "0001.h5"
    targets = [Run(run32), run32, str(run32), run32 / "checkpoints", last, str(last), read_checkpoint(last),
               cnnbp.load_run(run32).checkpoint("last")]  # fmt: skip
    texts = set()
    for target in targets:
        report = cnnbp.export(target, format="json", force=True)
        assert report.path == str(run32 / "model.json"), target
        assert (report.checkpoint, report.epoch, report.run) == (str(last), 1, "d32")
        texts.add((run32 / "model.json").read_text(encoding="utf-8"))
    assert len(texts) == 1
    assert_same_params(read_export(run32 / "model.json"), read_checkpoint(last).weights, "float32")


def test_checkpoint_0_exports_the_initial_weights(run32: Path) -> None:
    report = cnnbp.export(run32, checkpoint=0, format="npz")
    path = run32 / "model-0000.npz"  # not the run's last checkpoint: the epoch is in the name
    assert report.path == str(path) and report.epoch == 0
    assert path.is_file() and not (run32 / "model.npz").exists()
    exported = read_export(path)
    assert_same_params(exported, read_checkpoint(run32 / "checkpoints" / "0000.h5").weights, "float32")
    last = last_checkpoint(run32).weights
    assert not np.array_equal(exported["conv1"]["W"], last["conv1"]["W"])
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["__config__"]) == last_checkpoint(run32).config


@pytest.mark.parametrize("choice", ["1", 1, "last", None])
def test_checkpoint_choice_of_the_last_epoch_is_model(run32: Path, choice: str | int | None) -> None:
    report = cnnbp.export(run32, checkpoint=choice, format="json")
    assert report.path == str(run32 / "model.json") and report.epoch == 1


def test_a_checkpoint_object_of_an_earlier_epoch(run32: Path) -> None:
    report = cnnbp.export(cnnbp.load_run(run32).checkpoint(0), format="json")
    assert report.path == str(run32 / "model-0000.json") and report.epoch == 0


def test_loose_checkpoint_file_and_output_folder(run32: Path, tmp_path: Path) -> None:
    loose = tmp_path / "saved.h5"
    shutil.copy(run32 / "checkpoints" / "0001.h5", loose)
    assert cnnbp.export(loose, format="json").ok
    assert (tmp_path / "d32-0001.json").is_file()  # beside the file, named after the run and epoch

    folder = tmp_path / "out"
    folder.mkdir()
    assert cnnbp.export(run32, folder, format="npz").path == str(folder / "model.npz")
    assert (folder / "model.npz").is_file()
    report = cnnbp.export(run32, tmp_path / "w.json")  # the suffix picks json
    assert report.format == "json"
    assert "layers" in json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        ("{run}", {"format": "npz", "opset": 17}, "--opset: applies to --format onnx only, not npz"),
        ("{run}", {"format": "json", "ops": "native"}, "--ops: applies to --format onnx only, not json"),
        ("{run}", {"format": "npz", "path": "{tmp}/w.json"},
         "{tmp}/w.json: the suffix .json names json, but --format is npz"),
        ("{run}", {"format": "npz", "path": "{tmp}/nowhere/w.npz"},
         "{tmp}/nowhere/w.npz: the folder {tmp}/nowhere does not exist"),
        ("{run}", {"format": "npz", "checkpoint": 7}, "{run}: no checkpoint for epoch 7 (have 0, 1)"),
        ("{run}", {"format": "npz", "path": "{run}/checkpoints/0001.h5"},
         "{run}/checkpoints/0001.h5: is the checkpoint being exported; choose another -o"),
        ("{tmp}/missing", {}, "{tmp}/missing: no such run folder or checkpoint file"),
        ("{run}", {"format": "xml"}, "--format: expected one of onnx, npz, json, tensorboard, got 'xml'"),
        ("{run}", {"ops": "fast"}, "--ops: expected one of auto, native, decomposed, got 'fast'"),
        ("{run}/checkpoints/0000.h5", {"format": "npz", "checkpoint": 1},
         "{run}/checkpoints/0000.h5: --checkpoint selects a checkpoint of a run folder, not of a file"),
    ],
)  # fmt: skip
def test_option_errors_are_user_errors(
    run32: Path, tmp_path: Path, target: str, kwargs: dict, message: str
) -> None:
    fill = {"tmp": str(tmp_path), "run": str(run32)}
    args = {k: v.format(**fill) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(UserError) as info:
        cnnbp.export(target.format(**fill), **args)
    assert str(info.value) == message.format(**fill)
    assert (run32 / "checkpoints" / "0001.h5").stat().st_size > 0
    assert _listing(run32) == RUN_FILES


def test_export_does_not_need_the_data(ort, tmp_path: Path) -> None:
    """The network comes from the checkpoint's config; the NPZ data set it names may be gone."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x_train=rng.random((40, 1, 6, 6)), y_train=rng.integers(0, 3, 40))
    cfg = {
        "name": "small",
        "data": {"source": "npz", "path": str(data)},
        "model": {"input_shape": [1, 6, 6], "layers": [
            {"type": "conv", "filters": 2, "kernel": 3, "bias": "untied", "activation": "tanh"},
            {"type": "subsample", "scale": 2, "activation": "sigmoid"},
            {"type": "flatten"}, {"type": "dense", "units": 3}]},
        "train": {"epochs": 1, "batch_size": 8},
    }  # fmt: skip
    run = cnnbp.train(cfg, out=tmp_path)
    data.unlink()
    for fmt in ("onnx", "npz", "json"):
        report = cnnbp.export(run, format=fmt)
        assert report.ok and report.written
        assert (tmp_path / "small" / f"model.{fmt}").is_file()


# ---- NPZ / JSON read back by model.init_from ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_npz_json_round_trip_through_init_from(
    export_runs: dict[str, Path], tmp_path: Path, fmt: str, dtype: str
) -> None:
    run = Path(shutil.copytree(export_runs[dtype], tmp_path / "src"))
    report = cnnbp.export(run, format=fmt)
    path = run / f"model.{fmt}"
    assert report.ok and report.max_abs_diff == 0 and report.tolerance == 0
    exported = read_export(path)
    src = last_checkpoint(run)
    assert_same_params(exported, src.weights, dtype)

    overrides = ["data.limit=200", f"model.init_from={path}", f"dtype={dtype}"]
    with Session.new(None, overrides) as dry:  # as --dry-run: checked and loaded, nothing written
        assert_same_params(dry.net.parameters(), exported, dtype)
    again = train_digits(tmp_path, "again", f"model.init_from={path}", f"dtype={dtype}")
    first = read_checkpoint(again / "checkpoints" / "0000.h5")
    assert_same_params(first.weights, exported, dtype)
    for lname, group in first.weights.items():  # exact in the run's dtype
        for key, w in group.items():
            assert w.dtype == np.dtype(dtype)
            assert w.tobytes() == src.weights[lname][key].tobytes()


# ---- networks with buffers and a dropout: batchnorm's running statistics, inference in the eval phase ----
BUFFERED_LAYERS = [
    {"type": "conv", "filters": 3, "kernel": 3, "padding": 1},
    {"type": "batchnorm", "momentum": 0.3, "activation": "relu"},
    {"type": "pool", "mode": "max", "size": 2},
    {"type": "flatten"},
    {"type": "dense", "units": 8},
    {"type": "batchnorm"},
    {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 10},
]
#: the layers holding buffers in BUFFERED_LAYERS, and their channels / features
BUFFERED = {"batchnorm2": 3, "batchnorm6": 8}


def buffered_config(dtype: str, name: str, **model: Any) -> dict:
    """Digits (160 images, 8×8) through BUFFERED_LAYERS, one epoch in batches of 32."""
    return {
        "name": name, "seed": 2, "dtype": dtype,
        "data": {"source": "digits", "limit": 160, "scale": 0.0625},
        "model": {"input_shape": [1, 8, 8], "layers": BUFFERED_LAYERS, **model},
        "loss": "softmax_cross_entropy",
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.1},
        "record": {"probe": 4, "every": 1},
    }  # fmt: skip


@pytest.fixture(scope="module")
def buffered_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float32 and a float64 run of ``buffered_config``, trained once; copy one before writing into it."""
    out = tmp_path_factory.mktemp("buffered")
    return {dtype: cnnbp.train(buffered_config(dtype, f"bn{dtype[-2:]}"), out=out).path
            for dtype in ("float32", "float64")}  # fmt: skip


@pytest.fixture
def buffered(buffered_runs: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A private copy of the float64 run, or of the ``dtype`` the test is parametrized with."""
    callspec = getattr(request.node, "callspec", None)
    dtype = callspec.params.get("dtype", "float64") if callspec else "float64"
    return Path(shutil.copytree(buffered_runs[dtype], tmp_path / "run"))


def read_buffers(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The buffers of an exported file, read with numpy / json directly: NPZ ``__state__/<layer>/<buffer>``
    entries, JSON ``"state"`` objects."""
    state: dict[str, dict[str, np.ndarray]] = {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                if key.startswith("__state__/"):
                    _, lname, bname = key.split("/")
                    state.setdefault(lname, {})[bname] = npz[key]
    else:
        for row in json.loads(path.read_text(encoding="utf-8"))["layers"]:
            if "state" in row:
                state[row["name"]] = {k: np.array(v) for k, v in row["state"].items()}
    return state


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_npz_json_export_holds_the_running_statistics(buffered: Path, fmt: str, dtype: str) -> None:
    """Both files hold every buffer of the checkpoint bit for bit beside the parameters, and the check
    (parameters, buffers, eval-phase outputs) passes bit for bit."""
    report = cnnbp.export(buffered, format=fmt)
    assert report.ok and report.written and report.max_abs_diff == 0 and report.tolerance == 0
    assert report.buffers == 2 * len(BUFFERED)  # running_mean and running_var of each batchnorm
    path = buffered / f"model.{fmt}"
    ck = last_checkpoint(buffered)
    assert set(ck.state) == set(BUFFERED)
    for lname, c in BUFFERED.items():  # trained: the running statistics moved from mean 0, variance 1
        assert not np.array_equal(ck.state[lname]["running_mean"], np.zeros(c))
        assert not np.array_equal(ck.state[lname]["running_var"], np.ones(c))
    assert_same_params(read_buffers(path), ck.state, dtype)
    assert_same_params(read_export(path), ck.weights, dtype)
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as npz:
            assert {k for k in npz.files if k.startswith("__state__/")} == {
                f"__state__/{l}/{b}" for l in BUFFERED for b in ("running_mean", "running_var")
            }
    else:
        rows = json.loads(path.read_text(encoding="utf-8"))["layers"]
        assert [r["name"] for r in rows if "state" in r] == list(BUFFERED)  # only layers with buffers


@pytest.mark.parametrize("fmt", ["onnx", "npz", "json"])
def test_every_forward_pass_of_an_export_is_in_the_eval_phase(
    buffered: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares inference: no dropout mask drawn, the running statistics used and not moved."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from cnnbp.core.network import Sequential

    phases: list[set[str]] = []
    real = Sequential.forward

    def spy(self: Sequential, x: np.ndarray) -> np.ndarray:
        phases.append({layer.phase for layer in self.layers})
        return real(self, x)

    monkeypatch.setattr(Sequential, "forward", spy)
    report = cnnbp.export(buffered, format=fmt)
    assert report.ok and phases and all(p == {"eval"} for p in phases), phases


def test_onnx_export_of_a_batchnorm_run_scales_by_the_eval_outputs(ort, buffered: Path) -> None:
    """The tolerance's scale is the largest inference output (the checkpoint's network in the eval phase)."""
    report = cnnbp.export(buffered)
    ck = last_checkpoint(buffered)
    net = ck.network()
    with net.in_phase("eval"):
        out = net.forward(ck.probe_x)
    assert report.ok and report.output_scale == max(1.0, float(np.abs(out).max()))
    assert report.max_abs_diff <= 1e-9 * report.output_scale


def without_buffers(data: bytes, fmt: str) -> bytes:
    """An exported file's bytes as an export written before buffers were exported (none in it)."""
    if fmt == "npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            kept = {k: npz[k] for k in npz.files if not k.startswith("__state__/")}
        buf = io.BytesIO()
        np.savez(buf, **kept)
        return buf.getvalue()
    doc = json.loads(data)
    for row in doc["layers"]:
        row.pop("state", None)
    return json.dumps(doc).encode("utf-8")


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_verification_notices_a_file_without_buffers(
    buffered: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that leaves the buffers out is caught by the check (the fresh network does not take them
    from the checkpoint): an error naming the layer, nothing written."""
    from cnnbp import exporting

    if fmt == "npz":
        real_npz = exporting.to_npz_bytes
        monkeypatch.setattr(exporting, "to_npz_bytes", lambda *a: without_buffers(real_npz(*a), "npz"))
    else:
        real_json = exporting.to_json_text
        monkeypatch.setattr(
            exporting, "to_json_text", lambda *a: without_buffers(real_json(*a).encode(), "json").decode()
        )
    with pytest.raises(UserError, match="layer batchnorm2 has buffers running_mean, running_var, got none"):
        cnnbp.export(buffered, format=fmt)
    assert _listing(buffered) == RUN_FILES


def test_verification_notices_a_buffer_one_ulp_off(buffered: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers are compared bit for bit: a reading that moves one running variance by one ulp is refused."""
    from cnnbp import exporters

    real = exporters.load_npz

    def one_ulp_off(path: Path) -> exporters.ParamsFile:
        loaded = real(path)
        var = loaded.state["batchnorm6"]["running_var"]
        var[0] = np.nextafter(var[0], np.inf)
        return loaded

    monkeypatch.setattr("cnnbp.exporting.load_npz", one_ulp_off)
    report = cnnbp.export(buffered, format="npz")
    assert not report.ok and not report.written
    assert 0 < report.max_abs_diff < 1e-6
    assert _listing(buffered) == RUN_FILES


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_init_from_an_export_loads_its_buffers(buffered: Path, tmp_path: Path, fmt: str, dtype: str) -> None:
    """A run started from an export begins (checkpoint 0) with its parameters and running statistics."""
    assert cnnbp.export(buffered, format=fmt).ok
    path = buffered / f"model.{fmt}"
    run = cnnbp.train(buffered_config(dtype, "again", init_from=str(path)), out=tmp_path).path
    first = read_checkpoint(run / "checkpoints" / "0000.h5")
    src = last_checkpoint(buffered)
    for got, want in ((first.weights, src.weights), (first.state, src.state)):
        assert_same_params(got, want, dtype)
        assert {v.dtype for g in got.values() for v in g.values()} == {np.dtype(dtype)}


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_init_from_an_older_export_without_buffers(buffered: Path, fmt: str) -> None:
    """An export written before buffers were exported still starts a run: its parameters, and the
    network's initial running statistics (mean 0, variance 1)."""
    assert cnnbp.export(buffered, format=fmt).ok
    path = buffered / f"model.{fmt}"
    path.write_bytes(without_buffers(path.read_bytes(), fmt))
    with Session.new(buffered_config("float64", "old", init_from=str(path))) as dry:
        assert_same_params(dry.net.parameters(), last_checkpoint(buffered).weights, "float64")
        for lname, c in BUFFERED.items():
            np.testing.assert_array_equal(dry.net.layer(lname).state["running_mean"], np.zeros(c))
            np.testing.assert_array_equal(dry.net.layer(lname).state["running_var"], np.ones(c))


def test_init_from_a_checkpoint_loads_its_buffers(buffered: Path) -> None:
    with Session.new(buffered_config("float64", "again", init_from=str(buffered))) as dry:
        src = last_checkpoint(buffered)
        assert_same_params(dry.net.parameters(), src.weights, "float64")
        assert_same_params(dry.net.state(), src.state, "float64")


def test_init_from_buffers_that_do_not_fit_changes_nothing(buffered: Path, tmp_path: Path) -> None:
    """Parameters that fit and a buffer of the wrong shape: an error naming the buffer, and the network
    keeps its own parameters (all or nothing)."""
    from cnnbp.config import build_network, config_from_dict
    from cnnbp.runner import load_initial_weights

    assert cnnbp.export(buffered, format="npz").ok
    with np.load(buffered / "model.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["__state__/batchnorm2/running_mean"] = np.zeros(4)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    net = build_network(config_from_dict(buffered_config("float64", "x"))).build(
        np.random.default_rng(0), np.float64
    )
    before = {l: {k: v.copy() for k, v in g.items()} for l, g in net.parameters().items()}
    with pytest.raises(UserError) as info:
        load_initial_weights(net, str(bad))
    assert str(info.value) == (
        f"model.init_from: {bad}: layer batchnorm2 buffer running_mean has shape (4,), expected (3,)"
    )
    assert_same_params(net.parameters(), before, "float64")
    np.testing.assert_array_equal(net.layer("batchnorm2").state["running_mean"], np.zeros(3))
