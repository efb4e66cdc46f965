"""Worker pools (launch(workers=N)), map, map_async, execute_async, and the CLI's map.

One pool per test (workers are cheap to start from a venv without pip);
waits are on conditions or files, never fixed sleeps.
"""
import asyncio
import concurrent.futures
import io
import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import wait_for, wetlite
from venv_worker_fixtures import mgr, venv_on_local_python  # noqa: F401 (fixtures)

HERE = os.path.dirname(os.path.abspath(__file__))
T = os.path.join(HERE, "executor_data", "task_helpers.py")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="these tests look at /dev/shm and kill workers")



def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("poolvenv") / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    return path


_names = itertools.count(1)


@pytest.fixture
def pool(mgr, venv):
    """A factory: an Environment on the shared venv running N workers; all exited afterwards."""
    made = []

    def make(workers=2):
        env = mgr.load("pool%d" % next(_names), venv)
        made.append(env)
        return env.launch(timeout=30, workers=workers)
    yield make
    for env in made:
        env.exit()
        mgr.environments.pop(env.name, None)


def lines(path):
    return path.read_text().split() if path.exists() else []


def drain(env):
    """Return once every worker has run what was queued on it (each runs its calls in order)."""
    for worker in (env._pool.slots if env._pool is not None else [env._worker]):
        assert worker.call(("call", "operator", "add"), ((1, 1), None), "drain", None) == 2


def nothing_starts_after(env, path):
    """Nothing queued before this moment starts any more: the map's pending calls were cancelled."""
    before = lines(path)
    drain(env)
    assert lines(path) == before


# --- dispatch ------------------------------------------------------------------------

def test_launch_workers_and_least_loaded_dispatch(pool):
    env = pool(2)
    pids = env.workers
    assert len(pids) == 2 and len(set(pids)) == 2 and all(alive(p) for p in pids)
    busy = [env.submit(T, "pid_after", (0.5,)) for _ in range(2)]
    assert {t.result(timeout=30) for t in busy} == set(pids)         # one each, not both on one
    assert set(env.map(T, "pid_after", [0.05] * 8)) == set(pids)
    env.launch(workers=3)
    assert len(env.workers) == 3 and set(pids) < set(env.workers)   # grown, the first two kept
    env.launch(workers=1)
    assert env.workers == pids[:1]
    assert env.execute(T, "pid") == pids[0]


def test_bad_worker_counts_are_spec_errors(mgr, venv):
    env = mgr.load("badcount", venv)
    for bad in (0, -1, "four", 2.5, True):
        with pytest.raises(wetlite.SpecError, match="workers"):
            env.launch(workers=bad)
    with pytest.raises(wetlite.SpecError, match="workers"):
        mgr.main_environment.launch(workers=0)
    assert env.workers == []


def test_auto_is_one_worker_per_cpu(pool):
    env = pool("auto")
    assert len(env.workers) == (os.cpu_count() or 1)


def test_exit_stops_them_all_and_a_call_starts_them_again(pool):
    env = pool(2)
    pids = env.workers
    env.exit()
    assert wait_for(lambda: not any(alive(p) for p in pids), 10)
    assert env.workers == []
    assert env.execute(T, "pid") not in pids
    assert len(env.workers) == 2


# --- map -----------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_map_in_order_and_as_completed(pool, tmp_path, workers):
    env = pool(workers)
    assert list(env.map(T, "record", [str(tmp_path / "a")] * 30, range(30))) == list(range(30))
    assert list(env.map("operator", "add", [1, 2, 3], [10, 20, 30])) == [11, 22, 33]       # zipped
    assert list(env.map("operator", "add", [], [])) == []
    assert sorted(env.map("operator", "neg", range(30), ordered=False)) == sorted(-i for i in range(30))


