"""Config loading: shipped configs, overrides, defaults, round trips, and one-line errors with key paths."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnbp import config as config_mod
from cnnbp.config import (
    build_loss,
    build_network,
    check_model,
    config_from_dict,
    default_config_path,
    dump_config,
    load_config,
)
from cnnbp.config_schema import activation_kinds
from cnnbp.core.init import Constant, Explicit, GlorotUniform, HeNormal, Zeros
from cnnbp.core.layers import Conv2D, Dense, Flatten, LpPool, MaxPool, MeanPool, ReLU, Subsample
from cnnbp.core.losses import MSE, SoftmaxCrossEntropy
from cnnbp.core.registry import LAYERS
from cnnbp.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))
SHIPPED = [
    ROOT / "cnnbp_cli" / "configs" / "digits.yaml",
    ROOT / "configs" / "digits.yaml",
    ROOT / "configs" / "dlt_mnist.yaml",
    ROOT / "configs" / "lenet5.yaml",
    *EXAMPLES,
]


def error(fn, *args, **kwargs) -> str:
    """The message of the UserError ``fn`` raises; it must be one line."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message == message.strip(), message
    return message


def small() -> dict:
    """A valid tiny config: 1×4×4 → conv 2@3 relu (2×2) → max pool 2 (1×1) → flatten → dense 2."""
    return {
        "data": {
            "source": "inline",
            "x": [[[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]],
            "y": [0],
        },
        "model": {
            "input_shape": [1, 4, 4],
            "layers": [
                {"type": "conv", "filters": 2, "kernel": 3, "activation": "relu"},
                {"type": "pool", "mode": "max", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 2},
            ],
        },
    }


def with_(raw: dict, path: str, value) -> dict:
    """A copy of ``raw`` with one dotted key (list indices as numbers) set, or deleted when value is ...."""
    raw = copy.deepcopy(raw)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = raw
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


def comparable(cfg):
    """Every field of a RunConfig except base_dir (which names the file's folder)."""
    return (cfg.name, cfg.seed, cfg.dtype, cfg.data, cfg.model, cfg.loss, cfg.train, cfg.record, cfg.resolved)


# ---- shipped configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_loads_and_passes_check_model(path: Path) -> None:
    cfg = load_config(path)
    infos = check_model(cfg)
    assert len(infos[-1].output_shape) == 1
    assert [i.name for i in infos] == [layer.name for layer in build_network(cfg).layers]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_round_trips_through_dump_config(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    text = dump_config(cfg)
    assert "&id" not in text and "*id" not in text  # no YAML aliases
    copy_path = tmp_path / "config.yaml"
    copy_path.write_text(text, encoding="utf-8")
    again = load_config(copy_path)
    assert comparable(again) == comparable(cfg)
    assert comparable(config_from_dict(yaml.safe_load(text))) == comparable(cfg)
    assert dump_config(again) == text


def test_default_config_is_the_packaged_digits_and_configs_digits_is_a_relative_symlink() -> None:
    assert default_config_path() == (ROOT / "cnnbp_cli" / "configs" / "digits.yaml").resolve()
    link = ROOT / "configs" / "digits.yaml"
    assert link.is_symlink() and os.readlink(link) == "../cnnbp_cli/configs/digits.yaml"
    cfg = load_config(None)
    assert comparable(cfg) == comparable(load_config(link))
    assert cfg.name == "digits"
    assert cfg.data.source == "digits" and cfg.data.scale == 0.0625
    assert cfg.loss == "softmax_cross_entropy" and cfg.dtype == "float32"
    assert cfg.model.input_shape == (1, 8, 8)
    assert cfg.record.probe == 8


def test_default_resolved_has_every_default_filled_in() -> None:
    r = load_config(None).resolved
    assert list(r) == ["name", "seed", "dtype", "data", "model", "loss", "train", "record"]
    assert r["data"] == {
        "source": "digits", "path": None, "scale": 0.0625, "val_fraction": 0.2, "limit": None
    }  # fmt: skip
    assert r["model"]["input_shape"] == [1, 8, 8] and r["model"]["init_from"] is None
    assert r["model"]["layers"][0] == {
        "type": "conv", "name": "conv1", "filters": 16, "kernel": 3, "stride": 1, "padding": 1,
        "bias": "tied", "activation": "relu", "init": {"W": "he_normal", "b": "zeros"},
    }  # fmt: skip
    assert r["model"]["layers"][1] == {
        "type": "pool", "name": "pool2", "size": 2, "stride": [2, 2], "mode": "max"
    }  # fmt: skip
    assert r["model"]["layers"][4] == {"type": "flatten", "name": "flatten5"}
    assert r["model"]["layers"][5]["init"] == {"W": "glorot_uniform", "b": "zeros"}
    assert list(r["train"]) == ["epochs", "batch_size", "threads", "optimizer", "lr", "momentum",
                                "weight_decay", "shuffle", "divergence_factor", "schedule", "early_stopping"]
    assert r["train"]["threads"] == "auto"
    assert r["train"]["optimizer"] == "sgd"
    assert (r["train"]["schedule"], r["train"]["early_stopping"]) == (None, None)
    assert r["record"] == {"probe": 8, "every": 1, "monitor": "val_loss", "keep": "all", "tensorboard": False}


def test_examples_together_exercise_every_layer_type_activation_and_loss() -> None:
    cfgs = [load_config(p) for p in EXAMPLES]
    specs = [s for c in cfgs for s in c.model.layers]
    types = {s.type for s in specs}
    assert types >= {"conv", "pool", "subsample", "dense", "flatten", *activation_kinds()}
    assert {s.activation for s in specs if s.activation} == set(activation_kinds())  # as a layer's key, too
    assert {c.loss for c in cfgs} == {"mse", "softmax_cross_entropy"}
    assert {s.hyper["mode"] for s in specs if s.type == "pool"} == {"max", "mean", "lp"}
    convs = [s.hyper for s in specs if s.type == "conv"]
    assert any(h["bias"] == "untied" for h in convs) and any(h["bias"] == "tied" for h in convs)
    assert any(isinstance(h["stride"], list) and isinstance(h["padding"], list) for h in convs)

    def overlaps(h: dict) -> bool:
        size, stride = (h["size"], h["stride"])
        size = size if isinstance(size, list) else [size, size]
        stride = stride if isinstance(stride, list) else [stride, stride]
        return any(s < k for s, k in zip(stride, size, strict=True))

    assert all(overlaps(s.hyper) for s in specs if s.type == "pool")
    assert all(c.data.source == "inline" for c in cfgs)


def test_dlt_and_lenet_follow_their_references() -> None:
    dlt = load_config(ROOT / "configs" / "dlt_mnist.yaml")
    rows = [(s.type, s.hyper.get("filters") or s.hyper.get("units"), s.activation) for s in dlt.model.layers]
    assert rows == [
        ("conv", 6, "sigmoid"), ("pool", None, None), ("conv", 12, "sigmoid"), ("pool", None, None),
        ("flatten", None, None), ("dense", 10, "sigmoid"),
    ]  # fmt: skip
    assert all(s.hyper["mode"] == "mean" for s in dlt.model.layers if s.type == "pool")
    assert all(s.init["W"] == "glorot_uniform" for s in dlt.model.layers if s.init)
    assert (dlt.loss, dlt.train.lr, dlt.train.batch_size, dlt.train.epochs, dlt.train.hyper["momentum"]) == (
        "mse", 1.0, 50, 1, 0.0)
    assert dlt.data.source == "idx" and dlt.data.scale == pytest.approx(1 / 255)
    assert check_model(dlt)[-1].output_shape == (10,)

    lenet = load_config(ROOT / "configs" / "lenet5.yaml")
    shapes = {i.name: i.output_shape for i in check_model(lenet)}
    assert shapes["conv1"] == (6, 28, 28) and shapes["pool4"] == (16, 5, 5) and shapes["flatten5"] == (400,)
    assert [shapes[n] for n in ("dense6", "dense7", "dense8")] == [(120,), (84,), (10,)]
    assert lenet.loss == "softmax_cross_entropy" and lenet.train.batch_size == 64


# ---- core objects ---------------------------------------------------------------------------------------


def test_build_network_makes_unbuilt_core_layers_with_activation_layers_after_their_parent() -> None:
    net = build_network(load_config(None))
    assert [(type(l), l.name) for l in net.layers] == [
        (Conv2D, "conv1"), (ReLU, "conv1.relu"), (MaxPool, "pool2"),
        (Conv2D, "conv3"), (ReLU, "conv3.relu"), (MaxPool, "pool4"),
        (Flatten, "flatten5"), (Dense, "dense6"),
    ]  # fmt: skip
    assert all(not l.params for l in net.layers)  # not built
    conv = net.layers[0]
    assert (conv.filters, conv.kernel, conv.stride, conv.padding) == (16, (3, 3), (1, 1), (1, 1))
    assert conv.bias == "tied"
    net.build(np.random.default_rng(0), np.float32)
    assert net.layers[0].params["W"].shape == (16, 1, 3, 3)
    assert isinstance(build_loss(load_config(None)), SoftmaxCrossEntropy)


def test_pool_and_subsample_hyper_reach_core() -> None:
    raw = small()
    raw["model"]["input_shape"] = [1, 8, 8]
    raw["data"]["x"] = [np.zeros((8, 8)).tolist()]
    raw["loss"] = "mse"
    raw["model"]["layers"] = [
        {"type": "pool", "mode": "lp", "size": [3, 2], "stride": 1},
        {"type": "pool", "mode": "mean", "size": 2},
        {"type": "subsample", "scale": 3, "activation": "tanh"},
        {"type": "flatten"},
        {"type": "dense", "units": 1},
    ]
    cfg = config_from_dict(raw)
    lp, mean, sub, tanh = build_network(cfg).layers[:4]
    assert isinstance(lp, LpPool) and (lp.size, lp.stride, lp.p) == ((3, 2), (1, 1), 2.0)
    assert isinstance(mean, MeanPool) and mean.stride == (2, 2)
    assert isinstance(sub, Subsample) and sub.scale == 3 and tanh.name == "subsample3.tanh"
    assert cfg.model.layers[0].hyper == {"mode": "lp", "size": [3, 2], "stride": 1, "p": 2.0}
    assert "p" not in cfg.model.layers[1].hyper and "p" not in cfg.resolved["model"]["layers"][1]
    assert isinstance(build_loss(cfg), MSE)


# ---- overrides and flags --------------------------------------------------------------------------------


def test_overrides_apply_before_validation_and_appear_in_resolved() -> None:
    cfg = load_config(
        None,
        [
            "train.lr=0.05",
            "train.shuffle=false",
            "model.layers[0].kernel=[3, 2]",
            "model.layers.2.filters=4",
            "model.layers[1].size=3",
            "data.limit=100",
            "train.divergence_factor=4",
            "train.threads=3",
            "loss=mse",
        ],
    )
    assert cfg.train.threads == 3 and cfg.resolved["train"]["threads"] == 3
    assert cfg.train.lr == 0.05 and cfg.resolved["train"]["lr"] == 0.05
    assert cfg.train.shuffle is False and cfg.resolved["train"]["shuffle"] is False
    layers = cfg.resolved["model"]["layers"]
    assert cfg.model.layers[0].hyper["kernel"] == [3, 2] and layers[0]["kernel"] == [3, 2]
    assert cfg.model.layers[2].hyper["filters"] == 4 and layers[2]["filters"] == 4
    assert cfg.model.layers[1].hyper == {"mode": "max", "size": 3, "stride": [3, 3]}
    assert cfg.data.limit == 100 and cfg.resolved["data"]["limit"] == 100
    assert cfg.train.divergence_factor == 4.0 and cfg.loss == "mse"
    assert check_model(cfg)[0].output_shape == (16, 8, 9)  # W: 8 + 2·1 − 2 + 1


def test_flags_override_name_epochs_and_seed_after_set() -> None:
    cfg = load_config(None, ["train.epochs=3", "name=from-set"], name="flag", epochs=2, seed=7)
    assert (cfg.name, cfg.train.epochs, cfg.seed) == ("flag", 2, 7)
    assert (cfg.resolved["name"], cfg.resolved["train"]["epochs"], cfg.resolved["seed"]) == ("flag", 2, 7)
    assert error(load_config, None, epochs=0) == "train.epochs: expected an integer ≥ 1, got 0"
    assert error(load_config, None, name="a/b").startswith("name: 'a/b' may only use letters")


def test_override_creates_missing_sections_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump(small()), encoding="utf-8")
    cfg = load_config(path, ["train.batch_size=4", "record.every=2"])
    assert cfg.train.batch_size == 4 and cfg.record.every == 2 and cfg.name == "bare"


def test_override_of_one_yaml_alias_does_not_change_the_other(tmp_path: Path) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text(
        "data: {source: inline, x: [[1, 2]], y: [0]}\n"
        "model:\n  input_shape: [2]\n  layers:\n"
        "    - &blk {type: dense, units: 4, activation: tanh}\n    - *blk\n    - {type: dense, units: 2}\n",
        encoding="utf-8",
    )
    cfg = load_config(path, ["model.layers[0].units=8"])
    assert [s.hyper.get("units") for s in cfg.model.layers] == [8, 4, 2]
    assert [s.name for s in cfg.model.layers] == ["dense1", "dense2", "dense3"]


def test_relative_paths_resolve_against_the_file_and_override_paths_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cfgs"
    folder.mkdir()
    raw = small()
    raw["data"] = {"source": "npz", "path": "../data/x.npz"}
    raw["model"]["init_from"] = "w.npz"
    (folder / "c.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_config(folder / "c.yaml")
    assert cfg.data.path == str(tmp_path / "data" / "x.npz") == cfg.resolved["data"]["path"]
    assert cfg.model.init_from == str(folder / "w.npz") == cfg.resolved["model"]["init_from"]
    assert cfg.base_dir == folder

    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "c.yaml", ["data.path=mnist.npz", "model.init_from=/abs/w.json"])
    assert cfg.data.path == str(tmp_path / "mnist.npz")
    assert cfg.model.init_from == "/abs/w.json"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("foo", "--set foo: expected KEY=VALUE, e.g. train.lr=0.05"),
        ("=3", "--set =3: missing the KEY before '='"),
        ("seed.x=1", "--set seed.x=1: seed is 0, not a mapping or a list"),
        ("train.lr.x=1", "--set train.lr.x=1: train.lr is 0.05, not a mapping or a list"),
        ("model.layers[9].size=3",
         "--set model.layers[9].size=3: model.layers has 6 entries, so there is no index 9"),
        ("model.layers.x=3", "--set model.layers.x=3: model.layers is a list; index it with [i] or .i"),
        ("train[0]=3", "--set train[0]=3: train is a mapping, not a list; use .KEY instead of [0]"),
        ("a..b=1",
         "--set a..b=1: bad key 'a..b': use dotted names with optional [index], e.g. model.layers[1].size"),
    ],
)  # fmt: skip
def test_malformed_override_names_the_override(override: str, message: str) -> None:
    assert error(load_config, None, [override]) == message


