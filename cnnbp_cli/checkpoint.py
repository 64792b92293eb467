"""HDF5 checkpoints: the self-contained state of a run at the end of an epoch (or inside one, when stopped).

The one checkpoint writer and reader.  A file stands on its own (format 2):

```
/                         attrs: format="cnnbp-checkpoint", format_version=2, cnnbp_version,
                                 created (ISO 8601 UTC), run_name, epoch, step, seed, dtype, loss,
                                 interrupted (bool), train_loss, train_acc, val_loss, val_acc
                                 (this epoch's metrics; NaN when not measured — checkpoint 0 has no
                                 training metrics, and a run without validation data no val_*)
/config                   the resolved config as YAML text (a string dataset)
/model                    attrs: layer_names (in order), input_shape
/model/<layer>            attrs: type (the layer kind), input_shape, output_shape, and the layer's
                          hyper-parameters (its constructor's arguments): enough to rebuild it
/weights/<layer>/<param>  parameters of every parametric layer
/state/<layer>/<buffer>   non-trainable buffers (batchnorm's running_mean, running_var); absent when the
                          network has none
/grads/<layer>/<param>    gradient of the probe batch's mean loss at these weights
/deltas/<layer>           (n_probe, *output_shape): per-sample ∂L_x/∂(layer output), for EVERY layer
/activations/<layer>      (n_probe, *output_shape): the probe samples' output of EVERY layer (absent
                          from checkpoints written before it was recorded: ``activations`` is then {})
/probe/x, /probe/y        the probe samples and their targets (class indices or target vectors)
/probe/index              their indices in the training set
/optimizer                attrs: type (sgd, adam, ...), t (updates so far), and its hyper-parameters
/optimizer/<buffer>/<layer>/<param>   the optimiser's state buffers (sgd: velocity; adam: exp_avg,
                          exp_avg_sq), absent before they are first used
/metrics/<column>         the run's history up to this epoch, one entry per epoch: epoch, step,
                          train_loss, train_acc, val_loss, val_acc, lr, seconds
/resume                   attrs: where ``cnnbp train --resume`` continues from:
                            batches_done, batches_per_epoch   batches of epoch ``epoch`` already run
                            epoch_complete   the epoch ended and its metrics row is in /metrics
                            loss_sum, n_correct   running train sums of the epoch (Σ loss×size, hits)
                            first_loss       the run's first batch loss (divergence_factor's reference)
                            data_sha256      fingerprint of the training and validation arrays
```

Format 1 (cnnbp 0.1) is read too: its optimiser was always SGD, with the velocity at
``/optimizer/state/<layer>/<param>``.

An ``interrupted`` checkpoint was written on Ctrl-C/SIGTERM rather than on the ``record.every``
schedule; when ``/resume`` says the epoch is not complete it holds the state after
``batches_done`` batches of that epoch, and the row of that epoch is not in ``/metrics`` yet.

Integrity: the file starts with a 512-byte HDF5 *user block* (HDF5 itself skips it) holding
``cnnbp-checkpoint sha256 <64 hex digits>``, the SHA-256 of every byte after the block.  The file is
built in HDF5's own memory (its core driver, no backing file) and written with
:func:`cnnbp.files.write_atomic` (ordinary file I/O, fsync, rename); no HDF5 call ever touches the run
folder, so a full or read-only disk is one clean error and every earlier checkpoint stays whole.  A
reader loads the bytes, checks the checksum, and only then lets HDF5 parse them (from memory), so a
truncated, bit-flipped or foreign file is reported as damaged instead of loading wrong numbers (or
sending the HDF5 library into one of the loops some damaged files cause).  Neither way calls back into
Python from HDF5, so Ctrl-C is never swallowed inside an HDF5 call.

Layer names such as ``conv1.relu`` are used as HDF5 names as they are.  Arrays are stored in the run's
dtype.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cnnbp import __version__
from cnnbp.core.errors import ParameterError, ShapeError
from cnnbp.core.network import Sequential
from cnnbp.core.optim import Optimizer
from cnnbp.core.registry import LAYERS
from cnnbp.errors import UserError
from cnnbp.files import write_atomic

FORMAT = "cnnbp-checkpoint"
FORMAT_VERSION = 2
READS = (1, 2)
USERBLOCK = 512
_HEADER = b"cnnbp-checkpoint sha256 "
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")

Params = dict[str, dict[str, np.ndarray]]


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
    """The optimiser's type, hyper-parameters and state (as its ``state_dict`` gives it)."""

    type: str
    hyper: dict[str, Any]
    state: dict[str, Any]


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
    """Everything one checkpoint file holds, as NumPy arrays and plain values.

    ``weights[layer][param]``, ``grads[layer][param]`` and ``deltas[layer]`` are the arrays;
    ``network()`` rebuilds the network at these weights.
    """

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
    resume: ResumeRecord
    state: Params = field(default_factory=dict)  # non-trainable buffers, {layer: {buffer: array}}
    #: {layer: (n_probe, *output_shape)} the probe batch's layer outputs; empty when not recorded
    activations: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def config_dict(self) -> dict[str, Any]:
        """``/config`` parsed: the run's resolved config; UserError naming the file when not a mapping."""
        from cnnbp.yamlio import load_yaml_text

        try:
            config = load_yaml_text(self.config)
        except Exception as e:  # noqa: BLE001 - any YAML problem of a stored config
            raise UserError(f"{self.path}: /config is not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(config, dict):
            raise UserError(f"{self.path}: /config is not a config mapping")
        return config

    def network(self) -> Sequential:
        """The network this checkpoint records, rebuilt from ``/model`` (each layer's kind and
        hyper-parameters) in the run's dtype, with its weights.  The plugins the run recorded are loaded
        first (and refused when missing or changed).  UserError naming the file when a layer kind is
        unknown here or does not rebuild."""
        from cnnbp.plugins import load_recorded

        if self.config.strip():  # a checkpoint written without a config holds built-in layers only
            load_recorded(self.config_dict().get("plugins"))
        try:
            layers = [LAYERS[r.type].from_hyper(r.hyper, name=r.name) for r in self.layers]
        except KeyError as e:
            raise UserError(f"{self.path}: layer kind {e.args[0]!r} is not known here") from None
        except (ShapeError, TypeError) as e:
            raise UserError(f"{self.path}: /model does not rebuild ({e})") from None
        net = Sequential(layers, self.input_shape)
        names = [info.name for info in net.summary()]
        if names != self.layer_names:
            raise UserError(f"{self.path}: /model does not rebuild its layers")
        net.build(np.random.default_rng(0), np.dtype(self.dtype))  # the values are replaced below
        try:
            net.set_parameters(self.weights)
            net.set_state(self.state)
        except ParameterError as e:
            raise UserError(f"{self.path}: /weights or /state: {e}") from None
        return net

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, epoch={self.epoch}, step={self.step})"


