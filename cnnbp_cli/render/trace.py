"""The derivation of ``cnnbp trace`` as terminal text, Markdown or a LaTeX fragment.

All three read the same :class:`cnnbp.tracing.TraceReport`: its header notes, then per section
(forward, loss, backward, update) each block (one layer's rule) with its legend, its steps and the
summaries of the tensors shown in part.  A step prints as ``lhs = rule = … = numbers = value``; the
numbers are left out when they are just the value.

* text: lines of at most ``width`` cells, broken before an operator with a hanging indent; as rich
  :class:`~rich.text.Text` with a few styles (which a console without colour drops).
* Markdown: headings, prose with ``$…$`` and each step as a ``$$\\begin{aligned}…\\end{aligned}$$``
  block (GitHub, Jupyter and Obsidian render it).
* LaTeX: a fragment for a document that loads ``amsmath``: ``\\subsection*`` per section,
  ``\\paragraph`` per block, an ``align*`` per step.

Sums of more than ``MAX_TERMS`` terms are cut to their first ``KEEP_TERMS`` and ``… (n more terms)``;
``--json`` always has every term.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from rich.text import Text

from cnnbp.core import formula as fm
from cnnbp.core.formula import Expr
from cnnbp.core.trace import Block, Step, Summary
from cnnbp.tracing import TraceReport, line_text

__all__ = ["latex", "latex_fragment", "markdown", "text_lines"]

MAX_TERMS = 16
KEEP_TERMS = 12
_SECTIONS = {"forward": "Forward pass", "loss": "Loss", "backward": "Backward pass", "update": "Update"}


# ---- what every format shares ----------------------------------------------------------------------------


def shorten(x: Expr) -> Expr:
    """``x`` with every sum of more than MAX_TERMS terms cut to its first KEEP_TERMS and a ``More``."""
    if isinstance(x, fm.Sum):
        items = tuple(shorten(i) for i in x.items)
        if len(items) > MAX_TERMS:
            items = (*items[:KEEP_TERMS], fm.More(len(items) - KEEP_TERMS))
        return fm.Sum(items)
    if isinstance(x, fm.Prod):
        return fm.Prod(tuple(shorten(i) for i in x.items), x.tight)
    if isinstance(x, fm.Frac):
        return fm.Frac(shorten(x.num), shorten(x.den))
    if isinstance(x, fm.Neg):
        return fm.Neg(shorten(x.x))
    if isinstance(x, fm.Pow):
        return fm.Pow(shorten(x.base), x.exp)
    if isinstance(x, fm.Call):
        return fm.Call(x.fn, tuple(shorten(a) for a in x.args))
    return x


def parts(step: Step, precision: int) -> list[Expr]:
    """The right-hand sides of a step: its rules, its numbers (unless they are just the value), its value."""
    value = fm.Num(step.value)
    out = [shorten(r) for r in step.rules]
    nums = shorten(step.numbers)
    same = fm.text(nums, precision) == fm.text(value, precision)
    if not same and not (out and fm.text(out[-1], precision) == fm.text(nums, precision)):
        out.append(nums)
    out.append(value)
    return out


def sections(
    report: TraceReport,
) -> Iterator[tuple[str, list[tuple[Block, list[list[Step]], list[Summary]]]]]:
    """Per section, its blocks, each with its steps grouped by tensor and the summaries of those tensors."""
    t = report.trace
    for section in _SECTIONS:
        blocks = []
        for block in (b for b in t.blocks if b.section == section):
            steps = [s for s in t.steps if s.section == section and s.via == block.via]
            groups: list[list[Step]] = []
            for s in steps:
                if groups and (groups[-1][0].layer, groups[-1][0].tensor) == (s.layer, s.tensor):
                    groups[-1].append(s)
                else:
                    groups.append([s])
            summaries = [m for m in t.summaries if m.section == section and m.via == block.via]
            blocks.append((block, groups, summaries))
        if blocks:
            yield section, blocks


def summary_text(m: Summary, precision: int) -> str:
    n = m.total - m.shown
    what = m.tensor.replace("grad:", "∂E/∂").replace("update:", "updated ")
    shape = "×".join(map(str, m.shape))
    return (f"… {n:,} more element{'s' * (n != 1)} of {m.layer} {what} ({shape}) not written out: "
            f"min {fm.number(m.min, precision)}, max {fm.number(m.max, precision)}, "
            f"‖·‖ {fm.number(m.norm, precision)}; --at names others")  # fmt: skip


def _summary_for(summaries: list[Summary], group: list[Step]) -> Summary | None:
    return next((m for m in summaries if (m.layer, m.tensor) == (group[0].layer, group[0].tensor)), None)


# ---- text ------------------------------------------------------------------------------------------------

_BREAK = {"+", "−", "="}  # a line may break before these
_INNER = {"×", "·"}  # … and, inside a term too long for a line, before these


def _units(text: str, ops: set[str]) -> list[str]:
    """``text`` split at the spaces before the operators ``ops``, each operator kept with what follows."""
    units: list[str] = []
    for token in text.split(" "):
        if not units or token in ops:
            units.append(token)
        else:
            units[-1] += " " + token
    return units


def wrap(first: str, rest: str, width: int, indent: int) -> list[str]:
    """``first + rest`` in lines of at most ``width``, broken before a + − or = (inside a longer term
    before a × or ·, then at any space), ``indent`` spaces before each continuation line."""
    units = []
    for unit in _units(rest, _BREAK):
        if len(unit) + indent + 1 > width:
            for inner in _units(unit, _INNER):
                units += [inner] if len(inner) + indent + 1 <= width else inner.split(" ")
        else:
            units.append(unit)
    lines, line = [], first
    for unit in units:
        candidate = f"{line} {unit}" if line.strip() else line + unit
        if len(candidate) > width and line.strip():
            lines.append(line)
            line = " " * indent + unit
        else:
            line = candidate
    lines.append(line)
    return lines


def step_lines(step: Step, precision: int, width: int) -> list[str]:
    """One step: ``lhs = rule = … = value`` on as few lines as fit, each continuation line starting
    with ``=`` under the lhs's ``=``; a part too long for a line breaks before an operator."""
    lhs = fm.text(step.lhs, precision)
    rhs = [fm.text(p, precision) for p in parts(step, precision)]
    pad = len(lhs) + 1 if len(lhs) + 1 <= 16 else 4
    lines: list[str] = []
    line, broken = lhs, False  # broken: the last part took more than one line
    for k, part in enumerate(rhs):
        if not broken and len(f"{line} = {part}") <= width:
            line = f"{line} = {part}"
            continue
        if k == 0:  # the first rule stays on the lhs's line, broken if need be
            wrapped = wrap("", f"{lhs} = {part}", width, pad + 2)
        else:
            lines.append(line)
            wrapped = wrap(" " * pad + "=", part, width, pad + 2)
        lines += wrapped[:-1]
        line, broken = wrapped[-1], len(wrapped) > 1
    lines.append(line)
    return lines


