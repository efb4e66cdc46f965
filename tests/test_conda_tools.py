"""micromamba and pixi environments through wetlite: one set of scenarios, stand-in or real.

Each scenario runs against the real binary when WETLITE_TEST_MICROMAMBA /
WETLITE_TEST_PIXI names one (marked ``real_tool`` then), and against the
stand-in (tests/stand_ins/) otherwise.  The stand-ins accept the real tools'
syntax for what wetlite calls and refuse anything else with exit 2, so these
scenarios check that wetlite calls the tools the way the real ones expect.
Assertions that hold only for a stand-in are guarded by ``stand_in(tool)``.
The channel is WETLITE_TEST_CHANNEL, or the one tests/conda_channel.py builds.
"""
import json
import os
import sys
import textwrap

import pytest

from conftest import file_url, make_wheel, stand_in, tool_binary, tool_marks, tripwire, wetlite

HOST_XY = "%d.%d" % sys.version_info[:2]
MICROMAMBA = pytest.mark.parametrize("tool", [pytest.param("micromamba", marks=tool_marks("micromamba"))])
PIXI = pytest.mark.parametrize("tool", [pytest.param("pixi", marks=tool_marks("pixi"))])
BOTH = pytest.mark.parametrize("tool", [pytest.param(t, marks=tool_marks(t)) for t in ("micromamba", "pixi")])


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("CONDARC", "MAMBARC", "CONDA_PREFIX", "MAMBA_ROOT_PREFIX", "PIXI_IN_SHELL"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wheels")
    make_wheel(directory, "wetlite-test-pip", "1.0")
    return str(directory)


def manager(tmp_path, tool, channel, **kwargs):
    exe = tool_binary(tmp_path / "tools", tool)
    return wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool=tool, tool_path=exe, channels=[channel],
                                      **kwargs)


def hello(env, module="wetlite_demo"):
    code = "import %s, sys; print(%s.hello()); print(sys.prefix)" % (module, module)
    return env.run([["python", "-c", code]]).stdout.strip().splitlines()


# --- micromamba ------------------------------------------------------------------

@MICROMAMBA
def test_micromamba_create_install_list_run_remove(tool, tmp_path, isolated_home, local_channel, wheels):
    phases = []
    mgr = manager(tmp_path, tool, local_channel, progress=lambda phase, line: phases.append((phase, line)))
    env = mgr.create("mm", {"conda": ["wetlite-demo=0.1.0"],
                            "pip": ["--no-index", "--find-links " + wheels, "wetlite-test-pip"]},
                     force_external=True)
    assert env.tool == "micromamba" and env.path == os.path.join(mgr.root, "envs", "mm")
    greeting, prefix = hello(env)
    assert greeting == "hello world from wetlite-demo 0.1.0"
    assert os.path.realpath(prefix) == os.path.realpath(env.path)
    assert hello(env, "wetlite_test_pip")[0] == "hello from wetlite-test-pip 1.0"
    # Phases are announced as they start, in order.
    started = [phase for phase, line in phases if line is None]
    assert started[0] == "solve" and "pip" in started and started.index("solve") < started.index("pip")
    assert any(line and "Linking" in line for phase, line in phases)
    # conda-meta written by the tool; the history records wetlite's exact command line.
    with open(os.path.join(env.path, "conda-meta", "history")) as f:
        history = f.read()
    assert "create -y -p " + env.path in history and "--override-channels -c " + local_channel in history
    assert "--rc-file " + os.path.join(mgr.root, ".mambarc") in history

    env.install({"conda": ["wetlite-extra"]})
    packages = {p["name"]: p for p in env.packages()}
    assert packages["wetlite-demo"]["version"] == "0.1.0" and packages["wetlite-demo"]["kind"] == "conda"
    assert "wetlite-extra" in packages and packages["wetlite-test-pip"]["kind"] == "pypi"
    assert os.access(os.path.join(env.path, "bin", "wetlite-extra"), os.X_OK)
    assert env.run(["command -v wetlite-extra"]).stdout.strip() == os.path.join(env.path, "bin", "wetlite-extra")
    # The tool replaced the package's text prefix placeholder with the environment's prefix.
    assert env.run(["wetlite-extra"]).stdout == "wetlite-extra 1.0.0 installed in %s\n" % env.path

    mgr.remove("mm")
    assert not os.path.exists(env.path) and mgr.list() == []


