"""Finite-difference gradient checking of every parameter, per-sample delta and input gradient.

What is checked, for a network ``net``, a loss and a batch ``(x, y)`` of m samples:

* every parameter tensor θ of every (selected) layer: the analytic ∂L̄/∂θ of the batch-mean
  loss ``L̄ = (1/m) Σ_x L_x`` (``Sequential.gradients``) against finite differences of L̄;
* every layer's per-sample delta ``δ_x = ∂L_x/∂out`` (what ``Sequential.backward`` records):
  the layer's output for sample x is perturbed inside the forward pass and sample x's own
  loss is differenced;
* the per-sample input gradient ``∂L_x/∂x`` (row ``layer="input", tensor="input"``).

Numerical methods (``h`` is relative: ``h = eps·max(1, |v|)`` for an element of value v):

* ``central``:    ``(L(v+h) − L(v−h)) / 2h``, eps = ε^{1/3} ≈ 6.1e-6 (ε = float64 epsilon);
* ``richardson``: ``(4·D(h/2) − D(h)) / 3`` with D the central difference, eps = ε^{1/5} ≈ 7.4e-4
  (the step that balances its O(h⁴) truncation against rounding);
* ``complex``:    ``Im L(v + ih) / h`` with h = 1e-20, the forward run in complex128 — exact to
  rounding, no cancellation; only when every layer and the loss are analytic (holomorphic);
* ``auto``:       ``complex`` when the whole network and loss are analytic, else ``central``.

The step actually taken is the difference of the perturbed values as stored, so the
denominator is exact.

Error.  Element error ``|a − n| / max(|a|, |n|, floor)`` with ``floor = atol_floor·max(1, |L|)``
and L the loss value being differenced (the batch mean for a parameter, sample x's own loss for
its delta or input gradient): a difference quotient's rounding noise is proportional to |L|, so
gradients below the floor are compared absolutely.  Default ``atol_floor`` per method
(``DEFAULT_ATOL_FLOOR``), from the noise measured on the DeepLearnToolbox CNN with MSE and
softmax cross-entropy: central ≈ 6e-11·|L| → 3e-4; richardson ≈ 1.5e-12·|L| → 5e-6; complex
(only the rounding of the analytic gradient itself, ≲ 1e-16 absolute) → 1e-9.  Each keeps the
noise of a correct network ≥ 5× below the default ``rtol`` = 1e-6.  A quotient with other
weights or a smaller step (below) is held to the central floor times the ratio of its rounding
noise ``Σ|w_i|`` to central's: the same margin over its own noise.

Kinks.  A non-differentiable layer (``analytic = False``: ReLU, max and Lp pooling) exposes
``kink_signature()``, the discrete state of its last forward (relu mask, arg-max, zero windows
and signs).  An element whose stencil changes the signature of a layer it reaches (decided from
the signatures, never from the size of an error) is checked at the kink instead:

* the forward and the backward derivative (for every such element of a layer that cannot be held in
  its state, below; for the element a row shows otherwise), each from the loss at ``v ± j·h₁`` (j = 1, 2, 3,
  ``h₁ = ε^{1/4}·max(1, |v|)``; third order with L(v) when the points lie on v's own piece, second
  order from them alone on the other side, whose estimate can only widen the interval below).  The
  points of a side must share one state (equal fingerprints of their signatures); where they do
  not, the step is divided by 4, at most twice;
* where every non-analytic layer reached can be held in its state (``Perturber.frozen``: a layer
  with ``frozen_forward``, as the built-ins have), the central difference of the loss so held: the
  derivative of the piece v's own state selects, which is what backpropagation computes with the
  engine's conventions (relu′(0) = 0, a tie's first maximum).  The analytic value must match it
  (within ``rtol``): KINK, else FAIL.  This decides even where several kinks are crossed at once
  in opposite directions, where the engine's value need not lie between the one-sided derivatives;
* otherwise the analytic value must lie in the interval the one-sided derivatives span (within
  ``rtol``): one element of the subdifferential.  KINK; outside it FAIL when v's own state is one
  side's (a correct value is that side's derivative), else UNCHECKED, as when a side cannot be
  made one piece.

Low smoothness.  A layer that is smooth but not infinitely so at some points (an Lp pool at an
all-zero window, and at a zero input for a p that is not an integer) declares, per input element,
the distance from the nearest such point (``nonsmooth_distance()``).  A difference quotient's
truncation error assumes bounded higher derivatives over its stencil; when the stencil moves such an
input by more than ``ROUGH_RATIO[method]`` of its distance, that element falls back to central
differences with a step small enough (at most ``MAX_SHRINK`` times smaller, with the floor scaled
like the noise), or is UNCHECKED.

Modes.  ``elements`` checks every element (or a sample of each tensor); ``directional`` checks
each tensor along random directions u (Gaussian, scaled by max(1, |v|) per element): the analytic
``Σ_x w_x ⟨∂L_x/∂T_x, u_x⟩`` against the central difference of ``Σ_x w_x L_x`` along u (w_x
Gaussian per direction for a delta or the input; the batch mean for a parameter, the batch sum
where samples are coupled).  A tensor with a failing direction is then checked element by element,
which names the worst element; one with a direction that crossed a kink (the subgradient rules are
per element) on ``DEFAULT_PER_TENSOR`` of its elements, every one if one of those fails.

Speed: see :mod:`cnnbp.core.perturb`.  OpenBLAS's threads spin on the many small matrix products
this makes; on a shared or busy machine ``OPENBLAS_NUM_THREADS=1`` is several times faster.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cnnbp.core.errors import ShapeError
from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential
from cnnbp.core.perturb import Evaluate, Obs, Perturber

__all__ = [
    "DEFAULT_ATOL_FLOOR",
    "DEFAULT_DIRECTIONS",
    "DEFAULT_EPS",
    "FAIL",
    "KINK",
    "METHODS",
    "MODES",
    "PASS",
    "UNCHECKED",
    "ElementDetail",
    "GradcheckResult",
    "Progress",
    "TensorCheck",
    "gradcheck",
    "non_analytic_layers",
    "relative_error",
]

#: Methods accepted by :func:`gradcheck`.
METHODS = ("central", "richardson", "complex", "auto")
#: Modes accepted by :func:`gradcheck`.
MODES = ("elements", "directional")

_EPS64 = float(np.finfo(np.float64).eps)
#: Default relative step of each method (``h = eps·max(1, |v|)``; complex uses h = eps itself), and
#: the first step of the one-sided derivatives at a kink.
DEFAULT_EPS: dict[str, float] = {
    "central": _EPS64 ** (1.0 / 3.0),
    "richardson": _EPS64 ** (1.0 / 5.0),
    "complex": 1e-20,
    "one-sided": _EPS64 ** (1.0 / 4.0),
}
#: Default floor of the relative error, in units of max(1, |loss|) (see the module docstring).
DEFAULT_ATOL_FLOOR: dict[str, float] = {"central": 3e-4, "richardson": 5e-6, "complex": 1e-9}
#: Largest move of an input, in units of its distance from a point of low smoothness, that a
#: method's stencil may make (see the module docstring).
ROUGH_RATIO: dict[str, float] = {"central": 1e-3, "richardson": 0.03, "one-sided": 0.01}
#: Central's step is divided by at most this near a point of low smoothness (else UNCHECKED).
MAX_SHRINK = 64.0
#: One-sided stencils: points per side, step divisions tried, and the factor of each.
ONE_SIDED_POINTS, ONE_SIDED_LEVELS, ONE_SIDED_SHRINK = 3, 3, 4.0
#: Networks with at most this many parameters are checked element by element by default.
CHECK_ALL_MAX_PARAMS = 20_000
#: Elements per tensor in sampling mode when ``per_tensor`` is not given.
DEFAULT_PER_TENSOR = 64
#: Random directions per tensor in the directional mode.
DEFAULT_DIRECTIONS = 16
#: Rough bound on the activation memory of one chunk of stacked perturbed copies.
CHUNK_BYTES = 16 * 2**20

PASS, FAIL, KINK, UNCHECKED = "PASS", "FAIL", "KINK", "UNCHECKED"
#: Progress callback: (items done, items in all) — elements, or directions in the directional mode.
Progress = Callable[[int, int], None]


@dataclass
class ElementDetail:
    """Per-element arrays behind a row, in checked order (flat indices into the tensor; direction
    numbers in the directional mode).  ``numeric`` is the value the analytic one is compared with
    (for a kink, the nearest point of [backward, forward]); ``backward`` / ``forward`` are the
    one-sided derivatives (NaN where none were taken); ``status`` is each element's own."""

    index: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    error: np.ndarray
    kink: np.ndarray  # a signature changed under this element's perturbation
    status: np.ndarray = field(default_factory=lambda: np.array([], dtype="<U9"))
    backward: np.ndarray = field(default_factory=lambda: np.array([]))
    forward: np.ndarray = field(default_factory=lambda: np.array([]))
    rough: np.ndarray = field(default_factory=lambda: np.array([], dtype=bool))


