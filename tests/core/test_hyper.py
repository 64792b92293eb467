"""Hyper-parameters (``core/hyper.py``): ``conform`` and ``describe`` for every annotation the built-in
layers use, the rejection of bools, non-finite numbers and strings, ``check_hyper``, ``hyper_params`` of
each built-in class, and the ``hyper()`` / ``from_hyper`` round trip of every registered layer."""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args, get_origin

import numpy as np
import pytest

from cnnbp.core import LAYERS, Conv2D, Dense, Flatten, Identity, Layer, LpPool, MaxPool, MeanPool, ShapeError
from cnnbp.core.hyper import (
    Bound,
    HyperParam,
    NonNegFloat,
    NonNegInt,
    Padding,
    PositiveFloat,
    PositiveInt,
    Size,
    alternatives,
    check_hyper,
    conform,
    describe,
    hyper_params,
    plain,
)
from cnnbp.core.init import HeNormal
from cnnbp.core.layers import Pool, ReLU, Sigmoid, Subsample, Tanh

EMPTY = inspect.Parameter.empty
#: the Lp pool's power: a number ≥ 1, or None for "not given"
OptionalPower = Annotated[float, Bound(ge=1)] | None
#: a number in [0, 1), as in a pair of them
Rate = Annotated[float, Bound(ge=0, lt=1)]
BUILT_IN: list[type[Layer]] = [Conv2D, Dense, Pool, Subsample, Flatten, Sigmoid, Tanh, ReLU, Identity]

SIZE_WORDS = "an integer ≥ 1 or a pair [h, w] of them"
PADDING_WORDS = "an integer ≥ 0 or a pair [h, w] of them"


# ---- describe ----------------------------------------------------------------------------------------------
#: (class, argument) → the words for its annotation: every hyper-parameter of every built-in layer
LAYER_WORDS = {
    (Conv2D, "filters"): "an integer ≥ 1",
    (Conv2D, "kernel"): SIZE_WORDS,
    (Conv2D, "stride"): SIZE_WORDS,
    (Conv2D, "padding"): PADDING_WORDS,
    (Conv2D, "bias"): "one of tied, untied",
    (Dense, "units"): "an integer ≥ 1",
    (Pool, "size"): SIZE_WORDS,
    (Pool, "stride"): f"{SIZE_WORDS} (or null)",
    (Pool, "mode"): "one of max, mean, lp",
    (Pool, "p"): "a number ≥ 1 (or null)",
    (Subsample, "scale"): "an integer ≥ 1",
}


def test_the_table_covers_every_built_in_hyper_parameter() -> None:
    """LAYER_WORDS names exactly the hyper-parameters the built-in layers declare."""
    declared = {(cls, p.name) for cls in BUILT_IN for p in hyper_params(cls)}
    assert declared == set(LAYER_WORDS)


@pytest.mark.parametrize(
    ("where", "words"), LAYER_WORDS.items(), ids=[f"{c.__name__}.{n}" for c, n in LAYER_WORDS]
)
def test_describe_each_layer_annotation(where: tuple[type, str], words: str) -> None:
    """``describe`` words a layer's annotation as the config errors do."""
    cls, name = where
    (param,) = [p for p in hyper_params(cls) if p.name == name]
    assert describe(param.annotation) == words


