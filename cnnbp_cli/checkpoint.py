"""HDF5 checkpoints: the self-contained state of a run at the end of an epoch (or inside one, when stopped).

A run keeps its checkpoints in ``runs/<name>/checkpoints/NNNN.h5``, NNNN being the epoch zero-padded to
four digits (more when the epoch needs them).  ``0000.h5`` is the initial state, before any update; then
one every ``record.every`` epochs, always one for the last epoch, and one when a run is stopped (see
``interrupted`` below).  Each file stands on its own:

```
/                         attrs: format="cnnbp-checkpoint", format_version=1, cnnbp_version,
                                 created (ISO 8601 UTC), run_name, epoch, step, seed, dtype, loss,
                                 interrupted (bool), train_loss, train_acc, val_loss, val_acc
                                 (this epoch's metrics; NaN when not measured — checkpoint 0 has no
                                 training metrics, and a run without validation data no val_*)
/config                   the resolved config as YAML text (a string dataset)
/model                    attrs: layer_names (in order), input_shape
/model/<layer>            attrs: type, input_shape, output_shape, and the layer's hyper-parameters
/weights/<layer>/<param>  parameters of every parametric layer
/grads/<layer>/<param>    gradient of the probe batch's mean loss at these weights
/deltas/<layer>           (n_probe, *output_shape): per-sample ∂L_x/∂(layer output), for EVERY layer
                          (activations, pools and flatten included)
/probe/x, /probe/y        the probe samples and their targets (class indices or target vectors)
/probe/index              their indices in the training set
/optimizer                attrs: type="sgd", lr, momentum, weight_decay
/optimizer/state/<layer>/<param>   momentum buffers (empty without momentum, or before the first step)
/metrics/<column>         the run's history up to this epoch, one entry per epoch: epoch, step,
                          train_loss, train_acc, val_loss, val_acc, lr, seconds
/resume                   attrs: where ``cnnbp train --resume`` continues from (optional; files
                          without it resume at the end of their epoch):
                            batches_done, batches_per_epoch   batches of epoch ``epoch`` already run
                            epoch_complete   the epoch ended and its metrics row is in /metrics
                            loss_sum, n_correct   running train sums of the epoch (Σ loss×size, hits)
                            first_loss       the run's first batch loss (divergence_factor's reference)
                            data_sha256      fingerprint of the training and validation arrays
```

An ``interrupted`` checkpoint was written on Ctrl-C/SIGTERM rather than on the ``record.every``
schedule; when ``/resume`` says the epoch is not complete it holds the state after
``batches_done`` batches of that epoch (the epoch's metrics are NaN), and the row of that epoch is
not in ``/metrics`` yet.  A resumed run replaces it with the complete checkpoint of its epoch.

Integrity: the file starts with a 512-byte HDF5 *user block* (HDF5 itself skips it) holding
``cnnbp-checkpoint sha256 <64 hex digits>``, the SHA-256 of every byte after the block.  Readers check
it before HDF5 parses anything, so a truncated or bit-flipped file is reported as damaged instead of
loading wrong numbers, or sending the HDF5 library into one of the endless loops some damaged files
cause.  Files without the block (the first files of format 1) are read unchecked.

Layer names such as ``conv1.relu`` are used as HDF5 names as they are.  Arrays are stored in the run's
dtype.  A checkpoint is written to ``NNNN.h5.tmp`` beside its final name, flushed and fsynced, then
renamed into place with ``os.replace``: a reader sees a whole checkpoint or none.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from cnnbp import __version__
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from cnnbp.errors import UserError

FORMAT = "cnnbp-checkpoint"
USERBLOCK = 512
_HEADER = b"cnnbp-checkpoint sha256 "
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: how long a file without a valid checksum may take to parse (plus 1 s per 20 MB) before it is damaged
GUARD_SECONDS = 10.0
FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")

Params = dict[str, dict[str, np.ndarray]]
_NAME = re.compile(r"^(\d{4,})\.h5$")


@dataclass(frozen=True)
class LayerRecord:
    """One layer as the checkpoint describes it."""

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    hyper: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerRecord:
    """The optimiser's settings and its state (momentum buffers, keyed like the weights)."""

    type: str
    lr: float
    momentum: float
    weight_decay: float
    state: Params


