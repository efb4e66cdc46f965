"""Dependency specs, config files, recipes and the main-environment check (no tools run)."""
import os
import sys
import textwrap

import pytest

from conftest import wetlite

HOST = "%d.%d.%d" % sys.version_info[:3]


def spec_error(func, *args, **kwargs):
    with pytest.raises(wetlite.SpecError) as info:
        func(*args, **kwargs)
    return str(info.value)


# --- validation: every error names the value ---------------------------------

@pytest.mark.parametrize("deps, tool, needle", [
    ({"pyhton": "3.11"}, "pixi", "'pyhton'"),
    ({"pip": ["conda-forge::numpy"]}, "micromamba", "conda-forge::numpy"),
    ({"conda": ["numpy"]}, "venv", "'numpy'"),
    ({"channels": ["bioconda"]}, "venv", "bioconda"),
    ({"conda": [{"name": "numpy", "dependencies": False}]}, "pixi", "'numpy'"),
    ({"conda": ["numpy; rm -rf /"]}, "micromamba", "numpy; rm -rf /"),
    ({"conda": ["-c defaults"]}, "micromamba", "-c defaults"),
    ({"pip": ["requests>>2"]}, "venv", "requests>>2"),
    ({"pip": ["not a requirement!"]}, "venv", "not a requirement!"),
    ({"pip": ["--index-url https://x"]}, "pixi", "--index-url https://x"),
    ({"python": 3.10}, "pixi", "3.1"),
    ({"python": "3.11; echo"}, "pixi", "3.11; echo"),
    ({"python": ">=3..1"}, "pixi", ">=3..1"),
    ({"conda": "numpy"}, "pixi", "'numpy'"),
    ({"conda": [{"name": "numpy", "version": "1"}]}, "pixi", "'version'"),
    ({"conda": [{"name": "numpy", "optional": "yes"}]}, "pixi", "'yes'"),
    ({"conda": [{"name": "numpy", "platforms": ["amiga-68k"]}]}, "pixi", "amiga-68k"),
    ({"conda": [{"platforms": ["linux-64"]}]}, "pixi", "needs a non-empty string 'name'"),
    ({"conda": [42]}, "pixi", "42"),
    ({"channels": ["two words"]}, "pixi", "two words"),
    (["numpy"], "pixi", "['numpy']"),
])
def test_invalid_specs_name_the_value(deps, tool, needle):
    message = spec_error(wetlite._normalize_dependencies, deps, tool)
    assert needle in message


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "a b", "x" * 65, "con", "NUL.txt", "trail.",
                                  "ümlaut", "a\\b", "-dash", 123, None])
def test_invalid_environment_names(name):
    message = spec_error(wetlite._check_env_name, name)
    assert repr(name) in message


@pytest.mark.parametrize("name", ["seg", "Seg-2", "a.b_c", "x" * 64, "0"])
def test_valid_environment_names(name):
    assert wetlite._check_env_name(name) == name


def test_create_rejects_a_bad_name_before_anything_else(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "r"), tool="venv")
    assert "'../escape'" in spec_error(mgr.create, "../escape", {"pip": ["x"]})
    assert not (tmp_path / "r").exists()


def test_manager_arguments_are_checked(tmp_path):
    assert "'conda'" in spec_error(wetlite.EnvironmentManager, root=str(tmp_path), tool="conda")
    assert "conda-forge" in spec_error(wetlite.EnvironmentManager, root=str(tmp_path), channels="conda-forge")
    assert "proxies" in spec_error(wetlite.EnvironmentManager, root=str(tmp_path), proxies="http://p:1")
    assert "venv" in spec_error(wetlite.EnvironmentManager, root=str(tmp_path), tool="venv", tool_version="1.0")
    with pytest.raises(wetlite.ToolError, match="'latest'"):
        wetlite.EnvironmentManager(root=str(tmp_path), tool="pixi", tool_version="latest")


def test_normalized_spec_is_canonical():
    spec = wetlite._normalize_dependencies(
        {"python": " 3.11 ", "conda": ["numpy>=1.26", {"name": "x", "platforms": ["LINUX-ARM64", "osx"]}],
         "pip": [{"name": "tifffile", "optional": True}], "channels": ["bioconda"]}, "micromamba")
    assert spec == {
        "python": "3.11",
        "conda": [{"name": "numpy>=1.26", "platforms": None, "optional": False, "dependencies": True},
                  {"name": "x", "platforms": ["linux-aarch64", "osx"], "optional": False, "dependencies": True}],
        "pip": [{"name": "tifffile", "platforms": None, "optional": True, "dependencies": True}],
        "channels": ["bioconda"],
    }


