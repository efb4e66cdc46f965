"""wetlite's own TOML reader (for hosts without tomllib) agrees with tomllib."""
import datetime
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import HANG, local_interpreters, wetlite

tomllib = pytest.importorskip("tomllib")

DOCUMENTS = [
    # What `pixi init` writes, and the tables wetlite reads.
    '[workspace]\nchannels = ["conda-forge"]\nname = "w"\nplatforms = ["linux-64"]\nversion = "0.1.0"\n\n'
    '[tasks]\n\n[dependencies]\npython = "3.11.*"\nnumpy = ">=1.26,<2"\n',
    # What `pixi init --format pyproject` writes, with features and environments.
    '[project]\ndependencies = []\nname = "pp"\nrequires-python = ">= 3.11"\nversion = "0.1.0"\n\n'
    '[project.optional-dependencies]\ntest = ["pytest>=8", \'hypothesis ; python_version >= "3.9"\']\n\n'
    '[build-system]\nbuild-backend = "hatchling.build"\nrequires = ["hatchling"]\n\n'
    '[tool.pixi.workspace]\nchannels = ["conda-forge", { channel = "./local", priority = 1 }]\n'
    'platforms = ["linux-64", "osx-arm64"]\n\n[tool.pixi.pypi-dependencies]\npp = { path = ".", editable = true }\n\n'
    '[tool.pixi.feature.gpu.dependencies]\ncuda = { version = "12.*", channel = "nvidia" }\n\n'
    '[tool.pixi.environments]\ndefault = { solve-group = "x" }\ngpu = ["gpu"]\n',
    # Strings, numbers, arrays, inline tables, dotted keys, arrays of tables.
    'a = 1\nb = "x\\ty\\u00e9\\U0001F600"\nc = \'lit\\eral\'\nd = """\nmulti\nline\\\n   continued"""\n'
    "e = '''\nraw \\n'''\nf = [1, 2.5, -3e2, +inf, 0x1F, 0o17, 0b101, 1_000, -0.0]\n"
    'g = { x = 1, "y.z" = [true, false], n = { m = "q" } }\nh.i.j = "dotted"\n"quoted key" = \'v\'\n'
    '[t]\nv = [\n  "a", # comment\n  "b",\n]\ns = """a""\\""""\ns2 = """a"""""\n'
    '[[arr]]\nn = 1\n[[arr]]\nn = 2\n[arr.sub]\ndeep = "yes"\n[t.u]\nw = []\n',
    # Empty and comment-only documents; CRLF line ends (inside multi-line strings they read as "\n").
    "", "# nothing\n\n", 'a = "b"\r\n[c]\r\nd = 1\r\n', "a = \"\"\"x\r\ny\"\"\"\r\nb = '''\r\nq\r\n'''\r\n# c\tc\r\n",
    # Where TOML lets a table be added to: headers below a table that dotted keys defined, a
    # super-table's header after its sub-table's, dotted keys through a table a header only implied,
    # and, within one section or inline table, more dotted keys through the same tables.
    '[fruit]\napple.color = "red"\napple.taste.sweet = true\n[fruit.apple.texture]\nsmooth = true\n',
    '[x.y.z.w]\n[x]\n', '[a.b.c]\nz = 9\n[a]\nb.d = 1\n', 'a = { b.c = 1, b.d = 2 }\n',
    'a.b = 1\na.c = 2\n[x]\ny.z = 1\ny.w = 2\n', 'a = {}\nb.c = {}\n[d]\n',
    '[[f]]\nn = "a"\n[f.p]\nc = "r"\n[[f.v]]\nn = "x"\n[[f]]\nn = "b"\n[[f.v]]\nn = "y"\n[f.p]\nc = 1\n',
]


