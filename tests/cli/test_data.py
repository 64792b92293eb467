"""Tests for the dataset loaders: every source, the split, and each user error.

Every expected value comes from the data the test itself writes (or, for digits, from the published
facts of the UCI set), never from the code under test.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnbp.data import Dataset, DataSpec, load_dataset, load_digits, read_idx
from cnnbp.errors import UserError

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# IDX type codes and the big-endian numpy dtypes they stand for.
IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


# --------------------------------------------------------------------------------------------------------
# helpers that write test files byte by byte
# --------------------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, big_endian_dtype: str = "u1") -> bytes:
    """The IDX encoding of ``arr``: magic, big-endian dimensions, then the big-endian values."""
    dt = np.dtype(big_endian_dtype)
    header = bytes([0, 0, IDX_CODES[dt], arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dt).tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool, big_endian_dtype: str = "u1") -> Path:
    """Write ``arr`` as an IDX file, gzip-compressed when ``gz``."""
    data = idx_bytes(arr, big_endian_dtype)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist_folder(
    folder: Path,
    n_train: int = 6,
    n_test: int = 3,
    gz: tuple[bool, bool, bool, bool] = (True, False, True, False),
) -> dict[str, np.ndarray]:
    """Write a tiny MNIST-like folder (28×28 uint8 images, labels 0..9); return the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    arrays = {
        MNIST_NAMES[0]: rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        MNIST_NAMES[1]: (np.arange(n_train) * 7 % 10).astype(np.uint8),
        MNIST_NAMES[2]: rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        MNIST_NAMES[3]: (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }
    for (name, arr), z in zip(arrays.items(), gz, strict=True):
        write_idx(folder / (name + (".gz" if z else "")), arr, gz=z)
    return arrays


def ids_data(n: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 2×3 samples whose every value is the sample's index, and labels ``index % k``."""
    x = np.repeat(np.arange(n, dtype=np.float64), 6).reshape(n, 2, 3)
    y = (np.arange(n) % k).astype(np.int64)
    return x, y


def load(
    spec: DataSpec,
    shape: tuple[int, ...] = (2, 3),
    n_out: int = 10,
    dtype: object = np.float32,
    seed: int = 0,
    base_dir: Path | None = None,
) -> Dataset:
    """Call ``load_dataset`` with test defaults."""
    return load_dataset(spec, shape, n_out, np.dtype(dtype), seed, base_dir)


def expect_error(fn: Callable[[], object], place: str | Path, *problem: str) -> str:
    """Assert ``fn`` raises one-line UserError starting with ``place:`` and mentioning each ``problem``."""
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{place}:"), msg
    for p in problem:
        assert p.lower() in msg.lower(), msg
    return msg


# --------------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------------


def test_load_digits_raw_arrays() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8
    assert y.shape == (1797,) and y.dtype == np.uint8
    assert x.min() == 0 and x.max() == 16
    assert set(np.unique(y).tolist()) == set(range(10))
    # Pinned when the file was made from scikit-learn 1.9.1's bundled copy (sklearn.datasets.load_digits).
    assert hashlib.sha256(x.tobytes()).hexdigest() == (
        "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3"
    )
    assert hashlib.sha256(y.tobytes()).hexdigest() == (
        "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0"
    )


def test_digits_dataset_no_split_no_scale() -> None:
    d = load(DataSpec("digits", val_fraction=0.0), shape=(1, 8, 8), dtype=np.float64)
    assert d.x_train.shape == (1797, 1, 8, 8) and d.x_train.dtype == np.float64
    assert d.y_train.shape == (1797,) and d.y_train.dtype == np.int64
    assert d.x_val.shape == (0, 1, 8, 8) and d.y_val.shape == (0,)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 16.0
    assert set(np.unique(d.y_train).tolist()) == set(range(10))
    assert not d.val_is_test
    assert "digits" in d.description and "1797" in d.description


def test_digits_split_scale_and_flatten() -> None:
    d = load(DataSpec("digits", scale=1 / 16), shape=(64,), dtype=np.float32)
    # round(0.2 * 1797) = round(359.4) = 359 validation samples
    assert d.x_val.shape == (359, 64) and d.x_train.shape == (1797 - 359, 64)
    assert d.x_train.dtype == np.float32 and d.x_val.dtype == np.float32
    assert d.x_train.max() == np.float32(1.0) and d.x_train.min() == 0.0


def test_digits_wrong_input_shape() -> None:
    expect_error(lambda: load(DataSpec("digits"), shape=(1, 28, 28)), "data.source", "(8, 8)", "(1, 28, 28)")


# --------------------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("be_dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool, be_dtype: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(be_dtype).newbyteorder("="))
    if be_dtype == "u1":
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    out = read_idx(write_idx(tmp_path / "a.idx", arr, gz=gz, big_endian_dtype=be_dtype))
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.dtype(be_dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path: Path) -> None:
    arr = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    gz_named_plain = tmp_path / "labels"  # gzip content, no .gz suffix
    gz_named_plain.write_bytes(gzip.compress(idx_bytes(arr)))
    plain_named_gz = tmp_path / "labels.gz"  # raw content with a .gz suffix
    plain_named_gz.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(gz_named_plain), arr)
    np.testing.assert_array_equal(read_idx(plain_named_gz), arr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_idx_folder_mixed_gz(tmp_path: Path, dtype: type) -> None:
    written = make_mnist_folder(tmp_path / "mnist")
    d = load(DataSpec("idx", path=str(tmp_path / "mnist")), shape=(1, 28, 28), dtype=dtype)
    assert d.val_is_test
    assert d.x_train.shape == (6, 1, 28, 28) and d.x_val.shape == (3, 1, 28, 28)
    assert d.x_train.dtype == dtype and d.x_val.dtype == dtype
    assert d.y_train.dtype == np.int64
    np.testing.assert_array_equal(d.x_train[:, 0], written[MNIST_NAMES[0]].astype(dtype))
    np.testing.assert_array_equal(d.y_train, [0, 7, 4, 1, 8, 5])
    np.testing.assert_array_equal(d.y_val, [0, 3, 6])
    assert (
        str(tmp_path / "mnist") in d.description and "6 train" in d.description and "3 test" in d.description
    )


def test_idx_flatten_scale_limit_and_relative_path(tmp_path: Path) -> None:
    written = make_mnist_folder(tmp_path / "data" / "mnist", gz=(False, False, False, False))
    spec = DataSpec("idx", path="data/mnist", scale=1 / 255, limit=4, val_fraction=0.5)
    d = load(spec, shape=(784,), base_dir=tmp_path)
    assert d.x_train.shape == (4, 784) and d.x_val.shape == (3, 784)  # limit leaves the test split alone
    assert d.x_train.dtype == np.float32
    expected_all = written[MNIST_NAMES[0]].reshape(6, 784).astype(np.float32) * np.float32(1 / 255)
    # each kept row is one of the written rows, each at most once
    matches = [int(np.flatnonzero((expected_all == row).all(axis=1))[0]) for row in d.x_train]
    assert len(set(matches)) == 4
    labels = written[MNIST_NAMES[1]].astype(np.int64)
    np.testing.assert_array_equal(d.y_train, labels[matches])
    assert d.x_train.max() <= 1.0


def test_idx_missing_folder_and_not_a_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    expect_error(
        lambda: load(DataSpec("idx", path=str(missing)), shape=(1, 28, 28)), missing, "folder not found",
        "point data.path at the folder holding the four MNIST IDX files", "--set data.path=/path/to/mnist",
    )  # fmt: skip
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    expect_error(lambda: load(DataSpec("idx", path=str(a_file)), shape=(1, 28, 28)), a_file, "not a folder")


def test_idx_missing_one_file(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    msg = expect_error(
        lambda: load(DataSpec("idx", path=str(tmp_path)), shape=(1, 28, 28)), tmp_path, "missing"
    )
    assert "t10k-labels-idx1-ubyte" in msg
    assert "train-images" not in msg and "train-labels" not in msg and "t10k-images" not in msg


def test_idx_wrong_magic(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros(3, dtype=np.uint8))))  # a labels file in its place
    expect_error(
        lambda: load(DataSpec("idx", path=str(tmp_path)), shape=(1, 28, 28)),
        bad,
        "magic",
        "0x00000801",
        "0x00000803",
    )


def test_read_idx_garbage_magic(tmp_path: Path) -> None:
    p = tmp_path / "junk"
    p.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    expect_error(lambda: read_idx(p), p, "magic", "0x12345678")


def test_idx_truncated_data(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    full = idx_bytes(np.zeros((6, 28, 28), dtype=np.uint8))
    p.write_bytes(gzip.compress(full[:-100]))  # a valid gzip of a short IDX file
    msg = expect_error(
        lambda: load(DataSpec("idx", path=str(tmp_path)), shape=(1, 28, 28)), p, "truncated", "6×28×28"
    )
    assert str(6 * 28 * 28) in msg and str(6 * 28 * 28 - 100) in msg


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    p = tmp_path / "short"
    p.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 5))
    expect_error(lambda: read_idx(p), p, "truncated", "header")


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    p = tmp_path / "a.gz"
    blob = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(10, 20)))
    p.write_bytes(blob[: len(blob) // 2])
    expect_error(lambda: read_idx(p), p, "gzip", "truncated")


def test_idx_corrupt_gzip_stream(tmp_path: Path) -> None:
    p = tmp_path / "a.gz"
    blob = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(10, 20))))
    blob[-8:-4] = bytes(b ^ 0xFF for b in blob[-8:-4])  # break the CRC32 in the gzip trailer
    p.write_bytes(bytes(blob))
    expect_error(lambda: read_idx(p), p, "gzip", "corrupt")


