"""Sweeps: one base config trained many times — a grid × seeds and random samples — on Dask.

A sweep file names a base config and what to vary::

    name: lr-vs-init
    base: digits.yaml                  # relative to the sweep file; omitted: the built-in digits config
    set: {train.epochs: 5}             # optional: the same overrides for every trial
    grid: {train.lr: [0.03, 0.1], model.layers[0].init: [glorot_uniform, he_normal]}
    seeds: [0, 1, 2]                   # optional: every combination once per seed
    random: {n: 20, seed: 0, space: {train.lr: {loguniform: [1.0e-3, 1.0]}}}
    metric: val_acc                    # what the summary ranks by (the last epoch's value)
    mode: max                          # default: max for accuracies, min for losses

Keys are the ``KEY=VALUE`` paths ``--set`` takes (:func:`cnnbp.yamlio.apply_override`).  The trials,
in a fixed order: every grid combination (the last key varying fastest), then the ``n`` random samples
(``default_rng([random.seed, RANDOM_STREAM])``, each key drawn in the file's order, floats rounded to 4
significant digits), each of them once per seed.  A trial's name is built from its values
(``lr_0.1-init_he_normal-seed_2``: each key by its last part, longer where two keys would read alike).

Before any worker starts, every trial's whole config is built and validated; a mistake is one
:class:`~cnnbp.errors.UserError` naming the sweep file and what causes it: the base, the one override
that fails on the base by itself, or else the trial (a combination of values that does not fit).  Each
trial is an ordinary run folder ``<out>/<sweep>/<trial>/`` written by :func:`cnnbp.train`; the sweep
folder also holds ``sweep.yaml`` (the sweep as resolved) and ``trials.csv`` (one row per trial,
rewritten atomically after each one ends).

Running a sweep again continues it: finished trials are skipped, interrupted ones resume from their
last checkpoint (:func:`cnnbp.resume`), a failed one is tried once more, a diverged one is kept (the
same config diverges the same way).  A trial that diverges or fails is recorded with its one-line
reason and the others go on.  Trials run on a local Dask cluster of worker processes (one trial and
one BLAS thread each) or on an existing cluster (``scheduler``); a trial keeps its config's shards
(``train.threads``) but runs them on one CPU, so its numbers are those of ``cnnbp train``.  A first
SIGINT/SIGTERM asks every running trial to save its state and stop; a second stops at once.  Dask is
an optional extra (``pip install 'cnnbp[sweep]'``): only running trials needs it.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from cnnbp.config import check_model, config_from_dict, default_config_path
from cnnbp.config_schema import MAX_NAME, SAFE_NAME, Custom, Name, Path_, Section, Value, first_error, problem
from cnnbp.config_schema import show as show_value
from cnnbp.core.hyper import NonNegInt, PositiveInt
from cnnbp.errors import UserError
from cnnbp.files import json_number, write_atomic
from cnnbp.resuming import config_changes, run_lock
from cnnbp.runner import Callback, StopFlag, best
from cnnbp.runs import CONFIG, METRICS_CSV, Run, find_checkpoints
from cnnbp.yamlio import absolute, apply_override, dump_yaml, load_yaml_text, read_yaml, unshare

__all__ = [
    "SWEEP_FILE",
    "TRIALS_CSV",
    "SweepCallback",
    "SweepInterrupted",
    "SweepPlan",
    "SweepResult",
    "SweepSpec",
    "Trial",
    "TrialRow",
    "is_sweep_folder",
    "prepare",
    "read_sweep",
    "run_trial",
    "sweep",
    "sweep_summary",
]

SWEEP_FILE = "sweep.yaml"
TRIALS_CSV = "trials.csv"
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
#: the sampler's stream: "random" in ASCII, so it never shares a stream with a run's own draws
RANDOM_STREAM = int.from_bytes(b"random", "big")
DISTRIBUTIONS = {
    "uniform": "[low, high]",
    "loguniform": "[low, high] with low > 0",
    "int": "[low, high], integers, both included",
    "choice": "[value, value, ...]",
}
INSTALL_HINT = "pip install 'cnnbp[sweep]'"
#: worker processes start as fresh interpreters that import the main script again: a call at its top level
#: would start workers from the workers
SCRIPT_HINT = 'in a Python script, call cnnbp.sweep() under `if __name__ == "__main__":`'
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
RETRIES = 1  # a failed trial is tried again this many times, one more on each run of the sweep
STOP_CHECK_SECONDS = 0.2  # how often a running trial asks whether the sweep was stopped
GRACE_SECONDS = 60.0  # how long a stopped sweep waits for its trials to save their state
#: what a trial's row says: not run yet, done, and the three ways it can end early
STATUSES = ("pending", "finished", "diverged", "failed", "interrupted")
PATH_KEYS = ("data.path", "model.init_from")  # values relative to the sweep file, as the base's are
#: a local cluster listens on the loopback interface only, its HTTP endpoints on ports of the system's choice
LOOPBACK = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
            "worker_dashboard_address": "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False}}  # fmt: skip


# ---- the sweep file ----------------------------------------------------------------------------------


def _check_mapping(value: Any, example: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise problem(f"expected a non-empty mapping of KEY: {example}, got {show_value(value)}")
    for key in value:
        if not isinstance(key, str) or not key.strip():
            raise problem("keys must be KEY paths as --set takes them, e.g. train.lr", show_value(key))
    return value


def check_set(value: Any) -> dict[str, Any]:
    """``set``: KEY → the value every trial gets."""
    return dict(_check_mapping(value, "value, e.g. train.epochs: 5"))


def check_grid(value: Any) -> dict[str, list]:
    """``grid``: KEY → a non-empty list of distinct values."""
    for key, values in _check_mapping(value, "[values], e.g. train.lr: [0.01, 0.1]").items():
        if not isinstance(values, list) or not values:
            raise problem(f"expected a non-empty list of values, got {show_value(values)}", key)
        for i, v in enumerate(values):
            if v in values[:i]:
                raise problem(f"{show_value(v)} is listed twice", key)
    return {k: list(v) for k, v in value.items()}


def check_seeds(value: Any) -> list[int]:
    ok = isinstance(value, list) and value
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise problem(f"expected a non-empty list of integers ≥ 0, got {show_value(value)}")
    if len(set(value)) != len(value):
        raise problem(f"a seed is listed twice in {show_value(value)}")
    return list(value)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_distribution(kind: str, args: Any, key: str) -> list:
    """One ``{kind: args}`` of ``random.space``."""
    want = f"{kind}: {DISTRIBUTIONS[kind]}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise problem(f"expected {want}, got {show_value(args)}", key)
        return list(args)
    pair = isinstance(args, list) and len(args) == 2
    if kind == "int":
        pair = pair and all(isinstance(a, int) and not isinstance(a, bool) for a in args)
        if not pair or args[0] > args[1]:
            raise problem(f"expected {want}, low ≤ high, got {show_value(args)}", key)
        return list(args)
    if not pair or not all(_number(a) for a in args) or not args[0] < args[1]:
        raise problem(f"expected {want}, low < high, got {show_value(args)}", key)
    if kind == "loguniform" and args[0] <= 0:
        raise problem(f"expected {want}, got {show_value(args)}", key)
    return [float(a) for a in args]


def check_space(value: Any) -> dict[str, tuple[str, list]]:
    """``random.space``: KEY → ``{uniform | loguniform | int | choice: ...}``."""
    kinds = ", ".join(f"{{{k}: {v}}}" for k, v in DISTRIBUTIONS.items())
    out = {}
    for key, dist in _check_mapping(value, "{loguniform: [1.0e-3, 1.0]}").items():
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise problem(f"expected one of {kinds}, got {show_value(dist)}", key)
        kind, args = next(iter(dist.items()))
        out[key] = (kind, check_distribution(kind, args, key))
    return out


class RandomPart(Section):
    """``random``: n samples of the space."""

    what = "a mapping with n and space, e.g. {n: 20, space: {train.lr: {loguniform: [1.0e-3, 1.0]}}}"
    required = {"n": ": the number of samples, e.g. 20", "space": ": KEY: {loguniform: [low, high]}, ..."}

    n: Value(PositiveInt, "the number of random samples") = None
    seed: Value(NonNegInt, "the seed of the sampler") = 0
    space: Custom(check_space, {"type": "object", "minProperties": 1}) = None


class SweepFile(Section):
    """A cnnbp sweep file (cnnbp sweep SWEEP.yaml)."""

    what = "a mapping (name, base, set, grid, seeds, random, metric, mode)"

    name: Name = None
    base: Path_ = None
    set: Custom(check_set, {"type": "object"}, nullable=True) = None
    grid: Custom(check_grid, {"type": "object"}, nullable=True) = None
    seeds: Custom(check_seeds, {"type": "array"}, nullable=True) = None
    random: RandomPart = None
    metric: Value(Literal[METRICS], "what the summary ranks trials by") = "val_acc"
    mode: Value(Literal["max", "min"] | None, "max or min; default: max for accuracies") = None


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file.  ``source`` names it in messages; ``base`` is an absolute path;
    ``space`` maps each random key to ``(distribution, arguments)``."""

    name: str
    source: str
    base: Path
    fixed: dict[str, Any]
    grid: dict[str, list]
    seeds: list[int] | None
    n_random: int
    random_seed: int
    space: dict[str, tuple[str, list]]
    metric: str
    mode: str
    folder: Path | None  # the sweep file's folder (None: a dict, relative paths against the cwd)

    def resolved(self) -> dict[str, Any]:
        """The sweep as ``sweep.yaml`` stores it: every default filled in, the base absolute."""
        random = None
        if self.n_random:
            space = {k: {kind: args} for k, (kind, args) in self.space.items()}
            random = {"n": self.n_random, "seed": self.random_seed, "space": space}
        return {
            "name": self.name,
            "base": str(self.base),
            "set": self.fixed or None,
            "grid": self.grid or None,
            "seeds": self.seeds,
            "random": random,
            "metric": self.metric,
            "mode": self.mode,
        }


