"""Attacks on the root, its files and the processes wetlite starts (issue 11).

Each test stages an attack that worked before and checks that it fails now:
a root another user made or can write, planted runtime copies and binaries,
symbolic links in place of logs and locks, secrets in logs and records,
locks held by someone else, read-only roots and leftovers of killed runs.
Tests that need a second user (chown) run only as root; the rest run as
anyone.
"""
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import HERE, REPO, make_wheel, wetlite

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX owners, modes and signals")

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="making files of another user needs root")
OTHER_UID = 54321


def mode(path):
    return stat.S_IMODE(os.lstat(str(path)).st_mode)


def finishes(fn, seconds=60):
    """Run ``fn()`` in a thread; return (result, exception); fail if it hangs."""
    outcome = []

    def run():
        try:
            outcome.append((fn(), None))
        except BaseException as exc:
            outcome.append((None, exc))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "still waiting after %d s" % seconds
    return outcome[0]


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """A root with one venv environment, "shared", on the host's Python, built once."""
    root = str(tmp_path_factory.mktemp("security") / "shared-root")
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    mgr.create("shared", force_external=True)
    return root


@pytest.fixture(scope="module")
def venv_path(shared_root):
    """The shared venv; tests wrap it with mgr.load() in roots of their own."""
    return os.path.join(shared_root, "envs", "shared")


def runtime_dir(root):
    return os.path.join(str(root), "state", "runtime", wetlite._self_source()[1])


def plant_runtime(root, marker):
    """What an attacker would put in a root they created first: a boot script that runs their code."""
    directory = runtime_dir(root)
    os.makedirs(directory)
    code = "open(%r, 'w').write('pwned')\n" % str(marker)
    for name in ("_wetlite_worker.py", "wetlite.py"):
        with open(os.path.join(directory, name), "w") as f:
            f.write(code)
    return directory


def chown_tree(path, uid):
    for directory, dirs, files in os.walk(str(path)):
        for name in [directory] + [os.path.join(directory, n) for n in dirs + files]:
            os.lchown(name, uid, uid)


# -- a root someone else made or can write ----------------------------------------------------


@needs_root
def test_a_root_another_user_created_is_refused(tmp_path, venv_path):
    root = tmp_path / "shared-wl"
    marker = tmp_path / "pwned"
    plant_runtime(root, marker)
    chown_tree(root, OTHER_UID)
    os.chmod(str(root), 0o755)
    mgr = wetlite.EnvironmentManager(root=str(root), tool="venv")
    env = mgr.load("victim", venv_path)
    with pytest.raises(wetlite.WetliteError) as info:
        env.execute("os", "getpid")
    env.exit()
    assert "refusing the wetlite root" in str(info.value) and str(OTHER_UID) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("where", [".", "state", "state/runtime", "bin"])
def test_a_root_or_dir_others_can_write_is_refused(tmp_path, venv_path, where):
    root = tmp_path / "root"
    marker = tmp_path / "pwned"
    plant_runtime(root, marker)
    os.makedirs(str(root / "bin"))
    os.chmod(str(root / where), 0o777)
    mgr = wetlite.EnvironmentManager(root=str(root), tool="venv")
    env = mgr.load("victim", venv_path)
    with pytest.raises(wetlite.WetliteError) as info:
        env.execute("os", "getpid")
    env.exit()
    assert "can be written by its group or by other users" in str(info.value)
    assert not marker.exists()


def test_a_group_writable_root_of_ones_private_group_is_fine(tmp_path, venv_path):
    # umask 002 with a private group per user (Debian, Ubuntu, Fedora): harmless.
    if not wetlite._private_group(os.getegid()):
        pytest.skip("this user's group is not a private group")
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(str(root), 0o775)
    env = wetlite.EnvironmentManager(root=str(root), tool="venv").load("e", venv_path)
    try:
        assert env.execute("os", "getpid") != os.getpid()
    finally:
        env.exit()


@needs_root
def test_a_root_writable_by_a_shared_group_is_refused(tmp_path, venv_path):
    import grp
    shared = [g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid()][0]     # a group that exists
    root = tmp_path / "root"
    root.mkdir()
    os.chown(str(root), os.geteuid(), shared)
    os.chmod(str(root), 0o770)
    env = wetlite.EnvironmentManager(root=str(root), tool="venv").load("e", venv_path)
    with pytest.raises(wetlite.WetliteError) as info:
        env.execute("os", "getpid")
    assert "can be written by its group" in str(info.value)


def test_a_planted_runtime_copy_is_replaced_not_run(tmp_path, venv_path):
    # The hash in the path is public (it is the hash of wetlite.py): the
    # content is what must be checked.
    root = tmp_path / "root"
    marker = tmp_path / "pwned"
    directory = plant_runtime(root, marker)
    env = wetlite.EnvironmentManager(root=str(root), tool="venv").load("victim", venv_path)
    try:
        assert env.execute("os", "getpid") != os.getpid()
    finally:
        env.exit()
    assert not marker.exists()
    with open(os.path.join(directory, "wetlite.py"), "rb") as f:
        assert f.read() == wetlite._self_source()[0]


