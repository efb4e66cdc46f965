"""The stand-in micromamba and pixi (tests/stand_ins/) checked against the real tools' recorded behaviour.

Expected outputs, exit codes and messages come from
shared/reference/micromamba-2.8.1-transcripts.md (section numbers in the
docstrings) and shared/reference/tools-reference.md (section C for pixi).  The
file is self-contained: it does not import wetlite or use conftest fixtures, so
it runs with ``--noconftest`` while wetlite.py is being edited.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
STAND_INS = os.path.join(HERE, "stand_ins")
PY_XY = "%d.%d" % sys.version_info[:2]

pytestmark = pytest.mark.skipif(os.name == "nt" or sys.version_info < (3, 11),
                                reason="POSIX stand-ins; the pixi stand-in reads TOML with tomllib")

if sys.version_info >= (3, 11):
    import tomllib


# --- helpers --------------------------------------------------------------------------

def install(bin_dir, tool, name=None):
    """Copy a stand-in under ``name`` with ``#!<this interpreter>`` (as the suite does)."""
    os.makedirs(bin_dir, exist_ok=True)
    with open(os.path.join(STAND_INS, tool), encoding="utf-8") as fh:
        body = fh.read().split("\n", 1)[1]
    path = os.path.join(bin_dir, name or tool)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("#!%s\n%s" % (sys.executable, body))
    os.chmod(path, 0o755)
    return path