def test_idx_label_out_of_range_and_count_mismatch(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, np.array([0, 1, 2, 10, 4, 5], dtype=np.uint8), gz=False)
    expect_error(
        lambda: load(DataSpec("idx", path=str(tmp_path)), shape=(1, 28, 28)), labels, "label 10", "sample 3"
    )
    write_idx(labels, np.array([0, 1, 2, 3, 4], dtype=np.uint8), gz=False)  # 5 labels for 6 images
    msg = expect_error(lambda: load(DataSpec("idx", path=str(tmp_path)), shape=(1, 28, 28)), labels, "5", "6")
    assert "match" in msg


def test_mnist_real_if_present() -> None:
    if not all(any((MNIST_DIR / (n + s)).is_file() for s in ("", ".gz")) for n in MNIST_NAMES):
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (only the shared workspace has it)")
    d = load(DataSpec("idx", path=str(MNIST_DIR)), shape=(1, 28, 28), dtype=np.float32)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_val.shape == (10000, 1, 28, 28)
    assert d.y_train.shape == (60000,) and d.y_val.shape == (10000,)
    assert d.y_train[0] == 5
    assert d.val_is_test


# --------------------------------------------------------------------------------------------------------
# NPZ
# --------------------------------------------------------------------------------------------------------


def test_npz_with_test_split_keeps_dtype(tmp_path: Path) -> None:
    x, y = ids_data(8)
    xt, yt = ids_data(3)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x, y_train=y, x_test=xt + 100, y_test=yt)
    for dt in (np.float32, np.float64):
        d = load(DataSpec("npz", path=str(p)), dtype=dt)
        assert d.val_is_test
        assert d.x_train.dtype == dt and d.x_val.dtype == dt
        np.testing.assert_array_equal(d.x_train, x.astype(dt))
        np.testing.assert_array_equal(d.x_val, (xt + 100).astype(dt))
        np.testing.assert_array_equal(d.y_val, yt)
        assert d.y_train.dtype == np.int64


