"""``cnnbp bench``: time one training step of a config's network on random data, per layer, and
optionally against the identical network in PyTorch.

A *step* is what training does once per batch: forward, loss, backward (no gradient for the input),
and the SGD update.  The library part below builds the inputs, times steps, profiles the layers, and
mirrors the network in PyTorch with the same weights to check that the loss and every gradient agree
before timing both in alternation.  It prints nothing; the ``bench`` command at the bottom renders.

PyTorch is optional (``pip install 'cnnbp[torch]'``) and imported only for ``--vs torch``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from cnnbp.core.layers import (
    Conv2D,
    Dense,
    Flatten,
    Identity,
    Layer,
    LpPool,
    MaxPool,
    MeanPool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)
from cnnbp.core.losses import MSE, Loss, SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from cnnbp.errors import UserError

TORCH_HINT = "PyTorch is not installed: pip install 'cnnbp[torch]' (or pip install torch) to use --vs torch"
#: float64 agreement between the engine and PyTorch: largest relative error allowed (loss and gradients)
AGREE_TOL = {"float64": 1e-10, "float32": 1e-4}
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
        med = statistics.median(seconds)
        return cls(
            1e3 * med, 1e3 * min(seconds), 1e3 * max(seconds), batch / med if med > 0 else float("inf")
        )


@dataclass(frozen=True)
class LayerTime:
    name: str
    kind: str
    forward_ms: float  # medians over the profiled steps
    backward_ms: float
    share: float  # (forward + backward) / the whole step (layers + loss + update)


@dataclass(frozen=True)
class Agreement:
    """Largest relative errors ``max|a − b| / max|b|`` between engine and PyTorch, per tensor."""

    loss_rel_err: float
    grad_rel_err: dict[str, float]  # "layer.param" → error
    tolerance: float

    @property
    def max_rel_err(self) -> float:
        return max([self.loss_rel_err, *self.grad_rel_err.values()])

    @property
    def ok(self) -> bool:
        return self.max_rel_err <= self.tolerance


@dataclass
class BenchResult:
    config: str
    batch: int
    dtype: str
    steps: int
    threads: dict[str, int | None]
    engine: Timing
    layers: list[LayerTime]
    other_ms: float  # loss, gradient scaling and the SGD update
    torch: Timing | None = None
    agreement: Agreement | None = None
    ratio: float | None = None  # engine median / torch median (alternating runs)

    def to_json(self) -> dict[str, Any]:
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
    line to re-run; nothing happens without it).
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


# ---- inputs -------------------------------------------------------------------------------------------


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
    net: Sequential, loss: Loss, optimizer: SGD, x: np.ndarray, y: np.ndarray
) -> Callable[[], None]:
    """One training step as the trainer does it (no input gradient), as a callable."""
    params, grads = net.parameters(), net.grads()

    def step() -> None:
        net.gradients(x, y, loss, input_grad=False)
        optimizer.step(params, grads)

    return step


def profile_layers(
    net: Sequential, loss: Loss, optimizer: SGD, x: np.ndarray, y: np.ndarray, steps: int
) -> tuple[list[LayerTime], float]:
    """Median forward and backward time of every layer over ``steps`` training steps, and the rest.

    The step is ``Sequential.gradients`` taken apart: the first layer computes only its parameter
    gradients, as in training.
    """
    layers = net.layers
    fwd = [[] for _ in layers]
    bwd = [[] for _ in layers]
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


# ---- PyTorch mirror ----------------------------------------------------------------------------------


def have_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def torch_wait_passively() -> None:
    """Let PyTorch's worker threads sleep between parallel regions (``OMP_WAIT_POLICY=PASSIVE``,
    unless set already; it has to be set before torch is imported).

    With several threads, the two libraries timed in alternation in one process otherwise fight
    over the cores: OpenMP threads spin for a while after each PyTorch op, and the engine's next
    step runs beside them (on 2 cores we measured PyTorch 5-10× slower and the engine 2-5× slower
    than each runs alone).  With one thread there are no worker threads and this changes nothing.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class TorchMirror:
    """The same network in PyTorch, with a copy of the engine's weights (same dtype).

    ``params[layer][key]`` is the torch Parameter of engine parameter ``layer.params[key]``.
    Raises UserError for a layer it cannot mirror.
    """

    def __init__(self, net: Sequential, loss: Loss) -> None:
        import torch
        from torch import nn

        self.torch = torch
        self.dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[net.dtype]
        self.params: dict[str, dict[str, Any]] = {}
        modules: list[nn.Module] = []
        for info, layer in zip(net.summary(), net.layers, strict=True):
            module, named = self._module(layer, info.input_shape, info.output_shape)
            modules.append(module)
            if named:
                self.params[layer.name] = named
        self.model = nn.Sequential(*modules).to(self.dtype)
        with torch.no_grad():
            for lname, named in self.params.items():
                for key, p in named.items():
                    p.copy_(torch.from_numpy(np.ascontiguousarray(net.layer(lname).params[key])))
        self.loss = loss

    def _module(self, layer: Layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):  # noqa: C901
        torch, nn = self.torch, self.torch.nn
        F = torch.nn.functional
        if isinstance(layer, Conv2D):
            conv = nn.Conv2d(in_shape[0], layer.filters, layer.kernel, layer.stride, layer.padding,
                             bias=layer.bias == "tied")  # fmt: skip
            if layer.bias == "tied":
                return conv, {"W": conv.weight, "b": conv.bias}
            b = nn.Parameter(torch.zeros(out_shape))
            return _Lambda(lambda x: conv(x) + b, conv, b), {"W": conv.weight, "b": b}
        if isinstance(layer, Dense):
            lin = nn.Linear(in_shape[0], layer.units)
            return lin, {"W": lin.weight, "b": lin.bias}
        if isinstance(layer, MaxPool):
            return nn.MaxPool2d(layer.size, layer.stride), {}
        if isinstance(layer, MeanPool):
            return nn.AvgPool2d(layer.size, layer.stride), {}
        if isinstance(layer, LpPool):
            (kh, kw), s, p = layer.size, layer.stride, layer.p
            return _Lambda(lambda x: (F.avg_pool2d(x.abs() ** p, (kh, kw), s) * (kh * kw)) ** (1.0 / p)), {}
        if isinstance(layer, Subsample):
            k = layer.scale
            beta = nn.Parameter(torch.zeros(in_shape[0]))
            b = nn.Parameter(torch.zeros(in_shape[0]))
            fn = lambda x: F.avg_pool2d(x, k) * (k * k) * beta[:, None, None] + b[:, None, None]  # noqa: E731
            return _Lambda(fn, beta, b), {"beta": beta, "b": b}
        simple = {
            Sigmoid: nn.Sigmoid,
            Tanh: nn.Tanh,
            ReLU: nn.ReLU,
            Identity: nn.Identity,
            Flatten: nn.Flatten,
        }
        if type(layer) in simple:
            return simple[type(layer)](), {}
        raise UserError(
            f"--vs torch: no PyTorch counterpart for layer {layer.name!r} ({type(layer).__name__})"
        )

    def loss_value(self, out, y: np.ndarray):
        torch = self.torch
        F = torch.nn.functional
        yt = torch.from_numpy(np.asarray(y))
        if isinstance(self.loss, SoftmaxCrossEntropy):
            if yt.ndim == 1:
                return F.cross_entropy(out, yt.long())
            return -(yt.to(out.dtype) * F.log_softmax(out, dim=1)).sum(dim=1).mean()
        if isinstance(self.loss, MSE):
            target = F.one_hot(yt.long(), out.shape[1]).to(out.dtype) if yt.ndim == 1 else yt.to(out.dtype)
            return 0.5 * ((out - target) ** 2).sum(dim=1).mean()
        raise UserError(f"--vs torch: no PyTorch counterpart for loss {self.loss.name!r}")

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, dict[str, np.ndarray]]]:
        self.model.zero_grad(set_to_none=True)
        out = self.model(self.torch.from_numpy(x))
        value = self.loss_value(out, y)
        value.backward()
        grads = {
            l: {k: p.grad.detach().numpy().copy() for k, p in named.items()}
            for l, named in self.params.items()
        }
        return float(value.detach()), grads

    def step_fn(self, x: np.ndarray, y: np.ndarray, optimizer: SGD) -> Callable[[], None]:
        """One training step with torch's SGD (same lr, momentum and weight decay as ``optimizer``)."""
        torch = self.torch
        opt = torch.optim.SGD(self.model.parameters(), lr=optimizer.lr, momentum=optimizer.momentum,
                              weight_decay=optimizer.weight_decay)  # fmt: skip
        xt = torch.from_numpy(x)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            self.loss_value(self.model(xt), y).backward()
            opt.step()

        return step


