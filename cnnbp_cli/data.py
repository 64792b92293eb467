"""Dataset loaders with strict validation: packaged digits, MNIST IDX, NPZ, HDF5 and inline arrays.

Every problem a user can cause (a missing file, a corrupt archive, a label out of range, a shape that
does not fit the model) is raised as one :class:`~cnnbp_cli.errors.UserError` whose message starts with
the place (a file path, or a config key such as ``data.x``), then a colon and the problem.
"""

from __future__ import annotations

import gzip
import math
import numbers
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.errors import UserError
from cnnbp.memory import check_fits

__all__ = [
    "PATH_SOURCES",
    "SOURCES",
    "SPLIT_KEYS",
    "DataSpec",
    "Dataset",
    "load_dataset",
    "load_digits",
    "npz_array_bytes",
    "prepare_inputs",
    "read_idx",
]

SOURCES: tuple[str, ...] = ("digits", "npz", "idx", "hdf5", "inline")
PATH_SOURCES: tuple[str, ...] = ("npz", "idx", "hdf5")  # the sources that read data.path
# the arrays a file source holds (NPZ keys; HDF5 roles that data.keys may rename)
SPLIT_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")

# MNIST file names in an ``idx`` folder, in the order (train images, train labels, test images, test labels).
_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
# IDX type code → (numpy dtype, name used in messages).
_IDX_TYPES: dict[int, tuple[str, str]] = {
    0x08: ("u1", "ubyte"),
    0x09: ("i1", "byte"),
    0x0B: (">i2", "short"),
    0x0C: (">i4", "int"),
    0x0D: (">f4", "float"),
    0x0E: (">f8", "double"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def sniff(path: Path) -> str | None:
    """The data format a file holds by its first bytes: ``npz`` (a zip), ``hdf5``, ``idx`` (gzipped, or
    an IDX magic 00 00 ..), or None; UserError naming the file when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if head.startswith(b"PK"):
        return "npz"
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(_GZIP_MAGIC) or (head[:2] == b"\x00\x00" and len(head) >= 4):
        return "idx"
    return None
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NUMERIC_KINDS = "biuf"


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how to split and scale it (the ``data`` section of a config)."""

    source: str  # "digits" | "npz" | "idx" | "hdf5" | "inline"
    path: str | None = None
    scale: float | None = None  # multiplier applied to the inputs
    val_fraction: float = 0.2  # used only when the source has no test split; 0 → no validation set
    limit: int | None = None  # cap on the number of training samples (applied after the split)
    keys: dict[str, str] | None = None  # hdf5 only: dataset names for x_train, y_train[, x_test, y_test]
    x: list | None = None  # inline only
    y: list | None = None  # inline only


@dataclass
class Dataset:
    """Validated arrays ready for training: inputs shaped like the model's input, targets checked."""

    x_train: np.ndarray  # (N, *input_shape), dtype as requested
    y_train: np.ndarray  # (N,) int64 class indices, or (N, K) float targets of the requested dtype
    x_val: np.ndarray  # may have 0 rows
    y_val: np.ndarray
    val_is_test: bool  # True when the validation arrays are the source's own test split
    description: str  # e.g. "digits (UCI, 1797 images 8×8)" or "idx: /path (60000 train, 10000 test)"


@dataclass
class _Part:
    """One raw array with the place and name to use in error messages."""

    array: np.ndarray
    place: str  # file path or config key that starts every message about this array
    name: str  # what the array is called at that place, e.g. "x_train" or "labels"


@dataclass
class _Raw:
    """Unvalidated arrays as read from a source."""

    x_train: _Part
    y_train: _Part
    x_test: _Part | None
    y_test: _Part | None
    description: str


# --------------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------------


def load_dataset(
    spec: DataSpec,
    input_shape: tuple[int, ...],
    n_outputs: int,
    dtype: np.dtype,
    seed: int,
    base_dir: Path | None = None,
) -> Dataset:
    """Load, validate, reshape, cast, scale and split the data described by ``spec``.

    ``input_shape`` is the model's per-sample input shape and ``n_outputs`` its number of outputs.
    Relative paths are resolved against ``base_dir`` (the config file's folder) or else the CWD.
    Without a test split, a ``np.random.default_rng(seed)`` permutation puts ``round(val_fraction * N)``
    samples into validation; both parts keep the source's order. ``limit`` then keeps a seeded random
    subset of that many training samples, still in the source's order. Raises :class:`UserError`.
    """
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise UserError(f"dtype: expected a floating-point dtype, got {dt}")
    input_shape = tuple(int(d) for d in input_shape)
    _check_spec(spec)

    raw = _read_source(spec, base_dir)

    _check_counts(raw.x_train, raw.y_train)
    if raw.x_train.array.shape[0] == 0:
        raise UserError(f"{raw.x_train.place}: {raw.x_train.name} has no samples (0 rows)")
    # the inputs in the run's dtype, a mask of their finite values, and the copies the split makes
    values = sum(part.array.size for part in (raw.x_train, raw.x_test) if part is not None)
    smaller = "dtype: float32 or a smaller data file" if dt.itemsize > 4 else "a smaller data file"
    check_fits(values * (2 * dt.itemsize + 1), "data", f"converting the inputs to {dt}", f"use {smaller}")
    x_train = _prepare_inputs(raw.x_train, input_shape, dt, spec.scale)
    y_train = _prepare_targets(raw.y_train, n_outputs, dt)

    rng = np.random.default_rng(seed)
    if raw.x_test is not None and raw.y_test is not None:
        _check_counts(raw.x_test, raw.y_test)
        x_val = _prepare_inputs(raw.x_test, input_shape, dt, spec.scale)
        y_val = _prepare_targets(raw.y_test, n_outputs, dt)
        val_is_test = True
    else:
        train_idx, val_idx = _validation_split(x_train.shape[0], spec.val_fraction, rng)
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
        val_is_test = False

    if spec.limit is not None and spec.limit < x_train.shape[0]:
        keep = np.sort(rng.choice(x_train.shape[0], size=spec.limit, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]

    return Dataset(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_val=np.ascontiguousarray(x_val),
        y_val=np.ascontiguousarray(y_val),
        val_is_test=val_is_test,
        description=raw.description,
    )


def prepare_inputs(
    x: np.ndarray, input_shape: tuple[int, ...], dtype: np.dtype, scale: float | None, place: str, name: str
) -> np.ndarray:
    """Inputs checked, reshaped to ``(N, *input_shape)``, cast and scaled exactly as training's are
    (``place`` and ``name`` start the messages); for data that comes without targets (``cnnbp predict``)."""
    part = _Part(_numeric(np.asarray(x), place, name), place, name)
    return _prepare_inputs(part, tuple(int(d) for d in input_shape), np.dtype(dtype), scale)


def _validation_split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: ``round(fraction · n)`` samples drawn for validation, both sorted."""
    n_val = round(fraction * n)
    if n - n_val < 1:
        raise UserError(
            f"data.val_fraction: {fraction} of {n} samples puts all of them into validation, "
            "leaving no training samples"
        )
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not, told apart by the gzip magic bytes) into a native-endian array."""
    return _read_idx(Path(path), expected_magic=None, what="")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the packaged UCI digits: images ``(1797, 8, 8)`` uint8 in 0..16 and labels ``(1797,)`` uint8."""
    try:
        ref = resources.files("cnnbp.datasets").joinpath("digits.npz")
        with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            x = np.asarray(npz["x"])
            y = np.asarray(npz["y"])
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        zipfile.BadZipFile,
        zlib.error,
        ModuleNotFoundError,
    ) as e:
        raise UserError(
            f"data.source: the packaged digits dataset (cnnbp_cli/datasets/digits.npz) cannot be read "
            f"({_describe(e)}); reinstall cnnbp"
        ) from e
    return x, y


# --------------------------------------------------------------------------------------------------------
# spec checks
# --------------------------------------------------------------------------------------------------------


def _is_real(v: object) -> bool:
    """True for an int or float (but not a bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_spec(spec: DataSpec) -> None:
    """Validate the config values of ``spec`` that do not need any file."""
    if spec.source not in SOURCES:
        raise UserError(
            f"data.source: unknown source {spec.source!r} (expected one of: {', '.join(SOURCES)})"
        )
    if not _is_real(spec.val_fraction) or not (0.0 <= float(spec.val_fraction) < 1.0):
        raise UserError(f"data.val_fraction: must be a number in [0, 1), got {spec.val_fraction!r}")
    if spec.limit is not None and (
        not isinstance(spec.limit, numbers.Integral) or isinstance(spec.limit, bool) or spec.limit < 1
    ):
        raise UserError(f"data.limit: must be a positive integer, got {spec.limit!r}")
    if spec.scale is not None and (not _is_real(spec.scale) or not math.isfinite(float(spec.scale))):
        raise UserError(f"data.scale: must be a finite number, got {spec.scale!r}")

    if spec.source in PATH_SOURCES:
        if spec.path is None:
            raise UserError(f"data.path: required for source {spec.source!r}")
        if not isinstance(spec.path, str | Path) or not str(spec.path).strip():
            raise UserError(f"data.path: must be a non-empty path, got {spec.path!r}")
    elif spec.path is not None:
        raise UserError(f"data.path: not used by source {spec.source!r}; remove it")
    if spec.keys is not None and spec.source != "hdf5":
        raise UserError(f"data.keys: only used by source 'hdf5', not {spec.source!r}; remove it")
    if spec.source != "inline":
        for key in ("x", "y"):
            if getattr(spec, key) is not None:
                raise UserError(f"data.{key}: only used by source 'inline', not {spec.source!r}; remove it")


def _resolve(path: str | Path, base_dir: Path | None) -> Path:
    """Resolve a config path against ``base_dir`` (or the CWD when it is None)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (Path(base_dir) if base_dir is not None else Path.cwd()) / p
    return p


def _describe(e: BaseException) -> str:
    """A one-line description of a low-level exception."""
    text = str(e).strip().replace("\n", " ") or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    return text


# --------------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------------


def _read_source(spec: DataSpec, base_dir: Path | None) -> _Raw:
    """Dispatch to the reader of ``spec.source``."""
    if spec.source == "digits":
        x, y = load_digits()
        h, w = x.shape[1:]
        return _Raw(
            _Part(x, "data.source", "digits images"),
            _Part(y, "data.source", "digits labels"),
            None,
            None,
            f"digits (UCI, {x.shape[0]} images {h}×{w})",
        )
    assert spec.path is not None or spec.source == "inline"
    if spec.source == "idx":
        return _read_idx_folder(_resolve(str(spec.path), base_dir))
    if spec.source == "npz":
        return _read_npz(_resolve(str(spec.path), base_dir))
    if spec.source == "hdf5":
        return _read_hdf5(_resolve(str(spec.path), base_dir), spec.keys)
    return _read_inline(spec)


def _check_file(path: Path) -> None:
    """Raise unless ``path`` is an existing regular file."""
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")


# ---- IDX ------------------------------------------------------------------------------------------------


def _read_idx(path: Path, expected_magic: int | None, what: str) -> np.ndarray:
    """Parse one IDX file; with ``expected_magic`` the magic number must equal it (``what`` names it).

    The header is read first and the size it declares checked against the memory available; then no
    more than that many bytes (and one to find a surplus) are read or decompressed, so a file whose
    header or gzip stream lies cannot make cnnbp allocate more than the header said.
    """
    _check_file(path)
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            return _parse_idx(path, stream, expected_magic, what, gz)
    except EOFError as e:
        raise UserError(f"{path}: gzip data is truncated ({_describe(e)})") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: gzip data is corrupt ({_describe(e)})") from e
    except OSError as e:
        raise UserError(f"{path}: cannot read: {_describe(e)}") from e


def _parse_idx(path: Path, stream: Any, expected_magic: int | None, what: str, gz: bool) -> np.ndarray:
    note = " after gzip decompression" if gz else ""
    head = stream.read(4)
    if len(head) < 4:
        raise UserError(f"{path}: too short for an IDX header ({len(head)} bytes{note})")
    magic = int.from_bytes(head, "big")
    type_code, ndim = head[2], head[3]
    if expected_magic is not None and magic != expected_magic:
        raise UserError(f"{path}: bad IDX magic 0x{magic:08X}, expected 0x{expected_magic:08X} for {what}")
    if head[0] != 0 or head[1] != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise UserError(
            f"{path}: bad IDX magic 0x{magic:08X}, expected 0x00000TDD "
            "(T a type code 08/09/0B/0C/0D/0E, DD the number of dimensions ≥ 1)"
        )
    header = 4 + 4 * ndim
    dim_bytes = stream.read(4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise UserError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes but the file has "
            f"{4 + len(dim_bytes)}{note}"
        )
    dims = tuple(int.from_bytes(dim_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    np_type, type_name = _IDX_TYPES[type_code]
    need = math.prod(dims) * np.dtype(np_type).itemsize
    shape_text = "×".join(str(d) for d in dims)
    # the bytes read, and the native-endian copy made of them
    check_fits(2 * need, str(path), f"reading its {shape_text} {type_name} values", "use a smaller data file")
    data = stream.read(need + 1)
    have = len(data)
    if have < need:
        raise UserError(
            f"{path}: truncated IDX data: header says {shape_text} {type_name} values ({need} bytes) "
            f"but the file has {have} bytes after the {header}-byte header{note}"
        )
    if have > need:
        extra = "" if gz else f"{path.stat().st_size - header - need} "
        raise UserError(
            f"{path}: {extra}unexpected bytes after the {shape_text} {type_name} values the header "
            f"declares{note}"
        )
    arr = np.frombuffer(data, dtype=np.dtype(np_type), count=math.prod(dims)).reshape(dims)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True)


def _find_mnist_file(folder: Path, name: str) -> Path | None:
    """The file ``name`` or ``name.gz`` in ``folder`` (the plain one when both exist), else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_folder(folder: Path) -> _Raw:
    """Read the four MNIST IDX files from ``folder``."""
    if not folder.exists():
        raise UserError(
            f"{folder}: folder not found; point data.path at the folder holding the four MNIST IDX files "
            "(train-images-idx3-ubyte[.gz], ...), e.g. --set data.path=/path/to/mnist"
        )
    if not folder.is_dir():
        raise UserError(
            f"{folder}: not a folder (source 'idx' expects the folder holding the four MNIST files)"
        )
    found = {name: _find_mnist_file(folder, name) for name in _MNIST_FILES}
    missing = [name for name, p in found.items() if p is None]
    if missing:
        listed = ", ".join(f"{m}[.gz]" for m in missing)
        raise UserError(f"{folder}: missing MNIST file{'s' if len(missing) > 1 else ''} {listed}")

    parts: list[_Part] = []
    for name in _MNIST_FILES:
        path = found[name]
        assert path is not None
        is_images = "images" in name
        magic = _IDX_IMAGES_MAGIC if is_images else _IDX_LABELS_MAGIC
        arr = _read_idx(
            path,
            magic,
            "an images file (ubyte, 3 dimensions)" if is_images else "a labels file (ubyte, 1 dimension)",
        )
        parts.append(_Part(arr, str(path), "images" if is_images else "labels"))
    x_tr, y_tr, x_te, y_te = parts
    return _Raw(
        x_tr,
        y_tr,
        x_te,
        y_te,
        f"idx: {folder} ({x_tr.array.shape[0]} train, {x_te.array.shape[0]} test)",
    )


# ---- NPZ ------------------------------------------------------------------------------------------------


def _read_npz(path: Path) -> _Raw:
    """Read ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test`` from an NPZ archive."""
    _check_file(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {_describe(e)}") from e
    if head not in _ZIP_MAGICS:
        raise UserError(f"{path}: not an .npz archive (a zip file written by numpy.savez)")

    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            for key in ("x_train", "y_train"):
                if key not in files:
                    raise UserError(f"{path}: missing key {key!r} (found: {', '.join(files) or 'none'})")
            has_x_test, has_y_test = "x_test" in files, "y_test" in files
            if has_x_test != has_y_test:
                present, absent = ("x_test", "y_test") if has_x_test else ("y_test", "x_test")
                raise UserError(f"{path}: has {present!r} but not {absent!r}; give both or neither")
            wanted = [k for k in SPLIT_KEYS if k in files]
            sizes = {key: npz_array_bytes(path, npz.zip, key) for key in wanted}
            check_fits(sum(sizes.values()), str(path), "reading its arrays", "use a smaller data file")
            for key in wanted:
                try:
                    arrays[key] = np.asarray(npz[key])
                except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
                    raise UserError(f"{path}: {key!r} cannot be read, damaged data ({_describe(e)})") from e
    except UserError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"{path}: not a readable .npz archive: {_describe(e)}") from e

    parts = {k: _Part(_numeric(v, str(path), k), str(path), k) for k, v in arrays.items()}
    return _raw_from_parts("npz", path, parts)


def npz_array_bytes(path: Path, zf: zipfile.ZipFile, key: str) -> int:
    """The bytes array ``key`` of an NPZ archive declares, read from its ``.npy`` header alone; a
    UserError when the header is unreadable, declares Python objects, or more bytes than the archive
    holds for it (a truncated or lying file is found before anything is allocated)."""
    member = key if key in zf.namelist() else f"{key}.npy"
    try:
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:  # 3.0: utf-8 field names; numpy reads it with the same private helper
                shape, _, dtype = np.lib.format._read_array_header(fh, version)
            header = fh.tell()
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"{path}: {key!r} is not a readable .npy array ({_describe(e)})") from e
    if dtype.hasobject:
        raise UserError(f"{path}: {key!r} holds Python objects (dtype {dtype}); save arrays of plain numbers")
    need = math.prod(shape) * dtype.itemsize
    held = zf.getinfo(member).file_size - header
    if need > held:
        shape_text = "×".join(str(d) for d in shape) or "()"
        raise UserError(
            f"{path}: {key!r} declares {shape_text} {dtype} values ({need} bytes) but the archive holds "
            f"{held} bytes for it (a truncated or damaged file)"
        )
    return need


def _raw_from_parts(kind: str, path: Path, parts: dict[str, _Part]) -> _Raw:
    """Build a :class:`_Raw` from the parts read out of an NPZ or HDF5 file."""
    x_te, y_te = parts.get("x_test"), parts.get("y_test")
    n_train = parts["x_train"].array.shape[0] if parts["x_train"].array.ndim else 0
    if x_te is not None:
        n_test = x_te.array.shape[0] if x_te.array.ndim else 0
        desc = f"{kind}: {path} ({n_train} train, {n_test} test)"
    else:
        desc = f"{kind}: {path} ({n_train} sample{'s' * (n_train != 1)})"
    return _Raw(parts["x_train"], parts["y_train"], x_te, y_te, desc)


# ---- HDF5 -----------------------------------------------------------------------------------------------


def _read_hdf5(path: Path, keys: dict[str, str] | None) -> _Raw:
    """Read the datasets named by ``keys`` (default: x_train, y_train[, x_test, y_test]) from an HDF5 file."""
    names = {k: k for k in SPLIT_KEYS}
    explicit: set[str] = set()
    if keys is not None:
        if not isinstance(keys, dict):
            raise UserError(f"data.keys: must be a mapping of {', '.join(SPLIT_KEYS)} to dataset names")
        for role, name in keys.items():
            if role not in SPLIT_KEYS:
                raise UserError(f"data.keys: unknown key {role!r} (expected {', '.join(SPLIT_KEYS)})")
            if not isinstance(name, str) or not name:
                raise UserError(f"data.keys.{role}: must be a non-empty dataset name, got {name!r}")
            names[role] = name
            explicit.add(role)

    _check_file(path)
    import h5py  # imported here: only this source needs it

    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            found = _hdf5_datasets(f, path, names, explicit)
            for role, ds in found.items():
                if ds.dtype.kind not in _NUMERIC_KINDS:
                    raise UserError(
                        f"{path}: {names[role]} holds non-numeric values (dtype {ds.dtype}); expected numbers"
                    )
            declared = sum(math.prod(ds.shape or ()) * ds.dtype.itemsize for ds in found.values())
            check_fits(declared, str(path), "reading its datasets", "use a smaller data file")
            for role, ds in found.items():
                try:
                    arrays[role] = np.asarray(ds[()])
                except (UserError, MemoryError):
                    raise
                except Exception as e:  # noqa: BLE001 - HDF5 reports damaged data in many types
                    raise UserError(f"{path}: cannot read dataset {names[role]!r}: {_describe(e)}") from e
    except (UserError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - not HDF5, or damaged beyond opening (OSError, RuntimeError...)
        raise UserError(f"{path}: cannot open as HDF5: {_describe(e)}") from e

    parts = {
        role: _Part(_numeric(a, str(path), names[role]), str(path), names[role]) for role, a in arrays.items()
    }
    return _raw_from_parts("hdf5", path, parts)


def _hdf5_datasets(f: Any, path: Path, names: dict[str, str], explicit: set[str]) -> dict[str, Any]:
    """``{role: h5py.Dataset}`` of the roles present in an open HDF5 file; a UserError for a name that is
    missing but needed, a group, a link that cannot be followed, or a test split given by half."""
    import h5py

    found: dict[str, Any] = {}
    for role, name in names.items():
        try:
            obj = f.get(name)
        except Exception as e:  # noqa: BLE001 - e.g. RuntimeError for a soft link that points to itself
            raise UserError(f"{path}: {name!r} (data.keys.{role}) cannot be opened: {_describe(e)}") from e
        if obj is not None and not isinstance(obj, h5py.Dataset):
            raise UserError(f"{path}: {name!r} (data.keys.{role}) is a group, not a dataset")
        if obj is None and (role in ("x_train", "y_train") or role in explicit):
            raise UserError(f"{path}: no dataset {name!r} (data.keys.{role})")
        if obj is not None:
            found[role] = obj
    if ("x_test" in found) != ("y_test" in found):
        have, lack = ("x_test", "y_test") if "x_test" in found else ("y_test", "x_test")
        raise UserError(
            f"{path}: has dataset {names[have]!r} ({have}) but not {names[lack]!r} ({lack}); "
            "give both or neither"
        )
    return found


# ---- inline ---------------------------------------------------------------------------------------------


def _read_inline(spec: DataSpec) -> _Raw:
    """Turn the config's ``data.x`` and ``data.y`` lists into arrays."""
    parts: list[_Part] = []
    for key in ("x", "y"):
        value: Any = getattr(spec, key)
        place = f"data.{key}"
        if value is None:
            raise UserError(f"{place}: required for source 'inline'")
        if not isinstance(value, list | tuple):
            raise UserError(f"{place}: must be a list, got {type(value).__name__}")
        try:
            arr = np.array(value)
        except (ValueError, TypeError) as e:
            raise UserError(f"{place}: ragged or malformed nested lists ({_describe(e)})") from e
        if arr.dtype == object:
            raise UserError(f"{place}: ragged nested lists or non-numeric values")
        parts.append(_Part(_numeric(arr, place, key), place, key))
    x, y = parts
    n = x.array.shape[0] if x.array.ndim else 0
    return _Raw(x, y, None, None, f"inline ({n} sample{'s' * (n != 1)})")


def _numeric(arr: np.ndarray, place: str, name: str) -> np.ndarray:
    """Return ``arr`` when it holds plain numbers (bool, int, float) and has a sample axis, else raise."""
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise UserError(f"{place}: {name} holds non-numeric values (dtype {arr.dtype}); expected numbers")
    if arr.ndim == 0:
        raise UserError(f"{place}: {name} is a single value, expected an array with one row per sample")
    return arr


# --------------------------------------------------------------------------------------------------------
# validation and conversion
# --------------------------------------------------------------------------------------------------------


def _first_bad_sample(bad: np.ndarray) -> int:
    """Index of the first sample (row) where the boolean array ``bad`` has a True."""
    return int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])


def _prepare_inputs(
    part: _Part, input_shape: tuple[int, ...], dt: np.dtype, scale: float | None
) -> np.ndarray:
    """Check and reshape inputs to ``(N, *input_shape)``, cast them to ``dt`` and apply ``scale``."""
    x = part.array
    n = x.shape[0]
    sample = tuple(int(d) for d in x.shape[1:])
    if sample == input_shape:
        pass
    elif len(input_shape) == 3 and input_shape[0] == 1 and sample == input_shape[1:]:
        x = x.reshape((n, *input_shape))
    elif len(input_shape) == 1 and math.prod(sample) == input_shape[0]:
        x = x.reshape((n, input_shape[0]))
    else:
        raise UserError(
            f"{part.place}: {part.name} has per-sample shape {sample} but the model's input_shape is "
            f"{input_shape}"
        )
    if x.dtype.kind == "f" and n:
        bad = ~np.isfinite(x)
        if bad.any():
            raise UserError(
                f"{part.place}: {part.name} contains {int(bad.sum())} NaN or Inf values "
                f"(first in sample {_first_bad_sample(bad)})"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        out = x.astype(dt, copy=True)
        if scale is not None:
            np.multiply(out, dt.type(scale), out=out)
    if n:
        bad = ~np.isfinite(out)
        if bad.any():
            how = f"after scaling by {scale}" if scale is not None else f"when converted to {dt}"
            raise UserError(
                f"{part.place}: {part.name} overflows {dt} {how} (first in sample {_first_bad_sample(bad)})"
            )
    return out


def _prepare_targets(part: _Part, n_outputs: int, dt: np.dtype) -> np.ndarray:
    """Check targets: 1-D class labels become int64 in [0, n_outputs); 2-D must be (N, n_outputs) floats."""
    y = part.array
    if y.ndim == 1:
        if y.size == 0:
            return y.astype(np.int64)
        if y.dtype.kind == "f":
            bad = ~np.isfinite(y)
            if bad.any():
                raise UserError(
                    f"{part.place}: {part.name} contains {int(bad.sum())} NaN or Inf labels "
                    f"(first in sample {int(np.flatnonzero(bad)[0])})"
                )
            frac = y != np.floor(y)
            if frac.any():
                i = int(np.flatnonzero(frac)[0])
                raise UserError(
                    f"{part.place}: {part.name} has non-integer label {y[i].item()} in sample {i}"
                )
        neg = y < 0
        if neg.any():
            i = int(np.flatnonzero(neg)[0])
            raise UserError(
                f"{part.place}: {part.name} has negative label {y[i].item()} in sample {i}; "
                f"labels must be in [0, {n_outputs})"
            )
        high = y >= n_outputs
        if high.any():
            i = int(np.flatnonzero(high)[0])
            raise UserError(
                f"{part.place}: {part.name} has label {y[i].item()} in sample {i}, out of range for a model "
                f"with {n_outputs} outputs (labels must be in [0, {n_outputs}))"
            )
        return y.astype(np.int64)
    if y.ndim == 2:
        if y.shape[1] != n_outputs:
            raise UserError(
                f"{part.place}: {part.name} has {y.shape[1]} target columns but the model has "
                f"{n_outputs} outputs"
            )
        if y.dtype.kind == "f" and y.size:
            bad = ~np.isfinite(y)
            if bad.any():
                raise UserError(
                    f"{part.place}: {part.name} contains {int(bad.sum())} NaN or Inf targets "
                    f"(first in sample {_first_bad_sample(bad)})"
                )
        with np.errstate(over="ignore", invalid="ignore"):
            out = y.astype(dt)
        if y.size and not np.isfinite(out).all():
            raise UserError(f"{part.place}: {part.name} has targets that overflow {dt}")
        return out
    raise UserError(
        f"{part.place}: {part.name} has shape {y.shape}; expected 1-D class labels (N,) or 2-D targets "
        f"(N, {n_outputs})"
    )


def _check_counts(xp: _Part, yp: _Part) -> None:
    """Raise when inputs and targets have different numbers of samples."""
    nx, ny = xp.array.shape[0], yp.array.shape[0]
    if nx == ny:
        return
    if xp.place == yp.place:
        raise UserError(
            f"{xp.place}: {xp.name} has {nx} samples but {yp.name} has {ny}; the counts must match"
        )
    raise UserError(
        f"{yp.place}: {yp.name} has {ny} samples but {xp.name} in {xp.place} has {nx}; the counts must match"
    )
