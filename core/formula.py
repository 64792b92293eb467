"""Formulas as small expression trees: what a trace step says, in symbols and with its numbers.

A trace step (:mod:`cnnbp.core.trace`) holds its left-hand side, its rules (the same quantity in
symbols, e.g. ``∂E/∂out_o1 · ∂out_o1/∂net_o1 · ∂net_o1/∂w₅``) and its numbers as trees of the nodes
below.  :func:`text` writes a tree in plain Unicode, as the terminal prints it and the JSON ``formula``
carries it; ``cnnbp.render.trace`` writes the same trees as LaTeX for Markdown and LaTeX output.

Nodes: :class:`Sym` (a symbol with a subscript: δ₁₁, w₅, net_o1), :class:`Num` (a number, printed at
the reader's precision), :class:`Int` (an exact integer), :class:`D` (∂f/∂x), :class:`Prod`,
:class:`Sum`, :class:`Neg`, :class:`Call` (max(…), σ(…), ln …), :class:`Pow`, :class:`Abs`,
:class:`Frac`, :class:`Sqrt`, :class:`Rel` (an equation) and :class:`More` (the "… n more terms" a
long sum is cut to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_SUB = str.maketrans("0123456789,", "₀₁₂₃₄₅₆₇₈₉,")
_SUP = str.maketrans("0123456789+-−", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁻")
MINUS = "−"  # the operator; numbers keep ASCII '-' so they can be copied into code


@dataclass(frozen=True)
class Sym:
    """A symbol: ``name`` (δ, X, net, w) with a subscript (``11``, ``2,11``, ``o1``) and a superscript."""

    name: str
    sub: str = ""
    sup: str = ""


@dataclass(frozen=True)
class Num:
    """A number, written with the reader's precision."""

    value: float


@dataclass(frozen=True)
class Int:
    """An exact integer (a pool's k², the ½ of MSE's denominator)."""

    value: int


@dataclass(frozen=True)
class D:
    """The partial derivative ∂f/∂x."""

    f: Expr
    x: Expr


@dataclass(frozen=True)
class Prod:
    """A product; ``tight`` writes it by juxtaposition (½ Σ_j (y_j − a_j)²) instead of with · or ×."""

    items: tuple[Expr, ...]
    tight: bool = False


@dataclass(frozen=True)
class Sum:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Neg:
    x: Expr


@dataclass(frozen=True)
class Call:
    """``fn(args)``: max, σ, σ′, tanh, ln, exp (written e^x), sgn, …"""

    fn: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Pow:
    base: Expr
    exp: Expr


@dataclass(frozen=True)
class Abs:
    x: Expr


@dataclass(frozen=True)
class Frac:
    num: Expr
    den: Expr


@dataclass(frozen=True)
class Sqrt:
    x: Expr


@dataclass(frozen=True)
class Rel:
    """``lhs = rhs`` (an equation quoted in prose, such as w⁺ = w − α·∂E/∂w)."""

    lhs: Expr
    rhs: Expr


@dataclass(frozen=True)
class More:
    """Stands for ``n`` terms of a sum left out of the display (never of the JSON terms)."""

    n: int


Expr = Sym | Num | Int | D | Prod | Sum | Neg | Call | Pow | Abs | Frac | Sqrt | More | Rel

E = Sym("E")  # the loss of the traced sample


# ---- building -----------------------------------------------------------------------------------------


def prod(*items: Expr) -> Expr:
    """A product, or its only factor."""
    return items[0] if len(items) == 1 else Prod(tuple(items))


def total(items: list[Expr] | tuple[Expr, ...]) -> Expr:
    """A sum, or its only term; ``Int(0)`` for no terms (an empty sum)."""
    if not items:
        return Int(0)
    return items[0] if len(items) == 1 else Sum(tuple(items))


def sub(*items: Expr) -> Expr:
    """``a − b − …``."""
    return Sum((items[0], *(Neg(x) for x in items[1:])))


def from_terms(terms: list[list[float]]) -> Expr:
    """The numbers of a step whose value is Σ_terms Π factors, as that sum of products."""
    return total([prod(*(Num(f) for f in term)) for term in terms])


def index_sub(index: tuple[int, ...], shape: tuple[int, ...]) -> str:
    """The 1-based subscript of an element, as the seeds write them: ``11`` for row 1, column 1 of a
    map, ``2,11`` for channel 2 of a stack of maps, ``3`` for a vector; axes of size 1 are left out,
    and the last two axes are run together when both are below 10."""
    kept = [(i + 1, n) for i, n in zip(index, shape, strict=True)]
    if len(kept) >= 2:
        head, tail = kept[:-2], kept[-2:]
        head = [(i, n) for i, n in head if n > 1]
        rows, cols = tail
        if rows[0] < 10 and cols[0] < 10 and rows[1] > 1 and cols[1] > 1:
            last = [f"{rows[0]}{cols[0]}"]
        else:
            last = [str(i) for i, n in tail if n > 1] or [str(cols[0])]
        parts = [str(i) for i, _ in head] + last
    else:
        parts = [str(i) for i, _ in kept]
    return ",".join(parts)


# ---- plain text ---------------------------------------------------------------------------------------


