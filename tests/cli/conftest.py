"""Helpers shared by the library and command-line tests: signals at an exact optimiser step, checkpoints
edited in place."""

from __future__ import annotations

import hashlib
import io
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from cnnbp.runner import Callback

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}
#: what a finished run folder holds (tests of commands that must not write into it)
RUN_FILES = ["checkpoints", "config.yaml", "metrics.csv", "status.json", "steps.csv", "train.log"]


class SignalAfter(Callback):
    """Sends this process ``signals`` right after optimiser step ``step`` (the handler runs before
    ``raise_signal`` returns), so an interrupt at an exact point is reproducible."""

    def __init__(self, step: int, signals: Sequence[int] = (signal.SIGINT,)) -> None:
        self.step, self.signals = step, list(signals)

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        if step == self.step:
            for s in self.signals:
                signal.raise_signal(s)


def parse_spec(spec: str) -> SignalAfter:
    """``K[:INT|TERM...]`` → a :class:`SignalAfter` (default one SIGINT)."""
    step, *names = spec.split(":")
    return SignalAfter(int(step), [SIGNALS[n.upper()] for n in names] or [signal.SIGINT])


def with_signals(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    """Make ``cnnbp train`` (in this process) add a :class:`SignalAfter` to its callbacks."""
    from cnnbp.commands import train as train_command

    original = train_command._callbacks

    def callbacks(*args: object, **kwargs: object) -> list[Callback]:
        train_command._callbacks = original  # one run only, as an environment variable of one command
        return [*original(*args, **kwargs), parse_spec(spec)]

    monkeypatch.setattr(train_command, "_callbacks", callbacks)


@pytest.fixture
def signal_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``signal_at("K[:INT|TERM...]")``: the next in-process ``cnnbp train`` signals itself after step K."""
    return lambda spec: with_signals(monkeypatch, spec)


def signal_cli(spec: str) -> list[str]:
    """The command line of a ``cnnbp`` process signalling itself after step K (tests/cli/signal_cli.py)."""
    return [sys.executable, "-m", "tests.cli.signal_cli", spec]


def rewrite_checkpoint(path: Path, edit: Callable[[h5py.File], None]) -> None:
    """Apply ``edit`` to a checkpoint file's HDF5 content and seal it again with a valid checksum, as if
    cnnbp had written it that way (for tests of files that are intact but say something unexpected)."""
    buf = io.BytesIO(Path(path).read_bytes())
    with h5py.File(buf, "r+") as f:
        edit(f)
    data = bytearray(buf.getvalue())
    digest = hashlib.sha256(memoryview(data)[512:]).hexdigest().encode("ascii")
    data[:512] = (b"cnnbp-checkpoint sha256 " + digest + b"\n").ljust(512, b"\0")
    Path(path).write_bytes(bytes(data))


# ---- a tiny config with explicit weights --------------------------------------------------------------

# explicit initial values of the tiny config below (conv 1×1×2×2 + bias, dense 2×4 + bias)
CONV_W = [[[[0.5, -0.25], [0.125, 0.75]]]]
CONV_B = [0.01]
DENSE_W = [[0.1, -0.2, 0.3, -0.4], [-0.5, 0.6, -0.7, 0.8]]
DENSE_B = [0.05, -0.05]


def tiny_config(name: str = "tiny", epochs: int = 3, every: int = 2) -> dict:
    """Eight 1×3×3 images (bright top row → class 1) and a conv + dense model with explicit init."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(8):
        img = rng.uniform(0, 0.2, size=(1, 3, 3))
        if i % 2:
            img[0, 0, :] += 1.0
        xs.append(np.round(img, 3).tolist())
        ys.append(i % 2)
    return {
        "name": name,
        "seed": 1,
        "dtype": "float64",
        "data": {"source": "inline", "val_fraction": 0.25, "x": xs, "y": ys},
        "model": {
            "input_shape": [1, 3, 3],
            "layers": [
                {
                    "type": "conv",
                    "name": "conv",
                    "filters": 1,
                    "kernel": 2,
                    "activation": "tanh",
                    "init": {"W": CONV_W, "b": CONV_B},
                },
                {"type": "flatten", "name": "flat"},
                {"type": "dense", "name": "out", "units": 2, "init": {"W": DENSE_W, "b": DENSE_B}},
            ],
        },  # fmt: skip
        "loss": "softmax_cross_entropy",
        "train": {"epochs": epochs, "batch_size": 4, "lr": 0.1},
        "record": {"probe": 3, "every": every},
    }


def write_config(folder: Path, cfg: dict, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# ---- runs to inspect (tests/cli/test_inspection.py, tests/cli/commands/test_inspect.py) ---------------

# the seeds' worked example (seed 000 §3.1.1, seed 004): X is 3×3, the filter F is 2×2, O = F ⋆ X + b
SEED_X = [[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 1.0, 1.0]]
SEED_F = [[0.5, -0.25], [0.125, 0.75]]
SEED_B = [[0.1, -0.1], [0.2, 0.0]]  # untied: one bias per output position (seed 004 §1)
SEED_Y = [1.0, 0.0, 0.0, 1.0]  # MSE targets for O11, O12, O21, O22 (flatten is row-major)
SEED_LR = 0.1


def train_run(folder: Path, cfg: dict | None, *args: object) -> Path:
    """``cnnbp train`` (through the Typer app, quiet) of a config dict, or of the built-in digits config
    when ``cfg`` is None, into ``folder/runs``; returns the run folder."""
    from typer.testing import CliRunner

    from cnnbp.app import app

    source = [] if cfg is None else [str(write_config(folder, cfg, f"{cfg['name']}.yaml"))]
    argv = ["train", *source, "--out", str(folder / "runs"), "--quiet", *map(str, args)]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "80", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return folder / "runs" / ("digits" if cfg is None else cfg["name"])


def ck_path(run: Path, epoch: int) -> Path:
    """``<run>/checkpoints/NNNN.h5``, spelled out (not asked of cnnbp)."""
    return run / "checkpoints" / f"{epoch:04d}.h5"


def read_h5(path: Path, name: str) -> np.ndarray:
    """One dataset of an HDF5 file, read with h5py (the checksum block is no concern of HDF5's)."""
    with h5py.File(path, "r") as f:
        return f[name][()]


def seed_forward(F: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    """O_ij written out term by term as in seed 000 §3.1.1 (indices from 1 in the comments)."""
    O = np.empty((2, 2))
    O[0, 0] = F[0, 0] * X[0, 0] + F[0, 1] * X[0, 1] + F[1, 0] * X[1, 0] + F[1, 1] * X[1, 1] + b[0, 0]  # O11
    O[0, 1] = F[0, 0] * X[0, 1] + F[0, 1] * X[0, 2] + F[1, 0] * X[1, 1] + F[1, 1] * X[1, 2] + b[0, 1]  # O12
    O[1, 0] = F[0, 0] * X[1, 0] + F[0, 1] * X[1, 1] + F[1, 0] * X[2, 0] + F[1, 1] * X[2, 1] + b[1, 0]  # O21
    O[1, 1] = F[0, 0] * X[1, 1] + F[0, 1] * X[1, 2] + F[1, 0] * X[2, 1] + F[1, 1] * X[2, 2] + b[1, 1]  # O22
    return O


def seed_filter_grad(d: np.ndarray, X: np.ndarray) -> np.ndarray:
    """∂E/∂F_ij = Σ ∂E/∂O_kl · X_(k+i−1)(l+j−1), each of the four sums written out as in the seed."""
    g = np.empty((2, 2))
    g[0, 0] = d[0, 0] * X[0, 0] + d[0, 1] * X[0, 1] + d[1, 0] * X[1, 0] + d[1, 1] * X[1, 1]  # ∂E/∂F11
    g[0, 1] = d[0, 0] * X[0, 1] + d[0, 1] * X[0, 2] + d[1, 0] * X[1, 1] + d[1, 1] * X[1, 2]  # ∂E/∂F12
    g[1, 0] = d[0, 0] * X[1, 0] + d[0, 1] * X[1, 1] + d[1, 0] * X[2, 0] + d[1, 1] * X[2, 1]  # ∂E/∂F21
    g[1, 1] = d[0, 0] * X[1, 1] + d[0, 1] * X[1, 2] + d[1, 0] * X[2, 1] + d[1, 1] * X[2, 2]  # ∂E/∂F22
    return g


def seed_expected() -> dict[int, dict[str, np.ndarray]]:
    """δ, ∂L/∂F, ∂L/∂b, F and b at checkpoint 0 (the explicit init) and 1 (after one step of lr 0.1)."""
    X, Y = np.array(SEED_X), np.array(SEED_Y).reshape(2, 2)
    F, b = np.array(SEED_F), np.array(SEED_B)
    out = {}
    for epoch in (0, 1):
        delta = seed_forward(F, b, X) - Y  # MSE with identity output: δ = a − y
        grad = seed_filter_grad(delta, X)  # m = 1: the batch mean is the sample's own gradient
        out[epoch] = {"delta": delta, "grad_F": grad, "grad_b": delta, "F": F, "b": b}
        F, b = F - SEED_LR * grad, b - SEED_LR * delta
    return out


@pytest.fixture(scope="session")
def seeds_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3×3 sample, one 2×2 filter with explicit W and an untied bias, flatten, MSE; one step."""
    conv = {"type": "conv", "name": "conv1", "filters": 1, "kernel": 2, "bias": "untied",
            "init": {"W": [[SEED_F]], "b": [SEED_B]}}  # fmt: skip
    cfg = {
        "name": "seeds",
        "seed": 0,
        "dtype": "float64",
        "data": {"source": "inline", "val_fraction": 0, "x": [SEED_X], "y": [SEED_Y]},
        "model": {"input_shape": [1, 3, 3], "layers": [conv, {"type": "flatten"}]},
        "loss": "mse",
        "train": {"epochs": 1, "batch_size": 1, "lr": SEED_LR, "momentum": 0.0},
        "record": {"probe": 1, "every": 1},
    }
    return train_run(tmp_path_factory.mktemp("seeds"), cfg)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits config on 200 images for 2 epochs (checkpoints 0, 1, 2; probe of 4)."""
    args = ["--epochs", "2", "--set", "data.limit=200", "--set", "record.probe=4"]
    return train_run(tmp_path_factory.mktemp("digits"), None, *args)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cnnbp train`` with no arguments: the built-in digits config, all 15 epochs (about 3 s).

    In a process of its own, as a user runs it: there ``cnnbp.app`` pins the BLAS threads to one before
    NumPy loads (in this process NumPy came first, and two busy-waiting BLAS threads make the run ten
    times slower on a busy machine)."""
    import os
    import subprocess

    folder = tmp_path_factory.mktemp("default")
    argv = [sys.executable, "-m", "cnnbp", "train", "--out", str(folder / "runs"), "--quiet"]
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder / "runs" / "digits"


@pytest.fixture(scope="session")
def dlt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepLearnToolbox's network (configs/dlt_mnist.yaml) on six random 28×28 images: 24×24 conv1 deltas."""
    from cnnbp.yamlio import read_yaml

    cfg = read_yaml(Path(__file__).resolve().parents[2] / "configs" / "dlt_mnist.yaml")
    x = np.round(np.random.default_rng(5).uniform(0, 1, size=(6, 28, 28)), 3).tolist()
    cfg.update(name="dlt", data={"source": "inline", "val_fraction": 0.34, "x": x, "y": [0, 1, 2, 3, 4, 5]})
    cfg["train"].update(batch_size=2)
    cfg["record"] = {"probe": 2, "every": 1}
    return train_run(tmp_path_factory.mktemp("dlt"), cfg)


# ---- networks and runs to export (test_onnx_graph, test_exporters, test_exporting, commands/test_export) ---

import json  # noqa: E402
import shutil  # noqa: E402

from cnnbp.checkpoint import Checkpoint, read_checkpoint  # noqa: E402
from cnnbp.core.layers import (  # noqa: E402
    Conv2D,
    Dense,
    Flatten,
    Identity,
    Layer,
    LpPool,
    MaxPool,
    MeanPool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)
from cnnbp.core.network import Sequential  # noqa: E402

#: largest |ONNX − engine| accepted for networks with random parameters, per dtype
EXPORT_TOL = {np.float32: 1e-5, np.float64: 1e-9}
EXPORT_DTYPES = [np.float32, np.float64]
#: a config text with non-ASCII characters, stored as it is by the NPZ file and the ONNX metadata
CONFIG_YAML = "model:\n  input_shape: [1, 12, 12]  # β · Σ, 6×1×5×5\n  layers: []\n"


def randomize(net: Sequential, rng: np.random.Generator) -> Sequential:
    """Redraw every parameter from N(0, 0.5²), so biases and β are not the initialisers' zeros / 1/k²
    (which would hide a mis-wired bias)."""
    for layer in net.layers:
        for value in layer.params.values():
            value[...] = rng.normal(0.0, 0.5, size=value.shape)
    return net


def random_net(layers: list[Layer], input_shape: tuple[int, ...], dtype: type, seed: int = 0) -> Sequential:
    """``layers`` built for ``input_shape`` in ``dtype`` with random parameters (same seed → same values)."""
    rng = np.random.default_rng(seed)
    return randomize(Sequential(layers, input_shape).build(rng, dtype), rng)


# name → (layers factory, per-sample input shape, loss)
EXPORT_CASES: dict[str, tuple[Callable[[], list[Layer]], tuple[int, ...], str]] = {
    "conv_tied_stride_pad_pairs": (
        lambda: [Conv2D(3, (3, 2), stride=(2, 1), padding=(1, 2), name="conv1"), Tanh(name="conv1.tanh"),
                 Flatten(name="flat"), Dense(5, name="fc")],
        (2, 9, 8), "mse"),
    "conv_untied_stride_pad_pairs": (
        lambda: [Conv2D(4, (2, 3), stride=(1, 2), padding=(2, 0), bias="untied", name="conv1"),
                 ReLU(name="relu"), Flatten(name="flat"), Dense(3, name="fc")],
        (1, 7, 10), "softmax_cross_entropy"),
    "maxpool_overlap_and_remainder": (
        lambda: [MaxPool(3, 1, name="pool1"), MaxPool((2, 3), (2, 2), name="pool2"), Identity(name="id")],
        (2, 9, 10), "mse"),
    "meanpool_overlap_and_remainder": (
        lambda: [MeanPool((3, 2), (1, 2), name="pool1"), MeanPool(3, 2, name="pool2")],
        (2, 10, 9), "mse"),
    **{
        f"lppool_p{p}": (
            (lambda p=p: [LpPool(3, 2, p=p, name="pool1"), LpPool((2, 3), (2, 1), p=p, name="pool2")]),
            (2, 10, 11), "mse")
        for p in (1, 2, 3)
    },
    "subsample_remainder": (
        lambda: [Subsample(2, name="sub1"), Sigmoid(name="sig"), Subsample(3, name="sub2")],
        (3, 15, 19), "mse"),
    "dense_activations": (
        lambda: [Dense(5, name="fc1"), Sigmoid(name="sig"), Dense(4, name="fc2"), Tanh(name="tanh"),
                 Dense(4, name="fc3"), ReLU(name="relu"), Dense(3, name="fc4"), Identity(name="id")],
        (6,), "softmax_cross_entropy"),
    "dlt_lenet_mse": (  # seed 003: 6c5 → 2s → 12c5 → 2s → dense 10, sigmoid everywhere
        lambda: [Conv2D(6, 5, name="c1"), Sigmoid(name="c1.sigmoid"), Subsample(2, name="s2"),
                 Conv2D(12, 5, name="c3"), Sigmoid(name="c3.sigmoid"), Subsample(2, name="s4"),
                 Flatten(name="flat"), Dense(10, name="out"), Sigmoid(name="out.sigmoid")],
        (1, 28, 28), "mse"),
    "lenet_softmax": (
        lambda: [Conv2D(4, 3, padding=1, name="c1"), ReLU(name="r1"), MaxPool(2, name="p1"),
                 Conv2D(6, 3, stride=2, bias="untied", name="c2"), Tanh(name="t2"),
                 LpPool(2, 1, p=2, name="p2"),
                 Flatten(name="flat"), Dense(7, name="out")],
        (2, 12, 13), "softmax_cross_entropy"),
}  # fmt: skip


def export_case(name: str, dtype: type, seed: int = 0) -> tuple[Sequential, str, np.ndarray]:
    """The network of ``EXPORT_CASES[name]`` with random parameters, its loss and a batch of 3 inputs."""
    layers, shape, loss = EXPORT_CASES[name]
    net = random_net(layers(), shape, dtype, seed)
    x = np.random.default_rng(seed + 100).normal(size=(3, *shape)).astype(dtype)
    return net, loss, x


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over axis 1, written out (not the engine's)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def ort():  # noqa: ANN201 - the onnxruntime module
    """onnxruntime (and onnx); the test is skipped without the ``cnnbp[onnx]`` extra."""
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def train_digits(out: Path, name: str, *overrides: str, epochs: int = 1) -> Path:
    """The built-in digits config on 200 images (``cnnbp.train``), run ``out/name``; returns its folder."""
    import cnnbp

    run = cnnbp.train(None, out=out, name=name, epochs=epochs, overrides=["data.limit=200", *overrides])
    return run.path


@pytest.fixture(scope="session")
def export_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two digits runs (200 images, one epoch: checkpoints 0 and 1, a probe of 8), trained once:
    ``"float32"`` (run d32) and ``"float64"`` (run d64).  Copy one before writing into it."""
    out = tmp_path_factory.mktemp("export_runs")
    return {"float32": train_digits(out, "d32"), "float64": train_digits(out, "d64", "dtype=float64")}


@pytest.fixture
def run32(export_runs: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the float32 run (exports write into the run folder)."""
    return Path(shutil.copytree(export_runs["float32"], tmp_path / "runs" / "d32"))


def last_checkpoint(run: Path) -> Checkpoint:
    """The run's newest checkpoint, found by listing ``checkpoints/*.h5`` (not through cnnbp's resolver)."""
    return read_checkpoint(sorted((run / "checkpoints").glob("*.h5"))[-1])


def engine_network(ck: Checkpoint) -> Sequential:
    """The checkpoint's network in the engine, rebuilt from its config text and its weights (copied
    here, not through the exporters or ``set_parameters``)."""
    from cnnbp.config import build_network, config_from_dict

    cfg = config_from_dict(yaml.safe_load(ck.config))
    net = build_network(cfg).build(np.random.default_rng(5), np.dtype(ck.dtype))
    for lname, group in ck.weights.items():
        for key, value in group.items():
            target = net.layer(lname).params[key]
            assert target.shape == value.shape and target.dtype == value.dtype
            target[...] = value
    return net


def onnx_vs_engine(path: Path, ck: Checkpoint) -> float:
    """max |ONNX − engine| over logits and probabilities on the checkpoint's probe samples, with a fresh
    onnxruntime session on the file ``path`` (a softmax model)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = ck.probe_x
    logits, probs = session.run(["logits", "probabilities"], {"input": x})
    ref = engine_network(ck).forward(x)
    assert logits.dtype == x.dtype and probs.dtype == x.dtype
    return float(max(np.abs(logits - ref).max(), np.abs(probs - softmax(ref)).max()))


# ---- gradcheck (tests/cli/test_checking.py, tests/cli/commands/test_gradcheck.py) ---------------------

# the built-in digits config: its layers, its parameter tensors, and the layers that rule out complex-step
DIGITS_LAYERS = [
    "conv1", "conv1.relu", "pool2", "conv3", "conv3.relu", "pool4", "flatten5", "dense6",
]  # fmt: skip
DIGITS_PARAMS = {(layer, tensor) for layer in ("conv1", "conv3", "dense6") for tensor in ("W", "b")}
DIGITS_NON_ANALYTIC = ["conv1.relu", "pool2", "conv3.relu", "pool4"]
#: the relative error ``wrong_dense_w`` puts into one element of a dense layer's ``grads["W"]``
INJECT = 1e-4


def gc_images(n: int, shape: tuple[int, ...], seed: int) -> list:
    """``n`` random images of ``shape`` (values in [0, 1), 3 decimals) as nested lists, for inline data."""
    return np.random.default_rng(seed).random((n, *shape)).round(3).tolist()


def analytic_config(dtype: str = "float64", data: dict | None = None) -> dict:
    """Conv → sigmoid → subsample → tanh → mean pool → dense → sigmoid, MSE: holomorphic throughout.
    Six inline 1×8×8 images, no validation split, seed 1, probe of 3; layers conv1, conv1.sigmoid,
    subsample2, subsample2.tanh, pool3, flatten4, dense5, dense5.sigmoid."""
    inline = {"source": "inline", "val_fraction": 0, "x": gc_images(6, (1, 8, 8), 7), "y": [0, 1, 2, 0, 1, 2]}
    return {
        "name": "analytic",
        "seed": 1,
        "dtype": dtype,
        "data": data or inline,
        "model": {
            "input_shape": [1, 8, 8],
            "layers": [
                {"type": "conv", "filters": 3, "kernel": 3, "padding": 1, "activation": "sigmoid"},
                {"type": "subsample", "scale": 2, "activation": "tanh"},
                {"type": "pool", "mode": "mean", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 3, "activation": "sigmoid"},
            ],
        },
        "loss": "mse",
        "train": {"epochs": 2, "batch_size": 3, "lr": 0.5},
        "record": {"probe": 3},
    }


def kink_config() -> dict:
    """A relu layer whose unit 1 has zero weights and bias: its pre-activation is 0 for every input."""
    return {
        "name": "kink",
        "seed": 0,
        "dtype": "float64",
        "data": {
            "source": "inline",
            "val_fraction": 0,
            "x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [-1.0, 0.3, 0.7], [2.0, 1.0, -1.0]],
            "y": [0, 1, 0, 1],
        },
        "model": {
            "input_shape": [3],
            "layers": [
                {
                    "type": "dense",
                    "units": 3,
                    "name": "hidden",
                    "activation": "relu",
                    "init": {
                        "W": [[0.5, -0.2, 0.1], [0.0, 0.0, 0.0], [-0.1, 0.2, 0.6]],
                        "b": [0.1, 0.0, 0.2],
                    },
                },
                {"type": "dense", "units": 2, "name": "out"},
            ],
        },
        "loss": "softmax_cross_entropy",
    }


def npz_data(folder: Path) -> dict:
    """An npz data file of 12 random 1×8×8 images in ``folder``, as a config's data section."""
    rng = np.random.default_rng(3)
    path = folder / "images.npz"
    np.savez(path, x_train=rng.random((12, 1, 8, 8)), y_train=rng.integers(0, 3, 12))
    return {"source": "npz", "path": str(path), "val_fraction": 0.25}


@pytest.fixture(scope="session")
def float32_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 run of the analytic net on inline data, trained for 2 epochs (checkpoints 0, 1, 2); its
    config is ``float32_run.parents[1] / "analytic.yaml"``.  Do not write into it."""
    return train_run(tmp_path_factory.mktemp("run32"), analytic_config("float32"))


@pytest.fixture(scope="session")
def moved_data_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, npz)``: a float32 run of the analytic net (run "elsewhere", probe of 3) trained on an npz
    file that was then moved to ``npz``, so the run's data path no longer exists.  Do not write into it."""
    folder = tmp_path_factory.mktemp("elsewhere")
    data = npz_data(folder)
    run = train_run(folder, {**analytic_config("float32", data), "name": "elsewhere"})
    moved = folder / "moved.npz"
    shutil.move(data["path"], moved)
    return run, moved


@pytest.fixture
def wrong_dense_w(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, ...]]:
    """Patch ``Dense.backward`` to scale the largest |element| of ``grads["W"]`` by (1 + INJECT); the
    element is left in ``["index"]``."""
    original = Dense.backward
    hit: dict[str, tuple[int, ...]] = {}

    def wrong(self: Dense, dy: np.ndarray) -> np.ndarray:
        dx = original(self, dy)
        g = self.grads["W"]
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(g))), g.shape))
        g[index] *= 1 + INJECT
        hit["index"] = index
        return dx

    monkeypatch.setattr(Dense, "backward", wrong)
    return hit


