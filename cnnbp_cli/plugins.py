"""Users' layers: loading plugins, recording them with a run, and checking a plugin layer keeps the API.

A plugin is a Python file (or an importable module) that defines layers and registers them with
``@cnnbp.register_layer("kind")``.  Loading is explicit: ``--plugin FILE.py`` on a command or
``plugins: [FILE.py]`` in a config.  A run records each plugin as ``{path, sha256}`` in its resolved
config; a later command that runs the network loads it from there and refuses when the file is gone
or its content changed.  Every problem is a one-line :class:`~cnnbp.errors.UserError` naming the
plugin.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.core.contract import api_problems
from cnnbp.core.errors import RegistryError
from cnnbp.core.layers.base import Layer
from cnnbp.core.network import Sequential
from cnnbp.core.registry import LAYERS
from cnnbp.errors import UserError

__all__ = [
    "Plugin",
    "check_api",
    "load_option",
    "load_plugin",
    "load_plugins",
    "load_recorded",
    "origin",
    "plugin_specs",
]


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: its file (or module name), the SHA-256 of its source, the kinds it registered."""

    path: str
    sha256: str
    module: str
    kinds: tuple[str, ...]

    def record(self) -> dict[str, str]:
        """How the resolved config records it."""
        return {"path": self.path, "sha256": self.sha256}


#: loaded plugins by path (or module name)
_LOADED: dict[str, Plugin] = {}


def _source(spec: str, base_dir: Path | None) -> tuple[Path | None, str]:
    """(the plugin's file, its display name): a ``.py`` path (relative to ``base_dir``), else a module."""
    looks_like_file = spec.endswith(".py") or "/" in spec or "\\" in spec
    if looks_like_file:
        p = Path(spec).expanduser()
        if not p.is_absolute():
            p = (base_dir or Path.cwd()) / p
        return p.resolve(), str(p.resolve())
    return None, spec


def load_plugin(spec: str, base_dir: Path | None = None, sha256: str | None = None) -> Plugin:
    """Load one plugin (idempotent for the same unchanged file); ``sha256``: the content it must have.

    UserError ``<plugin>: <problem>`` when the file is missing, changed, fails to import, registers a
    kind that exists, or registers something that is not a layer.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"--plugin: expected a Python file or a module name, got {spec!r}")
    path, name = _source(spec, base_dir)
    data = _read(path, name) if path is not None else None
    digest = hashlib.sha256(data).hexdigest() if data is not None else _module_digest(name)
    if sha256 is not None and digest != sha256:
        raise UserError(
            f"{name}: the plugin changed since the run used it (SHA-256 {digest[:12]}…, the run recorded "
            f"{sha256[:12]}…); restore it to run this network"
        )
    loaded = _LOADED.get(name)
    if loaded is not None and loaded.sha256 == digest:
        return loaded
    if loaded is not None:  # the same file, edited since: its kinds are registered anew
        for kind in loaded.kinds:
            LAYERS.pop(kind, None)
    before = dict(LAYERS)
    module = _import(path, name, digest)
    kinds = tuple(k for k in LAYERS if before.get(k) is not LAYERS[k])
    for kind in kinds:
        if not (isinstance(LAYERS[kind], type) and issubclass(LAYERS[kind], Layer)):
            LAYERS.pop(kind)
            raise UserError(f"{name}: registers {kind!r}, which is not a subclass of cnnbp.Layer")
    plugin = Plugin(name, digest, module, kinds)
    _LOADED[name] = plugin
    return plugin


def _read(path: Path, name: str) -> bytes:
    if not path.exists():
        raise UserError(f"{name}: plugin file not found")
    if not path.is_file():
        raise UserError(f"{name}: not a file (a plugin is a .py file or a module name)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{name}: cannot read the plugin ({e.strerror or e})") from None


def _module_digest(name: str) -> str:
    """The SHA-256 of an importable module's source file ('' when it has none)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise UserError(f"{name}: no plugin file or importable module of that name")
    origin = Path(spec.origin) if spec.origin and spec.origin != "built-in" else None
    return hashlib.sha256(origin.read_bytes()).hexdigest() if origin and origin.is_file() else ""


def _import(path: Path | None, name: str, digest: str) -> str:
    """Import the plugin; every error it raises becomes one line naming it."""
    module_name = f"cnnbp_plugin_{digest[:16]}" if path is not None else name
    try:
        if path is None:
            importlib.import_module(name)
            return name
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UserError(f"{name}: cannot be loaded as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module_name
    except UserError:
        raise
    except RegistryError as e:
        sys.modules.pop(module_name, None)
        raise UserError(f"{name}: {e}") from None
    except BaseException as e:  # noqa: BLE001 - anything a user's file raises, SyntaxError included
        sys.modules.pop(module_name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        text = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{name}: the plugin failed to import{where}: {type(e).__name__}: {text}") from None


def plugin_specs(value: Any, place: str = "plugins") -> list[tuple[str, str | None]]:
    """``plugins:`` of a config as ``(path, sha256 or None)`` pairs: paths as written, or the
    ``{path, sha256}`` records a run's resolved config holds."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{place}: expected a list of plugin files, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append((item, None))
        elif (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and isinstance(item.get("sha256"), str)
        ):
            out.append((item["path"], item["sha256"]))
        else:
            raise UserError(f"{place}[{i}]: expected a path to a plugin file, got {item!r}")
    return out


def load_plugins(specs: Iterable[tuple[str, str | None]], base_dir: Path | None = None) -> list[Plugin]:
    """Load each plugin once, in order."""
    plugins: list[Plugin] = []
    for spec, sha in specs:
        same = next((p for p in _LOADED.values() if sha is not None and p.sha256 == sha), None)
        plugin = same or load_plugin(spec, base_dir, sha)
        if plugin not in plugins:
            plugins.append(plugin)
    return plugins


def load_option(plugins: Iterable[str] | None) -> list[Plugin]:
    """``--plugin FILE.py`` (repeatable): load them, relative to the current folder."""
    return load_plugins((spec, None) for spec in plugins or ())


def load_recorded(value: Any) -> list[Plugin]:
    """The plugins a run recorded (``{path, sha256}``): one already loaded with that content is used as
    it is (wherever its file is); any other is loaded from its path, and must still have that content."""
    plugins = []
    for path, sha in plugin_specs(value):
        same = next((p for p in _LOADED.values() if sha is not None and p.sha256 == sha), None)
        plugins.append(same or load_plugin(path, sha256=sha))
    return plugins


def origin(cls: type) -> Plugin | None:
    """The plugin a layer class comes from (None for a built-in or a class defined in code)."""
    return next((p for p in _LOADED.values() if p.module == cls.__module__), None)


def check_api(net: Sequential, where: dict[str, str] | None = None) -> None:
    """Run every plugin layer of a built network once and check it keeps the layer API; UserError
    naming the plugin, the layer (and ``where[layer]``, its config key) and the problem."""
    rng = np.random.default_rng(0)
    for info, layer in zip(net.summary(), net.layers, strict=True):
        plugin = origin(type(layer))
        if plugin is None:
            continue
        problems = api_problems(layer, info.input_shape, net.dtype or np.float64, rng)
        if problems:
            at = f" ({where[layer.name]})" if where and layer.name in where else ""
            raise UserError(f"{plugin.path}: layer {layer.name}{at}: {problems[0]}")
