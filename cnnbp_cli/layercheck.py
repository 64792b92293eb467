"""``cnnbp check-layer``: check a user's own layer — its API, its backward pass against finite
differences, and (``like``) its forward and backward against cnnbp's built-in layer of that kind.

The layer is a class in a plugin (``PLUGIN.py:CLASS``; it need not be registered).  Its constructor's
arguments without a default must be given (``fixed``, as ``--set KEY=VALUE``); the others are varied
one at a time from their defaults (:func:`variants`), and each variant is built over a sweep of input
shapes (batch 1 and more, square and not, sizes that strides and windows do not divide: ``SHAPES``).
For every case:

* ``api`` — ``forward`` returns ``output_shape``'s shape and keeps the dtype (float64 and float32),
  ``backward`` leaves ``dy`` alone and fills a gradient for each parameter, shaped and typed like it
  (:func:`cnnbp.core.contract.api_problems`);
* ``∂L/∂x`` and ``∂L/∂<param>`` — against finite differences in float64, by the project's checker
  (:func:`cnnbp.core.gradcheck.gradcheck`, Richardson's method) on the scalar ``L = Σ w ⊙ y`` with
  random weights ``w``; an element whose perturbation crosses a kink the layer declares is a KINK,
  not a failure;
* with ``like``: ``forward``, ``∂L/∂x`` and ``∂L/∂<param>`` against the built-in layer of that kind,
  built with the same arguments and the same weights, element by element (this catches a forward
  pass that is self-consistent but wrong: a true convolution where cross-correlation is meant).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args, get_origin

import numpy as np

from cnnbp.config_schema import show
from cnnbp.core.contract import api_problems
from cnnbp.core.errors import ShapeError
from cnnbp.core.gradcheck import PASS, gradcheck, relative_error
from cnnbp.core.hyper import HyperParam, alternatives, conform, hyper_params
from cnnbp.core.layers import Flatten, Layer
from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential
from cnnbp.core.registry import LAYERS
from cnnbp.errors import UserError
from cnnbp.files import json_number
from cnnbp.plugins import load_plugin
from cnnbp.yamlio import load_yaml_text

__all__ = ["SHAPES", "LayerCheckReport", "check_layer", "variants"]

FAIL = "FAIL"
#: per-sample input shapes and batch sizes the sweep tries (those the layer refuses are left out)
SHAPES: tuple[tuple[tuple[int, ...], int], ...] = (
    ((1, 5, 5), 1),
    ((2, 6, 7), 3),
    ((3, 7, 4), 2),
    ((4,), 1),
    ((7,), 3),
)
#: the largest relative error of a comparison with the built-in layer (float64 / float32)
LIKE_TOL = {"float64": 1e-9, "float32": 1e-4}
RTOL = 1e-6  # of the finite-difference check, as cnnbp gradcheck's default


@dataclass
class Check:
    """One thing checked in one case: its worst element and the values there."""

    check: str  # "api", "∂L/∂x", "∂L/∂W", "forward vs conv", ...
    status: str  # PASS, FAIL, KINK (checked at a kink) or UNCHECKED (some elements could not be)
    max_rel_error: float = 0.0
    worst_index: list[int] = field(default_factory=list)
    value: float = math.nan  # the user's layer's value at the worst element
    expected: float = math.nan  # finite differences' or the built-in's
    problem: str = ""  # for api: what is wrong
    unchecked: int = 0  # elements finite differences could not judge (see cnnbp gradcheck)


@dataclass
class Case:
    """A layer built with ``hyper`` on a batch of ``batch`` samples of ``input_shape``."""

    input_shape: tuple[int, ...]
    batch: int
    hyper: dict[str, Any]
    varied: str  # which argument this case varies from the defaults ("" for none)
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        return FAIL if any(c.status == FAIL for c in self.checks) else PASS


@dataclass
class LayerCheckReport:
    """What :func:`check_layer` found: every case and its checks; ``passed`` when none failed."""

    target: str  # PLUGIN:CLASS as given
    like: str | None
    dtype: str
    fixed: dict[str, Any]
    cases: list[Case]
    refused: list[str]  # argument variants no input shape of the sweep fits

    @property
    def passed(self) -> bool:
        return all(case.status == PASS for case in self.cases)

    @property
    def first_failure(self) -> Case | None:
        return next((c for c in self.cases if c.status == FAIL), None)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (the ``--json`` document)."""
        cases = []
        for case in self.cases:
            checks = []
            for c in case.checks:
                d = asdict(c)
                d.update({k: json_number(d[k]) for k in ("max_rel_error", "value", "expected")})
                checks.append(d)
            cases.append({"input_shape": list(case.input_shape), "batch": case.batch, "hyper": case.hyper,
                          "varied": case.varied, "status": case.status, "checks": checks})  # fmt: skip
        return {
            "target": self.target, "like": self.like, "dtype": self.dtype, "fixed": self.fixed,
            "verdict": PASS if self.passed else FAIL, "cases": cases, "refused": self.refused,
            "counts": {"cases": len(self.cases), "failed": sum(c.status == FAIL for c in self.cases)},
        }  # fmt: skip


