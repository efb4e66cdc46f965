"""The command line: in-process main([...]) calls, and a few real subprocess runs."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, import_requirement, wetlite
from httpserver import FileServer


def run_main(capsys, *argv):
    code = wetlite.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_usage_errors(capsys):
    assert run_main(capsys, "--version") == (0, "wetlite %s\n" % wetlite.__version__, "")
    code, out, err = run_main(capsys)
    assert code == 2 and "COMMAND" in err
    code, out, err = run_main(capsys, "frobnicate")
    assert code == 2 and "frobnicate" in err
    code, out, err = run_main(capsys, "--tool", "conda", "list")
    assert code == 2 and "conda" in err


def test_errors_exit_1_with_a_message(capsys, tmp_path):
    code, out, err = run_main(capsys, "--root", str(tmp_path), "--tool", "venv", "run", "nothing", "--", "true")
    assert code == 1
    assert err.startswith("wetlite: error: ") and "'nothing'" in err
    code, out, err = run_main(capsys, "--root", str(tmp_path), "--tool", "venv", "create", "bad/name")
    assert code == 1 and "'bad/name'" in err


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli") / "root")
    assert wetlite.main(["-q", "--root", root, "--tool", "venv", "create", "cli"]) == 0
    return root


def test_create_list_run_script_remove(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "--tool", "venv", "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [(e["name"], e["tool"]) for e in listed] == [("cli", "venv")]
    code, out, err = run_main(capsys, "--root", cli_root, "run", "cli", "--", "python", "-c",
                              "import sys; print(sys.prefix); sys.exit(3)")
    assert code == 3
    assert os.path.realpath(out.strip()) == os.path.realpath(listed[0]["path"])
    code, out, err = run_main(capsys, "--root", cli_root, "script", "cli", "--shell", "powershell", "--",
                              "python", "it's")
    assert code == 0 and "& 'python' 'it''s'" in out
    code, out, err = run_main(capsys, "--root", cli_root, "script", "cli")
    assert code == 1 and "no command given" in err


def test_info_json(capsys, tmp_path):
    code, out, err = run_main(capsys, "--root", str(tmp_path), "--tool", "micromamba", "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["root"] == str(tmp_path) and info["tool"] == "micromamba"
    assert info["tool_version"] == wetlite.MICROMAMBA_VERSION and info["tool_installed"] is False


def test_remove(capsys, tmp_path):
    root = str(tmp_path / "root")
    assert wetlite.main(["-q", "--root", root, "--tool", "venv", "create", "gone"]) == 0
    capsys.readouterr()
    assert run_main(capsys, "--root", root, "remove", "gone")[0] == 0
    assert wetlite.EnvironmentManager(root=root, tool="venv").list() == []


def doctor(tmp_path, *argv, **environ):
    env = dict(os.environ, WETLITE_ROOT=str(tmp_path / "root"), **environ)
    for name in ("WETLITE_PIXI", "WETLITE_TOOL", "WETLITE_DOWNLOAD_URL", "https_proxy", "HTTPS_PROXY"):
        if name not in environ:
            env.pop(name, None)
    argv = list(argv) if "doctor" in argv else list(argv) + ["doctor"]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "wetlite.py")] + argv, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_doctor_with_a_reachable_source_passes_every_check(tmp_path):
    with FileServer() as server:
        asset = wetlite._tool_asset("pixi", *wetlite._platform_id())
        server.add("/%s/%s" % (wetlite.PIXI_VERSION, asset), b"not downloaded, only asked for")
        mirror = server.url + "/"
        code, out, err = doctor(tmp_path, WETLITE_DOWNLOAD_URL=mirror)
        assert server.requests_for("/%s/%s" % (wetlite.PIXI_VERSION, asset))
    assert code == 0, out + err
    assert "its download source answers" in out and "WETLITE_DOWNLOAD_URL=" + mirror in out
    assert "all checks passed" in out and "problems" not in out
    assert "create   ok" in out and "run      ok" in out and "worker   ok" in out
    assert "writable (will be created)" in out and "local interpreters the venv tool can use: " in out
    assert "socket path is" in out
    assert not os.path.exists(str(tmp_path / "root"))      # the throwaway environment lives elsewhere


def test_doctor_reports_an_unreachable_source_as_a_problem_not_a_failure(tmp_path):
    with FileServer() as server:
        closed = server.url             # nothing listens there once the server is gone
    code, out, err = doctor(tmp_path, WETLITE_DOWNLOAD_URL=closed + "/mirror",
                            https_proxy="http://bob:PROXYPASS@127.0.0.1:9")
    assert code == 0, out + err
    assert "all checks passed" not in out and "is NOT reachable" in out
    assert "worker   ok" in out
    problems = out[out.index("problems (1):"):]
    assert "pixi cannot be downloaded" in problems and "WETLITE_PIXI" in problems and "--tool venv" in problems
    assert "PROXYPASS" not in out + err


def test_doctor_points_at_a_proxy_that_refuses(tmp_path):
    code, out, err = doctor(tmp_path, https_proxy="http://bob:PROXYPASS@127.0.0.1:9", no_proxy="", NO_PROXY="")
    assert code == 0, out + err
    problems = out[out.index("problems (1):"):]
    assert "check the proxy http://***@127.0.0.1:9 (https_proxy) the download goes through" in problems, problems
    assert "to a mirror or https_proxy to a proxy" not in problems and "PROXYPASS" not in out + err


STUCK_DOCTOR = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import wetlite

def create(self, name, *args, **kwargs):
    print("building in", self.root, flush=True)
    time.sleep(120)                 # killed here, as a user may kill a slow doctor

wetlite.EnvironmentManager.create = create
wetlite.main(["doctor", "--offline"])
"""


