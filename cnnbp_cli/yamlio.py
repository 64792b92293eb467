"""YAML at the boundary: reading config files (YAML 1.2 numbers), ``--set KEY=VALUE`` overrides, writing.

Numbers follow YAML 1.2's core schema, as people write them: ``1e-3``, ``5e-4`` and ``1.0e-8`` are
floats (PyYAML's YAML 1.1 rules would read the first two as text).  Only plain data is built (safe
loading: no tags that make Python objects), and aliases are spelled out on reading, so an override
of one entry never changes another.

Before anything is built, the composed document is measured: aliases may add at most
:data:`MAX_ALIAS_VALUES` values when spelled out (an "alias bomb" of a few hundred bytes would otherwise
spell out to billions), an alias may not refer to the value it is in, and nothing may nest deeper than
:data:`MAX_DEPTH` levels (a config needs about ten), so no later step can run out of memory or of stack
on what a YAML text says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NoReturn

import yaml

from cnnbp.errors import UserError

__all__ = ["Loader", "absolute", "apply_override", "dump_yaml", "load_yaml_text", "read_yaml", "unshare"]

_FLOAT = "tag:yaml.org,2002:float"


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # the C parser where PyYAML has it
    """The safe loader with YAML 1.2's float rule: ``1e-3`` is a float (a dot and a signed exponent are
    not needed), ``.inf`` and ``.nan`` as before."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


#: how many values aliases may add to a document when spelled out
MAX_ALIAS_VALUES = 100_000
#: how deep mappings and lists may nest (a config's deepest values, explicit conv weights, are at ~10)
MAX_DEPTH = 64


def load_yaml_text(text: str) -> Any:
    """Plain data from YAML text (YAML 1.2 floats); yaml.YAMLError on bad text, or on a document whose
    aliases spell out too much, refer to themselves, or that nests too deep (see the module docstring)."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_composed(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_composed(root: yaml.Node) -> None:
    """ConstructorError (a YAMLError) unless the composed ``root`` is small and shallow once its aliases are
    spelled out.  One pass over the distinct nodes (an alias is the node it names, met again), without
    recursion: values spelled out, and depth, per node."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root to the node being measured
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = _children(node)
        if done:
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            depth[id(node)] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_nodes.discard(id(node))
            if depth[id(node)] > MAX_DEPTH:
                _refuse(node, f"nested more than {MAX_DEPTH} levels deep")
            continue
        if id(node) in size:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for k in kids:
            if id(k) in open_nodes:
                _refuse(k, "an alias refers to the value it is part of")
            if id(k) not in size:
                stack.append((k, False))
    extra = size[id(root)] - len(size)
    if extra > MAX_ALIAS_VALUES:
        _refuse(
            root,
            f"its aliases (*name) would spell it out to {size[id(root)]:,} values, {extra:,} more than "
            f"written (at most {MAX_ALIAS_VALUES:,} more are allowed)",
        )


def _refuse(node: yaml.Node, problem: str) -> NoReturn:
    raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that never writes anchors/aliases (each value is spelled out)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    """YAML text of plain data, keys in their order, no aliases."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100
    )


def _fail(place: str, problem: str) -> NoReturn:
    raise UserError(f"{place}: {problem}")


def _show(value: Any, limit: int = 60) -> str:
    from cnnbp.config_schema import show

    return show(value, limit)


def _clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut), for quoting what was typed."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def read_yaml(path: Path) -> dict:
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
        raw = load_yaml_text(text)
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
    return unshare(raw, place)


def unshare(value: Any, place: str) -> Any:
    """A deep copy without YAML aliases, so an override of one entry never changes another."""
    try:
        if isinstance(value, dict):
            return {k: unshare(v, place) for k, v in value.items()}
        if isinstance(value, list):
            return [unshare(v, place) for v in value]
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


def merged(old: Any, new: Any) -> Any:
    """``new`` put in the place of ``old``: a mapping merges into a mapping key by key (recursively), so
    ``--set 'train={epochs: 1}'`` keeps the other ``train`` keys; anything else replaces.  A mapping of
    another ``type`` (a layer or schedule of another kind) replaces the old one whole: its keys belong
    to the old kind."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    if "type" in new and new["type"] != old.get("type"):
        return new
    out = dict(old)
    for key, value in new.items():
        out[key] = merged(old.get(key), value)
    return out


def apply_override(raw: dict, text: str) -> None:
    """Apply one ``KEY=VALUE`` (VALUE parsed as YAML) to the raw config dict in place; a mapping VALUE
    merges into the mapping at KEY (see :func:`merged`)."""
    place = "--set " + _clip(" ".join(text.split("\n")))
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep:
        _fail(place, "expected KEY=VALUE, e.g. train.lr=0.05")
    if not key:
        _fail(place, "missing the KEY before '='")
    parts = _parse_key(key, place)
    if len(parts) > MAX_DEPTH:
        _fail(place, f"KEY is {len(parts)} levels deep; a config nests at most {MAX_DEPTH}")
    try:
        value = load_yaml_text(value_text)
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
                node[part] = merged(node.get(part), value)
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
                node[index] = merged(node[index], value)
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
                holder[name] = absolute(holder[name], Path.cwd())


def absolute(path: str, base_dir: Path | None) -> str:
    """``path`` made absolute against ``base_dir`` (unchanged when ``base_dir`` is None)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return os.path.normpath(p)
    if base_dir is None:
        return path
    return os.path.normpath(Path(base_dir).expanduser().absolute() / p)
