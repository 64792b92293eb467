"""Pooling (``core/layers/pool.py``): ``Pool(size, stride=None, mode, p)`` and its max, mean and Lp
layers — finite differences and the loop reference over overlapping, gapped and floor-cut windows,
ties, shape and hyper-parameter errors, the memory contract."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.errors import ShapeError
from cnnbp.core.layers import Conv2D, Layer, LpPool, MaxPool, MeanPool, Pool
from cnnbp.core.network import Sequential
from tests.core import conftest as shared
from tests.core import reference as ref
from tests.fd import check_layer


# ---- finite differences ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", shared.POOL_CASES, ids=shared.pool_id)
def test_max_pool(case: tuple, rng: np.random.Generator) -> None:
    """MaxPool: ∂L/∂X matches finite differences on tie-free inputs."""
    c, h, w, k, s, n = case
    layer = shared.build(Pool(k, s, mode="max"), (c, h, w), rng)
    assert isinstance(layer, MaxPool)
    check_layer("pool:max", layer, shared.distinct_grid((n, c, h, w), rng), rng)


@pytest.mark.parametrize("case", shared.POOL_CASES, ids=shared.pool_id)
def test_mean_pool(case: tuple, rng: np.random.Generator) -> None:
    """MeanPool: ∂L/∂X matches finite differences."""
    c, h, w, k, s, n = case
    layer = shared.build(Pool(k, s, mode="mean"), (c, h, w), rng)
    assert isinstance(layer, MeanPool)
    check_layer("pool:mean", layer, rng.standard_normal((n, c, h, w)), rng)


@pytest.mark.parametrize("p", shared.LP_POWERS)
@pytest.mark.parametrize("case", shared.POOL_CASES, ids=shared.pool_id)
def test_lp_pool(case: tuple, p: float, rng: np.random.Generator) -> None:
    """LpPool: ∂L/∂X matches finite differences for p = 1, 2, 3, 2.5 (inputs away from 0)."""
    c, h, w, k, s, n = case
    layer = shared.build(Pool(k, s, mode="lp", p=p), (c, h, w), rng)
    assert isinstance(layer, LpPool) and layer.p == p
    check_layer(f"pool:lp p={p:g}", layer, shared.away_from_zero((n, c, h, w), rng), rng)


# ---- the loop reference ----------------------------------------------------------------------------------
POOL_MODES = [("max", 2.0), ("mean", 2.0)] + [("lp", p) for p in shared.LP_POWERS]


def check_reference(layer: Pool, x: np.ndarray, d: np.ndarray, mode: str, p: float = 2.0) -> None:
    """Forward and ∂L/∂X of ``layer`` against ``reference.pool_forward`` / ``pool_backward``."""
    size, stride = layer.size, layer.stride
    shared.assert_matches_reference(
        layer,
        x,
        d,
        lambda xi: ref.pool_forward(xi, mode, size, stride, p),
        lambda xi, di: (ref.pool_backward(xi, di, mode, size, stride, p), {}),
    )


@pytest.mark.parametrize(("mode", "p"), POOL_MODES, ids=lambda v: str(v))
@pytest.mark.parametrize("case", shared.POOL_CASES, ids=shared.pool_id)
def test_pool_matches_reference(case: tuple, mode: str, p: float, rng: np.random.Generator) -> None:
    """Max (first-maximum mask), mean (δ/k²) and Lp pools: forward and ∂L/∂X."""
    c, h, w, k, s, n = case
    layer = shared.build(Pool(k, s, mode=mode, p=p if mode == "lp" else None), (c, h, w), rng)
    assert layer.mode == mode
    x = shared.away_from_zero((n, c, h, w), rng) if mode == "lp" else rng.standard_normal((n, c, h, w))
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    check_reference(layer, x, d, mode, p)


@pytest.mark.parametrize("case", shared.POOL_CASES, ids=shared.pool_id)
def test_max_pool_ties_match_reference(case: tuple, rng: np.random.Generator) -> None:
    """With many ties (integer inputs), the gradient goes to the first maximum in row-major order."""
    c, h, w, k, s, n = case
    layer = shared.build(MaxPool(k, s), (c, h, w), rng)
    x = rng.integers(0, 3, size=(n, c, h, w)).astype(np.float64)
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    check_reference(layer, x, d, "max")


def test_max_pool_tie_goes_to_first_in_row_major_order() -> None:
    """An all-equal 2×3 window sends its whole gradient to its top-left entry."""
    layer = MaxPool((2, 3))
    layer.build((1, 2, 3), np.random.default_rng(0), np.float64)
    layer.forward(np.full((1, 1, 2, 3), 5.0))
    dx = layer.backward(np.array([[[[7.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[7.0, 0, 0], [0, 0, 0]])
    # a tie between the second and fifth entries (row-major) goes to the second
    layer.forward(np.array([[[[1.0, 9.0, 2.0], [3.0, 9.0, 4.0]]]]))
    np.testing.assert_array_equal(layer.backward(np.array([[[[7.0]]]]))[0, 0], [[0, 7.0, 0], [0, 0, 0]])


# ---- construction ----------------------------------------------------------------------------------------
def test_pool_makes_the_layer_of_its_mode() -> None:
    """``Pool(size, stride=None, mode, p)`` is a MaxPool, MeanPool or LpPool; stride defaults to size,
    p to 2 (Lp only); the mode classes take the same arguments and keep their own mode."""
    default = Pool(2)
    assert type(default) is MaxPool and default.mode == "max" and default.p is None
    assert (default.size, default.stride) == ((2, 2), (2, 2))
    mean = Pool((2, 3), 1, mode="mean")
    assert type(mean) is MeanPool and (mean.size, mean.stride) == ((2, 3), (1, 1))
    lp = Pool(3, 2, "lp", 3)  # all positional; an int p is a number
    assert type(lp) is LpPool and lp.p == 3.0 and isinstance(lp.p, float) and lp.stride == (2, 2)
    assert LpPool(2).p == 2.0 and LpPool(2).mode == "lp"
    assert type(MaxPool(2, stride=1)) is MaxPool and type(MeanPool(2, mode="mean")) is MeanPool
    assert type(MaxPool(2)).kind == Pool.kind == "pool"


def test_pool_hyper_and_window() -> None:
    """``hyper()`` reads the ``Pool`` signature: mode always, p for Lp only; the window has no padding."""
    assert MaxPool(2, stride=1).hyper() == {"size": [2, 2], "stride": [1, 1], "mode": "max"}
    lp = Pool((2, 3), mode="lp", p=2.5)
    assert lp.hyper() == {"size": [2, 3], "stride": [2, 3], "mode": "lp", "p": 2.5}
    assert MeanPool((3, 2), stride=(1, 2)).window() == ((3, 2), (1, 2), (0, 0))
    assert all(not cls.param_names and not cls.elementwise for cls in (Pool, MaxPool, MeanPool, LpPool))
    assert (MaxPool.analytic, MeanPool.analytic, LpPool.analytic) == (False, True, False)


SIZE = "expected an integer ≥ 1 or a pair [h, w] of them"


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: MaxPool(2, stride=0, name="bad"), f"{SIZE} (or null), got 0"),
        (lambda: MeanPool(2, stride=(0, 1), name="bad"), f"{SIZE} (or null), got (0, 1)"),
        (lambda: LpPool(2, stride=-2, name="bad"), f"{SIZE} (or null), got -2"),
    ],
    ids=["max-0", "mean-0", "lp-neg"],
)
def test_stride_that_can_produce_no_output(make, detail: str) -> None:
    """A stride < 1 would leave no output: rejected when the layer is made, naming it and ``stride``."""
    shared.assert_hyper_error(make, "bad", "stride", detail)


@pytest.mark.parametrize(
    ("make", "key", "detail"),
    [
        (lambda: Pool(0), "size", f"{SIZE}, got 0"),
        (lambda: Pool((2, 2.5)), "size", f"{SIZE}, got (2, 2.5)"),
        (lambda: Pool("max"), "size", f"{SIZE}, got 'max'"),
        (lambda: Pool(2, mode="median"), "mode", "expected one of max, mean, lp, got 'median'"),
        (lambda: LpPool(2, p=0.5), "p", "expected a number ≥ 1 (or null), got 0.5"),
        (lambda: LpPool(2, p=float("nan")), "p", "expected a number ≥ 1 (or null), got nan"),
        (lambda: LpPool(2, p=True), "p", "expected a number ≥ 1 (or null), got True"),
        (lambda: MaxPool(2, p=3.0), "p", "only used with mode 'lp', not 'max'; remove it"),
        (lambda: Pool(2, mode="mean", p=2.0), "p", "only used with mode 'lp', not 'mean'; remove it"),
    ],
    ids=["size-0", "size-float", "size-str", "mode", "p-small", "p-nan", "p-bool", "p-max", "p-mean"],
)
def test_rejects_bad_hyper_parameters(make, key: str, detail: str) -> None:
    """Each argument is checked against its annotation when the layer is made (``pool`` by default)."""
    shared.assert_hyper_error(make, "pool", key, detail)


def test_mode_class_rejects_another_mode() -> None:
    """A mode class given another mode raises ShapeError on ``mode`` (the wording is the engine's)."""
    with pytest.raises(ShapeError) as err:
        MaxPool(2, mode="mean", name="m")
    assert err.value.key == "mode" and err.value.layer == "m"


# ---- shapes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", [MaxPool, MeanPool, LpPool])
def test_pool_window_larger_than_input(pool: type) -> None:
    """A 3×3 window on a 4×2 map is rejected, naming the pool."""
    shared.assert_names(shared.summary_error([pool(3, name="pl")], (1, 4, 2)), "pl")


def test_stride_larger_than_the_map_leaves_one_window_then_the_next_layer_fails() -> None:
    """A stride past the edge keeps one window (floor); a later kernel that no longer fits is named."""
    rows = Sequential([MaxPool(2, stride=5, name="p")], (1, 4, 4)).summary()
    assert rows[0].output_shape == (1, 1, 1)
    err = shared.summary_error([MaxPool(2, stride=5, name="p"), Conv2D(1, 2, name="after")], (1, 4, 4))
    shared.assert_names(err, "after")


# ---- memory contract ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: MaxPool(3, stride=2),
        lambda: MaxPool(2),
        lambda: MeanPool((2, 3), stride=1),
        lambda: MeanPool(2),
        lambda: LpPool(2, stride=1, p=3.0),
    ],
    ids=["max_overlap", "max_tiles", "mean_overlap", "mean_tiles", "lp"],
)
def test_results_survive_later_calls_and_match_a_fresh_layer(make) -> None:
    """Returned arrays, x and dy are never overwritten; a used layer equals a fresh one."""
    shared.check_results_survive_later_calls(make, shared.IMAGE)


