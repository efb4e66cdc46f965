"""Environments that are gone, half-built or badly recorded; what install() leaves on record; the host as an
environment; run timeouts; a closed manager; a full disk.  Real venv environments throughout."""
import errno
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, wetlite

WETLITE_PY = os.path.join(REPO, "wetlite.py")


def record_path(mgr, name):
    return os.path.join(mgr.root, "state", "envs", name + ".json")


def statuses(mgr):
    return {e["name"]: e["status"] for e in mgr.list()}


def every_operation(env):
    """Each public operation on an environment, as (label, thunk)."""
    return [
        ("run", lambda: env.run([["python", "-c", "print(1)"]])),
        ("execute_commands", lambda: env.execute_commands([["python", "-c", "print(1)"]], wait=True)),
        ("script", lambda: env.script(["python job.py"])),
        ("install", lambda: env.install({"pip": ["--no-index", "nothing-at-all"]})),
        ("launch", lambda: env.launch(timeout=30)),
        ("execute", lambda: env.execute("os", "getpid")),
    ]


def assert_every_operation_refuses(env, *fragments):
    for label, thunk in every_operation(env):
        with pytest.raises(wetlite.SpecError) as info:
            thunk()
        message = str(info.value)
        assert "%r" % env.name in message, (label, message)
        for fragment in fragments:
            assert fragment in message, (label, message)
    assert env._worker is None          # nothing was started


# --- gone or half-built -------------------------------------------------------------

