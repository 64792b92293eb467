"""``cnnbp.bench``, the library behind ``cnnbp bench``: timings, the per-layer profile, the agreement
figure, thread control and the whole run.  No timing assertions beyond "timings exist and add up"."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnnbp import bench
from cnnbp.core import (
    MSE,
    SGD,
    Adam,
    Conv2D,
    Dense,
    Flatten,
    Loss,
    Optimizer,
    Pool,
    Sequential,
    SoftmaxCrossEntropy,
)
from cnnbp.core.gradcheck import relative_error
from cnnbp.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def small_net() -> Sequential:
    return Sequential(
        [Conv2D(2, 3, name="c"), Pool(2, mode="max", name="p"), Flatten(name="f"), Dense(3, name="d")],
        (1, 8, 8),
    )


def built_net(dtype: type = np.float64, seed: int = 0) -> Sequential:
    return small_net().build(np.random.default_rng(seed), dtype)


def params_of(net: Sequential) -> dict[str, dict[str, np.ndarray]]:
    return {l: {k: v.copy() for k, v in g.items()} for l, g in net.parameters().items()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for l in a:
        assert a[l].keys() == b[l].keys()
        for k in a[l]:
            assert a[l][k].tobytes() == b[l][k].tobytes(), f"{l}.{k}"


# ---- timings ----------------------------------------------------------------------------------------


def test_timing_of_seconds() -> None:
    t = bench.Timing.of([0.003, 0.001, 0.002], batch=10)
    assert (t.median_ms, t.min_ms, t.max_ms) == pytest.approx((2.0, 1.0, 3.0))
    assert t.images_per_s == pytest.approx(5000.0)
    assert bench.Timing.of([0.0], batch=4).images_per_s == float("inf")


def test_alternate_runs_rounds_after_the_warm_up() -> None:
    calls: list[str] = []
    times = bench.alternate([lambda: calls.append("a"), lambda: calls.append("b")], steps=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert [len(t) for t in times] == [3, 3] and all(s >= 0 for t in times for s in t)


def test_alternate_in_blocks_runs_each_side_a_block_at_a_time() -> None:
    """Blocks of 2 over 5 steps: a a b b, a a b b, then the one step left of each; no warm-up here."""
    calls: list[str] = []
    times = bench.alternate([lambda: calls.append("a"), lambda: calls.append("b")], 5, 0, block=2)
    assert "".join(calls) == "aabbaabbab"
    assert [len(t) for t in times] == [5, 5]


def test_engine_step_is_a_training_step() -> None:
    """One call: gradients of the batch-mean loss (no input gradient), then the optimiser's update."""
    net, ref = built_net(), built_net()
    x, y = bench.random_batch(net, MSE(), 4, np.dtype(np.float64), np.random.default_rng(1))
    bench.engine_step(net, MSE(), SGD(lr=0.5), x, y)()
    ref.gradients(x, y, MSE())
    SGD(lr=0.5).step(ref.parameters(), ref.grads())
    assert_same_params(params_of(net), params_of(ref))


@pytest.mark.parametrize(
    "make", [lambda: SGD(lr=0.1, momentum=0.9), lambda: Adam(lr=0.01)], ids=["sgd", "adam"]
)
def test_profile_layers_times_every_layer_of_real_steps(make: Callable[[], Optimizer]) -> None:
    """The profiled steps are training steps taken apart: the weights end where as many
    ``engine_step`` calls take them (bit for bit), and every layer has a row."""
    net, ref = built_net(), built_net()
    loss = SoftmaxCrossEntropy()
    x, y = bench.random_batch(net, loss, 5, np.dtype(np.float64), np.random.default_rng(1))
    rows, other = bench.profile_layers(net, loss, make(), x, y, steps=3)
    step = bench.engine_step(ref, loss, make(), x, y)
    for _ in range(4):  # the warm-up pass is a step too
        step()
    assert_same_params(params_of(net), params_of(ref))
    assert [(r.name, r.kind) for r in rows] == [
        ("c", "conv"),
        ("p", "pool"),
        ("f", "flatten"),
        ("d", "dense"),
    ]
    assert all(r.forward_ms >= 0 and r.backward_ms >= 0 for r in rows) and other >= 0
    assert 0 < sum(r.share for r in rows) <= 1 + 1e-9


