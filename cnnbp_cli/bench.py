"""Benchmarking a training step: time it on random data, per layer, and against the same network in
PyTorch (``cnnbp bench``; ``benchmarks/run.py``).

A *step* is what training does once per batch: forward, loss, backward (no gradient for the input),
and the optimiser's update.  :func:`run_bench` builds the inputs, times steps, profiles the layers,
and with ``vs_torch`` mirrors the network in PyTorch (:mod:`cnnbp.torch_mirror`) with the same weights
and the same kind of optimiser, checks that the loss and every gradient agree, then times both in
alternation (in blocks of steps when threads run, see :data:`BLOCK`).  Nothing here prints.

Threads: ``threads`` is the engine's setting (``train.threads``: the batch cut into that many shards,
see :mod:`cnnbp.core.parallel`), run on as many threads as the shards and CPUs allow, each with one
BLAS thread; PyTorch is given the same number of threads, so the two compare at matched counts.
:func:`limit_threads` caps numpy's BLAS, :func:`use_threads` PyTorch's too.
"""

from __future__ import annotations

import ctypes
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cnnbp.core.gradcheck import relative_error
from cnnbp.core.losses import MSE, Loss
from cnnbp.core.network import Sequential
from cnnbp.core.optim import Optimizer
from cnnbp.core.parallel import Shards, Threads, keep_freed_memory, shard_bounds, shard_count, usable_cpus
from cnnbp.errors import UserError
from cnnbp.torch_mirror import TORCH_HINT, TorchMirror, have_torch

__all__ = [
    "AGREE_FLOOR",
    "AGREE_TOL",
    "Agreement",
    "BLOCK",
    "BenchResult",
    "LayerTime",
    "TORCH_HINT",
    "Timing",
    "alternate",
    "blas_threads",
    "check_agreement",
    "engine_step",
    "have_torch",
    "limit_threads",
    "parse_threads",
    "profile_layers",
    "random_batch",
    "run_bench",
    "tensor_error",
    "use_threads",
]

#: engine vs PyTorch: the largest relative error allowed (loss and gradients), per dtype
AGREE_TOL = {"float64": 1e-10, "float32": 1e-4}
#: a gradient tensor is compared relative to at least this fraction of the largest gradient of its layer
#: (see :func:`check_agreement`): the rounding noise of a layer's sums measured ≤ 20 ε times that
#: largest gradient, which the floor keeps below AGREE_TOL (float64: 20 · 2.2e-16 / 1e-3 = 4.4e-12, 23×
#: below; float32: 20 · 1.2e-7 / 0.1 = 2.4e-5, 4× below)
AGREE_FLOOR = {"float64": 1e-3, "float32": 0.1}
_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_REEXEC_GUARD = "CNNBP_BENCH_REEXEC"


# ---- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated steps, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float  # batch / median

    @classmethod
    def of(cls, seconds: list[float], batch: int) -> Timing:
        """The timing of steps that took ``seconds`` each, on batches of ``batch`` images."""
        med = statistics.median(seconds)
        return cls(
            1e3 * med, 1e3 * min(seconds), 1e3 * max(seconds), batch / med if med > 0 else float("inf")
        )


@dataclass(frozen=True)
class LayerTime:
    """One layer's share of a step."""

    name: str
    kind: str
    forward_ms: float  # medians over the profiled steps
    backward_ms: float
    share: float  # (forward + backward) / the whole step (layers + loss + update)


@dataclass(frozen=True)
class Agreement:
    """Largest relative errors between engine and PyTorch, per tensor (see :func:`tensor_error`)."""

    loss_rel_err: float
    grad_rel_err: dict[str, float]  # "layer.param" → error
    tolerance: float

    @property
    def max_rel_err(self) -> float:
        """The largest error of all: loss and every gradient."""
        return max([self.loss_rel_err, *self.grad_rel_err.values()])

    @property
    def ok(self) -> bool:
        """Whether every error is within the tolerance (False for a NaN)."""
        return self.max_rel_err <= self.tolerance