@dataclass
class TensorCheck:
    """One row of the report: one parameter, delta or input-gradient tensor.

    ``status``: FAIL when an element fails, else UNCHECKED when one could not be checked, else
    KINK when one crossed a kink (and was checked there), else PASS.  ``worst_index`` is the
    element with the largest relative error among those that decide the status (the failing ones
    when FAIL, the one-sided ones when KINK, all checked ones otherwise); delta and input indices
    include the sample axis.  ``analytic`` / ``numeric`` are the values there and
    ``max_rel_error`` its error; ``backward`` / ``forward`` its one-sided derivatives when it
    crossed a kink (else NaN).  ``n_fail`` counts failing elements, ``n_kink`` those checked
    one-sided and accepted, ``n_unchecked`` those that could not be checked, ``n_rough`` those
    checked with a narrower central step near a point of low smoothness.

    ``mode`` is ``directional`` for a row checked along ``directions`` random directions
    (``checked`` counts directions, ``worst_index`` is ``(k,)``, direction k).  A tensor one of whose
    directions failed (``directions_failed``) is checked element by element (``fallback`` FAIL), and
    one whose directions crossed a kink (judged element by element only) on a sample of its elements
    (``fallback`` KINK; every element if one of those fails); such rows say ``elements`` with
    ``directions`` > 0.  ``detail`` (an attribute, not a dataclass field) holds every checked item.
    """

    layer: str
    tensor: str
    shape: tuple[int, ...]
    checked: int
    total: int
    max_rel_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float
    status: str
    n_fail: int
    n_kink: int
    n_unchecked: int = 0
    n_rough: int = 0
    backward: float = float("nan")
    forward: float = float("nan")
    mode: str = "elements"
    directions: int = 0
    directions_failed: int = 0
    fallback: str = ""

    def __post_init__(self) -> None:
        # an attribute, not a field: ``dataclasses.asdict`` of a row stays plain values
        self.detail: ElementDetail | None = None


