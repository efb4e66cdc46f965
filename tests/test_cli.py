"""The command line: in-process main([...]) calls, and a few real subprocess runs."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, wetlite


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


def test_doctor_as_a_real_subprocess(tmp_path):
    env = dict(os.environ, WETLITE_ROOT=str(tmp_path / "root"))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "wetlite.py"), "doctor"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "all checks passed" in out and "create   ok" in out and "run      ok" in out
    assert not os.path.exists(str(tmp_path / "root"))      # the throwaway environment lives elsewhere


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
    code, out, err = run_main(capsys, "--root", cli_root, "call", "cli", "builtins", "frozenset", "[3]")
    assert code == 0 and out == "frozenset({3})\n" and "not JSON" in err
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
