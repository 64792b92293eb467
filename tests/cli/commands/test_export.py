"""End-to-end tests of ``cnnbp export`` through the Typer app: the report lines (as README.md's "Exporting"
section shows them), ``--json``, exit codes 0 / 1 / 2 and one-line errors; and ``model.init_from`` reading
the files it writes, in ``cnnbp train``.

Runs are digits on 200 images for one epoch (tests/cli/conftest.py).  The library behind the command,
:func:`cnnbp.export`, is tested in tests/cli/test_exporting.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnbp.app import app
from cnnbp.onnx_graph import INSTALL_HINT
from tests.cli.conftest import RUN_FILES, engine_network, last_checkpoint, onnx_vs_engine, unwrapped

REPO = Path(__file__).resolve().parents[3]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
TOL = {"float32": 1e-5, "float64": 1e-9}
DIGITS = ["--set", "data.limit=200", "--epochs", "1", "--quiet"]
NATIVE_ONLY = {"Conv", "AveragePool", "LpPool"}
runner = CliRunner()


def invoke(*args: object):  # noqa: ANN201 - click's Result
    """Run ``cnnbp`` in-process with string arguments."""
    return runner.invoke(app, [str(a) for a in args])


def reported_diff(stdout: str) -> float:
    m = re.search(r"max \|diff\| (\S+)", stdout)
    assert m, stdout
    return float(m.group(1))


def one_error_line(result) -> str:  # noqa: ANN001 - click's Result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ---- the report ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_export_prints_the_file_graph_and_difference(
    ort, export_runs: dict[str, Path], tmp_path: Path, dtype: str
) -> None:
    import onnx

    run = Path(shutil.copytree(export_runs[dtype], tmp_path / "run"))
    result = invoke("export", run)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    path = run / "model.onnx"
    assert path.is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the staging file is gone
    onnx.checker.check_model(str(path), full_check=True)
    diff = reported_diff(result.stdout)
    assert 0 <= diff <= TOL[dtype]
    assert f"{path}" in result.stdout and "opset 17, IR 8" in result.stdout
    if dtype == "float64":  # decomposed by default: onnxruntime has no float64 Conv kernel
        assert "(auto)" in result.stdout and "decomposed" in result.stdout
        assert not {n.op_type for n in onnx.load(str(path)).graph.node} & NATIVE_ONLY
    worst = onnx_vs_engine(path, last_checkpoint(run))  # a fresh onnxruntime session on the file
    assert worst <= TOL[dtype]
    assert worst == pytest.approx(diff, abs=TOL[dtype] / 10)  # the printed number is this difference


def test_report_lines_look_as_in_the_readme(ort, run32: Path) -> None:
    """The three exports of README.md's example, line for line (numbers and sizes aside)."""
    ck = f"{run32}/checkpoints/0001.h5 · run d32, epoch 1, float32"
    size = r"\d+(\.\d)? kB"
    number = r"\d(\.\d+)?(e-\d\d)?"  # as .3g and .2e print them: 0, 3.34e-06, 1e-05, 1.40e-04
    tolerance = rf"(1e-05|{number} = 1e-05 × max \|output\| [\d.]+)"
    onnx_lines = [
        rf"exported  {re.escape(str(run32))}/model\.onnx \(ONNX, {size}\)",
        re.escape(f"from      {ck}"),
        re.escape("onnx      opset 17, IR 8, ops native (auto): Conv, Relu, MaxPool, Flatten, Gemm, Softmax"),
        re.escape("outputs   logits [N, 10], probabilities [N, 10]"),
        rf"verify    onnxruntime vs engine on 8 probe samples: max \|diff\| {number} "
        rf"\(tolerance {tolerance}\) ok",
    ]
    exact = "file read back vs engine on 8 probe samples: weights and outputs bit-identical, max |diff| 0 ok"
    for args, want in [
        ([], onnx_lines),
        (["--format", "npz"], [rf"exported  {re.escape(str(run32))}/model\.npz \(NPZ, {size}\)",
                               re.escape(f"from      {ck}"), re.escape(f"verify    {exact}")]),
        (["--format", "json"], [rf"exported  {re.escape(str(run32))}/model\.json \(JSON, {size}\)",
                                re.escape(f"from      {ck}"), re.escape(f"verify    {exact}")]),
    ]:  # fmt: skip
        result = invoke("export", run32, *args)
        assert result.exit_code == 0, result.output
        lines = unwrapped(result.stdout)
        assert len(lines) == len(want), result.stdout
        for line, pattern in zip(lines, want, strict=True):
            assert re.fullmatch(pattern, line), f"{line!r} !~ {pattern!r}"
    result = invoke("export", run32)
    assert result.exit_code == 2 and result.stdout == ""
    assert one_error_line(result) == f"error: {run32}/model.onnx: already exists; --force overwrites it"


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_the_check_of_a_run_with_buffers_says_they_are_bit_identical_too(tmp_path: Path, fmt: str) -> None:
    """configs/examples/regularisers.yaml has two batchnorms: their running mean and variance are four
    buffers, read back and compared as the weights are."""
    config = REPO / "configs" / "examples" / "regularisers.yaml"
    assert invoke("train", config, "--out", tmp_path, "--epochs", "1", "--quiet").exit_code == 0
    run = tmp_path / "example-regularisers"
    result = invoke("export", run, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert unwrapped(result.stdout)[-1] == (
        "verify    file read back vs engine on 3 probe samples: weights, buffers and outputs bit-identical, "
        "max |diff| 0 ok"
    )
    rep = json.loads(invoke("export", run, "--format", fmt, "--force", "--json").stdout)
    assert rep["buffers"] == 4 and rep["ok"] is True


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
    scale = max(1.0, float(np.abs(engine_network(ck).forward(ck.probe_x)).max()))
    assert rep["output_scale"] == pytest.approx(scale) and rep["tolerance"] == pytest.approx(1e-5 * scale)
    assert 0 <= rep["max_abs_diff"] <= 1e-5
    assert rep["epoch"] == 1 and rep["dtype"] == "float32"


def test_json_report_of_a_failed_verification(ort, run32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cnnbp.exporting.verify_onnx", lambda model, net, x: 0.5)
    result = invoke("export", run32, "--json")
    assert result.exit_code == 1
    rep = json.loads(result.stdout)
    assert rep["ok"] is False and rep["written"] is False and rep["max_abs_diff"] == 0.5
    assert "verification failed" in one_error_line(result)


# ---- exit codes ----------------------------------------------------------------------------------------
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
    assert not {n.op_type for n in model.graph.node} & NATIVE_ONLY
    assert reported_diff(result.stdout) <= 1e-5
    assert "opset 13, IR 7, ops decomposed:" in result.stdout

    result = invoke("export", run32, "-o", tmp_path / "y.onnx", "--opset", "11")
    assert result.exit_code == 2 and "opset: must be an int from 13" in one_error_line(result)


def test_float64_native_needs_no_verify(ort, export_runs: dict[str, Path], tmp_path: Path) -> None:
    """onnxruntime cannot run a native float64 Conv: exit 2 with the way out; --no-verify writes it."""
    out = tmp_path / "native.onnx"
    result = invoke("export", export_runs["float64"], "-o", out, "--ops", "native")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "NOT_IMPLEMENTED" in line and "--ops decomposed" in line and "--no-verify" in line
    assert not out.exists()

    result = invoke("export", export_runs["float64"], "-o", out, "--ops", "native", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "skipped (--no-verify)" in result.stdout and out.is_file()


def test_verification_failure_exits_1_and_writes_nothing(
    ort, run32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit path when ONNX and engine disagree (the comparison itself is forced to disagree)."""
    monkeypatch.setattr("cnnbp.exporting.verify_onnx", lambda model, net, x: 0.5)
    result = invoke("export", run32)
    assert result.exit_code == 1
    assert "FAILED" in result.stdout and "not written" in result.stdout
    line = one_error_line(result)
    assert "verification failed: max |diff| 0.5 exceeds the " in line and "nothing was written" in line
    assert sorted(p.name for p in run32.iterdir()) == RUN_FILES


def test_npz_read_back_one_ulp_off_fails_verification(run32: Path, npz_one_ulp_off: None) -> None:
    """The NPZ check is bit for bit: a file whose reading moves one weight by one ulp is refused."""
    result = invoke("export", run32, "-f", "npz")
    assert result.exit_code == 1
    assert "not bit-identical" in result.stdout and "FAILED" in result.stdout
    assert "the file read back is not bit-identical to the engine" in one_error_line(result)
    assert not (run32 / "model.npz").exists()


def test_non_integer_lp_p_names_the_layer(ort, lp_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(lp_run, tmp_path / "lp"))
    result = invoke("export", run)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(
        "error: pool2: LpPool needs an integer p, got 2.5; --ops decomposed"
    )
    assert not (run / "model.onnx").exists()

    result = invoke("export", run, "--ops", "decomposed")
    assert result.exit_code == 0, result.output
    assert reported_diff(result.stdout) <= 1e-5


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
    monkeypatch.setattr("cnnbp.exporting.onnx_available", lambda: False)
    result = invoke("export", run32, "--no-verify")
    assert result.exit_code == 2 and INSTALL_HINT in one_error_line(result)


# ---- options --------------------------------------------------------------------------------------------
def test_checkpoint_and_output_options(run32: Path, tmp_path: Path) -> None:
    """--checkpoint, -o (a folder, or a file whose suffix picks the format) reach the library."""
    result = invoke("export", run32, "--checkpoint", "0", "-f", "npz")
    assert result.exit_code == 0, result.output
    assert (run32 / "model-0000.npz").is_file() and "epoch 0" in result.stdout
    assert invoke("export", run32, "-c", "last", "-f", "npz").exit_code == 0
    assert (run32 / "model.npz").is_file()

    folder = tmp_path / "out"
    folder.mkdir()
    assert invoke("export", run32, "-o", folder, "-f", "npz").exit_code == 0
    assert (folder / "model.npz").is_file()
    result = invoke("export", run32, "-o", tmp_path / "w.json")  # the suffix picks json
    assert result.exit_code == 0 and "(JSON, " in result.stdout
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


def test_bad_choice_is_a_usage_error(run32: Path) -> None:
    """Typer checks the choices of --format and --ops itself (exit 2, nothing written)."""
    for args in (["-f", "xml"], ["--ops", "fast"]):
        result = invoke("export", run32, *args)
        assert result.exit_code == 2
        (line,) = result.stderr.splitlines()  # one line, as every cnnbp error
        expected = ("error: --format: 'xml' is not one of onnx, npz, json", "error: --ops: 'fast'")
        assert line.startswith(expected)
    assert sorted(p.name for p in run32.iterdir()) == RUN_FILES


# ---- the files read back by model.init_from (cnnbp train) --------------------------------------------------
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_init_from_shape_mismatch_names_the_layer(run32: Path, tmp_path: Path, fmt: str) -> None:
    assert invoke("export", run32, "-f", fmt).exit_code == 0
    path = run32 / f"model.{fmt}"
    init_from = ["--set", f"model.init_from={path}"]
    dry = invoke("train", *DIGITS, "--out", tmp_path / "runs2", *init_from, "--dry-run")
    assert dry.exit_code == 0, dry.output
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
