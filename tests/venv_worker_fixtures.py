"""Fixtures for test files that run calls in one venv on the host's Python.

A test file imports them by name (``from venv_worker_fixtures import mgr,
shared, fresh, any_env``); each file gets its own manager and venv (module
scope), named after the file.
"""
import itertools
import subprocess
import sys

import pytest

from conftest import local_interpreters, wetlite

_names = itertools.count(1)


def _stem(request):
    return request.module.__name__.rpartition(".")[2].replace("test_", "")


@pytest.fixture(scope="module")
def mgr(request, tmp_path_factory):
    m = wetlite.EnvironmentManager(root=str(tmp_path_factory.mktemp(_stem(request)) / "root"), tool="venv")
    yield m
    m.exit()


@pytest.fixture(scope="module")
def shared(request, mgr, tmp_path_factory):
    """A venv on the host's Python (without pip: the executor needs none), its worker running."""
    path = str(tmp_path_factory.mktemp(_stem(request)) / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    env = mgr.load(_stem(request), path)
    env.launch(timeout=30)
    yield env
    env.exit()


@pytest.fixture
def fresh(request, mgr, shared):
    """make() -> another launched Environment on the shared venv, for tests that kill or restart its worker."""
    made = []

    def make():
        e = mgr.load("%sfresh%d" % (_stem(request), next(_names)), shared.path)
        made.append(e)
        return e.launch(timeout=30)
    yield make
    for e in made:
        e.exit()
        mgr.environments.pop(e.name, None)


@pytest.fixture(params=["worker", "main"])
def any_env(request, mgr, shared):
    """The same test against a worker and against main_environment."""
    return shared if request.param == "worker" else mgr.main_environment


def venv_on_local_python(version, path):
    """A venv (without pip) at ``path`` on the local Python ``version``; the test skips where there is none."""
    python = dict(local_interpreters()).get(version)
    if python is None:
        pytest.skip("no local Python %s here (pyenv)" % version)
    if subprocess.run([python, "-m", "venv", "--without-pip", path]).returncode != 0:
        pytest.skip("python %s cannot make a venv here" % version)
    return path


def unique_name():
    return next(_names)
