"""Data parallelism for training: a batch cut into a fixed number of shards, each computed forward and
backward on its own replica of the network (the replicas share the parameter arrays), the shards'
gradient sums added in shard order.

Determinism.  Shard ``i`` of ``S`` holds samples ``⌊i·m/S⌋ … ⌊(i+1)·m/S⌋ − 1`` of a batch of ``m``, is
computed on replica ``i`` (by whichever thread takes it first), and the gradients are reduced as
``((g₀ + g₁) + g₂) + …`` once every shard is done.  So the numbers depend on ``S`` alone, never on how
many threads ran the shards or which finished first: shards run one after the other on one thread give
the same bits as shards run on two.  That is what lets :class:`Pace` choose the number of threads
from the speed it measures, and a busy machine fall back to one thread, without changing a result.

Why threads help at all: NumPy releases the GIL inside ``matmul`` (BLAS, one thread per caller) and
inside the loops of ufuncs, copies and reductions over arrays of more than a few hundred values, which
is where a step's time goes; the Python between those calls runs one thread at a time.

Memory: :func:`keep_freed_memory` stops glibc from handing the step's freed arrays back to the system
(see there); otherwise every step faults its new arrays in page by page, and page faults of two
threads queue on one lock.

What cannot be split: a layer that couples the samples of a batch (``couples_batch``, batchnorm's
batch statistics) — :func:`shard_count` keeps such networks at one shard.  Stochastic layers (dropout)
draw from a generator per shard (the trainer derives it from (seed, step, shard)).
"""

from __future__ import annotations

import contextvars
import copy
import ctypes
import ctypes.util
import itertools
import mmap
import multiprocessing
import os
import queue
import signal
import statistics
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np

from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential

#: ``train.threads``: a number of shards (and of threads at most), or ``auto``
Threads = int | Literal["auto"]
#: ``auto`` splits a batch in two when each half has at least this many multiply-adds of forward work
#: (see :func:`forward_work`); below it the hand-offs cost more than they save.  Measured: the built-in
#: digits run (1.35M per half batch) is 5 % slower as a whole process with 2 shards than with 1, the
#: DLT network (5.1M) and LeNet-5 (13M) take 0.55–0.6× the time of one shard per step
AUTO_MIN_WORK = 3_000_000
#: the shards of ``auto``
AUTO_SHARDS = 2
#: how long a process waiting for the other side of a hand-off polls before it sleeps (see
#: :func:`spin_until_ready`): about the serial part of a step
SPIN_SECONDS = 0.002


def shard_bounds(m: int, shards: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each of ``min(shards, m)`` contiguous shards of a batch of ``m``, as even as can be."""
    s = max(1, min(shards, m))
    return [(i * m // s, (i + 1) * m // s) for i in range(s)]


def forward_work(net: Sequential) -> int:
    """Multiply-adds of one sample's forward pass through the parametric layers, roughly: every value of
    a layer's first parameter (its weight) used once per output position (a conv's kernel at each of
    its Ho·Wo outputs, a dense weight once)."""
    total = 0
    for info in net.summary():
        shapes = list(info.param_shapes.values())
        if not shapes:
            continue
        positions = int(np.prod(info.output_shape[1:])) if len(shapes[0]) == 4 else 1
        total += int(np.prod(shapes[0])) * positions
    return total


def shard_count(threads: Threads, net: Sequential, batch_size: int) -> int:
    """How many shards a batch of ``batch_size`` is cut into for the setting ``threads``.

    ``N`` gives N shards (at most one per sample); ``auto`` gives :data:`AUTO_SHARDS` when each shard
    has at least :data:`AUTO_MIN_WORK` multiply-adds, else 1.  A function of the network and the
    setting only, never of the machine, so a run gives the same numbers wherever it runs.  A network
    with a layer that couples the samples of a batch (batchnorm) or keeps state buffers always gets 1.
    """
    if net.couples_batch or any(layer.state for layer in net.layers):
        return 1
    if threads == "auto":
        fits = (batch_size // AUTO_SHARDS) * forward_work(net) >= AUTO_MIN_WORK
        return AUTO_SHARDS if fits and batch_size >= AUTO_SHARDS else 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
    return max(1, min(threads, batch_size))


#: a cap on :func:`usable_cpus` set by :func:`cpu_limit`; a context variable, so each thread has its own
_CPU_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("cnnbp_cpu_limit", default=None)


@contextmanager
def cpu_limit(n: int) -> Iterator[None]:
    """Within the block, on this thread, :func:`usable_cpus` is at most ``n``: with 1 the shards run one
    after the other on the calling thread (no helper process, no thread), with the same numbers.  For
    callers that already run one job per CPU (a sweep's workers)."""
    token = _CPU_LIMIT.set(max(1, int(n)))
    try:
        yield
    finally:
        _CPU_LIMIT.reset(token)


def usable_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing),
    at most :func:`cpu_limit`'s."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = max(1, os.cpu_count() or 1)
    limit = _CPU_LIMIT.get()
    return n if limit is None else min(n, limit)