def text_lines(report: TraceReport, precision: int = 4, width: int = 80) -> list[Text]:
    """The whole derivation for the terminal, every line at most ``width`` cells."""
    out: list[Text] = []
    title = f"trace · {report.target} · {report.weights}"
    out += [Text(line, style="bold") for line in wrap("", title, width, 2)]
    for note in report.header:
        out += [Text(line) for line in wrap("", line_text(note, precision), width, 0)]
    for section, blocks in sections(report):
        out += [Text(""), Text(_SECTIONS[section].upper(), style="bold underline")]
        for block, groups, summaries in blocks:
            out.append(Text(""))
            out += [Text(line, style="bold") for line in wrap("", block.title, width, 2)]
            for entry in block.legend:
                out += [Text(line, style="dim") for line in wrap("  ", line_text(entry, precision), width, 4)]
            for group in groups:
                for step in group:
                    out += [Text(line) for line in step_lines(step, precision, width)]
                m = _summary_for(summaries, group)
                if m is not None:
                    out += [
                        Text(line, style="dim") for line in wrap("", summary_text(m, precision), width, 2)
                    ]
    return out


def plain_text(report: TraceReport, precision: int = 4, width: int = 80) -> str:
    """:func:`text_lines` as one string without styles (for ``-o FILE``)."""
    return "\n".join(line.plain for line in text_lines(report, precision, width)) + "\n"


# ---- LaTeX -----------------------------------------------------------------------------------------------

