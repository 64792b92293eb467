"""Mini-batch training loop, batched evaluation and the probe batch: pure NumPy, no files, no printing.

Reproducible shuffling without carried state: the sample order of epoch ``e`` (1-based) is
``np.random.default_rng([seed, e]).permutation(N)``, so an epoch's order depends only on the seed and
the epoch number, and a run resumed at an epoch boundary replays exactly the same batches.  A run
resumed mid-epoch passes :class:`EpochProgress` (batches done, running loss sum and correct count) to
``run_epoch``, which recomputes the epoch's order and runs only the remaining batches.

Divergence: after each batch's gradients and *before* the update, the batch loss and a sum of every
gradient array are checked for finiteness (a few reductions, cheap beside the batch itself).  When one
is NaN or Inf, the batch is recomputed with delta recording to find the first layer, going back from
the output, whose delta is non-finite, and :class:`Diverged` is raised with the weights still those
before the failing batch.  With ``divergence_factor`` set, a batch loss above ``factor × first_loss``
(the loss of the run's very first batch, at the initial weights) is divergence too.

Threads (``threads``, the config's ``train.threads``): a batch is cut into a fixed number of shards,
computed forward and backward on replicas of the network in parallel threads, their gradients added in
shard order (:mod:`cnnbp.core.parallel`).  The numbers depend on the number of shards, which follows
from the setting and the network alone; how many threads run them (:class:`~cnnbp.core.parallel.Pace`,
from the CPUs free and the step times measured) never changes a result.  Evaluation shares its batches
out to the same threads; the probe batch runs on one thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential
from cnnbp.core.optim import Optimizer
from cnnbp.core.parallel import Pace, Shards, Threads, keep_freed_memory, shard_count, usable_cpus

Params = dict[str, dict[str, np.ndarray]]
#: the smallest batch :meth:`Trainer.evaluate` runs (forward only: larger batches, fewer calls)
EVAL_BATCH = 256
#: the stream of a step's random draws (dropout): ``default_rng([seed, STOCHASTIC_STREAM, step])``
STOCHASTIC_STREAM = int.from_bytes(b"dropout", "big")
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


@dataclass
class EpochProgress:
    """Where a run stands inside epoch ``epoch``: batches done and the running training sums.

    ``loss_sum`` is Σ batch_loss × batch_size over the batches done, ``n_correct`` their correct count:
    with these restored, an epoch resumed in the middle reports the same train_loss and train_acc as
    one run straight through.
    """

    epoch: int
    batches_done: int = 0
    loss_sum: float = 0.0
    n_correct: int = 0


class Diverged(Exception):
    """Training produced a non-finite loss or gradient, or a loss over ``divergence_factor``.

    Raised before the optimiser step of the failing batch, so the weights are the last good ones.
    ``step`` is the number the failing update would have had (1-based, counting every update of the
    run); ``batch`` its place in the epoch (1-based) of ``batches``.  ``layer`` names the first layer,
    going back from the output, whose delta was non-finite (None when every delta was finite).
    """

    def __init__(
        self, epoch: int, step: int, batch: int, batches: int, loss: float, layer: str | None, reason: str
    ) -> None:
        self.epoch, self.step, self.batch, self.batches = epoch, step, batch, batches
        self.loss, self.layer, self.reason = loss, layer, reason
        super().__init__(f"diverged in epoch {epoch} at step {step} (batch {batch} of {batches}): {reason}")


@dataclass(frozen=True)
class ProbeResult:
    """Gradients and per-sample deltas of the probe batch at the weights they were taken at."""

    grads: Params  # {layer: {param: ∂(mean probe loss)/∂θ}}, parametric layers only
    deltas: dict[str, np.ndarray]  # {layer: (n_probe, *output_shape)} for every layer, in layer order
    loss: float  # mean probe loss
    #: {layer: (n_probe, *output_shape)}: every layer's output (its activations), in layer order
    activations: dict[str, np.ndarray] = field(default_factory=dict)


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
    """Runs epochs of mini-batch updates over in-memory arrays and counts optimiser updates in ``step``."""

    def __init__(
        self,
        net: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        divergence_factor: float | None = None,
        threads: Threads = "auto",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        shard_count(threads, net, 1)  # a ValueError for a bad setting, now
        self.net = net
        self.loss = loss
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.divergence_factor = divergence_factor
        self.step = 0
        #: the loss of the run's first batch (NaN before it): the reference of ``divergence_factor``
        self.first_loss = float("nan")
        #: the latest epoch run, updated after every completed batch and kept when the epoch ends
        #: (then ``batches_done`` is all of them); None before the first epoch
        self.progress: EpochProgress | None = None
        #: True from the start of an optimiser update until its bookkeeping is done: an exception
        #: that lands then (a second Ctrl-C) leaves weights that match no step, not to be saved
        self.mid_update = False
        self._keep = _KeepOutput(loss)
        #: ``train.threads``: a number of shards per batch (threads at most), or ``auto``
        self.threads = threads
        self._split: int | None = None  # shards per full batch, worked out on first use
        self._shards: Shards | None = None
        self._pace: Pace | None = None

    @property
    def shards(self) -> int:
        """How many shards a full batch is cut into (:func:`cnnbp.core.parallel.shard_count`); 1 also when
        the network cannot be replicated (a user's layer that ``copy.deepcopy`` refuses)."""
        if self._split is None:
            self._split = shard_count(self.threads, self.net, self.batch_size)
        return self._split

    def threads_now(self) -> int:
        """How many threads the next step runs on (1 without shards)."""
        return self._pace.threads() if self._parallel() is not None and self._pace is not None else 1

    def _parallel(self) -> Shards | None:
        """The shards of this network (None when a batch is not cut), made on first use."""
        if self.shards == 1:
            return None
        if self._shards is None:
            try:
                self._shards = Shards(self.net, self.loss, self.shards, batch_size=self.batch_size,
                                      eval_size=max(self.batch_size, EVAL_BATCH))  # fmt: skip
            except Exception:  # noqa: BLE001 - a layer that cannot be copied: one shard, as always
                self._split = 1
                return None
            self._pace = Pace(min(self.shards, usable_cpus()))
        return self._shards

    def order(self, n: int, epoch: int) -> np.ndarray | None:
        """The sample order of ``epoch`` (None = the stored order, when shuffling is off)."""
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def run_epoch(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epoch: int,
        on_batch: BatchCallback | None = None,
        resume: EpochProgress | None = None,
    ) -> EpochStats:
        """One pass over ``(x, y)`` in batches of ``batch_size`` (last one smaller); one update each.

        With ``resume`` (an :class:`EpochProgress` of this epoch) the first ``resume.batches_done``
        batches are skipped and the training sums continue from its values.  ``self.progress`` tracks
        the epoch after every batch, so whoever stops the loop (an exception from ``on_batch``) can
        save the exact position.  Raises :class:`Diverged` before an update that would break the run.
        """
        n = x.shape[0]
        if n == 0 or y.shape[0] != n:
            raise ValueError(f"need matching non-empty x and y, got {n} and {y.shape[0]} samples")
        order = self.order(n, epoch)
        bs = self.batch_size
        n_batches = -(-n // bs)
        start = EpochProgress(epoch) if resume is None else resume
        if start.epoch != epoch or not 0 <= start.batches_done <= n_batches:
            raise ValueError(f"cannot resume epoch {epoch} from {start}")
        progress = self.progress = EpochProgress(epoch, start.batches_done, start.loss_sum, start.n_correct)
        keep_freed_memory()  # no page faults for every step's new arrays (see there)
        with self.net.in_phase("train"):
            for i in range(start.batches_done, n_batches):
                lo, hi = i * bs, min(n, (i + 1) * bs)
                if order is None:
                    xb, yb = x[lo:hi], y[lo:hi]  # views: no copy
                else:
                    idx = order[lo:hi]
                    xb, yb = x[idx], y[idx]  # the one copy of the batch
                batch_loss, correct = self._train_batch(xb, yb, epoch, i + 1, n_batches)
                progress.loss_sum += batch_loss * (hi - lo)
                progress.n_correct += correct
                progress.batches_done = i + 1
                self.mid_update = False
                if on_batch is not None:
                    on_batch(i + 1, n_batches, batch_loss)
        return EpochStats(epoch, progress.loss_sum / n, progress.n_correct / n, n_batches, n)

    def _step_rng(self, shards: Shards | None) -> None:
        """The draws of the update about to be made (dropout masks) come from (seed, step), and with
        shards from (seed, step, shard): a resumed run makes the same ones."""
        if self.net.stochastic:
            stream = [self.seed, STOCHASTIC_STREAM, self.step + 1]
            if shards is None:
                self.net.set_rng(np.random.default_rng(stream))
            else:
                shards.set_rngs([np.random.default_rng([*stream, i]) for i in range(shards.shards)])

    def _gradients(self, xb: np.ndarray, yb: np.ndarray) -> tuple[float, np.ndarray]:
        """Batch loss and network output of one batch, every gradient filled (no ∂L/∂x: training never
        uses it); in shards when the batch is cut, timed for the choice of the thread count."""
        shards = self._parallel()
        self._step_rng(shards)
        if shards is None or self._pace is None:
            batch_loss = self.net.gradients(xb, yb, self._keep, input_grad=False)
            out, self._keep.out = self._keep.out, None
            return batch_loss, out
        t0 = time.perf_counter()
        result = shards.gradients(xb, yb, self._pace.threads())
        self._pace.record((time.perf_counter() - t0) / xb.shape[0])
        return result

    def _train_batch(
        self, xb: np.ndarray, yb: np.ndarray, epoch: int, batch: int, n_batches: int
    ) -> tuple[float, int]:
        """Gradients of one batch, the divergence checks, then the update: (batch loss, correct count).

        Leaves ``mid_update`` set: the caller clears it once its own bookkeeping of the step is done.
        """
        net = self.net
        batch_loss, out = self._gradients(xb, yb)
        if not (math.isfinite(batch_loss) and _all_finite(net.grads())):
            raise self._diverged(epoch, batch, n_batches, xb, yb, batch_loss)
        factor = self.divergence_factor
        if math.isnan(self.first_loss):
            self.first_loss = batch_loss
        elif factor is not None and self.first_loss > 0 and batch_loss > factor * self.first_loss:
            reason = (
                f"loss {batch_loss:.6g} is over divergence_factor {factor:g} × the first batch's loss "
                f"{self.first_loss:.6g}"
            )
            raise Diverged(epoch, self.step + 1, batch, n_batches, batch_loss, None, reason)
        correct = correct_count(out, yb)
        self.mid_update = True
        self.optimizer.step(net.parameters(), net.grads())
        self.step += 1
        return batch_loss, correct

    def _diverged(
        self, epoch: int, batch: int, batches: int, x: np.ndarray, y: np.ndarray, batch_loss: float
    ) -> Diverged:
        """Recompute a failing batch with recording and say where it first went non-finite.

        The layer named is the first one, going back from the output, whose delta holds NaN or Inf;
        failing that, the last layer with a non-finite gradient; failing that (a loss that overflowed
        on finite outputs), the output layer.  The first layer whose forward output is non-finite is
        added when there is one.
        """
        what = "loss" if not math.isfinite(batch_loss) else "gradient"
        recorded: dict[str, bool] = {}  # output → input, as backward visits the layers; every shard

        def record(name: str, delta: np.ndarray) -> None:
            recorded[name] = recorded.get(name, True) and bool(np.isfinite(delta).all())

        saved = {name: {k: v.copy() for k, v in group.items()} for name, group in self.net.state().items()}
        shards = self._parallel()
        with np.errstate(all="ignore"):
            self._step_rng(shards)
            if shards is None:
                self.net.gradients(x, y, self.loss, record, input_grad=False)
            else:  # the same shards, one after the other: the same numbers as the failing step
                shards.gradients(x, y, 1, record)
            self._step_rng(shards)
            forward_bad, out_max = _forward_check(self.net, x, shards)
        self.net.set_state(saved)  # the recomputation is not a training step
        layer = next((name for name, ok in recorded.items() if not ok), None)
        bad_grads = [
            name
            for name, group in self.net.grads().items()
            if not all(np.isfinite(g).all() for g in group.values())
        ]
        if layer is not None:
            where = f"first non-finite delta at layer {layer} (going back from the output)"
        elif bad_grads:
            layer = bad_grads[-1]
            where = f"every delta is finite, the gradient of layer {layer} is not"
        else:
            layer = self.net.layers[-1].name
            where = (
                f"every delta is finite: the loss overflowed on the outputs of layer {layer} "
                f"(largest |output| {out_max:.3g})"
            )
        if forward_bad is not None:
            where += f"; the forward pass first went non-finite at {forward_bad}"
        reason = f"{what} is {_fmt_value(batch_loss) if what == 'loss' else 'non-finite'}; {where}"
        return Diverged(epoch, self.step + 1, batch, batches, batch_loss, layer, reason)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> tuple[float, float]:
        """Mean loss and accuracy over ``(x, y)`` at the current weights, in batches, no gradients.

        Returns ``(nan, nan)`` for an empty set.
        """
        n = x.shape[0]
        if n == 0:
            return float("nan"), float("nan")
        bs = int(batch_size or max(self.batch_size, EVAL_BATCH))
        shards = self._parallel()
        with self.net.in_phase("eval"):
            if shards is None:
                results = [self._forward_loss(x[lo : lo + bs], y[lo : lo + bs]) for lo in range(0, n, bs)]
            else:  # whole batches to each thread: every batch's numbers are the same as on one thread
                results = shards.evaluate(x, y, bs, self.threads_now())
        loss_sum, n_correct = 0.0, 0
        for lo, (out, losses) in zip(range(0, n, bs), results, strict=True):  # in batch order
            loss_sum += float(losses.sum().real)
            n_correct += correct_count(out, y[lo : lo + bs])
        return loss_sum / n, n_correct / n

    def _forward_loss(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.net.forward(x)
        return out, self.loss.forward(out, y)

    def probe(self, x: np.ndarray, y: np.ndarray) -> ProbeResult:
        """Mean-loss gradients and every layer's per-sample deltas and outputs for ``(x, y)``; no
        optimiser step."""
        recorded: dict[str, np.ndarray] = {}
        outputs: dict[str, np.ndarray] = {}

        def record(name: str, delta: np.ndarray) -> None:
            recorded[name] = np.array(delta, copy=True)  # the engine may reuse or free its buffers

        def output(name: str, a: np.ndarray) -> None:
            outputs[name] = a  # copied below, once the backward pass (which only reads it) is done

        with self.net.in_phase("probe"):
            loss = self.net.gradients(x, y, self.loss, record, input_grad=False, outputs=output)
        deltas = {layer.name: recorded[layer.name] for layer in self.net.layers}
        grads = {name: {k: g.copy() for k, g in group.items()} for name, group in self.net.grads().items()}
        # the copies after the backward pass, not during it: the peak of memory stays the backward's
        activations = {layer.name: np.array(outputs[layer.name], copy=True) for layer in self.net.layers}
        return ProbeResult(grads, deltas, loss, activations)


def _all_finite(grads: Params) -> bool:
    """True when no gradient holds NaN or Inf (one sum per array; a full check only if a sum is Inf)."""
    for group in grads.values():
        for g in group.values():
            if not np.isfinite(g.sum()) and not np.isfinite(g).all():  # a finite array can sum to Inf
                return False
    return True


def _forward_check(net: Sequential, x: np.ndarray, shards: Shards | None = None) -> tuple[str | None, float]:
    """The first layer, from the input, whose forward output holds NaN or Inf (None when none does),
    and the largest finite magnitude of the network's output; with ``shards``, shard by shard on their
    replicas (the draws of a stochastic layer are the shards' own)."""
    if not np.isfinite(x).all():
        return "the input", math.nan
    pieces = [(net, x)] if shards is None else shards.pieces(x)
    first, outs = len(net.layers), []
    for twin, a in pieces:
        for i, layer in enumerate(twin.layers):
            a = layer.forward(a)
            if i < first and not np.isfinite(a).all():
                first = i
        outs.append(a)
    out = np.concatenate(outs)
    finite = np.abs(out[np.isfinite(out)])
    bad = net.layers[first].name if first < len(net.layers) else None
    return bad, float(finite.max()) if finite.size else math.nan


def _fmt_value(v: float) -> str:
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
