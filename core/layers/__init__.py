"""Every layer of SPEC §3."""

from core.layers.activations import ACTIVATIONS, Identity, ReLU, Sigmoid, Tanh
from core.layers.base import Layer
from core.layers.conv import Conv2D
from core.layers.dense import Dense
from core.layers.pooling import LpPool, MaxPool, MeanPool, Pool, Subsample
from core.layers.shape import Flatten

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