@dataclass(frozen=True)
class ResumeRecord:
    """Where a resumed run continues: the ``/resume`` group (see the module docstring)."""

    batches_done: int
    batches_per_epoch: int
    epoch_complete: bool
    loss_sum: float
    n_correct: int
    first_loss: float
    data_sha256: str


@dataclass(frozen=True)
class Checkpoint:
    """Everything one checkpoint file holds, fully loaded into NumPy arrays and plain values."""

    path: Path
    format_version: int
    cnnbp_version: str
    created: str
    run_name: str
    epoch: int
    step: int
    seed: int
    dtype: str
    loss: str
    interrupted: bool
    metrics: dict[str, float]  # this epoch's train_loss, train_acc, val_loss, val_acc
    config: str  # the resolved YAML
    input_shape: tuple[int, ...]
    layers: list[LayerRecord]
    weights: Params
    grads: Params
    deltas: dict[str, np.ndarray]
    probe_x: np.ndarray
    probe_y: np.ndarray
    probe_index: np.ndarray
    optimizer: OptimizerRecord
    history: dict[str, np.ndarray]
    resume: ResumeRecord | None = None  # None in files written before /resume existed

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]


# ---- names and places --------------------------------------------------------------------------------


def checkpoint_name(epoch: int) -> str:
    """``NNNN.h5`` for an epoch (zero-padded to four digits)."""
    return f"{epoch:04d}.h5"


