"""The executor for real: workers in venv environments, no mocks.

One environment on the host's Python serves most tests (built once with
mgr.create); tests that kill or reconfigure a worker use their own
Environment object on the same venv (mgr.load), so the shared worker stays
up.  The cross-version tests use one venv per local interpreter 3.6-3.13
(created with ``venv --without-pip``: the executor needs no pip, and this
keeps the file fast; test_envs.py covers mgr.create for every interpreter).
"""
import concurrent.futures
import itertools
import json
import logging
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import pytest

from conftest import HANG, REPO, local_interpreters, wetlite

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "executor_data")
HELPERS = os.path.join(DATA, "worker_helpers.py")
SCRIPT = os.path.join(DATA, "script_probe.py")

pytestmark = pytest.mark.skipif(os.name != "posix" or not os.path.isdir("/proc"),
                                reason="these executor tests use POSIX signals and /proc")


# --- helpers --------------------------------------------------------------------

def alive(pid):
    """True while ``pid`` runs (a zombie counts as gone: nobody may reap it in a container)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def reap(pid):
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_for(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _at_eof(conn):
    try:
        return conn.poll()
    except (OSError, EOFError):
        return True


def worker_pid(env):
    return env._worker.proc.pid


# --- environments -----------------------------------------------------------------

@pytest.fixture(scope="module")
def mgr(tmp_path_factory):
    m = wetlite.EnvironmentManager(root=str(tmp_path_factory.mktemp("executor") / "root"), tool="venv")
    yield m
    m.exit()


@pytest.fixture(scope="module")
def host_env(mgr):
    """The shared environment on the host's Python, its worker running, with executor_data on its sys.path."""
    env = mgr.create("host", {"python": "%d.%d" % sys.version_info[:2]}, force_external=True)
    env.launch(timeout=30)
    env.execute(HELPERS, "add_sys_path", (DATA,))
    yield env
    env.exit()


@pytest.fixture
def env(host_env):
    if host_env._worker is None or host_env._worker.dead is not None:
        host_env.launch(timeout=30)
        host_env.execute(HELPERS, "add_sys_path", (DATA,))
    return host_env


_fresh_names = itertools.count(1)


@pytest.fixture
def fresh(mgr, host_env):
    """A factory of Environments on the shared venv, each with its own worker; all exited afterwards."""
    made = []

    def make():
        e = mgr.load("fresh%d" % next(_fresh_names), host_env.path)
        made.append(e)
        return e
    yield make
    for e in made:
        e.exit()
        mgr.environments.pop(e.name, None)


