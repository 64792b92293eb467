"""Tests of :mod:`cnnbp.exporters`: NPZ and JSON parameter files written from a network and read back bit for
bit, their layout (read with numpy / json directly), load errors naming the file, and the file mode.

Networks have random parameters (tests/cli/conftest.py); the values read back are copied into a fresh
network with the one weight copier, ``Sequential.set_parameters``.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cnnbp.core.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, ReLU
from cnnbp.core.network import Sequential
from cnnbp.exporters import (
    load_json,
    load_npz,
    params_file_kind,
    to_json_text,
    to_npz_bytes,
)
from cnnbp.files import write_atomic
from cnnbp.onnx_graph import ExportError
from tests.cli.conftest import CONFIG_YAML, EXPORT_DTYPES, export_case


def _awkward(net: Sequential) -> None:
    """Put values that a lossy text or float conversion would change into the first parameter."""
    info, one = np.finfo(net.dtype), net.dtype.type(1)
    # a large value stays finite through the network: max·2⁻⁶⁴ keeps all mantissa bits of max
    awkward = [0.1, 1 / 3, -0.0, info.smallest_subnormal, info.max * 2.0**-64, np.nextafter(one, 2 * one)]
    vals = np.array(awkward, dtype=net.dtype)
    first = next(iter(net.parameters().values()))
    w = next(iter(first.values())).reshape(-1)
    w[: vals.size] = vals


# ---- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", EXPORT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("fmt", ["npz", "json"])
@pytest.mark.parametrize("case", ["dlt_lenet_mse", "lenet_softmax", "dense_activations"])
def test_file_round_trip_gives_identical_network(tmp_path: Path, case: str, fmt: str, dtype: type) -> None:
    net, _, x = export_case(case, dtype, seed=0)
    _awkward(net)
    fresh, _, _ = export_case(case, dtype, seed=7)  # same architecture, different values
    assert not np.array_equal(fresh.forward(x), net.forward(x))

    path = tmp_path / f"params.{fmt}"
    config = {"model": {"input_shape": list(net.input_shape)}, "note": "β × Σ", "lr": 0.1}
    if fmt == "npz":
        write_atomic(path, to_npz_bytes(net, CONFIG_YAML))
        params, state, text = load_npz(path)
        assert text == CONFIG_YAML
    else:
        write_atomic(path, to_json_text(net, config))
        params, state, loaded_config = load_json(path)
        assert loaded_config == config
    assert sorted(params) == sorted(net.parameters())
    assert state == {}  # these networks have no buffers
    assert params_file_kind(path) == fmt

    fresh.set_parameters(params)
    for lname, group in net.parameters().items():
        for key, value in group.items():
            got = fresh.layer(lname).params[key]
            assert got.dtype == value.dtype
            assert got.tobytes() == value.tobytes(), f"{lname}/{key} changed"  # bit-exact, −0.0 included
    np.testing.assert_array_equal(fresh.forward(x), net.forward(x))


def buffered_net(dtype: type, seed: int) -> Sequential:
    """conv → batchnorm (images) → relu → flatten → dense → batchnorm (vectors) → dropout → dense, with
    random parameters and running statistics (variances in [0.5, 2)), awkward values in the first mean."""
    layers = [Conv2D(2, 3, name="conv"), BatchNorm(name="bn_img"), ReLU(name="relu"), Flatten(name="flat"),
              Dense(4, name="fc"), BatchNorm(momentum=0.2, name="bn_vec"), Dropout(0.5, name="drop"),
              Dense(3, name="out")]  # fmt: skip
    rng = np.random.default_rng(seed)
    net = Sequential(layers, (1, 5, 5)).build(rng, dtype)
    for layer in net.layers:
        for value in layer.params.values():
            value[...] = rng.normal(0.0, 0.5, size=value.shape)
        if layer.state:
            layer.state["running_mean"][...] = rng.normal(0.0, 1.0, size=layer.state["running_mean"].shape)
            layer.state["running_var"][...] = rng.uniform(0.5, 2.0, size=layer.state["running_var"].shape)
    one = np.dtype(dtype).type(1)
    net.layer("bn_img").state["running_mean"][:2] = [1 / 3, np.nextafter(one, 2 * one)]
    return net


@pytest.mark.parametrize("dtype", EXPORT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_buffers_round_trip_beside_the_parameters(tmp_path: Path, fmt: str, dtype: type) -> None:
    """Running statistics come back bit for bit, apart from the parameters; loaded into a network of
    other values, its inference (eval phase: running statistics, no dropout) is the source's."""
    net, fresh = buffered_net(dtype, 0), buffered_net(dtype, 7)
    path = tmp_path / f"m.{fmt}"
    write_atomic(path, to_npz_bytes(net, CONFIG_YAML) if fmt == "npz" else to_json_text(net, {"seed": 0}))
    loaded = load_npz(path) if fmt == "npz" else load_json(path)
    assert sorted(loaded.params) == ["bn_img", "bn_vec", "conv", "fc", "out"]
    assert {l: sorted(g) for l, g in loaded.state.items()} == {
        "bn_img": ["running_mean", "running_var"],
        "bn_vec": ["running_mean", "running_var"],
    }
    fresh.set_parameters(loaded.params)
    fresh.set_state(loaded.state)
    for lname, group in net.state().items():
        for key, value in group.items():
            got = fresh.layer(lname).state[key]
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), f"{lname}/{key} changed"
    x = np.random.default_rng(1).normal(size=(3, 1, 5, 5)).astype(dtype)
    with net.in_phase("eval"), fresh.in_phase("eval"):
        np.testing.assert_array_equal(fresh.forward(x), net.forward(x))


