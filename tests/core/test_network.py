"""Sequential (``core/network.py``): whole-network finite differences of ``gradients`` and its recorded
deltas, float32 end to end, memory contracts across calls, shape errors, and ``set_parameters``.

Finite differences: conv → relu/tanh → pool → subsample → flatten → dense, with each loss —

* every parameter gradient equals the FD of the batch-**mean** loss;
* the delta recorded for each layer, for sample x, equals the FD of that sample's own loss
  ``L_x`` with respect to that layer's output — the output is perturbed in the middle of
  the forward pass by running the layers before and after it by hand.  That is SPEC §1:
  deltas are per sample and undivided; only parameter gradients carry the 1/m.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from cnnbp.core import LOSSES, SGD, ParameterError, Sequential, ShapeError
from cnnbp.core.init import Explicit
from cnnbp.core.layers import Conv2D, Dense, Flatten, Layer, MaxPool, Pool, ReLU, Sigmoid, Subsample, Tanh
from tests.core.conftest import assert_names, every_layer_net, shape_pattern, summary_error
from tests.fd import assert_fd_close, fd_gradient

F32 = np.dtype(np.float32)

# ---------------------------------------------------------------------------------------------
# finite differences of gradients() and the recorded deltas
# ---------------------------------------------------------------------------------------------
INPUT_SHAPE = (2, 6, 5)
BATCH = 2
CLASSES = 4
# FD step: a coarser 2e-3 (vs the 1e-3 default) halves the rounding error of an O(1) loss,
# which here is the limit (truncation is O(h⁴)).  The stencil reaches 2h = 4e-3·max(1, |θ|):
# a perturbed weight (inputs in [−1, 1]) moves every relu input or window entry by ≤ 4e-3,
# a perturbed activation moves itself by ≤ 4e-3·max(1, |a|).  MARGIN·max(1, |v|) keeps a
# factor ≥ 1.25 between that reach and the nearest kink.
STEP = 2e-3
MARGIN = 1e-2


def make_net(act: str, pool: str, seed: int) -> tuple[Sequential, np.ndarray]:
    """The network in float64 with random parameters, and a batch of inputs in [−1, 1].

    Scales keep the logits O(1), so the softmax does not saturate: a saturated softmax makes
    whole rows of gradients ~1e-9, below what any float64 finite difference of an O(1) loss
    can resolve to a relative 1e-7.
    """
    rng = np.random.default_rng(seed)
    layers = [
        # a positive bias keeps most relu units alive, so max-pool windows are rarely all-zero
        Conv2D(3, (3, 2), padding=1, init={"b": Explicit(np.full(3, 0.8))}, name="conv"),
        (ReLU if act == "relu" else Tanh)(name="act"),
        Pool(2, stride=1, mode=pool, p=2.0 if pool == "lp" else None, name="pool"),
        Subsample(2, name="sub"),
        Flatten(name="flat"),
        Dense(CLASSES, name="dense"),
    ]
    net = Sequential(layers, INPUT_SHAPE).build(rng, np.float64)
    net.layer("sub").params["beta"][...] = rng.uniform(0.2, 0.4, size=3)
    net.layer("sub").params["b"][...] = 0.3 * rng.standard_normal(3)
    net.layer("dense").params["b"][...] = 0.5 * rng.standard_normal(CLASSES)
    return net, rng.uniform(-1.0, 1.0, size=(BATCH, *INPUT_SHAPE))


def far_from_kinks(net: Sequential, x: np.ndarray, act: str, pool: str) -> bool:
    """True if no relu input is within MARGIN of 0 and every max-pool window's top two differ by MARGIN.

    Inputs are in [−1, 1], so one perturbed weight or activation moves a relu input or a
    window entry by less than MARGIN / 2.
    """
    z = net.layer("conv").forward(x)
    a = net.layer("act").forward(z)
    if act == "relu" and (np.abs(z) < MARGIN * np.maximum(1.0, np.abs(z))).any():
        return False
    if pool == "max":
        win = np.sort(sliding_window_view(a, (2, 2), axis=(2, 3)).reshape(*a.shape[:2], -1, 4), axis=-1)
        if (win[..., -1] - win[..., -2] < MARGIN * np.maximum(1.0, win[..., -1])).any():
            return False
    return True


def first_safe_seed(act: str, pool: str) -> int:
    """The first seed whose network and inputs keep every FD perturbation off a kink."""
    for seed in range(5000):
        net, x = make_net(act, pool, seed)
        if far_from_kinks(net, x, act, pool):
            return seed
    raise AssertionError("no kink-free seed found")


def fd_targets(loss_name: str, rng: np.random.Generator) -> np.ndarray:
    """Real-valued targets for MSE, class indices for softmax cross-entropy."""
    if loss_name == "mse":
        return rng.standard_normal((BATCH, CLASSES))
    return rng.integers(0, CLASSES, size=BATCH)


@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy"])
@pytest.mark.parametrize("pool", ["max", "mean", "lp"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_network_gradients_and_deltas(act: str, pool: str, loss_name: str) -> None:
    """gradients() = FD of the batch-mean loss; recorded deltas = FD of each sample's own loss."""
    seed = first_safe_seed(act, pool)
    net, x = make_net(act, pool, seed)
    target = fd_targets(loss_name, np.random.default_rng(seed + 1000))
    loss = LOSSES[loss_name]()

    recorded: dict[str, np.ndarray] = {}
    mean_loss = net.gradients(x, target, loss, record=lambda name, d: recorded.__setitem__(name, d.copy()))
    grads = {lname: {k: g.copy() for k, g in group.items()} for lname, group in net.grads().items()}
    assert set(recorded) == {layer.name for layer in net.layers}
    per_sample = loss.forward(net.forward(x), target)
    assert mean_loss == pytest.approx(float(per_sample.mean()), rel=1e-14)

    # parameters: FD of the batch-mean loss
    def mean_of_losses() -> np.ndarray:
        return loss.forward(net.forward(x), target)

    weights = np.full(BATCH, 1.0 / BATCH)
    assert set(grads) == {"conv", "sub", "dense"}
    for lname, group in net.parameters().items():
        for key, theta in group.items():
            numeric = fd_gradient(mean_of_losses, theta, weights, rel_step=STEP)
            assert_fd_close("network:params", grads[lname][key], numeric)

    # deltas: FD of L_x w.r.t. layer l's output, perturbed between layers l and l+1
    for idx, layer in enumerate(net.layers):
        a = x
        for before in net.layers[: idx + 1]:
            a = before.forward(a)
        assert recorded[layer.name].shape == a.shape
        for s in range(BATCH):
            a_s = np.ascontiguousarray(a[s : s + 1])
            t_s = target[s : s + 1]

            def own_loss(a_s: np.ndarray = a_s, t_s: np.ndarray = t_s, idx: int = idx) -> float:
                out = a_s
                for after in net.layers[idx + 1 :]:
                    out = after.forward(out)
                return float(loss.forward(out, t_s)[0])

            numeric = fd_gradient(own_loss, a_s, rel_step=STEP)
            assert_fd_close("network:deltas", recorded[layer.name][s], numeric[0])


