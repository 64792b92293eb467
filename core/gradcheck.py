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
noise of a correct network ≥ 5× below the default ``rtol`` = 1e-6.

Kinks.  A non-differentiable layer (``analytic = False``: ReLU, max and Lp pooling) exposes
``kink_signature()``, the discrete state of its last forward (relu mask, arg-max, zero windows
and signs).  For every perturbed evaluation the signatures of the non-analytic layers the
perturbation reaches are compared with those at the unperturbed point; an element whose
mismatch exceeds ``rtol`` *and* whose perturbation changed a signature is a KINK, not a FAIL.
The decision never looks at the size of the error.

Speed.  Perturbing a parameter of layer l, or the output of layer l, changes only layers l
(resp. l+1) onwards: the activations entering that layer are cached and only the suffix is
re-run.  Many perturbations are evaluated at once by stacking perturbed copies along the batch
axis (a copy is one sample for deltas and input gradients, the whole batch for a parameter,
whose own layer's forward is called once per perturbation with the other copies batched
downstream); the loss's per-sample values give every perturbed loss of a chunk in one run.
A single perturbed element of an image changes only a box of each later feature map, so
through element-wise layers, tied-bias convolutions, max/mean/Lp pooling and subsampling only
that box is recomputed — by the layer's own ``forward`` on a crop of the cached input — and
whole maps are rebuilt at the first other layer (flatten, dense, untied conv).
Chunks are sized to keep roughly ``CHUNK_BYTES`` of activations alive.

OpenBLAS's threads spin on the many small matrix products this makes; on a shared or busy
machine ``OPENBLAS_NUM_THREADS=1`` is several times faster.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnbp.core.errors import ShapeError
from cnnbp.core.layers.base import Layer
from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential

__all__ = [
    "DEFAULT_ATOL_FLOOR",
    "DEFAULT_EPS",
    "FAIL",
    "KINK",
    "METHODS",
    "PASS",
    "ElementDetail",
    "GradcheckResult",
    "TensorCheck",
    "gradcheck",
    "non_analytic_layers",
    "relative_error",
]

#: Methods accepted by :func:`gradcheck`.
METHODS = ("central", "richardson", "complex", "auto")

_EPS64 = float(np.finfo(np.float64).eps)
#: Default relative step of each method (``h = eps·max(1, |v|)``; complex uses h = eps itself).
DEFAULT_EPS: dict[str, float] = {
    "central": _EPS64 ** (1.0 / 3.0),
    "richardson": _EPS64 ** (1.0 / 5.0),
    "complex": 1e-20,
}
#: Default floor of the relative error, in units of max(1, |loss|) (see the module docstring).
DEFAULT_ATOL_FLOOR: dict[str, float] = {"central": 3e-4, "richardson": 5e-6, "complex": 1e-9}
#: Networks with at most this many parameters are checked element by element by default.
CHECK_ALL_MAX_PARAMS = 20_000
#: Elements per tensor in sampling mode when ``per_tensor`` is not given.
DEFAULT_PER_TENSOR = 64
#: Rough bound on the activation memory of one chunk of stacked perturbed copies.
CHUNK_BYTES = 16 * 2**20

PASS, FAIL, KINK = "PASS", "FAIL", "KINK"


@dataclass
class ElementDetail:
    """Per-element arrays behind a row, in checked order (flat indices into the tensor)."""

    index: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    error: np.ndarray
    kink: np.ndarray  # a signature changed under this element's perturbation


