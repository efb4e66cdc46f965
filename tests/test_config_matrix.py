"""Every config file with every tool: what each file means, and what cannot be honoured.

The mapping is checked on _read_config (no tool runs), then one real build per
interesting pair: venv, and micromamba and pixi (the real binaries when
WETLITE_TEST_MICROMAMBA / WETLITE_TEST_PIXI name them, else the stand-ins).
"""
import os
import sys
import textwrap

import pytest

from conftest import file_url, make_wheel, tool_binary, tool_marks, wetlite

HOST_XY = "%d.%d" % sys.version_info[:2]
SUBDIR = wetlite._conda_subdir(*wetlite._platform_id())
POSIX_STAND_INS = pytest.mark.skipif(os.name == "nt" or sys.version_info < (3, 11),
                                     reason="POSIX stand-ins; the pixi stand-in reads TOML with tomllib")


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


PYPROJECT = """\
    [project]
    name = "proj"
    requires-python = ">=3.8"
    dependencies = ["rich>=13", 'tomli ; python_version < "3.11"']

    [project.optional-dependencies]
    test = ["pytest"]
    docs = ["sphinx"]
    """

PIXI_TOML = """\
    [workspace]
    name = "w"
    channels = ["conda-forge", "./local"]
    platforms = ["linux-64", "osx-arm64", "win-64"]

    [dependencies]
    python = "3.11.*"
    numpy = ">=1.26,<2"
    scipy = { version = "1.13.*", channel = "bioconda" }
    pip = "*"

    [pypi-dependencies]
    rich = "*"
    tifffile = ">=2024"
    httpx = { version = ">=0.27", extras = ["http2"] }
    mine = { path = "./src/mine", editable = true }
    wheel-pkg = { path = "wheels/w-1.0-py3-none-any.whl" }
    remote = { url = "https://example.org/remote-1.0.tar.gz" }
    gitpkg = { git = "https://github.com/org/gitpkg", rev = "abc123", subdirectory = "py" }

    [pypi-options]
    index-url = "https://mirror.example/simple"
    find-links = [{ path = "./links" }]

    [target.%s.dependencies]
    only-here = "*"

    [target.nowhere-64.dependencies]
    never = "*"

    [feature.gpu.dependencies]
    cuda-version = "12.*"

    [feature.gpu.pypi-dependencies]
    gpu-tools = "*"

    [feature.lint.dependencies]
    ruff = "*"

    [environments]
    cuda = { features = ["gpu"] }
    bare = { features = ["lint"], no-default-feature = true }
    """ % SUBDIR


def test_pyproject_pep621_is_pip_requirements_for_every_tool(tmp_path):
    path = write(tmp_path / "pyproject.toml", PYPROJECT)
    for tool in ("venv", "micromamba", "pixi"):
        cfg = wetlite._read_config(path, tool, manifest=True)
        assert (cfg["manifest"], cfg["python"], cfg["conda"]) == (False, ">=3.8", [])
        assert cfg["pip"] == ["rich>=13", 'tomli ; python_version < "3.11"']
    cfg = wetlite._read_config(path, "venv", ["test", "docs"])
    assert cfg["pip"][-2:] == ["pytest", "sphinx"]
    with pytest.raises(wetlite.SpecError, match="'gpu'.*groups: docs, test"):
        wetlite._read_config(path, "venv", ["gpu"])
    with pytest.raises(wetlite.SpecError, match="list of group"):
        wetlite._read_config(path, "venv", "test")