def free_cpus() -> int:
    """The usable CPUs less the ones other processes keep busy (the 1-minute load average), at least 1."""
    n = usable_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return n
    return max(1, min(n, n - int(load + 0.5)))


_MALLOC_TUNED: list[bool] = []
#: glibc's ``mallopt`` parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(bytes_kept: int = 256 * 2**20, largest_heap_block: int = 32 * 2**20) -> bool:
    """Ask glibc to keep freed memory for the next allocation instead of returning it to the system.

    A training step makes new arrays (layer outputs, deltas) of 0.1–5 MB and frees them again.  By
    default glibc serves such sizes with their own ``mmap`` and unmaps them when freed, or trims the top
    of its heap, so every step faults its arrays in again page by page — we counted 120–400 page
    faults per step for the MNIST networks — and the page faults of two threads queue on the process's
    address-space lock.  Blocks up to ``largest_heap_block`` now come from the heap, and up to
    ``bytes_kept`` of free memory at its top stays mapped.  Process-wide, done once, harmless
    elsewhere; False where it cannot be done (not glibc)."""
    if _MALLOC_TUNED:
        return _MALLOC_TUNED[0]
    ok = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        trim = mallopt(_M_TRIM_THRESHOLD, bytes_kept)
        ok = bool(trim) and bool(mallopt(_M_MMAP_THRESHOLD, largest_heap_block))
    except (OSError, AttributeError):
        pass
    _MALLOC_TUNED.append(ok)
    return ok


def replicate(net: Sequential) -> Sequential:
    """A copy of ``net`` whose layers share ``net``'s parameter and state dicts (the same arrays) but have
    their own gradients, caches and scratch buffers, for a thread of its own."""
    layers = []
    for layer in net.layers:
        memo: dict[int, object] = {id(layer.params): layer.params, id(layer.state): layer.state}
        memo[id(layer._work)] = {}  # scratch is per replica, and not worth copying
        if layer._x is not None:
            memo[id(layer._x)] = None  # the last input: replaced by the replica's first forward
        layers.append(copy.deepcopy(layer, memo))
    twin = Sequential(layers, net.input_shape)
    twin.dtype = net.dtype
    return twin


# ---- threads --------------------------------------------------------------------------------------------


def _serve(inbox: queue.SimpleQueue, done: queue.SimpleQueue, t: int) -> None:
    """A worker thread: run each job it is given as ``job(t)``, say when it is done; None ends it."""
    while True:
        job = inbox.get()
        if job is None:
            return
        try:
            job(t)
        finally:
            done.put(job)


class Workers:
    """Daemon threads that, with the calling thread, share out the tasks of one call to :meth:`run`.

    Started on first need and ended when the object is collected.  Tasks are taken in order from a
    shared counter, so an idle thread takes the next one and a thread the machine does not schedule
    holds up at most the task it took.
    """

    def __init__(self) -> None:
        self._inboxes: list[queue.SimpleQueue] = []
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = weakref.finalize(self, _stop_all, self._inboxes)

    def run(self, task: Callable[[int, int], None], count: int, threads: int) -> None:
        """``task(i, t)`` for every ``i < count`` on ``min(threads, count)`` threads (``t`` is the thread's
        index, 0 the caller's); returns when all are done, raising the first error in task order."""
        threads = max(1, min(threads, count))
        if threads == 1:
            for i in range(count):
                task(i, 0)
            return
        while len(self._inboxes) < threads - 1:
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            self._inboxes.append(inbox)
            args = (inbox, self._done, len(self._inboxes))
            threading.Thread(target=_serve, args=args, name="cnnbp-shard", daemon=True).start()
        taken = itertools.count()  # next() is atomic under the GIL
        errors: list[BaseException | None] = [None] * count

        def job(t: int) -> None:
            while (i := next(taken)) < count:
                try:
                    task(i, t)
                except BaseException as e:  # re-raised by the caller, after every thread is done
                    errors[i] = e

        for inbox in self._inboxes[: threads - 1]:
            inbox.put(job)
        job(0)
        finished = 0
        while finished < threads - 1:
            if self._done.get() is job:  # a token of an earlier, interrupted call is skipped
                finished += 1
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first


