"""Shared fixtures for the wetlite test suite.

The module under test is chosen by one indirection (as tomli's tests do), so a
vendored copy can be tested with WETLITE_TEST_MODULE=pkg._vendor.wetlite.
"""
import base64
import glob
import hashlib
import importlib
import os
import re
import shutil
import sys
import tempfile
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STAND_INS = os.path.join(HERE, "stand_ins")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Nothing left behind: every temporary file of the session goes into one
# directory -- pytest's tmp_path dirs, wetlite's private dirs, the stand-ins'
# caches, what pip and the tools write -- through TMPDIR, which this process
# and every child honour.  It is removed at the end of a run that passed (a
# failed run keeps it for a look, says where, and the next run removes it).  The
# name is short because AF_UNIX socket paths under it are limited to about 100
# characters.
def _remove_finished_sessions(base):
    """Remove the temp dirs that earlier failed runs kept (their process is gone)."""
    for path in glob.glob(os.path.join(base, "wlt-*")):
        try:
            with open(os.path.join(path, ".session-pid")) as f:
                pid = int(f.read())
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(pid, 0)                     # still running: not ours to touch
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue


_remove_finished_sessions(tempfile.gettempdir())
SESSION_TMP = tempfile.mkdtemp(prefix="wlt-")
with open(os.path.join(SESSION_TMP, ".session-pid"), "w") as _f:
    _f.write(str(os.getpid()))
os.environ["TMPDIR"] = tempfile.tempdir = SESSION_TMP

wetlite = importlib.import_module(os.environ.get("WETLITE_TEST_MODULE", "wetlite"))

# Time in tests: an upper bound only says "did not hang" (or "did not wait for X", where X takes
# longer still); speed targets live in scripts/bench.py.  Waits poll a condition up to a deadline.
HANG = 20.0


def wait_for(predicate, timeout=HANG, interval=0.02):
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False)."""
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# CI installs requirements-test.txt itself, so there a missing test requirement
# is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def needs(available, reason):
    """Mark a test that needs a test requirement (NumPy, packaging, tree-sitter...).

    Without it the test skips on a developer's machine and fails in CI.
    """
    return pytest.mark.wetlite_needs(available=bool(available), reason=reason)


# Random order: pytest-randomly (requirements-test.txt) shuffles the tests with the seed that
# pyproject.toml pins, so every run, CI's included, tries the same order; pass
# --randomly-seed=default for a fresh one, or -p no:randomly for the files' order.
def pytest_addoption(parser, pluginmanager):
    if not pluginmanager.has_plugin("randomly"):
        parser.addoption("--randomly-seed", default=None, help="(pytest-randomly is not active: ignored)")


# Which Pythons the cross-version tests (parametrized by "3.X") really ran on, for the summary.
_CROSS_VERSION = {}


def pytest_runtest_logreport(report):
    match = re.search(r"\[(3\.(?:[6-9]|1[0-9]))[-\]]", report.nodeid)
    if match and (report.when == "call" or report.skipped):
        outcome = "ran" if report.passed else "skipped" if report.skipped else "failed"
        _CROSS_VERSION.setdefault(match.group(1), set()).add(outcome)


def pytest_terminal_summary(terminalreporter, config):
    if config.pluginmanager.has_plugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line("random order, seed %s (replay: python -m pytest -p randomly --randomly-seed=%s)"
                                    % (seed, seed))
    if not _CROSS_VERSION:
        return
    found = dict(local_interpreters())
    parts = []
    for version in sorted(_CROSS_VERSION, key=lambda v: int(v.split(".")[1])):
        outcomes = _CROSS_VERSION[version]
        if "ran" in outcomes or "failed" in outcomes:
            where = found.get(version, "?")
            full = re.search(r"versions/(3\.\d+\.\d+\w*)/", where)
            parts.append("%s (%s)" % (version, full.group(1) if full else where))
        else:
            parts.append("%s (not installed: skipped)" % version)
    terminalreporter.write_line("cross-version tests ran on Python " + ", ".join(parts))


def pytest_sessionfinish(session, exitstatus):
    # (This process's own scripts and runtime dirs go at its exit; the stand-ins' cache is meant to stay.)
    own = os.path.basename(getattr(wetlite, "_scripts_dir_path", None) or "")
    leftovers = sorted(name for name in os.listdir(SESSION_TMP)
                       if name.startswith("wetlite") and not name.startswith("wetlite-standin") and name != own
                       and not name.startswith("wetlite-runtime-%d-" % os.getpid()))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leftovers and reporter is not None:
        reporter.ensure_newline()
        reporter.write_line("wetlite left these in the temp dir: %s" % ", ".join(leftovers), yellow=True)
    if exitstatus == 0:
        shutil.rmtree(SESSION_TMP, ignore_errors=True)
    elif reporter is not None:
        reporter.write_line("this run's temporary files are kept in %s" % SESSION_TMP)


def skip_unless_ci(reason):
    """Skip for a reason CI can fix (it installs what it needs): there it is a failure instead."""
    if IN_CI:
        pytest.fail("CI installs what the tests need, yet: %s" % reason, pytrace=False)
    pytest.skip(reason)


def import_requirement(name):
    """Import test requirement ``name`` (requirements-test.txt); without it, skip_unless_ci()."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_unless_ci("%s is not installed (%s): python -m pip install -r requirements-test.txt" % (name, exc))


