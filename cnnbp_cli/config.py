"""Run configs: YAML text → a validated :class:`RunConfig` → core objects (strings end here).

The flow is ``load_config`` (read the file, apply ``--set KEY=VALUE`` overrides and CLI flags to the raw
dict) → ``config_from_dict`` (check every key and value, fill in defaults, check the shapes through
``core``) → ``build_network`` / ``build_loss``.  Every problem a user can cause is one
:class:`~cnnbp_cli.errors.UserError` whose one-line message starts with the key path
(``model.layers[2].kernel``), the override (``--set foo``) or the file path, then a colon and the problem.

``RunConfig.resolved`` is the config with every default filled in; ``dump_config`` writes it as YAML that
loads back to the same ``RunConfig``.  Relative ``data.path`` and ``model.init_from`` are made absolute
there (against the config file's folder, or the current directory for ``--set`` values), so a copy of
the resolved config stored in a run folder still points at the same files.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import yaml
from cnnbp.core.errors import ShapeError
from cnnbp.core.init import SCHEMES, Constant, Explicit, Initializer
from cnnbp.core.layers import ACTIVATIONS, Conv2D, Dense, Flatten, Layer, Pool, Subsample
from cnnbp.core.losses import LOSSES, Loss
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.data import PATH_SOURCES, SOURCES, SPLIT_KEYS, DataSpec
from cnnbp.errors import UserError
from cnnbp.spec import (
    DTYPES,
    LAYER_TYPES,
    LOSS_NAMES,
    LayerSpec,
    ModelSpec,
    RecordSpec,
    RunConfig,
    TrainSpec,
)

__all__ = [
    "build_loss",
    "build_network",
    "check_model",
    "config_from_dict",
    "default_config_path",
    "dump_config",
    "load_config",
]

# ---- the vocabulary of the format --------------------------------------------------------------------

ACTIVATION_TYPES: tuple[str, ...] = ("sigmoid", "tanh", "relu", "identity")
POOL_MODES: tuple[str, ...] = ("max", "mean", "lp")
BIAS_KINDS: tuple[str, ...] = ("tied", "untied")

_TOP_KEYS = ("name", "seed", "dtype", "data", "model", "loss", "train", "record")
_DATA_KEYS = ("source", "path", "scale", "val_fraction", "limit", "keys", "x", "y")
_MODEL_KEYS = ("input_shape", "init_from", "layers")
_TRAIN_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "shuffle", "divergence_factor")
_RECORD_KEYS = ("probe", "every")
_SECTION_KEYS = {"data": _DATA_KEYS, "model": _MODEL_KEYS, "train": _TRAIN_KEYS, "record": _RECORD_KEYS}

# keys of each layer type besides ``type`` and ``name``, in the order ``resolved`` lists them
_LAYER_KEYS: dict[str, tuple[str, ...]] = {
    "conv": ("filters", "kernel", "stride", "padding", "bias", "activation", "init"),
    "pool": ("mode", "size", "stride", "p"),
    "subsample": ("scale", "activation", "init"),
    "dense": ("units", "activation", "init"),
    "flatten": (),
    **{a: () for a in ACTIVATION_TYPES},
}
_PARAMS = {"conv": ("W", "b"), "dense": ("W", "b"), "subsample": ("beta", "b")}
_WEIGHT = {"conv": "W", "dense": "W", "subsample": "beta"}  # what a bare ``init: <scheme>`` applies to

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MAX_NAME = 100
_DEFAULT_LOSS = "softmax_cross_entropy"
_DEFAULT_DTYPE = "float32"
_DEFAULT_TRAIN = TrainSpec()
_DEFAULT_RECORD = RecordSpec()


def default_config_path() -> Path:
    """The packaged default config, ``cnnbp_cli/configs/digits.yaml``."""
    return Path(__file__).resolve().parent / "configs" / "digits.yaml"


# ---- small helpers for messages -----------------------------------------------------------------------


def _fail(place: str, problem: str) -> NoReturn:
    raise UserError(f"{place}: {problem}")


def _show(value: Any, limit: int = 60) -> str:
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


def _at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _suggest(word: object, options: Sequence[str]) -> str | None:
    """The closest option to ``word`` (case-insensitive), if any is close."""
    if not isinstance(word, str):
        return None
    lower = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=0.6)
    return lower[match[0]] if match else None


def _fmt_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape) if len(shape) else "()"


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ---- value checks: each returns the clean value or raises UserError naming the key path -------------


def _mapping(value: Any, path: str, what: str = "a mapping of keys") -> dict:
    if not isinstance(value, dict):
        _fail(path, f"expected {what}, got {_show(value)}")
    return value


def _optional_section(raw: dict, key: str) -> dict:
    """``train`` / ``record``: absent or null means all defaults."""
    value = raw.get(key)
    return {} if value is None else _mapping(value, key)


def _check_keys(d: dict, path: str, allowed: Sequence[str], owner: str = "") -> None:
    """Every key of ``d`` must be in ``allowed``; the error suggests the closest one."""
    for key in d:
        if not isinstance(key, str):
            _fail(_at(path, _show(key)), "keys must be names (strings)")
        if key in allowed:
            continue
        guess = _suggest(key, allowed)
        if guess is None and not path:  # a section's key at the top level: `epochs:` → train.epochs
            guess = next((f"{s}.{key}" for s, keys in _SECTION_KEYS.items() if key in keys), None)
        if guess is not None:
            _fail(_at(path, key), f"unknown key (did you mean {guess!r}?)")
        where = f" for {owner}" if owner else ""
        _fail(_at(path, key), f"unknown key{where} (allowed: {', '.join(allowed)})")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(value: Any, path: str, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        _fail(path, f"expected an integer ≥ {minimum}, got {_show(value)}")
    return int(value)


def _number(value: Any, path: str, what: str, ok: Callable[[float], bool]) -> float:
    """A finite int or float (not a bool, not a string) for which ``ok`` holds; ``what`` words ``ok``."""
    if not _is_number(value) or not math.isfinite(float(value)) or not ok(float(value)):
        _fail(path, f"expected a number {what}, got {_show(value)}{_text_number_hint(value)}")
    return float(value)


def _text_number_hint(value: Any) -> str:
    """Why YAML read ``1e-3`` as text: YAML 1.1 floats need a dot and a signed exponent (1.0e-3)."""
    m = (
        re.fullmatch(r"([-+]?[0-9]+)(\.[0-9]*)?[eE]([-+]?)([0-9]+)", value.strip())
        if isinstance(value, str)
        else None
    )
    if m is None:
        return ""
    fixed = f"{m.group(1)}{m.group(2) or '.0'}e{m.group(3) or '+'}{m.group(4)}"
    return f" (text to YAML, which needs a dot and a signed exponent: write {fixed})"


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"expected true or false, got {_show(value)}")
    return value


def _choice(value: Any, path: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        guess = _suggest(value, choices)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        _fail(path, f"must be one of {', '.join(choices)}, got {_show(value)}{hint}")
    return value


def _size(value: Any, path: str, minimum: int) -> int | list[int]:
    """An int or a pair ``[h, w]`` of ints, each ≥ ``minimum``; kept in the form given."""
    if _is_int(value) and value >= minimum:
        return int(value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_is_int(v) and v >= minimum for v in value)
    ):
        return [int(v) for v in value]
    _fail(path, f"expected an integer ≥ {minimum} or a pair [h, w] of them, got {_show(value)}")


def _required(d: dict, key: str, path: str, what: str) -> Any:
    if key not in d or d[key] is None:
        _fail(_at(path, key), f"required{what}")
    return d[key]


def _safe_name(value: Any, path: str) -> str:
    """A name used as a folder or an HDF5 group: [A-Za-z0-9._-]+, not '.', no '..'."""
    if not isinstance(value, str):
        _fail(path, f"expected a name (a string; quote numbers), got {_show(value)}")
    if not value:
        _fail(path, "must not be empty")
    if not _SAFE_NAME.fullmatch(value):
        _fail(path, f"{value!r} may only use letters, digits, '.', '_' and '-'")
    if ".." in value or value == ".":
        _fail(path, f"{value!r} may not be '.' or contain '..'")
    if len(value) > _MAX_NAME:
        _fail(path, f"is {len(value)} characters long, at most {_MAX_NAME} allowed")
    return value


def _path_string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(path, f"expected a path (a non-empty string), got {_show(value)}")
    return value


def _absolute(path: str, base_dir: Path | None) -> str:
    """``path`` made absolute against ``base_dir`` (unchanged when ``base_dir`` is None)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return os.path.normpath(p)
    if base_dir is None:
        return path
    return os.path.normpath(Path(base_dir).expanduser().absolute() / p)


