"""Tasks: progress, cancel, per-call output, asyncio, for workers and main_environment.

Workers run in one venv on the host's Python (module scope); tests that kill
or cancel-with-kill use their own Environment on it.  Waits are on
conditions with generous deadlines, never fixed sleeps.
"""
import asyncio
import concurrent.futures
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import local_interpreters, wait_for, wetlite
from venv_worker_fixtures import any_env, fresh, mgr, shared, unique_name  # noqa: F401 (fixtures)

HERE = os.path.dirname(os.path.abspath(__file__))
T = os.path.join(HERE, "executor_data", "task_helpers.py")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the kill and interrupt paths tested here are POSIX")


def started_file(tmp_path):
    return str(tmp_path / ("started-%d" % unique_name()))


# --- Task is a Future ----------------------------------------------------------------

def test_task_is_a_future_with_an_id(any_env):
    task = any_env.submit(T, "report_many", (3,))
    assert isinstance(task, concurrent.futures.Future) and isinstance(task, wetlite.Task)
    assert task.result(timeout=30) == 3
    assert task.id is not None and task.env_name == any_env.name
    assert task.progress == (3, 3, "step") and task.progress.total == 3
    assert "finished" in repr(task)
    other = any_env.submit(T, "report_many", (1,))
    assert other.id != task.id
    done, _ = concurrent.futures.wait([task, other], timeout=30)
    assert done == {task, other}
    assert list(concurrent.futures.as_completed([other], timeout=30)) == [other]


def test_await_a_task_and_asyncio_wrap(any_env):
    async def main():
        first = await any_env.submit(T, "report_many", (5,))
        second = await asyncio.wrap_future(any_env.submit(T, "report_many", (6,)))
        return first, second
    assert asyncio.run(main()) == (5, 6)


# --- progress ------------------------------------------------------------------------

def test_progress_is_in_order_coalesced_and_ends_with_the_last(any_env):
    seen = []
    count = 100000
    start = time.monotonic()
    task = any_env.submit(T, "report_many", (count,), progress=lambda t, p: seen.append((t, p)))
    assert task.result(timeout=60) == count
    elapsed = time.monotonic() - start
    assert wait_for(lambda: seen and seen[-1][1] == (count, count, "step"))
    assert all(t is task for t, _ in seen)
    currents = [p.current for _, p in seen]
    assert currents == sorted(currents) and len(set(currents)) == len(currents)
    # at most one every 50 ms, plus the first and the last
    assert len(seen) <= elapsed / wetlite._PROGRESS_INTERVAL + 2, (len(seen), elapsed)
    assert len(seen) < count
    assert task.progress == (count, count, "step")


def test_progress_of_a_synchronous_call_is_delivered_before_it_returns(any_env):
    seen = []
    assert any_env.execute(T, "report_many", (2000,), progress=lambda t, p: seen.append(p)) == 2000
    assert seen and seen[-1] == wetlite.Progress(2000, 2000, "step")


def test_progress_arrives_while_the_call_runs(any_env, tmp_path):
    flag = str(tmp_path / "seen")
    task = any_env.submit(T, "report_then_wait", (flag,), progress=lambda t, p: open(flag, "w").close())
    assert task.result(timeout=60) == "seen"
    assert task.progress == (1, 2, "half way")


def test_progress_values_that_cannot_be_pickled_arrive_as_text(shared):
    seen = []
    assert shared.execute(T, "report_odd_values", progress=lambda t, p: seen.append(p)) is True
    assert seen[-1].current is None and seen[-1].total == 3 and "lock" in seen[-1].message


def test_report_progress_outside_a_call_does_nothing():
    wetlite.report_progress(1, 2, "nobody listens")
    assert wetlite.cancel_requested() is False


def test_callbacks_run_on_one_wetlite_thread_in_order_and_errors_are_logged(any_env, caplog):
    caplog.set_level(logging.ERROR, logger="wetlite")
    threads, order, active = set(), [], []
    lock = threading.Lock()

    def callback(task, progress):
        with lock:
            active.append(1)
            assert len(active) == 1, "two callbacks ran at once"
        threads.add(threading.current_thread().name)
        order.append((task.id, progress.current))
        with lock:
            active.pop()

    def broken(task, progress):
        raise RuntimeError("callback bug %s" % progress.current)

    tasks = [any_env.submit(T, "report_many", (50000,)) for _ in range(3)]
    for task in tasks:
        task.add_progress_callback(broken)
        task.add_progress_callback(callback)
    for task in tasks:
        task.result(timeout=60)
    assert wait_for(lambda: sum(1 for tid, c in order if c == 50000) == 3)
    assert threads == {"wetlite-callbacks"}
    for task in tasks:
        mine = [c for tid, c in order if tid == task.id]
        assert mine == sorted(mine)
    assert wait_for(lambda: any("callback bug" in r.getMessage() or "callback bug" in (r.exc_text or "")
                                for r in caplog.records))


