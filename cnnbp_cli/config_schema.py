"""The config schema: pydantic models of the YAML format, built from the engine's own declarations.

One schema validates every config at the boundary and gives the JSON Schema (``cnnbp schema``).
Its parts come from where the facts live: a layer entry's keys are the layer class's constructor
arguments (:mod:`cnnbp.core.hyper`), one model per registered kind; ``train``'s keys are the chosen
optimiser's arguments; ``loss`` and ``data.source`` are the loss table and the data sources.  Values
are checked by the engine's :func:`~cnnbp.core.hyper.conform` against the same annotations, so the
config and the engine accept exactly the same things.

Errors are raised as pydantic errors of type ``cnnbp`` whose context holds the finished one-line
message and, where the problem is a key of a mapping, that key: :func:`first_error` turns the first
one into ``<key path>: <problem>`` (``model.layers[2].kernel: expected an integer ≥ 1 or a pair
[h, w] of them, got [3]``).  Unknown keys suggest the closest allowed one.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cnnbp.core.hyper import (
    Bound,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    alternatives,
    conform,
    describe,
    hyper_params,
)
from cnnbp.core.init import SCHEMES
from cnnbp.core.losses import LOSSES
from cnnbp.core.optim import OPTIMIZERS, Rate
from cnnbp.core.registry import LAYERS
from cnnbp.core.schedules import SCHEDULES
from cnnbp.data import SOURCES, SPLIT_KEYS

DTYPES = ("float32", "float64")
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME = 100
#: the largest seed: checkpoints store it as a signed 64-bit integer
MAX_SEED = 2**63 - 1


# ---- words ---------------------------------------------------------------------------------------------


def show(value: Any, limit: int = 60) -> str:
    """A value as the user would recognise it from YAML, on one short line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        text = "a mapping {" + ", ".join(str(k) for k in value) + "}"
    elif isinstance(value, (list, tuple)):
        text = repr(list(value))
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def suggest(word: object, options: Sequence[str]) -> str | None:
    """The closest option to ``word`` (case-insensitive), if any is close."""
    if not isinstance(word, str):
        return None
    lower = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=0.6)
    return lower[match[0]] if match else None


def problem(message: str, key: str | None = None) -> PydanticCustomError:
    """A schema error carrying its finished message (and the key of a mapping it is about)."""
    return PydanticCustomError("cnnbp", "{message}", {"message": message, "key": key})


def choice_message(value: Any, choices: Sequence[str]) -> str:
    guess = suggest(value, choices)
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return f"must be one of {', '.join(choices)}, got {show(value)}{hint}"


# ---- values: checked against an engine annotation ------------------------------------------------------


def _literal_choices(annotation: Any) -> list[str] | None:
    """The choices of a ``Literal[...]`` (optionally ``| None``), else None."""
    args = [a for a in (get_args(annotation) if get_origin(annotation) is Union else [annotation])]
    lits = [a for a in args if get_origin(a) is Literal]
    if len(lits) == 1 and all(a is type(None) or a is lits[0] for a in args):
        return [str(c) for c in get_args(lits[0])]
    return None


def check_value(annotation: Any) -> Callable[[Any], Any]:
    """A validator: ``value`` conformed to ``annotation``, or a schema error wording the annotation."""
    choices = _literal_choices(annotation)

    def validate(value: Any) -> Any:
        try:
            return conform(value, annotation)
        except ValueError:
            if choices is not None:
                raise problem(choice_message(value, choices)) from None
            raise problem(f"expected {describe(annotation)}, got {show(value)}") from None

    return validate


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of an engine annotation (ints, numbers with bounds, pairs, choices, null)."""
    alts = [_json_one(kind, bound) for kind, bound in alternatives(annotation)]
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def _json_one(kind: Any, bound: Bound | None) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if bound is not None:
        for ours, theirs in (
            ("ge", "minimum"),
            ("gt", "exclusiveMinimum"),
            ("le", "maximum"),
            ("lt", "exclusiveMaximum"),
        ):
            if getattr(bound, ours) is not None:
                limits[theirs] = getattr(bound, ours)
    if kind is type(None):
        return {"type": "null"}
    if kind is bool:
        return {"type": "boolean"}
    if kind is int:
        return {"type": "integer", **limits}
    if kind is float:
        return {"type": "number", **limits}
    if kind is str:
        return {"type": "string"}
    if get_origin(kind) is Literal:
        return {"enum": list(get_args(kind))}
    if get_origin(kind) is tuple:
        items = [json_schema(t) for t in get_args(kind)]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    return {}


def Value(annotation: Any, doc: str = "") -> Any:  # noqa: N802 - reads as a type in a model
    """A field type: any input, checked by the engine's ``conform`` against ``annotation``."""
    schema = {**json_schema(annotation), "description": (doc + "; " if doc else "") + describe(annotation)}
    return Annotated[Any, AfterValidator(check_value(annotation)), WithJsonSchema(schema)]


