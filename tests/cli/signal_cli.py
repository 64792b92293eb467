"""``python -m tests.cli.signal_cli K[:INT|TERM...] ARGS...``: the ``cnnbp`` command, sending itself those
signals right after optimiser step K (for tests of real signal handling in a separate process)."""

from __future__ import annotations

import sys

import pytest

from tests.cli.conftest import with_signals

if __name__ == "__main__":
    patch = pytest.MonkeyPatch()
    with_signals(patch, sys.argv[1])
    from cnnbp.app import main

    sys.argv = ["cnnbp", *sys.argv[2:]]
    main()
