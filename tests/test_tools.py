"""Tool bootstrap (wetlite section 8): pixi and micromamba installs, for real.

Releases are served by tests/httpserver.FileServer on 127.0.0.1 from archives
built here; the "binaries" are small shell scripts that answer --version.
"""
import ast
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from conftest import HERE, REPO, tree, wetlite
from httpserver import FileServer, tar_bytes, tar_info

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the stand-in binaries are POSIX shell scripts")

LINUX64 = ("linux", "x86_64")
PIXI_ASSET = "pixi-x86_64-unknown-linux-musl.tar.gz"
MM_ASSET = "micromamba-linux-64"

_CLEAN_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
               "no_proxy", "NO_PROXY", "WETLITE_DOWNLOAD_TIMEOUT", "WETLITE_DOWNLOAD_URL",
               "WETLITE_PIXI", "WETLITE_MICROMAMBA", "WETLITE_TOOL", "WETLITE_ROOT")


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(wetlite, "_BACKOFF_SECONDS", 0.01)
    monkeypatch.setattr(wetlite, "_DOWNLOAD_TIMEOUT", 0.5)
    for name in _CLEAN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


# -- building releases ------------------------------------------------------------------


def script(line, code=0):
    """A fake tool binary: prints ``line`` for any arguments and exits ``code``."""
    return ("#!/bin/sh\necho '%s'\nexit %d\n" % (line, code)).encode("ascii")


def sha(data):
    return hashlib.sha256(data).hexdigest()


def pixi_release(srv, tag, binary=None, sidecar=True, archive=None, **behaviour):
    """Serve pixi ``tag`` for linux-64; returns (asset path, binary bytes)."""
    binary = binary if binary is not None else script("pixi " + tag.lstrip("v"))
    data = archive if archive is not None else tar_bytes([("pixi", binary)])
    path = "/%s/%s" % (tag, PIXI_ASSET)
    srv.add(path, data, **behaviour)
    if sidecar is True:
        srv.add(path + ".sha256", "%s  %s\n" % (sha(data), PIXI_ASSET))
    elif sidecar:
        srv.add(path + ".sha256", sidecar)
    return path, binary


def mm_package(binary):
    return tar_bytes([("info/index.json", b'{"name": "micromamba"}'), ("bin/micromamba", binary)], "bz2")


def micromamba_release(srv, tag, binary=None, layout="raw", sidecar=True, **behaviour):
    """Serve micromamba ``tag`` for linux-64, as the raw binary or only the .tar.bz2 package."""
    binary = binary if binary is not None else script(tag.rsplit("-", 1)[0])
    raw = "/%s/%s" % (tag, MM_ASSET)
    if layout == "raw":
        srv.add(raw, binary, **behaviour)
    else:
        srv.add(raw + ".tar.bz2", mm_package(binary), **behaviour)
    if sidecar is True:
        srv.add(raw + ".sha256", sha(binary))         # the raw binary's digest, no newline
    elif sidecar:
        srv.add(raw + ".sha256", sidecar)
    return raw, binary


def install(tool, root, tag, srv, **kwargs):
    kwargs.setdefault("platform_id", LINUX64)
    return wetlite._install_tool(tool, root, tag, srv.url, **kwargs)




def bin_listing(root):
    path = os.path.join(root, "bin")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read(path):
    with open(path, "rb") as f:
        return f.read()


def marker(root, tool):
    path = os.path.join(root, "bin", "." + tool + "-version")
    with open(path) as f:
        return f.read().strip()


def host_asset(tool):
    return wetlite._tool_asset(tool, *wetlite._platform_id())


# -- good installs ------------------------------------------------------------------------


def test_install_pixi(server, root):
    asset, binary = pixi_release(server, "v0.99.0")
    path = install("pixi", root, "v0.99.0", server)
    assert path == os.path.join(root, "bin", "pixi")
    assert read(path) == binary
    assert os.access(path, os.X_OK)
    assert subprocess.run([path, "--version"], stdout=subprocess.PIPE).stdout == b"pixi 0.99.0\n"
    assert marker(root, "pixi") == "v0.99.0"
    assert bin_listing(root) == [".pixi-version", "pixi"]        # no staging dir, no .part
    assert os.path.isfile(os.path.join(root, "state", "locks", "install-pixi.lock"))
    assert len(server.requests_for(asset)) == 1
    assert len(server.requests_for(asset + ".sha256")) == 1
    for req in server.requests:
        assert req.header("User-Agent") == "wetlite/" + wetlite.__version__


