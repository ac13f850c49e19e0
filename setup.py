"""Package discovery for the setuptools build (everything else is in pyproject.toml).

The built-in plugins live in the top-level folder ``plugins/`` but install as the package
``arvision_plugins``. ``[tool.setuptools.packages.find]`` cannot express that rename: it names
packages after their folders, so it would find ``plugins`` (or, searching inside ``plugins/``,
its subpackages without the ``arvision_plugins.`` prefix). Hence this file: both trees are
discovered here, so a new subpackage of ``arvision/`` or ``plugins/`` cannot be left out of a wheel.
"""

from setuptools import find_packages, setup

PLUGINS = "arvision_plugins"

setup(
    packages=[
        *find_packages(include=["arvision", "arvision.*"]),
        PLUGINS,
        *(f"{PLUGINS}.{package}" for package in find_packages(where="plugins")),
    ],
    package_dir={PLUGINS: "plugins"},
)