@dataclass
class GradcheckResult:
    """Every row of a gradient check, with the settings it ran with.

    ``method`` is the method actually used (``auto`` resolved); ``cast_from`` names the
    parameter dtype when the network was copied to float64 for the check; ``atol_floor`` is
    the floor used, in units of max(1, |loss|); ``mode`` and ``directions`` as given.
    """

    rows: list[TensorCheck]
    method: str
    eps: float
    samples: int
    seconds: float
    rtol: float
    cast_from: str | None
    atol_floor: float = 0.0
    mode: str = "elements"
    directions: int = 0

    @property
    def passed(self) -> bool:
        """True when no row FAILs (KINK and UNCHECKED rows allowed)."""
        return self.ok()

    @property
    def unchecked(self) -> int:
        """Elements (or directions) no row could check."""
        return sum(r.n_unchecked for r in self.rows)

    def ok(self, strict: bool = False) -> bool:
        """True when no row FAILs (and, if ``strict``, no element is UNCHECKED either)."""
        if any(r.status == FAIL for r in self.rows):
            return False
        return not (strict and self.unchecked)

    def row(self, layer: str, tensor: str) -> TensorCheck:
        """The row of ``layer``'s ``tensor``; KeyError when it was not checked."""
        for r in self.rows:
            if r.layer == layer and r.tensor == tensor:
                return r
        raise KeyError(f"no row for {layer}.{tensor}")


def non_analytic_layers(net: Sequential, loss: Loss, x: np.ndarray | None = None) -> list[str]:
    """Names of the layers (and the loss) complex-step cannot go through, in forward order: those
    that say they are not holomorphic and, given a batch ``x``, those whose forward pass fails on a
    complex input or drops its imaginary part (a user's layer may say nothing and still not take
    complex numbers)."""
    names = [layer.name for layer in net.layers if not getattr(layer, "analytic", True)]
    if x is not None and not names:
        names = _complex_refusers(net, x)
    if not getattr(loss, "analytic", True):
        names.append(getattr(loss, "name", type(loss).__name__))
    return names


def _complex_refusers(net: Sequential, x: np.ndarray) -> list[str]:
    """``[the first layer whose forward pass raises on, or returns reals for, a complex input]`` (in
    the probe phase, on a copy: nothing of ``net`` changes), or ``[]``."""
    a = np.asarray(x, dtype=np.complex128) + 1e-20j
    with np.errstate(all="ignore"):
        for layer in copy.deepcopy(net).layers:
            layer.phase = "probe"
            try:
                a = layer.forward(a)
            except Exception:  # noqa: BLE001 - whatever a user's layer raises on complex numbers
                return [layer.name]
            if not np.iscomplexobj(a):
                return [layer.name]
    return []


def relative_error(a: np.ndarray, n: np.ndarray, floor: float | np.ndarray) -> np.ndarray:
    """``|a − n| / max(|a|, |n|, floor)``: the project's one relative error; 0 where that is 0/0, inf
    where either side is not finite (a NaN or infinite gradient never passes)."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - n)
        denom = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
        err = np.divide(diff, denom, out=np.zeros_like(diff), where=denom > 0)
    return np.where(np.isfinite(a) & np.isfinite(n), err, np.inf)


# ---- lines: the items whose loss is differenced ---------------------------------------------------
@dataclass
class _Line:
    """The items of one tensor's check and how to evaluate the loss along each.

    Item i is an element (``elements``: the evaluator gets flat index ``ids[i]`` and the new value
    ``base[i] + t``) or a direction (the evaluator gets direction ``ids[i]`` and the offset t).
    ``unit`` scales the relative steps, ``scale`` is max(1, |L|) of the loss differenced.
    """

    pert: Perturber
    evaluate: Evaluate
    ids: np.ndarray
    base: np.ndarray
    unit: np.ndarray
    scale: np.ndarray
    chunk: int
    elements: bool = True
    tick: Callable[[int], None] | None = None
    freezable: bool = False  # every non-analytic layer the items reach has a frozen forward
    loss0: np.ndarray | None = None  # the unperturbed loss differenced, per item

    def points(
        self, items: np.ndarray, t: np.ndarray, count: bool = False
    ) -> tuple[np.ndarray, np.ndarray, Obs]:
        """Losses at offsets ``t`` (n, c) of ``items`` (n,): losses and offsets actually taken (n, c),
        and the observations (flat, n·c).  ``count`` reports finished items to ``tick``."""
        n, c = t.shape
        base = self.base[items][:, None]
        values = base + t if self.elements else t
        actual = values - base if self.elements and not np.iscomplexobj(t) else t
        flat_ids, flat_vals = np.repeat(self.ids[items], c), values.reshape(-1)
        losses = np.empty(n * c, dtype=np.complex128 if np.iscomplexobj(t) else np.float64)
        parts: list[Obs] = []
        step = max(c, self.chunk - self.chunk % c)
        for s in range(0, n * c, step):
            lo, obs = self.evaluate(flat_ids[s : s + step], flat_vals[s : s + step])
            losses[s : s + step] = lo
            parts.append(obs)
            if count and self.tick is not None:
                self.tick(len(lo) // c)
        obs = Obs.concat(parts) if parts else Obs.zeros(0)
        return losses.reshape(n, c), actual, obs


def _deriv_weights(t: np.ndarray) -> np.ndarray:
    """Weights w (n, k) with ``p'(0) = Σ_j w_j f(t_j)`` for the polynomial p through (t_j, f_j): the
    derivative at 0 of the Lagrange interpolant on the nodes of each row of ``t`` (n, k)."""
    n, k = t.shape
    w = np.empty_like(t)
    for a in range(k):
        others = [b for b in range(k) if b != a]
        denom = np.prod([t[:, a] - t[:, b] for b in others], axis=0) if others else np.ones(n)
        num = np.zeros(n)
        for m in others:
            num += np.prod([-t[:, b] for b in others if b != m] or [np.ones(n)], axis=0)
        w[:, a] = num / denom
    return w


@dataclass
class _Judged:
    """Per item: the value compared with, error, status and how it was obtained."""

    numeric: np.ndarray
    error: np.ndarray
    status: np.ndarray
    kink: np.ndarray
    backward: np.ndarray
    forward: np.ndarray
    rough: np.ndarray


@dataclass(frozen=True)
class _Settings:
    """The options of one check, validated, with the method resolved."""

    method: str
    eps: float
    rtol: float
    floor: float
    selected: frozenset[str]
    k: int | None  # elements per tensor; None: every one
    rng: np.random.Generator
    mode: str = "elements"
    directions: int = DEFAULT_DIRECTIONS


def _judge(line: _Line, analytic: np.ndarray, s: _Settings, one_sided: bool = True) -> _Judged:
    """Every item of ``line`` checked: the method's stencil, then central near points of low
    smoothness, then one-sided derivatives where a kink was crossed (see the module docstring);
    without ``one_sided`` such items are left UNCHECKED."""
    n = analytic.shape[0]
    items = np.arange(n)
    numeric, kink, rho, h = _stencil(line, items, s.method, s.eps, count=True)
    floor = s.floor * line.scale
    j = _Judged(numeric, relative_error(analytic, numeric, floor), np.full(n, PASS, dtype="<U9"), kink,
                np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool))  # fmt: skip
    if s.method != "complex":
        rough = ~kink & (rho > ROUGH_RATIO[s.method])
        if rough.any():
            _smooth(line, items[rough], analytic[rough], rho[rough], h[rough], s, j)
    j.status[(j.error > s.rtol) & ~j.kink & (j.status != UNCHECKED)] = FAIL
    if j.kink.any() and one_sided:
        _one_sided(line, items[j.kink], analytic[j.kink], s, j)
        _report_sides(line, j)
    elif j.kink.any():
        j.status[j.kink], j.error[j.kink] = UNCHECKED, np.nan
    return j


def _stencil(
    line: _Line, items: np.ndarray, method: str, eps: float, count: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The method's numerical derivative of ``items``; per item also whether a kink was crossed, the
    largest move towards a point of low smoothness, and the step h."""
    unit = line.unit[items]
    n = items.shape[0]
    if method == "complex":
        losses, _, obs = line.points(items, np.full((n, 1), 1j * eps), count)
        return losses[:, 0].imag / eps, obs.kink.reshape(n, -1).any(axis=1), np.zeros(n), np.full(n, eps)
    h = eps * unit
    cols = [h, -h] + ([h / 2, -h / 2] if method == "richardson" else [])
    L, t, obs = line.points(items, np.stack(cols, axis=1), count)
    d1 = (L[:, 0] - L[:, 1]) / (t[:, 0] - t[:, 1])
    if method == "richardson":
        d1 = (4.0 * (L[:, 2] - L[:, 3]) / (t[:, 2] - t[:, 3]) - d1) / 3.0
    c = len(cols)
    return d1, obs.kink.reshape(n, c).any(axis=1), obs.rho.reshape(n, c).max(axis=1), h


