"""Run configs: YAML → the schema → a typed :class:`RunConfig` → core objects (strings end here).

``load_config`` reads a file and applies ``--set KEY=VALUE`` overrides and CLI flags to the raw dict;
``config_from_dict`` validates it once, with the one schema (:mod:`cnnbp.config_schema`), then fills
in what follows from the engine (layer names, initialisers, an activation's own layer) and checks
the shapes through ``core``; ``build_network`` / ``build_loss`` / ``build_optimizer`` make the core
objects.  Every problem a user can cause is one :class:`~cnnbp.errors.UserError` whose one-line
message starts with the key path (``model.layers[2].kernel``), the override (``--set foo``) or the
file path, then a colon and the problem.

``RunConfig.resolved`` is the config with every default filled in; ``dump_config`` writes it as YAML
that loads back to the same ``RunConfig``.  Relative ``data.path`` and ``model.init_from`` are made
absolute there (against the config file's folder, or the current directory for ``--set`` values), so
a copy of the resolved config stored in a run folder still points at the same files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from pydantic import ValidationError

from cnnbp import memory
from cnnbp.config_schema import (
    DIVERGENCE_FACTOR,
    MAX_NAME,
    MAX_SEED,
    WEIGHT,
    first_error,
    parametric,
    schema_model,
    show,
)
from cnnbp.core.errors import ShapeError
from cnnbp.core.hyper import hyper_params
from cnnbp.core.init import SCHEMES, Constant, Explicit, Initializer
from cnnbp.core.layers import Layer
from cnnbp.core.losses import LOSSES, Loss
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.core.optim import OPTIMIZERS, Optimizer
from cnnbp.core.parallel import Threads
from cnnbp.core.registry import LAYERS
from cnnbp.core.schedules import SCHEDULES, Schedule
from cnnbp.core.trainer import EVAL_BATCH
from cnnbp.data import PATH_SOURCES, DataSpec
from cnnbp.errors import UserError
from cnnbp.plugins import load_plugins, plugin_specs
from cnnbp.yamlio import absolute, apply_override, dump_yaml, read_yaml, unshare

__all__ = [
    "LayerSpec",
    "ModelSpec",
    "RecordSpec",
    "RunConfig",
    "TrainSpec",
    "build_loss",
    "build_network",
    "build_optimizer",
    "build_schedule",
    "check_memory",
    "check_model",
    "config_from_dict",
    "default_config_path",
    "dump_config",
    "load_config",
]


# ---- the typed config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One entry of ``model.layers`` after validation.

    ``hyper`` holds the layer class's constructor arguments with defaults filled in; ``init`` maps each
    parameter to a scheme name, a constant or explicit values (nested lists); ``activation`` adds a
    separate activation layer named ``<name>.<activation>``; ``path`` is the key path in the YAML
    (``model.layers[2]``), for messages.
    """

    type: str
    name: str
    hyper: dict[str, Any] = field(default_factory=dict)
    activation: str | None = None
    init: dict[str, Any] = field(default_factory=dict)
    path: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """The ``model`` section: input shape, layers in order, and where initial weights come from."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    init_from: str | None = None


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """``train.early_stopping``: stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs."""

    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0


@dataclass(frozen=True)
class TrainSpec:
    """The ``train`` section: the loop's settings, the optimiser's name and its hyper-parameters, the
    learning-rate schedule (``{type, ...}`` or None) and early stopping (or None)."""

    epochs: int = 10
    batch_size: int = 32
    threads: Threads = "auto"  # shards per batch, or "auto" (cnnbp.core.parallel.shard_count)
    optimizer: str = "sgd"
    hyper: dict[str, Any] = field(default_factory=lambda: {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    shuffle: bool = True
    divergence_factor: float | None = DIVERGENCE_FACTOR
    schedule: dict[str, Any] | None = None
    early_stopping: EarlyStoppingSpec | None = None

    @property
    def lr(self) -> float:
        return float(self.hyper["lr"])


@dataclass(frozen=True)
class RecordSpec:
    """The ``record`` section: probe samples per checkpoint, a checkpoint every ``every`` epochs, the
    metric that makes an epoch the best (``monitor``) and the checkpoints kept on disk (``keep``:
    ``all``, ``best`` or ``last-K``)."""

    probe: int = 8
    every: int = 1
    monitor: str = "val_loss"
    keep: str = "all"
    tensorboard: bool = False  # also write TensorBoard event files as the run trains


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


def default_config_path() -> Path:
    """The packaged default config, ``cnnbp/configs/digits.yaml``."""
    return Path(__file__).resolve().parent / "configs" / "digits.yaml"


def _fail(place: str, problem: str) -> NoReturn:
    raise UserError(f"{place}: {problem}")


def _default_name(source: str) -> str:
    """The config file's stem made into a safe name; ``run`` when there is no file."""
    if not source or source.startswith("<"):
        return "run"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).stem)
    stem = re.sub(r"\.{2,}", ".", stem).strip("-.")[:MAX_NAME]
    return stem or "run"


