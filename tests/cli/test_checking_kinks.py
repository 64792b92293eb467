"""``cnnbp.gradcheck`` on networks full of ties, where a perturbation crosses kinks everywhere: integer-valued
images with a blank and a flat area, integer-valued conv weights and zero biases (relu inputs exactly 0,
max-pool windows of equal values), and the built-in digits network (blank borders, zero biases).

Every element that crosses a kink is checked (KINK), none is left unchecked, and a broken gradient in a
plugin convolution (tests/cli/conftest.py: ``pad_conv_source``) — ∂W with the kernel turned by 180°, a 1 %
and a 1e-4 error in ∂W, a 1e-4 error in ∂b — FAILs on its own tensor, though its perturbations cross kinks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnbp
from cnnbp.checking import GradcheckReport
from cnnbp.core.layers import MaxPool, ReLU
from tests.cli.conftest import pad_conv_source, tie_config, write_plugin

ROTATED = "dkern[:, :, ::-1, ::-1]"




def check(tmp_path: Path, conv: str, **broken: str) -> GradcheckReport:
    plugin = write_plugin(tmp_path, pad_conv_source(**broken), name="pad_conv.py")
    return cnnbp.gradcheck(tie_config(plugin, conv), method="central")


@pytest.mark.parametrize("conv", ["c1", "c2"])
def test_a_correct_network_of_ties_passes_with_every_kink_checked(tmp_path: Path, conv: str) -> None:
    report = check(tmp_path, conv)
    assert report.ok(strict=True), [(r.layer, r.tensor, r.status) for r in report.rows if r.status != "PASS"]
    w = report.row(conv, "W")
    # the ties are real: perturbing the weights crosses kinks (what hid a broken ∂W behind KINK before)
    assert w.status == "KINK" and w.n_kink >= w.total // 4 and w.n_unchecked == 0
    assert report.result.unchecked == 0
    assert sum(r.n_kink for r in report.rows) > 500


@pytest.mark.parametrize("conv", ["c1", "c2"])
@pytest.mark.parametrize(("broken", "error"), [
    ({"dw": ROTATED}, None), ({"dw": "dkern * 1.01"}, 1e-2), ({"dw": "dkern * 1.0001"}, 1e-4),
    ({"scale_b": "1.0001"}, 1e-4),
], ids=["rotated", "1e-2", "1e-4", "b-1e-4"])  # fmt: skip
def test_a_broken_conv_gradient_fails_on_its_own_tensor(
    tmp_path: Path, conv: str, broken: dict[str, str], error: float | None
) -> None:
    report = check(tmp_path, conv, **broken)
    tensor = "b" if "scale_b" in broken else "W"
    failing = [(r.layer, r.tensor) for r in report.rows if r.status == "FAIL"]
    assert failing == [(conv, tensor)]
    row = report.row(conv, tensor)
    if error is not None:
        assert row.max_rel_error == pytest.approx(error, rel=0.02)
        assert row.detail is not None  # every element with a gradient to scale, those across kinks included
        assert row.n_fail == np.count_nonzero(row.detail.analytic) > 0
    assert not report.passed


# ---- the default digits network ------------------------------------------------------------------------
def digits_with(tmp_path: Path, **broken: str) -> GradcheckReport:
    """The built-in digits config with conv1 replaced by the plugin convolution (same shape and init); the
    input and conv1's rows."""
    plugin = write_plugin(tmp_path, pad_conv_source(**broken), name="pad_conv.py")
    conv1 = "model.layers[0]={type: pad_conv, name: conv1, filters: 16, kernel: 3, padding: 1, " \
            "activation: relu}"
    overrides = [f"plugins=[{plugin}]", conv1]
    return cnnbp.gradcheck(None, "central", overrides=overrides, layers=["input", "conv1"])


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "one-sided"])
def test_every_element_of_the_digits_conv1_bias_is_checked(
    tmp_path: Path, frozen: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All 16 perturbations of conv1.b cross the relu kinks of the blank borders (pre-activation = bias = 0):
    each is checked, by the frozen state (relu held dead there: the dead side's derivative) or, with the
    relu and max pool not held (``one-sided``), against its one-sided derivatives: the live side and the
    dead side, which relu'(0) = 0 takes."""
    if not frozen:
        monkeypatch.setattr(ReLU, "frozen_forward", None)
        monkeypatch.setattr(MaxPool, "frozen_forward", None)
    report = digits_with(tmp_path)
    row = report.row("conv1", "b")
    assert (row.status, row.n_kink, row.n_unchecked, row.n_fail) == ("KINK", 16, 0, 0)
    assert row.forward != row.backward and row.analytic == pytest.approx(row.backward, rel=1e-6, abs=1e-9)
    d = row.detail
    assert d is not None
    np.testing.assert_allclose(d.analytic, d.numeric, rtol=1e-6, atol=1e-9)
    if not frozen:
        assert np.isfinite(d.backward).all() and np.isfinite(d.forward).all()
        assert (d.forward != d.backward).all()
        np.testing.assert_allclose(d.analytic, d.backward, rtol=1e-6, atol=1e-9)  # the dead side
    # without the frozen state, an input pixel of a blank area revives units in opposite directions: the
    # engine's all-dead state is neither side's, and those elements are UNCHECKED (never FAIL)
    assert report.passed and report.ok(strict=True) == frozen
    assert (report.row("input", "input").n_unchecked > 0) != frozen


def test_a_1e_4_error_in_the_digits_conv1_bias_fails(tmp_path: Path) -> None:
    report = digits_with(tmp_path, scale_b="1.0001")
    assert [(r.layer, r.tensor) for r in report.rows if r.status == "FAIL"] == [("conv1", "b")]
    assert report.row("conv1", "b").n_fail == 16
