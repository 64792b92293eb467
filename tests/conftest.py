"""Shared pytest fixtures, the end-of-run table of finite-difference errors, the README's tested blocks
and every layer kind built small."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# As the cnnbp command does (cnnbp/app.py): one BLAS thread, set before NumPy is first imported, so
# that in-process training in the tests runs as fast as the command (a pool of BLAS threads spinning
# on small products made a test's default run take 35 s instead of 2 s on a busy 2-core machine).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cnnbp import plugins  # noqa: E402
from cnnbp.core.layers import Dense, Flatten, Layer  # noqa: E402
from cnnbp.core.network import Sequential  # noqa: E402
from cnnbp.core.registry import LAYERS  # noqa: E402
from tests.fd import FD_MAX_REL_ERR, format_fd_table  # noqa: E402


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


@pytest.fixture(autouse=True)
def crash_logs_stay_out_of_the_users_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The traceback of an internal error (exit 70) goes to ``$XDG_CACHE_HOME/cnnbp``: a temporary one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the largest relative error each finite-difference check saw, if any ran."""
    if FD_MAX_REL_ERR:
        terminalreporter.write_sep("-", "largest finite-difference relative error per check")
        terminalreporter.write_line(format_fd_table())


# ---- the README's tested blocks (tests/test_readme.py, tests/cli/commands/test_trace.py) --------------

README = Path(__file__).resolve().parents[1] / "README.md"


def block_after(marker: str) -> str:
    """The fenced code block that follows ``<!-- tested: MARKER -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- tested: {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"no block marked {marker!r} in the README"
    return match.group(1)


# ---- every layer kind, built small (tests/test_layer_kinds.py, tests/core/test_trace.py) --------------

IMAGE = (2, 6, 7)


VECTOR = (5,)


#: hyper-parameters to build each kind with (several for a kind with modes); kinds not listed take none
EXAMPLES: dict[str, list[dict]] = {
    "conv": [{"filters": 3, "kernel": [2, 3], "stride": [1, 2], "padding": [1, 0]},
             {"filters": 2, "kernel": 3, "bias": "untied"}],
    "dense": [{"units": 4}],
    "pool": [{"size": [2, 3], "stride": [1, 2], "mode": "max"}, {"size": 2, "mode": "mean"},
             {"size": [3, 2], "stride": 1, "mode": "lp", "p": 3.0}],
    "subsample": [{"scale": 2}],
    "leaky_relu": [{"alpha": 0.2}],
    "batchnorm": [{}, {"momentum": 0.3, "eps": 0.001}],
}  # fmt: skip


CASES = [(kind, h) for kind in LAYERS for h in EXAMPLES.get(kind, [{}])]


def network(kind: str, hyper: dict, dtype: type = np.float64) -> Sequential:
    """The layer between an input and a flatten + dense head, built with random (not initial) weights."""
    layer = LAYERS[kind].from_hyper(hyper, name="under_test")
    shape = VECTOR if kind == "dense" else IMAGE
    head: list[Layer] = [] if kind in ("dense", "flatten") else [Flatten(name="flat")]
    net = Sequential([layer, *head, Dense(3, name="head")], shape)
    net.build(np.random.default_rng(0), dtype)
    rng = np.random.default_rng(1)
    for group in net.parameters().values():
        for key, w in group.items():
            group[key][...] = rng.uniform(-0.8, 0.8, size=w.shape)
    return net


def inputs(net: Sequential, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(n, *net.input_shape))
    x += np.sign(x) * 0.05  # away from relu's and |x|'s kink at 0
    return x, rng.integers(0, 3, size=n)