def make_wheel(directory, name, version):
    module = name.replace("-", "_")
    dist = "%s-%s" % (module, version)
    path = os.path.join(directory, "%s-py3-none-any.whl" % dist)
    files = {
        "%s/__init__.py" % module: "VALUE = %r\n" % version,
        "%s.dist-info/METADATA" % dist: "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version),
        "%s.dist-info/WHEEL" % dist: "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            data = text.encode()
            zf.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append("%s,sha256=%s,%d" % (arcname, digest, len(data)))
        zf.writestr("%s.dist-info/RECORD" % dist, "\n".join(record + ["%s.dist-info/RECORD,," % dist]) + "\n")
    return path


class Tools(object):
    """The stand-ins installed in a private bin/, with a clean environment to run them in."""

    def __init__(self, base):
        self.base = base
        self.bin = os.path.join(base, "bin")
        self.home = os.path.join(base, "home")
        self.root = os.path.join(base, "root")
        os.makedirs(self.home)
        self.micromamba = install(self.bin, "micromamba")
        self.pixi = install(self.bin, "pixi")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONDA", "MAMBA", "PIXI_", "PYTHON", "VIRTUAL_ENV", "PS1"))}
        env.update(HOME=self.home, MAMBA_ROOT_PREFIX=self.root, PIP_NO_INDEX="1",
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PATH=self.bin + os.pathsep + env.get("PATH", ""))
        self.env = env

    def run(self, exe, *args, **kw):
        env = dict(self.env)
        env.update(kw.pop("env", {}))
        return subprocess.run([exe] + list(args), env=env, stdin=kw.pop("stdin", subprocess.DEVNULL),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=120, **kw)

    def mm(self, *args, **kw):
        return self.run(self.micromamba, *args, **kw)

    def px(self, *args, **kw):
        return self.run(self.pixi, *args, **kw)

    def bash(self, script, *args, **kw):
        return self.run("bash", "-c", script, "bash", *args, **kw)


@pytest.fixture(scope="session")
def channel(tmp_path_factory):
    """The tests' own local channel (tests/conda_channel.py), as a directory."""
    from conda_channel import build_channel
    return build_channel(str(tmp_path_factory.mktemp("channel")))


@pytest.fixture(scope="session")
def tools(tmp_path_factory):
    return Tools(str(tmp_path_factory.mktemp("standins")))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    return make_wheel(str(tmp_path_factory.mktemp("wheels")), "tinypkg", "1.0")


@pytest.fixture(scope="module")
def mm_env(tools, channel, tmp_path_factory):
    """One micromamba env (python + wetlite-demo=0.1.0 + pip) under a path with a space and a quote."""
    prefix = os.path.join(str(tmp_path_factory.mktemp("mm")), "we ird 'env")
    proc = tools.mm("create", "-y", "-p", prefix, "-c", "file://" + channel, "--override-channels",
                    "python=" + PY_XY, "wetlite-demo=0.1.0")
    assert proc.returncode == 0, proc.stderr
    return prefix, proc


# --- both tools ------------------------------------------------------------------------------

def test_engine_blocks_are_identical():
    blocks = []
    for tool in ("micromamba", "pixi"):
        with open(os.path.join(STAND_INS, tool), encoding="utf-8") as fh:
            text = fh.read()
        start = text.index("# ===== BEGIN SHARED ENGINE")
        end = text.index("# ===== END SHARED ENGINE")
        blocks.append(text[start:end])
        assert text.startswith("#!/usr/bin/env python3\n")
        assert os.access(os.path.join(STAND_INS, tool), os.X_OK)
    assert blocks[0] == blocks[1], "edit the shared engine block in both stand-ins"


def test_versions(tools):
    """§1.1: the bare version; pixi prints ``pixi X.Y.Z``; WETLITE_STANDIN_VERSION overrides."""
    assert (tools.mm("--version").stdout, tools.mm("--version").returncode) == ("2.8.1\n", 0)
    assert tools.px("--version").stdout == "pixi 0.73.0\n"
    over = {"WETLITE_STANDIN_VERSION": "2.0.5"}
    assert tools.mm("--version", env=over).stdout == "2.0.5\n"
    assert tools.px("--version", env=over).stdout == "pixi 2.0.5\n"


@pytest.mark.parametrize("tool,args", [
    ("micromamba", ["update", "-y", "-p", "/x"]),
    ("micromamba", ["config", "list"]),
    ("micromamba", ["create", "-y", "-p", "/x", "--clone", "y"]),
    ("micromamba", ["shell", "init", "-s", "bash"]),
    ("micromamba", ["shell", "hook", "-s", "fish"]),
    ("pixi", ["remove", "numpy"]),
    ("pixi", ["global", "install", "x"]),
    ("pixi", ["add", "--feature", "test", "pytest"]),
    ("pixi", ["workspace", "platform", "add", "osx-64"]),
])
def test_unsupported_commands_exit_2(tools, tool, args):
    proc = tools.run(getattr(tools, tool), *args)
    assert proc.returncode == 2
    assert proc.stderr == "stand-in %s: unsupported: %s\n" % (tool, " ".join(args))


def test_usage_errors(tools):
    """CLI11: unexpected argument -> 109, bad -s value -> 105 (§3.5, §5.5); clap -> 2."""
    proc = tools.mm("create", "-y", "-p", "/tmp/x", "--bogus")
    assert proc.returncode == 109
    assert proc.stderr.startswith("The following argument was not expected: --bogus\n")
    proc = tools.mm("shell", "hook", "-s", "sh")
    assert proc.returncode == 105
    assert proc.stderr.startswith("--shell: sh not in {bash,cmd.exe,dash,fish,nu,posix,powershell,tcsh,xonsh,zsh}")
    proc = tools.px("add", "--bogus", "x")
    assert proc.returncode == 2 and "unexpected argument '--bogus'" in proc.stderr


# --- micromamba: create / list / install -------------------------------------------------

def test_create_output_and_conda_meta(mm_env, channel):
    """§2.1: Transaction on stdout, pip appended, one record per package, history."""
    prefix, proc = mm_env
    out = proc.stdout
    for piece in ("Transaction\n", "  Prefix: %s\n" % prefix, "  Updating specs:\n",
                  "   - python=%s\n   - wetlite-demo=0.1.0\n   - pip\n" % PY_XY, "  Install:\n",
                  "Transaction starting\n", "Linking wetlite-demo-0.1.0-pyh_local_0\n", "Transaction finished\n",
                  "    micromamba activate %s\n" % prefix, "    micromamba run -p %s mycommand\n" % prefix):
        assert piece in out
    assert proc.stderr == ""
    meta = os.path.join(prefix, "conda-meta")
    names = sorted(os.listdir(meta))
    assert names[0] == "history" and len(names) == 4
    assert "wetlite-demo-0.1.0-pyh_local_0.json" in names
    assert [n for n in names if n.startswith("pip-23.") or n.startswith("pip-2")]
    with open(os.path.join(meta, "wetlite-demo-0.1.0-pyh_local_0.json")) as fh:
        rec = json.load(fh)
    for key in ("build", "build_number", "build_string", "channel", "depends", "files", "fn", "md5", "name",
                "paths_data", "requested_spec", "sha256", "size", "subdir", "timestamp", "url", "version"):
        assert key in rec
    assert rec["channel"] == "file://" + channel
    assert rec["requested_spec"] == "wetlite-demo=0.1.0"
    assert rec["timestamp"] == 1700000000          # seconds, not the repodata's milliseconds
    assert rec["url"] == "file://%s/noarch/wetlite-demo-0.1.0-pyh_local_0.tar.bz2" % channel
    assert "lib/python%s/site-packages/wetlite_demo/__init__.py" % PY_XY in rec["files"]
    assert "bin/wetlite-demo" in rec["files"]
    with open(os.path.join(meta, "history")) as fh:
        history = fh.read().splitlines()
    assert re.match(r"^==> \d{4}-\d\d-\d\d \d\d:\d\d:\d\d <==$", history[0])
    assert history[1].startswith("# cmd: ") and " create -y -p " in history[1]
    assert history[2] == "# conda version: 3.8.0"
    assert "+file://%s/noarch::wetlite-demo-0.1.0-pyh_local_0" % channel in history
    assert history[-1] == '# update specs: ["python=%s", "wetlite-demo=0.1.0", "pip"]' % PY_XY
    hello = subprocess.run([os.path.join(prefix, "bin", "wetlite-demo")], stdout=subprocess.PIPE,
                           universal_newlines=True)
    assert hello.stdout == "hello world from wetlite-demo 0.1.0\n"


def test_list_json(tools, mm_env, channel):
    """§4.1 / §4.7: a top-level array sorted by name; pip-installed rows are ``pypi``."""
    prefix, _ = mm_env
    site = os.path.join(prefix, "lib", "python" + PY_XY, "site-packages")
    fake = os.path.join(site, "zzfake-2.0.dist-info")
    os.makedirs(fake, exist_ok=True)
    with open(os.path.join(fake, "METADATA"), "w") as fh:
        fh.write("Metadata-Version: 2.1\nName: zzfake\nVersion: 2.0\n")
    try:
        proc = tools.mm("list", "-p", prefix, "--json")
    finally:
        shutil.rmtree(fake)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[\n    {\n")
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["pip", "python", "wetlite-demo", "zzfake"]
    keys = {"base_url", "build_number", "build_string", "channel", "dist_name", "md5", "name", "platform",
            "sha256", "url", "version"}
    assert all(set(r) == keys for r in rows)
    demo = rows[2]
    assert demo["channel"] == demo["base_url"] == "file://" + channel
    assert demo["platform"] == "noarch" and demo["dist_name"] == "wetlite-demo-0.1.0-pyh_local_0"
    assert rows[1]["platform"] == "linux-64" or rows[1]["platform"].endswith(("-64", "arm64", "aarch64"))
    assert rows[1]["version"] == "%d.%d.%d" % sys.version_info[:3]
    fake_row = rows[3]
    assert (fake_row["channel"], fake_row["build_string"], fake_row["base_url"]) == (
        "pypi", "pypi_0", "https://pypi.org/")
    assert fake_row["md5"] == fake_row["sha256"] == fake_row["url"] == ""


def test_install_into_env_and_noop(tools, channel, tmp_path):
    """§4.2: python pinned, a package added, a no-op still appends to the history.

    In an environment of its own: the shared ``mm_env`` must stay as created.
    """
    prefix = str(tmp_path / "inst")
    create = tools.mm("create", "-y", "-q", "-p", prefix, "-c", "file://" + channel, "--override-channels",
                      "python=" + PY_XY)
    assert create.returncode == 0, create.stderr
    args = ["install", "-y", "-p", prefix, "-c", "file://" + channel, "--override-channels", "wetlite-extra"]
    proc = tools.mm(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Pinned packages:\n\n  - python=%s\n" % PY_XY in proc.stdout
    assert "Linking wetlite-extra-1.0.0-local_0" in proc.stdout
    assert os.path.isfile(os.path.join(prefix, "etc", "wetlite-extra.conf"))
    with open(os.path.join(prefix, "etc", "wetlite-extra.conf")) as fh:
        assert "prefix = %s" % prefix in fh.read()         # text prefix placeholder replaced
    again = tools.mm(*args)
    assert again.returncode == 0
    assert "All requested packages already installed" in again.stdout
    with open(os.path.join(prefix, "conda-meta", "history")) as fh:
        history = fh.read()
    assert history.count('# update specs: ["wetlite-extra"]') == 2
    assert history.count("+file://%s/noarch::wetlite-extra-1.0.0-local_0" % channel) == 1


def test_install_into_missing_prefix(tools, channel, tmp_path):
    """§4.11: exit 1, the backtrace-style messages, nothing created."""
    missing = str(tmp_path / "does-not-exist")
    proc = tools.mm("install", "-y", "-p", missing, "-c", "file://" + channel, "--override-channels", "wetlite-extra")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "error    libmamba No prefix found at: %s\n" % missing in proc.stderr
    assert "critical libmamba Aborting.\n" in proc.stderr
    assert not os.path.exists(missing)


def test_create_again_wipes_with_yes_and_aborts_without(tools, channel, tmp_path):
    """§2.3: -y wipes and recreates; without -y the prompt defaults to No (exit 1)."""
    prefix = str(tmp_path / "again")
    args = ["-p", prefix, "-c", "file://" + channel, "--override-channels", "wetlite-extra"]
    assert tools.mm("create", "-y", *args).returncode == 0
    marker = os.path.join(prefix, "marker.txt")
    open(marker, "w").close()
    proc = tools.mm("create", "-y", *args)
    assert proc.returncode == 0
    assert not os.path.exists(marker)
    with open(os.path.join(prefix, "conda-meta", "history")) as fh:
        assert fh.read().count("==> ") == 1
    open(marker, "w").close()
    proc = tools.mm("create", *args)
    assert proc.returncode == 1
    assert proc.stdout == "Found conda-prefix at '%s'. Overwrite?: [y/N] Aborted.\n" % prefix
    assert proc.stderr == "critical libmamba Aborting.\n"
    assert os.path.exists(marker)


def test_create_in_non_conda_and_empty_dirs(tools, channel, tmp_path):
    """§2.4: a non-empty non-conda directory is refused; an empty one is used with a warning."""
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "somefile.txt").write_text("x")
    proc = tools.mm("create", "-y", "-p", str(nonempty), "-c", "file://" + channel, "--override-channels",
                    "wetlite-extra")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("error    libmamba Non-conda folder exists at prefix - aborting.\n"
                           "critical libmamba Non-conda folder exists at prefix - aborting.\n")
    assert os.listdir(str(nonempty)) == ["somefile.txt"]
    empty = tmp_path / "emptydir"
    empty.mkdir()
    proc = tools.mm("create", "-y", "-p", str(empty), "-c", "file://" + channel, "--override-channels",
                    "wetlite-extra")
    assert proc.returncode == 0
    assert proc.stderr == "warning  libmamba Using existing empty folder as target prefix\n"
    assert sorted(os.listdir(str(empty / "conda-meta"))) == ["history", "wetlite-extra-1.0.0-local_0.json"]
    assert os.access(str(empty / "bin" / "wetlite-extra"), os.X_OK)


def test_missing_package_and_malformed_spec(tools, channel, tmp_path):
    """§2.5, §2.6: solver and parse errors exit 1 and create nothing."""
    prefix = str(tmp_path / "missing")
    base = ["create", "-y", "-p", prefix, "-c", "file://" + channel, "--override-channels"]
    proc = tools.mm(*base + ["python=" + PY_XY, "does-not-exist"])
    assert proc.returncode == 1
    assert proc.stderr == ("error    libmamba Could not solve for environment specs\n"
                           "    The following package could not be installed\n"
                           "    \u2514\u2500 does-not-exist =* * does not exist (perhaps a typo or a missing channel).\n"
                           "critical libmamba Could not solve for environment specs\n")
    assert proc.stdout.count("Resolving Environment") == 4       # the solve is printed twice
    proc = tools.mm(*base + ["wetlite-demo=9.9"])
    assert "\u2514\u2500 wetlite-demo =9.9 * does not exist" in proc.stderr
    proc = tools.mm(*base + ["python==>3"])
    assert proc.returncode == 1
    assert proc.stderr == 'critical libmamba Error parsing version ">3". Version contains invalid characters in >3.\n'
    proc = tools.mm(*base + ["python=3.99"])
    assert proc.returncode == 1 and "python =3.99 * does not exist" in proc.stderr
    proc = tools.mm("create", "-y", "--json", "-p", prefix, "-c", "file://" + channel, "--override-channels",
                    "does-not-exist")
    assert json.loads(proc.stdout) == {"solver_problems": ["unsupported request"], "success": False}
    assert not os.path.exists(prefix)


def test_rc_files(tools, channel, tmp_path):
    """§3.2, §3.8 and the design note: --rc-file anywhere; only rc-like names are read."""
    rc = tmp_path / "rc-channel.yaml"
    rc.write_text("channels:\n  - file://%s\n" % channel)
    prefix = str(tmp_path / "rc")
    for args in (["--rc-file", str(rc), "create", "-y", "--dry-run", "-p", prefix, "wetlite-demo"],
                 ["create", "--rc-file", str(rc), "-y", "--dry-run", "-p", prefix, "wetlite-demo"],
                 ["create", "-y", "--dry-run", "-p", prefix, "wetlite-demo", "--rc-file", str(rc)]):
        proc = tools.mm(*args)
        assert proc.returncode == 0, proc.stderr
        assert "  + wetlite-demo    0.2.0" in proc.stdout
        assert proc.stdout.endswith("Dry run. Not executing the transaction.\n")
    ignored = tmp_path / "rc-channel.txt"
    ignored.write_text(rc.read_text())
    proc = tools.mm("create", "-y", "--dry-run", "-p", prefix, "--rc-file", str(ignored), "-q", "wetlite-demo")
    # §3.1: with no channel configured, micromamba falls back to conda-forge, unreachable here
    assert proc.returncode == 1 and "Subdir conda-forge/noarch not loaded!" in proc.stderr
    # B1: --rc-file takes several values, so a spec right after it is read as an rc file
    proc = tools.mm("create", "-y", "-p", prefix, "--rc-file", str(rc), "wetlite-demo", cwd=str(tmp_path))
    assert proc.returncode == 1
    assert "Configuration file specified but does not exist at '%s'" % (tmp_path / "wetlite-demo") in proc.stderr
    proc = tools.mm("create", "-y", "-p", prefix, "--rc-file", str(tmp_path / "nope.yaml"), "-q", "wetlite-demo")
    assert proc.returncode == 1
    assert "error    libmamba Configuration file specified but does not exist at '%s'" % (
        tmp_path / "nope.yaml") in proc.stderr
    assert not os.path.exists(prefix)


def test_env_file_with_pip_section(tools, channel, wheel, tmp_path):
    """§2.8: -f env.yml (name, channels, dependencies with pip:); pip runs next to the YAML."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "env.yml").write_text(
        "name: fromfile  # ignored with -p\nchannels:\n  - file://%s\ndependencies:\n  - python=%s\n"
        "  - pip\n  - pip:\n      - tinypkg @ file://%s\nvariables:\n  my_var: hello\n" % (channel, PY_XY, wheel))
    prefix = str(tmp_path / "yml")
    proc = tools.mm("create", "-y", "-p", prefix, "-f", str(work / "env.yml"))
    assert proc.returncode == 0, proc.stderr
    assert "Installing pip packages: tinypkg" in proc.stdout
    assert "warning  libmamba You are using 'pip' as an additional package manager." in proc.stderr
    assert os.listdir(str(work)) == ["env.yml"]          # the requirements temp file is gone
    rows = json.loads(tools.mm("list", "-p", prefix, "--json").stdout)
    assert {(r["name"], r["channel"]) for r in rows} >= {("tinypkg", "pypi"), ("python", "file://" + channel)}
    act = tools.mm("shell", "activate", "-s", "bash", "-p", prefix).stdout
    assert "export MY_VAR='hello'\n" in act


# --- micromamba: shell integration, run, env ---------------------------------------------

def test_shell_activate_format(tools, mm_env):
    """§5.10: the exact lines, single-quoted; PowerShell uses $Env:X = "..."."""
    prefix, _ = mm_env
    proc = tools.mm("shell", "activate", "-s", "bash", "-p", prefix)
    assert proc.returncode == 0
    q = "'" + prefix.replace("'", "'\\''") + "'"
    lines = proc.stdout.splitlines()
    assert lines[0] == "PS1='(%s) '" % prefix.replace("'", "'\\''")
    assert lines[1].startswith("export PATH='%s/bin:%s/condabin:" % (prefix.replace("'", "'\\''"), tools.root))
    assert lines[2:] == ["export CONDA_PREFIX=%s" % q, "export CONDA_SHLVL='1'",
                         "export CONDA_DEFAULT_ENV=%s" % q,
                         "export CONDA_PROMPT_MODIFIER='(%s) '" % prefix.replace("'", "'\\''")]
    assert tools.mm("shell", "activate", "-s", "posix", prefix).stdout == proc.stdout
    ps = tools.mm("shell", "activate", "-s", "powershell", "-p", prefix).stdout.splitlines()
    assert ps[0].startswith('$Env:PATH = "%s/bin:' % prefix)
    assert ps[1:] == ['$Env:CONDA_PREFIX = "%s"' % prefix, '$Env:CONDA_SHLVL = "1"',
                      '$Env:CONDA_DEFAULT_ENV = "%s"' % prefix, '$Env:CONDA_PROMPT_MODIFIER = "(%s) "' % prefix]
    missing = tools.mm("shell", "activate", "-s", "bash", "-p", prefix + "-nope")
    assert missing.returncode == 1
    assert missing.stderr == "critical libmamba Cannot activate, prefix does not exist at: '%s-nope'\n" % prefix


def test_hostile_values_are_quoted(tools, tmp_path):
    """Activation output must survive spaces, quotes and $(...) when eval'd."""
    hostile = str(tmp_path / "a b'c\"d$(touch pwned)`x`")
    os.makedirs(os.path.join(hostile, "conda-meta"))
    script = 'eval "$("$0" shell activate -s bash -p "$1")" && printf "%s" "$CONDA_PREFIX"'
    proc = tools.run("bash", "-c", script, tools.micromamba, hostile, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == hostile
    assert not os.path.exists(str(tmp_path / "pwned"))


def test_hook_and_activate_in_bash(tools, mm_env):
    """§5.6: eval the hook, ``micromamba activate PREFIX``, python runs from the env, deactivate."""
    prefix, _ = mm_env
    script = r'''
set -e
eval "$(micromamba shell hook -s bash)"
echo "type: $(type -t micromamba) shlvl=$CONDA_SHLVL"
micromamba activate "$1"
python -c "import sys; print(sys.prefix)"
echo "CONDA_PREFIX=$CONDA_PREFIX SHLVL=$CONDA_SHLVL PS1=$PS1"
micromamba deactivate
echo "after: ${CONDA_PREFIX-<unset>} $CONDA_SHLVL"
'''
    proc = tools.bash(script, prefix)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "type: function shlvl=0", prefix, "CONDA_PREFIX=%s SHLVL=1 PS1=(%s) " % (prefix, prefix),
        "after: <unset> 0"]
    posix = tools.run("dash", "-c", 'eval "$(micromamba shell hook -s posix)"; micromamba activate "$1"; '
                      'command -v python', "dash", prefix) if shutil.which("dash") else None
    if posix is not None:
        assert posix.stdout == os.path.join(prefix, "bin", "python") + "\n"


def test_hook_refuses_other_names(tools, tmp_path):
    """B3/B4: the hook only defines a function for an executable named micromamba or mamba."""
    other = install(str(tmp_path / "bin"), "micromamba", name="mm-other")
    proc = tools.bash('eval "$("$1" shell hook -s bash)"; declare -F micromamba mamba; :', other)
    assert proc.stdout == ""
    assert proc.stderr == 'Error unknown MAMBA_EXE: "%s", filename must be mamba or micromamba\n' % other
    mamba = install(str(tmp_path / "bin"), "micromamba", name="mamba")
    proc = tools.bash('eval "$("$1" shell hook -s bash)"; type -t mamba', mamba)
    assert proc.stdout == "function\n"
    hook = tools.mm("shell", "hook", "-s", "powershell").stdout
    assert "$Env:MAMBA_EXE = '%s'" % tools.micromamba in hook and "Invoke-Mamba" in hook


def test_activate_without_hook(tools, mm_env):
    """§5.9: ``micromamba activate`` run as a program explains and exits 1."""
    proc = tools.mm("activate", mm_env[0])
    assert proc.returncode == 1
    assert proc.stderr == "critical libmamba Shell not initialized\n"
    assert "'micromamba' is running as a subprocess and can't modify the parent shell." in proc.stdout


def test_run(tools, mm_env, tmp_path):
    """§4.10: exit status passed through, 127 for a missing command, 1 for a missing prefix."""
    prefix, _ = mm_env
    proc = tools.mm("run", "-p", prefix, "python", "-c",
                    "import os, sys; print(sys.prefix); print(os.environ['CONDA_PREFIX']); sys.exit(3)")
    assert proc.returncode == 3
    assert proc.stdout == "%s\n%s\n" % (prefix, prefix)
    proc = tools.mm("run", "-p", prefix, "no-such-command", "--flag")
    assert proc.returncode == 127
    assert re.match(r"^.*/mamba\w+: line 5: exec: no-such-command: not found\n$", proc.stderr)
    missing = str(tmp_path / "does-not-exist")
    proc = tools.mm("run", "-p", missing, "python", "-c", "pass")
    assert proc.returncode == 1
    assert proc.stderr == 'critical libmamba The given prefix does not exist: "%s"\n' % missing
    proc = tools.mm("run", "-p", prefix, "--cwd", "/", "-e", "FOO=bar", "python", "-c",
                    "import os; print(os.getcwd(), os.environ.get('FOO'))")
    assert proc.stdout == "/ bar\n"
    proc = tools.mm("run", "-p", prefix, "python", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert proc.returncode == 143


def test_env_list_and_remove(tools, channel, tmp_path):
    """§4.8, §4.9: {"envs": [...]} with the root, and env remove unregisters."""
    prefix = str(tmp_path / "listed")
    assert tools.mm("create", "-y", "-q", "-p", prefix, "-c", "file://" + channel, "--override-channels",
                    "wetlite-extra").returncode == 0
    proc = tools.mm("env", "list", "--json")
    data = json.loads(proc.stdout)
    assert list(data) == ["envs"] and proc.stdout.startswith('{\n    "envs": [\n')
    assert prefix in data["envs"] and tools.root in data["envs"]
    assert data["envs"] == sorted(data["envs"])
    with open(os.path.join(tools.home, ".conda", "environments.txt")) as fh:
        assert prefix + "\n" in fh.read()
    proc = tools.mm("env", "remove", "-y", "-p", prefix)
    assert proc.returncode == 0
    assert proc.stdout.endswith("Environment removed at prefix: %s\n" % prefix)
    assert "Unlinking wetlite-extra-1.0.0-local_0" in proc.stdout
    assert not os.path.exists(prefix)
    assert prefix not in json.loads(tools.mm("env", "list", "--json").stdout)["envs"]
    proc = tools.mm("env", "remove", "-y", "-p", prefix)
    assert proc.returncode == 1 and "No prefix found at: %s" % prefix in proc.stderr


# --- pixi ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pixi_ws(tools, channel, wheel, tmp_path_factory):
    """A workspace with python, wetlite-demo (unpinned) and a local wheel as PyPI dependency."""
    ws = os.path.join(str(tmp_path_factory.mktemp("px")), "my ws")
    init = tools.px("init", "-c", "file://" + channel, ws)
    assert init.returncode == 0, init.stderr
    manifest = os.path.join(ws, "pixi.toml")
    with open(manifest) as fh:
        fresh = fh.read()
    add = tools.px("add", "--manifest-path", manifest, "python=" + PY_XY, "wetlite-demo")
    assert add.returncode == 0, add.stderr
    pypi = tools.px("add", "--manifest-path", manifest, "--pypi", "tinypkg @ file://" + wheel)
    assert pypi.returncode == 0, pypi.stderr
    return {"ws": ws, "manifest": manifest, "init": init, "fresh": fresh, "add": add, "pypi": pypi,
            "prefix": os.path.join(ws, ".pixi", "envs", "default")}


def test_pixi_init(tools, pixi_ws, channel):
    """C2: pixi.toml, .gitignore, .gitattributes; a second init fails."""
    ws = pixi_ws["ws"]
    assert pixi_ws["init"].stderr == "\u2714 Created %s\n" % pixi_ws["manifest"]
    data = tomllib.loads(pixi_ws["fresh"])
    assert data["workspace"]["name"] == "my ws"
    assert data["workspace"]["version"] == "0.1.0"
    assert data["workspace"]["channels"] == ["file://" + channel]
    assert len(data["workspace"]["platforms"]) == 1
    assert data["tasks"] == {} and data["dependencies"] == {}
    with open(os.path.join(ws, ".gitignore")) as fh:
        assert ".pixi/*\n!.pixi/config.toml\n" in fh.read()
    with open(os.path.join(ws, ".gitattributes")) as fh:
        assert "pixi.lock merge=binary linguist-language=YAML linguist-generated=true" in fh.read()
    again = tools.px("init", ws)
    assert again.returncode == 1
    assert again.stderr == "Error:   \u00d7 pixi.toml already exists\n"


def test_pixi_init_pyproject(tools, tmp_path):
    proc = tools.px("init", "--format", "pyproject", str(tmp_path / "pp"))
    assert proc.returncode == 0, proc.stderr
    data = tomllib.loads((tmp_path / "pp" / "pyproject.toml").read_text())
    assert data["tool"]["pixi"]["workspace"]["channels"] == ["conda-forge"]
    assert data["tool"]["pixi"]["pypi-dependencies"] == {"pp": {"path": ".", "editable": True}}
    assert (tmp_path / "pp" / "src" / "pp" / "__init__.py").exists()


def test_pixi_add_edits_manifest(pixi_ws, wheel):
    """C3: ``python=3.X`` -> "3.X.*", unversioned -> semver pin, --pypi URL -> path table."""
    with open(pixi_ws["manifest"]) as fh:
        text = fh.read()
    data = tomllib.loads(text)
    assert data["dependencies"] == {"python": PY_XY + ".*", "wetlite-demo": ">=0.2.0,<0.3"}
    assert data["pypi-dependencies"] == {"tinypkg": {"path": wheel}}
    assert text.startswith(pixi_ws["fresh"].rstrip("\n").rsplit("[dependencies]", 1)[0])    # edited in place
    assert "\u2714 Added wetlite-demo >=0.2.0,<0.3" in pixi_ws["add"].stderr
    assert pixi_ws["pypi"].stderr.endswith("Added these as pypi-dependencies.\n")
    with open(os.path.join(pixi_ws["ws"], "pixi.lock")) as fh:
        assert fh.readline() == "version: 6\n"


def test_pixi_env_metadata(pixi_ws):
    """C11: conda-meta/pixi, conda-meta/history and one record per conda package."""
    meta = os.path.join(pixi_ws["prefix"], "conda-meta")
    with open(os.path.join(meta, "pixi")) as fh:
        info = json.load(fh)
    assert info["manifest_path"] == pixi_ws["manifest"]
    assert info["environment_name"] == "default" and info["pixi_version"] == "0.73.0"
    assert re.match(r"^[0-9a-f]{16}$", info["environment_lock_file_hash"])
    names = os.listdir(meta)
    assert "history" in names and "wetlite-demo-0.2.0-pyh_local_0.json" in names
    assert not [n for n in names if n.startswith("pip-")]          # pixi does not add pip


def test_pixi_add_failure_keeps_manifest(tools, pixi_ws):
    with open(pixi_ws["manifest"]) as fh:
        before = fh.read()
    proc = tools.px("add", "--manifest-path", pixi_ws["manifest"], "does-not-exist")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error:   \u00d7 failed to solve requirements of environment 'default'")
    assert "No candidates were found for does-not-exist *." in proc.stderr
    with open(pixi_ws["manifest"]) as fh:
        assert fh.read() == before


def test_pixi_list_json(tools, pixi_ws, wheel):
    """C7: a pretty array of objects with the 0.70+ fields, conda and pypi kinds."""
    proc = tools.px("list", "--manifest-path", pixi_ws["manifest"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[\n  {\n")
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"python", "wetlite-demo", "tinypkg"}
    for r in rows.values():
        for key in ("name", "version", "build", "build_number", "size_bytes", "kind", "source", "is_explicit",
                    "md5", "sha256", "subdir", "url", "requested_spec", "depends"):
            assert key in r
    assert rows["wetlite-demo"]["kind"] == "conda" and rows["wetlite-demo"]["version"] == "0.2.0"
    assert rows["wetlite-demo"]["is_explicit"] is True and rows["wetlite-demo"]["noarch"] == "python"
    assert rows["python"]["version"] == "%d.%d.%d" % sys.version_info[:3]
    assert rows["tinypkg"]["kind"] == "pypi" and rows["tinypkg"]["build"] is None
    assert rows["tinypkg"]["source"] == wheel and "is_editable" not in rows["tinypkg"]


def test_pixi_shell_hook(tools, pixi_ws):
    """C6: --json (0.67+ shape), bash output evaluated by bash, --json with -s is a clap error."""
    m = pixi_ws["manifest"]
    proc = tools.px("shell-hook", "--manifest-path", m, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"environment_variables", "activation_scripts"}
    env = data["environment_variables"]
    assert env["CONDA_PREFIX"] == pixi_ws["prefix"]
    assert env["PATH"].startswith(os.path.join(pixi_ws["prefix"], "bin") + os.pathsep)
    assert env["PIXI_PROJECT_ROOT"] == pixi_ws["ws"] and env["PIXI_PROJECT_MANIFEST"] == m
    assert env["PIXI_ENVIRONMENT_NAME"] == "default" and env["PIXI_IN_SHELL"] == "1"
    assert env["CONDA_DEFAULT_ENV"] == "my ws" and env["PIXI_PROMPT"] == "(my ws) "
    script = 'eval "$(pixi shell-hook --manifest-path "$1" -s bash --change-ps1 false)" && ' \
             'python -c "import sys, tinypkg; print(sys.prefix, tinypkg.VALUE)"'
    bash = tools.bash(script, m)
    assert bash.returncode == 0, bash.stderr
    assert bash.stdout == "%s 1.0\n" % pixi_ws["prefix"]
    both = tools.px("shell-hook", "--manifest-path", m, "--json", "-s", "bash")
    assert both.returncode == 2
    assert "the argument '--json' cannot be used with '--shell <SHELL>'" in both.stderr


def test_pixi_run(tools, pixi_ws):
    """C5: argv passed verbatim (>= 2 args), one arg is a shell script, exit codes propagate."""
    m = pixi_ws["manifest"]
    proc = tools.px("run", "--manifest-path", m, "python", "-c",
                    "import os, sys; print(sys.prefix == os.environ['CONDA_PREFIX']); sys.exit(4)")
    assert (proc.returncode, proc.stdout) == (4, "True\n")
    proc = tools.px("run", "--manifest-path", m, "--locked", "--", "python", "-c", "print('a b')")
    assert (proc.returncode, proc.stdout) == (0, "a b\n")
    proc = tools.px("run", "--manifest-path", m, 'echo "$PIXI_ENVIRONMENT_NAME" && exit 3')
    assert (proc.returncode, proc.stdout) == (3, "default\n")
    proc = tools.px("run", "--manifest-path", m, "no-such-command", "x")
    assert proc.returncode == 127


def test_pixi_install_locked_and_channel_add(tools, channel, tmp_path):
    """C4/C8: --locked fails on a stale lock; channel add edits the channel list."""
    ws = str(tmp_path / "small")
    assert tools.px("init", "-c", "file://" + channel, ws).returncode == 0
    m = os.path.join(ws, "pixi.toml")
    assert tools.px("add", "--manifest-path", m, "wetlite-extra").returncode == 0
    proc = tools.px("install", "--manifest-path", m, "--locked")
    assert proc.returncode == 0
    assert proc.stderr == "\u2714 The default environment has been installed.\n"
    assert os.path.isfile(os.path.join(ws, ".pixi", "envs", "default", "bin", "wetlite-extra"))
    with open(m, "a") as fh:
        fh.write('wetlite-demo = "*"\n')
    proc = tools.px("install", "--manifest-path", m, "--locked")
    assert proc.returncode == 1 and proc.stderr.startswith("Error:   \u00d7 lock file not up-to-date")
    proc = tools.px("project", "channel", "add", "--manifest-path", m, "--prepend", "--no-install", "conda-forge")
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(open(m).read())["workspace"]["channels"] == ["conda-forge", "file://" + channel]
    proc = tools.px("workspace", "channel", "add", "--manifest-path", m, "--no-install", "file:///elsewhere")
    assert tomllib.loads(open(m).read())["workspace"]["channels"][-1] == "file:///elsewhere"


# --- where the real tools fail, the stand-ins fail too (pixi-0.73.0-source-notes.md) -----------

def conda_package(channel_dir, name, version, files, depends=()):
    """Add a noarch: generic package holding ``files`` ({path: text}) to a channel (made if missing);
    return the channel directory.  The archive is complete (paths.json, hashes), as real tools need."""
    from conda_channel import _File, write_package
    fn, record = write_package(channel_dir, "noarch", {"name": name, "version": version, "build": "0",
                                                       "depends": list(depends), "noarch": "generic"},
                               [_File(path, text.encode()) for path, text in sorted(files.items())])
    for subdir in ("noarch", conda_subdir()):       # real tools want both subdirs indexed
        path = os.path.join(channel_dir, subdir, "repodata.json")
        repodata = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": {}, "removed": [],
                    "repodata_version": 1}
        if os.path.isfile(path):
            with open(path) as fh:
                repodata = json.load(fh)
        if subdir == "noarch":
            repodata["packages"][fn] = record
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(repodata, fh)
    return channel_dir


def pixi_toml(ws, channels, dependencies, extra=""):
    os.makedirs(ws, exist_ok=True)
    manifest = os.path.join(ws, "pixi.toml")
    with open(manifest, "w") as fh:
        fh.write("[workspace]\nname = \"w\"\nchannels = %s\nplatforms = [\"%s\"]\n\n[dependencies]\n%s\n%s"
                 % (json.dumps(channels), conda_subdir(), "".join('%s = "%s"\n' % kv for kv in dependencies.items()),
                    extra))
    return manifest


def conda_subdir():
    import platform
    machine = platform.machine().lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64"}.get(machine, machine)
    return "%s-%s" % ({"darwin": "osx"}.get(sys.platform, "linux"), arch)


def test_unreachable_channels_are_errors(tools, channel, tmp_path):
    """Transcripts §3.1: micromamba retries, then exits 1; pixi's solve fails the same way."""
    prefix = str(tmp_path / "mm")
    proc = tools.mm("create", "-y", "-p", prefix, "-c", "file://" + channel, "-c", "conda-forge",
                    "--override-channels", "wetlite-demo")
    assert proc.returncode == 1
    assert proc.stderr.count("warning  libmamba Retrying in 2 seconds\n") == 7
    assert "Download error (6) Couldn't resolve host name " \
           "[https://conda.anaconda.org/conda-forge/noarch/repodata.json.zst]" in proc.stderr
    assert "Subdir conda-forge/noarch not loaded!" in proc.stderr
    assert not os.path.exists(prefix)
    # An env file's channels count too, even with --override-channels.
    yml = tmp_path / "environment.yml"
    yml.write_text("channels: [conda-forge]\ndependencies: [wetlite-demo]\n")
    proc = tools.mm("create", "-y", "-p", prefix, "-c", "file://" + channel, "--override-channels", "-f", str(yml))
    assert proc.returncode == 1 and "Subdir conda-forge/noarch not loaded!" in proc.stderr

    manifest = pixi_toml(str(tmp_path / "px"), ["file://" + channel, "conda-forge"], {})
    before = open(manifest).read()
    proc = tools.px("add", "--manifest-path", manifest, "python=" + PY_XY)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error:   \u00d7 failed to solve requirements of environment 'default'")
    assert "https://conda.anaconda.org/conda-forge/noarch/repodata_shards.msgpack.zst" in proc.stderr
    assert open(manifest).read() == before


def test_pixi_refuses_a_channel_the_manifest_does_not_list(tools, channel, tmp_path):
    """Notes 4b: `chan::pkg` needs chan in the workspace channels; channel add appends unless --prepend."""
    other = str(tmp_path / "other")
    conda_package(other, "only-elsewhere", "1.0", {"share/only-elsewhere.txt": "x\n"})
    manifest = pixi_toml(str(tmp_path / "ws"), ["file://" + channel], {"python": PY_XY + ".*"})
    proc = tools.px("add", "--manifest-path", manifest, "file://%s::only-elsewhere" % other)
    assert proc.returncode == 1
    assert "Package 'only-elsewhere' requested unavailable channel 'file://%s'" % other in proc.stderr
    proc = tools.px("workspace", "channel", "add", "--manifest-path", manifest, "--prepend", "file://" + other)
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(open(manifest).read())["workspace"]["channels"] == ["file://" + other, "file://" + channel]
    proc = tools.px("add", "--manifest-path", manifest, "file://%s::only-elsewhere" % other)
    assert proc.returncode == 0, proc.stderr


def test_pixi_relative_channels_resolve_against_the_workspace(tools, channel, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(channel, str(ws / "chan"))
    manifest = pixi_toml(str(ws), ["./chan"], {"python": PY_XY + ".*"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = tools.px("install", "--manifest-path", manifest, cwd=str(elsewhere))
    assert proc.returncode == 0, proc.stderr


def test_pixi_flags_from_the_environment_and_frozen_add(tools, channel, tmp_path):
    """Notes 4c: PIXI_FROZEN / PIXI_LOCKED / PIXI_NO_INSTALL; add --frozen only edits the manifest."""
    for how in ({"env": {"PIXI_FROZEN": "1"}}, {"env": {"PIXI_LOCKED": "true"}}, {"flag": "--frozen"},
                {"flag": "--locked"}):
        ws = str(tmp_path / ("ws%d" % len(os.listdir(str(tmp_path)))))
        manifest = pixi_toml(ws, ["file://" + channel], {})
        args = ["add", "--manifest-path", manifest] + ([how["flag"]] if "flag" in how else []) + ["no-such-package"]
        proc = tools.px(*args, env=how.get("env", {}))
        assert proc.returncode == 0, (how, proc.stderr)          # no solve: nothing checks the package
        assert "no-such-package" in open(manifest).read()
        assert not os.path.exists(os.path.join(ws, "pixi.lock")) and not os.path.exists(os.path.join(ws, ".pixi"))
    ws = str(tmp_path / "noinstall")
    manifest = pixi_toml(ws, ["file://" + channel], {})
    proc = tools.px("add", "--manifest-path", manifest, "python=" + PY_XY, env={"PIXI_NO_INSTALL": "1"})
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(os.path.join(ws, "pixi.lock")) and not os.path.exists(os.path.join(ws, ".pixi", "envs"))
    proc = tools.px("add", "--manifest-path", manifest, "wetlite-extra", env={"PIXI_NO_INSTALL": "false"})
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(os.path.join(ws, ".pixi", "envs", "default", "bin", "wetlite-extra"))
    # --frozen and --locked together are accepted (--locked wins).
    proc = tools.px("install", "--manifest-path", manifest, "--frozen", "--locked")
    assert proc.returncode == 0, proc.stderr
    # Frozen with no lock at all fails with pixi's own words.
    bare = pixi_toml(str(tmp_path / "bare"), ["file://" + channel], {"python": PY_XY + ".*"})
    proc = tools.px("shell-hook", "--manifest-path", bare, "--json", "--frozen")
    assert proc.returncode == 1
    assert "the lock file is not up-to-date with requested environment: 'default'" in proc.stderr


def test_pixi_config_files(tools, channel, tmp_path):
    """Config files are read (user, PIXI_HOME, workspace last); --no-config and --config-file exist."""
    home = tmp_path / "pixihome"
    home.mkdir()
    (home / "config.toml").write_text('detached-environments = true\npinning-strategy = "exact-version"\n'
                                      'default-channels = ["file://%s"]\n' % channel)
    env = {"PIXI_HOME": str(home), "PIXI_CACHE_DIR": str(tmp_path / "cache")}
    ws = str(tmp_path / "ws")
    assert tools.px("init", ws, env=env).returncode == 0
    manifest = os.path.join(ws, "pixi.toml")
    assert tomllib.loads(open(manifest).read())["workspace"]["channels"] == ["file://" + channel]
    proc = tools.px("add", "--manifest-path", manifest, "python=" + PY_XY, "wetlite-demo", env=env)
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(open(manifest).read())["dependencies"]["wetlite-demo"] == "==0.2.0"
    envs = os.path.join(ws, ".pixi", "envs")
    assert os.path.islink(envs) and os.path.realpath(envs).startswith(str(tmp_path / "cache"))
    # The workspace's own config wins; --no-config ignores every file.
    ws2 = str(tmp_path / "ws2")
    manifest2 = pixi_toml(ws2, ["file://" + channel], {"python": PY_XY + ".*"})
    os.makedirs(os.path.join(ws2, ".pixi"))
    with open(os.path.join(ws2, ".pixi", "config.toml"), "w") as fh:
        fh.write("detached-environments = false\n")
    assert tools.px("install", "--manifest-path", manifest2, env=env).returncode == 0
    assert os.path.isdir(os.path.join(ws2, ".pixi", "envs", "default")) and not os.path.islink(
        os.path.join(ws2, ".pixi", "envs"))
    ws3 = str(tmp_path / "ws3")
    manifest3 = pixi_toml(ws3, ["file://" + channel], {"python": PY_XY + ".*"})
    assert tools.px("install", "--manifest-path", manifest3, "--no-config", env=env).returncode == 0
    assert not os.path.islink(os.path.join(ws3, ".pixi", "envs"))
    with open(os.path.join(ws3, ".pixi", "config.toml"), "w") as fh:      # ... but not the workspace's file
        fh.write('pinning-strategy = "no-pin"\n')
    assert tools.px("add", "--manifest-path", manifest3, "--no-config", "wetlite-extra", env=env).returncode == 0
    assert tomllib.loads(open(manifest3).read())["dependencies"]["wetlite-extra"] == "*"
    proc = tools.px("install", "--manifest-path", manifest3, "--config-file", str(tmp_path / "missing.toml"))
    assert proc.returncode == 1 and "failed to load config" in proc.stderr
    proc = tools.px("init", "--no-config", str(tmp_path / "ws4"))
    assert proc.returncode == 2 and "unexpected argument '--no-config'" in proc.stderr


def test_pixi_updates_incrementally_and_keeps_what_pip_installed(tools, channel, wheel, tmp_path):
    """Notes table: distributions another installer put there survive; the lock lists only pixi's."""
    ws = str(tmp_path / "ws")
    manifest = pixi_toml(ws, ["file://" + channel], {"python": PY_XY + ".*", "pip": "*"})
    assert tools.px("install", "--manifest-path", manifest).returncode == 0
    prefix = os.path.join(ws, ".pixi", "envs", "default")
    python = os.path.join(prefix, "bin", "python")
    proc = tools.run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    assert proc.returncode == 0, proc.stderr
    stat_before = os.stat(python)
    proc = tools.px("add", "--manifest-path", manifest, "wetlite-extra")
    assert proc.returncode == 0, proc.stderr
    assert os.stat(python).st_ino == stat_before.st_ino                   # python was not relinked
    assert tools.run(python, "-c", "import tinypkg").returncode == 0       # pip's distribution is kept
    rows = json.loads(tools.px("list", "--manifest-path", manifest, "--json").stdout)
    assert "tinypkg" not in [r["name"] for r in rows]                     # pixi list shows the lock
    assert "wetlite-extra" in [r["name"] for r in rows]


def test_pixi_activation_scripts_are_the_manifests_only(tools, channel, tmp_path):
    """Notes 8: package activate.d scripts are folded into the variables."""
    extra = str(tmp_path / "extra")
    conda_package(extra, "with-activation", "1.0",
                  {"etc/conda/activate.d/with-activation.sh": "export WITH_ACTIVATION=from-package\n"})
    ws = str(tmp_path / "ws")
    manifest = pixi_toml(ws, ["file://" + channel, "file://" + extra],
                         {"python": PY_XY + ".*", "with-activation": "*"},
                         '[activation]\nscripts = ["setup.sh"]\n')
    with open(os.path.join(ws, "setup.sh"), "w") as fh:
        fh.write("export FROM_MANIFEST=1\n")
    proc = tools.px("shell-hook", "--manifest-path", manifest, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["environment_variables"]["WITH_ACTIVATION"] == "from-package"
    assert data["activation_scripts"] == [os.path.join(ws, "setup.sh")]
    assert "FROM_MANIFEST" not in data["environment_variables"]


def test_pixi_option_values_as_clap_checks_them(tools, channel, tmp_path):
    manifest = pixi_toml(str(tmp_path / "ws"), ["file://" + channel], {"python": PY_XY + ".*"})
    proc = tools.px("shell-hook", "--manifest-path", manifest, "-s", "bash", "--change-ps1", "yes")
    assert proc.returncode == 2 and "[possible values: true, false]" in proc.stderr
    proc = tools.px("shell-hook", "--manifest-path", manifest, "-s", "dash", "--change-ps1", "false")
    assert proc.returncode == 0 and "export CONDA_PREFIX=" in proc.stdout
    proc = tools.px("--color", "sometimes", "list", "--manifest-path", manifest)
    assert proc.returncode == 2
    proc = tools.px("add", "--offline", "x")
    assert proc.returncode == 2 and "unexpected argument '--offline'" in proc.stderr
    proc = tools.px("list", "--manifest-path", manifest, "nothing-matches-this")
    assert proc.returncode == 1