# ---- writing -----------------------------------------------------------------------------------------


def write_checkpoint(path: Path, **fields: Any) -> Path:
    """Write one checkpoint atomically and return its path; ``fields`` are :func:`checkpoint_bytes`'s."""
    return write_atomic(Path(path), checkpoint_bytes(**fields))


def checkpoint_bytes(
    *,
    run_name: str,
    epoch: int,
    step: int,
    seed: int,
    loss: str,
    config: str,
    net: Sequential,
    optimizer: Optimizer,
    probe_x: np.ndarray,
    probe_y: np.ndarray,
    probe_index: np.ndarray,
    grads: Mapping[str, Mapping[str, np.ndarray]],
    deltas: Mapping[str, np.ndarray],
    metrics: Mapping[str, float],
    history: Mapping[str, Sequence[float] | np.ndarray],
    resume: ResumeRecord,
    interrupted: bool = False,
    activations: Mapping[str, np.ndarray] | None = None,
) -> bytes:
    """The bytes of one checkpoint file, built in memory and sealed with its checksum.

    ``metrics`` holds this epoch's train/val loss and accuracy (missing keys are stored as NaN);
    ``history`` the metric columns of every epoch so far.  Arrays are cast to the network's dtype.
    """
    dtype = np.dtype(net.dtype or np.float64)
    with _memory_file("w") as f:
        _write_header(f, run_name, epoch, step, seed, loss, dtype, interrupted, metrics)
        f.create_dataset("config", data=config, dtype=h5py.string_dtype())
        _write_model(f.create_group("model"), net)
        _write_params(f.create_group("weights"), net.parameters(), dtype)
        if net.state():
            _write_params(f.create_group("state"), net.state(), dtype)
        _write_params(f.create_group("grads"), grads, dtype)
        dg = f.create_group("deltas")
        for name, d in deltas.items():
            dg.create_dataset(_check_name(name), data=np.asarray(d).astype(dtype, copy=False))
        if activations is not None:
            ag = f.create_group("activations")
            for name, a in activations.items():
                ag.create_dataset(_check_name(name), data=np.asarray(a).astype(dtype, copy=False))
        pg = f.create_group("probe")
        pg.create_dataset("x", data=np.asarray(probe_x).astype(dtype, copy=False))
        y = np.asarray(probe_y)
        pg.create_dataset("y", data=y if y.dtype.kind in "iu" else y.astype(dtype, copy=False))
        pg.create_dataset("index", data=np.asarray(probe_index, dtype=np.int64))
        _write_optimizer(f.create_group("optimizer"), optimizer, dtype)
        mg = f.create_group("metrics")
        for column, values in history.items():
            kind = np.int64 if column in ("epoch", "step") else np.float64
            mg.create_dataset(column, data=np.asarray(values).astype(kind))
        _write_resume(f.create_group("resume").attrs, resume)
        f.flush()
        image = f.id.get_file_image()  # from the superblock on: HDF5 leaves the user block out
    if not image.startswith(_HDF5_SIGNATURE):  # an HDF5 that keeps the (empty) user block in the image
        image = image[USERBLOCK:]
    header = (_HEADER + _sha256(image).encode("ascii") + b"\n").ljust(USERBLOCK, b"\0")
    return header + image


