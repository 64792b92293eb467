"""Batch normalisation over the channels of C×H×W images or the features of vectors (PyTorch's semantics)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np

from cnnbp.core.errors import ShapeError
from cnnbp.core.hyper import Bound, PositiveFloat
from cnnbp.core.init import Constant, Initializer, Zeros
from cnnbp.core.layers.base import Layer, Shape
from cnnbp.core.registry import register_layer


@register_layer("batchnorm")
class BatchNorm(Layer):
    """``y = γ·x̂ + β`` with ``x̂ = (x − μ)/√(σ² + ε)`` per channel (SPEC §6), as ``torch.nn.BatchNorm1d/2d``.

    For C×H×W inputs the statistics of channel c are over the batch and every spatial position
    (n = N·H·W values); for feature vectors over the batch (n = N).  γ (``gamma``, init ones) and β
    (``beta``, init zeros) have one value per channel.  Phases (``Layer.phase``):

    * ``train``: μ and the biased σ² of the batch normalise it, and the running estimates move
      ``r ← (1 − momentum)·r + momentum·stat`` (the variance's stat unbiased: σ²·n/(n − 1)); a
      channel with n = 1 is a ShapeError, as PyTorch's ValueError;
    * ``probe`` (the probe batch, the gradient checker): the batch's statistics, nothing updated;
    * ``eval``: the running estimates normalise (a per-channel affine map).

    Backward with batch statistics (the samples are coupled through μ and σ²):
    ``∂L/∂γ = Σ ∂L/∂y·x̂``, ``∂L/∂β = Σ ∂L/∂y``,
    ``∂L/∂x = γ/√(σ² + ε) · (∂L/∂y − mean(∂L/∂y) − x̂·mean(∂L/∂y·x̂))``; in ``eval`` the plain affine
    ``∂L/∂x = γ/√(r_var + ε) · ∂L/∂y``.

    The saved per-sample deltas of a network with a batchnorm (every layer at or below it): the engine
    sends each sample's own ∂L_x/∂out down, and the sum passes through the coupled backward, so the
    delta recorded for sample x at a layer before the batchnorm is ``∂(Σ_x' L_x')/∂z_x`` — the gradient
    of the batch's summed loss (m times that of the batch mean) with respect to sample x's activation,
    which includes how z_x moves every other sample's loss through μ and σ².  It is not the gradient of
    L_x alone (SPEC §6); the parameter gradients (÷ m) are still exactly those of the batch-mean loss.
    """

    param_names = ("gamma", "beta")
    couples_batch = True

    def __init__(
        self,
        momentum: Annotated[float, Bound(ge=0, le=1)] = 0.1,
        eps: PositiveFloat = 1e-5,
        name: str | None = None,
        init: dict[str, Initializer] | None = None,
    ) -> None:
        super().__init__(name, init)
        self._set_hyper(momentum=momentum, eps=eps)

    def default_init(self) -> dict[str, Initializer]:
        return {"gamma": Constant(1.0), "beta": Zeros()}

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) not in (1, 3):
            raise ShapeError(
                self.name,
                f"expects a C×H×W image or a feature vector per sample, got shape {tuple(input_shape)}",
            )
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        self.output_shape(input_shape)
        return {"gamma": (input_shape[0],), "beta": (input_shape[0],)}

    def build(self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> None:
        """The parameters, then the running statistics (mean 0, variance 1) in ``dtype``."""
        super().build(input_shape, rng, dtype)
        c = input_shape[0]
        self.state = {"running_mean": np.zeros(c, dtype), "running_var": np.ones(c, dtype)}

    # ---- computation ---------------------------------------------------------------------------------
    @staticmethod
    def _layout(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(the axes a channel's statistics run over, the broadcast shape of a per-channel array)."""
        return ((0, 2, 3), (1, -1, 1, 1)) if x.ndim == 4 else ((0,), (1, -1))

    def forward(self, x: np.ndarray) -> np.ndarray:
        axes, shape = self._layout(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if self.phase == "eval":
            mean, var = self.state["running_mean"], self.state["running_var"]
            xc = x - mean.reshape(shape)
        else:  # batch statistics
            n = x.size // x.shape[1]
            if self.phase == "train" and n < 2:
                raise ShapeError(
                    self.name, "needs more than one value per channel in training (a batch of 1)"
                )
            mean = x.mean(axis=axes)
            xc = x - mean.reshape(shape)
            var = (xc * xc).mean(axis=axes)  # not |xc|²: holomorphic, for the complex step
            if self.phase == "train":
                self._update_running(mean, var, n)
        inv = 1.0 / np.sqrt(var + self.eps)
        xhat = xc * inv.reshape(shape)
        self._x, self._xhat, self._inv, self._batch_stats = x, xhat, inv, self.phase != "eval"
        return xhat * gamma.reshape(shape) + beta.reshape(shape)

    def _update_running(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        """``r ← (1 − momentum)·r + momentum·stat`` in place, the variance's stat unbiased."""
        m = self.momentum
        rm, rv = self.state["running_mean"], self.state["running_var"]
        rm[...] = (1.0 - m) * rm + m * mean
        rv[...] = (1.0 - m) * rv + m * (var * (n / (n - 1)))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._saved()
        axes, shape = self._layout(dy)
        xhat, inv, gamma = self._xhat, self._inv, self.params["gamma"]
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * xhat).sum(axis=axes)
        self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        scale = (gamma * inv).reshape(shape)
        if not self._batch_stats:
            return dy * scale
        n = dy.size // dy.shape[1]
        return scale * (dy - (dbeta / n).reshape(shape) - xhat * (dgamma / n).reshape(shape))

    def backward_params(self, dy: np.ndarray) -> None:
        axes, _ = self._layout(dy)
        self._saved()
        self.grads["beta"] = dy.sum(axis=axes)
        self.grads["gamma"] = (dy * self._xhat).sum(axis=axes)

    # ---- export mappings ---------------------------------------------------------------------------
    def _inference_constants(self, info: Any) -> dict[str, np.ndarray]:
        """γ, β, running mean and 1/√(var + ε), shaped to broadcast over (N, C[, H, W])."""
        shape = (-1, 1, 1) if len(info.input_shape) == 3 else (-1,)
        mean, var = self.state["running_mean"], self.state["running_var"]
        inv = 1.0 / np.sqrt(var.astype(np.float64) + self.eps)
        out = {"mean": mean, "inv_std": inv, "gamma": self.params["gamma"], "beta": self.params["beta"]}
        return {k: np.asarray(v).reshape(shape) for k, v in out.items()}

    def to_onnx(self, g: Any, x: str, out: str, info: Any) -> None:
        """Inference form with the running statistics: ``BatchNormalization``; decomposed (float64):
        ``(x − mean)·(1/√(var + ε))·γ + β`` with double constants, the engine's own order of operations —
        the operator's ε is a float32 attribute (1e-5 is off by 2.5e-13), and older onnxruntime
        releases have no double kernel for it (1.32 has)."""
        name = self.name
        if not g.decomposed:
            inputs = [
                g.init(f"{name}/{key}", arr)
                for key, arr in (("gamma", self.params["gamma"]), ("beta", self.params["beta"]),
                                 ("running_mean", self.state["running_mean"]),
                                 ("running_var", self.state["running_var"]))
            ]  # fmt: skip
            g.op("BatchNormalization", [x, *inputs], out, name, epsilon=self.eps)
            return
        c = {k: g.init(f"{name}/{k}", v) for k, v in self._inference_constants(info).items()}
        z = g.tmp("Sub", [x, c["mean"]], f"{name}/centred", f"{name}/sub")
        z = g.tmp("Mul", [z, c["inv_std"]], f"{name}/normalised", f"{name}/normalise")
        z = g.tmp("Mul", [z, c["gamma"]], f"{name}/scaled", f"{name}/scale")
        g.op("Add", [z, c["beta"]], out, f"{name}/shift")

    def to_torch(self, t: Any, info: Any) -> tuple[Any, dict[str, Any]]:
        """``nn.BatchNorm2d`` (images) or ``nn.BatchNorm1d`` (vectors) in the running statistics' dtype,
        with those statistics copied in; γ and β are its weight and bias."""
        cls = t.nn.BatchNorm2d if len(info.input_shape) == 3 else t.nn.BatchNorm1d
        running = {k: t.torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.state.items()}
        dtype = running["running_mean"].dtype if running else None
        bn = cls(info.input_shape[0], eps=self.eps, momentum=self.momentum, dtype=dtype)
        with t.torch.no_grad():
            for key, value in running.items():
                getattr(bn, key).copy_(value)
        return bn, {"gamma": bn.weight, "beta": bn.bias}