@MICROMAMBA
def test_micromamba_never_touches_shared_channel_config(tool, tmp_path, isolated_home, local_channel):
    mgr = manager(tmp_path, tool, local_channel)
    mgr.create("a", {"conda": ["wetlite-demo"], "channels": [local_channel]}, force_external=True)
    with open(os.path.join(mgr.root, ".mambarc")) as f:
        rc = f.read()
    assert local_channel not in rc and "channels:" not in rc.replace("# Channels", "")


@MICROMAMBA
def test_micromamba_no_deps_and_missing_package(tool, tmp_path, isolated_home, local_channel):
    mgr = manager(tmp_path, tool, local_channel)
    env = mgr.create("nd", {"conda": [{"name": "wetlite-extra", "dependencies": False}]}, force_external=True)
    assert "wetlite-extra" in {p["name"] for p in env.packages()}
    with pytest.raises(wetlite.CommandError) as info:
        mgr.create("missing", {"conda": ["wetlite-does-not-exist"]}, force_external=True)
    assert info.value.returncode == 1
    assert "wetlite-does-not-exist" in info.value.output_tail
    assert not os.path.exists(os.path.join(mgr.root, "envs", "missing"))
    assert [e["name"] for e in mgr.list()] == ["nd"]


@MICROMAMBA
def test_micromamba_environment_yml(tool, tmp_path, isolated_home, local_channel, wheels):
    project = tmp_path / "project"
    project.mkdir()
    (project / "environment.yml").write_text(textwrap.dedent("""\
        name: ignored
        channels:
          - %s
        dependencies:
          - python=%s
          - wetlite-demo=0.2.0
          - pip
          - pip:
            - --no-index
            - --find-links %s
            - wetlite-test-pip
        """ % (local_channel, HOST_XY, wheels)))
    mgr = manager(tmp_path, tool, local_channel)
    env = mgr.create("yml", config=str(project / "environment.yml"), force_external=True)
    assert hello(env)[0] == "hello world from wetlite-demo 0.2.0"
    assert hello(env, "wetlite_test_pip")[0] == "hello from wetlite-test-pip 1.0"


@MICROMAMBA
def test_micromamba_worker_runs_activated(tool, tmp_path, isolated_home, local_channel):
    mgr = manager(tmp_path, tool, local_channel)
    env = mgr.create("w", {"conda": ["wetlite-demo"]}, force_external=True)
    with env:
        assert env.execute("wetlite_demo", "hello", ("worker",)).startswith("hello worker")
        assert env.execute("os", "getenv", ("CONDA_PREFIX",)) == env.path
        path = env.execute("os", "getenv", ("PATH",)).split(os.pathsep)
        assert path[0] == os.path.join(env.path, "bin")
    record = json.load(open(os.path.join(mgr.root, "state", "envs", "w.json")))
    assert record["activation"]["set"]["CONDA_PREFIX"] == env.path


# --- pixi --------------------------------------------------------------------------

@PIXI
def test_pixi_create_install_list_run(tool, tmp_path, isolated_home, local_channel, wheels):
    mgr = manager(tmp_path, tool, local_channel)
    wheel = os.path.join(wheels, "wetlite_test_pip-1.0-py3-none-any.whl")
    env = mgr.create("px", {"conda": ["wetlite-demo=0.1.0"],
                            "pip": ["wetlite-test-pip @ " + file_url(wheel),
                                    'never-installed ; python_version < "3"']}, force_external=True)
    assert env.tool == "pixi"
    assert env.manifest == os.path.join(mgr.root, "workspaces", "px", "pixi.toml")
    assert env.path == os.path.join(mgr.root, "workspaces", "px", ".pixi", "envs", "default")
    with open(env.manifest) as f:
        manifest = f.read()
    assert local_channel in manifest and "wetlite-demo" in manifest and "wetlite-test-pip" in manifest
    assert "never-installed" not in manifest          # its marker is false for any python 3
    greeting, prefix = hello(env)
    assert greeting == "hello world from wetlite-demo 0.1.0"
    assert os.path.realpath(prefix) == os.path.realpath(env.path)
    env.install({"conda": ["wetlite-extra"]})
    names = {p["name"]: p["kind"] for p in env.packages()}
    assert names.get("wetlite-extra") == "conda" and names.get("wetlite-test-pip") == "pypi"
    with env:
        assert env.execute("os", "getenv", ("CONDA_PREFIX",)) == env.path
    mgr.remove("px")
    assert not os.path.exists(os.path.dirname(env.manifest))


