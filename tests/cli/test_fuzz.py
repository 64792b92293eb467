"""Property-based robustness: mutated configs, corrupted data files and corrupted checkpoints given to
``cnnbp train`` either run or end with exit 2 and ONE line, never a traceback, and never leave a
half-written file (``*.tmp``) or, on failure, a new run folder behind.

Hypothesis runs derandomized (a fixed sequence of examples, no example database) with a bounded
number of examples per property, so the file is reproducible and runs in well under a minute.  Every
case goes through the Typer app in-process (CliRunner).  ``CASES`` counts the cases tried per
property and their outcomes; ``pytest -s tests/cli/test_fuzz.py`` prints them.
"""

from __future__ import annotations

import functools
import gzip
import shutil
import signal
import struct
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import typer.testing
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cnnbp import config as config_module
from cnnbp import memory
from cnnbp.app import app
from cnnbp.runner import Callback
from cnnbp.runs import find_checkpoints
from tests.cli.conftest import tiny_config, with_signals, write_config

runner = CliRunner()
CASES: dict[str, Counter[str]] = {}
LAST: dict[str, str] = {}  # the stderr of the last case checked
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def small_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 256 MB budget: a mutated size that passes it stays quick to allocate and train.

    Also builds the Click command of the app once instead of on every invoke (a third of a case's
    time otherwise).
    """
    monkeypatch.setattr(config_module, "_memory_budget", lambda: 256_000_000)
    cached = functools.lru_cache(maxsize=None)(typer.testing._get_command)
    monkeypatch.setattr(typer.testing, "_get_command", cached)


# ---- the one check every case goes through -------------------------------------------------------------


def check(kind: str, args: list[str], root: Path, out: Path, codes: tuple[int, ...] = (0, 2)) -> int:
    """Run ``cnnbp ARGS`` and assert the robustness contract; count the outcome under ``kind``."""
    before = {p for p in out.iterdir()} if out.exists() else set()
    result = runner.invoke(app, args)
    code = result.exit_code
    LAST["stderr"] = result.stderr
    what = f"{args}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{what}"
    )
    assert "Traceback" not in result.output, what
    assert code in codes, what
    if code != 0:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), what
        after = {p for p in out.iterdir()} if out.exists() else set()
        if "--resume" not in args:
            assert after == before, f"a failed run left {after - before}\n{what}"
    assert not list(root.rglob("*.tmp")), what
    CASES.setdefault(kind, Counter())[f"exit {code}"] += 1
    return code


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (hypothesis runs many examples per test function call)."""
    with tempfile.TemporaryDirectory(prefix="cnnbp-fuzz-") as d:
        yield Path(d)


def report(kind: str) -> None:
    counts = CASES.get(kind, Counter())
    print(f"\n{kind}: {sum(counts.values())} cases, {dict(sorted(counts.items()))}")


# ---- configs -------------------------------------------------------------------------------------------


def base_config() -> dict:
    """A valid config on inline data: 8 images 1×4×4, conv → pool → flatten → dense, two classes."""
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(0, 1, (8, 1, 4, 4)), 2)
    return {
        "name": "fz",
        "seed": 1,
        "dtype": "float32",
        "data": {"source": "inline", "scale": 1.0, "val_fraction": 0.25, "limit": None,
                 "x": x.tolist(), "y": [i % 2 for i in range(8)]},
        "model": {
            "input_shape": [1, 4, 4],
            "layers": [
                {"type": "conv", "filters": 2, "kernel": 3, "stride": 1, "padding": 1, "activation": "relu"},
                {"type": "pool", "mode": "max", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 2, "init": "glorot_uniform"},
            ],
        },
        "loss": "softmax_cross_entropy",
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.1, "momentum": 0.5, "weight_decay": 0.0,
                  "shuffle": True, "divergence_factor": None},
        "record": {"probe": 2, "every": 1},
    }  # fmt: skip


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a config (into mappings and lists, not into the inline pixel rows)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            found += paths(v, (*prefix, k))
    elif isinstance(node, list) and prefix[-1:] not in (("x",), ("y",)):
        for i, v in enumerate(node):
            found += paths(v, (*prefix, i))
    return found


