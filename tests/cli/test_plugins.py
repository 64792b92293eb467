"""Users' layers: loading plugins (one line per problem), recording them with a run, and a plugin layer
in every command and from ``import cnnbp``; a 1e-4 error in any of its gradients is found and named."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import cnnbp
from cnnbp.app import app
from cnnbp.core.layers import Dense, Flatten
from cnnbp.core.network import Sequential
from cnnbp.core.registry import LAYERS
from cnnbp.errors import UserError
from cnnbp.plugins import check_api, load_plugin, load_plugins, load_recorded, origin, plugin_specs
from tests.cli.conftest import OFF, plugin_source, write_plugin

runner = CliRunner()

def plugin_config(plugins: list | None = None, name: str = "mine", epochs: int = 2) -> dict:
    """d1 (my_dense 5) → s (my_softplus) → d2 (my_dense 3), softmax cross-entropy, on eight inline
    6-vectors, float64."""
    rng = np.random.default_rng(3)
    config = {
        "name": name,
        "seed": 2,
        "dtype": "float64",
        "data": {"source": "inline", "val_fraction": 0.25, "x": rng.random((8, 6)).round(3).tolist(),
                 "y": [0, 1, 2, 0, 1, 2, 0, 1]},  # fmt: skip
        "model": {
            "input_shape": [6],
            "layers": [
                {"type": "my_dense", "name": "d1", "units": 5},
                {"type": "my_softplus", "name": "s"},
                {"type": "my_dense", "name": "d2", "units": 3},
            ],
        },
        "loss": "softmax_cross_entropy",
        "train": {"epochs": epochs, "batch_size": 3, "lr": 0.1},
        "record": {"probe": 2},
    }
    if plugins is not None:
        config["plugins"] = plugins
    return config


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def invoke(*args: object):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80", "NO_COLOR": "1"})


def one_line_error(result, *fragments: str) -> str:  # noqa: ANN001 - typer's Result
    """The command failed with exit 2 and one ``error:`` line holding every fragment."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def plugin_run(folder: Path, source: str | None = None, epochs: int = 2) -> tuple[Path, Path]:
    """(the run folder, the plugin file) of a run trained with ``plugins: [my_layers.py]``."""
    plugin = write_plugin(folder, source)
    config = write_yaml(folder / "mine.yaml", plugin_config(["my_layers.py"], epochs=epochs))
    result = invoke("train", config, "--out", folder / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "runs" / "mine", plugin


# ---- loading ------------------------------------------------------------------------------------------


def test_a_plugin_registers_its_kinds_and_is_known_by_its_content(tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    plugin = load_plugin(str(path))
    assert plugin.kinds == ("my_softplus", "my_dense")
    assert plugin.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plugin.record() == {"path": str(path.resolve()), "sha256": plugin.sha256}
    assert origin(LAYERS["my_dense"]) == plugin and origin(Dense) is None
    assert load_plugin(str(path)) is plugin  # loading again changes nothing
    assert issubclass(LAYERS["my_dense"], cnnbp.Layer) and LAYERS["my_dense"].kind == "my_dense"


def test_a_path_is_relative_to_the_base_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_plugin(tmp_path / "sub")
    [plugin] = load_plugins([("sub/my_layers.py", None)], base_dir=tmp_path)
    assert plugin.path == str((tmp_path / "sub" / "my_layers.py").resolve())


def test_an_importable_module_is_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, name="users_layers_mod.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = load_plugin("users_layers_mod")
    assert plugin.path == "users_layers_mod" and "my_dense" in plugin.kinds
    assert plugin.sha256 == hashlib.sha256((tmp_path / "users_layers_mod.py").read_bytes()).hexdigest()
    sys.modules.pop("users_layers_mod", None)


def test_an_edited_plugin_registers_its_layers_anew(tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    first = load_plugin(str(path))
    old = LAYERS["my_dense"]
    path.write_text(plugin_source(SCALE_W="2"), encoding="utf-8")
    second = load_plugin(str(path))
    assert second.sha256 != first.sha256 and LAYERS["my_dense"] is not old


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        (None, ["plugin file not found"]),
        ("def broken(:\n", ["failed to import (line 1)", "SyntaxError"]),
        ("raise RuntimeError('no GPU here')\n", ["failed to import", "RuntimeError: no GPU here"]),
        ("import cnnbp\n@cnnbp.register_layer('conv')\nclass C(cnnbp.Layer):\n    pass\n",
         ["registers layer kind 'conv', which exists already"]),
        ("import cnnbp\n@cnnbp.register_layer('thing')\nclass C:\n    pass\n",
         ["registers 'thing', which is not a subclass of cnnbp.Layer"]),
    ],
    ids=["missing", "syntax-error", "raises", "existing-kind", "not-a-layer"],
)  # fmt: skip
def test_a_plugin_that_cannot_load_is_one_line_naming_it(tmp_path: Path, source: str | None,
                                                         fragments: list[str]) -> None:  # fmt: skip
    path = tmp_path / "bad.py"
    if source is not None:
        path.write_text(source, encoding="utf-8")
    kinds = dict(LAYERS)
    with pytest.raises(UserError) as e:
        load_plugin(str(path))
    assert str(e.value).startswith(f"{path.resolve()}: ") and "\n" not in str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value)
    assert LAYERS == kinds  # nothing half-registered
    result = invoke("train", "--plugin", path, "--dry-run")
    one_line_error(result, str(path.resolve()), *fragments)


