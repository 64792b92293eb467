"""The worked backpropagation derivation of one sample: every quantity with its formula and its numbers.

``trace(net, loss, x, y, lr)`` runs the engine on the batch of one sample ``x`` and writes the seeds'
derivation of it as a list of :class:`Step`: the forward pass (each layer's z, or a for an activation
layer), the loss, the backward pass from the output (each layer's δ, each parameter gradient, the input
gradient) and the gradient-descent update ``w⁺ = w − α·∂E/∂w`` of each parameter.

What a step is.  Its value is the **engine's** number (the layer's output, the delta the network's
``record`` hook saw, the gradient in ``layer.grads``, the weight an ``SGD(lr)`` step leaves), and its
``terms`` are the numbers the rule combines: ``value == Σ_terms Π factors`` up to rounding.  The
symbols (``lhs``, ``rules``) and the numbers as written (``numbers``) are :mod:`cnnbp.core.formula`
trees.

One sample.  E is the sample's own loss.  The engine's parameter gradients are those of the batch-mean
loss; for a batch of this one sample they are ∂E/∂θ, and the update is the plain SGD step that batch
would make.  The network runs in the ``eval`` phase: dropout is the identity and batchnorm normalises
with its running statistics, because a batch of one has no batch statistics (a vector batchnorm refuses
it in training, and an image's statistics would be that sample's own) — the per-sample trace is the
network as inference computes it.

Which elements.  A small tensor (a vector of ≤ 8, a matrix of ≤ 8×8, or ≤ 4 maps of ≤ 16 elements)
is written out element by element.  A larger one gets the elements ``at`` names for it, by default per
map (up to 8 maps) the element with the largest |δ| (|∂E/∂θ| for a parameter), and a :class:`Summary`
of the whole tensor.

Each layer kind has a tracer (:mod:`cnnbp.core.tracers`); a layer without one (a plugin, or a subclass
of a built-in) gets the generic one: its forward values as single terms and its backward written as the
vector-Jacobian product ``∂E/∂X_i = Σ_k δ_k · ∂z_k/∂X_i``, the Jacobian read off the layer's own
``backward`` applied to unit vectors — exact for any layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from cnnbp.core import formula as fm
from cnnbp.core.formula import E, Expr, Sym
from cnnbp.core.losses import MSE, Loss, SoftmaxCrossEntropy, as_targets
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from cnnbp.core.tracers import Eq, LayerValues, Names, tracer_for

__all__ = ["Block", "Step", "Summary", "Trace", "default_indices", "is_small", "trace"]

Idx = tuple[int, ...]
#: a line of prose and formulas: plain strings and formula trees, in order
Line = tuple["str | Expr", ...]

SMALL_VECTOR = 8  # a dense layer of up to 8 units is written out whole
SMALL_MAP = 16  # … and maps of up to 16 elements
SMALL_MAPS = 4  # … when there are at most 4 of them
MAX_MAPS = 8  # a larger tensor shows one element in each of at most 8 maps


@dataclass
class Step:
    """One quantity of the derivation (see the module docstring)."""

    section: str  # forward | loss | backward | update
    via: str  # the layer (or "loss", "update") whose rule gives it: the block it is printed in
    layer: str  # whose tensor: a layer's name, "loss" or "input"
    tensor: str  # z, a, softmax, loss, delta, grad:<param>, input_grad, update:<param>
    index: Idx  # into the tensor, per sample (no batch axis), 0-based
    value: float  # the engine's number
    terms: list[list[float]]
    lhs: Expr
    rules: tuple[Expr, ...]
    numbers: Expr

    @property
    def formula(self) -> str:
        """``lhs = rule = …`` in plain Unicode."""
        return " = ".join(fm.text(x) for x in (self.lhs, *self.rules))

    def term_sum(self) -> float:
        """Σ_terms Π factors (equals ``value`` up to rounding)."""
        return float(sum(math.prod(t) for t in self.terms))

    def to_dict(self) -> dict[str, object]:
        return {
            "section": self.section, "layer": self.layer, "tensor": self.tensor, "index": list(self.index),
            "formula": self.formula, "terms": [[float(f) for f in t] for t in self.terms],
            "value": float(self.value),
        }  # fmt: skip


@dataclass
class Block:
    """A heading of the derivation: one layer's rule (or the loss, or the update) in one section."""

    section: str
    via: str
    title: str
    legend: list[Line] = field(default_factory=list)