def test_a_runtime_copy_without_its_pycache_gets_a_private_one(tmp_path, venv_path):
    # Python would make __pycache__ with the umask's mode (775 under umask 002).
    root = tmp_path / "root"
    directory = runtime_dir(root)
    os.makedirs(directory, mode=0o700)
    with open(os.path.join(directory, "wetlite.py"), "wb") as f:
        f.write(wetlite._self_source()[0])
    with open(os.path.join(directory, "_wetlite_worker.py"), "w") as f:
        f.write(wetlite._WORKER_BOOT)
    old = os.umask(0o002)
    try:
        env = wetlite.EnvironmentManager(root=str(root), tool="venv").load("e", venv_path)
        try:
            assert env.execute("os", "getpid") != os.getpid()
        finally:
            env.exit()
    finally:
        os.umask(old)
    assert mode(os.path.join(directory, "__pycache__")) == 0o700


def test_a_planted_tool_binary_others_can_write_is_refused(tmp_path):
    root = tmp_path / "root"
    binary = root / "bin" / "micromamba"
    os.makedirs(str(binary.parent), mode=0o700)
    binary.write_text("#!/bin/sh\necho pwned > %s\n" % (tmp_path / "pwned"))
    os.chmod(str(binary), 0o777)
    (root / "bin" / ".micromamba-version").write_text(wetlite.MICROMAMBA_VERSION)
    mgr = wetlite.EnvironmentManager(root=str(root), tool="micromamba", download_url="http://127.0.0.1:9")
    with pytest.raises(wetlite.WetliteError) as info:
        mgr.install_tool()
    assert str(binary) in str(info.value)
    assert not (tmp_path / "pwned").exists()


@needs_root
def test_a_planted_tool_binary_of_another_user_is_refused(tmp_path):
    root = tmp_path / "root"
    binary = root / "bin" / "pixi"
    os.makedirs(str(binary.parent), mode=0o700)
    binary.write_text("#!/bin/sh\necho pixi 0.73.0\n")
    os.chmod(str(binary), 0o755)
    os.chown(str(binary), OTHER_UID, OTHER_UID)
    (root / "bin" / ".pixi-version").write_text(wetlite.PIXI_VERSION)
    mgr = wetlite.EnvironmentManager(root=str(root), tool="pixi", download_url="http://127.0.0.1:9")
    with pytest.raises(wetlite.WetliteError) as info:
        mgr.install_tool()
    assert "belongs to user id %d" % OTHER_UID in str(info.value)


def test_a_symlinked_root_of_ones_own_is_fine(tmp_path, venv_path):
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(str(tmp_path / "real"), str(tmp_path / "link"))
    env = wetlite.EnvironmentManager(root=str(tmp_path / "link"), tool="venv").load("e", venv_path)
    try:
        assert env.execute("os", "getpid") != os.getpid()
    finally:
        env.exit()


@needs_root
def test_a_root_link_another_user_owns_is_refused(tmp_path, venv_path):
    # Even to a directory of one's own: its owner may point it elsewhere later.
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(str(tmp_path / "real"), str(tmp_path / "link"))
    os.lchown(str(tmp_path / "link"), OTHER_UID, OTHER_UID)
    env = wetlite.EnvironmentManager(root=str(tmp_path / "link"), tool="venv").load("e", venv_path)
    with pytest.raises(wetlite.WetliteError) as info:
        env.execute("os", "getpid")
    env.exit()
    assert "symbolic link that belongs to user id %d" % OTHER_UID in str(info.value)


def test_a_state_dir_an_older_wetlite_left_open_is_made_private(tmp_path, venv_path):
    root = tmp_path / "root"
    os.makedirs(str(root / "state" / "logs"))
    os.chmod(str(root / "state"), 0o755)
    env = wetlite.EnvironmentManager(root=str(root), tool="venv").load("e", venv_path)
    try:
        env.execute("os", "getpid")
    finally:
        env.exit()
    assert mode(root / "state") == 0o700


def test_dirs_of_the_root_symlinked_to_a_disk_of_ones_own_are_fine(tmp_path, venv_path):
    # Home quotas are small: envs/ and the package cache often live on another disk.
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    for name in ("envs", "pkgs", "state"):
        (tmp_path / "scratch" / name).mkdir(mode=0o700, parents=True)
        os.symlink(str(tmp_path / "scratch" / name), str(root / name))
    env = wetlite.EnvironmentManager(root=str(root), tool="venv").load("e", venv_path)
    try:
        assert env.execute("os", "getpid") != os.getpid()
    finally:
        env.exit()
    assert os.listdir(str(tmp_path / "scratch" / "state" / "runtime"))


