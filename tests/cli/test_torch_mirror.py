"""``cnnbp.torch_mirror``: every built-in layer kind mirrored through its own ``to_torch``, loss and every
gradient agreeing in float64 to 1e-10 relative, training steps with the matching torch optimiser
agreeing too, and a clean UserError for what has no counterpart."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cnnbp.bench import check_agreement, engine_step, tensor_error
from cnnbp.core import (
    LAYERS,
    MSE,
    SGD,
    Adam,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    Loss,
    Optimizer,
    Pool,
    Sequential,
    SoftmaxCrossEntropy,
    Subsample,
)
from cnnbp.errors import UserError
from cnnbp.torch_mirror import TorchKit, TorchMirror, have_torch

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'cnnbp[torch]')")

TOL = 1e-10
INPUT = (2, 11, 11)


def around(*middle: Layer) -> list[Layer]:
    """``middle`` between a padded conv and a flatten → dense head of 4 outputs."""
    return [
        Conv2D(3, 3, stride=1, padding=1, name="c0"),
        *middle,
        Flatten(name="flat"),
        Dense(4, name="head"),
    ]


def act(kind: str) -> Layer:
    return LAYERS[kind](name=kind)


#: a network exercising each layer kind that needs more than its defaults (and each pooling mode)
SHAPED: dict[str, Callable[[], list[Layer]]] = {
    "conv": lambda: around(Conv2D(4, (3, 2), stride=(2, 1), padding=(1, 0), name="conv")),
    "conv_untied": lambda: around(Conv2D(2, 2, stride=2, bias="untied", name="conv")),
    "dense": lambda: [Flatten(name="flat"), Dense(5, name="dense"), act("tanh"), Dense(3, name="out")],
    "flatten": lambda: [Flatten(name="flat"), Dense(4, name="head")],
    "pool_max": lambda: around(Pool(3, stride=2, mode="max", name="pool")),
    "pool_mean": lambda: around(Pool((2, 3), stride=(1, 2), mode="mean", name="pool")),
    "pool_lp": lambda: around(Pool(2, stride=1, mode="lp", p=3.0, name="pool")),
    "subsample": lambda: around(Subsample(2, name="sub"), act("sigmoid")),
    # after a relu: a bias right before a batchnorm has a gradient of 0 (see the floor test below)
    "batchnorm": lambda: around(act("relu"), BatchNorm(momentum=0.3, name="bn")),
    "batchnorm_vector": lambda: [
        Flatten(name="flat"),
        Dense(5, name="dense"),
        act("tanh"),
        BatchNorm(eps=1e-3, name="bn"),
        Dense(4, name="head"),
    ],
    "dropout": lambda: around(Dropout(0.5, name="drop"), act("tanh"), Dropout(0.25, name="drop2")),
}


def examples() -> dict[str, Callable[[], list[Layer]]]:
    """``SHAPED``, and every other registered element-wise kind with its default hyper-parameters
    after a conv (so a layer registered later is covered without a new example)."""
    plain = {kind: (lambda kind=kind: around(act(kind))) for kind, cls in LAYERS.items() if cls.elementwise}
    return {**plain, **SHAPED}


EXAMPLES = examples()


def kind_of(example: str) -> str:
    return example.split("_")[0] if example.split("_")[0] in ("conv", "pool", "batchnorm") else example


def has_mapping(net: Sequential) -> bool:
    """Whether every layer of ``net`` maps to PyTorch (no ``to_torch`` raises NotImplementedError)."""
    kit = TorchKit(torch)
    try:
        for info, layer in zip(net.summary(), net.layers, strict=True):
            layer.to_torch(kit, info)
    except NotImplementedError:
        return False
    return True


def built(layers: list[Layer], dtype: type = np.float64) -> Sequential:
    return Sequential(layers, INPUT).build(np.random.default_rng(0), dtype)


def batch(n: int = 5, k: int = 4, seed: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inputs and three kinds of targets: class indices, soft targets, one-hot vectors."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *INPUT))
    idx = rng.integers(0, k, n)
    soft = rng.random((n, k))
    soft /= soft.sum(axis=1, keepdims=True)
    return x, {"indices": idx, "soft": soft, "onehot": np.eye(k)[idx]}


def test_examples_cover_every_registered_kind() -> None:
    assert set(LAYERS) <= {kind_of(e) for e in EXAMPLES}, "a layer kind needs an example in SHAPED"


@pytest.mark.parametrize("example", sorted(EXAMPLES))
@pytest.mark.parametrize(
    ("loss", "target"),
    [
        (SoftmaxCrossEntropy(), "indices"),
        (SoftmaxCrossEntropy(), "soft"),
        (MSE(), "indices"),
        (MSE(), "onehot"),
    ],
    ids=["ce-indices", "ce-soft", "mse-indices", "mse-onehot"],
)
def test_loss_and_every_gradient_agree_in_float64(example: str, loss: Loss, target: str) -> None:
    net = built(EXAMPLES[example]())
    assert any(layer.kind == kind_of(example) for layer in net.layers)
    if not has_mapping(net):
        pytest.skip(f"layer kind {kind_of(example)!r} has no PyTorch mapping")
    x, targets = batch(k=int(np.prod(net.output_shape)))
    mirror = TorchMirror(net, loss)
    assert mirror.params.keys() == net.parameters().keys()
    assert all(mirror.params[l].keys() == g.keys() for l, g in net.parameters().items())
    agreement = check_agreement(net, loss, mirror, x, targets[target])
    assert agreement.tolerance == TOL
    assert agreement.ok and agreement.max_rel_err <= TOL, agreement
    assert set(agreement.grad_rel_err) == {f"{l}.{k}" for l, g in net.parameters().items() for k in g}


def test_mirror_starts_at_the_engines_weights_in_its_dtype() -> None:
    for dtype, tdtype in ((np.float64, torch.float64), (np.float32, torch.float32)):
        net = built(EXAMPLES["subsample"](), dtype)
        mirror = TorchMirror(net, MSE())
        assert {p.dtype for p in mirror.model.parameters()} == {tdtype}
        # the Parameters in ``params`` are the model's own (so that the optimiser moves the model)
        assert {id(p) for g in mirror.params.values() for p in g.values()} == {
            id(p) for p in mirror.model.parameters()
        }
        for l, k, w in ((l, k, w) for l, g in mirror.weights().items() for k, w in g.items()):
            np.testing.assert_array_equal(w, net.layer(l).params[k])


def test_float32_agrees_to_float32_tolerance() -> None:
    net = built(EXAMPLES["conv"](), np.float32)
    x, targets = batch()
    agreement = check_agreement(net, SoftmaxCrossEntropy(), TorchMirror(net, SoftmaxCrossEntropy()),
                                x.astype(np.float32), targets["indices"])  # fmt: skip
    assert agreement.tolerance == 1e-4 and agreement.ok, agreement


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(lr=0.1),
        lambda: SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda: Adam(lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd", "sgd-momentum-decay", "adam"],
)
@pytest.mark.parametrize("example", ["conv_untied", "subsample", "pool_lp"])
def test_training_steps_agree(example: str, make: Callable[[], Optimizer]) -> None:
    """Several steps of the engine and of the mirror's step function (the same optimiser via
    ``to_torch``) from the same weights end at the same weights."""
    net = built(EXAMPLES[example]())
    x, targets = batch()
    loss = SoftmaxCrossEntropy()
    mirror = TorchMirror(net, loss)
    optimizer = make()
    engine, torch_step = (
        engine_step(net, loss, optimizer, x, targets["indices"]),
        mirror.step_fn(x, targets["indices"], optimizer),
    )
    start = {l: {k: v.copy() for k, v in g.items()} for l, g in net.parameters().items()}
    for _ in range(4):
        engine()
        torch_step()
    mirrored = mirror.weights()
    for l, g in net.parameters().items():
        for k, w in g.items():
            assert not np.array_equal(w, start[l][k]), f"{l}.{k} did not move"
            assert tensor_error(w, mirrored[l][k]) <= TOL, f"{l}.{k}"
            assert tensor_error(w - start[l][k], mirrored[l][k] - start[l][k]) <= 1e-8, f"{l}.{k} update"


def test_set_weights_copies_into_the_model() -> None:
    net = built(EXAMPLES["dense"]())
    mirror = TorchMirror(net, MSE())
    changed = {l: {k: v + 1.0 for k, v in g.items()} for l, g in net.parameters().items()}
    mirror.set_weights(changed)
    for l, g in mirror.weights().items():
        for k, w in g.items():
            np.testing.assert_array_equal(w, changed[l][k])


def test_kit_module_registers_owned_parameters_and_modules() -> None:
    kit = TorchKit(torch)
    lin = torch.nn.Linear(2, 2)
    scale = torch.nn.Parameter(torch.ones(2))
    module = kit.module(lambda x: lin(x) * scale, lin, scale)
    assert isinstance(module, torch.nn.Module)
    assert {id(p) for p in module.parameters()} == {id(lin.weight), id(lin.bias), id(scale)}
    module = module.to(torch.float64)
    assert module(torch.ones(1, 2, dtype=torch.float64)).dtype == torch.float64
    assert kit.F is torch.nn.functional and kit.nn is torch.nn and kit.torch is torch


# ---- the agreement is deterministic: the engine's probe phase, the mirror's probe mode ------------------


def test_probe_mode_puts_dropout_in_eval_and_restores_modes_and_buffers() -> None:
    """Inside: train mode (batchnorm on batch statistics) but dropout in eval; afterwards the modes as they
    were and the running statistics untouched, though train mode moves them."""
    net = built([Conv2D(3, 3, name="c0"), BatchNorm(name="bn"), Dropout(0.5, name="drop"),
                 Flatten(name="flat"), Dense(4, name="head")])  # fmt: skip
    mirror = TorchMirror(net, SoftmaxCrossEntropy())
    bn, drop = mirror.model[1], mirror.model[2]
    assert mirror.stochastic == [drop]
    mirror.model.eval()  # a mode other than the one probe_mode sets, to see it come back
    before = {name: b.clone() for name, b in mirror.model.named_buffers()}
    x, targets = batch()
    with mirror.probe_mode():
        assert mirror.model.training and bn.training and not drop.training
        out = mirror.model(torch.from_numpy(x))
        assert not torch.equal(bn.running_mean, before["1.running_mean"])  # train mode moved it
    assert not any(m.training for m in mirror.model.modules())
    for name, b in mirror.model.named_buffers():
        assert torch.equal(b, before[name]), name
    # dropout was the identity: the output is the same as without the dropout module
    without = torch.nn.Sequential(*list(mirror.model)[:2], *list(mirror.model)[3:])
    without.train()
    np.testing.assert_array_equal(out.detach().numpy(), without(torch.from_numpy(x)).detach().numpy())
    mirror.model.train()
    mirror.gradients(x, targets["indices"])
    assert mirror.model.training and drop.training  # gradients() put train mode back too


def test_check_agreement_with_dropout_is_deterministic_and_updates_nothing() -> None:
    """Dropout with rate 0.5: in training each side would drop values of its own and the losses would
    differ; compared in probe phase / probe mode they agree, twice over, and neither side's running
    statistics move (the engine's probe phase updates nothing, the mirror puts its buffers back)."""
    net = built([Conv2D(3, 3, name="c0"), act("relu"), BatchNorm(name="bn"), Dropout(0.5, name="drop"),
                 Flatten(name="flat"), Dense(4, name="head")])  # fmt: skip
    x, targets = batch()
    loss = SoftmaxCrossEntropy()
    mirror = TorchMirror(net, loss)
    first = check_agreement(net, loss, mirror, x, targets["indices"])
    second = check_agreement(net, loss, mirror, x, targets["indices"])
    assert first.ok and second.ok and first.max_rel_err <= TOL, first
    assert first == second
    # the initial running statistics (mean 0, variance 1) on both sides
    bn = net.layer("bn").state
    np.testing.assert_array_equal(bn["running_mean"], np.zeros(3))
    np.testing.assert_array_equal(bn["running_var"], np.ones(3))
    np.testing.assert_array_equal(mirror.model[2].running_mean.numpy(), np.zeros(3))
    np.testing.assert_array_equal(mirror.model[2].running_var.numpy(), np.ones(3))
    assert int(mirror.model[2].num_batches_tracked) == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_bias_before_a_batchnorm_agrees_against_its_layers_scale(dtype: type) -> None:
    """The bias of a conv right before a batchnorm has a gradient of exactly 0 (the batchnorm subtracts
    the channel's mean, so a shift of the bias changes nothing): both sides compute rounding noise, which
    agrees only against the scale of the layer's other gradient."""
    net = built(around(BatchNorm(name="bn")), dtype)
    x, targets = batch()
    loss = SoftmaxCrossEntropy()
    mirror = TorchMirror(net, loss)
    agreement = check_agreement(net, loss, mirror, x.astype(dtype), targets["indices"])
    assert agreement.ok, agreement
    _, theirs = mirror.gradients(x.astype(dtype), targets["indices"])
    eps = float(np.finfo(dtype).eps)
    scale = float(np.abs(theirs["c0"]["W"]).max())
    assert float(np.abs(theirs["c0"]["b"]).max()) <= 100 * eps * scale  # 0 up to rounding
    assert float(np.abs(net.layer("c0").grads["b"]).max()) <= 100 * eps * scale


# ---- no counterpart ------------------------------------------------------------------------------------


class Doubler(Layer):
    """An element-wise layer with no PyTorch mapping (not registered: ``kind`` set by hand)."""

    kind = "doubler"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return 2 * x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return 2 * dy


def test_layer_without_counterpart_is_a_user_error() -> None:
    net = built(around(Doubler(name="twice")))
    with pytest.raises(UserError) as info:
        TorchMirror(net, MSE())
    assert str(info.value) == "--vs torch: no PyTorch counterpart for layer 'twice' (doubler)"


def test_loss_and_optimizer_without_counterpart_are_user_errors() -> None:
    class Hinge(Loss):
        name = "hinge"

    class Plain(Optimizer):
        kind = "plain"

    net = built(EXAMPLES["dense"]())
    with pytest.raises(UserError, match="no PyTorch counterpart for loss 'hinge'"):
        TorchMirror(net, Hinge())
    x, targets = batch()
    with pytest.raises(UserError, match="no PyTorch counterpart for optimizer 'plain'"):
        TorchMirror(net, MSE()).step_fn(x, targets["indices"], Plain())


def test_unbuilt_network_is_refused() -> None:
    with pytest.raises(ValueError, match="build"):
        TorchMirror(Sequential(EXAMPLES["dense"](), INPUT), MSE())


def test_have_torch() -> None:
    assert have_torch()