@dataclass
class Summary:
    """A tensor not written out whole: what was left out, in numbers."""

    section: str
    via: str
    layer: str
    tensor: str
    shape: tuple[int, ...]
    shown: int
    min: float
    max: float
    norm: float

    @property
    def total(self) -> int:
        return int(np.prod(self.shape))

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "tensor": self.tensor, "shape": list(self.shape), "shown": self.shown,
                "total": self.total, "min": self.min, "max": self.max, "norm": self.norm}  # fmt: skip


@dataclass
class Trace:
    """Steps, their headings and the summaries of the tensors shown in part, in reading order."""

    steps: list[Step]
    blocks: list[Block]
    summaries: list[Summary]
    loss: float
    lr: float
    notes_naming: bool  # the seed's 2-2-2 naming (i, net, out, w₁ …) rather than X, z, a, δ, W


# ---- which elements --------------------------------------------------------------------------------


def is_small(shape: tuple[int, ...]) -> bool:
    """Written out element by element: a vector of ≤ 8, a matrix of ≤ 8×8, ≤ 4 maps of ≤ 16 elements."""
    if len(shape) <= 1:
        return int(np.prod(shape)) <= SMALL_VECTOR
    if len(shape) == 2:
        return max(shape) <= SMALL_VECTOR
    return int(np.prod(shape[-2:])) <= SMALL_MAP and int(np.prod(shape[:-2])) <= SMALL_MAPS


def default_indices(shape: tuple[int, ...], ref: np.ndarray) -> list[Idx]:
    """Every element of a small tensor; else per map the element of largest |ref| (first on ties), in
    the ≤ ``MAX_MAPS`` maps where that is largest, in order."""
    if is_small(shape):
        return [tuple(int(i) for i in idx) for idx in np.ndindex(*shape)]
    lead = shape[:-2] if len(shape) >= 3 else ()
    mags = np.abs(np.asarray(ref, dtype=np.float64)).reshape(*lead, -1)
    picks = []
    for m in np.ndindex(*lead):
        flat = mags[m]
        k = int(np.argmax(flat))
        picks.append((float(flat[k]), (*m, *np.unravel_index(k, shape[len(lead) :]))))
    if len(picks) > MAX_MAPS:
        keep = sorted(range(len(picks)), key=lambda i: -picks[i][0])[:MAX_MAPS]
        picks = [picks[i] for i in sorted(keep)]
    return [tuple(int(i) for i in idx) for _, idx in picks]


# ---- running the engine on one sample --------------------------------------------------------------


@dataclass
class _Run:
    inputs: list[np.ndarray]  # per layer, its input (one sample, no batch axis)
    outputs: list[np.ndarray]
    deltas: dict[str, np.ndarray]  # per layer, ∂E/∂output as the record hook saw it
    input_grad: np.ndarray
    grads: dict[str, dict[str, np.ndarray]]
    loss: float
    target: np.ndarray  # the target as a vector (one-hot for a class index)
    updated: dict[str, dict[str, np.ndarray]]  # the parameters after SGD(lr).step


def _run(net: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, lr: float) -> _Run:
    """Forward, loss, backward (deltas recorded), and an SGD step on copies, for the batch ``x[None]``."""
    a = x[None]
    inputs, outputs = [], []
    for layer in net.layers:
        inputs.append(np.array(a[0]))
        a = layer.forward(a)
        outputs.append(np.array(a[0]))
    batch_y = np.asarray(y)[None]
    per_sample = loss.forward(a, batch_y)
    deltas: dict[str, np.ndarray] = {}
    dx = net.backward(loss.backward(), record=lambda name, d: deltas.__setitem__(name, np.array(d[0])))
    grads = {l.name: {k: np.array(g) for k, g in l.grads.items()} for l in net.layers if l.params}
    updated = {n: {k: np.array(v) for k, v in g.items()} for n, g in net.parameters().items()}
    SGD(lr=lr).step(updated, grads)  # a batch of one: the batch-mean gradient is the sample's own
    target = as_targets(batch_y, a.shape[1], np.dtype(np.float64))[0]
    return _Run(inputs, outputs, deltas, np.array(dx[0]), grads, float(per_sample[0]), target, updated)


# ---- the derivation --------------------------------------------------------------------------------


