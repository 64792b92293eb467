"""cnnbp's NumPy backpropagation engine: layers, losses, network, initialisers, optimiser.

No YAML, no files, no printing: the CLI (``cnnbp_cli``) does those.
"""

from cnnbp.core.errors import ShapeError
from cnnbp.core.losses import LOSSES, MSE, Loss, SoftmaxCrossEntropy
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.core.optim import SGD

__all__ = ["LOSSES", "MSE", "SGD", "LayerInfo", "Loss", "Sequential", "ShapeError", "SoftmaxCrossEntropy"]