def number(value: float, precision: int) -> str:
    """``precision`` decimals; scientific when that would hide the value (tiny or huge), never ``-0``."""
    v = float(value)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v != 0 and (abs(v) < 10.0**-precision or abs(v) >= 1e7):
        mantissa, _, exp = f"{v:.{max(precision - 1, 1)}e}".partition("e")
        return f"{mantissa}e{int(exp)}"
    text = f"{v:.{precision}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def sym_text(s: Sym) -> str:
    """δ₁₁, w₅, net_o1, σ²₁, w⁺."""
    out = s.name
    if s.sub:
        out += s.sub.translate(_SUB) if set(s.sub) <= set("0123456789,") else "_" + s.sub
    if s.sup:
        out += s.sup.translate(_SUP) if set(s.sup) <= set("0123456789+-−") else "^" + s.sup
    return out


def negative(x: Expr) -> bool:
    """True when ``x`` prints with a leading minus (so a sum writes it as ``− |x|``)."""
    if isinstance(x, Num):
        return x.value < 0 or (x.value == 0 and math.copysign(1, x.value) < 0)
    if isinstance(x, Int):
        return x.value < 0
    if isinstance(x, Neg):
        return True
    if isinstance(x, Prod) and x.items:
        return negative(x.items[0])
    return False


def flip(x: Expr) -> Expr:
    """``−x`` without the sign: what a sum writes after its ``−``."""
    if isinstance(x, Num):
        return Num(-x.value)
    if isinstance(x, Int):
        return Int(-x.value)
    if isinstance(x, Neg):
        return x.x
    if isinstance(x, Prod):
        return Prod((flip(x.items[0]), *x.items[1:]))
    return x


def _atom(x: Expr) -> bool:
    """Prints without parentheses as a factor or a base."""
    if isinstance(x, Prod):
        return x.tight and not negative(x)
    return isinstance(x, Sym | Int | D | Call | Abs | Sqrt | More) or (isinstance(x, Num) and x.value >= 0)


def _bare(x: Expr, first: bool) -> bool:
    """A factor written without parentheses in a product (a leading negative number too)."""
    return _atom(x) or isinstance(x, Pow | Frac) or (first and isinstance(x, Num))


def _juxtaposed(items: tuple[Expr, ...]) -> bool:
    """Short symbols multiply by juxtaposition, as the seeds write δ₁₁X₁₁."""
    return all(isinstance(i, Sym) and len(i.name) == 1 and set(i.sub) <= set("0123456789") for i in items)


def text(x: Expr, precision: int = 4) -> str:
    """``x`` in plain Unicode, numbers with ``precision`` decimals."""
    t = lambda y: text(y, precision)  # noqa: E731
    if isinstance(x, Sym):
        return sym_text(x)
    if isinstance(x, Num):
        return number(x.value, precision)
    if isinstance(x, Int):
        return str(x.value)
    if isinstance(x, D):
        return f"∂{t(x.f)}/∂{t(x.x)}"
    if isinstance(x, Neg):
        return MINUS + (t(x.x) if _atom(x.x) or isinstance(x.x, Prod) else f"({t(x.x)})")
    if isinstance(x, Prod):
        if x.tight:
            return " ".join(t(i) if _atom(i) or isinstance(i, Pow) else f"({t(i)})" for i in x.items)
        if _juxtaposed(x.items):
            return "".join(t(i) for i in x.items)
        sep = " × " if all(isinstance(i, Num | Int) for i in x.items) else " · "
        parts = [t(i) if _bare(i, k == 0) else f"({t(i)})" for k, i in enumerate(x.items)]
        return sep.join(parts)
    if isinstance(x, Sum):
        out = t(x.items[0])
        for item in x.items[1:]:
            if isinstance(item, More):
                out += " + " + t(item)
            elif negative(item):
                out += f" {MINUS} " + _term(flip(item), precision)
            else:
                out += " + " + _term(item, precision)
        return out
    if isinstance(x, More):
        return f"… ({x.n} more terms)"
    if isinstance(x, Call):
        args = ", ".join(t(a) for a in x.args)
        if x.fn == "exp":
            return f"e^({args})" if not _atom(x.args[0]) or negative(x.args[0]) else f"e^{args}"
        return f"{x.fn}({args})"
    if isinstance(x, Pow):
        base = t(x.base) if _atom(x.base) else f"({t(x.base)})"
        exp = t(x.exp)
        if isinstance(x.exp, Int | Num) and set(exp) <= set("0123456789"):
            return base + exp.translate(_SUP)
        return f"{base}^({exp})"
    if isinstance(x, Abs):
        return f"|{t(x.x)}|"
    if isinstance(x, Frac):
        num = t(x.num) if _atom(x.num) else f"({t(x.num)})"
        den = t(x.den) if _atom(x.den) else f"({t(x.den)})"
        return f"{num}/{den}"
    if isinstance(x, Sqrt):
        return f"√({t(x.x)})"
    if isinstance(x, Rel):
        return f"{t(x.lhs)} = {t(x.rhs)}"
    raise TypeError(f"not a formula node: {x!r}")


def _term(x: Expr, precision: int) -> str:
    """A term after a sum's + or −: parenthesised when it is itself a sum or negative (a − (-0.3))."""
    s = text(x, precision)
    return f"({s})" if isinstance(x, Sum) or negative(x) else s
