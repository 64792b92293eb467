"""End-to-end tests of ``cnnbp train`` through the Typer app: run folders, metrics, checkpoints, output modes
and clean one-line errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnbp import __version__
from cnnbp.app import app
from cnnbp.checkpoint import read_checkpoint
from cnnbp.config import build_network, check_model, load_config
from cnnbp.runner import choose_probe
from cnnbp.runs import METRIC_COLUMNS, create_run_dir, find_checkpoints
from tests.cli.conftest import CONV_B, CONV_W, DENSE_B, DENSE_W, tiny_config, write_config

REPO = Path(__file__).resolve().parents[3]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
runner = CliRunner()

def invoke(*args: str | Path):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---- the app -----------------------------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cnnbp {__version__}" == "cnnbp 0.2.0"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_for_app_and_train(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout
    result = invoke("train", flag)
    assert result.exit_code == 0, result.output
    for option in ("--epochs", "--seed", "--name", "--out", "--set", "--dry-run", "--json", "--quiet"):
        assert option in result.stdout


def test_python_dash_m_and_the_error_path_of_main(tmp_path: Path) -> None:
    """The real entry point: ``python -m cnnbp`` prints the version, and a config error is one line."""
    done = subprocess.run(
        [sys.executable, "-m", "cnnbp", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"cnnbp {__version__}"
    args = ["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]
    done = subprocess.run(
        [sys.executable, "-m", "cnnbp", *args],
        capture_output=True, text=True, timeout=60, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.yaml" in lines[0]
    assert "\x1b[" not in done.stderr  # NO_COLOR and a pipe: plain text
    assert not (tmp_path / "r").exists()


# ---- the default digits config, end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("runs")
    result = invoke("train", "--epochs", "2", "--out", out, "--set", "data.limit=400")
    assert result.exit_code == 0, result.output
    return out, result


def test_digits_run_folder_layout(digits_run: tuple[Path, object]) -> None:
    out, _ = digits_run
    run = out / "digits"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "metrics.csv", "status.json", "steps.csv", "train.log"
    ]
    assert [e for e, _ in find_checkpoints(run)] == [0, 1, 2]
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_digits_metrics_csv(digits_run: tuple[Path, object]) -> None:
    out, _ = digits_run
    path = out / "digits" / "metrics.csv"
    assert path.read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    rows = read_csv(path)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    default = load_config(None)
    steps_per_epoch = math.ceil(400 / default.train.batch_size)
    assert [int(r["step"]) for r in rows] == [0, steps_per_epoch, 2 * steps_per_epoch]
    assert math.isnan(float(rows[0]["train_loss"])) and math.isnan(float(rows[0]["train_acc"]))
    for r in rows:
        assert 0 <= float(r["val_acc"]) <= 1 and float(r["val_loss"]) > 0
        assert float(r["lr"]) == default.train.lr and float(r["seconds"]) >= 0
    assert float(rows[2]["train_loss"]) < float(rows[1]["train_loss"])
    assert float(rows[2]["val_acc"]) > 0.5  # two epochs on 400 digits are far above chance (0.1)


def test_digits_checkpoints(digits_run: tuple[Path, object]) -> None:
    out, _ = digits_run
    run = out / "digits"
    first = read_checkpoint(run / "checkpoints" / "0000.h5")
    last = read_checkpoint(run / "checkpoints" / "0002.h5")
    steps = 2 * math.ceil(400 / load_config(None).train.batch_size)
    assert (first.epoch, first.step, last.epoch, last.step) == (0, 0, 2, steps)
    assert first.run_name == "digits" and first.dtype == "float32"
    assert math.isnan(first.metrics["train_loss"]) and math.isfinite(first.metrics["val_loss"])
    # the probe is the same samples in every checkpoint, chosen by the documented derivation
    np.testing.assert_array_equal(first.probe_index, choose_probe(400, 8, 0))
    np.testing.assert_array_equal(first.probe_x, last.probe_x)
    assert set(first.deltas) == set(first.layer_names)
    for info in check_model(load_config(None)):
        assert first.deltas[info.name].shape == (8, *info.output_shape)
    # weights changed between the checkpoints; so did the probe gradients
    assert not np.array_equal(first.weights["dense6"]["W"], last.weights["dense6"]["W"])
    assert not np.array_equal(first.grads["dense6"]["W"], last.grads["dense6"]["W"])
    assert first.optimizer.type == "sgd" and first.optimizer.state == {"t": 0, "velocity": {}}
    assert set(last.optimizer.state["velocity"]) == set(last.weights) and last.optimizer.state["t"] == steps
    assert last.optimizer.hyper == {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    assert list(last.history["epoch"]) == [0, 1, 2]
    # the stored config is the resolved YAML of the run
    assert last.config == (run / "config.yaml").read_text()


def test_digits_checkpoint_0_holds_the_seeded_initial_weights(digits_run: tuple[Path, object]) -> None:
    out, _ = digits_run
    cfg = load_config(out / "digits" / "config.yaml")
    net = build_network(cfg).build(np.random.default_rng(cfg.seed), np.float32)
    first = read_checkpoint(out / "digits" / "checkpoints" / "0000.h5")
    for lname, group in net.parameters().items():
        for key, w in group.items():
            np.testing.assert_array_equal(first.weights[lname][key], w)


def test_digits_output(digits_run: tuple[Path, object]) -> None:
    out, result = digits_run
    stdout, stderr = result.stdout, result.stderr
    infos = check_model(load_config(None))
    total = f"{sum(info.n_params for info in infos):,}"
    for text in (infos[0].name, infos[-1].name, total, "total", "cnnbp inspect", str(out / "digits")):
        assert text in stdout, text
    # not a terminal: the epoch table, a header and one plain line per epoch, on stderr
    lines = stderr.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert lines[head].split() == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "time"]
    rows = [line.split() for line in lines[head + 1 : head + 4]]
    assert [r[0] for r in rows] == ["0/2", "1/2", "2/2"]
    metrics = read_csv(out / "digits" / "metrics.csv")
    for r, m in zip(rows, metrics, strict=True):  # the numbers of metrics.csv, rounded as printed
        assert r[3:5] == [f"{float(m['val_loss']):.4f}", f"{100 * float(m['val_acc']):.1f}%"]
    assert rows[0][1:3] == ["-", "-"] and rows[1][1] == f"{float(metrics[1]['train_loss']):.4f}"


def test_stored_config_reproduces_the_run_and_names_collide(digits_run: tuple[Path, object]) -> None:
    out, _ = digits_run
    stored = load_config(out / "digits" / "config.yaml")
    assert stored.resolved["data"]["limit"] == 400 and stored.train.epochs == 2
    result = invoke("train", out / "digits" / "config.yaml", "--out", out, "--epochs", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "digits-2" / "checkpoints" / "0001.h5").exists()
    a = read_checkpoint(out / "digits" / "checkpoints" / "0001.h5")
    b = read_checkpoint(out / "digits-2" / "checkpoints" / "0001.h5")
    assert b.run_name == "digits-2"
    for lname, group in a.weights.items():  # same config, same seed: bit-identical first epoch
        for key, w in group.items():
            np.testing.assert_array_equal(b.weights[lname][key], w)
    # --quiet: the summary only
    assert "conv1" not in result.stdout and "cnnbp inspect" in result.stdout
    assert "epoch " not in result.stderr


# ---- small inline configs ---------------------------------------------------------------------------


def test_checkpoint_0_equals_explicit_init_and_every_controls_checkpoints(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=3, every=2))
    result = invoke("train", config, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    assert [e for e, _ in find_checkpoints(run)] == [0, 2, 3]  # every 2, and always the last
    assert len(read_csv(run / "metrics.csv")) == 4
    first = read_checkpoint(run / "checkpoints" / "0000.h5")
    assert first.dtype == "float64"
    np.testing.assert_array_equal(first.weights["conv"]["W"], np.array(CONV_W))
    np.testing.assert_array_equal(first.weights["conv"]["b"], np.array(CONV_B))
    np.testing.assert_array_equal(first.weights["out"]["W"], np.array(DENSE_W))
    np.testing.assert_array_equal(first.weights["out"]["b"], np.array(DENSE_B))
    assert first.layer_names == ["conv", "conv.tanh", "flat", "out"]
    assert first.deltas["conv.tanh"].shape == (3, 1, 2, 2)
    assert first.probe_x.shape == (3, 1, 3, 3)


def test_init_from_a_previous_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=2, every=1))
    assert invoke("train", config, "--out", tmp_path / "runs", "--quiet").exit_code == 0
    last = read_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / "0002.h5")
    again = write_config(tmp_path, tiny_config(name="again", epochs=1), "again.yaml")
    result = invoke("train", again, "--out", tmp_path / "runs", "--quiet",
                    "--set", f"model.init_from={tmp_path / 'runs' / 'tiny'}")  # fmt: skip
    assert result.exit_code == 0, result.output
    first = read_checkpoint(tmp_path / "runs" / "again" / "checkpoints" / "0000.h5")
    for lname, group in last.weights.items():
        for key, w in group.items():
            np.testing.assert_array_equal(first.weights[lname][key], w)


def test_json_lines(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=3))
    result = invoke("train", config, "--out", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    objs = [json.loads(line) for line in lines]  # every stdout line is JSON, nothing else
    assert [o["epoch"] for o in objs] == [1, 2, 3]
    for o in objs:
        assert set(o) >= {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
        assert isinstance(o["train_loss"], float) and 0 <= o["val_acc"] <= 1
    assert [o["step"] for o in objs] == [2, 4, 6]  # 6 training samples, batches of 4


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config())
    out = tmp_path / "runs"
    result = invoke("train", config, "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert not out.exists()
    assert "conv.tanh" in result.stdout and "total" in result.stdout
    assert "dry run" in result.stderr


def test_name_collision_counts_up(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=1))
    out = tmp_path / "runs"
    for _ in range(3):
        assert invoke("train", config, "--out", out, "--quiet").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny", "tiny-2", "tiny-3"]
    result = invoke("train", config, "--out", out, "--quiet", "--name", "other")
    assert result.exit_code == 0 and (out / "other").is_dir()


@pytest.mark.parametrize(
    ("edit", "args", "fragment"),
    [
        (None, ["--set", "train.lr=-1"], "train.lr"),
        (None, ["--set", "train.threads=0"], "train.threads"),
        (None, ["--set", "train.threads=true"], "train.threads"),
        (None, ["--set", "nonsense"], "--set"),
        (None, ["--set", "model.layers[0].kernel=9"], "model.layers[0]"),
        (None, ["--name", "../escape"], "name"),
        (lambda c: c["model"]["layers"][0].update(filters=0), [], "model.layers[0].filters"),
        (lambda c: c.update(loss="hinge"), [], "loss"),
        (lambda c: c["data"].update(y=[0, 1]), [], "data"),
        ("missing", [], "missing.yaml"),
        ("not yaml", [], "tiny.yaml"),
    ],
)
def test_config_errors_are_one_line_exit_2(
    tmp_path: Path, edit: object, args: list[str], fragment: str
) -> None:
    cfg = tiny_config()
    if callable(edit):
        edit(cfg)
    config = write_config(tmp_path, cfg)
    if edit == "missing":
        config = tmp_path / "missing.yaml"
    elif edit == "not yaml":
        config.write_text("model: [unclosed\n  - {", encoding="utf-8")
    out = tmp_path / "runs"
    result = invoke("train", config, "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_run_name_cannot_escape_the_output_folder(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="plain folder name|outside"):
        create_run_dir(tmp_path, "../x")
    assert create_run_dir(tmp_path, "ok").parent == tmp_path


# ---- MNIST (the DeepLearnToolbox network), when the shared data is there ---------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST data at {MNIST_DIR}")
def test_dlt_mnist_config(tmp_path: Path) -> None:
    candidates = [REPO / "cnnbp_cli" / "configs" / "dlt_mnist.yaml", REPO / "configs" / "dlt_mnist.yaml"]
    config = next((p for p in candidates if p.exists()), None)
    if config is None:
        pytest.skip("no dlt_mnist.yaml config")
    result = invoke("train", config, "--out", tmp_path, "--epochs", "1", "--json",
                    "--set", f"data.path={MNIST_DIR}", "--set", "data.limit=300")  # fmt: skip
    assert result.exit_code == 0, result.output
    (obj,) = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert obj["epoch"] == 1 and math.isfinite(obj["train_loss"])
    run = next(tmp_path.iterdir())
    assert [e for e, _ in find_checkpoints(run)] == [0, 1]
    ck = read_checkpoint(run / "checkpoints" / "0001.h5")
    assert ck.deltas[ck.layer_names[0]].shape[1:] == ck.layers[0].output_shape


# ---- the rough edges of issue 15: 80 columns, one name per thing, usage errors, a run that explodes ------

import os  # noqa: E402
import re  # noqa: E402

PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(*args: str | Path):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args], env=PLAIN)


def assert_fits(text: str, width: int = 80, path: Path | None = None) -> None:
    """Every line within ``width`` and without trailing spaces (a line holding ``path`` may be longer:
    a path is never cut)."""
    for line in text.splitlines():
        assert line == line.rstrip(), repr(line)
        assert len(line) <= width or (path is not None and str(path) in line), repr(line)


def test_an_exploding_run_fits_80_columns_and_stops_by_default(tmp_path: Path) -> None:
    """``--set train.lr=1000`` exited 0 with train_loss 4146260520, its lines wrapped at 80 columns."""
    args = ["train", "--out", tmp_path, "--epochs", "2", "--set", "data.limit=200", "--set", "train.lr=1000"]
    result = plain(*args)
    assert result.exit_code == 1, result.output
    assert "is over divergence_factor 100 × the first batch's loss" in result.stderr
    status = json.loads((tmp_path / "digits" / "status.json").read_text())
    assert status["state"] == "diverged" and status["reason"] in result.stderr
    shown = plain("inspect", tmp_path / "digits").stdout
    assert re.search(r"^status        diverged in epoch 1 at step \d+ \(batch \d+ of 7\): loss", shown, re.M)
    # off with null: the run goes on, and its enormous numbers still fit
    result = plain(*args, "--set", "train.divergence_factor=null", "--name", "off")
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout, path=tmp_path)
    assert_fits(result.stderr, path=tmp_path)
    assert re.search(r"^  1/2\s+\d\.\d{3}e\+\d\d\s+", result.stderr, re.M)  # the loss in 9 characters


def test_the_data_lines_name_the_split_once_and_fit(tmp_path: Path) -> None:
    """A source with a test split: val_* everywhere (epoch table, summary), 'the test split' said once."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x_train=rng.random((12, 1, 3, 3)), y_train=rng.integers(0, 2, 12),
             x_test=rng.random((5, 1, 3, 3)), y_test=rng.integers(0, 2, 5))  # fmt: skip
    cfg = tiny_config(epochs=1)
    cfg["data"] = {"source": "npz", "path": str(data)}
    result = plain("train", write_config(tmp_path, cfg), "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    out = result.stdout
    head = rf"^data  npz\n      {re.escape(str(data))}\n"  # a path too long for the line gets its own
    assert re.search(head + r"      12 train · 5 val \(the source's test split\)$", out, re.M), out
    assert not re.search(r"test_(acc|loss)", out + result.stderr) and "val_acc   final" in out
    assert_fits(out, path=tmp_path)
    # an inline source: "inline", not "inline (8 samples)" next to the counts; one epoch, "1 epoch, 2 steps"
    result = plain("train", write_config(tmp_path, tiny_config(epochs=1)), "--out", tmp_path / "runs")
    assert "data  inline\n      6 train · 2 val (a seeded 25 % hold-out)\n" in result.stdout
    assert re.search(r"^trained   1 epoch, 2 steps in ", result.stdout, re.M)


def test_a_resumed_run_says_what_this_call_trained(tmp_path: Path) -> None:
    """After --resume the summary said 'trained 17 epochs, 765 steps' when 2 epochs ran."""
    config = write_config(tmp_path, tiny_config(epochs=2))
    assert plain("train", config, "--out", tmp_path / "runs", "--quiet").exit_code == 0
    result = plain("train", "--resume", tmp_path / "runs" / "tiny", "--epochs", "5", "--quiet")
    assert result.exit_code == 0, result.output
    assert re.search(r"^trained   epochs 3–5 of 5 \(resumed\), 6 steps in \d+\.\ds", result.stdout, re.M)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["train", "--epochs", "abc"], "error: --epochs: expected an integer, got 'abc'"),
        (["inspect", "runs/x", "--show", "delta"],
         "error: --show: 'delta' is not one of summary, deltas, activations, grads, weights, metrics, "
         "histograms, health (did you mean 'deltas'?)"),
        (["train", "--set", "train.lr", "0.1"],
         "error: --set: takes KEY=VALUE as one word, got 'train.lr' (write --set train.lr=VALUE, no spaces "
         "around '=')"),
        (["train", "--epoch", "3"], "error: --epoch: no such option (did you mean --epochs?)"),
        (["inspect"], "error: TARGET: missing argument (see --help)"),
        (["train", "--epochs"], "error: --epochs: needs a value"),
        (["evaluat"], "error: no such command 'evaluat' (did you mean 'evaluate'?)"),
        (["--bogus"], "error: --bogus: no such option (see --help)"),
    ],
)  # fmt: skip
def test_typers_own_errors_are_one_line_exit_2(args: list[str], line: str) -> None:
    result = plain(*args)
    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr.splitlines() == [line]