def test_a_killed_doctor_leaves_a_scratch_dir_the_next_run_removes(tmp_path):
    import signal
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), WETLITE_ROOT=str(tmp_path / "root"))
    proc = subprocess.Popen([sys.executable, "-c", STUCK_DOCTOR, REPO], env=env, stdout=subprocess.PIPE)
    try:
        lines = iter(proc.stdout.readline, b"")
        scratch = next(line for line in lines if line.startswith(b"building in ")).decode().split(" ", 2)[2].strip()
    finally:
        proc.kill()
        proc.wait()
    assert os.path.dirname(scratch) == str(temp) and os.path.isdir(scratch)
    assert os.path.basename(scratch).startswith("wetlite-doctor-%d-" % proc.pid)
    wetlite._sweep_dead_temp_dirs(str(temp))           # what the next wetlite process does first
    assert not os.path.exists(scratch)


def test_doctor_offline_skips_the_download_check(tmp_path):
    root = tmp_path / "file"
    root.write_text("in the way")
    code, out, err = doctor(tmp_path, "--root", str(root / "root"), "doctor", "--offline")
    assert code == 0, out + err
    assert "download check skipped (--offline)" in out
    assert "NOT writable" in out and "is not writable" in out[out.index("problems"):]


def test_doctor_fails_only_when_nothing_can_work(tmp_path, monkeypatch, capsys):
    def broken(self, *args, **kwargs):
        raise wetlite.ToolError("python -m venv failed here")
    monkeypatch.setattr(wetlite.EnvironmentManager, "create", broken)
    root = str(tmp_path / "root")
    assert wetlite.main(["--root", root, "--tool", "venv", "doctor"]) == 1
    out = capsys.readouterr().out
    assert "create   FAILED: python -m venv failed here" in out and "wetlite cannot work here" in out
    with FileServer() as server:        # the venv tool fails, but pixi can be downloaded: not fatal
        asset = wetlite._tool_asset("pixi", *wetlite._platform_id())
        server.add("/%s/%s" % (wetlite.PIXI_VERSION, asset), b"x")
        monkeypatch.setenv("WETLITE_DOWNLOAD_URL", server.url)
        monkeypatch.delenv("WETLITE_PIXI", raising=False)
        assert wetlite.main(["--root", root, "--tool", "pixi", "doctor"]) == 0
    out = capsys.readouterr().out
    assert "problems (1):" in out and "wetlite works here, with the problems above" in out