@pytest.mark.parametrize(
    "layer",
    [
        MaxPool(2, name="max"),
        MeanPool(2, name="mean"),
        MeanPool(2, stride=1, name="mean_overlap"),
        LpPool(2, name="lp"),
    ],
    ids=lambda l: l.name,
)
def test_backward_before_forward(layer: Layer) -> None:
    """backward() before any forward() raises RuntimeError."""
    shared.assert_backward_before_forward_raises(layer, (1, 4, 4))


def test_max_pool_tie_gives_each_tied_entry_one_of_its_one_sided_derivatives() -> None:
    """The tie rule asserted against one-sided difference quotients of the max (written here): raising the
    first of two tied entries makes it the maximum (right derivative = the window's δ), lowering it hands
    the window to the second (left derivative 0); the engine gives the first its right derivative and the
    second its left one (0) — the first maximum in row-major order takes the gradient."""
    x = np.array([[[[4.0, 1.0, 4.0], [0.0, 4.0, 2.0]]]])  # one 2×3 window, maxima at offsets 0, 2, 4
    layer = MaxPool((2, 3))
    layer.build((1, 2, 3), np.random.default_rng(0), np.float64)
    layer.forward(x)
    dx = layer.backward(np.array([[[[7.0]]]]))
    h = 0.25  # the max is piecewise linear: any step below the gaps (1.0) is exact, a power of 2 rounds not

    def one_sided(i: tuple[int, ...], sign: float) -> float:
        moved = x.copy()
        moved[(0, 0, *i)] += sign * h
        return 7.0 * (moved.max() - x.max()) / (sign * h)

    for i, value in [((0, 0), 7.0), ((0, 2), 0.0), ((1, 1), 0.0)]:
        assert dx[(0, 0, *i)] == value
        assert value in (one_sided(i, -1.0), one_sided(i, 1.0))
    assert (one_sided((0, 0), 1.0), one_sided((0, 0), -1.0)) == (7.0, 0.0)
    assert dx.sum() == 7.0
