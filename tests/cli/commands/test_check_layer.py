"""``cnnbp check-layer`` through the Typer app: the report, the verdict and exit codes, ``--json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnbp.app import app
from tests.cli.conftest import OFF, conv_source, plugin_source, write_plugin

runner = CliRunner()


def invoke(*args: object):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, ["check-layer", *map(str, args)], env={"COLUMNS": "80", "NO_COLOR": "1"})


def test_a_correct_layer_passes_with_exit_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_plugin(tmp_path)
    result = invoke("my_layers.py:MyDense", "--set", "units=3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "check-layer · my_layers.py:MyDense · float64"
    assert lines[1] == "arguments given: units=3; the others varied one at a time"
    assert lines[2] == "case 1 · input 4 · batch 1 · the defaults"
    assert [line.split()[0] for line in lines[3:7]] == ["api", "∂L/∂x", "∂L/∂W", "∂L/∂b"]
    assert lines[-1].startswith("PASS: 2 cases, 8 checks, largest relative error ")
    assert all(len(line) <= 80 for line in lines) and "\x1b" not in result.output


def test_a_wrong_parameter_gradient_fails_on_its_row_with_exit_1(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, plugin_source(SCALE_W=OFF))
    result = invoke(f"{path}:MyDense", "--set", "units=3")
    assert result.exit_code == 1, result.output
    rows = [line.split() for line in result.output.splitlines() if line.startswith("  ∂L/∂")]
    rows = [r for r in rows if not r[0].endswith(":")]  # the rows, not the first failure's details
    assert {(r[0], r[-1]) for r in rows} == {("∂L/∂x", "PASS"), ("∂L/∂W", "FAIL"), ("∂L/∂b", "PASS")}
    text = result.output
    assert "first failure: case 1 · input 4 · batch 1 · the defaults" in text
    assert "∂L/∂W: relative error 1.0e-04 at [" in " ".join(text.split())
    assert text.splitlines()[-1] == "FAIL: 2 of 2 cases (∂L/∂W)"


def test_a_wrong_input_gradient_fails_on_the_layers_own_row(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, plugin_source(SCALE_SOFTPLUS_X=OFF))
    result = invoke(f"{path}:MySoftplus")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == "FAIL: 5 of 5 cases (∂L/∂x)"


def test_like_catches_a_true_convolution(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, conv_source(flip=True))
    alone = invoke(f"{path}:LoopConv", "--set", "filters=2", "--set", "kernel=3")
    assert alone.exit_code == 0, alone.output
    like = invoke(f"{path}:LoopConv", "--set", "filters=2", "--set", "kernel=3", "--like", "conv")
    assert like.exit_code == 1, like.output
    assert "forward vs conv: relative error" in " ".join(like.output.split())
    assert "the built-in conv" in " ".join(like.output.split())
    header = like.output.splitlines()[0]  # a long path is cut on the left, the class stays
    assert header.startswith("check-layer · …")
    assert header.endswith("my_layers.py:LoopConv · like conv · float64")
    assert all(len(line) <= 80 for line in like.output.splitlines())


def test_json_is_one_object_on_stdout(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, plugin_source(SCALE_B=OFF))
    result = invoke(f"{path}:MyDense", "--set", "units=3", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["target"] == f"{path}:MyDense" and data["verdict"] == "FAIL"
    failed = {c["check"] for case in data["cases"] for c in case["checks"] if c["status"] == "FAIL"}
    assert failed == {"∂L/∂b"}


@pytest.mark.parametrize(("args", "message"), [
    (["{p}:MyDense"], "error: MyDense: units has no default; give it with --set units=VALUE"),
    (["{p}"], "error: {p}: expected PLUGIN:CLASS, e.g. my_layers.py:MyConv"),
    (["{p}:MyDense", "--set", "units=3", "--dtype", "float16"], None),
    (["{p}:MyDense", "--set", "units=3", "--like", "nope"], "error: --like: no layer kind 'nope'"),
])  # fmt: skip
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str | None) -> None:
    path = write_plugin(tmp_path)
    result = invoke(*(a.format(p=path) for a in args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    if message is not None:
        assert result.output.startswith(message.format(p=path)) and result.output.count("\n") == 1


def test_help_fits_80_columns() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "PLUGIN:CLASS" in result.output and "--like" in result.output
    assert all(len(line) <= 80 for line in result.output.splitlines())


def test_unchecked_elements_are_shown_and_counted_in_the_verdict() -> None:
    from cnnbp.commands.check_layer import verdict
    from cnnbp.layercheck import Case, Check, LayerCheckReport

    checks = [Check("api", "PASS"), Check("∂L/∂x", "UNCHECKED", 1e-9, [0, 1], unchecked=2)]
    case = Case((4,), 1, {}, "", checks)
    report = LayerCheckReport("p.py:L", None, "float64", {}, [case], [])
    assert report.passed  # not judged is not wrong
    assert verdict(report).plain == (
        "PASS: 1 case, 2 checks, largest relative error 1.0e-09; 2 elements UNCHECKED (see cnnbp gradcheck)"
    )
