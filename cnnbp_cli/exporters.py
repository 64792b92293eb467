"""NPZ and JSON parameter files: write a built network's parameters and buffers, and read them back.

Buffers are the non-trainable state of a layer (``Layer.state``: batchnorm's running statistics), which
inference needs as much as the parameters.  They are kept apart from the parameters in both formats, so
that a reader can tell them without knowing the layers: NPZ ``__state__/<layer>/<buffer>`` entries
beside the ``<layer>/<param>`` ones (layer names have no ``/``, and the ``__`` prefix is ``__config__``'s:
not a parameter), JSON a ``"state"`` object beside a layer's ``"params"``.  Files of networks without
buffers are the same as before buffers were exported, and files without buffers still read (no state).

The format logic only; :func:`cnnbp.export` writes and verifies files, ``model.init_from`` reads them.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from cnnbp.core.network import Sequential
from cnnbp.onnx_graph import ExportError, first_line

Params = dict[str, dict[str, np.ndarray]]

CONFIG_KEY = "__config__"
STATE_PREFIX = "__state__/"  # NPZ: ``__state__/<layer>/<buffer>`` holds a layer's buffer


class ParamsFile(NamedTuple):
    """What an NPZ / JSON file holds: parameters, buffers (``{}`` for a file without any) and config
    (the YAML text of an NPZ, the object of a JSON file)."""

    params: Params
    state: Params
    config: Any


# ---- NPZ -----------------------------------------------------------------------------------------------
def to_npz_bytes(net: Sequential, config_yaml: str) -> bytes:
    """An .npz holding one array per ``"<layer>/<param>"``, one per buffer ``"__state__/<layer>/<buffer>"``
    and ``__config__`` (0-d unicode YAML text).

    Nothing is pickled, so ``np.load(..., allow_pickle=False)`` reads it.
    """
    arrays = {f"{lname}/{key}": np.ascontiguousarray(v) for lname, group in net.parameters().items()
              for key, v in group.items()}
    arrays |= {
        f"{STATE_PREFIX}{lname}/{key}": np.ascontiguousarray(v)
        for lname, group in net.state().items()
        for key, v in group.items()
    }
    arrays[CONFIG_KEY] = np.array(str(config_yaml))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npz(path: Path) -> ParamsFile:
    """Parameters, buffers and config text from an .npz written by :func:`to_npz_bytes`.

    A file without ``__config__`` gives an empty config text, so hand-made files work for init_from;
    one without ``__state__/`` entries (older exports) gives no buffers.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    params: Params = {}
    state: Params = {}
    config = ""
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arr = npz[key]
                if key == CONFIG_KEY:
                    if arr.ndim != 0 or arr.dtype.kind != "U":
                        got = f"{arr.dtype} of shape {arr.shape}"
                        raise ExportError(f"{path}: {CONFIG_KEY} must be a text scalar, got {got}")
                    config = str(arr[()])
                elif key.startswith(STATE_PREFIX):
                    lname, bname = _npz_name(path, key, STATE_PREFIX, "<layer>/<buffer>")
                    if arr.dtype.kind not in "fiu":  # set_state would fail on it without naming it
                        raise ExportError(f"{path}: entry {key!r} is not a real numeric array ({arr.dtype})")
                    state.setdefault(lname, {})[bname] = arr
                else:
                    lname, pname = _npz_name(path, key, "", "<layer>/<param>")
                    params.setdefault(lname, {})[pname] = arr
    except ExportError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # np.load: ValueError for non-npz bytes
        raise ExportError(f"{path}: not a readable .npz parameter file ({first_line(e)})") from e
    return ParamsFile(params, state, config)


def _npz_name(path: Path, key: str, prefix: str, form: str) -> tuple[str, str]:
    """``(layer, name)`` of the NPZ entry ``key`` = ``prefix + "<layer>/<name>"``; ExportError otherwise."""
    lname, sep, name = key.removeprefix(prefix).rpartition("/")
    if not sep or not lname or not name:
        raise ExportError(f"{path}: entry {key!r} is not named {prefix}{form}")
    return lname, name


