"""End-to-end tests of ``cnnbp export`` through the Typer app, and of ``model.init_from`` reading its files.

Runs are trained for real (digits, 200 samples, one epoch) in float32 and float64.  The ONNX side is
checked with onnx and onnxruntime directly (the checker on the written file, a fresh InferenceSession
on the checkpoint's probe samples) against the engine's forward pass; the NPZ/JSON side by reading the
files with ``np.load`` / ``json.load`` and comparing with the checkpoints bit for bit.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cnnbp import __version__
from cnnbp import exporters as exporters_mod
from cnnbp.app import app
from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.commands.export import onnx_tolerance
from cnnbp.config import build_network, config_from_dict
from cnnbp.core.network import Sequential
from cnnbp.exporters import INSTALL_HINT
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
TOL = {"float32": 1e-5, "float64": 1e-9}
DIGITS = ["--set", "data.limit=200", "--epochs", "1", "--quiet"]
runner = CliRunner()


def invoke(*args: object):  # noqa: ANN201 - click's Result
    """Run ``cnnbp`` in-process with string arguments."""
    return runner.invoke(app, [str(a) for a in args])


def train(out: Path, name: str, *extra: object, config: Path | None = None) -> Path:
    """Train a run (the built-in digits config unless ``config``) and return its folder."""
    args = ["train", *([config] if config else []), *DIGITS, "--out", out, "--name", name, *extra]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return out / name


def last_checkpoint(run: Path) -> Checkpoint:
    return read_checkpoint(sorted((run / "checkpoints").glob("*.h5"))[-1])


def engine(ck: Checkpoint) -> Sequential:
    """The checkpoint's network in the engine, rebuilt from its config and weights."""
    cfg = config_from_dict(yaml.safe_load(ck.config))
    net = build_network(cfg).build(np.random.default_rng(5), np.dtype(ck.dtype))
    for lname, group in ck.weights.items():
        net.layer(lname).set_params(group)
    return net


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reported_diff(stdout: str) -> float:
    m = re.search(r"max \|diff\| (\S+)", stdout)
    assert m, stdout
    return float(m.group(1))


def one_error_line(result) -> str:  # noqa: ANN001 - click's Result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two digits runs trained once for the module: float32 and float64."""
    out = tmp_path_factory.mktemp("runs")
    return {
        "float32": train(out, "d32"),
        "float64": train(out, "d64", "--set", "dtype=float64"),
    }