def test_platform_selection():
    entries = wetlite._normalize_dependencies({"conda": [
        "always",
        {"name": "linux-only", "platforms": ["linux"]},
        {"name": "win-opt", "platforms": ["win-64"], "optional": True},
        {"name": "nodeps", "dependencies": False, "platforms": ["unix"]},
    ]}, "micromamba")["conda"]
    assert wetlite._select_entries(entries, "linux-64", "conda") == (["always", "linux-only"], ["nodeps"])
    assert wetlite._select_entries([entries[0], entries[2], entries[3]], "osx-arm64", "conda") == (["always"], ["nodeps"])
    message = spec_error(wetlite._select_entries, entries, "win-64", "conda")
    assert "'linux-only'" in message and "win-64" in message and "optional" in message


# --- python specs -------------------------------------------------------------

@pytest.mark.parametrize("spec, version, expected", [
    ("3.11", "3.11.7", True), ("3.1", "3.10.2", False), ("3.1", "3.1.4", True), ("=3.11", "3.11.0", True),
    ("3.11.*", "3.11.2", True), ("3.11.7", "3.11.7", True), ("3.11.7", "3.11.8", False),
    (">=3.10", "3.9.18", False), (">=3.10,<3.13", "3.12.1", True), ("~=3.10", "3.13.0", True),
    ("==3.11.4", "3.11.4", True), ("3.9|3.11", "3.11.1", True), ("3.9|3.11", "3.10.1", False),
    ("!=3.12.*", "3.12.1", False), (None, "2.7.18", True),
])
def test_python_spec_matching(spec, version, expected):
    assert wetlite._python_spec_matches(spec, version) is expected


@pytest.mark.parametrize("spec, conda", [
    ("3.11", "python=3.11"), (">=3.10", "python>=3.10"), ("3.11.*", "python=3.11.*"), ("==3.11.4", "python==3.11.4"),
    (">=3.9, <3.12", "python>=3.9,<3.12"),
])
def test_python_conda_spec(spec, conda):
    assert wetlite._python_conda_spec(spec) == conda


# --- requirements.txt ---------------------------------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_requirements_follow_includes_and_keep_options_and_markers(tmp_path):
    write(tmp_path / "sub" / "more.txt", "extra-pkg==1.0  # pinned\n")
    main = write(tmp_path / "requirements.txt", """\
        # comment line
        --index-url https://pypi.example/simple
        requests>=2 ; python_version >= "3.8"
        old-thing ; python_version < "3"
        -r sub/more.txt
        --requirement=sub/more.txt
        -c sub/more.txt
        long-name\\
        >=1.0
        hashed==1.0 --hash=sha256:abcd
        """)
    entries, files = wetlite._read_requirements(main)
    assert entries == [
        "--index-url https://pypi.example/simple",
        'requests>=2 ; python_version >= "3.8"',
        'old-thing ; python_version < "3"',
        "extra-pkg==1.0",
        "extra-pkg==1.0",
        "--constraint " + str(tmp_path / "sub" / "more.txt"),
        "long-name>=1.0",
        "hashed==1.0",
    ]
    assert files == [main, str(tmp_path / "sub" / "more.txt")]


def test_requirements_lines_that_pip_takes_without_a_name(tmp_path):
    # pip installs a URL, a VCS link or a path given alone on a line; pixi needs "name @ url".
    lines = ["git+https://github.com/MouseLand/cellpose.git@v3.1.0", "https://example.org/x-1.0-py3-none-any.whl",
             "./localpkg", ".", "../other/pkg.tar.gz", "wheels/y-2.0-py3-none-any.whl"]
    req = write(tmp_path / "requirements.txt", "numpy\n" + "\n".join(lines) + "\n")
    for tool in ("venv", "micromamba"):
        assert wetlite._read_config(req, tool)["pip"] == ["numpy"] + lines
    assert not satisfied(tmp_path, None, config=req)
    for line in lines:
        assert not satisfied(tmp_path, None, config=write(tmp_path / "one.txt", line + "\n")), line
    message = spec_error(wetlite.EnvironmentManager(root=str(tmp_path), tool="pixi")._recipe, None, req)
    assert lines[0] in message and "name @" in message
    assert "this is >> wrong" in spec_error(wetlite._read_requirements,
                                            write(tmp_path / "r2.txt", "this is >> wrong\n"))


