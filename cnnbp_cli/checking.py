"""``cnnbp.gradcheck``: prove a network's gradients by finite differences (``cnnbp.core.gradcheck``),
for a config, a run or a checkpoint.

What is checked: every parameter gradient, every layer's per-sample delta and the input gradient of
a small batch, element by element (or, ``mode="directional"``, along random directions per tensor),
against finite differences of the loss (see ``core/gradcheck.py`` for the methods, the relative
error, the checks at kinks and near points of low smoothness).

The network (``target``):

* a config (a YAML path, a dict, or None for the built-in digits config): the network ``cnnbp train``
  starts from, built with ``np.random.default_rng(cfg.seed)`` in the config's dtype, or with
  ``model.init_from``'s weights when the config names them;
* a run (a folder, or a :class:`cnnbp.Run`; its last checkpoint, or ``checkpoint=N``), a checkpoint
  file or a :class:`cnnbp.Checkpoint`: rebuilt from the checkpoint's ``/model`` with its ``/weights``.

A path is told apart by content: a folder is a run, an HDF5 file a checkpoint, anything else a YAML
config.  The check always runs in float64: a float32 network is checked on a float64 copy.

The inputs: ``samples`` examples of the config's training split (loaded as train loads them: the
config's dtype, seed, validation split and ``data.limit``), targets included, drawn with
``np.random.default_rng([seed, SAMPLE_STREAM])`` (``seed`` defaults to the config's; SAMPLE_STREAM is
"gradcheck" in ASCII, so the draw shares no stream with the split or shuffles) and sorted.  The same
generator then picks the elements ``per_tensor`` samples.  ``seed`` never changes the network.

A checkpoint whose data path does not exist here (a run trained elsewhere) falls back to its probe
samples (up to ``samples`` of them, drawn the same way); an override ``data.path=...`` points it at a
local copy instead.  On a checkpoint only ``data.*`` may be overridden: the network is the checkpoint's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.config import RunConfig, build_loss, build_network, config_from_dict, load_config
from cnnbp.core.gradcheck import (
    FAIL,
    KINK,
    METHODS,
    MODES,
    PASS,
    UNCHECKED,
    GradcheckResult,
    Progress,
    TensorCheck,
    non_analytic_layers,
)
from cnnbp.core.gradcheck import gradcheck as check_gradients
from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential
from cnnbp.data import PATH_SOURCES, load_dataset
from cnnbp.errors import UserError
from cnnbp.files import json_number
from cnnbp.runner import load_initial_weights, n_outputs
from cnnbp.runs import Run, is_checkpoint_target, resolve_checkpoint
from cnnbp.yamlio import apply_override

__all__ = ["SAMPLE_STREAM", "GradcheckReport", "Subject", "gradcheck", "resolve_network"]

SAMPLE_STREAM = int.from_bytes(b"gradcheck", "big")
_MAX_LISTED = 8  # sample indices named in the inputs text


@dataclass
class Subject:
    """The network, its loss and the batch to check, with how each was obtained (for the report)."""

    net: Sequential
    loss: Loss
    x: np.ndarray
    y: np.ndarray
    kind: str  # "config" | "checkpoint"
    target: str  # the config file or checkpoint file read
    weights: str  # where the weights come from, in words
    inputs: str  # "data" | "probe"
    inputs_text: str  # the inputs, in words
    sample_indices: list[int]  # the samples' indices in the training split
    requested_method: str  # the method asked for ("auto" before core resolves it)
    non_analytic: list[str]  # the layers (and loss) that rule out complex-step
    epoch: int | None = None


@dataclass
class GradcheckReport:
    """What :func:`gradcheck` returns: the core result (``rows``, ``passed``) and what was checked."""

    subject: Subject
    result: GradcheckResult

    @property
    def rows(self) -> list[TensorCheck]:
        return self.result.rows

    @property
    def passed(self) -> bool:
        """True when no row FAILs (KINK and UNCHECKED rows allowed; ``ok(strict=True)`` fails UNCHECKED
        elements too)."""
        return self.result.passed

    def ok(self, strict: bool = False) -> bool:
        return self.result.ok(strict)

    def row(self, layer: str, tensor: str) -> TensorCheck:
        return self.result.row(layer, tensor)

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        """The whole report as plain data (the ``--json`` document)."""
        s, r = self.subject, self.result
        return {
            "target": s.target, "kind": s.kind, "weights": s.weights, "epoch": s.epoch, "inputs": s.inputs,
            "sample_indices": s.sample_indices, "method": r.method, "requested_method": s.requested_method,
            "eps": r.eps, "rtol": r.rtol, "atol_floor": r.atol_floor, "samples": r.samples,
            "seconds": r.seconds, "cast_from": r.cast_from, "strict": strict,
            "verdict": PASS if r.ok(strict) else FAIL,
            "counts": {status: sum(row.status == status for row in r.rows)
                       for status in (PASS, FAIL, KINK, UNCHECKED)},
            "unchecked": r.unchecked, "mode": r.mode, "directions": r.directions,
            "rows": [_row_dict(row) for row in r.rows],
        }  # fmt: skip


def _row_dict(r: TensorCheck) -> dict[str, Any]:
    d = asdict(r)
    d["shape"] = list(r.shape)
    d["worst_index"] = list(r.worst_index)
    for key in ("max_rel_error", "analytic", "numeric", "backward", "forward"):
        d[key] = json_number(d[key])
    return d


# ---- the network ------------------------------------------------------------------------------------


@dataclass
class _Network:
    """A network resolved from the target, before any data is read."""

    cfg: RunConfig
    net: Sequential
    kind: str
    target: str
    weights: str
    ck: Checkpoint | None = None


def resolve_network(
    target: Path | str | dict | Run | Checkpoint | None, checkpoint: str | int | None, sets: Sequence[str]
) -> _Network:
    """The config and network ``target`` names (see the module docstring); UserError when it cannot."""
    if isinstance(target, Run):
        target = target.path
    if isinstance(target, Checkpoint):
        if checkpoint is not None and str(checkpoint) != "last":
            raise UserError(
                f"{target.path}: --checkpoint selects a checkpoint of a run folder, not of a checkpoint"
            )
        return _from_checkpoint(target, sets)
    if isinstance(target, dict) or target is None:
        if checkpoint is not None:
            raise UserError("--checkpoint: selects a checkpoint of a run folder, not a config")
        return _from_config(target, sets)
    path = Path(target)
    if not path.exists():
        raise UserError(f"{path}: no such config file, run folder or checkpoint file")
    if not is_checkpoint_target(path):
        if checkpoint is not None:
            raise UserError(f"--checkpoint: selects a checkpoint of a run folder, but {path} is a config")
        return _from_config(path, sets)
    return _from_checkpoint(read_checkpoint(resolve_checkpoint(path, checkpoint)), sets)


def _from_config(target: Path | dict | None, sets: Sequence[str]) -> _Network:
    if isinstance(target, dict):
        raw = copy.deepcopy(target)
        for text in sets:
            apply_override(raw, text)
        cfg, shown = config_from_dict(raw, source="<dict>", base_dir=Path.cwd()), "a config dict"
    else:
        cfg = load_config(target, list(sets))
        shown = "the built-in default config" if target is None else str(target)
    net = build_network(cfg).build(np.random.default_rng(cfg.seed), np.dtype(cfg.dtype))
    weights = f"initial weights (seed {cfg.seed}), {cfg.dtype}"
    if cfg.model.init_from:
        read = load_initial_weights(net, cfg.model.init_from)
        weights = f"weights of model.init_from {read}, {cfg.dtype}"
    return _Network(cfg, net, "config", shown, weights)


def _from_checkpoint(ck: Checkpoint, sets: Sequence[str]) -> _Network:
    net = ck.network()  # first: it loads (and checks) the plugins the run recorded
    raw = ck.config_dict()
    for text in sets:
        key = text.partition("=")[0].strip()
        if key != "data" and not key.startswith(("data.", "data[")):
            raise UserError(f"--set {text}: a checkpoint's network is fixed; only data.* can be changed here")
        apply_override(raw, text)
    try:
        cfg = config_from_dict(raw, source=f"{ck.path}:/config")
    except UserError as e:
        raise UserError(f"{ck.path}: its /config does not validate ({e})") from None
    weights = f"run {ck.run_name}, epoch {ck.epoch}, {ck.dtype}"
    return _Network(cfg, net, "checkpoint", str(ck.path), weights, ck)


# ---- the inputs -------------------------------------------------------------------------------------


def _draw(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``min(k, n)`` sorted indices out of ``n``, without replacement."""
    return np.sort(rng.choice(n, size=min(k, n), replace=False)).astype(np.int64)