@pytest.fixture
def run32(trained: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the float32 run (exports write into the run folder)."""
    return Path(shutil.copytree(trained["float32"], tmp_path / "runs" / "d32"))


@pytest.fixture
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


# ---- ONNX ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_export_checks_and_matches_engine_in_onnxruntime(
    ort, trained: dict[str, Path], tmp_path: Path, dtype: str
) -> None:
    import onnx

    run = Path(shutil.copytree(trained[dtype], tmp_path / "run"))
    result = invoke("export", run)
    assert result.exit_code == 0, result.output
    path = run / "model.onnx"
    assert path.is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the staging file is gone
    onnx.checker.check_model(str(path), full_check=True)
    diff = reported_diff(result.stdout)
    assert 0 <= diff <= TOL[dtype]
    assert f"{path}" in result.stdout and "opset 17, IR 8" in result.stdout

    ck = last_checkpoint(run)
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["run"] == ck.run_name == {"float32": "d32", "float64": "d64"}[dtype]
    assert meta["epoch"] == "1" and meta["cnnbp_version"] == __version__ and meta["config"] == ck.config
    ops = {n.op_type for n in model.graph.node}
    if dtype == "float64":  # decomposed by default: onnxruntime has no float64 Conv kernel
        assert not ops & {"Conv", "AveragePool", "LpPool"}
        assert "(auto)" in result.stdout and "decomposed" in result.stdout
    else:
        assert "Conv" in ops

    # a fresh onnxruntime session on the written file, against the engine, on the probe samples
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = ck.probe_x
    assert x.dtype == np.dtype(dtype) and len(x) == 8
    logits, probs = session.run(["logits", "probabilities"], {"input": x})
    ref = engine(ck).forward(x)
    assert logits.dtype == np.dtype(dtype)
    worst = max(np.abs(logits - ref).max(), np.abs(probs - softmax(ref)).max())
    assert worst <= TOL[dtype]
    assert worst == pytest.approx(diff, abs=TOL[dtype] / 10)  # the printed number is this difference


def test_json_report_is_one_object(ort, run32: Path) -> None:
    result = invoke("export", run32, "--json")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    rep = json.loads(line)
    assert rep["format"] == "onnx" and rep["written"] is True and rep["ok"] is True
    assert rep["path"] == str(run32 / "model.onnx") and rep["bytes"] == (run32 / "model.onnx").stat().st_size
    assert rep["opset"] == 17 and rep["ir_version"] == 8 and rep["ops"] == "native (auto)"
    assert rep["samples"] == 8 and rep["inputs"] == "probe"
    ck = last_checkpoint(run32)
    scale = max(1.0, float(np.abs(engine(ck).forward(ck.probe_x)).max()))
    assert rep["output_scale"] == pytest.approx(scale) and rep["tolerance"] == pytest.approx(1e-5 * scale)
    assert 0 <= rep["max_abs_diff"] <= 1e-5
    assert rep["epoch"] == 1 and rep["dtype"] == "float32"


def test_onnx_tolerance_scales_with_outputs_beyond_one() -> None:
    """1e-5 / 1e-9 absolute for outputs within [-1, 1]; relative to the largest output beyond."""
    assert onnx_tolerance("float32", np.array([[0.5, -1.0]])) == (1e-5, 1.0)
    assert onnx_tolerance("float64", np.array([[0.5, -1.0]])) == (1e-9, 1.0)
    tol, scale = onnx_tolerance("float32", np.array([[3.0, -22.0, np.nan, np.inf]]))
    assert scale == 22.0 and tol == pytest.approx(2.2e-4)


def test_existing_output_needs_force(ort, run32: Path) -> None:
    import onnx

    path = run32 / "model.onnx"
    path.write_bytes(b"precious")
    result = invoke("export", run32)
    assert result.exit_code == 2
    assert one_error_line(result) == f"error: {path}: already exists; --force overwrites it"
    assert path.read_bytes() == b"precious"

    result = invoke("export", run32, "--force")
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(str(path), full_check=True)


def test_opset_and_ops_options(ort, run32: Path, tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "x.onnx"
    result = invoke("export", run32, "-o", out, "--opset", "13", "--ops", "decomposed")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 13 and model.ir_version == 7
    assert not {n.op_type for n in model.graph.node} & {"Conv", "AveragePool", "LpPool"}
    assert reported_diff(result.stdout) <= 1e-5

    result = invoke("export", run32, "-o", tmp_path / "y.onnx", "--opset", "11")
    assert result.exit_code == 2 and "opset: must be an int from 13" in one_error_line(result)


def test_float64_native_needs_no_verify(ort, trained: dict[str, Path], tmp_path: Path) -> None:
    """onnxruntime cannot run a native float64 Conv: exit 2 with the way out; --no-verify writes it."""
    out = tmp_path / "native.onnx"
    result = invoke("export", trained["float64"], "-o", out, "--ops", "native")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "NOT_IMPLEMENTED" in line and "--ops decomposed" in line and "--no-verify" in line
    assert not out.exists()

    result = invoke("export", trained["float64"], "-o", out, "--ops", "native", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "skipped (--no-verify)" in result.stdout and out.is_file()


def test_verification_failure_exits_1_and_writes_nothing(
    ort, run32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit path when ONNX and engine disagree (the comparison itself is forced to disagree)."""
    monkeypatch.setattr("cnnbp.commands.export.verify_onnx", lambda model, net, x: 0.5)
    result = invoke("export", run32)
    assert result.exit_code == 1
    assert "FAILED" in result.stdout and "not written" in result.stdout
    line = one_error_line(result)
    assert "verification failed: max |diff| 0.5 exceeds the " in line and "nothing was written" in line
    assert sorted(p.name for p in run32.iterdir()) == ["checkpoints", "config.yaml", "metrics.csv"]


def test_npz_read_back_one_ulp_off_fails_verification(run32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NPZ check is bit for bit: a file whose reading moves one weight by one ulp is refused."""
    real = exporters_mod.load_npz

    def one_ulp_off(path: Path):  # noqa: ANN202
        params, text = real(path)
        w = params["conv1"]["W"]
        w.flat[0] = np.nextafter(w.flat[0], np.inf)
        return params, text

    monkeypatch.setattr("cnnbp.commands.export.load_npz", one_ulp_off)
    result = invoke("export", run32, "-f", "npz")
    assert result.exit_code == 1
    assert "not bit-identical" in result.stdout and "FAILED" in result.stdout
    assert "the file read back is not bit-identical to the engine" in one_error_line(result)
    assert not (run32 / "model.npz").exists()


def test_non_integer_lp_p_names_the_layer(ort, tmp_path: Path) -> None:
    run = train(tmp_path, "lp", "--set", "model.layers[1]={type: pool, mode: lp, size: 2, p: 2.5}")
    result = invoke("export", run)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(
        "error: pool2: LpPool needs an integer p, got 2.5; --ops decomposed"
    )
    assert not (run / "model.onnx").exists()

    result = invoke("export", run, "--ops", "decomposed")
    assert result.exit_code == 0, result.output
    assert reported_diff(result.stdout) <= 1e-5


@pytest.fixture
def no_onnxruntime(monkeypatch: pytest.MonkeyPatch):
    """Make ``import onnxruntime`` fail, as without the extra; the availability cache is reset around."""
    exporters_mod.onnx_available.cache_clear()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    yield
    exporters_mod.onnx_available.cache_clear()


def test_missing_onnx_extra_is_one_line_with_the_install_hint(no_onnxruntime, run32: Path) -> None:
    result = invoke("export", run32)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert INSTALL_HINT in line and "onnxruntime" in line
    assert not (run32 / "model.onnx").exists()
    # NPZ and JSON need neither package
    assert invoke("export", run32, "-f", "npz").exit_code == 0
    assert invoke("export", run32, "-f", "json").exit_code == 0


def test_missing_onnx_extra_via_onnx_available(run32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cnnbp.commands.export.onnx_available", lambda: False)
    result = invoke("export", run32, "--no-verify")
    assert result.exit_code == 2 and INSTALL_HINT in one_error_line(result)


# ---- NPZ / JSON and init_from ------------------------------------------------------------------------
def _read_export(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The parameters of an exported file, read with numpy / json directly (not through exporters)."""
    params: dict[str, dict[str, np.ndarray]] = {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                if key != "__config__":
                    lname, _, pname = key.rpartition("/")
                    params.setdefault(lname, {})[pname] = npz[key]
    else:
        for row in json.loads(path.read_text(encoding="utf-8"))["layers"]:
            if row["params"]:
                params[row["name"]] = {k: np.array(v) for k, v in row["params"].items()}
    return params


def _assert_same(
    a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]], dtype: str
) -> None:
    assert sorted(a) == sorted(b)
    for lname in a:
        assert sorted(a[lname]) == sorted(b[lname])
        for key in a[lname]:
            x, y = a[lname][key].astype(dtype), b[lname][key].astype(dtype)
            assert x.tobytes() == y.tobytes(), f"{lname}/{key} differs"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_npz_json_round_trip_through_init_from(
    trained: dict[str, Path], tmp_path: Path, fmt: str, dtype: str
) -> None:
    run = Path(shutil.copytree(trained[dtype], tmp_path / "src"))
    result = invoke("export", run, "--format", fmt)
    assert result.exit_code == 0, result.output
    path = run / f"model.{fmt}"
    assert "bit-identical, max |diff| 0 ok" in result.stdout
    exported = _read_export(path)
    src = last_checkpoint(run)
    _assert_same(exported, src.weights, dtype)

    dtype_set = ["--set", f"dtype={dtype}"]
    dry = invoke(
        "train", *DIGITS, "--out", tmp_path, "--set", f"model.init_from={path}", *dtype_set, "--dry-run"
    )
    assert dry.exit_code == 0, dry.output
    again = train(tmp_path, "again", "--set", f"model.init_from={path}", *dtype_set)
    first = read_checkpoint(again / "checkpoints" / "0000.h5")
    _assert_same(first.weights, exported, dtype)
    for lname, group in first.weights.items():  # exact in the run's dtype
        for key, w in group.items():
            assert w.dtype == np.dtype(dtype)
            assert w.tobytes() == src.weights[lname][key].tobytes()


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_init_from_shape_mismatch_names_the_layer(run32: Path, tmp_path: Path, fmt: str) -> None:
    assert invoke("export", run32, "-f", fmt).exit_code == 0
    path = run32 / f"model.{fmt}"
    result = invoke("train", *DIGITS, "--out", tmp_path / "runs2", "--set", f"model.init_from={path}",
                    "--set", "model.layers[0].filters=8", "--dry-run")  # fmt: skip
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"error: model.init_from: {path}: layer conv1 parameter W has shape 16×1×3×3, "
        "the model expects 8×1×3×3"
    )


