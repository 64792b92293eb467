"""``cnnbp export``: write a run's checkpoint as ONNX, NPZ or JSON, checked against the engine.

The network is rebuilt from the checkpoint's own ``/config`` (the resolved YAML; the data it names is
never read, so a run exports on a machine without its data set) in the run's dtype, and the
checkpoint's ``/weights`` are copied into it.  The file is written to a temporary name beside its
destination, verified from that file, and only then renamed into place (``os.replace``): a failed
check leaves no file behind, and an interrupted export leaves no half-written one.

Verification runs the checkpoint's probe samples (``/probe/x``; eight seeded random inputs when the
run recorded none) through the exported file and through the engine:

* ONNX: onnxruntime (CPU) against ``net.forward`` (and its softmax for ``probabilities``); the
  maximum absolute difference must be ≤ 1e-5 for float32, ≤ 1e-9 for float64, times the largest
  engine output magnitude when that exceeds 1 (see :func:`onnx_tolerance`), else exit 1.
* NPZ / JSON: the file is read back into a fresh network, whose parameters and forward pass must be
  bit-for-bit those of the engine.

Exit codes: 0 written and verified (or ``--no-verify``); 1 verification failed (nothing written);
2 a user error (bad target or option, an existing output without ``--force``, a model ONNX cannot
express, the ``onnx`` extra missing).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
import yaml
from cnnbp import __version__
from cnnbp.checkpoint import CHECKPOINTS, Checkpoint, find_checkpoints, read_checkpoint, resolve_target
from cnnbp.config import build_network, config_from_dict
from cnnbp.core.network import Sequential
from cnnbp.errors import UserError
from cnnbp.exporters import (
    INSTALL_HINT,
    ExportError,
    apply_params,
    load_json,
    load_npz,
    onnx_available,
    to_json_text,
    to_npz_bytes,
    to_onnx,
    verify_onnx,
)
from cnnbp.render.console import json_number, print_error, stdout_console
from cnnbp.spec import RunConfig
from rich.text import Text

TOLERANCE = {"float32": 1e-5, "float64": 1e-9}  # per unit of output magnitude (see onnx_tolerance)
N_RANDOM = 8  # verification inputs when a run recorded no probe samples
RANDOM_SEED = 0


class Format(str, Enum):
    onnx = "onnx"
    npz = "npz"
    json = "json"


class Ops(str, Enum):
    auto = "auto"
    native = "native"
    decomposed = "decomposed"


SUFFIX = {Format.onnx: ".onnx", Format.npz: ".npz", Format.json: ".json"}
_BY_SUFFIX = {s: f for f, s in SUFFIX.items()}


# ---- the source: checkpoint → network ---------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A checkpoint and the network rebuilt from it."""

    path: Path
    ck: Checkpoint
    config: dict[str, Any]  # the checkpoint's /config, parsed
    cfg: RunConfig  # the same, validated
    net: Sequential


def checkpoint_config(path: Path, ck: Checkpoint) -> dict[str, Any]:
    """The checkpoint's ``/config`` parsed as a mapping; UserError naming ``path`` when it is not one."""
    try:
        config = yaml.safe_load(ck.config)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: /config is not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: /config is not a config mapping")
    return config


def rebuild(path: Path, ck: Checkpoint, config: dict[str, Any]) -> tuple[RunConfig, Sequential]:
    """The checkpoint's validated config and network: built from it in its dtype, its weights copied in.

    Raises UserError naming the checkpoint when the config does not rebuild the recorded model.
    """
    try:
        cfg = config_from_dict(config, source=f"{path}:/config")
        net = build_network(cfg)
        net.build(np.random.default_rng(0), np.dtype(ck.dtype))  # the values are overwritten below
    except UserError as e:
        raise UserError(f"{path}: its /config does not rebuild the model ({e})") from None
    names = [info.name for info in net.summary()]
    if names != ck.layer_names:
        raise UserError(
            f"{path}: its /config gives layers {', '.join(names)} but /model records "
            f"{', '.join(ck.layer_names)}"
        )
    apply_params(net, ck.weights, source=f"{path}: /weights")
    return cfg, net


