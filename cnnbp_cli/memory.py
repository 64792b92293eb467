"""How much more memory this process can have, and the one check of a size against it.

:func:`available` is the smallest of what the machine, the container and the process's own limits
leave free right now:

* the kernel's ``MemAvailable`` (``/proc/meminfo``: free memory plus what it can reclaim at once);
* a container's limit less its usage (cgroup v2 ``memory.max`` − ``memory.current``; v1
  ``memory.limit_in_bytes`` − ``memory.usage_in_bytes``);
* ``ulimit -v`` (``RLIMIT_AS``) less the process's address space (``VmSize``), and ``RLIMIT_DATA``
  less its data segment (``VmData``);
* where ``/proc`` is missing (macOS), the free physical pages, or half of the physical memory.

It is measured when asked: memory taken by arrays already loaded is no longer available.  cnnbp checks
every large allocation it can foresee against it before making it (data files by their declared
sizes, training, evaluation and the probe batch by :mod:`cnnbp.config`'s estimate), so a run that
cannot fit is one line naming what to change instead of a MemoryError half-way.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from cnnbp.errors import UserError

__all__ = ["address_space_limited", "available", "check_fits", "fmt_bytes"]


def fmt_bytes(n: float) -> str:
    """``1.2 GB``, ``340.5 MB``, ``12.0 kB`` (decimal units, one decimal)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _meminfo(path: str, *keys: str) -> dict[str, int]:
    """``key: bytes`` of the ``key:  N kB`` lines of a /proc file (empty where it cannot be read)."""
    out: dict[str, int] = {}
    try:
        for line in Path(path).read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in keys and rest.split():
                out[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_free() -> int | None:
    """A container's memory limit less its usage (None without a limit)."""
    root = Path("/sys/fs/cgroup")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # cgroup v2
            folder = root / rel.lstrip("/")
            limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1
            folder = root / "memory" / rel.lstrip("/")
            if not folder.is_dir():
                folder = root / "memory"
            limit = _read_int(folder / "memory.limit_in_bytes")
            used = _read_int(folder / "memory.usage_in_bytes")
        else:
            continue
        if limit is not None and used is not None and limit < 2**60:  # v1 says "no limit" with 2^63
            return max(0, limit - used)
    return None


def _rlimit_free() -> int | None:
    """``RLIMIT_AS`` less the address space in use, ``RLIMIT_DATA`` less the data segment (the smaller)."""
    status = _meminfo("/proc/self/status", "VmSize", "VmData")
    free = []
    for limit_id, key in ((resource.RLIMIT_AS, "VmSize"), (getattr(resource, "RLIMIT_DATA", None), "VmData")):
        if limit_id is None:
            continue
        try:
            soft, _ = resource.getrlimit(limit_id)
        except (OSError, ValueError):
            continue
        if soft != resource.RLIM_INFINITY and key in status:
            free.append(max(0, soft - status[key]))
    return min(free) if free else None


def address_space_limited() -> bool:
    """Whether ``ulimit -v`` (``RLIMIT_AS``) or ``RLIMIT_DATA`` limits this process: then address space
    that is reserved but hardly used (a thread's stack and malloc arena) counts as well."""
    for limit_id in (resource.RLIMIT_AS, getattr(resource, "RLIMIT_DATA", None)):
        try:
            if limit_id is not None and resource.getrlimit(limit_id)[0] != resource.RLIM_INFINITY:
                return True
        except (OSError, ValueError):
            continue
    return False


def _physical_free() -> int | None:
    """Where /proc is missing: the free physical pages, else half of the physical memory."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    for name, share in (("SC_AVPHYS_PAGES", 1), ("SC_PHYS_PAGES", 2)):
        try:
            return os.sysconf(name) * page // share
        except (AttributeError, ValueError, OSError):
            continue
    return None


def available() -> int | None:
    """Bytes this process can still allocate (see the module docstring); None when nothing says."""
    machine = _meminfo("/proc/meminfo", "MemAvailable").get("MemAvailable")
    found = [v for v in (machine, _cgroup_free(), _rlimit_free()) if v is not None]
    if machine is None:
        physical = _physical_free()
        if physical is not None:
            found.append(physical)
    return min(found) if found else None


def check_fits(need: int, place: str, what: str, fix: str, budget: int | None = None) -> None:
    """UserError ``<place>: <what> needs about <need>, more than the <free> of memory available; <fix>``
    when ``need`` bytes are more than ``budget`` (default: :func:`available` now)."""
    budget = available() if budget is None else budget
    if budget is not None and need > budget:
        raise UserError(
            f"{place}: {what} needs about {fmt_bytes(need)}, more than the {fmt_bytes(budget)} of memory "
            f"available; {fix}"
        )