@functools.cache
def _lambda_class() -> type:
    from torch import nn

    class Lambda(nn.Module):
        """A function of the input as a module; ``owned`` parameters and modules are registered."""

        def __init__(self, fn: Callable, *owned: Any) -> None:
            super().__init__()
            self.fn = fn
            self.owned_params = nn.ParameterList([o for o in owned if isinstance(o, nn.Parameter)])
            self.owned_modules = nn.ModuleList([o for o in owned if isinstance(o, nn.Module)])

        def forward(self, x):
            return self.fn(x)

    return Lambda


def _Lambda(fn: Callable, *owned: Any):  # noqa: N802 - reads like the class it builds
    return _lambda_class()(fn, *owned)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a − b| / max|b|`` (0 when both are all zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def check_agreement(
    net: Sequential, loss: Loss, mirror: TorchMirror, x: np.ndarray, y: np.ndarray
) -> Agreement:
    """Loss and every parameter gradient of one batch, engine vs PyTorch, at the same weights."""
    value = net.gradients(x, y, loss, input_grad=False)
    t_value, t_grads = mirror.gradients(x, y)
    errs = {
        f"{lname}.{key}": rel_err(g, t_grads[lname][key])
        for lname, group in net.grads().items()
        for key, g in group.items()
    }
    return Agreement(rel_err(np.float64(value), np.float64(t_value)), errs, AGREE_TOL[net.dtype.name])


def alternate(fns: list[Callable[[], None]], steps: int, warmup: int) -> list[list[float]]:
    """Time each function once per round, round after round, so that both see the same machine."""
    for _ in range(warmup):
        for f in fns:
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(steps):
        for f, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return times


# ---- the whole benchmark -------------------------------------------------------------------------------


def run_bench(
    net: Sequential,
    loss: Loss,
    optimizer: SGD,
    *,
    name: str,
    batch: int,
    dtype: np.dtype,
    steps: int,
    seed: int = 0,
    vs_torch: bool = False,
    warmup: int = 3,
) -> BenchResult:
    """Build ``net`` in ``dtype`` (seeded), time ``steps`` training steps on one random batch, profile
    the layers, and with ``vs_torch`` check agreement and time PyTorch in alternation."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    net.build(rng, dtype)
    x, y = random_batch(net, loss, batch, dtype, rng)

    mirror = agreement = None
    if vs_torch:
        if not have_torch():
            raise UserError(TORCH_HINT)
        mirror = TorchMirror(net, loss)  # same initial weights
        agreement = check_agreement(net, loss, mirror, x, y)

    # time the engine and torch from the same weights: keep a copy, restore it after profiling
    start = {l: {k: v.copy() for k, v in g.items()} for l, g in net.parameters().items()}
    fns = [engine_step(net, loss, optimizer, x, y)]
    if mirror is not None:
        fns.append(mirror.step_fn(x, y, optimizer))
    times = alternate(fns, steps, warmup)  # with the engine alone: plain repeated steps
    engine = Timing.of(times[0], batch)
    torch_timing = ratio = None
    if mirror is not None:
        torch_timing = Timing.of(times[1], batch)
        ratio = engine.median_ms / torch_timing.median_ms
    for lname, group in start.items():
        net.layer(lname).set_params(group)
    layers, other = profile_layers(net, loss, optimizer, x, y, max(3, min(steps, 50)))
    torch_threads = mirror.torch.get_num_threads() if mirror is not None else None
    return BenchResult(
        config=name,
        batch=batch,
        dtype=dtype.name,
        steps=steps,
        threads={"blas": blas_threads(), "torch": torch_threads},
        engine=engine,
        layers=layers,
        other_ms=other,
        torch=torch_timing,
        agreement=agreement,
        ratio=ratio,
    )


# ---- the command -------------------------------------------------------------------------------------


def _render(result: BenchResult) -> None:
    from cnnbp.render.console import stdout_console
    from rich.table import Table

    con = stdout_console()
    e = result.engine
    con.print(
        f"{result.config} · batch {result.batch} · {result.dtype} · {result.steps} steps"
        f" · BLAS threads {result.threads['blas'] if result.threads['blas'] is not None else '?'}",
        markup=False,
        soft_wrap=True,
    )
    con.print(
        f"engine step: median {e.median_ms:.2f} ms (min {e.min_ms:.2f}, max {e.max_ms:.2f})"
        f" · {e.images_per_s:,.0f} images/s",
        markup=False,
        soft_wrap=True,
    )
    table = Table(title="per layer (median of the profiled steps)", title_justify="left")
    for col in ("layer", "kind", "forward ms", "backward ms", "share"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for row in result.layers:
        table.add_row(
            row.name, row.kind, f"{row.forward_ms:.3f}", f"{row.backward_ms:.3f}", f"{100 * row.share:.1f}%"
        )
    con.print(table)
    con.print(f"loss, gradient scaling and SGD update: {result.other_ms:.3f} ms", markup=False)
    if result.torch is not None and result.agreement is not None:
        a, t = result.agreement, result.torch
        verdict = "agree" if a.ok else "DISAGREE"
        con.print(
            f"PyTorch (threads: {result.threads['torch']}):"
            f" loss and {len(a.grad_rel_err)} gradients {verdict}:"
            f" largest relative error {a.max_rel_err:.2e} (tolerance {a.tolerance:.0e})",
            markup=False,
            soft_wrap=True,
        )
        con.print(
            f"torch step: median {t.median_ms:.2f} ms (min {t.min_ms:.2f}, max {t.max_ms:.2f})"
            f" · {t.images_per_s:,.0f} images/s",
            markup=False,
            soft_wrap=True,
        )
        con.print(f"ratio engine / torch (medians, alternating): {result.ratio:.2f}", markup=False)


def bench(
    config: Annotated[
        Path | None,
        typer.Argument(help="Run config (YAML). Default: the built-in digits config.", show_default=False),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option("--batch", min=1, help="Batch size. Default: train.batch_size.", show_default=False),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps (after 3 warm-up steps).")] = 20,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="float32 or float64. Default: the config's.", show_default=False),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", min=1, help="Cap BLAS (and PyTorch) threads. Default: their own.", show_default=False
        ),
    ] = None,
    vs: Annotated[
        str | None,
        typer.Option(
            "--vs",
            help="Compare with 'torch': check the gradients agree, then time both.",
            show_default=False,
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Override a config value (repeatable).", show_default=False
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Time one training step (forward, backward, update) on random data, per layer; optionally vs PyTorch."""
    from cnnbp.config import build_loss, build_network, load_config

    if dtype is not None and dtype not in ("float32", "float64"):
        raise UserError(f"--dtype: expected float32 or float64, got {dtype!r}")
    if vs is not None and vs != "torch":
        raise UserError(f"--vs: the only comparison is 'torch', got {vs!r}")
    if vs == "torch" and not have_torch():
        raise UserError(TORCH_HINT)
    if threads is not None:
        limit_threads(threads, argv=sys.argv[1:])
        if vs == "torch":
            if threads > 1:
                torch_wait_passively()
            import torch

            torch.set_num_threads(threads)
    cfg = load_config(config, list(sets or []))
    net = build_network(cfg)
    loss = build_loss(cfg)
    t = cfg.train
    optimizer = SGD(t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    result = run_bench(
        net,
        loss,
        optimizer,
        name=cfg.name,
        batch=batch or t.batch_size,
        dtype=np.dtype(dtype or cfg.dtype),
        steps=steps,
        seed=cfg.seed,
        vs_torch=vs == "torch",
    )
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=None))
    else:
        _render(result)
    if result.agreement is not None and not result.agreement.ok:
        raise typer.Exit(1)
