"""Plugins: built-ins through entry points, inline plugins, clashes, broken and third-party plugins."""

import ast
import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest
import torch

import arvision
from arvision.build import resolve
from arvision.config import check, setting
from arvision.errors import ArvisionError, RecipeError
from arvision.plugins import PluginInfo, load_plugins
from arvision.recipe import structure_recipe
from arvision.registry import DuplicateComponentError
from conftest import REPO, tiny_data

BUILTIN_COMPONENTS = {
    "tokenizer": {"pixels", "palette"},
    "ordering": {"raster"},
    "decoder": {"linear"},
    "target": {"ce", "mse"},
}

BROKEN_ERROR = "the broken plugin exploded on import"


def builtin_infos(plugins) -> list[PluginInfo]:
    return [info for info in plugins.infos if info.distribution == "arvision"]


def assert_builtins_registered(plugins) -> None:
    for kind, names in BUILTIN_COMPONENTS.items():
        registry = plugins.registry(kind)
        assert names <= set(registry.entries), (kind, sorted(registry.entries))
        for name in names:
            assert registry.get(name).factory.__module__.startswith("arvision_plugins."), name


# ---------------------------------------------------------------- (a) built-ins


def test_builtins_load_from_the_arvision_distributions_entry_points():
    plugins = load_plugins(autoload=False)
    assert_builtins_registered(plugins)
    eps = {ep.name: ep for ep in entry_points(group="arvision") if ep.dist.name == "arvision"}
    infos = builtin_infos(plugins)
    assert infos, plugins.infos
    assert {info.name for info in infos} == set(eps)
    registered: dict[str, set[str]] = {}
    for info in infos:
        assert info.version == arvision.__version__
        assert info.error is None, info
        assert eps[info.name].value.startswith("arvision_plugins."), eps[info.name]
        for kind, names in info.registers.items():
            registered.setdefault(kind, set()).update(names)
            for name in names:  # each registration knows the entry point that made it
                assert plugins.get(kind, name).plugin == info.name
    for kind, names in BUILTIN_COMPONENTS.items():
        assert names <= registered[kind], kind


def test_registrations_carry_the_components_attrs_config_class():
    plugins = load_plugins(autoload=False)
    for kind, names in BUILTIN_COMPONENTS.items():
        for name in names:
            registration = plugins.get(kind, name)
            assert registration.kind == kind and registration.name == name
            assert attrs.has(registration.config), registration
            assert registration.config.__module__.startswith("arvision_plugins.")


def test_arvision_package_never_imports_the_builtin_plugins():
    offenders = []
    for path in sorted((REPO / "arvision").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "arvision_plugins"]
    assert offenders == []


# ---------------------------------------------------------------- (b) inline plugins


@attrs.frozen
class ZigzagConfig:
    turns: int = setting(1, "turns of the zigzag", validator=check(lambda v: v > 0, "a number > 0"))
    clockwise: bool = setting(True, "direction")


class ZigzagPlugin:
    @arvision.hookimpl
    def register_orderings(self, register):
        register("zigzag", object, ZigzagConfig)


@attrs.frozen
class HalfConfig:
    factor: float = setting(0.5, "scale")


@arvision.hookimpl
def _register_half_target(register):
    register("half", object, HalfConfig)


def test_inline_plugins_add_components_a_recipe_can_name():
    half = SimpleNamespace(register_targets=_register_half_target)
    plugins = load_plugins(autoload=False, extra={"zigzag": ZigzagPlugin(), "half": half})
    assert_builtins_registered(plugins)
    infos = {info.name: info for info in plugins.infos}
    assert infos["zigzag"] == PluginInfo("zigzag", None, None, {"ordering": ["zigzag"]})
    assert infos["half"].registers == {"target": ["half"]}
    assert plugins.get("ordering", "zigzag").plugin == "zigzag"

    data = tiny_data(ordering={"name": "zigzag", "turns": 3}, target={"name": "half"})
    recipe = structure_recipe(data, "x.toml", plugins)
    assert type(recipe.ordering.config) is ZigzagConfig
    assert recipe.ordering.config == ZigzagConfig(turns=3, clockwise=True)
    assert type(recipe.target.config) is HalfConfig
    assert recipe.target.config.factor == 0.5


