"""The training loop (``core/trainer.py``): learning, reproducible shuffling and resuming, dtype,
evaluation and the probe batch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cnnbp.core.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool, ReLU, Sigmoid
from cnnbp.core.losses import MSE, SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from cnnbp.core.trainer import Diverged, Trainer, correct_count


def blobs(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated Gaussian clouds in 2-D, labelled 0 and 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    centres = np.array([[-2.0, -2.0], [2.0, 2.0]])
    x = centres[y] + 0.5 * rng.standard_normal((n, 2))
    return x, y.astype(np.int64)


def mlp(dtype: type = np.float64, seed: int = 0) -> Sequential:
    net = Sequential([Dense(8, name="fc1"), Sigmoid(name="fc1.sigmoid"), Dense(2, name="fc2")], (2,))
    return net.build(np.random.default_rng(seed), dtype)


def small_cnn(dtype: type = np.float32) -> Sequential:
    net = Sequential(
        [
            Conv2D(2, 3, name="conv1"),
            ReLU(name="conv1.relu"),
            MaxPool(2, name="pool1"),
            Flatten(name="flat"),
            Dense(3, name="fc"),
        ],
        (1, 6, 6),
    )
    return net.build(np.random.default_rng(1), dtype)


def test_learns_a_separable_problem() -> None:
    x, y = blobs()
    trainer = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.5), batch_size=16, seed=3)
    loss0, acc0 = trainer.evaluate(x, y)
    stats = [trainer.run_epoch(x, y, e) for e in range(1, 11)]
    loss1, acc1 = trainer.evaluate(x, y)
    assert loss1 < 0.5 * loss0
    assert stats[-1].train_loss < stats[0].train_loss
    assert acc1 == 1.0
    assert stats[-1].train_acc > 0.95


def test_step_counts_updates_and_last_partial_batch_is_used() -> None:
    x, y = blobs(n=50)
    trainer = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.1), batch_size=16, seed=0)
    seen: list[tuple[int, int]] = []
    stats = trainer.run_epoch(x, y, 1, on_batch=lambda i, n, loss: seen.append((i, n)))
    assert stats.steps == 4 and stats.samples == 50  # 16 + 16 + 16 + 2
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    trainer.run_epoch(x, y, 2)
    assert trainer.step == 8


def test_train_loss_is_the_sample_weighted_mean_of_batch_losses() -> None:
    x, y = blobs(n=50)
    trainer = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.1), batch_size=16, shuffle=False)
    losses: list[float] = []
    stats = trainer.run_epoch(x, y, 1, on_batch=lambda i, n, loss: losses.append(loss))
    expected = (16 * losses[0] + 16 * losses[1] + 16 * losses[2] + 2 * losses[3]) / 50
    assert stats.train_loss == pytest.approx(expected, rel=1e-12)


def test_shuffling_is_reproducible_per_epoch_without_state() -> None:
    x, y = blobs(n=40)
    a = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.1), batch_size=8, seed=7)
    b = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.1), batch_size=8, seed=7)
    np.testing.assert_array_equal(a.order(40, 3), np.random.default_rng([7, 3]).permutation(40))
    assert not np.array_equal(a.order(40, 1), a.order(40, 2))
    # same seed, same epochs → bit-identical weights
    for e in (1, 2):
        a.run_epoch(x, y, e)
        b.run_epoch(x, y, e)
    for name, group in a.net.parameters().items():
        for key, w in group.items():
            np.testing.assert_array_equal(w, b.net.parameters()[name][key])


def test_resuming_at_an_epoch_boundary_is_bit_identical() -> None:
    x, y = blobs(n=40)
    full = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.1, momentum=0.9), batch_size=8, seed=2)
    for e in (1, 2, 3):
        full.run_epoch(x, y, e)
    first = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.1, momentum=0.9), batch_size=8, seed=2)
    first.run_epoch(x, y, 1)
    resumed_net = mlp(seed=9)  # other initial weights: everything must come from set_parameters
    resumed_net.set_parameters(first.net.parameters(), same_dtype=True)
    opt = SGD(0.1, momentum=0.9)
    opt.load_state_dict(first.optimizer.state_dict())
    resumed = Trainer(resumed_net, SoftmaxCrossEntropy(), opt, batch_size=8, seed=2)
    for e in (2, 3):
        resumed.run_epoch(x, y, e)
    for name, group in full.net.parameters().items():
        for key, w in group.items():
            np.testing.assert_array_equal(w, resumed.net.parameters()[name][key])


def test_float32_stays_float32() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=20)
    trainer = Trainer(small_cnn(np.float32), SoftmaxCrossEntropy(), SGD(0.1, momentum=0.9), batch_size=6)
    trainer.run_epoch(x, y, 1)
    for group in trainer.net.parameters().values():
        assert all(w.dtype == np.float32 for w in group.values())
    velocity = trainer.optimizer.state["velocity"]  # {layer: {param: buffer}}
    assert set(velocity) == set(trainer.net.parameters())
    for group in velocity.values():
        assert all(v.dtype == np.float32 for v in group.values())
    probe = trainer.probe(x[:4], y[:4])
    assert all(d.dtype == np.float32 for d in probe.deltas.values())
    assert all(g.dtype == np.float32 for group in probe.grads.values() for g in group.values())


def test_probe_deltas_equal_record_output_and_leave_the_optimiser_alone() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 1, 6, 6))
    y = rng.integers(0, 3, size=5)
    net = small_cnn(np.float64)
    opt = SGD(0.1, momentum=0.9)
    trainer = Trainer(net, SoftmaxCrossEntropy(), opt, batch_size=4)
    before = {n: {k: w.copy() for k, w in g.items()} for n, g in net.parameters().items()}

    probe = trainer.probe(x, y)

    recorded: dict[str, np.ndarray] = {}
    loss = net.gradients(x, y, SoftmaxCrossEntropy(), lambda name, d: recorded.__setitem__(name, d.copy()))
    assert probe.loss == pytest.approx(loss)
    assert list(probe.deltas) == [layer.name for layer in net.layers]
    for info in net.summary():
        assert probe.deltas[info.name].shape == (5, *info.output_shape)
        np.testing.assert_array_equal(probe.deltas[info.name], recorded[info.name])
    for name, group in net.grads().items():
        for key, g in group.items():
            np.testing.assert_array_equal(probe.grads[name][key], g)
    assert opt.state == {"velocity": {}} and opt.t == 0 and trainer.step == 0
    for name, group in net.parameters().items():
        for key, w in group.items():
            np.testing.assert_array_equal(w, before[name][key])


def test_probe_arrays_are_copies() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 1, 6, 6))
    y = rng.integers(0, 3, size=3)
    trainer = Trainer(small_cnn(np.float64), SoftmaxCrossEntropy(), SGD(0.1), batch_size=4)
    probe = trainer.probe(x, y)
    kept = {k: v.copy() for k, v in probe.deltas.items()}
    trainer.run_epoch(x, y, 1)
    for k, v in probe.deltas.items():
        np.testing.assert_array_equal(v, kept[k])


def test_evaluate_batches_agree_with_one_pass() -> None:
    x, y = blobs(n=37)
    trainer = Trainer(mlp(), SoftmaxCrossEntropy(), SGD(0.1), batch_size=8)
    loss_small, acc_small = trainer.evaluate(x, y, batch_size=5)
    loss_all, acc_all = trainer.evaluate(x, y, batch_size=100)
    assert loss_small == pytest.approx(loss_all, rel=1e-12)
    assert acc_small == acc_all
    assert all(np.isnan(v) for v in trainer.evaluate(x[:0], y[:0]))


def test_accuracy_against_target_vectors_and_single_outputs() -> None:
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert correct_count(out, np.array([1, 0, 0])) == 2
    assert correct_count(out, np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])) == 2
    assert correct_count(np.array([[0.9], [0.2], [0.6]]), np.array([[1.0], [0.0], [0.0]])) == 2


def test_mse_with_target_vectors_trains() -> None:
    x, y = blobs()
    targets = np.eye(2)[y]
    layers = [Dense(8, name="fc1"), Sigmoid(name="s1"), Dense(2, name="fc2"), Sigmoid(name="s2")]
    net = Sequential(layers, (2,))
    net.build(np.random.default_rng(0), np.float64)
    trainer = Trainer(net, MSE(), SGD(1.0), batch_size=10, seed=1)
    first = trainer.run_epoch(x, targets, 1)
    for e in range(2, 20):
        last = trainer.run_epoch(x, targets, e)
    assert last.train_loss < first.train_loss
    assert trainer.evaluate(x, targets)[1] > 0.95


# ---- threads: shards of a batch on replicas (core/parallel.py) ------------------------------------------


def cnn_data(n: int = 30, seed: int = 0, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 6, 6)).astype(dtype), rng.integers(0, 3, size=n)


def weights(net: Sequential) -> dict[str, np.ndarray]:
    return {f"{n}.{k}": w.copy() for n, group in net.parameters().items() for k, w in group.items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key, w in a.items():
        np.testing.assert_array_equal(w, b[key], err_msg=key)


def threaded(threads: int | str = 2, dtype: type = np.float32, net: Sequential | None = None) -> Trainer:
    net = small_cnn(dtype) if net is None else net
    return Trainer(net, SoftmaxCrossEntropy(), SGD(0.1, momentum=0.9), batch_size=8, seed=5, threads=threads)


def test_threads_give_bit_identical_weights_run_after_run() -> None:
    x, y = cnn_data()
    runs = []
    for _ in range(2):
        trainer = threaded(3)
        stats = [trainer.run_epoch(x, y, e) for e in (1, 2)]
        assert trainer.shards == 3
        runs.append((weights(trainer.net), [(s.train_loss, s.train_acc) for s in stats]))
    assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_the_number_of_threads_running_the_shards_changes_no_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The split is fixed by ``threads``; how many threads the pace lets run it changes only the time."""
    from cnnbp.core import parallel

    x, y = cnn_data()
    results = []
    for running in (1, 2, 3):
        monkeypatch.setattr(parallel.Pace, "threads", lambda self, n=running: n)
        trainer = threaded(3)
        trainer.run_epoch(x, y, 1)
        results.append((weights(trainer.net), trainer.evaluate(x, y, batch_size=7)))
    for w, ev in results[1:]:
        assert_same(results[0][0], w)
        assert ev == results[0][1]


