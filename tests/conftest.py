"""Shared pytest fixtures and the end-of-run table of finite-difference errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fd import FD_MAX_REL_ERR, format_fd_table


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed Generator, fresh for every test."""
    return np.random.default_rng(20240601)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the largest relative error each finite-difference check saw, if any ran."""
    if FD_MAX_REL_ERR:
        terminalreporter.write_sep("-", "largest finite-difference relative error per check")
        terminalreporter.write_line(format_fd_table())
