"""Hyper-parameters: the constructor arguments of a layer or an optimiser, declared once in its signature.

A class's hyper-parameters are the parameters of its ``__init__`` (``name``, ``init`` and ``**kwargs``
left out), with their type annotations and defaults.  Everything else reads them from there: the
config schema (``cnnbp.config``), the checkpoint's ``/model`` record (``hyper()``) and the rebuild
from it (``from_hyper``), and :func:`conform`, which checks a value in the engine itself.

Annotations are plain types (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``tuple[int, int]``,
``X | None``, unions of these) optionally wrapped in ``Annotated[..., Bound(...)]``; a bound applies to
every number of the value (both ints of a pair).  :func:`describe` words an annotation as the config
errors do (``an integer ≥ 1 or a pair [h, w] of them``).
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

__all__ = [
    "Bound",
    "alternatives",
    "check_hyper",
    "set_checked",
    "HyperParam",
    "NonNegFloat",
    "NonNegInt",
    "Padding",
    "PositiveFloat",
    "PositiveInt",
    "Size",
    "conform",
    "describe",
    "hyper_params",
    "hyper_values",
    "plain",
]


@dataclass(frozen=True)
class Bound:
    """Bounds on a number (``ge`` ≤ x, ``gt`` < x, x < ``lt``, x ≤ ``le``), for each number of the value."""

    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, x: float) -> bool:
        return (
            (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.lt is None or x < self.lt)
            and (self.le is None or x <= self.le)
        )

    def words(self) -> str:
        """``≥ 1``, ``> 0``, ``in [0, 1)``."""
        low = (
            (f"{_n(self.ge)}", "[")
            if self.ge is not None
            else (f"{_n(self.gt)}", "(")
            if self.gt is not None
            else None
        )
        high = (
            (f"{_n(self.lt)}", ")")
            if self.lt is not None
            else (f"{_n(self.le)}", "]")
            if self.le is not None
            else None
        )
        if low and high:
            return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
        if low:
            return f"{'≥' if low[1] == '[' else '>'} {low[0]}"
        if high:
            return f"{'<' if high[1] == ')' else '≤'} {high[0]}"
        return ""


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


PositiveInt = Annotated[int, Bound(ge=1)]
NonNegInt = Annotated[int, Bound(ge=0)]
PositiveFloat = Annotated[float, Bound(gt=0)]
NonNegFloat = Annotated[float, Bound(ge=0)]
#: a window, kernel or stride: an int or a pair (h, w), each ≥ 1
Size = Annotated[int | tuple[int, int], Bound(ge=1)]
#: zero padding: an int or a pair (h, w), each ≥ 0
Padding = Annotated[int | tuple[int, int], Bound(ge=0)]


@dataclass(frozen=True)
class HyperParam:
    """One constructor argument: its name, annotation (extras kept) and default (``Parameter.empty``)."""

    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


_SKIP = ("self", "name", "init")


@cache
def hyper_params(cls: type) -> tuple[HyperParam, ...]:
    """The hyper-parameters of ``cls``: its ``__init__``'s named parameters but ``name`` and ``init``."""
    init = cls.__init__
    hints = typing.get_type_hints(init, include_extras=True)
    out = []
    for p in inspect.signature(init).parameters.values():
        if p.name in _SKIP or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append(HyperParam(p.name, hints.get(p.name, Any), p.default))
    return tuple(out)