def test_override_value_that_is_not_yaml() -> None:
    message = error(load_config, None, ["train.lr=[1,"])
    assert message.startswith("--set train.lr=[1,: VALUE is not valid YAML (")


def test_overridden_value_is_validated_at_its_key_path() -> None:
    assert error(load_config, None, ["train.lr=fast"]) == "train.lr: expected a number > 0, got 'fast'"
    assert error(load_config, None, ["model.layers.0.filtres=3"]) == (
        "model.layers[0].filtres: unknown key (did you mean 'filters'?)"
    )


# ---- names ----------------------------------------------------------------------------------------------


def test_default_name_is_the_file_stem_made_safe(tmp_path: Path) -> None:
    raw = small()
    for stem, expected in [("my run", "my-run"), ("exp.1", "exp.1"), ("###", "run")]:
        path = tmp_path / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        assert load_config(path).name == expected
    assert config_from_dict(raw).name == "run"


def test_layer_names_default_to_type_and_position_and_activations_take_the_parent_name() -> None:
    raw = small()
    raw["model"]["layers"][0]["name"] = "first"
    raw["model"]["layers"].insert(1, {"type": "tanh"})
    cfg = config_from_dict(raw)
    assert [s.name for s in cfg.model.layers] == ["first", "tanh2", "pool3", "flatten4", "dense5"]
    assert [l.name for l in build_network(cfg).layers] == [
        "first", "first.relu", "tanh2", "pool3", "flatten4", "dense5"
    ]
    assert [s.path for s in cfg.model.layers] == [f"model.layers[{i}]" for i in range(5)]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must not be empty"),
        ("..", "'..' may not be '.' or contain '..'"),
        (".", "'.' may not be '.' or contain '..'"),
        ("../up", "'../up' may only use letters, digits, '.', '_' and '-'"),
        ("/abs", "'/abs' may only use letters, digits, '.', '_' and '-'"),
        ("a\\b", "'a\\\\b' may only use letters, digits, '.', '_' and '-'"),
        ("a b", "'a b' may only use letters, digits, '.', '_' and '-'"),
        (12, "expected a name (a string; quote numbers), got 12"),
    ],
)
def test_unsafe_names_are_rejected(value, problem: str) -> None:
    assert error(config_from_dict, with_(small(), "name", value)) == f"name: {problem}"
    layer_raw = with_(small(), "model.layers.2.name", value)
    assert error(config_from_dict, layer_raw) == f"model.layers[2].name: {problem}"


