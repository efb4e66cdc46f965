"""Functions the task and remote-object tests call in workers (loaded by path).

Python 3.6 compatible: the cross-version tests run it in every local interpreter.
"""
import os
import signal
import sys
import threading
import time
import weakref

import wetlite


def wait_for_file(path, timeout):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            return False
        time.sleep(0.005)
    return True


def report_many(count, message="step"):
    for i in range(count):
        wetlite.report_progress(i + 1, count, message)
    return count


def report_then_wait(path, timeout=30):
    """Report once, then wait until the host has seen it (it creates ``path``)."""
    wetlite.report_progress(1, 2, "half way")
    return "seen" if wait_for_file(path, timeout) else "not seen"


def report_odd_values():
    wetlite.report_progress(threading.Lock(), 3, threading.Lock())
    return True


def cooperative(seconds, started=None):
    if started:
        open(started, "w").close()
    deadline = time.time() + seconds
    while time.time() < deadline:
        if wetlite.cancel_requested():
            return "stopped"
        time.sleep(0.005)
    return "finished"


def sleeper(seconds, started=None):
    if started:
        open(started, "w").close()
    time.sleep(seconds)
    return "slept"


def stubborn(seconds, started=None):
    """Ignore SIGINT, so that only a kill stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if started:
        open(started, "w").close()
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.01)
    return "outlived"


def append_to(path, text):
    with open(path, "a") as f:
        f.write(text)
    return text


def which_wetlite():
    return {"file": wetlite.__file__, "has_report": hasattr(wetlite, "report_progress"),
            "in_call": wetlite.cancel_requested() is False, "version": getattr(wetlite, "__version__", None)}


def print_tagged(tag, count=3):
    for i in range(count):
        print("%s %d" % (tag, i))
    sys.stderr.write("%s err\n" % tag)
    return tag


def write_fd_then_wait(text, path, timeout=30):
    """Print below Python's sys.stdout (as C code or a subprocess would), then wait for the host."""
    os.write(1, (text + "\n").encode())
    return "seen" if wait_for_file(path, timeout) else "not seen"


def unfinished_line(text):
    sys.stdout.write(text)          # no newline
    return text


# --- objects kept in the worker --------------------------------------------------

LIVE = weakref.WeakSet()


class Model(object):
    """A model that cannot be pickled (it holds a lock)."""

    kind = "model"

    def __init__(self, scale=1):
        self.scale = scale
        self.lock = threading.Lock()
        self.calls = 0
        LIVE.add(self)

    def predict(self, x):
        self.calls += 1
        return self.scale * x

    def child(self, extra):
        return Model(self.scale + extra)

    def __call__(self, x):
        return self.predict(x) + 1

    def __getitem__(self, key):
        return (key, self.scale)

    @property
    def doubled(self):
        return 2 * self.scale


def make_model(scale=1):
    return Model(scale)


def use_model(model, x):
    return model.predict(x) + 1000


def scales(models):
    if isinstance(models, dict):
        return dict((k, m.scale) for k, m in models.items())
    return [m.scale for m in models]


def type_names(objects):
    return [type(o).__name__ for o in objects]


def live_models():
    import gc
    gc.collect()
    return len(LIVE)


def held_ids():
    return sorted(sys.modules["wetlite"]._WorkerState.objects)


# --- pools -------------------------------------------------------------------------


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def pid():
    return os.getpid()


def record(path, item, fail_at=None):
    """Note that ``item`` ran (one line in ``path``); raise at ``fail_at``."""
    with open(path, "a") as f:
        f.write("%s\n" % item)
    if item == fail_at:
        raise ValueError("item %s failed" % item)
    return item


def after_file(item, path, timeout=30):
    """Return ``item`` once ``path`` exists (so that another item finishes first)."""
    wait_for_file(path, timeout)
    return item


def touch_and_return(item, path):
    open(path, "w").close()
    return item


def big_echo(data):
    return os.getpid(), data


def shm_report():
    state = sys.modules["wetlite"]._WorkerState
    return os.getpid(), sorted(state.cache.maps) if state.cache else []


def exit_worker(code):
    os._exit(code)


def add(a, b):
    return a + b


def record_slowly(path, item, seconds, fail_at=None):
    """record(), then take ``seconds``: a queued item starts well after the one before it."""
    record(path, item, fail_at)
    time.sleep(seconds)
    return item


def print_after_file(tag, path, timeout=30):
    wait_for_file(path, timeout)
    return print_tagged(tag)


def ticker(path, seconds, started=None, stubborn=False):
    """Note the time in ``path`` every 10 ms, what it did after it should have stopped shows.  It never
    looks at cancel_requested(): an interrupt stops it, unless ``stubborn`` (then only a kill does)."""
    if stubborn:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if started:
        open(started, "w").close()
    deadline = time.time() + seconds
    while time.time() < deadline:
        with open(path, "a") as f:
            f.write("%r\n" % time.time())
        time.sleep(0.01)
    return "ticked"


def stubborn_ticker(path, seconds, started=None):
    return ticker(path, seconds, started, stubborn=True)


def scale_at(box, *path):
    """The scale of the Model found by following ``path`` (keys, indexes, attribute names) from ``box``."""
    for step in path:
        box = getattr(box, step) if isinstance(step, str) and hasattr(box, step) else box[step]
    return box.scale
