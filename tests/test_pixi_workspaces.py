"""pixi as its v0.73.0 source says (the reference's pixi-0.73.0-source-notes.md), through wetlite.

Each test runs wetlite against a real pixi when WETLITE_TEST_PIXI names one (marked
real_tool), else against the stand-in pixi, which fails wherever the real
pixi fails (unlisted channels, frozen adds, detached environments, relative
paths resolved against the workspace, no lock file with --frozen, ...).
"""
import json
import os
import shutil
import sys
import textwrap

import pytest

from conftest import file_url, make_wheel, tool_binary, tool_marks, wetlite
from test_stand_ins import conda_package

HOST_XY = "%d.%d" % sys.version_info[:2]
SUBDIR = wetlite._conda_subdir(*wetlite._platform_id())

pytestmark = [pytest.mark.skipif(os.name == "nt" or sys.version_info < (3, 11),
                                 reason="POSIX stand-ins; the pixi stand-in reads TOML with tomllib")] + tool_marks("pixi")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private HOME with no pixi or conda settings of the machine's user."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    for name in list(os.environ):
        if name.startswith(("PIXI_", "CONDA", "MAMBA", "RATTLER_")) or name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIXI_CACHE_DIR", str(tmp_path / "pixi-cache"))
    return path


def manager(tmp_path, channels, **kwargs):
    exe = tool_binary(tmp_path / "tools", "pixi")
    return wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="pixi", tool_path=exe,
                                      channels=channels, **kwargs)


def manifest_data(env):
    import tomllib
    with open(env.manifest, "rb") as f:
        return tomllib.load(f)


def channel_dir(channel):
    """The directory of a local channel given as a file:// URL or a path."""
    from urllib.request import url2pathname
    return url2pathname(channel[len("file://"):]) if channel.startswith("file://") else channel


def python_says(env, code):
    return env.run([["python", "-c", code]]).stdout.strip().splitlines()[-1]


def test_install_adds_the_channels_its_specs_need_first(tmp_path, home, local_channel):
    """Notes 4b and 3: an unlisted `chan::` channel is an error, and `channel add` appends."""
    other = conda_package(str(tmp_path / "other"), "only-elsewhere", "1.0", {"share/only-elsewhere.txt": "x\n"})
    third = conda_package(str(tmp_path / "third"), "third-thing", "1.0", {"share/third-thing.txt": "y\n"})
    mgr = manager(tmp_path, [local_channel])
    env = mgr.create("chan", {"conda": ["wetlite-demo"]}, force_external=True)
    env.install({"conda": ["%s::only-elsewhere" % file_url(other)]})
    env.install({"conda": ["third-thing"], "channels": [file_url(third)]})
    channels = manifest_data(env)["workspace"]["channels"]
    assert channels == [file_url(third), file_url(other), local_channel]
    names = {p["name"] for p in env.packages()}
    assert {"only-elsewhere", "third-thing", "wetlite-demo"} <= names


def test_several_new_channels_are_prepended_one_per_call_in_their_order(tmp_path, home, local_channel, monkeypatch):
    """Notes 3: where one `channel add --prepend A B` puts A and B is not settled; one channel per call is."""
    other = conda_package(str(tmp_path / "other"), "only-elsewhere", "1.0", {"share/only-elsewhere.txt": "x\n"})
    third = conda_package(str(tmp_path / "third"), "third-thing", "1.0", {"share/third-thing.txt": "y\n"})
    mgr = manager(tmp_path, [local_channel])
    env = mgr.create("order", {"conda": ["wetlite-demo"]}, force_external=True)
    calls, real = [], mgr._run_tool

    def record(argv, *args, **kwargs):
        calls.append(list(argv))
        return real(argv, *args, **kwargs)
    monkeypatch.setattr(mgr, "_run_tool", record)
    env.install({"conda": ["third-thing", "%s::only-elsewhere" % file_url(other)], "channels": [file_url(third)]})
    added = [argv[argv.index("--prepend") + 1:] for argv in calls if argv[1:4] == ["workspace", "channel", "add"]]
    assert added == [[file_url(other)], [file_url(third)]]
    assert manifest_data(env)["workspace"]["channels"] == [file_url(third), file_url(other), local_channel]
    assert {"only-elsewhere", "third-thing"} <= {p["name"] for p in env.packages()}


