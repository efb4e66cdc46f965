"""The command line as real processes: entry points, old interpreters, terminals, Ctrl-C."""
import hashlib
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, local_interpreters, wetlite
from httpserver import FileServer, tar_bytes

WETLITE_PY = os.path.join(REPO, "wetlite.py")
CONTROL = ("\r", "\x1b", "\x08")


def pixi_release(server, version="v0.99.0", size=400000):
    """Serve a stand-in pixi release (with padding, so a progress bar has something to show)."""
    binary = b"#!/bin/sh\necho 'pixi %s'\nexit 0\n" % version[1:].encode() + os.urandom(size)   # incompressible
    asset = wetlite._tool_asset("pixi", *wetlite._platform_id())
    data = tar_bytes([("pixi", binary)])
    server.add("/%s/%s" % (version, asset), data)
    server.add("/%s/%s.sha256" % (version, asset), "%s  %s\n" % (hashlib.sha256(data).hexdigest(), asset))


def cli_env(tmp_path, server):
    env = dict(os.environ, WETLITE_ROOT=str(tmp_path / "root"), WETLITE_DOWNLOAD_URL=server.url)
    env.pop("WETLITE_PIXI", None)
    return env


def test_progress_bar_on_a_terminal(tmp_path):
    with FileServer() as server:
        pixi_release(server)
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, WETLITE_PY, "--tool", "pixi", "--tool-version", "v0.99.0",
                                 "install-tool"], stdin=slave, stdout=slave, stderr=slave,
                                env=cli_env(tmp_path, server))
        os.close(slave)
        output = b""
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:             # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        os.close(master)
        assert proc.wait(30) == 0
    text = output.decode("utf-8", "replace")
    assert "\r" in text and "100%" in text and "/s" in text and "kB" in text, text
    assert os.path.isfile(str(tmp_path / "root" / "bin" / "pixi"))


def test_no_control_characters_on_a_pipe(tmp_path):
    with FileServer() as server:
        pixi_release(server)
        proc = subprocess.run([sys.executable, WETLITE_PY, "--tool", "pixi", "--tool-version", "v0.99.0",
                               "install-tool"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=cli_env(tmp_path, server), timeout=60)
    assert proc.returncode == 0, proc.stderr
    both = (proc.stdout + proc.stderr).decode()
    assert not any(c in both for c in CONTROL), repr(both)
    assert proc.stdout.decode().strip() == str(tmp_path / "root" / "bin" / "pixi")


@pytest.mark.parametrize("argv", [[WETLITE_PY], ["-m", "wetlite"]])
def test_entry_points_agree(tmp_path, argv):
    env = dict(os.environ, WETLITE_ROOT=str(tmp_path / "root"))
    proc = subprocess.run([sys.executable] + argv + ["--tool", "venv", "info", "--json"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, check=True)
    assert b'"tool": "venv"' in proc.stdout
    usage = subprocess.run([sys.executable] + argv + ["nonsense"], cwd=REPO, stderr=subprocess.PIPE)
    assert usage.returncode == 2 and b"nonsense" in usage.stderr


def test_console_script_after_pip_install(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", REPO],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert pip.returncode == 0, pip.stdout.decode()[-3000:]
    out = subprocess.run([str(venv / "bin" / "wetlite"), "--version"], stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().strip() == "wetlite " + wetlite.__version__
    # The installed module is the same single file.
    code = "import wetlite, sys; print(wetlite.__file__)"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], stdout=subprocess.PIPE, cwd=str(tmp_path),
                           check=True).stdout.decode().strip()
    assert where.startswith(str(venv)) and where.endswith("wetlite.py")


OLDEST = [(v, p) for v, p in local_interpreters() if v == "3.6"]


@pytest.mark.skipif(not OLDEST, reason="no Python 3.6 on this machine")
def test_python36_runs_version_and_doctor(tmp_path):
    python = OLDEST[0][1]
    out = subprocess.run([python, WETLITE_PY, "--version"], stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().strip() == "wetlite " + wetlite.__version__
    env = dict(os.environ, WETLITE_ROOT=str(tmp_path / "root"))
    doctor = subprocess.run([python, WETLITE_PY, "doctor", "--offline"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, timeout=300)
    assert doctor.returncode == 0, doctor.stdout.decode()
    assert "all checks passed" in doctor.stdout.decode() and "worker   ok" in doctor.stdout.decode()


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class StalledIndex(object):
    """A package index that accepts connections and never answers: pip waits on it."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = "http://127.0.0.1:%d/simple" % self.sock.getsockname()[1]
        self.connected = threading.Event()
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.connected.set()

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_ctrl_c_during_create_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    index = StalledIndex()
    try:
        proc = subprocess.Popen([sys.executable, WETLITE_PY, "--root", str(root), "--tool", "venv", "create", "half",
                                 "--pip=--index-url " + index.url, "--pip", "wetlite-never-published"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, PIP_FIND_LINKS="", PIP_NO_INDEX=""))
        # Interrupt while the build is surely under way: pip is waiting for the index.
        assert index.connected.wait(120), "pip never asked the index"
        record = root / "state" / "envs" / "half.json"
        assert record.exists()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        index.close()
    assert proc.returncode == 130, err.decode()
    assert not record.exists()
    assert not (root / "envs" / "half").exists()


def test_ctrl_c_during_call_leaves_no_worker(tmp_path):
    root = str(tmp_path / "root")
    assert wetlite.main(["-q", "--root", root, "--tool", "venv", "create", "busy"]) == 0
    script = tmp_path / "slow.py"
    script.write_text("import os, time\n\ndef slow(path):\n    open(path, 'w').write(str(os.getpid()))\n"
                      "    time.sleep(60)\n")
    pid_file = tmp_path / "worker.pid"
    # As at a terminal: a suite run as a background job (`pytest &`) inherits SIGINT ignored.
    proc = subprocess.Popen([sys.executable, WETLITE_PY, "--root", root, "call", "busy", str(script), "slow",
                             '"%s"' % pid_file], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60)
    worker = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()

    def gone():
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return True
        with open("/proc/%d/stat" % worker) as f:       # a zombie waiting for its reaper is gone too
            return f.read().split(")")[-1].split()[0] == "Z"
    assert wait_for(gone, 20)


HOSTS = [(v, p) for v, p in local_interpreters() if v in ("3.8", "3.12", "3.13")]


@pytest.mark.parametrize("version, python", HOSTS, ids=[v for v, _ in HOSTS])
def test_doctor_on_other_host_pythons(tmp_path, version, python):
    """Hosts on 3.12+ challenge with {sha256}, older ones with legacy HMAC-MD5: the worker answers both."""
    env = dict(os.environ, WETLITE_ROOT=str(tmp_path / "root"))
    doctor = subprocess.run([python, WETLITE_PY, "doctor", "--offline"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, timeout=300)
    out = doctor.stdout.decode()
    assert doctor.returncode == 0, out
    assert "worker   ok" in out and ("python   %s." % version) in out