def test_the_package_cache_is_private_before_micromamba_makes_it(tmp_path):
    # micromamba would create pkgs/ with the umask's mode: group-writable under
    # umask 002, and then the next run would refuse the root.
    old = os.umask(0o002)
    try:
        mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="micromamba",
                                         tool_path=os.path.join(HERE, "stand_ins", "micromamba"))
        mgr.install_tool()
    finally:
        os.umask(old)
    assert mode(tmp_path / "root" / "pkgs") == 0o700


def test_a_dir_of_the_root_symlinked_to_where_others_can_write_is_refused(tmp_path, venv_path):
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    (tmp_path / "open").mkdir()
    os.chmod(str(tmp_path / "open"), 0o777)
    os.symlink(str(tmp_path / "open"), str(root / "state"))
    env = wetlite.EnvironmentManager(root=str(root), tool="venv").load("e", venv_path)
    with pytest.raises(wetlite.WetliteError) as info:
        env.execute("os", "getpid")
    env.exit()
    assert "points to %s" % (tmp_path / "open") in str(info.value)
    assert "can be written by its group or by other users" in str(info.value)


# -- links instead of logs and locks ------------------------------------------------------------


@pytest.mark.parametrize("name", ["locks/env-e.lock", "logs/e.log"])
def test_a_symlinked_lock_or_log_file_is_not_followed(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "root" / "state" / name
    os.makedirs(str(link.parent))
    os.symlink(str(victim), str(link))
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    with pytest.raises(wetlite.WetliteError) as info:
        mgr.create("e", force_external=True)
    assert "symbolic link" in str(info.value)
    assert victim.read_text() == "precious"


# -- private files, masked secrets -----------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    make_wheel(d, "probe-pkg", "1.0")
    return str(d)


SECRET_INDEX = "http://alice:S3CRET@127.0.0.1:9/simple"


def everything_under(root):
    for directory, dirs, files in os.walk(str(root)):
        for name in dirs + files:
            yield os.path.join(directory, name)


def test_files_and_dirs_under_a_new_root_are_private_and_hold_no_secrets(tmp_path, wheel_dir):
    old = os.umask(0o022)
    try:
        root = tmp_path / "root"
        mgr = wetlite.EnvironmentManager(root=str(root), tool="venv")
        env = mgr.create("e", {"pip": ["--index-url=" + SECRET_INDEX, "--no-index", "--find-links=" + wheel_dir,
                                       "probe-pkg"]}, force_external=True)
        env.execute("os", "getpid")
        env.exit()
    finally:
        os.umask(old)
    assert mode(root) == 0o700
    state = root / "state"
    for path in everything_under(state):
        expected = 0o700 if os.path.isdir(path) else 0o600
        assert mode(path) == expected, path
        if os.path.isfile(path) and not path.endswith(".pyc"):
            with open(path, "rb") as f:
                assert b"S3CRET" not in f.read(), path
    for name in ("bin", "envs", "state"):
        if (root / name).exists():
            assert mode(root / name) == 0o700, name
    with open(str(state / "logs" / "e.log")) as f:
        assert "--index-url=http://***@127.0.0.1:9/simple" in f.read()


def test_a_failing_pip_step_shows_no_secret(tmp_path, caplog):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    with caplog.at_level(10, logger="wetlite"):
        with pytest.raises(wetlite.CommandError) as info:
            mgr.create("e", {"pip": ["--index-url=" + SECRET_INDEX, "--retries=0", "--timeout=1",
                                     "no-such-package-anywhere"]}, force_external=True)
    assert "S3CRET" not in str(info.value) and "S3CRET" not in info.value.output_tail
    assert "S3CRET" not in caplog.text
    for path in everything_under(tmp_path / "root"):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert b"S3CRET" not in f.read(), path


def test_info_masks_proxies_and_the_mirror(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("https_proxy", "http://bob:PROXYPASS@proxy.example:3128")
    monkeypatch.setenv("WETLITE_DOWNLOAD_URL", "https://carol:MIRRORPASS@mirror.example/releases")
    monkeypatch.setenv("ALL_PROXY", "dave:BARE@bare.example:1080")      # no scheme: urllib and pip take it
    assert wetlite.main(["--root", str(tmp_path / "root"), "--tool", "venv", "info"]) == 0
    assert wetlite.main(["--root", str(tmp_path / "root"), "--tool", "venv", "info", "--json"]) == 0
    out = capsys.readouterr().out
    assert "PROXYPASS" not in out and "MIRRORPASS" not in out and "BARE" not in out
    assert "http://***@proxy.example:3128" in out and "https://***@mirror.example/releases" in out
    assert "***@bare.example:1080" in out


def test_doctor_masks_a_proxy_without_a_scheme(tmp_path, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "dave:BARE@bare.example:1080")
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="pixi", download_url="https://mirror.example/r")
    shown = wetlite._download_settings(mgr, "https://mirror.example/r/v0.1.0/pixi.tar.gz")
    assert "BARE" not in shown and "***@bare.example:1080" in shown


@pytest.mark.parametrize("text, shown", [
    ("pip install --index-url https://u:p@h/simple x", "pip install --index-url https://***@h/simple x"),
    ("--proxy=http://u:p@ss@proxy:8080 and http://a:b@c/", "--proxy=http://***@proxy:8080 and http://***@c/"),
    ("no credentials: https://h/a@b", "no credentials: https://h/a@b"),
    ("mail me: someone@example.com", "mail me: someone@example.com"),
])
def test_mask_url_in_text(text, shown):
    assert wetlite._mask_url(text) == shown


def test_mask_secrets_in_structures():
    masked = wetlite._mask_secrets({"pip": ["--extra-index-url=https://t:k@h/s", "numpy"], "n": 1})
    assert masked == {"pip": ["--extra-index-url=https://***@h/s", "numpy"], "n": 1}


# -- locks ---------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import importlib, os, sys, time
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    wetlite = importlib.import_module(os.environ.get("WETLITE_TEST_MODULE", "wetlite"))
    with wetlite._FileLock(sys.argv[3]):
        print("held", flush=True)
        time.sleep(120)
""")


def test_a_lock_wait_times_out_naming_the_holder(tmp_path, monkeypatch):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    lock = os.path.join(str(tmp_path / "root"), "state", "locks", "env-k9.lock")
    os.makedirs(os.path.dirname(lock))
    with open(lock, "w") as f:
        f.write("%d\n" % (10 ** 30))       # a longer line from an earlier holder: the file is not truncated
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, REPO, HERE, lock], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        monkeypatch.setattr(wetlite, "_LOCK_TIMEOUT", 0.5, raising=False)
        _, err = finishes(lambda: mgr.remove("k9"))
        assert isinstance(err, wetlite.WetliteError), err
        assert "process %d" % holder.pid in str(err) and "env-k9.lock" in str(err)
    finally:
        holder.kill()
        holder.wait()


# -- a read-only root ------------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """make(path): make ``path`` read-only for this process (a ro bind mount as root, chmod otherwise)."""
    mounts = []

    def make(path):
        path = str(path)
        if not AS_ROOT:
            for p in [path] + list(everything_under(path)):
                if not os.path.islink(p):
                    os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & ~0o222)
            return
        for argv in (["mount", "--bind", path, path], ["mount", "-o", "remount,ro,bind", path]):
            if subprocess.run(argv, stderr=subprocess.DEVNULL).returncode != 0:
                if mounts:
                    subprocess.run(["umount", path])
                pytest.skip("cannot make a read-only bind mount here")
            if not mounts:
                mounts.append(path)
    yield make
    for path in mounts:
        subprocess.run(["umount", path])
    if not AS_ROOT:
        for p in everything_under(tmp_path):
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)


@pytest.mark.parametrize("runtime_copy", ["kept", "missing"])
def test_existing_environments_work_on_a_read_only_root(tmp_path, read_only, runtime_copy):
    root = tmp_path / "root"
    mgr = wetlite.EnvironmentManager(root=str(root), tool="venv")
    env = mgr.create("e", force_external=True)
    env.execute("os", "getpid")
    env.exit()
    if runtime_copy == "missing":
        wetlite._rmtree(str(root / "state" / "runtime"))
    record = wetlite._read_json(str(root / "state" / "envs" / "e.json"))
    record.pop("activation", None)                  # the cache must be written again, and cannot be
    wetlite._write_json(str(root / "state" / "envs" / "e.json"), record)
    read_only(root)
    with pytest.raises(OSError):
        open(str(root / "probe"), "w")
    again = wetlite.EnvironmentManager(root=str(root), tool="venv")
    env = again.create("e", force_external=True)         # same recipe: reused, lock or no lock
    try:
        assert env.execute("os", "getpid") != os.getpid()
        assert again.get("e").path == env.path
        fallback = wetlite._RUNTIME_FALLBACK.get(wetlite._self_source()[1])
        assert (fallback is not None) == (runtime_copy == "missing")
    finally:
        again.exit()
        for directory in wetlite._RUNTIME_FALLBACK.values():     # (otherwise removed at exit)
            wetlite._rmtree(directory)
        wetlite._RUNTIME_FALLBACK.clear()


# -- leftovers of killed processes ---------------------------------------------------------------------

_KILLED = textwrap.dedent("""
    import importlib, os, signal, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    wetlite = importlib.import_module(os.environ.get("WETLITE_TEST_MODULE", "wetlite"))
    mgr = wetlite.EnvironmentManager(root=sys.argv[3], tool="venv")
    mgr.main_environment.run(["true"])
    print(wetlite._scripts_dir(), flush=True)
    if sys.argv[4] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_script_dirs_of_killed_processes_are_removed_on_the_next_run(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp))
    env.pop("WETLITE_DEBUG", None)
    argv = [sys.executable, "-c", _KILLED, REPO, HERE, str(tmp_path / "root")]
    killed = subprocess.run(argv + ["kill"], stdout=subprocess.PIPE, env=env)
    assert killed.returncode == -signal.SIGKILL
    left = killed.stdout.decode().strip()
    assert os.path.isdir(left)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = os.path.join(str(temp), "wetlite-scripts-%d-busybusy" % alive.pid)    # its owner still runs
        os.mkdir(busy, 0o700)
        later = subprocess.run(argv + ["exit"], stdout=subprocess.PIPE, env=env)
        assert later.returncode == 0
        assert not os.path.exists(left)
        assert os.path.isdir(busy)
    finally:
        alive.kill()
        alive.wait()
    assert sorted(os.listdir(str(temp))) == [os.path.basename(busy)]