def test_random_batch_targets_fit_the_loss() -> None:
    rng = np.random.default_rng(0)
    x, y = bench.random_batch(built_net(), SoftmaxCrossEntropy(), 6, np.dtype(np.float32), rng)
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() < 1
    assert y.shape == (6,) and y.dtype.kind == "i" and set(y) <= {0, 1, 2}
    regression = Sequential([Flatten(name="f"), Dense(1, name="d")], (1, 8, 8)).build(rng, np.float64)
    _, y = bench.random_batch(regression, MSE(), 6, np.dtype(np.float64), rng)
    assert y.shape == (6, 1) and y.dtype == np.float64


# ---- agreement ------------------------------------------------------------------------------------------


def test_tensor_error_is_max_diff_over_max_reference() -> None:
    rng = np.random.default_rng(0)
    b = rng.standard_normal((4, 5))
    a = b + 1e-9 * rng.standard_normal((4, 5))
    expected = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert bench.tensor_error(a, b) == pytest.approx(expected, rel=1e-6)
    # the project's one element error, floored at max|b|
    assert bench.tensor_error(a, b) == float(np.max(relative_error(a, b, float(np.max(np.abs(b))))))
    assert bench.tensor_error(2.0, 1.0) == 0.5  # scalars (the loss): |a − b| / max(|a|, |b|)
    assert bench.tensor_error(np.zeros(3), np.zeros(3)) == 0.0
    assert bench.tensor_error(np.ones(3), np.zeros(3)) == 1.0
    for bad in (np.nan, np.inf):  # a broken gradient never agrees
        assert bench.tensor_error(np.array([bad, 1.0]), np.ones(2)) == float("inf")
        assert bench.tensor_error(np.ones(2), np.array([1.0, bad])) == float("inf")
    assert bench.tensor_error(np.zeros(0), np.zeros(0)) == 0.0


def test_tensor_error_floor_is_the_smallest_scale() -> None:
    b = np.array([1e-17, -2e-17])  # rounding noise of a gradient that is 0
    a = np.array([-3e-17, 0.0])
    # own scale: element 0 is |−3e-17 − 1e-17| / max(|−3e-17|, |1e-17|, max|b| = 2e-17)
    assert bench.tensor_error(a, b) == pytest.approx(4e-17 / 3e-17)
    assert bench.tensor_error(a, b, floor=0.5) == pytest.approx(4e-17 / 0.5)
    big = np.array([2.0, -4.0])
    # a floor below max|b| changes nothing
    assert bench.tensor_error(big + 1e-3, big, floor=0.5) == pytest.approx(1e-3 / 4.0)
    assert bench.tensor_error(np.array([np.nan]), np.array([0.0]), floor=1.0) == float("inf")


def test_agreement_verdict() -> None:
    a = bench.Agreement(1e-12, {"c.W": 3e-11, "c.b": 2e-13}, tolerance=1e-10)
    assert a.max_rel_err == 3e-11 and a.ok
    assert not bench.Agreement(1e-12, {"c.W": 2e-10}, tolerance=1e-10).ok
    assert not bench.Agreement(float("nan"), {}, tolerance=1e-10).ok


def test_check_agreement_in_float64() -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed")
    from cnnbp.torch_mirror import TorchMirror

    net = built_net()
    loss = SoftmaxCrossEntropy()
    x, y = bench.random_batch(net, loss, 5, np.dtype(np.float64), np.random.default_rng(1))
    agreement = bench.check_agreement(net, loss, TorchMirror(net, loss), x, y)
    assert agreement.ok and agreement.max_rel_err <= 1e-10 and agreement.tolerance == 1e-10
    assert set(agreement.grad_rel_err) == {"c.W", "c.b", "d.W", "d.b"}


