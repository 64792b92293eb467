"""The formula trees of ``cnnbp.core.formula`` in plain text: symbols and subscripts as the seeds write them,
numbers at a precision, sums that write a negative term with its minus."""

from __future__ import annotations

import pytest

from cnnbp.core import formula as fm
from cnnbp.core.formula import D, E, Int, Num, Sym


@pytest.mark.parametrize(
    ("index", "shape", "sub"),
    [
        ((0, 0, 0), (1, 3, 3), "11"),  # one map: row 1, column 1 (seed 000's X₁₁)
        ((1, 0, 0), (2, 3, 4), "2,11"),  # channel 2 of a stack of maps
        ((0, 0, 1, 0), (1, 1, 2, 2), "21"),  # a conv kernel with one filter and one input channel
        ((1, 0, 2, 1), (2, 1, 3, 2), "2,32"),  # filter 2, one input channel, row 3, column 2
        ((2,), (5,), "3"),  # a vector
        ((0, 1), (2, 2), "12"),  # a dense weight W_ji: row j, column i
        ((0, 11, 3), (1, 12, 12), "12,4"),  # a row ≥ 10: the indices are separated
        ((0, 1, 0), (1, 2, 1), "2"),  # a column of one: only the row counts
    ],
)
def test_subscripts_count_from_one_and_leave_out_axes_of_size_one(index, shape, sub) -> None:
    assert fm.index_sub(index, shape) == sub


def test_symbols_use_unicode_subscripts_for_numbers_and_an_underscore_for_names() -> None:
    assert fm.text(Sym("δ", "11")) == "δ₁₁"
    assert fm.text(Sym("w", "5")) == "w₅"
    assert fm.text(Sym("net", "o1")) == "net_o1"
    assert fm.text(Sym("w", "5", "+")) == "w₅⁺"
    assert fm.text(D(E, Sym("out", "o1"))) == "∂E/∂out_o1"


@pytest.mark.parametrize(
    ("value", "precision", "text"),
    [
        (0.082167041, 9, "0.082167041"),
        (-0.15, 4, "-0.1500"),
        (-1e-9, 4, "-1.000e-9"),  # fixed point would show no digit of it
        (-0.00001, 2, "-1.0e-5"),
        (-0.00004, 4, "-4.000e-5"),
        (-0.000049, 3, "-4.90e-5"),
        (-0.0, 4, "0.0000"),  # never -0
        (-0.00004, 3, "-4.00e-5"),
        (12345678.0, 2, "1.2e7"),
        (float("nan"), 4, "nan"),
    ],
)
def test_numbers_are_fixed_point_unless_that_hides_them(value, precision, text) -> None:
    assert fm.number(value, precision) == text


def test_a_sum_writes_a_negative_term_with_its_minus_and_a_negative_factor_in_parentheses() -> None:
    terms = [[-0.15, 1.0], [3.275, 2.0], [0.95, 0.0], [-0.375, 1.0]]
    assert fm.text(fm.from_terms(terms), 4) == (
        "-0.1500 × 1.0000 + 3.2750 × 2.0000 + 0.9500 × 0.0000 − 0.3750 × 1.0000"
    )
    assert fm.text(fm.from_terms([[0.5, -0.25], [0.125, 0.75]]), 2) == "0.50 × (-0.25) + 0.12 × 0.75"
    # a subtraction of a negative number keeps both signs visible
    assert fm.text(fm.sub(Num(1.0), Num(-0.32)), 2) == "1.00 − (-0.32)"


def test_short_symbols_multiply_by_juxtaposition_as_the_seeds_write_them() -> None:
    rule = fm.total([fm.prod(Sym("δ", "11"), Sym("X", "11")), fm.prod(Sym("δ", "12"), Sym("X", "12"))])
    assert fm.text(rule) == "δ₁₁X₁₁ + δ₁₂X₁₂"
    # longer names (and subscripts with a comma) are multiplied with a dot instead
    assert fm.text(fm.prod(Sym("δ", "o1"), Sym("w", "5"))) == "δ_o1 · w₅"
    assert fm.text(fm.prod(Sym("F", "3,11"), Sym("X", "23"))) == "F₃,₁₁ · X₂₃"


def test_the_other_nodes() -> None:
    z = Sym("z", "1")
    assert fm.text(fm.Frac(Int(1), fm.Sum((Int(1), fm.Call("exp", (fm.Neg(z),)))))) == "1/(1 + e^(−z₁))"
    assert fm.text(fm.Pow(fm.Abs(Num(0.5)), Int(3)), 2) == "|0.50|³"
    assert fm.text(fm.Pow(Sym("s"), fm.Frac(Int(1), Int(3)))) == "s^(1/3)"
    assert fm.text(fm.Call("max", (Num(0.1), Num(0.9))), 1) == "max(0.1, 0.9)"
    assert fm.text(fm.Rel(Sym("w", sup="+"), fm.sub(Sym("w"), fm.Prod((Sym("α"), D(E, Sym("w"))))))) == (
        "w⁺ = w − α · ∂E/∂w"
    )
    assert fm.text(fm.Sum((Sym("a"), fm.More(7)))) == "a + … (7 more terms)"
    assert fm.text(fm.total([])) == "0"
