"""``cnnbp.trace``: the worked backpropagation derivation of one sample (:mod:`cnnbp.core.trace`) for a
config, a run or a checkpoint.

The network is resolved as ``cnnbp gradcheck`` resolves it (:func:`cnnbp.checking.resolve_network`):

* a config (a YAML path, a dict, or None for the built-in digits config): the network ``cnnbp train``
  starts from, and the sample is ``sample`` of its training split (loaded as train loads it);
* a run folder (its last checkpoint, or ``checkpoint=N``), a checkpoint file, a :class:`cnnbp.Run` or
  a :class:`cnnbp.Checkpoint`: the network at that checkpoint's weights, and the sample is probe sample
  ``sample`` (stored in the checkpoint, so the data set is not needed).

The trace is computed in float64 (a float32 network is traced on a float64 copy).  Its update step uses
the run's learning rate.  ``at`` names elements as the trace prints them, counting from 1:
``conv1[1,2,2]`` (channel 1, row 2, column 2 of conv1's output), ``conv1.W[1,1,2,2]`` (a parameter),
``input[1,3,3]`` (the input gradient).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.checking import check_layers, resolve_network
from cnnbp.checkpoint import Checkpoint
from cnnbp.config import build_loss
from cnnbp.core import formula as fm
from cnnbp.core.formula import D, E, Sym
from cnnbp.core.network import Sequential
from cnnbp.core.trace import Line, Trace
from cnnbp.core.trace import trace as trace_sample
from cnnbp.data import load_dataset
from cnnbp.errors import UserError
from cnnbp.files import json_number
from cnnbp.runner import n_outputs
from cnnbp.runs import Run

__all__ = ["TraceReport", "parse_at", "trace"]

_AT = re.compile(r"^\s*([^\[\]\s]+)\s*\[\s*([0-9][0-9,\s]*)\]\s*$")


@dataclass
class TraceReport:
    """What :func:`trace` returns: the derivation and what it is of."""

    trace: Trace
    target: str  # the config or checkpoint file read
    kind: str  # "config" | "checkpoint"
    weights: str  # where the weights come from, in words
    epoch: int | None
    sample: int  # the index asked for (training split or probe batch)
    train_index: int | None  # its index in the training split
    sample_text: str
    y: list[float] | int  # the target: a class index or a vector
    loss_name: str
    optimizer: str
    cast_from: str | None
    header: list[Line] = field(default_factory=list)  # the notes printed above the derivation

    @property
    def steps(self) -> list[Any]:
        return self.trace.steps

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: ``steps`` (each with layer, tensor, index, formula, terms, value), the
        summaries of tensors shown in part, and what was traced."""
        return {
            "target": self.target, "kind": self.kind, "weights": self.weights, "epoch": self.epoch,
            "sample": {"index": self.sample, "train_index": self.train_index, "target": self.y},
            "loss": {"name": self.loss_name, "value": json_number(self.trace.loss)}, "lr": self.trace.lr,
            "optimizer": self.optimizer, "cast_from": self.cast_from, "notes_naming": self.trace.notes_naming,
            "notes": [line_text(line) for line in self.header],
            "steps": [_json_step(s.to_dict()) for s in self.trace.steps],
            "summaries": [{k: json_number(v) if isinstance(v, float) else v for k, v in s.to_dict().items()}
                          for s in self.trace.summaries],
        }  # fmt: skip


def _json_step(d: dict[str, Any]) -> dict[str, Any]:
    d["terms"] = [[json_number(f) for f in t] for t in d["terms"]]
    d["value"] = json_number(d["value"])
    return d


def line_text(line: Line, precision: int = 4) -> str:
    """A header or legend line in plain Unicode."""
    return "".join(part if isinstance(part, str) else fm.text(part, precision) for part in line)


# ---- the elements --------------------------------------------------------------------------------------