def test_install_pixi_cargo_dist_sidecar_format(server, root):
    data = tar_bytes([("pixi", script("pixi 0.60.0"))])
    pixi_release(server, "v0.60.0", archive=data, sidecar="%s *%s\n" % (sha(data).upper(), PIXI_ASSET))
    assert read(install("pixi", root, "v0.60.0", server)) == script("pixi 0.60.0")


def test_install_pixi_nested_layout(server, root):
    binary = script("pixi 0.99.0")
    data = tar_bytes([tar_info("pixi-x86_64-unknown-linux-musl", tarfile.DIRTYPE, mode=0o755),
                      ("pixi-x86_64-unknown-linux-musl/pixi", binary),
                      ("pixi-x86_64-unknown-linux-musl/README.md", b"docs")])
    pixi_release(server, "v0.99.0", archive=data)
    path = install("pixi", root, "v0.99.0", server)
    assert read(path) == binary
    assert bin_listing(root) == [".pixi-version", "pixi"]


def test_install_pixi_archive_without_binary(server, root):
    pixi_release(server, "v0.99.0", archive=tar_bytes([("README.md", b"no binary here")]))
    with pytest.raises(wetlite.ToolError) as info:
        install("pixi", root, "v0.99.0", server)
    assert "pixi" in str(info.value)
    assert bin_listing(root) == []


def test_install_micromamba_raw_binary(server, root):
    asset, binary = micromamba_release(server, "0.99.0-0")
    path = install("micromamba", root, "0.99.0-0", server)
    assert path == os.path.join(root, "bin", "micromamba")      # not micromamba-linux-64
    assert read(path) == binary
    assert os.access(path, os.X_OK)
    assert marker(root, "micromamba") == "0.99.0-0"
    assert bin_listing(root) == [".micromamba-version", "micromamba"]
    assert len(server.requests_for(asset)) == 1


def test_install_micromamba_from_tar_bz2_package(server, root):
    raw, binary = micromamba_release(server, "0.99.0-0", layout="package")
    path = install("micromamba", root, "0.99.0-0", server)
    assert path == os.path.join(root, "bin", "micromamba")
    assert read(path) == binary
    assert marker(root, "micromamba") == "0.99.0-0"
    assert bin_listing(root) == [".micromamba-version", "micromamba"]
    paths = server.paths()
    assert raw in paths and raw + ".tar.bz2" in paths
    assert paths.index(raw) < paths.index(raw + ".tar.bz2")      # raw first, package on 404


def test_install_micromamba_package_with_only_its_own_sidecar(server, root):
    # A mirror that carries only the conda package and its sidecar
    # (micromamba-linux-64.tar.bz2 + micromamba-linux-64.tar.bz2.sha256, both
    # in the real releases, the latter holding the raw binary's digest) must
    # install: the package's own {url}.sha256 is a valid checksum source.
    raw, binary = micromamba_release(server, "0.99.0-0", layout="package", sidecar=None)
    server.add(raw + ".tar.bz2.sha256", sha(binary))
    path = install("micromamba", root, "0.99.0-0", server)
    assert read(path) == binary


def test_micromamba_package_is_checked_against_the_binary_digest(server, root):
    # The sidecar holds the digest of the raw binary; the archive's own digest does not verify.
    raw, binary = micromamba_release(server, "0.99.0-0", layout="package", sidecar=None)
    server.add(raw + ".sha256", sha(mm_package(binary)))
    with pytest.raises(wetlite.DownloadError) as info:
        install("micromamba", root, "0.99.0-0", server)
    assert "checksum" in str(info.value)
    assert bin_listing(root) == []


def test_environment_manager_install_tool_pixi(server, tmp_path):
    root = str(tmp_path / "root")
    asset = host_asset("pixi")
    binary = script("pixi 0.99.0")
    data = tar_bytes([("pixi", binary)])
    server.add("/v0.99.0/" + asset, data)
    server.add("/v0.99.0/" + asset + ".sha256", "%s  %s\n" % (sha(data), asset))
    phases = []
    mgr = wetlite.EnvironmentManager(root=root, tool="pixi", tool_version="0.99.0", download_url=server.url + "/")
    assert mgr.tool_version == "v0.99.0"
    assert server.requests == []                       # nothing on construction
    path = mgr.install_tool(progress=lambda phase, line: phases.append((phase, line)))
    assert path == os.path.join(root, "bin", "pixi")
    assert read(path) == binary
    assert ("download", None) in phases
    assert len(server.requests_for("/v0.99.0/" + asset)) == 1


