"""The seeds' worked examples, with every expected value written out term by term as in the seeds.

The expected side never calls the engine: sums are spelled out, exponentials come from ``math``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnbp.core import MSE, SGD, Sequential, SoftmaxCrossEntropy
from cnnbp.core.init import Explicit
from cnnbp.core.layers import Conv2D, Dense, MaxPool, MeanPool, Sigmoid, Subsample
from tests.core import reference as ref

# ---------------------------------------------------------------------------------------------
# (a) seed 000 §3.1.1 / seed 004 §1–2: 3×3 input, 2×2 kernel, 2×2 output
# ---------------------------------------------------------------------------------------------
X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]])
F = np.array([[0.5, -1.0], [2.0, 0.25]])
DO = np.array([[0.1, -0.2], [0.3, 0.7]])  # ∂E/∂O, the sensitivity map arriving at the output
(X11, X12, X13), (X21, X22, X23), (X31, X32, X33) = X
(F11, F12), (F21, F22) = F
(dO11, dO12), (dO21, dO22) = DO


def conv_3x3(bias: str, b: np.ndarray) -> Conv2D:
    """A 1-filter 2×2 conv on a 1×3×3 input with F and the given bias."""
    layer = Conv2D(1, 2, bias=bias, init={"W": Explicit(F[None, None]), "b": Explicit(b)})
    layer.build((1, 3, 3), np.random.default_rng(0), np.float64)
    return layer


@pytest.mark.parametrize("bias", ["tied", "untied"])
def test_conv_3x3_forward_and_gradients(bias: str) -> None:
    """O_ij, every ∂E/∂F_ij and ∂E/∂X_ij (seed 000 §3.1.1), and ∂E/∂b tied / per position (seed 004)."""
    b = np.array([0.5]) if bias == "tied" else np.array([[[0.1, 0.2], [0.3, 0.4]]])
    layer = conv_3x3(bias, b)
    b11, b12, b21, b22 = (b[0],) * 4 if bias == "tied" else b[0].ravel()

    O = layer.forward(X[None, None])[0, 0]
    O11 = F11 * X11 + F12 * X12 + F21 * X21 + F22 * X22 + b11
    O12 = F11 * X12 + F12 * X13 + F21 * X22 + F22 * X23 + b12
    O21 = F11 * X21 + F12 * X22 + F21 * X31 + F22 * X32 + b21
    O22 = F11 * X22 + F12 * X23 + F21 * X32 + F22 * X33 + b22
    expected_O = [[O11, O12], [O21, O22]]
    np.testing.assert_allclose(O, expected_O, rtol=1e-15)

    dX = layer.backward(DO[None, None])[0, 0]
    dF = layer.grads["W"][0, 0]
    dF11 = dO11 * X11 + dO12 * X12 + dO21 * X21 + dO22 * X22
    dF12 = dO11 * X12 + dO12 * X13 + dO21 * X22 + dO22 * X23
    dF21 = dO11 * X21 + dO12 * X22 + dO21 * X31 + dO22 * X32
    dF22 = dO11 * X22 + dO12 * X23 + dO21 * X32 + dO22 * X33
    expected_dF = [[dF11, dF12], [dF21, dF22]]
    dX11 = dO11 * F11
    dX12 = dO11 * F12 + dO12 * F11
    dX13 = dO12 * F12
    dX21 = dO11 * F21 + dO21 * F11
    dX22 = dO11 * F22 + dO12 * F21 + dO21 * F12 + dO22 * F11
    dX23 = dO12 * F22 + dO22 * F12
    dX31 = dO21 * F21
    dX32 = dO21 * F22 + dO22 * F21
    dX33 = dO22 * F22
    expected_dX = [[dX11, dX12, dX13], [dX21, dX22, dX23], [dX31, dX32, dX33]]
    np.testing.assert_allclose(dF, expected_dF, rtol=1e-15)
    np.testing.assert_allclose(dX, expected_dX, rtol=1e-15)
    if bias == "untied":  # ∂L/∂b_ij = ∂L/∂y_ij
        np.testing.assert_allclose(layer.grads["b"][0], [[dO11, dO12], [dO21, dO22]], rtol=1e-15)
    else:  # one bias per channel: ∂L/∂b = Σ_ij ∂L/∂y_ij
        np.testing.assert_allclose(layer.grads["b"], [dO11 + dO12 + dO21 + dO22], rtol=1e-15)


def test_conv_3x3_with_numbers() -> None:
    """The same example with its numbers substituted by hand (guards the symbolic test above)."""
    layer = conv_3x3("tied", np.array([0.0]))
    O = layer.forward(X[None, None])[0, 0]
    # O11 = 0.5·1 − 1·2 + 2·4 + 0.25·5 = 7.75; O22 = 0.5·5 − 1·6 + 2·8 + 0.25·10 = 15
    np.testing.assert_allclose(O, [[7.75, 9.5], [13.0, 15.0]], rtol=1e-15)
    dX = layer.backward(DO[None, None])[0, 0]
    # dX22 = 0.1·0.25 + (−0.2)·2 + 0.3·(−1) + 0.7·0.5 = −0.325
    assert dX[1, 1] == pytest.approx(-0.325, abs=1e-15)
    # dF11 = 0.1·1 − 0.2·2 + 0.3·4 + 0.7·5 = 4.4
    assert layer.grads["W"][0, 0, 0, 0] == pytest.approx(4.4, abs=1e-14)


# ---------------------------------------------------------------------------------------------
# (b) seed 004 §3–4: 2×2 max pool, stride 1, on a 3×3 map
# ---------------------------------------------------------------------------------------------
def test_max_pool_3x3_stride_1_masks_add_up() -> None:
    """Windows X'_1..X'_4, their masks M_k, and ∂L/∂X = Σ_k ∂L/∂y_k · M_k added back in place."""
    x11, x12, x13 = 1.0, 7.0, 2.0
    x21, x22, x23 = 3.0, 4.0, 6.0
    x31, x32, x33 = 9.0, 5.0, 8.0
    Xp = np.array([[x11, x12, x13], [x21, x22, x23], [x31, x32, x33]])
    windows = {  # (top, left) → X'_k
        (0, 0): [[x11, x12], [x21, x22]],
        (0, 1): [[x12, x13], [x22, x23]],
        (1, 0): [[x21, x22], [x31, x32]],
        (1, 1): [[x22, x23], [x32, x33]],
    }
    # maxima by hand: X'_1 → x12 = 7, X'_2 → x12 = 7, X'_3 → x31 = 9, X'_4 → x33 = 8
    masks = {
        (0, 0): [[0, 1], [0, 0]],
        (0, 1): [[1, 0], [0, 0]],
        (1, 0): [[0, 0], [1, 0]],
        (1, 1): [[0, 0], [0, 1]],
    }
    dY = np.array([[0.5, -1.5], [2.0, 3.0]])
    expected_dX = np.zeros((3, 3))
    for (i, j), m in masks.items():
        assert max(max(row) for row in windows[(i, j)]) == max(
            windows[(i, j)][r][c] for r in range(2) for c in range(2) if m[r][c]
        )
        expected_dX[i : i + 2, j : j + 2] += dY[i, j] * np.array(m, dtype=float)
    # x12 is the maximum of two overlapping windows and receives both gradients
    np.testing.assert_array_equal(
        expected_dX, [[0, dY[0, 0] + dY[0, 1], 0], [0, 0, 0], [dY[1, 0], 0, dY[1, 1]]]
    )

    layer = MaxPool(2, stride=1)
    layer.build((1, 3, 3), np.random.default_rng(0), np.float64)
    Y = layer.forward(Xp[None, None])[0, 0]
    np.testing.assert_array_equal(Y, [[7.0, 7.0], [9.0, 8.0]])
    np.testing.assert_array_equal(layer.backward(dY[None, None])[0, 0], expected_dX)


# ---------------------------------------------------------------------------------------------
# (c) seed 000 §2: the 2-2-2 sigmoid network with MSE
# ---------------------------------------------------------------------------------------------
i1, i2 = 0.05, 0.10
w1, w2, w3, w4, w5, w6, w7, w8 = 0.15, 0.20, 0.25, 0.30, 0.40, 0.45, 0.50, 0.55
b1, b2 = 0.35, 0.60
target_o1, target_o2 = 0.01, 0.99


def sigma(t: float) -> float:
    """The logistic function."""
    return 1.0 / (1.0 + math.exp(-t))


def classic_net() -> Sequential:
    """net_h1 = w1 i1 + w2 i2 + b1, net_h2 = w3 i1 + w4 i2 + b1; net_o1 = w5 h1 + w6 h2 + b2, …"""
    return Sequential(
        [
            Dense(2, init={"W": Explicit([[w1, w2], [w3, w4]]), "b": Explicit([b1, b1])}, name="hidden"),
            Sigmoid(name="out_h"),
            Dense(2, init={"W": Explicit([[w5, w6], [w7, w8]]), "b": Explicit([b2, b2])}, name="output"),
            Sigmoid(name="out_o"),
        ],
        (2,),
    ).build(np.random.default_rng(0), np.float64)


def test_classic_2_2_2_network() -> None:
    """δ_o, δ_h, ∂E/∂w5, ∂E/∂w1 by hand; the published numbers; recorded deltas; one SGD step."""
    net_h1 = w1 * i1 + w2 * i2 + b1
    net_h2 = w3 * i1 + w4 * i2 + b1
    out_h1, out_h2 = sigma(net_h1), sigma(net_h2)
    net_o1 = w5 * out_h1 + w6 * out_h2 + b2
    net_o2 = w7 * out_h1 + w8 * out_h2 + b2
    out_o1, out_o2 = sigma(net_o1), sigma(net_o2)
    E_total = 0.5 * (target_o1 - out_o1) ** 2 + 0.5 * (target_o2 - out_o2) ** 2
    delta_o1 = (out_o1 - target_o1) * out_o1 * (1 - out_o1)
    delta_o2 = (out_o2 - target_o2) * out_o2 * (1 - out_o2)
    delta_h1 = (delta_o1 * w5 + delta_o2 * w7) * out_h1 * (1 - out_h1)
    delta_h2 = (delta_o1 * w6 + delta_o2 * w8) * out_h2 * (1 - out_h2)
    dE_dw5 = delta_o1 * out_h1
    dE_dw1 = delta_h1 * i1

    # the well-known published values of this example
    assert out_h1 == pytest.approx(0.593269992, abs=1e-9)
    assert out_o1 == pytest.approx(0.75136507, abs=1e-8)
    assert E_total == pytest.approx(0.298371109, abs=1e-9)
    assert dE_dw5 == pytest.approx(0.082167041, abs=1e-9)
    assert dE_dw1 == pytest.approx(0.000438568, abs=1e-9)

    net = classic_net()
    rec: dict[str, np.ndarray] = {}
    x, target = np.array([[i1, i2]]), np.array([[target_o1, target_o2]])
    loss = net.gradients(x, target, MSE(), record=lambda n, d: rec.__setitem__(n, d.copy()))
    assert loss == pytest.approx(E_total, rel=1e-14)
    np.testing.assert_allclose(rec["out_o"][0], [out_o1 - target_o1, out_o2 - target_o2], rtol=1e-14)
    np.testing.assert_allclose(rec["output"][0], [delta_o1, delta_o2], rtol=1e-14)
    np.testing.assert_allclose(rec["hidden"][0], [delta_h1, delta_h2], rtol=1e-14)
    g_out, g_hid = net.layer("output").grads, net.layer("hidden").grads
    # "input on the weight × sensitivity of the node it feeds"
    expected_out = [[delta_o1 * out_h1, delta_o1 * out_h2], [delta_o2 * out_h1, delta_o2 * out_h2]]
    expected_hid = [[delta_h1 * i1, delta_h1 * i2], [delta_h2 * i1, delta_h2 * i2]]
    np.testing.assert_allclose(g_out["W"], expected_out, rtol=1e-14)
    np.testing.assert_allclose(g_hid["W"], expected_hid, rtol=1e-14)
    assert g_out["W"][0, 0] == pytest.approx(dE_dw5, rel=1e-14)
    assert g_hid["W"][0, 0] == pytest.approx(dE_dw1, rel=1e-14)
    np.testing.assert_allclose(g_out["b"], [delta_o1, delta_o2], rtol=1e-14)

    SGD(lr=0.5).step(net.parameters(), net.grads())
    W_out, W_hid = net.layer("output").params["W"], net.layer("hidden").params["W"]
    assert W_out[0, 0] == pytest.approx(w5 - 0.5 * dE_dw5, rel=1e-14)
    assert W_out[0, 0] == pytest.approx(0.35891648, abs=1e-8)  # published w5⁺
    assert W_out[0, 1] == pytest.approx(0.408666186, abs=1e-9)  # w6⁺
    assert W_out[1, 0] == pytest.approx(0.511301270, abs=1e-9)  # w7⁺
    assert W_out[1, 1] == pytest.approx(0.561370121, abs=1e-9)  # w8⁺
    assert W_hid[0, 0] == pytest.approx(0.149780716, abs=1e-9)  # w1⁺
    assert W_hid[0, 1] == pytest.approx(0.19956143, abs=1e-8)  # w2⁺
    assert W_hid[1, 0] == pytest.approx(0.24975114, abs=1e-8)  # w3⁺
    assert W_hid[1, 1] == pytest.approx(0.29950229, abs=1e-8)  # w4⁺


# ---------------------------------------------------------------------------------------------
# (d) seed 003: mean-pool upsampling and DeepLearnToolbox's conv delta
# ---------------------------------------------------------------------------------------------
POOLED_DELTA = np.array([[1.0, 3.0], [2.0, 4.0]])
UPSAMPLED = np.array(
    [
        [1 / 4, 1 / 4, 3 / 4, 3 / 4],
        [1 / 4, 1 / 4, 3 / 4, 3 / 4],
        [2 / 4, 2 / 4, 4 / 4, 4 / 4],
        [2 / 4, 2 / 4, 4 / 4, 4 / 4],
    ]
)


def test_mean_pool_upsample() -> None:
    """A 2×2 pooled δ [[1,3],[2,4]] spreads over 4×4 as each value / 4 (seed 003)."""
    layer = MeanPool(2)
    layer.build((1, 4, 4), np.random.default_rng(0), np.float64)
    layer.forward(np.random.default_rng(1).standard_normal((1, 1, 4, 4)))
    np.testing.assert_array_equal(layer.backward(POOLED_DELTA[None, None])[0, 0], UPSAMPLED)


def test_subsample_upsample_is_dlt_expand() -> None:
    """Subsample with β = 1/4 (DeepLearnToolbox's 's' layer) upsamples the same way."""
    layer = Subsample(2)
    layer.build((1, 4, 4), np.random.default_rng(0), np.float64)
    assert layer.params["beta"][0] == 0.25
    layer.forward(np.random.default_rng(1).standard_normal((1, 1, 4, 4)))
    np.testing.assert_array_equal(layer.backward(POOLED_DELTA[None, None])[0, 0], UPSAMPLED)


def test_max_pool_upsample_seed_003() -> None:
    """Maxima at bottom-right, top-right, top-left, bottom-left of the four windows get 1, 3, 2, 4."""
    x = np.array(
        [
            [0.1, 0.2, 0.3, 0.9],
            [0.4, 0.8, 0.5, 0.6],
            [0.9, 0.1, 0.2, 0.3],
            [0.5, 0.6, 0.9, 0.4],
        ]
    )
    layer = MaxPool(2)
    layer.build((1, 4, 4), np.random.default_rng(0), np.float64)
    layer.forward(x[None, None])
    expected = [[0, 0, 0, 3], [0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 4, 0]]
    np.testing.assert_array_equal(layer.backward(POOLED_DELTA[None, None])[0, 0], expected)


@pytest.mark.parametrize("pool", ["mean", "subsample"])
def test_dlt_conv_delta(pool: str) -> None:
    """Conv δ under a pool: ``a(1−a) · expand(d, [s s]) / s²`` (DeepLearnToolbox cnnbp.m)."""
    rng = np.random.default_rng(5)
    s = 2
    down = MeanPool(s, name="s") if pool == "mean" else Subsample(s, name="s")
    layers = [Conv2D(2, 3, name="c"), Sigmoid(name="sig"), down]
    net = Sequential(layers, (1, 6, 6)).build(rng, np.float64)
    x = rng.standard_normal((3, 1, 6, 6))
    d = rng.standard_normal((3, 2, 2, 2))
    net.forward(x)
    rec: dict[str, np.ndarray] = {}
    net.backward(d, record=lambda n, v: rec.__setitem__(n, v.copy()))
    W, b = net.layer("c").params["W"], net.layer("c").params["b"]
    for n in range(3):
        z = ref.conv_forward(x[n], W, b, (1, 1), (0, 0))
        for j in range(2):
            a = 1.0 / (1.0 + np.exp(-z[j]))
            expand = np.zeros((4, 4))
            for u in range(4):
                for v in range(4):
                    expand[u, v] = d[n, j, u // s, v // s]
            np.testing.assert_allclose(rec["c"][n, j], a * (1 - a) * (expand / s**2), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# (e) seed 001: softmax cross-entropy delta ŷ − y, and the plain SGD step
# ---------------------------------------------------------------------------------------------
def softmax_row(row: list[float]) -> list[float]:
    """ŷ_j = e^{a_j} / Σ_k e^{a_k}."""
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("targets", ["index", "onehot"])
def test_softmax_cross_entropy_delta(targets: str) -> None:
    """δ = ŷ − y and L = −ln ŷ_label for index and one-hot labels (seed 001 §9.3)."""
    out = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
    labels = [1, 2]
    y = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    loss = SoftmaxCrossEntropy()
    values = loss.forward(np.array(out), np.array(labels) if targets == "index" else np.array(y))
    delta = loss.backward()
    for n in range(2):
        y_hat = softmax_row(out[n])
        assert values[n] == pytest.approx(-math.log(y_hat[labels[n]]), rel=1e-14)
        np.testing.assert_allclose(delta[n], [y_hat[j] - y[n][j] for j in range(3)], rtol=1e-13, atol=1e-16)


def test_sgd_plain_step_uses_the_batch_mean_gradient() -> None:
    """``W ← W − α·(1/m) Σ_x δ_x a_xᵀ`` and ``b ← b − α·(1/m) Σ_x δ_x`` for a dense + softmax CE."""
    rng = np.random.default_rng(11)
    W0 = rng.standard_normal((3, 4))
    b0 = rng.standard_normal(3)
    a = rng.standard_normal((5, 4))
    labels = [0, 2, 1, 2, 0]
    net = Sequential([Dense(3, init={"W": Explicit(W0), "b": Explicit(b0)}, name="fc")], (4,)).build(
        rng, np.float64
    )
    net.gradients(a, np.array(labels), SoftmaxCrossEntropy())
    alpha, m = 0.3, 5
    dW, db = np.zeros((3, 4)), np.zeros(3)
    for x in range(m):
        z = [sum(W0[j, i] * a[x, i] for i in range(4)) + b0[j] for j in range(3)]
        y_hat = softmax_row(z)
        for j in range(3):
            delta_j = y_hat[j] - (1.0 if labels[x] == j else 0.0)
            db[j] += delta_j / m
            for i in range(4):
                dW[j, i] += delta_j * a[x, i] / m
    np.testing.assert_allclose(net.layer("fc").grads["W"], dW, rtol=1e-12)
    SGD(lr=alpha).step(net.parameters(), net.grads())
    np.testing.assert_allclose(net.layer("fc").params["W"], W0 - alpha * dW, rtol=1e-12)
    np.testing.assert_allclose(net.layer("fc").params["b"], b0 - alpha * db, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# (f) the loop reference itself: seed 000's full convolution
# ---------------------------------------------------------------------------------------------
def test_reference_full_convolution_is_the_seed_formula() -> None:
    """The reference's full convolution reproduces seed 000's term-by-term ∂E/∂X for a 2×2 δ and kernel."""
    d = np.array([[1.0, 2.0], [3.0, 4.0]])
    F = np.array([[5.0, 6.0], [7.0, 8.0]])
    (d11, d12), (d21, d22) = d
    (f11, f12), (f21, f22) = F
    expected = np.array(
        [
            [d11 * f11, d11 * f12 + d12 * f11, d12 * f12],
            [d11 * f21 + d21 * f11, d11 * f22 + d12 * f21 + d21 * f12 + d22 * f11, d12 * f22 + d22 * f12],
            [d21 * f21, d21 * f22 + d22 * f21, d22 * f22],
        ]
    )
    np.testing.assert_array_equal(ref.conv_full(d, F), expected)