def test_duplicate_layer_names() -> None:
    raw = with_(small(), "model.layers.1.name", "conv1")
    assert error(config_from_dict, raw) == (
        "model.layers[1].name: name 'conv1' is already used by model.layers[0]"
    )
    raw = with_(small(), "model.layers.0.name", "pool2")
    assert error(config_from_dict, raw) == (
        "model.layers[1]: default name 'pool2' is already used by model.layers[0]; give this layer a name"
    )
    raw = with_(small(), "model.layers.1.name", "conv1.relu")
    assert error(config_from_dict, raw) == (
        "model.layers[1].name: name 'conv1.relu' is already used by model.layers[0] (its activation)"
    )


# ---- initialisers ---------------------------------------------------------------------------------------


def test_init_defaults_he_normal_before_relu_glorot_otherwise_zero_biases() -> None:
    raw = small()
    raw["model"]["layers"][0].pop("activation")  # conv1 … followed by a relu entry instead
    raw["model"]["layers"].insert(1, {"type": "relu"})
    raw["model"]["layers"].append({"type": "sigmoid"})
    specs = config_from_dict(raw).model.layers
    assert specs[0].init == {"W": "he_normal", "b": "zeros"}  # a relu entry follows
    assert specs[4].init == {"W": "glorot_uniform", "b": "zeros"}  # a sigmoid follows
    specs = config_from_dict(small()).model.layers
    assert specs[0].init == {"W": "he_normal", "b": "zeros"}  # its own activation is relu
    net = build_network(config_from_dict(small()))
    assert isinstance(net.layers[0].init["W"], HeNormal) and isinstance(net.layers[0].init["b"], Zeros)
    assert isinstance(net.layers[-1].init["W"], GlorotUniform)


