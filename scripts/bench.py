#!/usr/bin/env python3
"""Measure wetlite's hot paths against floors and peers in the same run.

    python scripts/bench.py [--quick] [--json-only] [--no-pin] [--only PARTS] [--env-numpy V]

Everything is a ratio to something measured in the same run, on the same
interpreter, because this machine is shared and noisy:

  import     `import wetlite`, cumulative (python -X importtime, cached
             bytecode), median of several runs; goal <= 10 ms.
  reuse      `mgr.create(name, deps)` returning an existing environment (the
             recipe check, lock and record read; no tool call); goal <= 20 ms.
  call       a trivial call's round trip through `env.execute`, and through
             an `import_module` proxy, against a bare multiprocessing.connection
             ping-pong (the floor) and execnet / rpyc when installed.  Medians
             and p99 over many calls, in alternating rounds, with both
             processes pinned to one CPU.  Goals: execute <= 1.3x the floor,
             proxy <= 1.1x execute.
  pipeline   calls/s with `submit` keeping many calls in flight, against
             sequential `execute`.
  method     a method call on a RemoteObject (`ref=True`), in the call
             rounds, against `execute`; goal <= 1.1x.
  progress   a call that calls `wetlite.report_progress` 100,000 times,
             against the same call without the reports (each item does
             ~2 us of work, see BENCH_FUNCS); goal <= 1.2x.  Also the cost
             of one report, from the difference.
  map        `env.map` of 10,000 trivial calls on one worker, against a loop of
             `execute`: pinned to one CPU, and unpinned; goal >= 0.8x.
  pool       a CPU-bound pure-Python call (~20 ms) over 200 inputs with
             `env.map`, 2 workers against 1, unpinned (each worker needs a
             CPU); goal >= 1.7x on 2 cores.
  cancel     `task.cancel()` to the task ending cancelled: a call that polls
             `cancel_requested()` (cooperative), and one blocked in
             `time.sleep` with cancel_grace=0 (interrupted; the default
             grace adds 2 s).
  cold       launch to first result, against a bare `python -c "import
             wetlite"` of the same interpreter; goal <= 2x.
  large      a 64 MiB float64 array as the argument (its sum comes back) and
             as argument and result (echo), against the memcpy limit: one
             in-process `np.copyto(b, a)` into a preallocated, warm `b` (a.copy()
             also pays page faults for fresh memory: too soft a baseline).
             Goals: sum <= 2x and echo <= 3.5x.  Also the sum's floor through
             shared memory: the copy into a warm segment and numpy.sum over
             a second mapping of it, in this process, no call (4 KiB pages
             read slower than NumPy's huge pages).  Then arguments of 64 KiB
             to 4 MiB in-band and through shared memory: where the threshold
             goes.
             Needs NumPy in the host (installed in the bench environment from
             PyPI or pip's cache; --env-numpy picks another version there, to
             time arrays crossing NumPy versions).
  faults     how fast failures are noticed (the tests only check that they
             are, with "did not hang" bounds): a worker killed mid-call to
             WorkerDied, a call's 0.3 s timeout to CallTimeout (the overshoot),
             a worker that dies while starting to WorkerDied; and prints of a
             call reaching the output callback (lines/s).

    --only call,large   runs only those parts (import, reuse, call, pipeline,
                        progress, cancel, map, pool, cold, large, faults).
    --against FILE      also times the trivial call against another wetlite.py
                        (say main's) in paired rounds: this / that, median.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import wetlite  # noqa: E402

FLOOR_SERVER = r"""
import sys
from multiprocessing.connection import Client
conn = Client(sys.argv[1], "AF_UNIX", authkey=bytes.fromhex(sys.argv[2]))
while True:
    try:
        conn.send(conn.recv())
    except EOFError:
        break
"""


BENCH_FUNCS = r"""
import time
import wetlite


class Box(object):
    def get(self, x):
        return x


def items(count, report):
    total = 0
    for i in range(count):
        total += sum(range(100))                # ~2 us of work per item
        if report:
            wetlite.report_progress(i + 1, count, "items")
    return total


def spin():
    wetlite.report_progress(0, 1, "started")
    while not wetlite.cancel_requested():
        pass
    return "stopped"


def block():
    wetlite.report_progress(0, 1, "started")
    time.sleep(60)


def burn(n):
    total = 0
    for i in range(n):
        total += i * i
    return total