def test_environment_manager_install_tool_micromamba(server, tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    asset = host_asset("micromamba")
    binary = script("0.99.0")
    server.add("/0.99.0-0/" + asset, binary)
    server.add("/0.99.0-0/" + asset + ".sha256", sha(binary))
    monkeypatch.setenv("WETLITE_DOWNLOAD_URL", server.url)            # the mirror, from the environment
    mgr = wetlite.EnvironmentManager(root=root, tool="micromamba", tool_version="0.99.0")
    assert mgr.tool_version == "0.99.0-0"
    path = mgr.install_tool()
    assert path == os.path.join(root, "bin", "micromamba")
    assert read(path) == binary
    assert os.path.isfile(os.path.join(root, ".mambarc"))


# -- idempotence ----------------------------------------------------------------------------


def test_second_install_makes_no_request(server, root):
    pixi_release(server, "v0.99.0")
    first = install("pixi", root, "v0.99.0", server)
    server.clear()
    assert install("pixi", root, "v0.99.0", server) == first
    assert server.requests == []
    mgr = wetlite.EnvironmentManager(root=root, tool="pixi", tool_version="v0.99.0", download_url=server.url)
    if wetlite._platform_id() == LINUX64:
        assert mgr.install_tool() == first
        assert mgr.install_tool() == first
        assert server.requests == []


# -- corrupt, truncated, flaky, slow ------------------------------------------------------


def test_corrupt_download_is_refused(server, root):
    good = tar_bytes([("pixi", script("pixi 0.99.0"))])
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    pixi_release(server, "v0.99.0", archive=bytes(bad), sidecar="%s  %s\n" % (sha(good), PIXI_ASSET))
    with pytest.raises(wetlite.DownloadError) as info:
        install("pixi", root, "v0.99.0", server)
    assert "checksum mismatch" in str(info.value)
    assert sha(good) in str(info.value)
    assert bin_listing(root) == []                     # no staging dir, no .part, no binary


def test_truncated_download_is_retried_then_refused(server, root):
    asset, _ = pixi_release(server, "v0.99.0", truncate=True)
    with pytest.raises(wetlite.DownloadError) as info:
        install("pixi", root, "v0.99.0", server)
    assert "truncated" in str(info.value)
    assert len(server.requests_for(asset)) == wetlite._DOWNLOAD_ATTEMPTS
    assert bin_listing(root) == []


def test_truncated_once_is_resumed(server, root):
    asset, binary = pixi_release(server, "v0.99.0", truncate=1, truncate_at=40, ranges=True)
    assert read(install("pixi", root, "v0.99.0", server)) == binary
    first, second = server.requests_for(asset)
    assert second.header("Range") == "bytes=40-"


def test_server_error_twice_then_ok(server, root):
    asset, binary = pixi_release(server, "v0.99.0", fail=2)
    assert read(install("pixi", root, "v0.99.0", server)) == binary
    assert len(server.requests_for(asset)) == 3
    assert bin_listing(root) == [".pixi-version", "pixi"]


def test_sidecar_server_error_once_is_retried(server, root):
    # Transient errors on the .sha256 file deserve the same retries as the asset.
    asset, binary = pixi_release(server, "v0.99.0")
    server.routes[asset + ".sha256"].fail = 1
    assert read(install("pixi", root, "v0.99.0", server)) == binary
    assert len(server.requests_for(asset + ".sha256")) == 2


def test_slow_download_times_out(server, root):
    asset, _ = pixi_release(server, "v0.99.0", stall=30)
    start = time.monotonic()
    with pytest.raises(wetlite.DownloadError) as info:
        install("pixi", root, "v0.99.0", server)
    assert "timed out" in str(info.value)
    assert time.monotonic() - start < 0.5 * wetlite._DOWNLOAD_ATTEMPTS + 5
    assert bin_listing(root) == []


# -- checksums --------------------------------------------------------------------------------


def test_no_sidecar_is_refused(server, root):
    pixi_release(server, "v0.99.0", sidecar=None)
    with pytest.raises(wetlite.DownloadError) as info:
        install("pixi", root, "v0.99.0", server)
    message = str(info.value)
    assert "v0.99.0" in message and "verify_downloads=False" in message
    assert bin_listing(root) == []


def test_no_sidecar_with_verification_off_installs_with_warning(server, tmp_path, caplog):
    root = str(tmp_path / "root")
    asset = host_asset("pixi")
    binary = script("pixi 0.99.0")
    server.add("/v0.99.0/" + asset, tar_bytes([("pixi", binary)]))
    mgr = wetlite.EnvironmentManager(root=root, tool="pixi", tool_version="v0.99.0", download_url=server.url,
                                     verify_downloads=False)
    with caplog.at_level(logging.WARNING, logger="wetlite"):
        path = mgr.install_tool()
    assert read(path) == binary
    warnings = [r for r in caplog.records if r.name == "wetlite" and r.levelno == logging.WARNING]
    assert warnings, caplog.records
    assert any("v0.99.0" in r.getMessage() and "checksum" in r.getMessage().lower() for r in warnings)


def test_verification_off_still_uses_a_sidecar_that_exists(server, root):
    good = tar_bytes([("pixi", script("pixi 0.99.0"))])
    pixi_release(server, "v0.99.0", archive=good + b"junk", sidecar="%s  x\n" % sha(good))
    with pytest.raises(wetlite.DownloadError):
        install("pixi", root, "v0.99.0", server, verify=False)
    assert bin_listing(root) == []


def test_malformed_sidecar_is_refused(server, root):
    pixi_release(server, "v0.99.0", sidecar="<html>not found</html>\n")
    with pytest.raises(wetlite.DownloadError) as info:
        install("pixi", root, "v0.99.0", server)
    assert ".sha256" in str(info.value)
    assert bin_listing(root) == []


@pytest.mark.parametrize("tool", ["pixi", "micromamba"])
def test_pinned_version_with_wrong_bytes_is_refused(server, root, tool):
    # The embedded checksum wins over whatever the mirror says, sidecar included.
    if tool == "pixi":
        tag, asset = wetlite.PIXI_VERSION, PIXI_ASSET
        pixi_release(server, tag, binary=script("pixi " + tag.lstrip("v")))
    else:
        tag, asset = wetlite.MICROMAMBA_VERSION, MM_ASSET
        micromamba_release(server, tag)
    pinned = wetlite._PINNED_SHA256[(tool, tag)][asset]
    with pytest.raises(wetlite.DownloadError) as info:
        install(tool, root, tag, server)
    assert "checksum mismatch" in str(info.value)
    assert pinned in str(info.value)
    assert bin_listing(root) == []


def test_pinned_micromamba_package_with_wrong_binary_is_refused(server, root):
    tag = wetlite.MICROMAMBA_VERSION
    micromamba_release(server, tag, layout="package")
    with pytest.raises(wetlite.DownloadError) as info:
        install("micromamba", root, tag, server)
    assert wetlite._PINNED_SHA256[("micromamba", tag)][MM_ASSET] in str(info.value)
    assert bin_listing(root) == []


def test_default_version_is_the_pinned_one(server, tmp_path):
    root = str(tmp_path / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool="pixi", download_url=server.url)
    assert mgr.tool_version == wetlite.PIXI_VERSION
    asset = host_asset("pixi")
    server.add("/%s/%s" % (wetlite.PIXI_VERSION, asset), tar_bytes([("pixi", script("pixi 0.73.0"))]))
    with pytest.raises(wetlite.DownloadError):
        mgr.install_tool()
    assert any(r.path == "/%s/%s" % (wetlite.PIXI_VERSION, asset) for r in server.requests)


# -- malicious archives ----------------------------------------------------------------------


@pytest.mark.parametrize("members", [
    [("pixi", script("pixi 0.99.0")), ("../evil", b"x")],
    [("pixi", script("pixi 0.99.0")), ("../../../evil", b"x")],
    [tar_info("pixi", tarfile.SYMTYPE, "/bin/sh")],
    [("pixi", script("pixi 0.99.0")), tar_info("up", tarfile.SYMTYPE, "../.."), ("up/evil", b"x")],
    [("pixi", script("pixi 0.99.0")), tar_info("dev", tarfile.CHRTYPE)],
    [("pixi", script("pixi 0.99.0")), tar_info("hard", tarfile.LNKTYPE, "../../evil")],
], ids=["dotdot", "deep-dotdot", "symlink-binary", "symlink-escape", "device", "hardlink"])
def test_malicious_pixi_archive_is_refused(server, tmp_path, members):
    root = str(tmp_path / "root")
    pixi_release(server, "v0.99.0", archive=tar_bytes(members))     # with a matching sidecar
    before = tree(tmp_path)
    with pytest.raises(wetlite.ToolError) as info:
        install("pixi", root, "v0.99.0", server)
    assert "refusing archive" in str(info.value)
    assert bin_listing(root) == []
    after = [p for p in tree(tmp_path) if not p.startswith(os.path.join("root", "state"))]
    assert after == sorted(before + ["root", os.path.join("root", "bin")]), after
    assert not os.path.lexists(str(tmp_path / "evil")) and not os.path.lexists(str(tmp_path / "root" / "evil"))


def test_malicious_micromamba_package_is_refused(server, tmp_path):
    root = str(tmp_path / "root")
    raw = "/0.99.0-0/" + MM_ASSET
    binary = script("0.99.0")
    server.add(raw + ".tar.bz2", tar_bytes([("bin/micromamba", binary), ("../../evil", b"x")], "bz2"))
    server.add(raw + ".sha256", sha(binary))
    with pytest.raises(wetlite.ToolError):
        install("micromamba", root, "0.99.0-0", server)
    assert bin_listing(root) == []
    assert not os.path.lexists(str(tmp_path / "evil"))


# -- bombs, endless assets and leftovers ---------------------------------------------------------


def test_micromamba_package_bomb_is_refused_without_filling_the_disk(server, root, monkeypatch):
    # 8 MiB of zeros packed into a few hundred bytes, before the real binary.
    monkeypatch.setenv("WETLITE_DOWNLOAD_LIMIT", "1M")
    raw = "/0.99.0-0/" + MM_ASSET
    binary = script("0.99.0")
    package = tar_bytes([("info/junk", b"\0" * (8 << 20)), ("bin/micromamba", binary)], "bz2")
    assert len(package) < 4096
    server.add(raw + ".tar.bz2", package)
    server.add(raw + ".sha256", sha(binary))
    with pytest.raises(wetlite.ToolError) as info:
        install("micromamba", root, "0.99.0-0", server)
    assert "more than 1.0 MB" in str(info.value)
    assert bin_listing(root) == []


def test_raw_micromamba_asset_is_verified_before_anything_is_extracted(server, root):
    # A package served under the raw binary's name: its digest is not the
    # binary's, so it is refused as it is, never unpacked.
    raw = "/0.99.0-0/" + MM_ASSET
    binary = script("0.99.0")
    server.add(raw, mm_package(binary))
    server.add(raw + ".sha256", sha(binary))
    with pytest.raises(wetlite.DownloadError) as info:
        install("micromamba", root, "0.99.0-0", server)
    assert "checksum mismatch" in str(info.value)
    assert bin_listing(root) == []


def test_endless_pixi_asset_stops_at_the_tool_size_limit(server, root, monkeypatch):
    monkeypatch.setattr(wetlite, "_TOOL_SIZE_LIMITS", {"pixi": 1 << 20, "micromamba": 1 << 20}, raising=False)
    pixi_release(server, "v0.99.0", endless=True, sidecar="0" * 64)
    import threading
    failure = []
    t = threading.Thread(target=lambda: failure.append(pytest.raises(wetlite.DownloadError, install, "pixi", root,
                                                                      "v0.99.0", server)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the endless download went on"
    assert "more than 1.0 MB" in str(failure[0].value)
    assert bin_listing(root) == []


def test_staging_dirs_of_killed_installs_are_removed(server, root):
    stale = os.path.join(root, "bin", ".install-pixi-k1ll3d")
    os.makedirs(stale)
    with open(os.path.join(stale, PIXI_ASSET + ".part"), "wb") as f:
        f.write(b"\0" * 100000)
    other = os.path.join(root, "bin", ".install-micromamba-busy")        # another tool's: not ours to judge
    os.makedirs(other)
    pixi_release(server, "v0.99.0")
    install("pixi", root, "v0.99.0", server)
    assert bin_listing(root) == [".install-micromamba-busy", ".pixi-version", "pixi"]


# -- the --version smoke test and upgrades ------------------------------------------------------


@pytest.mark.parametrize("binary, words", [
    (script("Segmentation fault"), "--version"),
    (script("pixi 0.99.0", code=1), "exit code 1"),
    (script("pixi 0.98.5"), "0.98.5"),
    (b"\x7fELF not really a program", "pixi"),
], ids=["garbage", "exit-1", "wrong-version", "not-executable"])
def test_failing_smoke_test_is_refused(server, root, binary, words):
    pixi_release(server, "v0.99.0", binary=binary)
    with pytest.raises(wetlite.ToolError) as info:
        install("pixi", root, "v0.99.0", server)
    assert words in str(info.value)
    assert bin_listing(root) == []


def test_failed_upgrade_keeps_the_old_binary(server, root, caplog):
    pixi_release(server, "v0.98.0")
    old = install("pixi", root, "v0.98.0", server)
    old_bytes = read(old)
    pixi_release(server, "v0.99.0", binary=script("pixi 0.99.0", code=1))
    with caplog.at_level(logging.WARNING, logger="wetlite"):
        with pytest.raises(wetlite.ToolError):
            install("pixi", root, "v0.99.0", server)
    assert read(old) == old_bytes
    assert os.access(old, os.X_OK)
    assert marker(root, "pixi") == "v0.98.0"
    assert bin_listing(root) == [".pixi-version", "pixi"]
    assert any(r.levelno == logging.WARNING and "v0.99.0" in r.getMessage() for r in caplog.records)


def test_corrupt_upgrade_keeps_the_old_binary(server, root):
    raw, old_binary = micromamba_release(server, "0.98.0-0")
    install("micromamba", root, "0.98.0-0", server)
    micromamba_release(server, "0.99.0-0", sidecar=sha(b"something else"))
    with pytest.raises(wetlite.DownloadError):
        install("micromamba", root, "0.99.0-0", server)
    assert read(os.path.join(root, "bin", "micromamba")) == old_binary
    assert marker(root, "micromamba") == "0.98.0-0"
    assert bin_listing(root) == [".micromamba-version", "micromamba"]


def test_successful_upgrade_replaces_the_binary(server, root):
    pixi_release(server, "v0.98.0")
    path = install("pixi", root, "v0.98.0", server)
    _, new_binary = pixi_release(server, "v0.99.0")
    assert install("pixi", root, "v0.99.0", server) == path
    assert read(path) == new_binary
    assert marker(root, "pixi") == "v0.99.0"
    assert bin_listing(root) == [".pixi-version", "pixi"]


# -- proxies ----------------------------------------------------------------------------------


def test_proxies_argument_is_honoured(server, tmp_path):
    root = str(tmp_path / "root")
    asset = host_asset("pixi")
    data = tar_bytes([("pixi", script("pixi 0.99.0"))])
    server.add("/releases/v0.99.0/" + asset, data)
    server.add("/releases/v0.99.0/" + asset + ".sha256", sha(data))
    mgr = wetlite.EnvironmentManager(root=root, tool="pixi", tool_version="v0.99.0",
                                     download_url="http://example.invalid/releases",
                                     proxies={"http": server.url})
    assert mgr.install_tool() == os.path.join(root, "bin", "pixi")
    assert len(server.requests) == 2
    for req in server.requests:
        assert req.proxied and req.target.startswith("http://example.invalid/releases/v0.99.0/")


def test_http_proxy_variable_is_honoured(server, tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    asset = host_asset("micromamba")
    binary = script("0.99.0")
    server.add("/m/0.99.0-0/" + asset, binary)
    server.add("/m/0.99.0-0/" + asset + ".sha256", sha(binary))
    monkeypatch.setenv("http_proxy", server.url)
    mgr = wetlite.EnvironmentManager(root=root, tool="micromamba", tool_version="0.99.0-0",
                                     download_url="http://example.invalid/m")
    assert read(mgr.install_tool()) == binary
    assert server.requests and all(r.proxied for r in server.requests)


def test_bad_proxies_value_is_refused(tmp_path):
    with pytest.raises(wetlite.WetliteError) as info:
        wetlite.EnvironmentManager(root=str(tmp_path), tool="pixi", proxies="http://proxy:8080")
    assert "http://proxy:8080" in str(info.value)


# -- an existing binary: tool_path, WETLITE_PIXI, WETLITE_MICROMAMBA ---------------------------


def _write_exe(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)
    return path


def test_tool_path_is_used_without_network(server, tmp_path):
    exe = _write_exe(str(tmp_path / "tools" / "pixi"), script("pixi 0.42.0"))
    root = str(tmp_path / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool="pixi", tool_path=exe, download_url=server.url)
    assert mgr.install_tool() == exe
    assert server.requests == []
    assert not os.path.exists(os.path.join(root, "bin"))


@pytest.mark.parametrize("tool, var", [("pixi", "WETLITE_PIXI"), ("micromamba", "WETLITE_MICROMAMBA")])
def test_tool_path_from_environment_variable(server, tmp_path, monkeypatch, tool, var):
    exe = _write_exe(str(tmp_path / "tools" / tool), script(tool + " 1.2.3"))
    monkeypatch.setenv(var, exe)
    monkeypatch.setenv("WETLITE_DOWNLOAD_URL", server.url)
    root = str(tmp_path / "root")
    mgr = wetlite.EnvironmentManager(root=root, tool=tool)
    assert mgr.install_tool() == exe
    assert server.requests == []
    assert not os.path.exists(os.path.join(root, "bin"))


def test_micromamba_tool_path_must_be_named_micromamba(server, tmp_path):
    exe = _write_exe(str(tmp_path / "tools" / "micromamba-linux-64"), script("2.8.1"))
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="micromamba", tool_path=exe,
                                     download_url=server.url)
    with pytest.raises(wetlite.ToolError) as info:
        mgr.install_tool()
    assert exe in str(info.value)
    assert server.requests == []


def test_missing_tool_path_is_an_error(server, tmp_path):
    exe = str(tmp_path / "nowhere" / "pixi")
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="pixi", tool_path=exe, download_url=server.url)
    with pytest.raises(wetlite.ToolError) as info:
        mgr.install_tool()
    assert exe in str(info.value)
    assert server.requests == []


def test_broken_tool_path_is_an_error(server, tmp_path):
    exe = _write_exe(str(tmp_path / "tools" / "pixi"), script("oops", code=3))
    mgr = wetlite.EnvironmentManager(root=str(tmp_path / "root"), tool="pixi", tool_path=exe, download_url=server.url)
    with pytest.raises(wetlite.ToolError) as info:
        mgr.install_tool()
    assert exe in str(info.value)
    assert server.requests == []


# -- platforms --------------------------------------------------------------------------------


@pytest.mark.parametrize("os_name, arch, pixi, micromamba", [
    ("linux", "x86_64", "pixi-x86_64-unknown-linux-musl.tar.gz", "micromamba-linux-64"),
    ("linux", "aarch64", "pixi-aarch64-unknown-linux-musl.tar.gz", "micromamba-linux-aarch64"),
    ("linux", "ppc64le", None, "micromamba-linux-ppc64le"),
    ("linux", "riscv64", "pixi-riscv64gc-unknown-linux-gnu.tar.gz", None),
    ("osx", "x86_64", "pixi-x86_64-apple-darwin.tar.gz", "micromamba-osx-64"),
    ("osx", "aarch64", "pixi-aarch64-apple-darwin.tar.gz", "micromamba-osx-arm64"),
    ("win", "x86_64", "pixi-x86_64-pc-windows-msvc.zip", "micromamba-win-64"),
    ("win", "aarch64", "pixi-aarch64-pc-windows-msvc.zip", "micromamba-win-64"),
])
def test_tool_asset_names(os_name, arch, pixi, micromamba):
    for tool, expected in (("pixi", pixi), ("micromamba", micromamba)):
        if expected is None:
            with pytest.raises(wetlite.ToolError) as info:
                wetlite._tool_asset(tool, os_name, arch)
            other = "micromamba" if tool == "pixi" else "pixi"
            assert other in str(info.value)             # names the fix
        else:
            assert wetlite._tool_asset(tool, os_name, arch) == expected


def test_pixi_on_ppc64le_points_to_micromamba():
    with pytest.raises(wetlite.ToolError) as info:
        wetlite._tool_asset("pixi", "linux", "ppc64le")
    assert "micromamba" in str(info.value) and "ppc64le" in str(info.value)


@pytest.mark.parametrize("os_name, arch", [("linux", "armv7l"), ("linux", "i686"), ("freebsd", "x86_64")])
def test_unknown_platforms_are_refused(os_name, arch):
    for tool in ("pixi", "micromamba"):
        with pytest.raises(wetlite.ToolError) as info:
            wetlite._tool_asset(tool, os_name, arch)
        assert os_name in str(info.value)


def test_unsupported_platform_install_makes_no_request(server, root):
    with pytest.raises(wetlite.ToolError):
        install("pixi", root, "v0.99.0", server, platform_id=("linux", "ppc64le"))
    assert server.requests == []


@pytest.mark.parametrize("system, machine, expected", [
    ("Linux", "x86_64", ("linux", "x86_64")),
    ("Linux", "AMD64", ("linux", "x86_64")),
    ("Linux", "aarch64", ("linux", "aarch64")),
    ("Linux", "arm64", ("linux", "aarch64")),
    ("Linux", "ppc64le", ("linux", "ppc64le")),
    ("Linux", "riscv64", ("linux", "riscv64")),
    ("Darwin", "x86_64", ("osx", "x86_64")),
    ("Darwin", "arm64", ("osx", "aarch64")),
    ("Windows", "AMD64", ("win", "x86_64")),
    ("Windows", "ARM64", ("win", "aarch64")),
])
def test_platform_id(system, machine, expected):
    assert wetlite._platform_id(system, machine) == expected


def test_platform_id_of_this_machine_has_an_asset():
    os_name, arch = wetlite._platform_id()
    assert os_name in ("linux", "osx", "win")
    assert wetlite._tool_asset("micromamba", os_name, arch).startswith("micromamba-")


# -- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tool, given, tag", [
    ("pixi", None, wetlite.PIXI_VERSION),
    ("pixi", "0.99.0", "v0.99.0"),
    ("pixi", "v0.99.0", "v0.99.0"),
    ("micromamba", None, wetlite.MICROMAMBA_VERSION),
    ("micromamba", "2.0.5", "2.0.5-0"),
    ("micromamba", "2.0.5-1", "2.0.5-1"),
    ("micromamba", "2.0.0rc0-1", "2.0.0rc0-1"),
])
def test_tool_version_normalization(tmp_path, tool, given, tag):
    mgr = wetlite.EnvironmentManager(root=str(tmp_path), tool=tool, tool_version=given)
    assert mgr.tool_version == tag