def trace(
    net: Sequential,
    loss: Loss,
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    *,
    at: Mapping[tuple[str, str | None], Iterable[Idx]] | None = None,
    layers: Iterable[str] | None = None,
    generic: bool = False,
) -> Trace:
    """The derivation of sample ``x`` (per-sample shape) with target ``y`` (a class index or a vector).

    ``net`` must be built in float64.  ``at[(layer, None)]`` names elements of a layer's output,
    ``at[(layer, param)]`` of a parameter, ``at[("input", None)]`` of the input gradient (0-based
    indices, per sample), instead of the default choice.  ``layers`` keeps only the steps of these
    layers: those of their tensors and those their rules give (``"input"``: the input gradient; the loss
    is always kept).  ``generic`` traces every layer with the generic tracer (how the fallback is
    tested).  ``lr`` is the α of the update shown.
    """
    if net.dtype != np.dtype(np.float64):
        raise ValueError(f"trace needs a float64 network, this one is {net.dtype}; cast it first")
    at = {k: [tuple(int(i) for i in idx) for idx in v] for k, v in (at or {}).items()}
    with net.in_phase("eval"):
        run = _run(net, loss, np.asarray(x, dtype=np.float64), np.asarray(y), lr)
        values = _layer_values(net, run)
        builder = _Builder(net, loss, run, values, at, lr, generic)
        builder.build()
    keep = None if layers is None else {*layers, "loss"}
    steps = [s for s in builder.steps if keep is None or s.layer in keep or s.via in keep]
    summaries = [s for s in builder.summaries if keep is None or s.layer in keep or s.via in keep]
    used = {(s.section, s.via) for s in steps}
    blocks = [b for b in builder.blocks if (b.section, b.via) in used]
    return Trace(steps, blocks, summaries, run.loss, lr, values[0].names.notes if values else False)


def _layer_values(net: Sequential, run: _Run) -> list[LayerValues]:
    layers = net.layers
    names = Names.for_network(net)
    values = []
    for i, layer in enumerate(layers):
        dx = run.deltas[layers[i - 1].name] if i else run.input_grad
        values.append(LayerValues(
            layer=layer, position=i, x=run.inputs[i], y=run.outputs[i], dy=run.deltas[layer.name], dx=dx,
            grads=run.grads.get(layer.name, {}), names=names[i],
            source="the input" if i == 0 else f"the output of {layers[i - 1].name}",
        ))  # fmt: skip
    for v, after in zip(values, values[1:], strict=False):
        v.next = after
    return values


class _Builder:
    """Collects the steps, blocks and summaries in reading order."""

    def __init__(self, net: Sequential, loss: Loss, run: _Run, values: list[LayerValues],
                 at: dict[tuple[str, str | None], list[Idx]], lr: float, generic: bool) -> None:  # fmt: skip
        self.net, self.loss, self.run, self.values, self.at, self.lr = net, loss, run, values, at, lr
        self.generic = generic
        self.steps: list[Step] = []
        self.blocks: list[Block] = []
        self.summaries: list[Summary] = []

    def build(self) -> None:
        for v in self.values:
            self._forward(v)
        self._loss()
        for v in reversed(self.values):
            self._backward(v)
        self._update()

    # ---- helpers
    def tracer(self, v: LayerValues):  # noqa: ANN201 - a Tracer
        return tracer_for(v.layer, generic=self.generic)

    def indices(self, key: tuple[str, str | None], shape: tuple[int, ...], ref: np.ndarray) -> list[Idx]:
        if key in self.at:
            return self.at[key]
        return default_indices(shape, ref)

    def out_indices(self, v: LayerValues) -> list[Idx]:
        return self.indices((v.layer.name, None), v.y.shape, v.dy)

    def add(self, section: str, via: str, layer: str, tensor: str, idxs: list[Idx], eqs: list[Eq],
            source: np.ndarray) -> None:  # fmt: skip
        """Steps for ``eqs`` at ``idxs`` with values read from ``source``; a summary unless all shown."""
        for idx, eq in zip(idxs, eqs, strict=True):
            numbers = eq.numbers if eq.numbers is not None else fm.from_terms(eq.terms)
            self.steps.append(Step(section, via, layer, tensor, idx, float(source[idx]), eq.terms, eq.lhs,
                                   eq.rules, numbers))  # fmt: skip
        if len(set(idxs)) < source.size:
            arr = np.asarray(source, dtype=np.float64)
            stats = float(arr.min()), float(arr.max()), float(np.linalg.norm(arr))
            self.summaries.append(Summary(section, via, layer, tensor, arr.shape, len(set(idxs)), *stats))

    def block(self, section: str, via: str, title: str, legend: list[Line] | None = None) -> None:
        self.blocks.append(Block(section, via, title, legend or []))

    # ---- the sections
    def _forward(self, v: LayerValues) -> None:
        tr, name = self.tracer(v), v.layer.name
        self.block("forward", name, tr.title(v), tr.legend(v))
        idxs = self.out_indices(v)
        tensor = "a" if v.layer.elementwise else "z"
        self.add("forward", name, name, tensor, idxs, [tr.forward(v, i) for i in idxs], v.y)

    def _loss(self) -> None:
        last = self.values[-1]
        rule = _LOSS_RULES.get(type(self.loss))
        if rule is None:
            raise ValueError(f"no trace for the loss {type(self.loss).__name__}")
        rule(self, last)

    def _backward(self, v: LayerValues) -> None:
        tr, name = self.tracer(v), v.layer.name
        self.block("backward", name, f"{name} · backward", tr.back_legend(v))
        for pname in v.layer.params:
            g = v.grads[pname]
            idxs = self.indices((name, pname), g.shape, g)
            self.add(
                "backward", name, name, f"grad:{pname}", idxs, [tr.param_grad(v, pname, i) for i in idxs], g
            )
        if v.position:
            prev = self.values[v.position - 1]
            layer, tensor, idxs = prev.layer.name, "delta", self.out_indices(prev)
        else:
            layer, tensor = "input", "input_grad"
            idxs = self.indices(("input", None), v.dx.shape, v.dx)
        self.add("backward", name, layer, tensor, idxs, [tr.input_grad(v, i) for i in idxs], v.dx)

    def _update(self) -> None:
        alpha, w = Sym("α"), Sym("w")
        rule = fm.sub(w, fm.Prod((alpha, fm.D(E, w))))
        for v in reversed(self.values):
            name = v.layer.name
            if not v.layer.params:
                continue
            self.block(
                "update",
                name,
                f"{name} · gradient descent, α = {self.lr:g}",
                [(fm.Rel(Sym("w", sup="+"), rule), " for each parameter w of the layer")],
            )
            for pname, p in v.layer.params.items():
                g, new = v.grads[pname], self.run.updated[name][pname]
                idxs = self.indices((name, pname), g.shape, g)
                eqs = []
                for i in idxs:
                    sym = v.names.param(pname, i)
                    w_i, g_i = float(p[i]), float(g[i])
                    eqs.append(
                        Eq(
                            Sym(sym.name, sym.sub, "+"),
                            (fm.sub(sym, fm.Prod((alpha, fm.D(E, sym)))),),
                            [[w_i], [-self.lr, g_i]],
                            fm.sub(fm.Num(w_i), fm.Prod((fm.Num(self.lr), fm.Num(g_i)))),
                        )
                    )
                self.add("update", name, name, f"update:{pname}", idxs, eqs, new)


