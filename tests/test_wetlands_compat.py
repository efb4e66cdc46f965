"""Wetlands programs on wetlite, with only their import line changed.

Scenarios written the way Wetlands' own docs and tests use it: the seed's
camelCase API (0.2-0.3) and the 1.x snake_case one, run with the venv tool and
the stand-in micromamba.  The machine is offline, so managers that use a conda
tool are given the test channel (a Wetlands program run behind a firewall needs
the same one line).
"""
import logging
import os
import sys
import textwrap

import pytest

from conftest import file_url, make_wheel, tool_binary, tool_marks, wetlite
from wetlite import EnvironmentManager        # the one line a Wetlands program changes

HOST_XY = "%d.%d" % sys.version_info[:2]

MODULE = textwrap.dedent('''\
    import sys

    def hello(name):
        import wetlite_test_demo
        return "%s says %s" % (name, wetlite_test_demo.hello())

    def prefix():
        return sys.prefix
    ''')


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wheels")
    make_wheel(directory, "wetlite-test-demo", "1.0")
    make_wheel(directory, "wetlite-test-demo", "2.0")
    return str(directory)


def local(wheels, *requirements):
    return ["--no-index", "--find-links " + wheels] + list(requirements)


@pytest.fixture
def module_file(tmp_path):
    path = tmp_path / "example_module.py"
    path.write_text(MODULE)
    return str(path)


