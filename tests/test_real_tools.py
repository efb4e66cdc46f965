"""Against the real pixi and micromamba binaries (outside CI).

Set WETLITE_TEST_MICROMAMBA and/or WETLITE_TEST_PIXI to the binaries, and
optionally WETLITE_TEST_CHANNEL to a local conda channel URL; without it the
channel is built with ../shared/tools/make_local_channel.py.  Everything runs
offline against that channel, with HOME pointed at a temp dir (micromamba
writes ~/.conda/environments.txt and ~/.mamba/pkgs).
"""
import os
import shutil

import pytest

from conftest import wetlite

pytestmark = pytest.mark.real_tool

BINARIES = [
    pytest.param(tool, os.environ.get(var), id=tool,
                 marks=pytest.mark.skipif(not os.environ.get(var), reason="set %s to a real %s binary" % (var, tool)))
    for tool, var in (("micromamba", "WETLITE_TEST_MICROMAMBA"), ("pixi", "WETLITE_TEST_PIXI"))
]


def tool_binary(tmp_path, tool, binary):
    # micromamba's shell hook insists on its own name.
    directory = tmp_path / "bin"
    directory.mkdir()
    path = str(directory / (tool + (".exe" if os.name == "nt" else "")))
    shutil.copy2(binary, path)
    return path


def real_manager(tmp_path, monkeypatch, channel, tool, binary):
    """A manager on a copy of the real binary, with HOME in a temp dir."""
    exe = tool_binary(tmp_path, tool, binary)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.makedirs(str(tmp_path / "home"))
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool=tool, tool_path=exe, channels=[channel])
    assert mgr.install_tool() == exe
    return mgr


@pytest.mark.parametrize("tool, binary", BINARIES)
def test_real_tool_round_trip(tmp_path, monkeypatch, local_channel, tool, binary):
    mgr = real_manager(tmp_path, monkeypatch, local_channel, tool, binary)
    exe = mgr.tool_path

    env = mgr.create("demo", {"conda": ["wetlite-demo=0.1.0"]}, force_external=True)
    out = env.run([["python", "-c", "import wetlite_demo, sys; print(wetlite_demo.hello()); print(sys.prefix)"]])
    hello, prefix = out.stdout.strip().splitlines()[-2:]
    assert hello == "hello world from wetlite-demo 0.1.0"
    assert os.path.realpath(prefix) == os.path.realpath(env.path)

    env.install({"conda": ["wetlite-extra"]})
    names = {p["name"]: p for p in env.packages()}
    assert "wetlite-demo" in names and names["wetlite-demo"]["version"] == "0.1.0"
    assert "wetlite-extra" in names and "python" in names
    assert env.run(["wetlite-extra"], check=False).returncode == 0

    # The worker runs with the activation captured from the real tool.
    with env:
        assert env.execute("wetlite_demo", "hello", ("worker",)) == "hello worker from wetlite-demo 0.1.0"
        assert env.execute("os", "getenv", ("CONDA_PREFIX",)) == env.path

    # Reuse: the same recipe is handed back without running the tool.
    again = wetlite.EnvironmentManager(root=mgr.root, tool=tool, tool_path=exe, channels=[local_channel])
    assert again.create("demo", {"conda": ["wetlite-demo=0.1.0"]}, force_external=True).path == env.path
    assert [e["name"] for e in mgr.list()] == ["demo"]

    mgr.remove("demo")
    assert not os.path.exists(env.path)
    assert mgr.list() == []


@pytest.mark.parametrize("tool, binary", BINARIES)
def test_real_tool_missing_package_fails_cleanly(tmp_path, monkeypatch, local_channel, tool, binary):
    mgr = real_manager(tmp_path, monkeypatch, local_channel, tool, binary)
    with pytest.raises(wetlite.CommandError) as info:
        mgr.create("nope", {"conda": ["wetlite-no-such-package"]}, force_external=True)
    assert "wetlite-no-such-package" in info.value.output_tail
    assert mgr.list() == []
    assert not os.path.exists(mgr._env_dir("nope"))