@pytest.mark.parametrize(("table", "message"), [
    ({"name": "zigzag", "turns": 0}, "x.toml: ordering.turns: expected a number > 0, got 0"),
    ({"name": "zigzag", "turns": "3"}, "x.toml: ordering.turns: expected int, got '3'"),
    ({"name": "zigzag", "speed": 2}, "x.toml: ordering.speed: unknown key (expected one of: turns, "
                                     "clockwise)"),
    ({"name": "zigzg"}, "x.toml: ordering.name: unknown ordering 'zigzg' (did you mean 'zigzag'?"),
])
def test_inline_plugins_table_is_validated_by_its_own_class(table, message):
    plugins = load_plugins(autoload=False, extra={"zigzag": ZigzagPlugin()})
    with pytest.raises(RecipeError) as exc:
        structure_recipe(tiny_data(ordering=table), "x.toml", plugins)
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_fresh_manager_does_not_see_another_ones_inline_plugins():
    load_plugins(autoload=False, extra={"zigzag": ZigzagPlugin()})
    plugins = load_plugins(autoload=False)
    assert "zigzag" not in plugins.registry("ordering")
    with pytest.raises(RecipeError, match=r"ordering\.name: unknown ordering 'zigzag'"):
        structure_recipe(tiny_data(ordering={"name": "zigzag"}), "x.toml", plugins)


# ---------------------------------------------------------------- (c) clashes


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    first = SimpleNamespace(register_orderings=arvision.hookimpl(
        lambda register: register("zigzag", object, ZigzagConfig)))
    second = SimpleNamespace(register_orderings=arvision.hookimpl(
        lambda register: register("zigzag", object, ZigzagConfig)))
    with pytest.raises(DuplicateComponentError) as exc:
        load_plugins(autoload=False, extra={"first_plugin": first, "second_plugin": second})
    message = str(exc.value)
    assert "'zigzag'" in message
    assert "'first_plugin'" in message and "'second_plugin'" in message
    assert isinstance(exc.value, ArvisionError)  # the CLI prints it as one line, exit 2


def test_clash_with_a_builtin_names_the_builtin_plugin():
    mine = SimpleNamespace(register_targets=arvision.hookimpl(
        lambda register: register("mse", object, HalfConfig)))
    with pytest.raises(DuplicateComponentError) as exc:
        load_plugins(autoload=False, extra={"my_mse": mine})
    message = str(exc.value)
    assert "target 'mse'" in message
    assert "'targets'" in message and "'my_mse'" in message


# ---------------------------------------------------------------- (d) third-party distributions

GOOD_PLUGIN = '''
"""A third-party plugin: an L1 target."""
import attrs
from arvision import hookimpl
from arvision.components import Target
from arvision.config import check, setting


@attrs.frozen
class L1Config:
    scale: float = setting(1.0, "multiplier", validator=check(lambda v: v > 0, "a number > 0"))


class L1Target(Target):
    def __init__(self, config, spec):
        if spec.discrete:
            raise ValueError("'l1' scores features, not ids")
        super().__init__(config, spec)

    def loss(self, prediction, target):
        return (prediction.float() - target.float()).abs().mean(dim=-1) * self.config.scale


@hookimpl
def register_targets(register):
    register("l1", L1Target, L1Config)
'''

BROKEN_PLUGIN = f'raise RuntimeError("{BROKEN_ERROR}")\n'