@dataclass
class TensorCheck:
    """One row of the report: one parameter, delta or input-gradient tensor.

    ``worst_index`` is the element with the largest relative error among those that decide
    the status (the genuine mismatches when FAIL, the kink mismatches when KINK, all when
    PASS); delta and input indices include the sample axis.  ``analytic`` / ``numeric`` are
    the values there and ``max_rel_error`` its error.  ``n_fail`` counts elements over
    ``rtol`` with no kink, ``n_kink`` those over ``rtol`` whose perturbation crossed a kink.
    ``detail`` (an attribute, not a dataclass field) holds every checked element.
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

    def __post_init__(self) -> None:
        # an attribute, not a field: ``dataclasses.asdict`` of a row stays plain values
        self.detail: ElementDetail | None = None


@dataclass
class GradcheckResult:
    """Every row of a gradient check, with the settings it ran with.

    ``method`` is the method actually used (``auto`` resolved); ``cast_from`` names the
    parameter dtype when the network was copied to float64 for the check; ``atol_floor`` is
    the floor used, in units of max(1, |loss|).
    """

    rows: list[TensorCheck]
    method: str
    eps: float
    samples: int
    seconds: float
    rtol: float
    cast_from: str | None
    atol_floor: float = 0.0

    @property
    def passed(self) -> bool:
        """True when no row FAILs (KINK rows allowed)."""
        return self.ok()

    def ok(self, strict: bool = False) -> bool:
        """True when no row FAILs (and, if ``strict``, none is a KINK either)."""
        bad = {FAIL, KINK} if strict else {FAIL}
        return not any(r.status in bad for r in self.rows)

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


# ---- the suffix evaluator -----------------------------------------------------------------
_Evaluate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Step:
    """Geometry of one layer on the local path: where a dirty box of the input goes in the output.

    For a windowed layer (kernel k, stride s, padding p) a dirty input box of ``ib`` rows can
    change at most ``ob = ⌊(ib + k − 2) / s⌋ + 1`` output rows; those are computed by running
    the layer itself on a crop of ``crop`` rows of the reference input (padded by ``q0·s``
    above, ``q0 = ⌈p / s⌉``, so the layer's own zero padding of the crop never reaches a
    window that is used) and keeping outputs ``q0 … q0 + ob − 1``.
    """

    j: int
    window: bool
    k: tuple[int, int] = (1, 1)
    s: tuple[int, int] = (1, 1)
    p: tuple[int, int] = (0, 0)
    q0: tuple[int, int] = (0, 0)
    ob: tuple[int, int] = (1, 1)
    crop: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class _LocalPlan:
    """The layers through which single-element perturbations of ``acts[start]`` are propagated locally."""

    start: int
    steps: tuple[_Step, ...]
    stop: int  # the first layer run on whole (materialised) maps


def _ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -((-a) // b)


def _box_view(a: np.ndarray, n: np.ndarray, y0: np.ndarray, x0: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """``a[n_i, :, y0_i : y0_i + bh, x0_i : x0_i + bw]`` for every i, stacked: (B, C, bh, bw)."""
    return sliding_window_view(a, (bh, bw), axis=(2, 3))[n, :, y0, x0]


def _paste(target: np.ndarray, box: np.ndarray, ty: np.ndarray, tx: np.ndarray) -> None:
    """Write ``box[i]`` into ``target[i]`` at offset (ty_i, tx_i), dropping what falls outside."""
    b, _, bh, bw = box.shape
    ys = ty[:, None] + np.arange(bh)
    xs = tx[:, None] + np.arange(bw)
    h, w = target.shape[2:]
    if ys.min() >= 0 and ys.max() < h and xs.min() >= 0 and xs.max() < w:
        target[np.arange(b)[:, None, None], :, ys[:, :, None], xs[:, None, :]] = box.transpose(0, 2, 3, 1)
        return
    ok = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    i, r, c = np.nonzero(ok)
    target[i, :, ys[i, r], xs[i, c]] = box[i, :, r, c]


class _Checker:
    """Cached unperturbed activations and signatures, and batched evaluation of perturbed suffixes."""

    def __init__(self, net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, local: bool = True) -> None:
        self.net, self.loss, self.x, self.y = net, loss, x, y
        self.layers: list[Layer] = net.layers
        self.m = x.shape[0]
        self.local = local
        self.kinky = [not getattr(l, "analytic", True) and hasattr(l, "kink_signature") for l in self.layers]
        # unperturbed forward: acts[j] enters layer j, acts[-1] is the network output
        self.acts: list[np.ndarray] = [x]
        self.ref_sigs: list[np.ndarray | None] = []
        a = x
        for layer, kinky in zip(self.layers, self.kinky, strict=True):
            a = layer.forward(a)
            self.acts.append(a)
            self.ref_sigs.append(np.array(layer.kink_signature(), copy=True) if kinky else None)
        self._plans: dict[int, _LocalPlan] = {}
        self._padded: dict[int, np.ndarray] = {}

    # ---- running ------------------------------------------------------------------------
    def run(self, start: int, a: np.ndarray, rows: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
        """Run layers[start:] on a stack of perturbed copies; the output and per-copy kink flags.

        Copy i is rows ``i·group … (i+1)·group − 1`` of ``a``; ``rows[r]`` is the sample whose
        unperturbed state row r is compared with.  A signature with the batch as its leading
        axis is compared row by row; any other layout by bisection (see ``_bisect_kinks``).
        """
        copies = a.shape[0] // group
        if copies > 1 and self.coupled(start):  # copies must not share batch statistics: one at a time
            parts = [self.run(start, a[i * group : (i + 1) * group], rows[i * group : (i + 1) * group], group)
                     for i in range(copies)]  # fmt: skip
            return np.concatenate([o for o, _ in parts]), np.concatenate([k for _, k in parts])
        kinks = np.zeros(copies, dtype=bool)
        for j in range(start, len(self.layers)):
            inp = a
            a = self.layers[j].forward(inp)
            if self.kinky[j]:
                sig = np.asarray(self.layers[j].kink_signature())
                ref = self.ref_sigs[j]
                if _splittable(sig, a.shape[0]) and ref is not None and _splittable(ref, self.m):
                    kinks |= np.any(sig.reshape(copies, -1) != ref[rows].reshape(copies, -1), axis=1)
                else:
                    ref_of = partial(_take_rows, self.acts[j], rows)
                    kinks |= self._bisect_kinks(self.layers[j], inp, ref_of, group, np.array(sig, copy=True))
        return a, kinks

    @staticmethod
    def _bisect_kinks(
        layer: Layer, inp: np.ndarray, ref_of: Callable[[slice], np.ndarray], group: int, sig: np.ndarray
    ) -> np.ndarray:
        """Per-copy kink flags of a layer whose signature's layout mixes the batch.

        ``sig`` is the layer's signature for ``inp``; ``ref_of(rows)`` gives the unperturbed
        input for those rows.  Whole runs of copies are compared with the signature of the same
        rows unperturbed; a run that differs is halved until single copies remain, so the cost
        is one extra forward of this layer per chunk when nothing changed.
        """
        flags = np.zeros(inp.shape[0] // group, dtype=bool)
        todo: list[tuple[int, int, np.ndarray | None]] = [(0, flags.shape[0], sig)]
        while todo:
            lo, hi, s = todo.pop()
            span = slice(lo * group, hi * group)
            if s is None:
                layer.forward(inp[span])
                s = np.array(layer.kink_signature(), copy=True)
            layer.forward(ref_of(span))
            if not _Checker._changed(s, np.asarray(layer.kink_signature())):
                continue
            if hi - lo == 1:
                flags[lo] = True
            else:
                mid = (lo + hi) // 2
                todo += [(lo, mid, None), (mid, hi, None)]
        return flags

    def copy_bytes(self, start: int, rows: int, itemsize: int) -> int:
        """Rough bytes of activations (and im2col buffers) one copy of ``rows`` samples needs."""
        per = self.acts[start][0].size
        for j in range(start, len(self.layers)):
            cin, cout = self.acts[j], self.acts[j + 1]
            per += 2 * (cin[0].size + cout[0].size)
            per += self.layers[j].scratch_size(cin.shape[1:])
        return per * rows * itemsize

    # ---- local propagation of single-element perturbations -------------------------------------
    def coupled(self, start: int) -> bool:
        """Whether a layer from ``start`` on mixes the samples of a batch (batchnorm): a change to one
        sample there changes every sample's loss."""
        return any(layer.couples_batch for layer in self.layers[start:])

    def plan(self, start: int) -> _LocalPlan:
        """Which layers after ``start`` can be run on a box around the perturbed element."""
        if start in self._plans:
            return self._plans[start]
        steps: list[_Step] = []
        j = start
        ib = (1, 1)
        while (
            self.local
            and not self.coupled(start)
            and j < len(self.layers)
            and self.acts[j].ndim == 4
            and self.acts[j + 1].ndim == 4
        ):
            layer = self.layers[j]
            if layer.elementwise:
                steps.append(_Step(j, window=False, ob=ib))
            else:
                geo = layer.window()
                if geo is None:
                    break
                k, s, p = geo
                out_hw = self.acts[j + 1].shape[2:]
                q0 = tuple(_ceil_div(p[d], s[d]) for d in (0, 1))
                ob = tuple(min(out_hw[d], (ib[d] + k[d] - 2) // s[d] + 1) for d in (0, 1))
                crop = tuple((q0[d] + ob[d] - 1) * s[d] - p[d] + k[d] for d in (0, 1))
                steps.append(_Step(j, True, k, s, p, q0, ob, crop))  # type: ignore[arg-type]
            ib = steps[-1].ob
            j += 1
        plan = _LocalPlan(start, tuple(steps), j)
        self._plans[start] = plan
        return plan

    def plan_bytes(self, plan: _LocalPlan, itemsize: int) -> int:
        """Rough bytes one single-sample copy needs on the local path and after it."""
        per = 0
        for st in plan.steps:
            c_in, c_out = self.acts[st.j].shape[1], self.acts[st.j + 1].shape[1]
            per += 2 * (c_in * st.crop[0] * st.crop[1] + c_out * st.ob[0] * st.ob[1])
            if st.window:
                per += c_in * st.k[0] * st.k[1] * st.crop[0] * st.crop[1]
        return per * itemsize + self.copy_bytes(plan.stop, 1, itemsize)

    def _padded_ref(self, st: _Step) -> np.ndarray:
        if st.j not in self._padded:
            (q0h, q0w), (sh, sw), (ph, pw) = st.q0, st.s, st.p
            self._padded[st.j] = np.pad(self.acts[st.j], ((0, 0), (0, 0), (q0h * sh, ph), (q0w * sw, pw)))
        return self._padded[st.j]

    def _aligned(self, j: int, sig: np.ndarray, out_shape: tuple[int, ...]) -> bool:
        """Whether layer j's signatures are laid out like its output (one entry per output element)."""
        ref = self.ref_sigs[j]
        return ref is not None and ref.shape == self.acts[j + 1].shape and sig.shape == out_shape

    def _box_kinks(
        self, j: int, sig: np.ndarray, n: np.ndarray, y0: np.ndarray, x0: np.ndarray
    ) -> np.ndarray:
        """Per copy: does the signature of a box differ from the reference at the same place?"""
        ref = self.ref_sigs[j]
        assert ref is not None
        return np.any((sig != _box_view(ref, n, y0, x0, *sig.shape[2:])).reshape(sig.shape[0], -1), axis=1)

    def propagate_local(
        self, plan: _LocalPlan, n: np.ndarray, e: np.ndarray, values: np.ndarray, dtype: type
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the local steps of ``plan``: the full input of ``layers[plan.stop]`` and kink flags.

        Copy i is sample ``n_i`` of ``acts[plan.start]`` with flat element ``e_i`` set to
        ``values_i``.  Only a box of each map around it is recomputed, by the layers' own
        forward on crops; everything outside the box is the reference activation.
        """
        base = self.acts[plan.start]
        b = n.shape[0]
        _, _, h, w = base.shape
        c, rest = np.divmod(e, h * w)
        y0, x0 = np.divmod(rest, w)
        box = base[n, :, y0, x0].astype(dtype)  # (B, C)
        box[np.arange(b), c] = values
        box = box[:, :, None, None]
        kinks = np.zeros(b, dtype=bool)
        for st in plan.steps:
            layer = self.layers[st.j]
            if not st.window:
                inp = box
                box = layer.forward(inp)
                if self.kinky[st.j]:
                    sig = np.asarray(layer.kink_signature())
                    if self._aligned(st.j, sig, box.shape):
                        kinks |= self._box_kinks(st.j, sig, n, y0, x0)
                    else:
                        ref = _box_view(self.acts[st.j], n, y0, x0, *inp.shape[2:])
                        kinks |= self._bisect_kinks(layer, inp, lambda r, ref=ref: ref[r], 1, sig.copy())
                continue
            (kh, kw), (sh, sw), (ph, pw), (q0h, q0w), (obh, obw) = st.k, st.s, st.p, st.q0, st.ob
            ho, wo = self.acts[st.j + 1].shape[2:]
            oy = np.clip(_ceil_div(y0 + ph - kh + 1, sh), 0, ho - obh)
            ox = np.clip(_ceil_div(x0 + pw - kw + 1, sw), 0, wo - obw)
            ref = _box_view(self._padded_ref(st), n, oy * sh, ox * sw, *st.crop)
            crops = ref.astype(dtype)
            _paste(crops, box, y0 + (q0h - oy) * sh, x0 + (q0w - ox) * sw)
            out = layer.forward(crops)
            box = out[:, :, q0h : q0h + obh, q0w : q0w + obw]
            if self.kinky[st.j]:
                sig = np.asarray(layer.kink_signature())
                if self._aligned(st.j, sig, out.shape):
                    kinks |= self._box_kinks(st.j, sig[:, :, q0h : q0h + obh, q0w : q0w + obw], n, oy, ox)
                else:
                    kinks |= self._bisect_kinks(layer, crops, lambda r, ref=ref: ref[r], 1, sig.copy())
            y0, x0 = oy, ox
        full = self.acts[plan.stop][n].astype(dtype)
        _paste(full, box, y0, x0)
        return full, kinks

    # ---- kink comparison --------------------------------------------------------------------
    @staticmethod
    def _changed(sig: np.ndarray, ref: np.ndarray | None) -> bool:
        return ref is None or sig.shape != ref.shape or bool(np.any(sig != ref))

    # ---- evaluators -----------------------------------------------------------------------
    def activation_evaluator(self, start: int) -> _Evaluate:
        """Per-copy losses L_n(a + perturbation) for perturbations of acts[start] (one sample each).

        The evaluator takes flat indices into acts[start] (sample axis included) and the new
        values, and returns each copy's own-sample loss and whether it crossed a kink.
        """
        base = self.acts[start]
        m = base.shape[0]
        flat_base = base.reshape(m, -1)
        size = flat_base.shape[1]
        plan = self.plan(start)

        if self.coupled(start):
            return self._coupled_evaluator(start)

        def evaluate(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            b = idx.shape[0]
            n, e = np.divmod(idx, size)
            dtype = np.complex128 if np.iscomplexobj(values) else np.float64
            j, kinks = start, np.zeros(b, dtype=bool)
            if plan.steps:
                stack, kinks = self.propagate_local(plan, n, e, values, dtype)
                j = plan.stop
            else:
                stack = flat_base[n].astype(dtype)
                stack[np.arange(b), e] = values
                stack = stack.reshape(b, *base.shape[1:])
            out, later = self.run(j, stack, n, 1)
            return self.loss.forward(out, self.y[n]), kinks | later

        return evaluate

    def _coupled_evaluator(self, start: int) -> _Evaluate:
        """Like :meth:`activation_evaluator` where later layers couple the samples: each copy is the
        whole batch with one element changed, and its loss is the batch's sum Σ_x L_x, whose gradient
        the recorded per-sample deltas are."""
        base = self.acts[start]
        m = base.shape[0]
        size = base[0].size

        def evaluate(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            b = idx.shape[0]
            dtype = np.complex128 if np.iscomplexobj(values) else np.float64
            stack = np.tile(base.reshape(1, m * size).astype(dtype), (b, 1))
            stack[np.arange(b), idx] = values
            rows = np.tile(np.arange(m), b)
            out, kinks = self.run(start, stack.reshape(b * m, *base.shape[1:]), rows, m)
            return self.loss.forward(out, self.y[rows]).reshape(b, m).sum(axis=1), kinks

        return evaluate

    def param_evaluator(self, l: int, key: str) -> _Evaluate:
        """Batch-mean losses with single elements of ``layers[l].params[key]`` set to new values."""
        layer = self.layers[l]
        m = self.m
        inputs: dict[object, np.ndarray] = {}

        def evaluate(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            b = idx.shape[0]
            original = layer.params[key]
            dtype = np.complex128 if np.iscomplexobj(values) else original.dtype
            # complex-step: the whole forward in complex128, the layer's input included
            if dtype not in inputs:
                inputs[dtype] = self.acts[l].astype(dtype, copy=False)
            a_in = inputs[dtype]
            work = original.astype(dtype, copy=True)
            flat = work.reshape(-1)
            outs = []
            kinks = np.zeros(b, dtype=bool)
            layer.params[key] = work
            try:
                for i in range(b):
                    old = flat[idx[i]]
                    flat[idx[i]] = values[i]
                    outs.append(layer.forward(a_in))
                    if self.kinky[l]:
                        kinks[i] |= self._changed(np.asarray(layer.kink_signature()), self.ref_sigs[l])
                    flat[idx[i]] = old
            finally:
                layer.params[key] = original
            rows = np.tile(np.arange(m), b)
            out, later = self.run(l + 1, np.concatenate(outs) if b > 1 else outs[0], rows, m)
            losses = self.loss.forward(out, self.y[rows]).reshape(b, m).mean(axis=1)
            return losses, kinks | later

        return evaluate


def _take_rows(a: np.ndarray, rows: np.ndarray, span: slice) -> np.ndarray:
    return a[rows[span]]


def _splittable(sig: np.ndarray, rows: int) -> bool:
    """Whether a signature has the batch as its leading axis (so copies can be told apart)."""
    return sig.ndim >= 2 and sig.shape[0] == rows


# ---- finite differences ---------------------------------------------------------------------
def _differentiate(
    evaluate: _Evaluate, idx: np.ndarray, v: np.ndarray, method: str, eps: float, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Numerical derivatives at the elements ``idx`` (current values ``v``) and their kink flags."""
    n = idx.shape[0]
    if method == "complex":
        values = (v + 1j * eps)[:, None]
    else:
        h = eps * np.maximum(1.0, np.abs(v))
        cols = [v + h, v - h]
        if method == "richardson":
            cols += [v + h / 2, v - h / 2]
        values = np.stack(cols, axis=1)
    c = values.shape[1]
    flat_idx = np.repeat(idx, c)
    flat_vals = values.reshape(-1)
    losses = np.empty(n * c, dtype=np.complex128 if method == "complex" else np.float64)
    kinks = np.zeros(n * c, dtype=bool)
    step = max(1, chunk)
    for s in range(0, n * c, step):
        lo, kk = evaluate(flat_idx[s : s + step], flat_vals[s : s + step])
        losses[s : s + step] = lo
        kinks[s : s + step] = kk
    L = losses.reshape(n, c)
    kink = kinks.reshape(n, c).any(axis=1)
    if method == "complex":
        return L[:, 0].imag / eps, kink
    d1 = (L[:, 0] - L[:, 1]) / (values[:, 0] - values[:, 1])
    if method == "central":
        return d1, kink
    d2 = (L[:, 2] - L[:, 3]) / (values[:, 2] - values[:, 3])
    return (4.0 * d2 - d1) / 3.0, kink


def relative_error(a: np.ndarray, n: np.ndarray, floor: float | np.ndarray) -> np.ndarray:
    """``|a − n| / max(|a|, |n|, floor)``: the project's one relative error; 0 where that is 0/0, inf
    where either side is not finite (a NaN or infinite gradient never passes)."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - n)
        denom = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
        err = np.divide(diff, denom, out=np.zeros_like(diff), where=denom > 0)
    return np.where(np.isfinite(a) & np.isfinite(n), err, np.inf)


def _select(analytic: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Flat indices to check: all of them, or k including the largest |analytic| element."""
    total = analytic.size
    if k is None or k >= total:
        return np.arange(total)
    top = int(np.argmax(np.abs(analytic).reshape(-1)))
    rest = rng.choice(total - 1, size=k - 1, replace=False)
    rest = rest + (rest >= top)  # skip over ``top``
    return np.sort(np.concatenate([[top], rest])).astype(np.intp)


def _row(
    layer: str,
    tensor: str,
    analytic: np.ndarray,
    idx: np.ndarray,
    numeric: np.ndarray,
    kink: np.ndarray,
    rtol: float,
    floor: float | np.ndarray,
) -> TensorCheck:
    """Judge one tensor's checked elements: status, worst element, counts."""
    a = analytic.reshape(-1)[idx].real.astype(np.float64)
    err = relative_error(a, numeric, floor)
    over = err > rtol
    fail, kmis = over & ~kink, over & kink
    status = FAIL if fail.any() else KINK if kmis.any() else PASS
    pool = kmis if status == KINK else ~kmis
    w = int(np.argmax(np.where(pool, err, -1.0)))
    row = TensorCheck(
        layer=layer,
        tensor=tensor,
        shape=tuple(int(s) for s in analytic.shape),
        checked=int(idx.shape[0]),
        total=int(analytic.size),
        max_rel_error=float(err[w]),
        worst_index=tuple(int(i) for i in np.unravel_index(int(idx[w]), analytic.shape)),
        analytic=float(a[w]),
        numeric=float(numeric[w]),
        status=status,
        n_fail=int(fail.sum()),
        n_kink=int(kmis.sum()),
    )
    row.detail = ElementDetail(idx, a, numeric, err, kink)
    return row


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
        rtol: an element FAILs (or is a KINK mismatch) when its relative error exceeds this.
        layers: only these layers' parameters and deltas (``"input"`` selects the input row);
            None checks everything.  Unknown names raise ValueError.
        per_tensor: in sampling mode, the number of elements per tensor (default 64), chosen with
            ``rng`` and always including the largest-|analytic| element.
        check_all: True checks every element, False samples; None samples only when
            ``per_tensor`` is given or the network has more than 20,000 parameters.
        rng: generator for the sampling (default ``default_rng(0)``).
        atol_floor: the error of an element is ``|a − n| / max(|a|, |n|, atol_floor·max(1, |L|))``
            with L the loss being differenced: elements below the floor are compared
            absolutely.  Defaults (``DEFAULT_ATOL_FLOOR``): 3e-4 central, 5e-6 richardson,
            1e-9 complex — where each method's rounding noise (≈ 6e-11·|L|, 1.5e-12·|L|,
            ≲ 1e-16) stays ≥ 5× below rtol = 1e-6.  Smaller floors make central report noise
            on small gradients as FAILs.
        _local: False disables the crop-based evaluation of single-element perturbations (a
            switch for tests and benchmarks; the numbers agree to rounding).

    Returns:
        A GradcheckResult: the input row first, then per layer (forward order) its parameter
        rows and its delta row.
    """
    t0 = time.perf_counter()
    x, y = _batch(net, x, y)
    s = _settings(net, loss, x, method, eps, rtol, layers, per_tensor, check_all, rng, atol_floor)
    dtypes = {p.dtype for layer in net.layers for p in layer.params.values()}
    cast_from = None
    if dtypes - {np.dtype(np.float64)}:
        cast_from = ",".join(sorted(str(d) for d in dtypes - {np.dtype(np.float64)}))
        net = copy.deepcopy(net).cast(np.float64)
    with net.in_phase("probe"):  # deterministic, batch statistics, no running statistics updated
        try:
            rows = _Rows(net, loss, x, y, s, _local).check()
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
    )


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


def _settings(
    net: Sequential, loss: Loss, x: np.ndarray, method: str, eps: float | None, rtol: float,
    layers: Sequence[str] | None, per_tensor: int | None, check_all: bool | None,
    rng: np.random.Generator | None, atol_floor: float | None,
) -> _Settings:  # fmt: skip
    """The options checked (ValueError naming the bad one) and resolved (auto → a method, defaults)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
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


class _Rows:
    """The rows of one check: the analytic gradients once, then each tensor against finite differences."""

    def __init__(
        self, net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, s: _Settings, local: bool
    ) -> None:
        self.net, self.s = net, s
        self.ck = _Checker(net, loss, x, y, local=local)
        self.sample_loss = np.abs(np.asarray(loss.forward(self.ck.acts[-1], y)).real)
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
        self.param_floor = s.floor * max(1.0, abs(float(np.mean(self.sample_loss))))

    def check(self) -> list[TensorCheck]:
        """The input row first, then per layer (forward order) its parameter rows and its delta row."""
        rows: list[TensorCheck] = []
        if "input" in self.s.selected:
            rows.append(self.activation("input", "input", 0, self.dx))
        for l, layer in enumerate(self.net.layers):
            if layer.name not in self.s.selected:
                continue
            for key, param in layer.params.items():
                if param.size:
                    rows.append(self.param(l, key))
            rows.append(self.activation(layer.name, "delta", l + 1, self.deltas[layer.name]))
        return rows

    def chunk(self, per_copy: int) -> int:
        """Perturbed copies per evaluation: about ``CHUNK_BYTES`` of activations, whole stencils."""
        n = max(1, CHUNK_BYTES // max(1, per_copy))
        return max(self.copies, n - n % self.copies)

    def activation(self, layer_name: str, tensor: str, start: int, analytic: np.ndarray) -> TensorCheck:
        """A per-sample delta (or the input gradient): the activation entering layer ``start`` perturbed."""
        s, ck = self.s, self.ck
        idx = _select(analytic, s.k, s.rng)
        v = ck.acts[start].reshape(-1)[idx].astype(np.float64)
        plan = ck.plan(start)
        per_copy = (
            ck.plan_bytes(plan, self.itemsize) if plan.steps else ck.copy_bytes(start, 1, self.itemsize)
        )
        num, kink = _differentiate(
            ck.activation_evaluator(start), idx, v, s.method, s.eps, self.chunk(per_copy)
        )
        if ck.coupled(start):  # the loss differenced is the batch's sum
            floors = s.floor * max(1.0, float(np.sum(self.sample_loss)))
        else:
            floors = s.floor * np.maximum(1.0, self.sample_loss[idx // (analytic.size // ck.m)])
        return _row(layer_name, tensor, analytic, idx, num, kink, s.rtol, floors)

    def param(self, l: int, key: str) -> TensorCheck:
        """Parameter ``key`` of layer ``l``: the batch-mean loss differenced."""
        s, ck, layer = self.s, self.ck, self.net.layers[l]
        analytic = self.grads[layer.name][key]
        idx = _select(analytic, s.k, s.rng)
        v = layer.params[key].reshape(-1)[idx].astype(np.float64)
        per_copy = ck.copy_bytes(l, ck.m, self.itemsize)
        num, kink = _differentiate(ck.param_evaluator(l, key), idx, v, s.method, s.eps, self.chunk(per_copy))
        return _row(layer.name, key, analytic, idx, num, kink, s.rtol, self.param_floor)
