"""``python -m tests.cli.capped_cli MB [--unchecked] ARGS...``: the ``cnnbp`` command with at most MB more
megabytes of address space than it has once loaded (``RLIMIT_AS``, as ``ulimit -v`` sets it), for tests
of running out of memory in a separate process.  ``--unchecked`` turns cnnbp's own checks of sizes
against the memory available off, so the allocation itself fails (MemoryError) where the checks would
have stopped the run before it."""

from __future__ import annotations

import resource
import sys

if __name__ == "__main__":
    megabytes, args = int(sys.argv[1]), sys.argv[2:]
    from cnnbp import memory
    from cnnbp.app import main

    if args[:1] == ["--unchecked"]:
        memory.available = lambda: None  # type: ignore[assignment]
        args = args[1:]
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + megabytes * 2**20, resource.RLIM_INFINITY))
    sys.argv = ["cnnbp", *args]
    main()