def test_the_users_pixi_setup_does_not_steer_the_build(tmp_path, home, local_channel, monkeypatch):
    """Notes 4c and "Environment, config and files": flags and config that would break a build."""
    (home / ".pixi").mkdir()
    (home / ".pixi" / "config.toml").write_text('detached-environments = true\n')
    for name, value in (("PIXI_FROZEN", "1"), ("PIXI_LOCKED", "true"), ("PIXI_NO_INSTALL", "1"),
                        ("PIXI_NO_SYMBOLIC_LINKS", "1"), ("RUST_LOG", "debug")):
        monkeypatch.setenv(name, value)
    mgr = manager(tmp_path, [local_channel])
    env = mgr.create("iso", {"conda": ["wetlite-demo=0.1.0"]}, force_external=True)
    assert python_says(env, "import wetlite_demo; print(wetlite_demo.__version__)") == "0.1.0"
    # The environment lives in the workspace under root, not in the cache.
    envs = os.path.join(mgr.root, "workspaces", "iso", ".pixi", "envs")
    assert os.path.isdir(envs) and not os.path.islink(envs)
    assert not os.path.exists(str(tmp_path / "pixi-cache" / "envs"))
    with open(os.path.join(mgr.root, "workspaces", "iso", ".pixi", "config.toml")) as f:
        assert "detached-environments = false" in f.read()
    tool_env = mgr._tool_environ()
    assert not [n for n in ("PIXI_FROZEN", "PIXI_LOCKED", "PIXI_NO_INSTALL", "PIXI_NO_SYMBOLIC_LINKS", "RUST_LOG")
                if n in tool_env]
    with env:
        assert env.execute("os", "getenv", ("CONDA_PREFIX",)) == env.path
    mgr.remove("iso")
    assert not os.path.exists(os.path.join(mgr.root, "workspaces", "iso"))


def test_packages_lists_what_is_installed_and_where_it_came_from(tmp_path, home, local_channel):
    """Notes 7: `pixi list` shows the lock; pip packages wetlite installs itself are in the prefix only."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(wheels, "wetlite-test-pip", "1.0")
    mgr = manager(tmp_path, [local_channel])
    env = mgr.create("pk", {"conda": ["wetlite-demo"],
                            "pip": [{"name": "wetlite-test-pip @ " + file_url(wheel), "dependencies": False}]},
                     force_external=True)
    rows = {p["name"]: p for p in env.packages()}
    assert rows["wetlite-test-pip"]["kind"] == "pypi" and rows["wetlite-test-pip"]["version"] == "1.0"
    assert rows["wetlite-test-pip"]["source"] == "pip"
    assert rows["wetlite-demo"]["kind"] == "conda" and rows["wetlite-demo"]["source"] == local_channel
    assert rows["python"]["version"] == "%d.%d.%d" % sys.version_info[:3]
    # A later pixi add keeps what pip installed (pixi updates incrementally).
    env.install({"conda": ["wetlite-extra"]})
    assert {"wetlite-test-pip", "wetlite-extra"} <= {p["name"] for p in env.packages()}


def test_a_manifests_relative_paths_point_at_its_own_directory(tmp_path, home, local_channel, monkeypatch):
    """Notes 6: relative channels, path= dependencies and activation scripts survive the copy."""
    project = tmp_path / "project"
    shutil.copytree(channel_dir(local_channel), str(project / "chan"))
    (project / "wheels").mkdir()
    make_wheel(project / "wheels", "wetlite-test-pip", "2.0")
    (project / "setup.sh").write_text("export FROM_SETUP=yes\n")
    (project / "pixi.toml").write_text(textwrap.dedent("""\
        # a workspace that refers to files beside it
        [workspace]
        name = "rel"
        channels = ["./chan"]
        platforms = ["%s"]

        [dependencies]
        python = "%s.*"
        wetlite-demo = "==0.2.0"

        [pypi-dependencies]
        wetlite-test-pip = { path = "./wheels/wetlite_test_pip-2.0-py3-none-any.whl" }

        [activation]
        scripts = ["setup.sh"]
        """ % (SUBDIR, HOST_XY)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(str(elsewhere))
    mgr = manager(tmp_path, [local_channel])
    env = mgr.create("rel", config=str(project / "pixi.toml"), force_external=True)
    assert python_says(env, "import wetlite_demo, wetlite_test_pip, os; "
                            "print(wetlite_demo.__version__, wetlite_test_pip.hello(), os.environ['FROM_SETUP'])") \
        == "0.2.0 hello from wetlite-test-pip 2.0 yes"
    data = manifest_data(env)
    assert data["workspace"]["channels"] == [str(project / "chan")]
    assert data["activation"]["scripts"] == [str(project / "setup.sh")]
    copied = open(env.manifest).read()
    assert copied.startswith("# a workspace that refers to files beside it\n")      # the rest is as written
    assert (project / "pixi.toml").read_text().count("./chan") == 1                  # the user's file is untouched


def test_the_editable_self_dependency_of_a_pyproject_points_at_the_project(tmp_path):
    """What `pixi init --format pyproject` writes: `{ path = ".", editable = true }`."""
    project = tmp_path / "proj"
    project.mkdir()
    source = textwrap.dedent("""\
        [project]
        name = "proj"
        dependencies = []

        [tool.pixi.workspace]
        channels = ["conda-forge", "../chan", 'file:///abs/chan']
        platforms = ["linux-64"]

        [tool.pixi.pypi-dependencies]
        proj = { path = ".", editable = true }
        other = {path="../other"}

        [tool.pixi.feature.test.pypi-dependencies]
        helper = { path = "helpers/h", editable = true }

        [tool.pixi.target.linux-64.activation]
        scripts = ["env.sh"]

        [tool.hatch.version]
        path = "src/proj/__init__.py"
        """)
    text = wetlite._absolute_manifest_paths(source, "pyproject", str(project))
    import tomllib
    data = tomllib.loads(text)
    pixi = data["tool"]["pixi"]
    assert pixi["pypi-dependencies"]["proj"] == {"path": str(project), "editable": True}
    assert pixi["pypi-dependencies"]["other"] == {"path": str(tmp_path / "other")}
    assert pixi["feature"]["test"]["pypi-dependencies"]["helper"]["path"] == str(project / "helpers" / "h")
    assert pixi["workspace"]["channels"] == ["conda-forge", str(tmp_path / "chan"), "file:///abs/chan"]
    assert pixi["target"]["linux-64"]["activation"]["scripts"] == [str(project / "env.sh")]
    assert data["tool"]["hatch"]["version"]["path"] == "src/proj/__init__.py"     # not pixi's: left alone
    assert wetlite._absolute_manifest_paths(text, "pyproject", str(project)) == text


def test_load_a_workspace_that_has_no_lock_file(tmp_path, home, local_channel):
    """Notes 8b: `shell-hook --frozen` fails without pixi.lock."""
    ws = tmp_path / "mine"
    ws.mkdir()
    (ws / "pixi.toml").write_text(textwrap.dedent("""\
        [workspace]
        name = "mine"
        channels = ["%s"]
        platforms = ["%s"]

        [dependencies]
        python = "%s.*"
        wetlite-demo = "*"
        """ % (local_channel, SUBDIR, HOST_XY)))
    mgr = manager(tmp_path, [local_channel])
    env = mgr.load("mine", str(ws))
    assert python_says(env, "import wetlite_demo; print(wetlite_demo.__version__)") == "0.2.0"
    with env:
        assert env.execute("wetlite_demo", "hello", ("lock",)) == "hello lock from wetlite-demo 0.2.0"
    assert (ws / "pixi.lock").exists()


def test_relative_local_channels_are_made_absolute(tmp_path, home, local_channel, monkeypatch):
    """Notes 6: pixi resolves a relative channel against the workspace root, not the cwd."""
    here = tmp_path / "here"
    shutil.copytree(channel_dir(local_channel), str(here / "chan"))
    extra = conda_package(str(here / "extra"), "only-elsewhere", "1.0", {"share/only-elsewhere.txt": "x\n"})
    monkeypatch.chdir(str(here))
    mgr = manager(tmp_path, ["./chan"])
    assert mgr.channels == [str(here / "chan")]
    env = mgr.create("relchan", {"conda": ["wetlite-demo", "./extra::only-elsewhere"]}, force_external=True)
    assert manifest_data(env)["workspace"]["channels"] == [extra, str(here / "chan")]
    assert "only-elsewhere" in {p["name"] for p in env.packages()}


def test_one_constraint_per_package_name(tmp_path, home, local_channel):
    """Notes 4: pixi keys specs by name, so a second `pip` would replace `pip>=23`."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(wheels, "wetlite-test-pip", "1.0")
    mgr = manager(tmp_path, [local_channel])
    env = mgr.create("dup", {"conda": ["pip>=23", "wetlite-demo>=0.1", "wetlite-demo<0.2"],
                             "pip": [{"name": "wetlite-test-pip @ " + file_url(wheel), "dependencies": False}]},
                     force_external=True)
    deps = manifest_data(env)["dependencies"]
    assert deps["pip"] == ">=23" and deps["wetlite-demo"] == ">=0.1,<0.2"
    assert python_says(env, "import wetlite_demo; print(wetlite_demo.__version__)") == "0.1.0"
    with pytest.raises(wetlite.SpecError, match="python"):
        mgr.create("dup2", {"python": HOST_XY, "conda": ["python>=3.8"]}, force_external=True)


