"""The install layout: one import name, ``cnnbp``, for both folders; nothing installed as ``core``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"cnnbp": ROOT / "cnnbp_cli", "cnnbp.core": ROOT / "core"}


def packages_on_disk() -> set[str]:
    """Every folder with an ``__init__.py`` under the two roots, by its import name."""
    found = set()
    for name, root in FOLDERS.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            if "__pycache__" not in rel:
                found.add(".".join((name, *rel)))
    return found


def test_pyproject_lists_every_package_under_the_cnnbp_name() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"cnnbp": "cnnbp_cli", "cnnbp.core": "core"}
    assert set(setup["packages"]) == packages_on_disk()
    assert all(p == "cnnbp" or p.startswith("cnnbp.") for p in setup["packages"])


def test_no_source_imports_the_folder_names() -> None:
    """Code imports ``cnnbp...`` only: ``core`` and ``cnnbp_cli`` exist as import names nowhere."""
    pattern = re.compile(r"^\s*(from|import)\s+(core|cnnbp_cli)(\.|\s|$)", re.M)
    sources = [
        p for root in (*FOLDERS.values(), ROOT / "tests", ROOT / "benchmarks") for p in root.rglob("*.py")
    ]
    offenders = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.slow
def test_the_wheel_installs_only_cnnbp(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "runs", "build", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"
        ),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip()[-200:]}")
    (wheel,) = tmp_path.glob("cnnbp-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cnnbp"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "cnnbp/core/layers/conv.py" in names and "cnnbp/datasets/digits.npz" in names
    assert "cnnbp/configs/digits.yaml" in names


def test_no_submodule_shadows_a_public_name() -> None:
    """Importing a submodule sets it as an attribute of its package: one named like a public function
    (``cnnbp.resume``) would replace that function once anything imported it."""
    import importlib
    import pkgutil

    import cnnbp

    for pkg, prefix in ((cnnbp, "cnnbp."), (importlib.import_module("cnnbp.core"), "cnnbp.core.")):
        submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
        shadowing = submodules & set(pkg.__all__)
        assert not shadowing, f"{prefix}{', '.join(sorted(shadowing))}: module names that are public names"


def test_the_command_line_needs_only_the_declared_dependencies() -> None:
    """Every command loads, and its help runs, with the packages pyproject does not declare made
    unimportable (the test extras, and click, which Typer ≥ 0.20 no longer installs)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    declared = {re.split(r"[<>=\[ ]", d)[0].lower().replace("-", "_") for d in deps}
    blocked = sorted({"click", "dask", "distributed", "torch", "onnx", "onnxruntime", "matplotlib",
                      "tensorboardX", "PIL", "hypothesis", "pytest"} - declared)  # fmt: skip
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import fails as if not installed\n"
        "sys.argv = ['cnnbp', 'train', '--help']\n"
        "from cnnbp.__main__ import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: cnnbp train" in proc.stdout