def parse_at(specs: Sequence[str], net: Sequential) -> dict[tuple[str, str | None], list[tuple[int, ...]]]:
    """``--at`` values (``LAYER[i,j,…]``, ``LAYER.PARAM[…]``, ``input[…]``; 1-based) as 0-based indices
    per tensor; UserError naming the bad one."""
    infos = {info.name: info for info in net.summary()}
    out: dict[tuple[str, str | None], list[tuple[int, ...]]] = {}
    for spec in specs:
        m = _AT.match(spec)
        if not m:
            raise UserError(
                f"--at {spec}: expected LAYER[i,j,...] with indices counted from 1, e.g. conv1[1,2,2]"
            )
        name, numbers = m.group(1), [int(t) for t in m.group(2).replace(" ", "").split(",") if t]
        key, shape, what = _at_tensor(name, infos, net, spec)
        if len(numbers) != len(shape) or any(not 1 <= i <= n for i, n in zip(numbers, shape, strict=False)):
            raise UserError(
                f"--at {spec}: {what} has shape {'×'.join(map(str, shape))}; give {len(shape)} "
                f"ind{'ex' if len(shape) == 1 else 'ices'} counted from 1, each at most its size"
            )
        out.setdefault(key, []).append(tuple(i - 1 for i in numbers))
    return out


def _at_tensor(
    name: str, infos: dict, net: Sequential, spec: str
) -> tuple[tuple[str, str | None], tuple, str]:
    if name == "input":
        return ("input", None), tuple(net.input_shape), "the input"
    if name in infos:
        return (name, None), tuple(infos[name].output_shape), f"{name}'s output"
    layer, _, param = name.rpartition(".")
    if layer in infos and param in infos[layer].param_shapes:
        return (layer, param), tuple(infos[layer].param_shapes[param]), f"{layer}.{param}"
    names = ", ".join(["input", *infos])
    raise UserError(
        f"--at {spec}: no layer or parameter {name!r}; the layers are {names} (parameters as conv1.W)"
    )


# ---- the sample ----------------------------------------------------------------------------------------


def _choose_sample(found: Any, sample: int) -> tuple[np.ndarray, np.ndarray, int | None, str]:
    """(x, y, training-set index, description) of the traced sample."""
    ck = found.ck
    if ck is not None:
        probe_x = np.asarray(ck.probe_x)
        n = int(probe_x.shape[0]) if probe_x.ndim else 0
        if not 0 <= sample < n:
            raise UserError(f"--sample {sample}: the checkpoint has {n} probe sample{'s' * (n != 1)} "
                            f"(0–{max(n - 1, 0)})")  # fmt: skip
        index = int(np.asarray(ck.probe_index)[sample])
        text = f"probe sample {sample} of {n} (training-set index {index})"
        return probe_x[sample], np.asarray(ck.probe_y)[sample], index, text
    cfg = found.cfg
    out = n_outputs(found.net.summary()[-1].output_shape)
    data = load_dataset(cfg.data, cfg.model.input_shape, out, np.dtype(cfg.dtype), cfg.seed, cfg.base_dir)
    n = data.x_train.shape[0]
    if not 0 <= sample < n:
        raise UserError(
            f"--sample {sample}: the training split has {n:,} sample{'s' * (n != 1)} (0–{n - 1:,})"
        )
    text = f"training sample {sample} of {n:,}, from {data.description}"
    return data.x_train[sample], data.y_train[sample], sample, text


def _target_value(y: np.ndarray) -> list[float] | int:
    y = np.asarray(y)
    return int(y) if y.ndim == 0 else [float(v) for v in y.reshape(-1)]


# ---- the notes -----------------------------------------------------------------------------------------