def read_sweep(source: str | Path | dict) -> SweepSpec:
    """A sweep file (or a dict in its format, relative paths against the current folder), validated."""
    if isinstance(source, dict):
        place, folder, raw = "<sweep>", None, unshare(source, "<sweep>")
    else:
        path = Path(source).expanduser()
        place, folder, raw = str(path), path.parent, read_yaml(path)
    raw = {k: v for k, v in raw.items() if v is not None}  # null means "not given"
    try:
        valid = SweepFile.model_validate(raw)
    except ValidationError as e:
        where, text = first_error(e)
        raise UserError(f"{place}: {where + ': ' if where else ''}{text}") from None
    if not (valid.grid or valid.seeds or valid.random):
        raise UserError(f"{place}: nothing to sweep: give a grid, seeds or random samples")
    _check_overlaps(place, valid)
    if valid.name is not None:
        name = valid.name
    else:
        name = _safe_name(Path(place).stem if folder is not None else "sweep")
    base = default_config_path() if valid.base is None else Path(absolute(valid.base, folder or Path.cwd()))
    r = valid.random
    mode = valid.mode or ("max" if valid.metric.endswith("_acc") else "min")
    return SweepSpec(
        name, place, base, dict(valid.set or {}), dict(valid.grid or {}), valid.seeds,
        r.n if r else 0, r.seed if r else 0, dict(r.space) if r else {}, valid.metric, mode, folder,
    )  # fmt: skip