def test_the_sweep_leaves_kept_dirs_and_other_users_dirs_alone(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE)
    pid = int(dead.stdout)
    mine, kept, theirs = [tmp_path / ("wetlite-scripts-%d-%s" % (pid, n)) for n in ("mine", "kept", "theirs")]
    for d in (mine, kept, theirs):
        d.mkdir(mode=0o700)
    (kept / wetlite._KEPT_MARKER).write_text("")        # WETLITE_DEBUG kept it for a look
    if AS_ROOT:
        os.chown(str(theirs), OTHER_UID, OTHER_UID)
    wetlite._sweep_dead_temp_dirs(str(tmp_path))
    assert not mine.exists()
    assert kept.is_dir()
    assert theirs.is_dir() == AS_ROOT


# -- the worker: start-up, handshake, fork, host death ---------------------------------------------

HOST_PREAMBLE = ("import importlib, os, sys, time; sys.path[:0] = [%r, %r]; "
                 "wetlite = importlib.import_module(os.environ.get('WETLITE_TEST_MODULE', 'wetlite'))\n"
                 % (REPO, HERE))

CALLS = textwrap.dedent('''
    import os, sys, time


    def fork_and_return():
        """A child that comes back from the call, as after a failed exec."""
        pid = os.fork()
        if pid == 0:
            return "child %d" % os.getpid()
        os.waitpid(pid, 0)
        return "parent"


    def fork_and_exit_with(code):
        pid = os.fork()
        if pid == 0:
            sys.exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) if hasattr(os, "waitstatus_to_exitcode") \\
            else os.waitpid(pid, 0)[1] >> 8


    def inheritable_pipes():
        """Descriptors beyond stdio that a child process would inherit (the lifeline must not be one)."""
        found = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if fd > 2 and os.get_inheritable(fd):
                    found.append(fd)
            except OSError:
                pass
        return found


    def hold(data, seconds):
        time.sleep(seconds)
        return len(data)


    def crash():
        import ctypes
        ctypes.string_at(0)


    def long_line(size):
        sys.stdout.write("y" * size)
        sys.stdout.flush()
        return size
''')


