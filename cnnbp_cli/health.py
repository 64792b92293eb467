"""Gradient health of a run, as data: what ``cnnbp inspect --show health`` and ``cnnbp plot --kind health``
show, computed from what the checkpoints hold (the probe batch's deltas, activations and gradients).

For one checkpoint (:func:`checkpoint_health`):

* **δ flow**: per layer, ‖δ‖ = the mean over the probe samples of ‖δ_x‖ (δ_x = ∂L_x/∂(layer output)),
  and its ratio to the next layer's (the layer after it, towards the output).  A ratio below
  ``vanish_ratio`` (1e-2) is vanishing through that step, above ``explode_ratio`` (1e2) exploding; the
  total, ‖δ‖ of the first layer over ‖δ‖ of the last (from the output back to the input), below
  ``vanish_total`` (1e-4) is vanishing, above ``explode_total`` (1e4) exploding.
* **units**: per ``relu`` layer, the fraction of its units that are *dead*: zero for every probe sample.
  A unit is one feature: a channel of a C×H×W map (a conv filter's weights are shared by every position,
  so its positions are one unit) or one element of a vector.  Flagged at ``dead`` (0.5) or more.  Per
  ``sigmoid`` / ``tanh`` layer, the fraction of its values (over units and probe samples) that are
  *saturated*: |z| > ``sigmoid_z`` (4) or ``tanh_z`` (2), z being the layer's input, or an output within
  ``bound`` (1e-3) of the function's bounds.  Flagged at ``saturated`` (0.5) or more.
* **parameters**: per parameter tensor, ‖∂L/∂θ‖ / ‖θ‖ (the probe batch's gradient) and the update ratio
  lr · ‖∂L/∂θ‖ / ‖θ‖ (the size of a plain gradient step against the weights; the rule of thumb is about
  1e-3), lr being the rate of the checkpoint's epoch.  Weight tensors (2 or more axes) are judged: an
  update ratio below ``update_low`` (1e-5) barely moves the weights, above ``update_high`` (1e-1) moves
  them too much.  Biases and other vectors are shown, not judged (they start at 0, so the ratio is
  infinite at first).

:func:`verdicts` turns the flags of the shown checkpoint into sentences; given the checkpoints before it,
each says since when it holds (``conv1.relu: 83% of units dead since epoch 2``).  Every threshold is a
field of :class:`Thresholds`, settable with ``--threshold KEY=VALUE``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from cnnbp.checkpoint import Checkpoint
from cnnbp.errors import UserError

__all__ = [
    "THRESHOLD_HELP",
    "Thresholds",
    "checkpoint_health",
    "checkpoint_lr",
    "parse_thresholds",
    "run_health",
    "verdicts",
]


@dataclass(frozen=True)
class Thresholds:
    """Where a figure becomes a problem (see the module docstring)."""

    vanish_ratio: float = 1e-2
    explode_ratio: float = 1e2
    vanish_total: float = 1e-4
    explode_total: float = 1e4
    dead: float = 0.5
    saturated: float = 0.5
    sigmoid_z: float = 4.0
    tanh_z: float = 2.0
    bound: float = 1e-3
    update_low: float = 1e-5
    update_high: float = 1e-1


THRESHOLD_HELP = {
    "vanish_ratio": "‖δ‖ of a layer over the next layer's below this: vanishing",
    "explode_ratio": "‖δ‖ of a layer over the next layer's above this: exploding",
    "vanish_total": "‖δ‖ of the first layer over the last layer's below this: vanishing",
    "explode_total": "‖δ‖ of the first layer over the last layer's above this: exploding",
    "dead": "fraction of a relu layer's units dead for every probe sample, flagged from this",
    "saturated": "fraction of a sigmoid/tanh layer's values saturated, flagged from this",
    "sigmoid_z": "a sigmoid input |z| above this is saturated",
    "tanh_z": "a tanh input |z| above this is saturated",
    "bound": "an output this close to the function's bounds is saturated",
    "update_low": "a weight tensor's lr·‖∂L/∂θ‖/‖θ‖ below this: too small",
    "update_high": "a weight tensor's lr·‖∂L/∂θ‖/‖θ‖ above this: too large",
}


def parse_thresholds(items: Sequence[str] | None) -> Thresholds:
    """``["dead=0.3", "update_low=1e-6"]`` → :class:`Thresholds`; UserError naming a bad item."""
    from cnnbp.config_schema import suggest

    t = Thresholds()
    names = [f.name for f in fields(Thresholds)]
    for item in items or []:
        for part in [p.strip() for p in item.split(",") if p.strip()]:
            key, sep, text = part.partition("=")
            key = key.strip()
            if not sep:
                raise UserError(f"--threshold: takes KEY=VALUE, got {part!r} (keys: {', '.join(names)})")
            if key not in names:
                guess = suggest(key, names)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                raise UserError(f"--threshold: no threshold {key!r}{hint}; they are: {', '.join(names)}")
            try:
                value = float(text)
            except ValueError:
                raise UserError(f"--threshold: {key} needs a number, got {text.strip()!r}") from None
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--threshold: {key} must be a finite number ≥ 0, got {text.strip()!r}")
            t = replace(t, **{key: value})
    return t


# ---- one checkpoint -------------------------------------------------------------------------------------


def _delta_norm(d: np.ndarray) -> float:
    """Mean over probe samples of ‖δ_x‖."""
    if d.shape[0] == 0:
        return math.nan
    flat = np.asarray(d, dtype=np.float64).reshape(d.shape[0], -1)
    return float(np.mean(np.sqrt(np.sum(flat * flat, axis=1))))


def _norm(a: np.ndarray) -> float:
    arr = np.asarray(a, dtype=np.float64)
    return float(np.sqrt(np.sum(arr * arr)))


def _ratio(num: float, den: float) -> float:
    """num / den; NaN when either is not finite or den is 0 (0 / 0 included)."""
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0:
        return math.nan
    return num / den


def flow(ck: Checkpoint, t: Thresholds) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per layer (network order) ‖δ‖ and its ratio to the next layer's, flagged; and the total."""
    names = ck.layer_names
    norms = [_delta_norm(np.asarray(ck.deltas[n])) for n in names]
    rows = []
    for i, layer in enumerate(ck.layers):
        ratio = _ratio(norms[i], norms[i + 1]) if i + 1 < len(names) else math.nan
        flag = None
        if ratio < t.vanish_ratio:
            flag = "vanishing"
        elif ratio > t.explode_ratio:
            flag = "exploding"
        rows.append(
            {
                "name": layer.name,
                "type": layer.type,
                "delta_norm": norms[i],
                "ratio": ratio,
                "next": names[i + 1] if i + 1 < len(names) else None,
                "flag": flag,
            }
        )
    total = _ratio(norms[0], norms[-1]) if names else math.nan
    flag = "vanishing" if total < t.vanish_total else "exploding" if total > t.explode_total else None
    return rows, {
        "first": names[0] if names else None,
        "last": names[-1] if names else None,
        "ratio": total,
        "flag": flag,
    }


