"""Benchmark: full gradient check of the DeepLearnToolbox CNN (SPEC §4) with every method.

Builds ``6c5 → sigmoid → 2s(mean) → 12c5 → sigmoid → 2s(mean) → flatten → dense 10 → sigmoid``
on 1×28×28 inputs with MSE, draws 4 random samples, checks every element of every parameter,
delta and input gradient, and prints the time and the largest error of each method.

Run: ``.venv/bin/python benchmarks/gradcheck_dlt.py [--samples 4] [--methods central,richardson,complex]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.gradcheck import gradcheck  # noqa: E402
from core.layers import Conv2D, Dense, Flatten, MeanPool, Sigmoid  # noqa: E402
from core.losses import MSE  # noqa: E402
from core.network import Sequential  # noqa: E402


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


def main() -> None:
    """Time every requested method on the DLT network and print a one-line summary each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--methods", default="central,richardson,complex")
    parser.add_argument("--rows", action="store_true", help="print every row")
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    net = dlt_network()
    x = rng.random((args.samples, 1, 28, 28))
    y = np.eye(10)[rng.integers(0, 10, size=args.samples)]
    n_checked = None
    print(f"DLT network: {net.n_params} parameters, {args.samples} samples")
    for method in args.methods.split(","):
        res = gradcheck(net, MSE(), x, y, method=method)
        n_checked = sum(r.checked for r in res.rows)
        worst = max(res.rows, key=lambda r: r.max_rel_error)
        print(
            f"{method:>10}: {res.seconds:6.2f} s  {n_checked} elements  "
            f"max rel error {worst.max_rel_error:.2e} ({worst.layer}.{worst.tensor})  "
            f"{'PASS' if res.passed(strict=True) else 'FAIL'}"
        )
        if args.rows:
            for r in res.rows:
                print(
                    f"    {r.layer:>12}.{r.tensor:<6} {r.checked:>6}/{r.total:<6} {r.max_rel_error:.2e} "
                    f"{r.status} a={r.analytic:+.3e} n={r.numeric:+.3e} at {r.worst_index}"
                )


if __name__ == "__main__":
    main()