def test_a_deleted_environment_refuses_every_operation(tmp_path, capsys):
    root = str(tmp_path / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    env = mgr.create("py", force_external=True)
    shutil.rmtree(env.path)
    assert statuses(mgr) == {"py": "missing"}
    # Without the check, the script puts a bin/ that no longer exists first on PATH and the host's python runs.
    assert_every_operation_refuses(env, env.path, "is missing", "mgr.create('py'", "mgr.remove('py')")
    assert wetlite.main(["--root", root, "run", "py", "--", "python", "-c", "print(1)"]) == 1
    err = capsys.readouterr().err
    assert "is missing" in err and env.path in err and "wetlite create py" in err and "wetlite remove py" in err
    for argv in (["list", "--json"], ["info", "py", "--json"]):         # JSON for the command line speaks it too
        assert wetlite.main(["--root", root] + argv) == 0
        listed = json.loads(capsys.readouterr().out)
        problem = (listed[0] if argv[0] == "list" else listed)["problem"]
        assert "wetlite remove py" in problem and "mgr." not in problem, problem
    mgr.remove("py")
    assert mgr.list() == [] and not os.path.exists(record_path(mgr, "py"))


def test_an_environment_removed_while_held_refuses_every_operation(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    held = mgr.create("py", force_external=True)
    mgr.remove("py")
    assert_every_operation_refuses(held, "was removed", "mgr.create('py'")


def test_a_half_built_environment_is_listed_refused_and_removable(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.create("half", force_external=True)
    record = json.load(open(record_path(mgr, "half")))
    record["state"] = "creating"            # as a build that was killed leaves it
    json.dump(record, open(record_path(mgr, "half"), "w"))
    listed = mgr.list()
    assert [(e["name"], e["status"]) for e in listed] == [("half", "half-built")]
    assert "half-built" in listed[0]["problem"]
    assert_every_operation_refuses(env, "half-built", "mgr.create('half'")
    with pytest.raises(wetlite.SpecError, match="half-built"):
        wetlite.EnvironmentManager(root=mgr.root, tool="venv").get("half")
    mgr.remove("half")
    assert mgr.list() == [] and not os.path.exists(env.path)


def test_a_loaded_environment_that_moved_refuses(tmp_path):
    venv = str(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.load("mine", venv)
    assert env.run([["python", "-c", "print(1)"]]).stdout == "1\n"
    assert (mgr.info("mine")["status"], mgr.info("mine")["path"]) == ("ready", venv)
    shutil.rmtree(venv)
    assert_every_operation_refuses(env, venv, "mgr.load('mine'")
    assert mgr.info("mine")["status"] == "missing" and venv in mgr.info("mine")["problem"]


# --- bad records (issue 11, item 10) ------------------------------------------------

def test_remove_and_gc_leave_no_lock_file_or_build_log_behind(tmp_path):
    root = tmp_path / "root"
    locks, logs = root / "state" / "locks", root / "state" / "logs"
    mgr = wetlite.EnvironmentManager(root=str(root), tool="venv")
    mgr.create("gone", force_external=True)
    assert (locks / "env-gone.lock").exists() and (logs / "gone.log").exists()
    mgr.remove("gone")
    assert not (locks / "env-gone.lock").exists() and not (logs / "gone.log").exists()
    # What removes before this one left behind, next to a lock a process holds and a live environment's.
    mgr.create("live", force_external=True)
    for name in ("old", "held"):
        (locks / ("env-%s.lock" % name)).write_text("")
        (logs / (name + ".log")).write_text("a build log\n")
    with mgr._lock("held"):
        removed = mgr.gc()
    assert [item["what"] for item in removed] == ["lock file of removed environment 'old'"]
    assert sorted(os.listdir(str(locks))) == ["env-held.lock", "env-live.lock"]
    assert sorted(os.listdir(str(logs))) == ["held.log", "live.log"]
    mgr.remove("live")


def test_a_waiter_on_a_lock_file_its_holder_deletes_locks_the_new_one(tmp_path):
    import threading
    path = str(tmp_path / "locks" / "env-x.lock")
    holder, waiter = wetlite._FileLock(path), wetlite._FileLock(path)
    tried = threading.Event()

    def try_lock(f):                        # the waiter has the old file open and waits on it
        tried.set()
        return wetlite._FileLock._try_lock(f)
    waiter._try_lock = try_lock
    holder.__enter__()
    waiting = threading.Thread(target=waiter.__enter__)
    waiting.start()
    try:
        assert tried.wait(30)
        holder.delete()                     # as remove() does, under the lock
    finally:
        holder.__exit__(None, None, None)
        waiting.join(30)
    assert waiter._file is not None and not waiting.is_alive()
    third = wetlite._FileLock(path)
    assert not third.acquire_nowait()       # one holder at a time: the waiter holds the file now at the path
    waiter.__exit__(None, None, None)
    assert third.acquire_nowait()
    third.__exit__(None, None, None)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A manager with one sound environment, "good", to show one bad record breaks nothing else.
    Each test leaves it ready."""
    mgr = wetlite.EnvironmentManager(root=str(tmp_path_factory.mktemp("good") / "root"), tool="venv")
    mgr.create("good", force_external=True)
    return mgr


@pytest.mark.parametrize("text, why", [
    ("[1, 2]", "not an object"),
    ('"just a string"', "not an object"),
    ('{"name": "bad", "tool": "venv", "state": "ready"', "not valid JSON"),
    ('{"name": "bad", "tool": "conda", "state": "ready", "dir": "/x", "prefix": "/x", "python": "/x/bin/python"}',
     "unknown tool"),
    ('{"name": "bad", "state": "ready"}', "lacks"),
    ("", "not valid JSON"),
    ('{"name": "bad", "tool": "venv", "state": "building", "dir": "/x", "prefix": "/x", "python": "/x/bin/python"}',
     "unknown state 'building'"),
    ('{"name": "other", "tool": "venv", "state": "ready", "dir": "/x", "prefix": "/x", "python": "/x/bin/python"}',
     "is for another environment ('other')"),
    ('{"name": "bad", "tool": "venv", "state": "ready", "dir": "x", "prefix": "/x", "python": "/x/bin/python"}',
     "relative path"),
    ('{"name": "bad", "tool": "venv", "state": "ready", "dir": "/x", "prefix": "/x", "python": "/x/bin/python", '
     '"installed": {}}', "malformed manifest or installed field"),
])
def test_a_bad_record_is_listed_as_broken_and_removable(good, text, why):
    mgr = good
    directory = os.path.join(mgr.root, "envs", "bad")
    os.makedirs(os.path.join(directory, "bin"))         # what the build had made so far
    with open(record_path(mgr, "bad"), "w") as f:
        f.write(text)
    listed = {e["name"]: e for e in mgr.list()}
    assert listed["good"]["status"] == "ready"
    assert listed["bad"]["status"] == "broken" and why in listed["bad"]["problem"]
    fresh = wetlite.EnvironmentManager(root=mgr.root, tool="venv")
    for thunk in (lambda: fresh.get("bad"), lambda: fresh.create("bad", force_external=True)):
        with pytest.raises(wetlite.SpecError) as info:
            thunk()
        assert why in str(info.value) and "mgr.remove('bad')" in str(info.value)
    assert fresh.get("good").name == "good"
    fresh.remove("bad")
    assert not os.path.exists(directory) and not os.path.exists(record_path(mgr, "bad"))
    assert statuses(fresh) == {"good": "ready"}


def test_a_bad_record_of_another_tool_is_removed_with_its_files(good):
    # Written by a venv manager (envs/NAME); the CLI's default tool is pixi (workspaces/NAME).
    directory = os.path.join(good.root, "envs", "other")
    os.makedirs(os.path.join(directory, "bin"))
    with open(record_path(good, "other"), "w") as f:
        f.write('{"name": "other", "tool": "ve')
    pixi = wetlite.EnvironmentManager(root=good.root, tool="pixi")
    assert directory in {e["name"]: e for e in pixi.list()}["other"]["problem"]     # "this deletes" what is there
    pixi.remove("other")
    assert not os.path.exists(directory) and statuses(pixi) == {"good": "ready"}    # create may build it again


def test_a_venv_whose_base_python_is_gone_is_missing_and_says_so(good, tmp_path):
    env = good.get("good")
    link = env.python                       # bin/python (-> python3) -> the base interpreter
    while not os.path.isabs(os.readlink(link)):
        link = os.path.join(os.path.dirname(link), os.readlink(link))
    target = os.readlink(link)
    gone = str(tmp_path / "uninstalled" / "python3")
    os.remove(link)
    os.symlink(gone, link)                  # as the link is once its base Python is uninstalled
    try:
        listed = good.list()
        assert listed[0]["status"] == "missing"
        problem = listed[0]["problem"]
        assert "%s links to %s, which does not exist" % (env.python, gone) in problem, problem
        assert "deleted outside wetlite" not in problem and "mgr.remove('good') cleans it up" in problem
        assert [item["path"] for item in good.gc(dry_run=True)] == [env.path]   # what is left goes too
    finally:
        os.remove(link)
        os.symlink(target, link)
    assert statuses(good) == {"good": "ready"}


def test_replace_rebuilds_over_a_broken_record(good):
    with open(record_path(good, "good"), "w") as f:
        f.write('{"name": "good", "to')
    env = good.create("good", force_external=True, replace=True)
    assert statuses(good) == {"good": "ready"}
    assert env.run([["python", "-c", "print(2)"]]).stdout == "2\n"


def test_a_bogus_activation_cache_is_captured_again(good):
    record = json.load(open(record_path(good, "good")))
    record["activation"] = {"set": "not a mapping", "unset": 3}
    json.dump(record, open(record_path(good, "good"), "w"))
    env = wetlite.EnvironmentManager(root=good.root, tool="venv").get("good")
    try:
        assert env.execute("os", "getenv", ("VIRTUAL_ENV",)) == env.path
    finally:
        env.exit()
    assert json.load(open(record_path(good, "good")))["activation"]["set"]["VIRTUAL_ENV"] == env.path


# --- what install() added --------------------------------------------------------------

def test_install_is_on_record_and_create_reuses_the_extended_environment(tmp_path, capsys):
    from conftest import make_wheel
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "wetlite-test-extra", "0.5")
    root = str(tmp_path / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    env = mgr.create("grow", force_external=True)
    assert mgr.list()[0]["installed"] == []
    env.install({"pip": ["--no-index", "--find-links " + str(wheels), "wetlite-test-extra==0.5"]})
    installed = mgr.list()[0]["installed"]
    assert len(installed) == 1
    assert installed[0]["pip"] == ["--no-index", "--find-links " + str(wheels), "wetlite-test-extra==0.5"]
    assert installed[0]["at"] and installed[0]["config"] is None
    assert mgr.info("grow")["installed"] == installed and mgr.info("grow")["recipe"]["tool"] == "venv"
    # The same recipe reuses it, extension included (the documented rule).
    again = wetlite.EnvironmentManager(root=root, tool="venv").create("grow", force_external=True)
    assert again.path == env.path
    assert again.run([["python", "-c", "import wetlite_test_extra; print('kept')"]]).stdout == "kept\n"
    assert wetlite.main(["--root", root, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["installed"] == installed
    assert wetlite.main(["--root", root, "info", "grow"]) == 0
    out = capsys.readouterr().out
    assert "wetlite-test-extra==0.5" in out and "installed" in out


# --- the host as an environment -----------------------------------------------------------

def test_the_host_is_registered_under_the_requested_name_and_says_why(tmp_path, caplog):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    with caplog.at_level(logging.INFO, logger="wetlite"):
        env = mgr.create("hostlike", {"pip": ["pytest"]})
    assert env is mgr.main_environment
    assert mgr.get("hostlike") is env
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert "'hostlike'" in message and sys.executable in message
    assert "pytest" in message and "force_external=True" in message
    info = mgr.info("hostlike")             # get() finds it, so info() describes it
    assert (info["status"], info["tool"], info["python"], info["recipe"]) == ("ready", "main", sys.executable, None)
    mgr.remove("hostlike")                  # only forgotten
    with pytest.raises(wetlite.SpecError):
        mgr.get("hostlike")
    assert os.path.isfile(sys.executable)


# --- run timeouts and a closed manager ----------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path_factory.mktemp("status") / "root"), tool="venv")
    env = mgr.create("shared", force_external=True)
    yield mgr, env
    mgr.exit()


def test_a_run_timeout_is_a_command_error_and_a_timeout_error(shared):
    mgr, env = shared
    with pytest.raises(wetlite.CommandTimeout) as info:
        env.run(["echo started", "sleep 30"], timeout=1)
    error = info.value
    assert isinstance(error, wetlite.CommandError) and isinstance(error, TimeoutError)
    assert str(error).startswith("stopped the commands in environment 'shared': the timeout of 1 s passed")
    assert "started" in error.output_tail
    assert "was stopped" not in str(error)


def test_calls_after_the_manager_exited_raise_and_start_nothing(tmp_path, shared):
    _, built = shared
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.load("borrowed", built.path)
    first = env.execute("os", "getpid")
    env.exit()
    assert env.execute("os", "getpid") != first         # env.exit() alone: the next call starts a worker
    mgr.exit()
    for thunk in (lambda: env.execute("os", "getpid"), lambda: env.submit("os", "getpid"),
                  lambda: env.import_module("os"), lambda: env.launch(),
                  lambda: mgr.main_environment.execute("os", "getpid")):
        with pytest.raises(wetlite.ExecutorError, match=r"mgr\.exit\(\)") as info:
            thunk()
        assert "'borrowed'" in str(info.value) or "'main'" in str(info.value)
    assert env._worker is None
    for thunk in (lambda: mgr.create("later", force_external=True), lambda: mgr.create("host"),
                  lambda: env.install({"pip": ["nothing-to-install"]})):
        with pytest.raises(wetlite.ExecutorError, match=r"cannot be (created|installed into): .*mgr\.exit\(\)"):
            thunk()                                     # nothing built that could run no call
    assert not os.path.exists(os.path.join(mgr.root, "envs")) or not os.listdir(os.path.join(mgr.root, "envs"))
    with mgr:                                           # opened again
        assert env.execute("os", "getpid") != first
    assert env._worker is None


# --- a full disk ---------------------------------------------------------------------------

@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(fragment): files written atomically to a path containing fragment hit a full disk (/dev/full)."""
    import tempfile
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    real = tempfile.mkstemp

    def install(fragment):
        def mkstemp(suffix=None, prefix=None, dir=None, text=False):
            if fragment in os.path.join(dir or "", prefix or ""):
                return os.open("/dev/full", os.O_WRONLY), os.path.join(dir, (prefix or "") + "full.tmp")
            return real(suffix, prefix, dir, text)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return install


def test_a_full_disk_during_create_names_the_path(tmp_path, full_disk):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    full_disk("full.json")
    with pytest.raises(wetlite.WetliteError) as info:
        mgr.create("full", force_external=True)
    assert record_path(mgr, "full") in str(info.value) and "space" in str(info.value)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert mgr.list() == []


def test_a_full_disk_during_launch_names_the_path(tmp_path, full_disk, shared, monkeypatch):
    _, built = shared
    monkeypatch.setattr(wetlite, "_RUNTIME_FALLBACK", {})   # no temp-dir copy left by an earlier test
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")     # no runtime copy there yet
    env = mgr.load("borrowed", built.path)
    full_disk(".wetlite.py.")           # the runtime copy, under the root and in the temp dir fallback alike
    with pytest.raises(wetlite.WetliteError) as info:
        env.launch(timeout=30)
    assert re.search(r"failed: /\S+/wetlite\.py: No space left on device", str(info.value)), str(info.value)
    assert "'borrowed'" in str(info.value) and env._worker is None


def limited_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_the_cli_reports_a_full_disk_without_a_traceback(tmp_path):
    root = str(tmp_path / "root")

    def cli(limit, *argv):
        # (Under scripts/measure_coverage.py, a size-limited child could not save its coverage data.)
        env = {k: v for k, v in os.environ.items() if not (limit and k.startswith("COVERAGE_PROCESS_"))}
        proc = subprocess.run([sys.executable, WETLITE_PY, "--root", root, "--tool", "venv"] + list(argv),
                              preexec_fn=limited_file_size(limit) if limit else None, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=300, env=env)
        return proc.returncode, proc.stderr.decode()
    code, err = cli(300, "create", "x")             # the record does not fit
    assert code == 1 and "Traceback" not in err, err
    assert err.startswith("wetlite: error: ") and os.path.join(root, "state", "envs", "x.json") in err
    assert cli(None, "-q", "create", "y") == (0, "")
    code, err = cli(50000, "call", "y", "os", "getpid")     # the worker's runtime copy does not fit
    assert code == 1 and "Traceback" not in err, err
    assert re.search(r"starting the worker of environment 'y' failed: /\S+/wetlite\.py: File too large", err), err
    assert "os:getpid raised" not in err        # the function is not to blame


def test_a_runtime_copy_that_fits_nowhere_leaves_no_temp_dir_behind(tmp_path):
    # The root cannot take the worker's runtime copy, and neither can the temp dir (here: a file-size
    # limit; in life: a full disk).  The call fails with a clear error, and leaves nothing behind.
    root, temp = str(tmp_path / "root"), tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    env["TMPDIR"] = str(temp)
    made = subprocess.run([sys.executable, WETLITE_PY, "--root", root, "--tool", "venv", "-q", "create", "y"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert made.returncode == 0, made.stderr.decode()
    proc = subprocess.run([sys.executable, WETLITE_PY, "--root", root, "--tool", "venv", "call", "y", "os", "getpid"],
                          env=env, preexec_fn=limited_file_size(50000), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 1 and b"File too large" in proc.stderr, proc.stderr.decode()
    assert [n for n in os.listdir(str(temp)) if n.startswith("wetlite")] == []
