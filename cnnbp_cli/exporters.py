"""NPZ and JSON parameter files: write a built network's parameters, and read them back.

The format logic only; :func:`cnnbp.export` writes and verifies files, ``model.init_from`` reads them.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cnnbp.core.network import Sequential
from cnnbp.onnx_graph import ExportError, first_line

Params = dict[str, dict[str, np.ndarray]]

CONFIG_KEY = "__config__"


# ---- NPZ -----------------------------------------------------------------------------------------------
def to_npz_bytes(net: Sequential, config_yaml: str) -> bytes:
    """An .npz holding one array per ``"<layer>/<param>"`` and ``__config__`` (0-d unicode YAML text).

    Nothing is pickled, so ``np.load(..., allow_pickle=False)`` reads it.
    """
    arrays = {f"{lname}/{key}": np.ascontiguousarray(v) for lname, group in net.parameters().items()
              for key, v in group.items()}
    arrays[CONFIG_KEY] = np.array(str(config_yaml))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npz(path: Path) -> tuple[Params, str]:
    """``({layer: {param: array}}, config text)`` from an .npz written by :func:`to_npz_bytes`.

    A file without ``__config__`` gives an empty config text, so hand-made files work for init_from.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    params: Params = {}
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
                    continue
                lname, sep, pname = key.rpartition("/")
                if not sep or not lname or not pname:
                    raise ExportError(f"{path}: entry {key!r} is not named <layer>/<param>")
                params.setdefault(lname, {})[pname] = arr
    except ExportError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # np.load: ValueError for non-npz bytes
        raise ExportError(f"{path}: not a readable .npz parameter file ({first_line(e)})") from e
    return params, config


# ---- JSON ----------------------------------------------------------------------------------------------
def to_json_text(net: Sequential, config: Mapping[str, Any]) -> str:
    """``{"config": ..., "layers": [{"name", "type", "params": {name: nested lists}}]}`` as text.

    Every layer is listed (``params`` is ``{}`` for the parameter-free ones).  Floats are written by
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
        params = ", ".join(
            f"{json.dumps(k)}: {json.dumps(v.tolist())}" for k, v in layer.params.items()
        )
        rows.append(
            f'    {{"name": {json.dumps(layer.name, ensure_ascii=False)}, "type": {json.dumps(layer.kind)}, '
            f'"params": {{{params}}}}}'
        )
    config_text = config_text.replace("\n", "\n  ")
    return '{\n  "config": ' + config_text + ',\n  "layers": [\n' + ",\n".join(rows) + "\n  ]\n}\n"


def load_json(path: Path) -> tuple[Params, dict]:
    """``({layer: {param: float64 array}}, config)`` from a file written by :func:`to_json_text`.

    Layers without parameters are left out of the returned dict.
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
    for i, row in enumerate(doc["layers"]):
        where = f"{path}: layers[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ExportError(f'{where} needs a "name" string')
        group = row.get("params", {})
        if not isinstance(group, dict):
            raise ExportError(f'{where}.params must be an object')
        if not group:
            continue
        if row["name"] in params:
            raise ExportError(f"{where}: layer {row['name']} appears twice")
        arrays = {}
        for key, value in group.items():
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ExportError(f"{where}.params.{key} is not a rectangular array of numbers") from e
            arrays[key] = arr
        params[row["name"]] = arrays
    return params, config


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