def test_map_unordered_yields_what_finishes_first(pool, tmp_path):
    env = pool(2)
    flag = str(tmp_path / "one-done")
    results = env.map(T, "after_file", [0, 1], [flag, str(tmp_path / "never")], [30, 0], ordered=False)
    # item 0 waits for `flag`; item 1 waits for nothing (its file never appears, timeout 0)
    assert next(results) == 1
    open(flag, "w").close()
    assert next(results) == 0
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.parametrize("workers", [1, 2])
def test_map_is_lazy_and_bounded(pool, workers):
    env = pool(workers)
    pulled = []

    def inputs():
        for i in range(1000):
            pulled.append(i)
            yield i
    results = env.map("operator", "neg", inputs())
    assert next(results) == 0
    assert len(pulled) <= 4 * workers, len(pulled)
    assert next(results) == -1
    results.close()
    assert len(pulled) < 20


@pytest.mark.parametrize("workers", [1, 2])
def test_map_raises_the_first_error_in_its_place_and_cancels_the_rest(pool, tmp_path, workers):
    env = pool(workers)
    ran = tmp_path / "ran"
    got = []
    with pytest.raises(ValueError, match="item 5 failed"):
        for value in env.map(T, "record_slowly", [str(ran)] * 60, range(60), [0.2] * 60, [5] * 60):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]
    nothing_starts_after(env, ran)
    assert "59" not in lines(ran) and len(lines(ran)) < 20
    assert env.execute("operator", "add", (1, 1)) == 2          # the pool still works


@pytest.mark.parametrize("workers", [1, 2])
def test_closing_the_map_early_cancels_what_is_pending(pool, tmp_path, workers):
    env = pool(workers)
    ran = tmp_path / "ran"
    results = env.map(T, "record_slowly", [str(ran)] * 100, range(100), [0.2] * 100)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()
    nothing_starts_after(env, ran)
    assert len(lines(ran)) < 3 + 4 * workers, lines(ran)
    assert env.execute("operator", "add", (2, 2)) == 4


def test_closing_the_map_stops_a_running_call(pool, tmp_path):
    env = pool(1)
    env.cancel_grace = 0.2
    pid = env.workers[0]
    started = tmp_path / "started"
    results = env.map(T, "sleeper", [0, 60], [None, str(started)])
    assert next(results) == "slept"
    assert wait_for(started.exists)
    start = time.monotonic()
    results.close()                                             # interrupted after the grace
    assert time.monotonic() - start < 30
    assert env.execute(T, "pid") == pid


@pytest.mark.parametrize("face", ["map", "map_async"])
@pytest.mark.parametrize("function", ["ticker", "stubborn_ticker"])
def test_closing_the_map_returns_once_its_calls_have_stopped(pool, tmp_path, monkeypatch, face, function):
    # interrupted after the grace ("ticker"), or its worker killed ("stubborn_ticker")
    monkeypatch.setattr(wetlite, "_INTERRUPT_GRACE", 0.5)
    env = pool(2)
    env.cancel_grace = 0.1
    ticks = [tmp_path / ("ticks%d" % i) for i in range(8)]
    started = [str(tmp_path / ("started%d" % i)) for i in range(8)]
    seconds = [0] + [60] * 7

    def running():
        return [i for i in range(1, 8) if os.path.exists(started[i])]

    if face == "map":
        results = env.map(T, function, [str(t) for t in ticks], seconds, started)
        assert next(results) == "ticked"
        assert wait_for(lambda: len(running()) == 2)
        results.close()
    else:
        async def main():
            results = env.map_async(T, function, [str(t) for t in ticks], seconds, started)
            assert await results.__anext__() == "ticked"
            while len(running()) < 2:
                await asyncio.sleep(0.01)
            await results.aclose()
        asyncio.run(main())
    closed = time.time()
    for worker in env._pool.slots:          # the calls are over: interrupted (the worker idle) or killed
        if worker.dead is None:
            assert worker.call(("call", "operator", "add"), ((1, 1), None), "drain", None) == 2
        else:
            assert wait_for(lambda: not alive(worker.proc.pid), 10)
    assert len(running()) == 2
    for i in running():
        assert ticks[i].read_text()
        assert [t for t in map(float, ticks[i].read_text().split()) if t > closed] == []
    assert sorted(env.map("operator", "neg", [1, 2, 3])) == [-3, -2, -1]


