"""``cnnbp predict``: a trained network's outputs for new inputs, and the top class of each.

INPUT is an ``.npz`` file (the array under key ``x``), an IDX file (gzipped or not), an HDF5 file
(dataset ``x``) or an image (PNG, JPEG, … read with Pillow, the ``cnnbp[image]`` extra).  Arrays hold
one sample of the model's ``input_shape`` or a batch of them (``(N, H, W)`` for one channel is fine) and
are scaled by the run's ``data.scale``, exactly as its training data was.  An image is converted to
grey (one input channel) or RGB (three), resized to the input's H×W with a box filter (each output pixel
the mean of the pixels it covers), and read as values in [0, 1] (pixel / 255): the range ``data.scale``
gives the shipped data sets (1/16 for the 0–16 digits, 1/255 for MNIST); the result says so in a note.

The outputs are class probabilities (the softmax of the network's outputs) for a run trained with
``softmax_cross_entropy``, and the network's outputs themselves for one trained with ``mse``.  The
checkpoint is chosen as ``cnnbp evaluate`` chooses it (by default the run's best).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.core.losses import SoftmaxCrossEntropy
from cnnbp.data import npz_array_bytes, prepare_inputs, read_idx, sniff
from cnnbp.errors import UserError
from cnnbp.evaluating import choose_checkpoint, predicted_class, run_config
from cnnbp.files import json_number
from cnnbp.memory import check_fits
from cnnbp.runs import Run

__all__ = ["IMAGE_HINT", "Prediction", "predict", "read_input"]

IMAGE_HINT = "reading images needs Pillow: pip install 'cnnbp[image]'"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass
class Prediction:
    """What :func:`predict` computed: ``values[i]`` for sample i (probabilities or outputs), ``top[i]``."""

    checkpoint: Path
    epoch: int
    chosen: str
    input: str
    kind: str  # "probabilities" or "outputs"
    values: np.ndarray  # (N, K) in float64
    top: np.ndarray  # (N,) int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: one entry per sample (numbers by the one JSON number rule)."""
        return {
            "checkpoint": str(self.checkpoint), "epoch": self.epoch, "chosen": self.chosen,
            "input": self.input, "kind": self.kind, "notes": self.notes,
            "samples": [{"index": i, "top": int(t), self.kind: [json_number(float(v)) for v in row]}
                        for i, (t, row) in enumerate(zip(self.top, self.values, strict=True))],
        }  # fmt: skip


# ---- reading the input ------------------------------------------------------------------------------------


def read_input(path: Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, bool, list[str]]:
    """``(array, is_image, notes)`` from an NPZ, IDX, HDF5 or image file (told apart by content)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    kind = sniff(path)
    if kind == "npz":
        return _npz(path), False, []
    if kind == "hdf5":
        return _hdf5(path), False, []
    if kind == "idx":
        return read_idx(path), False, []
    if path.suffix.lower() in _IMAGE_SUFFIXES or _looks_like_image(path):
        array, notes = read_image(path, input_shape)
        return array, True, notes
    raise UserError(f"{path}: not an NPZ, IDX, HDF5 or image file")


def _looks_like_image(path: Path) -> bool:
    with open(path, "rb") as fh:  # readable: sniff has read it
        return fh.read(4).startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF"))


def _npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise UserError(f"{path}: no array 'x' (found: {', '.join(npz.files) or 'none'})")
            check_fits(npz_array_bytes(path, npz.zip, "x"), str(path), "reading 'x'", "use a smaller file")
            return np.asarray(npz["x"])
    except UserError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"{path}: not a readable .npz archive ({' '.join(str(e).split())})") from None


def _hdf5(path: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            obj = f.get("x")
            if not isinstance(obj, h5py.Dataset):
                names = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
                raise UserError(f"{path}: no dataset 'x' (found: {', '.join(names) or 'none'})")
            need = math.prod(obj.shape or ()) * obj.dtype.itemsize
            check_fits(need, str(path), "reading 'x'", "use a smaller file")
            return np.asarray(obj[()])
    except (UserError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - HDF5 reports a damaged or odd file in many types
        raise UserError(f"{path}: cannot open as HDF5 ({' '.join(str(e).split())})") from None


def read_image(path: Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """An image as one sample ``(1, C, H, W)`` in [0, 1], resized to the input's H×W; notes say how."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise UserError(f"{path}: an image fits a model whose input is 1×H×W or 3×H×W, not {input_shape}")
    try:
        from PIL import Image
    except ImportError:
        raise UserError(IMAGE_HINT) from None
    c, h, w = input_shape
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BOX)
            pixels = np.asarray(img, dtype=np.float64)
    except OSError as e:
        raise UserError(f"{path}: cannot read the image ({' '.join(str(e).split())})") from None
    notes = []
    if size != (w, h):
        notes.append(f"resized from {size[0]}×{size[1]} to {w}×{h} (box filter)")
    notes.append("pixels read as values in [0, 1] (pixel / 255), as data.scale makes the training inputs")
    array = pixels[None, None] if c == 1 else pixels.transpose(2, 0, 1)[None]
    return array / 255.0, notes


# ---- the prediction -------------------------------------------------------------------------------------


def predict(target: Path | str | Run, input: Path | str, checkpoint: str | int | None = None) -> Prediction:
    """The network's probabilities (or outputs) and top class for every sample of ``input``."""
    ck, chosen = choose_checkpoint(target, checkpoint)
    cfg = run_config(ck)
    shape = tuple(cfg.model.input_shape)
    raw, image, notes = read_input(Path(input), shape)
    if tuple(raw.shape) == shape or (len(shape) == 3 and shape[0] == 1 and tuple(raw.shape) == shape[1:]):
        raw = raw[None]  # one sample, not a batch
    scale = None if image else cfg.data.scale
    x = prepare_inputs(raw, shape, np.dtype(cfg.dtype), scale, str(input), "x")
    net = ck.network()
    with net.in_phase("eval"), np.errstate(over="ignore", invalid="ignore"):
        out = np.concatenate([net.forward(x[lo : lo + 256]) for lo in range(0, x.shape[0], 256)])
    out = out.astype(np.float64)
    softmax = ck.loss == "softmax_cross_entropy"
    values = SoftmaxCrossEntropy.probabilities(out) if softmax else out
    kind = "probabilities" if softmax else "outputs"
    return Prediction(ck.path, ck.epoch, chosen, str(input), kind, values, predicted_class(out), notes)