def test_threads_agree_with_one_thread_to_rounding() -> None:
    x, y = cnn_data(dtype=np.float64)
    one, three = threaded(1, np.float64), threaded(3, np.float64)
    for e in (1, 2):
        a, b = one.run_epoch(x, y, e), three.run_epoch(x, y, e)
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-12) and a.train_acc == b.train_acc
    for key, w in weights(one.net).items():
        np.testing.assert_allclose(weights(three.net)[key], w, rtol=1e-10, atol=1e-13, err_msg=key)
    assert one.shards == 1 and three.shards == 3


def resumed_mid_epoch(make: Callable[[], Trainer], x: np.ndarray, y: np.ndarray) -> Trainer:
    """Train epoch 1 and stop after batch 2 of epoch 2, carry the weights and optimiser state over to a
    new trainer, and finish epochs 2 and 3 there."""
    first = make()
    first.run_epoch(x, y, 1)

    def stop(i: int, n: int, loss: float) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.run_epoch(x, y, 2, on_batch=stop)
    second = make()
    second.net.set_parameters(first.net.parameters(), same_dtype=True)
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.step = first.step
    second.run_epoch(x, y, 2, resume=first.progress)
    second.run_epoch(x, y, 3)
    return second


@pytest.mark.parametrize("dropout", [False, True])
def test_resume_mid_epoch_with_threads_is_bit_identical(dropout: bool) -> None:
    x, y = cnn_data(n=40)

    def make() -> Trainer:
        net = None
        if dropout:
            layers = [Conv2D(2, 3, name="conv1"), ReLU(name="conv1.relu"), Flatten(name="flat"),
                      Dropout(0.3, name="drop"), Dense(3, name="fc")]  # fmt: skip
            net = Sequential(layers, (1, 6, 6)).build(np.random.default_rng(1), np.float32)
        return threaded(2, net=net)

    straight = make()
    for e in (1, 2, 3):
        straight.run_epoch(x, y, e)
    resumed = resumed_mid_epoch(make, x, y)
    assert straight.shards == 2 and straight.step == resumed.step
    assert_same(weights(straight.net), weights(resumed.net))