def test_help_shows_no_bool_type_and_no_vague_thread_default() -> None:
    for name in [None, *(c.name for c in app.registered_commands)]:
        result = plain(*([name] if name else []), "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "<bool>" not in result.stdout, name
    wide = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert "--threads" in wide.stdout and "their own" not in wide.stdout  # the default said is the one used


def test_shell_completion_is_installed_with_typer() -> None:
    script = plain("--show-completion", "bash")
    assert script.exit_code == 0 and "_CNNBP_COMPLETE=complete_bash" in script.stdout
    env = {**PLAIN, "_CNNBP_COMPLETE": "complete_bash", "COMP_WORDS": "cnnbp inspect r --show d"}
    env["COMP_CWORD"] = "4"
    assert runner.invoke(app, [], env=env, prog_name="cnnbp").stdout.split() == ["deltas"]


def test_dlt_mnist_without_data_path_says_how_to_point_it_at_mnist(tmp_path: Path) -> None:
    result = plain("train", REPO / "configs" / "dlt_mnist.yaml", "--out", tmp_path, "--dry-run")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {REPO / 'configs' / 'data' / 'mnist'}: folder not found; point data.path")
    assert "--set data.path=/path/to/mnist" in line


def test_train_log_keeps_what_training_printed(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=2))
    result = plain("train", config, "--out", tmp_path / "runs")
    log = (tmp_path / "runs" / "tiny" / "train.log").read_text(encoding="utf-8").splitlines()
    assert log[0].startswith(f"# cnnbp {__version__} · train · ")
    assert result.stdout.splitlines()[:-7] == log[1 : len(result.stdout.splitlines()) - 6]  # the model, data
    table = [line for line in result.stderr.splitlines() if not line.startswith("run folder")]
    assert table == [line for line in log if re.match(r"^(epoch  |\s*\d+/2 )", line)]
    assert log[-6:] == result.stdout.splitlines()[-6:]  # the summary