def _z_of(ck: Checkpoint, index: int) -> np.ndarray:
    """The input of layer ``index`` for the probe samples: the previous layer's output, or the probe x."""
    if index == 0:
        return np.asarray(ck.probe_x, dtype=np.float64)
    return np.asarray(ck.activations[ck.layers[index - 1].name], dtype=np.float64)


def units(ck: Checkpoint, t: Thresholds) -> list[dict[str, Any]]:
    """Dead units of relu layers and saturated values of sigmoid/tanh layers (needs ``/activations``)."""
    rows = []
    if not ck.activations or probe_samples(ck) == 0:
        return rows
    for i, layer in enumerate(ck.layers):
        if layer.type not in ("relu", "sigmoid", "tanh") or layer.name not in ck.activations:
            continue
        a = np.asarray(ck.activations[layer.name], dtype=np.float64)
        if layer.type == "relu":
            per_unit = a.reshape(a.shape[0], a.shape[1], -1) if a.ndim >= 3 else a.reshape(*a.shape, 1)
            dead = np.all(per_unit <= 0, axis=(0, 2))
            fraction, count, kind, limit = float(dead.mean()), int(dead.size), "dead", t.dead
        else:
            z = _z_of(ck, i)
            if layer.type == "sigmoid":
                sat = (np.abs(z) > t.sigmoid_z) | (a < t.bound) | (a > 1 - t.bound)
            else:
                sat = (np.abs(z) > t.tanh_z) | (np.abs(a) > 1 - t.bound)
            fraction, count, kind, limit = float(sat.mean()), int(sat[0].size), "saturated", t.saturated
        rows.append(
            {
                "name": layer.name,
                "type": layer.type,
                "kind": kind,
                "fraction": fraction,
                "units": count,
                "flag": kind if fraction >= limit else None,
            }
        )
    return rows


