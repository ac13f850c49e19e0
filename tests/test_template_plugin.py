"""The template plugin (examples/arvision-snake) installed and used exactly as a user would.

One test builds a throwaway virtual environment, ``pip install``s the template into it (a real,
non-editable install, offline) and drives ``python -m arvision`` there: the plugin is listed,
a recipe using it checks and trains, the autoload switch and the block list keep it out, and the
template's own tests pass against the installed package.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "arvision-snake"
BUILTINS = {"decoders", "orderings", "pixels", "targets"}

RECIPE = """\
# aim_pixels_fmnist.toml shrunk to a smoke run, in the snake order
[run]
name = "snake_smoke"

[data]
source = "synthetic"
synthetic = { num_images = 16, image_size = 16, channels = 1 }

[encoder]
name = "vit_tiny_patch16_224"
img_size = 16
patch_size = 4
embed_dim = 32
depth = 2
num_heads = 2

[tokenizer]
name = "pixels"
normalize = true

[ordering]
name = "snake"

[[decoders]]
name = "linear"
predicts = "next"

[target]
name = "mse"

[train]
batch_size = 4
steps = 2
precision = "fp32"
"""


def _environ(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARVISION_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", OMP_NUM_THREADS="1", **extra)
    return env


def _call(*args: str | Path, timeout: float = 300, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command; a failure shows the command, its exit status and its output."""
    command = [str(arg) for arg in args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or _environ())
    assert done.returncode == 0, (
        f"{' '.join(command)} exited {done.returncode}\n--- stdout\n{done.stdout}\n"
        f"--- stderr\n{done.stderr}"
    )
    return done


def make_venv(root: Path) -> tuple[Path, Path]:
    """A bare venv that also sees this interpreter's packages; returns (python, site-packages)."""
    _call(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root)
    python = root / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    site = Path(_call(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .stdout.strip())
    if sys.prefix != sys.base_prefix:
        # We run inside a venv, whose packages a nested venv's --system-site-packages does not see.
        # addsitedir (not a bare path) also runs their .pth files: editable installs need that.
        ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
        (site / "_arvision_outer.pth").write_text(
            "".join(f"import site; site.addsitedir({path!r})\n" for path in ours))
    return python, site


def install_template(python: Path, tmp_path: Path) -> None:
    """``pip install`` a copy of the template: offline, no build isolation, not editable.

    The copy keeps the build's leftovers (build/, *.egg-info) out of the repository.
    """
    source = tmp_path / "arvision-snake"
    shutil.copytree(TEMPLATE, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    _call(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--no-build-isolation", "--no-cache-dir", source, timeout=180)


def plugins_json(python: Path, **env: str) -> dict[str, dict]:
    done = _call(python, "-m", "arvision", "plugins", "--json", env=_environ(**env))
    return {info["name"]: info for info in json.loads(done.stdout)}


def test_template_plugin_installs_and_runs(tmp_path: Path) -> None:
    python, site = make_venv(tmp_path / "venv")
    install_template(python, tmp_path)
    assert (site / "arvision_snake" / "__init__.py").is_file()  # a real install, not a link
    recipe = tmp_path / "snake.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"

    # Each command imports torch (seconds): run them side by side.
    with ThreadPoolExecutor(max_workers=6) as pool:
        listed = pool.submit(plugins_json, python)
        no_autoload = pool.submit(plugins_json, python, ARVISION_DISABLE_PLUGIN_AUTOLOAD="1")
        blocked = pool.submit(plugins_json, python, ARVISION_BLOCK_PLUGINS="snake")
        checked = pool.submit(_call, python, "-m", "arvision", "check", recipe, "--json")
        trained = pool.submit(_call, python, "-m", "arvision", "run", recipe,
                              "--set", "train.steps=2", "--out", out)
        own_tests = pool.submit(_call, python, "-m", "pytest", TEMPLATE / "tests", "-q",
                                "-p", "no:cacheprovider", cwd=TEMPLATE.parents[1])

    plugins = listed.result()
    assert plugins["snake"] == {"name": "snake", "distribution": "arvision-snake",
                                "version": "0.1.0", "registers": {"ordering": ["snake"]}}
    assert plugins.keys() >= BUILTINS
    assert "raster" in plugins["orderings"]["registers"]["ordering"]
    for without in (no_autoload.result(), blocked.result()):
        assert "snake" not in without
        assert without.keys() >= BUILTINS

    summary = json.loads(checked.result().stdout)
    assert summary["ordering"]["name"] == "snake"
    assert summary["ordering"]["segments"] == 16  # (16 / 4)^2 tokens, one per segment
    assert "trained to step 2" in trained.result().stdout
    assert (out / "checkpoint.pt").is_file()
    assert 'name = "snake"' in (out / "recipe.toml").read_text()
    assert " passed" in own_tests.result().stdout
