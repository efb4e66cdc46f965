"""Generated scripts (wetlite section 10) and running commands in environments.

Four parts:

1. bash for real: one venv environment under a hostile root is built once for
   the module, and its scripts run under ``bash -euo pipefail`` (directly and
   through ``env.run``): exact arguments, no injection, the right interpreter,
   scrubbed variables, stop-at-first-failure, live output, timeouts, Popen.
2. bash rendering of every kind (venv, micromamba, pixi, prefix) with hostile
   paths: ``bash -n``, then run against a fake tool that records its argv.
3. PowerShell: golden files in tests/data/golden/<kind>.ps1 (rewrite them with
   WETLITE_UPDATE_GOLDEN=1, then read the diff), structural checks, and a
   parse with tree-sitter-powershell plus a decoder for single-quoted
   literals that checks every value round-trips.
4. Bad input: SpecErrors whose messages name the value.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from conftest import import_requirement, wetlite

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_DIR = os.path.join(HERE, "data", "golden")
UPDATE_GOLDEN = os.environ.get("WETLITE_UPDATE_GOLDEN") == "1"

POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32" or shutil.which("bash") is None,
                                reason="runs generated bash")

# Every file an injection could create starts with "pwned".
HOSTILE = "sp ace 'sq' \"dq\" $(touch pwned1) `touch pwned2` ;touch pwned3; & | * ? [x] é 日本"

HOSTILE_ARGS = [
    "plain", "with space", "  two  leading", "it's", "'", "''", 'say "hi"', '"', "\\", "\\'", "\\\"",
    "$(touch pwned4)", "`touch pwned5`", "a;touch pwned6", "a && touch pwned7", "a & b", "a | b", "a || b",
    "*", "?", "[a]", "{a,b}", "~", "~root", "$HOME", "${PATH}", "$'x'", "!", "!!", "#comment", "a=b",
    "line1\nline2", "\n", "tab\there", "\r", "cr\r\nlf", "-n", "-e", "--flag=1", "-", "--", "", " ",
    "é", "日本語", "‘’‚‛“”„", "%PATH%", ">out", "<in", "2>&1", "$((1+1))", "\x01\x1b[0m",
]

ARGV_PRINTER = "import sys, json; print(json.dumps(sys.argv[1:]))"


def _find_pwned(*dirs):
    found = []
    for top in dirs:
        if not top or not os.path.isdir(top):
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            found.extend(os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith("pwned"))
    return found


def assert_no_pwned(*dirs):
    found = _find_pwned(*dirs)
    assert not found, "injected commands ran: %r" % found


def _top_level_pwned(directory):
    try:
        return [n for n in os.listdir(directory) if n.startswith("pwned")]
    except OSError:
        return []


@pytest.fixture(autouse=True)
def _no_injection(tmp_path):
    """After every test: no 'pwned' file in its tmp dir, the cwd, or the system temp dir."""
    import tempfile
    yield
    assert_no_pwned(str(tmp_path))
    assert not _top_level_pwned(os.getcwd())
    assert not _top_level_pwned(tempfile.gettempdir())
    assert not _top_level_pwned(HERE)


def run_bash(path_or_text, tmp_path, env=None, cwd=None, timeout=60):
    """Run a script under ``bash -euo pipefail`` and return the CompletedProcess (bytes)."""
    if os.path.exists(str(path_or_text)):
        path = str(path_or_text)
    else:
        directory = tmp_path / ("scripts " + HOSTILE)
        directory.mkdir(exist_ok=True)
        path = str(directory / "script.sh")
        with open(path, "wb") as f:
            f.write(path_or_text.encode("utf-8"))
    return subprocess.run(["bash", "-euo", "pipefail", path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, cwd=cwd or str(tmp_path), timeout=timeout)


def last_json_line(text):
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text.strip().splitlines()[-1])


def realpath(p):
    return os.path.normcase(os.path.realpath(p))


# =============================================================================
# 1. Generated bash, executed for real in a venv environment
# =============================================================================


@pytest.fixture(scope="module")
def venv_base(tmp_path_factory):
    return tmp_path_factory.mktemp("venvbase")


@pytest.fixture(scope="module")
def venv_env(venv_base):
    if sys.platform == "win32":
        pytest.skip("bash tests")
    root = venv_base / ("root " + HOSTILE)
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    env = mgr.create("e", force_external=True)
    assert env.tool == "venv" and os.path.isfile(env.python)
    yield env
    assert_no_pwned(str(venv_base))


@pytest.fixture
def junk_environ(monkeypatch, tmp_path):
    """Poison the parent's environment: Python variables and a fake `python` first on PATH."""
    fake_bin = tmp_path / "fake bin"
    fake_bin.mkdir()
    for name in ("python", "python3"):
        exe = fake_bin / name
        exe.write_text("#!/bin/sh\necho WRONG-PYTHON\nexit 99\n")
        exe.chmod(0o755)
    junk = {
        "PYTHONPATH": str(tmp_path / "junk-pythonpath"),
        "PYTHONHOME": str(tmp_path / "junk-pythonhome"),
        "PYTHONEXECUTABLE": str(tmp_path / "junk-python"),
        "__PYVENV_LAUNCHER__": str(tmp_path / "junk-launcher"),
        "VIRTUAL_ENV": str(tmp_path / "junk-venv"),
    }
    for key, value in junk.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", str(fake_bin) + os.pathsep + os.environ.get("PATH", ""))
    return junk


ENV_PROBE = ("import sys, os, json; print(json.dumps({'prefix': sys.prefix, 'executable': sys.executable, "
             "'vars': {k: os.environ.get(k) for k in ('PYTHONPATH', 'PYTHONHOME', 'PYTHONEXECUTABLE', "
             "'__PYVENV_LAUNCHER__', 'VIRTUAL_ENV')}}))")