def pytest_runtest_setup(item):
    for mark in item.iter_markers("wetlite_needs"):
        if not mark.kwargs["available"]:
            skip_unless_ci(mark.kwargs["reason"])


# --- local interpreters -----------------------------------------------------

def local_interpreters():
    """[(major.minor, path)] of the CPython 3.6+ interpreters pyenv has here, one per minor."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = {}
    for path in sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3"))):
        m = re.match(r"^3\.(\d+)\.\d+$", os.path.basename(os.path.dirname(os.path.dirname(path))))
        if m and int(m.group(1)) >= 6:
            found["3.%s" % m.group(1)] = path
    host = "%d.%d" % sys.version_info[:2]
    found.setdefault(host, sys.executable)
    return sorted(found.items(), key=lambda kv: tuple(int(x) for x in kv[0].split(".")))


def tree(directory):
    """Every name below ``directory`` (relative, sorted): for "nothing left behind" checks."""
    found = []
    for dirpath, dirnames, filenames in os.walk(str(directory)):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), str(directory)))
    return sorted(found)


# --- packages the tests build -----------------------------------------------

def make_wheel(directory, name, version, source="def hello():\n    return 'hello from %(name)s %(version)s'\n"):
    """Write a pure-Python wheel for module ``name`` (no build tools needed)."""
    module = name.replace("-", "_")
    dist = "%s-%s" % (module, version)
    path = os.path.join(str(directory), "%s-py3-none-any.whl" % dist)
    files = {
        "%s/__init__.py" % module: source % {"name": name, "version": version},
        "%s.dist-info/METADATA" % dist: "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version),
        "%s.dist-info/WHEEL" % dist: "Wheel-Version: 1.0\nGenerator: wetlite-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            data = text.encode("utf-8")
            zf.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append("%s,sha256=%s,%d" % (arcname, digest, len(data)))
        record.append("%s.dist-info/RECORD,," % dist)
        zf.writestr("%s.dist-info/RECORD" % dist, "\n".join(record) + "\n")
    return path


def file_url(path):
    from urllib.request import pathname2url
    return "file://" + pathname2url(os.path.abspath(str(path)))


# --- stand-in tools -----------------------------------------------------------

def install_stand_in(directory, tool):
    """Copy a stand-in into directory/tool with a shebang for this interpreter."""
    os.makedirs(str(directory), exist_ok=True)
    with open(os.path.join(STAND_INS, tool), encoding="utf-8") as f:
        body = f.read().split("\n", 1)[1]
    path = os.path.join(str(directory), tool)
    with open(path, "w", encoding="utf-8") as f:
        f.write("#!%s\n%s" % (sys.executable, body))
    os.chmod(path, 0o755)
    return path


# The conda-tool scenarios run against a real binary when WETLITE_TEST_<TOOL> names
# one, and against the stand-in otherwise.
REAL_TOOLS = {"micromamba": os.environ.get("WETLITE_TEST_MICROMAMBA") or None,
              "pixi": os.environ.get("WETLITE_TEST_PIXI") or None}


def stand_in(tool):
    """True when the scenarios run ``tool``'s stand-in: guards assertions that hold only for it."""
    return REAL_TOOLS[tool] is None


def tool_marks(tool):
    """Marks for a scenario of ``tool``: ``real_tool`` when it runs the real binary."""
    return [pytest.mark.real_tool] if REAL_TOOLS[tool] else []


def tool_binary(directory, tool):
    """The binary the scenarios run: a copy of the real one (under its own name, which micromamba's
    shell hook insists on), or the stand-in."""
    if stand_in(tool):
        return install_stand_in(directory, tool)
    import shutil
    os.makedirs(str(directory), exist_ok=True)
    path = os.path.join(str(directory), tool + (".exe" if os.name == "nt" else ""))
    shutil.copy2(REAL_TOOLS[tool], path)
    return path


def tripwire(directory, name):
    """An executable that records each call in ``<directory>/calls`` and fails: (path, calls file)."""
    os.makedirs(str(directory), exist_ok=True)
    calls = os.path.join(str(directory), "calls")
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write('#!/bin/sh\necho "$*" >> "%s"\nexit 1\n' % calls)
    os.chmod(path, 0o755)
    return path, calls


@pytest.fixture(scope="session")
def local_channel(tmp_path_factory):
    """A local conda channel URL: WETLITE_TEST_CHANNEL, or one built from this interpreter (conda_channel.py)."""
    explicit = os.environ.get("WETLITE_TEST_CHANNEL")
    if explicit:
        return explicit
    from conda_channel import build_channel
    return file_url(build_channel(str(tmp_path_factory.mktemp("channel"))))


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    return str(path)
