"""End-to-end tests of the ``cnnbp inspect`` command: the seeds' 3×3 / 2×2 example reads as in the seeds,
every view fits 80 columns without escape codes, ``--json`` is strict JSON of the checkpoint's numbers,
and bad files and choices end on one ``error:`` line with exit code 2.

The numbers themselves are tested against the HDF5 files in tests/cli/test_inspection.py; runs are made
with ``cnnbp train`` (tests/cli/conftest.py).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cnnbp.app import app
from tests.cli.conftest import ck_path, read_h5, rewrite_checkpoint, seed_expected

runner = CliRunner()
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}
ESC = "\x1b"


def invoke(*args: Any, env: dict[str, str] | None = None):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args], env=env or PLAIN)


def inspect_json(*args: Any) -> Any:
    result = invoke("inspect", *args, "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1  # one line
    return json.loads(result.stdout, parse_constant=_reject)  # strict JSON: no NaN/Infinity


def _reject(token: str) -> None:
    raise AssertionError(f"non-standard JSON constant {token}")


def assert_plain_80(text: str) -> None:
    assert ESC not in text
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long[:3]


# ---- the seeds' worked example, as printed ----------------------------------------------------------------

MATRIX_ROW = re.compile(r"^\s*([12])\s+(-?\d+\.\d{4})\s+(-?\d+\.\d{4})\s*$")


def printed_matrices(text: str) -> list[np.ndarray]:
    """The 2×2 number matrices in the output, checking each has the column header ``1  2`` above it."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = MATRIX_ROW.match(line)
        if m and m.group(1) == "1":
            m2 = MATRIX_ROW.match(lines[i + 1])
            assert m2 and m2.group(1) == "2", lines[i : i + 2]
            assert lines[i - 1].split() == ["1", "2"], lines[i - 1]  # column labels 1..W
            found.append(
                np.array([[float(m.group(2)), float(m.group(3))], [float(m2.group(2)), float(m2.group(3))]])
            )
    return found


@pytest.mark.parametrize("epoch", [0, 1])
def test_seed_example_deltas_as_in_the_seeds(seeds_run: Path, epoch: int) -> None:
    want = seed_expected()[epoch]
    result = invoke("inspect", seeds_run, "--show", "deltas", "--layer", "conv1", "--checkpoint", epoch)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[:3] == [
        f"checkpoint {epoch} of run seeds · step {epoch}",
        str(ck_path(seeds_run, epoch)),
        "probe sample 0 of 1: training sample 0, target [1, 0, 0, 1]",
    ]
    assert "conv1 (conv) · δ · 1×2×2\nchannel 0\n" in out
    [shown] = printed_matrices(out)
    np.testing.assert_array_equal(shown, np.round(want["delta"], 4))
    data = inspect_json(seeds_run, "--show", "deltas", "--layer", "conv1", "--checkpoint", epoch)
    stored = read_h5(ck_path(seeds_run, epoch), "deltas/conv1")[0]
    assert np.array_equal(np.asarray(data["layers"][0]["delta"]), stored)


@pytest.mark.parametrize("epoch", [0, 1])
def test_seed_example_grads_and_weights(seeds_run: Path, epoch: int) -> None:
    want = seed_expected()[epoch]
    result = invoke("inspect", seeds_run, "--show", "grads", "--checkpoint", epoch)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "∂L/∂θ: gradient of the mean loss over the 1 probe sample at these weights" in out
    assert "conv1.W (conv) · ∂L/∂W · 1×1×2×2\nfilter 0, input 0\n" in out
    assert "conv1.b (conv) · ∂L/∂b · 1×2×2\nfilter 0\n" in out
    grad_F, grad_b = printed_matrices(out)  # W first, then the untied bias map
    np.testing.assert_array_equal(grad_F, np.round(want["grad_F"], 4))
    np.testing.assert_array_equal(grad_b, np.round(want["grad_b"], 4))
    result = invoke("inspect", seeds_run, "--show", "weights", "--checkpoint", epoch)
    assert "conv1.W (conv) · W · 1×1×2×2" in result.stdout and "∂L/∂θ" not in result.stdout
    W, b = printed_matrices(result.stdout)
    np.testing.assert_array_equal(W, np.round(want["F"], 4))
    np.testing.assert_array_equal(b, np.round(want["b"], 4))


