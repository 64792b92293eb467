"""cnnbp: train small CNNs on a transparent NumPy backpropagation engine, prove every gradient by finite
differences, and look inside.

The library (``import cnnbp``)::

    run = cnnbp.train("configs/digits.yaml", epochs=3)      # a run folder, as `cnnbp train` makes it
    run.metrics[-1]["val_acc"]                              # rows of metrics.csv
    ck = run.checkpoint("last")                             # .weights, .grads, .deltas as arrays
    net = ck.network()                                      # the network at those weights
    result = cnnbp.gradcheck(run)                           # finite differences; result.passed
    cnnbp.export(run, "model.onnx")

The engine's classes (layers, losses, optimisers, ``Sequential``) are importable from here too, for
building networks in code; ``cnnbp.core`` is the engine itself (pure NumPy, no files).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("cnnbp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.2.0"

from cnnbp.api import resume, train  # noqa: E402
from cnnbp.checking import gradcheck  # noqa: E402
from cnnbp.checkpoint import Checkpoint, read_checkpoint  # noqa: E402
from cnnbp.core import (  # noqa: E402
    LAYERS,
    LOSSES,
    MSE,
    OPTIMIZERS,
    SGD,
    Adam,
    Conv2D,
    Dense,
    Flatten,
    Identity,
    Layer,
    Loss,
    LpPool,
    MaxPool,
    MeanPool,
    Optimizer,
    Pool,
    ReLU,
    Sequential,
    ShapeError,
    Sigmoid,
    SoftmaxCrossEntropy,
    Subsample,
    Tanh,
    register_layer,
)
from cnnbp.core.gradcheck import GradcheckResult, TensorCheck  # noqa: E402
from cnnbp.core.trainer import Diverged  # noqa: E402
from cnnbp.errors import UserError  # noqa: E402
from cnnbp.exporting import export  # noqa: E402
from cnnbp.runner import Callback, Interrupted  # noqa: E402
from cnnbp.runs import Run, load_run  # noqa: E402

__all__ = [
    "LAYERS",
    "LOSSES",
    "MSE",
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "Callback",
    "Checkpoint",
    "Conv2D",
    "Dense",
    "Diverged",
    "Flatten",
    "GradcheckResult",
    "Identity",
    "Interrupted",
    "Layer",
    "Loss",
    "LpPool",
    "MaxPool",
    "MeanPool",
    "Optimizer",
    "Pool",
    "ReLU",
    "Run",
    "Sequential",
    "ShapeError",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Subsample",
    "Tanh",
    "TensorCheck",
    "UserError",
    "__version__",
    "export",
    "gradcheck",
    "load_run",
    "read_checkpoint",
    "register_layer",
    "resume",
    "train",
]