def test_npz_scale_keeps_float32(tmp_path: Path) -> None:
    x = np.full((4, 2, 3), 200, dtype=np.uint8)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x, y_train=np.array([0, 1, 2, 3]))
    d = load(DataSpec("npz", path=str(p), scale=0.5, val_fraction=0.0), dtype=np.float32)
    assert d.x_train.dtype == np.float32
    assert np.all(d.x_train == np.float32(100.0))


def test_npz_two_d_targets_and_integral_float_labels(tmp_path: Path) -> None:
    x, _ = ids_data(5)
    targets = np.eye(4)[[0, 1, 2, 3, 0]]
    p = tmp_path / "t.npz"
    np.savez(p, x_train=x, y_train=targets)
    d = load(DataSpec("npz", path=str(p), val_fraction=0.0), n_out=4, dtype=np.float32)
    assert d.y_train.shape == (5, 4) and d.y_train.dtype == np.float32
    np.testing.assert_array_equal(d.y_train, targets.astype(np.float32))
    p2 = tmp_path / "f.npz"
    np.savez(p2, x_train=x, y_train=np.array([0.0, 3.0, 1.0, 2.0, 3.0]))
    d2 = load(DataSpec("npz", path=str(p2), val_fraction=0.0), n_out=4)
    assert d2.y_train.dtype == np.int64
    np.testing.assert_array_equal(d2.y_train, [0, 3, 1, 2, 3])