def check_env_probe(result, env):
    assert realpath(result["prefix"]) == realpath(env.path)
    assert realpath(os.path.dirname(result["executable"])) == realpath(os.path.join(env.path, "bin"))
    assert result["vars"] == {"PYTHONPATH": None, "PYTHONHOME": None, "PYTHONEXECUTABLE": None,
                              "__PYVENV_LAUNCHER__": None, "VIRTUAL_ENV": env.path}


@POSIX_ONLY
def test_bash_script_hostile_args_arrive_exactly(venv_env, tmp_path, junk_environ):
    cwd = tmp_path / ("cwd " + HOSTILE)
    cwd.mkdir()
    text = venv_env.script([["python", "-c", ARGV_PRINTER] + HOSTILE_ARGS], shell="bash")
    proc = run_bash(text, tmp_path, env=dict(os.environ), cwd=str(cwd))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert last_json_line(proc.stdout) == HOSTILE_ARGS
    assert b"WRONG-PYTHON" not in proc.stdout
    assert_no_pwned(str(cwd), str(tmp_path))


@POSIX_ONLY
def test_run_hostile_args_arrive_exactly(venv_env, tmp_path):
    cwd = tmp_path / ("cwd " + HOSTILE)
    cwd.mkdir()
    cp = venv_env.run([["python", "-c", ARGV_PRINTER] + HOSTILE_ARGS,
                       ["python", "-c", "import os; print(os.getcwd())"]], cwd=str(cwd))
    assert cp.returncode == 0
    lines = cp.stdout.splitlines()
    assert json.loads(lines[-2]) == HOSTILE_ARGS
    assert realpath(lines[-1]) == realpath(str(cwd))
    assert_no_pwned(str(cwd), str(tmp_path))