_NAMES = {
    "δ": r"\delta", "β": r"\beta", "γ": r"\gamma", "μ": r"\mu", "σ": r"\sigma", "α": r"\alpha",
    "ε": r"\varepsilon", "θ": r"\theta", "ŷ": r"\hat{y}", "x̂": r"\hat{x}", "½": r"\tfrac{1}{2}",
    "Σ": r"\sum", "Σy": r"\textstyle\sum y", "f(X)": r"f(X)", "(Jᵀδ)": r"(J^{\top}\delta)",
}  # fmt: skip
_FUNCS = {
    "σ": r"\sigma", "σ′": r"\sigma'", "tanh": r"\tanh", "tanh′": r"\tanh'", "ln": r"\ln", "max": r"\max",
    "relu′": r"\mathrm{relu}'", "g′": "g'", "g": "g", "sgn": r"\operatorname{sgn}",
}  # fmt: skip
_TEXT = {
    "×": r"$\times$", "·": r"$\cdot$", "→": r"$\to$", "←": r"$\leftarrow$", "−": r"$-$", "α": r"$\alpha$",
    "σ": r"$\sigma$", "δ": r"$\delta$", "∂": r"$\partial$", "Σ": r"$\Sigma$", "²": r"$^2$", "…": r"\dots{}",
    "≤": r"$\le$", "≥": r"$\ge$", "‖": r"$\|$", "—": "---", "–": "--", "₁": r"$_1$", "₂": r"$_2$",
    "ε": r"$\varepsilon$", "μ": r"$\mu$", "γ": r"$\gamma$", "β": r"$\beta$", "⁺": r"$^+$", "′": "'",
}  # fmt: skip
_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def latex_text(s: str) -> str:
    """Prose for LaTeX: its special characters escaped and the few Unicode symbols cnnbp writes as math."""
    return "".join(_SPECIAL.get(c, _TEXT.get(c, c)) for c in s)


def _sub(sub: str) -> str:
    m = re.fullmatch(r"([a-z]+)(\d+)", sub)
    return f"{m.group(1)}_{{{m.group(2)}}}" if m else sub


def _name(name: str) -> str:
    if name in _NAMES:
        return _NAMES[name]
    if (len(name) == 1 and name.isascii()) or re.fullmatch(r"-?[0-9.e+-]+", name):
        return name
    return rf"\mathrm{{{latex_text(name)}}}"


def latex(x: Expr, precision: int = 4) -> str:
    """``x`` as LaTeX math (amsmath), numbers with ``precision`` decimals."""
    t = lambda y: latex(y, precision)  # noqa: E731
    if isinstance(x, fm.Sym):
        out = _name(x.name)
        if x.sub:
            out += f"_{{{_sub(x.sub)}}}"
        if x.sup:
            out += f"^{{{x.sup}}}"
        return "{" + out + "}" if x.sub or x.sup else out
    if isinstance(x, fm.Num):
        return fm.number(x.value, precision).replace("e", r"\mathrm{e}")
    if isinstance(x, fm.Int):
        return str(x.value)
    if isinstance(x, fm.D):
        return rf"\frac{{\partial {t(x.f)}}}{{\partial {t(x.x)}}}"
    if isinstance(x, fm.Neg):
        return "-" + (t(x.x) if fm._atom(x.x) or isinstance(x.x, fm.Prod) else rf"\left({t(x.x)}\right)")
    if isinstance(x, fm.Prod):
        return _latex_prod(x, precision)
    if isinstance(x, fm.Sum):
        return _latex_sum(x.items, precision)
    if isinstance(x, fm.More):
        return rf"\dots\ \text{{({x.n} more terms)}}"
    if isinstance(x, fm.Call):
        args = ", ".join(t(a) for a in x.args)
        if x.fn == "exp":
            return f"e^{{{args}}}"
        return rf"{_FUNCS.get(x.fn, _name(x.fn))}\left({args}\right)"
    if isinstance(x, fm.Pow):
        base = t(x.base) if fm._atom(x.base) else rf"\left({t(x.base)}\right)"
        return f"{base}^{{{t(x.exp)}}}"
    if isinstance(x, fm.Abs):
        return rf"\lvert {t(x.x)} \rvert"
    if isinstance(x, fm.Frac):
        return rf"\frac{{{t(x.num)}}}{{{t(x.den)}}}"
    if isinstance(x, fm.Sqrt):
        return rf"\sqrt{{{t(x.x)}}}"
    if isinstance(x, fm.Rel):
        return f"{t(x.lhs)} = {t(x.rhs)}"
    raise TypeError(f"not a formula node: {x!r}")


def _latex_prod(x: fm.Prod, precision: int) -> str:
    items = x.items
    if x.tight or fm._juxtaposed(items):
        return " ".join(latex(i, precision) if fm._atom(i) or isinstance(i, fm.Pow) else
                        rf"\left({latex(i, precision)}\right)" for i in items)  # fmt: skip
    sep = r" \times " if all(isinstance(i, fm.Num | fm.Int) for i in items) else r" \cdot "
    out = []
    for k, i in enumerate(items):
        ok = fm._atom(i) or isinstance(i, fm.Pow | fm.Frac) or (k == 0 and isinstance(i, fm.Num))
        out.append(latex(i, precision) if ok else rf"\left({latex(i, precision)}\right)")
    return sep.join(out)


def _latex_sum(items: Iterable[Expr], precision: int, first: bool = True) -> str:
    out = ""
    for k, item in enumerate(items):
        if k == 0 and first:
            out = latex(item, precision)
            continue
        neg = fm.negative(item) and not isinstance(item, fm.More)
        body = latex(fm.flip(item) if neg else item, precision)
        if isinstance(item, fm.Sum) or (neg and fm.negative(fm.flip(item))):
            body = rf"\left({body}\right)"
        out += (" - " if neg else " + ") + body
    return out


