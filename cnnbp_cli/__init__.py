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

Names are loaded on first use: ``import cnnbp.app`` (the command line) must not import NumPy before
it has pinned the BLAS threads.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: the library's names and the modules that define them (the engine's come from cnnbp.core)
_NAMES = {
    "train": "cnnbp.api",
    "resume": "cnnbp.api",
    "gradcheck": "cnnbp.checking",
    "GradcheckReport": "cnnbp.checking",
    "Checkpoint": "cnnbp.checkpoint",
    "read_checkpoint": "cnnbp.checkpoint",
    "GradcheckResult": "cnnbp.core.gradcheck",
    "TensorCheck": "cnnbp.core.gradcheck",
    "Diverged": "cnnbp.core.trainer",
    "UserError": "cnnbp.errors",
    "InternalError": "cnnbp.errors",
    "export": "cnnbp.exporting",
    "evaluate": "cnnbp.evaluating",
    "Evaluation": "cnnbp.evaluating",
    "predict": "cnnbp.predicting",
    "Prediction": "cnnbp.predicting",
    "check_layer": "cnnbp.layercheck",
    "LayerCheckReport": "cnnbp.layercheck",
    "load_plugin": "cnnbp.plugins",
    "plot": "cnnbp.plotting",
    "Callback": "cnnbp.runner",
    "Interrupted": "cnnbp.runner",
    "StepInfo": "cnnbp.runner",
    "Run": "cnnbp.runs",
    "load_run": "cnnbp.runs",
    "sweep": "cnnbp.sweeping",
    "trace": "cnnbp.tracing",
    "TraceReport": "cnnbp.tracing",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from cnnbp.api import resume, train  # noqa: F401
    from cnnbp.checking import GradcheckReport, gradcheck  # noqa: F401
    from cnnbp.checkpoint import Checkpoint, read_checkpoint  # noqa: F401
    from cnnbp.core import *  # noqa: F401, F403
    from cnnbp.core.gradcheck import GradcheckResult, TensorCheck  # noqa: F401
    from cnnbp.core.trainer import Diverged  # noqa: F401
    from cnnbp.errors import InternalError, UserError  # noqa: F401
    from cnnbp.evaluating import Evaluation, evaluate  # noqa: F401
    from cnnbp.exporting import export  # noqa: F401
    from cnnbp.layercheck import LayerCheckReport, check_layer  # noqa: F401
    from cnnbp.plotting import plot  # noqa: F401
    from cnnbp.plugins import load_plugin  # noqa: F401
    from cnnbp.predicting import Prediction, predict  # noqa: F401
    from cnnbp.runner import Callback, Interrupted, StepInfo  # noqa: F401
    from cnnbp.runs import Run, load_run  # noqa: F401
    from cnnbp.sweeping import sweep  # noqa: F401
    from cnnbp.tracing import TraceReport, trace  # noqa: F401


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnnbp")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.2.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name == "__all__":
        value = [*import_module("cnnbp.core").__all__, *_NAMES, "__version__"]
    elif name in _NAMES:
        value = getattr(import_module(_NAMES[name]), name)
    else:
        engine = import_module("cnnbp.core")
        if name not in engine.__all__:
            raise AttributeError(f"module 'cnnbp' has no attribute {name!r}")
        value = getattr(engine, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
