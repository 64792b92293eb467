"""Writing files safely, and the one JSON number policy.

:func:`write_atomic` is the one way cnnbp writes a whole file (config.yaml, checkpoints, exports):
the bytes go to a temporary file beside the destination, are flushed and fsynced, get the mode any
new file would get (the umask), and are renamed into place, so a reader — or a crash — sees the old
file or the new one, whole.  Every write failure (no space, a read-only folder, a folder removed) is
a one-line :class:`~cnnbp.errors.UserError` naming the file, and the temporary file is gone.

:func:`json_number` is how every JSON document cnnbp prints writes a number that is not finite.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnbp.errors import UserError

__all__ = ["fsync_dir", "json_number", "staged", "write_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fail(path: Path, e: OSError) -> UserError:
    return UserError(f"{path}: cannot write ({e.strerror or e})")


#: bytes per write call: a signal is handled between two (a second Ctrl-C stops a large write at once)
_CHUNK = 1 << 24


@contextmanager
def staged(path: Path, data: bytes | memoryview) -> Iterator[Path]:
    """Write ``data`` to a fsynced temporary file beside ``path`` and yield it (for a check before it
    is committed with :func:`commit`); the temporary file is removed if it is still there at the end,
    whatever ends the block (a write error, Ctrl-C, an exception)."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _fail(path, e) from None
    tmp = Path(name)
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                view = memoryview(data)
                for i in range(0, len(view), _CHUNK):
                    fh.write(view[i : i + _CHUNK])
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise _fail(path, e) from None
        yield tmp
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder is gone or read-only: nothing was left in it


def commit(tmp: Path, path: Path) -> None:
    """Rename a staged file into place (atomic on one file system) with the usual mode, and make the
    rename durable."""
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600
        os.replace(tmp, path)
    except OSError as e:
        raise _fail(Path(path), e) from None
    fsync_dir(Path(path).parent)


def write_atomic(path: Path, data: bytes | memoryview | str) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with staged(path, data.encode("utf-8") if isinstance(data, str) else data) as tmp:
        commit(tmp, path)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; some file systems refuse to fsync a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_number(value: float) -> float | str | None:
    """A number for a JSON document: NaN as null, ±inf as ``"inf"`` / ``"-inf"``, others unchanged."""
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
