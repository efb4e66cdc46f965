#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The wetlite developers
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in
# all copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
"""wetlite: isolated Conda environments from one file, and code that runs in them.

wetlite downloads Pixi or Micromamba on demand (or uses plain ``venv``),
creates one isolated environment per set of dependencies, and runs shell
commands and Python functions inside those environments from the host
application.  It is one standard-library-only file.

Library::

    import wetlite
    with wetlite.EnvironmentManager(tool="micromamba") as mgr:
        env = mgr.create("seg", {"python": "3.11", "conda": ["numpy"], "pip": ["tifffile"]})
        env.run(["python -c 'import numpy; print(numpy.__version__)'"])
        with env:                                   # starts the worker
            image = env.execute("tifffile", "imread", ("a.tif",))

Command line::

    python -m wetlite create seg --python 3.11 --conda numpy
    python -m wetlite run seg -- python -c "print('hello')"
    python wetlite.py doctor

Vendoring: copy this file unchanged to ``yourpkg/_vendor/wetlite.py``, keep
the header, import it as ``from yourpkg._vendor import wetlite`` and check the
copy with ``python yourpkg/_vendor/wetlite.py --version``.  Its command line
is then ``python -m yourpkg._vendor.wetlite``.

Environment variables:

    WETLITE_ROOT           where tools and environments live (default: the user data dir)
    WETLITE_TOOL           default tool: pixi, micromamba or venv
    WETLITE_PIXI           use this pixi binary, never download one
    WETLITE_MICROMAMBA     use this micromamba binary, never download one
    WETLITE_DOWNLOAD_URL   mirror base URL: assets come from {url}/{version}/{asset}
    WETLITE_DOWNLOAD_TIMEOUT  seconds before a stalled download is retried (default 30)
    WETLITE_DOWNLOAD_DEADLINE seconds one download may take, retries included (default 1800)
    WETLITE_DOWNLOAD_LIMIT the most one download may be, e.g. 800M (default per tool)
    WETLITE_SHM            0: large buffers go through the socket, not shared memory
    WETLITE_USER_SITE      1: environments see the user's site-packages (default: not)
    WETLITE_DEBUG          1: generated scripts are kept; the CLI logs at debug level

Security notes (the README has them in full): wetlite downloads Pixi from
github.com/prefix-dev/pixi and Micromamba from
github.com/mamba-org/micromamba-releases (or the mirror named above), capped in
size and time, and checks each against the embedded SHA-256 table or the
release's checksum file before it unpacks anything (micromamba's package
fallback: only the binary is unpacked, then checked).  Archive members are
checked (no absolute paths, no "..", no links out, no devices).  The root and
wetlite's directories in it must belong to the user and be writable by nobody
else; wetlite creates them 0700, its files 0600, and checks the worker's
runtime copy before each start.  Credentials in URLs are masked in logs,
records and messages.  Every value wetlite puts into a generated script is
quoted for that shell; command strings you pass are shell code and run as
written.  The host unpickles what its workers send: code in an environment can
run code in the host, so an environment is as trusted as the host.
"""

__version__ = "0.1.0"

__all__ = [
    "EnvironmentManager",
    "Environment",
    "WetliteError",
    "ToolError",
    "DownloadError",
    "SpecError",
    "ConfigNotFoundError",
    "CommandError",
    "CommandTimeout",
    "ExecutorError",
    "ProtocolError",
    "RemoteError",
    "WorkerDied",
    "CallTimeout",
    "Task",
    "Progress",
    "RemoteObject",
    "report_progress",
    "cancel_requested",
    "PIXI_VERSION",
    "MICROMAMBA_VERSION",
    "DEFAULT_CHANNELS",
    "PROTOCOL_VERSION",
    "main",
]

# =============================================================================
# 1. Imports
#    Only what every start needs.  Heavier modules (urllib, json, hashlib,
#    subprocess, tarfile, logging, argparse, ...) are imported where used, so
#    that `import wetlite` stays cheap: every worker start pays for it.
# =============================================================================

import os
import sys

# =============================================================================
# 2. Constants and defaults
# =============================================================================

PIXI_VERSION = "v0.73.0"
MICROMAMBA_VERSION = "2.8.1-0"
DEFAULT_CHANNELS = ("conda-forge",)
_TOOLS = ("pixi", "micromamba", "venv")

# Release download bases: an asset is fetched from {base}/{version}/{asset}.
_RELEASE_URLS = {
    "pixi": "https://github.com/prefix-dev/pixi/releases/download",
    "micromamba": "https://github.com/mamba-org/micromamba-releases/releases/download",
}

# SHA-256 of the pinned release assets (the Wetlands 1.1.6 artifact registry).
# Micromamba digests are those of the raw binary, as the release's own
# .sha256 files are, so they also verify a binary taken out of the .tar.bz2.
_PINNED_SHA256 = {
    ("pixi", "v0.73.0"): {
        "pixi-aarch64-apple-darwin.tar.gz": "63e7cc91ef10eda71765c42e951362a084b2cbcbc93fb55c375c4f3acbfd7d00",
        "pixi-aarch64-pc-windows-msvc.zip": "0ed95db2387984cc8a03aaceb7e493bb43a78cd901ef977e2bdbc2e641e491dd",
        "pixi-aarch64-unknown-linux-musl.tar.gz": "0788f47eb37e0706de209c3ce81cc804ee128f7dd4ec09a686754a67170ddb64",
        "pixi-x86_64-apple-darwin.tar.gz": "0c89d86eb3adc35773e3b00f443b68edcfcdd7b61700282d712613bcaf797f61",
        "pixi-x86_64-pc-windows-msvc.zip": "d9044186bfea9771b8e35b0ed032352b557a82528cd5165db6b8ad137c7a873c",
        "pixi-x86_64-unknown-linux-musl.tar.gz": "682564e7cd35d38307df3cd6c8e9a45a1437d20febac0c8d165809d7c38408d1",
    },
    ("micromamba", "2.8.1-0"): {
        "micromamba-linux-64": "9689782d863c05a1bf5d2d371ba527104e7a4eb4310c1637d8653b751aed9c82",
        "micromamba-linux-aarch64": "e5ba23b5945aa49dfd11022e592a510d2686a8feee810e00140b73c9fdf0ba2a",
        "micromamba-linux-ppc64le": "321c822aaf4c2922cf3e653cbe8b44a86e28cda8f81f8fac3c0804744c7baf75",
        "micromamba-osx-64": "b2bd613791c0a524883d7cb66505d630bf15badd1f492bc93ba78550a3a1a94b",
        "micromamba-osx-arm64": "de71a646b73af92dd663e6ddc78993a6a4d47ea28b5d8908c3cc2b9c3077e528",
        "micromamba-win-64": "8a51f88ec02600488ea20c3acd93fbd4da6c0f03fc499aa53fd234c6749b94b0",
    },
}

# Pixi ships per Rust target triple, Micromamba per conda subdir.  There is no
# pixi for linux-ppc64le and no native micromamba for Windows on ARM (the x64
# build runs under emulation there).
_PIXI_TRIPLES = {
    ("linux", "x86_64"): "x86_64-unknown-linux-musl",
    ("linux", "aarch64"): "aarch64-unknown-linux-musl",
    ("linux", "riscv64"): "riscv64gc-unknown-linux-gnu",
    ("osx", "x86_64"): "x86_64-apple-darwin",
    ("osx", "aarch64"): "aarch64-apple-darwin",
    ("win", "x86_64"): "x86_64-pc-windows-msvc",
    ("win", "aarch64"): "aarch64-pc-windows-msvc",
}
_MICROMAMBA_SUBDIRS = {
    ("linux", "x86_64"): "linux-64",
    ("linux", "aarch64"): "linux-aarch64",
    ("linux", "ppc64le"): "linux-ppc64le",
    ("osx", "x86_64"): "osx-64",
    ("osx", "aarch64"): "osx-arm64",
    ("win", "x86_64"): "win-64",
    ("win", "aarch64"): "win-64",
}
# Conda subdirs wetlite knows, and the aliases users write for them.
_CONDA_SUBDIRS = (
    "linux-64", "linux-aarch64", "linux-ppc64le", "linux-riscv64",
    "osx-64", "osx-arm64", "win-64", "win-arm64",
)
_SUBDIR_ALIASES = {"linux-arm64": "linux-aarch64", "win-aarch64": "win-arm64", "osx-aarch64": "osx-arm64"}
_PLATFORM_FAMILIES = {"linux": "linux", "osx": "osx", "mac": "osx", "macos": "osx", "win": "win", "windows": "win", "unix": "unix"}

_ENV_ROOT = "WETLITE_ROOT"
_ENV_TOOL = "WETLITE_TOOL"
_ENV_TOOL_PATHS = {"pixi": "WETLITE_PIXI", "micromamba": "WETLITE_MICROMAMBA"}
_ENV_DOWNLOAD_URL = "WETLITE_DOWNLOAD_URL"
_ENV_DOWNLOAD_TIMEOUT = "WETLITE_DOWNLOAD_TIMEOUT"
_ENV_DEBUG = "WETLITE_DEBUG"
_ENV_USER_SITE = "WETLITE_USER_SITE"

_ENV_DOWNLOAD_LIMIT = "WETLITE_DOWNLOAD_LIMIT"
_ENV_DOWNLOAD_DEADLINE = "WETLITE_DOWNLOAD_DEADLINE"

_DOWNLOAD_TIMEOUT = 30.0      # seconds without data before an attempt is abandoned
_DOWNLOAD_MIN_RATE = 1024     # bytes/s over each such period: slower counts as stalled
_DOWNLOAD_DEADLINE = 1800.0   # seconds one file may take, retries included
_DOWNLOAD_LIMIT = 512 << 20   # bytes: the ceiling of one download, and of what an archive unpacks to
# The pinned tools are a few tens of MB (archive and binary): a mirror that
# sends more is refused long before the disk fills.
_TOOL_SIZE_LIMITS = {"pixi": 256 << 20, "micromamba": 128 << 20}
_ARCHIVE_MEMBER_LIMIT = 10000
_TIMEOUT_MAX = 1e9              # seconds (31 years): more is surely a mistake, and overflows waits
_CONFIG_LIMIT = 8 << 20         # bytes of one config or requirements file
_LOCK_TIMEOUT = 3600.0        # seconds to wait for another process's lock (a build can take long)
_DOWNLOAD_ATTEMPTS = 4        # tries per file for transient errors
_BACKOFF_SECONDS = 1.0        # first retry delay; doubles each time
_TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
_VERSION_TIMEOUT = 60.0       # a `--version` smoke test that takes longer is broken

# The host's Python configuration must not leak into another interpreter.
_SCRUBBED_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__", "VIRTUAL_ENV")
# Nor may an activated conda or pixi shell of the host, or the user's pixi
# flags, steer the tools (PIXI_FROZEN, PIXI_LOCKED and PIXI_NO_INSTALL make
# `pixi add` edit the manifest and build nothing).
_TOOL_SCRUBBED_VARS = (
    "CONDARC", "MAMBARC", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDA_SHLVL",
    "CONDA_PROMPT_MODIFIER", "PIXI_IN_SHELL", "PIXI_PROJECT_MANIFEST",
    "PIXI_PROJECT_ROOT", "PIXI_PROJECT_NAME", "PIXI_ENVIRONMENT_NAME",
    "PIXI_FROZEN", "PIXI_LOCKED", "PIXI_NO_INSTALL", "PIXI_NO_SYMBOLIC_LINKS",
    "PIXI_NO_HARD_LINKS", "PIXI_NO_REF_LINKS",
)

_OUTPUT_TAIL_LINES = 40
_LINE_LIMIT = 1 << 16           # bytes of one line of a worker's output handled at a time

# =============================================================================
# 3. Compatibility
#    Every shim says why it exists and when it can go.
# =============================================================================

_WINDOWS = sys.platform == "win32"
_MACOS = sys.platform == "darwin"


def _text_kwargs():
    # Breakpoint: `text=` and `capture_output=` appeared in 3.7; the worker
    # side must still run on 3.6.  Delete when the floor is 3.7.
    return {"universal_newlines": True, "encoding": "utf-8", "errors": "replace"}


# =============================================================================
# 4. Errors
#    One root.  Every message says what failed, which value, why, and what to
#    do.  Extra attributes survive pickling (they travel in __dict__).
# =============================================================================


class WetliteError(Exception):
    """Root of every error wetlite raises on purpose."""

    def __reduce__(self):
        return (self.__class__, self.args, self.__dict__)


class ToolError(WetliteError):
    """Pixi or Micromamba is missing, unsupported here, or not working."""


class DownloadError(ToolError):
    """A download failed or did not verify.  ``.url`` has credentials masked."""

    def __init__(self, message, url=None, status=None):
        WetliteError.__init__(self, message)
        self.url = url
        self.status = status


class SpecError(WetliteError, ValueError):
    """A dependency spec, environment name, config file or argument is invalid."""


class ConfigNotFoundError(SpecError, FileNotFoundError):
    """A config file (``config=``) does not exist.  ``.filename`` is its path."""

    def __init__(self, message, filename=None):
        SpecError.__init__(self, message)
        self.errno = 2                  # ENOENT
        self.filename = filename

    def __str__(self):
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):               # filename is an OSError slot, not in __dict__
        return (self.__class__, (str(self), self.filename), self.__dict__)


class CommandError(WetliteError):
    """A command exited with a non-zero status.

    ``.returncode`` is its exit status and ``.output_tail`` the last lines it
    printed.
    """

    def __init__(self, message, returncode=None, output_tail=""):
        WetliteError.__init__(self, message)
        self.returncode = returncode
        self.output_tail = output_tail


class CommandTimeout(CommandError, TimeoutError):
    """Commands did not finish within their timeout; they were stopped."""


class _StorageError(WetliteError, OSError):
    """A file or directory wetlite needs could not be written (a full disk, a
    read-only root, ...).  Also an OSError, for callers that catch those."""

    def __str__(self):                  # OSError's own would show "[Errno N] None: path"
        return str(self.args[0]) if self.args else ""


class ExecutorError(WetliteError):
    """The executor (the worker running in an environment) failed."""


class ProtocolError(ExecutorError):
    """Host and worker do not speak the same protocol."""


class RemoteError(ExecutorError):
    """A call raised an exception whose type the host does not have."""

    def __init__(self, message, type_name=None, remote_traceback=""):
        ExecutorError.__init__(self, message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class WorkerDied(ExecutorError):
    """The worker process ended while the host still needed it."""

    def __init__(self, message, exitcode=None, signal=None, stderr_tail=""):
        ExecutorError.__init__(self, message)
        self.exitcode = exitcode
        self.signal = signal
        self.stderr_tail = stderr_tail


class CallTimeout(ExecutorError, TimeoutError):
    """A call did not finish within its timeout; it was stopped."""


# =============================================================================
# 5. Logging and console output
#    The library logs to the "wetlite" logger and never configures handlers;
#    the CLI does.  logging costs ~4 ms to import, so it is imported on use.
# =============================================================================

_logger = None


def _log():
    global _logger
    if _logger is None:
        import logging
        _logger = logging.getLogger("wetlite")
    return _logger


def _debug_enabled():
    return os.environ.get(_ENV_DEBUG, "") not in ("", "0")


def _eprint(text):
    # sys.stderr is None under pythonw.exe and some GUI hosts.
    if sys.stderr is not None:
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


class _ProgressBar(object):
    """A one-line download bar on a terminal; silent on a pipe or a file."""

    def __init__(self, label, total=None, stream=None):
        self.label = label
        self.total = total or None
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(self.stream is not None and getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._start = self._last = 0.0

    def update(self, nbytes):
        import time
        now = time.monotonic()
        if not self._start:
            self._start = now
        self.done += nbytes
        if self.enabled and (now - self._last >= 0.1 or (self.total and self.done >= self.total)):
            self._last = now
            self._draw(now)

    def _draw(self, now):
        rate = self.done / max(now - self._start, 1e-6)
        if self.total:
            frac = min(self.done / float(self.total), 1.0)
            width = 24
            filled = int(frac * width)
            text = "\r%s [%s%s] %s / %s %3d%% %s/s" % (
                self.label, "#" * filled, "." * (width - filled), _human_bytes(self.done),
                _human_bytes(self.total), int(frac * 100), _human_bytes(rate))
        else:
            text = "\r%s %s %s/s" % (self.label, _human_bytes(self.done), _human_bytes(rate))
        try:
            self.stream.write(text + "\x1b[K")
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def close(self):
        if self.enabled and self._start:
            import time
            self._draw(time.monotonic())
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self.enabled = False


def _human_bytes(n):
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1000.0

# =============================================================================
# 6. Platform, paths and files
#    Functions that only compute take the platform as a parameter, so Linux
#    tests can check what Windows or macOS would get.
# =============================================================================


_THIS_PLATFORM = []


def _platform_id(system=None, machine=None):
    """Return ``(os, arch)`` for this machine: os is linux, osx or win."""
    if system is None and machine is None:
        if not _THIS_PLATFORM:              # macOS asks sysctl: once is enough
            _THIS_PLATFORM.append(_platform_id("", ""))
        return _THIS_PLATFORM[0]
    if not system or not machine:
        import platform
        system = system or platform.system()
        machine = machine or platform.machine()
        if system == "Darwin" and machine == "x86_64" and _under_rosetta():
            machine = "arm64"   # an x86 Python on Apple silicon; the arm64 tools run natively
    os_name = {"linux": "linux", "darwin": "osx", "windows": "win"}.get(system.lower(), system.lower())
    arch = machine.lower()
    arch = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le"}.get(arch, arch)
    return os_name, arch


def _under_rosetta():
    import subprocess
    try:
        out = subprocess.run(["sysctl", "-n", "sysctl.proc_translated"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == b"1"


def _conda_subdir(os_name, arch):
    """The conda subdir (``linux-64``, ``osx-arm64``, ...) of a platform id."""
    if arch == "x86_64":
        return os_name + "-64"
    if os_name == "osx" and arch == "aarch64":
        return "osx-arm64"
    if os_name == "win" and arch == "aarch64":
        return "win-arm64"
    return "%s-%s" % (os_name, arch)


def _tool_asset(tool, os_name, arch):
    """Name of the release asset of ``tool`` for a platform, or raise ToolError."""
    key = (os_name, arch)
    if tool == "pixi":
        triple = _PIXI_TRIPLES.get(key)
        if triple is None:
            raise ToolError(
                "pixi publishes no binary for %s (%s); use tool='micromamba' on this platform "
                "(or tool='venv' for pip-only environments)" % (_conda_subdir(os_name, arch), arch))
        return "pixi-%s%s" % (triple, ".zip" if os_name == "win" else ".tar.gz")
    if tool == "micromamba":
        subdir = _MICROMAMBA_SUBDIRS.get(key)
        if subdir is None:
            raise ToolError(
                "micromamba publishes no binary for %s; use tool='pixi' if it supports this "
                "platform, or tool='venv' for pip-only environments" % _conda_subdir(os_name, arch))
        return "micromamba-" + subdir
    raise ToolError("tool %r has no download; choose pixi or micromamba" % (tool,))


def _exe_name(tool, windows=_WINDOWS):
    return tool + (".exe" if windows else "")


def _default_root():
    """The user data dir: ~/.local/share/wetlite, %LOCALAPPDATA%\\wetlite, ..."""
    explicit = os.environ.get(_ENV_ROOT)
    if explicit:
        return explicit
    if _WINDOWS:
        base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
    elif _MACOS:
        base = os.path.join(os.path.expanduser("~"), "Library", "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "wetlite")


def _env_python(prefix, layout, windows=_WINDOWS):
    """Interpreter of an environment: venv uses Scripts/, conda the prefix root."""
    if windows:
        if layout == "venv":
            return os.path.join(prefix, "Scripts", "python.exe")
        return os.path.join(prefix, "python.exe")
    return os.path.join(prefix, "bin", "python")


_RESERVED_WINDOWS_NAMES = frozenset(
    ["con", "prn", "aux", "nul"] + ["com%d" % i for i in range(1, 10)] + ["lpt%d" % i for i in range(1, 10)])


def _check_env_name(name):
    """Raise SpecError unless ``name`` is one safe, portable path component."""
    import re
    if not isinstance(name, str):
        raise SpecError("environment name must be a string, not %s (%r)" % (type(name).__name__, name))
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z", name) or name.endswith("."):
        raise SpecError(
            "invalid environment name %r: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it becomes a directory name)" % (name,))
    if name.split(".")[0].lower() in _RESERVED_WINDOWS_NAMES:
        raise SpecError("invalid environment name %r: it is reserved on Windows; choose another" % (name,))
    return name


def _makedirs_private(path):
    """os.makedirs, but each directory it creates is 0700 (private to this user)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _atomic_write(path, data):
    """Write ``data`` (str or bytes) to ``path`` (0600) through a temp file and os.replace."""
    import tempfile
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    _makedirs_private(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove_quietly(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = path         # a failed write() does not say where
        raise


_OPEN_FLAGS = {"wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
               "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "r+b": os.O_RDWR | os.O_CREAT}


def _open_private(path, mode="wb", encoding=None):
    """Open (create) a file of wetlite's: 0600, and never through a symbolic
    link, which another user could have pointed at the victim's files."""
    flags = _OPEN_FLAGS[mode] | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        if os.path.islink(path):
            raise WetliteError("refusing to open %s: it is a symbolic link, and wetlite never follows one to "
                               "its own files; remove it" % (path,))
        raise
    return os.fdopen(fd, mode, encoding=encoding)


# --- Trust in the root ---------------------------------------------------------
#
#    wetlite runs what it finds under the root: tool binaries, the worker's
#    runtime copy, interpreters named in records.  So the root, and every
#    directory of wetlite's in it, must belong to this user (or to the
#    system administrator, uid 0) and be writable by nobody else; wetlite
#    creates them 0700.  Windows ACLs are not checked.

_ROOT_DIRS = ("bin", "envs", "workspaces", "pkgs", "state", os.path.join("state", "envs"),
              os.path.join("state", "locks"), os.path.join("state", "logs"), os.path.join("state", "runtime"))


def _untrusted_reason(st):
    """Why a file or directory with this stat is not safe to take code from, or None."""
    if st.st_uid not in (os.geteuid(), 0):
        return "belongs to user id %d, not to you (%d)" % (st.st_uid, os.geteuid())
    if st.st_mode & 0o002 or st.st_mode & 0o020 and not _private_group(st.st_gid):
        return "can be written by its group or by other users (mode %03o)" % (st.st_mode & 0o777)
    return None


def _private_group(gid):
    """Is ``gid`` this user's own group, named after them and with no other
    member?  (Distributions with such groups give users umask 002, so their
    directories are group-writable, and that is harmless.)"""
    try:
        import grp
        import pwd
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return gid == os.getegid() and group.gr_name == user and set(group.gr_mem) <= set([user])


def _trust_problem(path):
    """(exists, why ``path`` cannot be trusted or None).  A symbolic link is
    judged by its owner and by what it points to: a link of one's own to a
    bigger disk is fine, one another user could point elsewhere is not."""
    import stat
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False, None
    if not stat.S_ISLNK(st.st_mode):
        return True, _untrusted_reason(st)
    if st.st_uid not in (os.geteuid(), 0):
        return True, "is a symbolic link that belongs to user id %d" % st.st_uid
    try:
        reason = _untrusted_reason(os.stat(path))
    except OSError as exc:
        return True, "is a symbolic link to %s, which cannot be used (%s)" % (os.path.realpath(path),
                                                                              exc.strerror or exc)
    return True, reason and "points to %s, which %s" % (os.path.realpath(path), reason)


def _check_trusted(path, what):
    """Raise WetliteError if ``path`` (or what a link there points to)
    belongs to another user or others can write it.  Returns whether it exists."""
    if _WINDOWS:
        return os.path.lexists(path)
    exists, reason = _trust_problem(path)
    if reason:
        raise WetliteError(
            "refusing %s %s: it %s, so someone else could plant code there that wetlite would run as you; "
            "remove it, or make it yours with mode 700" % (what, path, reason))
    return exists


def _secure_root(root, create=True):
    """Create ``root`` (0700) or check that it can be trusted, with the
    directories wetlite keeps in it.  Writes nothing to an existing root.
    Returns whether the root exists (with ``create=False`` it may not)."""
    if not os.path.lexists(root):
        if not create:
            return False
        try:
            _makedirs_private(root)
        except OSError as exc:
            raise WetliteError("cannot create the wetlite root %s: %s; choose another root (root= or %s)"
                               % (root, exc.strerror or exc, _ENV_ROOT))
    if not _WINDOWS:
        reason = _trust_problem(root)[1] or (None if os.path.isdir(root) else "is not a directory")
        if reason:
            raise WetliteError(
                "refusing the wetlite root %s: it %s, so someone else could plant code there that wetlite would "
                "run as you; use a root of your own (root= or %s), or fix its owner and mode (chmod 700)"
                % (root, reason, _ENV_ROOT))
    for name in _ROOT_DIRS:
        _check_trusted(os.path.join(root, name), "the directory")
    state = os.path.join(root, "state")
    try:
        if not _WINDOWS and os.path.isdir(state) and os.stat(state).st_mode & 0o077:
            os.chmod(state, 0o700)          # logs and records are nobody else's business
    except OSError:
        pass                                # a read-only root
    return True


def _pid_alive(pid):
    """Does process ``pid`` exist?  (os.kill(pid, 0) would kill it on Windows.)"""
    if _WINDOWS:
        import _winapi
        try:
            handle = _winapi.OpenProcess(0x1000, False, pid)        # PROCESS_QUERY_LIMITED_INFORMATION
        except OSError:
            return False
        try:
            return _winapi.GetExitCodeProcess(handle) == 259        # STILL_ACTIVE
        finally:
            _winapi.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass                                # another user's: alive
    return True


_TEMP_SWEPT = set()


def _private_temp_dir(kind, parent=None):
    """A fresh 0700 temp dir named wetlite-KIND-PID-XXXXXXXX (in ``parent``, default the temp dir).

    The first one a process makes in a directory also removes those that
    processes killed before they could clean up left there: this user's,
    whose PID is gone.
    """
    import tempfile
    parent = parent or tempfile.gettempdir()
    if parent not in _TEMP_SWEPT:
        _TEMP_SWEPT.add(parent)
        _sweep_dead_temp_dirs(parent)
    return tempfile.mkdtemp(prefix="wetlite-%s-%d-" % (kind, os.getpid()), dir=parent)


def _sweep_dead_temp_dirs(directory):
    import re
    import stat
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = re.match(r"^wetlite-[a-z]+-(\d+)-[A-Za-z0-9_]+\Z", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if (not stat.S_ISDIR(st.st_mode) or (not _WINDOWS and st.st_uid != os.geteuid())
                or os.path.exists(os.path.join(path, _KEPT_MARKER)) or _pid_alive(int(m.group(1)))):
            continue
        _log().debug("removing %s, left by process %s, which is gone", path, m.group(1))
        _rmtree(path)


_KEPT_MARKER = "KEPT-BY-WETLITE_DEBUG"


def _read_json(path):
    """The JSON document in ``path``, or None if it is missing or unreadable."""
    import json
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path, obj):
    import json
    _atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _storage_error(exc, doing, path=None):
    """An OSError met while ``doing`` something, as a WetliteError naming the path and the fix."""
    import errno
    if isinstance(exc, WetliteError):
        return exc
    path = path or exc.filename or "?"
    code = exc.errno
    if code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free some space there, or use a root on another disk (WETLITE_ROOT)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it writable, or use another root (WETLITE_ROOT)"
    else:
        fix = "check that path"
    error = _StorageError("%s failed: %s: %s; %s" % (doing, path, exc.strerror or exc, fix))
    error.errno, error.filename = code, path
    return error


def _tree_size(path):
    """Bytes on disk under ``path`` (each hard-linked file once; links not followed)."""
    seen = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            blocks = getattr(st, "st_blocks", None)
            total += blocks * 512 if blocks is not None else st.st_size
    return total


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _rmtree(path):
    """Remove a tree, read-only files included (Windows marks some so)."""
    import shutil
    import stat

    def retry_writable(func, target, _exc):
        try:
            os.chmod(target, stat.S_IWRITE | stat.S_IREAD | stat.S_IEXEC)
            func(target)
        except OSError:
            pass

    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=retry_writable)
        else:
            _remove_quietly(path)


class _FileLock(object):
    """An exclusive lock between processes (and threads) on a lock file.

    fcntl.flock on POSIX, msvcrt.locking on Windows.  The lock is released
    by the OS if the holder dies, so a crash never leaves it stuck.  The
    holder writes its pid into the file, so that a wait that times out can
    name it.  A lock file that cannot be created because the root is
    read-only is no lock at all: nobody can change such a root either.
    """

    def __init__(self, path, what="the lock", timeout=None):
        self.path = path
        self.what = what
        self.timeout = _LOCK_TIMEOUT if timeout is None else timeout
        self._file = None

    def _open(self):
        _makedirs_private(os.path.dirname(self.path))
        return _open_private(self.path, "r+b")

    def acquire_nowait(self):
        """Take the lock if it is free and return True; else (or if it cannot be opened) False at once."""
        try:
            f = self._open()
        except OSError:
            return False
        if self._try_lock(f) and self._still_there(f):
            self._file = f
            return True
        f.close()
        return False

    def _still_there(self, f):
        """Whether the file locked is still the one at the path: its holder may
        have deleted it (remove() does) while this process waited for it."""
        try:
            held, there = os.fstat(f.fileno()), os.stat(self.path)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)

    def delete(self):
        """Delete the lock file while holding it (a waiter then locks a new one)."""
        if self._file is not None:
            _remove_quietly(self.path)

    def __enter__(self):
        import errno
        import time
        directory = os.path.dirname(self.path)
        try:
            f = self._open()
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and os.path.isdir(directory):
                _log().debug("cannot take %s (%s): %s; going on without it", self.what, self.path, exc.strerror)
                return self
            raise
        deadline = time.monotonic() + self.timeout
        waited = False
        try:
            while True:
                while not self._try_lock(f):
                    if not waited:
                        _log().info("waiting for %s holding %s (%s)", self._holder(f), self.what, self.path)
                        waited = True
                    if time.monotonic() > deadline:
                        raise WetliteError(
                            "gave up waiting for %s after %s s: %s holds it (%s); if that process is stuck, stop it"
                            % (self.what, _format_number(self.timeout), self._holder(f), self.path))
                    time.sleep(0.05)
                if self._still_there(f):
                    break
                f.close()               # deleted by its holder (see delete()): lock the file at the path now
                f = self._open()
            try:
                # Fixed width and no truncate: cutting a file that had data costs a
                # flush on some file systems (ext4), milliseconds on create()'s reuse.
                f.seek(0)
                f.write(b"%-20d\n" % os.getpid())
                f.flush()
            except OSError:
                pass
        except BaseException:
            f.close()
            raise
        self._file = f
        return self

    @staticmethod
    def _holder(f):
        try:
            f.seek(0)
            text = f.read(32).decode("ascii", "replace").split("\n")[0].strip()
        except OSError:
            text = ""
        return ("process %s" % text) if text.isdigit() else "another process"

    @staticmethod
    def _try_lock(f):
        if _WINDOWS:
            import msvcrt
            try:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                return False
        import fcntl
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except (BlockingIOError, PermissionError):
            return False

    def __exit__(self, *exc):
        f, self._file = self._file, None
        if f is None:
            return
        try:
            if _WINDOWS:
                import msvcrt
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        finally:
            f.close()

# =============================================================================
# 7. Downloads and archives
#    Everything that touches the network goes through _urlopen().
# =============================================================================


def _mask_url(text):
    """``text`` with the user:password part of every URL in it hidden, for
    messages, logs and records: ``https://u:p@host/x`` -> ``https://***@host/x``."""
    if "@" not in text or "://" not in text:
        return text
    import re
    # The user info ends at the last "@" before the path: a password may hold an "@".
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@", r"\1***@", text)


def _mask_secrets(value):
    """Credentials in URLs hidden in a string, or in the strings of lists,
    tuples and dict values (a recipe, a mapping of environment variables)."""
    if isinstance(value, str):
        return _mask_url(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_secrets(v) for v in value)
    if isinstance(value, dict):
        return {k: _mask_secrets(v) for k, v in value.items()}
    return value


def _urlopen(url, proxies=None, timeout=None, headers=None, watchdog=None):
    """Open ``url`` with wetlite's User-Agent, a timeout and the given proxies.

    ``proxies`` is a ``{"http": ..., "https": ...}`` dict; None means the
    usual ``*_proxy`` environment variables.  No global opener is installed.
    A redirect from https to http is refused.  ``watchdog.add(sock)`` is
    told of each socket opened, so that it can cut a request off.
    """
    import urllib.parse
    import urllib.request
    handlers = [_redirect_handler()]
    if proxies is not None:
        handlers.append(urllib.request.ProxyHandler(dict(proxies)))
    if watchdog is not None:
        handlers.extend(_socket_recording_handlers(watchdog.add))
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:
        # user:password@host: send it as Basic auth to that host only (never
        # to where a redirect may lead), and keep it out of the request line.
        netloc = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        passwords = urllib.request.HTTPPasswordMgrWithPriorAuth()
        passwords.add_password(None, "%s://%s/" % (parts.scheme, netloc), urllib.parse.unquote(parts.username),
                               urllib.parse.unquote(parts.password or ""), is_authenticated=True)
        handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
    opener = urllib.request.build_opener(*handlers)
    request_headers = {"User-Agent": "wetlite/" + __version__}
    request_headers.update(headers or {})
    request = urllib.request.Request(url, headers=request_headers)
    return opener.open(request, timeout=_download_timeout() if timeout is None else timeout)


def _redirect_handler():
    import urllib.request

    class NoDowngrade(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if req.full_url.lower().startswith("https:") and not newurl.lower().startswith("https:"):
                raise DownloadError("refusing the redirect from %s to %s: it leaves https; use an https mirror"
                                    % (_mask_url(req.full_url), _mask_url(newurl)), url=_mask_url(req.full_url))
            return urllib.request.HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)
    return NoDowngrade()


def _socket_recording_handlers(record):
    """HTTP and HTTPS handlers that call ``record(sock)`` for each connected socket."""
    import urllib.request

    class Recording(object):
        def do_open(self, http_class, req, **kwargs):
            def connection(*args, **kw):
                conn = http_class(*args, **kw)
                connect = conn.connect

                def recording_connect():
                    connect()
                    record(conn.sock)
                conn.connect = recording_connect
                return conn
            return super(Recording, self).do_open(connection, req, **kwargs)

    bases = [urllib.request.HTTPHandler] + [c for c in [getattr(urllib.request, "HTTPSHandler", None)] if c]
    return [type("Recording" + base.__name__, (Recording, base), {})() for base in bases]


def _positive_seconds(name, default):
    """The number of seconds in the environment variable ``name``, else ``default``."""
    import math
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise SpecError("%s=%r is not a positive number of seconds; unset it or give one, such as 60"
                        % (name, value))
    return seconds


def _download_timeout():
    return max(_positive_seconds(_ENV_DOWNLOAD_TIMEOUT, _DOWNLOAD_TIMEOUT), 0.1)


def _download_limit(default=None):
    """The size cap of one download, in bytes: $WETLITE_DOWNLOAD_LIMIT (a number
    of bytes, or with a K, M or G suffix), else ``default``, else the ceiling."""
    import re
    value = os.environ.get(_ENV_DOWNLOAD_LIMIT)
    if not value:
        return default or _DOWNLOAD_LIMIT
    m = re.match(r"^\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*\Z", value)
    if not m or not int(m.group(1)):
        raise SpecError("%s=%r is not a size; give bytes or a size such as 800M or 2G" % (_ENV_DOWNLOAD_LIMIT, value))
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


class _TransientError(Exception):
    """A download attempt failed in a way worth retrying."""


def _read_body(response, write, limit, shown):
    """Copy the body of ``response`` to ``write(chunk)``; return the bytes copied.

    Refuses more than ``limit`` bytes (DownloadError), and abandons the
    attempt (_TransientError) when a whole timeout period brings less than
    _DOWNLOAD_MIN_RATE bytes per second: a trickle is a stall.
    """
    import time
    window = _download_timeout()
    copied = 0
    mark, marked = time.monotonic(), 0
    read = getattr(response, "read1", response.read)       # returns what one recv brought
    while True:
        chunk = read(1 << 16)
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > limit:
            raise DownloadError(
                "download of %s refused: it sends more than %s; if the file really is that large, raise %s "
                "(e.g. %s=2G)" % (shown, _human_bytes(limit), _ENV_DOWNLOAD_LIMIT, _ENV_DOWNLOAD_LIMIT), url=shown)
        write(chunk)
        now = time.monotonic()
        if now - mark >= window:
            if copied - marked < _DOWNLOAD_MIN_RATE * (now - mark):
                raise _TransientError("too slow: %d bytes in %.1f s" % (copied - marked, now - mark))
            mark, marked = now, copied


def _download(url, dest, proxies=None, label=None, progress_stream=None, limit=None):
    """Download ``url`` to the file ``dest`` atomically and return its SHA-256.

    Transient failures (timeouts, resets, truncated bodies, 5xx, 429) are
    retried with exponential backoff, resuming with a Range request where
    the server allows.  At most ``limit`` bytes (default: _download_limit()).
    On failure nothing is left at ``dest``.
    """
    import hashlib
    part = dest + ".part"
    limit = _download_limit(limit)
    shown = _mask_url(url)
    state = {"received": 0, "digest": hashlib.sha256()}

    def attempt(response):
        status = getattr(response, "status", None) or response.getcode()
        if state["received"] and status != 206:
            state["received"] = 0           # the server ignored Range: start over
            state["digest"] = hashlib.sha256()
        received = state["received"]
        length = response.headers.get("Content-Length")
        expected = received + int(length) if length and length.isdigit() else None
        if expected is not None and expected > limit:
            raise DownloadError(
                "download of %s refused: it announces %s, more than the limit of %s; if that is right, raise %s"
                % (shown, _human_bytes(expected), _human_bytes(limit), _ENV_DOWNLOAD_LIMIT), url=shown)
        bar = _ProgressBar(label or os.path.basename(dest), expected, progress_stream)
        bar.update(received)

        def write(chunk):
            out.write(chunk)
            state["digest"].update(chunk)
            state["received"] += len(chunk)
            bar.update(len(chunk))
        try:
            with _open_private(part, "ab" if received else "wb") as out:
                _read_body(response, write, limit - received, shown)
        finally:
            bar.close()
        if expected is not None and state["received"] != expected:
            raise _TransientError("truncated: got %d of %d bytes" % (state["received"], expected))

    try:
        _with_retries(url, proxies, attempt,
                      lambda: {"Range": "bytes=%d-" % state["received"]} if state["received"] else {})
        os.replace(part, dest)
    except BaseException:
        _remove_quietly(part)
        raise
    return state["digest"].hexdigest()


def _with_retries(url, proxies, attempt, headers=lambda: {}):
    """Open ``url`` and run ``attempt(response)``, retrying transient failures.

    Returns what ``attempt`` returns.  Raises DownloadError for a permanent
    failure, after ``_DOWNLOAD_ATTEMPTS`` transient ones, or when the whole
    thing takes longer than the deadline ($WETLITE_DOWNLOAD_DEADLINE): a
    watchdog then cuts the connection, wherever it is stuck.
    """
    import http.client
    import socket
    import time
    import urllib.error
    shown = _mask_url(url)
    budget = _positive_seconds(_ENV_DOWNLOAD_DEADLINE, _DOWNLOAD_DEADLINE)
    deadline = time.monotonic() + budget
    last_error = last_status = None
    for number in range(_DOWNLOAD_ATTEMPTS):
        if number:
            delay = _BACKOFF_SECONDS * (2 ** (number - 1))
            _log().info("retrying %s in %.1f s (%s)", shown, delay, last_error)
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        watchdog = _Watchdog(remaining)
        try:
            with _urlopen(url, proxies, headers=headers(), watchdog=watchdog) as response:
                result = attempt(response)
            if not watchdog.expired:
                return result
        except urllib.error.HTTPError as exc:
            if not watchdog.expired:
                if exc.code not in _TRANSIENT_HTTP:
                    hint = " (check the version and the download URL)" if exc.code == 404 else ""
                    raise DownloadError("download of %s failed: HTTP %d %s%s" % (shown, exc.code, exc.reason, hint),
                                        url=shown, status=exc.code)
                last_error, last_status = "HTTP %d %s" % (exc.code, exc.reason), exc.code
        except (urllib.error.URLError, socket.timeout, http.client.HTTPException,
                ConnectionError, _TransientError) as exc:
            reason = getattr(exc, "reason", None) or exc
            last_error = "timed out" if isinstance(reason, socket.timeout) else str(reason) or type(exc).__name__
            last_status = None
            if (not watchdog.expired and isinstance(exc, urllib.error.URLError)
                    and not isinstance(reason, (socket.timeout, OSError))):
                raise DownloadError("download of %s failed: %s" % (shown, last_error), url=shown)
        except OSError:
            if not watchdog.expired:
                raise
        finally:
            watchdog.cancel()
        if watchdog.expired:
            break
    else:
        raise DownloadError(
            "download of %s failed after %d attempts: %s; check the network, the proxy settings "
            "(proxies= or *_proxy variables) or set %s to a reachable mirror"
            % (shown, _DOWNLOAD_ATTEMPTS, last_error, _ENV_DOWNLOAD_URL), url=shown, status=last_status)
    raise DownloadError("download of %s did not finish within %s s (%s); check the network, or raise %s"
                        % (shown, _format_number(budget), last_error or "still running", _ENV_DOWNLOAD_DEADLINE),
                        url=shown, status=last_status)


class _Watchdog(object):
    """Cuts the connections of one download attempt when its deadline passes."""

    def __init__(self, seconds):
        import threading
        self.expired = False
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.cut)
        self._timer.daemon = True
        self._timer.start()

    def add(self, sock):
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._shut(sock)

    def cut(self):
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock):
        import socket
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self):
        self._timer.cancel()


def _format_number(value):
    return ("%d" % value) if value == int(value) else ("%g" % value)


def _fetch_text(url, proxies=None, limit=1 << 16):
    """Small text resources (checksum files): the body, or None on HTTP 404."""
    def attempt(response):
        chunks = []
        _read_body(response, chunks.append, limit, _mask_url(url))
        return b"".join(chunks).decode("utf-8", "replace")
    try:
        return _with_retries(url, proxies, attempt)
    except DownloadError as exc:
        if exc.status == 404:
            return None
        raise


def _parse_sha256(text, source):
    """The digest in a .sha256 file: its first token (pixi writes "<hex>  <name>")."""
    token = (text or "").strip().split(None, 1)[0].lstrip("*").lower() if (text or "").strip() else ""
    if len(token) != 64 or any(c not in "0123456789abcdef" for c in token):
        raise DownloadError("checksum file %s does not hold a SHA-256 digest" % (source,), url=source)
    return token


def _unsafe_member_reason(name, kind=None, link_target=None):
    """Why an archive member may not be extracted, or None.

    Refuses absolute paths, drive letters, ".." components, device files and
    links that point outside the extraction directory.
    """
    import posixpath
    if kind in ("device", "fifo"):
        return "is a device or FIFO"
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        return "has an absolute path"
    if ".." in normalized.split("/"):
        return "contains '..'"
    if link_target is not None:
        target = link_target.replace("\\", "/")
        if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
            return "links to an absolute path"
        base = posixpath.dirname(normalized) if kind == "symlink" else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return "links outside the archive"
    return None


def _extract_binary(archive, wanted, dest, limit):
    """Write the one regular file ``wanted`` names from ``archive`` to ``dest``; return its SHA-256.

    ``wanted`` lists paths inside the archive; a bare name (``pixi``) also
    matches at any depth, as pixi's own installer allows for nested layouts.
    Every member is checked, and the whole archive refused (ToolError), if
    one is unsafe: an absolute path, "..", a link out of the archive, a
    device.  Nothing else is written, and an archive that holds more than
    _ARCHIVE_MEMBER_LIMIT members or unpacks to more than ``limit`` bytes
    is refused as soon as that shows: a bomb costs no disk and little time.
    (.tar.gz, .tar.bz2, .tar.xz, plain .tar and .zip.)
    """
    import zipfile
    name = os.path.basename(archive)

    def pick(member_name):
        normalized = member_name.replace("\\", "/").strip("/")
        return any(normalized == w or ("/" not in w and normalized.rsplit("/", 1)[-1] == w) for w in wanted)

    def refuse(member_name, reason):
        raise ToolError("refusing archive %s: member %r %s" % (archive, member_name, reason))

    def too_big():
        raise ToolError("refusing archive %s: it unpacks to more than %s (a decompression bomb, or the wrong file); "
                        "if it is right, raise %s" % (archive, _human_bytes(limit), _ENV_DOWNLOAD_LIMIT))

    state = {"digest": None, "members": 0}

    def count():
        state["members"] += 1
        if state["members"] > _ARCHIVE_MEMBER_LIMIT:
            raise ToolError("refusing archive %s: more than %d members" % (archive, _ARCHIVE_MEMBER_LIMIT))

    def copy(source, size):
        import hashlib
        if size > limit:
            too_big()
        digest = hashlib.sha256()
        written = 0
        with _open_private(dest, "wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                written += len(chunk)
                if written > limit:
                    too_big()
                digest.update(chunk)
                out.write(chunk)
        state["digest"] = digest.hexdigest()

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                chosen = None
                for info in infos:
                    count()
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    reason = "is a symbolic link" if is_link else _unsafe_member_reason(info.filename)
                    if reason:
                        refuse(info.filename, reason)
                    if chosen is None and not info.is_dir() and pick(info.filename):
                        chosen = info
                if sum(i.file_size for i in infos) > limit:
                    too_big()
                if chosen is not None:
                    with zf.open(chosen) as source:        # reads no more than file_size, CRC checked
                        copy(source, chosen.file_size)
        else:
            _extract_tar_member(archive, pick, count, refuse, too_big, copy, limit)
    except BaseException:
        _remove_quietly(dest)
        raise
    if state["digest"] is None:
        raise ToolError("archive %s holds no %s" % (name, " or ".join(wanted)))
    return state["digest"]


def _extract_tar_member(archive, pick, count, refuse, too_big, copy, limit):
    """The tar half of _extract_binary: one streaming pass, decompressed bytes counted."""
    import tarfile
    with open(archive, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        if magic.startswith(b"\x1f\x8b"):
            import gzip
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic.startswith(b"BZh"):
            import bz2
            stream = bz2.BZ2File(raw, "rb")
        elif magic.startswith(b"\xfd7zXZ"):
            import lzma
            stream = lzma.LZMAFile(raw, "rb")
        else:
            stream = raw
        capped = _CappedReader(stream, limit + (1 << 20), too_big)     # headers take room too
        try:
            tf = tarfile.open(fileobj=capped, mode="r|")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ToolError("cannot read archive %s: %s" % (archive, exc))
        links = set()
        done = False
        try:
            with tf:
                for m in tf:
                    count()
                    kind = ("device" if (m.ischr() or m.isblk()) else "fifo" if m.isfifo() else
                            "symlink" if m.issym() else "hardlink" if m.islnk() else None)
                    reason = _unsafe_member_reason(m.name, kind, m.linkname if kind in ("symlink", "hardlink") else None)
                    parts = m.name.replace("\\", "/").strip("/").split("/")
                    if reason is None and any("/".join(parts[:i]) in links for i in range(1, len(parts))):
                        reason = "goes through a symbolic link"     # a -> ., a/b -> .. would chain out
                    if reason:
                        refuse(m.name, reason)
                    if kind == "symlink":
                        links.add("/".join(parts))
                    if not done and m.isreg() and pick(m.name):
                        copy(tf.extractfile(m), m.size)
                        done = True
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ToolError("cannot read archive %s: %s" % (archive, exc))


class _CappedReader(object):
    """A read-only file that calls ``exceeded()`` once more than ``limit`` bytes were read."""

    def __init__(self, stream, limit, exceeded):
        self.stream = stream
        self.limit = limit
        self.exceeded = exceeded
        self.count = 0

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.limit - self.count + 1      # never "everything": that is the bomb
        data = self.stream.read(size)
        self.count += len(data)
        if self.count > self.limit:
            self.exceeded()
        return data

# =============================================================================
# 8. Tools: Pixi, Micromamba and local interpreters for venv
#    A tool binary lives in {root}/bin with a marker naming its release tag.
#    Installing verifies, extracts into a staging dir next to the target,
#    runs `--version`, then os.replace()s: a failed upgrade keeps the old one.
# =============================================================================


def _normalize_tool_version(tool, version):
    """A release tag: pixi ``v0.73.0``; micromamba ``2.8.1-0`` (build 0 if omitted)."""
    import re
    default = PIXI_VERSION if tool == "pixi" else MICROMAMBA_VERSION
    if version is None:
        return default
    text = str(version).strip()
    if tool == "pixi":
        if re.match(r"^v?\d+\.\d+\.\d+(?:[-.]?[A-Za-z0-9.]+)?\Z", text):
            return text if text.startswith("v") else "v" + text
    else:
        m = re.match(r"^(\d+\.\d+\.\d+(?:[A-Za-z0-9.]+)?)(-\d+)?\Z", text)
        if m:
            return m.group(1) + (m.group(2) or "-0")
    raise ToolError("invalid %s version %r: give a release tag such as %r" % (tool, version, default))


def _tool_version(exe, env=None):
    """Run ``exe --version`` and return the version it prints (the smoke test)."""
    import re
    import subprocess
    try:
        proc = subprocess.run([exe, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=_VERSION_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        raise ToolError("%s --version did not answer within %d s; the binary is broken or blocked"
                        % (exe, _VERSION_TIMEOUT))
    except OSError as exc:
        raise ToolError("cannot run %s: %s; check that it is an executable for this platform" % (exe, exc))
    text = proc.stdout.decode("utf-8", "replace").strip()
    found = re.search(r"(\d+\.\d+\.\d+[A-Za-z0-9.]*)", text)
    if proc.returncode != 0 or not found:
        raise ToolError("%s --version failed (exit code %s): %s" % (exe, proc.returncode, text[-500:] or "no output"))
    return found.group(1)


def _tag_version(tag):
    """The version a binary prints for a release tag: v0.73.0 -> 0.73.0, 2.8.1-0 -> 2.8.1."""
    import re
    return re.sub(r"-\d+\Z", "", tag[1:] if tag.startswith("v") else tag)


def _install_tool(tool, root, tag, base_url, proxies=None, verify=True, platform_id=None):
    """Download, verify and install ``tool`` at release ``tag`` under root/bin."""
    os_name, arch = platform_id or _platform_id()
    asset = _tool_asset(tool, os_name, arch)
    windows = os_name == "win"
    bin_dir = os.path.join(root, "bin")
    target = os.path.join(bin_dir, _exe_name(tool, windows))
    marker = os.path.join(bin_dir, "." + tool + "-version")
    if _check_trusted(target, "the tool binary") and _read_marker(marker) == tag:
        return target
    with _FileLock(os.path.join(root, "state", "locks", "install-" + tool + ".lock"), "the %s install lock" % tool):
        if os.path.isfile(target) and _read_marker(marker) == tag:
            return target           # another process installed it while we waited
        import tempfile
        _makedirs_private(bin_dir)
        # Holding the lock, any other staging dir is a killed install's leftover.
        for stale in _install_stages(bin_dir, tool):
            _log().debug("removing %s, left by an install that was killed", stale)
            _rmtree(stale)
        stage = tempfile.mkdtemp(prefix=".install-" + tool + "-", dir=bin_dir)
        try:
            _log().info("installing %s %s (%s) into %s", tool, tag, asset, bin_dir)
            staged = _fetch_tool(tool, tag, asset, base_url, proxies, verify, stage, windows)
            found = _tool_version(staged)
            if found != _tag_version(tag):
                raise ToolError("the downloaded %s reports version %s, expected %s; the mirror %s serves "
                                "the wrong file" % (tool, found, _tag_version(tag), _mask_url(base_url)))
            os.replace(staged, target)
            _atomic_write(marker, tag)
        except BaseException as exc:
            if isinstance(exc, WetliteError) and os.path.isfile(target):
                _log().warning("%s was not upgraded to %s; keeping the existing %s", tool, tag, target)
            raise
        finally:
            _rmtree(stage)
    return target


def _install_stages(bin_dir, tool):
    """The staging dirs of ``tool`` installs in ``bin_dir`` (stale unless its install lock is held)."""
    import glob
    return glob.glob(os.path.join(glob.escape(bin_dir), ".install-" + tool + "-*"))


def _read_marker(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _fetch_tool(tool, tag, asset, base_url, proxies, verify, stage, windows):
    """Download ``asset`` into ``stage``, verify it and return the binary's path.

    What was downloaded is verified before anything is extracted.  The one
    exception is micromamba's .tar.bz2 package (the fallback when a mirror
    has no raw binary): the release's digests are those of the binary inside,
    so only that member is extracted, streaming, within the size cap, and
    verified before it goes anywhere.
    """
    url = "%s/%s/%s" % (base_url.rstrip("/"), tag, asset)
    download = os.path.join(stage, asset)
    final = os.path.join(stage, _exe_name(tool, windows))
    label = "%s %s" % (tool, tag)
    limit = _download_limit(_TOOL_SIZE_LIMITS[tool])
    # Micromamba's package sidecar also holds the raw binary's digest, so a
    # mirror that carries only the package can still be verified.
    sidecars = [url + ".sha256"] + ([url + ".tar.bz2.sha256"] if tool == "micromamba" else [])
    expected = _require_sha256(_known_sha256(tool, tag, asset, sidecars, proxies), tool, tag, url, verify)
    if tool == "pixi":
        _check_digest(_download(url, download, proxies, label, limit=limit), expected, url)
        _extract_binary(download, ("pixi.exe", "pixi"), final, limit)
    else:
        try:
            _check_digest(_download(url, download, proxies, label, limit=limit), expected, url)
            os.replace(download, final)
        except DownloadError as exc:
            if exc.status != 404:
                raise
            # Some mirrors (and micro.mamba.pm) only carry the conda package.
            url += ".tar.bz2"
            download += ".tar.bz2"
            _download(url, download, proxies, label, limit=limit)
            digest = _extract_binary(download, ("Library/bin/micromamba.exe", "bin/micromamba"), final, limit)
            _check_digest(digest, expected, url)
    os.chmod(final, 0o700)
    return final


def _known_sha256(tool, tag, asset, sidecars, proxies):
    """The pinned digest of an asset, else the first sidecar's, else None."""
    pinned = _PINNED_SHA256.get((tool, tag), {}).get(asset)
    if pinned:
        return pinned
    for sidecar in sidecars:
        text = _fetch_text(sidecar, proxies)
        if text is not None:
            return _parse_sha256(text, _mask_url(sidecar))
    return None


def _require_sha256(expected, tool, tag, url, verify):
    if expected is not None:
        return expected
    if verify:
        raise DownloadError(
            "no checksum for %s %s: it is not pinned in wetlite and %s.sha256 does not exist; use a pinned "
            "version (%s) or, if you trust the source, EnvironmentManager(..., verify_downloads=False)"
            % (tool, tag, _mask_url(url), PIXI_VERSION if tool == "pixi" else MICROMAMBA_VERSION),
            url=_mask_url(url + ".sha256"), status=404)
    _log().warning("installing %s %s from %s WITHOUT checksum verification (verify_downloads=False)",
                   tool, tag, _mask_url(url))
    return None


def _check_digest(digest, expected, url):
    if expected is not None and digest != expected:
        raise DownloadError("checksum mismatch for %s: got sha256 %s, expected %s; the file is corrupt or "
                            "was tampered with, and was not installed" % (_mask_url(url), digest, expected),
                            url=_mask_url(url))


_MAMBARC_TEXT = """\
# wetlite passes this file to micromamba with --rc-file, so that ~/.condarc and
# other user files do not change how environments under this root are built.
# Channels are given on each command line, never here.  Add settings your
# network needs (proxy_servers, ssl_verify, ...), as in any .mambarc.
channel_priority: flexible
# The package cache stays under this root, not in ~/.mamba.
pkgs_dirs: [%s]
"""


def _ensure_mambarc(root):
    import json
    try:
        # Made here, 0700: micromamba would make it with the umask's mode,
        # group-writable under umask 002, and the root would then be refused.
        _makedirs_private(os.path.join(root, "pkgs"))
    except OSError:
        pass                                # a read-only root: micromamba installs nothing there
    path = os.path.join(root, ".mambarc")
    if not os.path.exists(path):
        # A JSON string is a valid YAML flow scalar, whatever the path holds.
        _atomic_write(path, _MAMBARC_TEXT % json.dumps(os.path.join(root, "pkgs")))
    return path


# --- Local interpreters (the venv tool) -------------------------------------

_VERSION_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def _interpreter_version(exe):
    import subprocess
    try:
        proc = subprocess.run([exe, "-I", "-c", _VERSION_PROBE], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30,
                              env=_child_environ())
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout.decode("ascii", "replace").strip()
    return text if proc.returncode == 0 and text.count(".") == 2 else None


def _interpreter_candidates():
    """Yield ``(path, version or None)`` for the interpreters this machine has.

    The host first, then pyenv's versions, then PATH, then the Windows py
    launcher.  A None version is probed only if it is needed.
    """
    import glob
    import re
    yield sys.executable, "%d.%d.%d" % sys.version_info[:3]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    for bin_python in sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3"))):
        m = re.match(r"^(\d+\.\d+\.\d+)\Z", os.path.basename(os.path.dirname(os.path.dirname(bin_python))))
        if m:
            yield bin_python, m.group(1)
    shims = os.path.join(pyenv_root, "shims")
    names = ["python3.%d" % minor for minor in range(30, 5, -1)] + ["python3", "python"]
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or os.path.abspath(directory) == os.path.abspath(shims):
            continue        # pyenv shims are slow and fail for versions not selected
        for name in names:
            path = os.path.join(directory, name + (".exe" if _WINDOWS else ""))
            if os.path.isfile(path) and os.access(path, os.X_OK):
                yield path, None
    if _WINDOWS:
        import subprocess
        try:
            out = subprocess.run(["py", "-0p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 timeout=30).stdout.decode("utf-8", "replace")
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            m = re.search(r"([A-Za-z]:\\.*python\.exe)\s*$", line.strip(), re.I)
            if m:
                yield m.group(1), None


def _choose_interpreter(python_spec):
    """Pick a local interpreter (path, version) for the venv tool.

    The host wins when it matches, because results and pickles then behave
    the same on both sides; otherwise the highest matching version.
    """
    seen = set()
    best = None
    tried = []
    for path, version in _interpreter_candidates():
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        if version is None:
            version = _interpreter_version(path)
            if version is None:
                continue
        tried.append(version)
        if _version_tuple(version) < (3, 6) or not _python_spec_matches(python_spec, version):
            continue
        if path == sys.executable:
            return path, version
        if best is None or _version_tuple(version) > _version_tuple(best[1]):
            best = (path, version)
    if best is not None and _interpreter_version(best[0]) is not None:
        return best
    raise ToolError(
        "no local Python interpreter matches python=%r for the venv tool (found: %s); install one "
        "(pyenv, python.org, the py launcher) or use tool='micromamba' or 'pixi', which download Python"
        % (python_spec, ", ".join(sorted(set(tried), key=_version_tuple)) or "none"))


def _version_tuple(version):
    parts = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    return tuple(parts)

# =============================================================================
# 9. Dependency specs and config files
#    A spec is {"python", "conda", "pip", "channels"}; entries are strings or
#    {"name", "platforms", "optional", "dependencies"} dicts.  Everything is
#    validated before any tool runs, and errors name the offending value.
# =============================================================================

_SPEC_KEYS = ("python", "conda", "pip", "channels")
_ENTRY_KEYS = ("name", "platforms", "optional", "dependencies")
_CONFIG_KINDS = {
    "requirements": "requirements.txt (pip)",
    "environment": "environment.yml",
    "pixi": "pixi.toml",
    "pyproject": "pyproject.toml",
}


def _as_list(value, what):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    raise SpecError("%s must be a list of strings, not %s %r; wrap a single value in a list"
                    % (what, type(value).__name__, value))


def _normalize_dependencies(deps, tool, where="dependencies"):
    """Validate a spec dict and return it in canonical form (plain JSON data)."""
    if deps is None:
        deps = {}
    if not isinstance(deps, dict):
        raise SpecError("%s must be a dict such as {'python': '3.11', 'conda': ['numpy'], 'pip': "
                        "['tifffile']}, not %s %r" % (where, type(deps).__name__, deps))
    unknown = sorted(str(k) for k in deps if k not in _SPEC_KEYS)
    if unknown:
        raise SpecError("unknown key %s in %s; the keys are: %s"
                        % (", ".join(repr(k) for k in unknown), where, ", ".join(_SPEC_KEYS)))
    python = deps.get("python")
    if python is not None:
        python = _check_python_spec(python)
    conda = [_normalize_entry(e, "conda") for e in _as_list(deps.get("conda"), "'conda'")]
    pip = [_normalize_entry(e, "pip") for e in _as_list(deps.get("pip"), "'pip'")]
    python, conda = _python_from_conda(python, conda, where)
    channels = []
    for channel in _as_list(deps.get("channels"), "'channels'"):
        if not isinstance(channel, str) or not channel.strip() or any(c.isspace() or ord(c) < 32 for c in channel.strip()):
            raise SpecError("invalid channel %r: give a channel name or URL without spaces" % (channel,))
        channels.append(_absolute_channel(channel.strip()))
    if tool == "venv":
        if conda:
            raise SpecError("the venv tool installs pip packages only, but conda package %r was requested; "
                            "move it to 'pip' or use tool='micromamba' or tool='pixi'" % conda[0]["name"])
        if channels:
            raise SpecError("the venv tool has no conda channels (got %r); drop 'channels' or use "
                            "tool='micromamba' or tool='pixi'" % channels)
    if tool == "pixi":
        for entry in conda:
            if not entry["dependencies"]:
                raise SpecError("pixi cannot install conda package %r without its dependencies; drop "
                                "'dependencies': False or use tool='micromamba'" % entry["name"])
        for entry in pip:
            if entry["name"].startswith("-"):
                raise SpecError("pip option %r cannot be passed to pixi; put pypi options in a pixi.toml "
                                "([pypi-options]) and use config=, or use tool='micromamba' or 'venv'"
                                % entry["name"])
    return {"python": python, "conda": conda, "pip": pip, "channels": channels}


def _python_from_conda(python, conda, where):
    """A ``python`` entry of the conda list becomes the python spec: the tools
    key specs by name, so two pythons would conflict or silently replace each other."""
    pythons = [e for e in conda if _split_conda_spec(e["name"])[1].lower() == "python"]
    if not pythons:
        return python, conda
    if python is not None or len(pythons) > 1:
        raise SpecError("python is given twice in %s (%s); give it once, with the 'python' key"
                        % (where, ", ".join(["'python': %r" % python] * (python is not None)
                                            + [repr(e["name"]) for e in pythons])))
    entry = pythons[0]
    channel, _name, constraint = _split_conda_spec(entry["name"])
    if channel or entry["platforms"] or not entry["dependencies"]:
        raise SpecError("conda entry %r: give python with the 'python' key (a version or specifier), without "
                        "a channel, platforms or 'dependencies'" % (entry["name"],))
    return (_check_python_spec(constraint) if constraint else None), [e for e in conda if e is not entry]


def _check_python_spec(python):
    import re
    if isinstance(python, float):
        raise SpecError("python version %r must be a string such as '3.10' (as a float, 3.10 is 3.1)" % (python,))
    if isinstance(python, int) and not isinstance(python, bool):
        python = str(python)
    if not isinstance(python, str) or not re.match(r"^[0-9A-Za-z.*=<>!~, |]+\Z", python.strip()):
        raise SpecError("invalid python spec %r: use a version ('3.11') or a specifier ('>=3.10,<3.13')" % (python,))
    python = python.strip()
    try:
        _python_pep440(python)
    except ValueError as exc:
        raise SpecError("invalid python spec %r: %s" % (python, exc))
    return python


def _python_pep440(spec):
    """PEP 440 alternatives for a python spec: '3.11' and conda's '=3.11' mean 3.11.*."""
    import re
    alternatives = []
    for alt in spec.split("|"):
        alt = alt.strip().replace(" ", "")
        m = re.match(r"^=?(\d+(?:\.\d+)*)(?:\.\*)?\Z", alt)
        if m:
            alt = "==%s.*" % m.group(1)
        elif not alt:
            raise ValueError("empty alternative")
        _version_matches(alt, "3.0")          # raises ValueError if malformed
        alternatives.append(alt)
    return alternatives


def _python_spec_matches(spec, version):
    if spec is None:
        return True
    return any(_version_matches(alt, version, prereleases=True) for alt in _python_pep440(spec))


def _python_conda_spec(spec):
    """The conda match spec for a python spec: '3.11' -> 'python=3.11'."""
    spec = spec.replace(" ", "")
    return "python" + ("=" + spec if spec[:1].isdigit() else spec)


def _python_marker_version(spec):
    """The X.Y a python spec pins, for evaluating markers on its behalf, or None."""
    import re
    if spec:
        m = re.match(r"^(?:==?|~=)?(\d+\.\d+)(?:\.[\d*]+)*\Z", spec.replace(" ", ""))
        if m:
            return m.group(1)
    return None


def _normalize_entry(entry, kind):
    if isinstance(entry, str):
        data = {"name": entry}
    elif isinstance(entry, dict):
        data = entry
        unknown = sorted(str(k) for k in data if k not in _ENTRY_KEYS)
        if unknown:
            raise SpecError("unknown key %s in %s entry %r; the keys are: %s"
                            % (", ".join(repr(k) for k in unknown), kind, entry, ", ".join(_ENTRY_KEYS)))
    else:
        raise SpecError("%s entry %r must be a string or a dict with 'name'" % (kind, entry))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError("%s entry %r needs a non-empty string 'name'" % (kind, entry))
    name = name.strip()
    for flag in ("optional", "dependencies"):
        if flag in data and not isinstance(data[flag], bool):
            raise SpecError("%r of %s entry %r must be True or False, not %r" % (flag, kind, name, data[flag]))
    platforms = data.get("platforms")
    if platforms is not None:
        platforms = sorted(set(_normalize_platform(p, name) for p in _as_list(platforms, "'platforms' of %r" % name)))
    if kind == "conda":
        _check_conda_spec(name)
        channel = _channel_of(name)
        if channel and _absolute_channel(channel) != channel:
            name = _absolute_channel(channel) + name[len(channel):]
    else:
        _check_pip_entry(name)
        if name.startswith("-") and data.get("dependencies") is False:
            raise SpecError("pip option %r cannot carry 'dependencies': False" % (name,))
    return {"name": name, "platforms": platforms or None, "optional": bool(data.get("optional", False)),
            "dependencies": bool(data.get("dependencies", True))}


def _normalize_platform(platform_name, entry_name):
    if isinstance(platform_name, str):
        p = platform_name.strip().lower()
        p = _SUBDIR_ALIASES.get(p, p)
        if p in _CONDA_SUBDIRS:
            return p
        if p in _PLATFORM_FAMILIES:
            return _PLATFORM_FAMILIES[p]
    raise SpecError("unknown platform %r for %r: use a conda subdir (%s) or linux, osx, win, unix"
                    % (platform_name, entry_name, ", ".join(_CONDA_SUBDIRS)))


def _platform_applies(platforms, subdir):
    if not platforms:
        return True
    family = subdir.split("-")[0]
    return any(p == subdir or p == family or (p == "unix" and family in ("linux", "osx")) for p in platforms)


def _check_conda_spec(spec):
    import re
    if not re.match(r"^(?:[A-Za-z0-9_.:/~%+-]+::)?[A-Za-z0-9_][A-Za-z0-9_.+-]*"
                    r"(?:[ =<>!~,|*.+\w\[\]'\"]*)\Z", spec):
        raise SpecError("invalid conda package spec %r: write it as 'name', 'name=1.2', 'name>=1.2,<2', "
                        "'name 1.2.*' or 'channel::name'" % (spec,))


def _check_pip_entry(entry):
    if "::" in entry:
        raise SpecError("pip entry %r looks like a conda spec (channel::package); put it in 'conda'" % (entry,))
    if any(ord(c) < 32 for c in entry):
        raise SpecError("pip entry %r contains a control character" % (entry,))
    if entry.startswith("-"):
        return          # a pip option such as '--index-url URL' or '--pre'
    try:
        _parse_requirement(entry)
    except ValueError as exc:
        raise SpecError("invalid pip requirement %r: %s; write 'name', 'name>=1.2', 'name[extra]' or "
                        "'name @ file:///path/to/pkg'" % (entry, exc))


def _select_entries(entries, subdir, kind):
    """Names for this platform, split into (with dependencies, without)."""
    with_deps, no_deps = [], []
    for entry in entries:
        if not _platform_applies(entry["platforms"], subdir):
            if entry["optional"]:
                continue
            raise SpecError("%s package %r is only for %s, not this platform (%s); mark it 'optional': True "
                            "to skip it here" % (kind, entry["name"], ", ".join(entry["platforms"]), subdir))
        (with_deps if entry["dependencies"] else no_deps).append(entry["name"])
    return with_deps, no_deps


def _pip_args(entries):
    """pip command-line arguments for entries: options are split shell-style."""
    import shlex
    args = []
    for name in entries:
        args.extend(shlex.split(name) if name.startswith("-") else [name])
    return args


def _strip_markers(requirements, python_version):
    """Evaluate markers for the target python and drop them.

    pixi 0.73 takes markers, but evaluates them for every platform of the
    workspace; wetlite decides for the one it builds, as it does for conda
    entries' "platforms".  Two requirements for one name are merged: pixi keys
    them by name, so the second would replace the first.
    """
    environment = _marker_environment(python_version)
    merged = {}
    for text in requirements:
        req = _parse_requirement(text)
        if req["marker"] and not _evaluate_marker(req["marker"], environment):
            continue
        key = _canonical_name(req["name"])
        if key not in merged:
            merged[key] = dict(req, extras=set(req["extras"]), specifier=[req["specifier"]] * bool(req["specifier"]))
            continue
        have = merged[key]
        if have["url"] != req["url"]:
            raise SpecError("pip requirements for %r disagree (%s): give one" % (req["name"], "; ".join(
                r for r in requirements if _canonical_name(_parse_requirement(r)["name"]) == key)))
        have["extras"].update(req["extras"])
        if req["specifier"] and req["specifier"] not in have["specifier"]:
            have["specifier"].append(req["specifier"])
    kept = []
    for req in merged.values():
        base = req["name"] + ("[%s]" % ",".join(sorted(req["extras"])) if req["extras"] else "")
        kept.append("%s @ %s" % (base, req["url"]) if req["url"] else base + ",".join(req["specifier"]))
    return kept


def _split_conda_spec(spec):
    """(channel or None, name, constraint) of a conda match spec such as 'chan::numpy >=1.2'."""
    import re
    channel = None
    if "::" in spec:
        channel, spec = spec.rsplit("::", 1)
    m = re.match(r"^\s*([A-Za-z0-9_][A-Za-z0-9_.+-]*)\s*(.*?)\s*$", spec)
    return (channel, m.group(1), m.group(2)) if m else (channel, spec.strip(), "")


def _merge_conda_specs(specs):
    """One spec per package name: pixi keys specs by name, so a later ``pip``
    would replace an earlier ``pip>=23``.  Version constraints are joined (a
    conda ``=1.2`` is ``1.2.*``); differing channels or builds are a SpecError."""
    import re
    order, groups = [], {}
    for spec in specs:
        key = _split_conda_spec(spec)[1].lower()
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(spec)
    merged = []
    for key in order:
        group = list(dict.fromkeys(groups[key]))
        if len(group) == 1:
            merged.append(group[0])
            continue
        parts = [_split_conda_spec(s) for s in group]
        channels = set(p[0] for p in parts if p[0])
        constraints = []
        for _channel, _name, constraint in parts:
            body = constraint[2:] if constraint.startswith("==") else constraint.lstrip("=")
            if "[" in constraint or re.search(r"(?<![<>=!~])=(?!=)", body) or re.search(r"\s[A-Za-z_]", constraint):
                raise SpecError("conda specs %s name builds, and wetlite cannot merge them for pixi; give %r "
                                "once" % (", ".join(repr(s) for s in group), parts[0][1]))
            constraint = constraint.replace(" ", "")
            if constraint.startswith("=") and not constraint.startswith("=="):
                constraint = constraint[1:].rstrip("*").rstrip(".") + ".*"
            if constraint and constraint not in constraints:
                constraints.append(constraint)
        if len(channels) > 1:
            raise SpecError("conda specs %s ask for different channels; give %r once"
                            % (", ".join(repr(s) for s in group), parts[0][1]))
        name = (channels.pop() + "::" if channels else "") + parts[0][1]
        joined = ",".join(constraints)
        merged.append(name + (" " + joined if joined[:1].isdigit() else joined))
    return merged


def _channel_of(conda_spec):
    return _split_conda_spec(conda_spec)[0]


def _absolute_channel(channel, base=None):
    """A local channel written as a relative path (./chan, ../chan) made absolute.

    The tools would resolve it against a directory of their own (pixi: the
    workspace root), so wetlite resolves it against ``base`` (default: the cwd)
    first.  Names (conda-forge, nvidia/label/x) and URLs are left alone.
    """
    if channel in (".", "..") or channel.startswith(("./", "../", ".\\", "..\\")):
        return os.path.normpath(os.path.join(base or os.getcwd(), channel))
    if channel.startswith("~"):
        return os.path.expanduser(channel)
    return channel


def _merge_channels(*groups):
    merged = []
    for group in groups:
        for channel in group:
            if channel not in merged:
                merged.append(channel)
    return merged


# --- Config files ------------------------------------------------------------


def _config_kind(path):
    name = os.path.basename(path).lower()
    if name == "pixi.toml":
        return "pixi"
    if name == "pyproject.toml":
        return "pyproject"
    if name.endswith((".yml", ".yaml")):
        return "environment"
    if name.endswith(".txt") or name.endswith(".in"):
        return "requirements"
    raise SpecError("unsupported config file %r: use requirements.txt, environment.yml, pixi.toml or "
                    "pyproject.toml" % (path,))


def _read_config(path, tool, optional=None, manifest=False):
    """Read a config file into {kind, path, files, sha256, python, conda, pip, channels, manifest,
    pixi_env}.

    With ``manifest`` and tool="pixi", a pixi.toml (or a pyproject.toml with
    [tool.pixi]) is pixi's own workspace manifest: ``manifest`` is then true and
    ``pixi_env`` names the pixi environment to build.  Otherwise wetlite maps
    the file onto python, conda and pip dependencies and channels, for every
    tool (the venv tool refuses conda packages other than python).
    ``optional`` names pyproject optional-dependency groups, or pixi features
    or one pixi environment.
    """
    import hashlib
    if not isinstance(path, (str, os.PathLike)):
        raise SpecError("config must be a path, not %s %r" % (type(path).__name__, path))
    path = os.path.abspath(os.fspath(path))
    kind = _config_kind(path)
    if not os.path.isfile(path):
        raise ConfigNotFoundError("config file %r does not exist" % (path,), path)
    optional = _check_optional(optional, path)
    if optional and kind in ("requirements", "environment"):
        raise SpecError("%s has no optional groups to select (optional_dependencies=%r); they exist in "
                        "pyproject.toml and pixi.toml" % (os.path.basename(path), optional))
    result = {"kind": kind, "path": path, "files": [path], "python": None, "conda": [], "pip": [], "channels": [],
              "optional": optional, "manifest": False, "pixi_env": None}
    if kind == "requirements":
        result["pip"], result["files"] = _read_requirements(path)
    elif kind == "environment":
        data = _read_environment_yml(path)
        # A relative local channel means the one beside the file.
        result["channels"] = [_absolute_channel(c, os.path.dirname(path)) for c in data["channels"]]
        for spec in data["dependencies"]:
            _channel, name, constraint = _split_conda_spec(spec)
            name = name.lower()
            if name == "python" and result["python"] is None:
                result["python"] = _check_python_spec(_without_build(constraint, path)) if constraint else None
            elif name != "pip":         # pip itself: every environment with python gets it
                result["conda"].append(spec)
        result["pip"] = data["pip"]
    else:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:     # as written: a lone CR is not TOML
            data = _toml_loads(f.read(), path)
        try:
            pixi = data.get("tool", {}).get("pixi") if kind == "pyproject" else data
            if manifest and tool == "pixi" and (kind == "pixi" or pixi is not None):
                result["manifest"] = True
                result["pixi_env"] = _pixi_env_for(pixi, data, kind, optional, path)
            else:
                result.update(_manifest_dependencies(data, kind, optional, path))
        except (AttributeError, TypeError) as exc:     # a number or a list where pixi wants a table...
            raise SpecError("%s does not have the layout of a %s: a value has the wrong type (%s); see the "
                            "format's reference" % (path, _CONFIG_KINDS[kind], exc))
    if tool == "venv":
        if result["conda"]:
            raise SpecError("%s asks for conda package %r, but the venv tool installs pip packages only; use "
                            "tool='micromamba' or tool='pixi'" % (path, result["conda"][0]))
        result["channels"] = []         # nothing to take from them
    digest = hashlib.sha256()
    for name in result["files"]:
        with open(name, "rb") as f:
            digest.update(f.read())
    if result["manifest"]:
        lock = os.path.join(os.path.dirname(path), "pixi.lock")
        if os.path.isfile(lock):
            result["files"].append(lock)
            with open(lock, "rb") as f:
                digest.update(f.read())
    result["sha256"] = digest.hexdigest()
    return result


def _without_build(constraint, path):
    """A python constraint without the build string an exported environment.yml
    pins (``python=3.11.7=h955ad1f_0``): builds belong to the machine it came from."""
    import re
    m = re.match(r"^(==?)?(\d[\w.*+!]*)(?:=|\s+)([^=\s]+)\Z", constraint)
    if not m:
        return constraint
    _log().info("%s: python %s, without its build %s", path, m.group(2), m.group(3))
    return (m.group(1) or "=") + m.group(2)


def _check_optional(optional, path):
    if optional is None:
        return []
    if isinstance(optional, str) or not isinstance(optional, (list, tuple)) or \
            not all(isinstance(n, str) and n.strip() for n in optional):
        raise SpecError("optional_dependencies must be a list of group, feature or environment names (for "
                        "%s), not %r" % (os.path.basename(path), optional))
    return [n.strip() for n in optional]


def _pixi_env_for(pixi, data, kind, optional, path):
    """The pixi environment a manifest's selection means: None (default), an
    environment it defines, or ["features", ...] that wetlite adds as one."""
    if not optional:
        return None
    environments = pixi.get("environments") or {}
    if len(optional) == 1 and optional[0] in environments:
        return optional[0]
    features = set(pixi.get("feature") or {})
    if kind == "pyproject":         # pixi makes a feature of each optional-dependencies group
        features.update((data.get("project") or {}).get("optional-dependencies") or {})
    unknown = [n for n in optional if n not in features]
    if unknown:
        raise SpecError("%s has no feature or environment %s (features: %s; environments: %s)" % (
            path, ", ".join(repr(n) for n in unknown), ", ".join(sorted(features)) or "none",
            ", ".join(sorted(environments)) or "none"))
    return ["features"] + list(optional)


def _manifest_dependencies(data, kind, optional, path):
    """A pixi.toml's or a pyproject.toml's dependencies as wetlite dependencies.

    pyproject: [project] dependencies are pip requirements and requires-python
    chooses the python; optional-dependencies groups can be selected.  pixi
    tables ([tool.pixi.*] in a pyproject): [dependencies] are conda specs,
    [pypi-dependencies] pip requirements (version, extras, path, git, url),
    [pypi-options] pip options, [target.<platform>.*] apply on that platform,
    and features or one environment can be selected.
    """
    directory = os.path.dirname(path)
    project = (data.get("project") or {}) if kind == "pyproject" else {}
    pixi = data.get("tool", {}).get("pixi") if kind == "pyproject" else data
    where = os.path.basename(path)
    out = {"python": None, "conda": [], "pip": [], "channels": []}
    out["pip"].extend(_requirement_list(project.get("dependencies"), "[project] dependencies", path))
    if project.get("requires-python"):
        if not isinstance(project["requires-python"], str):
            raise SpecError("%s: requires-python must be a string such as '>=3.10', not %r"
                            % (path, project["requires-python"]))
        out["python"] = _check_python_spec(project["requires-python"])
    groups = project.get("optional-dependencies") or {}
    tables, selected = [], []
    if pixi is not None:
        workspace = pixi.get("workspace") or pixi.get("project") or {}
        environments = pixi.get("environments") or {}
        if len(optional) == 1 and optional[0] in environments:
            chosen = environments[optional[0]]
            chosen = {"features": chosen} if isinstance(chosen, list) else chosen
            if not chosen.get("no-default-feature"):
                tables.append(pixi)
            selected = list(chosen.get("features") or [])
        else:
            tables.append(pixi)
            selected = list(optional)
        for name in workspace.get("channels") or []:
            out["channels"].append(_absolute_channel(name if isinstance(name, str) else name.get("channel", ""),
                                                     directory))
    else:
        selected = list(optional)
    for name in selected:
        feature = pixi is not None and name in (pixi.get("feature") or {})
        if name in groups:
            out["pip"].extend(_requirement_list(groups[name], "optional-dependencies %r" % name, path))
        if feature:
            tables.append(pixi["feature"][name])
        elif name not in groups:
            raise SpecError("%s has no %s %r (groups: %s%s)" % (
                path, "feature, environment or optional-dependencies group" if pixi is not None else
                "optional-dependencies group", name, ", ".join(sorted(groups)) or "none",
                "; features: %s; environments: %s" % (", ".join(sorted(pixi.get("feature") or {})) or "none",
                                                       ", ".join(sorted(pixi.get("environments") or {})) or "none")
                if pixi is not None else ""))
    subdir = _conda_subdir(*_platform_id())
    activation = False
    for table in tables:
        layers = [table] + [layer for target, layer in sorted((table.get("target") or {}).items())
                            if _pixi_target_applies(target, subdir)]
        for layer in layers:
            activation = activation or bool(layer.get("activation"))
            for name, value in (layer.get("dependencies") or {}).items():
                if name.lower() == "python":
                    version = _pixi_version(value, name, where)
                    if version:
                        out["python"] = _check_python_spec(version)
                elif name.lower() != "pip":
                    out["conda"].append(_pixi_conda_spec(name, value, where))
            for name, value in (layer.get("pypi-dependencies") or {}).items():
                out["pip"].append(_pixi_pypi_requirement(name, value, directory, where))
            out["pip"][:0] = _pixi_pypi_options(layer.get("pypi-options") or {}, directory)
        if table is not pixi:
            for name in table.get("channels") or []:
                out["channels"].append(_absolute_channel(
                    name if isinstance(name, str) else name.get("channel", ""), directory))
    out["channels"] = _merge_channels(out["channels"])
    if activation:
        _log().warning("%s: ignoring [activation] (its scripts and env): only pixi applies them, when it builds "
                       "from the file as its workspace (tool='pixi' and create(name, config=...)); here the file "
                       "gives packages only, so set variables with env.run(..., env=...)", path)
    return out


def _requirement_list(value, what, path):
    """A pyproject list of requirement strings (None: empty)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise SpecError("%s: %s must be a list of requirement strings, not %r" % (path, what, value))
    return value


def _pixi_target_applies(target, subdir):
    """Whether a pixi [target.X] table applies here (a platform this code does not know never does)."""
    try:
        return _platform_applies([_normalize_platform(target, target)], subdir)
    except SpecError:
        return False


def _pixi_version(value, name, where):
    """The version constraint of a pixi [dependencies] value ("" for any)."""
    version = value.get("version", "*") if isinstance(value, dict) else value
    if not isinstance(version, str):
        raise SpecError("%s: the version of %r must be a string, not %r" % (where, name, version))
    version = version.strip()
    return "" if version in ("", "*") else version


def _pixi_conda_spec(name, value, where):
    """A pixi [dependencies] entry as a conda match spec: numpy = ">=1.26" -> 'numpy>=1.26'."""
    if isinstance(value, dict):
        source = [k for k in ("path", "git", "url") if k in value]
        if source:
            raise SpecError("%s: %r is a %s package that only pixi itself can build; use tool='pixi'"
                            % (where, name, source[0]))
    version = _pixi_version(value, name, where)
    spec = name + ((" " if version[:1].isdigit() else "") + version if version else "")
    if isinstance(value, dict) and value.get("build"):
        spec = "%s %s %s" % (name, version or "*", value["build"])
    if isinstance(value, dict) and value.get("channel"):
        spec = _absolute_channel(value["channel"]) + "::" + spec
    _check_conda_spec(spec)
    return spec


def _pixi_pypi_requirement(name, value, directory, where):
    """A pixi [pypi-dependencies] entry as a pip requirement (or pip's -e option)."""
    if isinstance(value, str):
        value = {"version": value}
    if not isinstance(value, dict):
        raise SpecError("%s: pypi dependency %r must be a version string or a table, not %r" % (where, name, value))
    extras = value.get("extras") or []
    label = name + ("[%s]" % ",".join(extras) if extras else "")
    if "index" in value:
        raise SpecError("%s: the per-package index of %r is pixi-only; put it in [pypi-options] or use "
                        "tool='pixi'" % (where, name))
    if "path" in value:
        target = os.path.normpath(os.path.join(directory, os.path.expanduser(value["path"])))
        if value.get("editable"):
            import shlex
            return "-e " + shlex.quote(target + ("[%s]" % ",".join(extras) if extras else ""))
        from urllib.request import pathname2url
        return "%s @ file://%s" % (label, pathname2url(target))
    if "url" in value:
        return "%s @ %s" % (label, value["url"])
    if "git" in value:
        url = value["git"] if value["git"].startswith("git+") else "git+" + value["git"]
        rev = value.get("rev") or value.get("tag") or value.get("branch")
        return "%s @ %s%s%s" % (label, url, "@" + rev if rev else "",
                                "#subdirectory=" + value["subdirectory"] if value.get("subdirectory") else "")
    version = str(value.get("version", "*")).strip()
    if version in ("", "*"):
        return label
    return label + (version if version[:1] in "<>=!~" else "==" + version)


def _pixi_pypi_options(options, directory):
    """A pixi [pypi-options] table as pip options."""
    import shlex
    args = []
    if options.get("index-url"):
        args.append("--index-url " + options["index-url"])
    for url in options.get("extra-index-urls") or []:
        args.append("--extra-index-url " + url)
    for link in options.get("find-links") or []:
        target = link.get("url") or os.path.normpath(os.path.join(directory, link.get("path", "")))
        args.append("--find-links " + shlex.quote(target))
    return args


def _check_pixi_install_options(cfg, env):
    """install(config=) into a pixi environment goes through `pixi add --pypi`,
    which takes requirements only: a config file's pip options (-e, --find-links,
    an index) would be dropped, so they are refused, as create() refuses them."""
    options = [p for p in cfg["pip"] if p.startswith("-")]
    if not options:
        return
    if cfg["kind"] in ("pixi", "pyproject"):
        fix = ("add them to the workspace manifest %s yourself ([pypi-options], or a { path = ..., editable = true } "
               "entry of [pypi-dependencies]), or create a new environment from the file with create(name, config=%r)"
               % (env.manifest, cfg["path"]))
    else:
        fix = "drop them from the file, or use an environment of tool='micromamba' or 'venv'"
    raise SpecError("%s asks for pip option%s %s, which install() cannot pass to pixi environment %r (pixi add "
                    "takes requirements only); %s" % (cfg["path"], "s" * (len(options) > 1),
                                                      ", ".join(repr(o) for o in options), env.name, fix))


def _read_small_text(path, what):
    """The text of a config file: a regular file of at most _CONFIG_LIMIT bytes
    (``-r /dev/zero`` or a FIFO in a requirements file is a SpecError)."""
    import stat
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError("%s %r is not a regular file" % (what, path))
        if st.st_size > _CONFIG_LIMIT:
            raise SpecError("%s %r is %s, more than the %s a config file may be" % (
                what, path, _human_bytes(st.st_size), _human_bytes(_CONFIG_LIMIT)))
        with open(path, "rb") as f:
            data = f.read(_CONFIG_LIMIT + 1)
    except OSError as exc:
        raise SpecError("cannot read %s %r: %s" % (what, path, exc.strerror or exc))
    if len(data) > _CONFIG_LIMIT:
        raise SpecError("%s %r is more than the %s a config file may be" % (what, path, _human_bytes(_CONFIG_LIMIT)))
    return data.decode("utf-8-sig", "replace")


def _read_requirements(path, _seen=None):
    """Requirement lines of a requirements file, following -r includes.

    Returns (entries, files).  Options are kept as pip options; markers stay
    on their requirement (pip evaluates them in the environment itself).
    """
    import re
    seen = _seen if _seen is not None else []
    path = os.path.abspath(path)
    if path in seen:
        raise SpecError("requirements file %r includes itself (through %s)" % (path, " -> ".join(seen)))
    seen.append(path)
    text = _read_small_text(path, "requirements file")
    entries, files = [], [path]
    lines = re.sub(r"\\\r?\n", "", text).splitlines()
    for number, raw in enumerate(lines, 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        m = re.match(r"^(-r|--requirement)(?:\s+|=|(?<=-r))(\S.*)$", line)
        if m:
            included = os.path.join(os.path.dirname(path), m.group(2).strip())
            sub_entries, sub_files = _read_requirements(included, seen)
            entries.extend(sub_entries)
            files.extend(f for f in sub_files if f not in files)
            continue
        m = re.match(r"^(-c|--constraint)(?:\s+|=|(?<=-c))(\S.*)$", line)
        if m:
            entries.append("--constraint " + os.path.join(os.path.dirname(path), m.group(2).strip()))
            continue
        if line.startswith("-"):
            entries.append(line)
            continue
        requirement = re.split(r"\s+--?[a-z]", line)[0].strip()   # drop per-line options (--hash=...)
        try:
            _parse_requirement(requirement)
        except ValueError as exc:
            if not _pip_location(requirement):
                raise SpecError("invalid requirement %r in %s line %d: %s" % (requirement, path, number, exc))
        entries.append(requirement)
    seen.pop()
    return entries, files


def _pip_location(line):
    """Whether a requirements line is what pip installs without a name: a URL,
    a VCS link or a local path or archive (``git+https://...``, ``./pkg``)."""
    import re
    target = line.split(";")[0].strip()
    return bool(re.match(r"^[A-Za-z][\w+.-]*://", target) or target.startswith((".", "/", "~"))
                or "/" in target or os.sep in target
                or target.endswith((".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2")))


def _read_environment_yml(path):
    """Read the subset of environment.yml that conda tools use.

    Keys: name, channels, dependencies (strings, 'sel(os): spec' selectors
    and a nested 'pip:' list).  Anything else is reported, not guessed at.
    """
    import re
    lines = _read_small_text(path, "environment file").splitlines()

    def fail(number, why):
        raise SpecError("%s line %d: %s (wetlite reads 'name', 'channels' and 'dependencies' with a nested "
                        "'pip' list)" % (path, number, why))

    def scalar(text, number):
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1].replace("''", "'") if text[0] == "'" else text[1:-1]
        if text[:1] in ("&", "*", "!", "|", ">", "{", "["):
            fail(number, "unsupported YAML value %r" % text)
        return text

    def strip_comment(line):
        out, quote = [], None
        for i, ch in enumerate(line):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
            elif ch == "#" and (i == 0 or line[i - 1].isspace()):
                break
            out.append(ch)
        return "".join(out).rstrip()

    data = {"name": None, "channels": [], "dependencies": [], "pip": []}
    subdir = _conda_subdir(*_platform_id())
    section = None          # top-level key whose list we are reading
    pip_indent = None       # indentation of the "- pip:" item, while inside it
    for number, raw in enumerate(lines, 1):
        line = strip_comment(raw)
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if "\t" in line[:indent + 1]:
            fail(number, "tabs are not allowed for indentation in YAML")
        text = line.strip()
        item_line = text.startswith("- ") or text == "-"
        # A key's list may start at the key's own column ("dependencies:\n- numpy", as yaml.dump writes it).
        if indent == 0 and not (item_line and section is not None):
            pip_indent = None
            m = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$", text)
            if not m:
                fail(number, "expected 'key: value'")
            key, value = m.group(1), m.group(2)
            section = key
            if key == "name":
                data["name"] = scalar(value, number)
            elif key in ("channels", "dependencies"):
                if value.startswith("[") and value.endswith("]"):
                    items = [scalar(v, number) for v in value[1:-1].split(",") if v.strip()]
                    data[key].extend(items)
                elif value:
                    fail(number, "%r must be a list" % key)
            elif key != "prefix":
                _log().warning("%s line %d: ignoring key %r%s", path, number, key,
                               " (set variables with env.run(..., env=...), or in a pixi manifest's "
                               "[activation.env] that tool='pixi' builds from)" if key == "variables" else "")
            continue
        if section not in ("channels", "dependencies"):
            continue        # content of an ignored key
        if not item_line:
            fail(number, "expected a list item '- ...'")
        item = text[1:].strip()
        if pip_indent is not None and indent > pip_indent:
            data["pip"].append(scalar(item, number))
            continue
        pip_indent = None
        if section == "channels":
            data["channels"].append(scalar(item, number))
            continue
        if re.match(r"^pip\s*:\s*$", item):
            pip_indent = indent
            continue
        m = re.match(r"^sel\((\w+)\)\s*:\s*(.+)$", item)
        if m:
            if _platform_applies([_normalize_platform(m.group(1), m.group(2))], subdir):
                data["dependencies"].append(scalar(m.group(2), number))
            continue
        if re.match(r"^[^'\"]*:\s", item + " ") and not re.match(r"^[^:]*::", item):
            fail(number, "unsupported mapping %r in dependencies" % item)
        data["dependencies"].append(scalar(item, number))
    for spec in data["dependencies"]:
        _check_conda_spec(spec)
    return data


# --- TOML (pixi.toml, pyproject.toml) ---------------------------------------
# tomllib is the stdlib's from 3.11 on; the host API supports 3.8, so older
# hosts use the small reader below, which the tests check against tomllib.
# The reader also says where each string value is in the text, so that a
# copied manifest can have its relative paths made absolute without
# rewriting (and losing the comments of) the rest of the file.


def _toml_loads(text, where):
    """Parse TOML text (``where`` names it in errors) into plain dicts and lists."""
    try:
        import tomllib
    except ImportError:         # Python < 3.11
        return _TomlReader(text, where).parse()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError("%s is not valid TOML: %s" % (where, exc))


_TOML_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _TomlReader(object):
    """A TOML 1.0 reader.  ``strings`` maps the key path of every string value
    (a tuple of keys and array indexes) to ``(start, end, value)`` in the text.
    Dates and times are kept as their text, once checked that they exist."""

    def __init__(self, text, where):
        self.text = text
        self.where = where
        self.pos = 0
        self.strings = {}
        # TOML lets a table be defined once, by a [header] or by dotted keys, and
        # closes inline tables and arrays once written; these say which key paths
        # are taken: defined tables (True if by a header) and closed values.
        self._defined = {}
        self._closed = set()

    def fail(self, why):
        line = self.text.count("\n", 0, self.pos) + 1
        raise SpecError("%s is not valid TOML: %s (line %d)" % (self.where, why, line))

    def parse(self):
        import re
        # Only tab and line ends (LF, CRLF) may be written raw, in strings and comments alike.
        found = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)").search(self.text)
        if found:
            self.pos = found.start()
            self.fail("a carriage return without a newline after it" if found.group() == "\r" else
                      "the control character U+%04X (TOML takes only tabs and line ends unescaped)" % ord(found.group()))
        root = {}
        table, path = root, ()
        while True:
            self.skip(newlines=True)
            if self.pos >= len(self.text):
                return root
            if self.text[self.pos] == "[":
                array = self.text.startswith("[[", self.pos)
                self.pos += 2 if array else 1
                self.skip()
                keys = self.key()
                self.skip()
                close = "]]" if array else "]"
                if not self.text.startswith(close, self.pos):
                    self.fail("expected %r after the table name" % close)
                self.pos += len(close)
                self.end_of_line()
                table, path = self.open_table(root, keys, array)
            else:
                keys = self.key()
                self.skip()
                if not self.text.startswith("=", self.pos):
                    self.fail("expected '=' after the key %r" % ".".join(keys))
                self.pos += 1
                self.skip()
                self.assign(table, keys, path)
                self.end_of_line()

    def open_table(self, root, keys, array):
        table, path = root, ()
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            value = table.get(key)
            self.check_open(path + (key,))
            if last and array:
                if value is None:
                    value = table[key] = []
                if not isinstance(value, list) or (value and not isinstance(value[0], dict)):
                    self.fail("%r is not an array of tables" % ".".join(keys))
                value.append({})
                return value[-1], path + (key, len(value) - 1)
            if value is None:
                value = table[key] = {}
            elif isinstance(value, list) and value and isinstance(value[-1], dict) and not last:
                path += (key, len(value) - 1)
                table = value[-1]
                continue
            elif not isinstance(value, dict) or (last and path + (key,) in self._defined):
                how = "" if self._defined.get(path + (key,), True) else " (first by dotted keys)"
                self.fail("the table %r is defined twice%s" % (".".join(keys), how))
            table, path = value, path + (key,)
        self._defined[path] = True
        return table, path

    def assign(self, table, keys, path):
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            path += (key,)
            self.check_open(path)
            if not isinstance(table, dict):
                self.fail("the key %r is already a value" % key)
            if self._defined.get(path):
                self.fail("the table %r has a [header]; dotted keys cannot add to it" % self.name(path))
            self._defined[path] = False
        if keys[-1] in table:
            self.fail("the key %r is defined twice" % ".".join(keys))
        table[keys[-1]] = self.value(path + (keys[-1],))

    def check_open(self, path):
        """Refuse to add to an inline table or array (``path`` names a table that would be)."""
        if path in self._closed:
            self.fail("%r is an inline table or array, which cannot be added to" % self.name(path))

    @staticmethod
    def name(path):
        return ".".join(str(key) for key in path)

    def skip(self, newlines=False):
        """Skip spaces and tabs (and comments and newlines if ``newlines``)."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t" or (newlines and ch in "\r\n"):
                self.pos += 1
            elif newlines and ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def end_of_line(self):
        self.skip()
        if self.text.startswith("#", self.pos):
            end = self.text.find("\n", self.pos)
            self.pos = len(self.text) if end < 0 else end
        if self.pos < len(self.text) and not self.text.startswith(("\n", "\r\n"), self.pos):
            self.fail("expected the end of the line")

    def key(self):
        keys = []
        while True:
            self.skip()
            ch = self.text[self.pos:self.pos + 1]
            if ch in ('"', "'"):
                keys.append(self.string(None))
            else:
                import re
                found = re.compile(r"[A-Za-z0-9_-]+").match(self.text, self.pos)
                if not found:
                    self.fail("expected a key")
                keys.append(found.group())
                self.pos = found.end()
            self.skip()
            if not self.text.startswith(".", self.pos):
                return keys
            self.pos += 1

    def value(self, path):
        import re
        text, pos = self.text, self.pos
        ch = text[pos:pos + 1]
        if ch in ('"', "'"):
            return self.string(path)
        if ch in ("[", "{"):    # closed to later keys and headers; its own items go in below
            self._closed.add(path)
        if ch == "[":
            self.pos += 1
            items = []
            while True:
                self.skip(newlines=True)
                if text.startswith("]", self.pos):
                    self.pos += 1
                    return items
                items.append(self.value(path + (len(items),)))
                self.skip(newlines=True)
                if text.startswith(",", self.pos):
                    self.pos += 1
                elif not text.startswith("]", self.pos):
                    self.fail("expected ',' or ']' in an array")
        if ch == "{":
            self.pos += 1
            table = {}
            self.skip()
            if text.startswith("}", self.pos):
                self.pos += 1
                return table
            while True:
                keys = self.key()
                if not text.startswith("=", self.pos):
                    self.fail("expected '=' in an inline table")
                self.pos += 1
                self.skip()
                self.assign(table, keys, path)
                self.skip()
                if text.startswith("}", self.pos):
                    self.pos += 1
                    return table
                if not text.startswith(",", self.pos):
                    self.fail("expected ',' or '}' in an inline table")
                self.pos += 1
        for word, result in (("true", True), ("false", False)):
            if text.startswith(word, pos) and not re.match(r"[\w-]", text[pos + len(word):pos + len(word) + 1]):
                self.pos += len(word)
                return result
        found = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?)?"
                           r"|\d{2}:\d{2}:\d{2}(?:\.\d+)?").match(text, pos)
        if found:
            self.pos = found.end()
            self.check_date_time(found.group())
            return found.group()
        found = re.compile(r"[+-]?(?:0x[0-9A-Fa-f](?:_?[0-9A-Fa-f])*|0o[0-7](?:_?[0-7])*|0b[01](?:_?[01])*"
                           r"|inf|nan|(?:0|[1-9](?:_?\d)*)(?:\.\d(?:_?\d)*)?(?:[eE][+-]?\d(?:_?\d)*)?)").match(text, pos)
        if not found or re.match(r"[\w.]", text[found.end():found.end() + 1]):
            self.fail("expected a value")
        self.pos = found.end()
        number = found.group().replace("_", "")
        sign = -1 if number.startswith("-") else 1
        digits = number.lstrip("+-")
        if digits[:2] in ("0x", "0o", "0b"):
            return sign * int(digits[2:], {"0x": 16, "0o": 8, "0b": 2}[digits[:2]])
        if digits in ("inf", "nan") or "." in digits or "e" in digits.lower():
            return float(number)
        return int(number)

    def check_date_time(self, value):
        """Refuse a date or time that does not exist (February 30, 24:00:00), as tomllib does."""
        import datetime
        import re
        try:
            date = re.match(r"(\d{4})-(\d{2})-(\d{2})", value)
            if date:
                datetime.date(*map(int, date.groups()))
            for hours, minutes, seconds in re.findall(r"(\d{2}):(\d{2})(?::(\d{2}))?", value):   # and offsets
                datetime.time(int(hours), int(minutes), int(seconds or 0))
        except ValueError:
            self.fail("%s is not a real date or time" % value)

    def string(self, path):
        """A string at pos; ``path`` (when not None) records where it is."""
        text, start = self.text, self.pos
        quote = text[start]
        multi = text.startswith(quote * 3, start)
        self.pos += 3 if multi else 1
        if multi and text.startswith("\n", self.pos):
            self.pos += 1
        elif multi and text.startswith("\r\n", self.pos):
            self.pos += 2
        out = []
        while True:
            if self.pos >= len(text):
                self.fail("unterminated string")
            ch = text[self.pos]
            if ch == quote and (not multi or text.startswith(quote * 3, self.pos)):
                if multi:   # up to two more quotes end the content: """a""""" is 'a""'
                    count = 3
                    while text.startswith(quote, self.pos + count):
                        count += 1
                    if count > 5:
                        self.fail("too many quotes at the end of a string")
                    out.append(quote * (count - 3))
                    self.pos += count
                else:
                    self.pos += 1
                break
            if ch in "\r\n" and not multi:
                self.fail("a newline in a single-line string")
            if ch == "\r":     # a CRLF line end inside the string reads as "\n", as with tomllib
                self.pos += 1
                continue
            if ch == "\\" and quote == '"':
                out.append(self.escape(multi))
                continue
            out.append(ch)
            self.pos += 1
        value = "".join(out)
        if path is not None:
            self.strings[path] = (start, self.pos, value)
        return value

    def escape(self, multi):
        text = self.text
        code = text[self.pos + 1:self.pos + 2]
        if multi and code in (" ", "\t", "\r", "\n"):
            rest = text[self.pos + 1:]
            stripped = rest.lstrip(" \t")
            if not stripped.startswith(("\n", "\r\n")):
                self.fail("a line-ending backslash must end its line")
            self.pos = len(text) - len(stripped.lstrip(" \t\r\n"))
            return ""
        if code in _TOML_ESCAPES:
            self.pos += 2
            return _TOML_ESCAPES[code]
        if code in ("u", "U"):
            size = 4 if code == "u" else 8
            digits = text[self.pos + 2:self.pos + 2 + size]
            try:
                char = chr(int(digits, 16)) if len(digits) == size else None
            except ValueError:
                char = None
            if char is None or 0xD800 <= ord(char) <= 0xDFFF:
                self.fail("bad unicode escape \\%s%s" % (code, digits))
            self.pos += 2 + size
            return char
        self.fail("unknown escape \\%s" % code)


def _absolute_manifest_paths(text, kind, directory):
    """``text`` of a pixi manifest with its relative paths made absolute against ``directory``.

    pixi resolves them against the workspace root: local channels (``./chan``),
    ``path =`` dependencies (including the ``{ path = ".", editable = true }`` that
    ``pixi init --format pyproject`` writes), find-links paths and activation
    scripts.  Only those string values change; the rest stays as written.
    """
    import json
    reader = _TomlReader(text, "the manifest in %s" % directory)
    reader.parse()
    base = ("tool", "pixi") if kind == "pyproject" else ()
    edits = []
    for keypath, (start, end, value) in reader.strings.items():
        if keypath[:len(base)] != base or not value:
            continue
        rel = keypath[len(base):]
        names = [k for k in rel if isinstance(k, str)]
        if names[-1:] == ["path"] or names[-2:] == ["activation", "scripts"]:
            relative = not os.path.isabs(value) and not value.startswith("~")
        elif names[-1:] == ["channels"] or names[-2:] == ["channels", "channel"]:
            relative = value in (".", "..") or value.startswith(("./", "../", ".\\", "..\\"))
        else:
            continue
        if relative:
            absolute = os.path.normpath(os.path.join(directory, value))
            edits.append((start, end, json.dumps(absolute, ensure_ascii=False)))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


_PIXI_SELECTED_ENV = "wetlite-selected"     # the pixi environment of optional_dependencies=[features]


def _add_pixi_environment(text, kind, features, where):
    """A manifest's text with one more environment: the default feature plus ``features``."""
    import json
    import re
    data = _toml_loads(text, where)
    pixi = data.get("tool", {}).get("pixi", {}) if kind == "pyproject" else data
    if _PIXI_SELECTED_ENV in (pixi.get("environments") or {}):
        raise SpecError("%s already defines an environment named %r; select it by name" % (where, _PIXI_SELECTED_ENV))
    line = "%s = { features = %s }" % (_PIXI_SELECTED_ENV, json.dumps(features))
    table = "tool.pixi.environments" if kind == "pyproject" else "environments"
    header = re.compile(r"^[ \t]*\[[ \t]*%s[ \t]*\][ \t]*(#.*)?$" % r"[ \t]*\.[ \t]*".join(table.split(".")), re.M)
    found = header.search(text)
    if found:
        return text[:found.end()] + "\n" + line + text[found.end():]
    if "environments" in pixi:
        raise SpecError("%s defines its environments outside an [%s] table, where wetlite cannot add one; "
                        "define an environment with the features %s and select it by name" % (where, table, features))
    return text.rstrip("\n") + "\n\n[%s]\n%s\n" % (table, line)


# --- Is the host already enough? --------------------------------------------


def _installed_distributions():
    """{canonical name: (version, Distribution)} of every distribution of the host."""
    import importlib.metadata
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            found.setdefault(_canonical_name(name), (dist.version, dist))
    return found


def _find_distribution(name):
    """(version, Distribution) of one host distribution, or None.

    Looking one name up reads one METADATA file; listing every distribution
    parses them all (tens of ms), which the reuse path cannot afford.
    """
    import importlib.metadata
    canonical = _canonical_name(name)
    for candidate in (name, canonical, canonical.replace("-", "_")):
        try:
            dist = importlib.metadata.distribution(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.metadata.get("Name") and _canonical_name(dist.metadata["Name"]) == canonical:
            return dist.version, dist
    return None


def _requirement_satisfied(text, environment, _depth=0):
    """Would pip consider requirement ``text`` satisfied by the host?"""
    req = _parse_requirement(text)
    if req["marker"] and not _evaluate_marker(req["marker"], environment):
        return True
    if req["url"]:
        return False                    # a URL install cannot be checked by version
    found = _find_distribution(req["name"])
    if found is None:
        return False
    version, dist = found
    # pip counts an installed pre-release as satisfying (as `pip check` does).
    if not _version_matches(req["specifier"], version, prereleases=True):
        return False
    if req["extras"] and _depth < 3:
        for extra in req["extras"]:
            for dependency in dist.requires or ():
                env = dict(environment, extra=extra)
                parsed = _parse_requirement(dependency)
                if parsed["marker"] and "extra" in parsed["marker"] and _evaluate_marker(parsed["marker"], env):
                    if not _requirement_satisfied(dependency.split(";")[0], environment, _depth + 1):
                        return False
    return True


def _conda_spec_satisfied(spec, records):
    """Check a conda match spec against {name: version} of a conda prefix."""
    import re
    m = re.match(r"^(?:[^:]+::)?([A-Za-z0-9_][A-Za-z0-9_.+-]*)\s*(.*)$", spec.strip())
    if not m or m.group(1).lower() not in records:
        return False
    constraint = m.group(2).strip()
    if not constraint:
        return True
    if "[" in constraint or " " in constraint.strip():
        return False                    # build strings: leave it to the tool
    alternatives = []
    for alt in constraint.split("|"):
        if re.match(r"^=?\d[\w.]*\*?\Z", alt) and not alt.startswith("=="):
            alt = "==" + alt.lstrip("=").rstrip("*").rstrip(".") + ".*"
        alternatives.append(alt)
    try:
        return any(_version_matches(alt, records[m.group(1).lower()], prereleases=True) for alt in alternatives)
    except ValueError:
        return False


def _host_conda_records(prefix=None):
    """{name: version} of the conda packages of the host's prefix, if it is one."""
    import glob
    records = {}
    for path in glob.glob(os.path.join(prefix or sys.prefix, "conda-meta", "*.json")):
        data = _read_json(path) or {}
        if data.get("name") and data.get("version"):
            records[data["name"].lower()] = data["version"]
    return records

# ---------------------------------------------------------------------------
# Dependency specs: PEP 503 names, PEP 440 versions and specifiers, PEP 508
# requirements and environment markers.
#
# The behaviour follows the specifications (PEP 440, PEP 503, PEP 508, PEP 685
# and their living versions, "Version specifiers" and "Dependency specifiers"
# on packaging.python.org).  Where they leave a choice, it matches the
# `packaging` library that pip uses; tests/test_pep440.py compares the two
# and records each deliberate difference with its reason.  Regular
# expressions are compiled on first use, so importing this code costs
# nothing beyond defining the functions.
# ---------------------------------------------------------------------------



_PRE_PATTERN = r"[-_.]?(?:alpha|beta|preview|pre|a|b|c|rc)[-_.]?[0-9]*"
_POST_PATTERN = r"-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*"
_DEV_PATTERN = r"[-_.]?dev[-_.]?[0-9]*"
_SPEC_SUFFIX = "(?:%s)?(?:%s)?(?:%s)?" % (_PRE_PATTERN, _POST_PATTERN,
                                         _DEV_PATTERN)
_SPEC_FLAGS = "ia"      # inline regex flags: `re` is imported on first use

# name -> (pattern, flags).  Alternatives are ordered longest first
# ("preview" before "pre", "rev" before "r") because requirement strings are
# tokenized by prefix matching, where the first alternative that fits wins.
_PEP_PATTERNS = {
    "version": (r"""
        v?
        (?:(?P<epoch>[0-9]+)!)?
        (?P<release>[0-9]+(?:\.[0-9]+)*)
        (?:[-_.]?(?P<pre>alpha|beta|preview|pre|a|b|c|rc)
           [-_.]?(?P<pre_n>[0-9]+)?)?
        (?:-(?P<post_n1>[0-9]+)
           |[-_.]?(?P<post>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
        (?:[-_.]?(?P<dev>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
        (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
        """, "x" + _SPEC_FLAGS),
    # The version part of a specifier clause: == and != also allow a
    # trailing ".*" or a local label, ~= needs two release numbers, and the
    # ordered comparisons allow neither.
    "clause_equal": (r"v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:\.\*|"
                     + _SPEC_SUFFIX + r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?)?",
                     _SPEC_FLAGS),
    "clause_compatible": (r"v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)+" + _SPEC_SUFFIX,
                          _SPEC_FLAGS),
    "clause_ordered": (r"v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*" + _SPEC_SUFFIX,
                       _SPEC_FLAGS),
    "name_separators": (r"[-_.]+", ""),
    # PEP 508 tokens.
    "ws": (r"[ \t]+", ""),
    "identifier": (r"\b[a-zA-Z0-9][a-zA-Z0-9._-]*\b", "a"),
    # A URI never holds whitespace (RFC 3986), so a newline ends it too.
    "url": (r"\S+", ""),
    "marker_var": (r"""\b(?:python_version|python_full_version|os[._]name
        |sys[._]platform|platform_(?:release|system)
        |platform[._](?:version|machine|python_implementation)
        |python_implementation|implementation_(?:name|version)
        |extras?|dependency_groups)\b""", "xa"),
    "marker_string": (r"""'[^']*'|"[^"]*\"""", ""),
    "marker_op": (r"===|==|~=|!=|<=|>=|<|>", ""),
    "in": (r"\bin\b", "a"),
    "not": (r"\bnot\b", "a"),
    "boolop": (r"\b(?:and|or)\b", "a"),
    "python_version": (r"([0-9]+)\.([0-9]+)(?:\.([0-9]+[a-z0-9+]*))?",
                       "a"),
}
_pep_compiled = {}


def _pep_regex(name):
    """Return the compiled pattern `name`, compiling it on first use."""
    try:
        return _pep_compiled[name]
    except KeyError:
        import re
        pattern, flags = _PEP_PATTERNS[name]
        compiled = _pep_compiled[name] = re.compile("(?%s)%s" % (flags, pattern) if flags else pattern)
        return compiled


def _canonical_name(name):
    """PEP 503 normal form: lowercase, runs of "-", "_" and "." become "-"."""
    return _pep_regex("name_separators").sub("-", name).lower()


# -- PEP 440 versions --------------------------------------------------------

_PRE_RANK = {"a": 0, "b": 1, "rc": 2}
_PRE_SPELLINGS = {"alpha": "a", "beta": "b", "c": "rc", "pre": "rc",
                  "preview": "rc"}


class _Version(object):
    """A parsed PEP 440 version.

    Instances compare and hash by PEP 440 ordering (so 1.0 == 1.0.0) and
    print in normalized form.  `local` is a tuple of ints and lowercase
    strings, or None.
    """

    __slots__ = ("epoch", "release", "pre", "post", "dev", "local",
                 "_public_key", "_key")

    def __init__(self, epoch, release, pre=None, post=None, dev=None,
                 local=None):
        self.epoch = epoch
        self.release = tuple(release)
        self.pre = pre
        self.post = post
        self.dev = dev
        self.local = local
        trimmed = self.release
        while trimmed and trimmed[-1] == 0:
            trimmed = trimmed[:-1]
        # Within one release: X.devN < XaN < XbN < XrcN < X < X.postN; a bare
        # .devN sorts before every pre-release, a .devN suffix elsewhere just
        # before the release it decorates.
        if pre is not None:
            pre_key = (_PRE_RANK[pre[0]], pre[1])
        elif dev is not None and post is None:
            pre_key = (-1, 0)
        else:
            pre_key = (3, 0)
        self._public_key = (epoch, trimmed) + pre_key + (
            -1 if post is None else post,
            (1, 0) if dev is None else (0, dev))
        # No local label sorts first; in labels, strings sort before numbers.
        local_key = tuple((part, "") if isinstance(part, int) else (-1, part)
                          for part in local or ())
        self._key = (self._public_key, local_key)

    @property
    def is_prerelease(self):
        return self.pre is not None or self.dev is not None

    @property
    def is_postrelease(self):
        return self.post is not None

    @property
    def is_devrelease(self):
        return self.dev is not None

    @property
    def base_version(self):
        """Epoch and release only, e.g. "1!2.0" for "1!2.0rc1.post3+x"."""
        release = ".".join(map(str, self.release))
        return "%d!%s" % (self.epoch, release) if self.epoch else release

    @property
    def public(self):
        """The normalized version without its local label."""
        text = self.base_version
        if self.pre is not None:
            text += "%s%d" % self.pre
        if self.post is not None:
            text += ".post%d" % self.post
        if self.dev is not None:
            text += ".dev%d" % self.dev
        return text

    def __str__(self):
        if self.local is None:
            return self.public
        return self.public + "+" + ".".join(map(str, self.local))

    def __repr__(self):
        return "<_Version(%r)>" % str(self)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        if not isinstance(other, _Version):
            return NotImplemented
        return self._key == other._key

    def __ne__(self, other):
        if not isinstance(other, _Version):
            return NotImplemented
        return self._key != other._key

    def __lt__(self, other):
        if not isinstance(other, _Version):
            return NotImplemented
        return self._key < other._key

    def __le__(self, other):
        if not isinstance(other, _Version):
            return NotImplemented
        return self._key <= other._key

    def __gt__(self, other):
        if not isinstance(other, _Version):
            return NotImplemented
        return self._key > other._key

    def __ge__(self, other):
        if not isinstance(other, _Version):
            return NotImplemented
        return self._key >= other._key


def _parse_version(text):
    """Parse a PEP 440 version, accepting every spelling PEP 440 normalizes.

    Raises ValueError for anything else.  A _Version is returned as is.
    """
    if isinstance(text, _Version):
        return text
    match = _pep_regex("version").fullmatch(text.strip())
    if match is None:
        raise ValueError("invalid version: %r" % (text,))
    pre = post = dev = local = None
    if match.group("pre"):
        letter = match.group("pre").lower()
        pre = (_PRE_SPELLINGS.get(letter, letter),
               int(match.group("pre_n") or 0))
    if match.group("post_n1"):
        post = int(match.group("post_n1"))       # the "1.0-1" spelling
    elif match.group("post"):
        post = int(match.group("post_n2") or 0)
    if match.group("dev"):
        dev = int(match.group("dev_n") or 0)
    if match.group("local"):
        label = match.group("local").replace("-", ".").replace("_", ".")
        local = tuple(int(part) if part.isdigit() else part.lower()
                      for part in label.split("."))
    return _Version(int(match.group("epoch") or 0),
                    map(int, match.group("release").split(".")),
                    pre, post, dev, local)


def _version_tokens(version):
    """The public version as strings [epoch, *release, pre, post, dev].

    Prefix matching (==X.*, and the prefix part of ~=) compares this split
    of the normalized version; PEP 440 gives the pre-release segment an
    implied preceding ".", so 1.1a1 starts with 1.1.
    """
    tokens = [str(version.epoch)]
    tokens.extend(map(str, version.release))
    if version.pre is not None:
        tokens.append("%s%d" % version.pre)
    if version.post is not None:
        tokens.append("post%d" % version.post)
    if version.dev is not None:
        tokens.append("dev%d" % version.dev)
    return tokens


def _prefix_matches(version, prefix):
    """True if `version` starts with the token list `prefix`.

    Missing release numbers count as zeros, so 1 matches ==1.0.*.
    """
    tokens = _version_tokens(version)
    have = 1 + len(version.release)
    want = 0
    while want < len(prefix) and prefix[want].isdigit():
        want += 1
    if have < want:
        tokens[have:have] = ["0"] * (want - have)
    return tokens[:len(prefix)] == prefix


# -- PEP 440 specifiers ------------------------------------------------------

_SPEC_OPERATORS = ("===", "~=", "==", "!=", "<=", ">=", "<", ">")
_CLAUSE_GRAMMAR = {"==": "clause_equal", "!=": "clause_equal",
                   "~=": "clause_compatible", "<=": "clause_ordered",
                   ">=": "clause_ordered", "<": "clause_ordered",
                   ">": "clause_ordered"}


def _scan_specifier(text, pos=0, whole=False):
    """Match one clause such as ">= 1.0" at text[pos:].

    Return (operator, version_text, end), or None if there is no clause
    there.  With `whole`, the clause must run to the end of `text`.
    Whitespace may separate operator and version; "===" takes a non-empty
    run of characters other than whitespace, ";" and ")".
    """
    for operator in _SPEC_OPERATORS:
        if text.startswith(operator, pos):
            break
    else:
        return None
    start = pos + len(operator)
    while start < len(text) and text[start].isspace():
        start += 1
    if operator == "===":
        end = start
        while end < len(text) and not (text[end].isspace()
                                       or text[end] in ";)"):
            end += 1
        if end == start or (whole and end != len(text)):
            return None
    else:
        pattern = _pep_regex(_CLAUSE_GRAMMAR[operator])
        match = (pattern.fullmatch if whole else pattern.match)(text, start)
        if match is None:
            return None
        end = match.end()
    return operator, text[start:end], end


class _Specifier(object):
    """One clause of a specifier set, e.g. ">=1.0" or "==2.*"."""

    __slots__ = ("operator", "text", "version", "prefix")

    def __init__(self, operator, text):
        self.operator = operator
        self.text = text            # the version as written
        self.version = None         # _Version; None for "==="
        self.prefix = None          # tokens for ==X.* / !=X.* / ~=
        if operator == "===":
            return
        if text.endswith(".*"):
            self.version = _parse_version(text[:-2])
            self.prefix = _version_tokens(self.version)
        else:
            self.version = _parse_version(text)
            if operator == "~=":
                # ~=V.N means >=V.N, ==V.*: drop the last release number.
                # Suffixes and spelling do not count: ~=1.4.5a4 and
                # ~=v1.4.5.c.4 both mean ==1.4.* (PEP 440 "Compatible
                # release").
                self.prefix = [str(self.version.epoch)] + [
                    str(part) for part in self.version.release[:-1]]

    def __str__(self):
        return self.operator + self.text

    def __repr__(self):
        return "<_Specifier(%r)>" % str(self)

    @property
    def prereleases(self):
        """Whether the clause names a pre-release (None: unknowable, ===)."""
        if self.operator == "!=" or self.text.endswith(".*"):
            return False
        if self.version is None:
            try:
                return _parse_version(self.text).is_prerelease
            except ValueError:
                return None
        return self.version.is_prerelease

    def identity(self):
        """What packaging compares to spot duplicate clauses."""
        if self.operator == "===" or self.text.endswith(".*"):
            return self.operator, self.text
        version = self.version
        if self.operator != "~=":
            release = version.release
            while len(release) > 1 and release[-1] == 0:
                release = release[:-1]
            version = _Version(version.epoch, release, version.pre,
                               version.post, version.dev, version.local)
        return self.operator, str(version)

    def matches(self, version, text):
        """Whether `version` (parsed from `text`) satisfies the clause."""
        operator = self.operator
        if operator == "===":
            return text.lower() == self.text.lower()
        spec = self.version
        if operator in ("==", "!="):
            if self.prefix is not None:
                equal = _prefix_matches(version, self.prefix)
            elif spec.local is None:        # ==1.0 matches 1.0+anything
                equal = version._public_key == spec._public_key
            else:
                equal = version == spec
            return equal == (operator == "==")
        if operator == "~=":
            return (version._public_key >= spec._public_key
                    and _prefix_matches(version, self.prefix))
        # Ordered comparisons ignore local labels, which specs cannot have.
        if operator == ">=":
            return version._public_key >= spec._public_key
        if operator == "<=":
            return version._public_key <= spec._public_key
        if operator == "<":
            # <V excludes pre-releases of V itself unless V is one.
            if not version < spec:
                return False
            return not (version.is_prerelease and not spec.is_prerelease
                        and version >= _Version(spec.epoch, spec.release,
                                                None, spec.post, 0))
        # ">": V.postN is not "greater than V" unless V is a post-release
        # itself, and V+local never is.
        if not version > spec:
            return False
        if (version.post is not None and spec.post is None
                and _Version(version.epoch, version.release,
                             version.pre) == spec):
            return False
        return version.local is None or version._public_key != spec._public_key


def _parse_clause(text):
    """Parse a single clause like ">=1.0"; None if it is not valid."""
    text = text.strip()
    found = _scan_specifier(text, whole=True)
    if found is None:
        return None
    return _Specifier(found[0], found[1])


_specifier_cache = {}


def _parse_specifier_set(text):
    """Parse a comma-separated specifier set into a tuple of _Specifier."""
    try:
        return _specifier_cache[text]
    except KeyError:
        pass
    clauses = []
    for item in text.split(","):
        if item.strip():
            clause = _parse_clause(item)
            if clause is None:
                raise ValueError("invalid specifier: %r" % item.strip())
            clauses.append(clause)
    if len(_specifier_cache) >= 1024:
        _specifier_cache.clear()
    _specifier_cache[text] = clauses = tuple(clauses)
    return clauses


def _normalize_specifier(text):
    """The normal form packaging prints: sorted, deduplicated, no spaces."""
    seen = set()
    result = []
    for clause in sorted(_parse_specifier_set(text), key=str):
        identity = clause.identity()
        if identity not in seen:
            seen.add(identity)
            result.append(str(clause))
    return ",".join(result)


def _specifier_mentions_prerelease(specifier):
    """True if a clause of the set names a pre-release (as in >=2.0b1).

    Such a set accepts pre-releases even where a plain one would prefer
    final releases; "!=" and wildcard clauses never count.
    """
    return any(clause.prereleases
               for clause in _parse_specifier_set(specifier))


def _coerce_version(item):
    """(parsed version or None, text) for a version string or _Version."""
    if isinstance(item, _Version):
        return item, str(item)
    try:
        return _parse_version(item), item
    except ValueError:
        return None, item


def _filter_versions(specifier, versions, prereleases=None):
    """The items of `versions` (strings or _Version) that `specifier` allows.

    Like packaging's SpecifierSet.filter: with prereleases=None pre-releases
    are dropped when any final release matches, unless the set itself names
    a pre-release; True keeps them, False drops them.  Strings that are not
    versions only match "===" clauses (or an empty set).
    """
    clauses = _parse_specifier_set(specifier)
    if prereleases is None and _specifier_mentions_prerelease(specifier):
        prereleases = True
    matched = []
    for item in versions:
        version, text = _coerce_version(item)
        if version is None:
            ok = all(clause.operator == "===" and clause.matches(None, text)
                     for clause in clauses)
        elif prereleases is False and version.is_prerelease:
            ok = False
        else:
            ok = all(clause.matches(version, text) for clause in clauses)
        if ok:
            matched.append((item, version))
    if prereleases is None and any(version is not None
                                   and not version.is_prerelease
                                   for _, version in matched):
        return [item for item, version in matched
                if version is None or not version.is_prerelease]
    return [item for item, _ in matched]


def _version_matches(specifier, version, prereleases=None):
    """Whether `version` (str or _Version) satisfies `specifier`.

    Same answer as packaging's SpecifierSet(specifier).contains(version,
    prereleases=prereleases).  For a single version that means pre-releases
    are accepted unless prereleases is False: "prefer final releases" only
    makes sense across candidates, see _filter_versions.
    """
    return bool(_filter_versions(specifier, [version], prereleases))


# -- PEP 508 requirements and markers ---------------------------------------

class _Scanner(object):
    """A cursor over a requirement or marker string."""

    def __init__(self, text, kind):
        self.text = text
        self.kind = kind
        self.pos = 0

    def fail(self, why):
        raise ValueError("invalid %s %r: %s at position %d"
                         % (self.kind, self.text, why, self.pos))

    def take(self, name):
        """Consume and return the token `name` at the cursor, or None."""
        match = _pep_regex(name).match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()

    def peek(self, name):
        return _pep_regex(name).match(self.text, self.pos) is not None

    def take_literal(self, literal):
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def skip_ws(self):
        self.take("ws")

    def at_end(self):
        # Only spaces and tabs are whitespace in PEP 508: a trailing newline
        # is an error, as the living spec's name regex (\Z, not $) says.
        return self.pos == len(self.text)


def _parse_requirement(text):
    """Parse a PEP 508 requirement into a dict.

    Keys: "name" (as written), "extras" (sorted tuple of distinct names as
    written), "specifier" (normalized string, "" for none), "url" (or None)
    and "marker" (normalized string or None).  Raises ValueError.
    """
    scanner = _Scanner(text, "requirement")
    scanner.skip_ws()
    name = scanner.take("identifier")
    if name is None:
        scanner.fail("expected a package name")
    scanner.skip_ws()
    extras = []
    if scanner.take_literal("["):
        scanner.skip_ws()
        extra = scanner.take("identifier")
        while extra is not None:
            extras.append(extra)
            scanner.skip_ws()
            if scanner.peek("identifier"):
                scanner.fail("expected a comma between extras")
            if not scanner.take_literal(","):
                break
            scanner.skip_ws()
            extra = scanner.take("identifier")
            if extra is None:
                scanner.fail("expected an extra name after the comma")
        scanner.skip_ws()
        if not scanner.take_literal("]"):
            scanner.fail("expected ']' to close the extras")
        scanner.skip_ws()

    url = None
    specifier = ""
    marker = None
    if scanner.take_literal("@"):
        scanner.skip_ws()
        url = scanner.take("url")
        if url is None:
            scanner.fail("expected a URL after '@'")
        # The URL runs to the next space or tab, so a marker needs one.
        scanner.skip_ws()
        if not scanner.at_end():
            marker = _parse_requirement_marker(scanner)
    else:
        specifier = _parse_requirement_specifier(scanner)
        scanner.skip_ws()
        if not scanner.at_end():
            marker = _parse_requirement_marker(scanner)
    if not scanner.at_end():
        scanner.fail("unexpected text")
    try:
        specifier = _normalize_specifier(specifier)
    except ValueError as error:
        scanner.fail(str(error))
    return {
        "name": name,
        "extras": tuple(sorted(set(extras))),
        "specifier": specifier,
        "url": url,
        "marker": None if marker is None else _format_marker(marker),
    }


def _parse_requirement_specifier(scanner):
    """Read "clause, clause, ..." (optionally in parentheses) as a string."""
    in_parens = scanner.take_literal("(")
    scanner.skip_ws()
    clauses = []
    while True:
        found = _scan_specifier(scanner.text, scanner.pos)
        if found is None:
            break               # also allows a trailing comma, as pip does
        operator, version, scanner.pos = found
        clauses.append(operator + version)
        if scanner.text.startswith(".*", scanner.pos):
            scanner.fail("'.*' is only allowed with == and !=")
        if scanner.text.startswith("+", scanner.pos):
            scanner.fail("local versions are only allowed with == and !=")
        scanner.skip_ws()
        if not scanner.take_literal(","):
            break
        scanner.skip_ws()
    scanner.skip_ws()
    if in_parens and not scanner.take_literal(")"):
        scanner.fail("expected ')' to close the version specifier")
    return ",".join(clauses)


def _parse_requirement_marker(scanner):
    if not scanner.take_literal(";"):
        scanner.fail("expected ';' before the marker, or the end")
    marker = _parse_marker_expression(scanner)
    scanner.skip_ws()
    return marker


# A parsed marker is a list [atom, "and"|"or", atom, ...]; an atom is a
# nested list (parentheses) or a comparison (left, op, right), whose sides
# are ("var", name) or ("str", value).

def _parse_marker_expression(scanner):
    expression = [_parse_marker_atom(scanner)]
    while True:
        boolean = scanner.take("boolop")
        if boolean is None:
            return expression
        expression.extend((boolean, _parse_marker_atom(scanner)))


def _parse_marker_atom(scanner):
    scanner.skip_ws()
    if scanner.take_literal("("):
        scanner.skip_ws()
        atom = _parse_marker_expression(scanner)
        scanner.skip_ws()
        if not scanner.take_literal(")"):
            scanner.fail("expected ')'")
    else:
        left = _parse_marker_operand(scanner)
        scanner.skip_ws()
        if scanner.take("in"):
            operator = "in"
        elif scanner.take("not"):
            if not scanner.take("ws") or not scanner.take("in"):
                scanner.fail("expected 'in' after 'not'")
            operator = "not in"
        else:
            operator = scanner.take("marker_op")
            if operator is None:
                scanner.fail("expected a marker operator")
        scanner.skip_ws()
        right = _parse_marker_operand(scanner)
        # PEP 685: extra names compare normalized, so normalize a literal
        # opposite `extra` (a variable there keeps its name).
        if left == ("var", "extra") and right[0] == "str":
            right = ("str", _canonical_name(right[1]))
        elif right == ("var", "extra") and left[0] == "str":
            left = ("str", _canonical_name(left[1]))
        atom = (left, operator, right)
    scanner.skip_ws()
    return atom


def _parse_marker_operand(scanner):
    scanner.skip_ws()
    name = scanner.take("marker_var")
    if name is not None:
        name = name.replace(".", "_")
        if name == "python_implementation":
            name = "platform_python_implementation"
        return ("var", name)
    quoted = scanner.take("marker_string")
    if quoted is None:
        scanner.fail("expected a marker variable or a quoted string")
    value = quoted[1:-1]
    if any(char in value for char in "\\\r\n\0"):
        # packaging reads the string as a Python literal, escapes and all.
        import ast
        try:
            value = str(ast.literal_eval(quoted))
        except (SyntaxError, ValueError):
            scanner.fail("bad string literal %s" % quoted)
    return ("str", value)


_marker_cache = {}


def _parse_marker(text):
    """Parse a marker string (cached); raises ValueError."""
    try:
        return _marker_cache[text]
    except KeyError:
        pass
    scanner = _Scanner(text, "marker")
    expression = _parse_marker_expression(scanner)
    if not scanner.at_end():
        scanner.fail("expected 'and', 'or' or the end")
    if len(_marker_cache) >= 1024:
        _marker_cache.clear()
    _marker_cache[text] = expression
    return expression


def _format_marker(expression, outermost=True):
    """Normalized marker text: single spaces, double quotes, canonical names.

    Unlike packaging, doubly parenthesized groups keep one pair of
    parentheses (packaging drops both, which changes the meaning).
    """
    if isinstance(expression, tuple):
        left, operator, right = expression
        return "%s %s %s" % (_format_operand(left), operator,
                             _format_operand(right))
    if len(expression) == 1:
        return _format_marker(expression[0], outermost)
    text = " ".join(part if isinstance(part, str) else
                    _format_marker(part, False) for part in expression)
    return text if outermost else "(" + text + ")"


def _format_operand(operand):
    kind, text = operand
    return text if kind == "var" else '"%s"' % text


def _normalize_marker(text):
    """The normalized form of a marker string; raises ValueError."""
    return _format_marker(_parse_marker(text))


# Marker variables compared as PEP 440 versions when the right side parses.
_VERSION_MARKERS = ("python_version", "python_full_version",
                    "implementation_version", "platform_release")


def _evaluate_marker(marker, environment=None):
    """Evaluate a PEP 508 marker string.

    `environment` overrides entries of _marker_environment() (plus
    extra=""), and may give "extras"/"dependency_groups" as sets.  Raises
    ValueError for an invalid marker, an unknown variable or an undefined
    comparison such as os_name ~= "x".
    """
    expression = _parse_marker(marker)
    env = _marker_environment()
    env["extra"] = ""
    if environment is not None:
        env.update(environment)
        env["extra"] = _canonical_name(env["extra"]) if env["extra"] else ""
    full_version = env.get("python_full_version")
    if isinstance(full_version, str) and full_version.endswith("+"):
        # Untagged CPython builds report "3.x.y+", which is not PEP 440.
        env["python_full_version"] = full_version + "local"
    return _evaluate_expression(expression, env)


def _evaluate_expression(expression, env):
    # "and" binds tighter than "or".  Every comparison is evaluated, so an
    # error anywhere is reported, as packaging does.
    groups = [[]]
    for part in expression:
        if part == "or":
            groups.append([])
        elif part == "and":
            continue
        elif isinstance(part, list):
            groups[-1].append(_evaluate_expression(part, env))
        else:
            groups[-1].append(_evaluate_comparison(part, env))
    return any(all(group) for group in groups)


def _marker_operand_value(operand, env):
    kind, text = operand
    if kind == "str":
        return text
    if text not in env:
        raise ValueError("undefined marker variable %r" % text)
    return env[text]


def _evaluate_comparison(comparison, env):
    left, operator, right = comparison
    # Either side may be a variable or a string (PEP 508's marker_expr is
    # marker_var op marker_var); each variable stands for its value.  The
    # variables decide how to compare: as versions, as extra names, or as
    # plain strings.
    names = [side[1] for side in (left, right) if side[0] == "var"]
    lhs = _marker_operand_value(left, env)
    rhs = _marker_operand_value(right, env)
    key = names[0] if names else None
    if "extra" in names and isinstance(lhs, str) and isinstance(rhs, str):
        key = "extra"
        lhs, rhs = _canonical_name(lhs), _canonical_name(rhs)
    elif any(name in _VERSION_MARKERS for name in names):
        key = [name for name in names if name in _VERSION_MARKERS][0]
    if not isinstance(lhs, str):
        raise ValueError("marker variable %r only works on the right of 'in'"
                         % left[1])
    if key in ("extras", "dependency_groups"):
        lhs = _canonical_name(lhs)
        if isinstance(rhs, str):
            rhs = _canonical_name(rhs)
        else:
            rhs = set(_canonical_name(item) for item in rhs)
    if key in _VERSION_MARKERS and isinstance(rhs, str):
        clause = _parse_clause(operator + rhs)
        if clause is not None:
            version, text = _coerce_version(lhs)
            if version is None:
                return clause.operator == "===" and clause.matches(None, text)
            return clause.matches(version, text)
    if operator == "in":
        return lhs in rhs
    if operator == "not in":
        return lhs not in rhs
    if operator in ("==", "<=", ">="):
        return lhs == rhs
    if operator == "!=":
        return lhs != rhs
    if operator in ("<", ">"):
        return False            # strings have no order in PEP 508 markers
    raise ValueError("undefined comparison %r %s %r" % (lhs, operator, rhs))


_running_marker_environment = None


def _marker_environment(python_version=None):
    """The marker environment of this interpreter, as a new dict.

    With `python_version` ("3.9" or "3.9.18"), python_version,
    python_full_version and implementation_version describe that target
    interpreter instead ("3.9" means "3.9.0").
    """
    global _running_marker_environment
    if _running_marker_environment is None:
        import platform
        info = sys.implementation.version
        implementation_version = "%d.%d.%d" % info[:3]
        if info.releaselevel != "final":
            implementation_version += info.releaselevel[0] + str(info.serial)
        _running_marker_environment = {
            "implementation_name": sys.implementation.name,
            "implementation_version": implementation_version,
            "os_name": os.name,
            "platform_machine": platform.machine(),
            "platform_release": platform.release(),
            "platform_system": platform.system(),
            "platform_version": platform.version(),
            "python_full_version": platform.python_version(),
            "platform_python_implementation":
                platform.python_implementation(),
            "python_version": ".".join(platform.python_version_tuple()[:2]),
            "sys_platform": sys.platform,
        }
    env = dict(_running_marker_environment)
    if python_version is not None:
        match = _pep_regex("python_version").fullmatch(python_version)
        if match is None:
            raise ValueError("invalid Python version: %r" % (python_version,))
        major, minor, micro = match.groups()
        env["python_version"] = "%s.%s" % (major, minor)
        env["python_full_version"] = "%s.%s.%s" % (major, minor, micro or "0")
        env["implementation_version"] = env["python_full_version"]
    return env

# =============================================================================
# 10. Scripts: bash and PowerShell
#    Every value wetlite inserts is quoted for the target shell by
#    _quote_bash / _quote_powershell; a command given as a list of arguments
#    is quoted word by word, a command given as a string is shell code.
#    Renderers take the shell as a parameter, so Linux tests check Windows.
# =============================================================================

_SHELLS = ("bash", "powershell")
_COMMAND_PLATFORMS = ("all", "linux", "mac", "windows")


def _default_shell():
    return "powershell" if _WINDOWS else "bash"


def _check_value(value):
    if not isinstance(value, str):
        raise SpecError("script values must be strings, not %s %r" % (type(value).__name__, value))
    if "\x00" in value:
        raise SpecError("value %r contains a NUL character, which no shell can pass on" % (value,))
    return value


def _quote_bash(value, always=False):
    """Quote one word for bash (POSIX single quotes; only "'" needs care).

    ``always`` quotes even a plain word: a command's first word must never
    read as an assignment (x=1) or a reserved word (if, time).
    """
    import re
    _check_value(value)
    if value and not always and re.match(r"^[A-Za-z0-9_@%+=:,./-]+\Z", value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _quote_powershell(value):
    """Quote one word for PowerShell: a single-quoted string with quotes doubled.

    PowerShell also treats U+2018-U+201B as single quotes, so those are
    doubled too.
    """
    import re
    _check_value(value)
    if re.search("[\ud800-\udfff]", value):
        raise SpecError("value %r is not valid Unicode (it comes from undecodable bytes); PowerShell cannot "
                        "pass it on" % (value,))
    return "'" + re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", value) + "'"


def _command_list(commands, target):
    """Normalize commands (str, list, or {"all","linux","mac","windows"} dict).

    Each command is a string of shell code or a list of arguments.
    ``target`` is "linux", "mac" or "windows".
    """
    if isinstance(commands, dict):
        unknown = sorted(str(k) for k in commands if k not in _COMMAND_PLATFORMS)
        if unknown:
            raise SpecError("unknown key %s in commands; the keys are: %s"
                            % (", ".join(repr(k) for k in unknown), ", ".join(_COMMAND_PLATFORMS)))
        items = []
        for key in ("all", target):
            value = commands.get(key)
            items.extend([value] if isinstance(value, str) else _as_list(value, "commands[%r]" % key))
    elif isinstance(commands, str):
        items = [commands]
    elif isinstance(commands, (list, tuple)):
        items = list(commands)
    else:
        raise SpecError("commands must be a string, a list, or a dict with keys %s, not %s %r"
                        % ("/".join(_COMMAND_PLATFORMS), type(commands).__name__, commands))
    normalized = []
    for item in items:
        if isinstance(item, str):
            normalized.append(_check_value(item))
        elif isinstance(item, (list, tuple)) and item:
            normalized.append([_check_value(os.fspath(a) if isinstance(a, os.PathLike) else a) for a in item])
        else:
            raise SpecError("each command must be a string of shell code or a non-empty list of arguments, "
                            "not %r" % (item,))
    return normalized


def _target_platform(shell):
    return "windows" if shell == "powershell" else ("mac" if _MACOS else "linux")


def _join_path(windows, *parts):
    import ntpath
    import posixpath
    return (ntpath if windows else posixpath).join(*parts)


def _activation_lines(kind, shell, prefix, root=None, tool_exe=None, manifest=None, pixi_env="default"):
    """The shell lines that make an environment of ``kind`` current."""
    q = _quote_bash if shell == "bash" else _quote_powershell
    win = shell == "powershell"
    if kind == "main":
        return []
    if shell == "bash":
        if kind == "venv":
            return ["export VIRTUAL_ENV=%s" % q(prefix),
                    'export PATH=%s:"$PATH"' % q(_join_path(False, prefix, "bin")),
                    "hash -r"]
        if kind == "micromamba":
            return ["set +u  # activation scripts may read unset variables",
                    "export MAMBA_ROOT_PREFIX=%s" % q(root),
                    '__wetlite_hook="$(%s)"' % _bash_words([tool_exe, "shell", "hook", "-s", "bash"]),
                    'eval "$__wetlite_hook"',
                    "micromamba activate %s" % q(prefix)]
        if kind == "pixi":
            return ["set +u  # activation scripts may read unset variables",
                    'export PATH=%s:"$PATH"' % q(os.path.dirname(tool_exe)),
                    '__wetlite_hook="$(%s)"' % _bash_words([tool_exe, "shell-hook", "--manifest-path", manifest,
                                                            "-e", pixi_env, "-s", "bash", "--change-ps1", "false",
                                                            "--frozen"]),
                    'eval "$__wetlite_hook"']
        if kind == "prefix":
            return ["set +u  # activation scripts may read unset variables",
                    "export CONDA_PREFIX=%s" % q(prefix),
                    'export PATH=%s:"$PATH"' % q(_join_path(False, prefix, "bin")),
                    "for __wetlite_script in %s/*.sh; do" % q(_join_path(False, prefix, "etc", "conda", "activate.d")),
                    '  if [ -f "$__wetlite_script" ]; then . "$__wetlite_script"; fi',
                    "done"]
    else:
        sep = "[IO.Path]::PathSeparator"
        check = "if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }"
        if kind == "venv":
            return ["$env:VIRTUAL_ENV = %s" % q(prefix),
                    "$env:PATH = %s + %s + $env:PATH" % (q(_join_path(win, prefix, "Scripts")), sep)]
        if kind == "micromamba":
            return ["$env:MAMBA_ROOT_PREFIX = %s" % q(root),
                    "$wetliteHook = (%s) | Out-String"
                    % _powershell_call([tool_exe, "shell", "hook", "-s", "powershell"]),
                    check,
                    "Invoke-Expression $wetliteHook",
                    "$global:LASTEXITCODE = 0",
                    "micromamba activate %s" % q(prefix),
                    check]
        if kind == "pixi":
            hook = [tool_exe, "shell-hook", "--manifest-path", manifest, "-e", pixi_env, "-s", "powershell",
                    "--change-ps1", "false", "--frozen"]
            return ["$env:PATH = %s + %s + $env:PATH" % (q(os.path.dirname(tool_exe)), sep),
                    "$wetliteHook = (%s) | Out-String" % _powershell_call(hook),
                    check,
                    "Invoke-Expression $wetliteHook"]
        if kind == "prefix":
            # The directories conda's own activation puts first on Windows, in its order.
            paths = [prefix] + [_join_path(win, prefix, *p.split("/")) for p in
                                ("Library/mingw-w64/bin", "Library/usr/bin", "Library/bin", "Scripts", "bin")]
            return ["$env:CONDA_PREFIX = %s" % q(prefix),
                    "$env:PATH = %s + %s + $env:PATH" % ((" + %s + " % sep).join(q(p) for p in paths), sep),
                    "Get-ChildItem -LiteralPath %s -Filter *.ps1 -ErrorAction SilentlyContinue | "
                    "ForEach-Object { . $_.FullName }" % q(_join_path(win, prefix, "etc", "conda", "activate.d"))]
    raise SpecError("unknown environment kind %r" % (kind,))


_CMD_SPECIAL = '&|<>^%"\r\n'


def _check_batch_arguments(argv):
    """Refuse arguments cmd.exe would read as code when argv[0] is a .bat or .cmd file.

    Windows runs a batch file through cmd.exe, which re-parses the whole
    command line: no quoting PowerShell does keeps "&", "|" or "%VAR%" in an
    argument from acting (the "BatBadBut" class of bugs).  Such arguments
    are refused; write the command as a string of shell code instead, with
    cmd's own escapes, or call the program the batch file wraps.
    """
    # Windows drops trailing dots and spaces from a file name: "run.bat." is run.bat.
    if not argv[0].lower().rstrip(". ").endswith((".bat", ".cmd")):
        return
    for arg in argv[1:]:
        bad = sorted(set(c for c in arg if c in _CMD_SPECIAL))
        if bad:
            raise SpecError(
                "argument %r of %s contains %s, which cmd.exe (which runs .bat and .cmd files) would treat as "
                "code; pass the command as a string with cmd's escapes, or call the program the batch file runs"
                % (arg, argv[0], " ".join(repr(c) for c in bad)))


def _bash_words(argv):
    return " ".join(_quote_bash(a, always=(i == 0)) for i, a in enumerate(argv))


def _powershell_call(argv):
    return "& " + " ".join(_quote_powershell(a) for a in argv)


def _render_script(shell, activation, commands):
    """The whole script: header, scrubbed variables, activation, commands."""
    if shell not in _SHELLS:
        raise SpecError("unknown shell %r: choose %s" % (shell, " or ".join(_SHELLS)))
    if shell == "bash":
        lines = ["#!/usr/bin/env bash",
                 "# Generated by wetlite %s; do not edit." % __version__,
                 "set -eo pipefail",
                 "unset %s" % " ".join(_SCRUBBED_VARS)]
        lines.extend(activation)
        for command in commands:
            lines.append(command if isinstance(command, str) else _bash_words(command))
        return "\n".join(lines) + "\n"
    lines = ["# Generated by wetlite %s; do not edit." % __version__,
             "$ErrorActionPreference = 'Stop'",
             "$PSNativeCommandUseErrorActionPreference = $false  # exit codes are checked below",
             "foreach ($wetliteName in %s) {" % ", ".join(_quote_powershell(v) for v in _SCRUBBED_VARS),
             '    Remove-Item -LiteralPath "Env:$wetliteName" -ErrorAction SilentlyContinue',
             "}"]
    lines.extend(activation)
    for command in commands:
        if not isinstance(command, str):
            _check_batch_arguments(command)
        # $LASTEXITCODE keeps its old value across cmdlets, so reset it first.
        lines.append("$global:LASTEXITCODE = 0")
        lines.append(command if isinstance(command, str) else _powershell_call(command))
        lines.append("if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }")
    lines.append("exit 0")
    return "\r\n".join(lines) + "\r\n"


_scripts_dir_path = None


def _scripts_dir():
    """A private (0700) temp dir for generated scripts, removed at exit."""
    global _scripts_dir_path
    if _scripts_dir_path is None or not os.path.isdir(_scripts_dir_path):
        import atexit
        _scripts_dir_path = _private_temp_dir("scripts")
        atexit.register(_remove_scripts_dir, _scripts_dir_path)
    return _scripts_dir_path


def _remove_scripts_dir(path):
    if _debug_enabled():
        _eprint("wetlite: keeping generated scripts in %s (WETLITE_DEBUG is set)" % path)
        try:
            _open_private(os.path.join(path, _KEPT_MARKER), "wb").close()      # not a leftover to sweep
        except OSError:
            pass
    else:
        _rmtree(path)


def _write_script(text, shell):
    import tempfile
    fd, path = tempfile.mkstemp(suffix=".sh" if shell == "bash" else ".ps1", prefix="run-", dir=_scripts_dir())
    # Windows PowerShell 5.1 reads a BOM-less script in the ANSI code page.
    # bash takes bytes: arguments decoded from undecodable file names
    # (surrogate escapes) go back out as the original bytes.
    data = text.encode("utf-8-sig") if shell == "powershell" else text.encode("utf-8", "surrogateescape")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _shell_argv(shell, script_path):
    import shutil
    if shell == "bash":
        return [shutil.which("bash") or "/bin/bash", script_path]
    exe = shutil.which("pwsh") or shutil.which("powershell") or "powershell"
    return [exe, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File", script_path]


# =============================================================================
# 11. Subprocesses
#    Children run in their own process group (session) so a timeout or an
#    interrupt can stop the whole tree, and their output is streamed line by
#    line to the logger and to an optional callback.
# =============================================================================


def _indent(lines):
    """Lines of output, indented under an error message."""
    return "\n".join("  " + line for line in lines)


def _child_environ(extra=None, scrub_tools=False):
    env = dict(os.environ)
    for name in _SCRUBBED_VARS + (_TOOL_SCRUBBED_VARS if scrub_tools else ()):
        env.pop(name, None)
    if extra:
        env.update(extra)
    return env


def _isolate_user_site(env, kind):
    """``env`` with the user's site-packages turned off, for any environment
    but the host's (kind "main"), unless WETLITE_USER_SITE=1."""
    if kind != "main" and os.environ.get(_ENV_USER_SITE, "") in ("", "0"):
        env["PYTHONNOUSERSITE"] = "1"
    return env


def _session_kwargs():
    import subprocess
    if _WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill_tree(proc):
    """Kill a child started with _session_kwargs() and everything it started.

    On POSIX the whole process group goes, even when its leader has already
    exited: what it started may still hold our pipes.
    """
    import subprocess
    if _WINDOWS:
        if proc.poll() is None:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    else:
        import signal
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            if proc.poll() is None:
                proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _pump_lines(proc, on_line):
    """Feed each line the child prints to ``on_line``; a \\r-redrawn line counts once."""
    for raw in iter(proc.stdout.readline, ""):
        line = raw.rstrip("\r\n")
        if "\r" in line:
            line = line.rsplit("\r", 1)[-1]
        on_line(line)


def _run_streaming(argv, label, env=None, cwd=None, on_line=None, log_path=None, what=None, timeout=None,
                   log_level=20, env_name=None, timeout_what=None):
    """Run ``argv`` to completion, streaming its output; return (returncode, output lines).

    Each line goes to the logger at ``log_level`` (INFO), its record carrying
    ``env_name`` as Wetlands' do, and to ``on_line``.
    The child is killed, with its tree, if the caller is interrupted or the
    timeout passes (CommandTimeout, naming ``timeout_what``).  ``what`` names
    the operation in the CommandError raised on a non-zero exit; with
    ``what=None`` the caller checks the code.
    """
    import collections
    import subprocess
    import threading
    tail = collections.deque(maxlen=_OUTPUT_TAIL_LINES)
    lines = []
    log_file = None
    if log_path:
        _makedirs_private(os.path.dirname(log_path))
        log_file = _open_private(log_path, "a", encoding="utf-8")
        log_file.write("$ %s\n" % _mask_url(" ".join(argv)))
    logger = _log()
    extra = {"env_name": env_name}

    def handle(line):
        lines.append(line)          # the caller's, as printed; what wetlite keeps or logs is masked
        shown = _mask_url(line)
        tail.append(shown)
        logger.log(log_level, "%s: %s", label, shown, extra=extra)
        if log_file is not None:
            try:
                log_file.write(shown + "\n")
            except OSError as exc:
                raise _storage_error(exc, "writing the log of %s" % label, log_path)
        if on_line is not None:
            on_line(line)

    try:
        kwargs = _text_kwargs()
        kwargs.update(_session_kwargs())
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env, cwd=cwd, **kwargs)
        except OSError as exc:
            raise ToolError("cannot run %s: %s" % (argv[0], exc))
        timer = None
        timed_out = []
        if timeout is not None:
            def expire():
                timed_out.append(True)
                _kill_tree(proc)
            timer = threading.Timer(timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            _pump_lines(proc, handle)
            returncode = proc.wait()
        except BaseException:
            _kill_tree(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            proc.stdout.close()
    finally:
        if log_file is not None:
            log_file.close()
    if timed_out:
        raise CommandTimeout("stopped %s: the timeout of %s s passed%s"
                             % (timeout_what or what or label, _format_number(timeout),
                                "; the last output:\n" + _indent(tail) if tail else " (there was no output)"),
                             returncode=returncode, output_tail="\n".join(tail))
    if returncode != 0 and what is not None:
        raise CommandError(
            "%s failed with exit code %s%s:\n%s" % (
                what, returncode, " (see %s)" % log_path if log_path else "", _indent(tail)),
            returncode=returncode, output_tail="\n".join(tail))
    return returncode, lines


def _run_capture(argv, env=None, cwd=None, timeout=600, what=None):
    """Run ``argv`` and return its stdout (stderr is kept for the error message)."""
    import subprocess
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandTimeout("stopped %s: the timeout of %s s passed" % (what or argv[0], _format_number(timeout)))
    except OSError as exc:
        raise ToolError("cannot run %s: %s" % (argv[0], exc))
    if proc.returncode != 0:
        tail = _mask_url(proc.stderr.decode("utf-8", "replace")).strip().splitlines()[-_OUTPUT_TAIL_LINES:]
        raise CommandError("%s failed with exit code %d:\n%s" % (what or argv[0], proc.returncode, _indent(tail)),
                           returncode=proc.returncode, output_tail="\n".join(tail))
    return proc.stdout.decode("utf-8", "replace")

# =============================================================================
# 12. Environments and the manager
#    Layout under root: bin/ (tools), .mambarc, envs/NAME (micromamba, venv),
#    workspaces/NAME (pixi; the prefix is .pixi/envs/default), and state/
#    (envs/NAME.json records, locks/, logs/).  A record is written with
#    state "creating" before the tool runs and "ready" after; anything else
#    is a half-built environment and is rebuilt, never reused.
# =============================================================================

class Environment(object):
    """An environment: a prefix with its own interpreter.

    ``name``, ``path`` (the prefix), ``python`` (its interpreter) and
    ``tool`` ("pixi", "micromamba", "venv", "prefix" for a bare conda prefix,
    or "main" for the host) describe it.  Get one from
    :meth:`EnvironmentManager.create`, ``load`` or ``get``.
    """

    def __init__(self, manager, name, path, tool, python=None, manifest=None, managed=False, pixi_env="default"):
        self.manager = manager
        self.name = name
        self.path = path
        self.tool = tool
        self.manifest = manifest
        self.pixi_env = pixi_env        # the pixi environment of the workspace
        self.managed = managed
        self.python = python or _env_python(path, "venv" if tool == "venv" else "conda")
        self._worker = None
        self._worker_output = None
        self._activation_cache = None
        self._runtime_hold = None               # keeps gc away from the runtime copy the worker runs
        self._building = False                  # its own build may run commands (post_install) in it
        self._launching = _thread_lock()
        self._cancel_grace = _CANCEL_GRACE
        self._pool = None                   # a _Pool once launch(workers=N > 1); _worker is then None

    def __repr__(self):
        return "<%s %r (%s) at %r>" % (type(self).__name__, self.name, self.tool, self.path)

    # -- dependencies -------------------------------------------------------

    def install(self, dependencies=None, post_install=None, *, config=None, optional_dependencies=None,
                progress=None):
        """Install more dependencies (same spec format and options as ``create``).

        The record keeps what was installed (``mgr.list()``, ``wetlite info
        NAME``); the environment's recipe does not change, so ``create`` with
        the original recipe still reuses it.
        """
        self._check_present()
        try:
            self.manager._install(self, dependencies, config, progress, optional_dependencies, post_install)
        except OSError as exc:
            raise _storage_error(exc, "installing into environment %r" % self.name)

    def packages(self):
        """Installed packages: a list of {"name", "version", "kind", "source"}.

        ``kind`` is "conda" or "pypi".  ``source`` says where a package came
        from: a conda package's channel, or the installer of a pypi one ("pip",
        "pixi", "uv", ...).  What is listed is what the prefix holds, read from
        its files (conda-meta records and dist-info directories): also the pip
        packages installed beside a tool, which its own listing may omit (pixi's
        lists its lock file).  Names of pypi packages are normalized (PEP 503).
        """
        if self.tool == "main":
            rows = [{"name": _canonical_name(dist.metadata["Name"]), "version": version, "kind": "pypi",
                     "source": _installer(dist)} for version, dist in _installed_distributions().values()]
        else:
            rows = _prefix_packages(self.path)
        return sorted(rows, key=lambda r: (r["name"].lower(), r["kind"]))

    # -- commands -----------------------------------------------------------

    def script(self, commands, shell=None):
        """Return the exact script that would run ``commands`` in this environment.

        :param commands: a string, a list of commands, or a dict with keys
            "all", "linux", "mac", "windows".  A command is shell code (str)
            or a list of arguments, which wetlite quotes.
        :param shell: "bash" or "powershell" (default: this platform's).

        A script for this platform's shell names paths of this machine, so
        the environment must be there (SpecError otherwise); one for the
        other shell is only text, for another machine.
        """
        shell = shell or _default_shell()
        return self._script(commands, shell, check=shell == _default_shell())

    def _script(self, commands, shell, check):
        if shell not in _SHELLS:
            raise SpecError("unknown shell %r: choose %s" % (shell, " or ".join(_SHELLS)))
        items = _command_list(commands, _target_platform(shell))
        if check:
            self._check_present()
        return _render_script(shell, self._activation(shell), items)

    def _check_present(self):
        """Raise SpecError unless this environment is there, complete and usable.

        Without this check a deleted environment would run on the host's
        Python: its scripts put a bin/ that no longer exists first on PATH.
        """
        if self._building:
            return
        if self.managed:
            record, problem = self.manager._load_record(self.name)
            if record is None and problem is None:
                raise SpecError("environment %r was removed (%s has no record of it any more); create it again "
                                "with mgr.create(%r, ...)" % (self.name, self.manager.root, self.name))
            status, problem = ("broken", problem) if record is None else _record_status(record)
            if status != "ready":
                raise SpecError(self.manager._unusable(self.name, status, problem))
        elif self.tool != "main":
            # A loaded prefix may hold no Python (tools only), and pixi installs a
            # loaded workspace's environment on first use: check what must be there.
            needed = self.manifest if self.tool == "pixi" and self.manifest else self.path
            if not os.path.exists(needed):
                raise SpecError("environment %r is missing: %s does not exist (moved or deleted?); load it again "
                                "from where it is now with mgr.load(%r, path)" % (self.name, needed, self.name))

    def _activation(self, shell):
        tool_exe = None
        if self.tool in ("pixi", "micromamba"):
            tool_exe = self.manager._tool_exe_path(windows=shell == "powershell")
        return _activation_lines(self.tool, shell, self.path, self.manager.root, tool_exe, self.manifest,
                                 self.pixi_env)

    def _environ(self, extra=None):
        """The environment variables this environment's processes start from.

        The user's site-packages (~/.local/lib/pythonX.Y) stay out of every
        environment but the host's, as a venv keeps them out: set
        WETLITE_USER_SITE=1 to let them in.
        """
        env = _isolate_user_site(_child_environ(scrub_tools=True), self.tool)
        if extra:
            env.update(extra)
        return env

    def _prepare_script(self, commands, shell):
        shell = shell or _default_shell()
        if shell == "powershell" and not _WINDOWS:
            raise SpecError("PowerShell scripts are written for Windows (prefix\\Scripts, the commands for "
                            "'windows'); on Linux and macOS run commands with shell='bash' (env.script(..., "
                            "shell='powershell') still shows one)")
        text = self._script(commands, shell, check=True)     # the tool's path is known before it is installed
        if self.tool in ("pixi", "micromamba"):
            self.manager.install_tool()
        try:
            return shell, _shell_argv(shell, _write_script(text, shell))
        except OSError as exc:
            raise _storage_error(exc, "writing the script for environment %r" % self.name)

    def execute_commands(self, commands, wait=False, popen_kwargs=None, shell=None, log=False):
        """Start ``commands`` in this environment and return the subprocess.Popen.

        Output is piped (stdout and stderr together, as text) for you to read,
        unless ``popen_kwargs`` says otherwise.  With ``wait=True`` the output
        is streamed to the logger and the finished Popen is returned; with
        ``log=True`` a background thread streams it to the logger instead of
        you (what Wetlands does by default).
        """
        import subprocess
        shell, argv = self._prepare_script(commands, shell)
        kwargs = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT,
                  "env": self._environ()}
        kwargs.update(_text_kwargs())
        kwargs.update(_session_kwargs())
        kwargs.update(popen_kwargs or {})
        proc = subprocess.Popen(argv, **kwargs)
        extra = {"env_name": self.name}
        log_line = lambda line: _log().info("%s: %s", self.name, line, extra=extra)     # noqa: E731
        if wait:
            try:
                if proc.stdout is not None:
                    _pump_lines(proc, log_line)
                proc.wait()
            except BaseException:
                _kill_tree(proc)
                raise
        elif log and proc.stdout is not None:
            import threading
            threading.Thread(target=_pump_lines, args=(proc, log_line), daemon=True,
                             name="wetlite-log-%s" % self.name).start()
        return proc

    def run(self, commands, output=None, cwd=None, env=None, timeout=None, check=True, shell=None):
        """Run ``commands`` in this environment and wait for them.

        Output (stdout and stderr together) streams live, line by line, to
        the ``wetlite`` logger at DEBUG level and to ``output(line)`` if
        given.  Returns a CompletedProcess whose ``stdout`` is the whole
        output; raises CommandError (with ``returncode`` and
        ``output_tail``) if a command fails and ``check`` is true.
        """
        import subprocess
        timeout = _check_timeout(timeout)
        shell, argv = self._prepare_script(commands, shell)
        returncode, lines = _run_streaming(argv, "commands in environment %r" % self.name, env_name=self.name,
                                           env=self._environ(env), cwd=cwd, on_line=output,
                                           timeout=timeout, log_level=10,
                                           timeout_what="the commands in environment %r" % self.name)
        if check and returncode != 0:
            tail = "\n".join(lines[-_OUTPUT_TAIL_LINES:])
            raise CommandError("command failed with exit code %s in environment %r:\n%s"
                               % (returncode, self.name, _indent(lines[-_OUTPUT_TAIL_LINES:])),
                               returncode=returncode, output_tail=tail)
        return subprocess.CompletedProcess(argv, returncode, "\n".join(lines) + ("\n" if lines else ""), None)

    # -- executor (sections 13-15) -------------------------------------------

    def launch(self, timeout=60, output=None, workers=None):
        """Start this environment's worker unless it already runs; return self.

        :param timeout: seconds the worker has to start and say hello; if it
            dies or stays silent, WorkerDied tells its exit code and stderr.
        :param output: ``output(line)`` receives each line the worker prints
            (default: the ``wetlite`` logger, INFO, tagged with the name).
        :param workers: how many workers to run (default: as many as now, at
            first 1; "auto": one per CPU).  Calls go to the least-loaded one,
            a RemoteObject's calls to its own; see map().

        Calls start the worker on demand too, and restart it after a crash.
        """
        timeout = _check_timeout(timeout, "launch timeout", none_ok=False)
        size = None if workers is None else _check_workers(workers)
        with self._launching:               # two threads after a crash start one worker
            worker, pool = self._worker, self._pool
            if output is not None:
                self._worker_output = output
                for w in (pool.live() if pool is not None else [worker] if worker is not None else []):
                    w.output = output
            if size is not None and size != 1 or pool is not None:
                if pool is None:
                    pool = self._pool = _Pool(self, [worker])
                    self._worker = None
                pool.resize(len(pool.slots) if size is None else size, timeout, self._worker_output)
                if size == 1:               # back to one: the fast path again
                    self._worker, self._pool = pool.slots[0], None
            elif worker is None or worker.dead is not None or worker._closed:
                self._worker = self._new_worker(timeout, self._worker_output)
        return self

    def _new_worker(self, timeout, output):
        """Start a worker: the slow path only, so a running worker's calls pay for none of these checks."""
        self.manager._check_open(self.name)
        self._check_present()
        try:
            self._runtime_hold = _hold_runtime(self.manager.root)
            return _Worker(self, timeout, output)
        except OSError as exc:
            raise _storage_error(exc, "starting the worker of environment %r" % self.name)

    @property
    def workers(self):
        """The process ids of the live workers, in order (empty when none runs)."""
        pool, worker = self._pool, self._worker
        return [w.proc.pid for w in (pool.live() if pool is not None else [worker] if _alive(worker) else [])]

    def _running_worker(self, payload_args=None):
        """The worker for a call: the one holding its RemoteObject arguments, else the least-loaded one."""
        pinned = _pinned_worker(self, payload_args) if _HANDLES_MADE else None
        if pinned is not None:
            return pinned
        pool = self._pool
        if pool is not None:
            return pool.pick()
        worker = self._worker
        if worker is None or worker.dead is not None or worker._closed:     # not started, crashed or stopped
            self.launch()
            worker = self._worker
            if worker is None:              # launched as a pool meanwhile
                return self._running_worker()
        return worker

    def _call(self, message, payload_args, what, timeout, future=None, task=None, wait=True):
        try:
            return self._running_worker(payload_args).call(message, payload_args, what, timeout, future, task, wait)
        except _NotSent:
            # It died while idle (nothing was running): start a new one.
            worker = self._running_worker(payload_args)
        except _HeldElsewhere as exc:
            # A RemoteObject deep in the arguments lives in another worker of the pool: the call goes there.
            worker, moved = exc.worker, exc
        else:
            moved = None
        try:
            return worker.call(message, payload_args, what, timeout, future, task, wait)
        except _HeldElsewhere as exc:
            if moved is None:
                raise
            raise ExecutorError("the arguments hold RemoteObjects of different workers of environment %r (%r in %s, "
                                "%r in %s); a call runs in one worker: pass objects of one worker"
                                % (self.name, moved.handle, _worker_label(moved.worker), exc.handle,
                                   _worker_label(exc.worker)))

    @property
    def cancel_grace(self):
        """Seconds a cancelled call gets to stop on its own before it is interrupted (default 2)."""
        return self._cancel_grace

    @cancel_grace.setter
    def cancel_grace(self, seconds):
        self._cancel_grace = _check_timeout(seconds, "cancel_grace", none_ok=False)

    def execute(self, module, function, args=(), kwargs=None, timeout=None, *, progress=None, ref=False):
        """Call ``module.function(*args, **kwargs)`` in the environment; return its result.

        ``module`` is a dotted name importable there, a path to a .py file,
        or a RemoteObject (then ``function`` is its method); ``function`` may
        be a dotted path (``Class.method``).  The result comes back by value,
        or with ``ref=True`` as a RemoteObject that stays in the worker.  A
        remote exception is re-raised as its own type when the host has it,
        else as RemoteError.  ``timeout`` (seconds) raises CallTimeout and
        stops the call.  ``progress(task, progress)`` receives the call's
        progress reports (see Task); all have been delivered when execute()
        returns.
        """
        target = type(module) is str and _TARGETS.get(module)
        if not target:
            target = _module_target(module)
            if type(target) is RemoteObject:
                return self._execute(target, function, args, kwargs, timeout, progress, ref)
        if (type(function) is not str or not function or type(args) is not tuple and type(args) is not list
                or kwargs is not None and type(kwargs) is not dict):
            _check_call_arguments(function, args, kwargs)
        if timeout is not None:
            timeout = _check_timeout(timeout)
        worker = self._worker
        if progress is not None or ref or worker is None or worker.dead is not None or worker._closed:
            return self._execute(target, function, args, kwargs, timeout, progress, ref)
        try:
            return worker.call(("call", target, function), (args, kwargs), (target, function), timeout)
        except _NotSent:
            return self._execute(target, function, args, kwargs, timeout, progress, ref)

    def _execute(self, target, function, args, kwargs, timeout, progress, ref):
        """execute() off its hot path: progress, ref, a RemoteObject, or a worker to start."""
        _check_call_arguments(function, args, kwargs)
        timeout = _check_timeout(timeout)
        _check_callback(progress, "progress")
        task = _new_task(self, (_target_name(target), function), None, progress) if progress is not None else None
        try:
            result = self._send("ref" if ref else "call", target, function, (args, kwargs), timeout, None, task)
        except BaseException as exc:
            if task is not None:
                task.set_exception(exc)
                _callbacks_drained()
            raise
        if task is not None:
            task.set_result(result)
            _callbacks_drained()
        return result

    def submit(self, module, function, args=(), kwargs=None, timeout=None, *, progress=None, output=None,
               ref=False, cancel_grace=None):
        """Like execute(), but return a Task (a concurrent.futures.Future) at once.

        ``progress(task, progress)`` and ``output(task, line)`` are added as
        the task's callbacks before the call is sent (a callback added later
        misses what came before).  ``cancel_grace`` (seconds) overrides
        ``env.cancel_grace`` for this call: see Task.cancel().
        """
        target, task = self._new_call(module, function, args, kwargs, progress, output, cancel_grace)
        timeout = _check_timeout(timeout)
        return self._send("ref" if ref else "call", target, function, (args, kwargs), timeout, task, task)

    def _new_call(self, module, function, args, kwargs, progress, output, cancel_grace):
        """submit()'s checks, and the Task for the call."""
        target = _module_target(module)
        _check_call_arguments(function, args, kwargs)
        _check_callback(progress, "progress")
        task = _new_task(self, (_target_name(target), function), _check_timeout(cancel_grace, "cancel_grace"),
                         progress)
        if output is not None:
            task.add_output_callback(output)
        return target, task

    def _submit_task(self, task, target, function, args, kwargs, timeout):
        return self._send("call", target, function, (args, kwargs), timeout, task, task)

    def map(self, module, function, *iterables, timeout=None, ordered=True, progress=None, cancel_grace=None):
        """Call ``module.function`` once per item of ``iterables`` (zipped, as
        the builtin map does) on this environment's workers; yield the results.

        Lazy: at most two calls per worker are in flight, and more are
        submitted as results are taken, so a long input never sits in memory
        at once.  Results come in input order (``ordered=False``: as they
        finish).  The first error is raised in its place and the calls still
        pending are cancelled; closing the iterator early cancels them too.
        Either way it returns (or raises) once they have stopped.
        ``timeout``, ``progress`` and ``cancel_grace`` apply to each call, as
        in submit().
        """
        return self._map(module, function, _zipped(module, function, iterables), timeout, ordered, progress,
                         cancel_grace)

    def map_async(self, module, function, *iterables, timeout=None, ordered=True, progress=None,
                  cancel_grace=None):
        """map() for asyncio: ``async for result in env.map_async(...)``."""
        return _map_results_async(self._map_run(module, function, _zipped(module, function, iterables), timeout,
                                                ordered, progress, cancel_grace))

    async def execute_async(self, module, function, args=(), kwargs=None, timeout=None, *, progress=None,
                            ref=False, cancel_grace=None):
        """execute() for asyncio: ``await env.execute_async(...)``.  Cancelling the awaiting
        coroutine cancels the call (see Task.cancel)."""
        return await self.submit(module, function, args, kwargs, timeout, progress=progress, ref=ref,
                                 cancel_grace=cancel_grace)

    def _map(self, module, function, calls, timeout, ordered, progress, cancel_grace):
        """The results of ``calls`` ((args, kwargs) pairs): see map()."""
        if self._map_width() == 1 and progress is None and type(self) is not _MainEnvironment:
            target = _module_target(module)
            _check_call_arguments(function, (), None)
            grace = _check_timeout(cancel_grace, "cancel_grace")
            return _map_one_worker(self, target, function, calls, _check_timeout(timeout),
                                   self.cancel_grace if grace is None else grace)
        return _map_results(self._map_run(module, function, calls, timeout, ordered, progress, cancel_grace))

    def _map_run(self, module, function, calls, timeout, ordered, progress, cancel_grace):
        """A _MapRun of ``calls`` ((args, kwargs) pairs), one Task each."""
        target = _module_target(module)
        _check_call_arguments(function, (), None)
        return _map_run(self, target, function, calls, _check_timeout(timeout), ordered, progress,
                        cancel_grace, self._map_width())

    def _map_width(self):
        return len(self._pool.slots) if self._pool is not None else 1

    def _send(self, op, target, function, payload_args, timeout=None, future=None, task=None, wait=True):
        """One request about ``function`` of ``target``: a module, or a RemoteObject (then to its own worker)."""
        if type(target) is not RemoteObject:
            return self._call((op, target, function), payload_args, (target, function), timeout, future, task, wait)
        worker = target._wl_check(self)
        message = (op, target._wl_id, function)
        try:
            return worker.call(message, payload_args, (target._wl_label, function), timeout, future, task, wait)
        except _NotSent:
            target._wl_check(self)              # says the worker is gone
            raise

    def _get(self, target, path):
        """An attribute's value, one round trip (or a _ProxyInfo for a callable)."""
        return self._send("get", target, path, None)

    def _set(self, target, path, value):
        return self._send("set", target, path, ((value,), None))

    def _describe(self, target, path):
        return self._send("describe", target, path, None)

    def import_module(self, module):
        """A proxy of ``module`` in the environment: ``mod.f(x)`` is one round trip,
        ``mod.__version__`` (plain data) one round trip by value.  See _RemoteModule."""
        module = _module_target(module)
        info = self._call(("describe", module, None), None, "import of %s in environment %r" % (module, self.name),
                          None)
        return _RemoteModule(self, module, info)

    def run_script(self, path, args=(), run_name="__main__", timeout=None):
        """Run a Python script in the worker, with ``sys.argv = [path] + args``."""
        path = _script_target(path, args, run_name)
        timeout = _check_timeout(timeout)
        return self._call(("script", path), (args, {"run_name": run_name}),
                          "script %s in environment %r" % (path, self.name), timeout)

    def exit(self):
        """Stop this environment's workers, if any run.  Idempotent.  The next
        call starts them again (as many as launch(workers=N) asked for)."""
        worker, self._worker = self._worker, None
        self._runtime_hold = None
        if worker is not None:
            worker.close()
        if self._pool is not None:
            self._pool.close()

    def _worker_argv(self):
        # A boot script in the private runtime dir, run by path: sys.path[0]
        # is then that dir, and wetlite.py beside it is what gets imported.
        # (-m would put the host's cwd first, and a wetlite.py there would win.)
        return [self.python, "-u", os.path.join(_runtime_dir(self.manager._checked_root()), "_wetlite_worker.py")]

    def _worker_environ(self):
        env = _apply_activation(self._environ(), self._activation_environ())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _activation_environ(self):
        """What activating this environment changes, computed once and kept in its record."""
        if self._activation_cache is not None:
            return self._activation_cache
        record = self.manager._load_record(self.name)[0] if self.managed else None
        activation = (record or {}).get("activation")
        if not _valid_activation(activation):         # none yet, or a bad cache: capture it again
            activation = self._capture_activation()
            if record is not None and record["prefix"] == self.path:
                record["activation"] = activation
                record_path = self.manager._record_path(self.name)
                try:
                    _write_json(record_path, record)
                except OSError as exc:          # a read-only root: computed again next time
                    _log().debug("cannot cache the activation of %r in %s: %s", self.name, record_path, exc)
        self._activation_cache = activation
        return activation

    def _capture_activation(self):
        import json
        if self.tool == "venv":
            return {"set": {"VIRTUAL_ENV": self.path}, "unset": [],
                    "path_prepend": [os.path.dirname(self.python)]}
        base = self._environ()
        if self.tool == "pixi":
            out = _run_capture([self.manager.install_tool(), "shell-hook", "--manifest-path", self.manifest, "-e",
                                self.pixi_env, "--json", "--frozen"], env=self.manager._tool_environ(),
                               what="pixi shell-hook --json")
            data = json.loads(out)
            if not data.get("activation_scripts"):
                after = dict(base)
                after.update(data.get("environment_variables") or {})
                return _activation_diff(base, after)
        # Run the activation once and capture the environment it leaves.
        marker = "__wetlite_environment__ "
        code = "import json, os, sys; sys.stdout.write('\\n%s' + json.dumps(dict(os.environ)) + '\\n')" % marker
        lines = self.run([[self.python, "-c", code]]).stdout.splitlines()
        found = [line[len(marker):] for line in lines if line.startswith(marker)]
        if not found:
            raise ExecutorError("could not read the activated environment of %r" % self.name)
        return _activation_diff(base, json.loads(found[-1]))

    def __enter__(self):
        self.launch()
        return self

    def __exit__(self, *exc):
        self.exit()

    # The seed API's camelCase names.
    executeCommands = execute_commands
    importModule = import_module
    runScript = run_script


def _check_timeout(timeout, what="timeout", none_ok=True):
    """``timeout`` as seconds, if it is a finite number >= 0 (or None, meaning
    no limit, where allowed); anything else is a SpecError."""
    if timeout is None and none_ok:
        return None
    try:
        seconds = float(timeout) if not isinstance(timeout, (bool, str, bytes)) else -1.0
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds <= _TIMEOUT_MAX:                # also false for NaN
        raise SpecError("%s must be a number of seconds from 0 to %d%s, not %r"
                        % (what, _TIMEOUT_MAX, " (or None for no limit)" if none_ok else "", timeout))
    return seconds


def _thread_lock():
    import _thread
    return _thread.allocate_lock()


def _check_call_arguments(function, args, kwargs):
    if not isinstance(function, str) or not function:
        raise SpecError("function must be a name such as 'imread' or 'Model.predict', not %r" % (function,))
    if not isinstance(args, (tuple, list)):
        raise SpecError("args must be a tuple or a list of the positional arguments, not %s %r (for one "
                        "argument write (value,))" % (type(args).__name__, args))
    if kwargs is not None and not isinstance(kwargs, dict):
        raise SpecError("kwargs must be a dict of keyword arguments, not %s %r" % (type(kwargs).__name__, kwargs))


_TARGETS = {}        # module name -> itself: names need no work on the next call


def _module_target(module):
    """A module name as given, or a .py path made absolute in the host's cwd."""
    given = module
    if type(module) is not str:
        if type(module) is RemoteObject:
            return module
        try:
            module = os.fspath(module)
        except TypeError:
            module = None
    if not isinstance(module, str) or not module:
        raise SpecError("module must be a dotted name or a path to a .py file, not %r" % (given,))
    if module.endswith(".py"):
        return os.path.abspath(module)      # relative to the cwd of the moment: not cached
    if os.sep in module or (os.altsep and os.altsep in module):
        raise SpecError("module %r is a path but not a .py file; give a Python file (name.py) or a dotted "
                        "module name" % (module,))
    if len(_TARGETS) < 1000:
        _TARGETS[module] = module
    return module


def _script_target(path, args, run_name):
    """run_script's path (made absolute; the file must exist, as the worker
    sees the host's files) and arguments, checked before any round trip."""
    given = path
    try:
        path = os.fspath(path)
    except TypeError:
        path = None
    if not isinstance(path, str) or not path:
        raise SpecError("script must be a path to a Python file, not %r" % (given,))
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise SpecError("script %r is not a file%s; give the path of a Python script"
                        % (path, "" if os.path.exists(path) else " (it does not exist)"))
    if not isinstance(args, (list, tuple)):
        raise SpecError("script arguments must be a list such as ['--flag', 'value'], not %s %r"
                        % (type(args).__name__, args))
    if not isinstance(run_name, str) or not run_name:
        raise SpecError("run_name must be a module name such as '__main__', not %r" % (run_name,))
    return path


def _installer(dist):
    """Who installed a distribution, from its INSTALLER file ("uv-pixi" is pixi)."""
    text = (dist.read_text("INSTALLER") or "").strip() or "pypi"
    return {"uv-pixi": "pixi"}.get(text, text)


def _prefix_packages(prefix):
    """What a prefix holds: its conda-meta records, then the dist-info
    directories of its site-packages that no conda record owns."""
    import glob
    import importlib.metadata
    rows, owned = [], set()
    for path in sorted(glob.glob(os.path.join(prefix, "conda-meta", "*.json"))):
        record = _read_json(path) or {}
        if not record.get("name"):
            continue
        channel = str(record.get("channel") or "").rstrip("/")
        if record.get("subdir") and channel.endswith("/" + record["subdir"]):
            channel = channel[:-len(record["subdir"]) - 1]
        rows.append({"name": record["name"], "version": record.get("version"), "kind": "conda",
                     "source": channel or None})
        for name in record.get("files") or ():
            parts = name.replace("\\", "/").split("/")
            for i, part in enumerate(parts):
                if part.endswith((".dist-info", ".egg-info")):
                    owned.add("/".join(parts[:i + 1]))
    layouts = ("Lib/site-packages",) if _WINDOWS else ("lib/python*/site-packages",)
    for site in sorted(set(glob.glob(os.path.join(prefix, *layouts[0].split("/"))))):
        for entry in sorted(os.listdir(site)):
            full = os.path.join(site, entry)
            if not entry.endswith((".dist-info", ".egg-info")) or \
                    os.path.relpath(full, prefix).replace(os.sep, "/") in owned:
                continue
            dist = importlib.metadata.Distribution.at(full)
            if dist.metadata.get("Name"):
                rows.append({"name": _canonical_name(dist.metadata["Name"]), "version": dist.version,
                             "kind": "pypi", "source": _installer(dist)})
    return rows


class _MainEnvironment(Environment):
    """The host interpreter itself: commands run without activation, and
    calls run in this process (kwargs honoured, same error semantics)."""

    def __init__(self, manager):
        Environment.__init__(self, manager, "main", sys.prefix, "main", python=sys.executable)
        self._threads = None                # an _InProcess once a call is submitted
        self._size = 1

    def launch(self, timeout=60, output=None, workers=None):
        """``workers=N`` runs submitted calls on N threads of this process: no
        isolation, and no parallelism for pure-Python code (one GIL)."""
        self.manager._check_open(self.name)
        if workers is not None:
            size = _check_workers(workers)
            with self._launching:
                self._size = size
                threads = self._threads
                if threads is not None and threads.size != size:
                    self._threads = None
                    threads.close()
        return self

    @property
    def workers(self):
        return [os.getpid()]

    def _in_process(self):
        threads = self._threads
        if threads is None:
            with self._launching:
                if self._threads is None:
                    self._threads = _InProcess(self, self._size)    # one thread: in order, like a worker
                threads = self._threads
        return threads

    def _map_width(self):
        return self._size

    def execute(self, module, function, args=(), kwargs=None, timeout=None, *, progress=None, ref=False):
        if self.manager._closed:
            self.manager._check_open(self.name)
        target = _module_target(module)
        if timeout is not None:
            task = self.submit(module, function, args, kwargs, timeout, progress=progress, ref=ref)
            try:
                return task.result()
            finally:
                _callbacks_drained()
        _check_call_arguments(function, args, kwargs)
        if _HANDLES_MADE:
            args, kwargs = _local_arguments(self, args, kwargs)
        if not _IMPORTABLE:
            _make_importable()
        if progress is None and not ref:
            return _local_target(self, target, function)(*args, **(kwargs or {}))
        _check_callback(progress, "progress")
        task = _new_task(self, (_target_name(target), function), None, progress)
        task._bind(next(_call_ids()), None)
        try:
            result = _run_in_scope(_CallScope(task.id, _progress_sink(task)), _local_target(self, target, function),
                                   args, kwargs)
        finally:
            _callbacks_drained()
        return self._local_ref(result, task.id) if ref else result

    def submit(self, module, function, args=(), kwargs=None, timeout=None, *, progress=None, output=None,
               ref=False, cancel_grace=None):
        self.manager._check_open(self.name)
        target, task = self._new_call(module, function, args, kwargs, progress, output, cancel_grace)
        timeout = _check_timeout(timeout)
        return self._submit_task(task, target, function, args, kwargs, timeout, wrap=self._local_ref if ref else None)

    def _submit_task(self, task, target, function, args, kwargs, timeout, wrap=None):
        if _HANDLES_MADE:
            args, kwargs = _local_arguments(self, args, kwargs)
            if type(target) is RemoteObject:
                target._wl_check(self)          # now, not in the task
        return self._in_process().submit(task, lambda *a, **k: _local_target(self, target, function)(*a, **k), args,
                                         kwargs, timeout, wrap)

    def _local_ref(self, result, call_id):
        return RemoteObject._wl_make(self, None, call_id, _describe(result, True), result)

    def _get(self, target, path):
        value = _walk(_local_target(self, target, None) if type(target) is RemoteObject else _resolve(target, None),
                      path, "the object")
        return _ProxyInfo(None) if callable(value) else value

    def _set(self, target, path, value):
        owner, _, name = path.rpartition(".")
        setattr(_local_target(self, target, owner or None), name, value)

    def _describe(self, target, path):
        return _describe(_local_target(self, target, path), False)

    def import_module(self, module):
        """The proxy a worker's environment gives (``mod.f(x)``, ``mod.f.ref(x)``,
        ``mod.f.submit(x)``), over the module imported in this process; its
        attributes that are not callable are the objects themselves."""
        self.manager._check_open(self.name)
        module = _module_target(module)
        info = _describe(_resolve(module, None), True)
        methods = frozenset(info["methods"])
        info["data"] = [n for n in info["names"] if n not in methods]
        return _RemoteModule(self, module, info)

    def run_script(self, path, args=(), run_name="__main__", timeout=None):
        self.manager._check_open(self.name)
        return _run_script(_script_target(path, args, run_name), *args, run_name=run_name)

    def exit(self):
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.close()

    importModule = import_module
    runScript = run_script


class EnvironmentManager(object):
    """Create, find and remove environments under one root.

    :param root: where tools and environments live (default ``$WETLITE_ROOT``
        or the user data dir).
    :param tool: "pixi", "micromamba" or "venv" (default ``$WETLITE_TOOL``,
        else "pixi").
    :param tool_path: an existing pixi/micromamba binary to use; wetlite then
        never downloads one (default ``$WETLITE_PIXI``/``$WETLITE_MICROMAMBA``).
    :param tool_version: release to download (default: the pinned one,
        verified against the embedded SHA-256).
    :param download_url: mirror base URL; assets come from
        ``{download_url}/{version}/{asset}`` (default ``$WETLITE_DOWNLOAD_URL``
        or the tool's GitHub releases).
    :param proxies: ``{"http": url, "https": url}``; default: the usual
        ``*_proxy`` environment variables.
    :param channels: default conda channels of every environment; a spec's
        own channels come first.
    :param verify_downloads: refuse a tool binary with no known checksum
        (default).  False installs it anyway, with a warning.
    :param progress: default ``progress(phase, line)`` callback for long
        operations: ``line`` is None when a phase (download, solve, install,
        pip) starts, then each line the tool prints.

    Nothing happens on construction: the tool is installed on first need or
    by :meth:`install_tool`.
    """

    def __init__(self, root=None, tool=None, tool_path=None, tool_version=None, download_url=None,
                 proxies=None, channels=DEFAULT_CHANNELS, verify_downloads=True, progress=None):
        tool = tool or os.environ.get(_ENV_TOOL) or "pixi"
        if tool not in _TOOLS:
            raise SpecError("unknown tool %r: choose 'pixi', 'micromamba' or 'venv'" % (tool,))
        self.tool = tool
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise SpecError("root must be a directory path, not %s %r" % (type(root).__name__, root))
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root) if root is not None else _default_root()))
        if tool == "venv":
            if tool_path is not None or tool_version is not None:
                raise SpecError("tool_path and tool_version do not apply to the venv tool (it uses local "
                                "interpreters); drop them or choose tool='pixi' or 'micromamba'")
            self.tool_path = self.tool_version = None
        else:
            self.tool_path = tool_path if tool_path is not None else os.environ.get(_ENV_TOOL_PATHS[tool]) or None
            self.tool_version = _normalize_tool_version(tool, tool_version)
        self.download_url = download_url or os.environ.get(_ENV_DOWNLOAD_URL) or _RELEASE_URLS.get(tool)
        self.proxies = None
        self.set_proxies(proxies)
        if isinstance(channels, str):
            raise SpecError("channels must be a list of channel names, not the string %r" % (channels,))
        self.channels = _normalize_dependencies({"channels": list(channels or ())}, "pixi")["channels"]
        self.verify_downloads = bool(verify_downloads)
        self.progress = progress
        self.environments = {}
        self.main_environment = _MainEnvironment(self)
        self._tool_exe = None
        self._root_checked = False
        self._closed = False                    # exit() closes; `with mgr:` opens again

    def __repr__(self):
        return "<EnvironmentManager %s at %r>" % (self.tool, self.root)

    def _checked_root(self, create=True):
        """The root, created (or not) and checked (see _secure_root) on first use."""
        if not self._root_checked:
            self._root_checked = _secure_root(self.root, create)
        return self.root

    # -- the tool -----------------------------------------------------------

    def _tool_exe_path(self, windows=_WINDOWS):
        """Where the tool binary is (or will be) without installing it; for
        a PowerShell script, where it is in the Windows layout."""
        if self._tool_exe and windows == _WINDOWS:
            return self._tool_exe
        if self.tool_path:
            return os.path.abspath(os.path.expanduser(self.tool_path))
        return _join_path(windows, self.root, "bin", _exe_name(self.tool, windows))

    def install_tool(self, progress=None):
        """Install the tool if needed and return its path (None for venv).

        Idempotent and cheap once installed; safe to call from several
        processes at once.
        """
        if self.tool == "venv":
            return None
        if self._tool_exe:
            return self._tool_exe
        self._checked_root()
        if self.tool_path:
            path = self._tool_exe_path()
            if not os.path.isfile(path):
                raise ToolError("%s binary %r does not exist (from tool_path or %s); fix the path or unset it "
                                "to let wetlite download %s" % (self.tool, path, _ENV_TOOL_PATHS[self.tool], self.tool))
            if self.tool == "micromamba" and os.path.basename(path).lower() not in ("micromamba", "micromamba.exe"):
                raise ToolError("micromamba binary %r must be named micromamba%s: its shell hook refuses any "
                                "other name; rename or link it" % (path, ".exe" if _WINDOWS else ""))
            version = _tool_version(path)
            _log().debug("using %s %s at %s", self.tool, version, path)
        else:
            self._report(progress, "download", None)
            path = _install_tool(self.tool, self.root, self.tool_version, self.download_url, _urllib_proxies(self.proxies),
                                 self.verify_downloads)
        if self.tool == "micromamba":
            _ensure_mambarc(self.root)
        self._tool_exe = path
        return path

    def _report(self, progress, phase, line):
        callback = progress or self.progress
        if callback is not None:
            callback(phase, line)

    def _run_tool(self, argv, name, phase, progress, env=None, cwd=None, what=None):
        """Run one build step with live output; raise CommandError if it fails."""
        self._report(progress, phase, None)
        state = {"phase": phase}

        def on_line(line):
            # micromamba solves, then prints "Transaction starting" and links.
            if state["phase"] == "solve" and line.startswith(("Transaction starting", "Linking ")):
                state["phase"] = "install"
                self._report(progress, "install", None)
            self._report(progress, state["phase"], line)

        label = "%s %s" % (name, os.path.basename(argv[0]))
        _run_streaming(argv, label, env=env or self._tool_environ(), cwd=cwd, on_line=on_line, env_name=name,
                       log_path=os.path.join(self._checked_root(), "state", "logs", name + ".log"),
                       what=what or "%s %s" % (os.path.basename(argv[0]), argv[1] if len(argv) > 1 else ""))

    def set_proxies(self, proxies):
        """Use ``proxies`` ({"http": url, "https": url, "no": "host,..."}) from now on:
        for tool downloads and for every tool and pip process (their ``*_proxy``
        variables, and micromamba's ``proxy_servers``).  None: the machine's own
        ``*_proxy`` variables apply."""
        if proxies is not None:
            if not isinstance(proxies, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and k.lower().replace("_proxy", "") in _PROXY_KEYS
                    for k, v in proxies.items()):
                raise SpecError("proxies must be a dict with keys %s and URL values, such as {'https': "
                                "'http://proxy:8080'}, not %r" % ("/".join(_PROXY_KEYS), _masked_proxies(proxies)))
            proxies = dict((k.lower().replace("_proxy", ""), v) for k, v in proxies.items())
            _log().info("%r uses proxies %s", self, _masked_proxies(proxies))
        self.proxies = proxies

    def _tool_environ(self):
        """The environment of a tool or pip process: the user's, minus what would steer the build.

        Network settings pass through (proxies, certificates, and mirrors in
        the user's pixi config), or come from ``proxies=``; RUST_LOG would
        flood pixi's output.
        """
        extra = {"MAMBA_ROOT_PREFIX": self.root} if self.tool == "micromamba" else None
        env = _child_environ(extra, scrub_tools=True)
        env.pop("RUST_LOG", None)
        if self.proxies is not None:
            for key in _PROXY_KEYS:
                for name in (key + "_proxy", key.upper() + "_PROXY"):
                    env.pop(name, None)
                    if key in self.proxies:
                        env[name] = self.proxies[key]
        return env

    def _post_install_environ(self):
        """What post_install commands add to their environment: they are an
        install step, so they get the tools' proxies (Wetlands put them in its
        install scripts); a key proxies= leaves out is set empty, read as unset."""
        if self.proxies is None:
            return None                 # the machine's own *_proxy variables pass through
        return {name: self.proxies.get(key, "") for key in _PROXY_KEYS
                for name in (key + "_proxy", key.upper() + "_PROXY")}

    # -- paths and records --------------------------------------------------

    def _env_dir(self, name, tool=None):
        return os.path.join(self.root, "workspaces" if (tool or self.tool) == "pixi" else "envs", name)

    def _record_path(self, name):
        return os.path.join(self._checked_root(create=False), "state", "envs", name + ".json")

    def _lock(self, name):
        self._checked_root()
        return _FileLock(os.path.join(self.root, "state", "locks", "env-" + name + ".lock"),
                         "the lock of environment %r" % name)

    def _load_record(self, name):
        """``(record, None)``; ``(None, why)`` for a broken record; ``(None, None)`` if there is none."""
        path = self._record_path(name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, "%s cannot be read (%s)" % (path, exc.strerror or exc)
        import json
        try:
            record = json.loads(data.decode("utf-8"))
        except ValueError:
            return None, "%s is not valid JSON (truncated?)" % path
        problem = _record_problem(name, record)
        return (None, "%s %s" % (path, problem)) if problem else (record, None)

    def _unusable(self, name, status, problem):
        """The message for an environment that exists on record but cannot be used."""
        if status == "broken":
            return ("environment %r cannot be used: its record %s; remove it with mgr.remove(%r) (this deletes %s), "
                    "then create it again" % (name, problem, name, self._broken_dir(name)))
        if status == "half-built":
            return ("environment %r is half-built: %s (another process may be building it now, or a build was "
                    "interrupted); mgr.create(%r, ...) builds it again, mgr.remove(%r) deletes it"
                    % (name, problem, name, name))
        return ("environment %r is missing: %s; mgr.create(%r, ...) builds it again, mgr.remove(%r) cleans it up"
                % (name, problem, name, name))

    def _no_such(self, name):
        known = ", ".join(e["name"] for e in self.list() if e["status"] == "ready") or "none"
        return SpecError("no environment named %r under %s (known: %s); create it with mgr.create(%r, ...)"
                         % (name, self.root, known, name))

    def _check_open(self, name, doing="start a worker or run a call"):
        if self._closed:
            raise ExecutorError("environment %r cannot %s: its manager was closed by mgr.exit(); use a new "
                                "EnvironmentManager (or `with mgr:` again)" % (name, doing))

    def _from_record(self, name, record):
        return Environment(self, name, record["prefix"], record["tool"], python=record.get("python"),
                           manifest=record.get("manifest"), managed=True,
                           pixi_env=record.get("pixi_env") or "default")

    def _register(self, env):
        self.environments[env.name] = env
        return env

    def _owns(self, directory):
        """Is ``directory`` inside root (so that wetlite may delete it)?"""
        return isinstance(directory, str) and os.path.abspath(directory).startswith(os.path.join(self.root, ""))

    def _broken_dir(self, name):
        """The directory of an environment whose record cannot be read: this manager's tool's, or the
        other layout's if only that one exists (the record was written by a manager with another tool)."""
        mine = self._env_dir(name)
        other = self._env_dir(name, "venv" if self.tool == "pixi" else "pixi")
        return other if not os.path.lexists(mine) and os.path.lexists(other) else mine

    def _discard(self, name, record):
        """Delete a managed environment's files and record (only inside root)."""
        directory = record.get("dir") or self._env_dir(name, record.get("tool"))
        if self._owns(directory):
            _rmtree(directory)
        _remove_quietly(self._record_path(name))

    # -- recipes ------------------------------------------------------------

    def _recipe(self, dependencies, config, optional=None, post_install=None):
        import hashlib
        import json
        spec = _normalize_dependencies(dependencies, self.tool)
        if optional is not None and config is None:
            raise SpecError("optional_dependencies=%r selects groups of a config file; give config= too"
                            % (optional,))
        cfg = _read_config(config, self.tool, optional, manifest=True) if config is not None else None
        subdir = _conda_subdir(*_platform_id())
        _select_entries(spec["conda"], subdir, "conda")
        _select_entries(spec["pip"], subdir, "pip")
        if cfg is not None and self.tool == "pixi" and not cfg["manifest"]:
            _normalize_dependencies({"pip": cfg["pip"]}, "pixi", "config %s" % cfg["path"])
        python = spec["python"] or (cfg or {}).get("python")
        post = {key: _command_list(post_install, key) for key in ("linux", "mac", "windows")} \
            if post_install is not None else None
        identity = {
            "tool": self.tool,
            "spec": spec,
            "channels": self.channels,
            "config": cfg and {"kind": cfg["kind"], "name": os.path.basename(cfg["path"]), "sha256": cfg["sha256"],
                               "optional": cfg["optional"]},
            "default_python": None if python else self._default_python(),
        }
        if post:
            identity["post_install"] = post
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()
        return {"spec": spec, "config": cfg, "python": python, "hash": digest, "identity": identity,
                "subdir": subdir, "post_install": post_install}

    def _host_satisfies(self, recipe):
        """Why the host interpreter already has everything the recipe asks for, or None if it does not."""
        cfg = recipe["config"] or {}
        if cfg.get("manifest") or recipe["post_install"]:
            return None
        host = "%d.%d.%d" % sys.version_info[:3]
        if recipe["python"] and not _python_spec_matches(recipe["python"], host):
            return None
        spec, subdir = recipe["spec"], recipe["subdir"]
        conda = sum(_select_entries(spec["conda"], subdir, "conda"), []) + list(cfg.get("conda", []))
        pip = sum(_select_entries(spec["pip"], subdir, "pip"), []) + list(cfg.get("pip", []))
        if conda:
            records = _host_conda_records(self.main_environment.path)
            if not records or not all(_conda_spec_satisfied(s, records) for s in conda):
                return None
        requirements = [p for p in pip if not p.startswith("-")]
        if any(p.startswith(("-e", "--editable")) for p in pip) or any(_pip_location(r) for r in requirements):
            return None                 # (a URL or a path: what it installs cannot be checked)
        if requirements:
            environment = _marker_environment()
            if not all(_requirement_satisfied(r, environment) for r in requirements):
                return None
        reasons = ["its Python %s matches %r" % (host, recipe["python"])] if recipe["python"] else []
        reasons += ["it has %s" % ", ".join(conda + requirements)] if conda or requirements else []
        return " and ".join(reasons) or "the recipe asks for no dependencies"

    # -- creating -----------------------------------------------------------

    def create(self, name, dependencies=None, post_install=None, *, config=None, optional_dependencies=None,
               force_external=False, replace=False, progress=None):
        """Create (or reuse) the environment ``name`` and return it.

        :param dependencies: ``{"python": "3.11", "conda": [...], "pip": [...],
            "channels": [...]}``; entries are strings or ``{"name",
            "platforms", "optional", "dependencies"}`` dicts.
        :param post_install: commands (as for ``run``) to run in the new
            environment once its packages are in; part of the recipe.
        :param config: a requirements.txt, environment.yml, pixi.toml or
            pyproject.toml to build from (with ``dependencies`` on top).
        :param optional_dependencies: with a pyproject.toml or pixi.toml, the
            optional-dependency groups, pixi features or pixi environment
            to include.
        :param force_external: build an environment even if the host
            interpreter already satisfies the dependencies (otherwise the
            main environment is returned).
        :param replace: rebuild an existing environment whose recipe
            differs (otherwise that is a SpecError).

        An existing environment with the same recipe is reused without
        running any tool.  Several processes may create the same environment
        at once: one builds it, the others wait and reuse it.
        """
        _check_env_name(name)
        self._check_open(name, "be created")     # it could run no call: do not build it
        recipe = self._recipe(dependencies, config, optional_dependencies, post_install)
        why = None if force_external else self._host_satisfies(recipe)
        if why:
            _log().info("environment %r: the host interpreter %s is used in-process, because %s; pass "
                        "force_external=True for an isolated environment", name, sys.executable, why,
                        extra={"env_name": name})
            self.environments[name] = self.main_environment
            return self.main_environment
        try:
            return self._create(name, recipe, replace, progress)
        except OSError as exc:
            raise _storage_error(exc, "creating environment %r" % name)

    def _create(self, name, recipe, replace, progress):
        existing = self.environments.get(name)
        with self._lock(name):
            record, problem = self._load_record(name)
            if record is not None:
                status, detail = _record_status(record)
                if status == "ready" and record.get("recipe_hash") == recipe["hash"]:
                    if existing is not None and existing.managed and existing.path == record["prefix"]:
                        return existing
                    return self._register(self._from_record(name, record))
                if status == "ready" and not replace:
                    changes = _recipe_diff(record.get("recipe"), _mask_secrets(recipe["identity"]))
                    raise SpecError(
                        "environment %r already exists with a different recipe:\n%s\npass replace=True to rebuild "
                        "it, or choose another name"
                        % (name, _indent(changes or ["(they differ in credentials, which records keep masked)"])))
                if status != "ready":
                    _log().warning("environment %r is %s (%s); rebuilding it", name, status, detail)
            elif problem is not None:
                if not replace:
                    raise SpecError(self._unusable(name, "broken", problem) + ", or pass replace=True to rebuild it")
                record = {"dir": self._broken_dir(name)}
            elif os.path.lexists(self._env_dir(name)):
                raise SpecError(
                    "%s exists but was not created by wetlite (there is no record of it); remove it, choose "
                    "another name, or wrap it with mgr.load(%r, path)" % (self._env_dir(name), name))
            if record is not None:
                if existing is not None:
                    existing.exit()
                self._discard(name, record)
            return self._register(self._build(name, recipe, progress))

    def _build(self, name, recipe, progress):
        import time
        directory = self._env_dir(name)
        cfg = recipe["config"] or {}
        pixi_env = cfg.get("pixi_env") or "default"
        if isinstance(pixi_env, list):              # features wetlite adds an environment for
            pixi_env = _PIXI_SELECTED_ENV
        prefix = os.path.join(directory, ".pixi", "envs", pixi_env) if self.tool == "pixi" else directory
        manifest = None
        if self.tool == "pixi":
            manifest = os.path.join(directory, "pyproject.toml" if cfg.get("manifest") and cfg["kind"] == "pyproject"
                                    else "pixi.toml")
        record = {
            "name": name, "tool": self.tool, "dir": directory, "prefix": prefix, "manifest": manifest,
            "pixi_env": pixi_env,
            "python": _env_python(prefix, "venv" if self.tool == "venv" else "conda"),
            "recipe_hash": recipe["hash"], "recipe": _mask_secrets(recipe["identity"]), "state": "creating",
            "wetlite_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(self._record_path(name), record)
        env = self._from_record(name, record)
        env._building = True
        try:
            _makedirs_private(os.path.dirname(directory))
            getattr(self, "_build_" + self.tool)(env, recipe, progress)
            if recipe["post_install"] is not None:
                self._report(progress, "install", None)
                env.run(recipe["post_install"], output=lambda line: self._report(progress, "install", line),
                        env=self._post_install_environ())
            env._building = False
            version = _interpreter_version(env.python)
            if version is None:
                raise ToolError("environment %r was built but its interpreter %s does not run; see %s"
                                % (name, env.python, os.path.join(self.root, "state", "logs", name + ".log")))
            record.update(state="ready", python_version=version)
            _write_json(self._record_path(name), record)
        except BaseException:
            _log().error("creating environment %r failed; removing what was built", name, extra={"env_name": name})
            self._discard(name, record)
            raise
        _log().info("created environment %r (%s, python %s) at %s", name, self.tool, version, prefix,
                    extra={"env_name": name})
        return env

    def _default_python(self):
        return "%d.%d" % sys.version_info[:2]

    def _channels_for(self, spec, cfg, conda_specs=(), defaults=True):
        """Channels, highest priority first: the spec's, the config file's, those
        that ``chan::pkg`` specs name, then the manager's -- unless one of the
        first says "nodefaults" (as an environment.yml may)."""
        inferred = [c for c in (_channel_of(s) for s in conda_specs) if c]
        own = _merge_channels(spec["channels"], (cfg or {}).get("channels", []), inferred)
        if "nodefaults" in own or not defaults:
            return [c for c in own if c != "nodefaults"]
        return _merge_channels(own, self.channels)

    def _build_venv(self, env, recipe, progress):
        interpreter, version = _choose_interpreter(recipe["python"] or self._default_python())
        _log().info("building venv %r with Python %s (%s)", env.name, version, interpreter,
                    extra={"env_name": env.name})
        self._run_tool([interpreter, "-m", "venv", env.path], env.name, "install", progress,
                       env=_child_environ(), what="python -m venv")
        self._pip_step(env, recipe["spec"]["pip"], recipe["config"], recipe["subdir"], progress)

    def _build_micromamba(self, env, recipe, progress):
        python = recipe["python"] or self._default_python()
        self._micromamba_steps(env, recipe["spec"], recipe["config"], recipe["subdir"], python, progress,
                               create=True)

    def _micromamba_steps(self, env, spec, cfg, subdir, python, progress, create):
        """micromamba create (or install), its --no-deps packages, then pip.

        An environment.yml is read by wetlite and given as specs, channels and
        a pip step, not with -f: micromamba 2.x would take its "nodefaults" for
        a channel name (mamba-org/mamba#3841) and put the file's channels after
        the command line's.
        """
        exe = self.install_tool(progress)
        with_deps, no_deps = _select_entries(spec["conda"], subdir, "conda")
        with_deps = with_deps + list((cfg or {}).get("conda", []))
        proxies_rc = _mambarc_proxies(self.proxies) if self.proxies else None
        common = ["-y", "-p", env.path, "--rc-file", _ensure_mambarc(self.root)] + \
            (["--rc-file", proxies_rc] if proxies_rc else []) + ["--override-channels"]
        for channel in self._channels_for(spec, cfg, with_deps + no_deps):
            common += ["-c", channel]
        specs = ([_python_conda_spec(python)] if python else []) + with_deps
        try:
            if create or specs:
                verb = "create" if create else "install"
                self._run_tool([exe, verb] + common + specs, env.name, "solve", progress, what="micromamba " + verb)
            if no_deps:
                self._run_tool([exe, "install"] + common + ["--no-deps"] + no_deps, env.name, "solve", progress,
                               what="micromamba install --no-deps")
        finally:
            if proxies_rc:
                _remove_quietly(proxies_rc)
        self._pip_step(env, spec["pip"], cfg, subdir, progress)

    def _build_pixi(self, env, recipe, progress):
        exe = self.install_tool(progress)
        spec, cfg = recipe["spec"], recipe["config"]
        python = recipe["python"] or self._default_python()
        init = True
        if cfg is not None and cfg["manifest"]:
            # The user's manifest and lock file are copied, with the manifest's
            # relative paths made absolute: pixi resolves them against the
            # workspace root, which the copy moves.
            import shutil
            directory = os.path.dirname(env.manifest)
            os.mkdir(directory, 0o700)
            for path in cfg["files"]:
                target = os.path.join(directory, os.path.basename(path))
                if path == cfg["path"]:
                    with open(path, "r", encoding="utf-8") as f:
                        text = _absolute_manifest_paths(f.read(), cfg["kind"], os.path.dirname(path))
                    if isinstance(cfg["pixi_env"], list):
                        text = _add_pixi_environment(text, cfg["kind"], cfg["pixi_env"][1:], path)
                    _atomic_write(target, text)
                else:
                    shutil.copy2(path, target)
            _write_pixi_workspace_config(directory)
            self._run_tool([exe, "install", "--manifest-path", env.manifest, "-e", env.pixi_env], env.name,
                           "install", progress, what="pixi install")
            if not (spec["python"] or spec["conda"] or spec["pip"] or spec["channels"]):
                return
            cfg, python, init = None, spec["python"], False     # the manifest owns python and channels
        self._pixi_add(env, exe, spec, cfg, recipe["subdir"], python, progress, init=init)

    def _pixi_add(self, env, exe, spec, cfg, subdir, python, progress, init=False):
        with_deps, _ = _select_entries(spec["conda"], subdir, "conda")
        conda = list(with_deps) + list((cfg or {}).get("conda", []))
        pip_with, pip_without = _select_entries(spec["pip"], subdir, "pip")
        pip_with = pip_with + list((cfg or {}).get("pip", []))
        if pip_without:
            conda.append("pip")         # pixi environments have no pip unless asked for
        if init:
            argv = [exe, "init", "--format", "pixi"]
            for channel in self._channels_for(spec, cfg, conda):
                argv += ["-c", channel]
            self._run_tool(argv + [os.path.dirname(env.manifest)], env.name, "solve", progress, what="pixi init")
            _write_pixi_workspace_config(os.path.dirname(env.manifest))
        else:
            # `channel add` appends at the lowest priority unless --prepend, and
            # pixi refuses a chan::pkg whose channel the manifest does not list.
            # One channel per call, the last first: where one call puts several
            # prepended channels is not settled by pixi's documentation.
            listed = [c.rstrip("/") for c in _pixi_manifest_channels(env.manifest)]
            new = [c for c in self._channels_for(spec, cfg, conda, defaults=False) if c.rstrip("/") not in listed]
            for channel in reversed(new):
                self._run_tool([exe, "workspace", "channel", "add", "--manifest-path", env.manifest, "--prepend",
                                channel], env.name, "solve", progress, what="pixi workspace channel add")
        specs = _merge_conda_specs(([_python_conda_spec(python)] if python else []) + conda)
        if specs:
            self._run_tool([exe, "add", "--manifest-path", env.manifest] + specs, env.name, "solve", progress,
                           what="pixi add")
        marker_python = _python_marker_version(python) if python else None
        requirements = _strip_markers([p for p in pip_with if not p.startswith("-")], marker_python)
        if requirements:
            self._run_tool([exe, "add", "--manifest-path", env.manifest, "--pypi"] + requirements, env.name,
                           "pip", progress, what="pixi add --pypi")
        if pip_without:
            self._pip_step(env, [{"name": n, "platforms": None, "optional": False, "dependencies": False}
                                 for n in pip_without], None, subdir, progress)

    def _pip_step(self, env, entries, cfg, subdir, progress):
        """pip install the pip entries (and a config file's pip requirements) into env."""
        with_deps, no_deps = _select_entries(entries, subdir, "pip")
        options = [e for e in with_deps if e.startswith("-")]
        with_deps = [e for e in with_deps if not e.startswith("-")]
        base = [env.python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        runs = []
        if cfg is not None and cfg["kind"] == "requirements":
            runs.append((["-r", cfg["path"]], os.path.dirname(cfg["path"])))
        elif cfg is not None and cfg["pip"]:
            runs.append((_pip_args(cfg["pip"]), os.path.dirname(cfg["path"])))
        if with_deps:
            runs.append((_pip_args(options) + with_deps, None))
        if no_deps:
            runs.append((_pip_args(options) + ["--no-deps"] + no_deps, None))
        for args, cwd in runs:
            self._run_tool(base + args, env.name, "pip", progress,
                           env=_isolate_user_site(self._tool_environ(), env.tool), cwd=cwd, what="pip install")

    # -- installing into an existing environment ----------------------------

    def _install(self, env, dependencies, config, progress, optional=None, post_install=None):
        self._check_open(env.name, "be installed into")
        if env.tool == "main":
            raise SpecError("cannot install into the host interpreter (the main environment); create an "
                            "environment with mgr.create(name, deps, force_external=True) instead")
        tool = {"prefix": "venv"}.get(env.tool, env.tool)   # a bare prefix takes pip only
        spec = _normalize_dependencies(dependencies, tool)
        if optional is not None and config is None:
            raise SpecError("optional_dependencies=%r selects groups of a config file; give config= too"
                            % (optional,))
        cfg = _read_config(config, tool, optional) if config is not None else None
        if cfg is not None and tool == "pixi":
            _check_pixi_install_options(cfg, env)
        if post_install is not None:
            _command_list(post_install, _target_platform(_default_shell()))     # checked before anything runs
        subdir = _conda_subdir(*_platform_id())
        lock = self._lock(env.name) if env.managed else _NullContext()
        with lock:
            if env.tool == "micromamba":
                self._micromamba_steps(env, spec, cfg, subdir, spec["python"], progress, create=False)
            elif env.tool == "pixi":
                exe = self.install_tool(progress)
                if env.managed:
                    _write_pixi_workspace_config(os.path.dirname(env.manifest))
                self._pixi_add(env, exe, spec, cfg, subdir, spec["python"], progress)
            else:
                if spec["python"]:
                    raise SpecError("cannot change the python of %s environment %r; create a new one"
                                    % (env.tool, env.name))
                self._pip_step(env, spec["pip"], cfg, subdir, progress)
            if post_install is not None:
                env.run(post_install, output=lambda line: self._report(progress, "install", line),
                        env=self._post_install_environ())
            env._activation_cache = None        # new packages may bring activation scripts
            if env.managed:
                import time
                record = self._load_record(env.name)[0]
                if record is not None:
                    added = dict(_spec_summary(_mask_secrets(spec)), config=cfg and cfg["path"],
                                 at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                    for key, value in (("optional_dependencies", optional), ("post_install", post_install)):
                        if value is not None:
                            added[key] = _mask_secrets(value)
                    record.setdefault("installed", []).append(added)
                    record.pop("activation", None)
                    _write_json(self._record_path(env.name), record)

    # -- finding ------------------------------------------------------------

    def load(self, name, path=None):
        """Wrap an existing environment (conda prefix, pixi workspace or venv).

        ``path`` defaults to where this manager would put ``name``.  A name
        already in use for another environment is refused (remove it first);
        the same one gives back the same object.  wetlite never deletes a
        loaded environment's files: ``remove`` only forgets it.
        """
        _check_env_name(name)
        path = os.path.abspath(os.path.expanduser(os.fspath(path) if path is not None else self._env_dir(name)))
        manifest = None
        if os.path.isfile(path) and os.path.basename(path) in ("pixi.toml", "pyproject.toml"):
            manifest = path
        elif os.path.isfile(os.path.join(path, "pixi.toml")):
            manifest = os.path.join(path, "pixi.toml")
        if manifest is not None:
            prefix = os.path.join(os.path.dirname(manifest), ".pixi", "envs", "default")
            tool = "pixi" if self.tool == "pixi" else "prefix"
            if tool == "prefix" and not os.path.isdir(prefix):
                raise SpecError("pixi workspace %r has no installed environment and this manager uses %s; "
                                "load it with EnvironmentManager(tool='pixi')" % (path, self.tool))
        elif os.path.isdir(os.path.join(path, "conda-meta")):
            prefix, tool = path, ("micromamba" if self.tool == "micromamba" else "prefix")
        elif os.path.isfile(os.path.join(path, "pyvenv.cfg")):
            prefix, tool = path, "venv"
        elif not os.path.exists(path):
            raise SpecError("cannot load %r: %s does not exist" % (name, path))
        else:
            raise SpecError("cannot load %r: %s is not an environment (no conda-meta/, pyvenv.cfg or "
                            "pixi.toml)" % (name, path))
        existing = self.environments.get(name)
        if existing is not None:
            if existing.path == prefix:
                return existing
            raise SpecError("environment %r is already loaded from %s; call mgr.remove(%r) first, or load %s "
                            "under another name" % (name, existing.path, name, path))
        if tool == "pixi" and not os.path.isfile(os.path.join(os.path.dirname(manifest), "pixi.lock")):
            # Activation runs `pixi shell-hook --frozen`, which needs the lock
            # file; solve it (and install) now, as `pixi run` would.
            _log().info("pixi workspace %s has no pixi.lock: running pixi install there", path,
                        extra={"env_name": name})
            self._run_tool([self.install_tool(), "install", "--manifest-path", manifest], name, "install",
                           None, what="pixi install")
        return self._register(Environment(self, name, prefix, tool, manifest=manifest, managed=False))

    def get(self, name):
        """The environment ``name``: already in use, or recorded under root."""
        env = self.environments.get(name)
        if env is not None:
            return env
        _check_env_name(name)
        record, problem = self._load_record(name)
        if record is None and problem is None:
            raise self._no_such(name)
        status, problem = ("broken", problem) if record is None else _record_status(record)
        if status != "ready":
            raise SpecError(self._unusable(name, status, problem))
        return self._register(self._from_record(name, record))

    def list(self, sizes=False):
        """Every environment recorded under root, as dicts, sorted by name.

        Keys: ``name``, ``status`` ("ready", "missing": its files are gone,
        "half-built": a build did not finish, or is running now, "broken": its
        record is damaged), ``problem`` (why it is not ready, or None),
        ``tool``, ``path``, ``python_version``, ``created`` and ``installed``
        (what ``install()`` added since creation).  With ``sizes=True``, also
        ``size``: bytes on disk.  Every one of them can be removed with
        :meth:`remove`.
        """
        import glob
        found = []
        for path in sorted(glob.glob(os.path.join(glob.escape(self._checked_root(create=False)), "state", "envs",
                                                  "*.json"))):
            name = os.path.basename(path)[:-len(".json")]
            record, problem = self._load_record(name)
            if record is None and problem is None:
                continue                        # removed meanwhile
            status, detail = ("broken", problem) if record is None else _record_status(record)
            record = record or {}
            entry = {
                "name": name, "status": status, "problem": None if status == "ready" else
                self._unusable(name, status, detail),
                "tool": record.get("tool"), "path": record.get("prefix"),
                "python_version": record.get("python_version"), "created": record.get("created"),
                "installed": [_installed_summary(item) for item in record.get("installed", [])],
            }
            if sizes:
                directory = record.get("dir") or self._env_dir(name)
                entry["size"] = _tree_size(directory) if self._owns(directory) else 0
            found.append(entry)
        return found

    def info(self, name):
        """What :meth:`list` says of ``name``, plus its ``recipe`` and ``manifest`` (SpecError if unknown).

        A name this manager loaded, or gave the host's interpreter (tool "main"),
        has no record: it is described as :meth:`get` finds it, with no recipe.
        """
        _check_env_name(name)
        env = self.environments.get(name)
        if env is not None and not env.managed:
            try:
                env._check_present()
                status, problem = "ready", None
            except SpecError as exc:
                status, problem = "missing", str(exc)
            return {"name": name, "status": status, "problem": problem, "tool": env.tool, "path": env.path,
                    "python_version": "%d.%d.%d" % sys.version_info[:3] if env.tool == "main" else None,
                    "created": None, "installed": [], "recipe": None, "recipe_hash": None,
                    "manifest": env.manifest, "python": env.python}
        found = [e for e in self.list() if e["name"] == name]
        if not found:
            raise self._no_such(name)
        record = self._load_record(name)[0] or {}
        entry = found[0]
        entry.update(recipe=record.get("recipe"), recipe_hash=record.get("recipe_hash"),
                     manifest=record.get("manifest"), python=record.get("python"))
        return entry

    def remove(self, name):
        """Stop and delete the environment ``name``, whatever its status.

        A loaded environment, or a name that ``create`` gave the host
        interpreter, is only forgotten: wetlite deletes nothing it did not build.
        """
        _check_env_name(name)
        env = self.environments.pop(name, None)
        if env is not None:
            env.exit()
            if not env.managed:
                return
        with self._lock(name) as lock:
            record, problem = self._load_record(name)
            if record is None and problem is None:
                if env is None:
                    raise self._no_such(name)
                return
            self._discard(name, record or {"dir": self._broken_dir(name)})
            self._forget_files(name, lock)
        _log().info("removed environment %r", name, extra={"env_name": name})

    def _forget_files(self, name, lock):
        """Delete the build log and (held) lock file of an environment that is gone."""
        _remove_quietly(os.path.join(self.root, "state", "logs", name + ".log"))
        lock.delete()

    def gc(self, dry_run=False):
        """Remove what nothing under root needs any more, and return it.

        That is: half-built environments that no process is building, missing
        ones (their record and what is left of their files), staging dirs of
        tool installs that no process is running (``bin/.install-*``), the runtime copies of other
        wetlite versions (``state/runtime/<hash>``) that no worker uses, and the
        lock files and build logs of environments no longer there.  Ready
        and broken environments are left alone: :meth:`remove` deletes those.
        Returns ``[{"path", "what", "size"}]``; with ``dry_run`` nothing is
        removed.
        """
        import glob
        found = []
        if not self._checked_root(create=False):
            return found

        def drop(path, what, remove=_rmtree):
            found.append({"path": path, "what": what, "size": _tree_size(path) if os.path.isdir(path) else 0})
            if not dry_run:
                remove(path)

        for entry in self.list():
            name = entry["name"]
            lock = self._lock(name)
            if entry["status"] not in ("half-built", "missing") or not lock.acquire_nowait():
                continue                        # in use, or being built right now
            try:
                record = self._load_record(name)[0]
                status = _record_status(record)[0] if record is not None else None
                if status in ("half-built", "missing"):
                    directory = record["dir"] if self._owns(record["dir"]) else None
                    drop(directory if directory and os.path.lexists(directory) else self._record_path(name),
                         "%s environment %r" % (status, name),
                         lambda _: (self._discard(name, record), self._forget_files(name, lock)))
            finally:
                lock.__exit__(None, None, None)
        names = set(entry["name"] for entry in self.list())
        for path in sorted(glob.glob(os.path.join(glob.escape(self.root), "state", "locks", "env-*.lock"))):
            name = os.path.basename(path)[len("env-"):-len(".lock")]
            lock = self._lock(name) if _valid_env_name(name) and name not in names else None
            if lock is None or not lock.acquire_nowait():
                continue                        # an environment's, or in use
            try:
                if self._load_record(name) == (None, None):     # (still) no environment of that name
                    drop(path, "lock file of removed environment %r" % name, lambda _: self._forget_files(name, lock))
            finally:
                lock.__exit__(None, None, None)
        for tool in ("pixi", "micromamba"):
            lock = _FileLock(os.path.join(self.root, "state", "locks", "install-" + tool + ".lock"))
            stages = _install_stages(os.path.join(self.root, "bin"), tool)
            if stages and lock.acquire_nowait():        # no install of that tool is running
                try:
                    for stage in stages:
                        drop(stage, "staging dir of an interrupted %s install" % tool)
                finally:
                    lock.__exit__(None, None, None)
        current = _self_source()[1]
        for directory in sorted(glob.glob(os.path.join(glob.escape(self.root), "state", "runtime", "*"))):
            if os.path.basename(directory) == current or not os.path.isdir(directory):
                continue
            claim = _claim_unused_runtime(directory)
            if claim is not None:
                try:
                    drop(directory, "runtime copy of another wetlite version")
                    if not dry_run:
                        _remove_quietly(directory + ".in-use")
                finally:
                    claim.close()
        return found

    def exit(self):
        """Stop every worker this manager started, and close it: a later call,
        create() or install() raises ExecutorError instead of starting a new
        worker or building (``with mgr:`` opens it again)."""
        self._closed = True
        for env in list(self.environments.values()) + [self.main_environment]:
            env.exit()

    def __enter__(self):
        self._closed = False
        return self

    def __exit__(self, *exc):
        self.exit()


_PIXI_WORKSPACE_CONFIG = """\
# Written by wetlite.  pixi reads this file after the user's config files
# (~/.pixi/config.toml and the like), so these settings win; the user's
# mirrors, proxies and certificates still apply.
detached-environments = false
"""


def _write_pixi_workspace_config(directory):
    """Keep the environment inside the workspace, whatever the user's pixi config says."""
    os.makedirs(os.path.join(directory, ".pixi"), exist_ok=True)
    _atomic_write(os.path.join(directory, ".pixi", "config.toml"), _PIXI_WORKSPACE_CONFIG)


def _pixi_manifest_channels(manifest):
    """The channels a pixi.toml or pyproject.toml lists (names or URLs, as written)."""
    with open(manifest, "r", encoding="utf-8", newline="") as f:
        data = _toml_loads(f.read(), manifest)
    if os.path.basename(manifest) == "pyproject.toml":
        data = data.get("tool", {}).get("pixi", {})
    table = data.get("workspace") or data.get("project") or {}
    return [c if isinstance(c, str) else c.get("channel", "") for c in table.get("channels", [])]


_PROXY_KEYS = ("http", "https", "all", "no")


def _urllib_proxies(proxies):
    """proxies= as urllib's ProxyHandler takes them (None: the *_proxy variables)."""
    if proxies is None:
        return None
    found = dict((k, v) for k, v in proxies.items() if k in ("http", "https"))
    for key in ("http", "https"):
        if "all" in proxies:
            found.setdefault(key, proxies["all"])
    if "no" in proxies:
        found["no"] = proxies["no"]
    return found


def _masked_proxies(proxies):
    """Proxies for a message or a log, their passwords hidden."""
    if not isinstance(proxies, dict):
        return proxies
    return {key: _mask_proxy(value) if isinstance(value, str) else value for key, value in proxies.items()}


def _mask_proxy(value):
    """A proxy setting with its password hidden; ``user:password@host:port``
    needs no scheme (urllib, pip and the *_proxy variables take it so)."""
    if "://" in value:
        return _mask_url(value)
    return "***@" + value.rpartition("@")[2] if "@" in value else value


def _mambarc_proxies(proxies):
    """A private rc file with micromamba's proxy_servers, or None: passed after the root's
    .mambarc, so that a later set_proxies() needs no edit of that shared file."""
    import json
    import tempfile
    servers = dict((k, v) for k, v in proxies.items() if k in ("http", "https"))
    if "all" in proxies:
        for key in ("http", "https"):
            servers.setdefault(key, proxies["all"])
    if not servers:
        return None
    fd, path = tempfile.mkstemp(prefix="proxies-", suffix=".yaml", dir=_scripts_dir())
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("proxy_servers:\n" + "".join("  %s: %s\n" % (k, json.dumps(v)) for k, v in sorted(servers.items())))
    return path


class _NullContext(object):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _json_dumps(obj):
    import json
    return json.dumps(obj, sort_keys=True)


_RUNTIME_HOLDS = None       # weakref.WeakValueDictionary: root -> its _RuntimeHold, while workers use it


class _RuntimeHold(object):
    """Tells gc that root's runtime copy of this file is in use, while it is referenced.

    A shared lock on ``state/runtime/<hash>.in-use`` (on Windows, the open file
    itself, which cannot be deleted while open).  Each environment with a
    worker keeps a reference; the file closes with the last one.
    """

    def __init__(self, root):
        self._file = None
        path = os.path.join(root, "state", "runtime", _self_source()[1] + ".in-use")
        try:
            _makedirs_private(os.path.dirname(path))
            for _ in range(3):
                f = _open_private(path, "r+b")
                if not _WINDOWS:
                    import fcntl
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                if _WINDOWS or os.path.exists(path) and os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                    self._file = f
                    return
                f.close()               # gc removed it while we waited: take the new one
        except OSError:
            pass                        # gc cannot see us then; a missing copy is written again at launch

    def __del__(self):
        if self._file is not None:
            self._file.close()


def _hold_runtime(root):
    global _RUNTIME_HOLDS
    if _RUNTIME_HOLDS is None:
        import weakref
        _RUNTIME_HOLDS = weakref.WeakValueDictionary()
    hold = _RUNTIME_HOLDS.get(root)
    if hold is None:
        hold = _RUNTIME_HOLDS[root] = _RuntimeHold(root)
    return hold


def _claim_unused_runtime(directory):
    """An open file that keeps hosts away from ``directory`` while gc removes it, or
    None if a host runs workers from it (see _hold_runtime).  Close it when done."""
    marker = directory + ".in-use"
    if _WINDOWS:
        try:
            if os.path.exists(marker):
                os.remove(marker)       # refused while a host holds it open
            return _open_private(marker, "r+b")
        except OSError:
            return None
    import fcntl
    try:
        f = _open_private(marker, "r+b")
    except OSError:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


_RECORD_TEXT_FIELDS = ("tool", "dir", "prefix", "python", "state")


def _record_problem(name, record):
    """What is wrong with a record read from JSON (a phrase), or None if it is sound."""
    if not isinstance(record, dict):
        return "holds a JSON %s, not an object" % type(record).__name__
    bad = [key for key in _RECORD_TEXT_FIELDS if not isinstance(record.get(key), str) or not record[key]]
    if bad:
        return "lacks %s" % ", ".join(bad)
    if record["tool"] not in _TOOLS:
        return "names an unknown tool %r" % record["tool"]
    if record["state"] not in ("creating", "ready"):
        return "has an unknown state %r" % record["state"]
    if record.get("name") != name:
        return "is for another environment (%r)" % (record.get("name"),)
    if not all(os.path.isabs(record[key]) for key in ("dir", "prefix", "python")):
        return "has a relative path"
    if not isinstance(record.get("manifest"), (str, type(None))) or not isinstance(record.get("installed", []), list):
        return "has a malformed manifest or installed field"
    return None


def _record_status(record):
    """``(status, detail)`` of a sound record: ready, half-built or missing."""
    if record["state"] != "ready":
        return "half-built", "its build did not finish (state %r)" % record["state"]
    for path in (record["prefix"], record["python"], record.get("manifest")):
        if path and not os.path.exists(path):
            if os.path.islink(path):        # a venv's python, once the Python it was made from is gone
                return "missing", "%s links to %s, which does not exist (was that Python removed or upgraded?)" % (
                    path, os.path.realpath(path))
            return "missing", "%s does not exist (deleted outside wetlite?)" % path
    return "ready", None


def _valid_activation(value):
    """Is ``value`` a captured activation (and not a damaged cache)?"""
    return (isinstance(value, dict) and isinstance(value.get("set"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value["set"].items())
            and isinstance(value.get("unset"), list) and all(isinstance(k, str) for k in value["unset"])
            and isinstance(value.get("path_prepend"), list) and all(isinstance(p, str) for p in value["path_prepend"]))


def _spec_summary(spec):
    """A normalized spec, short: plain entries as strings, and nothing that is empty."""
    summary = {}
    for key in ("python", "conda", "pip", "channels"):
        value = spec.get(key)
        if key in ("conda", "pip") and value:
            value = [e["name"] if isinstance(e, dict) and e.get("platforms") is None and not e.get("optional")
                     and e.get("dependencies", True) else e for e in value]
        if value:
            summary[key] = value
    return summary


def _installed_summary(item):
    """One entry of a record's "installed" list, in today's short form (older records kept the whole spec)."""
    if isinstance(item, dict) and isinstance(item.get("dependencies"), dict):
        return dict(_spec_summary(item["dependencies"]), config=item.get("config"), at=item.get("at"))
    return item


def _recipe_diff(old, new):
    """What differs between two recipe identities, as short diff lines: ["- pip: [...]", "+ pip: [...]"]."""
    def shown(identity):
        identity = identity if isinstance(identity, dict) else {}
        spec = identity.get("spec")
        flat = dict(_spec_summary(spec) if isinstance(spec, dict) else {})
        for key, label in (("tool", "tool"), ("channels", "default channels"), ("config", "config")):
            flat[label] = identity.get(key)
        if "python" not in flat:        # one line for one change of python: the default is what was built
            default = identity.get("default_python")
            flat["python"] = "%s (the default)" % default if default else \
                ("(the config file's)" if identity.get("config") else None)
        return flat
    old, new = shown(old), shown(new)
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            lines.append("- %s: %s" % (key, "(none)" if old.get(key) is None else _json_dumps(old.get(key))))
            lines.append("+ %s: %s" % (key, "(none)" if new.get(key) is None else _json_dumps(new.get(key))))
    return lines

# =============================================================================
# 13. Executor protocol
#
#    The host starts `python -u {runtime}/_wetlite_worker.py` with the
#    environment's interpreter, {runtime} being a private dir named by the
#    hash of the host's own wetlite.py, which it holds a copy of; the boot
#    script imports it (so its bytecode is cached) and runs main(["serve"]).  The host listens on a fresh AF_UNIX socket
#    in a 0700 dir (AF_PIPE on Windows, 127.0.0.1 TCP as a last resort) with
#    a fresh 32-byte authkey; address and key reach the worker through its
#    environment, never argv.  multiprocessing.connection authenticates both
#    ways.  Every message is one pickled tuple:
#
#      worker -> host  ("hello", PROTOCOL_VERSION, wetlite version,
#                       python version, highest pickle protocol, pid)
#      host -> worker  ("hello", pickle protocol to use)  # the lower of both
#      host -> worker  ("call", id, target, function, payload)   the result by value
#                      ("ref", id, target, function, payload)    the result kept in the
#                                                                worker as handle `id`
#                      ("get", id, target, path)          an attribute, by value
#                      ("set", id, target, path, payload)
#                      ("describe", id, target, path)     names, kinds, repr, doc
#                      ("script", id, path, payload)   payload = pickled (args, kwargs)
#                      ("cancel", id)                  drop a call not started yet
#                      ("drop", ids)                   forget these handles
#                      ("exit",)
#      worker -> host  ("ok", id, pickled result)
#                      ("ref", id, description)        see _describe()
#                      ("callable", id, description)   a "get" that found a callable
#                      ("progress", id, current, total, message)   while call `id` runs
#                      ("cancelled", id)               dropped before it started
#                      ("err", id, error dict)         see _error_info()
#      both ways       ("release", names)              done with these shared-memory segments
#
#    A target is a module (a dotted name or a .py path) or, as an int, the id
#    of a handle: the call that made it.  Ids are unique in the host process.
#    Arguments and results are pickled separately from the envelope, so an
#    object that cannot cross fails that call alone, with a clear error.
#    A payload is bytes, or ("ext", bytes, refs, numpy version) when it has
#    big buffers or NumPy objects: see "Large buffers through shared memory".
#    Calls run on the worker's main thread in order.  The worker's stdout
#    and stderr are pipes the host reads line by line: prints never touch the
#    protocol.  A call's first print is preceded by a marker line
#    ("\0wetlite:ID"), and "\0wetlite:-" follows its last one, so the host
#    can tell which call printed what.  On POSIX a "lifeline" pipe, whose
#    write end only the host holds, feeds a worker reader thread: "cancel ID"
#    makes cancel_requested() true in call ID (or drops it before it starts),
#    "interrupt ID" stops call ID if it is the one running (a SIGINT to
#    itself, which the worker turns into KeyboardInterrupt only inside a
#    call), "exit" stops what runs so the exit request is read, and EOF means
#    the host died.  On Windows the host sends CTRL_BREAK instead, and that
#    thread waits on the host's process.
# =============================================================================

PROTOCOL_VERSION = 2
_WORKER_ENV = "WETLITE_WORKER"          # "family|authkey hex|lifeline fd|host pid|address"
_HOST_CHECK_INTERVAL = 1.0              # seconds between the worker's checks that its host lives
_INTERRUPT_GRACE = 2.0                  # seconds a timed-out call gets to stop before a kill
_EXIT_GRACE = 2.0                       # seconds a worker gets to leave on its own
_CANCEL_GRACE = 2.0                     # seconds a cancelled call gets to stop on its own before an interrupt
_PROGRESS_INTERVAL = 0.05               # seconds between two progress reports of one call, at least


def _error_info(exc, protocol):
    """An exception as builtins: type name, message, formatted traceback, and pickle if possible."""
    import pickle
    import traceback
    cls = type(exc)
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable %s>" % cls.__name__
    try:
        text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    except Exception:
        text = "%s: %s\n" % (cls.__name__, message)
    try:
        blob = pickle.dumps(exc, protocol)
    except Exception:
        blob = None
    module = sys.modules.get(cls.__module__)
    shown = getattr(module, "__wetlite_display_name__", cls.__module__)   # a .py loaded by path
    return {"type": "%s.%s" % (shown, getattr(cls, "__qualname__", cls.__name__)),
            "message": message, "traceback": text, "pickle": blob}


class _RemoteTraceback(Exception):
    """The worker-side traceback, attached as the __cause__ of a re-raised error."""

    def __init__(self, text):
        Exception.__init__(self, text)
        self.text = text

    def __str__(self):
        return "\n\n" + self.text.rstrip()


def _rebuild_error(info, what):
    """The exception to raise in the host for a worker error dict.

    The original type when the host can unpickle it (with the worker's
    traceback as __cause__, as concurrent.futures does), else RemoteError.
    """
    import pickle
    stage = info.get("stage")
    if stage == "result":
        return ExecutorError("the result of %s could not be pickled in the worker (%s: %s); return plain data "
                             "(numbers, strings, lists, dicts, arrays) instead, or pass ref=True to keep it in the "
                             "worker and get a RemoteObject" % (what, info["type"], info["message"]))
    if stage == "arguments":
        return ExecutorError("the arguments of %s could not be unpickled in the worker (%s: %s); pass types the "
                             "environment can import" % (what, info["type"], info["message"]))
    exc = None
    if info.get("pickle") is not None:
        try:
            exc = pickle.loads(info["pickle"])
        except (Exception, SystemExit):         # whatever unpickling runs must not end the host
            exc = None
    if isinstance(exc, Exception):
        exc.__cause__ = _RemoteTraceback(info["traceback"])
        return exc
    error = RemoteError("%s raised %s: %s" % (what, info["type"], info["message"]),
                        type_name=info["type"], remote_traceback=info["traceback"])
    error.__cause__ = _RemoteTraceback(info["traceback"])
    return error


# =============================================================================
# 14. Worker (the `serve` command, running inside an environment)
#    Standard library only and Python 3.6 compatible.
# =============================================================================


class _WorkerState(object):
    pid = None                  # the serving process: a fork()ed child is not
    forked = None               # True in a fork()ed child; None: unknown (3.6), compare pids
    conn = None                 # the connection to the host
    lifeline = None             # the read end of the host's control pipe (POSIX)
    host_prefix = None          # the names of the host's shared-memory segments
    in_call = False
    current = None              # the id of the call running on the main thread
    exiting = False             # the host asked to exit while a call ran
    pool = None                 # this worker's shared-memory segments (results)
    cache = None                # the host's segments it has attached (arguments)
    path_modules = {}           # absolute path -> (mtime_ns, size, module)
    resolved = {}               # (module name, function) -> (module, object): the hot path
    cancelled = set()           # ids the host cancelled: dropped before they start, or seen by cancel_requested()
    objects = {}                # handle id -> the object a RemoteObject of the host stands for
    send = None                 # sends one message (see _serve_loop for why it needs no lock)
    protocol = 2
    reporter = None             # the running call's progress (a _CallScope), made on its first report
    streams = ()                # sys.stdout and sys.stderr, marking which call prints
    after_call = False          # the call has something to close: progress, output marks or a cancel


_LEAN = {}


def _lean(name, fallback):
    """The C module behind a stdlib module, where there is one (cached).

    A worker's start is a hot path: pickle, socket, signal and hmac import
    enum, re and friends for conveniences it does not use.
    """
    module = _LEAN.get(name)
    if module is None:
        try:
            module = __import__(name)
        except ImportError:
            module = __import__(fallback)
        _LEAN[name] = module
    return module


def _serve():
    """Run the executor worker until the host says exit or goes away."""
    pickle = _lean("_pickle", "pickle")
    raw = os.environ.pop(_WORKER_ENV, None)
    if not raw:
        _eprint("wetlite serve: this command is started by wetlite's executor; it is not for direct use")
        return 2
    family, key_hex, lifeline, host_pid, address = raw.split("|", 4)       # the address may hold "|"
    _WorkerState.pid = os.getpid()
    _enable_faulthandler()
    _scrub_worker_paths()
    sys.stdin = open(os.devnull, "r")         # the worker never reads stdin
    if lifeline:
        _WorkerState.lifeline = int(lifeline)
        os.set_inheritable(_WorkerState.lifeline, False)    # what calls start must not read the host's lines
    import _thread                          # (threading would cost an import; this is built in)
    _thread.start_new_thread(_watch_host, (lifeline, int(host_pid or 0), os.getppid() == int(host_pid or 0)))
    _install_interrupt_handlers()
    if family == "AF_INET":
        host, port = address.rsplit(":", 1)
        address = (host, int(port))
    if family == "AF_PIPE":
        from multiprocessing.connection import Client
        conn = Client(address, family=family, authkey=bytes.fromhex(key_hex))
    else:
        conn = _connect_to_host(address, family, bytes.fromhex(key_hex))
    highest = 5 if hasattr(pickle, "PickleBuffer") else 4       # _pickle has no HIGHEST_PROTOCOL
    conn.send_bytes(pickle.dumps(("hello", PROTOCOL_VERSION, __version__, "%d.%d.%d" % sys.version_info[:3],
                                  highest, os.getpid(), _shm_available()), 2))
    reply = pickle.loads(conn.recv_bytes())
    protocol = _WorkerState.protocol = reply[1]
    _WorkerState.send = conn.send_bytes
    _tag_output_streams()
    if len(reply) > 2 and reply[2]:
        _WorkerState.pool = _ShmPool(reply[2])
        _WorkerState.cache = _ShmCache()
        _WorkerState.host_prefix = reply[3] if len(reply) > 3 else None
    _WorkerState.conn = conn
    if hasattr(os, "register_at_fork"):     # 3.7+
        _WorkerState.forked = False
        os.register_at_fork(after_in_child=_close_in_forked_child)
    asked_to_exit = False
    try:
        asked_to_exit = _serve_loop(conn, protocol, _WorkerState.pool, _WorkerState.cache)
    finally:
        conn.close()
        if asked_to_exit:
            if _WorkerState.pool is not None:
                _WorkerState.pool.close()
                _WorkerState.cache.close()
        else:
            _host_gone_cleanup()        # the host is gone (EOF): take what the calls started along
    return 0


def _enable_faulthandler():
    # A crash in native code then leaves the Python stack on stderr, which
    # the host keeps as WorkerDied.stderr_tail.
    try:
        import faulthandler
        faulthandler.enable(file=sys.stderr)
    except Exception:
        pass


def _close_in_forked_child():
    """In a process a call fork()ed: drop the connection and the lifeline, so
    that the host sees the worker's death even while the child lives."""
    _WorkerState.forked = True
    try:
        if _WorkerState.conn is not None:
            _WorkerState.conn.close()
        if _WorkerState.lifeline is not None:
            os.close(_WorkerState.lifeline)
    except OSError:
        pass


class _SocketConnection(object):
    """Both ends of the connection between host and worker, on a socket.

    multiprocessing.connection's framing (a 4-byte big-endian length, or -1
    and an 8-byte one) and its two-way HMAC handshake, without importing
    multiprocessing, which costs a third of a worker's start.  It reads
    ahead: one recv() for a message, or for the two that map pipelines,
    where multiprocessing.connection makes two for each (and more Python).
    (Windows named pipes use multiprocessing.connection.)
    """

    def __init__(self, sock, read_ahead=True):
        struct = _lean("_struct", "struct")
        self._sock = sock
        self._head = struct.Struct("!i")        # the length before each message
        self._ahead = b"" if read_ahead else None   # None: read exactly (a handshake that hands the socket on)
        self._at = 0                            # where the next message starts in _ahead

    def fileno(self):
        return self._sock.fileno()

    def has_message(self):
        """Is a whole message already read ahead?"""
        ahead, at = self._ahead, self._at
        if ahead is None or len(ahead) - at < 4:
            return False
        size = self._head.unpack_from(ahead, at)[0]
        return size >= 0 and len(ahead) - at - 4 >= size

    def close(self):
        self._sock.close()

    def poll(self, timeout=0.0):
        """Can recv_bytes() go on without waiting (a message, or the end), within ``timeout`` seconds?"""
        if self.has_message():
            return True
        select = _lean("select", "select")
        fd = self._sock.fileno()
        if fd < 0:
            raise OSError("the connection is closed")
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))
        return bool(select.select([fd], [], [], timeout)[0])

    def send_frames(self, messages):
        """Send several messages, in one system call if they are small."""
        if sum(map(len, messages)) > 65536:
            for data in messages:
                self.send_bytes(data)
            return
        pack = self._head.pack
        self._sock.sendall(b"".join([pack(len(data)) + data for data in messages]))

    def send_bytes(self, data):
        size = len(data)
        if size > 0x7fffffff:
            self._sock.sendall(_lean("_struct", "struct").pack("!iQ", -1, size))
            self._sock.sendall(data)
        elif size > 16384:
            self._sock.sendall(self._head.pack(size))
            self._sock.sendall(data)
        else:
            self._sock.sendall(self._head.pack(size) + data)

    def recv_bytes(self, maxlength=None):
        ahead, at = self._ahead, self._at
        if ahead is not None and len(ahead) - at >= 4:      # the usual case: read ahead already, whole
            size = self._head.unpack_from(ahead, at)[0]
            end = at + 4 + size
            if 0 <= size and end <= len(ahead) and (maxlength is None or size <= maxlength):
                self._at = end
                return ahead[at + 4:end]
        if ahead is not None:
            return self._recv_ahead(maxlength)
        size = self._head.unpack(self._exactly(4))[0]
        if size == -1:
            size = _lean("_struct", "struct").unpack("!Q", self._exactly(8))[0]
        if maxlength is not None and size > maxlength:
            raise OSError("message of %d bytes, more than %d expected" % (size, maxlength))
        return self._exactly(size)

    def _recv_ahead(self, maxlength):
        ahead, at = self._ahead, self._at
        while True:
            have = len(ahead) - at
            if have >= 4:
                size = self._head.unpack_from(ahead, at)[0]
                start = at + 4
                if size == -1 and have >= 12:
                    size = _lean("_struct", "struct").unpack_from("!Q", ahead, start)[0]
                    start += 8
                if size != -1:
                    break
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError("the other side closed the connection")
            ahead, at = ahead[at:] + chunk, 0
        if size < 0 or maxlength is not None and size > maxlength:
            raise OSError("message of %d bytes, more than %s expected" % (size, maxlength))
        end = start + size
        if end <= len(ahead):
            self._ahead, self._at = ahead, end
            return ahead[start:end]
        self._ahead, self._at = b"", 0          # a big message: the rest straight into its own buffer
        return self._exactly(size, ahead[start:])

    def _exactly(self, size, data=None):
        if data is None:
            data = self._sock.recv(size)        # small messages: one call, no copies
            if len(data) == size:
                return data
            if not data and size:
                raise EOFError("the other side closed the connection")
        buf = bytearray(size)
        buf[:len(data)] = data
        view = memoryview(buf)
        got = len(data)
        while got < size:
            n = self._sock.recv_into(view[got:], size - got)
            if not n:
                raise EOFError("the other side closed the connection")
            got += n
        return buf


def _tag_output_streams():
    """Replace sys.stdout and sys.stderr with streams that mark which call
    prints (see section 13): a marker line before a call's first write."""
    import io

    class TaggedStream(io.TextIOWrapper):
        mark = None             # the call whose lines follow

        def write(self, text):
            if self.mark != _WorkerState.current:
                self.switch(_WorkerState.current)
            return io.TextIOWrapper.write(self, text)

        def switch(self, call_id):
            self.mark = call_id
            _WorkerState.after_call = True
            io.TextIOWrapper.write(self, "\0wetlite:%s\n" % ("-" if call_id is None else call_id))

    streams = []
    for name in ("stdout", "stderr"):
        old = getattr(sys, name)
        try:
            raw = io.FileIO(old.fileno(), "w", closefd=False)       # the fd stays open for sys.__stdout__
            new = TaggedStream(raw, encoding=old.encoding, errors=old.errors, write_through=True)
        except (AttributeError, OSError, ValueError):
            continue
        setattr(sys, name, new)
        streams.append(new)
    _WorkerState.streams = tuple(streams)


def _connect_to_host(address, family, authkey):
    """Connect and authenticate as multiprocessing.connection.Client would (within a deadline)."""
    socket = _lean("_socket", "socket")
    sock = socket.socket(socket.AF_UNIX if family == "AF_UNIX" else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(60.0)
    sock.connect(address)
    conn = _SocketConnection(sock)
    _answer_challenge(conn, authkey)
    _deliver_challenge(conn, authkey)
    sock.settimeout(None)
    return conn


def _hmac(key, message, digest):
    try:
        import _hashlib                          # 3.7+, and much cheaper to import than hmac
        return _hashlib.hmac_digest(key, message, digest)
    except (ImportError, AttributeError):
        import hmac
        return hmac.new(key, message, digest).digest()


def _challenge_response(authkey, message):
    """HMAC of a challenge: raw MD5 for a legacy 20-byte one (Python <= 3.11),
    else prefixed with its digest name, as Python 3.12+ does."""
    if len(message) in (16, 20):
        return _hmac(authkey, message, "md5")
    digest = message[1:message.index(b"}")].decode("ascii") if message.startswith(b"{") else "sha256"
    return b"{%s}%s" % (digest.encode("ascii"), _hmac(authkey, message, digest))


def _answer_challenge(conn, authkey):
    message = conn.recv_bytes(256)
    if not message.startswith(b"#CHALLENGE#") or len(message) < 11 + 20:
        raise ProtocolError("the host sent no authentication challenge")
    conn.send_bytes(_challenge_response(authkey, message[11:]))
    if conn.recv_bytes(256) != b"#WELCOME#":
        raise ProtocolError("the host refused this worker's key")


def _deliver_challenge(conn, authkey):
    import _operator
    message = b"{sha256}" + os.urandom(40)
    conn.send_bytes(b"#CHALLENGE#" + message)
    response = conn.recv_bytes(256)
    if len(response) == 16:                             # a host on Python <= 3.11: HMAC-MD5
        expected = _hmac(authkey, message, "md5")
    else:
        expected = _challenge_response(authkey, message)
    if not _operator._compare_digest(response, expected):     # what hmac.compare_digest is
        conn.send_bytes(b"#FAILURE#")
        raise ProtocolError("the host answered the challenge with the wrong key")
    conn.send_bytes(b"#WELCOME#")


def _scrub_worker_paths():
    # The boot script ran by path from the private runtime dir, which Python
    # put first on sys.path.  Drop it: the environment's own packages come
    # first, and nothing of the host (its cwd, its script dir) is on the path.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]


def _watch_host(lifeline, host_pid, direct_child):
    """The worker's reader thread: obey the host's control lines while calls
    run, and end this worker and its children when the host is gone.

    On POSIX it reads the lifeline pipe, whose write end only the host holds:
    EOF means the host died.  The host writes "interrupt ID" (stop call ID,
    if it is the one running) and "exit" (stop what runs, then leave).  It
    also checks the host's pid every _HOST_CHECK_INTERVAL seconds: a process
    the host forked may still hold the write end.
    """
    if lifeline:
        fd = int(lifeline)
        select = _lean("select", "select")
        poller = select.poll() if hasattr(select, "poll") else None
        if poller is not None:
            poller.register(fd, select.POLLIN)
        pending = b""
        try:
            while True:
                if poller is not None:
                    ready = poller.poll(_HOST_CHECK_INTERVAL * 1000)
                else:
                    ready = select.select([fd], [], [], _HOST_CHECK_INTERVAL)[0]
                if not ready:
                    if _host_gone(host_pid, direct_child):
                        break
                    continue
                chunk = os.read(fd, 256)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    _obey(line.split())
        except (OSError, ValueError):
            pass
    elif _WINDOWS and host_pid:
        import _winapi
        try:
            handle = _winapi.OpenProcess(0x00100000, False, host_pid)      # SYNCHRONIZE
            _winapi.WaitForSingleObject(handle, 0xFFFFFFFF)
        except OSError:
            pass
    else:
        return
    _host_gone_cleanup()
    os._exit(3)


def _host_gone(host_pid, direct_child):
    if direct_child:
        return os.getppid() != host_pid         # orphans are adopted: no pid reuse can fool this
    try:
        os.kill(host_pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def _host_gone_cleanup():
    """Unlink the shared memory nobody else will unlink now (ours, and what
    the dead host left under its prefix), and kill what the calls started."""
    if _WorkerState.pool is not None:
        _WorkerState.pool.close()
        _WorkerState.cache.close(unlink=True)
        _sweep_segments(_WorkerState.host_prefix)
    _kill_own_group()


def _obey(words):
    """Act on one control line from the host (see _watch_host)."""
    if words[:1] == [b"exit"]:
        _WorkerState.exiting = True
        target = _WorkerState.current
    elif words[:1] == [b"interrupt"] and len(words) == 2:
        target = int(words[1])
    elif words[:1] == [b"cancel"] and len(words) == 2:
        _WorkerState.cancelled.add(int(words[1]))      # seen by cancel_requested(), or when it would start
        _WorkerState.after_call = True
        return
    else:
        return
    if target is not None and target == _WorkerState.current and _WorkerState.in_call:
        # Only the call asked for: a signal, so that blocking calls wake too.
        os.kill(os.getpid(), _lean("_signal", "signal").SIGINT)


def _kill_own_group():
    """Kill this worker's process group: itself and what its calls started."""
    if not _WINDOWS:
        signal = _lean("_signal", "signal")
        try:
            os.killpg(os.getpgid(0), signal.SIGKILL)    # this worker leads its own session
        except OSError:
            pass


def _install_interrupt_handlers():
    signal = _lean("_signal", "signal")

    def interrupt(signum, frame):
        # Only a running call may be interrupted: between calls a
        # KeyboardInterrupt could break a message in half.
        if _WorkerState.in_call:
            raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupt)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, interrupt)


def _readiness_check(conn):
    """A function telling whether a message is waiting, as cheaply as possible.

    (conn.poll() builds a selector on every call: too slow for every request.)
    """
    if _WINDOWS:
        return lambda: conn.poll(0)
    import select
    ahead = getattr(conn, "has_message", lambda: False)     # a message read ahead needs no system call
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return lambda: ahead() or bool(poller.poll(0))
    fd = conn.fileno()
    return lambda: ahead() or bool(select.select([fd], [], [], 0)[0])


_CONTROL_OPS = frozenset(["cancel", "release", "drop", "exit"])     # the requests without a reply


def _serve_loop(conn, protocol, pool=None, cache=None):
    """Answer requests until the host asks to exit (return True) or goes away (False).

    Only this thread sends, but for progress reports, which a call's scope
    sends under its lock while the call runs: _end_of_call() closes the
    scope before the reply goes.  So sends need no lock of their own.
    """
    pickle = _lean("_pickle", "pickle")
    dumps, loads = pickle.dumps, pickle.loads
    send = conn.send_bytes
    state = _WorkerState
    cancelled = state.cancelled
    queue = []                                  # requests read ahead (a list: collections costs an import)
    readable = _readiness_check(conn)
    freed = cache.freed if cache is not None else ()        # the host's segments we are done with
    while True:
        if not queue:
            try:
                queue.append(loads(conn.recv_bytes()))
            except (EOFError, OSError):
                return False
        try:
            while readable():                   # pick up cancels of queued calls
                message = loads(conn.recv_bytes())
                if message[0] in _CONTROL_OPS and message[0] != "exit":
                    _control(message, pool)
                else:
                    queue.append(message)
        except (EOFError, OSError):
            return False
        message = queue.pop(0)
        op = message[0]
        try:
            if op != "call":
                if op == "exit":
                    for dropped in queue:
                        if dropped[0] not in _CONTROL_OPS:
                            send(dumps(("cancelled", dropped[1]), protocol))
                    return True
                if op in _CONTROL_OPS:
                    _control(message, pool)
                    continue
            call_id = message[1]
            if cancelled and call_id in cancelled:      # cancelled while it waited: it never starts
                cancelled.discard(call_id)
                send(dumps(("cancelled", call_id), protocol))
                continue
            state.current = call_id
            try:
                reply = _handle(message, protocol, pool, cache)
            finally:
                state.current = None
                if state.after_call:
                    _end_of_call(call_id)
            if freed:                           # the host's segments this call is done with
                send(dumps(("release", cache.drain()), protocol))
            send(reply)
            if state.exiting:
                return True
        except (EOFError, OSError):
            return False


def _control(message, pool):
    """Act on a request that has no reply."""
    op = message[0]
    if op == "cancel":
        _WorkerState.cancelled.add(message[1])
        _WorkerState.after_call = True
    elif op == "release":
        pool.release(message[1])
    elif op == "drop":
        for handle_id in message[1]:
            _WorkerState.objects.pop(handle_id, None)


def _end_of_call(call_id):
    """Before the reply: the call's last progress report, the end of its output, its cancel."""
    global _REPORTER
    state = _WorkerState
    state.after_call = False
    reporter = state.reporter
    if reporter is not None:
        state.reporter = _REPORTER = None
        reporter.finish()
    for stream in state.streams:
        if stream.mark is not None:
            stream.switch(None)
    state.after_call = False                    # (switch set it)
    if state.cancelled:
        state.cancelled.discard(call_id)
        state.after_call = bool(state.cancelled)


def _handle(message, protocol, pool, cache):
    """Run one request; return the pickled reply."""
    pickle = _lean("_pickle", "pickle")
    op, call_id = message[0], message[1]
    stage = "arguments"
    kind = "ok"
    try:
        if op == "call":                        # the hot path
            payload = message[4]
            if type(payload) is tuple:
                args, kwargs = _loads_payload(payload, cache)
            else:
                args, kwargs = pickle.loads(payload)
            stage = "call"
            result = _call_on_main_thread(_resolve(message[2], message[3]), args, kwargs)
            stage = "result"
            return pickle.dumps(("ok", call_id, _dumps_payload(result, protocol, pool)), protocol)
        if op == "ref" or op == "script" or op == "set":
            payload = message[-1]
            if type(payload) is tuple:
                args, kwargs = _loads_payload(payload, cache)
            else:
                args, kwargs = pickle.loads(payload)
            stage = "call"
            if op == "ref":
                result = _call_on_main_thread(_resolve(message[2], message[3]), args, kwargs)
                _WorkerState.objects[call_id] = result
                kind, result = "ref", _describe(result, True)
            elif op == "script":
                result = _call_on_main_thread(_run_script, (message[2],) + tuple(args), kwargs)
            else:
                owner, _, name = message[3].rpartition(".")
                setattr(_lookup(message[2], owner or None), name, args[0])
                result = None
        else:
            stage = "call"
            if op == "get":
                result = _lookup(message[2], message[3])
                if callable(result) or isinstance(result, type(sys)):
                    kind, result = "proxy", _describe(result, False)
            elif op == "describe":
                target = _lookup(message[2], message[3])
                result = _describe(target, message[3] is None or not callable(target))
            else:
                raise ProtocolError("unknown request %r" % (op,))
        stage = "result"
        if kind == "ok":
            result = _dumps_payload(result, protocol, pool)
        reply = (kind, call_id, result)
    except BaseException as exc:
        info = _error_info(exc, protocol)
        if stage != "call":
            info["stage"] = stage
        reply = ("err", call_id, info)
    return pickle.dumps(reply, protocol)


def _call_on_main_thread(func, args, kwargs):
    _WorkerState.in_call = True
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:
        _WorkerState.in_call = False
        if _WorkerState.forked is not False and (_WorkerState.forked or os.getpid() != _WorkerState.pid):
            _leave_forked_child(exc)
        raise
    _WorkerState.in_call = False
    # (A flag set at fork: os.getpid() is a system call, on every call.)
    if _WorkerState.forked is not False and (_WorkerState.forked or os.getpid() != _WorkerState.pid):
        _leave_forked_child(None)
    return result


def _leave_forked_child(exc):
    """A call fork()ed and the child came back here (after a failed exec, say):
    it must not become a second server on the host's connection."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    code = exc.code if isinstance(exc, SystemExit) else (1 if exc is not None else 0)
    os._exit(code if isinstance(code, int) else 1)


def _resolve(target, function):
    """The object ``function`` (a dotted path, or None) of ``target`` (a module
    name, a .py path, or a handle id).  Cached for modules: the hot path."""
    module = sys.modules.get(target)            # the hot path: an imported module by name
    if module is not None:
        cached = _WorkerState.resolved.get((target, function))
        if cached is not None and cached[0] is module:
            return cached[1]
    elif type(target) is int:                   # a handle's method: the hot path of RemoteObjects
        objects = _WorkerState.objects
        if target in objects and function is not None and "." not in function:
            return getattr(objects[target], function)
        return _walk(_held_object(target), function, "the object")
    else:
        module = _import_target(target)
    if function is None:
        return module
    obj = _walk(module, function, target)
    if sys.modules.get(target) is module:
        _WorkerState.resolved[(target, function)] = (module, obj)
    return obj


def _lookup(target, path):
    """Like _resolve, uncached: for attribute values, which may change."""
    if type(target) is int:
        return _walk(_held_object(target), path, "the object")
    module = sys.modules.get(target)
    return _walk(module if module is not None else _import_target(target), path, target)


def _import_target(target):
    if target.endswith(".py") or os.sep in target or (os.altsep and os.altsep in target):
        return _load_path_module(target)
    import importlib
    return importlib.import_module(target)


def _walk(obj, path, walked):
    """Follow the dotted ``path`` from ``obj``, importing submodules on the way.

    A missing name is an AttributeError naming ``walked`` (the target as the
    user gave it, not a path module's internal name), marked as a lookup error
    so that the CLI shows no traceback for it."""
    if path is None:
        return obj
    for part in path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = False
            if hasattr(obj, "__path__"):        # a package: maybe a submodule not imported yet
                import importlib
                try:
                    obj, found = importlib.import_module(obj.__name__ + "." + part), True
                except ImportError:
                    pass
            if not found:
                owner = "the %s object" % type(obj).__name__ if walked == "the object" else walked  # a handle's
                error = AttributeError("%s has no attribute %r" % (owner, part))
                error._wetlite_lookup = True
                raise error from None
        walked += (":" if walked.endswith(".py") else ".") + part
    return obj


def _held_object(handle_id):
    """The object behind the host's handle ``handle_id`` (unpickling a RemoteObject argument calls this)."""
    try:
        return _WorkerState.objects[handle_id]
    except KeyError:
        raise ExecutorError("RemoteObject #%d is not in this worker: it was released" % handle_id)


_REPR_LIMIT = 400


def _describe(obj, members):
    """What a host shows of a remote object without asking again: its type,
    repr, doc and name, and with ``members`` its names, which of them are
    methods (callables and submodules, used remotely) and which plain data
    (read by value).  Found without running properties or a module's
    __getattr__."""
    cls = type(obj)
    module = getattr(sys.modules.get(cls.__module__), "__wetlite_display_name__", cls.__module__)  # a .py by path
    try:
        text = repr(obj)
        if module != cls.__module__:
            text = text.replace(cls.__module__ + ".", module + ".")     # object.__repr__ names the module
    except Exception:
        text = "<%s object>" % cls.__name__
    doc = getattr(obj, "__doc__", None)
    name = getattr(obj, "__name__", None)
    info = {"type": "%s.%s" % (module, getattr(cls, "__qualname__", cls.__name__)),
            "repr": text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT - 3] + "...",
            "doc": doc if isinstance(doc, str) else None, "name": name if isinstance(name, str) else None}
    if not members:
        return info
    try:
        names = dir(obj)
    except Exception:
        names = []
    own = getattr(obj, "__dict__", None)
    own = own if isinstance(own, dict) else {}
    classes = () if isinstance(obj, type(sys)) else cls.__mro__
    methods, data = [], []
    missing = object()
    for n in names:
        found = missing
        for klass in classes:
            if n in klass.__dict__:
                found = klass.__dict__[n]
                break
        if found is not missing and hasattr(type(found), "__set__"):
            continue                                # a property or slot: read when asked
        if n in own:
            value = own[n]
            if callable(value) or isinstance(value, type(sys)):
                methods.append(n)
            elif _is_data(value):
                data.append(n)
        elif found is not missing:
            if callable(found) or isinstance(found, (staticmethod, classmethod)):
                methods.append(n)                   # a method: a function on the class
            elif not hasattr(type(found), "__get__") and _is_data(found):
                data.append(n)
    info.update(names=names, methods=methods, data=data)
    return info


def _is_data(value, depth=2):
    """Plain data that reads well by value: numbers, strings, bytes, None, and
    small tuples, lists, sets and dicts of them."""
    cls = type(value)
    if cls in _PLAIN_TYPES or cls is bytes:
        return True
    if not depth or cls not in (tuple, list, set, frozenset, dict) or len(value) > 10000:
        return False
    for item in (value.items() if cls is dict else value):
        if cls is dict:
            if not (_is_data(item[0], 0) and _is_data(item[1], depth - 1)):
                return False
        elif not _is_data(item, depth - 1):
            return False
    return True


def _load_path_module(path):
    """Import a .py file under a name unique to its path; re-import it when it changes.

    Its directory is put on sys.path once (at the end), so that its sibling
    modules import; sys.path does not grow per call.
    """
    import hashlib
    import importlib.util
    path = os.path.abspath(path)
    try:
        stat = os.stat(path)
    except OSError:
        raise ModuleNotFoundError("no Python file at %s" % path, path=path)
    key = (getattr(stat, "st_mtime_ns", stat.st_mtime), stat.st_size)
    cached = _WorkerState.path_modules.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    stem = os.path.splitext(os.path.basename(path))[0]
    name = "_wetlite_path_%s_%s" % ("".join(c if c.isalnum() else "_" for c in stem),
                                   hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:10])
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.append(directory)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__wetlite_display_name__ = stem
    sys.modules[name] = module
    try:
        # Compiled from source, not through the loader: its __pycache__ check
        # (whole-second mtime and size) would miss a quick same-size edit.
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _WorkerState.path_modules[path] = (key, module)
    return module


def _run_script(path, *args, **kwargs):
    import runpy
    run_name = kwargs.get("run_name", "__main__")
    saved = sys.argv[:]
    sys.argv = [path] + [str(a) for a in args]
    try:
        runpy.run_path(path, run_name=run_name)
    finally:
        sys.argv = saved
    return None

# --- Large buffers through shared memory --------------------------------------
#
#    With pickle protocol 5 on both sides and multiprocessing.shared_memory
#    available, a buffer of at least _SHM_THRESHOLD bytes (a NumPy array, a
#    large bytes, bytearray or memoryview) travels out of band: the sender
#    copies it into a segment of its own pool and sends ("ext", pickle, refs,
#    numpy version) instead of bytes, refs being (segment name, size, kind).
#    Each segment has one owner, which alone unlinks it.  Segments are reused
#    from call to call, because faulting in fresh pages costs more than the
#    copy.
#
#    - The receiver tells the owner when it is done with a segment: a
#      ("release", names) message (the worker sends it before its reply, the
#      host before its next request).  Until then the owner does not touch it.
#    - Kinds: "lend" (a NumPy array's bytes): on POSIX the receiver builds
#      the array over the segment itself, no copy.  The array's memory is
#      "lent": the segment is released when the array and every view of it
#      are gone (a weakref on the uint8 array they all hang on; any buffer
#      taken from them keeps it alive).  A receiver lends at most
#      _SHM_LEND_LIMIT bytes at once and copies beyond: an array that is
#      kept keeps its segment, and the owner must fault in a fresh one.
#      "copy" (rebuilt as bytes/bytearray, which copy anyway: the receiver
#      hands them the segment), "own" and "keep" (a memoryview, or another
#      library's out-of-band buffer: an owned copy).
#    No shared memory (Python < 3.8, a tiny /dev/shm, WETLITE_SHM=0): every
#    buffer goes in-band, and calls still work.

_SHM_THRESHOLD = 1 << 20        # bytes; see scripts/bench.py "shm threshold" for the measurement
_SHM_POOL_LIMIT = 1 << 30       # free segment bytes a pool keeps mapped for reuse
_SHM_LEND_LIMIT = 256 << 20     # bytes a receiver keeps lent from the other side's segments at once
_ENV_SHM = "WETLITE_SHM"        # "0" turns shared memory off


def _shm_available():
    """Can this interpreter use out-of-band buffers in shared memory?

    Cheap on purpose (it runs at every worker start): multiprocessing's
    shared_memory module itself is imported on the first segment.
    """
    if os.environ.get(_ENV_SHM, "1") == "0":
        return False
    if not hasattr(_lean("_pickle", "pickle"), "PickleBuffer"):     # protocol 5: 3.8+
        return False
    if _WINDOWS:
        return True
    try:
        import _posixshmem                              # noqa: F401 (what shared_memory uses)
        return True
    except ImportError:
        return False


def _shm_open(name, size=0):
    """Create (size > 0) or attach a SharedMemory that the resource tracker ignores.

    wetlite unlinks what it owns itself, even after a peer crashed; the
    tracker would unlink (and warn about) blocks it does not own.
    """
    from multiprocessing import shared_memory
    try:
        return shared_memory.SharedMemory(name=name, create=size > 0, size=size, track=False)
    except TypeError:
        pass
    # Breakpoint: `track=False` is 3.13+.  Before, every SharedMemory
    # registers with the tracker: take it back.  Delete when the floor is 3.13.
    shm = shared_memory.SharedMemory(name=name, create=size > 0, size=size)
    if not _WINDOWS:
        from multiprocessing import resource_tracker
        resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def _shm_attach(name):
    """Map the other side's segment ``name``: a plain mmap on POSIX.

    An mmap, unlike a SharedMemory, can be dropped while arrays still view
    it: it stays mapped until they go, and it never complains.  (Windows:
    a SharedMemory, and arrays are copied out, never lent.)
    """
    if _WINDOWS:
        return _shm_open(name)
    import _posixshmem
    import mmap
    fd = _posixshmem.shm_open("/" + name, os.O_RDWR, 0o600)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _shm_unlink(shm):
    """Close and unlink a segment (a SharedMemory, or an attached mmap and
    its name) without telling the resource tracker."""
    if type(shm) is tuple:
        mapping, name = shm
    else:
        mapping, name = shm, getattr(shm, "_name", "/" + shm.name)
    try:
        mapping.close()
    except BufferError:
        pass                    # a view of it is still alive; the memory goes with it
    if _WINDOWS:
        return                  # a Windows mapping ends with its last handle
    try:
        import _posixshmem
        _posixshmem.shm_unlink(name)
    except (ImportError, OSError):
        pass


def _sweep_segments(prefix):
    """Unlink every segment named PREFIX_N: what a dead peer left, announced
    or not.  (Linux lists them in /dev/shm; elsewhere only the segments a
    side has attached are unlinked, by _ShmCache.close.)"""
    if not prefix or not os.path.isdir("/dev/shm"):
        return
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        if name.startswith(prefix + "_"):
            _remove_quietly(os.path.join("/dev/shm", name))


def _shm_space_for(size):
    """Is there room for ``size`` more bytes of shared memory?  (A full
    /dev/shm would kill the writer with SIGBUS instead of raising.)"""
    if not hasattr(os, "statvfs") or not os.path.isdir("/dev/shm"):
        return True
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return True
    return st.f_bavail * st.f_frsize >= size + (16 << 20)


class _ShmPool(object):
    """The segments one side owns: taken for a message, released, reused, unlinked."""

    def __init__(self, prefix):
        import threading
        self.prefix = prefix
        self.lock = threading.RLock()       # the host takes and releases from several threads
        self._count = 0
        self.free = []
        self.busy = {}          # name -> SharedMemory in use by a message in flight, or lent

    def take(self, size):
        """A segment of at least ``size`` bytes, or None (then the caller goes in-band)."""
        with self.lock:
            return self._take(size)

    def _take(self, size):
        best = None
        for shm in self.free:
            if shm.size >= size and (best is None or shm.size < best.size):
                best = shm
        if best is not None and best.size <= 4 * size + (1 << 20):
            self.free.remove(best)
        else:
            capacity = 1 << max(20, (size - 1).bit_length())
            if not _shm_space_for(capacity):
                _log().debug("not enough shared memory for %d bytes: sending in-band", size)
                return None
            self._count += 1
            name = "%s_%d" % (self.prefix, self._count)
            try:
                best = _shm_open(name, capacity)
            except (OSError, ValueError) as exc:
                _log().debug("cannot create shared memory %s (%s): sending in-band", name, exc)
                return None
        self.busy[best.name] = best
        return best

    def release(self, names):
        with self.lock:
            self._release(names)

    def _release(self, names):
        for name in names:
            shm = self.busy.pop(name, None)
            if shm is not None:
                self.free.append(shm)
        while sum(s.size for s in self.free) > _SHM_POOL_LIMIT:
            self._unlink(self.free.pop(0))

    def close(self):
        with self.lock:
            for shm in self.free + list(self.busy.values()):
                self._unlink(shm)
            self.free, self.busy = [], {}

    _unlink = staticmethod(_shm_unlink)


class _ShmCache(object):
    """The other side's segments, attached once and kept mapped (no page faults next time).

    At most ``limit`` stay mapped, least recently used first out: the owner
    may have unlinked a segment, and a mapping would keep its memory alive.
    ``freed`` collects the names this side is done with, for the owner; it
    is a deque because a lent array may die on any thread, at any moment
    (a garbage collection), where only an atomic append is safe.
    """

    limit = 32

    def __init__(self):
        import _thread
        import collections
        self.maps = collections.OrderedDict()   # name -> mmap (POSIX) or SharedMemory (Windows)
        self.lock = _thread.allocate_lock()     # the host decodes on several threads
        self.lent = {}                          # name -> (weakref to the array over it, size)
        self.freed = collections.deque()

    def _mapping(self, name):
        with self.lock:
            mapping = self.maps.pop(name, None)
            if mapping is None:
                mapping = _shm_attach(name)
                while len(self.maps) >= self.limit:
                    _, old = self.maps.popitem(last=False)
                    try:
                        old.close()
                    except BufferError:
                        pass        # lent: the arrays keep it mapped until they go
            self.maps[name] = mapping
            return mapping

    def view(self, name, size):
        mapping = self._mapping(name)
        return (mapping.buf if _WINDOWS else memoryview(mapping))[:size]

    def lend(self, name, size):
        """A NumPy uint8 array over segment ``name``, or None: copy it out.

        Everything built on it (arrays, their views, memoryviews of them)
        holds it, so its weakref fires only when the last of them is gone:
        then the segment goes to ``freed``.
        """
        if _WINDOWS or name in self.lent or sum(s for _, s in list(self.lent.values())) + size > _SHM_LEND_LIMIT:
            return None
        try:
            numpy = _user_numpy()
        except ImportError:
            return None
        import weakref
        raw = numpy.frombuffer(self.view(name, size), numpy.uint8)
        lent, freed = self.lent, self.freed

        def done(ref):
            lent.pop(name, None)
            freed.append(name)
        lent[name] = (weakref.ref(raw, done), size)
        return raw

    def drain(self):
        """The names freed so far (emptying ``freed``; safe against concurrent appends)."""
        names = []
        while True:
            try:
                names.append(self.freed.popleft())
            except IndexError:
                return names

    def close(self, unlink=False):
        for name, mapping in self.maps.items():
            if unlink:          # the owner died: its segments are ours to free
                _shm_unlink(mapping if _WINDOWS else (mapping, "/" + name))
            else:
                try:
                    mapping.close()
                except BufferError:
                    pass
        self.maps = {}


def _owned_copy(view):
    """A private, writable copy of ``view`` that owns its memory.

    Private anonymous memory with transparent huge pages, as NumPy allocates
    big arrays: faulting in a fresh 64 MiB bytearray page by 4 KiB page
    costs five times the copy itself.  (Python's default anonymous mmap is
    MAP_SHARED, which gets no huge pages.)
    """
    import mmap
    size = view.nbytes
    if size == 0:
        return bytearray()
    if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS"):
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        memory = mmap.mmap(-1, size)
    if size >= (2 << 20) and hasattr(memory, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            memory.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    memoryview(memory)[:] = view
    return memory


_OOB_PICKLER = None


def _oob_pickler_class():
    """A Pickler that also sends bytes, bytearray and memoryview out of band.

    Only used when the fast C pickler is not enough (a memoryview, or big
    bytes or bytearray objects): it is pure Python, with a Python call per
    object.
    """
    global _OOB_PICKLER
    if _OOB_PICKLER is None:
        import pickle

        # The pure-Python pickler: the C one never asks reducer_override
        # about bytes and bytearray (it pickles them on a fast path).
        class OutOfBandPickler(pickle._Pickler):
            threshold = _SHM_THRESHOLD
            kinds = None            # id(PickleBuffer) -> kind, for the buffers made here

            def reducer_override(self, obj):
                cls = type(obj)
                if cls is bytes or cls is bytearray:
                    if self.kinds is not None and len(obj) >= self.threshold:
                        buffer = pickle.PickleBuffer(obj)
                        self.kinds[id(buffer)] = ("copy", buffer)
                        return cls, (buffer,)
                elif cls is memoryview:
                    if obj.ndim != 1 or obj.format != "B":
                        try:
                            flat = obj.cast("B")
                        except (TypeError, ValueError):
                            flat = memoryview(obj.tobytes())
                        return memoryview.cast, (flat, obj.format, list(obj.shape))
                    if self.kinds is not None and obj.nbytes >= self.threshold and obj.contiguous:
                        buffer = pickle.PickleBuffer(obj)
                        self.kinds[id(buffer)] = ("own", buffer)
                        return memoryview, (buffer,)
                    return memoryview, (bytearray(obj),)
                return NotImplemented
        _OOB_PICKLER = OutOfBandPickler
    return _OOB_PICKLER


_PLAIN_TYPES = frozenset([int, float, complex, str, bool, type(None)])


def _plain(obj, depth=3):
    """Small, buffer-free data (the usual arguments): the plain pickler will do."""
    cls = type(obj)
    if cls in _PLAIN_TYPES:
        return True
    if cls is bytes:
        return len(obj) < _SHM_THRESHOLD
    if cls is not tuple and cls is not list and cls is not dict:
        return False
    if not depth or len(obj) > 16:
        return False
    items = obj
    if cls is dict:
        for key in obj:                 # a NumPy scalar key needs the neutral form too
            if type(key) not in _PLAIN_TYPES:
                return False
        items = obj.values()
    for item in items:                  # a loop, not all(genexpr): this is on every call
        if type(item) not in _PLAIN_TYPES and not _plain(item, depth - 1):
            return False
    return True


def _dumps_payload(obj, protocol, pool):
    """Pickle ``obj`` for the other side.

    Plain data: bytes.  Else ("ext", bytes, refs, numpy version), with big
    buffers in ``pool`` segments (listed in refs) and, when NumPy is loaded,
    NumPy arrays and scalars in their version-neutral form.
    """
    numpy = sys.modules.get("numpy")
    if (pool is None and numpy is None) or _plain(obj):
        try:
            return _lean("_pickle", "pickle").dumps(obj, protocol)
        except TypeError:
            return _dumps_with_reducers(obj, protocol, None, None, None)     # a memoryview
    table = _numpy_dispatch_table(numpy, protocol) if numpy is not None else None
    refs = []
    try:
        try:
            data = _pickled(obj, protocol, _out_of_band(pool, refs) if pool is not None else None, table)
        except TypeError:
            data = None             # a memoryview: the reducers below know it
        if data is None or (pool is not None and len(data) >= _SHM_THRESHOLD and _has_big_bytes(obj)):
            if refs:                # big bytes in-band: start over with the reducers
                pool.release([r[0] for r in refs])
                del refs[:]
            data = _dumps_with_reducers(obj, protocol, pool, refs, table)
    except BaseException:
        if refs:
            pool.release([r[0] for r in refs])
        raise
    if numpy is None and not refs:
        return data
    return ("ext", data, refs, getattr(numpy, "__version__", None))


def _pickled(obj, protocol, buffer_callback, table):
    """The C pickler, with a buffer callback and a dispatch table if given."""
    pickle = _lean("_pickle", "pickle")
    if table is None:
        if buffer_callback is None:
            return pickle.dumps(obj, protocol)
        return pickle.dumps(obj, protocol, buffer_callback=buffer_callback)
    import io
    stream = io.BytesIO()
    if buffer_callback is None:
        pickler = pickle.Pickler(stream, protocol)      # (3.6 and 3.7 know no buffer_callback)
    else:
        pickler = pickle.Pickler(stream, protocol, buffer_callback=buffer_callback)
    pickler.dispatch_table = table
    pickler.dump(obj)
    return stream.getvalue()


def _out_of_band(pool, refs, kinds=None):
    """A pickle buffer_callback: big buffers go into ``pool`` segments, listed in ``refs``.

    ``kinds`` maps id(PickleBuffer) to the kind the reducers gave it; a
    NumPy array's own buffer is "lend", any other "keep".
    """
    def callback(buffer):
        raw = buffer.raw()
        size = raw.nbytes
        segment = pool.take(size) if size >= _SHM_THRESHOLD else None
        if segment is None:
            return True                         # in-band
        segment.buf[:size] = raw
        kind = kinds.get(id(buffer)) if kinds else None
        if kind is not None:
            kind = kind[0]
        else:
            with memoryview(buffer) as view:
                numpy = sys.modules.get("numpy")
                kind = "lend" if numpy is not None and isinstance(view.obj, numpy.ndarray) else "keep"
        refs.append((segment.name, size, kind))
        return False
    return callback


def _has_big_bytes(obj, budget=10000):
    """Does ``obj`` hold a big bytes, bytearray or memoryview, within lists,
    tuples and dicts?  (Looks at ``budget`` objects at most.)"""
    stack = [obj]
    while stack and budget > 0:
        item = stack.pop()
        budget -= 1
        cls = type(item)
        if cls is bytes or cls is bytearray:
            if len(item) >= _SHM_THRESHOLD:
                return True
        elif cls is memoryview:
            return True
        elif cls is list or cls is tuple:
            stack.extend(item)
        elif cls is dict:
            stack.extend(item.values())
    return False


def _dumps_with_reducers(obj, protocol, pool, refs, table):
    """Pickle with the pure-Python OutOfBandPickler (memoryviews, big bytes)."""
    import io
    stream = io.BytesIO()
    cls = _oob_pickler_class()
    if pool is None:
        pickler = cls(stream, protocol)
    else:
        kinds = {}
        pickler = cls(stream, protocol, buffer_callback=_out_of_band(pool, refs, kinds))
        pickler.kinds = kinds
    if table is not None:
        pickler.dispatch_table = table
    pickler.dump(obj)
    return stream.getvalue()


def _loads_payload(payload, cache):
    """Unpickle an ("ext", data, refs, numpy version) payload (see _dumps_payload).

    NumPy arrays are built over the sender's segment where this side can
    lend it; other buffers are copied out.  Every segment named ends up in
    ``cache.freed``: at once, or when the arrays lent its memory are gone.
    """
    data, refs = payload[1], payload[2]
    buffers = []
    done = []
    try:
        for name, size, kind in refs:
            done.append(name)
            buffer = cache.lend(name, size) if kind == "lend" else None
            if buffer is not None:
                done.pop()                      # lent: the array gives it back
            else:
                view = cache.view(name, size)
                if kind == "copy":
                    buffer = view               # bytes()/bytearray() copy it themselves
                else:
                    buffer = _owned_copy(view)
                    view.release()
            buffers.append(buffer)
        return _unpickle(data, buffers, payload[3] if len(payload) > 3 else None)
    finally:
        for buffer in buffers:
            if type(buffer) is memoryview:
                try:
                    buffer.release()
                except BufferError:
                    pass
        # No reference left here, even from a traceback: a lent array that
        # did not make it into the result goes (and frees its segment) now.
        buffer = buffers = None
        if cache is not None:
            cache.freed.extend(done)


# --- NumPy arrays and scalars across versions ---------------------------------
#
#    Pickle records NumPy's internal module paths, which moved in NumPy 2
#    (numpy.core became numpy._core): a pickled array does not cross between
#    NumPy versions.  So when numpy is loaded (wetlite never imports it: no
#    numpy in sys.modules means no arrays to send), a payload's pickler gets
#    a dispatch table that writes exact ndarrays and NumPy scalars as calls
#    to _wetlite_neutral: a dtype spec made of builtins, the shape, the
#    strides when not C-contiguous, and the bytes (a PickleBuffer: out of
#    band, through shared memory when big).  A non-contiguous view is
#    copied first (order "K": its own layout, no gaps).  The receiver
#    rebuilds them with NumPy's public API only: numpy.dtype(spec) and
#    numpy.ndarray(shape, dtype, buffer, strides=...).  Its unpickler maps
#    that one global by name, whatever the sender's module is called (a
#    vendored copy, __main__).
#    Object arrays, ndarray subclasses (matrix, masked arrays, memmap,
#    recarray) and other libraries' dtypes keep NumPy's own pickle, which
#    needs the same NumPy on both sides: when it fails, the error says so.

_NEUTRAL_KINDS = "biufcmMSUV"       # bool, ints, floats, complex, datetimes, bytes, str, void
_NUMPY_TABLES = {}                  # (protocol >= 5, copyreg entries) -> (numpy, dispatch table)


def _numpy_dispatch_table(numpy, protocol):
    """copyreg's dispatch table, plus exact ndarrays and NumPy scalar types."""
    import copyreg
    key = (protocol >= 5, len(copyreg.dispatch_table))
    cached = _NUMPY_TABLES.get(key)
    if cached is not None and cached[0] is numpy:
        return cached[1]
    table = dict(copyreg.dispatch_table)
    array, scalar = _neutral_reducers(numpy, protocol)
    table[numpy.ndarray] = array
    stack = [numpy.generic]
    while stack:                        # every concrete scalar type NumPy defines
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__ == "numpy" and cls is not numpy.object_:
            table[cls] = scalar
    _NUMPY_TABLES[key] = (numpy, table)
    return table


def _neutral_reducers(numpy, protocol):
    """The reduce functions for exact ndarrays and for NumPy scalars."""
    if protocol >= 5:
        as_buffer = _lean("_pickle", "pickle").PickleBuffer
    else:
        def as_buffer(dense):
            return dense.tobytes()

    def array(a):
        spec = _dtype_spec(a.dtype)
        if spec is None:
            return a.__reduce_ex__(protocol)
        writeable = bool(a.flags.writeable)
        if a.size == 0 or a.itemsize == 0:
            return _wetlite_neutral, ("a", spec, a.shape, None, b"", writeable)
        if not (a.flags.c_contiguous or a.flags.f_contiguous):
            a = a.copy(order="K")       # compact, in the view's own axis order
        strides = None
        dense = a
        if not a.flags.c_contiguous:
            strides = a.strides
            axes = sorted(range(a.ndim), key=lambda i: abs(a.strides[i]), reverse=True)
            dense = a.transpose(axes)   # the same memory, seen in C order
            if not dense.flags.c_contiguous:
                strides, dense = None, numpy.ascontiguousarray(a)
        data = as_buffer(dense.reshape(-1).view(numpy.uint8))    # (datetimes export no buffer)
        return _wetlite_neutral, ("a", spec, a.shape, strides, data, writeable)

    def scalar(x):
        spec = _dtype_spec(x.dtype)
        if spec is None:
            return x.__reduce_ex__(protocol)
        return _wetlite_neutral, ("s", spec, x.tobytes())
    return array, scalar


def _dtype_spec(dtype):
    """A NumPy dtype as builtins that any NumPy rebuilds, or None (not neutral).

    A str for a plain dtype (its .str: "<f8", ">i4", "<M8[ns]", "<U5",
    "|S3", "|V16"), ("sub", spec, shape) for a subarray, and ("struct",
    names, formats, offsets, itemsize, titles, aligned, record) for a
    structured dtype.
    """
    if dtype.names is not None:
        formats, offsets, titles = [], [], []
        for name in dtype.names:
            field = dtype.fields[name]
            spec = _dtype_spec(field[0])
            if spec is None:
                return None
            formats.append(spec)
            offsets.append(field[1])
            titles.append(field[2] if len(field) > 2 else None)
        return ("struct", list(dtype.names), formats, offsets, dtype.itemsize, titles,
                bool(dtype.isalignedstruct), dtype.type.__name__ == "record")
    if dtype.subdtype is not None:
        spec = _dtype_spec(dtype.subdtype[0])
        return None if spec is None else ("sub", spec, list(dtype.subdtype[1]))
    if dtype.kind not in _NEUTRAL_KINDS or dtype.hasobject or dtype.type.__module__ != "numpy":
        return None
    return dtype.str


def _spec_dtype(numpy, spec):
    """The dtype a _dtype_spec() describes, built by this side's NumPy."""
    if not isinstance(spec, tuple):
        try:
            return numpy.dtype(spec)
        except TypeError:
            if spec[1:2] in ("f", "c"):
                name = "longdouble" if spec[1] == "f" else "clongdouble"
                raise ValueError(
                    "a NumPy %s array of %s bytes per value cannot be rebuilt here, where %s is %d bytes "
                    "(its size depends on the platform): convert it to float64 or complex128 before sending it"
                    % (name, spec[2:], name, numpy.dtype(getattr(numpy, name)).itemsize))
            raise ValueError("NumPy %s cannot rebuild the dtype %r sent by the other side"
                             % (numpy.__version__, spec))
    if spec[0] == "sub":
        return numpy.dtype((_spec_dtype(numpy, spec[1]), tuple(spec[2])))
    names, formats, offsets, itemsize, titles, aligned, record = spec[1:]
    layout = {"names": names, "formats": [_spec_dtype(numpy, f) for f in formats],
              "offsets": offsets, "itemsize": itemsize}
    if any(t is not None for t in titles):
        layout["titles"] = titles
    dtype = numpy.dtype(layout, align=aligned)
    return numpy.dtype((numpy.record, dtype)) if record else dtype


def _user_numpy():
    """The NumPy of the data at hand, imported the first time arrays arrive.

    wetlite depends on no NumPy: it is imported only to rebuild arrays that
    the other side sent, as pickle itself would import it for NumPy's own
    form (ImportError when this side has none).
    """
    numpy = sys.modules.get("numpy")
    if numpy is None:
        import importlib
        numpy = importlib.import_module("numpy")
    return numpy


def _wetlite_neutral(kind, spec, *fields):
    """Rebuild a NumPy array ("a") or scalar ("s") sent by _neutral_reducers."""
    try:
        numpy = _user_numpy()
    except ImportError as exc:
        raise ImportError("NumPy arrays were sent, but NumPy cannot be imported here (%s)" % exc)
    dtype = _spec_dtype(numpy, spec)
    if kind == "s":
        if not dtype.itemsize:
            return numpy.zeros((), dtype)[()]
        return numpy.ndarray((), dtype, buffer=fields[0])[()]
    shape, strides, data, writeable = fields
    if strides is None and not len(data):
        return numpy.empty(shape, dtype)
    array = numpy.ndarray(shape, dtype, buffer=data, strides=strides)
    if not writeable:
        array.flags.writeable = False
    elif not array.flags.writeable:
        array = array.copy(order="K")       # bytes (protocol 4): readonly
    return array


_NEUTRAL_UNPICKLER = None


def _unpickle(data, buffers, sender_numpy):
    """Unpickle a payload that may hold _wetlite_neutral calls; explain NumPy version mismatches."""
    global _NEUTRAL_UNPICKLER
    pickle = _lean("_pickle", "pickle")
    if _NEUTRAL_UNPICKLER is None:
        class NeutralUnpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if name == "_wetlite_neutral":
                    return _wetlite_neutral
                return pickle.Unpickler.find_class(self, module, name)
        _NEUTRAL_UNPICKLER = NeutralUnpickler
    import io
    stream = io.BytesIO(data)
    unpickler = _NEUTRAL_UNPICKLER(stream, buffers=buffers) if buffers else _NEUTRAL_UNPICKLER(stream)
    try:
        return unpickler.load()
    except Exception as exc:
        hint = _numpy_mismatch(sender_numpy, exc)
        if hint is None:
            raise
        raise ValueError(hint)
    finally:
        unpickler = buffers = None          # (see _loads_payload)


def _numpy_mismatch(sender_numpy, exc):
    """Why unpickling failed, if it is NumPy's own pickle across versions (else None)."""
    local = sys.modules.get("numpy")
    here = getattr(local, "__version__", None)
    if sender_numpy is None or here == sender_numpy:
        return None
    if "numpy" not in str(exc) and not (getattr(exc, "name", None) or "").startswith("numpy"):
        return None
    return ("NumPy objects that only NumPy's own pickle carries were sent by NumPy %s and cannot be read by %s "
            "here (%s: %s). Plain arrays and NumPy scalars cross between NumPy versions; object arrays and "
            "ndarray subclasses (matrix, masked arrays, memmap, recarray) need the same NumPy on both sides: "
            "convert them first (numpy.asarray(x), or x.astype(...) for object arrays), or use numpy==%s here"
            % (sender_numpy, "NumPy " + here if here else "no NumPy", type(exc).__name__, exc, sender_numpy))

# =============================================================================
# 15. Executor client (the host's side)
#    A synchronous call sends, then receives on the calling thread: no thread
#    handoff on the hot path.  Whoever holds the "reading" role reads the
#    connection and hands other calls' replies to their waiters; a pump
#    thread takes the role only while futures from submit() are pending.
# =============================================================================

_LIVE_WORKERS = None            # weakref.WeakSet, created with the first worker


def _self_source():
    """This module's own source as bytes, and its short SHA-256.

    Read through the module's loader, so a copy vendored under another
    package name, or imported from a zip, works as well as a plain file.
    """
    cached = getattr(_self_source, "cache", None)
    if cached is None:
        import hashlib
        module = sys.modules.get(__name__)
        spec = getattr(module, "__spec__", None)
        loader = getattr(module, "__loader__", None)
        text = None
        if loader is not None and hasattr(loader, "get_source"):
            try:
                text = loader.get_source(spec.name if spec is not None else __name__)
            except (ImportError, OSError):
                text = None
        if text is None:
            path = globals().get("__file__") or ""
            if path.endswith((".pyc", ".pyo")):
                path = path[:-1]
            try:
                with open(path, "r", encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                raise ExecutorError("cannot read wetlite's own source (%r) to start a worker" % (path,))
        data = text.encode("utf-8")
        cached = _self_source.cache = (data, hashlib.sha256(data).hexdigest()[:16])
    return cached


_WORKER_BOOT = """\
# Written by wetlite: starts an executor worker from the wetlite.py beside it.
# wetlite.py is imported, not run, so that its bytecode is cached.
import os, sys
sys.dont_write_bytecode = False
if os.environ.get("COVERAGE_PROCESS_START"):
    # Measured by coverage.py (wetlite's scripts/measure_coverage.py): this side too.
    sys.path.extend(p for p in os.environ.get("WETLITE_COVERAGE_PATH", "").split(os.pathsep) if p)
    try:
        import coverage
        coverage.process_startup()
    except Exception:
        pass
import wetlite
sys.exit(wetlite.main(["serve"]))
"""


_RUNTIME_FALLBACK = {}          # digest -> temp dir, when the root cannot hold the runtime copy


def _runtime_dir(root):
    """{root}/state/runtime/<hash>/: a copy of this file as wetlite.py, and its worker boot script.

    Before each start both are compared with what they must hold (a copy that
    differs is written again), and the directory must be trusted.  When the
    root is read-only, a private temp dir holds them instead.
    """
    data, digest = _self_source()
    directory = os.path.join(root, "state", "runtime", digest)
    try:
        _write_runtime(directory, data)
        return directory
    except OSError as exc:
        fallback = _RUNTIME_FALLBACK.get(digest)
        if fallback is None or not os.path.isdir(fallback):
            import atexit
            fallback = _private_temp_dir("runtime")
            try:
                _write_runtime(fallback, data)
            except BaseException:
                _rmtree(fallback)           # it fits nowhere: leave no empty temp dir behind
                raise
            atexit.register(_rmtree, fallback)
            _RUNTIME_FALLBACK[digest] = fallback
            _log().info("cannot write the worker's runtime copy under %s (%s); using %s", root,
                        exc.strerror or exc, fallback)
        return fallback


def _write_runtime(directory, data):
    exists = _check_trusted(directory, "the runtime directory")
    pycache = os.path.join(directory, "__pycache__")
    cached = exists and _check_trusted(pycache, "the runtime directory")
    for name, content in (("wetlite.py", data), ("_wetlite_worker.py", _WORKER_BOOT.encode("ascii"))):
        path = os.path.join(directory, name)
        if not (exists and _file_holds(path, content)):
            _atomic_write(path, content)
    if not cached:
        try:
            # Python would make it with the umask's mode: group-writable under
            # umask 002, and the next start would refuse it.
            os.mkdir(pycache, 0o700)
        except OSError:
            pass                        # made meanwhile, or a read-only root where Python cannot make it either


def _file_holds(path, content):
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(len(content) + 1) == content


_ACTIVATION_NOISE = frozenset(["_", "SHLVL", "PWD", "OLDPWD", "PS1", "PS2", "PS4", "__wetlite_hook"])


def _activation_diff(before, after):
    """What an activation changed: {"set": {...}, "unset": [...], "path_prepend": [...]}."""
    path_key = next((k for k in after if k.upper() == "PATH"), "PATH")
    old_path = [p for p in before.get(path_key, "").split(os.pathsep) if p]
    new_path = [p for p in after.get(path_key, "").split(os.pathsep) if p]
    return {
        "set": {k: v for k, v in after.items()
                if k not in _ACTIVATION_NOISE and k.upper() != "PATH" and before.get(k) != v},
        "unset": sorted(k for k in before if k not in after and k not in _ACTIVATION_NOISE and k.upper() != "PATH"),
        "path_prepend": [p for p in new_path if p not in old_path],
    }


def _apply_activation(base, activation):
    env = dict(base)
    for key in activation["unset"]:
        env.pop(key, None)
    env.update(activation["set"])
    path_key = next((k for k in env if k.upper() == "PATH"), "PATH")
    prepend = activation["path_prepend"]
    rest = [p for p in env.get(path_key, "").split(os.pathsep) if p and p not in prepend]
    env[path_key] = os.pathsep.join(prepend + rest)
    return env


_HANDSHAKE_TIMEOUT = 5.0        # seconds one connection may take to authenticate


def _listen(key, scaffolding):
    """A listening endpoint for one worker: (family, address, server).

    POSIX: a Unix socket in a fresh 0700 dir, in the temp dir or, if that
    path would be too long for a socket, in $XDG_RUNTIME_DIR or /tmp; TCP on
    127.0.0.1 only if none will do.  Windows: a named pipe.  What needs
    removing afterwards goes into ``scaffolding``.
    """
    import socket
    if _WINDOWS:
        from multiprocessing.connection import Listener
        address = r"\\.\pipe\wetlite-%s" % os.urandom(8).hex()
        listener = Listener(address, "AF_PIPE", backlog=1, authkey=key)
        scaffolding.insert(0, listener)
        return "AF_PIPE", address, listener
    import tempfile
    for parent in (tempfile.gettempdir(), os.environ.get("XDG_RUNTIME_DIR"), "/tmp"):
        # wetlite-sock-PID-XXXXXXXX/w.sock must fit sun_path (104 bytes on macOS).
        if not parent or len(os.fsencode(parent)) + 45 > 100 or not os.path.isdir(parent):
            continue
        try:
            directory = _private_temp_dir("sock", parent)
        except OSError:
            continue
        scaffolding.append(directory)
        address = os.path.join(directory, "w.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(address)
        except OSError:
            server.close()
            continue
        scaffolding.insert(0, server)
        server.listen(8)
        return "AF_UNIX", address, server
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    scaffolding.insert(0, server)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    _log().debug("no usable directory for a Unix socket: the worker connects over TCP on 127.0.0.1")
    return "AF_INET", server.getsockname(), server


def _accept_worker(server, family, address, key, proc, deadline):
    """The authenticated connection of the worker, or None if it died or the deadline passed.

    A client that fails to authenticate within _HANDSHAKE_TIMEOUT (an
    intruder on the TCP fallback, say) is dropped, and the wait goes on for
    the worker.
    """
    import socket
    import time
    if family == "AF_PIPE":
        return _accept_pipe(server, address, proc, deadline)
    server.settimeout(0.05)             # to watch the process and the deadline meanwhile
    while proc.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            client = server.accept()[0]
        except socket.timeout:
            continue
        client.settimeout(min(remaining, _HANDSHAKE_TIMEOUT))
        try:
            conn = _SocketConnection(client)
            _deliver_challenge(conn, key)
            _answer_challenge(conn, key)
        except (OSError, EOFError, ProtocolError, ValueError) as exc:
            _log().debug("refused a connection to the worker's socket: %s", exc)
            client.close()
            continue
        client.settimeout(None)
        return conn
    return None


def _accept_pipe(listener, address, proc, deadline):
    """Windows: multiprocessing's Listener on a named pipe, accepting in a
    thread (a pipe has no timeout) until the worker is in or gives up."""
    import threading
    import time
    from multiprocessing.connection import Client
    accepted = {}

    def accept():
        while "stop" not in accepted:
            try:
                conn = listener.accept()
            except Exception:
                continue
            if "stop" in accepted:
                conn.close()
            else:
                accepted["conn"] = conn
            return
    acceptor = threading.Thread(target=accept, name="wetlite-accept")
    acceptor.daemon = True
    acceptor.start()
    while acceptor.is_alive():
        acceptor.join(0.05)
        if acceptor.is_alive() and (proc.poll() is not None or time.monotonic() > deadline):
            accepted["stop"] = True
            try:                                    # wake accept() up
                Client(address, "AF_PIPE").close()
            except (OSError, EOFError):
                pass
            acceptor.join(5)
            break
    return accepted.get("conn")


class _NotSent(WorkerDied):
    """The worker was found gone before a request could be sent: nothing ran,
    so the environment may start a new worker and send it there."""


class _HeldElsewhere(ExecutorError):
    """A RemoteObject in a call's arguments lives in another worker of the
    same environment (a pool): nothing was sent, and the call may go there."""

    def __init__(self, message, handle, worker):
        ExecutorError.__init__(self, message)
        self.handle = handle
        self.worker = worker


_CALL_IDS = None                # itertools.count: call ids, unique in this process (Task.id, handle ids)


def _call_ids():
    global _CALL_IDS
    if _CALL_IDS is None:
        import itertools
        _CALL_IDS = itertools.count(1)
    return _CALL_IDS


class _Waiter(object):
    __slots__ = ("id", "what", "future", "task", "reply", "done", "deadline", "timed_out", "kill_at", "segments",
                 "worker")

    def __init__(self, call_id, what, future, deadline, task=None):
        self.id = call_id
        self.what = what
        self.future = future
        self.task = task                # receives the call's progress (the future, or a synchronous call's Task)
        self.reply = None
        self.done = False
        self.deadline = deadline
        self.timed_out = False
        self.kill_at = None
        self.segments = ()


class _Worker(object):
    """One worker process and its connection, seen from the host."""

    def __init__(self, env, timeout, output):
        import collections
        import threading
        self.env = env
        self.name = env.name
        self.output = output
        self.proc = None
        self.conn = None
        self.protocol = 2
        self._dumps = self._loads = None        # pickle's, set on connecting (no import statement per call)
        self.dead = None                        # the WorkerDied once it is gone
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._reading = False
        self._waiters = {}
        self._order = collections.deque()       # ids in the order the worker runs them
        self._ids = _call_ids()
        self._futures = 0                       # pending calls from submit()
        self._timed = 0                         # pending calls with a deadline
        self._sleepers = 0                      # callers waiting for the reader to hand them a reply
        self._pump = None
        self._closed = False
        self._stderr_tail = collections.deque(maxlen=_OUTPUT_TAIL_LINES)
        self.shm_pool = self.shm_cache = self.shm_worker_prefix = None
        self._shm_freed = ()                    # shm_cache.freed: worker segments to release
        self._pending = []                      # control messages waiting for the send lock
        self._dropped = []                      # ids of released handles, to tell the worker
        self._streams = []
        self._lifeline = None
        self._killing = False                   # a timed-out call's kill is under way
        self._start(timeout)

    # -- starting -----------------------------------------------------------

    def _start(self, timeout):
        """Start the worker and shake hands; on any failure leave nothing behind."""
        import weakref
        global _LIVE_WORKERS
        # What can fail without side effects goes first.
        environ = self.env._worker_environ()
        argv = self.env._worker_argv()
        scaffolding = []            # the listener and its socket dir: gone once connected, or failed
        try:
            self._connect(argv, environ, timeout, scaffolding)
        except BaseException:
            self._abort()
            raise
        finally:
            for item in scaffolding:
                if isinstance(item, str):
                    _rmtree(item)
                else:
                    item.close()
        if _LIVE_WORKERS is None:
            import atexit
            _LIVE_WORKERS = weakref.WeakSet()
            atexit.register(_stop_live_workers)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_disown_workers_in_child)
        _LIVE_WORKERS.add(self)

    def _abort(self):
        """Undo a launch that failed half way."""
        if self.proc is not None:
            _kill_tree(self.proc)
        with self._cond:
            if self.dead is None:
                self.dead = WorkerDied("the worker of environment %r did not start" % self.name)
        self._close_handles()
        for t in self._streams:
            t.join(0.2)

    def _connect(self, argv, environ, timeout, scaffolding):
        """Listen, spawn, accept and say hello.  ``scaffolding`` gets what to clean up."""
        import pickle
        import subprocess
        import threading
        import time
        deadline = time.monotonic() + timeout
        key = os.urandom(32)
        family, address, server = _listen(key, scaffolding)
        shown = "%s:%d" % address if family == "AF_INET" else address
        lifeline_read = ""
        pass_fds = ()
        if not _WINDOWS:
            lifeline_read, self._lifeline = os.pipe()
            pass_fds = (lifeline_read,)
        # The address last: it is a path, and may hold any character but NUL.
        environ[_WORKER_ENV] = "|".join([family, key.hex(), str(lifeline_read), str(os.getpid()), shown])
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=environ, pass_fds=pass_fds,
                                         **_session_kwargs())
        except OSError as exc:
            raise ToolError("cannot start the worker of environment %r with %s: %s" % (self.name, argv[0], exc))
        finally:
            if lifeline_read != "":
                os.close(lifeline_read)
        for stream, is_err in ((self.proc.stdout, False), (self.proc.stderr, True)):
            t = threading.Thread(target=self._pump_output, args=(stream, is_err),
                                 name="wetlite-output-%s" % self.name)
            t.daemon = True
            t.start()
            self._streams.append(t)
        self.conn = _accept_worker(server, family, address, key, self.proc, deadline)
        if self.conn is None:
            died = self.proc.poll() is not None
            _kill_tree(self.proc)
            raise self._died("exited before connecting" if died else "did not connect within %s s" % timeout)
        if not self.conn.poll(max(deadline - time.monotonic(), 0.1)):
            _kill_tree(self.proc)
            raise self._died("did not say hello within %s s" % timeout)
        self._dumps, self._loads = pickle.dumps, pickle.loads
        try:
            hello = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            _kill_tree(self.proc)
            raise self._died("closed the connection before saying hello")
        if not (isinstance(hello, tuple) and len(hello) >= 6 and hello[0] == "hello"):
            raise ProtocolError("the worker of environment %r sent %r instead of a hello" % (self.name, hello))
        if hello[1] != PROTOCOL_VERSION:
            raise ProtocolError(
                "protocol mismatch: host wetlite %s speaks protocol %d, the worker of environment %r runs wetlite "
                "%s (protocol %s) on Python %s; make sure nothing in the environment shadows wetlite"
                % (__version__, PROTOCOL_VERSION, self.name, hello[2], hello[1], hello[3]))
        self.protocol = min(hello[4], pickle.HIGHEST_PROTOCOL)
        self.worker_python = hello[3]
        worker_prefix = host_prefix = None
        if len(hello) > 6 and hello[6] and self.protocol >= 5 and _shm_available():
            token = "wl%s" % os.urandom(4).hex()            # short: macOS caps names at 31 characters
            worker_prefix, host_prefix = token + "w", token + "h"
            self.shm_pool = _ShmPool(host_prefix)
            self.shm_cache = _ShmCache()
            self._shm_freed = self.shm_cache.freed
            self.shm_worker_prefix = worker_prefix
        # The host's prefix too: if the host dies, the worker unlinks what it left.
        self.conn.send_bytes(pickle.dumps(("hello", self.protocol, worker_prefix, host_prefix), 2))

    def _pump_output(self, stream, is_err):
        logger = _log()
        tag = "[%s%s] %%s" % (self.name, ":stderr" if is_err else "")
        mark = None                     # the call the worker marked as printing (section 13)
        # A line longer than _LINE_LIMIT comes in pieces: no output can make the host hold it all.
        for raw in iter(lambda: stream.readline(_LINE_LIMIT), b""):
            if b"\0wetlite:" in raw:
                before, _, word = raw.partition(b"\0wetlite:")
                word = word.strip()
                if word == b"-" or word.isdigit():
                    if before:              # a line left unfinished before the marker
                        self._output_line(before, mark, is_err, logger, tag)
                    mark = None if word == b"-" else int(word)
                    continue
            self._output_line(raw, mark, is_err, logger, tag)
        stream.close()

    def _output_line(self, raw, mark, is_err, logger, tag):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if is_err:
            self._stderr_tail.append(line)
        if mark is None:                # printed outside Python's sys.stdout: the call running now
            try:
                mark = self._order[0]
            except IndexError:
                mark = None
        tasks = _OUTPUT_TASKS
        if tasks is not None and mark is not None:
            task = tasks.get(mark)
            if task is not None:
                task._on_output(line)
        if self.output is not None:
            try:
                self.output(line)
            except Exception:
                logger.exception("the output callback of environment %r failed", self.name)
        else:
            logger.info(tag, line, extra={"task_id": mark, "env_name": self.name,
                                          "stream": "stderr" if is_err else "stdout"})

    # -- calls --------------------------------------------------------------

    def call(self, message, payload_args, what, timeout, future=None, task=None, wait=True):
        """Send one request; wait for its reply (or return ``future``).

        ``what`` names the call in errors: a string, or a (module, function)
        pair formatted only when needed.  ``task`` (``future``, or a Task made
        for a synchronous call's progress callback) gets the call's progress.
        With ``wait`` false, return the request's _Waiter at once: finish()
        reads its reply later on the caller's thread (map on one worker).
        """
        segments = ()
        if payload_args is not None:
            payload, segments = self._arguments(payload_args, what)
            message = message + (payload,)
        call_id = next(self._ids)
        if future is not None and task is None:
            task = future
        if task is not None:
            task._bind(call_id, self)
        data = self._dumps((message[0], call_id) + message[1:], self.protocol)
        waiter = None
        if timeout is not None:
            import time
            timeout = time.monotonic() + timeout
        # The send lock covers registering and sending, so that _order is the
        # order the worker sees (it runs calls in that order).
        with self._send_lock:
            with self._lock:
                if self.dead is not None:
                    raise _NotSent("the worker of environment %r is gone" % self.name)
                fast = timeout is None and future is None and wait and not self._reading and not self._waiters
                if fast:
                    # Nothing else in flight: this thread reads its own reply,
                    # with no waiter and no hand-off.
                    self._reading = True
                    self._order.append(call_id)
                else:
                    waiter = self._register(call_id, what, future, timeout, task, segments)
            if self._shm_freed or self._pending or self._dropped:
                self._send_queued()
            try:
                self.conn.send_bytes(data)
                sent = True
            except (OSError, EOFError, ValueError):
                sent = False
            except BaseException:
                # Interrupted mid-send: the socket may hold half a frame.
                self._forget(call_id, fast)
                self._kill()
                raise
        if not sent:
            self._forget(call_id, fast)
            self._on_death()
            raise _NotSent("the worker of environment %r is gone" % self.name)
        if fast:
            return self._fast_reply(call_id, what, segments, task)
        if not wait:
            return waiter
        if future is not None:
            self._ensure_pump()
            if timeout is not None:
                # Whoever reads may be blocked on a long call: a timer keeps the deadline.
                import time
                self._expire_later(timeout - time.monotonic())
            return future
        try:
            self._wait(waiter)
        except BaseException:
            self._kill()                        # interrupted mid-call, as in _fast_reply
            raise
        return self._result(waiter)

    def _arguments(self, payload_args, what):
        """The pickled ``(args, kwargs)`` of a request, and the shared-memory segments it took."""
        args, kwargs = payload_args
        plain = not kwargs
        if plain:
            for a in args:
                if type(a) not in _PLAIN_TYPES:
                    plain = False
                    break
        try:
            if plain:
                payload = self._dumps((tuple(args), {}), self.protocol)     # the common case, decided cheaply
            elif _HANDLES_MADE:
                payload = self._dumps_with_handles(args, kwargs, self.shm_pool)
            else:
                payload = _dumps_payload((tuple(args), dict(kwargs) if kwargs else {}), self.protocol,
                                         self.shm_pool)
        except ExecutorError:
            raise                           # a RemoteObject that cannot go there says why
        except Exception as exc:
            raise ExecutorError("cannot send the arguments of %s: they cannot be pickled (%s: %s); nothing was "
                                "sent" % (self._what(what), type(exc).__name__, exc))
        if type(payload) is tuple:
            return payload, [ref[0] for ref in payload[2]]
        return payload, ()

    def _register(self, call_id, what, future, deadline, task, segments):
        """A _Waiter for a request about to be sent, in the order the worker runs them; the caller holds
        both locks."""
        waiter = _Waiter(call_id, what, future, deadline, task)
        waiter.worker = self
        waiter.segments = segments
        self._waiters[call_id] = waiter
        if deadline is not None:
            self._timed += 1
        if future is not None:
            self._futures += 1
        self._order.append(call_id)
        return waiter

    def _send_queued(self):
        """Before a request, what waited for the send lock; the caller holds it."""
        if self._shm_freed:
            self._queue_release()
        if self._pending:
            self._flush_pending()
        if self._dropped:
            self._send_dropped()

    def send_all(self, message, many, what, timeout):
        """Requests ``message`` + each ``(args, kwargs)`` of ``many``, in one write where the
        connection allows; their _Waiters, for finish().

        map on one worker sends its calls two by two this way: the worker
        wakes once for both and answers both before this side runs again,
        which on a single CPU halves the context switches of a loop of
        execute().
        """
        prepared = []
        try:
            for payload_args in many:
                payload, segments = self._arguments(payload_args, what)
                prepared.append((next(self._ids), payload, segments))
        except BaseException:
            for _, _, segments in prepared:
                if segments:
                    self.shm_pool.release(segments)
            raise
        dumps, protocol = self._dumps, self.protocol
        frames = [dumps((message[0], call_id) + message[1:] + (payload,), protocol) for call_id, payload, _ in prepared]
        if timeout is not None:
            import time
            timeout = time.monotonic() + timeout
        with self._send_lock:
            with self._lock:
                if self.dead is not None:
                    raise _NotSent("the worker of environment %r is gone" % self.name)
                waiters = [self._register(call_id, what, None, timeout, None, segments)
                           for call_id, _, segments in prepared]
            if self._shm_freed or self._pending or self._dropped:
                self._send_queued()
            try:
                self._send_frames(frames)
                sent = True
            except (OSError, EOFError, ValueError):
                sent = False
            except BaseException:
                for waiter in waiters:          # interrupted mid-send: the socket may hold half a frame
                    self._forget(waiter.id, False)
                self._kill()
                raise
        if not sent:
            for waiter in waiters:
                self._forget(waiter.id, False)
            self._on_death()
            raise _NotSent("the worker of environment %r is gone" % self.name)
        return waiters

    def _send_frames(self, frames):
        """Send messages, several in one system call on a socket; the caller holds the send lock."""
        send_frames = getattr(self.conn, "send_frames", None)      # (not on a Windows pipe)
        if send_frames is not None:
            send_frames(frames)
            return
        for data in frames:
            self.conn.send_bytes(data)

    def _dumps_with_handles(self, args, kwargs, pool):
        """Pickle arguments that may hold RemoteObjects: they check that this is their worker."""
        global _PICKLING_FOR
        if _PICKLING_FOR is None:
            import _thread
            _PICKLING_FOR = _thread._local()
        _PICKLING_FOR.worker = self
        try:
            return _dumps_payload((tuple(args), dict(kwargs) if kwargs else {}), self.protocol, pool)
        finally:
            _PICKLING_FOR.worker = None

    def drop_handle(self, handle_id):
        """Tell the worker to forget a handle.  Safe in __del__: it never waits for a lock."""
        if self.dead is not None or self._closed:
            return
        self._dropped.append(handle_id)
        if self._send_lock.acquire(False):      # else the next call sends it
            try:
                self._send_dropped()
            finally:
                self._send_lock.release()

    def _send_dropped(self):
        """Send the dropped handle ids; the caller holds the send lock."""
        import pickle
        ids = self._dropped[:]
        del self._dropped[:len(ids)]            # (more may be added meanwhile, at the end)
        if ids:
            try:
                self.conn.send_bytes(pickle.dumps(("drop", ids), self.protocol))
            except (OSError, EOFError, ValueError):
                pass

    def _forget(self, call_id, fast):
        """Undo the registration of a call that was never (wholly) sent."""
        with self._lock:
            if fast:
                self._reading = False
            waiter = self._waiters.pop(call_id, None)
            if waiter is not None:
                self._timed -= waiter.deadline is not None
                self._futures -= waiter.future is not None
            try:
                self._order.remove(call_id)
            except ValueError:
                pass

    def _fast_reply(self, call_id, what, segments, task=None):
        reply = None
        try:
            while True:
                reply = self._loads(self.conn.recv_bytes())
                if reply[1] == call_id:
                    if reply[0] != "progress":
                        break
                    if task is not None:
                        task._on_progress(reply[2:])
                else:
                    self._dispatch(reply)       # e.g. "cancelled" for a queued call sent after ours
                reply = None
        except (EOFError, OSError):
            reply = None
        except BaseException:
            # Interrupted (Ctrl-C) mid-call: the worker still runs it and the
            # connection may hold half a message.  Stop it; the next call
            # starts a fresh one.
            self._kill()
            raise
        finally:
            with self._lock:
                self._reading = False
                order = self._order
                if order and order[0] == call_id:
                    order.popleft()
                elif call_id in order:
                    order.remove(call_id)
                if self._sleepers or self._futures:
                    self._cond.notify_all()
        if reply is None:
            self._on_death()
            raise self.dead
        if segments and reply[0] == "cancelled":
            self.shm_pool.release(segments)     # never read (else the worker releases them)
        return self._decode(reply, what)

    def _what(self, what):
        if isinstance(what, tuple):
            return "%s:%s in environment %r" % (what[0], what[1], self.name)
        return what

    def _result(self, waiter):
        if waiter.timed_out:
            raise self._timeout_error(waiter)
        return self._decode(waiter.reply, waiter.what)

    def _timeout_error(self, waiter):
        what = self._what(waiter.what)
        if waiter.reply is not None and waiter.reply[0] == "died":
            return CallTimeout("%s did not finish within its timeout and did not stop when interrupted; the worker "
                               "of environment %r was killed (it restarts on the next call)" % (what, self.name))
        if waiter.kill_at is None:
            return CallTimeout("%s did not start within its timeout; it was cancelled" % what)
        return CallTimeout("%s did not finish within its timeout; it was interrupted" % what)

    def _decode(self, reply, what):
        """The result a reply carries, or raise the error it reports."""
        kind = reply[0]
        if kind == "ok":
            payload = reply[2]
            try:
                if type(payload) is not tuple:
                    return self._loads(payload)
                return _loads_payload(payload, self.shm_cache)
            except (Exception, SystemExit) as exc:
                raise ExecutorError("the result of %s could not be unpickled in the host (%s: %s)"
                                    % (self._what(what), type(exc).__name__, exc))
            finally:
                if self._shm_freed:
                    self._queue_release()       # copied out: the worker may reuse those segments
                    self._send_soon(None)
        if kind == "err":
            raise _rebuild_error(reply[2], self._what(what))
        if kind == "ref":
            return RemoteObject._wl_make(self.env, self, reply[1], reply[2])
        if kind == "proxy":
            return _ProxyInfo(reply[2])
        if kind == "died":
            raise reply[2]
        raise ExecutorError("%s was cancelled before it started" % self._what(what))

    def _wait(self, waiter):
        """Wait for ``waiter``, reading the connection whenever nobody else is.

        A caller that sleeps while another thread reads wakes up at its own
        deadlines, since the reader may be blocked on a long call.
        """
        cond, lock = self._cond, self._lock        # (the condition's own lock: cheaper to take directly)
        while True:
            with lock:
                if waiter.done:
                    return
                reader = not self._reading
                if reader:
                    self._reading = True
                else:
                    import time
                    wake = self._next_deadline_locked()
                    self._sleepers += 1
                    try:
                        cond.wait(None if wake is None else max(0.0, wake - time.monotonic()) + 0.001)
                    finally:
                        self._sleepers -= 1
            if not reader:
                if not waiter.done:
                    self._expire()
                continue
            try:
                self._read(waiter)
            finally:
                with lock:
                    self._reading = False
                    if self._sleepers or self._futures:
                        cond.notify_all()
            if waiter.done:
                return

    def _read(self, waiter=None):
        """Read and dispatch replies until ``waiter`` is done (or, for the
        pump, until no future is pending); handle deadlines on the way."""
        loads = self._loads
        conn = self.conn
        while self.dead is None and (not waiter.done if waiter is not None else self._futures > 0):
            if self._timed:
                deadline = self._next_deadline()
                if deadline is not None:
                    import time
                    remaining = deadline - time.monotonic()
                    try:
                        ready = remaining > 0 and conn.poll(remaining)
                    except (OSError, EOFError):
                        ready = True
                    if not ready:
                        self._expire()
                        continue
            try:
                reply = loads(conn.recv_bytes())
            except (EOFError, OSError):
                self._on_death()
                return
            self._dispatch(reply)

    def _next_deadline(self):
        with self._lock:
            return self._next_deadline_locked()

    def _next_deadline_locked(self):
        times = [w.kill_at if w.timed_out else w.deadline for w in self._waiters.values()]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def _expire(self):
        """Stop timed-out calls: interrupt the running one (and kill the worker
        if it ignores that), cancel queued ones without waiting for them."""
        import time
        now = time.monotonic()
        with self._lock:
            running = self._order[0] if self._order else None
            late = [w for w in self._waiters.values() if w.kill_at is not None and w.kill_at <= now]
            if late:                            # one kill, one warning, whoever noticed first
                late, self._killing = ([] if self._killing else late), True
            fresh = [w for w in self._waiters.values()
                     if not w.timed_out and w.deadline is not None and w.deadline <= now]
            for w in fresh:
                w.timed_out = True
                if w.id == running:
                    w.kill_at = now + _INTERRUPT_GRACE
                elif w.future is None:
                    w.done = True               # queued: its caller need not wait for the worker
            if fresh:
                self._cond.notify_all()
        if late:
            _log().warning("environment %r: %s did not stop after an interrupt; killing its worker",
                           self.name, self._what(late[0].what))
            self._kill()
            return
        for w in fresh:
            if w.id == running:
                # Its future settles when the call has stopped: on its reply, or when the kill is done.
                self._interrupt(w.id)
                self._expire_later(_INTERRUPT_GRACE)
            else:
                self._request_cancel(w.id)
                if w.future is not None:
                    self._settle_future(w, self._timeout_error(w))     # queued: it never starts

    def _expire_later(self, delay):
        import threading
        timer = threading.Timer(max(delay, 0.0) + 0.001, self._expire)
        timer.daemon = True
        timer.start()

    def _dispatch(self, reply):
        kind = reply[0]
        if kind == "release":                   # the worker is done with these argument segments
            if self.shm_pool is not None:
                self.shm_pool.release(reply[1])
            return
        if kind == "progress":
            waiter = self._waiters.get(reply[1])
            if waiter is not None and waiter.task is not None:
                waiter.task._on_progress(reply[2:])
            return
        with self._lock:
            waiter = self._waiters.pop(reply[1], None)
            if waiter is None:
                return
            order = self._order
            if order and order[0] == reply[1]:
                order.popleft()
            else:
                try:
                    order.remove(reply[1])
                except ValueError:
                    pass
            if waiter.deadline is not None:
                self._timed -= 1
            if waiter.segments and reply[0] == "cancelled":
                self.shm_pool.release(waiter.segments)     # never read (else the worker releases them)
            unread = waiter.timed_out or (waiter.future is not None and waiter.future.done())
            waiter.reply = reply
            waiter.done = True
            if waiter.future is not None:
                self._futures -= 1
            if self._sleepers:
                self._cond.notify_all()
        if unread:
            # Nobody will decode this reply: let the worker reuse its result segments.
            if reply[0] == "ok" and type(reply[2]) is tuple:
                self._release([ref[0] for ref in reply[2][2]])
            if waiter.timed_out and waiter.future is not None:
                self._settle_future(waiter, self._timeout_error(waiter))    # it has stopped after its interrupt
        elif waiter.future is not None:
            try:
                self._settle_future(waiter, None)
            except BaseException as exc:
                self._settle_future(waiter, exc)

    def _settle_future(self, waiter, error):
        future = waiter.future
        if future.done():
            return
        if error is None:
            future.set_result(self._result(waiter))
        else:
            future.set_exception(error)

    def _ensure_pump(self):
        import threading
        with self._cond:
            if self._pump is None:
                self._pump = threading.Thread(target=self._pump_replies, name="wetlite-replies-%s" % self.name)
                self._pump.daemon = True
                self._pump.start()
            self._cond.notify_all()

    def _pump_replies(self):
        import time
        cond = self._cond
        while True:
            with cond:
                if self._closed or self.dead is not None:
                    return
                reader = self._futures > 0 and not self._reading
                if reader:
                    self._reading = True
                else:
                    wake = self._next_deadline_locked() if self._futures else None
                    cond.wait(None if wake is None else max(0.0, wake - time.monotonic()) + 0.001)
            if not reader:
                if self._futures:
                    self._expire()
                continue
            try:
                self._read()
            finally:
                with cond:
                    self._reading = False
                    if self._sleepers:
                        cond.notify_all()

    def finish(self, waiter):
        """The result of a request sent with wait=False: read replies on this
        thread until it has come (deadlines are kept meanwhile)."""
        try:
            self._wait(waiter)
        except BaseException:
            self._kill()                        # interrupted mid-read, as in call()
            raise
        return self._result(waiter)

    def stop(self, waiters, grace):
        """Cancel requests sent with wait=False, as Task.cancel() would, and
        wait until they have stopped: queued ones are dropped, a running one
        gets ``grace`` seconds, then the interrupt, then the kill."""
        import time
        stop_at = time.monotonic() + grace
        with self._cond:
            waiters = [w for w in waiters if not w.done and self.dead is None]
            for w in waiters:
                if w.deadline is None:
                    w.deadline = stop_at
                    self._timed += 1
                elif not w.timed_out and stop_at < w.deadline:
                    w.deadline = stop_at
        for w in waiters:
            self._request_cancel(w.id)
        for w in waiters:
            try:
                self._wait(w)
            except BaseException:
                self._kill()
                raise
            reply = w.reply
            if reply is not None and reply[0] == "ok" and type(reply[2]) is tuple:
                self._release([ref[0] for ref in reply[2][2]])      # a result nobody will take

    def is_running(self, call_id):
        order = self._order
        return bool(order) and order[0] == call_id

    def cancel_call(self, call_id, grace):
        """Stop call ``call_id`` (Task.cancel): at once the worker drops it if it
        has not started, or cancel_requested() turns true in it; after
        ``grace`` seconds it is interrupted, then killed, as a timed-out call
        (see _expire).  Return whether it is running."""
        import time
        if grace is None:
            grace = self.env.cancel_grace
        with self._cond:
            waiter = self._waiters.get(call_id)
            if waiter is None or self.dead is not None:
                return False                    # answered already: its task is settling
            running = self._order[0] == call_id
            stop_at = time.monotonic() + grace
            if waiter.deadline is None:
                waiter.deadline = stop_at
                self._timed += 1
            elif not waiter.timed_out and stop_at < waiter.deadline:
                waiter.deadline = stop_at
            self._cond.notify_all()             # readers recompute their deadlines
        self._request_cancel(call_id)
        self._ensure_pump()                     # its reply must be read, or the grace would end in a kill
        self._expire_later(grace)
        return running

    def _request_cancel(self, call_id):
        """The worker drops call ``call_id`` before it starts, or cancel_requested() is true in it."""
        if self._lifeline is not None:
            try:
                os.write(self._lifeline, b"cancel %d\n" % call_id)
                return
            except OSError:
                pass
        self._send_soon(("cancel", call_id))    # Windows: read between calls only

    # -- stopping -----------------------------------------------------------

    def _interrupt(self, call_id=None):
        """Stop call ``call_id`` if it is the one running (None: whatever runs, and exit).

        POSIX: a control line to the worker's reader thread, which interrupts
        only that call.  Windows: CTRL_BREAK to the worker's process group.
        """
        try:
            if self._lifeline is not None:
                line = b"exit\n" if call_id is None else b"interrupt %d\n" % call_id
                os.write(self._lifeline, line)
            elif _WINDOWS:
                import signal
                os.kill(self.proc.pid, signal.CTRL_BREAK_EVENT)
        except OSError:
            pass

    def _release(self, names):
        """Tell the worker it may reuse these result segments."""
        self._send_soon(("release", names))

    def _queue_release(self):
        """Queue the release of the worker's segments this side is done with
        (results copied out, or whose lent arrays are gone)."""
        names = self.shm_cache.drain()
        if names:
            with self._lock:
                self._pending.append(("release", names))

    def _send_soon(self, message):
        """Send a small control message without waiting for the send lock.

        Its holder may be blocked sending a large request while the worker is
        blocked sending to the thread that reads, which may be this one: if
        the lock is taken, the next call sends the message before its own.
        (None: only send what is queued.)
        """
        if message is not None:
            with self._lock:
                self._pending.append(message)
        if self._send_lock.acquire(False):
            try:
                self._flush_pending()
            finally:
                self._send_lock.release()

    def _flush_pending(self):
        """Send queued control messages; the caller holds the send lock."""
        import pickle
        with self._lock:
            messages, self._pending = self._pending, []
        for message in messages:
            try:
                self.conn.send_bytes(pickle.dumps(message, self.protocol))
            except (OSError, EOFError, ValueError):
                return

    def _send_quietly(self, message):
        import pickle
        try:
            with self._send_lock:
                self.conn.send_bytes(pickle.dumps(message, self.protocol))
        except (OSError, EOFError, ValueError):
            pass

    def _kill(self):
        if self.proc is not None:
            _kill_tree(self.proc)
        if self.conn is not None:
            self._on_death()

    def _died(self, what):
        """A WorkerDied for this worker, with its exit status and stderr tail."""
        import subprocess
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
        for t in self._streams:
            t.join(0.2)
        signal_number = -code if code is not None and code < 0 else None
        tail = "\n".join(self._stderr_tail)
        status = ("killed by signal %d" % signal_number if signal_number else
                  "exit code %s" % code if code is not None else "still running")
        return WorkerDied("the worker of environment %r %s (%s)%s" % (
            self.name, what, status, ":\n" + _indent(self._stderr_tail) if tail else ""),
            exitcode=code, signal=signal_number, stderr_tail=tail)

    def _on_death(self):
        """Fail every pending call: the worker is gone."""
        with self._cond:
            if self.dead is not None:
                return
            # Until its status is known, callers see this.
            self.dead = WorkerDied("the worker of environment %r is gone" % self.name)
        if self.proc is not None:
            _kill_tree(self.proc)       # its children may still hold the output pipes
        self._fail_all(self._died("died"))
        self._close_handles()
        self._free_shared_memory(worker_gone=True)

    def _fail_all(self, error):
        """Mark the worker gone with ``error``; every pending call fails with it."""
        with self._cond:
            self.dead = error
            waiters = list(self._waiters.values())
            self._waiters.clear()
            self._order.clear()
            self._futures = self._timed = 0
            for w in waiters:
                w.reply = ("died", w.id, error)
                w.done = True
            self._cond.notify_all()
        for w in waiters:
            if w.future is not None and not w.future.done():
                w.future.set_exception(self._timeout_error(w) if w.timed_out else error)

    def _free_shared_memory(self, worker_gone):
        """Unlink our segments; if the worker died, unlink its segments too."""
        if self.shm_pool is None:
            return
        self.shm_pool.close()
        self.shm_cache.close(unlink=worker_gone)
        if worker_gone:
            _sweep_segments(self.shm_worker_prefix)     # those it made but never announced

    def _close_handles(self):
        if self._lifeline is not None:
            try:
                os.close(self._lifeline)
            except OSError:
                pass
            self._lifeline = None
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass

    def close(self):
        """Ask the worker to exit, wait a grace period, then kill its tree.  Idempotent."""
        import subprocess
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self.dead is None and self.conn is not None:
            busy = bool(self._order)
            self._send_quietly(("exit",))
            if busy:
                self._interrupt()               # stop the running call so the exit is read
        if self.proc is not None:
            try:
                self.proc.wait(timeout=_EXIT_GRACE)
            except subprocess.TimeoutExpired:
                pass
            _kill_tree(self.proc)
        if self.dead is None:
            self._fail_all(WorkerDied("the worker of environment %r was stopped by exit()" % self.name,
                                      exitcode=self.proc.returncode if self.proc else None))
        self._close_handles()
        self._free_shared_memory(worker_gone=True)      # it has exited (or was killed) by now
        for t in self._streams:
            t.join(0.5)


def _disown_workers_in_child():
    """In a fork()ed child of the host (multiprocessing's fork start method,
    say): close the inherited lifeline and connection of every worker, so
    that a worker sees its host die even while the child lives, and the
    child never talks to them (nor stops them at its exit).  A call in the
    child starts a worker of its own."""
    global _LIVE_WORKERS
    import weakref
    workers, _LIVE_WORKERS = list(_LIVE_WORKERS or ()), weakref.WeakSet()
    for worker in workers:
        worker.dead = WorkerDied("the worker of environment %r belongs to the parent process" % worker.name)
        worker._closed = True
        worker.shm_pool = None              # its segments are the parent's to unlink
        worker._close_handles()


def _stop_live_workers():
    for worker in list(_LIVE_WORKERS or ()):
        try:
            worker.close()
        except Exception:
            pass

# =============================================================================
# 16. Tasks and progress
#    A Task is a concurrent.futures.Future for one call, with progress,
#    per-call output and a cancel that reaches the call.  Inside a call (in a
#    worker, or in this process for main_environment) report_progress() and
#    cancel_requested() talk to it.  Task callbacks run on one wetlite
#    thread, in order; an exception in one is logged.
# =============================================================================


class Progress(tuple):
    """How far a call has come: ``(current, total, message)``, each possibly None."""

    __slots__ = ()

    def __new__(cls, current=None, total=None, message=None):
        return tuple.__new__(cls, (current, total, message))

    current = property(lambda self: self[0])
    total = property(lambda self: self[1])
    message = property(lambda self: self[2])

    def __repr__(self):
        return "Progress(current=%r, total=%r, message=%r)" % tuple(self)

    def __reduce__(self):
        return (Progress, tuple(self))


# --- inside a call -------------------------------------------------------------

_IN_PROCESS = None          # a _thread._local: the _CallScope of the main_environment call a thread runs
_REPORTER = None            # the worker's running call's _CallScope while no main_environment call can run:
                            # report_progress()'s fast path, one global read (_WorkerState.reporter is the truth)


class _CallScope(object):
    """A running call seen from inside: its progress reports, coalesced to at
    most one every _PROGRESS_INTERVAL (the latest wins, and the last one is
    always sent), and, for calls in this process, whether it was cancelled."""

    __slots__ = ("call_id", "sink", "latest", "sent", "next_at", "armed", "done", "cancelled", "lock", "clock")

    def __init__(self, call_id, sink):
        import time
        self.call_id = call_id
        self.sink = sink                    # sink(call_id, (current, total, message))
        self.latest = self.sent = None
        self.next_at = 0.0
        self.armed = self.done = self.cancelled = False
        self.lock = _thread_lock()
        self.clock = time.monotonic

    def flush(self):
        """Send the latest report: True if sent, False if its turn has not come yet, None if there is
        nothing new."""
        with self.lock:
            values = self.latest
            if values is self.sent or self.done:
                return None
            now = self.clock()
            if now < self.next_at:
                return False
            self.sent = values
            self.next_at = now + _PROGRESS_INTERVAL
            self.sink(self.call_id, values)
            return True

    def finish(self):
        """The call is over: send what is left, then nothing more."""
        with self.lock:
            if self.latest is not self.sent and not self.done:
                self.sent = self.latest
                self.sink(self.call_id, self.latest)
            self.done = True


def _current_scope():
    local = _IN_PROCESS
    if local is not None:
        scope = getattr(local, "scope", None)
        if scope is not None:
            return scope
    call_id = _WorkerState.current
    if call_id is None:
        return None
    scope = _WorkerState.reporter
    if scope is None or scope.call_id != call_id:
        scope = _WorkerState.reporter = _CallScope(call_id, _send_progress)
        _WorkerState.after_call = True
        _use_fast_reporter(scope)
    return scope


def _use_fast_reporter(scope):
    """Let report_progress() find ``scope`` with one global read, unless main_environment calls
    (thread-local scopes) may run in this process: then it must look up the thread's own scope."""
    global _REPORTER
    _REPORTER = scope
    if _IN_PROCESS is not None:             # (checked after the store: _run_in_scope clears it after its own)
        _REPORTER = None


def report_progress(current=None, total=None, message=None):
    """Tell the host how far the running call has come.

    Use it inside a function that an environment runs (``import wetlite``
    there gives the running worker's module).  It is cheap: reports are
    coalesced to at most one every 50 ms, and the last one always reaches
    the host, where it sets ``task.progress`` and calls the progress
    callbacks.  Outside a call it does nothing.
    """
    scope = _REPORTER                       # the fast path: a store of a tuple, no lock, no clock
    if scope is None:
        scope = _current_scope()
        if scope is None:
            return
    scope.latest = (current, total, message)
    if not scope.armed:                     # the first report of a burst goes now, if its turn has come;
        scope.armed = True                  # then the flusher sends the latest one each interval
        scope.flush()
        _flush_later(scope)


def cancel_requested():
    """True once the host asked the running call to stop (Task.cancel()).

    A call that checks it now and then can stop cleanly; one that does not
    is interrupted after the cancel grace period.  False outside a call.
    """
    local = _IN_PROCESS
    if local is not None:
        scope = getattr(local, "scope", None)
        if scope is not None:
            return scope.cancelled
    call_id = _WorkerState.current
    return call_id is not None and call_id in _WorkerState.cancelled


def _send_progress(call_id, values):
    """The worker's progress sink: a message to the host."""
    pickle = _lean("_pickle", "pickle")
    try:
        data = pickle.dumps(("progress", call_id) + values, _WorkerState.protocol)
    except Exception:                   # odd values: numbers or nothing, and the message as text
        current, total, message = values
        numbers = [v if type(v) in (int, float) else None for v in (current, total)]
        data = pickle.dumps(("progress", call_id, numbers[0], numbers[1],
                             None if message is None else str(message)), _WorkerState.protocol)
    try:
        _WorkerState.send(data)
    except (OSError, EOFError):
        pass                            # the host is gone; the worker is on its way out


_FLUSHER = []               # [wake lock, armed scopes] once the flusher thread runs


def _flush_later(scope):
    """Have the flusher thread send ``scope``'s latest report once its interval has passed."""
    import _thread
    with _FLUSHER_LOCK:
        if not _FLUSHER:
            wake = _thread.allocate_lock()
            wake.acquire()
            _FLUSHER.extend([wake, []])
            _thread.start_new_thread(_run_flusher, tuple(_FLUSHER))
        wake, armed = _FLUSHER
        armed.append(scope)
        if wake.locked():
            wake.release()


def _run_flusher(wake, armed):
    import time
    while True:
        wake.acquire()
        while armed:
            scope = armed[0]
            delay = scope.next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            del armed[0]
            if scope.flush() is not None:
                armed.append(scope)                         # sent (or just sent by another): next interval
                continue
            scope.armed = False                             # nothing new: the burst is over
            if scope.latest is not scope.sent and not scope.done and not scope.armed:
                scope.armed = True                          # (a report came meanwhile)
                armed.append(scope)


_FLUSHER_LOCK = _thread_lock()


# --- the callback thread -------------------------------------------------------------

_CALLBACKS = []             # [queue, thread] once the callback thread runs


def _callback_soon(function, *args):
    """Run ``function(*args)`` on wetlite's callback thread, after what is queued."""
    if not _CALLBACKS:
        with _FLUSHER_LOCK:
            if not _CALLBACKS:
                import queue
                import threading
                jobs = queue.SimpleQueue()
                thread = threading.Thread(target=_run_callbacks, args=(jobs,), name="wetlite-callbacks")
                thread.daemon = True
                thread.start()
                _CALLBACKS.extend([jobs, thread])
    _CALLBACKS[0].put((function, args))


def _run_callbacks(jobs):
    while True:
        function, args = jobs.get()
        try:
            function(*args)
        except BaseException:
            _log().exception("a task callback (%r) failed", function)


def _callbacks_drained():
    """Wait until the callbacks queued so far have run (unless this is the callback thread)."""
    if _CALLBACKS:
        import threading
        if threading.current_thread() is _CALLBACKS[1]:
            return
        done = threading.Event()
        _callback_soon(done.set)
        done.wait()


def _check_callback(function, what):
    if function is not None and not callable(function):
        raise SpecError("%s must be a function, not %r" % (what, function))


# --- Task ----------------------------------------------------------------------------


def __getattr__(name):
    # Module attributes made on first use (PEP 562, 3.7+).  Task subclasses
    # concurrent.futures.Future, whose import costs ~6 ms (it loads logging).
    if name == "Task":
        return _task_class()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


_OUTPUT_TASKS = None        # weakref.WeakValueDictionary: call id -> Task with output callbacks


def _task_class():
    cls = globals().get("Task")
    if cls is not None:
        return cls
    import concurrent.futures
    Future = concurrent.futures.Future

    class Task(Future):
        """One call in an environment, from ``env.submit()`` (or ``map``).

        A concurrent.futures.Future: ``wait``, ``as_completed`` and
        ``asyncio.wrap_future`` take it, and ``await task`` works.  Also:

        - ``progress``: the latest Progress(current, total, message) the call
          reported with ``wetlite.report_progress``, or None;
        - ``add_progress_callback(fn)``: ``fn(task, progress)`` for each report;
        - ``add_output_callback(fn)``: ``fn(task, line)`` for each line the call prints;
        - ``cancel()``: stop the call (see there);
        - ``id``: the call's id (``record.task_id`` of its output's log records),
          ``env_name``: its environment.

        Callbacks run on one wetlite thread, in order, never two at once; an
        exception in one is logged.  They may run shortly after the result is set.
        """

        def __init__(self, env_name, what, cancel_grace=None):
            Future.__init__(self)
            self.id = None
            self.env_name = env_name
            self.progress = None
            self._what = what
            self._cancel_grace = cancel_grace       # None: the environment's
            self._runner = None                     # what runs it: cancel_call(id, grace), is_running(id)
            self._progress_callbacks = []
            self._output_callbacks = []
            self._task_lock = _thread_lock()
            self._cancel_asked = False
            self._settling = False
            self._ended = False

        def __repr__(self):
            if self.cancelled():
                state = "cancelled"
            elif self.done():
                state = "failed" if self.exception(0) is not None else "finished"
            elif self._cancel_asked:
                state = "cancelling"
            else:
                state = "running" if self.running() else "pending"
            what = self._what
            if isinstance(what, tuple):
                what = "%s:%s" % what
            return "<Task %s %s in environment %r: %s>" % (self.id, what, self.env_name, state)

        def __await__(self):
            import asyncio
            return asyncio.wrap_future(self).__await__()

        def running(self):
            runner = self._runner
            return not self.done() and runner is not None and runner.is_running(self.id)

        def cancel(self):
            """Stop this call; True unless it already finished.

            A queued call never starts.  A running call first sees
            ``wetlite.cancel_requested()`` become true; after the cancel grace
            (``cancel_grace=`` of the call, else ``env.cancel_grace``, 2 s by
            default) it is interrupted as a timeout would be, and if it still
            runs its worker is killed (a new one starts on the next call).
            Either way the task ends cancelled: ``result()`` then raises
            CancelledError.  Unlike a plain Future, ``result()`` waits until
            the call has stopped (on its own, interrupted, or its worker
            killed); so does a task's CallTimeout.
            """
            with self._task_lock:
                if self._settling or self.done():
                    return self.cancelled()
                if self._cancel_asked:
                    return True
                self._cancel_asked = True
            runner = self._runner
            if runner is None or not runner.cancel_call(self.id, self._cancel_grace):
                self._end_cancelled()           # it was not running: it never will
            return True

        def set_result(self, result):
            if self._may_settle():
                Future.set_result(self, result)

        def set_exception(self, exception):
            if self._may_settle():
                Future.set_exception(self, exception)

        def _may_settle(self):
            """May the outcome be set?  Not if cancel() came first: the task ends cancelled instead."""
            with self._task_lock:
                if self._settling or self.done():
                    return False
                if not self._cancel_asked:
                    self._settling = True
                    return True
            self._end_cancelled()
            return False

        def _end_cancelled(self):
            with self._task_lock:
                if self._ended:
                    return
                self._ended = True
            Future.cancel(self)                     # never RUNNING, so this works
            self.set_running_or_notify_cancel()     # and this wakes wait() and as_completed()

        def add_progress_callback(self, fn):
            """Call ``fn(task, progress)`` for each progress report (at once for the latest, if any)."""
            _check_callback(fn, "the progress callback")
            with self._task_lock:
                self._progress_callbacks.append(fn)
                if self.progress is not None:
                    _callback_soon(fn, self, self.progress)

        def add_output_callback(self, fn):
            """Call ``fn(task, line)`` for each line this call prints (stdout and stderr) from now
            on (``submit(..., output=fn)`` misses none).

            In main_environment calls print to the host's own streams, and
            this is never called.
            """
            _check_callback(fn, "the output callback")
            with self._task_lock:
                self._output_callbacks.append(fn)
            if self.id is not None:
                _watch_output(self)

        def _bind(self, call_id, runner):
            self.id = call_id
            self._runner = runner
            if self._output_callbacks:
                _watch_output(self)

        def _on_progress(self, values):
            with self._task_lock:
                self.progress = progress = Progress(*values)
                for fn in self._progress_callbacks:
                    _callback_soon(fn, self, progress)

        def _on_output(self, line):
            with self._task_lock:
                for fn in self._output_callbacks:
                    _callback_soon(fn, self, line)

    globals()["Task"] = Task
    return Task


def _watch_output(task):
    global _OUTPUT_TASKS
    if _OUTPUT_TASKS is None:
        import weakref
        _OUTPUT_TASKS = weakref.WeakValueDictionary()
    _OUTPUT_TASKS[task.id] = task


def _new_task(env, what, cancel_grace=None, progress=None):
    task = _task_class()(env.name, what, cancel_grace)
    if progress is not None:
        task.add_progress_callback(progress)
    return task


# --- calls in this process (main_environment) ----------------------------------------


class _InProcess(object):
    """Runs main_environment's submitted calls on a thread pool, as Tasks.

    Cancel is cooperative only: after the grace period the task ends
    cancelled, and the call, which a thread cannot be made to stop, goes on
    in the background.  A timeout does the same.
    """

    def __init__(self, env, workers):
        import concurrent.futures
        self.env = env
        self.threads = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="wetlite-main")
        self.running = {}               # call id -> (_CallScope, Task) of the calls running now
        self.size = workers

    def submit(self, task, func, args, kwargs, timeout, wrap=None):
        task._bind(next(_call_ids()), self)
        if timeout is not None:
            self._later(timeout, self._time_out, task, timeout)
        self.threads.submit(self._run, task, func, args, kwargs, wrap)
        return task

    def _run(self, task, func, args, kwargs, wrap):
        scope = _CallScope(task.id, _progress_sink(task))
        self.running[task.id] = (scope, task)
        try:
            if task.done() or task._cancel_asked:
                return                          # cancelled or timed out while queued
            try:
                result = _run_in_scope(scope, func, args, kwargs)
                if wrap is not None:
                    result = wrap(result, task.id)
            except BaseException as exc:
                task.set_exception(exc)
            else:
                task.set_result(result)
        finally:
            self.running.pop(task.id, None)

    def cancel_call(self, call_id, grace):
        entry = self.running.get(call_id)
        if entry is None:
            return False                        # queued: it will not start
        entry[0].cancelled = True
        self._later(self.env.cancel_grace if grace is None else grace, self._give_up, entry[1])
        return True

    def is_running(self, call_id):
        return call_id in self.running

    def _give_up(self, task):
        if task.id in self.running:
            _log().warning("environment %r: call %s did not stop within its cancel grace; it goes on in the "
                           "background (a thread of this process cannot be stopped)", self.env.name, task.id)
        task._end_cancelled()

    def _time_out(self, task, timeout):
        entry = self.running.get(task.id)
        if entry is not None:
            entry[0].cancelled = True
        task.set_exception(CallTimeout("%s did not finish within %s s (in the host process it cannot be stopped; "
                                       "it goes on in the background)" % ("%s:%s" % task._what, timeout)))

    @staticmethod
    def _later(delay, function, *args):
        import threading
        timer = threading.Timer(delay, function, args)
        timer.daemon = True
        timer.start()

    def close(self):
        self.threads.shutdown(wait=False)


def _progress_sink(task):
    return lambda call_id, values: task._on_progress(values)


_IMPORTABLE = []            # [True] once `import wetlite` is known to work in calls in this process


def _make_importable():
    """main_environment: ``import wetlite`` in a call must give this module,
    as in a worker.  A vendored copy (``pkg._vendor.wetlite``) is made
    importable as ``wetlite`` too, unless another wetlite is installed."""
    if not _IMPORTABLE:
        if __name__ != "wetlite" and "wetlite" not in sys.modules:
            import importlib.util
            if importlib.util.find_spec("wetlite") is None:
                sys.modules["wetlite"] = sys.modules[__name__]
        _IMPORTABLE.append(True)


def _run_in_scope(scope, func, args, kwargs):
    """Call ``func`` in this thread as a call with ``scope``: report_progress() and cancel_requested() see it."""
    global _IN_PROCESS, _REPORTER
    if _IN_PROCESS is None:
        import _thread
        _IN_PROCESS = _thread._local()
        _REPORTER = None                    # from now on report_progress() looks for this thread's scope
        _make_importable()
    local = _IN_PROCESS
    outer = getattr(local, "scope", None)
    local.scope = scope
    try:
        return func(*args, **(kwargs or {}))
    finally:
        local.scope = outer
        scope.finish()


# =============================================================================
# 17. Remote objects
#    Proxies of what lives in a worker: a module (import_module), functions
#    and methods in it, and RemoteObject handles (ref=True).  A call through
#    a proxy is one round trip; an attribute that is plain data comes back
#    by value; repr, dir and __doc__ need no round trip (__doc__ of a
#    function: one, the first time).  main_environment gives the same
#    proxies over objects of this process.
# =============================================================================

_HANDLES_MADE = False       # True once a RemoteObject exists: calls then check where handles go
_PICKLING_FOR = None        # a _thread._local: .worker is the _Worker whose call's arguments are being pickled


class _InstanceDoc(object):
    """``__doc__``: the class's docstring on the class, the remote one on an instance."""

    def __init__(self, class_doc, read):
        self.class_doc = class_doc
        self.read = read

    def __get__(self, obj, cls=None):
        return self.class_doc if obj is None else self.read(obj)


class _ProxyInfo(object):
    """A "get" found a callable or a module: the caller makes a proxy of it."""

    __slots__ = ("info",)

    def __init__(self, info):
        self.info = info


class _RemoteModule(object):
    __doc__ = _InstanceDoc(
        """A module in an environment (from ``env.import_module``).

        ``mod.f(x)`` is one round trip; ``mod.f.ref(x)`` returns a
        RemoteObject and ``mod.f.submit(x)`` a Task.  Attributes that are
        plain data (``__version__``, constants) are read by value, one round
        trip each; other objects are proxies to call methods through.
        """, lambda self: self._info.get("doc"))

    def __init__(self, env, module, info):
        object.__setattr__(self, "_env", env)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_info", info)
        object.__setattr__(self, "_data", frozenset(info.get("data", ())))
        object.__setattr__(self, "__name__", info.get("name") or module)

    def __getattr__(self, name):
        if name in self._data:
            return self._env._get(self._module, name)      # may change: never cached
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        attribute = _RemoteFunction(self._env, self._module, name)
        object.__setattr__(self, name, attribute)           # the next lookup is a plain dict hit
        return attribute

    def __setattr__(self, name, value):
        raise AttributeError("remote modules are read-only")

    def __dir__(self):
        return [n for n in self._info.get("names", ()) if not n.startswith("__")]

    def __repr__(self):
        return "<remote module %r in environment %r>" % (self._module, self._env.name)


class _RemoteFunction(object):
    """A callable (or any object reached by a dotted path) in an environment."""

    __slots__ = ("_env", "_target", "_path", "_doc", "_request")

    def __init__(self, env, target, path):
        self._env = env
        self._target = target               # a module, or a RemoteObject
        self._path = path
        self._doc = False                   # not fetched yet
        self._request = None                # a method's request and its name in errors, made once
        if type(target) is RemoteObject and target._wl_worker is not None:
            self._request = (("call", target._wl_id, path), (target._wl_label, path))

    def __call__(self, *args, **kwargs):
        request = self._request
        if request is not None:                 # a method: straight to its worker (the hot path)
            target = self._target
            worker = target._wl_worker
            if worker.dead is None and not target._wl_released:
                try:
                    return worker.call(request[0], (args, kwargs), request[1], None)
                except _NotSent:
                    target._wl_check(self._env)     # says that the worker is gone
                    raise
        return self._env.execute(self._target, self._path, args, kwargs)

    def ref(self, *args, **kwargs):
        """Call it, and keep the result in the worker: a RemoteObject."""
        return self._env.execute(self._target, self._path, args, kwargs, ref=True)

    def submit(self, *args, **kwargs):
        """Call it as a Task."""
        return self._env.submit(self._target, self._path, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _RemoteFunction(self._env, self._target, self._path + "." + name)

    def _read_doc(self):
        if self._doc is False:
            self._doc = self._env._describe(self._target, self._path).get("doc")
        return self._doc

    __doc__ = _InstanceDoc(None, _read_doc)
    __name__ = property(lambda self: self._path.rpartition(".")[2])

    def __repr__(self):
        return "<remote %s.%s in environment %r>" % (_target_name(self._target), self._path, self._env.name)


def _target_name(target):
    return target if isinstance(target, str) else target._wl_label


class RemoteObject(object):
    """An object that lives in a worker: what ``ref=True`` returns (from
    ``execute``, ``submit``, or ``.ref(...)`` of a remote function or method).

    - ``obj.method(...)`` calls a method there: one round trip, the result by
      value (``obj.method.ref(...)`` returns another RemoteObject,
      ``obj.method.submit(...)`` a Task); ``obj(...)`` and ``obj[key]`` too.
    - ``obj.attr`` reads an attribute by value, one round trip (a callable
      attribute gives a remote method); ``obj.attr = value`` sets it.
    - Passed as an argument of a call to its own environment, it is the real
      object there.
    - ``obj.release()``, ``with obj: ...`` or garbage collection free it in
      the worker.  ``dir()``, ``repr()`` and ``__doc__`` need no round trip.

    It belongs to the worker that made it: once that worker has stopped
    (exit, crash, kill after a timeout), using it raises ExecutorError.  It
    cannot be pickled, nor sent to another environment.
    """

    # Remote methods, once used, are kept in __dict__: the next lookup is a plain dict hit.
    __slots__ = ("_wl_env", "_wl_worker", "_wl_id", "_wl_info", "_wl_object", "_wl_released", "_wl_label",
                 "__dict__", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("RemoteObjects are made by wetlite: pass ref=True to execute() or submit()")

    @classmethod
    def _wl_make(cls, env, worker, handle_id, info, local=None):
        global _HANDLES_MADE
        _HANDLES_MADE = True
        self = object.__new__(cls)
        for name, value in (("_wl_env", env), ("_wl_worker", worker), ("_wl_id", handle_id), ("_wl_info", info),
                            ("_wl_object", local), ("_wl_released", False),
                            ("_wl_label", "<%s #%d>" % (info["type"], handle_id))):
            object.__setattr__(self, name, value)
        return self

    def _wl_check(self, env):
        """The worker that holds this object (None in main_environment), or why it cannot be used."""
        if env is not self._wl_env:
            raise ExecutorError("%r belongs to environment %r; it cannot be used in environment %r"
                                % (self, self._wl_env.name, env.name))
        if self._wl_released:
            raise ExecutorError("%r was released; make the object again" % (self,))
        worker = self._wl_worker
        if worker is not None and (worker.dead is not None or worker._closed):
            raise ExecutorError(
                "%r is gone: the worker of environment %r that held it (pid %s) has stopped (%s), and the worker "
                "that runs calls now does not have it; make the object again"
                % (self, self._wl_env.name, worker.proc.pid if worker.proc else "?",
                   worker.dead or "it was stopped by exit()"))
        return worker

    def __getattr__(self, name):
        if name.startswith("_wl_") or name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        env = self._wl_env
        if name in self._wl_info.get("methods", ()):
            value = _ProxyInfo(None)
        elif self._wl_worker is None:
            self._wl_check(env)
            value = getattr(self._wl_object, name)
            if callable(value):
                value = _ProxyInfo(None)
        else:
            value = env._get(self, name)
        if type(value) is not _ProxyInfo:
            return value
        method = self.__dict__[name] = _RemoteFunction(env, self, name)
        return method

    def __setattr__(self, name, value):
        if name.startswith("_wl_"):
            raise AttributeError("%s is wetlite's own attribute of a RemoteObject" % name)
        if self._wl_worker is None:
            self._wl_check(self._wl_env)
            setattr(self._wl_object, name, value)
        else:
            self._wl_env._set(self, name, value)
        self.__dict__.pop(name, None)

    def __call__(self, *args, **kwargs):
        return self._wl_env.execute(self, "__call__", args, kwargs)

    def __getitem__(self, key):
        return self._wl_env.execute(self, "__getitem__", (key,))

    def __bool__(self):
        return True                 # (no round trip for `if obj:`)

    def __dir__(self):
        return list(self._wl_info.get("names", ())) + ["release"]

    def _wl_doc(self):
        return self._wl_info.get("doc")

    __doc__ = _InstanceDoc(__doc__, _wl_doc)

    def __repr__(self):
        state = " (released)" if self._wl_released else ""
        return "<RemoteObject #%d %s in environment %r%s: %s>" % (
            self._wl_id, self._wl_info["type"], self._wl_env.name, state, self._wl_info["repr"])

    def release(self):
        """Free the object in the worker now.  Idempotent; also done on garbage collection and by ``with``."""
        if self._wl_released:
            return
        object.__setattr__(self, "_wl_released", True)
        object.__setattr__(self, "_wl_object", None)
        if self._wl_worker is not None:
            self._wl_worker.drop_handle(self._wl_id)

    def __del__(self):
        try:
            if not self._wl_released and self._wl_worker is not None:
                self._wl_worker.drop_handle(self._wl_id)
        except Exception:
            pass                    # interpreter shutdown

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __reduce_ex__(self, protocol):
        worker = self._wl_worker
        destination = getattr(_PICKLING_FOR, "worker", None) if _PICKLING_FOR is not None else None
        same_env = worker is not None and destination is not None and destination.env is self._wl_env
        if same_env:
            self._wl_check(self._wl_env)
            if destination is worker:
                import operator
                # In the worker this unpickles as wetlite._held_object(id): the object itself.
                return operator.methodcaller("_held_object", self._wl_id), (_WetliteModule(),)
        where = ("the worker (pid %s) of environment %r" % (worker.proc.pid, self._wl_env.name)
                 if worker is not None else "this process (main_environment)")
        if destination is None:
            raise ExecutorError("%r cannot be pickled: it lives in %s.  Pass it as an argument of a call to its own "
                                "environment, or read the values you need from it" % (self, where))
        message = ("%r lives in %s; it cannot be sent to %s.  Pass plain values instead (read them from the "
                   "object), or make the object there" % (self, where, _worker_label(destination)))
        if same_env:
            raise _HeldElsewhere(message, self, worker)      # another worker of its pool: Environment._call moves
        raise ExecutorError(message)


def _worker_label(worker):
    return "the worker (pid %s) of environment %r" % (worker.proc.pid if worker.proc else "?", worker.name)


class _WetliteModule(object):
    """Pickles as "the wetlite module of the process that unpickles it"."""

    def __reduce__(self):
        return __import__, ("wetlite",)


def _local_target(env, target, function):
    """main_environment ``env``: the object ``function`` of ``target`` (a module, or a RemoteObject of ``env``)."""
    if type(target) is RemoteObject:
        target._wl_check(env)
        return _walk(target._wl_object, function, "the object")
    return _resolve(target, function)


def _local_arguments(env, args, kwargs):
    """main_environment ``env``: RemoteObject arguments (top level, or in a top-level
    list, tuple or dict) replaced by their objects, as a worker would see them;
    a worker's RemoteObject there is an error."""
    def real(value):
        if type(value) is RemoteObject:
            value._wl_check(env)
            return value._wl_object
        if type(value) in (list, tuple):
            return type(value)(real(v) for v in value) if any(type(v) is RemoteObject for v in value) else value
        if type(value) is dict and any(type(v) is RemoteObject for v in value.values()):
            return {k: real(v) for k, v in value.items()}
        return value
    return [real(a) for a in args], ({k: real(v) for k, v in kwargs.items()} if kwargs else kwargs)


# =============================================================================
# 18. Worker pools
#    env.launch(workers=N) runs N workers of one environment.  A call goes to
#    the least-loaded worker, or to the worker that holds its RemoteObjects;
#    a worker that died is replaced on the next call.  map() keeps at most
#    two calls per worker in flight and submits the rest as results are
#    taken; map_async and execute_async are its asyncio faces.
# =============================================================================


def _check_workers(workers):
    if workers == "auto":
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SpecError("workers must be a number of workers >= 1, or 'auto' (one per CPU), not %r" % (workers,))
    return workers


class _Pool(object):
    """The workers of one environment, in slots: started together, picked
    least loaded, replaced when they die.  The single-worker connection
    (_Worker) knows nothing of it."""

    def __init__(self, env, slots):
        import threading
        self.env = env
        self.slots = list(slots)            # _Worker, or None until started
        self.lock = threading.Lock()

    def resize(self, size, timeout, output):
        """Have ``size`` live workers: start the missing ones at once (in parallel), stop the extra ones."""
        with self.lock:
            extra = self.slots[size:]
            del self.slots[size:]
            self.slots.extend([None] * (size - len(self.slots)))
            missing = [i for i, w in enumerate(self.slots) if not _alive(w)]
            _start_workers(self.env, self.slots, missing, timeout, output)
        _close_workers(extra)

    def pick(self):
        """The least-loaded live worker (dead ones are replaced first)."""
        with self.lock:
            dead = [i for i, w in enumerate(self.slots) if not _alive(w)]
            if dead:
                _start_workers(self.env, self.slots, dead, 60, self.env._worker_output)
            best = best_load = None
            for worker in self.slots:
                load = len(worker._order)
                if best is None or load < best_load:
                    best, best_load = worker, load
                    if not load:
                        break
            return best

    def live(self):
        return [w for w in self.slots if _alive(w)]

    def close(self):
        """Stop every worker; the next call starts them again."""
        with self.lock:
            workers, self.slots = self.slots, [None] * len(self.slots)
        _close_workers(workers)


def _alive(worker):
    return worker is not None and worker.dead is None and not worker._closed


def _start_workers(env, slots, indexes, timeout, output):
    """Start workers into ``slots[i]`` for each index, in parallel; on a failure stop them all and raise it."""
    if len(indexes) == 1:
        slots[indexes[0]] = env._new_worker(timeout, output)
        return
    import threading
    errors = []

    def start(i):
        try:
            slots[i] = env._new_worker(timeout, output)
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(i,), name="wetlite-launch-%s" % env.name) for i in indexes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        started = [slots[i] for i in indexes if slots[i] is not None]
        for i in indexes:
            slots[i] = None
        _close_workers(started)
        raise errors[0]


def _close_workers(workers):
    """Close workers in parallel: each may take its exit grace."""
    workers = [w for w in workers if w is not None]
    if len(workers) <= 1:
        for w in workers:
            w.close()
        return
    import threading
    threads = [threading.Thread(target=w.close, name="wetlite-exit-%s" % w.name) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _pinned_worker(env, payload_args):
    """The worker holding the RemoteObjects among the arguments (top level, or in a top-level
    list, tuple or dict), or None.  They must all live in one worker."""
    if not _HANDLES_MADE or payload_args is None:
        return None
    args, kwargs = payload_args
    found = []

    def look(value):
        if type(value) is RemoteObject:
            found.append(value)
        elif type(value) in (list, tuple):
            found.extend(v for v in value if type(v) is RemoteObject)
        elif type(value) is dict:
            found.extend(v for v in value.values() if type(v) is RemoteObject)
    for value in args:
        look(value)
    for value in (kwargs or {}).values():
        look(value)
    workers = []
    for handle in found:
        worker = handle._wl_check(env)
        if worker not in workers:
            workers.append(worker)
    if len(workers) > 1:
        raise ExecutorError("the arguments hold RemoteObjects of %d different workers of environment %r (%s); a "
                            "call runs in one worker: pass objects of one worker"
                            % (len(workers), env.name, ", ".join(h._wl_label for h in found)))
    return workers[0] if workers else None


# --- map -------------------------------------------------------------------------------


class _MapRun(object):
    """The calls of one map(), in input order: submitted lazily, at most
    ``window`` unfinished at a time, taken in order (or as they finish)."""

    def __init__(self, submit, calls, window, ordered):
        import collections
        self.submit = submit                # submit(args) -> Task
        self.calls = iter(calls)
        self.window = window
        self.ordered = ordered
        self.pending = collections.deque()  # submitted, not taken yet
        self.exhausted = False
        self.wrapped = {}                   # task -> its asyncio future (map_async)

    def refill(self):
        pending = self.pending
        while not self.exhausted and len(pending) < 2 * self.window:
            if len(pending) >= self.window and sum(not t.done() for t in pending) >= self.window:
                break
            try:
                args = next(self.calls)
            except StopIteration:
                self.exhausted = True
                break
            pending.append(self.submit(args))

    def take(self):
        """The tasks that may be yielded now."""
        pending = self.pending
        if self.ordered:
            ready = []
            while pending and pending[0].done():
                ready.append(pending.popleft())
            return ready
        ready = [t for t in pending if t.done()]
        for t in ready:
            pending.remove(t)
        return ready

    def unfinished(self):
        return [t for t in self.pending if not t.done()]

    def cancel_rest(self):
        """Cancel the tasks not taken yet; return those that have not ended (they are stopping)."""
        pending, self.pending = self.pending, ()
        for task in pending:
            task.cancel()
        return [task for task in pending if not task.done()]


def _map_results(run):
    """Yield the results of ``run``; the first error is raised in its place, and what is left is cancelled."""
    import concurrent.futures
    try:
        while True:
            run.refill()
            if not run.pending:
                return
            ready = run.take()
            if not ready:
                concurrent.futures.wait(run.unfinished(), return_when=concurrent.futures.FIRST_COMPLETED)
                continue
            for i, task in enumerate(ready):
                try:
                    result = task.result()
                except BaseException:
                    for later in ready[i + 1:]:
                        later.cancel()
                    raise
                yield result
    finally:
        # Return (or raise) once the cancelled calls have stopped, as on one worker.
        concurrent.futures.wait(run.cancel_rest())


async def _map_results_async(run):
    import asyncio
    try:
        while True:
            run.refill()
            if not run.pending:
                return
            ready = run.take()
            if not ready:
                waiting = []
                for task in run.unfinished():
                    if task not in run.wrapped:
                        run.wrapped[task] = asyncio.wrap_future(task)
                    waiting.append(run.wrapped[task])
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                continue
            for i, task in enumerate(ready):
                wrapper = run.wrapped.pop(task, None)
                if wrapper is not None:
                    wrapper.cancel()            # done with it (else asyncio logs an unretrieved error)
                try:
                    result = task.result()
                except BaseException:
                    for later in ready[i + 1:]:
                        later.cancel()
                    raise
                yield result
    finally:
        for wrapper in run.wrapped.values():
            wrapper.cancel()                    # (which cancels its task)
        stopping = run.cancel_rest()
        if stopping:                            # end once the cancelled calls have stopped, as map() does
            await asyncio.wait([asyncio.wrap_future(task) for task in stopping])


def _zipped(module, function, iterables):
    if not iterables:
        raise SpecError("map() needs an iterable of arguments, e.g. env.map(%r, %r, images)" % (module, function))
    return ((args, None) for args in zip(*iterables))


def _map_run(env, target, function, calls, timeout, ordered, progress, cancel_grace, size):
    """A _MapRun of ``calls`` ((args, kwargs) pairs) on ``env``, one Task each."""
    _check_callback(progress, "progress")
    grace = _check_timeout(cancel_grace, "cancel_grace")
    if not isinstance(ordered, bool):
        raise SpecError("ordered must be True or False, not %r" % (ordered,))

    def submit(call):
        args, kwargs = call
        task = _new_task(env, (_target_name(target), function), grace, progress)
        return env._submit_task(task, target, function, args, kwargs, timeout)
    return _MapRun(submit, calls, 2 * size, ordered)


def _map_one_worker(env, target, function, calls, timeout, grace, window=2):
    """map() on one worker, without a Task per call: the requests are
    pipelined and their replies read on this thread, in order, as the
    synchronous execute() does.  They go ``window`` at a time, in one write,
    once the previous ones are answered (see _Worker.send_all), and the next
    ones are sent before the last answer is yielded, so the worker has work
    while the caller takes it.  On an error or an early close the rest is
    cancelled, and the calls have stopped when it returns."""
    import collections
    import itertools
    sent = collections.deque()                  # waiters, in input order
    calls = iter(calls)
    message, what = ("call", target, function), (target, function)
    direct = type(target) is not RemoteObject

    def send_next():
        batch = list(itertools.islice(calls, window))
        if not batch:
            return
        worker = env._worker
        if direct and worker is not None and worker.dead is None and not worker._closed and not _HANDLES_MADE:
            try:                                # the running worker, straight (as execute() does)
                sent.extend(worker.send_all(message, batch, what, timeout))
                return
            except _NotSent:
                pass                            # it died idle: env._send starts another
        for payload_args in batch:
            sent.append(env._send("call", target, function, payload_args, timeout, wait=False))
    try:
        send_next()
        while sent:
            waiter = sent.popleft()
            result = waiter.worker.finish(waiter)
            if not sent:
                send_next()
            yield result
    finally:
        workers = []                            # (one, unless a worker was replaced on the way)
        for waiter in sent:
            if waiter.worker not in workers:
                workers.append(waiter.worker)
        for worker in workers:
            worker.stop([w for w in sent if w.worker is worker], grace)


# =============================================================================
# 19. Wetlands compatibility
#    A program written for Wetlands -- the seed's camelCase API (0.2-0.3) or
#    the 1.x snake_case one -- runs on wetlite once its import line names
#    wetlite.  This section only maps their names and arguments onto the API
#    above and does nothing of its own; the README's "Coming from Wetlands"
#    lists every name.  Wetlands-only names are served by __getattr__, so they
#    work without cluttering dir() and completion.
# =============================================================================

def _wrap(method, mapper):
    """``method`` with its arguments passed through ``mapper(self, args, kwargs)`` first."""
    def wrapper(self, *args, **kwargs):
        args, kwargs = mapper(self, args, kwargs)
        return method(self, *args, **kwargs)
    for name in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(wrapper, name, getattr(method, name))
    wrapper.__wrapped__ = method        # inspect.signature() shows wetlite's own
    return wrapper


def _renamed(kwargs, renames):
    """kwargs with Wetlands' keyword names (camelCase or snake_case) turned into wetlite's."""
    for theirs, ours in renames.items():
        if theirs in kwargs:
            value = kwargs.pop(theirs)
            if ours in kwargs:
                raise TypeError("got both %r and %r, which mean the same" % (theirs, ours))
            kwargs[ours] = value
    return kwargs


_WETLANDS_MANAGER = {
    "condaPath": "conda_path", "usePixi": "use_pixi", "mainCondaEnvironmentPath": "main_conda_environment_path",
    "acceptAllCondaPaths": "accept_all_conda_paths", "wetlandsInstancePath": "wetlands_instance_path",
}
_WETLANDS_MANAGER_ONLY = ("conda_path", "use_pixi", "main_conda_environment_path", "accept_all_conda_paths",
                          "wetlands_instance_path", "manager", "debug", "log_file_path")


def _manager_arguments(args, kwargs):
    """EnvironmentManager(conda_path=, usePixi=, wetlands_instance_path=, manager="auto", ...)
    as (args, kwargs, what to do after __init__)."""
    args = list(args)
    if len(args) >= 2 and isinstance(args[1], bool):                    # the seed's (condaPath, usePixi)
        kwargs.setdefault("use_pixi", args.pop(1))
    elif len(args) >= 2 and args[1] is not None and args[1] not in _TOOLS:  # 0.3+: (instance_path, conda_path)
        kwargs.setdefault("conda_path", args.pop(1))
    kwargs = _renamed(kwargs, _WETLANDS_MANAGER)
    theirs = dict((k, kwargs.pop(k)) for k in _WETLANDS_MANAGER_ONLY if k in kwargs)
    if not theirs:
        return args, kwargs, None
    if args and theirs.get("wetlands_instance_path") is not None:
        raise TypeError("the first argument and wetlands_instance_path name the same directory; give one")
    instance = theirs.get("wetlands_instance_path") or (args.pop(0) if args and "conda_path" in theirs else None)
    conda = theirs.get("conda_path")
    tool = kwargs.get("tool") or (args[1] if len(args) > 1 else None)
    if tool is None:
        if theirs.get("use_pixi") is not None:
            tool = "pixi" if theirs["use_pixi"] else "micromamba"
        elif theirs.get("manager", "auto") != "auto":
            tool = theirs["manager"]
        elif conda is not None:         # "auto": the tool the path names, as Wetlands guesses it
            lowered = os.fspath(conda).lower()
            tool = "micromamba" if "micromamba" in lowered else "pixi" if "pixi" in lowered else None
        if tool is not None:
            kwargs["tool"] = tool
    if not args and "root" not in kwargs:
        if conda is not None:
            kwargs["root"] = conda      # Wetlands' layout under conda_path is wetlite's under root
        elif instance is not None:
            kwargs["root"] = os.path.join(os.fspath(instance), tool or kwargs.get("tool") or "pixi")
    return args, kwargs, {"main": theirs.get("main_conda_environment_path"), "log": theirs.get("log_file_path"),
                          "instance": instance}


def _manager_init(init):
    def __init__(self, *args, **kwargs):
        args, kwargs, extra = _manager_arguments(args, kwargs)
        init(self, *args, **kwargs)
        if extra:
            if extra["main"] is not None:       # its conda packages count when the host is checked
                self.main_environment.path = os.path.abspath(os.fspath(extra["main"]))
            if extra["log"] is not None:
                base = os.fspath(extra["instance"]) if extra["instance"] is not None else self.root
                _log_to_file(os.path.join(base, os.fspath(extra["log"])))
    for name in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(__init__, name, getattr(init, name))
    __init__.__wrapped__ = init
    return __init__


def _log_to_file(path):
    """A file handler on the "wetlite" logger, once per file (what log_file_path= asks for)."""
    import logging
    path = os.path.abspath(path)
    logger = _log()
    if any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


_WETLANDS_CREATE = {
    "forceExternal": "force_external", "additionalInstallCommands": "post_install",
    "additional_install_commands": "post_install", "optionalDependencies": "optional_dependencies",
    "replace_existing": "replace", "useExisting": "use_existing",
}


def _create_arguments(self, args, kwargs):
    """create(name, deps, additional_install_commands, forceExternal=, use_existing=, replace_existing=)."""
    kwargs = _renamed(kwargs, _WETLANDS_CREATE)
    if "use_existing" in kwargs:        # Wetlands 0.3-1.0: True may hand back an environment that satisfies
        if "force_external" in kwargs:
            raise TypeError("use_existing and force_external contradict each other; give one")
        kwargs["force_external"] = not kwargs.pop("use_existing")
    args = list(args)
    if len(args) > 1 and isinstance(args[1], dict) and "local" in args[1]:
        args[1] = _local_dependencies(args[1], self.tool)
    if isinstance(kwargs.get("dependencies"), dict) and "local" in kwargs["dependencies"]:
        kwargs["dependencies"] = _local_dependencies(kwargs["dependencies"], self.tool)
    return args, kwargs


def _local_dependencies(deps, tool):
    """Wetlands 1.x "local" packages ({"name", "path", "editable"}) as pip entries."""
    from urllib.request import pathname2url
    deps = dict(deps)
    pip = list(deps.get("pip") or [])
    for item in _as_list(deps.pop("local"), "'local'"):
        if not isinstance(item, dict) or not item.get("path"):
            raise SpecError("a 'local' entry must be {'name': ..., 'path': ..., 'editable': ...}, not %r" % (item,))
        path = os.path.abspath(os.fspath(item["path"]))
        if item.get("editable", True):
            if tool == "pixi":
                raise SpecError("wetlite cannot install %r editable with pixi; give 'editable': False, or use "
                                "a pixi.toml with { path = ..., editable = true } as config=" % (path,))
            import shlex
            pip.append("-e " + shlex.quote(path))
        else:
            pip.append("%s @ file://%s" % (item.get("name") or os.path.basename(path), pathname2url(path)))
    deps["pip"] = pip
    return deps


def _install_arguments(self, args, kwargs):
    """env.install(deps, additional_install_commands)."""
    return args, _renamed(kwargs, {"additionalInstallCommands": "post_install",
                                   "additional_install_commands": "post_install",
                                   "optionalDependencies": "optional_dependencies"})


_COMMAND_KEYWORDS = ("additional_activate_commands", "popen_kwargs", "wait", "log_context", "log")


def _execute_commands_arguments(self, args, kwargs):
    """execute_commands(commands, additional_activate_commands={}, popen_kwargs={}, wait=False,
    log_context=None, log=True) -- the seed's and 1.x's order, whose second positional is not
    wetlite's ``wait``: a dict, list or string there is Wetlands' activate commands."""
    kwargs = _renamed(kwargs, {"additionalActivateCommands": "additional_activate_commands",
                               "popenKwargs": "popen_kwargs", "logContext": "log_context"})
    if len(args) > 1 and isinstance(args[1], (dict, list, tuple, str)):
        if len(args) > 1 + len(_COMMAND_KEYWORDS):
            raise TypeError("execute_commands() takes at most %d positional arguments" % (1 + len(_COMMAND_KEYWORDS)))
        for name, value in zip(_COMMAND_KEYWORDS, args[1:]):
            if name in kwargs:
                raise TypeError("execute_commands() got multiple values for %r" % name)
            kwargs[name] = value
        args = args[:1]
    elif len(args) > 1 and not isinstance(args[1], bool) and args[1] is not None:
        raise SpecError("execute_commands(commands, wait, ...): wait must be True or False, not %r" % (args[1],))
    kwargs.pop("log_context", None)
    before = kwargs.pop("additional_activate_commands", None)
    if before:
        args = (_commands_before(before, args[0] if args else kwargs.pop("commands")),) + tuple(args[1:])
    return args, kwargs


def _commands_before(first, then):
    """Commands (str, list or platform dict) that run ``first``, then ``then``, on each platform."""
    return dict((target, _command_list(first, target) + _command_list(then, target))
                for target in ("linux", "mac", "windows"))


def _launch_arguments(self, args, kwargs):
    """launch(additional_activate_commands={}, max_workers=N): wetlite starts the worker without a shell."""
    kwargs = _renamed(kwargs, {"max_workers": "workers"})
    activate = kwargs.pop("additional_activate_commands", kwargs.pop("additionalActivateCommands", None))
    if args and isinstance(args[0], (dict, list, tuple, str)):
        activate, args = args[0], args[1:]
    if activate:
        raise SpecError("wetlite starts the worker directly, not from a shell script, so it cannot run "
                        "additional_activate_commands %r before it; set variables with os.environ in the "
                        "called code, or ask for an environment variable hook" % (activate,))
    return args, kwargs


def _wetlands_environment(self, environment):
    """The Environment a Wetlands manager method means: an Environment, a name, a path, or None (main)."""
    if environment is None:
        return self.main_environment
    if isinstance(environment, Environment):
        return environment
    text = _environment_text(environment)
    if text in self.environments:
        return self.environments[text]
    if _is_path(environment):
        path = os.path.abspath(text)
        for env in self.environments.values():
            if path in (env.path, env.manifest, os.path.dirname(env.manifest or "")):
                return env
        return self.load(os.path.basename(os.path.dirname(path) if os.path.isfile(path) else path), path)
    return self.get(text)


def _environment_exists(self, environment):
    """Whether an environment (a name under root, a path, or an Environment) exists on disk."""
    if isinstance(environment, Environment):
        return os.path.isdir(environment.path)
    text = _environment_text(environment)
    if text in self.environments:
        return os.path.isdir(self.environments[text].path)
    if not _is_path(environment):
        record = _read_json(self._record_path(text)) if _valid_env_name(text) else None
        return bool(record and record.get("state") == "ready" and os.path.isdir(record.get("prefix") or ""))
    path = os.path.abspath(text)
    workspace = os.path.dirname(path) if os.path.isfile(path) else path
    return (os.path.isdir(os.path.join(path, "conda-meta")) or os.path.isfile(os.path.join(path, "pyvenv.cfg"))
            or os.path.isdir(os.path.join(workspace, ".pixi", "envs", "default", "conda-meta")))


def _environment_text(value):
    if not isinstance(value, (str, os.PathLike)):
        raise SpecError("an environment is given by its name, its path or the Environment itself, not %s %r"
                        % (type(value).__name__, value))
    return os.fspath(value)


def _is_path(value):
    """A Path, or a string with a directory separator (a bare word is an environment's name)."""
    text = os.fspath(value)
    return not isinstance(value, str) or os.sep in text or bool(os.altsep and os.altsep in text)


def _valid_env_name(name):
    try:
        _check_env_name(name)
    except SpecError:
        return False
    return True


def _manager_install(self, environment, dependencies=None, additional_install_commands=None, **kwargs):
    """install(environment, dependencies, additional_install_commands)."""
    return _wetlands_environment(self, environment).install(dependencies, additional_install_commands, **kwargs)


def _manager_execute_commands(self, environment, commands, *args, **kwargs):
    """execute_commands(environment, commands, additional_activate_commands={}, popen_kwargs={}, wait=False,
    log_context=None, log=True): at this level, Wetlands logs the output unless told not to."""
    if len(args) > len(_COMMAND_KEYWORDS):
        raise TypeError("execute_commands() takes at most %d positional arguments" % (2 + len(_COMMAND_KEYWORDS)))
    for name, value in zip(_COMMAND_KEYWORDS, args):
        if name in kwargs:
            raise TypeError("execute_commands() got multiple values for %r" % name)
        kwargs[name] = value
    kwargs.setdefault("log", True)
    return _wetlands_environment(self, environment).execute_commands(commands, **kwargs)


def _create_from_config(self, name, config_path, optional_dependencies=None, additional_install_commands=None,
                        *args, **kwargs):
    """create_from_config(name, config_path, optional_dependencies, additional_install_commands, ...)."""
    for unsupported in ("install_project", "project_path", "project_editable"):
        if kwargs.pop(unsupported, None):
            raise SpecError("%s= is not supported: add the project to 'pip' (for example '-e %s')"
                            % (unsupported, os.path.dirname(os.path.abspath(os.fspath(config_path)))))
    if args:                            # 0.3-1.0: the fifth is use_existing
        kwargs["use_existing"] = args[0]
    return self.create(name, None, additional_install_commands, config=config_path,
                       optional_dependencies=optional_dependencies, **kwargs)


def _launched(self):
    """Whether the worker runs (the main environment always "runs")."""
    return self.tool == "main" or bool(self.workers)


def _update(self, dependencies=None, additional_install_commands=None, use_existing=None):
    """update(dependencies): rebuild under the same name, as Wetlands' delete() then create()."""
    return self.manager.create(self.name, dependencies, additional_install_commands, force_external=True,
                               replace=True)


def _bound(function):
    return lambda self: function.__get__(self, type(self))


_WETLANDS_MANAGER_NAMES = {
    "mainEnvironment": lambda self: self.main_environment,
    "getInstalledPackages": _bound(lambda self, environment: _wetlands_environment(self, environment).packages()),
    "environmentExists": _bound(_environment_exists),
    "setProxies": _bound(lambda self, proxies: self.set_proxies(proxies)),
    "createFromConfig": _bound(_create_from_config),
    "executeCommands": _bound(_manager_execute_commands),
    "installConda": _bound(lambda self: self.install_tool()),
    "install": _bound(_manager_install),
}
for _camel, _snake in (("getInstalledPackages", "get_installed_packages"), ("environmentExists", "environment_exists"),
                       ("createFromConfig", "create_from_config"), ("executeCommands", "execute_commands"),
                       ("installConda", "install_conda")):
    _WETLANDS_MANAGER_NAMES[_snake] = _WETLANDS_MANAGER_NAMES[_camel]
_WETLANDS_ENVIRONMENT_NAMES = {"launched": _bound(_launched), "delete": _bound(lambda self: self.manager.remove(self.name)),
                               "update": _bound(_update)}
_WETLANDS_UNSUPPORTED = ("setCondaPath", "set_conda_path", "getProcessLogger", "get_process_logger",
                         "registerEnvironment", "register_environment", "attach", "launch_or_attach", "detach",
                         "submit_script", "map_tasks")


def _wetlands_getattr(names):
    def __getattr__(self, name):
        found = names.get(name)
        if found is not None:
            return found(self)
        if name in _WETLANDS_UNSUPPORTED:
            raise AttributeError("%s has no %r: wetlite does not do what it does in Wetlands; see \"Coming from "
                                 "Wetlands\" in wetlite's README" % (type(self).__name__, name))
        raise AttributeError("%r object has no attribute %r" % (type(self).__name__, name))
    return __getattr__


EnvironmentManager.__init__ = _manager_init(EnvironmentManager.__init__)
EnvironmentManager.create = _wrap(EnvironmentManager.create, _create_arguments)
EnvironmentManager.__getattr__ = _wetlands_getattr(_WETLANDS_MANAGER_NAMES)
Environment.install = _wrap(Environment.install, _install_arguments)
Environment.execute_commands = Environment.executeCommands = _wrap(Environment.execute_commands,
                                                                    _execute_commands_arguments)
Environment.launch = _wrap(Environment.launch, _launch_arguments)
_MainEnvironment.launch = _wrap(_MainEnvironment.launch, _launch_arguments)
Environment.__getattr__ = _wetlands_getattr(_WETLANDS_ENVIRONMENT_NAMES)

# =============================================================================
# 20. Command-line interface
#    A thin adapter: every command is one or two public API calls.
#    Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted.
# =============================================================================


_NAME_HELP = "the environment's name (see `wetlite list`)"


def _build_parser():
    import argparse
    parser = argparse.ArgumentParser(
        prog="wetlite", description="Create isolated Conda environments (pixi, micromamba or venv) and run "
                                    "commands in them.")
    parser.add_argument("--version", action="version", version="wetlite " + __version__)
    parser.add_argument("--root", help="where tools and environments live (default: $%s or the user data dir)"
                        % _ENV_ROOT)
    parser.add_argument("--tool", choices=_TOOLS, help="pixi, micromamba or venv (default: $%s or pixi)" % _ENV_TOOL)
    parser.add_argument("--tool-version", metavar="TAG", help="tool release to use (default: the pinned one, %s or %s)"
                        % (PIXI_VERSION, MICROMAMBA_VERSION))
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (repeatable)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True     # add_subparsers(required=...) needs 3.7

    p = sub.add_parser("install-tool", help="download and verify the tool (pixi or micromamba)")
    p.set_defaults(func=_cmd_install_tool)

    p = sub.add_parser("create", help="create an environment (or reuse an identical one)")
    p.add_argument("name", metavar="NAME", help="the new environment's name: letters, digits, '.', '_', '-'")
    p.add_argument("--python", metavar="V", help="python version or specifier, e.g. 3.11 or '>=3.10'")
    p.add_argument("--conda", metavar="SPEC", action="append", default=[], help="conda package (repeatable)")
    p.add_argument("--pip", metavar="SPEC", action="append", default=[], help="pip requirement (repeatable)")
    p.add_argument("--channel", metavar="C", action="append", default=[], help="conda channel (repeatable)")
    p.add_argument("--file", metavar="CONFIG", help="requirements.txt, environment.yml, pixi.toml or pyproject.toml")
    p.add_argument("--replace", action="store_true", help="rebuild it if it exists with another recipe")
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("list", help="list the environments, with their status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--sizes", action="store_true", help="also show the size on disk (walks every file)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run a command in an environment: run NAME -- CMD...",
                       usage="wetlite run NAME -- CMD [ARGS...]",
                       description="Run a command in an environment and exit with its exit code.  Several words "
                                   "after -- are a program and its arguments, passed on verbatim; one word is "
                                   "shell code, run by the environment's shell (bash, or PowerShell on Windows): "
                                   "wetlite run NAME -- 'echo $VIRTUAL_ENV; which python'.")
    p.add_argument("name", metavar="NAME", help=_NAME_HELP)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("call", help="call a function in an environment and print its result as JSON",
                       usage="wetlite call NAME MODULE FUNC [JSON_ARG...] [--kwargs JSON] [--timeout S]",
                       description="Call MODULE:FUNC in the environment and print the result as JSON.  NumPy "
                                   "arrays and scalars become lists and numbers, datetimes ISO 8601 strings, sets "
                                   "sorted lists, bytes {\"$base64\": \"...\"}; NaN and infinities null (strict "
                                   "JSON has no form for them); a result with no faithful JSON form is an error "
                                   "(exit code 1) that shows its repr.")
    p.add_argument("name", metavar="NAME", help=_NAME_HELP)
    p.add_argument("module", metavar="MODULE", help="a dotted module name, or a path to a .py file")
    p.add_argument("function", metavar="FUNC", help="a function (or dotted attribute path) of the module")
    p.add_argument("json_args", nargs="*", metavar="JSON_ARG", help="positional arguments, each a JSON value")
    p.add_argument("--kwargs", metavar="JSON", help="keyword arguments as a JSON object")
    p.add_argument("--timeout", metavar="S", type=float, help="seconds before the call is stopped")
    p.set_defaults(func=_cmd_call)

    p = sub.add_parser("map", help="call a function once per input line and print one JSON result per line",
                       usage="wetlite map NAME MODULE FUNC [--workers N] [--unordered] [--timeout S] < JSON_LINES")
    p.add_argument("name", metavar="NAME", help=_NAME_HELP)
    p.add_argument("module", metavar="MODULE", help="a dotted module name, or a path to a .py file")
    p.add_argument("function", metavar="FUNC", help="a function (or dotted attribute path) of the module")
    p.add_argument("--workers", default="1", metavar="N", help="how many workers (default 1; 'auto': one per CPU)")
    p.add_argument("--unordered", action="store_true", help="print results as they finish, not in input order")
    p.add_argument("--timeout", type=float, help="seconds before each call is stopped")
    p.set_defaults(func=_cmd_map)

    p = sub.add_parser("script", help="print the script that `run` would execute",
                       usage="wetlite script NAME [--shell bash|powershell] -- CMD [ARGS...]")
    p.add_argument("name", metavar="NAME", help=_NAME_HELP)
    p.add_argument("--shell", choices=_SHELLS, help="default: this platform's")
    p.set_defaults(func=_cmd_script)

    p = sub.add_parser("remove", help="delete an environment (whatever its status)")
    p.add_argument("name", metavar="NAME", help=_NAME_HELP)
    p.set_defaults(func=_cmd_remove)

    p = sub.add_parser("gc", help="remove half-built environments, stale staging dirs and unused runtime copies")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.set_defaults(func=_cmd_gc)

    p = sub.add_parser("info", help="platform, python, root, tool and settings; or one environment's record")
    p.add_argument("name", metavar="NAME", nargs="?", help="show this environment: status, recipe, what was "
                                                           "installed since creation")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("doctor", help="check that wetlite works here: builds a throwaway environment")
    p.add_argument("--offline", action="store_true", help="do not check whether the tool's download source answers")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("serve", help="(internal) the executor worker, started by wetlite itself")
    p.set_defaults(func=lambda args: _serve())
    return parser


def _manager(args):
    return EnvironmentManager(root=args.root, tool=args.tool, tool_version=args.tool_version)


# Library errors advise library calls; on the command line the same advice is
# spelled as commands and options.  (No CLI command loads a foreign prefix:
# mgr.load() advice stays as it is.)
_CLI_ADVICE = (
    (r"mgr\.create\('([^']*)', \.\.\.\)", r"wetlite create \1 ..."),
    (r"mgr\.remove\('([^']*)'\)", r"wetlite remove \1"),
    (r"\breplace=True\b", "--replace"),
    (r"\bEnvironmentManager\(tool='(\w+)'\)", r"--tool \1"),
    (r"\btool='(\w+)' or '(\w+)'", r"--tool \1 or \2"),
    (r"\btool='(\w+)'", r"--tool \1"),
    (r"\bconfig=(?=[,;. ])", "--file"),
    (r"\(root= or ", "(--root or "),
)


def _cli_advice(message):
    import re
    for pattern, replacement in _CLI_ADVICE:
        message = re.sub(pattern, replacement, message)
    return message


def _configure_cli_logging(level):
    """Send the wetlite logger to stderr; return a function that undoes it.

    main() can run inside a host process (and its tests): it leaves the
    logging configuration as it found it.
    """
    import logging
    logger = logging.getLogger("wetlite")
    saved = (logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG if level > 0 or _debug_enabled() else
                    logging.INFO if level == 0 else logging.WARNING)

    def restore():
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    return restore


def _command_after_dashes(args):
    """The words after ``--``: one word is shell code (as a string is in the
    library), several are a program and its arguments, quoted by wetlite."""
    cmd = args.cmd
    if not cmd:
        raise SpecError("no command given; write: wetlite %s %s -- CMD [ARGS...]" % (args.command, args.name))
    return [cmd[0]] if len(cmd) == 1 else [cmd]


def _cmd_install_tool(args):
    mgr = _manager(args)
    path = mgr.install_tool()
    print(path if path else "the venv tool needs no download")
    return 0


def _cmd_create(args):
    deps = {"conda": args.conda, "pip": args.pip, "channels": args.channel}
    if args.python:
        deps["python"] = args.python
    env = _manager(args).create(args.name, deps, config=args.file, force_external=True, replace=args.replace)
    print(env.path)
    return 0


def _cmd_list(args):
    import json
    mgr = _manager(args)
    envs = mgr.list(sizes=args.sizes)
    for e in envs:
        e["problem"] = e["problem"] and _cli_advice(e["problem"])
    if args.json:
        print(json.dumps(envs, indent=2))
        return 0
    if not envs:
        print("no environments under %s" % mgr.root)
        return 0
    columns = ["NAME", "STATUS", "TOOL", "PYTHON"] + (["SIZE"] if args.sizes else []) + ["PATH"]
    rows = [[e["name"], e["status"], e["tool"] or "?", e["python_version"] or "?"]
            + ([_human_bytes(e["size"])] if args.sizes else []) + [e["path"] or "?"] for e in envs]
    widths = [max(len(row[i]) for row in rows + [columns]) for i in range(len(columns) - 1)]
    for row in [columns] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for e in envs:
        if e["problem"]:
            _eprint("wetlite: %s" % e["problem"])
    if args.sizes:
        print("%s in all under %s (environments, tools, package caches, logs)"
              % (_human_bytes(_tree_size(mgr.root)), mgr.root))
    return 0


def _cmd_run(args):
    env = _manager(args).get(args.name)

    def echo(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return env.run(_command_after_dashes(args), output=echo, check=False).returncode


def _json_value(text, what):
    import json
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpecError("%s %r is not valid JSON (%s); quote strings, e.g. '\"text\"'" % (what, text, exc))


def _cmd_call(args):
    positional = [_json_value(a, "argument") for a in args.json_args]
    kwargs = _json_value(args.kwargs, "--kwargs") if args.kwargs else {}
    if not isinstance(kwargs, dict):
        raise SpecError("--kwargs must be a JSON object such as '{\"sigma\": 2}', not %r" % (args.kwargs,))
    env = _manager(args).get(args.name)
    what = "%s:%s" % (args.module, args.function)
    try:
        result = env.execute(args.module, args.function, positional, kwargs, timeout=args.timeout)
    except WetliteError:
        raise
    except Exception as exc:
        raise _call_failure(exc, what)
    finally:
        env.exit()
    print(_json_text(result, what))
    return 0


def _call_failure(exc, what):
    """The function itself raised: show where, and fail with a CommandError."""
    if getattr(exc, "_wetlite_lookup", False):         # the name is not there: nothing ran, no traceback
        return CommandError("%s: %s; check the function name" % (what, exc))
    cause = getattr(exc, "__cause__", None)
    if isinstance(cause, _RemoteTraceback):
        _eprint(cause.text.rstrip())
    return CommandError("%s raised %s: %s" % (what, type(exc).__name__, exc))


def _json_text(result, what):
    """A result as one line of JSON, where its JSON form is faithful (see _json_form)."""
    import json
    try:
        form = _json_form(result, "the result")
    except _NoJSONForm as exc:
        text = repr(result)
        raise CommandError("%s returned a value with no faithful JSON form: %s; its repr:\n%s"
                           % (what, exc, text if len(text) <= 2000 else text[:2000] + " ..."))
    return json.dumps(form)


def _cmd_map(args):
    """One call per JSON line of stdin (a list of arguments, or an object of keyword
    arguments), one JSON result per line of stdout; stops at the first failure."""
    workers = args.workers
    if workers != "auto":
        try:
            workers = int(workers)
        except ValueError:
            raise SpecError("--workers must be a number or 'auto', not %r" % (workers,))
    env = _manager(args).get(args.name)
    try:
        env.launch(workers=workers)
        _map_lines(env, args.module, args.function, args.timeout, not args.unordered)
    finally:
        env.exit()
    return 0


def _map_lines(env, module, function, timeout, ordered):
    """``wetlite map``: each result is printed once it (and, in order, those before
    it) is ready, even while the next input line is awaited, so the command can
    sit in a streaming pipe.  That is why the input is read on a thread and the
    calls are submitted here, not by map(), which reads its input on the
    caller's thread.  As in map(): two calls per worker in flight, and at the
    first failure (once the results before it are printed) the rest is cancelled."""
    import concurrent.futures
    import queue
    import threading
    events = queue.Queue()          # ("line", number, (args, kwargs)), ("done",), ("end", bad line error or None)
    room = threading.Semaphore(2 * env._map_width())
    stopped = threading.Event()

    def read():
        error = None
        try:
            for number, line in enumerate(sys.stdin, 1):
                if line.strip():
                    call = _input_call(line.strip(), number)
                    room.acquire()
                    if stopped.is_set():
                        return
                    events.put(("line", number, call))
        except Exception as exc:            # a bad line: the results before it are printed first
            error = exc if isinstance(exc, WetliteError) else CommandError("cannot read the input: %s" % exc)
        events.put(("end", error))
    reader = threading.Thread(target=read, name="wetlite-map-input")
    reader.daemon = True                    # it may wait on stdin for ever
    reader.start()
    what = "%s:%s" % (module, function)
    run = _MapRun(None, (), 0, ordered)     # its pending tasks, taken in order or as they finish
    lines = {}                              # task -> its input line number
    ended = bad = None
    try:
        while run.pending or not ended:
            event = events.get()
            if event[0] == "line":
                args, kwargs = event[2]
                task = env.submit(module, function, args, kwargs, timeout)
                lines[task] = event[1]
                run.pending.append(task)
                task.add_done_callback(lambda task: events.put(("done",)))
            elif event[0] == "end":
                ended, bad = True, event[1]
            for task in run.take():
                room.release()
                number = lines.pop(task)
                try:
                    result = task.result()
                except WetliteError as exc:
                    raise CommandError("input line %d: %s" % (number, exc))
                except Exception as exc:
                    raise _call_failure(exc, "%s on input line %d" % (what, number))
                sys.stdout.write(_json_text(result, what) + "\n")
                sys.stdout.flush()
        if bad is not None:
            raise bad
    finally:
        stopped.set()
        room.release()                      # (the reader may be waiting for room)
        concurrent.futures.wait(run.cancel_rest())      # the calls have stopped when the command ends


def _input_call(line, number):
    """An input line of ``wetlite map`` as (args, kwargs)."""
    value = _json_value(line, "input line %d" % number)
    if not isinstance(value, (list, dict)):
        raise SpecError("input line %d must be a JSON list of arguments, or an object of keyword arguments, not %r"
                        % (number, line))
    return (value, None) if isinstance(value, list) else ((), value)


class _NoJSONForm(Exception):
    """Raised by _json_form: names the part of a value that JSON cannot carry."""


def _json_form(value, where):
    """``value`` as plain JSON data, converting only where the JSON form is faithful.

    NumPy arrays and scalars become lists and numbers (numpy is looked up, never
    imported: a result that holds NumPy objects has imported it already), datetimes
    ISO 8601 strings, bytes ``{"$base64": ...}``, sets sorted lists, paths strings,
    and dict keys that are numbers strings, as JSON requires.  NaN and the
    infinities become null, as JavaScript's JSON.stringify and pandas' to_json
    write them: strict JSON has no form for them, and strict parsers (jq, a
    browser's JSON.parse) refuse Python's NaN/Infinity.  Anything else raises
    _NoJSONForm naming where it is.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        import math
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_json_form(item, "%s[%d]" % (where, i)) for i, item in enumerate(value)]
    if isinstance(value, dict):
        form = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise _NoJSONForm("%s has a %s key %r" % (where, type(key).__name__, key))
            form[key] = _json_form(item, "%s[%r]" % (where, key))
        return form
    if isinstance(value, (set, frozenset)):
        import json
        items = [_json_form(item, "an item of " + where) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=json.dumps)        # mixed types: a stable order all the same
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    import datetime
    import pathlib
    if isinstance(value, (datetime.date, datetime.time)):       # datetime is a date
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return _json_form(value.tolist(), where)                # Python scalars; complex stays complex
    raise _NoJSONForm("%s is a %s" % (where, type(value).__name__))


def _cmd_script(args):
    env = _manager(args).get(args.name)
    sys.stdout.write(env.script(_command_after_dashes(args), shell=args.shell))
    return 0


def _cmd_remove(args):
    _manager(args).remove(args.name)
    return 0


def _cmd_gc(args):
    mgr = _manager(args)
    found = mgr.gc(dry_run=args.dry_run)
    for item in found:
        print("%s %s  %s (%s)" % ("would remove" if args.dry_run else "removed", item["path"], item["what"],
                                  _human_bytes(item["size"])))
    print("%s %s under %s" % ("would free" if args.dry_run else "freed",
                              _human_bytes(sum(item["size"] for item in found)), mgr.root))
    for entry in mgr.list():
        if entry["status"] == "broken":
            _eprint("wetlite: left alone: %s" % _cli_advice(entry["problem"]))
    return 0


def _info(mgr):
    import platform
    tool_path = mgr._tool_exe_path() if mgr.tool != "venv" else None
    installed = bool(tool_path and os.path.isfile(tool_path))
    return {
        "wetlite": __version__,
        "platform": _conda_subdir(*_platform_id()),
        "system": "%s %s %s" % (platform.system(), platform.release(), platform.machine()),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "python_executable": sys.executable,
        "root": mgr.root,
        "tool": mgr.tool,
        "tool_version": mgr.tool_version,
        "tool_path": tool_path,
        "tool_installed": installed,
        "installed_version": (_read_marker(os.path.join(mgr.root, "bin", "." + mgr.tool + "-version"))
                              if installed and not mgr.tool_path else None),
        "environment": _shown_environ(),
    }


def _shown_environ():
    """wetlite's variables and the proxy ones, credentials masked (a proxy
    variable may hold ``user:password@host:port`` with no scheme)."""
    shown = {}
    for key, value in sorted(os.environ.items()):
        if key.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            shown[key] = _mask_proxy(value)
        elif key.startswith("WETLITE_"):
            shown[key] = _mask_url(value)
    return shown


def _cmd_info(args):
    import json
    mgr = _manager(args)
    info = mgr.info(args.name) if args.name else _info(mgr)
    if info.get("problem"):
        info["problem"] = _cli_advice(info["problem"])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "environment" and not args.name:
            value = ", ".join("%s=%s" % kv for kv in value.items()) or "(no WETLITE_* or proxy variables)"
        elif key == "installed":
            value = "".join("\n  " + json.dumps(item, sort_keys=True) for item in value) or "(nothing since creation)"
        elif key == "problem" and value is None:
            value = "(none)"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        print("%-18s %s" % (key + ":", value))
    return 0


_DOCTOR_URL_TIMEOUT = 5.0          # seconds the download source has to answer
_SOCKET_PATH_LIMIT = 103 if _MACOS else 107     # sun_path, less its NUL (AF_UNIX)
_SMALL_SHM = 128 << 20


def _cmd_doctor(args):
    """Check what wetlite needs here, report each finding, and end with one line per problem.

    The exit code is 1 only when wetlite cannot work here at all: the local
    check (build a venv, run a command, start a worker, call it) failed, and
    not merely because the venv tool cannot build here while pixi or
    micromamba can.
    """
    mgr = _manager(args)
    info = _info(mgr)
    problems = []               # (what is wrong, what to do or None if it says so)
    print("wetlite %s on %s (%s)" % (info["wetlite"], info["platform"], info["system"]))
    print("python   %s (%s)" % (info["python"], info["python_executable"]))
    _doctor_root(mgr, problems)
    tool_usable = _doctor_tool(mgr, info, args.offline, problems)
    _doctor_interpreters()
    _doctor_temp(problems)
    failed = _doctor_local(problems)
    fatal = failed is not None and not (failed == "create" and tool_usable and mgr.tool != "venv")
    if problems:
        print("problems (%d):" % len(problems))
        for what, fix in problems:
            print("  - %s" % (what if fix is None else what + ": " + fix))
        print("doctor: %s" % ("wetlite cannot work here" if fatal else
                              "wetlite works here, with the problems above"))
    else:
        print("doctor: all checks passed%s" % (" (the download check was skipped: --offline)"
                                               if args.offline and mgr.tool != "venv" else ""))
    return 1 if fatal else 0


def _doctor_root(mgr, problems):
    """Can environments be created under root, and does wetlite trust it?"""
    import tempfile
    root = existing = mgr.root
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)       # the nearest part that exists: root would be made there
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".wetlite-doctor-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        print("root     %s: NOT writable (%s)" % (root, exc.strerror or exc))
        problems.append(("root %s is not writable" % root,
                         "creating environments will fail; use --root or WETLITE_ROOT to choose a writable "
                         "directory (environments that exist there still run)"))
        return
    try:
        mgr._checked_root(create=False)         # the trust check every command makes
    except WetliteError as exc:
        print("root     %s: REFUSED" % root)
        problems.append((_cli_advice(str(exc)), None))          # it says what to do
        return
    print("root     %s: writable%s" % (root, "" if existing == root else " (will be created)"))


def _doctor_tool(mgr, info, offline, problems):
    """Report the tool; return whether it can be used (installed, or its download source answers)."""
    if mgr.tool == "venv":
        print("tool     venv: local interpreters, nothing to download")
        return True
    label = "%s %s" % (mgr.tool, mgr.tool_version)
    if info["tool_installed"]:
        try:
            version = _tool_version(info["tool_path"])
        except WetliteError as exc:
            print("tool     %s at %s: FAILED (%s)" % (label, info["tool_path"], exc))
            problems.append(("%s at %s does not run" % (mgr.tool, info["tool_path"]),
                             "remove it (wetlite downloads it again) or point %s at a working binary"
                             % _ENV_TOOL_PATHS[mgr.tool]))
            return False
        print("tool     %s: installed at %s (reports %s)" % (label, info["tool_path"], version))
        return True
    if mgr.tool_path:
        print("tool     %s: %s does not exist" % (label, info["tool_path"]))
        problems.append(("%s binary %s does not exist" % (mgr.tool, info["tool_path"]),
                         "fix %s (or tool_path), or unset it so that wetlite downloads %s"
                         % (_ENV_TOOL_PATHS[mgr.tool], mgr.tool)))
        return False
    asset = _tool_asset(mgr.tool, *_platform_id())
    url = "%s/%s/%s" % (mgr.download_url.rstrip("/"), mgr.tool_version, asset)
    settings = _download_settings(mgr, url)
    if offline:
        print("tool     %s: not installed yet; download check skipped (--offline); it would come from %s, %s"
              % (label, _mask_url(url), settings))
        return False
    status, answer = _probe_url(url, mgr.proxies)
    if status == 404 and mgr.tool == "micromamba":
        status, answer = _probe_url(url + ".tar.bz2", mgr.proxies)     # what an install falls back to
    if answer is None:
        print("tool     %s: not installed yet; its download source answers (%s, %s)" % (label, _mask_url(url),
                                                                                      settings))
        return True
    # A status is an answer: the source is reachable but does not serve the asset.
    failure = ("%s answers %s" if status else "%s is NOT reachable (%s)") % (_mask_url(url), answer)
    print("tool     %s: not installed yet, and it cannot be downloaded: %s (%s)" % (label, failure, settings))
    mirror = mgr.download_url != _RELEASE_URLS.get(mgr.tool)
    proxy, source = _download_proxy(mgr, url)
    problems.append((
        "%s cannot be downloaded: %s" % (mgr.tool, failure),
        "%s, or set %s to a %s binary you have; or use --tool venv (pip-only environments from local interpreters)"
        % ("check that the mirror serves %s/%s" % (mgr.tool_version, asset) if mirror and status else
           "check the proxy %s (%s) the download goes through, or unset it" % (_mask_proxy(proxy), source)
           if proxy and not status else
           "check the mirror settings above" if mirror else
           "set %s to a mirror or https_proxy to a proxy" % _ENV_DOWNLOAD_URL,
           _ENV_TOOL_PATHS[mgr.tool], mgr.tool)))
    return False


def _download_settings(mgr, url):
    """The mirror and proxy settings a download of ``url`` goes through, for messages (masked)."""
    if mgr.download_url == _RELEASE_URLS.get(mgr.tool):
        mirror = "no mirror (%s is not set)" % _ENV_DOWNLOAD_URL
    elif mgr.download_url == os.environ.get(_ENV_DOWNLOAD_URL):
        mirror = "mirror %s=%s" % (_ENV_DOWNLOAD_URL, _mask_url(mgr.download_url))
    else:
        mirror = "mirror download_url=%s" % _mask_url(mgr.download_url)
    proxy, source = _download_proxy(mgr, url)
    return "%s, %s" % (mirror, "proxy %s (%s)" % (_mask_proxy(proxy), source) if proxy else
                       "no proxy" + (" (%s)" % source if source == "no_proxy" else ""))


def _download_proxy(mgr, url):
    """``(proxy or None, where that comes from)`` for a download of ``url``."""
    import urllib.request
    scheme = url.partition(":")[0]
    if mgr.proxies is not None:
        return mgr.proxies.get(scheme), "proxies="
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and urllib.request.proxy_bypass(url.partition("://")[2].partition("/")[0]):
        return None, "no_proxy"
    return proxy, "%s_proxy" % scheme


def _probe_url(url, proxies):
    """``(None, None)`` if ``url`` can be fetched (its body is not read), else ``(HTTP status or None, why
    not)``, within _DOCTOR_URL_TIMEOUT."""
    import threading
    outcome = []

    def probe():
        try:
            _urlopen(url, proxies=proxies, timeout=_DOCTOR_URL_TIMEOUT).close()
            outcome.append((None, None))
        except Exception as exc:            # HTTPError, URLError, timeouts, bad proxies: all are answers here
            code = getattr(exc, "code", None)
            outcome.append((code, "HTTP %s" % code) if code else (None, str(getattr(exc, "reason", None) or exc)))
    # In a thread: a name lookup does not honour the socket timeout.
    thread = threading.Thread(target=probe, name="wetlite-doctor-probe")
    thread.daemon = True
    thread.start()
    thread.join(_DOCTOR_URL_TIMEOUT + 1)
    return outcome[0] if outcome else (None, "no answer within %d s" % _DOCTOR_URL_TIMEOUT)


def _doctor_interpreters():
    """The local interpreters the venv tool can use."""
    seen, versions = set(), []
    for path, version in _interpreter_candidates():
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        version = version or _interpreter_version(path)
        if version and _version_tuple(version) >= (3, 6) and version not in versions:
            versions.append(version)
    versions.sort(key=_version_tuple)
    print("venv     local interpreters the venv tool can use: %s" % (", ".join(versions) or "none"))


def _doctor_temp(problems):
    """Scripts and worker sockets live in the temp dir; large buffers in /dev/shm."""
    import tempfile
    try:
        scratch = tempfile.mkdtemp(prefix="wetlite-")
        os.rmdir(scratch)
    except OSError as exc:
        print("temp     %s: NOT writable (%s)" % (tempfile.gettempdir(), exc.strerror or exc))
        problems.append(("the temp dir %s is not writable" % tempfile.gettempdir(),
                         "set TMPDIR (TEMP on Windows) to a writable directory"))
        return
    if _WINDOWS:
        print("temp     %s: writable; workers use named pipes" % tempfile.gettempdir())
        return
    length = len(os.path.join(scratch, "worker.sock"))
    print("temp     %s: writable; a worker socket path is %d characters (the limit is %d)"
          % (tempfile.gettempdir(), length, _SOCKET_PATH_LIMIT))
    if length > _SOCKET_PATH_LIMIT:
        problems.append(("the temp dir's path is too long for a worker's Unix socket (%d > %d characters)"
                         % (length, _SOCKET_PATH_LIMIT), "set TMPDIR to a shorter directory, such as /tmp"))
    if sys.platform.startswith("linux"):
        try:
            st = os.statvfs("/dev/shm")
        except OSError:
            print("shm      /dev/shm: missing; large buffers go through the socket")
            problems.append(("/dev/shm is missing", "large arrays go through the socket (slower); mount a tmpfs "
                                                   "on /dev/shm"))
            return
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        print("shm      /dev/shm: %s free of %s" % (_human_bytes(free), _human_bytes(total)))
        if total < _SMALL_SHM:
            problems.append(("/dev/shm is small (%s)" % _human_bytes(total),
                             "large arrays may go through the socket (slower); in a container, give it more "
                             "(docker run --shm-size=1g)"))


def _doctor_local(problems):
    """Build a throwaway venv environment, run a command in it, start a worker and call it.

    Returns None if all worked, else the step that failed.
    """
    import time
    scratch = _private_temp_dir("doctor")       # pid-named: swept if this process is killed
    step = "create"
    try:
        mgr = EnvironmentManager(root=scratch, tool="venv")
        start = time.monotonic()
        env = mgr.create("doctor", force_external=True)
        print("create   ok: throwaway venv environment in %.2f s" % (time.monotonic() - start))
        step = "run"
        start = time.monotonic()
        out = env.run([["python", "-c", "import sys; print(sys.prefix)"]]).stdout.strip()
        ran = time.monotonic() - start
        if os.path.realpath(out) != os.path.realpath(env.path):
            raise ExecutorError("the command ran in %s, not in the environment %s" % (out, env.path))
        print("run      ok: a command in it took %.3f s" % ran)
        step = "worker"
        start = time.monotonic()
        env.launch()
        pid = env.execute("os", "getpid")
        cold = time.monotonic() - start
        samples = []
        for _ in range(200):
            t0 = time.perf_counter()
            env.execute("os", "getpid")
            samples.append(time.perf_counter() - t0)
        samples.sort()
        if pid == os.getpid():
            raise ExecutorError("the call ran in the host process, not in a worker")
        print("worker   ok: started and answered in %.3f s; a call round trip takes %.0f us (median of %d)"
              % (cold, samples[len(samples) // 2] * 1e6, len(samples)))
        mgr.exit()
        return None
    except WetliteError as exc:
        print("%-8s FAILED: %s" % (step, exc))
        problems.append(("the local check failed at %r: %s" % (step, str(exc).splitlines()[0]),
                         "run `wetlite -v doctor` for the details" if step == "create" else
                         "wetlite cannot run commands or workers here; please report it with this output"))
        return step
    finally:
        _rmtree(scratch)


def main(argv=None):
    """Run the wetlite command line with ``argv`` and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["serve"]:
        return _serve()             # the worker's start is a hot path: no argparse
    parser = _build_parser()
    cmd = None
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command in ("run", "script") and "--" in argv:
            # Everything after the first "--" is the user's command, passed on verbatim.  For the
            # other commands "--" stays argparse's own end of options: call NAME MODULE FUNC -- -1.
            cmd = argv[argv.index("--") + 1:]
            args, extra = parser.parse_known_args(argv[:argv.index("--")])
        if extra and args.command in ("run", "script") and cmd is None:
            import shlex
            parser.exit(2, "wetlite %s: error: put -- before the command: wetlite %s %s -- %s\n"
                        % (args.command, args.command, args.name, " ".join(shlex.quote(a) for a in extra)))
        if extra:
            parser.error("unrecognized arguments: %s" % " ".join(extra))
    except SystemExit as exc:      # usage errors, --help and --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.cmd = cmd
    restore_logging = _configure_cli_logging(args.verbose - args.quiet)
    try:
        return args.func(args) or 0
    except WetliteError as exc:
        _eprint("wetlite: error: %s" % _cli_advice(str(exc)))
        return 1
    except KeyboardInterrupt:
        _eprint("wetlite: interrupted")
        return 130
    finally:
        restore_logging()


# =============================================================================
# 21. Entry point
# =============================================================================

if __name__ == "__main__":
    # `python wetlite.py` and `import wetlite` must give one module object, or
    # classes exist twice in the process (cf. bottle.py).
    sys.modules.setdefault("wetlite", sys.modules["__main__"])
    sys.exit(main())