LINE = 60  # characters of plain text per line of a long sum in LaTeX (about a text width at 10 pt)


def _latex_lines(x: Expr, precision: int) -> list[str]:
    """A right-hand side as one or more lines of an ``aligned``/``align*``: a long sum continues on
    ``\\quad`` lines of about LINE characters (as its plain text counts them)."""
    if not isinstance(x, fm.Sum):
        return [latex(x, precision)]
    chunks: list[list[Expr]] = [[]]
    size = 0
    for item in x.items:
        width = len(fm.text(item, precision)) + 3
        if chunks[-1] and size + width > LINE:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += width
    lines = [_latex_sum(chunks[0], precision)]
    lines += [r"\quad " + _latex_sum(chunk, precision, first=False).lstrip() for chunk in chunks[1:]]
    return lines


ROW = 64  # characters of a step's plain text that go on one row of an aligned block


def step_latex(step: Step, precision: int) -> list[str]:
    """The rows of an ``aligned``/``align*`` block for one step (joined with ``\\\\``): as many parts per
    row as fit (judged by their plain text), a long sum continued on ``\\quad`` rows."""
    rows: list[str] = []
    lhs = latex(step.lhs, precision)
    row, size = "", len(fm.text(step.lhs, precision))
    for part in parts(step, precision):
        lines = _latex_lines(part, precision)
        width = len(fm.text(part, precision)) + 3
        if len(lines) == 1 and (not row or size + width <= ROW):
            row, size = (row or (lhs + " &" if not rows else "&")) + " = " + lines[0], size + width
            continue
        if row:
            rows.append(row)
        first = (lhs + " &" if not rows else "&") + " = " + lines[0]
        rows += [first, *("&" + line for line in lines[1:])]
        row, size = "", ROW  # what follows a long part goes on a row of its own
    if row:
        rows.append(row)
    return rows


def _latex_line(line: tuple, precision: int) -> str:
    return "".join(latex_text(p) if isinstance(p, str) else f"${latex(p, precision)}$" for p in line)


def latex_fragment(report: TraceReport, precision: int = 4) -> str:
    """The derivation as a LaTeX fragment (needs ``\\usepackage{amsmath}`` in the document)."""
    out = [
        "% cnnbp trace: a fragment for a document with \\usepackage{amsmath}",
        rf"\subsection*{{Trace: {latex_text(report.target)}}}",
        latex_text(report.weights) + r"\par",
    ]
    out += [_latex_line(note, precision) + r"\par" for note in report.header]
    for section, blocks in sections(report):
        out += ["", rf"\subsection*{{{_SECTIONS[section]}}}"]
        for block, groups, summaries in blocks:
            out += ["", rf"\paragraph{{{latex_text(block.title)}}}"]
            out += [_latex_line(entry, precision) + r"\par" for entry in block.legend]
            for group in groups:
                for step in group:
                    out += [r"\begin{align*}", " \\\\\n".join(step_latex(step, precision)), r"\end{align*}"]
                m = _summary_for(summaries, group)
                if m is not None:
                    out.append(latex_text(summary_text(m, precision)) + r"\par")
    return "\n".join(out) + "\n"


# ---- Markdown --------------------------------------------------------------------------------------------


def _md_line(line: tuple, precision: int) -> str:
    return "".join(_md_escape(p) if isinstance(p, str) else f"${latex(p, precision)}$" for p in line)


def _md_escape(s: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|$])", r"\\\1", s)


def markdown(report: TraceReport, precision: int = 4) -> str:
    """The derivation as Markdown with ``$…$`` and ``$$…$$`` math."""
    out = [f"# Trace: {_md_escape(report.target)}", "", _md_escape(report.weights), ""]
    for note in report.header:
        out += [_md_line(note, precision), ""]
    for section, blocks in sections(report):
        out += [f"## {_SECTIONS[section]}", ""]
        for block, groups, summaries in blocks:
            out += [f"### {_md_escape(block.title)}", ""]
            out += ["- " + _md_line(entry, precision) for entry in block.legend]
            if block.legend:
                out.append("")
            for group in groups:
                for step in group:
                    rows = step_latex(step, precision)
                    out += ["$$", r"\begin{aligned}", " \\\\\n".join(rows), r"\end{aligned}", "$$", ""]
                m = _summary_for(summaries, group)
                if m is not None:
                    out += [_md_escape(summary_text(m, precision)), ""]
    return "\n".join(out).rstrip("\n") + "\n"