def parent_and_key(cfg: dict, path: tuple) -> tuple[Any, Any]:
    node = cfg
    for k in path[:-1]:
        node = node[k]
    return node, path[-1]


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 6),
    st.sampled_from([0, -1, 1, 10**6, 10**9, 2**31, 2**63, 10**30, -(10**12)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 1e300, -0.0, 0.5, 1.5, 1e6]),
    st.text(max_size=8),
    st.sampled_from(["relu", "max", "conv", "dense", "float16", "../x", "/abs", "", ".", "a b", "inline"]),
    st.lists(st.integers(-2, 40), max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    st.dictionaries(st.sampled_from(["type", "units", "x", "kernel", "zz"]), st.integers(-2, 9), max_size=2),
)
SHAPE_EDITS = [
    ("model", "input_shape"),  # the image size no longer matches the data
    ("model", "layers", 0, "kernel"),  # a kernel larger than its input
    ("model", "layers", 0, "stride"),  # a stride that leaves no output
    ("model", "layers", 1, "size"),  # a pool window larger than its input
    ("model", "layers", 3, "units"),  # fewer classes than the labels use
    ("data", "y"),
    ("data", "x"),
]


@st.composite
def mutated_config(draw: st.DrawFn) -> dict:
    cfg = base_config()
    for _ in range(draw(st.integers(1, 3))):
        all_paths = paths(cfg)
        kind = draw(st.sampled_from(["drop", "replace", "replace", "add", "shape", "layer"]))
        if kind == "drop" and all_paths:
            parent, key = parent_and_key(cfg, draw(st.sampled_from(all_paths)))
            del parent[key]
        elif kind == "replace" and all_paths:
            parent, key = parent_and_key(cfg, draw(st.sampled_from(all_paths)))
            parent[key] = draw(ODD_VALUES)
        elif kind == "add":
            holders = [p for p in [(), *all_paths] if isinstance(_get(cfg, p), dict)]
            holder = _get(cfg, draw(st.sampled_from(holders)))
            holder[draw(st.sampled_from(["epoch", "lr", "unknown", "Layers", "units", "strides", "nme"]))] = 1
        elif kind == "shape":
            path = draw(st.sampled_from(SHAPE_EDITS))
            try:
                parent, key = parent_and_key(cfg, path)
                parent[key] = draw(
                    st.one_of(
                        st.integers(0, 9),
                        st.lists(st.integers(0, 9), min_size=1, max_size=4),
                        st.just([[0.5] * 3] * 8),  # vectors instead of images
                        st.just([0, 1, 2, 3, 4, 5, 6, 7]),  # labels past the 2 outputs
                        st.just([[[[float("nan")] * 4] * 4]] * 8),  # NaN pixels
                    )
                )
            except (KeyError, IndexError, TypeError):
                pass  # an earlier mutation removed the place
        elif kind == "layer":
            layers = cfg.get("model", {}).get("layers") if isinstance(cfg.get("model"), dict) else None
            if isinstance(layers, list):
                extra = draw(
                    st.sampled_from([
                        {"type": "dense", "units": 3},  # dense fed 4-D maps without flatten
                        {"type": "conv", "filters": 1, "kernel": 9},
                        {"type": "pool", "size": 5},
                        {"type": "subsample", "scale": 3},
                        {"type": "flatten"},
                        {"type": "relu"},
                        {"type": "conv", "filters": 10**5, "kernel": 1},
                        {"type": "dense", "units": 10**8},
                    ])
                )  # fmt: skip
                layers.insert(draw(st.integers(0, len(layers))), extra)
    return cfg


def _get(cfg: Any, path: tuple) -> Any:
    for k in path:
        cfg = cfg[k]
    return cfg


@settings(FUZZ, max_examples=250)
@given(cfg=mutated_config(), dry=st.booleans())
def _config_cases(cfg: dict, dry: bool) -> None:
    with scratch() as root:
        path = root / "c.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        out = root / "runs"
        args = ["train", str(path), "--out", str(out), "--quiet"]
        args += ["--dry-run"] if dry else ["--epochs", "2"]
        check("configs", args, root, out, codes=(0, 2) if dry else (0, 1, 2))


def test_mutated_configs_run_or_fail_in_one_line() -> None:
    _config_cases()
    report("configs")


# ---- data files ----------------------------------------------------------------------------------------

MNIST = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(">u1" if code == 0x08 else ">f4").tobytes()


