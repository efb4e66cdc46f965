"""NumPy arrays and scalars across NumPy versions.

The host (NumPy 2, requirements-test.txt) exchanges every dtype with workers
on real NumPy 1.x and 2.x wheels from PyPI, both ways, in-band and through
shared memory, and checks them exactly: values, dtype, shape, layout, scalar
type.  The environments are built once per session, with wetlite's own venv
tool, as a user would.  They skip only when PyPI cannot be reached.

The in-process tests at the top need no environment: the neutral form for
every dtype, the lending of shared-memory segments and its safety.
"""
import collections
import concurrent.futures
import functools
import importlib.util
import os
import subprocess
import sys
import textwrap
import types

import pytest

from conftest import HERE, REPO, local_interpreters, needs, skip_unless_ci, wetlite

try:
    import numpy as np
except ImportError:
    np = None
pytestmark = needs(np is not None, "numpy is not installed: python -m pip install -r requirements-test.txt")

CASES = os.path.join(HERE, "executor_data", "numpy_cases.py")
if np is not None:
    _spec = importlib.util.spec_from_file_location("numpy_cases", CASES)
    cases = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(cases)
    NAMES = cases.NAMES
else:
    NAMES = ["float64"]         # collected, then skipped (failed in CI) by pytestmark

# name -> (Python, NumPy): a 1.x and a 2.x other than the host's, on workers
# with shared memory (3.8+), and a 3.6 worker (pickle protocol 4, in-band only).
ENVIRONMENTS = {"numpy1": ("3.8", "1.24.4"), "numpy2": ("3.12", "2.0.2"), "numpy1-py36": ("3.6", "1.19.5")}
SHM = wetlite._shm_available()


@functools.lru_cache(maxsize=None)
def made_and_expected(name):
    """The host's cases for one dtype, and what they must look like on the other side (built once)."""
    made = cases.cases(name)
    return made, cases.describe_sent_cases(made)


# --- in process: the neutral form and the lending of segments ----------------------

def round_trip(obj, protocol, pool=None, cache=None):
    payload = wetlite._dumps_payload(obj, protocol, pool)
    assert type(payload) is tuple and payload[3] == np.__version__
    return wetlite._loads_payload(payload, cache)


@pytest.fixture
def shm():
    """A pool and a cache in this process, as the two sides of a connection have."""
    if not SHM:
        pytest.skip("no shared memory in this Python")
    pool = wetlite._ShmPool("wltest%s" % os.urandom(3).hex())
    cache = wetlite._ShmCache()
    yield pool, cache
    cache.close()
    pool.close()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("path", ["protocol 4", "protocol 5 in-band", "shared memory"])
def test_every_dtype_round_trips_in_process(name, path, request):
    made, expected = made_and_expected(name)
    if path == "shared memory":
        pool, cache = request.getfixturevalue("shm")
        back = round_trip(made, 5, pool, cache)
    else:
        back = round_trip(made, 4 if path == "protocol 4" else 5)
    assert cases.describe_cases(back) == expected


def test_the_pickle_names_no_numpy_module(shm):
    # What makes it neutral: no numpy.core / numpy._core path in the stream.
    pool, cache = shm
    for name in NAMES:
        for label, obj in made_and_expected(name)[0].items():
            for protocol, p in ((4, None), (5, None), (5, pool)) if "big" not in label else ((5, pool),):
                data = wetlite._dumps_payload([obj], protocol, p)
                assert b"numpy" not in data[1], (name, obj)
                pool.release([ref[0] for ref in data[2]])


def test_numpy_scalars_as_dict_keys_are_neutral_too():
    # Keys such as np.unique()'s labels: a dict whose values are plain must not
    # skip the neutral form because of its keys.
    for obj in ({np.int64(3): "three"}, [{np.float32(0.5): None}], ({np.str_("k"): 1},)):
        for protocol in (4, 5):
            payload = wetlite._dumps_payload(obj, protocol, None)
            assert type(payload) is tuple and b"numpy" not in payload[1], (obj, protocol)
            back = wetlite._loads_payload(payload, None)
            assert back == obj and [type(k) for k in _keys(back)] == [type(k) for k in _keys(obj)]


def _keys(obj):
    while not isinstance(obj, dict):
        obj = obj[0]
    return list(obj)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")      # numpy.matrix
def test_object_arrays_and_subclasses_keep_numpy_pickle():
    matrix = np.asmatrix(np.eye(2))
    for obj in (np.array([1, "a", None], dtype=object), matrix, np.ma.masked_array([1, 2], mask=[0, 1]),
                np.rec.array([(1, 2.0)], dtype=[("x", "i4"), ("y", "f8")])):
        payload = wetlite._dumps_payload([obj], 5, None)
        assert b"numpy" in payload[1]
        back = wetlite._loads_payload(payload, None)[0]
        assert type(back) is type(obj) and back.dtype == obj.dtype
        assert back.tolist() == obj.tolist()