def test_a_progress_callback_added_late_gets_the_latest_report(any_env):
    task = any_env.submit(T, "report_many", (10,))
    task.result(timeout=30)
    got = []
    task.add_progress_callback(lambda t, p: got.append(p))
    assert wait_for(lambda: got == [(10, 10, "step")])


def test_bad_callbacks_and_graces_are_spec_errors(shared, mgr):
    for env in (shared, mgr.main_environment):
        with pytest.raises(wetlite.SpecError, match="progress"):
            env.submit(T, "report_many", (1,), progress="not callable")
        for bad in (-1, float("nan"), float("inf"), "2", True):
            with pytest.raises(wetlite.SpecError, match="cancel_grace"):
                env.submit(T, "report_many", (1,), cancel_grace=bad)
    with pytest.raises(wetlite.SpecError, match="cancel_grace"):
        shared.cancel_grace = -0.5
    task = shared.submit(T, "report_many", (1,))
    with pytest.raises(wetlite.SpecError):
        task.add_output_callback(42)
    assert task.result(timeout=30) == 1


# --- cancel --------------------------------------------------------------------------

def test_cancel_a_queued_task_it_never_starts(any_env, tmp_path):
    started = started_file(tmp_path)
    marker = tmp_path / "ran.txt"
    running = any_env.submit(T, "cooperative", (30, started))
    assert wait_for(lambda: os.path.exists(started))
    queued = any_env.submit(T, "append_to", (str(marker), "ran"))
    assert queued.cancel() is True
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=5)            # at once: it never started
    assert queued.cancelled() and not running.done()
    assert running.cancel() is True
    with pytest.raises(concurrent.futures.CancelledError):
        running.result(timeout=30)
    assert any_env.execute(T, "report_many", (1,)) == 1
    assert not marker.exists()


def test_cancel_a_cooperative_call(any_env, tmp_path):
    started = started_file(tmp_path)
    task = any_env.submit(T, "cooperative", (60, started), cancel_grace=60)
    assert wait_for(lambda: os.path.exists(started))
    assert task.running()
    assert task.cancel() is True and task.cancel() is True
    assert "cancelling" in repr(task) or task.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        task.result(timeout=30)             # well before the 60 s grace: it saw cancel_requested()
    assert task.cancelled() and task.done()
    assert task.cancel() is True            # still "cancelled"


def test_cancel_an_uncooperative_call_interrupts_it_after_the_grace(fresh, tmp_path):
    env = fresh()
    pid = env.execute("os", "getpid")
    started = started_file(tmp_path)
    task = env.submit(T, "sleeper", (60, started), cancel_grace=0.2)
    assert wait_for(lambda: os.path.exists(started))
    assert task.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        task.result(timeout=30)
    assert env.execute("os", "getpid") == pid           # interrupted, not killed


def test_cancel_a_call_that_ignores_interrupts_kills_the_worker(fresh, tmp_path, monkeypatch):
    monkeypatch.setattr(wetlite, "_INTERRUPT_GRACE", 0.3)
    env = fresh()
    env.cancel_grace = 0.1
    pid = env.execute("os", "getpid")
    started = started_file(tmp_path)
    task = env.submit(T, "stubborn", (60, started))
    queued = env.submit(T, "report_many", (1,))
    assert wait_for(lambda: os.path.exists(started))
    assert task.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        task.result(timeout=30)
    with pytest.raises(wetlite.WorkerDied):             # it was queued on the killed worker
        queued.result(timeout=30)
    assert env.execute("os", "getpid") != pid           # a new worker


