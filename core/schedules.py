"""Learning-rate schedules: the lr of every optimiser step as a pure function of the epoch and the step.

A schedule is stepped once per epoch, as ``torch.optim.lr_scheduler`` is when ``scheduler.step()`` is
called at the end of every epoch: epoch ``e`` (1-based) trains with the schedule's value after
``k = e − 1`` steps, from the base rate α₀ (``train.lr``):

* ``step`` (``StepLR``):        α = α₀ · γ^⌊k / step_size⌋
* ``cosine`` (``CosineAnnealingLR``): α = η_min + (α₀ − η_min) · (1 + cos(π k / t_max)) / 2
  (periodic in k, as torch's: after ``t_max`` epochs the rate climbs back)
* ``exponential`` (``ExponentialLR``): α = α₀ · γ^k
* ``constant``:                 α = α₀ (for a warm-up alone)

Warm-up (``warmup: N``): during the first N optimiser steps of the run (s = 1 … N, counted over the
whole run) the rate is the scheduled one × s / N; from step N + 1 on, the schedule alone.

Nothing is carried from step to step: :meth:`Schedule.lr` of the same (epoch, step) is the same float
whenever it is asked, so a resumed run uses bit for bit the rates of one that never stopped.  The
closed forms are torch's documented formulas; torch computes StepLR and CosineAnnealingLR recursively,
which agrees with them to rounding (tests/core/test_schedules.py measures it).

A schedule's keys are its constructor's annotated arguments (:mod:`cnnbp.core.hyper`), so the config's
``train.schedule`` keys and their checks follow from the signatures; ``SCHEDULES`` maps ``type`` to
the class.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from cnnbp.core.hyper import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt, hyper_values, set_checked

__all__ = ["SCHEDULES", "Constant", "Cosine", "Exponential", "Schedule", "Step"]


class Schedule:
    """The protocol: :meth:`scheduled` (per epoch) and the warm-up factor, combined by :meth:`lr`."""

    #: the config name (``train.schedule.type``)
    kind: ClassVar[str] = "schedule"
    warmup: int = 0

    def __init__(self, **hyper: Any) -> None:
        set_checked(self, hyper)

    def hyper(self) -> dict[str, Any]:
        """Hyper-parameters as plain values (the config's keys but ``type``)."""
        return hyper_values(self)

    def scheduled(self, base_lr: float, k: int) -> float:
        """The rate after ``k`` schedule steps (``k`` = epochs completed before the epoch trained)."""
        raise NotImplementedError

    def lr(self, base_lr: float, epoch: int, step: int) -> float:
        """The rate of optimiser step ``step`` (1-based over the run) in epoch ``epoch`` (1-based)."""
        rate = self.scheduled(base_lr, max(epoch - 1, 0))
        if step < self.warmup:  # at step N the factor is 1: no rounding
            rate = rate * step / self.warmup
        return rate

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """α = α₀ in every epoch: a warm-up with no schedule after it."""

    kind = "constant"

    def __init__(self, warmup: NonNegInt = 0) -> None:
        super().__init__(warmup=warmup)

    def scheduled(self, base_lr: float, k: int) -> float:
        return base_lr


class Step(Schedule):
    """α = α₀ · γ^⌊k / step_size⌋, as ``torch.optim.lr_scheduler.StepLR``."""

    kind = "step"

    def __init__(self, step_size: PositiveInt, gamma: PositiveFloat = 0.1, warmup: NonNegInt = 0) -> None:
        super().__init__(step_size=step_size, gamma=gamma, warmup=warmup)

    def scheduled(self, base_lr: float, k: int) -> float:
        return base_lr * self.gamma ** (k // self.step_size)


class Cosine(Schedule):
    """α = η_min + (α₀ − η_min) · (1 + cos(π k / t_max)) / 2, as ``CosineAnnealingLR``'s closed form."""

    kind = "cosine"

    def __init__(self, t_max: PositiveInt, eta_min: NonNegFloat = 0.0, warmup: NonNegInt = 0) -> None:
        super().__init__(t_max=t_max, eta_min=eta_min, warmup=warmup)

    def scheduled(self, base_lr: float, k: int) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * k / self.t_max)) / 2


class Exponential(Schedule):
    """α = α₀ · γ^k, as ``torch.optim.lr_scheduler.ExponentialLR``."""

    kind = "exponential"

    def __init__(self, gamma: PositiveFloat, warmup: NonNegInt = 0) -> None:
        super().__init__(gamma=gamma, warmup=warmup)

    def scheduled(self, base_lr: float, k: int) -> float:
        return base_lr * self.gamma**k


#: config name (``train.schedule.type``) → class
SCHEDULES: dict[str, type[Schedule]] = {cls.kind: cls for cls in (Step, Cosine, Exponential, Constant)}
