"""proxies= reach every tool process (and pip), micromamba's rc file, and never a log in clear."""
import json
import logging
import os
import sys

import pytest

from conftest import wetlite

PROXIES = {"https": "http://user:s3cret@proxy.example:8080", "http": "http://proxy.example:3128",
           "no": "localhost,.corp"}

RECORDER = r'''#!%s
import json, os, sys
if sys.argv[1:] == ["--version"]:
    print("%s")
    sys.exit(0)
rc = []
args = sys.argv[1:]
for i, arg in enumerate(args):
    if arg == "--rc-file" and i + 1 < len(args):
        with open(args[i + 1]) as f:
            rc.append(f.read())
with open(os.environ["RECORD_TO"], "a") as f:
    f.write(json.dumps({"argv": args, "rc": rc,
                        "env": {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}}) + "\n")
sys.exit(1)
'''


def recorder(tmp_path, tool, monkeypatch):
    """A fake tool (under the tool's own name) that records what it was given, then fails."""
    directory = tmp_path / "bin"
    directory.mkdir()
    path = directory / tool
    path.write_text(RECORDER % (sys.executable, "2.8.1" if tool == "micromamba" else "pixi 0.73.0"))
    path.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("RECORD_TO", str(record))
    return str(path), record


def calls(record):
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.fixture
def clean_proxies(monkeypatch):
    for key in ("http", "https", "all", "no"):
        for name in (key + "_proxy", key.upper() + "_PROXY"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://inherited.example:1")


def test_tool_environment_takes_the_proxies_and_set_proxies_changes_them(tmp_path, clean_proxies):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path), tool="pixi", proxies=PROXIES)
    env = mgr._tool_environ()
    assert env["https_proxy"] == env["HTTPS_PROXY"] == PROXIES["https"]
    assert env["http_proxy"] == env["HTTP_PROXY"] == PROXIES["http"]
    assert env["no_proxy"] == env["NO_PROXY"] == "localhost,.corp"
    mgr.set_proxies({"all_proxy": "http://all.example:9"})
    env = mgr._tool_environ()
    assert env["all_proxy"] == env["ALL_PROXY"] == "http://all.example:9"
    assert not [k for k in env if k.lower() in ("https_proxy", "http_proxy", "no_proxy")]   # replaced, not merged
    assert wetlite._urllib_proxies(mgr.proxies) == {"http": "http://all.example:9", "https": "http://all.example:9"}
    mgr.set_proxies(None)
    assert mgr._tool_environ()["HTTPS_PROXY"] == "http://inherited.example:1"
    with pytest.raises(wetlite.SpecError) as info:
        mgr.set_proxies({"gopher": "http://u:topsecret@x:1"})
    assert "topsecret" not in str(info.value) and "***@x:1" in str(info.value)


def test_micromamba_gets_them_in_its_environment_and_rc_file(tmp_path, clean_proxies, monkeypatch, caplog):
    exe, record = recorder(tmp_path, "micromamba", monkeypatch)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="micromamba", tool_path=exe,
                                     channels=["file:///nowhere"])
    with caplog.at_level(logging.DEBUG, logger="wetlite"):
        mgr.set_proxies(PROXIES)
        with pytest.raises(wetlite.CommandError):
            mgr.create("p", {"conda": ["numpy"]}, force_external=True)
    call = calls(record)[-1]
    assert call["env"]["https_proxy"] == PROXIES["https"] and call["env"]["no_proxy"] == "localhost,.corp"
    assert call["argv"].count("--rc-file") == 2
    proxies_rc = call["argv"][call["argv"].index("--rc-file", call["argv"].index("--rc-file") + 1) + 1]
    assert proxies_rc.endswith(".yaml") and not os.path.exists(proxies_rc)      # removed after the run
    assert call["rc"][1] == 'proxy_servers:\n  http: "%s"\n  https: "%s"\n' % (PROXIES["http"], PROXIES["https"])
    logged = caplog.text + open(os.path.join(mgr.root, "state", "logs", "p.log")).read()
    assert "***@proxy.example:8080" in caplog.text and "s3cret" not in logged


def test_pixi_gets_them_in_its_environment(tmp_path, clean_proxies, monkeypatch):
    exe, record = recorder(tmp_path, "pixi", monkeypatch)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="pixi", tool_path=exe, proxies=PROXIES)
    with pytest.raises(wetlite.CommandError):
        mgr.create("p", {"conda": ["numpy"]}, force_external=True)
    call = calls(record)[-1]
    assert call["argv"][0] == "init"
    assert call["env"]["https_proxy"] == call["env"]["HTTPS_PROXY"] == PROXIES["https"]
    assert call["env"]["http_proxy"] == PROXIES["http"]


@pytest.mark.parametrize("proxies, rc", [
    ({"all": "http://all.example:9"}, 'proxy_servers:\n  http: "http://all.example:9"\n  https: "http://all.example:9"\n'),
    ({"all": "http://all.example:9", "https": "http://s.example:1"},
     'proxy_servers:\n  http: "http://all.example:9"\n  https: "http://s.example:1"\n'),
    ({"no": "localhost"}, None),                # no proxy server: no rc file of proxies
])
def test_micromamba_rc_file_takes_all_for_both_schemes(tmp_path, clean_proxies, monkeypatch, proxies, rc):
    exe, record = recorder(tmp_path, "micromamba", monkeypatch)
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="micromamba", tool_path=exe,
                                     channels=["file:///nowhere"], proxies=proxies)
    with pytest.raises(wetlite.CommandError):
        mgr.create("p", {"conda": ["numpy"]}, force_external=True)
    call = calls(record)[-1]
    assert call["rc"][1:] == ([rc] if rc else [])
    assert call["argv"].count("--rc-file") == (2 if rc else 1)
    expected = {k: v for k, v in proxies.items() if k in ("http", "https")}
    if "all" in proxies:
        expected = dict({"http": proxies["all"], "https": proxies["all"]}, **expected)
    if "no" in proxies:
        expected["no"] = proxies["no"]
    assert wetlite._urllib_proxies(proxies) == expected         # what wetlite's own downloads use


def test_post_install_commands_get_the_proxies_as_an_install_step(tmp_path, clean_proxies):
    """Wetlands' additionalInstallCommands ran with the proxy exports: post_install does too."""
    seen = tmp_path / "seen.txt"
    show = "echo ${https_proxy:-unset} ${HTTPS_PROXY:-unset} ${no_proxy:-unset} ${all_proxy:-unset} >> %s" % seen
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="venv", proxies=PROXIES)
    env = mgr.create("pp", post_install=[show], force_external=True)
    env.install(post_install=[show])
    expected = "%s %s %s unset" % (PROXIES["https"], PROXIES["https"], PROXIES["no"])
    assert seen.read_text().splitlines() == [expected, expected]
    assert env.run(show).returncode == 0            # a plain run is not an install step: the user's variables
    assert seen.read_text().splitlines()[-1] == "unset http://inherited.example:1 unset unset"
    assert "s3cret" not in (tmp_path / "root" / "state" / "logs" / "pp.log").read_text()
    mgr.remove("pp")
