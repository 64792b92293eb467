"""Measurement: ``cnnbp.core.gradcheck`` on a battery of CORRECT networks, every method.

Every layer type (conv tied/untied with strides and padding, max/mean/Lp pooling with overlaps,
subsample, dense, flatten, every activation, batchnorm, dropout), float32 and float64, MSE and
softmax cross-entropy; networks full of ties (integer-valued images, relu exactly at 0, max-pool
windows of equal values, the default digits network); Lp pools (p = 1, 1.5, 2, 2.5, 3, 5.5) with
inputs near 0.  Each network is checked with central, richardson, auto and (where it applies)
complex; the gradients are right, so a FAIL row is a false alarm of the checker.

Prints, per method: networks, rows, FAIL rows (must be 0), elements PASS / KINK / UNCHECKED, the
elements checked with a narrower central step near a point of low smoothness ("rough"), and the
largest error of a PASS element checked by the method's own stencil, of a rough one, and of a KINK.

Run: ``.venv/bin/python benchmarks/gradcheck_battery.py [--quick] [--rows]``
"""

from __future__ import annotations

import argparse
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from cnnbp.core import MSE, Conv2D, Dense, Flatten, Loss, Sequential, SoftmaxCrossEntropy  # noqa: E402
from cnnbp.core.gradcheck import FAIL, KINK, PASS, UNCHECKED, gradcheck, non_analytic_layers  # noqa: E402
from cnnbp.core.layers import (  # noqa: E402
    BatchNorm,
    Dropout,
    Identity,
    LeakyReLU,
    LpPool,
    MaxPool,
    MeanPool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)

#: name → (layers, per-sample input shape, input kind)
Net = tuple[Callable[[], list], tuple[int, ...], str]


def nets() -> dict[str, Net]:
    """The battery (input kinds: ``normal`` N(0,1), ``ints`` integers 0..3 with blank areas,
    ``near0`` N(0,1) with some inputs moved to within 1e-3 of 0)."""
    out: dict[str, Net] = {
        "conv_tied_s2p1": (lambda: [Conv2D(3, 3, stride=2, padding=1), Tanh(), Flatten()],
                           (2, 7, 7), "normal"),
        "conv_s1_multi_pad": (lambda: [Conv2D(4, 3, padding=1), Sigmoid(), Conv2D(3, 3, padding=1),
                                       Tanh(), Flatten()], (3, 6, 6), "normal"),
        "conv_untied": (lambda: [Conv2D(2, (2, 3), stride=(1, 2), padding=(2, 0), bias="untied"),
                                 Tanh(), Flatten()], (2, 6, 7), "normal"),
        "pools_overlap": (lambda: [Conv2D(2, 2), Tanh(), MaxPool(3, stride=1),
                                   MeanPool((2, 3), stride=(1, 2)), Flatten()], (1, 8, 9), "normal"),
        "subsample": (lambda: [Conv2D(2, 2), Sigmoid(), Subsample(2), Flatten()], (1, 7, 7), "normal"),
        "dense_acts": (lambda: [Flatten(), Dense(6), Sigmoid(), Dense(5), Tanh(), Dense(5), ReLU(),
                                Dense(4), LeakyReLU(0.1), Dense(4), Identity()], (5,), "normal"),
        "batchnorm": (lambda: [Conv2D(3, 2, padding=1), BatchNorm(), Tanh(), Flatten(), Dense(4),
                               BatchNorm(), Sigmoid()], (2, 4, 5), "normal"),
        "dropout": (lambda: [Flatten(), Dense(6), Dropout(0.3), Tanh()], (4,), "normal"),
        "lenet_relu_max": (lambda: [Conv2D(4, 3, padding=1), ReLU(), MaxPool(2), Conv2D(6, 3, padding=1),
                                    ReLU(), MaxPool(2), Flatten()], (1, 8, 8), "normal"),
        # ties: integer images with blank areas, relu at exactly 0 (zero biases), max-pool ties
        "ties_relu_max": (lambda: [Conv2D(4, 3, padding=1), ReLU(), MaxPool(2), Conv2D(5, 3, padding=1),
                                   ReLU(), MaxPool(2), Flatten()], (2, 8, 8), "ints"),
        "ties_relu_lp": (lambda: [Conv2D(3, 3, padding=1), ReLU(), LpPool(2, p=2.5), Conv2D(3, 2), ReLU(),
                                  LpPool(2, stride=1, p=1.0), Flatten()], (1, 8, 8), "ints"),
        "ties_leaky_overlap": (lambda: [Conv2D(3, 2, padding=1), LeakyReLU(0.2), MaxPool(3, stride=1),
                                        Flatten()], (1, 6, 6), "ints"),
    }  # fmt: skip
    for p in (1.0, 1.5, 2.0, 2.5, 3.0, 5.5):
        out[f"lp_near0_p{p:g}"] = (
            lambda p=p: [LpPool(2, p=p), Flatten()], (2, 4, 4), "near0"
        )
        out[f"lp_conv_near0_p{p:g}"] = (
            lambda p=p: [Conv2D(2, 2, padding=1), LpPool(2, stride=1, p=p), Flatten()], (1, 5, 5), "near0"
        )
    return out