def _check_overlaps(place: str, valid: SweepFile) -> None:
    """A key is fixed or swept, not both; ``seeds`` owns the seed."""
    fixed, grid = valid.set or {}, valid.grid or {}
    space = valid.random.space if valid.random else {}
    for key in fixed:
        if key in grid or key in space:
            where = "grid" if key in grid else "random.space"
            raise UserError(f"{place}: set.{key}: also in {where}; a key is either fixed or swept")
    if valid.seeds:
        for section, keys in (("set", fixed), ("grid", grid), ("random.space", space)):
            if "seed" in keys:
                raise UserError(f"{place}: {section}.seed: the seeds list already sets the seed; remove one")


def _safe_name(stem: str) -> str:
    """A file stem as a folder name: unsafe characters as '-', at most MAX_NAME characters."""
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", stem)).strip("-.")[:MAX_NAME]
    return text or "sweep"


# ---- the trials --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: its ``values`` (swept key → value, the seed last) and its whole resolved
    config (named after the trial)."""

    index: int
    name: str
    values: dict[str, Any]
    config: dict[str, Any] = field(repr=False)

    @property
    def overrides(self) -> list[str]:
        """``KEY=VALUE`` texts, as ``cnnbp train --set`` takes them."""
        return [f"{k}={value_text(v)}" for k, v in self.values.items()]

    @property
    def epochs(self) -> int:
        return int(self.config["train"]["epochs"])


def value_text(value: Any) -> str:
    """A value as ``--set`` VALUE text on one line (YAML; plain words unquoted) that reads back equal."""
    if isinstance(value, float) and not math.isfinite(value):
        text = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    elif isinstance(value, str) and SAFE_NAME.fullmatch(value) and load_yaml_text(value) == value:
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)  # JSON is YAML: lists, mappings, quoted text
    return text


def sample_space(space: dict[str, tuple[str, list]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points of ``space``, each key drawn in order from ``default_rng([seed, RANDOM_STREAM])``.

    uniform: U(low, high); loguniform: exp U(ln low, ln high); floats rounded to 4 significant digits
    (and kept within the bounds); int: integers low…high, both included; choice: one of the values.
    """
    rng = np.random.default_rng([seed, RANDOM_STREAM])
    points = []
    for _ in range(n):
        point: dict[str, Any] = {}
        for key, (kind, args) in space.items():
            if kind == "choice":
                point[key] = copy.deepcopy(args[int(rng.integers(len(args)))])
            elif kind == "int":
                point[key] = int(rng.integers(args[0], args[1], endpoint=True))
            else:
                lo, hi = args
                x = (
                    math.exp(rng.uniform(math.log(lo), math.log(hi)))
                    if kind == "loguniform"
                    else rng.uniform(lo, hi)
                )
                point[key] = min(max(float(f"{x:.4g}"), lo), hi)
        points.append(point)
    return points


