"""The loss of a network under many perturbations at once: the evaluator behind the gradient checker.

Perturbing a parameter of layer l, or the output of layer l, changes only layers l (resp. l+1)
onwards: the activations entering every layer are cached and only the suffix is re-run.  Many
perturbations are evaluated at once by stacking perturbed copies along the batch axis (a copy is
one sample for deltas and input gradients, the whole batch for a parameter or a direction).  A
single perturbed element of an image changes only a box of each later feature map, so through
element-wise layers, tied-bias convolutions, max/mean/Lp pooling and subsampling only that box is
recomputed — by the layer's own ``forward`` on a crop of the cached input — and whole maps are
rebuilt at the first other layer (flatten, dense, untied conv).

Besides its loss, every perturbed copy reports what the checker needs to trust a difference
quotient (:class:`Obs`):

* ``kink``: the discrete state (``kink_signature()``) of some non-analytic layer it reached differs
  from the unperturbed one: a relu mask, a max-pool arg-max, an Lp-pool sign flipped;
* ``print``: a fingerprint of that state (0 for the unperturbed state; two copies have equal
  fingerprints exactly when their states are equal, up to a 2⁻⁶⁴ chance), so the checker can tell
  whether the points of a one-sided stencil lie on one smooth piece (computed only when asked for,
  ``want_prints``);
* ``rho``: the largest ``|Δx_i| / d_i`` over the inputs of the layers that declare points of low
  smoothness (``nonsmooth_distance()``, distance ``d_i`` of the unperturbed input from the nearest
  one): how close the perturbation came to such a point, in units of the distance.

Frozen state (``frozen``): every non-analytic layer computes the smooth piece its unperturbed
state selects — a relu multiplies by its reference mask, a max pool reads its reference arg-max, an
Lp pool keeps its reference signs and zero windows — instead of deciding anew, so the loss is
differentiable through ties and its difference quotient is the derivative that backpropagation
with that state computes.  A layer provides this with ``frozen_forward(x, signature)`` (see
``Layer.frozen_forward``: relu, leaky relu, max and Lp pools have one); a layer without one is
never held, and the checker falls back on one-sided derivatives where it is reached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnbp.core.layers.base import Layer, frozen_forward_of
from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential

#: Evaluator: (flat indices or items, new values) → (per-copy losses, observations)
Evaluate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, "Obs"]]


@dataclass
class Obs:
    """What perturbed copies saw besides their losses, one entry per copy (see the module docstring)."""

    kink: np.ndarray  # bool
    print: np.ndarray  # int64, wrapping sums
    rho: np.ndarray  # float64

    @classmethod
    def zeros(cls, n: int) -> Obs:
        return cls(np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64), np.zeros(n))

    @classmethod
    def concat(cls, parts: list[Obs]) -> Obs:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("kink", "print", "rho")))

    def merge(self, other: Obs) -> None:
        """Add what ``other`` saw (another stretch of the same copies' path)."""
        self.kink |= other.kink
        self.print += other.print
        np.maximum(self.rho, other.rho, out=self.rho)


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
class LocalPlan:
    """The layers through which single-element perturbations of ``acts[start]`` are propagated locally."""

    start: int
    steps: tuple[_Step, ...]
    stop: int  # the first layer run on whole (materialised) maps


def _ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -((-a) // b)


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


def _take_rows(a: np.ndarray, rows: np.ndarray, span: slice) -> np.ndarray:
    return a[rows[span]]


def _splittable(sig: np.ndarray, rows: int) -> bool:
    """Whether a signature has the batch as its leading axis (so copies can be told apart)."""
    return sig.ndim >= 2 and sig.shape[0] == rows


def _ints(sig: np.ndarray) -> np.ndarray:
    """A signature as int64 (floats by their bits), for exact fingerprint arithmetic."""
    sig = np.asarray(sig)
    if sig.dtype.kind in "biu":
        return sig.astype(np.int64, copy=False)
    return np.ascontiguousarray(sig, dtype=np.float64).view(np.int64)


def _hash(sig: np.ndarray) -> int:
    """A 64-bit fingerprint of a whole signature's shape and content, as a (wrapping) int64."""
    sig = np.ascontiguousarray(sig)
    digest = hashlib.blake2b(sig.tobytes(), digest_size=8, person=str(sig.shape).encode()[:16])
    return int(np.frombuffer(digest.digest(), dtype=np.int64)[0])


def _distance_ratio(delta: np.ndarray, dist: np.ndarray, copies: int) -> np.ndarray:
    """Per copy, ``max |Δ| / d`` (0/0 counts as 0: an input that did not move)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(delta) / dist
    r = np.where(np.isnan(r), 0.0, r)
    return r.reshape(copies, -1).max(axis=1) if r.size else np.zeros(copies)


class Perturber:
    """Cached unperturbed activations, signatures and distances, and batched evaluation of suffixes."""

    def __init__(self, net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, local: bool = True) -> None:
        self.net, self.loss, self.x, self.y = net, loss, x, y
        self.layers: list[Layer] = net.layers
        self.m = x.shape[0]
        self.local = local
        self.want_prints = False
        self.frozen = False
        self.kinky = [not getattr(l, "analytic", True) and hasattr(l, "kink_signature") for l in self.layers]
        # unperturbed forward: acts[j] enters layer j, acts[-1] is the network output
        self.acts: list[np.ndarray] = [x]
        self.ref_sigs: list[np.ndarray | None] = []
        self.rough: list[np.ndarray | None] = []  # distance of acts[j] from the layer's rough points
        a = x
        for layer, kinky in zip(self.layers, self.kinky, strict=True):
            a = layer.forward(a)
            self.acts.append(a)
            self.ref_sigs.append(np.array(layer.kink_signature(), copy=True) if kinky else None)
            self.rough.append(self._distances(layer, self.acts[-2]))
        self._plans: dict[int, LocalPlan] = {}
        self._padded: dict[tuple[str, int], np.ndarray] = {}
        self._weights: dict[int, np.ndarray] = {}
        self._windows: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _distances(layer: Layer, inp: np.ndarray) -> np.ndarray | None:
        """The layer's declared distances for its input (after its forward on ``inp``), or None."""
        declared = getattr(layer, "nonsmooth_distance", None)
        d = declared() if declared is not None else None
        if d is None:
            return None
        d = np.asarray(d, dtype=np.float64)
        if d.shape != inp.shape:
            raise ValueError(
                f"{layer.name}: nonsmooth_distance() has shape {d.shape}, its input {inp.shape}"
            )
        return np.array(d, copy=True)

    @property
    def any_rough(self) -> bool:
        return any(d is not None for d in self.rough)

    def _freezer(self, j: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """Layer j's frozen forward (:func:`~cnnbp.core.layers.base.frozen_forward_of`), or None."""
        return frozen_forward_of(self.layers[j])

    def can_freeze(self, start: int) -> bool:
        """Whether every non-analytic layer from ``start`` on has a frozen forward."""
        return all(self._freezer(j) is not None for j in range(start, len(self.layers)) if self.kinky[j])

    def _reference_state(self, j: int, rows: np.ndarray) -> np.ndarray:
        """Layer j's reference signature for the samples ``rows``, laid out as a forward on them gives it:
        rows of a batch-first one; another layout (an Lp pool's) from a forward on those unperturbed rows."""
        ref = self.ref_sigs[j]
        assert ref is not None
        if _splittable(ref, self.m):
            return ref[rows]
        if np.array_equal(rows, np.arange(self.m)):
            return ref
        self.layers[j].forward(self.acts[j][rows])
        return np.array(self.layers[j].kink_signature(), copy=True)

    # ---- running ------------------------------------------------------------------------
    def run(self, start: int, a: np.ndarray, rows: np.ndarray, group: int) -> tuple[np.ndarray, Obs]:
        """Run layers[start:] on a stack of perturbed copies; the output and what each copy saw.

        Copy i is rows ``i·group … (i+1)·group − 1`` of ``a``; ``rows[r]`` is the sample whose
        unperturbed state row r is compared with.  A signature with the batch as its leading
        axis is compared row by row; any other layout by bisection (see ``_bisect_kinks``).
        """
        copies = a.shape[0] // group
        if copies > 1 and self.coupled(start):  # copies must not share batch statistics: one at a time
            parts = [self.run(start, a[i * group : (i + 1) * group], rows[i * group : (i + 1) * group], group)
                     for i in range(copies)]  # fmt: skip
            return np.concatenate([o for o, _ in parts]), Obs.concat([k for _, k in parts])
        obs = Obs.zeros(copies)
        real = not np.iscomplexobj(a)
        for j in range(start, len(self.layers)):
            inp = a
            dist = self.rough[j]
            if dist is not None and real:
                moved = _distance_ratio(inp - self.acts[j][rows], dist[rows], copies)
                np.maximum(obs.rho, moved, out=obs.rho)
            freeze = self._freezer(j) if self.frozen and self.kinky[j] else None
            if freeze is not None:
                a = freeze(inp, self._reference_state(j, rows))
                continue
            a = self.layers[j].forward(inp)
            if self.kinky[j]:
                self._observe(j, inp, rows, group, obs)
        return a, obs

    def _observe(self, j: int, inp: np.ndarray, rows: np.ndarray, group: int, obs: Obs) -> None:
        """Kink flags (and fingerprints) of layer j's signature after a forward on ``inp``."""
        layer, ref = self.layers[j], self.ref_sigs[j]
        copies = inp.shape[0] // group
        sig = np.asarray(layer.kink_signature())
        if _splittable(sig, inp.shape[0]) and ref is not None and _splittable(ref, self.m):
            mine, theirs = sig.reshape(copies, -1), ref[rows].reshape(copies, -1)
            obs.kink |= np.any(mine != theirs, axis=1)
            if self.want_prints:
                diff = _ints(mine) - _ints(theirs)
                obs.print += (diff * self._weight(j)[rows].reshape(copies, -1)).sum(axis=1)
            return
        flags = self._bisect_kinks(layer, inp, partial(_take_rows, self.acts[j], rows), group, np.array(sig))
        obs.kink |= flags
        if self.want_prints:
            obs.print += self._hashed(layer, inp, group, flags)

    def _weight(self, j: int) -> np.ndarray:
        """Random int64 weights, one per entry of layer j's reference signature (the fingerprints')."""
        if j not in self._weights:
            ref = self.ref_sigs[j]
            assert ref is not None
            self._weights[j] = np.random.default_rng([j, 14]).integers(
                -(2**62), 2**62, size=ref.shape, dtype=np.int64
            )
        return self._weights[j]

    @staticmethod
    def _hashed(layer: Layer, inp: np.ndarray, group: int, flags: np.ndarray) -> np.ndarray:
        """Per copy, a fingerprint of the signature of the flagged copies, each run alone (0 elsewhere)."""
        out = np.zeros(flags.shape[0], dtype=np.int64)
        for i in np.flatnonzero(flags):
            layer.forward(inp[i * group : (i + 1) * group])
            out[i] = _hash(np.asarray(layer.kink_signature()))
        return out

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
            if not Perturber._changed(s, np.asarray(layer.kink_signature())):
                continue
            if hi - lo == 1:
                flags[lo] = True
            else:
                mid = (lo + hi) // 2
                todo += [(lo, mid, None), (mid, hi, None)]
        return flags

    @staticmethod
    def _changed(sig: np.ndarray, ref: np.ndarray | None) -> bool:
        return ref is None or sig.shape != ref.shape or bool(np.any(sig != ref))

    def copy_bytes(self, start: int, rows: int, itemsize: int) -> int:
        """Rough bytes of activations (and im2col buffers) one copy of ``rows`` samples needs."""
        per = self.acts[start][0].size
        for j in range(start, len(self.layers)):
            cin, cout = self.acts[j], self.acts[j + 1]
            per += 2 * (cin[0].size + cout[0].size)
            per += self.layers[j].scratch_size(cin.shape[1:])
        return per * rows * itemsize

    def coupled(self, start: int) -> bool:
        """Whether a layer from ``start`` on mixes the samples of a batch (batchnorm): a change to one
        sample there changes every sample's loss."""
        return any(layer.couples_batch for layer in self.layers[start:])

    # ---- local propagation of single-element perturbations -------------------------------------
    def plan(self, start: int) -> LocalPlan:
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
        plan = LocalPlan(start, tuple(steps), j)
        self._plans[start] = plan
        return plan

    def plan_bytes(self, plan: LocalPlan, itemsize: int) -> int:
        """Rough bytes one single-sample copy needs on the local path and after it."""
        per = 0
        for st in plan.steps:
            c_in, c_out = self.acts[st.j].shape[1], self.acts[st.j + 1].shape[1]
            per += 2 * (c_in * st.crop[0] * st.crop[1] + c_out * st.ob[0] * st.ob[1])
            if st.window:
                per += c_in * st.k[0] * st.k[1] * st.crop[0] * st.crop[1]
        return per * itemsize + self.copy_bytes(plan.stop, 1, itemsize)

    def _padded_ref(self, st: _Step, what: str = "acts") -> np.ndarray:
        """``acts[j]`` (or the distances, padded with inf) padded as the crops of step ``st`` need."""
        if (what, st.j) not in self._padded:
            (q0h, q0w), (sh, sw), (ph, pw) = st.q0, st.s, st.p
            a = self.acts[st.j] if what == "acts" else self.rough[st.j]
            assert a is not None
            fill = 0.0 if what == "acts" else np.inf
            pad = ((0, 0), (0, 0), (q0h * sh, ph), (q0w * sw, pw))
            self._padded[(what, st.j)] = np.pad(a, pad, constant_values=fill)
        return self._padded[(what, st.j)]

    def _box(
        self, a: np.ndarray, n: np.ndarray, y0: np.ndarray, x0: np.ndarray, bh: int, bw: int
    ) -> np.ndarray:
        """``a[n_i, :, y0_i : y0_i + bh, x0_i : x0_i + bw]`` for every i, stacked (B, C, bh, bw), of one of
        the perturber's own long-lived arrays (its window view is made once)."""
        key = (id(a), bh, bw)
        if key not in self._windows:  # the array is kept with its view: its id is not reused
            self._windows[key] = (a, sliding_window_view(a, (bh, bw), axis=(2, 3)))
        return self._windows[key][1][n, :, y0, x0]

    def _aligned(self, j: int, sig: np.ndarray, out_shape: tuple[int, ...]) -> bool:
        """Whether layer j's signatures are laid out like its output (one entry per output element)."""
        ref = self.ref_sigs[j]
        return ref is not None and ref.shape == self.acts[j + 1].shape and sig.shape == out_shape

    def _box_obs(
        self, j: int, sig: np.ndarray, n: np.ndarray, y0: np.ndarray, x0: np.ndarray, obs: Obs
    ) -> None:
        """Flags (and fingerprints) of a box of an aligned signature against the reference's same box."""
        ref = self.ref_sigs[j]
        assert ref is not None
        bh, bw = sig.shape[2:]
        b = sig.shape[0]
        theirs = self._box(ref, n, y0, x0, bh, bw)
        obs.kink |= np.any((sig != theirs).reshape(b, -1), axis=1)
        if self.want_prints:
            diff = (_ints(sig) - _ints(theirs)).reshape(b, -1)
            obs.print += (diff * self._box(self._weight(j), n, y0, x0, bh, bw).reshape(b, -1)).sum(axis=1)

    def _local_kinks(
        self, j: int, inp: np.ndarray, sig: np.ndarray, ref: np.ndarray, obs: Obs, box: tuple | None
    ) -> None:
        """Kinks of a layer on the local path: by box when aligned (``box`` = (sig box, n, y, x)), else by
        bisection against the reference crops ``ref``."""
        if box is not None:
            self._box_obs(j, *box, obs)
            return
        layer = self.layers[j]
        flags = self._bisect_kinks(layer, inp, lambda r: ref[r], 1, sig.copy())
        obs.kink |= flags
        if self.want_prints:
            obs.print += self._hashed(layer, inp, 1, flags)

    def propagate_local(
        self, plan: LocalPlan, n: np.ndarray, e: np.ndarray, values: np.ndarray, dtype: type
    ) -> tuple[np.ndarray, Obs]:
        """Run the local steps of ``plan``: the full input of ``layers[plan.stop]`` and what was seen.

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
        obs = Obs.zeros(b)
        real = dtype is not np.complex128
        for st in plan.steps:
            if st.window:
                box, y0, x0 = self._window_step(st, box, n, y0, x0, obs, real, dtype)
            else:
                box = self._pointwise_step(st, box, n, y0, x0, obs, real)
        full = self.acts[plan.stop][n].astype(dtype)
        _paste(full, box, y0, x0)
        return full, obs

    def _pointwise_step(
        self, st: _Step, box: np.ndarray, n: np.ndarray, y0: np.ndarray, x0: np.ndarray, obs: Obs, real: bool
    ) -> np.ndarray:
        """One local step through a layer without a window (element-wise): the box's new values."""
        layer = self.layers[st.j]
        ref = self._box(self.acts[st.j], n, y0, x0, *box.shape[2:])
        if self.rough[st.j] is not None and real:
            dist = self._box(self.rough[st.j], n, y0, x0, *box.shape[2:])
            np.maximum(obs.rho, _distance_ratio(box - ref, dist, box.shape[0]), out=obs.rho)
        freeze = self._freezer(st.j) if self.frozen and self.kinky[st.j] else None
        if freeze is not None:
            ref_sig = self.ref_sigs[st.j]
            assert ref_sig is not None
            return freeze(box, self._box(ref_sig, n, y0, x0, *box.shape[2:]))
        out = layer.forward(box)
        if self.kinky[st.j]:
            sig = np.asarray(layer.kink_signature())
            aligned = (sig, n, y0, x0) if self._aligned(st.j, sig, out.shape) else None
            self._local_kinks(st.j, box, sig, ref, obs, aligned)
        return out

    def _window_step(
        self, st: _Step, box: np.ndarray, n: np.ndarray, y0: np.ndarray, x0: np.ndarray, obs: Obs, real: bool,
        dtype: type,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """One local step through a windowed layer: the box of outputs its input box reaches, and that
        box's corner (y0, x0) in the layer's output."""
        layer = self.layers[st.j]
        (kh, kw), (sh, sw), (ph, pw), (q0h, q0w), (obh, obw) = st.k, st.s, st.p, st.q0, st.ob
        ho, wo = self.acts[st.j + 1].shape[2:]
        oy = np.clip(_ceil_div(y0 + ph - kh + 1, sh), 0, ho - obh)
        ox = np.clip(_ceil_div(x0 + pw - kw + 1, sw), 0, wo - obw)
        ref = self._box(self._padded_ref(st), n, oy * sh, ox * sw, *st.crop)
        crops = ref.astype(dtype)
        _paste(crops, box, y0 + (q0h - oy) * sh, x0 + (q0w - ox) * sw)
        if self.rough[st.j] is not None and real:
            dist = self._box(self._padded_ref(st, "rough"), n, oy * sh, ox * sw, *st.crop)
            np.maximum(obs.rho, _distance_ratio(crops - ref, dist, box.shape[0]), out=obs.rho)
        freeze = self._freezer(st.j) if self.frozen and self.kinky[st.j] else None
        if freeze is not None:
            out = freeze(crops, self._crop_state(st, n, oy, ox, crops.shape))
            return out[:, :, q0h : q0h + obh, q0w : q0w + obw], oy, ox
        out = layer.forward(crops)
        if self.kinky[st.j]:
            sig = np.asarray(layer.kink_signature())
            aligned = None
            if self._aligned(st.j, sig, out.shape):
                aligned = (sig[:, :, q0h : q0h + obh, q0w : q0w + obw], n, oy, ox)
            self._local_kinks(st.j, crops, sig, ref, obs, aligned)
        return out[:, :, q0h : q0h + obh, q0w : q0w + obw], oy, ox

    def _crop_state(
        self, st: _Step, n: np.ndarray, oy: np.ndarray, ox: np.ndarray, crop_shape: tuple[int, ...]
    ) -> np.ndarray:
        """The reference state of a window layer's outputs on a crop: the box kept from the crop (at
        ``q0``) is the reference's box at (oy, ox); the rest (discarded) is 0."""
        ref = self.ref_sigs[st.j]
        assert ref is not None
        _, ho, wo = self.layers[st.j].output_shape(crop_shape[1:])
        state = np.zeros((crop_shape[0], ref.shape[1], ho, wo), dtype=ref.dtype)
        (q0h, q0w), (obh, obw) = st.q0, st.ob
        state[:, :, q0h : q0h + obh, q0w : q0w + obw] = self._box(ref, n, oy, ox, obh, obw)
        return state

    def local_freezable(self, plan: LocalPlan) -> bool:
        """Whether the local steps can run frozen: every non-analytic layer on them has a frozen forward
        and a signature laid out like its output (one state per output element)."""
        for st in plan.steps:
            ref = self.ref_sigs[st.j]
            if self.kinky[st.j] and (
                self._freezer(st.j) is None or ref is None or ref.shape != self.acts[st.j + 1].shape
            ):
                return False
        return True

    # ---- evaluators -----------------------------------------------------------------------
    def activation_evaluator(self, start: int) -> Evaluate:
        """Per-copy losses L_n(a + perturbation) for perturbations of acts[start] (one sample each).

        The evaluator takes flat indices into acts[start] (sample axis included) and the new
        values, and returns each copy's own-sample loss and what it saw.
        """
        if self.coupled(start):
            return self._coupled_evaluator(start)
        base = self.acts[start]
        flat_base = base.reshape(base.shape[0], -1)
        size = flat_base.shape[1]
        plan = self.plan(start)

        def evaluate(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, Obs]:
            b = idx.shape[0]
            n, e = np.divmod(idx, size)
            dtype = np.complex128 if np.iscomplexobj(values) else np.float64
            j, obs = start, Obs.zeros(b)
            if plan.steps and (not self.frozen or self.local_freezable(plan)):
                stack, obs = self.propagate_local(plan, n, e, values, dtype)
                j = plan.stop
            else:
                stack = flat_base[n].astype(dtype)
                stack[np.arange(b), e] = values
                stack = stack.reshape(b, *base.shape[1:])
            out, later = self.run(j, stack, n, 1)
            obs.merge(later)
            return self.loss.forward(out, self.y[n]), obs

        return evaluate

    def _coupled_evaluator(self, start: int) -> Evaluate:
        """Like :meth:`activation_evaluator` where later layers couple the samples: each copy is the
        whole batch with one element changed, and its loss is the batch's sum Σ_x L_x, whose gradient
        the recorded per-sample deltas are."""
        base = self.acts[start]
        m = base.shape[0]
        size = base[0].size

        def evaluate(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, Obs]:
            b = idx.shape[0]
            dtype = np.complex128 if np.iscomplexobj(values) else np.float64
            stack = np.tile(base.reshape(1, m * size).astype(dtype), (b, 1))
            stack[np.arange(b), idx] = values
            rows = np.tile(np.arange(m), b)
            out, obs = self.run(start, stack.reshape(b * m, *base.shape[1:]), rows, m)
            return self.loss.forward(out, self.y[rows]).reshape(b, m).sum(axis=1), obs

        return evaluate

    def param_evaluator(self, l: int, key: str) -> Evaluate:
        """Batch-mean losses with single elements of ``layers[l].params[key]`` set to new values."""
        original = self.layers[l].params[key]

        def perturb(work: np.ndarray, idx: np.ndarray, values: np.ndarray, i: int, on: bool) -> None:
            flat = work.reshape(-1)
            flat[idx[i]] = values[i] if on else original.reshape(-1)[idx[i]]

        return self._param_runs(l, key, perturb)

    def direction_evaluator(self, l: int, key: str, dirs: np.ndarray) -> Evaluate:
        """Batch-mean losses with ``layers[l].params[key]`` moved along directions: the evaluator takes
        direction numbers k and offsets t, and sets the parameter to θ + t·dirs[k]."""
        original = self.layers[l].params[key]

        def perturb(work: np.ndarray, idx: np.ndarray, values: np.ndarray, i: int, on: bool) -> None:
            if on:
                np.add(original, values[i] * dirs[idx[i]], out=work)

        return self._param_runs(l, key, perturb)

    def _param_runs(self, l: int, key: str, perturb: Callable[..., None]) -> Evaluate:
        """Batch-mean losses with ``layers[l].params[key]`` changed, copy by copy, by
        ``perturb(work, idx, values, i, on)`` (``on`` False undoes copy i's change)."""
        layer = self.layers[l]
        m = self.m
        inputs: dict[object, np.ndarray] = {}

        def evaluate(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, Obs]:
            b = idx.shape[0]
            original = layer.params[key]
            dtype = np.complex128 if np.iscomplexobj(values) else original.dtype
            # complex-step: the whole forward in complex128, the layer's input included
            if dtype not in inputs:
                inputs[dtype] = self.acts[l].astype(dtype, copy=False)
            a_in = inputs[dtype]
            work = original.astype(dtype, copy=True)
            outs = []
            own = Obs.zeros(b)
            layer.params[key] = work
            freeze = self._freezer(l) if self.frozen and self.kinky[l] else None
            state = self._reference_state(l, np.arange(m)) if freeze is not None else None
            try:
                for i in range(b):
                    perturb(work, idx, values, i, True)
                    if freeze is not None:
                        outs.append(freeze(a_in, state))
                        perturb(work, idx, values, i, False)
                        continue
                    outs.append(layer.forward(a_in))
                    if self.kinky[l]:
                        sig = np.asarray(layer.kink_signature())
                        if self._changed(sig, self.ref_sigs[l]):
                            own.kink[i] = True
                            own.print[i] = _hash(sig) if self.want_prints else 0
                    perturb(work, idx, values, i, False)
            finally:
                layer.params[key] = original
            rows = np.tile(np.arange(m), b)
            out, later = self.run(l + 1, np.concatenate(outs) if b > 1 else outs[0], rows, m)
            own.merge(later)
            losses = self.loss.forward(out, self.y[rows]).reshape(b, m).mean(axis=1)
            return losses, own

        return evaluate

    def batch_evaluator(self, start: int, dirs: np.ndarray, weights: np.ndarray) -> Evaluate:
        """Weighted sums Σ_x w_kx·L_x of the per-sample losses with the whole ``acts[start]`` moved along
        directions: the evaluator takes direction numbers k and offsets t and sets the activation to
        a + t·dirs[k] (``dirs``: (K, m, ...), ``weights``: (K, m))."""
        base = self.acts[start]
        m = self.m

        def evaluate(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, Obs]:
            b = idx.shape[0]
            dtype = np.complex128 if np.iscomplexobj(values) else np.float64
            shape = (b,) + (1,) * base.ndim
            stack = base[None].astype(dtype) + values.reshape(shape) * dirs[idx]
            rows = np.tile(np.arange(m), b)
            out, obs = self.run(start, stack.reshape(b * m, *base.shape[1:]), rows, m)
            losses = self.loss.forward(out, self.y[rows]).reshape(b, m)
            return (losses * weights[idx]).sum(axis=1), obs

        return evaluate