@pytest.mark.parametrize(
    ("annotation", "words"),
    [
        (PositiveInt, "an integer ≥ 1"),
        (NonNegInt, "an integer ≥ 0"),
        (PositiveFloat, "a number > 0"),
        (NonNegFloat, "a number ≥ 0"),
        (Size, SIZE_WORDS),
        (Padding, PADDING_WORDS),
        (Size | None, f"{SIZE_WORDS} (or null)"),
        (OptionalPower, "a number ≥ 1 (or null)"),
        (PositiveFloat | None, "a number > 0 (or null)"),
        (Literal["max", "mean", "lp"], "one of max, mean, lp"),
        (Literal["tied", "untied"], "one of tied, untied"),
        (PositiveInt | Literal["auto"], "an integer ≥ 1 or auto"),  # a single choice is named alone
        (tuple[int, int], "a pair [h, w] of integers"),
        (Annotated[tuple[int, int], Bound(ge=1)], "a pair [h, w] of integers ≥ 1"),
        (Rate, "a number in [0, 1)"),
        (Annotated[float, Bound(gt=0, le=1)], "a number in (0, 1]"),
        (Annotated[float, Bound(le=1)], "a number ≤ 1"),
        (Annotated[int, Bound(lt=5)], "an integer < 5"),
        (Annotated[float, Bound(ge=0.5)], "a number ≥ 0.5"),
        (Annotated[int, Bound()], "an integer"),
        (int, "an integer"),
        (float, "a number"),
        (bool, "true or false"),
        (str, "a string"),
        (int | str, "an integer or a string"),
    ],
    ids=str,
)
def test_describe(annotation: Any, words: str) -> None:
    assert describe(annotation) == words


def test_bound_holds_and_words() -> None:
    """Each side of a Bound is inclusive (ge, le) or strict (gt, lt); no side holds for everything."""
    assert Bound(ge=1).holds(1) and not Bound(ge=1).holds(0.999)
    assert Bound(gt=0).holds(1e-300) and not Bound(gt=0).holds(0)
    assert Bound(lt=1).holds(0.999) and not Bound(lt=1).holds(1)
    assert Bound(le=1).holds(1) and not Bound(le=1).holds(1.001)
    assert Bound(ge=0, lt=1).holds(0) and not Bound(ge=0, lt=1).holds(1)
    assert Bound().holds(-1e300) and Bound().words() == ""
    assert [Bound(ge=1).words(), Bound(gt=0).words(), Bound(lt=1).words(), Bound(le=2.5).words()] == [
        "≥ 1", "> 0", "< 1", "≤ 2.5"
    ]
    assert [Bound(ge=0, lt=1).words(), Bound(gt=0, le=1).words(), Bound(ge=-1, le=1).words()] == [
        "in [0, 1)", "in (0, 1]", "in [-1, 1]"
    ]


# ---- conform: accepted values, normalised ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("annotation", "value", "expected"),
    [
        (PositiveInt, 3, 3),
        (PositiveInt, np.int64(3), 3),
        (NonNegInt, 0, 0),
        (Size, 2, 2),  # an int stays an int (check_hyper makes the pair)
        (Size, [2, 3], (2, 3)),
        (Size, (2, 3), (2, 3)),
        (Size, (np.int32(1), 2), (1, 2)),
        (Padding, 0, 0),
        (Padding, [0, 2], (0, 2)),
        (Size | None, None, None),
        (Size | None, [1, 4], (1, 4)),
        (Literal["max", "mean", "lp"], "lp", "lp"),
        (Literal["tied", "untied"], "untied", "untied"),
        (OptionalPower, None, None),
        (OptionalPower, 1, 1.0),  # an int is a number
        (OptionalPower, 2.5, 2.5),
        (OptionalPower, np.float32(1.5), 1.5),
        (PositiveFloat, 1e-300, 1e-300),
        (NonNegFloat, 0, 0.0),
        (tuple[int, int], [1, 2], (1, 2)),
        (Annotated[tuple[int, int], Bound(ge=1)], (1, 1), (1, 1)),
        (tuple[Rate, Rate], [0.9, 0], (0.9, 0.0)),
        (bool, False, False),
        (str, "x", "x"),
        (int | str, "x", "x"),
    ],
    ids=str,
)
def test_conform_accepts_and_normalises(annotation: Any, value: Any, expected: Any) -> None:
    """Plain Python values of the right type come back; lists become tuples, NumPy scalars Python numbers."""
    out = conform(value, annotation)
    assert out == expected and type(out) is type(expected)
    if isinstance(out, tuple):
        assert all(type(v) is type(e) for v, e in zip(out, expected, strict=True))