_CHUNK = 1 << 24
_names = itertools.count()


def _sha256(data: bytes | memoryview) -> str:
    """The SHA-256 hex digest, taken in pieces so a signal is handled between them."""
    h, view = hashlib.sha256(), memoryview(data)
    for i in range(0, len(view), _CHUNK):
        h.update(view[i : i + _CHUNK])
    return h.hexdigest()


def _memory_file(mode: str, image: bytes | None = None) -> h5py.File:
    """An HDF5 file in HDF5's own memory (the core driver, no backing file): a new one (``"w"``, with
    the user block) or one opened from ``image`` (``"r"``).

    Why not a Python file object: h5py then calls back into Python for every read and write, and an
    exception raised in a callback (Ctrl-C) is swallowed there.  The name is unique in the process, as
    HDF5 takes two open files of one name for one file.
    """
    name = f"cnnbp-memory-{os.getpid()}-{next(_names)}.h5"
    if mode == "w":
        return h5py.File(name, "w", driver="core", backing_store=False, userblock_size=USERBLOCK)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    fapl.set_file_image(image)
    return h5py.File(h5py.h5f.open(name.encode(), h5py.h5f.ACC_RDONLY, fapl=fapl))


def _write_header(
    f: h5py.File, run_name: str, epoch: int, step: int, seed: int, loss: str, dtype: np.dtype,
    interrupted: bool, metrics: Mapping[str, float],
) -> None:  # fmt: skip
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


def _write_model(model: h5py.Group, net: Sequential) -> None:
    infos = net.summary()
    model.attrs["layer_names"] = [info.name for info in infos]
    model.attrs["input_shape"] = np.asarray(net.input_shape, dtype=np.int64)
    for info, layer in zip(infos, net.layers, strict=True):
        g = model.create_group(_check_name(info.name))
        g.attrs["type"] = info.kind
        g.attrs["input_shape"] = np.asarray(info.input_shape, dtype=np.int64)
        g.attrs["output_shape"] = np.asarray(info.output_shape, dtype=np.int64)
        for key, value in layer.hyper().items():
            g.attrs[key] = _to_attr(value)


def _write_optimizer(og: h5py.Group, optimizer: Optimizer, dtype: np.dtype) -> None:
    og.attrs["type"] = optimizer.kind
    for key, value in optimizer.hyper().items():
        og.attrs[key] = _to_attr(value)
    for key, value in optimizer.state_dict().items():
        if isinstance(value, Mapping):
            _write_params(og.create_group(_check_name(key)), value, dtype)
        else:
            og.attrs[key] = _to_attr(value)


def _write_resume(ra: h5py.AttributeManager, resume: ResumeRecord) -> None:
    ra["batches_done"] = int(resume.batches_done)
    ra["batches_per_epoch"] = int(resume.batches_per_epoch)
    ra["epoch_complete"] = bool(resume.epoch_complete)
    ra["loss_sum"] = float(resume.loss_sum)
    ra["n_correct"] = int(resume.n_correct)
    ra["first_loss"] = float(resume.first_loss)
    ra["data_sha256"] = str(resume.data_sha256)


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} cannot be an HDF5 name")
    return name