def test_param_gradients_are_batch_means_and_deltas_are_not(rng: np.random.Generator) -> None:
    """Duplicating a batch leaves gradients() and each sample's recorded delta unchanged."""
    net, x = make_net("tanh", "mean", 3)
    target = fd_targets("mse", rng)
    loss = LOSSES["mse"]()
    rec1: dict[str, np.ndarray] = {}
    net.gradients(x, target, loss, record=lambda n, d: rec1.__setitem__(n, d.copy()))
    g1 = {ln: {k: v.copy() for k, v in grp.items()} for ln, grp in net.grads().items()}
    rec2: dict[str, np.ndarray] = {}
    net.gradients(np.concatenate([x, x]), np.concatenate([target, target]), loss,
                  record=lambda n, d: rec2.__setitem__(n, d.copy()))
    for ln, grp in net.grads().items():
        for k, v in grp.items():
            np.testing.assert_allclose(v, g1[ln][k], rtol=1e-12, atol=1e-15)
    for name, d in rec1.items():
        np.testing.assert_allclose(rec2[name][:BATCH], d, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(rec2[name][BATCH:], d, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# float32 end to end (no float64 anywhere)
# ---------------------------------------------------------------------------------------------
def float32_target(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Index (int64), one-hot (float64) or soft (float64) targets for a batch of 4, 5 classes."""
    idx = rng.integers(0, 5, size=4)
    if kind == "index":
        return idx
    if kind == "onehot":
        return np.eye(5)[idx]
    w = rng.uniform(0.1, 1.0, size=(4, 5))
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("target_kind", ["index", "onehot", "soft"])
@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy"])
def test_float32_network_stays_float32(loss_name: str, target_kind: str) -> None:
    """Outputs, per-layer activations, losses, deltas, grads, params and optimiser state are float32."""
    rng = np.random.default_rng(0)
    net = every_layer_net()
    x = rng.standard_normal((4, 2, 14, 15)).astype(np.float32)
    target = float32_target(target_kind, rng)
    loss = LOSSES[loss_name]()

    for group in net.parameters().values():
        for v in group.values():
            assert v.dtype == F32
    a = x
    for layer in net.layers:
        a = layer.forward(a)
        assert a.dtype == F32, f"{layer.name} forward gave {a.dtype}"
    assert loss.forward(a, target).dtype == F32
    assert loss.backward().dtype == F32

    recorded: dict[str, np.ndarray] = {}
    value = net.gradients(x, target, loss, record=lambda n, d: recorded.__setitem__(n, d))
    assert np.isfinite(value)
    assert set(recorded) == {layer.name for layer in net.layers}
    for name, d in recorded.items():
        assert d.dtype == F32, f"delta at {name} is {d.dtype}"
    assert net.backward(loss.backward()).dtype == F32  # ∂L/∂input
    assert set(net.grads()) == {"c1", "c2", "sub", "fc"}

    opt = SGD(lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        net.gradients(x, target, loss)
        for lname, group in net.grads().items():
            for k, g in group.items():
                assert g.dtype == F32, f"grad {lname}.{k} is {g.dtype}"
        opt.step(net.parameters(), net.grads())
        for lname, group in net.parameters().items():
            for k, v in group.items():
                assert v.dtype == F32, f"param {lname}.{k} is {v.dtype} after a step"
        # the velocity buffer: opt.state["velocity"][layer][param], one per parameter
        velocity = opt.state["velocity"]
        assert {ln: set(g) for ln, g in velocity.items()} == {ln: set(g) for ln, g in net.grads().items()}
        for lname, group in velocity.items():
            for k, v in group.items():
                assert v.dtype == F32, f"momentum {lname}.{k} is {v.dtype}"
    assert net.forward(x).dtype == F32


def test_plain_sgd_keeps_float32() -> None:
    """Without momentum or weight decay the step stays float32 too."""
    net = every_layer_net()
    x = np.random.default_rng(1).standard_normal((2, 2, 14, 15)).astype(np.float32)
    net.gradients(x, np.array([0, 3]), LOSSES["softmax_cross_entropy"]())
    SGD(lr=0.05).step(net.parameters(), net.grads())
    assert all(v.dtype == F32 for g in net.parameters().values() for v in g.values())


# ---------------------------------------------------------------------------------------------
# memory: recorded deltas are kept, input_grad=False changes nothing else
# ---------------------------------------------------------------------------------------------
def small_net(seed: int) -> Sequential:
    """conv(pad) → relu → max → conv → sigmoid → subsample → flatten → dense, float64."""
    layers = [
        Conv2D(3, 3, padding=1, name="c1"),
        ReLU(name="r"),
        MaxPool(2, name="mp"),
        Conv2D(2, 2, bias="untied", name="c2"),
        Sigmoid(name="s"),
        Subsample(2, name="sub"),
        Flatten(name="f"),
        Dense(3, name="fc"),
    ]
    return Sequential(layers, (2, 10, 9)).build(np.random.default_rng(seed), np.float64)


def test_recorded_deltas_are_kept_across_calls() -> None:
    """Arrays handed to ``record`` (kept without copying) are not overwritten by later passes."""
    rng = np.random.default_rng(2)
    net = small_net(0)
    loss = LOSSES["softmax_cross_entropy"]()
    x1, x2 = rng.standard_normal((4, 2, 10, 9)), rng.standard_normal((4, 2, 10, 9))
    t1, t2 = rng.integers(0, 3, 4), rng.integers(0, 3, 4)
    kept: dict[str, np.ndarray] = {}
    net.gradients(x1, t1, loss, record=kept.__setitem__)
    copies = {k: v.copy() for k, v in kept.items()}
    net.gradients(x2, t2, loss, record=lambda n, d: None)
    for name, d in kept.items():
        np.testing.assert_array_equal(d, copies[name], err_msg=f"delta at {name} was overwritten")


def test_input_grad_false_gives_the_same_gradients() -> None:
    """``gradients(..., input_grad=False)`` gives the same loss, grads and recorded deltas."""
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((4, 2, 10, 9)), rng.standard_normal((4, 3))
    results = []
    for input_grad in (True, False):
        net = small_net(5)
        rec: dict[str, np.ndarray] = {}

        def keep(name: str, d: np.ndarray, rec: dict[str, np.ndarray] = rec) -> None:
            rec[name] = d.copy()

        value = net.gradients(x, t, LOSSES["mse"](), record=keep, input_grad=input_grad)
        grads = {ln: {k: v.copy() for k, v in g.items()} for ln, g in net.grads().items()}
        results.append((value, grads, rec))
    (v1, g1, r1), (v2, g2, r2) = results
    assert v1 == v2
    for ln, grp in g1.items():
        for k, v in grp.items():
            np.testing.assert_array_equal(g2[ln][k], v)
    for name, d in r1.items():
        np.testing.assert_array_equal(r2[name], d)


# ---------------------------------------------------------------------------------------------
# shapes and order of calls
# ---------------------------------------------------------------------------------------------
class Crop(Layer):
    """A test layer that removes ``k`` rows (to exercise Sequential's own empty-output guard)."""

    kind = "crop"

    def __init__(self, k: int, name: str) -> None:
        super().__init__(name)
        self.k = k

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = input_shape
        return (c, h - self.k, w)


def test_summary_rejects_a_layer_that_leaves_no_output() -> None:
    """A layer whose output has a zero-sized dimension is named by summary()."""
    assert_names(summary_error([Crop(4, name="crop")], (1, 4, 3)), "crop")


def test_non_positive_input_shape() -> None:
    """An input shape with a zero dimension is rejected."""
    with pytest.raises(ShapeError):
        Sequential([Flatten()], (1, 0, 3)).summary()


def test_layer_names_must_be_unique() -> None:
    """Two layers of one name are rejected when the network is made, naming it."""
    with pytest.raises(ShapeError) as err:
        Sequential([Dense(3, name="fc"), Dense(2, name="fc")], (4,))
    assert_names(err.value, "fc")
    assert err.value.detail == "layer names must be unique"


def test_summary_and_layer_lookup() -> None:
    """summary() gives each layer's kind, shapes and parameter shapes; layer() finds it by name."""
    net = Sequential([Conv2D(2, (2, 3), name="c"), Flatten(name="f"), Dense(3, name="d")], (1, 4, 5))
    rows = net.summary()
    assert [(r.name, r.kind, r.input_shape, r.output_shape) for r in rows] == [
        ("c", "conv", (1, 4, 5), (2, 3, 3)),
        ("f", "flatten", (2, 3, 3), (18,)),
        ("d", "dense", (18,), (3,)),
    ]
    assert rows[0].param_shapes == {"W": (2, 1, 2, 3), "b": (2,)} and rows[0].n_params == 14
    assert net.n_params == 14 + 18 * 3 + 3 and net.output_shape == (3,)
    assert net.layer("f") is net.layers[1]
    with pytest.raises(KeyError, match="no layer 'x'; layers: c, f, d"):
        net.layer("x")


def test_forward_with_wrong_input_shape_names_both_shapes() -> None:
    """forward() on samples of the wrong shape names the expected and the given shape."""
    net = Sequential([Conv2D(2, 3, name="c"), Flatten(name="f")], (1, 6, 7)).build(
        np.random.default_rng(0), np.float64
    )
    with pytest.raises(ShapeError) as err:
        net.forward(np.zeros((2, 1, 7, 6)))
    msg = str(err.value)
    assert re.search(shape_pattern((1, 6, 7)), msg), msg
    assert re.search(shape_pattern((1, 7, 6)), msg), msg


def test_network_backward_before_forward() -> None:
    """Sequential.backward before forward raises RuntimeError."""
    net = Sequential([Conv2D(2, 2, name="c"), Flatten(name="f"), Dense(3, name="d")], (1, 4, 4)).build(
        np.random.default_rng(0), np.float64
    )
    with pytest.raises(RuntimeError):
        net.backward(np.ones((2, 3)))


# ---------------------------------------------------------------------------------------------
# set_parameters: the one weight copier
# ---------------------------------------------------------------------------------------------
def two_layer_net(dtype: type = np.float32) -> Sequential:
    """conv ``c`` → flatten → dense ``d`` on 1×4×4, built from seed 0."""
    net = Sequential([Conv2D(2, 2, name="c"), Flatten(name="f"), Dense(3, name="d")], (1, 4, 4))
    return net.build(np.random.default_rng(0), dtype)


def given_params(seed: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """float64 values for every parameter of ``two_layer_net``."""
    rng = np.random.default_rng(seed)
    shapes = {"c": {"W": (2, 1, 2, 2), "b": (2,)}, "d": {"W": (3, 18), "b": (3,)}}
    return {ln: {k: rng.standard_normal(s) for k, s in group.items()} for ln, group in shapes.items()}


def test_set_parameters_copies_into_the_live_arrays_cast_to_the_network_dtype() -> None:
    """Values land in the existing parameter arrays (same objects), cast to float32, not aliased."""
    net = two_layer_net()
    live = {ln: dict(group) for ln, group in net.parameters().items()}
    params = given_params()
    net.set_parameters(params)
    for ln, group in params.items():
        for k, v in group.items():
            got = net.layer(ln).params[k]
            assert got is live[ln][k] and got.dtype == F32
            np.testing.assert_array_equal(got, v.astype(np.float32))
    params["d"]["b"][...] = 99.0
    assert not (net.layer("d").params["b"] == 99.0).any()


def test_set_parameters_round_trips_another_network() -> None:
    """Copying one network's parameters into another makes their outputs bit-identical."""
    a, b = two_layer_net(np.float64), two_layer_net(np.float64)
    b.build(np.random.default_rng(7), np.float64)
    b.set_parameters(a.parameters(), same_dtype=True)
    x = np.random.default_rng(2).standard_normal((3, 1, 4, 4))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_set_parameters_needs_a_built_network() -> None:
    """Before build() there is nothing to copy into."""
    net = Sequential([Dense(3, name="d")], (4,))
    message = "network is not built (d has no parameters); call build() first"
    with pytest.raises(ValueError, match=re.escape(message)):
        net.set_parameters({"d": {"W": np.zeros((3, 4)), "b": np.zeros(3)}})


def _drop(params: dict, ln: str, key: str | None = None) -> dict:
    if key is None:
        del params[ln]
    else:
        del params[ln][key]
    return params


def _put(params: dict, ln: str, key: str, value: object) -> dict:
    params.setdefault(ln, {})[key] = value
    return params


@pytest.mark.parametrize(
    ("change", "same_dtype", "message"),
    [
        (lambda p: _drop(p, "d"), False, "has no parameters for layer d (it has: c)"),
        (lambda p: _drop(p, "c", "b"), False, "layer c has no parameter b (it has: W)"),
        (lambda p: _put(p, "c", "gamma", np.zeros(2)), False,
         "layer c parameter gamma is not in the model (it expects W, b)"),
        (lambda p: _put(p, "f", "W", np.zeros(2)), False,
         "layer f is not a parametric layer of the model (those are: c, d)"),
        (lambda p: _put(p, "d", "W", np.zeros((18, 3))), False,
         "layer d parameter W has shape 18×3, the model expects 3×18"),
        (lambda p: _put(p, "d", "b", np.array(["a", "b", "c"])), False,
         "layer d parameter b is not a real numeric array (<U1)"),
        (lambda p: p, True, "layer c parameter W is float64, the model is float32"),
    ],
    ids=["missing-layer", "missing-param", "extra-param", "extra-layer", "shape", "dtype-kind", "same-dtype"],
)
def test_set_parameters_rejects_what_does_not_fit_and_copies_nothing(
    change, same_dtype: bool, message: str
) -> None:
    """A ParameterError naming the layer and parameter; the network keeps all its values (all or nothing)."""
    net = two_layer_net()
    before = {ln: {k: v.copy() for k, v in g.items()} for ln, g in net.parameters().items()}
    with pytest.raises(ParameterError) as err:
        net.set_parameters(change(given_params()), same_dtype=same_dtype)
    assert str(err.value) == message
    for ln, group in before.items():
        for k, v in group.items():
            np.testing.assert_array_equal(net.layer(ln).params[k], v)
