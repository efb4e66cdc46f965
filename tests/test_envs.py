"""Environments for real with the venv tool: every local interpreter, reuse, replace, crashes, concurrency."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, local_interpreters, make_wheel, wetlite


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wheels")
    make_wheel(directory, "wetlite-test-demo", "1.0")
    make_wheel(directory, "wetlite-test-demo", "2.0")
    make_wheel(directory, "wetlite-test-extra", "0.5")
    return str(directory)


def local(wheels, *requirements):
    """pip entries that install from the test's wheel dir only (works with every pip, 3.6's included)."""
    return ["--no-index", "--find-links " + wheels] + list(requirements)


def probe(env, code):
    return env.run([["python", "-c", code]]).stdout.strip()


# --- one environment per local interpreter ------------------------------------

@pytest.mark.parametrize("version, python", local_interpreters())
def test_venv_for_every_local_interpreter(tmp_path, wheels, version, python):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.create("py" + version.replace(".", ""),
                     {"python": version, "pip": local(wheels, "wetlite-test-demo==1.0")}, force_external=True)
    assert env.tool == "venv" and os.path.isfile(env.python)
    out = probe(env, "import sys, wetlite_test_demo; print('%d.%d' % sys.version_info[:2]); "
                     "print(wetlite_test_demo.hello()); print(sys.prefix)")
    found_version, hello, prefix = out.splitlines()
    assert found_version == version
    assert hello == "hello from wetlite-test-demo 1.0"
    assert os.path.realpath(prefix) == os.path.realpath(env.path)
    listed = mgr.list()
    assert [(e["name"], e["tool"], e["python_version"][:len(version)]) for e in listed] == [(env.name, "venv", version)]


def test_python_spec_with_no_local_match_is_a_tool_error(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    with pytest.raises(wetlite.ToolError, match="2.9") as info:
        mgr.create("old", {"python": "2.9"}, force_external=True)
    assert "micromamba" in str(info.value)
    assert mgr.list() == []
    assert not os.path.exists(os.path.join(mgr.root, "envs", "old"))


# --- lifecycle on one module-scoped environment ----------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory, wheels):
    root = str(tmp_path_factory.mktemp("shared") / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    deps = {"pip": local(wheels, "wetlite-test-demo==1.0")}
    env = mgr.create("life", deps, force_external=True)
    return mgr, env, deps


def test_reuse_runs_no_tool(shared, monkeypatch):
    mgr, env, deps = shared

    def forbidden(*args, **kwargs):
        raise AssertionError("reusing an environment must not run anything: %r" % (args,))
    monkeypatch.setattr(wetlite, "_run_streaming", forbidden)
    monkeypatch.setattr(wetlite, "_interpreter_version", forbidden)
    assert mgr.create("life", deps, force_external=True) is env
    fresh = wetlite.EnvironmentManager(root=mgr.root, tool="venv")
    again = fresh.create("life", deps, force_external=True)
    assert again.path == env.path and again.python == env.python and again is not env
    assert fresh.get("life") is again


def test_different_recipe_needs_replace(shared):
    mgr, env, deps = shared
    with pytest.raises(wetlite.SpecError, match="replace=True") as info:
        mgr.create("life", {"pip": ["--no-index", "something-else"]}, force_external=True)
    assert "'life'" in str(info.value)
    assert probe(env, "import wetlite_test_demo; print(wetlite_test_demo.hello())").endswith("1.0")


def test_install_adds_packages(shared, wheels):
    mgr, env, deps = shared
    env.install({"pip": local(wheels, "wetlite-test-extra")})
    assert probe(env, "import wetlite_test_extra; print(wetlite_test_extra.hello())") == \
        "hello from wetlite-test-extra 0.5"
    record = json.load(open(os.path.join(mgr.root, "state", "envs", "life.json")))
    assert record["state"] == "ready" and len(record["installed"]) == 1


def test_replace_rebuilds(tmp_path, wheels):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    first = mgr.create("r", {"pip": local(wheels, "wetlite-test-demo==1.0")}, force_external=True)
    marker = os.path.join(first.path, "marker.txt")
    open(marker, "w").close()
    second = mgr.create("r", {"pip": local(wheels, "wetlite-test-demo==2.0")}, force_external=True,
                        replace=True)
    assert second.path == first.path and not os.path.exists(marker)
    assert probe(second, "import wetlite_test_demo; print(wetlite_test_demo.hello())").endswith("2.0")


def test_half_built_environment_is_rebuilt(tmp_path, wheels):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    deps = {"pip": local(wheels, "wetlite-test-demo==1.0")}
    env = mgr.create("crash", deps, force_external=True)
    record_path = os.path.join(mgr.root, "state", "envs", "crash.json")
    record = json.load(open(record_path))
    # Simulate a process killed mid-build: the record still says "creating", files are partial.
    record["state"] = "creating"
    json.dump(record, open(record_path, "w"))
    os.remove(env.python)
    leftover = os.path.join(env.path, "leftover.txt")
    open(leftover, "w").close()
    fresh = wetlite.EnvironmentManager(root=mgr.root, tool="venv")
    with pytest.raises(wetlite.SpecError):
        fresh.get("crash")      # a half-built environment is never handed out
    rebuilt = fresh.create("crash", deps, force_external=True)
    assert not os.path.exists(leftover)
    assert probe(rebuilt, "import wetlite_test_demo; print('ok')") == "ok"
    assert json.load(open(record_path))["state"] == "ready"


def test_failed_creation_leaves_nothing(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    with pytest.raises(wetlite.CommandError) as info:
        mgr.create("broken", {"pip": local(str(tmp_path), "wetlite-no-such-package")}, force_external=True)
    assert info.value.returncode != 0 and info.value.output_tail
    assert "pip install" in str(info.value)
    assert not os.path.exists(os.path.join(mgr.root, "envs", "broken"))
    assert not os.path.exists(os.path.join(mgr.root, "state", "envs", "broken.json"))
    assert os.path.isfile(os.path.join(mgr.root, "state", "logs", "broken.log"))


def test_unknown_directory_is_never_overwritten(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    foreign = os.path.join(mgr.root, "envs", "mine")
    os.makedirs(foreign)
    open(os.path.join(foreign, "precious.txt"), "w").close()
    with pytest.raises(wetlite.SpecError, match="not created by wetlite"):
        mgr.create("mine", force_external=True)
    assert os.path.exists(os.path.join(foreign, "precious.txt"))


def test_get_list_remove_and_load(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.create("keep", force_external=True)
    assert mgr.get("keep") is env
    with pytest.raises(wetlite.SpecError, match="'nothing'"):
        mgr.get("nothing")
    loaded = wetlite.EnvironmentManager(root=str(tmp_path / "other"), tool="venv").load("borrowed", env.path)
    assert loaded.tool == "venv" and loaded.python == env.python
    assert probe(loaded, "import sys; print(sys.prefix)") == env.path
    loaded.manager.remove("borrowed")        # only forgotten: the files are not its to delete
    assert os.path.isfile(env.python)
    with pytest.raises(wetlite.SpecError, match="is not an environment"):
        mgr.load("x", str(tmp_path))
    mgr.remove("keep")
    assert not os.path.exists(env.path) and mgr.list() == []
    with pytest.raises(wetlite.SpecError, match="'keep'"):
        mgr.remove("keep")


def test_main_environment_is_returned_when_the_host_satisfies(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.create("host", {"pip": ["pytest"]})
    assert env is mgr.main_environment
    assert env.tool == "main" and env.python == sys.executable
    assert not os.path.exists(mgr.root)
    assert probe(env, "import sys; print(sys.executable)") != ""
    with pytest.raises(wetlite.SpecError, match="host interpreter"):
        env.install({"pip": ["rich"]})


CREATE_IN_PROCESS = textwrap.dedent("""\
    import os, sys, time
    sys.path.insert(0, %(repo)r)
    import wetlite
    # A barrier: start creating only once all the processes run, so that they overlap.
    open(os.path.join(sys.argv[3], str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(sys.argv[3])) < int(sys.argv[4]) and time.monotonic() < deadline:
        time.sleep(0.01)
    mgr = wetlite.EnvironmentManager(root=sys.argv[1], tool="venv")
    started = time.time()
    env = mgr.create("together", {"pip": ["--no-index", "--find-links " + sys.argv[2], "wetlite-test-demo"]},
                     force_external=True)
    print(env.path, started, time.time())
    """)


def test_concurrent_creation_builds_once(tmp_path, wheels):
    root = str(tmp_path / "root")
    code = CREATE_IN_PROCESS % {"repo": REPO}
    started = tmp_path / "started"
    started.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", code, root, wheels, str(started), "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1].decode()[-2000:] for o in outputs]
    # They really ran at the same time: every create began before the first one ended.
    spans = [tuple(float(t) for t in o[0].decode().split()[1:]) for o in outputs]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    paths = {o[0].decode().split()[0] for o in outputs}
    assert paths == {os.path.join(root, "envs", "together")}
    with open(os.path.join(root, "state", "logs", "together.log")) as f:
        log = f.read()
    assert log.count(" -m venv ") == 1, log


# --- behaviour the suite did not reach before (issue 16) -------------------------------------

def test_packages_of_a_venv_and_of_the_main_environment(shared):
    mgr, env, deps = shared
    rows = {row["name"]: row for row in env.packages()}
    assert (rows["wetlite-test-demo"]["version"], rows["wetlite-test-demo"]["kind"]) == ("1.0", "pypi")
    assert rows["pip"]["kind"] == "pypi"
    assert all(row["kind"] == "pypi" for row in rows.values())     # a venv holds no conda packages
    import importlib.metadata
    main = {row["name"]: row for row in mgr.main_environment.packages()}
    assert main["pytest"]["version"] == importlib.metadata.version("pytest")
    assert main["pytest"]["kind"] == "pypi" and "wetlite-test-demo" not in main


def test_default_root_follows_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("WETLITE_ROOT", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert wetlite.EnvironmentManager(tool="venv").root == str(tmp_path / "xdg" / "wetlite")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert wetlite.EnvironmentManager(tool="venv").root == str(tmp_path / "home" / ".local" / "share" / "wetlite")
    monkeypatch.setenv("WETLITE_ROOT", str(tmp_path / "explicit"))
    assert wetlite.EnvironmentManager(tool="venv").root == str(tmp_path / "explicit")
    assert not os.listdir(str(tmp_path))                   # constructing a manager creates nothing


def test_host_satisfies_a_requirement_with_extras(tmp_path, monkeypatch):
    # A distribution in the host whose extra "fast" needs pytest (installed) and "slow" something absent.
    site = tmp_path / "site"
    info = site / "wetlite_fake_extras-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: wetlite-fake-extras\nVersion: 1.0\n"
        "Provides-Extra: fast\nProvides-Extra: slow\n"
        'Requires-Dist: pytest; extra == "fast"\n'
        'Requires-Dist: wetlite-never-installed-xyz; extra == "slow"\n')
    monkeypatch.syspath_prepend(str(site))
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    assert mgr.create("fast", {"pip": ["wetlite-fake-extras[fast]>=1.0"]}) is mgr.main_environment
    assert mgr.create("plain", {"pip": ["Wetlite_Fake_Extras"]}) is mgr.main_environment
    # The "slow" extra is not satisfied: an environment is built, and its pip fails on the missing
    # dependency (nothing to install it from).
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(wetlite.CommandError) as failed:
        mgr.create("slow", {"pip": ["--no-index", "--find-links " + str(empty), "wetlite-fake-extras[slow]"]})
    assert "wetlite-fake-extras" in failed.value.output_tail
    assert mgr.list() == []


def test_install_refusals_and_a_post_install_on_record(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))                    # where the post-install command runs
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.create("post", force_external=True)
    with pytest.raises(wetlite.SpecError, match="cannot change the python of venv environment 'post'"):
        env.install({"python": "3.9"})
    with pytest.raises(wetlite.SpecError, match=r"optional_dependencies=\['gpu'\] selects groups of a config file"):
        env.install(optional_dependencies=["gpu"])
    env.install(post_install=["echo https://user:s3cret@example.org/simple > made-by-post-install"])
    assert (tmp_path / "made-by-post-install").read_text().strip() == "https://user:s3cret@example.org/simple"
    record = json.load(open(os.path.join(mgr.root, "state", "envs", "post.json")))
    assert len(record["installed"]) == 1
    assert "s3cret" not in json.dumps(record["installed"]) and "post_install" in record["installed"][0]   # masked
    assert mgr.info("post")["installed"][0].get("post_install") == record["installed"][0]["post_install"]


def test_load_refuses_what_it_cannot_use(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(wetlite.SpecError, match="cannot load 'x': %s does not exist" % re.escape(missing)):
        mgr.load("x", missing)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "pixi.toml").write_text('[workspace]\nchannels = ["c"]\nplatforms = ["linux-64"]\n')
    with pytest.raises(wetlite.SpecError) as info:
        mgr.load("w", str(workspace))
    assert "has no installed environment" in str(info.value) and "tool='pixi'" in str(info.value)
    with pytest.raises(wetlite.SpecError, match="no environment named 'nothing'"):
        mgr.info("nothing")