def test_install_refuses_the_pip_options_of_a_config_file_it_cannot_pass(tmp_path, home, local_channel):
    """`pixi add --pypi` takes requirements only: -e, find-links and indexes would be dropped without a word."""
    project = tmp_path / "project"
    (project / "foo").mkdir(parents=True)
    (project / "pixi.toml").write_text(textwrap.dedent("""\
        [workspace]
        name = "extra"
        channels = ["%s"]
        platforms = ["%s"]

        [pypi-dependencies]
        foo = { path = "./foo", editable = true }

        [pypi-options]
        find-links = [{ path = "./wheels" }]
        """ % (local_channel, SUBDIR)))
    (tmp_path / "req.txt").write_text("--find-links %s\nwetlite-test-demo==1.0\n" % (tmp_path / "wheels"))
    mgr = manager(tmp_path, [local_channel])
    env = mgr.create("opts", {"conda": ["wetlite-demo"]}, force_external=True)
    before = open(env.manifest).read()
    with pytest.raises(wetlite.SpecError) as info:
        env.install(config=str(project / "pixi.toml"))
    message = str(info.value)
    assert str(project / "pixi.toml") in message and "'-e %s'" % (project / "foo") in message
    assert "--find-links" in message and "[pypi-options]" in message and env.manifest in message
    with pytest.raises(wetlite.SpecError, match=r"req\.txt asks for pip option '--find-links .*micromamba"):
        env.install(config=str(tmp_path / "req.txt"))
    assert open(env.manifest).read() == before
    assert mgr.info("opts")["installed"] == []
