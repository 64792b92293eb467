"""Mini-batch training loop, batched evaluation and the probe batch: pure NumPy, no files, no printing.

Reproducible shuffling without carried state: the sample order of epoch ``e`` (1-based) is
``np.random.default_rng([seed, e]).permutation(N)``, so an epoch's order depends only on the seed and
the epoch number, and a run resumed at an epoch boundary replays exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.losses import Loss
from core.network import Sequential
from core.optim import SGD

Params = dict[str, dict[str, np.ndarray]]
#: ``on_batch(batch, n_batches, batch_loss)``, called after each update; ``batch`` counts from 1.
BatchCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class EpochStats:
    """What one pass over the training set measured (losses and accuracies are means over samples)."""

    epoch: int
    train_loss: float
    train_acc: float
    steps: int  # optimiser updates in this epoch
    samples: int


@dataclass(frozen=True)
class ProbeResult:
    """Gradients and per-sample deltas of the probe batch at the weights they were taken at."""

    grads: Params  # {layer: {param: ∂(mean probe loss)/∂θ}}, parametric layers only
    deltas: dict[str, np.ndarray]  # {layer: (n_probe, *output_shape)} for every layer, in layer order
    loss: float  # mean probe loss


def correct_count(out: np.ndarray, y: np.ndarray) -> int:
    """How many rows of ``out`` pick the right class.

    The class is the arg-max of the output against a class index (N,) or the arg-max of a target
    vector (N, K).  A single-output network is read as a binary classifier thresholded at 0.5.
    """
    if out.shape[1] == 1:
        truth = (y if y.ndim == 1 else y[:, 0]) > 0.5
        return int(np.count_nonzero((out[:, 0] > 0.5) == truth))
    truth = y if y.ndim == 1 else y.argmax(axis=1)
    return int(np.count_nonzero(out.argmax(axis=1) == truth))


class _KeepOutput(Loss):
    """A loss that remembers the network output it was given, so accuracy needs no second forward pass."""

    def __init__(self, inner: Loss) -> None:
        self.inner = inner
        self.out: np.ndarray | None = None

    def forward(self, out: np.ndarray, target: np.ndarray) -> np.ndarray:
        self.out = out
        return self.inner.forward(out, target)

    def backward(self) -> np.ndarray:
        return self.inner.backward()


class Trainer:
    """Runs epochs of mini-batch SGD over in-memory arrays and counts optimiser updates in ``step``."""

    def __init__(
        self,
        net: Sequential,
        loss: Loss,
        optimizer: SGD,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.net = net
        self.loss = loss
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.step = 0
        self._keep = _KeepOutput(loss)

    def order(self, n: int, epoch: int) -> np.ndarray | None:
        """The sample order of ``epoch`` (None = the stored order, when shuffling is off)."""
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def run_epoch(
        self, x: np.ndarray, y: np.ndarray, epoch: int, on_batch: BatchCallback | None = None
    ) -> EpochStats:
        """One pass over ``(x, y)`` in batches of ``batch_size`` (last one smaller); one update each."""
        n = x.shape[0]
        if n == 0 or y.shape[0] != n:
            raise ValueError(f"need matching non-empty x and y, got {n} and {y.shape[0]} samples")
        order = self.order(n, epoch)
        bs = self.batch_size
        n_batches = -(-n // bs)
        net, keep, opt = self.net, self._keep, self.optimizer
        params, grads = net.parameters(), net.grads()
        loss_sum = 0.0
        n_correct = 0
        for i in range(n_batches):
            lo, hi = i * bs, min(n, (i + 1) * bs)
            if order is None:
                xb, yb = x[lo:hi], y[lo:hi]  # views: no copy
            else:
                idx = order[lo:hi]
                xb, yb = x[idx], y[idx]  # the one copy of the batch
            batch_loss = net.gradients(xb, yb, keep, input_grad=False)  # training never uses ∂L/∂x
            opt.step(params, grads)
            self.step += 1
            loss_sum += batch_loss * (hi - lo)
            n_correct += correct_count(keep.out, yb)
            if on_batch is not None:
                on_batch(i + 1, n_batches, batch_loss)
        keep.out = None  # do not pin the last batch's activations
        return EpochStats(epoch, loss_sum / n, n_correct / n, n_batches, n)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> tuple[float, float]:
        """Mean loss and accuracy over ``(x, y)`` at the current weights, in batches, no gradients.

        Returns ``(nan, nan)`` for an empty set.
        """
        n = x.shape[0]
        if n == 0:
            return float("nan"), float("nan")
        bs = int(batch_size or max(self.batch_size, 256))
        loss_sum = 0.0
        n_correct = 0
        for lo in range(0, n, bs):
            xb, yb = x[lo : lo + bs], y[lo : lo + bs]
            out = self.net.forward(xb)
            loss_sum += float(self.loss.forward(out, yb).sum().real)
            n_correct += correct_count(out, yb)
        return loss_sum / n, n_correct / n

    def probe(self, x: np.ndarray, y: np.ndarray) -> ProbeResult:
        """Mean-loss gradients and every layer's per-sample deltas for ``(x, y)``; no optimiser step."""
        recorded: dict[str, np.ndarray] = {}

        def record(name: str, delta: np.ndarray) -> None:
            recorded[name] = np.array(delta, copy=True)  # the engine may reuse or free its buffers

        loss = self.net.gradients(x, y, self.loss, record, input_grad=False)
        deltas = {layer.name: recorded[layer.name] for layer in self.net.layers}
        grads = {name: {k: g.copy() for k, g in group.items()} for name, group in self.net.grads().items()}
        return ProbeResult(grads, deltas, loss)
