"""Conv2D (``core/layers/conv.py``): finite differences and the loop reference on non-square shapes,
strides and paddings, tied and untied biases; shape and hyper-parameter errors; the memory contract."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.init import GlorotUniform, Zeros
from cnnbp.core.layers import Conv2D, Layer, MaxPool
from cnnbp.core.network import Sequential
from tests.core import conftest as shared
from tests.core import reference as ref
from tests.fd import check_layer


@pytest.mark.parametrize("case", shared.CONV_CASES, ids=shared.conv_id)
def test_backward_matches_finite_differences(case: tuple, rng: np.random.Generator) -> None:
    """Conv2D: ∂L/∂X, ∂L/∂W and tied/untied ∂L/∂b match finite differences."""
    c, h, w, f, k, s, p, bias, n = case
    layer = shared.build(Conv2D(f, k, stride=s, padding=p, bias=bias), (c, h, w), rng)
    check_layer("conv", layer, rng.standard_normal((n, c, h, w)), rng)


def assert_matches_loop_reference(case: tuple, rng: np.random.Generator) -> None:
    """The layer's forward and backward against the loop reference written from the seeds."""
    c, h, w, f, k, s, p, bias, n = case
    layer = shared.build(Conv2D(f, k, stride=s, padding=p, bias=bias), (c, h, w), rng)
    assert isinstance(layer, Conv2D)
    x = rng.standard_normal((n, c, h, w))
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    W, b = layer.params["W"], layer.params["b"]

    def backward(xi: np.ndarray, di: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rdx, rdW, rdb = ref.conv_backward(xi, W, di, layer.stride, layer.padding, bias == "tied")
        return rdx, {"W": rdW, "b": rdb}

    def forward(xi: np.ndarray) -> np.ndarray:
        return ref.conv_forward(xi, W, b, layer.stride, layer.padding)

    shared.assert_matches_reference(layer, x, d, forward, backward)


@pytest.mark.parametrize("case", shared.CONV_CASES, ids=shared.conv_id)
def test_matches_reference(case: tuple, rng: np.random.Generator) -> None:
    """Conv forward, ∂L/∂X (full conv of dilated δ with rot180 F, cropped), ∂L/∂F, ∂L/∂b."""
    assert_matches_loop_reference(case, rng)


def test_kernel_larger_than_input() -> None:
    """A 4×2 kernel on a 3×5 map (no padding) is rejected, naming the conv."""
    err = shared.summary_error([Conv2D(2, (4, 2), name="convA")], (1, 3, 5))
    shared.assert_names(err, "convA")


def test_kernel_fits_only_thanks_to_padding() -> None:
    """The same kernel with padding 1 fits: (3 + 2 − 4) + 1 = 2 rows."""
    rows = Sequential([Conv2D(2, (4, 2), padding=1, name="convA")], (1, 3, 5)).summary()
    assert rows[0].output_shape == (2, 2, 6)


def test_kernel_larger_than_an_intermediate_map() -> None:
    """The error names the layer whose input is too small, not the first layer."""
    layers = [Conv2D(2, 3, name="c1"), MaxPool(2, name="p1"), Conv2D(2, 3, name="c2")]
    err = shared.summary_error(layers, (1, 6, 6))
    shared.assert_names(err, "c2")


SIZE = "expected an integer ≥ 1 or a pair [h, w] of them"
PADDING = "expected an integer ≥ 0 or a pair [h, w] of them"


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: Conv2D(2, 2, stride=0, name="bad"), f"{SIZE}, got 0"),
        (lambda: Conv2D(2, 2, stride=(1, -1), name="bad"), f"{SIZE}, got (1, -1)"),
    ],
    ids=["conv-0", "conv-neg"],
)
def test_stride_that_can_produce_no_output(make, detail: str) -> None:
    """A stride < 1 would leave no output: rejected when the layer is made, naming it and ``stride``."""
    shared.assert_hyper_error(make, "bad", "stride", detail)


@pytest.mark.parametrize(
    ("make", "key", "detail"),
    [
        (lambda: Conv2D(0, 2), "filters", "expected an integer ≥ 1, got 0"),
        (lambda: Conv2D(True, 2), "filters", "expected an integer ≥ 1, got True"),
        (lambda: Conv2D(2.0, 2), "filters", "expected an integer ≥ 1, got 2.0"),
        (lambda: Conv2D(2, "3"), "kernel", f"{SIZE}, got '3'"),
        (lambda: Conv2D(2, (2, 0)), "kernel", f"{SIZE}, got (2, 0)"),
        (lambda: Conv2D(2, (2, 3, 4)), "kernel", f"{SIZE}, got (2, 3, 4)"),
        (lambda: Conv2D(2, 2, padding=-1), "padding", f"{PADDING}, got -1"),
        (lambda: Conv2D(2, 2, bias="shared"), "bias", "expected one of tied, untied, got 'shared'"),
    ],
    ids=["filters-0", "filters-bool", "filters-float", "kernel-str", "kernel-0", "kernel-3", "pad", "bias"],
)
def test_rejects_bad_hyper_parameters(make, key: str, detail: str) -> None:
    """Each argument is checked against its annotation when the layer is made (``conv`` by default)."""
    shared.assert_hyper_error(make, "conv", key, detail)