@dataclass
class BenchResult:
    """Everything :func:`run_bench` measured; ``to_json`` is what ``cnnbp bench --json`` prints."""

    config: str
    batch: int
    dtype: str
    steps: int
    #: ``engine``: threads running the engine's shards, ``shards``: the batch's shards, ``blas``: BLAS
    #: threads (of each engine thread), ``torch``: PyTorch's threads (None without it)
    threads: dict[str, int | None]
    engine: Timing
    layers: list[LayerTime]  # profiled on one thread, over one shard of ``profile_batch`` samples
    other_ms: float  # loss, gradient scaling and the optimiser's update
    optimizer: str  # the optimiser's class name
    profile_batch: int = 0
    torch: Timing | None = None
    agreement: Agreement | None = None
    ratio: float | None = None  # engine median / torch median (alternating runs)
    block: int = 1  # steps each side ran in a row in that alternation

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``json.dumps``; the agreement with its ``max_rel_err`` and ``ok`` too."""
        d = asdict(self)
        if self.agreement is not None:
            d["agreement"]["max_rel_err"] = self.agreement.max_rel_err
            d["agreement"]["ok"] = self.agreement.ok
        return d


# ---- threads ----------------------------------------------------------------------------------------


def _openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """``(set, get)`` for the number of threads of the OpenBLAS numpy uses, when it can be found."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "_64", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    return setter, getter
    return None


def blas_threads() -> int | None:
    """How many threads numpy's BLAS uses now (None when that cannot be asked)."""
    blas = _openblas()
    return blas[1]() if blas else None


def limit_threads(n: int, argv: list[str] | None = None) -> None:
    """Cap numpy's BLAS (and PyTorch, when imported later) at ``n`` threads.

    OpenBLAS is capped in this process through its own ``openblas_set_num_threads``.  When that
    entry point cannot be found (another BLAS), the environment variables only work before numpy
    is imported, so the command is run again in a new process with them set (``argv``: the command
    line to re-run, ``python -m cnnbp`` + argv; nothing happens without it).
    """
    blas = _openblas()
    if blas is not None:
        blas[0](n)
    else:
        want = str(n)
        if argv is not None and any(os.environ.get(k) != want for k in _THREAD_ENV):
            if os.environ.get(_REEXEC_GUARD):
                return  # already re-run once: the variables were set and did not help; carry on
            env = {**os.environ, **{k: want for k in _THREAD_ENV}, _REEXEC_GUARD: "1"}
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, "-m", "cnnbp", *argv], env)
    os.environ.update({k: str(n) for k in _THREAD_ENV})  # for libraries loaded from now on


def parse_threads(value: str | int | None) -> Threads:
    """``auto`` or a positive integer (``--threads``, ``train.threads``); ValueError otherwise."""
    if value is None or value == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected auto or a positive integer, got {value!r}") from None
    if n < 1 or str(n) != str(value).strip():
        raise ValueError(f"expected auto or a positive integer, got {value!r}")
    return n


def use_threads(n: int, *, torch: bool, argv: list[str] | None = None) -> None:
    """Cap numpy's BLAS at ``n`` threads (see :func:`limit_threads`) and, with ``torch``, PyTorch too
    (imported here)."""
    limit_threads(n, argv)
    if torch:
        import torch as torch_module

        torch_module.set_num_threads(n)


# ---- inputs and steps -------------------------------------------------------------------------------


