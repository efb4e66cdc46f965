"""A small local conda channel for the tests, built from a local interpreter.

Standard library only, nothing downloaded.  The conda-tool tests build it once per
session (the ``local_channel`` fixture); build one by hand for the real tools with::

    python tests/conda_channel.py OUTDIR        # then WETLITE_TEST_CHANNEL=file://OUTDIR

It holds, as flat ``repodata.json`` plus ``.tar.bz2`` packages::

    <subdir>/python-X.Y.Z-venv_0.tar.bz2      this interpreter, packaged as a venv (see below)
    noarch/pip-V-pyh_local_0.tar.bz2           noarch: python, from ensurepip's bundled wheel
    noarch/wetlite-demo-0.1.0-pyh_local_0.tar.bz2 and 0.2.0
                                               noarch: python; module wetlite_demo with
                                               hello(name="world"), console script wetlite-demo
    noarch/wetlite-extra-1.0.0-local_0.tar.bz2 noarch: generic; bin/wetlite-extra, and
                                               etc/wetlite-extra.conf with a text prefix placeholder

The ``python`` package is a venv: ``pyvenv.cfg`` naming the base interpreter's
``bin`` and ``bin/pythonX.Y`` an absolute symbolic link to it.  It is tiny and
links fast, and works on the machine that built it, which is all a test needs.

Each package carries what conda, micromamba and pixi read: ``info/index.json``,
``info/paths.json`` (paths_version 1, sha256 and size of every file),
``info/files``, ``info/link.json`` for noarch: python (its entry points) and
``info/has_prefix`` for the placeholder file.  noarch: python packages keep their
modules under ``site-packages/``, which the installer maps to the environment's
``lib/pythonX.Y/site-packages``.
"""
import base64
import bz2
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import zipfile

PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"    # the placeholder conda-build uses
MTIME = 1700000000                                  # fixed, so archives are reproducible
DEMO_VERSIONS = ("0.1.0", "0.2.0")

_PROBE = (
    "import glob, json, os, sys, ensurepip\n"
    "print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3],\n"
    "    'base_prefix': sys.base_prefix,\n"
    "    'base_executable': getattr(sys, '_base_executable', sys.executable),\n"
    "    'wheels': glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), '_bundled', '*.whl'))}))\n")


def conda_subdir():
    """This machine's conda subdir, e.g. linux-64 or osx-arm64."""
    machine = platform.machine().lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64",
            "ppc64le": "ppc64le"}.get(machine, machine)
    system = {"linux": "linux", "darwin": "osx", "win32": "win"}.get(sys.platform, sys.platform)
    if system == "linux" and arch == "arm64":
        arch = "aarch64"
    if system == "osx" and arch == "aarch64":
        arch = "arm64"
    return "%s-%s" % (system, arch)


def probe(python):
    """Version, base interpreter and ensurepip wheels of ``python``."""
    out = subprocess.run([python, "-c", _PROBE], stdout=subprocess.PIPE, check=True).stdout
    info = json.loads(out.decode())
    info["xy"] = ".".join(info["version"].split(".")[:2])
    # A venv's own python is a link into the venv: package the real base interpreter.
    candidate = os.path.join(info["base_prefix"], "bin", "python" + info["xy"])
    info["base"] = candidate if os.path.exists(candidate) else os.path.realpath(info["base_executable"])
    return info


# --- one package --------------------------------------------------------------

class _File(object):
    """One entry of a package: bytes, or a symbolic link to ``target``."""

    def __init__(self, path, data=b"", mode=0o644, target=None, placeholder=False):
        self.path = path
        self.data = data
        self.mode = mode
        self.target = target
        self.placeholder = placeholder


def _add(tar, name, data=b"", mode=0o644, target=None):
    member = tarfile.TarInfo(name)
    member.mtime = MTIME
    member.uname = member.gname = "root"
    if target is not None:
        member.type = tarfile.SYMTYPE
        member.linkname = target
        member.mode = 0o777
        tar.addfile(member)
    else:
        member.size = len(data)
        member.mode = mode
        tar.addfile(member, io.BytesIO(data))


def _paths_entry(item):
    if item.target is not None:
        # conda-build records a link as "softlink" with the hash of what it points to.
        data = b""
        if os.path.isfile(item.target):
            with open(item.target, "rb") as f:
                data = f.read()
        entry = {"_path": item.path, "path_type": "softlink"}
    else:
        data = item.data
        entry = {"_path": item.path, "path_type": "hardlink"}
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    entry["size_in_bytes"] = len(data)
    if item.placeholder:
        entry["file_mode"] = "text"
        entry["prefix_placeholder"] = PLACEHOLDER
    return entry


def write_package(channel, subdir, index, files, link=None):
    """Write ``<name>-<version>-<build>.tar.bz2`` into channel/subdir; return (filename, repodata record)."""
    index = dict(index, subdir=subdir, timestamp=MTIME * 1000)
    index.setdefault("build_number", 0)
    index.setdefault("depends", [])
    index.setdefault("license", "MIT")
    info = {
        "info/index.json": json.dumps(index, indent=2, sort_keys=True),
        "info/paths.json": json.dumps({"paths": [_paths_entry(f) for f in files], "paths_version": 1},
                                      indent=2, sort_keys=True),
        "info/files": "".join(f.path + "\n" for f in files),
        "info/about.json": json.dumps({"summary": "wetlite test package", "license": index["license"]}),
    }
    if link is not None:
        info["info/link.json"] = json.dumps(link, indent=2, sort_keys=True)
    placeholders = [f for f in files if f.placeholder]
    if placeholders:
        info["info/has_prefix"] = "".join("%s text %s\n" % (PLACEHOLDER, f.path) for f in placeholders)
    fn = "%s-%s-%s.tar.bz2" % (index["name"], index["version"], index["build"])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(info):
            _add(tar, name, info[name].encode("utf-8"))
        for item in files:
            _add(tar, item.path, item.data, item.mode, item.target)
    data = bz2.compress(raw.getvalue(), 1)
    directory = os.path.join(channel, subdir)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, fn), "wb") as f:
        f.write(data)
    record = dict(index, md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(),
                  size=len(data))
    return fn, record


