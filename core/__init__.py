"""cnnbp's NumPy backpropagation engine: layers, losses, network, initialisers, optimisers, the checker.

No YAML, no files, no printing: the rest of ``cnnbp`` does those.
"""

from cnnbp.core.errors import NativeFormUnavailable, ParameterError, ShapeError
from cnnbp.core.layers import *  # noqa: F403 - every layer class, by its class name
from cnnbp.core.layers import __all__ as _layers
from cnnbp.core.losses import LOSSES, MSE, Loss, SoftmaxCrossEntropy
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.core.optim import OPTIMIZERS, SGD, Adam, Optimizer
from cnnbp.core.registry import LAYERS, layer_class, register_layer

__all__ = [
    "LAYERS",
    "LOSSES",
    "MSE",
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "LayerInfo",
    "Loss",
    "NativeFormUnavailable",
    "Optimizer",
    "ParameterError",
    "Sequential",
    "ShapeError",
    "SoftmaxCrossEntropy",
    "layer_class",
    "register_layer",
    *_layers,
]