def test_npz_relative_path_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = ids_data(4)
    np.savez(tmp_path / "rel.npz", x_train=x, y_train=y)
    monkeypatch.chdir(tmp_path)
    d = load(DataSpec("npz", path="rel.npz", val_fraction=0.0))
    assert d.x_train.shape == (4, 2, 3)


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


def test_npz_errors(tmp_path: Path) -> None:
    x, y = ids_data(6)
    missing = tmp_path / "missing.npz"
    expect_error(lambda: load(DataSpec("npz", path=str(missing))), missing, "not found")

    not_zip = tmp_path / "text.npz"
    not_zip.write_text("hello, not a zip")
    expect_error(lambda: load(DataSpec("npz", path=str(not_zip))), not_zip, "not an .npz")

    npy = tmp_path / "plain.npz"
    with npy.open("wb") as fh:
        np.save(fh, x)  # an .npy array, not an archive
    expect_error(lambda: load(DataSpec("npz", path=str(npy))), npy, "not an .npz")

    good = _npz(tmp_path, x_train=x, y_train=y)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    expect_error(lambda: load(DataSpec("npz", path=str(truncated))), truncated, "npz")

    p = _npz(tmp_path, x_train=x, labels=y)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "missing key", "y_train", "labels")

    p = _npz(tmp_path, x_train=x, y_train=y, x_test=x)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "x_test", "y_test")

    obj = np.empty(6, dtype=object)
    obj[:] = [[1], [1, 2], None, "a", 3, 4.0]
    p = _npz(tmp_path, x_train=x, y_train=obj)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "y_train", "object")

    p = _npz(tmp_path, x_train=np.array(["a"] * 6), y_train=y)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "x_train", "non-numeric")

    p = _npz(tmp_path, x_train=x.reshape(6, 6), y_train=y)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "x_train", "(6,)", "(2, 3)")

    x_nan = x.copy()
    x_nan[4, 1, 2] = np.nan
    p = _npz(tmp_path, x_train=x_nan, y_train=y)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "NaN", "sample 4")

    x_inf = x.copy()
    x_inf[2, 0, 0] = -np.inf
    p = _npz(tmp_path, x_train=x_inf, y_train=y)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "Inf", "sample 2")

    t = np.zeros((6, 10))
    t[5, 3] = np.inf
    p = _npz(tmp_path, x_train=x, y_train=t)
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "y_train", "Inf", "sample 5")

    p = _npz(tmp_path, x_train=x, y_train=np.array([0.0, 1.0, np.nan, 2.0, 3.0, 4.0]))
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "y_train", "NaN", "sample 2")

    p = _npz(tmp_path, x_train=x, y_train=np.array([0, 1, -1, 2, 3, 4]))
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "negative", "-1", "sample 2")

    p = _npz(tmp_path, x_train=x, y_train=np.array([0, 1, 2, 3, 4, 12]))
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "label 12", "sample 5", "10 outputs")

    p = _npz(tmp_path, x_train=x, y_train=np.array([0, 1, 2.5, 3, 4, 5]))
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "non-integer", "2.5")

    p = _npz(tmp_path, x_train=x, y_train=np.zeros((6, 3)))
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "3 target columns", "10 outputs")

    p = _npz(tmp_path, x_train=x, y_train=y[:5])
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "6", "5", "match")

    p = _npz(tmp_path, x_train=x[:0], y_train=y[:0])
    expect_error(lambda: load(DataSpec("npz", path=str(p))), p, "no samples")

    p = _npz(tmp_path, x_train=x, y_train=y)
    expect_error(lambda: load(DataSpec("npz", path=str(p), scale=1e300)), p, "overflow", "float32")