def plain(value: Any) -> Any:
    """A hyper-parameter value as plain data: tuples become lists, NumPy scalars Python numbers."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def hyper_values(obj: Any, spec_class: type | None = None) -> dict[str, Any]:
    """``{name: plain value}`` of ``obj``'s hyper-parameters, read from its attributes of the same names.

    ``spec_class`` (default ``type(obj)``) is the class whose signature declares them.  A value that
    is None where None is also the default is left out.
    """
    out = {}
    for p in hyper_params(spec_class or type(obj)):
        value = plain(getattr(obj, p.name))
        if value is not None or p.default is not None:
            out[p.name] = value
    return out


# ---- checking a value against an annotation ------------------------------------------------------------


def _split(annotation: Any) -> tuple[Any, Bound | None]:
    """(the bare type, its Bound) of an ``Annotated`` annotation; (annotation, None) otherwise."""
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        bound = next((e for e in extras if isinstance(e, Bound)), None)
        inner, inner_bound = _split(base)
        return inner, bound or inner_bound
    return annotation, None


def alternatives(annotation: Any, bound: Bound | None = None) -> list[tuple[Any, Bound | None]]:
    """The alternatives of an annotation as (bare type, bound) pairs, unions and ``Annotated`` unwrapped
    (a bound on a union applies to each member without its own)."""
    kind, own = _split(annotation)
    bound = own or bound
    if get_origin(kind) in (Union, types.UnionType):
        return [alt for member in get_args(kind) for alt in alternatives(member, bound)]
    return [(kind, bound)]


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


_NO = object()


def _conform_one(value: Any, kind: Any, bound: Bound | None) -> Any:
    """``value`` normalised for one bare type, or ``_NO`` when it does not fit."""
    ok = bound.holds if bound is not None else (lambda _x: True)
    if kind is type(None):
        return None if value is None else _NO
    if kind is bool:
        return value if isinstance(value, bool) else _NO
    if kind is int:
        return int(value) if _is_int(value) and ok(value) else _NO
    if kind is float:
        return float(value) if _is_number(value) and ok(float(value)) else _NO
    if kind is str:
        return value if isinstance(value, str) else _NO
    if get_origin(kind) is Literal:
        return value if any(value == c and type(value) is type(c) for c in get_args(kind)) else _NO
    if get_origin(kind) is tuple:
        items = get_args(kind)
        if not isinstance(value, (tuple, list)) or len(value) != len(items):
            return _NO
        out = tuple(_conform_alternatives(v, t, bound) for v, t in zip(value, items, strict=True))
        return _NO if any(o is _NO for o in out) else out
    if kind is Any:
        return value
    return value if isinstance(kind, type) and isinstance(value, kind) else _NO


def _conform_alternatives(value: Any, annotation: Any, bound: Bound | None = None) -> Any:
    for kind, b in alternatives(annotation, bound):
        out = _conform_one(value, kind, b)
        if out is not _NO:
            return out
    return _NO


def conform(value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` and normalised (an int of ``int | tuple[int, int]`` stays
    an int, lists become tuples); ValueError ``expected <describe(annotation)>`` when it does not fit."""
    out = _conform_alternatives(value, annotation)
    if out is _NO:
        raise ValueError(f"expected {describe(annotation)}, got {value!r}")
    return out


def describe(annotation: Any) -> str:
    """Words for what an annotation accepts: ``an integer ≥ 1 or a pair [h, w] of them``."""
    alts = alternatives(annotation)
    nullable = any(kind is type(None) for kind, _ in alts)
    words: list[str] = []
    for kind, bound in alts:
        if kind is not type(None):
            after_int = bool(words) and words[-1].startswith("an integer")
            words.append(_describe_one(kind, bound, after_int))
    text = " or ".join(words)
    return f"{text} (or null)" if nullable else text


def _describe_one(kind: Any, bound: Bound | None, after_int: bool) -> str:
    limits = f" {bound.words()}" if bound is not None and bound.words() else ""
    if kind is bool:
        return "true or false"
    if kind is int:
        return f"an integer{limits}"
    if kind is float:
        return f"a number{limits}"
    if kind is str:
        return "a string"
    if get_origin(kind) is Literal:
        choices = [str(c) for c in get_args(kind)]
        return choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
    if get_origin(kind) is tuple:
        items = get_args(kind)
        if items and all(t is int for t in items) and len(items) == 2:
            return "a pair [h, w] of them" if after_int else f"a pair [h, w] of integers{limits}"
        names = "a pair" if len(items) == 2 else f"a list of {len(items)}"
        words = {describe(t) if bound is None else _describe_one(_split(t)[0], _split(t)[1] or bound, False)
                 for t in items}  # fmt: skip
        if len(words) == 1:
            (word,) = words
            plural = word.replace("a number", "numbers", 1).replace("an integer", "integers", 1)
            return f"{names} of {plural}"
        return f"{names} of values"
    return getattr(kind, "__name__", str(kind))


def _admits_pair(annotation: Any) -> bool:
    return any(get_origin(kind) is tuple for kind, _ in alternatives(annotation))


def check_hyper(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every value of ``values`` conformed to its annotation in ``cls``'s signature, an int given for
    an int-or-pair argument (``Size``) made the pair (n, n).

    Raises ValueError ``<name>: expected ...`` for the first one that does not fit.
    """
    params = {p.name: p for p in hyper_params(cls)}
    out = {}
    for key, value in values.items():
        if key not in params:
            out[key] = value
            continue
        annotation = params[key].annotation
        try:
            checked = conform(value, annotation)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        out[key] = (checked, checked) if _is_int(checked) and _admits_pair(annotation) else checked
    return out


def set_checked(obj: Any, hyper: Mapping[str, Any]) -> None:
    """Set ``hyper`` on ``obj`` as attributes, each conformed to ``type(obj)``'s signature
    (:func:`check_hyper`); ValueError ``<obj.kind>: <name>: expected ...`` for a value that does not fit.
    For classes configured by keyword (optimisers, schedules)."""
    try:
        checked = check_hyper(type(obj), hyper)
    except ValueError as e:
        raise ValueError(f"{obj.kind}: {e}") from None
    for key, value in checked.items():
        setattr(obj, key, value)