# ---- conform: rejected values ------------------------------------------------------------------------------
def assert_rejected(value: Any, annotation: Any) -> None:
    """ValueError ``expected <describe(annotation)>, got <repr(value)>``."""
    with pytest.raises(ValueError) as err:
        conform(value, annotation)
    assert str(err.value) == f"expected {describe(annotation)}, got {value!r}"


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (PositiveInt, True),
        (NonNegInt, False),
        (Size, True),
        (Size, (True, 2)),
        (Padding, (0, False)),
        (tuple[int, int], (1, True)),
        (int, np.bool_(True)),
        (OptionalPower, True),
        (PositiveFloat, False),
        (float, True),
    ],
    ids=str,
)
def test_bools_are_not_numbers(annotation: Any, value: Any) -> None:
    """True and False are rejected wherever an integer or a number is expected."""
    assert_rejected(value, annotation)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf")])
@pytest.mark.parametrize("annotation", [float, PositiveFloat, NonNegFloat, OptionalPower], ids=str)
def test_non_finite_numbers_are_rejected(annotation: Any, value: Any) -> None:
    """NaN and ±inf are never a number, even where no bound would exclude them."""
    assert_rejected(value, annotation)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (PositiveInt, "3"),
        (Size, "2"),
        (Size, "(2, 3)"),
        (Size, "tied"),
        (Padding, "0"),
        (OptionalPower, "1.5"),
        (float, "1.5"),
        (tuple[int, int], "12"),
        (Literal["max", "mean", "lp"], "MAX"),
        (Literal["tied", "untied"], "shared"),
        (bool, "true"),
    ],
    ids=str,
)
def test_strings_are_not_numbers_pairs_or_other_choices(annotation: Any, value: Any) -> None:
    """A string is never read as a number or a pair, nor matched loosely against a Literal."""
    assert_rejected(value, annotation)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (PositiveInt, 0),
        (PositiveInt, 2.0),
        (NonNegInt, -1),
        (Size, 0),
        (Size, (2, 0)),
        (Size, (2,)),
        (Size, (2, 3, 4)),
        (Size, (2, 2.5)),
        (Size, np.array([2, 3])),
        (Size, None),
        (Padding, -1),
        (Padding, (1, -1)),
        (PositiveFloat, 0.0),
        (NonNegFloat, -1e-300),
        (OptionalPower, 0.5),
        (Rate, 1.0),
        (Literal["max", "mean", "lp"], 1),
        (Literal[1, 2], True),  # a Literal matches type as well as value
        (str, 3),
        (bool, 1),
        (int, None),
    ],
    ids=str,
)
def test_out_of_bounds_wrong_types_and_shapes_are_rejected(annotation: Any, value: Any) -> None:
    assert_rejected(value, annotation)


def test_rejection_messages_spelled_out() -> None:
    """The exact texts a config or constructor error carries."""
    cases = [
        (0, PositiveInt, "expected an integer ≥ 1, got 0"),
        (True, Size, f"expected {SIZE_WORDS}, got True"),
        ((1, -1), Padding, f"expected {PADDING_WORDS}, got (1, -1)"),
        (math.nan, OptionalPower, "expected a number ≥ 1 (or null), got nan"),
        ("median", Literal["max", "mean", "lp"], "expected one of max, mean, lp, got 'median'"),
    ]
    for value, annotation, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            conform(value, annotation)


