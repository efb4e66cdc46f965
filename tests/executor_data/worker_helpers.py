"""Functions the executor tests call in workers, loaded by path (``env.execute(HELPERS, ...)``).

Python 3.6 compatible: the cross-version tests run it in every local interpreter.
"""
import os
import signal
import subprocess
import sys
import time


class Calc(object):
    def __init__(self, base):
        self.base = base

    def scale(self, x, offset=0):
        return self.base * x + offset


calc = Calc(10)


class WorkerOnly(object):
    """A class the host cannot import: this module has a private name in the worker."""

    def __init__(self, value):
        self.value = value


class LocalError(Exception):
    pass


def echo(*args, **kwargs):
    return {"args": args, "kwargs": kwargs}


def info():
    import wetlite
    return {
        "pid": os.getpid(),
        "path": list(sys.path),
        "cwd": os.getcwd(),
        "version": tuple(sys.version_info[:2]),
        "wetlite_file": wetlite.__file__,
        "environ": dict(os.environ),
        "argv": list(sys.argv),
        "stdin_name": getattr(sys.stdin, "name", None),
    }


def child_pythonpath():
    """What a process the worker starts sees as PYTHONPATH."""
    out = subprocess.check_output([sys.executable, "-c", "import os; print(os.environ.get('PYTHONPATH'))"])
    return out.decode().strip()


def read_stdin():
    start = time.time()
    try:
        data = input()
    except EOFError:
        return "eof", time.time() - start
    return data, time.time() - start


def make_worker_only(value):
    return WorkerOnly(value)


def make_lock():
    import threading
    return threading.Lock()


def raise_local():
    raise LocalError("only in the worker")


def raise_value_error(text):
    raise ValueError(text)


def raise_file_not_found(path):
    return open(path)


def raise_system_exit(code):
    sys.exit(code)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


def exit_now(code, message=None):
    if message:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    os._exit(code)


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(10)


def ignore_sigint_and_sleep(seconds):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(seconds)
    return "woke up"


def spawn_sleeper(pid_file=None, then_sleep=0):
    """Start `sleep 60` (in this worker's process group); optionally write its pid and block."""
    child = subprocess.Popen(["sleep", "60"])
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(child.pid))
    _children.append(child)
    time.sleep(then_sleep)
    return child.pid


_children = []


def print_lines(count, width=99):
    line = "x" * width
    write = sys.stdout.write
    for i in range(count):
        write(line + "\n")
    return count


def say(out, err):
    print(out)
    sys.stdout.flush()
    sys.stderr.write(err + "\n")
    sys.stderr.flush()
    return True


def append_to(path, text):
    with open(path, "a") as f:
        f.write(text)
    return text


def add_sys_path(directory):
    if directory not in sys.path:
        sys.path.append(directory)
    return len(sys.path)


def sys_path_length():
    return len(sys.path)


def argv_now():
    return list(sys.argv)


def mark_and_sleep(path, seconds):
    """Write ``path`` (so a test knows the call is running), then sleep."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "slept"