def test_requirements_errors_name_file_and_line(tmp_path):
    bad = write(tmp_path / "requirements.txt", "ok\nthis is >> wrong\n")
    message = spec_error(wetlite._read_requirements, bad)
    assert "line 2" in message and "this is >> wrong" in message and bad in message
    loop = write(tmp_path / "loop.txt", "-r loop.txt\n")
    assert "includes itself" in spec_error(wetlite._read_requirements, loop)
    missing = write(tmp_path / "m.txt", "-r nowhere.txt\n")
    assert "nowhere.txt" in spec_error(wetlite._read_requirements, missing)


# --- environment.yml ------------------------------------------------------------

def test_environment_yml_subset(tmp_path):
    path = write(tmp_path / "environment.yml", """\
        name: demo   # ignored
        channels: [conda-forge, 'bioconda']
        dependencies:
          - python=3.11
          - "numpy>=1.26"
          - sel(linux): linux-thing
          - sel(win): win-thing
          - conda-forge::scipy
          - pip
          - pip:
              - requests>=2
              - -e ./src   # editable
          - after-pip
        variables:
          X: 1
        """)
    data = wetlite._read_environment_yml(path)
    assert data["name"] == "demo"
    assert data["channels"] == ["conda-forge", "bioconda"]
    assert data["dependencies"] == ["python=3.11", "numpy>=1.26", "linux-thing", "conda-forge::scipy", "pip",
                                    "after-pip"]
    assert data["pip"] == ["requests>=2", "-e ./src"]


def test_environment_yml_with_unindented_lists(tmp_path):
    # What yaml.safe_dump writes, and many hand-written files: the list items
    # of a key at the key's own indentation.
    path = write(tmp_path / "environment.yml", """\
        name: demo
        channels:
        - conda-forge
        dependencies:
        - python=3.11
        - pip:
          - requests>=2
        - numpy
        variables:
          X: 1
        """)
    data = wetlite._read_environment_yml(path)
    assert data["channels"] == ["conda-forge"]
    assert data["dependencies"] == ["python=3.11", "numpy"] and data["pip"] == ["requests>=2"]
    assert "key: value" in spec_error(wetlite._read_environment_yml, write(tmp_path / "e.yml", "- numpy\n"))


@pytest.mark.parametrize("text, needle", [
    ("dependencies:\n  - &anchor numpy\n", "&anchor"),
    ("dependencies:\n  - numpy: 1\n", "numpy: 1"),
    ("dependencies: numpy\n", "'dependencies' must be a list"),
    ("dependencies:\n\t- numpy\n", "tabs"),
    ("dependencies:\n  - numpy; rm\n", "numpy; rm"),
    ("just text\n", "key: value"),
])
def test_environment_yml_errors(tmp_path, text, needle):
    path = write(tmp_path / "environment.yml", text)
    message = spec_error(wetlite._read_environment_yml, path)
    assert needle in message and path in message or needle in message


def test_an_exported_environment_yml(tmp_path):
    # `micromamba env export` (transcripts 6.3) pins every package to its build,
    # python too; a build string is no python version, but the file is the
    # usual way to hand an environment on.
    path = write(tmp_path / "environment.yml", """\
        name: 
        channels:
          - file:///channel
        dependencies:
          - pip=23.2.1=pyh_local_0
          - python=3.11.7=local_0
          - wetlite-demo=0.2.0=pyh_local_0
          - pip:
            - six==1.17.0

        prefix: "/somewhere/env"
        """)
    for tool in ("micromamba", "pixi"):
        cfg = wetlite._read_config(path, tool)
        assert (cfg["python"], cfg["conda"], cfg["pip"]) == ("=3.11.7", ["wetlite-demo=0.2.0=pyh_local_0"],
                                                             ["six==1.17.0"])
    assert "'wetlite-demo=0.2.0=pyh_local_0'" in spec_error(wetlite._read_config, path, "venv")
    write(tmp_path / "environment.yml", "dependencies:\n  - python 3.10.4 h12debd9_0\n")
    assert wetlite._read_config(path, "micromamba")["python"] == "=3.10.4"
    write(tmp_path / "environment.yml", "dependencies:\n  - conda-forge::python==3.10.4=h12debd9_0\n")
    assert wetlite._read_config(path, "micromamba")["python"] == "==3.10.4"