@pytest.mark.skipif(os.name == "nt" or sys.version_info < (3, 11), reason="POSIX stand-ins, tomllib")
@pytest.mark.parametrize("tool", [pytest.param(t, marks=tool_marks(t)) for t in ("micromamba", "pixi")])
def test_the_seeds_how_it_works_steps(tmp_path, local_channel, wheels, module_file, monkeypatch, tool):
    """seed/how-it-works.txt, steps 1-6, in the seed's camelCase (a real tool when WETLITE_TEST_<TOOL> is set)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.makedirs(str(tmp_path / "home"))
    monkeypatch.setenv("WETLITE_" + tool.upper(), tool_binary(tmp_path / "tools", tool))
    # 1. set-up: nothing is downloaded before it is needed
    environmentManager = EnvironmentManager(condaPath=str(tmp_path / tool), usePixi=tool == "pixi",
                                            channels=[local_channel])
    assert environmentManager.tool == tool and environmentManager.root == str(tmp_path / tool)
    # 2. creation; the main environment when it already satisfies the dependencies
    assert environmentManager.create("nothing", {}) is environmentManager.mainEnvironment
    env = environmentManager.create("cellpose", {"python": HOST_XY, "conda": ["wetlite-demo==0.1.0"]},
                                    forceExternal=True)
    assert env.path == str(tmp_path / tool / "envs" / "cellpose") if tool == "micromamba" else \
        str(tmp_path / tool / "workspaces" / "cellpose" / ".pixi" / "envs" / "default")
    assert environmentManager.environmentExists("cellpose")
    # 3. more dependencies, through the manager as the seed does it
    pip = local(wheels, "wetlite-test-demo==1.0") if tool == "micromamba" else \
        ["wetlite-test-demo @ " + file_url(os.path.join(wheels, "wetlite_test_demo-1.0-py3-none-any.whl"))]
    environmentManager.install("cellpose", {"pip": pip})
    names = {p["name"]: p["kind"] for p in environmentManager.getInstalledPackages("cellpose")}
    assert names["wetlite-demo"] == "conda" and names["wetlite-test-demo"] == "pypi"
    # 4. launch / execute / importModule
    assert not env.launched()
    env.launch()
    assert env.launched()
    assert env.execute(module_file, "hello", ["cellpose"]) == "cellpose says hello from wetlite-test-demo 1.0"
    example = env.importModule(module_file)
    assert os.path.realpath(example.prefix()) == os.path.realpath(env.path)
    # 5. executeCommands: the caller reads the process (the seed's second positional is activate commands)
    process = env.executeCommands(["python -u -c \"import os; print(os.environ['SEED_STEP'])\""],
                                  {"all": ["export SEED_STEP=five"]}, log=False)
    assert process.stdout.read().strip() == "five" and process.wait() == 0
    # 6. exit
    env.exit()
    assert not env.launched()
    environmentManager.exit()


def test_wetlands_1x_create_reuse_replace_delete(tmp_path, wheels):
    """1.x rules: same recipe reused, another refused unless replace_existing, delete() and update()."""
    mgr = EnvironmentManager(wetlands_instance_path=str(tmp_path / "wetlands"), manager="auto", tool="venv",
                             log_file_path=None)
    assert mgr.root == str(tmp_path / "wetlands" / "venv")
    deps = {"pip": local(wheels, "wetlite-test-demo==1.0")}
    env = mgr.create("a", deps, use_existing=False)
    record = os.path.join(mgr.root, "state", "envs", "a.json")
    built = os.stat(record).st_mtime_ns
    assert mgr.create("a", deps, use_existing=False) is env and os.stat(record).st_mtime_ns == built
    other = {"pip": local(wheels, "wetlite-test-demo==2.0")}
    with pytest.raises(wetlite.SpecError, match="replace"):
        mgr.create("a", other, use_existing=False)
    env = mgr.create("a", other, use_existing=False, replace_existing=True)
    assert env.run([["python", "-c", "import wetlite_test_demo as m; print(m.hello())"]]).stdout.strip() == \
        "hello from wetlite-test-demo 2.0"
    env = env.update(deps)
    assert "wetlite-test-demo" in {p["name"] for p in mgr.get_installed_packages(env)}
    assert mgr.environment_exists("a") and mgr.environment_exists(env.path)
    env.delete()
    assert not mgr.environment_exists("a") and not os.path.exists(env.path)


def test_wetlands_keywords(tmp_path, wheels, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    mgr = EnvironmentManager(str(tmp_path / "root"), tool="venv")
    env = mgr.create("k", dependencies={"pip": local(wheels, "wetlite-test-demo==1.0")},
                     additional_install_commands={"all": ["python -c \"open('installed.txt', 'w')\""]},
                     forceExternal=True)
    assert (tmp_path / "installed.txt").exists()
    # popenKwargs, log=False, and the 1.x manager-level call with wait=True
    process = mgr.executeCommands("k", ["pwd"], popenKwargs={"cwd": str(tmp_path)}, log=False, wait=True)
    assert process.returncode == 0
    process = env.execute_commands(["echo $WL"], additional_activate_commands=["export WL=yes"], log=False)
    assert process.stdout.read().strip() == "yes" and process.wait() == 0
    # wetlite's own positional wait still works; anything else there is an error, never wait=True
    assert env.execute_commands(["true"], True).returncode == 0
    with pytest.raises(wetlite.SpecError, match="wait"):
        env.execute_commands(["true"], 5)
    with pytest.raises(TypeError):
        mgr.create("k", {}, forceExternal=True, force_external=True)


def test_log_records_carry_the_environment_name(tmp_path, wheels):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("wetlite")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        mgr = EnvironmentManager(str(tmp_path / "root"), tool="venv")
        env = mgr.create("named", {"pip": local(wheels, "wetlite-test-demo==1.0")}, force_external=True)
        env.run(["echo from-the-environment"])
        with env:
            env.execute("builtins", "print", ("from-the-worker",))
        env.execute_commands(["echo waited"], wait=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    named = [r for r in records if getattr(r, "env_name", None) == "named"]
    texts = [r.getMessage() for r in named]
    assert any("Successfully installed" in t for t in texts)        # pip's output during the build
    assert any(t.endswith("from-the-environment") for t in texts)
    assert any(t.endswith("from-the-worker") for t in texts)
    assert any(t.endswith("waited") for t in texts)


def test_load_refuses_a_name_loaded_from_elsewhere(tmp_path):
    mgr = EnvironmentManager(str(tmp_path / "root"), tool="venv")
    for name in ("one", "two"):
        wetlite.EnvironmentManager(root=str(tmp_path / name), tool="venv").create("x", force_external=True)
    first = mgr.load("b", str(tmp_path / "one" / "envs" / "x"))
    assert mgr.load("b", str(tmp_path / "one" / "envs" / "x")) is first
    with pytest.raises(wetlite.SpecError, match="already loaded"):
        mgr.load("b", str(tmp_path / "two" / "envs" / "x"))
    mgr.remove("b")
    assert mgr.load("b", str(tmp_path / "two" / "envs" / "x")).path == str(tmp_path / "two" / "envs" / "x")
    # A name with no path: where this manager would put it.
    made = mgr.create("here", force_external=True)
    mgr.environments.clear()
    assert mgr.load("here").path == made.path


def test_missing_modules_and_config_files(tmp_path):
    mgr = EnvironmentManager(str(tmp_path / "root"), tool="venv")
    env = mgr.create("m", force_external=True)
    with env:
        for module in (str(tmp_path / "no_such_file.py"), "no_such_module_xyz"):
            with pytest.raises(ModuleNotFoundError):
                env.execute(module, "f")
    for target in (str(tmp_path / "no_such_file.py"), "no_such_module_xyz"):
        with pytest.raises(ModuleNotFoundError):
            mgr.main_environment.execute(target, "f")
    for call in (lambda path: mgr.create("c", config=path), lambda path: mgr.create_from_config("c", path),
                 lambda path: env.install(config=path)):
        with pytest.raises(FileNotFoundError) as info:
            call(str(tmp_path / "requirements.txt"))
        assert isinstance(info.value, wetlite.SpecError) and info.value.filename == str(tmp_path / "requirements.txt")


def test_unsupported_wetlands_names_say_so(tmp_path):
    mgr = EnvironmentManager(str(tmp_path / "root"), tool="venv")
    with pytest.raises(AttributeError, match="Coming from Wetlands"):
        mgr.registerEnvironment
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        mgr.nonsense
    assert "getInstalledPackages" not in dir(mgr) and "launched" not in dir(mgr.main_environment)
    assert mgr.main_environment.launched()
    with pytest.raises(wetlite.SpecError, match="additional_activate_commands"):
        mgr.main_environment.launch({"all": ["export X=1"]})
    for method in (mgr.get_installed_packages, mgr.environment_exists, mgr.install):
        with pytest.raises(wetlite.SpecError, match="its name, its path or the Environment"):
            method(5)


def test_wetlands_manager_arguments_choose_tool_and_root(tmp_path):
    def made(*args, **kwargs):
        mgr = EnvironmentManager(*args, **kwargs)
        return mgr.tool, mgr.root
    inst = str(tmp_path / "inst")
    assert made(wetlands_instance_path=inst, manager="micromamba") == ("micromamba", os.path.join(inst, "micromamba"))
    # manager="auto" (the default) guesses the tool from the conda path's name, as Wetlands does
    assert made(conda_path=str(tmp_path / "my-pixi")) == ("pixi", str(tmp_path / "my-pixi"))
    assert made(conda_path=str(tmp_path / "MicroMamba")) == ("micromamba", str(tmp_path / "MicroMamba"))
    assert made(inst, str(tmp_path / "micromamba")) == ("micromamba", str(tmp_path / "micromamba"))   # 0.3+ order
    with pytest.raises(TypeError, match="name the same directory"):
        EnvironmentManager(str(tmp_path / "x"), wetlands_instance_path=inst)
    main = str(tmp_path / "main-env")
    assert EnvironmentManager(str(tmp_path / "r"), tool="venv",
                              main_conda_environment_path=main).main_environment.path == main
    for bad in ({"root": 5}, {"condaPath": 5}, {"conda_path": ["/x"]}):   # a SpecError naming the value, not os.fspath's
        with pytest.raises(wetlite.SpecError, match="root must be a directory path, not (int 5|list)"):
            EnvironmentManager(tool="venv", **bad)


def test_log_file_path_gets_wetlites_log_records_once(tmp_path):
    import logging
    logger = logging.getLogger("wetlite")
    handlers, level = list(logger.handlers), logger.level
    inst = str(tmp_path / "inst")
    try:
        for _ in range(2):                  # a second manager on the same file adds no second handler
            EnvironmentManager(wetlands_instance_path=inst, manager="venv", log_file_path="logs/wetlands.log")
        added = [h for h in logger.handlers if h not in handlers]
        assert len(added) == 1 and added[0].baseFilename == os.path.join(inst, "logs", "wetlands.log")
        assert logger.getEffectiveLevel() <= logging.INFO
        logger.info("a line for the Wetlands log")
        added[0].flush()
        with open(os.path.join(inst, "logs", "wetlands.log"), encoding="utf-8") as f:
            assert "[INFO] wetlite: a line for the Wetlands log" in f.read()
    finally:
        for h in logger.handlers[:]:
            if h not in handlers:
                logger.removeHandler(h)
                h.close()
        logger.setLevel(level)


def test_wetlands_local_dependencies(tmp_path):
    mgr = EnvironmentManager(str(tmp_path / "root"), tool="venv")
    wheel = make_wheel(tmp_path, "wetlite-test-local", "1.5")
    with pytest.raises(TypeError, match="use_existing and force_external contradict"):
        mgr.create("l", {}, use_existing=True, force_external=True)
    with pytest.raises(wetlite.SpecError, match="a 'local' entry must be"):
        mgr.create("l", {"local": [{"name": "x"}]}, force_external=True)
    with pytest.raises(wetlite.SpecError, match="editable with pixi"):
        EnvironmentManager(str(tmp_path / "pixi-root"), tool="pixi").create("l", {"local": [{"path": wheel}]})
    env = mgr.create("l", dependencies={"local": [{"name": "wetlite-test-local", "path": wheel, "editable": False}],
                                        "pip": ["--no-index"]}, force_external=True)
    out = env.run([["python", "-c", "import wetlite_test_local as m; print(m.hello())"]]).stdout.strip()
    assert out == "hello from wetlite-test-local 1.5"
    with pytest.raises(TypeError, match="at most 6 positional arguments"):
        env.execute_commands(["true"], {}, {}, False, None, True, 7)
    with pytest.raises(TypeError, match="multiple values for 'popen_kwargs'"):
        env.execute_commands(["true"], {}, {}, popen_kwargs={})
