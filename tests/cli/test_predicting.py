"""``cnnbp.predicting``: the seeds' MSE network outputs exactly the seed formulas' O, a softmax run gives
probabilities whose top class agrees with evaluate's accuracy, and inputs come from NPZ, IDX, HDF5 or
an image (resized with a note), scaled as training scales them."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnbp.config import load_config
from cnnbp.data import load_dataset
from cnnbp.errors import UserError
from cnnbp.evaluating import evaluate
from cnnbp.predicting import IMAGE_HINT, predict
from tests.cli.conftest import SEED_X, seed_expected, seed_forward


def raw_val(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's validation images before data.scale (digits values 0-16) and their labels."""
    cfg = load_config(run / "config.yaml")
    spec = type(cfg.data)(**{**cfg.data.__dict__, "scale": None})
    data = load_dataset(spec, cfg.model.input_shape, 10, np.dtype(cfg.dtype), cfg.seed)
    return data.x_val, data.y_val


def test_an_mse_run_outputs_the_seed_formulas(seeds_run: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.array(SEED_X))  # one sample of 3×3 (the model takes 1×3×3)
    result = predict(seeds_run, tmp_path / "x.npz")
    assert result.chosen == "last (the run has no validation data)" and result.epoch == 1
    want = seed_forward(seed_expected()[1]["F"], seed_expected()[1]["b"], np.array(SEED_X)).ravel()
    assert result.kind == "outputs" and result.values.shape == (1, 4)
    np.testing.assert_allclose(result.values[0], want, rtol=1e-14)
    assert result.top.tolist() == [int(np.argmax(want))]


def test_probabilities_and_top_classes_agree_with_evaluate(digits_run: Path, tmp_path: Path) -> None:
    x, y = raw_val(digits_run)
    np.savez(tmp_path / "val.npz", x=x)
    result = predict(digits_run, tmp_path / "val.npz", checkpoint=2)
    assert result.kind == "probabilities" and result.values.shape == (359, 10)
    np.testing.assert_allclose(result.values.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(result.top, result.values.argmax(axis=1))
    assert np.mean(result.top == y) == evaluate(digits_run, checkpoint=2).accuracy


def test_idx_and_hdf5_inputs_and_one_sample(digits_run: Path, tmp_path: Path) -> None:
    x, _ = raw_val(digits_run)
    want = predict(digits_run, _npz(tmp_path / "a.npz", x[:3]), checkpoint=1).values
    images = x[:3, 0].astype(np.uint8)  # 3×8×8 ubyte, as an MNIST images file
    header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    (tmp_path / "x.idx.gz").write_bytes(gzip.compress(header + images.tobytes()))
    np.testing.assert_array_equal(predict(digits_run, tmp_path / "x.idx.gz", checkpoint=1).values, want)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = x[:3]
    np.testing.assert_array_equal(predict(digits_run, tmp_path / "x.h5", checkpoint=1).values, want)
    one = predict(digits_run, _npz(tmp_path / "one.npz", x[1, 0]), checkpoint=1)  # one 8×8 image
    np.testing.assert_allclose(one.values, want[1:2], rtol=1e-6)  # float32: another batch, another sum order


def _npz(path: Path, x: np.ndarray) -> Path:
    np.savez(path, x=x)
    return path


def test_an_image_is_resized_and_read_in_0_1(digits_run: Path, tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    pattern = (np.random.default_rng(1).random((8, 8)) > 0.5).astype(np.uint8) * 255
    pil.fromarray(pattern).resize((16, 16), pil.Resampling.NEAREST).save(tmp_path / "d.png")
    result = predict(digits_run, tmp_path / "d.png", checkpoint=2)
    assert result.notes[0] == "resized from 16×16 to 8×8 (box filter)"
    # the same pixels as values 0/1: 16 × data.scale (1/16) from an array
    same = predict(digits_run, _npz(tmp_path / "d.npz", pattern / 255 * 16), checkpoint=2)
    np.testing.assert_array_equal(result.values, same.values)


def test_missing_pillow_and_bad_inputs_are_one_line(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(UserError) as info:
        predict(digits_run, tmp_path / "d.png")
    assert str(info.value) == IMAGE_HINT == "reading images needs Pillow: pip install 'cnnbp[image]'"
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 8, 8)))
    with pytest.raises(UserError, match=r"k.npz: no array 'x' \(found: images\)"):
        predict(digits_run, tmp_path / "k.npz")
    with pytest.raises(UserError, match=r"has per-sample shape \(7, 7\) but the model's input_shape is"):
        predict(digits_run, _npz(tmp_path / "s.npz", np.zeros((2, 7, 7))))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not an NPZ, IDX, HDF5 or image file"):
        predict(digits_run, tmp_path / "notes.txt")
