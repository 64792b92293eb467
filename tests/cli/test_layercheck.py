"""``cnnbp.layercheck``: a user's layer over the sweep — API, finite differences and, with ``like``, the
built-in layer; a 1e-4 error in any gradient fails on its own check, with the worst element named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnbp
from cnnbp.errors import UserError
from cnnbp.layercheck import FAIL, LIKE_TOL, SHAPES, check_layer, variants
from cnnbp.plugins import load_plugin
from tests.cli.conftest import OFF, conv_source, plugin_source, write_plugin

DENSE = ("MyDense", ["units=3"])


def report_for(tmp_path: Path, source: str, cls: str, sets: list[str], **kw: object):  # noqa: ANN201
    path = write_plugin(tmp_path, source, name="layer_under_test.py")
    return check_layer(f"{path}:{cls}", sets=sets, **kw)


def failing(report) -> set[str]:  # noqa: ANN001 - a LayerCheckReport
    return {c.check for case in report.cases for c in case.checks if c.status == FAIL}


def test_a_correct_dense_layer_passes_every_case(tmp_path: Path) -> None:
    report = report_for(tmp_path, plugin_source(), *DENSE)
    assert report.passed and failing(report) == set()
    vector_shapes = [(s, b) for s, b in SHAPES if len(s) == 1]
    assert [(c.input_shape, c.batch) for c in report.cases] == vector_shapes  # images refused
    for case in report.cases:
        assert [c.check for c in case.checks] == ["api", "∂L/∂x", "∂L/∂W", "∂L/∂b"]
        assert all(c.max_rel_error < 1e-7 for c in case.checks[1:])


def test_an_activation_without_parameters_checks_its_input_gradient_at_every_shape(tmp_path: Path) -> None:
    report = report_for(tmp_path, plugin_source(), "MySoftplus", [])
    assert report.passed and len(report.cases) == len(SHAPES)
    assert {tuple(c.check for c in case.checks) for case in report.cases} == {("api", "∂L/∂x")}


@pytest.mark.parametrize(("broken", "check"), [
    ("SCALE_W", "∂L/∂W"), ("SCALE_B", "∂L/∂b"), ("SCALE_DENSE_X", "∂L/∂x"),
])  # fmt: skip
def test_a_gradient_off_by_1e_4_fails_on_its_own_row_in_every_case(tmp_path: Path, broken: str,
                                                                  check: str) -> None:  # fmt: skip
    report = report_for(tmp_path, plugin_source(**{broken: OFF}), *DENSE)
    assert not report.passed and failing(report) == {check}
    for case in report.cases:
        row = next(c for c in case.checks if c.check == check)
        assert row.status == FAIL and row.max_rel_error == pytest.approx(1e-4, rel=1e-3)
        assert row.value == pytest.approx(row.expected * 1.0001, rel=1e-9)


def test_the_input_gradient_of_an_activation_off_by_1e_4_fails(tmp_path: Path) -> None:
    report = report_for(tmp_path, plugin_source(SCALE_SOFTPLUS_X=OFF), "MySoftplus", [])
    assert failing(report) == {"∂L/∂x"} and report.first_failure is report.cases[0]


def test_the_worst_element_is_named_with_its_values(tmp_path: Path) -> None:
    source = plugin_source().replace(
        'self.grads["W"] = dy.T @ self.x * 1',
        'g = dy.T @ self.x\n        g[1, 2] *= 1.01\n        self.grads["W"] = g',
    )
    report = report_for(tmp_path, source, *DENSE)
    row = next(c for c in report.first_failure.checks if c.check == "∂L/∂W")
    assert row.worst_index == [1, 2]
    assert row.value / row.expected == pytest.approx(1.01, rel=1e-8)


def test_a_stride_bug_fails_the_input_gradient_of_the_strided_cases_only(tmp_path: Path) -> None:
    report = report_for(tmp_path, conv_source(stride_bug=True), "LoopConv", ["filters=2", "kernel=3"])
    assert [(c.varied, c.status) for c in report.cases] == [("", "PASS")] * 3 + [("stride", FAIL)] * 3
    assert failing(report) == {"∂L/∂x"}
    assert all(c.hyper["stride"] == 2 for c in report.cases[3:])


def test_a_self_consistent_wrong_forward_passes_alone_and_fails_like_the_built_in(tmp_path: Path) -> None:
    flipped = conv_source(flip=True)
    alone = report_for(tmp_path, flipped, "LoopConv", ["filters=2", "kernel=3"])
    assert alone.passed  # finite differences agree with a true convolution's own backward
    like = report_for(tmp_path, flipped, "LoopConv", ["filters=2", "kernel=3"], like="conv")
    assert failing(like) == {"forward vs conv", "∂L/∂x vs conv", "∂L/∂W vs conv"}
    assert all(case.status == FAIL for case in like.cases)
    forward = like.cases[0].checks[-4]
    assert forward.check == "forward vs conv" and forward.max_rel_error > 0.01


def test_a_correct_conv_matches_the_built_in(tmp_path: Path) -> None:
    report = report_for(tmp_path, conv_source(), "LoopConv", ["filters=2", "kernel=3"], like="conv")
    assert report.passed
    for case in report.cases:
        compared = [c for c in case.checks if " vs " in c.check]
        assert [c.check for c in compared] == ["forward vs conv", "∂L/∂x vs conv", "∂L/∂W vs conv",
                                               "∂L/∂b vs conv"]  # fmt: skip
        assert all(c.max_rel_error <= LIKE_TOL["float64"] for c in compared)


def test_float32_comparisons_use_the_float32_tolerance(tmp_path: Path) -> None:
    report = report_for(tmp_path, conv_source(), "LoopConv", ["filters=2", "kernel=3"], like="conv",
                        dtype="float32")  # fmt: skip
    assert report.passed and report.dtype == "float32"
    errors = [c.max_rel_error for case in report.cases for c in case.checks if " vs " in c.check]
    assert max(errors) <= LIKE_TOL["float32"] and max(errors) > 0  # float32 rounding, not bit-equal


def test_a_layer_that_breaks_the_api_stops_at_the_api_check(tmp_path: Path) -> None:
    returns_float64 = "return np.logaddexp(0, x).astype(np.float64)"
    source = plugin_source().replace("return np.logaddexp(0, x)", returns_float64)
    report = report_for(tmp_path, source, "MySoftplus", [])
    api = report.cases[0].checks
    assert [c.check for c in api] == ["api"] and api[0].status == FAIL
    assert "forward returns float64 for a float32 input" in api[0].problem and "(float32)" in api[0].problem


def test_variants_vary_each_defaulted_argument_alone(tmp_path: Path) -> None:
    plugin = load_plugin(str(write_plugin(tmp_path, conv_source(), name="conv_plugin.py")))
    cls = sys.modules[plugin.module].LoopConv
    assert variants(cls, {"filters": 2, "kernel": 3}) == [
        ("", {"filters": 2, "kernel": 3, "stride": 1}),
        ("stride", {"filters": 2, "kernel": 3, "stride": 2}),  # (2, 1) is no int: left out
    ]
    conv = cnnbp.LAYERS["conv"]
    varied = {name for name, _ in variants(conv, {"filters": 2, "kernel": 3})}
    assert {"stride", "padding", "bias"} <= varied


@pytest.mark.parametrize(("target", "sets", "message"), [
    ("layer_under_test.py", [], "expected PLUGIN:CLASS"),
    ("layer_under_test.py:Nope", [], "defines no class 'Nope'"),
    ("layer_under_test.py:np", [], "np is not a subclass of cnnbp.Layer"),
    ("layer_under_test.py:MyDense", [], "units has no default; give it with --set units=VALUE"),
    ("layer_under_test.py:MyDense", ["units=three"], "--set units: expected an integer"),
    ("layer_under_test.py:MyDense", ["size=3"], "MyDense takes no argument 'size'"),
    ("layer_under_test.py:MyDense", ["units"], "--set units: expected KEY=VALUE"),
    ("missing.py:MyDense", [], "plugin file not found"),
])  # fmt: skip
def test_bad_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, sets: list[str],
                               message: str) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    write_plugin(tmp_path, name="layer_under_test.py")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_layer(target, sets=sets)


def test_like_a_layer_with_other_parameters_is_one_line(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, name="layer_under_test.py")
    with pytest.raises(UserError, match="--like conv: the built-in conv does not take"):
        check_layer(f"{path}:MyDense", sets=["units=3"], like="conv")
    with pytest.raises(UserError, match="--like: no layer kind 'convolution'"):
        check_layer(f"{path}:MyDense", sets=["units=3"], like="convolution")
    with pytest.raises(UserError, match="--dtype: expected float64 or float32"):
        check_layer(f"{path}:MyDense", sets=["units=3"], dtype="float16")


def test_like_dense_compares_a_dense_layer(tmp_path: Path) -> None:
    report = report_for(tmp_path, plugin_source(), *DENSE, like="dense")
    assert report.passed
    assert {c.check for case in report.cases for c in case.checks} >= {"forward vs dense", "∂L/∂W vs dense"}


def test_the_report_as_data_is_json(tmp_path: Path) -> None:
    report = report_for(tmp_path, plugin_source(SCALE_B=OFF), *DENSE)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["verdict"] == "FAIL" and data["counts"] == {"cases": 2, "failed": 2}
    api = data["cases"][0]["checks"][0]
    assert api["check"] == "api" and api["max_rel_error"] is None  # NaN → null
    bad = data["cases"][0]["checks"][3]
    assert bad["check"] == "∂L/∂b" and bad["status"] == "FAIL" and len(bad["worst_index"]) == 1
    assert np.isclose(bad["value"], bad["expected"] * 1.0001, rtol=1e-9)
