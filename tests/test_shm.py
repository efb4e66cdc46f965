"""Large arguments and results through shared memory: round trips, ownership, leaks, fallbacks."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import HANG, HERE, REPO, import_requirement, local_interpreters, skip_unless_ci, wait_for, wetlite

FUNCS = os.path.join(HERE, "shm_funcs.py")
BIG = 4 * wetlite._SHM_THRESHOLD
SHM_DIR = "/dev/shm"

pytestmark = pytest.mark.skipif(not wetlite._shm_available(), reason="no shared memory in this Python")


# wetlite's segments: "wl" + 8 hex digits + "h" (the host's) or "w" (a worker's) + "_N".  Other
# processes' segments come and go in /dev/shm too; they are none of these tests' business.
WETLITE_SEGMENT = re.compile(r"^wl[0-9a-f]{8}[hw]_[0-9]+$")


def shm_names():
    names = os.listdir(SHM_DIR) if os.path.isdir(SHM_DIR) else []
    return sorted(name for name in names if WETLITE_SEGMENT.match(name))


@pytest.fixture(scope="module")
def np():
    return import_requirement("numpy")


@pytest.fixture(scope="module")
def env(tmp_path_factory, np):
    """A venv environment with the host's NumPy (from PyPI or pip's cache)."""
    mgr = wetlite.EnvironmentManager(root=str(tmp_path_factory.mktemp("shm") / "root"), tool="venv")
    try:
        env = mgr.create("np", {"pip": ["numpy==%s" % np.__version__]}, force_external=True)
    except wetlite.CommandError as exc:
        skip_unless_ci("cannot install numpy in a test environment: %s" % exc)
    outputs = []
    env.launch(output=outputs.append)
    env.outputs = outputs
    yield env
    mgr.exit()


@pytest.fixture
def leak_check(monkeypatch):
    """Yield the set of segment-name stems ("wl" + 8 hex digits) of the pools the test makes; at
    its end, every segment of theirs is gone (a worker whose host died cleans up when it notices,
    a moment later).  Other processes' segments -- other test runs' too -- do not count."""
    stems = set()
    init = wetlite._ShmPool.__init__

    def recording(self, prefix):
        stems.add(prefix[:-1])                  # the host's pool ends in "h", its worker's in "w"
        init(self, prefix)
    monkeypatch.setattr(wetlite._ShmPool, "__init__", recording)
    yield stems

    def left():
        return [name for name in shm_names() if name[:10] in stems]
    assert wait_for(lambda: not left(), HANG), left()


def call(env, function, *args, **kwargs):
    return env.execute(FUNCS, function, args, kwargs)


# --- round trips -------------------------------------------------------------------

def test_bytes_bytearray_memoryview_round_trip(env):
    data = {
        "bytes": os.urandom(BIG),
        "bytearray": bytearray(os.urandom(BIG + 3)),
        "memoryview": memoryview(os.urandom(BIG)),
        "doubles": memoryview(bytearray(os.urandom(BIG))).cast("d"),
        "matrix": memoryview(bytearray(os.urandom(BIG))).cast("B", (1024, BIG // 1024)),
        "strided": memoryview(os.urandom(BIG))[::3],
        "small": [b"tiny", bytearray(b"small"), memoryview(b"view")],
    }
    back = call(env, "identity", data)
    for key in ("bytes", "bytearray"):
        assert type(back[key]) is type(data[key]) and back[key] == data[key]
    for key in ("memoryview", "doubles", "matrix", "strided"):
        assert isinstance(back[key], memoryview)
        assert back[key].tobytes() == data[key].tobytes()
        assert (back[key].format, back[key].shape) == (data[key].format, data[key].shape)
    assert back["small"][0] == b"tiny" and back["small"][1] == bytearray(b"small")
    assert back["small"][2].tobytes() == b"view"
    assert call(env, "describe", data["bytes"]) == ["bytes", BIG]


@pytest.mark.parametrize("dtype", ["float64", "float32", "int8", "uint16", "complex128", "bool"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_numpy_arrays_round_trip(env, np, dtype, order):
    rng = np.random.default_rng(7)
    a = np.asarray(rng.random((700, 900)) * 100, dtype=dtype, order=order)
    back = call(env, "identity", a)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, a)
    assert back.flags.writeable


def test_numpy_non_contiguous_and_nested(env, np):
    rng = np.random.default_rng(1)
    big = rng.random((1200, 1200))
    items = {
        "strided": big[::2, ::3],
        "transposed": big.T,
        "slices": [big[i * 100:(i + 1) * 100] for i in range(8)],      # many buffers in one call
        "tuple": (big.astype("float32"), {"deep": [big[:10], b"x" * BIG]}),
        "scalar": np.float64(3.5),
    }
    back = call(env, "identity", items)
    assert np.array_equal(back["strided"], items["strided"])
    assert np.array_equal(back["transposed"], items["transposed"])
    assert all(np.array_equal(x, y) for x, y in zip(back["slices"], items["slices"]))
    assert np.array_equal(back["tuple"][0], items["tuple"][0])
    assert np.array_equal(back["tuple"][1]["deep"][0], big[:10]) and back["tuple"][1]["deep"][1] == b"x" * BIG
    assert back["scalar"] == 3.5
    assert call(env, "total", big) == pytest.approx(float(big.sum()))


def test_big_buffers_travel_through_segments_and_small_ones_do_not(env, np):
    worker = env._worker
    assert worker.shm_pool is not None and worker.protocol >= 5
    before = call(env, "shm_state")
    call(env, "identity", np.zeros(10))
    assert call(env, "shm_state") == before                 # small: in-band, no segment
    a = np.ones(BIG // 8)
    assert np.array_equal(call(env, "identity", a), a)
    state = call(env, "shm_state")
    assert state["attached"] and state["owned"]             # it read our segment and answered in its own
    assert all(name.startswith(worker.shm_pool.prefix) for name in state["attached"])
    assert all(name.startswith(worker.shm_worker_prefix) for name in state["owned"])


def test_segments_are_reused(env, np):
    a = np.ones(BIG // 8)
    call(env, "identity", a)
    before = call(env, "shm_state")
    for i in range(5):
        assert call(env, "total", a * i) == pytest.approx(i * a.size)
        call(env, "identity", a)
    assert call(env, "shm_state") == before


def test_results_own_their_memory(env, np, tmp_path):
    a = np.arange(BIG // 8, dtype="float64")
    back = call(env, "identity", a)
    back[0] = -1.0                          # writable, and nobody else's memory
    again = call(env, "identity", a)
    assert again[0] == 0.0 and back[0] == -1.0
    env.exit()                              # every segment is unlinked now
    assert back[1:].sum() == a[1:].sum()
    env.launch(output=env.outputs.append)


def test_an_argument_the_worker_keeps_is_not_overwritten(env, np):
    first = np.full(BIG // 8, 1.0)
    index = call(env, "keep", first) - 1
    for value in (2.0, 3.0, 4.0):
        call(env, "identity", np.full(BIG // 8, value))
    assert call(env, "kept_sum", index) == pytest.approx(first.sum())


def test_views_the_worker_keeps_are_not_overwritten(env, np):
    # Only views of the argument are kept (and a memoryview of one): the segment stays lent.
    first = np.arange(BIG // 8, dtype="float64")
    expected = call(env, "keep_views", first)
    for value in (2.0, 3.0, 4.0):
        assert call(env, "total", np.full(BIG // 8, value)) == value * (BIG // 8)
    assert call(env, "kept_views_sums")[-1] == expected


def test_views_the_host_keeps_are_not_overwritten(env, np):
    worker = env._worker
    before = set(worker.shm_cache.lent)
    a = np.arange(BIG // 8, dtype="float64")
    back = call(env, "identity", a)
    kept = [back[::2], memoryview(back)[8:], np.frombuffer(back, dtype="u1")[16:]]
    expected = [kept[0].copy(), bytes(kept[1]), kept[2].copy()]
    del back                                # what it lends now hangs on the views alone
    for value in (5.0, 6.0, 7.0):
        assert np.array_equal(call(env, "identity", np.full(BIG // 8, value)), np.full(BIG // 8, value))
    assert np.array_equal(kept[0], expected[0]) and bytes(kept[1]) == expected[1]
    assert np.array_equal(kept[2], expected[2])
    lent = set(worker.shm_cache.lent) - before
    assert len(lent) == 1                   # only the kept one: the others came back at once
    del kept
    call(env, "total", a)                   # carries the release
    assert lent.isdisjoint(call(env, "shm_state")["busy"])


def test_results_are_built_on_the_segment_and_given_back(env, np):
    worker = env._worker
    before = set(worker.shm_cache.lent)
    a = np.ones(BIG // 8)
    back = call(env, "identity", a)
    names = set(worker.shm_cache.lent) - before
    assert names and not back.flags.owndata
    assert names <= set(call(env, "shm_state")["busy"])     # the worker leaves it alone
    del back
    assert names.isdisjoint(worker.shm_cache.lent)
    assert names.isdisjoint(call(env, "shm_state")["busy"])


def test_a_failed_call_gives_its_segments_back(env, np):
    pool = env._worker.shm_pool
    busy = set(pool.busy)                   # (arguments earlier tests' workers keep)
    with pytest.raises(wetlite.ExecutorError, match="could not be unpickled in the worker"):
        call(env, "identity", [np.ones(BIG // 8), Unimportable()])
    assert set(pool.busy) == busy and pool.free
    with pytest.raises(ValueError, match="refused"):
        call(env, "fail_with", np.ones(BIG // 8))
    assert set(pool.busy) == busy


class Unimportable(object):
    """Defined in the test module: the worker cannot import it."""


# --- cleanup -------------------------------------------------------------------

def test_no_leak_after_success_failure_and_timeout(tmp_path, env, np, leak_check):
    a = np.ones(BIG // 8)
    mgr = wetlite.EnvironmentManager(root=env.manager.root, tool="venv")
    other = mgr.get("np")
    try:
        assert other.execute(FUNCS, "total", (a,)) == a.size
        with pytest.raises(ValueError, match="refused"):
            other.execute(FUNCS, "fail_with", (a,))
        with pytest.raises(wetlite.CallTimeout):
            other.execute(FUNCS, "sleep_with", (a, 30), timeout=0.5)
        assert other.execute(FUNCS, "total", (a,)) == a.size
    finally:
        other.exit()


def test_no_leak_when_the_worker_is_killed_holding_blocks(env, np, leak_check):
    mgr = wetlite.EnvironmentManager(root=env.manager.root, tool="venv")
    other = mgr.get("np")
    try:
        assert len(other.execute(FUNCS, "big_result_then_die", (BIG,))) == BIG
        other.execute(FUNCS, "keep", (np.ones(BIG // 8),))
        assert other.execute(FUNCS, "shm_state")["owned"]
        with pytest.raises(wetlite.WorkerDied):
            other.execute(FUNCS, "die")
    finally:
        other.exit()


HOST = textwrap.dedent("""\
    import sys
    sys.path.insert(0, %(repo)r)
    import numpy, wetlite
    env = wetlite.EnvironmentManager(root=%(root)r, tool="venv").get("np")
    a = numpy.ones(%(n)d)
    print(env.execute(%(funcs)r, "total", (a,)))
    print(len(env.execute(%(funcs)r, "big_result_then_die", (%(big)d,))))
    print(env._worker.shm_pool.prefix[:-1])
    # no exit(): the interpreter's exit must stop the worker and free everything
    """)


def test_no_leak_and_no_tracker_warning_when_the_host_exits(env, np, leak_check):
    code = HOST % {"repo": REPO, "root": env.manager.root, "funcs": FUNCS, "n": BIG // 8, "big": BIG}
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    total, size, stem = proc.stdout.decode().split()
    assert (total, size) == (str(float(BIG // 8)), str(BIG))
    leak_check.add(stem)                        # its segments must go too, though the host is gone
    assert "resource_tracker" not in proc.stderr.decode() and "leaked" not in proc.stderr.decode()


def test_worker_reports_no_resource_tracker_warnings(env, np):
    """multiprocessing's resource tracker warns about leaked segments when the worker exits, so read the
    worker's output to its very end (its streams closed), not only what came so far."""
    outputs = []
    other = wetlite.EnvironmentManager(root=env.manager.root, tool="venv").get("np")
    other.launch(output=outputs.append)
    streams = (other._worker.proc.stdout, other._worker.proc.stderr)
    a = np.ones(BIG // 8)
    assert other.execute(FUNCS, "total", (a,)) == a.size
    assert np.array_equal(other.execute(FUNCS, "identity", (a,)), a)
    other.execute(FUNCS, "keep", (a,))
    other.exit()
    assert wait_for(lambda: all(stream.closed for stream in streams), 30), "the worker's output never ended"
    assert not [line for line in outputs if "resource_tracker" in line or "leaked" in line], outputs


# --- fallbacks ---------------------------------------------------------------------

def test_shared_memory_disabled_falls_back_in_band(env, np, monkeypatch, leak_check):
    monkeypatch.setenv("WETLITE_SHM", "0")
    mgr = wetlite.EnvironmentManager(root=env.manager.root, tool="venv")
    other = mgr.get("np")
    try:
        a = np.arange(BIG // 8, dtype="float64")
        assert np.array_equal(other.execute(FUNCS, "identity", (a,)), a)
        assert other._worker.shm_pool is None
        assert other.execute(FUNCS, "shm_state") == {"attached": [], "owned": [], "busy": []}
        view = memoryview(bytearray(b"abc" * BIG)).cast("B", (3, BIG))
        back = other.execute(FUNCS, "identity", (view,))
        assert back.tobytes() == view.tobytes() and back.shape == view.shape
    finally:
        other.exit()


def test_no_room_in_dev_shm_falls_back_in_band(env, np, monkeypatch, caplog, leak_check):
    monkeypatch.setattr(wetlite, "_shm_space_for", lambda size: False)
    mgr = wetlite.EnvironmentManager(root=env.manager.root, tool="venv")
    other = mgr.get("np")
    try:
        with caplog.at_level("DEBUG", logger="wetlite"):
            a = np.arange(BIG // 8, dtype="float64")
            assert np.array_equal(other.execute(FUNCS, "identity", (a,)), a)
        assert other._worker.shm_pool is not None and not other._worker.shm_pool.busy
        assert any("in-band" in r.getMessage() for r in caplog.records)
    finally:
        other.exit()


OLD = [(v, p) for v, p in local_interpreters() if v in ("3.6", "3.7")]


@pytest.mark.skipif(not OLD, reason="no Python 3.6 or 3.7 here")
def test_old_worker_gets_everything_in_band(tmp_path, leak_check):
    version, _ = OLD[0]
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.create("old", {"python": version}, force_external=True)
    try:
        data = [os.urandom(BIG), bytearray(os.urandom(BIG)), {"nested": (b"y" * BIG,)}]
        back = env.execute(FUNCS, "identity", (data,))
        assert back == data
        assert env._worker.protocol <= 4 and env._worker.shm_pool is None
        assert env.execute(FUNCS, "describe", (memoryview(b"z" * BIG),)) == ["memoryview", BIG]
    finally:
        mgr.exit()
