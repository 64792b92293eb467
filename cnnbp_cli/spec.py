"""Typed run configuration: what the YAML becomes once validated (strings end at this boundary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnbp.data import DataSpec

LAYER_TYPES = ("conv", "pool", "subsample", "dense", "flatten", "sigmoid", "tanh", "relu", "identity")
LOSS_NAMES = ("mse", "softmax_cross_entropy")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class LayerSpec:
    """One entry of ``model.layers`` after validation.

    ``hyper`` holds the type's own keys with defaults filled in (conv: filters,
    kernel, stride, padding, bias; pool: mode, size, stride, p; subsample: scale;
    dense: units).  ``init`` maps a parameter name to a scheme name
    (``glorot_uniform`` | ``he_normal`` | ``zeros``) or to explicit values (nested lists).
    ``activation`` adds a separate activation layer named ``<name>.<activation>``.
    """

    type: str
    name: str
    hyper: dict[str, Any] = field(default_factory=dict)
    activation: str | None = None
    init: dict[str, Any] = field(default_factory=dict)
    path: str = ""  # key path in the YAML, e.g. "model.layers[2]", for error messages


@dataclass(frozen=True)
class ModelSpec:
    """The ``model`` section: input shape, layers in order, and where initial weights come from."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    init_from: str | None = None


@dataclass(frozen=True)
class TrainSpec:
    """The ``train`` section with its defaults (``divergence_factor`` None: no such check)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    shuffle: bool = True
    divergence_factor: float | None = None


@dataclass(frozen=True)
class RecordSpec:
    """The ``record`` section: probe samples per checkpoint, and a checkpoint every ``every`` epochs."""

    probe: int = 8
    every: int = 1


@dataclass(frozen=True)
class RunConfig:
    """A whole validated config; ``resolved`` is the plain dict that ``config.yaml`` stores."""

    name: str
    seed: int
    dtype: str
    data: DataSpec
    model: ModelSpec
    loss: str
    train: TrainSpec
    record: RecordSpec
    resolved: dict[str, Any]
    base_dir: Path | None = None  # folder of the config file; relative data paths resolve against it