# ---- JSON ----------------------------------------------------------------------------------------------
def to_json_text(net: Sequential, config: Mapping[str, Any]) -> str:
    """``{"config": ..., "layers": [{"name", "type", "params": {name: nested lists}}]}`` as text.

    Every layer is listed (``params`` is ``{}`` for the parameter-free ones); a layer with buffers has a
    ``"state": {name: nested lists}`` after its ``params`` (the others have none).  Floats are written by
    Python's ``repr``, the shortest text that reads back as the same double, so float64 (and float32,
    widened exactly) values round-trip bit for bit.  Non-finite values are written as ``NaN`` /
    ``Infinity`` (Python's JSON dialect).
    """
    try:
        config_text = json.dumps(config, indent=2, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ExportError(f"config: cannot be written as JSON ({e})") from e
    rows = []
    for layer in net.layers:
        state = f', "state": {_json_arrays(layer.state)}' if layer.state else ""
        rows.append(
            f'    {{"name": {json.dumps(layer.name, ensure_ascii=False)}, "type": {json.dumps(layer.kind)}, '
            f'"params": {_json_arrays(layer.params)}{state}}}'
        )
    config_text = config_text.replace("\n", "\n  ")
    return '{\n  "config": ' + config_text + ',\n  "layers": [\n' + ",\n".join(rows) + "\n  ]\n}\n"


def _json_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """``{name: nested lists}`` as JSON text, floats as the shortest text that reads back the same."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v.tolist())}" for k, v in arrays.items()) + "}"


def load_json(path: Path) -> ParamsFile:
    """Parameters and buffers (float64 arrays) and the config object from a file written by
    :func:`to_json_text`.

    Layers without parameters (buffers) are left out of the parameters (buffers); a file without any
    ``"state"`` (older exports) gives no buffers.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: cannot be read ({first_line(e)})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise ExportError(f'{path}: expected an object with a "layers" list')
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise ExportError(f'{path}: "config" must be an object')
    params: Params = {}
    state: Params = {}
    for i, row in enumerate(doc["layers"]):
        where = f"{path}: layers[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ExportError(f'{where} needs a "name" string')
        for field, into in (("params", params), ("state", state)):
            arrays = _read_json_arrays(row.get(field, {}), f"{where}.{field}")
            if not arrays:
                continue
            if row["name"] in into:
                raise ExportError(f"{where}: layer {row['name']} appears twice")
            into[row["name"]] = arrays
    return ParamsFile(params, state, config)


def _read_json_arrays(group: Any, where: str) -> dict[str, np.ndarray]:
    """``{name: float64 array}`` from a layer's ``params`` or ``state``; ExportError naming ``where``."""
    if not isinstance(group, dict):
        raise ExportError(f"{where} must be an object")
    arrays = {}
    for key, value in group.items():
        try:
            arrays[key] = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ExportError(f"{where}.{key} is not a rectangular array of numbers") from e
    return arrays


# ---- init_from -----------------------------------------------------------------------------------------
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SUFFIX_KINDS: dict[str, Literal["npz", "json"]] = {".npz": "npz", ".json": "json"}


def params_file_kind(path: Path) -> Literal["npz", "json"] | None:
    """``"npz"`` or ``"json"`` for a file that :func:`load_npz` / :func:`load_json` should read, else None.

    Decided by the first bytes (a zip archive → npz; ``{`` after optional BOM and whitespace → json;
    the HDF5 signature → None, a checkpoint), then by the suffix (``.npz``, ``.json``) when the content
    says nothing, so a damaged ``.json`` still gets the JSON reader's message.  Folders and missing
    paths give None.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        head = b""
    if head.startswith(_HDF5_MAGIC):
        return None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"{"):
        return "json"
    return _SUFFIX_KINDS.get(path.suffix.lower())