def test_init_scheme_string_number_and_explicit_values() -> None:
    raw = small()
    raw["model"]["layers"][0]["init"] = "glorot_uniform"
    raw["model"]["layers"][3]["init"] = {"W": [[1, 2], [3, 4]], "b": 0.5}
    cfg = config_from_dict(raw)
    assert cfg.model.layers[0].init == {"W": "glorot_uniform", "b": "zeros"}
    assert cfg.model.layers[3].init == {"W": [[1.0, 2.0], [3.0, 4.0]], "b": 0.5}
    assert cfg.resolved["model"]["layers"][3]["init"] == {"W": [[1.0, 2.0], [3.0, 4.0]], "b": 0.5}
    net = build_network(cfg)
    assert isinstance(net.layers[-1].init["W"], Explicit) and isinstance(net.layers[-1].init["b"], Constant)
    net.build(np.random.default_rng(0), np.float64)
    np.testing.assert_array_equal(net.layers[-1].params["W"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(net.layers[-1].params["b"], [0.5, 0.5])


def test_subsample_beta_defaults_to_core_mean_pool_value() -> None:
    raw = with_(small(), "model.layers.1", {"type": "subsample", "scale": 2})
    cfg = config_from_dict(raw)
    assert cfg.model.layers[1].init == {"beta": 0.25, "b": "zeros"}
    net = build_network(cfg).build(np.random.default_rng(0), np.float64)
    np.testing.assert_array_equal(net.layers[2].params["beta"], [0.25, 0.25])
    raw["model"]["layers"][1]["init"] = "zeros"
    assert config_from_dict(raw).model.layers[1].init == {"beta": "zeros", "b": "zeros"}


def test_explicit_init_shape_mismatch_names_the_parameter() -> None:
    dlt = ROOT / "configs" / "dlt_mnist.yaml"
    assert error(load_config, dlt, ["model.layers[5].init={W: [[1, 2], [3, 4], [5, 6]]}"]) == (
        "model.layers[5].init.W: shape 3×2, expected 10×192"
    )
    assert error(load_config, dlt, ["model.layers[5].init={b: [1, 2]}"]) == (
        "model.layers[5].init.b: shape 2, expected 10"
    )


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ("he_norm", "model.layers[3].init: unknown scheme 'he_norm' (did you mean 'he_normal'?); "
                    "use glorot_uniform, he_normal, zeros, a number or nested lists"),
        ({"w": "zeros"}, "model.layers[3].init.w: unknown key (did you mean 'W'?)"),
        ({"beta": 1}, "model.layers[3].init.beta: unknown key for a dense layer's init (allowed: W, b)"),
        ({"W": [[1, 2], [3]]},
         "model.layers[3].init.W: ragged nested lists: every row must have the same length"),
        ({"W": [[1, True]]}, "model.layers[3].init.W: explicit values must be finite numbers, found true"),
        ({"b": float("nan")}, "model.layers[3].init.b: expected a finite constant, got nan"),
        ({"b": True}, "model.layers[3].init.b: expected a scheme (glorot_uniform, he_normal, zeros), "
                      "a number or nested lists, got true"),
        (5, "model.layers[3].init: expected a scheme (glorot_uniform, he_normal, zeros) or a mapping of W, b "
            "to a scheme, a number or nested lists, got 5"),
    ],
)  # fmt: skip
def test_bad_init_values(init, message: str) -> None:
    assert error(config_from_dict, with_(small(), "model.layers.3.init", init)) == message