# ---- reading ------------------------------------------------------------------------------------------


def load_config(
    path: Path | None,
    overrides: Sequence[str] = (),
    *,
    name: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    plugins: Sequence[str] = (),
) -> RunConfig:
    """Read a YAML config (``None``: the packaged default), apply overrides and flags, validate.

    ``overrides`` are ``KEY=VALUE`` strings (dotted keys, ``[i]`` or ``.i`` list indices, VALUE parsed
    as YAML) applied to the raw dict before validation; then ``name``, ``epochs`` (``train.epochs``)
    and ``seed`` replace their keys.  The default name is the file's stem.
    """
    path = default_config_path() if path is None else Path(path).expanduser()
    raw = read_yaml(path)
    for text in overrides:
        apply_override(raw, text)
    if name is not None:
        raw["name"] = name
    if seed is not None:
        raw["seed"] = seed
    if epochs is not None:
        train = raw.get("train")
        if train is None:
            train = raw["train"] = {}
        if not isinstance(train, dict):
            _fail("train", f"expected a mapping of keys, got {show(train)}")
        train["epochs"] = epochs
    return config_from_dict(raw, source=str(path), base_dir=path.parent, plugins=plugins)


# ---- validation ---------------------------------------------------------------------------------------


def config_from_dict(
    raw: Any, *, source: str = "<config>", base_dir: Path | None = None, plugins: Sequence[str] = ()
) -> RunConfig:
    """Validate a raw config dict, fill in defaults and check the model's shapes.

    ``source`` names the config in messages about the whole document and gives the default name (its
    file stem); ``base_dir`` is the folder relative paths resolve against.  The plugins the config
    names (``plugins:``, relative to ``base_dir``) and ``plugins`` (``--plugin``, relative to the
    current folder) are loaded first, so their layers can be used.  Raises UserError.
    The memory budget is not checked here (it depends on the machine): see :func:`check_model`.
    """
    if not isinstance(raw, dict):
        _fail(source, f"the top level must be a mapping (name, data, model, ...), got {show(raw)}")
    loaded = load_plugins(plugin_specs(raw.get("plugins")), base_dir)
    loaded += [p for p in load_plugins((spec, None) for spec in plugins) if p not in loaded]
    try:
        valid = schema_model().model_validate(raw)
    except ValidationError as e:
        place, problem = first_error(e)
        _fail(place or source, problem)
    except RecursionError:
        _fail(source, "nested too deeply")
    if valid.seed > MAX_SEED:
        _fail("seed", f"at most 2^63 − 1 (checkpoints store it as a 64-bit integer), got {valid.seed}")
    name = valid.name if valid.name is not None else _default_name(source)
    data, data_raw = _data(valid.data, base_dir)
    model, model_raw = _model(valid.model, base_dir)
    train, train_raw = _train(valid.train)
    r = valid.record
    record = RecordSpec(
        probe=r.probe, every=r.every, monitor=r.monitor, keep=r.keep, tensorboard=r.tensorboard
    )
    resolved = {
        **({"plugins": [p.record() for p in loaded]} if loaded else {}),
        "name": name,
        "seed": valid.seed,
        "dtype": valid.dtype,
        "data": data_raw,
        "model": model_raw,
        "loss": valid.loss,
        "train": train_raw,
        "record": {"probe": r.probe, "every": r.every, "monitor": r.monitor, "keep": r.keep,
                   "tensorboard": r.tensorboard},
    }
    cfg = RunConfig(name, valid.seed, valid.dtype, data, model, valid.loss, train, record, resolved, base_dir)
    _check_shapes(cfg)
    return cfg


