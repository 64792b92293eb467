"""Shared pytest fixtures and the end-of-run table of finite-difference errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cnnbp import plugins
from cnnbp.core.registry import LAYERS
from tests.fd import FD_MAX_REL_ERR, format_fd_table


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed Generator, fresh for every test."""
    return np.random.default_rng(20240601)


@pytest.fixture(autouse=True)
def no_plugin_outlives_its_test():  # noqa: ANN201 - a generator fixture
    """Every test starts with the built-in layers only: the kinds and modules a test's plugins
    registered are dropped when it ends."""
    kinds, loaded = dict(LAYERS), dict(plugins._LOADED)
    yield
    for p in set(plugins._LOADED.values()) - set(loaded.values()):
        sys.modules.pop(p.module, None)
    LAYERS.clear()
    LAYERS.update(kinds)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the largest relative error each finite-difference check saw, if any ran."""
    if FD_MAX_REL_ERR:
        terminalreporter.write_sep("-", "largest finite-difference relative error per check")
        terminalreporter.write_line(format_fd_table())
