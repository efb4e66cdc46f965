"""What the README says about the worker, vendoring and config files is what the code does."""
import hashlib
import os
import shutil
import subprocess
import sys

from conftest import REPO, wetlite

with open(os.path.join(REPO, "README.md"), encoding="utf-8") as _f:
    README = _f.read()


def test_the_worker_command_is_the_one_the_readme_gives(tmp_path):
    assert "`python -u ROOT/state/runtime/<hash>/_wetlite_worker.py`" in README
    root = str(tmp_path / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    env = wetlite.Environment(mgr, "x", str(tmp_path / "prefix"), "venv")
    argv = env._worker_argv()
    with open(os.path.join(REPO, "wetlite.py"), "rb") as f:
        source = f.read()
    runtime = os.path.join(root, "state", "runtime", hashlib.sha256(source).hexdigest()[:16])
    assert argv == [env.python, "-u", os.path.join(runtime, "_wetlite_worker.py")]
    with open(os.path.join(runtime, "wetlite.py"), "rb") as f:
        assert f.read() == source                       # "a copy of the host's own file as wetlite.py"
    with open(os.path.join(runtime, "_wetlite_worker.py")) as f:
        boot = f.read()
    assert "import wetlite" in boot and 'main(["serve"])' in boot


def test_the_vendored_command_line_works_as_the_readme_says(tmp_path):
    assert "python -m yourpkg._vendor.wetlite" in README
    vendor = tmp_path / "yourpkg" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "yourpkg" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    shutil.copy(os.path.join(REPO, "wetlite.py"), str(vendor / "wetlite.py"))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    version = subprocess.run([sys.executable, "-m", "yourpkg._vendor.wetlite", "--version"], cwd=str(tmp_path),
                             env=env, stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    assert version == "wetlite " + wetlite.__version__
    root = str(tmp_path / "root")
    out = subprocess.run([sys.executable, "-m", "yourpkg._vendor.wetlite", "--root", root, "--tool", "venv", "list"],
                         cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, check=True).stdout.decode()
    assert out.strip() == "no environments under %s" % root


def test_the_cli_points_to_the_config_file_table():
    cli = README[README.index("## Command line"):]
    assert "`--file` takes any file of the table in [Config files](#config-files)" in cli
    assert "\n### Config files\n" in README and "| File | pixi | micromamba | venv |" in README
