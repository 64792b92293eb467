"""``cnnbp bench``: parse the options, time a training step of a config's network with the library
(:func:`cnnbp.bench.run_bench`), render the result: a header, the per-layer table and, with
``--vs torch``, the agreement with PyTorch and both timings; ``--json`` prints it as one JSON object.

Exit codes: 0 done, 1 the engine and PyTorch disagree, 2 a usage or config error (PyTorch missing).
PyTorch is optional (``pip install 'cnnbp[torch]'``) and imported only for ``--vs torch``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from cnnbp.bench import BenchResult, limit_threads, parse_threads, run_bench
from cnnbp.commands import options
from cnnbp.config import build_loss, build_network, build_optimizer, load_config
from cnnbp.errors import UserError
from cnnbp.plugins import load_option
from cnnbp.render.console import stdout_console
from cnnbp.torch_mirror import TORCH_HINT, have_torch


def _render(result: BenchResult) -> None:
    """The result as text on stdout: header, engine timing, per-layer table, PyTorch comparison."""
    con = stdout_console()
    e, th = result.engine, result.threads
    blas = th["blas"] if th["blas"] is not None else "?"
    con.print(
        f"{result.config} · batch {result.batch} · {result.dtype} · {result.steps} steps"
        f" · threads {th['engine']} ({th['shards']} shard{'s' if th['shards'] != 1 else ''},"
        f" BLAS {blas} each)",
        markup=False,
        soft_wrap=True,
    )
    con.print(
        f"engine step: median {e.median_ms:.2f} ms (min {e.min_ms:.2f}, max {e.max_ms:.2f})"
        f" · {e.images_per_s:,.0f} images/s",
        markup=False,
        soft_wrap=True,
    )
    title = "per layer (median of the profiled steps)"
    if th["shards"] > 1:
        title = f"per layer (medians; one shard of {result.profile_batch}, one thread)"
    table = Table(title=title, title_justify="left")
    for col in ("layer", "kind", "forward ms", "backward ms", "share"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for row in result.layers:
        table.add_row(
            row.name, row.kind, f"{row.forward_ms:.3f}", f"{row.backward_ms:.3f}", f"{100 * row.share:.1f}%"
        )
    con.print(table)
    con.print(f"loss, gradient scaling and {result.optimizer} update: {result.other_ms:.3f} ms", markup=False)
    if result.torch is not None and result.agreement is not None:
        a, t = result.agreement, result.torch
        verdict = "agree" if a.ok else "DISAGREE"
        agreed = f"loss and {len(a.grad_rel_err)} gradients {verdict}"
        con.print(f"PyTorch (threads: {result.threads['torch']}): {agreed}", markup=False)
        con.print(f"  largest relative error {a.max_rel_err:.2e} (tolerance {a.tolerance:.0e})", markup=False)
        con.print(
            f"torch step: median {t.median_ms:.2f} ms (min {t.min_ms:.2f}, max {t.max_ms:.2f})"
            f" · {t.images_per_s:,.0f} images/s",
            markup=False,
            soft_wrap=True,
        )
        each = "thread each" if th["engine"] == th["torch"] == 1 else "threads each"
        if th["engine"] != th["torch"]:
            each = f"threads: engine {th['engine']}, torch {th['torch']}"
        else:
            each = f"{th['engine']} {each}"
        how = "alternating" if result.block == 1 else f"in blocks of {result.block} steps"
        con.print(f"ratio engine / torch at {each} (medians, {how}): {result.ratio:.2f}", markup=False)


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
        str | None,
        typer.Option(
            "--threads",
            metavar="auto|N",
            help="The engine's threads as train.threads (the batch cut into N shards, one BLAS thread "
            "each), and PyTorch's: the same number. Default: auto, as training.",
            show_default=False,
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
    plugins: options.Plugins = None,
) -> None:
    """Time one training step (forward, backward, update) on random data, per layer; optionally vs PyTorch."""
    load_option(plugins)
    if dtype is not None and dtype not in ("float32", "float64"):
        raise UserError(f"--dtype: expected float32 or float64, got {dtype!r}")
    if vs is not None and vs != "torch":
        raise UserError(f"--vs: the only comparison is 'torch', got {vs!r}")
    if vs == "torch" and not have_torch():
        raise UserError(TORCH_HINT)
    try:
        setting = parse_threads(threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    if threads is not None:
        limit_threads(1, argv=sys.argv[1:])  # one BLAS thread per engine thread
    cfg = load_config(config, list(sets or []))
    result = run_bench(
        build_network(cfg),
        build_loss(cfg),
        build_optimizer(cfg),
        name=cfg.name,
        batch=batch or cfg.train.batch_size,
        dtype=np.dtype(dtype or cfg.dtype),
        steps=steps,
        seed=cfg.seed,
        vs_torch=vs == "torch",
        threads=setting,
    )
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=None))
    else:
        _render(result)
    if result.agreement is not None and not result.agreement.ok:
        raise typer.Exit(1)
