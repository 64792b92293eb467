"""The same network in PyTorch, from the layers' own mappings, with a copy of the engine's weights.

Each layer says what it is in PyTorch (``Layer.to_torch(t, info)``, see :mod:`cnnbp.core.layers.base`);
this module supplies the ``t`` those mappings use (:class:`TorchKit`), puts the modules in a
``torch.nn.Sequential`` in the network's dtype, copies the weights, and computes the loss, the
gradients and training steps there — with the torch optimiser the engine's optimiser names
(``Optimizer.to_torch``).  ``cnnbp bench --vs torch`` uses it to check agreement and to time PyTorch.

Modes: gradients for the agreement check are taken in :meth:`TorchMirror.probe_mode`, torch's counterpart
of the engine's ``probe`` phase (deterministic, batch statistics); training steps (``step_fn``, the
timing) run in whatever mode the model is in, by default torch's train mode.

PyTorch is optional (``pip install 'cnnbp[torch]'``): it is imported when a mirror is built, never when
this module is, so that thread settings made before (``cnnbp.bench.limit_threads``) still apply.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential
from cnnbp.core.optim import Optimizer
from cnnbp.errors import UserError

TORCH_HINT = "PyTorch is not installed: pip install 'cnnbp[torch]' (or pip install torch) to use --vs torch"

Params = dict[str, dict[str, np.ndarray]]


def have_torch() -> bool:
    """Whether PyTorch can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:  # ``sys.modules["torch"]`` set without a spec
        return False