def make_distribution(root: Path, dist: str, version: str, module: str, source: str,
                      entry_point: str) -> None:
    """A module plus the .dist-info an installed wheel would leave (METADATA, entry_points.txt)."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    info.joinpath("entry_points.txt").write_text(f"[arvision]\n{entry_point} = {module}\n")


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A broken and a good third-party plugin, importable from tmp_path."""
    root = tmp_path / "site"
    root.mkdir()
    make_distribution(root, "broken-arvision-plugin", "0.3", "broken_arvision_plugin", BROKEN_PLUGIN,
                      "broken")
    make_distribution(root, "good-arvision-plugin", "1.2", "good_arvision_plugin", GOOD_PLUGIN, "good")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("ARVISION_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("ARVISION_BLOCK_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield root
    for name in ("broken_arvision_plugin", "good_arvision_plugin"):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()


def infos_by_name(plugins) -> dict[str, PluginInfo]:
    return {info.name: info for info in plugins.infos}


def test_broken_plugin_is_reported_and_the_rest_load(third_party):
    plugins = load_plugins()
    infos = infos_by_name(plugins)
    broken = infos["broken"]
    assert broken.distribution == "broken-arvision-plugin"
    assert broken.version == "0.3"
    assert broken.registers == {}
    assert broken.error == f"RuntimeError: {BROKEN_ERROR}"
    assert broken.to_json() == {"name": "broken", "distribution": "broken-arvision-plugin",
                                "version": "0.3", "registers": {},
                                "error": f"RuntimeError: {BROKEN_ERROR}"}
    assert plugins.failures == [broken]
    assert_builtins_registered(plugins)
    assert infos["good"].error is None


def test_good_third_party_plugin_loads_and_its_component_builds(third_party):
    plugins = load_plugins()
    good = infos_by_name(plugins)["good"]
    assert good == PluginInfo("good", "good-arvision-plugin", "1.2", {"target": ["l1"]})
    assert "error" not in good.to_json()
    registration = plugins.get("target", "l1")
    assert registration.plugin == "good"
    assert registration.factory.__module__ == "good_arvision_plugin"

    recipe = structure_recipe(tiny_data(target={"name": "l1", "scale": 2.0}), "x.toml", plugins)
    assert type(recipe.target.config) is registration.config
    assert recipe.target.config.scale == 2.0
    blueprint = resolve(recipe, "x.toml")
    assert type(blueprint.target).__name__ == "L1Target"
    loss = blueprint.target.loss(torch.ones(3, 4), torch.zeros(3, 4))
    assert torch.equal(loss, torch.full((3,), 2.0))
    with pytest.raises(RecipeError, match=r"^x\.toml: target\.scale: expected a number > 0, got -1\.0$"):
        structure_recipe(tiny_data(target={"name": "l1", "scale": -1.0}), "x.toml", plugins)


def test_disable_autoload_loads_builtins_only(third_party, monkeypatch):
    monkeypatch.setenv("ARVISION_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = load_plugins()
    names = set(infos_by_name(plugins))
    assert "good" not in names and "broken" not in names
    assert {info.distribution for info in plugins.infos} == {"arvision"}
    assert plugins.failures == []
    assert "l1" not in plugins.registry("target")
    assert_builtins_registered(plugins)
    with pytest.raises(RecipeError, match=r"target\.name: unknown target 'l1'"):
        structure_recipe(tiny_data(target={"name": "l1"}), "x.toml", plugins)


@pytest.mark.parametrize(("blocked", "absent"), [
    ("good", {"good"}),
    (" good , broken ", {"good", "broken"}),
    ("broken", {"broken"}),
])
def test_block_list_keeps_plugins_out(third_party, monkeypatch, blocked, absent):
    monkeypatch.setenv("ARVISION_BLOCK_PLUGINS", blocked)
    plugins = load_plugins()
    names = set(infos_by_name(plugins))
    assert not (absent & names), names
    assert {"good", "broken"} - absent <= names
    assert ("l1" in plugins.registry("target")) == ("good" not in absent)
    assert [info.name for info in plugins.failures] == ([] if "broken" in absent else ["broken"])
    assert_builtins_registered(plugins)


def test_block_argument_and_environment_add_up(third_party, monkeypatch):
    monkeypatch.setenv("ARVISION_BLOCK_PLUGINS", "broken")
    plugins = load_plugins(blocked=["good"])
    assert not {"good", "broken"} & set(infos_by_name(plugins))


def test_entry_point_named_like_a_builtin_does_not_hide_it(third_party):
    make_distribution(third_party, "clash-arvision-plugin", "2.0", "clash_arvision_plugin",
                      GOOD_PLUGIN.replace('"l1"', '"l1_clash"'), "targets")
    importlib.invalidate_caches()
    try:
        plugins = load_plugins()
    finally:
        sys.modules.pop("clash_arvision_plugin", None)
    assert {"ce", "mse"} <= set(plugins.registry("target").entries)
    rows = [info for info in plugins.infos if info.name == "targets"]
    builtin = [info for info in rows if info.distribution == "arvision"]
    assert builtin and {"ce", "mse"} <= set(builtin[0].registers["target"]) and builtin[0].error is None
    other = [info for info in rows if info.distribution == "clash-arvision-plugin"]
    assert other and other[0].error and "targets" in other[0].error


# ---------------------------------------------------------------- (e) a register hook that raises


def test_plugin_whose_register_hook_raises_is_reported_and_others_load():
    def explode(register):
        register("half_done", object, HalfConfig)
        raise RuntimeError("cannot register: missing weights")

    bad = SimpleNamespace(register_targets=arvision.hookimpl(explode))
    plugins = load_plugins(autoload=False, extra={"bad": bad, "zigzag": ZigzagPlugin()})
    infos = infos_by_name(plugins)
    assert infos["bad"].error == "RuntimeError: cannot register: missing weights"
    assert plugins.failures == [infos["bad"]]
    assert infos["zigzag"].error is None
    assert "zigzag" in plugins.registry("ordering")
    assert_builtins_registered(plugins)


def test_registering_a_non_attrs_config_is_reported_as_the_plugins_error():
    bad = SimpleNamespace(register_decoders=arvision.hookimpl(
        lambda register: register("plain", object, dict)))
    plugins = load_plugins(autoload=False, extra={"plain_config": bad})
    error = infos_by_name(plugins)["plain_config"].error
    assert error.startswith("TypeError: plugin 'plain_config': decoder 'plain' config must be an attrs")
    assert "plain" not in plugins.registry("decoder")
    assert_builtins_registered(plugins)


# ---------------------------------------------------------------- (f) the command line


def arvision_cli(*args: str, pythonpath: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", **env}
    environ["PYTHONPATH"] = os.pathsep.join([str(pythonpath), environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    for name in ("ARVISION_DISABLE_PLUGIN_AUTOLOAD", "ARVISION_BLOCK_PLUGINS"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.run([sys.executable, "-m", "arvision", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_plugins_json_lists_every_plugin_and_survives_a_broken_one(third_party):
    proc = arvision_cli("plugins", "--json", pythonpath=third_party)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list)
    for row in rows:
        keys = {"name", "distribution", "version", "registers"}
        assert set(row) == (keys | {"error"} if row["name"] == "broken" else keys), row
        assert all(isinstance(names, list) for names in row["registers"].values())
    by_name = {row["name"]: row for row in rows}
    assert by_name["broken"] == {"name": "broken", "distribution": "broken-arvision-plugin",
                                 "version": "0.3", "registers": {},
                                 "error": f"RuntimeError: {BROKEN_ERROR}"}
    assert by_name["good"] == {"name": "good", "distribution": "good-arvision-plugin",
                               "version": "1.2", "registers": {"target": ["l1"]}}
    builtins: dict[str, set[str]] = {}
    for row in rows:
        if row["distribution"] == "arvision":
            assert row["version"] == arvision.__version__
            for kind, names in row["registers"].items():
                builtins.setdefault(kind, set()).update(names)
    assert all(names <= builtins[kind] for kind, names in BUILTIN_COMPONENTS.items()), builtins


def test_plugins_table_shows_the_broken_plugin_and_exits_0(third_party):
    proc = arvision_cli("plugins", pythonpath=third_party)
    assert proc.returncode == 0, proc.stderr
    for text in ("broken-arvision-plugin", "good-arvision-plugin", "l1", "RuntimeError", "raster"):
        assert text in proc.stdout, text


def test_other_commands_warn_once_about_a_broken_plugin_and_still_work(third_party):
    proc = arvision_cli("check", "recipes/aim_pixels_fmnist.toml", "--json", "--set", "target.name=l1",
                        pythonpath=third_party)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["targets_per_decoder"] == 48
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("arvision: warning: "), lines
    for text in ("'broken'", "broken-arvision-plugin", BROKEN_ERROR):
        assert text in lines[0], text


def test_cli_reports_a_component_clash_in_one_line(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    make_distribution(root, "clash-arvision-plugin", "2.0", "clash_arvision_plugin",
                      GOOD_PLUGIN.replace('"l1"', '"mse"'), "clash")
    proc = arvision_cli("plugins", pythonpath=root)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'mse'" in lines[0] and "'targets'" in lines[0] and "'clash'" in lines[0], lines[0]
    # ...and the way out the message suggests works.
    proc = arvision_cli("plugins", "--json", pythonpath=root, ARVISION_BLOCK_PLUGINS="clash")
    assert proc.returncode == 0, proc.stderr
    assert "clash" not in {row["name"] for row in json.loads(proc.stdout)}