def _listed(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    return shown + (", …" if len(indices) > _MAX_LISTED else "")


def _data_missing(cfg: RunConfig) -> str | None:
    """The data path when the config's data lives in a file or folder that does not exist here."""
    path = cfg.data.path
    if cfg.data.source in PATH_SOURCES and path is not None and not Path(path).expanduser().exists():
        return path
    return None


def choose_inputs(
    found: _Network, samples: int, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray, str, str, list[int]]:
    """The batch to check: ``(x, y, "data" | "probe", description, training-set indices)``."""
    cfg, ck = found.cfg, found.ck
    missing = _data_missing(cfg) if ck is not None else None
    if ck is not None and missing is not None:
        probe_x = np.asarray(ck.probe_x)
        n_probe = int(probe_x.shape[0]) if probe_x.ndim else 0
        if n_probe == 0:
            raise UserError(
                f"{missing}: data not found and {found.target} has no probe samples; "
                "--set data.path=... points at a copy of the data"
            )
        pick = _draw(n_probe, samples, rng)
        index = [int(i) for i in np.asarray(ck.probe_index)[pick]]
        text = (
            f"{len(pick)} of the checkpoint's {n_probe} probe samples (data not found here: {missing}), "
            f"drawn with seed {seed}; training-set indices {_listed(index)}"
        )
        return probe_x[pick], np.asarray(ck.probe_y)[pick], "probe", text, index
    out = n_outputs(found.net.summary()[-1].output_shape)
    data = load_dataset(cfg.data, cfg.model.input_shape, out, np.dtype(cfg.dtype), cfg.seed, cfg.base_dir)
    n = data.x_train.shape[0]
    pick = _draw(n, samples, rng)
    index = [int(i) for i in pick]
    text = (
        f"{len(pick)} of {n:,} training samples of {data.description}, drawn with seed {seed}; "
        f"indices {_listed(index)}"
    )
    return data.x_train[pick], data.y_train[pick], "data", text, index


def check_options(
    check_all: bool | None, per_tensor: int | None, eps: float | None, rtol: float, mode: str = "elements",
    directions: int | None = None,
) -> None:  # fmt: skip
    """The numeric options of a check, or a UserError naming the one at fault."""
    if mode not in MODES:
        raise UserError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if directions is not None and (
        isinstance(directions, bool) or not isinstance(directions, int) or directions < 1
    ):
        raise UserError(f"--directions: expected an integer ≥ 1, got {directions!r}")
    if directions is not None and mode != "directional":
        raise UserError("--directions: only with --mode directional")
    if mode == "directional" and (check_all or per_tensor is not None):
        dropped = "--all" if check_all else "--per-tensor"
        raise UserError(f"--mode directional: checks whole tensors; drop {dropped}")
    if check_all and per_tensor is not None:
        raise UserError("--all and --per-tensor: use one or the other")
    if per_tensor is not None and (
        isinstance(per_tensor, bool) or not isinstance(per_tensor, int) or per_tensor < 1
    ):
        raise UserError(f"--per-tensor: expected an integer ≥ 1, got {per_tensor!r}")
    if eps is not None and not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise UserError(f"--eps: expected 'auto' or a number > 0, got {eps!r}")
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol > 0):
        raise UserError(f"--rtol: expected a number > 0, got {rtol!r}")