def _data(d: Any, base_dir: Path | None) -> tuple[DataSpec, dict]:
    """The data section's cross-key rules (what each source needs and allows), paths made absolute."""
    source = d.source
    path = d.path
    if source in PATH_SOURCES:
        if path is None:
            _fail("data.path", f"required for source {source!r}")
        path = absolute(path, base_dir)
    elif path is not None:
        _fail("data.path", f"not used by source {source!r}; remove it")
    keys = None
    if d.keys is not None:
        if source != "hdf5":
            _fail("data.keys", f"only used by source 'hdf5', not {source!r}; remove it")
        keys = {k: v for k, v in d.keys.model_dump().items() if v is not None}
    inline: dict[str, list | None] = {"x": None, "y": None}
    for k in ("x", "y"):
        value = getattr(d, k)
        if source != "inline":
            if value is not None:
                _fail(f"data.{k}", f"only used by source 'inline', not {source!r}; remove it")
        elif value is None:
            _fail(f"data.{k}", "required for source 'inline'")
        else:
            inline[k] = unshare(list(value), f"data.{k}")
    spec = DataSpec(source=source, path=path, scale=d.scale, val_fraction=d.val_fraction, limit=d.limit,
                    keys=keys, **inline)  # fmt: skip
    resolved: dict[str, Any] = {
        "source": source, "path": path, "scale": d.scale, "val_fraction": d.val_fraction, "limit": d.limit
    }  # fmt: skip
    if source == "hdf5":
        resolved["keys"] = keys
    if source == "inline":
        resolved["x"], resolved["y"] = unshare(inline["x"], "data.x"), unshare(inline["y"], "data.y")
    return spec, resolved


def _train(t: Any) -> tuple[TrainSpec, dict]:
    given = t.model_dump()
    opt = OPTIMIZERS[given["optimizer"]]
    hyper = {p.name: _plain(given[p.name]) for p in hyper_params(opt)}
    stopping = given["early_stopping"]
    spec = TrainSpec(
        epochs=given["epochs"], batch_size=given["batch_size"], threads=given["threads"],
        optimizer=given["optimizer"], hyper=hyper,
        shuffle=given["shuffle"], divergence_factor=given["divergence_factor"], schedule=given["schedule"],
        early_stopping=EarlyStoppingSpec(**stopping) if stopping is not None else None,
    )  # fmt: skip
    return spec, {k: _plain(v) for k, v in given.items()}


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


# ---- the model section --------------------------------------------------------------------------------


def _model(m: Any, base_dir: Path | None) -> tuple[ModelSpec, dict]:
    init_from = absolute(m.init_from, base_dir) if m.init_from is not None else None
    entries = m.layers
    made: list[tuple[LayerSpec, Layer, Any, str | None]] = []
    owners: dict[str, str] = {}  # core layer name → the entry that made it, for duplicate messages
    for i, entry in enumerate(entries):
        following = _following_kind(entry, entries[i + 1] if i + 1 < len(entries) else None)
        spec, layer = _layer(entry, i)
        _claim_names(spec, entry.name is not None, owners)
        made.append((spec, layer, entry, following))
    shapes = _param_shapes(m.input_shape, made)
    specs = tuple(
        _with_init(spec, layer, entry, following, shapes[spec.name]) for spec, layer, entry, following in made
    )
    model = ModelSpec(input_shape=m.input_shape, layers=specs, init_from=init_from)
    resolved = {"input_shape": list(m.input_shape), "init_from": init_from,
                "layers": [_resolved_layer(s) for s in specs]}  # fmt: skip
    return model, resolved