def test_hyper_parameters_are_kept_as_pairs_and_give_the_window() -> None:
    """Ints become (h, w) pairs; a tied conv is a window (kernel, stride, padding), an untied one is not."""
    layer = Conv2D(4, (3, 2), stride=2, padding=(1, 0))
    hyper = (layer.filters, layer.kernel, layer.stride, layer.padding, layer.bias)
    assert hyper == (4, (3, 2), (2, 2), (1, 0), "tied")
    assert layer.window() == ((3, 2), (2, 2), (1, 0))
    assert Conv2D(4, 3, bias="untied").window() is None
    assert (Conv2D.kind, Conv2D.param_names, Conv2D.elementwise) == ("conv", ("W", "b"), False)
    assert Conv2D.analytic and Conv2D.init_before is None
    inits = layer.default_init()
    assert isinstance(inits["W"], GlorotUniform) and isinstance(inits["b"], Zeros)
    assert list(layer.param_shapes((2, 6, 5))) == list(Conv2D.param_names)
    assert layer.param_shapes((2, 6, 5)) == {"W": (4, 2, 3, 2), "b": (4,)}
    assert Conv2D(4, 3, bias="untied").param_shapes((2, 6, 5)) == {"W": (4, 2, 3, 3), "b": (4, 4, 3)}
    assert layer.fans((2, 6, 5)) == (2 * 3 * 2, 4 * 3 * 2)


@pytest.mark.parametrize(
    "make",
    [lambda: Conv2D(3, (3, 2), stride=(2, 1), padding=(1, 2)), lambda: Conv2D(2, 2, bias="untied")],
    ids=["conv_pad", "conv_untied"],
)
def test_results_survive_later_calls_and_match_a_fresh_layer(make) -> None:
    """Returned arrays, x and dy are never overwritten; a used layer equals a fresh one."""
    shared.check_results_survive_later_calls(make, shared.IMAGE)


@pytest.mark.parametrize(
    "layer",
    [Conv2D(2, 2, name="conv"), Conv2D(2, 2, bias="untied", name="conv_untied")],
    ids=lambda l: l.name,
)
def test_backward_before_forward(layer: Layer) -> None:
    """backward() before any forward() raises RuntimeError."""
    shared.assert_backward_before_forward_raises(layer, (1, 4, 4))


# ---- every path of the convolution code (issue 14) ----------------------------------------------------
# conv.py runs stride 1 with several input channels over "wide rows" (a zero-padded copy of the input,
# junk columns cropped in forward and never reached in backward: the path of the default network's conv3)
# and everything else row by row ("strided"); ∂L/∂x is col2im over wide rows or strided windows, cropped by
# the padding; backward_params skips ∂L/∂x.  (in_channels, H, W, filters, kernel, stride, padding, bias, n)
PATH_CASES = [
    (16, 4, 4, 32, 3, 1, 1, "tied", 2),  # the default digits network's conv3: stride 1, 16 channels, pad 1
    (3, 6, 5, 4, 3, 1, 1, "tied", 2),  # wide rows, padded
    (2, 5, 7, 3, (2, 3), 1, (1, 2), "tied", 3),  # wide rows, asymmetric padding, non-square kernel
    (4, 4, 4, 2, 3, 1, 2, "untied", 2),  # wide rows, padding 2: the border outputs see padding only
    (2, 3, 5, 2, 1, 1, 1, "untied", 1),  # wide rows, 1×1 kernel on a padded border
    (3, 5, 6, 2, (3, 2), 1, 0, "untied", 2),  # wide rows, no padding, untied bias
    (1, 6, 6, 3, 3, 1, 1, "tied", 2),  # one channel: row by row, padded
    (3, 7, 6, 2, 3, (1, 2), 1, "tied", 2),  # several channels but stride (1, 2): row by row
]


def path_id(case: tuple) -> str:
    c, h, w, f, k, s, p, bias, n = case
    return f"c{c}_{h}x{w}_f{f}_k{k}_s{s}_p{p}_{bias}_n{n}".replace(" ", "")


@pytest.mark.parametrize("case", PATH_CASES, ids=path_id)
def test_every_conv_path_matches_finite_differences(case: tuple, rng: np.random.Generator) -> None:
    """∂L/∂X, ∂L/∂W and ∂L/∂b on each path, the padding crop of the stride-1 multi-channel one included."""
    c, h, w, f, k, s, p, bias, n = case
    layer = shared.build(Conv2D(f, k, stride=s, padding=p, bias=bias), (c, h, w), rng)
    check_layer("conv_paths", layer, rng.standard_normal((n, c, h, w)), rng)


@pytest.mark.parametrize("case", PATH_CASES, ids=path_id)
def test_every_conv_path_matches_the_loop_reference(case: tuple, rng: np.random.Generator) -> None:
    assert_matches_loop_reference(case, rng)


@pytest.mark.parametrize("case", PATH_CASES, ids=path_id)
def test_backward_params_gives_the_gradients_backward_gives(case: tuple, rng: np.random.Generator) -> None:
    """The first layer in training skips ∂L/∂x (``backward_params``): the same ∂L/∂W and ∂L/∂b, bit for
    bit."""
    c, h, w, f, k, s, p, bias, n = case
    layer = shared.build(Conv2D(f, k, stride=s, padding=p, bias=bias), (c, h, w), rng)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    layer.forward(x)
    layer.backward(dy)
    full = {key: g.copy() for key, g in layer.grads.items()}
    layer.forward(x)
    layer.backward_params(dy)
    for key, g in full.items():
        np.testing.assert_array_equal(layer.grads[key], g)
