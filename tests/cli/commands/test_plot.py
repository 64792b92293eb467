"""Tests of ``cnnbp plot`` (:mod:`cnnbp.plotting`): every kind writes a figure that reads back as a valid
PNG, SVG or PDF file; the seeds' 2×2 δ map is drawn as an annotated matrix with the seeds' numbers and
1-based indices; large maps are heatmaps centred at 0 with a colour bar; mistakes and a missing
matplotlib are one ``error:`` line with exit code 2."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnbp import inspection as ins
from cnnbp.app import app
from tests.cli.conftest import seed_expected

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}


def invoke(*args: object):  # noqa: ANN201 - typer's Result
    return CliRunner().invoke(app, [str(a) for a in args], env=PLAIN)


def plot_json(*args: object) -> dict:
    result = invoke("plot", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def check_png(path: Path, report: dict) -> None:
    """A PNG whose pixel size is the figure's inches at 120 dpi (more or less the tight box)."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert 0.6 * report["width_in"] * 120 < w < 1.3 * report["width_in"] * 120
    assert 0.6 * report["height_in"] * 120 < h < 1.3 * report["height_in"] * 120


@pytest.mark.parametrize(
    ("kind", "suffix", "layers"),
    [
        ("curves", "svg", []),
        ("deltas", "png", ["conv1"]),
        ("activations", "pdf", ["dense6"]),
        ("weights", "png", ["dense6"]),
        ("histograms", "png", ["conv3,dense6"]),
        ("health", "pdf", []),
    ],
)  # fmt: skip (a few layers each: the figures stay small and quick)
def test_every_kind_writes_a_file_that_reads_back(
    digits_run: Path, tmp_path: Path, kind: str, suffix: str, layers: list[str]
) -> None:
    out = tmp_path / f"{kind}.{suffix}"
    report = plot_json(digits_run, "--kind", kind, "-o", out, *(f"--layer={x}" for x in layers))
    assert report["path"] == str(out) and report["format"] == suffix and report["bytes"] == out.stat().st_size
    if suffix == "png":
        check_png(out, report)
    elif suffix == "svg":
        root = ET.parse(out).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("width", "").endswith("pt")
        width_pt = float(root.get("width", "0pt")[:-2])
        assert 0.6 * report["width_in"] * 72 < width_pt < 1.3 * report["width_in"] * 72
    else:
        data = out.read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        assert data.count(b"/Type /Page") >= 1 and b"startxref" in data


def test_several_runs_overlaid_and_a_folder_of_runs(
    digits_run: Path, seeds_run: Path, tmp_path: Path
) -> None:
    report = plot_json(digits_run, seeds_run, "-o", tmp_path / "both.png")
    assert report["runs"] == [str(digits_run), str(seeds_run)]
    folder = plot_json(digits_run.parent, "-o", tmp_path / "folder.png")  # runs/ holds one run here
    assert folder["runs"] == [str(digits_run)]


def test_small_maps_are_annotated_matrices_with_the_seeds_numbers(seeds_run: Path) -> None:
    from cnnbp.plotting import probe_figure

    ck = ins.load_checkpoint(seeds_run, 0)
    fig = probe_figure(ck, ins.select_layers(ck, ["conv1"], params_only=False), 0, None, "deltas")
    delta = seed_expected()[0]["delta"]  # δ_ij = O_ij − y_ij, worked out term by term
    conv_axes = [ax for ax in fig.get_axes() if ax.images and ax.get_visible() and len(ax.texts) == 4]
    assert len(conv_axes) == 1
    ax = conv_axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    for i in range(2):
        for j in range(2):
            assert cells[(i, j)] == f"{delta[i, j]:.3f}"  # four significant digits of the largest, 3.275
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]  # indices from 1, as δ₁₁ in the notes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2"]
    image = ax.images[0]
    assert image.norm.vmin == -image.norm.vmax == -np.abs(delta).max()  # diverging, centred at 0


def test_large_maps_are_heatmaps_centred_at_0_with_a_colour_bar(dlt_run: Path) -> None:
    from cnnbp.plotting import probe_figure

    ck = ins.load_checkpoint(dlt_run)
    fig = probe_figure(ck, ins.select_layers(ck, ["conv1"], params_only=False), 0, None, "deltas")
    maps = [ax for ax in fig.get_axes() if ax.images and ax.get_images()[0].get_array().shape == (24, 24)]
    assert len(maps) == 6 and not any(ax.texts for ax in maps)  # 6 channels of 24×24: no numbers
    top = float(np.abs(ck.deltas["conv1"][0]).max())
    assert all(ax.images[0].norm.vmin == -top and ax.images[0].norm.vmax == top for ax in maps)
    assert any(ax.get_label() == "<colorbar>" for ax in fig.get_axes())


def test_mistakes_are_one_line(digits_run: Path, seeds_run: Path, tmp_path: Path) -> None:
    existing = tmp_path / "x.png"
    existing.write_bytes(b"keep")
    for args, message in (
        (
            [digits_run, "-o", tmp_path / "x.gif"],
            "error: -o " + str(tmp_path / "x.gif") + ": the suffix must",
        ),
        ([digits_run, "-o", existing], f"error: {existing}: already exists; --force overwrites it"),
        (
            [digits_run, seeds_run, "--kind", "deltas", "-o", tmp_path / "d.png"],
            "error: --kind deltas: draws one",
        ),
        (
            [digits_run, "--kind", "deltas", "--layer", "nope", "-o", tmp_path / "d.png"],
            "error: --layer: no layer",
        ),
        ([tmp_path / "nothing", "-o", tmp_path / "n.png"], "no such run folder or checkpoint file"),
        (
            [digits_run, "-k", "deltas", "--channel", "30", "-o", tmp_path / "c.png"],
            "error: --channel 30: conv1 has",
        ),
    ):
        result = invoke("plot", *args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert message in result.output, result.output
    assert existing.read_bytes() == b"keep"
    one = plot_json(digits_run, "-k", "deltas", "--channel", "3", "-l", "conv1", "-o", tmp_path / "c3.png")
    assert one["checkpoint"] == 2  # one channel of δ; the probe input (one channel) is drawn whole


def test_without_matplotlib_one_line_and_exit_2(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke("plot", digits_run, "-o", tmp_path / "c.png")
    assert result.exit_code == 2
    assert result.output == "error: cnnbp plot: needs matplotlib; pip install 'cnnbp[plot]'\n"
    assert not (tmp_path / "c.png").exists()
