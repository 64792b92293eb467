"""Benchmark: full gradient check of the DeepLearnToolbox CNN (SPEC §4) with every method.

Builds ``6c5 → sigmoid → 2s(mean) → 12c5 → sigmoid → 2s(mean) → flatten → dense 10 → sigmoid``
on 1×28×28 inputs with MSE (3,898 parameters), draws random samples, checks every element of
every parameter, delta and input gradient, and prints wall and CPU time and the largest error
of each method (best of ``--repeat`` runs).

Run: ``.venv/bin/python benchmarks/gradcheck_dlt.py [--samples 4] [--blas-threads 1]``

``--blas-threads`` sets ``OPENBLAS_NUM_THREADS`` (and friends) before NumPy is imported; the
check is made of many small matrix products, on which OpenBLAS's spinning threads only cost
CPU (0 = leave the environment alone).
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args() -> argparse.Namespace:
    """Command-line options (parsed before NumPy is imported, for ``--blas-threads``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--methods", default="central,richardson,complex")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is shown")
    parser.add_argument("--blas-threads", type=int, default=1, help="0 leaves the environment as it is")
    parser.add_argument("--rows", action="store_true", help="print every row")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.blas_threads > 0:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.blas_threads)

import numpy as np  # noqa: E402

from cnnbp.core.gradcheck import GradcheckResult, gradcheck  # noqa: E402
from cnnbp.core.layers import Conv2D, Dense, Flatten, MeanPool, Sigmoid  # noqa: E402
from cnnbp.core.losses import MSE  # noqa: E402
from cnnbp.core.network import Sequential  # noqa: E402


def dlt_network(seed: int = 0) -> Sequential:
    """The DeepLearnToolbox example CNN, float64, Glorot-uniform weights, zero biases."""
    net = Sequential(
        [
            Conv2D(6, 5, name="c1"),
            Sigmoid(name="c1.sigmoid"),
            MeanPool(2, name="s2"),
            Conv2D(12, 5, name="c3"),
            Sigmoid(name="c3.sigmoid"),
            MeanPool(2, name="s4"),
            Flatten(name="flat"),
            Dense(10, name="fc"),
            Sigmoid(name="fc.sigmoid"),
        ],
        (1, 28, 28),
    )
    return net.build(np.random.default_rng(seed), np.float64)


def timed(method: str, net: Sequential, x: np.ndarray, y: np.ndarray) -> tuple[GradcheckResult, float, float]:
    """One full check: the result, wall seconds and CPU seconds (all threads)."""
    cpu, wall = time.process_time(), time.perf_counter()
    res = gradcheck(net, MSE(), x, y, method=method)
    return res, time.perf_counter() - wall, time.process_time() - cpu


def main(args: argparse.Namespace) -> None:
    """Time every requested method on the DLT network and print a one-line summary each."""
    rng = np.random.default_rng(1)
    net = dlt_network()
    x = rng.random((args.samples, 1, 28, 28))
    y = np.eye(10)[rng.integers(0, 10, size=args.samples)]
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(
        f"DLT network: {net.n_params} parameters, {args.samples} samples, "
        f"{os.cpu_count()} CPUs, OpenBLAS threads: {blas}"
    )
    for method in args.methods.split(","):
        runs = [timed(method, net, x, y) for _ in range(max(1, args.repeat))]
        res, wall, cpu = min(runs, key=lambda r: r[1])
        n_checked = sum(r.checked for r in res.rows)
        worst = max(res.rows, key=lambda r: r.max_rel_error)
        print(
            f"{method:>10}: wall {wall:6.2f} s  cpu {cpu:6.2f} s  {n_checked} elements  "
            f"max rel error {worst.max_rel_error:.2e} ({worst.layer}.{worst.tensor})  "
            f"{'PASS' if res.ok(strict=True) else 'FAIL'}"
        )
        if args.rows:
            for r in res.rows:
                print(
                    f"    {r.layer:>12}.{r.tensor:<6} {r.checked:>6}/{r.total:<6} {r.max_rel_error:.2e} "
                    f"{r.status} a={r.analytic:+.3e} n={r.numeric:+.3e} at {r.worst_index}"
                )


if __name__ == "__main__":
    assert ARGS is not None
    main(ARGS)