"""


def write_funcs(root):
    path = os.path.join(root, "bench_funcs.py")
    with open(path, "w") as f:
        f.write(BENCH_FUNCS)
    return path


def pct(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench_import(runs):
    cache = tempfile.mkdtemp(prefix="wetlite-bench-pycache-")
    env = dict(os.environ, PYTHONPYCACHEPREFIX=cache, PYTHONPATH=REPO)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        subprocess.run([sys.executable, "-c", "import wetlite"], env=env, check=True)
        samples = []
        for _ in range(runs):
            err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import wetlite"], env=env,
                                 stderr=subprocess.PIPE, check=True).stderr.decode()
            for line in err.splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) == 3 and parts[2] == "wetlite":
                    samples.append(int(parts[1]) / 1000.0)
        return {"median_ms": statistics.median(samples), "min_ms": min(samples), "runs": len(samples)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def bench_reuse(root, runs):
    deps = {"pip": ["wetlite-bench-not-on-the-host>=1"]}
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    recipe = mgr._recipe(deps, None)
    # A venv plus the record create() writes: the bench measures reuse, not pip.
    prefix = os.path.join(root, "envs", "reuse")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", prefix], check=True)
    wetlite._write_json(mgr._record_path("reuse"), {
        "name": "reuse", "tool": "venv", "dir": prefix, "prefix": prefix, "manifest": None,
        "python": wetlite._env_python(prefix, "venv"), "recipe_hash": recipe["hash"],
        "recipe": recipe["identity"], "state": "ready", "python_version": "%d.%d.%d" % sys.version_info[:3]})
    cold, warm = [], []
    for _ in range(runs):
        start = time.perf_counter()
        env = wetlite.EnvironmentManager(root=root, tool="venv").create("reuse", deps)
        cold.append((time.perf_counter() - start) * 1000)
        assert env.path == prefix
    for _ in range(runs):
        start = time.perf_counter()
        mgr.create("reuse", deps)
        warm.append((time.perf_counter() - start) * 1000)
    return {"fresh_manager_median_ms": statistics.median(cold), "fresh_manager_p90_ms": pct(cold, 0.9),
            "same_manager_median_ms": statistics.median(warm), "runs": runs}


def start_floor(python):
    from multiprocessing.connection import Listener
    key = os.urandom(32)
    sock_dir = tempfile.mkdtemp(prefix="wetlite-bench-")
    address = os.path.join(sock_dir, "floor.sock")
    listener = Listener(address, "AF_UNIX", authkey=key)
    proc = subprocess.Popen([python, "-c", FLOOR_SERVER, address, key.hex()])
    conn = listener.accept()
    listener.close()
    shutil.rmtree(sock_dir, ignore_errors=True)
    return proc, conn


def start_execnet(python):
    try:
        import execnet
    except ImportError:
        return None
    gateway = execnet.makegateway("popen//python=%s" % python)
    channel = gateway.remote_exec("while 1:\n    channel.send(channel.receive())")
    return gateway, channel


def start_rpyc():
    try:
        import rpyc
    except ImportError:
        return None
    try:
        return rpyc.classic.connect_subproc()
    except Exception:
        return None


def timed(fn, n):
    samples = []
    perf = time.perf_counter
    for _ in range(n):
        start = perf()
        fn()
        samples.append(perf() - start)
    return samples


def bench_calls(env, rounds, per_round, funcs):
    floor_proc, floor = start_floor(env.python)
    execnet_peer = start_execnet(env.python)
    rpyc_conn = start_rpyc()
    env.launch()
    proxy = env.import_module("builtins")
    box = env.execute(funcs, "Box", ref=True)
    message = ("call", 1, "builtins", "abs", b"x" * 20)
    runners = {
        "floor": lambda: (floor.send(message), floor.recv()),
        "execute": lambda: env.execute("builtins", "abs", (-1,)),
        "proxy": lambda: proxy.abs(-1),
        "method": lambda: box.get(-1),
    }
    if execnet_peer is not None:
        channel = execnet_peer[1]
        runners["execnet"] = lambda: (channel.send(message), channel.receive())
    if rpyc_conn is not None:
        remote_abs = rpyc_conn.modules.builtins.abs
        runners["rpyc"] = lambda: remote_abs(-1)
    samples = {name: [] for name in runners}
    for name, fn in runners.items():
        timed(fn, per_round)                        # warm up
    for _ in range(rounds):
        for name, fn in runners.items():            # alternate, so drift hits everyone alike
            samples[name].extend(timed(fn, per_round))
    floor.close()
    floor_proc.wait()
    if execnet_peer is not None:
        execnet_peer[0].exit()
    if rpyc_conn is not None:
        rpyc_conn.close()
    result = {name: {"median_us": statistics.median(s) * 1e6, "p99_us": pct(s, 0.99) * 1e6, "calls": len(s)}
              for name, s in samples.items()}
    base = result["floor"]["median_us"]
    for name in result:
        result[name]["x_floor"] = result[name]["median_us"] / base
    result["proxy"]["x_execute"] = result["proxy"]["median_us"] / result["execute"]["median_us"]
    result["method"]["x_execute"] = result["method"]["median_us"] / result["execute"]["median_us"]
    box.release()
    return result


def bench_against(path, python, rounds, per_round):
    """The trivial call's round trip, this wetlite against another wetlite.py (e.g. main's), in paired
    rounds: both loaded in this process, one worker each, alternating."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("wetlite_baseline", path)
    baseline = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = baseline
    spec.loader.exec_module(baseline)
    root = tempfile.mkdtemp(prefix="wetlite-bench-against-")
    try:
        subprocess.run([python, "-m", "venv", "--without-pip", os.path.join(root, "venv")], check=True)
        envs = {}
        for label, module in (("this", wetlite), ("baseline", baseline)):
            mgr = module.EnvironmentManager(root=os.path.join(root, label), tool="venv")
            envs[label] = mgr.load("against", os.path.join(root, "venv"))
            envs[label].launch()
        ratios = []
        for _ in range(rounds):
            medians = {label: statistics.median(timed(lambda: env.execute("builtins", "abs", (-1,)), per_round))
                       for label, env in envs.items()}
            ratios.append(medians["this"] / medians["baseline"])
        for env in envs.values():
            env.exit()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios.sort()
    return {"baseline": os.path.abspath(path), "rounds": rounds, "median_ratio": statistics.median(ratios),
            "q1_ratio": ratios[len(ratios) // 4], "q3_ratio": ratios[3 * len(ratios) // 4]}


def bench_progress(env, funcs, runs, count=100000):
    """The same call with and without 100,000 progress reports, alternating."""
    env.execute(funcs, "items", (1000, True))
    plain, reporting, received = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        env.execute(funcs, "items", (count, False))
        plain.append(time.perf_counter() - start)
        seen = []
        start = time.perf_counter()
        env.execute(funcs, "items", (count, True), progress=lambda task, progress: seen.append(progress))
        reporting.append(time.perf_counter() - start)
        received.append(len(seen))
    result = {"plain_ms": statistics.median(plain) * 1000, "reporting_ms": statistics.median(reporting) * 1000,
              "reports_received_median": statistics.median(received), "reports_sent": count, "runs": runs}
    result["x_plain"] = result["reporting_ms"] / result["plain_ms"]
    result["ns_per_report"] = (result["reporting_ms"] - result["plain_ms"]) * 1e6 / count
    return result


def bench_map(env, calls, rounds, cpus):
    """map of trivial calls on one worker against a loop of execute, pinned, then on every CPU."""
    out = {}
    for label, affinity in (("pinned", None), ("unpinned", cpus)):
        if affinity is not None:
            pinned = os.sched_getaffinity(0)
            os.sched_setaffinity(0, affinity)
            env.exit()                              # the worker inherits the affinity when it starts
        env.launch()
        loop, mapped = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(calls):
                env.execute("builtins", "abs", (i,))
            loop.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in env.map("builtins", "abs", range(calls)):
                pass
            mapped.append(time.perf_counter() - start)
        out[label] = {"loop_calls_per_s": calls / statistics.median(loop),
                      "map_calls_per_s": calls / statistics.median(mapped),
                      "x_loop": statistics.median(loop) / statistics.median(mapped)}
        if affinity is not None:
            os.sched_setaffinity(0, pinned)
            env.exit()
    out["calls"], out["rounds"] = calls, rounds
    return out


def bench_pool(env, funcs, cpus, inputs=200, rounds=3):
    """A ~20 ms CPU-bound call over ``inputs`` with env.map: 2 workers against 1, on every CPU."""
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        env.exit()
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_funcs_host", funcs)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        start = time.perf_counter()
        mod.burn(200000)
        n = int(200000 * 0.020 / (time.perf_counter() - start))      # ~20 ms here
        times = {}
        for workers in (1, 2, 1, 2):                # alternate: drift hits both alike
            env.launch(workers=workers)
            list(env.map(funcs, "burn", [n] * (2 * workers)))       # warm
            start = time.perf_counter()
            for _ in env.map(funcs, "burn", [n] * inputs):
                pass
            times.setdefault(workers, []).append(time.perf_counter() - start)
        env.launch(workers=1)
    finally:
        os.sched_setaffinity(0, pinned)
        env.exit()
    one, two = min(times[1]), min(times[2])
    return {"call_ms": 1000 * one / inputs, "one_worker_per_s": inputs / one, "two_workers_per_s": inputs / two,
            "x_one": one / two, "inputs": inputs, "cpus": len(cpus)}


def bench_cancel(env, funcs, runs):
    """cancel() to cancelled, for a cooperative call and for one that must be interrupted."""
    import concurrent.futures
    out = {}
    for label, function, grace in (("cooperative", "spin", 60.0), ("interrupted", "block", 0.0)):
        samples = []
        for _ in range(runs):
            task = env.submit(funcs, function, cancel_grace=grace)
            while task.progress is None:            # started (its first report arrived)
                time.sleep(0.001)
            start = time.perf_counter()
            task.cancel()
            try:
                task.result(timeout=30)
            except concurrent.futures.CancelledError:
                pass
            samples.append(time.perf_counter() - start)
        out[label + "_ms"] = statistics.median(samples) * 1000
    out["runs"] = runs
    return out


def bench_pipeline(env, calls):
    start = time.perf_counter()
    for _ in range(calls):
        env.execute("builtins", "abs", (-1,))
    sequential = calls / (time.perf_counter() - start)
    start = time.perf_counter()
    futures = [env.submit("builtins", "abs", (-1,)) for _ in range(calls)]
    for f in futures:
        f.result()
    pipelined = calls / (time.perf_counter() - start)
    return {"sequential_calls_per_s": sequential, "submit_calls_per_s": pipelined,
            "x_sequential": pipelined / sequential, "calls": calls}


def bench_cold(env, runs):
    runtime = wetlite._runtime_dir(env.manager.root)
    bare_env = dict(os.environ, PYTHONPATH=runtime)
    bare_env.pop("PYTHONDONTWRITEBYTECODE", None)   # both sides get cached bytecode, as the worker does
    subprocess.run([env.python, "-c", "import wetlite"], env=bare_env, check=True)
    bare, cold = [], []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([env.python, "-c", "import wetlite"], env=bare_env, check=True)
        bare.append(time.perf_counter() - start)
        env.exit()
        start = time.perf_counter()
        env.launch()
        env.execute("builtins", "abs", (-1,))
        cold.append(time.perf_counter() - start)
    return {"bare_import_median_ms": statistics.median(bare) * 1000,
            "launch_to_first_result_median_ms": statistics.median(cold) * 1000,
            "x_bare": statistics.median(cold) / statistics.median(bare), "runs": runs}


def bench_large(mgr, runs, env_numpy=None):
    """64 MiB float64 arrays through shared memory, against the memcpy limit."""
    try:
        import numpy
    except ImportError:
        return {"skipped": "numpy is not installed in the host"}
    version = env_numpy or numpy.__version__
    try:
        env = mgr.create("large", {"pip": ["numpy==%s" % version]}, force_external=True)
    except wetlite.WetliteError as exc:
        return {"skipped": "cannot install numpy in the bench environment: %s" % exc}
    env.launch()
    a = numpy.random.rand(8 * 1024 * 1024)
    b = numpy.empty_like(a)
    for _ in range(3):                      # warm: segments, mappings, b's pages
        env.execute("numpy", "sum", (a,))
        env.execute("numpy", "asarray", (a,))
        numpy.copyto(b, a)
    memcpy, copy, total, echo = [], [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        numpy.copyto(b, a)
        memcpy.append(time.perf_counter() - start)
        start = time.perf_counter()
        c = a.copy()
        copy.append(time.perf_counter() - start)
        del c
        start = time.perf_counter()
        env.execute("numpy", "sum", (a,))
        total.append(time.perf_counter() - start)
        start = time.perf_counter()
        c = env.execute("numpy", "asarray", (a,))
        echo.append(time.perf_counter() - start)
        del c
    result = {"memcpy_ms": statistics.median(memcpy) * 1000, "copy_ms": statistics.median(copy) * 1000,
              "sum_ms": statistics.median(total) * 1000, "echo_ms": statistics.median(echo) * 1000,
              "runs": runs, "env_numpy": version, "host_numpy": numpy.__version__,
              "shared_memory": env._worker.shm_pool is not None}
    result["sum_x_memcpy"] = result["sum_ms"] / result["memcpy_ms"]
    result["echo_x_memcpy"] = result["echo_ms"] / result["memcpy_ms"]
    result.update(shm_floor(numpy, a, b, runs))
    # Where shared memory starts to pay: arguments of each size, in-band against out of band.
    sweep = {}
    saved = wetlite._SHM_THRESHOLD
    try:
        for size in (64 << 10, 256 << 10, 1 << 20, 4 << 20):
            x = numpy.random.rand(size // 8)
            row = {}
            for label, threshold in (("in_band_us", 1 << 62), ("shm_us", 1)):
                wetlite._SHM_THRESHOLD = threshold
                env.execute("numpy", "sum", (x,))
                row[label] = statistics.median(timed(lambda: env.execute("numpy", "sum", (x,)), 30)) * 1e6
            sweep[str(size)] = row
    finally:
        wetlite._SHM_THRESHOLD = saved
    result["threshold_sweep"] = sweep
    env.exit()
    return result


def shm_floor(numpy, a, b, runs):
    """What the sum cannot go below through shared memory, in this process: the copy into a warm
    segment, then numpy.sum over a second mapping of it (as the worker has), against the same memcpy.
    Segments are 4 KiB pages where /dev/shm has no huge pages, and reading them is slower than reading
    NumPy's own (transparent huge page) memory."""
    if os.name != "posix":
        return {}
    import mmap
    import _posixshmem
    from multiprocessing import shared_memory
    segment = shared_memory.SharedMemory(create=True, size=a.nbytes)
    fd = _posixshmem.shm_open(segment._name, os.O_RDWR, 0o600)
    try:
        second = mmap.mmap(fd, a.nbytes)
    finally:
        os.close(fd)
    try:
        into, out_of = numpy.frombuffer(segment.buf, a.dtype), numpy.frombuffer(second, a.dtype)
        memcpy, floor = [], []
        for i in range(runs + 3):                   # three to warm the pages and mappings
            start = time.perf_counter()
            numpy.copyto(b, a)
            middle = time.perf_counter()
            numpy.copyto(into, a)
            numpy.sum(out_of)
            if i >= 3:
                memcpy.append(middle - start)
                floor.append(time.perf_counter() - middle)
        del into, out_of
        return {"shm_floor_ms": statistics.median(floor) * 1000,
                "shm_floor_x_memcpy": statistics.median(floor) / statistics.median(memcpy)}
    finally:
        second.close()
        segment.close()
        segment.unlink()


def bench_faults(mgr, env, runs):
    """Time to notice a killed worker, a timeout's overshoot, a failed start; output throughput."""
    import signal
    import threading
    helper = os.path.join(REPO, "tests", "executor_data", "worker_helpers.py")
    killed, overshoot, failed_start = [], [], []
    for _ in range(runs):
        env.launch()
        marker = os.path.join(mgr.root, "running")
        pid = env._worker.proc.pid
        at = {}

        def kill():
            while not os.path.exists(marker):
                time.sleep(0.001)
            at["t"] = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
        threading.Thread(target=kill).start()
        try:
            env.execute(helper, "mark_and_sleep", (marker, 60))
        except wetlite.WorkerDied:
            killed.append(time.perf_counter() - at["t"])
        os.remove(marker)
        start = time.perf_counter()
        try:
            env.execute("time", "sleep", (30,), timeout=0.3)
        except wetlite.CallTimeout:
            overshoot.append(time.perf_counter() - start - 0.3)
        broken = mgr.load("broken", env.path)
        broken._worker_argv = lambda: [env.python, "-c", "import sys; sys.exit(5)"]
        start = time.perf_counter()
        try:
            broken.launch(timeout=60)
        except wetlite.WorkerDied:
            failed_start.append(time.perf_counter() - start)
        mgr.environments.pop("broken", None)
    lines = []
    out = mgr.load("printer", env.path)
    out.launch(output=lines.append)
    count = 100000
    start = time.perf_counter()
    out.execute(helper, "print_lines", (count, 99))
    while len(lines) < count and time.perf_counter() - start < 120:
        time.sleep(0.01)
    took = time.perf_counter() - start
    out.exit()
    return {"killed_to_worker_died_median_ms": statistics.median(killed) * 1000,
            "timeout_overshoot_median_ms": statistics.median(overshoot) * 1000,
            "failed_start_to_worker_died_median_ms": statistics.median(failed_start) * 1000,
            "output_lines_per_s": len(lines) / took, "runs": runs}


PARTS = ("import", "reuse", "call", "pipeline", "progress", "cancel", "map", "pool", "cold", "large",
         "faults")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the processes to one CPU")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run (default: all)")
    parser.add_argument("--env-numpy", help="the NumPy version in the large-data environment (default: the host's)")
    parser.add_argument("--against", metavar="WETLITE_PY", help="also time trivial calls against this other "
                        "wetlite.py (e.g. `git show main:wetlite.py > /tmp/main.py`), in paired rounds")
    args = parser.parse_args()
    only = set(args.only.split(","))
    unknown = only - set(PARTS)
    if unknown:
        parser.error("unknown part(s): %s (choose from %s)" % (", ".join(sorted(unknown)), ", ".join(PARTS)))
    scale = 1 if args.quick else 4
    pinned = False
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})     # children inherit it
        pinned = True
    root = tempfile.mkdtemp(prefix="wetlite-bench-")
    try:
        results = {"python": "%d.%d.%d" % sys.version_info[:3], "wetlite": wetlite.__version__, "pinned": pinned}
        if "import" in only:
            results["import"] = bench_import(5 * scale)
        if "reuse" in only:
            results["reuse"] = bench_reuse(root, 50 * scale)
        mgr = wetlite.EnvironmentManager(root=root, tool="venv")
        if only & {"call", "pipeline", "progress", "cancel", "map", "pool", "cold", "faults"}:
            env = mgr.create("bench", force_external=True)
            funcs = write_funcs(root)
            if "call" in only:
                results["call"] = bench_calls(env, rounds=5 * scale, per_round=500, funcs=funcs)
            if "pipeline" in only:
                results["pipeline"] = bench_pipeline(env, 2000 * scale)
            if "progress" in only:
                results["progress"] = bench_progress(env, funcs, 3 * scale)
            if "cancel" in only:
                results["cancel"] = bench_cancel(env, funcs, 5 * scale)
            if cpus is not None and "map" in only:
                results["map"] = bench_map(env, 10000, 2 * scale, cpus)
            if cpus is not None and "pool" in only:
                results["pool"] = bench_pool(env, funcs, cpus)
            if "cold" in only:
                results["cold"] = bench_cold(env, 5 * scale)
            if "faults" in only:
                results["faults"] = bench_faults(mgr, env, 2 * scale)
        if "large" in only:
            results["large"] = bench_large(mgr, 5 * scale, args.env_numpy)
        if args.against:
            results["against"] = bench_against(args.against, sys.executable, 15 * scale, 200)
        mgr.exit()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not args.json_only:
        rows = []
        if "import" in results:
            rows.append(("import wetlite (cumulative)", "%.2f ms" % results["import"]["median_ms"], "goal <= 10 ms"))
        if "reuse" in results:
            rows.append(("create() reuse, fresh manager", "%.2f ms" % results["reuse"]["fresh_manager_median_ms"],
                         "goal <= 20 ms"))
            rows.append(("create() reuse, same manager", "%.2f ms" % results["reuse"]["same_manager_median_ms"], ""))
        call = results.get("call")
        if call:
            for name in ("floor", "execute", "proxy", "method", "execnet", "rpyc"):
                if name in call:
                    rows.append(("round trip: %s (median / p99)" % name,
                                 "%.1f / %.1f us" % (call[name]["median_us"], call[name]["p99_us"]),
                                 "%.2fx floor" % call[name]["x_floor"]))
            rows.append(("proxy / execute", "%.2fx" % call["proxy"]["x_execute"], "goal <= 1.1x"))
            rows.append(("execute / floor", "%.2fx" % call["execute"]["x_floor"], "goal <= 1.3x"))
            rows.append(("RemoteObject method / execute", "%.2fx" % call["method"]["x_execute"], "goal <= 1.1x"))
        if "progress" in results:
            pr = results["progress"]
            rows.append(("100,000 progress reports", "%.1f / %.1f ms" % (pr["reporting_ms"], pr["plain_ms"]),
                         "%.2fx without, %.0f ns a report (%d received); goal <= 1.2x"
                         % (pr["x_plain"], pr["ns_per_report"], pr["reports_received_median"])))
        if "cancel" in results:
            ca = results["cancel"]
            rows.append(("cancel() to cancelled: cooperative", "%.2f ms" % ca["cooperative_ms"], ""))
            rows.append(("cancel() to cancelled: interrupted", "%.2f ms" % ca["interrupted_ms"], "cancel_grace=0"))
        if "map" in results:
            for label in ("pinned", "unpinned"):
                m = results["map"][label]
                rows.append(("map of 10,000 on one worker, %s" % label, "%.0f calls/s" % m["map_calls_per_s"],
                             "%.2fx a loop of execute (%.0f/s); goal >= 0.8x" % (m["x_loop"], m["loop_calls_per_s"])))
        if "pool" in results:
            po = results["pool"]
            rows.append(("pool: %.0f ms calls, 2 workers" % po["call_ms"], "%.1f calls/s" % po["two_workers_per_s"],
                         "%.2fx one worker (%.1f/s), %d CPUs; goal >= 1.7x"
                         % (po["x_one"], po["one_worker_per_s"], po["cpus"])))
        if "pipeline" in results:
            p = results["pipeline"]
            rows.append(("submit pipelining", "%.0f calls/s" % p["submit_calls_per_s"],
                         "%.2fx sequential (%.0f/s)" % (p["x_sequential"], p["sequential_calls_per_s"])))
        if "cold" in results:
            c = results["cold"]
            rows.append(("cold start to first result", "%.1f ms" % c["launch_to_first_result_median_ms"],
                         "%.2fx bare import (%.1f ms); goal <= 2x" % (c["x_bare"], c["bare_import_median_ms"])))
        if "against" in results:
            a = results["against"]
            rows.append(("round trip: this / %s" % os.path.basename(a["baseline"]), "%.3fx" % a["median_ratio"],
                         "quartiles %.3f-%.3f over %d paired rounds" % (a["q1_ratio"], a["q3_ratio"], a["rounds"])))
        large = results.get("large")
        if large and "skipped" in large:
            rows.append(("64 MiB arrays", "skipped", large["skipped"]))
        elif large:
            rows.append(("64 MiB memcpy: np.copyto(b, a)", "%.1f ms" % large["memcpy_ms"],
                         "(a.copy(): %.1f ms)" % large["copy_ms"]))
            rows.append(("64 MiB sum (argument only)", "%.1f ms" % large["sum_ms"],
                         "%.2fx memcpy; goal <= 2x" % large["sum_x_memcpy"]))
            rows.append(("64 MiB echo (argument and result)", "%.1f ms" % large["echo_ms"],
                         "%.2fx memcpy; goal <= 3.5x" % large["echo_x_memcpy"]))
            if "shm_floor_ms" in large:
                rows.append(("  floor: copy into shm + sum there", "%.1f ms" % large["shm_floor_ms"],
                             "%.2fx memcpy (in this process, no call)" % large["shm_floor_x_memcpy"]))
            rows.append(("  NumPy host / environment", "%s / %s" % (large["host_numpy"], large["env_numpy"]), ""))
            for size, row in sorted(large["threshold_sweep"].items(), key=lambda kv: int(kv[0])):
                rows.append(("  %d KiB argument: in-band / shm" % (int(size) >> 10),
                             "%.0f / %.0f us" % (row["in_band_us"], row["shm_us"]), ""))
        if "faults" in results:
            f = results["faults"]
            rows.append(("worker killed mid-call -> WorkerDied", "%.1f ms" % f["killed_to_worker_died_median_ms"],
                         ""))
            rows.append(("0.3 s timeout -> CallTimeout, overshoot", "%.1f ms" % f["timeout_overshoot_median_ms"], ""))
            rows.append(("worker dies starting -> WorkerDied", "%.1f ms" % f["failed_start_to_worker_died_median_ms"],
                         ""))
            rows.append(("prints reaching the output callback", "%.0f lines/s" % f["output_lines_per_s"], ""))
        width = max(len(r[0]) for r in rows)
        for label, value, note in rows:
            print("%-*s  %18s  %s" % (width, label, value, note))
        print()
    print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
