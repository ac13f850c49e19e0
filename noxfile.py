"""Developer sessions. They run in the current environment (the project's .venv): arvision pins
a 5 GB torch build that is not worth copying into a fresh virtualenv per session."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The test suite (pass -m 'not slow' to skip the real Fashion-MNIST runs)."""
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff on the package, the built-in plugins, the template plugin and the tests."""
    session.run("python", "-m", "ruff", "check", ".")