# --------------------------------------------------------------------------------------------------------
# HDF5
# --------------------------------------------------------------------------------------------------------


def test_hdf5_default_and_custom_keys(tmp_path: Path) -> None:
    x, y = ids_data(7)
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["x_train"] = x
        f["y_train"] = y
        f["grp/images"] = x[:3] + 50
        f["grp/labels"] = y[:3]
    d = load(DataSpec("hdf5", path=str(p), val_fraction=0.0), dtype=np.float64)
    assert not d.val_is_test and d.x_train.dtype == np.float64
    np.testing.assert_array_equal(d.x_train, x)
    keys = {"x_train": "x_train", "y_train": "y_train", "x_test": "grp/images", "y_test": "grp/labels"}
    d = load(DataSpec("hdf5", path=str(p), keys=keys), dtype=np.float32)
    assert d.val_is_test
    np.testing.assert_array_equal(d.x_val, (x[:3] + 50).astype(np.float32))
    np.testing.assert_array_equal(d.y_val, y[:3])


def test_hdf5_errors(tmp_path: Path) -> None:
    x, y = ids_data(5)
    not_h5 = tmp_path / "fake.h5"
    not_h5.write_bytes(b"definitely not hdf5" * 10)
    expect_error(lambda: load(DataSpec("hdf5", path=str(not_h5))), not_h5, "HDF5")

    missing = tmp_path / "none.h5"
    expect_error(lambda: load(DataSpec("hdf5", path=str(missing))), missing, "not found")

    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["x_train"] = x
        f["targets"] = y
        f.create_group("grp")
    expect_error(lambda: load(DataSpec("hdf5", path=str(p))), p, "no dataset", "y_train")
    expect_error(
        lambda: load(DataSpec("hdf5", path=str(p), keys={"y_train": "targets", "x_test": "xt"})), p, "xt"
    )
    expect_error(lambda: load(DataSpec("hdf5", path=str(p), keys={"y_train": "grp"})), p, "group")
    expect_error(
        lambda: load(DataSpec("hdf5", path=str(p), keys={"labels": "targets"})), "data.keys", "labels"
    )


# --------------------------------------------------------------------------------------------------------
# inline
# --------------------------------------------------------------------------------------------------------


