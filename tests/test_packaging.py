"""The wheel holds every module of arvision/ and plugins/, and its entry points import.

An editable install reads the source tree and hides a package left out of the build; a wheel
(``pip install .``) does not. The wheel is built offline from a copy of the build inputs: a stale
``build/`` in the source tree would leak old modules into it, and a concurrent build would share it.
"""

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

#: What the build reads (those that exist); the rest of the repository is not part of the wheel.
BUILD_INPUTS = ("arvision", "plugins", "pyproject.toml", "setup.py", "README.md")
#: Source folder -> the package it installs as.
PACKAGES = {"arvision": "arvision", "plugins": "arvision_plugins"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in BUILD_INPUTS:
        path = REPO / name
        if not path.exists():
            continue
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
               "-w", str(root / "dist"), str(source)]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"pip wheel exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    (built,) = (root / "dist").glob("arvision-*.whl")
    return built


def source_modules() -> list[str]:
    """Every module file of the source tree, as its path inside the wheel."""
    modules = []
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            modules.append(f"{package}/{path.relative_to(REPO / folder).as_posix()}")
    return modules


def entry_points(wheel: Path) -> dict[str, str]:
    """``group/name`` -> ``module[:attr]`` from the wheel's entry_points.txt."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str
        parser.read_string(archive.read(name).decode())
    return {f"{group}/{key}": value for group in parser.sections() for key, value in parser[group].items()}


def test_wheel_holds_every_module(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = source_modules()
    assert "arvision/finetune/__init__.py" in expected and "arvision_plugins/vqkd.py" in expected
    missing = [module for module in expected if module not in names]
    assert not missing, f"modules missing from {wheel.name}: {missing}"


def test_wheel_entry_points_import_from_the_wheel(wheel, tmp_path):
    points = entry_points(wheel)
    assert points["console_scripts/arvision"] == "arvision.cli:main"
    assert {key for key in points if key.startswith("arvision/")} >= {"arvision/pixels", "arvision/vqkd"}
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    # Import each target with the unpacked wheel first on the path and report where it came from,
    # so the editable install of the source tree cannot stand in for a module the wheel lacks.
    script = (
        "import importlib, json, sys\n"
        "found = {}\n"
        "for target in sys.argv[1:]:\n"
        "    module, _, attr = target.partition(':')\n"
        "    loaded = importlib.import_module(module)\n"
        "    if attr:\n"
        "        getattr(loaded, attr)\n"
        "    found[target] = loaded.__file__\n"
        "print(json.dumps(found))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", script, *points.values()], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, f"an entry point does not import from the wheel:\n{done.stderr}"
    found = json.loads(done.stdout.strip().splitlines()[-1])
    outside = {target: path for target, path in found.items()
               if not Path(path).is_relative_to(tmp_path / "site")}
    assert not outside, f"imported from outside the wheel: {outside}"
