"""Every built-in layer; importing this package registers them (see :mod:`cnnbp.core.registry`)."""

from cnnbp.core.layers.base import Layer
from cnnbp.core.layers.conv import Conv2D
from cnnbp.core.layers.dense import Dense
from cnnbp.core.layers.flatten import Flatten
from cnnbp.core.layers.identity import Identity
from cnnbp.core.layers.pool import LpPool, MaxPool, MeanPool, Pool
from cnnbp.core.layers.relu import ReLU
from cnnbp.core.layers.sigmoid import Sigmoid
from cnnbp.core.layers.subsample import Subsample
from cnnbp.core.layers.tanh import Tanh

__all__ = [
    "Conv2D",
    "Dense",
    "Flatten",
    "Identity",
    "Layer",
    "LpPool",
    "MaxPool",
    "MeanPool",
    "Pool",
    "ReLU",
    "Sigmoid",
    "Subsample",
    "Tanh",
]
