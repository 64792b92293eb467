"""``cnnbp.export``: write a run's checkpoint as ONNX, NPZ or JSON, checked against the engine.

The network is rebuilt from the checkpoint (its ``/model`` and ``/weights``; the data the run names is
never read, so a run exports on a machine without its data set) in the run's dtype.  The file is
written to a temporary name beside its destination, verified from that file, and only then renamed
into place: a failed check leaves no file behind, and an interrupted export no half-written one.

Verification runs the checkpoint's probe samples (``/probe/x``; eight seeded random inputs when the
run recorded none) through the exported file and through the engine:

* ONNX: onnxruntime (CPU) against ``net.forward`` (and its softmax for ``probabilities``); the
  maximum absolute difference must be ≤ 1e-5 for float32, ≤ 1e-9 for float64, times the largest
  engine output magnitude when that exceeds 1 (see :func:`onnx_tolerance`).
* NPZ / JSON: the file is read back into a fresh network, whose parameters, buffers (batchnorm's
  running statistics) and forward pass must be bit-for-bit those of the engine.

Every forward pass here is in the ``eval`` phase, the inference an export is for: no dropout, batchnorm
with its running statistics (and none of them moved by the check).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnbp import __version__
from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.core.errors import ParameterError
from cnnbp.core.network import Sequential
from cnnbp.errors import UserError
from cnnbp.exporters import load_json, load_npz, to_json_text, to_npz_bytes
from cnnbp.files import commit, json_number, staged
from cnnbp.onnx_graph import (
    INSTALL_HINT,
    ExportError,
    ModelLoadError,
    NeedsDecomposedError,
    onnx_available,
    to_onnx,
    verify_onnx,
)
from cnnbp.runs import Run, find_checkpoints, resolve_checkpoint, run_folder

if TYPE_CHECKING:
    from cnnbp.tensorboard import TensorBoardReport

__all__ = ["FORMATS", "OPS", "ExportReport", "export", "onnx_tolerance"]

TOLERANCE = {"float32": 1e-5, "float64": 1e-9}  # per unit of output magnitude (see onnx_tolerance)
N_RANDOM = 8  # verification inputs when a run recorded no probe samples
RANDOM_SEED = 0
SUFFIX = {"onnx": ".onnx", "npz": ".npz", "json": ".json"}
FORMATS = (*SUFFIX, "tensorboard")  # tensorboard: a folder of event files (cnnbp.tensorboard)
OPS = ("auto", "native", "decomposed")
_BY_SUFFIX = {s: f for f, s in SUFFIX.items()}


# ---- the source: checkpoint → network ---------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A checkpoint and the network rebuilt from it."""

    path: Path
    ck: Checkpoint
    config: dict[str, Any]  # the checkpoint's /config, parsed
    net: Sequential


def load_source(target: Path | str | Run | Checkpoint, checkpoint: str | int | None = None) -> Source:
    """Resolve ``target`` (a run, a run folder, a checkpoint or its file), read it and rebuild its network."""
    if isinstance(target, Checkpoint):
        ck = target
    else:
        path = resolve_checkpoint(target.path if isinstance(target, Run) else Path(target), checkpoint)
        ck = read_checkpoint(path)
    if ck.dtype not in TOLERANCE:
        raise UserError(f"{ck.path}: dtype {ck.dtype!r} cannot be exported (float32 or float64)")
    config = ck.config_dict()
    return Source(Path(ck.path), ck, config, ck.network())


# ---- where the file goes ----------------------------------------------------------------------------
def default_name(src: Source, fmt: str) -> str:
    """``model.<ext>`` for a run's last checkpoint, ``model-NNNN.<ext>`` for an earlier one,
    ``<run>-NNNN.<ext>`` for a checkpoint file outside a run folder."""
    suffix, epoch = SUFFIX[fmt], f"{src.ck.epoch:04d}"
    run_dir = run_folder(src.path)
    if run_dir is None:
        run = "".join(c if c.isalnum() or c in "._-" else "-" for c in src.ck.run_name) or "model"
        return f"{run}-{epoch}{suffix}"
    found = find_checkpoints(run_dir)
    last = bool(found) and found[-1][1].resolve() == src.path.resolve()
    return f"model{suffix}" if last else f"model-{epoch}{suffix}"