@PIXI
def test_pixi_refuses_what_it_cannot_do(tool, tmp_path, isolated_home, local_channel):
    mgr = manager(tmp_path, tool, local_channel)
    with pytest.raises(wetlite.SpecError, match="'wetlite-demo'"):
        mgr.create("nd", {"conda": [{"name": "wetlite-demo", "dependencies": False}]}, force_external=True)
    with pytest.raises(wetlite.SpecError, match="--index-url"):
        mgr.create("opt", {"pip": ["--index-url https://example.invalid/simple"]}, force_external=True)
    assert not os.path.exists(mgr.root)


@PIXI
def test_pixi_manifest_config(tool, tmp_path, isolated_home, local_channel):
    project = tmp_path / "project"
    project.mkdir()
    (project / "pixi.toml").write_text(textwrap.dedent("""\
        [workspace]
        name = "mine"
        channels = ["%s"]
        platforms = ["%s"]

        [dependencies]
        python = "%s.*"
        wetlite-demo = "==0.2.0"
        """ % (local_channel, wetlite._conda_subdir(*wetlite._platform_id()), HOST_XY)))
    mgr = manager(tmp_path, tool, local_channel)
    env = mgr.create("cfg", config=str(project / "pixi.toml"), force_external=True)
    assert hello(env)[0] == "hello world from wetlite-demo 0.2.0"
    # The user's file was copied, not edited in place.
    assert "wetlite-demo = \"==0.2.0\"" in (project / "pixi.toml").read_text()
    assert os.path.isfile(os.path.join(mgr.root, "workspaces", "cfg", "pixi.toml"))
    # Same config, same recipe: reused without calling the tool (a tripwire stands in for it).
    wire, calls = tripwire(tmp_path / "wire", tool)
    again = wetlite.EnvironmentManager(root=mgr.root, tool=tool, tool_path=wire, channels=[local_channel])
    assert again.create("cfg", config=str(project / "pixi.toml"), force_external=True).path == env.path
    assert not os.path.exists(calls)


@BOTH
def test_reuse_runs_no_tool(tool, tmp_path, isolated_home, local_channel):
    mgr = manager(tmp_path, tool, local_channel)
    env = mgr.create("again", {"conda": ["wetlite-extra"]}, force_external=True)
    wire, calls = tripwire(tmp_path / "wire", tool)
    fresh = wetlite.EnvironmentManager(root=mgr.root, tool=tool, tool_path=wire, channels=[local_channel])
    again = fresh.create("again", {"conda": ["wetlite-extra"]}, force_external=True)
    assert again.path == env.path and again is not env
    assert not os.path.exists(calls), "the tool was called: %s" % open(calls).read()
    # A different recipe is refused before the tool is asked for anything.
    with pytest.raises(wetlite.SpecError, match="replace=True"):
        fresh.create("again", {"conda": ["wetlite-demo"]}, force_external=True)
    assert not os.path.exists(calls)


@PIXI
def test_pixi_missing_package_fails_cleanly(tool, tmp_path, isolated_home, local_channel):
    mgr = manager(tmp_path, tool, local_channel)
    with pytest.raises(wetlite.CommandError) as info:
        mgr.create("nope", {"conda": ["wetlite-no-such-package"]}, force_external=True)
    assert "wetlite-no-such-package" in info.value.output_tail
    assert mgr.list() == [] and not os.path.exists(mgr._env_dir("nope"))