class TorchKit:
    """What a layer's ``to_torch`` is given: ``torch``, ``nn``, ``F`` (``torch.nn.functional``) and
    ``module(fn, *owned)``, a function of the input as an ``nn.Module`` that registers the
    Parameters and Modules in ``owned`` (so that ``.to(dtype)`` and ``.parameters()`` see them)."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.nn = torch.nn
        self.F = torch.nn.functional

    def module(self, fn: Callable[[Any], Any], *owned: Any) -> Any:
        """``fn`` (input → output) as an ``nn.Module`` owning ``owned``."""
        return _lambda_class(self.torch)(fn, *owned)


@functools.cache
def _lambda_class(torch: Any) -> type:
    """The ``nn.Module`` class behind :meth:`TorchKit.module` (made once torch is imported)."""
    nn = torch.nn

    class Lambda(nn.Module):
        """A function of the input as a module; ``owned`` parameters and modules are registered."""

        def __init__(self, fn: Callable[[Any], Any], *owned: Any) -> None:
            super().__init__()
            self.fn = fn
            self.owned_params = nn.ParameterList([o for o in owned if isinstance(o, nn.Parameter)])
            self.owned_modules = nn.ModuleList([o for o in owned if isinstance(o, nn.Module)])

        def forward(self, x: Any) -> Any:
            return self.fn(x)

    return Lambda


def _mse(t: TorchKit, out: Any, y: Any) -> Any:
    """½ Σ_j (y_j − out_j)², batch mean; class indices are one-hot targets."""
    target = t.F.one_hot(y.long(), out.shape[1]).to(out.dtype) if y.ndim == 1 else y.to(out.dtype)
    return 0.5 * ((out - target) ** 2).sum(dim=1).mean()


def _cross_entropy(t: TorchKit, out: Any, y: Any) -> Any:
    """−Σ_j y_j ln softmax(out)_j, batch mean; class indices or target vectors (not renormalised)."""
    if y.ndim == 1:
        return t.F.cross_entropy(out, y.long())
    return -(y.to(out.dtype) * t.F.log_softmax(out, dim=1)).sum(dim=1).mean()


#: the ``torch.nn`` dropout classes: put in eval by :meth:`TorchMirror.probe_mode` wherever they appear
DROPOUT_CLASSES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")

#: engine loss name → the same batch-mean loss in torch
TORCH_LOSSES: dict[str, Callable[[TorchKit, Any, Any], Any]] = {
    "mse": _mse,
    "softmax_cross_entropy": _cross_entropy,
}


class TorchMirror:
    """``net`` (built) and ``loss`` in PyTorch, in the network's dtype, at a copy of its weights.

    ``params[layer][key]`` is the torch Parameter of engine parameter ``layer.params[key]``.  A layer
    or loss without a PyTorch counterpart is a UserError naming it.
    """

    def __init__(self, net: Sequential, loss: Loss) -> None:
        if net.dtype is None:
            raise ValueError("TorchMirror: build the network first")
        if loss.name not in TORCH_LOSSES:
            raise UserError(f"--vs torch: no PyTorch counterpart for loss {loss.name!r}")
        torch = importlib.import_module("torch")
        self.torch = torch
        self.t = TorchKit(torch)
        self.loss_fn = TORCH_LOSSES[loss.name]
        self.dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[net.dtype]
        self.params: dict[str, dict[str, Any]] = {}
        modules: list[Any] = []
        #: the modules of the engine's stochastic layers (dropout): in eval in probe_mode
        self.stochastic: list[Any] = []
        for info, layer in zip(net.summary(), net.layers, strict=True):
            try:
                module, named = layer.to_torch(self.t, info)
            except NotImplementedError:
                raise UserError(
                    f"--vs torch: no PyTorch counterpart for layer {layer.name!r} ({layer.kind})"
                ) from None
            modules.append(module)
            if layer.stochastic:
                self.stochastic.append(module)
            if named:
                self.params[layer.name] = named
        # .to() converts the Parameters in place: the objects in ``params`` stay the model's
        self.model = torch.nn.Sequential(*modules).to(self.dtype)
        self.set_weights(net.parameters())

    def set_weights(self, params: Params) -> None:
        """Copy ``{layer: {param: array}}`` (every mirrored parameter) into the torch Parameters."""
        with self.torch.no_grad():
            for lname, named in self.params.items():
                for key, p in named.items():
                    p.copy_(self.torch.from_numpy(np.ascontiguousarray(params[lname][key])))

    def weights(self) -> Params:
        """The torch Parameters' values as ``{layer: {param: array}}`` (copies)."""
        return self._arrays(lambda p: p)

    def loss_value(self, out: Any, y: np.ndarray) -> Any:
        """The batch-mean loss of model output ``out`` for targets ``y`` (a torch scalar)."""
        return self.loss_fn(self.t, out, self.torch.from_numpy(np.asarray(y)))

    @contextmanager
    def probe_mode(self) -> Iterator[TorchMirror]:
        """Run the block as the engine's ``probe`` phase computes: deterministic, batch statistics.

        The model is in train mode (batchnorm normalises with the batch's statistics) except the
        modules of the engine's stochastic layers and every torch dropout module, which are in eval
        (deterministic; dropout is the identity): in train mode each side would draw masks of its
        own.  Afterwards the modules' modes and the model's buffers (running statistics, which train
        mode moves) are put back, as the engine's probe phase updates nothing.
        """
        modules = list(self.model.modules())
        modes = [m.training for m in modules]
        buffers = [b.detach().clone() for b in self.model.buffers()]
        dropouts = tuple(getattr(self.torch.nn, n) for n in DROPOUT_CLASSES if hasattr(self.torch.nn, n))
        self.model.train()
        for m in modules:
            if isinstance(m, dropouts) or any(m is s for s in self.stochastic):
                m.eval()
        try:
            yield self
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.training = mode
            with self.torch.no_grad():
                for b, saved in zip(self.model.buffers(), buffers, strict=True):
                    b.copy_(saved)

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
        """The batch-mean loss and its gradient ``{layer: {param: array}}`` at the current weights, in
        :meth:`probe_mode` (compare with the engine's gradients in its ``probe`` phase)."""
        self.model.zero_grad(set_to_none=True)
        with self.probe_mode():
            value = self.loss_value(self.model(self.torch.from_numpy(x)), y)
            value.backward()
        return float(value.detach()), self._arrays(lambda p: p.grad)

    def _arrays(self, of: Callable[[Any], Any]) -> Params:
        """``{layer: {param: copy of of(its torch Parameter)}}`` as numpy arrays."""
        return {l: {k: of(p).detach().numpy().copy() for k, p in g.items()} for l, g in self.params.items()}

    def step_fn(self, x: np.ndarray, y: np.ndarray, optimizer: Optimizer) -> Callable[[], None]:
        """One training step on ``(x, y)`` with the torch optimiser matching ``optimizer`` (same kind and
        hyper-parameters, fresh state), as a callable; UserError when the optimiser has no counterpart."""
        torch = self.torch
        try:
            opt = optimizer.to_torch(torch, [p for named in self.params.values() for p in named.values()])
        except NotImplementedError:
            raise UserError(f"--vs torch: no PyTorch counterpart for optimizer {optimizer.kind!r}") from None
        xt = torch.from_numpy(x)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            self.loss_value(self.model(xt), y).backward()
            opt.step()

        return step
