"""Functions the shared-memory tests call inside a worker (loaded by path)."""
import os
import signal
import sys
import time

KEPT = []


def identity(x):
    return x


def total(array):
    return float(array.sum())


def describe(obj):
    """Types and lengths, to check what arrived without sending it back."""
    if isinstance(obj, dict):
        return {k: describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    return [type(obj).__name__, len(bytes(obj)) if isinstance(obj, (bytes, bytearray, memoryview)) else None]


def keep(array):
    """Hold on to an argument after the call (its segment must not be reused)."""
    KEPT.append(array)
    return len(KEPT)


def kept_sum(index):
    return float(KEPT[index].sum())


def keep_views(array):
    """Keep views of an argument only, one through a memoryview; return their sums."""
    import numpy
    views = (array[::2], memoryview(array[1:]))
    KEPT.append(views)
    return kept_views_sums()[-1]


def kept_views_sums():
    import numpy
    return [[float(view.sum()), float(numpy.frombuffer(mv, dtype="float64").sum())]
            for view, mv in (k for k in KEPT if type(k) is tuple)]


def fail_with(array):
    raise ValueError("refused an array of %d bytes" % array.nbytes)


def sleep_with(array, seconds):
    time.sleep(seconds)
    return array.nbytes


def big_result_then_die(size):
    """Return a big result (a segment of this worker's pool), then die on the next call."""
    return bytes(size)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def shm_state():
    """Which segments the worker has attached and owns (names only)."""
    state = sys.modules["wetlite"]._WorkerState
    pool = state.pool
    return {"attached": sorted(state.cache.maps) if state.cache else [],
            "owned": sorted(list(pool.busy) + [s.name for s in pool.free]) if pool else [],
            "busy": sorted(pool.busy) if pool else []}