def find_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every finished checkpoint in a run folder, by epoch (``.tmp`` files ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete ``*.tmp`` files an interrupted write left in a checkpoints folder; returns what was removed."""
    removed = []
    if Path(folder).is_dir():
        for p in Path(folder).glob("*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def resolve_target(target: Path, checkpoint: str | int | None = None) -> Path:
    """The checkpoint file a command should read.

    ``target`` is a run folder (its last checkpoint, or the one of epoch ``checkpoint``), a run's
    ``checkpoints`` folder (the same), or a ``.h5`` file (itself; ``checkpoint`` must then be None).
    ``checkpoint`` may be an epoch number, its digits, or ``"last"``.
    """
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run folder or checkpoint file")
    if target.is_file():
        if checkpoint is not None and str(checkpoint) != "last":
            raise UserError(f"{target}: --checkpoint selects a checkpoint of a run folder, not of a file")
        return target
    run_dir = target.parent if target.name == CHECKPOINTS and not (target / CHECKPOINTS).is_dir() else target
    found = find_checkpoints(run_dir)
    if not found:
        raise UserError(f"{target}: no checkpoints found (expected {CHECKPOINTS}/NNNN.h5 in a run folder)")
    if checkpoint is None or str(checkpoint) == "last":
        return found[-1][1]
    text = str(checkpoint).strip()
    if not text.isdigit():
        raise UserError(f"--checkpoint: expected an epoch number or 'last', got {checkpoint!r}")
    epoch = int(text)
    for e, p in found:
        if e == epoch:
            return p
    have = ", ".join(str(e) for e, _ in found)
    raise UserError(f"{run_dir}: no checkpoint for epoch {epoch} (have {have})")


# ---- writing -----------------------------------------------------------------------------------------


def write_checkpoint(
    path: Path,
    *,
    run_name: str,
    epoch: int,
    step: int,
    seed: int,
    loss: str,
    config: str,
    net: Sequential,
    optimizer: SGD,
    probe_x: np.ndarray,
    probe_y: np.ndarray,
    probe_index: np.ndarray,
    grads: Mapping[str, Mapping[str, np.ndarray]],
    deltas: Mapping[str, np.ndarray],
    metrics: Mapping[str, float],
    history: Mapping[str, Sequence[float] | np.ndarray],
    interrupted: bool = False,
    resume: ResumeRecord | None = None,
) -> Path:
    """Write one checkpoint atomically (``.tmp``, fsync, ``os.replace``) and return its path.

    ``metrics`` holds this epoch's train/val loss and accuracy (missing keys are stored as NaN);
    ``history`` the metric columns of every epoch so far; ``resume`` the ``/resume`` group.  Arrays are
    cast to the network's dtype.
    """
    path = Path(path)
    dtype = np.dtype(net.dtype or np.float64)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
            root = f.attrs
            root["format"] = FORMAT
            root["format_version"] = FORMAT_VERSION
            root["cnnbp_version"] = __version__
            root["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            root["run_name"] = run_name
            root["epoch"] = int(epoch)
            root["step"] = int(step)
            root["seed"] = int(seed)
            root["dtype"] = dtype.name
            root["loss"] = loss
            root["interrupted"] = bool(interrupted)
            for key in METRICS:
                root[key] = float(metrics.get(key, np.nan))

            f.create_dataset("config", data=config, dtype=h5py.string_dtype())

            model = f.create_group("model")
            infos = net.summary()
            model.attrs["layer_names"] = [info.name for info in infos]
            model.attrs["input_shape"] = np.asarray(net.input_shape, dtype=np.int64)
            for info, layer in zip(infos, net.layers, strict=True):
                g = _group(model, info.name)
                g.attrs["type"] = info.kind
                g.attrs["input_shape"] = np.asarray(info.input_shape, dtype=np.int64)
                g.attrs["output_shape"] = np.asarray(info.output_shape, dtype=np.int64)
                for key, value in layer.hyper().items():
                    g.attrs[key] = _to_attr(value)

            _write_params(f.create_group("weights"), net.parameters(), dtype)
            _write_params(f.create_group("grads"), grads, dtype)
            dg = f.create_group("deltas")
            for name, d in deltas.items():
                dg.create_dataset(_check_name(name), data=np.asarray(d).astype(dtype, copy=False))

            pg = f.create_group("probe")
            pg.create_dataset("x", data=np.asarray(probe_x).astype(dtype, copy=False))
            y = np.asarray(probe_y)
            pg.create_dataset("y", data=y if y.dtype.kind in "iu" else y.astype(dtype, copy=False))
            pg.create_dataset("index", data=np.asarray(probe_index, dtype=np.int64))

            og = f.create_group("optimizer")
            og.attrs["type"] = "sgd"
            og.attrs["lr"] = optimizer.lr
            og.attrs["momentum"] = optimizer.momentum
            og.attrs["weight_decay"] = optimizer.weight_decay
            _write_params(og.create_group("state"), optimizer.state, dtype)

            mg = f.create_group("metrics")
            for column, values in history.items():
                kind = np.int64 if column in ("epoch", "step") else np.float64
                mg.create_dataset(column, data=np.asarray(values).astype(kind))

            if resume is not None:
                ra = f.create_group("resume").attrs
                ra["batches_done"] = int(resume.batches_done)
                ra["batches_per_epoch"] = int(resume.batches_per_epoch)
                ra["epoch_complete"] = bool(resume.epoch_complete)
                ra["loss_sum"] = float(resume.loss_sum)
                ra["n_correct"] = int(resume.n_correct)
                ra["first_loss"] = float(resume.first_loss)
                ra["data_sha256"] = str(resume.data_sha256)
        _seal(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        # also on Ctrl-C: never leave a half-written .tmp behind us
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, a folder that vanished, no permission
            raise UserError(f"{path}: cannot write checkpoint ({_short(e)})") from None
        raise
    return path


def _group(parent: h5py.Group, name: str) -> h5py.Group:
    return parent.create_group(_check_name(name))


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} cannot be an HDF5 name")
    return name


def _write_params(group: h5py.Group, params: Mapping[str, Mapping[str, np.ndarray]], dtype: np.dtype) -> None:
    for lname, ps in params.items():
        if not ps:
            continue
        g = _group(group, lname)
        for key, value in ps.items():
            g.create_dataset(_check_name(key), data=np.asarray(value).astype(dtype, copy=False))


def _seal(path: Path) -> None:
    """Write the checksum of everything after the user block into it, then fsync the file."""
    with open(path, "r+b") as fh:
        fh.seek(USERBLOCK)
        digest = _sha(fh)
        fh.seek(0)
        fh.write((_HEADER + digest.encode("ascii") + b"\n").ljust(USERBLOCK, b"\0"))
        fh.flush()
        os.fsync(fh.fileno())


def _sha(fh: Any) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _verify(path: Path) -> str:
    """ "ok" when the user-block checksum matches, "mismatch" when it does not, "none" without one."""
    with open(path, "rb") as fh:
        head = fh.read(USERBLOCK)
        if not head.startswith(_HEADER):
            fh.seek(USERBLOCK)
            # a user block that is not ours, in front of an HDF5 superblock: our header, damaged
            return "mismatch" if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE else "none"
        expected = head[len(_HEADER) : len(_HEADER) + 64]
        if len(head) < USERBLOCK:
            return "mismatch"
        fh.seek(USERBLOCK)
        return "ok" if _sha(fh).encode("ascii") == expected else "mismatch"


def _to_attr(value: Any) -> Any:
    """A hyper-parameter as an HDF5 attribute: numbers, strings and lists of numbers as they are."""
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value
    ):
        return np.asarray(value)
    # anything else (None, nested structures) keeps its meaning as JSON text
    return json.dumps(value)


def _from_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some file systems refuse to fsync a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- reading -----------------------------------------------------------------------------------------


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a whole checkpoint; any problem with the file is a one-line UserError naming it.

    A file whose checksum matches is parsed here.  Any other file (one without a checksum, or whose
    content no longer matches it) is parsed in a forked child with a time limit: some damaged HDF5
    files send the HDF5 library into an endless loop, which must not hang the command.  A checksum
    mismatch is an error even when the file still parses; the child's parse only finds a more precise
    message (a newer format, a missing group) than "truncated or corrupt".
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    try:
        status = _verify(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read the file ({_short(e)})") from None
    if status == "ok":
        return _parse(path)
    ck = _parse_guarded(path)
    if status == "mismatch":
        raise UserError(
            f"{path}: cannot read checkpoint, truncated or corrupt file (its content does not match its "
            "checksum)"
        )
    return ck


def _parse(path: Path) -> Checkpoint:
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read the file ({_short(e)})") from None
    if not is_hdf5:
        raise UserError(f"{path}: not a cnnbp checkpoint (not an HDF5 file)")
    try:
        with h5py.File(path, "r") as f:
            return _read(f, path)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse an untrusted file means a damaged file
        # h5py reports truncation and damaged blocks as OSError, KeyError (an object header that does
        # not parse), RuntimeError or ValueError; a bad attribute type as TypeError or IndexError
        reason = _short(e)
        raise UserError(f"{path}: cannot read checkpoint, truncated or corrupt file ({reason})") from None


def _parse_guarded(path: Path) -> Checkpoint:
    """:func:`_parse` in a forked child with a time limit (in-process where there is no fork)."""
    if "fork" not in mp.get_all_start_methods():
        return _parse(path)
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_parse_child, args=(path, send), daemon=True)
    child.start()
    send.close()
    limit = GUARD_SECONDS + path.stat().st_size / 20e6
    try:
        if not receive.poll(limit):
            raise UserError(
                f"{path}: cannot read checkpoint, truncated or corrupt file (HDF5 did not finish reading it)"
            )
        kind, value = receive.recv()
    except (EOFError, OSError):  # the child died without a word (a crash inside HDF5)
        raise UserError(f"{path}: cannot read checkpoint, truncated or corrupt file (HDF5 failed)") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if kind == "error":
        raise UserError(value)
    return value


def _parse_child(path: Path, send: Any) -> None:
    try:
        result: tuple[str, Any] = ("ok", _parse(path))
    except UserError as e:
        result = ("error", str(e))
    except BaseException as e:  # noqa: BLE001 - report anything, never a traceback from the child
        result = ("error", f"{path}: cannot read checkpoint, truncated or corrupt file ({_short(e)})")
    send.send(result)
    send.close()


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _read(f: h5py.File, path: Path) -> Checkpoint:
    attrs = {k: _from_attr(v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT:
        raise UserError(f"{path}: not a cnnbp checkpoint (an HDF5 file without format={FORMAT!r})")
    version = attrs.get("format_version")
    if not isinstance(version, int):
        raise UserError(f"{path}: not a cnnbp checkpoint (no format_version)")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path}: written by a newer cnnbp (format {version}); this cnnbp reads format {FORMAT_VERSION}"
        )

    def need(name: str) -> Any:
        if name not in f:
            raise UserError(f"{path}: damaged cnnbp checkpoint: /{name} is missing")
        return f[name]

    def attr(key: str) -> Any:
        if key not in attrs:
            raise UserError(f"{path}: damaged cnnbp checkpoint: attribute {key!r} is missing")
        return attrs[key]

    model = need("model")
    layer_names = [str(n) for n in _from_attr(model.attrs.get("layer_names", np.array([])))]
    layers = []
    for name in layer_names:
        g = need(f"model/{name}")
        a = {k: _from_attr(v) for k, v in g.attrs.items()}
        layers.append(
            LayerRecord(
                name=name,
                type=str(a.pop("type", "")),
                input_shape=tuple(int(s) for s in a.pop("input_shape", [])),
                output_shape=tuple(int(s) for s in a.pop("output_shape", [])),
                hyper=a,
            )
        )

    config = need("config")[()]
    config = config.decode("utf-8") if isinstance(config, bytes) else str(config)
    opt = need("optimizer")
    return Checkpoint(
        path=path,
        format_version=version,
        cnnbp_version=str(attr("cnnbp_version")),
        created=str(attr("created")),
        run_name=str(attr("run_name")),
        epoch=int(attr("epoch")),
        step=int(attr("step")),
        seed=int(attr("seed")),
        dtype=str(attr("dtype")),
        loss=str(attr("loss")),
        interrupted=bool(attr("interrupted")),
        metrics={k: float(attrs.get(k, np.nan)) for k in METRICS},
        config=config,
        input_shape=tuple(int(s) for s in _from_attr(model.attrs.get("input_shape", np.array([])))),
        layers=layers,
        weights=_read_params(need("weights"), layer_names),
        grads=_read_params(need("grads"), layer_names),
        deltas={name: need(f"deltas/{name}")[()] for name in layer_names},
        probe_x=need("probe/x")[()],
        probe_y=need("probe/y")[()],
        probe_index=need("probe/index")[()],
        optimizer=OptimizerRecord(
            type=str(_from_attr(opt.attrs.get("type", "sgd"))),
            lr=float(opt.attrs.get("lr", np.nan)),
            momentum=float(opt.attrs.get("momentum", 0.0)),
            weight_decay=float(opt.attrs.get("weight_decay", 0.0)),
            state=_read_params(opt["state"], layer_names) if "state" in opt else {},
        ),
        history={k: v[()] for k, v in need("metrics").items()},
        resume=_read_resume(f),
    )


def _read_resume(f: h5py.File) -> ResumeRecord | None:
    if "resume" not in f:
        return None
    a = {k: _from_attr(v) for k, v in f["resume"].attrs.items()}
    return ResumeRecord(
        batches_done=int(a["batches_done"]),
        batches_per_epoch=int(a["batches_per_epoch"]),
        epoch_complete=bool(a["epoch_complete"]),
        loss_sum=float(a["loss_sum"]),
        n_correct=int(a["n_correct"]),
        first_loss=float(a["first_loss"]),
        data_sha256=str(a["data_sha256"]),
    )


def _read_params(group: h5py.Group, order: list[str]) -> Params:
    names = [n for n in order if n in group] + sorted(n for n in group if n not in order)
    return {n: {k: v[()] for k, v in group[n].items()} for n in names}
