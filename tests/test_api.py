"""The public surface, the error types, and the import contract."""
import inspect
import json
import os
import pickle
import re
import subprocess
import sys

import pytest

from conftest import REPO, local_interpreters, wetlite

WETLITE_PY = os.path.join(REPO, "wetlite.py")


def test_all_lists_exactly_the_public_names():
    for name in wetlite.__all__:
        assert getattr(wetlite, name) is not None       # (Task is made on first access)
    public = {name for name, value in vars(wetlite).items()
              if not name.startswith("_") and not inspect.ismodule(value)}
    assert public == set(wetlite.__all__)
    with pytest.raises(AttributeError):
        wetlite.NoSuchName


def test_version_is_a_plain_literal():
    assert re.match(r"^\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?$", wetlite.__version__)
    with open(WETLITE_PY, encoding="utf-8") as f:
        assert '\n__version__ = "%s"\n' % wetlite.__version__ in f.read()


def test_error_hierarchy():
    assert issubclass(wetlite.DownloadError, wetlite.ToolError)
    assert issubclass(wetlite.ToolError, wetlite.WetliteError)
    assert issubclass(wetlite.SpecError, ValueError)
    for cls in (wetlite.ProtocolError, wetlite.RemoteError, wetlite.WorkerDied, wetlite.CallTimeout):
        assert issubclass(cls, wetlite.ExecutorError)
    assert issubclass(wetlite.CallTimeout, TimeoutError)
    assert issubclass(wetlite.ExecutorError, wetlite.WetliteError)


@pytest.mark.parametrize("error, attrs", [
    (wetlite.WetliteError("plain"), {}),
    (wetlite.SpecError("bad spec 'x'"), {}),
    (wetlite.DownloadError("no", url="https://h/x", status=404), {"url": "https://h/x", "status": 404}),
    (wetlite.CommandError("failed", returncode=3, output_tail="a\nb"), {"returncode": 3, "output_tail": "a\nb"}),
    (wetlite.RemoteError("boom", type_name="mod.Err", remote_traceback="tb"),
     {"type_name": "mod.Err", "remote_traceback": "tb"}),
    (wetlite.WorkerDied("died", exitcode=-9, signal=9, stderr_tail="x"),
     {"exitcode": -9, "signal": 9, "stderr_tail": "x"}),
    (wetlite.CallTimeout("slow"), {}),
])
def test_errors_pickle_with_their_attributes(error, attrs):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    for name, value in attrs.items():
        assert getattr(copy, name) == value


def test_sections_appear_in_the_design_order():
    with open(WETLITE_PY, encoding="utf-8") as f:
        text = f.read()
    banners = re.findall(r"^# =+\n# (\d+)\. ([^\n]+)\n", text, re.M)
    numbers = [int(n) for n, _ in banners]
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))
    titles = [t.lower() for _, t in banners]
    order = ["imports", "constants", "compatibility", "errors", "logging", "platform", "downloads", "tools",
             "dependency specs", "scripts", "subprocesses", "environments", "executor protocol", "worker",
             "executor client", "tasks", "remote objects", "worker pools", "wetlands compatibility",
             "command-line", "entry point"]
    positions = [next(i for i, t in enumerate(titles) if t.startswith(word)) for word in order]
    assert positions == sorted(positions)


IMPORT_PROBE = r"""
import json, os, sys, threading
before = set(sys.modules)
files_before = sorted(os.listdir(os.environ["HOME"]))
import wetlite
new = sorted(set(sys.modules) - before - {"wetlite"})
import logging
print(json.dumps({
    "threads": threading.active_count(),
    "handlers": len(logging.getLogger().handlers) + len(logging.getLogger("wetlite").handlers),
    "new_modules": new,
    "logging_was_imported": "logging" in before or "logging" in new,
    "files": sorted(os.listdir(os.environ["HOME"])) == files_before,
}))
"""


def test_import_has_no_side_effects(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=env, stdout=subprocess.PIPE,
                         check=True, cwd=str(tmp_path)).stdout
    result = json.loads(out)
    assert result["threads"] == 1
    assert result["handlers"] == 0
    assert result["files"] is True
    assert os.listdir(str(tmp_path)) == []
    stdlib = set(getattr(sys, "stdlib_module_names", ()))
    if stdlib:
        assert all(name.split(".")[0] in stdlib for name in result["new_modules"]), result["new_modules"]
    # The heavy modules stay out of `import wetlite`.
    for heavy in ("urllib.request", "subprocess", "tarfile", "json", "logging", "argparse", "multiprocessing"):
        assert heavy not in result["new_modules"]


def test_import_works_without_optional_stdlib_modules(tmp_path):
    code = ("import sys\nfor m in ('ssl', '_ssl', '_multiprocessing', 'ctypes', '_ctypes'): sys.modules[m] = None\n"
            "import wetlite\nprint(wetlite.__version__)\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO),
                         stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    assert out == wetlite.__version__


@pytest.mark.parametrize("version, python", local_interpreters())
def test_file_compiles_and_imports_on_every_local_interpreter(version, python):
    code = "import sys; sys.path.insert(0, %r); import wetlite; print(wetlite.__version__)" % REPO
    proc = subprocess.run([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, proc.stdout.decode()
    assert proc.stdout.decode().strip() == wetlite.__version__


@pytest.mark.parametrize("argv", [[WETLITE_PY, "--version"], ["-m", "wetlite", "--version"]])
def test_version_from_the_command_line(argv):
    proc = subprocess.run([sys.executable] + argv, stdout=subprocess.PIPE, cwd=REPO, check=True)
    assert proc.stdout.decode().strip() == "wetlite " + wetlite.__version__


def test_manager_construction_does_no_work(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the constructor must not download or run anything")
    monkeypatch.setattr(wetlite, "_urlopen", forbidden)
    monkeypatch.setattr(wetlite, "_run_streaming", forbidden)
    root = tmp_path / "never-created"
    mgr = wetlite.EnvironmentManager(root=str(root), tool="micromamba")
    assert not root.exists()
    assert mgr.main_environment.python == sys.executable
    assert mgr.environments == {}


def test_seed_aliases_exist():
    assert wetlite.Environment.executeCommands is wetlite.Environment.execute_commands