def Custom(check: Callable[[Any], Any], schema: dict[str, Any], nullable: bool = False) -> Any:  # noqa: N802
    """A field type checked by ``check`` (which raises :func:`problem`), with its JSON Schema;
    ``nullable``: null is accepted as it is (no union, so an error keeps a plain key path)."""
    if nullable:
        inner = check

        def check(value: Any) -> Any:
            return None if value is None else inner(value)

        schema = {"anyOf": [schema, {"type": "null"}]}
    return Annotated[Any, AfterValidator(check), WithJsonSchema(schema)]


# ---- mappings: unknown keys, missing keys, not a mapping ---------------------------------------------


class Section(BaseModel):
    """A mapping of the format: unknown keys are errors naming the closest allowed key.

    ``what`` words what the mapping should look like (for a value that is not one); ``owner`` names
    the thing the keys belong to in the unknown-key message (``a pool layer``); ``required``
    words each required key's expected value; ``nullable``: null stands for all defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    what: ClassVar[str] = "a mapping of keys"
    owner: ClassVar[str] = ""
    required: ClassVar[dict[str, str]] = {}
    nullable: ClassVar[bool] = False
    #: keys of other sections that the unknown-key message may suggest (``epochs`` → ``train.epochs``)
    elsewhere: ClassVar[dict[str, str]] = {}
    #: keys that belong to another variant: the whole message for each (``only used with ...``)
    misplaced: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        if data is None and cls.nullable:
            return {}
        if not isinstance(data, dict):
            raise problem(f"expected {cls.what}, got {show(data)}")
        allowed = list(cls.model_fields)
        for key in data:
            if not isinstance(key, str):
                raise problem("keys must be names (strings)", show(key))
            if key not in allowed:
                raise problem(cls.unknown_key(key, allowed), key)
        for key, words in cls.required.items():
            if data.get(key) is None:
                raise problem(f"required{words}", key)
        return data

    @classmethod
    def unknown_key(cls, key: str, allowed: list[str]) -> str:
        if key in cls.misplaced:
            return cls.misplaced[key]
        guess = suggest(key, allowed) or cls.elsewhere.get(key)
        if guess is not None:
            return f"unknown key (did you mean {guess!r}?)"
        owner = f" for {cls.owner}" if cls.owner else ""
        return f"unknown key{owner} (allowed: {', '.join(allowed)})"


# ---- special values ------------------------------------------------------------------------------------


def check_name(value: Any) -> str:
    """A run or layer name: usable as a folder and an HDF5 group name."""
    if not isinstance(value, str):
        raise problem(f"expected a name (a string; quote numbers), got {show(value)}")
    if not value:
        raise problem("must not be empty")
    if not SAFE_NAME.fullmatch(value):
        raise problem(f"{value!r} may only use letters, digits, '.', '_' and '-'")
    if ".." in value or value == ".":
        raise problem(f"{value!r} may not be '.' or contain '..'")
    if len(value) > MAX_NAME:
        raise problem(f"is {len(value)} characters long, at most {MAX_NAME} allowed")
    return value


NAME_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9._-]+$", "maxLength": MAX_NAME}
Name = Custom(check_name, NAME_SCHEMA, nullable=True)


def check_path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise problem(f"expected a path (a non-empty string), got {show(value)}")
    return value


Path_ = Custom(check_path, {"type": "string", "minLength": 1}, nullable=True)


def check_samples(value: Any) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise problem(f"expected a non-empty list with one entry per sample, got {show(value)}")
    return list(value)


Samples = Custom(check_samples, {"type": "array", "minItems": 1}, nullable=True)


def check_input_shape(value: Any) -> tuple[int, ...]:
    ok = isinstance(value, (list, tuple)) and len(value) in (1, 3)
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in value):
        raise problem(f"expected [C, H, W] or [features] of positive integers, got {show(value)}")
    return tuple(int(s) for s in value)


def check_plugins(value: Any) -> list:
    """``plugins``: paths of plugin files (or module names); a run's resolved config holds
    ``{path, sha256}`` records.  (They are loaded before the rest is validated: see cnnbp.config.)"""
    if not isinstance(value, list):
        raise problem(f"expected a list of plugin files, got {show(value)}")
    return value


_RECORD = {"type": "object", "properties": {"path": {"type": "string"}, "sha256": {"type": "string"}},
           "required": ["path", "sha256"], "additionalProperties": False}  # fmt: skip
Plugins = Custom(
    check_plugins,
    {"type": "array", "items": {"anyOf": [{"type": "string", "minLength": 1}, _RECORD]},
     "description": "Python files (or modules) defining your own layers; relative to this file"},
    nullable=True,
)  # fmt: skip

InputShape = Custom(
    check_input_shape,
    {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 3,
     "description": "[C, H, W] for images or [features] for vectors"},
)  # fmt: skip


# ---- init: a scheme, a constant, explicit values, or a mapping per parameter ---------------------------

_INIT_VALUE_SCHEMA = {"anyOf": [{"enum": list(SCHEMES)}, {"type": "number"}, {"type": "array"}]}


def init_value(value: Any, key: str | None = None) -> Any:
    """One parameter's initialiser: a scheme name, a finite constant (float) or nested lists (floats)."""
    if isinstance(value, str):
        if value not in SCHEMES:
            guess = suggest(value, list(SCHEMES))
            hint = f" (did you mean {guess!r}?)" if guess else ""
            raise problem(
                f"unknown scheme {value!r}{hint}; use {', '.join(SCHEMES)}, a number or nested lists", key
            )
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise problem(f"expected a finite constant, got {show(value)}", key)
        return float(value)
    if isinstance(value, (list, tuple)):
        try:
            _check_leaves(value, key)
        except RecursionError:
            raise problem("nested too deeply", key) from None
        try:
            return np.asarray(value, dtype=np.float64).tolist()
        except ValueError:
            raise problem("ragged nested lists: every row must have the same length", key) from None
    raise problem(
        f"expected a scheme ({', '.join(SCHEMES)}), a number or nested lists, got {show(value)}", key
    )