def _write_params(group: h5py.Group, params: Mapping[str, Mapping[str, np.ndarray]], dtype: np.dtype) -> None:
    for lname, ps in params.items():
        if not ps:
            continue
        g = group.create_group(_check_name(lname))
        for key, value in ps.items():
            g.create_dataset(_check_name(key), data=np.asarray(value).astype(dtype, copy=False))


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


# ---- reading -----------------------------------------------------------------------------------------


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a whole checkpoint; any problem with the file is a one-line UserError naming it.

    The bytes are read and their checksum checked before HDF5 parses anything; a file without the
    checksum (not written by cnnbp, or by a pre-release one) is refused.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the file ({_short(e)})") from None
    if not data.startswith(_HEADER):
        if _HDF5_SIGNATURE in (data[:8], data[USERBLOCK : USERBLOCK + 8]):
            raise UserError(f"{path}: not a cnnbp checkpoint (an HDF5 file without cnnbp's checksum)")
        raise UserError(f"{path}: not a cnnbp checkpoint (not an HDF5 file)")
    expected = data[len(_HEADER) : len(_HEADER) + 64]
    if len(data) <= USERBLOCK or _sha256(memoryview(data)[USERBLOCK:]).encode("ascii") != expected:
        raise UserError(
            f"{path}: cannot read checkpoint, truncated or corrupt file (its content does not match its "
            "checksum)"
        )
    try:
        with _memory_file("r", data) as f:
            return _read(f, path)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - intact bytes that do not parse as our layout
        raise UserError(f"{path}: not a cnnbp checkpoint ({_short(e)})") from None


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
    if version not in READS:
        newer = "a newer" if version > FORMAT_VERSION else "an unknown"
        raise UserError(
            f"{path}: written by {newer} cnnbp (format {version}); this cnnbp reads formats "
            f"{', '.join(map(str, READS))}"
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
    layers = _read_layers(model, need)
    names = [layer.name for layer in layers]
    config = need("config")[()]
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
        config=config.decode("utf-8") if isinstance(config, bytes) else str(config),
        input_shape=tuple(int(s) for s in _from_attr(model.attrs.get("input_shape", np.array([])))),
        layers=layers,
        weights=_read_params(need("weights"), names),
        grads=_read_params(need("grads"), names),
        deltas={name: need(f"deltas/{name}")[()] for name in names},
        probe_x=need("probe/x")[()],
        probe_y=need("probe/y")[()],
        probe_index=need("probe/index")[()],
        optimizer=_read_optimizer(need("optimizer"), names, version),
        history={k: v[()] for k, v in need("metrics").items()},
        resume=_read_resume(need("resume")),
        state=_read_params(f["state"], names) if "state" in f else {},
        activations={n: f[f"activations/{n}"][()] for n in names if f"activations/{n}" in f},
    )


def _read_layers(model: h5py.Group, need: Any) -> list[LayerRecord]:
    names = [str(n) for n in _from_attr(model.attrs.get("layer_names", np.array([])))]
    layers = []
    for name in names:
        a = {k: _from_attr(v) for k, v in need(f"model/{name}").attrs.items()}
        layers.append(
            LayerRecord(
                name=name,
                type=str(a.pop("type", "")),
                input_shape=tuple(int(s) for s in a.pop("input_shape", [])),
                output_shape=tuple(int(s) for s in a.pop("output_shape", [])),
                hyper=a,
            )
        )
    return layers


def _read_optimizer(og: h5py.Group, names: list[str], version: int) -> OptimizerRecord:
    a = {k: _from_attr(v) for k, v in og.attrs.items()}
    kind = str(a.pop("type", "sgd"))
    if version == 1:  # always SGD; the velocity at /optimizer/state
        state: dict[str, Any] = {
            "t": 0,
            "velocity": _read_params(og["state"], names) if "state" in og else {},
        }
        return OptimizerRecord(kind, a, state)
    state = {"t": int(a.pop("t", 0))}
    for key in og:
        state[key] = _read_params(og[key], names)
    return OptimizerRecord(kind, a, state)


def _read_resume(group: h5py.Group) -> ResumeRecord:
    a = {k: _from_attr(v) for k, v in group.attrs.items()}
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