# ---- validation errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        # unknown keys at every level
        ("epochs", 3, "epochs: unknown key (did you mean 'train.epochs'?)"),
        ("modle", {}, "modle: unknown key (did you mean 'model'?)"),
        ("data.sorce", "digits", "data.sorce: unknown key (did you mean 'source'?)"),
        ("model.layer", [], "model.layer: unknown key (did you mean 'layers'?)"),
        ("model.layers.0.filtres", 2, "model.layers[0].filtres: unknown key (did you mean 'filters'?)"),
        ("model.layers.1.activation", "relu",
         "model.layers[1].activation: unknown key for a pool layer "
         "(allowed: type, name, size, stride, mode, p)"),
        ("model.layers.2.units", 3,
         "model.layers[2].units: unknown key for a flatten layer (allowed: type, name)"),
        ("train", {"learning_rate": 0.1},
         "train.learning_rate: unknown key "
         "(allowed: epochs, batch_size, threads, optimizer, lr, momentum, weight_decay, shuffle, "
         "divergence_factor, schedule, early_stopping)"),
        ("record", {"probes": 3}, "record.probes: unknown key (did you mean 'probe'?)"),
        # wrong types, out of range
        ("seed", -1, "seed: expected an integer ≥ 0, got -1"),
        ("seed", True, "seed: expected an integer ≥ 0, got true"),
        ("dtype", "float16",
         "dtype: must be one of float32, float64, got 'float16' (did you mean 'float64'?)"),
        ("loss", "mae", "loss: must be one of mse, softmax_cross_entropy, got 'mae' (did you mean 'mse'?)"),
        ("train", {"lr": "fast"}, "train.lr: expected a number > 0, got 'fast'"),
        ("train", {"lr": 0}, "train.lr: expected a number > 0, got 0"),
        ("train", {"lr": float("inf")}, "train.lr: expected a number > 0, got inf"),
        ("train", {"epochs": True}, "train.epochs: expected an integer ≥ 1, got true"),
        ("train", {"batch_size": 32.0}, "train.batch_size: expected an integer ≥ 1, got 32.0"),
        ("train", {"momentum": 1}, "train.momentum: expected a number in [0, 1), got 1"),
        ("train", {"momentum": "0.9"}, "train.momentum: expected a number in [0, 1), got '0.9'"),
        ("train", {"weight_decay": -0.1}, "train.weight_decay: expected a number ≥ 0, got -0.1"),
        ("train", {"shuffle": "yes"}, "train.shuffle: expected true or false, got 'yes'"),
        ("train", {"divergence_factor": 0},
         "train.divergence_factor: expected a number > 0 (or null), got 0"),
        ("train", {"threads": 0}, "train.threads: expected an integer ≥ 1 or auto, got 0"),
        ("train", {"threads": True}, "train.threads: expected an integer ≥ 1 or auto, got true"),
        ("train", {"threads": 2.0}, "train.threads: expected an integer ≥ 1 or auto, got 2.0"),
        ("train", {"threads": "many"}, "train.threads: expected an integer ≥ 1 or auto, got 'many'"),
        ("train", {"threads": None}, "train.threads: expected an integer ≥ 1 or auto, got null"),
        ("train", [1], "train: expected a mapping of keys, got [1]"),
        ("record", {"probe": -1}, "record.probe: expected an integer ≥ 0, got -1"),
        ("record", {"every": 0}, "record.every: expected an integer ≥ 1, got 0"),
        # model
        ("model.input_shape", [8, 8],
         "model.input_shape: expected [C, H, W] or [features] of positive integers, got [8, 8]"),
        ("model.input_shape", [1, 0, 4],
         "model.input_shape: expected [C, H, W] or [features] of positive integers, got [1, 0, 4]"),
        ("model.input_shape", ...,
         "model.input_shape: required: [C, H, W] for images or [features] for vectors"),
        ("model.layers", [], "model.layers: expected a non-empty list of layers, got []"),
        ("model.layers.1", "pool", "model.layers[1]: expected a mapping such as {type: conv, filters: 6, "
                                   "kernel: 5}, got 'pool'"),
        ("model.layers.1.type", ..., f"model.layers[1].type: required: one of {', '.join(LAYERS)}"),
        ("model.layers.1.type", "maxpool",
         f"model.layers[1].type: must be one of {', '.join(LAYERS)}, got 'maxpool' (did you mean 'pool'?)"),
        ("model.layers.0.filters", ...,
         "model.layers[0].filters: required for a conv layer (an integer ≥ 1)"),
        ("model.layers.0.filters", 0, "model.layers[0].filters: expected an integer ≥ 1, got 0"),
        ("model.layers.0.kernel", [3],
         "model.layers[0].kernel: expected an integer ≥ 1 or a pair [h, w] of them, got [3]"),
        ("model.layers.0.padding", -1,
         "model.layers[0].padding: expected an integer ≥ 0 or a pair [h, w] of them, got -1"),
        ("model.layers.0.stride", [1, 0],
         "model.layers[0].stride: expected an integer ≥ 1 or a pair [h, w] of them, got [1, 0]"),
        ("model.layers.0.bias", "shared", "model.layers[0].bias: must be one of tied, untied, got 'shared'"),
        ("model.layers.0.activation", "softmax",
         f"model.layers[0].activation: must be one of {', '.join(activation_kinds())}, got 'softmax'"),
        ("model.layers.1.mode", "avg", "model.layers[1].mode: must be one of max, mean, lp, got 'avg'"),
        ("model.layers.1.p", 3, "model.layers[1].p: only used with mode 'lp', not 'max'; remove it"),
        ("model.layers.3.units", 2.5, "model.layers[3].units: expected an integer ≥ 1, got 2.5"),
        ("model.init_from", "", "model.init_from: expected a path (a non-empty string), got ''"),
        # data
        ("data", ..., "data: required (a mapping with at least 'source')"),
        ("data.source", "csv", "data.source: must be one of digits, npz, idx, hdf5, inline, got 'csv'"),
        ("data.val_fraction", 1, "data.val_fraction: expected a number in [0, 1), got 1"),
        ("data.limit", 0, "data.limit: expected an integer ≥ 1 (or null), got 0"),
        ("data.scale", "1/255", "data.scale: expected a number > 0 (or null), got '1/255'"),
        ("data.x", ..., "data.x: required for source 'inline'"),
        ("data.y", 3, "data.y: expected a non-empty list with one entry per sample, got 3"),
        ("data.path", "x.npz", "data.path: not used by source 'inline'; remove it"),
        ("data.keys", {"x_train": "a"}, "data.keys: only used by source 'hdf5', not 'inline'; remove it"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_key_path(path: str, value, message: str) -> None:
    assert error(config_from_dict, with_(small(), path, value)) == message


def test_data_source_specific_errors() -> None:
    idx = with_(small(), "data", {"source": "idx"})
    assert error(config_from_dict, idx) == "data.path: required for source 'idx'"
    digits_x = {"source": "digits", "x": [[1]]}
    assert error(config_from_dict, with_(small(), "data", digits_x)) == (
        "data.x: only used by source 'inline', not 'digits'; remove it"
    )
    keys = {"source": "hdf5", "path": "a.h5", "keys": {"x_trian": "images"}}
    assert error(config_from_dict, with_(small(), "data", keys)) == (
        "data.keys.x_trian: unknown key (did you mean 'x_train'?)"
    )
    keys["keys"] = {"x_train": ""}
    assert error(config_from_dict, with_(small(), "data", keys)) == (
        "data.keys.x_train: expected a path (a non-empty string), got ''"
    )
    keys["keys"] = {"x_train": "images", "y_train": "labels"}
    cfg = config_from_dict(with_(small(), "data", keys))
    assert cfg.data.keys == {"x_train": "images", "y_train": "labels"} == cfg.resolved["data"]["keys"]


def test_top_level_must_be_a_mapping() -> None:
    assert error(config_from_dict, [1, 2], source="a.yaml") == (
        "a.yaml: the top level must be a mapping (name, data, model, ...), got [1, 2]"
    )


# ---- shape errors found by core -------------------------------------------------------------------------


def test_kernel_larger_than_input_points_at_the_layer() -> None:
    raw = with_(small(), "model.layers.0.kernel", 5)
    assert error(config_from_dict, raw) == "model.layers[0]: kernel 5×5 is larger than the 4×4 input"


def test_shape_errors_deeper_in_the_network() -> None:
    raw = with_(small(), "model.layers.1.size", 3)  # the pool gets the conv's 2×2 output
    assert error(config_from_dict, raw) == "model.layers[1]: window 3×3 is larger than the 2×2 input"
    raw = with_(small(), "model.layers.2", {"type": "relu"})  # no flatten before dense
    assert error(config_from_dict, raw) == (
        "model.layers[3]: expects a feature vector per sample, got shape (2, 1, 1) (add a flatten layer)"
    )
    raw = with_(small(), "model.input_shape", [16])
    assert error(config_from_dict, raw) == (
        "model.layers[0]: expects a C×H×W image per sample, got shape (16,)"
    )


def test_activation_layers_map_to_their_parent_entry() -> None:
    cfg = config_from_dict(small())
    assert config_mod._place_of(cfg, "conv1.relu") == "model.layers[0]"
    assert config_mod._place_of(cfg, "dense4") == "model.layers[3]"
    assert config_mod._place_of(cfg, "input") == "model.input_shape"


def test_network_must_end_in_a_vector() -> None:
    raw = small()
    del raw["model"]["layers"][2:]
    assert error(config_from_dict, raw) == (
        "model.layers: the network ends in a 2×1×1 map, but the loss needs a vector per sample; "
        "end it with a flatten and a dense layer"
    )
    raw = with_(small(), "model.layers.3.units", 1)
    assert error(config_from_dict, raw) == (
        "model.layers: the network has 1 output but softmax_cross_entropy needs at least 2 (one per class)"
    )
    assert config_from_dict(with_(raw, "loss", "mse")).model.layers[3].hyper["units"] == 1


def test_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = small()
    raw["model"]["input_shape"] = [3, 512, 512]
    raw["model"]["layers"][0].update(filters=256, padding=1)
    raw["model"]["layers"][1]["size"] = 512
    monkeypatch.setattr(config_mod, "_memory_budget", lambda: 12_000_000_000)
    cfg = config_from_dict(raw)  # loading does not depend on the machine
    message = error(check_model, cfg)
    # evaluation runs batches of 256 (one per thread at once), more than the training batch of 32
    found = re.fullmatch(
        r"model: evaluation \((\d+) samples at once\) needs about (\d+\.\d) GB, more than the 12\.0 GB of "
        r"memory available; use a smaller model \(evaluation runs batches of at least 256\)",
        message,
    )
    assert found, message
    n, need = int(found.group(1)), float(found.group(2))
    assert n in (256, 512)
    conv = 2 * 256 * 512 * 512 * n * 3 * 4 / 1e9  # conv1 and conv1.relu: 3 float32 per value per sample
    assert conv < need < 1.1 * conv
    bigger = config_from_dict({**raw, "train": {"batch_size": 512}})  # then batch_size is what to change
    assert error(check_model, bigger).endswith("; use a smaller model or train.batch_size")
    monkeypatch.setattr(config_mod, "_memory_budget", lambda: None)  # unknown memory: no check
    assert check_model(cfg)[-1].output_shape == (2,)


def test_real_memory_budget_is_positive() -> None:
    budget = config_mod._memory_budget()
    assert budget is None or budget > 0


# ---- files ----------------------------------------------------------------------------------------------


def test_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error(load_config, missing) == f"{missing}: file not found"
    assert error(load_config, tmp_path) == f"{tmp_path}: is a directory, expected a YAML config file"
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    assert error(load_config, latin) == f"{latin}: not UTF-8 text (byte 0xe9 at offset 9)"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert error(load_config, empty) == (
        f"{empty}: the file is empty; expected a mapping with at least 'data' and 'model'"
    )
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n", encoding="utf-8")
    assert error(load_config, top) == (
        f"{top}: the top level must be a mapping (name, data, model, ...), got [1, 2]"
    )


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ntrain:\n  lr: [0.1\n  epochs: 3\n", encoding="utf-8")
    message = error(load_config, bad)
    assert message.startswith(f"{bad}: YAML syntax error at line 4, column 9: "), message
    tab = tmp_path / "tab.yaml"
    tab.write_text("train:\n\tlr: 1\n", encoding="utf-8")
    assert error(load_config, tab).startswith(f"{tab}: YAML syntax error at line 2, column 1: ")


def test_yaml_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(small()).encode("utf-8"))
    assert load_config(path).name == "bom"


def test_yaml_tags_for_python_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.getcwd []\n", encoding="utf-8")
    assert error(load_config, path) == (
        f"{path}: invalid YAML at line 1, column 7: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.getcwd'"
    )


# ---- numbers as people write them, optimisers, the JSON Schema ----------------------------------------


def test_yaml_1_2_numbers_in_files_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small()) + "train: {lr: 1e-3, weight_decay: 5e-4}\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-3 and cfg.train.hyper["weight_decay"] == 5e-4
    assert load_config(path, ["train.lr=2e-2"]).train.lr == 0.02
    assert error(load_config, path, ["name=1e3"]) == (
        "name: expected a name (a string; quote numbers), got 1000.0"
    )
    assert error(load_config, path, ["train.epochs=1e3"]) == (
        "train.epochs: expected an integer ≥ 1, got 1000.0"
    )


