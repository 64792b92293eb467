"""``cnnbp trace`` through the Typer app: the seed's 2-2-2 network at ``--precision 9`` prints the notes'
numbers; text fits 80 columns without escape codes; Markdown and LaTeX are well formed (and the LaTeX
compiles when a ``pdflatex`` is installed); ``--json``; ``-o FILE``; one-line errors; the README's example.

The expected numbers of the 2-2-2 network are those of the notes (Matt Mazur's "A Step by Step
Backpropagation Example", on which seed 000 §2 builds), as published, with the decimals published.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnbp.app import app
from tests.conftest import block_after

ROOT = Path(__file__).resolve().parents[3]
DENSE = ROOT / "configs" / "examples" / "dense.yaml"
TRACE = ROOT / "configs" / "examples" / "trace.yaml"
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}
ESC = "\x1b"


def invoke(*args: object, env: dict | None = None):  # noqa: ANN201 - typer's Result
    return CliRunner().invoke(app, ["trace", *map(str, args)], env=env or PLAIN)


def printed_steps(text: str) -> dict[str, list[str]]:
    """Each step of the text output (a line at column 0 and its indented continuations), keyed by its
    left-hand side: the parts between its ' = ', continuation lines joined."""
    steps: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith(" ") and current:
            current.append(line.strip())
            continue
        if current and " = " in current[0]:
            joined = " ".join(current)
            lhs, *rhs = joined.split(" = ")
            steps.setdefault(lhs, rhs)
        current = [line] if line else []
    return steps


def number(text: str) -> float:
    return float(text.replace("(", "").replace(")", ""))


# ---- the notes' 2-2-2 network --------------------------------------------------------------------------

ETA = 0.5  # the notes' learning rate
# published numbers: (value, decimals published)
FORWARD = {"out_h1": ("0.593269992", 9), "out_h2": ("0.596884378", 9), "out_o1": ("0.75136507", 8),
           "out_o2": ("0.772928465", 9)}  # fmt: skip
LOSS = ("0.298371109", 9)
GRADS = {"∂E/∂w₅": ("0.082167041", 9), "∂E/∂w₁": ("0.000438568", 9)}
UPDATED = {
    "w₁⁺": ("0.149780716", 9), "w₂⁺": ("0.19956143", 8), "w₃⁺": ("0.24975114", 8), "w₄⁺": ("0.29950229", 8),
    "w₅⁺": ("0.35891648", 8), "w₆⁺": ("0.408666186", 9), "w₇⁺": ("0.511301270", 9), "w₈⁺": ("0.561370121", 9),
}  # fmt: skip
INITIAL = {"w₁": 0.15, "w₂": 0.20, "w₃": 0.25, "w₄": 0.30, "w₅": 0.40, "w₆": 0.45, "w₇": 0.50, "w₈": 0.55}
PRINTED = 0.5e-9  # --precision 9 rounds what it prints to 9 decimals


def close(got: float, published: tuple[str, int], spread: float = 1.0) -> bool:
    """Within half a unit of the published last decimal (× ``spread``) plus the printing's rounding."""
    value, decimals = published
    return abs(got - float(value)) <= spread * 0.5 * 10.0**-decimals + PRINTED


def test_the_2_2_2_network_reproduces_the_notes_numbers() -> None:
    result = invoke(DENSE, "--precision", "9")
    assert result.exit_code == 0, result.output
    steps = printed_steps(result.stdout)
    for name, published in FORWARD.items():
        assert close(number(steps[name][-1]), published), (name, steps[name])
    assert steps["E"][0] == "½ (target_o1 − out_o1)² + ½ (target_o2 − out_o2)²"
    assert close(number(steps["E"][-1]), LOSS)
    for name, published in GRADS.items():
        assert close(number(steps[name][-1]), published), (name, steps[name])
    # the seed's three factors of ∂E/∂w₅: ∂E/∂out_o1, ∂out_o1/∂net_o1 and ∂net_o1/∂w₅ = out_h1
    chain, numbers = steps["∂E/∂w₅"][0], steps["∂E/∂w₅"][1]
    assert chain == "∂E/∂out_o1 · ∂out_o1/∂net_o1 · ∂net_o1/∂w₅"
    factors = [float(f) for f in numbers.split(" × ")]
    for got, published in zip(
        factors, [("0.74136507", 8), ("0.186815602", 9), ("0.593269992", 9)], strict=True
    ):
        assert close(got, published)
    # seed 000 §2.2: ∂E/∂out_h1 = δ_o1 w₅ + δ_o2 w₇, then the hidden layer's own three factors
    assert steps["∂E/∂out_h1"][0] == "δ_o1 · w₅ + δ_o2 · w₇"
    assert close(number(steps["∂E/∂out_h1"][-1]), ("0.036350306", 9))
    assert close(float(steps["∂E/∂w₁"][1].split(" × ")[1]), ("0.241300709", 9))  # ∂out_h1/∂net_h1
    # every updated weight, w⁺ = w − η ∂E/∂w with η = 0.5
    for name, published in UPDATED.items():
        assert steps[name][0] == f"{name[:-1]} − α · ∂E/∂{name[:-1]}"
        assert close(number(steps[name][-1]), published), (name, steps[name])
        # so every ∂E/∂w of both layers is (w − w⁺)/η, to the published precision divided by η
        w = name[:-1]
        grad = number(steps[f"∂E/∂{w}"][-1])
        expected = (INITIAL[w] - float(published[0])) / ETA
        assert abs(grad - expected) <= 0.5 * 10.0 ** -published[1] / ETA + 2 * PRINTED, (w, grad, expected)


# ---- the renderings ----------------------------------------------------------------------------------