@pytest.fixture
def quick_doctor(monkeypatch, capsys):
    """doctor(*argv) -> (code, out) in-process, the throwaway build skipped (the tests above run it for real)."""
    monkeypatch.setattr(wetlite, "_doctor_local", lambda problems: None)
    for name in ("WETLITE_PIXI", "WETLITE_MICROMAMBA", "WETLITE_TOOL", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def doctor(*argv):
        code = wetlite.main(list(argv) + ["doctor"])
        return code, capsys.readouterr().out
    return doctor


def test_doctor_refuses_the_root_every_command_refuses(tmp_path, quick_doctor):
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    assert wetlite.main(["--root", str(root), "--tool", "venv", "list"]) == 1
    code, out = quick_doctor("--root", str(root), "--tool", "venv")
    assert code == 0 and "all checks passed" not in out
    assert "root     %s: REFUSED" % root in out
    problems = out[out.index("problems (1):"):]
    assert "mode 777" in problems and "(--root or WETLITE_ROOT)" in problems and "root=" not in problems


def test_doctor_tells_a_missing_asset_from_an_unreachable_source(tmp_path, quick_doctor, monkeypatch):
    root = str(tmp_path / "root")
    with FileServer() as server:
        monkeypatch.setenv("WETLITE_DOWNLOAD_URL", server.url)
        code, out = quick_doctor("--root", root, "--tool", "pixi")
        assert code == 0 and "answers HTTP 404" in out and "NOT reachable" not in out
        assert "check that the mirror serves %s/" % wetlite.PIXI_VERSION in out
        # micromamba installs from its .tar.bz2 package when the raw binary is not there: that is fine.
        asset = wetlite._tool_asset("micromamba", *wetlite._platform_id())
        server.add("/%s/%s.tar.bz2" % (wetlite.MICROMAMBA_VERSION, asset), b"only asked for")
        code, out = quick_doctor("--root", root, "--tool", "micromamba")
        assert code == 0 and "its download source answers" in out and "all checks passed" in out, out


def test_main_leaves_logging_as_it_found_it(capsys, tmp_path):
    import logging
    logger = logging.getLogger("wetlite")
    before = (list(logger.handlers), logger.level, logger.propagate)
    assert wetlite.main(["-v", "--root", str(tmp_path), "--tool", "venv", "list"]) == 0
    assert wetlite.main(["--root", str(tmp_path), "--tool", "venv", "run", "missing", "--", "x"]) == 1
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_call_prints_json(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "operator", "add", "2", "40")
    assert (code, out) == (0, "42\n")
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "json", "dumps", '{"a": [1, 2]}',
                              "--kwargs", '{"sort_keys": true}')
    assert code == 0 and json.loads(out) == '{"a": [1, 2]}'
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "builtins", "frozenset", "[3, 1, 2]")
    assert (code, out) == (0, "[1, 2, 3]\n")
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "operator", "add", "2", "oops")
    assert code == 1 and "'oops'" in err and "JSON" in err
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "operator", "truediv", "1", "0")
    assert code == 1 and "ZeroDivisionError" in err


# --- behaviour the suite did not reach before (issue 16) -------------------------------------

def test_info_without_json_names_root_tool_and_python(capsys, tmp_path):
    code, out, err = run_main(capsys, "--root", str(tmp_path / "r"), "--tool", "venv", "info")
    assert code == 0 and err == ""
    assert str(tmp_path / "r") in out and "venv" in out
    assert "%d.%d.%d" % sys.version_info[:3] in out and wetlite.__version__ in out
    assert not (tmp_path / "r").exists()               # info looks, it creates nothing


def test_create_from_a_requirements_file(capsys, tmp_path):
    from conftest import make_wheel
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "wetlite-test-file", "3.0")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("--no-index\n--find-links %s\nwetlite-test-file==3.0\n" % wheels)
    root = str(tmp_path / "root")
    code, out, err = run_main(capsys, "-q", "--root", root, "--tool", "venv", "create", "fromfile",
                              "--file", str(requirements))
    assert code == 0, err
    code, out, err = run_main(capsys, "--root", root, "run", "fromfile", "--", "python", "-c",
                              "import wetlite_test_file; print(wetlite_test_file.hello())")
    assert (code, out.strip()) == (0, "hello from wetlite-test-file 3.0")


def test_call_timeout_stops_the_call(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "time", "sleep", "60", "--timeout", "0.5")
    assert code == 1 and out == ""
    assert "time:sleep" in err and "timeout" in err
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "operator", "add", "1", "1",
                              "--timeout", "30")
    assert (code, out) == (0, "2\n")


# --- run: `--` and shell code ---------------------------------------------------------

def test_run_without_dashes_says_where_they_go(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "run", "cli", "python", "-c", "print(1)")
    assert code == 2 and out == ""
    assert "put -- before the command: wetlite run cli -- python -c 'print(1)'" in err
    assert "unrecognized arguments" not in err
    code, out, err = run_main(capsys, "--root", cli_root, "script", "cli", "python", "job.py")
    assert code == 2 and "put -- before the command: wetlite script cli -- python job.py" in err
    code, out, err = run_main(capsys, "--root", cli_root, "list", "extra")
    assert code == 2 and "unrecognized arguments: extra" in err