def test_adam_takes_its_own_keys_and_refuses_sgds() -> None:
    raw = with_(small(), "train", {"optimizer": "adam", "lr": 1e-3, "betas": [0.8, 0.99], "eps": 1e-7})
    cfg = config_from_dict(raw)
    assert (cfg.train.optimizer, cfg.train.hyper) == (
        "adam", {"lr": 1e-3, "betas": [0.8, 0.99], "eps": 1e-7, "weight_decay": 0.0}
    )
    assert list(cfg.resolved["train"]) == ["epochs", "batch_size", "threads", "optimizer", "lr", "betas",
                                            "eps", "weight_decay", "shuffle", "divergence_factor", "schedule",
                                            "early_stopping"]  # fmt: skip
    assert config_mod.build_optimizer(cfg).betas == (0.8, 0.99)
    assert error(config_from_dict, with_(raw, "train.momentum", 0.9)) == (
        "train.momentum: only used with optimizer sgd, not adam; remove it"
    )
    assert error(config_from_dict, with_(small(), "train", {"betas": [0.9, 0.99]})) == (
        "train.betas: only used with optimizer adam, not sgd; remove it"
    )
    assert error(config_from_dict, with_(raw, "train.betas", [0.9, 1.0])) == (
        "train.betas: expected a pair of numbers in [0, 1), got [0.9, 1.0]"
    )
    assert error(config_from_dict, with_(small(), "train", {"optimizer": "adamw"})) == (
        "train.optimizer: must be one of sgd, adam, got 'adamw' (did you mean 'adam'?)"
    )
    # the default stays sgd, at its own default lr
    assert config_from_dict(with_(small(), "train", {"optimizer": "sgd"})).train.hyper["lr"] == 0.1


