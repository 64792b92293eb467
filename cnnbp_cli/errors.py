"""The error types the command line turns into one line and an exit code, and the crash log.

* :class:`UserError`: a mistake the user can fix (a bad config, file or option, a full disk, too
  little memory): ``error: <message>``, exit 2.
* :class:`InternalError`: anything cnnbp did not expect, which is a bug: one line that says so and
  names the file holding the traceback (the run's ``train.log``, or :func:`write_crash_log`'s file
  under the user's cache folder), exit 70 (``EX_SOFTWARE`` of sysexits.h).
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["InternalError", "UserError", "describe", "out_of_memory", "write_crash_log"]


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it on one line and exits 2.

    The message starts with the place (``model.layers[2].kernel``, a file path)
    followed by a colon and the problem.
    """

    exit_code = 2


class InternalError(Exception):
    """An error cnnbp did not expect (a bug); ``error`` is the original exception and ``log`` the file
    its traceback was written to (None when none could be written).  The CLI prints it on one line and
    exits 70."""

    exit_code = 70

    def __init__(self, error: BaseException, log: Path | None) -> None:
        self.error, self.log = error, log
        where = f"; the details are in {log}" if log is not None else ""
        super().__init__(f"internal error, a bug in cnnbp (please report it): {describe(error)}{where}")


def describe(error: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def out_of_memory(error: MemoryError, doing: str = "") -> UserError:
    """The one-line UserError for a MemoryError (``doing``: what cnnbp was doing, e.g. ``in epoch 3``,
    ``while writing checkpoint 2``)."""
    detail = " ".join(str(error).split())
    detail = f": {detail}" if detail else ""
    doing = f" {doing}" if doing else ""
    return UserError(
        f"out of memory{doing}{detail}; free memory, or make the model, train.batch_size, record.probe "
        "or the data (data.limit) smaller"
    )


def _crash_folder() -> Path:
    """``$XDG_CACHE_HOME/cnnbp`` or ``~/.cache/cnnbp``; the temp folder where neither can be made."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "cnnbp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return Path(tempfile.gettempdir())


def write_crash_log(error: BaseException, log: Path | None = None) -> Path | None:
    """Write ``error``'s traceback to ``log`` (appended: a run's ``train.log``) or, without one, to a new
    ``cnnbp-crash-<time>-<pid>.log`` in the user's cache folder; the file written, or None when no file
    could be written."""
    stamp = datetime.now(timezone.utc)
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    command = " ".join(shlex.quote(a) for a in sys.argv)  # what to run again to see it (a bug report)
    text = f"# cnnbp internal error · {stamp:%Y-%m-%d %H:%M:%S} UTC\n# command: {command}\n{text}"
    targets = [Path(log)] if log is not None else []
    name = f"cnnbp-crash-{stamp:%Y%m%d-%H%M%S}-{os.getpid()}.log"
    targets += [_crash_folder() / name, Path(tempfile.gettempdir()) / name]
    for path in targets:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
            return path
        except OSError:
            continue
    return None
