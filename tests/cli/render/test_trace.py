"""``cnnbp.render.trace``'s pieces: line breaking, long sums cut on screen, formula trees as LaTeX and
prose escaped for LaTeX.  Whole renderings are tested through the command
(tests/cli/commands/test_trace.py)."""

from __future__ import annotations

import pytest

from cnnbp.core import formula as fm
from cnnbp.core.formula import D, E, Int, Num, Sym
from cnnbp.core.trace import Step
from cnnbp.render.trace import KEEP_TERMS, MAX_TERMS, latex, latex_text, shorten, step_lines, wrap


def test_wrap_breaks_before_an_operator_with_a_hanging_indent() -> None:
    text = " + ".join(f"0.{i}000 × 0.5000" for i in range(1, 9))
    lines = wrap("", text, 40, 4)
    assert all(len(line) <= 40 for line in lines)
    assert all(line.startswith("    + ") for line in lines[1:])  # a product is never split
    assert " ".join(part.strip() for part in lines) == text


def step(terms: list[list[float]], value: float) -> Step:
    rule = fm.total([fm.prod(Sym("δ", f"{k + 1}"), Sym("x", f"{k + 1}")) for k in range(len(terms))])
    return Step("backward", "d", "d", "grad:W", (0,), value, terms, D(E, Sym("W", "1")), (rule,),
                fm.from_terms(terms))  # fmt: skip


def test_a_step_fits_one_line_when_it_can_and_aligns_its_continuations_otherwise() -> None:
    assert step_lines(step([[0.5, 2.0]], 1.0), 4, 80) == ["∂E/∂W₁ = δ₁x₁ = 0.5000 × 2.0000 = 1.0000"]
    lines = step_lines(step([[0.5, 2.0]] * 6, 6.0), 4, 80)
    assert lines[0].startswith("∂E/∂W₁ = δ₁x₁ + δ₂x₂")
    assert lines[1].startswith("       = 0.5000 × 2.0000 + ")  # '=' under the lhs's '='
    assert lines[-1] == "       = 6.0000"
    assert all(len(line) <= 80 for line in lines)


def test_a_step_leaves_out_numbers_that_are_just_its_value() -> None:
    s = Step("loss", "loss", "out", "delta", (0,), -0.5, [[-0.5]], Sym("δ", "1"), (Sym("δ", "1"),), Num(-0.5))
    assert step_lines(s, 4, 80) == ["δ₁ = δ₁ = -0.5000"]


def test_a_long_sum_is_cut_on_screen_only() -> None:
    long = fm.total([Sym("x", str(k)) for k in range(1, MAX_TERMS + 5)])
    cut = shorten(long)
    assert len(cut.items) == KEEP_TERMS + 1 and cut.items[-1] == fm.More(MAX_TERMS + 4 - KEEP_TERMS)
    assert shorten(fm.total([Sym("x", str(k)) for k in range(1, MAX_TERMS + 1)])).items[-1] == Sym("x", "16")


@pytest.mark.parametrize(
    ("expr", "tex"),
    [
        (Sym("δ", "11"), "{\\delta_{11}}"),
        (Sym("net", "o1"), "{\\mathrm{net}_{o_{1}}}"),
        (Sym("w", "5", "+"), "{w_{5}^{+}}"),
        (D(E, Sym("w", "5")), "\\frac{\\partial E}{\\partial {w_{5}}}"),
        (
            fm.from_terms([[0.5, -0.25], [-0.125, 0.75]]),
            "0.50 \\times \\left(-0.25\\right) - 0.12 \\times 0.75",
        ),
        (fm.Call("exp", (fm.Neg(Sym("z")),)), "e^{-z}"),
        (fm.Pow(fm.Abs(Sym("X")), Int(3)), "\\lvert X \\rvert^{3}"),
        (fm.Sqrt(fm.Sum((Sym("σ", sup="2"), Sym("ε")))), "\\sqrt{{\\sigma^{2}} + \\varepsilon}"),
        (
            fm.Prod((Sym("½"), fm.Pow(fm.sub(Sym("y"), Sym("a")), Int(2))), tight=True),
            "\\tfrac{1}{2} \\left(y - a\\right)^{2}",
        ),
    ],
)
def test_formulas_as_latex(expr: fm.Expr, tex: str) -> None:
    assert latex(expr, 2) == tex


def test_prose_is_escaped_for_latex() -> None:
    assert latex_text("conv_1 · 2×2 → z, 50% & #1 {x}") == (
        "conv\\_1 $\\cdot$ 2$\\times$2 $\\to$ z, 50\\% \\& \\#1 \\{x\\}"
    )