def test_map_timeout_and_progress_apply_to_each_call(pool):
    env = pool(2)
    seen = []
    assert list(env.map(T, "report_many", [3, 4], progress=lambda t, p: seen.append(p))) == [3, 4]
    assert wait_for(lambda: {(3, 3, "step"), (4, 4, "step")} <= set(seen))
    with pytest.raises(wetlite.CallTimeout):
        list(env.map(T, "sleeper", [0, 60], timeout=0.3))
    assert len(env.workers) == 2


# --- faults and pinning --------------------------------------------------------------

def test_a_crashed_worker_fails_only_its_own_tasks_and_is_replaced(pool, tmp_path):
    env = pool(2)
    pids = env.workers
    started = tmp_path / "started"
    survivor = env.submit(T, "sleeper", (0.5, str(started)))
    assert wait_for(started.exists)
    crash = env.submit(T, "exit_worker", (7,))                  # the other, idle worker
    with pytest.raises(wetlite.WorkerDied) as info:
        crash.result(timeout=30)
    assert info.value.exitcode == 7
    assert survivor.result(timeout=30) == "slept"
    new = set(env.map(T, "pid_after", [0.1] * 6))
    assert len(env.workers) == 2 and len(new) == 2 and len(new & set(pids)) == 1


def test_a_crash_inside_map_is_raised_in_its_place(pool):
    env = pool(2)
    with pytest.raises(wetlite.WorkerDied):
        list(env.map(T, "exit_worker", [3]))
    assert sorted(env.map("operator", "neg", [1, 2, 3])) == [-3, -2, -1]


def test_timeout_and_cancel_act_on_the_right_worker(pool, tmp_path):
    env = pool(2)
    pids = env.workers
    started = tmp_path / "started"
    slow = env.submit(T, "sleeper", (60, str(started)), timeout=0.5)
    assert wait_for(started.exists)
    fine = env.submit(T, "pid_after", (1.0,))
    with pytest.raises(wetlite.CallTimeout):
        slow.result(timeout=30)
    assert fine.result(timeout=30) in pids                      # the other worker was left alone
    started2 = tmp_path / "started2"
    doomed = env.submit(T, "cooperative", (60, str(started2)))
    assert wait_for(started2.exists)
    other = env.submit(T, "pid_after", (0.5,))
    assert doomed.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        doomed.result(timeout=30)
    assert other.result(timeout=30) in pids
    assert env.workers == pids                                  # interrupted or cooperative: nobody killed


def test_remote_objects_are_pinned_to_their_worker(pool):
    env = pool(2)
    models = [env.execute(T, "make_model", (i,), ref=True) for i in range(4)]
    homes = {m._wl_worker.proc.pid for m in models}
    for m in models:
        home = m._wl_worker.proc.pid
        assert all(env.execute(T, "use_model", (m, 1)) == m.scale + 1000 for _ in range(5))
        assert m.predict(3) == 3 * m.scale
        assert env.submit(T, "use_model", (m, 2)).result(timeout=30) == 2 * m.scale + 1000
        assert env.execute(m, "predict", (1,)) == m.scale and m._wl_worker.proc.pid == home
    if len(homes) == 2:
        a = next(m for m in models if m._wl_worker.proc.pid == min(homes))
        b = next(m for m in models if m._wl_worker.proc.pid == max(homes))
        with pytest.raises(wetlite.ExecutorError, match="different workers"):
            env.execute(T, "scales", ([a, b],))


