"""End-to-end tests of ``cnnbp gradcheck`` through the Typer app: the table (fits the terminal, compact
forms, columns left out), the footer and verdict, ``--json``, exit codes and one-line errors.  What is
checked (targets, samples, overrides, the report's content) is tested on the library in
tests/cli/test_checking.py; here the same cases go through the command line.

Targets: the built-in digits config, small inline configs and runs trained with ``cnnbp train``
(tests/cli/conftest.py).  The rendering helpers are also fed hand-made results (NaN, inf, many FAIL rows).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import cnnbp
from cnnbp.app import app
from cnnbp.checking import Subject
from cnnbp.commands import gradcheck as command
from cnnbp.core.gradcheck import DEFAULT_ATOL_FLOOR, GradcheckResult, TensorCheck
from tests.cli.conftest import (
    DIGITS_LAYERS,
    DIGITS_NON_ANALYTIC,
    DIGITS_PARAMS,
    analytic_config,
    kink_config,
    write_config,
)

runner = CliRunner()
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_example(command: str) -> list[str]:
    """The lines the README shows under ``$ <command>`` (its fenced block), trailing spaces stripped."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"```\n$ {command}\n") + len(f"```\n$ {command}\n")
    return [line.rstrip() for line in text[start : text.index("```", start)].splitlines()]


COMPLEX_REFUSED = (
    "error: --method complex: needs every layer to be analytic, and these are not: conv1.relu (ReLU), "
    "pool2 (MaxPool), conv3.relu (ReLU), pool4 (MaxPool); use --method auto (complex where possible, "
    "else central), central or richardson"
)


def invoke(*args: Any, env: dict[str, str] | None = None):  # noqa: ANN201 - typer's Result
    """Run ``cnnbp`` in-process with string arguments (80 columns, no colour unless ``env`` says)."""
    return runner.invoke(app, [str(a) for a in args], env=env or PLAIN)


def gradcheck_json(*args: Any, code: int = 0) -> dict[str, Any]:
    """``cnnbp gradcheck ... --json``: the parsed object (strict JSON), after checking the exit code."""
    result = invoke("gradcheck", *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout, parse_constant=_reject)


def _reject(token: str) -> None:
    raise AssertionError(f"non-standard JSON constant {token}")


def one_error_line(result: Any) -> str:
    """The single ``error: ...`` line a user error prints on stderr."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert result.stdout == ""
    return lines[0]


def rows_by_key(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["layer"], r["tensor"]): r for r in report["rows"]}


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (a long line wraps in the footer)."""
    return " ".join(text.split())


# ---- the default config -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_text() -> str:
    """``cnnbp gradcheck`` at 80 columns with NO_COLOR: the README's example."""
    result = invoke("gradcheck")
    assert result.exit_code == 0, result.output
    return result.stdout


def test_default_config_passes_with_a_row_per_tensor_in_the_table(digits_text: str) -> None:
    out = digits_text
    table_layers = {line.split()[0] for line in out.splitlines() if line.split()}
    assert set(DIGITS_LAYERS) | {"input"} <= table_layers
    for layer, tensor in DIGITS_PARAMS:
        assert re.search(rf"^{re.escape(layer)}\s+{tensor}\s", out, re.M), (layer, tensor)
    assert "checked in float64 (network is float32)" in out
    assert re.search(r"method\s+central, eps 6\.06e-06", out)
    assert re.search(r"verdict\s+PASS", out)
    assert "\x1b" not in out  # NO_COLOR / not a terminal: plain text
    assert max(len(line) for line in out.splitlines()) <= 80