def _check_leaves(value: Any, key: str | None) -> None:
    for v in value:
        if isinstance(v, (list, tuple)):
            _check_leaves(v, key)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise problem(f"explicit values must be finite numbers, found {show(v)}", key)


#: the key ``init`` of a bare scheme stands under until the layer's parameters are known (its weight)
WEIGHT = "*"


def parametric(cls: type) -> bool:
    """Whether a layer class has parameters: it names them, or computes their shapes."""
    from cnnbp.core.layers.base import Layer

    return bool(cls.param_names) or cls.param_shapes is not Layer.param_shapes


def init_field(kind: str, params: tuple[str, ...]) -> Any:
    """The ``init`` key of a parametric layer: a scheme for the weight, or a mapping per parameter
    (``params`` empty: a user's layer that names its parameters only in ``param_shapes``)."""

    def check(value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            return {WEIGHT: init_value(value)}
        if isinstance(value, dict):
            for key in value:
                if params and key not in params:
                    guess = suggest(key, params)
                    words = (
                        f"unknown key (did you mean {guess!r}?)"
                        if guess
                        else f"unknown key for a {kind} layer's init (allowed: {', '.join(params)})"
                    )
                    raise problem(words, str(key))
            return {k: init_value(v, k) for k, v in value.items()}
        keys = ", ".join(params) or "parameters"
        raise problem(
            f"expected a scheme ({', '.join(SCHEMES)}) or a mapping of {keys} to a scheme, a number or "
            f"nested lists, got {show(value)}"
        )

    per_param = {
        "type": "object",
        "properties": {p: _INIT_VALUE_SCHEMA for p in params},
        "additionalProperties": False,
    }
    schema = {
        "anyOf": [{"enum": list(SCHEMES)}, per_param],
        "description": f"initialisers of {', '.join(params)}",
    }
    return Custom(check, schema, nullable=True)


# ---- layers ------------------------------------------------------------------------------------------


def activation_kinds() -> tuple[str, ...]:
    """The kinds a parametric layer's ``activation:`` may name: element-wise layers that need no
    hyper-parameter."""
    return tuple(
        kind
        for kind, cls in LAYERS.items()
        if cls.elementwise and all(not p.required for p in hyper_params(cls))
    )


def layer_model(kind: str) -> type[Section]:
    """The schema of one ``model.layers[i]`` entry of ``type: kind``, from the class's signature."""
    cls = LAYERS[kind]
    fields: dict[str, Any] = {
        "type": (Literal[kind], Field(description=(cls.__doc__ or kind).strip().splitlines()[0])),
        "name": (Name, None),
    }
    required: dict[str, str] = {}
    for p in hyper_params(cls):
        default = ... if p.required else p.default
        fields[p.name] = (Value(p.annotation), default)
        if p.required:
            required[p.name] = f" for a {kind} layer ({describe(p.annotation)})"
    if parametric(cls):
        acts = activation_kinds()
        fields["activation"] = (
            Value(Literal[acts] | None, "adds the activation as its own layer <name>.<activation>"),
            None,
        )
        fields["init"] = (init_field(kind, cls.param_names), None)
    model = create_model(f"Layer_{kind}", __base__=Section, **fields)
    model.owner = f"a {kind} layer"
    model.what = "a mapping such as {type: conv, filters: 6, kernel: 5}"
    model.required = required
    model.__doc__ = f"A {kind} layer: {cls.__name__}."
    return model


def _layer_tag(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) and isinstance(value.get("type"), str) else None


def layer_union() -> Any:
    """A ``model.layers`` entry: one of the layer models, chosen by ``type``."""
    members = tuple(Annotated[layer_model(kind), Tag(kind)] for kind in LAYERS)
    return Annotated[Union[members], Discriminator(_layer_tag)]  # noqa: UP007 - a runtime tuple of members


# ---- sections -----------------------------------------------------------------------------------------


class Keys(Section):
    """HDF5 dataset names for the splits."""

    what = f"a mapping of {', '.join(SPLIT_KEYS)} to dataset names"
    nullable = True

    x_train: Path_ | None = None
    y_train: Path_ | None = None
    x_test: Path_ | None = None
    y_test: Path_ | None = None


class Data(Section):
    """Where the data comes from and how it is split and scaled."""

    required = {"source": f": one of {', '.join(SOURCES)}"}

    source: Value(Literal[SOURCES], "digits (shipped), npz, idx (MNIST files), hdf5 or inline")
    path: Path_ = None
    scale: Value(PositiveFloat | None, "multiplier applied to the inputs") = None
    val_fraction: Value(Rate, "held out for validation when the source has no test split") = 0.2
    limit: Value(PositiveInt | None, "keep at most this many training samples") = None
    keys: Keys = None
    x: Samples = None
    y: Samples = None


MONITORS = ("val_loss", "val_acc")
#: the default of ``train.divergence_factor``: 100 × the first batch's loss (README, "Divergence")
DIVERGENCE_FACTOR = 100.0
_KEEP = re.compile(r"last-([1-9][0-9]*)")


def check_keep(value: Any) -> str:
    """``record.keep``: ``all``, ``best`` or ``last-K`` (K ≥ 1)."""
    if value in ("all", "best") or (isinstance(value, str) and _KEEP.fullmatch(value)):
        return value
    guess = suggest(value, ["all", "best", "last-3"])
    hint = f" (did you mean {guess!r}?)" if guess else ""
    raise problem(f"must be all, best or last-K with K ≥ 1 (e.g. last-3), got {show(value)}{hint}")


Keep = Custom(
    check_keep,
    {"anyOf": [{"enum": ["all", "best"]}, {"type": "string", "pattern": r"^last-[1-9][0-9]*$"}],
     "description": "checkpoints kept on disk: all, best (and 0 and the last), last-K (and 0 and the best)"},
)  # fmt: skip


class Record(Section):
    """What every checkpoint records, which epoch is the best, which checkpoints stay on disk."""

    nullable = True

    probe: Value(NonNegInt, "samples whose per-layer deltas are saved at every checkpoint") = 8
    every: Value(PositiveInt, "write a checkpoint every N epochs") = 1
    monitor: Value(Literal[MONITORS], "the best epoch has the lowest val_loss or the highest val_acc") = (
        "val_loss"
    )
    keep: Keep = "all"
    tensorboard: Value(bool, "also write TensorBoard event files to the run's tensorboard/ folder") = False


class EarlyStopping(Section):
    """Stop when the monitored metric has not improved by more than min_delta for patience epochs."""

    monitor: Value(Literal[MONITORS], "the metric watched after every epoch") = "val_loss"
    patience: Value(PositiveInt, "epochs without improvement before the run stops") = 5
    min_delta: Value(NonNegFloat, "a smaller change is no improvement") = 0.0


def schedule_model(kind: str) -> type[Section]:
    """The schema of ``train.schedule`` of ``type: kind``, from the schedule class's signature."""
    cls = SCHEDULES[kind]
    doc = (cls.__doc__ or kind).splitlines()[0]
    fields: dict[str, Any] = {"type": (Literal[kind], Field(description=doc))}
    required: dict[str, str] = {}
    for p in hyper_params(cls):
        fields[p.name] = (Value(p.annotation), ... if p.required else p.default)
        if p.required:
            required[p.name] = f" for a {kind} schedule ({describe(p.annotation)})"
    model = create_model(f"Schedule_{kind}", __base__=Section, **fields)
    model.owner = f"a {kind} schedule"
    model.what = "a mapping such as {type: step, step_size: 5, gamma: 0.5}"
    model.required = required
    return model


def _schedule_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)  # a dict or a model
    return kind if isinstance(kind, str) else None