def _default_name(source: str) -> str:
    """The config file's stem made into a safe name; ``run`` when there is no file."""
    if not source or source.startswith("<"):
        return "run"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).stem)
    stem = re.sub(r"\.{2,}", ".", stem).strip("-.")[:_MAX_NAME]
    return stem or "run"


# ---- reading and overriding ---------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML file; every file problem is a UserError naming the path."""
    place = str(path)
    if path.is_dir():
        _fail(place, "is a directory, expected a YAML config file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        _fail(place, "file not found")
    except PermissionError:
        _fail(place, "permission denied")
    except OSError as e:
        _fail(place, f"cannot read: {e.strerror or e}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        _fail(place, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})")
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        syntax = isinstance(e, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        kind = "YAML syntax error" if syntax else "invalid YAML"  # e.g. a !!python/... tag safe_load refuses
        _fail(place, f"{kind}{where}: {problem}")
    except yaml.YAMLError as e:  # e.g. a ReaderError for control characters
        _fail(place, f"not valid YAML: {' '.join(str(e).split())}")
    except (ValueError, RecursionError) as e:  # e.g. an impossible date such as 2024-13-45
        _fail(place, f"not valid YAML: {' '.join(str(e).split()) or type(e).__name__}")
    if raw is None:
        _fail(place, "the file is empty; expected a mapping with at least 'data' and 'model'")
    if not isinstance(raw, dict):
        _fail(place, f"the top level must be a mapping (name, data, model, ...), got {_show(raw)}")
    return _unshare(raw, place)


def _unshare(value: Any, place: str) -> Any:
    """A deep copy without YAML aliases, so an override of one entry never changes another."""
    try:
        if isinstance(value, dict):
            return {k: _unshare(v, place) for k, v in value.items()}
        if isinstance(value, list):
            return [_unshare(v, place) for v in value]
    except RecursionError:
        _fail(place, "nested too deeply (or a YAML alias refers to itself)")
    return value


_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _parse_key(key: str, place: str) -> list[str | int]:
    """``model.layers[1].size`` / ``model.layers.1.size`` → ['model', 'layers', 1, 'size'].

    Bracketed indices become ints; a dotted all-digit segment stays a string and is taken as a list
    index only when it meets a list.
    """
    parts: list[str | int] = []
    for piece in key.split("."):
        m = _SEGMENT.fullmatch(piece)
        if m is None:
            _fail(
                place, f"bad key {key!r}: use dotted names with optional [index], e.g. model.layers[1].size"
            )
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def apply_override(raw: dict, text: str) -> None:
    """Apply one ``KEY=VALUE`` (VALUE parsed as YAML) to the raw config dict in place."""
    place = "--set " + " ".join(text.split("\n"))
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep:
        _fail(place, "expected KEY=VALUE, e.g. train.lr=0.05")
    if not key:
        _fail(place, "missing the KEY before '='")
    parts = _parse_key(key, place)
    try:
        value = yaml.safe_load(value_text)
    except (yaml.YAMLError, ValueError) as e:
        problem = getattr(e, "problem", None) or str(e)
        _fail(place, f"VALUE is not valid YAML ({' '.join(str(problem).split())})")

    node: Any = raw
    walked = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if isinstance(part, int):
                where = walked or "the config"
                _fail(place, f"{where} is a mapping, not a list; use .KEY instead of [{part}]")
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            walked = _at(walked, part)
        elif isinstance(node, list):
            if isinstance(part, str) and not part.isdigit():
                _fail(place, f"{walked} is a list; index it with [i] or .i")
            index = int(part)
            if index >= len(node):
                _fail(place, f"{walked} has {len(node)} entries, so there is no index {index}")
            if last:
                node[index] = value
            else:
                node = node[index]
            walked = f"{walked}[{index}]"
        else:
            _fail(place, f"{walked} is {_show(node)}, not a mapping or a list")

    # A path typed on the command line is relative to where it was typed, not to the config file.
    for section, name in (("data", "path"), ("model", "init_from")):
        if parts == [section, name][: len(parts)]:
            holder = raw.get(section)
            if isinstance(holder, dict) and isinstance(holder.get(name), str) and holder[name].strip():
                holder[name] = _absolute(holder[name], Path.cwd())


def load_config(
    path: Path | None,
    overrides: Sequence[str] = (),
    *,
    name: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
) -> RunConfig:
    """Read a YAML config (``None``: the packaged default), apply overrides and flags, validate.

    ``overrides`` are ``KEY=VALUE`` strings (dotted keys, ``[i]`` or ``.i`` list indices, VALUE parsed
    as YAML) applied to the raw dict before validation; then ``name``, ``epochs`` (``train.epochs``)
    and ``seed`` replace their keys.  The default name is the file's stem.
    """
    path = default_config_path() if path is None else Path(path).expanduser()
    raw = _read_yaml(path)
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
        _mapping(train, "train")["epochs"] = epochs
    return config_from_dict(raw, source=str(path), base_dir=path.parent)


# ---- validation ---------------------------------------------------------------------------------------


def config_from_dict(raw: dict, *, source: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    """Validate a raw config dict, fill in defaults and check the model's shapes.

    ``source`` names the config in messages about the whole document and gives the default name (its
    file stem); ``base_dir`` is the folder relative paths resolve against.  Raises UserError.
    The memory budget is not checked here (it depends on the machine): see :func:`check_model`.
    """
    if not isinstance(raw, dict):
        _fail(source, f"the top level must be a mapping (name, data, model, ...), got {_show(raw)}")
    _check_keys(raw, "", _TOP_KEYS)

    name = _safe_name(raw.get("name", _default_name(source)), "name")
    seed = _int(raw.get("seed", 0), "seed", 0)
    dtype = _choice(raw.get("dtype", _DEFAULT_DTYPE), "dtype", DTYPES)
    data, data_raw = _data(_required(raw, "data", "", " (a mapping with at least 'source')"), base_dir)
    model, model_raw = _model(
        _required(raw, "model", "", " (a mapping with 'input_shape' and 'layers')"), base_dir
    )
    loss = _choice(raw.get("loss", _DEFAULT_LOSS), "loss", LOSS_NAMES)
    train = _train(_optional_section(raw, "train"))
    record = _record(_optional_section(raw, "record"))

    resolved = {
        "name": name,
        "seed": seed,
        "dtype": dtype,
        "data": data_raw,
        "model": model_raw,
        "loss": loss,
        "train": {k: getattr(train, k) for k in _TRAIN_KEYS},
        "record": {k: getattr(record, k) for k in _RECORD_KEYS},
    }
    cfg = RunConfig(
        name=name,
        seed=seed,
        dtype=dtype,
        data=data,
        model=model,
        loss=loss,
        train=train,
        record=record,
        resolved=resolved,
        base_dir=base_dir,
    )
    _check_shapes(cfg)
    return cfg


def _data(raw: Any, base_dir: Path | None) -> tuple[DataSpec, dict]:
    d = _mapping(raw, "data")
    _check_keys(d, "data", _DATA_KEYS)
    source = _required(d, "source", "data", f": one of {', '.join(SOURCES)}")
    source = _choice(source, "data.source", SOURCES)
    path = d.get("path")
    if source in PATH_SOURCES:
        if path is None:
            _fail("data.path", f"required for source {source!r}")
        path = _absolute(_path_string(path, "data.path"), base_dir)
    elif path is not None:
        _fail("data.path", f"not used by source {source!r}; remove it")
    scale = d.get("scale")
    if scale is not None:
        scale = _number(scale, "data.scale", "> 0", lambda v: v > 0)
    val_fraction = _number(d.get("val_fraction", 0.2), "data.val_fraction", "in [0, 1)", lambda v: 0 <= v < 1)
    limit = d.get("limit")
    if limit is not None:
        limit = _int(limit, "data.limit", 1)

    keys = d.get("keys")
    if keys is not None:
        if source != "hdf5":
            _fail("data.keys", f"only used by source 'hdf5', not {source!r}; remove it")
        _mapping(keys, "data.keys", f"a mapping of {', '.join(SPLIT_KEYS)} to dataset names")
        _check_keys(keys, "data.keys", SPLIT_KEYS)
        keys = {role: _path_string(v, f"data.keys.{role}") for role, v in keys.items()}

    inline: dict[str, list | None] = {"x": None, "y": None}
    for k in ("x", "y"):
        value = d.get(k)
        if source != "inline":
            if value is not None:
                _fail(f"data.{k}", f"only used by source 'inline', not {source!r}; remove it")
            continue
        if value is None:
            _fail(f"data.{k}", "required for source 'inline'")
        if not isinstance(value, (list, tuple)) or not value:
            _fail(f"data.{k}", f"expected a non-empty list with one entry per sample, got {_show(value)}")
        inline[k] = _unshare(list(value), f"data.{k}")

    spec = DataSpec(
        source=source, path=path, scale=scale, val_fraction=val_fraction, limit=limit, keys=keys, **inline
    )
    resolved: dict[str, Any] = {
        "source": source,
        "path": path,
        "scale": scale,
        "val_fraction": val_fraction,
        "limit": limit,
    }
    if source == "hdf5":
        resolved["keys"] = dict(keys) if keys is not None else None
    if source == "inline":
        resolved["x"] = _unshare(inline["x"], "data.x")
        resolved["y"] = _unshare(inline["y"], "data.y")
    return spec, resolved


def _model(raw: Any, base_dir: Path | None) -> tuple[ModelSpec, dict]:
    m = _mapping(raw, "model")
    _check_keys(m, "model", _MODEL_KEYS)
    shape = _required(m, "input_shape", "model", ": [C, H, W] for images or [features] for vectors")
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) in (1, 3)
        and all(_is_int(s) and s >= 1 for s in shape)
    ):
        _fail(
            "model.input_shape",
            f"expected [C, H, W] or [features] of positive integers, got {_show(shape)}",
        )
    input_shape = tuple(int(s) for s in shape)
    init_from = m.get("init_from")
    if init_from is not None:
        init_from = _absolute(_path_string(init_from, "model.init_from"), base_dir)

    entries = _required(m, "layers", "model", ": a list of layers, e.g. - {type: dense, units: 10}")
    if not isinstance(entries, (list, tuple)) or not entries:
        _fail("model.layers", f"expected a non-empty list of layers, got {_show(entries)}")

    specs: list[LayerSpec] = []
    resolved_layers: list[dict] = []
    owners: dict[str, str] = {}  # core layer name → the entry that made it, for duplicate messages
    for i, entry in enumerate(entries):
        nxt = entries[i + 1] if i + 1 < len(entries) else None
        relu_follows = isinstance(nxt, dict) and nxt.get("type") == "relu"
        spec, resolved = _layer(entry, i, relu_follows)
        given = isinstance(entry.get("name"), str)
        made = [spec.name] + ([f"{spec.name}.{spec.activation}"] if spec.activation else [])
        for core_name in made:
            if core_name in owners:
                where = f"{spec.path}.name" if given else spec.path
                what = "name" if given else "default name"
                hint = "" if given else "; give this layer a name"
                _fail(where, f"{what} {core_name!r} is already used by {owners[core_name]}{hint}")
            owners[core_name] = spec.path + (" (its activation)" if core_name != spec.name else "")
        specs.append(spec)
        resolved_layers.append(resolved)

    model = ModelSpec(input_shape=input_shape, layers=tuple(specs), init_from=init_from)
    return model, {"input_shape": list(input_shape), "init_from": init_from, "layers": resolved_layers}


def _layer(entry: Any, i: int, relu_follows: bool) -> tuple[LayerSpec, dict]:
    path = f"model.layers[{i}]"
    e = _mapping(entry, path, "a mapping such as {type: conv, filters: 6, kernel: 5}")
    kind = _required(e, "type", path, f": one of {', '.join(LAYER_TYPES)}")
    kind = _choice(kind, f"{path}.type", LAYER_TYPES)
    _check_keys(e, path, ("type", "name", *_LAYER_KEYS[kind]), owner=f"a {kind} layer")
    name = _safe_name(e["name"], f"{path}.name") if "name" in e else f"{kind}{i + 1}"

    def need(key: str, what: str) -> Any:
        return _required(e, key, path, f" for a {kind} layer ({what})")

    hyper: dict[str, Any] = {}
    if kind == "conv":
        hyper["filters"] = _int(need("filters", "an integer ≥ 1"), f"{path}.filters", 1)
        hyper["kernel"] = _size(need("kernel", "an integer or [h, w]"), f"{path}.kernel", 1)
        hyper["stride"] = _size(e.get("stride", 1), f"{path}.stride", 1)
        hyper["padding"] = _size(e.get("padding", 0), f"{path}.padding", 0)
        hyper["bias"] = _choice(e.get("bias", "tied"), f"{path}.bias", BIAS_KINDS)
    elif kind == "pool":
        hyper["mode"] = mode = _choice(e.get("mode", "max"), f"{path}.mode", POOL_MODES)
        hyper["size"] = _size(need("size", "an integer or [h, w]"), f"{path}.size", 1)
        stride = e.get("stride")
        hyper["stride"] = hyper["size"] if stride is None else _size(stride, f"{path}.stride", 1)
        if mode == "lp":
            hyper["p"] = _number(e.get("p", 2.0), f"{path}.p", "≥ 1", lambda v: v >= 1)
        else:
            if e.get("p") is not None:
                _fail(f"{path}.p", f"only used with mode 'lp', not {mode!r}; remove it")
            hyper["p"] = None
    elif kind == "subsample":
        hyper["scale"] = _int(need("scale", "an integer ≥ 1"), f"{path}.scale", 1)
    elif kind == "dense":
        hyper["units"] = _int(need("units", "an integer ≥ 1"), f"{path}.units", 1)

    activation = None
    if "activation" in _LAYER_KEYS[kind] and e.get("activation") is not None:
        activation = _choice(e["activation"], f"{path}.activation", ACTIVATION_TYPES)

    init: dict[str, Any] = {}
    if kind in _PARAMS:
        if kind == "subsample":
            weight_default: Any = 1.0 / hyper["scale"] ** 2  # core's default β: a mean pool
        else:
            weight_default = "he_normal" if activation == "relu" or relu_follows else "glorot_uniform"
        init = _init(e.get("init"), f"{path}.init", kind, weight_default)

    spec = LayerSpec(type=kind, name=name, hyper=hyper, activation=activation, init=init, path=path)
    resolved: dict[str, Any] = {"type": kind, "name": name}
    resolved.update({k: (list(v) if isinstance(v, list) else v) for k, v in hyper.items() if v is not None})
    if "activation" in _LAYER_KEYS[kind]:
        resolved["activation"] = activation
    if init:
        resolved["init"] = {k: _unshare(v, path) for k, v in init.items()}
    return spec, resolved


def _init(value: Any, path: str, kind: str, weight_default: Any) -> dict[str, Any]:
    """``init:`` → {param: scheme name | float constant | nested lists}, every parameter filled."""
    params = _PARAMS[kind]
    weight = _WEIGHT[kind]
    given: dict[str, Any]
    if value is None:
        given = {}
    elif isinstance(value, str):
        given = {weight: _init_value(value, path)}
    elif isinstance(value, dict):
        _check_keys(value, path, params, owner=f"a {kind} layer's init")
        given = {k: _init_value(v, f"{path}.{k}") for k, v in value.items()}
    else:
        _fail(
            path,
            f"expected a scheme ({', '.join(SCHEMES)}) or a mapping of {', '.join(params)} to a scheme, "
            f"a number or nested lists, got {_show(value)}",
        )
    defaults = {weight: weight_default, "b": "zeros"}
    return {p: given.get(p, defaults[p]) for p in params}


def _init_value(value: Any, path: str) -> Any:
    if isinstance(value, str):
        if value not in SCHEMES:
            guess = _suggest(value, list(SCHEMES))
            hint = f" (did you mean {guess!r}?)" if guess else ""
            _fail(path, f"unknown scheme {value!r}{hint}; use {', '.join(SCHEMES)}, a number or nested lists")
        return value
    if _is_number(value):
        if not math.isfinite(float(value)):
            _fail(path, f"expected a finite constant, got {_show(value)}")
        return float(value)
    if isinstance(value, (list, tuple)):
        try:
            _check_leaves(value, path)
        except RecursionError:
            _fail(path, "nested too deeply")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except ValueError:
            _fail(path, "ragged nested lists: every row must have the same length")
        return arr.tolist()
    _fail(path, f"expected a scheme ({', '.join(SCHEMES)}), a number or nested lists, got {_show(value)}")


def _check_leaves(value: Any, path: str) -> None:
    for v in value:
        if isinstance(v, (list, tuple)):
            _check_leaves(v, path)
        elif not _is_number(v) or not math.isfinite(float(v)):
            _fail(path, f"explicit values must be finite numbers, found {_show(v)}")


def _train(t: dict) -> TrainSpec:
    _check_keys(t, "train", _TRAIN_KEYS)
    d = _DEFAULT_TRAIN
    factor = t.get("divergence_factor")
    return TrainSpec(
        epochs=_int(t.get("epochs", d.epochs), "train.epochs", 1),
        batch_size=_int(t.get("batch_size", d.batch_size), "train.batch_size", 1),
        lr=_number(t.get("lr", d.lr), "train.lr", "> 0", lambda v: v > 0),
        momentum=_number(t.get("momentum", d.momentum), "train.momentum", "in [0, 1)", lambda v: 0 <= v < 1),
        weight_decay=_number(
            t.get("weight_decay", d.weight_decay), "train.weight_decay", "≥ 0", lambda v: v >= 0
        ),
        shuffle=_bool(t.get("shuffle", d.shuffle), "train.shuffle"),
        divergence_factor=None
        if factor is None
        else _number(factor, "train.divergence_factor", "> 0 (or null)", lambda v: v > 0),
    )


def _record(r: dict) -> RecordSpec:
    _check_keys(r, "record", _RECORD_KEYS)
    d = _DEFAULT_RECORD
    return RecordSpec(
        probe=_int(r.get("probe", d.probe), "record.probe", 0),
        every=_int(r.get("every", d.every), "record.every", 1),
    )


# ---- core objects -------------------------------------------------------------------------------------


def _initializer(value: Any) -> Initializer:
    if isinstance(value, str):
        return SCHEMES[value]()
    if isinstance(value, (int, float)):
        return Constant(value)
    return Explicit(value)


def _core_layer(spec: LayerSpec) -> Layer:
    h, name = spec.hyper, spec.name
    init = {k: _initializer(v) for k, v in spec.init.items()}
    if spec.type == "conv":
        return Conv2D(h["filters"], h["kernel"], h["stride"], h["padding"], h["bias"], init=init, name=name)
    if spec.type == "pool":
        return Pool(h["mode"], h["size"], h["stride"], p=h["p"] if h.get("p") is not None else 2.0, name=name)
    if spec.type == "subsample":
        return Subsample(h["scale"], init=init, name=name)
    if spec.type == "dense":
        return Dense(h["units"], init=init, name=name)
    if spec.type == "flatten":
        return Flatten(name)
    return ACTIVATIONS[spec.type](name)


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
            layers.append(_core_layer(spec))
            if spec.activation:
                layers.append(ACTIVATIONS[spec.activation](f"{spec.name}.{spec.activation}"))
        return Sequential(layers, cfg.model.input_shape)
    except ShapeError as e:
        raise UserError(f"{_place_of(cfg, e.layer)}: {e.detail}") from e


def build_loss(cfg: RunConfig) -> Loss:
    return LOSSES[cfg.loss]()


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


def _memory_budget() -> int | None:
    """Half of the machine's physical memory in bytes, or None where it cannot be found."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return None


def _memory_estimate(cfg: RunConfig, infos: list[LayerInfo]) -> int:
    """Rough bytes for one training batch.

    Parameters ×3 (values, gradients, momentum); per-sample input and every layer output ×3 (forward
    value, the delta, a temporary); each conv's im2col columns ×2 (kept for backward, and their delta).
    """
    itemsize = np.dtype(cfg.dtype).itemsize
    params = sum(info.n_params for info in infos)
    values = math.prod(cfg.model.input_shape) + sum(math.prod(info.output_shape) for info in infos)
    cols = sum(
        math.prod(info.output_shape[1:]) * math.prod(info.param_shapes["W"][1:])
        for info in infos
        if info.kind == "conv"
    )
    return itemsize * (3 * params + cfg.train.batch_size * (3 * values + 2 * cols))


def check_model(cfg: RunConfig) -> list[LayerInfo]:
    """The model summary (one row per core layer), or a UserError naming the key path at fault.

    Beyond :func:`config_from_dict`'s shape checks, rejects a model whose one training batch would need
    more than half of this machine's memory.
    """
    infos = _check_shapes(cfg)
    budget = _memory_budget()
    if budget is not None:
        need = _memory_estimate(cfg, infos)
        if need > budget:
            _fail(
                "model",
                f"needs about {_fmt_bytes(need)} for one batch of {cfg.train.batch_size}, over the "
                f"{_fmt_bytes(budget)} budget (half of this machine's memory); use a smaller model or "
                "train.batch_size",
            )
    return infos


# ---- writing ------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """SafeDumper that never writes anchors/aliases (each value is spelled out)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_config(cfg: RunConfig) -> str:
    """YAML text of ``cfg.resolved``; ``load_config`` of it gives back the same config."""
    return yaml.dump(
        cfg.resolved, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100
    )