# ---- more for exports (test_exporting, commands/test_export) ------------------------------------------

#: the digits config with its second layer (pool2) an LpPool of p = 2.5: ONNX LpPool takes integer p only
LP_POOL = "model.layers[1]={type: pool, mode: lp, size: 2, p: 2.5}"


@pytest.fixture(scope="session")
def lp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run (float32) whose pool2 is an LpPool with p = 2.5.  Copy it before writing into it."""
    return train_digits(tmp_path_factory.mktemp("lp_run"), "lp", LP_POOL)


@pytest.fixture
def no_onnxruntime(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a generator fixture
    """Make ``import onnxruntime`` fail, as without the extra; the availability cache is reset around."""
    from cnnbp.onnx_graph import onnx_available

    onnx_available.cache_clear()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    yield
    onnx_available.cache_clear()


def read_export(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The parameters of an exported .npz / .json file, read with numpy / json directly (not through
    cnnbp.exporters); buffers (``__state__/…`` entries, ``"state"`` objects) are left out."""
    params: dict[str, dict[str, np.ndarray]] = {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                if not key.startswith("__"):
                    lname, _, pname = key.rpartition("/")
                    params.setdefault(lname, {})[pname] = npz[key]
    else:
        for row in json.loads(path.read_text(encoding="utf-8"))["layers"]:
            if row["params"]:
                params[row["name"]] = {k: np.array(v) for k, v in row["params"].items()}
    return params


def assert_same_params(
    a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]], dtype: str
) -> None:
    """The same layers and parameters, bit for bit once both are in ``dtype``."""
    assert sorted(a) == sorted(b)
    for lname in a:
        assert sorted(a[lname]) == sorted(b[lname])
        for key in a[lname]:
            x, y = a[lname][key].astype(dtype), b[lname][key].astype(dtype)
            assert x.tobytes() == y.tobytes(), f"{lname}/{key} differs"