def test_buffers_layout(tmp_path: Path) -> None:
    """NPZ: ``__state__/<layer>/<buffer>`` entries; JSON: a ``state`` object after ``params``, only on the
    layers that have buffers.  Read with numpy / json directly."""
    net = buffered_net(np.float64, 0)
    with np.load(io.BytesIO(to_npz_bytes(net, CONFIG_YAML)), allow_pickle=False) as npz:
        state_keys = {k for k in npz.files if k.startswith("__state__/")}
        assert state_keys == {f"__state__/{l}/{b}" for l in ("bn_img", "bn_vec")
                              for b in ("running_mean", "running_var")}  # fmt: skip
        assert set(npz.files) - state_keys == {f"{l}/{k}" for l, g in net.parameters().items() for k in g} | {
            "__config__"
        }
        want = net.layer("bn_vec").state["running_var"]
        np.testing.assert_array_equal(npz["__state__/bn_vec/running_var"], want)
    doc = json.loads(to_json_text(net, {"seed": 0}))
    rows = {r["name"]: r for r in doc["layers"]}
    assert [name for name, r in rows.items() if "state" in r] == ["bn_img", "bn_vec"]
    assert list(rows["bn_img"]) == ["name", "type", "params", "state"]
    assert rows["bn_img"]["params"] == {k: v.tolist() for k, v in net.layer("bn_img").params.items()}
    assert rows["bn_img"]["state"] == {k: v.tolist() for k, v in net.layer("bn_img").state.items()}
    assert rows["drop"] == {"name": "drop", "type": "dropout", "params": {}}


def test_files_without_buffers_still_read(tmp_path: Path) -> None:
    """Exports written before buffers were exported: no ``__state__/`` entries, no ``state`` objects."""
    old_npz = tmp_path / "old.npz"
    np.savez(old_npz, **{"fc/W": np.ones((2, 3)), "fc/b": np.zeros(2), "__config__": np.array("seed: 0\n")})
    loaded = load_npz(old_npz)
    assert loaded.state == {} and sorted(loaded.params["fc"]) == ["W", "b"] and loaded.config == "seed: 0\n"
    old_json = tmp_path / "old.json"
    old_json.write_text('{"layers": [{"name": "fc", "type": "dense", "params": {"W": [[1.5]], "b": [0]}}]}')
    loaded = load_json(old_json)
    assert loaded.state == {} and loaded.params["fc"]["W"].tolist() == [[1.5]] and loaded.config == {}


# ---- file layout -------------------------------------------------------------------------------------
def test_npz_is_plain_arrays(tmp_path: Path) -> None:
    net, _, _ = export_case("lenet_softmax", np.float32)
    path = tmp_path / "p.npz"
    write_atomic(path, to_npz_bytes(net, CONFIG_YAML))
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
    net, _, _ = export_case("conv_tied_stride_pad_pairs", np.float64)
    path = tmp_path / "p.json"
    write_atomic(path, to_json_text(net, {"seed": 0}))
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["config"] == {"seed": 0}
    assert [(r["name"], r["type"]) for r in doc["layers"]] == [
        ("conv1", "conv"), ("conv1.tanh", "tanh"), ("flat", "flatten"), ("fc", "dense")
    ]
    assert doc["layers"][1]["params"] == {}
    assert doc["layers"][0]["params"]["W"] == net.layer("conv1").params["W"].tolist()
    assert path.read_text(encoding="utf-8") == to_json_text(net, {"seed": 0})


# ---- load errors -------------------------------------------------------------------------------------
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
    for name, arrays, message in (
        ("nameless", {"__state__/bn": np.zeros(2)},
         r"entry '__state__/bn' is not named __state__/<layer>/<buffer>"),
        ("text", {"__state__/bn/running_mean": np.array(["a", "b"])},
         r"entry '__state__/bn/running_mean' is not a real numeric array \(<U1\)"),
    ):  # fmt: skip
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ExportError, match=rf"{name}\.npz: {message}"):
            load_npz(tmp_path / f"{name}.npz")
    for text, message in (
        ('"state": [1]', r"layers\[0\]\.state must be an object"),
        ('"state": {"running_var": [[1], [2, 3]]}',
         r"layers\[0\]\.state\.running_var is not a rectangular array"),
    ):  # fmt: skip
        odd_state = tmp_path / "state.json"
        odd_state.write_text(f'{{"layers": [{{"name": "bn", "type": "batchnorm", "params": {{}}, {text}}}]}}')
        with pytest.raises(ExportError, match=rf"state\.json: {message}"):
            load_json(odd_state)
    # what model.init_from makes of them: the content decides, then the suffix
    assert [params_file_kind(p) for p in (bad, odd, broken, ragged)] == ["npz", "npz", "json", "json"]
    assert params_file_kind(tmp_path / "missing.npz") is None and params_file_kind(tmp_path) is None


# ---- file mode ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_exported_files_get_the_usual_file_mode(tmp_path: Path, fmt: str) -> None:
    """The atomic write must not leave the temporary file's 0600 mode on the export."""
    net = Sequential([Dense(2, name="d")], (3,)).build(np.random.default_rng(0), np.float64)
    path = tmp_path / f"m.{fmt}"
    if fmt == "npz":
        write_atomic(path, to_npz_bytes(net, "seed: 0\n"))
    else:
        write_atomic(path, to_json_text(net, {"seed": 0}))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