def test_one_word_after_dashes_is_shell_code_several_are_verbatim(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "run", "cli", "--", "echo $VIRTUAL_ENV; which python")
    assert code == 0, err
    prefix = json.loads(run_main(capsys, "--root", cli_root, "list", "--json")[1])[0]["path"]
    assert out.splitlines() == [prefix, os.path.join(prefix, "bin", "python")]
    code, out, err = run_main(capsys, "--root", cli_root, "run", "cli", "--", "echo", "$VIRTUAL_ENV;", "*")
    assert (code, out) == (0, "$VIRTUAL_ENV; *\n")
    code, out, err = run_main(capsys, "--root", cli_root, "script", "cli", "--", "exit 3")
    assert code == 0 and "\nexit 3\n" in out
    assert run_main(capsys, "--root", cli_root, "run", "cli", "--", "exit 3")[0] == 3


def test_dashes_end_the_options_of_the_other_commands(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "math", "fabs", "--", "-2.5")
    assert (code, out) == (0, "2.5\n"), err            # the argument after -- was dropped
    code, out, err = run_main(capsys, "--root", cli_root, "list", "--", "extra")
    assert code == 2 and "unrecognized arguments: " in err and "extra" in err      # not ignored


# --- errors speak CLI ------------------------------------------------------------------

def test_cli_errors_give_cli_advice_and_a_short_recipe_diff(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "run", "nope", "--", "true")
    assert code == 1 and "wetlite create nope ..." in err and "mgr." not in err
    code, out, err = run_main(capsys, "--root", cli_root, "--tool", "venv", "create", "cli", "--pip", "pytest",
                              "--python", "3.11")
    assert code == 1
    assert "--replace" in err and "replace=True" not in err
    assert '\n  - pip: (none)\n  + pip: ["pytest"]\n' in err
    python = "%d.%d" % sys.version_info[:2]        # the cli environment was built with the host's, by default
    assert '\n  - python: "%s (the default)"\n  + python: "3.11"\n' % python in err
    assert "recipe_hash" not in err and "default" not in err.replace("(the default)", "") and len(err.splitlines()) <= 6
    code, out, err = run_main(capsys, "--root", cli_root, "--tool", "venv", "create", "x", "--conda", "numpy")
    assert code == 1 and "--tool micromamba" in err and "tool='" not in err


def test_library_errors_keep_library_advice(cli_root):
    mgr = wetlite.EnvironmentManager(root=cli_root, tool="venv")
    with pytest.raises(wetlite.SpecError, match=r"mgr\.create\('nope', \.\.\.\)"):
        mgr.get("nope")
    with pytest.raises(wetlite.SpecError, match="replace=True"):
        mgr.create("cli", {"pip": ["pytest"]}, force_external=True)


# --- call --------------------------------------------------------------------------------

VALUES = '''\
import datetime, fractions

def values():
    return {"when": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
            "day": datetime.date(2024, 5, 6), "blob": b"\\x00\\xffhi", "tags": {"b", "c", "a"},
            "pair": (1, 2.5), 3: None, "nan": float("nan"), "inf": [float("inf"), -float("inf")]}

def fraction():
    return [1, {"x": fractions.Fraction(1, 3)}]

def boom():
    raise ValueError("bad")

def attr():
    return object().nope
'''


def test_call_converts_what_has_a_faithful_json_form(capsys, cli_root, tmp_path):
    tools = tmp_path / "tools.py"
    tools.write_text(VALUES)
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", str(tools), "values")
    assert code == 0, err
    assert out.strip() == ('{"when": "2024-05-06T07:08:09.123456+00:00", "day": "2024-05-06", '
                           '"blob": {"$base64": "AP9oaQ=="}, "tags": ["a", "b", "c"], "pair": [1, 2.5], '
                           '"3": null, "nan": null, "inf": [null, null]}')
    json.loads(out, parse_constant=lambda name: pytest.fail("not strict JSON: " + name))


def test_call_refuses_a_result_with_no_json_form(capsys, cli_root, tmp_path):
    tools = tmp_path / "tools.py"
    tools.write_text(VALUES)
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", str(tools), "fraction")
    assert code == 1 and out == ""
    assert "no faithful JSON form: the result[1]['x'] is a Fraction" in err
    assert "[1, {'x': Fraction(1, 3)}]" in err          # its repr, to see what came back


