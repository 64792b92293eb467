"""Optimisers behind one protocol: ``step``, hyper-parameters, ``state_dict`` / ``load_state_dict``.

An optimiser updates ``params[layer][key]`` in place from ``grads[layer][key]`` (the batch-mean
gradient).  Its state lives in the optimiser, keyed like the parameters, never in the layers.
``state_dict()`` gives that state as plain data — numbers, and buffers as ``{layer: {param: array}}``
mappings — which the checkpoint writer stores generically and ``load_state_dict`` takes back, so a
resumed run continues bit for bit whatever the optimiser.

Hyper-parameters are the constructor's annotated arguments (see :mod:`cnnbp.core.hyper`), so the
config's ``train`` keys, ``hyper()`` and ``from_hyper`` follow from the signature.  ``OPTIMIZERS``
maps the config name (``train.optimizer``) to the class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import numpy as np

from cnnbp.core.hyper import Bound, NonNegFloat, PositiveFloat, hyper_values, set_checked

Params = dict[str, dict[str, np.ndarray]]
#: a rate in [0, 1): momentum, Adam's betas
Rate = Annotated[float, Bound(ge=0, lt=1)]


class Optimizer:
    """The protocol.  Subclasses implement ``update`` and declare their state buffers in ``buffers``."""

    #: the config name (``train.optimizer``)
    kind: ClassVar[str] = "optimizer"
    #: names of the per-parameter state buffers ``state_dict`` holds
    buffers: ClassVar[tuple[str, ...]] = ()

    lr: float

    def __init__(self, **hyper: Any) -> None:
        set_checked(self, hyper)
        #: updates done so far (Adam's t)
        self.t = 0
        self.state: dict[str, Params] = {name: {} for name in self.buffers}

    @classmethod
    def from_hyper(cls, hyper: Mapping[str, Any]) -> Optimizer:
        return cls(**hyper)

    def hyper(self) -> dict[str, Any]:
        """Hyper-parameters as plain values (pairs as lists)."""
        return hyper_values(self)

    def step(self, params: Params, grads: Params) -> None:
        """Update ``params`` in place from ``grads`` (same keys)."""
        self.t += 1
        for lname, group in params.items():
            for key, w in group.items():
                g = grads[lname][key]
                if self.weight_decay:
                    g = g + self.weight_decay * w
                w -= self.update(lname, key, w, g).astype(w.dtype, copy=False)

    def update(self, lname: str, key: str, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The amount subtracted from parameter ``lname.key`` (value ``w``) for gradient ``g``."""
        raise NotImplementedError

    def to_torch(self, torch: Any, params: Any) -> Any:
        """The ``torch.optim`` optimiser making the same updates to ``params`` (an iterable of torch
        Parameters), with fresh state; ``torch`` is the module, passed in: the engine never imports it.
        NotImplementedError when there is none."""
        raise NotImplementedError(f"optimizer {self.kind!r} has no PyTorch counterpart")

    def _buffer(self, name: str, lname: str, key: str, like: np.ndarray) -> np.ndarray:
        """State buffer ``name`` of one parameter, zeros on first use."""
        group = self.state[name].setdefault(lname, {})
        if key not in group:
            group[key] = np.zeros_like(like)
        return group[key]

    def state_dict(self) -> dict[str, Any]:
        """``{"t": updates, <buffer>: {layer: {param: copy}} ...}``."""
        state: dict[str, Any] = {"t": self.t}
        for name in self.buffers:
            state[name] = {l: {k: v.copy() for k, v in g.items()} for l, g in self.state[name].items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what ``state_dict`` gave (buffers copied); missing buffers start empty."""
        self.t = int(state.get("t", 0))
        for name in self.buffers:
            given = state.get(name) or {}
            self.state[name] = {l: {k: np.array(v) for k, v in g.items()} for l, g in given.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """``W ← W − α·g`` (seed 001) with g the batch-mean gradient.

    With weight decay λ: g ← g + λW.  With momentum μ (PyTorch's form): v ← μ v + g,
    W ← W − α v, the velocity v in the ``velocity`` buffer.
    """

    kind = "sgd"
    buffers = ("velocity",)

    def __init__(
        self, lr: PositiveFloat = 0.1, momentum: Rate = 0.0, weight_decay: NonNegFloat = 0.0
    ) -> None:
        super().__init__(lr=lr, momentum=momentum, weight_decay=weight_decay)

    def update(self, lname: str, key: str, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.momentum:
            v = self._buffer("velocity", lname, key, w)
            v *= self.momentum
            v += g
            g = v
        return self.lr * g

    def to_torch(self, torch: Any, params: Any) -> Any:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (SPEC §6), t counting from 1:

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``m̂ = m/(1−β₁ᵗ)``, ``v̂ = v/(1−β₂ᵗ)``,
    ``W ← W − α m̂ / (√v̂ + ε)``; weight decay adds λW to g first (L2, not AdamW).
    """

    kind = "adam"
    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        lr: PositiveFloat = 1e-3,
        betas: tuple[Rate, Rate] = (0.9, 0.999),
        eps: PositiveFloat = 1e-8,
        weight_decay: NonNegFloat = 0.0,
    ) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def update(self, lname: str, key: str, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        b1, b2 = self.betas
        m = self._buffer("exp_avg", lname, key, w)
        v = self._buffer("exp_avg_sq", lname, key, w)
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        # torch's order of operations, so float64 agrees to rounding: denom = √v / √(1−β₂ᵗ) + ε,
        # step = (α / (1−β₁ᵗ)) · m / denom
        denom = np.sqrt(v) / np.sqrt(1.0 - b2**self.t) + self.eps
        return (self.lr / (1.0 - b1**self.t)) * m / denom

    def to_torch(self, torch: Any, params: Any) -> Any:
        betas = (float(self.betas[0]), float(self.betas[1]))
        return torch.optim.Adam(params, lr=self.lr, betas=betas, eps=self.eps, weight_decay=self.weight_decay)


#: config name → class
OPTIMIZERS: dict[str, type[Optimizer]] = {cls.kind: cls for cls in (SGD, Adam)}