def test_longdouble_of_another_size_is_a_clear_error():
    other = "<f12" if np.dtype(np.longdouble).itemsize == 16 else "<f16"
    with pytest.raises(ValueError, match=r"longdouble array of %s bytes .* convert it to float64" % other[2:]):
        wetlite._spec_dtype(np, other)
    with pytest.raises(ValueError, match="clongdouble"):
        wetlite._spec_dtype(np, other.replace("f", "c"))


def test_a_numpy_version_mismatch_is_explained():
    missing = ModuleNotFoundError("No module named 'numpy._core'", name="numpy._core")
    hint = wetlite._numpy_mismatch("2.9.0", missing)
    assert "NumPy 2.9.0" in hint and "NumPy %s here" % np.__version__ in hint
    assert "numpy.asarray" in hint and "numpy==2.9.0" in hint
    assert wetlite._numpy_mismatch(np.__version__, missing) is None           # same version: something else
    assert wetlite._numpy_mismatch("2.9.0", ModuleNotFoundError("No module named 'mylib'", name="mylib")) is None
    assert wetlite._numpy_mismatch(None, missing) is None


def test_a_lent_segment_comes_back_only_when_every_view_is_gone(shm):
    pool, cache = shm
    a = np.arange(wetlite._SHM_THRESHOLD // 4, dtype="float64")
    payload = wetlite._dumps_payload((a,), 5, pool)
    names = [ref[0] for ref in payload[2]]
    assert [ref[2] for ref in payload[2]] == ["lend"]
    (back,) = wetlite._loads_payload(payload, cache)
    assert np.array_equal(back, a) and back.flags.writeable and back.base is not None
    views = [back[::3], memoryview(back)[10:], np.frombuffer(back, dtype="u1"), back.reshape(-1, 4).T]
    del back
    while len(views) > 1:
        assert not cache.freed and set(cache.lent) == set(names)
        views.pop(0)
    held = views.pop()
    held[0, 0] = 7.0            # still ours to write
    assert not cache.freed
    del held
    assert cache.drain() == names and not cache.lent


def test_results_kept_beyond_the_lending_budget_are_copied(shm, monkeypatch):
    pool, cache = shm
    a = np.ones(wetlite._SHM_THRESHOLD // 8 * 2)
    monkeypatch.setattr(wetlite, "_SHM_LEND_LIMIT", a.nbytes)
    first = wetlite._loads_payload(wetlite._dumps_payload((a,), 5, pool), cache)[0]
    second = wetlite._loads_payload(wetlite._dumps_payload((a * 2,), 5, pool), cache)[0]
    assert len(cache.lent) == 1                                 # the first holds the whole budget
    released = cache.drain()
    assert len(released) == 1 and released[0] not in cache.lent    # the second was copied out at once
    pool.release(released)
    again = wetlite._loads_payload(wetlite._dumps_payload((a * 3,), 5, pool), cache)[0]
    assert first.sum() == a.size and second.sum() == 2 * a.size and again.sum() == 3 * a.size


def test_wetlite_never_imports_numpy(tmp_path):
    # Neither the host nor the worker, when the data holds no arrays (the env has no NumPy at all).
    code = textwrap.dedent("""\
        import sys
        sys.path.insert(0, %(repo)r)
        import wetlite
        mgr = wetlite.EnvironmentManager(root=%(root)r, tool="venv")
        env = mgr.load("bare", %(venv)r)
        big = b"x" * (2 * wetlite._SHM_THRESHOLD)
        assert env.execute("builtins", "len", (big,)) == len(big)
        back = env.execute("builtins", "dict", (), {"a": [1.5, {"b": (big, bytearray(3))}], "c": complex(1, 2)})
        assert back["a"][1]["b"][0] == big
        assert env.execute("sys", "modules.__contains__", ("numpy",)) is False
        mgr.exit()
        print("numpy" in sys.modules)
        """) % {"repo": REPO, "root": str(tmp_path / "root"), "venv": str(tmp_path / "venv")}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["False"]


# --- real NumPy versions ---------------------------------------------------------------

def _pypi_reachable():
    """Can pip reach its index?  (Asked only after an environment failed to build.)"""
    from urllib.request import urlopen
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urlopen(index + "/numpy/", timeout=20) as response:
            return response.status == 200
    except Exception:
        return False


@pytest.fixture(scope="session")
def numpy_envs(tmp_path_factory):
    """{name: future of the Environment (launched), or of the reason it cannot be built}."""
    mgr = wetlite.EnvironmentManager(root=str(tmp_path_factory.mktemp("numpy-versions") / "root"), tool="venv")
    found = dict(local_interpreters())

    def build(name):
        python, numpy_version = ENVIRONMENTS[name]
        if python not in found:
            return "no Python %s on this machine (pyenv)" % python
        try:
            env = mgr.create(name, {"python": python, "pip": ["numpy==%s" % numpy_version]}, force_external=True)
        except wetlite.WetliteError as exc:
            return exc
        env.launch(timeout=60)
        return env
    builders = concurrent.futures.ThreadPoolExecutor(len(ENVIRONMENTS))
    yield {name: builders.submit(build, name) for name in ENVIRONMENTS}
    builders.shutdown(wait=True)
    mgr.exit()


@pytest.fixture(scope="module", autouse=True)
def build_early(request):
    """Start building the environments with this file's first test, so that
    the in-process tests run meanwhile (only if a selected test needs them)."""
    if any("other" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("numpy_envs")


@pytest.fixture(params=sorted(ENVIRONMENTS), ids=lambda name: "%s-numpy%s" % ENVIRONMENTS[name])
def other(request, numpy_envs):
    """A worker on another NumPy version (skipped only if PyPI is out of reach)."""
    env = numpy_envs[request.param].result()
    if isinstance(env, str):
        skip_unless_ci(env)
    if isinstance(env, Exception):
        if not _pypi_reachable():
            pytest.skip("PyPI cannot be reached: %s" % str(env)[-300:])
        raise env
    if env._worker is None or env._worker.dead is not None:
        env.launch(timeout=60)
    return env


@pytest.mark.parametrize("name", NAMES)
def test_every_dtype_from_the_host(other, name):
    made, expected = made_and_expected(name)
    seen = other.execute(CASES, "describe_cases", (made,))
    for label in made:
        assert seen[label] == expected[label], label


@pytest.mark.parametrize("name", NAMES)
def test_every_dtype_to_the_host(other, name):
    made, sent = other.execute(CASES, "build", (name,))
    for label, described in cases.describe_cases(made).items():
        assert described == sent[label], label
    assert sent == made_and_expected(name)[1]       # and it is what the host would build


def test_the_environments_run_the_numpy_they_were_built_with(other):
    python, numpy_version = ENVIRONMENTS[other.name]
    assert other.execute(CASES, "version") == numpy_version
    assert other.execute("platform", "python_version").startswith(python + ".")
    assert other._worker.worker_python.startswith(python + ".")
    big = cases.make("float64", "C", "big")
    assert other.execute("numpy", "sum", (big,)) == big.sum()
    uses_shm = SHM and python != "3.6"
    assert (other._worker.shm_pool is not None) == uses_shm
    if uses_shm:                                # the big arrays above went through segments
        assert other._worker.shm_pool.free or other._worker.shm_pool.busy


def test_the_issue_example(other):
    assert other.execute("numpy", "sum", (np.arange(10.0),)) == 45.0
    assert other.execute("builtins", "float", (np.float32(2.0),)) == 2.0
    assert type(other.execute("numpy", "float32", (2,))) is np.float32
    assert type(other.execute("numpy", "bool_", (1,))) is np.bool_
    assert other.execute("numpy", "datetime64", ("2024-02-29T12:00", "s")) == np.datetime64("2024-02-29T12:00", "s")


def test_arrays_nested_in_containers_and_objects(other):
    small, big = np.arange(6, dtype=">i2").reshape(2, 3), cases.make("complex64", "F", "big")
    value = {"list": [small, (big, {"deep": [np.uint16(7), np.str_("x")]})],
             "object": types.SimpleNamespace(array=big[::2], scalar=np.datetime64("2001-01-01", "D")),
             "ordered": collections.OrderedDict([("k", np.zeros((0, 2), "U2"))]), "same": [small, small],
             "keys": {np.int64(3): "three", np.str_("k"): None}}
    back = other.execute(CASES, "nested", (value,))
    assert back["list"][0].dtype == small.dtype and np.array_equal(back["list"][0], small)
    assert back["list"][1][0].flags.f_contiguous and np.array_equal(back["list"][1][0], big)
    assert back["list"][1][1]["deep"] == [7, "x"]
    assert [type(x) for x in back["list"][1][1]["deep"]] == [np.uint16, np.str_]
    assert np.array_equal(back["object"].array, big[::2]) and type(back["object"]) is types.SimpleNamespace
    assert back["object"].scalar == np.datetime64("2001-01-01", "D")
    assert back["ordered"]["k"].shape == (0, 2) and back["ordered"]["k"].dtype == np.dtype("U2")
    assert back["same"][0] is back["same"][1]                # pickle's memo: one object stays one
    assert back["keys"] == value["keys"] and [type(k) for k in back["keys"]] == [np.int64, np.str_]
    assert other.execute(CASES, "nested", ({np.int64(3): "three"},)) == {3: "three"}    # keys alone


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")      # numpy.matrix
def test_objects_only_numpy_pickle_carries_need_the_same_version(other):
    python, numpy_version = ENVIRONMENTS[other.name]
    for obj in (np.matrix([[1, 2]]), np.array([1, "a"], dtype=object)):
        if numpy_version.startswith("2."):
            assert type(other.execute(CASES, "nested", (obj,))) is type(obj)       # NumPy 2 reads NumPy 2's
            continue
        with pytest.raises(wetlite.ExecutorError) as caught:
            other.execute(CASES, "nested", (obj,))
        message = str(caught.value)
        assert "NumPy %s" % np.__version__ in message and "NumPy %s here" % numpy_version in message
        assert "numpy.asarray" in message and "numpy==%s" % np.__version__ in message
    # The worker survives it, and plain arrays still cross.
    assert other.execute("numpy", "sum", (np.ones(3),)) == 3.0