def checkpoint_lr(ck: Checkpoint) -> float:
    """The learning rate of the checkpoint's epoch (``/metrics`` lr), else ``train.lr`` of its config."""
    epochs, lrs = ck.history.get("epoch"), ck.history.get("lr")
    if epochs is not None and lrs is not None:
        pairs = zip(np.asarray(epochs), np.asarray(lrs), strict=False)
        hits = [float(v) for e, v in pairs if int(e) == ck.epoch]
        if hits and math.isfinite(hits[-1]):
            return hits[-1]
    try:
        train = ck.config_dict().get("train")
    except UserError:
        return math.nan
    value = train.get("lr") if isinstance(train, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def params(ck: Checkpoint, t: Thresholds, lr: float) -> list[dict[str, Any]]:
    """Per parameter tensor: ‖∂L/∂θ‖, ‖θ‖, their ratio and the update ratio, weight tensors judged."""
    rows = []
    for lname, group in ck.weights.items():
        for key, w in group.items():
            g = ck.grads.get(lname, {}).get(key)
            gn, wn = (_norm(g) if g is not None else math.nan), _norm(w)
            ratio = _ratio(gn, wn)
            update = lr * ratio if math.isfinite(lr) else math.nan
            judged = np.ndim(w) >= 2 and math.isfinite(update)
            flag = None
            if judged and update < t.update_low:
                flag = "update_small"
            elif judged and update > t.update_high:
                flag = "update_large"
            rows.append(
                {
                    "name": f"{lname}.{key}",
                    "layer": lname,
                    "param": key,
                    "grad_norm": gn,
                    "param_norm": wn,
                    "ratio": ratio,
                    "update_ratio": update,
                    "judged": bool(judged),
                    "flag": flag,
                }
            )
    return rows


def probe_samples(ck: Checkpoint) -> int:
    return int(np.asarray(ck.probe_index).shape[0])


def checkpoint_health(ck: Checkpoint, t: Thresholds | None = None) -> dict[str, Any]:
    """Every figure of one checkpoint (see the module docstring), with its flag (None: fine)."""
    t = t or Thresholds()
    lr = checkpoint_lr(ck)
    rows, total = flow(ck, t)
    return {
        "epoch": ck.epoch,
        "step": ck.step,
        "interrupted": ck.interrupted,
        "probe_samples": probe_samples(ck),
        "activations_recorded": bool(ck.activations),
        "lr": lr,
        "flow": rows,
        "total": total,
        "units": units(ck, t),
        "params": params(ck, t, lr),
    }


# ---- verdicts -------------------------------------------------------------------------------------------


def _flags(h: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every flagged figure of one checkpoint's health, by (subject, kind)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in h["flow"]:
        if r["flag"]:
            out[(r["name"], r["flag"])] = {"value": r["ratio"], "row": r, "what": "flow"}
    total = h["total"]
    if total["flag"]:
        out[("total", total["flag"])] = {"value": total["ratio"], "row": total, "what": "total"}
    for r in h["units"]:
        if r["flag"]:
            out[(r["name"], r["flag"])] = {"value": r["fraction"], "row": r, "what": "units"}
    for r in h["params"]:
        if r["flag"]:
            out[(r["name"], r["flag"])] = {"value": r["update_ratio"], "row": r, "what": "params"}
    return out


def _sentence(subject: str, kind: str, f: dict[str, Any], h: dict[str, Any], t: Thresholds) -> str:
    r, v = f["row"], f["value"]
    if f["what"] == "flow":
        limit = t.vanish_ratio if kind == "vanishing" else t.explode_ratio
        side = "below" if kind == "vanishing" else "above"
        return f"{subject}: ‖δ‖ is {v:.2g} × {r['next']}'s ({kind}: {side} {limit:g})"
    if f["what"] == "total":
        limit = t.vanish_total if kind == "vanishing" else t.explode_total
        side = "below" if kind == "vanishing" else "above"
        return (
            f"δ from output to input: ‖δ‖ of {r['first']} is {v:.2g} × {r['last']}'s ({kind}: {side} "
            f"{limit:g})"
        )
    if f["what"] == "units":
        if kind == "dead":
            n = h["probe_samples"]
            return f"{subject}: {100 * v:.0f}% of units dead (zero for all {n} probe samples)"
        return f"{subject}: {100 * v:.0f}% of values saturated"
    if kind == "update_small":
        return f"{subject}: update ratio lr·‖∂L/∂θ‖/‖θ‖ {v:.2g} is below {t.update_low:g} (barely moves)"
    return f"{subject}: update ratio lr·‖∂L/∂θ‖/‖θ‖ {v:.2g} is above {t.update_high:g} (too large a step)"


def verdicts(history: Sequence[dict[str, Any]], t: Thresholds | None = None) -> list[dict[str, Any]]:
    """The problems of the last checkpoint's health in ``history`` (health dicts by epoch), as sentences.

    Each has ``subject``, ``kind``, ``value``, ``since`` (the first epoch of the run of checkpoints up to
    the last one that all have the same flag; None when only one checkpoint is given) and ``text``.
    """
    t = t or Thresholds()
    if not history:
        return []
    last = history[-1]
    flagged = [_flags(h) for h in history]
    out = []
    for key, f in flagged[-1].items():
        since = None
        if len(history) > 1:
            k = len(history) - 1
            while k > 0 and key in flagged[k - 1]:
                k -= 1
            since = history[k]["epoch"]
        text = _sentence(key[0], key[1], f, last, t)
        if since is not None:
            text += f" since epoch {since}" if since != last["epoch"] else f" (new at epoch {since})"
        out.append({"subject": key[0], "kind": key[1], "value": f["value"], "since": since, "text": text})
    return out


def run_health(cks: Sequence[Checkpoint], t: Thresholds | None = None) -> dict[str, Any]:
    """The health of every checkpoint given (by epoch) and the verdicts of the last one."""
    t = t or Thresholds()
    history = [checkpoint_health(ck, t) for ck in cks]
    return {"thresholds": asdict(t), "checkpoints": history, "verdicts": verdicts(history, t)}