def test_pixi_toml_for_micromamba_and_venv(tmp_path):
    path = write(tmp_path / "pixi.toml", PIXI_TOML)
    cfg = wetlite._read_config(path, "micromamba")
    assert cfg["python"] == "3.11.*"
    assert cfg["conda"] == ["numpy>=1.26,<2", "bioconda::scipy 1.13.*", "only-here"]
    assert cfg["channels"] == ["conda-forge", str(tmp_path / "local")]
    assert cfg["pip"] == [
        "--index-url https://mirror.example/simple", "--find-links " + str(tmp_path / "links"),
        "rich", "tifffile>=2024", "httpx[http2]>=0.27", "-e " + str(tmp_path / "src" / "mine"),
        "wheel-pkg @ " + file_url(tmp_path / "wheels" / "w-1.0-py3-none-any.whl"),
        "remote @ https://example.org/remote-1.0.tar.gz",
        "gitpkg @ git+https://github.com/org/gitpkg@abc123#subdirectory=py"]
    gpu = wetlite._read_config(path, "micromamba", ["cuda"])         # an environment: its features
    assert gpu["conda"][-1] == "cuda-version 12.*" and gpu["pip"][-1] == "gpu-tools"
    assert wetlite._read_config(path, "micromamba", ["gpu"])["conda"] == gpu["conda"]      # a feature
    bare = wetlite._read_config(path, "micromamba", ["bare"])        # no default feature
    assert (bare["conda"], bare["python"]) == (["ruff"], None)
    with pytest.raises(wetlite.SpecError, match="'numpy>=1.26,<2'"):
        wetlite._read_config(path, "venv")
    only_python = write(tmp_path / "py" / "pixi.toml" if (tmp_path / "py").mkdir() is None else None, """\
        [workspace]
        channels = ["conda-forge"]
        platforms = ["linux-64"]
        [dependencies]
        python = ">=3.10"
        [pypi-dependencies]
        rich = "*"
        """)
    cfg = wetlite._read_config(only_python, "venv")
    assert (cfg["python"], cfg["pip"], cfg["channels"]) == (">=3.10", ["rich"], [])


def test_an_activation_that_only_pixi_applies_is_not_dropped_without_a_word(tmp_path, caplog):
    path = write(tmp_path / "pixi.toml", """\
        [workspace]
        channels = ["conda-forge"]
        platforms = ["linux-64"]
        [dependencies]
        python = "3.11.*"
        [target.%s.activation]
        scripts = ["act.sh"]
        """ % SUBDIR)
    plain = write(tmp_path / "plain" / "pixi.toml" if (tmp_path / "plain").mkdir() is None else None,
                  "[workspace]\nchannels = []\nplatforms = ['linux-64']\n[dependencies]\nrich = '*'\n")
    caplog.set_level("WARNING", logger="wetlite")
    for tool in ("micromamba", "venv", "pixi"):         # pixi: install(config=) maps the file onto packages
        caplog.clear()
        wetlite._read_config(path, tool)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and path in warnings[0] and "[activation]" in warnings[0], (tool, warnings)
        assert "tool='pixi'" in warnings[0] and "env.run(..., env=...)" in warnings[0]
    caplog.clear()
    wetlite._read_config(path, "pixi", manifest=True)                   # pixi's own workspace: applied
    wetlite._read_config(plain, "micromamba")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_pixi_manifests_stay_pixis_own_with_pixi(tmp_path):
    path = write(tmp_path / "pixi.toml", PIXI_TOML)
    (tmp_path / "pixi.lock").write_text("version: 6\n")
    assert wetlite._read_config(path, "pixi", manifest=True)["pixi_env"] is None
    assert wetlite._read_config(path, "pixi", ["cuda"], manifest=True)["pixi_env"] == "cuda"
    assert wetlite._read_config(path, "pixi", ["gpu", "lint"], manifest=True)["pixi_env"] == ["features", "gpu", "lint"]
    with pytest.raises(wetlite.SpecError, match="no feature or environment 'nope'"):
        wetlite._read_config(path, "pixi", ["nope"], manifest=True)
    # Installing from it into an existing environment maps it, as for the other tools.
    assert wetlite._read_config(path, "pixi")["conda"][0] == "numpy>=1.26,<2"
    pyproject = write(tmp_path / "pp" / "pyproject.toml" if (tmp_path / "pp").mkdir() is None else None,
                      PYPROJECT + "\n[tool.pixi.workspace]\nchannels = ['conda-forge']\nplatforms = ['linux-64']\n"
                      "[tool.pixi.dependencies]\nnumpy = '*'\n")
    assert wetlite._read_config(pyproject, "pixi", ["test"], manifest=True)["pixi_env"] == ["features", "test"]
    cfg = wetlite._read_config(pyproject, "micromamba", ["test"])       # [tool.pixi] where it maps
    assert (cfg["conda"], cfg["pip"]) == (["numpy"], ["rich>=13", 'tomli ; python_version < "3.11"', "pytest"])