def test_a_seed_a_checkpoint_cannot_store_is_refused() -> None:
    assert error(config_from_dict, with_(small(), "seed", 2**64)) == (
        f"seed: at most 2^63 − 1 (checkpoints store it as a 64-bit integer), got {2**64}"
    )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_validate_against_the_json_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    from cnnbp.config_schema import json_schema_document
    from cnnbp.yamlio import read_yaml

    doc = json_schema_document()
    jsonschema.Draft202012Validator.check_schema(doc)
    assert list(jsonschema.Draft202012Validator(doc).iter_errors(read_yaml(path))) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [("model.layers.0.filtres", 3), ("train.epoch", 3), ("data.sorce", "digits"), ("record.probes", 1),
     ("model.layers.1.mode", "avg"), ("train.lr", -1), ("seed", "x")],
)  # fmt: skip
def test_the_json_schema_refuses_what_the_cli_refuses(path: str, value: object) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    from cnnbp.config_schema import json_schema_document

    section, _, key = path.partition(".")
    in_section = section in ("train", "record")
    raw = with_(small(), section, {key: value}) if in_section else with_(small(), path, value)
    error(config_from_dict, raw)
    assert list(jsonschema.Draft202012Validator(json_schema_document()).iter_errors(raw)), path


# ---- schedules, early stopping, the best epoch and the checkpoints kept; merged overrides ----------------