def regularisers() -> tuple[Sequential, Loss, Optimizer, Any]:
    """``configs/examples/regularisers.yaml``: conv → batchnorm → relu → flatten → dense → batchnorm → tanh
    → dropout → dense, with a bias right before each batchnorm."""
    from cnnbp.config import build_loss, build_network, build_optimizer, load_config

    cfg = load_config(REPO / "configs" / "examples" / "regularisers.yaml", [])
    return build_network(cfg), build_loss(cfg), build_optimizer(cfg), cfg


def test_check_agreement_floors_each_gradient_at_its_layers_scale() -> None:
    """Each gradient's error is max|engine − torch| / max(max|torch|, AGREE_FLOOR · the largest torch
    gradient of its layer), recomputed here from both sides' gradients."""
    pytest.importorskip("torch", reason="PyTorch is not installed")
    from cnnbp.torch_mirror import TorchMirror

    net, loss, _, _ = regularisers()
    net.build(np.random.default_rng(0), np.float64)
    x, y = bench.random_batch(net, loss, 4, np.dtype(np.float64), np.random.default_rng(1))
    mirror = TorchMirror(net, loss)
    agreement = bench.check_agreement(net, loss, mirror, x, y)
    _, theirs = mirror.gradients(x, y)
    assert bench.AGREE_FLOOR["float64"] == 1e-3
    for lname, group in net.grads().items():
        scale = max(float(np.abs(t).max()) for t in theirs[lname].values())
        for key, g in group.items():
            t = theirs[lname][key]
            want = float(np.abs(g - t).max()) / max(float(np.abs(t).max()), 1e-3 * scale)
            assert agreement.grad_rel_err[f"{lname}.{key}"] == pytest.approx(want, rel=1e-12, abs=1e-300)
    assert agreement.ok and agreement.max_rel_err <= 1e-10, agreement


# ---- threads -----------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Put numpy's BLAS thread count and the thread variables back after the test."""
    saved = {var: os.environ.get(var) for var in bench._THREAD_ENV}
    before = bench.blas_threads()
    yield
    if before is not None:
        bench.limit_threads(before)
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.mark.usefixtures("restore_threads")
def test_limit_threads_caps_blas_and_sets_the_variables() -> None:
    bench.limit_threads(1)
    assert bench.blas_threads() in (1, None)  # None: a BLAS whose count cannot be asked
    assert all(os.environ[var] == "1" for var in bench._THREAD_ENV)


@pytest.mark.usefixtures("restore_threads")
def test_use_threads_caps_torch_too() -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    before = torch.get_num_threads()
    try:
        bench.use_threads(1, torch=True)
        assert torch.get_num_threads() == 1
        assert bench.blas_threads() in (1, None)
    finally:
        torch.set_num_threads(before)


# ---- the whole run -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9), lambda: Adam(lr=0.01)], ids=["sgd", "adam"])
def test_run_bench_engine_only(make: Callable[[], Optimizer]) -> None:
    net, optimizer = small_net(), make()
    result = bench.run_bench(net, MSE(), optimizer, name="lib", batch=4, dtype=np.float32, steps=2, warmup=1)
    assert (result.config, result.batch, result.dtype, result.steps) == ("lib", 4, "float32", 2)
    assert result.engine.median_ms > 0 and [r.name for r in result.layers] == ["c", "p", "f", "d"]
    assert result.optimizer == type(optimizer).__name__
    assert result.torch is None and result.agreement is None and result.ratio is None
    assert result.threads["torch"] is None
    # left as built: the weights of the seed, the optimiser's state as given
    assert_same_params(params_of(net), params_of(built_net(np.float32)))
    assert optimizer.t == 0 and all(not s for s in optimizer.state.values())
    json.dumps(result.to_json())