def test_text_fits_80_columns_without_escape_codes() -> None:
    for target in (TRACE, DENSE, ROOT / "configs" / "examples" / "pool.yaml"):
        result = invoke(target)
        assert result.exit_code == 0, result.output
        assert ESC not in result.stdout
        assert all(len(line) <= 80 for line in result.stdout.splitlines())
    big = invoke("--layer", "conv3", "--layer", "dense6")  # the built-in digits network: tensors in part
    assert big.exit_code == 0, big.output
    assert "more elements of conv3 z (32×4×4) not written out" in big.stdout
    assert all(len(line) <= 80 for line in big.stdout.splitlines())


def test_markdown_has_balanced_math() -> None:
    result = invoke(TRACE, "--format", "markdown")
    assert result.exit_code == 0, result.output
    md = result.stdout
    assert md.startswith("# Trace: ")
    assert md.count("\n$$\n") % 2 == 0 and md.count("\n$$\n") >= 2
    assert md.count(r"\begin{aligned}") == md.count(r"\end{aligned}") > 0
    for line in md.splitlines():  # inline math: $ … $ pairs on every prose line
        if not line.startswith("$$"):
            assert line.replace(r"\$", "").count("$") % 2 == 0, line


def balanced(tex: str) -> None:
    """Braces balance (ignoring escaped ones) and every \\begin{env} has its \\end{env}, nested rightly."""
    depth = 0
    for c in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0
    assert depth == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack


@pytest.mark.parametrize("target", [TRACE, DENSE, ROOT / "configs" / "examples" / "subsample.yaml"])
def test_latex_is_well_formed(target: Path) -> None:
    result = invoke(target, "--format", "latex")
    assert result.exit_code == 0, result.output
    balanced(result.stdout)
    assert r"\begin{align*}" in result.stdout


@pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="no pdflatex here (apt-get install texlive-latex-base)"
)
def test_latex_compiles_with_amsmath(tmp_path: Path) -> None:
    for name, target in (
        ("trace", TRACE),
        ("dense", DENSE),
        ("regularisers", ROOT / "configs/examples/regularisers.yaml"),
    ):
        result = invoke(target, "--format", "latex", "-o", tmp_path / f"{name}.tex")
        assert result.exit_code == 0, result.output
        doc = tmp_path / f"{name}-doc.tex"
        doc.write_text(
            "\\documentclass{article}\n\\usepackage{amsmath}\n\\begin{document}\n"
            f"\\input{{{name}.tex}}\n\\end{{document}}\n",
            encoding="utf-8",
        )
        run = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:]
        assert (tmp_path / f"{name}-doc.pdf").stat().st_size > 0


def test_json_steps_and_output_file(tmp_path: Path) -> None:
    result = invoke(TRACE, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {s["tensor"] for s in doc["steps"]} >= {"z", "a", "softmax", "loss", "delta", "grad:W", "grad:b",
                                                   "input_grad", "update:W", "update:b"}  # fmt: skip
    out = tmp_path / "trace.md"
    written = invoke(TRACE, "--format", "markdown", "-o", out)
    assert written.exit_code == 0 and written.stdout == ""
    assert f"wrote {out}" in written.stderr
    assert out.read_text(encoding="utf-8") == invoke(TRACE, "--format", "markdown").stdout
    text = tmp_path / "trace.txt"
    assert invoke(TRACE, "-o", text).exit_code == 0
    assert text.read_text(encoding="utf-8") == invoke(TRACE).stdout


def test_a_run_is_traced_at_its_last_checkpoint(seeds_run: Path) -> None:
    result = invoke(seeds_run, "--precision", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("trace · ")
    assert "run seeds, epoch 1, float64" in " ".join(result.stdout.split())
    assert "probe sample 0 of 1 (training-set index 0)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sample", "5"], "error: --sample 5: the training split has 1 sample (0–0)"),
        (["--at", "output[3]"], "error: --at output[3]: output's output has shape 2; give 1 index counted"),
        (["--layer", "nope"], "error: --layer nope: no such layer; the layers are input, hidden,"),
        (["--checkpoint", "2"], "error: --checkpoint: selects a checkpoint of a run folder"),
    ],
)
def test_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    result = invoke(DENSE, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_a_missing_target_is_one_line() -> None:
    result = invoke("no/such.yaml")
    assert result.exit_code == 2
    assert result.stderr == "error: no/such.yaml: no such config file, run folder or checkpoint file\n"


# ---- the README's example ----------------------------------------------------------------------------


def compare_session(marker: str) -> None:
    """The README block ``marker``: a ``$ cnnbp trace …`` line and its output as printed (``...`` stands
    for lines the README leaves out, and the text between two of them must appear in that order)."""
    command, *shown = block_after(marker).splitlines()
    assert command.startswith("$ cnnbp trace "), command
    result = CliRunner().invoke(app, command.split()[2:], env=PLAIN)
    assert result.exit_code == 0, result.output
    got = result.stdout.splitlines()
    at = 0
    for chunk in "\n".join(shown).split("\n...\n"):
        lines = chunk.strip("\n").splitlines()
        while at < len(got) and got[at : at + len(lines)] != lines:
            at += 1
        assert at < len(got), f"not in the output, in order:\n{chunk}"
        at += len(lines)


def test_the_readme_examples_are_real_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for marker in ("trace text", "trace notes", "trace markdown"):
        compare_session(marker)
    # the Markdown the README renders is a piece of the command's output, as it printed it
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rendered = re.search(
        r"<!-- trace markdown rendered -->\n(.*?)\n<!-- end trace markdown rendered -->", readme, re.S
    )
    assert rendered
    command = block_after("trace markdown").splitlines()[0].split()[2:]
    assert rendered.group(1) in CliRunner().invoke(app, command, env=PLAIN).stdout