def test_init_from_checkpoint_and_bad_files(run32: Path, tmp_path: Path) -> None:
    """A run folder still works; a missing or unreadable file is one line naming init_from."""
    ok = invoke("train", *DIGITS, "--out", tmp_path / "r", "--set", f"model.init_from={run32}", "--dry-run")
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": [', encoding="utf-8")
    for source, words in [
        (bad, f"error: model.init_from: {bad}: not valid JSON"),
        (tmp_path / "none.npz", f"error: model.init_from: {tmp_path / 'none.npz'}: no such"),
    ]:
        result = invoke(
            "train", *DIGITS, "--out", tmp_path / "r", "--set", f"model.init_from={source}", "--dry-run"
        )
        assert result.exit_code == 2
        assert one_error_line(result).startswith(words)


def test_checkpoint_0_exports_the_initial_weights(run32: Path) -> None:
    result = invoke("export", run32, "--checkpoint", "0", "-f", "npz")
    assert result.exit_code == 0, result.output
    path = run32 / "model-0000.npz"  # not the run's last checkpoint: the epoch is in the name
    assert path.is_file() and not (run32 / "model.npz").exists()
    exported = _read_export(path)
    _assert_same(exported, read_checkpoint(run32 / "checkpoints" / "0000.h5").weights, "float32")
    last = last_checkpoint(run32).weights
    assert not np.array_equal(exported["conv1"]["W"], last["conv1"]["W"])
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["__config__"]) == last_checkpoint(run32).config