def test_default_config_output_is_the_readme_example(digits_text: str) -> None:
    """Line for line as README.md shows it, except the numbers rounding noise decides (an error, the worst
    element and its values) and the time: every row's layer, tensor, shape, count and status, every error
    within rtol, and the footer (method, inputs, precision, kinks, verdict)."""
    lines = [line.rstrip() for line in digits_text.splitlines()]
    readme = readme_example("cnnbp gradcheck")
    assert lines[:3] == readme[:3]
    assert lines[1].split()[-1] == "status" and len(lines) == len(readme)
    n_rows = 15
    body, foot = lines[3 : 3 + n_rows], lines[3 + n_rows :]
    for line, shown in zip(body, readme[3 : 3 + n_rows], strict=True):
        cells, expected = line.split(), shown.split()
        assert len(cells) == 9, line
        assert cells[:4] + cells[8:] == expected[:4] + expected[8:]
        assert float(cells[4]) < 1e-6 and "(" not in cells[5]  # compact: indices without parentheses
        assert all(re.fullmatch(r"-?\d\.\d{3}e-?\d+|0", cell) for cell in cells[6:8])  # 4 digits
    assert {line.split()[8] for line in body} == {"PASS", "KINK"}
    for line, expected in zip(foot, readme[3 + n_rows :], strict=True):
        if line.startswith("checked"):
            checked = r"checked    every element \(20,722\), 15 tensors, 4 samples in \d+\.\d\d s"
            assert re.fullmatch(checked, line) and re.fullmatch(checked, expected), line
        else:
            assert line == expected


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_table_fits_the_terminal_width(columns: int) -> None:
    result = invoke("gradcheck", "--per-tensor", "3", env={"COLUMNS": str(columns), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert "verdict" in result.stdout
    # however narrow, every row keeps its layer, tensor and status
    rows = re.findall(r"^(\S+) +(W|b|delta|input) .*\b(PASS|KINK)\s*$", result.stdout, re.M)
    assert [layer for layer, _, _ in rows][:2] == ["input", "conv1"] and len(rows) == 15
    if columns == 40:
        assert "(left out to fit the terminal: shape, analytic, numeric" in " ".join(result.stdout.split())
    if columns == 200:  # room for the full table: shapes and (n,c,h,w) indices
        assert re.search(r"^conv3\s+W\s+32×16×3×3\s+3/4608\s", result.stdout, re.M)
        assert re.search(r"\(\d+,\d+,\d+,\d+\)", result.stdout)
    if columns == 80:  # compact, but nothing left out; not every element checked: checked/total
        assert "left out" not in result.stdout
        assert re.search(r"^conv3\s+W\s+32×16×3×3\s+3/4608\s", result.stdout, re.M)
        assert not re.search(r"\(\d+,\d+,\d+,\d+\)", result.stdout)
        assert re.search(r"checked\s+45 of 20,722 elements, 15 tensors, 4 samples in", result.stdout)


# ---- a wrong gradient -----------------------------------------------------------------------------------
def test_a_wrong_dense_gradient_fails_naming_layer_tensor_and_element(
    wrong_dense_w: dict[str, tuple[int, ...]],
) -> None:
    report = gradcheck_json("--layer", "dense6", code=1)
    assert report["verdict"] == "FAIL" and report["counts"]["FAIL"] == 1
    row = rows_by_key(report)[("dense6", "W")]
    assert row["status"] == "FAIL" and row["n_fail"] == 1
    assert tuple(row["worst_index"]) == wrong_dense_w["index"]

    result = invoke("gradcheck", "--layer", "dense6")
    assert result.exit_code == 1, result.output
    i, j = wrong_dense_w["index"]
    assert re.search(rf"^dense6\s+W\s.*\(?{i},{j}\)?\s.*FAIL", result.stdout, re.M), result.stdout
    assert re.search(r"verdict\s+FAIL: 1 row over rtol 1e-06 \(dense6\.W\)", result.stdout)
    assert result.stderr == ""  # a failing check is a result, not an error


# ---- methods --------------------------------------------------------------------------------------------
def test_complex_step_is_refused_on_relu_and_max_pool_naming_them() -> None:
    line = one_error_line(invoke("gradcheck", "--method", "complex"))
    assert line == COMPLEX_REFUSED
    for name in DIGITS_NON_ANALYTIC:
        assert name in line
    assert "conv1 " not in line and "dense6" not in line
    # auto falls back to central on the same network, and says why on the method line
    auto = gradcheck_json("--method", "auto", "--per-tensor", "2")
    assert auto["method"] == "central" and auto["requested_method"] == "auto"
    text = invoke("gradcheck", "--method", "auto", "--per-tensor", "2").stdout
    assert "method central (auto: not analytic: conv1.relu, pool2, conv3.relu, pool4), eps 6.06e-06" in flat(
        text
    )


def test_complex_step_on_an_analytic_network(tmp_path: Path) -> None:
    config = write_config(tmp_path, analytic_config(), "analytic.yaml")
    report = gradcheck_json(config, "--method", "complex")
    assert report["method"] == "complex" and report["eps"] == 1e-20 and report["verdict"] == "PASS"
    assert report["cast_from"] is None
    assert gradcheck_json(config, "--method", "auto")["method"] == "complex"
    result = invoke("gradcheck", config, "--method", "complex")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert "method complex, eps 1e-20 (h), rtol 1e-06, floor 1e-09·max(1, |L|)" in text
    assert "precision checked in float64 checked every element" in text  # float64: no "(network is ...)"
    assert "verdict PASS: every checked element within rtol 1e-06" in text
    assert f"gradcheck · {config} · initial weights (seed 1), float64" in text


def test_the_command_defaults_to_central(tmp_path: Path) -> None:
    """The library's default is auto; the command's is central, even where complex-step would apply."""
    config = write_config(tmp_path, analytic_config(), "analytic.yaml")
    report = gradcheck_json(config, "--layer", "dense5")
    assert report["method"] == report["requested_method"] == "central"
    assert report["eps"] == pytest.approx(6.055454452393343e-06)
    assert cnnbp.gradcheck(config, layers=["dense5"]).result.method == "complex"


# ---- kinks, --strict and exit codes ----------------------------------------------------------------------
def test_relu_at_exactly_zero_is_a_kink_checked_at_the_kink(tmp_path: Path) -> None:
    config = write_config(tmp_path, kink_config(), "kink.yaml")
    report = gradcheck_json(config)
    kinks = {key for key, r in rows_by_key(report).items() if r["status"] == "KINK"}
    assert kinks == {("hidden", "W"), ("hidden", "b"), ("hidden", "delta")}
    assert report["counts"]["FAIL"] == 0 and report["verdict"] == "PASS" and report["strict"] is False

    result = invoke("gradcheck", config)
    assert result.exit_code == 0, result.output
    assert re.search(r"^hidden\s+b\s.*KINK", result.stdout, re.M)
    text = flat(result.stdout)
    assert "verdict PASS: no FAIL; 3 KINK rows (hidden.W, hidden.b, hidden.delta): elements whose " \
           "perturbation crossed a relu/max/lp kink, checked at the kink" in text
    assert re.search(r"kinks \d+ elements crossed a kink: each matches the derivative of the piece", text)

    strict = invoke("gradcheck", config, "--strict")  # KINK elements are checked: --strict passes them
    assert strict.exit_code == 0, strict.output
    assert gradcheck_json(config, "--strict")["verdict"] == "PASS"


def test_strict_fails_unchecked_elements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the relu's frozen forward the mixed crossings of hidden.W cannot be decided: the row says
    UNCHECKED, the verdict counts them, exit 0 — and 1 with --strict."""
    from cnnbp.core.layers import ReLU

    monkeypatch.setattr(ReLU, "frozen_forward", None)
    config = write_config(tmp_path, kink_config(), "kink.yaml")
    result = invoke("gradcheck", config)
    assert result.exit_code == 0, result.output
    assert re.search(r"^hidden\s+W\s.*UNCHECKED", result.stdout, re.M)
    n = gradcheck_json(config)["unchecked"]
    text = flat(result.stdout)
    assert f"{n} element{'s' * (n != 1)} UNCHECKED (hidden.W {n}/9): several kinks at once" in text
    assert "(--strict fails them)" in text
    strict = invoke("gradcheck", config, "--strict")
    assert strict.exit_code == 1, strict.output
    assert f"verdict FAIL (--strict): {n} element{'s' * (n != 1)} UNCHECKED (hidden.W {n}/9)" in flat(
        strict.stdout
    )
    assert gradcheck_json(config, "--strict", code=1)["verdict"] == "FAIL"


def test_json_is_the_library_report(tmp_path: Path) -> None:
    """``--json`` prints ``cnnbp.gradcheck(...).to_dict(strict)`` as one line of strict JSON."""
    config = write_config(tmp_path, kink_config(), "kink.yaml")
    result = invoke("gradcheck", config, "--json", "--seed", "3", "--samples", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("}\n")
    printed = json.loads(result.stdout, parse_constant=_reject)
    library = cnnbp.gradcheck(config, "central", seed=3, samples=2).to_dict()
    assert printed.pop("seconds") >= 0 and library.pop("seconds") >= 0
    assert printed == json.loads(json.dumps(library))
    assert printed["target"] == str(config) and printed["kind"] == "config" and printed["epoch"] is None


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_check", interrupted)
    result = invoke("gradcheck", "--layer", "dense6")
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted" and result.stdout == ""


# ---- runs and checkpoint files --------------------------------------------------------------------------
def test_run_folder_and_checkpoint_file_of_a_float32_run(float32_run: Path) -> None:
    last = gradcheck_json(float32_run)
    assert last["kind"] == "checkpoint" and last["epoch"] == 2
    assert last["target"].endswith("0002.h5") and last["cast_from"] == "float32"
    first = gradcheck_json(float32_run, "--checkpoint", "0")
    assert first["epoch"] == 0 and first["target"].endswith("0000.h5")
    assert gradcheck_json(float32_run, "-c", "last")["target"] == last["target"]

    file = float32_run / "checkpoints" / "0001.h5"
    result = invoke("gradcheck", file)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # a long path wraps the header line
    assert f"{file} · run analytic, epoch 1, float32" in text
    assert "checked in float64 (network is float32)" in text


def test_checkpoint_without_its_data_says_so_on_the_inputs_line(moved_data_run: tuple[Path, Path]) -> None:
    run, moved = moved_data_run
    result = invoke("gradcheck", run, "--samples", "2")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert "probe samples (data not found here:" in text
    missing = moved.parent / "images.npz"
    assert f"inputs 2 of the checkpoint's 3 probe samples (data not found here: {missing})" in text
    found = gradcheck_json(run, "--set", f"data.path={moved}")
    assert found["inputs"] == "data" and found["samples"] == 4

    # a config whose data is missing is an error, not a fallback
    line = one_error_line(invoke("gradcheck", run.parents[1] / "elsewhere.yaml"))
    assert "images.npz" in line and "not found" in line


# ---- user errors: one line, exit 2 --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["no/such/config.yaml"], ["no/such/config.yaml", "no such"]),
        (["--layer", "conv9"], ["--layer conv9", "input, conv1, conv1.relu", "dense6"]),
        (["--eps", "tiny"], ["--eps", "'tiny'"]),
        (["--eps", "-1e-5"], ["--eps", "> 0"]),
        (["--rtol", "0"], ["--rtol"]),
        (["--all", "--per-tensor", "3"], ["--all", "--per-tensor"]),
        (["--checkpoint", "1"], ["--checkpoint", "config"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args: list[str], words: list[str]) -> None:
    line = one_error_line(invoke("gradcheck", *args))
    for word in words:
        assert word in line, line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["no/such/config.yaml"],
         "error: no/such/config.yaml: no such config file, run folder or checkpoint file"),
        (["--layer", "conv9"],
         "error: --layer conv9: no such layer; the layers are input, conv1, conv1.relu, pool2, conv3, "
         "conv3.relu, pool4, flatten5, dense6"),
        (["--eps", "tiny"], "error: --eps: expected 'auto' or a number > 0, got 'tiny'"),
        (["--eps", "-1e-5"], "error: --eps: expected 'auto' or a number > 0, got '-1e-5'"),
        (["--eps", "nan"], "error: --eps: expected 'auto' or a number > 0, got 'nan'"),
        (["--rtol", "0"], "error: --rtol: expected a number > 0, got 0.0"),
        (["--all", "--per-tensor", "3"], "error: --all and --per-tensor: use one or the other"),
        (["--checkpoint", "1"], "error: --checkpoint: selects a checkpoint of a run folder, not a config"),
    ],
)  # fmt: skip
def test_user_error_lines(args: list[str], line: str) -> None:
    assert one_error_line(invoke("gradcheck", *args)) == line


def test_a_checkpoint_network_cannot_be_changed_with_set(float32_run: Path) -> None:
    line = one_error_line(invoke("gradcheck", float32_run, "--set", "model.layers[2].mode=max"))
    assert "only data.*" in line
    assert line == (
        "error: --set model.layers[2].mode=max: a checkpoint's network is fixed; "
        "only data.* can be changed here"
    )


def test_help_states_the_floors_core_uses() -> None:
    result = invoke("gradcheck", "--help", env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "|a − n| / max(|a|, |n|, floor), floor = F·max(1, |L|)" in text
    for method, floor in DEFAULT_ATOL_FLOOR.items():
        assert f"{floor:.0e}".replace("e-0", "e-") + f" for {method}" in text


# ---- rendering hand-made results ---------------------------------------------------------------------------
def row(layer: str, tensor: str = "W", status: str = "PASS", **fields: Any) -> TensorCheck:
    values: dict[str, Any] = {
        "shape": (2, 3), "checked": 6, "total": 6, "max_rel_error": 1.5e-9, "worst_index": (1, 2),
        "analytic": -5.718123e-4, "numeric": -5.718124e-4, "n_fail": int(status == "FAIL"),
        "n_kink": int(status == "KINK"),
    }  # fmt: skip
    values.update(fields)
    return TensorCheck(layer=layer, tensor=tensor, status=status, **values)


def result_of(rows: list[TensorCheck], method: str = "central") -> GradcheckResult:
    return GradcheckResult(rows=rows, method=method, eps=6.055e-6, samples=2, seconds=0.5, rtol=1e-6,
                           cast_from=None, atol_floor=3e-4)  # fmt: skip


def render(renderable: Any, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, no_color=True, highlight=False)
    console.print(renderable)
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def test_full_and_compact_forms_of_the_table() -> None:
    big = row("conv1", shape=(4, 16, 8, 8), checked=4096, total=4096, worst_index=(0, 3, 7, 1))
    result = result_of([big])
    full = render(command.rows_table(result, None), 200)
    assert full[0].split() == ["layer", "tensor", "shape", "checked", "max", "err", "worst", "at", "analytic",
                               "numeric", "status"]  # fmt: skip
    assert full[2].split() == ["conv1", "W", "4×16×8×8", "4096/4096", "1.5e-09", "(0,3,7,1)", "-0.000571812",
                               "-0.000571812", "PASS"]  # fmt: skip
    width = max(len(line) for line in full)
    compact = render(command.rows_table(result, width - 1), 200)
    assert compact[2].split() == ["conv1", "W", "4×16×8×8", "4096", "1.5e-09", "0,3,7,1", "-5.718e-4",
                                  "-5.718e-4", "PASS"]  # fmt: skip
    assert max(len(line) for line in compact) < width
    # sampled: the compact form keeps checked/total
    sampled = result_of([row("conv1", checked=3, total=6)])
    narrower = max(len(line) for line in render(command.rows_table(sampled, None), 200)) - 1
    assert render(command.rows_table(sampled, narrower), 200)[2].split() == [
        "conv1", "W", "2×3", "3/6", "1.5e-09", "1,2", "-5.718e-4", "-5.718e-4", "PASS",
    ]  # fmt: skip


def test_columns_are_left_out_in_order_and_named() -> None:
    result = result_of([row("a.very.long.layer.name", shape=(4, 32, 16, 16), worst_index=(3, 31, 15, 15))])
    seen: list[str] = []
    for width in range(150, 20, -1):
        lines = render(command.rows_table(result, width), 200)
        caption = re.search(r"\(left out .*\)", flat("\n".join(lines)))
        if (caption.group(0) if caption else "") not in seen:
            seen.append(caption.group(0) if caption else "")
        assert lines[0].split()[:2] == ["layer", "tensor"] and lines[0].split()[-1] == "status"
        assert lines[2].split()[:2] == ["a.very.long.layer.name", "W"] and lines[2].split()[-1] == "PASS"
    assert seen == [
        "",
        "(left out to fit the terminal: shape; --json has every field)",
        "(left out to fit the terminal: shape, analytic, numeric; --json has every field)",
        "(left out to fit the terminal: shape, analytic, numeric, worst at, checked; --json has every field)",
    ]


def test_non_finite_numbers_in_the_table() -> None:
    result = result_of([row("a", status="FAIL", max_rel_error=float("inf"), analytic=float("nan"),
                            numeric=float("-inf")), row("b", analytic=0.0, numeric=0.0)])  # fmt: skip
    lines = render(command.rows_table(result, 80), 80)
    assert lines[2].split()[4:] == ["inf", "(1,2)", "nan", "-inf", "FAIL"]
    assert lines[3].split()[6:] == ["0", "0", "PASS"]


def test_verdict_names_the_deciding_rows() -> None:
    def verdict(rows: list[TensorCheck], strict: bool = False) -> str:
        return command.verdict_text(result_of(rows), strict).plain

    assert verdict([row("a")]) == "PASS: every checked element within rtol 1e-06"
    kinks = [row("a"), row("b", status="KINK"), row("c", "delta", status="KINK")]
    assert verdict(kinks) == (
        "PASS: no FAIL; 2 KINK rows (b.W, c.delta): elements whose perturbation crossed a relu/max/lp kink, "
        "checked at the kink"
    )
    assert verdict(kinks, strict=True) == verdict(kinks)  # KINK elements are checked
    gaps = [row("a"), row("b", status="UNCHECKED", n_unchecked=3), row("c", "delta", status="KINK")]
    assert verdict(gaps) == (
        "PASS: no FAIL; 1 KINK row (c.delta): elements whose perturbation crossed a relu/max/lp kink, "
        "checked at the kink; 3 elements UNCHECKED (b.W 3/6): several kinks at once, or too near a point "
        "of low smoothness (--strict fails them)"
    )
    assert verdict(gaps, strict=True) == "FAIL (--strict): 3 elements UNCHECKED (b.W 3/6)"
    assert verdict([row("a", status="FAIL"), row("b", status="KINK")]) == "FAIL: 1 row over rtol 1e-06 (a.W)"
    assert verdict([row("a", status="FAIL"), row("b", status="UNCHECKED", n_unchecked=1)]) == (
        "FAIL: 1 row over rtol 1e-06 (a.W); also 1 element UNCHECKED (b.W 1/6)"
    )
    # a row whose every element is unchecked is named, with the count
    assert "1 element UNCHECKED (b.b 1/1)" in verdict(
        [row("b", "b", status="UNCHECKED", n_unchecked=1, checked=1, total=1)]
    )
    many = [row(f"layer{i}", status="FAIL") for i in range(10)]
    assert verdict(many) == (
        "FAIL: 10 rows over rtol 1e-06 (layer0.W, layer1.W, layer2.W, layer3.W, layer4.W, layer5.W, "
        "layer6.W, layer7.W, …)"
    )


def test_footer_lines() -> None:
    subject = Subject(
        net=None, loss=None, x=None, y=None, kind="config", target="t.yaml", weights="w", inputs="data",
        inputs_text="2 of 6 training samples of inline, drawn with seed 1; indices 0, 4",
        sample_indices=[0, 4], requested_method="auto", non_analytic=[],
    )  # type: ignore[arg-type]  # fmt: skip
    sampled = result_of([row("a", checked=3), row("b", checked=6, total=10)], method="complex")
    sampled.eps, sampled.atol_floor, sampled.cast_from = 1e-20, 1e-9, "float32"
    lines = render(command.footer(subject, sampled, strict=False), 200)
    assert lines == [
        "method     complex (auto), eps 1e-20 (h), rtol 1e-06, floor 1e-09·max(1, |L|)",
        "inputs     2 of 6 training samples of inline, drawn with seed 1; indices 0, 4",
        "precision  checked in float64 (network is float32)",
        "checked    9 of 16 elements, 2 tensors, 2 samples in 0.50 s",
        "verdict    PASS: every checked element within rtol 1e-06",
    ]


# ---- ties, the directional mode, the progress bar ----------------------------------------------------------
@pytest.mark.parametrize(("broken", "tensor"), [
    ({"dw": "dkern[:, :, ::-1, ::-1]"}, "W"), ({"dw": "dkern * 1.01"}, "W"), ({"dw": "dkern * 1.0001"}, "W"),
])  # fmt: skip
def test_a_broken_plugin_conv_on_a_network_of_ties_exits_1(
    tmp_path: Path, broken: dict[str, str], tensor: str
) -> None:
    """tests/cli/test_checking_kinks.py's network of ties (integer images and weights, zero biases) with the
    plugin convolution as c1: ∂W turned by 180°, 1 % off or 1e-4 off — exit 1, FAIL on c1.W alone."""
    from tests.cli.conftest import pad_conv_source, tie_config, write_plugin

    plugin = write_plugin(tmp_path, pad_conv_source(**broken), name="pad_conv.py")
    config = write_config(tmp_path, tie_config(plugin, "c1"), "ties.yaml")
    result = invoke("gradcheck", config, "--method", "central")
    assert result.exit_code == 1, result.output
    failing = [line.split()[:2] for line in result.stdout.splitlines() if line.rstrip().endswith("FAIL")]
    assert failing == [["c1", tensor]]
    assert "verdict FAIL: 1 row over rtol 1e-06 (c1.W)" in flat(result.stdout)


def test_directional_mode_in_the_table_and_footer() -> None:
    result = invoke("gradcheck", "--mode", "directional", "--directions", "5")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert re.search(r"^dense6\s+b\s+10\s+5 dirs\s+\S+\s+u[0-4]\s.*PASS\s*$", out, re.M)
    assert re.search(r"^conv1\s+b\s+16\s+16/16\s.*KINK\s*$", out, re.M)  # crossed a kink: 16 elements
    text = flat(out)
    assert "checked 5 random directions per tensor, 15 tensors, 4 samples in" in text
    assert "some elements, as a direction crossed a kink: input.input, conv1.b," in text
    report = gradcheck_json("--mode", "directional", "--directions", "5")
    assert report["mode"] == "directional" and report["directions"] == 5


def test_directional_mode_names_the_wrong_element(wrong_dense_w: dict[str, tuple[int, ...]]) -> None:
    result = invoke("gradcheck", "--mode", "directional")
    assert result.exit_code == 1, result.output
    i, j = wrong_dense_w["index"]
    assert re.search(rf"^dense6\s+W\s.*\b1280\b.*\s{i},{j}\s.*FAIL\s*$", result.stdout, re.M), result.stdout
    assert "every element after a failed direction: dense6.W" in flat(result.stdout)


@pytest.mark.parametrize(("args", "line"), [
    (["--directions", "4"], "error: --directions: only with --mode directional"),
    (["--mode", "directional", "--all"], "error: --mode directional: checks whole tensors; drop --all"),
    (["--mode", "directional", "--per-tensor", "3"],
     "error: --mode directional: checks whole tensors; drop --per-tensor"),
])  # fmt: skip
def test_directional_option_errors(args: list[str], line: str) -> None:
    assert one_error_line(invoke("gradcheck", *args)) == line


def test_no_progress_bar_off_a_terminal_or_with_json() -> None:
    for args in (["--layer", "dense6"], ["--layer", "dense6", "--json"]):
        result = invoke("gradcheck", *args)
        assert result.exit_code == 0 and result.stderr == ""


def test_progress_bar_on_a_terminal_goes_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar counts elements done of all on stderr (rich, transient); stdout has the report
    alone; with --json no bar at all."""
    buffer = io.StringIO()

    def terminal() -> Console:
        return Console(file=buffer, force_terminal=True, width=80, stderr=True)

    monkeypatch.setattr(command, "stderr_console", terminal)
    result = invoke("gradcheck", "--layer", "dense6")
    assert result.exit_code == 0, result.output
    drawn = buffer.getvalue()
    assert "checking gradients" in drawn and "/1,330 elements" in drawn and "eta" in drawn
    assert "1,330/1,330 elements" in drawn
    assert "checking gradients" not in result.stdout and "verdict" in result.stdout
    buffer.seek(0)
    buffer.truncate()
    assert invoke("gradcheck", "--layer", "dense6", "--json").exit_code == 0
    assert buffer.getvalue() == ""


def test_progress_bar_unit_follows_the_mode() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80)
    with command.progress_bar(console, "directions") as update:
        update(3, 48)
        update(48, 48)
    assert "48/48 directions" in buffer.getvalue()