def _claim_names(spec: LayerSpec, given: bool, owners: dict[str, str]) -> None:
    """Record the core layer names an entry makes; a name used twice is an error naming both entries."""
    made = [spec.name] + ([f"{spec.name}.{spec.activation}"] if spec.activation else [])
    for core_name in made:
        if core_name in owners:
            where = f"{spec.path}.name" if given else spec.path
            what = "name" if given else "default name"
            hint = "" if given else "; give this layer a name"
            _fail(where, f"{what} {core_name!r} is already used by {owners[core_name]}{hint}")
        owners[core_name] = spec.path + (" (its activation)" if core_name != spec.name else "")


def _following_kind(entry: Any, nxt: Any) -> str | None:
    """The kind of the layer right after ``entry``'s own layer: its activation, else the next entry."""
    own = getattr(entry, "activation", None)
    if own is not None:
        return own
    return nxt.type if nxt is not None else None


def _layer(entry: Any, i: int) -> tuple[LayerSpec, Layer]:
    """One layer entry (initialisers not yet resolved) and its core layer: the hyper-parameters as the
    class resolves them, its name."""
    path = f"model.layers[{i}]"
    kind = entry.type
    cls = LAYERS[kind]
    name = entry.name if entry.name is not None else f"{kind}{i + 1}"
    given = {p.name: getattr(entry, p.name) for p in hyper_params(cls)}
    layer = _make(cls, given, name, path)
    # not given and None by default: the class fills it in (a pool's stride = its size)
    built = layer.hyper()
    hyper = {k: (built.get(k) if v is None else _plain(v)) for k, v in given.items()}
    hyper = {k: v for k, v in hyper.items() if v is not None}
    activation = getattr(entry, "activation", None)
    return LayerSpec(type=kind, name=name, hyper=hyper, activation=activation, path=path), layer


def _param_shapes(input_shape: tuple[int, ...], made: list) -> dict[str, dict[str, tuple[int, ...]]]:
    """Each entry's parameter shapes, by shape inference through the core layers (a user's layer names
    its parameters only there); ShapeError → UserError at the entry's key path."""
    layers: list[Layer] = []
    path_of: dict[str, str] = {}
    for spec, layer, _, _ in made:
        layers.append(layer)
        path_of[layer.name] = spec.path
        if spec.activation:
            act = LAYERS[spec.activation](name=f"{spec.name}.{spec.activation}")
            layers.append(act)
            path_of[act.name] = spec.path
    _check_sizes(input_shape, layers, path_of)
    try:
        infos = Sequential(layers, input_shape).summary()
    except ShapeError as e:
        place = "model.input_shape" if e.layer == "input" else path_of.get(e.layer, "model.layers")
        raise UserError(f"{place}: {e.detail}") from e
    except Exception as e:  # noqa: BLE001 - a user's layer may raise anything from output_shape
        raise UserError(f"model.layers: shape inference failed ({type(e).__name__}: {e})") from None
    return {info.name: info.param_shapes for info in infos}


def _with_init(spec: LayerSpec, layer: Layer, entry: Any, following: str | None,
               shapes: dict[str, tuple[int, ...]]) -> LayerSpec:  # fmt: skip
    """``spec`` with every parameter's initialiser: the entry's ``init`` (a bare scheme is for the
    weight, the first parameter), else the class's default, the weight following the next layer's
    ``init_before`` (he_normal before a relu)."""
    names = list(shapes)
    given = dict(getattr(entry, "init", None) or {})
    if WEIGHT in given:
        if not names:
            _fail(f"{spec.path}.init", f"a {spec.type} layer has no parameters to initialise")
        given[names[0]] = given.pop(WEIGHT)
    for key in given:
        if key not in names:
            allowed = ", ".join(names) or "none"
            _fail(
                f"{spec.path}.init.{key}", f"unknown key for a {spec.type} layer's init (allowed: {allowed})"
            )
    defaults = {k: _init_spec(v) for k, v in layer.default_init().items()}
    if names and not defaults:
        defaults = {names[0]: "glorot_uniform"}
    before = LAYERS[following].init_before if following in LAYERS else None
    # a weight that starts at a constant (batchnorm's γ = 1) is no random draw to adapt to the relu
    if names and before is not None and not isinstance(layer.default_init().get(names[0]), Constant):
        defaults[names[0]] = before
    init = {p: given.get(p, defaults.get(p, "zeros")) for p in names}
    return replace(spec, init=init)