# ---- the layer and its arguments ----------------------------------------------------------------------


def resolve(target: str) -> tuple[str, type[Layer]]:
    """``PLUGIN.py:CLASS`` → (the plugin's name, the class); UserError when either is not there."""
    plugin_spec, sep, cls_name = target.rpartition(":")
    if not sep or not plugin_spec or not cls_name:
        raise UserError(f"{target}: expected PLUGIN:CLASS, e.g. my_layers.py:MyConv")
    plugin = load_plugin(plugin_spec)
    cls = getattr(sys.modules.get(plugin.module), cls_name, None)
    if cls is None:
        raise UserError(f"{plugin.path}: defines no class {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise UserError(f"{plugin.path}: {cls_name} is not a subclass of cnnbp.Layer")
    return plugin.path, cls


def fixed_arguments(cls: type[Layer], sets: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` (VALUE read as YAML) for the constructor, each checked against its annotation;
    every argument without a default must be among them."""
    params = {p.name: p for p in hyper_params(cls)}
    fixed: dict[str, Any] = {}
    for text in sets:
        key, sep, value_text = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {text}: expected KEY=VALUE, e.g. filters=2")
        if key not in params:
            raise UserError(
                f"--set {key}: {cls.__name__} takes no argument {key!r} (it takes: {', '.join(params)})"
            )
        try:
            value = load_yaml_text(value_text)
        except Exception as e:  # noqa: BLE001 - any YAML error
            raise UserError(f"--set {text}: VALUE is not valid YAML ({' '.join(str(e).split())})") from None
        try:
            fixed[key] = conform(value, params[key].annotation)
        except ValueError as e:
            raise UserError(f"--set {key}: {e}") from None
    missing = [p.name for p in params.values() if p.required and p.name not in fixed]
    if missing:
        raise UserError(f"{cls.__name__}: {missing[0]} has no default; give it with --set {missing[0]}=VALUE")
    return fixed


def _int_like(p: HyperParam) -> bool:
    return any(kind is int or get_origin(kind) is tuple for kind, _ in alternatives(p.annotation))


def variants(cls: type[Layer], fixed: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(varied argument, arguments)``: the defaults, then each defaulted argument varied alone —
    every choice of a Literal, both of a bool, and for an int (or pair) default n: n + 1 and the pair
    (n + 1, n); values the annotation does not allow are left out."""
    params = [p for p in hyper_params(cls) if p.name not in fixed]
    base = {p.name: p.default for p in params if p.default is not None}
    out = [("", {**fixed, **base})]
    for p in params:
        for value in _candidates(p):
            if value == p.default:
                continue
            try:
                value = conform(value, p.annotation)
            except ValueError:  # a candidate the annotation refuses
                continue
            out.append((p.name, {**fixed, **base, p.name: value}))
    return out


def _candidates(p: HyperParam) -> list[Any]:
    kinds = [kind for kind, _ in alternatives(p.annotation)]
    if any(get_origin(k) is Literal for k in kinds):
        return [c for k in kinds for c in get_args(k)]
    if bool in kinds:
        return [False, True]
    if _int_like(p):
        n = p.default if isinstance(p.default, int) and not isinstance(p.default, bool) else 1
        return [n + 1, (n + 1, n)]
    return []


# ---- one case -------------------------------------------------------------------------------------------


class _Weighted(Loss):
    """``L_x = Σ_j w_xj · y_xj``: a loss whose output delta is the random ``w`` passed as the target."""

    name = "weighted_sum"

    def forward(self, out: np.ndarray, target: np.ndarray) -> np.ndarray:
        self._w = np.asarray(target)
        return (out * self._w).sum(axis=1)

    def backward(self) -> np.ndarray:
        return self._w


def _built(cls: type[Layer], hyper: dict[str, Any], shape: tuple[int, ...], dtype: Any, seed: int) -> Layer:
    """The layer built at ``shape`` with random weights (not its initial ones: zeros hide mistakes)."""
    layer = cls(**hyper, name="under_test")
    layer.build(shape, np.random.default_rng(seed), np.dtype(dtype))
    rng = np.random.default_rng(seed + 1)
    for value in layer.params.values():
        value[...] = rng.uniform(-1.0, 1.0, size=value.shape)
    return layer


def accepts(layer: Layer, shape: tuple[int, ...]) -> bool:
    """Whether the layer takes this per-sample input shape: its ``output_shape`` neither refuses it
    (ShapeError, or any error: a layer for images may simply fail on a vector) nor leaves no output."""
    try:
        out = layer.output_shape(shape)
    except Exception:  # noqa: BLE001 - see above
        return False
    return all(isinstance(s, (int, np.integer)) and s >= 1 for s in out)


def api_check(cls: type[Layer], case: Case, dtype: str) -> Check:
    """The API contract, in float64 and (as the dtype must be kept) float32."""
    for dt in dict.fromkeys((dtype, "float32")):
        layer = _built(cls, case.hyper, case.input_shape, dt, seed=1)
        problems = api_problems(
            layer, case.input_shape, np.dtype(dt), np.random.default_rng(2), batch=case.batch
        )
        if problems:
            return Check("api", FAIL, math.nan, problem=f"{problems[0]} ({dt})")
    return Check("api", PASS, math.nan)


def fd_checks(cls: type[Layer], case: Case) -> list[Check]:
    """∂L/∂x and every ∂L/∂param against finite differences (float64, Richardson)."""
    layer = _built(cls, case.hyper, case.input_shape, np.float64, seed=3)
    net = Sequential([layer, Flatten(name="flat")], case.input_shape)
    net.dtype = np.dtype(np.float64)
    net.layers[1].build(layer.output_shape(case.input_shape), np.random.default_rng(0), np.float64)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((case.batch, *case.input_shape))
    w = rng.standard_normal((case.batch, int(np.prod(layer.output_shape(case.input_shape)))))
    result = gradcheck(net, _Weighted(), x, w, method="richardson", rtol=RTOL, layers=["input", "under_test"],
                       check_all=True)  # fmt: skip
    checks = []
    for row in result.rows:
        if row.tensor == "delta":
            continue
        what = "∂L/∂x" if row.layer == "input" else f"∂L/∂{row.tensor}"
        checks.append(
            Check(what, row.status, row.max_rel_error, list(row.worst_index), row.analytic, row.numeric,
                  unchecked=row.n_unchecked)
        )  # fmt: skip
    return checks


def _compare(what: str, got: np.ndarray, want: np.ndarray, tol: float) -> Check:
    """Element by element, relative to the built-in tensor's scale: the worst element and its values."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return Check(what, FAIL, math.inf, problem=f"shape {got.shape}, the built-in's {want.shape}")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = relative_error(got, want, max(scale, 1e-300))
    if not err.size:
        return Check(what, PASS)
    i = int(np.argmax(err))
    index = [int(k) for k in np.unravel_index(i, err.shape)]
    worst = float(err.reshape(-1)[i])
    status = PASS if worst <= tol else FAIL
    return Check(what, status, worst, index, float(got.reshape(-1)[i]), float(want.reshape(-1)[i]))


def like_checks(cls: type[Layer], case: Case, kind: str, dtype: str) -> list[Check]:
    """Forward, ∂L/∂x and every ∂L/∂param of the user's layer against the built-in ``kind``'s, built with
    the same arguments and weights."""
    mine = _built(cls, case.hyper, case.input_shape, dtype, seed=5)
    try:
        theirs = LAYERS[kind].from_hyper(case.hyper, name="built_in")
        theirs.build(case.input_shape, np.random.default_rng(0), np.dtype(dtype))
    except (ShapeError, TypeError) as e:
        raise UserError(
            f"--like {kind}: the built-in {kind} does not take {show(case.hyper)} ({e})"
        ) from None
    if set(theirs.params) != set(mine.params) or any(
        theirs.params[k].shape != v.shape for k, v in mine.params.items()
    ):
        have = {k: v.shape for k, v in mine.params.items()}
        want = {k: v.shape for k, v in theirs.params.items()}
        raise UserError(f"--like {kind}: the layer's parameters {have} are not the built-in's {want}")
    for key, value in mine.params.items():
        theirs.params[key][...] = value
    rng = np.random.default_rng(6)
    x = rng.standard_normal((case.batch, *case.input_shape)).astype(dtype)
    for layer in (mine, theirs):
        layer.phase = "probe"
    tol = LIKE_TOL[dtype]
    y, y_ref = mine.forward(x.copy()), theirs.forward(x.copy())
    checks = [_compare(f"forward vs {kind}", y, y_ref, tol)]
    if checks[0].problem:
        return checks
    dy = rng.standard_normal(np.shape(y_ref)).astype(dtype)
    checks.append(_compare(f"∂L/∂x vs {kind}", mine.backward(dy.copy()), theirs.backward(dy.copy()), tol))
    for key in theirs.params:
        checks.append(_compare(f"∂L/∂{key} vs {kind}", mine.grads[key], theirs.grads[key], tol))
    return checks


# ---- the sweep ------------------------------------------------------------------------------------------


def check_layer(
    target: str, *, like: str | None = None, sets: list[str] | tuple[str, ...] = (), dtype: str = "float64"
) -> LayerCheckReport:
    """Check the layer class ``target`` (``PLUGIN.py:CLASS``) over the sweep (see the module docstring).

    ``like``: a built-in layer kind to compare with; ``sets``: ``KEY=VALUE`` constructor arguments
    (those without a default are required); ``dtype``: of the API and comparison runs (finite
    differences are always float64).  UserError for a bad target or option.
    """
    if dtype not in LIKE_TOL:
        raise UserError(f"--dtype: expected float64 or float32, got {dtype!r}")
    if like is not None and like not in LAYERS:
        raise UserError(f"--like: no layer kind {like!r}; the kinds are {', '.join(LAYERS)}")
    name, cls = resolve(target)
    fixed = fixed_arguments(cls, list(sets))
    cases, refused = [], []
    for varied, hyper in variants(cls, fixed):
        shapes = _shapes(cls, hyper, name)
        if not shapes:
            refused.append(f"{varied or 'the defaults'}: {show(hyper)}")
        for shape, batch in shapes:
            case = Case(shape, batch, _plain(hyper), varied)
            case.checks.append(api_check(cls, case, dtype))
            if case.checks[0].status == PASS:
                case.checks += fd_checks(cls, case)
                if like is not None:
                    case.checks += like_checks(cls, case, like, dtype)
            cases.append(case)
    if not cases:
        raise UserError(f"{target}: takes none of the sweep's input shapes {[s for s, _ in SHAPES]}")
    return LayerCheckReport(target, like, dtype, _plain(fixed), cases, refused)


def _shapes(cls: type[Layer], hyper: dict[str, Any], name: str) -> list[tuple[tuple[int, ...], int]]:
    """The sweep's input shapes (with their batch sizes) the layer built with ``hyper`` takes."""
    try:
        layer = cls(**hyper, name="under_test")
    except Exception as e:  # noqa: BLE001 - a user's constructor may raise anything
        text = " ".join(str(e).split())
        raise UserError(f"{name}: {cls.__name__}({show(hyper)}) raised {type(e).__name__}: {text}") from None
    return [(s, b) for s, b in SHAPES if accepts(layer, s)]


def _plain(hyper: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hyper.items()}