def plain(obj, reader=None):
    """Dates as "date": tomllib's date objects, and the texts wetlite's reader keeps for them."""
    if isinstance(obj, dict):
        return {k: plain(v, reader) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v, reader) for v in obj]
    if isinstance(obj, (datetime.date, datetime.time)):
        return "date"
    if reader is not None and isinstance(obj, str) and re.match(DATE, obj) and obj in reader.text and \
            not any(value == obj for _start, _end, value in reader.strings.values()):
        return "date"
    return obj


DATE = r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}"


@pytest.mark.parametrize("text", DOCUMENTS)
def test_documents_read_as_tomllib_reads_them(text):
    assert wetlite._TomlReader(text, "doc").parse() == tomllib.loads(text)


def test_dates_are_kept_as_text():
    data = wetlite._TomlReader("when = 1979-05-27T07:32:00Z\nday = 1979-05-27\nat = 07:32:00\n", "d").parse()
    assert data == {"when": "1979-05-27T07:32:00Z", "day": "1979-05-27", "at": "07:32:00"}


def refused_as_tomllib_refuses(text, where):
    """The reader's SpecError for ``text``, which tomllib refuses too; on the line tomllib names."""
    with pytest.raises(tomllib.TOMLDecodeError) as expected:
        tomllib.loads(text)
    with pytest.raises(wetlite.SpecError, match="is not valid TOML") as info:
        wetlite._TomlReader(text, where).parse()
    line = re.search(r"at line (\d+),", str(expected.value))
    if line:
        assert str(info.value).endswith("(line %s)" % line.group(1)), (str(info.value), str(expected.value))
    return info.value


@pytest.mark.parametrize("text", [
    'a = 1\na = 2\n', '[t]\n[t]\n', 'a = "unterminated\n', 'a = \n', 'a = [1,,]\n',
    'a = "\\q"\n', 'a = 1 b = 2\n', '[t\n', 'a = {x = 1\n',
    # A table is defined once, by a header or by dotted keys; inline tables and arrays are closed.
    'a.b = 1\n[a]\n', 'a.b.c = 1\n[a.b]\n', '[a.b.c]\n[a]\nb.d = 1\n[a.b]\n', '[a]\n[a.b]\n[a]\nb.c = 1\n',
    '[a.b]\n[a]\nb.c = 1\n', 'a = []\n[[a]]\n', 'a = [{}]\n[[a]]\n', 'a = [{}]\n[a.b]\n', 'a = {}\n[a]\n',
    'a = {}\n[a.b]\n', '[a]\nb = {}\n[a.b.c]\n', '[a]\nb = {c = {}}\nb.c.d = 1\n', 'a = {b = [1], b.c = 2}\n',
    # Dates and times that do not exist.
    'a = 1900-02-29\n', 'a = 2021-13-01\n', 'a = 2021-00-10\n', 'a = 24:00:00\n', 'a = 23:60:00\n',
    'a = 1979-05-27T07:32:60Z\n', 'a = 1979-05-27T07:32:00+24:00\n', 'a = 1979-05-27 07:32:00-01:60\n',
    # Control characters other than tab, and carriage returns that do not end a line.
    'a = "x\x01"\n', "a = 'x\x7f'\n", '# \x00\n', 'a = 1 # x\x1f\n', 'a = 1\r\n\rb = 2\n', 'a = """x\r"""\n',
    "a = '''x\ry'''\n"])
def test_invalid_documents_are_spec_errors(text):
    refused_as_tomllib_refuses(text, "bad.toml")