def _make(cls: type[Layer], hyper: Mapping[str, Any], name: str, path: str) -> Layer:
    """The core layer, a ShapeError from its constructor reported at the entry's key."""
    try:
        return cls.from_hyper({k: v for k, v in hyper.items() if v is not None}, name=name)
    except ShapeError as e:
        _fail(f"{path}.{e.key}" if e.key else path, e.detail)
    except Exception as e:  # noqa: BLE001 - a user's layer may raise anything from its constructor
        _fail(
            path, f"the {cls.kind} layer's constructor raised {type(e).__name__}: {' '.join(str(e).split())}"
        )


def _resolved_layer(spec: LayerSpec) -> dict[str, Any]:
    resolved: dict[str, Any] = {"type": spec.type, "name": spec.name, **spec.hyper}
    if parametric(LAYERS[spec.type]):
        resolved["activation"] = spec.activation
        resolved["init"] = {k: unshare(v, spec.path) for k, v in spec.init.items()}
    return resolved


def _init_spec(init: Initializer) -> Any:
    """An initialiser as the config writes it: a scheme name, a constant, or nested lists."""
    if isinstance(init, Constant):
        return init.value
    if isinstance(init, Explicit):
        return init.values.tolist()
    return init.name


def _initializer(value: Any) -> Initializer:
    if isinstance(value, str):
        return SCHEMES[value]()
    if isinstance(value, (int, float)):
        return Constant(value)
    return Explicit(value)


# ---- core objects -------------------------------------------------------------------------------------


def _place_of(cfg: RunConfig, layer: str) -> str:
    """The key path of the entry that made core layer ``layer`` (activations belong to their parent)."""
    if layer == "input":
        return "model.input_shape"
    for spec in cfg.model.layers:
        if layer == spec.name or (spec.activation and layer == f"{spec.name}.{spec.activation}"):
            return spec.path
    return "model.layers"


def build_network(cfg: RunConfig) -> Sequential:
    """The core network of ``cfg``, with initialisers attached but not built (call ``.build(rng, dtype)``)."""
    try:
        layers: list[Layer] = []
        for spec in cfg.model.layers:
            init = {k: _initializer(v) for k, v in spec.init.items()}
            layers.append(LAYERS[spec.type].from_hyper(spec.hyper, name=spec.name, init=init))
            if spec.activation:
                layers.append(LAYERS[spec.activation](name=f"{spec.name}.{spec.activation}"))
        return Sequential(layers, cfg.model.input_shape)
    except ShapeError as e:
        raise UserError(f"{_place_of(cfg, e.layer)}{'.' + e.key if e.key else ''}: {e.detail}") from e


def build_loss(cfg: RunConfig) -> Loss:
    return LOSSES[cfg.loss]()


def build_optimizer(cfg: RunConfig) -> Optimizer:
    """The optimiser ``train.optimizer`` names, with its hyper-parameters from ``train``."""
    return OPTIMIZERS[cfg.train.optimizer].from_hyper(cfg.train.hyper)


def build_schedule(cfg: RunConfig) -> Schedule | None:
    """The learning-rate schedule ``train.schedule`` names (None without one)."""
    given = cfg.train.schedule
    if given is None:
        return None
    return SCHEDULES[given["type"]](**{k: v for k, v in given.items() if k != "type"})