# ---- the losses -------------------------------------------------------------------------------------

HALF = Sym("½")


def _target_sym(b: _Builder, j: Idx | None) -> Sym:
    """The target of output j (its base symbol for None): y_j, or target_o1 in the seed's naming."""
    names = b.values[-1].names
    if names.notes:
        return Sym("target", (names.y(j) if j is not None else names.out_base).sub)
    return Sym("y", fm.index_sub(j, b.values[-1].y.shape) if j is not None else "")


def _mse(b: _Builder, last: LayerValues) -> None:
    out, t = last.y, b.run.target
    n = out.size
    js = [(j,) for j in range(n)]
    a = last.names.y
    out_base, y_base = last.names.out_base, _target_sym(b, None)
    b.block(
        "loss",
        "loss",
        "loss · mse",
        [
            (
                fm.Rel(
                    E, fm.Prod((HALF, Sym("Σ", "j"), fm.Pow(fm.sub(y_base, out_base), fm.Int(2))), tight=True)
                ),
                ": this sample's own loss; ",
                out_base,
                " the network's output, ",
                y_base,
                " the target",
            )
        ],
    )
    errs = [float(t[j]) - float(out[j]) for j in range(n)]
    terms = [[0.5, e, e] for e in errs]
    rule = fm.total(
        [fm.Prod((HALF, fm.Pow(fm.sub(_target_sym(b, j), a(j)), fm.Int(2))), tight=True) for j in js]
    )
    nums = fm.total([fm.Prod((HALF, fm.Pow(fm.sub(fm.Num(float(t[j])), fm.Num(float(out[j]))), fm.Int(2))),
                             tight=True) for j in range(n)])  # fmt: skip
    b.add("loss", "loss", "loss", "loss", [()], [Eq(E, (rule,), terms, nums)], np.array(b.run.loss))
    idxs = b.out_indices(last)
    eqs = [Eq(last.names.dy(j), (fm.Neg(fm.sub(_target_sym(b, j), a(j))), fm.sub(a(j), _target_sym(b, j))),
              [[float(out[j])], [-1.0, float(t[j])]], fm.sub(fm.Num(float(out[j])), fm.Num(float(t[j]))))
           for j in idxs]  # fmt: skip
    b.add("loss", "loss", last.layer.name, "delta", idxs, eqs, last.dy)