def default_output(src: Source, fmt: str) -> Path:
    """Beside the run (``runs/<name>/model.onnx``), or beside a loose checkpoint file."""
    run_dir = run_folder(src.path)
    return (run_dir if run_dir is not None else src.path.parent) / default_name(src, fmt)


def pick_format(fmt: str | None, output: Path | None) -> str:
    """``format``, else the one ``output``'s suffix names, else ONNX; a contradicting suffix is an error."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    named = _BY_SUFFIX.get(output.suffix.lower()) if output is not None and not output.is_dir() else None
    if fmt is None:
        return named or "onnx"
    if named is not None and named != fmt:
        raise UserError(f"{output}: the suffix {output.suffix} names {named}, but --format is {fmt}")
    return fmt


def pick_output(src: Source, fmt: str, output: Path | None, force: bool) -> Path:
    """The destination: ``output`` (a file, or a folder to put the default name in) or the default."""
    if output is None:
        path = default_output(src, fmt)
    elif output.is_dir():
        path = output / default_name(src, fmt)
    else:
        path = output
    if path.is_dir():
        raise UserError(f"{path}: is a folder")
    if not path.parent.is_dir():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    if path.exists() and path.resolve() == src.path.resolve():
        raise UserError(f"{path}: is the checkpoint being exported; choose another -o")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; --force overwrites it")
    return path


# ---- verification -----------------------------------------------------------------------------------
def verification_inputs(src: Source) -> tuple[np.ndarray, str]:
    """The probe samples, or seeded random inputs in [0, 1) when the run recorded none."""
    dtype = np.dtype(src.ck.dtype)
    x = np.asarray(src.ck.probe_x)
    if x.ndim >= 2 and x.shape[0] > 0:
        return x.astype(dtype, copy=False), "probe"
    shape = (N_RANDOM, *src.net.input_shape)
    return np.random.default_rng(RANDOM_SEED).random(shape).astype(dtype), "random"


def verify_params_file(src: Source, fmt: str, file: Path, x: np.ndarray) -> tuple[bool, float]:
    """Read ``file`` back into a fresh network and compare it with the engine's.

    Returns (bit-identical, max |diff|) over every parameter, every buffer and the forward pass on
    ``x`` (``eval`` phase); a changed dtype or shape, or a NaN where the engine has a number, counts as
    an infinite difference.  A buffer the file leaves out is a UserError, as a parameter is.
    """
    loaded = load_npz(file) if fmt == "npz" else load_json(file)
    fresh = src.ck.network()  # the same architecture and dtype, a network of its own
    # the fresh network comes with the checkpoint's values: NaN them, so only what the file sets can match
    for group in (*fresh.parameters().values(), *fresh.state().values()):
        for value in group.values():
            value.fill(np.nan)
    try:
        fresh.set_parameters(loaded.params)
        fresh.set_state(loaded.state)
    except ParameterError as e:
        raise UserError(f"{file}: {e}") from None
    pairs = [
        (getattr(fresh.layer(lname), kind)[key], value)
        for kind, groups in (("params", src.net.parameters()), ("state", src.net.state()))
        for lname, group in groups.items()
        for key, value in group.items()
    ]
    with fresh.in_phase("eval"), src.net.in_phase("eval"):
        pairs.append((fresh.forward(x), src.net.forward(x)))
    exact, worst = True, 0.0
    for got, want in pairs:
        if got.dtype != want.dtype or got.shape != want.shape:
            return False, math.inf
        if got.tobytes() != want.tobytes():  # bits, so −0.0 against 0.0 is a difference too
            exact = False
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            worst = max(worst, diff if math.isfinite(diff) else math.inf)  # max() would drop a NaN
    return exact, worst


def onnx_tolerance(dtype: str, outputs: np.ndarray) -> tuple[float, float]:
    """``(tolerance, scale)``: TOLERANCE[dtype] · scale with scale = max(1, max |engine output|).

    Two correct float32 programs that sum in a different order differ by a few units in the last
    place *of the values they compute*: logits of a trained classifier reach 20-50, where one ulp is
    2-4e-6, so a fixed 1e-5 would fail correct exports.  Outputs within [-1, 1] (probabilities,
    sigmoid outputs) keep the absolute bound; a wiring mistake moves outputs by their own size, far
    beyond either.
    """
    finite = np.abs(outputs[np.isfinite(outputs)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    return TOLERANCE[dtype] * scale, scale


def verify_onnx_file(src: Source, file: Path, x: np.ndarray) -> float:
    """Load ``file`` with onnx and run it in onnxruntime: max |ONNX − engine| on ``x``."""
    import onnx

    try:
        model = onnx.load(str(file))
    except Exception as e:  # noqa: BLE001 - a file we just wrote: keep onnx's words
        raise UserError(f"{file}: onnx cannot read the file back ({e})") from None
    try:
        return verify_onnx(model, src.net, x)
    except ModelLoadError as e:  # said again with the command's words for the way out
        again = ModelLoadError(e.detail, e.missing_kernel, "--ops decomposed (the float64 default)")
        raise ExportError(f"{again}; --no-verify writes the file without running it") from None


# ---- the report and the export ---------------------------------------------------------------
@dataclass
class ExportReport:
    """What one export did; ``--json`` prints it as one object."""

    format: str
    path: str
    bytes: int
    written: bool
    checkpoint: str
    run: str
    epoch: int
    dtype: str
    opset: int | None = None
    ir_version: int | None = None
    ops: str | None = None
    op_types: list[str] | None = None
    outputs: list[str] | None = None
    verified: bool = False
    samples: int = 0
    inputs: str | None = None  # "probe" | "random"
    max_abs_diff: float | None = None
    tolerance: float | None = None
    output_scale: float | None = None  # max(1, max |engine output|), ONNX only
    ok: bool = True
    buffers: int = 0  # state buffers compared bit for bit (NPZ, JSON: batchnorm's running statistics)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (the ``--json`` document)."""
        d = asdict(self)
        if d["max_abs_diff"] is not None:
            d["max_abs_diff"] = json_number(d["max_abs_diff"])
        return d