@pytest.mark.parametrize("name, text", [
    ("pixi.toml", '[workspace]\nchannels = [5]\n'),
    ("pixi.toml", '[pypi-dependencies]\nx = { git = 5 }\n'),
    ("pixi.toml", '[pypi-dependencies]\nx = { path = 5 }\n'),
    ("pixi.toml", '[pypi-options]\nfind-links = ["./wheels"]\n'),
    ("pixi.toml", 'dependencies = ["numpy"]\n'),
    ("pixi.toml", '[target.linux-64]\ndependencies = 5\n[target.osx-arm64]\ndependencies = 5\n'
                  '[target.win-64]\ndependencies = 5\n[target.linux-aarch64]\ndependencies = 5\n'
                  '[target.osx-64]\ndependencies = 5\n'),
    ("pyproject.toml", '[project]\nrequires-python = 3.10\n'),
    ("pyproject.toml", '[project]\noptional-dependencies = { extra = "six" }\n'),
    ("pyproject.toml", '[project]\noptional-dependencies = 5\n'),
    ("pyproject.toml", 'project = 5\n'),
    ("pyproject.toml", '[tool]\npixi = 5\n'),
])
def test_a_manifest_of_the_wrong_shape_is_a_spec_error(tmp_path, name, text):
    path = write(tmp_path / name, text)
    for tool in ("micromamba", "venv"):
        optional = ["extra"] if "optional" in text else None
        assert path in spec_error(wetlite._read_config, path, tool, optional)


def test_config_files_by_tool(tmp_path):
    yml = write(tmp_path / "environment.yml", "dependencies:\n  - python=3.10\n  - numpy\n  - pip:\n    - rich\n")
    cfg = wetlite._read_config(yml, "pixi")
    assert (cfg["kind"], cfg["python"], cfg["conda"], cfg["pip"]) == ("environment", "=3.10", ["numpy"], ["rich"])
    assert "'numpy'" in spec_error(wetlite._read_config, yml, "venv")
    toml = write(tmp_path / "pixi.toml", "[workspace]\nchannels = ['./chan']\n[dependencies]\npython = '3.11.*'\n"
                                          "numpy = '>=1.26'\n")
    cfg = wetlite._read_config(toml, "micromamba")
    assert (cfg["python"], cfg["conda"], cfg["channels"], cfg["manifest"]) == (
        "3.11.*", ["numpy>=1.26"], [str(tmp_path / "chan")], False)
    assert "'numpy>=1.26'" in spec_error(wetlite._read_config, toml, "venv")
    assert "setup.cfg" in spec_error(wetlite._read_config, str(tmp_path / "setup.cfg"), "pixi")
    assert "does not exist" in spec_error(wetlite._read_config, str(tmp_path / "requirements.txt"), "venv")
    (tmp_path / "pixi.lock").write_text("version: 6\n")
    assert wetlite._read_config(toml, "pixi", manifest=True)["files"] == [toml, str(tmp_path / "pixi.lock")]
    assert wetlite._read_config(toml, "pixi")["files"] == [toml]


# --- recipes and reuse identity -------------------------------------------------

def recipe(tmp_path, deps, tool="micromamba", channels=("conda-forge",), config=None):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path), tool=tool, channels=channels)
    return mgr._recipe(deps, config)