def test_environment_yml_with_venv_and_requirements_everywhere(tmp_path):
    yml = write(tmp_path / "environment.yml", """\
        channels: [conda-forge]
        dependencies:
          - python=3.10
          - pip
          - pip:
            - rich
        """)
    cfg = wetlite._read_config(yml, "venv")
    assert (cfg["python"], cfg["conda"], cfg["pip"], cfg["channels"]) == ("=3.10", [], ["rich"], [])
    with pytest.raises(wetlite.SpecError, match="'numpy'"):
        wetlite._read_config(write(tmp_path / "more.yml", "dependencies: [python=3.10, numpy]\n"), "venv")
    req = write(tmp_path / "requirements.txt", "rich\n")
    for tool in ("venv", "micromamba", "pixi"):
        assert wetlite._read_config(req, tool)["pip"] == ["rich"]
    with pytest.raises(wetlite.SpecError, match="no optional groups"):
        wetlite._read_config(req, "venv", ["x"])


def test_create_with_optional_dependencies_and_create_from_config(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "wetlite-test-demo", "1.0")
    make_wheel(wheels, "wetlite-test-extra", "0.5")
    project = tmp_path / "project"
    project.mkdir()
    path = write(project / "pyproject.toml", """\
        [project]
        name = "proj"
        requires-python = ">=%s"
        dependencies = ["wetlite-test-demo @ %s"]

        [project.optional-dependencies]
        extra = ["wetlite-test-extra @ %s"]
        """ % (HOST_XY, file_url(wheels / "wetlite_test_demo-1.0-py3-none-any.whl"),
               file_url(wheels / "wetlite_test_extra-0.5-py3-none-any.whl")))
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.create("opt", config=path, optional_dependencies=["extra"], force_external=True)
    assert {"wetlite-test-demo", "wetlite-test-extra"} <= {p["name"] for p in env.packages()}
    again = mgr.create_from_config("opt", path, ["extra"], force_external=True)
    assert again is env                                 # the same recipe: reused
    with pytest.raises(wetlite.SpecError, match="different recipe"):
        mgr.create_from_config("opt", path, force_external=True)
    with pytest.raises(wetlite.SpecError, match="config="):
        mgr.create("x", optional_dependencies=["extra"])


def local_workspace(tmp_path, channel, demo_version, extra):
    """A pixi.toml on the test channel: python, wetlite-demo, a feature "extra" with wetlite-extra."""
    return write(tmp_path / "pixi.toml", """\
        [workspace]
        channels = ["%s"]
        platforms = ["%s"]

        [dependencies]
        python = "%s.*"
        wetlite-demo = "%s"

        [feature.extra.dependencies]
        wetlite-extra = "*"

        """ % (channel, SUBDIR, HOST_XY, demo_version) + textwrap.dedent(extra))


@POSIX_STAND_INS
@pytest.mark.parametrize("tool", [pytest.param("micromamba", marks=tool_marks("micromamba"))])
def test_a_pixi_toml_built_by_micromamba(tmp_path, local_channel, monkeypatch, tool):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "wetlite-test-pip", "1.0")
    path = local_workspace(tmp_path, local_channel, "==0.1.0", """\
        [pypi-dependencies]
        wetlite-test-pip = { path = "wheels/wetlite_test_pip-1.0-py3-none-any.whl" }
        """)
    exe = tool_binary(tmp_path / "tools", tool)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="micromamba", tool_path=exe, channels=())
    env = mgr.create("from-pixi", config=path, optional_dependencies=["extra"], force_external=True)
    names = {p["name"]: p for p in env.packages()}
    assert names["wetlite-demo"]["version"] == "0.1.0" and "wetlite-extra" in names
    assert names["wetlite-test-pip"]["kind"] == "pypi"


@POSIX_STAND_INS
@pytest.mark.parametrize("tool", [pytest.param("pixi", marks=tool_marks("pixi"))])
def test_pixi_builds_the_selected_features_of_its_manifest(tmp_path, local_channel, monkeypatch, tool):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = local_workspace(tmp_path, local_channel, "*", """\
        [environments]
        other = ["extra"]
        """)
    exe = tool_binary(tmp_path / "tools", tool)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="pixi", tool_path=exe, channels=())
    env = mgr.create("feat", config=path, optional_dependencies=["extra"], force_external=True)
    assert env.path.endswith(os.path.join(".pixi", "envs", "wetlite-selected"))
    assert "wetlite-extra" in {p["name"] for p in env.packages()}
    assert env.run(["wetlite-extra"]).returncode == 0
    with env:
        assert env.execute("os", "getenv", ("CONDA_PREFIX",)) == env.path
    named = mgr.create("named", config=path, optional_dependencies=["other"], force_external=True)
    assert named.path.endswith(os.path.join(".pixi", "envs", "other"))
    assert "[environments]\nwetlite-selected" not in open(named.manifest).read()