#: the most values one sample may have at a layer's input or output: beyond any memory, and far enough
#: below 2^63 that no size computed from shapes (in NumPy's int64 too) can overflow
MAX_VALUES = 2**40


def _check_sizes(input_shape: tuple[int, ...], layers: Sequence[Layer], place_of: Mapping[str, str]) -> None:
    """UserError at the first layer whose per-sample output (or the input) has more than
    :data:`MAX_VALUES` values, found with Python's integers before anything multiplies shapes in int64
    (``padding: 1000000000000`` once gave an output size of −2416598432054378464).  ``place_of`` maps a
    layer's name to its key path."""
    shape, place = tuple(input_shape), "model.input_shape"
    for layer in [None, *layers]:
        sizes = {"the input": shape}
        if layer is not None:
            try:
                sizes = {f"its parameter {k}": tuple(v) for k, v in layer.param_shapes(shape).items()}
                shape = sizes["its output"] = tuple(layer.output_shape(shape))
            except Exception:  # noqa: BLE001 - the shape error itself is reported by summary()
                return
            place = place_of.get(layer.name, "model.layers")
        for what, size in sizes.items():
            n = math.prod(int(s) for s in size)
            if n > MAX_VALUES:
                per = " per sample" if what in ("the input", "its output") else ""
                _fail(place, f"{what} {_fmt_shape(size)} has {n:.3g} values{per}, more than cnnbp can hold "
                             "(2^40); use smaller sizes")  # fmt: skip
        if any(int(s) < 1 for s in shape):
            return


def _check_shapes(cfg: RunConfig) -> list[LayerInfo]:
    """Shape inference through core, explicit init shapes, and a vector output."""
    net = build_network(cfg)
    try:
        infos = net.summary()
    except ShapeError as e:
        raise UserError(f"{_place_of(cfg, e.layer)}: {e.detail}") from e
    by_name = {info.name: info for info in infos}
    for spec in cfg.model.layers:
        for key, value in spec.init.items():
            if isinstance(value, list):
                got, want = np.shape(value), by_name[spec.name].param_shapes[key]
                if tuple(got) != tuple(want):
                    _fail(f"{spec.path}.init.{key}", f"shape {_fmt_shape(got)}, expected {_fmt_shape(want)}")
    out = infos[-1].output_shape
    if len(out) != 1:
        _fail(
            "model.layers",
            f"the network ends in a {_fmt_shape(out)} map, but the loss needs a vector per sample; "
            "end it with a flatten and a dense layer",
        )
    if cfg.loss == "softmax_cross_entropy" and out[0] < 2:
        _fail(
            "model.layers",
            f"the network has {out[0]} output but softmax_cross_entropy needs at least 2 (one per class)",
        )
    return infos


def _fmt_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape) if len(shape) else "()"


def _memory_budget() -> int | None:
    """Bytes this process can still allocate (:func:`cnnbp.memory.available`); None where unknown."""
    return memory.available()


#: what a step needs beside its arrays, whatever their size: the interpreter's and BLAS's working memory
STEP_OVERHEAD = 64 * 2**20
#: what each thread beyond the first reserves (its stack, its malloc arena, OpenBLAS's buffer): address
#: space, counted only where ``ulimit -v`` limits it (it is hardly memory in use)
THREAD_OVERHEAD = 128 * 2**20
#: the phases of a run whose peaks are estimated, the key each message names and what to change there
_PHASES = {
    "train": ("model", "training in batches of {n}", "use a smaller model or train.batch_size"),
    "evaluate": ("model", "evaluation ({n} samples at once)",
                 "use a smaller model (evaluation runs batches of at least 256)"),
    "probe": ("record.probe", "recording {n} probe samples at every checkpoint",
              f"lower record.probe (default {RecordSpec.probe})"),
}  # fmt: skip


