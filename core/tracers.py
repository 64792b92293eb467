"""Tracers: for each layer kind, its forward value, its input gradient and its parameter gradients at one
element, written as the seeds write them (see :mod:`cnnbp.core.trace`).

A tracer reads a layer from outside (its hyper-parameters, ``params`` and ``state``) and the values the
engine computed for one sample (:class:`LayerValues`); it never calls the layer, except the generic one,
which applies the layer's own ``backward`` to unit vectors to read off its Jacobian.  Each method returns
an :class:`Eq`: the left-hand side, the rules in symbols, the ``terms`` (a list of products of numbers
whose sum is the value) and, where the numbers are not written as that sum, the numbers as written.

Symbols (:class:`Names`).  Inside a layer's rule: its input X (maps) or x (vectors), its output z (a
for an activation layer), δ = ∂E/∂z, and its parameters — a conv kernel F (the seeds' name for W), a
dense W_ji, biases b, subsampling's β, batchnorm's γ and β.  Subscripts count from 1 (δ₁₁ is row 1,
column 1).  A network of one or two dense layers, each optionally followed by an activation, on at
most 8 inputs with at most 8 units per layer, is named as seed 000's 2-2-2 network: inputs i₁…,
``net_h1``/``out_h1`` for the hidden units, ``net_o1``/``out_o1`` for the outputs, δ_o1 = ∂E/∂net_o1,
the weights w₁, w₂, … numbered row by row through the layers and the biases ``b_h1``, ``b_o1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnbp.core import formula as fm
from cnnbp.core.formula import D, E, Expr, Int, Num, Sym
from cnnbp.core.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    LpPool,
    MaxPool,
    MeanPool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)
from cnnbp.core.layers.base import Layer

Idx = tuple[int, ...]
Line = tuple["str | Expr", ...]

#: the generic tracer reads the Jacobian of layers with at most this many output elements
GENERIC_LIMIT = 4096
#: symbols of parameters, where the seeds use another letter than the parameter's name
_PARAM_SYMBOL = {
    ("conv", "W"): "F", ("subsample", "beta"): "β", ("batchnorm", "gamma"): "γ", ("batchnorm", "beta"): "β",
}  # fmt: skip
#: what a parameter is, in the legend
_PARAM_WORDS = {
    ("conv", "W"): "the kernels W", ("conv", "b"): "the bias", ("dense", "W"): "the weights",
    ("dense", "b"): "the biases", ("subsample", "beta"): "the multiplicative bias beta",
    ("subsample", "b"): "the additive bias", ("batchnorm", "gamma"): "the scale gamma",
    ("batchnorm", "beta"): "the shift beta",
}  # fmt: skip


@dataclass
class Eq:
    """A step before its value: ``lhs = rules…``, the terms (Σ Π = value) and the numbers as written
    (None: the terms' sum of products)."""

    lhs: Expr
    rules: tuple[Expr, ...]
    terms: list[list[float]]
    numbers: Expr | None = None


# ---- names ----------------------------------------------------------------------------------------------


@dataclass
class Names:
    """The symbols of one layer's rule: its input and output elements, their gradients, its parameters."""

    x: Callable[[Idx], Sym]
    y: Callable[[Idx], Sym]
    dy: Callable[[Idx], Expr]  # ∂E/∂(output element): δ, or ∂E/∂a after an activation
    dx: Callable[[Idx], Expr]  # ∂E/∂(input element)
    param: Callable[[str, Idx], Sym]
    in_base: Sym
    out_base: Sym
    delta_base: Expr
    param_base: dict[str, Sym] = field(default_factory=dict)
    notes: bool = False

    @staticmethod
    def for_network(net: Any) -> list[Names]:
        """The names of every layer: the seed's 2-2-2 naming where it applies, else the local X, z, δ."""
        notes = _notes_names(net)
        if notes is not None:
            return notes
        infos = net.summary()
        return [_general_names(layer, info.input_shape, info.output_shape, info.param_shapes, i == 0)
                for i, (layer, info) in enumerate(zip(net.layers, infos, strict=True))]  # fmt: skip


def _general_names(
    layer: Layer, in_shape: Idx, out_shape: Idx, pshapes: dict[str, Idx], first: bool
) -> Names:
    act = layer.elementwise
    ib = "z" if act and not first else ("X" if len(in_shape) >= 2 else "x")
    ob = "a" if act else "z"
    pbase = {p: Sym(_PARAM_SYMBOL.get((layer.kind, p), p)) for p in pshapes}

    def x(i: Idx) -> Sym:
        return Sym(ib, fm.index_sub(i, in_shape))

    def y(i: Idx) -> Sym:
        return Sym(ob, fm.index_sub(i, out_shape))

    def dy(i: Idx) -> Expr:
        return D(E, y(i)) if act else Sym("δ", fm.index_sub(i, out_shape))

    def dx(i: Idx) -> Expr:
        return Sym("δ", fm.index_sub(i, in_shape)) if ib == "z" else D(E, x(i))

    def param(p: str, i: Idx) -> Sym:
        return Sym(pbase[p].name, fm.index_sub(i, pshapes[p]))

    delta = D(E, Sym(ob)) if act else Sym("δ")
    return Names(x, y, dy, dx, param, Sym(ib), Sym(ob), delta, pbase)


def _notes_names(net: Any) -> list[Names] | None:
    """Seed 000's naming for one or two dense layers (each with at most one activation after it) on at
    most 8 inputs, at most 8 units each; None for any other network."""
    layers, shape = net.layers, net.input_shape
    if len(shape) != 1 or shape[0] > 8:
        return None
    groups, i = [], 0
    while i < len(layers):
        if type(layers[i]) is not Dense or layers[i].units > 8:
            return None
        act = i + 1 < len(layers) and layers[i + 1].elementwise
        groups.append((layers[i].units, act))
        i += 2 if act else 1
    if len(groups) not in (1, 2):
        return None
    names: list[Names] = []
    prev, prev_base, n_in, offset = _unit("i", ""), Sym("i"), shape[0], 0
    for (units, act), u in zip(groups, "o" if len(groups) == 1 else "ho", strict=True):
        net_sym, out_sym, delta = _unit("net", u), _unit("out", u), _unit("δ", u)
        names.append(Names(
            x=prev, y=net_sym, dy=delta, dx=lambda k, prev=prev: D(E, prev(k)),
            param=_weights(u, n_in, offset), in_base=prev_base, out_base=Sym("net", u),
            delta_base=Sym("δ", u), param_base={"W": Sym("w"), "b": Sym("b", u)}, notes=True,
        ))  # fmt: skip
        if act:
            names.append(Names(
                x=net_sym, y=out_sym, dy=lambda k, out_sym=out_sym: D(E, out_sym(k)), dx=delta,
                param=lambda p, k: Sym(p), in_base=Sym("net", u), out_base=Sym("out", u),
                delta_base=D(E, Sym("out", u)), notes=True,
            ))  # fmt: skip
        offset += units * n_in
        prev, prev_base, n_in = (out_sym if act else net_sym), Sym("out" if act else "net", u), units
    return names


def _unit(name: str, u: str) -> Callable[[Idx], Sym]:
    """Element k of a layer of units u in the seed's naming: net_h1, out_o2, δ_o1 (i₁ for the input)."""
    return lambda k: Sym(name, f"{u}{k[0] + 1}")


def _weights(u: str, n_in: int, offset: int) -> Callable[[str, Idx], Sym]:
    """The seed's w₁, w₂, … numbered row by row after the ``offset`` weights of the layers before, and the
    biases b_h1, b_o1, …"""
    return lambda p, k: (
        Sym("w", str(offset + k[0] * n_in + k[1] + 1)) if p == "W" else Sym("b", f"{u}{k[0] + 1}")
    )


# ---- the values of one layer ---------------------------------------------------------------------------


@dataclass
class LayerValues:
    """What the engine computed at one layer for the traced sample (no batch axis)."""

    layer: Layer
    position: int
    x: np.ndarray  # input
    y: np.ndarray  # output
    dy: np.ndarray  # ∂E/∂y (recorded)
    dx: np.ndarray  # ∂E/∂x (the previous layer's delta, or the input gradient)
    grads: dict[str, np.ndarray]
    names: Names
    source: str  # where x comes from, in words
    next: LayerValues | None = None
    cache: dict[str, Any] = field(default_factory=dict)


def _shape(a: np.ndarray | tuple[int, ...]) -> str:
    shape = a.shape if isinstance(a, np.ndarray) else a
    return "×".join(str(s) for s in shape) if len(shape) else "()"


def _pair(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}×{p[1]}"


# ---- the tracers ----------------------------------------------------------------------------------------


class Tracer:
    """The rules of one layer kind; subclasses override what differs.  This base is the generic tracer."""

    def describe(self, layer: Layer) -> str:
        return f"{layer.kind} (no tracer of its own: generic)"

    def title(self, v: LayerValues) -> str:
        n = v.names
        return (f"{v.layer.name} · {self.describe(v.layer)} · {fm.text(n.in_base)} {_shape(v.x)} → "
                f"{fm.text(n.out_base)} {_shape(v.y)}")  # fmt: skip

    def legend(self, v: LayerValues) -> list[Line]:
        n = v.names
        line: list[str | Expr] = [n.in_base, f": {v.source}; ", n.out_base, ": the output"]
        for p, a in v.layer.params.items():
            if p in n.param_base:
                line += ["; ", n.param_base[p], f": {_PARAM_WORDS.get((v.layer.kind, p), p)} ({_shape(a)})"]
        return [tuple(line), *self.extra_legend(v)]

    def extra_legend(self, v: LayerValues) -> list[Line]:
        vjp = fm.Prod((Sym("Σ", "k"), Sym("δ", "k"), D(Sym("z", "k"), Sym("X", "i"))), tight=True)
        return [
            (
                "values as the layer computes them; backward as the vector-Jacobian product ",
                fm.Rel(D(E, Sym("X", "i")), vjp),
                ", the Jacobian read off the layer's own backward",
            )
        ]

    def back_legend(self, v: LayerValues) -> list[Line]:
        n = v.names
        if v.layer.elementwise:
            return [(n.delta_base, ": from the step above")]
        return [(fm.Rel(n.delta_base, D(E, n.out_base)), ": from the step above")]

    # ---- the generic rules
    def forward(self, v: LayerValues, i: Idx) -> Eq:
        return Eq(v.names.y(i), (Sym("f(X)", fm.index_sub(i, v.y.shape)),), [[float(v.y[i])]])

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        jac = _jacobian(v)
        if jac is None:
            return Eq(v.names.dx(i), (Sym("(Jᵀδ)", fm.index_sub(i, v.x.shape)),), [[float(v.dx[i])]])
        col = jac["x"][:, int(np.ravel_multi_index(i, v.x.shape))]
        return self._vjp(v, v.names.dx(i), v.names.x(i), col)

    def param_grad(self, v: LayerValues, p: str, i: Idx) -> Eq:
        g = v.grads[p]
        jac = _jacobian(v)
        lhs = D(E, v.names.param(p, i))
        if jac is None:
            return Eq(lhs, (Sym("(Jᵀδ)", fm.index_sub(i, g.shape)),), [[float(g[i])]])
        col = jac[p][:, int(np.ravel_multi_index(i, g.shape))]
        return self._vjp(v, lhs, v.names.param(p, i), col)

    def _vjp(self, v: LayerValues, lhs: Expr, wrt: Sym, col: np.ndarray) -> Eq:
        ks = [np.unravel_index(k, v.y.shape) for k in np.flatnonzero(col)]
        ks = [tuple(int(a) for a in k) for k in ks]
        rule = fm.total([fm.Prod((v.names.dy(k), D(v.names.y(k), wrt))) for k in ks])
        terms = [[float(v.dy[k]), float(col[np.ravel_multi_index(k, v.y.shape)])] for k in ks]
        return Eq(lhs, (rule,), terms)


def _jacobian(v: LayerValues) -> dict[str, np.ndarray] | None:
    """``{"x": ∂y/∂x, param: ∂y/∂θ}`` as (outputs, inputs) matrices, from the layer's backward applied to
    each unit vector of its output (the forward cache is still this sample's); None when too large."""
    if "jacobian" in v.cache:
        return v.cache["jacobian"]
    jac = None
    if v.y.size <= GENERIC_LIMIT:
        jac = {"x": np.zeros((v.y.size, v.x.size))}
        jac.update({p: np.zeros((v.y.size, g.size)) for p, g in v.grads.items()})
        for k in range(v.y.size):
            unit = np.zeros((1, *v.y.shape))
            unit.reshape(-1)[k] = 1.0
            jac["x"][k] = np.asarray(v.layer.backward(unit)).reshape(-1)
            for p in v.grads:
                jac[p][k] = np.asarray(v.layer.grads[p]).reshape(-1)
    v.cache["jacobian"] = jac
    return jac


class DenseTracer(Tracer):
    """z_j = Σ_i W_ji x_i + b_j;  ∂E/∂W_ji = δ_j x_i (through a following activation: ∂E/∂a_j · g′(z_j) ·
    x_i, the seed's three factors);  ∂E/∂b_j = δ_j;  ∂E/∂x_i = Σ_j δ_j W_ji."""

    def describe(self, layer: Layer) -> str:
        return f"dense, {layer.units} units"

    def extra_legend(self, v: LayerValues) -> list[Line]:
        return []

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n, (j,) = v.names, i
        W, b = v.layer.params["W"], v.layer.params["b"]
        ks = range(v.x.size)
        rule = fm.total([*(fm.prod(n.param("W", (j, k)), n.x((k,))) for k in ks), n.param("b", (j,))])
        return Eq(n.y(i), (rule,), [*([float(W[j, k]), float(v.x[k])] for k in ks), [float(b[j])]])

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n, (k,) = v.names, i
        W = v.layer.params["W"]
        js = range(v.y.size)
        rule = fm.total([fm.prod(n.dy((j,)), n.param("W", (j, k))) for j in js])
        return Eq(n.dx(i), (rule,), [[float(v.dy[j]), float(W[j, k])] for j in js])

    def param_grad(self, v: LayerValues, p: str, i: Idx) -> Eq:
        n, j = v.names, i[0]
        lhs = D(E, n.param(p, i))
        act = v.next
        g = slope(act) if act is not None and act.layer.elementwise else None
        if g is None:  # δ_j x_i, or δ_j
            if p == "W":
                return Eq(lhs, (fm.prod(n.dy((j,)), n.x((i[1],))),), [[float(v.dy[j]), float(v.x[i[1]])]])
            return Eq(lhs, (n.dy((j,)),), [[float(v.dy[j])]])
        a, z = act.names.y((j,)), n.y((j,))
        chain = [D(E, a), D(a, z)]
        factors = [float(act.dy[j]), float(g[j])]
        if p == "W":
            chain.append(D(z, n.param(p, i)))
            factors.append(float(v.x[i[1]]))
        return Eq(lhs, (fm.Prod(tuple(chain)),), [factors])


# ---- activations


def slope(v: LayerValues) -> np.ndarray | None:
    """g′ at the layer's input, computed as the engine's backward does; None for an unknown kind."""
    layer, x, y = v.layer, v.x, v.y
    kind = type(layer)
    if kind is Sigmoid:
        return (1.0 - y) * y
    if kind is Tanh:
        return 1.0 - y * y
    if kind is ReLU:
        return (x > 0).astype(np.float64)
    if kind is LeakyReLU:
        return (x > 0) * (1.0 - layer.alpha) + layer.alpha
    if kind is Identity:
        return np.ones_like(x)
    return None


class ActivationTracer(Tracer):
    """a = g(z);  ∂E/∂z = ∂E/∂a · g′(z)."""

    def describe(self, layer: Layer) -> str:
        if type(layer) is LeakyReLU:
            return f"leaky relu, α = {layer.alpha:g}"
        return {Sigmoid: "sigmoid σ", Tanh: "tanh", ReLU: "relu", Identity: "identity"}[type(layer)]

    def extra_legend(self, v: LayerValues) -> list[Line]:
        z, a = Sym("z"), Sym("a")
        kind = type(v.layer)
        if kind is Sigmoid:
            return [
                (
                    fm.Rel(
                        fm.Call("σ", (z,)), fm.Frac(Int(1), fm.Sum((Int(1), fm.Call("exp", (fm.Neg(z),)))))
                    ),
                    ", ",
                    fm.Rel(fm.Call("σ′", (z,)), fm.Prod((a, fm.sub(Int(1), a)), tight=True)),
                )
            ]
        if kind is Tanh:
            return [(fm.Rel(fm.Call("tanh′", (z,)), fm.sub(Int(1), fm.Pow(a, Int(2)))),)]
        if kind is ReLU:
            return [(fm.Call("relu′", (z,)), " = 1 for z > 0, else 0 (0 at the kink z = 0)")]
        if kind is LeakyReLU:
            return [(fm.Call("g′", (z,)), f" = 1 for z > 0, else α = {v.layer.alpha:g}")]
        return []

    def _g(self, v: LayerValues, z: Expr) -> Expr:
        kind = type(v.layer)
        if kind is LeakyReLU:
            return fm.Call("max", (z, fm.Prod((Sym("α"), z))))
        return {Sigmoid: fm.Call("σ", (z,)), Tanh: fm.Call("tanh", (z,)), ReLU: fm.Call("max", (z, Int(0))),
                Identity: z}[kind]  # fmt: skip

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n, z, a = v.names, float(v.x[i]), float(v.y[i])
        kind = type(v.layer)
        rules = (self._g(v, n.x(i)),)
        if kind is Sigmoid:
            rules += (fm.Frac(Int(1), fm.Sum((Int(1), fm.Call("exp", (fm.Neg(n.x(i)),))))),)
            nums: Expr = fm.Frac(Int(1), fm.Sum((Int(1), fm.Call("exp", (Num(-z),)))))
            return Eq(n.y(i), rules, [[a]], nums)
        if kind is LeakyReLU:
            terms = [[z]] if z > 0 else [[v.layer.alpha, z]]
            return Eq(n.y(i), rules, terms, fm.Call("max", (Num(z), fm.Prod((Num(v.layer.alpha), Num(z))))))
        if kind is ReLU:
            return Eq(n.y(i), rules, [[z]] if z > 0 else [], fm.Call("max", (Num(z), Int(0))))
        if kind is Identity:
            return Eq(n.y(i), rules, [[z]])
        return Eq(n.y(i), rules, [[a]], fm.Call("tanh", (Num(z),)))

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n = v.names
        z, a = n.x(i), n.y(i)
        kind = type(v.layer)
        g = {Sigmoid: fm.Prod((a, fm.sub(Int(1), a)), tight=True), Tanh: fm.sub(Int(1), fm.Pow(a, Int(2))),
             ReLU: fm.Call("relu′", (z,)), LeakyReLU: fm.Call("g′", (z,)),
             Identity: Int(1)}[kind]  # fmt: skip
        rules = (fm.Prod((n.dy(i), D(a, z))), fm.Prod((n.dy(i), g)))
        return Eq(n.dx(i), rules, [[float(v.dy[i]), float(slope(v)[i])]])


# ---- convolution


def _conv_geometry(layer: Layer) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    return tuple(layer.kernel), tuple(layer.stride), tuple(layer.padding)  # type: ignore[return-value]


class ConvTracer(Tracer):
    """z_fij = Σ_c,a,b F_fcab X_c,(i·s+a−p),(j·s+b−p) + b (cross-correlation, seeds 000 and 004);
    ∂E/∂F = Σ_ij δ_ij X…;  ∂E/∂b = Σ_ij δ_ij (tied) or δ_ij (untied);  ∂E/∂X = Σ δ F over the windows
    that read X.  Positions on the zero padding contribute nothing and are left out of the sums."""

    def describe(self, layer: Layer) -> str:
        (kh, kw), s, p = _conv_geometry(layer)
        return (f"conv, {layer.filters} filter{'s' * (layer.filters != 1)} {kh}×{kw}, stride {_pair(s)}, "
                f"padding {_pair(p)}, {layer.bias} bias")  # fmt: skip

    def extra_legend(self, v: LayerValues) -> list[Line]:
        return []

    def _reads(self, v: LayerValues, f_i_j: Idx) -> list[tuple[Idx, Idx]]:
        """(kernel index, input index) of every product in output element (f, i, j), padding left out."""
        f, i, j = f_i_j
        (kh, kw), (sh, sw), (ph, pw) = _conv_geometry(v.layer)
        c_in, h, w = v.x.shape
        out = []
        for c in range(c_in):
            for a in range(kh):
                r = i * sh + a - ph
                for b in range(kw):
                    q = j * sw + b - pw
                    if 0 <= r < h and 0 <= q < w:
                        out.append(((f, c, a, b), (c, r, q)))
        return out

    def _bias(self, v: LayerValues, i: Idx) -> Idx:
        return (i[0],) if v.layer.bias == "tied" else i

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n = v.names
        W, b = v.layer.params["W"], v.layer.params["b"]
        reads = self._reads(v, i)
        bi = self._bias(v, i)
        rule = fm.total([*(fm.prod(n.param("W", k), n.x(x)) for k, x in reads), n.param("b", bi)])
        terms = [*([float(W[k]), float(v.x[x])] for k, x in reads), [float(b[bi])]]
        return Eq(n.y(i), (rule,), terms)

    def param_grad(self, v: LayerValues, p: str, i: Idx) -> Eq:
        n = v.names
        lhs = D(E, n.param(p, i))
        f = i[0]
        _, ho, wo = v.y.shape
        if p == "b":
            outs = [(f, a, b) for a in range(ho) for b in range(wo)] if v.layer.bias == "tied" else [i]
            return Eq(lhs, (fm.total([n.dy(o) for o in outs]),), [[float(v.dy[o])] for o in outs])
        pairs = []
        for a in range(ho):
            for b in range(wo):
                pairs += [((f, a, b), x) for k, x in self._reads(v, (f, a, b)) if k == i]
        rule = fm.total([fm.prod(n.dy(o), n.x(x)) for o, x in pairs])
        return Eq(lhs, (rule,), [[float(v.dy[o]), float(v.x[x])] for o, x in pairs])

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n = v.names
        W = v.layer.params["W"]
        c, r, q = i
        (kh, kw), (sh, sw), (ph, pw) = _conv_geometry(v.layer)
        f_out, ho, wo = v.y.shape
        pairs = []
        for f in range(f_out):
            for a_i in range(ho):
                a = r + ph - a_i * sh
                if not 0 <= a < kh:
                    continue
                for b_j in range(wo):
                    b = q + pw - b_j * sw
                    if 0 <= b < kw:
                        pairs.append(((f, a_i, b_j), (f, c, a, b)))
        rule = fm.total([fm.prod(n.dy(o), n.param("W", k)) for o, k in pairs])
        return Eq(n.dx(i), (rule,), [[float(v.dy[o]), float(W[k])] for o, k in pairs])


# ---- pooling


def _windows_over(v: LayerValues, i: Idx) -> list[Idx]:
    """Input indices of output element (c, i, j)'s window, row-major."""
    (kh, kw), (sh, sw) = tuple(v.layer.size), tuple(v.layer.stride)
    c, a0, b0 = i[0], i[1] * sh, i[2] * sw
    return [(c, a0 + a, b0 + b) for a in range(kh) for b in range(kw)]


def _windows_of(v: LayerValues, i: Idx) -> list[Idx]:
    """Output elements whose window holds input element (c, r, q), row-major."""
    (kh, kw), (sh, sw) = tuple(v.layer.size), tuple(v.layer.stride)
    c, r, q = i
    _, ho, wo = v.y.shape
    rows = [a for a in range(ho) if a * sh <= r < a * sh + kh]
    cols = [b for b in range(wo) if b * sw <= q < b * sw + kw]
    return [(c, a, b) for a in rows for b in cols]


class PoolTracer(Tracer):
    """Windows of size k at stride s; each mode's rule in its subclass."""

    def describe(self, layer: Layer) -> str:
        k, s = tuple(layer.size), tuple(layer.stride)
        mode = f"lp, p = {layer.p:g}" if layer.mode == "lp" else layer.mode
        return f"pool, {mode}, {k[0]}×{k[1]} windows, stride {_pair(s)}"

    def extra_legend(self, v: LayerValues) -> list[Line]:
        return []


class MaxPoolTracer(PoolTracer):
    """z = max over the window; δ goes back through the mask M (1 at the window's first maximum, in
    row-major order, else 0; seeds 002 and 004); overlapping windows add."""

    def _argmax(self, v: LayerValues, i: Idx) -> Idx | None:
        top = v.y[i]
        return next((x for x in _windows_over(v, i) if v.x[x] == top), None)

    def back_legend(self, v: LayerValues) -> list[Line]:
        lines = super().back_legend(v)
        lines.append((Sym("M", "ij"), ": the routing mask of window ij: 1 at the window's maximum (the first "
                      "in row-major order on ties), else 0",))  # fmt: skip
        if v.y.size <= 16:
            routes = []
            for i in np.ndindex(*v.y.shape):
                at = self._argmax(v, i)
                if at is not None:
                    routes += [", " if routes else "", v.names.y(i), " → ", v.names.x(at)]
            lines.append(("routing: ", *routes))
        return lines

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n = v.names
        win = _windows_over(v, i)
        at = self._argmax(v, i)
        rules: tuple[Expr, ...] = (fm.Call("max", tuple(n.x(x) for x in win)),)
        if at is not None:
            rules += (n.x(at),)
        nums = fm.Call("max", tuple(Num(float(v.x[x])) for x in win))
        return Eq(n.y(i), rules, [[float(v.x[at])]] if at is not None else [[float(v.y[i])]], nums)

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n = v.names
        outs = _windows_of(v, i)
        rule = fm.total([fm.prod(n.dy(o), Sym("M", fm.index_sub(o[1:], v.y.shape[1:]))) for o in outs])
        terms = [[float(v.dy[o]), 1.0 if self._argmax(v, o) == i else 0.0] for o in outs]
        return Eq(n.dx(i), (rule,), terms)


class MeanPoolTracer(PoolTracer):
    """z = (Σ window) / k²; each input of a window gets δ / k² (seed 003's upsample ÷ scale²)."""

    def _k2(self, v: LayerValues) -> int:
        kh, kw = v.layer.size
        return int(kh * kw)

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n, k2 = v.names, self._k2(v)
        win = _windows_over(v, i)
        rule = fm.Frac(fm.total([n.x(x) for x in win]), Int(k2))
        nums = fm.Frac(fm.total([Num(float(v.x[x])) for x in win]), Int(k2))
        return Eq(n.y(i), (rule,), [[1.0 / k2, float(v.x[x])] for x in win], nums)

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n, k2 = v.names, self._k2(v)
        outs = _windows_of(v, i)
        rule = fm.Frac(fm.total([n.dy(o) for o in outs]), Int(k2)) if outs else Int(0)
        nums = fm.Frac(fm.total([Num(float(v.dy[o])) for o in outs]), Int(k2)) if outs else Int(0)
        return Eq(n.dx(i), (rule,), [[float(v.dy[o]), 1.0 / k2] for o in outs], nums)


class LpPoolTracer(PoolTracer):
    """z = (Σ|X|^p)^{1/p};  ∂z/∂X = z^{1−p} |X|^{p−1} sgn X = (Σ|X|^p)^{1/p − 1} |X|^{p−1} sgn X (seed 000
    §4.2), taken as 0 in an all-zero window."""

    def extra_legend(self, v: LayerValues) -> list[Line]:
        p = float(v.layer.p)
        dz = fm.Prod(
            (
                fm.Pow(Sym("z"), fm.sub(Int(1), Sym("p"))),
                fm.Pow(fm.Abs(Sym("X")), fm.sub(Sym("p"), Int(1))),
                fm.Call("sgn", (Sym("X"),)),
            )
        )
        return [
            (
                fm.Rel(Sym("p"), Int(int(p)) if p == int(p) else Num(p)),
                "; ",
                fm.Rel(D(Sym("z"), Sym("X")), dz),
                " (0 in an all-zero window)",
            )
        ]

    def back_legend(self, v: LayerValues) -> list[Line]:
        return super().back_legend(v) + self.extra_legend(v)

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n, p = v.names, float(v.layer.p)
        win = _windows_over(v, i)
        pe = Int(int(p)) if p == int(p) else Num(p)
        rule = fm.Pow(fm.total([fm.Pow(fm.Abs(n.x(x)), pe) for x in win]), fm.Frac(Int(1), pe))
        nums = fm.Pow(fm.total([fm.Pow(fm.Abs(Num(float(v.x[x]))), pe) for x in win]), fm.Frac(Int(1), pe))
        return Eq(n.y(i), (rule,), [[float(v.y[i])]], nums)

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n, p = v.names, float(v.layer.p)
        x = float(v.x[i])
        outs = _windows_of(v, i)
        xs = np.abs(x) ** (p - 1.0) if p != 1.0 else 1.0
        sign = float(np.sign(x))
        rules, terms, nums = [], [], []
        for o in outs:
            z = float(v.y[o])
            zf = float(z ** (1.0 - p)) if z > 0 else 0.0
            rules.append(
                fm.Prod(
                    (
                        n.dy(o),
                        fm.Pow(n.y(o), fm.sub(Int(1), Sym("p"))),
                        fm.Pow(fm.Abs(n.x(i)), fm.sub(Sym("p"), Int(1))),
                        fm.Call("sgn", (n.x(i),)),
                    )
                )
            )
            terms.append([float(v.dy[o]), zf, float(xs), sign])
            nums.append(fm.Prod((Num(float(v.dy[o])), Num(zf), Num(float(xs)), Num(sign))))
        return Eq(n.dx(i), (fm.total(rules),), terms, fm.total(nums))


# ---- subsampling, flatten, identity-like, batchnorm


class SubsampleTracer(Tracer):
    """z_c = β_c · down(X)_c + b_c with down the sum over k×k blocks (seed 003);
    ∂E/∂β_c = Σ δ ∘ d (d = down(X));  ∂E/∂b_c = Σ δ;  ∂E/∂X = β · up(δ)."""

    def describe(self, layer: Layer) -> str:
        return f"subsample, scale {layer.scale}"

    def extra_legend(self, v: LayerValues) -> list[Line]:
        return [(Sym("d"), f" = down(X): the sum of each {v.layer.scale}×{v.layer.scale} block")]

    def back_legend(self, v: LayerValues) -> list[Line]:
        return super().back_legend(v) + self.extra_legend(v)

    def _block(self, v: LayerValues, i: Idx) -> list[Idx]:
        k = v.layer.scale
        c, a0, b0 = i[0], i[1] * k, i[2] * k
        return [(c, a0 + a, b0 + b) for a in range(k) for b in range(k)]

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n = v.names
        beta, b = v.layer.params["beta"], v.layer.params["b"]
        c = (i[0],)
        block = self._block(v, i)
        rule = fm.Sum((fm.Prod((n.param("beta", c), fm.total([n.x(x) for x in block]))), n.param("b", c)))
        nums = fm.Sum((fm.Prod((Num(float(beta[c])), fm.total([Num(float(v.x[x])) for x in block]))),
                       Num(float(b[c]))))  # fmt: skip
        terms = [*([float(beta[c]), float(v.x[x])] for x in block), [float(b[c])]]
        return Eq(n.y(i), (rule,), terms, nums)

    def _down(self, v: LayerValues, o: Idx) -> float:
        total = 0.0
        for x in self._block(v, o):  # row-major, as the engine adds its offsets
            total = total + float(v.x[x]) if total else float(v.x[x])
        return total

    def param_grad(self, v: LayerValues, p: str, i: Idx) -> Eq:
        n = v.names
        _, ho, wo = v.y.shape
        outs = [(i[0], a, b) for a in range(ho) for b in range(wo)]
        lhs = D(E, n.param(p, i))
        if p == "b":
            return Eq(lhs, (fm.total([n.dy(o) for o in outs]),), [[float(v.dy[o])] for o in outs])
        rule = fm.total([fm.prod(n.dy(o), Sym("d", fm.index_sub(o, v.y.shape))) for o in outs])
        return Eq(lhs, (rule,), [[float(v.dy[o]), self._down(v, o)] for o in outs])

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n, k = v.names, v.layer.scale
        o = (i[0], i[1] // k, i[2] // k)
        if o[1] >= v.y.shape[1] or o[2] >= v.y.shape[2]:  # the remainder no block covers
            return Eq(n.dx(i), (Int(0),), [])
        beta = v.layer.params["beta"]
        return Eq(
            n.dx(i), (fm.prod(n.param("beta", (i[0],)), n.dy(o)),), [[float(beta[i[0]]), float(v.dy[o])]]
        )


class FlattenTracer(Tracer):
    """z_k = X_cij with k = c·H·W + i·W + j (C-major);  ∂E/∂X_cij = δ_k."""

    def describe(self, layer: Layer) -> str:
        return "flatten, C-major"

    def extra_legend(self, v: LayerValues) -> list[Line]:
        return []

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        src = tuple(int(a) for a in np.unravel_index(i[0], v.x.shape))
        return Eq(v.names.y(i), (v.names.x(src),), [[float(v.x[src])]])

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        k = (int(np.ravel_multi_index(i, v.x.shape)),)
        return Eq(v.names.dx(i), (v.names.dy(k),), [[float(v.dy[k])]])


class PassTracer(Tracer):
    """Dropout outside training: z = X, ∂E/∂X = δ."""

    def describe(self, layer: Layer) -> str:
        return f"dropout, rate {layer.rate:g}: the identity outside training"

    def extra_legend(self, v: LayerValues) -> list[Line]:
        return []

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        return Eq(v.names.y(i), (v.names.x(i),), [[float(v.x[i])]])

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        return Eq(v.names.dx(i), (v.names.dy(i),), [[float(v.dy[i])]])


class BatchNormTracer(Tracer):
    """Inference form, with the running statistics μ, σ² of channel c:
    z = γ_c · x̂ + β_c, x̂ = (X − μ_c)/√(σ²_c + ε);  ∂E/∂X = δ · γ_c/√(σ²_c + ε);
    ∂E/∂γ_c = Σ δ · x̂;  ∂E/∂β_c = Σ δ over the channel's positions."""

    def describe(self, layer: Layer) -> str:
        return f"batchnorm, eps {layer.eps:g}, running statistics (inference)"

    def extra_legend(self, v: LayerValues) -> list[Line]:
        xhat = fm.Frac(fm.sub(Sym("X"), Sym("μ")), fm.Sqrt(fm.Sum((Sym("σ", sup="2"), Sym("ε")))))
        return [
            (
                Sym("μ"),
                ", ",
                Sym("σ", sup="2"),
                ": the running mean and variance; ",
                fm.Rel(Sym("x̂"), xhat),
                f"; ε = {v.layer.eps:g}",
            )
        ]

    def _stats(self, v: LayerValues) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """μ, σ², 1/√(σ² + ε) per channel, as the engine computes them."""
        mean, var = v.layer.state["running_mean"], v.layer.state["running_var"]
        return mean, var, 1.0 / np.sqrt(var + v.layer.eps)

    def _xhat(self, v: LayerValues, i: Idx) -> float:
        mean, _, inv = self._stats(v)
        return float((v.x[i] - mean[i[0]]) * inv[i[0]])

    def forward(self, v: LayerValues, i: Idx) -> Eq:
        n, c = v.names, (i[0],)
        mean, var, _ = self._stats(v)
        gamma, beta = v.layer.params["gamma"], v.layer.params["beta"]
        cs = fm.index_sub(c, (v.x.shape[0],))
        mu, s2, eps = Sym("μ", cs), Sym("σ", cs, "2"), Sym("ε")
        xhat = fm.Frac(fm.sub(n.x(i), mu), fm.Sqrt(fm.Sum((s2, eps))))
        rule = fm.Sum((fm.Prod((n.param("gamma", c), xhat)), n.param("beta", c)))
        nums = fm.Sum((fm.Prod((Num(float(gamma[c])), fm.Frac(fm.sub(Num(float(v.x[i])), Num(float(mean[c]))),
                                                             fm.Sqrt(fm.Sum((Num(float(var[c])),
                                                                             Num(v.layer.eps))))))),
                       Num(float(beta[c]))))  # fmt: skip
        return Eq(n.y(i), (rule,), [[float(gamma[c]), self._xhat(v, i)], [float(beta[c])]], nums)

    def input_grad(self, v: LayerValues, i: Idx) -> Eq:
        n, c = v.names, (i[0],)
        _, _, inv = self._stats(v)
        gamma = v.layer.params["gamma"]
        cs = fm.index_sub(c, (v.x.shape[0],))
        rule = fm.Prod(
            (n.dy(i), fm.Frac(n.param("gamma", c), fm.Sqrt(fm.Sum((Sym("σ", cs, "2"), Sym("ε"))))))
        )
        return Eq(n.dx(i), (rule,), [[float(v.dy[i]), float(gamma[c]), float(inv[c])]])

    def param_grad(self, v: LayerValues, p: str, i: Idx) -> Eq:
        n = v.names
        lhs = D(E, n.param(p, i))
        positions = [(i[0], *rest) for rest in np.ndindex(*v.y.shape[1:])]
        if p == "beta":
            return Eq(lhs, (fm.total([n.dy(o) for o in positions]),), [[float(v.dy[o])] for o in positions])
        rule = fm.total([fm.prod(n.dy(o), Sym("x̂", fm.index_sub(o, v.y.shape))) for o in positions])
        return Eq(lhs, (rule,), [[float(v.dy[o]), self._xhat(v, o)] for o in positions])


#: layer class → tracer; exact classes only (a subclass may compute something else: it gets the generic)
TRACERS: dict[type[Layer], Tracer] = {
    Dense: DenseTracer(), Conv2D: ConvTracer(), MaxPool: MaxPoolTracer(), MeanPool: MeanPoolTracer(),
    LpPool: LpPoolTracer(), Subsample: SubsampleTracer(), Flatten: FlattenTracer(), Dropout: PassTracer(),
    BatchNorm: BatchNormTracer(), Sigmoid: ActivationTracer(), Tanh: ActivationTracer(),
    ReLU: ActivationTracer(), LeakyReLU: ActivationTracer(), Identity: ActivationTracer(),
}  # fmt: skip
GENERIC = Tracer()


def tracer_for(layer: Layer, generic: bool = False) -> Tracer:
    """The tracer of ``layer``'s exact class, else the generic one (always with ``generic``)."""
    return GENERIC if generic else TRACERS.get(type(layer), GENERIC)