@pytest.fixture
def calls(tmp_path):
    path = tmp_path / "security_calls.py"
    path.write_text(CALLS)
    return str(path)


@pytest.fixture
def fresh_env(tmp_path, venv_path):
    """A new Environment (own root, own worker) on the shared venv; exited afterwards."""
    made = []

    def make(**kwargs):
        mgr = wetlite.EnvironmentManager(root=str(tmp_path / ("root%d" % len(made))), tool="venv")
        env = mgr.load("e%d" % len(made), venv_path)
        made.append(mgr)
        return env
    yield make
    for mgr in made:
        mgr.exit()


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def test_a_pipe_in_the_temp_dir_does_not_break_the_launch(fresh_env, tmp_path, monkeypatch):
    import tempfile
    odd = tmp_path / "a|b"
    odd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(odd))
    env = fresh_env()
    assert env.execute("os", "getpid") != os.getpid()


def test_a_temp_dir_too_long_for_a_socket_still_gets_a_unix_socket(fresh_env, tmp_path, monkeypatch):
    import tempfile
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    env = fresh_env().launch(timeout=30)
    with open("/proc/%d/environ" % env._worker.proc.pid, "rb") as f:
        raw = [v for v in f.read().split(b"\0") if v.startswith(b"WETLITE_WORKER=")][0]
    assert b"AF_UNIX" in raw and b"AF_INET" not in raw


def test_a_silent_intruder_on_the_tcp_fallback_does_not_block_the_launch(fresh_env, monkeypatch):
    # No Unix socket can be made: the host listens on 127.0.0.1, where any
    # local user can connect.  One connects first and says nothing.
    import socket
    monkeypatch.setattr(wetlite, "_HANDSHAKE_TIMEOUT", 1.0, raising=False)
    real_bind, real_listen = socket.socket.bind, socket.socket.listen
    intruders = []

    def bind(self, address):
        if isinstance(address, (str, bytes)):
            raise OSError("no Unix sockets in this test")
        return real_bind(self, address)

    def listen(self, *args):
        real_listen(self, *args)
        if self.family == socket.AF_INET:
            intruder = socket.create_connection(self.getsockname())
            intruders.append(intruder)              # connected, silent, and never leaving
    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "listen", listen)
    env = fresh_env()
    try:
        _, err = finishes(lambda: env.launch(timeout=15), seconds=40)
        assert err is None, err
        assert intruders, "the host did not fall back to TCP"
        assert env.execute("operator", "add", (1, 2)) == 3
    finally:
        for s in intruders:
            s.close()