# ---- places, names and option errors -------------------------------------------------------------------
def test_loose_checkpoint_file_and_output_folder(run32: Path, tmp_path: Path) -> None:
    loose = tmp_path / "saved.h5"
    shutil.copy(run32 / "checkpoints" / "0001.h5", loose)
    assert invoke("export", loose, "-f", "json").exit_code == 0
    assert (tmp_path / "d32-0001.json").is_file()  # beside the file, named after the run and epoch

    folder = tmp_path / "out"
    folder.mkdir()
    assert invoke("export", run32, "-o", folder, "-f", "npz").exit_code == 0
    assert (folder / "model.npz").is_file()
    assert invoke("export", run32, "-o", tmp_path / "w.json").exit_code == 0  # the suffix picks json
    assert "layers" in json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}", "-f", "npz", "--opset", "17"], "error: --opset: applies to --format onnx only, not npz"),
        (["{run}", "-f", "json", "--ops", "native"], "error: --ops: applies to --format onnx only, not json"),
        (["{run}", "-f", "npz", "-o", "{tmp}/w.json"],
         "error: {tmp}/w.json: the suffix .json names json, but --format is npz"),
        (["{run}", "-f", "npz", "-o", "{tmp}/nowhere/w.npz"],
         "error: {tmp}/nowhere/w.npz: the folder {tmp}/nowhere does not exist"),
        (["{run}", "-f", "npz", "--checkpoint", "7"], "error: {run}: no checkpoint for epoch 7 (have 0, 1)"),
        (["{run}", "-f", "npz", "-o", "{run}/checkpoints/0001.h5"],
         "error: {run}/checkpoints/0001.h5: is the checkpoint being exported"),
        (["{tmp}/missing"], "error: {tmp}/missing: no such run folder or checkpoint file"),
    ],
)  # fmt: skip
def test_option_errors_are_one_line_exit_2(
    run32: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    fill = {"tmp": str(tmp_path), "run": str(run32)}
    result = invoke("export", *[a.format(**fill) for a in args])
    assert result.exit_code == 2
    assert one_error_line(result).startswith(message.format(**fill))
    assert (run32 / "checkpoints" / "0001.h5").stat().st_size > 0


def test_export_does_not_need_the_data(ort, tmp_path: Path) -> None:
    """The network comes from the checkpoint's config; the NPZ data set it names may be gone."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x_train=rng.random((40, 1, 6, 6)), y_train=rng.integers(0, 3, 40))
    cfg = {
        "data": {"source": "npz", "path": str(data)},
        "model": {"input_shape": [1, 6, 6], "layers": [
            {"type": "conv", "filters": 2, "kernel": 3, "bias": "untied", "activation": "tanh"},
            {"type": "subsample", "scale": 2, "activation": "sigmoid"},
            {"type": "flatten"}, {"type": "dense", "units": 3}]},
        "train": {"epochs": 1, "batch_size": 8},
    }  # fmt: skip
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = invoke("train", config, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    data.unlink()
    for fmt in ("onnx", "npz", "json"):
        result = invoke("export", tmp_path / "small", "-f", fmt)
        assert result.exit_code == 0, result.output
        assert (tmp_path / "small" / f"model.{fmt}").is_file()


# ---- the DeepLearnToolbox example on real MNIST ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST at {MNIST_DIR}")
def test_dlt_mnist_exports_in_all_three_formats(ort, tmp_path: Path) -> None:
    import onnx

    config = REPO / "configs" / "dlt_mnist.yaml"
    result = invoke("train", config, "--set", f"data.path={MNIST_DIR}", "--set", "data.limit=500",
                    "--out", tmp_path, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    run = tmp_path / "dlt_mnist"
    for fmt in ("onnx", "npz", "json"):
        result = invoke("export", run, "--format", fmt)
        assert result.exit_code == 0, result.output
        assert (run / f"model.{fmt}").is_file()
        if fmt == "onnx":
            assert reported_diff(result.stdout) <= 1e-5
        else:
            assert "bit-identical, max |diff| 0 ok" in result.stdout
    model = onnx.load(str(run / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["output"]  # mse: sigmoid outputs, no softmax
    assert {"Conv", "AveragePool", "Sigmoid", "Gemm"} <= {n.op_type for n in model.graph.node}