def export(
    target: Path | str | Run | Checkpoint,
    path: Path | str | None = None,
    format: str | None = None,  # noqa: A002 - the word users know
    *,
    checkpoint: str | int | None = None,
    opset: int | None = None,
    ops: str | None = None,
    verify: bool = True,
    force: bool = False,
) -> ExportReport | TensorBoardReport:
    """Export a checkpoint's network as ONNX, NPZ or JSON, verified against the engine; or a whole run as
    TensorBoard event files (``format="tensorboard"``, see :func:`cnnbp.tensorboard.export_tensorboard`).

    ``target``: a run (or its folder: the last checkpoint, or ``checkpoint=N``), a checkpoint or its
    file.  ``path``: the file (or a folder for the default name); default ``<run>/model.<ext>``.
    ``format``: onnx, npz or json (default: ``path``'s suffix, else onnx).  ``opset`` and ``ops``
    (auto, native, decomposed) are ONNX only.  Returns the report; ``report.ok`` is False (and nothing
    was written) when verification failed.  Raises UserError for a bad target, an option that does
    not apply, an existing file without ``force``, or a model the format cannot express.
    """
    output = None if path is None else Path(path)
    if format == "tensorboard":
        for flag, value in (("--checkpoint", checkpoint), ("--opset", opset), ("--ops", ops)):
            if value is not None:
                raise UserError(f"{flag}: does not apply to --format tensorboard (it writes every epoch)")
        from cnnbp.tensorboard import export_tensorboard

        where = target.path if isinstance(target, (Run, Checkpoint)) else target
        return export_tensorboard(where, output, force=force, verify_files=verify)
    fmt = pick_format(format, output)
    if fmt != "onnx":
        for flag, value in (("--opset", opset), ("--ops", ops)):
            if value is not None:
                raise UserError(f"{flag}: applies to --format onnx only, not {fmt}")
    if ops is not None and ops not in OPS:
        raise UserError(f"--ops: expected one of {', '.join(OPS)}, got {ops!r}")
    if fmt == "onnx" and not onnx_available():
        raise UserError(f"--format onnx: needs the onnx and onnxruntime packages; {INSTALL_HINT}")
    src = load_source(target, checkpoint)
    dest = pick_output(src, fmt, output, force)
    ck = src.ck
    report = ExportReport(format=fmt, path=str(dest), bytes=0, written=False, checkpoint=str(src.path),
                          run=ck.run_name, epoch=ck.epoch, dtype=ck.dtype)  # fmt: skip
    if fmt == "onnx":
        data = _onnx_bytes(src, opset if opset is not None else 17, ops or "auto", report)
    elif fmt == "npz":
        data = to_npz_bytes(src.net, ck.config)
    else:
        data = to_json_text(src.net, src.config).encode("utf-8")
    report.bytes = len(data)
    with staged(dest, data) as tmp:
        if verify:
            _verify(src, fmt, tmp, report)
        if report.ok:
            commit(tmp, dest)
            report.written = True
    return report