def _stop_all(inboxes: list[queue.SimpleQueue]) -> None:
    for inbox in inboxes:
        inbox.put(None)


# ---- helper processes (Linux) --------------------------------------------------------------------------


def can_fork() -> bool:
    """Whether shards may run in forked helper processes: Linux only (elsewhere fork is unsafe or absent,
    and threads run them)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class _Slab:
    """Shared memory that forked processes inherit: one anonymous ``MAP_SHARED`` mapping cut into named
    regions of a fixed capacity in bytes, viewed as arrays of any dtype and shape that fit."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.regions: dict[str, tuple[int, int]] = {}
        total = 0
        for name, size in sizes.items():
            self.regions[name] = (total, size)
            total += -(-max(size, 1) // 64) * 64  # cache-line aligned
        self.mm = mmap.mmap(-1, max(total, 64))
        self._views: dict[tuple, np.ndarray] = {}

    def fits(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        return int(np.prod(shape)) * np.dtype(dtype).itemsize <= self.regions[name][1]

    def array(self, name: str, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
        """A view of region ``name`` as ``(dtype, shape)`` (which must fit); the same object each time."""
        key = (name, str(dtype), tuple(shape))
        view = self._views.get(key)
        if view is None:
            offset, _ = self.regions[name]
            view = np.frombuffer(self.mm, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape)
            self._views[key] = view
        return view


class _Helpers:
    """Forked processes that compute shards of training steps, and evaluation batches, for their parent.

    The parameters live in shared memory: the parent's network is pointed at them before the fork (the
    optimiser then updates them in place, where the children read them).  Each child holds its own
    copy of the shards' replicas (made by the fork).  For a training step the parent copies a shard's
    samples into shared memory and sends the shard's number; the child computes forward, loss and
    backward there, and writes the gradient sums, per-sample losses and outputs back into shared
    memory; an evaluation batch comes back as outputs and per-sample losses.  The same code on the
    same numbers: the same bits as computing the shard in the parent.  Children ignore Ctrl-C (the
    parent decides what a stop means), close every inherited file, and end when the parent closes its
    end of the pipe or dies.
    """

    def __init__(self, shards: Shards, count: int, batch_size: int) -> None:
        net = shards.net
        self.keys = [(j, key) for j, layer in enumerate(net.layers) for key in layer.params]
        self.layout = [(net.layers[j].params[k].dtype, net.layers[j].params[k].shape) for j, k in self.keys]
        n = -(-batch_size // shards.shards)  # the largest shard
        self.eval_size = max(batch_size, shards.eval_size)  # the largest evaluation batch
        k = int(np.prod(net.output_shape))
        per_sample = {"x": int(np.prod(net.input_shape)) * 8, "y": max(k, 1) * 8, "out": k * 8, "loss": 8}
        sizes = {f"p{q}": np.dtype(dt).itemsize * int(np.prod(sh)) for q, (dt, sh) in enumerate(self.layout)}
        for i in range(1, shards.shards):
            sizes.update({f"{name}{i}": n * size for name, size in per_sample.items()})
            sizes.update({f"g{i}.{q}": sizes[f"p{q}"] for q in range(len(self.keys))})
        for c in range(1, count + 1):
            sizes.update({f"e{name}{c}": self.eval_size * size for name, size in per_sample.items()})
        self.slab = _Slab(sizes)
        self.share_params(net)
        self.conns: list = []
        self.pids: list[int] = []
        for _ in range(count):
            parent_end, child_end = multiprocessing.Pipe()
            with warnings.catch_warnings():  # Python ≥ 3.12 warns about fork beside threads
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: never returns
                try:
                    _serve_shards(shards, self, child_end)
                finally:
                    os._exit(0)
            child_end.close()
            self.conns.append(parent_end)
            self.pids.append(pid)
        self._stop = weakref.finalize(self, _end_children, self.conns, self.pids)
        self._waiting = [False] * count  # a child owes a reply (an interrupted step left it unread)

    def params(self) -> list[np.ndarray]:
        """Views of the shared parameters, in ``keys`` order."""
        return [self.slab.array(f"p{q}", dt, sh) for q, (dt, sh) in enumerate(self.layout)]

    def share_params(self, net: Sequential) -> None:
        """Point ``net``'s parameters at the shared ones, copying the values of any that are not (new
        arrays set since: ``usable`` has checked their dtype and shape)."""
        for (j, key), view in zip(self.keys, self.params(), strict=True):
            group = net.layers[j].params
            if group[key] is not view:
                view[...] = group[key]
                group[key] = view

    def usable(self, net: Sequential, x: np.ndarray, y: np.ndarray, n: int) -> bool:
        """Whether the network still has the parameters of the fork and a shard of ``n`` fits."""
        ok = all(
            (p := net.layers[j].params.get(k)) is not None and (p.dtype, p.shape) == self.layout[q]
            for q, (j, k) in enumerate(self.keys)
        )
        shape_x, shape_y = (n, *x.shape[1:]), (n, *y.shape[1:])
        return ok and self.slab.fits("x1", x.dtype, shape_x) and self.slab.fits("y1", y.dtype, shape_y)

    def send(
        self, k: int, phases: tuple[str, ...], jobs: list[tuple[int, np.ndarray, np.ndarray, object]]
    ) -> bool:
        """Give child ``k`` the shards ``(i, x_i, y_i, rng_i)`` to compute in the layers' ``phases``;
        ``i`` = 0 is an evaluation batch (forward and loss only).  False when the child is gone (its
        pipe closed): nothing is owed then."""
        if self._waiting[k - 1]:
            self.receive(k)  # the child is done with the slab before it is written again
        msg = []
        for i, xi, yi, rng in jobs:
            where = f"{i}" if i else f"{k}"
            prefix = "" if i else "e"
            self.slab.array(f"{prefix}x{where}", xi.dtype, xi.shape)[...] = xi
            self.slab.array(f"{prefix}y{where}", yi.dtype, yi.shape)[...] = yi
            msg.append((i, xi.dtype.str, xi.shape, yi.dtype.str, yi.shape, rng))
        try:
            self.conns[k - 1].send((k, phases, msg))
        except OSError:  # BrokenPipeError: the child died (killed, out of memory)
            return False
        self._waiting[k - 1] = True
        return True

    def receive(self, k: int) -> str | None:
        """Wait for child ``k``: None when its shards are done, else what went wrong."""
        try:
            spin_until_ready(self.conns[k - 1])
            reply = self.conns[k - 1].recv()
        except (EOFError, OSError) as e:
            reply = f"helper process ended ({e!r})"
        self._waiting[k - 1] = False
        return reply

    def results(self, i: int, like: tuple[np.ndarray, np.ndarray], n: int) -> tuple:
        """Shard ``i`` of ``n`` samples as the child left it: (outputs, per-sample losses, gradient sums
        ``{(layer index, param): view}``), dtypes and shapes as another shard's ``like``."""
        out, losses = like
        grads = {jk: self.slab.array(f"g{i}.{q}", *self.layout[q]) for q, jk in enumerate(self.keys)}
        return (
            self.slab.array(f"out{i}", out.dtype, (n, *out.shape[1:])).copy(),
            self.slab.array(f"loss{i}", losses.dtype, (n,)).copy(),
            grads,
        )

    def evaluated(self, k: int, like: tuple[np.ndarray, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation batch of ``n`` samples child ``k`` computed: (outputs, per-sample losses)."""
        out, losses = like
        return (
            self.slab.array(f"eout{k}", out.dtype, (n, *out.shape[1:])).copy(),
            self.slab.array(f"eloss{k}", losses.dtype, (n,)).copy(),
        )

    def close(self, kill: bool = False) -> None:
        """End the children: ask them to (``kill``: kill them, when the pipes may hold half a message)."""
        if kill:
            for pid in self.pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self._stop()


def spin_until_ready(conn: object, seconds: float = SPIN_SECONDS) -> bool:
    """Poll ``conn`` for up to ``seconds`` before the caller blocks reading it; whether it has data.

    Two hand-offs a step (the shard out, the reply back) each wake a process that was asleep, which on
    the 2-core development VM costs 50–150 µs (a pipe round trip: 36 µs with the other side polling,
    102 µs with it asleep).  Polling briefly first saved 5–6 % of a step: LeNet-5 b64 f32 5.26 →
    4.97 ms, DLT b50 f32 2.35 → 2.20 ms (means of 4 A/B pairs of 600 steps).  Bounded, so a helper
    with nothing to do soon sleeps, and a busy machine loses at most this much CPU per hand-off."""
    end = time.perf_counter() + seconds
    while not conn.poll():  # type: ignore[attr-defined]
        if time.perf_counter() >= end:
            return False
    return True


def _end_children(conns: list, pids: list[int]) -> None:
    for conn in conns:
        try:
            conn.send(None)
        except OSError:
            pass
        conn.close()
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _serve_shards(shards: Shards, helpers: _Helpers, conn: object) -> None:
    """A helper process's life: compute the shards it is sent until the pipe closes."""
    _become_helper(conn.fileno())  # type: ignore[attr-defined]
    net, slab = shards.net, helpers.slab  # net's parameters: the shared ones (see share_params)
    while True:
        try:
            spin_until_ready(conn)
            msg = conn.recv()  # type: ignore[attr-defined]
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            k, phases, jobs = msg
            for layer, phase in zip(net.layers, phases, strict=True):
                layer.phase = phase
            shards._follow()
            for i, xdt, xshape, ydt, yshape, rng in jobs:
                if i == 0:  # an evaluation batch, on replica 1
                    xi, yi = slab.array(f"ex{k}", xdt, xshape), slab.array(f"ey{k}", ydt, yshape)
                    out = shards.replicas[1].forward(xi)
                    losses = shards.losses[1].forward(out, yi)
                    slab.array(f"eout{k}", out.dtype, out.shape)[...] = out
                    slab.array(f"eloss{k}", losses.dtype, losses.shape)[...] = losses
                    continue
                xi, yi = slab.array(f"x{i}", xdt, xshape), slab.array(f"y{i}", ydt, yshape)
                if rng is not None:
                    shards.replicas[i].set_rng(rng)
                out, losses, _ = shards.compute(i, xi, yi)
                slab.array(f"out{i}", out.dtype, out.shape)[...] = out
                slab.array(f"loss{i}", losses.dtype, losses.shape)[...] = losses
                twin = shards.replicas[i]
                for q, (j, key) in enumerate(helpers.keys):
                    g = twin.layers[j].grads[key]
                    slab.array(f"g{i}.{q}", g.dtype, g.shape)[...] = g
            reply = None
        except BaseException as e:  # noqa: BLE001 - the parent computes the shard itself and raises
            reply = repr(e)
        try:
            conn.send(reply)  # type: ignore[attr-defined]
        except OSError:
            return


def _become_helper(keep_fd: int) -> None:
    """In a freshly forked child: ignore Ctrl-C (the terminal sends it to the whole process group; the
    parent handles it), default handling of SIGTERM and SIGHUP, die with the parent, close every
    inherited file but the pipe, and print no warnings (the parent computes a failing shard again)."""
    for sig, how in ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, signal.SIG_DFL),
                     (signal.SIGHUP, signal.SIG_DFL)):  # fmt: skip
        try:
            signal.signal(sig, how)
        except (ValueError, OSError):
            pass
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(0)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 1 << 16)
    np.seterr(all="ignore")
    warnings.simplefilter("ignore")


# ---- the sharded step -------------------------------------------------------------------------------------


class Shards:
    """``net`` and ``shards − 1`` replicas of it (:func:`replicate`), with a loss each.

    ``net`` itself computes shard 0; the replicas follow its parameters, state buffers and phases
    (re-read before every use, so ``set_parameters``, ``cast`` or ``in_phase`` on ``net`` carry over).
    Other shards run on helper processes (Linux, :class:`_Helpers`) or on threads (elsewhere, or
    when no process can be made), or one after the other on the calling thread.
    """

    def __init__(
        self, net: Sequential, loss: Loss, shards: int, *, batch_size: int = 0, eval_size: int = 256,
        processes: bool | None = None,
    ) -> None:  # fmt: skip
        self.net = net
        self.batch_size = batch_size  # the largest batch the helper processes get room for (0: any seen)
        self.eval_size = eval_size  # the largest evaluation batch they get room for (at least batch_size)
        self.replicas = [net, *(replicate(net) for _ in range(shards - 1))]
        self.losses = [copy.deepcopy(loss) for _ in range(shards)]
        self.workers = Workers()
        #: helper processes for training steps (None: not made yet, or not possible)
        self.helpers: _Helpers | None = None
        self.processes = can_fork() if processes is None else processes
        self._rngs: list[np.random.Generator | None] = [None] * shards

    @property
    def shards(self) -> int:
        return len(self.replicas)

    def _follow(self) -> None:
        """Point every replica at ``net``'s current parameter and state dicts and phases."""
        for twin in self.replicas[1:]:
            for mine, main in zip(twin.layers, self.net.layers, strict=True):
                mine.params, mine.state, mine.phase = main.params, main.state, main.phase

    def set_rngs(self, rngs: list[np.random.Generator]) -> None:
        """Give replica ``i``'s stochastic layers ``rngs[i]`` for the next step."""
        self._rngs = list(rngs)
        for twin, rng in zip(self.replicas, rngs, strict=False):
            twin.set_rng(rng)

    def pieces(self, x: np.ndarray) -> list[tuple[Sequential, np.ndarray]]:
        """``(replica i, shard i of x)`` for every shard of the batch ``x``."""
        self._follow()
        bounds = shard_bounds(x.shape[0], self.shards)
        return [(self.replicas[i], x[lo:hi]) for i, (lo, hi) in enumerate(bounds)]

    def compute(
        self, i: int, x: np.ndarray, y: np.ndarray, record: Callable[[str, np.ndarray], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray, None]:
        """Shard ``i`` on replica ``i``: (outputs, per-sample losses, None); the gradient sums stay in
        the replica's layers."""
        twin, loss = self.replicas[i], self.losses[i]
        out = twin.forward(x)
        losses = loss.forward(out, y)
        twin.backward(loss.backward(), record, input_grad=False)
        return out, losses, None

    def gradients(
        self,
        x: np.ndarray,
        y: np.ndarray,
        threads: int,
        record: Callable[[str, np.ndarray], None] | None = None,
    ) -> tuple[float, np.ndarray]:
        """Forward, loss and backward of ``(x, y)`` cut into shards; fills ``net``'s ``grads`` with
        ∂(mean loss)/∂θ (no input gradient).  Returns the batch-mean loss and the network's output.

        ``threads`` is how many processes or threads share the shards (shard ``i`` goes to the
        ``i mod threads``-th).  Each shard leaves its gradient *sums* in its replica (or in shared
        memory); they are added in shard order into ``net``'s (shard 0's) arrays and divided by m, as
        ``Sequential.gradients`` divides.  With ``record`` the shards run one after the other on this
        thread and ``record(name, delta)`` is called for every layer of every shard (shard 0's
        layers first): the same numbers.
        """
        m = x.shape[0]
        bounds = shard_bounds(m, self.shards)
        self._follow()
        results: list[tuple | None] = [None] * len(bounds)
        if record is not None or threads <= 1 or len(bounds) == 1:
            for i, (lo, hi) in enumerate(bounds):
                results[i] = self.compute(i, x[lo:hi], y[lo:hi], record)
        elif self.processes and self._helpers_for(threads, x, y, max(hi - lo for lo, hi in bounds)):
            self._in_processes(x, y, bounds, threads, results)
        else:

            def shard(i: int, t: int) -> None:
                lo, hi = bounds[i]
                results[i] = self.compute(i, x[lo:hi], y[lo:hi])

            self.workers.run(shard, len(bounds), threads)
        return self._reduce(m, results)

    def _helpers_for(self, threads: int, x: np.ndarray, y: np.ndarray, n: int) -> bool:
        """Whether helper processes can take pieces of ``n`` samples of ``(x, y)`` (made on first need)."""
        if self.helpers is None:
            try:
                size = max(self.batch_size, x.shape[0])
                self.helpers = _Helpers(self, min(self.shards, usable_cpus()) - 1, size)
            except OSError:
                self.processes = False
                return False
        return self.helpers.usable(self.net, x, y, n) and threads - 1 <= len(self.helpers.conns)

    def _in_processes(
        self, x: np.ndarray, y: np.ndarray, bounds: list[tuple[int, int]], threads: int, results: list
    ) -> None:
        """Shards ``i mod threads ≠ 0`` on the helper processes, the others here, at the same time."""
        helpers = self.helpers
        assert helpers is not None
        try:
            self._share_out(helpers, x, y, bounds, threads, results)
        except BaseException:  # a step cut short (Ctrl-C): the pipes are in an unknown state
            self.helpers = None
            helpers.close(kill=True)
            raise

    def _share_out(
        self, helpers: _Helpers, x: np.ndarray, y: np.ndarray, bounds: list[tuple[int, int]], threads: int,
        results: list,
    ) -> None:  # fmt: skip
        helpers.share_params(self.net)
        away = {k: [i for i in range(len(bounds)) if i % threads == k] for k in range(1, threads)}
        phases = tuple(layer.phase for layer in self.net.layers)
        sent = {}
        for k, idx in away.items():
            jobs = [(i, x[slice(*bounds[i])], y[slice(*bounds[i])], self._rngs[i]) for i in idx]
            sent[k] = helpers.send(k, phases, jobs)
        for i in range(0, len(bounds), threads):
            results[i] = self.compute(i, x[slice(*bounds[i])], y[slice(*bounds[i])])
        failed = []
        for k, idx in away.items():
            if not sent[k] or helpers.receive(k) is not None:
                failed += idx
        for i in range(len(bounds)):
            if results[i] is None and i not in failed:
                lo, hi = bounds[i]
                results[i] = helpers.results(i, results[0][:2], hi - lo)
        if failed:  # computed here instead: the same numbers, and an error raised as it is
            self.helpers, self.processes = None, False
            helpers.close()
            for i in failed:
                results[i] = self.compute(i, x[slice(*bounds[i])], y[slice(*bounds[i])])

    def _reduce(self, m: int, results: list) -> tuple[float, np.ndarray]:
        """Add the shards' gradient sums in shard order into ``net``'s, divide by m; loss and outputs.

        ``results[i]`` is ``(outputs, per-sample losses, shared gradient sums or None)``: None when the
        sums are in replica ``i``'s layers."""
        inv_m = 1.0 / m
        for j, layer in enumerate(self.net.layers):
            for key, g in layer.grads.items():
                for i in range(1, len(results)):
                    shared = results[i][2]
                    g += self.replicas[i].layers[j].grads[key] if shared is None else shared[(j, key)]
                g *= inv_m
        losses = np.concatenate([r[1] for r in results])
        return float(losses.mean().real), np.concatenate([r[0] for r in results])

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, size: int, threads: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(outputs, per-sample losses)`` of each batch ``[lo, lo + size)`` of ``(x, y)``, in batch order:
        forward and loss only, in the layers' current phases, on up to ``threads`` processes or threads
        (whole batches each: a batch's numbers do not depend on where it ran)."""
        self._follow()
        starts = list(range(0, x.shape[0], size))
        pieces = [(x[lo : lo + size], y[lo : lo + size]) for lo in starts]
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(starts)
        threads = min(threads, self.shards, len(starts))
        if threads <= 1:
            return [self._forward(0, xb, yb) for xb, yb in pieces]
        if self.processes and self._helpers_for(threads, x, y, min(size, x.shape[0])):
            if size <= self.helpers.eval_size:  # type: ignore[union-attr]
                return self._evaluate_in_processes(pieces, threads)

        def batch(i: int, t: int) -> None:
            results[i] = self._forward(t, *pieces[i])

        self.workers.run(batch, len(starts), threads)
        return results  # type: ignore[return-value]

    def _forward(self, t: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.replicas[t].forward(x)
        return out, self.losses[t].forward(out, y)

    def _evaluate_in_processes(
        self, pieces: list[tuple[np.ndarray, np.ndarray]], threads: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batch ``i`` on helper ``i mod threads`` (0: here), a round of ``threads`` batches at a time;
        after a helper fails, the rest here."""
        helpers = self.helpers
        assert helpers is not None
        phases = tuple(layer.phase for layer in self.net.layers)
        results: list[tuple[np.ndarray, np.ndarray]] = []
        try:
            r = 0
            while r < len(pieces) and self.helpers is helpers:
                away = list(range(r + 1, min(r + threads, len(pieces))))
                sent = {i: helpers.send(i - r, phases, [(0, *pieces[i], None)]) for i in away}
                results.append(self._forward(0, *pieces[r]))
                failed = [i for i in away if not sent[i] or helpers.receive(i - r) is not None]
                for i in away:  # a failed batch is computed here: the same numbers, an error raised as is
                    results.append(
                        self._forward(0, *pieces[i])
                        if i in failed
                        else helpers.evaluated(i - r, results[r], pieces[i][0].shape[0])
                    )
                if failed:
                    self.helpers, self.processes = None, False
                    helpers.close()
                r += threads
        except BaseException:
            self.helpers = None
            helpers.close(kill=True)
            raise
        results += [self._forward(0, *piece) for piece in pieces[len(results) :]]
        return results

    def close(self) -> None:
        """End the helper processes (they also end with this object, or with the process)."""
        if self.helpers is not None:
            self.helpers.close()
            self.helpers = None


# ---- how many threads -------------------------------------------------------------------------------------


class Pace:
    """Chooses how many threads (or processes) run the shards, from step times it measures (seconds per
    sample).

    It tries every count from ``most`` down to 1 for ``trial`` steps each, keeps the fastest (median;
    of counts within :attr:`TIE` of it, the largest),
    and tries again after ``period`` steps — the period doubling while the choice stays, back to its
    start when it changes — and at once when the chosen count gets 30 % slower than it measured (the
    machine got busier).  The first ``warmup`` steps, and the first step after every change of count
    (caches to fill, a helper process to start), are not counted.  The count never changes a result
    (see the module's docstring), only the time.
    """

    #: counts this much slower than the fastest are as good as it (the more threads kept)
    TIE = 0.05

    def __init__(self, most: int, *, trial: int = 5, period: int = 100, warmup: int = 3) -> None:
        self.most = max(1, most)
        self.trial, self.base_period = trial, period
        self.period = period
        self._skip = warmup
        self._queue: list[int] = list(range(self.most, 0, -1)) if self.most > 1 else []
        self._seen: dict[int, list[float]] = {}
        self.chosen = min(self.most, free_cpus())
        self._ref = float("inf")
        self._recent: list[float] = []
        self._since = 0
        self._last = 0  # the count of the previous step

    def threads(self) -> int:
        """The count for the next step."""
        return self._queue[0] if self._queue else self.chosen

    def record(self, seconds_per_sample: float) -> None:
        """The time of the step just run with ``threads()`` threads."""
        n, changed = self.threads(), self.threads() != self._last
        self._last = n
        if self._skip or changed:
            self._skip = max(0, self._skip - 1)
            return
        if self._queue:
            times = self._seen.setdefault(n, [])
            times.append(seconds_per_sample)
            if len(times) >= self.trial:
                self._queue.pop(0)
                if not self._queue:
                    self._decide()
            return
        self._since += 1
        self._recent.append(seconds_per_sample)
        del self._recent[: -self.trial]
        slower = len(self._recent) == self.trial and statistics.median(self._recent) > 1.3 * self._ref
        if self.most > 1 and (self._since >= self.period or slower):
            self._queue = list(range(self.most, 0, -1))
            self._seen = {}

    def _decide(self) -> None:
        medians = {n: statistics.median(v) for n, v in self._seen.items()}
        # the most threads within TIE of the fastest: a count is dropped only when it is clearly slower,
        # not because five noisy steps happened to favour fewer threads
        fastest = min(medians.values())
        best = max(n for n, t in medians.items() if t <= (1 + self.TIE) * fastest)
        self.period = 2 * self.period if best == self.chosen else self.base_period
        self.chosen, self._ref = best, medians[best]
        self._recent, self._since = [], 0