@pytest.mark.parametrize("tool", ["pixi", "micromamba"])
@pytest.mark.parametrize("bad", ["latest", "1.2", "", "../../etc", "0.99.0/../x", "v0.99.0 ; rm -rf ~",
                                 "0.99.0\nx", "0.99.0?x=1", "0.99.0#frag", "..", "v", "0.99.0-", 1.5])
def test_invalid_tool_version_is_refused(tmp_path, tool, bad):
    with pytest.raises(wetlite.ToolError) as info:
        wetlite.EnvironmentManager(root=str(tmp_path), tool=tool, tool_version=bad)
    assert repr(bad) in str(info.value)


# -- two processes at once ----------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import importlib, os, sys, time
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    wetlite = importlib.import_module(os.environ.get("WETLITE_TEST_MODULE", "wetlite"))
    root, url, ready, gate = sys.argv[3:7]
    open(ready, "w").close()
    deadline = time.time() + 30
    while not os.path.exists(gate):
        if time.time() > deadline:
            sys.exit("gate never opened")
        time.sleep(0.005)
    start = time.time()
    mgr = wetlite.EnvironmentManager(root=root, tool="pixi", tool_version="v0.99.0", download_url=url)
    path = mgr.install_tool()
    print(repr((start, path)))
""")


def test_concurrent_installs_download_once(server, tmp_path):
    root = str(tmp_path / "root")
    asset = "/v0.99.0/" + host_asset("pixi")
    binary = script("pixi 0.99.0")
    data = tar_bytes([("pixi", binary)])
    server.add(asset, data, delay=1.5)                 # keeps the first install busy
    server.add(asset + ".sha256", sha(data))
    env = dict(os.environ)
    for name in _CLEAN_VARS:
        env.pop(name, None)
    procs = []
    for i in range(2):
        ready = str(tmp_path / ("ready%d" % i))
        procs.append((ready, subprocess.Popen(
            [sys.executable, "-c", _CHILD, REPO, HERE, root, server.url, ready, str(tmp_path / "gate")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)))
    deadline = time.monotonic() + 30
    while not all(os.path.exists(ready) for ready, _ in procs):
        assert time.monotonic() < deadline, "children did not start"
        assert all(p.poll() is None for _, p in procs), [p.communicate() for _, p in procs]
        time.sleep(0.01)
    open(str(tmp_path / "gate"), "w").close()
    results = []
    for _, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        results.append(ast.literal_eval(out.decode().strip().splitlines()[-1]))
    (start1, path1), (start2, path2) = results
    assert abs(start1 - start2) < 1.0                  # they really overlapped (delay 1.5 s)
    assert path1 == path2 == os.path.join(root, "bin", "pixi")
    assert read(path1) == binary
    assert len(server.requests_for(asset)) == 1
    assert bin_listing(root) == [".pixi-version", "pixi"]
    assert os.path.isfile(os.path.join(root, "state", "locks", "install-pixi.lock"))