def _smooth(
    line: _Line, items: np.ndarray, analytic: np.ndarray, rho: np.ndarray, h: np.ndarray, s: _Settings,
    j: _Judged,
) -> None:  # fmt: skip
    """Central differences for items whose stencil came too near a point of low smoothness: a step at
    which the move stays within ``ROUGH_RATIO["central"]`` of the distance (the move scales with the
    step), at most ``MAX_SHRINK`` times below central's; UNCHECKED where that is not enough."""
    h_central = (s.eps if s.method == "central" else DEFAULT_EPS["central"]) * line.unit[items]
    want = h * ROUGH_RATIO["central"] / rho
    step = np.minimum(h_central, want)
    shrink = DEFAULT_EPS["central"] * line.unit[items] / step
    ok = shrink <= MAX_SHRINK
    j.rough[items] = True
    j.status[items[~ok]] = UNCHECKED
    j.error[items[~ok]] = np.nan
    if not ok.any():
        return
    it, step = items[ok], step[ok]
    L, t, obs = line.points(it, np.stack([step, -step], axis=1))
    numeric = (L[:, 0] - L[:, 1]) / (t[:, 0] - t[:, 1])
    kink = obs.kink.reshape(-1, 2).any(axis=1)
    safe = obs.rho.reshape(-1, 2).max(axis=1) <= 2 * ROUGH_RATIO["central"]
    floor = DEFAULT_ATOL_FLOOR["central"] * np.maximum(1.0, shrink[ok]) * line.scale[it]
    j.numeric[it] = numeric
    j.error[it] = relative_error(analytic[ok], numeric, floor)
    j.kink[it] |= kink
    bad = it[~safe & ~kink]
    j.status[bad], j.error[bad] = UNCHECKED, np.nan