# ---- the views ----------------------------------------------------------------------------------------


VIEWS: list[list[str]] = [
    [],
    ["--show", "deltas"],
    ["--show", "deltas", "--layer", "conv1", "--full"],
    ["--show", "grads"],
    ["--show", "weights"],
    ["--show", "weights", "--full", "--layer", "conv1,dense6"],
    ["--show", "metrics"],
    ["--show", "deltas", "--checkpoint", "all"],
    ["--show", "grads", "--checkpoint", "all", "--precision", "8"],
]


@pytest.mark.parametrize("args", VIEWS, ids=lambda a: " ".join(a) or "summary")
@pytest.mark.parametrize(
    "env", [PLAIN, {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": "1"}], ids=["pipe", "tty"]
)
def test_views_fit_80_columns_without_escape_codes(
    digits_run: Path, dlt_run: Path, args: list[str], env: dict
) -> None:
    """NO_COLOR, in a pipe or on a (forced) terminal: plain text, no line over 80 columns."""
    for run in (digits_run, dlt_run):
        result = invoke("inspect", run, *args, env=env)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip()
        assert_plain_80(result.stdout)


def test_summary_view(digits_run: Path) -> None:
    out = invoke("inspect", digits_run).stdout
    lines = out.splitlines()
    metrics = read_metrics_csv(digits_run)
    best = min(metrics, key=lambda r: (r["val_loss"], r["epoch"]))  # lowest val_loss, earliest on ties
    assert lines[:8] == [
        f"run           digits  ({digits_run})",
        "dataset       digits · limit 200 · val: held out (359)",  # 20 % of the 1797 digits
        "dtype · loss  float32 · softmax_cross_entropy",
        "epochs        2 of 2 · 14 steps at checkpoint 2",
        "status        finished",
        f"best epoch    {int(best['epoch'])}: val_loss {best['val_loss']:.4g}, val_acc "
        f"{100 * best['val_acc']:.1f}% (lowest val_loss)",
        "checkpoints   0–2 (3)",
        "showing       checkpoint 2",
    ]
    assert lines[9] == "layers at checkpoint 2"
    assert lines[10].split() == ["layer", "type", "output", "params", "‖θ‖", "‖∂L/∂θ‖", "mean|δ|", "max|δ|"]
    assert lines[12].split()[:4] == ["conv1", "conv", "16×8×8", "160"]
    assert "mean|δ|, max|δ|: over every element of δ for the 4 probe samples" in out
    assert re.search(r"^loss per epoch .*\* train  o val", out, re.M)
    assert re.search(r"^accuracy per epoch .*\* train", out, re.M)
    assert re.search(r"^loss per step \(smoothed over ~\d+ steps\) .*· raw  \* smoothed", out, re.M)
    assert "learning rate per step" not in out  # a constant lr draws no curve


def read_metrics_csv(run: Path) -> list[dict[str, float]]:
    """metrics.csv read with the csv module (not through cnnbp)."""
    import csv

    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_metrics_and_norm_tables(digits_run: Path) -> None:
    out = invoke("inspect", digits_run, "--show", "metrics").stdout
    lines = out.splitlines()
    assert lines[0] == f"metrics · {digits_run / 'metrics.csv'}"
    assert lines[1].split() == "epoch step train_loss train_acc val_loss val_acc lr seconds".split()
    assert lines[3].split()[:4] == ["0", "0", "-", "-"]  # row 0: no training metrics yet
    assert [line.split()[0] for line in lines[3:6]] == ["0", "1", "2"]
    out = invoke("inspect", digits_run, "--show", "grads", "--checkpoint", "all").stdout
    lines = out.splitlines()
    assert lines[0] == "‖∂L/∂θ‖ per layer (rows, output → input) and checkpoint (columns)"
    assert lines[2].split() == ["epoch", "0", "1", "2"]
    assert [line.split()[0] for line in lines[3:6]] == ["dense6", "conv3", "conv1"]
    assert lines[-1].startswith("‖∂L/∂θ‖: L2 norm of the gradient")


def test_large_maps_render_as_shades(dlt_run: Path) -> None:
    result = invoke("inspect", dlt_run, "--show", "deltas", "--layer", "conv1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert_plain_80(out)
    assert "conv1 (conv) · δ · 6×24×24" in out and "scale: sign, then shade" in out
    body = out.split("conv1 (conv) · δ")[1]  # after the probe input's picture (28 rows of shades)
    rows = [line for line in body.splitlines() if re.match(r"^\s*\d+ [ +\-?░▒▓█]{2,}$", line)]
    assert len(rows) == 6 * 24  # six channels of 24 rows
    assert all(len(line) <= 3 + 2 * 24 for line in rows)  # two characters (sign, shade) per value
    assert any(ch in out for ch in "▓█")
    # a matrix too wide for 80 columns is cut with a marker: dense6.W is 10×192
    out = invoke("inspect", dlt_run, "--show", "weights", "--layer", "dense6").stdout
    assert "… 154 more columns" in out
    assert_plain_80(out)
    # more than eight maps: the rest are counted
    out = invoke("inspect", dlt_run, "--show", "weights", "--layer", "conv3").stdout
    assert "… 64 more maps (--channel N picks one filter; --full shows all)" in out


def test_json_is_one_strict_line(digits_run: Path, tmp_path: Path) -> None:
    """``--json`` of every view parses as strict JSON; inf and NaN follow the one number policy."""
    for view in ("summary", "deltas", "grads", "weights", "metrics"):
        assert inspect_json(digits_run, "--show", view)["view"] == view
    assert inspect_json(digits_run, "--show", "weights", "-c", "all")["view"] == "weights"
    path = tmp_path / "odd.h5"
    shutil.copyfile(ck_path(digits_run, 2), path)

    def edit(f: h5py.File) -> None:
        b = f["grads/dense6/b"][()]
        b[:3] = [np.inf, -np.inf, np.nan]
        f["grads/dense6/b"][...] = b

    rewrite_checkpoint(path, edit)
    data = inspect_json(path, "--show", "grads", "--layer", "dense6")
    assert data["layers"][0]["params"]["b"]["values"][:3] == ["inf", "-inf", None]
    result = invoke("inspect", path, "--show", "grads", "--layer", "dense6")  # text: drawn, not a crash
    assert result.exit_code == 0, result.output
    assert_plain_80(result.stdout)


def test_unreadable_metrics_csv_is_a_note(digits_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "digits"
    shutil.copytree(digits_run, run)
    (run / "metrics.csv").write_bytes(b"\xff\xfe not text\n")
    result = invoke("inspect", run, "--show", "metrics")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"note: {run / 'metrics.csv'}: not UTF-8 text")
    first = result.stdout.splitlines()[0]  # "metrics · <path> /metrics", cut on the left to fit
    assert first.endswith(f"{ck_path(run, 2)} /metrics"[-60:]) and len(first) <= 80


# ---- bad targets and choices ------------------------------------------------------------------------------


def one_error_line(result: Any, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert ESC not in result.stderr
    return lines[0]


def test_bad_files_exit_2_with_one_line(tmp_path: Path, digits_run: Path) -> None:
    one_error_line(invoke("inspect", tmp_path / "nope"), "nope", "no such run folder or checkpoint file")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    one_error_line(invoke("inspect", foreign), "foreign.h5", "not a cnnbp checkpoint")

    noise = tmp_path / "noise.h5"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    one_error_line(invoke("inspect", noise), "noise.h5", "not an HDF5 file")

    real = ck_path(digits_run, 2)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    one_error_line(invoke("inspect", cut, "--show", "deltas"), "cut.h5", "truncated or corrupt")

    newer = tmp_path / "newer.h5"
    shutil.copyfile(real, newer)
    rewrite_checkpoint(newer, lambda f: f.attrs.__setitem__("format_version", 99))
    one_error_line(invoke("inspect", newer), "newer.h5", "newer cnnbp (format 99)")

    # a run folder whose last checkpoint is damaged reports that file
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(cut, run / "checkpoints" / "0003.h5")
    one_error_line(invoke("inspect", run, "--show", "metrics"), "0003.h5", "truncated or corrupt")
    one_error_line(invoke("inspect", tmp_path, "--show", "grads"), "no checkpoints found")


def test_bad_choices_list_what_exists(digits_run: Path) -> None:
    line = one_error_line(invoke("inspect", digits_run, "--show", "deltas", "--layer", "conv9"), "conv9")
    assert "conv1, conv1.relu, pool2, conv3, conv3.relu, pool4, flatten5, dense6" in line
    one_error_line(invoke("inspect", digits_run, "--checkpoint", "7"), "epoch 7", "have 0, 1, 2")
    one_error_line(invoke("inspect", digits_run, "--checkpoint", "seven"), "expected an epoch number")
    one_error_line(
        invoke("inspect", digits_run, "-s", "grads", "-l", "pool2"),
        "layers with parameters: conv1, conv3, dense6",
    )
    one_error_line(invoke("inspect", digits_run, "-s", "deltas", "--sample", "4"), "has 4 samples (0..3)")
    one_error_line(invoke("inspect", digits_run, "-s", "deltas", "--channel", "16"), "conv1 has 16 channels")
    one_error_line(invoke("inspect", digits_run, "-s", "weights", "--channel", "16"), "conv1.W has 16 filt")
    one_error_line(invoke("inspect", digits_run, "--checkpoint", "all"), "--checkpoint all", "not summary")
    one_error_line(
        invoke("inspect", ck_path(digits_run, 1), "--checkpoint", "all", "-s", "grads"), "needs a run folder"
    )
    one_error_line(invoke("inspect", ck_path(digits_run, 1), "--checkpoint", "0"), "not of a file")


def test_targets_file_and_checkpoints_folder(digits_run: Path) -> None:
    data = inspect_json(ck_path(digits_run, 1))
    assert data["checkpoint"]["epoch"] == 1 and data["run"]["checkpoints"] == [0, 1, 2]
    assert inspect_json(digits_run / "checkpoints", "-s", "metrics")["metrics"]["epoch"] == [0, 1, 2]
    out = invoke("inspect", ck_path(digits_run, 1), "-s", "grads").stdout
    assert out.splitlines()[:2] == ["checkpoint 1 of run digits · step 7", str(ck_path(digits_run, 1))]


# ---- the best checkpoint, why a run stopped, curves per step ---------------------------------------------


def test_checkpoint_best_in_every_command_that_reads_one(digits_run: Path, tmp_path: Path) -> None:
    rows = read_metrics_csv(digits_run)
    best = int(min(rows, key=lambda r: (r["val_loss"], r["epoch"]))["epoch"])
    out = invoke("inspect", digits_run, "--checkpoint", "best").stdout
    assert f"showing       checkpoint {best}" in out
    doc = json.loads(invoke("inspect", digits_run, "-c", "best", "--show", "grads", "--json").stdout)
    assert doc["checkpoint"]["epoch"] == best
    result = invoke("export", digits_run, "--checkpoint", "best", "-o", tmp_path / "m.npz", "--format", "npz")
    assert result.exit_code == 0, result.output
    result = invoke("gradcheck", digits_run, "--checkpoint", "best", "--samples", "1", "--json")
    assert result.exit_code == 0, result.output
    assert f"{best:04d}.h5" in json.dumps(json.loads(result.stdout))


def test_an_early_stopped_scheduled_run_says_why_and_draws_its_lr(tmp_path: Path) -> None:
    from tests.cli.conftest import tiny_config, train_run

    cfg = tiny_config("es", epochs=8, every=1)
    cfg["train"].update(lr=1e-9, early_stopping={"patience": 2, "min_delta": 0.01},
                        schedule={"type": "constant", "warmup": 3})  # fmt: skip
    run = train_run(tmp_path, cfg)
    out = invoke("inspect", run).stdout
    assert_plain_80(out)
    assert re.search(r"^status        stopped early at epoch 3: val_loss has not improved by more than\n"
                     r"              0\.01 for 2 epochs \(best \S+ at epoch 1\)$", out, re.M)  # fmt: skip
    assert "learning rate per step" in out  # the warm-up changes it
    doc = json.loads(invoke("inspect", run, "--json").stdout)
    assert doc["run"]["status"]["state"] == "early_stopped"
    assert doc["steps"]["step"] == list(range(1, 7)) and len(doc["steps"]["lr"]) == 6


# ---- activations, histograms, health, several runs (issue 16) --------------------------------------------


def test_activations_view_is_the_h5_with_the_probe_input(digits_run: Path) -> None:
    path = ck_path(digits_run, 2)
    data = inspect_json(digits_run, "--show", "activations", "--layer", "conv1.relu", "--sample", "1")
    want = read_h5(path, "activations/conv1.relu")[1]
    np.testing.assert_array_equal(np.array(data["layers"][0]["activation"], dtype=want.dtype), want)
    result = invoke("inspect", digits_run, "--show", "activations", "--layer", "conv1.relu", "--sample", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert_plain_80(out)
    target = int(read_h5(path, "probe/y")[1])
    assert f"input · 1×8×8 · target {target}" in out and "conv1.relu (relu) · a · 16×8×8" in out
    x = read_h5(path, "probe/x")[1, 0]  # the input picture: one row of shades per image row
    picture = out.split("input · 1×8×8")[1].splitlines()[3:11]
    assert [int(line.split()[0]) for line in picture] == list(range(1, 9))
    for row, line in zip(x, picture, strict=True):
        blank = [line[2 + 2 * j : 4 + 2 * j] == "  " for j in range(8)]
        assert blank == [v == 0 for v in row]  # a blank cell exactly where the pixel is 0
    deltas = invoke("inspect", digits_run, "--show", "deltas", "--layer", "conv1").stdout
    assert f"input · 1×8×8 · target {int(read_h5(path, 'probe/y')[0])}" in deltas


def test_old_checkpoints_without_activations_still_read(digits_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.h5"
    shutil.copyfile(ck_path(digits_run, 2), path)
    rewrite_checkpoint(path, lambda f: f.__delitem__("activations"))
    one_error_line(invoke("inspect", path, "--show", "activations"), "has no /activations", "--show deltas")
    assert invoke("inspect", path, "--show", "deltas").exit_code == 0
    out = invoke("inspect", path, "--show", "health").stdout
    assert "not recorded: the checkpoint has no /activations (an older run)" in out
    assert_plain_80(out)


def test_histograms_render_at_80_columns_with_the_h5s_numbers(digits_run: Path) -> None:
    result = invoke("inspect", digits_run, "--show", "histograms", "--layer", "conv1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert_plain_80(out)
    block = out.split("conv1.W (conv) · θ · 144 values each\n")[1].split("\n\n")[0].splitlines()
    assert [line.split("│")[0].strip() for line in block[:3]] == ["0", "1", "2"]  # one row per checkpoint
    w = read_h5(ck_path(digits_run, 2), "weights/conv1/W").astype(np.float64)
    assert block[2].endswith(f"{w.mean():.3g} ± {w.std():.3g}")
    assert block[3].strip().startswith("└") and block[4].strip()  # the shared axis and its ticks
    data = inspect_json(digits_run, "--show", "histograms", "--layer", "conv1")
    grads = next(b for b in data["histograms"] if b["name"] == "conv1.W" and b["quantity"] == "grads")
    assert all(sum(r["counts"]) == 144 for r in grads["rows"])  # every value in one of the shared bins
    everything = [read_h5(ck_path(digits_run, e), "grads/conv1/W") for e in range(3)]
    assert grads["edges"][0] == pytest.approx(min(float(a.min()) for a in everything))
    assert grads["edges"][-1] == pytest.approx(max(float(a.max()) for a in everything))


def test_health_view_fits_and_flags_what_the_thresholds_say(default_run: Path, digits_run: Path) -> None:
    out = invoke("inspect", default_run, "--show", "health").stdout
    assert_plain_80(out)
    assert "verdicts at checkpoint 15\nok: nothing flagged" in out
    table = invoke("inspect", default_run, "--show", "health", "-c", "all").stdout
    assert_plain_80(table)
    assert re.search(r"^epoch\s+0\s+1\s+2", table, re.M) and "conv3.relu dead" in table
    flagged = invoke("inspect", digits_run, "--show", "health", "--threshold", "update_low=1")
    assert flagged.exit_code == 0
    assert_plain_80(flagged.stdout)
    assert "! conv1.W: update ratio lr·‖∂L/∂θ‖/‖θ‖" in flagged.stdout
    assert "is below 1 (barely moves)" in flagged.stdout
    bad = invoke("inspect", digits_run, "--show", "health", "--threshold", "ded=1")
    one_error_line(bad, "did you mean 'dead'")
    assert inspect_json(digits_run, "--show", "health", "-c", "all")["view"] == "health"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding two small digits runs that differ in the learning rate."""
    from tests.cli.conftest import train_run

    folder = tmp_path_factory.mktemp("two")
    for name, lr in (("slow", 0.01), ("fast", 0.1)):
        args = ["--name", name, "--epochs", "2", "--set", "data.limit=150", "--set", f"train.lr={lr}"]
        train_run(folder, None, *args)
    return folder / "runs"


def test_several_runs_side_by_side(two_runs: Path) -> None:
    runs = [two_runs / "slow", two_runs / "fast"]
    for show in ("summary", "metrics", "health"):
        result = invoke("inspect", *runs, "--show", show)
        assert result.exit_code == 0, result.output
        assert_plain_80(result.stdout)
    out = invoke("inspect", *runs).stdout
    lines = out.splitlines()
    assert lines[0] == "2 runs side by side"
    slow = [c["val_acc"] for c in read_metrics_csv(runs[0])]
    assert re.match(rf"^1\s+slow\s+finished\s+2/2\s.*\s{100 * slow[-1]:.1f}%", lines[3])
    assert re.search(r"^train\.lr\s+0\.01\s+0\.1$", out, re.M)  # the one config key that differs
    assert "val_loss per epoch" in out and "loss per step (smoothed)" in out and "1 slow  2 fast" in out
    by_name = invoke("inspect", two_runs / "fast", two_runs / "slow").stdout
    assert invoke("inspect", two_runs).stdout == by_name  # a folder holding runs: its runs by name
    doc = json.loads(invoke("inspect", *runs, "--json").stdout)
    assert [r["label"] for r in doc["runs"]] == ["slow", "fast"]
    assert {"key": "train.lr", "values": [0.01, 0.1]} in doc["differences"]
    one_error_line(invoke("inspect", *runs, "--show", "deltas"), "--show deltas: looks at one run")
    one_error_line(invoke("inspect", runs[0], two_runs / "nope"), "nope: no such folder")


def test_a_diverged_run_says_where_it_stopped(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    argv = ["train", "--out", tmp_path / "runs", "--name", "boom", "--epochs", "3", "--quiet",
            "--set", "data.limit=200", "--set", "train.lr=1000"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in argv], env=PLAIN)
    assert result.exit_code == 1 and "diverged in epoch 1" in result.output
    out = invoke("inspect", tmp_path / "runs" / "boom").stdout
    assert_plain_80(out)
    assert "epochs        0 of 3 (diverged in epoch 1) · 0 steps at checkpoint 0" in out
    assert re.search(r"^status        diverged in epoch 1 at step \d+ \(batch \d+ of 7\)", out, re.M)


def test_heatmaps_in_a_256_colour_terminal_use_its_palette(dlt_run: Path) -> None:
    env = {"COLUMNS": "80", "FORCE_COLOR": "1", "TERM": "xterm-256color", "COLORTERM": ""}
    result = invoke("inspect", dlt_run, "--show", "deltas", "--layer", "conv1", env=env)
    assert result.exit_code == 0, result.output
    assert "\x1b[48;5;" in result.stdout and "\x1b[48;2;" not in result.stdout  # indices, no rounded RGB