def test_recipe_hash_is_stable_and_sensitive(tmp_path):
    a = recipe(tmp_path, {"conda": ["numpy"], "pip": ["rich"], "python": "3.11"})
    b = recipe(tmp_path, {"python": "3.11", "pip": ["rich"], "conda": ["numpy"]})
    assert a["hash"] == b["hash"]
    others = [
        recipe(tmp_path, {"conda": ["numpy"], "pip": ["rich"], "python": "3.12"}),
        recipe(tmp_path, {"conda": ["numpy"], "pip": ["rich"]}),
        recipe(tmp_path, {"conda": ["numpy"], "pip": ["rich"], "python": "3.11"}, channels=("bioconda",)),
        recipe(tmp_path, {"conda": ["numpy"], "pip": ["rich"], "python": "3.11"}, tool="pixi"),
        recipe(tmp_path, {"conda": [{"name": "numpy", "optional": True}], "pip": ["rich"], "python": "3.11"}),
    ]
    assert len({r["hash"] for r in others} | {a["hash"]}) == len(others) + 1


def test_recipe_hash_follows_config_content(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("rich\n")
    first = recipe(tmp_path, None, tool="venv", config=str(req))["hash"]
    req.write_text("rich>=13\n")
    assert recipe(tmp_path, None, tool="venv", config=str(req))["hash"] != first


# --- is the host enough? ----------------------------------------------------------

def satisfied(tmp_path, deps, tool="venv", config=None):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path), tool=tool)
    return mgr._host_satisfies(mgr._recipe(deps, config))


def test_host_satisfies_what_it_has(tmp_path):
    assert satisfied(tmp_path, {})
    assert satisfied(tmp_path, {"python": "%d.%d" % sys.version_info[:2], "pip": ["pytest", "PyTest>=1.0"]})
    assert satisfied(tmp_path, {"pip": ["no-such-package-xyz ; python_version < '3'"]})
    assert satisfied(tmp_path, {"pip": ["pytest[testing] ; extra == 'never'"]})


@pytest.mark.parametrize("deps", [
    {"python": "2.7"},
    {"python": ">=%d.%d" % (sys.version_info[0], sys.version_info[1] + 1)},
    {"pip": ["pytest>=999"]},
    {"pip": ["no-such-package-xyz"]},
    {"pip": ["pytest @ https://example.invalid/pytest.whl"]},
    {"pip": ["pytest", "no-such-package-xyz"]},
])
def test_host_does_not_satisfy(tmp_path, deps):
    assert not satisfied(tmp_path, deps)


def test_host_without_conda_never_satisfies_conda_deps(tmp_path):
    if os.path.isdir(os.path.join(sys.prefix, "conda-meta")):
        pytest.skip("the test interpreter is a conda prefix")
    assert not satisfied(tmp_path, {"conda": ["zlib"]}, tool="micromamba")