def load_source(target: Path, checkpoint: str | None) -> Source:
    """Resolve ``target`` (run folder or checkpoint file), read it and rebuild its network."""
    path = resolve_target(target, checkpoint)
    ck = read_checkpoint(path)
    if ck.dtype not in TOLERANCE:
        raise UserError(f"{path}: dtype {ck.dtype!r} cannot be exported (float32 or float64)")
    config = checkpoint_config(path, ck)
    return Source(path, ck, config, *rebuild(path, ck, config))


# ---- where the file goes ----------------------------------------------------------------------------
def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder holding ``checkpoint`` (``<run>/checkpoints/NNNN.h5``), or None for a loose file."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS else None


def default_name(src: Source, fmt: Format) -> str:
    """``model.<ext>`` for a run's last checkpoint, ``model-NNNN.<ext>`` for an earlier one,
    ``<run>-NNNN.<ext>`` for a checkpoint file outside a run folder."""
    suffix, epoch = SUFFIX[fmt], f"{src.ck.epoch:04d}"
    run_dir = run_dir_of(src.path)
    if run_dir is None:
        run = "".join(c if c.isalnum() or c in "._-" else "-" for c in src.ck.run_name) or "model"
        return f"{run}-{epoch}{suffix}"
    found = find_checkpoints(run_dir)
    last = bool(found) and found[-1][1].resolve() == src.path.resolve()
    return f"model{suffix}" if last else f"model-{epoch}{suffix}"


def default_output(src: Source, fmt: Format) -> Path:
    """Beside the run (``runs/<name>/model.onnx``), or beside a loose checkpoint file."""
    run_dir = run_dir_of(src.path)
    return (run_dir if run_dir is not None else src.path.parent) / default_name(src, fmt)


def pick_format(fmt: Format | None, output: Path | None) -> Format:
    """``--format``, else the one ``-o``'s suffix names, else ONNX; a contradicting suffix is an error."""
    named = _BY_SUFFIX.get(output.suffix.lower()) if output is not None and not output.is_dir() else None
    if fmt is None:
        return named or Format.onnx
    if named is not None and named != fmt:
        raise UserError(
            f"{output}: the suffix {output.suffix} names {named.value}, but --format is {fmt.value}"
        )
    return fmt


def pick_output(src: Source, fmt: Format, output: Path | None, force: bool) -> Path:
    """The destination: ``-o`` (a file, or a folder to put the default name in) or the default."""
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


@contextmanager
def staged(path: Path, data: bytes) -> Iterator[Path]:
    """Write ``data`` to a temporary file beside ``path`` and yield it; the caller renames it into place.

    The temporary file is removed if it is still there when the block ends (a failure, an exception).
    """
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    tmp = Path(name)
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def commit(tmp: Path, path: Path) -> None:
    """Rename the verified temporary file into place (atomic on one file system)."""
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- verification -----------------------------------------------------------------------------------
def verification_inputs(src: Source) -> tuple[np.ndarray, str]:
    """The probe samples, or seeded random inputs in [0, 1) when the run recorded none."""
    dtype = np.dtype(src.ck.dtype)
    x = np.asarray(src.ck.probe_x)
    if x.ndim >= 2 and x.shape[0] > 0:
        return x.astype(dtype, copy=False), "probe"
    shape = (N_RANDOM, *src.net.input_shape)
    return np.random.default_rng(RANDOM_SEED).random(shape).astype(dtype), "random"


def verify_params_file(src: Source, fmt: Format, file: Path, x: np.ndarray) -> tuple[bool, float]:
    """Read ``file`` back into a fresh network and compare it with the engine's.

    Returns (bit-identical, max |diff|) over every parameter and the forward pass on ``x``;
    a changed dtype or shape counts as an infinite difference.
    """
    params = load_npz(file)[0] if fmt is Format.npz else load_json(file)[0]
    fresh = rebuild_fresh(src)
    apply_params(fresh, params, source=str(file))
    pairs = [
        (fresh.layer(lname).params[key], value)
        for lname, group in src.net.parameters().items()
        for key, value in group.items()
    ]
    pairs.append((fresh.forward(x), src.net.forward(x)))
    exact, worst = True, 0.0
    for got, want in pairs:
        if got.dtype != want.dtype or got.shape != want.shape:
            return False, math.inf
        if got.tobytes() != want.tobytes():  # bits, so −0.0 against 0.0 is a difference too
            exact = False
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))))
    return exact, worst