def data_files(root: Path, source: str, gz: bool) -> tuple[Path, list[Path]]:
    """A valid tiny data set of 4×4 images, labels 0..2; returns (data.path, the files to corrupt)."""
    rng = np.random.default_rng(5)
    xtr, ytr = rng.integers(0, 256, (9, 4, 4)).astype(np.uint8), (np.arange(9) % 3).astype(np.uint8)
    xte, yte = rng.integers(0, 256, (3, 4, 4)).astype(np.uint8), np.array([0, 1, 2], np.uint8)
    if source == "idx":
        folder = root / "mnist"
        folder.mkdir()
        files = []
        for name, arr in zip(MNIST, (xtr, ytr, xte, yte), strict=True):
            data = idx_bytes(arr)
            p = folder / (name + (".gz" if gz else ""))
            p.write_bytes(gzip.compress(data, mtime=0) if gz else data)
            files.append(p)
        return folder, files
    if source == "npz":
        p = root / "d.npz"
        save = np.savez_compressed if gz else np.savez
        save(p, x_train=xtr.astype(np.float32), y_train=ytr, x_test=xte.astype(np.float32), y_test=yte)
        return p, [p]
    p = root / "d.h5"
    with h5py.File(p, "w") as f:
        for k, v in (("x_train", xtr.astype(np.float32)), ("y_train", ytr), ("x_test", xte), ("y_test", yte)):
            f.create_dataset(k, data=v, compression="gzip" if gz else None)
    return p, [p]


def data_config(source: str, path: Path) -> dict:
    return {
        "name": "d",
        "data": {"source": source, "path": str(path), "scale": 1 / 255},
        "model": {"input_shape": [1, 4, 4], "layers": [
            {"type": "conv", "filters": 2, "kernel": 3, "activation": "tanh"},
            {"type": "flatten"}, {"type": "dense", "units": 3}]},
        "train": {"epochs": 1, "batch_size": 4},
        "record": {"probe": 2},
    }  # fmt: skip


@st.composite
def corruption(draw: st.DrawFn, size: int) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "magic", "zero", "append", "empty"]))
    if kind == "truncate":
        return kind, draw(st.integers(0, max(0, size - 1)))
    if kind == "flip":
        return kind, draw(
            st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=8)
        )
    if kind == "magic":
        return kind, draw(st.binary(min_size=4, max_size=4))
    if kind == "zero":
        start = draw(st.integers(0, size - 1))
        return kind, (start, draw(st.integers(1, 512)))
    if kind == "append":
        return kind, draw(st.binary(min_size=1, max_size=64))
    return kind, None


def corrupt(path: Path, how: tuple[str, Any]) -> None:
    data = bytearray(path.read_bytes())
    kind, arg = how
    if kind == "truncate":
        data = data[:arg]
    elif kind == "flip":
        for offset, mask in arg:
            data[offset % len(data)] ^= mask
    elif kind == "magic":
        data[:4] = arg
    elif kind == "zero":
        start, n = arg
        data[start : start + n] = bytes(len(data[start : start + n]))
    elif kind == "append":
        data += arg
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


@settings(FUZZ, max_examples=200)
@given(
    source=st.sampled_from(["idx", "npz", "hdf5"]),
    gz=st.booleans(),
    which=st.integers(0, 3),
    data=st.data(),
    dry=st.sampled_from([True, True, False]),
)
def _data_cases(source: str, gz: bool, which: int, data: st.DataObject, dry: bool) -> None:
    with scratch() as root:
        path, files = data_files(root, source, gz)
        target = files[which % len(files)]
        corrupt(target, data.draw(corruption(target.stat().st_size)))
        cfg_path = root / "c.yaml"
        cfg_path.write_text(yaml.safe_dump(data_config(source, path)), encoding="utf-8")
        out = root / "runs"
        args = ["train", str(cfg_path), "--out", str(out), "--quiet"] + (["--dry-run"] if dry else [])
        check(f"data files ({source})", args, root, out, codes=(0, 2) if dry else (0, 1, 2))


def test_corrupted_data_files_run_or_fail_in_one_line() -> None:
    _data_cases()
    for source in ("idx", "npz", "hdf5"):
        report(f"data files ({source})")