def test_schedule_early_stopping_and_record_keys_resolve_with_their_defaults() -> None:
    raw = with_(small(), "train", {"schedule": {"type": "cosine", "t_max": 5}, "early_stopping": {}})
    raw["record"] = {"monitor": "val_acc", "keep": "last-3"}
    cfg = config_from_dict(raw)
    assert cfg.resolved["train"]["schedule"] == {"type": "cosine", "t_max": 5, "eta_min": 0.0, "warmup": 0}
    assert cfg.resolved["train"]["early_stopping"] == {"monitor": "val_loss", "patience": 5, "min_delta": 0.0}
    assert cfg.resolved["record"] == {
        "probe": 8, "every": 1, "monitor": "val_acc", "keep": "last-3", "tensorboard": False
    }  # fmt: skip
    schedule = config_mod.build_schedule(cfg)
    assert (schedule.kind, schedule.t_max, schedule.eta_min) == ("cosine", 5, 0.0)
    assert config_mod.build_schedule(config_from_dict(small())) is None
    assert config_from_dict(small()).train.divergence_factor == 100.0  # on by default (README: Divergence)
    assert config_from_dict(dump_yaml_dict(cfg)).resolved == cfg.resolved  # the resolved config loads back


def dump_yaml_dict(cfg) -> dict:
    return yaml.safe_load(dump_config(cfg))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "stp"},
         "train.schedule.type: must be one of step, cosine, exponential, constant, got 'stp' (did you mean "
         "'step'?)"),
        ({"step_size": 2}, "train.schedule.type: required: one of step, cosine, exponential, constant"),
        ({"type": "cosine"}, "train.schedule.t_max: required for a cosine schedule (an integer ≥ 1)"),
        ({"type": "step", "step_size": 2, "gama": 0.5},
         "train.schedule.gama: unknown key (did you mean 'gamma'?)"),
        ({"type": "exponential", "gamma": 0}, "train.schedule.gamma: expected a number > 0, got 0"),
        ({"type": "constant", "warmup": -1}, "train.schedule.warmup: expected an integer ≥ 0, got -1"),
        (3, "train.schedule: expected a mapping such as {type: step, step_size: 5, gamma: 0.5}, got 3"),
    ],
)
def test_schedule_errors_name_the_key(value: object, message: str) -> None:
    assert error(config_from_dict, with_(small(), "train", {"schedule": value})) == message


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("train", {"early_stopping": {"monitor": "val"}},
         "train.early_stopping.monitor: must be one of val_loss, val_acc, got 'val' (did you mean "
         "'val_acc'?)"),
        ("train", {"early_stopping": {"patience": 0}},
         "train.early_stopping.patience: expected an integer ≥ 1, got 0"),
        ("record", {"keep": "last-0"},
         "record.keep: must be all, best or last-K with K ≥ 1 (e.g. last-3), got 'last-0' (did you mean "
         "'last-3'?)"),
        ("record", {"monitor": "acc"},
         "record.monitor: must be one of val_loss, val_acc, got 'acc' (did you mean 'val_acc'?)"),
    ],
)  # fmt: skip
def test_early_stopping_and_record_errors(path: str, value: dict, message: str) -> None:
    assert error(config_from_dict, with_(small(), path, value)) == message


def test_a_mapping_override_merges_into_the_mapping_at_its_key() -> None:
    cfg = load_config(None, ["train={epochs: 1}"])
    default = load_config(None)
    assert cfg.resolved["train"] == {**default.resolved["train"], "epochs": 1}  # nothing else reset
    cfg = load_config(None, ["train={schedule: {type: step, step_size: 2}}", "train.schedule={gamma: 0.5}"])
    assert cfg.resolved["train"]["schedule"] == {"type": "step", "step_size": 2, "gamma": 0.5, "warmup": 0}
    # a layer (or schedule) of another type replaces the old one whole: its keys were the old kind's
    pool, relu = "model.layers[1]={type: pool, mode: lp, size: 2, p: 2.5}", "model.layers[3]={type: relu}"
    cfg = load_config(None, [pool, relu])
    assert cfg.resolved["model"]["layers"][1]["mode"] == "lp"
    assert cfg.resolved["model"]["layers"][3] == {"type": "relu", "name": "relu4"}
    step, exp = "train.schedule={type: step, step_size: 2}", "train.schedule={type: exponential, gamma: 0.9}"
    cfg = load_config(None, [step, exp])
    assert cfg.resolved["train"]["schedule"] == {"type": "exponential", "gamma": 0.9, "warmup": 0}
    # lists are values, not mappings: they are replaced
    assert load_config(None, ["model.input_shape=[1, 8, 8]"]).model.input_shape == (1, 8, 8)