def test_a_module_that_is_not_there_is_one_line() -> None:
    with pytest.raises(UserError, match="no_such_plugin_module: no plugin file or importable module"):
        load_plugin("no_such_plugin_module")


def test_the_recorded_content_is_required(tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_recorded([{"path": str(path), "sha256": digest}])[0].sha256 == digest
    with pytest.raises(UserError, match="changed since the run used it"):
        load_recorded([{"path": str(path), "sha256": "0" * 64}])


@pytest.mark.parametrize("value", ["my_layers.py", [3], [{"path": "a.py"}]])
def test_plugins_must_be_a_list_of_paths(value: object) -> None:
    with pytest.raises(UserError, match=r"plugins(\[0\])?: expected"):
        plugin_specs(value)


# ---- the layer API --------------------------------------------------------------------------------------

BROKEN_API = {
    "wrong-shape": ("return np.logaddexp(0, x)", "return np.logaddexp(0, x)[:, :-1]",
                    "forward returns shape (3, 4), but output_shape says (3, 5)"),
    "dy-in-place": ("return dy / (1 + np.exp(-self.x)) * 1", "dy /= 1 + np.exp(-self.x)\n        return dy",
                    "backward modified dy in place"),
    "grad-missing": ('self.grads["b"] = dy.sum(axis=0) * 1', "pass", "backward fills no grads['b']"),
    "grad-shape": ('self.grads["b"] = dy.sum(axis=0) * 1', 'self.grads["b"] = dy.sum(axis=0)[:, None]',
                   "grads['b'] has shape (5, 1), params['b'] has (5,)"),
    "grad-dtype": ('self.grads["b"] = dy.sum(axis=0) * 1', 'self.grads["b"] = dy.sum(axis=0).astype(int)',
                   "grads['b'] is int64, params['b'] is float64"),
    "raises": ("return dy / (1 + np.exp(-self.x)) * 1", "raise ValueError('not written yet')",
               "raised ValueError: not written yet"),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN_API, ids=list(BROKEN_API))
def test_a_layer_that_breaks_the_api_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    old, new, problem = BROKEN_API[case]
    source = plugin_source()
    assert old in source
    path = write_plugin(tmp_path, source.replace(old, new, 1))
    config = write_yaml(tmp_path / "mine.yaml", plugin_config(["my_layers.py"]))
    result = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    layer = "d1 (model.layers[0])" if "grad" in case else "s (model.layers[1])"
    one_line_error(result, f"{path.resolve()}: layer {layer}: {problem}")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_a_network_of_plugin_and_built_in_layers_keeps_the_api(tmp_path: Path) -> None:
    load_plugin(str(write_plugin(tmp_path)))
    net = Sequential([LAYERS["my_dense"](units=4, name="d"), Flatten(), Dense(2)], (3,))
    net.build(np.random.default_rng(0), np.float64)
    check_api(net)  # the plugin layer keeps the API; the built-ins are not run


# ---- in every command -----------------------------------------------------------------------------------


def test_a_plugin_run_records_its_plugin_and_every_command_loads_it(tmp_path: Path) -> None:
    run, plugin = plugin_run(tmp_path)
    recorded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["plugins"]
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert recorded == [{"path": str(plugin.resolve()), "sha256": digest}]
    # a fresh registry, as in a new process: each command loads the recorded plugin by itself
    for kind in ("my_dense", "my_softplus"):
        LAYERS.pop(kind)
    from cnnbp import plugins

    plugins._LOADED.clear()
    gradcheck = invoke("gradcheck", run, "--json")
    assert gradcheck.exit_code == 0, gradcheck.output
    report = json.loads(gradcheck.stdout)
    assert report["verdict"] == "PASS"
    assert {(r["layer"], r["tensor"]) for r in report["rows"]} >= {("d1", "W"), ("s", "delta"), ("d2", "b")}
    for fmt in ("npz", "json"):
        exported = invoke("export", run, "--format", fmt, "-o", tmp_path / f"model.{fmt}")
        assert exported.exit_code == 0, exported.output
    with np.load(tmp_path / "model.npz") as npz:
        assert npz["d1/W"].shape == (5, 6) and npz["d2/b"].shape == (3,)
    resumed = invoke("train", "--resume", run, "--epochs", "3", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    bench = invoke("bench", run / "config.yaml", "--steps", "2", "--json")
    assert bench.exit_code == 0, bench.output
    assert [row["name"] for row in json.loads(bench.stdout)["layers"]] == ["d1", "s", "d2"]


def test_onnx_without_a_mapping_is_one_line_naming_the_layer(tmp_path: Path) -> None:
    run, _ = plugin_run(tmp_path)
    result = invoke("export", run, "--format", "onnx", "-o", tmp_path / "model.onnx")
    one_line_error(result, "d1", "my_dense")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("change", ["missing", "edited"])
def test_a_run_whose_plugin_is_gone_or_changed_is_refused_by_every_command_that_runs_it(
    tmp_path: Path, change: str
) -> None:
    run, plugin = plugin_run(tmp_path)
    for kind in ("my_dense", "my_softplus"):  # as in a new process
        LAYERS.pop(kind)
    from cnnbp import plugins

    plugins._LOADED.clear()
    if change == "missing":
        plugin.unlink()
        fragment = "plugin file not found"
    else:
        plugin.write_text(plugin_source(SCALE_W="2"), encoding="utf-8")
        fragment = "changed since the run used it"
    before = sorted(p.name for p in run.rglob("*"))
    for args in (["gradcheck", run], ["train", "--resume", run, "--epochs", "3"],
                 ["export", run, "-o", tmp_path / "m.npz"], ["bench", run / "config.yaml"]):  # fmt: skip
        one_line_error(invoke(*args), str(plugin.resolve()), fragment)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written, nothing lost
    shown = invoke("inspect", run)  # reads arrays only: works, and says which plugin the run used
    assert shown.exit_code == 0, shown.output
    assert "plugins" in shown.output and "my_layers.py" in shown.output


def test_plugin_option_loads_layers_for_a_config_without_plugins(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path)
    config = write_yaml(tmp_path / "c.yaml", plugin_config())
    one_line_error(invoke("train", config, "--dry-run"), "my_dense")
    result = invoke("train", config, "--plugin", plugin, "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((tmp_path / "runs" / "mine" / "config.yaml").read_text(encoding="utf-8"))
    assert recorded["plugins"][0]["path"] == str(plugin.resolve())


def test_hyper_parameters_of_a_plugin_are_checked_from_its_annotations(tmp_path: Path) -> None:
    write_plugin(tmp_path)
    config = plugin_config(["my_layers.py"])
    config["model"]["layers"][0]["units"] = "ten"
    result = invoke("train", write_yaml(tmp_path / "c.yaml", config), "--dry-run")
    one_line_error(result, "model.layers[0].units: expected an integer, got 'ten'")
    config["model"]["layers"][0]["units"] = 5
    config["model"]["layers"][0]["size"] = 5
    result = invoke("train", write_yaml(tmp_path / "c.yaml", config), "--dry-run")
    one_line_error(result, "model.layers[0]", "size")


def test_init_works_for_plugin_parameters(tmp_path: Path) -> None:
    write_plugin(tmp_path)
    w = np.arange(30, dtype=float).reshape(5, 6) / 100
    config = plugin_config([str(tmp_path / "my_layers.py")], epochs=1)
    config["model"]["layers"][0]["init"] = {"W": w.tolist(), "b": 0.25}
    config["model"]["layers"][2]["init"] = "zeros"
    run = cnnbp.train(config, out=tmp_path / "runs")
    initial = run.checkpoint(0)
    np.testing.assert_array_equal(initial.weights["d1"]["W"], w)
    np.testing.assert_array_equal(initial.weights["d1"]["b"], np.full(5, 0.25))
    np.testing.assert_array_equal(initial.weights["d2"]["W"], np.zeros((3, 5)))


def test_default_init_is_glorot_for_the_weight_and_zero_for_the_rest(tmp_path: Path) -> None:
    load_plugin(str(write_plugin(tmp_path)))
    layer = LAYERS["my_dense"](units=40, name="d")
    layer.build((60,), np.random.default_rng(0), np.dtype(np.float64))
    bound = np.sqrt(6 / (60 + 40))  # fans from W's shape (40, 60): fan_in 60, fan_out 40
    assert np.all(np.abs(layer.params["W"]) <= bound) and np.abs(layer.params["W"]).max() > 0.9 * bound
    np.testing.assert_array_equal(layer.params["b"], np.zeros(40))


def test_a_layer_registered_in_code_trains_from_import_cnnbp(tmp_path: Path) -> None:
    @cnnbp.register_layer("code_square")
    class Square(cnnbp.Layer):
        def forward(self, x: np.ndarray) -> np.ndarray:
            self.x = x
            return x * x

        def backward(self, dy: np.ndarray) -> np.ndarray:
            return 2 * self.x * dy

    config = plugin_config([str(write_plugin(tmp_path))], epochs=1)
    config["model"]["layers"][1] = {"type": "code_square", "name": "sq"}
    run = cnnbp.train(config, out=tmp_path / "runs")
    assert run.epochs[-1] == 1
    report = cnnbp.gradcheck(run)
    assert report.passed and report.row("sq", "delta").status == "PASS"


# ---- a 1e-4 error in any gradient is found and named ---------------------------------------------------


def check_rows(tmp_path: Path, **broken: str) -> dict[tuple[str, str], str]:
    """(layer, tensor) → status of ``cnnbp.gradcheck`` on the plugin network at its initial weights."""
    path = write_plugin(tmp_path, plugin_source(**broken))
    report = cnnbp.gradcheck(plugin_config([str(path)]), method="central", samples=4)
    return {(r.layer, r.tensor): r.status for r in report.rows}


def test_a_correct_plugin_passes_gradcheck(tmp_path: Path) -> None:
    rows = check_rows(tmp_path)
    assert set(rows.values()) == {"PASS"} and len(rows) == 8  # input; d1 W b δ; s δ; d2 W b δ


@pytest.mark.parametrize(("broken", "failing"), [
    ("SCALE_W", {("d1", "W"), ("d2", "W")}),
    ("SCALE_B", {("d1", "b"), ("d2", "b")}),
    # an input gradient that is off fails the delta flowing out of the layer, and what lies before it
    ("SCALE_DENSE_X", {("s", "delta"), ("d1", "delta"), ("d1", "W"), ("d1", "b"), ("input", "input")}),
    ("SCALE_SOFTPLUS_X", {("d1", "delta"), ("d1", "W"), ("d1", "b"), ("input", "input")}),
])  # fmt: skip
def test_a_gradient_off_by_1e_4_fails_gradcheck_on_its_own_rows(tmp_path: Path, broken: str,
                                                                failing: set) -> None:  # fmt: skip
    rows = check_rows(tmp_path, **{broken: OFF})
    assert {key for key, status in rows.items() if status == "FAIL"} == failing


def test_gradcheck_names_the_plugin_layer_whose_output_delta_is_wrong(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, plugin_source(SCALE_SOFTPLUS_X=OFF))
    config = write_yaml(tmp_path / "c.yaml", plugin_config([path.name]))
    result = invoke("gradcheck", config, "--method", "central")
    assert result.exit_code == 1, result.output
    failing = [line.split() for line in result.output.splitlines() if line.rstrip().endswith("FAIL")]
    assert ["d1", "delta"] in [words[:2] for words in failing]
    assert all(words[0] != "d2" for words in failing)


def test_a_copied_run_folder_finds_its_plugin_by_content(tmp_path: Path) -> None:
    run, plugin = plugin_run(tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.copytree(run, moved)
    assert cnnbp.gradcheck(moved).passed  # the plugin loaded in this process has the recorded content


# ---- kinks ------------------------------------------------------------------------------------------------

KINKY = '''
import numpy as np
import cnnbp


@cnnbp.register_layer("my_relu")
class MyRelu(cnnbp.Layer):
    analytic = {ANALYTIC}

    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask
{SIGNATURE}
'''
SIGNATURE = '''
    def kink_signature(self):
        return self.mask
'''


@pytest.mark.parametrize("declared", [True, False])
def test_a_plugin_declares_its_kinks_as_the_built_ins_do(tmp_path: Path, declared: bool) -> None:
    source = KINKY.format(ANALYTIC="False" if declared else "True", SIGNATURE=SIGNATURE if declared else "")
    path = write_plugin(tmp_path, source, name="kinky.py")
    config = plugin_config([str(path)])
    config["model"]["layers"] = [{"type": "my_relu", "name": "r"}, {"type": "dense", "name": "d", "units": 3}]
    config["data"]["x"][0][:3] = [0.0, 0.0, 0.0]  # exactly at the kink: one-sided slopes 0 and 1
    config["data"]["val_fraction"] = 0
    report = cnnbp.gradcheck(config, method="central", samples=8)
    row = report.row("input", "input")
    if declared:  # a perturbation that crosses the kink is reported as such, not as a wrong gradient
        assert row.status == "KINK" and report.passed
        assert cnnbp.gradcheck(config, samples=8).to_dict()["method"] == "central"  # auto: not analytic
    else:  # said nothing: the mismatch at x = 0 is a failure (0 analytic, half the slope numerically)
        assert row.status == "FAIL" and not report.passed
        assert row.worst_index[0] == 0 and row.worst_index[1] in (0, 1, 2) and row.analytic == 0