def check_layers(net: Sequential, layers: Sequence[str] | None) -> list[str] | None:
    """Layer names to check, against the network (``input`` is the input-gradient row)."""
    if not layers:
        return None
    names = ["input", *(layer.name for layer in net.layers)]
    unknown = [n for n in dict.fromkeys(layers) if n not in names]
    if unknown:
        what = "no such layer" if len(unknown) == 1 else "no such layers"
        raise UserError(f"--layer {', '.join(unknown)}: {what}; the layers are {', '.join(names)}")
    return list(dict.fromkeys(layers))


def refuse_complex(net: Sequential, bad: Sequence[str]) -> None:
    """UserError naming the layers complex-step cannot go through (``non_analytic_layers``), for
    ``method="complex"``."""
    if bad:
        layers = {layer.name: layer for layer in net.layers}
        named = ", ".join(
            b if b not in layers else f"{b} ({type(layers[b]).__name__})" if not layers[b].analytic
            else f"{b} ({type(layers[b]).__name__}: its forward takes no complex numbers)"
            for b in bad
        )  # fmt: skip
        raise UserError(
            f"--method complex: needs every layer to be analytic, and these are not: {named}; "
            "use --method auto (complex where possible, else central), central or richardson"
        )


# ---- the check ----------------------------------------------------------------------------------------