def test_run_bench_times_steps_with_the_trainers_memory_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer keeps freed memory for the next step (no page faults per step); a benchmark that
    did not would time slower steps than training runs (LeNet-5 b64 f32: 10.3 ms against 8.6)."""
    calls: list[str] = []
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: calls.append("kept") or True)
    bench.run_bench(small_net(), MSE(), SGD(0.1), name="lib", batch=4, dtype=np.float32, steps=1, warmup=0)
    assert calls == ["kept"]


@pytest.mark.parametrize(
    "make", [lambda: SGD(0.1, momentum=0.9, weight_decay=0.01), lambda: Adam(lr=0.01)], ids=["sgd", "adam"]
)
def test_run_bench_vs_torch(make: Callable[[], Optimizer]) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed")
    net, loss = small_net(), SoftmaxCrossEntropy()
    result = bench.run_bench(
        net, loss, make(), name="lib", batch=4, dtype=np.float64, steps=2, warmup=1, vs_torch=True
    )
    assert result.agreement is not None and result.agreement.ok
    assert result.torch is not None and result.torch.median_ms > 0
    assert result.ratio == pytest.approx(result.engine.median_ms / result.torch.median_ms)
    assert result.threads["torch"] >= 1
    data = result.to_json()
    assert data["agreement"]["ok"] is True and data["agreement"]["max_rel_err"] <= 1e-10


def test_run_bench_vs_torch_on_batchnorm_and_dropout() -> None:
    """``cnnbp bench --vs torch configs/examples/regularisers.yaml``: the agreement is checked without
    dropout masks (probe phase / probe mode) and passes in float64; the network is left as built, its
    running statistics included (the timed training steps move them)."""
    pytest.importorskip("torch", reason="PyTorch is not installed")
    net, loss, optimizer, cfg = regularisers()
    result = bench.run_bench(net, loss, optimizer, name=cfg.name, batch=cfg.train.batch_size,
                             dtype=np.float64, steps=3, warmup=1, seed=cfg.seed, vs_torch=True)  # fmt: skip
    assert result.agreement is not None and result.agreement.ok, result.agreement
    assert result.agreement.max_rel_err <= 1e-10
    assert len(result.agreement.grad_rel_err) == 10
    fresh, _, _, _ = regularisers()
    fresh.build(np.random.default_rng(cfg.seed), np.float64)
    assert_same_params(params_of(net), params_of(fresh))
    for lname, c in (("batchnorm2", 3), ("batchnorm5", 6)):  # as built: mean 0, variance 1
        np.testing.assert_array_equal(net.layer(lname).state["running_mean"], np.zeros(c))
        np.testing.assert_array_equal(net.layer(lname).state["running_var"], np.ones(c))


def test_run_bench_vs_torch_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec then reports no torch
    assert not bench.have_torch()
    with pytest.raises(UserError, match=r"pip install 'cnnbp\[torch\]'"):
        bench.run_bench(
            small_net(), MSE(), SGD(), name="x", batch=2, dtype=np.float64, steps=1, vs_torch=True
        )


def test_run_bench_takes_any_optimizer() -> None:
    """The protocol is all run_bench needs: a new optimiser works without a change here."""

    class Halving(Optimizer):
        kind = "halving"

        def __init__(self, lr: float = 0.5, weight_decay: float = 0.0) -> None:
            super().__init__(lr=lr, weight_decay=weight_decay)

        def update(self, lname: str, key: str, w: np.ndarray, g: np.ndarray) -> np.ndarray:
            return self.lr * w

    result = bench.run_bench(
        small_net(), MSE(), Halving(), name="x", batch=2, dtype=np.float64, steps=2, warmup=0
    )
    assert result.optimizer == "Halving" and result.engine.median_ms > 0