def ticks_after(path, moment):
    return [t for t in map(float, path.read_text().split()) if t > moment]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_killed_call_has_stopped_when_its_task_ends_and_the_next_call_works(fresh, tmp_path, monkeypatch, how):
    # The task of a call that ignores the interrupt ends only once its worker
    # is killed: nothing of the call runs after result() raises, and the next
    # call starts a new worker instead of queueing on the doomed one.
    monkeypatch.setattr(wetlite, "_INTERRUPT_GRACE", 0.5)
    env = fresh()
    pid = env.execute("os", "getpid")
    ticks, started = tmp_path / "ticks", started_file(tmp_path)
    if how == "cancel":
        task = env.submit(T, "stubborn_ticker", (str(ticks), 60, started), cancel_grace=0.1)
        assert wait_for(lambda: os.path.exists(started))
        assert task.cancel()
        expected = concurrent.futures.CancelledError
    else:
        task = env.submit(T, "stubborn_ticker", (str(ticks), 60, started), timeout=0.3)
        expected = wetlite.CallTimeout
    with pytest.raises(expected):
        task.result(timeout=30)
    ended = time.time()
    assert env.execute("os", "getpid") != pid               # a new worker, not WorkerDied
    assert ticks.read_text() and ticks_after(ticks, ended) == []


def test_cancel_of_a_finished_task_is_false(any_env):
    task = any_env.submit(T, "report_many", (1,))
    assert task.result(timeout=30) == 1
    assert task.cancel() is False and not task.cancelled()


def test_cancel_racing_completion_always_ends_consistently(any_env):
    outcomes = {"cancelled": 0, "finished": 0}
    for i in range(200):
        task = any_env.submit(T, "report_many", (i % 7,))
        if i % 3:
            time.sleep(0.0002 * (i % 5))
        if task.cancel():
            with pytest.raises(concurrent.futures.CancelledError):
                task.result(timeout=30)
            assert task.cancelled()
            outcomes["cancelled"] += 1
        else:
            assert task.result(timeout=30) == i % 7 and not task.cancelled()
            outcomes["finished"] += 1
    assert any_env.execute(T, "report_many", (2,)) == 2
    assert sum(outcomes.values()) == 200


def test_cancel_wakes_wait_and_as_completed(any_env, tmp_path):
    started = started_file(tmp_path)
    task = any_env.submit(T, "cooperative", (60, started))
    assert wait_for(lambda: os.path.exists(started))
    threading.Timer(0.05, task.cancel).start()
    done, _ = concurrent.futures.wait([task], timeout=30)
    assert done == {task} and task.cancelled()


def test_asyncio_cancellation_reaches_the_call(any_env, tmp_path):
    started = started_file(tmp_path)

    async def main():
        task = any_env.submit(T, "cooperative", (60, started))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(task), 0.3)
        return task
    task = asyncio.run(main())
    with pytest.raises(concurrent.futures.CancelledError):
        task.result(timeout=30)


# --- import wetlite inside a call ----------------------------------------------------

def test_import_wetlite_in_a_call_is_the_running_worker_even_with_another_installed(mgr, shared, tmp_path):
    prefix = tmp_path / "decoyenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    site = subprocess.run([str(prefix / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    with open(os.path.join(site, "wetlite.py"), "w") as f:
        f.write("__version__ = 'decoy'\n")
    env = mgr.load("decoy", str(prefix))
    try:
        seen = []
        info = env.execute(T, "which_wetlite", progress=lambda t, p: seen.append(p))
        runtime = os.path.realpath(os.path.join(mgr.root, "state", "runtime"))
        assert os.path.realpath(info["file"]).startswith(runtime + os.sep), info
        assert info["has_report"] and info["in_call"] and info["version"] == wetlite.__version__
        assert env.execute(T, "report_many", (3,), progress=lambda t, p: seen.append(p)) == 3
        assert seen[-1] == (3, 3, "step")
        # outside the worker, the environment's own copy is what Python finds
        out = env.run([["python", "-c", "import wetlite; print(wetlite.__version__)"]], cwd=str(tmp_path)).stdout
        assert "decoy" in out
    finally:
        env.exit()


# --- per-call output -----------------------------------------------------------------

def test_output_is_tagged_with_the_task_and_reaches_its_callback(fresh, caplog):
    caplog.set_level(logging.INFO, logger="wetlite")
    env = fresh()
    lines = {}

    def collect(task, line):
        lines.setdefault(task.id, []).append(line)
    tasks = [env.submit(T, "print_tagged", (tag,), output=collect) for tag in ("alpha", "beta", "gamma")]
    for task in tasks:
        task.result(timeout=30)
    for task, tag in zip(tasks, ("alpha", "beta", "gamma")):
        expected = ["%s 0" % tag, "%s 1" % tag, "%s 2" % tag, "%s err" % tag]
        assert wait_for(lambda: sorted(lines.get(task.id, [])) == sorted(expected)), lines
    records = [r for r in caplog.records if r.name == "wetlite" and getattr(r, "task_id", None) is not None]
    by_line = {r.getMessage().split("] ", 1)[1]: r for r in records}
    for task, tag in zip(tasks, ("alpha", "beta", "gamma")):
        assert by_line["%s 1" % tag].task_id == task.id
        assert by_line["%s 1" % tag].env_name == env.name
    assert not any("\0" in r.getMessage() for r in caplog.records)      # markers never show