# ---- check_hyper -------------------------------------------------------------------------------------------
def test_check_hyper_makes_pairs_and_names_the_argument() -> None:
    """An int for an int-or-pair argument becomes (n, n); other values are conformed; unknown keys pass."""
    given = {"filters": np.int64(2), "kernel": 3, "stride": [2, 1], "padding": 0, "extra": "x"}
    checked = check_hyper(Conv2D, given)
    assert checked == {"filters": 2, "kernel": (3, 3), "stride": (2, 1), "padding": (0, 0), "extra": "x"}
    assert type(checked["filters"]) is int
    checked = check_hyper(Pool, {"stride": None, "size": 2, "p": 3})
    assert checked == {"stride": None, "size": (2, 2), "p": 3.0}
    with pytest.raises(ValueError, match=f"^kernel: {re.escape(f'expected {SIZE_WORDS}, got 0')}$"):
        check_hyper(Conv2D, {"kernel": 0})


# ---- hyper_params ------------------------------------------------------------------------------------------
POOL_PARAMS = (
    HyperParam("size", Size, EMPTY),
    HyperParam("stride", Size | None, None),
    HyperParam("mode", Literal["max", "mean", "lp"], "max"),
    HyperParam("p", OptionalPower, None),
)
HYPER_PARAMS: dict[type, tuple[HyperParam, ...]] = {
    Conv2D: (
        HyperParam("filters", PositiveInt, EMPTY),
        HyperParam("kernel", Size, EMPTY),
        HyperParam("stride", Size, 1),
        HyperParam("padding", Padding, 0),
        HyperParam("bias", Literal["tied", "untied"], "tied"),
    ),
    Dense: (HyperParam("units", PositiveInt, EMPTY),),
    Pool: POOL_PARAMS,
    MaxPool: POOL_PARAMS,
    MeanPool: POOL_PARAMS,
    LpPool: POOL_PARAMS,
    Subsample: (HyperParam("scale", PositiveInt, EMPTY),),
    Flatten: (),
    Sigmoid: (),
    Tanh: (),
    ReLU: (),
    Identity: (),
}


@pytest.mark.parametrize("cls", HYPER_PARAMS, ids=lambda c: c.__name__)
def test_hyper_params_of_each_built_in_class(cls: type) -> None:
    """Names, annotations (bounds kept) and defaults, in signature order; ``name`` and ``init`` left out."""
    assert hyper_params(cls) == HYPER_PARAMS[cls]
    assert [p.required for p in hyper_params(cls)] == [p.default is EMPTY for p in HYPER_PARAMS[cls]]


def test_hyper_params_skips_name_init_and_variadics() -> None:
    class Custom:
        def __init__(
            self,
            a: PositiveInt,
            *rest: int,
            b: float = 1.0,
            name: str | None = None,
            init: Any = None,
            **kw: Any,
        ) -> None:
            pass

    assert hyper_params(Custom) == (HyperParam("a", PositiveInt, EMPTY), HyperParam("b", float, 1.0))
    assert hyper_params(Custom)[0].required and not hyper_params(Custom)[1].required


@pytest.mark.parametrize("cls", BUILT_IN, ids=lambda c: c.__name__)
def test_every_default_conforms_to_its_annotation(cls: type) -> None:
    """A default is itself a valid value (so a config may leave any optional argument out)."""
    for p in hyper_params(cls):
        if not p.required:
            assert conform(p.default, p.annotation) == p.default, p.name


def test_plain() -> None:
    """Hyper-parameter values as plain data: tuples become lists, NumPy scalars Python numbers."""
    assert plain((1, (2, np.int64(3)))) == [1, [2, 3]]
    assert type(plain(np.int64(2))) is int and type(plain(np.float32(0.5))) is float
    assert plain(True) is True and plain("max") == "max" and plain(None) is None


# ---- hyper() / from_hyper ----------------------------------------------------------------------------------
ROUND_TRIPS: list[Callable[[], Layer]] = [
    lambda: Conv2D(3, 2),
    lambda: Conv2D(4, (3, 2), stride=(2, 1), padding=(1, 0), bias="untied"),
    lambda: Dense(7),
    lambda: Pool(2),
    lambda: Pool((2, 3), stride=1, mode="mean"),
    lambda: Pool(3, (1, 2), mode="lp", p=2.5),
    lambda: MaxPool(2, stride=1),
    lambda: MeanPool(3),
    lambda: LpPool((2, 1), p=1),
    lambda: Subsample(3),
    Flatten,
    Sigmoid,
    Tanh,
    ReLU,
    Identity,
]