def test_inline_ok() -> None:
    spec = DataSpec("inline", x=[[0, 1], [2, 3], [4, 5]], y=[1, 0, 1], val_fraction=0.0)
    d = load(spec, shape=(2,), n_out=2, dtype=np.float64)
    np.testing.assert_array_equal(d.x_train, [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    assert d.x_train.dtype == np.float64
    np.testing.assert_array_equal(d.y_train, [1, 0, 1])


def test_inline_errors() -> None:
    expect_error(lambda: load(DataSpec("inline", x=[[1, 2], [3]], y=[0, 1]), shape=(2,)), "data.x", "ragged")
    expect_error(
        lambda: load(DataSpec("inline", x=[[1, "a"], [3, 4]], y=[0, 1]), shape=(2,)), "data.x", "non-numeric"
    )
    expect_error(lambda: load(DataSpec("inline", x=[[1, 2]], y=None), shape=(2,)), "data.y", "required")
    expect_error(lambda: load(DataSpec("inline", x=[[1, 2], [3, 4]], y=[0]), shape=(2,)), "data.y", "1", "2")
    expect_error(
        lambda: load(DataSpec("inline", x=[[1, 2]], y=[[0, 1]]), shape=(2,), n_out=3), "data.y", "columns"
    )
    expect_error(lambda: load(DataSpec("inline", x=[], y=[]), shape=(2,)), "data.x", "no samples")


# --------------------------------------------------------------------------------------------------------
# config-level checks, split and limit
# --------------------------------------------------------------------------------------------------------


def test_spec_errors(tmp_path: Path) -> None:
    expect_error(lambda: load(DataSpec("csv")), "data.source", "unknown", "csv")
    expect_error(lambda: load(DataSpec("npz")), "data.path", "required")
    for vf in (1.0, -0.1, 1.5):
        expect_error(
            lambda vf=vf: load(DataSpec("digits", val_fraction=vf), shape=(64,)), "data.val_fraction"
        )
    expect_error(lambda: load(DataSpec("digits", limit=0), shape=(64,)), "data.limit")
    expect_error(lambda: load(DataSpec("digits", scale=float("nan")), shape=(64,)), "data.scale")
    expect_error(lambda: load(DataSpec("digits", x=[[1]]), shape=(64,)), "data.x", "inline")


def _split_file(tmp_path: Path, n: int) -> Path:
    x, y = ids_data(n)
    p = tmp_path / "s.npz"
    np.savez(p, x_train=x, y_train=y)
    return p


def test_split_sizes_partition_and_order(tmp_path: Path) -> None:
    p = _split_file(tmp_path, 10)
    d = load(DataSpec("npz", path=str(p), val_fraction=0.3), seed=7)
    assert d.x_train.shape == (7, 2, 3) and d.x_val.shape == (3, 2, 3)
    assert not d.val_is_test
    train_ids = d.x_train[:, 0, 0].astype(int)
    val_ids = d.x_val[:, 0, 0].astype(int)
    assert sorted([*train_ids, *val_ids]) == list(range(10))  # a partition of the 10 written samples
    np.testing.assert_array_equal(d.y_train, train_ids % 10)  # labels stay with their samples
    np.testing.assert_array_equal(d.y_val, val_ids % 10)
    assert all(np.diff(train_ids) > 0) and all(np.diff(val_ids) > 0)  # file order kept


def test_split_zero_fraction_and_too_large(tmp_path: Path) -> None:
    p = _split_file(tmp_path, 10)
    d = load(DataSpec("npz", path=str(p), val_fraction=0.0))
    assert d.x_train.shape[0] == 10 and d.x_val.shape == (0, 2, 3) and d.y_val.shape == (0,)
    p2 = _split_file(tmp_path, 2)
    expect_error(
        lambda: load(DataSpec("npz", path=str(p2), val_fraction=0.9)), "data.val_fraction", "no training"
    )


def test_split_deterministic_by_seed(tmp_path: Path) -> None:
    p = _split_file(tmp_path, 50)
    a = load(DataSpec("npz", path=str(p)), seed=1)
    b = load(DataSpec("npz", path=str(p)), seed=1)
    c = load(DataSpec("npz", path=str(p)), seed=2)
    assert a.x_val.shape[0] == 10  # round(0.2 * 50)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_val[:, 0, 0], c.x_val[:, 0, 0])


def test_limit_after_split(tmp_path: Path) -> None:
    p = _split_file(tmp_path, 20)
    full = load(DataSpec("npz", path=str(p), val_fraction=0.25), seed=3)
    lim = load(DataSpec("npz", path=str(p), val_fraction=0.25, limit=6), seed=3)
    assert full.x_train.shape[0] == 15 and full.x_val.shape[0] == 5
    assert lim.x_train.shape[0] == 6 and lim.x_val.shape[0] == 5
    np.testing.assert_array_equal(lim.x_val, full.x_val)  # the split does not depend on the limit
    assert set(lim.x_train[:, 0, 0].tolist()) <= set(full.x_train[:, 0, 0].tolist())
    again = load(DataSpec("npz", path=str(p), val_fraction=0.25, limit=6), seed=3)
    np.testing.assert_array_equal(again.x_train, lim.x_train)
    big = load(DataSpec("npz", path=str(p), val_fraction=0.25, limit=100), seed=3)
    np.testing.assert_array_equal(big.x_train, full.x_train)


def test_descriptions_count_one_sample_as_one() -> None:
    one = load(DataSpec("inline", val_fraction=0, x=[[1.0, 2.0]], y=[0]), shape=(2,))
    assert one.description == "inline (1 sample)"