def build(layers: list, shape: tuple[int, ...], dtype: type, seed: int, kind: str) -> Sequential:
    """``layers`` + dense 3 (named by kind and position), float ``dtype``; random N(0, 0.6²) parameters
    (γ near 1), but zero biases on tie networks: a blank area then puts relu inputs at exactly 0."""
    layers = [*layers, Dense(3)]
    for i, layer in enumerate(layers, 1):
        layer.name = f"{layer.kind}{i}"
    net = Sequential(layers, shape).build(np.random.default_rng(seed), dtype)
    rng = np.random.default_rng(seed + 100)
    for layer in net.layers:
        for key, p in layer.params.items():
            value = 0.6 * rng.standard_normal(p.shape)
            if key == "gamma":
                value = 1.0 + 0.3 * rng.standard_normal(p.shape)
            if kind == "ints" and key == "b":
                value = np.zeros(p.shape)
            p[...] = value.astype(p.dtype)
    return net


def inputs(net: Sequential, loss: Loss, m: int, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (m, *net.input_shape)
    if kind == "ints":
        x = rng.integers(0, 4, size=shape).astype(np.float64)
        x[..., : shape[-2] // 2, : shape[-1] // 2] = 0.0  # a blank quarter: relu at 0, max-pool ties
    else:
        x = rng.standard_normal(shape)
        if kind == "near0":
            flat = x.reshape(-1)
            pick = rng.choice(flat.size, size=max(1, flat.size // 6), replace=False)
            flat[pick] = rng.choice([-1, 1], size=pick.size) * 10 ** rng.uniform(-5, -3, size=pick.size)
    if isinstance(loss, SoftmaxCrossEntropy):
        return x, rng.integers(0, 3, size=m)
    return x, rng.random((m, 3))


def digits_cases() -> list[tuple[str, Sequential, Loss, np.ndarray, np.ndarray]]:
    """The default digits network (float32, its data and sample draw), when cnnbp's CLI library is there."""
    try:
        from cnnbp.checking import prepare
    except ImportError:  # pragma: no cover
        return []
    s, _, _ = prepare(None, method="central")
    return [("digits_default", s.net, s.loss, s.x, s.y)]


def main(args: argparse.Namespace) -> None:
    methods = ["central", "richardson", "auto", "complex"]
    stats = {m: {"nets": 0, "rows": 0, "fail_rows": 0, PASS: 0, KINK: 0, UNCHECKED: 0, "rough": 0,
                 "pass_err": 0.0, "rough_err": 0.0, "kink_err": 0.0, "worst": "", "worst_kink": ""}
             for m in methods}  # fmt: skip
    cases = []
    seeds = [0] if args.quick else [0, 1, 2]
    for name, (layers, shape, kind) in nets().items():
        for dtype in (np.float64, np.float32):
            for loss_cls in (MSE, SoftmaxCrossEntropy):
                for seed in seeds:
                    net = build(layers(), shape, dtype, seed, kind)
                    loss = loss_cls()
                    x, y = inputs(net, loss, 3, seed + 7, kind)
                    cases.append((f"{name}/{np.dtype(dtype).name}/{loss.name}/{seed}", net, loss,
                                  x.astype(dtype), y))  # fmt: skip
    cases += digits_cases()
    for label, net, loss, x, y in cases:
        for method in methods:
            if method == "complex" and non_analytic_layers(net, loss, x):
                continue
            res = gradcheck(net, loss, x, y, method=method)
            st = stats[method]
            st["nets"] += 1
            st["rows"] += len(res.rows)
            for row in res.rows:
                d = row.detail
                if row.status == FAIL:
                    st["fail_rows"] += 1
                    print(f"FAIL {method:10s} {label} {row.layer}.{row.tensor} err {row.max_rel_error:.2e} "
                          f"at {row.worst_index} a {row.analytic:.6g} n {row.numeric:.6g} "
                          f"b {row.backward:.6g} f {row.forward:.6g}")  # fmt: skip
                for status in (PASS, KINK, UNCHECKED):
                    st[status] += int(np.sum(d.status == status))
                st["rough"] += int(d.rough.sum())
                for status, key in ((PASS, "pass_err"), (KINK, "kink_err"), ("rough", "rough_err")):
                    sel = (d.status == PASS) & d.rough if status == "rough" else d.status == status
                    if status == PASS:
                        sel &= ~d.rough
                    if sel.any() and d.error[sel].max() > st[key]:
                        st[key] = float(d.error[sel].max())
                        where = f"{label} {row.layer}.{row.tensor}"
                        if status != "rough":
                            st["worst" if status == PASS else "worst_kink"] = where
                if args.rows and row.status != PASS:
                    print(f"  {method:10s} {label} {row.layer}.{row.tensor} {row.status} "
                          f"kink {row.n_kink} unchecked {row.n_unchecked} rough {row.n_rough}")  # fmt: skip
    print(f"{'method':10s} {'nets':>5s} {'rows':>6s} {'FAIL':>5s} {'PASS el.':>9s} {'KINK el.':>9s} "
          f"{'UNCHECKED':>9s} {'rough':>6s} {'max PASS err':>12s} {'rough err':>9s} "
          f"{'max KINK err':>12s}")  # fmt: skip
    for method, st in stats.items():
        print(f"{method:10s} {st['nets']:5d} {st['rows']:6d} {st['fail_rows']:5d} {st[PASS]:9d} "
              f"{st[KINK]:9d} {st[UNCHECKED]:9d} {st['rough']:6d} {st['pass_err']:12.2e} "
              f"{st['rough_err']:9.2e} {st['kink_err']:12.2e}"
              f"\n{'':10s} worst PASS: {st['worst']}; worst KINK: {st['worst_kink']}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed per network instead of three")
    parser.add_argument("--rows", action="store_true", help="print every row that is not PASS")
    main(parser.parse_args())