def test_dropout_in_shards_draws_per_shard_and_step() -> None:
    """Each shard draws its own masks from (seed, step, shard): two runs agree, two seeds do not."""
    x, y = cnn_data(n=16)

    def run(seed: int) -> dict[str, np.ndarray]:
        layers = [Flatten(name="flat"), Dropout(0.5, name="drop"), Dense(3, name="fc")]
        net = Sequential(layers, (1, 6, 6)).build(np.random.default_rng(1), np.float64)
        trainer = Trainer(net, SoftmaxCrossEntropy(), SGD(0.1), batch_size=8, seed=seed, threads=2)
        trainer.run_epoch(x, y, 1)
        return weights(net)

    assert_same(run(3), run(3))
    assert not np.array_equal(run(3)["fc.W"], run(4)["fc.W"])


def test_divergence_in_one_shard_is_found_as_on_one_thread() -> None:
    """A NaN sample in the last shard: the same layer and reason as without shards."""
    x, y = cnn_data(n=8, dtype=np.float64)
    x[7, 0, 2, 2] = np.nan
    found = []
    for threads in (1, 2):
        trainer = threaded(threads, np.float64)
        with pytest.raises(Diverged) as e:
            trainer.run_epoch(x, y, 1)
        found.append((e.value.layer, e.value.reason, e.value.step))
    assert found[0] == found[1]
    assert found[0][0] == "fc" and "the forward pass first went non-finite at the input" in found[0][1]


def test_a_batchnorm_network_keeps_one_shard() -> None:
    layers = [Flatten(name="flat"), Dense(4, name="fc1"), BatchNorm(name="bn"), Dense(3, name="fc2")]
    net = Sequential(layers, (1, 6, 6)).build(np.random.default_rng(0), np.float64)
    trainer = threaded(4, np.float64, net)
    x, y = cnn_data(n=16, dtype=np.float64)
    trainer.run_epoch(x, y, 1)
    assert trainer.shards == 1 and trainer.threads_now() == 1


def test_a_bad_threads_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="threads"):
        threaded(0)