def test_handles_nested_anywhere_in_the_arguments_go_to_their_worker(pool, tmp_path):
    import types
    env = pool(2)
    flag = tmp_path / "free"
    busy = env.submit(T, "after_file", (0, str(flag)))          # holds the first worker ...
    model = env.execute(T, "make_model", (7,), ref=True)        # ... so this one lives in the second
    flag.touch()
    assert busy.result(timeout=30) == 0
    home = model._wl_worker
    assert home is env._pool.slots[1]
    nested = [(([[[model]]],), (0, 0, 0)),
              (({"a": [{"m": model}]},), ("a", 0, "m")),
              ((types.SimpleNamespace(m=model),), ("m",)),
              (((1, [model, 2]),), (1, 0))]
    for box, path in nested:
        for _ in range(3):          # idle workers: least-loaded alone would pick the first
            assert env.execute(T, "scale_at", box + path) == 7
            assert env.submit(T, "scale_at", box + path).result(timeout=30) == 7
        assert list(env.map(T, "scale_at", *[[x] * 4 for x in box + path])) == [7] * 4
    other = env.execute(T, "make_model", (1,), ref=True)        # idle: the first worker
    assert other._wl_worker is env._pool.slots[0]
    with pytest.raises(wetlite.ExecutorError, match="different workers"):
        env.execute(T, "scale_at", ([[other], [[model]]], 1, 0, 0))
    with pytest.raises(wetlite.ExecutorError, match="different workers"):
        env.execute(T, "scale_at", ([[model], [[other]]], 0, 0))


def test_each_worker_has_its_own_shared_memory_and_nothing_leaks(pool):
    if not wetlite._shm_available():
        pytest.skip("no shared memory here")
    env = pool(2)
    blobs = [os.urandom(2 << 20) for _ in range(8)]
    results = list(env.map(T, "big_echo", blobs))
    assert [data for _, data in results] == blobs
    assert len({pid for pid, _ in results}) == 2
    prefixes = set()
    for worker in env._pool.slots:
        prefixes.update([worker.shm_pool.prefix, worker.shm_worker_prefix])
        pid, attached = worker.call(("call", T, "shm_report"), ((), None), "shm_report", None)
        assert pid == worker.proc.pid
        assert attached and all(name.startswith(worker.shm_pool.prefix) for name in attached), attached
    assert len(prefixes) == 4

    def ours():
        return [n for n in os.listdir("/dev/shm") if any(n.startswith(p) for p in prefixes)]
    assert ours()
    env.exit()
    assert wait_for(lambda: not ours()), ours()


# --- asyncio -------------------------------------------------------------------------

def test_execute_async_map_async_and_await(pool, tmp_path):
    env = pool(2)
    ran = tmp_path / "ran"

    async def main():
        one = await env.execute_async("operator", "add", (1, 2))
        task = await env.submit("operator", "mul", (3, 4))
        ordered = [x async for x in env.map_async("operator", "neg", range(10))]
        unordered = sorted([x async for x in env.map_async("operator", "neg", range(10), ordered=False)])
        partial = []
        results = env.map_async(T, "record_slowly", [str(ran)] * 100, range(100), [0.2] * 100)
        async for x in results:
            partial.append(x)
            if len(partial) == 3:
                break
        await results.aclose()
        return one, task, ordered, unordered, partial
    one, task, ordered, unordered, partial = asyncio.run(main())
    assert (one, task) == (3, 12)
    assert ordered == [-i for i in range(10)] and unordered == sorted(ordered)
    assert partial == [0, 1, 2]
    nothing_starts_after(env, ran)
    assert len(lines(ran)) < 20


def test_map_async_raises_the_first_error(pool, tmp_path):
    env = pool(2)

    async def main():
        got = []
        with pytest.raises(ValueError, match="item 2 failed"):
            async for x in env.map_async(T, "record", [str(tmp_path / "r")] * 10, range(10), [2] * 10):
                got.append(x)
        return got
    assert asyncio.run(main()) == [0, 1]


# --- main_environment ----------------------------------------------------------------

def test_main_environment_workers_are_threads(mgr, tmp_path):
    main = mgr.main_environment
    main.launch(workers=2)
    try:
        assert main.workers == [os.getpid()]
        flag = str(tmp_path / "flag")
        # the first waits for the second's file: with one thread it would wait out its 30 s
        first = main.submit(T, "after_file", ("waited", flag))
        second = main.submit(T, "touch_and_return", ("touched", flag))
        assert second.result(timeout=20) == "touched"
        assert first.result(timeout=30) == "waited"
        assert list(main.map("operator", "neg", range(5))) == [0, -1, -2, -3, -4]
        with pytest.raises(ValueError, match="item 1 failed"):
            list(main.map(T, "record", [str(tmp_path / "r")] * 5, range(5), [1] * 5))
    finally:
        main.launch(workers=1)