@pytest.fixture(scope="module")
def version_envs(mgr, tmp_path_factory):
    """{major.minor: Environment} built lazily, one venv per local interpreter."""
    base = tmp_path_factory.mktemp("versions")
    made = {}

    def get(version, python):
        if version not in made:
            path = str(base / ("py" + version.replace(".", "")))
            proc = subprocess.run([python, "-m", "venv", "--without-pip", path],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                pytest.skip("python %s cannot make a venv here: %s" % (version, proc.stdout.decode()[-300:]))
            made[version] = mgr.load("py" + version.replace(".", ""), path)
        return made[version]
    yield get
    for e in made.values():
        e.exit()


@pytest.fixture
def host_errors_module(monkeypatch):
    monkeypatch.syspath_prepend(DATA)
    import wetlite_test_errors
    return wetlite_test_errors


# --- round trips ---------------------------------------------------------------------

def test_execute_module_name_with_args_and_kwargs(env):
    assert env.execute("builtins", "sorted", ([3, 1, 2],), {"reverse": True}) == [3, 2, 1]
    assert env.execute("operator", "add", (2, 3)) == 5
    assert env.execute("json", "dumps", ({"a": [1, 2]},), {"sort_keys": True}) == '{"a": [1, 2]}'


def test_execute_py_path_written_by_the_test(env, tmp_path):
    path = tmp_path / "adder.py"
    path.write_text("def add(a, b=0):\n    return a + b\n")
    assert env.execute(str(path), "add", (1,), {"b": 41}) == 42
    # a relative path is taken relative to the host's cwd
    rel = os.path.relpath(str(path))
    assert env.execute(rel, "add", (2, 3)) == 5


def test_results_come_back_by_value(env):
    result = env.execute(HELPERS, "echo", (b"\x00bytes", (1, 2.5), {3, 4}, None, 10 ** 30), {"k": [u"\u00e9"]})
    assert result == {"args": (b"\x00bytes", (1, 2.5), {3, 4}, None, 10 ** 30), "kwargs": {"k": [u"\u00e9"]}}


def test_dotted_function_path_on_a_module_level_object(env):
    assert env.execute(HELPERS, "calc.scale", (2,), {"offset": 1}) == 21
    assert env.execute("os", "path.join", ("a", "b")) == os.path.join("a", "b")
    assert env.execute("sys", "argv.copy") == env.execute(HELPERS, "argv_now")


def test_submodule_reached_through_attributes(env):
    # wetlite_test_pkg does not import .sub itself: the worker imports it on the way
    assert env.execute("wetlite_test_pkg", "sub.g", (4,)) == 40
    assert env.execute("xml", "dom.minidom.parseString.__name__.upper") == "PARSESTRING"


def test_missing_attribute_and_module_errors(env):
    with pytest.raises(AttributeError):
        env.execute("os", "no_such_function_here")
    with pytest.raises(AttributeError):
        env.execute("wetlite_test_pkg", "nope.g")
    with pytest.raises(ModuleNotFoundError):
        env.execute("wetlite_no_such_module_xyz", "f")
    with pytest.raises(ImportError):
        env.execute(os.path.join(DATA, "does_not_exist.py"), "f")
    assert env.execute("operator", "neg", (1,)) == -1


def test_submit_many_calls_in_flight(env):
    futures = [env.submit("operator", "mul", (i, 3)) for i in range(300)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert [f.result(timeout=30) for f in futures] == [3 * i for i in range(300)]


def test_submit_and_execute_from_several_threads(env):
    futures = [env.submit("time", "sleep", (0.01,)) for _ in range(20)]
    results = {}

    def sync(n):
        results[n] = [env.execute("operator", "add", (n, i)) for i in range(50)]
    threads = [threading.Thread(target=sync, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    more = [env.submit("operator", "neg", (i,)) for i in range(50)]
    for t in threads:
        t.join(30)
    assert [f.result(timeout=30) for f in futures] == [None] * 20
    assert [f.result(timeout=30) for f in more] == [-i for i in range(50)]
    assert results == {n: [n + i for i in range(50)] for n in range(4)}


def test_import_module_proxy(env):
    mod = env.import_module("wetlite_test_pkg")
    assert mod.f(1) == 2
    assert mod.sub.g(3) == 30
    assert "f" in dir(mod) and "NAME" in dir(mod)
    js = env.import_module("json")
    assert js.dumps([1, {"a": None}]) == '[1, {"a": null}]'
    assert js.dumps({"b": 1, "a": 2}, sort_keys=True) == '{"a": 2, "b": 1}'
    assert {"dumps", "loads", "JSONDecoder"} <= set(dir(js))
    helpers = env.import_module(HELPERS)
    assert helpers.calc.scale(3) == 30
    assert "echo" in dir(helpers)
    with pytest.raises(AttributeError):
        helpers.x = 1


def test_import_module_missing_raises_module_not_found_with_remote_traceback(env):
    with pytest.raises(ModuleNotFoundError) as info:
        env.import_module("wetlite_no_such_module_abc")
    cause = info.value.__cause__
    assert cause is not None
    assert "Traceback" in str(cause) and "wetlite_no_such_module_abc" in str(cause)


def test_run_script_sees_argv_and_run_name(env, tmp_path):
    out = tmp_path / "record.json"
    assert env.run_script(SCRIPT, [str(out), "two", 3]) is None
    record = json.loads(out.read_text())
    assert record == {"argv": [SCRIPT, str(out), "two", "3"], "name": "__main__", "main_block": True}
    env.run_script(SCRIPT, [str(out)], run_name="not_main")
    record = json.loads(out.read_text())
    assert record["name"] == "not_main" and record["main_block"] is False
    # sys.argv is restored after the script
    assert env.execute(HELPERS, "argv_now") != record["argv"]


def test_run_script_errors_cross(env, tmp_path):
    path = tmp_path / "fails.py"
    path.write_text("raise ValueError('from the script')\n")
    with pytest.raises(ValueError, match="from the script"):
        env.run_script(str(path))
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(4)\n")
    with pytest.raises(wetlite.RemoteError) as info:
        env.run_script(str(exits))
    assert info.value.type_name == "builtins.SystemExit"
    assert env.execute("operator", "add", (1, 1)) == 2


def _set_mtime(path, seconds, nanos):
    ns = seconds * 10 ** 9 + nanos
    os.utime(str(path), ns=(ns, ns))


def test_edited_py_file_is_reimported(env, tmp_path):
    path = tmp_path / "editme.py"
    t = int(time.time()) - 100
    path.write_text("def f():\n    return 1\n")
    _set_mtime(path, t, 0)
    assert env.execute(str(path), "f") == 1
    path.write_text("def f():\n    return 'two'\n")
    _set_mtime(path, t + 1, 0)
    assert env.execute(str(path), "f") == "two"
    # unchanged: not re-imported (module state survives)
    path.write_text("import itertools\n_n = itertools.count()\ndef f():\n    return next(_n)\n")
    _set_mtime(path, t + 2, 0)
    assert [env.execute(str(path), "f") for _ in range(3)] == [0, 1, 2]


def test_edited_py_file_same_size_same_second_is_reimported(fresh, monkeypatch, tmp_path):
    # With bytecode caching on (the default outside this test run), the
    # re-import must not take a stale __pycache__ entry: a .pyc is validated
    # by the whole-second mtime and the size only.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    e = fresh().launch()
    path = tmp_path / "samesize.py"
    t = int(time.time()) - 100
    path.write_text("def f():\n    return 1\n")
    _set_mtime(path, t, 100000000)
    assert e.execute(str(path), "f") == 1
    path.write_text("def f():\n    return 2\n")
    _set_mtime(path, t, 200000000)
    assert e.execute(str(path), "f") == 2


def test_worker_sys_path_does_not_grow_per_call(env, tmp_path):
    path = tmp_path / "grow.py"
    path.write_text("def f(x):\n    return x\n")
    env.execute(str(path), "f", (0,))
    before = env.execute(HELPERS, "sys_path_length")
    t = int(time.time()) - 100
    for i in range(10):
        path.write_text("def f(x):\n    return x + %d\n" % i)
        _set_mtime(path, t + i, 0)
        assert env.execute(str(path), "f", (1,)) == 1 + i
        env.execute(HELPERS, "echo")
    assert env.execute(HELPERS, "sys_path_length") == before


def test_worker_paths_and_environment(env, mgr):
    info = env.execute(HELPERS, "info")
    assert info["pid"] == worker_pid(env)
    # the host's cwd (the repo, with its own wetlite.py) and script dir stay off sys.path
    assert info["cwd"] == os.getcwd()
    assert "" not in info["path"] and os.getcwd() not in info["path"]
    assert REPO not in info["path"]
    host_script_dir = os.path.dirname(os.path.abspath(sys.argv[0]))
    assert host_script_dir not in info["path"]
    # the runtime dir on PYTHONPATH is gone from the environment of processes the worker starts
    assert "PYTHONPATH" not in info["environ"]
    assert wetlite._WORKER_ENV not in info["environ"]
    assert env.execute(HELPERS, "child_pythonpath") == "None"
    assert info["environ"].get("VIRTUAL_ENV") == env.path


def test_worker_runs_the_runtime_copy_not_a_wetlite_py_in_the_cwd(fresh, mgr, monkeypatch, tmp_path):
    # `python -m wetlite` puts the cwd before PYTHONPATH on sys.path: a
    # wetlite.py in the host's cwd (a user's checkout, an old copy) must not
    # be what the worker runs.
    (tmp_path / "wetlite.py").write_text("raise SystemExit('the decoy wetlite.py in the cwd was imported')\n")
    monkeypatch.chdir(tmp_path)
    e = fresh().launch(timeout=20)
    info = e.execute(HELPERS, "info")
    runtime = os.path.join(mgr.root, "state", "runtime")
    assert os.path.realpath(info["wetlite_file"]).startswith(os.path.realpath(runtime) + os.sep)
    assert info["cwd"] == str(tmp_path)
    assert str(tmp_path) not in info["path"]


def test_runtime_dir_holds_the_hosts_source_named_by_hash(env, mgr):
    import hashlib
    directory = wetlite._runtime_dir(mgr.root)
    with open(wetlite.__file__, "rb") as f:
        source = f.read()
    assert os.path.basename(directory) == hashlib.sha256(source).hexdigest()[:16]
    with open(os.path.join(directory, "wetlite.py"), "rb") as f:
        assert f.read() == source
    assert set(os.listdir(directory)) <= {"wetlite.py", "_wetlite_worker.py", "__pycache__"}


def test_worker_never_reads_stdin(env):
    data, took = env.execute(HELPERS, "read_stdin", timeout=HANG)     # a blocked read would time out
    assert data == "eof"
    assert env.execute(HELPERS, "info")["stdin_name"] == os.devnull
    assert env.execute("sys", "stdin.read") == ""


# --- every local interpreter --------------------------------------------------------

LOCAL_PYTHONS = dict(local_interpreters())


@pytest.mark.parametrize("version", ["3.%d" % minor for minor in range(6, 14)])
def test_every_local_interpreter(version_envs, host_errors_module, version):
    if version not in LOCAL_PYTHONS:
        pytest.skip("no local Python %s here (pyenv)" % version)
    e = version_envs(version, LOCAL_PYTHONS[version])
    e.launch(timeout=30)
    worker = e._worker
    assert "%d.%d" % tuple(e.execute("sys", "version_info.__getitem__", (slice(0, 2),))) == version
    assert worker.worker_python.startswith(version + ".")
    worker_highest = 5 if tuple(int(x) for x in version.split(".")) >= (3, 8) else 4
    assert worker.protocol == min(pickle.HIGHEST_PROTOCOL, worker_highest)
    # results and exceptions cross
    assert e.execute(HELPERS, "echo", (b"raw", {1, 2}, 1.5), {"k": (None, True)}) == \
        {"args": (b"raw", {1, 2}, 1.5), "kwargs": {"k": (None, True)}}
    assert e.execute(HELPERS, "calc.scale", (4,), {"offset": 2}) == 42
    with pytest.raises(ValueError, match="cross me") as info:
        e.execute(HELPERS, "raise_value_error", ("cross me",))
    assert isinstance(info.value.__cause__, wetlite._RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)
    with pytest.raises(FileNotFoundError) as info:
        e.execute(HELPERS, "raise_file_not_found", ("/nonexistent/wetlite-x",))
    assert info.value.errno == 2
    with pytest.raises(wetlite.RemoteError) as info:
        e.execute(HELPERS, "raise_local")
    assert info.value.type_name == "worker_helpers.LocalError"
    e.execute(HELPERS, "add_sys_path", (DATA,))
    with pytest.raises(host_errors_module.CustomError) as info:
        e.execute("wetlite_test_errors", "raise_custom", ("custom", 5))
    assert info.value.code == 5
    assert e.import_module("wetlite_test_pkg").sub.g(2) == 20
    assert e.submit("operator", "add", (1, 2)).result(timeout=HANG) == 3
    e.exit()
    assert wait_gone(worker.proc.pid, HANG)


# --- launching from unusual hosts -------------------------------------------------

# A subprocess host imports the module under test the way conftest does
# (WETLITE_TEST_MODULE, default: the repo's wetlite.py).
IMPORT_UNDER_TEST = ("import importlib, os, sys; sys.path.insert(0, %r); "
                     "wetlite = importlib.import_module(os.environ.get('WETLITE_TEST_MODULE', 'wetlite'))" % REPO)


def _run_host(code, tmp_path, cwd=None, timeout=60):
    script = tmp_path / "host_script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=str(cwd or tmp_path), env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc.stdout.decode()


def test_launch_from_a_vendored_copy(host_env, tmp_path):
    vendor = tmp_path / "pkg" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    (vendor / "sibling_leak.py").write_text("X = 1\n")
    with open(os.path.join(REPO, "wetlite.py"), encoding="utf-8") as f:
        source = f.read()
    # the mark goes before the entry point: the worker runs this file as __main__
    source = source.replace("\n__version__ = ", "\nVENDORED_MARK = 'pkg-vendor'\n__version__ = ", 1)
    (vendor / "wetlite.py").write_text(source, encoding="utf-8")
    (tmp_path / "wetlite_decoy.py").write_text("X = 1\n")      # in the host's script dir and cwd
    out = _run_host("""
        import json, os, sys
        from pkg._vendor import wetlite
        assert wetlite.__name__ == "pkg._vendor.wetlite"
        mgr = wetlite.EnvironmentManager(root=%(root)r, tool="venv")
        env = mgr.load("vendored", %(path)r)
        env.launch(timeout=30)
        report = {
            "mark": env.execute("wetlite", "VENDORED_MARK.upper"),
            "sum": env.execute("operator", "add", (2, 3)),
            "path": env.execute("sys", "path.copy"),
        }
        for name in ("wetlite_decoy", "sibling_leak", "pkg"):
            try:
                env.execute(name, "__name__.upper")
                report[name] = "imported"
            except ModuleNotFoundError:
                report[name] = "missing"
        env.exit()
        print(json.dumps(report))
    """ % {"root": str(tmp_path / "vroot"), "path": host_env.path}, tmp_path)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["mark"] == "PKG-VENDOR"       # the worker runs the host's own (vendored) source
    assert report["sum"] == 5
    assert str(tmp_path) not in report["path"]
    assert report["wetlite_decoy"] == report["sibling_leak"] == report["pkg"] == "missing"


def test_launch_from_wetlite_in_a_zip(host_env, tmp_path):
    archive = tmp_path / "bundle.zip"
    with open(os.path.join(REPO, "wetlite.py"), encoding="utf-8") as f:
        source = f.read()
    with zipfile.ZipFile(str(archive), "w") as zf:
        zf.writestr("wetlite.py", source.replace("\n__version__ = ", "\nZIP_MARK = 'zipped'\n__version__ = ", 1))
    out = _run_host("""
        import json, sys, zipimport
        sys.path.insert(0, %(zip)r)
        import wetlite
        assert isinstance(wetlite.__loader__, zipimport.zipimporter), wetlite.__loader__
        mgr = wetlite.EnvironmentManager(root=%(root)r, tool="venv")
        env = mgr.load("zipped", %(path)r)
        with env:
            print(json.dumps([env.execute("wetlite", "ZIP_MARK.upper"), env.execute("operator", "mul", (6, 7))]))
    """ % {"zip": str(archive), "root": str(tmp_path / "zroot"), "path": host_env.path}, tmp_path)
    assert json.loads(out.strip().splitlines()[-1]) == ["ZIPPED", 42]


# --- faults ----------------------------------------------------------------------------

def test_sigkill_mid_call_from_another_thread(fresh, tmp_path):
    e = fresh().launch()
    pid = worker_pid(e)
    running = str(tmp_path / "running")
    killed = {}

    def killer():
        wait_for(lambda: os.path.exists(running), HANG)
        killed["at"] = time.monotonic()
        os.kill(pid, signal.SIGKILL)
    threading.Thread(target=killer).start()
    with pytest.raises(wetlite.WorkerDied) as info:
        e.execute(HELPERS, "mark_and_sleep", (running, 60))
    assert time.monotonic() - killed["at"] < HANG          # noticed, long before the call would end
    assert info.value.signal == 9
    assert "signal 9" in str(info.value)
    # the next call restarts the worker
    assert e.execute("os", "getpid") != pid


def test_sigkill_from_inside_the_call(fresh):
    e = fresh().launch()
    start = time.monotonic()
    with pytest.raises(wetlite.WorkerDied) as info:
        e.execute(HELPERS, "kill_self", (signal.SIGKILL,))
    assert time.monotonic() - start < HANG
    assert info.value.signal == 9
    with pytest.raises(wetlite.WorkerDied) as info:
        e.execute(HELPERS, "kill_self", (signal.SIGTERM,))
    assert info.value.signal == signal.SIGTERM


def test_sigkill_mid_call_with_a_child_process(fresh, tmp_path):
    # The worker's child (`sleep 60`) keeps the stdout/stderr pipes open: WorkerDied must
    # still come at once, not when the pipes close, and the child must not be left behind.
    e = fresh().launch()
    pid = worker_pid(e)
    pid_file = str(tmp_path / "child.pid")
    killed = {}

    def killer():
        wait_for(lambda: os.path.exists(pid_file) and os.path.getsize(pid_file) > 0, HANG)
        killed["at"] = time.monotonic()
        os.kill(pid, signal.SIGKILL)
    threading.Thread(target=killer).start()
    try:
        with pytest.raises(wetlite.WorkerDied) as info:
            e.execute(HELPERS, "spawn_sleeper", (pid_file, 30))
        took = time.monotonic() - killed["at"]
        child = int(open(pid_file).read())
        assert info.value.signal == 9
        assert took < HANG, "WorkerDied came %.3f s after the kill" % took
        assert wait_gone(child, HANG), "the killed worker's child `sleep 60` was left running"
    finally:
        if os.path.exists(pid_file) and os.path.getsize(pid_file):
            reap(int(open(pid_file).read()))


def test_os_exit_inside_a_call(fresh):
    e = fresh().launch()
    start = time.monotonic()
    with pytest.raises(wetlite.WorkerDied) as info:
        e.execute(HELPERS, "exit_now", (7, "last words from the worker"))
    assert time.monotonic() - start < HANG
    assert info.value.exitcode == 7
    assert info.value.signal is None
    assert "7" in str(info.value)
    assert "last words from the worker" in info.value.stderr_tail
    assert "last words from the worker" in str(info.value)
    assert isinstance(info.value, wetlite.ExecutorError)
    assert e.execute("operator", "add", (1, 2)) == 3


def test_hang_with_timeout_then_a_working_call(fresh):
    e = fresh().launch()
    pid = worker_pid(e)
    start = time.monotonic()
    with pytest.raises(wetlite.CallTimeout) as info:
        e.execute("time", "sleep", (30,), timeout=0.3)
    took = time.monotonic() - start
    assert 0.25 < took < HANG, took                     # not early, and long before the 30 s sleep ends
    assert isinstance(info.value, TimeoutError)
    assert e.execute("operator", "add", (2, 2)) == 4
    assert worker_pid(e) == pid            # interrupted, not killed
    # submit with a timeout fails its future
    future = e.submit("time", "sleep", (30,), timeout=0.3)
    with pytest.raises(wetlite.CallTimeout):
        future.result(timeout=HANG)
    assert e.execute("operator", "add", (3, 3)) == 6


def test_call_ignoring_sigint_is_killed_after_the_grace_period(fresh, monkeypatch):
    monkeypatch.setattr(wetlite, "_INTERRUPT_GRACE", 0.4)
    e = fresh().launch()
    pid = worker_pid(e)
    start = time.monotonic()
    with pytest.raises(wetlite.CallTimeout) as info:
        e.execute(HELPERS, "ignore_sigint_and_sleep", (30,), timeout=0.3)
    took = time.monotonic() - start
    assert 0.6 < took < HANG, took                      # after timeout and grace, long before the sleep ends
    assert "killed" in str(info.value)
    assert wait_gone(pid, HANG)
    assert e.execute("os", "getpid") != pid        # restarted on demand


def test_timeout_of_a_queued_call_is_noticed_while_another_call_runs(fresh):
    e = fresh().launch()
    running = e.submit("time", "sleep", (60,))
    queued = e.submit("os", "getpid", timeout=0.2)
    with pytest.raises(wetlite.CallTimeout):
        queued.result(timeout=HANG)
    assert not running.done(), "the queued call's timeout waited for the running call"


def test_timeout_of_a_queued_call_does_not_kill_the_running_call(fresh, monkeypatch):
    monkeypatch.setattr(wetlite, "_INTERRUPT_GRACE", 0.3)
    e = fresh().launch()
    pid = worker_pid(e)
    first = e.submit("time", "sleep", (0.05,))
    running = e.submit("time", "sleep", (1.5,))
    queued = e.submit("os", "getpid", timeout=0.2)
    assert first.result(timeout=HANG) is None
    with pytest.raises(wetlite.CallTimeout):
        queued.result(timeout=HANG)
    # the running call had no timeout: it must finish, on the same worker
    assert running.result(timeout=HANG) is None
    assert worker_pid(e) == pid


def test_synchronous_timeout_of_a_queued_call_does_not_wait_for_the_running_call(fresh):
    """execute(timeout=) from a second thread, queued behind a call that runs for long: its timeout
    fires while that call still runs (the caller does not wait for the worker to be free)."""
    e = fresh().launch()
    finished = threading.Event()

    def long_call():
        try:
            e.execute("time", "sleep", (10,))
            finished.set()
        except wetlite.WetliteError:
            pass                                # stopped by e.exit() below
    runner = threading.Thread(target=long_call, daemon=True)
    runner.start()
    assert wait_for(lambda: e._worker._order, 10), "the long call was never sent"
    with pytest.raises(wetlite.CallTimeout, match="did not start within its timeout"):
        e.execute("os", "getpid", timeout=0.3)
    assert not finished.is_set(), "the timed-out call waited for the running one to finish"
    e.exit()
    runner.join(10)


def test_cancelled_queued_call_never_runs(fresh, tmp_path):
    e = fresh().launch()
    marker = tmp_path / "ran.txt"
    running = e.submit("time", "sleep", (0.6,), timeout=5)
    queued = e.submit(HELPERS, "append_to", (str(marker), "ran"), timeout=0.2)
    with pytest.raises(wetlite.CallTimeout):
        queued.result(timeout=HANG)
    assert running.result(timeout=HANG) is None
    assert e.execute("operator", "add", (1, 1)) == 2
    assert not marker.exists()


def test_all_pending_futures_fail_when_the_worker_dies(fresh):
    e = fresh().launch()
    first = e.submit("time", "sleep", (0.2,))
    fatal = e.submit(HELPERS, "exit_now", (3,))
    after = [e.submit("operator", "add", (i, i)) for i in range(5)]
    assert first.result(timeout=HANG) is None
    for f in [fatal] + after:
        with pytest.raises(wetlite.WorkerDied) as info:
            f.result(timeout=HANG)
        assert info.value.exitcode == 3
    assert e.execute("operator", "add", (1, 1)) == 2


def test_sync_call_waiting_behind_futures_fails_when_the_worker_dies(fresh):
    e = fresh().launch()
    fatal = e.submit(HELPERS, "exit_now", (9,))
    start = time.monotonic()
    with pytest.raises(wetlite.WorkerDied):
        e.execute("time", "sleep", (0.1,))
    assert time.monotonic() - start < HANG
    with pytest.raises(wetlite.WorkerDied):
        fatal.result(timeout=HANG)


def test_system_exit_and_keyboard_interrupt_inside_a_call(env):
    pid = worker_pid(env)
    start = time.monotonic()
    with pytest.raises(wetlite.RemoteError) as info:
        env.execute(HELPERS, "raise_system_exit", (3,))
    assert info.value.type_name == "builtins.SystemExit"
    assert "3" in str(info.value)
    with pytest.raises(wetlite.RemoteError) as info:
        env.execute(HELPERS, "raise_keyboard_interrupt")
    assert info.value.type_name == "builtins.KeyboardInterrupt"
    assert "raise_keyboard_interrupt" in info.value.remote_traceback
    with pytest.raises(wetlite.RemoteError):
        env.execute("sys", "exit")
    assert time.monotonic() - start < HANG
    assert env.execute("operator", "add", (1, 2)) == 3
    assert worker_pid(env) == pid


def test_worker_killed_while_idle_restarts_on_the_next_call(fresh):
    e = fresh().launch()
    pid = worker_pid(e)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, HANG)
    # The leader shows Z before its other threads are gone: wait until the host can see the
    # connection's end too.
    assert wait_for(lambda: _at_eof(e._worker.conn), HANG)
    # nothing was running: the next call should start a new worker, not fail
    assert e.execute("os", "getpid") != pid


def test_host_killed_worker_and_its_child_exit(host_env, tmp_path):
    code = textwrap.dedent("""
        import sys, time
        %(import_under_test)s
        mgr = wetlite.EnvironmentManager(root=%(root)r, tool="venv")
        env = mgr.load("orphan", %(path)r)
        env.launch(timeout=30)
        child = env.execute(%(helpers)r, "spawn_sleeper")
        print(env._worker.proc.pid, child, flush=True)
        time.sleep(60)
    """ % {"import_under_test": IMPORT_UNDER_TEST, "root": str(tmp_path / "root"), "path": host_env.path,
           "helpers": HELPERS})
    script = tmp_path / "host.py"
    script.write_text(code)
    host = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=str(tmp_path))
    pids = []
    try:
        line = host.stdout.readline().decode()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        worker, child = pids
        assert alive(worker) and alive(child)
        host.kill()
        host.wait(5)
        assert wait_gone(worker, HANG), "the worker outlived its host"
        assert wait_gone(child, HANG), "the worker's child outlived the host"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(5)
        for pid in pids:
            reap(pid)


def test_workers_still_running_at_interpreter_exit_are_stopped(host_env, tmp_path):
    out = _run_host("""
        import atexit, sys
        state = {}

        def report():       # registered first, so it runs after wetlite's own atexit handler
            print("status", state["proc"].poll(), flush=True)
        atexit.register(report)
        %(import_under_test)s
        env = wetlite.EnvironmentManager(root=%(root)r, tool="venv").load("left", %(path)r)
        env.launch(timeout=30)
        state["proc"] = env._worker.proc
        print("pid", env._worker.proc.pid, env.execute("operator", "add", (1, 2)), flush=True)
    """ % {"import_under_test": IMPORT_UNDER_TEST, "root": str(tmp_path / "root"), "path": host_env.path},
        tmp_path)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    pid, three = lines["pid"].split()
    assert three == "3"
    assert lines["status"] == "0"           # asked to exit, and it did (not killed, not orphaned)
    assert wait_gone(int(pid), HANG)


# --- launch failures and protocol ------------------------------------------------------

FAKE_WORKER = """
import os, pickle
from multiprocessing.connection import Client
family, key, lifeline, host, address = os.environ["WETLITE_WORKER"].split("|", 4)
conn = Client(address, family=family, authkey=bytes.fromhex(key))
conn.send_bytes(pickle.dumps(("hello", 99, "9.9.9", "3.99.1", 5, os.getpid()), 2))
conn.recv_bytes()
"""


def test_protocol_mismatch_raises_protocol_error(fresh, monkeypatch):
    e = fresh()
    monkeypatch.setattr(e, "_worker_argv", lambda: [e.python, "-c", FAKE_WORKER])
    with pytest.raises(wetlite.ProtocolError) as info:
        e.launch(timeout=10)
    text = str(info.value)
    assert "99" in text and "9.9.9" in text and "3.99.1" in text
    assert wetlite.__version__ in text and str(wetlite.PROTOCOL_VERSION) in text


def test_launch_of_a_worker_that_never_connects_times_out(fresh, monkeypatch):
    e = fresh()
    monkeypatch.setattr(e, "_worker_argv", lambda: [e.python, "-c", "import time; time.sleep(30)"])
    start = time.monotonic()
    with pytest.raises(wetlite.WorkerDied) as info:
        e.launch(timeout=0.5)
    assert time.monotonic() - start < HANG              # did not wait for the 30 s sleep
    assert "0.5" in str(info.value)


def test_launch_of_a_worker_that_dies_reports_exit_code_and_stderr(fresh, monkeypatch):
    e = fresh()
    monkeypatch.setattr(e, "_worker_argv", lambda: [
        e.python, "-c", "import sys; sys.stderr.write('cannot start: broken install\\n'); sys.exit(5)"])
    start = time.monotonic()
    with pytest.raises(wetlite.WorkerDied) as info:
        e.launch(timeout=3 * HANG)
    assert time.monotonic() - start < HANG              # noticed the death, not the launch timeout
    assert info.value.exitcode == 5
    assert "broken install" in info.value.stderr_tail
    assert "5" in str(info.value)


# A worker that gets through the authentication and then misbehaves; the first
# argument is where it writes its pid, the second what it does next.
SILENT_WORKER = """
import os, pickle, sys, time
from multiprocessing.connection import Client
family, key, lifeline, host, address = os.environ["WETLITE_WORKER"].split("|", 4)
if family == "AF_INET":
    address = (address.rsplit(":", 1)[0], int(address.rsplit(":", 1)[1]))
conn = Client(address, family=family, authkey=bytes.fromhex(key))
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
if sys.argv[2] == "silent":
    time.sleep(120)
elif sys.argv[2] == "not-a-hello":
    conn.send_bytes(pickle.dumps(("good day", 1), 2))
    time.sleep(120)
conn.close()
"""


def _misbehaving_worker(e, tmp_path, monkeypatch, what):
    """Make ``e`` start SILENT_WORKER doing ``what``; return the file that will hold its pid."""
    pid_file = str(tmp_path / ("%s.pid" % what))
    monkeypatch.setattr(e, "_worker_argv", lambda: [e.python, "-c", SILENT_WORKER, pid_file, what])
    return pid_file


def _pid_in(pid_file):
    with open(pid_file) as f:
        return int(f.read())


def test_launch_of_a_worker_that_connects_but_never_says_hello_times_out(fresh, tmp_path, monkeypatch):
    e = fresh()
    pid_file = _misbehaving_worker(e, tmp_path, monkeypatch, "silent")
    start = time.monotonic()
    with pytest.raises(wetlite.WorkerDied) as info:
        e.launch(timeout=2)
    assert time.monotonic() - start < HANG              # did not wait for the worker's 120 s sleep
    assert "did not say hello within 2" in str(info.value) and repr(e.name) in str(info.value)
    pid = _pid_in(pid_file)                             # it did connect: it wrote this after the handshake
    try:
        assert wait_gone(pid, HANG), "the silent worker was left running"
    finally:
        reap(pid)
    monkeypatch.undo()
    assert e.execute("operator", "add", (2, 2)) == 4    # the next call starts a real worker


def test_launch_of_a_worker_that_hangs_up_before_its_hello(fresh, tmp_path, monkeypatch):
    e = fresh()
    pid_file = _misbehaving_worker(e, tmp_path, monkeypatch, "hang-up")
    with pytest.raises(wetlite.WorkerDied) as info:
        e.launch(timeout=HANG)
    assert "closed the connection before saying hello" in str(info.value)
    assert os.path.exists(pid_file)                   # it did connect first
    monkeypatch.undo()
    assert e.execute("operator", "add", (2, 3)) == 5


def test_launch_of_a_worker_that_sends_something_else_than_a_hello(fresh, tmp_path, monkeypatch):
    e = fresh()
    pid_file = _misbehaving_worker(e, tmp_path, monkeypatch, "not-a-hello")
    with pytest.raises(wetlite.ProtocolError) as info:
        e.launch(timeout=HANG)
    assert "instead of a hello" in str(info.value) and "good day" in str(info.value)
    pid = _pid_in(pid_file)
    try:
        assert wait_gone(pid, HANG), "the worker that sent no hello was left running"
    finally:
        reap(pid)


def _serve_manually(python, runtime_dir, listener_key, worker_key, tmp_path):
    """Start `python -m wetlite serve` against our own Listener; return (listener, proc)."""
    from multiprocessing.connection import Listener
    address = os.path.join(str(tmp_path), "manual.sock")
    listener = Listener(address, "AF_UNIX", authkey=listener_key)
    environ = dict(os.environ)
    environ["PYTHONPATH"] = runtime_dir
    environ[wetlite._WORKER_ENV] = "|".join(["AF_UNIX", worker_key.hex(), "", str(os.getpid()), address])
    proc = subprocess.Popen([python, "-m", "wetlite", "serve"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ, cwd=str(tmp_path))
    return listener, proc


def _accept(listener, timeout):
    box = {}

    def run():
        try:
            box["conn"] = listener.accept()
        except BaseException as exc:
            box["error"] = exc
    t = threading.Thread(target=run)
    t.daemon = True
    t.start()
    t.join(timeout)
    return box


def test_manual_serve_speaks_the_documented_protocol(host_env, mgr, tmp_path):
    key = os.urandom(32)
    listener, proc = _serve_manually(host_env.python, wetlite._runtime_dir(mgr.root), key, key, tmp_path)
    try:
        box = _accept(listener, 20)
        conn = box["conn"]
        hello = pickle.loads(conn.recv_bytes())
        assert hello[:4] == ("hello", wetlite.PROTOCOL_VERSION, wetlite.__version__,
                             "%d.%d.%d" % sys.version_info[:3])
        assert hello[4] == pickle.HIGHEST_PROTOCOL and hello[5] == proc.pid
        conn.send_bytes(pickle.dumps(("hello", 2), 2))
        conn.send_bytes(pickle.dumps(("call", 1, "operator", "add", pickle.dumps(((2, 3), {}), 2)), 2))
        assert pickle.loads(conn.recv_bytes()) == ("ok", 1, pickle.dumps(5, 2))
        conn.send_bytes(pickle.dumps(("describe", 2, "json", None), 2))
        kind, call_id, info = pickle.loads(conn.recv_bytes())
        assert (kind, call_id) == ("ok", 2)
        info = pickle.loads(info)
        assert "dumps" in info["names"] and "dumps" in info["methods"] and "__version__" in info["data"]
        conn.send_bytes(pickle.dumps(("get", 5, "json", "__version__"), 2))
        kind, call_id, version = pickle.loads(conn.recv_bytes())
        assert (kind, call_id) == ("ok", 5) and pickle.loads(version) == json.__version__
        conn.send_bytes(pickle.dumps(("call", 3, "wetlite_nope_mod", "f", pickle.dumps(((), {}), 2)), 2))
        kind, call_id, info = pickle.loads(conn.recv_bytes())
        assert (kind, call_id) == ("err", 3)
        assert info["type"] == "builtins.ModuleNotFoundError" and "wetlite_nope_mod" in info["traceback"]
        conn.send_bytes(pickle.dumps(("bogus", 4), 2))
        kind, call_id, info = pickle.loads(conn.recv_bytes())
        assert (kind, call_id) == ("err", 4) and "ProtocolError" in info["type"]
        conn.send_bytes(pickle.dumps(("exit",), 2))
        assert proc.wait(10) == 0
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_manual_serve_is_refused_by_a_listener_with_another_key(host_env, mgr, tmp_path):
    from multiprocessing import AuthenticationError
    listener, proc = _serve_manually(host_env.python, wetlite._runtime_dir(mgr.root), os.urandom(32),
                                     os.urandom(32), tmp_path)
    try:
        box = _accept(listener, 20)
        assert isinstance(box.get("error"), AuthenticationError), box
        assert proc.wait(10) != 0
        assert b"refused this worker's key" in proc.stderr.read()
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_manual_serve_refuses_a_host_that_answers_with_another_key(host_env, mgr, tmp_path):
    """The handshake goes both ways: a listener that knows the worker's key passes the worker's answer,
    but a host that cannot answer the worker's own challenge is refused before any hello."""
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import answer_challenge, deliver_challenge
    key = os.urandom(32)
    listener, proc = _serve_manually(host_env.python, wetlite._runtime_dir(mgr.root), None, key, tmp_path)
    box = {}

    def impostor():
        try:
            conn = listener.accept()
            deliver_challenge(conn, key)                # the worker proves it has the key...
            box["passed"] = True
            answer_challenge(conn, b"not the key" * 3)   # ...the host does not
            box["hello"] = conn.recv_bytes()
        except BaseException as exc:
            box["error"] = exc
    thread = threading.Thread(target=impostor, daemon=True)
    try:
        thread.start()
        assert proc.wait(30) != 0
        thread.join(10)
        assert box.get("passed") and isinstance(box.get("error"), AuthenticationError), box
        assert "hello" not in box
        assert b"the host answered the challenge with the wrong key" in proc.stderr.read()
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_manual_serve_without_the_variable_is_refused(host_env, mgr):
    environ = dict(os.environ)
    environ["PYTHONPATH"] = wetlite._runtime_dir(mgr.root)
    environ.pop(wetlite._WORKER_ENV, None)
    proc = subprocess.run([host_env.python, "-m", "wetlite", "serve"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ, timeout=30)
    assert proc.returncode == 2
    assert b"not for direct use" in proc.stderr


# --- results and errors -------------------------------------------------------------------

def test_unpicklable_argument_fails_before_sending(env):
    pid = worker_pid(env)
    sent_before = next(env._worker._ids)
    with pytest.raises(wetlite.ExecutorError, match="cannot be pickled.*nothing was sent"):
        env.execute(HELPERS, "echo", (lambda: 1,))
    with pytest.raises(wetlite.ExecutorError, match="nothing was sent"):
        env.execute(HELPERS, "echo", (), {"lock": threading.Lock()})
    with pytest.raises(wetlite.ExecutorError, match="nothing was sent"):
        env.submit(HELPERS, "echo", (threading.Lock(),))
    assert next(env._worker._ids) == sent_before + 1            # no call id was used up
    assert env.execute("operator", "add", (1, 1)) == 2
    assert worker_pid(env) == pid


class HostOnly(object):
    pass


def test_argument_the_worker_cannot_unpickle(env):
    with pytest.raises(wetlite.ExecutorError, match="could not be unpickled in the worker"):
        env.execute(HELPERS, "echo", (HostOnly(),))
    assert env.execute("operator", "add", (1, 1)) == 2


def test_unpicklable_result(env):
    pid = worker_pid(env)
    with pytest.raises(wetlite.ExecutorError) as info:
        env.execute(HELPERS, "make_lock")
    assert not isinstance(info.value, wetlite.RemoteError)
    text = str(info.value)
    assert "could not be pickled" in text and "lock" in text
    with pytest.raises(wetlite.ExecutorError, match="could not be pickled"):
        env.submit(HELPERS, "make_lock").result(timeout=HANG)
    assert env.execute("operator", "add", (1, 1)) == 2
    assert worker_pid(env) == pid


def test_result_class_only_in_the_worker(env):
    with pytest.raises(wetlite.ExecutorError, match="could not be unpickled in the host"):
        env.execute(HELPERS, "make_worker_only", (1,))
    assert env.execute("operator", "add", (1, 1)) == 2


def test_builtin_exception_is_reraised_with_remote_traceback(env):
    with pytest.raises(ValueError) as info:
        env.execute(HELPERS, "raise_value_error", ("bad value",))
    assert type(info.value) is ValueError
    assert str(info.value) == "bad value"
    cause = info.value.__cause__
    assert isinstance(cause, wetlite._RemoteTraceback)
    assert "Traceback" in cause.text and "raise_value_error" in cause.text and "bad value" in cause.text
    future = env.submit(HELPERS, "raise_value_error", ("in a future",))
    with pytest.raises(ValueError, match="in a future"):
        future.result(timeout=HANG)


def test_custom_exception_from_a_module_importable_on_both_sides(env, host_errors_module):
    with pytest.raises(host_errors_module.CustomError) as info:
        env.execute("wetlite_test_errors", "raise_custom", ("custom failure",), {"code": 12})
    assert type(info.value) is host_errors_module.CustomError
    assert info.value.code == 12 and info.value.message == "custom failure"
    assert "raise_custom" in str(info.value.__cause__)


def test_custom_exception_that_cannot_be_unpickled_in_the_host(env, host_errors_module):
    with pytest.raises(wetlite.RemoteError) as info:
        env.execute("wetlite_test_errors", "raise_two_arg")
    assert info.value.type_name == "wetlite_test_errors.TwoArgError"
    assert "two args: left right" in str(info.value)
    assert "raise_two_arg" in info.value.remote_traceback
    assert isinstance(info.value.__cause__, wetlite._RemoteTraceback)


def test_custom_exception_that_cannot_be_pickled_in_the_worker(env):
    with pytest.raises(wetlite.RemoteError) as info:
        env.execute("wetlite_test_errors", "raise_locked")
    assert info.value.type_name == "wetlite_test_errors.LockedError"
    assert "locked away" in str(info.value) and "raise_locked" in info.value.remote_traceback
    assert env.execute("operator", "add", (1, 1)) == 2


def test_exception_class_from_a_path_module_is_a_remote_error(env):
    with pytest.raises(wetlite.RemoteError) as info:
        env.execute(HELPERS, "raise_local")
    assert info.value.type_name == "worker_helpers.LocalError"
    assert "only in the worker" in str(info.value)


def test_large_arguments_and_results(env):
    blob = os.urandom(1 << 20) * 16                 # 16 MiB
    start = time.monotonic()
    result = env.execute(HELPERS, "echo", (blob, bytearray(blob[:1000])))
    assert result["args"][0] == blob and result["args"][1] == bytearray(blob[:1000])
    assert time.monotonic() - start < HANG


# --- output --------------------------------------------------------------------------------------

def test_ten_megabytes_of_prints_reach_the_callback(fresh):
    lines = []
    e = fresh().launch(output=lines.append)
    count = 100000                              # 100 bytes a line: 10 MB
    start = time.monotonic()
    assert e.execute(HELPERS, "print_lines", (count, 99), timeout=60) == count
    assert wait_for(lambda: len(lines) >= count, HANG)
    assert len(lines) == count and lines[0] == "x" * 99 and lines[-1] == "x" * 99
    assert e.execute("operator", "add", (1, 1)) == 2


def test_prints_reach_the_logger_tagged_with_the_name(fresh, caplog):
    caplog.set_level(logging.INFO, logger="wetlite")
    e = fresh().launch()
    assert e.execute(HELPERS, "say", ("to stdout 123", "to stderr 456")) is True

    def messages():
        return [r.getMessage() for r in caplog.records if r.name == "wetlite"]
    assert wait_for(lambda: any("to stderr 456" in m for m in messages()) and
                    any("to stdout 123" in m for m in messages()), 5), messages()
    assert "[%s] to stdout 123" % e.name in messages()
    assert "[%s:stderr] to stderr 456" % e.name in messages()


def test_output_callback_gets_both_streams(fresh):
    lines = []
    e = fresh().launch(output=lines.append)
    e.execute(HELPERS, "say", ("out line", "err line"))
    assert wait_for(lambda: {"out line", "err line"} <= set(lines), 5), lines


# --- security -----------------------------------------------------------------------------------

def _spy_on_listener(monkeypatch, intruder_key=None):
    """Record the host's listener address and socket dir mode; optionally send an intruder first."""
    import multiprocessing.connection as mpc
    real = wetlite._listen
    seen = {}

    def listener(key, scaffolding):
        family, address, obj = real(key, scaffolding)
        seen["address"], seen["family"] = address, family
        if family == "AF_UNIX":
            seen["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode)
            seen["dir_uid"] = os.stat(os.path.dirname(address)).st_uid
        if intruder_key is not None:
            def intrude():
                try:
                    mpc.Client(address, family, authkey=intruder_key).close()
                    seen["intruder"] = "accepted"
                except BaseException as exc:
                    seen["intruder"] = exc
            t = threading.Thread(target=intrude)
            t.daemon = True
            t.start()
            seen["intruder_thread"] = t
        return family, address, obj
    monkeypatch.setattr(wetlite, "_listen", listener)
    return seen


def test_socket_dir_is_private_and_removed(fresh, monkeypatch):
    seen = _spy_on_listener(monkeypatch)
    e = fresh().launch()
    assert seen["family"] == "AF_UNIX"
    assert seen["dir_mode"] == 0o700
    assert seen["dir_uid"] == os.getuid()
    assert not os.path.exists(os.path.dirname(seen["address"]))     # removed once the worker connected
    assert e.execute("operator", "add", (1, 1)) == 2


def test_wrong_key_connection_to_the_host_is_refused(fresh, monkeypatch):
    from multiprocessing import AuthenticationError
    seen = _spy_on_listener(monkeypatch, intruder_key=b"not the key" * 3)
    e = fresh()
    try:
        e.launch(timeout=10)
        launched = None
    except wetlite.ExecutorError as exc:
        launched = exc
    seen["intruder_thread"].join(10)
    assert isinstance(seen.get("intruder"), AuthenticationError), seen.get("intruder")
    # the intruder is turned away, and the real worker still gets in
    assert launched is None, "a refused intruder made the launch fail: %s" % launched
    assert e.execute("operator", "add", (1, 1)) == 2


def test_the_tcp_fallback_listens_on_the_loopback_only_and_refuses_a_wrong_key(fresh, monkeypatch):
    """No directory takes a Unix socket: the host listens on 127.0.0.1 (never on every interface), a
    local intruder with the wrong key is turned away, and the worker connects over TCP and serves."""
    import socket
    from multiprocessing import AuthenticationError
    import tempfile
    real_bind = socket.socket.bind

    def bind(self, address):
        if self.family == socket.AF_UNIX:
            raise OSError("no Unix sockets in this test")
        return real_bind(self, address)
    monkeypatch.setattr(socket.socket, "bind", bind)
    seen = _spy_on_listener(monkeypatch, intruder_key=b"not the key" * 3)
    e = fresh()
    e.launch(timeout=30)
    seen["intruder_thread"].join(HANG)
    assert seen["family"] == "AF_INET"
    assert seen["address"][0] == "127.0.0.1"
    assert isinstance(seen.get("intruder"), AuthenticationError), seen.get("intruder")
    with open("/proc/%d/environ" % worker_pid(e), "rb") as f:
        raw = [v for v in f.read().split(b"\0") if v.startswith(b"WETLITE_WORKER=")][0]
    assert raw.startswith(b"WETLITE_WORKER=AF_INET|") and raw.endswith(b"|127.0.0.1:%d" % seen["address"][1])
    assert e.execute("operator", "add", (1, 2)) == 3
    assert e.execute("operator", "concat", ("x" * 100000, "y")) == "x" * 100000 + "y"      # many TCP segments
    # The socket dirs it tried on the way are gone.
    for parent in {tempfile.gettempdir(), os.environ.get("XDG_RUNTIME_DIR") or "/tmp", "/tmp"}:
        assert not [n for n in os.listdir(parent) if n.startswith("wetlite-sock-%d-" % os.getpid())], parent


def test_authkey_is_not_on_the_command_line(env):
    pid = worker_pid(env)
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        cmdline = f.read().split(b"\0")
    with open("/proc/%d/environ" % pid, "rb") as f:
        initial = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    # The key reaches the worker in its initial environment only ...
    raw = initial[wetlite._WORKER_ENV.encode()].decode()
    key_hex = raw.split("|")[1]
    assert len(bytes.fromhex(key_hex)) == 32
    assert not any(key_hex.encode() in arg for arg in cmdline)
    assert cmdline[0] == env.python.encode() and [a for a in cmdline if a][-1].endswith(b"_wetlite_worker.py")
    # ... which the worker pops at once: its code and its children never see it.
    assert wetlite._WORKER_ENV not in env.execute(HELPERS, "info")["environ"]
    # /proc/<pid>/environ (the initial environment, key included) is readable by the
    # same user and root only: mode 0400 and ptrace access checks.
    st = os.stat("/proc/%d/environ" % pid)
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == os.getuid()


def test_each_worker_gets_a_fresh_key(fresh):
    keys = set()
    for _ in range(2):
        e = fresh().launch()
        with open("/proc/%d/environ" % worker_pid(e), "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        keys.add(environ[wetlite._WORKER_ENV.encode()].split(b"|")[1])
    assert len(keys) == 2


# --- lifecycle -----------------------------------------------------------------------------------

def test_launch_twice_keeps_the_worker(fresh):
    e = fresh()
    assert e.launch() is e
    pid = worker_pid(e)
    e.launch()
    assert worker_pid(e) == pid


def test_exit_is_idempotent_and_the_process_is_gone(fresh):
    e = fresh().launch()
    worker = e._worker
    pid = worker.proc.pid
    e.exit()
    assert worker.proc.returncode == 0           # it left on its own when asked
    assert not alive(pid)
    e.exit()
    e.exit()
    assert e._worker is None
    with pytest.raises(wetlite.WorkerDied):
        worker.call(("call", "operator", "add"), ((1, 1), None), "late call", None)
    assert e.execute("operator", "add", (1, 1)) == 2   # a call after exit() starts a new worker


def test_exit_kills_a_busy_worker_after_the_grace_period_and_fails_pending_futures(fresh, monkeypatch):
    monkeypatch.setattr(wetlite, "_EXIT_GRACE", 0.3)
    e = fresh().launch()
    pid = worker_pid(e)
    e.execute(HELPERS, "spawn_sleeper")
    child = e.execute(HELPERS, "spawn_sleeper")
    futures = [e.submit("time", "sleep", (30,)) for _ in range(3)]
    start = time.monotonic()
    e.exit()
    assert time.monotonic() - start < HANG              # killed after the grace, not after the calls
    for f in futures:
        # the running call may come back interrupted (RemoteError KeyboardInterrupt); the rest die
        with pytest.raises(wetlite.ExecutorError):
            f.result(timeout=HANG)
    assert isinstance(futures[-1].exception(), wetlite.WorkerDied)
    assert not alive(pid)
    assert wait_gone(child, HANG)          # the whole tree is killed


def test_exit_kills_the_children_of_an_idle_worker(fresh):
    e = fresh().launch()
    pid = worker_pid(e)
    child = e.execute(HELPERS, "spawn_sleeper")
    try:
        e.exit()
        assert not alive(pid)
        assert wait_gone(child, HANG), "exit() left the worker's child `sleep 60` running"
    finally:
        reap(child)


def test_with_environment_launches_and_exits(fresh):
    e = fresh()
    with e as entered:
        assert entered is e
        worker = e._worker
        assert worker is not None and alive(worker.proc.pid)
        assert e.execute("operator", "add", (2, 2)) == 4
    assert e._worker is None
    assert not alive(worker.proc.pid)


def test_manager_exit_stops_its_workers(mgr, host_env):
    sub = wetlite.EnvironmentManager(root=mgr.root, tool="venv")
    a = sub.load("one", host_env.path).launch()
    b = sub.load("two", host_env.path).launch()
    pids = [worker_pid(a), worker_pid(b)]
    with sub:
        pass
    assert not any(alive(p) for p in pids)


# --- the main environment --------------------------------------------------------------------------

@pytest.fixture
def host_imports_restored():
    """The main environment runs calls in this process, where a .py path module puts its directory
    on sys.path: undo that (and forget the modules), so that later tests still see a host in which
    executor_data's modules do not import."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(DATA + os.sep):
            del sys.modules[name]
    state = wetlite._WorkerState
    for key in [k for k in state.path_modules if k.startswith(DATA + os.sep)]:
        del state.path_modules[key]
    for key in [k for k in state.resolved if k[0].startswith(DATA + os.sep)]:
        del state.resolved[key]


def test_main_environment_runs_in_process(mgr, tmp_path, host_imports_restored):
    main = mgr.main_environment
    assert main.launch() is main
    assert main.execute("os", "getpid") == os.getpid()
    assert main.execute("builtins", "sorted", ([3, 1, 2],), {"reverse": True}) == [3, 2, 1]
    assert main.execute(HELPERS, "calc.scale", (2,), {"offset": 1}) == 21
    futures = [main.submit("operator", "mul", (i, 2)) for i in range(20)]
    assert [f.result(timeout=HANG) for f in futures] == [2 * i for i in range(20)]
    assert main.submit("builtins", "sorted", ([1, 2],), {"reverse": True}).result(timeout=HANG) == [2, 1]
    js = main.import_module("json")
    assert js.dumps([1], indent=None) == "[1]"
    out = tmp_path / "main.json"
    main.run_script(SCRIPT, [str(out), 7])
    record = json.loads(out.read_text())
    assert record["argv"] == [SCRIPT, str(out), "7"] and record["name"] == "__main__"
    main.run_script(SCRIPT, [str(out)], run_name="lib")
    assert json.loads(out.read_text())["main_block"] is False
    with pytest.raises(ValueError, match="main error"):
        main.execute(HELPERS, "raise_value_error", ("main error",))
    with pytest.raises(wetlite.CallTimeout):
        main.execute("time", "sleep", (0.5,), timeout=0.1)
    main.exit()
    main.exit()


def test_main_environment_seed_aliases_run_in_process(mgr, tmp_path, host_imports_restored):
    # The camelCase aliases must reach _MainEnvironment's own methods, not
    # Environment's (which would look for a worker the main environment never has).
    main = mgr.main_environment
    assert main.importModule("json").dumps(2) == "2"
    out = tmp_path / "alias.json"
    main.runScript(SCRIPT, [str(out)])
    assert json.loads(out.read_text())["argv"] == [SCRIPT, str(out)]


# --- seed aliases ------------------------------------------------------------------------------------

def test_seed_aliases(env, tmp_path):
    assert env.importModule("operator").add(1, 2) == 3
    out = tmp_path / "alias.json"
    env.runScript(SCRIPT, [str(out)])
    assert json.loads(out.read_text())["argv"] == [SCRIPT, str(out)]
    assert wetlite.Environment.importModule is wetlite.Environment.import_module
    assert wetlite.Environment.runScript is wetlite.Environment.run_script
    assert wetlite.Environment.executeCommands is wetlite.Environment.execute_commands
    proc = env.executeCommands([["python", "-c", "print(6 * 7)"]])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "42" in out


def test_bad_call_arguments_are_spec_errors(env):
    with pytest.raises(wetlite.SpecError, match="'a.tif'") as info:
        env.execute("os.path", "basename", "a.tif")             # a string, not a tuple of arguments
    assert "(value,)" in str(info.value)
    with pytest.raises(wetlite.SpecError, match="kwargs"):
        env.execute("os.path", "join", ("a",), ["b"])
    with pytest.raises(wetlite.SpecError, match="function"):
        env.submit("os.path", None, ("a",))
    assert env.execute("os.path", "basename", ["/x/a.tif"]) == "a.tif"     # a list is fine


@pytest.mark.skipif(os.name == "nt", reason="the control lines use the POSIX lifeline pipe")
def test_an_interrupt_reaches_only_the_call_it_names(fresh, tmp_path):
    e = fresh().launch()
    worker = e._worker
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    running = e.submit(HELPERS, "mark_and_sleep", (first, 0.5))
    assert wait_for(lambda: os.path.exists(first), HANG)
    worker._interrupt(10 ** 6)                  # not the running call: nothing happens
    assert running.result(timeout=HANG) == "slept"
    slow = e.submit(HELPERS, "mark_and_sleep", (second, 60))
    assert wait_for(lambda: os.path.exists(second), HANG)
    with worker._lock:
        running_id = worker._order[0]
    worker._interrupt(running_id)               # the running call: interrupted at once
    with pytest.raises(wetlite.RemoteError, match="KeyboardInterrupt"):
        slow.result(timeout=HANG)               # long before its 60 s sleep ends
    assert e.execute("operator", "add", (1, 1)) == 2     # and the worker goes on


@pytest.mark.skipif(os.name == "nt", reason="the control lines use the POSIX lifeline pipe")
def test_exit_stops_a_busy_worker_at_once(fresh, tmp_path):
    e = fresh().launch()
    worker = e._worker
    marker = str(tmp_path / "running")
    busy = e.submit(HELPERS, "mark_and_sleep", (marker, 60))
    assert wait_for(lambda: os.path.exists(marker), HANG)
    e.exit()
    assert worker.proc.returncode == 0          # it left on its own: a kill would show -9
    with pytest.raises(wetlite.ExecutorError):
        busy.result(timeout=HANG)


# --- the connection's framing ---------------------------------------------------------

def test_socket_connection_reads_ahead_in_multiprocessing_framing():
    import socket
    from multiprocessing.connection import Connection
    ours, theirs = socket.socketpair()
    peer = Connection(theirs.detach())
    conn = wetlite._SocketConnection(ours)
    try:
        big = os.urandom(300000)                    # more than one recv() of read-ahead
        messages = [b"", b"x", b"y" * 70000, big, b"after the big one"]
        sender = threading.Thread(target=lambda: [peer.send_bytes(data) for data in messages])
        sender.start()                              # (more than the socket's buffer holds)
        assert conn.poll(5)
        assert [bytes(conn.recv_bytes()) for _ in messages] == messages
        sender.join()
        assert not conn.has_message() and not conn.poll(0)
        peer.send_bytes(b"a")
        peer.send_bytes(b"b")
        assert conn.recv_bytes() == b"a"
        assert conn.has_message() and conn.poll(0)   # the second came with the first: no system call needed
        assert conn.recv_bytes() == b"b"
        for frames in ([b"one", b"", b"three" * 5000], [b"four" * 20000, b"five"]):   # one write, then not
            conn.send_frames(frames)
            assert [peer.recv_bytes() for _ in frames] == frames
        peer.send_bytes(b"z" * 300)
        with pytest.raises(OSError, match="more than 256"):
            conn.recv_bytes(256)
    finally:
        peer.close()
        conn.close()


def test_socket_connection_raises_eof_on_a_half_message():
    import socket
    import struct
    ours, theirs = socket.socketpair()
    conn = wetlite._SocketConnection(ours)
    try:
        theirs.sendall(struct.pack("!i", 1000) + b"only part of it")
        theirs.close()
        with pytest.raises(EOFError):
            conn.recv_bytes()
    finally:
        conn.close()