@POSIX_ONLY
def test_bash_interpreter_is_the_environments_and_variables_are_scrubbed(venv_env, tmp_path, junk_environ):
    text = venv_env.script([["python", "-c", ENV_PROBE]], shell="bash")
    proc = run_bash(text, tmp_path, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    check_env_probe(last_json_line(proc.stdout), venv_env)


@POSIX_ONLY
def test_run_interpreter_is_the_environments_and_variables_are_scrubbed(venv_env, junk_environ):
    # env= extras are added after wetlite's own scrubbing: the script must scrub them itself.
    cp = venv_env.run("python -c %s" % wetlite._quote_bash(ENV_PROBE), env=dict(junk_environ))
    check_env_probe(last_json_line(cp.stdout), venv_env)
    assert "WRONG-PYTHON" not in cp.stdout


@POSIX_ONLY
def test_env_extras_reach_the_command(venv_env):
    cp = venv_env.run([["python", "-c", "import os; print(os.environ['WETLITE_TEST_VALUE'])"]],
                      env={"WETLITE_TEST_VALUE": HOSTILE})
    assert cp.stdout.splitlines()[-1] == HOSTILE


FAILURES = [
    pytest.param("exit 7", 7, id="exit-7"),
    pytest.param(["python", "-c", "import sys; sys.exit(7)"], 7, id="list-command"),
    pytest.param("false | true", 1, id="pipefail"),
    pytest.param(["false"], 1, id="false"),
    pytest.param(["/nonexistent/wetlite-no-such-program"], 127, id="not-found"),
]


@POSIX_ONLY
@pytest.mark.parametrize("failing, code", FAILURES)
def test_bash_stops_at_first_failure(venv_env, tmp_path, failing, code):
    marker = tmp_path / ("marker " + HOSTILE)
    text = venv_env.script(["echo before-failure", failing, ["touch", str(marker)]], shell="bash")
    proc = run_bash(text, tmp_path)
    assert proc.returncode == code
    assert b"before-failure" in proc.stdout
    assert not marker.exists()


@POSIX_ONLY
@pytest.mark.parametrize("failing, code", FAILURES)
def test_run_raises_command_error(venv_env, tmp_path, failing, code):
    marker = tmp_path / ("marker " + HOSTILE)
    with pytest.raises(wetlite.CommandError) as info:
        venv_env.run(["echo before-failure-%s" % code, failing, ["touch", str(marker)]])
    assert info.value.returncode == code
    assert "before-failure-%s" % code in info.value.output_tail
    assert "before-failure-%s" % code in str(info.value)
    assert not marker.exists()


@POSIX_ONLY
def test_run_check_false_returns_code(venv_env, tmp_path):
    marker = tmp_path / "marker"
    cp = venv_env.run(["echo out-line", "exit 7", ["touch", str(marker)]], check=False)
    assert cp.returncode == 7
    assert cp.stdout == "out-line\n"
    assert not marker.exists()


@POSIX_ONLY
def test_run_output_callback_is_live_and_ordered(venv_env):
    seen = []

    def output(line):
        seen.append((time.monotonic(), line))

    start = time.monotonic()
    cp = venv_env.run(["echo first", "sleep 0.6", "echo second; echo third >&2",
                       ["python", "-c", "print('fourth')"]], output=output)
    end = time.monotonic()
    assert [line for _, line in seen] == ["first", "second", "third", "fourth"]
    assert cp.stdout == "first\nsecond\nthird\nfourth\n"
    # "first" arrived while the command was still sleeping, not at the end.
    assert seen[1][0] - seen[0][0] >= 0.4
    assert end - seen[0][0] >= 0.4 and seen[0][0] - start < end - start


@POSIX_ONLY
def test_run_dict_commands_select_this_platform(venv_env):
    commands = {
        "all": ["echo all-1", ["python", "-c", "print('all-2')"]],
        "linux": ["echo linux"],
        "mac": [["echo", "mac"]],
        "windows": ["echo windows"],
    }
    expected = ["all-1", "all-2", "mac" if sys.platform == "darwin" else "linux"]
    assert venv_env.run(commands).stdout.splitlines() == expected
    # A single string per platform is one command.
    assert venv_env.run({"all": "echo only-all"}).stdout == "only-all\n"
    assert venv_env.run({"linux": "echo l", "mac": "echo m"}).stdout == ("m\n" if sys.platform == "darwin" else "l\n")


def _pid_alive(pid):
    status = "/proc/%d/status" % pid
    if os.path.exists("/proc/self/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("State:"):
                        return "Z" not in line.split()[1]
        except OSError:
            return False
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@POSIX_ONLY
def test_run_timeout_stops_the_whole_tree(venv_env, tmp_path):
    pidfile = tmp_path / ("pid " + HOSTILE)
    start = time.monotonic()
    with pytest.raises(wetlite.CommandError) as info:
        venv_env.run(["echo started", ["bash", "-c", 'echo $$ > "$1"; exec sleep 30', "child", str(pidfile)]],
                     timeout=1)
    elapsed = time.monotonic() - start
    assert elapsed < 8, "timeout took %.1f s" % elapsed
    assert "started" in info.value.output_tail
    pid = int(pidfile.read_text().strip())
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid), "the command's child (sleep, pid %d) survived the timeout" % pid


@POSIX_ONLY
def test_execute_commands_returns_popen_with_text_output(venv_env):
    proc = venv_env.execute_commands([["python", "-c", ARGV_PRINTER] + HOSTILE_ARGS, "echo done >&2"])
    try:
        assert isinstance(proc, subprocess.Popen)
        out = proc.stdout.read()
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert isinstance(out, str)
    lines = out.splitlines()
    assert json.loads(lines[0]) == HOSTILE_ARGS
    assert lines[1] == "done"
    assert proc.returncode == 0


@POSIX_ONLY
def test_execute_commands_wait(venv_env, tmp_path):
    marker = tmp_path / "marker"
    proc = venv_env.execute_commands(["echo hi", "exit 3", ["touch", str(marker)]], wait=True)
    assert proc.returncode == 3
    assert not marker.exists()
    proc = venv_env.executeCommands([["python", "-c", "print(1)"]], wait=True)
    assert proc.returncode == 0


@POSIX_ONLY
def test_execute_commands_popen_kwargs(venv_env, tmp_path):
    out_path = tmp_path / "out.txt"
    with open(str(out_path), "w") as out:
        proc = venv_env.execute_commands([["python", "-c", "print('to-file')"]],
                                         popen_kwargs={"stdout": out, "stderr": subprocess.STDOUT})
        assert proc.wait(timeout=30) == 0
    assert out_path.read_text() == "to-file\n"


@POSIX_ONLY
def test_script_default_shell_is_bash_here(venv_env):
    assert venv_env.script(["echo x"]) == venv_env.script(["echo x"], shell="bash")
    text = venv_env.script(["echo x"], shell="bash")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -eo pipefail" in text.splitlines()[:4]


@POSIX_ONLY
def test_main_environment_runs_host_without_activation(tmp_path):
    mgr = wetlite.EnvironmentManager(root=tmp_path / "root", tool="venv")
    main = mgr.main_environment
    text = main.script([["echo", "x"]], shell="bash")
    assert "VIRTUAL_ENV=" not in text and "PATH=" not in text
    cp = main.run([[sys.executable, "-c", "import sys; print(sys.prefix)"]])
    assert realpath(cp.stdout.strip()) == realpath(sys.prefix)


@POSIX_ONLY
def test_quote_bash_random_round_trip(tmp_path):
    rng = random.Random(20240611)
    alphabet = list("abc XYZ019_-=+@%:,./'\"\\`$(){}[]<>|&;*?!#~^\t\n\r") + ["é", "日", "‘", "’", "\x1b", "\x7f"]
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(400)]
    values += HOSTILE_ARGS
    script = wetlite._render_script("bash", [], [["printf", "%s\\0"] + values])
    proc = run_bash(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode("utf-8").split("\0")[:-1] == values


def _program_dir(tmp_path, name):
    """A directory holding an executable called ``name`` that prints 'ran NAME'."""
    directory = tmp_path / "programs"
    directory.mkdir(exist_ok=True)
    exe = directory / name
    exe.write_text('#!/bin/sh\necho "ran $(basename "$0")"\n')
    exe.chmod(0o755)
    return str(directory)


@POSIX_ONLY
@pytest.mark.parametrize("name", ["x=1", "if", "then", "time", "function", "while"])
def test_list_command_first_word_is_a_program_name(venv_env, tmp_path, name):
    """A list command's first argument names a program, even if bash would parse it as an
    assignment (x=1) or a reserved word (if, time).  BUG: _quote_bash leaves such words bare."""
    directory = _program_dir(tmp_path, name)
    cp = venv_env.run([[name]], env={"PATH": directory + os.pathsep + os.environ["PATH"]}, check=False)
    assert (cp.returncode, cp.stdout) == (0, "ran %s\n" % name)


@POSIX_ONLY
def test_non_utf8_argument_bytes(venv_env):
    """A str decoded from non-UTF-8 bytes (os.fsdecode, surrogateescape) is a legal POSIX argument.
    It must arrive as the original bytes, or be refused with a SpecError; not a UnicodeEncodeError."""
    value = os.fsdecode(b"caf\xe9-\xff")
    try:
        cp = venv_env.run([["python", "-c", "import os, sys; print(os.fsencode(sys.argv[1]).hex())", value]])
    except wetlite.SpecError as exc:
        assert repr(value) in str(exc)
    else:
        assert cp.stdout.strip() == b"caf\xe9-\xff".hex()


# =============================================================================
# 2. bash rendering of every kind, with hostile paths and a fake tool
# =============================================================================

FAKE_TOOL = r"""#!/usr/bin/env bash
# Stand-in for micromamba / pixi: records its argv (NUL-separated) and prints a hook.
if [ -n "${FAKE_TOOL_LOG:-}" ]; then printf '%s\0' CALL "$@" >> "$FAKE_TOOL_LOG"; fi
case "${1:-}" in
  --version) echo "fake 2.8.1"; exit 0;;
  shell|shell-hook)
    if [ -n "${FAKE_TOOL_FAIL:-}" ]; then echo "fake hook failed" >&2; exit "$FAKE_TOOL_FAIL"; fi;;
  *) echo "fake tool: unexpected arguments: $*" >&2; exit 2;;
esac
if [ "$1" = shell ]; then
cat <<'EOF'
micromamba() {
  printf '%s\0' FUNC "$@" >> "$FAKE_TOOL_LOG"
  if [ -n "${FAKE_ACTIVATE_FAIL:-}" ]; then return "$FAKE_ACTIVATE_FAIL"; fi
  if [ "$1" = activate ]; then export CONDA_PREFIX="$2" FAKE_ACTIVATED=micromamba; fi
}
EOF
else
  echo 'export FAKE_ACTIVATED=pixi'
fi
"""

PROBE_VARS = ("MAMBA_ROOT_PREFIX", "CONDA_PREFIX", "FAKE_ACTIVATED", "PATH", "VIRTUAL_ENV", "WETLITE_ACT_A",
              "WETLITE_ACT_B")
VAR_PROBE = "import os, json; print(json.dumps({k: os.environ.get(k) for k in %r}))" % (PROBE_VARS,)


def read_fake_log(path):
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        parts = f.read().decode("utf-8").split("\0")[:-1]
    calls = []
    for part in parts:
        if part in ("CALL", "FUNC"):
            calls.append([part])
        else:
            calls[-1].append(part)
    return calls


@pytest.fixture
def hostile_layout(tmp_path):
    """Hostile root, prefix, manifest and tool dir, and fake micromamba/pixi executables."""
    base = tmp_path / ("base " + HOSTILE)
    layout = {
        "root": base / ("root " + HOSTILE),
        "prefix": base / ("prefix " + HOSTILE) / "envs" / "e",
        "manifest": base / ("workspace " + HOSTILE) / "pixi.toml",
        "tool_dir": base / ("tools " + HOSTILE) / "bin",
        "log": base / ("log " + HOSTILE),
    }
    for key in ("root", "prefix", "tool_dir"):
        layout[key].mkdir(parents=True)
    layout["manifest"].parent.mkdir(parents=True)
    layout["manifest"].write_text("[workspace]\n")
    for name in ("micromamba", "pixi"):
        exe = layout["tool_dir"] / name
        exe.write_text(FAKE_TOOL)
        exe.chmod(0o755)
    layout = {k: str(v) for k, v in layout.items()}
    layout["base"] = str(base)
    return layout


def make_env(layout, kind):
    tool = kind if kind in ("micromamba", "pixi") else "venv"
    kwargs = {}
    if tool != "venv":
        kwargs["tool_path"] = os.path.join(layout["tool_dir"], tool)
    mgr = wetlite.EnvironmentManager(root=layout["root"], tool=tool, **kwargs)
    return wetlite.Environment(mgr, "e", layout["prefix"], kind,
                               manifest=layout["manifest"] if kind == "pixi" else None)


def tool_run_environ(layout, **extra):
    environ = dict(os.environ)
    environ["FAKE_TOOL_LOG"] = layout["log"]
    environ.update(extra)
    return environ


@POSIX_ONLY
@pytest.mark.parametrize("kind", ["venv", "micromamba", "pixi", "prefix", "main"])
def test_bash_syntax_every_kind(hostile_layout, tmp_path, kind):
    env = make_env(hostile_layout, kind)
    text = env.script({"all": ["echo a", ["echo"] + HOSTILE_ARGS], "linux": [["true"]], "mac": [["true"]],
                       "windows": ["Write-Output w"]}, shell="bash")
    path = tmp_path / ("syntax " + HOSTILE + ".sh")
    path.write_bytes(text.encode("utf-8"))
    proc = subprocess.run(["bash", "-n", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace") + "\n" + text
    assert "Write-Output" not in text
    assert text.endswith("\n")


@POSIX_ONLY
def test_micromamba_activation_with_fake_tool(hostile_layout, tmp_path):
    env = make_env(hostile_layout, "micromamba")
    text = env.script([[sys.executable, "-c", VAR_PROBE]], shell="bash")
    proc = run_bash(text, tmp_path, env=tool_run_environ(hostile_layout))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert read_fake_log(hostile_layout["log"]) == [
        ["CALL", "shell", "hook", "-s", "bash"],
        ["FUNC", "activate", hostile_layout["prefix"]],
    ]
    result = last_json_line(proc.stdout)
    assert result["MAMBA_ROOT_PREFIX"] == hostile_layout["root"]
    assert result["CONDA_PREFIX"] == hostile_layout["prefix"]
    assert result["FAKE_ACTIVATED"] == "micromamba"
    assert_no_pwned(hostile_layout["base"])


@POSIX_ONLY
def test_micromamba_activation_through_run(hostile_layout):
    env = make_env(hostile_layout, "micromamba")
    cp = env.run([[sys.executable, "-c", VAR_PROBE]], env={"FAKE_TOOL_LOG": hostile_layout["log"]})
    calls = read_fake_log(hostile_layout["log"])
    assert calls[-2:] == [["CALL", "shell", "hook", "-s", "bash"], ["FUNC", "activate", hostile_layout["prefix"]]]
    result = last_json_line(cp.stdout)
    assert (result["MAMBA_ROOT_PREFIX"], result["CONDA_PREFIX"]) == (hostile_layout["root"], hostile_layout["prefix"])


@POSIX_ONLY
def test_micromamba_hook_failure_stops_the_script(hostile_layout, tmp_path):
    env = make_env(hostile_layout, "micromamba")
    marker = tmp_path / "marker"
    text = env.script([["touch", str(marker)]], shell="bash")
    proc = run_bash(text, tmp_path, env=tool_run_environ(hostile_layout, FAKE_TOOL_FAIL="5"))
    assert proc.returncode == 5
    assert b"fake hook failed" in proc.stderr
    assert not marker.exists()


@POSIX_ONLY
def test_micromamba_activate_failure_stops_the_script(hostile_layout, tmp_path):
    env = make_env(hostile_layout, "micromamba")
    marker = tmp_path / "marker"
    text = env.script([["touch", str(marker)]], shell="bash")
    proc = run_bash(text, tmp_path, env=tool_run_environ(hostile_layout, FAKE_ACTIVATE_FAIL="4"))
    assert proc.returncode == 4
    assert not marker.exists()


@POSIX_ONLY
def test_pixi_activation_with_fake_tool(hostile_layout, tmp_path):
    env = make_env(hostile_layout, "pixi")
    text = env.script([[sys.executable, "-c", VAR_PROBE]], shell="bash")
    proc = run_bash(text, tmp_path, env=tool_run_environ(hostile_layout))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert read_fake_log(hostile_layout["log"]) == [
        ["CALL", "shell-hook", "--manifest-path", hostile_layout["manifest"], "-e", "default", "-s", "bash",
         "--change-ps1", "false", "--frozen"],
    ]
    result = last_json_line(proc.stdout)
    assert result["FAKE_ACTIVATED"] == "pixi"
    assert result["PATH"].split(os.pathsep)[0] == hostile_layout["tool_dir"]
    assert_no_pwned(hostile_layout["base"])


@POSIX_ONLY
def test_pixi_activation_through_run(hostile_layout):
    env = make_env(hostile_layout, "pixi")
    cp = env.run([[sys.executable, "-c", VAR_PROBE]], env={"FAKE_TOOL_LOG": hostile_layout["log"]})
    assert read_fake_log(hostile_layout["log"])[-1] == [
        "CALL", "shell-hook", "--manifest-path", hostile_layout["manifest"], "-e", "default", "-s", "bash",
        "--change-ps1", "false", "--frozen"]
    assert last_json_line(cp.stdout)["FAKE_ACTIVATED"] == "pixi"


@POSIX_ONLY
def test_pixi_hook_failure_stops_the_script(hostile_layout, tmp_path):
    env = make_env(hostile_layout, "pixi")
    marker = tmp_path / "marker"
    text = env.script([["touch", str(marker)]], shell="bash")
    proc = run_bash(text, tmp_path, env=tool_run_environ(hostile_layout, FAKE_TOOL_FAIL="6"))
    assert proc.returncode == 6
    assert not marker.exists()
    with pytest.raises(wetlite.CommandError) as info:
        env.run([["touch", str(marker)]], env={"FAKE_TOOL_FAIL": "6"})
    assert info.value.returncode == 6
    assert "fake hook failed" in info.value.output_tail
    assert not marker.exists()


@POSIX_ONLY
def test_prefix_activation_sources_activate_d(hostile_layout, tmp_path):
    env = make_env(hostile_layout, "prefix")
    activate_d = os.path.join(hostile_layout["prefix"], "etc", "conda", "activate.d")
    os.makedirs(activate_d)
    with open(os.path.join(activate_d, "a " + HOSTILE + ".sh"), "w") as f:
        f.write('export WETLITE_ACT_A="from-a:$CONDA_PREFIX"\n')
    with open(os.path.join(activate_d, "b.sh"), "w") as f:
        f.write('export WETLITE_ACT_B="from-b:${WETLITE_ACT_A%%:*}"\n')
    with open(os.path.join(activate_d, "c.ps1"), "w") as f:
        f.write("touch pwned-ps1\n")
    with open(os.path.join(activate_d, "d.txt"), "w") as f:
        f.write("touch pwned-txt\n")
    os.makedirs(os.path.join(activate_d, "e.sh"))      # a directory, not a script
    text = env.script([[sys.executable, "-c", VAR_PROBE]], shell="bash")
    proc = run_bash(text, tmp_path, env=dict(os.environ), cwd=activate_d)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    result = last_json_line(proc.stdout)
    assert result["CONDA_PREFIX"] == hostile_layout["prefix"]
    assert result["WETLITE_ACT_A"] == "from-a:" + hostile_layout["prefix"]
    assert result["WETLITE_ACT_B"] == "from-b:from-a"
    assert result["PATH"].split(os.pathsep)[0] == os.path.join(hostile_layout["prefix"], "bin")
    assert_no_pwned(hostile_layout["base"])


@POSIX_ONLY
def test_prefix_activation_without_activate_d(hostile_layout, tmp_path):
    env = make_env(hostile_layout, "prefix")
    text = env.script([[sys.executable, "-c", VAR_PROBE]], shell="bash")
    proc = run_bash(text, tmp_path, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert last_json_line(proc.stdout)["CONDA_PREFIX"] == hostile_layout["prefix"]


@pytest.mark.parametrize("shell", ["bash", "powershell"])
def test_activation_lines_unknown_kind(shell):
    with pytest.raises(wetlite.SpecError) as info:
        wetlite._activation_lines("condaa", shell, "/p", "/r", "/t", None)
    assert "condaa" in str(info.value)


# =============================================================================
# 3. PowerShell: goldens, structure, tree-sitter parse, literal round trip
# =============================================================================

PS_QUOTES = "'\u2018\u2019\u201a\u201b"

# Fixed, hostile, and independent of the machine: root and tool go through
# EnvironmentManager (abspath), so they are POSIX-absolute; prefix and
# manifest are given to Environment as Windows paths.
PS_ROOT = "/opt/wet lite/O'Brien \u2018a\u2019 \u201ab\u201b $env:HOME `$x; y & z (1) é"
PS_TOOL_DIR = PS_ROOT + "/bin"
PS_PREFIX = "C:\\Users\\O'Brien \u2018q\u2019 \u201ar\u201b\\$(Get-Date) `n; & | @{x} é 日本\\envs\\e"
PS_MANIFEST = "D:\\work space\\it's \u2018m\u2019 $PWD `t; #x\\pixi.toml"
PS_ARGS = ["-c", "import sys; print(sys.argv[1:])", "it's", "\u2018curly\u2019 \u201alow\u201b", "''", '"dq"',
           '""', "$(Get-Date)", "$env:PATH", "`t", "a; b & c | d", "#c", "<#", "@'", "'@", "--%", "", " ",
           "-x", "é 日本", "\\", "C:\\a b\\"]
PS_COMMANDS = {
    "all": ["Write-Output 'shell code is inserted verbatim'", ["python"] + PS_ARGS],
    "linux": ["echo linux-only"],
    "mac": ["echo mac-only"],
    "windows": [["where.exe", "python"]],
}
PS_KINDS = ["venv", "micromamba", "pixi", "prefix", "main"]
CHECK_LINE = "if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }"
RESET_LINE = "$global:LASTEXITCODE = 0"
GOLDEN_SKIP = pytest.mark.skipif(sys.platform == "win32", reason="golden root paths are POSIX (os.path.abspath)")


def ps_env(kind):
    tool = kind if kind in ("micromamba", "pixi") else "venv"
    kwargs = {"tool_path": PS_TOOL_DIR + "/" + tool} if tool != "venv" else {}
    mgr = wetlite.EnvironmentManager(root=PS_ROOT, tool=tool, **kwargs)
    if kind == "main":
        return mgr.main_environment
    return wetlite.Environment(mgr, "e", PS_PREFIX, kind, manifest=PS_MANIFEST if kind == "pixi" else None)


def ps_script(kind):
    text = ps_env(kind).script(PS_COMMANDS, shell="powershell")
    if kind == "main":      # the main environment's prefix is the host's: nothing machine-specific is rendered
        assert sys.prefix not in text
    return text.replace("# Generated by wetlite %s;" % wetlite.__version__, "# Generated by wetlite VERSION;")


def decode_ps_single_quoted(literal):
    """Decode one single-quoted PowerShell literal, as PowerShell's tokenizer does.

    Any of ' U+2018 U+2019 U+201A U+201B opens and closes the string; inside,
    two quote characters in a row stand for the second one.  Raises
    ValueError if the literal closes before its last character (the rest
    would be code) or never closes.
    """
    if len(literal) < 2 or literal[0] not in PS_QUOTES:
        raise ValueError("not a single-quoted literal: %r" % (literal,))
    out = []
    i, n = 1, len(literal)
    while i < n:
        c = literal[i]
        if c in PS_QUOTES:
            if i + 1 < n and literal[i + 1] in PS_QUOTES:
                out.append(literal[i + 1])
                i += 2
                continue
            if i != n - 1:
                raise ValueError("literal %r closes at offset %d; %r would be code" % (literal, i, literal[i + 1:]))
            return "".join(out)
        out.append(c)
        i += 1
    raise ValueError("unterminated literal %r" % (literal,))


def test_decoder_itself():
    assert decode_ps_single_quoted("''") == ""
    assert decode_ps_single_quoted("'it''s'") == "it's"
    assert decode_ps_single_quoted("'a\u2018\u2018b'") == "a\u2018b"
    assert decode_ps_single_quoted("\u2019x\u201b") == "x"
    assert decode_ps_single_quoted("'$(x) `n \"'") == '$(x) `n "'
    for bad in ["'a\u2018b'", "'a'b'", "'abc", "'a\u201b; rm x'", "x'"]:
        with pytest.raises(ValueError):
            decode_ps_single_quoted(bad)


def test_quote_powershell_round_trip_in_python():
    rng = random.Random(7)
    alphabet = list(PS_QUOTES + "\"`$(){}@#<>;&|,. \t\r\nabcZ09\\-") + ["é", "日", "\u201c", "\u201d", "\u201e"]
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        quoted = wetlite._quote_powershell(value)
        assert decode_ps_single_quoted(quoted) == value, (value, quoted)


def golden_path(kind):
    return os.path.join(GOLDEN_DIR, "%s.ps1" % kind)


@GOLDEN_SKIP
@pytest.mark.parametrize("kind", PS_KINDS)
def test_powershell_golden(kind):
    text = ps_script(kind)
    path = golden_path(kind)
    if UPDATE_GOLDEN:
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8"))
    if not os.path.exists(path):
        pytest.fail("golden file %s is missing; run with WETLITE_UPDATE_GOLDEN=1 and review it" % path)
    with open(path, "rb") as f:
        expected = f.read().decode("utf-8")
    assert text == expected, "rendering changed; if intended, rerun with WETLITE_UPDATE_GOLDEN=1 and review the diff"


def ps_lines(text):
    assert text.endswith("\r\n")
    body = text[:-2]
    assert "\n" not in body.replace("\r\n", ""), "bare LF in a CRLF script"
    return body.split("\r\n")


def is_native_invocation(line):
    return line.startswith("& ") or "(& " in line or line.startswith("micromamba ")


@GOLDEN_SKIP
@pytest.mark.parametrize("kind", PS_KINDS)
def test_powershell_structure(kind):
    lines = ps_lines(ps_script(kind))
    assert lines[0] == "# Generated by wetlite VERSION; do not edit."
    assert lines[1] == "$ErrorActionPreference = 'Stop'"
    # pwsh 7.3+ could turn native exit codes into errors; wetlite checks them itself.
    assert lines[2].startswith("$PSNativeCommandUseErrorActionPreference = $false")
    scrub = lines[3]
    assert scrub.startswith("foreach ($wetliteName in ")
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__", "VIRTUAL_ENV"):
        assert "'%s'" % name in scrub
    assert lines[4] == '    Remove-Item -LiteralPath "Env:$wetliteName" -ErrorAction SilentlyContinue'
    assert lines[5] == "}"
    assert lines[-1] == "exit 0"
    assert lines.count("exit 0") == 1
    # Windows commands in, Linux/mac ones out.
    text = "\r\n".join(lines)
    assert "linux-only" not in text and "mac-only" not in text
    user = [i for i, line in enumerate(lines)
            if line == PS_COMMANDS["all"][0] or line.startswith(("& 'python' ", "& 'where.exe' "))]
    assert [lines[i].split(" ")[1] for i in user] == ["'shell", "'python'", "'where.exe'"]
    for i in user:
        assert lines[i - 1] == RESET_LINE, "no $LASTEXITCODE reset before %r" % lines[i]
        assert lines[i + 1] == CHECK_LINE, "no $LASTEXITCODE check after %r" % lines[i]
    assert lines[user[-1] + 2:] == ["exit 0"]


@GOLDEN_SKIP
@pytest.mark.parametrize("kind", PS_KINDS)
def test_powershell_every_native_command_is_checked(kind):
    """Every native command (tool hook, `micromamba activate`, user commands) is followed by a
    $LASTEXITCODE check, so a failed activation never lets the commands run in the wrong env."""
    lines = ps_lines(ps_script(kind))
    for i, line in enumerate(lines):
        if is_native_invocation(line):
            assert lines[i + 1] == CHECK_LINE, "no $LASTEXITCODE check after line %d: %r" % (i + 1, line)


@GOLDEN_SKIP
def test_powershell_prefix_path_matches_conda():
    """conda's Windows activation puts these six directories first on PATH, in this order
    (DLLs of many packages live in Library\\mingw-w64\\bin and Library\\usr\\bin)."""
    lines = ps_lines(ps_script("prefix"))
    path_line = [line for line in lines if line.startswith("$env:PATH = ")][0]
    literals = [decode_ps_single_quoted("'" + part.split("'", 1)[1].rsplit("'", 1)[0] + "'")
                for part in path_line[len("$env:PATH = "):].split(" + [IO.Path]::PathSeparator + ")[:-1]]
    assert literals == [PS_PREFIX + s for s in ("", "\\Library\\mingw-w64\\bin", "\\Library\\usr\\bin",
                                                 "\\Library\\bin", "\\Scripts", "\\bin")]


def ts_parser():
    tree_sitter = import_requirement("tree_sitter")
    tsp = import_requirement("tree_sitter_powershell")
    return tree_sitter.Parser(tree_sitter.Language(tsp.language()))


def ts_problems(node, found=None):
    found = [] if found is None else found
    if node.type == "ERROR" or node.is_missing:
        found.append((node.type, node.start_point, node.text.decode("utf-8", "replace")[:80]))
    for child in node.children:
        ts_problems(child, found)
    return found


def ts_single_quoted(node, found=None):
    """Text of every verbatim (single-quoted) string literal, in document order."""
    found = [] if found is None else found
    if node.type == "verbatim_string_characters":
        found.append(node.text.decode("utf-8"))
        return found
    for child in node.children:
        ts_single_quoted(child, found)
    return found


def ps_expected_values(kind):
    """Values the script must carry as whole single-quoted literals."""
    values = {"venv": [PS_PREFIX], "micromamba": [PS_ROOT, PS_TOOL_DIR + "/micromamba", PS_PREFIX],
              "pixi": [PS_TOOL_DIR, PS_TOOL_DIR + "/pixi", PS_MANIFEST], "prefix": [PS_PREFIX],
              "main": []}[kind]
    return values + ["python"] + PS_ARGS + ["where.exe", "python"]


@GOLDEN_SKIP
@pytest.mark.parametrize("kind", PS_KINDS)
def test_powershell_parses_and_literals_round_trip(kind):
    parser = ts_parser()
    sources = [("rendered", ps_script(kind))]
    if os.path.exists(golden_path(kind)):
        with open(golden_path(kind), "rb") as f:
            sources.append(("golden", f.read().decode("utf-8")))
    for label, text in sources:
        tree = parser.parse(text.encode("utf-8"))
        assert not tree.root_node.has_error, (label, ts_problems(tree.root_node))
        decoded = [decode_ps_single_quoted(lit) for lit in ts_single_quoted(tree.root_node)]
        for value in ps_expected_values(kind):
            assert value in decoded, (label, value)
        # The user's list command arrives as exactly these literals, in order.
        start = decoded.index("python", decoded.index("Stop"))
        while decoded[start + 1] != "-c":
            start = decoded.index("python", start + 1)
        assert decoded[start:start + 1 + len(PS_ARGS)] == ["python"] + PS_ARGS


def random_hostile_strings(rng, count):
    alphabet = (list(PS_QUOTES) * 4 + list("\"`$(){}[]@#<>;&|,.%!~ \t\r\nabcXYZ019\\/-+=*?")
                + ["é", "日本", "\u201c", "\u201d", "\u201e", "\u00a0", "\u2013", "\u2014", "\ufeff", "\U0001f600"])
    fixed = ["", "'", "''", "\u2018", "\u2019\u2019", "'\u201b'", "$(x)", "`", "`'", "'`", "@'\n'@", "#>", "<#",
             "--%", "-", "a'b\u2018c\u2019d\u201ae\u201bf", "\r\n", "'; Remove-Item -Recurse C:\\ ; '"]
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(count)]


def test_powershell_random_literals_parse_and_round_trip():
    parser = ts_parser()
    values = random_hostile_strings(random.Random(1234), 400)
    # Through the real renderer, as a list command (& 'x' 'v') and as values of several kinds.
    lines = []
    for value in values:
        lines.append("& 'x' %s" % wetlite._quote_powershell(value))
    text = "\r\n".join(lines) + "\r\n"
    tree = parser.parse(text.encode("utf-8"))
    assert not tree.root_node.has_error, ts_problems(tree.root_node)[:5]
    decoded = [decode_ps_single_quoted(lit) for lit in ts_single_quoted(tree.root_node)]
    expected = []
    for value in values:
        expected += ["x", value]
    assert decoded == expected
    # The same values through _render_script, in one command and as the environment's paths.
    script = wetlite._render_script("powershell", wetlite._activation_lines("prefix", "powershell", values[-1]),
                                    [["x"] + values[:200], ["y"] + values[200:]])
    tree = parser.parse(script.encode("utf-8"))
    assert not tree.root_node.has_error, ts_problems(tree.root_node)[:5]
    decoded = [decode_ps_single_quoted(lit) for lit in ts_single_quoted(tree.root_node)]
    assert decoded[-(len(values) + 2):] == ["x"] + values[:200] + ["y"] + values[200:]
    # Each value as every path of every kind's activation.
    problems = {}
    for kind in ("venv", "micromamba", "pixi", "prefix"):
        for value in values[:60]:
            activation = wetlite._activation_lines(kind, "powershell", value, value, "/t/" + value + "/tool", value)
            text = "\r\n".join(activation) + "\r\n"
            tree = parser.parse(text.encode("utf-8"))
            if tree.root_node.has_error:
                problems.setdefault(kind, (value, text, ts_problems(tree.root_node)[:3]))
                continue
            decoded = [decode_ps_single_quoted(lit) for lit in ts_single_quoted(tree.root_node)]
            assert value in decoded or kind == "pixi", (kind, value, decoded)
    assert not problems, problems


# =============================================================================
# 4. Bad input
# =============================================================================

BAD_COMMANDS = [
    pytest.param({"all": ["echo a"], "linx": ["echo b"]}, "'linx'", id="unknown-key"),
    pytest.param({"all": ["echo a"], 3: ["echo b"]}, "3", id="non-string-key"),
    pytest.param([12345], "12345", id="non-string-item"),
    pytest.param([["echo", 67890]], "67890", id="non-string-arg"),
    pytest.param([["echo", b"bytes-arg"]], "b'bytes-arg'", id="bytes-arg"),
    pytest.param([[]], "[]", id="empty-list-item"),
    pytest.param([None], "None", id="none-item"),
    pytest.param(["echo a\x00b"], repr("echo a\x00b"), id="nul-in-string"),
    pytest.param([["echo", "x\x00y"]], repr("x\x00y"), id="nul-in-arg"),
    pytest.param({"all": "echo \x00z"}, repr("echo \x00z"), id="nul-in-dict"),
    pytest.param({"all": 5}, "5", id="dict-value-not-list"),
    pytest.param(42424, "42424", id="not-a-command"),
    pytest.param(b"echo bytes", "b'echo bytes'", id="bytes-command"),
]


@pytest.mark.parametrize("commands, named", BAD_COMMANDS)
@pytest.mark.parametrize("target", ["linux", "windows"])
def test_command_list_bad_input(commands, named, target):
    with pytest.raises(wetlite.SpecError) as info:
        wetlite._command_list(commands, target)
    assert named in str(info.value)


@pytest.mark.parametrize("commands, named", BAD_COMMANDS)
@pytest.mark.parametrize("shell", ["bash", "powershell"])
def test_script_bad_commands(commands, named, shell):
    env = ps_env("venv")
    with pytest.raises(wetlite.SpecError) as info:
        env.script(commands, shell=shell)
    assert named in str(info.value)


def test_command_list_accepts_path_like_and_tuples(tmp_path):
    assert wetlite._command_list(("echo a", ("echo", tmp_path)), "linux") == ["echo a", ["echo", str(tmp_path)]]
    assert wetlite._command_list({"windows": ["w"], "all": ["a"]}, "windows") == ["a", "w"]
    assert wetlite._command_list({"windows": ["w"]}, "mac") == []


@pytest.mark.parametrize("shell", ["fish", "sh", "cmd", "Bash"])
def test_script_unknown_shell(shell):
    env = ps_env("venv")
    with pytest.raises(wetlite.SpecError) as info:
        env.script(["echo a"], shell=shell)
    assert repr(shell) in str(info.value)
    with pytest.raises(wetlite.SpecError) as info:
        wetlite._render_script(shell, [], ["echo a"])
    assert repr(shell) in str(info.value)


def test_quote_functions_reject_bad_values():
    for quote in (wetlite._quote_bash, wetlite._quote_powershell):
        with pytest.raises(wetlite.SpecError) as info:
            quote("a\x00b")
        assert repr("a\x00b") in str(info.value)
        with pytest.raises(wetlite.SpecError) as info:
            quote(31337)
        assert "31337" in str(info.value)


# --- generated scripts are removed at exit ---------------------------------------------

_RUN_IN_CHILD = """
import json, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
import wetlite
mgr = wetlite.EnvironmentManager(root=sys.argv[2], tool="venv")
print(mgr.main_environment.run(["echo ran"]).stdout.strip())
print(json.dumps(sorted(os.listdir(tempfile.gettempdir()))))
"""


@POSIX_ONLY
@pytest.mark.parametrize("debug", ["", "1"])
def test_generated_scripts_are_removed_at_exit_unless_debugging(tmp_path, debug):
    temp = tmp_path / "temp"
    temp.mkdir()
    environ = dict(os.environ, TMPDIR=str(temp), WETLITE_DEBUG=debug)
    proc = subprocess.run([sys.executable, "-c", _RUN_IN_CHILD, os.path.dirname(HERE), str(tmp_path / "root")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=environ,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    ran, during = proc.stdout.splitlines()
    assert ran == "ran"
    scripts = [name for name in json.loads(during) if name.startswith("wetlite-scripts-")]
    assert len(scripts) == 1, during                # the script lived in its private dir while it ran
    left = sorted(os.listdir(str(temp)))
    if debug:
        assert left == scripts
        assert [n for n in os.listdir(str(temp / scripts[0])) if n.startswith("run-") and n.endswith(".sh")]
        assert "keeping generated scripts in %s" % (temp / scripts[0]) in proc.stderr
    else:
        assert left == [], "left behind after exit: %s" % left
