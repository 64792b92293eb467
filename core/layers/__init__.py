"""Every layer of SPEC §3."""

from cnnbp.core.layers.activations import ACTIVATIONS, Identity, ReLU, Sigmoid, Tanh
from cnnbp.core.layers.base import Layer
from cnnbp.core.layers.conv import Conv2D
from cnnbp.core.layers.dense import Dense
from cnnbp.core.layers.pooling import LpPool, MaxPool, MeanPool, Pool, Subsample
from cnnbp.core.layers.shape import Flatten

__all__ = [
    "ACTIVATIONS",
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