def prepare(
    target: Path | str | dict | Run | Checkpoint | None = None,
    *,
    method: str = "auto",
    checkpoint: str | int | None = None,
    samples: int = 4,
    layers: Sequence[str] | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Subject, list[str] | None, np.random.Generator]:
    """The subject of a check (network, loss, batch) and the layers and generator it uses."""
    if method not in METHODS:
        raise UserError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if samples < 1:
        raise UserError(f"--samples: expected an integer ≥ 1, got {samples}")
    found = resolve_network(target, checkpoint, overrides)
    loss = build_loss(found.cfg)
    selected = check_layers(found.net, layers)
    draw_seed = found.cfg.seed if seed is None else seed
    rng = np.random.default_rng([draw_seed, SAMPLE_STREAM])
    x, y, inputs, inputs_text, index = choose_inputs(found, samples, rng, draw_seed)
    bad = non_analytic_layers(found.net, loss, x) if method in ("auto", "complex") else []
    if method == "complex":
        refuse_complex(found.net, bad)
    subject = Subject(
        net=found.net, loss=loss, x=x, y=y, kind=found.kind, target=found.target, weights=found.weights,
        inputs=inputs, inputs_text=inputs_text, sample_indices=index, requested_method=method,
        non_analytic=bad,
        epoch=found.ck.epoch if found.ck is not None else None,
    )  # fmt: skip
    return subject, selected, rng


def gradcheck(
    target: Path | str | dict | Run | Checkpoint | None = None,
    method: str = "auto",
    *,
    checkpoint: str | int | None = None,
    samples: int = 4,
    layers: Sequence[str] | None = None,
    check_all: bool | None = None,
    per_tensor: int | None = None,
    eps: float | None = None,
    rtol: float = 1e-6,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    mode: str = "elements",
    directions: int | None = None,
    progress: Progress | None = None,
) -> GradcheckReport:
    """Check every parameter gradient, layer delta and input gradient of ``target`` by finite
    differences (see the module docstring); ``result.passed`` says whether no row FAILs.

    ``method``: central, richardson, complex or auto (complex where the network is analytic, else
    central).  ``check_all`` every element (default: up to 20,000 parameters), ``per_tensor`` K
    elements per tensor; ``layers`` only these (``"input"`` the input gradient).  ``mode``
    ``directional`` checks each tensor along ``directions`` random directions (default 16) and
    element by element only where one fails.  ``progress(done, total)`` is called as the check
    goes.  Raises UserError for a bad target or option.
    """
    subject, selected, rng = prepare(target, method=method, checkpoint=checkpoint, samples=samples,
                                     layers=layers, seed=seed, overrides=overrides)  # fmt: skip
    return run_check(subject, selected, rng, check_all=check_all, per_tensor=per_tensor, eps=eps, rtol=rtol,
                     mode=mode, directions=directions, progress=progress)  # fmt: skip


def run_check(
    subject: Subject,
    selected: list[str] | None,
    rng: np.random.Generator,
    *,
    check_all: bool | None = None,
    per_tensor: int | None = None,
    eps: float | None = None,
    rtol: float = 1e-6,
    mode: str = "elements",
    directions: int | None = None,
    progress: Progress | None = None,
) -> GradcheckReport:
    """The check of a prepared subject (the options checked first: UserError naming a bad one)."""
    check_options(check_all, per_tensor, eps, rtol, mode, directions)
    try:
        result = check_gradients(
            subject.net, subject.loss, subject.x, subject.y, method=subject.requested_method, eps=eps,
            rtol=rtol, layers=selected, per_tensor=per_tensor, check_all=check_all, rng=rng, mode=mode,
            directions=directions, progress=progress,
        )  # fmt: skip
    except ValueError as e:  # the options are checked before; keep core's words for anything left
        raise UserError(f"gradcheck: {e}") from None
    return GradcheckReport(subject, result)