def _verify(src: Source, fmt: str, file: Path, report: ExportReport) -> None:
    """Check the staged ``file`` against the engine on the verification inputs; fills ``report``."""
    x, kind = verification_inputs(src)
    if fmt == "onnx":
        diff = verify_onnx_file(src, file, x)
        with src.net.in_phase("eval"):  # the outputs verify_onnx compared: inference, nothing updated
            outputs = src.net.forward(x)
        report.tolerance, report.output_scale = onnx_tolerance(src.ck.dtype, outputs)
        report.ok = diff <= report.tolerance
    else:
        exact, diff = verify_params_file(src, fmt, file, x)
        report.tolerance = 0.0
        report.ok = exact
        report.buffers = sum(len(group) for group in src.net.state().values())
    report.verified, report.samples, report.inputs, report.max_abs_diff = True, len(x), kind, diff


def _onnx_bytes(src: Source, opset: int, ops: str, report: ExportReport) -> bytes:
    ck = src.ck
    metadata = {
        "run": ck.run_name,
        "epoch": str(ck.epoch),
        "step": str(ck.step),
        "dtype": ck.dtype,
        "loss": ck.loss,
        "cnnbp_version": __version__,
        "config": ck.config,
    }
    try:
        model = to_onnx(src.net, ck.loss, opset=opset, metadata=metadata, graph_name=ck.run_name, ops=ops)
    except NeedsDecomposedError as e:
        raise ExportError(f"{e}; --ops decomposed writes it as {e.decomposed_as}") from None
    decomposed = ops == "decomposed" or (ops == "auto" and ck.dtype == "float64")
    report.opset = opset
    report.ir_version = int(model.ir_version)
    report.ops = ("decomposed" if decomposed else "native") + (" (auto)" if ops == "auto" else "")
    report.op_types = list(dict.fromkeys(node.op_type for node in model.graph.node))
    report.outputs = [
        f"{o.name} [{', '.join(d.dim_param or str(d.dim_value) for d in o.type.tensor_type.shape.dim)}]"
        for o in model.graph.output
    ]
    return model.SerializeToString()