def rebuild_fresh(src: Source) -> Sequential:
    """The same architecture and dtype as ``src.net``, with its own (initial) values."""
    return build_network(src.cfg).build(np.random.default_rng(1), np.dtype(src.ck.dtype))


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
    except ExportError as e:
        if str(e).startswith("onnxruntime: cannot load"):
            text = str(e).replace("ops='decomposed'", "--ops decomposed (the float64 default)")
            raise ExportError(f"{text}; --no-verify writes the file without running it") from None
        raise


# ---- the report ------------------------------------------------------------------------------------
@dataclass
class Report:
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

    def to_json(self) -> str:
        d = asdict(self)
        if d["max_abs_diff"] is not None:
            d["max_abs_diff"] = json_number(d["max_abs_diff"])
        return json.dumps(d)


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 10_000 else f"{n / 1000:,.1f} kB" if n < 10_000_000 else f"{n / 1e6:,.1f} MB"


def _diff(d: float) -> str:
    return "0" if d == 0 else "inf" if math.isinf(d) else f"{d:.3g}"


def _tolerance(r: Report) -> str:
    base = TOLERANCE[r.dtype]
    if not r.output_scale or r.output_scale == 1.0:
        return f"{base:g}"
    return f"{r.tolerance:.2e} = {base:g} × max |output| {r.output_scale:.3g}"


def report_lines(r: Report) -> list[Text]:
    """The plain report: file, source, the ONNX graph, the verification."""
    rows = [
        ("exported" if r.written else "not written", f"{r.path} ({r.format.upper()}, {_size(r.bytes)})"),
        ("from", f"{r.checkpoint} · run {r.run}, epoch {r.epoch}, {r.dtype}"),
    ]
    if r.format == "onnx":
        rows.append(
            ("onnx", f"opset {r.opset}, IR {r.ir_version}, ops {r.ops}: {', '.join(r.op_types or [])}")
        )
        rows.append(("outputs", ", ".join(r.outputs or [])))
    if not r.verified:
        rows.append(("verify", "skipped (--no-verify)"))
    else:
        inputs = f"{r.samples} probe samples" if r.inputs == "probe" else f"{r.samples} random inputs"
        diff = _diff(r.max_abs_diff if r.max_abs_diff is not None else math.nan)
        verdict = "ok" if r.ok else "FAILED"
        if r.format == "onnx":
            text = (
                f"onnxruntime vs engine on {inputs}: max |diff| {diff} (tolerance {_tolerance(r)}) {verdict}"
            )
        else:
            same = "bit-identical" if r.ok else "not bit-identical"
            text = (
                f"file read back vs engine on {inputs}: weights and outputs {same}, "
                f"max |diff| {diff} {verdict}"
            )
        rows.append(("verify", text))
    width = max(len(k) for k, _ in rows) + 2
    return [Text.assemble((k.ljust(width), "bold"), v) for k, v in rows]


# ---- the command -----------------------------------------------------------------------------------
_TARGET_HELP = "A run folder (its last checkpoint) or a checkpoint file (.h5)."
_OUTPUT_HELP = (
    "Output file, or a folder for the default name. Default: runs/<name>/model.<ext> "
    "(model-NNNN.<ext> for an earlier checkpoint; <run>-NNNN.<ext> beside a loose checkpoint file)."
)
_FORMAT_HELP = (
    "onnx (a standard ONNX graph), npz (one array per layer/param) or json. Default: -o's suffix, else onnx."
)
_OPS_HELP = (
    "ONNX only. native: Conv/AveragePool/LpPool; decomposed: Slice/Sum/MatMul forms. "
    "auto: native for float32, decomposed for float64 (onnxruntime's CPU provider has no float64 "
    "Conv/AveragePool/LpPool kernels)."
)