def random_batch(
    net: Sequential, loss: Loss, batch: int, dtype: np.dtype, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs uniform in [0, 1) and targets of the right kind: class indices, or for a single output
    with MSE a target value per sample."""
    x = rng.random((batch, *net.input_shape)).astype(dtype)
    k = int(np.prod(net.output_shape))
    if k == 1 and isinstance(loss, MSE):
        return x, rng.random((batch, 1)).astype(dtype)
    return x, rng.integers(0, k, size=batch)


def engine_step(
    net: Sequential,
    loss: Loss,
    optimizer: Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    shards: Shards | None = None,
    threads: int = 1,
) -> Callable[[], None]:
    """One training step as the trainer does it (no input gradient), as a callable; with ``shards`` the
    batch is cut into them and run on ``threads`` threads."""
    params, grads = net.parameters(), net.grads()

    def step() -> None:
        if shards is None:
            net.gradients(x, y, loss, input_grad=False)
        else:
            shards.gradients(x, y, threads)
        optimizer.step(params, grads)

    return step


def profile_layers(
    net: Sequential, loss: Loss, optimizer: Optimizer, x: np.ndarray, y: np.ndarray, steps: int
) -> tuple[list[LayerTime], float]:
    """Median forward and backward time of every layer over ``steps`` training steps, and the rest.

    The step is ``Sequential.gradients`` taken apart: the first layer computes only its parameter
    gradients, as in training.
    """
    layers = net.layers
    fwd: list[list[float]] = [[] for _ in layers]
    bwd: list[list[float]] = [[] for _ in layers]
    rest, total = [], []
    params, grads = net.parameters(), net.grads()
    clock = time.perf_counter
    for _ in range(steps + 1):  # the first pass warms the buffers up and is not counted
        t_start = clock()
        a = x
        for i, layer in enumerate(layers):
            t0 = clock()
            a = layer.forward(a)
            fwd[i].append(clock() - t0)
        t0 = clock()
        loss.forward(a, y)
        delta = loss.backward()
        t_other = clock() - t0
        for i in range(len(layers) - 1, -1, -1):
            t0 = clock()
            if i == 0:
                layers[0].backward_params(delta)
            else:
                delta = layers[i].backward(delta)
            bwd[i].append(clock() - t0)
        t0 = clock()
        inv_m = 1.0 / x.shape[0]
        for layer in layers:
            for g in layer.grads.values():
                g *= inv_m
        optimizer.step(params, grads)
        rest.append(t_other + clock() - t0)
        total.append(clock() - t_start)
    med = lambda v: statistics.median(v[1:])  # noqa: E731
    whole = med(total)
    rows = [
        LayerTime(l.name, l.kind, 1e3 * med(f), 1e3 * med(b), (med(f) + med(b)) / whole if whole else 0.0)
        for l, f, b in zip(layers, fwd, bwd, strict=True)
    ]
    return rows, 1e3 * med(rest)


#: Steps each side runs in a row when threads run.  PyTorch's OpenMP workers spin for a while after
#: each of its ops before they sleep (its default, which is how it trains), so an engine step right
#: after a PyTorch step runs beside spinning threads: alternating step by step we measured the engine
#: 1.7× slower than alone on 2 cores.  Making the workers sleep at once (``OMP_WAIT_POLICY=PASSIVE``,
#: what bench did before) slows PyTorch 1.6–2× instead.  In blocks at most the first step of each is
#: disturbed, one in ten, which does not move the medians much.
BLOCK = 10


def alternate(fns: list[Callable[[], None]], steps: int, warmup: int, block: int = 1) -> list[list[float]]:
    """Time ``steps`` calls of each function, ``block`` calls of one after ``block`` of the next, round
    after round, so that all see the same machine; the seconds of every call, per function."""
    for _ in range(warmup):
        for f in fns:
            f()
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < steps:
        n = min(block, steps - len(times[0]))
        for f, t in zip(fns, times, strict=True):
            for _ in range(n):
                t0 = time.perf_counter()
                f()
                t.append(time.perf_counter() - t0)
    return times


# ---- agreement --------------------------------------------------------------------------------------


def tensor_error(a: np.ndarray | float, b: np.ndarray | float, floor: float = 0.0) -> float:
    """How far ``a`` is from the reference ``b``, as one number: ``max|a − b| / max(max|b|, floor)``.

    This is the project's element error (``cnnbp.core.gradcheck.relative_error``) with the floor
    ``max(max|b|, floor)``, so that elements far below the tensor's scale are compared against that
    scale; the largest element error is ``max|a − b| / max(max|b|, floor)`` (to rounding: an |aᵢ|
    above that divides by itself).  0 when both are all zero; inf when either holds a NaN or an
    infinity.
    """
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if b64.size == 0:
        return 0.0
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return math.inf  # checked here: relative_error gives 0 where a NaN makes its denominator NaN
    return float(np.max(relative_error(a64, b64, max(float(np.max(np.abs(b64))), floor))))


def check_agreement(
    net: Sequential, loss: Loss, mirror: TorchMirror, x: np.ndarray, y: np.ndarray
) -> Agreement:
    """Loss and every parameter gradient of one batch, engine vs PyTorch, at the same weights.

    Both sides compute deterministically, so that they can agree to rounding: the engine in its
    ``probe`` phase (no dropout, batchnorm with the batch's statistics, nothing updated), PyTorch in
    :meth:`TorchMirror.probe_mode` (train mode with its dropout modules in eval).

    Each gradient is compared relative to its own largest value, but at least ``AGREE_FLOOR[dtype]``
    times the largest gradient of its layer (PyTorch's values): a bias followed by a batchnorm has a
    gradient of exactly 0, computed as a sum that cancels to rounding noise on both sides, and that
    noise has the size of rounding in the layer's other sums, not of the tensor itself.
    """
    with net.in_phase("probe"):
        value = net.gradients(x, y, loss, input_grad=False)
    t_value, t_grads = mirror.gradients(x, y)
    fraction = AGREE_FLOOR[net.dtype.name]
    errs = {}
    for lname, group in net.grads().items():
        floor = fraction * max(float(np.max(np.abs(g), initial=0.0)) for g in t_grads[lname].values())
        for key, g in group.items():
            errs[f"{lname}.{key}"] = tensor_error(g, t_grads[lname][key], floor)
    return Agreement(tensor_error(value, t_value), errs, AGREE_TOL[net.dtype.name])


# ---- the whole benchmark -------------------------------------------------------------------------------


def run_bench(
    net: Sequential,
    loss: Loss,
    optimizer: Optimizer,
    *,
    name: str,
    batch: int,
    dtype: np.dtype | type,
    steps: int,
    seed: int = 0,
    vs_torch: bool = False,
    warmup: int = 3,
    threads: Threads = "auto",
) -> BenchResult:
    """Build ``net`` in ``dtype`` (seeded), time ``steps`` training steps on one random batch, profile
    the layers, and with ``vs_torch`` check agreement and time PyTorch (same optimiser kind and
    hyper-parameters) in alternation.  ``optimizer`` is stepped; its state is put back afterwards.

    ``threads`` is the engine's setting (``train.threads``); the engine's shards run on
    ``min(shards, CPUs)`` threads, and PyTorch is timed on as many (its count is put back after)."""
    dtype = np.dtype(dtype)
    keep_freed_memory()  # as the trainer does: steps measured without its page faults are the steps it runs
    rng = np.random.default_rng(seed)
    net.build(rng, dtype)
    x, y = random_batch(net, loss, batch, dtype, rng)
    split = shard_count(threads, net, batch)
    running = min(split, usable_cpus())

    mirror = agreement = None
    if vs_torch:
        if not have_torch():
            raise UserError(TORCH_HINT)
        mirror = TorchMirror(net, loss)  # same initial weights
        agreement = check_agreement(net, loss, mirror, x, y)
    torch_before = mirror.torch.get_num_threads() if mirror is not None else 0
    try:
        if mirror is not None:
            mirror.torch.set_num_threads(running)
        return _timed(net, loss, optimizer, x, y, split, running, mirror, agreement, name, steps, warmup)
    finally:
        if mirror is not None:
            mirror.torch.set_num_threads(torch_before)


def _timed(
    net: Sequential,
    loss: Loss,
    optimizer: Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    split: int,
    running: int,
    mirror: TorchMirror | None,
    agreement: Agreement | None,
    name: str,
    steps: int,
    warmup: int,
) -> BenchResult:
    """The timing part of :func:`run_bench`: engine (and PyTorch) in alternation (in blocks of
    :data:`BLOCK` steps when threads run), then the profile."""
    batch, dtype = x.shape[0], net.dtype

    # time the engine and torch from the same weights: keep a copy, restore it before profiling; the
    # buffers too (training steps move batchnorm's running statistics)
    start = {l: {k: v.copy() for k, v in g.items()} for l, g in net.parameters().items()}
    start_state = {l: {k: v.copy() for k, v in g.items()} for l, g in net.state().items()}
    opt_start = optimizer.state_dict()
    shards = Shards(net, loss, split) if split > 1 else None
    fns = [engine_step(net, loss, optimizer, x, y, shards, running)]
    if mirror is not None:
        fns.append(mirror.step_fn(x, y, optimizer))
    block = BLOCK if mirror is not None and running > 1 else 1
    times = alternate(fns, steps, warmup, block)  # with the engine alone: plain repeated steps
    engine = Timing.of(times[0], batch)
    torch_timing = ratio = None
    if mirror is not None:
        torch_timing = Timing.of(times[1], batch)
        ratio = engine.median_ms / torch_timing.median_ms
    net.set_parameters(start)
    net.set_state(start_state)
    optimizer.load_state_dict(opt_start)
    lo, hi = shard_bounds(batch, split)[0]  # what one thread computes
    layers, other = profile_layers(net, loss, optimizer, x[lo:hi], y[lo:hi], max(3, min(steps, 50)))
    net.set_parameters(start)
    net.set_state(start_state)
    optimizer.load_state_dict(opt_start)
    return BenchResult(
        config=name,
        batch=batch,
        dtype=dtype.name,
        steps=steps,
        threads={
            "engine": running,
            "shards": split,
            "blas": blas_threads(),
            "torch": mirror.torch.get_num_threads() if mirror else None,
        },
        engine=engine,
        layers=layers,
        other_ms=other,
        optimizer=type(optimizer).__name__,
        torch=torch_timing,
        agreement=agreement,
        ratio=ratio,
        profile_batch=hi - lo,
        block=block,
    )