def test_output_written_below_sys_stdout_goes_to_the_running_call(fresh, tmp_path):
    env = fresh()
    flag = str(tmp_path / "seen")
    got = []

    def on_line(task, line):
        got.append((task.id, line))
        if line == "from the fd":
            open(flag, "w").close()
    env.execute(T, "print_tagged", ("before",))                  # marks and unmarks a call first
    task = env.submit(T, "write_fd_then_wait", ("from the fd", flag), output=on_line)
    assert task.result(timeout=60) == "seen"
    assert (task.id, "from the fd") in got


def test_an_output_callback_added_later_gets_the_lines_from_then_on(fresh, tmp_path):
    env = fresh()
    flag = str(tmp_path / "go")
    task = env.submit(T, "print_after_file", ("late", flag))
    got = []
    task.add_output_callback(lambda t, line: got.append(line))
    open(flag, "w").close()
    assert task.result(timeout=60) == "late"
    assert wait_for(lambda: got == ["late 0", "late 1", "late 2", "late err"] or sorted(got) == sorted(
        ["late 0", "late 1", "late 2", "late err"]))


def test_environment_output_callback_still_gets_every_line(mgr, shared):
    lines = []
    env = mgr.load("outputall", shared.path)
    try:
        env.launch(output=lines.append)
        env.execute(T, "print_tagged", ("env",))
        env.execute(T, "unfinished_line", ("no newline",))
        env.execute(T, "print_tagged", ("next",))
        assert wait_for(lambda: "next err" in lines and "next 2" in lines)
        assert "env 0" in lines and "no newline" in lines
        assert not any("\0" in line for line in lines)
    finally:
        env.exit()
        mgr.environments.pop(env.name, None)


# --- every local interpreter ---------------------------------------------------------

LOCAL = dict(local_interpreters())


@pytest.mark.parametrize("version", ["3.%d" % minor for minor in range(6, 14)])
def test_progress_and_cancel_on_every_local_interpreter(mgr, tmp_path, version):
    if version not in LOCAL:
        pytest.skip("no local Python %s here (pyenv)" % version)
    path = str(tmp_path / "venv")
    proc = subprocess.run([LOCAL[version], "-m", "venv", "--without-pip", path], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        pytest.skip("python %s cannot make a venv here" % version)
    env = mgr.load("tasks%s" % version.replace(".", ""), path)
    try:
        env.launch(timeout=30)
        seen = []
        assert env.execute(T, "report_many", (20000,), progress=lambda t, p: seen.append(p)) == 20000
        assert seen[-1] == (20000, 20000, "step")
        started = started_file(tmp_path)
        task = env.submit(T, "cooperative", (60, started))
        assert wait_for(lambda: os.path.exists(started))
        assert task.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            task.result(timeout=30)
        lines = []
        task = env.submit(T, "print_tagged", ("v",), output=lambda t, line: lines.append(line))
        assert task.result(timeout=30) == "v"
        assert wait_for(lambda: "v err" in lines and "v 2" in lines)
    finally:
        env.exit()


def test_import_wetlite_in_a_main_environment_call_of_a_vendored_host(tmp_path):
    vendor = tmp_path / "pkg" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    with open(wetlite.__file__, encoding="utf-8") as f:
        (vendor / "wetlite.py").write_text(f.read(), encoding="utf-8")
    script = tmp_path / "host.py"
    script.write_text(
        "import json, sys\n"
        "sys.path.insert(0, %r)\n"
        "from pkg._vendor import wetlite\n"
        "main = wetlite.EnvironmentManager(root=%r, tool='venv').main_environment\n"
        "seen = []\n"
        "info = main.execute(%r, 'which_wetlite', progress=lambda t, p: seen.append(p))\n"
        "main.execute(%r, 'report_many', (4,), progress=lambda t, p: seen.append(p))\n"
        "print(json.dumps([info['file'], info['in_call'], list(seen[-1])]))\n"
        % (str(tmp_path), str(tmp_path / "root"), T, T))
    out = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    import json
    path, in_call, last = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert path == str(vendor / "wetlite.py") and in_call is True
    assert last == [4, 4, "step"]