@pytest.fixture
def npz_one_ulp_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cnnbp.export`` reads NPZ files back one ulp off in the first weight of conv1 (a bit-level miss)."""
    from cnnbp import exporters

    real = exporters.load_npz

    def one_ulp_off(path: Path) -> exporters.ParamsFile:
        loaded = real(path)
        w = loaded.params["conv1"]["W"]
        w.flat[0] = np.nextafter(w.flat[0], np.inf)
        return loaded

    monkeypatch.setattr("cnnbp.exporting.load_npz", one_ulp_off)


# ---- users' layers (tests/cli/test_plugins.py, test_layercheck.py, commands/test_check_layer.py) ------

# A softplus and a dense layer written as a user would (the README's example).  The ``{...}`` fields
# break one thing each: ``SCALE_*`` multiplies one gradient by (1 + 1e-4).
PLUGIN = '''
import numpy as np
import cnnbp


@cnnbp.register_layer("my_softplus")
class MySoftplus(cnnbp.Layer):
    def forward(self, x):
        self.x = x
        return np.logaddexp(0, x)

    def backward(self, dy):
        return dy / (1 + np.exp(-self.x)) * {SCALE_SOFTPLUS_X}


@cnnbp.register_layer("my_dense")
class MyDense(cnnbp.Layer):
    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise cnnbp.ShapeError(self.name, f"expects a feature vector, got {{input_shape}}")
        return (self.units,)

    def param_shapes(self, input_shape):
        return {{"W": (self.units, input_shape[0]), "b": (self.units,)}}

    def forward(self, x):
        self.x = x
        return x @ self.params["W"].T + self.params["b"]

    def backward(self, dy):
        self.grads["W"] = dy.T @ self.x * {SCALE_W}
        self.grads["b"] = dy.sum(axis=0) * {SCALE_B}
        return dy @ self.params["W"] * {SCALE_DENSE_X}
'''
OFF = "1.0001"  # a relative error of 1e-4


def plugin_source(**broken: str) -> str:
    scales = {"SCALE_SOFTPLUS_X": "1", "SCALE_W": "1", "SCALE_B": "1", "SCALE_DENSE_X": "1"}
    return PLUGIN.format(**{**scales, **broken})


def write_plugin(folder: Path, source: str | None = None, name: str = "my_layers.py") -> Path:
    path = folder / name
    path.write_text(plugin_source() if source is None else source, encoding="utf-8")
    return path


# A convolution written from the notes, one loop over output positions (cross-correlation, no padding).
# ``{FLIP}`` turns the kernel by 180° (a true convolution: self-consistent, but not cnnbp's conv);
# ``{DX_OFFSET}`` is where backward adds a window's share of dx (``i * s``; ``i`` is the stride bug).
CONV_PLUGIN = '''
import numpy as np
import cnnbp


class LoopConv(cnnbp.Layer):
    def __init__(self, filters: int, kernel: int, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel, self.stride = filters, kernel, stride

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise cnnbp.ShapeError(self.name, f"expects C×H×W, got {{input_shape}}")
        c, h, w = input_shape
        k, s = self.kernel, self.stride
        if k > h or k > w:
            raise cnnbp.ShapeError(self.name, "kernel larger than the input")
        return (self.filters, (h - k) // s + 1, (w - k) // s + 1)

    def param_shapes(self, input_shape):
        return {{"W": (self.filters, input_shape[0], self.kernel, self.kernel), "b": (self.filters,)}}

    def forward(self, x):
        self.x = x
        k, s = self.kernel, self.stride
        kern = self.params["W"]{FLIP}
        f, ho, wo = self.output_shape(x.shape[1:])
        y = np.empty((x.shape[0], f, ho, wo), dtype=x.dtype)
        for i in range(ho):
            for j in range(wo):
                window = x[:, :, i * s : i * s + k, j * s : j * s + k]
                y[:, :, i, j] = np.einsum("ncab,fcab->nf", window, kern)
        return y + self.params["b"][:, None, None]

    def backward(self, dy):
        x, k, s = self.x, self.kernel, self.stride
        kern = self.params["W"]{FLIP}
        dx, dkern = np.zeros_like(x), np.zeros_like(kern)
        for i in range(dy.shape[2]):
            for j in range(dy.shape[3]):
                window = x[:, :, i * s : i * s + k, j * s : j * s + k]
                dkern += np.einsum("nf,ncab->fcab", dy[:, :, i, j], window)
                r, c = {DX_OFFSET}
                dx[:, :, r : r + k, c : c + k] += np.einsum("nf,fcab->ncab", dy[:, :, i, j], kern)
        self.grads["W"] = dkern{FLIP}
        self.grads["b"] = dy.sum(axis=(0, 2, 3))
        return dx
'''


def conv_source(flip: bool = False, stride_bug: bool = False) -> str:
    return CONV_PLUGIN.format(FLIP="[:, :, ::-1, ::-1]" if flip else "",
                              DX_OFFSET="i, j" if stride_bug else "i * s, j * s")  # fmt: skip


# A stride-1 convolution with zero padding, one einsum per kernel offset, for networks full of ties
# (tests/cli/test_checking_kinks.py).  ``{DW}`` is what backward stores as ∂L/∂W (``dkern``, right);
# ``{SCALE_B}`` and ``{SCALE_X}`` multiply ∂L/∂b and ∂L/∂x.
PAD_CONV_PLUGIN = '''
import numpy as np
import cnnbp


@cnnbp.register_layer("pad_conv")
class PadConv(cnnbp.Layer):
    def __init__(self, filters: int, kernel: int, padding: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel, self.padding = filters, kernel, padding

    def output_shape(self, input_shape):
        c, h, w = input_shape
        k, p = self.kernel, self.padding
        return (self.filters, h + 2 * p - k + 1, w + 2 * p - k + 1)

    def param_shapes(self, input_shape):
        return {{"W": (self.filters, input_shape[0], self.kernel, self.kernel), "b": (self.filters,)}}

    def forward(self, x):
        p, k, W = self.padding, self.kernel, self.params["W"]
        self.xp = xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        f, ho, wo = self.output_shape(x.shape[1:])
        y = np.zeros((x.shape[0], f, ho, wo), dtype=np.result_type(x, W))
        for a in range(k):
            for b in range(k):
                y += np.einsum("nchw,fc->nfhw", xp[:, :, a : a + ho, b : b + wo], W[:, :, a, b])
        return y + self.params["b"][:, None, None]

    def backward(self, dy):
        p, k, xp, W = self.padding, self.kernel, self.xp, self.params["W"]
        ho, wo = dy.shape[2:]
        dxp, dkern = np.zeros_like(xp), np.zeros_like(W)
        for a in range(k):
            for b in range(k):
                dkern[:, :, a, b] = np.einsum("nfhw,nchw->fc", dy, xp[:, :, a : a + ho, b : b + wo])
                dxp[:, :, a : a + ho, b : b + wo] += np.einsum("nfhw,fc->nchw", dy, W[:, :, a, b])
        self.grads["W"] = {DW}
        self.grads["b"] = dy.sum(axis=(0, 2, 3)) * {SCALE_B}
        return dxp[:, :, p : xp.shape[2] - p, p : xp.shape[3] - p] * {SCALE_X}
'''


def pad_conv_source(dw: str = "dkern", scale_b: str = "1", scale_x: str = "1") -> str:
    return PAD_CONV_PLUGIN.format(DW=dw, SCALE_B=scale_b, SCALE_X=scale_x)


# ---- sweeps (tests/cli/test_sweeping.py, tests/cli/commands/test_sweep.py) ----------------------------


@pytest.fixture(scope="session")
def dask_scheduler():  # noqa: ANN201 - a generator fixture
    """The address of an in-process Dask cluster (2 workers of one thread, no sockets), for the session."""
    import logging

    distributed = pytest.importorskip("distributed")
    from cnnbp.sweeping import LOOPBACK

    loopback = {k: v for k, v in LOOPBACK.items() if k != "host"}  # in-process: no host to listen on
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       silence_logs=logging.CRITICAL, **loopback)  # fmt: skip
    yield cluster.scheduler_address
    cluster.close()


# ---- a tie-heavy network (tests/cli/test_checking_kinks.py, commands/test_gradcheck.py) ---------------

def tie_config(plugin: Path, conv: str) -> dict:
    """1×8×8 integer images (0..3, a blank quarter, a flat quarter of 2s): ``c1`` (4 filters) → relu → max
    pool → ``c2`` (3 filters) → relu → max pool → dense 3, both convs 3×3 with padding 1, integer weights in
    {−1, 0, 1} and zero biases; ``conv`` (c1 or c2) is the plugin's ``pad_conv``, the other the built-in."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 4, size=(6, 1, 8, 8)).astype(float)
    images[:, :, :4, :4] = 0.0
    images[:, :, 5:, 5:] = 2.0

    def layer(name: str, filters: int, channels: int) -> dict:
        weights = rng.integers(-1, 2, size=(filters, channels, 3, 3)).astype(float)
        return {"type": "pad_conv" if name == conv else "conv", "name": name, "filters": filters, "kernel": 3,
                "padding": 1, "init": {"W": weights.tolist()}}  # fmt: skip

    return {
        "seed": 0,
        "dtype": "float64",
        "plugins": [str(plugin)],
        "data": {"source": "inline", "val_fraction": 0, "x": images.tolist(), "y": [0, 1, 2, 0, 1, 2]},
        "model": {
            "input_shape": [1, 8, 8],
            "layers": [
                layer("c1", 4, 1), {"type": "relu", "name": "r1"}, {"type": "pool", "mode": "max", "size": 2},
                layer("c2", 3, 4), {"type": "relu", "name": "r2"}, {"type": "pool", "mode": "max", "size": 2},
                {"type": "flatten"}, {"type": "dense", "units": 3, "name": "fc"},
            ],
        },  # fmt: skip
        "loss": "softmax_cross_entropy",
    }


def unwrapped(stdout: str, whole: tuple[str, ...] = ("view",)) -> list[str]:
    """The report's rows as one line each: the lines are wrapped to 80 columns (a continuation line has
    an empty key column), each of them fits unless it is one long word (a path) or a command to copy
    (the keys in ``whole``)."""
    rows: list[str] = []
    for line in stdout.rstrip("\n").split("\n"):
        key, _, rest = line.strip().partition(" ")
        assert len(line) <= 80 or key in whole or " " not in rest.strip(), line
        if line.startswith(" ") and rows:
            rows[-1] += " " + line.strip()
        else:
            rows.append(line)
    return rows