def test_call_names_the_function_module_colon_function(capsys, cli_root, tmp_path):
    os.chdir(str(tmp_path))
    (tmp_path / "tools.py").write_text(VALUES)
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "tools.py", "boom")
    assert code == 1 and "tools.py:boom raised ValueError: bad" in err and "tools.py.boom" not in err


def test_a_missing_function_is_named_as_given_without_a_traceback(capsys, cli_root, tmp_path):
    tools = tmp_path / "tools.py"
    tools.write_text(VALUES)
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", str(tools), "missingfn")
    assert code == 1 and "%s has no attribute 'missingfn'" % tools in err, err
    assert "Traceback" not in err and "_wetlite_path_" not in err
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "json", "decoder.nope")
    assert code == 1 and "json.decoder has no attribute 'nope'" in err and "Traceback" not in err, err
    # An AttributeError the function itself raises is the function's: shown with where it came from.
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", str(tools), "attr")
    assert code == 1 and "Traceback" in err and "raised AttributeError" in err, err
    mgr = wetlite.EnvironmentManager(root=cli_root, tool="venv")
    with mgr.get("cli") as env:
        with pytest.raises(AttributeError, match=r"^%s:values has no attribute 'nope'$" % re.escape(str(tools))):
            env.execute(str(tools), "values.nope")


def test_json_form_of_numpy_values_without_importing_numpy():
    numpy = import_requirement("numpy")       # a test requirement: CI fails without it, never skips
    form = wetlite._json_form({"a": numpy.arange(6, dtype=numpy.int16).reshape(2, 3), "s": numpy.float32(0.5),
                               "b": numpy.bool_(True), "t": numpy.array(["x", "y"])}, "the result")
    assert form == {"a": [[0, 1, 2], [3, 4, 5]], "s": 0.5, "b": True, "t": ["x", "y"]}
    assert type(form["s"]) is float and type(form["a"][0][0]) is int and type(form["b"]) is bool
    with pytest.raises(wetlite._NoJSONForm, match=r"the result\[0\] is a complex"):
        wetlite._json_form(numpy.array([1 + 2j]), "the result")


NO_NUMPY = r"""
import sys
sys.path.insert(0, sys.argv[1])
import wetlite
code = wetlite.main(["--root", sys.argv[2], "call", "cli", "operator", "add", "[1]", "[2]"])
print("numpy imported" if "numpy" in sys.modules else "numpy not imported", code)
"""


def test_call_does_not_import_numpy_for_a_plain_result(cli_root):
    out = subprocess.run([sys.executable, "-c", NO_NUMPY, REPO, cli_root], stdout=subprocess.PIPE,
                         check=True).stdout.decode()
    assert out.splitlines() == ["[1, 2]", "numpy not imported 0"]