def memory_need(
    cfg: RunConfig, infos: list[LayerInfo], n_train: int | None = None, n_val: int | None = None
) -> dict[str, tuple[int, int]]:
    """``{phase: (bytes, samples)}`` at the peak of each phase of a run, beyond the data arrays.

    ``train``: one batch forward and backward; ``evaluate``: the validation batches in flight (one per
    shard of a batch cut for threads; one batch without ``n_val``); ``probe``: the probe batch
    (``min(record.probe, n_train)``; 0 without ``n_train``) with delta recording and its checkpoint
    built in memory.  Each counts the parameters (values, gradients and optimiser state, ×4, and values
    and gradients of every extra shard's replica) and fixed overheads (:data:`STEP_OVERHEAD`, and
    :data:`THREAD_OVERHEAD` per extra shard under ``ulimit -v``).  Per sample, in the run's dtype:
    training and evaluation 3 per value of the input and of every layer's output (the forward value,
    the delta, a temporary) and 2 per scratch value (a conv's im2col columns, kept for backward, and
    their delta); the probe 12 per value (the same, the recorded deltas and outputs, and the
    checkpoint's copies of them: HDF5's image and the file's bytes) and 2 per scratch value.  The
    peaks measured (VmHWM) of the largest phase of the shipped configs (digits, dlt_mnist, lenet5;
    float32 and float64) are 0.2 to 0.6 of these.
    """
    from cnnbp.core.parallel import shard_count

    itemsize = np.dtype(cfg.dtype).itemsize
    net = build_network(cfg)
    values = math.prod(cfg.model.input_shape) + sum(math.prod(info.output_shape) for info in infos)
    scratch = sum(layer.scratch_size(info.input_shape) for layer, info in zip(net.layers, infos, strict=True))
    bs = cfg.train.batch_size
    try:
        shards = shard_count(getattr(cfg.train, "threads", "auto"), net, bs)
    except Exception:  # noqa: BLE001 - a user's layer that cannot say: one shard
        shards = 1
    params = itemsize * sum(info.n_params for info in infos) * (4 + 2 * (shards - 1))
    params += STEP_OVERHEAD + (THREAD_OVERHEAD * (shards - 1) if memory.address_space_limited() else 0)
    # before the data is read (n_val None) the least it can be: one batch; then one per shard at most
    in_flight = max(bs, EVAL_BATCH) if n_val is None else min(n_val, shards * max(bs, EVAL_BATCH))
    probe = 0 if n_train is None else min(cfg.record.probe, n_train)
    per_sample = itemsize * (3 * values + 2 * scratch)
    return {
        "train": (params + bs * per_sample, bs),
        "evaluate": (params + in_flight * per_sample, in_flight),
        "probe": (params + probe * itemsize * (12 * values + 2 * scratch), probe),
    }


def check_memory(
    cfg: RunConfig, infos: list[LayerInfo], n_train: int | None = None, n_val: int | None = None
) -> None:
    """UserError when the phase of a run that needs the most memory (:func:`memory_need`) needs more
    than this process can still allocate; the message names the key to change."""
    budget = _memory_budget()
    if budget is None:
        return
    need = memory_need(cfg, infos, n_train, n_val)
    phase = max(need, key=lambda k: need[k][0])
    place, what, fix = _PHASES[phase]
    if phase == "evaluate" and cfg.train.batch_size >= EVAL_BATCH:  # its batches are train.batch_size
        fix = _PHASES["train"][2]
    memory.check_fits(need[phase][0], place, what.format(n=need[phase][1]), fix, budget)


def check_model(cfg: RunConfig) -> list[LayerInfo]:
    """The model summary (one row per core layer), or a UserError naming the key path at fault.

    Beyond :func:`config_from_dict`'s shape checks, rejects a model whose training or evaluation would
    need more memory than this process can still allocate (:func:`check_memory`; the probe batch is
    checked once the data's size is known).
    """
    infos = _check_shapes(cfg)
    check_memory(cfg, infos)
    return infos


def dump_config(cfg: RunConfig) -> str:
    """YAML text of ``cfg.resolved``; ``load_config`` of it gives back the same config."""
    return dump_yaml(cfg.resolved)
