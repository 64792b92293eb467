"""Data parallelism (``core/parallel.py``): the work split, replicas that share the parameters, the
gradient of a sharded batch, bit-identical results whatever the number of threads, the worker threads
and the choice of their number."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import numpy as np
import pytest

from cnnbp.core import parallel
from cnnbp.core.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool, MeanPool, ReLU, Sigmoid
from cnnbp.core.losses import MSE, SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.parallel import (
    AUTO_MIN_WORK,
    Pace,
    Shards,
    Workers,
    can_fork,
    forward_work,
    replicate,
    shard_bounds,
    shard_count,
    spin_until_ready,
)


def cnn(dtype: type = np.float64, seed: int = 1) -> Sequential:
    net = Sequential(
        [
            Conv2D(3, 3, padding=1, name="conv1"),
            ReLU(name="conv1.relu"),
            MaxPool(2, name="pool2"),
            Conv2D(4, 2, name="conv3"),
            Sigmoid(name="conv3.sigmoid"),
            MeanPool(2, name="pool4"),
            Flatten(name="flat"),
            Dense(3, name="fc"),
        ],
        (2, 8, 8),
    )
    return net.build(np.random.default_rng(seed), dtype)


def batch(m: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, 2, 8, 8)), rng.integers(0, 3, size=m)


# ---- the split ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "shards"), [(10, 2), (7, 3), (64, 2), (3, 5), (1, 2), (256, 4)])
def test_shards_cover_the_batch_in_order_and_differ_by_at_most_one(m: int, shards: int) -> None:
    bounds = shard_bounds(m, shards)
    assert len(bounds) == min(m, shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == m
    assert all(hi == lo for (_, hi), (lo, _) in zip(bounds, bounds[1:], strict=False))
    sizes = [hi - lo for lo, hi in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_forward_work_counts_each_weight_once_per_output_position() -> None:
    net = cnn()
    # conv1: 3·2·3·3 weights × 8·8 outputs; conv3 (on 3×4×4): 4·3·2·2 × 3·3; fc: 3 × 4·1·1
    assert forward_work(net) == 54 * 64 + 48 * 9 + 3 * 4


def test_shard_count_follows_the_setting_and_the_network_only() -> None:
    net = cnn()
    assert shard_count(2, net, 64) == 2
    assert shard_count(3, net, 2) == 2  # never an empty shard
    assert shard_count(1, net, 64) == 1
    half = -(-AUTO_MIN_WORK // forward_work(net))  # the smallest half with enough work
    assert shard_count("auto", net, 2 * half) == 2
    assert shard_count("auto", net, 2 * half - 1) == 1
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            shard_count(bad, net, 64)  # type: ignore[arg-type]


def test_a_network_that_couples_the_batch_is_never_split() -> None:
    net = Sequential([Dense(4, name="fc1"), BatchNorm(name="bn"), Dense(2, name="fc2")], (3,))
    assert shard_count(4, net, 64) == 1
    assert shard_count("auto", net, 10**6) == 1


# ---- replicas and the sharded gradient ----------------------------------------------------------------


def test_replicas_share_the_parameters_and_own_their_gradients() -> None:
    net = cnn()
    twin = replicate(net)
    for mine, main in zip(twin.layers, net.layers, strict=True):
        assert mine.params is main.params and mine.name == main.name
        for key in main.grads:
            assert mine.grads[key] is not main.grads[key]
    net.layers[0].params["W"][...] = 0.5  # set in place (set_parameters does): the replica sees it
    assert np.all(twin.layers[0].params["W"] == 0.5)


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_sharded_gradient_is_the_gradient_of_the_batch_mean_loss(shards: int) -> None:
    """Σ over shards of the shard's gradient sums, ÷ m, is ∂(mean loss)/∂θ of the whole batch: the same
    as one pass over the batch, to rounding."""
    x, y = batch(11)
    whole = cnn()
    value = whole.gradients(x, y, SoftmaxCrossEntropy(), input_grad=False)
    net = cnn()
    split = Shards(net, SoftmaxCrossEntropy(), shards)
    sharded, out = split.gradients(x, y, threads=2)
    assert sharded == pytest.approx(value, rel=1e-13)
    np.testing.assert_allclose(out, whole.forward(x), rtol=1e-13)
    for name, group in whole.grads().items():
        for key, g in group.items():
            np.testing.assert_allclose(net.grads()[name][key], g, rtol=1e-11, atol=1e-14)


def test_sharded_gradient_is_bit_identical_on_one_thread_and_on_several() -> None:
    x, y = batch(16)
    grads = []
    for threads in (1, 2, 3, 1, 2):
        net = cnn(np.float32)
        Shards(net, MSE(), 3).gradients(x.astype(np.float32), y, threads)
        grads.append({f"{n}.{k}": g.copy() for n, group in net.grads().items() for k, g in group.items()})
    for other in grads[1:]:
        for key, g in grads[0].items():
            np.testing.assert_array_equal(other[key], g)


def test_replicas_follow_the_networks_phase_and_cast() -> None:
    net = cnn()
    split = Shards(net, SoftmaxCrossEntropy(), 2)
    net.cast(np.float32)  # new parameter arrays: the replicas must follow them
    x, y = batch(6)
    split.gradients(x.astype(np.float32), y, 2)
    assert all(g.dtype == np.float32 for group in net.grads().values() for g in group.values())
    net2 = Sequential([Dense(5, name="fc1"), Dropout(0.5, name="drop"), Dense(2, name="fc2")], (3,))
    net2.build(np.random.default_rng(0), np.float64)
    split2 = Shards(net2, SoftmaxCrossEntropy(), 2)
    xs = np.ones((4, 3))
    with net2.in_phase("eval"):  # dropout is the identity in every replica
        (_, a), (_, b) = [(t, t.forward(p)) for t, p in split2.pieces(xs)]
    np.testing.assert_array_equal(a, b)


def test_record_sees_every_shard_and_the_same_gradients() -> None:
    x, y = batch(9)
    net = cnn()
    split = Shards(net, SoftmaxCrossEntropy(), 3)
    split.gradients(x, y, 2)
    plain = {f"{n}.{k}": g.copy() for n, group in net.grads().items() for k, g in group.items()}
    seen: list[tuple[str, int]] = []
    split.gradients(x, y, 2, record=lambda name, d: seen.append((name, d.shape[0])))
    names = [layer.name for layer in reversed(net.layers)]
    assert seen == [(n, 3) for _ in range(3) for n in names]
    for key, g in plain.items():
        name, param = key.rsplit(".", 1)
        np.testing.assert_array_equal(net.grads()[name][param], g)


# ---- threads ---------------------------------------------------------------------------------------------


def test_workers_run_every_task_once_and_raise_the_first_error_in_task_order() -> None:
    workers = Workers()
    done: list[tuple[int, int]] = []
    lock = threading.Lock()

    def task(i: int, t: int) -> None:
        with lock:
            done.append((i, t))

    workers.run(task, 20, 3)
    assert sorted(i for i, _ in done) == list(range(20))
    assert {t for _, t in done} <= {0, 1, 2}

    def failing(i: int, t: int) -> None:
        if i in (3, 7):
            raise KeyError(i)

    with pytest.raises(KeyError, match="3"):
        workers.run(failing, 10, 2)
    done.clear()
    workers.run(task, 5, 2)  # usable after an error
    assert sorted(i for i, _ in done) == list(range(5))


def feed(pace: Pace, speed: dict[int, float], steps: int) -> list[int]:
    """Run ``steps`` steps at ``speed[threads]`` seconds per sample; the thread counts used."""
    used = []
    for _ in range(steps):
        n = pace.threads()
        used.append(n)
        pace.record(speed[n])
    return used


def test_pace_keeps_the_faster_thread_count_and_notices_a_slower_machine() -> None:
    pace = Pace(2, trial=3, period=50, warmup=0)
    used = feed(pace, {1: 2.0, 2: 1.0}, 100)
    assert pace.chosen == 2
    # tried at the start and once more after the period: 3 counted steps and 1 settling step each
    assert used.count(1) <= 2 * (3 + 1)
    # the machine gets busy: two threads now slower than one
    feed(pace, {1: 2.0, 2: 3.0}, 10)
    assert pace.chosen == 1
    assert feed(pace, {1: 2.0, 2: 3.0}, 40).count(2) == 0  # the period doubled: not tried again yet
    # the machine frees up again: found at the next period
    feed(pace, {1: 2.0, 2: 1.0}, 200)
    assert pace.chosen == 2


def test_pace_keeps_more_threads_when_fewer_are_faster_only_by_noise() -> None:
    pace = Pace(2, trial=3, period=50, warmup=0)
    feed(pace, {1: 1.0, 2: 1.0 + Pace.TIE / 2}, 20)  # one thread "faster" by less than the tie margin
    assert pace.chosen == 2
    feed(pace, {1: 1.0, 2: 1.0 + 2 * Pace.TIE}, 120)  # clearly faster: chosen
    assert pace.chosen == 1


def test_pace_with_one_thread_never_explores() -> None:
    pace = Pace(1)
    assert set(feed(pace, {1: 1.0}, 30)) == {1}


# ---- helper processes (Linux) ---------------------------------------------------------------------------

needs_fork = pytest.mark.skipif(not can_fork(), reason="shards run in forked processes on Linux only")


def grads_of(net: Sequential) -> dict[str, np.ndarray]:
    return {f"{n}.{k}": g.copy() for n, group in net.grads().items() for k, g in group.items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key, g in a.items():
        np.testing.assert_array_equal(b[key], g, err_msg=key)


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """One helper process even on a one-CPU machine."""
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 2)


def dropout_net() -> Sequential:
    layers = [Conv2D(3, 3, padding=1, name="conv1"), ReLU(name="conv1.relu"), Flatten(name="flat"),
              Dropout(0.4, name="drop"), Dense(3, name="fc")]  # fmt: skip
    return Sequential(layers, (2, 8, 8)).build(np.random.default_rng(4), np.float32)


@needs_fork
@pytest.mark.usefixtures("two_cpus")
@pytest.mark.parametrize("make", [lambda: cnn(np.float32), dropout_net], ids=["cnn", "dropout"])
def test_processes_threads_and_one_thread_give_the_same_bits(make: Callable[[], Sequential]) -> None:
    x, y = batch(13)
    x = x.astype(np.float32)
    seen = []
    for processes, threads in ((True, 2), (False, 2), (False, 1), (True, 2)):
        net = make()
        split = Shards(net, SoftmaxCrossEntropy(), 2, processes=processes)
        split.set_rngs([np.random.default_rng([7, i]) for i in range(2)])
        value, out = split.gradients(x, y, threads)
        assert (split.helpers is not None) == processes
        seen.append((value, out, grads_of(net)))
        split.close()
    for value, out, grads in seen[1:]:
        assert value == seen[0][0]
        np.testing.assert_array_equal(out, seen[0][1])
        assert_same(seen[0][2], grads)


@needs_fork
@pytest.mark.usefixtures("two_cpus")
def test_helpers_see_the_parameters_as_they_are_now() -> None:
    """Updated in place (the optimiser, set_parameters) or replaced (new arrays): the next step's
    helper uses the current values, as a thread would."""
    x, y = batch(10)
    net, twin = cnn(), cnn()
    split, local = Shards(net, MSE(), 2), Shards(twin, MSE(), 2, processes=False)
    split.gradients(x, y, 2)

    def in_place(n: Sequential) -> None:
        n.layers[0].params["W"] *= 0.5

    def set_all(n: Sequential) -> None:
        n.set_parameters({name: {k: v + 0.1 for k, v in g.items()} for name, g in n.parameters().items()})

    def replaced(n: Sequential) -> None:
        n.layers[3].params["W"] = n.layers[3].params["W"] * -1.0

    for change in (in_place, set_all, replaced):
        change(net)
        change(twin)
        split.gradients(x, y, 2)
        local.gradients(x, y, 2)
        assert split.helpers is not None
        assert_same(grads_of(twin), grads_of(net))


@needs_fork
@pytest.mark.usefixtures("two_cpus")
def test_evaluation_in_processes_is_the_evaluation_on_one_thread() -> None:
    x, y = batch(50)
    net = dropout_net()
    split = Shards(net, SoftmaxCrossEntropy(), 2, batch_size=8)
    with net.in_phase("eval"):
        there = split.evaluate(x.astype(np.float32), y, 9, threads=2)
        assert split.helpers is not None
        here = split.evaluate(x.astype(np.float32), y, 9, threads=1)
    assert len(there) == len(here) == 6
    for (out_a, loss_a), (out_b, loss_b) in zip(there, here, strict=True):
        np.testing.assert_array_equal(out_a, out_b)
        np.testing.assert_array_equal(loss_a, loss_b)


@needs_fork
@pytest.mark.usefixtures("two_cpus")
def test_an_evaluation_whose_helper_died_is_computed_here() -> None:
    x, y = batch(50)
    net = dropout_net()
    split = Shards(net, SoftmaxCrossEntropy(), 2, batch_size=8)
    with net.in_phase("eval"):
        here = split.evaluate(x.astype(np.float32), y, 9, threads=1)
        split.evaluate(x.astype(np.float32), y, 9, threads=2)
        assert split.helpers is not None
        pid = split.helpers.pids[0]
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # gone before the next call: its pipe is closed
        there = split.evaluate(x.astype(np.float32), y, 9, threads=2)
    assert split.helpers is None
    for (out_a, loss_a), (out_b, loss_b) in zip(there, here, strict=True):
        np.testing.assert_array_equal(out_a, out_b)
        np.testing.assert_array_equal(loss_a, loss_b)


@needs_fork
@pytest.mark.usefixtures("two_cpus")
@pytest.mark.parametrize("dead_before", [False, True])
def test_a_helper_that_dies_is_replaced_by_the_parent(dead_before: bool) -> None:
    x, y = batch(12)
    net, twin = cnn(), cnn()
    split = Shards(net, SoftmaxCrossEntropy(), 2)
    split.gradients(x, y, 2)
    assert split.helpers is not None
    os.kill(split.helpers.pids[0], signal.SIGKILL)
    if dead_before:  # its pipe is closed before the step: sending to it fails, not only receiving
        os.waitpid(split.helpers.pids[0], 0)
    value = split.gradients(x, y, 2)[0]
    assert split.helpers is None and not split.processes  # threads from now on
    expected = Shards(twin, SoftmaxCrossEntropy(), 2, processes=False).gradients(x, y, 1)[0]
    assert value == expected
    assert_same(grads_of(twin), grads_of(net))


class Picky(Dense):
    """A dense layer that refuses samples holding 1000 (standing in for any error inside a layer)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        if np.any(x == 1000.0):
            raise ArithmeticError("a sample holds 1000")
        return super().forward(x)