_FORKING_HOST = HOST_PREAMBLE + textwrap.dedent('''
    mgr = wetlite.EnvironmentManager(root=sys.argv[1], tool="venv")
    env = mgr.load("e", sys.argv[2])
    env.launch(timeout=30)
    if sys.argv[3] == "multiprocessing":
        import multiprocessing
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        child = child.pid
    else:                       # a fork no Python code hears of (a C library's, say)
        import ctypes
        child = ctypes.CDLL(None).fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
    print(env._worker.proc.pid, child, flush=True)
    time.sleep(60)
''')


@pytest.mark.parametrize("how", ["multiprocessing", "libc"])
def test_the_worker_does_not_outlive_a_host_that_forked(tmp_path, venv_path, how):
    host = subprocess.Popen([sys.executable, "-c", _FORKING_HOST, str(tmp_path / "root"), venv_path, how],
                            stdout=subprocess.PIPE)
    pids = []
    try:
        pids = [int(p) for p in host.stdout.readline().split()]
        worker, child = pids
        assert alive(worker) and alive(child)
        host.kill()
        host.wait(5)
        assert wait_gone(worker, 10), "the worker lives on while the host's fork child does"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


_CALLING_CHILD = HOST_PREAMBLE + textwrap.dedent('''
    mgr = wetlite.EnvironmentManager(root=sys.argv[1], tool="venv")
    env = mgr.load("e", sys.argv[2])
    parent_worker = env.execute("os", "getpid")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.write(write, b"%d %d" % (os.getpid(), env.execute("os", "getppid", timeout=20)))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    print(os.read(read, 100).decode(), parent_worker, env.execute("os", "getpid"), flush=True)
''')


def test_a_fork_child_of_the_host_calls_through_a_worker_of_its_own(tmp_path, venv_path):
    # The child must not talk on its parent's connection: the replies would go astray.
    out = subprocess.run([sys.executable, "-c", _CALLING_CHILD, str(tmp_path / "root"), venv_path],
                         stdout=subprocess.PIPE, timeout=90).stdout.decode().split()
    child, childs_worker_parent, parent_worker, parent_worker_after = [int(x) for x in out]
    assert childs_worker_parent == child
    assert parent_worker_after == parent_worker


def test_the_lifeline_is_not_inherited_by_what_calls_start(fresh_env, calls):
    assert fresh_env().execute(calls, "inheritable_pipes") == []


def test_a_fork_that_returns_from_a_call_does_not_become_a_second_server(fresh_env, calls):
    env = fresh_env()
    worker = env.execute("os", "getpid")
    assert env.execute(calls, "fork_and_return") == "parent"
    assert {env.execute("os", "getpid") for _ in range(50)} == {worker}
    assert env.execute(calls, "fork_and_exit_with", (7,)) == 7


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or not wetlite._shm_available(), reason="lists /dev/shm")
def test_a_killed_host_leaks_no_shared_memory(tmp_path, venv_path, calls):
    code = HOST_PREAMBLE + textwrap.dedent('''
        mgr = wetlite.EnvironmentManager(root=sys.argv[1], tool="venv")
        env = mgr.load("e", sys.argv[2])
        env.launch(timeout=30)
        futures = [env.submit(sys.argv[3], "hold", (os.urandom(1 << 20), 60)) for _ in range(60)]
        print(env._worker.proc.pid, env._worker.shm_pool.prefix, flush=True)
        time.sleep(60)
    ''')
    host = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "root"), venv_path, calls],
                            stdout=subprocess.PIPE)
    prefix = None
    try:
        worker, prefix = host.stdout.readline().decode().split()
        worker = int(worker)
        assert len([n for n in os.listdir("/dev/shm") if n.startswith(prefix + "_")]) > 32
        host.kill()
        host.wait(5)
        assert wait_gone(worker, 10)
        assert [n for n in os.listdir("/dev/shm") if n.startswith(prefix + "_")] == []
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if prefix:
            for n in os.listdir("/dev/shm"):
                if n.startswith(prefix + "_"):
                    os.remove(os.path.join("/dev/shm", n))


def test_a_crash_in_native_code_shows_the_python_stack(fresh_env, calls):
    env = fresh_env()
    with pytest.raises(wetlite.WorkerDied) as info:
        env.execute(calls, "crash")
    assert info.value.signal == signal.SIGSEGV
    tail = info.value.stderr_tail
    assert "Fatal Python error" in tail and "security_calls.py" in tail and "crash" in tail


