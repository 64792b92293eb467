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

from cnnbp.core.layers import Dense
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
        params, text = load_npz(path)
        assert text == CONFIG_YAML
    else:
        write_atomic(path, to_json_text(net, config))
        params, loaded_config = load_json(path)
        assert loaded_config == config
    assert sorted(params) == sorted(net.parameters())
    assert params_file_kind(path) == fmt

    fresh.set_parameters(params)
    for lname, group in net.parameters().items():
        for key, value in group.items():
            got = fresh.layer(lname).params[key]
            assert got.dtype == value.dtype
            assert got.tobytes() == value.tobytes(), f"{lname}/{key} changed"  # bit-exact, −0.0 included
    np.testing.assert_array_equal(fresh.forward(x), net.forward(x))


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