def test_python_own_toml_test_suite_where_present():
    """CPython ships tomllib's test documents with each interpreter; read every valid one."""
    roots = glob.glob(os.path.join(os.path.dirname(os.__file__), "test", "test_tomllib", "data", "valid"))
    if not roots:
        pytest.skip("this interpreter has no test/test_tomllib data")
    checked = 0
    for path in glob.glob(os.path.join(roots[0], "**", "*.toml"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        reader = wetlite._TomlReader(text, path)
        assert plain(reader.parse(), reader) == plain(tomllib.loads(text)), path
        checked += 1
    assert checked > 10


def test_toml_loads_uses_the_reader_without_tomllib(monkeypatch):
    monkeypatch.setitem(sys.modules, "tomllib", None)         # import tomllib now raises ImportError
    assert wetlite._toml_loads(DOCUMENTS[0], "x")["dependencies"]["numpy"] == ">=1.26,<2"
    with pytest.raises(wetlite.SpecError, match="x is not valid TOML"):
        wetlite._toml_loads("a = ", "x")


def _tomllib_test_documents(kind):
    """CPython's own tomllib test documents of ``kind`` ("valid" or "invalid"), relative to their root."""
    root = os.path.join(os.path.dirname(os.__file__), "test", "test_tomllib", "data", kind)
    found = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.toml"), recursive=True)):
        with open(path, "rb") as f:
            try:
                f.read().decode("utf-8")
            except UnicodeDecodeError:      # wetlite reads a manifest as UTF-8 text before parsing it
                continue
        found.append(os.path.relpath(path, root))
    return root, found


INVALID_ROOT, INVALID = _tomllib_test_documents("invalid")


@pytest.mark.parametrize("name", INVALID)
def test_python_own_invalid_toml_documents_are_refused(name):
    """Every document of CPython's tomllib tests that tomllib refuses is a SpecError that names the file."""
    with open(os.path.join(INVALID_ROOT, name), encoding="utf-8", newline="") as f:    # a lone CR stays one
        text = f.read()
    assert name in str(refused_as_tomllib_refuses(text, name))


def test_toml_loads_with_tomllib_says_where_and_what(tmp_path):
    with pytest.raises(wetlite.SpecError) as info:
        wetlite._toml_loads('[workspace]\nname = "w"\nname = "again"\n', "the/pixi.toml")
    assert str(info.value).startswith("the/pixi.toml is not valid TOML: ") and "line 3" in str(info.value)


OLD_PYTHONS = [(version, path) for version, path in local_interpreters() if version in ("3.6", "3.7", "3.8", "3.9", "3.10")]
_READ_ALL = r"""
import json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
wetlite = __import__(os.path.basename(sys.argv[1])[:-3])

def read(text):
    try:
        return wetlite._TomlReader(text, "doc").parse()
    except wetlite.SpecError as exc:
        return "SpecError: %s" % exc

sys.stdout.write(json.dumps([read(text) for text in json.load(sys.stdin)], sort_keys=True))
"""


@pytest.mark.parametrize("python", [p for _v, p in OLD_PYTHONS] or [None], ids=[v for v, _p in OLD_PYTHONS] or ["none"])
def test_the_reader_reads_alike_on_the_interpreters_that_need_it(python):
    """The reader is for 3.6-3.10, which have no tomllib: there it reads every document (CPython's
    valid and invalid ones, and this file's) to the same result or error as here, where the tests
    above hold it to tomllib's."""
    if python is None:
        pytest.skip("no local Python 3.6-3.10 (pyenv) to run the reader on")
    texts = list(DOCUMENTS)
    for kind in ("valid", "invalid"):
        root, names = _tomllib_test_documents(kind)
        for name in names:
            with open(os.path.join(root, name), encoding="utf-8", newline="") as f:
                texts.append(f.read())
    here = json.loads(subprocess.run([sys.executable, "-I", "-c", _READ_ALL, wetlite.__file__], input=json.dumps(texts),
                                     stdout=subprocess.PIPE, universal_newlines=True, check=True, timeout=HANG).stdout)
    there = json.loads(subprocess.run([python, "-I", "-c", _READ_ALL, wetlite.__file__], input=json.dumps(texts),
                                      stdout=subprocess.PIPE, universal_newlines=True, check=True, timeout=HANG).stdout)
    assert len(here) == len(texts) and sum(str(r).startswith("SpecError") for r in here) == len(INVALID) > 40
    assert [json.dumps(r, sort_keys=True) for r in there] == [json.dumps(r, sort_keys=True) for r in here]