def schedule_union() -> Any:
    members = tuple(Annotated[schedule_model(kind), Tag(kind)] for kind in SCHEDULES)
    return Annotated[Union[members], Discriminator(_schedule_tag)]  # noqa: UP007


_TRAIN_FIRST = {
    "epochs": (Value(PositiveInt, "passes over the training set"), 10),
    "batch_size": (Value(PositiveInt, "samples per update"), 32),
    "threads": (
        Value(
            PositiveInt | Literal["auto"],
            "shards each batch is cut into, computed in parallel; the numbers depend on it, never on the "
            "CPUs (auto: 2 for a large network, else 1)",
        ),
        "auto",
    ),
}
_TRAIN_LAST = {
    "shuffle": (Value(bool, "a new seeded order every epoch"), True),
    "divergence_factor": (
        Value(PositiveFloat | None, "stop when a batch loss exceeds this × the first batch's (null: off)"),
        DIVERGENCE_FACTOR,
    ),
    "schedule": (schedule_union() | None, None),
    "early_stopping": (EarlyStopping | None, None),
}


def train_model(kind: str) -> type[Section]:
    """The ``train`` section with optimiser ``kind``: the common keys and the optimiser's arguments."""
    cls = OPTIMIZERS[kind]
    fields: dict[str, Any] = {
        **_TRAIN_FIRST,
        # required unless it is the default, so a JSON Schema validator can tell the variants apart
        "optimizer": (
            Literal[kind],
            Field(kind if kind == "sgd" else ..., description="the optimiser: " + ", ".join(OPTIMIZERS)),
        ),
    }
    for p in hyper_params(cls):
        fields[p.name] = (Value(p.annotation), p.default)
    fields.update(_TRAIN_LAST)
    model = create_model(f"Train_{kind}", __base__=Section, **fields)
    model.nullable = True
    model.__doc__ = f"Training with {cls.__name__}."
    model.misplaced = {
        p.name: f"only used with optimizer {other}, not {kind}; remove it"
        for other, other_cls in OPTIMIZERS.items()
        if other != kind
        for p in hyper_params(other_cls)
        if p.name not in model.model_fields
    }
    return model


