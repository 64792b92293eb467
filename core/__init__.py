"""cnnbp's NumPy backpropagation engine: layers, losses, network, initialisers, optimisers, the checker.

No YAML, no files, no printing: the rest of ``cnnbp`` does those.
"""

from cnnbp.core.errors import ParameterError, ShapeError
from cnnbp.core.layers import (
    Conv2D,
    Dense,
    Flatten,
    Identity,
    Layer,
    LpPool,
    MaxPool,
    MeanPool,
    Pool,
    ReLU,
    Sigmoid,
    Subsample,
    Tanh,
)
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
    "Conv2D",
    "Dense",
    "Flatten",
    "Identity",
    "Layer",
    "LayerInfo",
    "Loss",
    "LpPool",
    "MaxPool",
    "MeanPool",
    "Optimizer",
    "ParameterError",
    "Pool",
    "ReLU",
    "Sequential",
    "ShapeError",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Subsample",
    "Tanh",
    "layer_class",
    "register_layer",
]
