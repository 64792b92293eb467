"""The training loop (``core/trainer.py``): learning, reproducible shuffling and resuming, dtype,
evaluation and the probe batch."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.layers import Conv2D, Dense, Flatten, MaxPool, ReLU, Sigmoid
from cnnbp.core.losses import MSE, SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from cnnbp.core.trainer import Trainer, correct_count


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