@BOTH
def test_tool_is_only_called_with_supported_syntax(tool, tmp_path, isolated_home, local_channel):
    """A full cycle: create, install, list, run.  The stand-ins exit 2 on anything they do not know."""
    mgr = manager(tmp_path, tool, local_channel)
    env = mgr.create("cycle", {"conda": ["wetlite-demo"]}, force_external=True)
    env.install({"conda": ["wetlite-extra"]})
    assert {"wetlite-demo", "wetlite-extra"} <= {p["name"] for p in env.packages()}
    assert env.run(['echo "$CONDA_PREFIX"']).stdout == env.path + "\n"
    if stand_in(tool):
        log = open(os.path.join(mgr.root, "state", "logs", "cycle.log")).read()
        assert "stand-in %s: unsupported" % tool not in log


@MICROMAMBA
def test_a_managers_default_channels_join_a_config_files_unless_left_out(tool, tmp_path, isolated_home,
                                                                         local_channel):
    """A default channel that cannot be reached (conda-forge, offline) fails the build, as with the real tool
    (transcripts §3.1); channels=() or the file's own "nodefaults" leave the defaults out."""
    project = tmp_path / "project"
    project.mkdir()
    yml = project / "environment.yml"
    yml.write_text("channels:\n  - %s\ndependencies:\n  - wetlite-demo=0.1.0\n" % local_channel)
    exe = tool_binary(tmp_path / "tools", tool)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool=tool, tool_path=exe)
    with pytest.raises(wetlite.CommandError) as info:
        mgr.create("defaults", config=str(yml), force_external=True)
    assert "conda-forge" in info.value.output_tail
    only_file = wetlite.EnvironmentManager(root=mgr.root, tool=tool, tool_path=exe, channels=())
    assert hello(only_file.create("only-file", config=str(yml), force_external=True))[0] == \
        "hello world from wetlite-demo 0.1.0"
    yml.write_text("channels:\n  - %s\n  - nodefaults\ndependencies:\n  - wetlite-demo=0.1.0\n" % local_channel)
    assert hello(mgr.create("nodefaults", config=str(yml), force_external=True))[0] == \
        "hello world from wetlite-demo 0.1.0"


# --- loading what a tool made ------------------------------------------------------------------

@MICROMAMBA
def test_load_a_conda_prefix(tool, tmp_path, isolated_home, local_channel):
    made = manager(tmp_path, tool, local_channel).create("made", {"conda": ["wetlite-demo=0.1.0"]},
                                                         force_external=True)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "other"), tool="venv")
    env = mgr.load("borrowed", made.path)
    assert env.tool == "prefix" and env.path == made.path
    rows = {row["name"]: row for row in env.packages()}
    assert (rows["wetlite-demo"]["version"], rows["wetlite-demo"]["kind"]) == ("0.1.0", "conda")
    assert rows["python"]["kind"] == "conda"
    assert hello(env) == ["hello world from wetlite-demo 0.1.0", made.path]
    with env:
        assert env.execute("wetlite_demo", "hello", ("loaded",)) == "hello loaded from wetlite-demo 0.1.0"
    mgr.remove("borrowed")                                  # forgotten, never deleted
    assert os.path.isfile(os.path.join(made.path, "conda-meta", "history"))


@PIXI
def test_load_a_pixi_workspace(tool, tmp_path, isolated_home, local_channel):
    pixi = manager(tmp_path, tool, local_channel)
    made = pixi.create("made", {"conda": ["wetlite-demo=0.1.0"]}, force_external=True)
    workspace = os.path.dirname(made.manifest)
    same_tool = wetlite.EnvironmentManager(root=str(tmp_path / "other"), tool=tool, tool_path=pixi.tool_path,
                                           channels=[local_channel])
    env = same_tool.load("ws", workspace)
    assert (env.tool, env.manifest, env.path) == ("pixi", made.manifest, made.path)
    assert {row["name"] for row in env.packages()} >= {"python", "wetlite-demo"}
    by_manifest = wetlite.EnvironmentManager(root=str(tmp_path / "third"), tool="venv").load("m", made.manifest)
    assert (by_manifest.tool, by_manifest.path) == ("prefix", made.path)    # another tool: the prefix only
    assert hello(by_manifest) == ["hello world from wetlite-demo 0.1.0", made.path]