# --- old and new worker Pythons --------------------------------------------------------

@pytest.mark.parametrize("version", ["3.6", "3.13"])
def test_a_pool_on_old_and_new_pythons(mgr, tmp_path, version):
    path = venv_on_local_python(version, str(tmp_path / "venv"))
    env = mgr.load("pool%s" % version.replace(".", ""), path)
    try:
        env.launch(workers=2, timeout=30)
        assert len(set(env.map(T, "pid_after", [0.05] * 6))) == 2
        assert list(env.map("operator", "mul", range(20), range(20))) == [i * i for i in range(20)]
        with pytest.raises(ValueError):
            list(env.map(T, "record", [str(tmp_path / "r")] * 4, range(4), [2] * 4))
        model = env.execute(T, "make_model", (2,), ref=True)
        assert env.execute(T, "use_model", (model, 1)) == 1002
    finally:
        env.exit()


# --- the command line ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("climap") / "root")
    assert wetlite.main(["-q", "--root", root, "--tool", "venv", "create", "mapper"]) == 0
    return root


def run_map(cli_root, monkeypatch, capsys, stdin, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = wetlite.main(["-q", "--root", cli_root, "map", "mapper"] + list(extra))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_cli_map_over_json_lines(cli_root, monkeypatch, capsys):
    lines_in = "\n".join(json.dumps([i, 10]) for i in range(20)) + "\n\n" + json.dumps({"a": 1, "b": 2}) + "\n"
    code, results, err = run_map(cli_root, monkeypatch, capsys, lines_in, T, "add", "--workers", "2")
    assert code == 0, err
    assert results == [i + 10 for i in range(20)] + [3]
    code, results, err = run_map(cli_root, monkeypatch, capsys, "[1]\n[2]\n", "operator", "neg", "--unordered")
    assert code == 0 and sorted(results) == [-2, -1]


def test_cli_map_stops_at_the_first_failure(cli_root, monkeypatch, capsys, tmp_path):
    stdin = "".join(json.dumps([str(tmp_path / "r"), i, 2]) + "\n" for i in range(6))
    code, results, err = run_map(cli_root, monkeypatch, capsys, stdin, T, "record")
    assert code == 1 and results == [0, 1]
    assert "item 2 failed" in err and "input line 3" in err         # which input failed (--unordered too)
    code, results, err = run_map(cli_root, monkeypatch, capsys, stdin, T, "record", "--unordered")
    assert code == 1 and "item 2 failed" in err and "input line 3" in err
    code, results, err = run_map(cli_root, monkeypatch, capsys, "[1]\nnot json\n", "operator", "neg")
    assert code == 1 and results == [-1] and "input line 2" in err
    code, results, err = run_map(cli_root, monkeypatch, capsys, "[1]\n", "operator", "neg", "--workers", "x")
    assert code == 1 and "--workers" in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_map_prints_each_result_before_the_next_input_arrives(cli_root, workers):
    import select
    proc = subprocess.Popen([sys.executable, wetlite.__file__, "-q", "--root", cli_root, "map", "mapper", "operator",
                             "neg", "--workers", workers], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        got = []
        for i in (1, 2, 3):
            proc.stdin.write(b"[%d]\n" % i)
            proc.stdin.flush()
            assert select.select([proc.stdout], [], [], 60)[0], "no result for line %d while stdin is open" % i
            got.append(json.loads(proc.stdout.readline()))
        proc.stdin.close()
        assert proc.wait(60) == 0 and proc.stdout.read() == b""
        assert got == [-1, -2, -3]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wetlands_max_workers_is_workers(pool):
    env = pool(1)
    env.launch(max_workers=2)
    assert len(env.workers) == 2 and env.launched()
    env.exit()
    assert not env.launched()