# ---- checkpoints ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run of the base config, interrupted in epoch 2 so its last checkpoint is mid-epoch."""
    root = tmp_path_factory.mktemp("fuzz-run")
    cfg = base_config()
    cfg["train"]["epochs"] = 3
    (root / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    patch = pytest.MonkeyPatch()
    with_signals(patch, "3")
    try:
        result = runner.invoke(app, ["train", str(root / "c.yaml"), "--out", str(root / "runs"), "--quiet"])
    finally:
        patch.undo()
    assert result.exit_code == 130, result.output
    return root / "runs" / "fz"


@settings(FUZZ, max_examples=200)
@given(
    data=st.data(),
    which=st.sampled_from(["last", "last", "first"]),
    use=st.sampled_from(["resume", "resume", "init", "inspect", "export"]),
)
def _checkpoint_cases(finished_run: Path, data: st.DataObject, which: str, use: str) -> None:
    with scratch() as root:
        run = root / "fz"
        shutil.copytree(finished_run, run)
        found = find_checkpoints(run)
        target = found[-1][1] if which == "last" else found[0][1]
        corrupt(target, data.draw(corruption(target.stat().st_size)))
        if use == "resume":
            args = ["train", "--resume", str(run), "--quiet", "--epochs", "3"]
            check("checkpoints (train --resume)", args, root, root, codes=(0, 1, 2))
        elif use == "init":
            cfg = base_config()
            cfg["model"]["init_from"] = str(target)
            (root / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
            args = ["train", str(root / "c.yaml"), "--out", str(root / "runs"), "--quiet", "--dry-run"]
            check("checkpoints (model.init_from)", args, root, root / "runs")
        elif use == "inspect":
            check("checkpoints (inspect)", ["inspect", str(target)], root, root / "none")
        else:
            out = root / "model.npz"
            code = check(
                "checkpoints (export)", ["export", str(target), "-f", "npz", "-o", str(out)], root, root
            )
            assert code == 0 or not out.exists(), "a failed export left its output behind"


def test_corrupted_checkpoints_resume_or_fail_in_one_line(finished_run: Path) -> None:
    _checkpoint_cases(finished_run)
    for use in ("train --resume", "model.init_from", "inspect", "export"):
        report(f"checkpoints ({use})")


def test_a_file_without_the_checksum_never_reaches_hdf5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some damaged HDF5 files send the library into an endless loop (fuzzing found one in a vlen
    attribute's global heap): HDF5 parses only bytes whose checksum says cnnbp wrote them."""
    from cnnbp import checkpoint

    path = tmp_path / "0001.h5"
    with h5py.File(path, "w") as f:  # a real HDF5 file, but no cnnbp checksum header
        f.attrs["format"] = "cnnbp-checkpoint"

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("HDF5 was asked to parse an unchecked file")

    monkeypatch.setattr(checkpoint.h5py, "File", refuse)
    result = runner.invoke(app, ["train", "--dry-run", "--set", f"model.init_from={path}"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("0001.h5: not a cnnbp checkpoint (an HDF5 file without cnnbp's checksum)"), line


# ---- data files whose headers declare more than they hold, or more than memory holds ---------------------

#: the memory the data-file cases may use: a file declaring more is refused before it is read
DATA_BUDGET = 64_000_000


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, ...]:
    """Declared shapes: small, plausible, or astronomically large (up to 2^32 per axis, as IDX allows)."""
    dim = st.one_of(st.integers(0, 9), st.sampled_from([4, 28, 60000, 10**6, 10**9, 2**31, 2**32 - 1]))
    return tuple(draw(st.lists(dim, min_size=1, max_size=4)))


def lying_idx(root: Path, which: int, dims: tuple[int, ...], payload: int, gz: bool) -> Path:
    """The valid tiny MNIST folder with file ``which`` replaced: an images/labels header declaring
    ``dims`` (ubyte) followed by ``payload`` zero bytes (gzip-compressed when ``gz``: a small file that
    decompresses to ``payload`` bytes)."""
    folder, files = data_files(root, "idx", gz)
    magic = bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    data = magic + bytes(payload)
    files[which].write_bytes(gzip.compress(data, compresslevel=1, mtime=0) if gz else data)
    return folder


def lying_npz(root: Path, dims: tuple[int, ...], descr: str, payload: int, compressed: bool) -> Path:
    """An NPZ whose x_train header declares ``dims`` of dtype ``descr`` over ``payload`` bytes of data."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": descr, "fortran_order": False, "shape": dims})
    y = io.BytesIO()
    np.save(y, np.zeros(dims[0] if dims and dims[0] < 100 else 3, np.uint8))
    path = root / "d.npz"
    how = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", how) as z:
        z.writestr("x_train.npy", head.getvalue() + bytes(payload))
        z.writestr("y_train.npy", y.getvalue())
    return path


def odd_hdf5(root: Path, dims: tuple[int, ...], kind: str) -> Path:
    """An HDF5 file whose x_train is a dataset of ``dims`` declared but never written (chunked and
    compressed: a few bytes on disk), or something that is no plain dataset at all."""
    path = root / "d.h5"
    with h5py.File(path, "w") as f:
        f["y_train"] = np.zeros(3, np.uint8)
        if kind == "declared":
            if all(dims):  # chunked and compressed: nothing of it is on disk
                chunks = tuple(min(d, 64) for d in dims)
                f.create_dataset("x_train", shape=dims, dtype="f4", chunks=chunks, compression="gzip")
            else:
                f.create_dataset("x_train", shape=dims, dtype="f4")
        elif kind == "loop":
            f["x_train"] = h5py.SoftLink("/x_train")
        elif kind == "external":
            f["x_train"] = h5py.ExternalLink("missing.h5", "/x")
        elif kind == "strings":
            f.create_dataset("x_train", data=np.array([b"a", b"bc", b"d"]))
        elif kind == "vlen":
            f.create_dataset("x_train", data=["a", "bc", "d"], dtype=h5py.string_dtype())
        elif kind == "compound":
            f.create_dataset("x_train", data=np.zeros(3, dtype=[("a", "f4"), ("b", "i2")]))
        elif kind == "empty":
            f.create_dataset("x_train", data=h5py.Empty("f4"))
        elif kind == "group":
            f.create_group("x_train")["inner"] = np.zeros(3)
    return path


@settings(FUZZ, max_examples=60)
@given(
    source=st.sampled_from(["idx", "npz", "hdf5"]),
    dims=shapes(),
    payload=st.sampled_from([0, 7, 48, 4096, 8 * 2**20]),
    which=st.integers(0, 3),
    gz=st.booleans(),
    descr=st.sampled_from(["<f4", "|u1", ">f8", "|O", "<U5", "|V8", "<c16"]),
    kind=st.sampled_from(["declared", "declared", "loop", "external", "strings", "vlen", "compound",
                          "empty", "group"]),
)  # fmt: skip
# gzip bombs: 8 MiB of zeros in a few kB; declared larger than memory, or small with the rest left unread
@example(source="idx", dims=(60000, 28, 28), payload=2**23, which=0, gz=True, descr="|u1", kind="declared")
@example(source="idx", dims=(9, 4, 4), payload=2**23, which=0, gz=True, descr="|u1", kind="declared")
@example(source="npz", dims=(10**9, 64), payload=7, which=0, gz=True, descr="<f4", kind="declared")
@example(source="hdf5", dims=(10**9, 1, 8, 8), payload=0, which=0, gz=False, descr="<f4", kind="declared")
@example(source="hdf5", dims=(3,), payload=0, which=0, gz=False, descr="<f4", kind="loop")
def _declared_cases(
    source: str, dims: tuple, payload: int, which: int, gz: bool, descr: str, kind: str
) -> None:
    with scratch() as root, pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "available", lambda: DATA_BUDGET)
        if source == "idx":
            path = lying_idx(root, which, dims, payload, gz)
            declared = int(np.prod(dims, dtype=object))
        elif source == "npz":
            path = lying_npz(root, dims, descr, payload, gz)
            declared = int(np.prod(dims, dtype=object)) * np.dtype(descr).itemsize
        else:
            path = odd_hdf5(root, dims, kind)
            declared = int(np.prod(dims, dtype=object)) * 4 if kind == "declared" else 0
        cfg_path = root / "c.yaml"
        cfg_path.write_text(yaml.safe_dump(data_config(source, path)), encoding="utf-8")
        out = root / "runs"
        args = ["train", str(cfg_path), "--out", str(out), "--quiet", "--dry-run"]
        code = check(f"declared sizes ({source})", args, root, out)
        # a header that passes the checks before the size (the magic, the dtype) and declares more than
        # the memory available is refused by the size it declares (or as holding less than it declares)
        sized = {
            "idx": len(dims) == (3 if which % 2 == 0 else 1),
            "npz": not np.dtype(descr).hasobject,
            "hdf5": kind == "declared",
        }[source]
        if sized and declared > 2 * DATA_BUDGET:
            assert code == 2 and ("needs about" in LAST["stderr"] or "declares" in LAST["stderr"]), LAST


def test_data_files_are_sized_before_they_are_read() -> None:
    """Headers that declare more than the file holds, or than memory holds (gzip bombs, 10⁹-row HDF5
    datasets, 256 GB NPZ headers), and HDF5 files that are no plain numeric dataset: one line, exit 2,
    and a size beyond the memory available is refused by its declared size, before it is read."""
    _declared_cases()
    for source in ("idx", "npz", "hdf5"):
        report(f"declared sizes ({source})")


# ---- --set values ------------------------------------------------------------------------------------

SET_KEYS = st.one_of(
    st.sampled_from([".".join(map(str, p)) for p in paths(base_config()) if p[:2] != ("data", "x")]),
    st.sampled_from(["seed", "model.layers[0].padding", "model.layers[0].kernel", "model.layers[3].units",
                     "train.batch_size", "record.probe", "model.input_shape", "train.epochs", "name",
                     "data.limit", "model.init_from", "train.schedule", "plugins"]),
    st.lists(st.sampled_from(["a", "train", "0", "[1]", "x"]), min_size=1, max_size=80).map(".".join),
)  # fmt: skip
SET_VALUES = st.one_of(
    st.sampled_from(["2**64", "18446744073709551616", "9223372036854775808", "-9223372036854775809",
                     "1000000000000", "1e400", "-1e-400", ".nan", "0x7fffffffffffffff", "0b1", "1_000",
                     "~", "''", "[]", "{}", "!!binary AA==", "!!python/object:os.system x", "\x00",
                     "&a [*a]", "&a {b: *a}", "[" * 70 + "]" * 70, "{a: " * 70 + "1" + "}" * 70,
                     "[&x [1,2,3,4,5,6,7,8,9], [*x,*x,*x,*x,*x,*x,*x,*x,*x]]"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.text(max_size=20),
    st.lists(st.integers(-(2**65), 2**65), max_size=4).map(str),
)  # fmt: skip


@settings(FUZZ, max_examples=150)
@given(sets=st.lists(st.tuples(SET_KEYS, SET_VALUES), min_size=1, max_size=3))
def _set_cases(sets: list[tuple[str, str]]) -> None:
    with scratch() as root:
        path = root / "c.yaml"
        path.write_text(yaml.safe_dump(base_config()), encoding="utf-8")
        out = root / "runs"
        args = ["train", str(path), "--out", str(out), "--quiet", "--dry-run"]
        for key, value in sets:
            args += ["--set", f"{key}={value}"]
        check("--set values", args, root, out)
        assert "-24165984" not in LAST["stderr"]  # no size wrapped around in int64


def test_set_values_run_or_fail_in_one_line() -> None:
    """Any KEY=VALUE, however large, deep, self-referring or odd, is validated to what the program can
    hold: the dry run passes or ends in one line and exit 2."""
    _set_cases()
    report("--set values")


# ---- signals at any moment -------------------------------------------------------------------------------

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: (event, which): after optimiser step k, before validating / after checkpointing epoch e, at the start,
#: or inside the n-th checkpoint build (HDF5 writing it in memory)
MOMENTS = st.one_of(
    st.tuples(st.just("batch"), st.integers(1, 6)),
    st.tuples(st.just("validate"), st.integers(1, 3)),
    st.tuples(st.just("epoch"), st.integers(0, 3)),
    st.tuples(st.just("start"), st.just(0)),
    st.tuples(st.just("build"), st.integers(1, 4)),
)


class SignalAt(Callback):
    """Sends ``signals`` to this process at one moment of a run (the handler runs before raise_signal
    returns)."""

    def __init__(self, moment: tuple[str, int], signals: list[int]) -> None:
        self.moment, self.signals, self.builds = moment, signals, 0

    def fire(self, event: str, which: int) -> None:
        if (event, which) == self.moment:
            for s in self.signals:
                signal.raise_signal(s)

    def on_start(self, info: Any) -> None:
        self.fire("start", 0)

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        self.fire("batch", step)

    def on_validate(self, epoch: int, samples: int) -> None:
        self.fire("validate", epoch)

    def on_epoch(self, row: dict[str, float]) -> None:
        self.fire("epoch", int(row["epoch"]))

    def building(self) -> None:
        self.builds += 1
        self.fire("build", self.builds)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The tiny run (3 epochs of 2 steps, a checkpoint each) trained without a stop, and its last state."""
    from cnnbp.checkpoint import read_checkpoint

    root = tmp_path_factory.mktemp("straight")
    config = write_config(root, tiny_config(epochs=3, every=1))
    result = runner.invoke(app, ["train", str(config), "--out", str(root / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return config, read_checkpoint(find_checkpoints(root / "runs" / "tiny")[-1][1])


@settings(FUZZ, max_examples=20)
@given(
    moment=MOMENTS,
    names=st.sampled_from([["INT"], ["TERM"], ["INT", "INT"], ["TERM", "INT"], ["INT", "TERM"]]),
)
@example(moment=("epoch", 3), names=["INT"])  # after the last checkpoint: the run is done, exit 0
@example(moment=("build", 2), names=["INT", "INT"])  # a second Ctrl-C inside an HDF5 write
@example(moment=("build", 4), names=["TERM"])
def _signal_cases(straight: tuple[Path, Any], moment: tuple[str, int], names: list[str]) -> None:
    from cnnbp import checkpoint
    from cnnbp.checkpoint import read_checkpoint
    from cnnbp.commands import train as train_command
    from cnnbp.runs import read_status

    config, reference = straight
    sigs = [SIGNALS[n] for n in names]
    at = SignalAt(moment, sigs)
    original_cb, original_resume = train_command._callbacks, checkpoint._write_resume

    def write_resume(*args: Any) -> None:
        at.building()
        original_resume(*args)

    with scratch() as root:
        out, run = root / "runs", root / "runs" / "tiny"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_command, "_callbacks", lambda *a, **k: [*original_cb(*a, **k), at])
            patch.setattr(checkpoint, "_write_resume", write_resume)
            result = runner.invoke(app, ["train", str(config), "--out", str(out), "--quiet"])
        code = result.exit_code
        what = f"{moment} {names}\n{result.output}"
        assert "Traceback" not in result.output and "Exception ignored" not in result.output, what
        epochs = [read_checkpoint(p).epoch for _, p in find_checkpoints(run)]  # each reads back whole
        assert not list(run.rglob("*.tmp")), what
        status = read_status(run)["state"]
        # finished: a signal once the last checkpoint is written, or a first one while it is being made
        done = moment == ("epoch", 3) or (len(sigs) == 1 and moment in (("validate", 3), ("build", 4)))
        assert (code == 0) == done, what
        if code == 0:
            assert (epochs[-1], status) == (3, "finished"), what
        else:
            assert code == EXIT[sigs[-1]] and status == "interrupted", what
            lines = result.stderr.strip().splitlines()
            assert lines[0].startswith(("interrupted in epoch ", "stopped at once (second signal)")), what
            assert lines[-1] == f"resume with: cnnbp train --resume {run}", what
            resumed = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
            assert resumed.exit_code == 0, resumed.output
        final = read_checkpoint(find_checkpoints(run)[-1][1])
        assert (final.epoch, final.step) == (reference.epoch, reference.step)
        for name, group in reference.weights.items():
            for key, value in group.items():
                assert np.array_equal(final.weights[name][key], value), f"{name}.{key} after {what}"
    CASES.setdefault("signals", Counter())[f"exit {code}"] += 1


@pytest.mark.slow
def test_signals_at_any_moment_stop_truthfully_and_resume_bit_identically(straight: tuple[Path, Any]) -> None:
    """One or two SIGINT/SIGTERM at any moment of a run — mid-batch, at validation, after a checkpoint,
    inside the HDF5 write of one: the exit code is the truth (0 only when the run finished, else 130/143
    of the last signal), no traceback, every checkpoint whole, no temporary file, and resuming ends in
    exactly the weights of a run never stopped."""
    _signal_cases(straight)
    report("signals")