def test_host_check_reads_requirements_files(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("pytest\n")
    assert satisfied(tmp_path, None, config=str(req))
    req.write_text("pytest\nno-such-package-xyz\n")
    assert not satisfied(tmp_path, None, config=str(req))


def test_conda_spec_check_against_records():
    records = {"numpy": "1.26.4", "python": "3.11.7"}
    assert wetlite._conda_spec_satisfied("numpy", records)
    assert wetlite._conda_spec_satisfied("numpy=1.26", records)
    assert wetlite._conda_spec_satisfied("conda-forge::numpy>=1.20,<2", records)
    assert not wetlite._conda_spec_satisfied("numpy=1.2", records)
    assert not wetlite._conda_spec_satisfied("numpy==1.26", records)
    assert not wetlite._conda_spec_satisfied("scipy", records)
    assert not wetlite._conda_spec_satisfied("numpy 1.26.* py311*", records)


def test_markers_are_evaluated_for_pixi(tmp_path):
    kept = wetlite._strip_markers(['a>=1 ; python_version < "3.9"', 'b[x] ; python_version >= "3.9"',
                                   "c @ https://e.invalid/c.whl"], "3.8")
    assert kept == ["a>=1", "c @ https://e.invalid/c.whl"]
    assert wetlite._strip_markers(['a ; python_version < "3.9"', "b[x]>=2"], "3.12") == ["b[x]>=2"]


# --- more bad input, each a SpecError that names the value ---------------------------

@pytest.mark.parametrize("deps, tool, needle", [
    ({"pip": ["foo\x01"]}, "venv", "contains a control character"),
    ({"pip": [{"name": "--pre", "dependencies": False}]}, "venv", "pip option '--pre' cannot carry 'dependencies'"),
    ({"conda": ["conda-forge::python=3.10"]}, "micromamba", "conda entry 'conda-forge::python=3.10': give python"),
    ({"conda": [{"name": "python=3.10", "platforms": ["linux-64"]}]}, "pixi", "conda entry 'python=3.10': give python"),
    ({"python": "3.10|"}, "micromamba", "invalid python spec '3.10|': empty alternative"),
])
def test_more_invalid_specs_name_the_value(deps, tool, needle):
    assert needle in spec_error(wetlite._normalize_dependencies, deps, tool)


def test_python_as_a_conda_entry_or_an_integer():
    # A conda "python" entry is the python spec (once); an int is a version as a string would be.
    assert wetlite._normalize_dependencies({"conda": ["python=3.10", "numpy"]}, "micromamba")["python"] == "=3.10"
    assert wetlite._normalize_dependencies({"python": 3}, "pixi")["python"] == "3"


def test_specs_for_one_package_are_merged_for_pixi_or_refused():
    assert wetlite._merge_conda_specs(["numpy=1.2", "numpy>=1", "scipy"]) == ["numpy 1.2.*,>=1", "scipy"]
    assert "ask for different channels; give 'numpy' once" in spec_error(
        wetlite._merge_conda_specs, ["a::numpy", "b::numpy"])
    for builds in (["numpy=1.2=py_0", "numpy>=1"], ["numpy[build=py*]", "numpy>=1"]):
        assert "name builds, and wetlite cannot merge them for pixi" in spec_error(wetlite._merge_conda_specs, builds)
    assert wetlite._strip_markers(["foo[a]>=1", "foo[b]<3", "Foo>=1"], "3.11") == ["foo[a,b]>=1,<3"]
    message = spec_error(wetlite._strip_markers, ["foo @ https://e.org/a.whl", "foo>=1"], "3.11")
    assert "pip requirements for 'foo' disagree (foo @ https://e.org/a.whl; foo>=1)" in message


def test_a_config_that_is_no_path_or_too_big(tmp_path):
    assert "config must be a path, not int 42" in spec_error(wetlite._read_config, 42, "venv")
    big = tmp_path / "requirements.txt"
    with open(str(big), "wb") as f:
        f.truncate(wetlite._CONFIG_LIMIT + 1)
    message = spec_error(wetlite._read_config, str(big), "venv")
    assert str(big) in message and "more than the" in message


PIXI_HEAD = '[workspace]\nchannels = ["c"]\nplatforms = ["linux-64"]\n'


@pytest.mark.parametrize("text, needle", [
    ('[dependencies]\nnumpy = 5\n', "the version of 'numpy' must be a string, not 5"),
    ('[dependencies]\nfoo = { path = "." }\n', "'foo' is a path package that only pixi itself can build"),
    ('[pypi-dependencies]\nfoo = 5\n', "pypi dependency 'foo' must be a version string or a table, not 5"),
    ('[pypi-dependencies]\nfoo = { version = ">1", index = "https://x" }\n', "the per-package index of 'foo' is pixi-only"),
    ('[dependencies]\nnumpy = ">1"\nnumpy = "<2"\n', "is not valid TOML"),
    ('[dependencies]\nnumpy = ">1"\rscipy = "*"\n', "is not valid TOML"),    # a lone CR ends no line in TOML
])
def test_a_pixi_manifest_other_tools_cannot_follow_is_a_spec_error(tmp_path, text, needle):
    path = write(tmp_path / "pixi.toml", PIXI_HEAD + text)
    assert needle in spec_error(wetlite._read_config, path, "micromamba")


def test_what_other_tools_take_from_a_pixi_manifest(tmp_path):
    path = write(tmp_path / "pixi.toml", PIXI_HEAD + '[dependencies]\nnumpy = { version = "1.*", build = "py_0" }\n'
                 '[pypi-options]\nextra-index-urls = ["https://x.example/simple"]\n')
    cfg = wetlite._read_config(path, "micromamba")
    assert cfg["conda"] == ["numpy 1.* py_0"] and cfg["pip"] == ["--extra-index-url https://x.example/simple"]


@pytest.mark.parametrize("text", ["channels:\n  x\n", "dependencies:\n  numpy\n"])
def test_environment_yml_lists_need_items(tmp_path, text):
    path = write(tmp_path / "environment.yml", text)
    message = spec_error(wetlite._read_environment_yml, path)
    assert "%s line 2: expected a list item '- ...'" % path in message
