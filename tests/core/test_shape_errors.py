"""Impossible networks and inputs raise ShapeError naming the layer; backward before forward fails."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cnnbp.core import LOSSES, Sequential, ShapeError
from cnnbp.core.layers import (
    Conv2D,
    Dense,
    Flatten,
    Identity,
    Layer,
    LpPool,
    MaxPool,
    MeanPool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)


def shape_pattern(shape: tuple[int, ...]) -> str:
    """A regex for a shape written as ``1×6×6``, ``1x6x6`` or ``(1, 6, 6)``."""
    dims = [str(s) for s in shape]
    return "|".join([re.escape("×".join(dims)), re.escape("x".join(dims)), re.escape(str(tuple(shape)))])


def summary_error(layers: list[Layer], input_shape: tuple[int, ...]) -> ShapeError:
    """The ShapeError that ``summary()`` raises (failing the test if it does not)."""
    with pytest.raises(ShapeError) as err:
        Sequential(layers, input_shape).summary()
    return err.value


def assert_names(err: ShapeError, layer: str) -> None:
    """The error's ``layer`` attribute and its message both name ``layer``."""
    assert err.layer == layer
    assert layer in str(err)


def test_kernel_larger_than_input() -> None:
    """A 4×2 kernel on a 3×5 map (no padding) is rejected, naming the conv."""
    err = summary_error([Conv2D(2, (4, 2), name="convA")], (1, 3, 5))
    assert_names(err, "convA")


def test_kernel_fits_only_thanks_to_padding() -> None:
    """The same kernel with padding 1 fits: (3 + 2 − 4) + 1 = 2 rows."""
    rows = Sequential([Conv2D(2, (4, 2), padding=1, name="convA")], (1, 3, 5)).summary()
    assert rows[0].output_shape == (2, 2, 6)


def test_kernel_larger_than_an_intermediate_map() -> None:
    """The error names the layer whose input is too small, not the first layer."""
    err = summary_error([Conv2D(2, 3, name="c1"), MaxPool(2, name="p1"), Conv2D(2, 3, name="c2")], (1, 6, 6))
    assert_names(err, "c2")


def test_dense_fed_an_image() -> None:
    """Dense on a C×H×W tensor (no flatten) is rejected, naming the dense layer."""
    err = summary_error([Conv2D(2, 3, name="conv"), Dense(4, name="fc")], (1, 6, 6))
    assert_names(err, "fc")
    assert re.search(shape_pattern((2, 4, 4)), str(err))


@pytest.mark.parametrize("pool", [MaxPool, MeanPool, LpPool])
def test_pool_window_larger_than_input(pool: type) -> None:
    """A 3×3 window on a 4×2 map is rejected, naming the pool."""
    assert_names(summary_error([pool(3, name="pl")], (1, 4, 2)), "pl")


def test_subsample_scale_larger_than_input() -> None:
    """A subsample scale larger than the map is rejected, naming it."""
    assert_names(summary_error([Subsample(3, name="sub")], (2, 5, 2)), "sub")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv2D(2, 2, stride=0, name="bad"),
        lambda: Conv2D(2, 2, stride=(1, -1), name="bad"),
        lambda: MaxPool(2, stride=0, name="bad"),
        lambda: MeanPool(2, stride=(0, 1), name="bad"),
        lambda: LpPool(2, stride=-2, name="bad"),
        lambda: Subsample(0, name="bad"),
    ],
    ids=["conv-0", "conv-neg", "max-0", "mean-0", "lp-neg", "subsample-0"],
)
def test_stride_that_can_produce_no_output(make) -> None:
    """A stride (or scale) < 1 would leave no output: rejected when the layer is made, naming it."""
    with pytest.raises(ShapeError) as err:
        make()
    assert_names(err.value, "bad")


def test_stride_larger_than_the_map_leaves_one_window_then_the_next_layer_fails() -> None:
    """A stride past the edge keeps one window (floor); a later kernel that no longer fits is named."""
    rows = Sequential([MaxPool(2, stride=5, name="p")], (1, 4, 4)).summary()
    assert rows[0].output_shape == (1, 1, 1)
    err = summary_error([MaxPool(2, stride=5, name="p"), Conv2D(1, 2, name="after")], (1, 4, 4))
    assert_names(err, "after")


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


def every_layer() -> list[tuple[Layer, tuple[int, ...]]]:
    """One built instance of every layer type with its input shape."""
    items: list[tuple[Layer, tuple[int, ...]]] = [
        (Conv2D(2, 2, name="conv"), (1, 4, 4)),
        (Conv2D(2, 2, bias="untied", name="conv_untied"), (1, 4, 4)),
        (MaxPool(2, name="max"), (1, 4, 4)),
        (MeanPool(2, name="mean"), (1, 4, 4)),
        (MeanPool(2, stride=1, name="mean_overlap"), (1, 4, 4)),
        (LpPool(2, name="lp"), (1, 4, 4)),
        (Subsample(2, name="sub"), (1, 4, 4)),
        (Flatten(name="flat"), (1, 4, 4)),
        (Dense(3, name="dense"), (5,)),
        (Sigmoid(name="sigmoid"), (5,)),
        (Tanh(name="tanh"), (5,)),
        (ReLU(name="relu"), (5,)),
        (Identity(name="identity"), (5,)),
    ]
    for layer, shape in items:
        layer.build(shape, np.random.default_rng(0), np.float64)
    return items


@pytest.mark.parametrize("index", range(13), ids=[layer.name for layer, _ in every_layer()])
def test_layer_backward_before_forward(index: int) -> None:
    """Every layer type raises RuntimeError from backward() before any forward()."""
    layer, shape = every_layer()[index]
    out_shape = layer.output_shape(shape)
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((2, *out_shape)))


def test_network_backward_before_forward() -> None:
    """Sequential.backward before forward raises RuntimeError."""
    net = Sequential([Conv2D(2, 2, name="c"), Flatten(name="f"), Dense(3, name="d")], (1, 4, 4)).build(
        np.random.default_rng(0), np.float64
    )
    with pytest.raises(RuntimeError):
        net.backward(np.ones((2, 3)))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_backward_before_forward(name: str) -> None:
    """A loss's backward() before forward() raises RuntimeError too (not an AttributeError)."""
    with pytest.raises(RuntimeError):
        LOSSES[name]().backward()