def assert_round_trip(layer: Layer) -> None:
    """``type(l).from_hyper(l.hyper())`` and the registry's class rebuild the same layer, from plain data."""
    h = layer.hyper()
    assert json.loads(json.dumps(h)) == h  # plain data: what the checkpoint's /model record stores
    again = type(layer).from_hyper(h)
    assert type(again) is type(layer) and again.hyper() == h
    rebuilt = LAYERS[layer.kind].from_hyper(h, name="again")  # as the checkpoint rebuild does
    assert type(rebuilt) is type(layer) and rebuilt.hyper() == h and rebuilt.name == "again"


@pytest.mark.parametrize("make", ROUND_TRIPS, ids=lambda m: repr(m()))
def test_round_trip_with_chosen_values(make: Callable[[], Layer]) -> None:
    assert_round_trip(make())


def example(annotation: Any) -> Any:
    """A value ``annotation`` accepts (a Literal's last choice first)."""
    candidates: list[Any] = [3, (2, 3), 0.5, 2.5, True, "x"]
    for kind, _ in alternatives(annotation):
        if get_origin(kind) is Literal:
            candidates.insert(0, get_args(kind)[-1])
    for value in candidates:
        try:
            return conform(value, annotation)
        except ValueError:
            continue
    raise AssertionError(f"no example value for {annotation}")


BUILT_IN_KINDS = sorted(k for k, cls in LAYERS.items() if cls.__module__.startswith("cnnbp.core.layers."))


def test_every_built_in_class_is_registered() -> None:
    assert {LAYERS[k] for k in BUILT_IN_KINDS} >= set(BUILT_IN)


@pytest.mark.parametrize("kind", BUILT_IN_KINDS)
def test_round_trip_of_every_registered_layer(kind: str) -> None:
    """Every built-in kind in LAYERS, made with its defaults and then with a valid value for every
    hyper-parameter, survives ``hyper()`` → ``from_hyper``."""
    cls = LAYERS[kind]
    params = hyper_params(cls)
    required = {p.name: example(p.annotation) for p in params if p.required}
    assert_round_trip(cls(**required))
    given = {p.name: example(p.annotation) for p in params}
    if cls is Pool:  # p is for the Lp mode only
        given["mode"] = "lp"
    assert_round_trip(cls(**given))


def test_hyper_values_are_plain_and_none_is_left_out() -> None:
    """Pairs as lists; an unset optional (MaxPool's p) is not written."""
    layer = Conv2D(4, (3, 2), stride=2, padding=(1, 0), bias="untied")
    values = {"filters": 4, "kernel": [3, 2], "stride": [2, 2], "padding": [1, 0], "bias": "untied"}
    assert layer.hyper() == values
    assert repr(layer) == f"Conv2D('conv', {', '.join(f'{k}={v!r}' for k, v in values.items())})"
    assert "p" not in MaxPool(2).hyper() and LpPool(2).hyper()["p"] == 2.0


def test_from_hyper_keeps_name_and_init_and_checks_values() -> None:
    """``from_hyper`` takes name and init aside; values are checked like the constructor's."""
    init = {"W": HeNormal()}
    layer = Conv2D.from_hyper({"filters": 2, "kernel": [3, 3]}, name="c", init=init)
    assert (layer.name, layer.kernel, layer.stride) == ("c", (3, 3), (1, 1)) and layer.init["W"] is init["W"]
    with pytest.raises(ShapeError) as err:
        Dense.from_hyper({"units": 0}, name="fc")
    assert (str(err.value), err.value.key) == ("fc: units: expected an integer ≥ 1, got 0", "units")