# --- the packages ----------------------------------------------------------------

def _python_files(info):
    xy = info["xy"]
    cfg = "home = %s\ninclude-system-site-packages = false\nversion = %s\n" % (
        os.path.dirname(info["base"]), info["version"])
    return [
        _File("pyvenv.cfg", cfg.encode()),
        _File("bin/python" + xy, target=info["base"]),
        _File("bin/python3", target="python" + xy),
        _File("bin/python", target="python" + xy),
        # The installer creates site-packages only for files in it.
        _File("lib/python%s/site-packages/README.txt" % xy, b"This directory holds installed packages.\n"),
    ]


def _record(files):
    """A wheel RECORD for {path: bytes}, itself included."""
    lines = []
    for path, data in sorted(files.items()):
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    return lines


def _noarch_python(site_files, entry_points):
    """Files and link.json of a noarch: python package whose site-packages holds ``site_files``."""
    files = [_File("site-packages/" + path, data) for path, data in sorted(site_files.items())]
    link = {"noarch": {"type": "python", "entry_points": entry_points}, "package_metadata_version": 1}
    return files, link


def _console_scripts(text):
    """["name = module:function", ...] from an entry_points.txt."""
    scripts, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section == "console_scripts" and "=" in line:
            name, target = line.split("=", 1)
            scripts.append("%s = %s" % (name.strip(), target.strip()))
    return scripts


def _wheel_package(wheel):
    """(name, version, files, link) of a noarch: python package made from a pure-Python wheel."""
    name, version = os.path.basename(wheel).split("-")[:2]
    site, entry_points = {}, []
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            data = zf.read(member)
            site[member.filename] = data
            if member.filename.endswith(".dist-info/entry_points.txt"):
                entry_points = _console_scripts(data.decode("utf-8"))
    files, link = _noarch_python(site, entry_points)
    return name.lower().replace("_", "-"), version, files, link


def _demo_site_files(version):
    dist = "wetlite_demo-%s.dist-info" % version
    module = (
        '"""wetlite-demo: a tiny package for the tests."""\n'
        "__version__ = %r\n\n\n"
        "def hello(name=\"world\"):\n"
        "    return \"hello %%s from wetlite-demo %%s\" %% (name, __version__)\n\n\n"
        "def main():\n"
        "    print(hello())\n" % version)
    files = {
        "wetlite_demo/__init__.py": module.encode(),
        dist + "/METADATA": ("Metadata-Version: 2.1\nName: wetlite-demo\nVersion: %s\n" % version).encode(),
        dist + "/INSTALLER": b"conda\n",
        dist + "/entry_points.txt": b"[console_scripts]\nwetlite-demo = wetlite_demo:main\n",
    }
    files[dist + "/RECORD"] = ("\n".join(_record(files) + [dist + "/RECORD,,"]) + "\n").encode()
    return files


def _extra_files():
    script = ("#!/bin/sh\necho \"wetlite-extra 1.0.0 installed in %s\"\n" % PLACEHOLDER).encode()
    conf = ("# wetlite-extra configuration\nprefix = %s\n" % PLACEHOLDER).encode()
    return [
        _File("bin/wetlite-extra", script, mode=0o755, placeholder=True),
        _File("etc/wetlite-extra.conf", conf, placeholder=True),
        _File("share/wetlite-extra/README.txt", b"A noarch: generic test package.\n"),
    ]


def build_channel(out, python=None):
    """Build the channel in directory ``out`` (created) from ``python`` (default: this one); return ``out``."""
    info = probe(python or sys.executable)
    subdir = conda_subdir()
    records = {subdir: {}, "noarch": {}}

    def add(sub, index, files, link=None):
        fn, record = write_package(out, sub, index, files, link)
        records[sub][fn] = record

    add(subdir, {"name": "python", "version": info["version"], "build": "venv_0", "license": "PSF-2.0",
                 "arch": platform.machine(), "platform": subdir.split("-")[0]},
        _python_files(info))
    for wheel in info["wheels"]:
        name, version, files, link = _wheel_package(wheel)
        if name == "pip":
            add("noarch", {"name": name, "version": version, "build": "pyh_local_0", "noarch": "python",
                           "depends": ["python >=3.7"]}, files, link)
    for version in DEMO_VERSIONS:
        files, link = _noarch_python(_demo_site_files(version), ["wetlite-demo = wetlite_demo:main"])
        add("noarch", {"name": "wetlite-demo", "version": version, "build": "pyh_local_0", "noarch": "python",
                       "depends": ["python >=3.8"]}, files, link)
    add("noarch", {"name": "wetlite-extra", "version": "1.0.0", "build": "local_0", "noarch": "generic"},
        _extra_files())
    for sub, packages in records.items():
        repodata = {"info": {"subdir": sub}, "packages": packages, "packages.conda": {}, "removed": [],
                    "repodata_version": 1}
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        with open(os.path.join(out, sub, "repodata.json"), "w") as f:
            json.dump(repodata, f, indent=1, sort_keys=True)
    return out


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the channel directory to create")
    parser.add_argument("--python", help="the interpreter to package (default: this one)")
    args = parser.parse_args()
    print("file://" + os.path.abspath(build_channel(os.path.abspath(args.out), args.python)))
