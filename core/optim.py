"""SGD with optional momentum and weight decay; its state lives here, not in the layers."""

from __future__ import annotations

import numpy as np

Params = dict[str, dict[str, np.ndarray]]


class SGD:
    """``W ← W − α·g`` (seed 001) with g the batch-mean gradient.

    With weight decay λ: g ← g + λW.  With momentum μ (PyTorch's form):
    v ← μ v + g,  W ← W − α v.  ``state`` holds the velocities, keyed like the
    parameters (``state[layer][param]``), so it can be saved and restored.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.state: Params = {}

    def step(self, params: Params, grads: Params) -> None:
        """Update ``params`` in place from ``grads`` (same keys)."""
        for lname, group in params.items():
            for key, w in group.items():
                g = grads[lname][key]
                if self.weight_decay:
                    g = g + self.weight_decay * w
                if self.momentum:
                    v = self.state.setdefault(lname, {}).get(key)
                    if v is None:
                        v = self.state[lname][key] = np.zeros_like(w)
                    v *= self.momentum
                    v += g
                    g = v
                w -= (self.lr * g).astype(w.dtype, copy=False)

    def state_dict(self) -> Params:
        """A copy of the velocities, ``{layer: {param: v}}``."""
        return {l: {k: v.copy() for k, v in g.items()} for l, g in self.state.items()}

    def load_state_dict(self, state: Params) -> None:
        """Replace the velocities with copies of ``state`` (as ``state_dict`` returns it)."""
        self.state = {l: {k: np.array(v) for k, v in g.items()} for l, g in state.items()}