def _one_sided(line: _Line, items: np.ndarray, analytic: np.ndarray, s: _Settings, j: _Judged) -> None:
    """Items whose stencil crossed a kink: decided by the frozen state where every layer reached can be
    held in it, else by the interval of the backward and forward derivatives (see the module
    docstring).  Where the frozen state decides, the one-sided derivatives are only reported: taken
    for the element the row shows (``_report_sides``), not for all."""
    todo = np.ones(items.shape[0], dtype=bool)
    if line.freezable:
        home, ok = _frozen(line, items)
        home_err = relative_error(analytic, home, DEFAULT_ATOL_FLOOR["central"] * line.scale[items])
        at = items[ok]
        j.status[at] = np.where(home_err[ok] <= s.rtol, KINK, FAIL)
        j.numeric[at], j.error[at] = home[ok], home_err[ok]
        todo = ~ok
    if not todo.any():
        return
    items, analytic = items[todo], analytic[todo]
    (back, back_noise, back_sure), (fwd, fwd_noise, fwd_sure) = _sides(line, items, ONE_SIDED_LEVELS)
    lo, hi = np.minimum(back, fwd), np.maximum(back, fwd)
    nearest = np.clip(analytic, lo, hi)
    noise = np.maximum(back_noise, fwd_noise) * DEFAULT_EPS["central"] * line.unit[items]
    floor = DEFAULT_ATOL_FLOOR["central"] * np.maximum(1.0, noise) * line.scale[items]
    err = relative_error(analytic, nearest, floor)
    resolved = np.isfinite(back) & np.isfinite(fwd)
    status = np.where(err <= s.rtol, KINK, np.where(back_sure | fwd_sure, FAIL, UNCHECKED))
    status = np.where(resolved, status, UNCHECKED)
    j.status[items] = status
    j.numeric[items] = np.where(resolved, nearest, np.nan)
    j.error[items] = np.where(status == UNCHECKED, np.nan, err)
    j.backward[items], j.forward[items] = back, fwd


def _sides(line: _Line, items: np.ndarray, levels: int) -> list[tuple[np.ndarray, ...]]:
    """``[_side(backward), _side(forward)]`` of ``items``, with fingerprints on."""
    pert = line.pert
    pert.want_prints = True
    try:
        # the reference forward's loss: it rounds like a perturbed run to ~1e-16·|L|, far below the floor
        if line.loss0 is not None:
            L0 = line.loss0[items]
        else:
            L0 = line.points(items, np.zeros((len(items), 1)))[0][:, 0]
        return [_side(line, items, L0, sign, levels) for sign in (-1.0, 1.0)]
    finally:
        pert.want_prints = False


def _report_sides(line: _Line, j: _Judged) -> None:
    """The one-sided derivatives of the element a row shows (``_worst``), when it crossed a kink and the
    frozen state decided it without them."""
    w = _worst(j.status, j.error)
    if j.kink[w] and np.isnan(j.backward[w]):
        (back, *_), (fwd, *_) = _sides(line, np.array([w]), ONE_SIDED_LEVELS)
        j.backward[w], j.forward[w] = back[0], fwd[0]