def test_call_usage_shows_timeout_and_names_have_help(capsys):
    code, out, err = run_main(capsys, "call", "--help")
    assert code == 0
    assert out.splitlines()[0] == "usage: wetlite call NAME MODULE FUNC [JSON_ARG...] [--kwargs JSON] [--timeout S]"
    assert "faithful JSON" in out
    import argparse
    commands = next(a for a in wetlite._build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    named = [c for c, p in commands.items() if any(a.dest == "name" and a.required for a in p._actions)]
    assert {"run", "call", "script", "remove", "create", "map"} <= set(named)      # every command that takes one
    for command in named:
        code, out, err = run_main(capsys, command, "--help")
        help_line = [line for line in out.splitlines() if line.strip().startswith("NAME ")]
        assert help_line and "name" in help_line[0].lower().split("name", 1)[1], (command, out)


# --- list and gc ---------------------------------------------------------------------------

def test_list_has_a_header_status_tool_python_and_sizes(capsys, cli_root):
    code, out, err = run_main(capsys, "--root", cli_root, "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "STATUS", "TOOL", "PYTHON", "PATH"]
    assert lines[1].split()[:4] == ["cli", "ready", "venv", "%d.%d.%d" % sys.version_info[:3]]
    code, out, err = run_main(capsys, "--root", cli_root, "list", "--sizes")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "TOOL", "PYTHON", "SIZE", "PATH"]
    assert lines[1].split()[5] in ("MB", "kB") and "in all under " + cli_root in lines[-1]
    listed = wetlite.EnvironmentManager(root=cli_root).list(sizes=True)
    assert listed[0]["size"] > 1000000                  # a venv with pip is megabytes


OTHER_HOST = r"""
import sys
sys.path.insert(0, sys.argv[1])
import wetlite
mgr = wetlite.EnvironmentManager(root=sys.argv[2], tool="venv")
env = mgr.load("borrowed", sys.argv[3])
print(env.execute("os", "getpid"), flush=True)
sys.stdin.read()
mgr.exit()
"""


def test_gc_leaves_the_runtime_copy_of_another_version_while_its_host_runs_workers(tmp_path, cli_root):
    other = tmp_path / "other"
    other.mkdir()
    with open(os.path.join(REPO, "wetlite.py"), "rb") as f:
        (other / "wetlite.py").write_bytes(f.read() + b"\n# another version of wetlite\n")
    root = str(tmp_path / "root")
    prefix = wetlite.EnvironmentManager(root=cli_root).list()[0]["path"]
    host = subprocess.Popen([sys.executable, "-c", OTHER_HOST, str(other), root, prefix], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert int(host.stdout.readline()) > 0          # its worker runs from its own runtime copy
        runtime = os.path.join(root, "state", "runtime")
        copies = [d for d in os.listdir(runtime) if not d.endswith(".in-use")]
        assert len(copies) == 1
        mgr = wetlite.EnvironmentManager(root=root, tool="venv")
        assert mgr.gc() == [] and copies[0] in os.listdir(runtime)
    finally:
        host.communicate(b"", timeout=60)
    assert host.returncode == 0
    assert [item["path"] for item in mgr.gc()] == [os.path.join(runtime, copies[0])]     # unused now


HOLD = r"""
import fcntl, sys
f = open(sys.argv[1], "a+b")
fcntl.flock(f.fileno(), fcntl.LOCK_SH)
print("held", flush=True)
sys.stdin.read()
"""


def test_gc_removes_what_nothing_uses(capsys, tmp_path):
    root = str(tmp_path / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool="venv")
    env = mgr.create("keep", force_external=True)
    env.execute("os", "getpid")                         # its runtime copy is in use by this process
    env.exit()
    records = os.path.join(root, "state", "envs")
    # A build killed half way, and one running right now (its lock is held).
    for name in ("killed", "building"):
        os.makedirs(os.path.join(root, "envs", name, "lib"))
        record = dict(json.load(open(os.path.join(records, "keep.json"))), name=name, state="creating",
                      dir=os.path.join(root, "envs", name), prefix=os.path.join(root, "envs", name))
        json.dump(record, open(os.path.join(records, name + ".json"), "w"))
    with open(os.path.join(records, "damaged.json"), "w") as f:
        f.write("[1, 2]")
    stage = os.path.join(root, "bin", ".install-pixi-abc123")
    os.makedirs(stage)
    with open(os.path.join(stage, "pixi.tar.gz.part"), "wb") as f:
        f.write(b"x" * 5000)
    runtime = os.path.join(root, "state", "runtime")
    current = [d for d in os.listdir(runtime) if not d.endswith(".in-use")]
    old, held = os.path.join(runtime, "0123456789abcdef"), os.path.join(runtime, "fedcba9876543210")
    for directory in (old, held):
        os.makedirs(directory)
        open(os.path.join(directory, "wetlite.py"), "w").close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, held + ".in-use"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"    # another host runs workers from that copy
        with mgr._lock("building"):
            code, out, err = run_main(capsys, "--root", root, "gc", "--dry-run")
            assert code == 0 and "would remove" in out
            assert os.path.isdir(stage) and os.path.isdir(old)
            code, out, err = run_main(capsys, "--root", root, "gc")
    finally:
        holder.communicate(b"")
    assert code == 0, err
    assert not os.path.exists(os.path.join(root, "envs", "killed"))
    assert not os.path.exists(os.path.join(records, "killed.json"))
    assert not os.path.exists(stage) and not os.path.exists(old)
    assert "half-built environment 'killed'" in out and "freed " in out
    assert os.path.isdir(os.path.join(root, "envs", "building"))        # being built: left alone
    assert os.path.isdir(held)                                         # in use: left alone
    assert sorted(d for d in os.listdir(runtime) if not d.endswith(".in-use")) == \
        sorted(current + ["fedcba9876543210"])
    assert "damaged" in err and "wetlite remove damaged" in err        # broken: reported, left alone
    assert os.path.exists(os.path.join(records, "damaged.json"))
    assert {e["name"]: e["status"] for e in mgr.list()} == {"building": "half-built", "damaged": "broken",
                                                          "keep": "ready"}
    assert env.execute("os", "getpid") > 0
    env.exit()