def trial_values(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial's swept values, in the sweep's fixed order (grid, then random samples; × seeds)."""
    points: list[dict[str, Any]] = []
    if spec.grid:
        keys = list(spec.grid)
        points += [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.grid.values())]
    if spec.n_random:
        points += sample_space(spec.space, spec.n_random, spec.random_seed)
    if spec.seeds:
        points = [{**p, "seed": s} for p in (points or [{}]) for s in spec.seeds]
    return points


def _segments(key: str) -> list[str]:
    """``model.layers[0].init`` → ['model', 'layers0', 'init']."""
    return [re.sub(r"\[(\d+)\]", r"\1", piece) for piece in key.split(".")]


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key by its last part, or as many last parts as tell it from the other keys."""
    segs = {k: _segments(k) for k in keys}
    out = {}
    for k, s in segs.items():
        n = 1
        while n < len(s) and any(o != k and segs[o][-n:] == s[-n:] for o in segs):
            n += 1
        out[k] = ".".join(s[-n:])
    return out


def trial_names(points: Sequence[dict[str, Any]]) -> list[str]:
    """A folder name per trial from its values (``lr_0.1-init_he_normal-seed_0``); a name that would
    repeat gets ``-2``, ``-3``; one over MAX_NAME characters is cut and given a hash of the whole."""
    keys = list(dict.fromkeys(k for p in points for k in p))
    short = short_keys(keys)
    names: list[str] = []
    seen: Counter[str] = Counter()
    for p in points:
        parts = [f"{short[k]}_{re.sub(r'[^A-Za-z0-9._-]+', '_', value_text(v)).strip('_') or 'x'}"
                 for k, v in p.items()]  # fmt: skip
        name = re.sub(r"\.{2,}", ".", "-".join(parts) or "base").strip(".") or "base"
        if len(name) > MAX_NAME - 4:
            name = name[: MAX_NAME - 13] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def _override(spec: SweepSpec, key: str, value: Any) -> str:
    if key in PATH_KEYS and isinstance(value, str) and value.strip():
        value = absolute(value, spec.folder or Path.cwd())  # as the base's own paths: against its file
    return f"{key}={value_text(value)}"


def _config(spec: SweepSpec, base: dict, overrides: Sequence[str], name: str | None = None) -> dict:
    """The resolved config of the base with ``overrides`` (UserError as the config reports it)."""
    raw = copy.deepcopy(base)
    for text in overrides:
        apply_override(raw, text)
    if name is not None:
        raw["name"] = name
    cfg = config_from_dict(raw, source=str(spec.base), base_dir=spec.base.parent)
    check_model(cfg)
    return cfg.resolved


def _blame(spec: SweepSpec, section: str, text: str, error: UserError) -> UserError:
    """``<sweep file>: <section>: KEY=VALUE: <problem>`` (the key's own place dropped from the problem)."""
    message = str(error)
    key = text.partition("=")[0]
    for prefix in (f"--set {text}: ", f"{key}: "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
            break
    return UserError(f"{spec.source}: {section}: {text}: {message}")


def plan_trials(spec: SweepSpec) -> list[Trial]:
    """Every trial with its whole config, each one validated (UserError at the first that is not)."""
    try:
        base = read_yaml(spec.base)
    except UserError as e:
        raise UserError(f"{spec.source}: base: {e}") from None
    fixed = [_override(spec, key, value) for key, value in spec.fixed.items()]
    points = trial_values(spec)
    trials = []
    for i, (name, values) in enumerate(zip(trial_names(points), points, strict=True)):
        texts = [_override(spec, k, v) for k, v in values.items()]
        try:
            config = _config(spec, base, [*fixed, *texts], name=name)
        except UserError as e:
            raise _explain(spec, base, fixed, name, values, e) from None
        trials.append(Trial(i, name, values, config))
    return trials


def _explain(
    spec: SweepSpec, base: dict, fixed: list[str], name: str, values: dict[str, Any], error: UserError
) -> UserError:
    """The error of a trial's config, put on what causes it: the base, or one override that fails alone
    on the base the same way (``<sweep file>: grid: KEY=VALUE: <problem>``), else the combination."""

    def same(texts: list[str]) -> bool:
        try:
            _config(spec, base, texts)
        except UserError as e:
            return str(e) == str(error)
        return False

    if same([]):
        return UserError(f"{spec.source}: base: {spec.base}: {error}")
    section = {**{k: "random.space" for k in spec.space}, **{k: "grid" for k in spec.grid}, "seed": "seeds"}
    suspects = [("set", t) for t in fixed] + [(section[k], _override(spec, k, v)) for k, v in values.items()]
    for where, text in suspects:
        if same([text]):
            return _blame(spec, where, text, error)
    swept = " ".join(_override(spec, k, v) for k, v in values.items())
    return UserError(f"{spec.source}: trial {name} ({swept}): {error}")


# ---- trials.csv --------------------------------------------------------------------------------------


@dataclass
class TrialRow:
    """One line of ``trials.csv``: a trial's status and results.

    ``final`` is the metric of the last epoch trained, ``best`` the best over its epochs (at
    ``best_epoch``), ``epochs`` the last epoch with metrics; ``seconds`` the wall time spent on the trial
    over every run of the sweep, ``attempts`` how many runs trained it, ``worker`` the Dask worker of
    the last one, ``reason`` one line saying why it did not finish.
    """

    trial: str
    overrides: str
    status: str = "pending"
    final: float = math.nan
    best: float = math.nan
    best_epoch: int | None = None
    epochs: int = 0
    seconds: float = 0.0
    attempts: int = 0
    worker: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row for JSON: NaN as null."""
        out = dict(self.__dict__)
        for k in ("final", "best", "seconds"):
            out[k] = json_number(out[k])
        return out


def columns(metric: str) -> list[str]:
    return ["trial", "overrides", "status", f"final_{metric}", f"best_{metric}", "best_epoch", "epochs",
            "seconds", "attempts", "worker", "reason"]  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def trials_csv_text(rows: Sequence[TrialRow], metric: str) -> str:
    """``trials.csv``: a header and a line per trial (numbers as Python writes them, NaN as ``nan``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns(metric))
    for r in rows:
        values = (
            r.trial,
            r.overrides,
            r.status,
            r.final,
            r.best,
            r.best_epoch,
            r.epochs,
            round(r.seconds, 3),
        )
        writer.writerow([_cell(v) for v in (*values, r.attempts, r.worker, r.reason)])
    return buf.getvalue()


def read_trials(folder: Path) -> dict[str, TrialRow]:
    """The rows of a sweep folder's ``trials.csv`` by trial name ({} when there is none)."""
    path = Path(folder) / TRIALS_CSV
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        found = list(csv.DictReader(io.StringIO(text, newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(
            f"{path}: cannot read ({e}); delete it to rebuild it from the trial folders"
        ) from None
    rows = {}
    for i, d in enumerate(found, start=2):
        metric = next((c[len("final_") :] for c in d if c and c.startswith("final_")), "")
        try:
            rows[d["trial"]] = TrialRow(
                d["trial"], d.get("overrides") or "", d.get("status") or "pending",
                _float(d.get(f"final_{metric}")), _float(d.get(f"best_{metric}")),
                int(d["best_epoch"]) if d.get("best_epoch") else None, int(d.get("epochs") or 0),
                _float(d.get("seconds"), 0.0), int(d.get("attempts") or 0), d.get("worker") or "",
                d.get("reason") or "",
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: line {i} is not a trial row; delete the file to rebuild it") from None
    return rows


def _float(text: str | None, default: float = math.nan) -> float:
    return float(text) if text not in (None, "") else default


def write_trials(folder: Path, rows: Sequence[TrialRow], metric: str) -> Path:
    """Rewrite ``trials.csv`` whole, atomically (a reader or a crash sees the old table or the new)."""
    return write_atomic(Path(folder) / TRIALS_CSV, trials_csv_text(rows, metric))


def trial_metrics(run_dir: Path, metric: str, mode: str) -> dict[str, Any]:
    """``final``, ``best``, ``best_epoch`` and ``epochs`` of a trial's ``metrics.csv``."""
    if not (Path(run_dir) / METRICS_CSV).is_file():
        return {}
    rows = Run(run_dir).metrics
    if not rows:
        return {}
    value, epoch = best(rows, metric, max if mode == "max" else min)
    return {
        "final": float(rows[-1][metric]),
        "best": value,
        "best_epoch": epoch if math.isfinite(value) else None,
        "epochs": int(rows[-1]["epoch"]),
    }


def epochs_done(run_dir: Path) -> int:
    """The last epoch a run has both a metrics row and a whole checkpoint for (-1: none)."""
    found = find_checkpoints(run_dir)
    if not found or not (Path(run_dir) / METRICS_CSV).is_file():
        return -1
    rows = Run(run_dir).metrics
    return min(found[-1][0], int(rows[-1]["epoch"])) if rows else -1


# ---- the plan: what each trial needs -------------------------------------------------------------------


@dataclass
class Planned:
    """A trial, its row, and what this run does with it: ``new``, ``resume`` or ``skip``."""

    trial: Trial
    row: TrialRow
    action: str
    done: int = -1  # epochs it has (for a resumed trial)


def is_sweep_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / SWEEP_FILE).is_file()


def _check_folder(folder: Path) -> None:
    if folder.exists() and not is_sweep_folder(folder):
        if not folder.is_dir() or (folder / CONFIG).exists() or any(folder.iterdir()):
            raise UserError(
                f"{folder}: exists and is not a sweep folder (no {SWEEP_FILE}); give the sweep another name "
                "or --out"
            )


def _plan_one(source: str, trial: Trial, folder: Path, prev: TrialRow | None) -> Planned:
    """What the trial needs, from its folder (the truth) and its last row."""
    overrides = " ".join(trial.overrides)
    row = replace(prev, overrides=overrides) if prev else TrialRow(trial.name, overrides)
    run_dir = folder / trial.name
    if not (run_dir / CONFIG).is_file():
        gave_up = prev is not None and prev.status == "failed" and prev.attempts > RETRIES
        return Planned(
            trial, row if gave_up else replace(row, status="pending"), "skip" if gave_up else "new"
        )
    _check_same_config(source, trial, run_dir)
    done = epochs_done(run_dir)
    if done >= trial.epochs:
        return Planned(trial, replace(row, status="finished", reason=""), "skip", done)
    if prev is not None and (
        prev.status == "diverged" or (prev.status == "failed" and prev.attempts > RETRIES)
    ):
        return Planned(trial, row, "skip", done)
    return Planned(trial, row, "resume", done)


def _check_same_config(source: str, trial: Trial, run_dir: Path) -> None:
    """A trial folder from an earlier run of the sweep must hold this trial's config (epochs aside)."""
    saved = read_yaml(run_dir / CONFIG)
    try:
        saved = config_from_dict(saved, source=str(run_dir / CONFIG)).resolved
    except UserError:
        pass  # compare it as it was written
    changed = config_changes(saved, trial.config)
    if changed:
        raise UserError(
            f"{source}: trial {trial.name}: {run_dir / CONFIG} holds another config (changed: "
            f"{', '.join(changed[:4])}); delete that folder to run the trial anew, or rename the sweep"
        )


def prepare(source: str | Path | dict, out: str | Path = "runs") -> SweepPlan:
    """Read and check a sweep and every trial's config, and what each trial needs; nothing is written."""
    spec = read_sweep(source)
    trials = plan_trials(spec)
    folder = Path(out) / spec.name
    _check_folder(folder)
    prev = read_trials(folder) if folder.is_dir() else {}
    return SweepPlan(spec, folder, [_plan_one(spec.source, t, folder, prev.get(t.name)) for t in trials])


# ---- running: the worker's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one trial (pickled to it)."""

    name: str
    config: dict[str, Any]
    run_dir: str
    resume: bool
    epochs: int
    metric: str
    mode: str
    stop: str  # the name of the sweep's Dask Event that asks trials to stop


class _StopWatch(Callback):
    """Raises KeyboardInterrupt in the training loop once the sweep's stop event is set (asked every
    STOP_CHECK_SECONDS), so the runner saves the state and raises Interrupted."""

    def __init__(self, name: str) -> None:
        from distributed import Event

        self.event = Event(name)
        self.checked = time.monotonic()

    def stopped(self) -> bool:
        self.checked = time.monotonic()
        return self.event.is_set()

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        if time.monotonic() - self.checked >= STOP_CHECK_SECONDS and self.stopped():
            raise KeyboardInterrupt


def _clear_leftover(run_dir: Path) -> None:
    """A trial folder killed before its config.yaml was written holds nothing: remove it so the trial
    gets its own name again (anything else there is not ours to delete)."""
    if not run_dir.exists():
        return
    left = [p for p in run_dir.rglob("*") if not (p.is_dir() or p.name.endswith(".tmp"))]
    if left or (run_dir / CONFIG).exists():
        raise UserError(f"{run_dir}: exists and is not a run folder of this trial; move it away")
    shutil.rmtree(run_dir)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def run_trial(job: Job) -> dict[str, Any]:
    """Train (or resume) one trial on a worker and report how it ended; never raises for a trial's own
    problems: ``status`` is finished, diverged, failed, interrupted, or pending (stopped before it began)."""
    from cnnbp.api import resume, train
    from cnnbp.core.parallel import cpu_limit
    from cnnbp.core.trainer import Diverged
    from cnnbp.runner import Interrupted

    t0, run_dir = time.perf_counter(), Path(job.run_dir)
    watch = _StopWatch(job.stop)
    if watch.stopped():
        return {"status": "pending", "seconds": 0.0, "worker": _worker_name(), "reason": ""}
    status, reason = "finished", ""
    try:
        # a worker per CPU already: the shards of train.threads run one after the other on this thread
        # (no helper process, no thread), with the same numbers as on several
        with cpu_limit(1):
            if job.resume:
                resume(run_dir, out=run_dir.parent, epochs=job.epochs, callbacks=[watch])
            else:
                _clear_leftover(run_dir)
                train(job.config, out=run_dir.parent, callbacks=[watch])
    except Interrupted as e:  # said within the trial's folder: its own path is the row's trial
        saved = f"; saved checkpoints/{e.checkpoint.name}" if e.checkpoint else ""
        status, reason = "interrupted", f"interrupted in epoch {e.epoch} at step {e.step}{saved}"
    except KeyboardInterrupt:
        status, reason = "interrupted", "stopped"
    except Diverged as e:
        status, reason = "diverged", str(e)
    except UserError as e:
        status, reason = "failed", str(e)
    except Exception as e:  # noqa: BLE001 - a trial's failure is recorded, never fatal to the sweep
        status, reason = "failed", f"{type(e).__name__}: {e}"
    out = {"status": status, "seconds": time.perf_counter() - t0, "worker": _worker_name(),
           "reason": " ".join(reason.split())}  # fmt: skip
    try:
        out.update(trial_metrics(run_dir, job.metric, job.mode))
    except UserError as e:
        out["reason"] = out["reason"] or str(e)
    return out


# ---- running: the client's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class SweepStart:
    """What a sweep is about to do, given to :meth:`SweepCallback.on_start`."""

    folder: Path
    trials: int  # in the sweep
    to_run: int  # new and resumed ones
    resumed: int
    skipped: Counter  # status → count of the trials left as they are
    workers: str  # where they run, in words
    slots: int  # trials that can run at once
    name_width: int  # the longest name of a trial to run
    notes: tuple[str, ...] = ()


class SweepCallback:
    """Receives a sweep's events (every method optional)."""

    def on_start(self, info: SweepStart) -> None:
        """Once the workers are up, before the first trial ends."""

    def on_trial(self, row: TrialRow, counts: Counter, running: int) -> None:
        """After each trial that ran ends: its row, the statuses of this run's trials so far (``done``
        counts them all) and how many are running now."""

    def on_end(self, result: SweepResult) -> None:
        """When the sweep ends (also when it was stopped)."""


@dataclass
class SweepResult:
    """A sweep's trials after a run: ``rows`` in the sweep's order; ``ranked()`` the finished ones by
    the metric's last value; ``exit_code`` 0 when every trial finished, else 1."""

    folder: Path
    name: str
    metric: str
    mode: str
    rows: list[TrialRow]
    ran: int = 0
    seconds: float = 0.0

    def ranked(self) -> list[TrialRow]:
        return rank(self.rows, self.mode)

    @property
    def best(self) -> TrialRow | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in self.rows)

    @property
    def exit_code(self) -> int:
        return 0 if all(r.status == "finished" for r in self.rows) else 1

    def run(self, trial: str) -> Run:
        """The run folder of a trial, as a :class:`cnnbp.Run`."""
        return Run(self.folder / trial)

    def to_dict(self) -> dict[str, Any]:
        """The summary ``cnnbp sweep --json`` prints last."""
        top = self.best
        return {
            "kind": "summary",
            "sweep": self.name,
            "folder": str(self.folder),
            "metric": self.metric,
            "mode": self.mode,
            "trials": len(self.rows),
            **{s: self.counts.get(s, 0) for s in STATUSES},
            "ran": self.ran,
            "seconds": json_number(self.seconds),
            "best": None if top is None else {"trial": top.trial, "final": json_number(top.final)},
        }


def rank(rows: Sequence[TrialRow], mode: str) -> list[TrialRow]:
    """Finished trials with a finite final metric, best first (ties keep the sweep's order)."""
    done = [r for r in rows if r.status == "finished" and math.isfinite(r.final)]
    return sorted(done, key=lambda r: -r.final if mode == "max" else r.final)


class SweepInterrupted(Exception):
    """A sweep stopped by SIGINT/SIGTERM; ``result`` holds every trial's row, the state of the trials
    that were running saved (unless a second signal stopped them at once)."""

    def __init__(self, result: SweepResult, signum: int, at_once: bool) -> None:
        counts = result.counts
        saved = "stopped at once" if at_once else "running trials saved their state"
        super().__init__(
            f"sweep interrupted: {counts.get('finished', 0)} of {len(result.rows)} trials finished; {saved}"
        )
        self.result, self.signum, self.at_once = result, signum, at_once

    @property
    def exit_code(self) -> int:
        return {signal.SIGINT: 130, signal.SIGTERM: 143}.get(self.signum, 130)


class _Stops(StopFlag):
    """The first SIGINT/SIGTERM asks the sweep to stop, the second to stop at once; both are only noted
    here (the waiting loop reads them), never raised into the middle of Dask's calls."""

    def __init__(self) -> None:
        super().__init__()
        self.at_once = False

    def handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            self.at_once = True


def _require_dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise UserError(
            f"dask.distributed: not installed; cnnbp sweep runs trials on Dask: {INSTALL_HINT}"
        ) from None
    return distributed


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own log lines (workers coming and going) off the terminal while the sweep runs."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: of the cluster at ``scheduler``, or of a new local cluster of
    ``workers`` processes (one thread each, BLAS pinned to one thread, on the loopback interface) that
    a Ctrl-C at the terminal does not reach (the sweep stops them itself, after they saved their state)."""
    distributed = _require_dask()
    with ExitStack() as stack:
        stack.enter_context(_quiet_dask())
        if scheduler is not None:
            try:
                client = distributed.Client(scheduler, timeout=15)
            except (OSError, TimeoutError, ValueError) as e:
                raise UserError(f"--scheduler {scheduler}: cannot reach a Dask scheduler ({e})") from None
            stack.callback(client.close)
            yield client
            return
        env = {var: os.environ.get(var, "1") for var in BLAS_VARS}
        for var, value in env.items():  # spawned workers inherit these before they import NumPy
            os.environ.setdefault(var, value)
        with _sigint_ignored():
            try:
                cluster = distributed.LocalCluster(
                    n_workers=workers or default_workers(), threads_per_worker=1, processes=True, env=env,
                    silence_logs=logging.CRITICAL, **LOOPBACK,
                )  # fmt: skip
            except RuntimeError as e:  # a worker process died starting: most often a script re-run by it
                raise UserError(f"the local Dask workers did not start ({e}); {SCRIPT_HINT}") from None
        stack.callback(cluster.close, timeout=10)
        client = distributed.Client(cluster)
        stack.callback(client.close)
        yield client


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes are spawned: they inherit that (POSIX keeps an ignored
    signal ignored across exec), so a terminal's Ctrl-C, sent to the whole process group, leaves them
    to the sweep's orderly stop."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@dataclass
class SweepPlan:
    """A sweep checked and planned (nothing written yet): ``trials`` says what each one needs."""

    spec: SweepSpec
    folder: Path
    trials: list[Planned]

    @property
    def to_run(self) -> list[Planned]:
        return [p for p in self.trials if p.action != "skip"]

    def result(self, ran: int = 0, seconds: float = 0.0) -> SweepResult:
        s = self.spec
        return SweepResult(self.folder, s.name, s.metric, s.mode, [p.row for p in self.trials], ran, seconds)

    def run(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        callbacks: Sequence[SweepCallback] = (),
    ) -> SweepResult:
        """Write ``sweep.yaml`` and ``trials.csv``, run every trial that needs it, return the rows.

        Raises :class:`SweepInterrupted` when stopped by a signal (or KeyboardInterrupt).
        """
        t0 = time.perf_counter()
        with ExitStack() as stack:
            stops = stack.enter_context(_Stops().installed())
            # the workers first: no Dask, or a scheduler out of reach, and nothing is written
            if scheduler is None:  # no more local workers than trials to run
                workers = min(workers or default_workers(), len(self.to_run))
            client = stack.enter_context(dask_client(workers, scheduler)) if self.to_run else None
            self._open(stack)
            if client is not None:
                _Execution(self, client, callbacks, stops).run()
            result = self.result(len(self.to_run), time.perf_counter() - t0)
            for c in callbacks:
                c.on_end(result)
            if stops.signum is not None:
                raise SweepInterrupted(result, stops.signum, stops.at_once)
            return result

    def _open(self, stack: ExitStack) -> None:
        """Create and lock the sweep folder; write ``sweep.yaml`` and the first ``trials.csv``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.folder}: cannot create the sweep folder ({e.strerror or e})") from None
        try:
            stack.enter_context(run_lock(self.folder))
        except UserError:
            raise UserError(f"{self.folder}: another cnnbp sweep is running in this folder") from None
        write_atomic(self.folder / SWEEP_FILE, dump_yaml(self.spec.resolved()))
        self._save()

    def _save(self) -> None:
        write_trials(self.folder, [p.row for p in self.trials], self.spec.metric)

    def job(self, p: Planned, stop: str) -> Job:
        s = self.spec
        run_dir = str((self.folder / p.trial.name).absolute())
        resume = p.action == "resume"
        return Job(p.trial.name, p.trial.config, run_dir, resume, p.trial.epochs, s.metric, s.mode, stop)


class _Execution:
    """The trials of a plan on a Dask client: submitted in the sweep's order, their rows updated and
    ``trials.csv`` rewritten as each one ends; a stop sets the event every trial watches."""

    def __init__(
        self, plan: SweepPlan, client: Any, callbacks: Sequence[SweepCallback], stops: _Stops
    ) -> None:
        self.plan, self.client, self.callbacks, self.stops = plan, client, callbacks, stops
        self.counts: Counter = Counter()
        self.slots = max(1, sum(client.nthreads().values()))

    def start_info(self) -> SweepStart:
        plan, threads = self.plan, self.client.nthreads()
        skipped = Counter(p.row.status for p in plan.trials if p.action == "skip")
        where = f"{len(threads)} Dask worker{'s' * (len(threads) != 1)}"
        cluster = getattr(self.client, "cluster", None)
        where += " (local processes)" if cluster is not None else f" at {self.client.scheduler.address}"
        notes = ()
        if any(n > 1 for n in threads.values()):
            notes = ("some workers run several threads: their trials share one process (start workers with "
                     "--nthreads 1)",)  # fmt: skip
        resumed = sum(p.action == "resume" for p in plan.to_run)
        width = max(len(p.trial.name) for p in plan.to_run)
        return SweepStart(plan.folder, len(plan.trials), len(plan.to_run), resumed, skipped, where,
                          self.slots, width, notes)  # fmt: skip

    def run(self) -> None:
        from distributed import Event, as_completed

        stop = f"cnnbp-sweep-stop-{uuid.uuid4().hex}"
        event = Event(stop, client=self.client)
        todo = self.plan.to_run
        futures = {
            self.client.submit(run_trial, self.plan.job(p, stop), key=f"{p.trial.name}-{uuid.uuid4().hex}",
                               pure=False, priority=len(todo) - i): p
            for i, p in enumerate(todo)
        }  # fmt: skip
        for c in self.callbacks:
            c.on_start(self.start_info())
        waiting = as_completed(futures)
        left = set(futures)
        self._wait(waiting, left, futures, event)
        for fut in left:  # stopped before these returned
            p = futures[fut]
            p.row.status = "interrupted" if (self.plan.folder / p.trial.name / CONFIG).exists() else "pending"
            fut.cancel()
        self.plan._save()

    def _wait(self, waiting: Any, left: set, futures: dict, event: Any) -> None:
        stopping_since = None
        while left:
            try:
                if self.stops.signum is not None and stopping_since is None:
                    event.set()
                    stopping_since = time.monotonic()
                late = stopping_since is not None and time.monotonic() - stopping_since > GRACE_SECONDS
                if self.stops.at_once or late:
                    return
                batch = waiting.next_batch(block=False)
                if not batch:
                    time.sleep(0.05)
                for fut in batch:
                    left.discard(fut)
                    self._ended(futures[fut], self._outcome(fut))
            except KeyboardInterrupt:  # a Ctrl-C where no handler of ours is installed (a notebook)
                if self.stops.signum is None:
                    self.stops.signum = signal.SIGINT
                else:
                    self.stops.at_once = True

    @staticmethod
    def _outcome(fut: Any) -> dict[str, Any]:
        if fut.status == "finished":
            return fut.result()
        if fut.status == "cancelled":
            return {"status": "pending"}
        e = fut.exception()
        return {"status": "failed", "reason": " ".join(f"worker lost: {type(e).__name__}: {e}".split())}

    def _ended(self, p: Planned, outcome: dict[str, Any]) -> None:
        row = p.row
        status = outcome.get("status", "failed")
        row.status, row.reason = status, outcome.get("reason", "")
        for key in ("final", "best", "best_epoch", "epochs", "worker"):
            if key in outcome:
                setattr(row, key, outcome[key])
        if status != "pending":
            row.attempts += 1
            row.seconds += float(outcome.get("seconds", 0.0))
            self.counts[status] += 1
            self.counts["done"] += 1
        self.plan._save()
        if status != "pending":
            running = min(self.slots, len(self.plan.to_run) - self.counts["done"])
            for c in self.callbacks:
                c.on_trial(row, self.counts, running)


def sweep(
    source: str | Path | dict,
    out: str | Path = "runs",
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    callbacks: Sequence[SweepCallback] = (),
) -> SweepResult:
    """Run a sweep (a file, or a dict in its format) into ``<out>/<name>/`` and return its trials.

    ``workers``: processes of a local Dask cluster (default: the cores); ``scheduler``: the address of
    an existing cluster instead (``tcp://HOST:8786``).  Running it again continues it (see the module
    docstring).  Raises :class:`cnnbp.UserError` for a bad sweep (nothing written) and
    :class:`SweepInterrupted` on Ctrl-C.
    """
    return prepare(source, out).run(workers, scheduler, callbacks)


# ---- a sweep folder as data (cnnbp inspect) ---------------------------------------------------------------


def sweep_summary(folder: Path, top: int = 3) -> dict[str, Any]:
    """A sweep folder's trials ranked by its metric, and the metric curves of the best ``top``.

    ``curves`` holds, per best trial, its epochs and the columns of ``metrics.csv`` the view draws.
    """
    folder = Path(folder)
    spec = read_yaml(folder / SWEEP_FILE)
    metric = spec.get("metric") if spec.get("metric") in METRICS else "val_acc"
    mode = spec.get("mode") if spec.get("mode") in ("max", "min") else "max"
    rows = list(read_trials(folder).values())
    ranked = rank(rows, mode)
    other = metric.replace("_acc", "_loss") if metric.endswith("_acc") else metric.replace("_loss", "_acc")
    curves = []
    for r in ranked[:top]:
        try:
            metrics = Run(folder / r.trial).metrics
        except UserError:
            continue
        curves.append({"trial": r.trial, "epoch": [m["epoch"] for m in metrics],
                       metric: [m[metric] for m in metrics], other: [m[other] for m in metrics]})  # fmt: skip
    return {
        "sweep": spec.get("name", folder.name),
        "folder": str(folder),
        "metric": metric,
        "mode": mode,
        "other": other,
        "counts": dict(Counter(r.status for r in rows)),
        "trials": [r.to_dict() for r in rows],
        "ranked": [r.trial for r in ranked],
        "curves": curves,
    }


def summary_json(summary: dict[str, Any]) -> str:
    """The summary as one line of strict JSON (NaN as null, ±inf as strings)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return json_number(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(summary))