@needs_fork
@pytest.mark.usefixtures("two_cpus")
def test_an_error_in_a_helpers_shard_is_raised_as_it_is() -> None:
    net = Sequential([Flatten(name="flat"), Picky(3, name="fc")], (2, 8, 8)).build(
        np.random.default_rng(0), np.float64
    )
    x, y = batch(8)
    split = Shards(net, SoftmaxCrossEntropy(), 2)
    split.gradients(x, y, 2)
    x[6, 0, 0, 0] = 1000.0  # in shard 1, computed by the helper
    with pytest.raises(ArithmeticError, match="holds 1000"):
        split.gradients(x, y, 2)


@needs_fork
@pytest.mark.usefixtures("two_cpus")
def test_an_interrupted_step_ends_its_helpers_and_the_next_step_starts_new_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = batch(10)
    net, twin = cnn(), cnn()
    split = Shards(net, SoftmaxCrossEntropy(), 2)
    split.gradients(x, y, 2)
    old = split.helpers
    assert old is not None
    plain = Shards.compute

    def interrupted(self: Shards, i: int, *args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(Shards, "compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        split.gradients(x, y, 2)  # the helper has its shard; the parent stops before waiting for it
    assert split.helpers is None
    for pid in old.pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped
    monkeypatch.setattr(Shards, "compute", plain)
    split.gradients(x, y, 2)
    assert split.helpers is not None and split.helpers is not old
    Shards(twin, SoftmaxCrossEntropy(), 2, processes=False).gradients(x, y, 2)
    assert_same(grads_of(twin), grads_of(net))


@needs_fork
@pytest.mark.usefixtures("two_cpus")
def test_helpers_ignore_ctrl_c_and_end_with_their_shards() -> None:
    x, y = batch(10)
    split = Shards(cnn(), SoftmaxCrossEntropy(), 2)
    split.gradients(x, y, 2)
    assert split.helpers is not None
    pid = split.helpers.pids[0]
    os.kill(pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the whole process group
    split.gradients(x, y, 2)
    assert split.helpers is not None and split.helpers.pids == [pid]  # still the same, still working
    split.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_spin_until_ready_sees_data_at_once_and_gives_up_after_its_time() -> None:
    """A hand-off polls before it sleeps: True as soon as the pipe holds data; False once the time is up
    with nothing there (bounded: a helper with nothing to do goes to sleep)."""
    import multiprocessing
    import time

    mine, theirs = multiprocessing.Pipe()
    try:
        t0 = time.perf_counter()
        assert spin_until_ready(mine, 0.02) is False
        assert time.perf_counter() - t0 >= 0.02
        theirs.send("shard")
        assert spin_until_ready(mine, 60.0) is True  # returns at once, not after a minute
        assert mine.recv() == "shard"
    finally:
        mine.close()
        theirs.close()