def _train_tag(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("optimizer", "sgd")
        return kind if isinstance(kind, str) else ""
    return "sgd"


def train_union() -> Any:
    members = tuple(Annotated[train_model(kind), Tag(kind)] for kind in OPTIMIZERS)
    return Annotated[Union[members], Discriminator(_train_tag)]  # noqa: UP007


@cache
def _schema(kinds: tuple[str, ...]) -> type[Section]:
    """The whole config's model for these registered layer kinds (rebuilt when users register more)."""
    model_section = create_model(
        "Model",
        __base__=Section,
        input_shape=(InputShape, ...),
        init_from=(Path_, None),
        layers=(Annotated[list[layer_union()], Field(min_length=1)], ...),
    )
    model_section.required = {
        "input_shape": ": [C, H, W] for images or [features] for vectors",
        "layers": ": a list of layers, e.g. - {type: dense, units: 10}",
    }
    model_section.__doc__ = "The network: input shape, layers in order, where initial weights come from."
    top = create_model(
        "Config",
        __base__=Section,
        plugins=(Plugins, None),
        name=(Name, None),
        seed=(Value(NonNegInt, "every random choice of the run derives from it"), 0),
        dtype=(Value(Literal[DTYPES], "of data, weights, gradients and checkpoints"), "float32"),
        data=(Data, ...),
        model=(model_section, ...),
        loss=(
            Value(Literal[tuple(LOSSES)], "the per-sample loss; the batch loss is the mean"),
            "softmax_cross_entropy",
        ),
        train=(train_union(), Field(default_factory=lambda: train_model("sgd")())),
        record=(Record, Field(default_factory=Record)),
    )
    top.required = {
        "data": " (a mapping with at least 'source')",
        "model": " (a mapping with 'input_shape' and 'layers')",
    }
    top.what = "a mapping (name, data, model, ...)"
    top.elsewhere = {
        key: f"{section}.{key}"
        for section, cls in (("data", Data), ("record", Record), ("train", train_model("sgd")))
        for key in cls.model_fields
    } | {key: f"model.{key}" for key in ("input_shape", "init_from", "layers")}
    top.__doc__ = "A cnnbp run config (cnnbp train CONFIG.yaml)."
    return top


def schema_model() -> type[Section]:
    """The config model for the layer kinds registered now."""
    return _schema(tuple(LAYERS))


def json_schema_document() -> dict[str, Any]:
    """The JSON Schema of the config format (``cnnbp schema``)."""
    doc = schema_model().model_json_schema()
    doc.pop("title", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "cnnbp run config", **doc}


# ---- errors ----------------------------------------------------------------------------------------


def key_path(loc: Sequence[str | int], tagged: bool = True) -> str:
    """``('model', 'layers', 2, 'conv', 'kernel')`` → ``model.layers[2].kernel``: the union tags pydantic
    puts in the location of an error inside a layer entry or ``train`` are dropped (``tagged``)."""
    parts = list(loc)
    if tagged and parts[:1] == ["train"] and len(parts) > 1 and parts[1] in OPTIMIZERS:
        del parts[1]
    if tagged and parts[:2] == ["train", "schedule"] and len(parts) > 2 and parts[2] in SCHEDULES:
        del parts[2]
    if tagged and parts[:2] == ["model", "layers"] and len(parts) > 3 and isinstance(parts[2], int):
        del parts[3]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def first_error(error: ValidationError) -> tuple[str, str]:
    """``(key path, problem)`` of the first error of a validation."""
    e = error.errors(include_url=False)[0]
    loc, ctx, kind = list(e["loc"]), e.get("ctx") or {}, e["type"]
    if loc[:1] == ["train"] and len(loc) > 1 and loc[1] in OPTIMIZERS:
        del loc[1]  # the optimiser's union tag
    if kind == "cnnbp":
        if ctx.get("key") is not None:
            loc.append(ctx["key"])
        return key_path(loc), ctx["message"]
    if kind in ("union_tag_invalid", "union_tag_not_found") and loc[:2] == ["model", "layers"]:
        entry = e.get("input")
        if not isinstance(entry, dict):
            return key_path(
                loc
            ), f"expected a mapping such as {{type: conv, filters: 6, kernel: 5}}, got {show(entry)}"
        if "type" not in entry or entry["type"] is None:
            return key_path([*loc, "type"], tagged=False), f"required: one of {', '.join(LAYERS)}"
        return key_path([*loc, "type"], tagged=False), choice_message(entry["type"], list(LAYERS))
    if kind in ("union_tag_invalid", "union_tag_not_found") and loc[:2] == ["train", "schedule"]:
        entry = e.get("input")
        if not isinstance(entry, dict):
            return "train.schedule", (
                f"expected a mapping such as {{type: step, step_size: 5, gamma: 0.5}}, got {show(entry)}"
            )
        if entry.get("type") is None:
            return "train.schedule.type", f"required: one of {', '.join(SCHEDULES)}"
        return "train.schedule.type", choice_message(entry["type"], list(SCHEDULES))
    if kind == "union_tag_invalid" and loc[:1] == ["train"]:
        return "train.optimizer", choice_message(e.get("input", {}).get("optimizer"), list(OPTIMIZERS))
    if kind == "missing":
        return key_path(loc), "required"
    if kind in ("too_short", "list_type") and loc == ["model", "layers"]:
        return key_path(loc), f"expected a non-empty list of layers, got {show(e.get('input'))}"
    return key_path(loc), " ".join(str(e.get("msg", "invalid value")).split())
