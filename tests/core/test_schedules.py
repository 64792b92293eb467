"""Learning-rate schedules: each one's rate per epoch is its formula (written out here, as torch's docs
give it), torch.optim.lr_scheduler's sequence where torch is installed, and the warm-up is step/N."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnbp.core.schedules import SCHEDULES, Constant, Cosine, Exponential, Step

BASE = 0.1
EPOCHS = 25  # epochs 1..25, so the cosine goes past t_max and climbs back (torch's is periodic too)


def formula(kind: str, k: int) -> float:
    """The rate after k schedule steps, from the formulas (torch.optim.lr_scheduler docs)."""
    if kind == "step":  # StepLR(step_size=4, gamma=0.5)
        return BASE * 0.5 ** (k // 4)
    if kind == "cosine":  # CosineAnnealingLR(T_max=10, eta_min=0.001)
        return 0.001 + (BASE - 0.001) * (1 + math.cos(math.pi * k / 10)) / 2
    if kind == "exponential":  # ExponentialLR(gamma=0.9)
        return BASE * 0.9**k
    return BASE


SCHEDULE_ARGS = {
    "step": {"step_size": 4, "gamma": 0.5},
    "cosine": {"t_max": 10, "eta_min": 0.001},
    "exponential": {"gamma": 0.9},
    "constant": {},
}


@pytest.mark.parametrize("kind", list(SCHEDULE_ARGS))
def test_each_epoch_trains_at_its_formula(kind: str) -> None:
    schedule = SCHEDULES[kind](**SCHEDULE_ARGS[kind])
    # epoch e (1-based) trains after e − 1 schedule steps, whatever step of the epoch it is
    for epoch in range(1, EPOCHS + 1):
        for step in (1 + 10 * (epoch - 1), 10 * epoch):
            assert schedule.lr(BASE, epoch, step) == formula(kind, epoch - 1)


@pytest.mark.parametrize("kind", ["step", "cosine", "exponential"])
def test_the_sequence_is_torchs(kind: str) -> None:
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=BASE)
    made = {
        "step": lambda: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001),
        "exponential": lambda: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
    }[kind]()
    schedule = SCHEDULES[kind](**SCHEDULE_ARGS[kind])
    for epoch in range(1, EPOCHS + 1):
        ours, theirs = schedule.lr(BASE, epoch, epoch), opt.param_groups[0]["lr"]
        # torch steps StepLR and CosineAnnealingLR recursively: the same numbers up to rounding
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15), (epoch, ours, theirs)
        opt.step()
        made.step()


def test_warmup_scales_the_first_n_steps_by_step_over_n() -> None:
    schedule = Exponential(gamma=0.5, warmup=6)
    # 4 steps per epoch: steps 1-4 in epoch 1 (rate BASE), 5-8 in epoch 2 (rate BASE / 2)
    got = [schedule.lr(BASE, 1 + (s - 1) // 4, s) for s in range(1, 10)]
    want = [BASE * s / 6 for s in range(1, 5)] + [BASE / 2 * 5 / 6, BASE / 2, BASE / 2, BASE / 2, BASE / 4]
    np.testing.assert_array_equal(got, want)
    assert Constant(warmup=3).lr(BASE, 1, 2) == BASE * 2 / 3 and Constant().lr(BASE, 9, 100) == BASE


def test_bad_hyper_parameters_are_refused_by_the_signature() -> None:
    with pytest.raises(ValueError, match="step_size"):
        Step(step_size=0)
    with pytest.raises(ValueError, match="t_max"):
        Cosine(t_max=1.5)
    with pytest.raises(ValueError, match="warmup"):
        Constant(warmup=-1)
    assert Step(step_size=2).hyper() == {"step_size": 2, "gamma": 0.1, "warmup": 0}