def test_a_huge_output_line_reaches_the_host_in_pieces(fresh_env, calls):
    pieces = []
    env = fresh_env()
    env.launch(output=lambda line: pieces.append(len(line)))
    size = 5 << 20
    assert env.execute(calls, "long_line", (size,)) == size
    deadline = time.monotonic() + 30
    while sum(pieces) < size and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(pieces) == size
    assert max(pieces) <= 1 << 16


def test_a_call_that_ignores_the_interrupt_is_killed_with_one_warning(fresh_env, calls, monkeypatch, caplog):
    monkeypatch.setattr(wetlite, "_INTERRUPT_GRACE", 0.3)
    env = fresh_env()
    env.launch()
    helpers = os.path.join(HERE, "executor_data", "worker_helpers.py")
    with caplog.at_level(30, logger="wetlite"):
        with pytest.raises(wetlite.CallTimeout):
            env.execute(helpers, "ignore_sigint_and_sleep", (30,), timeout=0.2)
        # A second thread that notices late must not warn again: wait for the timers.
        deadline = time.monotonic() + 10
        while any(isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    warnings = [r for r in caplog.records if "did not stop after an interrupt" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]



# -- timeouts and other input ---------------------------------------------------------------------

BAD_TIMEOUTS = [float("nan"), float("inf"), -1, 1e300, "5", True]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_bad_timeouts_are_spec_errors(fresh_env, calls, timeout):
    env = fresh_env()
    attempts = [
        lambda: env.execute("os", "getpid", timeout=timeout),
        lambda: env.submit("os", "getpid", timeout=timeout).result(10),
        lambda: env.run_script(calls, timeout=timeout),
        lambda: env.launch(timeout=timeout),
        lambda: env.run(["true"], timeout=timeout),
        lambda: env.manager.main_environment.execute("os", "getpid", timeout=timeout),
    ]
    for attempt in attempts:
        _, err = finishes(attempt, seconds=20)
        assert isinstance(err, wetlite.SpecError), err
        assert "timeout" in str(err) and repr(timeout) in str(err)
    try:
        env.execute("os", "getpid", timeout=0)      # a valid timeout, if a short one
    except wetlite.CallTimeout:
        pass
    assert env.execute("os", "getpid", timeout=30.5) != os.getpid()


def test_launch_timeout_may_not_be_none(fresh_env):
    with pytest.raises(wetlite.SpecError):
        fresh_env().launch(timeout=None)


def test_cli_call_with_a_nan_timeout(shared_root, capsys):
    code, err = finishes(lambda: wetlite.main(["--root", shared_root, "--tool", "venv", "call", "shared", "os",
                                               "getpid", "--timeout", "nan"]), seconds=30)
    assert err is None and code == 1
    assert "timeout must be a number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("function", [123, None, "", ["getpid"]], ids=repr)
def test_a_bad_function_on_the_fast_path_is_a_spec_error(fresh_env, function):
    env = fresh_env()
    env.execute("os", "getpid")                     # the worker is up: the fast path
    with pytest.raises(wetlite.SpecError) as info:
        env.execute("os", function)
    assert repr(function) in str(info.value)


@pytest.mark.parametrize("module", [["x"], 123, None, "/etc/passwd", "relative/dir/module"], ids=repr)
def test_a_bad_module_is_a_spec_error(fresh_env, module):
    env = fresh_env()
    env.execute("os", "getpid")
    for call in (env.execute, env.submit):
        with pytest.raises(wetlite.SpecError) as info:
            call(module, "f")
        assert repr(module) in str(info.value)


def test_a_bad_script_is_a_spec_error_before_any_round_trip(fresh_env, tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("pass\n")
    missing = str(tmp_path / "missing.py")
    env = fresh_env()
    for target in (env, env.manager.main_environment):
        for path, args, run_name, named in ((123, (), "__main__", "123"), (None, (), "__main__", "None"),
                                            (missing, (), "__main__", missing), (str(tmp_path), (), "__main__",
                                                                                 str(tmp_path)),
                                            (str(script), "-v", "__main__", "'-v'"),
                                            (str(script), [], 7, "7")):
            with pytest.raises(wetlite.SpecError) as info:
                target.run_script(path, args, run_name=run_name)
            assert named in str(info.value), (path, args, run_name)
    assert "does not exist" in str(pytest.raises(wetlite.SpecError, env.run_script, missing).value)
    assert env._worker is None              # refused on the host: no worker was started for it


@pytest.mark.parametrize("include", ["/dev/zero", "fifo"])
def test_a_requirements_include_that_is_not_a_file_is_a_spec_error(tmp_path, include):
    if include == "fifo":
        include = str(tmp_path / "fifo")
        os.mkfifo(include)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("-r %s\n" % include)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    _, err = finishes(lambda: mgr.create("r", config=str(requirements), force_external=True), seconds=30)
    assert isinstance(err, wetlite.SpecError), err
    assert include in str(err) and "not a regular file" in str(err)


def test_a_huge_requirements_file_is_a_spec_error(tmp_path, monkeypatch):
    monkeypatch.setattr(wetlite, "_CONFIG_LIMIT", 1000, raising=False)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy\n" * 1000)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    with pytest.raises(wetlite.SpecError) as info:
        mgr.create("r", config=str(requirements), force_external=True)
    assert "more than" in str(info.value)


# -- user site-packages ------------------------------------------------------------------------------


def test_user_site_packages_stay_out_of_a_conda_style_prefix(tmp_path, monkeypatch):
    # A conda or pixi prefix has a plain interpreter, no pyvenv.cfg: Python
    # would add ~/.local/lib/pythonX.Y/site-packages to its path.
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "conda-meta").mkdir()
    os.symlink(os.path.realpath(sys.executable), str(prefix / "bin" / "python"))
    home = tmp_path / "home"
    site = home / ".local" / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    site.mkdir(parents=True)
    (site / "leakprobe.py").write_text("WHERE = 'the user site'\n")
    monkeypatch.setenv("HOME", str(home))
    for name in ("PYTHONUSERBASE", "PYTHONNOUSERSITE", "WETLITE_USER_SITE"):
        monkeypatch.delenv(name, raising=False)
    probe = ["python", "-c", "import leakprobe"]
    assert subprocess.run([str(prefix / "bin" / "python")] + probe[1:], env=dict(os.environ)).returncode == 0

    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv")
    env = mgr.load("conda", str(prefix))
    assert env.tool == "prefix"
    try:
        assert env.run([probe], check=False).returncode != 0
        with pytest.raises(ModuleNotFoundError):
            env.execute("leakprobe", "__name__.upper")
        env.exit()
        monkeypatch.setenv("WETLITE_USER_SITE", "1")            # the documented opt-out
        assert env.run([probe], check=False).returncode == 0
        assert env.execute("leakprobe", "WHERE.upper") == "THE USER SITE"
    finally:
        mgr.exit()


# -- unpickling, scripts ------------------------------------------------------------------------------

EXITING = textwrap.dedent("""
    import sys


    class Exiting(Exception):
        def __reduce__(self):
            return (sys.exit, (3,))         # what unpickling it in the host runs


    class ExitingResult(object):
        def __reduce__(self):
            return (sys.exit, (4,))


    def raise_it():
        raise Exiting("boom")


    def return_it():
        return ExitingResult()
""")


def test_an_error_or_result_whose_unpickling_exits_does_not_end_the_host(fresh_env, tmp_path):
    path = tmp_path / "exiting.py"
    path.write_text(EXITING)
    env = fresh_env()
    with pytest.raises(wetlite.RemoteError) as info:
        env.execute(str(path), "raise_it")
    assert "Exiting" in str(info.value) and "boom" in str(info.value)
    with pytest.raises(wetlite.ExecutorError) as info:
        env.execute(str(path), "return_it")
    assert "could not be unpickled" in str(info.value)


@pytest.mark.skipif(sys.platform == "win32", reason="PowerShell is the shell there")
def test_powershell_scripts_are_written_for_windows_and_not_run_elsewhere(tmp_path):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="micromamba")
    env = wetlite.Environment(mgr, "e", str(tmp_path / "root" / "envs" / "e"), "micromamba")
    text = env.script(["python -V"], shell="powershell")
    tool = wetlite._quote_powershell(str(tmp_path / "root") + "\\bin\\micromamba.exe")
    assert "& %s 'shell' 'hook'" % tool in text
    venv = wetlite.Environment(mgr, "v", "/x/envs/v", "venv")
    assert "'/x/envs/v\\Scripts'" in venv.script(["python -V"], shell="powershell")
    for run in (venv.run, venv.execute_commands):
        with pytest.raises(wetlite.SpecError) as info:
            run(["python -V"], shell="powershell")
        assert "shell='bash'" in str(info.value)


@pytest.mark.parametrize("arg", ["a&calc", "x|y", "%PATH%", 'say "hi"', "a^b", "<in", "line\nbreak"])
def test_batch_files_refuse_arguments_cmd_would_run(tmp_path, arg):
    env = wetlite.EnvironmentManager(root=str(tmp_path), tool="venv").main_environment
    for name in ("build.bat", "C:\\tools\\Setup.CMD", "build.bat.", "build.cmd . "):
        with pytest.raises(wetlite.SpecError) as info:
            env.script([[name, "ok", arg]], shell="powershell")
        assert repr(arg) in str(info.value) and "cmd.exe" in str(info.value)
    assert "'a&calc'" in env.script([["tool.exe", "a&calc"]], shell="powershell")     # no cmd.exe there
    assert "'safe arg'" in env.script([["build.bat", "safe arg"]], shell="powershell")