def _softmax_ce(b: _Builder, last: LayerValues) -> None:
    """ŷ = softmax(z) (of the elements shown and the target classes), E = −Σ y ln ŷ, δ = ŷ − y."""
    s, t = last.y, b.run.target
    shift = s - s.max()
    ex = np.exp(shift)  # as the engine computes them: the row maximum subtracted
    total = ex.sum()
    logp = shift - np.log(total)
    probs = SoftmaxCrossEntropy.probabilities(s[None])[0]
    base = last.names.out_base.name
    ce = fm.Neg(fm.Prod((Sym("Σ", "j"), Sym("y", "j"), fm.Call("ln", (Sym("ŷ", "j"),))), tight=True))
    den = fm.Prod((Sym("Σ", "k"), fm.Call("exp", (Sym(base, "k"),))), tight=True)
    softmax = fm.Rel(Sym("ŷ", "j"), fm.Frac(fm.Call("exp", (Sym(base, "j"),)), den))
    legend = (
        fm.Rel(E, ce),
        ": this sample's own loss, with ",
        softmax,
        " the softmax of the output, y the target",
    )
    b.block("loss", "loss", "loss · softmax cross-entropy", [legend])
    idxs = b.out_indices(last)
    shown = sorted({*idxs, *((j,) for j in range(s.size) if t[j] != 0)})
    z = last.names.y
    if s.size <= 4:  # the denominator written out, else as Σ_k e^z_k and its number
        den_sym = fm.total([fm.Call("exp", (z((k,)),)) for k in range(s.size)])
        den_num = fm.total([fm.Call("exp", (fm.Num(float(v)),)) for v in s])
    else:
        den_sym, den_num = den, fm.Num(float(np.exp(s).sum()))
    eqs = [Eq(_yhat(j, s), (fm.Frac(fm.Call("exp", (z(j),)), den_sym),), [[float(ex[j]), 1.0 / float(total)]],
              fm.Frac(fm.Call("exp", (fm.Num(float(s[j])),)), den_num)) for j in shown]  # fmt: skip
    b.add("loss", "loss", "loss", "softmax", shown, eqs, probs)
    b.add("loss", "loss", "loss", "loss", [()], [_ce_loss(s, t, logp, probs)], np.array(b.run.loss))
    b.add(
        "loss", "loss", last.layer.name, "delta", idxs, [_ce_delta(last, j, t, probs) for j in idxs], last.dy
    )


def _yhat(j: Idx, s: np.ndarray) -> Sym:
    return Sym("ŷ", fm.index_sub(j, s.shape))


def _ce_loss(s: np.ndarray, t: np.ndarray, logp: np.ndarray, probs: np.ndarray) -> Eq:
    """E = −ln ŷ_k for a one-hot target k, else −Σ_j y_j ln ŷ_j over the non-zero targets."""
    hot = [j for j in range(s.size) if t[j] != 0]
    if len(hot) == 1 and t[hot[0]] == 1:
        k = (hot[0],)
        return Eq(E, (fm.Neg(fm.Call("ln", (_yhat(k, s),))),), [[-1.0, float(logp[k])]],
                  fm.Neg(fm.Call("ln", (fm.Num(float(probs[k])),))))  # fmt: skip
    rule = fm.Neg(fm.total([fm.Prod((Sym("y", fm.index_sub((j,), s.shape)), fm.Call("ln", (_yhat((j,), s),))))
                            for j in hot]))  # fmt: skip
    nums = fm.Neg(fm.total([fm.Prod((fm.Num(float(t[j])), fm.Call("ln", (fm.Num(float(probs[j])),))))
                            for j in hot]))  # fmt: skip
    return Eq(E, (rule,), [[-1.0, float(t[j]), float(logp[j])] for j in hot], nums)


def _ce_delta(last: LayerValues, j: Idx, t: np.ndarray, probs: np.ndarray) -> Eq:
    """δ_j = ŷ_j − y_j; for targets that do not sum to 1 the engine's ŷ_j·Σy − y_j."""
    mass = float(t.sum())
    yhat, ysym = _yhat(j, last.y), Sym("y", fm.index_sub(j, last.y.shape))
    terms = [[float(probs[j]), mass], [-1.0, float(t[j])]]
    if mass == 1.0:
        return Eq(
            last.names.dy(j),
            (fm.sub(yhat, ysym),),
            terms,
            fm.sub(fm.Num(float(probs[j])), fm.Num(float(t[j]))),
        )
    return Eq(last.names.dy(j), (fm.sub(fm.Prod((yhat, Sym("Σy"))), ysym),), terms)


_LOSS_RULES = {MSE: _mse, SoftmaxCrossEntropy: _softmax_ce}