def export(
    target: Annotated[Path, typer.Argument(help=_TARGET_HELP, show_default=False)],
    fmt: Annotated[
        Format | None, typer.Option("--format", "-f", help=_FORMAT_HELP, show_default=False)
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help=_OUTPUT_HELP, show_default=False)
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            "-c",
            metavar="N",
            help="Epoch of the run's checkpoint, or 'last'.",
            show_default=False,
        ),
    ] = None,
    opset: Annotated[
        int | None,
        typer.Option("--opset", help="ONNX only: the opset version (default 17).", show_default=False),
    ] = None,
    ops: Annotated[Ops | None, typer.Option("--ops", help=_OPS_HELP, show_default=False)] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Write without checking the file against the engine.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Export a checkpoint's network as ONNX, NPZ or JSON, verified against the engine."""
    fmt = pick_format(fmt, output)
    if fmt is not Format.onnx:
        for flag, value in (("--opset", opset), ("--ops", ops)):
            if value is not None:
                raise UserError(f"{flag}: applies to --format onnx only, not {fmt.value}")
    if fmt is Format.onnx and not onnx_available():
        raise UserError(f"--format onnx: needs the onnx and onnxruntime packages; {INSTALL_HINT}")

    src = load_source(target, checkpoint)
    path = pick_output(src, fmt, output, force)
    ck = src.ck
    report = Report(
        format=fmt.value, path=str(path), bytes=0, written=False, checkpoint=str(src.path),
        run=ck.run_name, epoch=ck.epoch, dtype=ck.dtype,
    )  # fmt: skip

    if fmt is Format.onnx:
        data = _onnx_bytes(src, opset if opset is not None else 17, ops or Ops.auto, report)
    elif fmt is Format.npz:
        data = to_npz_bytes(src.net, ck.config)
    else:
        data = to_json_text(src.net, src.config).encode("utf-8")
    report.bytes = len(data)

    with staged(path, data) as tmp:
        if not no_verify:
            x, kind = verification_inputs(src)
            if fmt is Format.onnx:
                diff = verify_onnx_file(src, tmp, x)
                report.tolerance, report.output_scale = onnx_tolerance(ck.dtype, src.net.forward(x))
                report.ok = diff <= report.tolerance
            else:
                exact, diff = verify_params_file(src, fmt, tmp, x)
                report.tolerance = 0.0
                report.ok = exact
            report.verified, report.samples, report.inputs, report.max_abs_diff = True, len(x), kind, diff
        if report.ok:
            commit(tmp, path)
            report.written = True

    _print_report(report, json_out)
    if not report.ok:
        diff = _diff(report.max_abs_diff if report.max_abs_diff is not None else math.nan)
        if fmt is Format.onnx:
            problem = f"max |diff| {diff} exceeds the {_tolerance(report)} tolerance"
        else:
            problem = f"the file read back is not bit-identical to the engine (max |diff| {diff})"
        print_error(
            f"{path}: verification failed: {problem}; nothing was written "
            "(--no-verify writes it without this check)"
        )
        raise typer.Exit(1)


def _onnx_bytes(src: Source, opset: int, ops: Ops, report: Report) -> bytes:
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
        model = to_onnx(
            src.net, ck.loss, opset=opset, metadata=metadata, graph_name=ck.run_name, ops=ops.value
        )
    except ExportError as e:
        if "LpPool needs an integer p" in str(e):
            hint = "; --ops decomposed writes it as Abs/Pow/Slice/Sum"
            raise ExportError(f"{e}{hint}") from None
        raise
    decomposed = ops is Ops.decomposed or (ops is Ops.auto and ck.dtype == "float64")
    report.opset = opset
    report.ir_version = int(model.ir_version)
    report.ops = ("decomposed" if decomposed else "native") + (" (auto)" if ops is Ops.auto else "")
    report.op_types = list(dict.fromkeys(node.op_type for node in model.graph.node))
    report.outputs = [
        f"{o.name} [{', '.join(d.dim_param or str(d.dim_value) for d in o.type.tensor_type.shape.dim)}]"
        for o in model.graph.output
    ]
    return model.SerializeToString()


def _print_report(report: Report, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(report.to_json() + "\n")
        sys.stdout.flush()
        return
    console = stdout_console()
    for line in report_lines(report):
        console.print(line, soft_wrap=True)