# ---- the live bar in a pseudo-terminal -------------------------------------------------------------------


def run_in_pty(argv: list[str], columns: int = 80) -> str:
    """The output of a command run in a pseudo-terminal of ``columns`` columns, escape codes removed and
    every line (also those a carriage return redraws) split out."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(COLUMNS=str(columns), TERM="xterm-256color")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, out.decode(errors="replace")
    return ANSI.sub("", out.decode("utf-8", errors="replace"))


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_the_live_bar_counts_batches_of_the_epoch_and_fits_80_columns(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "cnnbp", "train", "--epochs", "2", "--set", "data.limit=300",
            "--out", str(tmp_path)]  # fmt: skip
    text = run_in_pty(argv)
    lines = [piece for line in text.split("\n") for piece in line.split("\r") if piece.strip()]
    long = [line for line in lines if len(line) > 80 and str(tmp_path) not in line]  # a path may be longer
    assert not long, long[:3]
    bars = [line for line in lines if re.match(r"^epoch \d/2 ", line)]
    assert bars, text
    counts = {re.findall(r" (\d+/\d+)", line)[-1] for line in bars}  # the last: the batch counter
    assert counts <= {f"{i}/10" for i in range(11)} and "10/10" in counts  # 300 / 32: 10 batches an epoch
    assert any("validating 359 samples" in line for line in bars)
    rows = [line.split()[0] for line in lines if re.match(r"^\s*\d/2\s", line)]
    assert rows == ["0/2", "1/2", "2/2"]


def test_resuming_a_run_that_stopped_early_says_why_there_is_nothing_to_do(tmp_path: Path) -> None:
    cfg = tiny_config("es", epochs=6)
    cfg["train"].update(lr=1e-9, early_stopping={"patience": 1, "min_delta": 0.01})
    assert plain("train", write_config(tmp_path, cfg), "--out", tmp_path / "runs", "--quiet").exit_code == 0
    result = plain("train", "--resume", tmp_path / "runs" / "es")
    assert result.exit_code == 0
    text = " ".join(result.stderr.split())
    assert "stopped early at epoch 2: val_loss has not improved by more than 0.01 for 1 epoch" in text
    assert text.endswith("nothing to do (to go on, change train.early_stopping in its config.yaml and resume "
                         "with --force)")  # fmt: skip
    assert_fits(result.stderr, path=tmp_path)