def _frozen(line: _Line, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The central difference of the loss with every non-analytic layer held in its reference state
    (``Perturber.frozen``): the derivative backpropagation claims at v, whatever the ties; and where it
    is valid (no kink left to cross, clear of points of low smoothness)."""
    h = DEFAULT_EPS["central"] * line.unit[items]
    line.pert.frozen = True
    try:
        L, t, obs = line.points(items, np.stack([h, -h], axis=1))
    finally:
        line.pert.frozen = False
    ok = ~obs.kink.reshape(-1, 2).any(axis=1) & (obs.rho.reshape(-1, 2).max(axis=1) <= ROUGH_RATIO["central"])
    with np.errstate(invalid="ignore"):
        home = (L[:, 0] - L[:, 1]) / (t[:, 0] - t[:, 1])
    return home, ok & np.isfinite(home)


def _side(line: _Line, items: np.ndarray, L0: np.ndarray, sign: float, levels: int) -> tuple[np.ndarray, ...]:
    """One-sided derivatives of ``items`` towards ``sign``: the derivative (NaN where no step put the
    points on one piece), the noise factor Σ|w| of its weights, and whether it is v's own piece and
    free of points of low smoothness — the side a correct analytic value must match."""
    n = items.shape[0]
    deriv, noise, reliable = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    pending = np.arange(n)
    js = np.arange(1, ONE_SIDED_POINTS + 1, dtype=np.float64)
    for level in range(levels):
        if not pending.size:
            break
        h = DEFAULT_EPS["one-sided"] * line.unit[items[pending]] / ONE_SIDED_SHRINK**level
        L, t, obs = line.points(items[pending], sign * h[:, None] * js)
        prints = obs.print.reshape(-1, ONE_SIDED_POINTS)
        one = np.all(prints == prints[:, :1], axis=1)
        own = ~obs.kink.reshape(-1, ONE_SIDED_POINTS).any(axis=1)
        smooth = obs.rho.reshape(-1, ONE_SIDED_POINTS).max(axis=1) <= ROUGH_RATIO["one-sided"]
        # a first estimate, or a better one: v's own piece clear of points of low smoothness
        take = one & (np.isnan(deriv[pending]) | (own & smooth))
        for on_home in (True, False):
            pick = take & (own == on_home)
            if not pick.any():
                continue
            nodes, values = t[pick], L[pick]
            if on_home:  # v is on this piece: its own loss is a node too
                nodes = np.concatenate([np.zeros((nodes.shape[0], 1)), nodes], axis=1)
                values = np.concatenate([L0[pending[pick], None], values], axis=1)
            w = _deriv_weights(nodes)
            at = pending[pick]
            deriv[at] = (w * values).sum(axis=1)
            noise[at] = np.abs(w).sum(axis=1)
            reliable[at] = on_home & smooth[pick]
        # the other side's piece may be rough: it only widens the interval, a correct value stays in it
        pending = pending[~(one & (~own | smooth))]
    return deriv, noise, reliable


# ---- rows ----------------------------------------------------------------------------------------
def _select(analytic: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Flat indices to check: all of them, or k including the largest |analytic| element."""
    total = analytic.size
    if k is None or k >= total:
        return np.arange(total)
    top = int(np.argmax(np.abs(analytic).reshape(-1)))
    rest = rng.choice(total - 1, size=k - 1, replace=False)
    rest = rest + (rest >= top)  # skip over ``top``
    return np.sort(np.concatenate([[top], rest])).astype(np.intp)


def _status(st: np.ndarray) -> str:
    """A row's status from its items': FAIL, else UNCHECKED, else KINK, else PASS."""
    for status in (FAIL, UNCHECKED, KINK):
        if (st == status).any():
            return status
    return PASS


def _worst(st: np.ndarray, error: np.ndarray) -> int:
    """The item a row shows: the largest error among the failing items when it FAILs, among the KINK
    items when it is KINK, among the checked items otherwise (an unchecked one if none was)."""
    status = _status(st)
    pool = st == FAIL if status == FAIL else st == KINK if status == KINK else st != UNCHECKED
    if not pool.any():
        pool = st == UNCHECKED
    err = np.where(np.isnan(error), -1.0, error)
    return int(np.argmax(np.where(pool, err, -2.0)))


def _row(
    layer: str, tensor: str, shape: tuple[int, ...], idx: np.ndarray, a: np.ndarray, j: _Judged,
    index_of: Callable[[int], tuple[int, ...]],
) -> TensorCheck:  # fmt: skip
    """Judge one tensor's checked items: status, worst item, counts."""
    st = j.status
    fail, kink, unchecked = st == FAIL, st == KINK, st == UNCHECKED
    status = _status(st)
    w = _worst(st, j.error)
    row = TensorCheck(
        layer=layer,
        tensor=tensor,
        shape=tuple(int(s) for s in shape),
        checked=int(idx.shape[0]),
        total=int(np.prod(shape, dtype=np.int64)),
        max_rel_error=float(j.error[w]),
        worst_index=index_of(int(idx[w])),
        analytic=float(a[w]),
        numeric=float(j.numeric[w]),
        status=status,
        n_fail=int(fail.sum()),
        n_kink=int(kink.sum()),
        n_unchecked=int(unchecked.sum()),
        n_rough=int(j.rough.sum()),
        backward=float(j.backward[w]),
        forward=float(j.forward[w]),
    )
    row.detail = ElementDetail(idx, a, j.numeric, j.error, j.kink, st, j.backward, j.forward, j.rough)
    return row


class _Rows:
    """The rows of one check: the analytic gradients once, then each tensor against finite differences."""

    def __init__(
        self, net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, s: _Settings, local: bool,
        progress: Progress | None,
    ) -> None:  # fmt: skip
        self.net, self.s = net, s
        self.pert = Perturber(net, loss, x, y, local=local)
        self.losses = np.asarray(loss.forward(self.pert.acts[-1], y)).real.astype(np.float64)
        self.sample_loss = np.abs(self.losses)
        # analytic: ∂(mean L)/∂θ, per-sample deltas at every layer's output, per-sample ∂L_x/∂x
        self.deltas: dict[str, np.ndarray] = {}
        net.gradients(
            x, y, loss, record=lambda name, d: self.deltas.__setitem__(name, np.array(d, copy=True))
        )
        self.grads = {l.name: {key: np.array(g, copy=True) for key, g in l.grads.items()} for l in net.layers}
        first = net.layers[0]
        self.dx = np.array(first.backward(self.deltas[first.name]), copy=True)
        self.itemsize = 16 if s.method == "complex" else 8
        self.copies = {"central": 2, "richardson": 4, "complex": 1}[s.method]
        self.mean_scale = max(1.0, abs(float(np.mean(self.sample_loss))))
        self.progress = progress
        self.done = 0
        self.total = 0

    # ---- what is checked --------------------------------------------------------------------
    def tensors(self) -> list[tuple[str, str, int, str | None, np.ndarray]]:
        """``(layer, tensor, layer index or start, parameter key or None, analytic)`` in report order: the
        input row first, then per layer (forward order) its parameter rows and its delta row."""
        out: list[tuple[str, str, int, str | None, np.ndarray]] = []
        if "input" in self.s.selected:
            out.append(("input", "input", 0, None, self.dx))
        for l, layer in enumerate(self.net.layers):
            if layer.name not in self.s.selected:
                continue
            for key, param in layer.params.items():
                if param.size:
                    out.append((layer.name, key, l, key, self.grads[layer.name][key]))
            out.append((layer.name, "delta", l + 1, None, self.deltas[layer.name]))
        return out

    def check(self) -> list[TensorCheck]:
        """Every selected tensor, element by element or along directions."""
        todo = self.tensors()
        rows: list[TensorCheck] = []
        if self.s.mode == "directional":
            self.total = len(todo) * self.s.directions
            for name, tensor, at, key, analytic in todo:
                rows.append(self.directional(name, tensor, at, key, analytic))
            return rows
        picks = [_select(analytic, self.s.k, self.s.rng) for *_, analytic in todo]
        self.total = sum(p.shape[0] for p in picks)
        for (name, tensor, at, key, analytic), idx in zip(todo, picks, strict=True):
            rows.append(self.elements(name, tensor, at, key, analytic, idx))
        return rows

    def tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)

    def chunk(self, per_copy: int) -> int:
        """Perturbed copies per evaluation: about ``CHUNK_BYTES`` of activations, whole stencils."""
        n = max(1, CHUNK_BYTES // max(1, per_copy))
        return max(self.copies, n - n % self.copies)

    # ---- element by element ---------------------------------------------------------------
    def elements(
        self, name: str, tensor: str, at: int, key: str | None, analytic: np.ndarray, idx: np.ndarray
    ) -> TensorCheck:
        """One tensor, the elements ``idx``: a parameter (``key``) of layer ``at`` or the activation
        entering layer ``at`` (a delta, or the input)."""
        line = self.param_line(at, key, idx) if key is not None else self.activation_line(at, analytic, idx)
        a = analytic.reshape(-1)[idx].real.astype(np.float64)
        judged = _judge(line, a, self.s)
        shape = analytic.shape
        return _row(name, tensor, shape, idx, a, judged, lambda i: _unravel(i, shape))

    def activation_line(self, start: int, analytic: np.ndarray, idx: np.ndarray) -> _Line:
        """A per-sample delta (or the input gradient): the activation entering layer ``start`` perturbed,
        the sample's own loss differenced (the batch's sum when later layers couple the samples)."""
        pert = self.pert
        plan = pert.plan(start)
        per_copy = (
            pert.plan_bytes(plan, self.itemsize) if plan.steps else pert.copy_bytes(start, 1, self.itemsize)
        )
        v = pert.acts[start].reshape(-1)[idx].astype(np.float64)
        if pert.coupled(start):
            scale = np.full(idx.shape[0], max(1.0, float(np.sum(self.sample_loss))))
            loss0 = np.full(idx.shape[0], float(np.sum(self.losses)))
        else:
            scale = np.maximum(1.0, self.sample_loss[idx // (analytic.size // pert.m)])
            loss0 = self.losses[idx // (analytic.size // pert.m)]
        return _Line(pert, pert.activation_evaluator(start), idx, v, np.maximum(1.0, np.abs(v)), scale,
                     self.chunk(per_copy), tick=self.tick, freezable=pert.can_freeze(start),
                     loss0=loss0)  # fmt: skip

    def param_line(self, l: int, key: str, idx: np.ndarray) -> _Line:
        """Parameter ``key`` of layer ``l``: the batch-mean loss differenced."""
        pert, layer = self.pert, self.net.layers[l]
        v = layer.params[key].reshape(-1)[idx].astype(np.float64)
        per_copy = pert.copy_bytes(l, pert.m, self.itemsize)
        scale = np.full(idx.shape[0], self.mean_scale)
        return _Line(pert, pert.param_evaluator(l, key), idx, v, np.maximum(1.0, np.abs(v)), scale,
                     self.chunk(per_copy), tick=self.tick, freezable=pert.can_freeze(l),
                     loss0=np.full(idx.shape[0], float(np.mean(self.losses))))  # fmt: skip

    # ---- along directions ----------------------------------------------------------------------
    def directional(
        self, name: str, tensor: str, at: int, key: str | None, analytic: np.ndarray
    ) -> TensorCheck:
        """One tensor along ``directions`` random directions; element by element if one fails."""
        k, pert, rng = self.s.directions, self.pert, self.s.rng
        value = self.net.layers[at].params[key] if key is not None else pert.acts[at]
        z = rng.standard_normal((k, *value.shape))
        z /= np.sqrt(np.mean(z.reshape(k, -1) ** 2, axis=1)).reshape((k,) + (1,) * value.ndim)
        dirs = z * np.maximum(1.0, np.abs(value))
        g = analytic.real.astype(np.float64)
        if key is not None:
            a = (dirs * g).reshape(k, -1).sum(axis=1)
            evaluate = pert.direction_evaluator(at, key, dirs)
            per_copy, scale = pert.copy_bytes(at, pert.m, self.itemsize), np.full(k, self.mean_scale)
        else:
            m = pert.m
            w = np.ones((k, m)) if pert.coupled(at) else rng.standard_normal((k, m))
            a = ((dirs * g).reshape(k, m, -1).sum(axis=2) * w).sum(axis=1)
            evaluate = pert.batch_evaluator(at, dirs, w)
            per_copy = pert.copy_bytes(at, m, self.itemsize)
            scale = np.maximum(1.0, (np.abs(w) * self.sample_loss).sum(axis=1))
        line = _Line(pert, evaluate, np.arange(k), np.zeros(k), np.ones(k), scale, self.chunk(per_copy),
                     elements=False, tick=self.tick)  # fmt: skip
        judged = _judge(line, a, self.s, one_sided=False)
        row = _row(name, tensor, value.shape if key is not None else analytic.shape, np.arange(k), a, judged,
                   lambda i: (i,))  # fmt: skip
        failed = int(np.sum(judged.status == FAIL))
        fallback = FAIL if failed else KINK if row.n_unchecked else ""
        if fallback == KINK:  # the subgradient rule is per element: a sample of them, all if one fails
            idx = _select(analytic, DEFAULT_PER_TENSOR, self.s.rng)
            self.total += idx.shape[0]
            row = self.elements(name, tensor, at, key, analytic, idx)
            fallback = FAIL if row.status == FAIL and idx.shape[0] < analytic.size else KINK
        if fallback == FAIL:  # every element, to name the worst
            idx = np.arange(analytic.size)
            self.total += idx.shape[0]
            row = self.elements(name, tensor, at, key, analytic, idx)
        if not fallback:
            row.mode = "directional"
        row.directions, row.directions_failed, row.fallback = k, failed, fallback
        return row


def _unravel(i: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.unravel_index(i, shape))


# ---- the entry point ---------------------------------------------------------------------------
def gradcheck(
    net: Sequential,
    loss: Loss,
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "central",
    eps: float | None = None,
    rtol: float = 1e-6,
    layers: Sequence[str] | None = None,
    per_tensor: int | None = None,
    check_all: bool | None = None,
    rng: np.random.Generator | None = None,
    atol_floor: float | None = None,
    mode: str = "elements",
    directions: int | None = None,
    progress: Progress | None = None,
    _local: bool = True,
) -> GradcheckResult:
    """Check every parameter gradient, per-sample delta and input gradient by finite differences.

    Args:
        net: the network; float32 parameters are checked on a float64 deep copy
            (``cast_from`` records it).  Parameters are restored bit for bit afterwards; layer
            caches and ``grads`` are left as after ``net.gradients(x, y, loss)``.
        loss: the loss whose batch mean (parameters) or per-sample value (deltas, input) is differenced.
        x, y: the batch (cast to float64) and its targets.
        method: ``central``, ``richardson``, ``complex`` or ``auto`` (see the module docstring).
            ``complex`` raises ValueError naming the non-analytic layers if there are any.
        eps: relative step (``h = eps·max(1, |v|)``); the complex step h itself.  Defaults:
            ε^{1/3} (central), ε^{1/5} (richardson), 1e-20 (complex).
        rtol: an element FAILs when its relative error exceeds this (for a kink: its distance from
            the one-sided interval).
        layers: only these layers' parameters and deltas (``"input"`` selects the input row);
            None checks everything.  Unknown names raise ValueError.
        per_tensor: in sampling mode, the number of elements per tensor (default 64), chosen with
            ``rng`` and always including the largest-|analytic| element.
        check_all: True checks every element, False samples; None samples only when
            ``per_tensor`` is given or the network has more than 20,000 parameters.
        rng: generator for the sampling and the directions (default ``default_rng(0)``).
        atol_floor: the error of an element is ``|a − n| / max(|a|, |n|, atol_floor·max(1, |L|))``
            with L the loss being differenced: elements below the floor are compared
            absolutely.  Defaults (``DEFAULT_ATOL_FLOOR``): 3e-4 central, 5e-6 richardson,
            1e-9 complex — where each method's rounding noise (≈ 6e-11·|L|, 1.5e-12·|L|,
            ≲ 1e-16) stays ≥ 5× below rtol = 1e-6.  Smaller floors make central report noise
            on small gradients as FAILs.
        mode: ``elements`` or ``directional``: each tensor along ``directions`` random directions
            (default 16); element by element where one fails, on ``DEFAULT_PER_TENSOR`` elements
            where one crossed a kink (``per_tensor`` and ``check_all`` unused).
        progress: called as ``progress(done, total)`` while checking (elements, or directions and
            the elements of tensors checked element by element after a failed direction).
        _local: False disables the crop-based evaluation of single-element perturbations (a
            switch for tests and benchmarks; the numbers agree to rounding).

    Returns:
        A GradcheckResult: the input row first, then per layer (forward order) its parameter
        rows and its delta row.
    """
    t0 = time.perf_counter()
    x, y = _batch(net, x, y)
    s = _settings(net, loss, x, method, eps, rtol, layers, per_tensor, check_all, rng, atol_floor, mode,
                  directions)  # fmt: skip
    dtypes = {p.dtype for layer in net.layers for p in layer.params.values()}
    cast_from = None
    if dtypes - {np.dtype(np.float64)}:
        cast_from = ",".join(sorted(str(d) for d in dtypes - {np.dtype(np.float64)}))
        net = copy.deepcopy(net).cast(np.float64)
    with net.in_phase("probe"):  # deterministic, batch statistics, no running statistics updated
        try:
            rows = _Rows(net, loss, x, y, s, _local, progress).check()
        finally:
            net.gradients(x, y, loss)  # leave caches and grads as a plain gradients() call would
    return GradcheckResult(
        rows=rows,
        method=s.method,
        eps=s.eps,
        samples=int(x.shape[0]),
        seconds=time.perf_counter() - t0,
        rtol=s.rtol,
        cast_from=cast_from,
        atol_floor=s.floor,
        mode=s.mode,
        directions=s.directions if s.mode == "directional" else 0,
    )


def _settings(
    net: Sequential, loss: Loss, x: np.ndarray, method: str, eps: float | None, rtol: float,
    layers: Sequence[str] | None, per_tensor: int | None, check_all: bool | None,
    rng: np.random.Generator | None, atol_floor: float | None, mode: str, directions: int | None,
) -> _Settings:  # fmt: skip
    """The options checked (ValueError naming the bad one) and resolved (auto → a method, defaults)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if directions is not None and directions < 1:
        raise ValueError(f"directions must be ≥ 1, got {directions!r}")
    if not net.layers:
        raise ValueError("the network has no layers")
    bad = non_analytic_layers(net, loss, x) if method in ("complex", "auto") else []
    if method == "complex" and bad:
        raise ValueError(
            "complex-step needs every layer and the loss to be analytic and to compute in complex "
            "numbers; these do not: " + ", ".join(bad)
        )
    if method == "auto":
        method = "central" if bad else "complex"
    eps = DEFAULT_EPS[method] if eps is None else eps
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if per_tensor is not None and per_tensor < 1:
        raise ValueError(f"per_tensor must be ≥ 1, got {per_tensor!r}")
    names = [l.name for l in net.layers]
    unknown = [n for n in layers or () if n not in names and n != "input"]
    if unknown:
        raise ValueError(f"unknown layers {', '.join(unknown)}; layers: {', '.join(names)}")
    if check_all is None:
        check_all = per_tensor is None and net.n_params <= CHECK_ALL_MAX_PARAMS
    return _Settings(
        method=method,
        eps=float(eps),
        rtol=float(rtol),
        floor=DEFAULT_ATOL_FLOOR[method] if atol_floor is None else float(atol_floor),
        selected=frozenset(names) | {"input"} if layers is None else frozenset(layers),
        k=None if check_all else (per_tensor or DEFAULT_PER_TENSOR),
        rng=rng if rng is not None else np.random.default_rng(0),
        mode=mode,
        directions=DEFAULT_DIRECTIONS if directions is None else int(directions),
    )


def _batch(net: Sequential, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The batch in float64 (targets too, when they are vectors); ShapeError or ValueError for a bad one."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[1:] != net.input_shape:
        raise ShapeError("input", f"expected samples of shape {net.input_shape}, got {x.shape[1:]}")
    y = np.asarray(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    return x.astype(np.float64), y.astype(np.float64) if np.issubdtype(y.dtype, np.floating) else y