def _header(report: TraceReport, net: Sequential, hyper: dict[str, Any]) -> list[Line]:
    w, alpha = Sym("w"), Sym("α")
    lr = report.trace.lr
    target = (
        f"class {report.y}"
        if isinstance(report.y, int)
        else "[" + ", ".join(f"{v:g}" for v in report.y) + "]"
    )
    lines: list[Line] = [(f"{report.sample_text}, target {target}",)]
    lines.append((
        E, " is this sample's own loss. The engine's parameter gradients are of the batch-mean loss; for a "
        "batch of this one sample they are these ", D(E, w), ", and the update shown is the step plain "
        "gradient descent makes on that batch, ",
        fm.Rel(Sym("w", sup="+"), fm.sub(w, fm.Prod((alpha, D(E, w))))),
        ", with the run's learning rate ", fm.Rel(alpha, Sym(f"{lr:g}")), ".",
    ))  # fmt: skip
    if report.optimizer != "sgd" or hyper.get("momentum") or hyper.get("weight_decay"):
        extra = ", ".join(f"{k} {v:g}" for k, v in hyper.items() if k in ("momentum", "weight_decay") and v)
        lines.append((f"The run trains with {report.optimizer}{f' ({extra})' if extra else ''}: its own step "
                      "differs from the plain one shown.",))  # fmt: skip
    if net.couples_batch or net.stochastic:
        lines.append(("The network runs as inference computes it: dropout is the identity and batchnorm "
                      "normalises with its running statistics (a batch of one sample has no batch "
                      "statistics of its own), so a training step, with the batch's statistics and "
                      "random masks, computes otherwise.",))  # fmt: skip
    if report.cast_from:
        lines.append((f"Computed in float64 (the network is {report.cast_from}).",))
    if report.trace.notes_naming:
        lines.append(("Named as seed 000's 2-2-2 network: inputs i, hidden units h and outputs o, net the "
                      "weighted sum into a unit and out its activation; weights ", Sym("w", "1"), ", ",
                      Sym("w", "2"), ", … numbered row by row through the layers; ",
                      fm.Rel(Sym("δ", "o1"), D(E, Sym("net", "o1"))), ".",))  # fmt: skip
    else:
        lines.append(("In each layer's rule: X (maps) or x (vectors) is its input, z its output (a after an "
                      "activation), ", fm.Rel(Sym("δ"), D(E, Sym("z"))), "; subscripts count from 1 (",
                      Sym("δ", "11"), " is row 1, column 1; ", Sym("δ", "2,11"), " the same in channel 2); "
                      "a conv kernel is F.",))  # fmt: skip
    return lines


# ---- the entry point -----------------------------------------------------------------------------------


def trace(
    target: Path | str | dict | Run | Checkpoint | None = None,
    *,
    sample: int = 0,
    checkpoint: str | int | None = None,
    layers: Sequence[str] | None = None,
    at: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> TraceReport:
    """The worked derivation of one sample through ``target``'s network (see the module docstring).

    ``layers`` keeps only these layers' steps (``"input"``: the input gradient); ``at`` names elements
    to write out (1-based, as printed), instead of the default (every element of a small tensor, else
    the one with the largest |δ| per map).  Raises UserError for a bad target, sample or option.
    """
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise UserError(f"--sample: expected an integer ≥ 0, got {sample!r}")
    found = resolve_network(target, checkpoint, overrides)
    net, cfg = found.net, found.cfg
    selected = check_layers(net, layers)
    where = parse_at(list(at), net)
    x, y, train_index, sample_text = _choose_sample(found, sample)
    cast_from = None if net.dtype == np.dtype(np.float64) else str(net.dtype)
    if cast_from:
        net.cast(np.float64)
    loss = build_loss(cfg)
    try:
        result = trace_sample(net, loss, np.asarray(x, dtype=np.float64), np.asarray(y), cfg.train.lr,
                              at=where, layers=selected)  # fmt: skip
    except ValueError as e:
        raise UserError(f"trace: {e}") from None
    report = TraceReport(
        trace=result, target=found.target, kind=found.kind, weights=found.weights,
        epoch=found.ck.epoch if found.ck is not None else None, sample=sample, train_index=train_index,
        sample_text=sample_text, y=_target_value(y), loss_name=cfg.loss, optimizer=cfg.train.optimizer,
        cast_from=cast_from,
    )  # fmt: skip
    report.header = _header(report, net, dict(cfg.train.hyper))
    return report
